/* CPU reference of the reordered rows and tile work lists (see attention/plan_tiles.h). */
#include "attention/plan_tiles.h"

#include <stdlib.h>
#include <string.h>

#include "attention/plan_cpu.h"
#include "runtime/error.h"

int attn_n_work_groups(const attn_params_t *p) {
    switch (p->mode) {
    case ATTN_DENSE: return 1;
    case ATTN_QK_SPARSE: return 1; /* group 0 = kept rows; dropped rows are not work */
    case ATTN_HASH_SPARSE: return p->n_buckets;
    }
    fatal(EXIT_RUNTIME, "attn_n_work_groups: unknown attention mode %d", (int)p->mode);
}

void attn_row_order_build(attn_row_order_t *rows, const attn_plan_t *plan) {
    const int B = plan->B, H = plan->H, T = plan->T, BH = B * H;
    const int n_groups = attn_plan_n_groups(plan);
    memset(rows, 0, sizeof *rows);
    rows->BH = BH;
    rows->T = T;
    rows->n_groups = n_groups;
    rows->n_work_groups = attn_n_work_groups(&plan->p);
    rows->exclude_self = plan->p.exclude_self;
    size_t n = (size_t)BH * T, ng = (size_t)BH * (n_groups + 1);
    int32_t **row_arrays[] = {&rows->order_q, &rows->order_k, &rows->pos_q,
                              &rows->pos_k, &rows->group_q, &rows->group_k};
    for (size_t i = 0; i < sizeof row_arrays / sizeof row_arrays[0]; i++)
        *row_arrays[i] = xmalloc(n * sizeof(int32_t), "attention row order");
    rows->group_start_q = xmalloc(ng * sizeof(int32_t), "attention row order group starts");
    rows->group_start_k = xmalloc(ng * sizeof(int32_t), "attention row order group starts");
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / H, h = bh % H;
        size_t r0 = (size_t)bh * T, g0 = (size_t)bh * (n_groups + 1);
        attn_plan_sort_rows(plan, ATTN_ROWS_QUERY, b, h, rows->order_q + r0, rows->pos_q + r0,
                            rows->group_start_q + g0);
        attn_plan_sort_rows(plan, ATTN_ROWS_KEY, b, h, rows->order_k + r0, rows->pos_k + r0,
                            rows->group_start_k + g0);
        for (int g = 0; g < n_groups; g++) {
            for (int r = rows->group_start_q[g0 + g]; r < rows->group_start_q[g0 + g + 1]; r++)
                rows->group_q[r0 + r] = g;
            for (int r = rows->group_start_k[g0 + g]; r < rows->group_start_k[g0 + g + 1]; r++)
                rows->group_k[r0 + r] = g;
        }
    }
}

void attn_row_order_free(attn_row_order_t *rows) {
    free(rows->order_q);
    free(rows->order_k);
    free(rows->pos_q);
    free(rows->pos_k);
    free(rows->group_q);
    free(rows->group_k);
    free(rows->group_start_q);
    free(rows->group_start_k);
    memset(rows, 0, sizeof *rows);
}

void attn_tile_infos(const attn_row_order_t *rows, int keys, int block, attn_tile_info_t *info) {
    const int T = rows->T, n_tiles = (T + block - 1) / block;
    const int32_t *pos = keys ? rows->pos_k : rows->pos_q;
    const int32_t *group = keys ? rows->group_k : rows->group_q;
    const int32_t *gs = keys ? rows->group_start_k : rows->group_start_q;
    for (int bh = 0; bh < rows->BH; bh++) {
        const int32_t len = attn_rows_len(gs, rows->n_groups, rows->n_work_groups, bh);
        for (int tile = 0; tile < n_tiles; tile++) {
            attn_tile_info_t in = {INT32_MAX, INT32_MIN, rows->n_groups, -1};
            int32_t lo = tile * block, hi = lo + block < len ? lo + block : len;
            for (int32_t r = lo; r < hi; r++) {
                int32_t p = pos[(size_t)bh * T + r], g = group[(size_t)bh * T + r];
                if (p < in.pos_min) in.pos_min = p;
                if (p > in.pos_max) in.pos_max = p;
                if (g < in.group_min) in.group_min = g;
                if (g > in.group_max) in.group_max = g;
            }
            info[(size_t)bh * n_tiles + tile] = in;
        }
    }
}

/* One direction of the lists: for every "own" tile, the live tiles of the other side, found
 * among the other side's tiles that hold rows of the own tile's groups (rows are grouped, so
 * those form one contiguous range of tiles). */
