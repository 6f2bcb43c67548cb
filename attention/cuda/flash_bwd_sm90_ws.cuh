/* Backward flash attention for Hopper (sm_90a), head dim 64, warp-specialised (flash_ws.cuh):
 * the split backward of flash_bwd_sm90.cuh (dK/dV in one kernel, dQ without atomics in
 * another), each with a producer warpgroup filling a ring of stages and NWG consumer
 * warpgroups. Same algorithm, policy interface and results as the lockstep kernels.
 *
 * dK/dV: a CTA owns BN = 64 NWG keys (K, V loaded once), warpgroup w keys [64w, 64w + 64); the
 * ring carries query tiles of BM = 64: Q, dO, and per query lse (log2 domain), delta and mask
 * info (lse and delta from p.row_stats, which flash_bwd_prepare_kernel writes first). Per tile:
 *   S^T = K_w Q^T, dP^T = V_w dO^T     smem operands
 *   P^T, dS^T                           registers
 *   dV_w += P^T dO, dK_w += dS^T Q      P^T / dS^T from registers, dO / Q read N-major
 * dQ: a CTA owns BM = 64 NWG queries (Q, dO loaded once), the ring carries key tiles of 64 (K,
 * V, mask info), per tile S = Q K^T, dP = dO V^T, dS, dQ += dS K.
 * Each tile's products are waited for before the next tile's (letting dV, dK or dQ of tile i
 * run on under tile i+1's first products made ptxas serialise the wgmma pipeline, C7515); the
 * other warpgroup and the ring keep the tensor cores fed instead. */
#ifndef ATTENTION_CUDA_FLASH_BWD_SM90_WS_CUH
#define ATTENTION_CUDA_FLASH_BWD_SM90_WS_CUH

#include <math.h>

#include <type_traits>

#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_bwd_sm90.cuh"
#include "attention/cuda/flash_ws.cuh"

