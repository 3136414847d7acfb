// Selective-scan forward (Mamba S6) CUDA kernel: C ABI (contract v2: fp32 or fp16 inputs, fp32 y).
//
// Semantics (ARCHITECTURE.md, SelectiveScan contract; mamba-ssm's selective_scan_ref):
//   u (B, D, L), delta (B, D, L), A (D, N) fp32, Bm (B, G, N, L), Cm (B, G, N, L),
//   Dv (D) fp32, delta_bias (D) fp32 (may be null: no bias), y (B, D, L) fp32 whatever the input dtype.
//   channel d reads group d / (D / G) of Bm and Cm.
//   delta = softplus(delta + delta_bias) if delta_softplus (softplus(x) = x for x > 20)
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t ;  y_t = <C_t, h_t> + D * u_t
//   state and all accumulation in fp32. 1 <= N <= 16.
// Precondition (as in mamba-ssm): delta is a step size, so the effective step (delta + delta_bias, after
// softplus when delta_softplus) must be >= 0 and A <= 0, i.e. every decay exp(delta * A) <= 1. With
// delta_softplus = 1 this holds for any delta; with delta_softplus = 0 the CALLER must pass
// delta + delta_bias >= 0. A negative step makes exp(delta * A) > 1 and the fp32 state grows
// geometrically: over long L it overflows to inf/nan (the fp64 reference overflows later, not never).
// The kernel does not check this (it would cost a pass over delta); it is an invalid input, not a mode.
// All tensors are contiguous (row-major, last dim fastest). u, delta, Bm and Cm share one dtype, named by
// `dtype` (MHUNET_SCAN_FP32 or MHUNET_SCAN_FP16); y is float32 always.
#pragma once

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum MhunetScanStatus
{
    MHUNET_SCAN_OK = 0,
    MHUNET_SCAN_ERR_NULL_POINTER = 1,
    MHUNET_SCAN_ERR_BAD_SHAPE = 2,
    MHUNET_SCAN_ERR_BAD_DSTATE = 3,
    MHUNET_SCAN_ERR_BAD_GROUPS = 4,
    MHUNET_SCAN_ERR_BAD_DTYPE = 5,
    MHUNET_SCAN_ERR_BAD_CONFIG = 6,
    MHUNET_SCAN_ERR_CUDA = 7,
};

//! The dtype of u, delta, B and C (y is fp32 for both).
enum MhunetScanDtype
{
    MHUNET_SCAN_FP32 = 0,
    MHUNET_SCAN_FP16 = 1,
};

//! Largest supported state size N (d_state).
#define MHUNET_SCAN_MAX_DSTATE 16

//! Forward selective scan on `stream`. Returns MHUNET_SCAN_OK or an error code (see
//! mhunet_selective_scan_error_string). Asynchronous: launch errors are reported, execution errors are not.
int mhunet_selective_scan_fwd(const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const float* delta_bias, float* y, int batch, int dim, int len, int dstate, int groups,
    int delta_softplus, int dtype, cudaStream_t stream);

//! Same, with an explicit kernel configuration (for tuning): items = consecutive time steps per thread
//! (chunk of L per warp = 32 * items), cpw = channels per warp team, spi = states interleaved per
//! iteration, wpc = warps per channel (1, or 2: the two warps of a team split the N states), bcb = bytes
//! per B/C element in shared memory (4: fp32; 2: fp16, for fp16 inputs only), seg = steps per segment:
//! 0 = the chunked family above; > 0 = the sequential family (lane = channel, all N states in registers,
//! L split into segments of seg steps, three launches; items = steps per inner block, the other fields 1,
//! 1, 1, 4; kernels/NOTES.md, "Sequential lanes"), bufs = chunk buffers in shared memory (chunked family:
//! 1, or 2 = the next chunk's B/C rows and u/delta slices prefetched by cp.async while one is computed, for
//! B/C rows in the input dtype: bcb = 2 with fp16 inputs, bcb = 4 with fp32; the single-buffer twin runs
//! where L % 8 != 0 or a pointer is not 16-byte aligned; the sequential family: 1).
//! 0 picks the default for that parameter (with seg > 0: the sequential family's); a combination that is
//! not compiled (or bcb = 2 with fp32 inputs, or bufs = 2 with rows not in the input dtype) returns
//! MHUNET_SCAN_ERR_BAD_CONFIG (the list: mhunet_selective_scan_configs).
int mhunet_selective_scan_fwd_config(const void* u, const void* delta, const float* A, const void* B,
    const void* C, const float* D, const float* delta_bias, float* y, int batch, int dim, int len, int dstate,
    int groups, int delta_softplus, int dtype, int items, int cpw, int spi, int wpc, int bcb, int seg, int bufs,
    cudaStream_t stream);

//! The configuration mhunet_selective_scan_fwd uses for a shape and dtype (writes items, cpw, spi, wpc,
//! bcb, seg and bufs): a small table keyed on L, batch x dim and dtype, from the tuning sweep
//! (kernels/NOTES.md).
void mhunet_selective_scan_default_config(int batch, int dim, int len, int groups, int dtype, int* items,
    int* cpw, int* spi, int* wpc, int* bcb, int* seg, int* bufs);

//! The compiled configurations: writes up to `capacity` 7-tuples (items, cpw, spi, wpc, bcb, seg, bufs)
//! into `out` (7 ints each) and returns how many there are.
int mhunet_selective_scan_configs(int* out, int capacity);

//! Static, human-readable text for a status code.
const char* mhunet_selective_scan_error_string(int code);

//! The sha256 key of the sources this library was compiled from (MHUNET_SCAN_SOURCE_SHA256, defined by
//! plugins/CMakeLists.txt and `mhunet build-kernels`; "unknown" otherwise). The torch backend loads only a
//! library whose key matches its own sources (mhunet_deploy/ops/selective_scan/cuda.py).
const char* mhunet_selective_scan_source_sha256(void);

#ifdef __cplusplus
}
#endif
