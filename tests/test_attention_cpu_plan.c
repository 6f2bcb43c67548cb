/* The attention plan: conformance to the formulas of attention/attention.h (recomputed here
 * independently), determinism under a key, sensitivity to every part of the key, statistics
 * of drop masks and buckets, hash invariances, parameter validation, and the stable row sort
 * of attention/plan_cpu.h that the GPU plan is compared against. */
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attention/attention.h"
#include "attention/plan_cpu.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"

static float *random_tensor(size_t n, uint64_t key, float scale) {
    float *x = xmalloc(n * sizeof(float), "test tensor");
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(key, i);
    return x;
}

static attn_params_t qk(float drop) {
    return (attn_params_t){.mode = ATTN_QK_SPARSE, .n_buckets = 1, .drop_prob = drop, .exclude_self = 0};
}
static attn_params_t hash(int nb) {
    return (attn_params_t){.mode = ATTN_HASH_SPARSE, .n_buckets = nb, .drop_prob = 0.0f, .exclude_self = 1};
}

static size_t plan_rows(const attn_plan_t *pl) { return (size_t)pl->B * pl->H * pl->T; }

static void test_mode_names(void) {
    const attn_mode_t modes[] = {ATTN_DENSE, ATTN_QK_SPARSE, ATTN_HASH_SPARSE};
    const char *names[] = {"dense", "qk_sparse", "hash_sparse"};
    for (int i = 0; i < 3; i++) {
        attn_mode_t parsed = ATTN_DENSE;
        CHECK(strcmp(attn_mode_name(modes[i]), names[i]) == 0, "attn_mode_name(%d) = %s", i, attn_mode_name(modes[i]));
        CHECK(attn_mode_parse(names[i], &parsed) == 0 && parsed == modes[i], "attn_mode_parse(%s)", names[i]);
    }
    attn_mode_t untouched = ATTN_QK_SPARSE;
    CHECK(attn_mode_parse("hash", &untouched) == -1 && untouched == ATTN_QK_SPARSE, "'hash' must not parse");
    CHECK(attn_mode_parse("Dense", &untouched) == -1, "parsing is case-sensitive");
    CHECK(attn_mode_parse("", &untouched) == -1, "empty mode must not parse");
}

/* Keep masks equal the header's formula, recomputed here. */
static void test_keep_mask_formula(void) {
    attn_plan_t pl;
    attn_params_t p = qk(0.3f);
    const int B = 2, T = 37, H = 3, D = 8;
    attn_plan_init(&pl, &p, B, T, H, D);
    uint64_t key = rng_key(11, RNG_DOMAIN_ATTN, 5, 2, 1);
    attn_plan_build(&pl, key, NULL, NULL); /* qk masks do not read q or k */
    uint32_t threshold = rng_drop_threshold(0.3f);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                uint64_t c = 2 * ((uint64_t)(b * H + h) * T + t);
                size_t n = ((size_t)b * H + h) * T + t;
                bad += pl.keep_q[n] != (rng_u24(key, c) >= threshold);
                bad += pl.keep_k[n] != (rng_u24(key, c + 1) >= threshold);
            }
    CHECK(bad == 0, "keep masks differ from the header's formula at %d rows", bad);
    CHECK(pl.bucket_q == NULL && pl.rotations == NULL, "qk plan must not allocate hash arrays");
    attn_plan_free(&pl);
}

/* Rotations and buckets equal the header's formula: normalised columns of rng_normal draws,
 * bucket = first argmax of [x.R, -x.R]. */
/* The bucket of row x in head h by the header's formula: argmax over [x.R, -x.R], first
 * maximum, dot products in double (recomputed here, not calling the plan's code). */
static int expected_bucket(const float *x, const attn_plan_t *pl, int h) {
    const int D = pl->D, nb = pl->p.n_buckets, half = nb / 2;
    double cand[ATTN_MAX_BUCKETS];
    for (int c = 0; c < half; c++) {
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)x[d] * pl->rotations[((size_t)h * D + d) * half + c];
        cand[c] = s;
        cand[c + half] = -s;
    }
    int best = 0;
    for (int n = 1; n < nb; n++)
        if (cand[n] > cand[best]) best = n;
    return best;
}

