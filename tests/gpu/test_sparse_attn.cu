/* GPU test of the sparse flash attention (attention/cuda/sparse_attn.h) against the CPU
 * reference, then a short timing next to the dense kernels.
 *
 * Cases: hash_sparse nb in {1, 2, 8, 16, 64} with shared and separate keys, qk_sparse drop in
 * {0, 0.3, 0.5, 0.7, 1}, dense through the plan; T in {1, 37, 300, 577, 1000} (no tile
 * multiple), several batches and heads, exclude_self on and off, head dim 64. The GPU plan is
 * built from the same key as the CPU plan (attn_plan_build; the GPU plan is proven identical to
 * it by test_plan_cuda). Checks, against attn_cpu_forward / attn_cpu_backward on the
 * bf16-rounded inputs:
 *   - out, dq, dk, dv relative L2 error <= 1e-2 (bf16 operands, fp32 accumulation); when the
 *     reference is all zero (drop 1.0) the output must be exactly zero;
 *   - lse absolute error <= 1e-2 where finite, exactly -inf where the reference is -inf;
 *   - rows with no allowed key (and dropped queries): out and dq exactly zero; keys no query
 *     sees: dk and dv exactly zero; no NaN anywhere. Outputs are poisoned with NaN first, so a
 *     row no kernel writes fails;
 *   - both backward modes (atomic dQ and deterministic); the deterministic one twice,
 *     bit-identical;
 *   - every case on the portable mma.sync kernels and, on Hopper, again on the wgmma kernels.
 * Timing (B*T = 65536, T = 16384, H = 12, D = 64): dense (default path and mma.sync) and the
 * sparse modes on both paths, forward and forward+backward, the sparse ones including their
 * plan. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "attention/cuda/flash_attn.h"
#include "attention/cuda/sparse_attn.h"
extern "C" {
#include "attention/attention.h"
#include "attention/plan_cuda.h"
#include "runtime/error.h"
#include "runtime/rng.h"
}
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"

static const double TOL_REL_L2 = 1e-2;
static const double TOL_LSE_ABS = 1e-2;

typedef struct {
    attn_params_t p;
    int shared_keys;
    int B, T, H;
} sparse_case_t;

static const int D = 64;

/* ||got - ref|| / ||ref||; an all-zero reference needs an all-zero result (0, else inf). */
static double rel_l2(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

static long count_nan(const float *x, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += isnan(x[i]) != 0;
    return bad;
}

/* Rows (b, t, h) of [B][T][H][D] that are not exactly zero in got, among rows where want_zero. */
static long nonzero_rows(const float *got, const unsigned char *want_zero, size_t n_rows) {
    long bad = 0;
    for (size_t r = 0; r < n_rows; r++) {
        if (!want_zero[r]) continue;
        for (int d = 0; d < D; d++)
            if (got[r * D + d] != 0.f) {
                bad++;
                break;
            }
    }
    return bad;
}

static float *download(const uint16_t *dev, size_t n) {
    uint16_t *raw = (uint16_t *)xmalloc(n * 2, "download");
    CUDA_OK(cudaMemcpy(raw, dev, n * 2, cudaMemcpyDeviceToHost));
    float *f = (float *)xmalloc(n * sizeof(float), "download");
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_float(raw[i]);
    free(raw);
    return f;
}

static void case_name(const sparse_case_t *c, char *buf, size_t len) {
    if (c->p.mode == ATTN_HASH_SPARSE)
        snprintf(buf, len, "hash nb=%d %s B=%d T=%d H=%d excl=%d", c->p.n_buckets,
                 c->shared_keys ? "shared" : "separate", c->B, c->T, c->H, c->p.exclude_self);
    else if (c->p.mode == ATTN_QK_SPARSE)
        snprintf(buf, len, "qk drop=%.1f B=%d T=%d H=%d excl=%d", c->p.drop_prob, c->B, c->T,
                 c->H, c->p.exclude_self);
    else
        snprintf(buf, len, "dense-plan B=%d T=%d H=%d excl=%d", c->B, c->T, c->H, c->p.exclude_self);
}

static void run_case(const sparse_case_t *c, uint64_t seed) {
    char name[128];
    case_name(c, name, sizeof name);
    const size_t n = (size_t)c->B * c->T * c->H * D, n_rows = n / D;
    const size_t n_lse = (size_t)c->B * c->H * c->T;
    uint16_t *h_in[4];
    float *f_in[4]; /* q, k, v, dout */
    for (int t = 0; t < 4; t++) {
        h_in[t] = (uint16_t *)xmalloc(n * 2, "input");
        f_in[t] = (float *)xmalloc(n * sizeof(float), "input");
        for (size_t i = 0; i < n; i++) {
            h_in[t][i] = float_to_bf16(rng_normal(seed + t, i));
            f_in[t][i] = bf16_to_float(h_in[t][i]);
        }
    }
    const uint64_t key = rng_key(seed, RNG_DOMAIN_ATTN, 5, 2, 1);
    attn_plan_t ref;
    attn_plan_init(&ref, &c->p, c->B, c->T, c->H, D);
    attn_plan_build(&ref, key, f_in[0], c->shared_keys ? NULL : f_in[1]);
    float *out_ref = (float *)xmalloc(n * sizeof(float), "ref"), *lse_ref = (float *)xmalloc(n_lse * sizeof(float), "ref");
    float *g_ref[3];
    for (int j = 0; j < 3; j++) g_ref[j] = (float *)xmalloc(n * sizeof(float), "ref");
    attn_cpu_forward(&ref, f_in[0], f_in[1], f_in[2], out_ref, lse_ref);
    attn_cpu_backward(&ref, f_in[0], f_in[1], f_in[2], out_ref, lse_ref, f_in[3], g_ref[0], g_ref[1], g_ref[2]);

    /* Rows that must be exactly zero: queries with lse -inf; keys with reference dk, dv zero. */
    unsigned char *empty_q = (unsigned char *)xcalloc(n_rows, 1, "rows");
    unsigned char *unseen_k = (unsigned char *)xcalloc(n_rows, 1, "rows");
    long n_empty_q = 0, n_unseen_k = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->H; h++) {
                size_t r = ((size_t)b * c->T + t) * c->H + h;
                empty_q[r] = isinf(lse_ref[((size_t)b * c->H + h) * c->T + t]) != 0;
                int zero = 1;
                for (int d = 0; d < D; d++) zero &= g_ref[1][r * D + d] == 0.f && g_ref[2][r * D + d] == 0.f;
                unseen_k[r] = (unsigned char)zero;
                n_empty_q += empty_q[r];
                n_unseen_k += zero;
            }

    uint16_t *d_in[4], *d_out, *d_grad[3];
    float *d_lse;
    for (int t = 0; t < 4; t++) {
        CUDA_OK(cudaMalloc(&d_in[t], n * 2));
        CUDA_OK(cudaMemcpy(d_in[t], h_in[t], n * 2, cudaMemcpyHostToDevice));
    }
    CUDA_OK(cudaMalloc(&d_out, n * 2));
    CUDA_OK(cudaMalloc(&d_lse, n_lse * sizeof(float)));
    for (int j = 0; j < 3; j++) CUDA_OK(cudaMalloc(&d_grad[j], n * 2));

    attn_plan_cuda_t plan;
    attn_plan_cuda_init(&plan, &c->p, c->B, c->T, c->H, D);
    attn_plan_cuda_build(&plan, key, d_in[0], (long)c->H * D, c->shared_keys ? NULL : d_in[1], (long)c->H * D, 0);
    attn_tiles_cuda_t tiles[3];
    for (int s = 0; s < 3; s++) {
        int bm, bn;
        sparse_attn_tile_shape((sparse_attn_pass_t)s, c->p.mode, D, &bm, &bn);
        attn_tiles_cuda_init(&tiles[s], &plan, bm, bn);
        attn_tiles_cuda_build(&tiles[s], &plan, 0);
    }
    flash_attn_dims_t dims = {c->B, c->T, c->H, D, c->p.exclude_self, (long)c->H * D,
                              (long)c->H * D, (long)c->H * D, (long)c->H * D};
    const flash_bf16_t *q = (const flash_bf16_t *)d_in[0], *k = (const flash_bf16_t *)d_in[1];
    const flash_bf16_t *v = (const flash_bf16_t *)d_in[2], *dout = (const flash_bf16_t *)d_in[3];

    CUDA_OK(cudaMemset(d_out, 0xff, n * 2)); /* bf16 0xffff and fp32 0xffffffff are NaN */
    CUDA_OK(cudaMemset(d_lse, 0xff, n_lse * sizeof(float)));
    sparse_attn_forward(&plan, &tiles[0], &dims, q, k, v, (flash_bf16_t *)d_out, d_lse, 0);
    CUDA_OK(cudaDeviceSynchronize());
    float *out = download(d_out, n);
    float *lse = (float *)xmalloc(n_lse * sizeof(float), "lse");
    CUDA_OK(cudaMemcpy(lse, d_lse, n_lse * sizeof(float), cudaMemcpyDeviceToHost));
    double e_lse = 0;
    long lse_bad = 0;
    for (size_t i = 0; i < n_lse; i++) {
        if (isinf(lse_ref[i])) lse_bad += !(isinf(lse[i]) && lse[i] < 0);
        else if (!isfinite(lse[i])) lse_bad++;
        else e_lse = fmax(e_lse, fabs((double)lse[i] - lse_ref[i]));
    }
    const double e_out = rel_l2(out, out_ref, n);
    const long out_nan = count_nan(out, n), out_nz = nonzero_rows(out, empty_q, n_rows);
    printf("%-44s out %.2e lse %.2e empty q %ld unseen k %ld\n", name, e_out, e_lse, n_empty_q, n_unseen_k);
    CHECK(e_out <= TOL_REL_L2 && out_nan == 0, "%s: out rel L2 %.3g > %.3g or %ld NaN", name, e_out, TOL_REL_L2, out_nan);
    CHECK(e_lse <= TOL_LSE_ABS && lse_bad == 0, "%s: lse max abs err %.3g, %ld bad -inf/NaN", name, e_lse, lse_bad);
    CHECK(out_nz == 0, "%s: %ld rows without allowed keys have nonzero out", name, out_nz);

    uint16_t *first_det = NULL;
    for (int run = 0; run < 3; run++) { /* atomic dQ, deterministic, deterministic again */
        const int det = run > 0;
        const size_t ws_bytes = sparse_attn_backward_workspace_bytes(&dims, det);
        void *ws;
        CUDA_OK(cudaMalloc(&ws, ws_bytes));
        for (int j = 0; j < 3; j++) CUDA_OK(cudaMemset(d_grad[j], 0xff, n * 2));
        sparse_attn_backward(&plan, &tiles[1], det ? &tiles[2] : NULL, &dims, q, k, v,
                             (const flash_bf16_t *)d_out, d_lse, dout, (flash_bf16_t *)d_grad[0],
                             (flash_bf16_t *)d_grad[1], (flash_bf16_t *)d_grad[2], ws, 0);
        CUDA_OK(cudaDeviceSynchronize());
        CUDA_OK(cudaFree(ws));
        if (run == 2) {
            uint16_t *again = (uint16_t *)xmalloc(3 * n * 2, "grads");
            for (int j = 0; j < 3; j++) CUDA_OK(cudaMemcpy(again + j * n, d_grad[j], n * 2, cudaMemcpyDeviceToHost));
            CHECK(memcmp(again, first_det, 3 * n * 2) == 0, "%s: deterministic backward differs across runs", name);
            free(again);
            break;
        }
        if (det) {
            first_det = (uint16_t *)xmalloc(3 * n * 2, "grads");
            for (int j = 0; j < 3; j++) CUDA_OK(cudaMemcpy(first_det + j * n, d_grad[j], n * 2, cudaMemcpyDeviceToHost));
        }
        static const char *gname[3] = {"dq", "dk", "dv"};
        for (int j = 0; j < 3; j++) {
            float *g = download(d_grad[j], n);
            const double e = rel_l2(g, g_ref[j], n);
            const long nan = count_nan(g, n), nz = nonzero_rows(g, j == 0 ? empty_q : unseen_k, n_rows);
            CHECK(e <= TOL_REL_L2 && nan == 0, "%s det=%d: %s rel L2 %.3g > %.3g or %ld NaN", name, det, gname[j], e, TOL_REL_L2, nan);
            CHECK(nz == 0, "%s det=%d: %ld %s rows must be exactly zero", name, det, nz, gname[j]);
            printf("    det=%d %s %.2e\n", det, gname[j], e);
            free(g);
        }
    }
    free(first_det);

    for (int s = 0; s < 3; s++) attn_tiles_cuda_free(&tiles[s]);
    attn_plan_cuda_free(&plan);
    attn_plan_free(&ref);
    for (int t = 0; t < 4; t++) {
        CUDA_OK(cudaFree(d_in[t]));
        free(h_in[t]);
        free(f_in[t]);
    }
    CUDA_OK(cudaFree(d_out));
    CUDA_OK(cudaFree(d_lse));
    for (int j = 0; j < 3; j++) {
        CUDA_OK(cudaFree(d_grad[j]));
        free(g_ref[j]);
    }
    free(out_ref), free(lse_ref), free(out), free(lse), free(empty_q), free(unseen_k);
}

