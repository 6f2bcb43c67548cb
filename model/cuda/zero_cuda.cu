/* ZeRO-1 over NCCL for the CUDA backend (see zero_cuda.h for the step and the shard layout).
 *
 * Streams: the model computes on g->stream; every NCCL call and the copies that feed it run on
 * comm_stream, ordered against g->stream by two events (compute_done: "the gradients / updated
 * parameters queued so far are final", comm_done: "the collectives queued so far are over").
 * Every rank issues the same collectives in the same order: reduce-scatters in descending
 * bucket order (the backward's order), all-gathers in ascending order, then nothing until the
 * next step (checkpoint gathers go through MPI on the host). */
#include "model/cuda/zero_cuda.h"

#include <math.h>
#include <nccl.h>
#include <string.h>

static void nccl_check_impl(ncclResult_t r, const char *call, const char *file, int line) {
    if (r != ncclSuccess)
        fatal(EXIT_RUNTIME, "%s:%d: %s failed: %s (%s)", file, line, call, ncclGetErrorString(r),
              ncclGetLastError(NULL));
}
#define NCCL_CHECK(call) nccl_check_impl((call), #call, __FILE__, __LINE__)

/* ---- layout (host only) ------------------------------------------------------------------ */

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

void zero_layout_build(zero_layout_t *z, size_t n, const size_t *starts, int n_starts, int world) {
    if (world < 1) fatal(EXIT_RUNTIME, "zero_layout_build: world size %d", world);
    if (n_starts < 1 || n_starts > ZERO_MAX_BUCKETS || starts[0] != 0)
        fatal(EXIT_RUNTIME, "zero_layout_build: %d ranges (at most %d, the first starting at 0)", n_starts,
              ZERO_MAX_BUCKETS);
    for (int i = 0; i < n_starts; i++)
        if (starts[i] >= n || (i > 0 && starts[i] <= starts[i - 1]))
            fatal(EXIT_RUNTIME, "zero_layout_build: range start %zu (index %d) is not ascending below %zu",
                  starts[i], i, n);
    memset(z, 0, sizeof *z);
    z->world = world;
    z->n = n;
    size_t pos = 0;
    for (int i = 0; i < n_starts; i++) {
        /* Rounding both edges up keeps buckets contiguous and each ready once its own range is:
         * the elements it gains at the top belong to the range above, finished earlier. */
        size_t lo = round_up(starts[i], (size_t)world), hi = i + 1 < n_starts ? round_up(starts[i + 1], (size_t)world) : n;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        if (lo >= hi) continue;
        zero_bucket_t *b = &z->buckets[z->n_buckets++];
        b->lo = lo;
        b->hi = hi;
        b->slice = (hi - lo + (size_t)world - 1) / (size_t)world;
        b->shard_pos = pos;
        pos += b->slice;
    }
    z->shard_len = pos;
}

size_t zero_slice_begin(const zero_bucket_t *b, int rank) { return b->lo + (size_t)rank * b->slice; }

size_t zero_slice_len(const zero_bucket_t *b, int rank) {
    const size_t begin = zero_slice_begin(b, rank);
    if (begin >= b->hi) return 0;
    return b->hi - begin < b->slice ? b->hi - begin : b->slice;
}

void zero_take_shard(const zero_layout_t *z, int rank, const float *full, float *shard) {
    memset(shard, 0, z->shard_len * sizeof(float));
    for (int i = 0; i < z->n_buckets; i++) {
        const zero_bucket_t *b = &z->buckets[i];
        memcpy(shard + b->shard_pos, full + zero_slice_begin(b, rank), zero_slice_len(b, rank) * sizeof(float));
    }
}

void zero_put_shard(const zero_layout_t *z, int rank, const float *shard, float *full) {
    for (int i = 0; i < z->n_buckets; i++) {
        const zero_bucket_t *b = &z->buckets[i];
        memcpy(full + zero_slice_begin(b, rank), shard + b->shard_pos, zero_slice_len(b, rank) * sizeof(float));
    }
}

