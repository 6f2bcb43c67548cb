/* CPU reference attention: forward against an independent naive formulation in double, backward
 * against central finite differences (in double) of that formulation, and the edge cases of the
 * semantics (rows with no allowed key, all dropped, modes that must reduce to dense).
 *
 * Tolerances (stated once, used everywhere below):
 *   forward vs naive double:   |a - b| <= 2e-6 + 2e-5 |b|   (fp32 outputs of a double-accumulated
 *                                                            reference, |out| <~ 3)
 *   backward vs finite diff:   |g - fd| <= 2e-6 + 2e-4 |fd|  (central differences, eps = 1e-3,
 *                                                            truncation ~ eps^2 = 1e-6)
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "attention/attention.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"

#define FWD_ATOL 2e-6
#define FWD_RTOL 2e-5
#define FD_EPS 1e-3
#define FD_ATOL 2e-6
#define FD_RTOL 2e-4
#define FD_SAMPLES 24 /* coordinates checked per tensor (q, k, v) per case */

typedef struct {
    int B, T, H, D;
} shape_t;

static size_t numel(shape_t s) { return (size_t)s.B * s.T * s.H * s.D; }

static size_t at(shape_t s, int b, int t, int h, int d) {
    return (((size_t)b * s.T + t) * s.H + h) * s.D + d;
}

/* Normal entries times `scale`: random, awkward, and never all zero. */
static float *random_tensor(size_t n, uint64_t key, float scale) {
    float *x = xmalloc(n * sizeof(float), "test tensor");
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(key, i);
    return x;
}

