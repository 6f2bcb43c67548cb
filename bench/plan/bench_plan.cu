/* Time of the GPU attention plan at the paper's shape: B*T = 65536 tokens (B = 4, T = 16384),
 * H = 12, D = 64, q and k read from a fused bf16 QKV buffer (row stride 3*H*D).
 *
 * For each mode it reports the median over repeated calls, each under a new key, of
 *   assign  (keep masks, or fp32 hashing of q [and k] with the double fallback),
 *   sort    (counting sort of query and key rows of every (b, h)),
 *   tiles   (tile summaries, exact lists both directions, longest-first orders) for one shape,
 *   gpu     the three together, between device events (the rotation draw excluded),
 *   host    the rotation draw (two small kernels) alone, launch to completion (wall clock),
 *   wall    attn_plan_cuda_build + attn_tiles_cuda_build + stream sync (wall clock),
 * and the live fraction: live (query tile, key tile) pairs over the pairs a dense causal kernel
 * visits for the same tile shape. Floors: reading q once is B*T*H*D*2 bytes (101 MB, about
 * 34 us at 2.9 TB/s), q and k twice that. Full numbers go to stdout; a short table is last. */
#include <algorithm>
#include <chrono>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "attention/attention.h"
#include "attention/plan_cuda.h"
#include "runtime/error.h"
#include "runtime/rng.h"
}

#include "tests/gpu/gpu_test_util.cuh" /* CUDA_OK */

static const int B = 4, T = 16384, H = 12, D = 64, WARMUP = 5, REPS = 30;

/* Approximately N(0, 1) bf16 values (sum of 4 uniforms, scaled): only the bucket balance
 * matters here, and it needs no exact normal law. */
__global__ void fill_kernel(__nv_bfloat16 *x, long n, uint64_t key) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int j = 0; j < 4; j++) s += rng_uniform(key, 4 * (uint64_t)i + j);
    x[i] = __float2bfloat16((s - 2.0f) * 1.7320508f);
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* Dense causal (query tile, key tile) pairs: key tile kt is visited by query tile qt iff its
 * first key is at or before the tile's last query. */
static long dense_causal_pairs(int bm, int bn) {
    long n = 0;
    for (int qt = 0; qt * bm < T; qt++) n += (std::min(T, (qt + 1) * bm) - 1) / bn + 1;
    return n * B * H;
}

struct Result {
    char name[64];
    int bm, bn;
    double assign_us, sort_us, tiles_us, gpu_us, host_us, wall_us, live_fraction;
};

static Result run(const char *name, attn_params_t p, int shared_keys, int bm, int bn,
                  const __nv_bfloat16 *qkv, cudaStream_t s) {
    Result r = {};
    snprintf(r.name, sizeof r.name, "%s", name);
    r.bm = bm, r.bn = bn;
    const long stride = 3L * H * D;
    const __nv_bfloat16 *q = qkv, *k = shared_keys ? NULL : qkv + H * D;
    attn_plan_cuda_t plan;
    attn_tiles_cuda_t tiles;
    attn_plan_cuda_init(&plan, &p, B, T, H, D);
    attn_tiles_cuda_init(&tiles, &plan, bm, bn);
    cudaEvent_t ev[4];
    for (int i = 0; i < 4; i++) CUDA_OK(cudaEventCreate(&ev[i]));
    std::vector<double> assign, sort, tile, gpu, host, wall;
    for (int it = 0; it < WARMUP + REPS; it++) {
        const uint64_t key = rng_key(1, RNG_DOMAIN_ATTN, it, 0, 0);
        CUDA_OK(cudaStreamSynchronize(s));
        auto t0 = std::chrono::steady_clock::now();
        attn_plan_cuda_draw_rotations(&plan, key, s);
        CUDA_OK(cudaStreamSynchronize(s));
        auto t1 = std::chrono::steady_clock::now();
        CUDA_OK(cudaEventRecord(ev[0], s));
        attn_plan_cuda_assign(&plan, key, q, stride, k, stride, s);
        CUDA_OK(cudaEventRecord(ev[1], s));
        attn_plan_cuda_sort(&plan, s);
        CUDA_OK(cudaEventRecord(ev[2], s));
        attn_tiles_cuda_build(&tiles, &plan, s);
        CUDA_OK(cudaEventRecord(ev[3], s));
        CUDA_OK(cudaStreamSynchronize(s));
        /* The whole call as a trainer makes it. */
        auto t2 = std::chrono::steady_clock::now();
        attn_plan_cuda_build(&plan, key, q, stride, k, stride, s);
        attn_tiles_cuda_build(&tiles, &plan, s);
        CUDA_OK(cudaStreamSynchronize(s));
        auto t3 = std::chrono::steady_clock::now();
        if (it < WARMUP) continue;
        float ms[3];
        for (int i = 0; i < 3; i++) CUDA_OK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
        assign.push_back(1e3 * ms[0]);
        sort.push_back(1e3 * ms[1]);
        tile.push_back(1e3 * ms[2]);
        gpu.push_back(1e3 * (ms[0] + ms[1] + ms[2]));
        host.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        wall.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
    }
    r.assign_us = median(assign), r.sort_us = median(sort), r.tiles_us = median(tile);
    r.gpu_us = median(gpu), r.host_us = median(host), r.wall_us = median(wall);
    r.live_fraction = (double)attn_tiles_cuda_live_count(&tiles, s) / dense_causal_pairs(bm, bn);
    for (int i = 0; i < 4; i++) CUDA_OK(cudaEventDestroy(ev[i]));
    attn_tiles_cuda_free(&tiles);
    attn_plan_cuda_free(&plan);
    printf("%-22s %3dx%-3d assign %7.1f  sort %7.1f  tiles %7.1f  gpu %7.1f  host %7.1f  wall %7.1f us  live %.4f\n",
           r.name, bm, bn, r.assign_us, r.sort_us, r.tiles_us, r.gpu_us, r.host_us, r.wall_us,
           r.live_fraction);
    fflush(stdout);
    return r;
}

