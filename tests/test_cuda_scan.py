# ruff: noqa: E501, E741
"""Our CUDA selective scan (mhunet_deploy.ops.selective_scan.cuda) against the torch loop oracle; needs a CUDA GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU and the kernel library (mhunet build-kernels, or CMake)",
    ),
]


def _gpu(fn):
    for mark in gpu:
        fn = mark(fn)
    return fn


def _inputs(b, d, l, g, n, dtype):
    u = torch.randn(b, d, l, device="cuda").to(dtype)
    delta = (torch.rand(b, d, l, device="cuda") * 2 - 1.5).to(dtype)
    A = -torch.exp(torch.rand(d, n, device="cuda") * 2 - 0.5)
    Bm = torch.randn(b, g, n, l, device="cuda").to(dtype)
    Cm = torch.randn(b, g, n, l, device="cuda").to(dtype)
    D = torch.randn(d, device="cuda")
    bias = torch.rand(d, device="cuda") * 0.5 - 1.0
    return u, delta, A, Bm, Cm, D, bias


@_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-4)])
@pytest.mark.parametrize("b,d,l,g", [(2, 64, 1, 4), (2, 64, 65, 1), (1, 128, 1000, 4), (2, 32, 4097, 4)])
def test_matches_loop_oracle(b, d, l, g, dtype, tol):
    """Contract v2: y is float32 for fp16 inputs too, so fp16 inputs meet a tolerance (1e-4) that an
    fp16-rounded y (~3e-4) would not; the oracle runs on the same rounded inputs in fp64."""
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    args = _inputs(b, d, l, g, 16, dtype)
    y = torch.full(args[0].shape, float("nan"), device="cuda")
    selective_scan_cuda(*args, delta_softplus=True, out=y)
    ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=True)  # fp64 oracle
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    err = (
        torch.linalg.vector_norm(y.double() - ref.double()) / torch.linalg.vector_norm(ref.double())
    ).item()
    assert err <= tol, err


@_gpu
@pytest.mark.parametrize("n,length", [(1, 301), (7, 301), (16, 301), (7, 1000)])
def test_every_config_matches_the_oracle(n, length):
    """Every compiled configuration, the two-warp ones (the warps split the N states), the fp16 B/C
    rows (fp16 inputs only) and the double buffers (rows in the input dtype only) included, N odd or 1,
    D not a multiple of any block's channels, at an odd length (register staging, the double buffers'
    single-buffer twin) and at L = 1000 (a multiple of 8: cp.async staging, a partial last chunk)."""
    from mhunet_deploy.ops.selective_scan.cuda import CONFIG_FIELDS, load_library, selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    configs = load_library().configs()
    assert any(c[3] == 2 for c in configs) and any(c[4] == 2 for c in configs) and any(c[5] for c in configs)
    assert {(c[4], c[6]) for c in configs if c[6] == 2} == {(2, 2), (4, 2)}
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-4)):
        args = _inputs(2, 36, length, 2, n, dtype)
        ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=True)
        for c in configs:
            kwargs = dict(zip(CONFIG_FIELDS, c, strict=True))
            rows_fp16 = c[4] == 2
            if (rows_fp16 and dtype == torch.float32) or (
                c[6] == 2 and not rows_fp16 and dtype == torch.float16
            ):
                # fp16 B/C rows take fp16 inputs only; double-buffered fp32 rows fp32 inputs only
                with pytest.raises(RuntimeError, match="unsupported kernel config"):
                    selective_scan_cuda(*args, **kwargs)
                continue
            y = selective_scan_cuda(*args, **kwargs)
            err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
            assert y.dtype == torch.float32 and err <= tol, (c, dtype, err)


@_gpu
def test_double_buffers_with_misaligned_rows_run_their_twin():
    """bufs = 2 prefetches with 16-byte cp.async: u and B one element off that alignment (L = 1000 is a
    multiple of 8, so only the pointers are off) must still give the oracle's y (the single-buffer twin)."""
    from mhunet_deploy.ops.selective_scan.cuda import CONFIG_FIELDS, load_library, selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    configs = [c for c in load_library().configs() if c[6] == 2]
    assert configs
    for c in configs:
        dtype, tol = (torch.float16, 1e-4) if c[4] == 2 else (torch.float32, 1e-5)
        args = list(_inputs(2, 36, 1000, 2, 16, dtype))
        for i in (0, 3):
            flat = torch.empty(args[i].numel() + 1, dtype=dtype, device="cuda")
            args[i] = flat[1:].view(args[i].shape).copy_(args[i])
            assert args[i].data_ptr() % 16 and args[i].is_contiguous()
        ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=True)
        y = selective_scan_cuda(*args, **dict(zip(CONFIG_FIELDS, c, strict=True)))
        err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
        assert err <= tol, (c, err)


