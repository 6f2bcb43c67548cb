/* The C API of the dense causal flash attention kernels (flash_attn.h): argument checks,
 * workspace layout and the tile configuration chosen per head dimension. */
#include "attention/cuda/flash_attn.h"

#include <stdint.h>
#include <stdio.h>

#include "attention/cuda/flash_checks.cuh"
#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/flash_policy.cuh"

extern "C" {
#include "runtime/error.h"
}

namespace {

using namespace flash;

/* Tile configurations (see attention/cuda/NOTES.md for how they were chosen). */
typedef FwdTiles<64, 128, 64, 4> Fwd64;
typedef FwdTiles<128, 128, 64, 8> Fwd128;
typedef BwdTiles<64, 128, 64, 8> Bwd64;
typedef BwdTiles<128, 128, 64, 8> Bwd128;
typedef DqTiles<64, 64, 64, 4> Dq64;
typedef DqTiles<128, 64, 32, 4> Dq128;
/* Hopper, head dim 64: warp-specialised kernels (flash_ws.cuh), chosen among the variants timed
 * on the H100 (attention/cuda/NOTES.md, v5-v8; bench/attention/flash_variants.cu). Backward:
 * fused dK/dV/dQ (3 stages, FLASH_BWD_SCHEDULE, FLASH_BWD_QUERY_TILE), or deterministic: dK/dV
 * with 3 stages and dQ with 2 in separate passes without atomics. */
/* Forward: ping-pong, two consumer warpgroups, 128 x 128 tiles, 3 stages. Three warpgroups of
 * 192 x 128 (FA3's shape, bench variant 13) were faster at 16k in four H100 runs of session 10
 * (2-7%), slower at 1k-2k (3-14%) and either at 8k (within that day's +-12% run-to-run noise;
 * docs/PERF.md): not the default until an interleaved A/B settles 8k. Session 16 (H200, 2
 * interleaved rounds): 3.767 vs 3.846 ms at 16k, 1.948 vs 1.983 (persistent) at 8k, 2% apart.
 * Exponentials partly on the FMA pipes (a cubic for 2^x, 070dc19; removed) were slower: 4.123
 * at 16k with 4 of 16 n-tiles. */
typedef Sm90FwdWsTiles<2, 128, 3, true> Sm90Fwd64;
/* Past 4k, the three warpgroups (T > FWD_PERSISTENT_MAX_T). With their tiles by TMA they won
 * clearly (H100, session 18, B*T 65536, median of 3 interleaved rounds): 1.712 ms at 8k against
 * 1.847 for the persistent instance, 3.258 at 16k against 3.587 (cuDNN 1.743, 3.396). */
typedef Sm90FwdWsTiles<3, 128, 3> Sm90Fwd64Long;
/* With a work counter at short T: a persistent grid drawing its tiles (without ping-pong: the
 * persistent ping-pong instance, bench variant 14, was within 1% of it in session 16: 1.964 vs
 * 1.983 ms at 8k, 3.832 vs 3.844 at 16k) and the fused backward's
 * persistent instance. Short causal tiles are mostly prologue and epilogue, which a persistent
 * CTA overlaps with its next tile's loads.
 * H100, session 15 (docs/PERF.md; B*T = 65536, 12 heads; persistent vs a CTA per tile, median of
 * 2 rounds): forward 0.371 vs 0.434 ms at 1k, 1.055 vs 1.108 at 4k, 1.956 vs 2.060 at 8k, 3.806
 * vs 3.822 at 16k; backward 1.052 vs 1.128, 2.678 vs 2.797, then slower: 5.110 vs 4.964 at 8k,
 * 9.978 vs 9.639 at 16k. Each where it won. */
typedef Sm90FwdWsTiles<2, 128, 3> Sm90Fwd64Persistent;
constexpr int FWD_PERSISTENT_MAX_T = 4096, BWD_PERSISTENT_MAX_T = 4096;
typedef Sm90BwdWsTiles<2, 3> Sm90DkDv64;
typedef Sm90BwdWsTiles<2, 2, false, false, false, 128> Sm90DkDvWide; /* FLASH_BWD_QUERY_TILE=128 */
typedef Sm90DqWsTiles<2, 2> Sm90Dq64;

void check_launch(const char *what, cudaError_t err) { api_check_launch("flash_attn", what, err); }

void check_ptr(const char *what, const void *ptr) { api_check_ptr("flash_attn", what, ptr); }

void check_dims(const flash_attn_dims_t *d) {
    if (d->D != 64 && d->D != 128)
        fatal(EXIT_USAGE, "flash_attn: head dim D = %d is not supported (64 or 128)", d->D);
    api_check_shape("flash_attn", d);
}

int force_portable = 0;
int forced_tma = -1; /* flash_attn_force_tma; -1: FLASH_FWD_TMA and FLASH_BWD_TMA */

bool dense_fwd_tma() { return forced_tma >= 0 ? forced_tma == 1 : fwd_tma(); }
bool dense_bwd_tma() { return forced_tma >= 0 ? forced_tma == 1 : bwd_tma(); }

/* Head dim 64 on Hopper takes the wgmma kernels; everything else the mma.sync ones. */
bool use_sm90(const flash_attn_dims_t *d) { return d->D == 64 && !force_portable && sm90_available(); }

bool use_persistent(const flash_attn_dims_t *d, int max_t) { return d->work_counter && d->T <= max_t; }

} // namespace

