/* Backward flash attention (dK, dV, and dQ by atomics) for Hopper (sm_90a), head dim 64.
 *
 * Same algorithm and policy interface as flash_bwd_dkdv_kernel (flash_bwd.cuh). A CTA owns
 * BN = 64 * NWG keys; warpgroup w owns keys [64w, 64w + 64) and, per query tile of BM = 64:
 *   S^T = K_w Q^T, dP^T = V_w dO^T      wgmma m64n64k16, all operands in shared memory
 *   P^T, dS^T                           registers (lse, delta of the 64 queries from smem)
 *   dV_w += P^T dO, dK_w += dS^T Q      wgmma, P^T / dS^T from registers, dO / Q N-major
 *   dQ_w = dS_w K_w                     dS^T goes to smem (bf16), read M-major; K_w N-major
 * The NWG partial dQ tiles (each over its own 64 keys) are summed through shared memory and
 * added once per element into the fp32 accumulator (float2 atomics), the reduction split over
 * the warpgroups. Without ATOMIC_DQ the dQ steps are skipped (deterministic mode computes dQ
 * in flash_bwd_dq_kernel). */
#ifndef ATTENTION_CUDA_FLASH_BWD_SM90_CUH
#define ATTENTION_CUDA_FLASH_BWD_SM90_CUH

#include <math.h>

#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_params.cuh"
#include "attention/cuda/flash_sm90.cuh"

namespace flash {

/* Row-wise pieces shared by the lockstep kernels here and the warp-specialised ones
 * (flash_bwd_sm90_ws.cuh). A thread holds two rows of its warp's 16 (hf = 0, 1: row0, row0 + 8)
 * in the m64nN accumulator layout, 32 values a row-pair (8 n-tiles of 4). */

/* Mask info, lse (log2 domain) and delta of the thread's two query rows row0 + 8 hf; rows past
 * q_len get lse = +inf (probabilities exactly 0) and delta 0. */
template <class Policy>
__device__ __forceinline__ void load_query_stats_sm90(const FlashParams &p, const Policy &pol, int bh, int row0,
                                                      int q_len, typename Policy::RowInfo qinfo[2], float lse2[2],
                                                      float delta[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = row0 + hf * 8;
        qinfo[hf] = typename Policy::RowInfo{};
        lse2[hf] = INFINITY;
        delta[hf] = 0.f;
        if (r < q_len) {
            qinfo[hf] = pol.q_info(bh, r);
            const long at = (long)bh * p.T + pol.q_row(bh, r);
            lse2[hf] = lse_to_log2(p.lse[at]);
            delta[hf] = p.delta[at];
        }
    }
}

/* dQ (scaled) of the thread's two query rows row0 + 8 hf, at their memory rows. */
template <class Policy>
__device__ __forceinline__ void store_dq_sm90(const FlashParams &p, const Policy &pol, int bh, int b, int h, int row0,
                                              int q_len, const float *dq, int tq) {
    constexpr int D = 64;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = row0 + hf * 8;
        if (r >= q_len) continue;
        bf16 *dst = head_base(p.dq, p.q_stride, b, p.T, h, D) + (long)pol.q_row(bh, r) * p.q_stride + 2 * tq;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++)
            *reinterpret_cast<uint32_t *>(dst + nd * 8) =
                pack_bf16(dq[4 * nd + 2 * hf] * p.scale, dq[4 * nd + 2 * hf + 1] * p.scale);
    }
}

/* STAGES = 3 (only without ATOMIC_DQ) lets dV, dK of tile i run on while tile i+1 starts:
 * the wait for them moves to the next tile's S^T, dP^T wait. */
