# ruff: noqa: E501, E741  (GPU script: long report lines, short shape names l/d/b)
"""Time the kernel library's default configuration at every scan shape of one model forward, so that two
builds (say, before and after a kernel change) can be compared side by side in one device call:

    MHUNET_SCAN_LIB=build/a/libmhunet_scan.so python3 scripts/gpu/time_defaults.py --tag a --out $OUT

Shapes, inputs (rotated beyond L2), the timing loop and the calls per forward are verify_kernel.py's
(STAGES, input_sets, bench, CALLS_PER_FORWARD). Writes times_<tag>.json: per shape the
median µs and the configuration the launcher chose; per (config, batch, dtype) the one-forward sum.
``--config a,b,...`` (repeatable; CONFIG_FIELDS order) also times that configuration at every shape that
takes it (verify_kernel's cfg_takes / cfg_worth_timing) on the same input sets; ``--mamba`` times
mamba-ssm's forward there too (verify_kernel.get_mamba: a build made beside the repository, never by
project code), with its one-forward sums. ``--graph``: every time from verify_kernel.bench_graph (launches
replayed from a CUDA graph: the kernels' own time, no per-call host work) instead of bench (one eager call
between two events, the wrapper's host work included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from verify_kernel import (  # noqa: E402  (this script's folder)
    CALLS_PER_FORWARD,
    STAGES,
    bench,
    bench_graph,
    cfg_kwargs,
    cfg_name,
    cfg_takes,
    cfg_worth_timing,
    get_mamba,
    input_sets,
)

from mhunet_deploy.ops.selective_scan.cuda import load_library, selective_scan_cuda  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--config", action="append", default=[], help="also time this configuration")
    ap.add_argument("--mamba", type=float, default=None, metavar="WAIT_S", help="also time mamba-ssm")
    ap.add_argument("--graph", action="store_true", help="time launches replayed from a CUDA graph")
    args = ap.parse_args()
    timer = bench_graph if args.graph else bench
    lib = load_library()
    extra = [tuple(int(x) for x in c.split(",")) for c in args.config]
    mamba = None
    if args.mamba is not None:
        mamba, msg = get_mamba(args.mamba)
        print(f"{args.tag} mamba-ssm: {msg}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    shapes, forward = {}, {}
    with torch.no_grad():
        for cfg, stages in STAGES.items():
            for b in (8, 32):
                for dtype in (torch.float16, torch.float32):
                    fwd = f"{cfg} B={b} {str(dtype).split('.')[-1]}"
                    total = {"default": 0.0, **({"mamba": 0.0} if mamba else {})}
                    for (d, l), calls in zip(stages, CALLS_PER_FORWARD, strict=True):
                        _, sets = input_sets(b, d, l, dtype, l2, gen)
                        med, _, _ = timer(lambda *a: selective_scan_cuda(*a, True), sets, args.reps)
                        name = f"{cfg} B={b} D={d} L={l} {str(dtype).split('.')[-1]}"
                        row = {"us": med, "config": lib.default_config(b, d, l, 4, dtype == torch.float16)}
                        total["default"] += calls * med
                        for c in extra:
                            if cfg_takes(c, dtype) and cfg_worth_timing(c, l):
                                row[cfg_name(c)], _, _ = timer(
                                    lambda *a, c=c: selective_scan_cuda(*a, True, **cfg_kwargs(c)),
                                    sets,
                                    args.reps,
                                )
                        if mamba:
                            row["mamba_us"], _, _ = timer(lambda *a: mamba(*a), sets, args.reps)
                            total["mamba"] += calls * row["mamba_us"]
                        shapes[name] = row
                        others = " ".join(f"{k} {v:.1f}" for k, v in row.items() if k not in ("us", "config"))
                        print(f"{args.tag} {name}: {med:.1f} us {row['config']} {others}", flush=True)
                        del sets
                    forward[fwd] = total
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"times_{args.tag}.json").write_text(
        json.dumps({"shapes": shapes, "forward": forward}, indent=1)
    )
    for k, v in forward.items():
        ratio = f" mamba {v['mamba']:.0f} us, x mamba {v['mamba'] / v['default']:.2f}" if "mamba" in v else ""
        print(f"{args.tag} forward {k}: {v['default']:.0f} us{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
