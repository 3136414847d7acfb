"""Lesion report: layout, strict JSON with non-finite floats, CSV (header even with no lesion)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from mhunet_deploy import __version__
from mhunet_deploy.postprocess import lesion_table
from mhunet_deploy.report import (
    CSV_COLUMNS,
    DISCLAIMER,
    LesionReport,
    build_report,
    read_json,
    write_csv,
    write_json,
)

MODEL = {"name": "light", "sha256": "ab" * 32}


AFFINE = np.array([[1.0, 0, 0, -10.0], [0, 1.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])


def rows() -> list[dict]:
    """Rows from the real postprocess.lesion_table for two lesions on a (1, 1, 3) mm grid.

    Lesion 1: voxels i 1..2, j 2..3, k 5 (4 voxels, 12 mm^3 = 0.012 mL, centre voxel (1.5, 2.5, 5)
    -> world (-8.5, 2.5, 15)). Lesion 2: voxel (7, 7, 1) (0.003 mL, world (-3, 7, 3)).
    """
    labels = np.zeros((10, 10, 8), dtype=np.int32)
    labels[1:3, 2:4, 5] = 1
    labels[7, 7, 1] = 2
    return lesion_table(labels, AFFINE, (1.0, 1.0, 3.0))


def report(lesions: list[dict] | None = None, **kw) -> LesionReport:
    return LesionReport(
        input_path="/data/scan.nii.gz",
        shape=(64, 64, 20),
        zooms=(1.0, 1.0, 3.0),
        lesions=rows() if lesions is None else lesions,
        backend="onnxruntime",
        precision="fp32",
        model=MODEL,
        **kw,
    )


def test_brain_entry_is_carried_and_defaults_to_none_with_a_reason() -> None:
    from mhunet_deploy.brain import brain_entry

    mask = np.zeros((10, 10, 8), bool)
    mask[2:8, 2:8, 1:7] = True  # 216 voxels of 3 mm3
    entry = brain_entry(mask, (1.0, 1.0, 3.0), "model", outside_voxels=5)
    assert entry == {
        "source": "model",
        "volume_ml": pytest.approx(0.648),
        "reason": None,
        "lesion_voxels_outside": 5,
    }
    assert report(brain=entry).to_dict()["brain"] == entry
    default = report().to_dict()["brain"]
    assert default["source"] is None and default["volume_ml"] is None and default["reason"]
    assert "brain" not in CSV_COLUMNS  # the lesion table is unchanged


def test_report_dict_layout_and_totals() -> None:
    key = {"library": "tensorrt-rtx", "target": {"compute_capabilities": ["SM86"]}, "engine_sha256": "ab"}
    d = report(engine_key=key, timings={"model_s": 1.5}, warnings=["w"]).to_dict()
    assert d["lesion_count"] == 2
    assert d["total_volume_ml"] == pytest.approx(0.015)
    assert d["disclaimer"] == DISCLAIMER
    assert d["tool_version"] == __version__
    assert d["input"] == {"path": "/data/scan.nii.gz", "shape": [64, 64, 20], "zooms": [1.0, 1.0, 3.0]}
    assert d["model"] == MODEL
    assert (d["backend"], d["precision"], d["engine_key"]) == ("onnxruntime", "fp32", key)
    assert d["timings"] == {"model_s": 1.5}
    assert d["warnings"] == ["w"]
    assert d["lesions"][0]["centroid_mm"] == pytest.approx([-8.5, 2.5, 15.0])
    # Plain types only: strict JSON accepts it as is.
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_numpy_values_become_plain_json() -> None:
    row = {
        "id": np.int64(1),
        "voxels": np.int64(4),
        "volume_ml": np.float32(0.5),
        "centroid_mm": np.array([1.0, 2.0, 3.0]),
        "bbox": {"min": (np.int64(0), 0, 0), "max": [1, 1, 1]},
    }
    d = report(lesions=[row]).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False))["lesions"][0]["bbox"] == {
        "min": [0, 0, 0],
        "max": [1, 1, 1],
    }
    assert d["total_volume_ml"] == 0.5


def test_engine_key_is_optional_and_model_info_is_required() -> None:
    assert report().to_dict()["engine_key"] is None
    with pytest.raises(ValueError, match="sha256"):
        LesionReport("a", (1, 1, 1), (1, 1, 1), [], "ort", "fp32", {"name": "light"})


def test_build_report_matches_the_class() -> None:
    d = build_report(
        input_path="/data/scan.nii.gz",
        shape=(64, 64, 20),
        zooms=(1.0, 1.0, 3.0),
        lesions=rows(),
        backend="onnxruntime",
        precision="fp32",
        model=MODEL,
        outputs={"mask": "/out/scan_mask.nii.gz"},
    )
    assert d["outputs"] == {"mask": "/out/scan_mask.nii.gz"}
    assert d["lesion_count"] == 2


def test_json_round_trip_with_inf(tmp_path) -> None:
    metrics = {"dsc": 0.0, "hd95_mm": math.inf, "other": [-math.inf, math.nan], "n": np.int32(3)}
    path = tmp_path / "metrics.json"
    write_json(metrics, path)
    text = path.read_text()
    # Strict JSON (no Infinity/NaN tokens): a strict parser reads it, and inf is the string "inf".
    raw = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert raw["hd95_mm"] == "inf"
    back = read_json(path)
    assert back["hd95_mm"] == math.inf
    assert back["other"][0] == -math.inf
    assert math.isnan(back["other"][1])
    assert back["n"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_report_json_round_trip(tmp_path) -> None:
    r = report()
    write_json(r, tmp_path / "r.json")
    assert read_json(tmp_path / "r.json") == r.to_dict()


def read_csv(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_csv_header_with_zero_lesions(tmp_path) -> None:
    write_csv(report(lesions=[]), tmp_path / "lesions.csv")
    header, body = read_csv(tmp_path / "lesions.csv")
    assert header == list(CSV_COLUMNS)
    assert body == []


def test_csv_one_row_per_lesion(tmp_path) -> None:
    write_csv(report().to_dict(), tmp_path / "lesions.csv")
    _, body = read_csv(tmp_path / "lesions.csv")
    assert [r["id"] for r in body] == ["1", "2"]
    first = body[0]
    assert (int(first["voxels"]), float(first["volume_ml"])) == (4, pytest.approx(0.012))
    assert [float(first[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx([-8.5, 2.5, 15.0])
    assert [int(first[f"bbox_min_{a}"]) for a in "ijk"] == [1, 2, 5]
    assert [int(first[f"bbox_max_{a}"]) for a in "ijk"] == [2, 3, 5]
