/* Host-side launchers of the flash kernels for one tile configuration and one policy. The
 * public API (flash_attn.cu) picks the configurations; benchmarks may instantiate others. */
#ifndef ATTENTION_CUDA_FLASH_LAUNCH_CUH
#define ATTENTION_CUDA_FLASH_LAUNCH_CUH

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_checks.cuh"
#include "attention/cuda/flash_bwd_sm90.cuh"
#include "attention/cuda/flash_bwd_sm90_ws.cuh"
#include "attention/cuda/flash_fwd.cuh"
#include "attention/cuda/flash_fwd_sm90.cuh"
#include "attention/cuda/flash_fwd_sm90_ws.cuh"
#include "attention/cuda/flash_policy.cuh"
#include "attention/cuda/flash_tma.cuh"

namespace flash {

/* Kernels using more than 48 KB of dynamic shared memory must say so once. */
template <class Kernel> inline cudaError_t allow_smem(Kernel kernel, int bytes) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* Launches one kernel instance over the grid x = (batch, head), so that every head's longest
 * tiles start first, y = ceil(rows / tile); the shared-memory attribute is set once per
 * instance. Every tiled flash kernel goes through here. */
template <class Cfg, class Policy, void (*KERNEL)(FlashParams, Policy)>
cudaError_t launch_tiled(const FlashParams &p, const Policy &pol, int rows, int tile, cudaStream_t s) {
    static cudaError_t attr = allow_smem(KERNEL, Cfg::SMEM_BYTES);
    if (attr != cudaSuccess) return attr;
    dim3 grid(p.B * p.H, (rows + tile - 1) / tile);
    KERNEL<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, s>>>(p, pol);
    return cudaGetLastError();
}

/* Heads whose tiles a warp-specialised kernel walks together (flash_ws.cuh, ws_tile_rank), so
 * that about HEAD_GROUP_CTAS of the `resident` CTAs running at once share each head: from the
 * environment variable FLASH_HEAD_GROUP (heads a group, or "all": the order before session 14),
 * read once; unset: resident / HEAD_GROUP_CTAS (8 heads on an H100). H100, session 14
 * (docs/PERF.md), dense fwd+bwd B*T 65536: 2.067 -> 1.647 ms at 1k, 5.684 -> 4.005 at 4k,
 * 9.426 -> 7.158 at 8k, 14.745 -> 14.085 at 16k; groups of 4, 8, 16 or 32 heads within ~3% of
 * each other; sparse qk 0.5 4.04 -> 3.83, hash nb=16 unchanged. */
constexpr int HEAD_GROUP_CTAS = 16;
constexpr int HEAD_GROUP_AUTO = 0, HEAD_GROUP_ALL = -1;
inline int head_group_setting() { /* HEAD_GROUP_AUTO, HEAD_GROUP_ALL or the heads it names */
    static int cached = -2;
    if (cached == -2) {
        const char *v = getenv("FLASH_HEAD_GROUP");
        char *end = NULL;
        const long n = v && *v ? strtol(v, &end, 10) : 0;
        if (!v || !*v) cached = HEAD_GROUP_AUTO;
        else if (!strcmp(v, "all")) cached = HEAD_GROUP_ALL;
        else if (*end == 0 && n >= 1 && n <= 1 << 20) cached = (int)n;
        else fatal(EXIT_USAGE, "FLASH_HEAD_GROUP = '%s': expected a number of heads (1 or more) or 'all'", v);
    }
    return cached;
}
inline int head_group(int BH, int resident) {
    const int set = head_group_setting();
    const int g = set == HEAD_GROUP_ALL ? BH : set == HEAD_GROUP_AUTO ? resident / HEAD_GROUP_CTAS : set;
    return g < 1 ? 1 : g > BH ? BH : g;
}

/* CTAs of `kernel` (`threads` threads, `smem` bytes of shared memory) resident at once on the
 * current device, asked once per device into cache[64] (the caller's, one per kernel instance);
 * 0 on error (err says which). */
template <class Kernel> int resident_ctas(Kernel kernel, int threads, int smem, int *cache, cudaError_t &err) {
    int dev = 0;
    err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return 0;
    if (dev < 0 || dev >= 64) { err = cudaErrorInvalidDevice; return 0; }
    if (!cache[dev]) {
        int per_sm = 0, sms = 0;
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        if (err != cudaSuccess) return 0;
        if (per_sm < 1) { err = cudaErrorInvalidConfiguration; return 0; } /* the kernel cannot run here */
        cache[dev] = per_sm * sms;
    }
    return cache[dev];
}

/* Launches a warp-specialised kernel (flash_ws.cuh) over a 1D grid of work items, the tiles of
 * TILE rows of every (batch, head) of p.T rows: one CTA an item, or for a PERSISTENT kernel
 * instance ctas < 0: as many CTAs as are resident at once on the current device; ctas > 0: at
 * most that many (tests use few, so that every CTA takes several items); 0: one an item. A
 * persistent grid draws its items from p.work_counter (one int of device memory, zeroed here
 * on the stream: one launch at a time per counter). */
template <class Cfg, class Policy, bool PERSISTENT, void (*KERNEL)(FlashParams, Policy)>
cudaError_t launch_ws(const FlashParams &p, const Policy &pol, int tile, int ctas, cudaStream_t s) {
    /* a persistent kernel double-buffers its per-item operand */
    constexpr int SMEM = Cfg::SMEM_BYTES + (PERSISTENT ? Cfg::ITEM_BYTES : 0);
    static cudaError_t attr = allow_smem(KERNEL, SMEM);
    if (attr != cudaSuccess) return attr;
    const long n_work = (long)p.B * p.H * ((p.T + tile - 1) / tile);
    if (n_work == 0) return cudaSuccess;
    cudaError_t err;
    static int cache[64];
    const int resident = resident_ctas(KERNEL, Cfg::THREADS, SMEM, cache, err);
    if (!resident) return err;
    long grid = n_work;
    if (PERSISTENT && ctas != 0) {
        if (grid > resident) grid = resident;
        if (ctas > 0 && grid > ctas) grid = ctas;
    }
    if (grid < n_work) {
        if (!p.work_counter) return cudaErrorInvalidValue;
        err = cudaMemsetAsync(p.work_counter, 0, sizeof(int), s);
        if (err != cudaSuccess) return err;
    }
    FlashParams pg = p;
    pg.head_group = head_group(p.B * p.H, (int)(grid < resident ? grid : resident));
    KERNEL<<<(unsigned)grid, Cfg::THREADS, SMEM, s>>>(pg, pol);
    return cudaGetLastError();
}

template <class Cfg, class Policy>
cudaError_t launch_fwd(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_fwd_kernel<Cfg, Policy>>(p, pol, q_rows, Cfg::BM, s);
}

/* zero_accum: the atomic-dQ kernels follow and add into p.dq_accum ([B][T][H][D]). */
template <int D> cudaError_t launch_bwd_preprocess(const FlashParams &p, bool zero_accum, cudaStream_t s) {
    const long rows = (long)p.B * p.T * p.H, threads = rows * (D / 8);
    flash_bwd_preprocess_kernel<D><<<(unsigned)((threads + 255) / 256), 256, 0, s>>>(p, rows, zero_accum ? 1 : 0);
    return cudaGetLastError();
}

template <int D> cudaError_t launch_bwd_convert_dq(const FlashParams &p, cudaStream_t s) {
    const long rows = (long)p.B * p.T * p.H, threads = rows * (D / 8);
    flash_bwd_convert_dq_kernel<D><<<(unsigned)((threads + 255) / 256), 256, 0, s>>>(p, rows);
    return cudaGetLastError();
}

template <class Cfg, class Policy, bool ATOMIC_DQ, bool KV_REGS>
cudaError_t launch_bwd_dkdv(const FlashParams &p, const Policy &pol, int k_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_bwd_dkdv_kernel<Cfg, Policy, ATOMIC_DQ, KV_REGS>>(p, pol, k_rows, Cfg::BN,
                                                                                         s);
}

template <class Cfg, class Policy>
cudaError_t launch_bwd_dq(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_bwd_dq_kernel<Cfg, Policy>>(p, pol, q_rows, Cfg::BM, s);
}

template <class Cfg, class Policy>
cudaError_t launch_fwd_sm90(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_fwd_sm90_kernel<Cfg, Policy>>(p, pol, q_rows, Cfg::BM, s);
}

template <class Cfg, bool PERSISTENT = false, class Policy>
cudaError_t launch_fwd_sm90_ws(const FlashParams &p, const Policy &pol, cudaStream_t s, int ctas = 0) {
    return launch_ws<Cfg, Policy, PERSISTENT, flash_fwd_sm90_ws_kernel<Cfg, Policy, PERSISTENT>>(p, pol, Cfg::BM, ctas, s);
}

/* Whether the dense Hopper forward (FLASH_FWD_TMA) or fused backward (FLASH_BWD_TMA) loads its
 * tiles by TMA (flash_tma.cuh): the environment variable, 1 or 0; unset: on. */
inline bool env_tma(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v || !strcmp(v, "1")) return true;
    if (!strcmp(v, "0")) return false;
    fatal(EXIT_USAGE, "%s = '%s': expected 1 or 0", name, v);
}
inline bool fwd_tma() {
    static const bool on = env_tma("FLASH_FWD_TMA");
    return on;
}
inline bool bwd_tma() {
    static const bool on = env_tma("FLASH_BWD_TMA");
    return on;
}

