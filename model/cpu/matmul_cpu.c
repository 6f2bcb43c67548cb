/* matmul_forward / matmul_backward of the CPU reference on one blocked GEMM kernel.
 *
 * All three products of a linear layer are C[M][N] (+)= A[M][K] B[K][N] with A and B read
 * through strides, so transposes cost nothing:
 *   forward  out   = inp  . W^T   (M = rows, N = OC, K = IC)
 *   dinp    += dout . W           (M = rows, N = IC, K = OC)
 *   dweight += dout^T . inp       (M = OC,   N = IC, K = rows)
 * Goto-style blocking: B is packed per (KC x NC) block into NR-wide panels (fits L2, read
 * contiguously), and a MR x NR register tile of C is accumulated over the whole KC block.
 * Threads split the rows of C, each packing its own B block (cost KC*NC against
 * rows/threads*KC*NC multiply-adds), so no barriers and no two threads write one element.
 * Every element of C is summed in the same order whatever the thread count: results are
 * bit-identical for any OMP_NUM_THREADS, and also across the ISA variants below (no FMA
 * contraction under -std=c11, and vector width does not change per-element order).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "model/cpu/ops_cpu.h"
#include "runtime/error.h"

#define GEMM_MR 6    /* rows of the register tile */
#define GEMM_NR 16   /* columns of the register tile: one 512-bit vector */
#define GEMM_KC 256  /* depth of a packed block */
#define GEMM_NC 1024 /* columns of a packed block (multiple of GEMM_NR): KC*NC floats = 1 MiB */

typedef float vec_nr __attribute__((vector_size(GEMM_NR * sizeof(float))));

/* Element (r, c) of a strided matrix is p[r * rs + c * cs]. */
typedef struct {
    const float *p;
    ptrdiff_t rs, cs;
} strided_t;

static inline __attribute__((always_inline)) float at(strided_t m, ptrdiff_t r, ptrdiff_t c) {
    return m.p[r * m.rs + c * m.cs];
}

/* Packs rows k0..k0+kc and columns n0..n0+nc of B into panels [nc/NR][kc][NR], zero-padding
 * the last panel so the micro-kernel never needs a column edge case. */
static inline __attribute__((always_inline)) void pack_b(float *dst, strided_t B, int k0, int kc,
                                                         int n0, int nc) {
    for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
        const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        float *panel = dst + (size_t)(j0 / GEMM_NR) * (size_t)kc * GEMM_NR;
        if (B.cs == 1) { /* rows of B contiguous: read along them */
            for (int k = 0; k < kc; k++)
                for (int j = 0; j < GEMM_NR; j++)
                    panel[k * GEMM_NR + j] = j < nr ? at(B, k0 + k, n0 + j0 + j) : 0.0f;
        } else { /* columns of B contiguous (a transposed weight): read down them */
            for (int j = 0; j < GEMM_NR; j++)
                for (int k = 0; k < kc; k++)
                    panel[k * GEMM_NR + j] = j < nr ? at(B, k0 + k, n0 + j0 + j) : 0.0f;
        }
    }
}

/* C tile (mr x nr at c, row stride ldc) (+)= A rows a .. (strided) x packed panel bp over kc.
 * Rows past mr re-read the last valid row (always in bounds) and are not stored. */
static inline __attribute__((always_inline)) void micro_kernel(int mr, int nr, int kc,
                                                               const float *a, ptrdiff_t a_rs,
                                                               ptrdiff_t a_ks, const float *bp,
                                                               float *c, ptrdiff_t ldc, int add) {
    const float *a0 = a, *a1 = a + (mr > 1 ? 1 : 0) * a_rs, *a2 = a + (mr > 2 ? 2 : mr - 1) * a_rs,
                *a3 = a + (mr > 3 ? 3 : mr - 1) * a_rs, *a4 = a + (mr > 4 ? 4 : mr - 1) * a_rs,
                *a5 = a + (mr > 5 ? 5 : mr - 1) * a_rs;
    vec_nr c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
    for (int k = 0; k < kc; k++) {
        vec_nr b;
        memcpy(&b, bp + (size_t)k * GEMM_NR, sizeof b);
        const ptrdiff_t o = k * a_ks;
        c0 += b * a0[o];
        c1 += b * a1[o];
        c2 += b * a2[o];
        c3 += b * a3[o];
        c4 += b * a4[o];
        c5 += b * a5[o];
    }
    const vec_nr acc[GEMM_MR] = {c0, c1, c2, c3, c4, c5};
    for (int r = 0; r < mr; r++) {
        float *row = c + r * ldc;
        if (add)
            for (int j = 0; j < nr; j++) row[j] += acc[r][j];
        else
            for (int j = 0; j < nr; j++) row[j] = acc[r][j];
    }
}

