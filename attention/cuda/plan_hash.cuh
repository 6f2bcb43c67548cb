/* Plan stage 2 on the GPU: keep masks (qk_sparse) and hash buckets (hash_sparse).
 *
 * Buckets. bucket(x) = first argmax over [x.R, -x.R] (attention/attention.h). The CPU reference
 * takes the dot products in double, summed over d in increasing order. Here one thread hashes
 * one (row, head): it reads the D bf16 values once (16-byte loads), takes the nb/2 projections
 * in fp32 against R in shared memory, and keeps the fp32 argmax only when the gap between the
 * two largest candidates exceeds twice the error bound of both fp32 and double sums:
 *     |fl(x.r) - x.r| <= gamma_D * sum_d |x_d r_d| <= gamma_D * ||x||_2   (||r|| = 1),
 * gamma_D = D u / (1 - D u), u = 2^-24 (fp32) or 2^-53 (double). Then the exact argmax, and so
 * the CPU's, is the fp32 one. Otherwise (near ties, exact ties such as zero rows, tiny rows
 * whose fp32 squares underflow, inf or NaN) the thread recomputes in double in the CPU's order:
 * a bf16 times a float is exact in double, so fma and the CPU's multiply-add round alike and
 * the two sums agree to the bit. Near ties are rare (about 1e-4 of rows with Gaussian data). */
#ifndef ATTENTION_CUDA_PLAN_HASH_CUH
#define ATTENTION_CUDA_PLAN_HASH_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "attention/attention.h"
#include "runtime/rng.h"
}

namespace plan {

typedef __nv_bfloat16 bf16;

/* Hash rotations on the device, as attention/plan.c's build_rotations draws them on the host:
 * R[h][d][c] = n(h, d, c) / ||n(h, ., c)||, n = rng_normal at counter (h*D + d)*half + c, the
 * norm summed over d in increasing order in double. The same IEEE operations in the same order
 * (no contracted multiply-adds: __dmul_rn / __dadd_rn), so the floats equal the host's except
 * where CUDA's double log or cos differs from the C library's in the last bit right at a float
 * rounding boundary (about 1 value in 10^8; tests/gpu/test_plan_cuda compares every one).
 * One thread per element draws; one thread per column normalises. */
__device__ __forceinline__ float normal_as_host(uint64_t key, uint64_t counter) {
    /* runtime/rng.c: u1 in (0, 1], sqrt(-2 log u1) cos(2 pi u2), rounded to float. */
    const double u1 = __ddiv_rn(__dadd_rn((double)rng_u24(key, 2 * counter), 1.0), 16777216.0);
    const double u2 = __ddiv_rn((double)rng_u24(key, 2 * counter + 1), 16777216.0);
    return __double2float_rn(__dmul_rn(__dsqrt_rn(__dmul_rn(-2.0, log(u1))), cos(__dmul_rn(6.283185307179586, u2))));
}

__global__ void draw_normals_kernel(uint64_t key, int n, float *rot) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) rot[i] = normal_as_host(key, (uint64_t)i); /* element i = (h*D + d)*half + c */
}

__global__ void normalise_columns_kernel(int H, int D, int half, float *rot) {
    const int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= H * half) return;
    const int h = id / half, c = id % half;
    float *col = rot + (size_t)h * D * half + c; /* stride half */
    double norm2 = 0.0;
    for (int d = 0; d < D; d++) {
        const double x = col[(size_t)d * half];
        norm2 = __dadd_rn(norm2, __dmul_rn(x, x));
    }
    /* A zero column needs D exact-zero normals; guarded as on the host. */
    const double inv = norm2 > 0.0 ? __ddiv_rn(1.0, __dsqrt_rn(norm2)) : 0.0;
    for (int d = 0; d < D; d++) col[(size_t)d * half] = __double2float_rn(__dmul_rn((double)col[(size_t)d * half], inv));
}

