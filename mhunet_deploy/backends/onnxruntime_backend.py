"""The onnxruntime backend: the portable graph (standard ops only) on the CPU, or the CUDA EP.

No torch: this is what a lean workstation runs. The graph is the one `mhunet export` wrote for this
checkpoint; the manifest's checkpoint sha256 must match the weights, so a stale export is refused.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import BackendError
from ..graphs import (
    DEFAULT_EXPORT_DIR,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISIONS,
    find_graph,
    output_channels,
)
from .base import Backend

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "backend onnxruntime needs onnxruntime: pip install 'mhunet-deploy[onnx]'"
        ) from None
    return onnxruntime


def cuda_ep_available() -> bool:
    """Whether this onnxruntime build can run on a CUDA GPU (onnxruntime-gpu with its CUDA libs)."""
    return CUDA_EP in _ort().get_available_providers()


class OnnxRuntimeBackend(Backend):
    """Runs the portable fp32 or fp16 graph of a checkpoint with onnxruntime."""

    def __init__(
        self,
        checkpoint: Path,
        device: str = "auto",
        precision: str = "fp32",
        export_dir: Path = DEFAULT_EXPORT_DIR,
        onnx_path: Path | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise BackendError(f"onnxruntime backend: unknown precision {precision!r}; use fp32 or fp16")
        if device not in ("auto", "cpu", "cuda"):
            raise BackendError(f"onnxruntime backend: unknown device {device!r}; use auto, cpu or cuda")
        ort = _ort()
        if device == "cuda" and not cuda_ep_available():
            raise BackendError("onnxruntime backend: no CUDA execution provider; install onnxruntime-gpu")
        use_cuda = device != "cpu" and cuda_ep_available()
        self.graph, self.manifest = find_graph(checkpoint, "portable", precision, export_dir, onnx_path)
        self.outputs = output_channels(self.manifest)
        providers = [CUDA_EP, CPU_EP] if use_cuda else [CPU_EP]
        self.session = ort.InferenceSession(str(self.graph), providers=providers)
        self.input_dtype = np.float16 if precision == "fp16" else np.float32
        self.precision = precision
        self.name = f"onnxruntime-{'cuda' if use_cuda else 'cpu'}"
        # On the CPU one slice at a time: the portable scan's log-step intermediates grow with the batch,
        # so batch 8 took 24 GB and was killed on a 24 GiB machine (BENCHMARKS.md section 17), and
        # batch 1 is also the fastest there (1.9 s a slice vs 5.6 s at batch 6).
        self.batch_size = 32 if use_cuda else 1
        self.engine_key = None
        self.array_device = "cpu"  # onnxruntime sessions take host arrays, the CUDA EP included

    def predict(self, slices: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: slices.astype(self.input_dtype, copy=False)})
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        """Drop the session: onnxruntime frees its arena (and CUDA EP memory) with it."""
        self.session = None
