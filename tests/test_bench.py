"""`mhunet bench`: one table row per backend/precision available here, real timings, skips with reasons."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mhunet_deploy.bench import STAGES, bench, candidates, markdown_table
from tests.cli_helpers import small_volume
from tests.tiny_model import TinyExport


def test_candidates_follow_what_is_installed_and_exported(tiny_export: TinyExport, tmp_path) -> None:
    ckpt, export_dir = tiny_export()
    found = candidates(ckpt, export_dir, ("cpu",))
    assert ("torch", "cpu", "fp32") in found
    assert ("onnxruntime", "cpu", "fp32") in found and ("onnxruntime", "cpu", "fp16") in found
    # nothing exported there: onnxruntime is not a candidate
    assert all(name != "onnxruntime" for name, _, _ in candidates(ckpt, tmp_path, ("cpu",)))


def test_bench_times_each_backend_and_reports_what_cannot_load(tiny_export: TinyExport, tmp_path) -> None:
    ckpt, export_dir = tiny_export()
    vol = small_volume(tmp_path / "v.nii.gz")
    pairs = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "fp16")]
    timings = bench(ckpt, vol, pairs, batch_size=4, export_dir=tmp_path)
    # tmp_path holds no graphs: the onnxruntime rows carry the reason, the torch row a time per stage
    torch_row = timings[0]
    assert torch_row.seconds is not None and torch_row.seconds > 0
    assert torch_row.seconds_per_volume >= torch_row.seconds * 0.99
    assert list(torch_row.warm) == list(STAGES) and all(v > 0 for v in torch_row.warm.values())
    assert torch_row.warm["total_s"] == pytest.approx(sum(torch_row.warm[s] for s in STAGES[:-1]))
    assert torch_row.first["total_s"] > 0 and torch_row.setup_s > 0
    assert "batch 4" in torch_row.note
    assert all(t.seconds is None and "skipped" in t.note for t in timings[1:])
    timed = bench(ckpt, vol, pairs, slices=3, batch_size=2, export_dir=export_dir)
    assert [t.seconds is not None for t in timed] == [True, True, True]
    assert all(t.slices == 3 and t.volume_slices >= 3 for t in timed)
    assert all("40x48x3 voxels" in t.note for t in timed)  # the central slab is what ran
    table = markdown_table(timings).splitlines()
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert "| preprocess |" in table[0] and "| write |" in table[0]


@pytest.mark.slow
def test_cli_bench_prints_a_row_per_backend(tiny_export: TinyExport, tmp_path) -> None:
    ckpt, export_dir = tiny_export()
    vol = small_volume(tmp_path / "v.nii.gz")
    args = ["bench", "--checkpoint", str(ckpt), "--volume", str(vol), "--export-dir", str(export_dir)]
    res = subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", *args, "--device", "cpu", "--slices", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith(("| torch", "| onnx"))]
    assert len(rows) == 3, res.stdout
