/* Row-wise ops of the CUDA backend: LayerNorm (with the fused residual add), shared-QK key
 * normalisation and the fused classifier (softmax + cross-entropy + dlogits). One warp (or one
 * block for vocabulary rows) owns a row, keeps it in registers and reduces it with shuffles in
 * a fixed order, so every result is reproducible bit for bit. */
#include "model/cuda/ops_cuda.h"

#include <math.h>
#include <stdint.h>

#include <initializer_list>
#include <utility>

extern "C" {
#include "model/cpu/ops_cpu.h" /* LAYERNORM_EPS, QK_NORM_EPS: one definition for both backends */
}

namespace {

constexpr int kRowWarps = 8; /* rows (warps) per block of the warp-per-row kernels */

/* A vector as loaded (8 bf16) to fp32: rows stay packed in registers, unpacked where used. */
__device__ __forceinline__ void unpack8(float (&f)[8], uint4 raw) {
    const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
    for (int j = 0; j < 8; j++) f[j] = __bfloat162float(h[j]);
}

/* ---- LayerNorm forward ----------------------------------------------------------------------
 * A lane holds VPL vectors of 8 channels: channel c0 = (i*32 + lane)*8 for vector i, so the
 * warp reads 512 contiguous bytes per vector step. VPL = ceil(C / 256) is a template argument
 * so the row stays in registers. With FUSED, the row is a + b rounded to bf16 and stored to
 * resid first (the stored residual is exactly what is normalised). */
template <int VPL, bool FUSED>
__global__ void layernorm_forward_kernel(bf16 *__restrict__ resid, bf16 *__restrict__ out,
                                         float *__restrict__ mean, float *__restrict__ rstd,
                                         const bf16 *__restrict__ a, const bf16 *__restrict__ b,
                                         const float *__restrict__ weight,
                                         const float *__restrict__ bias, int N, int C) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * kRowWarps + threadIdx.x / 32;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    float x[VPL][8];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c0 = (i * 32 + lane) * 8;
        if (c0 < C) {
            load8(x[i], a + base + c0);
            if (FUSED) {
                float y[8];
                load8(y, b + base + c0);
#pragma unroll
                for (int j = 0; j < 8; j++) x[i][j] = __bfloat162float(__float2bfloat16(x[i][j] + y[j]));
                store8(resid + base + c0, x[i]);
            }
#pragma unroll
            for (int j = 0; j < 8; j++) sum += x[i][j];
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) x[i][j] = 0.0f;
        }
    }
    const float m = warp_sum(sum) / (float)C;
    float var = 0.0f;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c0 = (i * 32 + lane) * 8;
        if (c0 < C) {
#pragma unroll
            for (int j = 0; j < 8; j++) var += (x[i][j] - m) * (x[i][j] - m);
        }
    }
    const float r = 1.0f / sqrtf(warp_sum(var) / (float)C + LAYERNORM_EPS);
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c0 = (i * 32 + lane) * 8;
        if (c0 < C) {
            float o[8];
#pragma unroll
            for (int j = 0; j < 8; j++)
                o[j] = (x[i][j] - m) * r * weight[c0 + j] + (bias ? bias[c0 + j] : 0.0f);
            store8(out + base + c0, o);
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

void check_ln_dims(const char *op, int N, int C) {
    if (C < 8 || C % 8 != 0 || C > LN_MAX_C)
        fatal(EXIT_RUNTIME, "%s: C = %d must be a multiple of 8 in [8, %d]", op, C, LN_MAX_C);
    if (N < 0) fatal(EXIT_RUNTIME, "%s: N = %d < 0", op, N);
}

template <bool FUSED>
void layernorm_forward_dispatch(bf16 *resid, bf16 *out, float *mean, float *rstd, const bf16 *a,
                                const bf16 *b, const float *w, const float *bias, int N, int C,
                                cudaStream_t s) {
    if (N == 0) return;
    const unsigned grid = ceil_div_u((size_t)N, kRowWarps), block = 32 * kRowWarps;
    switch ((C + 255) / 256) {
#define LN_FWD_CASE(V)                                                                          \
    case V:                                                                                     \
        layernorm_forward_kernel<V, FUSED><<<grid, block, 0, s>>>(resid, out, mean, rstd, a, b, \
                                                                  w, bias, N, C);               \
        break;
        LN_FWD_CASE(1) LN_FWD_CASE(2) LN_FWD_CASE(3) LN_FWD_CASE(4)
        LN_FWD_CASE(5) LN_FWD_CASE(6) LN_FWD_CASE(7) LN_FWD_CASE(8)
#undef LN_FWD_CASE
    }
    KERNEL_CHECK("layernorm_forward_kernel");
}

/* ---- LayerNorm backward ---------------------------------------------------------------------
 * Block b owns rows [b*R, (b+1)*R); its kLnBwdWarps warps take every kLnBwdWarps-th row of that
 * range. Each warp accumulates dweight/dbias of the rows it sees in its own slice of shared
 * memory (a lane only ever touches its own channels, so there are no races and the order is
 * fixed); at the end the slices are added in warp order into the block's partial,
 * scratch[b][2C] (dweight then dbias), and layernorm_params_reduce_kernel adds the partials in
 * a fixed order. The grid size depends on N only, so the summation order never changes.
 *
 * The kernel is memory-bound, and was latency-bound at 128 registers a thread (116 us a call at
 * 32k x 768 on an H100, 1.68 TB/s; 16 warps an SM, no eligible warp 78% of cycles), so it is
 * built for warps in flight: the row stays in registers as the packed bf16 vectors it was
 * loaded as (4 registers per 8 channels, not 8) and is unpacked where used, weight is staged in
 * shared memory once per block (it was read through L1 twice per element), and the parameter
 * accumulators stay in shared memory. At C = 768 that is 64 registers: 4 blocks of 8 warps an
 * SM (shared memory allows the same). */
constexpr int kLnBwdWarps = 8;
/* About 8 rows a warp, but when N allows at least a row a warp in kLnBwdFillBlocks blocks, so
 * that mid-sized N still fills the GPU (512 ~ 132 SMs x 4 blocks of an H100 at C = 768). The
 * count is a function of N, never of the device, so the partials and their order are the same
 * on any GPU; kLnBwdMaxBlocks bounds the scratch and the reduction's work. */
constexpr int kLnBwdRowsPerWarp = 8, kLnBwdFillBlocks = 512, kLnBwdMaxBlocks = 1024;

int ln_backward_blocks(int N) {
    const long per_block = kLnBwdWarps * kLnBwdRowsPerWarp;
    const long by_rows = ((long)N + per_block - 1) / per_block;
    const long one_each = ((long)N + kLnBwdWarps - 1) / kLnBwdWarps;
    long g = by_rows;
    if (g < kLnBwdFillBlocks) g = one_each < kLnBwdFillBlocks ? one_each : kLnBwdFillBlocks;
    return g < 1 ? 1 : (g > kLnBwdMaxBlocks ? kLnBwdMaxBlocks : (int)g);
}

/* weight [C], then per warp its dweight and dbias slices [2][C]. */
size_t ln_backward_smem(int C) { return (size_t)(1 + 2 * kLnBwdWarps) * C * sizeof(float); }

/* Blocks an SM that shared memory allows at the widest C of a VPL (228 KB an SM, 1 KB of it
 * reserved per block), at most 4 (2048 threads): __launch_bounds__ then gives ptxas the
 * register budget that keeps registers from being the tighter limit (64 at VPL <= 3). */
constexpr int ln_bwd_min_blocks(int VPL) {
    const int b = (228 * 1024) / ((1 + 2 * kLnBwdWarps) * 256 * VPL * (int)sizeof(float) + 1024);
    return b < 1 ? 1 : (b > 4 ? 4 : b);
}

/* Channels are handled in pairs, one 32-bit word of a packed vector at a time: fp32 values of
 * the whole vector (dy, x, dinp, weight and both accumulators: 48) on top of the packed row do
 * not fit 64 registers, one pair's do. Shared memory holds per-channel fp32 values (weight, the
 * accumulators) so that a lane's pair is one float2 and a warp's access is conflict-free:
 * channel c = vi*8 + 2p + k is at float2 [p][vi], component k. */
__device__ __forceinline__ int ln_slot(int c, int CV) {
    return ((c % 8) / 2) * CV * 2 + (c / 8) * 2 + c % 2;
}

__device__ __forceinline__ uint32_t word_of(const uint4 &v, int p) {
    return p == 0 ? v.x : p == 1 ? v.y : p == 2 ? v.z : v.w;
}
__device__ __forceinline__ void set_word(uint4 &v, int p, uint32_t u) {
    if (p == 0) v.x = u; else if (p == 1) v.y = u; else if (p == 2) v.z = u; else v.w = u;
}
/* bf16 pair (low half first, as in memory) to fp32: exact, two integer ops. */
__device__ __forceinline__ float2 unpack2(uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

template <int VPL>
__global__ void __launch_bounds__(32 * kLnBwdWarps, ln_bwd_min_blocks(VPL))
layernorm_backward_kernel(bf16 *__restrict__ dinp, float *__restrict__ scratch,
                          const bf16 *__restrict__ dout, const bf16 *__restrict__ inp,
                          const float *__restrict__ weight, const float *__restrict__ mean,
                          const float *__restrict__ rstd, int N, int C, int rows_per_block) {
    extern __shared__ float2 ln_smem[]; /* ln_backward_smem(C) bytes, in ln_slot layout */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, CV = C / 8;
    const float2 *w_s = ln_smem;
    float2 *acc_w = ln_smem + (size_t)(1 + 2 * warp) * CV * 4, *acc_b = acc_w + CV * 4;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        reinterpret_cast<float *>(ln_smem)[ln_slot(c, CV)] = weight[c];
    for (int k = lane; k < 8 * CV; k += 32) acc_w[k] = make_float2(0.0f, 0.0f);
    __syncthreads();
    const long row_lo = (long)blockIdx.x * rows_per_block;
    const long row_hi = row_lo + rows_per_block < N ? row_lo + rows_per_block : N;
    for (long row = row_lo + warp; row < row_hi; row += kLnBwdWarps) {
        const size_t base = (size_t)row * C;
        const uint4 *dy_v = reinterpret_cast<const uint4 *>(dout + base);
        const uint4 *x_v = reinterpret_cast<const uint4 *>(inp + base);
        uint4 *d_v = reinterpret_cast<uint4 *>(dinp + base);
        const float m = mean[row], r = rstd[row];
        uint4 dy_raw[VPL], x_raw[VPL], d_raw[VPL];
#pragma unroll
        for (int i = 0; i < VPL; i++) { /* all loads of the row first: they overlap */
            const int vi = i * 32 + lane;
            if (vi < CV) {
                dy_raw[i] = dy_v[vi];
                x_raw[i] = x_v[vi];
                d_raw[i] = d_v[vi];
            }
        }
        float g_sum = 0.0f, gx_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int vi = i * 32 + lane;
            if (vi < CV) {
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    const float2 dy = unpack2(word_of(dy_raw[i], p));
                    const float2 x = unpack2(word_of(x_raw[i], p)), w = w_s[p * CV + vi];
                    const float g0 = dy.x * w.x, g1 = dy.y * w.y;
                    g_sum += g0;
                    gx_sum += g0 * ((x.x - m) * r);
                    g_sum += g1;
                    gx_sum += g1 * ((x.y - m) * r);
                }
            }
        }
        const float g_mean = warp_sum(g_sum) / (float)C, gx_mean = warp_sum(gx_sum) / (float)C;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int vi = i * 32 + lane;
            if (vi < CV) {
                uint4 out;
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    const float2 dy = unpack2(word_of(dy_raw[i], p));
                    const float2 x = unpack2(word_of(x_raw[i], p)), w = w_s[p * CV + vi];
                    float2 d = unpack2(word_of(d_raw[i], p));
                    float2 aw = acc_w[p * CV + vi], ab = acc_b[p * CV + vi];
                    const float xh0 = (x.x - m) * r, xh1 = (x.y - m) * r;
                    d.x += r * (dy.x * w.x - g_mean - xh0 * gx_mean);
                    d.y += r * (dy.y * w.y - g_mean - xh1 * gx_mean);
                    aw.x += dy.x * xh0;
                    aw.y += dy.y * xh1;
                    ab.x += dy.x;
                    ab.y += dy.y;
                    acc_w[p * CV + vi] = aw;
                    acc_b[p * CV + vi] = ab;
                    set_word(out, p, pack2(d.x, d.y));
                }
                d_v[vi] = out;
            }
        }
    }
    __syncthreads();
    const float *acc = reinterpret_cast<const float *>(ln_smem) + C;
    float *dst = scratch + (size_t)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        const int half = c / C, slot = half * C + ln_slot(c - half * C, CV);
        float s = 0.0f;
        for (int w = 0; w < kLnBwdWarps; w++) s += acc[(size_t)w * 2 * C + slot];
        dst[c] = s;
    }
}

