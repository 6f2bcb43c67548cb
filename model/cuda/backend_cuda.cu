/* The CUDA backend: gpt_cuda (mixed-precision model on one GPU) behind the backend_t op table,
 * plus the optimizer side: gradient norm on the device, fused AdamW that refreshes the bf16
 * weight copies, and fp32 state transfers for checkpoints.
 *
 * Two optimizer paths: the single-GPU one below (full-size moments, no communication), and the
 * data-parallel one of model/cuda/zero_cuda.h (NCCL, ZeRO-1 shards), taken when the backend is
 * created with a dist_t (backend_cuda_create_dist: every rank launched by mpirun, one rank
 * included). */
#include "model/cuda/backend_cuda.h"

#include <stdio.h>
#include <string.h>

#include "attention/cuda/flash_attn.h"
#include "attention/cuda/sparse_attn.h"
#include "model/cuda/gpt_cuda.h"
#include "model/cuda/zero_cuda.h"

typedef struct {
    gpt_cuda_t *g;
    zero_cuda_t *zero; /* NULL: single-GPU optimizer */
} cuda_impl_t;

static cuda_impl_t *cuda_of(backend_t *b) { return (cuda_impl_t *)b->impl; }
static gpt_cuda_t *impl(backend_t *b) { return cuda_of(b)->g; }

/* The device line ends with the matmuls' tuning, which backend_cuda_set_deterministic may change. */
static const char kTuningTag[] = ", matmul tuning ";
static void describe_tuning(backend_t *b) {
    char *tag = strstr(b->device, kTuningTag);
    if (tag) *tag = 0;
    const size_t used = strlen(b->device);
    snprintf(b->device + used, sizeof b->device - used, "%s%s", kTuningTag,
             matmul_ctx_tuning(impl(b)->mm) ? "on" : "off");
}

static float cuda_forward(backend_t *b, const int32_t *in, const int32_t *tgt, int B, int T,
                          uint64_t step, uint64_t micro) {
    return gpt_cuda_forward(impl(b), in, tgt, B, T, step, micro);
}

static void cuda_backward(backend_t *b, float scale) {
    if (cuda_of(b)->zero) zero_cuda_backward(cuda_of(b)->zero, scale, b->last_micro);
    else gpt_cuda_backward(impl(b), scale);
}

static void cuda_zero_grad(backend_t *b) {
    gpt_cuda_t *g = impl(b);
    if (cuda_of(b)->zero) return zero_cuda_zero_grad(cuda_of(b)->zero);
    CUDA_CHECK(cudaMemsetAsync(g->grads, 0, g->n_params * sizeof(float), g->stream));
}

static double cuda_grad_norm(backend_t *b) {
    gpt_cuda_t *g = impl(b);
    if (cuda_of(b)->zero) return zero_cuda_grad_norm(cuda_of(b)->zero);
    return grad_norm_cuda(g->grads, g->n_params, g->norm_scratch, g->stream);
}

static void cuda_comm_times(backend_t *b, double *comm_ms, double *exposed_ms) {
    zero_cuda_comm_times(cuda_of(b)->zero, comm_ms, exposed_ms);
}

static void cuda_update(backend_t *b, const adamw_hparams_t *h, long t, float grad_scale) {
    gpt_cuda_t *g = impl(b);
    if (cuda_of(b)->zero) return zero_cuda_update(cuda_of(b)->zero, h, t, grad_scale);
    /* One launch per run of consecutive tensors that share the decay flag. */
    int i = 0;
    while (i < g->n_tensors) {
        int j = i;
        while (j + 1 < g->n_tensors && g->tensors[j + 1].decay == g->tensors[i].decay) j++;
        const size_t lo = g->tensors[i].offset, hi = g->tensors[j].offset + g->tensors[j].numel;
        adamw_cuda(g->params + lo, g->params_bf16 + lo, g->grads + lo, g->m + lo, g->v + lo, hi - lo,
                   g->tensors[i].decay, h, t, grad_scale, g->stream);
        i = j + 1;
    }
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
}

