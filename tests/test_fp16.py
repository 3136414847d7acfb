"""FP16 with FP32 islands (ARCHITECTURE.md, Precision) on the packaged trained weights.

The trained weights drive the scan's output to ~3.5e5 (patient26, encoder stage 4), past fp16's 65504:
without the scan island the fp16 graph gave NaN logits on every patient26 slice. These tests hold the
islands in place: the graph structure (tiny model, fast) and the task on real slices (packaged weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mhunet_deploy.exporting.fp16 import SCAN_MERGE_OPS
from mhunet_deploy.graphs import INPUT_NAME, OUTPUT_NAME, graph_filename
from mhunet_deploy.ops.selective_scan import contract
from mhunet_deploy.verify import Case, PluginGraphReference, Row
from tests.tiny_model import ONE, PATIENT26, TWO, TinyExport

#: Slices of patient26 the onnxruntime fp16 graph runs on (fp16 on the CPU EP is slow: ~10-30 s each).
SLICES = 2
FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(model)
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    out = {v.name: v.type.tensor_type.elem_type for v in values}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


@pytest.mark.parametrize("outputs", [ONE, TWO])
def test_scan_and_its_merge_are_an_fp32_island(tiny_export: TinyExport, outputs: tuple[str, ...]) -> None:
    _, export = tiny_export(outputs)
    model = onnx.load(str(export / graph_filename("light", "plugin", "fp16")))
    t = _types(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    scans = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert scans
    for scan in scans:
        # contract v2: fp16 u, delta, B, C in, fp32 A, D, delta_bias, fp32 y out
        want = [FLOAT if port.fp32_only else HALF for port in contract.INPUTS]
        assert [t[name] for name in scan.input] == want, scan.name
        front, norms = list(scan.output), 0
        while front:  # every path from y stays fp32 through the merge and ends in out_norm
            name = front.pop()
            assert t[name] == FLOAT, name
            for c in consumers.get(name, []):
                assert c.op_type in (*SCAN_MERGE_OPS, "LayerNormalization"), (scan.name, c.op_type)
                if c.op_type == "LayerNormalization":
                    norms += 1
                else:
                    front.extend(o for o in c.output if t.get(o) in (FLOAT, HALF))
        assert norms >= 1, scan.name
    # the rest stays fp16: projections, einsums, convolutions and the SiLU gate run on fp16 tensors
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Conv", "ConvTranspose", "Mul", "Sigmoid"):
            floats = {t[name] for name in node.input if name and t[name] in (FLOAT, HALF)}
            assert floats <= {HALF}, (node.name, node.op_type)
    assert t[model.graph.input[0].name] == HALF and t[model.graph.output[0].name] == HALF


class _Session:
    """A portable graph on onnxruntime's CPU EP, shaped like a Backend for ``verify.compare``."""

    def __init__(self, model: onnx.ModelProto, precision: str, outputs: tuple[str, ...]) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.dtype = np.float16 if precision == "fp16" else np.float32
        self.name, self.precision, self.outputs = "onnxruntime-cpu", precision, outputs

    def predict(self, slices: np.ndarray) -> np.ndarray:
        (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: slices.astype(self.dtype)})
        self.last = y.astype(np.float32)
        return self.last


def _patient26_case(ckpt: Path, outputs: tuple[str, ...]) -> tuple[Case, np.ndarray]:
    """patient26 prepared, and the FP32 torch reference's logits on its ``SLICES`` central slices."""
    from mhunet_deploy.backends.torch_backend import TorchBackend
    from mhunet_deploy.checkpoint import read_meta
    from mhunet_deploy.io.nifti import load_volume
    from mhunet_deploy.pipeline import EMPTY_SLICE_LOGIT, predict_volume
    from mhunet_deploy.postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD, min_lesion_for
    from mhunet_deploy.preprocess import prepare
    from mhunet_deploy.verify import central_slices

    volume = load_volume(PATIENT26)
    slices, geometry = prepare(volume)
    index = central_slices(slices, SLICES)
    reference = np.full((len(slices), len(outputs), *slices.shape[2:]), EMPTY_SLICE_LOGIT, np.float32)
    with TorchBackend(ckpt, device="cpu") as torch_backend:
        reference[index] = predict_volume(torch_backend, slices[index], SLICES)
    post = read_meta(ckpt).get("postprocess", {})
    case = Case(
        volume,
        slices,
        geometry,
        reference,
        outputs,
        post.get("threshold", DEFAULT_THRESHOLD),
        min_lesion_for(
            volume.zooms, post.get("min_lesion_mm3", DEFAULT_MIN_LESION_MM3), post.get("min_lesion_mm3_thick")
        ),
    )
    return case, index


