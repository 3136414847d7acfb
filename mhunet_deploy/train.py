"""`mhunet train`: real scans plus synthetic heads, Dice + BCE on lesion and brain, AdamW, warm-up +
cosine schedule, bf16 AMP on CUDA, resumable; on several devices under torchrun (``distributed``).

The training loop sees the same slices that inference sees: every volume went through the inference
preprocessing when it was packed (`data`), and batches are drawn and augmented on the training device
(`augment`). There is no checkpoint selection on validation data: the weights at the end of the
schedule are the result (as nnU-Net does), so a held-out fold (``holdout_fold``) is only ever predicted,
for cross-validation, never used to choose anything inside a run.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist
from .augment import AugmentConfig, BatchSampler
from .checkpoint import save_checkpoint
from .data import Pack
from .errors import InputError
from .files import atomic_write
from .model.mamba_hunet import CONFIGS, ModelConfig, build_model

log = logging.getLogger(__name__)

#: Steps whose data and compute time are measured apart (synchronised), after a warm-up.
TIMED_STEPS = (20, 70)


@dataclass
class TrainConfig:
    """Optimisation settings; stored in the checkpoint's JSON."""

    model: str = "light"
    epochs: int = 30
    steps_per_epoch: int = 200
    #: Per rank (process); the global batch is world size x this.
    batch_size: int = 32
    #: Peak LR for one rank's batch; with several ranks scaled by ``lr_scaling`` (distributed.LR_SCALING).
    lr: float = 2e-3
    lr_scaling: str = "sqrt"
    weight_decay: float = 0.05
    warmup_steps: int = 100
    #: Weight of the brain output's loss (on volumes whose brain is known).
    brain_weight: float = 0.5
    #: Cross-validation: volumes of this fold are left out of training and predicted at the end.
    holdout_fold: int | None = None
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    #: Wall-clock budget: the cosine schedule runs over it and training stops when it is spent, so a
    #: run fits a fixed GPU lease whatever the step time turns out to be.
    max_minutes: float | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice over the batch (as one region, so empty slices don't dominate) + BCE; ``weight``
    (one per sample, 0/1) leaves samples without a label out."""
    logits, target = logits.float(), target.float()
    w = torch.ones(len(logits), device=logits.device) if weight is None else weight
    if w.sum() == 0:
        return logits.sum() * 0.0
    w4 = w.view(-1, *([1] * (logits.dim() - 1)))
    prob = torch.sigmoid(logits) * w4
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + (target * w4).sum() + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * w4).sum() / (w4.sum() * logits[0].numel())
    return dice + bce


def model_loss(
    logits: torch.Tensor, target: torch.Tensor, brain_known: torch.Tensor, brain_weight: float
) -> torch.Tensor:
    """Lesion loss on channel 0; brain loss on channel 1 (when the model has it) where it is known."""
    loss = dice_bce_loss(logits[:, :1], target[:, :1])
    if logits.shape[1] > 1:
        loss = loss + brain_weight * dice_bce_loss(logits[:, 1:2], target[:, 1:2], brain_known)
    return loss


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over steps, then cosine decay over ``progress`` (0..1 of the run)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict_slices(model: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """Sigmoid of the model on float32 slices (S, 1, G, G), batch by batch; (S, outputs, G, G) float32."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], np.float32)).to(device)
        out.append(torch.sigmoid(model(xb).float()).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, len(model.config.outputs), *x.shape[2:]), np.float32)


def split_pack(pack: Pack, holdout_fold: int | None) -> tuple[Pack, Pack | None]:
    """Training volumes, and the real scans of the held-out fold (None without one)."""
    if holdout_fold is None:
        return pack, None
    fold = pack.table["fold"].astype(int)
    held = fold == holdout_fold
    if not (held & (pack.table["kind"] == "real")).any():
        folds = sorted(int(f) for f in set(fold) - {-1})
        raise InputError(f"no real volume has fold {holdout_fold}; the folds are {folds}")
    return pack.select_volumes(~held), pack.select_volumes(held & (pack.table["kind"] == "real"))


