/* matmul_forward / matmul_backward of the CPU reference on one blocked GEMM.
 *
 * All three products of a linear layer are C[M][N] (+)= A[M][K] B[K][N] with A and B read
 * through strides, so transposes cost nothing:
 *   forward  out   = inp  . W^T   (M = rows, N = OC, K = IC)
 *   dinp    += dout . W           (M = rows, N = IC, K = OC)
 *   dweight += dout^T . inp       (M = OC,   N = IC, K = rows)
 * Goto-style blocking: B is packed per (KC x NC) block into 16-wide panels (fits L2, read
 * contiguously), and an MR x 16 register tile of C is accumulated over the whole KC block by
 * a micro-kernel chosen for the CPU (AVX-512, AVX2 + FMA, or portable C).
 * Threads split the rows of C, each packing its own B block (cost KC*NC against
 * rows/threads*KC*NC multiply-adds), so no barriers and no two threads write one element.
 * Determinism: every element of C is accumulated in k order by one thread, so results are
 * bit-identical for any OMP_NUM_THREADS. The AVX-512 and AVX2 kernels both use one fused
 * multiply-add per term and agree bit for bit; the portable kernel rounds the product
 * separately and may differ from them in the last bits.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "model/cpu/ops_cpu.h"
#include "runtime/error.h"

#define GEMM_NR 16   /* columns of the register tile and of a packed panel */
#define GEMM_MR_MAX 8
#define GEMM_KC 256  /* depth of a packed block */
#define GEMM_NC 1024 /* columns of a packed block (multiple of GEMM_NR): KC*NC floats = 1 MiB */

/* Element (r, c) of a strided matrix is p[r * rs + c * cs]. */
typedef struct {
    const float *p;
    ptrdiff_t rs, cs;
} strided_t;

static inline float at(strided_t m, ptrdiff_t r, ptrdiff_t c) { return m.p[r * m.rs + c * m.cs]; }

/* Adds (add != 0) or stores the mr x nr corner of a finished 16-wide tile into C. */
static inline void store_tile(float tile[][GEMM_NR], int mr, int nr, float *c, ptrdiff_t ldc,
                              int add) {
    for (int r = 0; r < mr; r++) {
        float *row = c + r * ldc;
        if (add)
            for (int j = 0; j < nr; j++) row[j] += tile[r][j];
        else
            for (int j = 0; j < nr; j++) row[j] = tile[r][j];
    }
}

/* A micro-kernel: C tile (mr x nr at c) (+)= packed A tile ap [kc][MR] times packed B panel
 * bp [kc][16]. Rows past mr (copies of the last row in ap) and columns past nr (zeros in bp)
 * are computed but not stored. */
typedef void (*micro_kernel_fn)(int mr, int nr, int kc, const float *ap, const float *bp, float *c,
                                ptrdiff_t ldc, int add);

/* 8 rows x one 512-bit vector: 8 independent FMA chains cover the FMA latency on 2 ports. */
__attribute__((target("avx512f"))) static void micro_avx512(int mr, int nr, int kc,
                                                            const float *ap, const float *bp,
                                                            float *c, ptrdiff_t ldc, int add) {
    enum { MR = 8 };
    __m512 acc[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) acc[r] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        const __m512 b = _mm512_load_ps(bp + (size_t)k * GEMM_NR);
        const float *a = ap + (size_t)k * MR;
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(b, _mm512_set1_ps(a[r]), acc[r]);
    }
    float tile[MR][GEMM_NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) _mm512_storeu_ps(tile[r], acc[r]);
    store_tile(tile, mr, nr, c, ldc, add);
}

/* 6 rows x two 256-bit vectors: 12 accumulators of the 16 ymm registers. */
__attribute__((target("avx2,fma"))) static void micro_avx2(int mr, int nr, int kc,
                                                           const float *ap, const float *bp,
                                                           float *c, ptrdiff_t ldc, int add) {
    enum { MR = 6 };
    __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        lo[r] = _mm256_setzero_ps();
        hi[r] = _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(bp + (size_t)k * GEMM_NR);
        const __m256 b1 = _mm256_load_ps(bp + (size_t)k * GEMM_NR + 8);
        const float *a = ap + (size_t)k * MR;
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m256 x = _mm256_broadcast_ss(a + r);
            lo[r] = _mm256_fmadd_ps(b0, x, lo[r]);
            hi[r] = _mm256_fmadd_ps(b1, x, hi[r]);
        }
    }
    float tile[MR][GEMM_NR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(tile[r], lo[r]);
        _mm256_storeu_ps(tile[r] + 8, hi[r]);
    }
    store_tile(tile, mr, nr, c, ldc, add);
}

/* Plain C for any other CPU: the compiler vectorises the 16-wide inner loop. */
static void micro_portable(int mr, int nr, int kc, const float *ap, const float *bp, float *c,
                           ptrdiff_t ldc, int add) {
    enum { MR = 4 };
    float acc[MR][GEMM_NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        const float *b = bp + (size_t)k * GEMM_NR;
        const float *a = ap + (size_t)k * MR;
        for (int r = 0; r < MR; r++) {
            const float x = a[r];
            for (int j = 0; j < GEMM_NR; j++) acc[r][j] += b[j] * x;
        }
    }
    store_tile(acc, mr, nr, c, ldc, add);
}

