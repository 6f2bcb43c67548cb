/* GPU attention plan (attention/plan_cuda.h) against the CPU reference, exactly.
 *
 * For every mode (hash nb in {1, 2, 8, 16, 64} with shared and separate keys, and nb in
 * {2, 16, 64} with hash_center (rows centred by their running mean before hashing), qk drop in
 * {0, 0.3, 0.5, 0.7, 1}, dense), exclude_self on and off, awkward shapes (T = 1, T not a multiple
 * of any tile or of the sort's 1024-row chunks, q and k read from a fused QKV buffer with a
 * padded row stride, head dim 64 and 128) and three tile shapes, it checks element for element
 * (integers: no tolerance):
 *   - keep masks, rotations (bitwise), buckets: the GPU falls back to the CPU's double
 *     arithmetic wherever fp32 could pick another bucket, so NO mismatch is accepted; rows whose
 *     CPU top-two projections lie within the fp32 error bound (the fallback's domain: zero,
 *     duplicated, huge and tiny rows are planted) are counted and printed;
 *   - sorted rows (order, positions with sentinels, groups, group starts), also when the sort
 *     runs on the CPU plan's own groups uploaded to the GPU;
 *   - tile summaries, both list directions, longest-first orders, live count;
 *   - end to end through flash::PlanPolicy (what the sparse kernels will see): walking every
 *     listed tile and counting allowed pairs gives, for every original query and every
 *     original key, attn_allowed's brute-force count, and no tile marked full holds a masked
 *     pair. Device outputs are poisoned before every build, so unwritten entries show.
 * Build: nvcc this file + attention/cuda/plan_cuda.cu, link build/libcore.a -lcudart. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "attention/attention.h"
#include "attention/plan_cpu.h"
#include "attention/plan_cuda.h"
#include "attention/plan_tiles.h"
#include "runtime/error.h"
#include "runtime/rng.h"
}
#include "attention/cuda/plan_policy.cuh"
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"

static const int TILE_SHAPES[][2] = {{128, 64}, {64, 128}, {128, 128}};
static long near_ties_total, hashed_rows_total;

typedef struct {
    char name[64];
    attn_params_t p;
    int shared_keys;
    int B, T, H, D;
    long stride; /* row stride of the fused buffer: q at column 0, k at column H*D */
    int brute;   /* run the O(T^2) end-to-end pair count */
} plan_case_t;

/* Device array -> host copy compared with a host array; returns mismatching elements. */
static long diff_device(const void *dev, const void *host, size_t n, size_t elem) {
    char *copy = (char *)xmalloc(n * elem + 1, "device copy");
    if (n) CUDA_OK(cudaMemcpy(copy, dev, n * elem, cudaMemcpyDeviceToHost));
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(copy + i * elem, (const char *)host + i * elem, elem) != 0;
    free(copy);
    return bad;
}

static void poison(void *dev, size_t bytes) {
    if (dev && bytes) CUDA_OK(cudaMemset(dev, 0xA5, bytes));
}

/* Inputs: N(0,1) rounded to bf16, plus planted rows where fp32 can tie or misjudge. */
static uint16_t *make_inputs(const plan_case_t *c, uint64_t seed) {
    const long rows = (long)c->B * c->T;
    uint16_t *buf = (uint16_t *)xmalloc((size_t)rows * c->stride * 2, "fused input");
    for (long i = 0; i < rows * c->stride; i++) buf[i] = float_to_bf16(rng_normal(seed, (uint64_t)i));
    const int HD = c->H * c->D;
    if (rows >= 8)
        for (int side = 0; side < 2; side++) {
            uint16_t *x = buf + side * HD;
            for (int d = 0; d < HD; d++) {
                x[1 * c->stride + d] = 0;                                              /* exact tie */
                x[3 * c->stride + d] = x[2 * c->stride + d];                           /* duplicate */
                x[4 * c->stride + d] = float_to_bf16(bf16_to_float(x[5 * c->stride + d]) * 1e30f);
                x[6 * c->stride + d] = float_to_bf16(bf16_to_float(x[7 * c->stride + d]) * 1e-30f);
            }
        }
    return buf;
}

