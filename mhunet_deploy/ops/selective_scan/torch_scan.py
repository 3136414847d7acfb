"""Selective scan (Mamba S6) in torch, semantics of ``contract`` (ARCHITECTURE.md, SelectiveScan contract).

Four implementations, each a ``ScanFn`` (the package's one statement of the signature):

- ``selective_scan_loop``: a per-step Python loop, kept only as the test oracle;
- ``selective_scan_chunked``: the eager path (CPU inference, GPU training without mamba-ssm);
- ``selective_scan_logstep``: traceable by ``torch.onnx.export`` into plain ONNX ops (no Loop/Scan),
  in log2(L) levels of an odd-even reduction;
- the mamba-ssm CUDA kernel, picked by ``selective_scan`` on CUDA tensors when it imports.

Shapes: u, delta (Bt, D, L); A (D, N); B, C (Bt, G, N, L), channel d reads group d // (D // G);
D, delta_bias (D). The state, every accumulation and y are fp32 whatever u's dtype (fp64 for fp64
inputs). mamba-ssm writes y in u's dtype, so its adapter hands it fp32 data (fp16 y would overflow).
All implementations only exponentiate non-positive numbers (delta >= 0 after softplus, A < 0), so no
intermediate overflows whatever the delta range.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from . import ScanFn, contract, scan_args


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    """The state's and y's dtype: fp32 for every input type except fp64, which keeps fp64 (for gradcheck
    and tests)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus with the contract's threshold, written so the ONNX graph cannot overflow above it.

    ONNX ``Softplus`` has no threshold and is ``log(exp(x) + 1)`` in some runtimes; the Where keeps
    x itself where x > threshold, which also matches torch and mamba-ssm exactly.
    """
    if torch.jit.is_tracing():
        return torch.where(x > contract.SOFTPLUS_THRESHOLD, x, F.softplus(x))
    return F.softplus(x, threshold=contract.SOFTPLUS_THRESHOLD)  # the same function in one op


def _delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """The step size dt (Bt, D, L) in the compute dtype."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return _softplus(dt) if delta_softplus else dt


