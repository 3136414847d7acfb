"""Score the out-of-fold predictions of a cross-validation on each scan's own grid, choose the
post-processing on them, and report per domain (issue #12).

Input: the ``oof_<variant>.tar`` archives of scripts/gpu/train_real.sh (every fold's held-out
probabilities on the model grid) and the manifest of the real scans. Each held-out prediction goes
through what `mhunet infer` does after the model: back onto the scan's exact voxel grid, the brain mask
from the brain output (`brain.brain_from_probability`), lesions cut by it and kept above a minimum size
(`postprocess.segment`). Nothing here looks at a scan's own prediction while training it: every score is
of a model that never saw that scan.

Post-processing choice: one probability threshold for all scans, and a minimum lesion size for thin
(<= 3 mm) and one for thick slices, maximising the mean over scans of (DSC + lesion F1 at IoU >= 0.25)/2.
The choice is made on the same out-of-fold predictions that are then reported (as nnU-Net chooses its
post-processing on its cross-validation): the grid is small (threshold x size), but the reported means
after the choice are optimistic by the selection; the scores at the default settings are reported too.

    python scripts/crossval_report.py --oof oof_light.tar [--oof oof_nopaste.tar ...] \
        [--checkpoint final.safetensors --write] [--json cv.json]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from mhunet_deploy.brain import brain_from_probability
from mhunet_deploy.data import Case, _brain_from_nonzero, read_manifest
from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.metrics import compute_metrics, dice, lesion_detection
from mhunet_deploy.postprocess import THICK_SLICE_MM, min_lesion_for, segment
from mhunet_deploy.preprocess import prepare

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
MIN_SIZES_MM3 = [0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0]
#: The MSSEG/ISBI rule: a truth lesion is found when any predicted voxel touches it (any overlap).
TOUCH_IOU = 1e-9


def read_oof(tar_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """case -> {"prob": (S, C, G, G) uint8, "z": (S,)} from every fold of one archive."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            if not member.name.endswith("holdout.npz"):
                continue
            with np.load(io.BytesIO(tar.extractfile(member).read())) as z:
                for key in z.files:
                    case, kind = key.rsplit(".", 1)
                    out.setdefault(case, {})[kind] = z[key]
    return out


def scan_maps(case: Case, oof: dict[str, np.ndarray]) -> dict:
    """Lesion probability and brain mask on the scan's grid, its truths, and whether slices are thick."""
    volume = load_volume(case.image)
    slices, geometry = prepare(volume)
    prob = np.zeros((len(slices), oof["prob"].shape[1], *slices.shape[2:]), np.float32)
    prob[oof["z"].astype(int)] = oof["prob"].astype(np.float32) / 255.0
    lesion_prob = geometry.to_input_grid(prob[:, :1])
    affine = volume.image.affine
    brain = (
        brain_from_probability(geometry.to_input_grid(prob[:, 1:2]), affine) if prob.shape[1] > 1 else None
    )
    truth = np.asarray(nib.load(case.lesions).dataobj) > 0
    if case.brain == "nonzero":
        brain_truth = _brain_from_nonzero(volume.data)
    elif case.brain is not None:
        brain_truth = np.asarray(nib.load(case.brain).dataobj) > 0
    else:
        brain_truth = None
    zooms = volume.zooms
    return {
        "prob": lesion_prob,
        "brain": brain,
        "truth": truth,
        "brain_truth": brain_truth,
        "zooms": zooms,
        "thick": max(zooms) > THICK_SLICE_MM,
    }


def sweep(maps: dict) -> np.ndarray:
    """(threshold, min size) -> (DSC + lesion F1) / 2 for one scan."""
    scores = np.zeros((len(THRESHOLDS), len(MIN_SIZES_MM3)))
    for i, thr in enumerate(THRESHOLDS):
        for j, size in enumerate(MIN_SIZES_MM3):
            pred = segment(maps["prob"], maps["zooms"], thr, size, within=maps["brain"]) > 0
            f1 = lesion_detection(pred, maps["truth"])["lesion_f1"]
            scores[i, j] = (dice(pred, maps["truth"]) + f1) / 2
    return scores


