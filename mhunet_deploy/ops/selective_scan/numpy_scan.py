"""Selective scan in numpy: the runtime-side reference of the custom ONNX op (no torch here).

Used as the Python implementation of ``mhunet::SelectiveScan`` for ``onnx.reference.ReferenceEvaluator``
and as Polygraphy's plugin reference. Semantics are ``contract``'s (ARCHITECTURE.md, SelectiveScan
contract), identical to ``torch_scan.selective_scan_loop``.
"""

from __future__ import annotations

import functools

import numpy as np

from . import contract


def selective_scan_numpy(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool | int = True,
) -> np.ndarray:
    """y (Bt, D, L) in fp32 whatever u's dtype (fp64 for fp64 u), as the state; a loop over L vectorised
    over the rest."""
    cd = np.float64 if u.dtype == np.float64 else np.float32
    bsz, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    uc = u.astype(cd, copy=False)
    dt = delta.astype(cd)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(cd)[:, None]
    if delta_softplus:
        # logaddexp(0, x) = log(1 + e^x) without overflow; x itself above the contract threshold.
        dt = np.where(dt > contract.SOFTPLUS_THRESHOLD, dt, np.logaddexp(cd(0), dt))

    # Time-major layouts so each step reads contiguous blocks: (L, Bt, G, Dg[, N]).
    dt_t = dt.reshape(bsz, g, dg, length).transpose(3, 0, 1, 2)
    decay = np.exp(dt_t[..., None] * A.astype(cd).reshape(g, dg, n))  # exponent <= 0 for A < 0
    du_t = (dt * uc).reshape(bsz, g, dg, length).transpose(3, 0, 1, 2)[..., None]
    B_t = np.ascontiguousarray(B.astype(cd, copy=False).transpose(3, 0, 1, 2))[:, :, :, None, :]
    C_t = np.ascontiguousarray(C.astype(cd, copy=False).transpose(3, 0, 1, 2))[..., None]

    h = np.zeros((bsz, g, dg, n), dtype=cd)
    y = np.empty((length, bsz, g, dg), dtype=cd)
    for t in range(length):
        h *= decay[t]
        h += du_t[t] * B_t[t]
        y[t] = (h @ C_t[t])[..., 0]
    return y.transpose(1, 2, 3, 0).reshape(bsz, d, length) + D.astype(cd)[:, None] * uc


@functools.cache
def _op_class() -> type:
    """Build the OpRun subclass once; onnx is imported here only, so this module imports without it."""
    from onnx.reference.op_run import OpRun

    class SelectiveScanOp(OpRun):
        """``mhunet::SelectiveScan`` for ReferenceEvaluator; an absent delta_bias arrives as None. The
        parser attributes (``contract.PARSER_ATTRIBUTES``) are TensorRT's; a node of another plugin
        version is refused here too."""

        op_domain = contract.DOMAIN

        def _run(
            self,
            *inputs: np.ndarray | None,
            delta_softplus: int = contract.ATTRIBUTES["delta_softplus"],
            plugin_version: str | None = None,
            plugin_namespace: str | None = None,
        ) -> tuple[np.ndarray]:
            if plugin_version not in (None, contract.PLUGIN_VERSION):
                raise ValueError(
                    f"{contract.OP_TYPE} node of plugin version {plugin_version}; this is version "
                    f"{contract.PLUGIN_VERSION} (re-export the graph)"
                )
            return (selective_scan_numpy(*inputs, delta_softplus=bool(delta_softplus)),)

    # ReferenceEvaluator matches new ops by (op_domain, class __name__) against (domain, op_type).
    SelectiveScanOp.__name__ = contract.OP_TYPE
    SelectiveScanOp.__qualname__ = contract.OP_TYPE
    return SelectiveScanOp


def reference_ops() -> list[type]:
    """The ``new_ops`` list for ``onnx.reference.ReferenceEvaluator`` (needs onnx installed)."""
    return [_op_class()]