def selective_scan_loop(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Step-by-step recurrence: the oracle every faster variant is tested against (slow)."""
    u, delta, A, B, C, D, delta_bias, delta_softplus = scan_args(*args, **kwargs)
    cd = _compute_dtype(u)
    dt = _delta(delta, delta_bias, delta_softplus, cd)
    uc = u.to(cd)
    rep = u.shape[1] // B.shape[1]
    Bd = B.to(cd).repeat_interleave(rep, dim=1)  # (Bt, D, N, L)
    Cd = C.to(cd).repeat_interleave(rep, dim=1)
    Ac = A.to(cd)
    h = uc.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * Ac) * h + (dt[:, :, t] * uc[:, :, t])[:, :, None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    return torch.stack(ys, dim=-1) + D.to(cd)[:, None] * uc


#: Most elements (Bt * D * L * N) the parallel-chunk path holds per full-size temporary; larger batches
#: are split in halves (the temporaries are first-touched per call, and page faults cost as much as math).
CHUNKED_BLOCK = 1 << 24

#: Most elements (steps * Bt * D * N) one block of the sequential path materialises: 2 MiB in fp32, so
#: a block's decays and inputs are still in cache when the step loop and the C matmul read them.
SEQUENTIAL_BLOCK = 1 << 19


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block, then restored (~1 ms per use).

    The sequential path issues thousands of short ops; on several threads each is an OpenMP parallel
    region whose end waits for every thread, so on a loaded machine every op waits for a descheduled
    worker; one thread loses little when the machine is idle (BENCHMARKS.md section 9).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _default_chunk(length: int) -> int:
    """A power of two near sqrt(L), in [16, 64]: measured fastest for the parallel-chunk path on CPU."""
    return min(64, max(16, 1 << round(math.log2(math.sqrt(max(length, 1))))))


def selective_scan_chunked(*args: Any, chunk: int | None = None, **kwargs: Any) -> torch.Tensor:
    """Chunks of T steps side by side, each a loop over its steps run block by block, time-major.

    On CPU without autograd (inference) there is one chunk, T = L, its step loop run on one intra-op
    thread (see ``_one_intra_op_thread``) in blocks of a few steps whose decays and inputs stay in
    cache: every element is computed once, nothing (Bt, D, L, N)-sized is held, and the per-step ops
    are state-sized (Bt, D, N), large enough for op overhead not to matter (parallel chunks were
    memory-bound there). Otherwise (autograd, GPU) ~sqrt(L) chunks run in parallel from a zero
    state, each materialised whole (few long ops); the chunk carries are then propagated (a loop
    over L/T chunks on tiny tensors) and ``<C_t, exp(A * cumsum(dt)) * carry_in>`` is added. The C
    contraction is a batched matmul.
    """
    u, delta, A, B, C, D, delta_bias, delta_softplus = scan_args(*args, **kwargs)
    cd = _compute_dtype(u)
    bsz, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    inplace = not (
        torch.is_grad_enabled()
        and any(x is not None and x.requires_grad for x in (u, delta, A, B, C, D, delta_bias))
    )
    t_len = min(chunk or (length if inplace and u.device.type == "cpu" else _default_chunk(length)), length)
    nc = -(-length // t_len)
    if nc > 1 and bsz > 1 and bsz * d * nc * t_len * n > CHUNKED_BLOCK:  # bound the full-size temporaries
        half = bsz // 2
        parts = [(x[:half], x[half:]) for x in (u, delta, B, C)]
        halves = [(*(p[i] for p in parts[:2]), A, *(p[i] for p in parts[2:]), D) for i in (0, 1)]
        return torch.cat(
            [selective_scan_chunked(*a, delta_bias, delta_softplus, chunk=t_len) for a in halves]
        )
    sequential = nc == 1 and inplace
    dg = d // g
    pad = nc * t_len - length
    steps = min(t_len, max(1, SEQUENTIAL_BLOCK // (bsz * d * n))) if sequential else t_len

    def time_major(x: torch.Tensor, inner: int) -> torch.Tensor:
        """(Bt, G * inner, L) -> a new contiguous (T, Bt, G, nc, inner), zero-padded to nc * T steps.

        With one chunk this is a plain 2-D transpose, which torch copies in cache-sized tiles.
        """
        if nc == 1:
            xt = x.reshape(-1, t_len).t()
        else:
            xt = F.pad(x, (0, pad)).reshape(bsz, g, inner, nc, t_len).permute(4, 0, 1, 3, 2)
        return xt.clone(memory_format=torch.contiguous_format).view(t_len, bsz, g, nc, inner)

    # Padded steps (last chunk only) come after every real one, so they need no neutral values.
    uc = u.to(cd)
    dt = time_major(delta.to(cd), dg)
    if delta_bias is not None:
        dt += delta_bias.to(cd).view(g, 1, dg)
    if delta_softplus:
        dt = _softplus(dt)
    du = time_major(uc, dg).mul_(dt)
    B_t = time_major(B.to(cd), n)[..., None]  # (T, Bt, G, nc, N, 1)
    C_t = time_major(C.to(cd), n)[..., None, :]  # (T, Bt, G, nc, 1, N): y_t = C_t @ h_t
    Ag = A.to(cd).reshape(g, dg, n).transpose(1, 2).contiguous().view(g, 1, n, dg)  # state (N, Dg)
    # In place, each block's decays and inputs go to two reused buffers, and y overwrites du's steps
    # once their block has read them.
    bufs = [uc.new_empty(steps, bsz, g, nc, n, dg) for _ in range(2)] if inplace else [None, None]
    y = du if inplace else torch.empty_like(du)
    h = uc.new_zeros(bsz, g, nc, n, dg)
    one_thread = sequential and u.device.type == "cpu" and torch.get_num_threads() > 1
    with _one_intra_op_thread() if one_thread else contextlib.nullcontext():
        for t0 in range(0, t_len, steps):
            k = min(steps, t_len - t0)
            a_out, x_out = (b if b is None else b[:k] for b in bufs)
            a = torch.mul(dt[t0 : t0 + k, ..., None, :], Ag, out=a_out).exp_()  # (k, Bt, G, nc, N, Dg)
            x = torch.mul(du[t0 : t0 + k, ..., None, :], B_t[t0 : t0 + k], out=x_out)
            if inplace:  # x[t] becomes the state h_t, one fused op per step
                x[0].addcmul_(a[0], h)
                for t in range(1, k):
                    x[t].addcmul_(a[t], x[t - 1])
                h.copy_(x[-1])  # the buffers are reused by the next block
            else:
                hs = [torch.addcmul(x[0], a[0], h)]
                for t in range(1, k):
                    hs.append(torch.addcmul(x[t], a[t], hs[-1]))
                x = torch.stack(hs)
                h = hs[-1]
            y[t0 : t0 + k] = (C_t[t0 : t0 + k] @ x)[..., 0, :]
    if nc > 1:  # one block: h holds the chunks' zero-start end states
        # P_t = exp(A * cumsum(dt)) inside each chunk (into a's buffer when in place); P_T carries the
        # state from one chunk to the next.
        p = torch.mul(dt.cumsum(0)[..., None, :], Ag, out=bufs[0]).exp_()
        carry = uc.new_zeros(bsz, g, n, dg)
        carries = []
        for c in range(nc):
            carries.append(carry)
            carry = torch.addcmul(h[:, :, c], p[-1, :, :, c], carry)
        carry_in = torch.stack(carries, dim=2)
        y = y + (C_t @ (p.mul_(carry_in) if inplace else p * carry_in))[..., 0, :]
    if nc == 1:  # back to (Bt, D, L): the same tiled 2-D transpose
        out = y.view(t_len, -1).t().clone(memory_format=torch.contiguous_format).view(bsz, d, length)
    else:
        out = y.permute(1, 2, 4, 3, 0).reshape(bsz, d, nc * t_len)[..., :length]
    return out.addcmul_(D.to(cd)[:, None], uc)


def static_dims(x: torch.Tensor) -> tuple[int, ...]:
    """x's dims as Python ints, also while tracing, so the ONNX graph gets no Shape/Gather chains.

    Only the batch dim is dynamic in the exported model, and the log-step graph never reads it
    (reshapes use -1); D, N, G and L are fixed by the architecture and the image size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(s) for s in x.shape)