@_gpu
@pytest.mark.parametrize("l", [1, 63, 64, 65, 1000, 4097])
def test_sequential_configs_match_the_oracle(l):
    """The sequential family (seg > 0: L split into segments, carries combined between launches): one
    segment, exact multiples of seg and remainders; N = 16, 7, 1; G = 4, 1 with D = 72 (idle lanes in a
    group's last warp); softplus on and off (steps >= 0 without it); both dtypes."""
    from mhunet_deploy.ops.selective_scan.cuda import CONFIG_FIELDS, load_library, selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    configs = [c for c in load_library().configs() if c[5] > 0]
    assert configs
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-4)):
        for n, g, softplus in ((16, 4, True), (7, 1, True), (1, 4, False)):
            args = list(_inputs(2, 72, l, g, n, dtype))
            if not softplus:
                args[1] = torch.randn_like(args[1].float()).abs().to(dtype)
                args[6] = torch.rand(72, device="cuda") * 0.1
            ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=softplus)
            for c in configs:
                y = torch.full(args[0].shape, float("nan"), device="cuda")
                selective_scan_cuda(
                    *args, delta_softplus=softplus, out=y, **dict(zip(CONFIG_FIELDS, c, strict=True))
                )
                err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
                assert err <= tol, (c, dtype, n, g, softplus, err)


@_gpu
def test_out_must_be_float32():
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda

    args = _inputs(1, 8, 16, 1, 16, torch.float16)
    with pytest.raises(ValueError, match="float32"):
        selective_scan_cuda(*args, out=torch.empty(1, 8, 16, dtype=torch.float16, device="cuda"))


@_gpu
def test_softplus_over_its_whole_range():
    """The kernel's branch-free softplus (max(x, 0) + 2 atanh series of exp(-|x|)) and its threshold
    select, over x in [-30, 30]: underflowing exp, the series' widest point at 0 and x above 20, against
    the fp64 oracle's softplus."""
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    args = list(_inputs(2, 64, 1024, 4, 16, torch.float32))
    args[1] = torch.linspace(-30, 30, 2 * 64 * 1024, device="cuda").reshape(2, 64, 1024)
    args[6] = torch.zeros(64, device="cuda")
    y = selective_scan_cuda(*args, delta_softplus=True)
    ref = selective_scan_loop(*[a.double() for a in args], delta_softplus=True)
    err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
    assert err <= 1e-5, err


@_gpu
def test_inputs_converted_or_refused():
    """The wrapper hands raw pointers to the launcher, so what it converts (another dtype, a
    non-contiguous view) must stay alive until the launch and give the same y as the converted inputs
    passed directly; a wrong shape or a tensor on another device is refused with its name."""
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda

    u, delta, A, Bm, Cm, D, bias = _inputs(2, 64, 256, 4, 16, torch.float16)
    want = selective_scan_cuda(u, delta, A, Bm, Cm, D, bias)
    Bt = Bm.float().transpose(2, 3).contiguous().transpose(2, 3)  # fp32 and non-contiguous
    got = selective_scan_cuda(u, delta.float(), A.double(), Bt, Cm.float(), D.double(), bias.double())
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan_cuda(u, delta, A, Bm, Cm[:, :, :8], D, bias)
    with pytest.raises(ValueError, match="one CUDA device"):
        selective_scan_cuda(u, delta, A, Bm, Cm, D.cpu(), bias)


