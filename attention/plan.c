/* The attention plan: what each mode draws at random (keep masks, rotations, buckets) and the
 * single predicate attn_allowed that every implementation of attention must agree with.
 * The formulas are fixed by attention/attention.h; the GPU kernels receive these arrays (or
 * recompute the integer parts bit-identically), so nothing here may depend on thread count. */
#include "attention/attention.h"

#include <math.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/rng.h"

const char *attn_mode_name(attn_mode_t mode) {
    switch (mode) {
    case ATTN_DENSE: return "dense";
    case ATTN_QK_SPARSE: return "qk_sparse";
    case ATTN_HASH_SPARSE: return "hash_sparse";
    }
    return "unknown";
}

int attn_mode_parse(const char *s, attn_mode_t *mode) {
    static const attn_mode_t modes[] = {ATTN_DENSE, ATTN_QK_SPARSE, ATTN_HASH_SPARSE};
    if (!s) return -1;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (strcmp(s, attn_mode_name(modes[i])) == 0) {
            *mode = modes[i];
            return 0;
        }
    }
    return -1;
}

/* Parameters normally arrive validated from the config; checking again here turns a wrong
 * call (e.g. from the C API) into a clear message instead of out-of-range buckets. */
static void check_params(const attn_params_t *p, int B, int T, int H, int D) {
    if (B < 1 || T < 1 || H < 1 || D < 1)
        fatal(EXIT_USAGE, "attention plan: sizes must be positive (B=%d T=%d H=%d D=%d)", B, T, H, D);
    switch (p->mode) {
    case ATTN_DENSE: break;
    case ATTN_QK_SPARSE:
        if (!(p->drop_prob >= 0.0f && p->drop_prob <= 1.0f))
            fatal(EXIT_USAGE, "attention.drop_prob must be in [0, 1], got %g", (double)p->drop_prob);
        break;
    case ATTN_HASH_SPARSE:
        if (!(p->n_buckets == 1 ||
              (p->n_buckets >= 2 && p->n_buckets <= ATTN_MAX_BUCKETS && p->n_buckets % 2 == 0)))
            fatal(EXIT_USAGE, "attention.n_buckets must be 1 or even in [2, %d], got %d",
                  ATTN_MAX_BUCKETS, p->n_buckets);
        break;
    default: fatal(EXIT_USAGE, "attention.mode: unknown mode %d", (int)p->mode);
    }
    if (p->hash_center && p->mode != ATTN_HASH_SPARSE)
        fatal(EXIT_USAGE, "attention.hash_center applies to hash_sparse only (mode %s)", attn_mode_name(p->mode));
}

void attn_plan_init(attn_plan_t *plan, const attn_params_t *p, int B, int T, int H, int D) {
    check_params(p, B, T, H, D);
    memset(plan, 0, sizeof *plan);
    plan->B = B;
    plan->T = T;
    plan->H = H;
    plan->D = D;
    plan->p = *p;
    size_t rows = (size_t)B * H * T;
    /* Zeroed so that an unbuilt plan is deterministic (all dropped / all bucket 0). */
    if (p->mode == ATTN_QK_SPARSE) {
        plan->keep_q = xcalloc(rows, sizeof(uint8_t), "attention plan keep_q");
        plan->keep_k = xcalloc(rows, sizeof(uint8_t), "attention plan keep_k");
    } else if (p->mode == ATTN_HASH_SPARSE) {
        plan->bucket_q = xcalloc(rows, sizeof(int32_t), "attention plan bucket_q");
        plan->bucket_k = xcalloc(rows, sizeof(int32_t), "attention plan bucket_k");
        if (p->n_buckets > 1)
            plan->rotations = xcalloc((size_t)H * D * (p->n_buckets / 2), sizeof(float),
                                      "attention plan rotations");
    }
}

void attn_plan_free(attn_plan_t *plan) {
    free(plan->bucket_q);
    free(plan->bucket_k);
    free(plan->keep_q);
    free(plan->keep_k);
    free(plan->rotations);
    memset(plan, 0, sizeof *plan);
}

static void build_keep_masks(attn_plan_t *plan, uint64_t key) {
    uint32_t threshold = rng_drop_threshold((double)plan->p.drop_prob);
    size_t rows = (size_t)plan->B * plan->H * plan->T;
    /* Row n = (b*H + h)*T + t: the array index is the counter of the header's formula. */
    for (size_t n = 0; n < rows; n++) {
        plan->keep_q[n] = rng_u24(key, 2 * (uint64_t)n) >= threshold;
        plan->keep_k[n] = rng_u24(key, 2 * (uint64_t)n + 1) >= threshold;
    }
}

static void build_rotations(attn_plan_t *plan, uint64_t key) {
    const int H = plan->H, D = plan->D, half = plan->p.n_buckets / 2;
    double *column = xmalloc((size_t)D * sizeof(double), "hash rotation column");
    for (int h = 0; h < H; h++) {
        for (int c = 0; c < half; c++) {
            double norm2 = 0.0;
            for (int d = 0; d < D; d++) {
                column[d] = rng_normal(key, ((uint64_t)h * D + d) * half + c);
                norm2 += column[d] * column[d];
            }
            /* A zero column needs D exact-zero normals: impossible for D >= 1 in practice,
             * but guarded so a bucket is never computed from NaN. */
            double inv = norm2 > 0.0 ? 1.0 / sqrt(norm2) : 0.0;
            for (int d = 0; d < D; d++)
                plan->rotations[((size_t)h * D + d) * half + c] = (float)(column[d] * inv);
        }
    }
    free(column);
}

