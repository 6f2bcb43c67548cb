/* libscfa's C ABI (attention/api.h) over the GPU plan (attention/plan_cuda.h), the sparse flash
 * kernels (sparse_attn.h) and the dense ones (flash_attn.h). Everything the kernels would
 * reject with fatal() is checked here first and returned as an error code with a message, so
 * that a caller's mistake does not end its process; only CUDA runtime failures still do. */
#include "attention/api.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "attention/cuda/flash_attn.h"
#include "attention/cuda/sparse_attn.h"
extern "C" {
#include "attention/attention.h"
#include "attention/plan_cuda.h"
#include "runtime/error.h"
#include "runtime/rng.h"
}

/* Marks a live context, so that a stray pointer is caught (freed ones are not: that is UB). */
static const uint32_t SCFA_MAGIC = 0x53434641u; /* "SCFA" */

struct scfa_ctx {
    uint32_t magic;
    int device;
    int B, T, H, D;
    attn_params_t p;
    int shared_qk;
    /* Sparse modes only: the plan and the tile lists of each pass. */
    attn_plan_cuda_t plan;
    attn_tiles_cuda_t fwd_tiles, dkdv_tiles, dq_tiles;
    int dq_tiles_allocated;
    /* State of the last plan: built at all; backward lists built from it. */
    int plan_built, dkdv_tiles_built, dq_tiles_built;
    void *workspace;
    size_t workspace_bytes;
    int *work_counter; /* dense: the persistent grids' (flash_attn_dims_t) */
};

static thread_local char last_error[512];

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(last_error, sizeof last_error, "libscfa: ");
    vsnprintf(last_error + n, sizeof last_error - n, fmt, ap);
    va_end(ap);
    return code;
}

/* A CUDA call made here that failed without corrupting the context (e.g. cudaMalloc out of
 * memory): clear the runtime's last error, so that the next kernel launch check does not
 * mistake it for its own, and report it. */
static int fail_cuda(const char *what, cudaError_t err) {
    cudaGetLastError();
    return fail(SCFA_ERR_CUDA, "%s failed: %s", what, cudaGetErrorString(err));
}

static bool is_sparse(const scfa_ctx_t *c) { return c->p.mode != ATTN_DENSE; }

static int check_ctx(const scfa_ctx_t *c, const char *fn) {
    if (c == NULL) return fail(SCFA_ERR_ARGUMENT, "%s: context is NULL", fn);
    if (c->magic != SCFA_MAGIC)
        return fail(SCFA_ERR_ARGUMENT, "%s: not a context made by scfa_create", fn);
    int dev = -1;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return fail_cuda("cudaGetDevice", err);
    if (dev != c->device)
        return fail(SCFA_ERR_STATE, "%s: the context belongs to CUDA device %d but device %d is "
                    "current", fn, c->device, dev);
    return SCFA_OK;
}

/* A bf16 [B][T][H][D] tensor as the kernels read it. */
static int check_tensor(const scfa_ctx_t *c, const char *fn, const char *name, const void *x,
                        long stride) {
    if (x == NULL) return fail(SCFA_ERR_ARGUMENT, "%s: %s is NULL", fn, name);
    if ((uintptr_t)x % 16 != 0)
        return fail(SCFA_ERR_ARGUMENT, "%s: %s is not 16-byte aligned", fn, name);
    if (stride < (long)c->H * c->D || stride % 8 != 0)
        return fail(SCFA_ERR_ARGUMENT, "%s: stride of %s is %ld: it must be a multiple of 8 and "
                    "at least H*D = %d", fn, name, stride, c->H * c->D);
    return SCFA_OK;
}

static int check_lse(const char *fn, const float *lse) {
    if (lse == NULL || (uintptr_t)lse % 16 != 0)
        return fail(SCFA_ERR_ARGUMENT, "%s: lse is NULL or not 16-byte aligned", fn);
    return SCFA_OK;
}

static int check_plan_built(const scfa_ctx_t *c, const char *fn) {
    if (is_sparse(c) && !c->plan_built)
        return fail(SCFA_ERR_STATE, "%s: no plan yet: call scfa_build_plan first", fn);
    return SCFA_OK;
}

static flash_attn_dims_t make_dims(const scfa_ctx_t *c, long q_stride, long k_stride,
                                   long v_stride, long o_stride) {
    flash_attn_dims_t d = {c->B, c->T, c->H, c->D, c->p.exclude_self,
                           q_stride, k_stride, v_stride, o_stride, c->work_counter};
    return d;
}

