/* Helper of tests/test_tokenizer_exact.sh: encodes a text file with our tokenizer, once with one
 * thread and once with a tok_pool_t, checks that both give the same ids, and compares them with
 * the reference encoder's ids (int32 little-endian file), printing the first difference with
 * its context. Built by the test script against build/libcore.a.
 * Usage: encode_ids ENCODER_JSON VOCAB_BPE TEXT REF_IDS THREADS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "runtime/error.h"

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xmalloc(*len + 1, path);
    if (fread(buf, 1, *len, f) != *len) fatal(EXIT_USAGE, "cannot read %s", path);
    fclose(f);
    return buf;
}

static void print_ids(const char *label, const int32_t *ids, size_t n, size_t from, size_t to) {
    printf("  %s:", label);
    for (size_t i = from; i < to && i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 6) fatal(EXIT_USAGE, "usage: encode_ids ENCODER_JSON VOCAB_BPE TEXT REF_IDS THREADS");
    tokenizer_t *tok = tokenizer_load(argv[1], argv[2]);
    size_t text_len, ref_bytes;
    char *text = read_file(argv[3], &text_len);
    int32_t *ref = (int32_t *)read_file(argv[4], &ref_bytes);
    size_t n_ref = ref_bytes / sizeof(int32_t);

    size_t n_single;
    int32_t *single = tokenizer_encode(tok, text, text_len, &n_single);
    tok_pool_t *pool = tok_pool_new(tok, atoi(argv[5]));
    tok_ids_t pooled = {0};
    tok_pool_encode(pool, text, text_len, &pooled);
    int failed = 0;
    if (pooled.n != n_single || memcmp(pooled.ids, single, n_single * sizeof(int32_t)) != 0) {
        printf("multi-threaded encoding (%zu ids) differs from single-threaded (%zu ids)\n", pooled.n, n_single);
        failed = 1;
    }
    size_t first_diff = 0;
    while (first_diff < n_single && first_diff < n_ref && single[first_diff] == ref[first_diff]) first_diff++;
    if (first_diff < n_single || first_diff < n_ref) {
        size_t from = first_diff > 5 ? first_diff - 5 : 0;
        printf("ids differ from the reference at index %zu (ours %zu ids, reference %zu ids)\n", first_diff,
               n_single, n_ref);
        print_ids("ours", single, n_single, from, first_diff + 6);
        print_ids("ref ", ref, n_ref, from, first_diff + 6);
        size_t len;
        char *ctx = tokenizer_decode(tok, single + from, (first_diff + 6 < n_single ? first_diff + 6 : n_single) - from, &len);
        printf("  text near there: \"%s\"\n", ctx);
        free(ctx);
        failed = 1;
    }
    size_t len;
    char *round = tokenizer_decode(tok, single, n_single, &len);
    if (len != text_len || memcmp(round, text, len) != 0) {
        printf("decode(encode(text)) != text\n");
        failed = 1;
    }
    printf("%zu bytes -> %zu ids; reference %zu ids; %s\n", text_len, n_single, n_ref, failed ? "MISMATCH" : "identical");
    free(round);
    free(single);
    tok_ids_free(&pooled);
    tok_pool_free(pool);
    free(text);
    free(ref);
    tokenizer_free(tok);
    return failed;
}
