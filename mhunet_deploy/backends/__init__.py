"""Backends and how `--backend auto` chooses among them (fastest that works, and it says which)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackendError
from .base import Backend

NAMES = ("auto", "torch", "onnxruntime", "tensorrt")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def load_backend(
    name: str,
    checkpoint: Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> Backend:
    """Load a named backend; ``auto`` prefers torch on a GPU, else torch on the CPU."""
    if name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        if has_module("torch"):
            name = "torch"
        else:
            raise BackendError("no backend available: install PyTorch (pip install 'mhunet-deploy[torch]')")
    if name == "torch":
        if not has_module("torch"):
            raise BackendError("backend torch needs PyTorch: pip install 'mhunet-deploy[torch]'")
        from .torch_backend import TorchBackend

        return TorchBackend(checkpoint, device=device, precision=precision)
    raise BackendError(f"backend {name} is not available in this build yet")