/* ---- timing ---- */

__global__ void fill_kernel(__nv_bfloat16 *x, size_t n, uint64_t key) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __float2bfloat16(((float)rng_u24(key, i) * (1.0f / 16777216.0f) - 0.5f) * 3.4f);
}

typedef struct {
    __nv_bfloat16 *q, *k, *v, *out, *dout, *dq, *dk, *dv;
    float *lse;
    void *ws;
    flash_attn_dims_t dims;
} bench_bufs_t;

/* Milliseconds per call of what(), averaged over `iters` after one warm-up. */
template <class F> static float time_ms(F what, int iters) {
    what();
    cudaEvent_t a, b;
    CUDA_OK(cudaEventCreate(&a));
    CUDA_OK(cudaEventCreate(&b));
    CUDA_OK(cudaEventRecord(a, 0));
    for (int i = 0; i < iters; i++) what();
    CUDA_OK(cudaEventRecord(b, 0));
    CUDA_OK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, a, b));
    CUDA_OK(cudaEventDestroy(a));
    CUDA_OK(cudaEventDestroy(b));
    return ms / iters;
}

/* One sparse configuration, timed stage by stage (ms per call, each stage alone on prebuilt
 * inputs) and as the whole fwd+bwd including the plan and every tile list, with the backward's
 * dQ either split into its own pass or added by atomics in the dK/dV pass. */
