/* Arguments of every flash kernel, passed by value. */
#ifndef ATTENTION_CUDA_FLASH_PARAMS_CUH
#define ATTENTION_CUDA_FLASH_PARAMS_CUH

#include "attention/cuda/flash_common.cuh"

namespace flash {

struct FlashParams {
    /* [B][T][H][D] with row strides below: element (b, t, h, d) at (b*T + t)*stride + h*D + d.
     * Gradients share their input's stride (dq: q_stride, ...); dout shares o_stride. */
    const bf16 *q, *k, *v;
    bf16 *out;
    const bf16 *dout;
    bf16 *dq, *dk, *dv;
    long q_stride, k_stride, v_stride, o_stride;
    float *lse;      /* [B][H][T], natural log */
    float *delta;    /* [B][H][T], rowsum(dout * out), backward only */
    float2 *row_stats; /* [B][H][T] by work row: (lse * log2(e), delta); Hopper dK/dV producers (flash_bwd_prepare_kernel) */
    float *dq_accum; /* fp32, non-deterministic backward: [B][T][H][D], or tiles (dq_tile_index) */
    int *work_counter; /* persistent launches: work items handed out so far (launch_ws zeroes it) */
    int B, T, H;
    int head_group;   /* warp-specialised kernels: heads whose tiles run together (flash_ws.cuh); launch_ws sets it */
    float scale;      /* 1 / sqrt(D) */
    float scale_log2; /* scale * log2(e): scores go through exp2 */
};

/* Pointer to (b, row 0, h) of a tensor; rows are then `stride` apart. */
template <class Ptr>
__device__ __forceinline__ Ptr head_base(Ptr p, long stride, int b, int T, int h, int D) {
    return p + (long)b * T * stride + (long)h * D;
}

} // namespace flash

#endif
