/* cuBLASLt matmuls for the linear layers. cuBLASLt is column-major; a row-major [R][K] matrix
 * is the column-major K x R matrix with leading dimension K, so the three products are
 *   forward  out    (OC x N)  = op_T(W: IC x OC) * (inp: IC x N)
 *   dinp     dinp   (IC x N)  = (W: IC x OC) * (dout: OC x N)
 *   dweight  dW     (IC x OC) = (inp: IC x N) * op_T(dout: OC x N)
 * (each matrix named by its column-major view). A plan (descriptors + algorithm) is cached per
 * distinct shape/epilogue/alignment, so the heuristic runs once per shape.
 *
 * Tuning (matmul_ctx_set_tuning): the heuristic's first algorithm was not always the fastest:
 * the fc forward with the GELU_AUX epilogue ran at 558 TFLOP/s and the mproj dinp with DGELU at
 * 513, against 761 for a plain product of the same FLOPs (H200, session 17, docs/PERF.md). A
 * tuned plan times the heuristic's first kTuneCandidates algorithms on the call's own operands
 * (best of kTuneRuns after a warm-up) and keeps the fastest. Only plans that overwrite their
 * output are tuned (an accumulating one would add into it at every run), and only when the
 * output overlaps no input. Which algorithm wins may differ between processes, so a tuned
 * trainer is not bit-reproducible across runs: the deterministic mode turns tuning off. */
#include "model/cuda/matmul_cuda.h"

#include <stdint.h>
#include <string.h>

namespace {

constexpr size_t kWorkspaceBytes = 32u << 20; /* cuBLASLt's recommendation for Hopper */
constexpr int kMaxPlans = 128;
constexpr int kTuneCandidates = 8, kTuneRuns = 3;

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
    int tune; /* 0 off, 1 on, 2 on and one stderr line per tuned plan */
};

namespace {

void drop_plans(matmul_ctx_t *ctx) {
    for (int i = 0; i < ctx->n_plans; i++) {
        Plan *p = &ctx->plans[i];
        CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->a));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->b));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->d));
    }
    ctx->n_plans = 0;
}

/* GPT_MATMUL_TUNE: 1 (the default) tunes, 0 keeps the heuristic's first algorithm, 2 tunes and
 * logs each tuned plan's times to stderr. */
int tune_setting(void) {
    const char *v = getenv("GPT_MATMUL_TUNE");
    if (!v || !*v || !strcmp(v, "1")) return 1;
    if (!strcmp(v, "0")) return 0;
    if (!strcmp(v, "2")) return 2;
    fatal(EXIT_USAGE, "GPT_MATMUL_TUNE=%s: want 1 (time cuBLASLt's candidates, the default), 0 (its first) or 2 (1, "
          "logged)", v);
}

} // namespace

matmul_ctx_t *matmul_ctx_create(void) {
    matmul_ctx_t *ctx = (matmul_ctx_t *)xcalloc(1, sizeof *ctx, "matmul context");
    CUBLAS_CHECK(cublasLtCreate(&ctx->lt));
    CUDA_CHECK(cudaMalloc(&ctx->workspace, kWorkspaceBytes));
    ctx->tune = tune_setting();
    return ctx;
}

void matmul_ctx_set_tuning(matmul_ctx_t *ctx, int on) {
    const int tune = on ? tune_setting() : 0;
    if (tune != ctx->tune) drop_plans(ctx); /* the plans made so far were chosen the other way */
    ctx->tune = tune;
}

int matmul_ctx_tuning(const matmul_ctx_t *ctx) { return ctx->tune != 0; }

void matmul_ctx_destroy(matmul_ctx_t *ctx) {
    if (!ctx) return;
    drop_plans(ctx);
    CUDA_CHECK(cudaFree(ctx->workspace));
    CUBLAS_CHECK(cublasLtDestroy(ctx->lt));
    free(ctx);
}

