/* GPT-2 model description: the parameter table, per-layer attention, initialisation.
 * Every backend derives its parameter layout from gpt_tensors, so CPU and CUDA buffers, the
 * optimizer and checkpoints all agree on one flat order. */
#include "model/gpt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/rng.h"

/* The sizes every backend relies on; a bad config is user input, so it is reported by key. */
static void check_config(const gpt_config_t *cfg) {
    if (cfg->n_layer < 1 || cfg->n_layer > GPT_MAX_LAYERS)
        fatal(EXIT_USAGE, "model.n_layer = %d: must be in [1, %d]", cfg->n_layer, GPT_MAX_LAYERS);
    if (cfg->n_head < 1 || cfg->n_embd < 1 || cfg->n_embd % cfg->n_head != 0)
        fatal(EXIT_USAGE, "model.n_embd = %d must be a positive multiple of model.n_head = %d",
              cfg->n_embd, cfg->n_head);
    if (cfg->vocab_size < 1 || cfg->padded_vocab < cfg->vocab_size)
        fatal(EXIT_USAGE, "model.vocab_size = %d / padded_vocab = %d: need 1 <= vocab <= padded",
              cfg->vocab_size, cfg->padded_vocab);
    if (cfg->seq_len < 1) fatal(EXIT_USAGE, "model.seq_len = %d: must be >= 1", cfg->seq_len);
}

/* Appends one tensor at the running offset; names are short enough for the 32-byte field. */
static void add_tensor(gpt_tensor_t *out, int *count, size_t *offset, const char *name, int rows,
                       int cols) {
    size_t numel = (size_t)rows * (size_t)(cols ? cols : 1);
    if (out) {
        gpt_tensor_t *t = &out[*count];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->offset = *offset;
        t->numel = numel;
        t->rows = rows;
        t->cols = cols;
        t->decay = cols > 0; /* matrices decay; LayerNorm weights and biases do not */
    }
    (*count)++;
    *offset += numel;
}

int gpt_tensors(const gpt_config_t *cfg, gpt_tensor_t *out) {
    check_config(cfg);
    const int C = cfg->n_embd, P = cfg->shared_qk ? 2 * C : 3 * C;
    int count = 0;
    size_t offset = 0;
    char name[32];
    add_tensor(out, &count, &offset, "wte", cfg->padded_vocab, C);
    add_tensor(out, &count, &offset, "wpe", cfg->seq_len, C);
    for (int l = 0; l < cfg->n_layer; l++) {
        /* Matrices have cols > 0; vectors (LayerNorm weights, biases) have cols == 0. */
        const struct { const char *suffix; int rows, cols, is_bias; } layer[] = {
            {"ln1.w", C, 0, 0},           {"ln1.b", C, 0, 1},
            {"attn.qkv.w", P, C, 0},      {"attn.qkv.b", P, 0, 1},
            {"attn.proj.w", C, C, 0},     {"attn.proj.b", C, 0, 1},
            {"ln2.w", C, 0, 0},           {"ln2.b", C, 0, 1},
            {"mlp.fc.w", 4 * C, C, 0},    {"mlp.fc.b", 4 * C, 0, 1},
            {"mlp.proj.w", C, 4 * C, 0},  {"mlp.proj.b", C, 0, 1},
        };
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            if (layer[i].is_bias && !cfg->bias) continue;
            snprintf(name, sizeof name, "h.%d.%s", l, layer[i].suffix);
            add_tensor(out, &count, &offset, name, layer[i].rows, layer[i].cols);
        }
    }
    add_tensor(out, &count, &offset, "lnf.w", C, 0);
    if (cfg->bias) add_tensor(out, &count, &offset, "lnf.b", C, 0);
    return count;
}

size_t gpt_num_params(const gpt_config_t *cfg) {
    check_config(cfg);
    const size_t C = (size_t)cfg->n_embd, P = cfg->shared_qk ? 2 * C : 3 * C;
    const size_t b = cfg->bias ? 1 : 0;
    size_t per_layer = C + b * C          /* ln1 */
                       + P * C + b * P    /* attn.qkv */
                       + C * C + b * C    /* attn.proj */
                       + C + b * C        /* ln2 */
                       + 4 * C * C + b * 4 * C /* mlp.fc */
                       + 4 * C * C + b * C;    /* mlp.proj */
    return (size_t)cfg->padded_vocab * C + (size_t)cfg->seq_len * C +
           (size_t)cfg->n_layer * per_layer + C + b * C;
}

attn_params_t gpt_layer_attn(const gpt_config_t *cfg, int layer) {
    if (layer < 0 || layer >= cfg->n_layer)
        fatal(EXIT_RUNTIME, "gpt_layer_attn: layer %d out of range [0, %d)", layer, cfg->n_layer);
    attn_params_t p = cfg->attn;
    if ((cfg->dense_layer_mask >> layer) & 1u) {
        /* A dense override changes only which pairs may interact; strict causality
         * (exclude_self) is a property of the model, so it is kept. */
        p.mode = ATTN_DENSE;
        p.n_buckets = 1;
        p.drop_prob = 0.0f;
        p.hash_center = 0;
    }
    return p;
}

/* Which init a tensor gets, from its name (the table is the single source of names). */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

void gpt_init_params(const gpt_config_t *cfg, float *params) {
    int n = gpt_tensors(cfg, NULL);
    gpt_tensor_t *tensors = xmalloc((size_t)n * sizeof *tensors, "tensor table");
    gpt_tensors(cfg, tensors);
    /* GPT-2: residual projections are scaled down so the residual stream's variance does not
     * grow with depth (two residual additions per layer). */
    const float std_base = 0.02f;
    const float std_resid = 0.02f / sqrtf(2.0f * (float)cfg->n_layer);
    for (int ti = 0; ti < n; ti++) {
        const gpt_tensor_t *t = &tensors[ti];
        float *p = params + t->offset;
        const uint64_t key = rng_key(cfg->seed, RNG_DOMAIN_INIT, (uint64_t)ti, 0, 0);
        if (t->cols == 0) {
            /* Vectors: LayerNorm weights start at 1, every bias at 0. */
            const float value = ends_with(t->name, ".w") ? 1.0f : 0.0f;
            for (size_t i = 0; i < t->numel; i++) p[i] = value;
            continue;
        }
        const int is_resid = ends_with(t->name, "attn.proj.w") || ends_with(t->name, "mlp.proj.w");
        const float std = is_resid ? std_resid : std_base;
        /* Padded vocabulary rows of wte are never a target and never an input: keep them 0. */
        const size_t live = strcmp(t->name, "wte") == 0
                                ? (size_t)cfg->vocab_size * (size_t)t->cols
                                : t->numel;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < t->numel; i++)
            p[i] = i < live ? std * rng_normal(key, (uint64_t)i) : 0.0f;
    }
    free(tensors);
}
