/* The CUDA backend's own switches (its constructor, backend_cuda_create, is declared with the
 * other backends in model/backend.h). Callable from C. */
#ifndef MODEL_CUDA_BACKEND_CUDA_H
#define MODEL_CUDA_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "model/backend.h"

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
