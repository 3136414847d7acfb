# ruff: noqa: E501  (GPU script: long report lines)
"""Where the host time of one eager ``selective_scan_cuda`` call goes, on a GPU machine:

    MHUNET_SCAN_LIB=build/libmhunet_scan.so python3 scripts/gpu/host_overhead.py --out $OUT [--mamba WAIT_S]

At a tiny shape (B=1, D=64, L=64: a kernel of a few µs) a loop of calls is bound by the host, so the wall
time per call is the host's work per call. Timed, each as the median over rounds of 200 calls (a
synchronize between rounds, outside the timing): the whole wrapper, with and without allocating y; the
model's path to it (torch_scan.selective_scan with the "cuda" implementation); ways to allocate y; the
raw ctypes call with plain ints (launcher and CUDA launch); the stream getter;
one small torch op (a launch through torch's own C++ path, for scale); mamba-ssm's forward with
``--mamba`` (verify_kernel.get_mamba). Then a cProfile of 2000 wrapper calls. Writes host_overhead.json
and prints the table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from verify_kernel import get_mamba  # noqa: E402  (this script's folder)

from mhunet_deploy.ops.selective_scan import cuda as sc  # noqa: E402
from mhunet_deploy.ops.selective_scan import torch_scan  # noqa: E402


def per_call_us(fn, rounds: int = 15, calls: int = 200) -> float:
    """Median over rounds of the host wall time per call (µs); the GPU drains between rounds."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        ts.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    ts.sort()
    return ts[len(ts) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mamba", type=float, default=None, metavar="WAIT_S")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lib = sc.load_library()
    torch.manual_seed(0)
    b, d, length, n, g = 1, 64, 64, 16, 1
    dev, h = "cuda", torch.float16
    u = torch.randn(b, d, length, device=dev, dtype=h)
    delta = torch.randn(b, d, length, device=dev, dtype=h) * 0.5 - 2
    A = -torch.rand(d, n, device=dev) - 0.5
    B = torch.randn(b, g, n, length, device=dev, dtype=h)
    C = torch.randn(b, g, n, length, device=dev, dtype=h)
    D = torch.randn(d, device=dev)
    bias = torch.randn(d, device=dev) * 0.1
    y = torch.empty(b, d, length, device=dev)
    ptrs = [t.data_ptr() for t in (u, delta, A, B, C, D, bias, y)]
    stream = sc._current_raw_stream(0)
    raw_args = (*ptrs, b, d, length, n, g, 1, 1, *sc.DEFAULT_CONFIG, stream)
    z = torch.empty_like(u)
    rows: dict[str, float] = {}
    with torch.no_grad(), torch_scan.use_scan_impl(sc.register_cuda_scan()):  # as TorchBackend's forward
        rows["selective_scan_cuda (whole wrapper, allocates y)"] = per_call_us(
            lambda: sc.selective_scan_cuda(u, delta, A, B, C, D, bias, True)
        )
        rows["selective_scan_cuda(out=y)"] = per_call_us(
            lambda: sc.selective_scan_cuda(u, delta, A, B, C, D, bias, True, out=y)
        )
        rows["torch.empty(shape, dtype, device) (a y allocation)"] = per_call_us(
            lambda: torch.empty(u.shape, dtype=torch.float32, device=u.device)
        )
        rows["u.new_empty(shape, dtype) (a y allocation)"] = per_call_us(
            lambda: u.new_empty(u.shape, dtype=torch.float32)
        )
        rows["torch.empty_like(u, dtype, contiguous) (a y allocation)"] = per_call_us(
            lambda: torch.empty_like(u, dtype=torch.float32, memory_format=torch.contiguous_format)
        )
        rows["the model's call: torch_scan.selective_scan with the cuda implementation"] = per_call_us(
            lambda: torch_scan.selective_scan(u, delta, A, B, C, D, bias, True)
        )
        rows["raw ctypes call with ints (launcher + CUDA launch)"] = per_call_us(lambda: lib._fwd(*raw_args))
        rows["current raw stream getter"] = per_call_us(lambda: sc._current_raw_stream(0))
        rows["torch.cuda.current_device()"] = per_call_us(torch.cuda.current_device)
        rows["torch.add(out=) on the same tiny tensor (torch's launch path)"] = per_call_us(
            lambda: torch.add(u, 1, out=z)
        )
        if args.mamba is not None:
            mamba, msg = get_mamba(args.mamba)
            print("mamba-ssm:", msg)
            if mamba is not None:
                rows["mamba-ssm selective_scan_cuda.fwd"] = per_call_us(
                    lambda: mamba(u, delta, A, B, C, D, bias)
                )
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            sc.selective_scan_cuda(u, delta, A, B, C, D, bias, True)
        prof.disable()
        torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    for k, v in rows.items():
        print(f"{v:8.2f} us  {k}")
    print(s.getvalue())
    (args.out / "host_overhead.json").write_text(json.dumps(rows, indent=1))
    (args.out / "host_overhead_profile.txt").write_text(s.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