/* keep[n] for row n = (b*H + h)*T + t, counters 2n (queries) and 2n + 1 (keys). */
__global__ void keep_mask_kernel(uint64_t key, uint32_t threshold, long rows, uint8_t *keep_q,
                                 uint8_t *keep_k) {
    long n = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (n >= rows) return;
    keep_q[n] = rng_u24(key, 2 * (uint64_t)n) >= threshold;
    keep_k[n] = rng_u24(key, 2 * (uint64_t)n + 1) >= threshold;
}

/* hash_center: out[b*T + t][h*D + d] = (float)(x_t - S_t / (t + 1)), S_t the blocked double
 * sum of x_0 .. x_t that attention/attention.h defines, operation for operation as
 * attention/plan.c's assign_buckets does it (round-to-nearest intrinsics, nothing contracted),
 * so the centred floats, and the buckets hashed from them, are the CPU's bit for bit. The
 * blocks make every pass parallel:
 *   1. centre_chunk_totals_kernel: one thread per (b, chunk, channel) folds its chunk's rows
 *      from 0.0 (every chunk but the last, which no later start needs);
 *   2. centre_chunk_starts_kernel: one thread per (b, channel) adds the totals up in chunk
 *      order, T / CENTRE_CHUNK additions;
 *   3. centre_rows_kernel: one thread per (b, chunk, channel) resumes the fold from its
 *      chunk's start and does the divisions and fp32 writes.
 * (Session 7's plan with a sequential sum over all T needed a 1,536-thread fold over every
 * row at B 4, T 8192, H*D 768: the centred build took 1.30 ms against 74 us plain.)
 * starts: [B][n_chunks][H*D] doubles, entry k = start_k; passes 1-2 build it in place (pass 1
 * leaves total_k in entry k + 1, pass 2 turns the entries into their running sums). */
constexpr int CENTRE_CHUNK = ATTN_CENTRE_CHUNK, CENTRE_BATCH = 32;
static_assert(CENTRE_CHUNK % CENTRE_BATCH == 0, "a chunk ends at a batch end");

__host__ __device__ constexpr int centre_chunks(int T) { return (T + CENTRE_CHUNK - 1) / CENTRE_CHUNK; }

__global__ void centre_chunk_totals_kernel(const bf16 *__restrict__ x, long stride, int B, int T,
                                           int HD, double *__restrict__ starts) {
    const int n_chunks = centre_chunks(T), whole = n_chunks - 1;
    const long id = blockIdx.x * (long)blockDim.x + threadIdx.x; /* ((b*whole + k)*HD + c) */
    if (id >= (long)B * whole * HD) return;
    const int c = (int)(id % HD), k = (int)(id / HD % whole);
    const long b = id / HD / whole;
    const bf16 *src = x + (b * T + (long)k * CENTRE_CHUNK) * stride + c;
    double total = 0.0;
    for (int t0 = 0; t0 < CENTRE_CHUNK; t0 += CENTRE_BATCH) {
        float v[CENTRE_BATCH]; /* loads a batch ahead of the additions */
#pragma unroll
        for (int i = 0; i < CENTRE_BATCH; i++) v[i] = __bfloat162float(src[(long)(t0 + i) * stride]);
#pragma unroll
        for (int i = 0; i < CENTRE_BATCH; i++) total = __dadd_rn(total, (double)v[i]);
    }
    starts[(b * n_chunks + k + 1) * HD + c] = total;
}

__global__ void centre_chunk_starts_kernel(int B, int T, int HD, double *__restrict__ starts) {
    const int n_chunks = centre_chunks(T);
    const long id = blockIdx.x * (long)blockDim.x + threadIdx.x; /* b*HD + c */
    if (id >= (long)B * HD) return;
    double *col = starts + id / HD * n_chunks * HD + id % HD;
    double start = 0.0;
    col[0] = start;
    for (int k = 1; k < n_chunks; k++) {
        start = __dadd_rn(start, col[(long)k * HD]);
        col[(long)k * HD] = start;
    }
}

