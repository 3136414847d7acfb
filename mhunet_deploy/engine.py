"""Engine builder and cache: one code path for TensorRT >= 10 and TensorRT-RTX (DESIGN.md §9).

The two libraries share the builder API (``import tensorrt`` / ``import tensorrt_rtx``); they differ
in what they build from: TensorRT takes the plugin graph and loads our plugin library, TensorRT-RTX
has no plugin API and takes the portable graph. Networks are strongly typed, so the fp16 graph's
explicit fp32 islands are what runs; no weak-typing precision flags are set.

Cache rules: an engine is stored as ``<graph-stem>.<flavor>.engine`` with a JSON sidecar holding its
key (sha256 of the ONNX and of the plugin library, library version, target GPU, precision, profile).
A *stale* engine (same target, other inputs) is rebuilt; a *foreign* one (built for another GPU or
library version) is refused with the reason, because overwriting it could destroy a colleague's
engine on a shared disk. An engine whose sidecar is missing or unreadable is treated as stale.
No torch, no pycuda: the GPU is queried with cuda-python.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .checkpoint import sha256_file
from .errors import BackendError
from .exporting.manifest import INPUT_NAME, find_graph
from .volume_io import atomic_write

DEFAULT_ENGINE_DIR = Path("engines")
PLUGIN_LIBRARY_ENV = "MHUNET_PLUGIN_LIB"
#: Where a CMake build of plugins/ puts the plugin library (see plugins/CMakeLists.txt).
PLUGIN_LIBRARY_CANDIDATES = (Path("build/libmhunet_plugins.so"), Path("plugins/build/libmhunet_plugins.so"))
#: Key fields whose mismatch makes an engine foreign (refused) rather than stale (rebuilt).
FOREIGN_FIELDS = ("library", "library_version", "target")


@dataclass(frozen=True)
class Flavor:
    """One of the two engine libraries: its module, and the graph kind it builds from."""

    name: str
    module: str
    graph_kind: str
    plugins: bool
    timing_cache: bool


FLAVORS = {
    "tensorrt": Flavor("tensorrt", "tensorrt", graph_kind="plugin", plugins=True, timing_cache=True),
    # TensorRT-RTX tunes at run time (JIT); its timing-cache calls are deprecated no-ops.
    "tensorrt-rtx": Flavor(
        "tensorrt-rtx", "tensorrt_rtx", graph_kind="portable", plugins=False, timing_cache=False
    ),
}


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile over the batch (slices); H and W are fixed by the model."""

    min: int = 1
    opt: int = 8
    max: int = 32


def import_library(flavor: Flavor) -> ModuleType:
    try:
        return importlib.import_module(flavor.module)
    except ImportError:
        raise BackendError(f"{flavor.name} is not installed (python module {flavor.module!r})") from None


def plugin_library() -> Path | None:
    """The built TensorRT plugin library: $MHUNET_PLUGIN_LIB, else the default CMake build folders."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    return next((p for p in PLUGIN_LIBRARY_CANDIDATES if p.is_file()), None)


def current_gpu() -> dict[str, str]:
    """Name and compute capability of CUDA device 0, via cuda-python (``cuda.bindings``)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError("engines need cuda-python to query the GPU: pip install cuda-python") from None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"no usable CUDA GPU ({cudart.cudaGetErrorName(err)[1].decode()})")
    return {"gpu": props.name.decode().rstrip("\0"), "compute_capability": f"{props.major}.{props.minor}"}


def engine_key(
    flavor: Flavor,
    trt: ModuleType,
    manifest: dict[str, Any],
    plugin: Path | None,
    target: dict[str, Any],
    profile: BatchProfile,
) -> dict[str, Any]:
    """Everything an engine depends on (DESIGN.md §9); equal keys mean the engine may be reused."""
    return {
        "library": flavor.name,
        "library_version": trt.__version__,
        "onnx_sha256": manifest["onnx_sha256"],
        "plugin_sha256": sha256_file(plugin) if plugin else None,
        "target": target,
        "precision": manifest["precision"],
        "profile": asdict(profile),
    }


def engine_path(engine_dir: Path, graph: Path, flavor: Flavor) -> Path:
    return Path(engine_dir) / f"{graph.stem}.{flavor.name}.engine"


def cache_state(engine: Path, key: dict[str, Any]) -> str:
    """``fresh``, ``missing``, ``stale`` (rebuild) or ``foreign:<why>`` (refuse) for a cached engine."""
    if not engine.is_file():
        return "missing"
    try:
        stored = json.loads(engine.with_suffix(".json").read_text())["key"]
    except (OSError, ValueError, KeyError):
        return "stale"
    foreign = [f for f in FOREIGN_FIELDS if stored.get(f) != key[f]]
    if foreign:
        why = "; ".join(f"{f}: built for {stored.get(f)}, this machine has {key[f]}" for f in foreign)
        return f"foreign:{why}"
    if stored.get("engine_sha256") and stored["engine_sha256"] != sha256_file(engine):
        return "stale"
    return "fresh" if {k: stored.get(k) for k in key} == key else "stale"


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


def ensure_engine(
    flavor_name: str,
    checkpoint: Path,
    precision: str = "fp16",
    export_dir: Path = Path("export"),
    engine_dir: Path = DEFAULT_ENGINE_DIR,
    profile: BatchProfile = BatchProfile(),
    compute_capabilities: tuple[str, ...] = (),
) -> tuple[Path, dict[str, Any]]:
    """The cached engine for this checkpoint's graph, built first if missing or stale.

    With ``compute_capabilities`` (TensorRT-RTX) the target is those GPUs and no GPU is queried.
    Returns the engine path and its sidecar.
    """
    flavor = FLAVORS[flavor_name]
    trt = import_library(flavor)
    graph, manifest = find_graph(checkpoint, flavor.graph_kind, precision, export_dir)
    plugin = None
    if flavor.plugins:
        plugin = plugin_library()
        if plugin is None:
            raise BackendError(
                f"TensorRT plugin library not found; build plugins/ with CMake or set {PLUGIN_LIBRARY_ENV}"
            )
    if compute_capabilities and flavor.plugins:
        raise BackendError("ahead-of-time targets (compute capabilities) are a TensorRT-RTX feature")
    target: dict[str, Any] = (
        {"compute_capabilities": list(compute_capabilities)} if compute_capabilities else current_gpu()
    )
    key = engine_key(flavor, trt, manifest, plugin, target, profile)
    engine = engine_path(engine_dir, graph, flavor)
    state = cache_state(engine, key)
    if state.startswith("foreign:"):
        raise BackendError(
            f"{engine}: engine belongs to another machine ({state.removeprefix('foreign:')}); "
            f"move it away or use another --engine-dir"
        )
    if state != "fresh":
        blob = build_engine(
            trt,
            graph,
            profile,
            Path(engine_dir) / f"{flavor.name}.timing.cache",
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
