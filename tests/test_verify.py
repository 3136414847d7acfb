"""`mhunet verify`: tolerances, the real-volume parity of every CPU backend, Polygraphy's plugin reference."""

from __future__ import annotations

import numpy as np
import pytest

from mhunet_deploy.ops.selective_scan import contract
from mhunet_deploy.ops.selective_scan.numpy_scan import selective_scan_numpy
from mhunet_deploy.verify import (
    FP16_MIN_BRAIN_DICE,
    FP16_MIN_DICE,
    FP32_MAX_ABS_LOGIT,
    Row,
    judge,
    register_polygraphy_reference,
    verify,
)
from tests.cli_helpers import mhunet
from tests.tiny_model import ONE, PATIENT26, TWO, TinyExport


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_verify_and_bench_ask_for_a_volume(command: str) -> None:
    """No scan ships with the package, and none is made up: without --volume, one line and exit 2."""
    res = mhunet(command, "--slices", "2")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "error: no volume to run on; pass --volume FLAIR.nii.gz (a brain FLAIR scan)"


def test_fp32_tolerance_is_on_every_channel_of_the_logits() -> None:
    tol = FP32_MAX_ABS_LOGIT
    assert judge(Row("x", "fp32", max_abs={"lesion": tol, "brain": tol}, dice=0.0, brain_dice=0.0)).passed
    assert not judge(Row("x", "fp32", max_abs={"lesion": 2 * tol}, dice=1.0)).passed
    row = judge(Row("x", "fp32", max_abs={"lesion": 0.0, "brain": 2 * tol}, dice=1.0, brain_dice=1.0))
    assert not row.passed and row.failures == [f"max |Δlogit| brain {2 * tol:.2e} > {tol:.0e}"]


def test_fp16_tolerance_is_on_the_task() -> None:
    ok = {"max_abs": {"lesion": 1.0}, "lesions": 3, "ref_lesions": 3}
    assert judge(Row("x", "fp16", dice=FP16_MIN_DICE, **ok)).passed
    assert not judge(Row("x", "fp16", dice=0.98, **ok)).passed
    assert not judge(Row("x", "fp16", max_abs={"lesion": 0.0}, dice=1.0, lesions=2, ref_lesions=3)).passed
    assert judge(Row("x", "fp16", dice=1.0, brain_dice=FP16_MIN_BRAIN_DICE, **ok)).passed
    row = judge(Row("x", "fp16", dice=1.0, brain_dice=0.98, **ok))
    assert not row.passed and row.failures == [f"brain Dice 0.9800 < {FP16_MIN_BRAIN_DICE}"]


@pytest.mark.skipif(not PATIENT26.is_file(), reason=f"{PATIENT26} not present")
@pytest.mark.parametrize("outputs", [ONE, TWO], ids=["lesion", "lesion+brain"])
def test_cpu_backends_match_torch_on_patient26(tiny_export: TinyExport, outputs: tuple[str, ...]) -> None:
    """The real-volume parity test: the torch backend's fused CPU scan, the plugin graph
    (ReferenceEvaluator), onnxruntime fp32 and fp16, against the torch scan, on every output channel,
    and the brain mask's Dice for a model with a brain output."""
    ckpt, export = tiny_export(outputs)
    rows = {(r.backend, r.precision): r for r in verify(ckpt, PATIENT26, slices=2, export_dir=export)}
    ran = [r for r in rows.values() if not r.note.startswith("skipped")]
    assert {(r.backend, r.precision) for r in ran} >= {
        ("torch-cpu (torch scan)", "fp32"),
        ("torch-cpu", "fp32"),
        ("onnx-reference (plugin graph)", "fp32"),
        ("onnxruntime-cpu", "fp32"),
        ("onnxruntime-cpu", "fp16"),
    }
    for r in ran:
        assert r.passed, (r.backend, r.precision, r.failures)
        assert list(r.max_abs) == list(r.median_abs) == list(outputs)
        assert (r.brain_dice is None) == (r.brain_ml is None) == (outputs == ONE)
        assert outputs == ONE or r.brain_ml > 10  # a brain mask to compare, so its Dice means something
        print(
            f"{r.backend} {r.precision}: slices {r.slices} max {r.max_abs} median {r.median_abs} "
            f"Dice {r.dice:.4f} brain Dice {r.brain_dice} ({r.brain_ml} mL) "
            f"lesions {r.lesions}/{r.ref_lesions} mL {r.volume_ml:.3f}/{r.ref_volume_ml:.3f}"
        )
    # Without TensorRT here, its row says why: the plugin library is checked first, then the library.
    note = rows[("tensorrt plugin", "fp16")].note
    assert note.startswith("skipped: ") and ("plugin library" in note or "not installed" in note), note


def test_polygraphy_pluginref_runs_selective_scan() -> None:
    import onnx
    from onnx import TensorProto, helper
    from polygraphy.backend.onnx import GsFromOnnx
    from polygraphy.backend.pluginref import PluginRefRunner

    register_polygraphy_reference()
    rng = np.random.default_rng(0)
    d, n, g, length = 8, 4, 2, 5
    feeds = {
        "u": rng.standard_normal((1, d, length), np.float32),
        "delta": rng.standard_normal((1, d, length), np.float32),
        "A": -rng.uniform(0.5, 1.5, (d, n)).astype(np.float32),
        "B": rng.standard_normal((1, g, n, length), np.float32),
        "C": rng.standard_normal((1, g, n, length), np.float32),
        "D": rng.standard_normal(d, np.float32),
        "delta_bias": rng.standard_normal(d, np.float32),
    }
    names = [p.name for p in contract.INPUTS]
    node = helper.make_node(contract.OP_TYPE, names, ["y"], domain=contract.DOMAIN, delta_softplus=1)
    graph = helper.make_graph(
        [node],
        "scan",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, feeds[k].shape) for k in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, d, length))],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, contract.DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets)
    with PluginRefRunner(GsFromOnnx(onnx.shape_inference.infer_shapes(model))) as runner:
        y = runner.infer(feeds)["y"]
    np.testing.assert_allclose(y, selective_scan_numpy(*(feeds[k] for k in names)), rtol=1e-6)
