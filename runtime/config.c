#include "runtime/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"

typedef enum { F_INT, F_INT64, F_FLOAT, F_BOOL, F_STRING, F_INT_LIST } field_type_t;

typedef struct {
    const char *key;     /* "section.name" */
    field_type_t type;
    size_t offset;       /* into config_t */
    double min, max;     /* numbers: inclusive range; lists: range of each element */
    const char *choices; /* strings: "a|b|c", or NULL for free text */
} field_t;

#define OFF(member) offsetof(config_t, member)
#define BIG 9.0e15
static const field_t FIELDS[] = {
    {"model.n_layer", F_INT, OFF(model.n_layer), 1, 64, NULL},
    {"model.n_head", F_INT, OFF(model.n_head), 1, 1024, NULL},
    {"model.n_embd", F_INT, OFF(model.n_embd), 1, 65536, NULL},
    {"model.vocab_size", F_INT, OFF(model.vocab_size), 2, 65536, NULL},
    {"model.padded_vocab", F_INT, OFF(model.padded_vocab), 2, 65536, NULL},
    {"model.seq_len", F_INT, OFF(model.seq_len), 1, 1 << 20, NULL},
    {"model.bias", F_BOOL, OFF(model.bias), 0, 1, NULL},
    {"attention.mode", F_STRING, OFF(attention.mode), 0, 0, "dense|qk_sparse|hash_sparse"},
    {"attention.n_buckets", F_INT, OFF(attention.n_buckets), 1, 64, NULL},
    {"attention.drop_prob", F_FLOAT, OFF(attention.drop_prob), 0, 1, NULL},
    {"attention.shared_qk", F_BOOL, OFF(attention.shared_qk), 0, 1, NULL},
    {"attention.exclude_self", F_BOOL, OFF(attention.exclude_self), 0, 1, NULL},
    {"attention.hash_center", F_BOOL, OFF(attention.hash_center), 0, 1, NULL},
    {"attention.dense_layers", F_INT_LIST, OFF(attention.dense_layers), 0, 63, NULL},
    {"data.train", F_STRING, OFF(data.train), 0, 0, NULL},
    {"data.val", F_STRING, OFF(data.val), 0, 0, NULL},
    {"data.tokenizer_dir", F_STRING, OFF(data.tokenizer_dir), 0, 0, NULL},
    {"optim.lr", F_FLOAT, OFF(optim.lr), 0, 10, NULL},
    {"optim.min_lr", F_FLOAT, OFF(optim.min_lr), 0, 10, NULL},
    {"optim.warmup_steps", F_INT, OFF(optim.warmup_steps), 0, 1e9, NULL},
    {"optim.schedule", F_STRING, OFF(optim.schedule), 0, 0, "cosine|constant"},
    {"optim.beta1", F_FLOAT, OFF(optim.beta1), 0, 0.999999, NULL},
    {"optim.beta2", F_FLOAT, OFF(optim.beta2), 0, 0.999999, NULL},
    {"optim.eps", F_FLOAT, OFF(optim.eps), 0, 1, NULL},
    {"optim.weight_decay", F_FLOAT, OFF(optim.weight_decay), 0, 10, NULL},
    {"optim.grad_clip", F_FLOAT, OFF(optim.grad_clip), 0, 1e9, NULL},
    {"train.micro_batch", F_INT, OFF(train.micro_batch), 1, 1 << 16, NULL},
    {"train.total_batch_tokens", F_INT64, OFF(train.total_batch_tokens), 1, BIG, NULL},
    {"train.max_steps", F_INT, OFF(train.max_steps), 1, 1e9, NULL},
    {"train.eval_every", F_INT, OFF(train.eval_every), 0, 1e9, NULL},
    {"train.eval_tokens", F_INT, OFF(train.eval_tokens), 1, 2e9, NULL},
    {"train.ckpt_every", F_INT, OFF(train.ckpt_every), 0, 1e9, NULL},
    {"train.keep_ckpts", F_INT, OFF(train.keep_ckpts), 1, 1000, NULL},
    {"train.sample_every", F_INT, OFF(train.sample_every), 0, 1e9, NULL},
    {"train.sample_tokens", F_INT, OFF(train.sample_tokens), 1, 1 << 20, NULL},
    {"train.log_every", F_INT, OFF(train.log_every), 1, 1e9, NULL},
    {"train.watchdog_s", F_FLOAT, OFF(train.watchdog_s), 0, 1e7, NULL},
    {"train.deterministic", F_BOOL, OFF(train.deterministic), 0, 1, NULL},
    {"train.seed", F_INT64, OFF(train.seed), 0, BIG, NULL},
    {"train.dtype", F_STRING, OFF(train.dtype), 0, 0, "fp32|bf16"},
};
#define N_FIELDS ((int)(sizeof(FIELDS) / sizeof(FIELDS[0])))
static const char *SECTIONS[] = {"model", "attention", "data", "optim", "train"};
#define N_SECTIONS 5