/* Rows [m_lo, m_hi) of C (+)= A B. Compiled for several ISAs; the loader picks the best the
 * CPU supports (same results on all, see the file comment). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
gemm_rows(int m_lo, int m_hi, int N, int K, strided_t A, strided_t B, float *C, ptrdiff_t ldc,
          int accumulate, float *pack) {
    for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
        const int kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        const int add = accumulate || k0 > 0;
        for (int n0 = 0; n0 < N; n0 += GEMM_NC) {
            const int nc = N - n0 < GEMM_NC ? N - n0 : GEMM_NC;
            pack_b(pack, B, k0, kc, n0, nc);
            for (int m0 = m_lo; m0 < m_hi; m0 += GEMM_MR) {
                const int mr = m_hi - m0 < GEMM_MR ? m_hi - m0 : GEMM_MR;
                const float *a = A.p + m0 * A.rs + k0 * A.cs;
                for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
                    const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
                    micro_kernel(mr, nr, kc, a, A.rs, A.cs,
                                 pack + (size_t)(j0 / GEMM_NR) * (size_t)kc * GEMM_NR,
                                 C + (ptrdiff_t)m0 * ldc + n0 + j0, ldc, add);
                }
            }
        }
    }
}

/* C[M][N] = A B (accumulate == 0) or C += A B. */
static void gemm(int M, int N, int K, strided_t A, strided_t B, float *C, int accumulate) {
    if (K == 0) {
        if (!accumulate) memset(C, 0, (size_t)M * (size_t)N * sizeof(float));
        return;
    }
    const int tiles = (M + GEMM_MR - 1) / GEMM_MR;
/* Small products run on one thread (fork/join would cost more than the work). */
#pragma omp parallel if ((double)M * N * K >= 1e6)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int lo = (int)((long)tiles * tid / nt) * GEMM_MR;
        int hi = (int)((long)tiles * (tid + 1) / nt) * GEMM_MR;
        if (hi > M) hi = M;
        if (lo < hi) {
            /* Only as large as this product needs: small products stay off mmap'd pages. */
            const size_t kc = K < GEMM_KC ? (size_t)K : GEMM_KC;
            const size_t nc = N < GEMM_NC ? (size_t)(N + GEMM_NR - 1) / GEMM_NR * GEMM_NR : GEMM_NC;
            float *pack = aligned_alloc(64, kc * nc * sizeof(float));
            if (!pack) fatal(EXIT_RUNTIME, "out of memory allocating the GEMM packing buffer");
            gemm_rows(lo, hi, N, K, A, B, C, N, accumulate, pack);
            free(pack);
        }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int IC, int OC) {
    if (bias)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
    const strided_t A = {inp, IC, 1};    /* inp[n][i] */
    const strided_t B = {weight, 1, IC}; /* B[i][o] = weight[o][i] */
    gemm(N, OC, IC, A, B, out, bias != NULL);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int IC, int OC) {
    if (dinp) {
        const strided_t A = {dout, OC, 1};   /* dout[n][o] */
        const strided_t B = {weight, IC, 1}; /* weight[o][i] */
        gemm(N, IC, OC, A, B, dinp, 1);
    }
    if (dweight) {
        const strided_t A = {dout, 1, OC}; /* A[o][n] = dout[n][o] */
        const strided_t B = {inp, IC, 1};  /* inp[n][i] */
        gemm(OC, IC, N, A, B, dweight, 1);
    }
    if (dbias) /* N * OC adds: cheap next to the products, kept serial and ordered */
        for (int n = 0; n < N; n++) {
            const float *row = dout + (size_t)n * OC;
            for (int o = 0; o < OC; o++) dbias[o] += row[o];
        }
}
