"""The tiny model the tests run: its config, output layouts and checkpoint writer.

The session fixtures built from it live in ``tests/conftest.py``: ``tiny`` and ``tiny_two`` (checkpoints)
and ``tiny_export`` (graphs exported once per session per output layout: lesion-only ``ONE``, what the
packaged weights had first, and lesion + brain ``TWO``; an export costs ~10 s on two cores).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "stem_channels": 4}
ONE = ("lesion",)
TWO = ("lesion", "brain")
PATIENT26 = Path(__file__).resolve().parent.parent.parent / "shared/data/open_ms/patient26/FLAIR.nii.gz"

#: The ``tiny_export`` fixture: outputs -> (checkpoint, export dir) of the session's tiny model.
TinyExport = Callable[..., tuple[Path, Path]]


def save_tiny(path: Path, seed: int = 0, outputs: tuple[str, ...] = ONE) -> Path:
    """A freshly initialised tiny model saved as a checkpoint (eval-mode BatchNorm statistics)."""
    import torch

    from mhunet_deploy.checkpoint import save_checkpoint
    from mhunet_deploy.model.mamba_hunet import ModelConfig, build_model

    torch.manual_seed(seed)
    return save_checkpoint(build_model(ModelConfig(**TINY, outputs=outputs)), path, {})
