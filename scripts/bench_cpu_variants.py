"""CPU forward passes of the packaged model in several variants, interleaved, as ratios to the first.

    python scripts/bench_cpu_variants.py [--rounds 5] [--slices 16] VARIANT [VARIANT ...]

A VARIANT is ``name:key=value,...`` with keys ``impl`` (scan implementation: auto, chunked; default
auto), ``batch`` (default 8), ``threads`` (torch threads, default torch's), ``omp`` (OMP_WAIT_POLICY:
active or passive; default: the package's choice) and ``code`` (a checkout whose ``mhunet_deploy`` is
imported instead of this one, e.g. ``git worktree add /tmp/base <commit>``). Each variant runs in a
fresh process per round (OpenMP reads its environment once per process), the variants alternate round
by round, so a shared machine's load hits all alike; each process times ``--passes`` forward passes of
the central ``--slices`` slices of the volume in batches after one warm-up pass and reports its
median. Printed: per variant, the median over rounds of its seconds per slice and of its per-round
ratio to the first variant (first / variant: above 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATIENT26 = ROOT.parent / "shared/data/open_ms/patient26/FLAIR.nii.gz"
KEYS = ("impl", "batch", "threads", "omp", "code")


def worker(args: argparse.Namespace) -> None:
    """One process: forward passes in batches, seconds per slice (median of --passes) as JSON."""
    import time
    from importlib import import_module

    import_module("mhunet_deploy")  # before torch: the package sets OMP_WAIT_POLICY
    import torch

    from mhunet_deploy.backends.torch_backend import keep_freed_memory
    from mhunet_deploy.checkpoint import load_checkpoint
    from mhunet_deploy.io.nifti import load_volume
    from mhunet_deploy.ops.selective_scan import torch_scan as scan
    from mhunet_deploy.preprocess import prepare
    from mhunet_deploy.verify import central_slices

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    model, _ = load_checkpoint()
    model.eval()
    slices = prepare(load_volume(args.volume))[0]
    x = torch.from_numpy(slices[central_slices(slices, args.slices)].copy())
    times = []
    with torch.inference_mode(), scan.use_scan_impl(args.impl):
        for p in range(args.passes + 1):
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch):
                model(x[i : i + args.batch])
            if p:  # pass 0 warms up (numba's cache, oneDNN primitives, the kept heap)
                times.append((time.perf_counter() - t0) / len(x))
    print(json.dumps({"s_per_slice": statistics.median(times), "threads": torch.get_num_threads()}))


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    opts = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    unknown = set(opts) - set(KEYS)
    if unknown:
        keys = ", ".join(KEYS)
        raise SystemExit(f"error: unknown key(s) {sorted(unknown)} in variant {text!r}; use {keys}")
    return name, opts


def run_variant(opts: dict[str, str], args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if "omp" in opts:
        env["OMP_WAIT_POLICY"] = opts["omp"].upper()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--volume", str(args.volume)]
    cmd += ["--slices", str(args.slices), "--passes", str(args.passes)]
    cmd += ["--impl", opts.get("impl", "auto"), "--batch", opts.get("batch", "8")]
    if "threads" in opts:
        cmd += ["--threads", opts["threads"]]
    cwd = ROOT
    if "code" in opts:  # run from elsewhere so that the current folder does not shadow PYTHONPATH
        env["PYTHONPATH"], cwd = str(Path(opts["code"]).resolve()), Path("/")
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--volume", type=Path, default=PATIENT26)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    variants = [parse_variant(v) for v in args.variants]
    if not variants:
        raise SystemExit("error: no variant given; e.g. before:impl=chunked after:impl=auto")
    seconds: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        for name, opts in variants:
            seconds[name].append(run_variant(opts, args)["s_per_slice"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {s[-1]:.3f}" for n, s in seconds.items()), flush=True)
    first = seconds[variants[0][0]]
    rounds = f"{args.rounds} rounds, {os.cpu_count()} CPUs"
    print(f"\n{args.slices} central slices of {args.volume.name}, {rounds}")
    print("\n| variant | settings | s / slice (median) | ratio to first (median) |")
    print("| --- | --- | ---: | ---: |")
    for name, opts in variants:
        ratio = statistics.median(f / s for f, s in zip(first, seconds[name], strict=True))
        settings = ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
        print(f"| {name} | {settings} | {statistics.median(seconds[name]):.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
