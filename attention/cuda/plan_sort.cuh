/* Plan stage 3 on the GPU: the stable counting sort of attention/plan_cpu.h, for the query and
 * the key rows of every (b, h) at once.
 *
 * Rows are cut into chunks of SORT_CHUNK. Kernel 1 counts each chunk's rows per group. Kernel 2
 * places a chunk: a row of group g goes to
 *     start(g) + rows of g in earlier chunks + rows of g in earlier warps + earlier lanes of g,
 * where start(g) sums all chunks' counts of groups < g. Within a warp the lanes of one group
 * find each other with __match_any_sync; per-warp counts are scanned in shared memory. All of
 * it is integer counting, so the order is the CPU's exactly, with no general sort. */
#ifndef ATTENTION_CUDA_PLAN_SORT_CUH
#define ATTENTION_CUDA_PLAN_SORT_CUH

#include <stdint.h>

#include "attention/attention.h"
#include "attention/plan_cpu.h"

namespace plan {

constexpr int SORT_CHUNK = 1024; /* rows per chunk = threads of the placement kernel */

/* Group of row n = bh*T + t of one side. */
struct GroupSource {
    int mode;              /* attn_mode_t */
    const int32_t *bucket; /* hash_sparse */
    const uint8_t *keep;   /* qk_sparse: kept = group 0, dropped = group 1 */
    __device__ __forceinline__ int operator()(long n) const {
        if (mode == ATTN_HASH_SPARSE) return bucket[n];
        if (mode == ATTN_QK_SPARSE) return keep[n] ? 0 : 1;
        return 0;
    }
};

struct SortSide {
    GroupSource groups;
    int32_t *order, *pos, *group, *group_start;
    int32_t dropped_pos; /* position sentinel of qk's dropped rows on this side */
};

struct SortArgs {
    SortSide side[2]; /* queries, keys (grid z) */
    int BH, T, n_groups, n_chunks;
    int qk; /* group 1 rows are dropped rows: sentinel positions */
    int32_t *histogram; /* [2][BH][n_chunks][n_groups] */
};

__device__ __forceinline__ int32_t *chunk_histogram(const SortArgs &a, int s, int bh, int chunk) {
    return a.histogram + (((long)s * a.BH + bh) * a.n_chunks + chunk) * a.n_groups;
}

/* Grid (n_chunks, BH, sides). */
__global__ void __launch_bounds__(256) group_histogram_kernel(SortArgs a) {
    __shared__ int hist[ATTN_MAX_BUCKETS];
    const int chunk = blockIdx.x, bh = blockIdx.y, s = blockIdx.z;
    const SortSide &side = a.side[s];
    for (int g = threadIdx.x; g < a.n_groups; g += blockDim.x) hist[g] = 0;
    __syncthreads();
    const int end = min(a.T, (chunk + 1) * SORT_CHUNK);
    for (int t = chunk * SORT_CHUNK + threadIdx.x; t < end; t += blockDim.x) {
        int g = side.groups((long)bh * a.T + t);
        if ((unsigned)g < (unsigned)a.n_groups) atomicAdd(&hist[g], 1);
    }
    __syncthreads();
    int32_t *out = chunk_histogram(a, s, bh, chunk);
    for (int g = threadIdx.x; g < a.n_groups; g += blockDim.x) out[g] = hist[g];
}

/* Grid (n_chunks, BH, sides), SORT_CHUNK threads: thread i places row chunk*SORT_CHUNK + i. */
__global__ void __launch_bounds__(SORT_CHUNK) group_place_kernel(SortArgs a) {
    constexpr int WARPS = SORT_CHUNK / 32;
    __shared__ int start[ATTN_MAX_BUCKETS + 1]; /* first sorted row of each group */
    __shared__ int base[ATTN_MAX_BUCKETS];      /* first sorted row of this chunk's rows of g */
    __shared__ int warp_count[WARPS][ATTN_MAX_BUCKETS];
    const int chunk = blockIdx.x, bh = blockIdx.y, s = blockIdx.z, ng = a.n_groups;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const SortSide &side = a.side[s];

    for (int i = tid; i < WARPS * ATTN_MAX_BUCKETS; i += SORT_CHUNK) (&warp_count[0][0])[i] = 0;
    if (tid < ng) {
        int total = 0, before = 0;
        for (int c = 0; c < a.n_chunks; c++) {
            int v = chunk_histogram(a, s, bh, c)[tid];
            total += v;
            before += c < chunk ? v : 0;
        }
        start[tid + 1] = total; /* scanned below */
        base[tid] = before;
    }
    __syncthreads();
    if (tid == 0) { /* at most 64 groups: a serial scan is shorter than a parallel one */
        start[0] = 0;
        for (int g = 0; g < ng; g++) start[g + 1] += start[g];
    }
    __syncthreads();
    if (tid < ng) base[tid] += start[tid];
    if (chunk == 0 && tid <= ng) side.group_start[(long)bh * (ng + 1) + tid] = start[tid];

    const int t = chunk * SORT_CHUNK + tid;
    const int g = t < a.T ? side.groups((long)bh * a.T + t) : -1;
    const bool placed = (unsigned)g < (unsigned)ng;
    const unsigned peers = __match_any_sync(0xffffffffu, g);
    const int rank = __popc(peers & ((1u << lane) - 1));
    if (placed && rank == 0) warp_count[warp][g] = __popc(peers);
    __syncthreads();
    if (tid < ng) { /* exclusive scan over warps of each group's count */
        int run = 0;
        for (int w = 0; w < WARPS; w++) {
            int v = warp_count[w][tid];
            warp_count[w][tid] = run;
            run += v;
        }
    }
    __syncthreads();
    if (!placed) return;
    const long r = (long)bh * a.T + base[g] + warp_count[warp][g] + rank;
    side.order[r] = t;
    side.pos[r] = a.qk && g == 1 ? side.dropped_pos : t;
    side.group[r] = g;
}

} // namespace plan

#endif
