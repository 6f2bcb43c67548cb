/* Tokenizer throughput: encodes a text file with one thread and with a pool of N threads and
 * prints MB/s (1 MB = 10^6 bytes of
 * input text), by wall clock and by the process's CPU time (the latter says what the code costs
 * when other programs share the cores): for a first run with empty merge caches and for the
 * best of REPEATS further runs with the caches warm. Built and run by
 * bench/tokenizer/run.sh.
 * Usage: bench_tokenizer ENCODER_JSON VOCAB_BPE TEXT THREADS REPEATS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "data/tokenizer.h"
#include "runtime/error.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + 1e-6 * (double)r.ru_utime.tv_usec + (double)r.ru_stime.tv_sec +
           1e-6 * (double)r.ru_stime.tv_usec;
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
        /* Run 0 starts with empty caches (and untouched cache memory); runs 1.. reuse the pool
         * as prepare does over a corpus. */
        tok_pool_t *pool = tok_pool_new(tok, thread_counts[k]);
        double cold = 0, cold_cpu = 0, best = 1e30, best_cpu = 1e30;
        size_t n_ids = 0;
        for (int r = 0; r <= repeats; r++) {
            tok_ids_t ids = {0};
            double start = now_s(), start_cpu = cpu_s();
            tok_pool_encode(pool, text, len, &ids);
            double s = now_s() - start, c = cpu_s() - start_cpu;
            if (r == 0) cold = s, cold_cpu = c;
            else if (s < best) best = s, best_cpu = c;
            n_ids = ids.n;
            tok_ids_free(&ids);
        }
        tok_pool_free(pool);
        double mb = (double)len / 1e6;
        printf("ours, %d thread%s, %zu ids: cold caches %.1f MB/s (%.1f MB per CPU-s); warm, best of %d: %.1f MB/s "
               "(%.1f MB per CPU-s)\n", thread_counts[k], thread_counts[k] > 1 ? "s" : "", n_ids, mb / cold,
               mb / cold_cpu, repeats, mb / best, mb / best_cpu);
    }
    free(text);
    tokenizer_free(tok);
    return 0;
}