template <int NWG_, int MIN_BLOCKS_ = 1, int STAGES_ = 2> struct Sm90BwdTiles {
    static constexpr int D = 64, NWG = NWG_, BN = 64 * NWG_, BM = 64, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int STAGES = STAGES_;
    static constexpr int THREADS = 128 * NWG;
    static constexpr int ROW_BYTES = 128; /* every tile here has rows of 64 bf16 */
    /* K, V, 2 stages of Q and dO, dS^T [BN][BM] bf16, the dQ exchange [NWG][32][128] fp32
     * (none with one warpgroup), lse and delta [2][BM], the queries' mask info [2][BM] (a
     * policy's RowInfo, <= 8 bytes), slack to align the base to 1024. */
    static constexpr int X_FLOATS = NWG > 1 ? NWG * 32 * 128 : 0;
    static constexpr int SMEM_BYTES = (2 * BN * D + 2 * STAGES * BM * D + BN * BM) * 2 + X_FLOATS * 4 +
                                      2 * STAGES * BM * 4 + STAGES * BM * 8 + 1024;
};

template <class Cfg, class Policy, bool ATOMIC_DQ>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    flash_bwd_sm90_kernel(FlashParams p, Policy pol) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BN = Cfg::BN, BM = Cfg::BM, THREADS = Cfg::THREADS;
    constexpr int NWG = Cfg::NWG, RB = Cfg::ROW_BYTES, ST = Cfg::STAGES;
    constexpr bool DEFER = ST == 3 && !ATOMIC_DQ;
    static_assert(ST == 2 || DEFER, "3 stages only for the deferred dK/dV wait");
    constexpr int NQ = BM / 8; /* n-tiles of S^T */
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sK = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023));
    bf16 *sV = sK + BN * D;
    bf16 *sQ = sV + BN * D;       /* stage s at sQ + s*BM*D */
    bf16 *sdO = sQ + ST * BM * D; /* stage s at sdO + s*BM*D */
    bf16 *sDS = sdO + ST * BM * D;
    float *sX = reinterpret_cast<float *>(sDS + BN * BM); /* [NWG][32][128] */
    float *sLse = sX + Cfg::X_FLOATS;                     /* [2][BM], log2 domain */
    float *sDelta = sLse + ST * BM;
    RowInfo *sQinfo = reinterpret_cast<RowInfo *>(sDelta + ST * BM); /* [ST][BM] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per query");
    const uint32_t k_addr = smem_addr(sK), v_addr = smem_addr(sV), q_addr = smem_addr(sQ),
                   do_addr = smem_addr(sdO), ds_addr = smem_addr(sDS);

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int kt = blockIdx.y, k0 = kt * BN;
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    if (k0 >= k_len) return;
    const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128, lane = tid % 32;
    const int g = lane / 4, tq = lane % 4;
    const int warp_row = wg * 64 + (wtid / 32) * 16; /* first key row (in tile) of this warp */

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    const bf16 *do_base = head_base(p.dout, p.o_stride, b, p.T, h, D);

    auto k_row_of = [&](int c) { return pol.k_row(bh, k0 + c); };
    load_tile_async<BN, D, THREADS>(sK, k_base, p.k_stride, k_len - k0, k_row_of);
    load_tile_async<BN, D, THREADS>(sV, v_base, p.v_stride, k_len - k0, k_row_of);
    const int n_tiles = pol.num_query_tiles(bh, kt, BM, BN);
    /* A query tile's indices (its place in the list, its rows, whether it is full, the memory
     * row and mask info of query q0 + tid) are fetched one tile before its copies and stats
     * loads are issued, as in the forward: sparse policies answer them by chains of dependent
     * global loads that would stall the tile loop. */
    struct QueryTile {
        int qt, q0;
        bool full;
        TileRows<BM, D, THREADS> rows;
        int stat_row; /* memory row of query q0 + tid (tid < BM), -1 past q_len */
        RowInfo info; /* of query q0 + tid */
    };
    auto qt_of = [&](int i) { return i < n_tiles ? pol.query_tile(bh, kt, i, BM, BN) : 0; };
    auto fetch_query_tile = [&](int i, int qt) {
        QueryTile t;
        t.qt = qt;
        t.q0 = qt * BM;
        const bool live = i < n_tiles;
        t.full = live && k0 + BN <= k_len && pol.tile_full(bh, qt, kt, BM, BN);
        fetch_tile_rows(t.rows, live ? q_len - t.q0 : 0, [&](int r) { return pol.q_row(bh, t.q0 + r); });
        const bool mine = live && tid < BM && t.q0 + tid < q_len;
        t.stat_row = mine ? pol.q_row(bh, t.q0 + tid) : -1;
        t.info = mine ? pol.q_info(bh, t.q0 + tid) : RowInfo{};
        return t;
    };
    auto load_q = [&](const QueryTile &t, int stage) {
        load_tile_rows(sQ + stage * BM * D, q_base, p.q_stride, t.rows);
        load_tile_rows(sdO + stage * BM * D, do_base, p.o_stride, t.rows);
    };
    /* Stats of query q0 + tid: lse (log2 domain) and delta; +inf / 0 past q_len. */
    auto fetch_stats = [&](const QueryTile &t, float &lse2, float &dl) {
        lse2 = INFINITY;
        dl = 0.f;
        if (t.stat_row >= 0) {
            const long at = (long)bh * p.T + t.stat_row;
            lse2 = lse_to_log2(p.lse[at]);
            dl = p.delta[at];
        }
    };
    /* cur: tile i, nxt: tile i+1 (copies issued at the start of step i), after: tile i+2
     * (fetched during step i), qt_ahead: the index of tile i+2, then i+3. */
    QueryTile cur = fetch_query_tile(0, qt_of(0));
    if (n_tiles > 0) {
        load_q(cur, 0);
        if (tid < BM) {
            fetch_stats(cur, sLse[tid], sDelta[tid]);
            sQinfo[tid] = cur.info;
        }
    }
    cp_async_commit();
    QueryTile nxt = fetch_query_tile(1, qt_of(1));
    int qt_ahead = qt_of(2);

    int key_row[2];
    RowInfo kinfo[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        key_row[hf] = k0 + warp_row + hf * 8 + g;
        kinfo[hf] = key_row[hf] < k_len ? pol.k_info(bh, key_row[hf]) : RowInfo{};
    }
    float dk[32], dv[32];
