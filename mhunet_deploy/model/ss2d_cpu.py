"""SS2D's four scan orders and their merge as one compiled CPU kernel (numba), for CPU inference.

Why: on the CPU the torch scan (``scan.selective_scan_chunked``) is a Python loop of small ops over
time-major copies of the four scan orders, and SS2D builds and merges those orders with flips,
transposes and concats: together ~90 % of a forward pass on the 2-core VM (BENCHMARKS.md, section 17).
Here the scan reads SS2D's channels-last tensors where they are: scan order k only changes which pixel
step s visits (row-major, column-major, both reversed), every order's output is added into one
channels-last y at the pixel it belongs to (what SS2D's merge computes), and exp is a polynomial the
compiler vectorises over channels. The same sums as ``selective_scan`` + SS2D's merge, in another order
(tests/test_ss2d_cpu.py holds the two to float32 rounding).

Used by ``SS2D.forward`` where ``mamba_hunet.fused_cpu_scan`` says so (CPU inference in float32 with
the default scan); training, CUDA, ONNX export and the FP32 reference path (``use_scan_impl("chunked")``,
``TorchBackend(scan="reference")``) keep the torch scan, and so does a machine without numba. Imported
only there: numba compiles the kernel on first use and caches it on disk (``cache=True``).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from numba.extending import intrinsic

from ..ops.selective_scan import contract

#: SS2D's scan orders: 0 row-major, 1 column-major, 2 and 3 the same reversed.
K_DIRECTIONS = 4

_F32 = np.float32
#: LLVM fast-math flags short of no-NaN/no-inf: NaN still propagates; the division needs arcp to vectorise.
_FAST = {"arcp", "contract", "afn", "nsz"}
_LOG2E, _LN2_HI = _F32(1.0 / math.log(2.0)), _F32(0.693359375)
_LN2_LO = _F32(math.log(2.0) - 0.693359375)
# Taylor coefficients 1/k! for k = 7 .. 2: on |r| <= ln2 / 2 the truncation error is below 6e-9.
_C7, _C6, _C5, _C4, _C3, _C2 = (_F32(1.0 / math.factorial(k)) for k in range(7, 1, -1))
# 1 / (2i + 1) for i = 6 .. 1: log1p(y) = 2 atanh(t), t = y / (2 + y) <= 1/3 for y in [0, 1]; the first
# term left out, 2 t^15 / 15, is below 1.5e-8 relative.
_T13, _T11, _T9, _T7, _T5, _T3 = (_F32(1.0 / (2 * i + 1)) for i in range(6, 0, -1))
_SOFTPLUS_THRESHOLD = _F32(contract.SOFTPLUS_THRESHOLD)


@intrinsic
def _f32_from_bits(typingctx, bits):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """The float32 whose bit pattern is the int32 ``bits`` (an LLVM bitcast)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return numba.types.float32(numba.types.int32), codegen


@numba.njit(inline="always", fastmath=_FAST, error_model="numpy")
def exp32(x):  # noqa: ANN001, ANN201
    """exp(x) for float32 x <= 88, within 1 ulp, in ops that vectorise: x = n ln2 + r, a degree-7
    polynomial in r, and 2^n built from its exponent bits. Below -87 it is 0, not a denormal: a
    denormal decay would make every later product of the state denormal, ~100x slower on x86."""
    xc = max(x, _F32(-87.0))
    n = np.floor(xc * _LOG2E + _F32(0.5))
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = _C7 * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _F32(1.0)
    p = p * r + _F32(1.0)
    e = p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    return e if x > _F32(-87.0) else _F32(0.0)


@numba.njit(inline="always", fastmath=_FAST, error_model="numpy")
def softplus32(x):  # noqa: ANN001, ANN201
    """The contract's softplus (x itself above its threshold) within ~2 ulp, vectorisable:
    max(x, 0) + log1p(exp(-|x|)), log1p(y) = 2 atanh(y / (2 + y)) as an odd series, which keeps its
    relative precision for the tiny y of very negative x (where log(1 + y) would lose it)."""
    y = exp32(-abs(x))
    t = y / (_F32(2.0) + y)
    t2 = t * t
    q = _T13 * t2 + _T11
    q = q * t2 + _T9
    q = q * t2 + _T7
    q = q * t2 + _T5
    q = q * t2 + _T3
    q = q * t2 + _F32(1.0)
    sp = max(x, _F32(0.0)) + _F32(2.0) * t * q
    return x if x > _SOFTPLUS_THRESHOLD else sp


