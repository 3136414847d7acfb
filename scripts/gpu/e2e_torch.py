"""One volume end to end through the torch backend on the GPU: our scan kernel in FP16 vs the FP32 reference.

Issue item: "one 182-slice volume through the torch backend with our kernel in FP16 vs the FP32 PyTorch
reference path: seconds per volume (pre/post-processing separated) and mask Dice between them".

- reference: TorchBackend(device="cuda", precision="fp32", scan="reference")  (chunked torch scan)
- ours:      TorchBackend(device="cuda", precision="fp16", scan="auto")       (our CUDA kernel)
- and, for the scan's share alone, TorchBackend(precision="fp32", scan="auto")

Each backend gets one warm-up run of the whole volume, then --repeats timed runs (the best is reported)
through mhunet_deploy.pipeline.infer_volume with the packaged weights (default checkpoint). Prints a
markdown table (load / preprocess / model / postprocess / total seconds per backend, then mask Dice,
lesion counts and volumes between the two, and each vs the truth mask when one lies next to the input)
and writes e2e_torch.json into --out. Run by scripts/gpu/e2e_and_check.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STAGES = ("load_s", "preprocess_s", "model_s", "postprocess_s", "total_s")


def log(t0: float, *a: object) -> None:
    print(f"[{time.time() - t0:6.1f}s]", *a, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="?", default="shared/data/open_ms/patient26/FLAIR.nii.gz")
    ap.add_argument("--truth", default=None, help="truth mask (default: lesions.nii.gz next to the input)")
    ap.add_argument("--checkpoint", default=None, help="default: the packaged weights")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/e2e_out"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    t0 = time.time()

    import nibabel as nib
    import numpy as np
    import torch

    from mhunet_deploy.backends.torch_backend import TorchBackend
    from mhunet_deploy.metrics import dice
    from mhunet_deploy.pipeline import InferOptions, infer_volume
    from mhunet_deploy.postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD

    src = Path(args.input)
    truth_path = Path(args.truth) if args.truth else src.parent / "lesions.nii.gz"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(t0, f"torch {torch.__version__}, {torch.cuda.get_device_name()}, input {src}")

    configs = {
        "fp32 reference scan": dict(precision="fp32", scan="reference"),
        "fp16 our kernel": dict(precision="fp16", scan="auto"),
        "fp32 our kernel": dict(precision="fp32", scan="auto"),
    }
    results: dict[str, dict] = {}
    masks: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            tb = time.time()
            backend = TorchBackend(Path(args.checkpoint) if args.checkpoint else None, device="cuda", **cfg)
            setup_s = time.time() - tb
            log(t0, f"{name}: backend ready in {setup_s:.1f}s (scan impl {backend.scan_impl!r})")
            if cfg["scan"] == "auto" and backend.scan_impl != "cuda":
                log(t0, f"WARNING {name}: our kernel is not in use (scan impl {backend.scan_impl!r})")
            meta = backend.meta
            post = meta.get("postprocess", {})  # the checkpoint's own post-processing, as `mhunet infer`
            options = InferOptions(
                threshold=post.get("threshold", DEFAULT_THRESHOLD),
                min_lesion_mm3=post.get("min_lesion_mm3", DEFAULT_MIN_LESION_MM3),
                batch_size=args.batch_size,
                probabilities=True,
                model_info={"name": meta["config"]["name"], "sha256": meta["sha256"]},
            )
            runs = []
            nslices: list[int] = []
            for i in range(1 + args.repeats):  # run 0 = warm-up
                rdir = Path(tmp) / f"{len(results)}_{i}"
                torch.cuda.synchronize()
                report = infer_volume(src, rdir, backend, options, on_start=nslices.append)
                timings = report["timings"]
                log(
                    t0,
                    f"{name} run {i}{' (warm-up)' if i == 0 else ''}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()),
                )
                if i > 0:
                    runs.append((timings, report, rdir))
            best = min(runs, key=lambda r: r[0]["total_s"])
            timings, report, rdir = best
            mask_img = nib.load(report["outputs"]["mask"])
            masks[name] = np.asarray(mask_img.dataobj) > 0
            probs[name] = np.asarray(nib.load(report["outputs"]["probabilities"]).dataobj, dtype=np.float32)
            results[name] = {
                **cfg,
                "scan_impl": backend.scan_impl,
                "setup_s": setup_s,
                "timings": timings,
                "all_timings": [r[0] for r in runs],
                "lesion_count": report["lesion_count"],
                "total_volume_ml": report["total_volume_ml"],
                "mask_voxels": int(masks[name].sum()),
                "n_slices": nslices[-1] if nslices else None,
            }
            backend.close()  # frees its CUDA memory before the next configuration loads

    ref_name, our_name = list(configs)[:2]
    pair = {
        "mask_dice": dice(masks[our_name], masks[ref_name]),
        "prob_max_abs_diff": float(np.abs(probs[our_name] - probs[ref_name]).max()),
        "prob_mean_abs_diff": float(np.abs(probs[our_name] - probs[ref_name]).mean()),
        "model_speedup": results[ref_name]["timings"]["model_s"] / results[our_name]["timings"]["model_s"],
    }
    truth = None
    if truth_path.exists():
        truth = np.asarray(nib.load(str(truth_path)).dataobj) > 0
        for name in configs:
            results[name]["dice_vs_truth"] = dice(masks[name], truth)
    summary = {
        "input": str(src),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "backends": results,
        "comparison": pair,
        "truth": str(truth_path) if truth is not None else None,
    }
    (out / "e2e_torch.json").write_text(json.dumps(summary, indent=1))

    lines = [
        f"# one volume through the torch backend on {summary['device']} ({src.name}, best of {args.repeats} "
        f"after a warm-up; {results[ref_name]['n_slices']} slices, batch {args.batch_size})",
        "",
        "| backend | scan impl | setup s | load s | preprocess s | model s | postprocess s | total s "
        "| lesions | volume ml | Dice vs truth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = r["timings"]
        dvt = f"{r['dice_vs_truth']:.4f}" if "dice_vs_truth" in r else "-"
        lines.append(
            f"| {name} | {r['scan_impl']} | {r['setup_s']:.1f} | "
            + " | ".join(f"{t[k]:.3f}" for k in STAGES)
            + f" | {r['lesion_count']} | {r['total_volume_ml']:.3f} | {dvt} |"
        )
    lines += [
        "",
        f"fp16 our kernel vs fp32 reference: mask Dice {pair['mask_dice']:.4f}; lesions "
        f"{results[our_name]['lesion_count']} vs {results[ref_name]['lesion_count']}; volume "
        f"{results[our_name]['total_volume_ml']:.3f} vs {results[ref_name]['total_volume_ml']:.3f} ml; "
        f"probability max |diff| {pair['prob_max_abs_diff']:.2e} (mean {pair['prob_mean_abs_diff']:.2e}); "
        f"model stage {pair['model_speedup']:.2f}x faster",
    ]
    md = "\n".join(lines) + "\n"
    (out / "e2e_torch.md").write_text(md)
    print(md, flush=True)
    ok = all(results[n]["scan_impl"] == "cuda" for n in configs if configs[n]["scan"] == "auto")
    log(t0, "e2e done" + ("" if ok else " (WARNING: our kernel was not used)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