static void test_hash_formula(void) {
    const int B = 2, T = 29, H = 3, D = 16, nb = 8, half = nb / 2;
    attn_params_t p = hash(nb);
    attn_plan_t pl;
    attn_plan_init(&pl, &p, B, T, H, D);
    float *q = random_tensor((size_t)B * T * H * D, 21, 1.0f), *k = random_tensor((size_t)B * T * H * D, 22, 1.0f);
    uint64_t key = rng_key(12, RNG_DOMAIN_ATTN, 3, 0, 9);
    attn_plan_build(&pl, key, q, k);
    int rot_bad = 0, norm_bad = 0, bucket_bad = 0;
    for (int h = 0; h < H; h++)
        for (int c = 0; c < half; c++) {
            double norm2 = 0.0, stored2 = 0.0;
            for (int d = 0; d < D; d++) {
                double g = rng_normal(key, ((uint64_t)h * D + d) * half + c);
                norm2 += g * g;
            }
            for (int d = 0; d < D; d++) {
                double expect = rng_normal(key, ((uint64_t)h * D + d) * half + c) / sqrt(norm2);
                double got = pl.rotations[((size_t)h * D + d) * half + c];
                rot_bad += fabs(got - expect) > 1e-7;
                stored2 += got * got;
            }
            norm_bad += fabs(sqrt(stored2) - 1.0) > 1e-6;
        }
    for (int side = 0; side < 2; side++) {
        const float *x = side == 0 ? q : k;
        const int32_t *buckets = side == 0 ? pl.bucket_q : pl.bucket_k;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int h = 0; h < H; h++)
                    bucket_bad += buckets[((size_t)b * H + h) * T + t] !=
                                  expected_bucket(x + (((size_t)b * T + t) * H + h) * D, &pl, h);
    }
    CHECK(rot_bad == 0, "%d rotation entries differ from the normalised rng_normal draws (tol 1e-7)", rot_bad);
    CHECK(norm_bad == 0, "%d rotation columns are not unit length (tol 1e-6)", norm_bad);
    CHECK(bucket_bad == 0, "%d buckets differ from argmax over [x.R, -x.R]", bucket_bad);
    attn_plan_free(&pl);
    free(q), free(k);
}

/* hash_center: (1) the formula, recomputed here (row minus the double mean of rows 0..t, summed
 * in attention.h's blocks, rounded to float, then argmax over [c.R, -c.R]); (2) rows sharing a
 * large common direction (as trained queries do) fall in one bucket without it and spread with
 * it; (3) causal: changing rows after t0 changes no bucket at or before t0 (and does change
 * later ones). */
static int largest_bucket_share_pct(const int32_t *buckets, int T, int nb, int *used) {
    int count[ATTN_MAX_BUCKETS] = {0}, most = 0;
    *used = 0;
    for (int t = 0; t < T; t++) count[buckets[t]]++;
    for (int g = 0; g < nb; g++) {
        most = count[g] > most ? count[g] : most;
        *used += count[g] > 0;
    }
    return 100 * most / T;
}

