"""Selective scan on CPU at the `light` model's four stage shapes: torch chunked and ONNX portable.

    python scripts/bench_scan_cpu.py [--batch 8] [--repeats 5] [--threads 2] [--baseline OLD.py] [--onnx]

Times ``selective_scan_chunked`` (torch, inference mode) per shape, median of --repeats runs; with
--onnx also the traced ``selective_scan_logstep`` graph on onnxruntime CPU and its node count (not
constant-folded: more nodes than the exported model has per scan). Both use --threads threads.
--baseline names another copy of ``mhunet_deploy/ops/selective_scan/torch_scan.py`` (e.g.
from ``git show HEAD~1:mhunet_deploy/ops/selective_scan/torch_scan.py > /tmp/old_scan.py``) whose
functions are timed in the same run, interleaved, so a shared machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from mhunet_deploy.ops.selective_scan import torch_scan as scan

#: (D, L) of the light model's scans at 256x256 (stages 1..4); N = 16, G = 4.
SHAPES = [(256, 4096), (512, 1024), (1024, 256), (2048, 64)]
N_STATE, GROUPS = 16, 4


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def inputs(bsz: int, d: int, length: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped and scaled like the model's (A = -(1..N), delta bias ~ softplus^-1(1e-3..1e-1))."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(bsz, d, length, generator=gen)
    delta = torch.randn(bsz, d, length, generator=gen) * 0.5
    A = -torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(bsz, GROUPS, N_STATE, length, generator=gen)
    C = torch.randn(bsz, GROUPS, N_STATE, length, generator=gen)
    dt = torch.exp(torch.empty(d).uniform_(-6.9, -2.3, generator=gen))
    bias = dt + torch.log(-torch.expm1(-dt))
    return u, delta, A, B, C, torch.ones(d), bias


class _Logstep(torch.nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args, True)


def ort_session(fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...], threads: int):
    """onnxruntime CPU session of fn traced at args' shapes, and the graph's node count."""
    import onnx
    import onnxruntime as ort

    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logstep(fn), args, buf, dynamo=False, opset_version=17, input_names=names, output_names=["y"]
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in zip(names, args, strict=True)}
    return (lambda: sess.run(None, feed)), len(onnx.load_from_string(buf.getvalue()).graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another scan.py to time side by side")
    ap.add_argument("--onnx", action="store_true", help="also time the logstep graph on onnxruntime")
    ap.add_argument("--shapes", type=int, nargs="*", help="indices into the four stage shapes")
    ap.add_argument("--chunks", type=int, nargs="*", help="also time the new chunked, parallel chunks of T")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mods = {"new": scan}
    if args.baseline:
        mods = {"old": load_module(args.baseline), **mods}
    rows = []
    for i in args.shapes if args.shapes is not None else range(len(SHAPES)):
        d, length = SHAPES[i]
        xs = inputs(args.batch, d, length)
        runs: dict[str, Callable[[], object]] = {}
        for tag, mod in mods.items():
            runs[f"torch chunked ({tag})"] = lambda m=mod, xs=xs: m.selective_scan_chunked(*xs, True)
        for t_len in args.chunks or []:
            runs[f"torch chunked (new, T={t_len})"] = lambda t=t_len, xs=xs: scan.selective_scan_chunked(
                *xs, True, chunk=t
            )
        nodes = {}
        if args.onnx:
            for tag, mod in mods.items():
                key = f"ort logstep ({tag})"
                runs[key], nodes[key] = ort_session(mod.selective_scan_logstep, xs, args.threads)
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.inference_mode():
            ref = scan.selective_scan_chunked(*xs, True)
            for tag, mod in mods.items():  # warm-up and a sanity check of every variant
                err = (mod.selective_scan_chunked(*xs, True) - ref).abs().max().item()
                assert err < 1e-3 * ref.abs().max().item(), (tag, err)
            for run in runs.values():
                run()
            for _ in range(args.repeats):
                for key, run in runs.items():
                    t0 = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - t0)
        for key, ts in times.items():
            rows.append((f"B={args.batch} D={d} L={length}", key, statistics.median(ts), nodes.get(key)))
    print("| shape | variant | median s | ONNX nodes |\n| --- | --- | ---: | ---: |")
    for shape, key, sec, n in rows:
        print(f"| {shape} | {key} | {sec:.3f} | {n if n is not None else ''} |")


if __name__ == "__main__":
    main()