/* [B][T][H][D] floats of one side of the fused buffer (the CPU plan's input). */
static float *side_floats(const plan_case_t *c, const uint16_t *buf, int side) {
    const int HD = c->H * c->D;
    float *x = (float *)xmalloc((size_t)c->B * c->T * HD * sizeof(float), "cpu input");
    for (long r = 0; r < (long)c->B * c->T; r++)
        for (int i = 0; i < HD; i++) x[r * HD + i] = bf16_to_float(buf[r * c->stride + side * HD + i]);
    return x;
}

/* Rows whose CPU top-two candidates are closer than the GPU's fp32 error margin. */
static long count_near_ties(const attn_plan_t *pl, const float *x) {
    const int D = pl->D, half = pl->p.n_buckets / 2;
    const double gamma = D * ldexp(1.0, -24) / (1 - D * ldexp(1.0, -24)) + D * ldexp(1.0, -53);
    long near = 0;
    for (long r = 0; r < (long)pl->B * pl->T * pl->H; r++) {
        const float *row = x + r * D;
        const float *rot = pl->rotations + (size_t)(r % pl->H) * D * half;
        double best = -INFINITY, second = -INFINITY, norm2 = 0;
        for (int d = 0; d < D; d++) norm2 += (double)row[d] * row[d];
        for (int n = 0; n < 2 * half; n++) {
            double s = 0;
            for (int d = 0; d < D; d++) s += (double)row[d] * rot[(size_t)d * half + n % half];
            double v = n < half ? s : -s;
            if (v > best) { second = best; best = v; }
            else if (v > second) second = v;
        }
        near += !(best - second > 2.05 * gamma * sqrt(norm2) + D * 3e-45) || norm2 < 1e-30;
    }
    return near;
}

static void compare_rows(const plan_case_t *c, const char *stage, const attn_plan_cuda_t *g,
                         const attn_row_order_t *ref) {
    const size_t n = (size_t)ref->BH * ref->T, ng = (size_t)ref->BH * (ref->n_groups + 1);
    long bad = diff_device(g->rows.order_q, ref->order_q, n, 4) + diff_device(g->rows.order_k, ref->order_k, n, 4);
    CHECK(bad == 0, "%s %s: %ld order mismatches", c->name, stage, bad);
    bad = diff_device(g->rows.pos_q, ref->pos_q, n, 4) + diff_device(g->rows.pos_k, ref->pos_k, n, 4);
    CHECK(bad == 0, "%s %s: %ld position mismatches", c->name, stage, bad);
    bad = diff_device(g->rows.group_q, ref->group_q, n, 4) + diff_device(g->rows.group_k, ref->group_k, n, 4);
    CHECK(bad == 0, "%s %s: %ld group mismatches", c->name, stage, bad);
    bad = diff_device(g->rows.group_start_q, ref->group_start_q, ng, 4) +
          diff_device(g->rows.group_start_k, ref->group_start_k, ng, 4);
    CHECK(bad == 0, "%s %s: %ld group start mismatches", c->name, stage, bad);
}

