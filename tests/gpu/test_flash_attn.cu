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
 *   - both backward modes (atomic dQ and deterministic) against the reference.
 * Build: nvcc this file + attention/cuda/flash_attn.cu, link build/libcore.a -lcudart. */
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
#include "tests/test.h"

#define CUDA_OK(call)                                                                        \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess)                                                             \
            fatal(EXIT_RUNTIME, "%s:%d: %s: %s", __FILE__, __LINE__, #call,                  \
                  cudaGetErrorString(err_));                                                 \
    } while (0)

static const double TOL_REL_L2 = 1e-2; /* out, dq, dk, dv */
static const double TOL_LSE_ABS = 1e-2;
static const uint16_t BF16_NAN = 0x7fc1; /* poison: a quiet NaN no kernel computes */

typedef struct {
    int B, T, H, D, exclude_self;
    int fused_qkv; /* q, k, v (and dq, dk, dv) interleaved in [B][T][3][H][D] */
    int pad_out;   /* out / dout rows padded by 8 elements of poison */
} test_case_t;

static float bf16_to_float(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t float_to_bf16(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

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

static void run_case(const test_case_t *c, uint64_t seed) {
    const int B = c->B, T = c->T, H = c->H, D = c->D;
    const size_t n = (size_t)B * T * H * D, rows = (size_t)B * H * T;
    const long qkv_stride = c->fused_qkv ? 3L * H * D : (long)H * D;
    const long o_stride = (long)H * D + (c->pad_out ? 8 : 0);
    const size_t qkv_total = (size_t)B * T * qkv_stride * (c->fused_qkv ? 1 : 3);
    const size_t o_total = (size_t)B * T * o_stride;
    char label[128];
    snprintf(label, sizeof label, "B=%d T=%d H=%d D=%d excl=%d fused=%d pad=%d", B, T, H, D,
             c->exclude_self, c->fused_qkv, c->pad_out);

    /* Host inputs: q, k, v at offsets 0, H*D, 2*H*D of one row (fused) or in three tensors. */
    uint16_t *h_qkv = (uint16_t *)xmalloc(qkv_total * 2, "qkv");
    uint16_t *h_dout = (uint16_t *)xmalloc(o_total * 2, "dout");
    for (size_t i = 0; i < o_total; i++) h_dout[i] = BF16_NAN;
    fill_random(h_qkv, qkv_total, rng_key(seed, 100, 1, 0, 0), 1.0f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < H * D; j++)
                h_dout[((size_t)b * T + t) * o_stride + j] =
                    float_to_bf16(rng_normal(rng_key(seed, 100, 2, 0, 0), ((size_t)b * T + t) * H * D + j));
    const size_t off_k = c->fused_qkv ? (size_t)H * D : (size_t)B * T * qkv_stride;
    strided_t q = {h_qkv, qkv_stride}, k = {h_qkv + off_k, qkv_stride},
              v = {h_qkv + 2 * off_k, qkv_stride}, dout = {h_dout, o_stride};

    /* Reference in double on the bf16 inputs. */
    float *fq = to_float(c, q), *fk = to_float(c, k), *fv = to_float(c, v), *fdo = to_float(c, dout);
    float *ref_out = (float *)xmalloc(n * 4, "ref out"), *ref_lse = (float *)xmalloc(rows * 4, "ref lse");
    float *ref_dq = (float *)xmalloc(n * 4, "ref dq"), *ref_dk = (float *)xmalloc(n * 4, "ref dk"),
          *ref_dv = (float *)xmalloc(n * 4, "ref dv");
    attn_params_t ap = {ATTN_DENSE, 1, 0.0f, c->exclude_self};
    attn_plan_t plan;
    attn_plan_init(&plan, &ap, B, T, H, D);
    attn_plan_build(&plan, 0, fq, fk);
    attn_cpu_forward(&plan, fq, fk, fv, ref_out, ref_lse);
    attn_cpu_backward(&plan, fq, fk, fv, ref_out, ref_lse, fdo, ref_dq, ref_dk, ref_dv);

    /* Device buffers. */
    flash_attn_dims_t dims = {B, T, H, D, c->exclude_self, qkv_stride, qkv_stride, qkv_stride, o_stride};
    uint16_t *d_qkv, *d_dqkv, *d_out, *d_dout, *d_dqkv2;
    float *d_lse;
    void *d_ws;
    const size_t ws_bytes = flash_attn_backward_workspace_bytes(&dims, 0);
    CUDA_OK(cudaMalloc(&d_qkv, qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_dqkv, qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_dqkv2, qkv_total * 2));
    CUDA_OK(cudaMalloc(&d_out, o_total * 2));
    CUDA_OK(cudaMalloc(&d_dout, o_total * 2));
    CUDA_OK(cudaMalloc(&d_lse, rows * 4));
    CUDA_OK(cudaMalloc(&d_ws, ws_bytes));
    CUDA_OK(cudaMemcpy(d_qkv, h_qkv, qkv_total * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_dout, h_dout, o_total * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_out, h_dout, o_total * 2, cudaMemcpyHostToDevice)); /* padding = poison */
    CUDA_OK(cudaMemset(d_lse, 0xff, rows * 4));
    for (int j = 0; j < B * T; j++) /* poison the rows themselves, keep the padding's NaN */
        poison(d_out + (size_t)j * o_stride, (size_t)H * D);

    const flash_bf16_t *dq_ptr_in = (const flash_bf16_t *)d_qkv;
    const flash_bf16_t *dk_ptr_in = dq_ptr_in + off_k, *dv_ptr_in = dq_ptr_in + 2 * off_k;
    flash_attn_forward(&dims, dq_ptr_in, dk_ptr_in, dv_ptr_in, (flash_bf16_t *)d_out, d_lse, 0);
    CUDA_OK(cudaDeviceSynchronize());

    uint16_t *h_out = (uint16_t *)xmalloc(o_total * 2, "out");
    float *h_lse = (float *)xmalloc(rows * 4, "lse");
    CUDA_OK(cudaMemcpy(h_out, d_out, o_total * 2, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h_lse, d_lse, rows * 4, cudaMemcpyDeviceToHost));
    strided_t out_view = {h_out, o_stride};
    float *g_out = to_float(c, out_view);
    double e_out = rel_l2(g_out, ref_out, n);
    double e_lse = 0;
    long lse_bad = 0;
    for (size_t i = 0; i < rows; i++) {
        if (isinf(ref_lse[i])) {
            if (!(isinf(h_lse[i]) && h_lse[i] < 0)) lse_bad++;
        } else if (isnan(h_lse[i])) {
            lse_bad++;
        } else {
            e_lse = fmax(e_lse, fabs((double)h_lse[i] - ref_lse[i]));
        }
    }
    CHECK(e_out <= TOL_REL_L2, "%s: out rel L2 %.3g > %.3g", label, e_out, TOL_REL_L2);
    CHECK(e_lse <= TOL_LSE_ABS && lse_bad == 0, "%s: lse max abs err %.3g, %ld bad -inf/NaN rows",
          label, e_lse, lse_bad);
    long out_pad = padding_written(c, h_out, o_stride, 1, o_total);
    CHECK(out_pad == 0, "%s: %ld padding elements of out overwritten", label, out_pad);

    /* Forward again: bit-identical. */
    flash_attn_forward(&dims, dq_ptr_in, dk_ptr_in, dv_ptr_in, (flash_bf16_t *)d_out, d_lse, 0);
    uint16_t *h_out2 = (uint16_t *)xmalloc(o_total * 2, "out2");
    CUDA_OK(cudaMemcpy(h_out2, d_out, o_total * 2, cudaMemcpyDeviceToHost));
    CHECK(memcmp(h_out, h_out2, o_total * 2) == 0, "%s: forward not bit-identical across runs", label);

    double e_grad[2][3];
    uint16_t *h_dqkv = (uint16_t *)xmalloc(qkv_total * 2, "dqkv");
    uint16_t *h_dqkv2 = (uint16_t *)xmalloc(qkv_total * 2, "dqkv2");
    for (int det = 0; det < 2; det++) {
        uint16_t *bufs[2] = {d_dqkv, d_dqkv2};
        for (int rep = 0; rep < 1 + det; rep++) { /* deterministic mode runs twice */
            poison(bufs[rep], qkv_total);
            flash_bf16_t *g = (flash_bf16_t *)bufs[rep];
            flash_attn_backward(&dims, dq_ptr_in, dk_ptr_in, dv_ptr_in, (flash_bf16_t *)d_out,
                                d_lse, (flash_bf16_t *)d_dout, g, g + off_k, g + 2 * off_k, d_ws,
                                det, 0);
        }
        CUDA_OK(cudaDeviceSynchronize());
        CUDA_OK(cudaMemcpy(h_dqkv, d_dqkv, qkv_total * 2, cudaMemcpyDeviceToHost));
        strided_t gq = {h_dqkv, qkv_stride}, gk = {h_dqkv + off_k, qkv_stride},
                  gv = {h_dqkv + 2 * off_k, qkv_stride};
        float *fdq = to_float(c, gq), *fdk = to_float(c, gk), *fdv = to_float(c, gv);
        e_grad[det][0] = rel_l2(fdq, ref_dq, n);
        e_grad[det][1] = rel_l2(fdk, ref_dk, n);
        e_grad[det][2] = rel_l2(fdv, ref_dv, n);
        const char *names[3] = {"dq", "dk", "dv"};
        for (int j = 0; j < 3; j++)
            CHECK(e_grad[det][j] <= TOL_REL_L2, "%s det=%d: %s rel L2 %.3g > %.3g", label, det,
                  names[j], e_grad[det][j], TOL_REL_L2);
        if (det) {
            CUDA_OK(cudaMemcpy(h_dqkv2, d_dqkv2, qkv_total * 2, cudaMemcpyDeviceToHost));
            CHECK(memcmp(h_dqkv, h_dqkv2, qkv_total * 2) == 0,
                  "%s: deterministic backward not bit-identical across runs", label);
        }
        free(fdq);
        free(fdk);
        free(fdv);
    }
    printf("%-44s out %.2e lse %.2e | dq dk dv atomic %.2e %.2e %.2e det %.2e %.2e %.2e\n", label,
           e_out, e_lse, e_grad[0][0], e_grad[0][1], e_grad[0][2], e_grad[1][0], e_grad[1][1],
           e_grad[1][2]);

    cudaFree(d_qkv);
    cudaFree(d_dqkv);
    cudaFree(d_dqkv2);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_lse);
    cudaFree(d_ws);
    attn_plan_free(&plan);
    free(h_qkv); free(h_dout); free(h_out); free(h_out2); free(h_lse); free(h_dqkv); free(h_dqkv2);
    free(fq); free(fk); free(fv); free(fdo); free(g_out);
    free(ref_out); free(ref_lse); free(ref_dq); free(ref_dk); free(ref_dv);
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
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n_cases; i++) run_case(&cases[i], 1234 + (uint64_t)i);
    return test_summary();
}
