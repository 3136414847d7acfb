"""Slices per second and seconds per volume of every backend and precision this machine can run, side
by side on one volume and one preprocessing.

Shared by `mhunet bench` and ``scripts/bench_cpu.py``; model time only (``predict_volume``): one
untimed warm-up pass over the same slices (first-call costs: CUDA lazy loading, library handles, kernel
caches), then the best of ``repeats`` timed passes, so load, engine-build and session-creation costs do
not blur the comparison. A backend that cannot be loaded here is listed with the reason instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .backends import has_graph, has_module, load_backend, torch_cuda
from .errors import MhunetError
from .exporting.manifest import DEFAULT_EXPORT_DIR
from .pipeline import predict_volume
from .preprocess import prepare
from .verify import central_slices
from .volume_io import load_volume

#: (backend, device, precision)
Candidate = tuple[str, str, str]


@dataclass
class Timing:
    backend: str
    device: str
    precision: str
    slices: int
    seconds: float | None
    volume_slices: int
    note: str = ""

    @property
    def seconds_per_volume(self) -> float | None:
        """Extrapolated from the timed slices to every slice of the volume that has signal."""
        return None if self.seconds is None else self.seconds / self.slices * self.volume_slices


def candidates(
    checkpoint: Path, export_dir: Path, devices: tuple[str, ...] = ("cpu", "cuda")
) -> list[Candidate]:
    """Every (backend, device, precision) worth timing here: torch on the CPU and (fp32, fp16) on CUDA;
    onnxruntime per exported portable graph (CUDA EP when present); TensorRT with an exported plugin graph."""
    out: list[Candidate] = []
    if has_module("torch"):
        out.append(("torch", "cpu", "fp32"))
        if torch_cuda():
            out += [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16")]
    if has_module("onnxruntime"):
        from .backends.onnxruntime_backend import cuda_ep_available

        for precision in ("fp32", "fp16"):
            if has_graph(checkpoint, "portable", precision, export_dir):
                out.append(("onnxruntime", "cpu", precision))
                if cuda_ep_available():
                    out.append(("onnxruntime", "cuda", precision))
    if has_module("tensorrt") and has_graph(checkpoint, "plugin", "fp16", export_dir):
        out.append(("tensorrt", "cuda", "fp16"))
    return [c for c in out if c[1] in devices]


def bench(
    checkpoint: Path,
    volume: Path,
    backends: list[Candidate],
    slices: int | None = None,
    batch_size: int = 8,
    export_dir: Path = DEFAULT_EXPORT_DIR,
    repeats: int = 1,
) -> list[Timing]:
    """Time each (backend, device, precision) on the same prepared slices (best of ``repeats``)."""
    prepared, _ = prepare(load_volume(volume))
    busy = central_slices(prepared, None)
    x = prepared[central_slices(prepared, slices)]
    out = []
    for name, device, precision in backends:
        try:
            backend = load_backend(name, checkpoint, device, precision, export_dir=export_dir)
            predict_volume(backend, x, batch_size)  # warm-up
        except MhunetError as e:
            out.append(Timing(name, device, precision, len(x), None, len(busy), f"skipped: {e}"))
            continue
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            predict_volume(backend, x, batch_size)  # returns host arrays: GPU work is finished
            best = min(best, time.perf_counter() - t0)
        out.append(Timing(backend.name, device, precision, len(x), best, len(busy)))
    return out


def markdown_table(timings: list[Timing]) -> str:
    lines = [
        "| backend | device | precision | slices | seconds | slices/s | seconds per volume |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for t in timings:
        if t.seconds is None:
            lines.append(f"| {t.backend} | {t.device} | {t.precision} | | | | {t.note} |")
            continue
        lines.append(
            f"| {t.backend} | {t.device} | {t.precision} | {t.slices} | {t.seconds:.2f} | "
            f"{t.slices / t.seconds:.1f} | {t.seconds_per_volume:.2f} |"
        )
    return "\n".join(lines)


def graph_table(export_dir: Path) -> str:
    """Node count and file size of every exported graph (from the manifests)."""
    lines = ["| graph | nodes | MB |", "| --- | ---: | ---: |"]
    for manifest in sorted(Path(export_dir).glob("*.json")):
        m = json.loads(manifest.read_text())
        size = manifest.with_suffix(".onnx").stat().st_size / 1e6
        lines.append(f"| {m['graph']} | {m['node_count']} | {size:.2f} |")
    return "\n".join(lines)
