"""Training batches drawn and augmented on the training device, from a pack that lives there.

The previous loader cut patches in numpy on the CPU and copied them over for every step; here the whole
pack (a few hundred MB of uint8) sits on the GPU and each batch is a handful of batched tensor ops, so
the model, not the data path, sets the step time.

Each augmentation targets a domain gap between the 16 real scans and what the tool meets next to a
scanner, and each can be switched off by name (``AugmentConfig.disabled``) so its effect is measured by
cross-validation rather than assumed:

- ``paste``: lesions pasted onto real backgrounds, CarveMix-style. On the MNI grid (same grid, same
  slice index: the anatomy lines up) either the 27 Lesjak lesion masks painted at a FLAIR lesion level
  drawn from the real lesions' measured contrast (mean brain + 1.4-2.4 SD), or the real lesions and their
  surroundings of another subject's slice; elsewhere another subject's real lesion slice of the same
  domain, at the same in-plane position, kept inside the recipient's brain.
- ``strip``: skull off, for skull-on scans with a known brain mask (re-standardised over the brain as
  inference standardises a skull-stripped scan).
- ``lowres``: in-plane resolution loss (0.5-0.9 mm scans are resampled to the 1 mm grid; 1.5 T clinical
  scans are blurrier).
- ``bias``: a smooth multiplicative field (receive-coil shading).
- ``gamma``: contrast curve, plus global scale, shift and noise (``intensity``).
- ``spatial``: rotation, scale and left-right flips before the crop.
Thick slices come from the pack itself: every 1 mm scan is also packed as 5 and 7 mm acquisitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .data import Pack

AUGMENTATIONS = ("paste", "strip", "lowres", "bias", "gamma", "intensity", "spatial")


@dataclass(frozen=True)
class AugmentConfig:
    """Sampling and augmentation settings; stored in the checkpoint's JSON."""

    crop: int = 128
    #: Fraction of each batch drawn from synthetic volumes (when the pack has any).
    synthetic_fraction: float = 0.25
    #: Fraction of each group (real, synthetic) drawn from slices that hold lesions.
    lesion_fraction: float = 0.6
    p_paste: float = 0.3
    p_strip: float = 0.25
    p_lowres: float = 0.2
    p_bias: float = 0.5
    p_gamma: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    disabled: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = set(self.disabled) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; known: {', '.join(AUGMENTATIONS)}")

    def on(self, name: str) -> bool:
        return name not in self.disabled


