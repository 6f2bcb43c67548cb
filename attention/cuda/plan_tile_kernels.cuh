/* Plan stage 4 on the GPU: tile summaries and exact tile work lists (attention/plan_tiles.h),
 * one warp per tile. The predicates are plan_tiles.h's own (host-and-device functions), so the
 * GPU lists equal the CPU reference's by construction of the same test; the candidates a warp
 * tests are the other side's tiles that hold rows of its groups, 32 at a time, compacted in
 * increasing order with a ballot. */
#ifndef ATTENTION_CUDA_PLAN_TILE_KERNELS_CUH
#define ATTENTION_CUDA_PLAN_TILE_KERNELS_CUH

#include <limits.h>
#include <stdint.h>

#include "attention/plan_tiles.h"

namespace plan {

struct TileArgs {
    attn_row_order_t rows;   /* device pointers */
    attn_tile_lists_t lists; /* device pointers */
};

/* Which tile a warp handles: the first BH*n_first warps take side 0, the rest side 1. */
struct WarpTile {
    int side, bh, tile;
};
__device__ __forceinline__ bool warp_tile(int BH, int n_first, int n_second, WarpTile &w) {
    const long id = (blockIdx.x * (long)blockDim.x + threadIdx.x) / 32;
    const long first = (long)BH * n_first;
    if (id >= first + (long)BH * n_second) return false;
    w.side = id >= first;
    const long i = w.side ? id - first : id;
    const int n = w.side ? n_second : n_first;
    w.bh = (int)(i / n);
    w.tile = (int)(i % n);
    return true;
}

/* Side 0: query tiles (block_m), side 1: key tiles (block_n). */
__global__ void tile_info_kernel(TileArgs a) {
    const attn_row_order_t &rw = a.rows;
    const attn_tile_lists_t &l = a.lists;
    if (blockIdx.x == 0 && threadIdx.x == 0) *l.live_tiles = 0; /* the list kernel adds to it */
    WarpTile w;
    if (!warp_tile(l.BH, l.n_q_tiles, l.n_k_tiles, w)) return;
    const int lane = threadIdx.x % 32, T = rw.T;
    const int block = w.side ? l.block_n : l.block_m, n_tiles = w.side ? l.n_k_tiles : l.n_q_tiles;
    const int32_t *pos = (w.side ? rw.pos_k : rw.pos_q) + (long)w.bh * T;
    const int32_t *group = (w.side ? rw.group_k : rw.group_q) + (long)w.bh * T;
    const int32_t len = attn_rows_len(w.side ? rw.group_start_k : rw.group_start_q, rw.n_groups,
                                      rw.n_work_groups, w.bh);
    const int32_t lo = w.tile * block, hi = min(lo + block, len);
    int pos_min = INT_MAX, pos_max = INT_MIN;
    for (int32_t r = lo + lane; r < hi; r += 32) {
        pos_min = min(pos_min, pos[r]);
        pos_max = max(pos_max, pos[r]);
    }
    pos_min = __reduce_min_sync(0xffffffffu, pos_min);
    pos_max = __reduce_max_sync(0xffffffffu, pos_max);
    if (lane != 0) return;
    /* Sorted rows: the first row has the smallest group, the last row the largest. */
    attn_tile_info_t info = {INT32_MAX, INT32_MIN, rw.n_groups, -1};
    if (lo < hi) info = attn_tile_info_t{pos_min, pos_max, group[lo], group[hi - 1]};
    (w.side ? l.info_k : l.info_q)[(long)w.bh * n_tiles + w.tile] = info;
}

/* Side 0: key-tile list of each query tile (and the live count); side 1: the transpose. */
__global__ void tile_list_kernel(TileArgs a) {
    const attn_row_order_t &rw = a.rows;
    const attn_tile_lists_t &l = a.lists;
    WarpTile w;
    if (!warp_tile(l.BH, l.n_q_tiles, l.n_k_tiles, w)) return;
    const int lane = threadIdx.x % 32, T = rw.T, ng = rw.n_groups, bh = w.bh;
    const bool keys_own = w.side;
    const int n_own = keys_own ? l.n_k_tiles : l.n_q_tiles;
    const int n_other = keys_own ? l.n_q_tiles : l.n_k_tiles;
    const int other_block = keys_own ? l.block_m : l.block_n;
    const int32_t *pos_q = rw.pos_q + (long)bh * T, *pos_k = rw.pos_k + (long)bh * T;
    const int32_t *gs_q = rw.group_start_q + (long)bh * (ng + 1);
    const int32_t *gs_k = rw.group_start_k + (long)bh * (ng + 1);
    const int32_t len_q = gs_q[rw.n_work_groups], len_k = gs_k[rw.n_work_groups];
    const int32_t *gs_other = keys_own ? gs_q : gs_k;
    const long own_at = (long)bh * n_own + w.tile;
    const attn_tile_info_t io = (keys_own ? l.info_k : l.info_q)[own_at];
    int32_t *out = (keys_own ? l.query_tiles : l.key_tiles) + own_at * n_other;

    int count = 0;
    if (io.group_min <= io.group_max) {
        /* Candidates: the other side's tiles from the one holding the first row of the own
         * tile's smallest group while they start before the end of its largest group. */
        const int32_t first_row = gs_other[io.group_min], end_row = gs_other[io.group_max + 1];
        const int first = first_row / other_block;
        const int n_cand = end_row > first * other_block
                               ? (end_row - first * other_block + other_block - 1) / other_block
                               : 0;
        for (int base = 0; base < n_cand; base += 32) {
            const int ot = first + base + lane;
            bool live = false;
            if (base + lane < n_cand) {
                const int qt = keys_own ? ot : w.tile, kt = keys_own ? w.tile : ot;
                live = attn_tile_pair_live(pos_q, pos_k, gs_q, gs_k,
                                           l.info_q[(long)bh * l.n_q_tiles + qt],
                                           l.info_k[(long)bh * l.n_k_tiles + kt], qt, kt,
                                           l.block_m, l.block_n, len_q, len_k, rw.exclude_self);
            }
            const unsigned ballot = __ballot_sync(0xffffffffu, live);
            if (live) out[count + __popc(ballot & ((1u << lane) - 1))] = ot;
            count += __popc(ballot);
        }
    }
    if (lane != 0) return;
    (keys_own ? l.n_query_tiles : l.n_key_tiles)[own_at] = count;
    if (!keys_own && count)
        atomicAdd(reinterpret_cast<unsigned long long *>(l.live_tiles), (unsigned long long)count);
}

} // namespace plan

#endif