def score(maps: dict, threshold: float, min_thin: float, min_thick: float) -> dict:
    """Every reported number of one scan at one post-processing."""
    size = min_lesion_for(maps["zooms"], min_thin, min_thick)
    pred = segment(maps["prob"], maps["zooms"], threshold, size, within=maps["brain"]) > 0
    m = compute_metrics(pred, maps["truth"], maps["zooms"])
    touch = lesion_detection(pred, maps["truth"], TOUCH_IOU)
    row = {
        "dsc": m["dsc"],
        "lesion_f1_iou25": m["lesion_f1"],
        "lesion_f1_touch": touch["lesion_f1"],
        "pred_lesions": m["pred_lesions"],
        "truth_lesions": m["truth_lesions"],
        "pred_ml": m["pred_volume_ml"],
        "truth_ml": m["truth_volume_ml"],
        "volume_error_pct": 100 * m["volume_error_ml"] / max(m["truth_volume_ml"], 1e-9),
        "hd95_mm": m["hd95_mm"],
    }
    if maps["brain"] is not None:
        row["lesion_voxels_outside_brain"] = int((pred & ~maps["brain"]).sum())
    if maps["brain_truth"] is not None:
        row["lesion_voxels_outside_true_brain"] = int((pred & ~maps["brain_truth"]).sum())
        if maps["brain"] is not None:
            row["brain_dice"] = dice(maps["brain"], maps["brain_truth"])
    return row


