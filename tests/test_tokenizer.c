/* Tokenizer tests that need no JavaScript: known ids (taken from the reference encoder), exact
 * round trips on random bytes (invalid UTF-8 included), multi-threaded == single-threaded,
 * cutting at pretok_find_cut changes nothing, the merge cache survives being cleared, and bad
 * tokenizer files give one message naming the file. Exactness against the reference encoder on
 * a large text set is tests/test_tokenizer_exact.sh.
 * Run from the repo root; fetches the tokenizer files with scripts/get_tokenizer.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"
#include "tests/tokenizer/expect_fatal.h"

#define ENCODER "tokenizer/encoder.json"
#define VOCAB "tokenizer/vocab.bpe"

static tokenizer_t *tok;

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof(int32_t)) == 0);
}

/* Ids from the reference encoder (node: require('gpt-3-encoder').encode(s)). */
static void test_known_ids(void) {
    struct {
        const char *text;
        int32_t ids[16];
        size_t n;
    } cases[] = {
        {"Hello world", {15496, 995}, 2},
        {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}, 7},
        {" DON'T you'll   \n\n  x", {23917, 6, 51, 345, 1183, 220, 220, 220, 628, 220, 2124}, 11},
        {"12345678 \xc2\xbd \xf0\x9d\x9f\x98", {10163, 2231, 30924, 25208, 220, 47728, 253, 246}, 8},
        {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88",
         {33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302}, 10},
        {"   ", {220, 220, 220}, 3},
        {"a\xe3\x80\x80\xe3\x80\x80" "b", {64, 5099, 222, 5099, 222, 65}, 6},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t n;
        int32_t *ids = tokenizer_encode(tok, cases[c].text, strlen(cases[c].text), &n);
        CHECK(ids_equal(ids, n, cases[c].ids, cases[c].n), "ids of \"%s\" differ from the reference (%zu ids)",
              cases[c].text, n);
        free(ids);
    }
    CHECK(tokenizer_vocab_size(tok) == 50257, "vocab size %d", tokenizer_vocab_size(tok));
    CHECK(tokenizer_eot(tok) == 50256, "eot id %d", tokenizer_eot(tok));
    size_t len;
    int32_t eot = tokenizer_eot(tok);
    char *s = tokenizer_decode(tok, &eot, 1, &len);
    CHECK(len == 13 && memcmp(s, "<|endoftext|>", 13) == 0, "decode(eot) = \"%s\"", s);
    free(s);
    size_t n_empty;
    int32_t *empty = tokenizer_encode(tok, "", 0, &n_empty);
    CHECK(n_empty == 0, "empty text gave %zu ids", n_empty);
    free(empty);
}

/* Random bytes of three kinds: any byte; mostly valid UTF-8 with stray invalid bytes; ASCII
 * words with whitespace runs. */
static size_t random_text(uint64_t key, char *buf, size_t len, int kind) {
    static const char *const pieces[] = {"the", " cat", "'s", "'LL", "  ", "\n", "\t", "42", "\xc3\xa9", "\xe4\xb8\xad",
                                         "\xf0\x9f\x98\x80", "\xe2\x80\x8a", "\xef\xbb\xbf", "!!", " ", "\xc2\xa0"};
    size_t n = 0;
    for (uint64_t i = 0; n < len; i++) {
        uint64_t r = rng_u64(key, i);
        if (kind == 0) {
            buf[n++] = (char)(r & 0xff);
        } else {
            const char *p = pieces[r % 16];
            if (kind == 1 && (r >> 8) % 13 == 0) p = (r >> 16) % 2 ? "\xff" : "\xe4\xb8"; /* invalid / truncated */
            size_t pl = strlen(p);
            if (n + pl > len) pl = len - n;
            memcpy(buf + n, p, pl);
            n += pl;
        }
    }
    return n;
}

static void test_round_trip_random_bytes(void) {
    tok_encoder_t *enc = tok_encoder_new(tok);
    char *buf = xmalloc(5000, "text");
    int failures = 0;
    for (int t = 0; t < 300; t++) {
        uint64_t key = rng_key(7, 100, (uint64_t)t, 0, 0);
        size_t len = 1 + rng_u64(key, 999999) % 4999;
        random_text(key, buf, len, t % 3);
        tok_ids_t ids = {0};
        tok_encode(enc, buf, len, &ids);
        size_t out_len;
        char *back = tokenizer_decode(tok, ids.ids, ids.n, &out_len);
        int ok = out_len == len && memcmp(back, buf, len) == 0;
        for (size_t i = 0; i < ids.n; i++) ok &= ids.ids[i] >= 0 && ids.ids[i] < tokenizer_eot(tok);
        failures += !ok;
        free(back);
        tok_ids_free(&ids);
    }
    CHECK(failures == 0, "%d of 300 random byte strings did not round-trip exactly", failures);
    free(buf);
    tok_encoder_free(enc);
}

/* A large text (over a million distinct-ish pieces) through one encoder: exercises the cache
 * being cleared when full, the pool's chunking, and the cut rule. */
