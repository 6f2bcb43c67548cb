/* Tile work lists of attention/plan_tiles.h against brute force over every (query, key) pair
 * with attn_allowed, on awkward sizes (T = 1, T not a multiple of any tile, tiles larger than
 * T, odd tile sizes), every mode: hash nb in {1, 2, 8, 16, 64} with shared and separate keys,
 * qk drop in {0, 0.3, 0.5, 0.7, 1}, dense; exclude_self on and off.
 * Checked exactly (integers, no tolerance): grouped rows, tile summaries, both list directions,
 * "full" tiles (every pair allowed), the live count, and the longest-first tile orders. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attention/attention.h"
#include "attention/plan_cpu.h"
#include "attention/plan_tiles.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"

static int full_tiles_seen, live_tiles_seen, dead_candidate_tiles_seen;

static float *random_tensor(size_t n, uint64_t key) {
    float *x = xmalloc(n * sizeof(float), "test tensor");
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(key, i);
    return x;
}

typedef struct {
    const char *name;
    attn_params_t p;
    int shared_keys;
} mode_case_t;

/* One plan, one tile shape: everything in plan_tiles.h against brute force. */
static void check_case(const mode_case_t *mc, int B, int T, int H, int bm, int bn, uint64_t seed) {
    const int D = 8, BH = B * H;
    attn_plan_t plan;
    attn_plan_init(&plan, &mc->p, B, T, H, D);
    float *q = random_tensor((size_t)B * T * H * D, seed), *k = random_tensor((size_t)B * T * H * D, seed + 1);
    attn_plan_build(&plan, rng_key(seed, RNG_DOMAIN_ATTN, 1, 2, 3), q, mc->shared_keys ? NULL : k);
    attn_row_order_t rows;
    attn_tile_lists_t l;
    attn_row_order_build(&rows, &plan);
    attn_tile_lists_build(&l, &rows, bm, bn);
    const int nq = l.n_q_tiles, nk = l.n_k_tiles, ng = rows.n_groups;
    char what[160];
    snprintf(what, sizeof what, "%s excl=%d B=%d T=%d H=%d tiles %dx%d", mc->name, mc->p.exclude_self,
             B, T, H, bm, bn);
    CHECK(nq == (T + bm - 1) / bm && nk == (T + bn - 1) / bn, "%s: tile counts %d %d", what, nq, nk);

    int bad_rows = 0, bad_info = 0, bad_list = 0, bad_full = 0;
    int64_t live_brute = 0;
    char *live = xmalloc((size_t)nq * nk, "brute live"), *all = xmalloc((size_t)nq * nk, "brute full");
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / H, h = bh % H;
        const int32_t *oq = rows.order_q + (size_t)bh * T, *ok = rows.order_k + (size_t)bh * T;
        const int32_t *gsq = rows.group_start_q + (size_t)bh * (ng + 1);
        const int32_t *gsk = rows.group_start_k + (size_t)bh * (ng + 1);
        const int32_t len_q = attn_rows_len(rows.group_start_q, ng, rows.n_work_groups, bh);
        const int32_t len_k = attn_rows_len(rows.group_start_k, ng, rows.n_work_groups, bh);
        /* Rows: groups consistent with the plan; qk work rows = kept rows, sentinels after. */
        for (int r = 0; r < T; r++) {
            size_t at = (size_t)bh * T + r;
            bad_rows += rows.group_q[at] != attn_plan_row_group(&plan, ATTN_ROWS_QUERY, b, h, oq[r]);
            bad_rows += rows.group_k[at] != attn_plan_row_group(&plan, ATTN_ROWS_KEY, b, h, ok[r]);
            bad_rows += (r < len_q) != (rows.pos_q[at] == oq[r]);
            bad_rows += (r < len_k) != (rows.pos_k[at] == ok[r]);
        }
        bad_rows += gsq[ng] != T || gsk[ng] != T;
        /* Brute force over every pair of sorted rows: which tiles hold an allowed pair, which
         * are made only of allowed pairs of work rows. */
        memset(live, 0, (size_t)nq * nk);
        memset(all, 1, (size_t)nq * nk);
        for (int r = 0; r < T; r++)
            for (int c = 0; c < T; c++) {
                int allowed = attn_allowed(&plan, b, h, oq[r], ok[c]);
                size_t tp = (size_t)(r / bm) * nk + c / bn;
                if (allowed) live[tp] = 1;
                if (!allowed && r < len_q && c < len_k) all[tp] = 0;
            }
        /* Tile summaries over work rows. */
        for (int side = 0; side < 2; side++) {
            int n_tiles = side ? nk : nq, block = side ? bn : bm, len = side ? len_k : len_q;
            const attn_tile_info_t *info = (side ? l.info_k : l.info_q) + (size_t)bh * n_tiles;
            const int32_t *pos = (side ? rows.pos_k : rows.pos_q) + (size_t)bh * T;
            const int32_t *o = side ? ok : oq;
            for (int t = 0; t < n_tiles; t++) {
                attn_tile_info_t want = {INT32_MAX, INT32_MIN, ng, -1};
                for (int r = t * block; r < (t + 1) * block && r < len; r++) {
                    int g = attn_plan_row_group(&plan, side ? ATTN_ROWS_KEY : ATTN_ROWS_QUERY, b, h, o[r]);
                    if (pos[r] < want.pos_min) want.pos_min = pos[r];
                    if (pos[r] > want.pos_max) want.pos_max = pos[r];
                    if (g < want.group_min) want.group_min = g;
                    if (g > want.group_max) want.group_max = g;
                }
                bad_info += memcmp(&want, &info[t], sizeof want) != 0;
            }
        }
        /* Lists in both directions equal the brute-force live set, in increasing order. */
        for (int qt = 0; qt < nq; qt++) {
            const int32_t *lst = l.key_tiles + ((size_t)bh * nq + qt) * nk;
            int n = l.n_key_tiles[(size_t)bh * nq + qt], i = 0;
            for (int kt = 0; kt < nk; kt++) {
                if (live[(size_t)qt * nk + kt]) {
                    bad_list += i >= n || lst[i] != kt;
                    i++;
                    live_brute++;
                    live_tiles_seen++;
                } else {
                    dead_candidate_tiles_seen++;
                }
                /* A full tile is live (when it has rows) and all its work pairs are allowed. */
                attn_tile_info_t iq = l.info_q[(size_t)bh * nq + qt], ik = l.info_k[(size_t)bh * nk + kt];
                if (attn_tile_pair_full(iq, ik, rows.exclude_self)) {
                    full_tiles_seen++;
                    bad_full += !all[(size_t)qt * nk + kt] || !live[(size_t)qt * nk + kt];
                }
            }
            bad_list += i != n;
        }
        for (int kt = 0; kt < nk; kt++) {
            const int32_t *lst = l.query_tiles + ((size_t)bh * nk + kt) * nq;
            int n = l.n_query_tiles[(size_t)bh * nk + kt], i = 0;
            for (int qt = 0; qt < nq; qt++)
                if (live[(size_t)qt * nk + kt]) {
                    bad_list += i >= n || lst[i] != qt;
                    i++;
                }
            bad_list += i != n;
        }
    }
    CHECK(bad_rows == 0, "%s: %d row errors (groups, positions, sentinels)", what, bad_rows);
    CHECK(bad_info == 0, "%s: %d wrong tile summaries", what, bad_info);
    CHECK(bad_list == 0, "%s: %d tile-list errors against brute force", what, bad_list);
    CHECK(bad_full == 0, "%s: %d tiles marked full hold a masked pair", what, bad_full);
    CHECK(*l.live_tiles == live_brute, "%s: live count %lld, brute force %lld", what,
          (long long)*l.live_tiles, (long long)live_brute);
    free(live);
    free(all);
    attn_tile_lists_free(&l);
    attn_row_order_free(&rows);
    attn_plan_free(&plan);
    free(q);
    free(k);
}

