/* Sparse flash attention (sparse_attn.h): the portable flash kernels instantiated with
 * flash::PlanPolicy, argument checks, and the zeroing of rows no kernel over work rows visits
 * (dropped qk queries and keys: sorted rows past q_len / k_len). */
#include "attention/cuda/sparse_attn.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/cuda/flash_checks.cuh"
#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/plan_policy.cuh"

extern "C" {
#include "runtime/error.h"
}

namespace {

using namespace flash;

/* The dense API's configurations for head dim 64 (attention/cuda/NOTES.md), so that sparse
 * and dense timings compare the same tile arithmetic: portable mma.sync, and Hopper wgmma. The
 * wgmma kernels gather rows with cp.async like the portable ones, so the plan's permutation
 * works unchanged; forward and dK/dV tiles have the same shapes on both paths, dQ tiles differ. */
typedef FwdTiles<64, 128, 64, 4> Fwd64;
typedef BwdTiles<64, 128, 64, 8> Bwd64; /* BN = 128 keys, BM = 64 queries */
typedef DqTiles<64, 64, 64, 4> Dq64;
typedef Sm90FwdWsTiles<2, 64, 4> Sm90Fwd64; /* warp-specialised; the forward lists' 128 x 64 tiles */
/* qk_sparse's forward (128 keys unless SPARSE_QK_FWD_KEYS=64, qk_fwd_keys): its compacted rows form causal
 * blocks as dense ones do, so the dense API's 128 x 128 tiles, ping-pong with a CTA per tile,
 * without it when persistent (a persistent ping-pong instance is untimed: bench variant 14,
 * dense). Hash buckets are short runs of keys: 64-key tiles waste less there. */
typedef Sm90FwdWsTiles<2, 128, 3, true> Sm90FwdQk;
typedef Sm90FwdWsTiles<2, 128, 3> Sm90FwdQkPersistent;
typedef Sm90BwdWsTiles<2, 3> Sm90DkDvWs; /* BN = 128 keys, BM = 64 queries, warp-specialised */
typedef Sm90BwdWsTiles<2, BWD_FUSED_STAGES, true> Sm90Fused64; /* the same tiles with dQ (not deterministic) */
/* FLASH_BWD_QUERY_TILE=128 (flash_launch.cuh, bwd_query_tile): 128 x 128 dK/dV tiles, split or
 * fused (launch_bwd_fused_sm90_ws_scheduled<2, false, 128>); the dK/dV lists follow. */
typedef Sm90BwdWsTiles<2, 2, false, false, false, 128> Sm90DkDvWide;
typedef Sm90DqWsTiles<2, 2> Sm90Dq64; /* BM = 128 queries, BN = 64 keys, warp-specialised */

int force_portable = 0;
/* Grid of the warp-specialised kernels (flash_launch.cuh, launch_ws). Sparse tiles have short
 * key loops, so a CTA per tile spends much of its life loading its first operands and storing;
 * persistent CTAs overlap that with the previous tile's products. They draw their items from an
 * atomic counter (flash_ws.cuh, ws_draw): with a fixed round robin instead, the trainer's hash
 * step (GPT-2 small, 16k x 2, whose buckets are uneven) went from 70.2 to 108.5 ms (session 8).
 * Drawn, they are the default since session 12 (H100, test_sparse_attn --time-only, B 4 T 16384
 * H 12, fwd+bwd with planning, 3 rounds: qk 0.5 4.28-4.32 vs 4.42-4.51 ms a CTA per tile, hash
 * nb=16 2.19 vs 2.44; bench_step 16k x 2: hash nb=16 65.6 vs 65.5 ms a step, qk 0.5 77.9 vs
 * 78.3). 0 runs the one-item instances: their consumers get 224 registers (208 in a persistent
 * CTA, whose producer needs 80) and a single item-operand buffer. The wide backward tile
 * (FLASH_BWD_QUERY_TILE=128) has no persistent instance and runs a CTA per tile, unless a
 * persistent grid was asked for explicitly (grid_set; then a fatal error). */
int persistent_ctas = -1;
bool grid_set = false;

bool use_sm90(int D) { return D == 64 && !force_portable && sm90_available(); }

/* Keys a tile of qk_sparse's Hopper forward: 128 (the default) or 64 (the hash modes' shape),
 * from the environment variable SPARSE_QK_FWD_KEYS, read once. H100, session 14 (docs/PERF.md),
 * B 4, T 16384, H 12, persistent grid (the sparse default), 3 interleaved rounds: qk 0.5
 * forward 1.157 vs 1.382-1.391 ms, fwd+bwd with planning 4.025-4.038 vs 4.233-4.240; qk 0.7
 * 0.503-0.534 vs 0.575-0.606. A CTA per tile (ping-pong) ties: 4.27-4.36 vs 4.34-4.42. */
int qk_fwd_keys() {
    static int cached = 0;
    if (!cached) {
        const char *v = getenv("SPARSE_QK_FWD_KEYS");
        if (!v || !*v || !strcmp(v, "128")) cached = 128;
        else if (!strcmp(v, "64")) cached = 64;
        else fatal(EXIT_USAGE, "SPARSE_QK_FWD_KEYS = '%s': expected 64 or 128", v);
    }
    return cached;
}

void check_launch(const char *what, cudaError_t err) { api_check_launch("sparse_attn", what, err); }

void check_ptr(const char *what, const void *ptr) { api_check_ptr("sparse_attn", what, ptr); }

void check_dims(const flash_attn_dims_t *d) {
    if (d->D != 64) fatal(EXIT_USAGE, "sparse_attn: head dim D = %d is not supported (64)", d->D);
    api_check_shape("sparse_attn", d);
}

void check_plan(const attn_plan_cuda_t *plan, const flash_attn_dims_t *d) {
    if (plan->B != d->B || plan->T != d->T || plan->H != d->H || plan->D != d->D)
        fatal(EXIT_USAGE, "sparse_attn: plan is for B=%d T=%d H=%d D=%d, call for B=%d T=%d H=%d D=%d",
              plan->B, plan->T, plan->H, plan->D, d->B, d->T, d->H, d->D);
    if ((plan->p.exclude_self != 0) != (d->exclude_self != 0))
        fatal(EXIT_USAGE, "sparse_attn: exclude_self of the plan (%d) and of the call (%d) differ",
              plan->p.exclude_self, d->exclude_self);
}

void check_tiles(const char *what, const attn_tiles_cuda_t *tiles, const attn_plan_cuda_t *plan,
                 sparse_attn_pass_t pass) {
    if (tiles == NULL) fatal(EXIT_USAGE, "sparse_attn: %s tile lists are NULL", what);
    int bm = 0, bn = 0;
    sparse_attn_tile_shape(pass, plan->p.mode, plan->D, &bm, &bn);
    if (tiles->lists.block_m != bm || tiles->lists.block_n != bn ||
        tiles->lists.BH != plan->B * plan->H)
        fatal(EXIT_USAGE, "sparse_attn: %s tile lists are %dx%d for BH=%d; this pass needs %dx%d "
              "for BH=%d", what, tiles->lists.block_m, tiles->lists.block_n, tiles->lists.BH, bm,
              bn, plan->B * plan->H);
}

/* Rows r in [len, T) of the sorted order of bh (dropped qk rows; none in the other modes):
 * x and y (when given) get zero rows at their original positions, lse (when given) -inf.
 * D/8 threads per row, 16-byte stores. */
template <int D>
__global__ void zero_dropped_rows_kernel(PlanPolicy pol, int H, int T, int keys, bf16 *x,
                                         long x_stride, bf16 *y, long y_stride, float *lse) {
    constexpr int LANES = D / 8;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int len = keys ? pol.k_len(bh) : pol.q_len(bh);
    const long id = (long)blockIdx.y * blockDim.x + threadIdx.x;
    const long r = len + id / LANES;
    const int part = (int)(id % LANES);
    if (r >= T) return;
    const long mem = keys ? pol.k_row(bh, (int)r) : pol.q_row(bh, (int)r);
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    *reinterpret_cast<uint4 *>(x + ((long)b * T + mem) * x_stride + h * D + part * 8) = zero;
    if (y) *reinterpret_cast<uint4 *>(y + ((long)b * T + mem) * y_stride + h * D + part * 8) = zero;
    if (lse && part == 0) lse[(long)bh * T + mem] = -INFINITY;
}

/* Only qk_sparse has rows outside the work rows. The grid covers all T rows per bh (the work
 * row count lives on the device); blocks past the dropped rows exit at once. */
void zero_dropped_rows(const attn_plan_cuda_t *plan, const PlanPolicy &pol, int keys, bf16 *x,
                       long x_stride, bf16 *y, long y_stride, float *lse, cudaStream_t s) {
    if (plan->p.mode != ATTN_QK_SPARSE) return;
    const int threads = 256;
    const long per_bh = (long)plan->T * (64 / 8);
    dim3 grid(plan->B * plan->H, (unsigned)((per_bh + threads - 1) / threads));
    zero_dropped_rows_kernel<64><<<grid, threads, 0, s>>>(pol, plan->H, plan->T, keys, x,
                                                          x_stride, y, y_stride, lse);
    check_launch("zeroing dropped rows", cudaGetLastError());
}

} // namespace