#pragma unroll
    for (int j = 0; j < 32; j++) dk[j] = dv[j] = 0.f;
    const float sl2 = p.scale_log2;
    const uint32_t kw_addr = k_addr + wg * 64 * RB, vw_addr = v_addr + wg * 64 * RB;

    uint32_t pa[16], da[16]; /* k-block kq (16 queries): registers 4kq .. 4kq+3 */
    for (int i = 0; i < n_tiles; i++) {
        const int stage = i % ST, next_stage = (i + 1) % ST;
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads(); /* tile i visible; next_stage, sDS and sX free */
        float lse_next = 0.f, delta_next = 0.f;
        if (i + 1 < n_tiles) {
            load_q(nxt, next_stage);
            if (tid < BM) fetch_stats(nxt, lse_next, delta_next);
        }
        cp_async_commit();
        const RowInfo info_next = nxt.info;
        const QueryTile after = fetch_query_tile(i + 2, qt_ahead);
        qt_ahead = qt_of(i + 3);
        const int q0 = cur.q0;
        const bool masked = !cur.full;
        const RowInfo *tQinfo = sQinfo + stage * BM;
        const uint32_t qs_addr = q_addr + stage * BM * RB, dos_addr = do_addr + stage * BM * RB;
        const float *tLse = sLse + stage * BM, *tDelta = sDelta + stage * BM;

        float st[32], dpt[32];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wgmma_m64n64k16_ss<0, 0>(st, desc_sw128(kw_addr + 32 * kk), desc_sw128(qs_addr + 32 * kk), kk > 0);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wgmma_m64n64k16_ss<0, 0>(dpt, desc_sw128(vw_addr + 32 * kk), desc_sw128(dos_addr + 32 * kk), kk > 0);
        wgmma_commit();
        wgmma_wait<0>(); /* with DEFER this also completes the previous tile's dV, dK */
        fence_regs(st);
        fence_regs(dpt);
        if (DEFER) {
            fence_regs(dk);
            fence_regs(dv);
            fence_regs_u32(pa);
            fence_regs_u32(da);
        }

#pragma unroll
        for (int nq = 0; nq < NQ; nq++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = nq * 8 + 2 * tq + (e & 1), hf = e >> 1;
                float pe = exp2_approx(fmaf(st[4 * nq + e], sl2, -tLse[col]));
                if (masked) {
                    const int qc = q0 + col;
                    if (!(qc < q_len && key_row[hf] < k_len && pol.allowed(tQinfo[col], kinfo[hf])))
                        pe = 0.f;
                }
                st[4 * nq + e] = pe;
                dpt[4 * nq + e] = pe * (dpt[4 * nq + e] - tDelta[col]);
            }

#pragma unroll
        for (int kq = 0; kq < BM / 16; kq++) {
#pragma unroll
            for (int r = 0; r < 4; r++) {
                pa[4 * kq + r] = pack_bf16(st[8 * kq + 2 * r], st[8 * kq + 2 * r + 1]);
                da[4 * kq + r] = pack_bf16(dpt[8 * kq + 2 * r], dpt[8 * kq + 2 * r + 1]);
            }
        }
        wgmma_fence();
#pragma unroll
        for (int kq = 0; kq < BM / 16; kq++)
            wgmma_m64n64k16_rs<1>(dv, &pa[4 * kq], desc_sw128(dos_addr + kq * 16 * RB), 1);
#pragma unroll
        for (int kq = 0; kq < BM / 16; kq++)
            wgmma_m64n64k16_rs<1>(dk, &da[4 * kq], desc_sw128(qs_addr + kq * 16 * RB), 1);
        wgmma_commit();

        if (ATOMIC_DQ) {
            /* dS^T rows of this warpgroup to smem while dV and dK run: da[4kq + r] holds
             * (row g + 8*(r&1), queries 16kq + 8*(r>>1) + 2tq, +1). */
#pragma unroll
            for (int kq = 0; kq < BM / 16; kq++)
#pragma unroll
                for (int r = 0; r < 4; r++)
                    *reinterpret_cast<uint32_t *>(
                        sDS + SwizzledTile<BM>::offset_col(warp_row + g + 8 * (r & 1),
                                                           16 * kq + 8 * (r >> 1) + 2 * tq)) = da[4 * kq + r];
            fence_proxy_async();
            named_barrier(1 + wg, 128); /* this warpgroup's dS^T rows are complete */
            float dq[32];
            const uint32_t dsw_addr = ds_addr + wg * 64 * BM * 2;
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++) /* k = this warpgroup's 64 keys, 16 at a time */
                wgmma_m64n64k16_ss<1, 1>(dq, desc_sw128(dsw_addr + ks * 16 * BM * 2),
                                         desc_sw128(kw_addr + ks * 16 * RB), ks > 0);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(dq);
            fence_regs(dk);
            fence_regs(dv);
            fence_regs_u32(pa);
            fence_regs_u32(da);

            /* Sum the NWG partials (one warpgroup: nothing to sum): write all, then each
             * warpgroup adds the float2 pairs pi = 0..15 with pi % NWG == wg (pair pi: n-tile
             * pi/2, row half pi%2). */
            if (NWG > 1) {
#pragma unroll
                for (int r = 0; r < 32; r++) sX[(wg * 32 + r) * 128 + wtid] = dq[r];
                __syncthreads();
            }
#pragma unroll
            for (int pi = 0; pi < 16; pi++) {
                if (pi % NWG != wg) continue;
                float2 sum = make_float2(dq[2 * pi], dq[2 * pi + 1]);
                if (NWG > 1) {
                    sum = make_float2(0.f, 0.f);
#pragma unroll
                    for (int w = 0; w < NWG; w++) {
                        sum.x += sX[(w * 32 + 2 * pi) * 128 + wtid];
                        sum.y += sX[(w * 32 + 2 * pi + 1) * 128 + wtid];
                    }
                }
                const int qr = q0 + (wtid / 32) * 16 + g + 8 * (pi % 2);
                if (qr < q_len) {
                    float *dst = p.dq_accum + (((long)b * p.T + pol.q_row(bh, qr)) * p.H + h) * D +
                                 8 * (pi / 2) + 2 * tq;
                    atomicAdd(reinterpret_cast<float2 *>(dst), make_float2(sum.x * p.scale, sum.y * p.scale));
                }
            }
        } else if (!DEFER) {
            wgmma_wait<0>();
            fence_regs(dk);
            fence_regs(dv);
            fence_regs_u32(pa);
            fence_regs_u32(da);
        }
        if (i + 1 < n_tiles && tid < BM) {
            sLse[next_stage * BM + tid] = lse_next;
            sDelta[next_stage * BM + tid] = delta_next;
            sQinfo[next_stage * BM + tid] = info_next;
        }
        cur = nxt;
        nxt = after;
    }
    if (DEFER) {
        wgmma_wait<0>();
        fence_regs(dk);
        fence_regs(dv);
        fence_regs_u32(pa);
        fence_regs_u32(da);
    }
    cp_async_wait<0>();
    store_dkdv_rows<64>(p, pol, bh, b, h, key_row, k_len, dk, dv, tq);
