/* GPU test of the dense causal flash attention kernels against the CPU reference.
 *
 * For awkward shapes (T not a multiple of any tile, T = 1, several heads and batches, head dim
 * 64 and 128, exclude_self on and off, q/k/v read from a fused [B][T][3][H][D] buffer and the
 * output written with a padded row stride) it checks:
 *   - out, lse, dq, dk, dv against attn_cpu_forward / attn_cpu_backward run in double on the
 *     bf16-rounded inputs: relative L2 error <= 1e-2 for out and the gradients (bf16 operands,
 *     fp32 accumulation: ~3e-3 expected), lse absolute error <= 1e-2;
 *     rows without any allowed key: out exactly 0, lse exactly -inf, no NaN anywhere;
 *   - every output element written: outputs are poisoned with NaN first, and the padding
 *     between rows must still hold the poison afterwards (nothing written out of bounds);
 *   - deterministic backward: two runs give bit-identical dq, dk, dv; forward too;
 *   - both backward modes (atomic dQ and deterministic) against the reference;
 *   - every case on the portable mma.sync kernels and, on Hopper, again on the wgmma kernels,
 *     loading their tiles by TMA and by cp.async (flash_attn_force_tma).
 * Build: bench/attention/build.sh (nvcc this file + attention/cuda/flash_attn.cu, link
 * build/libcore.a). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "attention/cuda/flash_attn.h"
extern "C" {
#include "attention/attention.h"
#include "runtime/error.h"
#include "runtime/rng.h"
}
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"

static const double TOL_REL_L2 = 1e-2; /* out, dq, dk, dv */
static const double TOL_LSE_ABS = 1e-2;
static const uint16_t BF16_NAN = 0x7fc1; /* poison: a quiet NaN no kernel computes */

typedef struct {
    int B, T, H, D, exclude_self;
    int fused_qkv; /* q, k, v (and dq, dk, dv) interleaved in [B][T][3][H][D] */
    int pad_out;   /* out / dout rows padded by 8 elements of poison */
} test_case_t;

/* Host copy of one strided tensor: element (b, t, h, d) at ((b*T + t)*stride + h*D + d). */
typedef struct {
    uint16_t *data;
    long stride;
} strided_t;

static size_t strided_index(const test_case_t *c, long stride, int b, int t, int h, int d) {
    return ((size_t)b * c->T + t) * stride + (size_t)h * c->D + d;
}

/* Contiguous fp32 [B][T][H][D] view of a strided bf16 tensor. */
static float *to_float(const test_case_t *c, strided_t x) {
    size_t n = (size_t)c->B * c->T * c->H * c->D;
    float *f = (float *)xmalloc(n * sizeof(float), "test tensor");
    size_t i = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->H; h++)
                for (int d = 0; d < c->D; d++)
                    f[i++] = bf16_to_float(x.data[strided_index(c, x.stride, b, t, h, d)]);
    return f;
}