/* launch(policy) with the dense policy, or with tma its TMA twin (flash_tma.cuh: maps encoded
 * for this call's pointers, tiles of BM queries and BN keys). */
template <class Launch>
cudaError_t with_dense_policy(bool tma, const FlashParams &p, const DenseCausalPolicy &pol, int BM, int BN,
                              Launch launch) {
    if (!tma) return launch(pol);
    DenseCausalTmaPolicy tp;
    const cudaError_t err = make_tma_policy(tp, pol, p, BM, BN);
    return err != cudaSuccess ? err : launch(tp);
}

/* The dense warp-specialised forward, its tiles by TMA or by cp.async. */
template <class Cfg, bool PERSISTENT = false>
cudaError_t launch_dense_fwd_sm90_ws(bool tma, const FlashParams &p, const DenseCausalPolicy &pol, cudaStream_t s,
                                     int ctas = 0) {
    return with_dense_policy(tma, p, pol, Cfg::BM, Cfg::BN,
                             [&](const auto &pl) { return launch_fwd_sm90_ws<Cfg, PERSISTENT>(p, pl, s, ctas); });
}

template <class Cfg, class Policy, bool ATOMIC_DQ>
cudaError_t launch_bwd_sm90(const FlashParams &p, const Policy &pol, int k_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_bwd_sm90_kernel<Cfg, Policy, ATOMIC_DQ>>(p, pol, k_rows, Cfg::BN, s);
}

