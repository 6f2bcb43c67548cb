/* Tile-configuration variants of the dense flash kernels, for bench_dense.py to time side by
 * side with the configuration the public API uses (built into one shared library together
 * with attention/cuda/flash_attn.cu). Variant 0 is always the public API's choice.
 *   bench_fwd_variant(v, ...)  forward with variant v; returns 0, or -1 if v is unknown
 *   bench_bwd_variant(v, ...)  backward (atomic dQ) with variant v; same workspace as the API
 *   bench_variant_name(fwd, v) a short description, NULL past the last variant */
#include <cuda_runtime.h>

#include "attention/cuda/flash_attn.h"
#include "attention/cuda/flash_checks.cuh"
#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/flash_policy.cuh"

using namespace flash;

namespace {

const char *fwd_names[] = {"api",
                           "mma.sync api",
                           "sm90 2wg BN64 2cta (old api)",
                           "sm90 2wg BN128",
                           "ws 2wg BN128 S3",
                           "ws 2wg BN128 S4",
                           "ws 2wg BN64 S4",
                           "ws 3wg BN64 S4",
                           "ws 2wg BN128 S3 pingpong (FLASH_FWD_TMA=0 api, T <= 8k without a work counter)",
                           "ws 2wg BN64 S4 pingpong",
                           "ws 2wg BN128 S3 persistent (FLASH_FWD_TMA=0 api, short T)",
                           "ws 2wg BN64 S4 persistent (sparse api)",
                           "ws 3wg BN128 S2",
                           "ws 3wg BN128 S3 (FLASH_FWD_TMA=0 api, long T)",
                           "ws 2wg BN128 S3 pingpong persistent",
                           "tma ws 2wg BN128 S3",
                           "tma ws 2wg BN128 S3 pingpong (api, T <= 8k without a work counter)",
                           "tma ws 2wg BN128 S3 persistent (api, short T)",
                           "tma ws 3wg BN128 S3 (api, long T)",
                           NULL};
const char *bwd_names[] = {"api",
                           "mma.sync api",
                           "sm90 3wg xchg (atomic)",
                           "split defer dkdv + defer dq",
                           "split defer dkdv + dq",
                           "split dkdv + defer dq",
                           "split 3wg + dq 1wg(3cta)",
                           "old api: split 2wg + dq 2wg(2cta)",
                           "ws dkdv 2wg S2 + ws dq 2wg S3",
                           "ws dkdv 2wg S3 + ws dq 2wg S2 (FLASH_BWD_TMA=0 api det)",
                           "ws dkdv 2wg S3 + old dq 2wg(2cta)",
                           "ws fused lockstep dQ S3 (bulk reduce)",
                           "ws fused dQ S2 (bulk reduce)",
                           "ws dkdv S3 + ws dq S2 persistent",
                           "ws fused dQ S3 persistent",
                           "ws fused deferred dQ S3",
                           "ws fused deferred dQ S3 pingpong",
                           "ws fused deferred dQ S2 pingpong",
                           "ws fused 128x128 lockstep S2",
                           "ws fused 128x128 deferred S2",
                           "ws fused 128x128 deferred S2 pingpong",
                           "ws fused deferred dQ S2",
                           "ws fused alternate dQ S2, one warpgroup a tile (FLASH_BWD_TMA=0 api, long T)",
                           "ws fused alternate dQ S2 persistent (FLASH_BWD_TMA=0 api, short T)",
                           "tma ws fused alternate dQ S2 (api, long T)",
                           "tma ws fused alternate dQ S2 persistent (api, short T)",
                           "tma ws dkdv 2wg S3 + ws dq 2wg S2 (api det)",
                           NULL};

/* The persistent variants' work counter (one int of device memory for the process; the bench
 * runs one variant at a time on one device). NULL if it could not be allocated: the launch
 * then fails with cudaErrorInvalidValue. */
int *work_counter() {
    static int *counter = NULL;
    if (!counter && cudaMalloc(&counter, sizeof(int)) != cudaSuccess) counter = NULL;
    return counter;
}

} // namespace