/* dweight[c] += sum_b scratch[b][c]; dbias[c] += sum_b scratch[b][C + c]. A block of
 * kReduceCols x kReduceRows threads owns kReduceCols columns: thread (x, y) adds the partials
 * y, y + kReduceRows, ... in order (loads unrolled, the sum's order fixed), then thread (x, 0) adds
 * the kReduceRows sums in y order; the order depends on `blocks` only, so runs are
 * bit-identical. One thread a column walking all the partials was latency-bound: 37 us a call
 * at 1024 partials x 1536 columns (6 blocks; ncu, H200, session 16), 25 calls a step. */
constexpr int kReduceCols = 32, kReduceRows = 32;

__global__ void __launch_bounds__(kReduceCols * kReduceRows)
layernorm_params_reduce_kernel(float *__restrict__ dweight, float *__restrict__ dbias,
                               const float *__restrict__ scratch, int blocks, int C) {
    __shared__ float part[kReduceRows][kReduceCols + 1];
    const int x = threadIdx.x % kReduceCols, y = threadIdx.x / kReduceCols;
    const int c = blockIdx.x * kReduceCols + x;
    float s = 0.0f;
    if (c < 2 * C) {
        int b = y;
        for (; b + 7 * kReduceRows < blocks; b += 8 * kReduceRows) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = scratch[(size_t)(b + u * kReduceRows) * 2 * C + c];
#pragma unroll
            for (int u = 0; u < 8; u++) s += v[u];
        }
        for (; b < blocks; b += kReduceRows) s += scratch[(size_t)b * 2 * C + c];
    }
    part[y][x] = s;
    __syncthreads();
    if (y != 0 || c >= 2 * C) return;
    float t = 0.0f;
    for (int r = 0; r < kReduceRows; r++) t += part[r][x];
    if (c < C) dweight[c] += t;
    else if (dbias) dbias[c - C] += t;
}