template <class Cfg, class Policy>
cudaError_t launch_bwd_dq_sm90(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    return launch_tiled<Cfg, Policy, flash_bwd_dq_sm90_kernel<Cfg, Policy>>(p, pol, q_rows, Cfg::BM, s);
}

template <class Cfg, bool PERSISTENT = false, class Policy>
cudaError_t launch_bwd_dkdv_sm90_ws(const FlashParams &p, const Policy &pol, cudaStream_t s, int ctas = 0) {
    return launch_ws<Cfg, Policy, PERSISTENT, flash_bwd_dkdv_sm90_ws_kernel<Cfg, Policy, PERSISTENT>>(p, pol, Cfg::BN, ctas, s);
}

template <class Cfg, bool PERSISTENT = false, class Policy>
cudaError_t launch_bwd_dq_sm90_ws(const FlashParams &p, const Policy &pol, cudaStream_t s, int ctas = 0) {
    return launch_ws<Cfg, Policy, PERSISTENT, flash_bwd_dq_sm90_ws_kernel<Cfg, Policy, PERSISTENT>>(p, pol, Cfg::BM, ctas, s);
}

/* 64-row query tiles of every (batch, head): the grid of the preparation and the dQ convert, a
 * CTA a tile. */
inline long bwd_row_tiles(const FlashParams &p) { return (long)p.B * p.H * ((p.T + 63) / 64); }

/* The Hopper backward's preparation (flash_bwd_prepare_kernel): delta, the work rows'
 * statistics, and with zero_accum the fused kernel's dQ accumulator tiles zeroed. Runs before
 * every warp-specialised dK/dV kernel (the portable kernels take launch_bwd_preprocess). */
template <class Policy> cudaError_t launch_bwd_prepare(const FlashParams &p, const Policy &pol, bool zero_accum, cudaStream_t s) {
    flash_bwd_prepare_kernel<Policy><<<(unsigned)bwd_row_tiles(p), 256, 0, s>>>(p, pol, zero_accum ? 1 : 0);
    return cudaGetLastError();
}

