/* Reordered rows and per-tile work lists of an attention plan: the layout the sparse flash
 * kernels read, built on the CPU here (the reference) and on the GPU by attention/plan_cuda.h
 * (which must produce the same arrays element for element).
 *
 * Rows. For every bh = b*H + h, the T query rows and the T key rows are stably sorted by group
 * (attention/plan_cpu.h: hash bucket; qk kept = 0 / dropped = 1; dense 0). "Work rows" are the
 * sorted rows of groups [0, n_work_groups): all of them for hash and dense, only the kept ones
 * for qk (so qk compacts kept rows to the front and the kernels never touch dropped ones).
 *   len_q(bh) = group_start_q[bh*(n_groups+1) + n_work_groups], likewise len_k.
 *
 * Tiles. Query tile qt holds sorted query rows [qt*block_m, (qt+1)*block_m) cut at len_q; key
 * tile kt holds sorted key rows [kt*block_n, (kt+1)*block_n) cut at len_k. The pair (qt, kt)
 * is LIVE iff it holds at least one allowed (query, key) pair (attention/attention.h's
 * attn_allowed): exact, not a bound from summaries, so a kernel that visits exactly the live
 * tiles does no work on tiles that are fully masked. Because rows are grouped, the test is
 * cheap: for each group g present in both tiles, the latest query of g in the query tile
 * (its last row of g) and the earliest key of g in the key tile (its first row of g) decide it.
 *
 * Lists are stored with a fixed capacity (no prefix sum needed to place them):
 *   key_tiles[(bh*n_q_tiles + qt)*n_k_tiles + i], i < n_key_tiles[bh*n_q_tiles + qt], increasing
 *   query_tiles[(bh*n_k_tiles + kt)*n_q_tiles + i], i < n_query_tiles[bh*n_k_tiles + kt]
 * (the second is the transpose of the first, for the backward pass over key tiles).
 * Kernels take the tiles in a fixed natural order (flash_ws.cuh, ws_query_tile): ordering them
 * by list length made the CTAs running at once share less of their K/V in L2 (session 8).
 */
#ifndef ATTENTION_PLAN_TILES_H
#define ATTENTION_PLAN_TILES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "attention/attention.h"

#ifdef __CUDACC__
#define ATTN_TILES_HD __host__ __device__ __forceinline__
#else
#define ATTN_TILES_HD static inline
#endif

/* Sorted rows of all (b, h). Arrays are [BH][T] unless noted; host or device memory. */
typedef struct {
    int BH, T;
    int n_groups;      /* attn_plan_n_groups */
    int n_work_groups; /* groups that are work rows: 1 for qk (kept), else n_groups */
    int exclude_self;
    int32_t *order_q, *order_k; /* original time step of sorted row r (gather/scatter index) */
    int32_t *pos_q, *pos_k;     /* original position, or ATTN_POS_DROPPED_QUERY / _KEY (qk) */
    int32_t *group_q, *group_k; /* group of sorted row r */
    int32_t *group_start_q, *group_start_k; /* [BH][n_groups + 1] */
} attn_row_order_t;

/* Summary of the work rows of one tile; an empty tile (past len) has pos_min = INT32_MAX,
 * pos_max = INT32_MIN, group_min = n_groups, group_max = -1. */
typedef struct {
    int32_t pos_min, pos_max, group_min, group_max;
} attn_tile_info_t;

typedef struct {
    int BH, block_m, block_n;
    int n_q_tiles, n_k_tiles;         /* ceil(T / block_m), ceil(T / block_n) */
    attn_tile_info_t *info_q;         /* [BH][n_q_tiles] */
    attn_tile_info_t *info_k;         /* [BH][n_k_tiles] */
    int32_t *n_key_tiles, *key_tiles; /* see above */
    int32_t *n_query_tiles, *query_tiles;
    int64_t *live_tiles;              /* [1]: number of live (qt, kt) pairs over all bh */
} attn_tile_lists_t;

