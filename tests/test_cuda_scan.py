# ruff: noqa: E501, E741
"""Our CUDA selective scan (mhunet_deploy.cuda_scan) against the torch loop oracle; needs a CUDA GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the kernel is JIT-built with nvcc)"),
]


def _inputs(b, d, l, g, n, dtype):
    u = torch.randn(b, d, l, device="cuda").to(dtype)
    delta = (torch.rand(b, d, l, device="cuda") * 2 - 1.5).to(dtype)
    A = -torch.exp(torch.rand(d, n, device="cuda") * 2 - 0.5)
    Bm = torch.randn(b, g, n, l, device="cuda").to(dtype)
    Cm = torch.randn(b, g, n, l, device="cuda").to(dtype)
    D = torch.randn(d, device="cuda")
    bias = torch.rand(d, device="cuda") * 0.5 - 1.0
    return u, delta, A, Bm, Cm, D, bias


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("b,d,l,g", [(2, 64, 1, 4), (2, 64, 65, 1), (1, 128, 1000, 4), (2, 32, 4097, 4)])
def test_matches_loop_oracle(b, d, l, g, dtype, tol):
    from mhunet_deploy.model.scan import selective_scan_loop

    from mhunet_deploy.cuda_scan import selective_scan_cuda

    args = _inputs(b, d, l, g, 16, dtype)
    y = torch.full_like(args[0], float("nan"))
    selective_scan_cuda(*args, delta_softplus=True, out=y)
    ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=True)  # fp64 oracle
    assert y.dtype == dtype and torch.isfinite(y).all()
    err = (torch.linalg.vector_norm(y.double() - ref.double()) / torch.linalg.vector_norm(ref.double())).item()
    assert err <= tol, err


def test_rejects_grad_and_large_n():
    from mhunet_deploy.cuda_scan import selective_scan_cuda

    args = list(_inputs(1, 8, 16, 1, 16, torch.float32))
    args[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        selective_scan_cuda(*args)
    args = _inputs(1, 8, 16, 1, 32, torch.float32)
    with pytest.raises(ValueError, match="N <= 16"):
        selective_scan_cuda(*args)
