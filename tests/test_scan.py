"""Selective scan: every implementation against the loop oracle, edge cases, autograd, ONNX export."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mhunet_deploy.ops.selective_scan import contract
from mhunet_deploy.ops.selective_scan import torch_scan as scan
from mhunet_deploy.ops.selective_scan.numpy_scan import reference_ops, selective_scan_numpy
from tests.scan_helpers import rel_error, scan_inputs

FAST = [scan.selective_scan_chunked, scan.selective_scan_logstep]


@pytest.mark.parametrize("fn", FAST, ids=lambda f: f.__name__)
@pytest.mark.parametrize("length", [1, 7, 63, 65, 257])
@pytest.mark.parametrize("g", [1, 4])
def test_fast_matches_loop_fp32(fn: scan.ScanFn, length: int, g: int) -> None:
    u, delta, A, B, C, D, bias = scan_inputs(2, 8, g, 4, length, torch.float32, seed=length + g)
    y = fn(u, delta, A, B, C, D, bias, True)
    assert y.dtype == torch.float32 and y.shape == u.shape
    assert rel_error(y, scan.selective_scan_loop(u, delta, A, B, C, D, bias, True)) < 1e-5


@pytest.mark.parametrize("fn", FAST, ids=lambda f: f.__name__)
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fast_matches_loop_fp64(fn: scan.ScanFn, softplus: bool, with_bias: bool) -> None:
    u, delta, A, B, C, D, bias = scan_inputs(2, 8, 4, 4, 65, torch.float64, seed=3)
    if not softplus:
        delta = delta.abs()  # without softplus the contract expects delta >= 0 already
    bias = bias.abs() if with_bias else None
    y = fn(u, delta, A, B, C, D, bias, softplus)
    assert y.dtype == torch.float64
    assert rel_error(y, scan.selective_scan_loop(u, delta, A, B, C, D, bias, softplus)) < 1e-10


@pytest.mark.parametrize(
    "fn", [*FAST, scan.selective_scan_loop, scan.selective_scan], ids=lambda f: f.__name__
)
def test_fp16_in_fp32_out(fn: scan.ScanFn) -> None:
    """Contract v2: fp16 data in, fp32 y out, never rounded to fp16 (the fp64 oracle on the same fp16
    values agrees to fp32 accuracy, which an fp16 y (~5e-4) could not)."""
    u, delta, A, B, C, D, bias = scan_inputs(1, 8, 4, 4, 33, torch.float16)
    y = fn(u, delta, A, B, C, D, bias, True)
    assert y.dtype == torch.float32
    wide = [x.double() for x in (u, delta, A, B, C, D, bias)]
    assert rel_error(y, scan.selective_scan_loop(*wide, True)) < 1e-5


def test_fp16_y_beyond_fp16_range_stays_finite() -> None:
    """y past fp16's 65504 (the trained weights reach ~3.5e5) from fp16 inputs: fp32 y, no inf."""
    u, delta, A, B, C, D, bias = scan_inputs(1, 8, 4, 4, 33, torch.float16)
    u, D = u.abs() + 1, D.abs() * 1e5  # y_t >= D u_t > 1e5
    for fn in (*FAST, scan.selective_scan_loop):
        y = fn(u, delta, A, B, C, D, bias, True)
        assert torch.isfinite(y).all() and y.abs().max() > 65504, fn.__name__
    y = selective_scan_numpy(*(x.numpy() for x in (u, delta, A, B, C, D, bias)), True)
    assert y.dtype == np.float32 and np.isfinite(y).all() and np.abs(y).max() > 65504