/* ---- shared-QK key normalisation: one warp per (row, head) vector of D <= 256 ------------- */
constexpr int kQkMaxPerLane = 8;

__global__ void qk_normalise_forward_kernel(bf16 *__restrict__ k, long k_stride,
                                            const bf16 *__restrict__ q, long q_stride, int N,
                                            int H, int D) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * kRowWarps + threadIdx.x / 32;
    if (row >= (long)N * H) return;
    const long n = row / H, h = row % H;
    const bf16 *qr = q + n * q_stride + h * D;
    float v[kQkMaxPerLane], s = 0.0f;
#pragma unroll
    for (int i = 0; i < kQkMaxPerLane; i++) {
        const int d = lane + 32 * i;
        v[i] = d < D ? __bfloat162float(qr[d]) : 0.0f;
        s += v[i] * v[i];
    }
    const float inv = 1.0f / sqrtf(warp_sum(s) + QK_NORM_EPS * QK_NORM_EPS);
    bf16 *kr = k + n * k_stride + h * D;
#pragma unroll
    for (int i = 0; i < kQkMaxPerLane; i++) {
        const int d = lane + 32 * i;
        if (d < D) kr[d] = __float2bfloat16(v[i] * inv);
    }
}

__global__ void qk_normalise_backward_kernel(bf16 *__restrict__ dq, long dq_stride,
                                             const bf16 *__restrict__ dk, long dk_stride,
                                             const bf16 *__restrict__ q, long q_stride,
                                             const bf16 *__restrict__ k, long k_stride, int N,
                                             int H, int D) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * kRowWarps + threadIdx.x / 32;
    if (row >= (long)N * H) return;
    const long n = row / H, h = row % H;
    const bf16 *qr = q + n * q_stride + h * D, *kr = k + n * k_stride + h * D;
    const bf16 *dkr = dk + n * dk_stride + h * D;
    float kv[kQkMaxPerLane], dkv[kQkMaxPerLane], s = 0.0f, kdk = 0.0f;
