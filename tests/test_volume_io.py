"""volume_io: every unusable input is refused with one line; outputs keep the input's geometry header."""

from __future__ import annotations

import errno
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.errors import InputError, OutputError
from mhunet_deploy.volume_io import (
    MAX_AXIS_VOXELS,
    atomic_write,
    load_volume,
    save_like,
    volume_from_image,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Header fields save_like may change: datatype and scaling, display window, data offset.
_NOT_COPIED = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_min", "cal_max", "vox_offset"}


def _image(data: np.ndarray, affine: np.ndarray | None = None) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def _saved(tmp_path: Path, img: nib.Nifti1Image, name: str = "scan.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(img, path)
    return path


def _raw_header_file(
    tmp_path: Path, edit: Callable[[nib.Nifti1Header], None], shape: tuple[int, int, int] = (4, 4, 4)
) -> Path:
    """A small valid .nii whose header is then edited and written as is (nibabel's save would repair
    pixdim); the voxel block stays small."""
    hdr = _image(_noise(shape)).header
    edit(hdr)
    hdr["vox_offset"] = 352  # the voxels follow the header and its 4-byte extension flag
    path = tmp_path / "scan.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + _noise(shape).tobytes(order="F"))
    return path


def _bad_truncated_gzip(tmp_path: Path) -> Path:
    path = _saved(tmp_path, _image(_noise((16, 16, 16))))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bad_truncated_nii(tmp_path: Path) -> Path:
    path = _saved(tmp_path, _image(_noise((16, 16, 16))), "scan.nii")
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
    img = nib.AnalyzeImage(_noise((8, 8, 8)), np.eye(4))
    nib.save(img, tmp_path / "scan.hdr")
    return tmp_path / "scan.hdr"


def _bad_structured(code: int) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        def edit(hdr: nib.Nifti1Header) -> None:
            hdr["datatype"] = code
            hdr["bitpix"] = {1: 1, 32: 64, 128: 24}[code]

        return _raw_header_file(tmp_path, edit)

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

    return _raw_header_file(tmp_path, edit, shape)


def _bad_pixdim(value: float, forms: str) -> Callable[[Path], Path]:
    return lambda tmp_path: scan_with_pixdim(tmp_path, value, forms)


def _bad_shape(shape: tuple[int, ...]) -> Callable[[Path], Path]:
    return lambda tmp_path: _raw_header_file(tmp_path, lambda hdr: hdr.set_data_shape(shape))


def _bad_singular(tmp_path: Path) -> Path:
    def edit(hdr: nib.Nifti1Header) -> None:
        affine = np.eye(4)
        affine[:3, 1] = affine[:3, 0]  # two voxel axes point the same way
        hdr.set_sform(affine, code=2)

    return _raw_header_file(tmp_path, edit)


def _bad_voxels(value: float) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        data = _noise((8, 8, 8))
        data[3, 4, 5] = value
        return _saved(tmp_path, _image(data))

    return make


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], int | None]] = {
    "missing": (lambda tmp_path: tmp_path / "nope.nii.gz", None),
    "folder": (lambda tmp_path: tmp_path, None),
    "text named .nii.gz": (_bad_text, None),
    "random bytes after gzip magic": (_bad_not_gzip_inside, None),
    "truncated gzip": (_bad_truncated_gzip, None),
    "truncated nii": (_bad_truncated_nii, None),
    "analyze not nifti": (_bad_analyze, None),
    "2D": (lambda tmp_path: _saved(tmp_path, _image(_noise((8, 8)))), None),
    "one slice": (lambda tmp_path: _saved(tmp_path, _image(_noise((8, 8, 1)))), None),
    "4D several volumes": (lambda tmp_path: _saved(tmp_path, _image(_noise((6, 6, 6, 3)))), None),
    "4D index out of range": (lambda tmp_path: _saved(tmp_path, _image(_noise((6, 6, 6, 3)))), 3),
    "4D negative index": (lambda tmp_path: _saved(tmp_path, _image(_noise((6, 6, 6, 3)))), -1),
    "5D vectors": (lambda tmp_path: _saved(tmp_path, _image(_noise((6, 6, 6, 1, 3)))), None),
    "rgb": (_bad_structured(128), None),
    "complex": (_bad_structured(32), None),
    "binary/bool": (_bad_structured(1), None),
    "nan voxel": (_bad_voxels(np.nan), None),
    "inf voxel": (_bad_voxels(-np.inf), None),
    "all zero": (lambda tmp_path: _saved(tmp_path, _image(np.zeros((8, 8, 8), np.int16))), None),
    "axis too long": (_bad_shape((MAX_AXIS_VOXELS + 1, 4, 4)), None),
    "too many voxels": (_bad_shape((2048, 2048, 128)), None),
    "zero voxel size, qform only": (_bad_pixdim(0.0, "qform"), None),
    "zero voxel size, no qform nor sform": (_bad_pixdim(0.0, ""), None),
    "nan voxel size, qform only": (_bad_pixdim(np.nan, "qform"), None),
    "infinite voxel size, no qform nor sform": (_bad_pixdim(np.inf, ""), None),
    # nibabel would read -3 as 3 mm, the NIfTI C library as 1 mm: the mask would not overlay the scan.
    "negative voxel size, qform only": (_bad_pixdim(-3.0, "qform"), None),
    "singular affine": (_bad_singular, None),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_input_error(tmp_path: Path, case: str) -> None:
    make, volume_index = BAD_INPUTS[case]
    with pytest.raises(InputError) as info:
        load_volume(make(tmp_path), volume_index)
    message = str(info.value)
    assert message and "\n" not in message and ";" in message, message


def test_raw_header_file_is_valid_apart_from_its_edit(tmp_path: Path) -> None:
    """The corpus generator writes a loadable file, so each case fails for its own defect only."""
    volume = load_volume(_raw_header_file(tmp_path, lambda hdr: None))
    np.testing.assert_array_equal(volume.data, _noise((4, 4, 4)))
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
    path = _bad_shape((2048, 2048, 2048))(tmp_path)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxels were read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_read)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", no_read)
    with pytest.raises(InputError, match="implausible size"):
        load_volume(path)


