"""`mhunet export`: a checkpoint -> four checked ONNX graphs, each with a JSON manifest beside it.

plugin fp32 is traced once; plugin fp16 is our fp16 pass over it; the two portable graphs inline the
log-step scan into those two. Every graph passes onnx.checker and strict shape inference before it is
written, and its manifest pins it to the checkpoint's sha256 (see ``manifest``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs
import torch

from .. import __version__
from ..checkpoint import default_checkpoint, load_checkpoint
from ..files import atomic_write, sha256_file
from ..graphs import FORMAT, INPUT_NAME, OUTPUT_NAME, graph_filename, write_manifest
from ..ops.selective_scan import contract
from ..ops.selective_scan.export import register_onnx_schema
from .fp16 import to_fp16
from .inline import inline_scans, scan_signatures
from .torch_export import export_plugin_graph, export_scan_graph

#: ONNX opset of every exported graph (LayerNormalization needs 17; TensorRT 10 parses 17-20).
DEFAULT_OPSET = 17


def fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (A = -exp(A_logs), static shape arithmetic) and infer shapes.

    Folding makes the scan's A, D and delta_bias plain fp32 constants, which the fp16 pass keeps fp32.
    """
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    return onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True)


def _fix_io(model: onnx.ModelProto, img_size: int, in_chans: int, out_chans: int) -> None:
    """Spell out the I/O contract: (batch, C, H, W) in, (batch, K, H, W) logits out (one channel per
    model output, lesion first), batch dynamic."""
    for value, channels in ((model.graph.input[0], in_chans), (model.graph.output[0], out_chans)):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, ("batch", channels, img_size, img_size), strict=True):
            dim.Clear()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker, then strict shape and type inference, the scan node's types against its schema
    (``register_onnx_schema``); returns the graph with inferred types."""
    register_onnx_schema()
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _io(values: Any) -> list[dict[str, Any]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        out.append({"name": v.name, "shape": shape, "dtype": dtype})
    return out


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """The graph facts a manifest records: opsets, node count, op histogram, I/O."""
    ops = Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    return {
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "node_count": len(model.graph.node),
        "op_histogram": dict(ops.most_common()),
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
    }


def export_graphs(
    checkpoint: Path | None = None,
    out_dir: Path = Path("export"),
    opset: int = DEFAULT_OPSET,
    on_graph: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write the four graphs of ``checkpoint`` into ``out_dir``; returns their paths."""
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    model, meta = load_checkpoint(ckpt)
    cfg = model.config
    plugin32 = fold(export_plugin_graph(model, opset))
    _fix_io(plugin32, cfg.img_size, cfg.in_chans, len(cfg.outputs))
    subgraphs = {sig: fold(export_scan_graph(sig, opset)) for sig in scan_signatures(plugin32)}
    plugin16 = to_fp16(plugin32)
    graphs = {
        ("plugin", "fp32"): plugin32,
        ("plugin", "fp16"): plugin16,
        ("portable", "fp32"): inline_scans(plugin32, subgraphs.__getitem__),
        ("portable", "fp16"): inline_scans(plugin16, subgraphs.__getitem__),
    }
    common = {
        "format": FORMAT,
        "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt), "name": cfg.name},
        "model_config": meta["config"],
        "contract": {
            "op_type": contract.OP_TYPE,
            "domain": contract.DOMAIN,
            "version": contract.DOMAIN_VERSION,
        },
        # The logits' channels in order: what each backend hands the pipeline (see output_channels).
        "io": {
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "output_channels": list(cfg.outputs),
            "batch_axis": 0,
        },
        "exporter": {"mhunet_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (kind, precision), graph in graphs.items():
        graph = check(graph)
        path = out_dir / graph_filename(cfg.name, kind, precision)
        atomic_write(path, lambda tmp, g=graph: onnx.save(g, str(tmp)))
        write_manifest(
            path,
            {
                **common,
                "graph": path.name,
                "kind": kind,
                "precision": precision,
                "onnx_sha256": sha256_file(path),
                "scan_nodes": sum(n.op_type == contract.OP_TYPE for n in graph.graph.node),
                **describe(graph),
            },
        )
        paths.append(path)
        if on_graph:
            on_graph(path)
    return paths
