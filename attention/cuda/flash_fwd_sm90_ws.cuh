/* Forward flash attention for Hopper (sm_90a), head dim 64, warp-specialised (flash_ws.cuh):
 * a producer warpgroup loads Q once and K/V tiles into a ring of stages, NWG consumer
 * warpgroups (64 query rows each) multiply. Inside a consumer the software pipeline is
 * flash_fwd_sm90.cuh's: S_j and P_{j-1} V_{j-1} in flight together, softmax of S_j while
 * P_{j-1} V_{j-1} runs. Same policy interface, masks and epilogue as the other forward kernels.
 * A TMA policy (flash_tma.cuh) has the producer's thread 0 load Q, K and V by tensor copies. */
#ifndef ATTENTION_CUDA_FLASH_FWD_SM90_WS_CUH
#define ATTENTION_CUDA_FLASH_FWD_SM90_WS_CUH

#include <math.h>

#include "attention/cuda/flash_fwd_sm90.cuh"
#include "attention/cuda/flash_ws.cuh"

namespace flash {

/* PINGPONG (two consumer warpgroups): the warpgroups take turns issuing their products
 * (named barriers 1 and 2), so that one's softmax runs while the other's products do. An
 * item's turns balance (each barrier gets as many arrivals as waits, and warpgroup 1 hands the
 * first turn of the next item over only after its last one), so a persistent CTA takes them
 * item after item. */
template <int NWG_, int BN_, int STAGES_, bool PINGPONG_ = false>
struct Sm90FwdWsTiles : WsShape<NWG_, 1> {
    static constexpr int D = 64, NWG = NWG_, BM = 64 * NWG_, BN = BN_, STAGES = STAGES_;
    static constexpr bool PINGPONG = PINGPONG_ && NWG_ == 2;
    static constexpr int MIN_BLOCKS = 1;
    static constexpr int NT = BN / 8, KN = BN / 16, ND = D / 8, ROW_BYTES = D * 2;
    /* Q (a persistent launch adds ITEM_BYTES for a second Q), the K/V stages, the keys' mask
     * info [STAGES][BN] (<= 8 bytes each), the stages' WsTileMeta, the mbarriers (Q full and
     * empty, two of each, full[STAGES], empty[STAGES]), the item indices (flash_ws.cuh,
     * ws_draw), slack to align to 1024. */
    static constexpr int ITEM_BYTES = BM * D * 2;
    static constexpr int SMEM_BYTES = ITEM_BYTES + STAGES * 2 * BN * D * 2 + STAGES * BN * 8 +
                                      STAGES * (int)sizeof(WsTileMeta) + (4 + 2 * STAGES) * 8 + 16 + 1024;
    static_assert(BN == 64 || BN == 128, "wgmma N of S");
    static_assert(STAGES >= 2, "a ring needs two stages");
};

template <class Cfg, class Policy, bool PERSISTENT>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    flash_fwd_sm90_ws_kernel(FlashParams p, const __grid_constant__ Policy pol) { /* TMA reads pol.maps in place */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, ST = Cfg::STAGES;
    constexpr int NT = Cfg::NT, KN = Cfg::KN, ND = Cfg::ND, RB = Cfg::ROW_BYTES;
    constexpr int STAGE_ELEMS = 2 * BN * D, STAGE_BYTES = STAGE_ELEMS * 2;
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    constexpr int NBUF = PERSISTENT ? 2 : 1, QB = Cfg::ITEM_BYTES;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023)); /* [NBUF] */
    bf16 *sKV = sQ + NBUF * BM * D; /* stage s: K at sKV + s*STAGE_ELEMS, V BN*D further */
    RowInfo *sKinfo = reinterpret_cast<RowInfo *>(sKV + ST * STAGE_ELEMS); /* [ST][BN] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per key");
    WsTileMeta *sMeta = reinterpret_cast<WsTileMeta *>(reinterpret_cast<unsigned char *>(sKinfo) + ST * BN * 8);
    const uint32_t q_addr = smem_addr(sQ), kv_addr = smem_addr(sKV);
    const ItemOperand<NBUF> q_op{smem_addr(sMeta + ST)};
    const StageRing<ST> ring{q_op.bar + 16u * NBUF};
    int *sItem = reinterpret_cast<int *>(reinterpret_cast<uint64_t *>(sMeta + ST) + 2 * NBUF + 2 * ST); /* [NBUF] */
    volatile int *sDraw = sItem + NBUF;

    const int BH = p.B * p.H, n_qt = (p.T + BM - 1) / BM, n_work = BH * n_qt;
    const int tid = threadIdx.x, lane = tid % 32;
    /* warp-uniform (a shuffle from lane 0), as in the backward (flash_bwd_sm90_ws.cuh), so that
     * Q's descriptors are built on the uniform datapath */
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);

    ws_setup(ring, q_op, Cfg::CONSUMERS, Policy::TMA);

    if (wg == Cfg::NWG) { /* the producer warpgroup */
        ws_producer_regs<Cfg, PERSISTENT>();
        const int ptid = tid - Cfg::CONSUMERS;
        int item = 0, first = 0; /* the CTA's items so far, ring items so far */
        for (int w = blockIdx.x; w < n_work;) {
            int bh;
            const int qt = ws_query_tile(w, BH, p.head_group, n_qt, bh), q0 = qt * BM, q_len = pol.q_len(bh);
            const int drawn = PERSISTENT ? ws_draw(p.work_counter, n_work, ptid) : n_work;
            if (q0 < q_len) { /* tiles past q_len (dropped qk queries) are nobody's work */
                const int b = bh / p.H, h = bh % p.H, n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
                const int qb = q_op.wait_free(item);
                if constexpr (Policy::TMA) {
                    if (ptid == 0) {
                        if (PERSISTENT) sItem[qb] = w;
                        tma_load_tiles(q_op.full(qb), QB, q_addr + qb * QB, &pol.maps.q, 0, nullptr, h, q0, b);
                    }
                    item++;
                } else {
                    producer_copy_rows<BM>(q_addr + qb * QB, head_base(p.q, p.q_stride, b, p.T, h, D), p.q_stride,
                                           q_len - q0, [&](int r) { return pol.q_row(bh, q0 + r); }, ptid);
                    if (PERSISTENT && ptid == 0) sItem[qb] = w;
                    q_op.commit(item++, ptid);
                }
                produce_key_tiles<BM, BN, ST, (Cfg::template Regs<PERSISTENT>::PRODUCER <= 24)>(ring, p, pol, bh, qt, n_tiles, first, kv_addr, sKinfo, sMeta, ptid);
                first += n_tiles;
            }
            w = PERSISTENT ? ws_share(drawn, sDraw, ptid) : n_work;
        }
        if (PERSISTENT) { /* the end of the walk */
            const int qb = q_op.wait_free(item);
            if (ptid == 0) sItem[qb] = -1;
            q_op.commit(item, ptid, Policy::TMA);
        }
        cp_async_wait<0>(); /* nothing in flight when the CTA's shared memory goes away */
        return;
    }

    /* Consumer warpgroup wg: query rows [64 wg, 64 wg + 64) of each tile. */
    ws_consumer_regs<Cfg, PERSISTENT>();
    const int g = lane / 4, tq = lane % 4;
    const int warp_row = wg * 64 + ((tid % 128) / 32) * 16; /* first tile row of this warp */
    const float sl2 = p.scale_log2;
    const DescSw128 q_desc = DescSw128::of(q_addr), kv_desc = DescSw128::of(kv_addr);
    int first = 0;
    for (int my_item = 0;; my_item++) {
        /* A persistent CTA learns its next item with the item's Q; otherwise it has one. */
        int w = blockIdx.x;
        if (PERSISTENT) {
            w = sItem[q_op.acquire(my_item)];
            if (w < 0) break;
        }
        int bh;
        const int qt = ws_query_tile(w, BH, p.head_group, n_qt, bh), q0 = qt * BM, q_len = pol.q_len(bh);
        if (q0 >= q_len) break; /* one-item CTAs only: the producer skips such items */
        const int b = bh / p.H, h = bh % p.H, k_len = pol.k_len(bh);
        const int n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
        bf16 *o_base = head_base(p.out, p.o_stride, b, p.T, h, D);
        RowInfo qinfo[2];
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int r = q0 + warp_row + hf * 8 + g;
            qinfo[hf] = r < q_len ? pol.q_info(bh, r) : RowInfo{};
        }
        /* This warpgroup's 64 rows of the item's Q buffer (waits until it is loaded). */
        const DescSw128 qw = q_desc + ((PERSISTENT ? my_item % NBUF : q_op.acquire(my_item)) * QB + wg * 64 * RB);
        float o[ND * 4];
