"""The engine cache's key and rules (ARCHITECTURE.md, Engines; ``engines/README.md``).

An engine is stored as ``<graph-stem>.<flavor>.engine`` with a JSON sidecar holding its key (sha256 of
the ONNX and of the plugin library, library version, target GPU, precision, profile). A *stale* engine
(same target, other inputs) is rebuilt; a *foreign* one (built for another GPU or library version) is
refused with the reason, because overwriting it could destroy a colleague's engine on a shared disk. An
engine whose sidecar is missing or unreadable is treated as stale.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import BackendError
from ..files import sha256_file
from . import BatchProfile, Flavor

#: Key fields whose mismatch makes an engine foreign (refused) rather than stale (rebuilt).
FOREIGN_FIELDS = ("library", "library_version", "target")


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
