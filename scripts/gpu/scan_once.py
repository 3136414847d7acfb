"""Launch our selective-scan kernel a few times at one stage shape, for a profiler to look at:

    ncu --set full -k regex:selective_scan --launch-skip 2 --launch-count 1 \
        python3 scripts/gpu/scan_once.py --batch 8 --dim 256 --len 4096 [--config 8,1,2,1,2,0,2]

Needs MHUNET_SCAN_LIB (or a library `mhunet build-kernels` wrote). Inputs from verify_kernel.py's
make_inputs: G = 4 groups by default, N = 16. ``--mamba``: mamba-ssm's forward on the same inputs instead
(verify_kernel.get_mamba: a build made beside the repository, MAMBA_SITE / MAMBA_DONE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from verify_kernel import get_mamba, make_inputs  # noqa: E402  (this script's folder is on sys.path)

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
    ap.add_argument("--mamba", action="store_true", help="launch mamba-ssm's forward instead of ours")
    args = ap.parse_args()
    fwd = lambda *a, **k: selective_scan_cuda(*a, **k)  # noqa: E731
    if args.mamba:
        fwd, msg = get_mamba(wait_s=300)
        print(msg)
        if fwd is None:
            return 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    u, delta, A, Bm, Cm, D, bias = make_inputs(
        args.batch, args.dim, args.len, args.groups, getattr(torch, args.dtype), gen=gen
    )
    config = (
        dict(zip(CONFIG_FIELDS, (int(x) for x in args.config.split(",")), strict=True)) if args.config else {}
    )
    with torch.no_grad():
        for _ in range(args.launches):
            y = fwd(u, delta, A, Bm, Cm, D, bias, True, **config)
    torch.cuda.synchronize()
    print(f"y {tuple(y.shape)} {y.dtype}, finite: {bool(torch.isfinite(y).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
