"""Collect a cross-validation run of scripts/gpu/train_real.sh: per-config scores and the winner.

The rule is fixed before the run: the configuration with the higher mean model-grid lesion Dice at 0.5
over every held-out real scan wins (all folds, all domains, each scan once). Its all-data checkpoint is
copied out (the paper model as fp16 weights, to fit the device's 16 MiB-per-file return limit, split in
parts); every fold's out-of-fold probabilities go into one archive per configuration for the scoring
on the scan's own grid (scripts/crossval_report.py), which chooses the post-processing.

    python3 scripts/gpu/cv_summary.py RUNS_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np

PART_BYTES = 15 * 2**20


def main(runs: Path, out: Path) -> None:
    summary: dict[str, dict] = {}
    for run in sorted(runs.iterdir()):
        if not run.is_dir() or run.name.startswith("probe-") or "-" not in run.name:
            continue
        meta_path = run / "final.json"
        if not meta_path.exists():
            summary[run.name] = {"error": "no final checkpoint (see its log)"}
            continue
        meta = json.loads(meta_path.read_text())
        summary[run.name] = {
            "steps": meta["steps"],
            "train_seconds": meta["train_seconds"],
            "step_timing": meta.get("step_timing"),
            "holdout_scores": meta.get("holdout_scores"),
            "final_loss": meta["history"][-1]["train_loss"],
        }
    configs: dict[str, dict] = {}
    for name, row in summary.items():
        config, fold = name.rsplit("-", 1)
        entry = configs.setdefault(config, {"scores": [], "folds": []})
        if fold != "all" and row.get("holdout_scores"):
            entry["scores"] += row["holdout_scores"]
            entry["folds"].append(fold)
    for config, entry in configs.items():
        dice = [s["dice_grid"] for s in entry["scores"]]
        entry["mean_dice_grid"] = float(np.mean(dice)) if dice else None
        entry["scans"] = len(dice)
        by_domain: dict[str, list[float]] = {}
        for s in entry["scores"]:
            by_domain.setdefault(s["domain"], []).append(s["dice_grid"])
        entry["mean_dice_grid_by_domain"] = {d: float(np.mean(v)) for d, v in by_domain.items()}
        brain = [s["brain_dice_grid"] for s in entry["scores"] if "brain_dice_grid" in s]
        entry["mean_brain_dice_grid"] = float(np.mean(brain)) if brain else None
        with tarfile.open(out / f"oof_{config}.tar", "w") as tar:
            for fold in entry["folds"]:
                for f in ("holdout.npz", "final.json"):
                    tar.add(runs / f"{config}-{fold}" / f, arcname=f"{config}-{fold}/{f}")
    complete = {c: e for c, e in configs.items() if e["mean_dice_grid"] is not None}
    winner = max(complete, key=lambda c: complete[c]["mean_dice_grid"]) if complete else None
    result = {"runs": summary, "configs": configs, "winner": winner}
    (out / "cv_summary.json").write_text(json.dumps(result, indent=1, default=str))
    if winner and (runs / f"{winner}-all" / "final.safetensors").exists():
        export_checkpoint(runs / f"{winner}-all", out)
    for config, entry in configs.items():
        print(
            f"{config}: mean model-grid Dice {entry['mean_dice_grid']} over {entry['scans']} scans, "
            f"by domain {entry['mean_dice_grid_by_domain']}, brain {entry['mean_brain_dice_grid']}"
        )
    print(f"winner: {winner}")


def export_checkpoint(run: Path, out: Path) -> None:
    """The all-data checkpoint, as fp16 weights when it is too big for one returned file, in parts."""
    weights, sidecar = run / "final.safetensors", run / "final.json"
    if weights.stat().st_size > PART_BYTES:
        from safetensors.numpy import load_file, save_file

        from mhunet_deploy.files import sha256_file

        tensors = {
            k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in load_file(weights).items()
        }
        weights = out / "final_fp16.safetensors"
        save_file(tensors, str(weights))
        meta = json.loads(sidecar.read_text())
        meta["sha256"] = sha256_file(weights)
        meta["weights_dtype"] = "float16"
        (out / "final_fp16.json").write_text(json.dumps(meta, indent=1))
        data = weights.read_bytes()
        weights.unlink()
        for i in range(0, len(data), PART_BYTES):
            (out / f"final_fp16.safetensors.part{i // PART_BYTES}").write_bytes(data[i : i + PART_BYTES])
    else:
        (out / "final.safetensors").write_bytes(weights.read_bytes())
        (out / "final.json").write_text(sidecar.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
