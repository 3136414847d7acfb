"""The PyTorch backend: the reference model on CPU or CUDA (FP32, or FP16 autocast on CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..errors import BackendError


class TorchBackend:
    """Runs the checkpoint's model with PyTorch; the reference every other backend is held to."""

    def __init__(self, checkpoint: Path | None = None, device: str = "auto", precision: str = "fp32") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: no CUDA GPU visible to PyTorch; use --device cpu")
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"torch backend: unknown precision {precision!r}; use fp32 or fp16")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("torch backend: fp16 needs a CUDA GPU; use --precision fp32 on the CPU")
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(checkpoint, device=device)
        self.precision = precision
        self.name = f"torch-{self.device.type}"

    @torch.inference_mode()
    def predict(self, slices: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(slices).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"):
            y = self.model(x)
        return y.float().cpu().numpy()