/* An empty kernel: whether the device can run this binary's code (it is built for one
 * architecture, sm_90a by default) is asked through its attributes. */
__global__ static void scfa_probe_kernel() {}

extern "C" int scfa_abi_version(void) { return SCFA_ABI_VERSION; }

extern "C" const char *scfa_last_error(void) { return last_error; }

extern "C" uint64_t scfa_rng_key(uint64_t seed, uint64_t step, uint64_t layer,
                                 uint64_t micro_step) {
    return rng_key(seed, RNG_DOMAIN_ATTN, step, layer, micro_step);
}

static int check_create_args(int B, int T, int H, int D, int mode, int n_buckets,
                             float drop_prob) {
    const char *fn = "scfa_create";
    if (B < 1 || T < 1 || H < 1)
        return fail(SCFA_ERR_ARGUMENT, "%s: B = %d, T = %d, H = %d must all be >= 1", fn, B, T, H);
    switch (mode) {
    case SCFA_DENSE:
        if (D != 64 && D != 128)
            return fail(SCFA_ERR_ARGUMENT, "%s: dense attention supports head dim 64 or 128, got %d", fn, D);
        break;
    case SCFA_QK_SPARSE:
        if (!(drop_prob >= 0.0f && drop_prob <= 1.0f))
            return fail(SCFA_ERR_ARGUMENT, "%s: drop_prob must be in [0, 1], got %g", fn, (double)drop_prob);
        break;
    case SCFA_HASH_SPARSE:
        if (!(n_buckets == 1 ||
              (n_buckets >= 2 && n_buckets <= ATTN_MAX_BUCKETS && n_buckets % 2 == 0)))
            return fail(SCFA_ERR_ARGUMENT, "%s: n_buckets must be 1 or even in [2, %d], got %d", fn,
                        ATTN_MAX_BUCKETS, n_buckets);
        break;
    default:
        return fail(SCFA_ERR_ARGUMENT, "%s: unknown mode %d (0 dense, 1 qk_sparse, 2 hash_sparse)", fn, mode);
    }
    if (mode != SCFA_DENSE && D != 64)
        return fail(SCFA_ERR_ARGUMENT, "%s: the sparse kernels support head dim 64 only, got %d", fn, D);
    /* Limits of the launch grids (flash_attn.cu, sparse_attn.cu) and of the plan's indices. */
    if ((long)B * H > 0x7fffffffL || T > 65535L * 64)
        return fail(SCFA_ERR_ARGUMENT, "%s: B*H = %ld or T = %d too large for the launch grid", fn,
                    (long)B * H, T);
    if ((long)B * T * H > INT32_MAX)
        return fail(SCFA_ERR_ARGUMENT, "%s: B*T*H = %ld rows is too large", fn, (long)B * T * H);
    if (mode != SCFA_DENSE)
        for (int pass = 0; pass < 3; pass++) {
            int bm, bn;
            sparse_attn_tile_shape((sparse_attn_pass_t)pass, (attn_mode_t)mode, D, &bm, &bn);
            const long slots = (long)B * H * ((T + bm - 1) / bm) * ((T + bn - 1) / bn);
            if (slots > INT32_MAX)
                return fail(SCFA_ERR_ARGUMENT, "%s: %ld tile list slots for B*H = %d, T = %d are "
                            "too many (reduce B*H or T)", fn, slots, B * H, T);
        }
    return SCFA_OK;
}

