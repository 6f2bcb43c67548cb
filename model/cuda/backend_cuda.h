/* The CUDA backend's own switches (its constructor, backend_cuda_create, is declared with the
 * other backends in model/backend.h). Callable from C. */
#ifndef MODEL_CUDA_BACKEND_CUDA_H
#define MODEL_CUDA_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "model/backend.h"

/* The data-parallel CUDA backend: this rank's GPU is dist->local_rank (EXIT_USAGE when the host
 * runs more ranks than it has GPUs); gradients are reduce-scattered over NCCL and each rank
 * keeps the AdamW moments of its shard only (ZeRO-1, model/cuda/zero_cuda.h). Collective: every
 * rank of dist calls it. Works with one rank too (the NCCL path on one GPU). dist must outlive
 * the backend. Setting backend_t.last_micro before the step's last backward overlaps the
 * gradient reduce-scatter with that backward. */
backend_t *backend_cuda_create_dist(const gpt_config_t *cfg, int B, int T, const dist_t *dist);

/* deterministic != 0: every op of a step is bit-reproducible run to run on the same GPU. All
 * of the backend's own kernels and matmuls always are; this switch selects flash attention's
 * deterministic backward (dQ without atomics, somewhat slower). Default: off
 * (train.deterministic in the config). */
void backend_cuda_set_deterministic(backend_t *b, int deterministic);

/* Bytes of device memory the backend allocated (parameters, optimizer state, gradients,
 * activations and workspaces), for logs and benchmarks. */
size_t backend_cuda_device_bytes(backend_t *b);

#ifdef __cplusplus
}
#endif

#endif