namespace {

/* A plan for key with the heuristic's first algorithm; its first n_cand (<= kTuneCandidates)
 * algorithms go to cand (the tuning's candidates), n_cand is set to how many it gave. */
Plan *create_plan(matmul_ctx_t *ctx, const PlanKey &key, const void *bias, const void *aux,
                  cublasLtMatmulHeuristicResult_t *cand, int &n_cand) {
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
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->desc, p->a, p->b, p->d, p->d, pref, n_cand,
                                                cand, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    n_cand = found;
    if (found == 0)
        fatal(EXIT_RUNTIME,
              "matmul: cuBLASLt has no algorithm for m=%d n=%d k=%d (op %d/%d, epilogue %d, "
              "output type %d, alignments %d/%d/%d)",
              key.m, key.n, key.k, key.op_a, key.op_b, key.epilogue, key.d_type, key.align_a,
              key.align_b, key.align_d);
    p->algo = cand[0].algo;
    ctx->n_plans++;
    return p;
}

bool overlaps(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return a && b && x < y + b_bytes && y < x + a_bytes;
}

/* Milliseconds of one run of algo on the call's operands (best of kTuneRuns after a warm-up),
 * or -1 if cuBLASLt refuses it. */
float time_algo(matmul_ctx_t *ctx, Plan *p, const cublasLtMatmulAlgo_t &algo, const void *A, const void *B, void *D,
                cudaStream_t stream, cudaEvent_t ev[2]) {
    const float alpha = 1.0f, beta = 0.0f;
    float best = -1.0f;
    for (int r = 0; r <= kTuneRuns; r++) {
        CUDA_CHECK(cudaEventRecord(ev[0], stream));
        if (cublasLtMatmul(ctx->lt, p->desc, &alpha, A, p->a, B, p->b, &beta, D, p->d, D, p->d, &algo,
                           ctx->workspace, kWorkspaceBytes, stream) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
        CUDA_CHECK(cudaEventRecord(ev[1], stream));
        CUDA_CHECK(cudaEventSynchronize(ev[1]));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (r > 0 && (best < 0.0f || ms < best)) best = ms;
    }
    return best;
}

/* Keeps the fastest of the n candidates for plan p (see the top of this file). The device is
 * idle meanwhile (cudaDeviceSynchronize first), so that other streams' kernels do not skew the
 * times. */
void tune_plan(matmul_ctx_t *ctx, Plan *p, const cublasLtMatmulHeuristicResult_t *cand, int n, const void *A,
               const void *B, void *D, cudaStream_t stream) {
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaEvent_t ev[2];
    CUDA_CHECK(cudaEventCreate(&ev[0]));
    CUDA_CHECK(cudaEventCreate(&ev[1]));
    int best = 0;
    float first = -1.0f, best_ms = -1.0f;
    for (int i = 0; i < n; i++) {
        const float ms = time_algo(ctx, p, cand[i].algo, A, B, D, stream, ev);
        if (i == 0) first = ms;
        if (ms >= 0.0f && (best_ms < 0.0f || ms < best_ms)) best = i, best_ms = ms;
    }
    CUDA_CHECK(cudaEventDestroy(ev[0]));
    CUDA_CHECK(cudaEventDestroy(ev[1]));
    p->algo = cand[best].algo;
    if (ctx->tune == 2)
        fprintf(stderr, "matmul tune: m %d n %d k %d op %d/%d epilogue %d out type %d: first %.1f us, "
                        "candidate %d of %d %.1f us\n", p->key.m, p->key.n, p->key.k, p->key.op_a, p->key.op_b,
                p->key.epilogue, p->key.d_type, first * 1e3f, best, n, best_ms * 1e3f);
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
    if (!plan) {
        cublasLtMatmulHeuristicResult_t cand[kTuneCandidates];
        int n_cand = ctx->tune ? kTuneCandidates : 1;
        plan = create_plan(ctx, key, bias, aux, cand, n_cand);
        const int a_cols = op_a == CUBLAS_OP_N ? k : m, b_cols = op_b == CUBLAS_OP_N ? n : k;
        const size_t d_bytes = (size_t)ldd * n * (d_type == CUDA_R_32F ? 4 : 2);
        const bool writes_input = overlaps(D, d_bytes, A, (size_t)lda * a_cols * 2) ||
                                  overlaps(D, d_bytes, B, (size_t)ldb * b_cols * 2) ||
                                  overlaps(D, d_bytes, bias, 1) || overlaps(D, d_bytes, aux, 1);
        if (ctx->tune && n_cand > 1 && !accumulate && !writes_input)
            tune_plan(ctx, plan, cand, n_cand, A, B, D, stream);
    }
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
