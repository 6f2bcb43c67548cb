/* Linear layers on cuBLASLt: twins of matmul_forward / matmul_backward of model/cpu/ops_cpu.h
 * (row-major, weights [OC][IC], y = x W^T + b) with bf16 operands, fp32 accumulation, and the
 * GELU of the MLP fused into the matmul epilogues.
 *
 * The plan (algorithm) of every distinct shape is chosen once, by cuBLASLt's heuristic or by
 * timing its candidates (matmul_ctx_set_tuning), and cached; split-K plans that reduce with
 * atomics ("in place") are excluded, so a given plan always runs the same code and gives the
 * same bits. IC and OC must be multiples of 8 and every
 * pointer 16-byte aligned. */
#ifndef MODEL_CUDA_MATMUL_CUDA_H
#define MODEL_CUDA_MATMUL_CUDA_H

#include "model/cuda/cuda_common.cuh"

typedef struct matmul_ctx matmul_ctx_t;

matmul_ctx_t *matmul_ctx_create(void);
void matmul_ctx_destroy(matmul_ctx_t *ctx);

/* Tuning (matmul_cuda.cu): on, plans that overwrite their output time cuBLASLt's candidates
 * and keep the fastest; off, every plan takes the heuristic's first. Created on unless the
 * environment says GPT_MATMUL_TUNE=0; on here still obeys it. Changing it drops the plans made
 * so far. The deterministic mode turns it off: which candidate wins may differ between runs. */
void matmul_ctx_set_tuning(matmul_ctx_t *ctx, int on);
int matmul_ctx_tuning(const matmul_ctx_t *ctx);

/* out[N][OC] = inp[N][IC] weight[OC][IC]^T + bias[OC] (bias may be NULL).
 * With gelu_preact != NULL the MLP's activation is fused: gelu_preact[N][OC] receives
 * x W^T + b and out receives its GELU (tanh form, as gelu_forward). */
void matmul_forward_cuda(matmul_ctx_t *ctx, bf16 *out, const bf16 *inp, const bf16 *weight,
                         const bf16 *bias, int N, int IC, int OC, bf16 *gelu_preact,
                         cudaStream_t stream);

/* dinp[N][IC] (+)= dout weight: added when dinp_accumulate, else overwritten (dinp may be NULL).
 * With gelu_preact != NULL (not combined with dinp_accumulate) the GELU backward of the MLP is
 * fused: inp was gelu(gelu_preact), and dinp = (dout weight) * gelu'(gelu_preact) is the
 * gradient with respect to the pre-activation.
 * dweight[OC][IC] += dout^T inp (fp32, may be NULL). dbias is not handled here: see
 * bias_backward_cuda (a deterministic column reduction). */
void matmul_backward_cuda(matmul_ctx_t *ctx, bf16 *dinp, int dinp_accumulate, float *dweight,
                          const bf16 *dout, const bf16 *inp, const bf16 *weight, int N, int IC,
                          int OC, const bf16 *gelu_preact, cudaStream_t stream);

#endif
