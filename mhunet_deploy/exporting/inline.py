"""Portable graphs: every SelectiveScan node of a plugin graph replaced by a standard-op subgraph.

Deriving the portable graph from the plugin graph (instead of tracing the model a second time) keeps
the two graphs identical outside the scan, and gives the fp16 portable graph its fp32 scan for free:
the node's fp16 data inputs are cast up, the fp32 subgraph runs, and its fp32 output is the node's y,
fp32 by contract in both graphs. The subgraphs come from tracing ``selective_scan_logstep`` (see
``torch_export``), one per scan shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ..ops.selective_scan import contract
from .fp16 import add_cast, is_scan


class ScanSignature(NamedTuple):
    """The static shape of one scan call; the batch stays dynamic."""

    channels: int
    length: int
    d_state: int
    groups: int


def scan_nodes(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if is_scan(n)]


def signature(node: gs.Node) -> ScanSignature:
    """Read D and N from the constant A, G from B, and L from the output shape the exporter annotated."""
    a = node.inputs[contract.INPUT_INDEX["A"]]
    b = node.inputs[contract.INPUT_INDEX["B"]]
    y = node.outputs[0]
    if not isinstance(a, gs.Constant) or not y.shape or not isinstance(y.shape[-1], int):
        raise ValueError(f"{node.name}: scan node lacks a constant A or a static output length")
    d, n = a.shape
    return ScanSignature(channels=d, length=y.shape[-1], d_state=n, groups=b.shape[1])


def scan_signatures(model: onnx.ModelProto) -> set[ScanSignature]:
    return {signature(n) for n in scan_nodes(gs.import_onnx(model))}


def inline_scans(
    model: onnx.ModelProto, subgraph_for: Callable[[ScanSignature], onnx.ModelProto]
) -> onnx.ModelProto:
    """Replace each scan node by ``subgraph_for(signature)`` (fp32, inputs/outputs in contract order).

    Data inputs that are not fp32 (the fp16 graph) are cast to fp32, so the whole scan, state and all,
    runs in fp32 in both portable graphs; its output is the node's y, which the contract makes fp32 (a
    node with another y type is refused).
    """
    graph = gs.import_onnx(model)
    for k, node in enumerate(scan_nodes(graph)):
        if node.outputs[0].dtype != np.float32:
            raise ValueError(f"{node.name}: y is {node.outputs[0].dtype}; the contract makes it float32")
        # A private copy per node: gs constants keep pointing at the proto's tensors, and exporting
        # renames those in place, so two nodes sharing one proto would end up with one name.
        proto = onnx.ModelProto()
        proto.CopyFrom(subgraph_for(signature(node)))
        sub = gs.import_onnx(proto)
        prefix = f"{node.name or f'SelectiveScan_{k}'}/"
        inner = {id(t): t for n in sub.nodes for t in n.inputs + n.outputs}
        for t in sub.inputs + sub.outputs:
            inner.pop(id(t))
        for t in inner.values():
            t.name = prefix + t.name
        for n in sub.nodes:
            n.name = prefix + n.name
        for sub_in, outer in zip(sub.inputs, node.inputs, strict=True):
            if outer.dtype != np.float32:
                wide = gs.Variable(f"{prefix}{sub_in.name}_fp32", dtype=np.float32, shape=outer.shape)
                outer = add_cast(graph, outer, TensorProto.FLOAT, wide)
            for consumer in list(sub_in.outputs):
                consumer.inputs[consumer.inputs.index(sub_in)] = outer
        y_sub, y = sub.outputs[0], node.outputs[0]
        producer = y_sub.inputs[0]
        node.outputs.clear()
        node.inputs.clear()
        producer.outputs[producer.outputs.index(y_sub)] = y
        graph.nodes.extend(sub.nodes)
    graph.import_domains = [d for d in graph.import_domains or [] if d.domain != contract.DOMAIN]
    graph.cleanup().toposort()
    return gs.export_onnx(graph)
