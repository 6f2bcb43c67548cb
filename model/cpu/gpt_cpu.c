/* fp32 reference GPT-2 on the CPU: pre-LN blocks, tied LM head, pluggable attention.
 *   x = wte[tok] + wpe[t]
 *   per layer: x += attn.proj(attn(split(attn.qkv(ln1(x)))));  x += mlp.proj(gelu(mlp.fc(ln2(x))))
 *   logits = lnf(x) wte^T;  loss = mean over B*T of cross-entropy over the real vocabulary
 * With shared_qk the projection gives [Q | V] and K = Q / |Q| per head (qk_normalise).
 * The forward keeps every activation the backward needs; the backward walks the same ops in
 * reverse, accumulating parameter gradients (grads += scale * dloss/dparams). */
#include "model/cpu/gpt_cpu.h"

#include <stdio.h>
#include <string.h>

#include "model/cpu/ops_cpu.h"
#include "runtime/error.h"
#include "runtime/rng.h"

/* Rows of logits turned into dlogits at a time in the backward: a [rows][Vp] scratch instead
 * of a second full [B*T][Vp] buffer (the largest one in the model). */
#define LOGIT_CHUNK_ROWS 256

/* Pointers to one layer's tensors inside a flat buffer (params or grads); biases NULL when the
 * model has none. */
typedef struct {
    float *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *mprojw, *mprojb;
} layer_tensors_t;

typedef struct {
    float *wte, *wpe, *lnfw, *lnfb;
    layer_tensors_t layer[GPT_MAX_LAYERS];
} model_tensors_t;

/* What the backward needs from one layer's forward; rows are [N][...] with N = B*T. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* [N][C], [N], [N] */
    float *q, *k, *v, *att; /* [N][C] each ([B][T][H][D]); k = Q/|Q| with shared_qk */
    float *lse; /* [B][H][T] from attention */
    float *res_mid; /* residual after the attention block */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fc, *gelu; /* [N][4C] */
    float *res_out; /* residual after the MLP block = next layer's input */
} layer_acts_t;

struct gpt_cpu {
    gpt_config_t cfg;
    int Bmax, Tmax, L, C, H, D, P, V, Vp;
    size_t n_params;
    float *params, *grads;
    model_tensors_t pw, gw; /* views of params and grads */

    float *act_block; /* one allocation carved into the activations below */
    float *encoded; /* [N][C], residual input of layer 0 */
    layer_acts_t acts[GPT_MAX_LAYERS];
    float *lnf, *lnf_mean, *lnf_rstd, *logits, *ce_lse, *losses;

    float *scratch_block; /* forward/backward temporaries */
    float *qkv, *tmp_c; /* [N][P] (dqkv in the backward), [N][C] (datt) */
    float *dres, *dln, *dq, *dk, *dv, *dgelu, *dfc, *dlogits;

    attn_plan_t plans[GPT_MAX_LAYERS];
    int32_t *inputs, *targets;
    int B, T, has_forward, has_targets;
};

static float *find_tensor(const gpt_tensor_t *table, int n, float *base, const char *name,
                          int required) {
    for (int i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0) return base + table[i].offset;
    if (required) fatal(EXIT_RUNTIME, "gpt_cpu: tensor %s missing from the parameter table", name);
    return NULL;
}

static void bind_tensors(model_tensors_t *t, const gpt_config_t *cfg, float *base) {
    const int n = gpt_tensors(cfg, NULL);
    gpt_tensor_t *table = xmalloc((size_t)n * sizeof *table, "tensor table");
    gpt_tensors(cfg, table);
    const int b = cfg->bias;
    char name[32];
#define TENSOR(field, suffix, req)                                                                 \
    do {                                                                                           \
        snprintf(name, sizeof name, "h.%d.%s", l, suffix);                                         \
        lt->field = find_tensor(table, n, base, name, req);                                        \
    } while (0)
    t->wte = find_tensor(table, n, base, "wte", 1);
    t->wpe = find_tensor(table, n, base, "wpe", 1);
    t->lnfw = find_tensor(table, n, base, "lnf.w", 1);
    t->lnfb = find_tensor(table, n, base, "lnf.b", b);
    for (int l = 0; l < cfg->n_layer; l++) {
        layer_tensors_t *lt = &t->layer[l];
        TENSOR(ln1w, "ln1.w", 1);
        TENSOR(ln1b, "ln1.b", b);
        TENSOR(qkvw, "attn.qkv.w", 1);
        TENSOR(qkvb, "attn.qkv.b", b);
        TENSOR(projw, "attn.proj.w", 1);
        TENSOR(projb, "attn.proj.b", b);
        TENSOR(ln2w, "ln2.w", 1);
        TENSOR(ln2b, "ln2.b", b);
        TENSOR(fcw, "mlp.fc.w", 1);
        TENSOR(fcb, "mlp.fc.b", b);
        TENSOR(mprojw, "mlp.proj.w", 1);
        TENSOR(mprojb, "mlp.proj.b", b);
    }
#undef TENSOR
    free(table);
}