int zero_update_runs(const zero_layout_t *z, int rank, const gpt_tensor_t *tensors, int n_tensors,
                     zero_run_t *out) {
    int count = 0;
    for (int bi = 0; bi < z->n_buckets; bi++) {
        const zero_bucket_t *b = &z->buckets[bi];
        const size_t a0 = zero_slice_begin(b, rank), e0 = a0 + zero_slice_len(b, rank);
        zero_run_t cur;
        int open = 0;
        for (int t = 0; t < n_tensors; t++) {
            const size_t ta = tensors[t].offset, te = ta + tensors[t].numel;
            const size_t a = ta > a0 ? ta : a0, e = te < e0 ? te : e0;
            if (a >= e) continue;
            const int decay = tensors[t].decay != 0;
            if (open && cur.decay == decay && cur.flat + cur.len == a) {
                cur.len += e - a;
                continue;
            }
            if (open) {
                if (out) out[count] = cur;
                count++;
            }
            cur.bucket = bi;
            cur.flat = a;
            cur.shard = b->shard_pos + (a - a0);
            cur.len = e - a;
            cur.decay = decay;
            open = 1;
        }
        if (open) {
            if (out) out[count] = cur;
            count++;
        }
    }
    return count;
}

/* ---- device side ------------------------------------------------------------------------- */

struct zero_cuda {
    gpt_cuda_t *g;
    const dist_t *dist;
    int world, rank;
    zero_layout_t layout;
    zero_run_t *runs; /* this rank's AdamW launches, grouped by bucket (ascending) */
    int n_runs;
    ncclComm_t comm;
    cudaStream_t comm_stream;
    cudaEvent_t compute_done, comm_done;
    float *grad_shard, *m, *v; /* [shard_len] */
    float *staging;            /* world * slice of the largest bucket that does not divide evenly */
    size_t staging_len;
    /* Reduce state of the current step: buckets at or above `frontier` (flat offset) have final
     * gradients; next_bucket is the highest bucket whose reduce-scatter is not queued yet. */
    size_t frontier;
    int next_bucket;
    int armed;   /* the running backward is the step's last: reduce buckets as they finish */
    int reduced; /* every bucket queued and grad_shard handed to the norm / update */
    int overlapped; /* buckets queued from inside the last backward (tests, diagnostics) */
    /* Timing of the step's collectives (CUDA events, read after the update's synchronisation):
     * each bucket's reduce-scatter and all-gather on comm_stream, the end of the last backward
     * and of the last AdamW launch on the compute stream. */
    cudaEvent_t ev_rs[ZERO_MAX_BUCKETS][2], ev_ag[ZERO_MAX_BUCKETS][2], ev_bwd_end, ev_adam_end;
    int timed;                     /* this step recorded every event above */
    double comm_ms, exposed_ms;    /* of the last completed step */
};

/* comm_stream waits for the work queued on g->stream so far. */
static void comm_after_compute(zero_cuda_t *z) {
    CUDA_CHECK(cudaEventRecord(z->compute_done, z->g->stream));
    CUDA_CHECK(cudaStreamWaitEvent(z->comm_stream, z->compute_done, 0));
}

/* g->stream waits for the work queued on comm_stream so far. */
static void compute_after_comm(zero_cuda_t *z) {
    CUDA_CHECK(cudaEventRecord(z->comm_done, z->comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent(z->g->stream, z->comm_done, 0));
}

static void check_async_error(zero_cuda_t *z) {
    ncclResult_t err = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(z->comm, &err));
    if (err != ncclSuccess)
        fatal(EXIT_RUNTIME, "NCCL collective failed on rank %d: %s (%s)", z->rank, ncclGetErrorString(err),
              ncclGetLastError(z->comm));
}