def _judged(row: Row, logits: np.ndarray, label: str) -> None:
    """The verify tolerances for fp16 (Dice >= 0.99, same lesion count, brain Dice) on slices with lesions."""
    assert np.isfinite(logits).all()
    print(
        f"{label}: max |Δ| {row.max_abs} median {row.median_abs} Dice {row.dice:.4f} "
        f"brain Dice {row.brain_dice} ({row.brain_ml} mL) lesions {row.lesions}/{row.ref_lesions}"
    )
    assert row.ref_lesions > 0  # the slices carry lesions, so Dice and the count mean something
    assert row.passed, row.failures


@pytest.mark.skipif(not PATIENT26.is_file(), reason=f"{PATIENT26} not present")
def test_packaged_weights_fp16_portable_graph_matches_fp32_on_patient26() -> None:
    from mhunet_deploy.checkpoint import default_checkpoint, load_checkpoint
    from mhunet_deploy.exporting.exporter import DEFAULT_OPSET, fold
    from mhunet_deploy.exporting.fp16 import to_fp16
    from mhunet_deploy.exporting.inline import inline_scans, scan_signatures
    from mhunet_deploy.exporting.torch_export import export_plugin_graph, export_scan_graph
    from mhunet_deploy.verify import compare

    ckpt = default_checkpoint()
    model, _ = load_checkpoint(ckpt)
    plugin32 = fold(export_plugin_graph(model, DEFAULT_OPSET))
    subgraphs = {sig: fold(export_scan_graph(sig, DEFAULT_OPSET)) for sig in scan_signatures(plugin32)}
    portable16 = inline_scans(to_fp16(plugin32), subgraphs.__getitem__)

    outputs = model.config.outputs  # every output channel of the packaged model (lesion, brain)
    case, index = _patient26_case(ckpt, outputs)
    half = _Session(portable16, "fp16", outputs)
    row = compare(case, half, index, batch_size=SLICES)  # Dice >= 0.99, same lesion count, brain Dice
    _judged(row, half.last, "fp16 portable")


class _Recorded(PluginGraphReference):
    """verify's plugin-graph reference, keeping its last logits for the finiteness check."""

    def predict(self, slices: np.ndarray) -> np.ndarray:
        self.last = super().predict(slices)
        return self.last


@pytest.mark.skipif(not PATIENT26.is_file(), reason=f"{PATIENT26} not present")
def test_packaged_weights_fp16_plugin_graph_matches_fp32_on_patient26(tmp_path: Path) -> None:
    """Contract v2 end to end on the CPU: the exported FP16 plugin graph (fp16 u, delta, B, C into every
    scan node, fp32 y out of it) on onnx.reference with the numpy SelectiveScan, held to verify's FP16
    tolerances against the FP32 torch reference. The trained weights drive y to ~3.5e5 here: an fp16 y
    would be inf and the logits NaN."""
    from mhunet_deploy.checkpoint import default_checkpoint, load_checkpoint
    from mhunet_deploy.exporting.exporter import export_graphs
    from mhunet_deploy.verify import compare

    ckpt = default_checkpoint()
    export_graphs(ckpt, tmp_path)
    outputs = load_checkpoint(ckpt)[0].config.outputs
    case, index = _patient26_case(ckpt, outputs)
    with _Recorded(ckpt, tmp_path, "fp16") as half:
        assert half.precision == "fp16" and half.outputs == outputs
        row = compare(case, half, index, batch_size=SLICES)
        _judged(row, half.last, "fp16 plugin (onnx.reference)")
