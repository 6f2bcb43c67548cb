/* matmul_forward / matmul_backward of the CPU reference on one blocked GEMM.
 *
 * All three products of a linear layer are C[M][N] (+)= A[M][K] B[K][N] with A, B and C
 * addressed through strides, so transposes cost nothing:
 *   forward  out   = inp  . W^T   (M = rows, N = OC, K = IC)
 *   dinp    += dout . W           (M = rows, N = IC, K = OC)
 *   dweight += dout^T . inp       (M = OC,   N = IC, K = rows), or for OC > IC its transpose
 *                                 dweight^T += inp^T . dout, so that dout streams by rows.
 * Goto-style blocking: B is packed per (KC x NC) block into 16-wide panels (fits L2, read
 * contiguously), A is read in place (or packed per MC x KC block when its rows are not
 * contiguous), and an MR x 16 register tile of C is accumulated over the whole KC block by
 * a micro-kernel chosen for the CPU (AVX-512, AVX2 + FMA, or portable C).
 * Threads split the rows of C (or its columns when C is much wider than tall), each packing
 * its own blocks, so no barriers and no two threads write one element.
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

#define GEMM_NR 16 /* columns of the register tile and of a packed panel */
#define GEMM_MC 240 /* rows of a packed A block: a multiple of every kernel's MR (8, 6, 4) */
#define GEMM_KC 256 /* depth of a packed block */
#define GEMM_NC 1024 /* columns of a packed block (multiple of GEMM_NR): KC*NC floats = 1 MiB */

/* Element (r, c) of a strided matrix is p[r * rs + c * cs]. */
typedef struct {
    const float *p;
    ptrdiff_t rs, cs;
} strided_t;
typedef struct {
    float *p;
    ptrdiff_t rs, cs;
} strided_out_t;

/* Adds (add != 0) or stores the mr x nr corner of a finished 16-wide tile into C. */
static inline void store_tile(float tile[][GEMM_NR], int mr, int nr, float *c, ptrdiff_t c_rs,
                              ptrdiff_t c_cs, int add) {
    for (int r = 0; r < mr; r++) {
        float *row = c + r * c_rs;
        if (add)
            for (int j = 0; j < nr; j++) row[j * c_cs] += tile[r][j];
        else
            for (int j = 0; j < nr; j++) row[j * c_cs] = tile[r][j];
    }
}

/* A micro-kernel: C tile (mr x nr at c) (+)= rows of A (element (r, k) at a[r*a_rs + k*a_ks])
 * times one packed B panel bp [kc][16]. Rows past mr re-read the last valid row and columns
 * past nr (zeros in bp) are computed but not stored. */
typedef void (*micro_kernel_fn)(int mr, int nr, int kc, const float *a, ptrdiff_t a_rs,
                                ptrdiff_t a_ks, const float *bp, float *c, ptrdiff_t c_rs,
                                ptrdiff_t c_cs, int add);

/* 8 rows x one 512-bit vector: 8 independent FMA chains cover the FMA latency on 2 ports. */
__attribute__((target("avx512f"))) static void
micro_avx512(int mr, int nr, int kc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks,
             const float *bp, float *c, ptrdiff_t c_rs, ptrdiff_t c_cs, int add) {
    enum { MR = 8 };
    const float *row[MR];
    __m512 acc[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        row[r] = a + (r < mr ? r : mr - 1) * a_rs;
        acc[r] = _mm512_setzero_ps();
    }
    for (int k = 0; k < kc; k++) {
        const __m512 b = _mm512_load_ps(bp + (size_t)k * GEMM_NR);
        const ptrdiff_t o = k * a_ks;
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(b, _mm512_set1_ps(row[r][o]), acc[r]);
    }
    float tile[MR][GEMM_NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) _mm512_storeu_ps(tile[r], acc[r]);
    store_tile(tile, mr, nr, c, c_rs, c_cs, add);
}

