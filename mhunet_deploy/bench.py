"""Seconds per volume of several backends, side by side on one volume and one preprocessing.

Shared by `mhunet bench` and ``scripts/bench_cpu.py``; model time only (``predict_volume``), after
one warm-up batch, so load and session-creation costs do not blur the comparison.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .backends import load_backend
from .exporting.manifest import DEFAULT_EXPORT_DIR
from .pipeline import predict_volume
from .preprocess import prepare
from .verify import central_slices
from .volume_io import load_volume


@dataclass
class Timing:
    backend: str
    precision: str
    slices: int
    seconds: float


def bench(
    checkpoint: Path,
    volume: Path,
    backends: list[tuple[str, str]],
    slices: int | None = None,
    batch_size: int = 8,
    export_dir: Path = DEFAULT_EXPORT_DIR,
) -> list[Timing]:
    """Time each (backend, precision) on the same prepared slices; CPU device for all of them."""
    prepared, _ = prepare(load_volume(volume))
    x = prepared[central_slices(prepared, slices)]
    out = []
    for name, precision in backends:
        backend = load_backend(name, checkpoint, "cpu", precision, export_dir=export_dir)
        backend.predict(x[:1])
        t0 = time.perf_counter()
        predict_volume(backend, x, batch_size)
        out.append(Timing(backend.name, precision, len(x), time.perf_counter() - t0))
    return out


def markdown_table(timings: list[Timing]) -> str:
    lines = [
        "| backend | precision | slices | seconds | seconds/slice |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for t in timings:
        per = t.seconds / t.slices
        lines.append(f"| {t.backend} | {t.precision} | {t.slices} | {t.seconds:.2f} | {per:.3f} |")
    return "\n".join(lines)


def graph_table(export_dir: Path) -> str:
    """Node count and file size of every exported graph (from the manifests)."""
    lines = ["| graph | nodes | MB |", "| --- | ---: | ---: |"]
    for manifest in sorted(Path(export_dir).glob("*.json")):
        m = json.loads(manifest.read_text())
        size = manifest.with_suffix(".onnx").stat().st_size / 1e6
        lines.append(f"| {m['graph']} | {m['node_count']} | {size:.2f} |")
    return "\n".join(lines)
