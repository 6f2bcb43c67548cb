/* Device primitives shared by the flash attention kernels (sm_80+ instructions only, so the
 * portable mma.sync path builds for any GPU from Ampere on):
 *   - cp.async 16-byte global->shared copies with zero fill for rows past the end,
 *   - ldmatrix (plain and transposed) and the m16n8k16 bf16 tensor-core product,
 *   - the swizzled shared-memory tile layout all kernels use.
 *
 * Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4):
 *   A 16x16: a0 (row g, cols 2t..2t+1), a1 (row g+8, same), a2 (row g, cols 2t+8..),
 *            a3 (row g+8, cols 2t+8..)
 *   B 16x8:  b0 (k rows 2t..2t+1, col g), b1 (k rows 2t+8.., col g)
 *   C 16x8:  c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
 * An accumulator pair of n-tiles (2j, 2j+1) therefore becomes, packed to bf16, the A fragment
 * of k-block j of the next product (used for P.V and dS.K without going through memory). */
#ifndef ATTENTION_CUDA_FLASH_COMMON_CUH
#define ATTENTION_CUDA_FLASH_COMMON_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace flash {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Copies 16 bytes; when !valid the destination is zero-filled and nothing is read (src must
 * still be a mapped address). Zeros matter: a garbage NaN in a V row past the end would turn
 * 0 * NaN into NaN in P.V even though its probability is 0. */
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void *src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* c += a * b, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats to one bf16x2 register, `lo` in the low half (the lower column index). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* 2^x, approximate (one MUFU op); 2^-inf = 0. */
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* Shared-memory tile of rows of COLS bf16 (COLS a multiple of 64). Rows are made of 16-byte
 * chunks; chunk c of row r is stored at chunk c ^ (r % 8), so the 8 row addresses of one
 * ldmatrix (8 rows, same logical chunk) fall into 8 different bank groups, plain or transposed. */
template <int COLS> struct SwizzledTile {
    static_assert(COLS % 64 == 0, "swizzle needs at least 8 chunks per row");
    static constexpr int CHUNKS = COLS / 8;
    /* Element offset of (row, first element of chunk). */
    __device__ static __forceinline__ int offset(int row, int chunk) {
        return row * COLS + ((chunk ^ (row & 7)) << 3);
    }
    /* Element offset of (row, col) for col even: the bf16x2 pair stays inside one chunk. */
    __device__ static __forceinline__ int offset_col(int row, int col) {
        return offset(row, col >> 3) + (col & 7);
    }
};

/* Asynchronously copies ROWS rows of a tile: tile row r (valid while r < n_valid) comes from
 * global row row_of(r) of `base` (row stride `stride` elements), D bf16 per row. Rows at or
 * past n_valid are zero-filled. Consecutive threads take consecutive 16-byte chunks of a row,
 * so a warp reads whole rows. */
template <int ROWS, int D, int THREADS, class RowOf>
__device__ __forceinline__ void load_tile_async(bf16 *tile, const bf16 *base, long stride,
                                                int n_valid, RowOf row_of) {
    constexpr int CHUNKS = D / 8, TOTAL = ROWS * CHUNKS;
    const uint32_t tile_addr = smem_addr(tile);
#pragma unroll
    for (int i = 0; i < (TOTAL + THREADS - 1) / THREADS; i++) {
        int id = i * THREADS + (int)threadIdx.x;
        if (TOTAL % THREADS != 0 && id >= TOTAL) break;
        int r = id / CHUNKS, c = id % CHUNKS;
        bool valid = r < n_valid;
        const bf16 *src = base + (valid ? (long)row_of(r) * stride : 0) + c * 8;
        cp_async_16(tile_addr + 2u * (uint32_t)SwizzledTile<D>::offset(r, c), src, valid);
    }
}

/* The same copy split in two, so that a sparse policy's row lookups (global loads of the
 * plan's permutation) can be issued a tile ahead of the copies that need them: fetch_tile_rows
 * reads the global row of each chunk this thread will copy, load_tile_rows issues the copies.
 * Chunk i of this thread is id = i * THREADS + threadIdx.x, as in load_tile_async. */
template <int ROWS, int D, int THREADS> struct TileRows {
    static constexpr int CHUNKS = D / 8, TOTAL = ROWS * CHUNKS;
    static constexpr int N = (TOTAL + THREADS - 1) / THREADS;
    int row[N]; /* global row of chunk i, 0 when past n_valid */
    int n_valid;
};

template <int ROWS, int D, int THREADS, class RowOf>
__device__ __forceinline__ void fetch_tile_rows(TileRows<ROWS, D, THREADS> &t, int n_valid,
                                                RowOf row_of) {
    typedef TileRows<ROWS, D, THREADS> TR;
    t.n_valid = n_valid;
#pragma unroll
    for (int i = 0; i < TR::N; i++) {
        const int id = i * THREADS + (int)threadIdx.x, r = id / TR::CHUNKS;
        t.row[i] = (id < TR::TOTAL && r < n_valid) ? row_of(r) : 0;
    }
}

template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile_rows(bf16 *tile, const bf16 *base, long stride,
                                               const TileRows<ROWS, D, THREADS> &t) {
    typedef TileRows<ROWS, D, THREADS> TR;
    const uint32_t tile_addr = smem_addr(tile);
#pragma unroll
    for (int i = 0; i < TR::N; i++) {
        const int id = i * THREADS + (int)threadIdx.x;
        if (TR::TOTAL % THREADS != 0 && id >= TR::TOTAL) break;
        const int r = id / TR::CHUNKS, c = id % TR::CHUNKS;
        const bool valid = r < t.n_valid;
        cp_async_16(tile_addr + 2u * (uint32_t)SwizzledTile<D>::offset(r, c),
                    base + (long)t.row[i] * stride + c * 8, valid);
    }
}

} // namespace flash

#endif