def predict_holdout(
    model: torch.nn.Module, held: Pack, device: torch.device, batch: int, out: Path
) -> list[dict[str, Any]]:
    """Out-of-fold probabilities of every held-out volume (uint8, model grid) to ``out``, and each
    volume's model-grid lesion Dice at 0.5 (a quick look only: the real scoring maps back to the scan)."""
    arrays, rows = {}, []
    for v, case in enumerate(held.table["case"]):
        idx = np.flatnonzero(held.volume == v)
        prob = predict_slices(model, held.dequantised(idx)[:, None], device, batch)
        arrays[f"{case}.prob"] = np.rint(prob * 255).astype(np.uint8)
        arrays[f"{case}.z"] = held.z[idx]
        pred, truth = prob[:, 0] >= 0.5, held.lesion[idx] > 0
        denom = pred.sum() + truth.sum()
        row = {
            "case": str(case),
            "domain": str(held.table["domain"][v]),
            "dice_grid": float(1.0 if denom == 0 else 2 * (pred & truth).sum() / denom),
        }
        if prob.shape[1] > 1 and held.table["brain_known"][v]:
            bp, bt = prob[:, 1] >= 0.5, held.brain[idx] > 0
            row["brain_dice_grid"] = float(2 * (bp & bt).sum() / max(bp.sum() + bt.sum(), 1))
        rows.append(row)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(out, write)
    return rows