#else
    __trap(); /* built without sm_90a: the host never launches this kernel then */
#endif
}

/* STAGES = 3 lets dQ += dS K of tile i run on while tile i+1 starts (its wait moves to the
 * next tile's S, dP wait). */
template <int NWG_, int MIN_BLOCKS_ = 1, int STAGES_ = 2> struct Sm90DqTiles {
    static constexpr int D = 64, NWG = NWG_, BM = 64 * NWG_, BN = 64, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int STAGES = STAGES_;
    static constexpr int THREADS = 128 * NWG;
    static constexpr int ROW_BYTES = 128;
    /* Q, dO, the (K, V) stages, the keys' mask info per stage (<= 8 bytes each), alignment. */
    static constexpr int SMEM_BYTES = (2 * BM * D + STAGES * 2 * BN * D) * 2 + STAGES * BN * 8 + 1024;
};

/* dQ without atomics (deterministic), Hopper: warpgroup w owns 64 query rows and, per key tile
 * of 64, recomputes S = Q K^T and dP = dO V^T (wgmma, smem operands), forms dS in registers
 * and accumulates dQ += dS K (dS from registers, K read N-major). */
template <class Cfg, class Policy>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    flash_bwd_dq_sm90_kernel(FlashParams p, Policy pol) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS, RB = Cfg::ROW_BYTES;
    constexpr int ST = Cfg::STAGES;
    constexpr bool DEFER = ST == 3;
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023));
    bf16 *sdO = sQ + BM * D;
    bf16 *sK = sdO + BM * D; /* stage s: K at sK + s*2*BN*D, V BN*D further */
    RowInfo *sKinfo = reinterpret_cast<RowInfo *>(sK + ST * 2 * BN * D); /* [ST][BN] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per key");
    const uint32_t q_addr = smem_addr(sQ), do_addr = smem_addr(sdO), k_addr = smem_addr(sK);

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int qt = gridDim.y - 1 - blockIdx.y;
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    const int q0 = qt * BM;
    if (q0 >= q_len) return;
    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int warp_row = wg * 64 + ((tid % 128) / 32) * 16;

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    const bf16 *do_base = head_base(p.dout, p.o_stride, b, p.T, h, D);

    auto q_row_of = [&](int r) { return pol.q_row(bh, q0 + r); };
    load_tile_async<BM, D, THREADS>(sQ, q_base, p.q_stride, q_len - q0, q_row_of);
    load_tile_async<BM, D, THREADS>(sdO, do_base, p.o_stride, q_len - q0, q_row_of);
    const int n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
    /* Key tiles' indices are fetched a tile ahead, as in the forward (flash_fwd_sm90.cuh). */
    struct KeyTile {
        int k0;
        bool full;
        TileRows<BN, D, THREADS> rows;
        RowInfo info; /* of key k0 + tid (tid < BN) */
    };
    auto kt_of = [&](int i) { return i < n_tiles ? pol.key_tile(bh, qt, i, BM, BN) : 0; };
    auto fetch_key_tile = [&](int i, int kt) {
        KeyTile t;
        t.k0 = kt * BN;
        const bool live = i < n_tiles;
        t.full = live && t.k0 + BN <= k_len && pol.tile_full(bh, qt, kt, BM, BN);
        fetch_tile_rows(t.rows, live ? k_len - t.k0 : 0, [&](int c) { return pol.k_row(bh, t.k0 + c); });
        t.info = live && tid < BN && t.k0 + tid < k_len ? pol.k_info(bh, t.k0 + tid) : RowInfo{};
        return t;
    };
    auto load_kv = [&](int i, const KeyTile &t) {
        bf16 *stage = sK + (i % ST) * 2 * BN * D;
        load_tile_rows(stage, k_base, p.k_stride, t.rows);
        load_tile_rows(stage + BN * D, v_base, p.v_stride, t.rows);
        if (tid < BN) sKinfo[(i % ST) * BN + tid] = t.info;
    };
    KeyTile cur = fetch_key_tile(0, kt_of(0));
    if (n_tiles > 0) load_kv(0, cur);
    cp_async_commit();
    KeyTile nxt = fetch_key_tile(1, kt_of(1));
    int kt_ahead = kt_of(2);

    RowInfo qinfo[2];
    float lse2[2], delta[2];
    load_query_stats_sm90(p, pol, bh, q0 + warp_row + g, q_len, qinfo, lse2, delta);
    float dq[32];