static void copy_out(gpt_cuda_t *g, float *dst, const float *src) {
    if (dst)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, g->n_params * sizeof(float), cudaMemcpyDeviceToHost,
                                   g->stream));
}

static void copy_in(gpt_cuda_t *g, float *dst, const float *src) {
    if (src)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, g->n_params * sizeof(float), cudaMemcpyHostToDevice,
                                   g->stream));
}

/* With ZeRO every rank holds the full fp32 parameters (they are all-gathered in fp32) and only
 * the moments are sharded: gathering them is the collective part. */
static void cuda_read_state(backend_t *b, float *params, float *m, float *v) {
    gpt_cuda_t *g = impl(b);
    zero_cuda_t *z = cuda_of(b)->zero;
    copy_out(g, params, g->params);
    if (!z) {
        copy_out(g, m, g->m);
        copy_out(g, v, g->v);
    }
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    if (z) zero_cuda_read_moments(z, m, v);
}

static void cuda_write_state(backend_t *b, const float *params, const float *m, const float *v) {
    gpt_cuda_t *g = impl(b);
    zero_cuda_t *z = cuda_of(b)->zero;
    copy_in(g, g->params, params);
    if (!z) {
        copy_in(g, g->m, m);
        copy_in(g, g->v, v);
    }
    if (params) float_to_bf16_cuda(g->params_bf16, g->params, g->n_params, g->stream);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    if (z) zero_cuda_write_moments(z, m, v);
}

static void cuda_read_grads(backend_t *b, float *grads) {
    gpt_cuda_t *g = impl(b);
    copy_out(g, grads, g->grads);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
}

/* The logits are not kept (the head runs in chunks and turns them into dlogits in place):
 * the requested row is recomputed from the final LayerNorm output, in fp32 from bf16 inputs. */
static void cuda_logits_row(backend_t *b, int bi, int t, float *out) {
    gpt_cuda_t *g = impl(b);
    if (!g->has_forward || bi < 0 || bi >= g->B || t < 0 || t >= g->T)
        fatal(EXIT_RUNTIME, "logits_row(%d, %d): outside the last forward's %d x %d batch", bi, t,
              g->B, g->T);
    const bf16 *x = g->lnf + ((size_t)bi * g->T + t) * g->C;
    logits_row_cuda(g->row_logits, x, g->params_bf16 + g->wte, g->Vp, g->C, g->stream);
    CUDA_CHECK(cudaMemcpyAsync(out, g->row_logits, (size_t)g->Vp * sizeof(float),
                               cudaMemcpyDeviceToHost, g->stream));
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
}

static double cuda_attn_live(backend_t *b) { return gpt_cuda_attn_live(impl(b)); }

static const attn_plan_t *cuda_plan(backend_t *b, int layer) {
    return gpt_cuda_host_plan(impl(b), layer);
}

static void cuda_destroy(backend_t *b) {
    zero_cuda_free(cuda_of(b)->zero);
    gpt_cuda_free(impl(b));
    free(cuda_of(b));
    free(b);
}

/* dist NULL: the single-GPU path on the current device. Otherwise this rank's GPU is
 * local_rank, and the optimizer is ZeRO-1 over NCCL. */
