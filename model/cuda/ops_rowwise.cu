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
 * Shared-memory accumulators (rather than registers) keep the register count low enough for
 * several blocks per SM: the kernel is memory-bound and needs loads in flight. */
constexpr int kLnBwdWarps = 4;

int ln_backward_blocks(int N) {
    int g = (N + 8 * kLnBwdWarps - 1) / (8 * kLnBwdWarps); /* about 8 rows per warp */
    return g < 1 ? 1 : (g > 1024 ? 1024 : g);
}

size_t ln_backward_smem(int C) { return (size_t)kLnBwdWarps * 2 * C * sizeof(float); }

template <int VPL>
__global__ void __launch_bounds__(32 * kLnBwdWarps)
layernorm_backward_kernel(bf16 *__restrict__ dinp, float *__restrict__ scratch,
                          const bf16 *__restrict__ dout, const bf16 *__restrict__ inp,
                          const float *__restrict__ weight, const float *__restrict__ mean,
                          const float *__restrict__ rstd, int N, int C, int rows_per_block) {
    extern __shared__ float warp_acc[]; /* [warps][2][8][C/8]: element (j, vector vi) of channel vi*8+j */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, CV = C / 8;
    float *acc_w = warp_acc + (size_t)warp * 2 * C, *acc_b = acc_w + C;
    for (int c = lane; c < 2 * C; c += 32) acc_w[c] = 0.0f;
    __syncwarp();
    const long row_lo = (long)blockIdx.x * rows_per_block;
    const long row_hi = row_lo + rows_per_block < N ? row_lo + rows_per_block : N;
    for (long row = row_lo + warp; row < row_hi; row += kLnBwdWarps) {
        const size_t base = (size_t)row * C;
        const float m = mean[row], r = rstd[row];
        float dy[VPL][8], xh[VPL][8], d[VPL][8];
#pragma unroll
        for (int i = 0; i < VPL; i++) { /* all loads of the row first: they overlap */
            const int c0 = (i * 32 + lane) * 8;
            if (c0 < C) {
                load8(dy[i], dout + base + c0);
                load8(xh[i], inp + base + c0);
                load8(d[i], dinp + base + c0);
            }
        }
        float g_sum = 0.0f, gx_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int c0 = (i * 32 + lane) * 8;
            if (c0 < C) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    xh[i][j] = (xh[i][j] - m) * r;
                    const float g = dy[i][j] * __ldg(weight + c0 + j);
                    g_sum += g;
                    gx_sum += g * xh[i][j];
                }
            }
        }
        const float g_mean = warp_sum(g_sum) / (float)C, gx_mean = warp_sum(gx_sum) / (float)C;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int vi = i * 32 + lane, c0 = vi * 8;
            if (c0 < C) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    d[i][j] += r * (dy[i][j] * __ldg(weight + c0 + j) - g_mean - xh[i][j] * gx_mean);
                    acc_w[j * CV + vi] += dy[i][j] * xh[i][j];
                    acc_b[j * CV + vi] += dy[i][j];
                }
                store8(dinp + base + c0, d[i]);
            }
        }
    }
    __syncthreads();
    float *dst = scratch + (size_t)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        const int half = c / C, ch = c % C, slot = half * C + (ch % 8) * CV + ch / 8;
        float s = 0.0f;
        for (int w = 0; w < kLnBwdWarps; w++) s += warp_acc[(size_t)w * 2 * C + slot];
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

__device__ __forceinline__ void softmax_merge(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return; /* both empty */
    s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mn));
    m = mn;
}

__device__ __forceinline__ void unpack8(float (&f)[8], uint4 raw) {
    const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
    for (int j = 0; j < 8; j++) f[j] = __bfloat162float(h[j]);
}

template <bool kRowInSmem>
__global__ void __launch_bounds__(kCeThreads)
crossentropy_fused_kernel(float *__restrict__ losses, float *__restrict__ lse_out,
                          bf16 *__restrict__ logits, const int32_t *__restrict__ targets,
                          float dloss, int V, int Vp) {
    extern __shared__ uint4 row_vecs[]; /* [Vp / 8] when kRowInSmem */
    __shared__ float red_m[kCeThreads / 32], red_s[kCeThreads / 32];
    __shared__ float target_logit;
    const long row = blockIdx.x;
    bf16 *x = logits + (size_t)row * Vp;
    uint4 *xv = reinterpret_cast<uint4 *>(x);
    const int target = targets[row];
    /* Read before any thread of this block overwrites the row in pass 2. */
    if (threadIdx.x == 0) target_logit = __bfloat162float(x[target]);
    float m = -INFINITY, s = 0.0f;
    const int nvec = Vp / 8;
    for (int i = threadIdx.x; i < nvec; i += kCeThreads) {
        const uint4 raw = xv[i];
        if (kRowInSmem) row_vecs[i] = raw;
        float f[8];
        unpack8(f, raw);
        float vm = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (i * 8 + j < V) vm = fmaxf(vm, f[j]);
        if (vm == -INFINITY) continue; /* vector entirely in the padding */
        const float mn = fmaxf(m, vm);
        float add = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (i * 8 + j < V) add += __expf(f[j] - mn);
        s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + add;
        m = mn;
    }
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
    const float lse = m + logf(s);
    if (threadIdx.x == 0) {
        losses[row] = lse - target_logit;
        if (lse_out) lse_out[row] = lse;
    }
    for (int i = threadIdx.x; i < nvec; i += kCeThreads) {
        float f[8];
        unpack8(f, kRowInSmem ? row_vecs[i] : xv[i]);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int v = i * 8 + j;
            f[j] = v < V ? dloss * (__expf(f[j] - lse) - (v == target ? 1.0f : 0.0f)) : 0.0f;
        }
        store8(x + (size_t)i * 8, f);
    }
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
