/* Dense causal flash attention on the GPU: host-callable C API (C and C++).
 *
 * Semantics are those of attention/attention.h for mode ATTN_DENSE: query t sees keys
 * t' <= t (t' < t with exclude_self), scores scaled by 1/sqrt(D), a row with no allowed key
 * (only t = 0 with exclude_self) outputs zeros with lse = -inf and gets zero gradients.
 *
 * Tensors are bf16, element (b, t, h, d) of x at x[(b*T + t) * x_stride + h*D + d]:
 * stride H*D is a contiguous [B][T][H][D] tensor, stride 3*H*D with pointers qkv, qkv + H*D,
 * qkv + 2*H*D reads q, k, v straight out of a fused [B][T][3][H][D] projection. Gradients
 * use their input's stride (dq: q_stride, dk: k_stride, dv: v_stride), dout uses o_stride.
 * lse is fp32 [B][H][T] (natural log). D is 64 or 128; T >= 1 is any length; strides must
 * be multiples of 8 and pointers 16-byte aligned. Calls are asynchronous on `stream`. */
#ifndef ATTENTION_CUDA_FLASH_ATTN_H
#define ATTENTION_CUDA_FLASH_ATTN_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
#include <cuda_bf16.h>
typedef __nv_bfloat16 flash_bf16_t;
extern "C" {
#else
typedef struct flash_bf16_opaque flash_bf16_t; /* C code only passes pointers */
#endif

typedef struct {
    int B, T, H, D;
    int exclude_self;
    long q_stride, k_stride, v_stride, o_stride; /* in elements */
    /* Optional (NULL: one CTA per tile): one int of device memory from which the Hopper kernels'
     * persistent grids draw their tiles, zeroed by each call on its stream; calls that may run
     * at the same time need counters of their own. Used where persistent grids were measured
     * faster (short T: flash_attn.cu, use_persistent). */
    int *work_counter;
} flash_attn_dims_t;

/* out [B][T][H][D] (o_stride), lse [B][H][T]. */
void flash_attn_forward(const flash_attn_dims_t *dims, const flash_bf16_t *q,
                        const flash_bf16_t *k, const flash_bf16_t *v, flash_bf16_t *out,
                        float *lse, cudaStream_t stream);

/* Bytes of device workspace flash_attn_backward needs (delta, the Hopper kernels' per-row
 * statistics, and the fp32 dQ accumulator unless deterministic). */
size_t flash_attn_backward_workspace_bytes(const flash_attn_dims_t *dims, int deterministic);

/* Overwrites dq, dk, dv from out and lse of the forward pass and dout. deterministic != 0
 * computes dQ in its own pass without atomics, bit-identical across runs. (The Hopper path
 * for head dim 64 always does so: it is also its fastest backward.) */
void flash_attn_backward(const flash_attn_dims_t *dims, const flash_bf16_t *q,
                         const flash_bf16_t *k, const flash_bf16_t *v, const flash_bf16_t *out,
                         const float *lse, const flash_bf16_t *dout, flash_bf16_t *dq,
                         flash_bf16_t *dk, flash_bf16_t *dv, void *workspace,
                         int deterministic, cudaStream_t stream);

/* Head dim 64 on Hopper (sm_90, binary built for sm_90a) runs wgmma kernels; other head dims
 * and GPUs run the portable mma.sync kernels. For tests and benchmarks: on != 0 forces the
 * portable kernels everywhere; flash_attn_path names the path a call with `dims` takes. */
void flash_attn_force_portable(int on);
const char *flash_attn_path(const flash_attn_dims_t *dims);

/* How the Hopper path's non-deterministic backward (dense and sparse) schedules its two
 * consumer warpgroups: "lockstep", "deferred", "pingpong" (attention/cuda/NOTES.md, v7) or
 * "alternate" (v9; 64-query tiles only), from the environment variable FLASH_BWD_SCHEDULE
 * (unset: alternate with the 64-query tile, deferred with the 128 one). A value it does not
 * know, or alternate with FLASH_BWD_QUERY_TILE=128, is a fatal error (exit 2) naming the
 * variable, so call this at start-up. */
const char *flash_attn_bwd_schedule(void);

/* The Hopper backward's dK/dV query tile, dense and sparse (sparse_attn.h: the dK/dV tile lists
 * follow it): 64 or 128 queries against 128 keys, from FLASH_BWD_QUERY_TILE (unset: 64); a
 * fatal error (exit 2) for any other value, so call this at start-up too. */
int flash_attn_bwd_query_tile(void);

/* Heads whose tiles the Hopper kernels (dense and sparse) walk together, from the environment
 * variable FLASH_HEAD_GROUP: "auto" when unset (resident CTAs / 16, flash_launch.cuh), "all"
 * (no groups), else the number it gives; a fatal error (exit 2) for any other value, so call
 * this at start-up too. */
const char *flash_attn_head_group(void);

/* Whether the Hopper dense forward loads its Q, K and V tiles by TMA (1) or by cp.async (0),
 * from the environment variable FLASH_FWD_TMA (unset: 1); the same for the backward's (fused
 * and deterministic) Q, K, V and dO tiles from FLASH_BWD_TMA. A fatal error (exit 2) for any
 * other value. */
int flash_attn_fwd_tma(void);
int flash_attn_bwd_tma(void);
/* Tests: 1 or 0 overrides both variables, -1 returns to them. */
void flash_attn_force_tma(int tma);

#ifdef __cplusplus
}
#endif

#endif
