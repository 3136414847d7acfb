// Selective-scan forward kernel (see selective_scan.h for the semantics, NOTES.md for the design).
//
// Work decomposition
//   block  = 4 teams x WPC warps = 4 * CPW channels of ONE group of ONE batch element;
//   team   = WPC warps (1 or 2) = CPW channels, the whole length L, in chunks of CHUNK = 32 * NITEMS steps;
//            with WPC = 2 its two warps split the N states and sum their partial y through smem;
//   lane   = NITEMS consecutive time steps of the chunk (registers).
// Per chunk: the block stages B and C of its group (N x CHUNK; fp32 rows, or for fp16 inputs optionally
// fp16 rows: BCB) in shared memory once and every warp reuses them for its channels (B/C are read from DRAM/L2 once per block, not once per
// channel). For each state n a lane composes its NITEMS steps into one affine map h -> a*h + b, the
// warp combines the 32 maps with a shuffle scan (Kogge-Stone), applies the carry from the previous
// chunk, and re-runs its steps from the correct incoming state to accumulate y += C * h.
// The carry (state at the end of the chunk) per (channel, n) lives in shared memory.
// Contract v2: u, delta, B, C are fp32 or fp16 (one dtype); y is always fp32.
// A second family (config field seg > 0, "Sequential family" below) has no scan across lanes: lane =
// channel with all states in registers, L split into segments, three launches.
#include "selective_scan.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mhunet
{
namespace scan
{

constexpr int kMaxN = MHUNET_SCAN_MAX_DSTATE;
constexpr int kTeams = 4;       // channel teams per block
constexpr int kConfigFields = 7; // items, cpw, spi, wpc, bcb, seg, bufs
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kSoftplusThreshold = 20.0f;

struct Params
{
    const void* u;
    const void* delta;
    const float* A;
    const void* B;
    const void* C;
    const float* D;
    const float* delta_bias;
    float* y;
    int batch, dim, len, dstate, groups;
    int dim_per_group, tiles_per_group;
    int delta_softplus;
    int async_ok; // L % 8 == 0 and u, delta, B, C 16-byte aligned: every staging vector can be a cp.async
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float fast_exp2(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

template <int BYTES> struct RawVec;
template <> struct RawVec<16> { using type = uint4; };
template <> struct RawVec<8> { using type = uint2; };
template <> struct RawVec<4> { using type = unsigned int; };
template <> struct RawVec<2> { using type = unsigned short; };

template <typename V> __device__ __forceinline__ V load_stream(const V* p) { return __ldcs(p); }
template <typename V> __device__ __forceinline__ V load_keep(const V* p) { return __ldg(p); }

// Vector width (bytes) of NI consecutive elements of T: up to 16.
template <typename T, int NI> __host__ __device__ constexpr int vec_bytes()
{
    return (NI * (int) sizeof(T)) < 16 ? NI * (int) sizeof(T) : 16;
}

// Loads NI consecutive elements starting at p (of which nvalid are in range) as they are stored (no
// conversion), so that a load can be issued a whole block of work before its values are needed
// (software prefetch: NOTES.md, "Prefetch"); out-of-range elements read as 0. Vector loads (up to 16
// bytes) when the address is aligned and all NI are valid.
template <typename T, int NI, bool STREAM>
__device__ __forceinline__ void load_raw(const T* p, int nvalid, T (&out)[NI])
{
    constexpr int VB = vec_bytes<T, NI>();
    constexpr int VE = VB / (int) sizeof(T);
    using V = typename RawVec<VB>::type;
    if (nvalid >= NI && (reinterpret_cast<uintptr_t>(p) % VB) == 0)
    {
#pragma unroll
        for (int v = 0; v < NI / VE; ++v)
        {
            V raw = STREAM ? load_stream(reinterpret_cast<const V*>(p) + v) : load_keep(reinterpret_cast<const V*>(p) + v);
            memcpy(out + v * VE, &raw, VB);
        }
    }
    else
    {
#pragma unroll
        for (int i = 0; i < NI; ++i)
            out[i] = i < nvalid ? p[i] : from_float<T>(0.f);
    }
}

template <typename T, int NI>
__device__ __forceinline__ void to_floats(const T (&in)[NI], float (&out)[NI])
{
#pragma unroll
    for (int i = 0; i < NI; ++i)
        out[i] = to_float(in[i]);
}

// load_raw, then fp32: for values needed at once.
template <typename T, int NI, bool STREAM>
__device__ __forceinline__ void load_items(const T* p, int nvalid, float (&out)[NI])
{
    T raw[NI];
    load_raw<T, NI, STREAM>(p, nvalid, raw);
    to_floats(raw, out);
}

template <typename T, int NI>
__device__ __forceinline__ void store_items(T* p, int nvalid, const float (&in)[NI])
{
    constexpr int VB = (NI * (int) sizeof(T)) < 16 ? NI * (int) sizeof(T) : 16;
    constexpr int VE = VB / (int) sizeof(T);
    using V = typename RawVec<VB>::type;
    if (nvalid >= NI && (reinterpret_cast<uintptr_t>(p) % VB) == 0)
    {
#pragma unroll
        for (int v = 0; v < NI / VE; ++v)
        {
            T tmp[VE];
#pragma unroll
            for (int e = 0; e < VE; ++e)
                tmp[e] = from_float<T>(in[v * VE + e]);
            V raw;
            memcpy(&raw, tmp, VB);
            __stcs(reinterpret_cast<V*>(p) + v, raw);
        }
    }
    else
    {
#pragma unroll
        for (int i = 0; i < NI; ++i)
            if (i < nvalid)
                p[i] = from_float<T>(in[i]);
    }
}

// cp.async (sm_80+): BYTES (4, 8 or 16) from global src into shared dst without a register round trip;
// the first src_bytes are copied, the rest zero-filled (src_bytes = 0: nothing is read; src must still be
// a valid address). 16-byte copies bypass L1 (.cg), smaller ones cannot (.ca).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes)
{
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(BYTES), "r"(src_bytes)
                     : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

// NI consecutive elements of T at p (shared memory, aligned to their vector width), as fp32.
template <typename T, int NI>
__device__ __forceinline__ void lds_raw_items(const T* p, float (&out)[NI])
{
    constexpr int VB = vec_bytes<T, NI>();
    constexpr int VE = VB / (int) sizeof(T);
    using V = typename RawVec<VB>::type;
    T raw[NI];
#pragma unroll
    for (int v = 0; v < NI / VE; ++v)
    {
        const V q = reinterpret_cast<const V*>(p)[v];
        memcpy(raw + v * VE, &q, VB);
    }
    to_floats(raw, out);
}

// Shared-memory column of time step l inside a chunk: 4 floats of padding every 32 steps, so that the
// 16-byte reads of the NITEMS-wide lane slices (and of their halves) hit distinct banks (see NOTES.md).
__device__ __forceinline__ int pad_col(int l) { return l + 4 * (l >> 5); }

template <int NITEMS> __host__ __device__ constexpr int chunk_pad() { return 32 * NITEMS + 4 * NITEMS; }

// The same for fp16 B/C rows (BCB = 2): 8 halves (16 bytes) of padding every 64 steps, so that the 16-byte
// reads of an 8-lane phase hit distinct banks at ITEMS = 16 (at ITEMS <= 8 a phase reads 128 contiguous
// bytes anyway). A row has 32 * ITEMS + 4 * ITEMS halves, chunk_pad<ITEMS>() elements as the fp32 rows.
__device__ __forceinline__ int pad_col_h(int l) { return l + 8 * (l >> 6); }
__device__ __forceinline__ int bc_col(const float*, int l) { return pad_col(l); }
__device__ __forceinline__ int bc_col(const __half*, int l) { return pad_col_h(l); }

// NI consecutive floats of a padded shared-memory row starting at column l (NI * 4 bytes aligned).
template <int NI>
__device__ __forceinline__ void lds_items(const float* row, int l, float (&out)[NI])
{
    static_assert(NI == 2 || NI % 4 == 0, "2 or a multiple of 4 floats");
    const float* p = row + pad_col(l);
    if constexpr (NI >= 4)
    {
#pragma unroll
        for (int v = 0; v < NI / 4; ++v)
        {
            const float4 q = reinterpret_cast<const float4*>(p)[v];
            out[4 * v + 0] = q.x;
            out[4 * v + 1] = q.y;
            out[4 * v + 2] = q.z;
            out[4 * v + 3] = q.w;
        }
    }
    else
    {
        const float2 q = *reinterpret_cast<const float2*>(p);
        out[0] = q.x;
        out[1] = q.y;
    }
}

// NI consecutive halves of a padded fp16 B/C row starting at column l, as fp32 (one 16-byte read per 8).
template <int NI>
__device__ __forceinline__ void lds_items(const __half* row, int l, float (&out)[NI])
{
    constexpr int VB = 2 * NI < 16 ? 2 * NI : 16;
    using V = typename RawVec<VB>::type;
    const V* p = reinterpret_cast<const V*>(row + pad_col_h(l));
#pragma unroll
    for (int v = 0; v < 2 * NI / VB; ++v)
    {
        const V raw = p[v];
        __half2 h2[VB / 4];
        memcpy(h2, &raw, VB);
#pragma unroll
        for (int e = 0; e < VB / 4; ++e)
        {
            const float2 f = __half22float2(h2[e]);
            out[v * (VB / 2) + 2 * e] = f.x;
            out[v * (VB / 2) + 2 * e + 1] = f.y;
        }
    }
}

// Stores 16 bytes of a B/C row as loaded (VE elements of T, see load_raw) into the smem row element `dst`
// of type BC: fp32 rows take them converted, fp16 rows (BCB = 2, T = __half) as they are.
template <typename T, typename BC>
__device__ __forceinline__ void store_bc(const T (&raw)[16 / sizeof(T)], BC* dst)
{
    constexpr int VE = 16 / (int) sizeof(T);
    if constexpr (sizeof(BC) == sizeof(float))
    {
        float v[VE];
        to_floats(raw, v);
#pragma unroll
        for (int e = 0; e < VE; e += 4)
            reinterpret_cast<float4*>(dst)[e / 4] = make_float4(v[e], v[e + 1], v[e + 2], v[e + 3]);
    }
    else
    {
        static_assert(sizeof(T) == 2, "fp16 B/C rows take fp16 inputs only");
        uint4 q;
        memcpy(&q, raw, 16);
        *reinterpret_cast<uint4*>(dst) = q;
    }
}

template <int NI>
__device__ __forceinline__ void sts_items(float* row, int l, const float (&in)[NI])
{
    static_assert(NI == 2 || NI % 4 == 0, "2 or a multiple of 4 floats");
    float* p = row + pad_col(l);
    if constexpr (NI >= 4)
    {
#pragma unroll
        for (int v = 0; v < NI / 4; ++v)
            reinterpret_cast<float4*>(p)[v] = make_float4(in[4 * v], in[4 * v + 1], in[4 * v + 2], in[4 * v + 3]);
    }
    else
        *reinterpret_cast<float2*>(p) = make_float2(in[0], in[1]);
}

// Warps per block: kTeams channel teams of WPC warps each (a team = CPW channels).
template <int WPC> __host__ __device__ constexpr int block_warps() { return kTeams * WPC; }

template <int NITEMS, int CPW, int WPC, int BCB, int BUFS>
constexpr size_t smem_bytes(int dstate, int in_bytes)
{
    // BUFS x (B rows, C rows [N][CPAD], a zero row [CPAD] of BCB bytes each: a multiple of 16 bytes for any
    // N); then fp32: A2s, carry_s [kTeams][CPW][kMaxN]; with WPC = 2 the exchange rows xs
    // [kTeams][CPW][CPAD]; with BUFS = 2 the u / delta slices of both buffers, [2][kTeams][CPW][2][32 NITEMS]
    // of the input dtype
    return (size_t) BUFS * BCB * (2 * (size_t) dstate + 1) * chunk_pad<NITEMS>()
        + sizeof(float)
        * (2 * (size_t) kTeams * CPW * kMaxN + (WPC > 1 ? (size_t) kTeams * CPW * chunk_pad<NITEMS>() : 0))
        + (BUFS > 1 ? (size_t) in_bytes * 2 * kTeams * CPW * 2 * 32 * NITEMS : 0);
}

// softplus(x) = log1p(exp(x)) as max(x, 0) + log1p(z), z = exp(-|x|) in (0, 1]; log1p(z) = 2 atanh(s) with
// s = z / (2 + z) in (0, 1/3], whose odd series 2 s (1 + t/3 + ... + t^6/13), t = s^2 <= 1/9, is cut at a
// relative 1.4e-8. Branch-free, 17 instructions (the form with a full-precision logf took ~40, with
// branches: 2.5 instructions per state update at 16 states; NOTES.md). x itself above the contract's
// threshold, as in mamba-ssm (where x + log1p(e^-x) rounds to x anyway).
__device__ __forceinline__ float softplus(float x)
{
    const float z = fast_exp2(-fabsf(x) * kLog2e);
    const float s = __fdividef(z, 2.f + z);
    const float t = s * s;
    float q = 2.f / 13.f;
    q = fmaf(q, t, 2.f / 11.f);
    q = fmaf(q, t, 2.f / 9.f);
    q = fmaf(q, t, 2.f / 7.f);
    q = fmaf(q, t, 2.f / 5.f);
    q = fmaf(q, t, 2.f / 3.f);
    q = fmaf(q, t, 2.f);
    const float r = fmaxf(x, 0.f) + s * q;
    float out; // a select in PTX: written as ?:, the compiler branched around the whole computation
    asm("{\n\t.reg .pred p;\n\tsetp.gt.f32 p, %1, %2;\n\tselp.f32 %0, %1, %3, p;\n\t}"
        : "=f"(out)
        : "f"(x), "f"(kSoftplusThreshold), "f"(r));
    return out;
}

// One Kogge-Stone step of the lane scan: where take, (pa, pb) <- (pa qa, pa qb + pb), predicated in place
// (written as an `if`, the compiler computed both into temporaries and committed them with two MOVs).
__device__ __forceinline__ void scan_step(float& pa, float& pb, float qa, float qb, bool take)
{
    asm("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %4, 0;\n\t@p fma.rn.f32 %1, %0, %3, %1;\n\t@p mul.rn.f32 %0, %0, %2;\n\t}"
        : "+f"(pa), "+f"(pb)
        : "f"(qa), "f"(qb), "r"((int) take));
}

// Barrier of the WPC warps of one team only (ids 1..kTeams; __syncthreads uses 0).
template <int WPC> __device__ __forceinline__ void team_sync(int team)
{
    asm volatile("bar.sync %0, %1;" ::"r"(team + 1), "r"(WPC * 32) : "memory");
}

// T = the input dtype of u, delta, B and C (float or __half); y is always fp32 (contract v2).
// SPI = states per iteration: SPI independent states go through the compose -> shuffle scan -> re-run
// chain side by side, so one state's shuffle latency hides behind another's arithmetic (NOTES.md:
// the single-state chain left the schedulers idle).
// WPC = warps per channel (1 or 2). With 2, the two warps of a team split the N states (warp `part`
// takes states [part * ceil(N/2), ...)), each computes softplus for half of each lane's steps and hands
// it to its partner through xs, and their partial y (over their states) are summed through xs: warp
// `part` finalises and stores steps [part * NITEMS/2, (part + 1) * NITEMS/2) of each lane. No exp is
// computed twice. xs rows are reused by both exchanges: each warp overwrites only positions that it
// alone has read before (NOTES.md, "Two warps per channel").
// BCB = bytes per B/C element in shared memory: 4 (fp32 rows) or 2 (fp16 rows, fp16 inputs only: staged
// as loaded, converted on each read; half the shared memory and half the read wavefronts per state).
// BUFS = chunk buffers in shared memory (NOTES.md, "Staging and prefetch"). 1: each chunk's B/C rows are
// staged at its start, all of a thread's loads in flight at once (cp.async where the rows take the input
// dtype and p.async_ok, else register loads in batches); 2 (one warp per channel, rows in the input dtype,
// p.async_ok only: the launcher runs the BUFS = 1 twin otherwise): while a chunk is computed, cp.async
// fills the other buffer with the next chunk's B/C rows and every lane's u / delta slices.
// MINB = the launch bounds' minimum resident blocks per SM: a register cap per configuration (NOTES.md,
// "Resource usage"), chosen so that ptxas does not jump to the next occupancy step and nothing spills;
// 0 = none (ptxas's own occupancy heuristic, as for every one-warp configuration).
template <typename T, int NITEMS, int CPW, int SPI, int WPC, int BCB, int BUFS, int MINB>
__global__ void __launch_bounds__(block_warps<WPC>() * 32, MINB) selective_scan_fwd_kernel(const Params p)
{
    static_assert(WPC == 1 || WPC == 2, "one or two warps per channel");
    static_assert(BCB == 4 || (BCB == 2 && sizeof(T) == 2), "fp16 B/C rows for fp16 inputs only");
    using BC = typename std::conditional<BCB == 2, __half, float>::type;
    constexpr bool RAW = std::is_same<BC, T>::value; // rows hold B/C as loaded: cp.async can stage them
    static_assert(BUFS == 1 || (BUFS == 2 && WPC == 1 && RAW), "double buffers: one warp per channel, raw rows");
    static_assert(NITEMS % WPC == 0, "each warp of a team finalises NITEMS / WPC steps per lane");
    constexpr int CHUNK = 32 * NITEMS;
    constexpr int CPAD = chunk_pad<NITEMS>();
    constexpr int PART = NITEMS / WPC;         // steps per lane whose softplus and y this warp owns
    constexpr int NTHREADS = block_warps<WPC>() * 32;
    constexpr int VE = 16 / (int) sizeof(T);   // elements per 16-byte vector for the B/C staging
    constexpr bool STREAM = WPC == 1;          // u is read by both warps of a team: keep it in L1 then
    extern __shared__ __align__(16) float smem[];
    const int N = p.dstate;
    // [BUFS][2N + 1][CPAD]: per buffer N B rows, N C rows and a zero row (the C of a padding state)
    BC* Bs = reinterpret_cast<BC*>(smem);
    const int bstride = (2 * N + 1) * CPAD;
    float* A2s = reinterpret_cast<float*>(Bs + BUFS * bstride); // [kTeams][CPW][kMaxN] A * log2(e)
    float* carry_s = A2s + kTeams * CPW * kMaxN;       // [kTeams][CPW][kMaxN]   state at chunk end
    float* xs = carry_s + kTeams * CPW * kMaxN;        // [kTeams][CPW][CPAD]    WPC = 2 only
    T* uds = reinterpret_cast<T*>(xs + (WPC > 1 ? kTeams * CPW * CPAD : 0)); // [2][kTeams][CPW][2][CHUNK] BUFS = 2

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int team = warp / WPC;
    const int part = warp % WPC;
    const int L = p.len;
    // this warp's states: nbeg .. nbeg + nst - 1 (the loop below runs over k = n - nbeg, on shifted bases)
    const int nper = (N + WPC - 1) / WPC;
    const int nbeg = min(N, part * nper);
    const int nst = min(N, nbeg + nper) - nbeg;

    int blk = blockIdx.x;
    const int tile = blk % p.tiles_per_group;
    blk /= p.tiles_per_group;
    const int g = blk % p.groups;
    const int b = blk / p.groups;

    const int local0 = tile * (kTeams * CPW) + team * CPW; // channel index inside the group
    const int d0 = g * p.dim_per_group + local0;
    bool valid[CPW];
    float Dc[CPW], bias[CPW];
#pragma unroll
    for (int c = 0; c < CPW; ++c)
    {
        valid[c] = local0 + c < p.dim_per_group;
        const int d = valid[c] ? d0 + c : 0;
        Dc[c] = p.D ? __ldg(p.D + d) : 0.f;
        bias[c] = p.delta_bias ? __ldg(p.delta_bias + d) : 0.f;
    }
    float* xw = xs + team * CPW * CPAD;
    for (int i = threadIdx.x; i < BUFS * CPAD; i += NTHREADS) // the zero rows (never staged into)
        Bs[(i / CPAD) * bstride + 2 * N * CPAD + i % CPAD] = BC(0.f);
    if (part == 0)
    {
        for (int i = lane; i < CPW * kMaxN; i += 32)
        {
            const int c = i / kMaxN, n = i % kMaxN;
            const int d = (local0 + c < p.dim_per_group) ? d0 + c : 0;
            A2s[team * CPW * kMaxN + i] = n < N ? __ldg(p.A + (size_t) d * N + n) * kLog2e : 0.f;
            carry_s[team * CPW * kMaxN + i] = 0.f;
        }
    }
    // (read only after the first chunk's __syncthreads). This warp's views, from its first state on:
    const float* A2w = A2s + team * CPW * kMaxN + nbeg;
    float* carry_w = carry_s + team * CPW * kMaxN + nbeg;

    const T* u = static_cast<const T*>(p.u);
    const T* dl = static_cast<const T*>(p.delta);
    float* y = p.y;
    const size_t bc_base = ((size_t) b * p.groups + g) * (size_t) N * L;
    const T* Bg = static_cast<const T*>(p.B) + bc_base;
    const T* Cg = static_cast<const T*>(p.C) + bc_base;

    // Vector i (16 bytes) of the B/C rows of the chunk starting at c0: row n2 = i / NVEC of the 2N (B rows,
    // then C rows), column col; returns its first element in global memory. NVEC is a power of 2, so no
    // integer division (with a runtime divisor it was ~50 instructions per 16-byte copy).
    constexpr int NVEC = CHUNK / VE;
    static_assert((NVEC & (NVEC - 1)) == 0, "vectors per row: a power of 2");
    const auto bc_vector = [&](int i, int c0, int& n2, int& col) -> const T* {
        n2 = i / NVEC;
        col = (i % NVEC) * VE;
        const bool is_c = n2 >= N;
        return (is_c ? Cg : Bg) + (size_t) (n2 - (is_c ? N : 0)) * L + c0 + col;
    };
    // Element offset of channel c's row in u and delta (a channel past the group's end reads channel 0's
    // row; its y is not stored, so the stores below take the row unclamped).
    const auto chan_row = [&](int c) { return ((size_t) b * p.dim + (valid[c] ? d0 + c : 0)) * L; };
    // This lane's u slice of channel c in u / delta buffer buf (BUFS = 2; its delta slice follows CHUNK on).
    const auto ud_slice = [&](int buf, int c) {
        return uds + ((size_t) ((buf * kTeams + team) * CPW + c) * 2) * CHUNK + lane * NITEMS;
    };
    // B/C rows of chunk c0 into buffer buf by cp.async (needs p.async_ok: 16-byte aligned vectors that are
    // wholly in or out of range); with BUFS = 2 also every lane's u / delta slices of its channels.
    auto issue_chunk = [&](int c0, int buf) {
        BC* Bb = Bs + buf * bstride;
#pragma unroll 1 // (unrolled, ptxas keeps every copy's addresses live: +40 registers, spills)
        for (int i = threadIdx.x; i < 2 * N * NVEC; i += NTHREADS)
        {
            int n2, col;
            const T* src = bc_vector(i, c0, n2, col);
            BC* row = Bb + n2 * CPAD;
            const bool in = c0 + col < L;
            cp_async<16>(row + bc_col(row, col), in ? src : Bg, in ? 16 : 0);
        }
        if constexpr (BUFS > 1)
        {
            constexpr int PB = vec_bytes<T, NITEMS>(); // bytes per copy
            constexpr int PE = PB / (int) sizeof(T);
            const int ls = c0 + lane * NITEMS;
#pragma unroll
            for (int c = 0; c < CPW; ++c)
            {
                const size_t row = chan_row(c);
                T* dst = ud_slice(buf, c);
#pragma unroll
                for (int v = 0; v < NITEMS / PE; ++v)
                {
                    const bool in = valid[c] && ls + v * PE < L;
                    cp_async<PB>(dst + v * PE, in ? u + row + ls + v * PE : u, in ? PB : 0);
                    cp_async<PB>(dst + CHUNK + v * PE, in ? dl + row + ls + v * PE : dl, in ? PB : 0);
                }
            }
        }
    };
    if constexpr (BUFS > 1)
    {
        issue_chunk(0, 0);
        cp_async_commit();
    }

    int buf = 0; // the buffer of this chunk (BUFS = 2: alternating)
    for (int l0 = 0; l0 < L; l0 += CHUNK, buf ^= BUFS - 1)
    {
        __syncthreads(); // the previous chunk's reads of its buffer (and of xs) are done
        if constexpr (BUFS > 1)
        {
            if (l0 + CHUNK < L)
                issue_chunk(l0 + CHUNK, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>(); // this thread's copies of chunk l0 have landed
        }
        else if (RAW && p.async_ok)
            issue_chunk(l0, 0); // waited for after the u / delta loads below are issued
        else
        {
            // ---- stage B and C of this group for the chunk: N rows x CHUNK steps, in smem as BC; a
            // thread's loads in batches of SB ahead of their stores (one latency per batch, not per vector)
            constexpr int SB = WPC == 1 ? 4 : 2; // (two-warp kernels: fewer registers to spare)
            const int total = 2 * N * NVEC;
            for (int i0 = threadIdx.x; i0 < total; i0 += SB * NTHREADS)
            {
                T raw[SB][VE];
#pragma unroll
                for (int j = 0; j < SB; ++j)
                {
                    int n2, col; // past the end: reload the last vector
                    const T* src = bc_vector(min(i0 + j * NTHREADS, total - 1), l0, n2, col);
                    load_raw<T, VE, false>(src, L - (l0 + col), raw[j]);
                }
#pragma unroll
                for (int j = 0; j < SB; ++j)
                {
                    if (i0 + j * NTHREADS < total)
                    {
                        int n2, col;
                        bc_vector(i0 + j * NTHREADS, l0, n2, col);
                        BC* row = Bs + n2 * CPAD;
                        store_bc<T, BC>(raw[j], row + bc_col(row, col));
                    }
                }
            }
        }
        const BC* Bw = Bs + buf * bstride + nbeg * CPAD; // this warp's states in this chunk's buffer
        const BC* Cw = Bw + N * CPAD;
        const int zero_row = N - nbeg; // (relative to Cw)
        // ---- this lane's slice of u (all NITEMS steps) and the softplus of its PART steps of delta
        const int ls = l0 + lane * NITEMS;
        const int nvalid = L - ls;
        const int own = part * PART; // first step of this warp's part inside the lane slice
        float dlt[CPW][NITEMS], du[CPW][NITEMS], acc[CPW][NITEMS], sdt[CPW];
        float uu[CPW][NITEMS]; // WPC = 2: live until the partner's softplus half arrives
#pragma unroll
        for (int c = 0; c < CPW; ++c)
        {
            const size_t row = chan_row(c);
            const int nv = valid[c] ? nvalid : 0;
            float xp[PART];
            if constexpr (BUFS > 1)
            {
                // this thread's own copies (cp_async_wait above): no barrier needed; out of range = 0
                const T* src = ud_slice(buf, c);
                lds_raw_items<T, NITEMS>(src, uu[c]);
                lds_raw_items<T, PART>(src + CHUNK, xp);
            }
            else
            {
                load_items<T, NITEMS, STREAM>(u + row + ls, nv, uu[c]);
                load_items<T, PART, STREAM>(dl + row + ls + own, nv - own, xp);
            }
#pragma unroll
            for (int j = 0; j < PART; ++j)
            {
                float x = xp[j] + bias[c];
                if (p.delta_softplus)
                    x = softplus(x);
                xp[j] = own + j < nv ? x : 0.f; // padding steps are the identity map (a = 1, b = 0)
            }
#pragma unroll
            for (int i = 0; i < NITEMS; ++i)
                acc[c][i] = (WPC == 1 || i / PART == part) ? Dc[c] * uu[c][i] : 0.f; // D * u enters once
            if constexpr (WPC == 1)
            {
                sdt[c] = 0.f;
#pragma unroll
                for (int i = 0; i < NITEMS; ++i)
                {
                    dlt[c][i] = xp[i];
                    sdt[c] += xp[i];
                    du[c][i] = xp[i] * uu[c][i];
                }
            }
            else
            {
                sts_items<PART>(xw + c * CPAD, lane * NITEMS + own, xp);
#pragma unroll
                for (int j = 0; j < PART; ++j) // our half now; the partner's after the barrier
                {
                    dlt[c][j] = xp[j];
                    dlt[c][PART + j] = xp[j];
                }
            }
        }
        if constexpr (BUFS == 1 && RAW)
        {
            if (p.async_ok)
            {
                cp_async_commit();
                cp_async_wait<0>();
            }
        }
        __syncthreads(); // Bs/Cs (and the partner's softplus half in xs) ready
        if constexpr (WPC > 1)
        {
#pragma unroll
            for (int c = 0; c < CPW; ++c)
            {
                float other[PART];
                lds_items<PART>(xw + c * CPAD, lane * NITEMS + (PART - own), other);
                sdt[c] = 0.f;
#pragma unroll
                for (int j = 0; j < PART; ++j)
                {
                    dlt[c][j] = part == 0 ? dlt[c][j] : other[j];
                    dlt[c][PART + j] = part == 0 ? other[j] : dlt[c][PART + j];
                }
#pragma unroll
                for (int i = 0; i < NITEMS; ++i)
                {
                    sdt[c] += dlt[c][i];
                    du[c][i] = dlt[c][i] * uu[c][i];
                }
            }
        }

        // The state loop, in two builds: PAD = false for nst a multiple of SPI (N = 16: every default), where
        // state indices and addresses follow the loop counter with no clamp or select (the fp16 default:
        // 216 -> 198 SASS per iteration, 32 -> 14 of them index and predicate work), PAD = true otherwise.
        const auto state_loop = [&](auto pad) {
            constexpr bool PAD = decltype(pad)::value;
#pragma unroll 1
            for (int n0 = 0; n0 < nst; n0 += SPI)
            {
                // states n0 .. n0 + SPI - 1 (of this warp's); with PAD, a state past nst (nst not a multiple
                // of SPI) recomputes nst - 1 and is neither stored nor accumulated: its C values are read from
                // the buffer's zero row (one select per state, where masking C cost one FSEL per update)
                int ns[SPI];
                float Bn[SPI][NITEMS], Cn[SPI][NITEMS];
#pragma unroll
                for (int s = 0; s < SPI; ++s)
                {
                    ns[s] = PAD ? min(n0 + s, nst - 1) : n0 + s;
                    lds_items<NITEMS>(Bw + ns[s] * CPAD, lane * NITEMS, Bn[s]);
                    lds_items<NITEMS>(Cw + (!PAD || n0 + s < nst ? n0 + s : zero_row) * CPAD, lane * NITEMS, Cn[s]);
                }
#pragma unroll
                for (int c = 0; c < CPW; ++c)
                {
                    float a[SPI][NITEMS], bb[SPI][NITEMS], pa[SPI], pb[SPI], carry[SPI];
#pragma unroll
                    for (int s = 0; s < SPI; ++s)
                    {
                        const float A2 = A2w[c * kMaxN + ns[s]];
                        carry[s] = carry_w[c * kMaxN + ns[s]];
#pragma unroll
                        for (int i = 0; i < NITEMS; ++i)
                        {
                            a[s][i] = fast_exp2(dlt[c][i] * A2);
                            bb[s][i] = du[c][i] * Bn[s][i];
                        }
                        // this lane's steps as one affine map h -> pa * h + pb; the product of the decays
                        // is exp2(A2 * sum of steps): one exp instead of NITEMS - 1 dependent multiplies
                        pa[s] = fast_exp2(sdt[c] * A2);
                        pb[s] = bb[s][0];
#pragma unroll
                        for (int i = 1; i < NITEMS; ++i)
                            pb[s] = fmaf(a[s][i], pb[s], bb[s][i]);
                    }
                    // inclusive warp scan of the affine maps (earlier lanes applied first)
#pragma unroll
                    for (int off = 1; off < 32; off <<= 1)
                    {
#pragma unroll
                        for (int s = 0; s < SPI; ++s)
                        {
                            const float qa = __shfl_up_sync(0xffffffffu, pa[s], off);
                            const float qb = __shfl_up_sync(0xffffffffu, pb[s], off);
                            scan_step(pa[s], pb[s], qa, qb, lane >= off);
                        }
                    }
                    __syncwarp(); // every lane has read its carries before lane 0 overwrites them
#pragma unroll
                    for (int s = 0; s < SPI; ++s)
                    {
                        const float h_end = fmaf(pa[s], carry[s], pb[s]); // state after this lane's last step
                        float h = __shfl_up_sync(0xffffffffu, h_end, 1);
                        if (lane == 0)
                            h = carry[s];
                        const float next_carry = __shfl_sync(0xffffffffu, h_end, 31);
                        if (lane == 0 && (!PAD || n0 + s < nst))
                            carry_w[c * kMaxN + ns[s]] = next_carry;
#pragma unroll
                        for (int i = 0; i < NITEMS; ++i)
                        {
                            h = fmaf(a[s][i], h, bb[s][i]);
                            acc[c][i] = fmaf(Cn[s][i], h, acc[c][i]);
                        }
                    }
                }
            }
        };
        if (nst % SPI == 0)
            state_loop(std::false_type{});
        else
            state_loop(std::true_type{});
        if constexpr (WPC == 1)
        {
#pragma unroll
            for (int c = 0; c < CPW; ++c)
                if (valid[c])
                    store_items<float, NITEMS>(y + ((size_t) b * p.dim + d0 + c) * L + ls, nvalid, acc[c]);
        }
        else
        {
            // hand the partner the partial y of its part, take ours, store our part
#pragma unroll
            for (int c = 0; c < CPW; ++c)
            {
                float give[PART];
#pragma unroll
                for (int j = 0; j < PART; ++j)
                    give[j] = part == 0 ? acc[c][PART + j] : acc[c][j];
                sts_items<PART>(xw + c * CPAD, lane * NITEMS + (PART - own), give);
            }
            team_sync<WPC>(team);
#pragma unroll
            for (int c = 0; c < CPW; ++c)
            {
                float mine[PART];
                lds_items<PART>(xw + c * CPAD, lane * NITEMS + own, mine);
#pragma unroll
                for (int j = 0; j < PART; ++j)
                    mine[j] += part == 0 ? acc[c][j] : acc[c][PART + j];
                if (valid[c])
                    store_items<float, PART>(y + ((size_t) b * p.dim + d0 + c) * L + ls + own, nvalid - own, mine);
            }
        }
    }
}

template <typename T, int NITEMS, int CPW, int SPI, int WPC, int BCB, int BUFS, int MINB>
int launch(const Params& p0, cudaStream_t stream)
{
    if constexpr (BUFS > 1)
    {
        if (!p0.async_ok) // the prefetch copies need aligned, whole vectors: the single-buffer twin then
            return launch<T, NITEMS, CPW, SPI, WPC, BCB, 1, MINB>(p0, stream);
    }
    Params p = p0;
    p.tiles_per_group = (p.dim_per_group + kTeams * CPW - 1) / (kTeams * CPW);
    const long long nblocks = (long long) p.batch * p.groups * p.tiles_per_group;
    if (nblocks > 0x7fffffffLL)
        return MHUNET_SCAN_ERR_BAD_SHAPE;
    const size_t smem = smem_bytes<NITEMS, CPW, WPC, BCB, BUFS>(p.dstate, (int) sizeof(T));
    auto kernel = selective_scan_fwd_kernel<T, NITEMS, CPW, SPI, WPC, BCB, BUFS, MINB>;
    if (smem > 48 * 1024)
    {
        // Raise the dynamic shared-memory limit (a per-device attribute, so set on every launch: it is a
        // cheap host-side call, legal during stream capture).
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem) != cudaSuccess)
            return MHUNET_SCAN_ERR_CUDA;
    }
    kernel<<<(unsigned) nblocks, block_warps<WPC>() * 32, smem, stream>>>(p);
    return cudaGetLastError() == cudaSuccess ? MHUNET_SCAN_OK : MHUNET_SCAN_ERR_CUDA;
}

// ---------------------------------------------------------------------------------------------------
// Sequential family (config field seg > 0; NOTES.md, "Sequential lanes"): no shuffle scan.
//   warp  = 32 consecutive channels of ONE group of ONE batch element (lane = channel), so the B/C value
//           of a step and state is the same for the whole warp: per block of KSTEP steps the warp stages
//           its B/C rows as fp32 in shared memory (lane j: row j) and every lane reads them broadcast;
//   lane  = its channel's steps of one segment, one by one, with all N states h[16] in registers:
//           per update ex2(dt * A log2 e), dt u * B, fma into h, fma into y (no cross-lane work).
// L is split into S = max(1, L / seg) segments (the last one takes the remainder: seg .. 2 seg - 1
// steps), which gives B x D x S lanes of parallel work. Three launches:
//   phase 1: each segment s < S - 1 walks from h = 0 and records its end state and its sum of steps
//            (the segment's decay of state n is exp2(A2_n * sum)) in y's own storage: the first N + 1
//            floats of segment s + 1's y row (every segment after the first has >= seg >= N + 1 steps,
//            and that y is written only later, by phase 2 of that same lane). Segment 0 starts from the
//            true state 0, so it writes its y here (with S = 1 it is the whole scan).
//   combine: per (channel, n), in order over the segments, h_in(s) = decay(s-1) h_in(s-1) + end(s-1),
//            written over the record of segment s (the same floats, the same thread).
//   phase 2: each segment s >= 1 reads its h_in (its own y floats, before it writes them) and re-walks
//            its steps, writing y. The second exp per update is the price of the parallelism.
// KSTEP = steps per inner block (vector loads of u and delta, y stores, registers).

constexpr int kSeqWarps = 4; // warps per block (128 threads)

// The warp's B/C staging area for one block: [2][kMaxN][KSTEP] fp32 (B rows, then C rows).
template <int KSTEP> __host__ __device__ constexpr int seq_stage_floats() { return 2 * kMaxN * KSTEP; }

// One block of KSTEP steps starting at l (nv of them in the segment), all states. The warp first stages
// the block's B (and with WRITE_Y C) as fp32 in its shared-memory area: lane j loads row j (B or C of
// state j % 16; vector loads where aligned and in range, masked scalar ones else) and converts it once;
// then every state reads its KSTEP values as broadcast 16-byte LDS at fixed offsets (no per-lane
// fp16 -> fp32 conversion, no per-state 64-bit address). The state test n < N also keeps ptxas from
// hoisting the reads of all 16 states to the top of the block (NOTES.md, "Sequential lanes").
template <typename T, int KSTEP, bool WRITE_Y>
__device__ __forceinline__ void seq_states(const T* Bg, const T* Cg, float* stage, int lane, int l, int nv,
    int L, int N, const float (&A2)[kMaxN], const float (&dt)[KSTEP], const float (&du)[KSTEP],
    float (&h)[kMaxN], float (&acc)[KSTEP])
{
    __syncwarp(); // the previous block's reads of the staging area are done
    {
        const int which = lane / kMaxN, n = lane % kMaxN;
        float v[KSTEP];
        if (n < N && (WRITE_Y || which == 0))
            load_items<T, KSTEP, false>((which ? Cg : Bg) + (size_t) n * L + l, nv, v);
        else
        {
#pragma unroll
            for (int i = 0; i < KSTEP; ++i)
                v[i] = 0.f;
        }
        float4* dst = reinterpret_cast<float4*>(stage + lane * KSTEP);
#pragma unroll
        for (int i = 0; i < KSTEP; i += 4)
            dst[i / 4] = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
    __syncwarp();
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
    {
        if (n < N)
        {
            float Bv[KSTEP], Cv[KSTEP];
            const float4* bs = reinterpret_cast<const float4*>(stage + n * KSTEP);
            const float4* cs = reinterpret_cast<const float4*>(stage + (kMaxN + n) * KSTEP);
#pragma unroll
            for (int i = 0; i < KSTEP; i += 4)
            {
                const float4 q = bs[i / 4];
                Bv[i] = q.x, Bv[i + 1] = q.y, Bv[i + 2] = q.z, Bv[i + 3] = q.w;
                if constexpr (WRITE_Y)
                {
                    const float4 r = cs[i / 4];
                    Cv[i] = r.x, Cv[i + 1] = r.y, Cv[i + 2] = r.z, Cv[i + 3] = r.w;
                }
            }
#pragma unroll
            for (int i = 0; i < KSTEP; ++i)
            {
                const float a = fast_exp2(dt[i] * A2[n]);
                h[n] = fmaf(a, h[n], du[i] * Bv[i]);
                if constexpr (WRITE_Y)
                    acc[i] = fmaf(Cv[i], h[n], acc[i]);
            }
        }
    }
}

// One segment [l0, l1) of one channel: h (all kMaxN states; states >= N untouched) walks the steps;
// with WRITE_Y also y = C h + D u for each step (stored only for a valid lane). sum_dt gets the
// segment's sum of steps. STREAM: u and delta are read for the last time (phase 2), else kept in L2 for
// phase 2's re-read. Every lane of the warp runs this (the B/C staging needs all 32).
template <typename T, int KSTEP, bool WRITE_Y, bool STREAM>
__device__ __forceinline__ void seq_walk(const T* urow, const T* drow, const T* Bg, const T* Cg, float* yrow,
    float* stage, int lane, bool valid, int l0, int l1, int L, int N, float bias, float Dc, bool do_softplus,
    const float (&A2)[kMaxN], float (&h)[kMaxN], float& sum_dt)
{
    // u and delta one block ahead, raw (NOTES.md, "Prefetch"): issued before this block's states
    T u_next[KSTEP], d_next[KSTEP];
    load_raw<T, KSTEP, STREAM>(urow + l0, l1 - l0, u_next);
    load_raw<T, KSTEP, STREAM>(drow + l0, l1 - l0, d_next);
#pragma unroll 1
    for (int l = l0; l < l1; l += KSTEP)
    {
        const int nv = l1 - l;
        float uu[KSTEP], dt[KSTEP], du[KSTEP], acc[KSTEP];
        to_floats(u_next, uu);
        to_floats(d_next, dt);
        load_raw<T, KSTEP, STREAM>(urow + l + KSTEP, nv - KSTEP, u_next);
        load_raw<T, KSTEP, STREAM>(drow + l + KSTEP, nv - KSTEP, d_next);
#pragma unroll
        for (int i = 0; i < KSTEP; ++i)
        {
            float x = dt[i] + bias;
            if (do_softplus)
                x = softplus(x);
            x = i < nv ? x : 0.f; // padding steps are the identity map (a = 1, b = 0)
            dt[i] = x;
            du[i] = x * uu[i];
            acc[i] = Dc * uu[i];
            sum_dt += x;
        }
        seq_states<T, KSTEP, WRITE_Y>(Bg, Cg, stage, lane, l, nv, L, N, A2, dt, du, h, acc);
        if constexpr (WRITE_Y)
        {
            if (valid)
                store_items<float, KSTEP>(yrow + l, nv, acc);
        }
    }
}

// Launch bounds' minimum blocks per SM: the tightest register cap without spills (nvcc 13.0, sm_90; NOTES.md,
// "Sequential lanes", "Prefetch"): KSTEP = 8 <= 128 registers (16 warps per SM), KSTEP = 4 <= 102 (20);
// the u/delta prefetch needs them (at 102 / 80 it spilled 4-36 bytes).
template <int KSTEP> constexpr int seq_minb() { return KSTEP == 8 ? 4 : 5; }

// PHASE 1 or 2 (see above). Warp index -> (b, g, segment, tile of 32 channels), tile fastest: the warps
// of a block share (b, g, segment) where the group has several tiles, so their B/C lines meet in L1.
template <typename T, int KSTEP, int PHASE>
__global__ void __launch_bounds__(kSeqWarps * 32, seq_minb<KSTEP>()) selective_scan_seq_kernel(const Params p, int seg, int nseg)
{
    const int lane = threadIdx.x & 31;
    const long long wid = (long long) blockIdx.x * kSeqWarps + (threadIdx.x >> 5);
    const int nrun = PHASE == 1 ? max(1, nseg - 1) : nseg - 1; // segments this phase walks
    long long rest = wid / p.tiles_per_group;
    const int tile = (int) (wid - rest * p.tiles_per_group);
    const int sidx = (int) (rest % nrun);
    rest /= nrun;
    const int g = (int) (rest % p.groups);
    const int b = (int) (rest / p.groups);
    if (b >= p.batch)
        return;
    // A lane past the group's channels (D / G not a multiple of 32) walks the group's first channel for
    // the B/C staging and stores nothing.
    const int local = tile * 32 + lane;
    const bool valid = local < p.dim_per_group;
    const int s = PHASE == 1 ? sidx : sidx + 1;
    const int N = p.dstate;
    const int L = p.len;
    const int d = g * p.dim_per_group + (valid ? local : 0);
    __shared__ __align__(16) float stage_all[kSeqWarps * seq_stage_floats<KSTEP>()];
    float* stage = stage_all + (threadIdx.x >> 5) * seq_stage_floats<KSTEP>();
    const int l0 = s * seg;
    const int l1 = s == nseg - 1 ? L : l0 + seg;

    float A2[kMaxN], h[kMaxN];
    float* yrow = p.y + ((size_t) b * p.dim + d) * L;
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
    {
        A2[n] = n < N ? __ldg(p.A + (size_t) d * N + n) * kLog2e : 0.f;
        h[n] = (PHASE == 2 && n < N) ? yrow[l0 + n] : 0.f; // h_in from the combine pass (plain load: y is written)
    }
    const float Dc = p.D ? __ldg(p.D + d) : 0.f;
    const float bias = p.delta_bias ? __ldg(p.delta_bias + d) : 0.f;
    const size_t row = ((size_t) b * p.dim + d) * L;
    const T* urow = static_cast<const T*>(p.u) + row;
    const T* drow = static_cast<const T*>(p.delta) + row;
    const size_t bc_base = ((size_t) b * p.groups + g) * (size_t) N * L;
    const T* Bg = static_cast<const T*>(p.B) + bc_base;
    const T* Cg = static_cast<const T*>(p.C) + bc_base;
    const bool sp = p.delta_softplus != 0;
    float sum_dt = 0.f;
    if (PHASE == 2 || s == 0)
        seq_walk<T, KSTEP, true, PHASE == 2>(
            urow, drow, Bg, Cg, yrow, stage, lane, valid, l0, l1, L, N, bias, Dc, sp, A2, h, sum_dt);
    else
        seq_walk<T, KSTEP, false, false>(
            urow, drow, Bg, Cg, yrow, stage, lane, valid, l0, l1, L, N, bias, Dc, sp, A2, h, sum_dt);
    if (PHASE == 1 && valid && s < nseg - 1)
    {
        float* rec = yrow + l1; // the first N + 1 floats of segment s + 1
#pragma unroll
        for (int n = 0; n < kMaxN; ++n)
            if (n < N)
                rec[n] = h[n];
        rec[N] = sum_dt;
    }
}

// The carry pass: thread = (channel, state n), n fastest (a channel's record is N + 1 consecutive floats).
constexpr int kCombineRows = 8; // channels per 128-thread block
__global__ void __launch_bounds__(kCombineRows * kMaxN) selective_scan_seq_combine(const Params p, int seg, int nseg)
{
    const int n = threadIdx.x % kMaxN;
    const long long rowi = (long long) blockIdx.x * kCombineRows + threadIdx.x / kMaxN;
    const int N = p.dstate;
    if (n >= N || rowi >= (long long) p.batch * p.dim)
        return;
    const int d = (int) (rowi % p.dim);
    const float A2 = __ldg(p.A + (size_t) d * N + n) * kLog2e;
    float* yrow = p.y + (size_t) rowi * p.len;
    // Records kCombineAhead at a time: their loads are issued before the window's stores (which the
    // compiler may not move loads across: possible aliasing), so one L2 latency per window, not per segment.
    constexpr int kCombineAhead = 8;
    float h = 0.f;
#pragma unroll 1
    for (int s0 = 1; s0 < nseg; s0 += kCombineAhead)
    {
        float end[kCombineAhead], sdt[kCombineAhead];
#pragma unroll
        for (int j = 0; j < kCombineAhead; ++j)
        {
            const float* rec = yrow + (size_t) (s0 + j) * seg; // end state, sum of steps of s0 + j - 1
            end[j] = s0 + j < nseg ? rec[n] : 0.f;
            sdt[j] = s0 + j < nseg ? rec[N] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < kCombineAhead; ++j)
        {
            if (s0 + j < nseg)
            {
                h = fmaf(fast_exp2(A2 * sdt[j]), h, end[j]);
                yrow[(size_t) (s0 + j) * seg + n] = h; // rec[n]: only this thread reads or writes it; rec[N]
                                                       // is read by every n and written by none
            }
        }
    }
}

template <typename T, int KSTEP>
int launch_seq(const Params& p0, int seg, cudaStream_t stream)
{
    Params p = p0;
    p.tiles_per_group = (p.dim_per_group + 31) / 32;
    if (seg < kMaxN + 1 || seg % 8 != 0)
        return MHUNET_SCAN_ERR_BAD_CONFIG; // a segment holds its predecessor's record (N + 1 floats) and
                                           // starts where vector loads can be aligned
    const int nseg = p.len / seg > 1 ? p.len / seg : 1;
    const long long tiles = (long long) p.batch * p.groups * p.tiles_per_group;
    const long long warps1 = tiles * (nseg > 1 ? nseg - 1 : 1);
    const long long blocks1 = (warps1 + kSeqWarps - 1) / kSeqWarps;
    const long long rows = (long long) p.batch * p.dim;
    const long long blocksc = (rows + kCombineRows - 1) / kCombineRows;
    if (blocks1 > 0x7fffffffLL || blocksc > 0x7fffffffLL)
        return MHUNET_SCAN_ERR_BAD_SHAPE;
    selective_scan_seq_kernel<T, KSTEP, 1><<<(unsigned) blocks1, kSeqWarps * 32, 0, stream>>>(p, seg, nseg);
    if (nseg > 1)
    {
        selective_scan_seq_combine<<<(unsigned) blocksc, kCombineRows * kMaxN, 0, stream>>>(p, seg, nseg);
        selective_scan_seq_kernel<T, KSTEP, 2><<<(unsigned) blocks1, kSeqWarps * 32, 0, stream>>>(p, seg, nseg);
    }
    return cudaGetLastError() == cudaSuccess ? MHUNET_SCAN_OK : MHUNET_SCAN_ERR_CUDA;
}

// The compiled configurations (items, cpw, spi, wpc, bcb, bufs; then MINB, not part of the configuration's
// name). One list serves dispatch and the Python side's sweep (mhunet_selective_scan_configs). Two-warp
// configurations whose registers cannot be capped without spilling (8x1x4, 8x2x1, 16x1x2) are not built;
// bcb = 2 (fp16 B/C rows) is built for fp16 inputs only (fp32 inputs: MHUNET_SCAN_ERR_BAD_CONFIG); bufs = 2
// (double buffers, rows in the input dtype) for fp16 inputs with bcb = 2 and fp32 inputs with bcb = 4.
#define MHUNET_SCAN_CONFIGS(X)                                                                                         \
    X(2, 1, 1, 1, 4, 1, 0) X(2, 2, 1, 1, 4, 1, 0) X(4, 1, 1, 1, 4, 1, 0) X(4, 2, 1, 1, 4, 1, 0)                        \
    X(8, 1, 1, 1, 4, 1, 4) X(8, 2, 1, 1, 4, 1, 0) X(16, 1, 1, 1, 4, 1, 0) X(16, 2, 1, 1, 4, 1, 0)                      \
    X(2, 1, 2, 1, 4, 1, 0) X(2, 2, 2, 1, 4, 1, 0) X(4, 1, 2, 1, 4, 1, 0) X(4, 2, 2, 1, 4, 1, 4)                        \
    X(8, 1, 2, 1, 4, 1, 4) X(16, 1, 2, 1, 4, 1, 2) X(2, 1, 4, 1, 4, 1, 0) X(2, 2, 4, 1, 4, 1, 4)                       \
    X(4, 1, 4, 1, 4, 1, 0) X(8, 1, 4, 1, 4, 1, 3) X(4, 1, 1, 2, 4, 1, 3) X(4, 1, 2, 2, 4, 1, 2)                        \
    X(4, 1, 4, 2, 4, 1, 2) X(4, 2, 1, 2, 4, 1, 2) X(8, 1, 1, 2, 4, 1, 2) X(8, 1, 2, 2, 4, 1, 2)                        \
    X(2, 2, 1, 1, 2, 1, 0) X(4, 1, 2, 1, 2, 1, 0) X(8, 1, 1, 1, 2, 1, 0) X(8, 1, 2, 1, 2, 1, 4)                        \
    X(8, 1, 4, 1, 2, 1, 3) X(8, 2, 1, 1, 2, 1, 0) X(16, 1, 2, 1, 2, 1, 2) X(4, 1, 2, 2, 2, 1, 2)                       \
    X(8, 1, 2, 2, 2, 1, 2) X(4, 1, 1, 2, 2, 1, 3)                                                                      \
    X(2, 2, 1, 1, 4, 2, 0) X(4, 1, 2, 1, 4, 2, 0) X(4, 2, 1, 1, 4, 2, 0) X(8, 1, 2, 1, 4, 2, 4)                        \
    X(8, 2, 1, 1, 4, 2, 0) X(2, 2, 1, 1, 2, 2, 0) X(4, 1, 2, 1, 2, 2, 0) X(8, 1, 1, 1, 2, 2, 5)                        \
    X(8, 1, 2, 1, 2, 2, 4) X(8, 2, 1, 1, 2, 2, 4)

// The sequential family (seg > 0): (KSTEP, SEG) = steps per inner block, steps per segment; listed as
// (items = KSTEP, cpw = 1, spi = 1, wpc = 1, bcb = 4, seg = SEG). One kernel per KSTEP and dtype (seg is
// a launch argument), so the list can grow without more compile time.
#define MHUNET_SCAN_SEQ_CONFIGS(X) X(4, 32) X(4, 64) X(8, 32) X(8, 64) X(8, 128) X(8, 256)

template <typename T>
int dispatch(const Params& p, int items, int cpw, int spi, int wpc, int bcb, int seg, int bufs, cudaStream_t stream)
{
    if (seg > 0)
    {
#define MHUNET_SCAN_SEQ_CASE(KS, SG)                                                                                   \
    if (items == KS && cpw == 1 && spi == 1 && wpc == 1 && bcb == 4 && seg == SG && bufs == 1)                         \
        return launch_seq<T, KS>(p, seg, stream);
        MHUNET_SCAN_SEQ_CONFIGS(MHUNET_SCAN_SEQ_CASE)
#undef MHUNET_SCAN_SEQ_CASE
        return MHUNET_SCAN_ERR_BAD_CONFIG;
    }
#define MHUNET_SCAN_CASE(NI, CP, SP, WP, BB, BF, MB)                                                                   \
    if (items == NI && cpw == CP && spi == SP && wpc == WP && bcb == BB && bufs == BF)                                 \
    {                                                                                                                  \
        if constexpr ((BB == 4 || sizeof(T) == 2) && (BF == 1 || BB == (int) sizeof(T)))                               \
            return launch<T, NI, CP, SP, WP, BB, BF, MB>(p, stream);                                                   \
        else                                                                                                           \
            return MHUNET_SCAN_ERR_BAD_CONFIG;                                                                         \
    }
    MHUNET_SCAN_CONFIGS(MHUNET_SCAN_CASE)
#undef MHUNET_SCAN_CASE
    return MHUNET_SCAN_ERR_BAD_CONFIG;
}

} // namespace scan
} // namespace mhunet

namespace mhunet
{
namespace scan
{
// The default configuration, chosen from the tuning sweeps of every compiled configuration on the H200
// (NOTES.md, "Default configuration"; the sweeps and the staging A/B: BENCHMARKS.md section 4), as
// {items, cpw, spi, wpc, bcb, seg, bufs}. The chunked family (seg = 0): L = 64: 2x2x1; L = 128: 4x1x2
// (interpolated); L >= 256: 8x2x1 (two channels share each B/C read) over >= 4096 rows, 8x1x2 below
// (light stage 1 at batch 8: 2048 rows, where 8x2x1's 128 registers leave too few warps). fp16 inputs:
// fp16 B/C rows, double-buffered (the next chunk's rows and u / delta arrive by cp.async while one is
// computed); fp32: fp32 rows, double-buffered at L <= 128 only (two fp32 buffers halve the resident
// blocks at 8 steps per lane). One warp per channel: the two-warp configurations never won.
void chunked_default(long long rows, int len, int dtype, int (&cfg)[kConfigFields])
{
    const bool fp16 = dtype == MHUNET_SCAN_FP16;
    int it = 8, cp = rows >= 4096 ? 2 : 1, bufs = fp16 ? 2 : 1;
    if (len <= 64)
    {
        it = 2;
        cp = 2;
        bufs = 2;
    }
    else if (len <= 128)
    {
        it = 4;
        cp = 1;
        bufs = 2;
    }
    const int c[kConfigFields] = {it, cp, cp == 2 ? 1 : 2, 1, fp16 ? 2 : 4, 0, bufs};
    memcpy(cfg, c, sizeof c);
}

// The sequential family (seg > 0; its fields 8 steps per block, 1, 1, 1, 4, bufs 1) where the sweeps had
// it >= 11 % ahead of the chunked default: L = 64 over >= 49152 rows (seg 32, 2 segments); L = 256-1023
// over >= 65536 rows (seg 128). (fp32 L >= 1024 over >= 24576 rows took seg 256 until the chunked
// family's staging moved to cp.async: BENCHMARKS.md section 4.) 0 elsewhere.
int sequential_default_seg(long long rows, int len)
{
    if (len == 64 && rows >= 49152)
        return 32;
    if (len >= 256 && len < 1024 && rows >= 65536)
        return 128;
    return 0;
}

constexpr int kSequentialFields[kConfigFields] = {8, 1, 1, 1, 4, 0, 1};

void default_config(int batch, int dim, int len, int dtype, int (&cfg)[kConfigFields])
{
    const long long rows = (long long) batch * dim;
    const int seg = sequential_default_seg(rows, len);
    if (seg == 0)
        return chunked_default(rows, len, dtype, cfg);
    memcpy(cfg, kSequentialFields, sizeof kSequentialFields);
    cfg[5] = seg;
}
} // namespace scan
} // namespace mhunet

extern "C" void mhunet_selective_scan_default_config(int batch, int dim, int len, int groups, int dtype, int* items,
    int* cpw, int* spi, int* wpc, int* bcb, int* seg, int* bufs)
{
    (void) groups;
    int cfg[mhunet::scan::kConfigFields];
    mhunet::scan::default_config(batch, dim, len, dtype, cfg);
    int* out[] = {items, cpw, spi, wpc, bcb, seg, bufs};
    for (int i = 0; i < mhunet::scan::kConfigFields; ++i)
        *out[i] = cfg[i];
}

extern "C" int mhunet_selective_scan_configs(int* out, int capacity)
{
    using mhunet::scan::kConfigFields;
    int n = 0;
#define MHUNET_SCAN_LIST(NI, CP, SP, WP, BB, BF, MB)                                                                   \
    if (n < capacity)                                                                                                  \
    {                                                                                                                  \
        const int c[kConfigFields] = {NI, CP, SP, WP, BB, 0, BF};                                                      \
        memcpy(out + kConfigFields * n, c, sizeof c);                                                                  \
    }                                                                                                                  \
    ++n;
    MHUNET_SCAN_CONFIGS(MHUNET_SCAN_LIST)
#undef MHUNET_SCAN_LIST
#define MHUNET_SCAN_SEQ_LIST(KS, SG)                                                                                   \
    if (n < capacity)                                                                                                  \
    {                                                                                                                  \
        const int c[kConfigFields] = {KS, 1, 1, 1, 4, SG, 1};                                                          \
        memcpy(out + kConfigFields * n, c, sizeof c);                                                                  \
    }                                                                                                                  \
    ++n;
    MHUNET_SCAN_SEQ_CONFIGS(MHUNET_SCAN_SEQ_LIST)
#undef MHUNET_SCAN_SEQ_LIST
    return n;
}

extern "C" int mhunet_selective_scan_fwd_config(const void* u, const void* delta, const float* A, const void* B,
    const void* C, const float* D, const float* delta_bias, float* y, int batch, int dim, int len, int dstate,
    int groups, int delta_softplus, int dtype, int items, int cpw, int spi, int wpc, int bcb, int seg, int bufs,
    cudaStream_t stream)
{
    using namespace mhunet::scan;
    if (batch < 0 || dim <= 0 || len < 0)
        return MHUNET_SCAN_ERR_BAD_SHAPE;
    if (dstate < 1 || dstate > kMaxN)
        return MHUNET_SCAN_ERR_BAD_DSTATE;
    if (groups < 1 || dim % groups != 0)
        return MHUNET_SCAN_ERR_BAD_GROUPS;
    if (dtype != MHUNET_SCAN_FP32 && dtype != MHUNET_SCAN_FP16)
        return MHUNET_SCAN_ERR_BAD_DTYPE;
    if (batch == 0 || len == 0)
        return MHUNET_SCAN_OK;
    if (!u || !delta || !A || !B || !C || !y)
        return MHUNET_SCAN_ERR_NULL_POINTER;
    if (seg < 0 || bufs < 0)
        return MHUNET_SCAN_ERR_BAD_CONFIG;
    // All fields 0: the default configuration (either family). Otherwise the fields given choose the
    // family (seg > 0: the sequential one) and its zero fields take that family's default.
    int cfg[kConfigFields] = {items, cpw, spi, wpc, bcb, seg, bufs};
    int def[kConfigFields];
    const bool all_default = !(items || cpw || spi || wpc || bcb || seg || bufs);
    if (all_default)
        default_config(batch, dim, len, dtype, def);
    else if (seg > 0)
        memcpy(def, kSequentialFields, sizeof def);
    else
        chunked_default((long long) batch * dim, len, dtype, def);
    for (int i = 0; i < kConfigFields; ++i)
        if (cfg[i] == 0)
            cfg[i] = def[i];
    Params p{};
    p.u = u;
    p.delta = delta;
    p.A = A;
    p.B = B;
    p.C = C;
    p.D = D;
    p.delta_bias = delta_bias;
    p.y = y;
    p.batch = batch;
    p.dim = dim;
    p.len = len;
    p.dstate = dstate;
    p.groups = groups;
    p.dim_per_group = dim / groups;
    p.delta_softplus = delta_softplus ? 1 : 0;
    const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
    p.async_ok = len % 8 == 0 && aligned(u) && aligned(delta) && aligned(B) && aligned(C);
    return dtype == MHUNET_SCAN_FP32
        ? dispatch<float>(p, cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cfg[6], stream)
        : dispatch<__half>(p, cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cfg[6], stream);
}

extern "C" int mhunet_selective_scan_fwd(const void* u, const void* delta, const float* A, const void* B,
    const void* C, const float* D, const float* delta_bias, float* y, int batch, int dim, int len, int dstate,
    int groups, int delta_softplus, int dtype, cudaStream_t stream)
{
    return mhunet_selective_scan_fwd_config(u, delta, A, B, C, D, delta_bias, y, batch, dim, len, dstate, groups,
        delta_softplus, dtype, 0, 0, 0, 0, 0, 0, 0, stream);
}

extern "C" const char* mhunet_selective_scan_error_string(int code)
{
    switch (code)
    {
    case MHUNET_SCAN_OK: return "ok";
    case MHUNET_SCAN_ERR_NULL_POINTER: return "a required pointer (u, delta, A, B, C or y) is null";
    case MHUNET_SCAN_ERR_BAD_SHAPE: return "bad shape: need batch >= 0, dim > 0, len >= 0 and a grid that fits";
    case MHUNET_SCAN_ERR_BAD_DSTATE: return "unsupported dstate: need 1 <= N <= 16";
    case MHUNET_SCAN_ERR_BAD_GROUPS: return "bad groups: need groups >= 1 dividing dim";
    case MHUNET_SCAN_ERR_BAD_DTYPE: return "unsupported dtype: 0 (fp32) or 1 (fp16)";
    case MHUNET_SCAN_ERR_BAD_CONFIG:
        return "unsupported kernel config: see mhunet_selective_scan_configs (bcb = 2 needs fp16 inputs)";
    case MHUNET_SCAN_ERR_CUDA: return "CUDA error at launch (see cudaGetLastError)";
    default: return "unknown selective-scan status";
    }
}

#ifndef MHUNET_SCAN_SOURCE_SHA256
#define MHUNET_SCAN_SOURCE_SHA256 "unknown"
#endif

extern "C" const char* mhunet_selective_scan_source_sha256(void)
{
    return MHUNET_SCAN_SOURCE_SHA256;
}
