"""The robustness corpus: every kind of unusable NIfTI input, generated (nothing binary is committed).

``BAD_INPUTS`` maps a case name to (make(tmp_path) -> path, volume index); ``tests/test_io.py``
holds each case to a one-line InputError, ``tests/test_robustness.py`` runs them through `mhunet infer`.
The small builders (``nifti_image``, ``noise``, ``saved``, ``raw_header_file``) serve other tests too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from mhunet_deploy.io.nifti import MAX_AXIS_VOXELS


def nifti_image(data: np.ndarray, affine: np.ndarray | None = None) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def saved(tmp_path: Path, img: nib.Nifti1Image, name: str = "scan.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(img, path)
    return path


def raw_header_file(
    tmp_path: Path, edit: Callable[[nib.Nifti1Header], None], shape: tuple[int, int, int] = (4, 4, 4)
) -> Path:
    """A small valid .nii whose header is then edited and written as is (nibabel's save would repair
    pixdim); the voxel block stays small."""
    hdr = nifti_image(noise(shape)).header
    edit(hdr)
    hdr["vox_offset"] = 352  # the voxels follow the header and its 4-byte extension flag
    path = tmp_path / "scan.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + noise(shape).tobytes(order="F"))
    return path


def _bad_truncated_gzip(tmp_path: Path) -> Path:
    path = saved(tmp_path, nifti_image(noise((16, 16, 16))))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bad_truncated_nii(tmp_path: Path) -> Path:
    path = saved(tmp_path, nifti_image(noise((16, 16, 16))), "scan.nii")
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _bad_not_gzip_inside(tmp_path: Path) -> Path:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b" + os.urandom(400))
    return path


def _bad_text(tmp_path: Path) -> Path:
    path = tmp_path / "scan.nii.gz"
    path.write_text("subject,flair\n01,scan.nii.gz\n")
    return path


def _bad_analyze(tmp_path: Path) -> Path:
    img = nib.AnalyzeImage(noise((8, 8, 8)), np.eye(4))
    nib.save(img, tmp_path / "scan.hdr")
    return tmp_path / "scan.hdr"


def _bad_structured(code: int) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        def edit(hdr: nib.Nifti1Header) -> None:
            hdr["datatype"] = code
            hdr["bitpix"] = {1: 1, 32: 64, 128: 24}[code]

        return raw_header_file(tmp_path, edit)

    return make


#: The voxel size the affines of `scan_with_pixdim` give, whatever its stored pixdim says.
TRUE_ZOOMS = (2.0, 3.0, 4.0)


def scan_with_pixdim(
    tmp_path: Path, value: float, forms: str, shape: tuple[int, int, int] = (4, 4, 4)
) -> Path:
    """A valid .nii of 2 x 3 x 4 mm voxels whose one defect is the stored y voxel size (pixdim[2]);
    ``forms`` names the codes set: "qform", "sform", "qform+sform" or "" (neither)."""

    def edit(hdr: nib.Nifti1Header) -> None:
        affine = np.diag([*TRUE_ZOOMS, 1.0])
        hdr.set_qform(affine, code=1 if "qform" in forms else 0)
        hdr.set_sform(affine, code=1 if "sform" in forms else 0)
        hdr["pixdim"][2] = value

    return raw_header_file(tmp_path, edit, shape)


def _bad_pixdim(value: float, forms: str) -> Callable[[Path], Path]:
    return lambda tmp_path: scan_with_pixdim(tmp_path, value, forms)


def bad_shape(shape: tuple[int, ...]) -> Callable[[Path], Path]:
    return lambda tmp_path: raw_header_file(tmp_path, lambda hdr: hdr.set_data_shape(shape))


def _bad_singular(tmp_path: Path) -> Path:
    def edit(hdr: nib.Nifti1Header) -> None:
        affine = np.eye(4)
        affine[:3, 1] = affine[:3, 0]  # two voxel axes point the same way
        hdr.set_sform(affine, code=2)

    return raw_header_file(tmp_path, edit)


def _bad_voxels(value: float) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        data = noise((8, 8, 8))
        data[3, 4, 5] = value
        return saved(tmp_path, nifti_image(data))

    return make


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], int | None]] = {
    "missing": (lambda tmp_path: tmp_path / "nope.nii.gz", None),
    "folder": (lambda tmp_path: tmp_path, None),
    "text named .nii.gz": (_bad_text, None),
    "random bytes after gzip magic": (_bad_not_gzip_inside, None),
    "truncated gzip": (_bad_truncated_gzip, None),
    "truncated nii": (_bad_truncated_nii, None),
    "analyze not nifti": (_bad_analyze, None),
    "2D": (lambda tmp_path: saved(tmp_path, nifti_image(noise((8, 8)))), None),
    "one slice": (lambda tmp_path: saved(tmp_path, nifti_image(noise((8, 8, 1)))), None),
    "4D several volumes": (lambda tmp_path: saved(tmp_path, nifti_image(noise((6, 6, 6, 3)))), None),
    "4D index out of range": (lambda tmp_path: saved(tmp_path, nifti_image(noise((6, 6, 6, 3)))), 3),
    "4D negative index": (lambda tmp_path: saved(tmp_path, nifti_image(noise((6, 6, 6, 3)))), -1),
    "5D vectors": (lambda tmp_path: saved(tmp_path, nifti_image(noise((6, 6, 6, 1, 3)))), None),
    "rgb": (_bad_structured(128), None),
    "complex": (_bad_structured(32), None),
    "binary/bool": (_bad_structured(1), None),
    "nan voxel": (_bad_voxels(np.nan), None),
    "inf voxel": (_bad_voxels(-np.inf), None),
    "all zero": (lambda tmp_path: saved(tmp_path, nifti_image(np.zeros((8, 8, 8), np.int16))), None),
    "axis too long": (bad_shape((MAX_AXIS_VOXELS + 1, 4, 4)), None),
    "too many voxels": (bad_shape((2048, 2048, 128)), None),
    "zero voxel size, qform only": (_bad_pixdim(0.0, "qform"), None),
    "zero voxel size, no qform nor sform": (_bad_pixdim(0.0, ""), None),
    "nan voxel size, qform only": (_bad_pixdim(np.nan, "qform"), None),
    "infinite voxel size, no qform nor sform": (_bad_pixdim(np.inf, ""), None),
    # nibabel would read -3 as 3 mm, the NIfTI C library as 1 mm: the mask would not overlay the scan.
    "negative voxel size, qform only": (_bad_pixdim(-3.0, "qform"), None),
    "singular affine": (_bad_singular, None),
}
