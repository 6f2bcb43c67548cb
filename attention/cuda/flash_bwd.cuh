/* Backward flash attention, mma.sync (m16n8k16 bf16) path, FlashAttention-2 style.
 *
 *   delta = rowsum(dO * O)                               (flash_bwd_preprocess_kernel)
 *   per key tile, over the query tiles that can see it   (flash_bwd_dkdv_kernel):
 *     S^T = K Q^T, P^T = exp(S^T*scale - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta)
 *     dV += P^T dO, dK += dS^T Q          (accumulated in registers, written once)
 *     dQ += dS K: either atomically added in fp32 from the same CTA (fast), or
 *   per query tile, over its key tiles (flash_bwd_dq_kernel): recomputes P and dS and
 *     accumulates dQ in registers: no atomics, bit-identical across runs (deterministic mode).
 *
 * In the dK/dV kernel warp w owns key rows [16w, 16w+16) of the tile and keeps their K and V
 * fragments in registers; Q, dO, lse and delta of the query tiles stream through two stages of
 * shared memory. Query rows past the end (or with no allowed key) get lse = +inf, so their
 * probabilities are exactly 0 without a per-element test. */
#ifndef ATTENTION_CUDA_FLASH_BWD_CUH
#define ATTENTION_CUDA_FLASH_BWD_CUH

#include <math.h>

#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_params.cuh"

namespace flash {

#define FLASH_LOG2E 1.4426950408889634f

/* lse in the exp2 domain; -inf (a row with no allowed key) becomes +inf so that P = 0. */
__device__ __forceinline__ float lse_to_log2(float lse) {
    return lse == -INFINITY ? INFINITY : lse * FLASH_LOG2E;
}

/* delta[bh][t] = sum_d dout * out over every memory row; with zero_accum also zeroes dq_accum
 * in its [B][T][H][D] layout (the atomic-dQ kernels add into it). D/8 threads per (b, t, h)
 * row, 16-byte loads. */
template <int D>
__global__ void flash_bwd_preprocess_kernel(FlashParams p, long n_rows /* B*T*H */, int zero_accum) {
    constexpr int LANES = D / 8;
    long id = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long row = id / LANES; /* (b*T + t)*H + h */
    int part = (int)(id % LANES);
    float acc = 0.f;
    if (row < n_rows) {
        long bt = row / p.H;
        int h = (int)(row % p.H);
        const uint4 o4 = *reinterpret_cast<const uint4 *>(p.out + bt * p.o_stride + h * D + part * 8);
        const uint4 d4 =
            *reinterpret_cast<const uint4 *>(p.dout + bt * p.o_stride + h * D + part * 8);
        const __nv_bfloat162 *o2 = reinterpret_cast<const __nv_bfloat162 *>(&o4);
        const __nv_bfloat162 *d2 = reinterpret_cast<const __nv_bfloat162 *>(&d4);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 of = __bfloat1622float2(o2[j]), df = __bfloat1622float2(d2[j]);
            acc = fmaf(of.x, df.x, fmaf(of.y, df.y, acc));
        }
        if (zero_accum) {
            float4 *z = reinterpret_cast<float4 *>(p.dq_accum + row * D + part * 8);
            z[0] = make_float4(0.f, 0.f, 0.f, 0.f);
            z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
#pragma unroll
    for (int off = LANES / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (row < n_rows && part == 0) {
        long bt = row / p.H;
        int h = (int)(row % p.H);
        long b = bt / p.T, t = bt % p.T;
        p.delta[(b * p.H + h) * p.T + t] = acc;
    }
}

/* dq (bf16, q_stride) = dq_accum (fp32 [B][T][H][D], already scaled); 8 elements a thread. */
template <int D> __global__ void flash_bwd_convert_dq_kernel(FlashParams p, long n_rows) {
    constexpr int LANES = D / 8;
    long id = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long row = id / LANES;
    int part = (int)(id % LANES);
    if (row >= n_rows) return;
    long bt = row / p.H;
    int h = (int)(row % p.H);
    const float4 *src = reinterpret_cast<const float4 *>(p.dq_accum + row * D + part * 8);
    float4 a = src[0], c = src[1];
    uint4 out;
    out.x = pack_bf16(a.x, a.y);
    out.y = pack_bf16(a.z, a.w);
    out.z = pack_bf16(c.x, c.y);
    out.w = pack_bf16(c.z, c.w);
    *reinterpret_cast<uint4 *>(p.dq + bt * p.q_stride + h * D + part * 8) = out;
}

template <int D_, int BN_, int BM_, int NW_> struct BwdTiles {
    static constexpr int D = D_, BN = BN_, BM = BM_, NW = NW_;
    static constexpr int THREADS = NW * 32;
    static constexpr int NQ = BM / 8;   /* n-tiles of S^T (queries) */
    static constexpr int KQ = BM / 16;  /* k-blocks of P^T dO and dS^T Q */
    static constexpr int ND = D / 8;    /* n-tiles of dK, dV */
    static constexpr int KD = D / 16;   /* k-blocks of K Q^T and V dO^T */
    static constexpr int QM = BM / 16;  /* query m-tiles of dQ */
    static constexpr int WPM = NW / QM; /* warps sharing one dQ m-tile (split over D) */
    static constexpr int NDW = ND / WPM;
    static constexpr int KB = BN / 16;  /* k-blocks of dS K */
    static constexpr int SMEM_BYTES = (2 * BN * D + 4 * BM * D + BN * BM) * 2 + 4 * BM * 4;
    static_assert(BN == 16 * NW, "one 16-row key m-tile per warp");
    static_assert(BM % 64 == 0 && NW % QM == 0 && NDW % 2 == 0, "dQ split");
};

/* dK (scaled) and dV of the thread's two key rows key_row[hf] (hf = 0, 1: a warp's rows g and
 * g + 8), at their memory rows; dk and dv in the m16n8 accumulator layout, D / 8 n-tiles of 4
 * (the portable kernels' [D/8][4] and the wgmma kernels' flat arrays alike). */
template <int D, class Policy>
__device__ __forceinline__ void store_dkdv_rows(const FlashParams &p, const Policy &pol, int bh, int b, int h,
                                                const int key_row[2], int k_len, const float *dk, const float *dv,
                                                int tq) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        if (key_row[hf] >= k_len) continue;
        const int mem = pol.k_row(bh, key_row[hf]);
        bf16 *dk_dst = head_base(p.dk, p.k_stride, b, p.T, h, D) + (long)mem * p.k_stride + 2 * tq;
        bf16 *dv_dst = head_base(p.dv, p.v_stride, b, p.T, h, D) + (long)mem * p.v_stride + 2 * tq;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            *reinterpret_cast<uint32_t *>(dk_dst + nd * 8) =
                pack_bf16(dk[4 * nd + 2 * hf] * p.scale, dk[4 * nd + 2 * hf + 1] * p.scale);
            *reinterpret_cast<uint32_t *>(dv_dst + nd * 8) = pack_bf16(dv[4 * nd + 2 * hf], dv[4 * nd + 2 * hf + 1]);
        }
    }
}