def qc_page(case: Case, maps: dict, setting: tuple[float, float, float], variant: str, out: Path) -> Path:
    """The QC page of a held-out prediction (the montage `mhunet infer --qc` draws)."""
    from mhunet_deploy.postprocess import lesion_table
    from mhunet_deploy.qc import qc_montage

    volume = load_volume(case.image)
    size = min_lesion_for(maps["zooms"], *setting[1:])
    labels = segment(maps["prob"], maps["zooms"], setting[0], size, within=maps["brain"])
    lesions = lesion_table(labels, volume.image.affine, maps["zooms"])
    voxel_ml = float(np.prod(maps["zooms"])) / 1000
    brain = maps["brain"]
    report = {
        "input": {"path": f"{case.case} ({case.domain}): held-out prediction of fold {case.fold}'s model"},
        "lesion_count": len(lesions),
        "total_volume_ml": float(sum(r["volume_ml"] for r in lesions)),
        "brain": {"source": "model", "volume_ml": float(brain.sum()) * voxel_ml} if brain is not None else {},
        "model": {"name": f"{variant} (cross-validation fold model)"},
        "backend": "torch-cuda",
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"qc_oof_{case.case}.png"
    qc_montage(volume.image, labels > 0, report, path, brain=brain)
    return path


def _job(
    args: tuple[Case, dict[str, np.ndarray], tuple[float, float, float], bool, Path | None, str],
) -> tuple[np.ndarray | None, dict, bool]:
    """One scan: the sweep (first pass), or the scores and QC page at the chosen setting (second)."""
    case, oof, setting, with_sweep, qc_dir, variant = args
    maps = scan_maps(case, oof)
    if qc_dir is not None:
        qc_page(case, maps, setting, variant, qc_dir)
    return sweep(maps) if with_sweep else None, score(maps, *setting), maps["thick"]


def choose(sweeps: np.ndarray, thick: np.ndarray) -> tuple[float, float, float]:
    """Threshold shared by all scans; min size for thin and for thick slices, each its class's best."""
    best, choice = -1.0, (0.5, 0.0, 0.0)
    for i, thr in enumerate(THRESHOLDS):
        total = 0.0
        sizes = []
        for cls in (False, True):
            sel = sweeps[thick == cls, i]
            if len(sel) == 0:
                sizes.append(0.0)
                continue
            j = int(np.argmax(sel.mean(axis=0)))
            sizes.append(MIN_SIZES_MM3[j])
            total += sel[:, j].sum()
        if total / len(sweeps) > best + 1e-12:
            best, choice = total / len(sweeps), (thr, sizes[0], sizes[1])
    return choice


def summarise(rows: list[dict], cases: list[Case]) -> dict:
    """Means per domain and over all scans."""
    out = {}
    groups = {"all": list(range(len(cases)))}
    for i, c in enumerate(cases):
        groups.setdefault(c.domain, []).append(i)
    for name, idx in groups.items():
        sel = [rows[i] for i in idx]
        keys = sorted({k for r in sel for k, v in r.items() if isinstance(v, (int, float))})
        agg = {k: float(np.mean([r[k] for r in sel if k in r])) for k in keys}
        agg["volume_within_20pct"] = int(sum(abs(r["volume_error_pct"]) <= 20 for r in sel))
        agg["scans"] = len(sel)
        brain = [r["brain_dice"] for r in sel if "brain_dice" in r]
        if brain:
            agg["brain_dice"] = float(np.mean(brain))
            agg["brain_scans"] = len(brain)
        out[name] = agg
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oof", type=Path, action="append", required=True, help="oof_<variant>.tar (repeatable)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "manifests/real_ms.json")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--checkpoint", type=Path, help="write the chosen post-processing into its sidecar")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--qc-dir", type=Path, help="QC pages of the first --oof's held-out predictions of --qc-case"
    )
    ap.add_argument(
        "--qc-case", action="append", default=[], help="a manifest case for --qc-dir (repeatable)"
    )
    args = ap.parse_args()
    cases = read_manifest(args.manifest, args.data_root)
    report = {}
    default = (0.5, 0.0, 0.0)
    for tar_path in args.oof:
        variant = tar_path.stem.removeprefix("oof_")
        oof = read_oof(tar_path)
        missing = [c.case for c in cases if c.case not in oof]
        if missing:
            raise SystemExit(f"{tar_path}: no out-of-fold prediction for {missing}")
        jobs = [(c, oof[c.case], default, True, None, variant) for c in cases]
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_job, jobs))
        sweeps = np.stack([r[0] for r in results])
        thick = np.array([r[2] for r in results])
        chosen = choose(sweeps, thick)
        with ProcessPoolExecutor(args.workers) as pool:
            qc = args.qc_dir if tar_path == args.oof[0] else None
            jobs = [
                (c, oof[c.case], chosen, False, qc if c.case in args.qc_case else None, variant)
                for c in cases
            ]
            rows = list(pool.map(_job, jobs))
        per_scan = {c.case: {"domain": c.domain, **r[1]} for c, r in zip(cases, rows, strict=True)}
        at_default = [r[1] for r in results]
        report[variant] = {
            "postprocess": {
                "threshold": chosen[0],
                "min_lesion_mm3": chosen[1],
                "min_lesion_mm3_thick": chosen[2],
                "thick_slice_mm": THICK_SLICE_MM,
            },
            "chosen": summarise([r[1] for r in rows], cases),
            "default_0.5_no_min": summarise(at_default, cases),
            "per_scan": per_scan,
        }
        s = report[variant]["chosen"]
        print(f"{variant}: post-processing {report[variant]['postprocess']}")
        for name, agg in s.items():
            print(
                f"  {name:9s} n={agg['scans']:2d} DSC {agg['dsc']:.3f}  F1 touch {agg['lesion_f1_touch']:.3f}"
                f"  F1 IoU25 {agg['lesion_f1_iou25']:.3f}  |vol err| within 20%: {agg['volume_within_20pct']}"
                f"  brain Dice {agg.get('brain_dice', float('nan')):.3f}"
                f"  lesion voxels off the true brain {agg.get('lesion_voxels_outside_true_brain', -1):.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    if args.write and args.checkpoint:
        from mhunet_deploy.checkpoint import FORMAT, sidecar

        first = report[args.oof[0].stem.removeprefix("oof_")]
        side = sidecar(args.checkpoint)
        meta = json.loads(side.read_text())
        assert meta.get("format") == FORMAT
        meta["postprocess"] = {
            **first["postprocess"],
            "chosen_on": "cross-validation out-of-fold predictions",
        }
        meta["crossval"] = {k: first[k] for k in ("chosen", "default_0.5_no_min")}
        side.write_text(json.dumps(meta, indent=1))
        print(f"wrote the post-processing into {side}")


if __name__ == "__main__":
    main()
