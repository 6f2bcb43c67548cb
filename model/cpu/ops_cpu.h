/* The GPT ops of the fp32 CPU reference, one forward and one backward per op. The CUDA backend
 * has twins with the same names and the same semantics; these define them.
 *
 * Shapes: N = B*T rows; activations are row-major [N][C]; weights are [out][in] (y = x W^T).
 * Conventions:
 *  - every *_backward ACCUMULATES (+=) into its gradient outputs, inputs and parameters alike
 *    (the residual stream and tied embeddings receive several contributions);
 *  - exceptions, because they start a gradient rather than add to one: crossentropy_backward
 *    writes dlogits, and the attention glue (attn_split_qkv / attn_merge_dqkv) copies;
 *  - optional tensors (biases) are NULL when absent, and so are their gradients.
 */
#ifndef MODEL_CPU_OPS_CPU_H
#define MODEL_CPU_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

#define LAYERNORM_EPS 1e-5f
/* qk_normalise: k = q / sqrt(|q|^2 + QK_NORM_EPS^2). The eps keeps a zero row finite (k = 0,
 * gradient q-independent) and is far below fp32 resolution for any real row (|q| >> 1e-6). */
#define QK_NORM_EPS 1e-6f

/* out[b][t] = wte[tokens[b][t]] + wpe[t] */
void encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B,
                     int T, int C);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B,
                      int T, int C);

/* out = (x - mean) * rstd * weight + bias over each row of C; saves mean and rstd [N] for the
 * backward. rstd = 1 / sqrt(biased variance + LAYERNORM_EPS). bias may be NULL. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean, const float *rstd,
                        int N, int C);

/* out[N][OC] = inp[N][IC] weight[OC][IC]^T + bias[OC] (bias may be NULL). out is written. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int IC, int OC);
/* dinp += dout weight; dweight += dout^T inp; dbias += column sums of dout. Each of dinp,
 * dweight, dbias may be NULL (not needed). */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int IC, int OC);
/* The matmuls' micro-kernel: by default the best this CPU supports ("avx512", "avx2",
 * "portable"). Selecting another (tests, benchmarks) returns -1 if unknown or unsupported.
 * Not thread-safe: select before any matmul runs. */
const char *matmul_kernel_name(void);
int matmul_select_kernel(const char *name);

/* GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* out = a + b. Its backward is the identity on both inputs, so it has no function. */
void residual_forward(float *out, const float *a, const float *b, size_t n);

/* Shared-QK keys: for each of `rows` vectors of D (rows = N*H), k = q / sqrt(|q|^2 + eps^2). */
void qk_normalise_forward(float *k, const float *q, int rows, int D);
/* dq += (dk - k (k . dk)) / sqrt(|q|^2 + eps^2), using the saved forward k. */
void qk_normalise_backward(float *dq, const float *dk, const float *q, const float *k, int rows,
                           int D);

/* Cross-entropy over the softmax of the first V of the Vp logits of each row: logits of the
 * padded rows (V <= v < Vp) are not part of the softmax. Writes losses[N] = lse - logit[target]
 * and lse[N] (log-sum-exp over the V real logits, saved for the backward). */
void crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets,
                          int N, int V, int Vp);
/* Writes dlogits[N][Vp] = dloss * (softmax - onehot(target)) for v < V and 0 for padded v. */
void crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                           const int32_t *targets, float dloss, int N, int V, int Vp);

/* Attention glue. The projection output qkv is [N][P] with P = 3C laid out [Q | K | V], or
 * P = 2C laid out [Q | V] with shared_qk (then k is not touched: it is computed by
 * qk_normalise_forward). Each of Q, K, V is [H][D] per row, i.e. q, k, v are the [B][T][H][D]
 * tensors attention/attention.h takes, and the attention output [N][C] feeds attn.proj as is. */
void attn_split_qkv(float *q, float *k, float *v, const float *qkv, int N, int C, int shared_qk);
/* Inverse copy: dqkv[N][P] from dq, dk, dv (dk ignored with shared_qk: fold it into dq with
 * qk_normalise_backward first). */
void attn_merge_dqkv(float *dqkv, const float *dq, const float *dk, const float *dv, int N, int C,
                     int shared_qk);

#endif
