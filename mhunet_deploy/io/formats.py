"""Which file is which, decided in one place: the names (suffixes) and contents (magic bytes) of the
files mhunet reads and writes. Read without nibabel or pydicom, so a wrong file is told apart cheaply.
"""

from __future__ import annotations

import gzip
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
#: NIfTI-1 and NIfTI-2 header magics (single file, pair) and where they sit in the header.
NIFTI_MAGICS = {1: (344, (b"n+1\0", b"ni1\0")), 2: (4, (b"n+2\0", b"ni2\0"))}
#: sizeof_hdr, the header's first int32, by NIfTI version.
NIFTI_HEADER_BYTES = {1: 348, 2: 540}
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

#: Single-file NIfTI names: what mhunet writes, and what `mhunet serve` accepts besides a zip.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: The inputs a folder given to `mhunet infer` is expanded to: NIfTI files and .hdr/.img pairs (by
#: their .hdr).
BATCH_SUFFIXES = (*NIFTI_SUFFIXES, ".hdr")
ZIP_SUFFIX = ".zip"
#: Dropped from an input's name to name its outputs (``scan.nii.gz`` -> ``scan_mask.nii.gz``): the NIfTI
#: suffixes, those of a .hdr/.img pair, then a bare .gz; longest first.
_STEM_SUFFIXES = (".nii.gz", ".hdr.gz", ".img.gz", ".nii", ".hdr", ".img", ".gz")


def output_stem(name: str) -> str:
    """An input's file name without its image suffix, the stem its outputs are named from."""
    for suffix in _STEM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_zip_name(name: str) -> bool:
    return name.lower().endswith(ZIP_SUFFIX)


def read_head(path: Path, size: int = 540) -> bytes:
    """The first ``size`` bytes of a file, gunzipped when it is gzip; raises OSError, EOFError or
    zlib.error for an unreadable or corrupt file."""
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    with gzip.open(path, "rb") if compressed else path.open("rb") as f:
        return f.read(size)


def has_nifti_magic(head: bytes) -> bool:
    """Whether a header starts like NIfTI-1 or NIfTI-2: its magic at its place."""
    return any(head[at : at + 4] in magics for at, magics in NIFTI_MAGICS.values())


def nifti_layout(head: bytes) -> tuple[str, int] | None:
    """(byte order "<" or ">", NIfTI version 1 or 2) of a header whose sizeof_hdr and magic agree,
    else None."""
    for byteorder, code in (("little", "<"), ("big", ">")):
        size = int.from_bytes(head[:4], byteorder)
        for version, (at, magics) in NIFTI_MAGICS.items():
            if size == NIFTI_HEADER_BYTES[version] and head[at : at + 4] in magics:
                return code, version
    return None


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then ``DICM``. Read without pydicom."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_folder(folder: Path) -> bool:
    return any(p.is_file() and is_dicom_file(p) for p in folder.iterdir())
