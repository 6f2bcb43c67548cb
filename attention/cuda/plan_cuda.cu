/* Host side of the GPU attention plan (attention/plan_cuda.h): allocation and the launches of the
 * stages in plan_hash.cuh, plan_sort.cuh and plan_tile_kernels.cuh. */
#include <string.h>

#include <cuda_runtime.h>

extern "C" {
#include "attention/attention.h"
#include "attention/plan_cpu.h"
#include "attention/plan_cuda.h"
#include "attention/plan_tiles.h"
#include "runtime/error.h"
}
#include "attention/cuda/plan_hash.cuh"
#include "attention/cuda/plan_sort.cuh"
#include "attention/cuda/plan_tile_kernels.cuh"

#define PLAN_CUDA_OK(call)                                                                   \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess)                                                             \
            fatal(EXIT_RUNTIME, "attention plan (GPU): %s failed: %s", #call,                \
                  cudaGetErrorString(err_));                                                 \
    } while (0)

template <class T> static T *device_alloc(size_t count) {
    void *p = NULL;
    if (count == 0) return NULL;
    PLAN_CUDA_OK(cudaMalloc(&p, count * sizeof(T)));
    return (T *)p;
}

static int plan_n_groups(const attn_params_t *p) {
    return p->mode == ATTN_HASH_SPARSE ? p->n_buckets : p->mode == ATTN_QK_SPARSE ? 2 : 1;
}

extern "C" void attn_plan_cuda_init(attn_plan_cuda_t *plan, const attn_params_t *p, int B, int T,
                                    int H, int D) {
    memset(plan, 0, sizeof *plan);
    /* The host plan's init validates the parameters and sizes (one position: cheap). */
    attn_plan_t check;
    attn_plan_init(&check, p, 1, 1, H, D);
    attn_plan_free(&check);
    if ((long)B * T * H > INT32_MAX)
        fatal(EXIT_USAGE, "attention plan (GPU): B*T*H = %ld rows is too large", (long)B * T * H);
    plan->p = *p;
    plan->B = B;
    plan->T = T;
    plan->H = H;
    plan->D = D;
    const int BH = B * H, ng = plan_n_groups(p);
    const size_t rows = (size_t)BH * T;
    if (p->mode == ATTN_QK_SPARSE) {
        plan->keep_q = device_alloc<uint8_t>(rows);
        plan->keep_k = device_alloc<uint8_t>(rows);
    } else if (p->mode == ATTN_HASH_SPARSE) {
        plan->bucket_q = device_alloc<int32_t>(rows);
        plan->own_bucket_k = device_alloc<int32_t>(rows);
        plan->bucket_k = plan->own_bucket_k;
        if (p->n_buckets > 1) {
            const size_t n_rot = (size_t)H * D * (p->n_buckets / 2);
            plan->rotations = device_alloc<float>(n_rot);
            if (p->hash_center) {
                plan->centred = device_alloc<float>(rows * D);
                plan->centre_starts = device_alloc<double>((size_t)B * plan::centre_chunks(T) * H * D);
            }
        }
    }
    attn_row_order_t *rw = &plan->rows;
    rw->BH = BH;
    rw->T = T;
    rw->n_groups = ng;
    rw->n_work_groups = attn_n_work_groups(p);
    rw->exclude_self = p->exclude_self;
    rw->order_q = device_alloc<int32_t>(rows);
    rw->pos_q = device_alloc<int32_t>(rows);
    rw->group_q = device_alloc<int32_t>(rows);
    rw->group_start_q = device_alloc<int32_t>((size_t)BH * (ng + 1));
    plan->own_order_k = device_alloc<int32_t>(rows);
    plan->own_pos_k = device_alloc<int32_t>(rows);
    plan->own_group_k = device_alloc<int32_t>(rows);
    plan->own_group_start_k = device_alloc<int32_t>((size_t)BH * (ng + 1));
    rw->order_k = plan->own_order_k;
    rw->pos_k = plan->own_pos_k;
    rw->group_k = plan->own_group_k;
    rw->group_start_k = plan->own_group_start_k;
    plan->n_chunks = (T + plan::SORT_CHUNK - 1) / plan::SORT_CHUNK;
    plan->histogram = device_alloc<int32_t>((size_t)2 * BH * plan->n_chunks * ng);
}

