/* Forward flash attention for Hopper (sm_90a), head dim 64: warpgroup matrix products.
 *
 * Same algorithm, policy interface and epilogue as flash_fwd.cuh; what changes is who
 * multiplies: each warpgroup (4 warps) owns 64 query rows and issues
 *   S = Q K^T   wgmma m64nBNk16, Q and K straight from shared memory (no ldmatrix),
 *   O += P V    wgmma m64n64k16, P from registers (accumulator layout = A-operand layout),
 *               V from shared memory read N-major (transposed by the tensor core).
 * Loads are cp.async (so that a sparse policy can gather rows), three stages, fenced to the
 * async proxy before the tensor cores read them. The tile shapes: BM = 64 * NWG query rows,
 * BN keys per step. */
#ifndef ATTENTION_CUDA_FLASH_FWD_SM90_CUH
#define ATTENTION_CUDA_FLASH_FWD_SM90_CUH

#include <math.h>

#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_params.cuh"
#include "attention/cuda/flash_sm90.cuh"

namespace flash {

template <int NWG_, int BN_, int MIN_BLOCKS_ = 1> struct Sm90FwdTiles {
    static constexpr int D = 64, NWG = NWG_, BM = 64 * NWG_, BN = BN_, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int THREADS = 128 * NWG;
    static constexpr int NT = BN / 8;  /* n-tiles of S */
    static constexpr int KN = BN / 16; /* k-blocks of P.V */
    static constexpr int ND = D / 8;   /* n-tiles of O */
    static constexpr int ROW_BYTES = D * 2;
    /* Key tile j lives in stage j % 3 (K then V): iteration j reads K_j and V_{j-1} while
     * tile j+1 is being loaded. */
    static constexpr int STAGES = 3;
    /* Q, the K/V stages, the mask info of each stage's keys (a policy's RowInfo, <= 8 bytes),
     * slack to align the base to 1024. */
    static constexpr int SMEM_BYTES = (BM * D + STAGES * 2 * BN * D) * 2 + STAGES * BN * 8 + 1024;
    static_assert(BN == 64 || BN == 128, "wgmma N of S");
};

template <int BN>
__device__ __forceinline__ void wgmma_s_tile(float *s, uint64_t da, uint64_t db, int acc) {
    if constexpr (BN == 128)
        sm90::wgmma_m64n128k16_ss<0, 0>(s, da, db, acc);
    else
        sm90::wgmma_m64n64k16_ss<0, 0>(s, da, db, acc);
}

/* Masks S (m64nBN accumulators of one warp's 16 rows, NT n-tiles) of the key tile starting
 * at work row k0: -inf where the key is past k_len or the policy forbids the pair. kinfo: the
 * tile's keys' mask info in shared memory; qinfo: this thread's two rows. The mask is a select,
 * not a branch (NOTES.md, session 3: a branch here serialises the in-flight wgmma). */
template <int NT, class Policy>
__device__ __forceinline__ void mask_s_tile(float *s, const Policy &pol, const typename Policy::RowInfo qinfo[2],
                                            const typename Policy::RowInfo *kinfo, int k0, int k_len, int tq) {
    typedef typename Policy::RowInfo RowInfo;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int c = k0 + nt * 8 + 2 * tq + e;
            const bool in_range = c < k_len;
            const RowInfo ki = in_range ? kinfo[c - k0] : RowInfo{};
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const bool ok = in_range & pol.allowed(qinfo[hf], ki);
                s[4 * nt + 2 * hf + e] = ok ? s[4 * nt + 2 * hf + e] : -INFINITY;
            }
        }
}

/* One online-softmax step over a masked S tile: new row maxima and sums, P as bf16 A
 * fragments (p_out, KN k-blocks), alpha = the factor O must be rescaled by. Rows fully masked
 * so far use max 0 (no -inf - -inf). sl2 = scale * log2(e). */
