"""io: every unusable input is refused with one line; outputs keep the input's geometry header."""

from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.errors import InputError, OutputError
from mhunet_deploy.files import atomic_write
from mhunet_deploy.io.nifti import load_volume, volume_from_image
from mhunet_deploy.io.outputs import save_like
from tests.corpus import (
    BAD_INPUTS,
    TRUE_ZOOMS,
    bad_shape,
    nifti_image,
    noise,
    raw_header_file,
    saved,
    scan_with_pixdim,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Header fields save_like may change: datatype and scaling, display window, data offset.
_NOT_COPIED = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_min", "cal_max", "vox_offset"}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_input_error(tmp_path: Path, case: str) -> None:
    make, volume_index = BAD_INPUTS[case]
    with pytest.raises(InputError) as info:
        load_volume(make(tmp_path), volume_index)
    message = str(info.value)
    assert message and "\n" not in message and ";" in message, message


def test_raw_header_file_is_valid_apart_from_its_edit(tmp_path: Path) -> None:
    """The corpus generator writes a loadable file, so each case fails for its own defect only."""
    volume = load_volume(raw_header_file(tmp_path, lambda hdr: None))
    np.testing.assert_array_equal(volume.data, noise((4, 4, 4)))
    assert volume.zooms == (1.0, 1.0, 1.0) and volume.warnings == []


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if "voxel size," in c])
def test_voxel_size_without_sform_is_refused_for_itself(tmp_path: Path, case: str) -> None:
    make, _ = BAD_INPUTS[case]
    with pytest.raises(InputError, match=r"has voxel size 2 x \S+ x 4 mm \(pixdim\) and no sform"):
        load_volume(make(tmp_path))


@pytest.mark.parametrize("forms", ["sform", "qform+sform"])
@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, -3.0])
def test_voxel_size_defect_beside_an_sform_takes_the_sform(tmp_path: Path, value: float, forms: str) -> None:
    """The sform alone places the voxels: zooms (hence mm3) come from it, not from nibabel's repaired
    pixdim (0 read as 1 mm); a zero or non-finite pixdim is worth a warning, a negative one is not."""
    path = scan_with_pixdim(tmp_path, value, forms)
    volume = load_volume(path)
    assert volume.zooms == TRUE_ZOOMS
    np.testing.assert_array_equal(volume.image.affine, np.diag([*TRUE_ZOOMS, 1.0]))
    if value < 0:
        assert volume.warnings == []
    else:
        assert volume.warnings == [
            f"scan.nii stores voxel size 2 x {value:g} x 4 mm (pixdim); the sform's 2 x 3 x 4 mm is used, "
            "tools that read pixdim may measure other volumes"
        ]
    mask = save_like(volume.image, np.ones((4, 4, 4), np.uint8), tmp_path / "mask.nii.gz", np.uint8)
    np.testing.assert_array_equal(nib.load(mask).affine, nib.load(path).affine)


def test_absurd_shape_refused_before_reading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = bad_shape((2048, 2048, 2048))(tmp_path)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxels were read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_read)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", no_read)
    with pytest.raises(InputError, match="implausible size"):
        load_volume(path)


def test_scaling_applied_and_single_volume_4d_accepted(tmp_path: Path) -> None:
    raw = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8, 1)
    img = nifti_image(raw)
    img.header.set_slope_inter(0.5, -3.0)
    volume = load_volume(saved(tmp_path, img))
    assert volume.data.shape == (6, 7, 8) and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, raw[..., 0] * 0.5 - 3.0)
    assert volume.warnings == []


def test_volume_index_picks_that_volume(tmp_path: Path) -> None:
    data = noise((6, 7, 8, 3))
    volume = load_volume(saved(tmp_path, nifti_image(data)), volume_index=2)
    np.testing.assert_array_equal(volume.data, data[..., 2])
    assert volume.image.shape == (6, 7, 8)


def test_missing_qform_and_sform_accepted_with_warning(tmp_path: Path) -> None:
    img = nib.Nifti1Image(noise((6, 7, 8)), None)  # no affine: both codes stay 0
    volume = load_volume(saved(tmp_path, img, "scan.nii"))
    assert volume.image.header["qform_code"] == volume.image.header["sform_code"] == 0
    assert len(volume.warnings) == 1 and "qform" in volume.warnings[0]


def test_hdr_img_pair_loads_and_saves_as_nii(tmp_path: Path) -> None:
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.9, 0.1, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    pair = nib.Nifti1Pair(noise((6, 7, 8)), affine)
    nib.save(pair, tmp_path / "scan.img")
    volume = load_volume(tmp_path / "scan.img")
    out = save_like(volume.image, np.ones((6, 7, 8), np.uint8), tmp_path / "mask.nii.gz", np.uint8)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(tmp_path / "scan.hdr").affine)


def test_in_memory_image_is_validated() -> None:
    volume = volume_from_image(nifti_image(noise((6, 7, 8))))
    assert volume.path is None
    with pytest.raises(InputError, match="in-memory image"):
        volume_from_image(nifti_image(np.zeros((6, 7, 8), np.float32)))


def _file_header(path: Path) -> nib.Nifti1Header:
    """The header as stored on disk (a loaded image's header has its scaling reset by nibabel)."""
    with nib.openers.ImageOpener(path) as f:
        return nib.Nifti1Header.from_fileobj(f)


