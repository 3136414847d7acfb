"""Random selective-scan inputs laid out as the contract says, and the error measure the scan tests use."""

from __future__ import annotations

import torch


def scan_inputs(
    bsz: int, d: int, g: int, n: int, length: int, dtype: torch.dtype, seed: int = 0, delta_scale: float = 1.0
) -> tuple[torch.Tensor, ...]:
    """Random scan inputs; A and D stay fp32 (fp64 for fp64 runs), as in the contract."""
    gen = torch.Generator().manual_seed(seed)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u = r(bsz, d, length).to(dtype)
    delta = (r(bsz, d, length) * delta_scale).to(dtype)
    A = (-torch.exp(r(d, n))).to(wdt)
    B, C = r(bsz, g, n, length).to(dtype), r(bsz, g, n, length).to(dtype)
    return u, delta, A, B, C, r(d).to(wdt), r(d).to(wdt)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