extern "C" void sparse_attn_force_portable(int on) { force_portable = on != 0; }

extern "C" const char *sparse_attn_path(int D) { return use_sm90(D) ? "sm90 wgmma" : "mma.sync"; }

extern "C" void sparse_attn_set_persistent(int ctas) {
    persistent_ctas = ctas;
    grid_set = true;
}

extern "C" int sparse_attn_backward_split(int D, int deterministic) {
    /* Measured (test_sparse_attn --time, H100, session 8, B 4 T 16384 H 12): on Hopper the
     * fused backward (dQ from dS in shared memory, bulk reductions) beats the split, hash
     * nb=16 1.690 vs 1.940 ms, qk 0.5 3.962 vs 4.595, and needs no dQ tile lists; on the
     * portable path atomic dQ beats the split (2.93 vs 3.50). So the split only when asked to
     * be deterministic. */
    (void)D;
    return deterministic;
}

extern "C" int sparse_attn_qk_fwd_keys(void) { return qk_fwd_keys(); }

extern "C" void sparse_attn_tile_shape(sparse_attn_pass_t pass, attn_mode_t mode, int D, int *block_m, int *block_n) {
    if (D != 64) fatal(EXIT_USAGE, "sparse_attn: head dim D = %d is not supported (64)", D);
    const bool sm90 = use_sm90(D);
    static_assert(Sm90Fwd64::BM == Fwd64::BM && Sm90Fwd64::BN == Fwd64::BN &&
                      Sm90Fused64::BM == Bwd64::BM && Sm90Fused64::BN == Bwd64::BN &&
                      Sm90DkDvWs::BM == Bwd64::BM && Sm90DkDvWs::BN == Bwd64::BN,
                  "forward and dK/dV tile lists serve both paths (but the wide Hopper tile)");
    static_assert(Sm90DkDvWide::BM == 128 && Sm90DkDvWide::BN == Bwd64::BN, "the wide dK/dV tile");
    static_assert(Sm90FwdQk::BM == Fwd64::BM && Sm90FwdQk::BN == 128 && Sm90FwdQkPersistent::BM == Fwd64::BM &&
                      Sm90FwdQkPersistent::BN == 128, "qk_sparse's 128-key Hopper forward tiles");
    static_assert(Fwd64::BM == ATTN_FWD_BLOCK_M && Fwd64::BN == ATTN_FWD_BLOCK_N,
                  "attn_live (attention/plan_tiles.h) counts forward tiles");
    switch (pass) {
    case SPARSE_ATTN_PASS_FORWARD:
        *block_m = Fwd64::BM;
        *block_n = sm90 && mode == ATTN_QK_SPARSE && qk_fwd_keys() == 128 ? 128 : Fwd64::BN;
        return;
    case SPARSE_ATTN_PASS_DKDV:
        *block_m = sm90 && bwd_query_tile() == 128 ? Sm90DkDvWide::BM : Bwd64::BM;
        *block_n = Bwd64::BN;
        return;
    case SPARSE_ATTN_PASS_DQ:
        *block_m = sm90 ? Sm90Dq64::BM : Dq64::BM;
        *block_n = sm90 ? Sm90Dq64::BN : Dq64::BN;
        return;
    }
    fatal(EXIT_USAGE, "sparse_attn: unknown pass %d", (int)pass);
}

