/* libscfa: the sparse causal flash attention kernels behind a small C ABI, for callers outside
 * this program (bench/scfa.py loads it with ctypes and wraps it as a torch.autograd.Function).
 * Build: `make libscfa` -> build/libscfa.so (attention/cuda/NOTES.md, "libscfa").
 *
 * Semantics are attention/attention.h's: per (batch, head), query i sees key j iff
 *   dense        j <= i
 *   qk_sparse    keep_q[i] && keep_k[j] && j <= i       (masks drawn from the RNG key)
 *   hash_sparse  bucket_q[i] == bucket_k[j] && j <= i   (LSH buckets of q and k)
 * with j < i instead of j <= i under exclude_self. Scores are scaled by 1/sqrt(D). A query with
 * no allowed key (and every dropped qk query) outputs zeros with lse = -inf and gets dq = 0.
 *
 * Tensors live on the GPU: q, k, v, out, dout, dq, dk, dv are bf16 [B][T][H][D] with a row
 * stride (elements between (b, t) and (b, t+1); H*D when contiguous): element (b, t, h, d) at
 * x[(b*T + t)*stride + h*D + d]. Pointers must be 16-byte aligned and strides multiples of 8,
 * at least H*D. Gradients use their input's stride (dq: q_stride, ...), dout uses o_stride.
 * lse is fp32 [B][H][T], contiguous. The sparse modes need D = 64; dense takes 64 or 128.
 *
 * A context owns one plan (buckets or keep masks, sorted rows, tile lists) for fixed sizes.
 * The usual sequence per attention call:
 *   scfa_build_plan(ctx, key, q, ...)        draws the plan for this call's RNG key
 *   scfa_forward(ctx, q, k, v, out, lse)     uses the last plan
 *   scfa_backward(ctx, ..., dq, dk, dv)      uses the last plan: build it again (same key, same
 *                                            q and k) if another call rebuilt it meanwhile
 * Every call is asynchronous on `stream` (a cudaStream_t, NULL = the legacy default stream),
 * except where noted; calls on one context must be ordered (same stream, or synchronised by
 * the caller), and one context must not be used by two threads at once. The context belongs to
 * the CUDA device that was current when it was created; calls check that it still is.
 *
 * Errors. Functions returning int return 0 on success, or a nonzero SCFA_ERR_* code with a
 * message in scfa_last_error() (per thread) and no work queued: every argument (sizes, mode
 * parameters, pointers, alignment, strides, device, call order) is checked here. A context
 * stays usable after an error. Failures
 * inside the CUDA runtime (out of device memory, a failed launch, an earlier asynchronous
 * fault) are not recoverable: they print "error (libscfa): ..." to stderr and EXIT THE PROCESS
 * (status 1), as everywhere in this program. */
#ifndef ATTENTION_API_H
#define ATTENTION_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SCFA_OK = 0,
    SCFA_ERR_ARGUMENT = 1, /* bad size, mode parameter, pointer, alignment or stride */
    SCFA_ERR_STATE = 2,    /* call out of order (no plan yet) or another device current */
    SCFA_ERR_CUDA = 3,     /* a CUDA call of the API itself failed harmlessly: no kernel image
                              for this GPU, workspace allocation out of memory, ... */
};

/* Modes: the values of attention.h's attn_mode_t. */
enum { SCFA_DENSE = 0, SCFA_QK_SPARSE = 1, SCFA_HASH_SPARSE = 2 };

typedef struct scfa_ctx scfa_ctx_t;

/* Version of this ABI: callers compare it with the one they were written for. */
#define SCFA_ABI_VERSION 1
int scfa_abi_version(void);

/* Message of this thread's last failed call ("" if none failed yet). */
const char *scfa_last_error(void);

/* The RNG key of one attention call, as the trainer derives it (attention.h):
 * rng_key(seed, RNG_DOMAIN_ATTN, step, layer, micro_step). Any 64-bit value is a valid key. */
uint64_t scfa_rng_key(uint64_t seed, uint64_t step, uint64_t layer, uint64_t micro_step);

/* Creates a context for sizes B, T, H, D and a mode: n_buckets (hash_sparse: 1, or even in
 * [2, 64]), drop_prob (qk_sparse: in [0, 1]), exclude_self (strict causality), shared_qk
 * (hash_sparse: keys take the queries' buckets and scfa_build_plan reads q only, as in the
 * paper's H-LM where K = Q/||Q||; ignored by the other modes). Parameters a mode does not use
 * are ignored. Allocates the plan's device memory (sized by B*H*T and the tile counts). */
int scfa_create(scfa_ctx_t **ctx, int B, int T, int H, int D, int mode, int n_buckets,
                float drop_prob, int exclude_self, int shared_qk);
/* Frees the context and its device memory (waits for nothing: the caller must make sure no
 * queued work of this context is still running). NULL is allowed. */
void scfa_free(scfa_ctx_t *ctx);

/* Draws the plan for RNG key `key`. hash_sparse hashes q (and k, unless shared_qk: then k must
 * be NULL); qk_sparse and dense read neither (NULL allowed). Also builds the forward tile
 * lists; the backward's tile lists are built by the first scfa_backward after this call.
 * Hash rotations are drawn on the host: this waits for the previous plan's upload, not for
 * the stream. */
int scfa_build_plan(scfa_ctx_t *ctx, uint64_t key, const void *q, long q_stride, const void *k,
                    long k_stride, void *stream);

/* out and lse from q, k, v under the last plan. */
int scfa_forward(scfa_ctx_t *ctx, const void *q, long q_stride, const void *k, long k_stride,
                 const void *v, long v_stride, void *out, long o_stride, float *lse,
                 void *stream);

/* Overwrites dq, dk, dv (strides of q, k, v) from the forward's out and lse and dout
 * (o_stride). deterministic != 0: dQ in its own pass, bit-identical across runs. On Hopper dQ
 * always has its own pass (the faster choice there); elsewhere, without deterministic, dQ is
 * accumulated with fp32 atomics. Device workspace is allocated by the first
 * call (synchronising the device once). */
int scfa_backward(scfa_ctx_t *ctx, const void *q, long q_stride, const void *k, long k_stride,
                  const void *v, long v_stride, const void *out, long o_stride, const float *lse,
                  const void *dout, void *dq, void *dk, void *dv, int deterministic,
                  void *stream);

/* Tiles of the last plan's forward pass (SYNCHRONISES `stream`): *live = (query tile, key
 * tile) pairs holding at least one allowed pair, *causal = pairs the dense causal kernel visits
 * for these sizes and tile shape, *total = all pairs; *block_m, *block_n = the tile shape.
 * Any output pointer may be NULL. live / causal is the fraction of dense work that remains. */
int scfa_tile_counts(scfa_ctx_t *ctx, void *stream, int64_t *live, int64_t *causal,
                     int64_t *total, int *block_m, int *block_n);

/* Copies the last plan's random draws into caller device buffers, [B][H][T] each, for
 * references and other kernels (e.g. FlexAttention masks): hash_sparse writes bucket_q and
 * bucket_k (int32; with shared_qk both get the queries' buckets), qk_sparse writes keep_q and
 * keep_k (uint8, 1 = kept). Buffers of the other mode must be NULL, those of this mode not.
 * Dense has nothing to export. */
int scfa_export_plan(scfa_ctx_t *ctx, int32_t *bucket_q, int32_t *bucket_k, uint8_t *keep_q,
                     uint8_t *keep_k, void *stream);

#ifdef __cplusplus
}
#endif

#endif