@numba.njit(nogil=True, fastmath=_FAST, error_model="numpy", cache=True)
def _scan_items(u, x_dbl, wdt, bias, a, d, height, width, items, out):  # noqa: ANN001, ANN202
    """out[b, p, j] = the sum over the 4 orders of y_k at pixel p, channel j, for each item (b, j0, j1).

    u and out (Bt, L, Di) channels-last; x_dbl (Bt, L, K, R + 2N), the x_proj output: the dt rank
    columns, then B, then C; wdt (K, R, Di) is dt_proj's weight transposed, bias (K, Di) its bias;
    a (K, N, Di) is A transposed, d (K, Di) the skip. Per step: delta = softplus(dt_proj(dt) + bias),
    h = exp(delta A) h + delta u B, y = C h + D u. The orders are added as SS2D's merge adds them,
    (0 + 2) + 1 + 3; the state h is (N, Di), so the innermost loops run over contiguous channels. The
    loops index 1-D contiguous views from 0, which lets them vectorise (an index that could be
    negative, or a 2-D slice, makes numba gather element by element).
    """
    length, rank, n_state = u.shape[1], wdt.shape[1], a.shape[1]
    h = np.empty((n_state, u.shape[2]), np.float32)
    acc = np.empty(u.shape[2], np.float32)
    delta = np.empty(u.shape[2], np.float32)
    du = np.empty(u.shape[2], np.float32)
    for item in range(items.shape[0]):
        b, j0, j1 = items[item, 0], items[item, 1], items[item, 2]
        width_j = j1 - j0
        for ki in range(4):
            k = (0, 2, 1, 3)[ki]
            h[:, :width_j] = 0.0
            bk, dk = bias[k, j0:j1], d[k, j0:j1]
            for s in range(length):
                q = s if k < 2 else length - 1 - s
                p = q if k % 2 == 0 else (q % height) * width + q // height
                ul, xl = u[b, p, j0:j1], x_dbl[b, p, k]
                for j in range(width_j):
                    delta[j] = bk[j]
                for r in range(rank):
                    xr, wr = xl[r], wdt[k, r, j0:j1]
                    for j in range(width_j):
                        delta[j] += xr * wr[j]
                for j in range(width_j):
                    dt = softplus32(delta[j])
                    delta[j] = dt
                    du[j] = dt * ul[j]
                    acc[j] = dk[j] * ul[j]
                for n in range(n_state):
                    bn, cn, hn, an = xl[rank + n], xl[rank + n_state + n], h[n], a[k, n, j0:j1]
                    for j in range(width_j):
                        hv = exp32(delta[j] * an[j]) * hn[j] + du[j] * bn
                        hn[j] = hv
                        acc[j] += cn * hv
                ol = out[b, p, j0:j1]
                if ki == 0:
                    for j in range(width_j):
                        ol[j] = acc[j]
                else:
                    for j in range(width_j):
                        ol[j] += acc[j]


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for the kernel (it releases the GIL), one pool per thread count, kept."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mhunet-ss2d")


def work_items(batch: int, channels: int, threads: int) -> list[np.ndarray]:
    """(b, j0, j1) items, one array per thread: every thread gets as many (image, channel block) pairs.

    Items never share an output element, so threads need no locks and the result does not depend on
    the thread count. Each image's channels are split into ``threads / gcd(batch, threads)`` blocks.
    """
    blocks = max(1, min(threads // math.gcd(batch, threads), channels))
    edges = np.linspace(0, channels, blocks + 1).astype(np.int64)
    items = np.array([(b, edges[i], edges[i + 1]) for b in range(batch) for i in range(blocks)], np.int64)
    return [part for part in np.array_split(items, min(threads, len(items))) if len(part)]


def ss2d_scan(
    u: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """SS2D's merged scan output y (Bt, L, Di), channels-last, L = height * width row-major.

    u (Bt, L, Di); x_dbl (Bt, L, K, R + 2N), x_proj's output per pixel and order; dt_weight (K, Di, R)
    and dt_bias (K, Di), dt_proj's; A (K * Di, N); D (K * Di). Runs on ``torch.get_num_threads()``
    threads.
    """
    bsz, length, di = u.shape
    k, rank = K_DIRECTIONS, dt_weight.shape[2]
    n = A.shape[1]
    if length != height * width or x_dbl.shape != (bsz, length, k, rank + 2 * n):
        raise ValueError(f"ss2d_scan: u {tuple(u.shape)}, x_dbl {tuple(x_dbl.shape)} for {height}x{width}")

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().contiguous().numpy()

    args = (
        host(u),
        host(x_dbl),
        host(dt_weight.transpose(1, 2)),
        host(dt_bias.reshape(k, di)),
        host(A.reshape(k, di, n).transpose(1, 2)),
        host(D.reshape(k, di)),
        height,
        width,
    )
    out = torch.empty(bsz, length, di, dtype=torch.float32)
    parts = work_items(bsz, di, torch.get_num_threads())
    if len(parts) == 1:
        _scan_items(*args, parts[0], out.numpy())
    else:
        pool = _pool(len(parts))
        for f in [pool.submit(_scan_items, *args, part, out.numpy()) for part in parts]:
            f.result()
    return out