static void test_all_modes(void) {
    static const int hash_nb[] = {1, 2, 8, 16, 64};
    static const float drops[] = {0.0f, 0.3f, 0.5f, 0.7f, 1.0f};
    mode_case_t cases[32];
    char names[32][48];
    int n = 0;
    for (int i = 0; i < 5; i++)
        for (int shared = 0; shared < 2; shared++) {
            snprintf(names[n], sizeof names[n], "hash nb=%d %s", hash_nb[i], shared ? "shared" : "k");
            cases[n] = (mode_case_t){names[n], {ATTN_HASH_SPARSE, hash_nb[i], 0.0f, 0, 0}, shared};
            n++;
        }
    for (int i = 0; i < 5; i++) {
        snprintf(names[n], sizeof names[n], "qk drop=%.1f", (double)drops[i]);
        cases[n] = (mode_case_t){names[n], {ATTN_QK_SPARSE, 1, drops[i], 0, 0}, 0};
        n++;
    }
    cases[n++] = (mode_case_t){"dense", {ATTN_DENSE, 1, 0.0f, 0, 0}, 0};
    /* {B, T, H} and tile shapes: T = 1; T below, between and above the tile sizes. */
    static const int sizes[][3] = {{1, 1, 1}, {2, 37, 2}, {1, 300, 3}, {1, 577, 1}};
    static const int tiles[][2] = {{128, 64}, {64, 128}, {16, 48}, {7, 5}};
    uint64_t seed = 100;
    for (int c = 0; c < n; c++)
        for (int excl = 0; excl < 2; excl++)
            for (int s = 0; s < 4; s++)
                for (int t = 0; t < 4; t++) {
                    /* The largest T only with small tiles (many tiles, still quick). */
                    if (s == 3 && t < 2) continue;
                    mode_case_t mc = cases[c];
                    mc.p.exclude_self = excl;
                    check_case(&mc, sizes[s][0], sizes[s][1], sizes[s][2], tiles[t][0], tiles[t][1], seed++);
                }
    /* The cases must exercise what they claim to: live, dead and full tiles all occur. */
    CHECK(live_tiles_seen > 1000 && dead_candidate_tiles_seen > 1000 && full_tiles_seen > 100,
          "coverage: %d live, %d dead, %d full tiles", live_tiles_seen, dead_candidate_tiles_seen,
          full_tiles_seen);
}

