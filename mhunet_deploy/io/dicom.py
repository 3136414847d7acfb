"""A DICOM series folder as input (optional extra ``dicom``: pydicom), on the geometry it describes.

The slices become one 3D image whose voxel (i, j, k) is column i, row j of the k-th slice along the
slice normal (row direction x column direction of ImageOrientationPatient); file names and
InstanceNumber are ignored, because exports reorder and renumber them. The affine comes from
ImageOrientationPatient, PixelSpacing and the first and last ImagePositionPatient (so a gantry tilt
is kept as a shear), converted from DICOM's LPS to NIfTI's RAS; both qform and sform carry it with
code 1 (scanner). The mask NIfTI written on this image therefore overlays the series in any viewer.

Everything that would make that geometry a guess is refused with one line before any pixel is
decoded: several series, missing or differing orientation, spacing or size, slices at one position,
uneven spacing (a missing slice), multi-frame or colour images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from .formats import is_dicom_file
from .nifti import MAX_AXIS_VOXELS, MAX_TOTAL_VOXELS, Volume, volume_from_image

INSTALL_HINT = 'pip install "mhunet-deploy[dicom]"'
#: DICOM's patient axes are L, P, S; NIfTI's world axes are R, A, S.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Direction cosines of two slices may differ by this much and still count as one orientation.
ORIENTATION_TOLERANCE = 1e-4
#: Slice steps may differ from their mean by this fraction of the step (plus 1 µm) and count as even.
SPACING_RTOL = 0.01
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, not a slice


def _pydicom(folder: Path) -> Any:
    try:
        import pydicom
    except ImportError:
        raise InputError(f"{folder}: reading DICOM needs pydicom; {INSTALL_HINT}") from None
    return pydicom


def _read_headers(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """Header (no pixels) of every DICOM slice in ``folder``, grouped by SeriesInstanceUID."""
    pydicom = _pydicom(folder)
    series: dict[str, list[tuple[Path, Any]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types on damaged files
            raise InputError(f"{path}: cannot read the DICOM header ({e}); copy the series again") from e
        # A DICOMDIR names its class in the file meta only (it has no SOPClassUID of its own).
        meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if _MEDIA_STORAGE_DIRECTORY in (str(ds.get("SOPClassUID", "")), meta_class):
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if not series:
        raise InputError(f"{folder} holds no DICOM image slices; give a folder of one series")
    return series


def _pick_series(
    folder: Path, series: dict[str, list[tuple[Path, Any]]], series_uid: str | None
) -> list[tuple[Path, Any]]:
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{folder} has no series {series_uid}; it holds {', '.join(series)}")
        return series[series_uid]
    if len(series) > 1:
        listed = "; ".join(
            f"{uid} ({slices[0][1].get('SeriesDescription', 'no description')}, {len(slices)} slices)"
            for uid, slices in series.items()
        )
        raise InputError(f"{folder} holds {len(series)} series: {listed}; pick one with --series UID")
    return next(iter(series.values()))


def _geometry_of(path: Path, ds: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(orientation cosines + pixel spacing (between rows, between columns), position, (rows, columns))."""
    missing = [
        k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows") if k not in ds
    ]
    if missing:
        raise InputError(
            f"{path} lacks {', '.join(missing)}; the slice cannot be placed, export the series with geometry"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(
            f"{path} is a multi-frame image; convert the series with dcm2niix and pass the .nii.gz"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path} is a colour image; mhunet needs the scalar MR magnitude series")
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(ds.PixelSpacing, dtype=np.float64)
    position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    if iop.shape != (6,) or spacing.shape != (2,) or position.shape != (3,) or np.any(spacing <= 0):
        raise InputError(
            f"{path} has malformed orientation, position or pixel spacing; export the series again"
        )
    return np.concatenate([iop, spacing]), position, (int(ds.Rows), int(ds.Columns))


def series_affine(slices: list[tuple[Path, Any]]) -> tuple[np.ndarray, list[Path], tuple[int, int]]:
    """RAS affine of the series, its files in slice order, and (rows, columns); refuses bad geometry."""
    folder = slices[0][0].parent
    geometry = [_geometry_of(p, ds) for p, ds in slices]
    orient, _, size = geometry[0]
    for (path, _), (o, _, s) in zip(slices, geometry, strict=True):
        if s != size or not np.allclose(o[:6], orient[:6], atol=ORIENTATION_TOLERANCE):
            raise InputError(
                f"{folder}: {path.name} differs from {slices[0][0].name} in orientation or size; "
                "the folder mixes acquisitions, pick one series"
            )
        if not np.allclose(o[6:], orient[6:], rtol=1e-4):
            raise InputError(f"{folder}: pixel spacing differs between slices; export the series again")
    if len(slices) < 2:
        raise InputError(f"{folder} holds one slice; mhunet needs a 3D series")
    n = len(slices)
    if max(*size, n) > MAX_AXIS_VOXELS or size[0] * size[1] * n > MAX_TOTAL_VOXELS:
        raise InputError(f"{folder}: {size[1]}x{size[0]}x{n} voxels is an implausible size for a brain MRI")
    row_cos, col_cos = orient[:3], orient[3:6]
    normal = np.cross(row_cos, col_cos)
    order = np.argsort([pos @ normal for _, pos, _ in geometry], kind="stable")
    positions = np.array([geometry[i][1] for i in order])
    steps = np.diff(positions, axis=0)
    step = (positions[-1] - positions[0]) / (n - 1)
    if np.any(np.diff(positions @ normal) < 1e-3):
        raise InputError(
            f"{folder}: two slices share one position; the series holds several echoes or time points, "
            "split it (e.g. dcm2niix) and pass one"
        )
    if np.abs(steps - step).max() > SPACING_RTOL * np.linalg.norm(step) + 1e-3:
        raise InputError(
            f"{folder}: slices are unevenly spaced (steps {np.linalg.norm(steps, axis=1).min():.3g} to "
            f"{np.linalg.norm(steps, axis=1).max():.3g} mm); a slice is missing, copy the series again"
        )
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns); voxel axis 0 runs along a row, i.e. columns.
    lps[:3, 0] = row_cos * orient[7]
    lps[:3, 1] = col_cos * orient[6]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps, [slices[i][0] for i in order], size


def load_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """One DICOM series folder as a validated Volume; ``series_uid`` picks one of several series."""
    folder = Path(folder)
    pydicom = _pydicom(folder)
    affine, files, (rows, cols) = series_affine(_pick_series(folder, _read_headers(folder), series_uid))
    data = np.empty((cols, rows, len(files)), dtype=np.float32)
    headers = []
    for k, path in enumerate(files):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as e:  # compressed without a decoder, truncated pixel data, ...
            raise InputError(
                f"{path}: cannot decode the pixels ({e}); install a decoder (e.g. pip install pylibjpeg) "
                "or convert the series with dcm2niix"
            ) from e
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        data[:, :, k] = (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T
        del ds.PixelData
        headers.append(ds)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    volume = volume_from_image(img, path=folder)
    volume.dicom = headers
    return volume