extern "C" int scfa_create(scfa_ctx_t **ctx, int B, int T, int H, int D, int mode,
                           int n_buckets, float drop_prob, int exclude_self, int shared_qk) {
    if (ctx == NULL) return fail(SCFA_ERR_ARGUMENT, "scfa_create: ctx (the result pointer) is NULL");
    *ctx = NULL;
    int rc = check_create_args(B, T, H, D, mode, n_buckets, drop_prob);
    if (rc != SCFA_OK) return rc;
    int dev = -1;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return fail_cuda("cudaGetDevice", err);
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, scfa_probe_kernel);
    if (err != cudaSuccess) {
        cudaDeviceProp prop;
        const int have = cudaGetDeviceProperties(&prop, dev) == cudaSuccess;
        cudaGetLastError();
        return fail(SCFA_ERR_CUDA, "scfa_create: this library has no code for CUDA device %d "
                    "(%s, sm_%d%d): %s; it is built for sm_90a (Makefile CUDA_ARCH)", dev,
                    have ? prop.name : "?", have ? prop.major : 0, have ? prop.minor : 0,
                    cudaGetErrorString(err));
    }
    /* From here on, fatal() messages of the kernels and the plan name the library. */
    fatal_set_context("libscfa", NULL);

    scfa_ctx_t *c = (scfa_ctx_t *)calloc(1, sizeof *c);
    if (c == NULL) return fail(SCFA_ERR_CUDA, "scfa_create: out of host memory");
    c->magic = SCFA_MAGIC;
    c->device = dev;
    c->B = B, c->T = T, c->H = H, c->D = D;
    c->p.mode = (attn_mode_t)mode;
    c->p.n_buckets = mode == SCFA_HASH_SPARSE ? n_buckets : 1;
    c->p.drop_prob = mode == SCFA_QK_SPARSE ? drop_prob : 0.0f;
    c->p.exclude_self = exclude_self != 0;
    c->shared_qk = mode == SCFA_HASH_SPARSE && shared_qk != 0;
    if (!is_sparse(c) && (err = cudaMalloc((void **)&c->work_counter, sizeof(int))) != cudaSuccess) {
        free(c);
        return fail_cuda("cudaMalloc (work counter)", err);
    }
    if (is_sparse(c)) {
        attn_plan_cuda_init(&c->plan, &c->p, B, T, H, D);
        int bm, bn;
        sparse_attn_tile_shape(SPARSE_ATTN_PASS_FORWARD, c->p.mode, D, &bm, &bn);
        attn_tiles_cuda_init(&c->fwd_tiles, &c->plan, bm, bn);
        sparse_attn_tile_shape(SPARSE_ATTN_PASS_DKDV, c->p.mode, D, &bm, &bn);
        attn_tiles_cuda_init(&c->dkdv_tiles, &c->plan, bm, bn);
    }
    *ctx = c;
    return SCFA_OK;
}

extern "C" void scfa_free(scfa_ctx_t *c) {
    if (c == NULL || c->magic != SCFA_MAGIC) return;
    if (is_sparse(c)) {
        attn_tiles_cuda_free(&c->fwd_tiles);
        attn_tiles_cuda_free(&c->dkdv_tiles);
        if (c->dq_tiles_allocated) attn_tiles_cuda_free(&c->dq_tiles);
        attn_plan_cuda_free(&c->plan);
    }
    if (c->workspace) cudaFree(c->workspace);
    if (c->work_counter) cudaFree(c->work_counter);
    c->magic = 0;
    free(c);
}

extern "C" int scfa_build_plan(scfa_ctx_t *c, uint64_t key, const void *q, long q_stride,
                               const void *k, long k_stride, void *stream) {
    const char *fn = "scfa_build_plan";
    int rc = check_ctx(c, fn);
    if (rc != SCFA_OK) return rc;
    if (!is_sparse(c)) {
        c->plan_built = 1; /* dense: nothing to draw */
        return SCFA_OK;
    }
    if (c->p.mode == ATTN_HASH_SPARSE && c->p.n_buckets > 1) {
        if ((rc = check_tensor(c, fn, "q", q, q_stride)) != SCFA_OK) return rc;
        if (c->shared_qk && k != NULL)
            return fail(SCFA_ERR_ARGUMENT, "%s: the context has shared_qk (keys take the queries' "
                        "buckets): pass k = NULL", fn);
        if (!c->shared_qk && (rc = check_tensor(c, fn, "k", k, k_stride)) != SCFA_OK) return rc;
    }
    const cudaStream_t s = (cudaStream_t)stream;
    /* The plan reads k only for hash_sparse with separate keys; NULL selects shared keys. */
    const void *keys = c->p.mode == ATTN_HASH_SPARSE && !c->shared_qk ? k : NULL;
    attn_plan_cuda_build(&c->plan, key, q, q_stride, keys, k_stride, s);
    attn_tiles_cuda_build(&c->fwd_tiles, &c->plan, s);
    c->plan_built = 1;
    c->dkdv_tiles_built = 0;
    c->dq_tiles_built = 0;
    return SCFA_OK;
}

