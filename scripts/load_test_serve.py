"""Load test of `mhunet serve` on loopback: N requests at concurrency C, every result checked.

Starts `mhunet serve` with the tiny test model (its own process, a free loopback port), makes a few
distinct small synthetic scans, and sends each request one of them with ``?wait=true``, then downloads
its mask. A request counts as ok only if its lesion table and mask equal a direct pipeline run of the
same scan in this process (the CLI's code path); lost, failed and wrong requests are counted apart.
Prints the counts, p50/p95 request latency (upload to finished report) and the throughput.

Run from the repository root: ``python3 -m scripts.load_test_serve --requests 50 --concurrency 4``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from mhunet_deploy.backends import load_backend
from mhunet_deploy.pipeline import infer_options, infer_volume
from tests.serve_helpers import lesion_tiny, request, running_server, upload, varied_volume


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--scans", type=int, default=5, help="distinct scans, cycled over the requests")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mhunet-load-"))
    ckpt = lesion_tiny(root / "tiny.safetensors")
    scans = [varied_volume(root / f"scan{i}.nii.gz", seed=i) for i in range(args.scans)]
    options, _ = infer_options(ckpt, None, None, probabilities=True, qc=True)
    expected = {}
    with load_backend("torch", ckpt, device="cpu") as engine:
        options.batch_size = engine.batch_size
        for scan in scans:
            report = infer_volume(scan, root / "direct", engine, options)
            expected[scan.name] = (report["lesions"], np.asarray(nib.load(report["outputs"]["mask"]).dataobj))

    def one(i: int) -> tuple[str, float]:
        scan = scans[i % len(scans)]
        t0 = time.perf_counter()
        try:
            reply = upload(url, scan, wait=True)
        except OSError as exc:
            return f"lost ({exc})", time.perf_counter() - t0
        latency = time.perf_counter() - t0
        if reply.status != 200:
            return f"failed ({reply.status} {reply.body[:200]!r})", latency
        job = reply.json()
        mask = np.asarray(
            nib.Nifti1Image.from_bytes(gzip.decompress(request(url + job["links"]["mask"]).body)).dataobj
        )
        lesions, want = expected[scan.name]
        right = job["report"]["lesions"] == lesions and np.array_equal(mask, want)
        return ("ok" if right else "wrong"), latency

    cmd = f"python3 -m scripts.load_test_serve --requests {args.requests} --concurrency {args.concurrency}"
    serve_args = (
        "--checkpoint",
        str(ckpt),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--store",
        str(root / "s"),
    )
    with running_server(root / "server.log", *serve_args) as url:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            outcomes = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    latencies = [t for _, t in outcomes]
    kinds = [k.split(" ")[0] for k, _ in outcomes]
    result = {
        "command": cmd,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ok": kinds.count("ok"),
        "wrong": kinds.count("wrong"),
        "failed": kinds.count("failed"),
        "lost": kinds.count("lost"),
        "p50_s": statistics.median(latencies),
        "p95_s": statistics.quantiles(latencies, n=20)[18],
        "wall_s": wall,
        "requests_per_s": args.requests / wall,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "slices_per_scan": [int(nib.load(s).shape[2]) for s in scans],
    }
    for kind, _ in outcomes:
        if kind != "ok":
            print(kind, file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