static void test_hash_center(void) {
    const int B = 1, T = 301, H = 2, D = 16, nb = 8;
    const size_t n = (size_t)B * T * H * D;
    /* x = mu_h + 0.05 noise: a common direction per head, as in a trained model */
    float *mu = random_tensor((size_t)H * D, 31, 1.0f), *x = random_tensor(n, 32, 0.05f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++) x[((size_t)t * H + h) * D + d] += mu[h * D + d];
    attn_params_t plain = hash(nb), centred = hash(nb);
    centred.hash_center = 1;
    attn_plan_t pp, pc;
    attn_plan_init(&pp, &plain, B, T, H, D);
    attn_plan_init(&pc, &centred, B, T, H, D);
    uint64_t key = rng_key(4, RNG_DOMAIN_ATTN, 2, 1, 0);
    attn_plan_build(&pp, key, x, NULL);
    attn_plan_build(&pc, key, x, NULL);
    int bad = 0;
    for (int h = 0; h < H; h++) {
        double start[16] = {0}, sum[16];
        for (int t = 0; t < T; t++) {
            float c[16];
            if (t % ATTN_CENTRE_CHUNK == 0) /* the blocked sum of attention.h */
                for (int d = 0; d < D; d++) {
                    if (t > 0) {
                        double total = 0.0;
                        for (int u = t - ATTN_CENTRE_CHUNK; u < t; u++) total += x[((size_t)u * H + h) * D + d];
                        start[d] += total;
                    }
                    sum[d] = start[d];
                }
            for (int d = 0; d < D; d++) {
                sum[d] += x[((size_t)t * H + h) * D + d];
                c[d] = (float)(x[((size_t)t * H + h) * D + d] - sum[d] / (t + 1));
            }
            const int best = expected_bucket(c, &pc, h);
            bad += pc.bucket_q[(size_t)h * T + t] != best || pc.bucket_k[(size_t)h * T + t] != best;
        }
    }
    CHECK(bad == 0, "hash_center: %d buckets differ from the running-mean formula", bad);
    for (int h = 0; h < H; h++) {
        int used_p, used_c;
        int share_p = largest_bucket_share_pct(pp.bucket_q + (size_t)h * T, T, nb, &used_p);
        int share_c = largest_bucket_share_pct(pc.bucket_q + (size_t)h * T, T, nb, &used_c);
        printf("hash_center, head %d: largest bucket %d%% of rows plain, %d%% centred (%d of %d used)\n", h, share_p,
               share_c, used_c, nb);
        CHECK(share_p >= 75, "head %d: rows around a common direction should share a bucket without "
              "centring (largest bucket %d%%)", h, share_p);
        CHECK(share_c <= 40 && used_c >= nb / 2, "head %d: centred buckets should spread (largest %d%%, %d used)",
              h, share_c, used_c);
    }
    /* causality */
    const int t0 = 150;
    float *y = xmalloc(n * sizeof(float), "test tensor");
    memcpy(y, x, n * sizeof(float));
    for (size_t i = (size_t)(t0 + 1) * H * D; i < n; i++) y[i] = -3.0f * y[i] + 0.5f;
    attn_plan_t py;
    attn_plan_init(&py, &centred, B, T, H, D);
    attn_plan_build(&py, key, y, NULL);
    int past_changed = 0, future_changed = 0;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            int changed = py.bucket_q[(size_t)h * T + t] != pc.bucket_q[(size_t)h * T + t];
            if (t <= t0) past_changed += changed;
            else future_changed += changed;
        }
    CHECK(past_changed == 0, "hash_center leaks: %d buckets at or before t0 moved when later rows changed",
          past_changed);
    CHECK(future_changed > 0, "hash_center: changing rows after t0 moved none of their buckets");
    attn_plan_free(&pp);
    attn_plan_free(&pc);
    attn_plan_free(&py);
    free(mu), free(x), free(y);
}

/* Ties go to the first maximum: x = 0 gives all-zero projections, so bucket 0. */
static void test_hash_ties(void) {
    const int T = 3, H = 2, D = 8;
    attn_params_t p = hash(16);
    attn_plan_t pl;
    attn_plan_init(&pl, &p, 1, T, H, D);
    float *x = xcalloc((size_t)T * H * D, sizeof(float), "zero rows");
    attn_plan_build(&pl, 77, x, NULL);
    int bad = 0;
    for (size_t n = 0; n < plan_rows(&pl); n++) bad += pl.bucket_q[n] != 0 || pl.bucket_k[n] != 0;
    CHECK(bad == 0, "all-tied projections must pick bucket 0 (first maximum), %d rows differ", bad);
    attn_plan_free(&pl);
    free(x);
}

/* Number of rows at which two plans' masks or buckets differ. */
static size_t plan_difference(const attn_plan_t *a, const attn_plan_t *b) {
    size_t diff = 0;
    for (size_t n = 0; n < plan_rows(a); n++) {
        if (a->p.mode == ATTN_QK_SPARSE) diff += a->keep_q[n] != b->keep_q[n] || a->keep_k[n] != b->keep_k[n];
        if (a->p.mode == ATTN_HASH_SPARSE) diff += a->bucket_q[n] != b->bucket_q[n] || a->bucket_k[n] != b->bucket_k[n];
    }
    return diff;
}