/* 6 rows x two 256-bit vectors: 12 accumulators of the 16 ymm registers. */
__attribute__((target("avx2,fma"))) static void
micro_avx2(int mr, int nr, int kc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks, const float *bp,
           float *c, ptrdiff_t c_rs, ptrdiff_t c_cs, int add) {
    enum { MR = 6 };
    const float *row[MR];
    __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        row[r] = a + (r < mr ? r : mr - 1) * a_rs;
        lo[r] = _mm256_setzero_ps();
        hi[r] = _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(bp + (size_t)k * GEMM_NR);
        const __m256 b1 = _mm256_load_ps(bp + (size_t)k * GEMM_NR + 8);
        const ptrdiff_t o = k * a_ks;
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m256 x = _mm256_broadcast_ss(row[r] + o);
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
    store_tile(tile, mr, nr, c, c_rs, c_cs, add);
}

/* Plain C for any other CPU: the compiler vectorises the 16-wide inner loop. */
static void micro_portable(int mr, int nr, int kc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks,
                           const float *bp, float *c, ptrdiff_t c_rs, ptrdiff_t c_cs, int add) {
    enum { MR = 4 };
    const float *row[MR];
    float acc[MR][GEMM_NR] = {{0}};
    for (int r = 0; r < MR; r++) row[r] = a + (r < mr ? r : mr - 1) * a_rs;
    for (int k = 0; k < kc; k++) {
        const float *b = bp + (size_t)k * GEMM_NR;
        const ptrdiff_t o = k * a_ks;
        for (int r = 0; r < MR; r++) {
            const float x = row[r][o];
            for (int j = 0; j < GEMM_NR; j++) acc[r][j] += b[j] * x;
        }
    }
    store_tile(acc, mr, nr, c, c_rs, c_cs, add);
}

typedef struct {
    const char *name;
    micro_kernel_fn fn;
    int mr;
    int (*supported)(void);
} gemm_kernel_t;

static int has_avx512(void) { return __builtin_cpu_supports("avx512f"); }
static int has_avx2_fma(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
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
    const size_t panel_size = (size_t)kc * GEMM_NR;
    if (B.cs == 1) { /* rows of B contiguous: stream each row segment, 16 floats per panel */
        for (int k = 0; k < kc; k++) {
            const float *s = B.p + (ptrdiff_t)(k0 + k) * B.rs + n0;
            for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
                float *d = dst + (size_t)(j0 / GEMM_NR) * panel_size + (size_t)k * GEMM_NR;
                const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
                if (nr == GEMM_NR) {
                    memcpy(d, s + j0, GEMM_NR * sizeof(float));
                } else {
                    for (int j = 0; j < nr; j++) d[j] = s[j0 + j];
                    for (int j = nr; j < GEMM_NR; j++) d[j] = 0.0f;
                }
            }
        }
        return;
    }
    /* columns of B contiguous (a weight read as W^T): read down each column */
    for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
        const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        float *panel = dst + (size_t)(j0 / GEMM_NR) * panel_size;
        for (int j = 0; j < nr; j++) {
            const float *s = B.p + (ptrdiff_t)k0 * B.rs + (ptrdiff_t)(n0 + j0 + j) * B.cs;
            for (int k = 0; k < kc; k++) panel[(size_t)k * GEMM_NR + j] = s[(ptrdiff_t)k * B.rs];
        }
        for (int j = nr; j < GEMM_NR; j++)
            for (int k = 0; k < kc; k++) panel[(size_t)k * GEMM_NR + j] = 0.0f;
    }
}

/* Packs rows m0..m0+mc, depth k0..k0+kc of a column-contiguous A (dout^T in the weight
 * gradient) into ceil(mc/MR) tiles of [kc][MR] (tile t at dst + t*kc*MR), repeating the last
 * row to fill the last tile. Read directly, each k of such an A is another row of dout, i.e.
 * another page; packed, the block streams once. Row-contiguous A is read in place (packing
 * it would cost as much as the product when N is small). */