def test_scaling_applied_and_single_volume_4d_accepted(tmp_path: Path) -> None:
    raw = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8, 1)
    img = _image(raw)
    img.header.set_slope_inter(0.5, -3.0)
    volume = load_volume(_saved(tmp_path, img))
    assert volume.data.shape == (6, 7, 8) and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, raw[..., 0] * 0.5 - 3.0)
    assert volume.warnings == []


def test_volume_index_picks_that_volume(tmp_path: Path) -> None:
    data = _noise((6, 7, 8, 3))
    volume = load_volume(_saved(tmp_path, _image(data)), volume_index=2)
    np.testing.assert_array_equal(volume.data, data[..., 2])
    assert volume.image.shape == (6, 7, 8)


def test_missing_qform_and_sform_accepted_with_warning(tmp_path: Path) -> None:
    img = nib.Nifti1Image(_noise((6, 7, 8)), None)  # no affine: both codes stay 0
    volume = load_volume(_saved(tmp_path, img, "scan.nii"))
    assert volume.image.header["qform_code"] == volume.image.header["sform_code"] == 0
    assert len(volume.warnings) == 1 and "qform" in volume.warnings[0]


def test_hdr_img_pair_loads_and_saves_as_nii(tmp_path: Path) -> None:
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.9, 0.1, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    pair = nib.Nifti1Pair(_noise((6, 7, 8)), affine)
    nib.save(pair, tmp_path / "scan.img")
    volume = load_volume(tmp_path / "scan.img")
    out = save_like(volume.image, np.ones((6, 7, 8), np.uint8), tmp_path / "mask.nii.gz", np.uint8)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(tmp_path / "scan.hdr").affine)


def test_in_memory_image_is_validated() -> None:
    volume = volume_from_image(_image(_noise((6, 7, 8))))
    assert volume.path is None
    with pytest.raises(InputError, match="in-memory image"):
        volume_from_image(_image(np.zeros((6, 7, 8), np.float32)))


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
    src = _saved(tmp_path, img, f"scan{seed}.nii")
    volume = load_volume(src)
    labels = (np.arange(volume.data.size).reshape(shape) % 3).astype(np.uint8)
    out = save_like(volume.image, labels, tmp_path / "mask.nii.gz", np.uint8)
    _assert_same_geometry(src, out)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), labels)


def test_probability_map_is_float32_and_unscaled(tmp_path: Path) -> None:
    volume = load_volume(_saved(tmp_path, _image(_noise((6, 7, 8)))))
    prob = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    written = nib.load(save_like(volume.image, prob, tmp_path / "prob.nii", np.float32))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), prob)


def test_4d_reference_gives_3d_output_with_same_geometry(tmp_path: Path) -> None:
    img = _image(_noise((6, 7, 8, 2)), _random_oblique_affine(np.random.default_rng(5)))
    src = _saved(tmp_path, img)
    volume = load_volume(src, volume_index=1)
    _assert_same_geometry(
        src, save_like(volume.image, np.zeros((6, 7, 8), np.uint8), tmp_path / "m.nii", "u1")
    )
    with pytest.raises(OutputError, match="input scan"):
        save_like(volume.image, np.zeros((6, 7, 8), np.uint8), src, np.uint8)


def test_refuses_to_overwrite_the_input(tmp_path: Path) -> None:
    src = _saved(tmp_path, _image(_noise((6, 7, 8))))
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
    volume = volume_from_image(_image(_noise((6, 7, 8))))
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
    volume = volume_from_image(_image(_noise((6, 7, 8))))
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
