"""Training data: volumes (synthetic or nnU-Net-style real pairs) -> model-grid slices, split by subject.

Every volume goes through `preprocess.prepare`, the very function `mhunet infer` uses, and its label
through the same geometry (nearest neighbour), so training and inference see identical slices.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputError
from .preprocess import prepare
from .volume_io import Volume, load_volume, volume_from_image

#: Slices whose image has less than this fraction of foreground carry no anatomy worth training on.
MIN_FOREGROUND_FRACTION = 0.02
VAL_FRACTION = 0.15


@dataclass
class SliceSet:
    """Model-grid slices of several subjects: images fp16 (S,1,G,G), masks uint8, subject index."""

    images: np.ndarray
    masks: np.ndarray
    subject: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def sample(
        self, batch: int, lesion_fraction: float, gen: Any, crop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch where about ``lesion_fraction`` of slices contain lesion (class-balanced sampling).

        With ``crop``, each slice is cut to crop x crop (nnU-Net-style patch training: the scan's
        cost grows with H*W, so patches buy many more samples per second); lesion-sampled slices
        are cut around a random lesion voxel, the others at random.
        """
        import torch

        has = self._lesion_index()
        n_les = int(round(batch * lesion_fraction)) if len(has) else 0
        pick_les = has[torch.randint(len(has), (n_les,), generator=gen).numpy()] if n_les else []
        pick_any = torch.randint(len(self), (batch - n_les,), generator=gen).numpy()
        idx = np.concatenate([np.asarray(pick_les, dtype=np.int64), pick_any])
        if crop is None:
            return self.images[idx], self.masks[idx]
        size = self.images.shape[-1]
        rand = torch.rand((len(idx), 3), generator=gen).numpy()
        xs = np.empty((len(idx), 1, crop, crop), self.images.dtype)
        ys = np.empty((len(idx), 1, crop, crop), self.masks.dtype)
        for k, i in enumerate(idx):
            lesion = np.argwhere(self.masks[i, 0]) if k < n_les else np.empty((0, 2))
            if len(lesion):
                cy, cx = lesion[int(rand[k, 0] * len(lesion))]
                jitter = (rand[k, 1:] - 0.5) * crop * 0.8
                y0, x0 = (int(cy + jitter[0]) - crop // 2, int(cx + jitter[1]) - crop // 2)
            else:
                y0, x0 = (int(r * (size - crop + 1)) for r in rand[k, 1:])
            y0, x0 = (min(max(v, 0), size - crop) for v in (y0, x0))
            xs[k] = self.images[i, :, y0 : y0 + crop, x0 : x0 + crop]
            ys[k] = self.masks[i, :, y0 : y0 + crop, x0 : x0 + crop]
        return xs, ys

    def _lesion_index(self) -> np.ndarray:
        if not hasattr(self, "_has"):
            self._has = np.flatnonzero(self.masks.reshape(len(self), -1).any(axis=1))
        return self._has

    def subjects(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Each subject's slices in order, for volume-level validation."""
        for i, name in enumerate(self.names):
            sel = self.subject == i
            if sel.any():
                yield name, self.images[sel], self.masks[sel]

    @classmethod
    def concat(cls, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> SliceSet:
        if not parts:
            return cls(
                np.zeros((0, 1, 256, 256), np.float16), np.zeros((0, 1, 256, 256), np.uint8), np.zeros(0), []
            )
        names = [p[0] for p in parts]
        subject = np.concatenate([np.full(len(p[1]), i, dtype=np.int32) for i, p in enumerate(parts)])
        return cls(
            np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]), subject, names
        )


def volume_to_slices(
    volume: Volume, label: np.ndarray, max_slices: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess like inference; keep slices with anatomy (at most ``max_slices``, drawn at random
    so that many volumes fit in memory). Returns fp16 images and uint8 masks."""
    slices, geometry = prepare(volume)
    masks = (geometry.to_model_grid(label.astype(np.float32), order=0) > 0.5).astype(np.uint8)
    flat = slices.reshape(len(slices), -1)
    background = flat.min(axis=1, keepdims=True)
    keep = ((flat > background + 1e-3).mean(axis=1) >= MIN_FOREGROUND_FRACTION) | masks.reshape(
        len(masks), -1
    ).any(axis=1)
    idx = np.flatnonzero(keep)
    if max_slices is not None and len(idx) > max_slices:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_slices, replace=False))
    return slices[idx].astype(np.float16), masks[idx]


@lru_cache(maxsize=2)
def _source(source_dir: Path) -> Any:
    """One template/mask load per worker process, not one per generated volume."""
    from .synth import SynthSource

    return SynthSource.load(source_dir)


def _synth_job(
    args: tuple[Path, str, int, float | None, int | None],
) -> tuple[str, np.ndarray, np.ndarray, dict]:
    from .synth import synth_volume

    source_dir, subject, seed, spacing, max_slices = args
    recipe = {"spacing": (spacing, spacing)} if spacing else {}
    image, mask = synth_volume(_source(source_dir), subject, seed, **recipe)
    xs, ys = volume_to_slices(volume_from_image(image), np.asarray(mask.dataobj), max_slices, seed)
    return f"{subject}-s{seed}", xs, ys, {"subject": subject, "seed": seed}


def synthetic_parts(
    source_dir: Path,
    subjects: list[str],
    volumes: int,
    seed: int,
    spacing: float | None,
    workers: int,
    max_slices: int | None = None,
    on_volume: Callable[[], None] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Generate ``volumes`` synthetic volumes, cycling over the given lesion-mask subjects."""
    jobs = [
        (source_dir, subjects[i % len(subjects)], seed * 100_000 + i, spacing, max_slices)
        for i in range(volumes)
    ]
    parts = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_synth_job, jobs)
            for name, xs, ys, _ in results:
                parts.append((name, xs, ys))
                if on_volume:
                    on_volume()
    else:
        for job in jobs:
            name, xs, ys, _ = _synth_job(job)
            parts.append((name, xs, ys))
            if on_volume:
                on_volume()
    return parts


def nnunet_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for nnU-Net naming: imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz."""
    images, labels = folder / "imagesTr", folder / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise InputError(f"{folder}: expected imagesTr/ and labelsTr/ (nnU-Net layout)")
    pairs = []
    for img in sorted(images.glob("*_0000.nii*")):
        case = re.sub(r"_0000\.nii(\.gz)?$", "", img.name)
        lab = next((p for p in (labels / f"{case}.nii.gz", labels / f"{case}.nii") if p.exists()), None)
        if lab is None:
            raise InputError(f"{img}: no label {case}.nii.gz in {labels}")
        pairs.append((case, img, lab))
    if len(pairs) < 2:
        raise InputError(f"{folder}: need at least 2 image/label pairs to split train/validation")
    return pairs


def split_subjects(names: list[str], seed: int, val_fraction: float = VAL_FRACTION) -> tuple[list, list]:
    """Deterministic split by subject, never by slice, so no subject leaks into validation."""
    order = np.random.default_rng(seed).permutation(sorted(names))
    n_val = max(1, int(round(len(order) * val_fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def build_sets(
    data: Path | None,
    synth_source: Path,
    volumes: int,
    spacing: float | None,
    seed: int,
    workers: int,
    max_slices: int | None = None,
    on_volume: Callable[[], None] | None = None,
) -> tuple[SliceSet, SliceSet, dict[str, Any]]:
    """Training and validation slices plus the recipe recorded in the checkpoint."""
    if data is not None:
        pairs = nnunet_pairs(Path(data))
        train_names, val_names = split_subjects([p[0] for p in pairs], seed)
        parts = []
        for case, img, lab in pairs:
            label = np.asarray(nib.load(lab).dataobj)
            xs, ys = volume_to_slices(load_volume(img), label, max_slices, seed)
            parts.append((case, xs, ys))
            if on_volume:
                on_volume()
        train = SliceSet.concat([p for p in parts if p[0] in train_names])
        val = SliceSet.concat([p for p in parts if p[0] in val_names])
        return train, val, {"kind": "nnunet", "folder": str(data), "train": train_names, "val": val_names}
    from .synth import SynthSource

    source = SynthSource.load(synth_source)
    train_subj, val_subj = split_subjects(source.subjects, seed)
    n_val = max(1, int(round(volumes * VAL_FRACTION)))
    train = synthetic_parts(
        synth_source, train_subj, volumes - n_val, seed, spacing, workers, max_slices, on_volume
    )
    val = synthetic_parts(synth_source, val_subj, n_val, seed + 1, spacing, workers, max_slices, on_volume)
    recipe = {
        "kind": "synthetic",
        "volumes": volumes,
        "spacing_mm": spacing,
        "max_slices_per_volume": max_slices,
        "seed": seed,
        "train_subjects": train_subj,
        "val_subjects": val_subj,
        "excluded": ["patient26"],
    }
    return SliceSet.concat(train), SliceSet.concat(val), recipe