/* The fused backward (Sm90BwdWsTiles<2, S, true>): the preparation with the work tiles of the
 * tile-layout dQ accumulator (p.dq_accum, B*H*ceil(T/64)*64*64 floats) zeroed, dK/dV/dQ, the
 * dQ convert of the work rows. */
template <class Cfg, bool PERSISTENT = false, class Policy>
cudaError_t launch_bwd_fused_sm90_ws(const FlashParams &p, const Policy &pol, cudaStream_t s, int ctas = 0) {
    static_assert(Cfg::FUSED_DQ, "a fused configuration");
    cudaError_t err = launch_bwd_prepare(p, pol, true, s);
    if (err == cudaSuccess) err = launch_bwd_dkdv_sm90_ws<Cfg, PERSISTENT>(p, pol, s, ctas);
    if (err != cudaSuccess) return err;
    flash_bwd_convert_dq_tiles_kernel<64, Policy><<<(unsigned)bwd_row_tiles(p), 256, 0, s>>>(p, pol);
    return cudaGetLastError();
}

/* How the two consumer warpgroups of the fused Hopper backward share the tensor cores
 * (flash_bwd_sm90_ws.cuh): LOCKSTEP meets at a barrier every tile to compute that tile's dQ;
 * DEFERRED computes each tile's dQ with the next tile's dV/dK (a ring of dS^T buffers, no
 * barrier between the warpgroups); PINGPONG adds turns so that one warpgroup's exponentials
 * run under the other's products; ALTERNATE is DEFERRED with each tile's whole dQ block computed by
 * one warpgroup in turn (Sm90BwdWsTiles SOLO_DQ; 64-query tiles only). Chosen by the environment
 * variable FLASH_BWD_SCHEDULE (lockstep, deferred, pingpong, alternate), read once; unset:
 * bwd_schedule_default. */
enum BwdSchedule { BWD_LOCKSTEP, BWD_DEFERRED, BWD_PINGPONG, BWD_ALTERNATE };

/* The Hopper dK/dV (and fused dQ) kernels' query tile, dense and sparse: 64 or 128
 * (Sm90BwdWsTiles BM = 128, 128 x 128 tile pairs), from the environment variable
 * FLASH_BWD_QUERY_TILE, read once; unset: the default below. The sparse dK/dV tile lists follow
 * it (sparse_attn_tile_shape). The wide fused kernel has no persistent instance (shared memory). */
constexpr int BWD_QUERY_TILE_DEFAULT = 64;
inline int bwd_query_tile() {
    static int cached = 0;
    if (!cached) {
        const char *v = getenv("FLASH_BWD_QUERY_TILE");
        if (!v || !*v) cached = BWD_QUERY_TILE_DEFAULT;
        else if (!strcmp(v, "64")) cached = 64;
        else if (!strcmp(v, "128")) cached = 128;
        else fatal(EXIT_USAGE, "FLASH_BWD_QUERY_TILE = '%s': expected 64 or 128", v);
    }
    return cached;
}

/* Query (Q, dO) stages of the fused backward's 64-query instances on one-item CTAs: 2, H100,
 * session 11 (docs/PERF.md): deferred dense backward 6.81 vs 7.52 ms at 8k x 8 (three stages
 * were bimodal there, 7.15-7.87 over 5 rounds), 11.09 vs 11.22 at 16k x 4. */
constexpr int BWD_FUSED_STAGES = 2;

/* Unset: alternate for the 64-query tile, deferred for the 128 one (alternate has none). H100,
 * session 11 (docs/PERF.md): alternate against deferred, dense backward 10.73 vs 11.06 ms at 16k,
 * 6.92 vs 6.83 at 8k, 4.46 vs 4.45 at 4k (5 rounds); sparse fwd+bwd hash nb=16 2.482 vs 2.524,
 * qk 0.5 4.742 vs 4.761; end to end 16k x 2 dense 135.8 vs 138.8 ms, hash nb=16 64.0 vs 65.6.
 * Deferred against lockstep: session 10, sparse qk 0.5 5.07-5.09 vs 5.39 ms. */
