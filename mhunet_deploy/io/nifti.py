"""The NIfTI reader: a file validated early, with one-line errors, into a :class:`Volume`.

Inputs are refused from their header whenever possible, before any voxel is read, so a corrupt or
absurd file costs milliseconds, not gigabytes. ``Volume`` is also what the DICOM reader makes
(``io.dicom``); the outputs are written by ``io.outputs``.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..errors import InputError
from ..files import one_line
from .formats import is_dicom_file, nifti_layout, read_head

# Refuse inputs larger than any brain MRI from the header alone: a corrupt dim field must not make
# us allocate terabytes. 2**28 float32 voxels is 1 GiB.
MAX_AXIS_VOXELS = 2048
MAX_TOTAL_VOXELS = 2**28
# |det(A)| below this fraction of the product of the column norms means the axes are (nearly)
# collinear: the affine cannot map voxels to distinct world positions.
SINGULAR_AFFINE_RTOL = 1e-6

_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError)


@dataclass
class Volume:
    """One validated 3D scan: the nibabel image (geometry reference for outputs) and its voxels."""

    image: nib.Nifti1Pair
    data: np.ndarray
    path: Path | None
    warnings: list[str] = field(default_factory=list)
    #: A DICOM series input's slice headers (pydicom datasets, pixel data dropped) in slice order k:
    #: what a DICOM SEG references. Empty for NIfTI.
    dicom: list = field(default_factory=list)

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along each voxel axis, from the affine: the geometry the pipeline resamples
        with, so lesion volumes agree with it even where pixdim does not (e.g. pixdim 0 beside an sform)."""
        return tuple(float(z) for z in np.linalg.norm(self.image.affine[:3, :3], axis=0))


def _header_file(path: Path) -> Path:
    """The file holding the header: the .hdr of a .hdr/.img pair given by its .img, else `path`."""
    name = path.name
    for img_ext, hdr_ext in ((".img.gz", ".hdr.gz"), (".img", ".hdr")):
        if name.lower().endswith(img_ext):
            return path.with_name(name[: -len(img_ext)] + hdr_ext)
    return path


def _check_nifti_magic(path: Path) -> np.ndarray:
    """Refuse anything whose header is not NIfTI-1/2, whatever its extension says; return pixdim[1:4]
    as stored, because nibabel's loader alters it (0 becomes 1, a negative its absolute value)."""
    hdr_path = _header_file(path)
    if not hdr_path.is_file():
        raise InputError(f"{path}: header file {hdr_path.name} is missing; keep the .hdr next to the .img")
    try:
        head = read_head(hdr_path)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path}: cannot read the header ({one_line(exc)}); the gzip file is corrupt or truncated, "
            "copy it again"
        ) from exc
    layout = nifti_layout(head)
    if layout is None:
        raise InputError(
            f"{path} is not a NIfTI file (no NIfTI header magic); convert the scan to .nii.gz first"
        )
    code, version = layout
    if version == 1:  # pixdim: float32[8] at byte 76
        return np.frombuffer(head, f"{code}f4", count=3, offset=80).astype(np.float64)
    return np.frombuffer(head, f"{code}f8", count=3, offset=112).astype(np.float64)  # float64[8] at 104


def _mm(sizes: np.ndarray) -> str:
    return " x ".join(f"{z:g}" for z in sizes)