void config_defaults(config_t *c) {
    memset(c, 0, sizeof(*c));
    c->model.n_layer = 4;
    c->model.n_head = 4;
    c->model.n_embd = 128;
    c->model.vocab_size = 50257;
    c->model.padded_vocab = 50304;
    c->model.seq_len = 256;
    c->model.bias = 0;
    strcpy(c->attention.mode, "dense");
    c->attention.n_buckets = 16;
    c->attention.drop_prob = 0.5;
    strcpy(c->data.train, "data/shards/demo_train_*.bin");
    strcpy(c->data.val, "data/shards/demo_val_*.bin");
    strcpy(c->data.tokenizer_dir, "tokenizer");
    c->optim.lr = 1e-3;
    c->optim.min_lr = 1e-4;
    c->optim.warmup_steps = 10;
    strcpy(c->optim.schedule, "cosine");
    c->optim.beta1 = 0.9;
    c->optim.beta2 = 0.95;
    c->optim.eps = 1e-8;
    c->optim.weight_decay = 0.1;
    c->optim.grad_clip = 1.0;
    c->train.micro_batch = 4;
    c->train.total_batch_tokens = 4 * 256;
    c->train.max_steps = 100;
    c->train.eval_every = 25;
    c->train.eval_tokens = 8192;
    c->train.ckpt_every = 50;
    c->train.keep_ckpts = 2;
    c->train.sample_every = 0;
    c->train.sample_tokens = 64;
    c->train.log_every = 1;
    c->train.deterministic = 0;
    c->train.watchdog_s = 900;
    c->train.seed = 1337;
    strcpy(c->train.dtype, "fp32");
}

static const field_t *find_field(const char *key) {
    for (int i = 0; i < N_FIELDS; i++)
        if (strcmp(FIELDS[i].key, key) == 0) return &FIELDS[i];
    return NULL;
}

static void check_range(const field_t *f, double x, const char *origin) {
    if (isnan(x) || x < f->min || x > f->max)
        fatal(EXIT_USAGE, "%s: %s = %g is out of range [%g, %g]", origin, f->key, x, f->min, f->max);
}

static void check_integer(const field_t *f, double x, const char *origin) {
    if (x != floor(x)) fatal(EXIT_USAGE, "%s: %s must be an integer, got %g", origin, f->key, x);
}

static void set_string(config_t *c, const field_t *f, const char *s, const char *origin) {
    if (strlen(s) >= CONFIG_STR)
        fatal(EXIT_USAGE, "%s: %s is longer than %d characters", origin, f->key, CONFIG_STR - 1);
    if (f->choices) {
        size_t n = strlen(s);
        const char *p = f->choices;
        int ok = 0;
        while (*p) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && strncmp(p, s, n) == 0) ok = 1;
            p += len + (bar ? 1 : 0);
        }
        if (!ok) fatal(EXIT_USAGE, "%s: %s = \"%s\" is not one of %s", origin, f->key, s, f->choices);
    }
    strcpy((char *)c + f->offset, s);
}

static void set_number(config_t *c, const field_t *f, double x, const char *origin) {
    if (f->type != F_FLOAT) check_integer(f, x, origin);
    check_range(f, x, origin);
    char *dst = (char *)c + f->offset;
    if (f->type == F_INT) *(int *)dst = (int)x;
    else if (f->type == F_INT64) *(long long *)dst = (long long)x;
    else *(double *)dst = x;
}

