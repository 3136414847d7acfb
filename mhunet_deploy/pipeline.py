"""`mhunet infer` for one volume: io -> preprocess -> backend -> postprocess -> report, in that order.

No torch here: the backend object is the only thing that knows which runtime runs the model, so the
same code serves torch, onnxruntime and TensorRT (and `mhunet serve` later).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backends.base import Backend
from .errors import OutputError
from .postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD, lesion_table, segment
from .preprocess import prepare
from .report import build_report, write_csv, write_json
from .volume_io import Volume, load_volume, save_like

#: Logit given to slices with no signal at all: they are never sent to the backend.
EMPTY_SLICE_LOGIT = -30.0


@dataclass
class InferOptions:
    """What the user chose on the command line; defaults are the documented ones."""

    threshold: float = DEFAULT_THRESHOLD
    min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3
    batch_size: int = 8
    probabilities: bool = False
    qc: bool = False
    volume_index: int | None = None
    model_info: dict[str, Any] = field(default_factory=dict)


def output_paths(input_path: Path, out_dir: Path, options: InferOptions) -> dict[str, Path]:
    """Where each output of one input goes; the stem drops .nii/.nii.gz."""
    name = input_path.name
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    paths = {
        "mask": out_dir / f"{name}_mask.nii.gz",
        "report": out_dir / f"{name}_report.json",
        "csv": out_dir / f"{name}_lesions.csv",
    }
    if options.probabilities:
        paths["probabilities"] = out_dir / f"{name}_prob.nii.gz"
    if options.qc:
        paths["qc"] = out_dir / f"{name}_qc.png"
    return paths


def predict_volume(
    backend: Backend,
    slices: np.ndarray,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run the backend over slices in batches; constant slices (no signal) are skipped."""
    logits = np.full(slices.shape, EMPTY_SLICE_LOGIT, dtype=np.float32)
    flat = slices.reshape(len(slices), -1)
    busy = np.flatnonzero(flat.max(axis=1) - flat.min(axis=1) > 1e-6)
    for i in range(0, len(busy), batch_size):
        idx = busy[i : i + batch_size]
        logits[idx] = backend.predict(np.ascontiguousarray(slices[idx], dtype=np.float32))
        if on_batch:
            on_batch(len(idx))
    if on_batch and len(busy) < len(slices):
        on_batch(len(slices) - len(busy))
    return logits


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def infer_volume(
    input_path: Path,
    out_dir: Path,
    backend: Backend,
    options: InferOptions,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Segment one volume and write its outputs; returns the report. All or no files are written."""
    t0 = time.perf_counter()
    input_path = Path(input_path)
    volume: Volume = load_volume(input_path, options.volume_index)
    # Output names always differ from the input's (suffixed stems); save_like refuses the input anyway.
    paths = output_paths(input_path, Path(out_dir), options)
    t1 = time.perf_counter()
    slices, geometry = prepare(volume)
    t2 = time.perf_counter()
    if on_start:
        on_start(len(slices))
    logits = predict_volume(backend, slices, options.batch_size, on_batch)
    t3 = time.perf_counter()
    prob = geometry.to_input_grid(sigmoid(logits))
    zooms = tuple(float(z) for z in volume.image.header.get_zooms()[:3])
    labels = segment(prob, zooms, options.threshold, options.min_lesion_mm3)
    lesions = lesion_table(labels, volume.image.affine, zooms)
    t4 = time.perf_counter()
    timings = {
        "load_s": t1 - t0,
        "preprocess_s": t2 - t1,
        "model_s": t3 - t2,
        "postprocess_s": t4 - t3,
        "total_s": t4 - t0,
    }
    report = build_report(
        input_path=input_path,
        shape=volume.data.shape,
        zooms=zooms,
        lesions=lesions,
        backend=backend.name,
        precision=backend.precision,
        model=options.model_info,
        timings=timings,
        warnings=list(volume.warnings),
        version=__version__,
        outputs={k: str(v) for k, v in paths.items()},
    )
    writers: dict[str, Callable[[], object]] = {
        "mask": lambda: save_like(volume.image, (labels > 0).astype(np.uint8), paths["mask"], np.uint8),
        "report": lambda: write_json(report, paths["report"]),
        "csv": lambda: write_csv(report, paths["csv"]),
    }
    if "probabilities" in paths:
        writers["probabilities"] = lambda: save_like(volume.image, prob, paths["probabilities"], np.float32)
    if "qc" in paths:
        from .qc import qc_montage

        writers["qc"] = lambda: qc_montage(volume.image, labels > 0, report, paths["qc"])
    write_all(writers, paths)
    return report


def write_all(writers: dict[str, Callable[[], object]], paths: dict[str, Path]) -> None:
    """Write every output or none: on any failure the outputs of this run are removed again."""
    folder = Path(next(iter(paths.values()))).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"{folder}: cannot create the output folder ({e.strerror}); choose another -o"
        raise OutputError(msg) from e
    done: list[Path] = []
    try:
        for key, write in writers.items():
            write()
            done.append(paths[key])
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