def _check_header(
    img: nib.Nifti1Pair, path: Path | str, volume_index: int | None, pixdim: np.ndarray
) -> tuple[int, ...]:
    """Validate shape, dtype, size, voxel sizes and affine from the header; return the voxel index prefix.

    ``pixdim`` is the stored pixdim[1:4]. Without an sform the affine (qform, or the fallback) is built
    from it, so a zero, negative or non-finite voxel size there leaves no trustworthy geometry: nibabel
    would read 0 as 1 mm and -2 as 2 mm, the NIfTI reference C library (ITK, AFNI) both as 1 mm.
    """
    shape = img.shape
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise InputError(f"{path} is 2D (shape {shape}); mhunet needs a 3D volume")
    if len(shape) > 4 and math.prod(shape[4:]) > 1:
        raise InputError(f"{path} has shape {shape} (5D vector/tensor data); give mhunet one 3D volume")
    if any(n > MAX_AXIS_VOXELS for n in shape[:3]) or math.prod(shape[:3]) > MAX_TOTAL_VOXELS:
        raise InputError(
            f"{path} declares an implausible size {shape[:3]} (limit {MAX_AXIS_VOXELS} per axis, "
            f"{MAX_TOTAL_VOXELS} voxels); the header is corrupt or this is not a brain MRI"
        )
    n_volumes = shape[3] if len(shape) > 3 else 1
    if volume_index is None:
        if n_volumes > 1:
            raise InputError(
                f"{path} is 4D with {n_volumes} volumes; pick one with --volume-index (0..{n_volumes - 1})"
            )
        volume_index = 0
    elif not 0 <= volume_index < n_volumes:
        raise InputError(
            f"{path}: volume index {volume_index} is out of range; it has {n_volumes} volume(s) "
            f"(0..{n_volumes - 1})"
        )

    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InputError(
            f"{path} has voxel type {img.header.get_value_label('datatype')}; mhunet needs a scalar "
            "(integer or float) intensity image, convert RGB/complex/bool data first"
        )

    if img.header["sform_code"] == 0 and not np.all(np.isfinite(pixdim) & (pixdim > 0)):
        raise InputError(
            f"{path} has voxel size {_mm(pixdim)} mm (pixdim) and no sform to take the geometry from; "
            "fix pixdim in the header, e.g. convert the scan again with dcm2niix"
        )
    affine = img.affine
    rzs = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(rzs)) <= SINGULAR_AFFINE_RTOL * math.prod(
        np.linalg.norm(rzs, axis=0)
    ):
        raise InputError(
            f"{path} has a singular or non-finite voxel-to-world affine; fix its qform/sform "
            "(e.g. fslorient) before segmenting"
        )
    return (slice(None),) * 3 + (volume_index,) + (0,) * (len(shape) - 4) if len(shape) > 3 else ()


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _header_repairs_unprinted() -> Iterator[None]:
    """Keep nibabel from printing the header repairs it makes on load ("setting 0 dims to 1") on
    stderr, which would break one-line errors: the stored header is judged here instead."""
    drop = _DropAll()  # one per call, so concurrent loads each remove only their own
    nib.imageglobals.logger.addFilter(drop)
    try:
        yield
    finally:
        nib.imageglobals.logger.removeFilter(drop)


def load_volume(
    path: str | os.PathLike, volume_index: int | None = None, allow_constant: bool = False
) -> Volume:
    """Load and validate one 3D scan; `volume_index` picks a volume of a 4D file (0-based).

    ``allow_constant``: a constant volume is no scan, but may be a mask (all zero, or all brain)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of a .nii or .nii.gz file")
    if is_dicom_file(path):
        raise InputError(f"{path} is one DICOM slice; pass the folder that holds its series")
    pixdim = _check_nifti_magic(path)
    try:
        with _header_repairs_unprinted():
            img = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(
            f"{path}: cannot read the NIfTI header ({one_line(exc)}); copy the file again"
        ) from exc
    if not isinstance(img, nib.Nifti1Pair):
        raise InputError(f"{path} is not a NIfTI image; convert the scan to .nii.gz first")
    return volume_from_image(img, volume_index, path, pixdim, allow_constant)


def volume_from_image(
    img: nib.Nifti1Pair,
    volume_index: int | None = None,
    path: Path | None = None,
    stored_pixdim: np.ndarray | None = None,
    allow_constant: bool = False,
) -> Volume:
    """Validate a NIfTI image (from disk or built in memory, e.g. synthetic data) into a Volume.

    ``stored_pixdim``: pixdim[1:4] as in the file, when nibabel's loader has altered the header's.
    """
    filename = img.get_filename()
    path = path or (Path(filename) if filename else None)
    name = path or "in-memory image"
    pixdim = np.asarray(img.header["pixdim"][1:4] if stored_pixdim is None else stored_pixdim, np.float64)
    index = _check_header(img, name, volume_index, pixdim)
    try:
        data = np.asarray(img.dataobj[index] if index else img.dataobj, dtype=np.float32)
    except _READ_ERRORS as exc:
        raise InputError(
            f"{name}: cannot read the voxels ({one_line(exc)}); "
            "the file is truncated or corrupt, copy it again"
        ) from exc
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(
            f"{name} has {data.size - int(finite.sum())} NaN or infinite voxels; fix or re-export the scan"
        )
    if not allow_constant and data.min() == data.max():
        raise InputError(
            f"{name} is constant (every voxel is {data.flat[0]:g}); it holds no image, export the scan again"
        )

    if index:  # a 3D image for the chosen volume, with the same header and source files
        img = type(img)(data, img.affine, img.header, extra=img.extra, file_map=img.file_map)
    label = path.name if path else name
    warnings = []
    if img.header["qform_code"] == 0 and img.header["sform_code"] == 0:
        warnings.append(
            f"{label} has neither qform nor sform (both codes 0): world positions "
            "use the voxel sizes only, so orientation and mm centroids may be wrong"
        )
    if not np.all(np.isfinite(pixdim) & (pixdim != 0)):  # only reached with an sform (_check_header)
        sform_mm = np.linalg.norm(img.affine[:3, :3], axis=0)
        warnings.append(
            f"{label} stores voxel size {_mm(pixdim)} mm (pixdim); the sform's {_mm(sform_mm)} mm is used, "
            "tools that read pixdim may measure other volumes"
        )
    return Volume(image=img, data=data, path=path, warnings=warnings)