typedef struct {
    const char *name;
    micro_kernel_fn fn;
    int mr;
    int (*supported)(void);
} gemm_kernel_t;

static int has_avx512(void) { return __builtin_cpu_supports("avx512f"); }
static int has_avx2_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int always(void) { return 1; }

/* In order of preference. */
static const gemm_kernel_t gemm_kernels[] = {
    {"avx512", micro_avx512, 8, has_avx512},
    {"avx2", micro_avx2, 6, has_avx2_fma},
    {"portable", micro_portable, 4, always},
};
enum { N_GEMM_KERNELS = sizeof gemm_kernels / sizeof gemm_kernels[0] };

static const gemm_kernel_t *active_kernel; /* NULL until first use: the best supported */

static const gemm_kernel_t *kernel(void) {
    if (!active_kernel) {
        __builtin_cpu_init();
        for (int i = 0; i < N_GEMM_KERNELS && !active_kernel; i++)
            if (gemm_kernels[i].supported()) active_kernel = &gemm_kernels[i];
    }
    return active_kernel;
}

const char *matmul_kernel_name(void) { return kernel()->name; }

int matmul_select_kernel(const char *name) {
    __builtin_cpu_init();
    for (int i = 0; i < N_GEMM_KERNELS; i++)
        if (strcmp(gemm_kernels[i].name, name) == 0) {
            if (!gemm_kernels[i].supported()) return -1;
            active_kernel = &gemm_kernels[i];
            return 0;
        }
    return -1;
}

/* Packs rows k0..k0+kc and columns n0..n0+nc of B into panels [nc/16][kc][16], zero-padding
 * the last panel so the micro-kernel never needs a column edge case. */
static void pack_b(float *dst, strided_t B, int k0, int kc, int n0, int nc) {
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

/* Packs the A tile of rows m0..m0+mr, depth k0..k0+kc into [kc][MR], repeating the last row
 * up to MR. Contiguous for the micro-kernel whatever A's strides: dout^T (the weight
 * gradient's A) would otherwise walk one page per k. */
static void pack_a(float *dst, strided_t A, int m0, int mr, int MR, int k0, int kc) {
    if (A.cs == 1) { /* rows of A contiguous: read along them */
        for (int r = 0; r < MR; r++) {
            const int src_r = m0 + (r < mr ? r : mr - 1);
            for (int k = 0; k < kc; k++) dst[k * MR + r] = at(A, src_r, k0 + k);
        }
    } else { /* columns contiguous (dout^T): one cache line per k */
        for (int k = 0; k < kc; k++)
            for (int r = 0; r < MR; r++) dst[k * MR + r] = at(A, m0 + (r < mr ? r : mr - 1), k0 + k);
    }
}

/* Rows [m_lo, m_hi) of C (+)= A B with micro-kernel `kern`. */
static void gemm_rows(const gemm_kernel_t *kern, int m_lo, int m_hi, int N, int K, strided_t A,
                      strided_t B, float *C, ptrdiff_t ldc, int accumulate, float *pack) {
    const int MR = kern->mr;
    _Alignas(64) float apack[GEMM_MR_MAX * GEMM_KC];
    for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
        const int kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        const int add = accumulate || k0 > 0;
        for (int n0 = 0; n0 < N; n0 += GEMM_NC) {
            const int nc = N - n0 < GEMM_NC ? N - n0 : GEMM_NC;
            pack_b(pack, B, k0, kc, n0, nc);
            for (int m0 = m_lo; m0 < m_hi; m0 += MR) {
                const int mr = m_hi - m0 < MR ? m_hi - m0 : MR;
                pack_a(apack, A, m0, mr, MR, k0, kc);
                for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
                    const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
                    kern->fn(mr, nr, kc, apack, pack + (size_t)(j0 / GEMM_NR) * (size_t)kc * GEMM_NR,
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
    const gemm_kernel_t *kern = kernel();
    const int MR = kern->mr, tiles = (M + MR - 1) / MR;
/* Small products run on one thread (fork/join would cost more than the work). */
#pragma omp parallel if ((double)M * N * K >= 1e6)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int lo = (int)((long)tiles * tid / nt) * MR;
        int hi = (int)((long)tiles * (tid + 1) / nt) * MR;
        if (hi > M) hi = M;
        if (lo < hi) {
            /* Only as large as this product needs: small products stay off mmap'd pages. */
            const size_t kc = K < GEMM_KC ? (size_t)K : GEMM_KC;
            const size_t nc = N < GEMM_NC ? (size_t)(N + GEMM_NR - 1) / GEMM_NR * GEMM_NR : GEMM_NC;
            float *pack = aligned_alloc(64, kc * nc * sizeof(float));
            if (!pack) fatal(EXIT_RUNTIME, "out of memory allocating the GEMM packing buffer");
            gemm_rows(kern, lo, hi, N, K, A, B, C, N, accumulate, pack);
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
