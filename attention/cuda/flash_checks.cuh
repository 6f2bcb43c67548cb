/* Host-side argument checks and kernel parameters shared by the dense (flash_attn.cu) and
 * sparse (sparse_attn.cu) APIs and the benchmark variants: one wording for every message,
 * prefixed with the API's name. */
#ifndef ATTENTION_CUDA_FLASH_CHECKS_CUH
#define ATTENTION_CUDA_FLASH_CHECKS_CUH

#include <math.h>
#include <stdint.h>

#include "attention/cuda/flash_attn.h"
#include "attention/cuda/flash_params.cuh"

extern "C" {
#include "runtime/error.h"
}

namespace flash {

inline void api_check_launch(const char *api, const char *what, cudaError_t err) {
    if (err != cudaSuccess) fatal(EXIT_RUNTIME, "%s: %s: %s", api, what, cudaGetErrorString(err));
}

inline void api_check_ptr(const char *api, const char *what, const void *ptr) {
    if (ptr == NULL || ((uintptr_t)ptr & 15) != 0)
        fatal(EXIT_USAGE, "%s: pointer %s is NULL or not 16-byte aligned", api, what);
}

inline void api_check_stride(const char *api, const char *what, long stride, const flash_attn_dims_t *d) {
    if (stride < (long)d->H * d->D || stride % 8 != 0)
        fatal(EXIT_USAGE, "%s: %s = %ld must be a multiple of 8 and at least H*D = %d", api, what,
              stride, d->H * d->D);
}

/* Sizes, launch-grid limits and strides; the head dims an API supports are its own check. */
inline void api_check_shape(const char *api, const flash_attn_dims_t *d) {
    if (d->B < 1 || d->T < 1 || d->H < 1)
        fatal(EXIT_USAGE, "%s: B = %d, T = %d, H = %d must all be >= 1", api, d->B, d->T, d->H);
    if ((long)d->B * d->H > 0x7fffffffL || d->T > 65535L * 64)
        fatal(EXIT_USAGE, "%s: B*H = %ld or T = %d too large for the launch grid", api,
              (long)d->B * d->H, d->T);
    api_check_stride(api, "q_stride", d->q_stride, d);
    api_check_stride(api, "k_stride", d->k_stride, d);
    api_check_stride(api, "v_stride", d->v_stride, d);
    api_check_stride(api, "o_stride", d->o_stride, d);
    if (((uintptr_t)d->work_counter & 3) != 0) fatal(EXIT_USAGE, "%s: work_counter is not 4-byte aligned", api);
}

/* Shapes and scales of the kernels' parameters; pointers are the caller's to fill. */
inline FlashParams make_params(const flash_attn_dims_t *d) {
    FlashParams p = {};
    p.B = d->B;
    p.T = d->T;
    p.H = d->H;
    p.q_stride = d->q_stride;
    p.k_stride = d->k_stride;
    p.v_stride = d->v_stride;
    p.o_stride = d->o_stride;
    p.work_counter = d->work_counter;
    p.scale = 1.0f / sqrtf((float)d->D);
    p.scale_log2 = p.scale * 1.4426950408889634f;
    return p;
}

/* Workspace sections start on 256-byte boundaries. */
inline size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* The backward's workspace, shared by the dense and sparse APIs: delta (fp32 [B][H][T]), the
 * Hopper kernels' row statistics (float2 [B][H][T] by work row), then, unless deterministic, the
 * fp32 dQ accumulator, sized for the larger of its two layouts: [B][T][H][D] and the fused sm90
 * backward's tiles of 64 rows (dq_tile_index), whose row count T rounds up. */
inline size_t backward_delta_bytes(const flash_attn_dims_t *d) {
    return align256((size_t)d->B * d->T * d->H * sizeof(float));
}
inline size_t backward_row_stats_bytes(const flash_attn_dims_t *d) {
    return align256((size_t)d->B * d->T * d->H * sizeof(float2));
}
inline size_t backward_workspace_bytes(const flash_attn_dims_t *d, int deterministic) {
    const size_t accum = (size_t)d->B * d->H * ((d->T + 63) / 64) * 64 * d->D;
    return backward_delta_bytes(d) + backward_row_stats_bytes(d) + (deterministic ? 0 : align256(accum * sizeof(float)));
}
/* Points p.delta, p.row_stats and p.dq_accum (NULL when deterministic) into a workspace of that size. */
inline void set_backward_workspace(FlashParams &p, const flash_attn_dims_t *d, void *workspace, int deterministic) {
    char *w = static_cast<char *>(workspace);
    p.delta = reinterpret_cast<float *>(w);
    p.row_stats = reinterpret_cast<float2 *>(w + backward_delta_bytes(d));
    p.dq_accum = deterministic ? NULL
                               : reinterpret_cast<float *>(w + backward_delta_bytes(d) + backward_row_stats_bytes(d));
}

} // namespace flash

#endif
