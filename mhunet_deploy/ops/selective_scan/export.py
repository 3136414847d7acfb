"""The custom ONNX node the exporter traces the scan into: one ``mhunet::SelectiveScan`` per call.

torch 2.13's default (dynamo) exporter needs onnxscript, which this project does not carry, and
``torch.onnx.ops.symbolic`` is not accepted by the TorchScript exporter; so the custom node comes
from a ``torch.autograd.Function`` with a ``symbolic`` method under ``dynamo=False``. Eagerly that
Function runs the chunked scan; while tracing it returns zeros of y's shape and type instead, because the
symbolic replaces it, no control flow in the model depends on its value, and tracing the chunked
scan's Python loops made the export 20x slower.

``register_onnx_schema`` gives ONNX the node's schema, written from the contract, so that the
exporter's strict type inference checks every scan node's types (one data type T for u, delta, B, C,
float32 A, D, delta_bias and y) instead of passing over an unknown op.
"""

from __future__ import annotations

import functools
from typing import Any

import onnx
import torch

from . import contract, scan_args
from .torch_scan import selective_scan_chunked, static_dims

PLUGIN_IMPL = "plugin"


class _SelectiveScanNode(torch.autograd.Function):
    """Exports as the contract's custom node; y's type is fp32 (the contract's OUTPUTS) with a static
    (D, L) (see module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, static_dl: tuple[int, int]):
        if torch.jit.is_tracing():
            return torch.zeros_like(u, dtype=torch.float32)
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, static_dl: tuple[int, int]):
        args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
        attrs = {f"{k}_i": int(delta_softplus) for k in contract.ATTRIBUTES}
        attrs.update({f"{k}_s": v for k, v in contract.PARSER_ATTRIBUTES.items()})
        y = g.op(f"{contract.DOMAIN}::{contract.OP_TYPE}", *(args[p.name] for p in contract.INPUTS), **attrs)
        y.setType(u.type().with_dtype(torch.float32).with_sizes([None, *static_dl]))
        return y


def plugin_scan(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The "plugin" scan implementation (a ScanFn): one custom node in ONNX, the chunked scan when run.
    The exporter registers it (``torch_scan.register_scan_impl``) for the trace it makes."""
    args = scan_args(*args, **kwargs)
    return _SelectiveScanNode.apply(*args, static_dims(args[0])[1:])


def onnx_schema() -> onnx.defs.OpSchema:
    """The node's ONNX schema from the contract: fp32-only ports are tensor(float), the data ports share
    the type T in ``DATA_DTYPES``; no shape function (the exporter writes y's shape)."""
    schema = onnx.defs.OpSchema
    types = {"float32": "tensor(float)", "float16": "tensor(float16)"}

    def port(p: contract.Port) -> onnx.defs.OpSchema.FormalParameter:
        option = schema.FormalParameterOption
        return schema.FormalParameter(
            p.name,
            types["float32"] if p.fp32_only else "T",
            param_option=option.Optional if p.optional else option.Single,
        )

    return schema(
        contract.OP_TYPE,
        contract.DOMAIN,
        contract.DOMAIN_VERSION,
        "Mamba's selective scan (mhunet_deploy/ops/selective_scan/contract.py).",
        inputs=[port(p) for p in contract.INPUTS],
        outputs=[port(p) for p in contract.OUTPUTS],
        type_constraints=[("T", [types[t] for t in contract.DATA_DTYPES], "u, delta, B and C")],
        attributes=[
            *(
                schema.Attribute(k, onnx.helper.make_attribute(k, v), "")
                for k, v in contract.ATTRIBUTES.items()
            ),
            # optional: hand-made and version-1 graphs lack them (the export tests check ours carry them)
            *(
                schema.Attribute(k, schema.AttrType.STRING, "", required=False)
                for k in contract.PARSER_ATTRIBUTES
            ),
        ],
    )


@functools.cache
def register_onnx_schema() -> None:
    """Register ``onnx_schema()`` with onnx in this process (once): onnx.checker and shape inference then
    check the node against it."""
    onnx.defs.register_schema(onnx_schema())