@_gpu
def test_rejects_grad_and_large_n():
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda

    args = list(_inputs(1, 8, 16, 1, 16, torch.float32))
    args[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        selective_scan_cuda(*args)
    args = _inputs(1, 8, 16, 1, 32, torch.float32)
    with pytest.raises(ValueError, match="N <= 16"):
        selective_scan_cuda(*args)


@_gpu
def test_softplus_off_with_nonnegative_steps():
    """delta_softplus=0 requires delta + delta_bias >= 0 (selective_scan.h); with such steps it matches."""
    from mhunet_deploy.ops.selective_scan.cuda import selective_scan_cuda
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_loop

    u, _, A, Bm, Cm, D, _ = _inputs(2, 64, 1000, 4, 16, torch.float32)
    delta = torch.randn_like(u).abs()
    bias = torch.rand(64, device="cuda") * 0.1
    y = selective_scan_cuda(u, delta, A, Bm, Cm, D, bias, delta_softplus=False)
    ref = selective_scan_loop(*[a.double() for a in (u, delta, A, Bm, Cm, D, bias)], delta_softplus=False)
    err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
    assert err <= 1e-5, err


@_gpu
def test_registered_impl_runs_the_model_scan_on_cuda():
    from mhunet_deploy.ops.selective_scan.cuda import register_cuda_scan
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan, use_scan_impl

    name = register_cuda_scan()
    args = _inputs(2, 64, 300, 4, 16, torch.float16)
    with torch.no_grad(), use_scan_impl(name):
        y = selective_scan(*args, True)
    ref = selective_scan(*[a.double() for a in args], True)  # CPU-free: chunked fp64 on CUDA
    err = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
    assert y.dtype == torch.float32 and err <= 1e-4, err


def test_cuda_impl_falls_back_to_chunked_without_a_gpu_kernel_call():
    """CPU tensors (and tensors that need grad) go to the chunked torch scan; nothing is compiled."""
    import mhunet_deploy.ops.selective_scan.cuda as cs
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan_chunked, use_scan_impl

    assert cs.register_cuda_scan(load=False) == "cuda"
    # On a GPU the tests before this one loaded the library: start from an empty cache, so the last
    # assertion sees only this test's calls (it failed on the H200 for that reason alone).
    cs.load_library.cache_clear()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 8, 20, generator=g)
    args = (
        u,
        torch.randn(1, 8, 20, generator=g),
        -torch.rand(8, 4, generator=g) - 0.5,
        torch.randn(1, 2, 4, 20, generator=g),
        torch.randn(1, 2, 4, 20, generator=g),
        torch.ones(8),
    )
    from mhunet_deploy.ops.selective_scan.torch_scan import selective_scan

    with use_scan_impl("cuda"):
        y = selective_scan(*args, None, True)
        u.requires_grad_(True)
        y_grad = selective_scan(*args, None, True)
    ref = selective_scan_chunked(*args, None, True)
    assert torch.allclose(y, ref) and torch.allclose(y_grad.detach(), ref)
    assert y_grad.requires_grad
    assert cs.load_library.cache_info().currsize == 0  # the kernel library was never needed


def test_torch_backend_on_cpu_does_not_touch_the_kernel_library():
    from mhunet_deploy.backends.torch_backend import TorchBackend
    from mhunet_deploy.errors import BackendError

    assert TorchBackend(device="cpu").scan_impl == "auto"
    assert TorchBackend(device="cpu", scan="reference").scan_impl == "chunked"
    with pytest.raises(BackendError, match="needs a CUDA device"):
        TorchBackend(device="cpu", scan="cuda")
    with pytest.raises(BackendError, match="unknown scan"):
        TorchBackend(device="cpu", scan="mamba")


def _fake_library(tmp_path, body: str):
    """A real shared library (gcc) that is not a current kernel build: what a stale or foreign file is."""
    src, lib = tmp_path / "fake.c", tmp_path / "libfake.so"
    src.write_text(body)
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found")
def test_a_library_built_from_other_sources_is_refused(tmp_path):
    from mhunet_deploy.ops.selective_scan.cuda import KernelLibraryError, ScanLibrary

    stale = _fake_library(
        tmp_path, 'const char* mhunet_selective_scan_source_sha256(void) { return "0123"; }'
    )
    with pytest.raises(KernelLibraryError, match="built from other kernel sources"):
        ScanLibrary(stale)
    (tmp_path / "old").mkdir()
    old = _fake_library(tmp_path / "old", "int mhunet_selective_scan_configs(int* o, int n) { return 0; }")
    with pytest.raises(KernelLibraryError, match="not a current mhunet kernel library"):
        ScanLibrary(old)


def test_explicit_library_path_must_exist(tmp_path, monkeypatch):
    from mhunet_deploy.ops.selective_scan.cuda import SCAN_LIBRARY_ENV, KernelLibraryError, find_library

    monkeypatch.setenv(SCAN_LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(KernelLibraryError, match="does not exist"):
        find_library()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found on PATH")
def test_build_kernels_writes_a_library_the_backend_accepts(tmp_path):
    """`mhunet build-kernels` (nvcc, no GPU needed to compile) writes a library with the sources' key."""
    from mhunet_deploy.ops.selective_scan.cuda import ScanLibrary, source_sha256

    out = tmp_path / "libmhunet_scan.so"
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "build-kernels", "--arch", "90", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr
    assert f"MHUNET_SCAN_LIB={out}" in res.stderr
    assert ScanLibrary(out).source_sha256 == source_sha256()
    bad = subprocess.run(cmd[:4] + ["--arch", "sm90"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --arch 'sm90'"), bad.stderr
