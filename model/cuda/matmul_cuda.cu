/* cuBLASLt matmuls for the linear layers. cuBLASLt is column-major; a row-major [R][K] matrix
 * is the column-major K x R matrix with leading dimension K, so the three products are
 *   forward  out    (OC x N)  = op_T(W: IC x OC) * (inp: IC x N)
 *   dinp     dinp   (IC x N)  = (W: IC x OC) * (dout: OC x N)
 *   dweight  dW     (IC x OC) = (inp: IC x N) * op_T(dout: OC x N)
 * (each matrix named by its column-major view). A plan (descriptors + algorithm) is cached per
 * distinct shape/epilogue/alignment, so the heuristic runs once per shape. */
#include "model/cuda/matmul_cuda.h"

#include <stdint.h>
#include <string.h>

namespace {

constexpr size_t kWorkspaceBytes = 32u << 20; /* cuBLASLt's recommendation for Hopper */
constexpr int kMaxPlans = 128;

struct PlanKey {
    int op_a, op_b, m, n, k;
    long lda, ldb, ldd, aux_ld;
    int d_type, epilogue, accumulate;
    int align_a, align_b, align_d, align_aux, align_bias;
};

struct Plan {
    PlanKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};

int alignment_of(const void *p) {
    if (!p) return 256;
    const uintptr_t v = (uintptr_t)p;
    const uintptr_t low = v & (~v + 1);
    return low >= 256 ? 256 : (int)low;
}

} // namespace

struct matmul_ctx {
    cublasLtHandle_t lt;
    void *workspace;
    Plan plans[kMaxPlans];
    int n_plans;
};

matmul_ctx_t *matmul_ctx_create(void) {
    matmul_ctx_t *ctx = (matmul_ctx_t *)xcalloc(1, sizeof *ctx, "matmul context");
    CUBLAS_CHECK(cublasLtCreate(&ctx->lt));
    CUDA_CHECK(cudaMalloc(&ctx->workspace, kWorkspaceBytes));
    return ctx;
}

void matmul_ctx_destroy(matmul_ctx_t *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_plans; i++) {
        Plan *p = &ctx->plans[i];
        CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->a));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->b));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->d));
    }
    CUDA_CHECK(cudaFree(ctx->workspace));
    CUBLAS_CHECK(cublasLtDestroy(ctx->lt));
    free(ctx);
}

namespace {

Plan *create_plan(matmul_ctx_t *ctx, const PlanKey &key, const void *bias, const void *aux) {
    if (ctx->n_plans == kMaxPlans)
        fatal(EXIT_RUNTIME, "matmul: more than %d distinct matmul shapes", kMaxPlans);
    Plan *p = &ctx->plans[ctx->n_plans];
    memset(p, 0, sizeof *p);
    p->key = key;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = (cublasOperation_t)key.op_a, op_b = (cublasOperation_t)key.op_b;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    const cublasLtEpilogue_t epi = (cublasLtEpilogue_t)key.epilogue;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    /* Pointers are set before the heuristic: it reads their alignment. */
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof bias));
    if (aux) {
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                    &aux, sizeof aux));
        const int64_t ld = key.aux_ld;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                    sizeof ld));
    }
    const int a_rows = op_a == CUBLAS_OP_N ? key.m : key.k, a_cols = op_a == CUBLAS_OP_N ? key.k : key.m;
    const int b_rows = op_b == CUBLAS_OP_N ? key.k : key.n, b_cols = op_b == CUBLAS_OP_N ? key.n : key.k;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, a_rows, a_cols, key.lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, b_rows, b_cols, key.ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, (cudaDataType_t)key.d_type, key.m, key.n, key.ldd));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &ws, sizeof ws));
    /* No "in place" split-K reduction: it accumulates through the output in an order that can
     * vary between runs. The other schemes reduce in a fixed order. */
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                             CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                      &schemes, sizeof schemes));
    const uint32_t al_a = key.align_a, al_b = key.align_b, al_d = key.align_d;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &al_a, sizeof al_a));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &al_b, sizeof al_b));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &al_d, sizeof al_d));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &al_d, sizeof al_d));
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->desc, p->a, p->b, p->d, p->d, pref, 1,
                                                &result, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (found == 0)
        fatal(EXIT_RUNTIME,
              "matmul: cuBLASLt has no algorithm for m=%d n=%d k=%d (op %d/%d, epilogue %d, "
              "output type %d, alignments %d/%d/%d)",
              key.m, key.n, key.k, key.op_a, key.op_b, key.epilogue, key.d_type, key.align_a,
              key.align_b, key.align_d);
    p->algo = result.algo;
    ctx->n_plans++;
    return p;
}

