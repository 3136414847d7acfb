"""Session fixtures: the tiny model's checkpoints and its exported graphs, made once per test session.

Helpers that several test modules share live in helper modules beside this file (``tests.tiny_model``,
``tests.cli_helpers``, ``tests.corpus``, ...), never in a ``test_*.py`` module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import ONE, TWO, TinyExport, save_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny lesion-only checkpoint."""
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a brain output (lesion, brain)."""
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny2.safetensors", outputs=TWO)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> TinyExport:
    """``tiny_export(outputs=ONE)`` -> (checkpoint, export dir) of a tiny model with these outputs,
    exported with ``export_graphs`` on first use: once per output layout per session."""
    exports: dict[tuple[str, ...], tuple[Path, Path]] = {}

    def export(outputs: tuple[str, ...] = ONE) -> tuple[Path, Path]:
        key = tuple(outputs)  # one export per layout, however the call spells it
        if key not in exports:
            from mhunet_deploy.exporting.exporter import export_graphs

            root = tmp_path_factory.mktemp("tiny-export")
            ckpt = save_tiny(root / "tiny.safetensors", outputs=key)
            export_graphs(ckpt, root / "export")
            exports[key] = ckpt, root / "export"
        return exports[key]

    return export