static void test_determinism_and_key_sensitivity(void) {
    const int B = 2, T = 50, H = 3, D = 16;
    float *q = random_tensor((size_t)B * T * H * D, 31, 1.0f), *k = random_tensor((size_t)B * T * H * D, 32, 1.0f);
    const attn_params_t params[] = {qk(0.5f), hash(8)};
    for (int m = 0; m < 2; m++) {
        const char *name = attn_mode_name(params[m].mode);
        /* keys[0] is the reference; the others change the seed, step, layer, micro-step. */
        const uint64_t keys[] = {rng_key(1, RNG_DOMAIN_ATTN, 10, 4, 2), rng_key(2, RNG_DOMAIN_ATTN, 10, 4, 2),
                                 rng_key(1, RNG_DOMAIN_ATTN, 11, 4, 2), rng_key(1, RNG_DOMAIN_ATTN, 10, 5, 2),
                                 rng_key(1, RNG_DOMAIN_ATTN, 10, 4, 3)};
        const char *changed[] = {"", "seed", "step", "layer", "micro_step"};
        attn_plan_t ref, again;
        attn_plan_init(&ref, &params[m], B, T, H, D);
        attn_plan_init(&again, &params[m], B, T, H, D);
        attn_plan_build(&ref, keys[0], q, k);
        attn_plan_build(&again, keys[0], q, k);
        CHECK(plan_difference(&ref, &again) == 0, "%s: same key must give the same plan", name);
        if (ref.rotations)
            CHECK(memcmp(ref.rotations, again.rotations, (size_t)H * D * 4 * sizeof(float)) == 0,
                  "%s: same key must give the same rotations", name);
        for (int c = 1; c < 5; c++) {
            attn_plan_build(&again, keys[c], q, k);
            size_t diff = plan_difference(&ref, &again);
            CHECK(diff > plan_rows(&ref) / 10, "%s: changing the %s changed only %zu of %zu rows", name, changed[c],
                  diff, plan_rows(&ref));
        }
        /* Rebuilding a used plan under the first key restores it exactly (nothing carried over). */
        attn_plan_build(&again, keys[0], q, k);
        CHECK(plan_difference(&ref, &again) == 0, "%s: rebuilding under the same key must restore the plan", name);
        attn_plan_free(&ref), attn_plan_free(&again);
    }
    free(q), free(k);
}

/* Drop fraction within 4 sigma of p over many rows, for queries, keys and both together
 * (query and key masks are independent draws). */
static void test_drop_statistics(void) {
    const int B = 4, T = 1000, H = 5, D = 8;
    const float probs[] = {0.1f, 0.3f, 0.5f, 0.7f};
    for (int i = 0; i < 4; i++) {
        attn_params_t p = qk(probs[i]);
        attn_plan_t pl;
        attn_plan_init(&pl, &p, B, T, H, D);
        attn_plan_build(&pl, rng_key(5, RNG_DOMAIN_ATTN, i, 0, 0), NULL, NULL);
        size_t n = plan_rows(&pl), dq = 0, dk = 0, both = 0;
        for (size_t r = 0; r < n; r++) {
            dq += !pl.keep_q[r];
            dk += !pl.keep_k[r];
            both += !pl.keep_q[r] && !pl.keep_k[r];
        }
        double pr = probs[i], sigma = sqrt(pr * (1 - pr) / n), sigma2 = sqrt(pr * pr * (1 - pr * pr) / n);
        CHECK(fabs((double)dq / n - pr) < 4 * sigma, "drop %.1f: query drop fraction %.4f", pr, (double)dq / n);
        CHECK(fabs((double)dk / n - pr) < 4 * sigma, "drop %.1f: key drop fraction %.4f", pr, (double)dk / n);
        CHECK(fabs((double)both / n - pr * pr) < 4 * sigma2, "drop %.1f: both-dropped fraction %.4f, expected %.4f",
              pr, (double)both / n, pr * pr);
        attn_plan_free(&pl);
    }
    /* The ends are exact: nothing dropped at 0, everything at 1. */
    for (int end = 0; end <= 1; end++) {
        attn_params_t p = qk((float)end);
        attn_plan_t pl;
        attn_plan_init(&pl, &p, 2, 300, 3, 8);
        attn_plan_build(&pl, 99, NULL, NULL);
        size_t kept = 0;
        for (size_t r = 0; r < plan_rows(&pl); r++) kept += pl.keep_q[r] + pl.keep_k[r];
        CHECK(kept == (end ? 0 : 2 * plan_rows(&pl)), "drop %d: %zu rows kept", end, kept);
        attn_plan_free(&pl);
    }
}