#pragma unroll
    for (int j = 0; j < 32; j++) dq[j] = 0.f;
    const float sl2 = p.scale_log2;
    uint32_t da[16];

    for (int i = 0; i < n_tiles; i++) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (i + 1 < n_tiles) load_kv(i + 1, nxt);
        cp_async_commit();
        const KeyTile after = fetch_key_tile(i + 2, kt_ahead);
        kt_ahead = kt_of(i + 3);
        const int k0 = cur.k0;
        const RowInfo *tKinfo = sKinfo + (i % ST) * BN;
        const uint32_t ks_addr = k_addr + (i % ST) * 2 * BN * RB, vs_addr = ks_addr + BN * RB;

        float s[32], dp[32];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wgmma_m64n64k16_ss<0, 0>(s, desc_sw128(q_addr + wg * 64 * RB + 32 * kk), desc_sw128(ks_addr + 32 * kk), kk > 0);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wgmma_m64n64k16_ss<0, 0>(dp, desc_sw128(do_addr + wg * 64 * RB + 32 * kk), desc_sw128(vs_addr + 32 * kk), kk > 0);
        wgmma_commit();
        wgmma_wait<0>(); /* with DEFER this also completes the previous tile's dQ product */
        fence_regs(s);
        fence_regs(dp);
        if (DEFER) {
            fence_regs(dq);
            fence_regs_u32(da);
        }

        const bool masked = !cur.full;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = k0 + nt * 8 + 2 * tq + e;
                bool in_range = true;
                RowInfo ki{};
                if (masked) {
                    in_range = c < k_len;
                    if (in_range) ki = tKinfo[c - k0];
                }
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int at = 4 * nt + 2 * hf + e;
                    float pe = exp2_approx(fmaf(s[at], sl2, -lse2[hf]));
                    if (masked && !(in_range && pol.allowed(qinfo[hf], ki))) pe = 0.f;
                    s[at] = pe * (dp[at] - delta[hf]);
                }
            }
#pragma unroll
        for (int kb = 0; kb < BN / 16; kb++)
#pragma unroll
            for (int r = 0; r < 4; r++) da[4 * kb + r] = pack_bf16(s[8 * kb + 2 * r], s[8 * kb + 2 * r + 1]);
        wgmma_fence();
#pragma unroll
        for (int kb = 0; kb < BN / 16; kb++)
            wgmma_m64n64k16_rs<1>(dq, &da[4 * kb], desc_sw128(ks_addr + kb * 16 * RB), 1);
        wgmma_commit();
        if (!DEFER) {
            wgmma_wait<0>();
            fence_regs(dq);
            fence_regs_u32(da);
        }
        cur = nxt;
        nxt = after;
    }
    if (DEFER) {
        wgmma_wait<0>();
        fence_regs(dq);
        fence_regs_u32(da);
    }
    cp_async_wait<0>();
    store_dq_sm90(p, pol, bh, b, h, q0 + warp_row + g, q_len, dq, tq);
#else
    __trap();
#endif
}

} // namespace flash

#endif
