"""Engine builder: an ahead-of-time TensorRT-RTX build on the CPU, and the cache's stale/foreign rules."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mhunet_deploy.engine.build import ensure_engine
from mhunet_deploy.errors import BackendError
from tests.tiny_model import TWO, TinyExport

needs_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx") is None,
    reason="tensorrt_rtx not importable (pip install 'mhunet-deploy[rtx]', i.e. tensorrt-rtx-cu13)",
)
#: An RTX target (Ampere, CC 8.6) chosen explicitly, so the build needs no GPU.
AOT_TARGET = ("SM86",)


@pytest.fixture
def aot_build(tiny_export: TinyExport) -> Callable[[Path], tuple[Path, dict]]:
    """``aot_build(engines)``: the tiny graph's TensorRT-RTX engine for AOT_TARGET in that folder."""
    ckpt, export = tiny_export()
    return lambda engines: ensure_engine(
        "tensorrt-rtx", ckpt, "fp16", export, engines, compute_capabilities=AOT_TARGET
    )


@needs_rtx
def test_rtx_aot_build_is_cached_rebuilt_when_stale_and_refused_when_foreign(
    tmp_path: Path, aot_build
) -> None:
    path, sidecar = aot_build(tmp_path)
    assert path.stat().st_size > 0 and sidecar["key"]["target"] == {"compute_capabilities": ["SM86"]}
    assert sidecar["key"]["precision"] == "fp16"
    assert sidecar["key"]["profile"] == {"min": 1, "opt": 8, "max": 32}
    built = path.stat().st_mtime_ns
    aot_build(tmp_path)
    assert path.stat().st_mtime_ns == built  # fresh: reused, not rebuilt

    meta = path.with_suffix(".json")
    foreign = json.loads(meta.read_text())
    foreign["key"]["library_version"] = "0.9"
    meta.write_text(json.dumps(foreign))
    with pytest.raises(BackendError, match="another machine.*library_version"):
        aot_build(tmp_path)


@needs_rtx
def test_stale_engine_is_rebuilt(tmp_path: Path, aot_build) -> None:
    stale = tmp_path / "light_portable_fp16.tensorrt-rtx.engine"
    stale.write_bytes(b"not an engine")  # no sidecar: cannot be trusted
    path, sidecar = aot_build(tmp_path)
    assert path == stale and sidecar["rebuilt_because"] == "stale" and path.read_bytes() != b"not an engine"


@needs_rtx
def test_rtx_network_carries_every_output_channel(tiny_export: TinyExport) -> None:
    """The network TensorRT-RTX parses from a lesion + brain graph outputs both channels, which is the
    engine output shape the TensorRT backend sizes its buffers from (running it needs an RTX GPU)."""
    import tensorrt_rtx as trt

    from mhunet_deploy.graphs import graph_filename

    _, export = tiny_export(TWO)
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(export / graph_filename("light", "portable", "fp16")))
    out = network.get_output(0)
    assert out.name == "logits" and tuple(out.shape) == (-1, 2, 256, 256)


def test_tensorrt_needs_tensorrt(tiny_export: TinyExport) -> None:
    """Full TensorRT cannot be installed here (ARCHITECTURE.md, What runs where); it runs where it is."""
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT (python module tensorrt) not installed; TensorRT engine tests need it")
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU visible")
    ckpt, export = tiny_export()
    path, sidecar = ensure_engine("tensorrt", ckpt, "fp16", export, Path("engines"))
    assert sidecar["key"]["plugin_sha256"]