extern "C" void flash_attn_force_portable(int on) { force_portable = on != 0; }

extern "C" void flash_attn_force_tma(int tma) { forced_tma = tma < 0 ? -1 : tma != 0; }

extern "C" const char *flash_attn_path(const flash_attn_dims_t *dims) {
    check_dims(dims);
    return use_sm90(dims) ? "sm90 wgmma" : "mma.sync";
}

extern "C" const char *flash_attn_bwd_schedule(void) {
    static const char *names[] = {"lockstep", "deferred", "pingpong", "alternate"};
    return names[bwd_schedule()];
}

extern "C" int flash_attn_bwd_query_tile(void) { return bwd_query_tile(); }

extern "C" int flash_attn_fwd_tma(void) { return dense_fwd_tma() ? 1 : 0; }

extern "C" int flash_attn_bwd_tma(void) { return dense_bwd_tma() ? 1 : 0; }

extern "C" const char *flash_attn_head_group(void) {
    static char heads[16];
    const int g = head_group_setting();
    if (g == HEAD_GROUP_AUTO) return "auto";
    if (g == HEAD_GROUP_ALL) return "all";
    snprintf(heads, sizeof heads, "%d", g);
    return heads;
}

extern "C" void flash_attn_forward(const flash_attn_dims_t *dims, const flash_bf16_t *q,
                                   const flash_bf16_t *k, const flash_bf16_t *v,
                                   flash_bf16_t *out, float *lse, cudaStream_t stream) {
    check_dims(dims);
    check_ptr("q", q);
    check_ptr("k", k);
    check_ptr("v", v);
    check_ptr("out", out);
    check_ptr("lse", lse);
    FlashParams p = make_params(dims);
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.lse = lse;
    DenseCausalPolicy pol = {dims->T, dims->exclude_self ? 1 : 0};
    cudaError_t err;
    if (!use_sm90(dims))
        err = dims->D == 64 ? launch_fwd<Fwd64>(p, pol, dims->T, stream) : launch_fwd<Fwd128>(p, pol, dims->T, stream);
    else if (use_persistent(dims, FWD_PERSISTENT_MAX_T))
        err = launch_dense_fwd_sm90_ws<Sm90Fwd64Persistent, true>(dense_fwd_tma(), p, pol, stream, -1);
    else if (dims->T > FWD_PERSISTENT_MAX_T)
        err = launch_dense_fwd_sm90_ws<Sm90Fwd64Long>(dense_fwd_tma(), p, pol, stream);
    else
        err = launch_dense_fwd_sm90_ws<Sm90Fwd64>(dense_fwd_tma(), p, pol, stream);
    check_launch("forward kernel", err);
}