/* Tile sizes below 1 are a usage error with a message, not a crash. */
static void test_bad_tile_size(void) {
    attn_params_t p = {ATTN_DENSE, 1, 0.0f, 0, 0};
    attn_plan_t plan;
    attn_plan_init(&plan, &p, 1, 5, 1, 8);
    attn_row_order_t rows;
    attn_row_order_build(&rows, &plan);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        attn_tile_lists_t l;
        attn_tile_lists_build(&l, &rows, 0, 64);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == EXIT_USAGE, "block_m = 0 must exit with %d",
          EXIT_USAGE);
    attn_row_order_free(&rows);
    attn_plan_free(&plan);
}

/* attn_live's ingredients: the causal tile-pair count against brute force, and the plan's live
 * fraction against a count over sorted tile pairs with attn_allowed (no tile lists involved). */
static void test_live_fraction(void) {
    static const int Ts[] = {1, 63, 64, 65, 127, 128, 129, 300, 1000};
    static const int tiles[][2] = {{ATTN_FWD_BLOCK_M, ATTN_FWD_BLOCK_N}, {64, 128}, {7, 5}};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++)
        for (int t = 0; t < 3; t++) {
            const int T = Ts[i], bm = tiles[t][0], bn = tiles[t][1];
            int64_t brute = 0;
            for (int q_lo = 0; q_lo < T; q_lo += bm)
                for (int k_lo = 0; k_lo < T; k_lo += bn)
                    brute += k_lo <= (q_lo + bm < T ? q_lo + bm : T) - 1;
            CHECK(attn_causal_tile_pairs(T, bm, bn) == brute, "causal tile pairs T=%d %dx%d: %lld, brute %lld",
                  T, bm, bn, (long long)attn_causal_tile_pairs(T, bm, bn), (long long)brute);
        }
    const int B = 2, T = 300, H = 3, D = 8, bm = ATTN_FWD_BLOCK_M, bn = ATTN_FWD_BLOCK_N;
    const attn_params_t params[] = {
        {ATTN_HASH_SPARSE, 1, 0.0f, 0, 0},  /* one bucket, self included: dense, fraction 1 */
        {ATTN_QK_SPARSE, 1, 1.0f, 0, 0},    /* everything dropped: 0 */
        {ATTN_HASH_SPARSE, 8, 0.0f, 1, 0},  /* random buckets: strictly between */
        {ATTN_QK_SPARSE, 1, 0.5f, 0, 0},
    };
    const double expect[] = {1.0, 0.0, -1.0, -1.0}; /* -1: only the brute-force count */
    float *q = random_tensor((size_t)B * T * H * D, 7), *k = random_tensor((size_t)B * T * H * D, 8);
    for (int c = 0; c < 4; c++) {
        attn_plan_t plan;
        attn_plan_init(&plan, &params[c], B, T, H, D);
        attn_plan_build(&plan, rng_key(5, RNG_DOMAIN_ATTN, 1, 0, 0), q, k);
        attn_row_order_t rows;
        attn_row_order_build(&rows, &plan);
        int64_t live = 0;
        for (int bh = 0; bh < B * H; bh++) {
            const int32_t *oq = rows.order_q + (size_t)bh * T, *ok = rows.order_k + (size_t)bh * T;
            for (int q_lo = 0; q_lo < T; q_lo += bm)
                for (int k_lo = 0; k_lo < T; k_lo += bn) {
                    int any = 0;
                    for (int r = q_lo; r < q_lo + bm && r < T && !any; r++)
                        for (int c2 = k_lo; c2 < k_lo + bn && c2 < T && !any; c2++)
                            any = rows.pos_q[(size_t)bh * T + r] >= 0 && rows.pos_k[(size_t)bh * T + c2] < T &&
                                  attn_allowed(&plan, bh / H, bh % H, oq[r], ok[c2]);
                    live += any;
                }
        }
        const double want = (double)live / ((double)attn_causal_tile_pairs(T, bm, bn) * B * H);
        const double got = attn_plan_live_fraction(&plan);
        CHECK(got == want, "live fraction case %d: %.6f, brute force %.6f", c, got, want);
        if (expect[c] >= 0) CHECK(got == expect[c], "live fraction case %d: %.6f, expected %.1f", c, got, expect[c]);
        else CHECK(got > 0.0 && got < 1.0, "live fraction case %d: %.6f not strictly inside (0, 1)", c, got);
        attn_row_order_free(&rows);
        attn_plan_free(&plan);
    }
    attn_plan_t dense;
    const attn_params_t dp = {ATTN_DENSE, 1, 0.0f, 0, 0};
    attn_plan_init(&dense, &dp, B, T, H, D);
    CHECK(attn_plan_live_fraction(&dense) == -1.0, "a dense plan has no live fraction");
    attn_plan_free(&dense);
    free(q);
    free(k);
}

int main(void) {
    test_live_fraction();
    test_bad_tile_size();
    test_all_modes();
    return test_summary();
}
