/* Reference row reordering for the sparse kernels (see attention/plan_cpu.h). */
#include "attention/plan_cpu.h"

#include "runtime/error.h"

int attn_plan_n_groups(const attn_plan_t *plan) {
    switch (plan->p.mode) {
    case ATTN_DENSE: return 1;
    case ATTN_QK_SPARSE: return 2;
    case ATTN_HASH_SPARSE: return plan->p.n_buckets;
    }
    fatal(EXIT_RUNTIME, "attn_plan_n_groups: unknown attention mode %d", (int)plan->p.mode);
}

int attn_plan_row_group(const attn_plan_t *plan, attn_rows_t which, int b, int h, int t) {
    size_t n = ((size_t)b * plan->H + h) * plan->T + t;
    switch (plan->p.mode) {
    case ATTN_DENSE: return 0;
    case ATTN_QK_SPARSE: return (which == ATTN_ROWS_QUERY ? plan->keep_q[n] : plan->keep_k[n]) ? 0 : 1;
    case ATTN_HASH_SPARSE: return which == ATTN_ROWS_QUERY ? plan->bucket_q[n] : plan->bucket_k[n];
    }
    fatal(EXIT_RUNTIME, "attn_plan_row_group: unknown attention mode %d", (int)plan->p.mode);
}

void attn_plan_sort_rows(const attn_plan_t *plan, attn_rows_t which, int b, int h,
                         int32_t *order, int32_t *pos, int32_t *group_start) {
    const int T = plan->T, n_groups = attn_plan_n_groups(plan);
    int32_t next[ATTN_MAX_BUCKETS + 1] = {0};
    /* Histogram into next[g + 1], then an inclusive scan turns next[g] into the first sorted
     * index of group g; placing rows in increasing t keeps the sort stable. */
    for (int t = 0; t < T; t++) {
        int g = attn_plan_row_group(plan, which, b, h, t);
        if (g < 0 || g >= n_groups)
            fatal(EXIT_RUNTIME, "attn_plan_sort_rows: row %d of (b=%d, h=%d) has group %d outside [0, %d)",
                  t, b, h, g, n_groups);
        next[g + 1]++;
    }
    for (int g = 0; g < n_groups; g++) next[g + 1] += next[g];
    if (group_start)
        for (int g = 0; g <= n_groups; g++) group_start[g] = next[g];
    for (int t = 0; t < T; t++) {
        int g = attn_plan_row_group(plan, which, b, h, t);
        int r = next[g]++;
        order[r] = t;
        if (pos) {
            int dropped = plan->p.mode == ATTN_QK_SPARSE && g == 1;
            pos[r] = !dropped ? t : which == ATTN_ROWS_QUERY ? ATTN_POS_DROPPED_QUERY : ATTN_POS_DROPPED_KEY;
        }
    }
}