#pragma unroll
    for (int i = 0; i < kQkMaxPerLane; i++) {
        const int d = lane + 32 * i;
        const float qv = d < D ? __bfloat162float(qr[d]) : 0.0f;
        kv[i] = d < D ? __bfloat162float(kr[d]) : 0.0f;
        dkv[i] = d < D ? __bfloat162float(dkr[d]) : 0.0f;
        s += qv * qv;
        kdk += kv[i] * dkv[i];
    }
    const float inv = 1.0f / sqrtf(warp_sum(s) + QK_NORM_EPS * QK_NORM_EPS);
    const float proj = warp_sum(kdk);
    bf16 *dqr = dq + n * dq_stride + h * D;
#pragma unroll
    for (int i = 0; i < kQkMaxPerLane; i++) {
        const int d = lane + 32 * i;
        if (d < D)
            dqr[d] = __float2bfloat16(__bfloat162float(dqr[d]) + (dkv[i] - kv[i] * proj) * inv);
    }
}

/* The vector path, for D a multiple of 8 with D / 8 a power of two (64 and 128 in practice) and
 * 16-byte aligned rows: G = D / 8 lanes own one (row, head) vector, 8 channels each, so a warp
 * handles 32 / G vectors with one 16-byte load per lane. The warp-per-vector kernels above read
 * 2 bytes per lane and leave most lanes idle at D = 64 (session 4: ~170 us per call at the 8k
 * run's shape, 36 calls per step; the two have not yet been timed side by side). */
