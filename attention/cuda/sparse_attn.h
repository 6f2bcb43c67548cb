/* Sparse causal flash attention on the GPU (qk_sparse, hash_sparse; dense works too): the
 * dense API's flash kernels run over the work rows and exact tile lists of a GPU attention plan
 * (attention/plan_cuda.h) through flash::PlanPolicy: on Hopper the wgmma kernels
 * (flash_fwd_sm90.cuh, flash_bwd_sm90.cuh), elsewhere (or after sparse_attn_force_portable(1))
 * the portable mma.sync ones (flash_fwd.cuh, flash_bwd.cuh).
 *
 * Semantics are attention/attention.h's for the plan's mode: rows are read through the plan's
 * permutation and results land on their ORIGINAL rows. A query with no allowed key, and every
 * dropped qk query, outputs zeros with lse = -inf and gets dq = 0; a key no query sees gets
 * dk = dv = 0. Every row of out, lse, dq, dk, dv is written (model buffers are reused).
 *
 * Tensors, strides and lse are as in flash_attn.h (bf16 [B][T][H][D] with row strides, fp32 lse
 * [B][H][T]); dims must match the plan (B, T, H, D, exclude_self). Head dim 64 only for now.
 * Tile lists must be built (attn_tiles_cuda_init / _build) with the shape the kernel of each
 * pass uses: sparse_attn_tile_shape gives it. Calls are asynchronous on `stream`, after the
 * plan's and tiles' builds on the same stream. */
#ifndef ATTENTION_CUDA_SPARSE_ATTN_H
#define ATTENTION_CUDA_SPARSE_ATTN_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" { /* attention.h declares C functions but has no linkage block of its own */
#endif
#include "attention/attention.h"
#ifdef __cplusplus
}
#endif
#include "attention/cuda/flash_attn.h"
#include "attention/plan_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SPARSE_ATTN_PASS_FORWARD = 0, /* forward: query tiles x key tiles */
    SPARSE_ATTN_PASS_DKDV = 1,    /* backward dK/dV (and atomic dQ): key tiles x query tiles */
    SPARSE_ATTN_PASS_DQ = 2       /* deterministic backward's dQ pass */
} sparse_attn_pass_t;

/* (block_m, block_n) the tile lists of `pass` must be built with, for a plan of `mode` and head
 * dim D, on the path in force at the time of the call (the dQ pass's shape differs between the
 * two paths; on Hopper the dK/dV pass's block_m is FLASH_BWD_QUERY_TILE's, flash_attn.h, and
 * qk_sparse's forward block_n is SPARSE_QK_FWD_KEYS's, sparse_attn.cu). */
void sparse_attn_tile_shape(sparse_attn_pass_t pass, attn_mode_t mode, int D, int *block_m, int *block_n);

/* Tests and benchmarks: on != 0 runs the portable kernels even on Hopper. Tile lists built
 * under one setting must be rebuilt for the other (the calls check the shapes). */
void sparse_attn_force_portable(int on);
/* "sm90 wgmma" or "mma.sync": the kernels a call with head dim D runs now. */
const char *sparse_attn_path(int D);
/* Grid of the Hopper kernels: 0 one CTA per tile; ctas < 0 (the default) persistent CTAs, as
 * many as are resident at once, each drawing its next tile from a counter; n > 0 persistent
 * with at most n CTAs (tests: several tiles a CTA even on small shapes). Why persistent:
 * sparse_attn.cu. The backward with FLASH_BWD_QUERY_TILE=128 has no persistent kernel: it runs
 * a CTA per tile under the default, and a persistent grid set here for it is a fatal error. */
void sparse_attn_set_persistent(int ctas);

/* Whether sparse_attn_backward should be given dQ tile lists (the split dQ pass, no atomics) for
 * head dim D on the path in force: only when deterministic; otherwise dQ is added in fp32 by
 * the dK/dV pass, the faster on both paths (H100 measurements in attention/cuda/NOTES.md). */
int sparse_attn_backward_split(int D, int deterministic);

/* Keys a tile of qk_sparse's Hopper forward: 128 (default) or 64, from the environment variable
 * SPARSE_QK_FWD_KEYS; a fatal error (exit 2) for any other value, so call this at start-up. */
int sparse_attn_qk_fwd_keys(void);

/* out [B][T][H][D] (o_stride), lse [B][H][T]. fwd_tiles: SPARSE_ATTN_PASS_FORWARD shape. */
void sparse_attn_forward(const attn_plan_cuda_t *plan, const attn_tiles_cuda_t *fwd_tiles,
                         const flash_attn_dims_t *dims, const flash_bf16_t *q,
                         const flash_bf16_t *k, const flash_bf16_t *v, flash_bf16_t *out,
                         float *lse, cudaStream_t stream);

/* Device workspace sparse_attn_backward needs (delta; the Hopper kernels' per-row statistics;
 * the fp32 dQ accumulator unless deterministic). */
size_t sparse_attn_backward_workspace_bytes(const flash_attn_dims_t *dims, int deterministic);

/* Overwrites dq, dk, dv. dkdv_tiles: SPARSE_ATTN_PASS_DKDV shape. dq_tiles == NULL: dQ is
 * added in fp32 by the dK/dV pass (atomics, or on Hopper bulk reductions of dS K blocks; fast,
 * not bit-reproducible); otherwise
 * (SPARSE_ATTN_PASS_DQ shape) dQ comes from its own pass, bit-identical across runs, and the
 * workspace must have been sized with deterministic != 0. */
void sparse_attn_backward(const attn_plan_cuda_t *plan, const attn_tiles_cuda_t *dkdv_tiles,
                          const attn_tiles_cuda_t *dq_tiles, const flash_attn_dims_t *dims,
                          const flash_bf16_t *q, const flash_bf16_t *k, const flash_bf16_t *v,
                          const flash_bf16_t *out, const float *lse, const flash_bf16_t *dout,
                          flash_bf16_t *dq, flash_bf16_t *dk, flash_bf16_t *dv, void *workspace,
                          cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
