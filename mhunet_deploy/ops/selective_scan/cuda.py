"""Our CUDA selective-scan kernel for the torch backend (forward only), from the prebuilt kernel library.

``libmhunet_scan`` is the same ``kernels/selective_scan.cu`` that the TensorRT plugin links, built ahead of
time: by CMake (``cmake -S plugins -B build -DMHUNET_KERNEL_ONLY=ON && cmake --build build``, which
writes ``build/libmhunet_scan.so``) or by ``mhunet build-kernels`` (nvcc, for this machine's GPU, into
the user cache). It is called through its C launcher (``kernels/selective_scan.h``) with ctypes, on raw
device pointers and torch's current CUDA stream: nothing is compiled at run time and no torch C++
extension is involved. Every build embeds the sha256 key of the sources it was compiled from
(:func:`source_sha256`); a library built from other sources is refused, never run.

``register_cuda_scan()`` adds the scan implementation ``"cuda"`` to ``torch_scan`` (our kernel
for CUDA tensors without autograd, the chunked torch scan otherwise); ``TorchBackend(scan="auto")`` uses it
and falls back to the PyTorch scan, with a one-line note, when no usable library is found.
Torch side only: runtime modules must not import this module.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from . import scan_args
from .torch_scan import register_scan_impl, selective_scan_chunked

#: The name under which ``register_cuda_scan`` registers our kernel with ``torch_scan``.
SCAN_IMPL_NAME = "cuda"
#: An explicit library path; when set, nothing else is looked at.
SCAN_LIBRARY_ENV = "MHUNET_SCAN_LIB"
#: Where ``mhunet build-kernels`` writes (default: $XDG_CACHE_HOME/mhunet/kernels or ~/.cache/mhunet/kernels).
KERNEL_CACHE_ENV = "MHUNET_KERNEL_CACHE"
LIBRARY_NAME = "libmhunet_scan.so"
#: The kernel-only CMake build folders, relative to the working directory (as for the plugin library).
CMAKE_CANDIDATES = (Path("build") / LIBRARY_NAME, Path("plugins/build") / LIBRARY_NAME)
#: The files the library is compiled from, in the order their hashes enter the key (plugins/CMakeLists.txt).
SOURCES = ("selective_scan.cu", "selective_scan.h")
#: A kernel configuration, in the launcher's order (kernels/selective_scan.h): time steps per lane,
#: channels per warp team, states interleaved per iteration, warps per channel, bytes per B/C element in
#: shared memory (4, or 2 for fp16 inputs only), steps per segment (0: the chunked family; > 0: the
#: sequential family, lane = channel with all states in registers, kernels/NOTES.md), chunk buffers in
#: shared memory (1, or 2: the next chunk prefetched by cp.async, for B/C rows in the input dtype);
#: 0 = the default.
CONFIG_FIELDS = ("items", "cpw", "spi", "wpc", "bcb", "seg", "bufs")
Config = tuple[int, int, int, int, int, int, int]
#: Every field 0: the launcher's default configuration for the shape.
DEFAULT_CONFIG: Config = (0,) * len(CONFIG_FIELDS)
_STATUS_OK = 0
_FP32, _FP16 = 0, 1

_SRC_DIR = Path(__file__).resolve().parents[2] / "kernels"


class KernelLibraryError(RuntimeError):
    """Why the kernel library cannot be used here (absent, built from other sources, not for this GPU)."""


def source_dir() -> Path:
    """Where the kernel sources live (``kernels/`` inside this package, installed or not)."""
    return _SRC_DIR


def source_sha256() -> str:
    """The key a library must carry: sha256 of the hex sha256 of each of ``SOURCES``, concatenated
    (what ``plugins/CMakeLists.txt`` computes with ``file(SHA256)`` and ``string(SHA256)``)."""
    digests = "".join(hashlib.sha256((_SRC_DIR / name).read_bytes()).hexdigest() for name in SOURCES)
    return hashlib.sha256(digests.encode()).hexdigest()


def cache_dir() -> Path:
    """The folder ``mhunet build-kernels`` writes libraries into."""
    env = os.environ.get(KERNEL_CACHE_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mhunet" / "kernels"


def cached_library(arch: str) -> Path:
    """The file ``mhunet build-kernels`` writes for compute capability ``arch`` (e.g. "90"): keyed by the
    sources, so a package with other sources never finds it."""
    return cache_dir() / f"libmhunet_scan-{source_sha256()[:16]}-sm{arch}.so"


def gpu_arch() -> str:
    """The compute capability of torch's current CUDA device, as nvcc spells it ("90")."""
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def build_library(arch: str, out: Path | None = None, nvcc: str | None = None) -> Path:
    """Compile the kernel library for ``arch`` with nvcc (what CMake builds, one architecture) into
    ``out`` (default: :func:`cached_library`), atomically; returns its path. About 30-60 s."""
    nvcc = nvcc or shutil.which("nvcc") or _toolkit_nvcc()
    if nvcc is None:
        raise KernelLibraryError("nvcc not found (install the CUDA toolkit or put nvcc on PATH)")
    out = Path(out) if out else cached_library(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cuda_lib = Path(nvcc).resolve().parent.parent / "lib64"
    cmd = [
        nvcc,
        "-O3",
        "-std=c++17",
        "--shared",
        "-Xcompiler",
        "-fPIC",
        "-cudart",
        "shared",
        f"-Xlinker=-rpath,{cuda_lib}",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        f'-DMHUNET_SCAN_SOURCE_SHA256="{source_sha256()}"',
        f"-I{_SRC_DIR}",
        str(_SRC_DIR / "selective_scan.cu"),
        "-o",
        str(tmp),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise KernelLibraryError(f"nvcc failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _toolkit_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


class ScanLibrary:
    """The C launcher of one built kernel library (``kernels/selective_scan.h``), through ctypes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            lib = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise KernelLibraryError(f"{self.path} cannot be loaded ({e})") from e
        try:
            key = lib.mhunet_selective_scan_source_sha256
        except AttributeError:
            raise KernelLibraryError(
                f"{self.path} is not a current mhunet kernel library (no source key)"
            ) from None
        key.restype = ctypes.c_char_p
        self.source_sha256 = key().decode()
        if self.source_sha256 != source_sha256():
            raise KernelLibraryError(
                f"{self.path} was built from other kernel sources (key {self.source_sha256[:12]}, "
                f"these sources {source_sha256()[:12]})"
            )
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        self._fwd = lib.mhunet_selective_scan_fwd_config
        self._fwd.argtypes = [ptr] * 8 + [i32] * (7 + len(CONFIG_FIELDS)) + [ptr]
        self._fwd.restype = i32
        self._error = lib.mhunet_selective_scan_error_string
        self._error.argtypes, self._error.restype = [i32], ctypes.c_char_p
        self._configs = lib.mhunet_selective_scan_configs
        self._configs.argtypes, self._configs.restype = [ctypes.POINTER(i32), i32], i32
        self._default = lib.mhunet_selective_scan_default_config
        self._default.argtypes = [i32] * 5 + [ctypes.POINTER(i32)] * len(CONFIG_FIELDS)

    def fwd(
        self,
        pointers: tuple[int | None, ...],
        shape: tuple[int, int, int, int, int],
        delta_softplus: bool,
        fp16: bool,
        config: Config,
        stream: int,
    ) -> None:
        """Launch on ``stream``: the device pointers of u, delta, A, B, C, D, delta_bias, y (None for an
        absent D or delta_bias) as :func:`selective_scan_cuda` checked them; shape = (batch, dim, length,
        dstate, groups)."""
        rc = self._fwd(*pointers, *shape, delta_softplus, _FP16 if fp16 else _FP32, *config, stream)
        if rc != _STATUS_OK:
            raise RuntimeError(f"selective_scan_cuda: {self._error(rc).decode()}")

    def configs(self) -> list[Config]:
        """The compiled kernel configurations (:data:`CONFIG_FIELDS`); bcb = 2 ones take fp16 inputs
        only (fp32 inputs: an unsupported-config error), bufs = 2 ones with bcb = 4 fp32 inputs only;
        seg > 0 ones are the sequential family."""
        k, cap = len(CONFIG_FIELDS), 128
        buf = (ctypes.c_int * (k * cap))()
        n = min(self._configs(buf, cap), cap)
        return [tuple(buf[k * i : k * (i + 1)]) for i in range(n)]

    def default_config(self, batch: int, dim: int, length: int, groups: int, fp16: bool) -> Config:
        """The configuration (:data:`CONFIG_FIELDS`) the kernel uses by default for a shape."""
        out = [ctypes.c_int() for _ in CONFIG_FIELDS]
        self._default(batch, dim, length, groups, _FP16 if fp16 else _FP32, *(ctypes.byref(v) for v in out))
        return tuple(v.value for v in out)


def _stream_handle(index: int) -> int:
    return torch.cuda.current_stream(index).cuda_stream


#: The handle of torch's current CUDA stream on a device index: torch's raw getter where it has one (no
#: Stream object per call: a few microseconds of host time per launch), else the public API.
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", _stream_handle)


def find_library() -> Path:
    """The library to load: ``$MHUNET_SCAN_LIB``; else ``mhunet build-kernels``'s for this GPU; else a
    kernel-only CMake build (:data:`CMAKE_CANDIDATES`). KernelLibraryError says what to do otherwise."""
    env = os.environ.get(SCAN_LIBRARY_ENV)
    if env:
        if not Path(env).is_file():
            raise KernelLibraryError(f"${SCAN_LIBRARY_ENV} is {env}, which does not exist")
        return Path(env)
    candidates = [cached_library(gpu_arch()), *CMAKE_CANDIDATES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise KernelLibraryError(
            "no kernel library built for these sources; run `mhunet build-kernels` (nvcc), or build "
            "plugins/ with CMake (-DMHUNET_KERNEL_ONLY=ON) and run from the folder holding build/"
        )
    return found


@lru_cache(maxsize=1)
def load_library() -> ScanLibrary:
    """Load (once) and check the kernel library: its source key, and one tiny launch on this GPU (a
    library compiled for other GPUs fails there, not inside a model)."""
    if not torch.cuda.is_available():
        raise KernelLibraryError("the CUDA scan kernel needs a CUDA GPU; none is visible to torch")
    lib = ScanLibrary(find_library())
    x, y = torch.zeros(1, device="cuda"), torch.empty(1, device="cuda")
    p = x.data_ptr()
    try:
        ptrs = (p, p, p, p, p, None, None, y.data_ptr())
        lib.fwd(ptrs, (1, 1, 1, 1, 1), True, False, DEFAULT_CONFIG, _current_raw_stream(x.get_device()))
        torch.cuda.synchronize()
    except RuntimeError as e:
        raise KernelLibraryError(f"{lib.path} does not run on this GPU (sm_{gpu_arch()}): {e}") from e
    return lib


def selective_scan_cuda(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=True,
    *,
    items=0,
    cpw=0,
    spi=0,
    wpc=0,
    bcb=0,
    seg=0,
    bufs=0,
    out=None,
):
    """Selective scan forward on the GPU: same arguments and semantics as ``selective_scan_loop``.

    u, delta: (B, D, L); A: (D, N) fp32; B, C: (B, G, N, L); D, delta_bias: (D,) fp32 or None.
    u, delta, B, C share one dtype (float32 or float16: delta, B, C are cast to u's); y is float32
    whatever that dtype (contract v2). N <= 16.
    ``items``/``cpw``/``spi``/``wpc``/``bcb``/``seg``/``bufs`` override the kernel configuration (0 = default;
    the compiled ones: ``load_library().configs()``, in :data:`CONFIG_FIELDS` order); for tuning only.
    ``out``: optional contiguous float32 (B, D, L) tensor to write y into (returned).
    """
    refusal = _unsupported(u, delta, A, B, C, D, delta_bias)
    if refusal is not None:
        raise refusal
    config = DEFAULT_CONFIG
    if items or cpw or spi or wpc or bcb or seg or bufs:
        config = (int(items), int(cpw), int(spi), int(wpc), int(bcb), int(seg), int(bufs))
    return _launch(u, delta, A, B, C, D, delta_bias, delta_softplus, config, out)


def _unsupported(u, delta, A, B, C, D, delta_bias) -> Exception | None:
    """Why the kernel cannot take this call (autograd, N > 16, an input dtype other than fp32 or fp16),
    as the error selective_scan_cuda raises; None when it can."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
    ):
        return RuntimeError(
            "selective_scan_cuda is forward-only (no backward kernel); call it under torch.no_grad() or "
            "use the reference scan for training"
        )
    if A.shape[-1] > 16:
        return ValueError(f"selective_scan_cuda supports d_state N <= 16, got N={A.shape[-1]}")
    if u.dtype is not torch.float32 and u.dtype is not torch.float16:
        return TypeError(f"selective_scan_cuda supports float32 and float16 inputs, got {u.dtype}")
    return None


def _launch(u, delta, A, B, C, D, delta_bias, delta_softplus, config: Config, out):
    """selective_scan_cuda after its _unsupported check: inputs checked for shape and device (converted
    to the dtype and layout the launcher needs), y allocated or checked, the launch."""
    dt, f32 = u.dtype, torch.float32
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    index = u.get_device()
    if index < 0:
        raise ValueError("selective_scan_cuda: all tensors must be on one CUDA device")
    bc = (batch, groups, dstate, length)
    # One pass over the inputs (the launcher trusts raw pointers: dtype, layout, shape, device checked
    # here). A tensor of another dtype or layout is converted; `keep` holds the copies until the launch.
    keep, pointers = [], []
    for name, t, want, shape in (
        ("u", u, dt, u.shape),
        ("delta", delta, dt, u.shape),
        ("A", A, f32, (dim, dstate)),
        ("B", B, dt, bc),
        ("C", C, dt, bc),
        ("D", D, f32, (dim,)),
        ("delta_bias", delta_bias, f32, (dim,)),
    ):
        if t is None:
            pointers.append(None)
            continue
        if t.dtype is not want or not t.is_contiguous():
            t = t.to(want).contiguous()
            keep.append(t)
        if t.shape != shape:
            raise ValueError(f"selective_scan_cuda: {name} must be {tuple(shape)}, got {tuple(t.shape)}")
        if t.get_device() != index:
            raise ValueError("selective_scan_cuda: all tensors must be on one CUDA device")
        pointers.append(t.data_ptr())
    if out is None:
        out = torch.empty_like(u, dtype=f32, memory_format=torch.contiguous_format)  # the cheapest measured
    elif out.shape != u.shape or out.dtype is not f32 or out.get_device() != index or not out.is_contiguous():
        raise ValueError(
            "selective_scan_cuda: out must be a contiguous float32 tensor of u's shape and device"
        )
    pointers.append(out.data_ptr())
    lib = load_library()
    launch = (pointers, (batch, dim, length, dstate, groups), bool(delta_softplus), dt is not f32, config)
    if index == torch.cuda.current_device():
        lib.fwd(*launch, _current_raw_stream(index))
    else:
        with torch.cuda.device(index):
            lib.fwd(*launch, _current_raw_stream(index))
    return out


def scan_cuda_or_chunked(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The ``"cuda"`` scan implementation (a ScanFn): our kernel for CUDA tensors without autograd (fp32
    or fp16 u, N <= 16; y float32), ``selective_scan_chunked`` for everything else (CPU, grad, bf16,
    N > 16)."""
    args = scan_args(*args, **kwargs)
    u = args[0]
    if u.is_cuda and u.dim() == 3 and _unsupported(*args[:7]) is None:
        return _launch(*args, DEFAULT_CONFIG, None)  # (checked once: not again in selective_scan_cuda)
    return selective_scan_chunked(*args)


def register_cuda_scan(load: bool = True) -> str:
    """Register our kernel as the scan implementation ``"cuda"`` and return that name.

    ``load=True`` (default) loads and checks the library now (:func:`load_library`), so a missing or
    foreign library surfaces here as KernelLibraryError, not in the middle of a forward pass; it needs a
    CUDA GPU. ``load=False`` only registers (the first CUDA call then loads).
    """
    if load:
        load_library()
    register_scan_impl(SCAN_IMPL_NAME, scan_cuda_or_chunked)
    return SCAN_IMPL_NAME