static double *to_double(const float *x, size_t n) {
    double *y = xmalloc(n * sizeof(double), "test tensor (double)");
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* The mask written from the header's table directly on the plan's arrays, independently of
 * attn_allowed. */
static int reference_mask(const attn_plan_t *pl, int b, int h, int i, int j) {
    int causal = pl->p.exclude_self ? j < i : j <= i;
    size_t row0 = ((size_t)b * pl->H + h) * pl->T;
    if (pl->p.mode == ATTN_QK_SPARSE) return causal && pl->keep_q[row0 + i] && pl->keep_k[row0 + j];
    if (pl->p.mode == ATTN_HASH_SPARSE) return causal && pl->bucket_q[row0 + i] == pl->bucket_k[row0 + j];
    return causal;
}

/* Naive attention of head (b, h) in double: the full T x T score matrix with -inf at masked
 * entries, then a row softmax over all T columns. Rows whose maximum is -inf are empty.
 * out_h: [T][D], lse_h: [T], scores: scratch [T][T]. */
static void naive_head(const attn_plan_t *pl, shape_t s, const double *q, const double *k,
                       const double *v, int b, int h, double *out_h, double *lse_h, double *scores) {
    const double scale = 1.0 / sqrt((double)s.D);
    for (int i = 0; i < s.T; i++)
        for (int j = 0; j < s.T; j++) {
            double dot = 0.0;
            for (int d = 0; d < s.D; d++) dot += q[at(s, b, i, h, d)] * k[at(s, b, j, h, d)];
            scores[(size_t)i * s.T + j] = reference_mask(pl, b, h, i, j) ? dot * scale : -INFINITY;
        }
    for (int i = 0; i < s.T; i++) {
        double *row = scores + (size_t)i * s.T;
        double m = -INFINITY;
        for (int j = 0; j < s.T; j++) m = fmax(m, row[j]);
        for (int d = 0; d < s.D; d++) out_h[(size_t)i * s.D + d] = 0.0;
        if (m == -INFINITY) {
            lse_h[i] = -INFINITY;
            continue;
        }
        double z = 0.0;
        for (int j = 0; j < s.T; j++) z += exp(row[j] - m);
        for (int j = 0; j < s.T; j++) {
            double p = exp(row[j] - m) / z;
            for (int d = 0; d < s.D; d++) out_h[(size_t)i * s.D + d] += p * v[at(s, b, j, h, d)];
        }
        lse_h[i] = m + log(z);
    }
}

/* sum_{t,d} out[b,t,h,d] * W[b,t,h,d] over head (b, h): the loss whose gradient is checked. */
static double head_loss(const attn_plan_t *pl, shape_t s, const double *q, const double *k,
                        const double *v, const float *w, int b, int h, double *out_h,
                        double *lse_h, double *scores) {
    naive_head(pl, s, q, k, v, b, h, out_h, lse_h, scores);
    double loss = 0.0;
    for (int t = 0; t < s.T; t++)
        for (int d = 0; d < s.D; d++) loss += out_h[(size_t)t * s.D + d] * w[at(s, b, t, h, d)];
    return loss;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

typedef struct {
    shape_t s;
    attn_plan_t plan;
    float *q, *k, *v, *w; /* w is both the loss weight and dout */
    float *out, *lse, *dq, *dk, *dv;
} run_t;

/* Random inputs, plan built once under a fixed key, forward and backward (dout = w). */
static void run_case(run_t *r, attn_params_t p, shape_t s, int shared_keys, uint64_t seed) {
    r->s = s;
    size_t n = numel(s);
    r->q = random_tensor(n, rng_key(seed, 100, 0, 0, 0), 1.5f);
    r->k = random_tensor(n, rng_key(seed, 100, 1, 0, 0), 1.5f);
    r->v = random_tensor(n, rng_key(seed, 100, 2, 0, 0), 1.0f);
    r->w = random_tensor(n, rng_key(seed, 100, 3, 0, 0), 1.0f);
    attn_plan_init(&r->plan, &p, s.B, s.T, s.H, s.D);
    attn_plan_build(&r->plan, rng_key(seed, RNG_DOMAIN_ATTN, 7, 3, 1), r->q, shared_keys ? NULL : r->k);
    r->out = xmalloc(n * sizeof(float), "out");
    r->lse = xmalloc((size_t)s.B * s.H * s.T * sizeof(float), "lse");
    r->dq = xmalloc(n * sizeof(float), "dq");
    r->dk = xmalloc(n * sizeof(float), "dk");
    r->dv = xmalloc(n * sizeof(float), "dv");
    /* NaN garbage (all bits set) in every output: the reference must overwrite, not add. */
    memset(r->out, 0xff, n * sizeof(float));
    memset(r->lse, 0xff, (size_t)s.B * s.H * s.T * sizeof(float));
    memset(r->dq, 0xff, n * sizeof(float));
    memset(r->dk, 0xff, n * sizeof(float));
    memset(r->dv, 0xff, n * sizeof(float));
    attn_cpu_forward(&r->plan, r->q, r->k, r->v, r->out, r->lse);
    attn_cpu_backward(&r->plan, r->q, r->k, r->v, r->out, r->lse, r->w, r->dq, r->dk, r->dv);
}

static void free_run(run_t *r) {
    attn_plan_free(&r->plan);
    free(r->q), free(r->k), free(r->v), free(r->w);
    free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv);
}

static double max_fd_error_seen; /* worst |g - fd| / (FD_ATOL + FD_RTOL |fd|), for the log */

/* Everything that must hold for one configuration: the predicate, the forward against the
 * naive formulation, empty rows, and the gradients against finite differences. */
static void check_case(const char *name, attn_params_t p, shape_t s, int shared_keys, uint64_t seed) {
    run_t r;
    run_case(&r, p, s, shared_keys, seed);
    const attn_plan_t *pl = &r.plan;
    size_t n = numel(s);
    double *q = to_double(r.q, n), *k = to_double(r.k, n), *v = to_double(r.v, n);
    double *out_h = xmalloc((size_t)s.T * s.D * sizeof(double), "naive out");
    double *lse_h = xmalloc((size_t)s.T * sizeof(double), "naive lse");
    double *scores = xmalloc((size_t)s.T * s.T * sizeof(double), "naive scores");

    int mask_mismatch = 0, fwd_bad = 0, empty_rows = 0, empty_bad = 0;
    int key_unused_bad = 0;
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.H; h++) {
            for (int i = 0; i < s.T; i++)
                for (int j = 0; j < s.T; j++)
                    mask_mismatch += !attn_allowed(pl, b, h, i, j) != !reference_mask(pl, b, h, i, j);
            naive_head(pl, s, q, k, v, b, h, out_h, lse_h, scores);
            for (int i = 0; i < s.T; i++) {
                float lse = r.lse[((size_t)b * s.H + h) * s.T + i];
                if (lse_h[i] == -INFINITY) {
                    empty_rows++;
                    empty_bad += lse != -INFINITY;
                    for (int d = 0; d < s.D; d++) {
                        empty_bad += r.out[at(s, b, i, h, d)] != 0.0f;
                        empty_bad += r.dq[at(s, b, i, h, d)] != 0.0f;
                    }
                    continue;
                }
                fwd_bad += !test_close(lse, lse_h[i], FWD_ATOL, FWD_RTOL);
                for (int d = 0; d < s.D; d++)
                    fwd_bad += !test_close(r.out[at(s, b, i, h, d)], out_h[(size_t)i * s.D + d], FWD_ATOL, FWD_RTOL);
            }
            /* A key that no query may attend to has exactly zero gradients. */
            for (int j = 0; j < s.T; j++) {
                int used = 0;
                for (int i = 0; i < s.T; i++) used |= reference_mask(pl, b, h, i, j);
                if (used) continue;
                for (int d = 0; d < s.D; d++)
                    key_unused_bad += r.dk[at(s, b, j, h, d)] != 0.0f || r.dv[at(s, b, j, h, d)] != 0.0f;
            }
        }
    CHECK(mask_mismatch == 0, "%s: attn_allowed differs from the header's mask at %d pairs", name, mask_mismatch);
    CHECK(fwd_bad == 0, "%s: %d forward values differ from the naive double formulation", name, fwd_bad);
    CHECK(empty_bad == 0, "%s: %d values of rows without allowed keys are not zero / -inf", name, empty_bad);
    CHECK(key_unused_bad == 0, "%s: %d gradients of never-attended keys are not zero", name, key_unused_bad);
    if (p.exclude_self)
        CHECK(empty_rows >= s.B * s.H, "%s: exclude_self must leave query 0 empty in every head (%d empty rows)",
              name, empty_rows);
    CHECK(all_finite(r.out, n) && all_finite(r.dq, n) && all_finite(r.dk, n) && all_finite(r.dv, n),
          "%s: NaN or inf in out/dq/dk/dv", name);

    /* Central differences of the double loss, the plan held fixed (buckets are not
     * differentiable; the backward must use the forward's plan). */
    int fd_bad = 0;
    double worst = 0.0;
    uint64_t sample_key = rng_key(seed, 101, 0, 0, 0);
    for (int which = 0; which < 3; which++) {
        double *x = which == 0 ? q : which == 1 ? k : v;
        const float *grad = which == 0 ? r.dq : which == 1 ? r.dk : r.dv;
        for (int c = 0; c < FD_SAMPLES; c++) {
            size_t idx = (size_t)(rng_u64(sample_key, (uint64_t)which * FD_SAMPLES + c) % n);
            int d = (int)(idx % s.D), h = (int)(idx / s.D % s.H), b = (int)(idx / ((size_t)s.D * s.H * s.T));
            double saved = x[idx];
            x[idx] = saved + FD_EPS;
            double plus = head_loss(pl, s, q, k, v, r.w, b, h, out_h, lse_h, scores);
            x[idx] = saved - FD_EPS;
            double minus = head_loss(pl, s, q, k, v, r.w, b, h, out_h, lse_h, scores);
            x[idx] = saved;
            double fd = (plus - minus) / (2.0 * FD_EPS);
            double ratio = fabs(grad[idx] - fd) / (FD_ATOL + FD_RTOL * fabs(fd));
            if (ratio > worst) worst = ratio;
            if (!test_close(grad[idx], fd, FD_ATOL, FD_RTOL)) {
                fd_bad++;
                fprintf(stderr, "  %s: d%c[%zu] = %.6g, finite difference %.6g (b=%d h=%d d=%d)\n", name,
                        "qkv"[which], idx, grad[idx], fd, b, h, d);
            }
        }
    }
    CHECK(fd_bad == 0, "%s: %d of %d gradient coordinates disagree with finite differences", name, fd_bad,
          3 * FD_SAMPLES);
    if (worst > max_fd_error_seen) max_fd_error_seen = worst;
    printf("%-34s B=%d T=%-3d H=%d D=%-2d empty rows %4d, worst fd error %.3f of tolerance\n", name, s.B, s.T,
           s.H, s.D, empty_rows, worst);

    free(q), free(k), free(v), free(out_h), free(lse_h), free(scores);
    free_run(&r);
}

