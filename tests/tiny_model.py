"""One tiny checkpoint exported once per test session, shared by the export/backend/verify tests.

Exporting costs ~10 s on two cores, so every test that needs graphs reuses this one export.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "stem_channels": 4}
PATIENT26 = Path(__file__).resolve().parent.parent.parent / "shared/data/open_ms/patient26/FLAIR.nii.gz"


def save_tiny(path: Path, seed: int = 0) -> Path:
    """A freshly initialised tiny model saved as a checkpoint (eval-mode BatchNorm statistics)."""
    import torch

    from mhunet_deploy.checkpoint import save_checkpoint
    from mhunet_deploy.model.mamba_hunet import ModelConfig, build_model

    torch.manual_seed(seed)
    return save_checkpoint(build_model(ModelConfig(**TINY)), path, {})


@functools.cache
def tiny_export() -> tuple[Path, Path]:
    """(checkpoint, export dir) of the session's tiny model, exported with `export_graphs`."""
    from mhunet_deploy.exporting.exporter import export_graphs

    root = Path(tempfile.mkdtemp(prefix="mhunet-tiny-"))
    ckpt = save_tiny(root / "tiny.safetensors")
    export_graphs(ckpt, root / "export")
    return ckpt, root / "export"