/* Hands out consecutive slices of one allocation. */
static float *carve(float **cursor, size_t n) {
    float *p = *cursor;
    *cursor += n;
    return p;
}

gpt_cpu_t *gpt_cpu_create(const gpt_config_t *cfg, int B, int T) {
    gpt_cpu_t *m = xcalloc(1, sizeof *m, "gpt_cpu");
    m->cfg = *cfg;
    m->n_params = gpt_num_params(cfg); /* validates the sizes */
    if (B < 1 || T < 1 || T > cfg->seq_len)
        fatal(EXIT_USAGE,
              "gpt_cpu_create: micro-batch %d x %d: need B >= 1 and 1 <= T <= seq_len %d", B, T,
              cfg->seq_len);
    m->Bmax = B, m->Tmax = T;
    m->L = cfg->n_layer, m->C = cfg->n_embd, m->H = cfg->n_head, m->D = m->C / m->H;
    m->P = cfg->shared_qk ? 2 * m->C : 3 * m->C;
    m->V = cfg->vocab_size, m->Vp = cfg->padded_vocab;
    m->params = xcalloc(m->n_params, sizeof(float), "parameters");
    m->grads = xcalloc(m->n_params, sizeof(float), "gradients");
    bind_tensors(&m->pw, cfg, m->params);
    bind_tensors(&m->gw, cfg, m->grads);

    const size_t N = (size_t)B * T, C = (size_t)m->C, P = (size_t)m->P, Vp = (size_t)m->Vp;
    const size_t per_layer = N * C * 8 + N * 4 * C * 2 + N * 4 + (size_t)B * m->H * T;
    const size_t act_total = N * C + per_layer * m->L + N * C + N * 2 + N * Vp + N * 2;
    float *cur = m->act_block = xmalloc(act_total * sizeof(float), "activations");
    m->encoded = carve(&cur, N * C);
    for (int l = 0; l < m->L; l++) {
        layer_acts_t *a = &m->acts[l];
        a->ln1 = carve(&cur, N * C);
        a->ln1_mean = carve(&cur, N);
        a->ln1_rstd = carve(&cur, N);
        a->q = carve(&cur, N * C);
        a->k = carve(&cur, N * C);
        a->v = carve(&cur, N * C);
        a->att = carve(&cur, N * C);
        a->lse = carve(&cur, (size_t)B * m->H * T);
        a->res_mid = carve(&cur, N * C);
        a->ln2 = carve(&cur, N * C);
        a->ln2_mean = carve(&cur, N);
        a->ln2_rstd = carve(&cur, N);
        a->fc = carve(&cur, N * 4 * C);
        a->gelu = carve(&cur, N * 4 * C);
        a->res_out = carve(&cur, N * C);
    }
    m->lnf = carve(&cur, N * C);
    m->lnf_mean = carve(&cur, N);
    m->lnf_rstd = carve(&cur, N);
    m->logits = carve(&cur, N * Vp);
    m->ce_lse = carve(&cur, N);
    m->losses = carve(&cur, N);

    const size_t chunk = N < LOGIT_CHUNK_ROWS ? N : LOGIT_CHUNK_ROWS;
    const size_t scratch_total = N * P + N * C * 6 + N * 4 * C * 2 + chunk * Vp;
    cur = m->scratch_block = xmalloc(scratch_total * sizeof(float), "gpt_cpu scratch");
    m->qkv = carve(&cur, N * P);
    m->tmp_c = carve(&cur, N * C);
    m->dres = carve(&cur, N * C);
    m->dln = carve(&cur, N * C);
    m->dq = carve(&cur, N * C);
    m->dk = carve(&cur, N * C);
    m->dv = carve(&cur, N * C);
    m->dgelu = carve(&cur, N * 4 * C);
    m->dfc = carve(&cur, N * 4 * C);
    m->dlogits = carve(&cur, chunk * Vp);

    for (int l = 0; l < m->L; l++) {
        const attn_params_t p = gpt_layer_attn(cfg, l);
        attn_plan_init(&m->plans[l], &p, B, T, m->H, m->D);
    }
    m->inputs = xmalloc(N * sizeof(int32_t), "gpt_cpu inputs");
    m->targets = xmalloc(N * sizeof(int32_t), "gpt_cpu targets");
    return m;
}