/* Work-row count of bh (queries or keys). */
ATTN_TILES_HD int32_t attn_rows_len(const int32_t *group_start, int n_groups, int n_work_groups,
                                    int bh) {
    return group_start[(long)bh * (n_groups + 1) + n_work_groups];
}

/* Whether tile pair (qt, kt) of one bh holds an allowed pair. pos_*, gs_* point at that bh's
 * rows / group starts; len_* are its work-row counts. */
ATTN_TILES_HD int attn_tile_pair_live(const int32_t *pos_q, const int32_t *pos_k,
                                      const int32_t *gs_q, const int32_t *gs_k,
                                      attn_tile_info_t iq, attn_tile_info_t ik, int qt, int kt,
                                      int block_m, int block_n, int32_t len_q, int32_t len_k,
                                      int exclude_self) {
    int g_lo = iq.group_min > ik.group_min ? iq.group_min : ik.group_min;
    int g_hi = iq.group_max < ik.group_max ? iq.group_max : ik.group_max;
    int32_t q_lo = qt * block_m, q_hi = q_lo + block_m < len_q ? q_lo + block_m : len_q;
    int32_t k_lo = kt * block_n, k_hi = k_lo + block_n < len_k ? k_lo + block_n : len_k;
    for (int g = g_lo; g <= g_hi; g++) {
        /* Rows of g in each tile; within a group positions increase with the row. */
        int32_t q_end = gs_q[g + 1] < q_hi ? gs_q[g + 1] : q_hi;
        int32_t q_begin = gs_q[g] > q_lo ? gs_q[g] : q_lo;
        int32_t k_begin = gs_k[g] > k_lo ? gs_k[g] : k_lo;
        int32_t k_end = gs_k[g + 1] < k_hi ? gs_k[g + 1] : k_hi;
        if (q_begin < q_end && k_begin < k_end && pos_k[k_begin] <= pos_q[q_end - 1] - exclude_self)
            return 1;
    }
    return 0;
}

/* Whether every pair of work rows in the tile pair is allowed (the kernel may skip the mask):
 * one group on both sides and the latest key at or before the earliest query. */
ATTN_TILES_HD int attn_tile_pair_full(attn_tile_info_t iq, attn_tile_info_t ik, int exclude_self) {
    return iq.group_min == iq.group_max && ik.group_min == ik.group_max &&
           iq.group_min == ik.group_min && ik.pos_max <= iq.pos_min - exclude_self;
}

/* CPU reference. attn_row_order_build allocates and fills host arrays from a built plan
 * (attn_plan_build) with attention/plan_cpu.h's sort. */
void attn_row_order_build(attn_row_order_t *rows, const attn_plan_t *plan);
void attn_row_order_free(attn_row_order_t *rows);

/* Number of work groups of a mode (see above). */
int attn_n_work_groups(const attn_params_t *p);

/* Allocates and fills host tile lists for tile sizes block_m x block_n (both >= 1). */
void attn_tile_lists_build(attn_tile_lists_t *lists, const attn_row_order_t *rows, int block_m,
                           int block_n);
void attn_tile_lists_free(attn_tile_lists_t *lists);

/* Tile summaries of one side (queries: block = block_m; keys: block_n) for all bh. */
void attn_tile_infos(const attn_row_order_t *rows, int keys, int block, attn_tile_info_t *info);

/* The sparse forward's tile shape on every GPU path (attention/cuda/sparse_attn.cu checks it at
 * compile time). attn_live, the step log's measure of sparse work, counts tiles of this shape
 * on both backends, so CPU and GPU runs report the same number for the same plan. */
#define ATTN_FWD_BLOCK_M 128
#define ATTN_FWD_BLOCK_N 64

/* Tile pairs (qt, kt) of one bh that dense causal attention visits: key tiles at or before each
 * query tile's last row. */
int64_t attn_causal_tile_pairs(int T, int block_m, int block_n);

/* Live forward tile pairs of a built plan over its dense causal tile pairs, all (b, h) pooled;
 * -1 for a dense plan. */
double attn_plan_live_fraction(const attn_plan_t *plan);

#ifdef __cplusplus
}
#endif

#endif
