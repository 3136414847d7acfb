"""pipeline.infer_volume: the report's numbers come from the geometry the pipeline resamples with,
and its provenance from the backend that ran."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mhunet_deploy.pipeline import InferOptions, infer_volume
from tests.corpus import TRUE_ZOOMS, scan_with_pixdim
from tests.fake_backends import EverywhereLesion

SHAPE = (12, 10, 6)


def _infer(tmp_path: Path, scan: Path, backend: EverywhereLesion) -> dict:
    options = InferOptions(model_info={"name": "test", "sha256": "0" * 64})
    return infer_volume(scan, tmp_path / "out", backend, options)


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_lesion_volume_uses_the_sform_voxel_size_when_pixdim_is_off(tmp_path: Path, value: float) -> None:
    """nibabel reads a stored pixdim of 0 as 1 mm; the sform says 3 mm and the pipeline resamples
    with the sform, so mm3 (minimum lesion size, volumes) must use 3 mm too."""
    report = _infer(tmp_path, scan_with_pixdim(tmp_path, value, "sform", SHAPE), EverywhereLesion())
    voxel_ml = float(np.prod(TRUE_ZOOMS)) / 1000
    assert report["input"]["zooms"] == list(TRUE_ZOOMS)
    assert report["lesion_count"] == 1 and report["lesions"][0]["voxels"] == np.prod(SHAPE)
    assert report["total_volume_ml"] == pytest.approx(np.prod(SHAPE) * voxel_ml)
    written = json.loads(Path(report["outputs"]["report"]).read_text())
    assert written["total_volume_ml"] == pytest.approx(report["total_volume_ml"])


@pytest.mark.parametrize(
    "key",
    [
        None,  # torch, onnxruntime: no engine
        {
            "library": "tensorrt-rtx",
            "library_version": "1.7.1.116",
            "onnx_sha256": "1" * 64,
            "plugin_sha256": None,
            "target": {"compute_capabilities": ["SM86"]},
            "precision": "fp16",
            "profile": {"min": 1, "opt": 8, "max": 32},
            "engine_sha256": "2" * 64,
        },
    ],
)
def test_report_carries_the_engine_key_of_the_backend(tmp_path: Path, key: dict | None) -> None:
    """TensorRT backends expose their engine's sidecar key (the TensorRT run itself needs a GPU);
    the report, returned and written, carries exactly that key, or null."""
    report = _infer(tmp_path, scan_with_pixdim(tmp_path, 3.0, "sform", SHAPE), EverywhereLesion(key))
    assert report["engine_key"] == key
    assert json.loads(Path(report["outputs"]["report"]).read_text())["engine_key"] == key


def test_display_name_replaces_the_input_path_in_report_and_qc(tmp_path: Path) -> None:
    """A server runs uploads from its job folder; that path must not reach the report or QC page."""
    scan = scan_with_pixdim(tmp_path, 3.0, "sform", SHAPE)
    model = {"name": "t", "sha256": "0" * 64}
    options = InferOptions(qc=True, display_name="upload.nii.gz", model_info=model)
    report = infer_volume(scan, tmp_path / "out", EverywhereLesion(), options)
    assert report["input"]["path"] == "upload.nii.gz"
    written = Path(report["outputs"]["report"]).read_text()
    assert str(tmp_path) not in json.dumps(json.loads(written)["input"])
    assert Path(report["outputs"]["qc"]).stat().st_size > 0
    plain = infer_volume(scan, tmp_path / "out2", EverywhereLesion(), InferOptions(model_info=model))
    assert plain["input"]["path"] == str(scan)


# --- the brain stage --------------------------------------------------------------------------------

GRID = 256


class LesionAndBrain:
    """A two-output backend: brain = a disc of radius 20 px at the grid centre; lesion = every pixel at
    or right of the centre column, so lesion detections run from inside the brain out past its edge."""

    name = "lesion+brain"
    precision = "fp32"
    outputs = ("lesion", "brain")
    batch_size = 8
    engine_key = None
    array_device = "cpu"

    def predict(self, slices: np.ndarray) -> np.ndarray:
        r, a = np.mgrid[:GRID, :GRID] - (GRID - 1) / 2
        out = np.empty((len(slices), 2, GRID, GRID), np.float32)
        out[:, 0] = np.where(a >= 0, 30.0, -30.0)
        out[:, 1] = np.where(r**2 + a**2 <= 20**2, 30.0, -30.0)
        return out


def head_scan(tmp_path: Path, shape: tuple[int, int, int] = (64, 64, 8)) -> Path:
    """1 mm in plane, 3 mm slices, RAS, some signal in every slice."""
    import nibabel as nib

    data = np.random.default_rng(0).uniform(50, 100, shape).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0]))
    img.set_qform(img.affine, code=1)
    path = tmp_path / "head.nii.gz"
    nib.save(img, path)
    return path


def _voxels(path: str | Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def test_no_lesion_voxel_outside_the_model_brain_mask(tmp_path: Path) -> None:
    import nibabel as nib

    scan = head_scan(tmp_path)
    options = InferOptions(probabilities=True, model_info={"name": "t", "sha256": "0" * 64})
    report = infer_volume(scan, tmp_path / "out", LesionAndBrain(), options)
    mask, brain = _voxels(report["outputs"]["mask"]), _voxels(report["outputs"]["brain"])
    prob = _voxels(report["outputs"]["probabilities"])
    assert mask.dtype == brain.dtype == np.uint8 and set(np.unique(brain)) == {0, 1}
    written = nib.load(report["outputs"]["brain"])
    np.testing.assert_array_equal(written.affine, nib.load(scan).affine)
    assert written.shape == nib.load(scan).shape and int(written.header["qform_code"]) == 1
    assert mask.any() and not mask[brain == 0].any()  # the point of the brain stage
    outside = int(((prob >= options.threshold) & (brain == 0)).sum())
    assert outside > 0  # the lesion channel did fire outside: the stage removed something
    info = report["brain"]
    assert info["source"] == "model" and info["reason"] is None
    assert info["lesion_voxels_outside"] == outside
    assert info["volume_ml"] == pytest.approx(brain.sum() * 3.0 / 1000)
    assert report["model"] == options.model_info and report["warnings"] == []
    assert json.loads(Path(report["outputs"]["report"]).read_text())["brain"] == info


def test_user_brain_mask_replaces_the_model_one(tmp_path: Path) -> None:
    import nibabel as nib

    scan = head_scan(tmp_path)
    user = np.zeros((64, 64, 8), np.uint8)
    user[10:40, 20:60, 2:6] = 7  # any value > 0 is brain
    nib.save(nib.Nifti1Image(user, np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "user.nii.gz")
    model = {"name": "t", "sha256": "0" * 64}
    options = InferOptions(brain_mask=tmp_path / "user.nii.gz", model_info=model)
    report = infer_volume(scan, tmp_path / "out", LesionAndBrain(), options)
    mask, brain = _voxels(report["outputs"]["mask"]), _voxels(report["outputs"]["brain"])
    np.testing.assert_array_equal(brain, user > 0)
    assert mask.any() and not mask[user == 0].any()
    assert report["brain"]["source"] == "user" and report["brain"]["volume_ml"] == pytest.approx(4.8 * 3)


@pytest.mark.parametrize("backend", [LesionAndBrain(), EverywhereLesion()], ids=["two-output", "one-output"])
def test_without_a_brain_stage_lesions_are_not_restricted(tmp_path: Path, backend) -> None:
    scan = head_scan(tmp_path)
    off = backend.outputs == ("lesion", "brain")  # the two-output model with --no-brain-mask
    options = InferOptions(no_brain_mask=off, qc=True, model_info={"name": "t", "sha256": "0" * 64})
    report = infer_volume(scan, tmp_path / "out", backend, options)
    assert "brain" not in report["outputs"] and not list((tmp_path / "out").glob("*_brain.nii.gz"))
    info = report["brain"]
    assert info["source"] is None and info["volume_ml"] is None and info["lesion_voxels_outside"] is None
    assert info["reason"] == (
        "turned off (--no-brain-mask)"
        if off
        else "the model has no brain output; lesions are not restricted to the brain"
    )
    mask = _voxels(report["outputs"]["mask"])
    assert mask[:, 40:].any()  # far outside the model's brain disc (x, y within 20 mm of the centre)


class NoBrain(LesionAndBrain):
    def predict(self, slices: np.ndarray) -> np.ndarray:
        out = super().predict(slices)
        out[:, 1] = -30.0
        return out


def test_a_model_that_finds_no_brain_keeps_no_lesion_and_says_so(tmp_path: Path) -> None:
    options = InferOptions(model_info={"name": "t", "sha256": "0" * 64})
    report = infer_volume(head_scan(tmp_path), tmp_path / "out", NoBrain(), options)
    assert report["lesion_count"] == 0 and report["brain"]["volume_ml"] == 0.0
    assert report["brain"]["lesion_voxels_outside"] > 0
    assert any("found no brain" in w and "--no-brain-mask" in w for w in report["warnings"])


def test_report_times_every_stage_and_the_total_is_their_sum(tmp_path: Path) -> None:
    report = _infer(tmp_path, scan_with_pixdim(tmp_path, 3.0, "sform", SHAPE), EverywhereLesion())
    timings = report["timings"]
    stages = ("load_s", "preprocess_s", "model_s", "postprocess_s", "write_s")
    assert list(timings) == [*stages, "total_s"]
    assert all(timings[k] > 0 for k in stages)
    assert timings["total_s"] == pytest.approx(sum(timings[k] for k in stages))
    assert json.loads(Path(report["outputs"]["report"]).read_text())["timings"] == timings


def test_read_ahead_gives_each_input_its_own_volume_or_error_in_order(tmp_path: Path) -> None:
    """A batch reads ahead; every input still gets its own result, a bad one its own error."""
    from mhunet_deploy.errors import InputError
    from mhunet_deploy.pipeline import read_ahead

    good = []
    for name, shape in (("a", SHAPE), ("b", (8, 9, 5))):
        (tmp_path / name).mkdir()
        good.append(scan_with_pixdim(tmp_path / name, 3.0, "sform", shape))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    paths = [good[0], bad, good[1]]
    options = InferOptions(model_info={"name": "test", "sha256": "0" * 64})
    with read_ahead(paths, options) as inputs:
        seen = []
        for path, loading in inputs:
            if path == bad:
                with pytest.raises(InputError, match="not a NIfTI"):
                    loading.result()
                seen.append(None)
                continue
            volume, load_s = loading.result()
            assert load_s > 0
            seen.append(volume.data.shape)
    assert seen == [SHAPE, None, (8, 9, 5)]


def test_run_batch_goes_on_past_a_bad_input_unless_told_to_raise(tmp_path: Path) -> None:
    """`mhunet infer`'s batch policy: a bad input is a Failure with its one-line error and exit code, the
    inputs after it still get their reports, each input's progress hooks open and close around it; a
    batch of one raises the error instead."""
    from mhunet_deploy.errors import InputError
    from mhunet_deploy.pipeline import Failure, read_ahead, run_batch

    (tmp_path / "a").mkdir()
    good = scan_with_pixdim(tmp_path / "a", 3.0, "sform", SHAPE)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    options = InferOptions(model_info={"name": "test", "sha256": "0" * 64})
    events: list[str] = []

    @contextmanager
    def track(path: Path):
        events.append(f"open {path.name}")
        yield (lambda n: events.append(f"slices {n}")), None
        events.append(f"close {path.name}")

    with read_ahead([bad, good], options) as inputs:
        outcomes = []
        for outcome in run_batch(inputs, tmp_path / "out", EverywhereLesion(), options, track=track):
            outcomes.append(outcome)
            events.append("failure" if isinstance(outcome, Failure) else "report")
    failure, report = outcomes
    assert isinstance(failure, Failure) and failure.input == bad
    assert failure.to_dict() == {"input": str(bad), "error": str(failure.error), "exit_code": 2}
    assert "not a NIfTI" in failure.to_dict()["error"]
    assert report["lesion_count"] == 1 and Path(report["outputs"]["mask"]).is_file()
    assert events == [
        "open bad.nii.gz",
        "failure",  # yielded while its progress line is still open
        "close bad.nii.gz",
        "open scan.nii",
        f"slices {SHAPE[2]}",
        "close scan.nii",
        "report",
    ]
    with read_ahead([bad], options) as inputs, pytest.raises(InputError, match="not a NIfTI"):
        list(run_batch(inputs, tmp_path / "out1", EverywhereLesion(), options, raise_errors=True))
