"""pipeline.infer_volume: the report's numbers come from the geometry the pipeline resamples with,
and its provenance from the backend that ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mhunet_deploy.pipeline import InferOptions, infer_volume
from tests.test_volume_io import TRUE_ZOOMS, scan_with_pixdim

SHAPE = (12, 10, 6)


class EverywhereLesion:
    """A backend that calls every voxel lesion, so the report's one lesion is the whole scan."""

    name = "everywhere"
    precision = "fp32"
    outputs = ("lesion",)
    batch_size = 8

    def __init__(self, engine_key: dict | None = None) -> None:
        self.engine_key = engine_key

    def predict(self, slices: np.ndarray) -> np.ndarray:
        return np.full(slices.shape, 30.0, dtype=np.float32)


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
