/* Per-op breakdown of a GPT-2 small training step on the CUDA backend's ops: each op the step
 * runs is timed alone (CUDA events, median of repeats after warm-up, random inputs) at the
 * step's shapes, multiplied by how often a step runs it, and summed. Compare the sum with
 * bench_step's measured ms/step to see launch gaps, and each matmul's TFLOP/s with the
 * chip's ~700 to see which shapes cuBLASLt runs poorly.
 *   bench_ops --seq 8192 --batch 4 [--chunk 8192] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "attention/cuda/flash_attn.h"
#include "model/cuda/matmul_cuda.h"
#include "model/cuda/ops_cuda.h"

extern "C" {
#include "runtime/rng.h"
}

namespace {

__global__ void fill_kernel(bf16 *x, size_t n, float scale, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float u = (float)(rng_mix64(seed + i * 0x9e3779b97f4a7c15ULL) >> 40) / 16777216.0f;
        x[i] = __float2bfloat16(scale * (2.0f * u - 1.0f));
    }
}

bf16 *rand_bf16(size_t n, float scale) {
    static uint64_t seed = 1;
    bf16 *p;
    CUDA_CHECK(cudaMalloc((void **)&p, n * sizeof(bf16)));
    fill_kernel<<<1024, 256>>>(p, n, scale, seed++ * 0x1234567ULL);
    KERNEL_CHECK("fill_kernel");
    return p;
}

float *zeros_f32(size_t n) {
    float *p;
    CUDA_CHECK(cudaMalloc((void **)&p, n * sizeof(float)));
    CUDA_CHECK(cudaMemset(p, 0, n * sizeof(float)));
    return p;
}

struct Row {
    const char *name;
    double ms, per_step, tflops;
};
std::vector<Row> rows;

void time_op(const char *name, double per_step, double flops, const std::function<void()> &op) {
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 2; i++) op();
    std::vector<float> t;
    for (int i = 0; i < 9; i++) {
        CUDA_CHECK(cudaEventRecord(a, 0));
        op();
        CUDA_CHECK(cudaEventRecord(b, 0));
        CUDA_CHECK(cudaEventSynchronize(b));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    const double ms = t[t.size() / 2];
    rows.push_back({name, ms, per_step, flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0});
    CUDA_CHECK(cudaEventDestroy(a));
    CUDA_CHECK(cudaEventDestroy(b));
}

int arg_int(int argc, char **argv, const char *name, int fallback) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return atoi(argv[i + 1]);
    return fallback;
}

} // namespace

int main(int argc, char **argv) {
    const int T = arg_int(argc, argv, "--seq", 8192), B = arg_int(argc, argv, "--batch", 4);
    const int L = 12, C = 768, H = 12, D = 64, V = 50257, Vp = 50304;
    const int chunk = arg_int(argc, argv, "--chunk", 8192); /* logit rows per head chunk */
    const int N = B * T, chunks = (N + chunk - 1) / chunk;
    const size_t NC = (size_t)N * C;
    const size_t n_params = (size_t)Vp * C + (size_t)T * C + (size_t)L * (12 * (size_t)C * C + 2 * C) + C;
    cudaStream_t s = 0;
    matmul_ctx_t *mm = matmul_ctx_create();

    bf16 *x = rand_bf16(NC, 1), *y = rand_bf16(NC, 1), *ln = rand_bf16(NC, 1), *dres = rand_bf16(NC, 0.01f);
    bf16 *qkv = rand_bf16(NC * 3, 1), *att = rand_bf16(NC, 1), *big = rand_bf16(NC * 4, 1),
         *big2 = rand_bf16(NC * 4, 1), *dqkv = rand_bf16(NC * 3, 0.01f);
    bf16 *wqkv = rand_bf16((size_t)3 * C * C, 0.02f), *wproj = rand_bf16((size_t)C * C, 0.02f),
         *wfc = rand_bf16((size_t)4 * C * C, 0.02f), *wmp = rand_bf16((size_t)4 * C * C, 0.02f),
         *wte = rand_bf16((size_t)Vp * C, 0.02f), *logits = rand_bf16((size_t)chunk * Vp, 4);
    float *gw = zeros_f32((size_t)4 * C * C), *gwte = zeros_f32((size_t)Vp * C);
    float *mean = zeros_f32(N), *rstd = zeros_f32(N), *lnw = zeros_f32(C), *lse = zeros_f32((size_t)N * H);
    float *red = zeros_f32(layernorm_backward_scratch_floats(N, C)), *losses = zeros_f32(N);
    int32_t *tgt;
    CUDA_CHECK(cudaMalloc((void **)&tgt, N * sizeof(int32_t)));
    CUDA_CHECK(cudaMemset(tgt, 0, N * sizeof(int32_t)));
    float *p = zeros_f32(n_params), *g = zeros_f32(n_params), *m = zeros_f32(n_params), *v = zeros_f32(n_params);
    bf16 *pb = rand_bf16(n_params, 1);
    double *norm_scratch;
    CUDA_CHECK(cudaMalloc((void **)&norm_scratch, GRAD_NORM_BLOCKS * sizeof(double)));
    CUDA_CHECK(cudaMemset(lnw, 0, C * sizeof(float)));
    layernorm_forward_cuda(ln, mean, rstd, x, lnw, nullptr, N, C, s); /* valid statistics */
    int *counter; /* the persistent grids' work counter, as the trainer's attention has one */
    CUDA_CHECK(cudaMalloc((void **)&counter, sizeof(int)));
    flash_attn_dims_t ad = {B, T, H, D, 0, 3 * C, 3 * C, 3 * C, C, counter};
    void *ws;
    CUDA_CHECK(cudaMalloc(&ws, flash_attn_backward_workspace_bytes(&ad, 0)));
    const double f = 2.0 * N * C * C; /* flops of an N x C x C product */

    time_op("residual+layernorm fwd", 2 * L, 0, [&] { residual_layernorm_forward_cuda(y, ln, mean, rstd, x, att, lnw, nullptr, N, C, s); });
    time_op("matmul qkv fwd", L, 3 * f, [&] { matmul_forward_cuda(mm, qkv, ln, wqkv, nullptr, N, C, 3 * C, nullptr, s); });
    time_op("attention fwd", L, 0, [&] { flash_attn_forward(&ad, qkv, qkv + C, qkv + 2 * C, att, lse, s); });
    time_op("matmul proj fwd", L, f, [&] { matmul_forward_cuda(mm, y, att, wproj, nullptr, N, C, C, nullptr, s); });
    time_op("matmul fc fwd +GELU_AUX", L, 4 * f, [&] { matmul_forward_cuda(mm, big2, ln, wfc, nullptr, N, C, 4 * C, big, s); });
    time_op("matmul mlp.proj fwd", L, 4 * f, [&] { matmul_forward_cuda(mm, y, big2, wmp, nullptr, N, 4 * C, C, nullptr, s); });
    const double fh = 2.0 * chunk * C * Vp;
    time_op("head logits (chunk)", chunks, fh, [&] { matmul_forward_cuda(mm, logits, ln, wte, nullptr, chunk, C, Vp, nullptr, s); });
    time_op("crossentropy fused (chunk)", chunks, 0, [&] { crossentropy_fused_cuda(losses, nullptr, logits, tgt, 1e-5f, chunk, V, Vp, s); });
    time_op("head dlnf (chunk)", chunks, fh, [&] { matmul_backward_cuda(mm, dres, 0, nullptr, logits, ln, wte, chunk, C, Vp, nullptr, s); });
    time_op("head dwte fp32+= (chunk)", chunks, fh, [&] { matmul_backward_cuda(mm, nullptr, 0, gwte, logits, ln, wte, chunk, C, Vp, nullptr, s); });
    time_op("matmul mlp.proj dinp +DGELU", L, 4 * f, [&] { matmul_backward_cuda(mm, big2, 0, nullptr, dres, big, wmp, N, 4 * C, C, big, s); });
    time_op("matmul mlp.proj dW", L, 4 * f, [&] { matmul_backward_cuda(mm, nullptr, 0, gw, dres, big, wmp, N, 4 * C, C, nullptr, s); });
    time_op("matmul fc dinp", L, 4 * f, [&] { matmul_backward_cuda(mm, y, 0, nullptr, big2, ln, wfc, N, C, 4 * C, nullptr, s); });
    time_op("matmul fc dW", L, 4 * f, [&] { matmul_backward_cuda(mm, nullptr, 0, gw, big2, ln, wfc, N, C, 4 * C, nullptr, s); });
    time_op("layernorm bwd", 2 * L, 0, [&] { layernorm_backward_cuda(dres, lnw, nullptr, y, x, lnw, mean, rstd, N, C, red, s); });
    time_op("matmul proj dinp", L, f, [&] { matmul_backward_cuda(mm, y, 0, nullptr, dres, att, wproj, N, C, C, nullptr, s); });
    time_op("matmul proj dW", L, f, [&] { matmul_backward_cuda(mm, nullptr, 0, gw, dres, att, wproj, N, C, C, nullptr, s); });
    time_op("attention bwd", L, 0, [&] { flash_attn_backward(&ad, qkv, qkv + C, qkv + 2 * C, att, lse, y, dqkv, dqkv + C, dqkv + 2 * C, ws, 0, s); });
    time_op("matmul qkv dinp", L, 3 * f, [&] { matmul_backward_cuda(mm, y, 0, nullptr, dqkv, ln, wqkv, N, C, 3 * C, nullptr, s); });
    time_op("matmul qkv dW", L, 3 * f, [&] { matmul_backward_cuda(mm, nullptr, 0, gw, dqkv, ln, wqkv, N, C, 3 * C, nullptr, s); });
    time_op("adamw (all params)", 1, 0, [&] { const adamw_hparams_t h = {1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f}; adamw_cuda(p, pb, g, m, v, n_params, 1, &h, 1, 1.0f, s); });
    time_op("zero_grad memset", 1, 0, [&] { CUDA_CHECK(cudaMemsetAsync(g, 0, n_params * sizeof(float), s)); });

    double total = 0, total_mm = 0, total_attn = 0;
    printf("%-30s %9s %6s %9s %8s\n", "op", "ms/call", "calls", "ms/step", "TFLOP/s");
    for (const Row &r : rows) {
        printf("%-30s %9.3f %6.0f %9.2f %8.0f\n", r.name, r.ms, r.per_step, r.ms * r.per_step, r.tflops);
        total += r.ms * r.per_step;
        if (r.tflops > 0) total_mm += r.ms * r.per_step;
        if (strstr(r.name, "attention")) total_attn += r.ms * r.per_step;
    }
    printf("sum %.1f ms/step (matmuls %.1f, attention %.1f, rest %.1f), seq %d batch %d chunk %d, attention path %s\n",
           total, total_mm, total_attn, total - total_mm - total_attn, T, B, chunk, flash_attn_path(&ad));
    return 0;
}
