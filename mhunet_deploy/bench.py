"""Seconds per stage of a whole `mhunet infer` volume for every backend and precision this machine can
run, side by side on one scan.

Shared by `mhunet bench` and ``scripts/bench_cpu.py``. Each backend is loaded once (``setup_s``), then
runs the whole pipeline (``pipeline.infer_volume``: load, preprocess, model, postprocess, write) once
untimed-but-reported (``first``: first-call costs such as CUDA lazy loading, library handles, kernel
caches and cupy kernel compiles) and ``repeats`` times; the run with the best total is the warm figure.
A cold process start (imports, CUDA context) is not in here: time ``mhunet infer`` for that
(scripts/gpu/bench_runtime.sh). With ``slices``, a slab of that many central axial slices is run, and
the model time is also extrapolated to every slice of the volume that has signal. A backend that cannot
be loaded here is listed with the reason instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from .backends import has_graph, has_module, load_backend, torch_cuda
from .errors import MhunetError
from .graphs import DEFAULT_EXPORT_DIR
from .io.nifti import Volume, load_volume
from .pipeline import infer_options, infer_volume
from .preprocess import prepare
from .verify import central_slices

#: (backend, device, precision)
Candidate = tuple[str, str, str]
STAGES = ("load_s", "preprocess_s", "model_s", "postprocess_s", "write_s", "total_s")


@dataclass
class Timing:
    backend: str
    device: str
    precision: str
    #: Axial slices in the volume that ran (the whole scan, or the central slab).
    slices: int
    #: Slices with signal in the whole scan (the model's work for a whole volume).
    volume_slices: int
    #: Backend load, seconds; then the first run's and the best warm run's stage timings.
    setup_s: float | None = None
    first: dict[str, float] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def seconds(self) -> float | None:
        """Warm model seconds for the slices that ran."""
        return self.warm.get("model_s")

    @property
    def seconds_per_volume(self) -> float | None:
        """Warm model seconds extrapolated to every slice of the volume that has signal."""
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


def central_slab(volume: Volume, count: int) -> nib.Nifti1Image:
    """The ``count`` axial slices around the middle of the slices with signal, as an image of their own
    (same voxel sizes and orientation; the affine follows the crop)."""
    slices, _ = prepare(volume)
    busy = central_slices(slices, None)
    middle = int(busy[len(busy) // 2]) if len(busy) else len(slices) // 2
    start = int(np.clip(middle - count // 2, 0, max(len(slices) - count, 0)))
    ornt = orientations.io_orientation(volume.image.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the voxel axis running along S
    n = volume.data.shape[axis]
    lo = start if ornt[axis, 1] > 0 else n - (start + count)
    index = [slice(None)] * 3
    index[axis] = slice(max(lo, 0), max(lo, 0) + count)
    return volume.image.slicer[tuple(index)]


def bench(
    checkpoint: Path,
    volume: Path,
    backends: list[Candidate],
    slices: int | None = None,
    batch_size: int | None = None,
    export_dir: Path = DEFAULT_EXPORT_DIR,
    repeats: int = 1,
) -> list[Timing]:
    """Time each (backend, device, precision) on the same scan (or its central slab of ``slices``),
    through the whole pipeline with the checkpoint's post-processing; ``batch_size`` None: the backend's."""
    full = load_volume(volume)
    prepared, _ = prepare(full)
    volume_slices = len(central_slices(prepared, None))
    options, _ = infer_options(checkpoint, None, None)
    out = []
    with tempfile.TemporaryDirectory(prefix="mhunet-bench-") as tmp:
        path, image, count = Path(volume), full.image, len(prepared)
        if slices is not None and slices < count:
            path, image, count = Path(tmp) / "slab.nii.gz", central_slab(full, slices), slices
            nib.save(image, path)
        for name, device, precision in backends:
            row = Timing(name, device, precision, count, volume_slices)
            try:
                t0 = time.perf_counter()
                with load_backend(name, checkpoint, device, precision, export_dir=export_dir) as backend:
                    row.setup_s = time.perf_counter() - t0
                    options.batch_size = batch_size or backend.batch_size
                    runs = [
                        infer_volume(path, Path(tmp) / f"{name}-{device}-{precision}-{i}", backend, options)
                        for i in range(1 + repeats)
                    ]
            except MhunetError as e:
                row.note = f"skipped: {e}"
                out.append(row)
                continue
            row.backend = backend.name
            row.first = runs[0]["timings"]
            row.warm = min((r["timings"] for r in runs[1:]), key=lambda t: t["total_s"])
            row.note = f"{'x'.join(map(str, image.shape[:3]))} voxels, batch {options.batch_size}"
            out.append(row)
    return out


def markdown_table(timings: list[Timing]) -> str:
    """Warm seconds per stage (best of the repeats), the first run's total and the backend load time."""
    stages = " | ".join(s.removesuffix("_s") for s in STAGES)
    lines = [
        f"| backend | device | precision | slices | setup | first total | {stages} | model slices/s "
        "| model s per volume | note |",
        "| --- | --- | --- | ---: |" + " ---: |" * (len(STAGES) + 4) + " --- |",
    ]
    for t in timings:
        if t.seconds is None:
            empty = " |" * (len(STAGES) + 5)
            lines.append(f"| {t.backend} | {t.device} | {t.precision} |{empty} {t.note} |")
            continue
        cells = " | ".join(f"{t.warm[s]:.3f}" for s in STAGES)
        lines.append(
            f"| {t.backend} | {t.device} | {t.precision} | {t.slices} | {t.setup_s:.2f} | "
            f"{t.first['total_s']:.3f} | {cells} | {t.slices / t.seconds:.1f} | {t.seconds_per_volume:.2f} "
            f"| {t.note} |"
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
