"""Outputs of `mhunet infer`: the output folder, proven writable before any work, and NIfTI files
written atomically with the input's geometry header verbatim (shape, qform/sform and codes, zooms,
units), so the mask overlays the scan exactly in every viewer.
"""

from __future__ import annotations

import gzip
import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from ..errors import OutputError
from ..files import atomic_write, os_error_message
from .formats import NIFTI_SUFFIXES

# gzip level for .nii.gz outputs: 6 (the gzip default) is within ~5% of 9 on masks at a fraction of the time.
GZIP_LEVEL = 6


def prepare_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable with a probe file, removed at once.

    Run before any work, so a read-only or full output folder fails in milliseconds, not after
    minutes of inference; OSError becomes a one-line OutputError.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; give an output folder with -o")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the message names the folder it could not be created in
        raise OutputError(os_error_message(folder, exc)) from exc
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mhunet-probe-") as probe:
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise OutputError(os_error_message(folder / ".probe", exc)) from exc
    return folder


@contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """:func:`prepare_output_folder` for one run, which leaves nothing behind when nothing was written.

    On exit, the folders this call created (``folder`` and any missing parents) are removed again if
    they are still empty, e.g. when every input was refused; a folder that existed before is never
    removed, and ``rmdir`` never removes a folder that holds anything.
    """
    folder = Path(folder).absolute()
    created = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))
    try:
        yield prepare_output_folder(folder)
    finally:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except FileNotFoundError:  # never made (mkdir failed on the way)
                continue
            except OSError:  # holds outputs (or is not ours after all): keep it and its parents
                break


def _source_files(image: nib.Nifti1Pair) -> list[Path]:
    return [Path(holder.filename) for holder in image.file_map.values() if holder.filename]


def _is_same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def save_like(
    reference: nib.Nifti1Pair, data: np.ndarray, path: str | os.PathLike, dtype: npt.DTypeLike
) -> Path:
    """Write `data` (the reference's 3D shape) as NIfTI with the reference's geometry header, atomically.

    Everything but datatype and scaling is copied from the reference (shape, qform/sform and codes,
    zooms, units, extensions); slope 1, inter 0 so stored values are the values; cal_min/cal_max are
    cleared because the input's display window would hide a mask or a probability map.
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise OutputError(f"{path}: output NIfTI files must end in .nii or .nii.gz; rename the output")
    for source in _source_files(reference):
        if _is_same_file(path, source):
            raise OutputError(
                f"{path} is the input scan; refusing to overwrite it, choose another output path"
            )
    shape = reference.shape[:3]
    dtype = np.dtype(dtype)
    if data.shape != shape:
        raise ValueError(f"data shape {data.shape} differs from the reference's spatial shape {shape}")
    if np.issubdtype(dtype, np.integer) and data.size:
        info = np.iinfo(dtype)
        if data.min() < info.min or data.max() > info.max:
            raise ValueError(f"data range [{data.min()}, {data.max()}] does not fit {dtype}")

    klass = nib.Nifti2Image if isinstance(reference, nib.Nifti2Pair) else nib.Nifti1Image
    # affine=None keeps the header's qform/sform fields verbatim instead of re-deriving them.
    image = klass(np.asarray(data).astype(dtype, copy=False), None, reference.header)
    header = image.header
    header.set_data_dtype(dtype)
    header["pixdim"] = reference.header["pixdim"]  # set_data_shape reset those of dropped axes
    # Raw fields: the image resets scaling to NaN ("unset"); the spec and viewers prefer 1 and 0.
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    header["cal_min"] = header["cal_max"] = 0
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload))