def _assert_same_geometry(reference: Path, written: Path) -> None:
    ref_img, out_img = nib.load(reference), nib.load(written)
    assert out_img.shape == ref_img.shape[:3]
    np.testing.assert_array_equal(out_img.affine, ref_img.affine)
    ref_hdr, out_hdr = _file_header(reference), _file_header(written)
    for ref_form, out_form in (
        (ref_hdr.get_qform(coded=True), out_hdr.get_qform(coded=True)),
        (ref_hdr.get_sform(coded=True), out_hdr.get_sform(coded=True)),
    ):
        assert out_form[1] == ref_form[1]
        np.testing.assert_array_equal(out_form[0], ref_form[0])
    assert out_hdr.get_zooms() == ref_hdr.get_zooms()[:3]
    assert out_hdr.get_xyzt_units() == ref_hdr.get_xyzt_units()
    for key in ref_hdr:
        if key not in _NOT_COPIED and key != "dim":
            np.testing.assert_array_equal(out_hdr[key], ref_hdr[key], err_msg=key)
    assert out_hdr["scl_slope"] == 1 and out_hdr["scl_inter"] == 0
    assert out_hdr["cal_min"] == out_hdr["cal_max"] == 0


@pytest.mark.parametrize("case", ["case01", "case03"])
def test_mask_keeps_real_scan_geometry(tmp_path: Path, case: str) -> None:
    path = DATA / "clinical_flair" / f"{case}_FLAIR.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data not mounted)")
    volume = load_volume(path)
    mask = (volume.data > np.percentile(volume.data, 90)).astype(np.uint8)
    out = save_like(volume.image, mask, tmp_path / "mask.nii.gz", np.uint8)
    _assert_same_geometry(path, out)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), mask)


def _random_oblique_affine(rng: np.random.Generator) -> np.ndarray:
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    permuted = rotation[:, rng.permutation(3)] * rng.choice([-1, 1], 3)
    affine = np.eye(4)
    affine[:3, :3] = permuted @ np.diag(rng.uniform(0.4, 4.0, 3))
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


@pytest.mark.parametrize(
    ("seed", "dtype", "slope_inter"),
    [(0, np.int16, (2.5, -7.0)), (1, np.uint8, None), (2, np.float64, None), (3, np.int16, None)],
)
def test_synthetic_geometry_round_trip(
    tmp_path: Path, seed: int, dtype: type, slope_inter: tuple[float, float] | None
) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 12, 3))
    img = nib.Nifti1Image((rng.uniform(1, 100, shape)).astype(dtype), _random_oblique_affine(rng))
    # qform: a different rigid+zoom affine than the sform, each with its own code.
    img.header.set_qform(_random_oblique_affine(rng), code=1)
    img.header.set_sform(_random_oblique_affine(rng) @ np.diag([1, 1.2, 1, 1]), code=4)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"synthetic"
    if slope_inter:
        img.header.set_slope_inter(*slope_inter)
    src = saved(tmp_path, img, f"scan{seed}.nii")
    volume = load_volume(src)
    labels = (np.arange(volume.data.size).reshape(shape) % 3).astype(np.uint8)
    out = save_like(volume.image, labels, tmp_path / "mask.nii.gz", np.uint8)
    _assert_same_geometry(src, out)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), labels)


def test_probability_map_is_float32_and_unscaled(tmp_path: Path) -> None:
    volume = load_volume(saved(tmp_path, nifti_image(noise((6, 7, 8)))))
    prob = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    written = nib.load(save_like(volume.image, prob, tmp_path / "prob.nii", np.float32))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), prob)


def test_4d_reference_gives_3d_output_with_same_geometry(tmp_path: Path) -> None:
    img = nifti_image(noise((6, 7, 8, 2)), _random_oblique_affine(np.random.default_rng(5)))
    src = saved(tmp_path, img)
    volume = load_volume(src, volume_index=1)
    _assert_same_geometry(
        src, save_like(volume.image, np.zeros((6, 7, 8), np.uint8), tmp_path / "m.nii", "u1")
    )
    with pytest.raises(OutputError, match="input scan"):
        save_like(volume.image, np.zeros((6, 7, 8), np.uint8), src, np.uint8)


def test_refuses_to_overwrite_the_input(tmp_path: Path) -> None:
    src = saved(tmp_path, nifti_image(noise((6, 7, 8))))
    before = src.read_bytes()
    volume = load_volume(src)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    for target in (src, link, tmp_path / "." / "scan.nii.gz"):
        with pytest.raises(OutputError, match="input scan"):
            save_like(volume.image, np.zeros((6, 7, 8), np.uint8), target, np.uint8)
    assert src.read_bytes() == before


@pytest.mark.parametrize("where", ["under a file", "missing folder", "is a folder", "bad suffix"])
def test_unwritable_destination_is_output_error(tmp_path: Path, where: str) -> None:
    volume = volume_from_image(nifti_image(noise((6, 7, 8))))
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir.nii.gz").mkdir()
    target = {
        "under a file": tmp_path / "plain" / "mask.nii.gz",
        "missing folder": tmp_path / "nope" / "mask.nii.gz",
        "is a folder": tmp_path / "dir.nii.gz",
        "bad suffix": tmp_path / "mask.png",
    }[where]
    with pytest.raises(OutputError) as info:
        save_like(volume.image, np.zeros((6, 7, 8), np.uint8), target, np.uint8)
    assert "\n" not in str(info.value)


def test_disk_full_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = volume_from_image(nifti_image(noise((6, 7, 8))))
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"previous run")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match="no space left"):
        save_like(volume.image, np.zeros((6, 7, 8), np.uint8), target, np.uint8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
    assert target.read_bytes() == b"previous run"


def test_failing_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"lesions": [')
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []

    def fails_with_os_error(tmp: Path) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    with pytest.raises(OutputError, match="writable"):
        atomic_write(target, fails_with_os_error)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_suffix_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.json.gz"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(gzip.compress(b"{}"))

    target.write_text("old")
    assert atomic_write(target, write) == target
    assert seen[0].parent == tmp_path and seen[0].name.endswith(".out.json.gz")
    assert gzip.decompress(target.read_bytes()) == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json.gz"]
