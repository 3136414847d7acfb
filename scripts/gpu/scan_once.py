"""Launch our selective-scan kernel a few times at one stage shape, for a profiler to look at:

    ncu --set full -k regex:selective_scan --launch-skip 2 --launch-count 1 \
        python3 scripts/gpu/scan_once.py --batch 8 --dim 256 --len 4096 --dtype float16 [--config 8,1,2,1,4]

Needs MHUNET_SCAN_LIB (or a library `mhunet build-kernels` wrote). Inputs as in verify_kernel.py: G = 4
groups, N = 16, steps from softplus of (-1.5, 0.5) plus a bias.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mhunet_deploy.ops.selective_scan.cuda import CONFIG_FIELDS, selective_scan_cuda  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--len", type=int, default=4096)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--config", default="", help=f"comma-separated {','.join(CONFIG_FIELDS)} (default: ours)")
    ap.add_argument("--launches", type=int, default=4)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    b, d, n, g, steps = args.batch, args.dim, 16, args.groups, args.len
    gen = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(b, d, steps, device="cuda", generator=gen).to(dtype)
    delta = (torch.rand(b, d, steps, device="cuda", generator=gen) * 2 - 1.5).to(dtype)
    A = -torch.exp(torch.rand(d, n, device="cuda", generator=gen) * 2.5 - 0.5)
    Bm = torch.randn(b, g, n, steps, device="cuda", generator=gen).to(dtype)
    Cm = torch.randn(b, g, n, steps, device="cuda", generator=gen).to(dtype)
    D = torch.randn(d, device="cuda", generator=gen)
    bias = torch.rand(d, device="cuda", generator=gen) * 0.5 - 1.0
    config = (
        dict(zip(CONFIG_FIELDS, (int(x) for x in args.config.split(",")), strict=True)) if args.config else {}
    )
    with torch.no_grad():
        for _ in range(args.launches):
            y = selective_scan_cuda(u, delta, A, Bm, Cm, D, bias, True, **config)
    torch.cuda.synchronize()
    print(f"y {tuple(y.shape)} {y.dtype}, finite: {bool(torch.isfinite(y).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