namespace flash {

/* FUSED_DQ: dQ in the same kernel (two consumer warpgroups only): per query tile the
 * warpgroups write dS^T to shared memory (two buffers, by tile parity), meet at a named
 * barrier, and each computes one 64 x 32 or 64 x 64 block of the tile's dQ = dS K over all
 * 128 keys; the block goes through a shared staging buffer and is added to the fp32
 * accumulator by one bulk reduction (cp.reduce.async.bulk). The accumulator is laid out by
 * tiles (dq_tile_index) so that each block is contiguous; flash_bwd_convert_dq_tiles_kernel
 * turns it into dq. Not deterministic (the additions' order varies).
 *
 * BM_: 64 queries a tile; or 128 (FA3's shape for head dim 64: 128 x 128 tile pairs, S^T and
 * dP^T m64n128). The fused dQ block of warpgroup w is columns [32w, 32w + 32) of the tile's 64
 * rows for BM = 64 (wgmma m64n32, K read N-major from the 64-byte offset of its swizzled rows),
 * rows [64w, 64w + 64), all 64 columns, for BM = 128. The wider tile halves the ring items,
 * barriers and pipeline drains per product and doubles each S^T / dP^T product; it costs 64
 * more registers a thread (S^T and dP^T: 64 + 64) and twice the shared memory per stage and
 * dS^T buffer, so the fused one has two stages, one staging buffer per warpgroup, at most two
 * dS^T buffers and no persistent instance. dS^T is kept as BM / 64 swizzled [BN][64] sub-tiles
 * (a 128-byte swizzle row), and sub-tile w is warpgroup w's A operand. */
template <int NWG_, int STAGES_ = 2, bool FUSED_DQ_ = false, bool DEFER_DQ_ = false, bool PINGPONG_ = false,
          int BM_ = 64, bool SOLO_DQ_ = false>
struct Sm90BwdWsTiles : WsShape<NWG_, 1> {
    static constexpr int D = 64, NWG = NWG_, BN = 64 * NWG_, BM = BM_, STAGES = STAGES_, MIN_BLOCKS = 1;
    static constexpr bool FUSED_DQ = FUSED_DQ_, DEFER_DQ = DEFER_DQ_, PINGPONG = PINGPONG_;
    /* Instructions a tile are the bound (attention/cuda/NOTES.md v8-v9): lse and delta are read
     * as float2 pairs (a thread's columns 2tq, 2tq + 1 are adjacent), the per-element mask runs
     * only on masked tiles, behind a uniform branch, the warpgroup index is warp-uniform
     * (uniform-datapath descriptors), and dS^T is stored with stmatrix (4 instructions a tile
     * instead of 16 stores). */
    static_assert(!FUSED_DQ_ || NWG_ == 2, "the fused dQ splits its block over two warpgroups");
    static_assert(!DEFER_DQ_ || FUSED_DQ_, "only the fused dQ can be deferred");
    static_assert(!PINGPONG_ || DEFER_DQ_, "ping-pong turns need the deferred dQ (no barrier between the turns)");
    static_assert(BM_ == 64 || BM_ == 128, "64 or 128 queries a tile");
    /* SOLO_DQ (the alternate schedule: deferred, 64-query tiles): a tile's whole 64 x 64 dQ block
     * is computed and reduced by one warpgroup, tile parity's (ring index), m64n64 products over
     * both halves of dS^T, instead of a 64 x 32 half by each: half the dQ wgmma and descriptor
     * instructions, one 16 KB reduction per warpgroup every other tile. */
    static constexpr bool SOLO_DQ = SOLO_DQ_;
    static_assert(!SOLO_DQ_ || (DEFER_DQ_ && !PINGPONG_ && BM_ == 64), "one warpgroup's dQ: the deferred 64-query tile");
    /* The wide tile's consumers hold S^T, dP^T, dK and dV (192 registers a thread): its producer
     * gets 40, its consumers 232 (ptxas: 48 bytes spilled in all; a 24-register producer left the
     * consumers 240 but spilled ~140 bytes itself, 56 left them 224 and ~130 bytes spilled). */
    typedef WsShape<NWG_, 1> Shape;
    template <bool PERSISTENT>
    using Regs = typename Shape::template Split<BM_ == 128 ? 40 : Shape::template Regs<PERSISTENT>::PRODUCER>;
    static constexpr int ROW_BYTES = 128;
    /* dS^T buffers: two (by tile parity) behind a named barrier; a ring of mbarriers when the
     * dQ is deferred: three, or two for the wide tile (shared memory). */
    static constexpr int DS_BUFS = DEFER_DQ_ && BM_ == 64 ? 3 : 2;
    /* Each warpgroup's dQ block: 64 rows x DQ_COLS, staged as DQ_COLS / 32 accumulator blocks
     * (dq_tile_index), double-buffered for BM = 64 (consecutive reductions alternate). */
    static constexpr int DQ_COLS = BM_ == 64 && !SOLO_DQ_ ? 32 : 64, DQ_STAGE_BUFS = BM_ == 64 ? 2 : 1;
    /* fused dQ: dS^T [DS_BUFS][BM / 64][BN][64] bf16 and the staging blocks [2 warpgroups][DQ_STAGE_BUFS][64 * DQ_COLS] fp32 */
    static constexpr int DQ_BYTES = FUSED_DQ_ ? DS_BUFS * BN * BM * 2 + 2 * DQ_STAGE_BUFS * 64 * DQ_COLS * 4 : 0;
    /* K and V (a persistent launch adds ITEM_BYTES for a second pair), the stages (Q and dO),
     * the fused dQ buffers, lse and delta [STAGES][BM], the queries' mask info [STAGES][BM]
     * (<= 8 bytes each), WsTileMeta per stage, mbarriers (K/V full and empty, two of each,
     * full[STAGES], empty[STAGES]), the item indices (flash_ws.cuh, ws_draw), the dS^T ring's
     * mbarriers (full and empty per buffer, deferred dQ). */
    static constexpr int ITEM_BYTES = 2 * BN * D * 2;
    static constexpr int SMEM_BYTES = ITEM_BYTES + STAGES * 2 * BM * D * 2 + DQ_BYTES + STAGES * BM * (4 + 4 + 8) +
                                      STAGES * (int)sizeof(WsTileMeta) + (4 + 2 * STAGES) * 8 + 16 +
                                      (DEFER_DQ_ ? 2 * DS_BUFS * 8 : 0) + 1024;
    static_assert(SMEM_BYTES <= 227 * 1024, "more shared memory than an H100 SM has");
};

/* The deferred dQ's ring of dS^T buffers, written and read by both consumer warpgroups: tile i
 * in buffer i % NB. full[b] completes when all 256 consumer threads have written their part
 * (each fences to the async proxy first: wgmma reads it), empty[b] when all 256 have retired
 * their dQ products reading it. */
template <int NB> struct DsRing : MbarRing<NB> {
    __device__ __forceinline__ void init() const { MbarRing<NB>::init(256, 256); }
    __device__ __forceinline__ void publish(int i) const {
        sm90::fence_proxy_async();
        sm90::mbar_arrive(this->full(i % NB));
    }
    __device__ __forceinline__ int acquire(int i) const { return this->wait_full(i); }
};

/* The fused backward's dQ accumulator: [bh][query tile of 64][column half][64 x 32 block], so
 * that the block one warpgroup adds per tile is contiguous. Inside a block the order is that of
 * the wgmma accumulator fragments that add into it, [n-tile of 8 columns][thread t of the
 * warpgroup][4], so that each thread stages its registers as float4s, conflict free (staged
 * row-major, the stores were 8-way bank conflicted: ncu, session 11). Thread t = 32 w + 4 g + tq
 * holds rows 16 w + g (+8) and columns 2 tq (+1) of each n-tile; element e of four is row + 8
 * (e >> 1), column + (e & 1). */
constexpr int DQ_BLOCK_FLOATS = 64 * 32;
__host__ __device__ __forceinline__ long dq_block_index(int bh, int n_q_tiles, int r, int c) {
    return (((long)bh * n_q_tiles + r / 64) * 2 + c / 32) * DQ_BLOCK_FLOATS;
}
__host__ __device__ __forceinline__ long dq_tile_index(int bh, int n_q_tiles, int r, int c) {
    const int rr = r % 64, cc = c % 32;
    const int t = 32 * (rr / 16) + 4 * (rr % 8) + (cc % 8) / 2, e = 2 * ((rr % 16) / 8) + cc % 2;
    return dq_block_index(bh, n_q_tiles, r, c) + ((cc / 8) * 128 + t) * 4 + e;
}

/* What the Hopper backward kernels read besides the inputs, per 64-row tile of the work rows of
 * bh (a CTA of 256 threads a tile; tiles past q_len, dropped qk queries, exit at once): delta =
 * rowsum(dout * out) at each row's original position (p.delta, the dQ pass's), each work row's
 * (lse in the log2 domain, delta) in work-row order (p.row_stats: the dK/dV producer loads them
 * without first loading the row's position), and with zero_accum the tile's block of the fused
 * dQ accumulator zeroed (only work tiles: the convert reads no other). 8 threads a row, 16-byte
 * loads. */
template <class Policy> __global__ void __launch_bounds__(256) flash_bwd_prepare_kernel(FlashParams p, Policy pol, int zero_accum) {
    constexpr int D = 64;
    const int n_q_tiles = (p.T + 63) / 64, tid = threadIdx.x;
    const int bh = blockIdx.x / n_q_tiles, q0 = blockIdx.x % n_q_tiles * 64, q_len = pol.q_len(bh);
    if (q0 >= q_len) return;
    if (zero_accum) {
        float4 *z = reinterpret_cast<float4 *>(p.dq_accum + (long)blockIdx.x * 64 * D);
#pragma unroll
        for (int j = 0; j < 64 * D / 4 / 256; j++) z[j * 256 + tid] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    /* both rows' loads first, then the sums and stores: four 16-byte loads in flight a thread */
    const int b = bh / p.H, h = bh % p.H, part = tid % 8;
    long t[2];
    uint4 o4[2], d4[2];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = q0 + half * 32 + tid / 8;
        t[half] = r < q_len ? pol.q_row(bh, r) : -1;
        o4[half] = d4[half] = make_uint4(0u, 0u, 0u, 0u);
        if (t[half] >= 0) {
            const long at = ((long)b * p.T + t[half]) * p.o_stride + h * D + part * 8;
            o4[half] = *reinterpret_cast<const uint4 *>(p.out + at);
            d4[half] = *reinterpret_cast<const uint4 *>(p.dout + at);
        }
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const __nv_bfloat162 *o2 = reinterpret_cast<const __nv_bfloat162 *>(&o4[half]);
        const __nv_bfloat162 *d2 = reinterpret_cast<const __nv_bfloat162 *>(&d4[half]);
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 of = __bfloat1622float2(o2[j]), df = __bfloat1622float2(d2[j]);
            acc = fmaf(of.x, df.x, fmaf(of.y, df.y, acc));
        }
#pragma unroll
        for (int off = 4; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (t[half] >= 0 && part == 0) {
            const long at = (long)bh * p.T;
            p.delta[at + t[half]] = acc;
            p.row_stats[at + q0 + half * 32 + tid / 8] = make_float2(lse_to_log2(p.lse[at + t[half]]), acc);
        }
    }
}

/* dq[b, q_row(bh, r), h, :] = bf16(scale * accumulator row r) for every work row r < q_len of
 * bh; rows past q_len (dropped qk queries) are the caller's to zero (sparse_attn.cu,
 * zero_dropped_rows). A CTA of 256 threads a 64-row tile (tiles of dropped rows only exit at
 * once: flash_bwd_prepare_kernel never zeroed them). The tile's 16 KB of fp32 are read as
 * float4s in order and written out as whole 128-byte rows, through shared memory: read straight
 * in fragment order, a warp's stores were 16 bytes in each of 32 rows, and the kernel moved its
 * 300 MB at 1.3 TB/s (0.23 ms at B*T = 65536, 12 heads; ncu, session 15).
 * float4 L of a tile is 128 c8 + t: 8-column chunk c8 (column half * 4 + n-tile), fragment
 * thread t (dq_tile_index), and holds columns 2q, 2q + 1 (q = t % 4) of rows rr and rr + 8. It
 * is staged at L ^ c8: 8 consecutive threads then hit 8 different 16-byte bank groups both when
 * storing in order and when loading one row pair's chunks c8 = 0..7. */
template <int D, class Policy> __global__ void __launch_bounds__(256) flash_bwd_convert_dq_tiles_kernel(FlashParams p, Policy pol) {
    static_assert(D == 64, "the tile layout holds 64 columns");
    __shared__ float4 tile[64 * D / 4];
    const int n_q_tiles = (p.T + 63) / 64, tid = threadIdx.x;
    const int bh = blockIdx.x / n_q_tiles, q0 = blockIdx.x % n_q_tiles * 64, q_len = pol.q_len(bh);
    if (q0 >= q_len) return;
    const float4 *src = reinterpret_cast<const float4 *>(p.dq_accum + (long)blockIdx.x * 64 * D);
#pragma unroll
    for (int i = 0; i < 64 * D / 4 / 256; i++) {
        const int L = i * 256 + tid;
        tile[L ^ (L >> 7)] = __ldcs(src + L); /* read once: streamed past L1 and L2 */
    }
    __syncthreads();
    const int c8 = tid % 8, pair = tid / 8, rr = 16 * (pair / 8) + pair % 8;
    const int t0 = 32 * (rr / 16) + 4 * (rr % 8); /* fragment thread of (rr, chunk column 0) */
    float4 f[4];
#pragma unroll
    for (int q = 0; q < 4; q++) f[q] = tile[(128 * c8 + t0 + q) ^ c8];
    const int b = bh / p.H, h = bh % p.H;
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
        const int r = q0 + rr + 8 * hi;
        if (r >= q_len) continue;
        uint4 out;
        uint32_t *w = reinterpret_cast<uint32_t *>(&out);
#pragma unroll
        for (int q = 0; q < 4; q++)
            w[q] = hi ? pack_bf16(f[q].z * p.scale, f[q].w * p.scale) : pack_bf16(f[q].x * p.scale, f[q].y * p.scale);
        const long t = pol.q_row(bh, r);
        *reinterpret_cast<uint4 *>(p.dq + ((long)b * p.T + t) * p.q_stride + h * D + c8 * 8) = out;
    }
}