inline BwdSchedule bwd_schedule_default(int query_tile) { return query_tile == 64 ? BWD_ALTERNATE : BWD_DEFERRED; }
inline BwdSchedule bwd_schedule() {
    static int cached = -1;
    if (cached < 0) {
        const char *v = getenv("FLASH_BWD_SCHEDULE");
        if (!v || !*v) cached = bwd_schedule_default(bwd_query_tile());
        else if (!strcmp(v, "lockstep")) cached = BWD_LOCKSTEP;
        else if (!strcmp(v, "deferred")) cached = BWD_DEFERRED;
        else if (!strcmp(v, "pingpong")) cached = BWD_PINGPONG;
        else if (!strcmp(v, "alternate")) cached = BWD_ALTERNATE;
        else fatal(EXIT_USAGE, "FLASH_BWD_SCHEDULE = '%s': expected lockstep, deferred, pingpong or alternate", v);
        if (cached == BWD_ALTERNATE && bwd_query_tile() != 64) /* it has no 128-query instance */
            fatal(EXIT_USAGE, "FLASH_BWD_SCHEDULE = alternate needs FLASH_BWD_QUERY_TILE = 64 (it is %d)",
                  bwd_query_tile());
    }
    return (BwdSchedule)cached;
}

/* The fused backward of two consumer warpgroups, STAGES query stages and BM queries a tile
 * under a schedule (bwd_schedule). Dense with tma: its tiles by TMA (maps encoded for this
 * call's pointers). */
template <int STAGES, bool PERSISTENT = false, int BM = 64, class Policy>
cudaError_t launch_bwd_fused_sm90_ws_scheduled(BwdSchedule schedule, const FlashParams &p, const Policy &pol,
                                               cudaStream_t s, int ctas = 0) {
    switch (schedule) {
    case BWD_DEFERRED:
        return launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, STAGES, true, true, false, BM>, PERSISTENT>(p, pol, s, ctas);
    case BWD_PINGPONG:
        return launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, STAGES, true, true, true, BM>, PERSISTENT>(p, pol, s, ctas);
    case BWD_ALTERNATE:
        /* two stages whatever STAGES: its 16 KB staging blocks leave no room for a third beside a
         * persistent CTA's second K/V pair */
        if constexpr (BM == 64)
            return launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, false, 64, true>, PERSISTENT>(p, pol, s, ctas);
        else
            return cudaErrorInvalidConfiguration; /* not reached: bwd_schedule refuses alternate with 128 */
    default: return launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, STAGES, true, false, false, BM>, PERSISTENT>(p, pol, s, ctas);
    }
}

template <int STAGES, bool PERSISTENT = false, int BM = 64>
cudaError_t launch_dense_bwd_fused_sm90_ws(bool tma, BwdSchedule schedule, const FlashParams &p,
                                           const DenseCausalPolicy &pol, cudaStream_t s, int ctas = 0) {
    return with_dense_policy(tma, p, pol, BM, 128, [&](const auto &pl) { /* 128 keys: Sm90BwdWsTiles<2, ..> */
        return launch_bwd_fused_sm90_ws_scheduled<STAGES, PERSISTENT, BM>(schedule, p, pl, s, ctas);
    });
}

/* The deterministic dense backward's two passes (dK/dV, then dQ), their tiles by TMA or cp.async. */
template <class DkDvCfg, class DqCfg>
cudaError_t launch_dense_bwd_split_sm90_ws(bool tma, const FlashParams &p, const DenseCausalPolicy &pol, cudaStream_t s) {
    cudaError_t err = with_dense_policy(tma, p, pol, DkDvCfg::BM, DkDvCfg::BN,
                                        [&](const auto &pl) { return launch_bwd_dkdv_sm90_ws<DkDvCfg>(p, pl, s); });
    if (err != cudaSuccess) return err;
    return with_dense_policy(tma, p, pol, DqCfg::BM, DqCfg::BN,
                             [&](const auto &pl) { return launch_bwd_dq_sm90_ws<DqCfg>(p, pl, s); });
}

/* The Hopper kernels run when the device is sm_90 and this binary carries sm_90 machine code
 * for them (built for sm_90a: the Makefile's CUDA_ARCH); otherwise the mma.sync kernels do. */
inline bool sm90_available() {
    static int cached[64]; /* per device: 0 unknown, 1 yes, 2 no */
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
    if (!cached[dev]) {
        int major = 0;
        cudaFuncAttributes attr;
        bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  major == 9 &&
                  cudaFuncGetAttributes(&attr, flash_bwd_preprocess_kernel<64>) ==
                      cudaSuccess &&
                  attr.binaryVersion == 90;
        cached[dev] = ok ? 1 : 2;
    }
    return cached[dev] == 1;
}

} // namespace flash

#endif
