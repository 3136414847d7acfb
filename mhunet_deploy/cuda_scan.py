"""Our CUDA selective-scan kernel as a PyTorch op (forward only), JIT-built from ``mhunet_deploy/kernels``.

The same ``selective_scan.cu`` that the TensorRT plugin links (``plugins/CMakeLists.txt`` builds it from
this package's ``kernels/``, which ships in the wheel so an installed package can build it too) is compiled
here with ``torch.utils.cpp_extension.load`` (about 45 s on the H200 the first time; cached afterwards in
torch's extension directory, ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, keyed by the module
name and a hash of the sources, so a second process on the same machine only loads it). Torch side only:
runtime modules must not import this module.

``register_cuda_scan()`` adds the scan implementation ``"cuda"`` to ``mhunet_deploy.model.scan`` (our kernel
for CUDA tensors without autograd, the chunked torch scan otherwise); ``TorchBackend(scan="auto")`` uses it.
Nothing is compiled at import time: importing this module on a CPU-only machine is free.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

#: The name under which ``register_cuda_scan`` registers our kernel with ``mhunet_deploy.model.scan``.
SCAN_IMPL_NAME = "cuda"

_SRC_DIR = Path(__file__).resolve().parent / "kernels"


def source_dir() -> Path:
    """Where the kernel sources live (``kernels/`` inside this package, installed or not)."""
    return _SRC_DIR


@lru_cache(maxsize=1)
def _module():
    if not torch.cuda.is_available():
        raise RuntimeError("selective_scan_cuda needs a CUDA GPU; none is visible to torch")
    from torch.utils.cpp_extension import load

    srcs = [_SRC_DIR / "torch_binding.cpp", _SRC_DIR / "selective_scan.cu"]
    missing = [str(s) for s in srcs if not s.exists()]
    if missing:
        raise FileNotFoundError(f"selective_scan_cuda: kernel sources not found: {missing}")
    arch = os.environ.get("MHUNET_SCAN_ARCH")
    if arch is None:
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
    return load(
        name=f"mhunet_selective_scan_sm{arch}",
        sources=[str(s) for s in srcs],
        extra_include_paths=[str(_SRC_DIR)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        verbose=os.environ.get("MHUNET_SCAN_VERBOSE", "0") == "1",
    )


def load_extension():
    """Build (or load the cached build of) the extension; returns the loaded module."""
    return _module()


def selective_scan_cuda(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, items=0, cpw=0, spi=0, out=None
):
    """Selective scan forward on the GPU: same arguments and semantics as ``selective_scan_loop``.

    u, delta: (B, D, L); A: (D, N) fp32; B, C: (B, G, N, L); D, delta_bias: (D,) fp32 or None.
    u, delta, B, C share one dtype (float32 or float16); y has u's dtype. N <= 16.
    ``items``/``cpw``/``spi`` override the kernel configuration (0 = default; the compiled ones:
    ``load_extension().configs()``); for tuning only.
    ``out``: optional contiguous (B, D, L) tensor of u's dtype to write y into (returned).
    """
    tensors = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "selective_scan_cuda is forward-only (no backward kernel); call it under torch.no_grad() or "
            "use the reference scan for training"
        )
    if A.shape[-1] > 16:
        raise ValueError(f"selective_scan_cuda supports d_state N <= 16, got N={A.shape[-1]}")
    if u.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"selective_scan_cuda supports float32 and float16 inputs, got {u.dtype}")
    dt = u.dtype
    args = [
        u.contiguous(),
        delta.to(dt).contiguous(),
        A.float().contiguous(),
        B.to(dt).contiguous(),
        C.to(dt).contiguous(),
        None if D is None else D.float().contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(),
    ]
    return _module().fwd(*args, bool(delta_softplus), int(items), int(cpw), int(spi), out)


def _kernel_applies(u, delta, A, B, C, D, delta_bias) -> bool:
    """Whether selective_scan_cuda can take this call (else the chunked torch scan does)."""
    tensors = [t for t in (u, delta, A, B, C, D, delta_bias) if t is not None]
    if not all(t.is_cuda for t in tensors) or len({t.device for t in tensors}) != 1:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # forward-only kernel: training keeps the differentiable scan
    return u.dtype in (torch.float32, torch.float16) and A.shape[-1] <= 16 and u.dim() == 3


def scan_cuda_or_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The ``"cuda"`` scan implementation: our kernel for CUDA tensors without autograd (fp32 or fp16 u,
    N <= 16), ``selective_scan_chunked`` for everything else (CPU, grad, bf16, N > 16)."""
    if _kernel_applies(u, delta, A, B, C, D, delta_bias):
        return selective_scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus)
    from mhunet_deploy.model.scan import selective_scan_chunked

    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)


def register_cuda_scan(build: bool = True) -> str:
    """Register our kernel as the scan implementation ``"cuda"`` and return that name.

    ``build=True`` (default) builds or loads the extension now, so a missing nvcc or a compile error
    surfaces here (as the exception of ``torch.utils.cpp_extension.load``), not in the middle of a forward
    pass; it needs a CUDA GPU. ``build=False`` only registers (the first CUDA call then builds).
    """
    from mhunet_deploy.model.scan import register_scan_impl

    if build:
        load_extension()
    register_scan_impl(SCAN_IMPL_NAME, scan_cuda_or_chunked)
    return SCAN_IMPL_NAME