void gpt_cpu_free(gpt_cpu_t *m) {
    if (!m) return;
    for (int l = 0; l < m->L; l++) attn_plan_free(&m->plans[l]);
    free(m->params);
    free(m->grads);
    free(m->act_block);
    free(m->scratch_block);
    free(m->inputs);
    free(m->targets);
    free(m);
}

float *gpt_cpu_params(gpt_cpu_t *m) { return m->params; }
float *gpt_cpu_grads(gpt_cpu_t *m) { return m->grads; }
void gpt_cpu_zero_grad(gpt_cpu_t *m) { memset(m->grads, 0, m->n_params * sizeof(float)); }
const float *gpt_cpu_logits(const gpt_cpu_t *m) { return m->logits; }

const attn_plan_t *gpt_cpu_plan(const gpt_cpu_t *m, int layer) {
    if (layer < 0 || layer >= m->L)
        fatal(EXIT_RUNTIME, "gpt_cpu_plan: layer %d out of range [0, %d)", layer, m->L);
    return &m->plans[layer];
}

/* Token ids come from data files: an id outside the vocabulary would index past wte. */
static void copy_tokens(int32_t *dst, const int32_t *src, size_t n, int V, const char *what) {
    for (size_t i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= V)
            fatal(EXIT_RUNTIME,
                  "gpt_cpu_forward: %s token %d at position %zu is outside the vocabulary [0, %d)",
                  what, (int)src[i], i, V);
        dst[i] = src[i];
    }
}

float gpt_cpu_forward(gpt_cpu_t *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      uint64_t step, uint64_t micro) {
    if (B < 1 || B > m->Bmax || T < 1 || T > m->Tmax)
        fatal(EXIT_RUNTIME, "gpt_cpu_forward: micro-batch %d x %d exceeds the allocated %d x %d", B,
              T, m->Bmax, m->Tmax);
    const int C = m->C, H = m->H, D = m->D, N = B * T;
    copy_tokens(m->inputs, inputs, (size_t)N, m->V, "input");
    if (targets) copy_tokens(m->targets, targets, (size_t)N, m->V, "target");
    m->B = B, m->T = T;

    encoder_forward(m->encoded, m->inputs, m->pw.wte, m->pw.wpe, B, T, C);
    const float *x = m->encoded;
    for (int l = 0; l < m->L; l++) {
        const layer_tensors_t *w = &m->pw.layer[l];
        layer_acts_t *a = &m->acts[l];
        attn_plan_t *plan = &m->plans[l];

        layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1w, w->ln1b, N, C);
        matmul_forward(m->qkv, a->ln1, w->qkvw, w->qkvb, N, C, m->P);
        attn_split_qkv(a->q, a->k, a->v, m->qkv, N, C, m->cfg.shared_qk);
        if (m->cfg.shared_qk) qk_normalise_forward(a->k, a->q, N * H, D);
        if (plan->B != B || plan->T != T) { /* plans are sized per micro-batch shape */
            const attn_params_t p = plan->p;
            attn_plan_free(plan);
            attn_plan_init(plan, &p, B, T, H, D);
        }
        attn_plan_build(plan, rng_key(m->cfg.seed, RNG_DOMAIN_ATTN, step, (uint64_t)l, micro), a->q,
                        m->cfg.shared_qk ? NULL : a->k);
        attn_cpu_forward(plan, a->q, a->k, a->v, a->att, a->lse);
        matmul_forward(m->tmp_c, a->att, w->projw, w->projb, N, C, C);
        residual_forward(a->res_mid, x, m->tmp_c, (size_t)N * C);

        layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res_mid, w->ln2w, w->ln2b, N, C);
        matmul_forward(a->fc, a->ln2, w->fcw, w->fcb, N, C, 4 * C);
        gelu_forward(a->gelu, a->fc, (size_t)N * 4 * C);
        matmul_forward(m->tmp_c, a->gelu, w->mprojw, w->mprojb, N, 4 * C, C);
        residual_forward(a->res_out, a->res_mid, m->tmp_c, (size_t)N * C);
        x = a->res_out;
    }
    layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, x, m->pw.lnfw, m->pw.lnfb, N, C);
    matmul_forward(m->logits, m->lnf, m->pw.wte, NULL, N, C, m->Vp); /* tied LM head */

    m->has_forward = 1;
    m->has_targets = targets != NULL;
    if (!targets) return 0.0f;
    crossentropy_forward(m->losses, m->ce_lse, m->logits, m->targets, N, m->V, m->Vp);
    double sum = 0.0; /* in row order: the loss is independent of the thread count */
    for (int n = 0; n < N; n++) sum += m->losses[n];
    return (float)(sum / N);
}