static attn_params_t dense(int exclude_self) {
    return (attn_params_t){.mode = ATTN_DENSE, .n_buckets = 1, .drop_prob = 0.0f, .exclude_self = exclude_self};
}
static attn_params_t qk(float drop, int exclude_self) {
    return (attn_params_t){.mode = ATTN_QK_SPARSE, .n_buckets = 1, .drop_prob = drop, .exclude_self = exclude_self};
}
static attn_params_t hash(int nb, int exclude_self) {
    return (attn_params_t){.mode = ATTN_HASH_SPARSE, .n_buckets = nb, .drop_prob = 0.0f, .exclude_self = exclude_self};
}

static void test_all_modes_against_naive_and_fd(void) {
    const shape_t small = {2, 7, 3, 16}, mid = {2, 33, 3, 8}, odd = {2, 33, 1, 16}, large = {2, 100, 3, 8};
    const shape_t single = {2, 1, 3, 8};
    check_case("dense", dense(0), small, 0, 1);
    check_case("dense", dense(0), large, 0, 2);
    check_case("dense T=1", dense(0), single, 0, 3);
    check_case("dense exclude_self", dense(1), mid, 0, 4);
    check_case("dense exclude_self T=1", dense(1), single, 0, 5);
    check_case("qk drop 0.3", qk(0.3f, 0), mid, 0, 6);
    check_case("qk drop 0.7", qk(0.7f, 0), large, 0, 7);
    check_case("qk drop 0.3 exclude_self", qk(0.3f, 1), odd, 0, 8);
    for (int e = 0; e <= 1; e++) {
        char name[64];
        snprintf(name, sizeof name, "hash nb 2%s", e ? " exclude_self" : "");
        check_case(name, hash(2, e), mid, 0, 10 + e);
        snprintf(name, sizeof name, "hash nb 8%s", e ? " exclude_self" : "");
        check_case(name, hash(8, e), large, 0, 12 + e);
        snprintf(name, sizeof name, "hash nb 64%s", e ? " exclude_self" : "");
        check_case(name, hash(64, e), odd, 0, 14 + e);
        snprintf(name, sizeof name, "hash nb 8 shared keys%s", e ? " excl_self" : "");
        check_case(name, hash(8, e), mid, 1, 16 + e);
    }
    check_case("hash nb 1", hash(1, 0), small, 0, 20);
    check_case("hash nb 8 T=1", hash(8, 0), single, 0, 21);
}