__global__ void centre_rows_kernel(const bf16 *__restrict__ x, long stride, int B, int T, int HD,
                                   const double *__restrict__ starts, float *__restrict__ out) {
    const int n_chunks = centre_chunks(T);
    const long id = blockIdx.x * (long)blockDim.x + threadIdx.x; /* ((b*n_chunks + k)*HD + c) */
    if (id >= (long)B * n_chunks * HD) return;
    const int c = (int)(id % HD), k = (int)(id / HD % n_chunks);
    const long b = id / HD / n_chunks;
    const int t_begin = k * CENTRE_CHUNK, t_end = min(T, t_begin + CENTRE_CHUNK);
    const bf16 *src = x + b * T * stride + c;
    float *dst = out + b * T * (long)HD + c;
    double sum = starts[id];
    for (int t0 = t_begin; t0 < t_end; t0 += CENTRE_BATCH) {
        float v[CENTRE_BATCH];
#pragma unroll
        for (int i = 0; i < CENTRE_BATCH; i++)
            v[i] = t0 + i < t_end ? __bfloat162float(src[(long)(t0 + i) * stride]) : 0.0f;
#pragma unroll
        for (int i = 0; i < CENTRE_BATCH; i++) {
            const int t = t0 + i;
            if (t >= t_end) break;
            sum = __dadd_rn(sum, (double)v[i]);
            dst[(long)t * HD] = __double2float_rn(__dsub_rn((double)v[i], __ddiv_rn(sum, (double)(t + 1))));
        }
    }
}

/* The CPU's bucket, in its arithmetic: proj[c] = sum_d x_d R[d][c] in double, d increasing;
 * first maximum of [proj, -proj]. The first maximum of the concatenation is the first maximum
 * of the positive half unless the negative half's maximum is strictly larger. Rarely taken,
 * so kept out of line (its registers stay out of the fast path). A float times a float is
 * exact in double (48 significant bits), as is a bf16 times a float, so fma rounds as the
 * CPU's multiply-then-add does for either input type. */
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }

template <class In, int D, int HALF_MAX>
__device__ __noinline__ int exact_bucket(const In *row, const float *sR, int half) {
    double max_pos = 0.0, max_neg = 0.0;
    int arg_pos = 0, arg_neg = 0;
    for (int c = 0; c < half; c++) {
        double s = 0.0;
        for (int d = 0; d < D; d++)
            s = fma((double)to_float(row[d]), (double)sR[d * HALF_MAX + c], s);
        if (c == 0 || s > max_pos) {
            max_pos = s;
            arg_pos = c;
        }
        if (c == 0 || -s > max_neg) {
            max_neg = -s;
            arg_neg = c;
        }
    }
    return max_neg > max_pos ? half + arg_neg : arg_pos;
}

/* Grid: x = blocks of THREADS*RPT rows (b*T + t), y = head; thread i hashes rows i, i + THREADS,
 * ... (RPT of them). x: bf16 (the q/k projections) or fp32 (rows centred by centre_rows_kernel).
 * bucket: [B][H][T]. R: [H][D][half]. The block first copies its rows' D values into shared
 * memory with coalesced 16-byte loads (CHUNKS threads per row, all loads in flight at once),
 * rows padded by 16 bytes so that each thread's 16-byte reads of its own row fall into
 * distinct banks. Each R value read from shared memory (a broadcast: the delivery of operands,
 * not the FMAs, bounds this loop) serves RPT rows. */
