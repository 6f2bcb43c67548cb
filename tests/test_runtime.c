/* Runtime: config parsing (every error class exits 2 naming the key/file), --set overrides,
 * checkpoint round trip and corruption detection, log truncation on resume, RNG properties. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "runtime/runlog.h"
#include "tests/test.h"

static char g_dir[256];

/* Runs fn(arg) in a child; returns its exit status and its stderr in buf. */
static int run_child(void (*fn)(const char *), const char *arg, char *buf, size_t size) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn(arg);
        exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t k;
    while ((k = read(fds[0], buf + n, size - 1 - n)) > 0) n += (size_t)k;
    buf[n] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void load_config_child(const char *path) {
    config_t c;
    config_defaults(&c);
    config_load_file(&c, path);
    config_validate(&c, path);
}

/* Each bad config must exit 2 with a message containing `expect`. */
static void check_bad_config(const char *json, const char *expect) {
    char path[300], err[4096];
    snprintf(path, sizeof path, "%s/bad.json", g_dir);
    write_text(path, json);
    int rc = run_child(load_config_child, path, err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, expect) && strstr(err, "bad.json"),
          "config %s: rc %d, stderr '%s' (want '%s')", json, rc, err, expect);
}

static void set_child(const char *assignment) {
    config_t c;
    config_defaults(&c);
    config_set(&c, assignment);
}

static void test_config(void) {
    check_bad_config("{\"model\": {\"n_layers\": 2}}", "model.n_layers");            /* unknown key */
    check_bad_config("{\"modle\": {}}", "modle");                                     /* unknown section */
    check_bad_config("{\"model\": {\"n_layer\": \"2\"}}", "model.n_layer");            /* wrong type */
    check_bad_config("{\"model\": {\"n_layer\": 2.5}}", "model.n_layer");              /* not an integer */
    check_bad_config("{\"model\": {\"n_layer\": 0}}", "model.n_layer");                /* out of range */
    check_bad_config("{\"attention\": {\"mode\": \"sparse\"}}", "attention.mode");    /* bad choice */
    check_bad_config("{\"attention\": {\"drop_prob\": 1.5}}", "attention.drop_prob");
    check_bad_config("{\"attention\": {\"n_buckets\": 3}}", "attention.n_buckets");   /* odd buckets */
    check_bad_config("{\"attention\": {\"dense_layers\": [9]}}", "dense_layers");     /* layer >= n_layer */
    check_bad_config("{\"model\": {\"n_embd\": 130}}", "model.n_embd");                /* not / n_head */
    check_bad_config("{\"train\": {\"total_batch_tokens\": 1000}}", "total_batch_tokens");
    check_bad_config("{\"model\": {\"bias\": 1}}", "model.bias");                      /* bool expected */
    check_bad_config("{\"model\": {\"n_layer\": 2, \"n_layer\": 3}}", "appears twice");
    check_bad_config("{\"model\": {\"n_layer\": 2,}", "invalid JSON");
    check_bad_config("[1, 2]", "top level");

    char err[4096];
    int rc = run_child(load_config_child, "/nonexistent/cfg.json", err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "/nonexistent/cfg.json"), "missing file: rc %d '%s'", rc, err);
    rc = run_child(set_child, "model.n_heads=3", err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "model.n_heads"), "--set unknown key: rc %d '%s'", rc, err);
    rc = run_child(set_child, "optim.lr=fast", err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "optim.lr"), "--set bad value: rc %d '%s'", rc, err);
    rc = run_child(set_child, "novalue", err, sizeof err);
    CHECK(rc == EXIT_USAGE, "--set without '=': rc %d", rc);

    config_t c;
    config_defaults(&c);
    config_set(&c, "attention.mode=hash_sparse");
    config_set(&c, "attention.n_buckets=32");
    config_set(&c, "optim.lr=3e-4");
    config_set(&c, "attention.dense_layers=0,2");
    config_set(&c, "model.bias=true");
    config_t one;
    config_defaults(&one);
    config_set(&one, "attention.dense_layers=1");
    CHECK(one.attention.n_dense_layers == 1 && one.attention.dense_layers[0] == 1, "--set list of one integer");
    CHECK(strcmp(c.attention.mode, "hash_sparse") == 0 && c.attention.n_buckets == 32 && c.optim.lr == 3e-4 &&
              c.attention.n_dense_layers == 2 && c.attention.dense_layers[1] == 2 && c.model.bias == 1,
          "--set overrides applied");

    /* The printed config reloads to the same config (what config.json in a run dir relies on). */
    char *json = config_to_json(&c);
    char path[300];
    snprintf(path, sizeof path, "%s/roundtrip.json", g_dir);
    write_text(path, json);
    config_t d;
    config_defaults(&d);
    config_load_file(&d, path);
    char *json2 = config_to_json(&d);
    CHECK(strcmp(json, json2) == 0, "config JSON round trip");
    free(json);
    free(json2);
}

static size_t g_n = 1001;

static void read_ckpt_child(const char *path) {
    ckpt_meta_t meta;
    float *p = malloc(g_n * 4), *m = malloc(g_n * 4), *v = malloc(g_n * 4);
    ckpt_read(path, &meta, g_n, p, m, v);
}