static void test_pool_cache_and_cuts(void) {
    size_t len = 3000017;
    char *text = xmalloc(len, "text");
    /* Random lowercase words: mostly distinct, so the cache fills up. */
    uint64_t key = rng_key(11, 100, 1, 0, 0);
    for (size_t i = 0; i < len; i++) {
        uint64_t r = rng_u64(key, i);
        text[i] = r % 7 == 0 ? (r % 21 == 0 ? '\n' : ' ') : (char)('a' + (r >> 8) % 26);
    }
    size_t n_single;
    int32_t *single = tokenizer_encode(tok, text, len, &n_single);
    tok_pool_t *pool = tok_pool_new(tok, 3);
    tok_ids_t pooled = {0};
    tok_pool_encode(pool, text, len, &pooled);
    CHECK(ids_equal(pooled.ids, pooled.n, single, n_single), "3-thread pool differs from one thread (%zu vs %zu ids)",
          pooled.n, n_single);
    /* Encoding again with the same (now full, cleared at least once) caches gives the same ids. */
    tok_ids_t again = {0};
    tok_pool_encode(pool, text, len, &again);
    CHECK(ids_equal(again.ids, again.n, single, n_single), "second pass through warm caches differs");
    /* Cutting the first 200 kB at every cut point the rule finds, encoding the parts apart. */
    size_t part_len = 200003;
    tok_encoder_t *enc = tok_encoder_new(tok);
    tok_ids_t parts = {0};
    size_t n_cuts = 0;
    for (size_t start = 0; start < part_len;) {
        size_t end = pretok_find_cut(text, part_len, start + 1);
        tok_encode(enc, text + start, end - start, &parts);
        start = end;
        n_cuts++;
    }
    size_t n_whole;
    int32_t *whole = tokenizer_encode(tok, text, part_len, &n_whole);
    CHECK(n_cuts > 10000, "only %zu cuts found", n_cuts);
    CHECK(ids_equal(parts.ids, parts.n, whole, n_whole), "encoding cut at pretok_find_cut points differs");
    free(whole);
    tok_ids_free(&parts);
    tok_encoder_free(enc);
    tok_ids_free(&again);
    tok_ids_free(&pooled);
    tok_pool_free(pool);
    free(single);
    free(text);
}

static void write_file(const char *path, const char *content) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal(EXIT_RUNTIME, "cannot write %s", path);
    fputs(content, f);
    fclose(f);
}

static void load_pair(void *arg) {
    const char **paths = arg;
    tokenizer_load(paths[0], paths[1]);
}

static void decode_bad_id(void *arg) {
    int32_t bad = 50257;
    size_t len;
    tokenizer_decode(tok, &bad, 1, &len);
}

static void test_bad_files(void) {
    char dir[] = "/tmp/test_tokenizer_XXXXXX";
    if (!mkdtemp(dir)) fatal(EXIT_RUNTIME, "mkdtemp failed");
    char not_json[300], bad_vocab[300], missing_merge[300], missing[300];
    snprintf(not_json, sizeof not_json, "%s/not_json.json", dir);
    snprintf(bad_vocab, sizeof bad_vocab, "%s/three_parts.bpe", dir);
    snprintf(missing_merge, sizeof missing_merge, "%s/unknown_token.bpe", dir);
    snprintf(missing, sizeof missing, "%s/does_not_exist.json", dir);
    write_file(not_json, "[1, 2, 3]");
    write_file(bad_vocab, "#version: 0.2\n\xc4\xa0 t\n\xc4\xa0 a b\n");
    write_file(missing_merge, "#version: 0.2\n\xc4\xa0 t\nzzqx qqzz\n");
    const char *c1[2] = {not_json, VOCAB}, *c2[2] = {ENCODER, bad_vocab}, *c3[2] = {ENCODER, missing_merge},
               *c4[2] = {missing, VOCAB};
    CHECK(expect_fatal(load_pair, c1, EXIT_USAGE, "not_json.json"), "encoder.json that is not an object");
    CHECK(expect_fatal(load_pair, c2, EXIT_USAGE, "three_parts.bpe:3"), "vocab.bpe line with three tokens");
    CHECK(expect_fatal(load_pair, c3, EXIT_USAGE, "unknown_token.bpe:3"), "merge of unknown tokens");
    CHECK(expect_fatal(load_pair, c4, EXIT_USAGE, "does_not_exist.json"), "missing file");
    CHECK(expect_fatal(decode_bad_id, NULL, EXIT_USAGE, "50257"), "decoding an id outside the vocabulary");
    remove(not_json);
    remove(bad_vocab);
    remove(missing_merge);
    remove(dir);
}

int main(void) {
    if (system("bash scripts/get_tokenizer.sh") != 0) {
        CHECK(0, "scripts/get_tokenizer.sh failed: cannot test the tokenizer");
        return test_summary();
    }
    tok = tokenizer_load(ENCODER, VOCAB);
    test_known_ids();
    test_round_trip_random_bytes();
    test_pool_cache_and_cuts();
    test_bad_files();
    tokenizer_free(tok);
    return test_summary();
}
