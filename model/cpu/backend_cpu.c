/* The CPU backend: the reference model plus host-side AdamW over its flat parameter buffer. */
#include <string.h>

#include "model/backend.h"
#include "model/cpu/gpt_cpu.h"
#include "runtime/error.h"

typedef struct {
    gpt_cpu_t *model;
    float *m, *v;
    gpt_tensor_t *tensors;
    int n_tensors;
    int last_T; /* T of the last forward: logits are [B][last_T][Vp] */
} cpu_impl_t;

static cpu_impl_t *impl(backend_t *b) { return (cpu_impl_t *)b->impl; }

static float cpu_forward(backend_t *b, const int32_t *in, const int32_t *tgt, int B, int T,
                         uint64_t step, uint64_t micro) {
    impl(b)->last_T = T;
    return gpt_cpu_forward(impl(b)->model, in, tgt, B, T, step, micro);
}

static void cpu_backward(backend_t *b, float scale) { gpt_cpu_backward(impl(b)->model, scale); }
static void cpu_zero_grad(backend_t *b) { gpt_cpu_zero_grad(impl(b)->model); }

static double cpu_grad_norm(backend_t *b) {
    return grad_global_norm(gpt_cpu_grads(impl(b)->model), b->n_params);
}

static void cpu_update(backend_t *b, const adamw_hparams_t *h, long t, float grad_scale) {
    cpu_impl_t *c = impl(b);
    float *p = gpt_cpu_params(c->model);
    const float *g = gpt_cpu_grads(c->model);
    for (int i = 0; i < c->n_tensors; i++) {
        const gpt_tensor_t *ts = &c->tensors[i];
        adamw_step(p + ts->offset, g + ts->offset, c->m + ts->offset, c->v + ts->offset, ts->numel,
                   ts->decay, h, t, grad_scale);
    }
}

static void cpu_read_state(backend_t *b, float *params, float *m, float *v) {
    cpu_impl_t *c = impl(b);
    size_t bytes = b->n_params * sizeof(float);
    if (params) memcpy(params, gpt_cpu_params(c->model), bytes);
    if (m) memcpy(m, c->m, bytes);
    if (v) memcpy(v, c->v, bytes);
}

static void cpu_write_state(backend_t *b, const float *params, const float *m, const float *v) {
    cpu_impl_t *c = impl(b);
    size_t bytes = b->n_params * sizeof(float);
    if (params) memcpy(gpt_cpu_params(c->model), params, bytes);
    if (m) memcpy(c->m, m, bytes);
    if (v) memcpy(c->v, v, bytes);
}

static void cpu_read_grads(backend_t *b, float *grads) {
    memcpy(grads, gpt_cpu_grads(impl(b)->model), b->n_params * sizeof(float));
}

static void cpu_logits_row(backend_t *b, int bi, int t, float *out) {
    cpu_impl_t *c = impl(b);
    size_t Vp = (size_t)b->cfg.padded_vocab;
    const float *row = gpt_cpu_logits(c->model) + ((size_t)bi * (size_t)c->last_T + (size_t)t) * Vp;
    memcpy(out, row, Vp * sizeof(float));
}

static const attn_plan_t *cpu_plan(backend_t *b, int layer) { return gpt_cpu_plan(impl(b)->model, layer); }

static void cpu_destroy(backend_t *b) {
    cpu_impl_t *c = impl(b);
    gpt_cpu_free(c->model);
    free(c->m);
    free(c->v);
    free(c->tensors);
    free(c);
    free(b);
}

backend_t *backend_cpu_create(const gpt_config_t *cfg, int B, int T) {
    backend_t *b = xcalloc(1, sizeof *b, "backend");
    cpu_impl_t *c = xcalloc(1, sizeof *c, "cpu backend");
    b->name = "cpu";
    b->cfg = *cfg;
    b->n_params = gpt_num_params(cfg);
    b->impl = c;
    c->model = gpt_cpu_create(cfg, B, T);
    gpt_init_params(cfg, gpt_cpu_params(c->model));
    c->m = xcalloc(b->n_params, sizeof(float), "adamw m");
    c->v = xcalloc(b->n_params, sizeof(float), "adamw v");
    c->n_tensors = gpt_tensors(cfg, NULL);
    c->tensors = xmalloc((size_t)c->n_tensors * sizeof(gpt_tensor_t), "tensor table");
    gpt_tensors(cfg, c->tensors);
    b->forward = cpu_forward;
    b->backward = cpu_backward;
    b->zero_grad = cpu_zero_grad;
    b->grad_norm = cpu_grad_norm;
    b->update = cpu_update;
    b->read_state = cpu_read_state;
    b->write_state = cpu_write_state;
    b->read_grads = cpu_read_grads;
    b->logits_row = cpu_logits_row;
    b->plan = cpu_plan;
    b->destroy = cpu_destroy;
    return b;
}
