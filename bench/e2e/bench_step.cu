/* End-to-end training-step benchmark of the CUDA backend: GPT-2 small (12 layers, 12 heads,
 * 768 wide, vocabulary 50257 padded to 50304, no biases, tied head) on random tokens, timing
 * zero_grad + forward + backward + grad norm + AdamW exactly as train.c runs a step with one
 * micro-batch (sparse modes: plans built every step, with a new key). One JSON line per run.
 *   bench_step --seq 8192 --batch 4 [--steps 20] [--warmup 3] [--layers 12] [--deterministic]
 *              [--mode dense|qk_sparse|hash_sparse] [--buckets 16] [--drop 0.5]
 *              [--sparse-grid N]   (the sparse Hopper kernels' grid, sparse_attn_set_persistent:
 *                                   0 a CTA per tile, -1 persistent (the default))
 *              [--trace FILE]      (every kernel's in-stream start and end, and marks at each
 *                                   step's start and at the ends of its forward, backward and
 *                                   update, as CSV: bench/e2e/kernel_trace.cu, trace_summary.py) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <vector>

#include "attention/cuda/sparse_attn.h"
#include "bench/e2e/kernel_trace.h"
#include "model/cuda/backend_cuda.h"
#include "model/cuda/cuda_common.cuh"

extern "C" {
#include "runtime/rng.h"
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int arg_int(int argc, char **argv, const char *name, int fallback) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return atoi(argv[i + 1]);
    return fallback;
}

static int has_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

static const char *arg_str(int argc, char **argv, const char *name, const char *fallback) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv) {
    const int T = arg_int(argc, argv, "--seq", 8192), B = arg_int(argc, argv, "--batch", 4);
    const int steps = arg_int(argc, argv, "--steps", 20), warmup = arg_int(argc, argv, "--warmup", 3);
    const int layers = arg_int(argc, argv, "--layers", 12);
    const int deterministic = has_flag(argc, argv, "--deterministic");
    const int sparse_grid = arg_int(argc, argv, "--sparse-grid", -1);
    if (sparse_grid != -1) sparse_attn_set_persistent(sparse_grid); /* -1 is the library's default */
    if (T < 1 || B < 1 || steps < 1 || warmup < 0 || layers < 1)
        fatal(EXIT_USAGE, "bench_step: --seq, --batch, --steps, --layers must be >= 1, --warmup >= 0");

    gpt_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_layer = layers;
    cfg.n_head = 12;
    cfg.n_embd = 768;
    cfg.vocab_size = 50257;
    cfg.padded_vocab = 50304;
    cfg.seq_len = T;
    const char *mode = arg_str(argc, argv, "--mode", "dense");
    if (attn_mode_parse(mode, &cfg.attn.mode) != 0)
        fatal(EXIT_USAGE, "bench_step: --mode %s: want dense, qk_sparse or hash_sparse", mode);
    cfg.attn.n_buckets = cfg.attn.mode == ATTN_HASH_SPARSE ? arg_int(argc, argv, "--buckets", 16) : 1;
    cfg.attn.drop_prob = cfg.attn.mode == ATTN_QK_SPARSE ? (float)atof(arg_str(argc, argv, "--drop", "0.5")) : 0.0f;
    cfg.seed = 1337;

    const char *trace = arg_str(argc, argv, "--trace", NULL);
    if (trace) kernel_trace_start();

    size_t free0, total;
    CUDA_CHECK(cudaFree(0)); /* create the context before the baseline reading */
    CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    backend_t *b = backend_cuda_create(&cfg, B, T);
    backend_cuda_set_deterministic(b, deterministic);

    const size_t N = (size_t)B * T;
    std::vector<int32_t> in(N), tg(N);
    for (size_t i = 0; i < N; i++) {
        in[i] = (int32_t)(rng_u64(7, i) % 50257);
        tg[i] = (int32_t)(rng_u64(8, i) % 50257);
    }
    const adamw_hparams_t h = {6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    std::vector<double> t_step, t_fwd, t_bwd, t_opt;
    float loss = 0;
    for (int s = 0; s < warmup + steps; s++) {
        const double t0 = now_s();
        if (trace) kernel_trace_mark("step");
        b->zero_grad(b);
        loss = b->forward(b, in.data(), tg.data(), B, T, (uint64_t)s, 0); /* syncs */
        const double t1 = now_s();
        if (trace) kernel_trace_mark("forward");
        b->backward(b, 1.0f);
        CUDA_CHECK(cudaDeviceSynchronize());
        const double t2 = now_s();
        if (trace) kernel_trace_mark("backward");
        const double norm = b->grad_norm(b);
        b->update(b, &h, s + 1, grad_clip_factor(norm, 1.0f)); /* syncs */
        const double t3 = now_s();
        if (trace) kernel_trace_mark("update");
        if (s >= warmup) {
            t_step.push_back(t3 - t0);
            t_fwd.push_back(t1 - t0);
            t_bwd.push_back(t2 - t1);
            t_opt.push_back(t3 - t2);
        }
    }
    size_t free1;
    CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    const double ms = 1e3 * median(t_step);
    char name[64];
    if (cfg.attn.mode == ATTN_HASH_SPARSE) snprintf(name, sizeof name, "scfa-cuda-hash%d", cfg.attn.n_buckets);
    else if (cfg.attn.mode == ATTN_QK_SPARSE) snprintf(name, sizeof name, "scfa-cuda-qk%.2f", cfg.attn.drop_prob);
    else snprintf(name, sizeof name, "scfa-cuda");
    if (cfg.attn.mode != ATTN_DENSE && sparse_grid != -1) /* a distinct name: compare_e2e keys on it */
        snprintf(name + strlen(name), sizeof name - strlen(name), "-grid%d", sparse_grid);
    printf("{\"trainer\": \"%s\", \"seq\": %d, \"batch\": %d, \"layers\": %d, \"deterministic\": %d, "
           "\"ms_per_step\": %.2f, \"tokens_per_s\": %.0f, \"fwd_ms\": %.2f, \"bwd_ms\": %.2f, "
           "\"opt_ms\": %.2f, \"backend_alloc_gib\": %.2f, \"device_used_gib\": %.2f, \"loss\": %.4f, "
           "\"device\": \"%s\"}\n",
           name, T, B, layers, deterministic, ms, (double)N / (ms * 1e-3), 1e3 * median(t_fwd),
           1e3 * median(t_bwd), 1e3 * median(t_opt), backend_cuda_device_bytes(b) / 1073741824.0,
           (double)(free0 - free1) / 1073741824.0, loss, b->device);
    if (trace) kernel_trace_write(trace);
    b->destroy(b);
    return 0;
}
