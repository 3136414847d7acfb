"""`mhunet` end to end as a user runs it: real processes, exit codes, one-line errors, outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli_helpers import mhunet, small_volume

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASE01 = DATA / "clinical_flair" / "case01_FLAIR.nii.gz"


@pytest.mark.skipif(not CASE01.exists(), reason="../shared/data/clinical_flair absent")
def test_infer_packaged_weights_keeps_geometry(tmp_path) -> None:
    res = mhunet("infer", str(CASE01), "-o", str(tmp_path), "--qc", "--probabilities", "--quiet")
    assert res.returncode == 0, res.stderr
    src = nib.load(CASE01)
    for name in ("case01_FLAIR_mask.nii.gz", "case01_FLAIR_prob.nii.gz", "case01_FLAIR_brain.nii.gz"):
        out = nib.load(tmp_path / name)
        assert out.shape == src.shape
        np.testing.assert_array_equal(out.affine, src.affine)
        np.testing.assert_array_equal(out.header.get_qform(), src.header.get_qform())
        np.testing.assert_array_equal(out.header.get_sform(), src.header.get_sform())
        assert int(out.header["qform_code"]) == int(src.header["qform_code"])
        assert int(out.header["sform_code"]) == int(src.header["sform_code"])
        assert out.header.get_zooms() == src.header.get_zooms()
    mask = np.asarray(nib.load(tmp_path / "case01_FLAIR_mask.nii.gz").dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    report = json.loads((tmp_path / "case01_FLAIR_report.json").read_text())
    assert report["backend"].startswith("torch") and report["model"]["name"] == "light"
    # A skull-on clinical scan: the packaged model's brain mask, and no lesion voxel outside it.
    brain = np.asarray(nib.load(tmp_path / "case01_FLAIR_brain.nii.gz").dataobj)
    assert report["brain"]["source"] == "model" and 900 < report["brain"]["volume_ml"] < 2000
    assert not mask[brain == 0].any()
    assert report["lesion_count"] == len(report["lesions"])
    assert (tmp_path / "case01_FLAIR_qc.png").stat().st_size > 10_000


def test_batch_continues_past_bad_files_and_reports_them(tmp_path, tiny) -> None:
    good = small_volume(tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 20))
    out = tmp_path / "out"
    res = mhunet("infer", str(bad), str(good), "-o", str(out), "--checkpoint", str(tiny), "--json")
    assert res.returncode == 6, res.stderr
    summary = json.loads(res.stdout)
    assert [Path(r["input"]["path"]).name for r in summary["results"]] == ["good.nii.gz"]
    assert [Path(f["input"]).name for f in summary["failures"]] == ["bad.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == [
        "good_lesions.csv",
        "good_mask.nii.gz",
        "good_report.json",
    ]


def _truncated(tmp: Path) -> Path:
    src = small_volume(tmp / "src.nii.gz")
    p = tmp / "trunc.nii.gz"
    p.write_bytes(src.read_bytes()[:2000])
    return p


def _two_d(tmp: Path) -> Path:
    p = tmp / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(32, 32).astype(np.float32), np.eye(4)), p)
    return p


def _four_d(tmp: Path) -> Path:
    p = tmp / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 8, 3).astype(np.float32), np.eye(4)), p)
    return p


def _nan(tmp: Path) -> Path:
    data = np.random.rand(16, 16, 8).astype(np.float32)
    data[3, 3, 3] = np.nan
    p = tmp / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    return p


def _text(tmp: Path) -> Path:
    p = tmp / "notes.nii.gz"
    p.write_text("hello")
    return p


@pytest.mark.parametrize(
    "make, code, words",
    [
        (_truncated, 2, "truncated or corrupt"),
        (_two_d, 2, "2D"),
        (_four_d, 2, "volume"),
        (_nan, 2, "NaN"),
        (_text, 2, "not a NIfTI"),
        (lambda tmp: tmp / "missing.nii.gz", 2, "does not exist"),
    ],
)
def test_bad_input_one_line_error_and_no_output(tmp_path, tiny, make, code, words) -> None:
    path = make(tmp_path)
    out = tmp_path / "out"
    res = mhunet("infer", str(path), "-o", str(out), "--checkpoint", str(tiny), "--quiet")
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words.lower() in lines[0].lower(), lines
    assert not out.exists()  # nothing written, not even the folder this run created


def test_four_d_with_volume_index_runs(tmp_path, tiny) -> None:
    data = np.random.default_rng(0).normal(100, 10, (40, 48, 12, 2)).astype(np.float32)
    p = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1, 1, 3, 1.0])), p)
    res = mhunet("infer", str(p), "-o", str(tmp_path / "o"), "--checkpoint", str(tiny), "--volume-index", "1")
    assert res.returncode == 0, res.stderr
    assert nib.load(tmp_path / "o" / "series_mask.nii.gz").shape == (40, 48, 12)


def test_unwritable_output_is_refused_cleanly(tmp_path, tiny) -> None:
    vol = small_volume(tmp_path / "v.nii.gz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = mhunet("infer", str(vol), "-o", str(blocker / "sub"), "--checkpoint", str(tiny), "--quiet")
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1


def test_evaluate_and_info(tmp_path) -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[5:10, 5:10, 2:5] = 1
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(mask, np.diag([1, 1, 2, 1.0])), tmp_path / f"{name}.nii.gz")
    res = mhunet("evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["dsc"] == 1.0
    assert json.loads(res.stdout)["lesion_f1_overlap"] == 1.0
    res = mhunet(
        "evaluate",
        str(tmp_path / "a.nii.gz"),
        str(tmp_path / "b.nii.gz"),
        "--brain-truth",
        str(tmp_path / "b.nii.gz"),
        "--brain",
        str(tmp_path / "a.nii.gz"),
        "--json",
    )
    assert res.returncode == 0 and json.loads(res.stdout)["brain_dsc"] == 1.0, res.stderr
    res = mhunet(
        "evaluate",
        str(tmp_path / "a.nii.gz"),
        str(tmp_path / "b.nii.gz"),
        "--brain-truth",
        str(tmp_path / "b.nii.gz"),
    )
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "--brain FILE" in res.stderr
    res = mhunet("info", "--model", "light")
    assert res.returncode == 0 and "parameters" in res.stdout and "GFLOPs" in res.stdout
    assert mhunet("info", "--model", "huge").returncode == 2


def _brain_file(path: Path, shape=(40, 48, 12), zooms=(0.9, 0.9, 3.0)) -> Path:
    mask = np.zeros(shape, np.uint8)
    mask[5:35, 5:30, 2:10] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([*zooms, 1.0])), path)
    return path


def test_brain_mask_options_on_a_two_output_model(tmp_path, tiny_two) -> None:
    """--brain-mask: the user's mask is the brain (written back as <name>_brain), no lesion outside it;
    --no-brain-mask: no brain output, the report says why."""
    vol = small_volume(tmp_path / "v.nii.gz")
    user = _brain_file(tmp_path / "user_brain.nii.gz")
    args = ("--checkpoint", str(tiny_two), "--json", "--threshold", "0.3", "--min-lesion-mm3", "0")
    res = mhunet("infer", str(vol), "-o", str(tmp_path / "a"), "--brain-mask", str(user), *args)
    assert res.returncode == 0, res.stderr
    (report,) = json.loads(res.stdout)["results"]
    assert report["brain"]["source"] == "user" and report["model"]["outputs"] == ["lesion", "brain"]
    brain = np.asarray(nib.load(report["outputs"]["brain"]).dataobj)
    mask = np.asarray(nib.load(report["outputs"]["mask"]).dataobj)
    np.testing.assert_array_equal(brain, np.asarray(nib.load(user).dataobj))
    assert not mask[brain == 0].any()
    res = mhunet("infer", str(vol), "-o", str(tmp_path / "b"), "--no-brain-mask", *args)
    assert res.returncode == 0, res.stderr
    (report,) = json.loads(res.stdout)["results"]
    assert report["brain"] == {
        "source": None,
        "volume_ml": None,
        "reason": "turned off (--no-brain-mask)",
        "lesion_voxels_outside": None,
    }
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "v_lesions.csv",
        "v_mask.nii.gz",
        "v_report.json",
    ]


#: (extra arguments, exit code, words of the message); a usage error prints click's usage block instead
#: of one `error:` line.
BAD_BRAIN = {
    "both options": (
        lambda t: ["--brain-mask", str(_brain_file(t / "m.nii.gz")), "--no-brain-mask"],
        2,
        "exclude",
    ),
    "batch": (
        lambda t: ["--brain-mask", str(_brain_file(t / "m.nii.gz")), str(small_volume(t / "w.nii"))],
        2,
        "2 inputs",
    ),
    "shape": (
        lambda t: ["--brain-mask", str(_brain_file(t / "m.nii.gz", shape=(40, 48, 11)))],
        2,
        "has shape",
    ),
    "affine": (
        lambda t: ["--brain-mask", str(_brain_file(t / "m.nii.gz", zooms=(1, 1, 3)))],
        2,
        "not on the voxel",
    ),
    "named like an output": (
        lambda t: ["--brain-mask", str(_brain_file(t / "out" / "v_brain.nii.gz"))],
        3,
        "overwrite",
    ),
}
USAGE = ("both options", "batch")


@pytest.mark.parametrize("case", BAD_BRAIN)
def test_bad_brain_mask_one_error_and_no_output(tmp_path, tiny_two, case: str) -> None:
    extra, code, words = BAD_BRAIN[case]
    vol = small_volume(tmp_path / "v.nii.gz")
    (tmp_path / "out").mkdir()
    res = mhunet(
        "infer", str(vol), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_two), "-q", *extra(tmp_path)
    )
    assert res.returncode == code and words in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if case in USAGE:
        assert lines[0].startswith("Usage:") and lines[-1].startswith("Error: Invalid value"), lines
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    # Nothing written (only the user's own mask, where it sits in the output folder).
    assert [p.name for p in (tmp_path / "out").iterdir()] == (["v_brain.nii.gz"] if code == 3 else [])


def test_version_needs_no_command() -> None:
    """`mhunet --version` prints the package version and exits 0 (it once failed with "Missing command")."""
    from mhunet_deploy import __version__

    result = mhunet("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mhunet-deploy {__version__}"
