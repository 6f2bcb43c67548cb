/* GPU test of the Hopper matrix-product building blocks in attention/cuda/flash_sm90.cuh:
 * one warpgroup multiplies 64x64 tiles held in shared memory in the 128B-swizzled layout the
 * flash kernels use, in the three operand arrangements they rely on:
 *   ss_kk: C = A B^T, A [64 m][64 k] and B [N n][64 k] both K-major (S = Q K^T), N = 64, 128
 *   rs_n:  C = A B,   A from registers, B [64 k][64 n] N-major      (O += P V)
 *   ss_mn: C = A B,   A stored [64 k][64 m] M-major, B [64 k][64 n] N-major (dQ = dS K)
 * Inputs are small multiples of 1/4, so every product is exact in fp32: the result must match
 * the CPU product exactly (tolerance 1e-3 absolute guards only against nothing). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_sm90.cuh"
extern "C" {
#include "runtime/error.h"
#include "runtime/rng.h"
}
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"

using namespace flash;
using namespace flash::sm90;

enum { SS_KK = 0, RS_N = 1, SS_MN = 2 };

/* a: [64][64] row-major as stored (meaning depends on the mode), b: [rows_b][64] as stored. */
template <int MODE, int N>
__global__ void product_kernel(const bf16 *a, const bf16 *b, int rows_b, float *c) {
    __shared__ __align__(1024) bf16 sa[64 * 64];
    __shared__ __align__(1024) bf16 sb[128 * 64];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    for (int i = tid; i < 64 * 8; i += 128) {
        int r = i / 8, ch = i % 8;
        *reinterpret_cast<uint4 *>(sa + SwizzledTile<64>::offset(r, ch)) =
            *reinterpret_cast<const uint4 *>(a + r * 64 + ch * 8);
    }
    for (int i = tid; i < rows_b * 8; i += 128) {
        int r = i / 8, ch = i % 8;
        *reinterpret_cast<uint4 *>(sb + SwizzledTile<64>::offset(r, ch)) =
            *reinterpret_cast<const uint4 *>(b + r * 64 + ch * 8);
    }
    fence_proxy_async();
    __syncthreads();
    float d[N / 2];
    for (int i = 0; i < N / 2; i++) d[i] = 0.f;
    const uint32_t a_addr = smem_addr(sa), b_addr = smem_addr(sb);
    wgmma_fence();
    for (int ks = 0; ks < 4; ks++) {
        if (MODE == SS_KK) {
            if (N == 64)
                wgmma_m64n64k16_ss<0, 0>(d, desc_sw128(a_addr + 32 * ks), desc_sw128(b_addr + 32 * ks), 1);
            else
                wgmma_m64n128k16_ss<0, 0>(d, desc_sw128(a_addr + 32 * ks), desc_sw128(b_addr + 32 * ks), 1);
        } else if (MODE == SS_MN) {
            wgmma_m64n64k16_ss<1, 1>(d, desc_sw128(a_addr + 2048 * ks), desc_sw128(b_addr + 2048 * ks), 1);
        } else {
            uint32_t fa[4];
            const int r = warp * 16 + g, k = ks * 16 + 2 * tq;
            fa[0] = pack_bf16(__bfloat162float(a[r * 64 + k]), __bfloat162float(a[r * 64 + k + 1]));
            fa[1] = pack_bf16(__bfloat162float(a[(r + 8) * 64 + k]), __bfloat162float(a[(r + 8) * 64 + k + 1]));
            fa[2] = pack_bf16(__bfloat162float(a[r * 64 + k + 8]), __bfloat162float(a[r * 64 + k + 9]));
            fa[3] = pack_bf16(__bfloat162float(a[(r + 8) * 64 + k + 8]), __bfloat162float(a[(r + 8) * 64 + k + 9]));
            wgmma_fence();
            wgmma_m64n64k16_rs<1>(d, fa, desc_sw128(b_addr + 2048 * ks), 1);
        }
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(d);
    for (int j = 0; j < N / 8; j++)
        for (int e = 0; e < 4; e++) {
            int row = warp * 16 + g + (e / 2) * 8, col = j * 8 + 2 * tq + (e % 2);
            c[row * N + col] = d[4 * j + e];
        }
}

static float bf(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void run(int mode, int N, uint64_t seed) {
    const int rows_b = mode == SS_KK ? N : 64;
    uint16_t ha[64 * 64], hb[128 * 64];
    for (int i = 0; i < 64 * 64; i++) {
        float v = (float)((int)(rng_u24(seed, i) % 9) - 4) * 0.25f;
        uint32_t u;
        memcpy(&u, &v, 4);
        ha[i] = (uint16_t)(u >> 16);
    }
    for (int i = 0; i < rows_b * 64; i++) {
        float v = (float)((int)(rng_u24(seed, 100000 + i) % 9) - 4) * 0.25f;
        uint32_t u;
        memcpy(&u, &v, 4);
        hb[i] = (uint16_t)(u >> 16);
    }
    /* Reference C[m][n] in the mode's meaning of the stored arrays. */
    float *ref = (float *)xmalloc(64 * N * sizeof(float), "ref");
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < 64; k++) {
                float av = mode == SS_MN ? bf(ha[k * 64 + m]) : bf(ha[m * 64 + k]);
                float bv = mode == SS_KK ? bf(hb[n * 64 + k]) : bf(hb[k * 64 + n]);
                s += (double)av * bv;
            }
            ref[m * N + n] = (float)s;
        }
    bf16 *da, *db;
    float *dc;
    CUDA_OK(cudaMalloc(&da, sizeof ha));
    CUDA_OK(cudaMalloc(&db, sizeof hb));
    CUDA_OK(cudaMalloc(&dc, 64 * N * sizeof(float)));
    CUDA_OK(cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dc, 0xff, 64 * N * sizeof(float)));
    if (mode == SS_KK && N == 64) product_kernel<SS_KK, 64><<<1, 128>>>(da, db, rows_b, dc);
    if (mode == SS_KK && N == 128) product_kernel<SS_KK, 128><<<1, 128>>>(da, db, rows_b, dc);
    if (mode == RS_N) product_kernel<RS_N, 64><<<1, 128>>>(da, db, rows_b, dc);
    if (mode == SS_MN) product_kernel<SS_MN, 64><<<1, 128>>>(da, db, rows_b, dc);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaDeviceSynchronize());
    float *got = (float *)xmalloc(64 * N * sizeof(float), "got");
    CUDA_OK(cudaMemcpy(got, dc, 64 * N * sizeof(float), cudaMemcpyDeviceToHost));
    double max_err = 0;
    int first_bad = -1;
    for (int i = 0; i < 64 * N; i++) {
        double e = isnan(got[i]) ? INFINITY : fabs((double)got[i] - ref[i]);
        if (e > 1e-3 && first_bad < 0) first_bad = i;
        max_err = fmax(max_err, e);
    }
    static const char *names[] = {"ss_kk", "rs_n", "ss_mn"};
    printf("%-6s N=%-3d max abs err %.3g\n", names[mode], N, max_err);
    CHECK(max_err <= 1e-3, "%s N=%d: max abs err %.3g (first bad row %d col %d: got %g want %g)",
          names[mode], N, max_err, first_bad / N, first_bad % N, got[first_bad], ref[first_bad]);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    free(ref);
    free(got);
}

int main(void) {
    int major = 0;
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    if (major != 9) fatal(EXIT_RUNTIME, "test_sm90_mma: needs a Hopper GPU (sm_90), found sm_%d", major * 10);
    run(SS_KK, 64, 11);
    run(SS_KK, 128, 12);
    run(RS_N, 64, 13);
    run(SS_MN, 64, 14);
    return test_summary();
}