static backend_t *create(const gpt_config_t *cfg, int B, int T, const dist_t *dist) {
    gpt_cuda_check_config(cfg); /* user errors first, before any CUDA call */
    int n_dev = 0;
    const cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0)
        fatal(EXIT_USAGE, "--device cuda: no usable CUDA device (%s)",
              err != cudaSuccess ? cudaGetErrorString(err) : "none found");
    if (dist) {
        if (dist->local_world > n_dev)
            fatal(EXIT_USAGE, "--device cuda: %d ranks on this host but only %d CUDA device%s visible: launch at "
                  "most one rank per GPU (mpirun -np %d)", dist->local_world, n_dev, n_dev == 1 ? "" : "s", n_dev);
        CUDA_CHECK(cudaSetDevice(dist->local_rank));
    }
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 9)
        fatal(EXIT_USAGE, "--device cuda: %s is compute capability %d.%d; this build targets Hopper (sm_90a)",
              prop.name, prop.major, prop.minor);

    backend_t *b = (backend_t *)xcalloc(1, sizeof *b, "backend");
    cuda_impl_t *c = (cuda_impl_t *)xcalloc(1, sizeof *c, "cuda backend");
    b->name = "cuda";
    if (dist)
        snprintf(b->device, sizeof b->device, "cuda: %s (bf16), GPU %d, NCCL ZeRO-1 over %d rank%s", prop.name, dev,
                 dist->world, dist->world == 1 ? "" : "s");
    else
        snprintf(b->device, sizeof b->device, "cuda: %s (bf16)", prop.name);
    /* the attention kernels' environment (checked here, at start-up) goes into every log's header */
    const size_t used = strlen(b->device);
    snprintf(b->device + used, sizeof b->device - used,
             ", attention backward %s, dense query tile %d, head group %s, qk forward keys %d, dense loads by %s/%s (fwd/bwd)",
             flash_attn_bwd_schedule(), flash_attn_bwd_query_tile(), flash_attn_head_group(), sparse_attn_qk_fwd_keys(),
             flash_attn_fwd_tma() ? "TMA" : "cp.async", flash_attn_bwd_tma() ? "TMA" : "cp.async");
    b->cfg = *cfg;
    c->g = gpt_cuda_create(cfg, B, T);
    const size_t used2 = strlen(b->device); /* GPT_CUDA_OVERLAP */
    snprintf(b->device + used2, sizeof b->device - used2, ", dW overlap %s", c->g->use_overlap ? "on" : "off");
    if (dist) c->zero = zero_cuda_create(c->g, dist);
    if (dist) b->comm_times = cuda_comm_times;
    b->n_params = c->g->n_params;
    b->impl = c;
    describe_tuning(b); /* GPT_MATMUL_TUNE */
    b->forward = cuda_forward;
    b->backward = cuda_backward;
    b->zero_grad = cuda_zero_grad;
    b->grad_norm = cuda_grad_norm;
    b->update = cuda_update;
    b->read_state = cuda_read_state;
    b->write_state = cuda_write_state;
    b->read_grads = cuda_read_grads;
    b->logits_row = cuda_logits_row;
    b->plan = cuda_plan;
    b->attn_live = cuda_attn_live;
    b->destroy = cuda_destroy;
    return b;
}

extern "C" backend_t *backend_cuda_create(const gpt_config_t *cfg, int B, int T) { return create(cfg, B, T, NULL); }

extern "C" backend_t *backend_cuda_create_dist(const gpt_config_t *cfg, int B, int T, const dist_t *dist) {
    if (!dist) fatal(EXIT_RUNTIME, "backend_cuda_create_dist: dist is NULL (use backend_cuda_create)");
    return create(cfg, B, T, dist);
}

extern "C" void backend_cuda_set_deterministic(backend_t *b, int deterministic) {
    if (strcmp(b->name, "cuda") != 0)
        fatal(EXIT_RUNTIME, "backend_cuda_set_deterministic: backend is %s, not cuda", b->name);
    gpt_cuda_t *g = impl(b);
    g->deterministic = deterministic != 0;
    matmul_ctx_set_tuning(g->mm, !g->deterministic); /* which candidate wins may differ between runs */
    matmul_ctx_set_tuning(g->mm_side, !g->deterministic);
    describe_tuning(b);
}

extern "C" size_t backend_cuda_device_bytes(backend_t *b) {
    if (strcmp(b->name, "cuda") != 0)
        fatal(EXIT_RUNTIME, "backend_cuda_device_bytes: backend is %s, not cuda", b->name);
    const gpt_cuda_t *g = impl(b);
    const zero_cuda_t *z = cuda_of(b)->zero;
    if (z) /* parameters and gradients in full, moments and summed gradients as shards */
        return g->act_bytes + g->n_params * (2 * sizeof(float) + sizeof(bf16)) + zero_cuda_device_bytes(z);
    return g->act_bytes + g->n_params * (4 * sizeof(float) + sizeof(bf16));
}