extern "C" void sparse_attn_forward(const attn_plan_cuda_t *plan, const attn_tiles_cuda_t *fwd_tiles,
                                    const flash_attn_dims_t *dims, const flash_bf16_t *q,
                                    const flash_bf16_t *k, const flash_bf16_t *v,
                                    flash_bf16_t *out, float *lse, cudaStream_t stream) {
    check_dims(dims);
    check_plan(plan, dims);
    check_tiles("forward", fwd_tiles, plan, SPARSE_ATTN_PASS_FORWARD);
    const void *ptrs[] = {q, k, v, out, lse};
    const char *names[] = {"q", "k", "v", "out", "lse"};
    for (int i = 0; i < 5; i++) check_ptr(names[i], ptrs[i]);
    FlashParams p = make_params(dims);
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.lse = lse;
    const PlanPolicy pol = make_plan_policy(plan->rows, fwd_tiles->lists);
    p.work_counter = fwd_tiles->work_counter;
    cudaError_t err;
    const bool wide_keys = fwd_tiles->lists.block_n == 128; /* check_tiles: qk_sparse's default (qk_fwd_keys) */
    if (!use_sm90(dims->D)) err = launch_fwd<Fwd64>(p, pol, dims->T, stream);
    else if (wide_keys && persistent_ctas)
        err = launch_fwd_sm90_ws<Sm90FwdQkPersistent, true>(p, pol, stream, persistent_ctas);
    else if (wide_keys) err = launch_fwd_sm90_ws<Sm90FwdQk>(p, pol, stream);
    else if (persistent_ctas) err = launch_fwd_sm90_ws<Sm90Fwd64, true>(p, pol, stream, persistent_ctas);
    else err = launch_fwd_sm90_ws<Sm90Fwd64>(p, pol, stream);
    check_launch("forward kernel", err);
    zero_dropped_rows(plan, pol, 0, out, dims->o_stride, NULL, 0, lse, stream);
}

