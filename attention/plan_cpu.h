/* CPU reference of the row reordering the sparse GPU kernels apply within one (batch, head).
 *
 * Each row (a query or a key at original position t) belongs to a group:
 *   hash_sparse  group = its bucket, n_groups = n_buckets
 *   qk_sparse    group 0 = kept, group 1 = dropped, n_groups = 2
 *   dense        group 0 for every row, n_groups = 1
 * Rows are stably sorted by group (a counting sort: histogram, exclusive prefix sum, placement
 * in increasing original position), so within a group original positions stay increasing.
 * For qk_sparse this is the compaction "kept rows first, in order", dropped rows after them.
 * The GPU plan is compared element by element against these arrays.
 */
#ifndef ATTENTION_PLAN_CPU_H
#define ATTENTION_PLAN_CPU_H

#include <stdint.h>

#include "attention/attention.h"

typedef enum { ATTN_ROWS_QUERY = 0, ATTN_ROWS_KEY = 1 } attn_rows_t;

/* Position sentinels of qk_sparse's dropped rows: with them the causal test on positions
 * alone (pos_k <= pos_q, or <) rejects every pair that involves a dropped row. */
#define ATTN_POS_DROPPED_QUERY (-1)
#define ATTN_POS_DROPPED_KEY INT32_MAX

/* Number of groups of the plan's mode (see above). */
int attn_plan_n_groups(const attn_plan_t *plan);

/* Group of original row t of (b, h), for queries or keys. */
int attn_plan_row_group(const attn_plan_t *plan, attn_rows_t which, int b, int h, int t);

/* Stable counting sort of the T query (or key) rows of (b, h) by group.
 *   order[r]        [T] original position of the row placed at sorted index r (the gather /
 *                   scatter index: sorted row r reads and writes original row order[r]).
 *   pos[r]          [T] or NULL: order[r], except qk_sparse dropped rows, which get
 *                   ATTN_POS_DROPPED_QUERY / ATTN_POS_DROPPED_KEY (the kernels' causal test).
 *   group_start[g]  [n_groups + 1] or NULL: rows of group g are sorted indices
 *                   [group_start[g], group_start[g + 1]); group_start[n_groups] = T. */
void attn_plan_sort_rows(const attn_plan_t *plan, attn_rows_t which, int b, int h,
                         int32_t *order, int32_t *pos, int32_t *group_start);

#endif