@pytest.mark.parametrize("fn", FAST, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("softplus", "lo", "hi"),
    [(False, 1e-8, 1e4), (True, -1e4, -30.0), (True, -50.0, 1e4)],
    ids=["raw-1e-8..1e4", "softplus-very-negative", "softplus-wide"],
)
def test_extreme_deltas(fn: scan.ScanFn, softplus: bool, lo: float, hi: float) -> None:
    u, _, A, B, C, D, _ = scan_inputs(2, 8, 4, 4, 70, torch.float32, seed=5)
    gen = torch.Generator().manual_seed(6)
    if lo > 0:  # log-uniform over the whole positive range
        delta = torch.exp(torch.empty(u.shape).uniform_(np.log(lo), np.log(hi), generator=gen))
    else:
        delta = torch.empty(u.shape).uniform_(lo, hi, generator=gen)
    A = A * torch.logspace(-3, 4, A.shape[1])  # from barely decaying to very negative
    y = fn(u, delta, A, B, C, D, None, softplus)
    assert torch.isfinite(y).all()
    assert rel_error(y, scan.selective_scan_loop(u, delta, A, B, C, D, None, softplus)) < 1e-5


def test_chunked_gradcheck() -> None:
    u, delta, A, B, C, D, bias = scan_inputs(1, 4, 2, 3, 11, torch.float64, seed=7)
    args = tuple(x.requires_grad_() for x in (u, delta, A, B, C, D, bias))

    def f(*xs: torch.Tensor) -> torch.Tensor:
        return scan.selective_scan_chunked(*xs, True, chunk=4)

    assert torch.autograd.gradcheck(f, args)


def test_chunked_chunk_sizes_agree() -> None:
    u, delta, A, B, C, D, bias = scan_inputs(1, 8, 4, 4, 100, torch.float64, seed=8)
    ref = scan.selective_scan_loop(u, delta, A, B, C, D, bias, True)
    for chunk in (1, 3, 16, 128):
        y = scan.selective_scan_chunked(u, delta, A, B, C, D, bias, True, chunk=chunk)
        assert rel_error(y, ref) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_numpy_matches_torch_loop(dtype: torch.dtype) -> None:
    u, delta, A, B, C, D, bias = scan_inputs(2, 8, 4, 4, 37, dtype, seed=9)
    ref = scan.selective_scan_loop(u, delta, A, B, C, D, bias, True)
    y = selective_scan_numpy(*(x.numpy() for x in (u, delta, A, B, C, D, bias)), True)
    assert y.dtype == (np.float64 if dtype == torch.float64 else np.float32)  # fp32 for fp16 data
    assert rel_error(torch.from_numpy(y), ref) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_onnx_reference_op() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    names = [p.name for p in contract.INPUTS]
    node = helper.make_node(contract.OP_TYPE, names, ["y"], domain=contract.DOMAIN, delta_softplus=1)
    dims = {"B": 2, "D": 8, "L": 19, "N": 4, "G": 4}
    ins = [
        helper.make_tensor_value_info(p.name, TensorProto.FLOAT, [dims[s] for s in p.shape])
        for p in contract.INPUTS
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 19])
    model = helper.make_model(
        helper.make_graph([node], "scan", ins, [out]),
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(contract.DOMAIN, contract.DOMAIN_VERSION),
        ],
    )
    xs = scan_inputs(2, 8, 4, 4, 19, torch.float32, seed=10)
    (y,) = ReferenceEvaluator(model, new_ops=reference_ops()).run(
        None, {k: v.numpy() for k, v in zip(names, xs, strict=True)}
    )
    assert rel_error(torch.from_numpy(y), scan.selective_scan_loop(*xs, True)) < 1e-5


