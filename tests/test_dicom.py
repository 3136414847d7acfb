"""DICOM series in: the geometry read from the slices equals the NIfTI the series was made from.

Every series is written here with pydicom from a NIfTI (patient26 from ../shared/data, or synthetic
voxels for the geometry cases); nothing binary is committed. DICOM sorts slices along the normal of
its row and column directions, so a NIfTI whose third axis points the other way comes back with that
axis reversed: the same voxels at the same world positions, which is what these tests compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.errors import InputError
from tests.dicom_helpers import expected_image, needs_pydicom, write_series
from tests.tiny_model import PATIENT26, save_tiny


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[[i, i, j, j], [i, j, i, j]] = c, -s, s, c
    return r


def _affine(rzs: np.ndarray, origin: tuple[float, float, float] = (-60.0, 40.0, -20.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rzs, origin
    return affine


GEOMETRIES = {
    "LAS like dcm2niix (left-handed)": _affine(np.diag([-0.9, 0.9, 3.0])),
    "oblique right-handed": _affine(_rotation(0, 14) @ _rotation(2, -9) @ np.diag([0.8, 0.8, 2.5])),
    "oblique left-handed": _affine(_rotation(1, 21) @ np.diag([0.7, -1.1, 4.0])),
    "sagittal": _affine(np.array([[0, 0, 1.2], [1.0, 0, 0], [0, 1.0, 0]])),
    "gantry tilt (sheared)": _affine(np.array([[1.0, 0, 0], [0, 1.0, 0.9], [0, 0, 3.0]])),
}


@needs_pydicom
@pytest.mark.parametrize("name", GEOMETRIES)
def test_series_geometry_equals_the_source_nifti(tmp_path: Path, name: str) -> None:
    from mhunet_deploy.io.dicom import load_dicom_series

    data = np.random.default_rng(1).integers(0, 3000, (12, 10, 5)).astype(np.float32)
    affine = GEOMETRIES[name]
    write_series(tmp_path / "series", data, affine)
    volume = load_dicom_series(tmp_path / "series")
    want_data, want_affine = expected_image(data, affine)
    np.testing.assert_allclose(volume.image.affine, want_affine, atol=1e-4)
    np.testing.assert_array_equal(volume.data, want_data)
    assert volume.image.header["qform_code"] == volume.image.header["sform_code"] == 1
    assert volume.warnings == []


@needs_pydicom
def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    from mhunet_deploy.io.dicom import load_dicom_series

    data = np.random.default_rng(2).integers(0, 2000, (8, 8, 3)).astype(np.float32) * 0.5 - 100
    write_series(tmp_path / "s", data, _affine(np.eye(3)), rescale=(0.5, -100.0))
    np.testing.assert_array_equal(load_dicom_series(tmp_path / "s").data, data)


@needs_pydicom
def test_patient26_crop_round_trip(tmp_path: Path) -> None:
    if not PATIENT26.exists():
        pytest.skip(f"{PATIENT26} is absent (shared data not mounted)")
    from mhunet_deploy.io.dicom import load_dicom_series

    crop = nib.load(PATIENT26).slicer[42:138, 62:158, 60:100]
    data = np.round(np.asarray(crop.dataobj, dtype=np.float32) * 100) / 100
    write_series(tmp_path / "p26", data, crop.affine, rescale=(0.01, 0.0))
    volume = load_dicom_series(tmp_path / "p26")
    want_data, want_affine = expected_image(data, crop.affine)
    np.testing.assert_allclose(volume.image.affine, want_affine, atol=1e-4)
    np.testing.assert_allclose(volume.data, want_data, atol=1e-3)
    # The same voxel centres in world space, whichever way the slices run.
    corners = np.array([[0, 0, 0, 1], [95, 95, 39, 1]]).T
    np.testing.assert_allclose(
        np.sort((volume.image.affine @ corners)[:3], axis=1), np.sort((crop.affine @ corners)[:3], axis=1)
    )


def _move_one_slice(k: int, ds: Any) -> None:
    if k == 1:
        ds.ImagePositionPatient = [v + 0.9 * 3.0 for v in ds.ImagePositionPatient]


REFUSED: dict[str, tuple[Callable[[int, Any], None] | None, str]] = {
    "missing position": (
        lambda k, ds: k == 2 and delattr(ds, "ImagePositionPatient"),
        "lacks ImagePositionPatient",
    ),
    "missing orientation": (
        lambda k, ds: k == 0 and delattr(ds, "ImageOrientationPatient"),
        "lacks ImageOrientationPatient",
    ),
    "other orientation": (
        lambda k, ds: k == 3 and setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]),
        "differs from",
    ),
    "other pixel spacing": (
        lambda k, ds: k == 1 and setattr(ds, "PixelSpacing", [2.0, 2.0]),
        "pixel spacing",
    ),
    "uneven slices": (_move_one_slice, "unevenly spaced"),
    "two slices at one position": (
        lambda k, ds: k == 1 and setattr(ds, "ImagePositionPatient", [60.0, -40.0, -20.0]),
        "share one position",
    ),
    "multi-frame": (lambda k, ds: k == 0 and setattr(ds, "NumberOfFrames", 4), "multi-frame"),
    "colour": (lambda k, ds: k == 0 and setattr(ds, "SamplesPerPixel", 3), "colour image"),
}


@needs_pydicom
@pytest.mark.parametrize("case", REFUSED)
def test_bad_series_is_one_line_input_error(tmp_path: Path, case: str) -> None:
    from mhunet_deploy.io.dicom import load_dicom_series

    edit, words = REFUSED[case]
    data = np.random.default_rng(3).integers(1, 500, (6, 7, 5)).astype(np.float32)
    write_series(tmp_path / "s", data, _affine(np.diag([0.9, 0.9, 3.0])), edit=edit)
    with pytest.raises(InputError) as info:
        load_dicom_series(tmp_path / "s")
    message = str(info.value)
    assert words in message and "\n" not in message and "; " in message, message


@needs_pydicom
def test_several_series_need_series_uid(tmp_path: Path) -> None:
    from mhunet_deploy.io.dicom import load_dicom_series

    data = np.random.default_rng(4).integers(1, 500, (6, 7, 4)).astype(np.float32)
    write_series(tmp_path / "s", data, _affine(np.eye(3)), series_uid="1.2.3.1", description="FLAIR")
    write_series(tmp_path / "s", data + 7, _affine(np.eye(3)), series_uid="1.2.3.2", description="T1")
    with pytest.raises(InputError, match=r"holds 2 series: .*FLAIR, 4 slices.*; pick one with --series UID"):
        load_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(load_dicom_series(tmp_path / "s", "1.2.3.2").data, data + 7)
    with pytest.raises(InputError, match="has no series 9.9"):
        load_dicom_series(tmp_path / "s", "9.9")
    only_one = tmp_path / "one"
    write_series(only_one, data[:, :, :1], _affine(np.eye(3)))
    with pytest.raises(InputError, match="holds one slice"):
        load_dicom_series(only_one)


@needs_pydicom
def test_infer_on_dicom_writes_the_mask_on_the_nifti_geometry(tmp_path: Path) -> None:
    """One CLI batch: a DICOM series and the NIfTI it was made from give the same mask on the same grid."""
    if not PATIENT26.exists():
        pytest.skip(f"{PATIENT26} is absent (shared data not mounted)")
    crop = nib.as_closest_canonical(nib.load(PATIENT26).slicer[42:138, 62:158, 80:84])  # RAS, 4 slices
    data = np.round(np.asarray(crop.dataobj, dtype=np.float32) * 100)
    nifti = tmp_path / "p26.nii.gz"
    nib.save(nib.Nifti1Image(data, crop.affine), nifti)
    write_series(tmp_path / "p26_dicom", data, crop.affine)
    out = tmp_path / "out"
    tiny = save_tiny(tmp_path / "tiny.safetensors")
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(tmp_path / "p26_dicom"), str(nifti)]
    res = subprocess.run(
        [*cmd, "-o", str(out), "--checkpoint", str(tiny), "--no-dicom-seg", "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert [r["input"]["path"] for r in json.loads(res.stdout)["results"]] == [
        str(tmp_path / "p26_dicom"),
        str(nifti),
    ]
    from_dicom, from_nifti = nib.load(out / "p26_dicom_mask.nii.gz"), nib.load(out / "p26_mask.nii.gz")
    assert from_dicom.shape == from_nifti.shape == data.shape
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj))
    assert from_dicom.header["qform_code"] == from_dicom.header["sform_code"] == 1
    assert not list(out.glob("*.dcm"))  # --no-dicom-seg: no SEG, and no SR either


@needs_pydicom
def test_one_dicom_file_points_to_its_folder(tmp_path: Path) -> None:
    from mhunet_deploy.io.nifti import load_volume

    data = np.random.default_rng(5).integers(1, 500, (6, 7, 2)).astype(np.float32)
    first = write_series(tmp_path / "s", data, _affine(np.eye(3)))[0]
    with pytest.raises(InputError, match="is one DICOM slice; pass the folder that holds its series"):
        load_volume(first)


def test_without_pydicom_one_line_says_what_to_install(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # recognised by its magic alone
    code = (
        "import sys; sys.modules['pydicom'] = None; from mhunet_deploy.cli import main; "
        f"sys.argv = ['mhunet', 'infer', {str(series)!r}, '-o', {str(tmp_path / 'out')!r}, '--quiet']; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert lines == [f'error: {series}: reading DICOM needs pydicom; pip install "mhunet-deploy[dicom]"']


@needs_pydicom
def test_a_dicomdir_beside_the_slices_is_not_a_second_series(tmp_path: Path) -> None:
    """Exports from a CD or a PACS carry a DICOMDIR index, whose class is in its file meta only."""
    import pydicom
    from pydicom.fileset import FileSet

    from mhunet_deploy.io.dicom import load_dicom_series

    data = np.random.default_rng(9).integers(1, 500, (6, 7, 3)).astype(np.float32)
    paths = write_series(tmp_path / "s", data, _affine(np.eye(3)))
    index = FileSet()
    for p in paths:
        index.add(pydicom.dcmread(p))
    index.write(tmp_path / "fs")
    (tmp_path / "s" / "DICOMDIR").write_bytes((tmp_path / "fs" / "DICOMDIR").read_bytes())
    np.testing.assert_array_equal(load_dicom_series(tmp_path / "s").data, data)
