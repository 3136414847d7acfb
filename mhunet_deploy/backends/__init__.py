"""Backends and how `--backend auto` chooses among them (fastest that works, and it says which)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendError
from .base import Backend

log = logging.getLogger(__name__)

NAMES = ("auto", "torch", "onnxruntime", "tensorrt", "tensorrt-rtx")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def torch_cuda() -> bool:
    if not has_module("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def has_graph(checkpoint: Path, kind: str, precision: str, export_dir: Path) -> bool:
    from ..graphs import find_graph

    try:
        find_graph(checkpoint, kind, precision, export_dir)
    except BackendError:
        return False
    return True


def choose_auto(checkpoint: Path, device: str, precision: str, export_dir: Path) -> tuple[str, str]:
    """``--backend auto``: the fastest backend that works here, and why (ARCHITECTURE.md, Backends).

    tensorrt (library, plugin library and exported plugin graph) > torch on CUDA > onnxruntime with
    the CUDA EP > torch on the CPU with the fused SS2D kernel (fp32, numba installed: 4-5x faster than
    onnxruntime's portable graph on 2 cores, BENCHMARKS.md section 17) > onnxruntime on the CPU if this
    checkpoint was exported > torch on the CPU.
    """
    from ..engine.plugin_library import plugin_library, plugin_library_problem

    want_gpu = device != "cpu"
    plugin = plugin_library()
    trt_ready = has_module("tensorrt") and plugin is not None and plugin_library_problem(plugin) is None
    if want_gpu and trt_ready and has_graph(checkpoint, "plugin", precision, export_dir):
        return "tensorrt", "TensorRT, plugin library and exported plugin graph found"
    if want_gpu and torch_cuda():
        return "torch", "PyTorch sees a CUDA GPU"
    exported = has_module("onnxruntime") and has_graph(checkpoint, "portable", precision, export_dir)
    if exported and want_gpu:
        from .onnxruntime_backend import cuda_ep_available

        if cuda_ep_available():
            return "onnxruntime", "onnxruntime has the CUDA execution provider"
    if precision == "fp32" and has_module("torch") and has_module("numba"):
        return "torch", "no GPU backend; PyTorch on the CPU with the fused SS2D kernel (numba)"
    if exported:
        return "onnxruntime", f"exported portable {precision} graph found; no GPU backend available"
    if has_module("torch"):
        return "torch", "no GPU backend and no exported graph; PyTorch on the CPU"
    raise BackendError(
        "no backend available: install PyTorch (pip install 'mhunet-deploy[torch]'), "
        "or run `mhunet export` and install onnxruntime"
    )


def load_backend(
    name: str,
    checkpoint: Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    export_dir: Path | None = None,
    onnx_path: Path | None = None,
    on_choice: Callable[[str, str], None] | None = None,
    engine_dir: Path | None = None,
) -> Backend:
    """Load a named backend; ``auto`` picks by ``choose_auto`` and reports its pick to ``on_choice``."""
    from ..checkpoint import default_checkpoint
    from ..graphs import DEFAULT_EXPORT_DIR

    if name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    export_dir = export_dir or DEFAULT_EXPORT_DIR
    if name == "auto":
        name, why = choose_auto(checkpoint, device, precision, export_dir)
        log.info("--backend auto chose %s: %s", name, why)
        if on_choice:
            on_choice(name, why)
    if name == "torch":
        if not has_module("torch"):
            raise BackendError("backend torch needs PyTorch: pip install 'mhunet-deploy[torch]'")
        from .torch_backend import TorchBackend

        return TorchBackend(checkpoint, device=device, precision=precision)
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(checkpoint, device, precision, export_dir, onnx_path)
    from ..engine import DEFAULT_ENGINE_DIR
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(checkpoint, precision, name, export_dir, engine_dir or DEFAULT_ENGINE_DIR)