static void bench_sparse(const char *label, const attn_params_t *p, int shared_k, bench_bufs_t *x,
                         float dense_fwd, float dense_fb) {
    const flash_attn_dims_t *d = &x->dims;
    attn_plan_cuda_t plan;
    attn_plan_cuda_init(&plan, p, d->B, d->T, d->H, d->D);
    attn_tiles_cuda_t tiles[3];
    const sparse_attn_pass_t passes[3] = {SPARSE_ATTN_PASS_FORWARD, SPARSE_ATTN_PASS_DKDV, SPARSE_ATTN_PASS_DQ};
    for (int i = 0; i < 3; i++) {
        int bm, bn;
        sparse_attn_tile_shape(passes[i], p->mode, d->D, &bm, &bn);
        attn_tiles_cuda_init(&tiles[i], &plan, bm, bn);
    }
    const uint64_t key = rng_key(11, RNG_DOMAIN_ATTN, 1, 0, 0);
    const long st = (long)d->H * d->D;
    const __nv_bfloat16 *keys = p->mode == ATTN_HASH_SPARSE && !shared_k ? x->k : NULL;
    auto plan_only = [&]() { attn_plan_cuda_build(&plan, key, x->q, st, keys, st, 0); };
    auto build = [&](int i) { attn_tiles_cuda_build(&tiles[i], &plan, 0); };
    auto fwd = [&]() { sparse_attn_forward(&plan, &tiles[0], d, x->q, x->k, x->v, x->out, x->lse, 0); };
    auto bwd = [&](int split) {
        sparse_attn_backward(&plan, &tiles[1], split ? &tiles[2] : NULL, d, x->q, x->k, x->v, x->out,
                             x->lse, x->dout, x->dq, x->dk, x->dv, x->ws, 0);
    };
    plan_only();
    for (int i = 0; i < 3; i++) build(i);
    fwd();
    const float t_plan = time_ms(plan_only, 5);
    float t_tiles[3];
    for (int i = 0; i < 3; i++) t_tiles[i] = time_ms([&]() { build(i); }, 5);
    const float t_fwd = time_ms(fwd, 5);
    const float t_bwd_atomic = time_ms([&]() { bwd(0); }, 5);
    const float t_bwd_split = time_ms([&]() { bwd(1); }, 5);
    const float t_fb_atomic = time_ms([&]() { plan_only(); build(0); build(1); fwd(); bwd(0); }, 5);
    const float t_fb_split = time_ms([&]() { plan_only(); build(0); build(1); build(2); fwd(); bwd(1); }, 5);
    const int64_t live = attn_tiles_cuda_live_count(&tiles[0], 0);
    const double all = (double)d->B * d->H * tiles[0].lists.n_q_tiles * tiles[0].lists.n_k_tiles;
    printf("| %-26s | %6.3f | %5.3f %5.3f %5.3f | %6.3f | %6.3f | %6.3f | %6.3f | %6.3f (%5.2fx) | %5.3f |\n",
           label, t_plan, t_tiles[0], t_tiles[1], t_tiles[2], t_fwd, t_bwd_atomic, t_bwd_split, t_fb_atomic,
           t_fb_split, dense_fb / t_fb_split, live / all);
    (void)dense_fwd;
    for (int i = 0; i < 3; i++) attn_tiles_cuda_free(&tiles[i]);
    attn_plan_cuda_free(&plan);
}