/* argmax over [x.R, -x.R] with the first maximum winning (strict >), dot products in double
 * so that the result does not depend on summation order to fp32 rounding. */
static int32_t hash_bucket(const float *x, const float *rot_h, int D, int half) {
    double proj[ATTN_MAX_BUCKETS / 2];
    for (int c = 0; c < half; c++) {
        proj[c] = 0.0;
        for (int d = 0; d < D; d++) proj[c] += (double)x[d] * (double)rot_h[(size_t)d * half + c];
    }
    /* Candidates in the order [x.R_0 .. x.R_{half-1}, -x.R_0 .. -x.R_{half-1}]. */
    int32_t best = 0;
    double best_value = proj[0];
    for (int n = 1; n < 2 * half; n++) {
        double value = n < half ? proj[n] : -proj[n - half];
        if (value > best_value) {
            best_value = value;
            best = n;
        }
    }
    return best;
}

/* hash_center's chunk starts for one (b, h) (attention.h): start[k*D + d] = the double sum of
 * x_0..x_(kC-1) in channel d, formed as start_(k+1) = start_k + total_k. */
static void centre_chunk_starts(const float *x, int T, int H, int D, double *start) {
    const int C = ATTN_CENTRE_CHUNK, n_chunks = (T + C - 1) / C;
    for (int d = 0; d < D; d++) start[d] = 0.0;
    for (int k = 0; k + 1 < n_chunks; k++)
        for (int d = 0; d < D; d++) {
            double total = 0.0;
            for (int t = k * C; t < (k + 1) * C; t++) total += x[(size_t)t * H * D + d];
            start[(size_t)(k + 1) * D + d] = start[(size_t)k * D + d] + total;
        }
}

/* x: [B][T][H][D]; buckets: [B][H][T]. With hash_center, row t is hashed minus the mean of
 * rows 0..t (the blocked double sums of attention.h; one (b, h) per thread: independent of
 * thread count). */
static void assign_buckets(const attn_plan_t *plan, const float *x, int32_t *buckets) {
    const int B = plan->B, T = plan->T, H = plan->H, D = plan->D, half = plan->p.n_buckets / 2;
    const int center = plan->p.hash_center, C = ATTN_CENTRE_CHUNK;
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *rot_h = plan->rotations + (size_t)h * D * half;
        const float *x_bh = x + ((size_t)b * T * H + h) * D;
        double *start = NULL, *sum = NULL;
        float *centred = NULL;
        if (center) {
            start = xmalloc((size_t)(T + C - 1) / C * D * sizeof(double), "hash centre chunk starts");
            sum = xmalloc((size_t)D * sizeof(double), "hash centre sums");
            centred = xmalloc((size_t)D * sizeof(float), "hash centred row");
            centre_chunk_starts(x_bh, T, H, D, start);
        }
        for (int t = 0; t < T; t++) {
            const float *row = x_bh + (size_t)t * H * D;
            if (center) {
                if (t % C == 0) memcpy(sum, start + (size_t)(t / C) * D, (size_t)D * sizeof(double));
                for (int d = 0; d < D; d++) {
                    sum[d] += row[d];
                    centred[d] = (float)(row[d] - sum[d] / (t + 1));
                }
                row = centred;
            }
            buckets[(size_t)bh * T + t] = hash_bucket(row, rot_h, D, half);
        }
        free(start);
        free(sum);
        free(centred);
    }
}

void attn_plan_build(attn_plan_t *plan, uint64_t key, const float *q, const float *k) {
    size_t rows = (size_t)plan->B * plan->H * plan->T;
    switch (plan->p.mode) {
    case ATTN_DENSE: return;
    case ATTN_QK_SPARSE: build_keep_masks(plan, key); return;
    case ATTN_HASH_SPARSE:
        if (plan->p.n_buckets == 1) {
            memset(plan->bucket_q, 0, rows * sizeof(int32_t));
            memset(plan->bucket_k, 0, rows * sizeof(int32_t));
            return;
        }
        if (!q) fatal(EXIT_RUNTIME, "attn_plan_build: hash_sparse needs the queries (q == NULL)");
        build_rotations(plan, key);
        assign_buckets(plan, q, plan->bucket_q);
        if (k)
            assign_buckets(plan, k, plan->bucket_k);
        else
            memcpy(plan->bucket_k, plan->bucket_q, rows * sizeof(int32_t));
        return;
    }
}

int attn_allowed(const attn_plan_t *plan, int b, int h, int i, int j) {
    if (plan->p.exclude_self ? j >= i : j > i) return 0;
    size_t row0 = ((size_t)b * plan->H + h) * plan->T;
    switch (plan->p.mode) {
    case ATTN_DENSE: return 1;
    case ATTN_QK_SPARSE: return plan->keep_q[row0 + i] && plan->keep_k[row0 + j];
    case ATTN_HASH_SPARSE: return plan->bucket_q[row0 + i] == plan->bucket_k[row0 + j];
    }
    return 0;
}
