/* train: command line -> config -> model, data, optimizer -> loop (step, eval, sample, log,
 * checkpoint). The loop never branches on the device: it talks to a backend_t. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/backend.h"
#include "model/cuda/backend_cuda.h"
#include "model/dump.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/dist.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "runtime/runlog.h"

#ifndef GIT_COMMIT
#define GIT_COMMIT "unknown"
#endif

#define EOT_TOKEN 50256
#define EVAL_MICRO_BASE (1ull << 40) /* plan keys of eval batches never meet training ones */
#define SAMPLE_MICRO (1ull << 41)

typedef struct {
    const char *config_path, *out_dir, *resume_dir, *device, *dump_dir;
    const char *sets[256];
    int n_sets;
} options_t;

static volatile sig_atomic_t g_stop_signal = 0;

/* Said on stderr when a signal arrives (formatted ahead: a handler may only write()). A rank
 * stuck in a collective whose peer died never reaches the end of its step, so this line is
 * its only word before the launcher kills it. */
static char g_signal_note[160] = "signal received: stopping after this step (a second signal stops at once)\n";
static size_t g_signal_note_len = 74;

static void on_signal(int sig) {
    g_stop_signal = sig;
    signal(sig, SIG_DFL); /* a second signal kills at once */
    ssize_t unused = write(STDERR_FILENO, g_signal_note, g_signal_note_len);
    (void)unused;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ./train --config FILE [--set key=value ...] [--out DIR] [--device cpu|cuda]\n"
            "       ./train --resume DIR [--set key=value ...]\n"
            "       ./train --config FILE --dump DIR   (one forward+backward, writes a dump for bench/torch_check.py)\n"
            "Keys: see configs/*.json and README.md. Exit status 2 on bad input.\n");
}

static options_t parse_args(int argc, char **argv) {
    options_t o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            usage(stderr);
            fatal(EXIT_USAGE, "%s needs a value", a);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) o.config_path = v;
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--resume")) o.resume_dir = v;
        else if (!strcmp(a, "--device")) o.device = v;
        else if (!strcmp(a, "--dump")) o.dump_dir = v;
        else if (!strcmp(a, "--set")) {
            if (o.n_sets == 256) fatal(EXIT_USAGE, "too many --set options");
            o.sets[o.n_sets++] = v;
        } else {
            usage(stderr);
            fatal(EXIT_USAGE, "unknown option %s", a);
        }
    }
    if (!o.config_path && !o.resume_dir) {
        usage(stderr);
        fatal(EXIT_USAGE, "--config FILE or --resume DIR is required");
    }
    if (o.config_path && o.resume_dir)
        fatal(EXIT_USAGE, "--resume DIR uses DIR/config.json: do not pass --config with it");
    if (o.resume_dir && o.out_dir) fatal(EXIT_USAGE, "--resume DIR writes into DIR: do not pass --out with it");
    if (o.dump_dir && !o.resume_dir) {
        if (o.out_dir && strcmp(o.out_dir, o.dump_dir)) fatal(EXIT_USAGE, "--dump DIR is also the run dir: drop --out");
        o.out_dir = o.dump_dir;
    }
    if (o.device && strcmp(o.device, "cpu") && strcmp(o.device, "cuda"))
        fatal(EXIT_USAGE, "--device must be cpu or cuda, got \"%s\"", o.device);
    return o;
}

static gpt_config_t gpt_config_from(const config_t *c) {
    gpt_config_t g = {0};
    g.n_layer = c->model.n_layer;
    g.n_head = c->model.n_head;
    g.n_embd = c->model.n_embd;
    g.vocab_size = c->model.vocab_size;
    g.padded_vocab = c->model.padded_vocab;
    g.seq_len = c->model.seq_len;
    g.bias = c->model.bias;
    if (attn_mode_parse(c->attention.mode, &g.attn.mode) != 0)
        fatal(EXIT_USAGE, "attention.mode \"%s\" is unknown", c->attention.mode);
    g.attn.n_buckets = c->attention.n_buckets;
    g.attn.drop_prob = (float)c->attention.drop_prob;
    g.attn.exclude_self = c->attention.exclude_self;
    g.attn.hash_center = c->attention.hash_center;
    g.shared_qk = c->attention.shared_qk;
    for (int i = 0; i < c->attention.n_dense_layers; i++) g.dense_layer_mask |= 1ull << c->attention.dense_layers[i];
    g.seed = (uint64_t)c->train.seed;
    return g;
}