static void compare_lists(const plan_case_t *c, const char *stage, const attn_tiles_cuda_t *gt,
                          const attn_tile_lists_t *ref) {
    const attn_tile_lists_t *g = &gt->lists;
    const size_t nq = (size_t)ref->BH * ref->n_q_tiles, nk = (size_t)ref->BH * ref->n_k_tiles;
    long bad = diff_device(g->info_q, ref->info_q, nq, sizeof(attn_tile_info_t)) +
               diff_device(g->info_k, ref->info_k, nk, sizeof(attn_tile_info_t));
    CHECK(bad == 0, "%s %s %dx%d: %ld tile summary mismatches", c->name, stage, ref->block_m, ref->block_n, bad);
    bad = diff_device(g->n_key_tiles, ref->n_key_tiles, nq, 4) + diff_device(g->n_query_tiles, ref->n_query_tiles, nk, 4);
    CHECK(bad == 0, "%s %s %dx%d: %ld list length mismatches", c->name, stage, ref->block_m, ref->block_n, bad);
    /* Entries up to each list's length (slots past it are unspecified). */
    for (int dir = 0; dir < 2; dir++) {
        const size_t n_own = dir ? nk : nq, cap = dir ? ref->n_q_tiles : ref->n_k_tiles;
        const int32_t *counts = dir ? ref->n_query_tiles : ref->n_key_tiles;
        const int32_t *want = dir ? ref->query_tiles : ref->key_tiles;
        int32_t *got = (int32_t *)xmalloc(n_own * cap * 4 + 4, "list copy");
        CUDA_OK(cudaMemcpy(got, dir ? g->query_tiles : g->key_tiles, n_own * cap * 4, cudaMemcpyDeviceToHost));
        bad = 0;
        for (size_t i = 0; i < n_own; i++)
            bad += memcmp(got + i * cap, want + i * cap, (size_t)counts[i] * 4) != 0;
        free(got);
        CHECK(bad == 0, "%s %s %dx%d: %ld %s lists differ", c->name, stage, ref->block_m, ref->block_n,
              bad, dir ? "query-tile" : "key-tile");
    }
    bad = diff_device(g->live_tiles, ref->live_tiles, 1, 8);
    CHECK(bad == 0, "%s %s %dx%d: live count differs (CPU %lld)", c->name, stage, ref->block_m,
          ref->block_n, (long long)*ref->live_tiles);
}

/* Walks the listed tiles of one direction as a kernel would; counts allowed pairs per original
 * row of the owning side; counts masked pairs inside tiles marked full. */
__global__ void policy_walk_kernel(flash::PlanPolicy pol, int BM, int BN, int keys_own,
                                   int *count, int *full_violations) {
    const int bh = blockIdx.y, own = blockIdx.x;
    const int q_len = pol.q_len(bh), k_len = pol.k_len(bh);
    const int own_block = keys_own ? BN : BM, other_block = keys_own ? BM : BN;
    const int own_len = keys_own ? k_len : q_len, other_len = keys_own ? q_len : k_len;
    for (int r = own * own_block + threadIdx.x; r < min((own + 1) * own_block, own_len); r += blockDim.x) {
        const flash::PlanPolicy::RowInfo me = keys_own ? pol.k_info(bh, r) : pol.q_info(bh, r);
        int n = 0, violations = 0;
        const int n_tiles = keys_own ? pol.num_query_tiles(bh, own, BM, BN) : pol.num_key_tiles(bh, own, BM, BN);
        for (int i = 0; i < n_tiles; i++) {
            const int other = keys_own ? pol.query_tile(bh, own, i, BM, BN) : pol.key_tile(bh, own, i, BM, BN);
            const bool full = keys_own ? pol.tile_full(bh, other, own, BM, BN) : pol.tile_full(bh, own, other, BM, BN);
            for (int c = other * other_block; c < min((other + 1) * other_block, other_len); c++) {
                const bool ok = keys_own ? pol.allowed(pol.q_info(bh, c), me) : pol.allowed(me, pol.k_info(bh, c));
                n += ok;
                violations += full && !ok;
            }
        }
        count[(long)bh * pol.T + (keys_own ? pol.k_row(bh, r) : pol.q_row(bh, r))] = n;
        if (violations) atomicAdd(full_violations, violations);
    }
}

