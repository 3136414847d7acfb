"""TensorRT / TensorRT-RTX engines: one code path for TensorRT >= 10 and TensorRT-RTX (ARCHITECTURE.md,
Engines). No torch, no pycuda: the GPU is queried with cuda-python.

The two libraries share the builder API (``import tensorrt`` / ``import tensorrt_rtx``); they differ
in what they build from: TensorRT takes the plugin graph and loads our plugin library, TensorRT-RTX
has no plugin API and takes the portable graph. This package:

- ``plugin_library``: finding our TensorRT plugin library and checking, from its ELF file, that it is
  ours and built for this CPU;
- ``cache``: the engine's key, and whether a cached engine is fresh, stale (rebuilt) or foreign (refused);
- ``build``: building the engine (``ensure_engine``: the cached engine, built first when needed);
- here: the two flavors (which library, which graph) and the batch profile.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import BackendError

DEFAULT_ENGINE_DIR = Path("engines")


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
