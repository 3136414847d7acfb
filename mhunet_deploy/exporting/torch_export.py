"""Tracing to ONNX: the model with one ``mhunet::SelectiveScan`` node per SS2D call, and the scan alone.

torch 2.13's default (dynamo) exporter needs onnxscript, which this project does not carry, and
``torch.onnx.ops.symbolic`` is not accepted by the TorchScript exporter; so the custom node comes
from a ``torch.autograd.Function`` with a ``symbolic`` method under ``dynamo=False``. Eagerly that
Function runs the chunked scan; while tracing it returns zeros of y's shape instead, because the
symbolic replaces it, no control flow in the model depends on its value, and tracing the chunked
scan's Python loops made the export 20x slower.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from .. import contract
from ..graphs import INPUT_NAME, OUTPUT_NAME
from ..model.mamba_hunet import MambaHUNet
from ..model.scan import (
    register_scan_impl,
    selective_scan_chunked,
    selective_scan_logstep,
    static_dims,
    use_scan_impl,
)
from .inline import ScanSignature

PLUGIN_IMPL = "plugin"
#: Traced batch size: 2, so no exporter specialises a size-1 batch dim away.
TRACE_BATCH = 2


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


def plugin_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The "plugin" scan implementation: one custom node in ONNX, the chunked scan when run."""
    return _SelectiveScanNode.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, static_dims(u)[1:])


register_scan_impl(PLUGIN_IMPL, plugin_scan)


def _to_onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], names: dict, opset: int, custom_op: bool
) -> onnx.ModelProto:
    """TorchScript-exporter call shared by the model and the scan: batch axis dynamic, eval mode."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of dynamo=False, TracerWarnings
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_axes={name: {0: "batch"} for name in names["dynamic"]},
            custom_opsets={contract.DOMAIN: contract.DOMAIN_VERSION} if custom_op else None,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def export_plugin_graph(model: MambaHUNet, opset: int) -> onnx.ModelProto:
    """The fp32 plugin graph: standard ops plus one SelectiveScan node per SS2D call."""
    cfg = model.config
    x = torch.randn(TRACE_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size)
    names = {"inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME], "dynamic": [INPUT_NAME, OUTPUT_NAME]}
    with torch.no_grad(), use_scan_impl(PLUGIN_IMPL):
        return _to_onnx(model.eval(), (x,), names, opset, custom_op=True)


class _LogstepScan(nn.Module):
    """The log-step scan as a module, so the exporter traces it alone (A, D, delta_bias as inputs)."""

    def __init__(self, delta_softplus: bool) -> None:
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return selective_scan_logstep(*args, self.delta_softplus)  # u, delta, A, B, C, D, delta_bias


def export_scan_graph(sig: ScanSignature, opset: int, delta_softplus: bool = True) -> onnx.ModelProto:
    """Standard-op fp32 graph of one scan shape; inputs and output named and ordered as the contract."""
    d, n, g, length = sig.channels, sig.d_state, sig.groups, sig.length
    data = {
        "u": torch.randn(1, d, length),
        "delta": torch.randn(1, d, length),
        "A": -torch.rand(d, n) - 0.5,
        "B": torch.randn(1, g, n, length),
        "C": torch.randn(1, g, n, length),
        "D": torch.randn(d),
        "delta_bias": torch.randn(d),
    }
    order = [p.name for p in contract.INPUTS]
    names = {
        "inputs": order,
        "outputs": [p.name for p in contract.OUTPUTS],
        "dynamic": [p.name for p in contract.INPUTS + contract.OUTPUTS if p.shape[0] == "B"],
    }
    with torch.no_grad():
        args = tuple(data[k] for k in order)
        return _to_onnx(_LogstepScan(delta_softplus), args, names, opset, custom_op=False)