__device__ __forceinline__ float group_sum(float v, int G) {
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* This thread's 8 channels: token n, columns col .. col + 7 (head h, part p: h*D + 8p); threads
 * past the last vector are not live but still join the shuffles. */
struct QkVecSlot {
    bool live;
    long n, col;
};

__device__ __forceinline__ QkVecSlot qk_vec_slot(int N, int H, int D) {
    const int G = D / 8;
    const long t = (long)blockIdx.x * blockDim.x + threadIdx.x, row = t / G;
    const bool live = row < (long)N * H;
    return {live, live ? row / H : 0, live ? (row % H) * D + (t % G) * 8 : 0};
}

__global__ void qk_normalise_forward_vec_kernel(bf16 *__restrict__ k, long k_stride,
                                                const bf16 *__restrict__ q, long q_stride,
                                                int N, int H, int D) {
    /* No early return: every lane of the warp takes part in the shuffles. */
    const QkVecSlot at = qk_vec_slot(N, H, D);
    float v[8] = {0};
    if (at.live) load8(v, q + at.n * q_stride + at.col);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) s += v[j] * v[j];
    const float inv = 1.0f / sqrtf(group_sum(s, D / 8) + QK_NORM_EPS * QK_NORM_EPS);
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] *= inv;
    if (at.live) store8(k + at.n * k_stride + at.col, v);
}

__global__ void qk_normalise_backward_vec_kernel(bf16 *__restrict__ dq, long dq_stride,
                                                 const bf16 *__restrict__ dk, long dk_stride,
                                                 const bf16 *__restrict__ q, long q_stride,
                                                 const bf16 *__restrict__ k, long k_stride,
                                                 int N, int H, int D) {
    const QkVecSlot at = qk_vec_slot(N, H, D);
    const long n = at.n, c = at.col;
    float qv[8] = {0}, kv[8] = {0}, dkv[8] = {0};
    if (at.live) {
        load8(qv, q + n * q_stride + c);
        load8(kv, k + n * k_stride + c);
        load8(dkv, dk + n * dk_stride + c);
    }
    float s = 0.0f, kdk = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s += qv[j] * qv[j];
        kdk += kv[j] * dkv[j];
    }
    const float inv = 1.0f / sqrtf(group_sum(s, D / 8) + QK_NORM_EPS * QK_NORM_EPS);
    const float proj = group_sum(kdk, D / 8);
    if (!at.live) return; /* after the last shuffle */
    float out[8];
    load8(out, dq + n * dq_stride + c);
#pragma unroll
    for (int j = 0; j < 8; j++) out[j] += (dkv[j] - kv[j] * proj) * inv;
    store8(dq + n * dq_stride + c, out);
}

/* ---- fused classifier: one block per row of Vp logits -------------------------------------
 * Pass 1 keeps a running (max, sum of exp) per thread over its vectors (online softmax), merged
 * across the block in a fixed order; pass 2 rewrites the row as dlogits. With kRowInSmem the
 * row (100 KB at GPT-2 sizes) is parked in shared memory by pass 1, so DRAM sees exactly one
 * read and one write of the logits; rows too long for shared memory are re-read from global
 * memory (mostly L2 hits). */
constexpr int kCeThreads = 512;
constexpr size_t kCeMaxSmemBytes = 200 * 1024;
/* Vectors a thread loads before using any: with one 16-byte load in flight a thread, 2 blocks
 * of 512 threads an SM kept 16 KB an SM in flight, short of what HBM latency needs (0.81 ms a
 * call at 8192 x 50304 on an H100, against ~0.49 ms for one read and one write). */
constexpr int kCeUnroll = 4;

__device__ __forceinline__ void softmax_merge(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return; /* both empty */
    s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mn));
    m = mn;
}

/* Folds vectors first, first + kCeThreads, ... (kN of them) into the running (m, s): one max
 * over all of them, then one rescale of s, so a group costs 8 kN + 1 exponentials rather than
 * 9 kN. Entries at or past V (padding) are read as -inf, whose exponential adds exactly 0: no
 * mask has to stay live from the max to the sum. */
template <int kN>
__device__ __forceinline__ void softmax_fold(float &m, float &s, const uint4 (&raw)[kCeUnroll],
                                             int first, int V) {
    float f[kN][8];
    float vm = -INFINITY;
#pragma unroll
    for (int u = 0; u < kN; u++) {
        unpack8(f[u], raw[u]);
        const int valid = V - (first + u * kCeThreads) * 8; /* >= 8 but near the end */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (j >= valid) f[u][j] = -INFINITY;
            vm = fmaxf(vm, f[u][j]);
        }
    }
    if (vm == -INFINITY) return; /* all in the padding (or all -inf) */
    const float mn = fmaxf(m, vm);
    float add = 0.0f;