template <class Cfg, class Policy, bool PERSISTENT>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    flash_bwd_dkdv_sm90_ws_kernel(FlashParams p, const __grid_constant__ Policy pol) { /* TMA reads pol.maps in place */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BN = Cfg::BN, BM = Cfg::BM, ST = Cfg::STAGES, RB = Cfg::ROW_BYTES;
    constexpr int NQ = BM / 8, STAGE_BYTES = 2 * BM * D * 2;
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    constexpr int NBUF = PERSISTENT ? 2 : 1, KVB = Cfg::ITEM_BYTES;
    static_assert(Cfg::SMEM_BYTES + (PERSISTENT ? KVB : 0) <= 227 * 1024, "no room for a second K/V pair");
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sK = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023)); /* [NBUF][K, V] */
    bf16 *sQ = sK + NBUF * 2 * BN * D; /* stage s: Q at sQ + s*2*BM*D, dO BM*D further */
    bf16 *sDS = sQ + ST * 2 * BM * D; /* fused dQ: [DS_BUFS][BM / 64][BN][64], then the staging blocks */
    float *sDqStage = reinterpret_cast<float *>(sDS + (Cfg::FUSED_DQ ? Cfg::DS_BUFS * BN * BM : 0)); /* [2 wg][DQ_STAGE_BUFS][64 * DQ_COLS] */
    float *sLse = reinterpret_cast<float *>(reinterpret_cast<unsigned char *>(sQ + ST * 2 * BM * D) +
                                            Cfg::DQ_BYTES); /* [ST][BM], log2 domain */
    float *sDelta = sLse + ST * BM;
    RowInfo *sQinfo = reinterpret_cast<RowInfo *>(sDelta + ST * BM); /* [ST][BM] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per query");
    WsTileMeta *sMeta = reinterpret_cast<WsTileMeta *>(reinterpret_cast<unsigned char *>(sQinfo) + ST * BM * 8);
    const uint32_t kv_addr = smem_addr(sK), q_addr = smem_addr(sQ); /* buffer b: K at kv_addr + b * KVB, V after */
    const ItemOperand<NBUF> kv_op{smem_addr(sMeta + ST)};
    const StageRing<ST> ring{kv_op.bar + 16u * NBUF};
    int *sItem = reinterpret_cast<int *>(reinterpret_cast<uint64_t *>(sMeta + ST) + 2 * NBUF + 2 * ST); /* [NBUF] */
    volatile int *sDraw = sItem + NBUF;
    const DsRing<Cfg::DS_BUFS> ds_ring{smem_addr(sItem) + 16u}; /* deferred dQ only */

    const int BH = p.B * p.H, n_kt = (p.T + BN - 1) / BN, n_work = BH * n_kt;
    const int tid = threadIdx.x, lane = tid % 32;
    /* The warpgroup index read through a shuffle from lane 0 is provably warp-uniform, so the
     * addresses and wgmma descriptors derived from it can live in uniform registers (otherwise
     * each descriptor is built per thread and moved over with R2UR). */
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);

    if (Cfg::DEFER_DQ && tid == 0) ds_ring.init(); /* before ws_setup's __syncthreads */
    ws_setup(ring, kv_op, Cfg::CONSUMERS, Policy::TMA);

    if (wg == Cfg::NWG) { /* the producer warpgroup */
        ws_producer_regs<Cfg, PERSISTENT>();
        int ptid = tid - Cfg::CONSUMERS; /* the wide tile takes it afresh per tile, as the consumers' lanes */
        int item = 0, first = 0; /* the CTA's items so far, ring items so far */
        for (int w = blockIdx.x; w < n_work;) {
            int bh;
            const int kt = ws_key_tile(w, BH, p.head_group, n_kt, bh), k0 = kt * BN, q_len = pol.q_len(bh), k_len = pol.k_len(bh);
            const int drawn = PERSISTENT ? ws_draw(p.work_counter, n_work, ptid) : n_work;
            if (k0 < k_len) { /* tiles past the work rows are nobody's work */
                const int b = bh / p.H, h = bh % p.H, n_tiles = pol.num_query_tiles(bh, kt, BM, BN);
                if constexpr (Policy::TMA) { /* flash_tma.cuh */
                    const int kb = kv_op.wait_free(item++);
                    if (ptid == 0) {
                        const uint32_t k_addr = kv_addr + kb * KVB;
                        if (PERSISTENT) sItem[kb] = w;
                        tma_load_tiles(kv_op.full(kb), KVB, k_addr, &pol.maps.k, k_addr + BN * RB, &pol.maps.v, h, k0, b);
                    }
                } else {
                    RowLookup<BN> k_rows;
                    k_rows.fetch(k_len - k0, [&](int c) { return pol.k_row(bh, k0 + c); }, ptid);
                    const int kb = kv_op.wait_free(item);
                    const uint32_t k_addr = kv_addr + kb * KVB;
                    k_rows.copy(k_addr, head_base(p.k, p.k_stride, b, p.T, h, D), p.k_stride, k_len - k0, ptid);
                    k_rows.copy(k_addr + BN * RB, head_base(p.v, p.v_stride, b, p.T, h, D), p.v_stride, k_len - k0, ptid);
                    if (PERSISTENT && ptid == 0) sItem[kb] = w;
                    kv_op.commit(item++, ptid);
                }
                const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
                const bf16 *do_base = head_base(p.dout, p.o_stride, b, p.T, h, D);
                /* A query tile's rows are looked up while the tile before it is copied (flash_ws.cuh,
                 * RowLookup) when they are loads: the plan's row, then the copy, were a chain of
                 * two load latencies between a stage's release and its copies. Its statistics,
                 * mask info and summary are loads of their own, issued before the wait. The wide
                 * tile's 40-register producer takes its lane afresh per tile and looks each tile's
                 * rows up per copy instead (held across both copies, ptxas spilled 24-48 bytes
                 * more in the PlanPolicy instances, the same in the dense ones). */
                constexpr bool AHEAD = BM == 64 && Policy::LOOKS_UP_ROWS;
                struct Rows {
                    int qt;
                    RowLookup<BM> rows;
                };
                auto entry_of = [&](int i) { return pol.query_tile(bh, kt, i, BM, BN); };
                ListWindow list;
                if (AHEAD) list.start(n_tiles, entry_of, ptid % 32);
                auto look_up = [&](int i) {
                    Rows t;
                    t.qt = AHEAD ? list.at(i, n_tiles, entry_of, ptid % 32) : entry_of(i);
                    const int q0 = t.qt * BM;
                    if (AHEAD) t.rows.fetch(q_len - q0, [&](int r) { return pol.q_row(bh, q0 + r); }, ptid);
                    return t;
                };
                Rows cur;
                if (AHEAD && n_tiles > 0) cur = look_up(0);
                for (int i = 0; i < n_tiles; i++) {
                    if (!AHEAD) {
                        ptid = (int)opaque_u32((uint32_t)ptid);
                        cur = look_up(i);
                    }
                    const int qt = cur.qt, q0 = qt * BM, n_valid = q_len - q0;
                    const bool full = k0 + BN <= k_len && pol.tile_full(bh, qt, kt, BM, BN);
                    /* (lse in the log2 domain, delta) of query q0 + ptid; (+inf, 0) past q_len */
                    float2 stats = make_float2(INFINITY, 0.f);
                    RowInfo info{};
                    if (ptid < BM && ptid < n_valid) {
                        stats = p.row_stats[(long)bh * p.T + q0 + ptid];
                        info = pol.q_info(bh, q0 + ptid);
                    }
                    Rows next;
                    if (AHEAD && i + 1 < n_tiles) next = look_up(i + 1);
                    const int s = ring.wait_free(first + i);
                    const uint32_t stage = q_addr + s * STAGE_BYTES;
                    if constexpr (Policy::TMA) {
                        if (ptid == 0)
                            tma_load_tiles(ring.full(s), STAGE_BYTES, stage, &pol.maps.q, stage + BM * RB, &pol.maps.dout, h, q0, b);
                    } else if (AHEAD) {
                        cur.rows.copy(stage, q_base, p.q_stride, n_valid, ptid);
                        cur.rows.copy(stage + BM * RB, do_base, p.o_stride, n_valid, ptid);
                    } else {
                        auto q_row_of = [&](int r) { return pol.q_row(bh, q0 + r); };
                        producer_copy_rows<BM>(stage, q_base, p.q_stride, n_valid, q_row_of, ptid);
                        producer_copy_rows<BM>(stage + BM * RB, do_base, p.o_stride, n_valid, q_row_of, ptid);
                    }
                    if (ptid < BM) {
                        sLse[s * BM + ptid] = stats.x;
                        sDelta[s * BM + ptid] = stats.y;
                        sQinfo[s * BM + ptid] = info;
                    }
                    if (ptid == 0) sMeta[s] = WsTileMeta{q0, full ? 1 : 0};
                    ring.commit(s, Policy::TMA);
                    if (AHEAD) cur = next;
                }
                first += n_tiles;
            }
            w = PERSISTENT ? ws_share(drawn, sDraw, ptid) : n_work;
        }
        if (PERSISTENT) { /* the end of the walk */
            const int last = kv_op.wait_free(item);
            if (ptid == 0) sItem[last] = -1;
            kv_op.commit(item, ptid, Policy::TMA);
        }
        cp_async_wait<0>();
        return;
    }

    ws_consumer_regs<Cfg, PERSISTENT>();
    /* Not const: the wide tile takes them afresh each tile (opaque_u32), so that ptxas recomputes
     * the shared memory addresses derived from them (dS^T and dQ staging stores, 2-3 instructions
     * each) instead of holding dozens across the tile loop: those held addresses made it spill
     * (248 bytes at 240 registers; 48 are left with the register split and dQ order below). */
    int g = lane / 4, tq = lane % 4, wtid = tid % 128;
    int warp_row = wg * 64 + ((tid % 128) / 32) * 16; /* first key row (in tile) of this warp */
    const float sl2 = p.scale_log2;
    const DescSw128 kv_desc = DescSw128::of(kv_addr), q_desc = DescSw128::of(q_addr);
    constexpr bool DEFER = Cfg::DEFER_DQ, PP = Cfg::PINGPONG, STAGED = BM == 128 && Cfg::FUSED_DQ && !DEFER;
    constexpr bool SOLO = Cfg::SOLO_DQ;
    /* whether this warpgroup computes the dQ of ring item t (all do, but under SOLO_DQ) */
    auto dq_owner = [&](int t) { return !SOLO || (t & 1) == wg; };

    /* Ping-pong turns (as in the forward): barrier 5 + w is "warpgroup w may issue"; warpgroup
     * 0 goes first; per item of n tiles each issues 2 n + 1 times (S/dP, then dV/dK/dQ per
     * tile, the last dQ) and passes the turn after each, except warpgroup 1's last: every
     * item starts afresh, so a persistent CTA may take turns too. */
    auto take_turn = [&]() {
        if (PP) named_barrier(5 + wg, 256);
    };
    auto pass_turn = [&]() {
        if (PP) named_barrier_arrive(6 - wg, 256);
    };

    /* Warpgroup wg's dQ block of the tile whose dS^T is in buffer buf, over all BN keys (k-step =
     * 16 key rows; dS^T read M-major, K N-major). BM = 64: dQ[:, 32 wg ..] = dS K[:, 32 wg ..],
     * A = the one dS^T sub-tile, B = K from column 32 wg of its rows. BM = 128: dQ[64 wg ..] =
     * dS[64 wg ..] K, A = dS^T sub-tile wg, B = all of K. */
    constexpr int DQ_COLS = Cfg::DQ_COLS, DQ_REGS = DQ_COLS / 2;
    const DescSw128 ds_desc = DescSw128::of(smem_addr(sDS)) + (BM == 128 ? wg * BN * 64 * 2 : 0);
    auto issue_dq = [&](float (&dq)[DQ_REGS], int buf, DescSw128 k_d) {
        const DescSw128 ds_d = ds_desc + buf * BN * BM * 2;
        if constexpr (DQ_COLS == 32) k_d = k_d + 64 * wg;
#pragma unroll
        for (int ks = 0; ks < BN / 16; ks++) {
            if constexpr (DQ_COLS == 32)
                wgmma_m64n32k16_ss<1, 1>(dq, ds_d.at(ks * 16 * RB), k_d.at(ks * 16 * RB), ks > 0);
            else
                wgmma_m64n64k16_ss<1, 1>(dq, ds_d.at(ks * 16 * RB), k_d.at(ks * 16 * RB), ks > 0);
        }
    };
    /* The 64 x DQ_COLS fp32 block goes through a staging block of this warpgroup (by tile parity
     * when there are two) and is added to the tile accumulator by one bulk reduction; the staging
     * block's previous reduction must have read it, and only the thread that issued it can wait.
     * Two blocks (calls alternate parity): that thread waits, before its stores, for the previous
     * call's reduction (issued a tile ago, the other block), then passes the barrier the issue
     * needs anyway; so a thread storing into a block has passed the barrier of the call after
     * that block's last reduction, which its issuer passed after waiting. One barrier a call.
     * One block: the issuer waits and tells the warpgroup first (a second barrier). A wide tile's
     * second block lies past the accumulator when the tile's last 64 rows are past T: that
     * warpgroup has nothing to add. */
    auto reduce_dq = [&](const float (&dq)[DQ_REGS], int parity, int bh, int row0) {
        constexpr int NSB = Cfg::DQ_STAGE_BUFS;
        const int blk_row = row0 + (BM == 128 ? 64 * wg : 0), blk_col = DQ_COLS == 32 ? 32 * wg : 0;
        if (BM == 128 && blk_row >= p.T) return;
        float *stage_blk = sDqStage + (wg * NSB + (NSB == 2 ? parity : 0)) * 64 * DQ_COLS;
        if (wtid == 0) bulk_wait_read<0>();
        if (NSB == 1) named_barrier(2 + wg, 128);
        /* n-tile j of the block(s): [j][thread][4] (dq_tile_index) */
#pragma unroll
        for (int j = 0; j < DQ_COLS / 8; j++)
            *reinterpret_cast<float4 *>(stage_blk + (j * 128 + wtid) * 4) =
                make_float4(dq[4 * j], dq[4 * j + 1], dq[4 * j + 2], dq[4 * j + 3]);
        fence_proxy_async(); /* the bulk copy reads through the async proxy */
        named_barrier(2 + wg, 128);
        if (wtid == 0) {
            bulk_reduce_add_f32(p.dq_accum + dq_block_index(bh, (p.T + 63) / 64, blk_row, blk_col), smem_addr(stage_blk),
                                64 * DQ_COLS * 4);
            bulk_commit();
        }
    };

    int first = 0;
    for (int my_item = 0;; my_item++) {
        /* A persistent CTA learns its next item with the item's K and V; otherwise it has one. */
        int w = blockIdx.x;
        if (PERSISTENT) {
            w = sItem[kv_op.acquire(my_item)];
            if (w < 0) break;
        }
        int bh;
        const int kt = ws_key_tile(w, BH, p.head_group, n_kt, bh), k0 = kt * BN, q_len = pol.q_len(bh), k_len = pol.k_len(bh);
        if (k0 >= k_len) break; /* one-item CTAs only: the producer skips such items */
        const int b = bh / p.H, h = bh % p.H, n_tiles = pol.num_query_tiles(bh, kt, BM, BN);
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
        uint32_t pa[BM / 4], da[BM / 4]; /* k-block kq (16 queries): registers 4kq .. 4kq+3 */

        /* The item's K and V (waits until they are loaded): this warpgroup's 64 key rows. */
        const DescSw128 k_desc = kv_desc + (PERSISTENT ? my_item % NBUF : kv_op.acquire(my_item)) * KVB;
        if (PP && wg == 1 && n_tiles > 0) pass_turn();
        int prev_row0 = 0; /* deferred dQ: the previous tile's first query */
        for (int i = first; i < first + n_tiles; i++) { /* ring item i: the (i - first)-th query tile */
            if constexpr (BM == 128) {
                g = (int)opaque_u32((uint32_t)g);
                tq = (int)opaque_u32((uint32_t)tq);
                wtid = (int)opaque_u32((uint32_t)wtid);
                warp_row = (int)opaque_u32((uint32_t)warp_row);
            }
            const DescSw128 k_now = BM == 128 ? DescSw128{opaque_u32(k_desc.lo)} : k_desc;
            const DescSw128 kw = k_now + wg * 64 * RB, vw = k_now + (BN * RB + wg * 64 * RB);
            const int s = ring.acquire(i);
            const WsTileMeta m = sMeta[s];
            const DescSw128 qs = q_desc + s * STAGE_BYTES, dos = qs + BM * RB;
            const float *tLse = sLse + s * BM, *tDelta = sDelta + s * BM;
            const RowInfo *tQinfo = sQinfo + s * BM;

            float st[BM / 2], dpt[BM / 2];
            /* S^T or dP^T (64 keys x BM queries) = this warpgroup's K or V rows . Q or dO of the stage */
            auto product_t = [&](float (&d)[BM / 2], DescSw128 a, DescSw128 b) {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    if constexpr (BM == 64)
                        wgmma_m64n64k16_ss<0, 0>(d, a.at(32 * kk), b.at(32 * kk), kk > 0);
                    else
                        wgmma_m64n128k16_ss<0, 0>(d, a.at(32 * kk), b.at(32 * kk), kk > 0);
                }
            };
            take_turn();
            wgmma_fence();
            product_t(st, kw, qs);
            if (DEFER) wgmma_commit(); /* the exponentials start while dP^T runs */
            product_t(dpt, vw, dos);
            wgmma_commit();
            pass_turn();

            const bool masked = !m.full;
            /* lse and delta of the thread's column pair nq (columns 8nq + 2tq, +1), one float2 */
            auto pair = [&](const float *t, int nq) { return *reinterpret_cast<const float2 *>(t + nq * 8 + 2 * tq); };
            /* P^T of this tile, with or without the mask: two copies of the loop behind one
             * uniform branch, so that most tiles skip the per-element mask */
            auto exps = [&](auto with_mask) {
                constexpr bool MASK = decltype(with_mask)::value;
#pragma unroll
                for (int nq = 0; nq < NQ; nq++) {
                    const float2 l = pair(tLse, nq);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = nq * 8 + 2 * tq + (e & 1), hf = e >> 1;
                        float pe = exp2_approx(fmaf(st[4 * nq + e], sl2, -((e & 1) ? l.y : l.x)));
                        if constexpr (MASK) {
                            const bool ok = (m.row0 + col < q_len) & (key_row[hf] < k_len) &
                                            pol.allowed(tQinfo[col], kinfo[hf]);
                            pe = ok ? pe : 0.f;
                        }
                        st[4 * nq + e] = pe;
                    }
                }
            };
            wgmma_wait<DEFER ? 1 : 0>(); /* deferred: the exponentials run while dP^T does */
            fence_regs(st);
            if (masked) exps(std::true_type{});
            else exps(std::false_type{});
            if (DEFER) wgmma_wait<0>();
            fence_regs(dpt);