static void reduce_scatter_bucket(zero_cuda_t *z, int bi) {
    CUDA_CHECK(cudaEventRecord(z->ev_rs[bi][0], z->comm_stream));
    const zero_bucket_t *b = &z->layout.buckets[bi];
    const size_t len = b->hi - b->lo, padded = b->slice * (size_t)z->world;
    const float *send = z->g->grads + b->lo;
    if (padded != len) { /* zero padding to equal counts per rank */
        CUDA_CHECK(cudaMemcpyAsync(z->staging, send, len * sizeof(float), cudaMemcpyDeviceToDevice, z->comm_stream));
        CUDA_CHECK(cudaMemsetAsync(z->staging + len, 0, (padded - len) * sizeof(float), z->comm_stream));
        send = z->staging;
    }
    NCCL_CHECK(ncclReduceScatter(send, z->grad_shard + b->shard_pos, b->slice, ncclFloat, ncclSum, z->comm,
                                 z->comm_stream));
    CUDA_CHECK(cudaEventRecord(z->ev_rs[bi][1], z->comm_stream));
}

/* Queues the reduce-scatter of every bucket at or above the frontier not queued yet. */
static void reduce_ready_buckets(zero_cuda_t *z) {
    if (z->next_bucket < 0 || z->layout.buckets[z->next_bucket].lo < z->frontier) return;
    comm_after_compute(z);
    while (z->next_bucket >= 0 && z->layout.buckets[z->next_bucket].lo >= z->frontier)
        reduce_scatter_bucket(z, z->next_bucket--);
}

/* gpt_cuda's grads_ready hook: ranges arrive from the top of the flat vector down. */
static void on_grads_ready(void *ctx, size_t lo, size_t hi) {
    zero_cuda_t *z = (zero_cuda_t *)ctx;
    if (!z->armed) return;
    if (hi != z->frontier || lo > hi)
        fatal(EXIT_RUNTIME, "zero_cuda: gradients of [%zu, %zu) reported ready, expected a range ending at %zu "
              "(gpt_cuda's grads_ready must report contiguous ranges from the top down)", lo, hi, z->frontier);
    z->frontier = lo;
    reduce_ready_buckets(z);
}

static void finish_reduce(zero_cuda_t *z) {
    if (z->reduced) return;
    z->frontier = 0;
    reduce_ready_buckets(z);
    compute_after_comm(z);
    z->reduced = 1;
}

/* In-place all-gather of bucket bi's fp32 masters, then its bf16 copies from them. */
static void all_gather_bucket(zero_cuda_t *z, int bi) {
    CUDA_CHECK(cudaEventRecord(z->ev_ag[bi][0], z->comm_stream));
    const zero_bucket_t *b = &z->layout.buckets[bi];
    float *p = z->g->params;
    const size_t len = b->hi - b->lo, begin = zero_slice_begin(b, z->rank);
    if (b->slice * (size_t)z->world == len) {
        NCCL_CHECK(ncclAllGather(p + begin, p + b->lo, b->slice, ncclFloat, z->comm, z->comm_stream));
    } else {
        float *mine = z->staging + (size_t)z->rank * b->slice;
        const size_t own = zero_slice_len(b, z->rank);
        if (own)
            CUDA_CHECK(cudaMemcpyAsync(mine, p + begin, own * sizeof(float), cudaMemcpyDeviceToDevice, z->comm_stream));
        NCCL_CHECK(ncclAllGather(mine, z->staging, b->slice, ncclFloat, z->comm, z->comm_stream));
        /* Slots are rank-major and all but the trailing ones full, so [0, len) is the bucket. */
        CUDA_CHECK(cudaMemcpyAsync(p + b->lo, z->staging, len * sizeof(float), cudaMemcpyDeviceToDevice,
                                   z->comm_stream));
    }
    /* With one rank AdamW already wrote every bf16 copy (the same rounding of the same value). */
    if (z->world > 1) float_to_bf16_cuda(z->g->params_bf16 + b->lo, p + b->lo, len, z->comm_stream);
    CUDA_CHECK(cudaEventRecord(z->ev_ag[bi][1], z->comm_stream));
}