void gpt_cpu_backward(gpt_cpu_t *m, float scale) {
    if (!m->has_forward || !m->has_targets)
        fatal(EXIT_RUNTIME,
              "gpt_cpu_backward: the last forward had no targets (no loss to differentiate)");
    const int B = m->B, T = m->T, C = m->C, H = m->H, D = m->D, N = B * T;
    const size_t NC = (size_t)N * C;

    /* LM head, a chunk of rows at a time: dlogits -> dlnf (into dln) and the tied dwte. */
    memset(m->dln, 0, NC * sizeof(float));
    const float dloss = scale / (float)N; /* the loss is a mean over B*T positions */
    for (int r0 = 0; r0 < N; r0 += LOGIT_CHUNK_ROWS) {
        const int rows = N - r0 < LOGIT_CHUNK_ROWS ? N - r0 : LOGIT_CHUNK_ROWS;
        crossentropy_backward(m->dlogits, m->logits + (size_t)r0 * m->Vp, m->ce_lse + r0,
                              m->targets + r0, dloss, rows, m->V, m->Vp);
        matmul_backward(m->dln + (size_t)r0 * C, m->gw.wte, NULL, m->dlogits,
                        m->lnf + (size_t)r0 * C, m->pw.wte, rows, C, m->Vp);
    }
    const float *x_last = m->L > 0 ? m->acts[m->L - 1].res_out : m->encoded;
    memset(m->dres, 0, NC * sizeof(float));
    layernorm_backward(m->dres, m->gw.lnfw, m->gw.lnfb, m->dln, x_last, m->pw.lnfw, m->lnf_mean,
                       m->lnf_rstd, N, C);

    /* dres holds dloss/d(residual stream); each block adds its branch's gradient to it. */
    for (int l = m->L - 1; l >= 0; l--) {
        const layer_tensors_t *w = &m->pw.layer[l];
        const layer_tensors_t *g = &m->gw.layer[l];
        const layer_acts_t *a = &m->acts[l];
        const float *x_in = l > 0 ? m->acts[l - 1].res_out : m->encoded;

        memset(m->dgelu, 0, NC * 4 * sizeof(float));
        matmul_backward(m->dgelu, g->mprojw, g->mprojb, m->dres, a->gelu, w->mprojw, N, 4 * C, C);
        memset(m->dfc, 0, NC * 4 * sizeof(float));
        gelu_backward(m->dfc, a->fc, m->dgelu, NC * 4);
        memset(m->dln, 0, NC * sizeof(float));
        matmul_backward(m->dln, g->fcw, g->fcb, m->dfc, a->ln2, w->fcw, N, C, 4 * C);
        layernorm_backward(m->dres, g->ln2w, g->ln2b, m->dln, a->res_mid, w->ln2w, a->ln2_mean,
                           a->ln2_rstd, N, C);

        float *datt = m->tmp_c;
        memset(datt, 0, NC * sizeof(float));
        matmul_backward(datt, g->projw, g->projb, m->dres, a->att, w->projw, N, C, C);
        attn_cpu_backward(&m->plans[l], a->q, a->k, a->v, a->att, a->lse, datt, m->dq, m->dk,
                          m->dv);
        if (m->cfg.shared_qk) qk_normalise_backward(m->dq, m->dk, a->q, a->k, N * H, D);
        float *dqkv = m->qkv;
        attn_merge_dqkv(dqkv, m->dq, m->dk, m->dv, N, C, m->cfg.shared_qk);
        memset(m->dln, 0, NC * sizeof(float));
        matmul_backward(m->dln, g->qkvw, g->qkvb, dqkv, a->ln1, w->qkvw, N, C, m->P);
        layernorm_backward(m->dres, g->ln1w, g->ln1b, m->dln, x_in, w->ln1w, a->ln1_mean,
                           a->ln1_rstd, N, C);
    }
    encoder_backward(m->gw.wte, m->gw.wpe, m->dres, m->inputs, B, T, C);
}
