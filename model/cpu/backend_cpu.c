/* The CPU backend: the reference model plus host-side AdamW over its flat parameter buffer.
 *
 * Data parallel (ZeRO-1) over MPI: the flat gradient vector, padded to world * shard, is
 * reduce-scattered so that each rank holds the summed gradients of its shard; each rank keeps
 * AdamW moments for its shard only and updates those parameters; an all-gather then gives every
 * rank the full updated parameters. With one rank the same code runs with no copies. */
#include <math.h>
#include <string.h>

#include "model/backend.h"
#include "attention/plan_tiles.h"
#include "model/cpu/gpt_cpu.h"
#include "runtime/error.h"

typedef struct {
    gpt_cpu_t *model;
    const dist_t *dist;
    size_t shard;        /* parameters per rank: ceil(n / world) */
    size_t shard_begin;  /* this rank's first parameter */
    float *m, *v;        /* AdamW moments of this rank's shard [shard] */
    float *grad_shard;   /* summed gradients of this rank's shard [shard] (NULL with one rank) */
    const float *summed; /* gradients update() uses: grad_shard, or the model's own with one rank */
    float *padded;       /* world * shard staging for collectives (NULL with one rank) */
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

/* Sums gradients across ranks into grad_shard, then returns the global norm. The training loop
 * calls this once per step, after the last backward and before update. */
static double cpu_grad_norm(backend_t *b) {
    cpu_impl_t *c = impl(b);
    const float *g = gpt_cpu_grads(c->model);
    if (c->dist->world == 1) { /* nothing to sum: the shard is the whole gradient */
        c->summed = g;
        return grad_global_norm(g, b->n_params);
    }
    memcpy(c->padded, g, b->n_params * sizeof(float));
    memset(c->padded + b->n_params, 0, (c->shard * (size_t)c->dist->world - b->n_params) * sizeof(float));
    dist_reduce_scatter_sum_float(c->dist, c->padded, c->grad_shard, c->shard);
    c->summed = c->grad_shard;
    double norm = grad_global_norm(c->grad_shard, c->shard);
    double sq = norm * norm;
    dist_allreduce_sum_double(c->dist, &sq, 1);
    return sqrt(sq);
}

/* AdamW on this rank's shard (each tensor's part of it, so weight decay stays per tensor). */
static void cpu_update(backend_t *b, const adamw_hparams_t *h, long t, float grad_scale) {
    cpu_impl_t *c = impl(b);
    float *p = gpt_cpu_params(c->model);
    size_t lo = c->shard_begin, hi = c->shard_begin + c->shard;
    if (hi > b->n_params) hi = b->n_params;
    for (int i = 0; i < c->n_tensors; i++) {
        const gpt_tensor_t *ts = &c->tensors[i];
        size_t a = ts->offset > lo ? ts->offset : lo, e = ts->offset + ts->numel < hi ? ts->offset + ts->numel : hi;
        if (a >= e) continue;
        adamw_step(p + a, c->summed + (a - lo), c->m + (a - lo), c->v + (a - lo), e - a, ts->decay, h, t,
                   grad_scale);
    }
    if (c->dist->world == 1) return;
    memcpy(c->padded + lo, p + lo, (hi - lo) * sizeof(float));
    dist_allgather_float(c->dist, c->padded, c->shard);
    memcpy(p, c->padded, b->n_params * sizeof(float));
}

/* Gathers a sharded moment array into a full host array (collective: every rank calls). */
static void gather_moment(cpu_impl_t *c, const float *part, float *full, size_t n) {
    if (c->dist->world == 1) {
        memcpy(full, part, n * sizeof(float));
        return;
    }
    memcpy(c->padded + c->shard_begin, part, c->shard * sizeof(float));
    dist_allgather_float(c->dist, c->padded, c->shard);
    memcpy(full, c->padded, n * sizeof(float));
}

static void cpu_read_state(backend_t *b, float *params, float *m, float *v) {
    cpu_impl_t *c = impl(b);
    if (params) memcpy(params, gpt_cpu_params(c->model), b->n_params * sizeof(float));
    if (m) gather_moment(c, c->m, m, b->n_params);
    if (v) gather_moment(c, c->v, v, b->n_params);
}

/* Takes this rank's shard of full moment arrays (so a checkpoint of N ranks resumes on M). */
static void scatter_moment(cpu_impl_t *c, const float *full, float *part, size_t n) {
    memset(part, 0, c->shard * sizeof(float));
    if (c->shard_begin < n) {
        size_t len = n - c->shard_begin < c->shard ? n - c->shard_begin : c->shard;
        memcpy(part, full + c->shard_begin, len * sizeof(float));
    }
}

static void cpu_write_state(backend_t *b, const float *params, const float *m, const float *v) {
    cpu_impl_t *c = impl(b);
    if (params) memcpy(gpt_cpu_params(c->model), params, b->n_params * sizeof(float));
    if (m) scatter_moment(c, m, c->m, b->n_params);
    if (v) scatter_moment(c, v, c->v, b->n_params);
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

/* Mean over sparse layers of the last forward's live tile fraction (as the CUDA backend). */
static double cpu_attn_live(backend_t *b) {
    double sum = 0.0;
    int n = 0;
    for (int l = 0; l < b->cfg.n_layer; l++) {
        const attn_plan_t *plan = gpt_cpu_plan(impl(b)->model, l);
        if (plan->p.mode == ATTN_DENSE) continue;
        sum += attn_plan_live_fraction(plan);
        n++;
    }
    return n ? sum / n : -1.0;
}

static void cpu_destroy(backend_t *b) {
    cpu_impl_t *c = impl(b);
    gpt_cpu_free(c->model);
    free(c->m);
    free(c->v);
    free(c->grad_shard);
    free(c->padded);
    free(c->tensors);
    free(c);
    free(b);
}

backend_t *backend_cpu_create(const gpt_config_t *cfg, int B, int T, const dist_t *dist) {
    backend_t *b = xcalloc(1, sizeof *b, "backend");
    cpu_impl_t *c = xcalloc(1, sizeof *c, "cpu backend");
    static const dist_t single = {0, 1, 0, 1, 0};
    b->name = "cpu";
    b->cfg = *cfg;
    b->n_params = gpt_num_params(cfg);
    b->impl = c;
    c->dist = dist ? dist : &single;
    size_t world = (size_t)c->dist->world;
    c->shard = (b->n_params + world - 1) / world;
    c->shard_begin = (size_t)c->dist->rank * c->shard;
    c->model = gpt_cpu_create(cfg, B, T);
    gpt_init_params(cfg, gpt_cpu_params(c->model));
    c->m = xcalloc(c->shard, sizeof(float), "adamw m");
    c->v = xcalloc(c->shard, sizeof(float), "adamw v");
    if (world > 1) {
        c->grad_shard = xcalloc(c->shard, sizeof(float), "gradient shard");
        c->padded = xcalloc(c->shard * world, sizeof(float), "collective staging");
    }
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
    b->attn_live = cpu_attn_live;
    b->destroy = cpu_destroy;
    return b;
}