extern "C" const char *bench_variant_name(int fwd, int v) {
    const char **names = fwd ? fwd_names : bwd_names;
    for (int i = 0; i <= v; i++)
        if (!names[i]) return NULL;
    return names[v];
}

extern "C" int bench_fwd_variant(int v, const flash_attn_dims_t *d, const flash_bf16_t *q,
                                 const flash_bf16_t *k, const flash_bf16_t *v_, flash_bf16_t *out,
                                 float *lse, cudaStream_t s) {
    if (v == 0) {
        flash_attn_forward(d, q, k, v_, out, lse, s);
        return 0;
    }
    if (d->D != 64) return -1;
    FlashParams p = make_params(d);
    p.q = q;
    p.k = k;
    p.v = v_;
    p.out = out;
    p.lse = lse;
    DenseCausalPolicy pol = {d->T, d->exclude_self};
    p.work_counter = work_counter();
    cudaError_t err;
    switch (v) {
    case 1: err = launch_fwd<FwdTiles<64, 128, 64, 4>>(p, pol, d->T, s); break;
    case 2: err = launch_fwd_sm90<Sm90FwdTiles<2, 64, 2>>(p, pol, d->T, s); break;
    case 3: err = launch_fwd_sm90<Sm90FwdTiles<2, 128>>(p, pol, d->T, s); break;
    case 4: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3>>(p, pol, s); break;
    case 5: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 4>>(p, pol, s); break;
    case 6: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 64, 4>>(p, pol, s); break;
    case 7: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<3, 64, 4>>(p, pol, s); break;
    case 8: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3, true>>(p, pol, s); break;
    case 9: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 64, 4, true>>(p, pol, s); break;
    case 10: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3>, true>(p, pol, s, -1); break;
    case 11: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 64, 4>, true>(p, pol, s, -1); break;
    case 12: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<3, 128, 2>>(p, pol, s); break;
    case 13: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<3, 128, 3>>(p, pol, s); break;
    case 14: err = launch_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3, true>, true>(p, pol, s, -1); break;
    /* 4, 8, 10, 13 with Q/K/V by TMA (flash_tma.cuh) */
    case 15: err = launch_dense_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3>>(true, p, pol, s); break;
    case 16: err = launch_dense_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3, true>>(true, p, pol, s); break;
    case 17: err = launch_dense_fwd_sm90_ws<Sm90FwdWsTiles<2, 128, 3>, true>(true, p, pol, s, -1); break;
    case 18: err = launch_dense_fwd_sm90_ws<Sm90FwdWsTiles<3, 128, 3>>(true, p, pol, s); break;
    default: return -1;
    }
    return err == cudaSuccess ? 0 : -2;
}