static void check_policy(const plan_case_t *c, const attn_plan_cuda_t *g, const attn_tiles_cuda_t *gt,
                         const int *want_q, const int *want_k) {
    const attn_tile_lists_t *l = &gt->lists;
    const flash::PlanPolicy pol = flash::make_plan_policy(g->rows, *l);
    const size_t n = (size_t)g->rows.BH * c->T;
    int *count, *violations, host_violations = 0;
    int *got = (int *)xmalloc(n * sizeof(int), "policy counts");
    CUDA_OK(cudaMalloc(&count, n * sizeof(int)));
    CUDA_OK(cudaMalloc(&violations, sizeof(int)));
    for (int keys_own = 0; keys_own < 2; keys_own++) {
        CUDA_OK(cudaMemset(count, 0, n * sizeof(int)));
        CUDA_OK(cudaMemset(violations, 0, sizeof(int)));
        dim3 grid(keys_own ? l->n_k_tiles : l->n_q_tiles, g->rows.BH);
        policy_walk_kernel<<<grid, 128>>>(pol, l->block_m, l->block_n, keys_own, count, violations);
        CUDA_OK(cudaGetLastError());
        CUDA_OK(cudaMemcpy(got, count, n * sizeof(int), cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(&host_violations, violations, sizeof(int), cudaMemcpyDeviceToHost));
        const int *want = keys_own ? want_k : want_q;
        long bad = 0;
        for (size_t i = 0; i < n; i++) bad += got[i] != want[i];
        CHECK(bad == 0, "%s %dx%d: %ld %s rows see another number of allowed pairs through the policy",
              c->name, l->block_m, l->block_n, bad, keys_own ? "key" : "query");
        CHECK(host_violations == 0, "%s %dx%d: %d masked pairs inside tiles marked full", c->name,
              l->block_m, l->block_n, host_violations);
    }
    free(got);
    CUDA_OK(cudaFree(count));
    CUDA_OK(cudaFree(violations));
}

/* What hash_center hashes ([B][T][H][D], in place): each row minus the double mean of its
 * (b, h) rows up to it, the sums blocked as attention/attention.h defines them. */
static void centre_floats(const plan_case_t *c, float *x) {
    const int HD = c->H * c->D, C = ATTN_CENTRE_CHUNK, n_chunks = (c->T + C - 1) / C;
    double *start = (double *)xmalloc((size_t)n_chunks * HD * sizeof(double), "centre starts");
    for (int b = 0; b < c->B; b++) {
        float *xb = x + (size_t)b * c->T * HD;
        for (int i = 0; i < HD; i++) {
            start[i] = 0.0;
            for (int k = 1; k < n_chunks; k++) {
                double total = 0.0;
                for (int u = (k - 1) * C; u < k * C; u++) total += xb[(size_t)u * HD + i];
                start[(size_t)k * HD + i] = start[(size_t)(k - 1) * HD + i] + total;
            }
        }
        for (int i = 0; i < HD; i++) {
            double sum = 0.0;
            for (int t = 0; t < c->T; t++) {
                if (t % C == 0) sum = start[(size_t)(t / C) * HD + i];
                float *v = xb + (size_t)t * HD + i;
                sum += *v;
                *v = (float)(*v - sum / (t + 1));
            }
        }
    }
    free(start);
}

static void run_case(const plan_case_t *c, uint64_t seed) {
    const int HD = c->H * c->D;
    const size_t rows = (size_t)c->B * c->H * c->T;
    uint16_t *buf = make_inputs(c, seed);
    float *q = side_floats(c, buf, 0), *k = side_floats(c, buf, 1);
    const uint64_t key = rng_key(seed, RNG_DOMAIN_ATTN, 7, 3, 1);

    attn_plan_t ref;
    attn_plan_init(&ref, &c->p, c->B, c->T, c->H, c->D);
    attn_plan_build(&ref, key, q, c->shared_keys ? NULL : k);
    attn_row_order_t ref_rows;
    attn_row_order_build(&ref_rows, &ref);

    uint16_t *d_buf;
    CUDA_OK(cudaMalloc(&d_buf, (size_t)c->B * c->T * c->stride * 2));
    CUDA_OK(cudaMemcpy(d_buf, buf, (size_t)c->B * c->T * c->stride * 2, cudaMemcpyHostToDevice));
    attn_plan_cuda_t g;
    attn_plan_cuda_init(&g, &c->p, c->B, c->T, c->H, c->D);
    poison(g.rows.order_q, rows * 4), poison(g.rows.pos_q, rows * 4), poison(g.rows.group_q, rows * 4);
    poison(g.own_order_k, rows * 4), poison(g.own_pos_k, rows * 4), poison(g.own_group_k, rows * 4);
    poison(g.bucket_q, rows * 4), poison(g.own_bucket_k, rows * 4);
    poison(g.keep_q, rows), poison(g.keep_k, rows);
    attn_plan_cuda_build(&g, key, d_buf, c->stride, c->shared_keys ? NULL : d_buf + HD, c->stride, 0);
    CUDA_OK(cudaDeviceSynchronize());

    if (c->p.mode == ATTN_QK_SPARSE) {
        long bad = diff_device(g.keep_q, ref.keep_q, rows, 1) + diff_device(g.keep_k, ref.keep_k, rows, 1);
        CHECK(bad == 0, "%s: %ld keep-mask mismatches", c->name, bad);
    }
    if (c->p.mode == ATTN_HASH_SPARSE) {
        if (c->p.n_buckets > 1) {
            long bad = diff_device(g.rotations, ref.rotations, (size_t)c->H * c->D * (c->p.n_buckets / 2), 4);
            CHECK(bad == 0, "%s: %ld rotation entries differ from the host draw", c->name, bad);
            /* bucket arrays are [B][H][T], the inputs [B][T][H][D]: near ties per input row. */
            if (c->p.hash_center) { /* the plan is built: q and k are not read again */
                centre_floats(c, q);
                centre_floats(c, k);
                /* The device's centred rows (the last side hashed) bit for bit. */
                const size_t n = (size_t)c->B * c->T * HD;
                float *got = (float *)xmalloc(n * sizeof(float), "centred rows");
                CUDA_OK(cudaMemcpy(got, g.centred, n * sizeof(float), cudaMemcpyDeviceToHost));
                const float *want = c->shared_keys ? q : k;
                long diff = 0;
                for (size_t i = 0; i < n; i++) diff += memcmp(&got[i], &want[i], sizeof(float)) != 0;
                CHECK(diff == 0, "%s: %ld of %zu centred floats differ from the CPU's", c->name, diff, n);
                free(got);
            }
            long near = count_near_ties(&ref, q) + (c->shared_keys ? 0 : count_near_ties(&ref, k));
            near_ties_total += near;
            hashed_rows_total += (long)rows * (c->shared_keys ? 1 : 2);
        }
        long bad_q = diff_device(g.bucket_q, ref.bucket_q, rows, 4);
        long bad_k = diff_device(g.bucket_k, ref.bucket_k, rows, 4);
        CHECK(bad_q == 0 && bad_k == 0, "%s: %ld query and %ld key buckets differ from the CPU's",
              c->name, bad_q, bad_k);
        CHECK((g.bucket_k == g.bucket_q) == (c->shared_keys != 0), "%s: shared keys must alias buckets", c->name);
    }
    compare_rows(c, "gpu groups", &g, &ref_rows);

    /* Pairs each original query / key may see, by brute force (for the policy walk). */
    int *want_q = NULL, *want_k = NULL;
    if (c->brute) {
        want_q = (int *)xcalloc(rows, sizeof(int), "brute counts");
        want_k = (int *)xcalloc(rows, sizeof(int), "brute counts");
        for (int bh = 0; bh < c->B * c->H; bh++)
            for (int i = 0; i < c->T; i++)
                for (int j = 0; j <= i; j++)
                    if (attn_allowed(&ref, bh / c->H, bh % c->H, i, j)) {
                        want_q[(size_t)bh * c->T + i]++;
                        want_k[(size_t)bh * c->T + j]++;
                    }
    }
    for (size_t s = 0; s < sizeof TILE_SHAPES / sizeof TILE_SHAPES[0]; s++) {
        attn_tile_lists_t ref_lists;
        attn_tile_lists_build(&ref_lists, &ref_rows, TILE_SHAPES[s][0], TILE_SHAPES[s][1]);
        attn_tiles_cuda_t gt;
        attn_tiles_cuda_init(&gt, &g, TILE_SHAPES[s][0], TILE_SHAPES[s][1]);
        const attn_tile_lists_t *l = &gt.lists;
        const size_t nq = (size_t)l->BH * l->n_q_tiles, nk = (size_t)l->BH * l->n_k_tiles;
        poison(l->info_q, nq * sizeof(attn_tile_info_t)), poison(l->info_k, nk * sizeof(attn_tile_info_t));
        poison(l->n_key_tiles, nq * 4), poison(l->n_query_tiles, nk * 4);
        poison(l->key_tiles, nq * l->n_k_tiles * 4), poison(l->query_tiles, nk * l->n_q_tiles * 4);
        poison(l->live_tiles, 8);
        attn_tiles_cuda_build(&gt, &g, 0);
        CHECK(attn_tiles_cuda_live_count(&gt, 0) == *ref_lists.live_tiles, "%s: live count accessor", c->name);
        compare_lists(c, "gpu groups", &gt, &ref_lists);
        if (c->brute) check_policy(c, &g, &gt, want_q, want_k);

        /* The sort and tile stages on the CPU plan's own groups. */
        if (s == 0) {
            if (c->p.mode == ATTN_HASH_SPARSE) {
                CUDA_OK(cudaMemcpy(g.bucket_q, ref.bucket_q, rows * 4, cudaMemcpyHostToDevice));
                if (!c->shared_keys) CUDA_OK(cudaMemcpy(g.bucket_k, ref.bucket_k, rows * 4, cudaMemcpyHostToDevice));
            } else if (c->p.mode == ATTN_QK_SPARSE) {
                CUDA_OK(cudaMemcpy(g.keep_q, ref.keep_q, rows, cudaMemcpyHostToDevice));
                CUDA_OK(cudaMemcpy(g.keep_k, ref.keep_k, rows, cudaMemcpyHostToDevice));
            }
            poison(g.rows.order_q, rows * 4), poison(g.rows.pos_q, rows * 4), poison(g.rows.group_q, rows * 4);
            poison(g.own_order_k, rows * 4), poison(g.own_pos_k, rows * 4);
            poison(l->key_tiles, nq * l->n_k_tiles * 4);
            attn_plan_cuda_sort(&g, 0);
            attn_tiles_cuda_build(&gt, &g, 0);
            CUDA_OK(cudaDeviceSynchronize());
            compare_rows(c, "cpu groups", &g, &ref_rows);
            compare_lists(c, "cpu groups", &gt, &ref_lists);
        }
        attn_tiles_cuda_free(&gt);
        attn_tile_lists_free(&ref_lists);
    }
    free(want_q);
    free(want_k);
    attn_plan_cuda_free(&g);
    CUDA_OK(cudaFree(d_buf));
    attn_row_order_free(&ref_rows);
    attn_plan_free(&ref);
    free(buf);
    free(q);
    free(k);
}

/* Uniform values in [-1, 1) from a multiplicative hash of the index (timing input only). */
__global__ static void fill_uniform_kernel(__nv_bfloat16 *x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16((float)((uint32_t)(i * 2654435761u) >> 8) * (1.0f / 8388608.0f) - 1.0f);
}

/* The cost of one plan build at the 8k run's layer shape (B 4, T 8192, H 12, D 64, fused QKV,
 * shared keys, nb 16), with and without hash_center: informational, no check. */
static void time_plan_builds(void) {
    const int B = 4, T = 8192, H = 12, D = 64;
    const long stride = 3L * H * D;
    uint16_t *d_buf;
    CUDA_OK(cudaMalloc(&d_buf, (size_t)B * T * stride * 2));
    fill_uniform_kernel<<<4096, 256>>>((__nv_bfloat16 *)d_buf, (long)B * T * stride);
    CUDA_OK(cudaGetLastError());
    cudaEvent_t start, stop;
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreate(&stop));
    float ms[2];
    for (int centred = 0; centred < 2; centred++) {
        const attn_params_t p = {ATTN_HASH_SPARSE, 16, 0.0f, 1, centred};
        attn_plan_cuda_t g;
        attn_plan_cuda_init(&g, &p, B, T, H, D);
        attn_plan_cuda_build(&g, 1, d_buf, stride, NULL, stride, 0); /* warm-up */
        CUDA_OK(cudaEventRecord(start, 0));
        for (int i = 0; i < 10; i++) attn_plan_cuda_build(&g, (uint64_t)i, d_buf, stride, NULL, stride, 0);
        CUDA_OK(cudaEventRecord(stop, 0));
        CUDA_OK(cudaEventSynchronize(stop));
        CUDA_OK(cudaEventElapsedTime(&ms[centred], start, stop));
        attn_plan_cuda_free(&g);
    }
    printf("plan build B%d T%d H%d D%d nb16 shared keys: %.1f us plain, %.1f us with hash_center\n", B, T, H,
           D, 100.0 * ms[0], 100.0 * ms[1]);
    CUDA_OK(cudaEventDestroy(start));
    CUDA_OK(cudaEventDestroy(stop));
    CUDA_OK(cudaFree(d_buf));
}

