"""Checkpoints: safetensors weights + a JSON sidecar (config, data recipe, metrics, git commit).

Never pickles: a checkpoint from a colleague or the internet cannot run code on load. The JSON side
reads without torch, so the runtime can name the model and its hash on onnxruntime/TensorRT alone.
"""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .files import atomic_write, read_tagged_json, sha256_file

if TYPE_CHECKING:
    from .model.mamba_hunet import MambaHUNet

FORMAT = "mhunet-checkpoint/1"


def default_checkpoint() -> Path:
    """The packaged `light` weights that `mhunet infer` uses when no --checkpoint is given."""
    return Path(str(resources.files("mhunet_deploy") / "weights" / "light.safetensors"))


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def git_commit() -> str | None:
    """The commit of the source tree that trained a model, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_meta(path: Path) -> dict[str, Any]:
    """Read a checkpoint's JSON sidecar, checking that the weights file beside it exists."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a checkpoint is a .safetensors file with a .json beside it")
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass --checkpoint PATH to a .safetensors file")
    fix = "restore it from the training run (it holds the model config)"
    return read_tagged_json(sidecar(path), FORMAT, "checkpoint sidecar", fix, InputError)


def save_checkpoint(model: MambaHUNet, path: Path, meta: dict[str, Any]) -> Path:
    """Write weights and sidecar atomically; the sidecar records the weights' sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    full = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "sha256": sha256_file(path),
        "git_commit": git_commit(),
        **meta,
    }
    atomic_write(sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(full, indent=2) + "\n"))
    return path


def load_checkpoint(path: Path | None = None, device: str = "cpu") -> tuple[MambaHUNet, dict[str, Any]]:
    """Load a model in eval mode; refuses weights whose hash differs from the sidecar's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model.mamba_hunet import ModelConfig, build_model

    path = Path(path) if path else default_checkpoint()
    meta = read_meta(path)
    if sha256_file(path) != meta.get("sha256"):
        raise InputError(f"{path}: weights do not match the sha256 in their sidecar; the file is corrupt")
    model = build_model(ModelConfig.from_dict(meta["config"]))
    try:
        state = load_file(str(path), device=device)
    except SafetensorError as e:
        raise InputError(f"{path}: unreadable safetensors file ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not fit config {meta['config'].get('name')!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    return model.to(device).eval(), meta