def _shift(x: torch.Tensor, k: int, dim: int, fill: float) -> torch.Tensor:
    """x shifted by k towards the end along dim (a negative axis), the first k entries set to fill.

    One Pad with a negative end pad (a crop), so the ONNX graph gets one node per shift.
    """
    return F.pad(x, (0, 0) * (-dim - 1) + (k, -k), value=fill)


def _halves(*xs: torch.Tensor) -> list[torch.Tensor]:
    """The even and odd steps (last axis) of each x, padded by one zero step first if L is odd."""
    out = []
    for x in xs:
        if static_dims(x)[-1] % 2:
            x = F.pad(x, (0, 1))
        out += [x[..., 0::2], x[..., 1::2]]
    return out


def _interleave(even: torch.Tensor, odd: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of ``_halves``: steps 0, 1, 2, ... of a length-L sequence (static reshape)."""
    *dims, half = static_dims(even)
    x = torch.stack([even, odd], dim=-1).reshape(-1, *dims[1:], 2 * half)
    return x[..., :length] if length < 2 * half else x


def _odd_even_scan(
    a_even: torch.Tensor, a_odd: torch.Tensor, x_even: torch.Tensor, x_odd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = a_t h_{t-1} + x_t (h_{-1} = 0) along the last axis, given as even and odd steps.

    Odd-even reduction: each pair of steps is combined, (a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2),
    the half-length sequence of pairs is scanned the same way (log2(L) levels, unrolled at trace time
    because L is static), and the even steps are filled in from the odd ones. O(L) work on tensors
    that halve every level, where a log-step (Hillis-Steele) scan does O(L log L) on full-size ones;
    only values in [0, 1] are multiplied, so fp32 cannot overflow. Returns (h_even, h_odd).
    """
    half = static_dims(x_odd)[-1]
    h_odd = a_odd * x_even + x_odd  # the pair's own state: right when half == 1
    if half > 1:
        a_pair = a_even * a_odd
        if half % 2:  # a padded step (a = 1, x = 0) keeps the state
            a_pair = F.pad(a_pair, (0, 1), value=1.0)
        h_odd = _interleave(*_odd_even_scan(*_halves(a_pair), *_halves(h_odd)), half)
    return a_even * _shift(h_odd, 1, -1, 0.0) + x_even, h_odd


def selective_scan_logstep(*args: Any, **kwargs: Any) -> torch.Tensor:
    """ONNX-exportable scan: an odd-even reduction in log2(L) levels, standard ops only.

    Only pad/slice/mul/add/exp/reshape/reduce/concat ops, no value-dependent control flow and no
    Loop/Scan: the levels are unrolled for the (export-time static) L. The full-size (Bt, G, Dg, N,
    L/2) decays and inputs are built from the even and odd steps of the small inputs, and C is
    contracted before the outputs are interleaved, so no full-size tensor is sliced or interleaved.
    Batch stays dynamic because every reshape uses -1 for it.
    """
    u, delta, A, B, C, D, delta_bias, delta_softplus = scan_args(*args, **kwargs)
    cd = _compute_dtype(u)
    _, d, length = static_dims(u)
    g, n = static_dims(B)[1], static_dims(A)[1]
    dg = d // g
    uc = u.to(cd)
    dt = _delta(delta, delta_bias, delta_softplus, cd)
    # A padded last step (odd L) has dt = 0 and no input: it keeps the state, and its output is dropped.
    dt_e, dt_o, du_e, du_o = _halves(
        dt.reshape(-1, g, dg, 1, length), (dt * uc).reshape(-1, g, dg, 1, length)
    )
    B_e, B_o, C_e, C_o = _halves(B.to(cd).reshape(-1, g, 1, n, length), C.to(cd).reshape(-1, g, 1, n, length))
    Ag = A.to(cd).reshape(g, dg, n, 1)
    h_e, h_o = _odd_even_scan(torch.exp(dt_e * Ag), torch.exp(dt_o * Ag), du_e * B_e, du_o * B_o)
    y = _interleave((h_e * C_e).sum(3), (h_o * C_o).sum(3), length)  # (Bt, G, Dg, L)
    return y.reshape(-1, d, length) + D.to(cd)[:, None] * uc


@functools.cache
def _mamba_cuda() -> ScanFn | None:
    """mamba-ssm's fused CUDA kernel, or None where the package (or its extension) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        u, delta, A, B, C, D, delta_bias, delta_softplus = scan_args(*args, **kwargs)
        # Its y has u's dtype, written from its fp32 accumulator: fp16 y would overflow (~3.5e5 with the
        # trained weights), so it gets fp32 data and gives the contract's fp32 y.
        u, delta, B, C = (x.to(_compute_dtype(u)) for x in (u, delta, B, C))
        return selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, delta_softplus)  # z, then bias

    return run


_IMPLS: dict[str, ScanFn] = {
    "chunked": selective_scan_chunked,
    "logstep": selective_scan_logstep,
    "loop": selective_scan_loop,
}
_ACTIVE: contextvars.ContextVar[str] = contextvars.ContextVar("mhunet_scan_impl", default="auto")


def register_scan_impl(name: str, fn: ScanFn) -> None:
    """Add (or replace) a named implementation, e.g. the exporter's custom-ONNX-node "plugin" one."""
    if name == "auto":
        raise ValueError("'auto' is the dispatcher itself and cannot be registered")
    _IMPLS[name] = fn


def scan_impls() -> tuple[str, ...]:
    """The names ``use_scan_impl`` accepts."""
    return ("auto", *_IMPLS)


def active_scan_impl() -> str:
    """The implementation ``use_scan_impl`` forces here, or "auto" (the default dispatcher)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def use_scan_impl(name: str) -> Iterator[None]:
    """Force one implementation for every ``selective_scan`` call inside the block (e.g. for export)."""
    if name not in scan_impls():
        raise ValueError(f"unknown scan implementation {name!r}; known: {', '.join(scan_impls())}")
    token = _ACTIVE.set(name)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def selective_scan(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The model's entry point (a ScanFn): the forced implementation, else mamba-ssm on CUDA, else
    chunked."""
    args = scan_args(*args, **kwargs)
    name = _ACTIVE.get()
    if name != "auto":
        fn = _IMPLS[name]
    else:
        cuda_fn = _mamba_cuda() if args[0].is_cuda else None
        fn = cuda_fn or selective_scan_chunked
    return fn(*args)