extern "C" void attn_plan_cuda_free(attn_plan_cuda_t *plan) {
    void *device[] = {plan->keep_q, plan->keep_k, plan->bucket_q, plan->own_bucket_k,
                      plan->rotations, plan->centred, plan->centre_starts, plan->rows.order_q,
                      plan->rows.pos_q, plan->rows.group_q, plan->rows.group_start_q,
                      plan->own_order_k, plan->own_pos_k, plan->own_group_k,
                      plan->own_group_start_k, plan->histogram};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
        if (device[i]) PLAN_CUDA_OK(cudaFree(device[i]));
    memset(plan, 0, sizeof *plan);
}

extern "C" void attn_plan_cuda_draw_rotations(attn_plan_cuda_t *plan, uint64_t key,
                                              cudaStream_t stream) {
    if (plan->p.mode != ATTN_HASH_SPARSE || plan->p.n_buckets == 1) return;
    const int half = plan->p.n_buckets / 2, n = plan->H * plan->D * half, columns = plan->H * half;
    plan::draw_normals_kernel<<<(n + 255) / 256, 256, 0, stream>>>(key, n, plan->rotations);
    PLAN_CUDA_OK(cudaGetLastError());
    plan::normalise_columns_kernel<<<(columns + 127) / 128, 128, 0, stream>>>(plan->H, plan->D, half,
                                                                              plan->rotations);
    PLAN_CUDA_OK(cudaGetLastError());
}

static void check_hash_input(const attn_plan_cuda_t *plan, const char *name, const void *x,
                             long stride) {
    if (!x) fatal(EXIT_USAGE, "attention plan (GPU): hash_sparse needs %s (NULL given)", name);
    if (plan->D != 64 && plan->D != 128)
        fatal(EXIT_USAGE, "attention plan (GPU): hash_sparse supports head dim 64 or 128, got %d", plan->D);
    if (((uintptr_t)x % 16) != 0 || stride % 8 != 0 || stride < (long)plan->H * plan->D)
        fatal(EXIT_USAGE, "attention plan (GPU): %s must be 16-byte aligned with a row stride that is "
              "a multiple of 8 and at least H*D = %d (stride %ld)", name, plan->H * plan->D, stride);
}

template <class In, int D, int HALF_MAX>
static void launch_hash(const attn_plan_cuda_t *plan, const In *x, long stride, int32_t *bucket,
                        cudaStream_t stream) {
    /* Staged rows (ROWS * (D * sizeof(In) + 16) bytes) plus R (up to D * 32 floats) stay under
     * the 48 KB of static shared memory: bf16 rows 256 of D = 64, 64 of D = 128; fp32 rows 128
     * of D = 64, 32 of D = 128. */
    constexpr bool wide = sizeof(In) == 4;
    constexpr int THREADS = D == 64 ? (wide ? 64 : 128) : (wide ? 32 : 64);
    constexpr int RPT = D == 64 ? 2 : 1, ROWS = THREADS * RPT;
    const long rows = (long)plan->B * plan->T;
    dim3 grid((unsigned)((rows + ROWS - 1) / ROWS), (unsigned)plan->H);
    plan::hash_bucket_kernel<In, D, HALF_MAX, THREADS, RPT><<<grid, THREADS, 0, stream>>>(
        x, stride, plan->rotations, plan->T, plan->H, rows, plan->p.n_buckets / 2, bucket);
    PLAN_CUDA_OK(cudaGetLastError());
}

template <class In, int D>
static void launch_hash_d(const attn_plan_cuda_t *plan, const In *x, long stride, int32_t *bucket,
                          cudaStream_t stream) {
    const int half = plan->p.n_buckets / 2;
    if (half <= 4) launch_hash<In, D, 4>(plan, x, stride, bucket, stream);
    else if (half <= 8) launch_hash<In, D, 8>(plan, x, stride, bucket, stream);
    else if (half <= 16) launch_hash<In, D, 16>(plan, x, stride, bucket, stream);
    else launch_hash<In, D, 32>(plan, x, stride, bucket, stream);
}

/* With hash_center the rows are first centred into plan->centred (fp32, row stride H*D), then
 * hashed from there: the CPU hashes the centred floats, not a bf16 rounding of them. */