extern "C" int bench_bwd_variant(int v, const flash_attn_dims_t *d, const flash_bf16_t *q,
                                 const flash_bf16_t *k, const flash_bf16_t *v_,
                                 const flash_bf16_t *out, const float *lse,
                                 const flash_bf16_t *dout, flash_bf16_t *dq, flash_bf16_t *dk,
                                 flash_bf16_t *dv, void *ws, cudaStream_t s) {
    if (v == 0) {
        flash_attn_backward(d, q, k, v_, out, lse, dout, dq, dk, dv, ws, 0, s);
        return 0;
    }
    if (d->D != 64) return -1;
    FlashParams p = make_params(d);
    p.q = q;
    p.k = k;
    p.v = v_;
    p.out = const_cast<flash_bf16_t *>(out);
    p.lse = const_cast<float *>(lse);
    p.dout = dout;
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
    set_backward_workspace(p, d, ws, 0);
    DenseCausalPolicy pol = {d->T, d->exclude_self};
    p.work_counter = work_counter();
    const bool split = v >= 3; /* dQ in its own pass or fused: no [B][T][H][D] accumulator to zero */
    const bool fused = v == 11 || v == 12 || (v >= 14 && v <= 25); /* launch_bwd_fused_sm90_ws prepares itself */
    typedef Sm90DqTiles<2, 2> OldDq;
    cudaError_t err = !split ? launch_bwd_preprocess<64>(p, true, s)
                      : fused ? cudaSuccess
                              : launch_bwd_prepare(p, pol, false, s); /* delta, and the row statistics of the ws kernels */
    if (err != cudaSuccess) return -2;
    typedef DenseCausalPolicy P;
    switch (v) {
    case 1: err = launch_bwd_dkdv<BwdTiles<64, 128, 64, 8>, P, true, true>(p, pol, d->T, s); break;
    case 2: err = launch_bwd_sm90<Sm90BwdTiles<3>, P, true>(p, pol, d->T, s); break;
    case 3:
        err = launch_bwd_sm90<Sm90BwdTiles<2, 1, 3>, P, false>(p, pol, d->T, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<Sm90DqTiles<2, 1, 3>>(p, pol, d->T, s);
        break;
    case 4:
        err = launch_bwd_sm90<Sm90BwdTiles<2, 1, 3>, P, false>(p, pol, d->T, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<Sm90DqTiles<2>>(p, pol, d->T, s);
        break;
    case 5:
        err = launch_bwd_sm90<Sm90BwdTiles<2>, P, false>(p, pol, d->T, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<Sm90DqTiles<2, 1, 3>>(p, pol, d->T, s);
        break;
    case 6:
        err = launch_bwd_sm90<Sm90BwdTiles<3>, P, false>(p, pol, d->T, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<Sm90DqTiles<1, 3>>(p, pol, d->T, s);
        break;
    case 7:
        err = launch_bwd_sm90<Sm90BwdTiles<2>, P, false>(p, pol, d->T, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<OldDq>(p, pol, d->T, s);
        break;
    case 8:
        err = launch_bwd_dkdv_sm90_ws<Sm90BwdWsTiles<2, 2>>(p, pol, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90_ws<Sm90DqWsTiles<2, 3>>(p, pol, s);
        break;
    case 9:
        err = launch_bwd_dkdv_sm90_ws<Sm90BwdWsTiles<2, 3>>(p, pol, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90_ws<Sm90DqWsTiles<2, 2>>(p, pol, s);
        break;
    case 10:
        err = launch_bwd_dkdv_sm90_ws<Sm90BwdWsTiles<2, 3>>(p, pol, s);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90<OldDq>(p, pol, d->T, s);
        break;
    case 11:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 3, true>>(p, pol, s);
        break;
    case 12:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true>>(p, pol, s);
        break;
    case 13:
        err = launch_bwd_dkdv_sm90_ws<Sm90BwdWsTiles<2, 3>, true>(p, pol, s, -1);
        if (err == cudaSuccess) err = launch_bwd_dq_sm90_ws<Sm90DqWsTiles<2, 2>, true>(p, pol, s, -1);
        break;
    case 14:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 3, true>, true>(p, pol, s, -1);
        break;
    case 15:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 3, true, true>>(p, pol, s);
        break;
    case 16:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 3, true, true, true>>(p, pol, s);
        break;
    case 17:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, true>>(p, pol, s);
        break;
    case 18:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, false, false, 128>>(p, pol, s);
        break;
    case 19:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, false, 128>>(p, pol, s);
        break;
    case 20:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, true, 128>>(p, pol, s);
        break;
    case 21:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true>>(p, pol, s);
        break;
    case 22:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, false, 64, true>>(p, pol, s);
        break;
    case 23:
        err = launch_bwd_fused_sm90_ws<Sm90BwdWsTiles<2, 2, true, true, false, 64, true>, true>(p, pol, s, -1);
        break;
    case 24: /* 22 and 23 with their tiles by TMA (flash_tma.cuh) */
        err = launch_dense_bwd_fused_sm90_ws<2>(true, BWD_ALTERNATE, p, pol, s);
        break;
    case 25:
        err = launch_dense_bwd_fused_sm90_ws<3, true>(true, BWD_ALTERNATE, p, pol, s, -1);
        break;
    case 26: /* 9 by TMA */
        err = launch_dense_bwd_split_sm90_ws<Sm90BwdWsTiles<2, 3>, Sm90DqWsTiles<2, 2>>(true, p, pol, s);
        break;
    default: return -1;
    }
    if (err != cudaSuccess) return -2;
    if (split) return 0;
    return launch_bwd_convert_dq<64>(p, s) == cudaSuccess ? 0 : -2;
}