extern "C" size_t sparse_attn_backward_workspace_bytes(const flash_attn_dims_t *dims,
                                                       int deterministic) {
    check_dims(dims);
    return backward_workspace_bytes(dims, deterministic);
}

extern "C" void sparse_attn_backward(const attn_plan_cuda_t *plan, const attn_tiles_cuda_t *dkdv_tiles,
                                     const attn_tiles_cuda_t *dq_tiles, const flash_attn_dims_t *dims,
                                     const flash_bf16_t *q, const flash_bf16_t *k,
                                     const flash_bf16_t *v, const flash_bf16_t *out,
                                     const float *lse, const flash_bf16_t *dout, flash_bf16_t *dq,
                                     flash_bf16_t *dk, flash_bf16_t *dv, void *workspace,
                                     cudaStream_t stream) {
    check_dims(dims);
    check_plan(plan, dims);
    check_tiles("dK/dV", dkdv_tiles, plan, SPARSE_ATTN_PASS_DKDV);
    if (dq_tiles) check_tiles("dQ", dq_tiles, plan, SPARSE_ATTN_PASS_DQ);
    const void *ptrs[] = {q, k, v, out, lse, dout, dq, dk, dv, workspace};
    const char *names[] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv", "workspace"};
    for (int i = 0; i < 10; i++) check_ptr(names[i], ptrs[i]);
    const bool deterministic = dq_tiles != NULL;
    FlashParams p = make_params(dims);
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = const_cast<flash_bf16_t *>(out); /* read only in the backward kernels */
    p.lse = const_cast<float *>(lse);
    p.dout = dout;
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
    set_backward_workspace(p, dims, workspace, deterministic);
    const PlanPolicy kv_pol = make_plan_policy(plan->rows, dkdv_tiles->lists);
    const int T = dims->T;
    /* The dQ passes write work rows only (the portable convert writes every row: dropped
     * queries' accumulator rows stay zero); keys past k_len are never visited by the dK/dV pass.
     * zero_dropped_rows writes the rest. */
    const bool sm90 = use_sm90(dims->D);
    /* The portable atomic dQ adds into the preprocess's zeroes; on Hopper the preparation
     * (flash_bwd_prepare_kernel, the fused launch's own) visits work rows only. */
    if (!sm90) check_launch("backward preprocess", launch_bwd_preprocess<64>(p, !deterministic, stream));
    else if (deterministic) check_launch("backward preparation", launch_bwd_prepare(p, kv_pol, false, stream));
    p.work_counter = dkdv_tiles->work_counter;
    const bool wide = sm90 && bwd_query_tile() == 128;
    const int ctas = wide ? 0 : persistent_ctas; /* the wide tile: a CTA per tile (persistent_ctas) */
    if (wide && persistent_ctas && grid_set)
        fatal(EXIT_USAGE, "sparse_attn: persistent CTAs (sparse_attn_set_persistent(%d)) do not run the 128-query "
              "backward tile (FLASH_BWD_QUERY_TILE=128): its fused kernel fills the shared memory", persistent_ctas);
    cudaError_t err;
    if (deterministic) {
        if (!sm90) err = launch_bwd_dkdv<Bwd64, PlanPolicy, false, true>(p, kv_pol, T, stream);
        else if (wide) err = launch_bwd_dkdv_sm90_ws<Sm90DkDvWide>(p, kv_pol, stream);
        else if (ctas) err = launch_bwd_dkdv_sm90_ws<Sm90DkDvWs, true>(p, kv_pol, stream, ctas);
        else err = launch_bwd_dkdv_sm90_ws<Sm90DkDvWs>(p, kv_pol, stream);
        check_launch("backward dK/dV", err);
        const PlanPolicy q_pol = make_plan_policy(plan->rows, dq_tiles->lists);
        p.work_counter = dq_tiles->work_counter;
        if (!sm90) err = launch_bwd_dq<Dq64>(p, q_pol, T, stream);
        else if (ctas) err = launch_bwd_dq_sm90_ws<Sm90Dq64, true>(p, q_pol, stream, ctas);
        else err = launch_bwd_dq_sm90_ws<Sm90Dq64>(p, q_pol, stream);
        check_launch("backward dQ", err);
        zero_dropped_rows(plan, q_pol, 0, dq, dims->q_stride, NULL, 0, NULL, stream);
    } else if (sm90) {
        if (wide) err = launch_bwd_fused_sm90_ws_scheduled<2, false, 128>(bwd_schedule(), p, kv_pol, stream);
        else if (ctas) err = launch_bwd_fused_sm90_ws_scheduled<3, true>(bwd_schedule(), p, kv_pol, stream, ctas);
        else err = launch_bwd_fused_sm90_ws_scheduled<BWD_FUSED_STAGES>(bwd_schedule(), p, kv_pol, stream);
        check_launch("backward dK/dV/dQ", err);
        zero_dropped_rows(plan, kv_pol, 0, dq, dims->q_stride, NULL, 0, NULL, stream); /* the convert writes work rows */
    } else {
        check_launch("backward dK/dV/dQ", launch_bwd_dkdv<Bwd64, PlanPolicy, true, true>(p, kv_pol, T, stream));
        check_launch("backward dQ convert", launch_bwd_convert_dq<64>(p, stream));
    }
    zero_dropped_rows(plan, kv_pol, 1, dk, dims->k_stride, dv, dims->v_stride, NULL, stream);
}
