/* Data-parallel optimizer state for the CUDA backend: ZeRO-1 over NCCL.
 *
 * Every rank holds the full model (fp32 master parameters, their bf16 copies, fp32 gradients);
 * the AdamW moments and the summed gradients exist only for this rank's shard. A step:
 *   backward      each rank accumulates its own micro-batches' gradients (gpt_cuda);
 *   reduce        NCCL reduce-scatters (sum) the gradients, bucket by bucket, into grad_shard;
 *                 on the step's last micro-batch each bucket starts as soon as the backward has
 *                 queued the kernels that finish it (gpt_cuda's grads_ready hook), on a
 *                 communication stream, so it overlaps the backward of the layers below;
 *   grad norm     sum of squares of the shard, summed over ranks;
 *   update        AdamW on this rank's slice of every bucket, then an in-place NCCL all-gather
 *                 of the fp32 masters of that bucket and a refresh of its bf16 copies (the
 *                 all-gather of bucket b overlaps the AdamW of bucket b + 1).
 *
 * Shard layout ("per bucket"). The flat parameter vector (model/gpt.h) is cut into buckets at
 * the boundaries of the backward's gradient-ready ranges (wte+wpe | layer 0 | ... | layer L-1 |
 * lnf), each boundary rounded up to a multiple of the world size, so every bucket except
 * possibly the last (lnf) divides evenly by the world size. Bucket b = [lo, hi) has
 * slice = ceil((hi - lo) / world) elements per rank; rank r owns [lo + r * slice, lo + (r + 1)
 * * slice) clipped to hi. A rank's shard arrays (grad_shard, m, v) are its slices of all
 * buckets, in bucket order: bucket b's slice starts at shard_pos. A bucket that does not divide
 * evenly goes through a zero-padded staging buffer (NCCL needs equal counts per rank). With
 * one rank the shard is the whole vector in its own order, so every kernel sees exactly what
 * the single-GPU path sees (bit-identical steps, tests/gpu/test_zero_cuda.cu).
 * Checkpoints are unchanged: read_state gathers the moments into full flat arrays. */
#ifndef MODEL_CUDA_ZERO_CUDA_H
#define MODEL_CUDA_ZERO_CUDA_H

#include "model/cuda/gpt_cuda.h"

extern "C" {
#include "model/optim.h"
#include "runtime/dist.h"
}

#define ZERO_MAX_BUCKETS (GPT_MAX_LAYERS + 2)

typedef struct {
    size_t lo, hi;    /* flat parameter range */
    size_t slice;     /* elements per rank: ceil((hi - lo) / world) */
    size_t shard_pos; /* where each rank's slice of this bucket starts in its shard arrays */
} zero_bucket_t;

typedef struct {
    int world;
    size_t n;         /* parameters */
    int n_buckets;    /* buckets, ascending lo, none empty */
    zero_bucket_t buckets[ZERO_MAX_BUCKETS];
    size_t shard_len; /* sum of the slices: length of each rank's shard arrays */
} zero_layout_t;

/* One AdamW launch: a run of this rank's slice with one weight-decay flag. */
typedef struct {
    int bucket;
    size_t flat;  /* first parameter (flat offset) */
    size_t shard; /* its position in the shard arrays */
    size_t len;
    int decay;
} zero_run_t;

/* Buckets from the ascending starts of the gradient-ready ranges (starts[0] == 0, each < n). */
void zero_layout_build(zero_layout_t *z, size_t n, const size_t *starts, int n_starts, int world);
/* Rank r's slice of a bucket: first flat offset and length (0 when it lies past hi). */
size_t zero_slice_begin(const zero_bucket_t *b, int rank);
size_t zero_slice_len(const zero_bucket_t *b, int rank);
/* Host copies between a full flat array [n] and rank r's shard [shard_len] (padding zeroed). */
void zero_take_shard(const zero_layout_t *z, int rank, const float *full, float *shard);
void zero_put_shard(const zero_layout_t *z, int rank, const float *shard, float *full);
/* AdamW runs of rank r: tensors split at bucket-slice edges, consecutive tensors of one decay
 * flag merged. Fills out (if not NULL); returns the number of runs. */
int zero_update_runs(const zero_layout_t *z, int rank, const gpt_tensor_t *tensors, int n_tensors,
                     zero_run_t *out);

typedef struct zero_cuda zero_cuda_t;

/* Takes over g's optimizer side: creates the NCCL communicator (rank 0's id broadcast through
 * dist, a collective), the shard buffers (zero moments), and installs the grads_ready hook;
 * frees g->m and g->v (the full-size moments the single-GPU path uses). The caller has
 * selected this rank's GPU before creating g. */
zero_cuda_t *zero_cuda_create(gpt_cuda_t *g, const dist_t *dist);
void zero_cuda_free(zero_cuda_t *z);

/* Waits for the previous step's communication, clears the gradients and the reduce state. */
void zero_cuda_zero_grad(zero_cuda_t *z);
/* gpt_cuda_backward; with last_micro the buckets' reduce-scatters start during it (no further
 * backward may follow before zero_grad). */
void zero_cuda_backward(zero_cuda_t *z, float scale, int last_micro);
/* Completes the reduce-scatter (collective) and returns the global gradient norm. */
double zero_cuda_grad_norm(zero_cuda_t *z);
/* AdamW on this rank's shard, then all-gather of the parameters (collective); returns when the
 * updated parameters and their bf16 copies are in place on this GPU. */
void zero_cuda_update(zero_cuda_t *z, const adamw_hparams_t *h, long t, float grad_scale);
/* Full host arrays [n] of the moments (collective: gathered from every rank); NULL skips. */
void zero_cuda_read_moments(zero_cuda_t *z, float *m, float *v);
/* This rank's shard of full host arrays [n]; NULL skips. */
void zero_cuda_write_moments(zero_cuda_t *z, const float *m, const float *v);

const zero_layout_t *zero_cuda_layout(const zero_cuda_t *z);
/* Buckets whose reduce-scatter the last backward queued before it returned (all of them when
 * it was the step's last micro-batch and gpt_cuda reported its gradient ranges). */
int zero_cuda_overlapped_buckets(const zero_cuda_t *z);
/* The last step's collectives (CUDA event times, milliseconds): comm = the reduce-scatters' and
 * all-gathers' time on the communication stream; exposed = the part the compute stream waited
 * for (reduce-scatters running past the end of the last backward, all-gathers past the last
 * AdamW). -1 before the first step whose last micro-batch was marked (zero_cuda_backward). */
void zero_cuda_comm_times(const zero_cuda_t *z, double *comm_ms, double *exposed_ms);
/* Device bytes of the shard buffers and the staging buffer. */
size_t zero_cuda_device_bytes(const zero_cuda_t *z);

#endif
