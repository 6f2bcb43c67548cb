/* The GPT ops of the CUDA backend: twins of model/cpu/ops_cpu.h, named <op>_cuda, with the
 * same semantics (that header defines them) and these differences, all for speed or memory:
 *  - activations are bf16; arithmetic inside every kernel is fp32 (row statistics too);
 *  - parameters a kernel reads directly (LayerNorm weight/bias) are the fp32 masters, parameter
 *    gradients are fp32 and accumulated (+=) like the CPU twins;
 *  - gradients of activations (dinp) are bf16 and also accumulated (+=) unless stated;
 *  - every reduction runs in a fixed order (no floating-point atomics): each op is
 *    bit-reproducible run to run on the same GPU;
 *  - all calls are asynchronous on `stream`; pointers are device pointers unless stated.
 * Row lengths (C, 4C, Vp) must be multiples of 8 so rows can be read 16 bytes at a time. */
#ifndef MODEL_CUDA_OPS_CUDA_H
#define MODEL_CUDA_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "model/cuda/cuda_common.cuh"

extern "C" {
#include "model/optim.h"
}

/* ---- encoder ------------------------------------------------------------------------------ */
/* out[b][t] = wte[tokens[b][t]] + wpe[t]. */
void encoder_forward_cuda(bf16 *out, const int32_t *tokens, const bf16 *wte, const bf16 *wpe,
                          int B, int T, int C, cudaStream_t stream);

/* Positions grouped by token, so that the scatter-add of encoder_backward_cuda can run one
 * thread per (token, channel) in a fixed order instead of racing with atomics. Built on the
 * host from the host copy of the tokens (a counting sort, O(N + V)), then uploaded. */
typedef struct {
    int capacity_n;      /* max positions */
    int n_unique;        /* distinct tokens in the last build */
    int32_t *host;       /* pinned staging: order[N], token[N], start[N + 1] */
    int32_t *order;      /* device: positions sorted by token (stable) */
    int32_t *token;      /* device: the distinct tokens, ascending [n_unique] */
    int32_t *start;      /* device: group u is order[start[u] .. start[u+1]) */
    int32_t *count_host; /* host scratch [vocab] for the counting sort */
    int vocab;
} encoder_groups_t;

void encoder_groups_init(encoder_groups_t *g, int max_n, int vocab);
void encoder_groups_free(encoder_groups_t *g);
/* tokens: HOST array [N], each in [0, vocab). The upload is ordered on `stream`; the pinned
 * staging is reused, so the caller must not rebuild before earlier uploads completed. */
void encoder_groups_build(encoder_groups_t *g, const int32_t *tokens, int N, cudaStream_t stream);

/* dwte[tokens[b][t]] += dout[b][t]; dwpe[t] += dout[b][t] (fp32 gradients). */
void encoder_backward_cuda(float *dwte, float *dwpe, const bf16 *dout, const encoder_groups_t *g,
                           int B, int T, int C, cudaStream_t stream);

/* ---- LayerNorm and residual -------------------------------------------------------------- */
/* C <= LN_MAX_C. weight, bias (bias may be NULL) are fp32. */
#define LN_MAX_C 2048
void layernorm_forward_cuda(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                            const float *weight, const float *bias, int N, int C,
                            cudaStream_t stream);
/* Fused residual_forward + layernorm_forward: resid = a + b (rounded to bf16), then out is the
 * LayerNorm of that rounded resid (so the backward sees exactly what the forward normalised). */
void residual_layernorm_forward_cuda(bf16 *resid, bf16 *out, float *mean, float *rstd,
                                     const bf16 *a, const bf16 *b, const float *weight,
                                     const float *bias, int N, int C, cudaStream_t stream);
/* out = a + b. */
void residual_forward_cuda(bf16 *out, const bf16 *a, const bf16 *b, size_t n, cudaStream_t stream);

