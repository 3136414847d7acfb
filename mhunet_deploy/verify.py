"""`mhunet verify`: every available backend and precision against the FP32 PyTorch reference.

The reference is the torch backend on the CPU with the torch scan (``scan="reference"``); the torch
backend's default CPU path, the fused numba scan, is a candidate held to it like every other.

Runs on a real volume through the same preprocessing and postprocessing as `mhunet infer`, and judges
each candidate twice (ARCHITECTURE.md, Precision): on logits (max and median |Δ| of every output
channel: lesion, and brain when the model has it) and on the task (lesion mask Dice, lesion count and
volume, and the brain mask's Dice). The plugin graphs (fp32 and fp16) have no runtime here besides
``onnx.reference`` with our numpy SelectiveScan, which is slow, so they see only a few slices.

Polygraphy: its ``pluginref`` runner needs a reference for *every* op of a graph and knows only three
ops, so it cannot run whole Mamba-HUNet graphs; ``register_polygraphy_reference`` adds our
SelectiveScan to its registry, which lets `polygraphy run scan_node.onnx --pluginref --trt` check the
TensorRT plugin against the numpy reference on a scan node cut out with `polygraphy surgeon extract`
(``polygraphy_plugin`` is the `polygraphy.run.plugins` entry point that does it in Polygraphy's CLI).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import BackendError
from .graphs import DEFAULT_EXPORT_DIR, INPUT_NAME, find_graph, output_channels
from .io.nifti import Volume, load_volume
from .metrics import dice
from .ops.selective_scan import contract
from .ops.selective_scan.numpy_scan import reference_ops, selective_scan_numpy
from .pipeline import EMPTY_SLICE_LOGIT, Segmentation, predict_volume, segment_logits
from .preprocess import Geometry, prepare

log = logging.getLogger(__name__)

#: Parity tolerances, all in one place (ARCHITECTURE.md, Precision).
FP32_MAX_ABS_LOGIT = 1e-4
FP16_MIN_DICE = 0.99
FP16_SAME_LESION_COUNT = True
#: The brain mask is large and smooth: fp16 may move only a few boundary voxels of it.
FP16_MIN_BRAIN_DICE = 0.99
#: Slices the ReferenceEvaluator runs on (seconds per slice even for small models).
REFERENCE_EVALUATOR_SLICES = 2


class PluginGraphReference(Backend):
    """A plugin graph on ``onnx.reference.ReferenceEvaluator`` with the numpy SelectiveScan: fp32, or fp16
    (fp16 slices in, the scan's fp16 data in and fp32 y out, as TensorRT runs it)."""

    def __init__(
        self, checkpoint: Path, export_dir: Path = DEFAULT_EXPORT_DIR, precision: str = "fp32"
    ) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        path, manifest = find_graph(checkpoint, "plugin", precision, export_dir)
        self.outputs = output_channels(manifest)
        self.evaluator = ReferenceEvaluator(onnx.load(str(path)), new_ops=reference_ops())
        self.name = "onnx-reference (plugin graph)"
        self.precision = precision
        self.dtype = np.float16 if precision == "fp16" else np.float32
        self.batch_size = 8
        self.engine_key = None
        self.array_device = "cpu"

    def predict(self, slices: np.ndarray) -> np.ndarray:
        (logits,) = self.evaluator.run(None, {INPUT_NAME: slices.astype(self.dtype, copy=False)})
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        self.evaluator = None


@dataclass
class Row:
    """One line of the verify table."""

    backend: str
    precision: str
    slices: int = 0
    #: Per output channel ("lesion", "brain"): max and median |Δlogit| against the reference.
    max_abs: dict[str, float] = field(default_factory=dict)
    median_abs: dict[str, float] = field(default_factory=dict)
    dice: float = float("nan")
    #: Dice of the brain mask against the reference's, and its volume; None without a brain output.
    brain_dice: float | None = None
    brain_ml: float | None = None
    lesions: int = 0
    volume_ml: float = 0.0
    ref_lesions: int = 0
    ref_volume_ml: float = 0.0
    passed: bool | None = None
    note: str = ""
    failures: list[str] = field(default_factory=list)


def judge(row: Row) -> Row:
    """Apply the tolerances for the row's precision; fills ``passed`` and ``failures``."""
    if row.precision == "fp32":
        for channel, worst in row.max_abs.items():
            if not worst <= FP32_MAX_ABS_LOGIT:
                row.failures.append(f"max |Δlogit| {channel} {worst:.2e} > {FP32_MAX_ABS_LOGIT:.0e}")
    if row.precision == "fp16":
        if not row.dice >= FP16_MIN_DICE:
            row.failures.append(f"Dice {row.dice:.4f} < {FP16_MIN_DICE}")
        if FP16_SAME_LESION_COUNT and row.lesions != row.ref_lesions:
            row.failures.append(f"{row.lesions} lesions vs {row.ref_lesions}")
        if row.brain_dice is not None and not row.brain_dice >= FP16_MIN_BRAIN_DICE:
            row.failures.append(f"brain Dice {row.brain_dice:.4f} < {FP16_MIN_BRAIN_DICE}")
    row.passed = not row.failures
    return row


@dataclass
class Case:
    """A volume prepared once and the reference's logits on it."""

    volume: Volume
    slices: np.ndarray
    geometry: Geometry
    reference: np.ndarray
    #: The logits' channel names (the reference backend's ``outputs``).
    outputs: tuple[str, ...]
    threshold: float
    min_lesion_mm3: float

    def task(self, logits: np.ndarray, index: np.ndarray) -> Segmentation:
        """`mhunet infer`'s post-processing of the volume when only slices ``index`` carry logits."""
        full = np.full(self.reference.shape, EMPTY_SLICE_LOGIT, dtype=np.float32)
        full[index] = logits
        return segment_logits(
            full, self.outputs, self.geometry, self.volume, self.threshold, self.min_lesion_mm3
        )


def compare(case: Case, backend: Backend, index: np.ndarray, batch_size: int = 8) -> Row:
    """Run ``backend`` on slices ``index`` of the case and score it against the reference."""
    logits = predict_volume(backend, case.slices[index], batch_size)
    ref = case.reference[index]
    diff = np.abs(logits - ref)
    got, want = case.task(logits, index), case.task(ref, index)
    row = Row(
        backend=backend.name,
        precision=backend.precision,
        slices=len(index),
        max_abs={name: float(diff[:, k].max()) for k, name in enumerate(case.outputs)},
        median_abs={name: float(np.median(diff[:, k])) for k, name in enumerate(case.outputs)},
        dice=dice(got.labels > 0, want.labels > 0),
        brain_dice=None if want.brain is None else dice(got.brain, want.brain),
        brain_ml=got.brain_info["volume_ml"],
        lesions=len(got.lesions),
        volume_ml=sum(les["volume_ml"] for les in got.lesions),
        ref_lesions=len(want.lesions),
        ref_volume_ml=sum(les["volume_ml"] for les in want.lesions),
    )
    return judge(row)


def central_slices(slices: np.ndarray, count: int | None) -> np.ndarray:
    """Indices of the ``count`` slices with signal nearest the volume's middle (all if None)."""
    flat = slices.reshape(len(slices), -1)
    busy = np.flatnonzero(flat.max(axis=1) - flat.min(axis=1) > 1e-6)
    if count is None or count >= len(busy):
        return busy
    mid = busy[len(busy) // 2]
    return np.sort(busy[np.argsort(np.abs(busy - mid), kind="stable")[:count]])


@dataclass(frozen=True)
class Candidate:
    """A backend/precision to try; ``load`` raising BackendError means "not available here"."""

    label: str
    precision: str
    load: Callable[[], Backend]
    max_slices: int | None = None


def candidates(checkpoint: Path, export_dir: Path) -> list[Candidate]:
    from .backends import load_backend

    def backend(name: str, precision: str, device: str = "auto") -> Callable[[], Backend]:
        return lambda: load_backend(name, checkpoint, device, precision, export_dir=export_dir)

    return [
        # What `mhunet infer --device cpu` runs: the fused CPU scan where numba is installed.
        Candidate("torch cpu", "fp32", backend("torch", "fp32", "cpu")),
        Candidate(
            "onnx-reference plugin",
            "fp32",
            lambda: PluginGraphReference(checkpoint, export_dir),
            REFERENCE_EVALUATOR_SLICES,
        ),
        Candidate("onnxruntime portable", "fp32", backend("onnxruntime", "fp32")),
        Candidate("onnxruntime portable", "fp16", backend("onnxruntime", "fp16")),
        # the fp16 plugin graph's types and casts as TensorRT gets them, on the CPU
        Candidate(
            "onnx-reference plugin",
            "fp16",
            lambda: PluginGraphReference(checkpoint, export_dir, "fp16"),
            REFERENCE_EVALUATOR_SLICES,
        ),
        Candidate("torch cuda", "fp16", backend("torch", "fp16", "cuda")),
        Candidate("tensorrt plugin", "fp16", backend("tensorrt", "fp16")),
    ]


def verify(
    checkpoint: Path,
    volume: Path,
    slices: int | None = None,
    export_dir: Path = DEFAULT_EXPORT_DIR,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """All rows, reference first; a skipped candidate is a row with ``passed`` None and the reason."""
    from .backends.torch_backend import TorchBackend
    from .checkpoint import read_meta
    from .postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD, min_lesion_for

    post = read_meta(checkpoint).get("postprocess", {})
    vol = load_volume(volume)
    prepared, geometry = prepare(vol)
    index = central_slices(prepared, slices)
    with TorchBackend(checkpoint, device="cpu", precision="fp32", scan="reference") as reference:
        shape = (len(prepared), len(reference.outputs), *prepared.shape[2:])
        ref_logits = np.full(shape, EMPTY_SLICE_LOGIT, dtype=np.float32)
        ref_logits[index] = predict_volume(reference, prepared[index], 8)
        case = Case(
            vol,
            prepared,
            geometry,
            ref_logits,
            tuple(reference.outputs),
            post.get("threshold", DEFAULT_THRESHOLD),
            min_lesion_for(
                vol.zooms,
                post.get("min_lesion_mm3", DEFAULT_MIN_LESION_MM3),
                post.get("min_lesion_mm3_thick"),
            ),
        )
        rows = [compare(case, reference, index)]
    rows[0].note = "reference"
    if on_row:
        on_row(rows[0])
    for cand in candidates(checkpoint, export_dir):
        started = time.perf_counter()
        try:
            backend = cand.load()
        except BackendError as e:
            row = Row(cand.label, cand.precision, note=f"skipped: {e}")
        else:
            with backend:
                row = compare(case, backend, index[central_slices(prepared[index], cand.max_slices)])
        log.info(
            "%s %s: %s in %.1f s",
            cand.label,
            cand.precision,
            row.note or ("pass" if row.passed else "FAIL"),
            time.perf_counter() - started,
        )
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def register_polygraphy_reference() -> None:
    """Add SelectiveScan to Polygraphy's pluginref op registry (matched by op type)."""
    from polygraphy.backend.pluginref.references import register

    @register(contract.OP_TYPE)
    def run_selective_scan(attrs: dict[str, Any], *inputs: np.ndarray) -> list[np.ndarray]:
        softplus = attrs.get("delta_softplus", contract.ATTRIBUTES["delta_softplus"])
        return [selective_scan_numpy(*inputs, delta_softplus=bool(softplus))]


def polygraphy_plugin() -> list:
    """``polygraphy.run.plugins`` entry point: registers the reference, adds no argument groups."""
    register_polygraphy_reference()
    return []