extern "C" int scfa_forward(scfa_ctx_t *c, const void *q, long q_stride, const void *k,
                            long k_stride, const void *v, long v_stride, void *out,
                            long o_stride, float *lse, void *stream) {
    const char *fn = "scfa_forward";
    int rc;
    if ((rc = check_ctx(c, fn)) != SCFA_OK || (rc = check_tensor(c, fn, "q", q, q_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "k", k, k_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "v", v, v_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "out", out, o_stride)) != SCFA_OK ||
        (rc = check_lse(fn, lse)) != SCFA_OK || (rc = check_plan_built(c, fn)) != SCFA_OK)
        return rc;
    const flash_attn_dims_t d = make_dims(c, q_stride, k_stride, v_stride, o_stride);
    const cudaStream_t s = (cudaStream_t)stream;
    const flash_bf16_t *qb = (const flash_bf16_t *)q, *kb = (const flash_bf16_t *)k;
    const flash_bf16_t *vb = (const flash_bf16_t *)v;
    if (is_sparse(c)) sparse_attn_forward(&c->plan, &c->fwd_tiles, &d, qb, kb, vb, (flash_bf16_t *)out, lse, s);
    else flash_attn_forward(&d, qb, kb, vb, (flash_bf16_t *)out, lse, s);
    return SCFA_OK;
}

/* Workspace for either backward mode (the atomic one needs the most); sized by B, T, H, D only. */
static int ensure_workspace(scfa_ctx_t *c, const flash_attn_dims_t *d) {
    const size_t bytes = is_sparse(c) ? sparse_attn_backward_workspace_bytes(d, 0)
                                      : flash_attn_backward_workspace_bytes(d, 0);
    if (c->workspace_bytes >= bytes) return SCFA_OK;
    if (c->workspace) {
        cudaError_t err = cudaFree(c->workspace);
        c->workspace = NULL, c->workspace_bytes = 0;
        if (err != cudaSuccess) return fail_cuda("cudaFree (backward workspace)", err);
    }
    cudaError_t err = cudaMalloc(&c->workspace, bytes);
    if (err != cudaSuccess) {
        c->workspace = NULL;
        char what[96];
        snprintf(what, sizeof what, "cudaMalloc of %zu bytes of backward workspace", bytes);
        return fail_cuda(what, err);
    }
    c->workspace_bytes = bytes;
    return SCFA_OK;
}

extern "C" int scfa_backward(scfa_ctx_t *c, const void *q, long q_stride, const void *k,
                             long k_stride, const void *v, long v_stride, const void *out,
                             long o_stride, const float *lse, const void *dout, void *dq,
                             void *dk, void *dv, int deterministic, void *stream) {
    const char *fn = "scfa_backward";
    int rc;
    if ((rc = check_ctx(c, fn)) != SCFA_OK || (rc = check_tensor(c, fn, "q", q, q_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "k", k, k_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "v", v, v_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "out", out, o_stride)) != SCFA_OK ||
        (rc = check_lse(fn, lse)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "dout", dout, o_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "dq", dq, q_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "dk", dk, k_stride)) != SCFA_OK ||
        (rc = check_tensor(c, fn, "dv", dv, v_stride)) != SCFA_OK ||
        (rc = check_plan_built(c, fn)) != SCFA_OK)
        return rc;
    const flash_attn_dims_t d = make_dims(c, q_stride, k_stride, v_stride, o_stride);
    if ((rc = ensure_workspace(c, &d)) != SCFA_OK) return rc;
    const cudaStream_t s = (cudaStream_t)stream;
    const flash_bf16_t *qb = (const flash_bf16_t *)q, *kb = (const flash_bf16_t *)k;
    const flash_bf16_t *vb = (const flash_bf16_t *)v, *ob = (const flash_bf16_t *)out;
    const flash_bf16_t *dob = (const flash_bf16_t *)dout;
    flash_bf16_t *dqb = (flash_bf16_t *)dq, *dkb = (flash_bf16_t *)dk, *dvb = (flash_bf16_t *)dv;
    if (!is_sparse(c)) {
        flash_attn_backward(&d, qb, kb, vb, ob, lse, dob, dqb, dkb, dvb, c->workspace,
                            deterministic != 0, s);
        return SCFA_OK;
    }
    /* The backward passes walk tiles of other shapes than the forward: their lists come from
     * the same plan, built once per plan on first use. */
    if (!c->dkdv_tiles_built) {
        attn_tiles_cuda_build(&c->dkdv_tiles, &c->plan, s);
        c->dkdv_tiles_built = 1;
    }
    const attn_tiles_cuda_t *dq_tiles = NULL;
    if (sparse_attn_backward_split(c->D, deterministic)) {
        if (!c->dq_tiles_allocated) {
            int bm, bn;
            sparse_attn_tile_shape(SPARSE_ATTN_PASS_DQ, c->p.mode, c->D, &bm, &bn);
            attn_tiles_cuda_init(&c->dq_tiles, &c->plan, bm, bn);
            c->dq_tiles_allocated = 1;
        }
        if (!c->dq_tiles_built) {
            attn_tiles_cuda_build(&c->dq_tiles, &c->plan, s);
            c->dq_tiles_built = 1;
        }
        dq_tiles = &c->dq_tiles;
    }
    sparse_attn_backward(&c->plan, &c->dkdv_tiles, dq_tiles, &d, qb, kb, vb, ob, lse, dob, dqb,
                         dkb, dvb, c->workspace, s);
    return SCFA_OK;
}

