/* The attention plan on the GPU: keep masks / hash buckets, rows sorted by group, and per-tile
 * work lists, in the layout of attention/plan_tiles.h. Every array equals, element for element,
 * what the CPU reference (attn_plan_build + attn_row_order_build + attn_tile_lists_build)
 * computes from the same inputs:
 *   - keep masks are drawn on the GPU with the integer formula of attention/attention.h;
 *   - hash rotations are drawn on the GPU with the host's formula and operation order (equal
 *     to the host's floats but for a last-bit difference of CUDA's double log/cos against the C
 *     library's landing on a float rounding boundary, ~1e-8 per value); buckets are computed on
 *     the GPU in fp32, and wherever the top two projections are closer than the fp32 error
 *     bound, recomputed in double in the CPU's summation order, so they equal the CPU's buckets
 *     for inputs exactly representable in bf16 (the GPU inputs are bf16); with hash_center the
 *     rows are first centred in fp32 with the CPU's running double sums, in its order
 *     (plan_hash.cuh), and hashed from those floats;
 *   - rows are grouped by a stable counting sort (n_groups <= 64), tile lists are exact.
 * Stages run asynchronously on `stream`; none waits for the host.
 *
 * q and k are bf16 [B][T][H][D] with row stride q_stride / k_stride (elements; e.g. 3*H*D for a
 * fused QKV projection): element (b, t, h, d) at x[(b*T + t)*stride + h*D + d]. Hashing needs
 * D = 64 or 128, 16-byte aligned pointers and strides that are multiples of 8. */
#ifndef ATTENTION_PLAN_CUDA_H
#define ATTENTION_PLAN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "attention/attention.h"
#include "attention/plan_tiles.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    attn_params_t p;
    int B, T, H, D;
    /* keys share the queries' rows: hash_sparse built with k == NULL, and dense. Then
     * bucket_k == bucket_q and rows' key arrays are the query arrays. */
    int shared_keys;
    /* Device arrays [B][H][T]. */
    uint8_t *keep_q, *keep_k;     /* qk_sparse, else NULL */
    int32_t *bucket_q, *bucket_k; /* hash_sparse, else NULL */
    float *rotations;             /* [H][D][nb/2], hash_sparse with nb > 1, else NULL */
    float *centred;               /* [B][T][H][D] rows minus their running mean (hash_center) */
    double *centre_starts;        /* [B][T/256 rounded up][H][D] hash_center chunk starts (attention.h) */
    attn_row_order_t rows;        /* device pointers */

    /* Internal. */
    int32_t *own_bucket_k, *own_order_k, *own_pos_k, *own_group_k, *own_group_start_k;
    int32_t *histogram;           /* [2][BH][n_chunks][n_groups] */
    int n_chunks;
} attn_plan_cuda_t;

/* Allocates the device arrays for these sizes (parameters checked as attn_plan_init does). */
void attn_plan_cuda_init(attn_plan_cuda_t *plan, const attn_params_t *p, int B, int T, int H, int D);
void attn_plan_cuda_free(attn_plan_cuda_t *plan);

/* All stages below, in order: the plan for one attention call under `key`
 * (attention/attention.h: rng_key(seed, RNG_DOMAIN_ATTN, step, layer, micro_step)). k == NULL:
 * keys share the queries (shared_qk). dense and qk_sparse read neither q nor k. */
void attn_plan_cuda_build(attn_plan_cuda_t *plan, uint64_t key, const void *q, long q_stride,
                          const void *k, long k_stride, cudaStream_t stream);

/* Stage 1 (hash_sparse, nb > 1): draws the rotations (device array `rotations`). */
void attn_plan_cuda_draw_rotations(attn_plan_cuda_t *plan, uint64_t key, cudaStream_t stream);

/* Stage 2: keep masks (qk_sparse) or buckets from the drawn rotations (hash_sparse); sets
 * shared_keys. */
void attn_plan_cuda_assign(attn_plan_cuda_t *plan, uint64_t key, const void *q, long q_stride,
                           const void *k, long k_stride, cudaStream_t stream);

/* Stage 3: rows sorted by the groups currently in keep_* / bucket_* (with shared_keys, keys
 * alias the queries). Callable on its own after writing groups into those arrays, e.g. a CPU
 * plan's; groups must lie in [0, n_groups). */
void attn_plan_cuda_sort(attn_plan_cuda_t *plan, cudaStream_t stream);

/* Tile lists of one tile shape (forward and backward kernels may each want their own). */
typedef struct {
    attn_tile_lists_t lists; /* device pointers; slots past a list's count are unspecified */
    int32_t *work_counter;   /* device int: how a persistent kernel over these tiles hands them out */
} attn_tiles_cuda_t;

void attn_tiles_cuda_init(attn_tiles_cuda_t *tiles, const attn_plan_cuda_t *plan, int block_m,
                          int block_n);
void attn_tiles_cuda_free(attn_tiles_cuda_t *tiles);

/* Fills tiles->lists from the plan's sorted rows (after attn_plan_cuda_sort on this stream). */
void attn_tiles_cuda_build(attn_tiles_cuda_t *tiles, const attn_plan_cuda_t *plan,
                           cudaStream_t stream);

/* Live (query tile, key tile) pairs of the last build: waits for the stream. */
int64_t attn_tiles_cuda_live_count(const attn_tiles_cuda_t *tiles, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