/* Buckets lie in [0, nb), every bucket is used per head, none takes far more than its share. */
static void test_bucket_balance(void) {
    const int B = 2, T = 1500, H = 4, D = 64;
    float *q = random_tensor((size_t)B * T * H * D, 41, 1.0f);
    const int nbs[] = {2, 8, 16, 64};
    for (int i = 0; i < 4; i++) {
        const int nb = nbs[i];
        attn_params_t p = hash(nb);
        attn_plan_t pl;
        attn_plan_init(&pl, &p, B, T, H, D);
        attn_plan_build(&pl, rng_key(6, RNG_DOMAIN_ATTN, i, 1, 0), q, NULL);
        int out_of_range = 0, unused = 0;
        double worst_share = 0.0;
        for (int h = 0; h < H; h++) {
            int count[ATTN_MAX_BUCKETS] = {0};
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    int32_t bucket = pl.bucket_q[((size_t)b * H + h) * T + t];
                    if (bucket < 0 || bucket >= nb) out_of_range++;
                    else count[bucket]++;
                }
            for (int c = 0; c < nb; c++) {
                unused += count[c] == 0;
                worst_share = fmax(worst_share, (double)count[c] * nb / (B * T));
            }
        }
        CHECK(out_of_range == 0, "nb %d: %d buckets outside [0, nb)", nb, out_of_range);
        CHECK(unused == 0, "nb %d: %d (head, bucket) pairs never used over %d rows per head", nb, unused, B * T);
        CHECK(worst_share < 2.0, "nb %d: a bucket holds %.2fx its fair share", nb, worst_share);
        printf("nb %2d: largest bucket %.2fx the mean (per head, %d rows)\n", nb, worst_share, B * T);
        attn_plan_free(&pl);
    }
    free(q);
}

/* Positive scaling of q leaves every bucket unchanged; shared keys copy the query buckets and
 * agree with passing k = q explicitly; nb = 1 puts everything in bucket 0 without rotations. */
static void test_hash_invariances(void) {
    const int B = 2, T = 40, H = 3, D = 16;
    const size_t n = (size_t)B * T * H * D;
    float *q = random_tensor(n, 51, 1.0f), *scaled = xmalloc(n * sizeof(float), "scaled q");
    attn_params_t p = hash(16);
    attn_plan_t ref, other;
    attn_plan_init(&ref, &p, B, T, H, D);
    attn_plan_init(&other, &p, B, T, H, D);
    uint64_t key = rng_key(7, RNG_DOMAIN_ATTN, 1, 1, 1);
    attn_plan_build(&ref, key, q, NULL);
    const float factors[] = {2.0f, 0.125f, 3.0f, 0.37f, 1000.0f};
    for (int f = 0; f < 5; f++) {
        for (size_t i = 0; i < n; i++) scaled[i] = q[i] * factors[f];
        attn_plan_build(&other, key, scaled, NULL);
        CHECK(plan_difference(&ref, &other) == 0, "scaling q by %g changed %zu buckets", factors[f],
              plan_difference(&ref, &other));
    }
    int shared_bad = memcmp(ref.bucket_q, ref.bucket_k, plan_rows(&ref) * sizeof(int32_t)) != 0;
    CHECK(!shared_bad, "k == NULL: bucket_k must equal bucket_q");
    attn_plan_build(&other, key, q, q);
    CHECK(plan_difference(&ref, &other) == 0, "k == q must give the same buckets as k == NULL");
    /* Negating x maps bucket c to c + nb/2 (mod nb): the two halves of [x.R, -x.R]. */
    for (size_t i = 0; i < n; i++) scaled[i] = -q[i];
    attn_plan_build(&other, key, scaled, NULL);
    int neg_bad = 0;
    for (size_t r = 0; r < plan_rows(&ref); r++) neg_bad += other.bucket_q[r] != (ref.bucket_q[r] + 8) % 16;
    CHECK(neg_bad == 0, "negating q must move bucket c to (c + nb/2) mod nb, %d rows differ", neg_bad);
    attn_plan_free(&ref), attn_plan_free(&other);

    attn_params_t one = hash(1);
    attn_plan_init(&ref, &one, B, T, H, D);
    attn_plan_build(&ref, key, q, NULL);
    int bad = ref.rotations != NULL;
    for (size_t r = 0; r < plan_rows(&ref); r++) bad += ref.bucket_q[r] != 0 || ref.bucket_k[r] != 0;
    CHECK(bad == 0, "nb 1: every row must be in bucket 0, with no rotations");
    attn_plan_free(&ref);
    free(q), free(scaled);
}