static void corrupt_copy(const char *src, const char *dst, long flip_at, long truncate_to) {
    FILE *f = fopen(src, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    if (flip_at >= 0) buf[flip_at] ^= 0x10;
    if (truncate_to >= 0) n = truncate_to;
    f = fopen(dst, "wb");
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
    free(buf);
}

static void test_checkpoint(void) {
    float *p = malloc(g_n * 4), *m = malloc(g_n * 4), *v = malloc(g_n * 4);
    for (size_t i = 0; i < g_n; i++) {
        p[i] = rng_normal(7, i);
        m[i] = rng_normal(8, i);
        v[i] = rng_uniform(9, i);
    }
    ckpt_meta_t meta = {.step = 42, .tokens = 12345, .n_params = g_n, .world_size = 2};
    for (int i = 0; i < CKPT_LOADER_WORDS; i++) meta.loader_state[i] = 1000u + (uint64_t)i;
    meta.config_json = "{\"a\": 1}";
    char path[300];
    ckpt_path(path, sizeof path, g_dir, 42);
    ckpt_write(path, &meta, p, m, v);
    ckpt_meta_t got;
    float *p2 = malloc(g_n * 4), *m2 = malloc(g_n * 4), *v2 = malloc(g_n * 4);
    ckpt_read(path, &got, g_n, p2, m2, v2);
    CHECK(got.step == 42 && got.tokens == 12345 && got.world_size == 2 && got.loader_state[7] == 1007 &&
              strcmp(got.config_json, meta.config_json) == 0,
          "checkpoint meta round trip");
    CHECK(!memcmp(p, p2, g_n * 4) && !memcmp(m, m2, g_n * 4) && !memcmp(v, v2, g_n * 4),
          "checkpoint arrays bit-identical");

    char bad[320], err[4096];
    snprintf(bad, sizeof bad, "%s/bad_ckpt.bin", g_dir);
    corrupt_copy(path, bad, 500, -1);
    int rc = run_child(read_ckpt_child, bad, err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "corrupt") && strstr(err, "bad_ckpt.bin"), "flipped bit: rc %d '%s'", rc, err);
    corrupt_copy(path, bad, -1, 3000);
    rc = run_child(read_ckpt_child, bad, err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "truncated"), "truncated: rc %d '%s'", rc, err);
    corrupt_copy(path, bad, 2, -1);
    rc = run_child(read_ckpt_child, bad, err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "not a checkpoint"), "bad magic: rc %d '%s'", rc, err);
    rc = run_child(read_ckpt_child, "/nonexistent/ckpt.bin", err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "/nonexistent/ckpt.bin"), "missing: rc %d '%s'", rc, err);
    g_n = 1000; /* model of another size */
    rc = run_child(read_ckpt_child, path, err, sizeof err);
    CHECK(rc == EXIT_USAGE && strstr(err, "parameters"), "size mismatch: rc %d '%s'", rc, err);
    g_n = 1001;

    for (uint64_t s = 43; s <= 46; s++) {
        meta.step = s;
        ckpt_path(path, sizeof path, g_dir, s);
        ckpt_write(path, &meta, p, m, v);
    }
    ckpt_prune(g_dir, 2);
    CHECK(ckpt_latest_step(g_dir) == 46, "latest step");
    ckpt_path(path, sizeof path, g_dir, 44);
    CHECK(access(path, F_OK) != 0, "pruned old checkpoint");
    ckpt_path(path, sizeof path, g_dir, 45);
    CHECK(access(path, F_OK) == 0, "kept newest two");
    free(p), free(m), free(v), free(p2), free(m2), free(v2);
}

static void test_runlog(void) {
    runlog_t log;
    runlog_create(&log, g_dir);
    for (int s = 1; s <= 5; s++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "step");
        cJSON_AddNumberToObject(o, "step", s);
        cJSON_AddNumberToObject(o, "elapsed_s", s * 1.5);
        runlog_write(&log, o);
    }
    runlog_close(&log);
    runlog_resume(&log, g_dir, 3);
    CHECK(log.last_elapsed_s == 4.5, "resume restores elapsed time (%g)", log.last_elapsed_s);
    runlog_close(&log);
    char path[300];
    snprintf(path, sizeof path, "%s/log.jsonl", g_dir);
    FILE *f = fopen(path, "r");
    int lines = 0;
    char line[256];
    while (fgets(line, sizeof line, f)) lines++;
    fclose(f);
    CHECK(lines == 3, "log truncated to the checkpoint step (%d lines)", lines);
}

static void test_rng(void) {
    uint64_t k1 = rng_key(1, RNG_DOMAIN_ATTN, 5, 2, 0), k2 = rng_key(1, RNG_DOMAIN_ATTN, 5, 2, 1);
    CHECK(k1 != k2 && k1 == rng_key(1, RNG_DOMAIN_ATTN, 5, 2, 0), "keys deterministic and distinct");
    double sum = 0, sum2 = 0;
    int n = 200000, below = 0;
    for (int i = 0; i < n; i++) {
        double x = rng_normal(k1, (uint64_t)i);
        sum += x;
        sum2 += x * x;
        below += rng_u24(k2, (uint64_t)i) < rng_drop_threshold(0.3);
    }
    CHECK(fabs(sum / n) < 0.01 && fabs(sum2 / n - 1) < 0.02, "normal mean %g var %g", sum / n, sum2 / n);
    CHECK(fabs((double)below / n - 0.3) < 0.005, "bernoulli rate %g", (double)below / n);
    CHECK(rng_drop_threshold(0) == 0 && rng_drop_threshold(1) == 16777216u, "threshold ends");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_runtime_%d", (int)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", g_dir, g_dir);
    if (system(cmd) != 0) return 1;
    test_config();
    test_checkpoint();
    test_runlog();
    test_rng();
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