template <class In, int D, int HALF_MAX, int THREADS, int RPT>
__global__ void __launch_bounds__(THREADS)
hash_bucket_kernel(const In *x, long stride, const float *rot, int T, int H, long rows,
                   int half, int32_t *bucket) {
    constexpr int PER16 = 16 / sizeof(In); /* values per 16-byte chunk */
    static_assert(D % PER16 == 0 && HALF_MAX % 4 == 0, "16-byte loads of x and of R");
    constexpr int CHUNKS = D / PER16, XS = D + PER16; /* chunks per row; padded row stride */
    constexpr int ROWS = THREADS * RPT;
    __shared__ __align__(16) float sR[D * HALF_MAX]; /* columns past half are zero */
    __shared__ __align__(16) In sX[ROWS * XS];
    const int h = blockIdx.y;
    const long row0 = blockIdx.x * (long)ROWS;
    const float *rot_h = rot + (long)h * D * half;
    for (int i = threadIdx.x; i < D * HALF_MAX; i += THREADS) {
        int d = i / HALF_MAX, c = i % HALF_MAX;
        sR[i] = c < half ? rot_h[d * half + c] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < CHUNKS * RPT; i++) {
        const int id = i * THREADS + threadIdx.x, r = id / CHUNKS, c = id % CHUNKS;
        if (row0 + r < rows)
            *reinterpret_cast<uint4 *>(sX + r * XS + c * PER16) =
                __ldg(reinterpret_cast<const uint4 *>(x + (row0 + r) * stride + (long)h * D) + c);
    }
    __syncthreads();

    float acc[RPT][HALF_MAX], norm2[RPT];
#pragma unroll
    for (int k = 0; k < RPT; k++) {
        norm2[k] = 0.0f;
#pragma unroll
        for (int c = 0; c < HALF_MAX; c++) acc[k][c] = 0.0f;
    }
#pragma unroll 1
    for (int i = 0; i < CHUNKS; i++) {
        uint4 raw[RPT];
#pragma unroll
        for (int k = 0; k < RPT; k++)
            raw[k] = *reinterpret_cast<const uint4 *>(sX + (threadIdx.x + k * THREADS) * XS + i * PER16);
#pragma unroll
        for (int j = 0; j < PER16; j++) {
            float xv[RPT];
#pragma unroll
            for (int k = 0; k < RPT; k++) {
                xv[k] = to_float(reinterpret_cast<const In *>(&raw[k])[j]);
                norm2[k] = fmaf(xv[k], xv[k], norm2[k]);
            }
            const float4 *r4 = reinterpret_cast<const float4 *>(sR + (i * PER16 + j) * HALF_MAX);
#pragma unroll
            for (int c4 = 0; c4 < HALF_MAX / 4; c4++) {
                const float4 r = r4[c4];
#pragma unroll
                for (int k = 0; k < RPT; k++) {
                    acc[k][4 * c4 + 0] = fmaf(xv[k], r.x, acc[k][4 * c4 + 0]);
                    acc[k][4 * c4 + 1] = fmaf(xv[k], r.y, acc[k][4 * c4 + 1]);
                    acc[k][4 * c4 + 2] = fmaf(xv[k], r.z, acc[k][4 * c4 + 2]);
                    acc[k][4 * c4 + 3] = fmaf(xv[k], r.w, acc[k][4 * c4 + 3]);
                }
            }
        }
    }
    constexpr float gamma32 = D * 5.9604645e-8f / (1.0f - D * 5.9604645e-8f);
    constexpr float gamma64 = D * 1.1102230e-16f * 1.01f;
#pragma unroll
    for (int k = 0; k < RPT; k++) {
        const long n = row0 + threadIdx.x + k * THREADS; /* b*T + t */
        if (n >= rows) break;
        /* First maximum over [acc, -acc] and the runner-up value (a tie makes the gap 0). */
        int best = 0;
        float best_v = acc[k][0], second_v = -INFINITY;
#pragma unroll
        for (int n2 = 1; n2 < 2 * HALF_MAX; n2++) {
            const int c = n2 % HALF_MAX;
            if (c >= half) continue;
            const float v = n2 < HALF_MAX ? acc[k][c] : -acc[k][c];
            if (v > best_v) {
                second_v = best_v;
                best_v = v;
                best = n2 < HALF_MAX ? c : half + c;
            } else if (v > second_v) {
                second_v = v;
            }
        }
        /* 2.05 rather than 2: covers the rounding of norm2, of its square root and of ||r||;
         * the absolute term covers products that round in the subnormal range. */
        const float margin = 2.05f * (gamma32 + gamma64) * sqrtf(norm2[k]) + D * 3.0e-45f;
        /* Comparisons written so that NaN or inf anywhere take the exact path. */
        if (!(best_v - second_v > margin) || !(norm2[k] >= 1e-30f))
            best = exact_bucket<In, D, HALF_MAX>(sX + (threadIdx.x + k * THREADS) * XS, sR, half);
        const long b = n / T, t = n % T;
        bucket[(b * H + h) * (long)T + t] = best;
    }
}

} // namespace plan

#endif
