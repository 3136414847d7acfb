"""A toy training pack and the tiny model config the training tests (and the DDP worker) train."""

from __future__ import annotations

import numpy as np

from mhunet_deploy.data import Pack, PackPart
from tests import tiny_model

TINY = {**tiny_model.TINY, "img_size": 64}


def toy_pack(rng: np.random.Generator, subjects: int = 4, size: int = 64) -> Pack:
    """Bright squares on noise, one volume per subject, fold = subject index; the last brain unknown."""
    parts = []
    for s in range(subjects):
        image = rng.integers(60, 90, (4, size, size)).astype(np.uint8)
        lesion = np.zeros((4, size, size), np.uint8)
        lesion[:2, 20:30, 20:30] = 1
        image[lesion > 0] = 220
        brain = np.zeros_like(lesion)
        brain[:, 8:56, 8:56] = 1
        known = s < subjects - 1
        info = {
            "lo": -2.0, "hi": 4.0, "brain_known": known, "skull_on": True, "grid": f"g{s}", "slice_mm": 1.0,
            "voxel_mm3": 1.0, "case": f"c{s}", "subject": f"s{s}", "domain": "toy", "fold": s, "kind": "real",
        }  # fmt: skip
        parts.append(PackPart(image, lesion, brain if known else 0 * brain, np.ones(4, bool), info))
    return Pack.from_parts(parts)
