/* One transformer layer's attention on the GPU, whatever its mode: dense layers call the dense
 * flash kernels (attention/cuda/flash_attn.h); qk_sparse and hash_sparse layers build a GPU
 * plan (attention/plan_cuda.h) in the forward, keep it for the backward, and run the sparse
 * kernels (attention/cuda/sparse_attn.h) over its tile lists. The plan is keyed exactly as the
 * CPU model keys it, rng_key(seed, RNG_DOMAIN_ATTN, step, layer, micro), so both backends draw
 * the same keep masks, and the same buckets from the same q/k values.
 *
 * A plan's arrays are sized for one (B, T); a forward of another shape reallocates them (the
 * model keeps one set of layers for training shapes and one for sampling, so the training set
 * is not reallocated by every sampled token). */
#ifndef MODEL_CUDA_ATTN_LAYER_CUDA_H
#define MODEL_CUDA_ATTN_LAYER_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attention/cuda/sparse_attn.h"

typedef struct {
    attn_params_t p;
    int H, D;
    int B, T;                  /* shape the device plan is allocated for; 0 = none yet */
    attn_plan_cuda_t plan;     /* sparse modes only */
    attn_tiles_cuda_t tiles[3]; /* indexed by sparse_attn_pass_t */
    int tiles_built[3];        /* for the plan of the last forward */
    attn_plan_t host;          /* host copy for inspection (dense: dims only) */
    int host_valid;
} attn_layer_cuda_t;

/* No device memory is allocated until the first forward. */
void attn_layer_cuda_init(attn_layer_cuda_t *a, const attn_params_t *p, int H, int D);
void attn_layer_cuda_free(attn_layer_cuda_t *a);

/* Workspace the backward needs for dims (both the dense and the sparse kernels fit). */
size_t attn_layer_cuda_workspace_bytes(const flash_attn_dims_t *dims);

/* k_shares_q: hash buckets of the keys are the queries' (shared_qk), as the CPU model's
 * attn_plan_build(..., k = NULL). */
void attn_layer_cuda_forward(attn_layer_cuda_t *a, uint64_t key, const flash_attn_dims_t *dims,
                             const flash_bf16_t *q, const flash_bf16_t *k, int k_shares_q,
                             const flash_bf16_t *v, flash_bf16_t *out, float *lse,
                             cudaStream_t stream);

/* Backward of the last forward (same dims); overwrites dq, dk, dv. */
void attn_layer_cuda_backward(attn_layer_cuda_t *a, const flash_attn_dims_t *dims,
                              const flash_bf16_t *q, const flash_bf16_t *k, const flash_bf16_t *v,
                              const flash_bf16_t *out, const float *lse, const flash_bf16_t *dout,
                              flash_bf16_t *dq, flash_bf16_t *dk, flash_bf16_t *dv,
                              void *workspace, int deterministic, cudaStream_t stream);

/* Fraction of the causal (query tile, key tile) pairs that the last forward's tile lists
 * visit, over all (b, h): the work the sparse kernels do relative to dense causal attention
 * at the same tiling. -1 for dense layers or before any forward. Waits for the stream. */
double attn_layer_cuda_live_fraction(attn_layer_cuda_t *a, cudaStream_t stream);

/* The plan of the last forward copied to the host (waits for the stream). */
const attn_plan_t *attn_layer_cuda_host_plan(attn_layer_cuda_t *a, cudaStream_t stream);

#endif