/* Invalid parameters end the process with status 2 (checked in a child process). */
static int init_exit_status(attn_params_t p, int B, int T, int H, int D) {
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(99);
        attn_plan_t pl;
        attn_plan_init(&pl, &p, B, T, H, D);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_parameter_validation(void) {
    CHECK(init_exit_status(hash(3), 1, 8, 1, 8) == EXIT_USAGE, "n_buckets 3 (odd) must be rejected");
    CHECK(init_exit_status(hash(66), 1, 8, 1, 8) == EXIT_USAGE, "n_buckets 66 must be rejected");
    CHECK(init_exit_status(hash(0), 1, 8, 1, 8) == EXIT_USAGE, "n_buckets 0 must be rejected");
    CHECK(init_exit_status(qk(-0.1f), 1, 8, 1, 8) == EXIT_USAGE, "drop_prob -0.1 must be rejected");
    CHECK(init_exit_status(qk(1.5f), 1, 8, 1, 8) == EXIT_USAGE, "drop_prob 1.5 must be rejected");
    CHECK(init_exit_status(qk(NAN), 1, 8, 1, 8) == EXIT_USAGE, "drop_prob NaN must be rejected");
    CHECK(init_exit_status(hash(8), 1, 0, 1, 8) == EXIT_USAGE, "T = 0 must be rejected");
    CHECK(init_exit_status(hash(64), 1, 8, 1, 8) == 0, "n_buckets 64 must be accepted");
    CHECK(init_exit_status(hash(1), 1, 8, 1, 8) == 0, "n_buckets 1 must be accepted");
}

/* The row sort of plan_cpu.h: a valid permutation, grouped, stable, with consistent group
 * starts and position sentinels, equal to a plain insertion sort by (group, position). */
static void check_sorted_rows(const attn_plan_t *pl, const char *name) {
    const int T = pl->T, n_groups = attn_plan_n_groups(pl);
    int32_t *order = xmalloc((size_t)T * sizeof(int32_t), "order"), *pos = xmalloc((size_t)T * sizeof(int32_t), "pos");
    int32_t *expect = xmalloc((size_t)T * sizeof(int32_t), "expected order");
    char *seen = xmalloc((size_t)T, "seen");
    int32_t group_start[ATTN_MAX_BUCKETS + 1];
    int perm_bad = 0, order_bad = 0, start_bad = 0, pos_bad = 0;
    for (int which = 0; which < 2; which++)
        for (int b = 0; b < pl->B; b++)
            for (int h = 0; h < pl->H; h++) {
                attn_plan_sort_rows(pl, (attn_rows_t)which, b, h, order, pos, group_start);
                memset(seen, 0, (size_t)T);
                for (int r = 0; r < T; r++) {
                    if (order[r] < 0 || order[r] >= T || seen[order[r]]) perm_bad++;
                    else seen[order[r]] = 1;
                }
                /* Insertion sort by (group, original position): the definition of stable. */
                for (int t = 0; t < T; t++) {
                    int g = attn_plan_row_group(pl, (attn_rows_t)which, b, h, t), r = t;
                    while (r > 0 && attn_plan_row_group(pl, (attn_rows_t)which, b, h, expect[r - 1]) > g) {
                        expect[r] = expect[r - 1];
                        r--;
                    }
                    expect[r] = t;
                }
                order_bad += memcmp(order, expect, (size_t)T * sizeof(int32_t)) != 0;
                start_bad += group_start[0] != 0 || group_start[n_groups] != T;
                for (int g = 0; g < n_groups; g++)
                    for (int r = group_start[g]; r < group_start[g + 1]; r++)
                        start_bad += r < 0 || r >= T || attn_plan_row_group(pl, (attn_rows_t)which, b, h, order[r]) != g;
                for (int r = 0; r < T; r++) {
                    int dropped = pl->p.mode == ATTN_QK_SPARSE && r >= group_start[1];
                    int32_t sentinel = which == ATTN_ROWS_QUERY ? ATTN_POS_DROPPED_QUERY : ATTN_POS_DROPPED_KEY;
                    pos_bad += pos[r] != (dropped ? sentinel : order[r]);
                }
            }
    CHECK(perm_bad == 0, "%s: sort output is not a permutation (%d bad entries)", name, perm_bad);
    CHECK(order_bad == 0, "%s: %d (b, h, side) orders differ from the stable sort by group", name, order_bad);
    CHECK(start_bad == 0, "%s: %d inconsistent group starts", name, start_bad);
    CHECK(pos_bad == 0, "%s: %d sorted positions / sentinels wrong", name, pos_bad);
    free(order), free(pos), free(expect), free(seen);
}

static void test_row_sort(void) {
    const int B = 2, T = 77, H = 3, D = 16;
    float *q = random_tensor((size_t)B * T * H * D, 61, 1.0f), *k = random_tensor((size_t)B * T * H * D, 62, 1.0f);
    const attn_params_t params[] = {hash(2), hash(8), hash(64), qk(0.3f), qk(0.7f), qk(1.0f),
                                    {.mode = ATTN_DENSE, .n_buckets = 1}};
    const char *names[] = {"sort hash nb 2", "sort hash nb 8", "sort hash nb 64", "sort qk 0.3",
                           "sort qk 0.7", "sort qk 1.0", "sort dense"};
    for (int i = 0; i < 7; i++) {
        attn_plan_t pl;
        attn_plan_init(&pl, &params[i], B, T, H, D);
        attn_plan_build(&pl, rng_key(8, RNG_DOMAIN_ATTN, i, 0, 0), q, k);
        check_sorted_rows(&pl, names[i]);
        attn_plan_free(&pl);
    }
    /* Dense is the identity; qk with one kept row out of order in a tiny hand-made plan. */
    attn_params_t p = qk(0.5f);
    attn_plan_t pl;
    attn_plan_init(&pl, &p, 1, 5, 1, 8);
    const uint8_t keep[5] = {0, 1, 0, 1, 1};
    memcpy(pl.keep_q, keep, 5);
    memcpy(pl.keep_k, keep, 5);
    int32_t order[5], pos[5], starts[3];
    attn_plan_sort_rows(&pl, ATTN_ROWS_KEY, 0, 0, order, pos, starts);
    const int32_t want_order[5] = {1, 3, 4, 0, 2};
    const int32_t want_pos[5] = {1, 3, 4, INT32_MAX, INT32_MAX};
    CHECK(memcmp(order, want_order, sizeof order) == 0 && memcmp(pos, want_pos, sizeof pos) == 0 &&
              starts[0] == 0 && starts[1] == 3 && starts[2] == 5,
          "qk keys {0,1,0,1,1}: expected order 1 3 4 0 2, got %d %d %d %d %d", order[0], order[1], order[2],
          order[3], order[4]);
    attn_plan_sort_rows(&pl, ATTN_ROWS_QUERY, 0, 0, order, NULL, NULL);
    CHECK(memcmp(order, want_order, sizeof order) == 0, "qk queries: pos/group_start NULL must be allowed");
    attn_plan_free(&pl);
    free(q), free(k);
}

int main(void) {
    test_mode_names();
    test_keep_mask_formula();
    test_hash_formula();
    test_hash_center();
    test_hash_ties();
    test_determinism_and_key_sensitivity();
    test_drop_statistics();
    test_bucket_balance();
    test_hash_invariances();
    test_parameter_validation();
    test_row_sort();
    return test_summary();
}