static void hash_rows(const attn_plan_cuda_t *plan, const void *x, long stride, int32_t *bucket,
                      cudaStream_t stream) {
    if (plan->p.hash_center) {
        const int HD = plan->H * plan->D;
        const plan::bf16 *rows = (const plan::bf16 *)x;
        const int n_chunks = plan::centre_chunks(plan->T);
        if (n_chunks > 1) {
            const long totals = (long)plan->B * (n_chunks - 1) * HD;
            plan::centre_chunk_totals_kernel<<<(unsigned)((totals + 127) / 128), 128, 0, stream>>>(
                rows, stride, plan->B, plan->T, HD, plan->centre_starts);
            PLAN_CUDA_OK(cudaGetLastError());
        }
        const long scans = (long)plan->B * HD; /* few threads: small blocks, more SMs */
        plan::centre_chunk_starts_kernel<<<(unsigned)((scans + 31) / 32), 32, 0, stream>>>(
            plan->B, plan->T, HD, plan->centre_starts);
        PLAN_CUDA_OK(cudaGetLastError());
        const long chunks = (long)plan->B * n_chunks * HD;
        plan::centre_rows_kernel<<<(unsigned)((chunks + 127) / 128), 128, 0, stream>>>(
            rows, stride, plan->B, plan->T, HD, plan->centre_starts, plan->centred);
        PLAN_CUDA_OK(cudaGetLastError());
        if (plan->D == 64) launch_hash_d<float, 64>(plan, plan->centred, HD, bucket, stream);
        else launch_hash_d<float, 128>(plan, plan->centred, HD, bucket, stream);
        return;
    }
    const plan::bf16 *rows = (const plan::bf16 *)x;
    if (plan->D == 64) launch_hash_d<plan::bf16, 64>(plan, rows, stride, bucket, stream);
    else launch_hash_d<plan::bf16, 128>(plan, rows, stride, bucket, stream);
}

extern "C" void attn_plan_cuda_assign(attn_plan_cuda_t *plan, uint64_t key, const void *q,
                                      long q_stride, const void *k, long k_stride,
                                      cudaStream_t stream) {
    const size_t rows = (size_t)plan->B * plan->H * plan->T;
    switch (plan->p.mode) {
    case ATTN_DENSE: plan->shared_keys = 1; return;
    case ATTN_QK_SPARSE: {
        plan->shared_keys = 0; /* keys have their own keep mask even when K derives from Q */
        const uint32_t threshold = rng_drop_threshold((double)plan->p.drop_prob);
        plan::keep_mask_kernel<<<(unsigned)((rows + 255) / 256), 256, 0, stream>>>(
            key, threshold, (long)rows, plan->keep_q, plan->keep_k);
        PLAN_CUDA_OK(cudaGetLastError());
        return;
    }
    case ATTN_HASH_SPARSE:
        plan->shared_keys = k == NULL;
        plan->bucket_k = plan->shared_keys ? plan->bucket_q : plan->own_bucket_k;
        if (plan->p.n_buckets == 1) { /* every row in bucket 0: nothing to read */
            PLAN_CUDA_OK(cudaMemsetAsync(plan->bucket_q, 0, rows * sizeof(int32_t), stream));
            if (!plan->shared_keys)
                PLAN_CUDA_OK(cudaMemsetAsync(plan->bucket_k, 0, rows * sizeof(int32_t), stream));
            return;
        }
        check_hash_input(plan, "q", q, q_stride);
        hash_rows(plan, q, q_stride, plan->bucket_q, stream);
        if (!plan->shared_keys) {
            check_hash_input(plan, "k", k, k_stride);
            hash_rows(plan, k, k_stride, plan->bucket_k, stream);
        }
        return;
    }
}

extern "C" void attn_plan_cuda_sort(attn_plan_cuda_t *plan, cudaStream_t stream) {
    attn_row_order_t *rw = &plan->rows;
    const int shared = plan->shared_keys && plan->p.mode != ATTN_QK_SPARSE;
    if (plan->p.mode == ATTN_HASH_SPARSE)
        plan->bucket_k = shared ? plan->bucket_q : plan->own_bucket_k;
    /* Shared keys: the key rows are the query rows, sorted once. */
    rw->order_k = shared ? rw->order_q : plan->own_order_k;
    rw->pos_k = shared ? rw->pos_q : plan->own_pos_k;
    rw->group_k = shared ? rw->group_q : plan->own_group_k;
    rw->group_start_k = shared ? rw->group_start_q : plan->own_group_start_k;

    plan::SortArgs a;
    memset(&a, 0, sizeof a);
    a.BH = rw->BH;
    a.T = rw->T;
    a.n_groups = rw->n_groups;
    a.n_chunks = plan->n_chunks;
    a.qk = plan->p.mode == ATTN_QK_SPARSE;
    a.histogram = plan->histogram;
    a.side[0] = {{(int)plan->p.mode, plan->bucket_q, plan->keep_q}, rw->order_q, rw->pos_q,
                 rw->group_q, rw->group_start_q, ATTN_POS_DROPPED_QUERY};
    a.side[1] = {{(int)plan->p.mode, plan->bucket_k, plan->keep_k}, rw->order_k, rw->pos_k,
                 rw->group_k, rw->group_start_k, ATTN_POS_DROPPED_KEY};
    dim3 grid((unsigned)plan->n_chunks, (unsigned)rw->BH, shared ? 1u : 2u);
    plan::group_histogram_kernel<<<grid, 256, 0, stream>>>(a);
    PLAN_CUDA_OK(cudaGetLastError());
    plan::group_place_kernel<<<grid, plan::SORT_CHUNK, 0, stream>>>(a);
    PLAN_CUDA_OK(cudaGetLastError());
}

