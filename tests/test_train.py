"""Training: the loss, the schedule, held-out folds, resuming, and a real `mhunet train` smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mhunet_deploy.augment import AugmentConfig
from mhunet_deploy.train import TrainConfig, dice_bce_loss, lr_at, model_loss, split_pack, train
from tests.train_helpers import TINY, toy_pack

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_loss_is_low_for_perfect_and_high_for_inverted_prediction() -> None:
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, 2:5, 2:5] = 1
    good = dice_bce_loss(torch.where(y > 0, 20.0, -20.0), y)
    bad = dice_bce_loss(torch.where(y > 0, -20.0, 20.0), y)
    assert good < 0.01 and bad > 1.9


def test_brain_loss_only_where_the_brain_is_known() -> None:
    target = torch.zeros(2, 2, 8, 8)
    target[:, 1, 1:7, 1:7] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    wrong_brain = logits.clone()
    wrong_brain[1, 1] = -wrong_brain[1, 1]  # sample 1's brain channel is inverted
    unknown = torch.tensor([1.0, 0.0])
    assert model_loss(wrong_brain, target, unknown, 1.0) < 0.01  # not counted: brain of sample 1 unknown
    assert model_loss(wrong_brain, target, torch.ones(2), 1.0) > 0.5
    assert model_loss(logits[:, :1], target, torch.ones(2), 1.0) < 0.01  # lesion-only model


def test_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=10)
    assert lr_at(0, 0.0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, 0.0, cfg) == pytest.approx(1e-3)
    assert lr_at(50, 0.5, cfg) == pytest.approx(5e-4)
    assert lr_at(99, 1.0, cfg) == pytest.approx(0.0, abs=1e-12)


def test_holdout_fold_leaves_training_and_is_predicted(tmp_path) -> None:
    from mhunet_deploy.model.mamba_hunet import ModelConfig

    pack = toy_pack(np.random.default_rng(0))
    train_part, held = split_pack(pack, 2)
    assert list(held.table["case"]) == ["c2"] and "c2" not in train_part.table["case"]
    assert len(train_part) + len(held) == len(pack)
    model = ModelConfig(**TINY, outputs=("lesion", "brain"))
    cfg = TrainConfig(
        epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", warmup_steps=1, holdout_fold=2,
        augment=AugmentConfig(crop=32),
    )  # fmt: skip
    final = train(cfg, pack, tmp_path, {"kind": "toy"}, model_config=model)
    meta = json.loads(final.with_suffix(".json").read_text())
    assert [s["case"] for s in meta["holdout_scores"]] == ["c2"]
    assert meta["data"]["train"]["real_cases"] == ["c0", "c1", "c3"]
    with np.load(tmp_path / "holdout.npz") as oof:
        assert oof["c2.prob"].shape == (4, 2, 64, 64) and oof["c2.prob"].dtype == np.uint8
        assert list(oof["c2.z"]) == [0, 1, 2, 3]
    with pytest.raises(Exception, match="no real volume has fold 7"):
        split_pack(pack, 7)


def test_train_then_resume_continues_history(tmp_path) -> None:
    from mhunet_deploy.model.mamba_hunet import ModelConfig

    pack = toy_pack(np.random.default_rng(1))
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        device="cpu",
        warmup_steps=1,
        augment=AugmentConfig(crop=32),
    )
    train(cfg, pack, tmp_path, {"kind": "toy"}, model_config=ModelConfig(**TINY))
    cfg.epochs = 2
    train(cfg, pack, tmp_path, {"kind": "toy"}, model_config=ModelConfig(**TINY), resume=True)
    last = json.loads((tmp_path / "last.json").read_text())
    assert [h["epoch"] for h in last["history"]] == [0, 1] and last["steps"] == 4


@pytest.mark.skipif(not (DATA / "mni152").is_dir(), reason="../shared/data (MNI152 + lesion masks) absent")
def test_mhunet_pack_then_train_cli_smoke(tmp_path) -> None:
    """The real commands: a synthetic head packed, then trained on with the brain output."""

    def run(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "mhunet_deploy.cli", *args], check=True, timeout=600)

    run(
        "pack",
        str(tmp_path / "p.npz"),
        "--synthetic",
        "1",
        "--synth-source",
        str(DATA),
        "--workers",
        "1",
        "--quiet",
    )
    run(
        "train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "p.npz"),
        "--synth-source", str(DATA), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
        "--crop", "64", "--embed-dim", "8", "--device", "cpu", "--quiet",
    )  # fmt: skip
    meta = json.loads((tmp_path / "run/final.json").read_text())
    assert meta["data"]["train"]["volumes_by_kind"] == {"synthetic": 1}
    assert meta["config"]["embed_dim"] == 8 and meta["config"]["outputs"] == ["lesion", "brain"]