/* SPARSE_TEST_HOPPER_ONLY=1 leaves out the portable kernels (checks and timing rows): for runs
 * that vary only the Hopper kernels, such as FLASH_BWD_SCHEDULE. */
static int hopper_only(void) {
    const char *v = getenv("SPARSE_TEST_HOPPER_ONLY");
    return v && strcmp(v, "1") == 0;
}

static void run_timing(void) {
    bench_bufs_t x;
    const int B = 4, T = 16384, H = 12;
    x.dims = {B, T, H, D, 0, (long)H * D, (long)H * D, (long)H * D, (long)H * D};
    const size_t n = (size_t)B * T * H * D;
    __nv_bfloat16 **bufs[] = {&x.q, &x.k, &x.v, &x.out, &x.dout, &x.dq, &x.dk, &x.dv};
    for (int i = 0; i < 8; i++) {
        CUDA_OK(cudaMalloc(bufs[i], n * 2));
        fill_kernel<<<(unsigned)((n + 255) / 256), 256>>>(*bufs[i], n, 1000 + i);
    }
    CUDA_OK(cudaMalloc(&x.lse, (size_t)B * H * T * sizeof(float)));
    const size_t ws_dense = flash_attn_backward_workspace_bytes(&x.dims, 0);
    const size_t ws_sparse = sparse_attn_backward_workspace_bytes(&x.dims, 0);
    CUDA_OK(cudaMalloc(&x.ws, ws_dense > ws_sparse ? ws_dense : ws_sparse));
    CUDA_OK(cudaDeviceSynchronize());
    float dense_fwd[2], dense_fb[2];
    for (int portable = 0; portable < 2; portable++) {
        flash_attn_force_portable(portable);
        dense_fwd[portable] = time_ms([&]() { flash_attn_forward(&x.dims, x.q, x.k, x.v, x.out, x.lse, 0); }, 5);
        dense_fb[portable] = time_ms([&]() {
            flash_attn_forward(&x.dims, x.q, x.k, x.v, x.out, x.lse, 0);
            flash_attn_backward(&x.dims, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, x.ws, 0, 0);
        }, 5);
    }
    flash_attn_force_portable(0);
    printf("\nTiming B=%d T=%d H=%d D=%d, ms per call. Dense: sm90 fwd %.3f, fwd+bwd %.3f; mma.sync fwd %.3f, "
           "fwd+bwd %.3f.\nSparse stages alone: plan (assign + sort), tile lists (fwd, dK/dV, dQ), fwd kernel, "
           "bwd kernels with dQ added in fp32 (atomics; on sm90 bulk reductions, fused) or split; then fwd+bwd with everything, and its speed-up over dense "
           "sm90; live = live fwd tiles / all tiles\n", B, T, H, D, dense_fwd[0], dense_fb[0], dense_fwd[1], dense_fb[1]);
    printf("| %-26s | %6s | %-17s | %6s | %6s | %6s | %6s | %-15s | %5s |\n", "kernel", "plan", "tiles f/kv/dq",
           "fwd", "bwd nd", "bwd sp", "all nd", "all split", "live");
    struct { const char *name; attn_params_t p; int shared_k; } cfgs[] = {
        {"hash nb=16", {ATTN_HASH_SPARSE, 16, 0.f, 0}, 0},
        {"hash nb=16 shared k", {ATTN_HASH_SPARSE, 16, 0.f, 0}, 1},
        {"hash nb=64", {ATTN_HASH_SPARSE, 64, 0.f, 0}, 0},
        {"qk drop=0.5", {ATTN_QK_SPARSE, 1, 0.5f, 0}, 0},
        {"qk drop=0.7", {ATTN_QK_SPARSE, 1, 0.7f, 0}, 0},
    };
    /* The portable path (two rows for reference), then the Hopper path with one CTA per tile
     * and with persistent CTAs (the default). */
    for (int run = hopper_only(); run < 3; run++) {
        const int portable = run == 0;
        sparse_attn_force_portable(portable);
        if (!portable && strcmp(sparse_attn_path(64), "mma.sync") == 0) break;
        if (run == 2 && flash_attn_bwd_query_tile() == 128) break; /* no persistent wide backward */
        sparse_attn_set_persistent(run == 1 ? 0 : -1);
        for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
            if (portable && c != 0 && c != 3) continue;
            char label[64];
            snprintf(label, sizeof label, "%s %s", cfgs[c].name,
                     portable ? "mma.sync" : run == 1 ? "sm90 cta/tile" : "sm90 persist");
            bench_sparse(label, &cfgs[c].p, cfgs[c].shared_k, &x, dense_fwd[0], dense_fb[0]);
        }
    }
    sparse_attn_force_portable(0);
    sparse_attn_set_persistent(0);
    for (int i = 0; i < 8; i++) CUDA_OK(cudaFree(*bufs[i]));
    CUDA_OK(cudaFree(x.lse));
    CUDA_OK(cudaFree(x.ws));
}