template <int NT, int KN>
__device__ __forceinline__ void online_softmax(float *s, float row_max[2], float row_sum[2], float alpha[2],
                                               uint32_t *p_out, float sl2) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float mx = row_max[hf];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * hf], s[4 * nt + 2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == -INFINITY ? 0.f : mx;
        alpha[hf] = exp2_approx((row_max[hf] - m_use) * sl2);
        row_max[hf] = mx;
        const float m_scaled = m_use * sl2;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float pe = exp2_approx(fmaf(s[4 * nt + 2 * hf + e], sl2, -m_scaled));
                s[4 * nt + 2 * hf + e] = pe;
                sum += pe;
            }
        row_sum[hf] = row_sum[hf] * alpha[hf] + sum;
    }
#pragma unroll
    for (int kb = 0; kb < KN; kb++)
#pragma unroll
        for (int r = 0; r < 4; r++) p_out[4 * kb + r] = pack_bf16(s[8 * kb + 2 * r], s[8 * kb + 2 * r + 1]);
}

/* Normalises and stores one warp's 16 output rows (a thread's two: row0 and row0 + 8 of the
 * work rows) and their log-sum-exp, at the rows' memory rows. */
template <int ND, class Policy>
__device__ __forceinline__ void store_fwd_rows(const FlashParams &p, const Policy &pol, int bh, bf16 *o_base,
                                               const float *o, const float row_max[2], const float row_sum[2],
                                               int row0, int q_len, int tq) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float sum = row_sum[hf];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int r = row0 + hf * 8;
        if (r >= q_len) continue;
        const int mem = pol.q_row(bh, r);
        bf16 *dst = o_base + (long)mem * p.o_stride + 2 * tq;
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
            *reinterpret_cast<uint32_t *>(dst + nd * 8) =
                pack_bf16(o[4 * nd + 2 * hf] * inv, o[4 * nd + 2 * hf + 1] * inv);
        if (tq == 0)
            p.lse[(long)bh * p.T + mem] = sum > 0.f ? row_max[hf] * p.scale + logf(sum) : -INFINITY;
    }
}

/* Software pipeline of one warpgroup (FlashAttention-3's intra-warpgroup overlap):
 *   issue S_j = Q K_j^T and O += P_{j-1} V_{j-1}; wait for S_j only; mask and softmax S_j
 *   (exp on the multi-function units) while the tensor cores still run P_{j-1} V_{j-1};
 *   wait; rescale O by the new max; P_j becomes the next P.
 * What a key tile needs from the policy's global tables (its index in the list, its rows,
 * whether it is full, its keys' mask info) is fetched one tile before its copies are issued:
 * with a sparse policy these are chains of dependent global loads (list -> permutation), which
 * would otherwise stall every warp at each tile before its products could be issued. The mask
 * info then travels with the tile in shared memory. */
template <class Cfg, class Policy>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    flash_fwd_sm90_kernel(FlashParams p, Policy pol) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS;
    constexpr int NT = Cfg::NT, KN = Cfg::KN, ND = Cfg::ND, RB = Cfg::ROW_BYTES;
    constexpr int STAGE_ELEMS = 2 * BN * D, STAGE_BYTES = STAGE_ELEMS * 2;
    typedef typename Policy::RowInfo RowInfo;
    using namespace sm90;

    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw_addr = smem_addr(smem_raw);
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw + ((1024 - (raw_addr & 1023)) & 1023));
    bf16 *sKV = sQ + BM * D; /* stage s: K at sKV + s*STAGE_ELEMS, V BN*D further */
    RowInfo *sKinfo = reinterpret_cast<RowInfo *>(sKV + 3 * STAGE_ELEMS); /* [3][BN] */
    static_assert(sizeof(RowInfo) <= 8, "SMEM_BYTES reserves 8 bytes of mask info per key");
    const uint32_t q_addr = smem_addr(sQ), kv_addr = smem_addr(sKV);

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int qt = gridDim.y - 1 - blockIdx.y;
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    const int q0 = qt * BM;
    if (q0 >= q_len) return;
    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int warp_row = wg * 64 + ((tid % 128) / 32) * 16; /* first tile row of this warp */

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    bf16 *o_base = head_base(p.out, p.o_stride, b, p.T, h, D);

    load_tile_async<BM, D, THREADS>(sQ, q_base, p.q_stride, q_len - q0,
                                    [&](int r) { return pol.q_row(bh, q0 + r); });
    const int n_tiles = pol.num_key_tiles(bh, qt, BM, BN);
    struct KeyTile {
        int k0;
        bool full; /* no pair of the tile needs the mask */
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
        bf16 *stage = sKV + (i % 3) * STAGE_ELEMS;
        load_tile_rows(stage, k_base, p.k_stride, t.rows);
        load_tile_rows(stage + BN * D, v_base, p.v_stride, t.rows);
        if (tid < BN) sKinfo[(i % 3) * BN + tid] = t.info;
    };
    /* cur: tile i (being computed), nxt: tile i+1 (its copies issued at the start of step i),
     * after: tile i+2 (fetched during step i), kt_ahead: the index of tile i+2, then i+3. */
    KeyTile cur = fetch_key_tile(0, kt_of(0));
    if (n_tiles > 0) load_kv(0, cur);
    cp_async_commit();
    KeyTile nxt = fetch_key_tile(1, kt_of(1)), after;
    int kt_ahead = kt_of(2);

    RowInfo qinfo[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = q0 + warp_row + hf * 8 + g;
        qinfo[hf] = r < q_len ? pol.q_info(bh, r) : RowInfo{};
    }
    float o[ND * 4];