#pragma unroll
    for (int u = 0; u < kN; u++) {
        float a = 0.0f; /* per vector, then in vector order: a fixed order of additions */
#pragma unroll
        for (int j = 0; j < 8; j++) a += __expf(f[u][j] - mn);
        add += a;
    }
    s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + add;
    m = mn;
}

/* Vector i of the row, rewritten in place as dlogits (0 in the padding). */
__device__ __forceinline__ void dlogits8(bf16 *x, uint4 raw, int i, int V, int target, float lse,
                                         float dloss) {
    float f[8];
    unpack8(f, raw);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int v = i * 8 + j;
        f[j] = v < V ? dloss * (__expf(f[j] - lse) - (v == target ? 1.0f : 0.0f)) : 0.0f;
    }
    store8(x + (size_t)i * 8, f);
}

/* Thread t owns vectors t, t + kCeThreads, ... in both passes, taken kCeUnroll at a time (all
 * loads issued before any is used) while a whole group fits, then one at a time.
 * Pass 1: this thread's running (max, sum of exp) over its vectors of the row; a copy of
 * each vector goes to `stage` when given. */
__device__ __forceinline__ void ce_row_stats(const uint4 *xv, uint4 *stage, int nvec, int V, float &m,
                                             float &s) {
    constexpr int kStep = kCeUnroll * kCeThreads;
    int i = threadIdx.x;
    for (; i + (kCeUnroll - 1) * kCeThreads < nvec; i += kStep) {
        uint4 raw[kCeUnroll];
#pragma unroll
        for (int u = 0; u < kCeUnroll; u++) raw[u] = xv[i + u * kCeThreads];
        if (stage) {
#pragma unroll
            for (int u = 0; u < kCeUnroll; u++) stage[i + u * kCeThreads] = raw[u];
        }
        softmax_fold<kCeUnroll>(m, s, raw, i, V);
    }
    for (; i < nvec; i += kCeThreads) {
        uint4 raw[kCeUnroll];
        raw[0] = xv[i];
        if (stage) stage[i] = raw[0];
        softmax_fold<1>(m, s, raw, i, V);
    }
}

/* The block's log-sum-exp from every thread's (m, s), merged in a fixed order. Ends with the
 * block synchronised; red_m/red_s may be reused after the block's next __syncthreads. */
__device__ __forceinline__ float ce_block_lse(float m, float s, float *red_m, float *red_s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        softmax_merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
    for (int w = 1; w < kCeThreads / 32; w++) softmax_merge(m, s, red_m[w], red_s[w]);
    return m + logf(s);
}

/* Pass 2: dlogits of this thread's vectors, read from src and written to dst (the same row,
 * in global or shared memory). */
__device__ __forceinline__ void ce_row_dlogits(const uint4 *src, bf16 *dst, int nvec, int V, int target,
                                               float lse, float dloss) {
    constexpr int kStep = kCeUnroll * kCeThreads;
    /* All of a group's loads go out before its stores: the compiler cannot move a load of src
     * above a store through dst by itself. */
    int i = threadIdx.x;
    for (; i + (kCeUnroll - 1) * kCeThreads < nvec; i += kStep) {
        uint4 raw[kCeUnroll];
#pragma unroll
        for (int u = 0; u < kCeUnroll; u++) raw[u] = src[i + u * kCeThreads];
#pragma unroll
        for (int u = 0; u < kCeUnroll; u++) dlogits8(dst, raw[u], i + u * kCeThreads, V, target, lse, dloss);
    }
    for (; i < nvec; i += kCeThreads) dlogits8(dst, src[i], i, V, target, lse, dloss);
}

template <bool kRowInSmem>
__global__ void __launch_bounds__(kCeThreads, 2)
crossentropy_fused_kernel(float *__restrict__ losses, float *__restrict__ lse_out,
                          bf16 *__restrict__ logits, const int32_t *__restrict__ targets,
                          float dloss, int V, int Vp) {
    extern __shared__ uint4 row_vecs[]; /* [Vp / 8] when kRowInSmem */
    __shared__ float red_m[kCeThreads / 32], red_s[kCeThreads / 32];
    const long row = blockIdx.x;
    bf16 *x = logits + (size_t)row * Vp;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x);
    const int target = targets[row], nvec = Vp / 8;
    /* Read before any thread of this block overwrites the row in pass 2. */
    const float target_logit = threadIdx.x == 0 ? __bfloat162float(x[target]) : 0.0f;
    float m = -INFINITY, s = 0.0f;
    ce_row_stats(xv, kRowInSmem ? row_vecs : nullptr, nvec, V, m, s);
    const float lse = ce_block_lse(m, s, red_m, red_s);
    if (threadIdx.x == 0) {
        losses[row] = lse - target_logit;
        if (lse_out) lse_out[row] = lse;
    }
    ce_row_dlogits(kRowInSmem ? row_vecs : xv, x, nvec, V, target, lse, dloss);
}