/* Sets a field from a JSON value, checking its type. */
static void set_from_json(config_t *c, const field_t *f, const cJSON *v, const char *origin) {
    switch (f->type) {
    case F_INT:
    case F_INT64:
    case F_FLOAT:
        if (!cJSON_IsNumber(v)) fatal(EXIT_USAGE, "%s: %s must be a number", origin, f->key);
        set_number(c, f, v->valuedouble, origin);
        break;
    case F_BOOL:
        if (!cJSON_IsBool(v)) fatal(EXIT_USAGE, "%s: %s must be true or false", origin, f->key);
        *(int *)((char *)c + f->offset) = cJSON_IsTrue(v) ? 1 : 0;
        break;
    case F_STRING:
        if (!cJSON_IsString(v)) fatal(EXIT_USAGE, "%s: %s must be a string", origin, f->key);
        set_string(c, f, v->valuestring, origin);
        break;
    case F_INT_LIST: {
        if (!cJSON_IsArray(v)) fatal(EXIT_USAGE, "%s: %s must be a list of integers", origin, f->key);
        int *arr = (int *)((char *)c + f->offset);
        int *count = &c->attention.n_dense_layers; /* the only list field */
        int n = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsNumber(e)) fatal(EXIT_USAGE, "%s: %s must be a list of integers", origin, f->key);
            if (n == CONFIG_MAX_LIST) fatal(EXIT_USAGE, "%s: %s has more than %d entries", origin, f->key, CONFIG_MAX_LIST);
            check_integer(f, e->valuedouble, origin);
            check_range(f, e->valuedouble, origin);
            arr[n++] = (int)e->valuedouble;
        }
        *count = n;
        break;
    }
    }
}

static char *read_text_file(const char *path, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open %s %s: %s", what, path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) fatal(EXIT_USAGE, "cannot read %s %s", what, path);
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) fatal(EXIT_USAGE, "cannot read %s %s", what, path);
    char *buf = xmalloc((size_t)n + 1, what);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) fatal(EXIT_USAGE, "cannot read %s %s", what, path);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

void config_load_file(config_t *c, const char *path) {
    char *text = read_text_file(path, "config file");
    const char *err_at = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &err_at, 1);
    if (!root) {
        long off = err_at ? (long)(err_at - text) : -1;
        int line = 1;
        for (long i = 0; i < off && text[i]; i++) line += text[i] == '\n';
        fatal(EXIT_USAGE, "%s: invalid JSON near line %d", path, line);
    }
    if (!cJSON_IsObject(root)) fatal(EXIT_USAGE, "%s: top level must be a JSON object", path);
    const cJSON *sec;
    cJSON_ArrayForEach(sec, root) {
        int known = 0;
        for (int i = 0; i < N_SECTIONS; i++) known |= strcmp(sec->string, SECTIONS[i]) == 0;
        if (!known)
            fatal(EXIT_USAGE, "%s: unknown section \"%s\" (known: model, attention, data, optim, train)",
                  path, sec->string);
        if (!cJSON_IsObject(sec)) fatal(EXIT_USAGE, "%s: section \"%s\" must be an object", path, sec->string);
        if (cJSON_GetObjectItemCaseSensitive(root, sec->string) != sec)
            fatal(EXIT_USAGE, "%s: section \"%s\" appears twice", path, sec->string);
        const cJSON *item;
        cJSON_ArrayForEach(item, sec) {
            char key[160];
            snprintf(key, sizeof key, "%s.%s", sec->string, item->string);
            const field_t *f = find_field(key);
            if (!f) fatal(EXIT_USAGE, "%s: unknown key \"%s\"", path, key);
            if (cJSON_GetObjectItemCaseSensitive(sec, item->string) != item)
                fatal(EXIT_USAGE, "%s: key \"%s\" appears twice", path, key);
            set_from_json(c, f, item, path);
        }
    }
    cJSON_Delete(root);
    free(text);
}

/* --set values: the text is parsed as JSON when it is valid JSON of the field's type, so
 * strings may be given bare (attention.mode=hash_sparse) or quoted. */
void config_set(config_t *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) fatal(EXIT_USAGE, "--set %s: expected key=value", assignment);
    char key[160];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof key) fatal(EXIT_USAGE, "--set: key too long");
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    const char *value = eq + 1;
    const field_t *f = find_field(key);
    if (!f) fatal(EXIT_USAGE, "--set: unknown key \"%s\"", key);
    if (f->type == F_STRING) {
        cJSON *v = cJSON_ParseWithOpts(value, NULL, 1);
        if (v && cJSON_IsString(v)) set_string(c, f, v->valuestring, "--set");
        else set_string(c, f, value, "--set");
        cJSON_Delete(v);
        return;
    }
    cJSON *v;
    if (f->type == F_INT_LIST && value[0] != '[') { /* "0,3" and "1" mean [0,3] and [1] */
        char buf[512];
        snprintf(buf, sizeof buf, "[%s]", value);
        v = cJSON_ParseWithOpts(buf, NULL, 1);
    } else {
        v = cJSON_ParseWithOpts(value, NULL, 1);
    }
    if (!v) fatal(EXIT_USAGE, "--set %s: cannot parse value \"%s\"", key, value);
    set_from_json(c, f, v, "--set");
    cJSON_Delete(v);
}

