/* The element-wise and row-wise GPT ops of the CPU reference (matmuls are in matmul_cpu.c).
 * Row-wise statistics (LayerNorm moments, log-sum-exp) are accumulated in double: this code
 * is the oracle, so it should be the more accurate side of any comparison. Parameter-gradient
 * reductions over rows run serially in row order, so results do not depend on thread count. */
#include <math.h>
#include <string.h>

#include "model/cpu/ops_cpu.h"

/* Below this many elements a loop runs on one thread: waking the team costs more than the
 * work (and, on a busy machine, a descheduled team member stalls everyone at the barrier). */
#define OMP_MIN_WORK ((size_t)1 << 15)

void encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B,
                     int T, int C) {
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= OMP_MIN_WORK)
    for (int bt = 0; bt < B * T; bt++) {
        const float *we = wte + (size_t)tokens[bt] * C, *pe = wpe + (size_t)(bt % T) * C;
        float *o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B,
                      int T, int C) {
    /* Scatter-add: two positions may hold the same token, so this stays serial (B*T*C adds). */
    for (int bt = 0; bt < B * T; bt++) {
        const float *d = dout + (size_t)bt * C;
        float *dwe = dwte + (size_t)tokens[bt] * C, *dpe = dwpe + (size_t)(bt % T) * C;
        for (int c = 0; c < C; c++) {
            dwe[c] += d[c];
            dpe[c] += d[c];
        }
    }
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[c];
        const double m = s / C;
        double v = 0.0;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        const float r = (float)(1.0 / sqrt(v / C + (double)LAYERNORM_EPS));
        const float mf = (float)m;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            const float xhat = (x[c] - mf) * r;
            o[c] = xhat * weight[c] + (bias ? bias[c] : 0.0f);
        }
        mean[n] = mf;
        rstd[n] = r;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean, const float *rstd,
                        int N, int C) {
    /* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), with g = dout * weight. */
#pragma omp parallel for schedule(static) if ((size_t)N * C >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        const float m = mean[n], r = rstd[n];
        double g_mean = 0.0, gx_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const float g = dy[c] * weight[c];
            g_mean += g;
            gx_mean += (double)g * ((x[c] - m) * r);
        }
        g_mean /= C;
        gx_mean /= C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            const float xhat = (x[c] - m) * r;
            const float g = dy[c] * weight[c];
            dx[c] += r * (g - (float)g_mean - xhat * (float)gx_mean);
        }
    }
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        const float m = mean[n], r = rstd[n];
        for (int c = 0; c < C; c++) {
            dweight[c] += dy[c] * ((x[c] - m) * r);
            if (dbias) dbias[c] += dy[c];
        }
    }
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_CUBIC 0.044715f

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x)));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
        const float th = tanhf(u);
        const float sech2 = 1.0f - th * th;
        const float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] += dout[i] * (0.5f * (1.0f + th) + 0.5f * x * sech2 * du);
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void qk_normalise_forward(float *k, const float *q, int rows, int D) {
#pragma omp parallel for schedule(static) if ((size_t)rows * D >= OMP_MIN_WORK)
    for (int r = 0; r < rows; r++) {
        const float *qr = q + (size_t)r * D;
        double s = (double)QK_NORM_EPS * QK_NORM_EPS;
        for (int d = 0; d < D; d++) s += (double)qr[d] * qr[d];
        const float inv = (float)(1.0 / sqrt(s));
        float *kr = k + (size_t)r * D;
        for (int d = 0; d < D; d++) kr[d] = qr[d] * inv;
    }
}

void qk_normalise_backward(float *dq, const float *dk, const float *q, const float *k, int rows,
                           int D) {
    /* k = q / s with s = sqrt(|q|^2 + eps^2): dk/dq = (I - k k^T) / s. */
#pragma omp parallel for schedule(static) if ((size_t)rows * D >= OMP_MIN_WORK)
    for (int r = 0; r < rows; r++) {
        const float *qr = q + (size_t)r * D, *kr = k + (size_t)r * D, *dkr = dk + (size_t)r * D;
        double s = (double)QK_NORM_EPS * QK_NORM_EPS, kdk = 0.0;
        for (int d = 0; d < D; d++) {
            s += (double)qr[d] * qr[d];
            kdk += (double)kr[d] * dkr[d];
        }
        const float inv = (float)(1.0 / sqrt(s)), proj = (float)kdk;
        float *dqr = dq + (size_t)r * D;
        for (int d = 0; d < D; d++) dqr[d] += (dkr[d] - kr[d] * proj) * inv;
    }
}

