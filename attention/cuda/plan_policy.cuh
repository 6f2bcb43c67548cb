/* Tile policy of the sparse modes for the flash kernels (see attention/cuda/flash_policy.cuh for
 * the members a policy provides): work rows, row info and tile lists come from a GPU plan
 * (attention/plan_cuda.h). One policy serves qk_sparse and hash_sparse (and dense through the
 * same machinery, for testing):
 *   q_len / k_len   work rows of bh: all T (hash) or the kept ones (qk, compacted to the front)
 *   q_row / k_row   original time step of a sorted row: loads gather and stores scatter with it
 *   allowed         same group and causal on original positions (qk: group is always 0 on work
 *                   rows, so only positions matter)
 *   key / query tile lists and tile_full   from the plan's exact lists and tile summaries.
 * The lists are built for one tile shape: the kernel's BM and BN must equal the block_m and
 * block_n the attn_tiles_cuda_t was built with (the arguments are accepted for the interface).
 * Rows of qk_sparse past q_len are dropped queries: their outputs are zero and no kernel over
 * work rows writes them, so the caller zeroes those rows (order_q[bh*T + r], r >= q_len). */
#ifndef ATTENTION_CUDA_PLAN_POLICY_CUH
#define ATTENTION_CUDA_PLAN_POLICY_CUH

#include <stdint.h>

#include "attention/plan_tiles.h"

namespace flash {

struct PlanPolicy {
    const int32_t *order_q, *order_k, *pos_q, *pos_k, *group_q, *group_k;
    const int32_t *group_start_q, *group_start_k;
    const attn_tile_info_t *info_q, *info_k;
    const int32_t *n_key_tiles, *key_tiles, *n_query_tiles, *query_tiles;
    int T, n_groups, n_work_groups, n_q_tiles, n_k_tiles, exclude_self;
    static constexpr bool LOOKS_UP_ROWS = true, TMA = false; /* rows are gathered */

    struct RowInfo {
        int pos, group;
    };

    __device__ __forceinline__ int q_len(int bh) const {
        return attn_rows_len(group_start_q, n_groups, n_work_groups, bh);
    }
    __device__ __forceinline__ int k_len(int bh) const {
        return attn_rows_len(group_start_k, n_groups, n_work_groups, bh);
    }
    __device__ __forceinline__ int q_row(int bh, int r) const { return order_q[(long)bh * T + r]; }
    __device__ __forceinline__ int k_row(int bh, int c) const { return order_k[(long)bh * T + c]; }
    __device__ __forceinline__ RowInfo q_info(int bh, int r) const {
        const long at = (long)bh * T + r;
        return {pos_q[at], group_q[at]};
    }
    __device__ __forceinline__ RowInfo k_info(int bh, int c) const {
        const long at = (long)bh * T + c;
        return {pos_k[at], group_k[at]};
    }
    /* Bitwise, not short-circuit: a branch here makes ptxas serialize the forward's in-flight
     * P.V wgmma against the masking (its C7513 warning), slowing every masked tile. */
    __device__ __forceinline__ bool allowed(RowInfo q, RowInfo k) const {
        return (q.group == k.group) & (k.pos <= q.pos - exclude_self);
    }

    __device__ __forceinline__ int num_key_tiles(int bh, int qt, int, int) const {
        return n_key_tiles[(long)bh * n_q_tiles + qt];
    }
    __device__ __forceinline__ int key_tile(int bh, int qt, int i, int, int) const {
        return key_tiles[((long)bh * n_q_tiles + qt) * n_k_tiles + i];
    }
    __device__ __forceinline__ int num_query_tiles(int bh, int kt, int, int) const {
        return n_query_tiles[(long)bh * n_k_tiles + kt];
    }
    __device__ __forceinline__ int query_tile(int bh, int kt, int i, int, int) const {
        return query_tiles[((long)bh * n_k_tiles + kt) * n_q_tiles + i];
    }
    __device__ __forceinline__ bool tile_full(int bh, int qt, int kt, int, int) const {
        return attn_tile_pair_full(info_q[(long)bh * n_q_tiles + qt],
                                   info_k[(long)bh * n_k_tiles + kt], exclude_self);
    }
};

/* The policy over device rows and lists (host-callable). */
inline PlanPolicy make_plan_policy(const attn_row_order_t &rows, const attn_tile_lists_t &lists) {
    PlanPolicy p;
    p.order_q = rows.order_q;
    p.order_k = rows.order_k;
    p.pos_q = rows.pos_q;
    p.pos_k = rows.pos_k;
    p.group_q = rows.group_q;
    p.group_k = rows.group_k;
    p.group_start_q = rows.group_start_q;
    p.group_start_k = rows.group_start_k;
    p.info_q = lists.info_q;
    p.info_k = lists.info_k;
    p.n_key_tiles = lists.n_key_tiles;
    p.key_tiles = lists.key_tiles;
    p.n_query_tiles = lists.n_query_tiles;
    p.query_tiles = lists.query_tiles;
    p.T = rows.T;
    p.n_groups = rows.n_groups;
    p.n_work_groups = rows.n_work_groups;
    p.n_q_tiles = lists.n_q_tiles;
    p.n_k_tiles = lists.n_k_tiles;
    p.exclude_self = rows.exclude_self;
    return p;
}

} // namespace flash

#endif