static void pack_a(float *dst, strided_t A, int m0, int mc, int MR, int k0, int kc) {
    const int tiles = (mc + MR - 1) / MR;
    for (int k = 0; k < kc; k++) {
        const float *src = A.p + (ptrdiff_t)(k0 + k) * A.cs + (ptrdiff_t)m0 * A.rs;
        if (k + 4 < kc) /* the next rows start on other pages: the hardware will not guess them */
            for (int r = 0; r < mc; r += 16)
                __builtin_prefetch(src + 4 * A.cs + (ptrdiff_t)r * A.rs);
        for (int t = 0; t < tiles; t++) {
            float *d = dst + (size_t)t * kc * MR + (size_t)k * MR;
            for (int r = 0; r < MR; r++) {
                const int row = t * MR + r < mc ? t * MR + r : mc - 1;
                d[r] = src[(ptrdiff_t)row * A.rs];
            }
        }
    }
}

/* Rows [m_lo, m_hi) of C (+)= A B with micro-kernel `kern`; bpack holds a KC x NC block of B,
 * apack a GEMM_MC x KC block of A when A is column-contiguous. */
static void gemm_rows(const gemm_kernel_t *kern, int m_lo, int m_hi, int N, int K, strided_t A,
                      strided_t B, strided_out_t C, int accumulate, float *bpack, float *apack) {
    const int MR = kern->mr, packed_a = A.cs != 1;
    for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
        const int kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        const int add = accumulate || k0 > 0;
        for (int n0 = 0; n0 < N; n0 += GEMM_NC) {
            const int nc = N - n0 < GEMM_NC ? N - n0 : GEMM_NC;
            pack_b(bpack, B, k0, kc, n0, nc);
            for (int mb = m_lo; mb < m_hi; mb += GEMM_MC) {
                const int mc = m_hi - mb < GEMM_MC ? m_hi - mb : GEMM_MC;
                if (packed_a) pack_a(apack, A, mb, mc, MR, k0, kc);
                for (int m0 = mb; m0 < mb + mc; m0 += MR) {
                    const int mr = mb + mc - m0 < MR ? mb + mc - m0 : MR;
                    /* the tile's rows: in the packed block, or in place */
                    const float *a = packed_a ? apack + (size_t)((m0 - mb) / MR) * kc * MR
                                              : A.p + (ptrdiff_t)m0 * A.rs + (ptrdiff_t)k0 * A.cs;
                    const ptrdiff_t a_rs = packed_a ? 1 : A.rs, a_ks = packed_a ? MR : A.cs;
                    for (int j0 = 0; j0 < nc; j0 += GEMM_NR) {
                        const int nr = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
                        kern->fn(mr, nr, kc, a, a_rs, a_ks,
                                 bpack + (size_t)(j0 / GEMM_NR) * (size_t)kc * GEMM_NR,
                                 C.p + (ptrdiff_t)m0 * C.rs + (ptrdiff_t)(n0 + j0) * C.cs, C.rs,
                                 C.cs, add);
                    }
                }
            }
        }
    }
}

/* Packing buffers, one pair per thread, kept for the thread's life (OpenMP reuses its
 * threads): a fresh allocation per product would come back as new zeroed pages each time. */
typedef struct {
    float *p;
    size_t cap; /* floats */
} thread_buffer_t;
static _Thread_local thread_buffer_t tl_bpack, tl_apack;

static float *thread_buffer(thread_buffer_t *b, size_t floats) {
    if (b->cap < floats) {
        free(b->p);
        b->p = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        if (!b->p)
            fatal(EXIT_RUNTIME, "out of memory allocating %zu floats of GEMM packing buffer",
                  floats);
        b->cap = floats;
    }
    return b->p;
}