#pragma unroll
            for (int nq = 0; nq < NQ; nq++) {
                const float2 dl = pair(tDelta, nq);
#pragma unroll
                for (int e = 0; e < 4; e++) dpt[4 * nq + e] = st[4 * nq + e] * (dpt[4 * nq + e] - ((e & 1) ? dl.y : dl.x));
            }
            /* A fragments: k-block kq (16 queries) is columns nq = 2kq, 2kq + 1 of S^T, so
             * register 2nq + hf packs elements 4nq + 2hf, +1 */
#pragma unroll
            for (int nq = 0; nq < NQ; nq++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    pa[2 * nq + hf] = pack_bf16(st[4 * nq + 2 * hf], st[4 * nq + 2 * hf + 1]);
                    da[2 * nq + hf] = pack_bf16(dpt[4 * nq + 2 * hf], dpt[4 * nq + 2 * hf + 1]);
                }
            if constexpr (Cfg::FUSED_DQ) {
                /* dS^T rows of this warpgroup: da[4kq + r] holds (key row g + 8*(r&1) of the warp,
                 * queries 16kq + 8*(r>>1) + 2tq, +1). Deferred: into the ring (its buffer's last
                 * readers, the dQ of tile i - DS_BUFS, done), published; the dQ of tile i - 1
                 * below needs the other warpgroup's half of that tile. Otherwise: buffer i & 1,
                 * then both warpgroups meet, and this tile's dQ follows. */
                const int buf = DEFER ? ds_ring.wait_free(i) : (i & 1);
                bf16 *ds = sDS + buf * BN * BM;
                /* k-block kq's four 8 x 8 matrices in one stmatrix: matrix j = da[4kq + j] is
                 * key rows + 8 (j & 1), queries 16kq + 8 (j >> 1); lane t addresses row t % 8
                 * of matrix t / 8, one 16-byte chunk of a swizzled dS^T row. */
                const int mrow = warp_row + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
                for (int kq = 0; kq < BM / 16; kq++) {
                    const int chunk = 2 * kq + (lane >> 4);
                    stmatrix_x4(smem_addr(ds + (chunk / 8) * BN * 64 + SwizzledTile<64>::offset(mrow, chunk % 8)),
                                &da[4 * kq]);
                }
                if (DEFER) {
                    ds_ring.publish(i);
                    if (i > first && dq_owner(i - 1)) ds_ring.acquire(i - 1);
                } else {
                    fence_proxy_async();
                    named_barrier(1, Cfg::CONSUMERS); /* both warpgroups' dS^T rows are in place */
                }
            }
            /* dV += P^T dO and dK += dS^T Q, P^T and dS^T from registers, dO and Q read N-major */
            auto issue_dv = [&]() {
#pragma unroll
                for (int kq = 0; kq < BM / 16; kq++)
                    wgmma_m64n64k16_rs<1>(dv, &pa[4 * kq], dos.at(kq * 16 * RB), 1);
            };
            auto issue_dk = [&]() {
#pragma unroll
                for (int kq = 0; kq < BM / 16; kq++)
                    wgmma_m64n64k16_rs<1>(dk, &da[4 * kq], qs.at(kq * 16 * RB), 1);
            };
            if constexpr (STAGED) {
                /* The wide lockstep tile (FA3's order): dV, dQ, then dK, each waited for in turn,
                 * so that P^T's registers are free before dK and dQ's block is staged while dK
                 * runs (ptxas spills 48 bytes instead of 68; dV issued before the warpgroups
                 * meet spilled 92). */
                float dq[DQ_REGS];
                wgmma_fence();
                issue_dv();
                wgmma_commit();
                issue_dq(dq, i & 1, k_now);
                wgmma_commit();
                wgmma_wait<1>();
                fence_regs(dv);
                fence_regs_u32(pa);
                issue_dk();
                wgmma_commit();
                wgmma_wait<1>();
                fence_regs(dq);
                reduce_dq(dq, i & 1, bh, m.row0);
                wgmma_wait<0>();
                fence_regs(dk);
                fence_regs_u32(da);
                ring.release(i);
                continue;
            }
            take_turn();
            wgmma_fence();
            issue_dv();
            issue_dk();
            float dq[DQ_REGS];
            const bool dq_now = Cfg::FUSED_DQ && (!DEFER || i > first) && dq_owner(i - 1);
            if (dq_now) issue_dq(dq, DEFER ? (i - 1) % Cfg::DS_BUFS : (i & 1), k_now);
            wgmma_commit();
            pass_turn();
            wgmma_wait<0>();
            fence_regs(dk);
            fence_regs(dv);
            fence_regs_u32(pa);
            fence_regs_u32(da);
            ring.release(i);
            if (dq_now) {
                fence_regs(dq);
                if (DEFER) ds_ring.release(i - 1);
                reduce_dq(dq, SOLO ? ((i - 1) >> 1) & 1 : DEFER ? (i - 1) & 1 : i & 1, bh, DEFER ? prev_row0 : m.row0);
            } else if (SOLO && i > first) {
                ds_ring.release(i - 1); /* the other warpgroup's dQ reads it */
            }
            prev_row0 = m.row0;
        }
        if (DEFER && n_tiles > 0 && !dq_owner(first + n_tiles - 1)) ds_ring.release(first + n_tiles - 1);
        else if (DEFER && n_tiles > 0) { /* the last tile's dQ */
            const int last = first + n_tiles - 1;
            float dq[DQ_REGS];
            const int buf = ds_ring.acquire(last);
            take_turn();
            wgmma_fence();
            issue_dq(dq, buf, k_desc);
            wgmma_commit();
            if (wg == 0) pass_turn();
            wgmma_wait<0>();
            fence_regs(dq);
            ds_ring.release(last);
            reduce_dq(dq, SOLO ? (last >> 1) & 1 : last & 1, bh, prev_row0);
        }
        kv_op.release(my_item); /* every product reading K and V has retired */
        store_dkdv_rows<64>(p, pol, bh, b, h, key_row, k_len, dk, dv, tq);
        first += n_tiles;
        if (!PERSISTENT) break;
    }
    if constexpr (Cfg::FUSED_DQ) {
        if (tid % 128 == 0) bulk_wait_read<0>(); /* shared memory stays until read */
    }