class _Wrap(torch.nn.Module):
    """The scan with its fp32 weights as parameters, as the model exports it."""

    def __init__(self, A: torch.Tensor, D: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.A, self.D, self.bias = (torch.nn.Parameter(x) for x in (A, D, bias))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return scan.selective_scan(u, delta, self.A, B, C, self.D, self.bias, True)


def test_logstep_onnx_export() -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    u, delta, A, B, C, D, bias = scan_inputs(2, 8, 4, 4, 70, torch.float32, seed=11)
    names = ["u", "delta", "B", "C"]
    f = io.BytesIO()
    with scan.use_scan_impl("logstep"), torch.no_grad():
        torch.onnx.export(
            _Wrap(A, D, bias),
            (u, delta, B, C),
            f,
            opset_version=17,
            dynamo=False,
            input_names=names,
            output_names=["y"],
            dynamic_axes={k: {0: "batch"} for k in [*names, "y"]},
        )
    model = onnx.load_from_string(f.getvalue())
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "If"}, ops
    xs = scan_inputs(3, 8, 4, 4, 70, torch.float32, seed=12)  # another batch size
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(
        None, {"u": xs[0].numpy(), "delta": xs[1].numpy(), "B": xs[3].numpy(), "C": xs[4].numpy()}
    )
    ref = scan.selective_scan_loop(xs[0], xs[1], A, xs[3], xs[4], D, bias, True)
    assert rel_error(torch.from_numpy(y), ref) < 1e-5


def test_dispatch_and_registry() -> None:
    u, delta, A, B, C, D, bias = scan_inputs(1, 8, 4, 4, 9, torch.float64)
    ref = scan.selective_scan_loop(u, delta, A, B, C, D, bias, True)
    assert rel_error(scan.selective_scan(u, delta, A, B, C, D, bias, True), ref) < 1e-10
    calls = []

    def plugin(*args: object) -> torch.Tensor:
        calls.append(len(args))
        return scan.selective_scan_loop(*args)

    scan.register_scan_impl("test-plugin", plugin)
    with scan.use_scan_impl("test-plugin"):
        scan.selective_scan(u, delta, A, B, C, D, bias, True)
    assert calls == [8]
    with pytest.raises(ValueError):
        scan.register_scan_impl("auto", plugin)
    with pytest.raises(ValueError), scan.use_scan_impl("nope"):
        pass


def test_scan_numpy_imports_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from mhunet_deploy.ops.selective_scan.numpy_scan import selective_scan_numpy
        y = selective_scan_numpy(np.ones((1, 4, 3), np.float32), np.zeros((1, 4, 3), np.float32),
                                 -np.ones((4, 2), np.float32), np.ones((1, 2, 2, 3), np.float32),
                                 np.ones((1, 2, 2, 3), np.float32), np.ones(4, np.float32), None)
        assert y.shape == (1, 4, 3)
        assert "torch" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_chunked_inference_split_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place (no autograd) path, with the batch split in halves, matches the oracle."""
    u, delta, A, B, C, D, bias = scan_inputs(5, 8, 4, 4, 70, torch.float32, seed=13)
    ref = scan.selective_scan_loop(u, delta, A, B, C, D, bias, True)
    monkeypatch.setattr(scan, "CHUNKED_BLOCK", 8 * 70 * 4)
    with torch.inference_mode():
        y = scan.selective_scan_chunked(u, delta, A, B, C, D, bias, True, chunk=16)
    assert rel_error(y, ref) < 1e-5


def test_the_one_signature_is_the_contracts() -> None:
    """ScanFn, the op's signature written once, names the contract's inputs in order, then its
    attribute with its default; scan_args completes a call the way every implementation reads it."""
    import inspect

    from mhunet_deploy.ops.selective_scan import ScanFn, scan_args

    params = list(inspect.signature(ScanFn.__call__).parameters.values())[1:]
    assert [p.name for p in params] == [p.name for p in contract.INPUTS] + list(contract.ATTRIBUTES)
    assert params[-1].default == bool(contract.ATTRIBUTES["delta_softplus"])
    assert scan_args(1, 2, 3, 4, 5, 6) == (1, 2, 3, 4, 5, 6, None, True)
    assert scan_args(1, 2, 3, 4, 5, 6, delta_softplus=False, delta_bias=7) == (1, 2, 3, 4, 5, 6, 7, False)
    with pytest.raises(TypeError):
        scan_args(1, 2, 3)
