"""Training: the loss, the schedule, resuming, and a real `mhunet train` smoke run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mhunet_deploy.data import SliceSet, split_subjects
from mhunet_deploy.train import TrainConfig, dice_bce_loss, lr_at, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_loss_is_low_for_perfect_and_high_for_inverted_prediction() -> None:
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, 2:5, 2:5] = 1
    good = dice_bce_loss(torch.where(y > 0, 20.0, -20.0), y)
    bad = dice_bce_loss(torch.where(y > 0, -20.0, 20.0), y)
    assert good < 0.01 and bad > 1.9


def test_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=10)
    assert lr_at(0, 0.0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, 0.0, cfg) == pytest.approx(1e-3)
    assert lr_at(50, 0.5, cfg) == pytest.approx(5e-4)
    assert lr_at(99, 1.0, cfg) == pytest.approx(0.0, abs=1e-12)


def test_split_is_by_subject_and_deterministic() -> None:
    names = [f"s{i}" for i in range(20)]
    tr, va = split_subjects(names, seed=3)
    assert not set(tr) & set(va) and sorted(tr + va) == sorted(names)
    assert split_subjects(names, seed=3) == (tr, va)


def _toy_set(n_subjects: int, rng: np.random.Generator) -> SliceSet:
    parts = []
    for s in range(n_subjects):
        xs = rng.normal(size=(4, 1, 64, 64)).astype(np.float16)
        ys = np.zeros((4, 1, 64, 64), np.uint8)
        ys[:2, :, 20:30, 20:30] = 1
        xs[ys > 0] += 3
        parts.append((f"s{s}", xs, ys))
    return SliceSet.concat(parts)


def test_class_balanced_crops_centre_on_lesions() -> None:
    ss = _toy_set(2, np.random.default_rng(0))
    xs, ys = ss.sample(16, 1.0, torch.Generator().manual_seed(0), crop=32)
    assert xs.shape == (16, 1, 32, 32) and ys.reshape(16, -1).any(axis=1).all()


def test_train_then_resume_continues_history(tmp_path) -> None:
    from mhunet_deploy.model.mamba_hunet import ModelConfig

    rng = np.random.default_rng(0)
    tiny = ModelConfig(embed_dim=8, depths=(1, 1, 1, 1), stem_channels=4, img_size=64)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, crop=32, device="cpu", warmup_steps=1)
    best = train(cfg, _toy_set(3, rng), _toy_set(1, rng), tmp_path, {"kind": "toy"}, model_config=tiny)
    meta = json.loads(best.with_suffix(".json").read_text())
    assert meta["data"] == {"kind": "toy"} and len(meta["history"]) == 1
    assert 0.3 <= meta["postprocess"]["threshold"] <= 0.7
    cfg.epochs = 2
    train(cfg, _toy_set(3, rng), _toy_set(1, rng), tmp_path, {"kind": "toy"}, model_config=tiny, resume=True)
    last = json.loads((tmp_path / "last.json").read_text())
    assert [h["epoch"] for h in last["history"]] == [0, 1]


@pytest.mark.skipif(not (DATA / "mni152").is_dir(), reason="../shared/data (MNI152 + lesion masks) absent")
def test_mhunet_train_cli_smoke(tmp_path) -> None:
    """The real command on synthetic data: generation, preprocessing, training, checkpoint."""
    cmd = [
        sys.executable, "-m", "mhunet_deploy.cli", "train", "--out", str(tmp_path), "--synth-source",
        str(DATA), "--volumes", "2", "--synth-spacing", "2", "--slices-per-volume", "2", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "64", "--embed-dim", "8", "--workers", "1",
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600)
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["data"]["kind"] == "synthetic" and "patient26" in meta["data"]["excluded"]
    assert meta["config"]["embed_dim"] == 8 and (tmp_path / "best.safetensors").stat().st_size > 0
