"""`mhunet export`: four graphs, their manifests, the custom-op contract, fp16 islands, portability."""

from __future__ import annotations

import json
from collections.abc import Callable

import onnx
import pytest

from mhunet_deploy.graphs import graph_filename
from mhunet_deploy.ops.selective_scan import contract
from tests.tiny_model import ONE, TWO, TinyExport

GRAPHS = [(k, p) for k in ("plugin", "portable") for p in ("fp32", "fp16")]
#: Node budget of a whole portable model (ARCHITECTURE.md, Backends: no Loop, no per-step unrolling).
PORTABLE_NODE_LIMIT = 5000


@pytest.fixture
def load(tiny_export: TinyExport) -> Callable[..., tuple[onnx.ModelProto, dict]]:
    """``load(kind, precision, outputs=ONE)``: a graph of the session's tiny export and its manifest."""

    def graph(kind: str, precision: str, outputs: tuple[str, ...] = ONE) -> tuple[onnx.ModelProto, dict]:
        _, export = tiny_export(outputs)
        path = export / graph_filename("light", kind, precision)
        return onnx.load(str(path)), json.loads(path.with_suffix(".json").read_text())

    return graph


def types(model: onnx.ModelProto) -> dict[str, int]:
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    out = {v.name: v.type.tensor_type.elem_type for v in values}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


@pytest.mark.parametrize("outputs", [ONE, TWO])
@pytest.mark.parametrize(("kind", "precision"), GRAPHS)
def test_manifest_describes_graph(
    load, tiny_export: TinyExport, kind: str, precision: str, outputs: tuple[str, ...]
) -> None:
    from mhunet_deploy.files import sha256_file
    from mhunet_deploy.graphs import output_channels

    ckpt, export = tiny_export(outputs)
    model, manifest = load(kind, precision, outputs)
    assert manifest["kind"] == kind and manifest["precision"] == precision
    assert manifest["checkpoint"]["sha256"] == sha256_file(ckpt)
    assert manifest["onnx_sha256"] == sha256_file(export / manifest["graph"])
    assert manifest["opset"] >= 17 and manifest["node_count"] == len(model.graph.node)
    assert sum(manifest["op_histogram"].values()) == manifest["node_count"]
    dtype = "float16" if precision == "fp16" else "float32"
    assert manifest["inputs"] == [{"name": "slices", "shape": ["batch", 1, 256, 256], "dtype": dtype}]
    # One logit channel per model output, in the order the manifest names them.
    k = len(outputs)
    assert manifest["outputs"] == [{"name": "logits", "shape": ["batch", k, 256, 256], "dtype": dtype}]
    assert manifest["io"]["output_channels"] == list(outputs) and output_channels(manifest) == outputs
    assert manifest["model_config"]["embed_dim"] == 8
    onnx.checker.check_model(model)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_graph_has_one_contract_node_per_ss2d(load, precision: str) -> None:
    model, _ = load("plugin", precision)
    scans = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert len(scans) == 7  # depths (1, 1, 1, 1): 4 encoder + 3 decoder SS2D calls
    assert {o.domain: o.version for o in model.opset_import}[contract.DOMAIN] == contract.DOMAIN_VERSION
    t = types(model)
    # Contract v2: the data inputs come in the graph's precision (fp16 graphs feed fp16 u, delta, B, C
    # with no Cast up), and y is fp32 in both: it reaches ~3.5e5 on real scans with the packaged
    # weights, past the fp16 range (see tests/test_fp16.py).
    data = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in scans:
        assert node.domain == contract.DOMAIN and len(node.input) == len(contract.INPUTS)
        ints = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        assert ints == contract.ATTRIBUTES
        # what TensorRT's parser looks the plugin up by (a node without them asks for version "1")
        strings = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
        assert strings == contract.PARSER_ATTRIBUTES == {"plugin_version": "2", "plugin_namespace": "mhunet"}
        assert len(node.attribute) == len(ints) + len(strings)
        for port, name in zip(contract.INPUTS, node.input, strict=True):
            assert t[name] == (onnx.TensorProto.FLOAT if port.fp32_only else data), port.name
            if not port.fp32_only:
                assert producers[name].op_type != "Cast", (node.name, port.name)
        assert t[node.output[0]] == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_portable_graph_is_standard_ops_without_loops(load, precision: str) -> None:
    model, manifest = load("portable", precision)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert not {"Loop", "Scan", "If"} & set(manifest["op_histogram"])
    assert manifest["node_count"] < PORTABLE_NODE_LIMIT


