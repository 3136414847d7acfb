"""Run by tests/test_distributed.py under torchrun (``-m tests.ddp_worker OUT BATCH``), and in one
process as its reference: the toy pack trained for one epoch, then resumed for a second, with every rank
taking its shard of one global batch.

``GlobalBatchShard`` is the test's only hook: every rank draws the same batch of world x B slices (one
seed for all) and keeps its B, so the ranks' batches together are exactly the one-process batch of the
same seed. Dropout and drop-path are off, so that what is left between the two runs is what DDP cannot
make equal: BatchNorm statistics, the batch Dice and the brain loss's normalisation, each per rank over
B slices instead of over all 2B.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mhunet_deploy import distributed as dist
from mhunet_deploy.augment import AugmentConfig, BatchSampler
from mhunet_deploy.data import Pack
from mhunet_deploy.model.mamba_hunet import ModelConfig
from mhunet_deploy.train import TrainConfig, train
from tests.train_helpers import TINY, toy_pack

SEED = 7


class GlobalBatchShard(BatchSampler):
    """This rank's B of the world x B batch that every rank draws alike."""

    def __init__(self, pack: Pack, device: torch.device, cfg: AugmentConfig, seed: int) -> None:
        super().__init__(pack, device, cfg, SEED)  # the rank's own seed is what this hook overrides

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, target, known = super().sample(batch * dist.world_size())
        mine = slice(dist.rank() * batch, (dist.rank() + 1) * batch)
        return x[mine], target[mine], known[mine]


def run(out: Path, batch: int, lr_scaling: str = "none") -> None:
    """Epoch 1, then --resume to epoch 2 (OUT/final.json holds both epochs' losses)."""
    pack = toy_pack(np.random.default_rng(3))
    model = ModelConfig(**TINY, outputs=("lesion", "brain"), drop_path=0.0, head_dropout=0.0)
    cfg = TrainConfig(
        epochs=1, steps_per_epoch=3, batch_size=batch, lr=1e-2, lr_scaling=lr_scaling, warmup_steps=1,
        device="cpu", augment=AugmentConfig(crop=32),
    )  # fmt: skip
    for epochs, resume in ((1, False), (2, True)):
        cfg.epochs = epochs
        train(
            cfg, pack, out, {"kind": "toy"}, model_config=model, resume=resume, make_sampler=GlobalBatchShard
        )


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])
    dist.teardown()