/* KV_REGS keeps this warp's K and V fragments in registers for the whole loop; without it
 * they are re-read from shared memory at each use (head dim 128: not enough registers). */
template <class Cfg, class Policy, bool ATOMIC_DQ, bool KV_REGS>
__global__ void __launch_bounds__(Cfg::THREADS) flash_bwd_dkdv_kernel(FlashParams p, Policy pol) {
    constexpr int D = Cfg::D, BN = Cfg::BN, BM = Cfg::BM, THREADS = Cfg::THREADS;
    constexpr int NQ = Cfg::NQ, KQ = Cfg::KQ, ND = Cfg::ND, KD = Cfg::KD;
    using Tile = SwizzledTile<D>;
    using DSTile = SwizzledTile<BM>;
    typedef typename Policy::RowInfo RowInfo;

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sK = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *sV = sK + BN * D;
    bf16 *sQ = sV + BN * D;      /* stage s at sQ + s*BM*D */
    bf16 *sdO = sQ + 2 * BM * D; /* stage s at sdO + s*BM*D */
    bf16 *sDS = sdO + 2 * BM * D;
    float *sLse = reinterpret_cast<float *>(sDS + BN * BM); /* [2][BM], log2 domain */
    float *sDelta = sLse + 2 * BM;                          /* [2][BM] */

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int kt = blockIdx.y, k0 = kt * BN; /* low key tiles have the most work: first */
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    if (k0 >= k_len) return;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    const bf16 *do_base = head_base(p.dout, p.o_stride, b, p.T, h, D);

    auto k_row_of = [&](int c) { return pol.k_row(bh, k0 + c); };
    load_tile_async<BN, D, THREADS>(sK, k_base, p.k_stride, k_len - k0, k_row_of);
    load_tile_async<BN, D, THREADS>(sV, v_base, p.v_stride, k_len - k0, k_row_of);

    const int n_tiles = pol.num_query_tiles(bh, kt, BM, BN);
    auto load_q = [&](int i, int stage) {
        const int q0 = pol.query_tile(bh, kt, i, BM, BN) * BM;
        auto row_of = [&](int r) { return pol.q_row(bh, q0 + r); };
        load_tile_async<BM, D, THREADS>(sQ + stage * BM * D, q_base, p.q_stride, q_len - q0,
                                        row_of);
        load_tile_async<BM, D, THREADS>(sdO + stage * BM * D, do_base, p.o_stride, q_len - q0,
                                        row_of);
    };
    /* lse and delta of tile i for thread tid < BM; issued early, stored late (hides latency). */
    auto fetch_stats = [&](int i, float &lse2, float &dl) {
        const int r = pol.query_tile(bh, kt, i, BM, BN) * BM + tid;
        lse2 = INFINITY;
        dl = 0.f;
        if (r < q_len) {
            const long at = (long)bh * p.T + pol.q_row(bh, r);
            lse2 = lse_to_log2(p.lse[at]);
            dl = p.delta[at];
        }
    };
    if (n_tiles > 0) {
        load_q(0, 0);
        if (tid < BM) fetch_stats(0, sLse[tid], sDelta[tid]);
    }
    cp_async_commit();

    int key_row[2];
    RowInfo kinfo[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        key_row[hf] = k0 + warp * 16 + hf * 8 + g;
        kinfo[hf] = key_row[hf] < k_len ? pol.k_info(bh, key_row[hf]) : RowInfo{};
    }
    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; nd++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nd][e] = dv[nd][e] = 0.f;
    uint32_t kf[KV_REGS ? KD : 1][4], vf[KV_REGS ? KD : 1][4];
    /* A fragments of this warp's 16 K (or V) rows, k-block kb of D. */
    auto load_kv_frag = [&](uint32_t frag[4], const bf16 *tile, int kb) {
        ldmatrix_x4(frag, smem_addr(tile + Tile::offset(warp * 16 + (lane % 16), kb * 2 + lane / 16)));
    };
    const float sl2 = p.scale_log2;

    for (int i = 0; i < n_tiles; i++) {
        const int stage = i & 1;
        cp_async_wait<0>();
        __syncthreads(); /* tile i landed; nobody reads stage^1 or sDS any more */
        if (KV_REGS && i == 0) {
#pragma unroll
            for (int kb = 0; kb < KD; kb++) {
                load_kv_frag(kf[KV_REGS ? kb : 0], sK, kb);
                load_kv_frag(vf[KV_REGS ? kb : 0], sV, kb);
            }
        }
        float lse_next = 0.f, delta_next = 0.f;
        if (i + 1 < n_tiles) {
            load_q(i + 1, stage ^ 1);
            if (tid < BM) fetch_stats(i + 1, lse_next, delta_next);
        }
        cp_async_commit();

        const int qt = pol.query_tile(bh, kt, i, BM, BN), q0 = qt * BM;
        const bf16 *tQ = sQ + stage * BM * D, *tdO = sdO + stage * BM * D;
        const float *tLse = sLse + stage * BM, *tDelta = sDelta + stage * BM;

        /* S^T = K Q^T and dP^T = V dO^T: Q and dO rows are the n index (n-major). */
        float st[NQ][4], dpt[NQ][4];
#pragma unroll
        for (int nq = 0; nq < NQ; nq++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[nq][e] = dpt[nq][e] = 0.f;
#pragma unroll
        for (int kb = 0; kb < KD; kb++) {
            const int f = KV_REGS ? kb : 0;
            if (!KV_REGS) {
                load_kv_frag(kf[f], sK, kb);
                load_kv_frag(vf[f], sV, kb);
            }
#pragma unroll
            for (int np = 0; np < NQ / 2; np++) {
                const int r = np * 16 + (lane % 8) + (lane / 16) * 8;
                const int c = kb * 2 + (lane / 8) % 2;
                uint32_t bq[4], bo[4];
                ldmatrix_x4(bq, smem_addr(tQ + Tile::offset(r, c)));
                ldmatrix_x4(bo, smem_addr(tdO + Tile::offset(r, c)));
                mma_16816(st[2 * np], kf[f], bq[0], bq[1]);
                mma_16816(st[2 * np + 1], kf[f], bq[2], bq[3]);
                mma_16816(dpt[2 * np], vf[f], bo[0], bo[1]);
                mma_16816(dpt[2 * np + 1], vf[f], bo[2], bo[3]);
            }
        }

        /* P^T and dS^T (unscaled: the softmax scale is applied to dK and dQ at the end). */
        const bool masked = !pol.tile_full(bh, qt, kt, BM, BN) || k0 + BN > k_len;
#pragma unroll
        for (int nq = 0; nq < NQ; nq++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = nq * 8 + 2 * tq + (e & 1), hf = e >> 1;
                float pe = exp2_approx(fmaf(st[nq][e], sl2, -tLse[col]));
                if (masked) {
                    const int qc = q0 + col;
                    if (!(qc < q_len && key_row[hf] < k_len &&
                          pol.allowed(pol.q_info(bh, qc), kinfo[hf])))
                        pe = 0.f;
                }
                st[nq][e] = pe;
                dpt[nq][e] = pe * (dpt[nq][e] - tDelta[col]);
            }

        /* dV += P^T dO, dK += dS^T Q: dO and Q rows are the k index (k-major: .trans). */
#pragma unroll
        for (int kq = 0; kq < KQ; kq++) {
            uint32_t pa[4], da[4];
            pa[0] = pack_bf16(st[2 * kq][0], st[2 * kq][1]);
            pa[1] = pack_bf16(st[2 * kq][2], st[2 * kq][3]);
            pa[2] = pack_bf16(st[2 * kq + 1][0], st[2 * kq + 1][1]);
            pa[3] = pack_bf16(st[2 * kq + 1][2], st[2 * kq + 1][3]);
            da[0] = pack_bf16(dpt[2 * kq][0], dpt[2 * kq][1]);
            da[1] = pack_bf16(dpt[2 * kq][2], dpt[2 * kq][3]);
            da[2] = pack_bf16(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
            da[3] = pack_bf16(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
#pragma unroll
            for (int dp = 0; dp < ND / 2; dp++) {
                const int r = kq * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int c = dp * 2 + lane / 16;
                uint32_t bo[4], bq[4];
                ldmatrix_x4_trans(bo, smem_addr(tdO + Tile::offset(r, c)));
                ldmatrix_x4_trans(bq, smem_addr(tQ + Tile::offset(r, c)));
                mma_16816(dv[2 * dp], pa, bo[0], bo[1]);
                mma_16816(dv[2 * dp + 1], pa, bo[2], bo[3]);
                mma_16816(dk[2 * dp], da, bq[0], bq[1]);
                mma_16816(dk[2 * dp + 1], da, bq[2], bq[3]);
            }
        }

        if (ATOMIC_DQ) {
            constexpr int QM = Cfg::QM, NDW = Cfg::NDW, KB = Cfg::KB;
            /* dS^T goes through shared memory: dQ needs it with queries as rows. */
#pragma unroll
            for (int nq = 0; nq < NQ; nq++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
                    *reinterpret_cast<uint32_t *>(
                        sDS + DSTile::offset_col(warp * 16 + hf * 8 + g, nq * 8 + 2 * tq)) =
                        pack_bf16(dpt[nq][2 * hf], dpt[nq][2 * hf + 1]);
            __syncthreads();
            const int qm = warp % QM, d_chunk0 = (warp / QM) * NDW;
            float acc[NDW][4];
#pragma unroll
            for (int nd = 0; nd < NDW; nd++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[nd][e] = 0.f;
#pragma unroll
            for (int kb = 0; kb < KB; kb++) {
                uint32_t a[4];
                const int kr = kb * 16 + (lane % 8) + (lane / 16) * 8;
                ldmatrix_x4_trans(a, smem_addr(sDS + DSTile::offset(kr, qm * 2 + (lane / 8) % 2)));
#pragma unroll
                for (int dp = 0; dp < NDW / 2; dp++) {
                    uint32_t bk[4];
                    const int r = kb * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                    ldmatrix_x4_trans(bk,
                                      smem_addr(sK + Tile::offset(r, d_chunk0 + dp * 2 + lane / 16)));
                    mma_16816(acc[2 * dp], a, bk[0], bk[1]);
                    mma_16816(acc[2 * dp + 1], a, bk[2], bk[3]);
                }
            }
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int qr = q0 + qm * 16 + hf * 8 + g;
                if (qr >= q_len) continue;
                float *dst = p.dq_accum + ((long)b * p.T + pol.q_row(bh, qr)) * p.H * D +
                             (long)h * D + d_chunk0 * 8 + 2 * tq;
#pragma unroll
                for (int nd = 0; nd < NDW; nd++)
                    atomicAdd(reinterpret_cast<float2 *>(dst + nd * 8),
                              make_float2(acc[nd][2 * hf] * p.scale, acc[nd][2 * hf + 1] * p.scale));
            }
        }
        if (i + 1 < n_tiles && tid < BM) {
            sLse[(stage ^ 1) * BM + tid] = lse_next;
            sDelta[(stage ^ 1) * BM + tid] = delta_next;
        }
    }
    cp_async_wait<0>();

    store_dkdv_rows<D>(p, pol, bh, b, h, key_row, k_len, &dk[0][0], &dv[0][0], tq);
}

template <int D_, int BM_, int BN_, int NW_> struct DqTiles {
    static constexpr int D = D_, BM = BM_, BN = BN_, NW = NW_;
    static constexpr int THREADS = NW * 32;
    static constexpr int MT = BM / (16 * NW);
    static constexpr int NT = BN / 8, KD = D / 16, ND = D / 8, KN = BN / 16;
    static constexpr int SMEM_BYTES = (2 * BM * D + 4 * BN * D) * 2; /* Q, dO + 2 stages K, V */
    static_assert(MT >= 1 && BM == MT * 16 * NW, "BM must be a multiple of 16 * warps");
};

/* Deterministic dQ: one CTA per query tile, dQ accumulated in registers over its key tiles. */
template <class Cfg, class Policy>
__global__ void __launch_bounds__(Cfg::THREADS) flash_bwd_dq_kernel(FlashParams p, Policy pol) {
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS;
    constexpr int MT = Cfg::MT, NT = Cfg::NT, KD = Cfg::KD, ND = Cfg::ND, KN = Cfg::KN;
    using Tile = SwizzledTile<D>;
    typedef typename Policy::RowInfo RowInfo;

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *sdO = sQ + BM * D;
    bf16 *sK = sdO + BM * D; /* stage s at sK + s*BN*D */
    bf16 *sV = sK + 2 * BN * D;

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int qt = gridDim.y - 1 - blockIdx.y;
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    const int q0 = qt * BM;
    if (q0 >= q_len) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    const bf16 *do_base = head_base(p.dout, p.o_stride, b, p.T, h, D);

    auto q_row_of = [&](int r) { return pol.q_row(bh, q0 + r); };
    load_tile_async<BM, D, THREADS>(sQ, q_base, p.q_stride, q_len - q0, q_row_of);
    load_tile_async<BM, D, THREADS>(sdO, do_base, p.o_stride, q_len - q0, q_row_of);
    const int n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
    auto load_kv = [&](int i, int stage) {
        const int k0 = pol.key_tile(bh, qt, i, BM, BN) * BN;
        auto row_of = [&](int c) { return pol.k_row(bh, k0 + c); };
        load_tile_async<BN, D, THREADS>(sK + stage * BN * D, k_base, p.k_stride, k_len - k0,
                                        row_of);
        load_tile_async<BN, D, THREADS>(sV + stage * BN * D, v_base, p.v_stride, k_len - k0,
                                        row_of);
    };
    if (n_tiles > 0) load_kv(0, 0);
    cp_async_commit();

    RowInfo qinfo[MT][2];
    float lse2[MT][2], delta[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int r = q0 + warp * MT * 16 + mt * 16 + hf * 8 + g;
            qinfo[mt][hf] = RowInfo{};
            lse2[mt][hf] = INFINITY;
            delta[mt][hf] = 0.f;
            if (r < q_len) {
                qinfo[mt][hf] = pol.q_info(bh, r);
                const long at = (long)bh * p.T + pol.q_row(bh, r);
                lse2[mt][hf] = lse_to_log2(p.lse[at]);
                delta[mt][hf] = p.delta[at];
            }
        }
    float dq[MT][ND][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
#pragma unroll
            for (int e = 0; e < 4; e++) dq[mt][nd][e] = 0.f;
    uint32_t qf[MT][KD][4], of[MT][KD][4];
    const float sl2 = p.scale_log2;

    for (int i = 0; i < n_tiles; i++) {
        cp_async_wait<0>();
        __syncthreads();
        if (i == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kb = 0; kb < KD; kb++) {
                    const int r = warp * MT * 16 + mt * 16 + (lane % 16);
                    ldmatrix_x4(qf[mt][kb], smem_addr(sQ + Tile::offset(r, kb * 2 + lane / 16)));
                    ldmatrix_x4(of[mt][kb], smem_addr(sdO + Tile::offset(r, kb * 2 + lane / 16)));
                }
        }
        if (i + 1 < n_tiles) load_kv(i + 1, (i + 1) & 1);
        cp_async_commit();

        const int kt = pol.key_tile(bh, qt, i, BM, BN), k0 = kt * BN;
        const bf16 *tK = sK + (i & 1) * BN * D, *tV = sV + (i & 1) * BN * D;

        /* S = Q K^T, dP = dO V^T: K and V rows are the n index (n-major). */
        float s[MT][NT][4], dp[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[mt][nt][e] = dp[mt][nt][e] = 0.f;
#pragma unroll
        for (int kb = 0; kb < KD; kb++)
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                const int c = np * 16 + (lane % 8) + (lane / 16) * 8;
                const int ch = kb * 2 + (lane / 8) % 2;
                uint32_t bk[4], bv[4];
                ldmatrix_x4(bk, smem_addr(tK + Tile::offset(c, ch)));
                ldmatrix_x4(bv, smem_addr(tV + Tile::offset(c, ch)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816(s[mt][2 * np], qf[mt][kb], bk[0], bk[1]);
                    mma_16816(s[mt][2 * np + 1], qf[mt][kb], bk[2], bk[3]);
                    mma_16816(dp[mt][2 * np], of[mt][kb], bv[0], bv[1]);
                    mma_16816(dp[mt][2 * np + 1], of[mt][kb], bv[2], bv[3]);
                }
            }

        const bool masked = !pol.tile_full(bh, qt, kt, BM, BN) || k0 + BN > k_len;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = k0 + nt * 8 + 2 * tq + e;
                bool in_range = true;
                RowInfo ki{};
                if (masked) {
                    in_range = c < k_len;
                    if (in_range) ki = pol.k_info(bh, c);
                }
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        float pe = exp2_approx(fmaf(s[mt][nt][hf * 2 + e], sl2, -lse2[mt][hf]));
                        if (masked && !(in_range && pol.allowed(qinfo[mt][hf], ki))) pe = 0.f;
                        s[mt][nt][hf * 2 + e] = pe * (dp[mt][nt][hf * 2 + e] - delta[mt][hf]);
                    }
            }

        /* dQ += dS K: dS from registers; K rows are the k index (k-major: .trans). */
#pragma unroll
        for (int kb = 0; kb < KN; kb++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = pack_bf16(s[mt][2 * kb][0], s[mt][2 * kb][1]);
                a[mt][1] = pack_bf16(s[mt][2 * kb][2], s[mt][2 * kb][3]);
                a[mt][2] = pack_bf16(s[mt][2 * kb + 1][0], s[mt][2 * kb + 1][1]);
                a[mt][3] = pack_bf16(s[mt][2 * kb + 1][2], s[mt][2 * kb + 1][3]);
            }
#pragma unroll
            for (int dpi = 0; dpi < ND / 2; dpi++) {
                uint32_t bk[4];
                const int r = kb * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                ldmatrix_x4_trans(bk, smem_addr(tK + Tile::offset(r, dpi * 2 + lane / 16)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816(dq[mt][2 * dpi], a[mt], bk[0], bk[1]);
                    mma_16816(dq[mt][2 * dpi + 1], a[mt], bk[2], bk[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int r = q0 + warp * MT * 16 + mt * 16 + hf * 8 + g;
            if (r >= q_len) continue;
            bf16 *dst = head_base(p.dq, p.q_stride, b, p.T, h, D) +
                        (long)pol.q_row(bh, r) * p.q_stride + 2 * tq;
#pragma unroll
            for (int nd = 0; nd < ND; nd++)
                *reinterpret_cast<uint32_t *>(dst + nd * 8) =
                    pack_bf16(dq[mt][nd][2 * hf] * p.scale, dq[mt][nd][2 * hf + 1] * p.scale);
        }
}

} // namespace flash

#endif
