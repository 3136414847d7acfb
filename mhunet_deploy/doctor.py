"""`mhunet doctor`: what this machine offers for each backend, and a fix-it line for each problem.

Each check is independent and never raises: a broken CUDA install must not hide that onnxruntime
works. No torch import unless torch is installed; nothing is built or downloaded.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import MhunetError


@dataclass
class Check:
    """One line of the report: ``status`` is ok, warn (optional part missing) or fail."""

    name: str
    status: str
    detail: str
    fix: str = ""


def _module_version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown version"))
    except Exception:  # a broken install raises anything, not only ImportError
        return None


def check_python() -> Check:
    return Check(
        "python", "ok", f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )


def check_torch() -> Check:
    version = _module_version("torch")
    if version is None:
        return Check(
            "torch", "warn", "not installed", "pip install 'mhunet-deploy[torch]' (training, torch backend)"
        )
    import torch

    if torch.cuda.is_available():
        return Check("torch", "ok", f"{version}, CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
    return Check("torch", "ok", f"{version}, CPU only (no CUDA device visible)")


def check_onnxruntime() -> Check:
    version = _module_version("onnxruntime")
    if version is None:
        return Check("onnxruntime", "warn", "not installed", "pip install 'mhunet-deploy[onnx]'")
    import onnxruntime

    return Check(
        "onnxruntime", "ok", f"{version}, providers: {', '.join(onnxruntime.get_available_providers())}"
    )


def check_library(module: str, label: str, fix: str) -> Check:
    version = _module_version(module)
    if version is None:
        return Check(label, "warn", "not installed", fix)
    return Check(label, "ok", version)


def _cuda_versions() -> str:
    """CUDA driver and runtime versions as cuda-python reports them, e.g. "driver 13.0, runtime 13.0"."""
    from cuda.bindings import runtime as cudart

    def fmt(v: int) -> str:
        return f"{v // 1000}.{v % 1000 // 10}"

    _, driver = cudart.cudaDriverGetVersion()
    _, runtime = cudart.cudaRuntimeGetVersion()
    return f"driver {fmt(driver)}, runtime {fmt(runtime)}"


def check_gpu() -> Check:
    from .engine.cache import current_gpu

    try:
        gpu = current_gpu()
    except MhunetError as e:
        return Check(
            "cuda gpu", "warn", str(e), "TensorRT needs an NVIDIA GPU with its driver and cuda-python"
        )
    return Check(
        "cuda gpu",
        "ok",
        f"{gpu['gpu']} (compute capability {gpu['compute_capability']}), CUDA {_cuda_versions()}",
    )


def check_plugin() -> Check:
    from .engine.plugin_library import PLUGIN_LIBRARY_ENV, plugin_library, plugin_library_problem

    lib = plugin_library()
    fix = f"cmake -S plugins -B plugins/build -DTENSORRT_INCLUDE_DIR=... (or set ${PLUGIN_LIBRARY_ENV})"
    if lib is None:
        where = os.environ.get(PLUGIN_LIBRARY_ENV)
        detail = (
            f"${PLUGIN_LIBRARY_ENV}={where} does not exist" if where else "libmhunet_plugins.so not found"
        )
        return Check("plugin library", "warn", detail, fix)
    problem = plugin_library_problem(lib)
    if problem:
        return Check("plugin library", "fail", f"{lib} {problem}", "build plugins/ on this machine: " + fix)
    try:  # after the tensorrt check imported TensorRT, whose libraries the plugin links against
        ctypes.CDLL(str(lib))
    except OSError as e:
        return Check(
            "plugin library",
            "fail",
            f"{lib}: cannot load ({e})",
            "install TensorRT >= 10, or rebuild plugins/",
        )
    return Check("plugin library", "ok", f"{lib} (loads, exports getCreators)")


def _torch_cuda() -> bool:
    if _module_version("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def check_scan_kernel() -> Check:
    """The prebuilt CUDA scan library the torch backend loads on a GPU (nothing is built here)."""
    name = "scan kernel library"
    if _module_version("torch") is None:
        return Check(
            name, "warn", "torch not installed: no torch backend", "pip install 'mhunet-deploy[torch]'"
        )
    import torch

    if not torch.cuda.is_available():
        numba = _module_version("numba")
        if numba is None:
            return Check(
                name,
                "warn",
                "no CUDA GPU, and numba is not installed: the CPU runs the slower torch scan",
                "pip install numba (it is in the torch extra)",
            )
        return Check(name, "ok", f"no CUDA GPU: the CPU runs SS2D's fused scan (numba {numba})")
    from .ops.selective_scan.cuda import KernelLibraryError, load_library

    try:
        lib = load_library()
    except KernelLibraryError as e:
        return Check(name, "warn", f"{e}; the torch backend runs the PyTorch scan", "mhunet build-kernels")
    return Check(name, "ok", f"{lib.path} (sources {lib.source_sha256[:12]}, runs on this GPU)")


def check_gpu_arrays() -> Check:
    """Whether pre- and post-processing can run on the GPU (cupy), where a GPU backend runs."""
    from .arrays import _gpu_arrays_problem

    name = "gpu pre/post-processing"
    problem = _gpu_arrays_problem()
    if problem is None:
        return Check(name, "ok", f"cupy {_module_version('cupy')}")
    if not _torch_cuda() and this_gpu() is None:
        return Check(name, "ok", f"not needed here: no CUDA GPU ({problem})")
    return Check(name, "warn", f"{problem}: they run on the CPU", "pip install 'mhunet-deploy[gpu]'")


def check_weights() -> Check:
    from .checkpoint import default_checkpoint, read_meta
    from .files import sha256_file

    path = default_checkpoint()
    try:
        meta = read_meta(path)
    except MhunetError as e:
        return Check("packaged weights", "fail", str(e), "reinstall mhunet-deploy")
    if sha256_file(path) != meta.get("sha256"):
        return Check("packaged weights", "fail", f"{path}: sha256 mismatch", "reinstall mhunet-deploy")
    return Check("packaged weights", "ok", f"{meta['config']['name']} sha256 {meta['sha256'][:12]}")


def check_graphs(export_dir: Path) -> Check:
    graphs = sorted(Path(export_dir).glob("*.onnx"))
    if not graphs:
        return Check(
            "onnx graphs", "warn", f"none in {export_dir}/", "mhunet export (needed by onnxruntime/TensorRT)"
        )
    return Check("onnx graphs", "ok", ", ".join(g.name for g in graphs))


def this_gpu() -> dict[str, str] | None:
    """This machine's GPU as engine keys describe it, or None when there is none (or no cuda-python)."""
    from .engine.cache import current_gpu

    try:
        return current_gpu()
    except MhunetError:
        return None


