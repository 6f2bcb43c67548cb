/* Run configuration: one JSON file (cJSON), strict, plus --set overrides.
 *
 * Every key is described once in a field table (config.c): its dotted name, type, range and
 * default. Loading rejects unknown sections/keys, wrong types and out-of-range values with one
 * message naming the file and key (exit status 2); keys left out take their defaults. The
 * resolved config (every key) is printed at start and saved as DIR/config.json. */
#ifndef RUNTIME_CONFIG_H
#define RUNTIME_CONFIG_H

#include <stdint.h>

#define CONFIG_STR 256
#define CONFIG_MAX_LIST 64

typedef struct {
    struct {
        int n_layer, n_head, n_embd, vocab_size, padded_vocab, seq_len, bias;
    } model;
    struct {
        char mode[CONFIG_STR]; /* dense | qk_sparse | hash_sparse */
        int n_buckets;
        double drop_prob;
        int shared_qk, exclude_self;
        int hash_center; /* hash_sparse: hash rows minus the running mean of the rows before them */
        int dense_layers[CONFIG_MAX_LIST]; /* layers that stay dense whatever the mode */
        int n_dense_layers;
    } attention;
    struct {
        char train[CONFIG_STR], val[CONFIG_STR]; /* shard globs */
        char tokenizer_dir[CONFIG_STR];          /* holds encoder.json and vocab.bpe */
    } data;
    struct {
        double lr, min_lr, beta1, beta2, eps, weight_decay, grad_clip;
        int warmup_steps;
        char schedule[CONFIG_STR]; /* cosine | constant */
    } optim;
    struct {
        int micro_batch, max_steps, eval_every, eval_tokens, ckpt_every, keep_ckpts;
        int sample_every, sample_tokens, log_every, deterministic;
        double watchdog_s; /* abort every rank when no step completes in this time (0: off) */
        long long total_batch_tokens;
        long long seed;
        char dtype[CONFIG_STR]; /* fp32 | bf16 */
    } train;
} config_t;

/* Defaults for every key (the tiny CPU model). */
void config_defaults(config_t *c);
/* Reads `path` over the defaults; exits 2 with a message naming path and key on any error. */
void config_load_file(config_t *c, const char *path);
/* Applies "dotted.key=value"; exits 2 naming the key on error. */
void config_set(config_t *c, const char *assignment);
/* Cross-field checks (divisibility, ranges that depend on other keys); exits 2. */
void config_validate(const config_t *c, const char *origin);
/* Resolved config as pretty JSON (malloc'd string, caller frees). */
char *config_to_json(const config_t *c);

#endif
