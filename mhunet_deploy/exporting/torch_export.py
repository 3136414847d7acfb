"""Tracing to ONNX: the model with one ``mhunet::SelectiveScan`` node per SS2D call (the node:
``ops.selective_scan.export``), and the scan alone as standard ops (the log-step scan).
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from ..graphs import INPUT_NAME, OUTPUT_NAME
from ..model.mamba_hunet import MambaHUNet
from ..ops.selective_scan import contract
from ..ops.selective_scan.export import PLUGIN_IMPL, plugin_scan
from ..ops.selective_scan.torch_scan import register_scan_impl, selective_scan_logstep, use_scan_impl
from .inline import ScanSignature

#: Traced batch size: 2, so no exporter specialises a size-1 batch dim away.
TRACE_BATCH = 2


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
    register_scan_impl(PLUGIN_IMPL, plugin_scan)
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
