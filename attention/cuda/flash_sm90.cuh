/* Hopper (sm_90a) primitives: warpgroup matrix products (wgmma) on shared-memory tiles in
 * the 128-byte swizzled layout, and the fences they need.
 *
 * Tiles are SwizzledTile<64> (rows of 64 bf16 = 128 bytes, 16-byte chunk c of row r stored at
 * chunk c ^ (r % 8)) placed at 1024-byte aligned addresses: exactly the canonical 128B-swizzle
 * layout of wgmma, so the same tiles serve ldmatrix (mma.sync path) and wgmma.
 * Descriptors (PTX "matrix descriptor"): start address, leading/stride byte offsets, mode 1
 * (128B swizzle). For a tile whose rows are 128 bytes:
 *   K-major operand (rows = M or N, 64 contiguous K values a row): SBO = 1024 (8 rows),
 *     LBO unused; k-step j of 16 starts 32*j bytes into the rows.
 *   MN-major operand (rows = K, 64 contiguous M or N values a row; trans flag 1): SBO = 1024
 *     (8 K-rows), LBO unused (M or N is one 64-wide swizzle atom); k-step j starts 2048*j bytes.
 * Accumulators of m64nN: warp w of the warpgroup holds rows 16w..16w+15 in the mma.m16n8
 * C layout, n-tile j = accumulators 4j..4j+3. Register A operands use the m16n8k16 A layout. */
#ifndef ATTENTION_CUDA_FLASH_SM90_CUH
#define ATTENTION_CUDA_FLASH_SM90_CUH

#include <stdint.h>

namespace flash {
namespace sm90 {

/* The descriptor's high word: stride byte offset 1024 >> 4 (8 rows of 128 bytes), mode 1 << 30
 * (128B swizzle). Its low word: start address >> 4 in bits 0-13, leading byte offset 1 (unused
 * for these layouts) at bit 16. */
constexpr uint32_t DESC_SW128_HI = (1u << 30) | (1024u >> 4);

/* A descriptor kept as its low word, so that the operands at constant offsets from one base
 * cost an add each: built from the address per operand, a descriptor took ~6 uniform-datapath
 * instructions (add, mask, shift, or, two moves), ~250 of the fused backward's ~635 a warp and
 * tile (ncu, session 11). Offsets are multiples of 16 bytes and shared addresses stay below
 * 2^18, so the start field never carries into the leading byte offset. */
struct DescSw128 {
    uint32_t lo;
    __device__ __forceinline__ static DescSw128 of(uint32_t smem_byte_addr) {
        return DescSw128{((smem_byte_addr & 0x3FFFFu) >> 4) | (1u << 16)};
    }
    /* the descriptor of the operand `bytes` further (bytes % 16 == 0) */
    __device__ __forceinline__ DescSw128 operator+(uint32_t bytes) const { return DescSw128{lo + (bytes >> 4)}; }
    __device__ __forceinline__ uint64_t at(uint32_t bytes) const {
        return ((uint64_t)DESC_SW128_HI << 32) | (lo + (bytes >> 4));
    }
};

/* One operand's descriptor from its address (the kernels before DescSw128). */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t smem_byte_addr) { return DescSw128::of(smem_byte_addr).at(0); }

/* Orders this thread's earlier register writes (accumulators, A fragments) before wgmma. */
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving reads of accumulators above the wait that completes them. */
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_regs_u32(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}
/* Stores four 8 x 8 bf16 matrices (the inverse of ldmatrix.x4): lane t gives the shared address
 * of row t % 8 of matrix t / 8 (16 bytes), and register j holds matrix j's elements (row
 * lane / 4, columns 2 (lane % 4), +1): an mma A fragment's layout. */
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t r[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
                 "r"(r[2]), "r"(r[3])
                 : "memory");
}
/* x, which the compiler may no longer treat as loop-invariant: values derived from it in a loop
 * (wgmma descriptors) are recomputed each time instead of held in registers across it. */
__device__ __forceinline__ uint32_t opaque_u32(uint32_t x) {
    asm volatile("" : "+r"(x));
    return x;
}
/* Shared memory written by ordinary stores or cp.async must be fenced before the tensor cores
 * (async proxy) read it; each writing thread fences, then a barrier. */
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
/* Barrier over `threads` threads (a warpgroup: 128) with its own id (1..15; 0 = __syncthreads). */
__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
/* Arrives on a named barrier without waiting (the waiting side uses named_barrier). */
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* Warp-specialised kernels rebalance the register file between warpgroups: a producer gives
 * registers back, consumers take them (all warps of the warpgroup execute it; N % 8 == 0). */
template <int N> __device__ __forceinline__ void regs_dealloc() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void regs_alloc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

/* mbarriers (PTX "mbarrier"): a 64-bit shared-memory object counting arrivals of its current
 * phase; when `count` arrivals have happened the phase completes and its parity flips. A
 * waiter names the parity of the phase it waits for (0 for the first use, then 1, 0, ...). */
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/* Arrive with release semantics: this thread's earlier shared-memory writes are visible to
 * the threads whose wait completes the phase. */
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/* Arrive once every cp.async this thread issued so far has landed (counts as one of the
 * phase's arrivals: .noinc). */
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile(
        "{\n.reg .pred done;\n"
        "MBAR_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra MBAR_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

/* d (+)= A . B, A and B from shared memory; 32 accumulators a thread. */
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float d[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

/* d (+)= A . B, A and B from shared memory; 64 accumulators a thread. */
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float d[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

/* d (+)= A . B, A and B from shared memory; 16 accumulators a thread. */
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n32k16_ss(float d[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

/* Bulk reduction (TMA engine): global[dst .. dst + bytes) += shared[src ..] as f32, one
 * instruction for a whole contiguous tile; bytes % 16 == 0, both addresses 16-byte aligned.
 * Completion is tracked per thread in bulk groups: commit, then wait until the source may be
 * overwritten (.read) before reusing the shared buffer. */
__device__ __forceinline__ void bulk_reduce_add_f32(float *dst, uint32_t src, int bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}

/* d (+)= A . B, A from registers (mma.m16n8k16 A layout per warp), B from shared memory. */
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float d[32], const uint32_t a[4], uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(TRANS_B));
}

} // namespace sm90
} // namespace flash

#endif