/* Mean in double by one block, fixed order. */
__global__ void mean_kernel(double *out, const float *__restrict__ x, int n) {
    __shared__ double red[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) t += red[w];
        *out = n > 0 ? t / n : 0.0;
    }
}

/* One warp per vocabulary row: out[v] = x . wte[v]. */
__global__ void logits_row_kernel(float *__restrict__ out, const bf16 *__restrict__ x,
                                  const bf16 *__restrict__ wte, int Vp, int C) {
    const int lane = threadIdx.x % 32;
    const long v = (long)blockIdx.x * kRowWarps + threadIdx.x / 32;
    if (v >= Vp) return;
    float s = 0.0f;
    for (int c0 = lane * 8; c0 < C; c0 += 256) {
        float a[8], b[8];
        load8(a, x + c0);
        load8(b, wte + (size_t)v * C + c0);
#pragma unroll
        for (int j = 0; j < 8; j++) s += a[j] * b[j];
    }
    s = warp_sum(s);
    if (lane == 0) out[v] = s;
}

} // namespace

void layernorm_forward_cuda(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                            const float *weight, const float *bias, int N, int C,
                            cudaStream_t stream) {
    check_ln_dims("layernorm_forward_cuda", N, C);
    layernorm_forward_dispatch<false>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C,
                                      stream);
}

void residual_layernorm_forward_cuda(bf16 *resid, bf16 *out, float *mean, float *rstd,
                                     const bf16 *a, const bf16 *b, const float *weight,
                                     const float *bias, int N, int C, cudaStream_t stream) {
    check_ln_dims("residual_layernorm_forward_cuda", N, C);
    layernorm_forward_dispatch<true>(resid, out, mean, rstd, a, b, weight, bias, N, C, stream);
}

size_t layernorm_backward_scratch_floats(int N, int C) {
    return (size_t)ln_backward_blocks(N) * 2 * (size_t)C;
}

void layernorm_backward_cuda(bf16 *dinp, float *dweight, float *dbias, const bf16 *dout,
                             const bf16 *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C, float *scratch,
                             cudaStream_t stream) {
    check_ln_dims("layernorm_backward_cuda", N, C);
    if (N == 0) return;
    const int blocks = ln_backward_blocks(N);
    const int rows_per_block = (N + blocks - 1) / blocks;
    const size_t smem = ln_backward_smem(C);
    switch ((C + 255) / 256) {
#define LN_BWD_CASE(V)                                                                          \
    case V:                                                                                     \
        if (smem > 48 * 1024)                                                                   \
            CUDA_CHECK(cudaFuncSetAttribute(layernorm_backward_kernel<V>,                       \
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,        \
                                            (int)smem));                                        \
        layernorm_backward_kernel<V><<<blocks, 32 * kLnBwdWarps, smem, stream>>>(               \
            dinp, scratch, dout, inp, weight, mean, rstd, N, C, rows_per_block);                \
        break;
        LN_BWD_CASE(1) LN_BWD_CASE(2) LN_BWD_CASE(3) LN_BWD_CASE(4)
        LN_BWD_CASE(5) LN_BWD_CASE(6) LN_BWD_CASE(7) LN_BWD_CASE(8)
#undef LN_BWD_CASE
    }
    KERNEL_CHECK("layernorm_backward_kernel");
    layernorm_params_reduce_kernel<<<ceil_div_u(2 * (size_t)C, kReduceCols), kReduceCols * kReduceRows, 0,
                                     stream>>>(dweight, dbias, scratch, blocks, C);
    KERNEL_CHECK("layernorm_params_reduce_kernel");
}

static void check_qk_dims(const char *op, int N, int H, int D) {
    if (D < 1 || D > 32 * kQkMaxPerLane || H < 1 || N < 0)
        fatal(EXIT_RUNTIME, "%s: N = %d, H = %d, D = %d (need D in [1, %d])", op, N, H, D,
              32 * kQkMaxPerLane);
}