/* Bitwise equality of two runs' outputs and gradients. */
static int same_results(const run_t *a, const run_t *b) {
    size_t n = numel(a->s), rows = (size_t)a->s.B * a->s.H * a->s.T;
    return memcmp(a->out, b->out, n * sizeof(float)) == 0 && memcmp(a->lse, b->lse, rows * sizeof(float)) == 0 &&
           memcmp(a->dq, b->dq, n * sizeof(float)) == 0 && memcmp(a->dk, b->dk, n * sizeof(float)) == 0 &&
           memcmp(a->dv, b->dv, n * sizeof(float)) == 0;
}

/* Modes whose masks coincide with dense must give dense's results bit for bit. */
static void test_reductions_to_dense(void) {
    const shape_t s = {2, 33, 3, 16};
    for (int e = 0; e <= 1; e++) {
        run_t ref, drop0, one_bucket;
        run_case(&ref, dense(e), s, 0, 30);
        run_case(&drop0, qk(0.0f, e), s, 0, 30);
        run_case(&one_bucket, hash(1, e), s, 0, 30);
        CHECK(same_results(&drop0, &ref), "qk drop 0.0 (exclude_self=%d) differs from dense", e);
        CHECK(same_results(&one_bucket, &ref), "hash nb 1 (exclude_self=%d) differs from dense", e);
        free_run(&ref), free_run(&drop0), free_run(&one_bucket);
    }
    /* With one key allowed the softmax is exactly 1: dense query 0 returns v_0 itself. */
    run_t r;
    run_case(&r, dense(0), s, 0, 31);
    int bad = 0;
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.H; h++)
            for (int d = 0; d < s.D; d++) bad += r.out[at(s, b, 0, h, d)] != r.v[at(s, b, 0, h, d)];
    CHECK(bad == 0, "dense: query 0 must return v_0 exactly (%d values differ)", bad);
    free_run(&r);
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

