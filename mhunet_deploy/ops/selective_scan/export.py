"""The custom ONNX node the exporter traces the scan into: one ``mhunet::SelectiveScan`` per call.

torch 2.13's default (dynamo) exporter needs onnxscript, which this project does not carry, and
``torch.onnx.ops.symbolic`` is not accepted by the TorchScript exporter; so the custom node comes
from a ``torch.autograd.Function`` with a ``symbolic`` method under ``dynamo=False``. Eagerly that
Function runs the chunked scan; while tracing it returns zeros of y's shape instead, because the
symbolic replaces it, no control flow in the model depends on its value, and tracing the chunked
scan's Python loops made the export 20x slower.
"""

from __future__ import annotations

from typing import Any

import torch

from . import contract, scan_args
from .torch_scan import selective_scan_chunked, static_dims

PLUGIN_IMPL = "plugin"


class _SelectiveScanNode(torch.autograd.Function):
    """Exports as the contract's custom node with a static (D, L) output type (see module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, static_dl: tuple[int, int]):
        if torch.jit.is_tracing():
            return torch.zeros_like(u)
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, static_dl: tuple[int, int]):
        args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
        attrs = {f"{k}_i": int(delta_softplus) for k in contract.ATTRIBUTES}
        y = g.op(f"{contract.DOMAIN}::{contract.OP_TYPE}", *(args[p.name] for p in contract.INPUTS), **attrs)
        y.setType(u.type().with_sizes([None, *static_dl]))
        return y


def plugin_scan(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The "plugin" scan implementation (a ScanFn): one custom node in ONNX, the chunked scan when run.
    The exporter registers it (``torch_scan.register_scan_impl``) for the trace it makes."""
    args = scan_args(*args, **kwargs)
    return _SelectiveScanNode.apply(*args, static_dims(args[0])[1:])
