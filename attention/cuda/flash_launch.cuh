/* Host-side launchers of the flash kernels for one tile configuration and one policy. The
 * public API (flash_attn.cu) picks the configurations; benchmarks may instantiate others. */
#ifndef ATTENTION_CUDA_FLASH_LAUNCH_CUH
#define ATTENTION_CUDA_FLASH_LAUNCH_CUH

#include <cuda_runtime.h>

#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_fwd.cuh"

namespace flash {

/* Kernels using more than 48 KB of dynamic shared memory must say so once. */
template <class Kernel> inline cudaError_t allow_smem(Kernel kernel, int bytes) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* Grids: x = (batch, head), so that every head's longest tiles start first; y = tile. */
template <class Cfg, class Policy>
cudaError_t launch_fwd(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    auto kernel = flash_fwd_kernel<Cfg, Policy>;
    static cudaError_t attr = allow_smem(kernel, Cfg::SMEM_BYTES);
    if (attr != cudaSuccess) return attr;
    dim3 grid(p.B * p.H, (q_rows + Cfg::BM - 1) / Cfg::BM);
    kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, s>>>(p, pol);
    return cudaGetLastError();
}

template <int D> cudaError_t launch_bwd_preprocess(const FlashParams &p, cudaStream_t s) {
    const long rows = (long)p.B * p.T * p.H, threads = rows * (D / 8);
    flash_bwd_preprocess_kernel<D><<<(unsigned)((threads + 255) / 256), 256, 0, s>>>(p, rows);
    return cudaGetLastError();
}

template <int D> cudaError_t launch_bwd_convert_dq(const FlashParams &p, cudaStream_t s) {
    const long rows = (long)p.B * p.T * p.H, threads = rows * (D / 8);
    flash_bwd_convert_dq_kernel<D><<<(unsigned)((threads + 255) / 256), 256, 0, s>>>(p, rows);
    return cudaGetLastError();
}

template <class Cfg, class Policy, bool ATOMIC_DQ, bool KV_REGS>
cudaError_t launch_bwd_dkdv(const FlashParams &p, const Policy &pol, int k_rows, cudaStream_t s) {
    auto kernel = flash_bwd_dkdv_kernel<Cfg, Policy, ATOMIC_DQ, KV_REGS>;
    static cudaError_t attr = allow_smem(kernel, Cfg::SMEM_BYTES);
    if (attr != cudaSuccess) return attr;
    dim3 grid(p.B * p.H, (k_rows + Cfg::BN - 1) / Cfg::BN);
    kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, s>>>(p, pol);
    return cudaGetLastError();
}

template <class Cfg, class Policy>
cudaError_t launch_bwd_dq(const FlashParams &p, const Policy &pol, int q_rows, cudaStream_t s) {
    auto kernel = flash_bwd_dq_kernel<Cfg, Policy>;
    static cudaError_t attr = allow_smem(kernel, Cfg::SMEM_BYTES);
    if (attr != cudaSuccess) return attr;
    dim3 grid(p.B * p.H, (q_rows + Cfg::BM - 1) / Cfg::BM);
    kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, s>>>(p, pol);
    return cudaGetLastError();
}

} // namespace flash

#endif
