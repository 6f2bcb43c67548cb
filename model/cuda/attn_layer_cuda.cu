/* A layer's attention on the GPU: dense flash kernels, or plan + sparse flash kernels
 * (attn_layer_cuda.h). */
#include "model/cuda/attn_layer_cuda.h"

#include <string.h>

#include "model/cuda/cuda_common.cuh"

extern "C" {
#include "runtime/error.h"
}

static int is_sparse(const attn_layer_cuda_t *a) { return a->p.mode != ATTN_DENSE; }

static void release_device_plan(attn_layer_cuda_t *a) {
    if (a->B == 0 || !is_sparse(a)) return;
    for (int s = 0; s < 3; s++)
        if (a->tiles_built[s] >= 0) attn_tiles_cuda_free(&a->tiles[s]);
    attn_plan_cuda_free(&a->plan);
}

void attn_layer_cuda_init(attn_layer_cuda_t *a, const attn_params_t *p, int H, int D) {
    memset(a, 0, sizeof *a);
    a->p = *p;
    a->H = H;
    a->D = D;
    for (int s = 0; s < 3; s++) a->tiles_built[s] = -1; /* -1: not allocated */
}

void attn_layer_cuda_free(attn_layer_cuda_t *a) {
    release_device_plan(a);
    if (a->host.B) attn_plan_free(&a->host);
    memset(a, 0, sizeof *a);
}

size_t attn_layer_cuda_workspace_bytes(const flash_attn_dims_t *dims) {
    /* The atomic-dQ variants need the most (an fp32 dQ accumulator); the sparse kernels take
     * head dim 64 only, so they are asked only then. */
    size_t bytes = flash_attn_backward_workspace_bytes(dims, 0);
    if (dims->D == 64) {
        const size_t sparse = sparse_attn_backward_workspace_bytes(dims, 0);
        if (sparse > bytes) bytes = sparse;
    }
    return bytes;
}

/* (Re)allocates the device plan for B x T; tile lists are allocated when first needed. */
static void ensure_shape(attn_layer_cuda_t *a, int B, int T) {
    if (a->B == B && a->T == T) return;
    release_device_plan(a);
    for (int s = 0; s < 3; s++) a->tiles_built[s] = -1;
    if (is_sparse(a)) attn_plan_cuda_init(&a->plan, &a->p, B, T, a->H, a->D);
    a->B = B;
    a->T = T;
}

/* Tile lists of `pass` for the current plan, built once per forward. */
static const attn_tiles_cuda_t *tiles_for(attn_layer_cuda_t *a, sparse_attn_pass_t pass,
                                          cudaStream_t stream) {
    if (a->tiles_built[pass] < 0) {
        int bm = 0, bn = 0;
        sparse_attn_tile_shape(pass, a->p.mode, a->D, &bm, &bn);
        attn_tiles_cuda_init(&a->tiles[pass], &a->plan, bm, bn);
        a->tiles_built[pass] = 0;
    }
    if (!a->tiles_built[pass]) {
        attn_tiles_cuda_build(&a->tiles[pass], &a->plan, stream);
        a->tiles_built[pass] = 1;
    }
    return &a->tiles[pass];
}

void attn_layer_cuda_forward(attn_layer_cuda_t *a, uint64_t key, const flash_attn_dims_t *dims,
                             const flash_bf16_t *q, const flash_bf16_t *k, int k_shares_q,
                             const flash_bf16_t *v, flash_bf16_t *out, float *lse,
                             cudaStream_t stream) {
    ensure_shape(a, dims->B, dims->T);
    a->host_valid = 0;
    if (!is_sparse(a)) {
        flash_attn_forward(dims, q, k, v, out, lse, stream);
        return;
    }
    attn_plan_cuda_build(&a->plan, key, q, dims->q_stride, k_shares_q ? NULL : k, dims->k_stride,
                         stream);
    for (int s = 0; s < 3; s++)
        if (a->tiles_built[s] > 0) a->tiles_built[s] = 0; /* stale: from the previous plan */
    sparse_attn_forward(&a->plan, tiles_for(a, SPARSE_ATTN_PASS_FORWARD, stream), dims, q, k, v,
                        out, lse, stream);
}

void attn_layer_cuda_backward(attn_layer_cuda_t *a, const flash_attn_dims_t *dims,
                              const flash_bf16_t *q, const flash_bf16_t *k, const flash_bf16_t *v,
                              const flash_bf16_t *out, const float *lse, const flash_bf16_t *dout,
                              flash_bf16_t *dq, flash_bf16_t *dk, flash_bf16_t *dv,
                              void *workspace, int deterministic, cudaStream_t stream) {
    if (a->B != dims->B || a->T != dims->T)
        fatal(EXIT_RUNTIME, "attention backward: %d x %d, but the last forward of this layer was %d x %d",
              dims->B, dims->T, a->B, a->T);
    if (!is_sparse(a)) {
        flash_attn_backward(dims, q, k, v, out, lse, dout, dq, dk, dv, workspace, deterministic,
                            stream);
        return;
    }
    const attn_tiles_cuda_t *kv = tiles_for(a, SPARSE_ATTN_PASS_DKDV, stream);
    const attn_tiles_cuda_t *dq_tiles = sparse_attn_backward_split(a->D, deterministic)
                                            ? tiles_for(a, SPARSE_ATTN_PASS_DQ, stream)
                                            : NULL;
    sparse_attn_backward(&a->plan, kv, dq_tiles, dims, q, k, v, out, lse, dout, dq, dk, dv,
                         workspace, stream);
}

double attn_layer_cuda_live_fraction(attn_layer_cuda_t *a, cudaStream_t stream) {
    if (!is_sparse(a) || a->tiles_built[SPARSE_ATTN_PASS_FORWARD] <= 0) return -1.0;
    const attn_tiles_cuda_t *t = &a->tiles[SPARSE_ATTN_PASS_FORWARD];
    const attn_tile_lists_t *l = &t->lists;
    const int64_t causal = attn_causal_tile_pairs(a->T, l->block_m, l->block_n);
    return (double)attn_tiles_cuda_live_count(t, stream) / ((double)causal * l->BH);
}

template <typename Tp>
static void download(Tp *dst, const Tp *src, size_t count, cudaStream_t stream) {
    if (dst && src)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(Tp), cudaMemcpyDeviceToHost, stream));
}

const attn_plan_t *attn_layer_cuda_host_plan(attn_layer_cuda_t *a, cudaStream_t stream) {
    if (a->B == 0) fatal(EXIT_RUNTIME, "attention plan requested before any forward");
    if (a->host_valid) return &a->host;
    if (a->host.B != a->B || a->host.T != a->T) { /* host.B == 0: none allocated yet */
        if (a->host.B) attn_plan_free(&a->host);
        attn_plan_init(&a->host, &a->p, a->B, a->T, a->H, a->D);
    }
    if (is_sparse(a)) {
        const size_t rows = (size_t)a->B * a->H * a->T;
        download(a->host.keep_q, a->plan.keep_q, rows, stream);
        download(a->host.keep_k, a->plan.keep_k, rows, stream);
        download(a->host.bucket_q, a->plan.bucket_q, rows, stream);
        download(a->host.bucket_k, a->plan.bucket_k, rows, stream);
        if (a->p.mode == ATTN_HASH_SPARSE && a->p.n_buckets > 1)
            download(a->host.rotations, a->plan.rotations,
                     (size_t)a->H * a->D * (a->p.n_buckets / 2), stream);
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    a->host_valid = 1;
    return &a->host;
}
