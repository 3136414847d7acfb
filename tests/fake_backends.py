"""Backends that stand in for a model where the test is about the pipeline around it, not the model."""

from __future__ import annotations

import numpy as np


class EverywhereLesion:
    """A backend that calls every voxel lesion, so the report's one lesion is the whole scan."""

    name = "everywhere"
    precision = "fp32"
    outputs = ("lesion",)
    batch_size = 8
    array_device = "cpu"

    def __init__(self, engine_key: dict | None = None) -> None:
        self.engine_key = engine_key

    def predict(self, slices: np.ndarray) -> np.ndarray:
        return np.full(slices.shape, 30.0, dtype=np.float32)