/* Whether the vector kernels apply: D / 8 a power of two up to 32 lanes, every row start
 * 16-byte aligned. */
static bool qk_vec_ok(int D, std::initializer_list<std::pair<const void *, long>> rows) {
    const int G = D / 8;
    if (D % 8 != 0 || G < 1 || G > 32 || (G & (G - 1)) != 0) return false;
    for (const auto &r : rows)
        if ((uintptr_t)r.first % 16 != 0 || r.second % 8 != 0) return false;
    return true;
}

void qk_normalise_forward_cuda(bf16 *k, long k_stride, const bf16 *q, long q_stride, int N,
                               int H, int D, cudaStream_t stream) {
    check_qk_dims("qk_normalise_forward_cuda", N, H, D);
    if (N == 0) return;
    if (qk_vec_ok(D, {{k, k_stride}, {q, q_stride}})) {
        const size_t threads = (size_t)N * H * (D / 8);
        qk_normalise_forward_vec_kernel<<<ceil_div_u(threads, 256), 256, 0, stream>>>(
            k, k_stride, q, q_stride, N, H, D);
        KERNEL_CHECK("qk_normalise_forward_vec_kernel");
        return;
    }
    qk_normalise_forward_kernel<<<ceil_div_u((size_t)N * H, kRowWarps), 32 * kRowWarps, 0,
                                  stream>>>(k, k_stride, q, q_stride, N, H, D);
    KERNEL_CHECK("qk_normalise_forward_kernel");
}

void qk_normalise_backward_cuda(bf16 *dq, long dq_stride, const bf16 *dk, long dk_stride,
                                const bf16 *q, long q_stride, const bf16 *k, long k_stride, int N,
                                int H, int D, cudaStream_t stream) {
    check_qk_dims("qk_normalise_backward_cuda", N, H, D);
    if (N == 0) return;
    if (qk_vec_ok(D, {{dq, dq_stride}, {dk, dk_stride}, {q, q_stride}, {k, k_stride}})) {
        const size_t threads = (size_t)N * H * (D / 8);
        qk_normalise_backward_vec_kernel<<<ceil_div_u(threads, 256), 256, 0, stream>>>(
            dq, dq_stride, dk, dk_stride, q, q_stride, k, k_stride, N, H, D);
        KERNEL_CHECK("qk_normalise_backward_vec_kernel");
        return;
    }
    qk_normalise_backward_kernel<<<ceil_div_u((size_t)N * H, kRowWarps), 32 * kRowWarps, 0,
                                   stream>>>(dq, dq_stride, dk, dk_stride, q, q_stride, k,
                                             k_stride, N, H, D);
    KERNEL_CHECK("qk_normalise_backward_kernel");
}

void crossentropy_fused_cuda(float *losses, float *lse, bf16 *logits_dlogits,
                             const int32_t *targets, float dloss, int N, int V, int Vp,
                             cudaStream_t stream) {
    if (Vp % 8 != 0 || V < 1 || V > Vp)
        fatal(EXIT_RUNTIME, "crossentropy_fused_cuda: V = %d, Vp = %d (need 1 <= V <= Vp, Vp %% 8 == 0)",
              V, Vp);
    if (N == 0) return;
    const size_t smem = (size_t)Vp * sizeof(bf16);
    if (smem <= kCeMaxSmemBytes) {
        if (smem > 48 * 1024)
            CUDA_CHECK(cudaFuncSetAttribute(crossentropy_fused_kernel<true>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        crossentropy_fused_kernel<true><<<N, kCeThreads, smem, stream>>>(losses, lse, logits_dlogits,
                                                                         targets, dloss, V, Vp);
    } else {
        crossentropy_fused_kernel<false><<<N, kCeThreads, 0, stream>>>(losses, lse, logits_dlogits,
                                                                       targets, dloss, V, Vp);
    }
    KERNEL_CHECK("crossentropy_fused_kernel");
}

void mean_cuda(double *out, const float *x, int n, cudaStream_t stream) {
    mean_kernel<<<1, 1024, 0, stream>>>(out, x, n);
    KERNEL_CHECK("mean_kernel");
}

void logits_row_cuda(float *out, const bf16 *x, const bf16 *wte, int Vp, int C,
                     cudaStream_t stream) {
    if (C % 8 != 0) fatal(EXIT_RUNTIME, "logits_row_cuda: C = %d is not a multiple of 8", C);
    logits_row_kernel<<<ceil_div_u((size_t)Vp, kRowWarps), 32 * kRowWarps, 0, stream>>>(out, x, wte,
                                                                                      Vp, C);
    KERNEL_CHECK("logits_row_kernel");
}