@pytest.mark.parametrize("outputs", [ONE, TWO])
def test_fp16_graphs_keep_fp32_islands(load, outputs: tuple[str, ...]) -> None:
    for kind in ("plugin", "portable"):
        model, _ = load(kind, "fp16", outputs)
        t = types(model)
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "BatchNormalization"):
                assert all(t[i] == onnx.TensorProto.FLOAT for i in node.input), node.name
        floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert halves and floats  # weights in fp16; norm parameters and the scan's A/D/delta_bias in fp32


def test_manifest_without_output_channels_is_lesion_only_and_checked(load) -> None:
    """Manifests from before the field are one-channel exports; a count that disagrees is refused."""
    from mhunet_deploy.errors import BackendError
    from mhunet_deploy.graphs import output_channels

    _, manifest = load("portable", "fp32")
    old = {**manifest, "io": {k: v for k, v in manifest["io"].items() if k != "output_channels"}}
    assert output_channels(old) == ("lesion",)
    _, two = load("portable", "fp32", TWO)
    with pytest.raises(BackendError, match="names 1 output channel.*graph has 2"):
        output_channels({**two, "io": old["io"]})


def test_light_portable_graph_fits_node_budget(tmp_path) -> None:
    """The node limit on the real `light` architecture (random weights: the graph does not depend on them)."""
    import torch

    from mhunet_deploy.exporting.exporter import fold
    from mhunet_deploy.exporting.inline import inline_scans, scan_signatures
    from mhunet_deploy.exporting.torch_export import export_plugin_graph, export_scan_graph
    from mhunet_deploy.model.mamba_hunet import build_model

    torch.manual_seed(0)
    plugin = fold(export_plugin_graph(build_model("light"), 17))
    subgraphs = {s: fold(export_scan_graph(s, 17)) for s in scan_signatures(plugin)}
    portable = inline_scans(plugin, subgraphs.__getitem__)
    assert sum(n.op_type == contract.OP_TYPE for n in plugin.graph.node) == 14
    assert len(portable.graph.node) < PORTABLE_NODE_LIMIT


def test_plugin_graph_of_another_contract_version_is_refused(tiny_export: TinyExport, tmp_path) -> None:
    """A plugin graph exported for contract v1 (y in u's type) must not reach the v2 plugin: find_graph,
    which every backend and the engine builder call, refuses it; portable graphs have no scan node."""
    import shutil

    from mhunet_deploy.errors import BackendError
    from mhunet_deploy.graphs import find_graph, read_manifest, write_manifest

    ckpt, export = tiny_export()
    for kind in ("plugin", "portable"):
        path = export / graph_filename("light", kind, "fp16")
        shutil.copy(path, tmp_path / path.name)
        manifest = read_manifest(path)
        write_manifest(tmp_path / path.name, {**manifest, "contract": {**manifest["contract"], "version": 1}})
    assert find_graph(ckpt, "plugin", "fp16", export)[1]["contract"]["version"] == contract.DOMAIN_VERSION
    with pytest.raises(BackendError, match="contract version 1, this package's plugin version 2"):
        find_graph(ckpt, "plugin", "fp16", tmp_path)
    find_graph(ckpt, "portable", "fp16", tmp_path)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_scan_node_types_are_checked_against_the_contract_schema(load, precision: str) -> None:
    """Strict type inference, with the schema the exporter registers, accepts the exported scan nodes and
    refuses a v1-typed one (y in u's fp16) and mixed data types."""
    from onnx.shape_inference import InferenceError

    from mhunet_deploy.exporting.exporter import check

    model, _ = load("plugin", precision)
    check(model)  # registers the schema; the exported graph passes
    scan = next(n for n in model.graph.node if n.op_type == contract.OP_TYPE)
    half = onnx.TensorProto.FLOAT16
    y_fp16 = onnx.ModelProto()
    y_fp16.CopyFrom(model)
    for value in y_fp16.graph.value_info:
        if value.name == scan.output[0]:
            value.type.tensor_type.elem_type = half
    mixed = onnx.ModelProto()
    mixed.CopyFrom(model)
    (node,) = (n for n in mixed.graph.node if n.name == scan.name)
    other = onnx.TensorProto.FLOAT if precision == "fp16" else half
    cast = onnx.helper.make_node("Cast", [node.input[0]], ["u_other"], to=other)
    node.input[0] = "u_other"
    mixed.graph.node.insert(list(mixed.graph.node).index(node), cast)
    for bad, match in ((y_fp16, "differs from existing elem type"), (mixed, "delta has inconsistent type")):
        with pytest.raises((InferenceError, onnx.checker.ValidationError), match=match):
            check(bad)
