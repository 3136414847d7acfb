"""Where pre- and post-processing arrays live: numpy + scipy.ndimage on the CPU, cupy + cupyx on a GPU.

One code path serves both: cupy and ``cupyx.scipy.ndimage`` mirror the numpy and ``scipy.ndimage``
calls that preprocess and postprocess make, so those functions take their array modules from the
array they are given (:func:`modules_of`). The one choice is made where a volume enters the pipeline,
from what the backend offers (:func:`array_device`, ``Backend.array_device``). cupy is the optional
``gpu`` extra; the CPU path never imports it (it cannot even be imported without a CUDA driver).
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")


def array_modules(device: str) -> tuple[ModuleType, ModuleType]:
    """``(xp, ndi)``: numpy and scipy.ndimage for ``"cpu"``, cupy and cupyx.scipy.ndimage for ``"cuda"``."""
    if device == "cpu":
        from scipy import ndimage

        return np, ndimage
    if device == "cuda":
        import cupy
        import cupyx.scipy.ndimage

        return cupy, cupyx.scipy.ndimage
    raise ValueError(f"array device must be one of {DEVICES}, got {device!r}")


def is_device_array(a: Any) -> bool:
    """Whether ``a`` is a cupy array (judged by its type's module: asking must not import cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def modules_of(a: Any) -> tuple[ModuleType, ModuleType]:
    """The ``(xp, ndi)`` pair that computes on ``a`` where it lives."""
    return array_modules("cuda" if is_device_array(a) else "cpu")


def to_host(a: Any) -> np.ndarray:
    """A numpy array of ``a`` (a device-to-host copy for cupy arrays, ``a`` itself for numpy ones)."""
    return a.get() if is_device_array(a) else np.asarray(a)


def synchronize(a: Any) -> None:
    """Wait for the GPU work queued on ``a`` (so stage timings measure work, not queueing)."""
    if is_device_array(a):
        import cupy

        cupy.cuda.Device().synchronize()


@lru_cache(maxsize=1)
def _gpu_arrays_problem() -> str | None:
    """Why pre- and post-processing cannot run on the GPU here, or None when they can."""
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - a broken CUDA install must only cost the GPU pre/post path
        return f"cupy cannot reach a GPU ({' '.join(str(e).split())[:160]})"
    return None


def array_device(device: str) -> str:
    """Where a backend on ``device`` ("cpu" or "cuda") wants its pre- and post-processing: on the GPU
    when cupy works there, else on the CPU with a one-line note (the model still runs on the GPU)."""
    if device != "cuda":
        return "cpu"
    problem = _gpu_arrays_problem()
    if problem is None:
        return "cuda"
    log.warning(
        "pre- and post-processing run on the CPU: %s (GPU: pip install 'mhunet-deploy[gpu]')", problem
    )
    return "cpu"