static double elapsed_ms(cudaEvent_t from, cudaEvent_t to) {
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, from, to));
    return ms;
}

/* After the update's synchronisation: communication time of the step (every collective's span
 * on comm_stream; the reduce-scatters of one step run one after another there, so spans do not
 * overlap) and the part of it the compute stream had to wait for: reduce-scatters still running
 * after the last backward finished, all-gathers still running after the last AdamW. */
static void read_comm_times(zero_cuda_t *z) {
    if (!z->timed) return;
    const int n = z->layout.n_buckets;
    double comm = 0, rs_end = 0, ag_end = 0; /* ends relative to ev_bwd_end / ev_adam_end */
    for (int bi = 0; bi < n; bi++) {
        comm += elapsed_ms(z->ev_rs[bi][0], z->ev_rs[bi][1]) + elapsed_ms(z->ev_ag[bi][0], z->ev_ag[bi][1]);
        const double r = elapsed_ms(z->ev_bwd_end, z->ev_rs[bi][1]), a = elapsed_ms(z->ev_adam_end, z->ev_ag[bi][1]);
        if (r > rs_end) rs_end = r;
        if (a > ag_end) ag_end = a;
    }
    z->comm_ms = comm;
    z->exposed_ms = rs_end + ag_end;
    z->timed = 0;
}