#else
    __trap(); /* built without sm_90a: the host never launches this kernel then */
#endif
}

template <int NWG_, int STAGES_ = 3> struct Sm90DqWsTiles : WsShape<NWG_, 1> {
    static constexpr int D = 64, NWG = NWG_, BM = 64 * NWG_, BN = 64, STAGES = STAGES_, MIN_BLOCKS = 1;
    static constexpr int ROW_BYTES = 128;
    /* Q and dO (a persistent launch adds ITEM_BYTES for a second pair), the (K, V) stages, the
     * keys' mask info per stage (<= 8 bytes each), WsTileMeta per stage, mbarriers (Q/dO full
     * and empty, two of each, full[STAGES], empty[STAGES]), the item indices, alignment. */
    static constexpr int ITEM_BYTES = 2 * BM * D * 2;
    static constexpr int SMEM_BYTES = ITEM_BYTES + STAGES * 2 * BN * D * 2 + STAGES * BN * 8 +
                                      STAGES * (int)sizeof(WsTileMeta) + (4 + 2 * STAGES) * 8 + 16 + 1024;
};

template <class Cfg, class Policy, bool PERSISTENT>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    flash_bwd_dq_sm90_ws_kernel(FlashParams p, const __grid_constant__ Policy pol) { /* TMA reads pol.maps in place */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, ST = Cfg::STAGES, RB = Cfg::ROW_BYTES;
    constexpr int STAGE_BYTES = 2 * BN * D * 2;
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    constexpr int NBUF = PERSISTENT ? 2 : 1, QB = Cfg::ITEM_BYTES;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023)); /* [NBUF][Q, dO] */
    bf16 *sK = sQ + NBUF * 2 * BM * D; /* stage s: K at sK + s*2*BN*D, V BN*D further */
    RowInfo *sKinfo = reinterpret_cast<RowInfo *>(sK + ST * 2 * BN * D); /* [ST][BN] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per key");
    WsTileMeta *sMeta = reinterpret_cast<WsTileMeta *>(reinterpret_cast<unsigned char *>(sKinfo) + ST * BN * 8);
    const uint32_t qdo_addr = smem_addr(sQ), k_addr = smem_addr(sK); /* buffer b: Q at qdo_addr + b * QB, dO after */
    const ItemOperand<NBUF> q_op{smem_addr(sMeta + ST)};
    const StageRing<ST> ring{q_op.bar + 16u * NBUF};
    int *sItem = reinterpret_cast<int *>(reinterpret_cast<uint64_t *>(sMeta + ST) + 2 * NBUF + 2 * ST); /* [NBUF] */
    volatile int *sDraw = sItem + NBUF;

    const int BH = p.B * p.H, n_qt = (p.T + BM - 1) / BM, n_work = BH * n_qt;
    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32;

    ws_setup(ring, q_op, Cfg::CONSUMERS, Policy::TMA);

    if (wg == Cfg::NWG) { /* the producer warpgroup */
        ws_producer_regs<Cfg, PERSISTENT>();
        const int ptid = tid - Cfg::CONSUMERS;
        int item = 0, first = 0; /* the CTA's items so far, ring items so far */
        for (int w = blockIdx.x; w < n_work;) {
            int bh;
            const int qt = ws_query_tile(w, BH, p.head_group, n_qt, bh), q0 = qt * BM, q_len = pol.q_len(bh);
            const int drawn = PERSISTENT ? ws_draw(p.work_counter, n_work, ptid) : n_work;
            if (q0 < q_len) { /* tiles past the work rows are nobody's work */
                const int b = bh / p.H, h = bh % p.H, n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
                if constexpr (Policy::TMA) { /* flash_tma.cuh */
                    const int qb = q_op.wait_free(item++);
                    if (ptid == 0) {
                        const uint32_t q_addr = qdo_addr + qb * QB;
                        if (PERSISTENT) sItem[qb] = w;
                        tma_load_tiles(q_op.full(qb), QB, q_addr, &pol.maps.q, q_addr + BM * RB, &pol.maps.dout, h, q0, b);
                    }
                } else {
                    RowLookup<BM> q_rows;
                    q_rows.fetch(q_len - q0, [&](int r) { return pol.q_row(bh, q0 + r); }, ptid);
                    const int qb = q_op.wait_free(item);
                    const uint32_t q_addr = qdo_addr + qb * QB;
                    q_rows.copy(q_addr, head_base(p.q, p.q_stride, b, p.T, h, D), p.q_stride, q_len - q0, ptid);
                    q_rows.copy(q_addr + BM * RB, head_base(p.dout, p.o_stride, b, p.T, h, D), p.o_stride, q_len - q0, ptid);
                    if (PERSISTENT && ptid == 0) sItem[qb] = w;
                    q_op.commit(item++, ptid);
                }
                produce_key_tiles<BM, BN, ST>(ring, p, pol, bh, qt, n_tiles, first, k_addr, sKinfo, sMeta, ptid);
                first += n_tiles;
            }
            w = PERSISTENT ? ws_share(drawn, sDraw, ptid) : n_work;
        }
        if (PERSISTENT) { /* the end of the walk */
            const int last = q_op.wait_free(item);
            if (ptid == 0) sItem[last] = -1;
            q_op.commit(item, ptid, Policy::TMA);
        }
        cp_async_wait<0>(); /* nothing in flight when the CTA's shared memory goes away */
        return;
    }

    ws_consumer_regs<Cfg, PERSISTENT>();
    const int g = lane / 4, tq = lane % 4;
    const int warp_row = wg * 64 + ((tid % 128) / 32) * 16;
    const float sl2 = p.scale_log2;
    int first = 0;
    for (int my_item = 0;; my_item++) {
        /* A persistent CTA learns its next item with the item's Q and dO; otherwise it has one. */
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
        RowInfo qinfo[2];
        float lse2[2], delta[2];
        load_query_stats_sm90(p, pol, bh, q0 + warp_row + g, q_len, qinfo, lse2, delta);
        float dq[32];
#pragma unroll
        for (int j = 0; j < 32; j++) dq[j] = 0.f;
        uint32_t da[16];

        /* The item's Q and dO (waits until they are loaded): this warpgroup's 64 rows. */
        const DescSw128 qd = DescSw128::of(qdo_addr) + ((PERSISTENT ? my_item % NBUF : q_op.acquire(my_item)) * QB + wg * 64 * RB);
        const DescSw128 dod = qd + BM * RB;
        for (int i = first; i < first + n_tiles; i++) { /* ring item i: the (i - first)-th key tile */
            const int s = ring.acquire(i);
            const WsTileMeta m = sMeta[s];
            const RowInfo *tKinfo = sKinfo + s * BN;
            const DescSw128 ks = DescSw128::of(k_addr) + s * STAGE_BYTES, vs = ks + BN * RB;

            float sc[32], dp[32];
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                wgmma_m64n64k16_ss<0, 0>(sc, qd.at(32 * kk), ks.at(32 * kk), kk > 0);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                wgmma_m64n64k16_ss<0, 0>(dp, dod.at(32 * kk), vs.at(32 * kk), kk > 0);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(sc);
            fence_regs(dp);

            const bool masked = !m.full;
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int c = m.row0 + nt * 8 + 2 * tq + e;
                    const bool in_range = c < k_len;
                    const RowInfo ki = in_range ? tKinfo[c - m.row0] : RowInfo{};
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        const int at = 4 * nt + 2 * hf + e;
                        float pe = exp2_approx(fmaf(sc[at], sl2, -lse2[hf]));
                        const bool ok = in_range & pol.allowed(qinfo[hf], ki); /* a select (C7513) */
                        pe = masked & !ok ? 0.f : pe;
                        sc[at] = pe * (dp[at] - delta[hf]);
                    }
                }
#pragma unroll
            for (int kb = 0; kb < BN / 16; kb++)
#pragma unroll
                for (int r = 0; r < 4; r++) da[4 * kb + r] = pack_bf16(sc[8 * kb + 2 * r], sc[8 * kb + 2 * r + 1]);
            wgmma_fence();
#pragma unroll
            for (int kb = 0; kb < BN / 16; kb++)
                wgmma_m64n64k16_rs<1>(dq, &da[4 * kb], ks.at(kb * 16 * RB), 1);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(dq);
            fence_regs_u32(da);
            ring.release(i);
        }
        q_op.release(my_item); /* every product reading Q and dO has retired */
        store_dq_sm90(p, pol, bh, b, h, q0 + warp_row + g, q_len, dq, tq);
        first += n_tiles;
        if (!PERSISTENT) break;
    }
#else
    __trap();
#endif
}

} // namespace flash

#endif
