# ruff: noqa: E501, E741  (GPU script: long report lines, short shape names l/d/b)
"""Time the kernel library's default configuration at every scan shape of one model forward, so that two
builds (say, before and after a kernel change) can be compared side by side in one device call:

    MHUNET_SCAN_LIB=build/a/libmhunet_scan.so python3 scripts/gpu/time_defaults.py --tag a --out $OUT

Shapes, inputs (rotated beyond L2), the timing loop and the calls per forward are verify_kernel.py's
(STAGES, input_sets, bench, CALLS_PER_FORWARD). Writes times_<tag>.json: per shape the
median µs and the configuration the launcher chose; per (config, batch, dtype) the one-forward sum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from verify_kernel import CALLS_PER_FORWARD, STAGES, bench, input_sets  # noqa: E402  (this script's folder)

from mhunet_deploy.ops.selective_scan.cuda import load_library, selective_scan_cuda  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    lib = load_library()
    gen = torch.Generator(device="cuda").manual_seed(0)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    shapes, forward = {}, {}
    with torch.no_grad():
        for cfg, stages in STAGES.items():
            for b in (8, 32):
                for dtype in (torch.float16, torch.float32):
                    total = 0.0
                    for (d, l), calls in zip(stages, CALLS_PER_FORWARD, strict=True):
                        _, sets = input_sets(b, d, l, dtype, l2, gen)
                        med, _, _ = bench(lambda *a: selective_scan_cuda(*a, True), sets, args.reps)
                        name = f"{cfg} B={b} D={d} L={l} {str(dtype).split('.')[-1]}"
                        shapes[name] = {
                            "us": med,
                            "config": lib.default_config(b, d, l, 4, dtype == torch.float16),
                        }
                        total += calls * med
                        print(f"{args.tag} {name}: {med:.1f} us {shapes[name]['config']}", flush=True)
                        del sets
                    forward[f"{cfg} B={b} {str(dtype).split('.')[-1]}"] = total
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"times_{args.tag}.json").write_text(
        json.dumps({"shapes": shapes, "forward": forward}, indent=1)
    )
    for k, v in forward.items():
        print(f"{args.tag} forward {k}: {v:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
