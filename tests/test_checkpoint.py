"""Checkpoints are safetensors + JSON; tampering and mismatches are refused with one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from mhunet_deploy.checkpoint import default_checkpoint, load_checkpoint, read_meta, save_checkpoint
from mhunet_deploy.errors import InputError
from mhunet_deploy.model.mamba_hunet import ModelConfig, build_model

TINY = ModelConfig(embed_dim=8, depths=(1, 1, 1, 1), stem_channels=4)


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = build_model(TINY).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta["note"] == "x" and meta["config"]["embed_dim"] == 8
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_packaged_weights_are_light_and_intact() -> None:
    meta = read_meta(default_checkpoint())
    assert meta["config"]["name"] == "light"
    model, _ = load_checkpoint()  # verifies the sha256 recorded in the sidecar
    assert not model.training


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10] + b"0123456789"), "do not match the sha256"),
        (lambda p: p.with_suffix(".json").unlink(), "sidecar missing"),
        (lambda p: p.with_suffix(".json").write_text("{"), "not valid JSON"),
        (lambda p: p.with_suffix(".json").write_text(json.dumps({"format": "x"})), "not an mhunet"),
    ],
)
def test_damaged_checkpoints_are_refused(tmp_path, damage, message) -> None:
    path = save_checkpoint(build_model(TINY), tmp_path / "m.safetensors", {})
    damage(path)
    with pytest.raises(InputError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_pickles_are_not_checkpoints(tmp_path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(InputError, match=r"\.safetensors"):
        read_meta(path)