extern "C" void attn_plan_cuda_build(attn_plan_cuda_t *plan, uint64_t key, const void *q,
                                     long q_stride, const void *k, long k_stride,
                                     cudaStream_t stream) {
    attn_plan_cuda_draw_rotations(plan, key, stream);
    attn_plan_cuda_assign(plan, key, q, q_stride, k, k_stride, stream);
    attn_plan_cuda_sort(plan, stream);
}

extern "C" void attn_tiles_cuda_init(attn_tiles_cuda_t *t, const attn_plan_cuda_t *plan,
                                     int block_m, int block_n) {
    if (block_m < 1 || block_n < 1)
        fatal(EXIT_USAGE, "attention tile lists: tile sizes must be positive (block_m=%d block_n=%d)",
              block_m, block_n);
    memset(t, 0, sizeof *t);
    attn_tile_lists_t *l = &t->lists;
    const int BH = plan->rows.BH, T = plan->T;
    l->BH = BH;
    l->block_m = block_m;
    l->block_n = block_n;
    l->n_q_tiles = (T + block_m - 1) / block_m;
    l->n_k_tiles = (T + block_n - 1) / block_n;
    const size_t nq = (size_t)BH * l->n_q_tiles, nk = (size_t)BH * l->n_k_tiles;
    if (nq * l->n_k_tiles > INT32_MAX)
        fatal(EXIT_USAGE, "attention tile lists: %zu list slots are too many (smaller T or larger tiles)",
              nq * l->n_k_tiles);
    l->info_q = device_alloc<attn_tile_info_t>(nq);
    l->info_k = device_alloc<attn_tile_info_t>(nk);
    l->n_key_tiles = device_alloc<int32_t>(nq);
    l->n_query_tiles = device_alloc<int32_t>(nk);
    l->key_tiles = device_alloc<int32_t>(nq * l->n_k_tiles);
    l->query_tiles = device_alloc<int32_t>(nk * l->n_q_tiles);
    l->live_tiles = device_alloc<int64_t>(1);
    t->work_counter = device_alloc<int32_t>(1);
}

extern "C" void attn_tiles_cuda_free(attn_tiles_cuda_t *t) {
    attn_tile_lists_t *l = &t->lists;
    void *device[] = {l->info_q, l->info_k, l->n_key_tiles, l->n_query_tiles, l->key_tiles,
                      l->query_tiles, l->live_tiles, t->work_counter};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
        if (device[i]) PLAN_CUDA_OK(cudaFree(device[i]));
    memset(t, 0, sizeof *t);
}

extern "C" void attn_tiles_cuda_build(attn_tiles_cuda_t *t, const attn_plan_cuda_t *plan,
                                      cudaStream_t stream) {
    attn_tile_lists_t *l = &t->lists;
    if (l->BH != plan->rows.BH || l->n_q_tiles != (plan->T + l->block_m - 1) / l->block_m)
        fatal(EXIT_USAGE, "attention tile lists: built for other sizes than this plan");
    plan::TileArgs a;
    a.rows = plan->rows;
    a.lists = *l;
    const int n = l->BH * (l->n_q_tiles + l->n_k_tiles);
    const unsigned blocks = (unsigned)(((long)n * 32 + 255) / 256);
    plan::tile_info_kernel<<<blocks, 256, 0, stream>>>(a);
    PLAN_CUDA_OK(cudaGetLastError());
    plan::tile_list_kernel<<<blocks, 256, 0, stream>>>(a);
    PLAN_CUDA_OK(cudaGetLastError());
}

extern "C" int64_t attn_tiles_cuda_live_count(const attn_tiles_cuda_t *t, cudaStream_t stream) {
    int64_t live = 0;
    PLAN_CUDA_OK(cudaMemcpyAsync(&live, t->lists.live_tiles, sizeof live, cudaMemcpyDeviceToHost, stream));
    PLAN_CUDA_OK(cudaStreamSynchronize(stream));
    return live;
}
