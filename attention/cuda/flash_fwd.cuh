/* Forward flash attention, mma.sync (m16n8k16 bf16) path.
 *
 * One CTA owns a tile of BM query rows of one (batch, head); warp w owns rows
 * [w*MT*16, (w+1)*MT*16) of it and keeps their Q fragments in registers. The CTA walks the
 * key tiles the policy lists (double-buffered cp.async loads of K and V, BN rows each),
 * computes S = Q K^T in registers, masks it only when the policy says the tile is not full,
 * and keeps FlashAttention's running row max m, partial row sum l and output accumulator O.
 * P never leaves registers: its accumulator layout is the A-operand layout of P.V.
 * Epilogue: O / l to bf16 and lse = m*scale + ln(l) on the rows' memory positions; a row with
 * no allowed key (l == 0) writes zeros and lse = -inf. */
#ifndef ATTENTION_CUDA_FLASH_FWD_CUH
#define ATTENTION_CUDA_FLASH_FWD_CUH

#include <math.h>

#include "attention/cuda/flash_common.cuh"
#include "attention/cuda/flash_params.cuh"

namespace flash {

template <int D_, int BM_, int BN_, int NW_> struct FwdTiles {
    static constexpr int D = D_, BM = BM_, BN = BN_, NW = NW_;
    static constexpr int THREADS = NW * 32;
    static constexpr int MT = BM / (16 * NW); /* 16-row m-tiles per warp */
    static constexpr int NT = BN / 8;         /* n-tiles of S */
    static constexpr int KD = D / 16;         /* k-blocks of Q.K^T */
    static constexpr int ND = D / 8;          /* n-tiles of O */
    static constexpr int KN = BN / 16;        /* k-blocks of P.V */
    static constexpr int SMEM_BYTES = (BM * D + 4 * BN * D) * 2; /* Q + 2 stages of K, V */
    static_assert(MT >= 1 && BM == MT * 16 * NW, "BM must be a multiple of 16 * warps");
    static_assert(BN % 16 == 0 && D % 64 == 0, "tile sizes");
};

template <class Cfg, class Policy>
__global__ void __launch_bounds__(Cfg::THREADS) flash_fwd_kernel(FlashParams p, Policy pol) {
    constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS;
    constexpr int MT = Cfg::MT, NT = Cfg::NT, KD = Cfg::KD, ND = Cfg::ND, KN = Cfg::KN;
    using Tile = SwizzledTile<D>;
    typedef typename Policy::RowInfo RowInfo;

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *sK = sQ + BM * D; /* stage s at sK + s*BN*D */
    bf16 *sV = sK + 2 * BN * D;

    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int qt = gridDim.y - 1 - blockIdx.y; /* longest rows first: better tail balance */
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    const int q0 = qt * BM;
    if (q0 >= q_len) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;

    const bf16 *q_base = head_base(p.q, p.q_stride, b, p.T, h, D);
    const bf16 *k_base = head_base(p.k, p.k_stride, b, p.T, h, D);
    const bf16 *v_base = head_base(p.v, p.v_stride, b, p.T, h, D);
    bf16 *o_base = head_base(p.out, p.o_stride, b, p.T, h, D);

    load_tile_async<BM, D, THREADS>(sQ, q_base, p.q_stride, q_len - q0,
                                    [&](int r) { return pol.q_row(bh, q0 + r); });
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

    /* This thread's rows: m-tile mt, half hf -> tile row warp*MT*16 + mt*16 + hf*8 + g. */
    RowInfo qinfo[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int r = q0 + warp * MT * 16 + mt * 16 + hf * 8 + g;
            qinfo[mt][hf] = r < q_len ? pol.q_info(bh, r) : RowInfo{};
        }

    float o[MT][ND][4];
    float row_max[MT][2], row_sum[MT][2]; /* row_sum: this thread's columns only */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mt][nd][e] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }
    uint32_t qf[MT][KD][4];
    const float sl2 = p.scale_log2;

    for (int i = 0; i < n_tiles; i++) {
        cp_async_wait<0>();
        __syncthreads(); /* tile i landed; every warp is done with stage (i+1)&1 */
        if (i == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kb = 0; kb < KD; kb++) {
                    int r = warp * MT * 16 + mt * 16 + (lane % 16);
                    ldmatrix_x4(qf[mt][kb], smem_addr(sQ + Tile::offset(r, kb * 2 + lane / 16)));
                }
        }
        if (i + 1 < n_tiles) load_kv(i + 1, (i + 1) & 1);
        cp_async_commit();

        const int kt = pol.key_tile(bh, qt, i, BM, BN), k0 = kt * BN;
        const bf16 *tK = sK + (i & 1) * BN * D;
        const bf16 *tV = sV + (i & 1) * BN * D;

        /* S = Q K^T: K rows are the n index, stored n-major, so plain ldmatrix gives B. */
        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.f;