static void make_dirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) fatal(EXIT_USAGE, "cannot create %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) fatal(EXIT_USAGE, "cannot create %s: %s", tmp, strerror(errno));
}

static void default_out_dir(char *buf, size_t size, const char *config_path) {
    const char *base = strrchr(config_path, '/');
    base = base ? base + 1 : config_path;
    char name[256];
    snprintf(name, sizeof name, "%s", base);
    char *dot = strrchr(name, '.');
    if (dot) *dot = '\0';
    char stamp[32];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
    snprintf(buf, size, "runs/%s-%s", name, stamp);
}

static void require_matches(const char *key, const char *pattern) {
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    globfree(&g);
    if (rc != 0) fatal(EXIT_USAGE, "%s = \"%s\": no file matches (see README.md: data)", key, pattern);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void format_eta(char *buf, size_t size, double s) {
    if (s < 60) snprintf(buf, size, "%.0fs", s);
    else if (s < 3600) snprintf(buf, size, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, size, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

typedef struct {
    config_t cfg;
    gpt_config_t gcfg;
    char dir[4096];
    backend_t *be;
    loader_t *train, *val;
    tokenizer_t *tok; /* NULL unless sampling */
    runlog_t log;
    dist_t dist;
    int use_cuda;
    int B, T, accum, world, rank;
    long long step;   /* optimizer steps completed */
    uint64_t tokens;  /* training tokens consumed */
    double elapsed_s; /* training wall time, continued across resumes */
    float *host_params, *host_m, *host_v; /* staging for checkpoints */
} run_t;

static void save_checkpoint(run_t *r) {
    ckpt_meta_t meta = {0};
    meta.step = (uint64_t)r->step;
    meta.tokens = r->tokens;
    meta.n_params = r->be->n_params;
    meta.world_size = (uint64_t)r->world;
    loader_state_t ls = loader_get_state(r->train);
    memcpy(meta.loader_state, ls.words, sizeof meta.loader_state);
    meta.config_json = config_to_json(&r->cfg);
    r->be->read_state(r->be, r->host_params, r->host_m, r->host_v); /* collective */
    if (r->rank == 0) {
        char path[4200];
        ckpt_path(path, sizeof path, r->dir, meta.step);
        ckpt_write(path, &meta, r->host_params, r->host_m, r->host_v);
        ckpt_prune(r->dir, r->cfg.train.keep_ckpts);
    }
    free(meta.config_json);
}

static void load_checkpoint(run_t *r, long long step) {
    char path[4200];
    ckpt_path(path, sizeof path, r->dir, (uint64_t)step);
    ckpt_meta_t meta;
    ckpt_read(path, &meta, r->be->n_params, r->host_params, r->host_m, r->host_v);
    r->be->write_state(r->be, r->host_params, r->host_m, r->host_v);
    r->step = (long long)meta.step;
    r->tokens = meta.tokens;
    loader_state_t ls;
    memcpy(ls.words, meta.loader_state, sizeof ls.words);
    /* A checkpoint of N ranks resumes on M: words[1] is each rank's batch counter and words[4]
     * the world size (docs/FORMATS.md); the global count of batches consumed is what carries
     * over, and it is a whole number of steps, so it divides by any world size that divides the
     * step's micro-batches (checked by the config). */
    if (ls.words[4] != (uint64_t)r->world && ls.words[4] != 0) {
        uint64_t global = ls.words[1] * ls.words[4];
        if (global % (uint64_t)r->world != 0)
            fatal(EXIT_USAGE, "checkpoint %s: %llu batches consumed do not split over %d ranks", path,
                  (unsigned long long)global, r->world);
        ls.words[1] = global / (uint64_t)r->world;
        ls.words[4] = (uint64_t)r->world;
    }
    loader_set_state(r->train, &ls);
    free(meta.config_json);
}

static double evaluate(run_t *r, int32_t *in, int32_t *tgt) {
    int batches = r->cfg.train.eval_tokens / (r->B * r->T);
    loader_reset(r->val);
    double sum = 0;
    for (int i = 0; i < batches; i++) { /* batch i is evaluated by rank i % world */
        loader_next(r->val, in, tgt);
        if (i % r->world != r->rank) continue;
        sum += r->be->forward(r->be, in, tgt, r->B, r->T, (uint64_t)r->step, EVAL_MICRO_BASE + (uint64_t)i);
        dist_watchdog_kick();
    }
    dist_allreduce_sum_double(&r->dist, &sum, 1);
    return sum / batches;
}

/* Generates sample_tokens tokens after <|endoftext|>, returns decoded text (malloc'd). */
static char *sample_text(run_t *r) {
    int n = r->cfg.train.sample_tokens;
    int32_t *ctx = xmalloc(((size_t)n + 1) * sizeof(int32_t), "sample context");
    float *logits = xmalloc((size_t)r->gcfg.padded_vocab * sizeof(float), "sample logits");
    uint64_t key = rng_key(r->gcfg.seed, RNG_DOMAIN_SAMPLE, (uint64_t)r->step, 0, 0);
    ctx[0] = EOT_TOKEN;
    int len = 1;
    for (int i = 0; i < n; i++) {
        int start = len > r->T ? len - r->T : 0;
        int t = len - start;
        r->be->forward(r->be, ctx + start, NULL, 1, t, (uint64_t)r->step, SAMPLE_MICRO);
        r->be->logits_row(r->be, 0, t - 1, logits);
        ctx[len++] = sample_token(logits, r->gcfg.vocab_size, 1.0f, rng_uniform(key, (uint64_t)i));
    }
    size_t text_len;
    char *text = tokenizer_decode(r->tok, ctx + 1, (size_t)n, &text_len);
    free(ctx);
    free(logits);
    return text;
}

static void log_header(run_t *r) {
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(h, "type", "header");
    char *cj = config_to_json(&r->cfg);
    cJSON_AddItemToObject(h, "config", cJSON_Parse(cj));
    free(cj);
    cJSON_AddStringToObject(h, "git_commit", GIT_COMMIT);
    cJSON_AddStringToObject(h, "device", r->be->device);
    cJSON_AddNumberToObject(h, "world_size", r->world);
    cJSON_AddNumberToObject(h, "n_params", (double)r->be->n_params);
    cJSON_AddNumberToObject(h, "grad_accum", r->accum);
    runlog_write(&r->log, h);
}

/* Sets up config, output dir, data and backend; returns with r ready to train from r->step. */
static void setup(run_t *r, const options_t *o) {
    config_defaults(&r->cfg);
    if (o->resume_dir) {
        snprintf(r->dir, sizeof r->dir, "%s", o->resume_dir);
        char path[4200];
        snprintf(path, sizeof path, "%s/config.json", r->dir);
        config_load_file(&r->cfg, path);
    } else {
        config_load_file(&r->cfg, o->config_path);
    }
    for (int i = 0; i < o->n_sets; i++) config_set(&r->cfg, o->sets[i]);
    config_validate(&r->cfg, o->resume_dir ? r->dir : o->config_path);

    r->use_cuda = o->device ? !strcmp(o->device, "cuda") : cuda_device_count() > 0;
    if (!r->use_cuda && strcmp(r->cfg.train.dtype, "fp32") != 0)
        fatal(EXIT_USAGE, "train.dtype = \"%s\" is not supported by the cpu backend: use --set train.dtype=fp32",
              r->cfg.train.dtype);
    if (r->use_cuda && strcmp(r->cfg.train.dtype, "bf16") != 0)
        fatal(EXIT_USAGE, "train.dtype = \"%s\" is not supported by the cuda backend (bf16 compute, fp32 master "
              "weights): use --set train.dtype=bf16", r->cfg.train.dtype);

    r->gcfg = gpt_config_from(&r->cfg);
    r->world = r->dist.world;
    r->rank = r->dist.rank;
    snprintf(g_signal_note, sizeof g_signal_note,
             "rank %d: signal received: stopping after this step (a second signal stops at once)\n", r->rank);
    g_signal_note_len = strlen(g_signal_note);
    char *resolved = config_to_json(&r->cfg);
    dist_check_same(&r->dist, "the resolved config", resolved);
    free(resolved);
    r->B = r->cfg.train.micro_batch;
    r->T = r->cfg.model.seq_len;
    long long per_step = (long long)r->B * r->T * r->world;
    if (r->cfg.train.total_batch_tokens % per_step != 0)
        fatal(EXIT_USAGE, "train.total_batch_tokens (%lld) must be a multiple of micro_batch * seq_len * world_size (%lld)",
              r->cfg.train.total_batch_tokens, per_step);
    r->accum = (int)(r->cfg.train.total_batch_tokens / per_step);

    /* Everything that can fail on user input is checked before the output dir is touched. */
    require_matches("data.train", r->cfg.data.train);
    require_matches("data.val", r->cfg.data.val);
    r->train = loader_open(r->cfg.data.train, r->B, r->T, r->rank, r->world, (uint64_t)r->cfg.train.seed, 1,
                           r->cfg.model.vocab_size);
    r->val = loader_open(r->cfg.data.val, r->B, r->T, 0, 1, (uint64_t)r->cfg.train.seed, 0, r->cfg.model.vocab_size);
    if (r->cfg.train.sample_every > 0) {
        char enc[4200], bpe[4200];
        snprintf(enc, sizeof enc, "%s/encoder.json", r->cfg.data.tokenizer_dir);
        snprintf(bpe, sizeof bpe, "%s/vocab.bpe", r->cfg.data.tokenizer_dir);
        r->tok = tokenizer_load(enc, bpe);
    }
    long long resume_step = -1;
    if (o->resume_dir) {
        resume_step = ckpt_latest_step(r->dir);
        if (resume_step < 0) fatal(EXIT_USAGE, "--resume %s: no checkpoint (ckpt_*.bin) in that folder", r->dir);
    } else {
        if (o->out_dir) snprintf(r->dir, sizeof r->dir, "%s", o->out_dir);
        else default_out_dir(r->dir, sizeof r->dir, o->config_path);
        dist_broadcast_bytes(&r->dist, r->dir, sizeof r->dir); /* ranks may disagree on the time */
        char logpath[4200];
        snprintf(logpath, sizeof logpath, "%s/log.jsonl", r->dir);
        if (access(logpath, F_OK) == 0 || ckpt_latest_step(r->dir) >= 0)
            fatal(EXIT_USAGE, "%s already holds a run: use --resume %s or another --out", r->dir, r->dir);
    }

    if (r->use_cuda) {
        /* Launched by mpirun (any -np, 1 included): one GPU per rank, NCCL with ZeRO-1 shards. */
        r->be = r->dist.mpi ? backend_cuda_create_dist(&r->gcfg, r->B, r->T, &r->dist)
                            : backend_cuda_create(&r->gcfg, r->B, r->T);
        backend_cuda_set_deterministic(r->be, r->cfg.train.deterministic);
    } else {
        r->be = backend_cpu_create(&r->gcfg, r->B, r->T, &r->dist);
        snprintf(r->be->device, sizeof r->be->device, "cpu (%d OpenMP threads)", omp_get_max_threads());
    }
    r->host_params = xmalloc(r->be->n_params * sizeof(float), "checkpoint staging");
    r->host_m = xmalloc(r->be->n_params * sizeof(float), "checkpoint staging");
    r->host_v = xmalloc(r->be->n_params * sizeof(float), "checkpoint staging");

    char *cj = config_to_json(&r->cfg);
    if (r->rank == 0) printf("config:\n%s\n", cj);
    if (o->resume_dir) {
        load_checkpoint(r, resume_step);
        if (r->rank == 0) {
            runlog_resume(&r->log, r->dir, resume_step);
            printf("resumed %s at step %lld\n", r->dir, r->step);
        }
        double elapsed = r->log.last_elapsed_s;
        dist_broadcast_bytes(&r->dist, &elapsed, sizeof elapsed);
        r->elapsed_s = elapsed;
    } else if (r->rank == 0) {
        make_dirs(r->dir);
        char path[4200];
        snprintf(path, sizeof path, "%s/config.json", r->dir);
        write_file_atomic(path, cj, strlen(cj));
        runlog_create(&r->log, r->dir);
        log_header(r);
    }
    dist_barrier(&r->dist); /* rank 0 has created the run dir */
    free(cj);
    if (r->rank == 0)
        printf("run dir %s | %s | %.2fM parameters | batch %d x %d x %d accum = %lld tokens/step | %s attention\n",
               r->dir, r->be->device, r->be->n_params / 1e6, r->B, r->T, r->accum,
               r->cfg.train.total_batch_tokens, r->cfg.attention.mode);
    if ((r->world > 1 || (r->use_cuda && r->dist.mpi)) && r->rank == 0)
        printf("data parallel: %d rank%s, ZeRO-1 optimizer shards\n", r->world, r->world == 1 ? "" : "s");
}

static int is_due(long long step, int every, long long max_steps) {
    return every > 0 && (step % every == 0 || step == max_steps);
}

/* One optimizer step: accum micro-batches forward+backward, clip, AdamW. Returns mean loss. */
static float train_step(run_t *r, int32_t *in, int32_t *tgt, double *grad_norm, float *lr, int *stop) {
    backend_t *be = r->be;
    be->zero_grad(be);
    double loss_sum = 0;
    for (int m = 0; m < r->accum; m++) {
        loader_next(r->train, in, tgt);
        uint64_t global_micro = (uint64_t)m * (uint64_t)r->world + (uint64_t)r->rank;
        loss_sum += be->forward(be, in, tgt, r->B, r->T, (uint64_t)r->step, global_micro);
        be->last_micro = m == r->accum - 1; /* lets the backend overlap its gradient collectives */
        be->backward(be, 1.0f / (float)(r->accum * r->world)); /* summed over ranks: the mean */
    }
    /* One all-reduce carries the loss and whether any rank was signalled, so all stop together. */
    double shared[2] = {loss_sum, g_stop_signal ? 1.0 : 0.0};
    dist_allreduce_sum_double(&r->dist, shared, 2);
    *stop = shared[1] > 0;
    float loss = (float)(shared[0] / (r->accum * r->world));
    *grad_norm = be->grad_norm(be);
    if (!isfinite(loss) || !isfinite(*grad_norm))
        fatal(EXIT_RUNTIME, "loss is %g (grad norm %g) at step %lld: stopping; the last checkpoint in %s is intact",
              loss, *grad_norm, r->step + 1, r->dir);
    const config_t *c = &r->cfg;
    *lr = lr_at_step(r->step, c->train.max_steps, c->optim.warmup_steps, (float)c->optim.lr, (float)c->optim.min_lr,
                     strcmp(c->optim.schedule, "cosine") == 0 ? SCHEDULE_COSINE : SCHEDULE_CONSTANT);
    adamw_hparams_t h = {*lr, (float)c->optim.beta1, (float)c->optim.beta2, (float)c->optim.eps,
                         (float)c->optim.weight_decay};
    be->update(be, &h, (long)r->step + 1, grad_clip_factor(*grad_norm, (float)c->optim.grad_clip));
    return loss;
}

static void log_eval(run_t *r, double val_loss) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "eval");
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    cJSON_AddNumberToObject(o, "val_loss", val_loss);
    cJSON_AddNumberToObject(o, "val_ppl", exp(val_loss));
    cJSON_AddNumberToObject(o, "elapsed_s", round(r->elapsed_s * 1e3) / 1e3);
    runlog_write(&r->log, o);
    printf("eval step %lld | val loss %.4f | val ppl %.2f\n", r->step, val_loss, exp(val_loss));
}

static void train_loop(run_t *r) {
    const config_t *c = &r->cfg;
    size_t bt = (size_t)r->B * (size_t)r->T;
    int32_t *in = xmalloc(bt * sizeof(int32_t), "batch"), *tgt = xmalloc(bt * sizeof(int32_t), "batch");
    long long max_steps = c->train.max_steps;
    double ms_avg = 0;
    while (r->step < max_steps) {
        double t0 = now_s();
        double grad_norm;
        float lr;
        int stop;
        float loss = train_step(r, in, tgt, &grad_norm, &lr, &stop);
        r->step++;
        dist_watchdog_kick();
        r->tokens += (uint64_t)c->train.total_batch_tokens;
        double dt = now_s() - t0;
        r->elapsed_s += dt;
        ms_avg = ms_avg == 0 ? dt * 1e3 : 0.9 * ms_avg + 0.1 * dt * 1e3;
        double tok_s = (double)c->train.total_batch_tokens / dt;
        if (r->rank == 0 && (r->step % c->train.log_every == 0 || r->step == max_steps)) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "type", "step");
            cJSON_AddNumberToObject(o, "step", (double)r->step);
            cJSON_AddNumberToObject(o, "loss", loss);
            cJSON_AddNumberToObject(o, "lr", lr);
            cJSON_AddNumberToObject(o, "grad_norm", grad_norm);
            cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
            cJSON_AddNumberToObject(o, "tokens_per_s", round(tok_s));
            cJSON_AddNumberToObject(o, "ms", round(dt * 1e4) / 10);
            cJSON_AddNumberToObject(o, "elapsed_s", round(r->elapsed_s * 1e3) / 1e3);
            double comm_ms = -1, exposed_ms = -1;
            if (r->be->comm_times) r->be->comm_times(r->be, &comm_ms, &exposed_ms);
            if (comm_ms >= 0) { /* rank 0's view; every rank runs the same collectives */
                cJSON_AddNumberToObject(o, "comm_ms", round(comm_ms * 1e3) / 1e3);
                cJSON_AddNumberToObject(o, "comm_exposed_ms", round(exposed_ms * 1e3) / 1e3);
            }
            const double live = r->be->attn_live ? r->be->attn_live(r->be) : -1.0;
            if (live >= 0) cJSON_AddNumberToObject(o, "attn_live", round(live * 1e4) / 1e4);
            runlog_write(&r->log, o);
        }
        char eta[32];
        format_eta(eta, sizeof eta, (double)(max_steps - r->step) * ms_avg / 1e3);
        if (r->rank == 0)
            printf("step %6lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.0f ms | ETA %s\n", r->step,
               max_steps, loss, lr, grad_norm, tok_s, dt * 1e3, eta);
        fflush(stdout);

        if (is_due(r->step, c->train.eval_every, max_steps)) {
            double vl = evaluate(r, in, tgt);
            if (r->rank == 0) log_eval(r, vl);
        }
        if (r->rank == 0 && r->tok && is_due(r->step, c->train.sample_every, max_steps)) {
            char *text = sample_text(r);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "type", "sample");
            cJSON_AddNumberToObject(o, "step", (double)r->step);
            cJSON_AddStringToObject(o, "text", text);
            runlog_write(&r->log, o);
            printf("sample step %lld: %s\n", r->step, text);
            free(text);
        }
        if (stop || is_due(r->step, c->train.ckpt_every, max_steps)) save_checkpoint(r);
        if (stop) {
            int sig = g_stop_signal ? (int)g_stop_signal : SIGTERM;
            if (r->rank == 0)
                printf("signal %d: checkpoint at step %lld written; continue with ./train --resume %s\n", sig,
                       r->step, r->dir);
            runlog_close(&r->log);
            dist_finalize(&r->dist);
            exit(128 + sig);
        }
    }
    if (c->train.ckpt_every == 0) save_checkpoint(r); /* a finished run always leaves its final state */
    free(in);
    free(tgt);
}

int main(int argc, char **argv) {
    options_t o = parse_args(argc, argv);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    run_t r = {0};
    dist_init(&r.dist, &argc, &argv);
    setup(&r, &o);
    if (r.world > 1) dist_watchdog_start(&r.dist, r.cfg.train.watchdog_s);
    if (o.dump_dir) {
        size_t bt = (size_t)r.B * (size_t)r.T;
        int32_t *in = xmalloc(bt * sizeof(int32_t), "batch"), *tgt = xmalloc(bt * sizeof(int32_t), "batch");
        loader_next(r.train, in, tgt);
        char *cj = config_to_json(&r.cfg);
        make_dirs(o.dump_dir);
        model_dump(r.be, cj, in, tgt, r.B, r.T, (uint64_t)r.step, o.dump_dir);
        return 0;
    }
    train_loop(&r);
    runlog_close(&r.log);
    if (r.rank == 0) printf("done: %lld steps, run dir %s\n", r.step, r.dir);
    r.be->destroy(r.be);
    loader_close(r.train);
    loader_close(r.val);
    if (r.tok) tokenizer_free(r.tok);
    dist_finalize(&r.dist);
    return 0;
}