static void test_all_dropped(void) {
    const shape_t s = {2, 33, 3, 8};
    for (int e = 0; e <= 1; e++) {
        run_t r;
        run_case(&r, qk(1.0f, e), s, 0, 40);
        size_t n = numel(s), rows = (size_t)s.B * s.H * s.T;
        int lse_bad = 0;
        for (size_t i = 0; i < rows; i++) lse_bad += r.lse[i] != -INFINITY;
        CHECK(all_zero(r.out, n), "qk drop 1.0: output must be all zeros");
        CHECK(lse_bad == 0, "qk drop 1.0: %d lse values are not -inf", lse_bad);
        CHECK(all_zero(r.dq, n) && all_zero(r.dk, n) && all_zero(r.dv, n), "qk drop 1.0: gradients must be zero");
        free_run(&r);
    }
}

/* Hash queries alone in their bucket (no earlier key shares it) must exist at 64 buckets and
 * produce zeros; check_case verifies their values, this makes sure the situation is covered. */
static void test_lonely_hash_queries(void) {
    const shape_t s = {2, 33, 3, 16};
    for (int e = 0; e <= 1; e++) {
        run_t r;
        run_case(&r, hash(64, e), s, 0, 50 + e);
        int lonely = 0, bad = 0;
        for (int b = 0; b < s.B; b++)
            for (int h = 0; h < s.H; h++)
                for (int i = 1; i < s.T; i++) { /* i >= 1: not the trivial exclude_self row */
                    int any = 0;
                    for (int j = 0; j <= i; j++) any |= reference_mask(&r.plan, b, h, i, j);
                    if (any) continue;
                    lonely++;
                    bad += r.lse[((size_t)b * s.H + h) * s.T + i] != -INFINITY;
                    for (int d = 0; d < s.D; d++)
                        bad += r.out[at(s, b, i, h, d)] != 0.0f || r.dq[at(s, b, i, h, d)] != 0.0f;
                }
        CHECK(lonely > 0, "hash nb 64 exclude_self=%d: expected queries alone in their bucket, found none", e);
        CHECK(bad == 0, "hash nb 64 exclude_self=%d: %d values of lonely queries not zero / -inf", e, bad);
        free_run(&r);
    }
}

/* The result must not depend on the number of OpenMP threads (work split by (b, h)). */
static void test_thread_independence(void) {
    const shape_t s = {2, 33, 3, 8};
    run_t a, b;
    omp_set_num_threads(1);
    run_case(&a, hash(8, 1), s, 0, 60);
    omp_set_num_threads(2);
    run_case(&b, hash(8, 1), s, 0, 60);
    CHECK(same_results(&a, &b), "results differ between 1 and 2 threads");
    free_run(&a), free_run(&b);
}

int main(void) {
    test_all_modes_against_naive_and_fd();
    printf("worst finite-difference error over all cases: %.3f of tolerance (atol %g, rtol %g)\n",
           max_fd_error_seen, FD_ATOL, FD_RTOL);
    test_reductions_to_dense();
    test_all_dropped();
    test_lonely_hash_queries();
    test_thread_independence();
    return test_summary();
}