extern "C" int scfa_tile_counts(scfa_ctx_t *c, void *stream, int64_t *live, int64_t *causal,
                                int64_t *total, int *block_m, int *block_n) {
    const char *fn = "scfa_tile_counts";
    int rc;
    if ((rc = check_ctx(c, fn)) != SCFA_OK || (rc = check_plan_built(c, fn)) != SCFA_OK) return rc;
    /* Counted with the forward lists' tile shape (qk_sparse: 128 x 128 unless
     * SPARSE_QK_FWD_KEYS=64); dense with the hash modes' shape (ATTN_DENSE gives it), so that fractions compare. */
    int bm, bn;
    sparse_attn_tile_shape(SPARSE_ATTN_PASS_FORWARD, c->p.mode, 64, &bm, &bn);
    const int nq = (c->T + bm - 1) / bm, nk = (c->T + bn - 1) / bn;
    const int64_t bh = (int64_t)c->B * c->H;
    int64_t n_causal = 0;
    for (int qt = 0; qt < nq; qt++) {
        const int last = (qt + 1) * bm < c->T ? (qt + 1) * bm - 1 : c->T - 1;
        const int last_key = last - c->p.exclude_self; /* latest key any query of the tile sees */
        if (last_key >= 0) n_causal += last_key / bn + 1;
    }
    n_causal *= bh;
    if (live) *live = is_sparse(c) ? attn_tiles_cuda_live_count(&c->fwd_tiles, (cudaStream_t)stream) : n_causal;
    if (causal) *causal = n_causal;
    if (total) *total = bh * nq * nk;
    if (block_m) *block_m = bm;
    if (block_n) *block_n = bn;
    return SCFA_OK;
}

extern "C" int scfa_export_plan(scfa_ctx_t *c, int32_t *bucket_q, int32_t *bucket_k,
                                uint8_t *keep_q, uint8_t *keep_k, void *stream) {
    const char *fn = "scfa_export_plan";
    int rc;
    if ((rc = check_ctx(c, fn)) != SCFA_OK || (rc = check_plan_built(c, fn)) != SCFA_OK) return rc;
    const int hash = c->p.mode == ATTN_HASH_SPARSE, qk = c->p.mode == ATTN_QK_SPARSE;
    if ((bucket_q != NULL || bucket_k != NULL) && !hash)
        return fail(SCFA_ERR_ARGUMENT, "%s: buckets exist in hash_sparse only (pass NULL)", fn);
    if ((keep_q != NULL || keep_k != NULL) && !qk)
        return fail(SCFA_ERR_ARGUMENT, "%s: keep masks exist in qk_sparse only (pass NULL)", fn);
    if ((hash && (bucket_q == NULL || bucket_k == NULL)) || (qk && (keep_q == NULL || keep_k == NULL)))
        return fail(SCFA_ERR_ARGUMENT, "%s: both buffers of this mode (%s) are needed", fn,
                    hash ? "bucket_q, bucket_k" : "keep_q, keep_k");
    const size_t rows = (size_t)c->B * c->H * c->T;
    const cudaStream_t s = (cudaStream_t)stream;
    void *dst[2] = {hash ? (void *)bucket_q : (void *)keep_q, hash ? (void *)bucket_k : (void *)keep_k};
    const void *src[2] = {hash ? (const void *)c->plan.bucket_q : (const void *)c->plan.keep_q,
                          hash ? (const void *)c->plan.bucket_k : (const void *)c->plan.keep_k};
    const size_t bytes = rows * (hash ? sizeof(int32_t) : sizeof(uint8_t));
    for (int i = 0; i < 2 && (hash || qk); i++) {
        cudaError_t err = cudaMemcpyAsync(dst[i], src[i], bytes, cudaMemcpyDeviceToDevice, s);
        if (err != cudaSuccess) return fail_cuda("cudaMemcpyAsync (plan export)", err);
    }
    return SCFA_OK;
}
