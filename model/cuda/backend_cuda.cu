/* The CUDA backend: gpt_cuda (mixed-precision model on one GPU) behind the backend_t op table,
 * plus the optimizer side: gradient norm on the device, fused AdamW that refreshes the bf16
 * weight copies, and fp32 state transfers for checkpoints. */
#include "model/cuda/backend_cuda.h"

#include <stdio.h>
#include <string.h>

#include "model/cuda/gpt_cuda.h"

static gpt_cuda_t *impl(backend_t *b) { return (gpt_cuda_t *)b->impl; }

static float cuda_forward(backend_t *b, const int32_t *in, const int32_t *tgt, int B, int T,
                          uint64_t step, uint64_t micro) {
    return gpt_cuda_forward(impl(b), in, tgt, B, T, step, micro);
}

static void cuda_backward(backend_t *b, float scale) { gpt_cuda_backward(impl(b), scale); }

static void cuda_zero_grad(backend_t *b) {
    gpt_cuda_t *g = impl(b);
    CUDA_CHECK(cudaMemsetAsync(g->grads, 0, g->n_params * sizeof(float), g->stream));
}

static double cuda_grad_norm(backend_t *b) {
    gpt_cuda_t *g = impl(b);
    return grad_norm_cuda(g->grads, g->n_params, g->norm_scratch, g->stream);
}

static void cuda_update(backend_t *b, const adamw_hparams_t *h, long t, float grad_scale) {
    gpt_cuda_t *g = impl(b);
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

static void cuda_read_state(backend_t *b, float *params, float *m, float *v) {
    gpt_cuda_t *g = impl(b);
    copy_out(g, params, g->params);
    copy_out(g, m, g->m);
    copy_out(g, v, g->v);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
}

static void cuda_write_state(backend_t *b, const float *params, const float *m, const float *v) {
    gpt_cuda_t *g = impl(b);
    copy_in(g, g->params, params);
    copy_in(g, g->m, m);
    copy_in(g, g->v, v);
    if (params) float_to_bf16_cuda(g->params_bf16, g->params, g->n_params, g->stream);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
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

static const attn_plan_t *cuda_plan(backend_t *b, int layer) {
    return gpt_cuda_host_plan(impl(b), layer);
}

static void cuda_destroy(backend_t *b) {
    gpt_cuda_free(impl(b));
    free(b);
}

extern "C" backend_t *backend_cuda_create(const gpt_config_t *cfg, int B, int T) {
    gpt_cuda_check_config(cfg); /* user errors first, before any CUDA call */
    int n_dev = 0;
    const cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0)
        fatal(EXIT_USAGE, "--device cuda: no usable CUDA device (%s)",
              err != cudaSuccess ? cudaGetErrorString(err) : "none found");
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 9)
        fatal(EXIT_USAGE, "--device cuda: %s is compute capability %d.%d; this build targets Hopper (sm_90a)",
              prop.name, prop.major, prop.minor);

    backend_t *b = (backend_t *)xcalloc(1, sizeof *b, "backend");
    b->name = "cuda";
    snprintf(b->device, sizeof b->device, "cuda: %s (bf16)", prop.name);
    b->cfg = *cfg;
    gpt_cuda_t *g = gpt_cuda_create(cfg, B, T);
    b->n_params = g->n_params;
    b->impl = g;
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
    b->destroy = cuda_destroy;
    return b;
}

extern "C" void backend_cuda_set_deterministic(backend_t *b, int deterministic) {
    if (strcmp(b->name, "cuda") != 0)
        fatal(EXIT_RUNTIME, "backend_cuda_set_deterministic: backend is %s, not cuda", b->name);
    impl(b)->deterministic = deterministic != 0;
}

extern "C" size_t backend_cuda_device_bytes(backend_t *b) {
    if (strcmp(b->name, "cuda") != 0)
        fatal(EXIT_RUNTIME, "backend_cuda_device_bytes: backend is %s, not cuda", b->name);
    const gpt_cuda_t *g = impl(b);
    return g->act_bytes + g->n_params * (4 * sizeof(float) + sizeof(bf16));
}