/* D (m x n, column-major) = alpha op(A) op(B) [+ D if accumulate], with an epilogue. */
void lt_matmul(matmul_ctx_t *ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n,
               int k, const bf16 *A, long lda, const bf16 *B, long ldb, void *D, long ldd,
               cudaDataType_t d_type, int accumulate, cublasLtEpilogue_t epilogue,
               const void *bias, const void *aux, long aux_ld, cudaStream_t stream) {
    PlanKey key;
    memset(&key, 0, sizeof key); /* padding too: keys are compared with memcmp */
    key.op_a = op_a;
    key.op_b = op_b;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldd = ldd;
    key.aux_ld = aux ? aux_ld : 0;
    key.d_type = d_type;
    key.epilogue = epilogue;
    key.accumulate = accumulate;
    key.align_a = alignment_of(A);
    key.align_b = alignment_of(B);
    key.align_d = alignment_of(D);
    key.align_aux = alignment_of(aux);
    key.align_bias = alignment_of(bias);
    if (key.align_a < 16 || key.align_b < 16 || key.align_d < 16 || key.align_aux < 16 ||
        key.align_bias < 16)
        fatal(EXIT_RUNTIME, "matmul: operands must be 16-byte aligned (m=%d n=%d k=%d)", m, n, k);
    Plan *plan = nullptr;
    for (int i = 0; i < ctx->n_plans; i++)
        if (memcmp(&ctx->plans[i].key, &key, sizeof key) == 0) {
            plan = &ctx->plans[i];
            break;
        }
    if (!plan) plan = create_plan(ctx, key, bias, aux);
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &bias, sizeof bias));
    if (aux)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                    &aux, sizeof aux));
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(ctx->lt, plan->desc, &alpha, A, plan->a, B, plan->b, &beta, D,
                                plan->d, D, plan->d, &plan->algo, ctx->workspace, kWorkspaceBytes,
                                stream));
}

void check_dims(const char *op, int N, int IC, int OC) {
    if (N < 0 || IC < 8 || OC < 8 || IC % 8 != 0 || OC % 8 != 0)
        fatal(EXIT_RUNTIME, "%s: N = %d, IC = %d, OC = %d (IC and OC must be multiples of 8)", op,
              N, IC, OC);
}

} // namespace

void matmul_forward_cuda(matmul_ctx_t *ctx, bf16 *out, const bf16 *inp, const bf16 *weight,
                         const bf16 *bias, int N, int IC, int OC, bf16 *gelu_preact,
                         cudaStream_t stream) {
    check_dims("matmul_forward_cuda", N, IC, OC);
    if (N == 0) return;
    cublasLtEpilogue_t epi;
    if (gelu_preact) epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    else epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    lt_matmul(ctx, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, weight, IC, inp, IC, out, OC, CUDA_R_16BF,
              0, epi, bias, gelu_preact, OC, stream);
}

void matmul_backward_cuda(matmul_ctx_t *ctx, bf16 *dinp, int dinp_accumulate, float *dweight,
                          const bf16 *dout, const bf16 *inp, const bf16 *weight, int N, int IC,
                          int OC, const bf16 *gelu_preact, cudaStream_t stream) {
    check_dims("matmul_backward_cuda", N, IC, OC);
    if (gelu_preact && dinp_accumulate)
        fatal(EXIT_RUNTIME, "matmul_backward_cuda: the fused GELU backward cannot accumulate into dinp");
    if (N == 0) return;
    if (dinp)
        lt_matmul(ctx, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, weight, IC, dout, OC, dinp, IC,
                  CUDA_R_16BF, dinp_accumulate,
                  gelu_preact ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT, nullptr,
                  gelu_preact, IC, stream);
    if (dweight)
        lt_matmul(ctx, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, inp, IC, dout, OC, dweight, IC,
                  CUDA_R_32F, 1, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, stream);
}
