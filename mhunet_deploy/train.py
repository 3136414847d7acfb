"""`mhunet train`: Dice + BCE, AdamW, warm-up + cosine schedule, AMP on CUDA, resumable.

The training loop sees the same slices that inference sees: the data module runs every volume through
the inference preprocessing (reorient, resample, normalise), so nothing differs between the two but
the augmentation.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import save_checkpoint
from .data import SliceSet
from .errors import InputError
from .model.mamba_hunet import CONFIGS, ModelConfig, build_model
from .volume_io import atomic_write

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings; stored in the checkpoint's JSON."""

    model: str = "light"
    epochs: int = 30
    steps_per_epoch: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    lesion_fraction: float = 0.6
    #: Train on crop x crop patches of the 256 x 256 slices (None: whole slices).
    crop: int | None = 128
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    #: Wall-clock budget: the cosine schedule runs over it and training stops when it is spent, so a
    #: run fits a fixed GPU lease whatever the step time turns out to be.
    max_minutes: float | None = None


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the batch (as one region, so empty slices don't dominate) + BCE."""
    prob = torch.sigmoid(logits.float())
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    return dice + bce


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """On-device augmentation per batch: flips, 90-degree turns, intensity gamma/scale/shift, noise."""
    if torch.rand((), generator=gen) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand((), generator=gen) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    b = x.shape[0]
    dev = x.device
    scale = (1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)).to(dev)
    shift = (0.15 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)).to(dev)
    noise = (0.05 * torch.rand(b, 1, 1, 1, generator=gen)).to(dev)
    x = x * scale + shift + noise * torch.randn_like(x)
    return x, y


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over steps, then cosine decay over ``progress`` (0..1 of the run)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _subject_batches(
    model: torch.nn.Module, xs: np.ndarray, ys: np.ndarray, device: torch.device, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, target) of one subject's slices, batch by batch, on ``device``."""
    for i in range(0, len(xs), batch):
        x = torch.from_numpy(xs[i : i + batch].astype(np.float32)).to(device)
        y = torch.from_numpy(ys[i : i + batch].astype(np.float32)).to(device)
        yield model(x).float(), y


@torch.no_grad()
def validate(model: torch.nn.Module, val: SliceSet, device: torch.device, batch: int) -> dict[str, float]:
    """Volume-level Dice per validation subject on the model grid, averaged; plus mean loss."""
    model.eval()
    dices, losses = [], []
    for _, xs, ys in val.subjects():
        inter = total = 0.0
        for logits, y in _subject_batches(model, xs, ys, device, batch):
            losses.append(float(dice_bce_loss(logits, y)))
            pred = (logits > 0).float()
            inter += float((pred * y).sum())
            total += float(pred.sum() + y.sum())
        dices.append(1.0 if total == 0 else 2 * inter / total)
    model.train()
    return {"val_dice": float(np.mean(dices)), "val_loss": float(np.mean(losses))}


#: Thresholds tried on the synthetic validation volumes after training (never on real test data).
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


@torch.no_grad()
def choose_threshold(
    model: torch.nn.Module, val: SliceSet, device: torch.device, batch: int
) -> dict[str, float]:
    """The probability threshold that maximises mean volume Dice on the validation subjects."""
    model.eval()
    scores = np.zeros(len(THRESHOLDS))
    count = 0
    for _, xs, ys in val.subjects():
        batches = _subject_batches(model, xs, ys, device, batch)
        prob = np.concatenate([torch.sigmoid(logits).cpu().numpy() for logits, _ in batches])
        truth = ys.astype(bool)
        for k, thr in enumerate(THRESHOLDS):
            pred = prob >= thr
            denom = pred.sum() + truth.sum()
            scores[k] += 1.0 if denom == 0 else 2.0 * (pred & truth).sum() / denom
        count += 1
    model.train()
    best = int(np.argmax(scores))
    return {"threshold": THRESHOLDS[best], "val_dice_at_threshold": float(scores[best] / max(count, 1))}


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def train(
    cfg: TrainConfig,
    train_set: SliceSet,
    val_set: SliceSet,
    out_dir: Path,
    data_recipe: dict[str, Any],
    model_config: ModelConfig | None = None,
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> Path:
    """Train and write ``out_dir/best.safetensors`` (+ ``last`` for resuming). Returns the best path."""
    device = pick_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(model_config or CONFIGS[cfg.model]).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    log.info(
        "training %s (%d parameters) on %s%s; %d training and %d validation slices",
        model.config.name,
        sum(p.numel() for p in model.parameters()),
        device,
        " with bf16 autocast" if use_amp else "",
        len(train_set),
        len(val_set),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last, best = out_dir / "last.safetensors", out_dir / "best.safetensors"
    start_epoch, best_dice, history = 0, -1.0, []
    if resume and last.exists():
        from safetensors.torch import load_file

        from .checkpoint import load_checkpoint

        loaded, meta = load_checkpoint(last, device=str(device))
        model.load_state_dict(loaded.state_dict())
        opt_js = json.loads((out_dir / "last_optim.json").read_text())
        _load_optim_state(optim, load_file(str(out_dir / "last_optim.safetensors")), opt_js)
        start_epoch, best_dice, history = meta["epoch"] + 1, meta["best_val_dice"], meta["history"]
        gen.manual_seed(cfg.seed + start_epoch)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    started = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        losses = []
        for step in range(cfg.steps_per_epoch):
            gstep = epoch * cfg.steps_per_epoch + step
            progress_frac = gstep / total_steps
            if budget_s:
                progress_frac = max(progress_frac, (time.perf_counter() - started) / budget_s)
                if progress_frac >= 1.0 and losses:
                    break
            for g in optim.param_groups:
                g["lr"] = lr_at(gstep, progress_frac, cfg)
            xb, yb = train_set.sample(cfg.batch_size, cfg.lesion_fraction, gen, cfg.crop)
            x = torch.from_numpy(xb).to(device, non_blocking=True).float()
            y = torch.from_numpy(yb).to(device, non_blocking=True).float()
            x, y = augment(x, y, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = dice_bce_loss(logits, y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            losses.append(loss.item())
            if progress:
                progress(gstep + 1, total_steps, {"loss": losses[-1]})
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        metrics.update(validate(model, val_set, device, cfg.batch_size))
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        meta = {
            "train": asdict(cfg),
            "data": data_recipe,
            "epoch": epoch,
            "history": history,
            "metrics": metrics,
        }
        if metrics["val_dice"] > best_dice:
            best_dice = metrics["val_dice"]
            save_checkpoint(model, best, {**meta, "best_val_dice": best_dice})
            log.info("epoch %d: new best val Dice %.4f, wrote %s", epoch, best_dice, best)
        save_checkpoint(model, last, {**meta, "best_val_dice": best_dice})
        _save_optim_state(optim, out_dir)
        if budget_s and time.perf_counter() - started > budget_s:
            break
    if not best.exists():
        raise InputError(f"{out_dir}: training ran no epoch (already at --epochs {cfg.epochs}?)")
    from .checkpoint import load_checkpoint, read_meta

    best_model, _ = load_checkpoint(best, device=str(device))
    post = choose_threshold(best_model, val_set, device, cfg.batch_size)
    meta = read_meta(best)
    meta = {k: v for k, v in meta.items() if k not in ("format", "config", "sha256", "git_commit")}
    save_checkpoint(best_model, best, {**meta, "postprocess": post})
    log.info("post-processing chosen on validation: %s", post)
    return best
