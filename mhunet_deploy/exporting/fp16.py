"""FP32 graph -> FP16 graph with explicit FP32 islands, for strongly typed TensorRT networks.

A strongly typed network takes every tensor's type from the graph, so precision must be spelled out
in the ONNX itself (ARCHITECTURE.md, Precision): fp16 everywhere, except
- normalisation statistics: LayerNormalization and BatchNormalization run in fp32 between Casts
  (a LayerNorm over 2C channels in fp16 loses the mean/variance of small-variance tokens);
- the SelectiveScan node's fp32 ports, read from the contract: A, D and delta_bias stay fp32 constants
  and y is fp32 (contract v2), while u, delta, B and C come in fp16 straight from their producers;
- the merge of the scan's outputs up to out_norm: with the trained weights the scan's y reaches ~3.5e5
  (patient26, encoder stage 4; fp16 max 65504), which overflowed to inf and turned out_norm's output
  into NaN. So the layout ops and Adds that merge its four scan orders (``SCAN_MERGE_OPS``, found by
  walking from the scan to the next LayerNormalization) take its fp32 y and stay fp32 until out_norm,
  whose output is O(1). Everything else in SS2D (in_proj, conv, x_proj, dt_proj, the SiLU gate,
  out_proj) peaks below ~40 and stays fp16: the scan's data inputs are x_proj's and dt_proj's fp16
  outputs, which the v1 contract (y in u's type) made the graph cast up to fp32 only to get fp32 y.
Our own pass rather than onnxconverter-common: the island rules are ours and tiny, and the
"fp32 ports" of the custom op come from the contract, which a generic converter cannot know.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ..ops.selective_scan import contract

#: Ops computed wholly in fp32: every input is cast up and every output cast back down.
FP32_ISLAND_OPS = ("LayerNormalization", "BatchNormalization")
#: Data-movement ops and Adds between a scan's output and the next LayerNormalization (out_norm):
#: the merge of the four scan orders, kept in the scan's fp32 island.
SCAN_MERGE_OPS = ("Reshape", "Slice", "Gather", "Transpose", "Add", "Squeeze", "Unsqueeze", "Identity")
_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)


def is_scan(node: gs.Node) -> bool:
    return node.op == contract.OP_TYPE and node.domain == contract.DOMAIN


def scan_islands(graph: gs.Graph) -> list[gs.Node]:
    """Every scan node and the merge ops (``SCAN_MERGE_OPS``) from its output to out_norm: the nodes
    whose float outputs are fp32 (the scan's by contract, the merge's to keep its range)."""
    found: dict[int, gs.Node] = {}
    front = [n for n in graph.nodes if is_scan(n)]
    while front:
        node = front.pop()
        if id(node) in found:
            continue
        found[id(node)] = node
        front.extend(c for out in node.outputs for c in out.outputs if c.op in SCAN_MERGE_OPS)
    return list(found.values())


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype in (_F32, _F16)


def fp32_ports(node: gs.Node, islands: frozenset[int] = frozenset()) -> set[int]:
    """Input indices of ``node`` that must be fed fp32 in the fp16 graph.

    ``islands`` holds the ids of the nodes of ``scan_islands``: all float inputs of the merge ops are
    fp32; the scan's fp32 inputs are the contract's.
    """
    if is_scan(node):
        return {i for i, port in enumerate(contract.INPUTS) if port.fp32_only}
    if node.op in FP32_ISLAND_OPS:
        return set(range(len(node.inputs)))
    if id(node) in islands:
        return {i for i, t in enumerate(node.inputs) if _is_float(t)}
    return set()


def fp32_outputs(node: gs.Node, islands: frozenset[int] = frozenset()) -> set[int]:
    """Output indices of ``node`` that are fp32 in the fp16 graph (cast down where fp16 ports read them)."""
    if is_scan(node):
        return {k for k, port in enumerate(contract.OUTPUTS) if port.fp32_only}
    if node.op in FP32_ISLAND_OPS or id(node) in islands:
        return {k for k, out in enumerate(node.outputs) if _is_float(out)}
    return set()


def _uses(tensor: gs.Tensor) -> list[tuple[gs.Node, int]]:
    return [(n, i) for n in tensor.outputs for i, t in enumerate(n.inputs) if t is tensor]


def _convert_constants(graph: gs.Graph, islands: frozenset[int]) -> None:
    """fp32 weights become fp16, unless only fp32 ports read them; shared ones get an fp16 copy."""
    for const in list(graph.tensors().values()):
        if not isinstance(const, gs.Constant) or const.values.dtype != _F32:
            continue
        uses = _uses(const)
        half = [(n, i) for n, i in uses if i not in fp32_ports(n, islands)]
        if not half:
            continue
        if len(half) == len(uses):
            const.values = const.values.astype(np.float16)
            continue
        copy = gs.Constant(f"{const.name}/fp16", const.values.astype(np.float16))
        for node, i in half:
            node.inputs[i] = copy


def _retype_ops(graph: gs.Graph) -> None:
    """Casts to float and float-valued ConstantOfShape produce fp16 now."""
    for node in graph.nodes:
        if node.op == "Cast" and node.attrs["to"] == TensorProto.FLOAT:
            node.attrs["to"] = TensorProto.FLOAT16
        elif node.op == "ConstantOfShape" and "value" in node.attrs and node.attrs["value"].dtype == _F32:
            value = node.attrs["value"]
            node.attrs["value"] = gs.Constant(value.name, value.values.astype(np.float16))


def add_cast(graph: gs.Graph, tensor: gs.Tensor, to: int, out: gs.Variable) -> gs.Variable:
    """Append ``out = Cast(tensor, to)`` to ``graph``."""
    cast = gs.Node("Cast", name=f"{out.name}/Cast", attrs={"to": to}, inputs=[tensor], outputs=[out])
    graph.nodes.append(cast)
    return out


def _add_islands(graph: gs.Graph, islands: frozenset[int]) -> None:
    """Cast fp16 activations up at every fp32 port; cast fp32 outputs (``fp32_outputs``) back down.

    An island output that feeds another fp32 port is passed on in fp32 (no down-and-up round trip).
    Nodes are visited in topological order, so an island registers its fp32 outputs before any use.
    """
    wide: dict[str, gs.Variable] = {}
    for node in list(graph.nodes):
        for i in sorted(fp32_ports(node, islands)):
            t = node.inputs[i]
            if isinstance(t, gs.Variable) and t.name:
                if t.name not in wide:
                    up = gs.Variable(f"{t.name}/fp32", dtype=_F32, shape=t.shape)
                    wide[t.name] = add_cast(graph, t, TensorProto.FLOAT, up)
                node.inputs[i] = wide[t.name]
        for k in sorted(fp32_outputs(node, islands)):
            out = node.outputs[k]
            fp32 = gs.Variable(f"{out.name}/fp32", dtype=_F32, shape=out.shape)
            wide[out.name] = node.outputs[k] = fp32
            add_cast(graph, wide[out.name], TensorProto.FLOAT16, out)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert an fp32 graph (constants folded) to fp16 with FP32 islands; I/O become fp16 too."""
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.dtype == _F32:
            tensor.dtype = _F16
    islands = frozenset(id(n) for n in scan_islands(graph))
    _convert_constants(graph, islands)
    _retype_ops(graph)
    _add_islands(graph, islands)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)
