"""The chunked scan's CPU inference path: one chunk run block by block, against the loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mhunet_deploy.ops.selective_scan import torch_scan as scan
from tests.scan_helpers import rel_error, scan_inputs


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 3 steps at (Bt, D, N) = (2, 8, 4): many blocks, the last one short."""
    monkeypatch.setattr(scan, "SEQUENTIAL_BLOCK", 3 * 2 * 8 * 4)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("length", [1, 2, 7, 65])
@pytest.mark.parametrize("g", [1, 4])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_blocks_match_loop(length: int, g: int, dtype: torch.dtype, tol: float) -> None:
    xs = scan_inputs(2, 8, g, 4, length, dtype, seed=20 + length + g)
    copies = [x.clone() for x in xs]
    with torch.inference_mode():
        y = scan.selective_scan_chunked(*xs, True)
    assert y.dtype == dtype and y.shape == xs[0].shape
    assert rel_error(y, scan.selective_scan_loop(*xs, True)) < tol
    assert all(torch.equal(x, c) for x, c in zip(xs, copies, strict=True))  # inputs untouched


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("softplus", [True, False])
def test_blocks_without_bias(softplus: bool) -> None:
    u, delta, A, B, C, D, _ = scan_inputs(2, 8, 4, 4, 40, torch.float64, seed=30)
    delta = delta if softplus else delta.abs()
    with torch.inference_mode():
        y = scan.selective_scan_chunked(u, delta, A, B, C, D, None, softplus)
    assert rel_error(y, scan.selective_scan_loop(u, delta, A, B, C, D, None, softplus)) < 1e-10


@pytest.mark.usefixtures("small_blocks")
def test_blocks_fp16_in_fp32_out() -> None:
    xs = scan_inputs(2, 8, 4, 4, 33, torch.float16, seed=31)
    with torch.inference_mode():
        y = scan.selective_scan_chunked(*xs, True)
    assert y.dtype == torch.float32  # contract v2: y is fp32, not rounded to the data's fp16
    assert rel_error(y, scan.selective_scan_loop(*xs, True)) < 1e-5


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize(
    ("softplus", "lo", "hi"),
    [(False, 1e-8, 1e4), (True, -1e4, -30.0), (True, -50.0, 1e4)],
    ids=["raw-1e-8..1e4", "softplus-very-negative", "softplus-wide"],
)
def test_blocks_extreme_deltas(softplus: bool, lo: float, hi: float) -> None:
    u, _, A, B, C, D, _ = scan_inputs(2, 8, 4, 4, 70, torch.float32, seed=32)
    gen = torch.Generator().manual_seed(33)
    if lo > 0:
        delta = torch.exp(torch.empty(u.shape).uniform_(np.log(lo), np.log(hi), generator=gen))
    else:
        delta = torch.empty(u.shape).uniform_(lo, hi, generator=gen)
    A = A * torch.logspace(-3, 4, A.shape[1])
    with torch.inference_mode():
        y = scan.selective_scan_chunked(u, delta, A, B, C, D, None, softplus)
    assert torch.isfinite(y).all()
    assert rel_error(y, scan.selective_scan_loop(u, delta, A, B, C, D, None, softplus)) < 1e-5


def test_one_chunk_matches_parallel_chunks() -> None:
    """The CPU inference default (one chunk, in blocks) and parallel chunks agree to rounding."""
    xs = scan_inputs(3, 16, 4, 8, 300, torch.float64, seed=34)
    with torch.inference_mode():
        one = scan.selective_scan_chunked(*xs, True)
        parallel = scan.selective_scan_chunked(*xs, True, chunk=32)
    assert rel_error(one, parallel) < 1e-12


def test_intra_op_threads_restored() -> None:
    before = torch.get_num_threads()
    with torch.inference_mode():
        scan.selective_scan_chunked(*scan_inputs(1, 8, 4, 4, 9, torch.float32), True)
    assert torch.get_num_threads() == before