/* dinp += ..., dweight += ..., dbias += ... (dbias may be NULL). scratch: device floats, at
 * least layernorm_backward_scratch_floats(N, C); it holds per-block partial sums of the
 * parameter gradients, added up in block order by a second kernel (deterministic). */
size_t layernorm_backward_scratch_floats(int N, int C);
void layernorm_backward_cuda(bf16 *dinp, float *dweight, float *dbias, const bf16 *dout,
                             const bf16 *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C, float *scratch,
                             cudaStream_t stream);

/* ---- GELU, bias ------------------------------------------------------------------------- */
void gelu_forward_cuda(bf16 *out, const bf16 *inp, size_t n, cudaStream_t stream);

/* dbias[OC] += column sums of dout[N][OC]. scratch: bias_backward_scratch_floats(N, OC). */
size_t bias_backward_scratch_floats(int N, int OC);
void bias_backward_cuda(float *dbias, const bf16 *dout, int N, int OC, float *scratch,
                        cudaStream_t stream);

/* ---- shared-QK key normalisation ---------------------------------------------------------- */
/* For each row n and head h (vectors of D at q + n*q_stride + h*D):
 * k = q / sqrt(|q|^2 + QK_NORM_EPS^2). Strides let q be read from the fused [Q | V] buffer. */
void qk_normalise_forward_cuda(bf16 *k, long k_stride, const bf16 *q, long q_stride, int N,
                               int H, int D, cudaStream_t stream);
/* dq += (dk - k (k . dk)) / sqrt(|q|^2 + eps^2). */
void qk_normalise_backward_cuda(bf16 *dq, long dq_stride, const bf16 *dk, long dk_stride,
                                const bf16 *q, long q_stride, const bf16 *k, long k_stride, int N,
                                int H, int D, cudaStream_t stream);

/* ---- fused classifier --------------------------------------------------------------------- */
/* crossentropy_forward + crossentropy_backward in one pass over each row, IN PLACE: reads the
 * logits rows [N][Vp], writes losses[N] and lse[N] (lse may be NULL), then overwrites each row
 * with dlogits = dloss * (softmax - onehot(target)) over the first V entries and 0 over the
 * padded ones. targets in [0, V). */
void crossentropy_fused_cuda(float *losses, float *lse, bf16 *logits_dlogits,
                             const int32_t *targets, float dloss, int N, int V, int Vp,
                             cudaStream_t stream);

/* Mean of x[0..n) accumulated in double in a fixed order, written to *out (device). */
void mean_cuda(double *out, const float *x, int n, cudaStream_t stream);

/* out[v] = sum_c x[c] * wte[v][c] for v < Vp, fp32 (one logits row, for sampling). */
void logits_row_cuda(float *out, const bf16 *x, const bf16 *wte, int Vp, int C,
                     cudaStream_t stream);

/* ---- optimizer and bookkeeping ------------------------------------------------------------ */
/* adamw_step of model/optim.h on n fp32 parameters, which also refreshes their bf16 copy. */
void adamw_cuda(float *params, bf16 *params_bf16, const float *grads, float *m, float *v,
                size_t n, int decay, const adamw_hparams_t *h, long t, float grad_scale,
                cudaStream_t stream);

/* sqrt(sum g^2): fixed grid, per-thread doubles, partials summed in block order. scratch:
 * GRAD_NORM_BLOCKS doubles. Blocks until the result is on the host. */
#define GRAD_NORM_BLOCKS 1024
double grad_norm_cuda(const float *grads, size_t n, double *scratch, cudaStream_t stream);

void float_to_bf16_cuda(bf16 *dst, const float *src, size_t n, cudaStream_t stream);
void bf16_to_float_cuda(float *dst, const bf16 *src, size_t n, cudaStream_t stream);
/* x *= s (bf16, in place). */
void scale_bf16_cuda(bf16 *x, float s, size_t n, cudaStream_t stream);
/* y += s * x (fp32). */
void axpy_cuda(float *y, float s, const float *x, size_t n, cudaStream_t stream);

#endif
