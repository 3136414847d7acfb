"""Tiny checkpoints exported once per test session, shared by the export/backend/verify tests.

Exporting costs ~10 s on two cores, so every test that needs graphs reuses one export per output
layout: lesion-only (``ONE``, what older checkpoints have) and lesion + brain (``TWO``, what the
packaged weights have). Import it
as ``tests.tiny_model`` only (``tests`` is a package, so pytest does not put ``tests/`` on sys.path): a
second name would be a second module with its own cache, and a second export.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "stem_channels": 4}
ONE = ("lesion",)
TWO = ("lesion", "brain")
PATIENT26 = Path(__file__).resolve().parent.parent.parent / "shared/data/open_ms/patient26/FLAIR.nii.gz"


def save_tiny(path: Path, seed: int = 0, outputs: tuple[str, ...] = ONE) -> Path:
    """A freshly initialised tiny model saved as a checkpoint (eval-mode BatchNorm statistics)."""
    import torch

    from mhunet_deploy.checkpoint import save_checkpoint
    from mhunet_deploy.model.mamba_hunet import ModelConfig, build_model

    torch.manual_seed(seed)
    return save_checkpoint(build_model(ModelConfig(**TINY, outputs=outputs)), path, {})


def tiny_export(outputs: tuple[str, ...] = ONE) -> tuple[Path, Path]:
    """(checkpoint, export dir) of the session's tiny model with these outputs, exported with
    `export_graphs` on first use."""
    return _export(tuple(outputs))  # one cache key per layout, however the call spells it


@functools.cache
def _export(outputs: tuple[str, ...]) -> tuple[Path, Path]:
    from mhunet_deploy.exporting.exporter import export_graphs

    root = Path(tempfile.mkdtemp(prefix="mhunet-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    ckpt = save_tiny(root / "tiny.safetensors", outputs=outputs)
    export_graphs(ckpt, root / "export")
    return ckpt, root / "export"