extern "C" size_t flash_attn_backward_workspace_bytes(const flash_attn_dims_t *dims,
                                                      int deterministic) {
    check_dims(dims);
    return backward_workspace_bytes(dims, deterministic);
}

extern "C" void flash_attn_backward(const flash_attn_dims_t *dims, const flash_bf16_t *q,
                                    const flash_bf16_t *k, const flash_bf16_t *v,
                                    const flash_bf16_t *out, const float *lse,
                                    const flash_bf16_t *dout, flash_bf16_t *dq,
                                    flash_bf16_t *dk, flash_bf16_t *dv, void *workspace,
                                    int deterministic, cudaStream_t stream) {
    check_dims(dims);
    const void *ptrs[] = {q, k, v, out, lse, dout, dq, dk, dv, workspace};
    const char *names[] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv", "workspace"};
    for (int i = 0; i < 10; i++) check_ptr(names[i], ptrs[i]);
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
    DenseCausalPolicy pol = {dims->T, dims->exclude_self ? 1 : 0};
    const int T = dims->T;
    if (use_sm90(dims)) {
        if (deterministic) { /* dQ from its own pass, no atomics */
            check_launch("backward preparation", launch_bwd_prepare(p, pol, false, stream));
            check_launch("backward dK/dV, dQ",
                         bwd_query_tile() == 128
                             ? launch_dense_bwd_split_sm90_ws<Sm90DkDvWide, Sm90Dq64>(dense_bwd_tma(), p, pol, stream)
                             : launch_dense_bwd_split_sm90_ws<Sm90DkDv64, Sm90Dq64>(dense_bwd_tma(), p, pol, stream));
        } else {
            /* the 128-query tile has no persistent instance (shared memory) */
            cudaError_t err;
            const bool tma = dense_bwd_tma();
            if (bwd_query_tile() == 128)
                err = launch_dense_bwd_fused_sm90_ws<2, false, 128>(tma, bwd_schedule(), p, pol, stream);
            else if (use_persistent(dims, BWD_PERSISTENT_MAX_T))
                err = launch_dense_bwd_fused_sm90_ws<3, true>(tma, bwd_schedule(), p, pol, stream, -1);
            else
                err = launch_dense_bwd_fused_sm90_ws<BWD_FUSED_STAGES>(tma, bwd_schedule(), p, pol, stream);
            check_launch("backward dK/dV/dQ", err);
        }
    } else if (dims->D == 64) {
        check_launch("backward preprocess", launch_bwd_preprocess<64>(p, !deterministic, stream));
        if (deterministic) {
            check_launch("backward dK/dV", launch_bwd_dkdv<Bwd64, DenseCausalPolicy, false, true>(
                                               p, pol, T, stream));
            check_launch("backward dQ", launch_bwd_dq<Dq64>(p, pol, T, stream));
        } else {
            check_launch("backward dK/dV/dQ", launch_bwd_dkdv<Bwd64, DenseCausalPolicy, true, true>(
                                                  p, pol, T, stream));
            check_launch("backward dQ convert", launch_bwd_convert_dq<64>(p, stream));
        }
    } else {
        check_launch("backward preprocess", launch_bwd_preprocess<128>(p, !deterministic, stream));
        if (deterministic) {
            check_launch("backward dK/dV",
                         launch_bwd_dkdv<Bwd128, DenseCausalPolicy, false, false>(p, pol, T, stream));
            check_launch("backward dQ", launch_bwd_dq<Dq128>(p, pol, T, stream));
        } else {
            check_launch("backward dK/dV/dQ",
                         launch_bwd_dkdv<Bwd128, DenseCausalPolicy, true, false>(p, pol, T, stream));
            check_launch("backward dQ convert", launch_bwd_convert_dq<128>(p, stream));
        }
    }
}
