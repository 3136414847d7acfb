"""The fused CPU SS2D scan (numba): its math, against the torch scan path, threads, and when it runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mhunet_deploy.model.mamba_hunet import SS2D, fused_cpu_scan
from mhunet_deploy.ops.selective_scan import contract
from mhunet_deploy.ops.selective_scan import torch_scan as scan
from tests.tiny_model import PATIENT26

ss2d_cpu = pytest.importorskip("mhunet_deploy.model.ss2d_cpu", reason="numba not installed")


def test_exp32_within_an_ulp_and_zero_below_its_range() -> None:
    x = np.concatenate([np.linspace(-86.99, 0, 20001), np.linspace(0, 80, 2001)]).astype(np.float32)
    got = np.array([ss2d_cpu.exp32(v) for v in x], np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 1.2e-7  # float32 ulp: 6e-8 .. 1.2e-7
    assert ss2d_cpu.exp32(np.float32(-87.0)) == 0.0 and ss2d_cpu.exp32(np.float32(-1e30)) == 0.0


def test_softplus32_matches_the_contract() -> None:
    x = np.linspace(-90, 40, 26001).astype(np.float32)
    got = np.array([ss2d_cpu.softplus32(v) for v in x], np.float64)
    x64 = x.astype(np.float64)
    want = np.where(x64 > contract.SOFTPLUS_THRESHOLD, x64, np.logaddexp(0.0, x64))
    tiny = want < 1e-37  # exp32 is 0 there
    assert np.max(np.abs(got - want)[~tiny] / want[~tiny]) < 3e-7
    assert np.all(got[tiny] <= 1e-37)
    above = x > contract.SOFTPLUS_THRESHOLD
    assert np.array_equal(got[above], x64[above])


def _ss2d(dim: int, seed: int) -> SS2D:
    """An SS2D whose decays, steps and skips are spread out like trained ones (init is too uniform)."""
    torch.manual_seed(seed)
    m = SS2D(dim).eval()
    with torch.no_grad():
        m.A_logs.uniform_(-1.0, 3.0)
        m.dt_projs_bias.uniform_(-6.0, 1.0)
        m.Ds.normal_()
    return m


@pytest.mark.parametrize(("shape", "dim"), [((2, 5, 7), 16), ((3, 8, 4), 8), ((1, 16, 16), 32)])
def test_fused_matches_the_torch_scan(shape: tuple[int, int, int], dim: int) -> None:
    """Non-square images catch a swapped row/column order; batch 1 and 3 split channels over threads."""
    m = _ss2d(dim, seed=sum(shape))
    x = torch.randn(*shape, dim)
    with torch.no_grad():
        assert fused_cpu_scan(x)
        fused = m(x)
        with scan.use_scan_impl("chunked"):
            assert not fused_cpu_scan(x)
            chunked = m(x)
        with scan.use_scan_impl("loop"):
            loop = m(x)
    assert not torch.equal(fused, chunked)  # another code path, not the same ops
    torch.testing.assert_close(fused, loop, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(fused, chunked, rtol=2e-5, atol=2e-5)


def test_same_result_on_any_thread_count() -> None:
    m = _ss2d(16, seed=1)
    x = torch.randn(3, 6, 6, 16)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(m(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(("batch", "channels", "threads"), [(8, 64, 2), (1, 64, 2), (3, 32, 2), (2, 8, 16)])
def test_work_items_cover_every_output_once(batch: int, channels: int, threads: int) -> None:
    parts = ss2d_cpu.work_items(batch, channels, threads)
    assert 1 <= len(parts) <= threads
    seen = np.zeros((batch, channels), int)
    for part in parts:
        for b, j0, j1 in part:
            seen[b, j0:j1] += 1
    assert np.all(seen == 1)
    if batch * channels >= threads:
        assert len(parts) == threads and len({len(p) for p in parts}) == 1  # balanced


def test_torch_scan_where_the_kernel_does_not_apply() -> None:
    m = _ss2d(8, seed=2)
    x = torch.randn(1, 4, 4, 8, requires_grad=True)
    assert not fused_cpu_scan(x)  # autograd: training keeps the differentiable torch scan
    m(x).sum().backward()
    assert x.grad is not None
    assert not fused_cpu_scan(torch.randn(1, 4, 4, 8, dtype=torch.float64))
    with torch.no_grad():
        assert fused_cpu_scan(x)


@pytest.mark.skipif(not PATIENT26.is_file(), reason=f"{PATIENT26} not present")
def test_packaged_weights_within_verify_tolerance_on_patient26() -> None:
    """The packaged model on two real slices: within `mhunet verify`'s FP32 tolerance of the torch scan."""
    from mhunet_deploy.checkpoint import load_checkpoint
    from mhunet_deploy.io.nifti import load_volume
    from mhunet_deploy.preprocess import prepare
    from mhunet_deploy.verify import FP32_MAX_ABS_LOGIT, central_slices

    model, _ = load_checkpoint()
    slices = prepare(load_volume(PATIENT26))[0]
    x = torch.from_numpy(slices[central_slices(slices, 2)].copy())
    with torch.inference_mode():
        fused = model(x)
        with scan.use_scan_impl("chunked"):
            reference = model(x)
    assert float((fused - reference).abs().max()) <= FP32_MAX_ABS_LOGIT