/* ||got - ref|| / ||ref|| over all elements; NaN anywhere gives +inf. Zero ref: max |got|. */
static double rel_l2(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Number of elements of a strided buffer (size `total`) outside the tensor's rows that lost
 * their poison: the kernels must never write between rows. */
static long padding_written(const test_case_t *c, const uint16_t *buf, long stride,
                            int n_interleaved, size_t total) {
    long bad = 0;
    for (size_t i = 0; i < total; i++) {
        long in_row = (long)(i % stride);
        if (in_row < (long)n_interleaved * c->H * c->D) continue;
        if (buf[i] != BF16_NAN) bad++;
    }
    return bad;
}

static void fill_random(uint16_t *x, size_t n, uint64_t key, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = float_to_bf16(scale * rng_normal(key, i));
}

static void poison(uint16_t *dev, size_t n) {
    CUDA_OK(cudaMemset(dev, 0xff, n * 2)); /* 0xffff is a NaN too; padding check uses host */
}

/* Inputs of one case (host, bf16 as stored) and the reference results (fp32, contiguous). */
typedef struct {
    long qkv_stride, o_stride;
    size_t qkv_total, o_total, off_k; /* k at off_k, v at 2*off_k from q */
    uint16_t *qkv, *dout;
    float *out, *lse, *dq, *dk, *dv;
} case_data_t;

/* Runs forward, forward again, both backward modes (deterministic twice) on the current path
 * and checks everything against the reference; work_counter: flash_attn_dims_t's (persistent
 * grids on Hopper) or NULL. */
static void check_path(const test_case_t *c, const case_data_t *x, const char *path, int *work_counter) {
    const int B = c->B, T = c->T, H = c->H, D = c->D;
    const size_t n = (size_t)B * T * H * D, rows = (size_t)B * H * T;
    char label[160];
    snprintf(label, sizeof label, "%-10s B=%d T=%d H=%d D=%d excl=%d fused=%d pad=%d", path, B, T,
             H, D, c->exclude_self, c->fused_qkv, c->pad_out);
    flash_attn_dims_t dims = {B, T, H, D, c->exclude_self, x->qkv_stride, x->qkv_stride,
                              x->qkv_stride, x->o_stride, work_counter};
    uint16_t *d_qkv, *d_dqkv[2], *d_out, *d_dout;
    float *d_lse;
    void *d_ws;
    CUDA_OK(cudaMalloc(&d_qkv, x->qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_dqkv[0], x->qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_dqkv[1], x->qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_out, x->o_total * 2));
    CUDA_OK(cudaMalloc(&d_dout, x->o_total * 2));
    CUDA_OK(cudaMalloc(&d_lse, rows * 4));
    CUDA_OK(cudaMalloc(&d_ws, flash_attn_backward_workspace_bytes(&dims, 0)));
    CUDA_OK(cudaMemcpy(d_qkv, x->qkv, x->qkv_total * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_dout, x->dout, x->o_total * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_out, x->dout, x->o_total * 2, cudaMemcpyHostToDevice)); /* padding = poison */
    CUDA_OK(cudaMemset(d_lse, 0xff, rows * 4));
    for (int j = 0; j < B * T; j++) /* poison the rows themselves, keep the padding's NaN */
        poison(d_out + (size_t)j * x->o_stride, (size_t)H * D);

    const flash_bf16_t *q = (const flash_bf16_t *)d_qkv, *k = q + x->off_k, *v = q + 2 * x->off_k;
    flash_attn_forward(&dims, q, k, v, (flash_bf16_t *)d_out, d_lse, 0);
    CUDA_OK(cudaDeviceSynchronize());
    uint16_t *h_out = (uint16_t *)xmalloc(x->o_total * 2, "out");
    uint16_t *h_out2 = (uint16_t *)xmalloc(x->o_total * 2, "out2");
    float *h_lse = (float *)xmalloc(rows * 4, "lse");
    CUDA_OK(cudaMemcpy(h_out, d_out, x->o_total * 2, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h_lse, d_lse, rows * 4, cudaMemcpyDeviceToHost));
    strided_t out_view = {h_out, x->o_stride};
    float *g_out = to_float(c, out_view);
    const double e_out = rel_l2(g_out, x->out, n);
    double e_lse = 0;
    long lse_bad = 0;
    for (size_t i = 0; i < rows; i++) {
        if (isinf(x->lse[i])) {
            if (!(isinf(h_lse[i]) && h_lse[i] < 0)) lse_bad++;
        } else if (isnan(h_lse[i])) {
            lse_bad++;
        } else {
            e_lse = fmax(e_lse, fabs((double)h_lse[i] - x->lse[i]));
        }
    }
    CHECK(e_out <= TOL_REL_L2, "%s: out rel L2 %.3g > %.3g", label, e_out, TOL_REL_L2);
    CHECK(e_lse <= TOL_LSE_ABS && lse_bad == 0, "%s: lse max abs err %.3g, %ld bad -inf/NaN rows",
          label, e_lse, lse_bad);
    const long out_pad = padding_written(c, h_out, x->o_stride, 1, x->o_total);
    CHECK(out_pad == 0, "%s: %ld padding elements of out overwritten", label, out_pad);

    flash_attn_forward(&dims, q, k, v, (flash_bf16_t *)d_out, d_lse, 0);
    CUDA_OK(cudaMemcpy(h_out2, d_out, x->o_total * 2, cudaMemcpyDeviceToHost));
    CHECK(memcmp(h_out, h_out2, x->o_total * 2) == 0, "%s: forward not bit-identical across runs", label);

    double e_grad[2][3];
    uint16_t *h_dqkv[2] = {(uint16_t *)xmalloc(x->qkv_total * 2, "dqkv"),
                           (uint16_t *)xmalloc(x->qkv_total * 2, "dqkv2")};
    const float *ref_grad[3] = {x->dq, x->dk, x->dv};
    for (int det = 0; det < 2; det++) {
        for (int rep = 0; rep < 1 + det; rep++) { /* deterministic mode runs twice */
            poison(d_dqkv[rep], x->qkv_total);
            flash_bf16_t *gq = (flash_bf16_t *)d_dqkv[rep];
            flash_attn_backward(&dims, q, k, v, (flash_bf16_t *)d_out, d_lse, (flash_bf16_t *)d_dout,
                                gq, gq + x->off_k, gq + 2 * x->off_k, d_ws, det, 0);
        }
        CUDA_OK(cudaDeviceSynchronize());
        for (int rep = 0; rep < 1 + det; rep++)
            CUDA_OK(cudaMemcpy(h_dqkv[rep], d_dqkv[rep], x->qkv_total * 2, cudaMemcpyDeviceToHost));
        const char *names[3] = {"dq", "dk", "dv"};
        for (int j = 0; j < 3; j++) {
            strided_t view = {h_dqkv[0] + j * x->off_k, x->qkv_stride};
            float *f = to_float(c, view);
            e_grad[det][j] = rel_l2(f, ref_grad[j], n);
            CHECK(e_grad[det][j] <= TOL_REL_L2, "%s det=%d: %s rel L2 %.3g > %.3g", label, det,
                  names[j], e_grad[det][j], TOL_REL_L2);
            free(f);
        }
        if (det)
            CHECK(memcmp(h_dqkv[0], h_dqkv[1], x->qkv_total * 2) == 0,
                  "%s: deterministic backward not bit-identical across runs", label);
    }
    printf("%-55s out %.2e lse %.2e | dq dk dv atomic %.2e %.2e %.2e det %.2e %.2e %.2e\n", label,
           e_out, e_lse, e_grad[0][0], e_grad[0][1], e_grad[0][2], e_grad[1][0], e_grad[1][1],
           e_grad[1][2]);
    cudaFree(d_qkv);
    cudaFree(d_dqkv[0]);
    cudaFree(d_dqkv[1]);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_lse);
    cudaFree(d_ws);
    free(h_out);
    free(h_out2);
    free(h_lse);
    free(h_dqkv[0]);
    free(h_dqkv[1]);
    free(g_out);
}

