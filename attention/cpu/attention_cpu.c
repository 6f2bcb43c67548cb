/* Exact reference attention for every mode: O(T^2) loops over original positions, with the
 * mask taken from attn_allowed (the one definition of the semantics). Tensors are fp32; sums
 * are accumulated in double so that this oracle is more accurate than anything tested against
 * it. Work is split over (batch, head) pairs, which never share an output element, so the
 * result does not depend on the number of threads. */
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "runtime/error.h"

/* Offset of row (b, t, h) in a [B][T][H][D] tensor. */
static inline size_t row_offset(const attn_plan_t *plan, int b, int t, int h) {
    return (((size_t)b * plan->T + t) * plan->H + h) * plan->D;
}

static inline double dot(const float *x, const float *y, int D) {
    double s = 0.0;
    for (int d = 0; d < D; d++) s += (double)x[d] * (double)y[d];
    return s;
}

/* Keys query i may attend to, in increasing order; returns how many. */
static int allowed_keys(const attn_plan_t *plan, int b, int h, int i, int *keys) {
    int n = 0;
    for (int j = 0; j < plan->T; j++)
        if (attn_allowed(plan, b, h, i, j)) keys[n++] = j;
    return n;
}

void attn_cpu_forward(const attn_plan_t *plan, const float *q, const float *k, const float *v,
                      float *out, float *lse) {
    const int B = plan->B, T = plan->T, H = plan->H, D = plan->D;
    const double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        int *keys = xmalloc((size_t)T * sizeof(int), "attention forward key list");
        double *score = xmalloc((size_t)T * sizeof(double), "attention forward scores");
        double *acc = xmalloc((size_t)D * sizeof(double), "attention forward accumulator");
        for (int i = 0; i < T; i++) {
            const float *qi = q + row_offset(plan, b, i, h);
            float *oi = out + row_offset(plan, b, i, h);
            float *lse_i = lse + (size_t)bh * T + i;
            int n = allowed_keys(plan, b, h, i, keys);
            if (n == 0) { /* empty softmax: defined as a zero output, never 0/0 */
                memset(oi, 0, (size_t)D * sizeof(float));
                *lse_i = -INFINITY;
                continue;
            }
            double max_score = -INFINITY;
            for (int n_i = 0; n_i < n; n_i++) {
                score[n_i] = scale * dot(qi, k + row_offset(plan, b, keys[n_i], h), D);
                if (score[n_i] > max_score) max_score = score[n_i];
            }
            double denom = 0.0;
            memset(acc, 0, (size_t)D * sizeof(double));
            for (int n_i = 0; n_i < n; n_i++) {
                double p = exp(score[n_i] - max_score); /* <= 1: no overflow */
                const float *vj = v + row_offset(plan, b, keys[n_i], h);
                denom += p;
                for (int d = 0; d < D; d++) acc[d] += p * vj[d];
            }
            for (int d = 0; d < D; d++) oi[d] = (float)(acc[d] / denom);
            *lse_i = (float)(max_score + log(denom));
        }
        free(keys);
        free(score);
        free(acc);
    }
}

/* Gradients of softmax attention with P recomputed from the saved lse:
 *   P_ij = exp(s_ij - lse_i), dP_ij = dout_i . v_j, D_i = dout_i . out_i,
 *   dS_ij = P_ij (dP_ij - D_i), dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i,
 *   dv_j = sum_i P_ij dout_i.
 * D_i replaces sum_j P_ij dP_ij (equal when out came from the forward) as flash kernels do. */
void attn_cpu_backward(const attn_plan_t *plan, const float *q, const float *k, const float *v,
                       const float *out, const float *lse, const float *dout,
                       float *dq, float *dk, float *dv) {
    const int B = plan->B, T = plan->T, H = plan->H, D = plan->D;
    const double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        int *keys = xmalloc((size_t)T * sizeof(int), "attention backward key list");
        double *dq_acc = xmalloc((size_t)D * sizeof(double), "attention backward dq");
        /* dk and dv of this (b, h) collect contributions from every query, so they are
         * accumulated over the whole head before being written. */
        double *dk_acc = xcalloc((size_t)T * D, sizeof(double), "attention backward dk");
        double *dv_acc = xcalloc((size_t)T * D, sizeof(double), "attention backward dv");
        for (int i = 0; i < T; i++) {
            const float *qi = q + row_offset(plan, b, i, h);
            const float *oi = out + row_offset(plan, b, i, h);
            const float *doi = dout + row_offset(plan, b, i, h);
            const double lse_i = lse[(size_t)bh * T + i];
            memset(dq_acc, 0, (size_t)D * sizeof(double));
            /* A row without allowed keys (lse = -inf) has a constant zero output: no gradient.
             * Testing lse as well as the key list keeps exp(s + inf) out of reach. */
            int n = lse_i == -INFINITY ? 0 : allowed_keys(plan, b, h, i, keys);
            const double delta_i = dot(doi, oi, D);
            for (int n_i = 0; n_i < n; n_i++) {
                const int j = keys[n_i];
                const float *kj = k + row_offset(plan, b, j, h);
                const float *vj = v + row_offset(plan, b, j, h);
                const double p = exp(scale * dot(qi, kj, D) - lse_i);
                const double dp = dot(doi, vj, D);
                const double ds = p * (dp - delta_i) * scale;
                for (int d = 0; d < D; d++) {
                    dv_acc[(size_t)j * D + d] += p * doi[d];
                    dk_acc[(size_t)j * D + d] += ds * qi[d];
                    dq_acc[d] += ds * kj[d];
                }
            }
            float *dqi = dq + row_offset(plan, b, i, h);
            for (int d = 0; d < D; d++) dqi[d] = (float)dq_acc[d];
        }
        for (int j = 0; j < T; j++) {
            float *dkj = dk + row_offset(plan, b, j, h);
            float *dvj = dv + row_offset(plan, b, j, h);
            for (int d = 0; d < D; d++) {
                dkj[d] = (float)dk_acc[(size_t)j * D + d];
                dvj[d] = (float)dv_acc[(size_t)j * D + d];
            }
        }
        free(keys);
        free(dq_acc);
        free(dk_acc);
        free(dv_acc);
    }
}