void config_validate(const config_t *c, const char *origin) {
    if (c->model.n_embd % c->model.n_head != 0)
        fatal(EXIT_USAGE, "%s: model.n_embd (%d) must be divisible by model.n_head (%d)", origin,
              c->model.n_embd, c->model.n_head);
    if (c->model.padded_vocab < c->model.vocab_size)
        fatal(EXIT_USAGE, "%s: model.padded_vocab (%d) must be >= model.vocab_size (%d)", origin,
              c->model.padded_vocab, c->model.vocab_size);
    int nb = c->attention.n_buckets;
    if (nb != 1 && nb % 2 != 0)
        fatal(EXIT_USAGE, "%s: attention.n_buckets = %d must be 1 or even (buckets are argmax over [xR, -xR])",
              origin, nb);
    if (c->attention.hash_center && strcmp(c->attention.mode, "hash_sparse") != 0)
        fatal(EXIT_USAGE, "%s: attention.hash_center applies to attention.mode hash_sparse, not \"%s\"", origin,
              c->attention.mode);
    for (int i = 0; i < c->attention.n_dense_layers; i++)
        if (c->attention.dense_layers[i] >= c->model.n_layer)
            fatal(EXIT_USAGE, "%s: attention.dense_layers contains %d but model.n_layer is %d", origin,
                  c->attention.dense_layers[i], c->model.n_layer);
    if (c->optim.min_lr > c->optim.lr)
        fatal(EXIT_USAGE, "%s: optim.min_lr (%g) must be <= optim.lr (%g)", origin, c->optim.min_lr, c->optim.lr);
    if (c->optim.warmup_steps > c->train.max_steps)
        fatal(EXIT_USAGE, "%s: optim.warmup_steps (%d) must be <= train.max_steps (%d)", origin,
              c->optim.warmup_steps, c->train.max_steps);
    long long per_micro = (long long)c->train.micro_batch * c->model.seq_len;
    if (c->train.total_batch_tokens % per_micro != 0)
        fatal(EXIT_USAGE, "%s: train.total_batch_tokens (%lld) must be a multiple of train.micro_batch * model.seq_len (%lld)",
              origin, c->train.total_batch_tokens, per_micro);
    if (c->train.eval_tokens % per_micro != 0)
        fatal(EXIT_USAGE, "%s: train.eval_tokens (%d) must be a multiple of train.micro_batch * model.seq_len (%lld)",
              origin, c->train.eval_tokens, per_micro);
}

char *config_to_json(const config_t *c) {
    cJSON *root = cJSON_CreateObject();
    for (int s = 0; s < N_SECTIONS; s++) {
        cJSON *sec = cJSON_AddObjectToObject(root, SECTIONS[s]);
        size_t slen = strlen(SECTIONS[s]);
        for (int i = 0; i < N_FIELDS; i++) {
            const field_t *f = &FIELDS[i];
            if (strncmp(f->key, SECTIONS[s], slen) != 0 || f->key[slen] != '.') continue;
            const char *name = f->key + slen + 1;
            const char *src = (const char *)c + f->offset;
            switch (f->type) {
            case F_INT: cJSON_AddNumberToObject(sec, name, *(const int *)src); break;
            case F_INT64: cJSON_AddNumberToObject(sec, name, (double)*(const long long *)src); break;
            case F_FLOAT: cJSON_AddNumberToObject(sec, name, *(const double *)src); break;
            case F_BOOL: cJSON_AddBoolToObject(sec, name, *(const int *)src); break;
            case F_STRING: cJSON_AddStringToObject(sec, name, src); break;
            case F_INT_LIST:
                cJSON_AddItemToObject(sec, name,
                                      cJSON_CreateIntArray((const int *)src, c->attention.n_dense_layers));
                break;
            }
        }
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out) fatal(EXIT_RUNTIME, "out of memory printing the config");
    return out;
}
