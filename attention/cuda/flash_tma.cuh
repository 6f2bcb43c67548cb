/* Q, K, V (and dO) tiles by the tensor memory accelerator (TMA) for the dense Hopper kernels:
 * in the forward one producer thread asks for a whole BN x 64 tile of K and one of V per stage
 * (and the item's BM x 64 tile of Q), instead of 128 threads issuing 2 x BN x 8 cp.async
 * copies with their own address arithmetic; in the backward, the dK/dV kernel's K and V item
 * and Q/dO stages (fused or not), and the deterministic dQ pass's Q/dO item and K/V stages.
 *
 * Why (docs/PERF.md, session 17): in the three-warpgroup forward at 16k the producer warpgroup
 * (24 registers) spilled in its tile loop and the consumers waited for a K/V stage in 3.8% of
 * the stall samples. The dense policy's key rows are contiguous (k_row(bh, c) = c), which is
 * what a tensor copy needs; the sparse policies gather rows and keep cp.async.
 *
 * A tensor map sees Q, K, V or dO as a 3-D tensor {H * D, T, B} of bf16 with its row stride: a
 * box {64, BN, 1} at (h * 64, k0, b) is key rows k0 .. k0 + BN - 1 of head h,
 * rows past T zero-filled by the hardware (a zero V row keeps 0 * V finite, as cp_async_16's
 * zero fill does). The 128-byte swizzle of the map puts 16-byte chunk c of row r at chunk
 * c ^ (r % 8) of the 1024-byte aligned stage: SwizzledTile<64>, the layout wgmma reads.
 *
 * A stage's full barrier then counts 129 arrivals: producer thread 0's arrive.expect_tx
 * (with the tile pair's bytes, completed by the copies) and every producer thread's arrival
 * after its ordinary stores (mask info, tile description); Q's full barrier one, thread 0's
 * arrive.expect_tx after it stored the item's index (persistent CTAs). */
#ifndef ATTENTION_CUDA_FLASH_TMA_CUH
#define ATTENTION_CUDA_FLASH_TMA_CUH

#include <cuda.h> /* CUtensorMap and its enums (types only: the encoder comes from the runtime) */
#include <cuda_runtime.h>

#include "attention/cuda/flash_params.cuh"
#include "attention/cuda/flash_policy.cuh"

namespace flash {

constexpr int TMA_STAGE_ARRIVALS = 129, TMA_ITEM_ARRIVALS = 1;

/* Q and dO in boxes of the query tile's rows, K and V of the key tile's; a kernel parameter
 * (__grid_constant__), read in place. dout: the backward's only. */
struct TmaMaps {
    CUtensorMap q, k, v, dout;
};

/* DenseCausalPolicy whose producers load their tiles by TMA from `maps`. */
struct DenseCausalTmaPolicy : DenseCausalPolicy {
    static constexpr bool TMA = true;
    TmaMaps maps;
};

namespace sm90 {

/* Arrives on bar and adds `bytes` to the transactions its current phase waits for. */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* The box of `map` at (x, y, z) into shared memory at dst; completes its bytes on bar. */
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int x, int y, int z) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
        "l"(map), "r"(bar), "r"(x), "r"(y), "r"(z)
        : "memory");
}
/* A producer's one thread: arrives on bar expecting `bytes`, then loads the tile of head h,
 * rows row0.., batch b from map a into dst_a and, when b_map is set, the same tile of b_map
 * into dst_b (K and V, Q and dO); bytes covers both. */
__device__ __forceinline__ void tma_load_tiles(uint32_t bar, uint32_t bytes, uint32_t dst_a, const CUtensorMap *a_map,
                                               uint32_t dst_b, const CUtensorMap *b_map, int h, int row0, int b) {
    mbar_arrive_expect_tx(bar, bytes);
    tma_load_3d(dst_a, a_map, bar, h * 64, row0, b);
    if (b_map) tma_load_3d(dst_b, b_map, bar, h * 64, row0, b);
}

} // namespace sm90

/* cuTensorMapEncodeTiled, a driver function, through the runtime's entry-point lookup (so that
 * nothing links libcuda); NULL if the driver has none. */
typedef CUresult (*TensorMapEncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                         const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                         CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                         CUtensorMapFloatOOBfill);
inline TensorMapEncodeTiled tensor_map_encoder() {
    static TensorMapEncodeTiled fn = nullptr;
    static bool asked = false;
    if (!asked) {
        asked = true;
        void *ptr = nullptr;
        cudaDriverEntryPointQueryResult found;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found) ==
                cudaSuccess &&
            found == cudaDriverEntryPointSuccess)
            fn = (TensorMapEncodeTiled)ptr;
    }
    return fn;
}

/* The map of one of Q, K, V ([B][T][H][64] with row stride `stride` elements) for boxes of
 * `rows` rows of one head. */
inline cudaError_t encode_head_map(CUtensorMap *map, const bf16 *base, long stride, const FlashParams &p, int rows) {
    const TensorMapEncodeTiled encode = tensor_map_encoder();
    if (!encode) return cudaErrorNotSupported;
    if (((uintptr_t)base % 16) || (stride * 2) % 16) return cudaErrorMisalignedAddress;
    const cuuint64_t dims[3] = {(cuuint64_t)p.H * 64, (cuuint64_t)p.T, (cuuint64_t)p.B};
    const cuuint64_t strides[2] = {(cuuint64_t)stride * 2, (cuuint64_t)stride * 2 * p.T}; /* bytes, dims 1 and 2 */
    const cuuint32_t box[3] = {64, (cuuint32_t)rows, 1}, elem_strides[3] = {1, 1, 1};
    const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<bf16 *>(base), dims, strides, box,
                              elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

/* The TMA policy of a dense kernel of BM-query, BN-key tiles (dO's map when p.dout is set). */
inline cudaError_t make_tma_policy(DenseCausalTmaPolicy &tp, const DenseCausalPolicy &pol, const FlashParams &p,
                                   int BM, int BN) {
    static_cast<DenseCausalPolicy &>(tp) = pol;
    cudaError_t err = encode_head_map(&tp.maps.q, p.q, p.q_stride, p, BM);
    if (err == cudaSuccess) err = encode_head_map(&tp.maps.k, p.k, p.k_stride, p, BN);
    if (err == cudaSuccess) err = encode_head_map(&tp.maps.v, p.v, p.v_stride, p, BN);
    if (err == cudaSuccess && p.dout) err = encode_head_map(&tp.maps.dout, p.dout, p.o_stride, p, BM);
    return err;
}

} // namespace flash

#endif
