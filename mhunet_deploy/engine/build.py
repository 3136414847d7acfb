"""Building engines: ONNX parsed into a strongly typed network, so the fp16 graph's explicit fp32
islands are what runs (no weak-typing precision flags), and ``ensure_engine``, the cached engine for a
checkpoint's graph, built first when it is missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from ..errors import BackendError
from ..files import atomic_write
from ..graphs import INPUT_NAME, find_graph
from . import DEFAULT_ENGINE_DIR, FLAVORS, BatchProfile, import_library
from .cache import (
    cache_state,
    current_gpu,
    engine_key,
    engine_path,
    engine_target,
    foreign_reasons,
    stored_key,
)
from .plugin_library import require_plugin_library

log = logging.getLogger(__name__)
#: min 1, opt 8, max 32 slices (ARCHITECTURE.md, Engines).
DEFAULT_PROFILE = BatchProfile()

T = TypeVar("T")


def build_engine(
    trt: ModuleType,
    onnx_path: Path,
    profile: BatchProfile,
    timing_cache: Path | None,
    plugin: Path | None = None,
    compute_capabilities: tuple[str, ...] = (),
) -> bytes:
    """Parse ONNX into a strongly typed network and build a serialized engine.

    ``compute_capabilities`` (TensorRT-RTX only, e.g. ("SM86",)) builds ahead of time for those GPUs,
    which needs no GPU at all; empty means the library's default target.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if plugin is not None:
        builder.get_plugin_registry().load_library(str(plugin))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: the ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    dims = tuple(network.get_input(0).shape)[1:]
    opt.set_shape(INPUT_NAME, (profile.min, *dims), (profile.opt, *dims), (profile.max, *dims))
    config.add_optimization_profile(opt)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if compute_capabilities:
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: engine build failed (see the {trt.__name__} log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        cache_bytes = bytes(config.get_timing_cache().serialize())
        atomic_write(timing_cache, lambda tmp: Path(tmp).write_bytes(cache_bytes))
    return bytes(serialized)


def _attempt(fn: Callable[[], T]) -> tuple[T | None, BackendError | None]:
    """``fn()``, or None and the BackendError it raised: lets a check use what is known so far."""
    try:
        return fn(), None
    except BackendError as e:
        return None, e


def ensure_engine(
    flavor_name: str,
    checkpoint: Path,
    precision: str = "fp16",
    export_dir: Path = Path("export"),
    engine_dir: Path = DEFAULT_ENGINE_DIR,
    profile: BatchProfile = DEFAULT_PROFILE,
    compute_capabilities: tuple[str, ...] = (),
) -> tuple[Path, dict[str, Any]]:
    """The cached engine for this checkpoint's graph, built first if missing or stale.

    Checks run cheapest and most local first: plugin library, exported graph, then a foreign engine
    (refused on whatever is known here, so even a machine without the library or a GPU learns why),
    and only then the library and GPU themselves. With ``compute_capabilities`` (TensorRT-RTX) the
    target is those GPUs and no GPU is queried. Returns the engine path and its sidecar.
    """
    flavor = FLAVORS[flavor_name]
    if compute_capabilities and flavor.plugins:
        raise BackendError("ahead-of-time targets (compute capabilities) are a TensorRT-RTX feature")
    plugin = require_plugin_library() if flavor.plugins else None
    graph, manifest = find_graph(checkpoint, flavor.graph_kind, precision, export_dir)
    engine = engine_path(engine_dir, graph, flavor)
    # Refuse a foreign engine on what is known here, before the library or a GPU is required.
    trt, missing = _attempt(lambda: import_library(flavor))
    aot = {"compute_capabilities": list(compute_capabilities)} if compute_capabilities else None
    target, no_gpu = _attempt(lambda: aot or current_gpu())
    stored = stored_key(engine)
    here = {"library": flavor.name, "library_version": getattr(trt, "__version__", None), "target": target}
    foreign = foreign_reasons(stored, here) if stored else []
    if foreign:
        raise BackendError(
            f"{engine}: engine was built for another machine ({'; '.join(foreign)}); "
            "move it away or pass another --engine-dir"
        )
    if missing or no_gpu:
        raise missing or no_gpu
    target = engine_target(stored, target)
    compute_capabilities = tuple(target.get("compute_capabilities", ()))
    key = engine_key(flavor, trt, manifest, plugin, target, profile)
    state = cache_state(engine, key)
    log.info("engine %s: %s", engine, "cached, reused" if state == "fresh" else f"{state}, building")
    if state != "fresh":
        blob = build_engine(
            trt,
            graph,
            profile,
            Path(engine_dir) / f"{flavor.name}.timing.cache" if flavor.timing_cache else None,
            plugin,
            compute_capabilities,
        )
        engine.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(engine, lambda tmp: Path(tmp).write_bytes(blob))
        sidecar = {
            "key": {**key, "engine_sha256": hashlib.sha256(blob).hexdigest()},
            "graph": str(graph),
            "checkpoint_sha256": manifest["checkpoint"]["sha256"],
            "rebuilt_because": state,
        }
        atomic_write(
            engine.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2))
        )
    return engine, json.loads(engine.with_suffix(".json").read_text())