int main(void) {
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs; B=%d T=%d H=%d D=%d, q/k row stride 3*H*D\n", prop.name,
           prop.multiProcessorCount, B, T, H, D);
    const long n = (long)B * T * 3 * H * D;
    __nv_bfloat16 *qkv;
    CUDA_OK(cudaMalloc(&qkv, n * sizeof(__nv_bfloat16)));
    fill_kernel<<<(unsigned)((n + 255) / 256), 256>>>(qkv, n, 12345);
    CUDA_OK(cudaGetLastError());
    cudaStream_t s;
    CUDA_OK(cudaStreamCreate(&s));

    struct {
        const char *name;
        attn_params_t p;
        int shared;
    } modes[] = {
        {"hash nb=16 shared-qk", {ATTN_HASH_SPARSE, 16, 0.f, 1}, 1},
        {"hash nb=16 own-k", {ATTN_HASH_SPARSE, 16, 0.f, 1}, 0},
        {"hash nb=8 shared-qk", {ATTN_HASH_SPARSE, 8, 0.f, 1}, 1},
        {"hash nb=32 shared-qk", {ATTN_HASH_SPARSE, 32, 0.f, 1}, 1},
        {"hash nb=64 shared-qk", {ATTN_HASH_SPARSE, 64, 0.f, 1}, 1},
        {"qk drop=0.3", {ATTN_QK_SPARSE, 1, 0.3f, 0}, 0},
        {"qk drop=0.5", {ATTN_QK_SPARSE, 1, 0.5f, 0}, 0},
        {"qk drop=0.7", {ATTN_QK_SPARSE, 1, 0.7f, 0}, 0},
    };
    const int shapes[][2] = {{128, 64}, {128, 128}, {64, 128}};
    std::vector<Result> results;
    for (auto &m : modes)
        for (auto &sh : shapes) results.push_back(run(m.name, m.p, m.shared, sh[0], sh[1], qkv, s));

    printf("\n%-22s %-7s %8s %8s %8s %8s %8s %8s %7s\n", "mode", "tiles", "assign", "sort",
           "tiles", "gpu", "host", "wall", "live");
    for (auto &r : results)
        printf("%-22s %3dx%-3d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %7.4f\n", r.name, r.bm, r.bn,
               r.assign_us, r.sort_us, r.tiles_us, r.gpu_us, r.host_us, r.wall_us, r.live_fraction);
    printf("(us, median of %d; gpu = assign + sort + tiles between events; host = rotation draw "
           "+ upload; wall = whole build + tiles + sync)\n", REPS);
    CUDA_OK(cudaFree(qkv));
    CUDA_OK(cudaStreamDestroy(s));
    return 0;
}
