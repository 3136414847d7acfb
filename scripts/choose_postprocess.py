"""Choose the post-processing of the packaged light model (threshold x minimum lesion size) on SYNTHETIC
validation volumes only, and optionally write it into the weights' sidecar (its "postprocess" entry).

patient26 (the real held-out case) is never read here: it is only *reported* afterwards (BENCHMARKS).

Steps:
1. K synthetic volumes from ``mhunet_deploy.synth`` with the lesion masks of the sidecar's
   ``data.val_subjects`` (never seen in training), seeds ``SEED_BASE + i``, distinct from the training
   seeds (train.py: ``seed * 100_000 + i`` with data seed 0 for training and 1 for validation).
2. The inference pipeline of ``mhunet infer`` on each: ``volume_from_image`` -> ``prepare`` ->
   ``TorchBackend.predict`` in batches (``pipeline.predict_volume``) -> sigmoid -> ``to_input_grid``;
   one probability map per volume, cached as .npz so the sweep can be rerun without the model.
3. Sweep threshold x min lesion size with ``postprocess.segment`` and ``metrics.compute_metrics``
   against the synthetic truth mask (on the volume's own grid and voxel size).
4. Objective = mean over volumes of (voxel DSC + lesion-wise F1) / 2; the best pair wins (ties: the
   first in sweep order, i.e. the lower threshold, then the smaller minimum size).

Usage (on a GPU about 1 s per volume for the model; on a 2-core CPU ~1 s per slice):
    python scripts/choose_postprocess.py --volumes 4 --cache /tmp/pp_cache --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from mhunet_deploy.checkpoint import default_checkpoint
from mhunet_deploy.metrics import compute_metrics
from mhunet_deploy.pipeline import predict_volume, sigmoid
from mhunet_deploy.postprocess import segment
from mhunet_deploy.preprocess import prepare
from mhunet_deploy.volume_io import volume_from_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEED_BASE = 900_000  # training used 0..~160 (train) and 100_000..100_023 (validation)
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
MIN_SIZES_MM3 = [0.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0]


def sidecar_path(ckpt: Path) -> Path:
    return ckpt.with_suffix(".json")


def probability_maps(
    ckpt: Path, subjects: list[str], volumes: int, cache: Path, batch: int, data: Path, device: str
) -> list[dict]:
    """Probability map, truth mask and zooms of each synthetic volume (computed once, then cached)."""
    from mhunet_deploy.synth import SynthSource, synth_volume

    cache.mkdir(parents=True, exist_ok=True)
    source, backend, out = None, None, []
    for i in range(volumes):
        subject, seed = subjects[i % len(subjects)], SEED_BASE + i
        name = f"{subject}-s{seed}"
        f = cache / f"{name}.npz"
        if not f.exists():
            if source is None:
                from mhunet_deploy.backends.torch_backend import TorchBackend

                source = SynthSource.load(data)
                backend = TorchBackend(ckpt, device=device)
            t0 = time.perf_counter()
            image, mask, _ = synth_volume(source, subject, seed)
            volume = volume_from_image(image)
            t1 = time.perf_counter()
            slices, geometry = prepare(volume)
            logits = predict_volume(backend, slices, batch)
            prob = geometry.to_input_grid(sigmoid(logits[:, :1]))  # channel 0: lesion
            t2 = time.perf_counter()
            zooms = np.array([float(z) for z in image.header.get_zooms()[:3]])
            np.savez_compressed(
                f,
                prob=prob.astype(np.float32),
                truth=np.asarray(mask.dataobj) > 0,
                zooms=zooms,
                slices=len(slices),
                synth_s=t1 - t0,
                infer_s=t2 - t1,
            )
            msg = f"{name}: {len(slices)} slices, synth {t1 - t0:.1f} s, model+grid {t2 - t1:.1f} s"
            print(msg, flush=True)
        z = np.load(f)
        out.append(
            {
                "name": name,
                "prob": z["prob"],
                "truth": z["truth"],
                "zooms": tuple(float(v) for v in z["zooms"]),
                "shape": tuple(z["prob"].shape),
                "slices": int(z["slices"]),
                "infer_s": float(z["infer_s"]),
            }
        )
    return out


_VOLS: list[dict] = []  # the sweep's volumes, shared with forked workers


def _score(pair: tuple[float, float]) -> dict:
    """Mean metrics over the volumes for one (threshold, min size) pair."""
    thr, size = pair
    per = []
    for v in _VOLS:
        pred = segment(v["prob"], v["zooms"], thr, size) > 0
        per.append(compute_metrics(pred, v["truth"], v["zooms"]))
    mean = lambda k: float(np.mean([m[k] for m in per]))  # noqa: E731
    row = {
        "threshold": thr,
        "min_lesion_mm3": size,
        "dsc": mean("dsc"),
        "lesion_f1": mean("lesion_f1"),
        "lesion_precision": mean("lesion_precision"),
        "lesion_recall": mean("lesion_recall"),
        "hd95_mm": mean("hd95_mm"),
        "pred_lesions": mean("pred_lesions"),
        "truth_lesions": mean("truth_lesions"),
        "dsc_per_volume": [m["dsc"] for m in per],
        "f1_per_volume": [m["lesion_f1"] for m in per],
    }
    row["objective"] = (row["dsc"] + row["lesion_f1"]) / 2
    return row


def sweep(vols: list[dict]) -> list[dict]:
    """Mean metrics over volumes for every (threshold, min size) pair, in sweep order; the pairs are
    scored in parallel processes (forked, so the volumes are shared, not copied)."""
    import multiprocessing as mp

    _VOLS[:] = vols
    pairs = [(thr, size) for thr in THRESHOLDS for size in MIN_SIZES_MM3]
    with mp.get_context("fork").Pool(max(1, min(len(pairs), os.cpu_count() or 1))) as pool:
        return pool.map(_score, pairs)


def table(rows: list[dict], best: dict) -> str:
    head = (
        "| threshold | min mm3 | DSC | lesion F1 | lesion P | lesion R | HD95 mm (mean) "
        "| pred lesions (mean) | objective |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        hd = "inf" if math.isinf(r["hd95_mm"]) else f"{r['hd95_mm']:.1f}"
        mark = " **best**" if r is best else ""
        lines.append(
            f"| {r['threshold']:g} | {r['min_lesion_mm3']:g} | {r['dsc']:.3f} | {r['lesion_f1']:.3f} | "
            f"{r['lesion_precision']:.3f} | {r['lesion_recall']:.3f} | {hd} | {r['pred_lesions']:.1f} | "
            f"{r['objective']:.3f}{mark} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: packaged light weights")
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mhunet_choose_postprocess"))
    ap.add_argument("--json", type=Path, default=None, help="also write the sweep here")
    ap.add_argument("--write", action="store_true", help="write the choice into the sidecar's postprocess")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (lesion masks, MNI152)")
    ap.add_argument("--device", default="auto", help="torch device for the model: auto, cpu or cuda")
    args = ap.parse_args()

    ckpt = args.checkpoint or default_checkpoint()
    meta_path = sidecar_path(ckpt)
    meta = json.loads(meta_path.read_text())
    subjects = meta["data"]["val_subjects"]
    if "patient26" in subjects:
        raise SystemExit("patient26 is the held-out real test case; it must not be used for selection")

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    vols = probability_maps(ckpt, subjects, args.volumes, args.cache, args.batch_size, args.data, device)
    for v in vols:
        lesions = int(compute_metrics(v["truth"], v["truth"], v["zooms"])["truth_lesions"])
        print(
            f"{v['name']}: shape {v['shape']}, zooms {tuple(round(z, 2) for z in v['zooms'])}, "
            f"truth {v['truth'].sum() * np.prod(v['zooms']) / 1000:.2f} mL / {lesions} lesions, "
            f"{v['slices']} slices, model {v['infer_s']:.0f} s",
            flush=True,
        )
    t0 = time.perf_counter()
    rows = sweep(vols)
    best = max(rows, key=lambda r: r["objective"])  # max() keeps the first of equal scores
    print(table(rows, best))
    print(f"sweep: {time.perf_counter() - t0:.0f} s")
    print(
        f"best: threshold {best['threshold']}, min lesion {best['min_lesion_mm3']:g} mm3 "
        f"(DSC {best['dsc']:.3f}, lesion F1 {best['lesion_f1']:.3f}, objective {best['objective']:.3f})"
    )
    if args.json:
        keys = ("name", "shape", "zooms", "slices", "infer_s")
        summary = {"volumes": [{k: v[k] for k in keys} for v in vols]}
        args.json.write_text(json.dumps({**summary, "rows": rows, "best": best}, indent=1))
    if args.write:
        names = ", ".join(v["name"] for v in vols)
        meta["postprocess"] = {
            "threshold": best["threshold"],
            "min_lesion_mm3": best["min_lesion_mm3"],
            "chosen_on": (
                f"{len(vols)} synthetic validation volumes (mhunet_deploy.synth, default Recipe; "
                f"lesion masks of the val_subjects, seeds {SEED_BASE}+i, none used in training: {names}), "
                f"full inference pipeline on {device}; grid threshold {THRESHOLDS} x min lesion "
                f"{MIN_SIZES_MM3} mm3; objective = mean over volumes of (voxel DSC + lesion-wise F1 "
                "at IoU >= 0.25) / 2; patient26 not used; scripts/choose_postprocess.py, "
                f"{datetime.date.today()}"
            ),
            "synthetic_val": {
                "dsc": best["dsc"],
                "lesion_f1": best["lesion_f1"],
                "objective": best["objective"],
            },
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote postprocess into {meta_path}")


if __name__ == "__main__":
    main()
