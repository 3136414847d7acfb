"""SelectiveScan, Mamba's S6 scan, in one place: its contract and every implementation of it.

- ``contract``: the op contract (ONNX node, TensorRT plugin, input order, semantics) and the C++ header
  generated from it (``kernels/selective_scan_contract.h``). No torch.
- ``numpy_scan``: the NumPy reference, the op for ``onnx.reference`` and Polygraphy's plugin reference.
  No torch.
- ``torch_scan``: the PyTorch implementations (loop oracle, chunked, log-step) and ``selective_scan``,
  the dispatcher the model calls. Torch.
- ``cuda``: our CUDA kernel (the prebuilt library of ``kernels/selective_scan.cu``) as a scan
  implementation for the torch backend. Torch.
- ``export``: the custom ONNX node the exporter traces the scan into. Torch.

The CUDA kernel and the TensorRT plugin sources are in ``mhunet_deploy/kernels/`` (shipped in the wheel,
built by ``plugins/CMakeLists.txt`` or ``mhunet build-kernels``). Every implementation takes the op's
arguments as :class:`ScanFn` writes them, once; implementations that only pass them on take ``*args``
and complete them with :func:`scan_args`.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol


class ScanFn(Protocol):
    """``y = scan(u, delta, A, B, C, D, delta_bias=None, delta_softplus=True)``: the contract's inputs in
    its order (``contract.INPUTS``), then its attribute; arrays of one library (torch or numpy).

    u, delta (Bt, D, L); A (D, N); B, C (Bt, G, N, L), channel d reads group d // (D // G); D and
    delta_bias (D). u, delta, B, C share one dtype; y (Bt, D, L) is float32 whatever it is (float64
    for float64 inputs, which the torch and numpy scans accept for gradcheck and tests)."""

    def __call__(
        self,
        u: Any,
        delta: Any,
        A: Any,
        B: Any,
        C: Any,
        D: Any,
        delta_bias: Any = None,
        delta_softplus: bool = True,
    ) -> Any: ...


_SIGNATURE = inspect.signature(ScanFn.__call__)


def scan_args(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """The eight arguments of a :class:`ScanFn` call, in order, with the defaults filled in."""
    if len(args) == 8 and not kwargs:
        return args  # every argument given in order (the model's call): binding costs ~5 µs per call
    bound = _SIGNATURE.bind(None, *args, **kwargs)  # None stands for self
    bound.apply_defaults()
    return tuple(bound.arguments.values())[1:]