def _optim_state(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten AdamW state into tensors (safetensors) + JSON, so resuming never unpickles."""
    sd = optim.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _save_optim_state(optim: torch.optim.Optimizer, out_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors, opt_js = _optim_state(optim)
    atomic_write(out_dir / "last_optim.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(out_dir / "last_optim.json", lambda tmp: Path(tmp).write_text(json.dumps(opt_js)))


def _load_optim_state(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], js: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optim.load_state_dict({"state": state, "param_groups": js["param_groups"]})


def describe(pack: Pack) -> dict[str, Any]:
    """What a pack holds, for the checkpoint's JSON: volumes and slices per kind and domain."""
    kinds = pack.table["kind"]
    summary: dict[str, Any] = {"slices": len(pack), "volumes": pack.volumes}
    for name in ("kind", "domain"):
        col = pack.table[name]
        summary[f"volumes_by_{name}"] = {str(k): int((col == k).sum()) for k in sorted(set(col))}
    summary["real_cases"] = sorted(
        str(c) for c, k in zip(pack.table["case"], kinds, strict=True) if k == "real"
    )
    return summary


def train(
    cfg: TrainConfig,
    pack: Pack,
    out_dir: Path,
    data_recipe: dict[str, Any],
    model_config: ModelConfig | None = None,
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    make_sampler: Callable[[Pack, torch.device, AugmentConfig, int], BatchSampler] = BatchSampler,
) -> Path:
    """Train and write ``out_dir/final.safetensors`` (+ ``last`` for resuming); with a held-out fold
    also ``out_dir/holdout.npz`` and its quick scores. Returns the final checkpoint's path.

    Under torchrun every rank calls this with the same arguments (see ``distributed``); rank 0 writes.
    ``make_sampler`` builds the batch source from (pack, device, augment config, seed)."""
    device = dist.setup(cfg.device)
    # Each rank its own stream (dropout, drop-path); rank 0's is the one-process run's. The initial
    # weights differ too, but DDP broadcasts rank 0's when it wraps the model.
    random.seed(cfg.seed + dist.rank())
    np.random.seed(cfg.seed + dist.rank())
    torch.manual_seed(cfg.seed + dist.rank())
    train_pack, held = split_pack(pack, cfg.holdout_fold)
    net = build_model(model_config or CONFIGS[cfg.model]).to(device)
    optim = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    data_recipe = {
        **data_recipe,
        "train": describe(train_pack),
        "holdout": None if held is None else describe(held),
    }
    log.info(
        "training %s (%d parameters, outputs %s) on %s%s; %d slices of %d volumes%s",
        net.config.name,
        sum(p.numel() for p in net.parameters()),
        "+".join(net.config.outputs),
        device,
        " with bf16 autocast" if use_amp else "",
        len(train_pack),
        train_pack.volumes,
        "" if held is None else f"; fold {cfg.holdout_fold} held out ({held.volumes} scans)",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last, final = out_dir / "last.safetensors", out_dir / "final.safetensors"
    start_epoch, history, steps_done, spent = 0, [], 0, 0.0
    if resume and last.exists():
        from safetensors.torch import load_file

        from .checkpoint import load_checkpoint

        loaded, meta = load_checkpoint(last, device=str(device))
        net.load_state_dict(loaded.state_dict())
        opt_js = json.loads((out_dir / "last_optim.json").read_text())
        _load_optim_state(optim, load_file(str(out_dir / "last_optim.safetensors")), opt_js)
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        steps_done, spent = meta["steps"], meta["train_seconds"]
    # Every rank draws with replacement from the whole pack, on a stream of its own (distinct for each
    # (rank, resume point); rank 0's is the one-process stream). For with-replacement sampling this is
    # what a DistributedSampler gives: i.i.d. draws, so N independent streams of B are one global batch
    # of N x B from the same distribution; sharding the pools would only forbid two ranks the same slice.
    sampler = make_sampler(train_pack, device, cfg.augment, cfg.seed + start_epoch + dist.rank() * cfg.epochs)
    world = dist.world_size()
    sched = replace(cfg, lr=dist.scaled_lr(cfg.lr, world, cfg.lr_scaling))
    scaling = {
        "world_size": world,
        "backend": torch.distributed.get_backend() if dist.active() else None,
        "per_rank_batch": cfg.batch_size,
        "global_batch": world * cfg.batch_size,
        "lr_scaling": cfg.lr_scaling,
        "peak_lr": sched.lr,
    }
    model = dist.wrap(net, device)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    started = time.perf_counter() - spent
    timing = {"data_s": 0.0, "step_s": 0.0}
    model.train()
    meta: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        losses = []
        for step in range(cfg.steps_per_epoch):
            gstep = epoch * cfg.steps_per_epoch + step
            progress_frac = gstep / total_steps
            if budget_s:
                elapsed = dist.from_main(time.perf_counter() - started, device)
                progress_frac = max(progress_frac, elapsed / budget_s)
                if progress_frac >= 1.0 and losses:
                    break
            for g in optim.param_groups:
                g["lr"] = lr_at(gstep, progress_frac, sched)
            timed = TIMED_STEPS[0] <= steps_done < TIMED_STEPS[1]
            ta = _sync_clock(device, timed)
            x, target, brain_known = sampler.sample(cfg.batch_size)
            tb = _sync_clock(device, timed)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = model_loss(logits, target, brain_known, cfg.brain_weight)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            losses.append(loss.item())
            if timed:
                timing["data_s"] += tb - ta
                timing["step_s"] += _sync_clock(device, True) - tb
            steps_done += 1
            if progress:
                progress(gstep + 1, total_steps, {"loss": losses[-1]})
        if not losses:
            break
        metrics = {
            "epoch": epoch,
            "train_loss": dist.mean(float(np.mean(losses)), device),
            "steps": steps_done,
            "seconds": time.perf_counter() - t0,
        }
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        n_timed = max(min(steps_done, TIMED_STEPS[1]) - TIMED_STEPS[0], 0)
        meta = {
            "train": asdict(cfg),
            "data": data_recipe,
            "epoch": epoch,
            "steps": steps_done,
            "train_seconds": time.perf_counter() - started,
            "history": history,
            "step_timing": {k: v / n_timed for k, v in timing.items()} if n_timed else None,
            "distributed": scaling,
        }
        if dist.is_main():
            save_checkpoint(net, last, meta)
            _save_optim_state(optim, out_dir)
        if budget_s and dist.from_main(time.perf_counter() - started, device) > budget_s:
            break
    if not meta:
        raise InputError(f"{out_dir}: training ran no step (already at --epochs {cfg.epochs}?)")
    meta["distributed"] = {**scaling, "weight_spread": dist.weight_spread(net, device)}
    if dist.is_main():
        if held is not None:
            meta["holdout_scores"] = predict_holdout(
                net, held, device, cfg.batch_size, out_dir / "holdout.npz"
            )
            log.info("held-out fold %d: %s", cfg.holdout_fold, meta["holdout_scores"])
        save_checkpoint(net, final, meta)
    dist.barrier()
    return final


def _sync_clock(device: torch.device, sync: bool) -> float:
    """perf_counter, after the device's queued work when ``sync`` (to time data and compute apart)."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