static void build_lists(const attn_row_order_t *rows, const attn_tile_lists_t *l, int keys_own,
                        int32_t *n_list, int32_t *list, int64_t *live) {
    const int T = rows->T, ng = rows->n_groups, nw = rows->n_work_groups;
    const int n_own = keys_own ? l->n_k_tiles : l->n_q_tiles;
    const int n_other = keys_own ? l->n_q_tiles : l->n_k_tiles;
    const int other_block = keys_own ? l->block_m : l->block_n;
    for (int bh = 0; bh < rows->BH; bh++) {
        const int32_t *pos_q = rows->pos_q + (size_t)bh * T, *pos_k = rows->pos_k + (size_t)bh * T;
        const int32_t *gs_q = rows->group_start_q + (size_t)bh * (ng + 1);
        const int32_t *gs_k = rows->group_start_k + (size_t)bh * (ng + 1);
        const int32_t len_q = gs_q[nw], len_k = gs_k[nw];
        const int32_t *gs_other = keys_own ? gs_q : gs_k;
        for (int own = 0; own < n_own; own++) {
            const attn_tile_info_t io = (keys_own ? l->info_k : l->info_q)[(size_t)bh * n_own + own];
            int32_t *out = list + ((size_t)bh * n_own + own) * n_other;
            int n = 0;
            if (io.group_min <= io.group_max) {
                int32_t first_row = gs_other[io.group_min], end_row = gs_other[io.group_max + 1];
                for (int32_t ot = first_row / other_block; ot * other_block < end_row; ot++) {
                    int qt = keys_own ? ot : own, kt = keys_own ? own : ot;
                    attn_tile_info_t iq = l->info_q[(size_t)bh * l->n_q_tiles + qt];
                    attn_tile_info_t ik = l->info_k[(size_t)bh * l->n_k_tiles + kt];
                    if (attn_tile_pair_live(pos_q, pos_k, gs_q, gs_k, iq, ik, qt, kt, l->block_m,
                                            l->block_n, len_q, len_k, rows->exclude_self))
                        out[n++] = ot;
                }
            }
            n_list[(size_t)bh * n_own + own] = n;
            *live += n;
        }
    }
}

void attn_tile_lists_build(attn_tile_lists_t *l, const attn_row_order_t *rows, int block_m,
                           int block_n) {
    if (block_m < 1 || block_n < 1)
        fatal(EXIT_USAGE, "attention tile lists: tile sizes must be positive (block_m=%d block_n=%d)",
              block_m, block_n);
    memset(l, 0, sizeof *l);
    const int BH = rows->BH, T = rows->T;
    l->BH = BH;
    l->block_m = block_m;
    l->block_n = block_n;
    l->n_q_tiles = (T + block_m - 1) / block_m;
    l->n_k_tiles = (T + block_n - 1) / block_n;
    const size_t nq = (size_t)BH * l->n_q_tiles, nk = (size_t)BH * l->n_k_tiles;
    l->info_q = xmalloc(nq * sizeof(attn_tile_info_t), "tile infos");
    l->info_k = xmalloc(nk * sizeof(attn_tile_info_t), "tile infos");
    l->n_key_tiles = xmalloc(nq * sizeof(int32_t), "tile list counts");
    l->n_query_tiles = xmalloc(nk * sizeof(int32_t), "tile list counts");
    l->key_tiles = xmalloc(nq * l->n_k_tiles * sizeof(int32_t), "key tile lists");
    l->query_tiles = xmalloc(nk * l->n_q_tiles * sizeof(int32_t), "query tile lists");
    l->live_tiles = xcalloc(1, sizeof(int64_t), "live tile count");
    attn_tile_infos(rows, 0, block_m, l->info_q);
    attn_tile_infos(rows, 1, block_n, l->info_k);
    int64_t live_transposed = 0;
    build_lists(rows, l, 0, l->n_key_tiles, l->key_tiles, l->live_tiles);
    build_lists(rows, l, 1, l->n_query_tiles, l->query_tiles, &live_transposed);
    if (live_transposed != *l->live_tiles)
        fatal(EXIT_RUNTIME, "attention tile lists: %lld live pairs by query tile but %lld by key tile",
              (long long)*l->live_tiles, (long long)live_transposed);
}

void attn_tile_lists_free(attn_tile_lists_t *l) {
    free(l->info_q);
    free(l->info_k);
    free(l->n_key_tiles);
    free(l->key_tiles);
    free(l->n_query_tiles);
    free(l->query_tiles);
    free(l->live_tiles);
    memset(l, 0, sizeof *l);
}

int64_t attn_causal_tile_pairs(int T, int block_m, int block_n) {
    int64_t pairs = 0;
    for (int q_lo = 0; q_lo < T; q_lo += block_m) {
        const int last_row = (q_lo + block_m < T ? q_lo + block_m : T) - 1;
        pairs += last_row / block_n + 1;
    }
    return pairs;
}

double attn_plan_live_fraction(const attn_plan_t *plan) {
    if (plan->p.mode == ATTN_DENSE) return -1.0;
    attn_row_order_t rows;
    attn_tile_lists_t lists;
    attn_row_order_build(&rows, plan);
    attn_tile_lists_build(&lists, &rows, ATTN_FWD_BLOCK_M, ATTN_FWD_BLOCK_N);
    const double live = (double)lists.live_tiles[0];
    attn_tile_lists_free(&lists);
    attn_row_order_free(&rows);
    return live / ((double)attn_causal_tile_pairs(plan->T, ATTN_FWD_BLOCK_M, ATTN_FWD_BLOCK_N) *
                   plan->B * plan->H);
}