/* exp(x) for the softmax (x <= 0), in plain fp32 arithmetic so that it vectorises and every
 * ISA variant computes the same bits: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of
 * ln2), exp(r) by its degree-7 Taylor polynomial, 2^n through the exponent field. Max relative
 * error 1.1e-7 (< 2 ulp) on [-87, 0]; below -87 the result (< 1.7e-38) is flushed to 0.
 * libm's scalar expf made the two softmax passes a sixth of a training step. */
static inline float softmax_exp(float x) {
    const float xc = x >= -87.0f ? x : -87.0f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float n = (xc * 1.44269504088896341f + shifter) - shifter;
    const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x >= -87.0f ? p * scale : 0.0f;
}

/* Row helpers, compiled per ISA (identical results: fixed association, no FMA contraction). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static float row_max(const float *l,
                                                                                  int V) {
    float max = l[0];
#pragma omp simd reduction(max : max)
    for (int v = 1; v < V; v++) max = l[v] > max ? l[v] : max;
    return max;
}

/* sum_v exp(l[v] - max) in double, with 16 fixed partial sums (lane j takes v = j mod 16). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static double
row_sum_exp(const float *l, float max, int V) {
    enum { BLOCK = 256, LANES = 16 };
    float e[BLOCK];
    double part[LANES] = {0};
    for (int v0 = 0; v0 < V; v0 += BLOCK) {
        const int n = V - v0 < BLOCK ? V - v0 : BLOCK;
#pragma omp simd
        for (int v = 0; v < n; v++) e[v] = softmax_exp(l[v0 + v] - max);
        for (int v = n; v < BLOCK; v++) e[v] = 0.0f;
        for (int b = 0; b < BLOCK; b += LANES)
#pragma omp simd
            for (int j = 0; j < LANES; j++) part[j] += (double)e[b + j];
    }
    double s = 0.0;
    for (int j = 0; j < LANES; j++) s += part[j];
    return s;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
row_scaled_softmax(float *d, const float *l, float lse, float scale, int V) {
#pragma omp simd
    for (int v = 0; v < V; v++) d[v] = scale * softmax_exp(l[v] - lse);
}

void crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets,
                          int N, int V, int Vp) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * Vp;
        const float max = row_max(l, V);
        const double row_lse = (double)max + log(row_sum_exp(l, max, V));
        lse[n] = (float)row_lse;
        losses[n] = (float)(row_lse - (double)l[targets[n]]);
    }
}

void crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                           const int32_t *targets, float dloss, int N, int V, int Vp) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * Vp;
        /* lse >= max (rounded up or exact), so every exponent is <= 0 */
        row_scaled_softmax(d, logits + (size_t)n * Vp, lse[n], dloss, V);
        for (int v = V; v < Vp; v++) d[v] = 0.0f; /* padded logits are outside the softmax */
        d[targets[n]] -= dloss;
    }
}

void attn_split_qkv(float *q, float *k, float *v, const float *qkv, int N, int C, int shared_qk) {
    const int P = shared_qk ? 2 * C : 3 * C;
    const size_t row_bytes = (size_t)C * sizeof(float);
#pragma omp parallel for schedule(static) if ((size_t)N * C >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *src = qkv + (size_t)n * P;
        const size_t o = (size_t)n * C;
        memcpy(q + o, src, row_bytes);
        if (shared_qk) {
            memcpy(v + o, src + C, row_bytes);
        } else {
            memcpy(k + o, src + C, row_bytes);
            memcpy(v + o, src + 2 * C, row_bytes);
        }
    }
}

void attn_merge_dqkv(float *dqkv, const float *dq, const float *dk, const float *dv, int N, int C,
                     int shared_qk) {
    const int P = shared_qk ? 2 * C : 3 * C;
    const size_t row_bytes = (size_t)C * sizeof(float);
#pragma omp parallel for schedule(static) if ((size_t)N * C >= OMP_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float *dst = dqkv + (size_t)n * P;
        const size_t o = (size_t)n * C;
        memcpy(dst, dq + o, row_bytes);
        if (shared_qk) {
            memcpy(dst + C, dv + o, row_bytes);
        } else {
            memcpy(dst + C, dk + o, row_bytes);
            memcpy(dst + 2 * C, dv + o, row_bytes);
        }
    }
}
