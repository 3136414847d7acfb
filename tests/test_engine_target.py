"""A prebuilt (ahead-of-time) TensorRT-RTX engine targets a list of compute capabilities: it runs on
any GPU in the list and is refused elsewhere, by the one comparison `mhunet infer` and `doctor` share.

The sidecars are written here; running an engine needs an RTX GPU, so the GPU is given as the
description `engine.cache.current_gpu` returns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from mhunet_deploy.doctor import check_engines
from mhunet_deploy.engine import FLAVORS, BatchProfile
from mhunet_deploy.engine.cache import cache_state, engine_key, engine_target, foreign_reasons, stored_key

RTX_3090 = {"gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}
RTX_4090 = {"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
RTX_5090 = {"gpu": "NVIDIA GeForce RTX 5090", "compute_capability": "12.0"}
H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
TARGET = {"compute_capabilities": ["SM86", "SM89"]}
MANIFEST = {"onnx_sha256": "1" * 64, "precision": "fp16"}
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def _rtx_version() -> str:
    if not HAS_RTX:
        return "1.7.1.116"
    import tensorrt_rtx

    return tensorrt_rtx.__version__


def _prebuilt(engine_dir: Path, target: dict = TARGET) -> Path:
    """An engine file and the sidecar an ahead-of-time build for ``target`` writes."""
    engine = engine_dir / "light_portable_fp16.tensorrt-rtx.engine"
    blob = b"serialized engine"
    engine.write_bytes(blob)
    key = {
        "library": "tensorrt-rtx",
        "library_version": _rtx_version(),
        "onnx_sha256": MANIFEST["onnx_sha256"],
        "plugin_sha256": None,
        "target": target,
        "precision": "fp16",
        "profile": asdict(BatchProfile()),
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
    }
    engine.with_suffix(".json").write_text(json.dumps({"key": key}))
    return engine


def _here(gpu: dict) -> dict:
    return {"library": "tensorrt-rtx", "library_version": _rtx_version(), "target": gpu}


@pytest.mark.parametrize("gpu", [RTX_3090, RTX_4090])
def test_gpu_in_the_target_list_may_run_the_engine(tmp_path: Path, gpu: dict) -> None:
    assert foreign_reasons(stored_key(_prebuilt(tmp_path)), _here(gpu)) == []


@pytest.mark.parametrize("gpu", [H200, RTX_5090])
def test_gpu_outside_the_target_list_is_refused(tmp_path: Path, gpu: dict) -> None:
    reasons = foreign_reasons(stored_key(_prebuilt(tmp_path)), _here(gpu))
    assert reasons == [
        f"target: built for SM86+SM89, this machine has {gpu['gpu']} "
        f"(compute capability {gpu['compute_capability']})"
    ]


def test_two_digit_major_compute_capability(tmp_path: Path) -> None:
    engine = _prebuilt(tmp_path, {"compute_capabilities": ["SM120"]})
    assert foreign_reasons(stored_key(engine), _here(RTX_5090)) == []


def test_doctor_agrees(tmp_path: Path) -> None:
    _prebuilt(tmp_path)
    (ok,) = check_engines(tmp_path, RTX_3090)
    assert ok.status == ("ok" if HAS_RTX else "warn") and "foreign" not in ok.detail, ok
    (refused,) = check_engines(tmp_path, H200)
    assert refused.status == "fail" and refused.fix, refused
    assert (
        "target: built for SM86+SM89, this machine has NVIDIA H200 (compute capability 9.0)" in refused.detail
    )


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx not importable: the engine key names its version")
def test_prebuilt_engine_covering_this_gpu_is_reused_not_rebuilt(tmp_path: Path) -> None:
    """Keyed for the GPU itself the prebuilt engine would look stale and be rebuilt for that one GPU,
    which would make it foreign to the others it was built for."""
    import tensorrt_rtx

    engine = _prebuilt(tmp_path)
    flavor = FLAVORS["tensorrt-rtx"]
    target = engine_target(stored_key(engine), RTX_4090)
    assert target == TARGET
    assert (
        cache_state(engine, engine_key(flavor, tensorrt_rtx, MANIFEST, None, target, BatchProfile()))
        == "fresh"
    )
    assert engine_target(stored_key(engine), H200) == H200  # not covered: never adopted (and refused)
