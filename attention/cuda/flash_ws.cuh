/* Warp specialisation for the Hopper kernels: a producer warpgroup fills a ring of shared-memory
 * stages, NWG consumer warpgroups multiply, and mbarriers instead of __syncthreads tell each
 * side when a stage is full or free again.
 *
 * Why (attention/cuda/NOTES.md, v3/v4): with one __syncthreads per tile the warpgroups of a CTA
 * run in lockstep and each tile's chain of products, exponentials and products is exposed; with
 * a ring they drift apart, and the producer does every policy lookup (list entries, permuted
 * rows, mask info), so that consumers never wait on a chain of dependent global loads.
 *
 * The producer is a whole warpgroup because registers are allocated per warpgroup slot (each SM
 * sub-partition holds one warp of a warpgroup): with a lone producer warp the 9 warps' share was
 * 168 registers a thread and the consumers spilled. setmaxnreg moves registers from the producer
 * to the consumers (WsShape::Regs; ws_producer_regs, ws_consumer_regs).
 *
 * Ring protocol, item i in stage i % ST, its (i / ST)-th use of the stage:
 *   full[s]   each producer thread arrives twice: when its cp.async copies have landed
 *             (cp.async.mbarrier.arrive.noinc) and after its ordinary stores (tile description,
 *             mask info, statistics) with release semantics: 256 arrivals (129 when the stage
 *             comes by TMA: flash_tma.cuh);
 *   empty[s]  every consumer thread arrives once its warpgroup's products reading the stage have
 *             retired (one arrival a warp, predicated or branched, made ptxas serialise the
 *             wgmma pipeline: C7513).
 * Consumers fence the stage to the async proxy after the wait: cp.async writes through the
 * generic proxy, wgmma reads through the async one. */
#ifndef ATTENTION_CUDA_FLASH_WS_CUH
#define ATTENTION_CUDA_FLASH_WS_CUH

#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_params.cuh"
#include "attention/cuda/flash_sm90.cuh"
#include "attention/cuda/flash_tma.cuh"