def check_engines(engine_dir: Path, gpu: dict[str, str] | None) -> list[Check]:
    """Each cached engine: the key it was built with, and whether it may run with this machine's
    libraries on ``gpu`` (see :func:`this_gpu`; None: unknown, the target is not judged)."""
    from .engine import FLAVORS
    from .engine.cache import foreign_reasons, stored_key

    checks = []
    for engine in sorted(Path(engine_dir).glob("*.engine")):
        name = f"engine {engine.name}"
        key = stored_key(engine)
        flavor = FLAVORS.get(key.get("library", "")) if key else None
        if key is None or flavor is None:
            checks.append(Check(name, "fail", "missing or unreadable sidecar", "delete it; it is rebuilt"))
            continue
        detail = f"{flavor.name} {key.get('library_version')}, {key.get('precision')}"
        # The same comparison `mhunet infer` makes before it runs an engine.
        here = {"library": flavor.name, "library_version": _module_version(flavor.module), "target": gpu}
        foreign = foreign_reasons(key, here)
        if foreign:
            fix = "move it away or use another --engine-dir; engines are built on the GPU that runs them"
            checks.append(Check(name, "fail", f"{detail}; foreign: {'; '.join(foreign)}", fix))
        elif here["library_version"] is None:
            fix = f"install {flavor.name} to run it (see README, Deploying)"
            checks.append(Check(name, "warn", f"{detail}; {flavor.name} not installed here", fix))
        else:
            checks.append(Check(name, "ok", f"{detail}, target {key.get('target')}"))
    return checks


def run_checks(export_dir: Path, engine_dir: Path) -> list[Check]:
    """All checks in a fixed order; a check that crashes is reported as failed, not raised."""
    plain: list[Callable[[], Check]] = [
        check_python,
        check_weights,
        check_torch,
        check_onnxruntime,
        lambda: check_library("tensorrt", "tensorrt", "install TensorRT >= 10 (JetPack on Jetson)"),
        lambda: check_library("tensorrt_rtx", "tensorrt-rtx", "pip install 'mhunet-deploy[rtx]' (RTX GPUs)"),
        check_gpu,
        check_scan_kernel,
        check_gpu_arrays,
        check_plugin,
        lambda: check_graphs(export_dir),
    ]
    checks = []
    for fn in plain:
        try:
            checks.append(fn())
        except Exception as e:  # a doctor must report, not crash
            checks.append(Check(getattr(fn, "__name__", "check"), "fail", f"check crashed: {e!r}"))
    return checks + check_engines(engine_dir, this_gpu())


def to_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2)
