/* Tokenizer throughput: encodes a text file with one thread and with a pool of N threads, each
 * run starting from empty merge caches (new encoders), and prints MB/s (1 MB = 10^6 bytes of
 * input text) for the best of REPEATS runs. Built and run by bench/tokenizer/run.sh.
 * Usage: bench_tokenizer ENCODER_JSON VOCAB_BPE TEXT THREADS REPEATS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/tokenizer.h"
#include "runtime/error.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 6) fatal(EXIT_USAGE, "usage: bench_tokenizer ENCODER_JSON VOCAB_BPE TEXT THREADS REPEATS");
    double t0 = now_s();
    tokenizer_t *tok = tokenizer_load(argv[1], argv[2]);
    double load_s = now_s() - t0;
    FILE *f = fopen(argv[3], "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open %s", argv[3]);
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = xmalloc(len, "text");
    if (fread(text, 1, len, f) != len) fatal(EXIT_USAGE, "cannot read %s", argv[3]);
    fclose(f);
    int threads = atoi(argv[4]), repeats = atoi(argv[5]);
    if (threads < 1 || repeats < 1) fatal(EXIT_USAGE, "THREADS and REPEATS must be >= 1");
    printf("text %s: %.2f MB; tokenizer load %.3f s\n", argv[3], (double)len / 1e6, load_s);

    int thread_counts[2] = {1, threads};
    for (int k = 0; k < (threads > 1 ? 2 : 1); k++) {
        double best = 1e30;
        size_t n_ids = 0;
        for (int r = 0; r < repeats; r++) {
            tok_pool_t *pool = tok_pool_new(tok, thread_counts[k]);
            tok_ids_t ids = {0};
            double start = now_s();
            tok_pool_encode(pool, text, len, &ids);
            double s = now_s() - start;
            if (s < best) best = s;
            n_ids = ids.n;
            tok_ids_free(&ids);
            tok_pool_free(pool);
        }
        printf("ours, %d thread%s: %.1f MB/s (%zu ids, best of %d: %.3f s)\n", thread_counts[k],
               thread_counts[k] > 1 ? "s" : "", (double)len / 1e6 / best, n_ids, repeats, best);
    }
    free(text);
    tokenizer_free(tok);
    return 0;
}
