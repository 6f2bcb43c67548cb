/* Loader tests on small random shards of awkward sizes: window contents, every epoch visits
 * every window once, ranks take disjoint windows, seeded shuffles, validation order fixed,
 * exact resume from a saved state (also across epoch boundaries), and bad shards or states give
 * one message naming the file or what differs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/shard.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"
#include "tests/tokenizer/expect_fatal.h"

#define VOCAB 50257
#define T 37
#define B 3
static char dir[] = "/tmp/test_loader_XXXXXX";
static char pattern[512];
static const size_t shard_sizes[3] = {1000, 2345, 778}; /* windows: 27 + 63 + 21 = 111 */
static uint16_t *shard_data[3];
#define N_WINDOWS 111

static void make_shards(void) {
    if (!mkdtemp(dir)) fatal(EXIT_RUNTIME, "mkdtemp failed");
    for (int s = 0; s < 3; s++) {
        shard_data[s] = xmalloc(shard_sizes[s] * sizeof(uint16_t), "shard");
        uint64_t key = rng_key(5, 100, (uint64_t)s, 0, 0);
        for (size_t i = 0; i < shard_sizes[s]; i++) shard_data[s][i] = (uint16_t)(rng_u64(key, i) % VOCAB);
        char path[600];
        snprintf(path, sizeof path, "%s/t_train_%06d.bin", dir, s);
        shard_write(path, shard_data[s], shard_sizes[s]);
    }
    snprintf(pattern, sizeof pattern, "%s/t_train_*.bin", dir);
}

/* Which global window (shard order) holds exactly these T+1 tokens; -1 if none. */
static int find_window(const int32_t *in, const int32_t *tg) {
    int g = 0;
    for (int s = 0; s < 3; s++)
        for (size_t w = 0; w < (shard_sizes[s] - 1) / T; w++, g++) {
            const uint16_t *p = shard_data[s] + w * T;
            int same = 1;
            for (int t = 0; t < T && same; t++) same = p[t] == in[t] && p[t + 1] == tg[t];
            if (same) return g;
        }
    return -1;
}

/* Runs `steps` batches and records the window of every row. */
static void windows_of(loader_t *l, int steps, int *out) {
    int32_t in[B * T], tg[B * T];
    for (int k = 0; k < steps; k++) {
        loader_next(l, in, tg);
        for (int b = 0; b < B; b++) out[k * B + b] = find_window(in + b * T, tg + b * T);
    }
}

static void test_order_and_coverage(void) {
    loader_t *l = loader_open(pattern, B, T, 0, 1, 9, 0, VOCAB);
    CHECK(loader_windows_per_epoch(l) == N_WINDOWS, "windows %llu", (unsigned long long)loader_windows_per_epoch(l));
    CHECK(loader_tokens(l) == 1000 + 2345 + 778, "tokens");
    int w[40 * B];
    windows_of(l, 40, w); /* 120 rows: one epoch and 9 rows into the next */
    int in_order = 1;
    for (int i = 0; i < 40 * B; i++) in_order &= w[i] == i % N_WINDOWS;
    CHECK(in_order, "shuffle=0 must read windows in shard order, wrapping at the epoch end");
    loader_reset(l);
    int again[40 * B];
    windows_of(l, 40, again);
    CHECK(memcmp(w, again, sizeof w) == 0, "loader_reset must give the same batches again");
    loader_close(l);

    /* Shuffled: each epoch is a permutation, epochs differ, seeds differ. */
    l = loader_open(pattern, B, T, 0, 1, 9, 1, VOCAB);
    int sw[74 * B]; /* 222 rows = two epochs exactly */
    windows_of(l, 74, sw);
    for (int e = 0; e < 2; e++) {
        int seen[N_WINDOWS] = {0}, ok = 1;
        for (int i = 0; i < N_WINDOWS; i++) ok &= sw[e * N_WINDOWS + i] >= 0 && !seen[sw[e * N_WINDOWS + i]]++;
        CHECK(ok, "epoch %d of the shuffled stream is not a permutation of all windows", e);
    }
    CHECK(memcmp(sw, sw + N_WINDOWS, N_WINDOWS * sizeof(int)) != 0, "two epochs in the same order");
    CHECK(loader_epoch(l) == 2, "epoch counter %llu", (unsigned long long)loader_epoch(l));
    loader_close(l);
    loader_t *other = loader_open(pattern, B, T, 0, 1, 10, 1, VOCAB);
    int ow[37 * B];
    windows_of(other, 37, ow);
    CHECK(memcmp(ow, sw, sizeof ow) != 0, "different seeds gave the same order");
    loader_close(other);
}

static void test_ranks_disjoint(void) {
    const int world = 3, steps = 12; /* 3 ranks x 12 steps x 3 rows = 108 <= 111 windows */
    int seen[N_WINDOWS] = {0}, ok = 1;
    for (int r = 0; r < world; r++) {
        loader_t *l = loader_open(pattern, B, T, r, world, 4, 1, VOCAB);
        int w[12 * B];
        windows_of(l, steps, w);
        for (int i = 0; i < steps * B; i++) ok &= w[i] >= 0 && !seen[w[i]]++;
        loader_close(l);
    }
    CHECK(ok, "ranks read overlapping windows within one epoch");
}