/* C[M][N] = A B (accumulate == 0) or C += A B. */
static void gemm(int M, int N, int K, strided_t A, strided_t B, strided_out_t C, int accumulate) {
    if (K == 0) {
        if (!accumulate)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) C.p[m * C.rs + n * C.cs] = 0.0f;
        return;
    }
    const gemm_kernel_t *kern = kernel();
    const int MR = kern->mr;
    /* Threads take row ranges of C, or column ranges when C is much wider than tall (the LM
     * head: 1024 x 50304), so that each thread packs only its own share of B. */
    const int split_cols = N > 2 * M;
    const int unit = split_cols ? GEMM_NR : MR, units = ((split_cols ? N : M) + unit - 1) / unit;
/* Small products run on one thread (fork/join would cost more than the work). */
#pragma omp parallel if ((double)M * N * K >= 1e6)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int extent = split_cols ? N : M;
        const int lo = (int)((long)units * tid / nt) * unit;
        int hi = (int)((long)units * (tid + 1) / nt) * unit;
        if (hi > extent) hi = extent;
        if (lo < hi) {
            const int m_lo = split_cols ? 0 : lo, m_hi = split_cols ? M : hi;
            const int n_lo = split_cols ? lo : 0, n_cnt = split_cols ? hi - lo : N;
            const strided_t B_part = {B.p + (ptrdiff_t)n_lo * B.cs, B.rs, B.cs};
            const size_t kc = K < GEMM_KC ? (size_t)K : GEMM_KC;
            const size_t nc =
                n_cnt < GEMM_NC ? (size_t)(n_cnt + GEMM_NR - 1) / GEMM_NR * GEMM_NR : GEMM_NC;
            const size_t mc =
                m_hi - m_lo < GEMM_MC ? (size_t)(m_hi - m_lo + MR - 1) / MR * MR : GEMM_MC;
            float *bpack = thread_buffer(&tl_bpack, kc * nc);
            float *apack = thread_buffer(&tl_apack, mc * kc);
            const strided_out_t C_part = {C.p + (ptrdiff_t)n_lo * C.cs, C.rs, C.cs};
            gemm_rows(kern, m_lo, m_hi, n_cnt, K, A, B_part, C_part, accumulate, bpack, apack);
        }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int IC, int OC) {
    if (bias)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
    const strided_t A = {inp, IC, 1}; /* inp[n][i] */
    const strided_t B = {weight, 1, IC}; /* B[i][o] = weight[o][i] */
    const strided_out_t C = {out, OC, 1};
    gemm(N, OC, IC, A, B, C, bias != NULL);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int IC, int OC) {
    if (dinp) {
        const strided_t A = {dout, OC, 1}; /* dout[n][o] */
        const strided_t B = {weight, IC, 1}; /* weight[o][i] */
        const strided_out_t C = {dinp, IC, 1};
        gemm(N, IC, OC, A, B, C, 1);
    }
    if (dweight && OC > IC) {
        /* Computed as its transpose dweight^T[i][o] += sum_n inp[n][i] dout[n][o], written
         * through strides: dout, the large operand, is then read along its rows (packed as B)
         * instead of down its columns. Same products, same k order: same bits. */
        const strided_t A = {inp, 1, IC}; /* A[i][n] = inp[n][i] */
        const strided_t B = {dout, OC, 1}; /* dout[n][o] */
        const strided_out_t C = {dweight, 1, IC}; /* C[i][o] = dweight[o][i] */
        gemm(IC, OC, N, A, B, C, 1);
    } else if (dweight) {
        const strided_t A = {dout, 1, OC}; /* A[o][n] = dout[n][o] */
        const strided_t B = {inp, IC, 1}; /* inp[n][i] */
        const strided_out_t C = {dweight, IC, 1};
        gemm(OC, IC, N, A, B, C, 1);
    }
    if (dbias) /* N * OC adds: cheap next to the products, kept serial and ordered */
        for (int n = 0; n < N; n++) {
            const float *row = dout + (size_t)n * OC;
            for (int o = 0; o < OC; o++) dbias[o] += row[o];
        }
}