/* The device draw of the rotations against the host's (attn_plan_build) over many keys: the
 * floats must agree except, rarely, by one unit in the last place (CUDA's double log/cos may
 * differ from the C library's in the last bit; plan_hash.cuh). */
static void check_rotation_draw(void) {
    const int H = 16, D = 128, nb = 64, keys = 40, half = nb / 2;
    const attn_params_t p = {ATTN_HASH_SPARSE, nb, 0.0f, 0};
    const size_t n = (size_t)H * D * half;
    attn_plan_t host;
    attn_plan_init(&host, &p, 1, 1, H, D);
    attn_plan_cuda_t dev;
    attn_plan_cuda_init(&dev, &p, 1, 1, H, D);
    float *zeros = (float *)calloc((size_t)H * D, sizeof(float)), *got = (float *)malloc(n * sizeof(float));
    long differ = 0, worse = 0;
    for (int k = 0; k < keys; k++) {
        const uint64_t key = rng_key(77, RNG_DOMAIN_ATTN, (uint64_t)k, 3, 1);
        attn_plan_build(&host, key, zeros, NULL);
        attn_plan_cuda_draw_rotations(&dev, key, 0);
        CUDA_OK(cudaMemcpy(got, dev.rotations, n * sizeof(float), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) {
            if (got[i] == host.rotations[i]) continue;
            differ++;
            if (nextafterf(got[i], host.rotations[i]) != host.rotations[i]) worse++;
        }
    }
    printf("rotation draw: %ld of %ld device floats differ from the host's (%ld by more than 1 ulp)\n", differ,
           (long)(n * keys), worse);
    CHECK(worse == 0 && differ <= 2, "device rotation draw: %ld floats differ, %ld by more than 1 ulp", differ, worse);
    free(zeros);
    free(got);
    attn_plan_free(&host);
    attn_plan_cuda_free(&dev);
}

int main(void) {
    check_rotation_draw();
    static const int hash_nb[] = {1, 2, 8, 16, 64}, centred_nb[] = {2, 16, 64};
    static const float drops[] = {0.0f, 0.3f, 0.5f, 0.7f, 1.0f};
    /* {B, T, H, D, stride in units: 0 = H*D, 2 = 2*H*D + 8, 3 = 3*H*D} */
    /* T = 512: two whole 256-row chunks of the hash_center pass, no partial one. */
    static const int shapes[][5] = {{2, 1000, 3, 64, 3}, {1, 1, 2, 128, 2}, {3, 2049, 2, 128, 3},
                                    {1, 333, 5, 64, 0}, {1, 512, 2, 64, 2}};
    plan_case_t cases[64];
    int n_modes = 0;
    for (int i = 0; i < 5; i++)
        for (int shared = 0; shared < 2; shared++) {
            plan_case_t *c = &cases[n_modes++];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "hash nb=%d %s", hash_nb[i], shared ? "shared-qk" : "own-k");
            c->p = (attn_params_t){ATTN_HASH_SPARSE, hash_nb[i], 0.0f, 0};
            c->shared_keys = shared;
        }
    for (int i = 0; i < 3; i++)
        for (int shared = 0; shared < 2; shared++) {
            plan_case_t *c = &cases[n_modes++];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "hash nb=%d %s centred", centred_nb[i], shared ? "shared-qk" : "own-k");
            c->p = (attn_params_t){ATTN_HASH_SPARSE, centred_nb[i], 0.0f, 0, 1};
            c->shared_keys = shared;
        }
    for (int i = 0; i < 5; i++) {
        plan_case_t *c = &cases[n_modes++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "qk drop=%.1f", (double)drops[i]);
        c->p = (attn_params_t){ATTN_QK_SPARSE, 1, drops[i], 0};
    }
    memset(&cases[n_modes], 0, sizeof cases[0]);
    snprintf(cases[n_modes].name, sizeof cases[0].name, "dense");
    cases[n_modes++].p = (attn_params_t){ATTN_DENSE, 1, 0.0f, 0};

    uint64_t seed = 1000;
    for (int m = 0; m < n_modes; m++)
        for (int excl = 0; excl < 2; excl++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                plan_case_t c = cases[m];
                c.p.exclude_self = excl;
                c.B = shapes[s][0], c.T = shapes[s][1], c.H = shapes[s][2], c.D = shapes[s][3];
                const long HD = (long)c.H * c.D;
                c.stride = shapes[s][4] == 0 ? HD : shapes[s][4] == 2 ? 2 * HD + 8 : 3 * HD;
                if (c.shared_keys == 0 && c.stride == HD) c.stride = 2 * HD; /* room for k */
                c.brute = 1;
                char base[64];
                snprintf(base, sizeof base, "%s", c.name);
                snprintf(c.name, sizeof c.name, "%s excl=%d B%dT%dH%dD%d", base, excl, c.B, c.T, c.H, c.D);
                run_case(&c, seed++);
            }
    /* Sizes of the paper's runs (many sort chunks, many tiles), without the brute force. */
    const attn_params_t big[] = {{ATTN_HASH_SPARSE, 16, 0.0f, 1, 0}, {ATTN_QK_SPARSE, 1, 0.5f, 0, 0},
                                 {ATTN_HASH_SPARSE, 64, 0.0f, 1, 0}, {ATTN_HASH_SPARSE, 16, 0.0f, 1, 1}};
    for (int i = 0; i < 4; i++) {
        plan_case_t c;
        memset(&c, 0, sizeof c);
        c.p = big[i];
        c.shared_keys = i == 0 || i == 3;
        c.B = 2, c.T = 16384 - 5, c.H = 3, c.D = 64, c.stride = 3 * 3 * 64;
        snprintf(c.name, sizeof c.name, "large %s nb=%d drop=%.1f%s", attn_mode_name(c.p.mode),
                 c.p.n_buckets, (double)c.p.drop_prob, c.p.hash_center ? " centred" : "");
        run_case(&c, seed++);
    }
    time_plan_builds();
    printf("hashed rows: %ld, CPU near ties inside the fp32 bound (recomputed in double on the GPU): %ld\n",
           hashed_rows_total, near_ties_total);
    /* The planted rows must have reached the double path, or it went untested. */
    CHECK(near_ties_total > 0, "no near ties: the GPU's double fallback was not exercised");
    return test_summary();
}