int main(int argc, char **argv) {
    static const sparse_case_t cases[] = {
        {{ATTN_HASH_SPARSE, 1, 0.f, 1}, 1, 2, 1, 1},
        {{ATTN_HASH_SPARSE, 2, 0.f, 0}, 0, 2, 37, 3},
        {{ATTN_HASH_SPARSE, 8, 0.f, 1}, 1, 1, 300, 2},
        {{ATTN_HASH_SPARSE, 16, 0.f, 0}, 0, 2, 577, 2},
        {{ATTN_HASH_SPARSE, 64, 0.f, 1}, 0, 1, 1000, 3},
        {{ATTN_HASH_SPARSE, 16, 0.f, 0}, 1, 1, 1000, 2},
        {{ATTN_HASH_SPARSE, 64, 0.f, 0}, 1, 1, 37, 2},
        {{ATTN_HASH_SPARSE, 8, 0.f, 1}, 0, 1, 577, 1},
        {{ATTN_QK_SPARSE, 1, 0.0f, 1}, 0, 1, 577, 2},
        {{ATTN_QK_SPARSE, 1, 0.3f, 0}, 0, 2, 300, 2},
        {{ATTN_QK_SPARSE, 1, 0.5f, 0}, 0, 1, 1000, 3},
        {{ATTN_QK_SPARSE, 1, 0.7f, 1}, 0, 3, 37, 2},
        {{ATTN_QK_SPARSE, 1, 1.0f, 0}, 0, 1, 300, 2},
        {{ATTN_QK_SPARSE, 1, 0.5f, 1}, 0, 2, 1, 1},
        {{ATTN_DENSE, 1, 0.f, 1}, 0, 1, 577, 2},
    };
    /* --time: the timing after the checks; --time-only: the timing alone. */
    const int time_only = argc > 1 && strcmp(argv[1], "--time-only") == 0;
    /* The portable kernels first, then the default path if it differs (wgmma on Hopper): with
     * one CTA per tile, persistent CTAs as many as fit (the default; on these small shapes
     * about one tile each), and 1 and 5 persistent CTAs, each walking many tiles. */
    const int hopper_grids[] = {0, -1, 1, 5};
    for (int run = hopper_only(); run < 5 && !time_only; run++) {
        const int portable = run == 0;
        sparse_attn_force_portable(portable);
        if (!portable && strcmp(sparse_attn_path(64), "mma.sync") == 0) break;
        if (run > 1 && flash_attn_bwd_query_tile() == 128) {
            printf("=== persistent grids skipped: FLASH_BWD_QUERY_TILE=128 has no persistent backward\n");
            break;
        }
        if (!portable) sparse_attn_set_persistent(hopper_grids[run - 1]);
        printf("=== sparse kernels: %s", sparse_attn_path(64));
        if (!portable) printf(", grid %d (0 a CTA per tile, -1 persistent, n persistent with n CTAs)",
                              hopper_grids[run - 1]);
        printf("\n");
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 100 + 17 * i);
    }
    sparse_attn_set_persistent(0);
    if (time_only || (argc > 1 && strcmp(argv[1], "--time") == 0)) run_timing();
    return test_summary();
}
