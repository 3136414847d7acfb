"""The PyTorch backend: the reference model on CPU or CUDA (FP32, or FP16 autocast on CUDA)."""

from __future__ import annotations

import ctypes
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arrays import array_device, is_device_array, modules_of
from ..checkpoint import load_checkpoint
from ..errors import BackendError
from ..model.mamba_hunet import fused_cpu_scan_available
from ..ops.selective_scan.torch_scan import use_scan_impl
from .base import Backend

#: scan choices: "auto" = our CUDA kernel on CUDA when its prebuilt library is there (``mhunet
#: build-kernels`` or CMake; else, with a one-line note, the model's default dispatcher: mamba-ssm when
#: installed, else the chunked torch scan); "cuda" = our kernel or an error;
#: "reference" = the chunked torch scan everywhere (the FP32 reference path).
SCAN_CHOICES = ("auto", "cuda", "reference")

log = logging.getLogger(__name__)

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc maps large blocks (all above 32 MiB) afresh and unmaps them on free, so every
    forward pass page-faults its large temporaries again (8-32 MiB each at batch 8; the cost on a CPU:
    BENCHMARKS.md section 9). Serving every block from the heap, never trimmed, keeps the peak resident
    instead. Process-wide; nothing happens outside glibc.
    """
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


class TorchBackend(Backend):
    """Runs the checkpoint's model with PyTorch; the reference every other backend is held to."""

    def __init__(
        self,
        checkpoint: Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        scan: str = "auto",
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: no CUDA GPU visible to PyTorch; use --device cpu")
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"torch backend: unknown precision {precision!r}; use fp32 or fp16")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("torch backend: fp16 needs a CUDA GPU; use --precision fp32 on the CPU")
        if scan not in SCAN_CHOICES:
            raise BackendError(f"torch backend: unknown scan {scan!r}; use one of {', '.join(SCAN_CHOICES)}")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
            if not fused_cpu_scan_available():
                log.warning("torch backend: numba is not installed: the slower torch scan runs on the CPU")
        self.model, self.meta = load_checkpoint(checkpoint, device=device)
        self.outputs = self.model.config.outputs
        self.precision = precision
        self.scan = scan
        self.scan_impl = self._pick_scan_impl(scan)
        # The FP32 reference path says so: `mhunet verify` holds the default path to it.
        self.name = f"torch-{self.device.type}" + (" (torch scan)" if scan == "reference" else "")
        self.batch_size = 32 if self.device.type == "cuda" else 8
        self.engine_key = None
        # cupy computes on its current device, 0: another GPU keeps pre/post-processing on the CPU.
        self.array_device = array_device(self.device.type if self.device.index in (None, 0) else "cpu")
        if self.device.type == "cuda":
            # The first forward of a batch size pays ~1.4 s on an H200 (lazy kernel loading, cuDNN/cuBLAS
            # set-up, the allocator's first blocks; a 1-slice warm-up left it to the first 32-slice batch:
            # BENCHMARKS.md section 14): paid once here at the default batch, while `mhunet infer`'s
            # reader thread reads the first input, instead of inside the first volume.
            cfg = self.model.config
            self.predict(np.zeros((self.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size), np.float32))

    def _pick_scan_impl(self, scan: str) -> str:
        """The name passed to ``use_scan_impl`` around every forward pass."""
        if scan == "reference":
            return "chunked"
        if self.device.type != "cuda":
            if scan == "cuda":
                raise BackendError("torch backend: scan='cuda' needs a CUDA device")
            return "auto"
        # Imported only here: a CPU-only run never touches the kernel library.
        from ..ops.selective_scan.cuda import KernelLibraryError, register_cuda_scan

        try:
            return register_cuda_scan()  # loads the prebuilt library; nothing is compiled
        except KernelLibraryError as e:
            if scan == "cuda":
                raise BackendError(f"torch backend: our CUDA scan kernel cannot be used: {e}") from e
            log.warning("torch backend: PyTorch scan, our CUDA kernel cannot be used: %s", e)
            return "auto"

    @torch.inference_mode()
    def predict(self, slices: Any) -> Any:
        """numpy slices in, numpy logits out; cupy in, cupy out, handed over through DLPack (no copy)."""
        on_device = is_device_array(slices)
        x = (torch.from_dlpack(slices) if on_device else torch.from_numpy(slices)).to(self.device)
        with (
            use_scan_impl(self.scan_impl),
            torch.autocast(self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"),
        ):
            y = self.model(x).float()
        return modules_of(slices)[0].from_dlpack(y) if on_device else y.cpu().numpy()

    def close(self) -> None:
        """Drop the model; on CUDA, hand the cached blocks it used back to the driver."""
        if self.model is None:
            return
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