namespace flash {

/* Threads and the register split of a CTA of NWG consumer warpgroups and one producer. */
template <int NWG, int MIN_BLOCKS> struct WsShape {
    static constexpr int CONSUMERS = 128 * NWG, THREADS = CONSUMERS + 128;
    /* The launch's share (65536 / MIN_BLOCKS / THREADS, rounded down to 8 registers), split. */
    static constexpr int LAUNCH_REGS = (65536 / MIN_BLOCKS / THREADS) / 8 * 8;
    /* A producer of P registers; the consumers share the rest (multiples of 8, at most 240). */
    template <int P> struct Split {
        static constexpr int PRODUCER = P, FIT = (LAUNCH_REGS * THREADS - 128 * P) / CONSUMERS / 8 * 8;
        static constexpr int CONSUMER = FIT > 240 ? 240 : FIT;
    };
    /* Producer 56 registers; 80 when persistent: it carries its walk over the items besides the
     * tile loop, and at 56 ptxas spilled 4 to 24 bytes (at 80 nothing spills on either side). */
    template <bool PERSISTENT> using Regs = Split<LAUNCH_REGS >= 160 ? (PERSISTENT ? 80 : 56) : 24>;
    static constexpr bool PINGPONG = false; /* the forward may turn it on (not persistent then) */
};

/* The first thing each side of a warp-specialised kernel does: setmaxnreg to its share. */
template <class Cfg, bool PERSISTENT> __device__ __forceinline__ void ws_producer_regs() {
    sm90::regs_dealloc<Cfg::template Regs<PERSISTENT>::PRODUCER>();
}
template <class Cfg, bool PERSISTENT> __device__ __forceinline__ void ws_consumer_regs() {
    sm90::regs_alloc<Cfg::template Regs<PERSISTENT>::CONSUMER>();
}

/* Where a stage's tile starts and whether it needs the per-element mask. */
struct WsTileMeta {
    int row0; /* first work row (key tile for the forward and dQ, query tile for dK/dV) */
    int full; /* every in-range pair of the tile is allowed */
};

/* N buffers, each behind a full and an empty mbarrier: use i of the ring is in buffer i % N,
 * the (i / N)-th use of that buffer. The three rings below (the producer's stages, the per-item
 * operand, the fused backward's dS^T buffers) differ only in who arrives on the full barrier. */
template <int N> struct MbarRing {
    uint32_t bar; /* full[N], then empty[N] (8 bytes each) */

    __device__ __forceinline__ uint32_t full(int b) const { return bar + 8u * b; }
    __device__ __forceinline__ uint32_t empty(int b) const { return bar + 8u * (N + b); }
    /* One thread, before the CTA's barrier. */
    __device__ __forceinline__ void init(int full_count, int empty_count) const {
        for (int b = 0; b < N; b++) {
            sm90::mbar_init(full(b), full_count);
            sm90::mbar_init(empty(b), empty_count);
        }
    }
    /* Filler: waits until use i's buffer is free (its previous use released); returns it. */
    __device__ __forceinline__ int wait_free(int i) const {
        const int b = i % N;
        if (i >= N) sm90::mbar_wait(empty(b), (i / N - 1) & 1);
        return b;
    }
    /* Reader: waits until use i's buffer is full; returns it. */
    __device__ __forceinline__ int wait_full(int i) const {
        const int b = i % N;
        sm90::mbar_wait(full(b), (i / N) & 1);
        return b;
    }
    __device__ __forceinline__ void release(int i) const { sm90::mbar_arrive(empty(i % N)); }
};

/* The producer's ring of ST stages. full: each producer thread arrives twice, when its cp.async
 * copies have landed and after its ordinary stores (256 arrivals; TMA_STAGE_ARRIVALS for
 * stages filled by TMA); empty: every consumer thread. */
template <int ST> struct StageRing : MbarRing<ST> {
    __device__ __forceinline__ void init(int consumers, int full_arrivals) const {
        MbarRing<ST>::init(full_arrivals, consumers);
    }
    /* Producer: after issuing the stage's copies and its ordinary stores (tma: the copies'
     * arrival was thread 0's arrive.expect_tx). */
    __device__ __forceinline__ void commit(int s, bool tma = false) const {
        if (!tma) sm90::mbar_arrive_cp_async(this->full(s));
        sm90::mbar_arrive(this->full(s));
    }
    /* Consumer: waits until item i is in its stage; returns the stage. */
    __device__ __forceinline__ int acquire(int i) const {
        const int s = this->wait_full(i);
        sm90::fence_proxy_async();
        return s;
    }
};

/* The operand a CTA loads once per work item and keeps for all of the item's ring items (Q for
 * the forward, Q and dO for dQ, K and V for dK/dV), in NBUF buffers: item j of the CTA in
 * buffer j % NBUF. A persistent CTA has two, so that the producer loads the next item's
 * operand while the consumers still work on the current one. full[b] completes a phase when
 * the producer's 128 cp.async arrivals have landed and, in a persistent CTA (NBUF = 2),
 * producer thread 0 has arrived after storing the item's index (sItem[b]; -1 ends the walk);
 * empty[b] when every consumer thread has retired the products reading it (with TMA,
 * flash_tma.cuh, full[b] counts thread 0's one arrive.expect_tx instead). The consumers
 * acquire every item, even one without ring items, so that the phases stay in step. */
template <int NBUF> struct ItemOperand : MbarRing<NBUF> {
    static constexpr int CP_ASYNC_ARRIVALS = NBUF > 1 ? 129 : 128;
    __device__ __forceinline__ void init(int consumers, int full_arrivals) const {
        MbarRing<NBUF>::init(full_arrivals, consumers);
    }
    /* Producer, after issuing its copies and (thread 0) storing the item's index. With TMA an
     * item's arrival is thread 0's arrive.expect_tx (tma_load_tiles), so only the end of a
     * persistent walk (no operand, index -1) comes here: thread 0's one arrival. */
    __device__ __forceinline__ void commit(int j, int ptid, bool tma = false) const {
        if (!tma) sm90::mbar_arrive_cp_async(this->full(j % NBUF));
        if ((tma || NBUF > 1) && ptid == 0) sm90::mbar_arrive(this->full(j % NBUF));
    }
    __device__ __forceinline__ int acquire(int j) const {
        const int b = this->wait_full(j);
        sm90::fence_proxy_async();
        return b;
    }
};

/* Work item w of n_work = BH * n_tiles, in groups of G heads (p.head_group, launch_ws; the
 * last group may have fewer): a group's items come before the next group's, and within a group
 * heads are innermost, query tiles run from the last (causal: the longest lists), key tiles
 * from the first. The CTAs running at once then hold nearby tiles of a few heads, so that the
 * rows they stream (K/V in the forward, Q/dO and the dQ accumulator in the backward) are read
 * from DRAM once and served to the others from L2. Without groups (G = BH), 132 CTAs over 192
 * heads at 4k x 16 held one tile a head and hit L2 21% of the time (dense backward 4.06 ms for
 * the work that took 2.45 at 8k x 4, 48 heads, 62% hits: H100, session 14, ncu). Ordering
 * every tile by list length instead made the hash forward 1.6x slower (H100, session 8,
 * attention/cuda/NOTES.md). */
__device__ __forceinline__ int ws_tile_rank(int w, int BH, int G, int n_tiles, int &bh) {
    const int g0 = w / (G * n_tiles) * G; /* the group's first head */
    const int r = w - g0 * n_tiles, heads = min(G, BH - g0);
    bh = g0 + r % heads;
    return r / heads;
}
__device__ __forceinline__ int ws_query_tile(int w, int BH, int G, int n_tiles, int &bh) {
    return n_tiles - 1 - ws_tile_rank(w, BH, G, n_tiles, bh);
}
__device__ __forceinline__ int ws_key_tile(int w, int BH, int G, int n_tiles, int &bh) {
    return ws_tile_rank(w, BH, G, n_tiles, bh);
}

/* The set-up of every warp-specialised kernel: thread 0 initialises the item operand's
 * barriers and the ring; then the CTA's last __syncthreads: from here on only the mbarriers.
 * tma: the producer fills both by TMA (flash_tma.cuh), which changes the full barriers'
 * arrival counts. */
template <int ST, int NBUF>
__device__ __forceinline__ void ws_setup(const StageRing<ST> &ring, const ItemOperand<NBUF> &op, int consumers,
                                         bool tma = false) {
    if (threadIdx.x == 0) {
        op.init(consumers, tma ? TMA_ITEM_ARRIVALS : ItemOperand<NBUF>::CP_ASYNC_ARRIVALS);
        ring.init(consumers, tma ? TMA_STAGE_ARRIVALS : 256);
    }
    __syncthreads();
}

/* The work items of a CTA. One CTA per item (gridDim.x == n_work): item blockIdx.x. A
 * persistent CTA: blockIdx.x first, then gridDim.x + atomicAdd(work_counter, 1) until n_work,
 * so that a CTA that drew short tiles comes back for more, as the hardware's scheduling does
 * for a grid of one CTA per tile (a fixed round robin made the trainer's hash step 1.5x
 * slower: its buckets are uneven). The producer draws; the consumers read each item's index
 * from sItem[buffer] once its operand is full. ws_draw is called by every producer thread
 * (thread 0's value counts) early, ws_share when the value is needed, so that the atomic's
 * latency hides under the item's copies. */
__device__ __forceinline__ int ws_draw(int *work_counter, int n_work, int ptid) {
    return ptid == 0 && (int)gridDim.x < n_work ? (int)gridDim.x + atomicAdd(work_counter, 1) : n_work;
}
constexpr int WS_PRODUCER_BARRIER = 4; /* 1..3: ping-pong turns, fused dQ */
__device__ __forceinline__ int ws_share(int drawn, volatile int *slot, int ptid) {
    if (ptid == 0) *slot = drawn;
    sm90::named_barrier(WS_PRODUCER_BARRIER, 128);
    const int w = *slot;
    sm90::named_barrier(WS_PRODUCER_BARRIER, 128); /* all have read it before the next draw */
    return w;
}

/* The rows a producer thread copies of a tile of ROWS rows of 64 bf16 (chunk id = j * 128 +
 * ptid, so one warp instruction reads 4 whole rows), looked up apart from the copies: with a
 * sparse policy a row is a global load (the plan's permutation), and the dK/dV producer looks
 * a query tile's rows up one tile ahead so that their latency hides under the previous tile's
 * copies instead of standing between the stage's release and its copies. Two tiles of the same
 * rows (K and V, Q and dO) share one lookup. Rows at or past n_valid are zero-filled. */
template <int ROWS> struct RowLookup {
    static constexpr int N = ROWS * 8 / 128;
    int row[N];

    template <class RowOf> __device__ __forceinline__ void fetch(int n_valid, RowOf row_of, int ptid) {
#pragma unroll
        for (int j = 0; j < N; j++) {
            const int r = (j * 128 + ptid) / 8;
            row[j] = r < n_valid ? row_of(r) : 0;
        }
    }
    __device__ __forceinline__ void copy(uint32_t tile_addr, const bf16 *base, long stride, int n_valid,
                                         int ptid) const {
#pragma unroll
        for (int j = 0; j < N; j++) {
            const int r = (j * 128 + ptid) / 8, c = ptid % 8;
            cp_async_16(tile_addr + 2u * (uint32_t)SwizzledTile<64>::offset(r, c), base + (long)row[j] * stride + c * 8,
                        r < n_valid);
        }
    }
};

/* Looks up the rows of a tile (all at once: independent global loads in flight together), then
 * copies them into one swizzled tile (RowLookup). */
template <int ROWS, class RowOf>
__device__ __forceinline__ void producer_copy_rows(uint32_t tile_addr, const bf16 *base, long stride, int n_valid,
                                                   RowOf row_of, int ptid) {
    RowLookup<ROWS> rows;
    rows.fetch(n_valid, row_of, ptid);
    rows.copy(tile_addr, base, stride, n_valid, ptid);
}

/* A warp's window onto a tile list of n entries (the dK/dV producer's query tiles): entry i comes
 * by a shuffle from lane i % 32 of the window holding it, and the window after it is loaded as a
 * window is entered, so that one list load's latency is paid per 32 entries instead of one per
 * entry ahead of the entry's row lookups. at(i) is called by the whole warp with i = 0, 1, 2,
 * ... in order. */
struct ListWindow {
    int cur, next;
    template <class EntryOf> __device__ __forceinline__ void start(int n, EntryOf entry_of, int lane) {
        cur = lane < n ? entry_of(lane) : 0;
        next = 32 + lane < n ? entry_of(32 + lane) : 0;
    }
    template <class EntryOf> __device__ __forceinline__ int at(int i, int n, EntryOf entry_of, int lane) {
        if (i > 0 && i % 32 == 0) {
            cur = next;
            next = i + 32 + lane < n ? entry_of(i + 32 + lane) : 0;
        }
        return __shfl_sync(0xffffffffu, cur, i % 32);
    }
};

/* The producer loop of the kernels that stream key tiles (forward, dQ): for each live key
 * tile of query tile qt, K and V rows into the stage of ring item first + i (BN rows each, V
 * right after K, one row lookup for both), the keys' mask info and the tile's WsTileMeta. The
 * caller waits for its copies (cp_async_wait) before the CTA ends. Unlike the dK/dV producer's
 * query tiles, key tiles are looked up when they are copied: a tile ahead (ListWindow, rows
 * held across the wait) the sparse forward was 2-3% slower (H100, session 12: qk 0.5 1.525 vs
 * 1.490 ms, hash nb=16 0.721 vs 0.698). FRESH_LANE (a producer of 24 registers): the lane is
 * taken afresh per tile (opaque_u32) so that the copy addresses are recomputed, not held.
 * A TMA policy's tiles come by two tensor copies issued by thread 0 (flash_tma.cuh); the
 * ring must then have been set up with TMA_STAGE_ARRIVALS. */
template <int BM, int BN, int ST, bool FRESH_LANE = false, class Policy>
__device__ __forceinline__ void produce_key_tiles(const StageRing<ST> &ring, const FlashParams &p, const Policy &pol,
                                                  int bh, int qt, int n_tiles, int first, uint32_t kv_addr,
                                                  typename Policy::RowInfo *sKinfo, WsTileMeta *sMeta, int ptid) {
    typedef typename Policy::RowInfo RowInfo;
    constexpr int D = 64, STAGE_BYTES = 2 * BN * D * 2;
    const int b = bh / p.H, h = bh % p.H, k_len = pol.k_len(bh);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    for (int i = 0; i < n_tiles; i++) {
        if (FRESH_LANE) ptid = (int)sm90::opaque_u32((uint32_t)ptid); /* addresses recomputed per tile, not held */
        const int kt = pol.key_tile(bh, qt, i, BM, BN), k0 = kt * BN, n_valid = k_len - k0;
        const RowInfo info = ptid < BN && ptid < n_valid ? pol.k_info(bh, k0 + ptid) : RowInfo{};
        const bool full = k0 + BN <= k_len && pol.tile_full(bh, qt, kt, BM, BN);
        const int s = ring.wait_free(first + i);
        const uint32_t stage = kv_addr + s * STAGE_BYTES;
        if constexpr (Policy::TMA) {
            if (ptid == 0)
                sm90::tma_load_tiles(ring.full(s), STAGE_BYTES, stage, &pol.maps.k, stage + BN * D * 2, &pol.maps.v, h, k0, b);
        } else {
            RowLookup<BN> rows;
            rows.fetch(n_valid, [&](int c) { return pol.k_row(bh, k0 + c); }, ptid);
            rows.copy(stage, k_base, p.k_stride, n_valid, ptid);
            rows.copy(stage + BN * D * 2, v_base, p.v_stride, n_valid, ptid);
        }
        if (ptid < BN) sKinfo[s * BN + ptid] = info;
        if (ptid == 0) sMeta[s] = WsTileMeta{k0, full ? 1 : 0};
        ring.commit(s, Policy::TMA);
    }
}

} // namespace flash

#endif