#pragma unroll
        for (int j = 0; j < ND * 4; j++) o[j] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f}, alpha[2];
        float s[NT * 4];
        uint32_t p_cur[KN * 4], p_next[KN * 4];

        /* Ring item first + i holds key tile i. Waits until it is loaded and described; returns
         * its description. */
        auto acquire = [&](int i) { return sMeta[ring.acquire(first + i)]; };
        auto issue_s = [&](int i) {
            const DescSw128 kd = kv_desc + ((first + i) % ST) * STAGE_BYTES;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                wgmma_s_tile<BN>(s, qw.at(32 * kk), kd.at(32 * kk), kk > 0);
            wgmma_commit();
        };
        auto issue_pv = [&](int i) { /* O += p_cur V_i */
            const DescSw128 vd = kv_desc + (((first + i) % ST) * STAGE_BYTES + BN * RB);
#pragma unroll
            for (int kb = 0; kb < KN; kb++)
                wgmma_m64n64k16_rs<1>(o, &p_cur[4 * kb], vd.at(kb * 16 * RB), 1);
            wgmma_commit();
        };
        auto softmax = [&](int i, const WsTileMeta &m) {
            if (!m.full) mask_s_tile<NT>(s, pol, qinfo, sKinfo + ((first + i) % ST) * BN, m.row0, k_len, tq);
            online_softmax<NT, KN>(s, row_max, row_sum, alpha, p_next, sl2);
        };

        /* Ping-pong turns: barrier 1 + w is "warpgroup w may issue"; warpgroup 0 goes first. Each
         * warpgroup issues n_tiles + 1 times and passes the turn after each, except warpgroup 1's
         * last pass (nobody would take it). */
        constexpr bool PP = Cfg::PINGPONG;
        auto take_turn = [&]() {
            if (PP) named_barrier(1 + wg, 256);
        };
        auto pass_turn = [&]() {
            if (PP) named_barrier_arrive(2 - wg, 256);
        };
        if (PP && wg == 1 && n_tiles > 0) pass_turn();

        if (n_tiles > 0) {
            const WsTileMeta m = acquire(0);
            take_turn();
            wgmma_fence();
            issue_s(0);
            pass_turn();
            wgmma_wait<0>();
            fence_regs(s);
            softmax(0, m);
        }
        for (int i = 1; i < n_tiles; i++) {
#pragma unroll
            for (int j = 0; j < KN * 4; j++) p_cur[j] = p_next[j];
            const WsTileMeta m = acquire(i);
            take_turn();
            wgmma_fence();
            issue_s(i);
            issue_pv(i - 1);
            pass_turn();
            wgmma_wait<1>(); /* S_i done; P_{i-1} V_{i-1} may still run during the softmax */
            fence_regs(s);
            softmax(i, m);
            wgmma_wait<0>();
            fence_regs(o);
            fence_regs_u32(p_cur);
            ring.release(first + i - 1);
#pragma unroll
            for (int nd = 0; nd < ND; nd++)
#pragma unroll
                for (int e = 0; e < 4; e++) o[4 * nd + e] *= alpha[e >> 1];
        }
        q_op.release(my_item); /* every S product has retired */
        if (n_tiles > 0) {
#pragma unroll
            for (int j = 0; j < KN * 4; j++) p_cur[j] = p_next[j];
            take_turn();
            wgmma_fence();
            issue_pv(n_tiles - 1);
            wgmma_wait<0>();
            fence_regs(o);
            fence_regs_u32(p_cur);
            ring.release(first + n_tiles - 1);
            if (wg == 0) pass_turn();
        }
        store_fwd_rows<ND>(p, pol, bh, o_base, o, row_max, row_sum, q0 + warp_row + g, q_len, tq);
        first += n_tiles;
        if (!PERSISTENT) break;
    }
#else
    __trap(); /* built without sm_90a: the host never launches this kernel then */
#endif
}

} // namespace flash

#endif