#pragma unroll
        for (int kb = 0; kb < KD; kb++)
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t bk[4];
                int c = np * 16 + (lane % 8) + (lane / 16) * 8;
                ldmatrix_x4(bk, smem_addr(tK + Tile::offset(c, kb * 2 + (lane / 8) % 2)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816(s[mt][2 * np], qf[mt][kb], bk[0], bk[1]);
                    mma_16816(s[mt][2 * np + 1], qf[mt][kb], bk[2], bk[3]);
                }
            }

        if (!pol.tile_full(bh, qt, kt, BM, BN) || k0 + BN > k_len) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int c = k0 + nt * 8 + 2 * tq + e;
                    bool in_range = c < k_len;
                    RowInfo ki = in_range ? pol.k_info(bh, c) : RowInfo{};
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int hf = 0; hf < 2; hf++)
                            if (!(in_range && pol.allowed(qinfo[mt][hf], ki)))
                                s[mt][nt][hf * 2 + e] = -INFINITY;
                }
        }

        /* Online softmax. A row with every key masked so far keeps max -inf; it is
         * exponentiated against 0 instead, so that no -inf - -inf NaN appears. */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = row_max[mt][hf];
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    mx = fmaxf(mx, fmaxf(s[mt][nt][hf * 2], s[mt][nt][hf * 2 + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_use = mx == -INFINITY ? 0.f : mx;
                const float alpha = exp2_approx((row_max[mt][hf] - m_use) * sl2);
                row_max[mt][hf] = mx;
                row_sum[mt][hf] *= alpha;
#pragma unroll
                for (int nd = 0; nd < ND; nd++) {
                    o[mt][nd][hf * 2] *= alpha;
                    o[mt][nd][hf * 2 + 1] *= alpha;
                }
                const float m_scaled = m_use * sl2;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float pe = exp2_approx(fmaf(s[mt][nt][hf * 2 + e], sl2, -m_scaled));
                        s[mt][nt][hf * 2 + e] = pe;
                        sum += pe;
                    }
                row_sum[mt][hf] += sum;
            }

        /* O += P V: P from registers (accumulator pairs -> A fragments); V rows are the k
         * index, stored k-major, so ldmatrix.trans gives B. */
#pragma unroll
        for (int kb = 0; kb < KN; kb++) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pack_bf16(s[mt][2 * kb][0], s[mt][2 * kb][1]);
                pa[mt][1] = pack_bf16(s[mt][2 * kb][2], s[mt][2 * kb][3]);
                pa[mt][2] = pack_bf16(s[mt][2 * kb + 1][0], s[mt][2 * kb + 1][1]);
                pa[mt][3] = pack_bf16(s[mt][2 * kb + 1][2], s[mt][2 * kb + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < ND / 2; dp++) {
                uint32_t bv[4];
                int c = kb * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                ldmatrix_x4_trans(bv, smem_addr(tV + Tile::offset(c, dp * 2 + lane / 16)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816(o[mt][2 * dp], pa[mt], bv[0], bv[1]);
                    mma_16816(o[mt][2 * dp + 1], pa[mt], bv[2], bv[3]);
                }
            }
        }
    }
    cp_async_wait<0>(); /* nothing may still be in flight into shared memory at exit */

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float sum = row_sum[mt][hf];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int r = q0 + warp * MT * 16 + mt * 16 + hf * 8 + g;
            if (r >= q_len) continue;
            const int mem = pol.q_row(bh, r);
            bf16 *dst = o_base + (long)mem * p.o_stride + 2 * tq;
#pragma unroll
            for (int nd = 0; nd < ND; nd++)
                *reinterpret_cast<uint32_t *>(dst + nd * 8) =
                    pack_bf16(o[mt][nd][hf * 2] * inv, o[mt][nd][hf * 2 + 1] * inv);
            if (tq == 0)
                p.lse[(long)bh * p.T + mem] =
                    sum > 0.f ? row_max[mt][hf] * p.scale + logf(sum) : -INFINITY;
        }
}

} // namespace flash

#endif