static void run_case(const test_case_t *c, uint64_t seed) {
    const int B = c->B, T = c->T, H = c->H, D = c->D;
    const size_t n = (size_t)B * T * H * D, rows = (size_t)B * H * T;
    case_data_t x;
    x.qkv_stride = c->fused_qkv ? 3L * H * D : (long)H * D;
    x.o_stride = (long)H * D + (c->pad_out ? 8 : 0);
    x.qkv_total = (size_t)B * T * x.qkv_stride * (c->fused_qkv ? 1 : 3);
    x.o_total = (size_t)B * T * x.o_stride;
    x.off_k = c->fused_qkv ? (size_t)H * D : (size_t)B * T * x.qkv_stride;

    /* Inputs: q, k, v at offsets 0, off_k, 2*off_k; dout rows padded with poison. */
    x.qkv = (uint16_t *)xmalloc(x.qkv_total * 2, "qkv");
    x.dout = (uint16_t *)xmalloc(x.o_total * 2, "dout");
    fill_random(x.qkv, x.qkv_total, rng_key(seed, 100, 1, 0, 0), 1.0f);
    for (size_t i = 0; i < x.o_total; i++) x.dout[i] = BF16_NAN;
    const uint64_t dkey = rng_key(seed, 100, 2, 0, 0);
    for (size_t row = 0; row < (size_t)B * T; row++)
        for (int j = 0; j < H * D; j++)
            x.dout[row * x.o_stride + j] = float_to_bf16(rng_normal(dkey, row * H * D + j));

    /* Reference in double on the bf16 inputs. */
    strided_t q = {x.qkv, x.qkv_stride}, k = {x.qkv + x.off_k, x.qkv_stride},
              v = {x.qkv + 2 * x.off_k, x.qkv_stride}, dout = {x.dout, x.o_stride};
    float *fq = to_float(c, q), *fk = to_float(c, k), *fv = to_float(c, v), *fdo = to_float(c, dout);
    x.out = (float *)xmalloc(n * 4, "ref out");
    x.lse = (float *)xmalloc(rows * 4, "ref lse");
    x.dq = (float *)xmalloc(n * 4, "ref dq");
    x.dk = (float *)xmalloc(n * 4, "ref dk");
    x.dv = (float *)xmalloc(n * 4, "ref dv");
    attn_params_t ap = {ATTN_DENSE, 1, 0.0f, c->exclude_self};
    attn_plan_t plan;
    attn_plan_init(&plan, &ap, B, T, H, D);
    attn_plan_build(&plan, 0, fq, fk);
    attn_cpu_forward(&plan, fq, fk, fv, x.out, x.lse);
    attn_cpu_backward(&plan, fq, fk, fv, x.out, x.lse, fdo, x.dq, x.dk, x.dv);

    /* The portable mma.sync kernels, then the default path (the wgmma kernels on Hopper) if
     * it differs. */
    flash_attn_dims_t dims = {B, T, H, D, c->exclude_self, x.qkv_stride, x.qkv_stride,
                              x.qkv_stride, x.o_stride};
    flash_attn_force_portable(1);
    char portable_path[32];
    snprintf(portable_path, sizeof portable_path, "%s", flash_attn_path(&dims));
    check_path(c, &x, portable_path, NULL);
    flash_attn_force_portable(0);
    if (strcmp(flash_attn_path(&dims), portable_path) != 0) {
        int *counter; /* the same kernels' persistent grids */
        CUDA_OK(cudaMalloc(&counter, sizeof(int)));
        for (int tma = 1; tma >= 0; tma--) {
            flash_attn_force_tma(tma);
            check_path(c, &x, tma ? "sm90 wgmma, TMA" : "sm90 wgmma, cp.async", NULL);
            check_path(c, &x, tma ? "persistent, TMA" : "persistent, cp.async", counter);
        }
        flash_attn_force_tma(-1);
        cudaFree(counter);
    }

    attn_plan_free(&plan);
    free(x.qkv); free(x.dout); free(x.out); free(x.lse); free(x.dq); free(x.dk); free(x.dv);
    free(fq); free(fk); free(fv); free(fdo);
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0)
        fatal(EXIT_RUNTIME, "test_flash_attn: no CUDA device");
    static const test_case_t cases[] = {
        {2, 1, 3, 64, 0, 0, 0},     {1, 1, 2, 128, 1, 1, 1},   {2, 17, 3, 64, 1, 0, 1},
        {1, 100, 2, 128, 0, 1, 0},  {3, 129, 2, 64, 0, 1, 1},  {1, 129, 2, 128, 1, 0, 0},
        {1, 1000, 2, 64, 1, 0, 0},  {2, 1000, 1, 128, 0, 1, 1}, {4, 256, 12, 64, 0, 1, 0},
        {1, 2111, 2, 64, 0, 1, 1},  {1, 2111, 1, 128, 1, 0, 0},
        {1, 8200, 1, 64, 1, 1, 1}, /* past 4096: the Hopper forward's three-warpgroup instance */
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n_cases; i++) run_case(&cases[i], 1234 + (uint64_t)i);
    return test_summary();
}