static void test_resume_exact(void) {
    for (int shuffle = 0; shuffle < 2; shuffle++) {
        loader_t *a = loader_open(pattern, B, T, 1, 2, 77, shuffle, VOCAB);
        int32_t in_a[B * T], tg_a[B * T], in_b[B * T], tg_b[B * T];
        for (int k = 0; k < 31; k++) loader_next(a, in_a, tg_a); /* into the second epoch */
        loader_state_t st = loader_get_state(a);
        loader_t *b = loader_open(pattern, B, T, 1, 2, 77, shuffle, VOCAB);
        loader_set_state(b, &st);
        int same = 1;
        for (int k = 0; k < 50; k++) { /* crosses two more epoch boundaries */
            loader_next(a, in_a, tg_a);
            loader_next(b, in_b, tg_b);
            same &= memcmp(in_a, in_b, sizeof in_a) == 0 && memcmp(tg_a, tg_b, sizeof tg_a) == 0;
        }
        CHECK(same, "resumed loader (shuffle=%d) differs from the uninterrupted one", shuffle);
        loader_close(a);
        loader_close(b);
    }
}

/* ---- error paths ---- */

typedef struct {
    const char *pattern;
    int T_, B_;
} open_args_t;

static void open_only(void *arg) {
    open_args_t *a = arg;
    loader_open(a->pattern, a->B_, a->T_, 0, 1, 1, 1, VOCAB);
}

static void write_raw(const char *path, const int32_t *header, const uint16_t *tokens, size_t n, size_t header_ints) {
    FILE *f = fopen(path, "wb");
    fwrite(header, sizeof(int32_t), header_ints, f);
    fwrite(tokens, sizeof(uint16_t), n, f);
    fclose(f);
}

static void test_bad_shards(void) {
    char p[600];
    uint16_t tokens[200];
    for (int i = 0; i < 200; i++) tokens[i] = (uint16_t)(i * 97 % VOCAB);
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, 200};
    struct {
        const char *name, *needle;
        int T_;
    } cases[] = {{"wrong_magic", "wrong magic", 10}, {"truncated", "truncated", 10}, {"short_header", "shorter than", 10},
                 {"bad_id", "position 7", 10}, {"too_short", "fewer than seq_len", 300}, {"version", "version", 10}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(p, sizeof p, "%s/%s.bin", dir, cases[c].name);
        int32_t h[SHARD_HEADER_INTS];
        memcpy(h, header, sizeof h);
        uint16_t tk[200];
        memcpy(tk, tokens, sizeof tk);
        size_t n = 200, header_ints = SHARD_HEADER_INTS;
        if (c == 0) h[0] = 20240521;
        if (c == 1) n = 150;
        if (c == 2) header_ints = 100, n = 0;
        if (c == 3) tk[7] = 60000;
        if (c == 5) h[1] = 2;
        write_raw(p, h, tk, n, header_ints);
        open_args_t a = {p, cases[c].T_, 2};
        CHECK(expect_fatal(open_only, &a, EXIT_USAGE, cases[c].name) && expect_fatal(open_only, &a, EXIT_USAGE, cases[c].needle),
              "shard case %s", cases[c].name);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/nothing_*.bin", dir);
    open_args_t none = {p, 10, 2};
    CHECK(expect_fatal(open_only, &none, EXIT_USAGE, "nothing_*.bin"), "pattern matching no file");
}

static loader_state_t saved_state;
static void set_state_other_B(void *arg) {
    loader_t *l = loader_open(pattern, B + 1, T, 0, 1, 77, 1, VOCAB);
    loader_set_state(l, &saved_state);
}
static void set_state_other_shards(void *arg) {
    char p[600];
    snprintf(p, sizeof p, "%s/t_train_00000[01].bin", dir);
    loader_t *l = loader_open(p, B, T, 0, 1, 77, 1, VOCAB);
    loader_set_state(l, &saved_state);
}

static void test_bad_state(void) {
    loader_t *l = loader_open(pattern, B, T, 0, 1, 77, 1, VOCAB);
    int32_t in[B * T], tg[B * T];
    loader_next(l, in, tg);
    saved_state = loader_get_state(l);
    loader_close(l);
    CHECK(expect_fatal(set_state_other_B, NULL, EXIT_USAGE, "micro-batch size 3, this run has 4"), "state with other B");
    CHECK(expect_fatal(set_state_other_shards, NULL, EXIT_USAGE, "does not fit these shards"), "state with other shards");
}

int main(void) {
    make_shards();
    test_order_and_coverage();
    test_ranks_disjoint();
    test_resume_exact();
    test_bad_shards();
    test_bad_state();
    for (int s = 0; s < 3; s++) {
        char path[600];
        snprintf(path, sizeof path, "%s/t_train_%06d.bin", dir, s);
        unlink(path);
        free(shard_data[s]);
    }
    rmdir(dir);
    return test_summary();
}