zero_cuda_t *zero_cuda_create(gpt_cuda_t *g, const dist_t *dist) {
    zero_cuda_t *z = (zero_cuda_t *)xcalloc(1, sizeof *z, "zero_cuda");
    z->g = g;
    z->dist = dist;
    z->world = dist->world;
    z->rank = dist->rank;
    if (g->L + 2 > ZERO_MAX_BUCKETS) fatal(EXIT_RUNTIME, "zero_cuda: %d layers exceed the bucket table", g->L);
    size_t starts[ZERO_MAX_BUCKETS];
    int n_starts = 0;
    starts[n_starts++] = 0; /* wte, wpe */
    for (int l = 0; l < g->L; l++) starts[n_starts++] = g->off[l].ln1w;
    starts[n_starts++] = g->lnfw;
    zero_layout_build(&z->layout, g->n_params, starts, n_starts, z->world);
    z->n_runs = zero_update_runs(&z->layout, z->rank, g->tensors, g->n_tensors, NULL);
    z->runs = (zero_run_t *)xmalloc((size_t)(z->n_runs ? z->n_runs : 1) * sizeof(zero_run_t), "zero runs");
    zero_update_runs(&z->layout, z->rank, g->tensors, g->n_tensors, z->runs);

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (z->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    dist_broadcast_bytes(dist, &id, sizeof id);
    NCCL_CHECK(ncclCommInitRank(&z->comm, z->world, id, z->rank));

    /* The highest priority lets a collective's kernels start while the backward fills the GPU. */
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CHECK(cudaStreamCreateWithPriority(&z->comm_stream, cudaStreamNonBlocking, greatest));
    CUDA_CHECK(cudaEventCreateWithFlags(&z->compute_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&z->comm_done, cudaEventDisableTiming));
    for (int i = 0; i < ZERO_MAX_BUCKETS; i++)
        for (int e = 0; e < 2; e++) {
            CUDA_CHECK(cudaEventCreate(&z->ev_rs[i][e]));
            CUDA_CHECK(cudaEventCreate(&z->ev_ag[i][e]));
        }
    CUDA_CHECK(cudaEventCreate(&z->ev_bwd_end));
    CUDA_CHECK(cudaEventCreate(&z->ev_adam_end));
    z->comm_ms = z->exposed_ms = -1;

    const size_t sbytes = z->layout.shard_len * sizeof(float);
    CUDA_CHECK(cudaMalloc((void **)&z->grad_shard, sbytes));
    CUDA_CHECK(cudaMalloc((void **)&z->m, sbytes));
    CUDA_CHECK(cudaMalloc((void **)&z->v, sbytes));
    CUDA_CHECK(cudaMemset(z->grad_shard, 0, sbytes));
    CUDA_CHECK(cudaMemset(z->m, 0, sbytes));
    CUDA_CHECK(cudaMemset(z->v, 0, sbytes));
    for (int i = 0; i < z->layout.n_buckets; i++) {
        const zero_bucket_t *b = &z->layout.buckets[i];
        const size_t padded = b->slice * (size_t)z->world;
        if (padded != b->hi - b->lo && padded > z->staging_len) z->staging_len = padded;
    }
    if (z->staging_len) CUDA_CHECK(cudaMalloc((void **)&z->staging, z->staging_len * sizeof(float)));

    /* The moments live in the shards: the full-size ones gpt_cuda allocated are not used. */
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    CUDA_CHECK(cudaFree(g->m));
    CUDA_CHECK(cudaFree(g->v));
    g->m = g->v = nullptr;
    g->grads_ready = on_grads_ready;
    g->grads_ready_ctx = z;
    z->frontier = g->n_params;
    z->next_bucket = z->layout.n_buckets - 1;
    CUDA_CHECK(cudaDeviceSynchronize());
    return z;
}

void zero_cuda_free(zero_cuda_t *z) {
    if (!z) return;
    CUDA_CHECK(cudaStreamSynchronize(z->comm_stream));
    CUDA_CHECK(cudaStreamSynchronize(z->g->stream));
    z->g->grads_ready = nullptr;
    z->g->grads_ready_ctx = nullptr;
    NCCL_CHECK(ncclCommDestroy(z->comm));
    CUDA_CHECK(cudaFree(z->grad_shard));
    CUDA_CHECK(cudaFree(z->m));
    CUDA_CHECK(cudaFree(z->v));
    CUDA_CHECK(cudaFree(z->staging));
    CUDA_CHECK(cudaEventDestroy(z->compute_done));
    CUDA_CHECK(cudaEventDestroy(z->comm_done));
    for (int i = 0; i < ZERO_MAX_BUCKETS; i++)
        for (int e = 0; e < 2; e++) {
            CUDA_CHECK(cudaEventDestroy(z->ev_rs[i][e]));
            CUDA_CHECK(cudaEventDestroy(z->ev_ag[i][e]));
        }
    CUDA_CHECK(cudaEventDestroy(z->ev_bwd_end));
    CUDA_CHECK(cudaEventDestroy(z->ev_adam_end));
    CUDA_CHECK(cudaStreamDestroy(z->comm_stream));
    free(z->runs);
    free(z);
}

void zero_cuda_zero_grad(zero_cuda_t *z) {
    compute_after_comm(z); /* the last reduce-scatter may still read the gradients */
    CUDA_CHECK(cudaMemsetAsync(z->g->grads, 0, z->g->n_params * sizeof(float), z->g->stream));
    z->frontier = z->g->n_params;
    z->next_bucket = z->layout.n_buckets - 1;
    z->armed = 0;
    z->reduced = 0;
}

void zero_cuda_backward(zero_cuda_t *z, float scale, int last_micro) {
    if (z->reduced || z->next_bucket != z->layout.n_buckets - 1)
        fatal(EXIT_RUNTIME, "zero_cuda: backward after this step's gradients were reduced (its last micro-batch "
              "already ran): call zero_grad first");
    z->armed = last_micro != 0;
    z->frontier = z->g->n_params;
    gpt_cuda_backward(z->g, scale);
    if (z->armed) CUDA_CHECK(cudaEventRecord(z->ev_bwd_end, z->g->stream));
    z->timed = z->armed;
    z->armed = 0;
    z->overlapped = z->layout.n_buckets - 1 - z->next_bucket;
}

double zero_cuda_grad_norm(zero_cuda_t *z) {
    finish_reduce(z);
    /* The padding of an unevenly divided bucket holds zeros: it adds nothing. */
    const double norm = grad_norm_cuda(z->grad_shard, z->layout.shard_len, z->g->norm_scratch, z->g->stream);
    check_async_error(z);
    if (z->world == 1) return norm; /* nothing to sum */
    double sq = norm * norm;
    dist_allreduce_sum_double(z->dist, &sq, 1);
    return sqrt(sq);
}

void zero_cuda_update(zero_cuda_t *z, const adamw_hparams_t *h, long t, float grad_scale) {
    finish_reduce(z);
    gpt_cuda_t *g = z->g;
    int r = 0;
    for (int bi = 0; bi < z->layout.n_buckets; bi++) {
        for (; r < z->n_runs && z->runs[r].bucket == bi; r++) {
            const zero_run_t *u = &z->runs[r];
            adamw_cuda(g->params + u->flat, g->params_bf16 + u->flat, z->grad_shard + u->shard, z->m + u->shard,
                       z->v + u->shard, u->len, u->decay, h, t, grad_scale, g->stream);
        }
        if (bi == z->layout.n_buckets - 1) CUDA_CHECK(cudaEventRecord(z->ev_adam_end, g->stream));
        comm_after_compute(z); /* this bucket's slice is updated */
        all_gather_bucket(z, bi);
    }
    compute_after_comm(z);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    check_async_error(z);
    read_comm_times(z);
}

void zero_cuda_comm_times(const zero_cuda_t *z, double *comm_ms, double *exposed_ms) {
    *comm_ms = z->comm_ms;
    *exposed_ms = z->exposed_ms;
}

static void sync_both(zero_cuda_t *z) {
    CUDA_CHECK(cudaStreamSynchronize(z->comm_stream));
    CUDA_CHECK(cudaStreamSynchronize(z->g->stream));
}

void zero_cuda_read_moments(zero_cuda_t *z, float *m, float *v) {
    sync_both(z);
    const size_t S = z->layout.shard_len;
    float *all = (float *)xmalloc((size_t)z->world * S * sizeof(float), "moment gather");
    const float *shard[2] = {z->m, z->v};
    float *full[2] = {m, v};
    for (int k = 0; k < 2; k++) {
        if (!full[k]) continue; /* the same on every rank: the caller's arguments */
        CUDA_CHECK(cudaMemcpy(all + (size_t)z->rank * S, shard[k], S * sizeof(float), cudaMemcpyDeviceToHost));
        dist_allgather_float(z->dist, all, S);
        for (int rk = 0; rk < z->world; rk++) zero_put_shard(&z->layout, rk, all + (size_t)rk * S, full[k]);
    }
    free(all);
}

void zero_cuda_write_moments(zero_cuda_t *z, const float *m, const float *v) {
    sync_both(z);
    const size_t S = z->layout.shard_len;
    float *part = (float *)xmalloc(S * sizeof(float), "moment shard");
    float *shard[2] = {z->m, z->v};
    const float *full[2] = {m, v};
    for (int k = 0; k < 2; k++) {
        if (!full[k]) continue;
        zero_take_shard(&z->layout, z->rank, full[k], part);
        CUDA_CHECK(cudaMemcpy(shard[k], part, S * sizeof(float), cudaMemcpyHostToDevice));
    }
    free(part);
}

const zero_layout_t *zero_cuda_layout(const zero_cuda_t *z) { return &z->layout; }

int zero_cuda_overlapped_buckets(const zero_cuda_t *z) { return z->overlapped; }

size_t zero_cuda_device_bytes(const zero_cuda_t *z) {
    return (3 * z->layout.shard_len + z->staging_len) * sizeof(float);
}
