/* The pluggable attention layer: parameters, the per-call plan, and the CPU reference.
 *
 * Semantics (original positions i = query, j = key, within one (batch, head)):
 *   dense        j <= i
 *   qk_sparse    keep_q[i] && keep_k[j] && j <= i
 *   hash_sparse  bucket_q[i] == bucket_k[j] && j <= i
 *   exclude_self turns j <= i into j < i (any mode).
 * A query with no allowed key (or a dropped query) outputs zeros and has lse = -INFINITY;
 * its gradients are zero. Scores are scaled by 1/sqrt(D).
 *
 * Tensors q, k, v, out, dout, dq, dk, dv are contiguous fp32 [B][T][H][D];
 * lse is [B][H][T] (natural-log sum of exp of the scaled scores over allowed keys).
 *
 * The plan holds what a mode draws at random, for all (b, h), from one counter-based RNG
 * key (runtime/rng.h): key = rng_key(seed, RNG_DOMAIN_ATTN, step, layer, global_micro_step),
 * where global_micro_step numbers the micro-batches of a step across all ranks, so that
 * forward, backward, a resumed run and any world size draw the same plan.
 *   qk_sparse:   keep_q[b][h][t] = rng_u24(key, 2*((b*H+h)*T+t)) >= rng_drop_threshold(p)
 *                keep_k[b][h][t] = rng_u24(key, 2*((b*H+h)*T+t)+1) >= rng_drop_threshold(p)
 *   hash_sparse: R[h][d][c] = rng_normal(key, (h*D+d)*(nb/2)+c), each column c normalised
 *                to unit length over d; bucket(x) = argmax over [x.R, -x.R] (first maximum),
 *                so buckets lie in [0, nb). nb == 1 puts every row in bucket 0 (no R).
 *                With shared keys (k == NULL in attn_plan_build) bucket_k = bucket_q.
 *                hash_center: row t of each (b, h) is hashed as x_t - m_t, m_t the mean of
 *                x_0..x_t of that (b, h) (queries and keys each on their own rows). The rows
 *                of a head share a large common direction once training starts, which puts
 *                most of them in one bucket (docs/RESULTS.md); subtracting the running mean
 *                removes it, and m_t sees no row after t, so no future token moves a bucket.
 *                The sum is blocked so that a GPU can form it in parallel, and both backends
 *                add the same doubles in the same order (C = ATTN_CENTRE_CHUNK, row t in
 *                chunk k = t / C, every sum a left-to-right fold in double):
 *                  total_k = x_kC + ... + x_(kC+C-1)          (a fold from 0.0)
 *                  start_0 = 0, start_(k+1) = start_k + total_k
 *                  S_t     = start_k + x_kC + ... + x_t       (a fold from start_k)
 *                  centred row t = (float)(x_t - S_t / (t + 1))
 */
#ifndef ATTENTION_ATTENTION_H
#define ATTENTION_ATTENTION_H

#include <stdint.h>

typedef enum { ATTN_DENSE = 0, ATTN_QK_SPARSE = 1, ATTN_HASH_SPARSE = 2 } attn_mode_t;

#define ATTN_MAX_BUCKETS 64
#define ATTN_CENTRE_CHUNK 256 /* hash_center: rows per chunk of the blocked running sum */

typedef struct {
    attn_mode_t mode;
    int n_buckets;    /* hash_sparse: 1, or even in [2, 64] */
    float drop_prob;  /* qk_sparse: in [0, 1] */
    int exclude_self; /* strict causality j < i */
    int hash_center;  /* hash_sparse: hash x_t - mean(x_0..x_t) instead of x_t (see above) */
} attn_params_t;

typedef struct {
    int B, T, H, D;
    attn_params_t p;
    int32_t *bucket_q, *bucket_k; /* [B][H][T], hash_sparse only (else NULL) */
    uint8_t *keep_q, *keep_k;     /* [B][H][T], qk_sparse only (else NULL) */
    float *rotations;             /* [H][D][nb/2], hash_sparse with nb > 1 (else NULL) */
} attn_plan_t;

const char *attn_mode_name(attn_mode_t mode);
/* Parses "dense" | "qk_sparse" | "hash_sparse"; returns 0 on success, -1 if unknown. */
int attn_mode_parse(const char *s, attn_mode_t *mode);

/* Allocates the plan's arrays for the given sizes (they are filled by attn_plan_build). */
void attn_plan_init(attn_plan_t *plan, const attn_params_t *p, int B, int T, int H, int D);
void attn_plan_free(attn_plan_t *plan);

/* Draws keep masks (qk_sparse) or rotations and buckets (hash_sparse) under `key`.
 * q, k: [B][T][H][D]; k == NULL means keys share the queries' buckets (shared_qk).
 * Dense: nothing to draw. */
void attn_plan_build(attn_plan_t *plan, uint64_t key, const float *q, const float *k);

/* The one definition of which (query i, key j) pairs interact in (b, h). */
int attn_allowed(const attn_plan_t *plan, int b, int h, int i, int j);

/* Reference forward: out [B][T][H][D], lse [B][H][T]. */
void attn_cpu_forward(const attn_plan_t *plan, const float *q, const float *k, const float *v,
                      float *out, float *lse);

/* Reference backward: overwrites dq, dk, dv (not accumulated). */
void attn_cpu_backward(const attn_plan_t *plan, const float *q, const float *k, const float *v,
                       const float *out, const float *lse, const float *dout,
                       float *dq, float *dk, float *dv);

#endif
