/* Shared by the CUDA backend's files: the bf16 type, error checks that name the failing call,
 * and small device helpers. Every CUDA / cuBLAS call of the backend goes through CUDA_CHECK or
 * CUBLAS_CHECK, and every kernel launch is followed by KERNEL_CHECK, so a failure reports the
 * call, file and line and exits with status 1 (EXIT_RUNTIME). */
#ifndef MODEL_CUDA_CUDA_COMMON_CUH
#define MODEL_CUDA_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "runtime/error.h"
}

typedef __nv_bfloat16 bf16;

static inline void cuda_check_impl(cudaError_t err, const char *call, const char *file, int line) {
    if (err != cudaSuccess)
        fatal(EXIT_RUNTIME, "%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorString(err),
              cudaGetErrorName(err));
}

static inline void cublas_check_impl(cublasStatus_t st, const char *call, const char *file,
                                     int line) {
    if (st != CUBLAS_STATUS_SUCCESS)
        fatal(EXIT_RUNTIME, "%s:%d: %s failed: %s", file, line, call, cublasLtGetStatusString(st));
}

#define CUDA_CHECK(call) cuda_check_impl((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check_impl((call), #call, __FILE__, __LINE__)
/* Launch errors (bad configuration) surface at once; faults inside a kernel surface at the next
 * synchronising call, which is checked too. */
#define KERNEL_CHECK(name) cuda_check_impl(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)

static inline unsigned ceil_div_u(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

#ifdef __CUDACC__
/* Sum over the 32 lanes of a warp; every lane gets the result (fixed order: deterministic). */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* 8 consecutive bf16 (16 bytes, one vector load/store) to and from fp32 registers. The pointer
 * must be 16-byte aligned: rows are multiples of 8 elements in 256-byte aligned buffers. */
__device__ __forceinline__ void load8(float (&f)[8], const bf16 *p) {
    const uint4 raw = *reinterpret_cast<const uint4 *>(p);
    const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
    for (int j = 0; j < 8; j++) f[j] = __bfloat162float(h[j]);
}
__device__ __forceinline__ void store8(bf16 *p, const float (&f)[8]) {
    uint4 raw;
    bf16 *h = reinterpret_cast<bf16 *>(&raw);
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = __float2bfloat16(f[j]);
    *reinterpret_cast<uint4 *>(p) = raw;
}
#endif

#endif
