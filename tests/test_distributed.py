"""`mhunet train` on several processes (DDP, gloo on this CPU machine): two ranks stay identical, and
train as one process does on the two ranks' batches together."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed

from mhunet_deploy.distributed import scaled_lr
from tests import ddp_worker
from tests.train_helpers import toy_pack

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with the gloo backend",
)


def two_processes(*args: str) -> subprocess.CompletedProcess:
    """``args`` under torchrun, 2 processes of 1 thread each (the machine's 2 cores)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    res = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_two_ranks_train_as_one_process_on_their_batches_together(tmp_path) -> None:
    """Per-rank batch 4 on 2 ranks vs batch 8 in one process, the same 8 slices each step (see
    ddp_worker), one epoch and then a resumed second.

    The tolerance, 0.01 on each epoch's mean loss: the two runs still differ where a loss term or
    BatchNorm normalises over the batch (per rank over 4 slices, in one process over 8), which moved the
    losses by 0.002-0.003 here; training moves them by 0.1 an epoch, and a wrong LR by more than the
    tolerance (the peak LR x sqrt 2 on the two ranks: 0.037 off in epoch 2, x 2: 0.10)."""
    ddp_worker.run(tmp_path / "one", batch=8)
    two_processes("-m", "tests.ddp_worker", str(tmp_path / "two"), "4")
    one, two = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("one", "two"))
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["global_batch"] == 8
    assert two["distributed"]["weight_spread"] == 0.0  # every rank's weights are rank 0's
    assert [h["steps"] for h in two["history"]] == [3, 6]  # resumed from the 2-rank last.*
    loss_one, loss_two = ([h["train_loss"] for h in m["history"]] for m in (one, two))
    assert loss_one[0] - loss_one[1] > 0.05  # it trained: the comparison is not of two flat lines
    assert np.allclose(loss_two, loss_one, rtol=0, atol=0.01), (loss_two, loss_one)


def test_mhunet_train_gpus_2_on_cpu(tmp_path) -> None:
    """The command: --gpus 2 re-runs itself under torchrun; rank 0 alone speaks and writes; a wall-clock
    budget (rank 0's clock, broadcast every step) ends both ranks at the same step, or DDP would hang."""
    pack = tmp_path / "toy.npz"
    toy_pack(np.random.default_rng(0)).save(pack)
    res = subprocess.run(
        [
            sys.executable, "-m", "mhunet_deploy.cli", "train", "--gpus", "2", "--device", "cpu",
            "--data", str(pack), "--synth-source", str(tmp_path), "--out", str(tmp_path / "run"),
            "--holdout-fold", "1", "--epochs", "1000", "--steps-per-epoch", "2", "--max-minutes", "0.1",
            "--batch-size", "2", "--lr", "1e-3", "--crop", "32", "--embed-dim", "8",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "run/final.json").read_text())
    scaled = meta["distributed"]
    assert (scaled["world_size"], scaled["backend"], scaled["per_rank_batch"]) == (2, "gloo", 2)
    assert scaled["global_batch"] == 4 and scaled["peak_lr"] == pytest.approx(1e-3 * math.sqrt(2))
    assert scaled["weight_spread"] == 0.0 and 2 <= meta["steps"] < 2000  # the budget ended it
    assert [s["case"] for s in meta["holdout_scores"]] == ["c1"] and (tmp_path / "run/holdout.npz").exists()
    assert res.stderr.count("final checkpoint:") == 1 and res.stderr.count("epoch   0") == 1
    assert "Grad strides" not in res.stderr and "OMP_NUM_THREADS" not in res.stderr


def test_lr_scaling_rules() -> None:
    assert scaled_lr(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 4, "none") == scaled_lr(1e-3, 1, "sqrt") == 1e-3
    with pytest.raises(ValueError, match="unknown LR scaling"):
        scaled_lr(1e-3, 2, "cubic")