#pragma unroll
    for (int j = 0; j < ND * 4; j++) o[j] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f}, alpha[2];
    const float sl2 = p.scale_log2;
    float s[NT * 4];
    uint32_t p_cur[KN * 4], p_next[KN * 4];

    /* Waits for tile i, then starts loading tile i+1 (its stage was last read two steps ago,
     * and the barrier proves every warp is past that step) and fetches tile i+2's indices. */
    auto next_tile = [&](int i) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (i + 1 < n_tiles) load_kv(i + 1, nxt);
        cp_async_commit();
        after = fetch_key_tile(i + 2, kt_ahead);
        kt_ahead = kt_of(i + 3);
    };
    auto rotate = [&]() {
        cur = nxt;
        nxt = after;
    };
    auto issue_s = [&](int i) {
        const uint32_t k_addr = kv_addr + (i % 3) * STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wgmma_s_tile<BN>(s, desc_sw128(q_addr + wg * 64 * RB + 32 * kk), desc_sw128(k_addr + 32 * kk), kk > 0);
        wgmma_commit();
    };
    auto issue_pv = [&](int i) { /* O += p_cur V_i */
        const uint32_t v_addr = kv_addr + (i % 3) * STAGE_BYTES + BN * RB;
#pragma unroll
        for (int kb = 0; kb < KN; kb++)
            wgmma_m64n64k16_rs<1>(o, &p_cur[4 * kb], desc_sw128(v_addr + kb * 16 * RB), 1);
        wgmma_commit();
    };
    auto softmax = [&](int i) {
        if (!cur.full) mask_s_tile<NT>(s, pol, qinfo, sKinfo + (i % 3) * BN, cur.k0, k_len, tq);
        online_softmax<NT, KN>(s, row_max, row_sum, alpha, p_next, sl2);
    };

    if (n_tiles > 0) {
        next_tile(0);
        wgmma_fence();
        issue_s(0);
        wgmma_wait<0>();
        fence_regs(s);
        softmax(0);
        rotate();
    }
    for (int i = 1; i < n_tiles; i++) {
#pragma unroll
        for (int j = 0; j < KN * 4; j++) p_cur[j] = p_next[j];
        next_tile(i);
        wgmma_fence();
        issue_s(i);
        issue_pv(i - 1);
        wgmma_wait<1>(); /* S_i done; P_{i-1} V_{i-1} may still run during the softmax */
        fence_regs(s);
        softmax(i);
        rotate();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs_u32(p_cur);
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[4 * nd + e] *= alpha[e >> 1];
    }
    if (n_tiles > 0) {
#pragma unroll
        for (int j = 0; j < KN * 4; j++) p_cur[j] = p_next[j];
        wgmma_fence();
        issue_pv(n_tiles - 1);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs_u32(p_cur);
    }
    cp_async_wait<0>();

    store_fwd_rows<ND>(p, pol, bh, o_base, o, row_max, row_sum, q0 + warp_row + g, q_len, tq);
#else
    __trap(); /* built without sm_90a: the host never launches this kernel then */
#endif
}

} // namespace flash

#endif