def _pools(keys: np.ndarray, values: np.ndarray) -> dict:
    """key -> array of ``values`` with that key (donor look-up tables)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return {k[0]: v for k, v in zip(np.split(keys, cuts), np.split(values, cuts), strict=True) if len(k)}


class BatchSampler:
    """Draws augmented (image, target, brain weight) batches from a pack held on ``device``."""

    def __init__(self, pack: Pack, device: torch.device, cfg: AugmentConfig, seed: int) -> None:
        self.cfg, self.device = cfg, device
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.image = torch.from_numpy(pack.image).to(device)
        self.lesion = torch.from_numpy(pack.lesion).to(device)
        self.brain = torch.from_numpy(pack.brain).to(device)
        lo, hi = pack.column("lo").astype(np.float32), pack.column("hi").astype(np.float32)
        self.lo = torch.from_numpy(lo).to(device)
        self.step = torch.from_numpy((hi - lo) / 255.0).to(device)
        self.brain_known = pack.column("brain_known").astype(bool)
        self.skull_on = pack.column("skull_on").astype(bool)
        synthetic = pack.column("kind") == "synthetic"
        has_lesion = pack.lesion.reshape(len(pack), -1).any(axis=1)
        usable = pack.anatomy
        self.pools = {
            (syn, les): np.flatnonzero(usable & (synthetic == syn) & (has_lesion if les else True))
            for syn in (False, True)
            for les in (False, True)
        }
        real_les = np.flatnonzero(has_lesion & ~synthetic)
        self.subject = pack.column("subject")
        grid_z = np.char.add(pack.column("grid").astype(str), np.char.mod("/%d", pack.z))
        self.grid_z = grid_z
        self.domain = pack.column("domain")
        self.same_grid = _pools(grid_z[real_les], real_les)
        self.same_domain = _pools(self.domain[real_les], real_les)
        self.paint = None
        if pack.paint is not None and len(pack.paint["mask"]):
            self.paint = torch.from_numpy(pack.paint["mask"]).to(device)
            paint_key = np.char.add(pack.paint["grid"].astype(str), np.char.mod("/%d", pack.paint["z"]))
            self.paint_at = _pools(paint_key, np.arange(len(paint_key)))

    def _draw(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice indices and whether each was drawn from the lesion pool."""
        cfg = self.cfg
        has_real, has_syn = len(self.pools[False, False]) > 0, len(self.pools[True, False]) > 0
        n_syn = batch if not has_real else int(round(batch * cfg.synthetic_fraction)) if has_syn else 0
        idx, lesion_pool = [], []
        for syn, n in ((False, batch - n_syn), (True, n_syn)):
            les_pool, any_pool = self.pools[syn, True], self.pools[syn, False]
            if n == 0 or not len(any_pool):
                continue
            n_les = int(round(n * cfg.lesion_fraction)) if len(les_pool) else 0
            idx += [self.rng.choice(les_pool, n_les), self.rng.choice(any_pool, n - n_les)]
            lesion_pool += [np.ones(n_les, bool), np.zeros(n - n_les, bool)]
        return np.concatenate(idx), np.concatenate(lesion_pool)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 1, C, C) z-scores, target (B, 2, C, C) lesion and brain, brain weight (B,) 0/1."""
        cfg = self.cfg
        idx_np, from_lesions = self._draw(batch)
        idx = torch.from_numpy(idx_np).to(self.device)
        bg = self.lo[idx][:, None, None]
        x = self.image[idx].float() * self.step[idx][:, None, None] + bg
        les = self.lesion[idx].float()
        brain = self.brain[idx].float()
        known = self.brain_known[idx_np].copy()
        if cfg.on("paste"):
            self._paste(idx_np, x, les, brain, bg[:, 0, 0])
        if cfg.on("strip"):
            x = self._strip(idx_np, x, brain, bg)
        x, les, brain = self._crop(x[:, None], les[:, None], brain[:, None], bg, from_lesions)
        x = self._intensity(x, bg)
        target = torch.cat([(les >= 0.5).float(), (brain >= 0.5).float()], dim=1)
        return x, target, torch.from_numpy(known.astype(np.float32)).to(self.device)

    def _paste(
        self, idx: np.ndarray, x: torch.Tensor, les: torch.Tensor, brain: torch.Tensor, bg: torch.Tensor
    ) -> None:
        """In place: CarveMix a donor's lesions (or paint a Lesjak mask) into some real slices."""
        for b in np.flatnonzero(self.rng.random(len(idx)) < self.cfg.p_paste):
            i = idx[b]
            if self.skull_on[i] and not self.brain_known[i]:
                continue  # nowhere known to keep the lesion inside
            inside = brain[b] > 0 if self.brain_known[i] else x[b] > bg[b] + 0.5
            key = self.grid_z[i]
            if self.paint is not None and key in self.paint_at and self.rng.random() < 0.5:
                self._paint(b, self.paint[self.rng.choice(self.paint_at[key])].float(), x, les, inside)
                continue
            donors = self.same_grid.get(key, self.same_domain.get(self.domain[i], np.empty(0, int)))
            donors = donors[self.subject[donors] != self.subject[i]]
            if not len(donors):
                continue
            d = int(self.rng.choice(donors))
            radius = int(self.rng.integers(2, 7))
            region = F.max_pool2d(self.lesion[d][None, None].float(), 2 * radius + 1, 1, radius)[0, 0] > 0
            region &= inside
            donor = self.image[d].float() * self.step[d] + self.lo[d]
            x[b] = torch.where(region, donor, x[b])
            les[b] = torch.where(region, self.lesion[d].float(), les[b])

    def _paint(
        self, b: int, mask: torch.Tensor, x: torch.Tensor, les: torch.Tensor, inside: torch.Tensor
    ) -> None:
        mask = mask * inside
        if mask.sum() < 1 or inside.sum() < 100:
            return
        tissue = x[b][inside]
        level = tissue.mean() + float(self.rng.uniform(1.4, 2.4)) * tissue.std()
        texture = 1 + 0.1 * torch.randn(x[b].shape, generator=self.gen, device=self.device)
        soft = F.avg_pool2d(mask[None, None], 3, 1, 1)[0, 0]
        x[b] = torch.maximum(x[b], x[b] + soft * (level * texture - x[b]))
        les[b] = torch.maximum(les[b], mask)

    def _strip(self, idx: np.ndarray, x: torch.Tensor, brain: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """Skull off: keep the brain, re-standardise it over the brain (as `prepare` would a stripped
        scan), background at a clip floor drawn from the skull-stripped scans' range."""
        pick = np.flatnonzero(
            self.skull_on[idx] & self.brain_known[idx] & (self.rng.random(len(idx)) < self.cfg.p_strip)
        )
        for b in pick:
            inside = brain[b] > 0
            if inside.sum() < 100:
                continue
            tissue = x[b][inside]
            floor = -float(self.rng.uniform(2.4, 3.5))
            z = ((x[b] - tissue.mean()) / tissue.std().clamp_min(1e-3)).clamp_min(floor)
            x[b] = torch.where(inside, z, torch.full_like(z, floor))
            bg[b] = floor
        return x

    def _crop(
        self,
        x: torch.Tensor,
        les: torch.Tensor,
        brain: torch.Tensor,
        bg: torch.Tensor,
        from_lesions: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One grid_sample: rotate, scale, flip and cut a crop x crop patch around a lesion pixel (lesion
        pool) or a foreground pixel (the rest); outside the slice is its background."""
        cfg = self.cfg
        n, _, size, _ = x.shape
        crop = min(cfg.crop, size)
        weight = (x[:, 0] > bg[:, :, :1] + 0.1).flatten(1).float() + 1e-6
        on_lesion = torch.from_numpy(from_lesions).to(self.device)[:, None]
        lesion_w = les[:, 0].flatten(1)
        weight = torch.where(on_lesion & (lesion_w.sum(1, keepdim=True) > 0), lesion_w + 1e-9, weight)
        centre = torch.multinomial(weight, 1, generator=self.gen)[:, 0]
        cy, cx = (centre // size).float(), (centre % size).float()
        jitter = (torch.rand(n, 2, generator=self.gen, device=self.device) - 0.5) * crop * 0.6
        cy, cx = cy + jitter[:, 0], cx + jitter[:, 1]
        spatial = cfg.on("spatial")
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=self.gen, device=self.device)  # noqa: E731
        angle = u(-1.0, 1.0) * math.radians(cfg.rotate_deg) if spatial else torch.zeros(n, device=self.device)
        zoom = u(*cfg.scale) if spatial else torch.ones(n, device=self.device)
        flip = torch.where(u(0.0, 1.0) < 0.5, -1.0, 1.0) if spatial else torch.ones(n, device=self.device)
        half = crop / size / zoom  # output [-1, 1] spans crop/zoom input pixels
        cos, sin = torch.cos(angle) * half, torch.sin(angle) * half
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, (2 * cx + 1) / size - 1], 1),
                torch.stack([sin * flip, cos, (2 * cy + 1) / size - 1], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [n, 1, crop, crop], align_corners=False)
        stacked = torch.cat([x - bg[:, None], les, brain], 1)
        out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out[:, :1] + bg[:, None], out[:, 1:2], out[:, 2:3]

    def _intensity(self, x: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n, _, crop, _ = x.shape
        dev, gen = self.device, self.gen
        bg = bg[:, None]
        rand = lambda *shape: torch.rand(*shape, generator=gen, device=dev)  # noqa: E731
        if cfg.on("lowres"):
            pick = torch.nonzero(rand(n) < cfg.p_lowres)[:, 0]
            if len(pick):
                factor = float(1.5 + 1.5 * self.rng.random())
                small = F.interpolate(x[pick], scale_factor=1 / factor, mode="area")
                x[pick] = F.interpolate(small, size=(crop, crop), mode="bilinear", align_corners=False)
        if cfg.on("bias"):
            sigma = 0.25 * rand(n, 1, 1, 1) * (rand(n, 1, 1, 1) < cfg.p_bias)
            coarse = torch.randn(n, 1, 3, 3, generator=gen, device=dev) * sigma
            field = F.interpolate(coarse, size=(crop, crop), mode="bicubic", align_corners=True)
            x = bg + (x - bg) * torch.exp(field)
        if cfg.on("gamma"):
            top = x.flatten(1).amax(1)[:, None, None, None]
            span = (top - bg).clamp_min(1e-3)
            gamma = torch.exp(0.3 * (2 * rand(n, 1, 1, 1) - 1))
            gamma = torch.where(rand(n, 1, 1, 1) < cfg.p_gamma, gamma, torch.ones_like(gamma))
            x = bg + span * ((x - bg) / span).clamp(0, 1) ** gamma
        if cfg.on("intensity"):
            scale = 1 + 0.1 * (2 * rand(n, 1, 1, 1) - 1)
            shift = 0.1 * (2 * rand(n, 1, 1, 1) - 1)
            noise = 0.05 * rand(n, 1, 1, 1)
            x = x * scale + shift + noise * torch.randn(x.shape, generator=gen, device=dev)
        return x
