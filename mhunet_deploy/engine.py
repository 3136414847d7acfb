"""Engine builder and cache: one code path for TensorRT >= 10 and TensorRT-RTX (ARCHITECTURE.md, Engines).

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
import logging
import os
import platform
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .checkpoint import sha256_file
from .errors import BackendError
from .exporting.manifest import INPUT_NAME, find_graph
from .volume_io import atomic_write

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    install: str


FLAVORS = {
    "tensorrt": Flavor(
        "tensorrt",
        "tensorrt",
        graph_kind="plugin",
        plugins=True,
        timing_cache=True,
        install="install TensorRT >= 10 (JetPack on a Jetson)",
    ),
    # TensorRT-RTX tunes at run time (JIT); its timing-cache calls are deprecated no-ops.
    "tensorrt-rtx": Flavor(
        "tensorrt-rtx",
        "tensorrt_rtx",
        graph_kind="portable",
        plugins=False,
        timing_cache=False,
        install="pip install 'mhunet-deploy[rtx]'",
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
        raise BackendError(
            f"{flavor.name} is not installed (python module {flavor.module!r}); {flavor.install}, "
            "or choose another --backend"
        ) from None


def plugin_library() -> Path | None:
    """The built TensorRT plugin library: $MHUNET_PLUGIN_LIB, else the default CMake build folders."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    return next((p for p in PLUGIN_LIBRARY_CANDIDATES if p.is_file()), None)


#: ELF e_machine values, named as platform.machine() names the CPU.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 3: "x86 (32-bit)", 40: "arm (32-bit)", 21: "ppc64"}
_HOST_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
_SHT_DYNSYM = 11


def _dynamic_symbols(blob: bytes) -> set[str]:
    """Names of the symbols a little-endian ELF64 shared library defines in its dynamic table."""
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", blob, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != _SHT_DYNSYM:
            continue
        strings = sections[link][4]
        for pos in range(offset, offset + size, entsize or 24):
            name_at, _, _, section_index = struct.unpack_from("<IBBH", blob, pos)
            if section_index:  # 0: undefined here, imported from another library
                start = strings + name_at
                names.add(blob[start : blob.index(b"\0", start)].decode(errors="replace"))
    return names


def plugin_library_problem(path: Path) -> str | None:
    """Why ``path`` cannot be this machine's plugin library (not ELF, other CPU, not ours), or None.

    Read from the file rather than by loading it: loading needs TensorRT's own libraries, and a
    foreign library must be refused with its reason even where TensorRT is absent.
    """
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if blob[:4] != b"\x7fELF":
        return "is not a shared library (no ELF header)"
    machine = _ELF_MACHINES.get(struct.unpack_from("<H", blob, 18)[0], "another CPU")
    host = _HOST_MACHINE.get(platform.machine().lower(), platform.machine().lower())
    if blob[4] != 2 or blob[5] != 1 or machine != host:  # EI_CLASS 64-bit, EI_DATA little-endian
        return f"is built for {machine if blob[4] == 2 else '32-bit ' + machine}, this machine is {host}"
    try:
        symbols = _dynamic_symbols(blob)
    except (struct.error, ValueError, IndexError):
        return "is a damaged shared library (unreadable ELF sections)"
    if "getCreators" not in symbols:
        return "is not the mhunet plugin library (it exports no getCreators)"
    return None


def require_plugin_library() -> Path:
    """The plugin library, checked to be ours and built for this CPU; BackendError says why not."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    lib = plugin_library()
    if lib is None and env:
        raise BackendError(
            f"${PLUGIN_LIBRARY_ENV} is {env}, which does not exist; point it at the built library"
        )
    if lib is None:
        raise BackendError(
            f"TensorRT plugin library not found; build plugins/ with CMake or set {PLUGIN_LIBRARY_ENV}"
        )
    problem = plugin_library_problem(lib)
    if problem:
        raise BackendError(f"plugin library {lib} {problem}; build plugins/ on this machine with CMake")
    return lib


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
    """Everything an engine depends on (ARCHITECTURE.md, Engines); equal keys: the engine may be reused."""
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


def stored_key(engine: Path) -> dict[str, Any] | None:
    """The key in an engine's sidecar; None when the engine or a readable sidecar is missing."""
    if not engine.is_file():
        return None
    try:
        return json.loads(engine.with_suffix(".json").read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "gpu" in value:
        return f"{value['gpu']} (compute capability {value.get('compute_capability')})"
    if isinstance(value, dict) and "compute_capabilities" in value:
        return "+".join(value["compute_capabilities"])
    return str(value)


def target_covers(stored: Any, here: Any) -> bool:
    """Whether an engine built for target ``stored`` may run on target ``here``.

    Equal targets, or an ahead-of-time TensorRT-RTX target (a list of compute capabilities such as
    ["SM86", "SM89"]) that holds the compute capability of the GPU ``here`` ("8.6" is "SM86").
    """
    if isinstance(stored, dict) and isinstance(here, dict) and "compute_capability" in here:
        listed = stored.get("compute_capabilities")
        if isinstance(listed, list):
            return "SM" + str(here["compute_capability"]).replace(".", "") in listed
    return stored == here


def foreign_reasons(stored: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """How a stored key's library, version or target differ from this machine's; the one comparison
    `mhunet infer` and `mhunet doctor` make.

    A None in ``here`` means "not known on this machine" (library not installed, no GPU) and is
    skipped, so a foreign engine is refused for what is known before anything else is required.
    """
    reasons = []
    for f in FOREIGN_FIELDS:
        if here.get(f) is None:
            continue
        runs_here = target_covers(stored.get(f), here[f]) if f == "target" else stored.get(f) == here[f]
        if not runs_here:
            reasons.append(
                f"{f}: built for {_describe(stored.get(f))}, this machine has {_describe(here[f])}"
            )
    return reasons


def engine_target(stored: dict[str, Any] | None, here: dict[str, Any]) -> dict[str, Any]:
    """The target to key (and build) this machine's engine for: ``here``, or the stored ahead-of-time
    target when it covers this GPU, so a prebuilt engine is reused rather than rebuilt for one GPU
    (which would make it foreign to the other GPUs it was built for)."""
    return stored["target"] if stored and target_covers(stored.get("target"), here) else here


def cache_state(engine: Path, key: dict[str, Any]) -> str:
    """``fresh``, ``missing`` or ``stale`` (rebuild) for an engine that is not foreign."""
    stored = stored_key(engine)
    if not engine.is_file():
        return "missing"
    if stored is None or (stored.get("engine_sha256") and stored["engine_sha256"] != sha256_file(engine)):
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
    profile: BatchProfile = BatchProfile(),
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
