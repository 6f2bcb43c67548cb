/* Every op of the CUDA backend (model/cuda/ops_cuda.h, matmul_cuda.h) against its CPU twin
 * (model/cpu/ops_cpu.h, model/optim.h) on random inputs of awkward sizes.
 *
 * The CPU twin runs in fp32 on exactly the bf16-rounded inputs the GPU sees, so the
 * differences come from the GPU's own rounding only. Tolerances, per output type:
 *   bf16 outputs:   ||gpu - cpu|| / ||cpu|| <= 8e-3 and max |gpu - cpu| <= 2e-2 max |cpu|
 *                   (a bf16 rounding is <= 2^-9 = 2e-3 relative; a few roundings may stack)
 *   fp32 outputs:   ||gpu - cpu|| / ||cpu|| <= 1e-4 (only the summation order differs; fp32
 *                   sums of bf16 products of up to a few thousand terms)
 * Accumulating ops (+=) start from random, not zero, outputs so the "+=" is checked too.
 * Every output buffer is poisoned with NaN before the op, so an unwritten element fails. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "model/cuda/matmul_cuda.h"
#include "model/cuda/ops_cuda.h"

extern "C" {
#include "model/cpu/ops_cpu.h"
#include "model/optim.h"
#include "runtime/rng.h"
#include "tests/test.h"
}

typedef std::vector<float> vec;

static uint64_t g_counter = 0;
static const uint64_t kKey = 0x9d2c5680a1b2c3d4ULL;

/* Normal(0, scale) values, rounded to bf16 when `as_bf16` (what a bf16 buffer would hold). */
static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }
static vec randn(size_t n, float scale, bool as_bf16 = true) {
    vec v(n);
    for (size_t i = 0; i < n; i++) {
        const float x = scale * rng_normal(kKey, g_counter++);
        v[i] = as_bf16 ? round_bf16(x) : x;
    }
    return v;
}

static bf16 *dev_bf16(const vec &h) {
    std::vector<bf16> tmp(h.size());
    for (size_t i = 0; i < h.size(); i++) tmp[i] = __float2bfloat16(h[i]);
    bf16 *d;
    CUDA_CHECK(cudaMalloc((void **)&d, h.size() * sizeof(bf16) + 16));
    CUDA_CHECK(cudaMemcpy(d, tmp.data(), h.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    return d;
}
static float *dev_f32(const vec &h) {
    float *d;
    CUDA_CHECK(cudaMalloc((void **)&d, h.size() * sizeof(float) + 16));
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}
/* Device buffer filled with NaN (bf16 0xFFFF / fp32 0xFFFFFFFF are NaNs). */
static bf16 *dev_bf16_nan(size_t n) {
    bf16 *d;
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(bf16) + 16));
    CUDA_CHECK(cudaMemset(d, 0xff, n * sizeof(bf16)));
    return d;
}
static float *dev_f32_nan(size_t n) {
    float *d;
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(float) + 16));
    CUDA_CHECK(cudaMemset(d, 0xff, n * sizeof(float)));
    return d;
}
static vec host_bf16(const bf16 *d, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<bf16> tmp(n);
    CUDA_CHECK(cudaMemcpy(tmp.data(), d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    vec h(n);
    for (size_t i = 0; i < n; i++) h[i] = __bfloat162float(tmp[i]);
    return h;
}
static vec host_f32(const float *d, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    vec h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

/* Relative norm error and max error (relative to max |ref|); NaN anywhere fails. */
static void expect_close(const char *what, const vec &got, const vec &ref, double rel_tol,
                         double max_tol) {
    double num = 0, den = 0, max_err = 0, max_ref = 0;
    int nan = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (isnan(got[i]) || isnan(ref[i])) nan = 1;
        const double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        max_err = fmax(max_err, fabs(d));
        max_ref = fmax(max_ref, fabs((double)ref[i]));
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    const double mrel = max_ref > 0 ? max_err / max_ref : max_err;
    printf("  %-44s rel %.2e  max %.2e  (tol %.0e / %.0e)%s\n", what, rel, mrel, rel_tol, max_tol,
           nan ? "  NaN!" : "");
    CHECK(!nan && rel <= rel_tol && mrel <= max_tol, "%s: rel %.3e max %.3e", what, rel, mrel);
}
static void expect_bf16(const char *what, const vec &got, const vec &ref) {
    expect_close(what, got, ref, 8e-3, 2e-2);
}
static void expect_f32(const char *what, const vec &got, const vec &ref) {
    expect_close(what, got, ref, 1e-4, 1e-4);
}

static const cudaStream_t S = 0;

static void test_encoder(int B, int T, int C, int V) {
    printf("encoder B=%d T=%d C=%d V=%d\n", B, T, C, V);
    const int N = B * T;
    std::vector<int32_t> tok(N);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rng_u64(kKey, g_counter++) % (uint64_t)V);
    vec wte = randn((size_t)V * C, 0.5f), wpe = randn((size_t)T * C, 0.5f);
    int32_t *dtok;
    CUDA_CHECK(cudaMalloc((void **)&dtok, N * sizeof(int32_t)));
    CUDA_CHECK(cudaMemcpy(dtok, tok.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice));
    bf16 *dwte_b = dev_bf16(wte), *dwpe_b = dev_bf16(wpe), *dout = dev_bf16_nan((size_t)N * C);
    encoder_forward_cuda(dout, dtok, dwte_b, dwpe_b, B, T, C, S);
    vec ref((size_t)N * C);
    encoder_forward(ref.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
    expect_bf16("encoder_forward out", host_bf16(dout, ref.size()), ref);

    vec g = randn((size_t)N * C, 1.0f), gwte = randn((size_t)V * C, 1.0f, false),
        gwpe = randn((size_t)T * C, 1.0f, false);
    bf16 *dg = dev_bf16(g);
    float *dgwte = dev_f32(gwte), *dgwpe = dev_f32(gwpe);
    encoder_groups_t groups;
    encoder_groups_init(&groups, N, V);
    encoder_groups_build(&groups, tok.data(), N, S);
    encoder_backward_cuda(dgwte, dgwpe, dg, &groups, B, T, C, S);
    encoder_backward(gwte.data(), gwpe.data(), g.data(), tok.data(), B, T, C);
    expect_f32("encoder_backward dwte (+=)", host_f32(dgwte, gwte.size()), gwte);
    expect_f32("encoder_backward dwpe (+=)", host_f32(dgwpe, gwpe.size()), gwpe);
    encoder_groups_free(&groups);
    CUDA_CHECK(cudaFree(dtok));
    CUDA_CHECK(cudaFree(dwte_b));
    CUDA_CHECK(cudaFree(dwpe_b));
    CUDA_CHECK(cudaFree(dout));
    CUDA_CHECK(cudaFree(dg));
    CUDA_CHECK(cudaFree(dgwte));
    CUDA_CHECK(cudaFree(dgwpe));
}

static void test_layernorm(int N, int C, bool with_bias) {
    printf("layernorm N=%d C=%d bias=%d\n", N, C, (int)with_bias);
    const size_t NC = (size_t)N * C;
    /* A mean offset per row makes the variance computation matter. */
    vec a = randn(NC, 1.0f), b = randn(NC, 0.7f), w = randn(C, 1.0f, false), bias = randn(C, 0.3f, false);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) a[(size_t)n * C + c] = round_bf16(a[(size_t)n * C + c] + 0.1f * (n % 7));
    bf16 *da = dev_bf16(a), *db = dev_bf16(b), *dout = dev_bf16_nan(NC), *dres = dev_bf16_nan(NC);
    float *dw = dev_f32(w), *dbias = with_bias ? dev_f32(bias) : nullptr;
    float *dmean = dev_f32_nan(N), *drstd = dev_f32_nan(N);
    const float *bias_h = with_bias ? bias.data() : nullptr;

    layernorm_forward_cuda(dout, dmean, drstd, da, dw, dbias, N, C, S);
    vec out(NC), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), a.data(), w.data(), bias_h, N, C);
    expect_bf16("layernorm_forward out", host_bf16(dout, NC), out);
    expect_f32("layernorm_forward mean", host_f32(dmean, N), mean);
    expect_f32("layernorm_forward rstd", host_f32(drstd, N), rstd);

    /* Fused residual: the CPU twin normalises the bf16-rounded sum, as the GPU stores it. */
    residual_layernorm_forward_cuda(dres, dout, dmean, drstd, da, db, dw, dbias, N, C, S);
    vec res(NC);
    residual_forward(res.data(), a.data(), b.data(), NC);
    for (auto &x : res) x = round_bf16(x);
    layernorm_forward(out.data(), mean.data(), rstd.data(), res.data(), w.data(), bias_h, N, C);
    expect_bf16("residual_layernorm_forward resid", host_bf16(dres, NC), res);
    expect_bf16("residual_layernorm_forward out", host_bf16(dout, NC), out);
    expect_f32("residual_layernorm_forward rstd", host_f32(drstd, N), rstd);

    /* Backward from the CPU statistics (uploaded), accumulating into random gradients. */
    vec dy = randn(NC, 1.0f), dx = randn(NC, 0.5f), dwt = randn(C, 1.0f, false), dbs = randn(C, 1.0f, false);
    bf16 *ddy = dev_bf16(dy), *ddx = dev_bf16(dx), *dinp = dev_bf16(res);
    float *ddw = dev_f32(dwt), *ddb = with_bias ? dev_f32(dbs) : nullptr;
    float *dm = dev_f32(mean), *dr = dev_f32(rstd);
    float *scratch = dev_f32_nan(layernorm_backward_scratch_floats(N, C));
    const vec dx0 = dx, dwt0 = dwt, dbs0 = dbs; /* the CPU twin updates its arguments in place */
    layernorm_backward_cuda(ddx, ddw, ddb, ddy, dinp, dw, dm, dr, N, C, scratch, S);
    layernorm_backward(dx.data(), dwt.data(), with_bias ? dbs.data() : nullptr, dy.data(), res.data(),
                       w.data(), mean.data(), rstd.data(), N, C);
    const vec got_dx = host_bf16(ddx, NC), got_dw = host_f32(ddw, C);
    const vec got_db = with_bias ? host_f32(ddb, C) : vec();
    expect_bf16("layernorm_backward dinp (+=)", got_dx, dx);
    expect_f32("layernorm_backward dweight (+=)", got_dw, dwt);
    if (with_bias) expect_f32("layernorm_backward dbias (+=)", got_db, dbs);

    /* Again from the same inputs: the partials and their sums have a fixed order, so every
     * output must be bit-identical. */
    bf16 *ddx2 = dev_bf16(dx0);
    float *ddw2 = dev_f32(dwt0), *ddb2 = with_bias ? dev_f32(dbs0) : nullptr;
    layernorm_backward_cuda(ddx2, ddw2, ddb2, ddy, dinp, dw, dm, dr, N, C, scratch, S);
    const vec again_dx = host_bf16(ddx2, NC), again_dw = host_f32(ddw2, C);
    const vec again_db = with_bias ? host_f32(ddb2, C) : vec();
    CHECK(memcmp(again_dx.data(), got_dx.data(), NC * sizeof(float)) == 0 &&
              memcmp(again_dw.data(), got_dw.data(), C * sizeof(float)) == 0 &&
              (!with_bias || memcmp(again_db.data(), got_db.data(), C * sizeof(float)) == 0),
          "layernorm_backward is not reproducible (N=%d C=%d)", N, C);

    void *bufs[] = {da,  db,  dout, dres, dw, dbias,   dmean, drstd, ddy, ddx,
                    dinp, ddw, ddb, dm,   dr, scratch, ddx2,  ddw2,  ddb2};
    for (void *p : bufs)
        if (p) CUDA_CHECK(cudaFree(p));
}

static void test_matmul(matmul_ctx_t *mm, int N, int IC, int OC, bool with_bias, bool gelu) {
    printf("matmul N=%d IC=%d OC=%d bias=%d gelu=%d\n", N, IC, OC, (int)with_bias, (int)gelu);
    const size_t NI = (size_t)N * IC, NO = (size_t)N * OC, W = (size_t)OC * IC;
    vec x = randn(NI, 1.0f), w = randn(W, 0.1f), b = randn(OC, 0.5f);
    bf16 *dx = dev_bf16(x), *dw = dev_bf16(w), *db = with_bias ? dev_bf16(b) : nullptr;
    bf16 *dout = dev_bf16_nan(NO), *dpre = gelu ? dev_bf16_nan(NO) : nullptr;
    matmul_forward_cuda(mm, dout, dx, dw, db, N, IC, OC, dpre, S);
    vec pre(NO), out(NO);
    matmul_forward(pre.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, N, IC, OC);
    if (gelu) {
        expect_bf16("matmul_forward pre-activation (GELU_AUX)", host_bf16(dpre, NO), pre);
        gelu_forward(out.data(), pre.data(), NO);
        expect_bf16("matmul_forward gelu output", host_bf16(dout, NO), out);
    } else {
        expect_bf16("matmul_forward out", host_bf16(dout, NO), pre);
    }

    /* Backward: dout random; dweight accumulates into random values; dinp both ways. */
    vec dy = randn(NO, 1.0f), gw = randn(W, 1.0f, false), dx_acc = randn(NI, 1.0f);
    bf16 *ddy = dev_bf16(dy), *ddx = dev_bf16_nan(NI);
    float *dgw = dev_f32(gw);
    if (gelu) {
        /* Fused DGELU: x plays the GELU output of the layer below, preact its input. */
        vec preact = randn(NI, 1.5f);
        bf16 *dpreact = dev_bf16(preact);
        matmul_backward_cuda(mm, ddx, 0, dgw, ddy, dx, dw, N, IC, OC, dpreact, S);
        vec dgelu(NI, 0.0f), dpre_ref(NI, 0.0f);
        matmul_backward(dgelu.data(), gw.data(), nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
        gelu_backward(dpre_ref.data(), preact.data(), dgelu.data(), NI);
        expect_bf16("matmul_backward dinp with fused DGELU", host_bf16(ddx, NI), dpre_ref);
        CUDA_CHECK(cudaFree(dpreact));
    } else {
        matmul_backward_cuda(mm, ddx, 0, dgw, ddy, dx, dw, N, IC, OC, nullptr, S);
        vec dxr(NI, 0.0f);
        matmul_backward(dxr.data(), gw.data(), nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
        expect_bf16("matmul_backward dinp (overwrite)", host_bf16(ddx, NI), dxr);
        CUDA_CHECK(cudaFree(ddx));
        ddx = dev_bf16(dx_acc);
        matmul_backward_cuda(mm, ddx, 1, nullptr, ddy, dx, dw, N, IC, OC, nullptr, S);
        matmul_backward(dx_acc.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
        expect_bf16("matmul_backward dinp (+=)", host_bf16(ddx, NI), dx_acc);
    }
    expect_f32("matmul_backward dweight (+=, fp32)", host_f32(dgw, W), gw);
    if (with_bias) {
        vec gb = randn(OC, 1.0f, false);
        float *dgb = dev_f32(gb), *scratch = dev_f32_nan(bias_backward_scratch_floats(N, OC));
        bias_backward_cuda(dgb, ddy, N, OC, scratch, S);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) gb[o] += dy[(size_t)n * OC + o];
        expect_f32("bias_backward dbias (+=)", host_f32(dgb, OC), gb);
        CUDA_CHECK(cudaFree(dgb));
        CUDA_CHECK(cudaFree(scratch));
    }
    void *bufs[] = {dx, dw, db, dout, dpre, ddy, ddx, dgw};
    for (void *p : bufs)
        if (p) CUDA_CHECK(cudaFree(p));
}

static void test_gelu_residual(size_t n) {
    printf("gelu / residual n=%zu\n", n);
    vec x = randn(n, 2.0f), y = randn(n, 1.0f), ref(n);
    bf16 *dx = dev_bf16(x), *dy = dev_bf16(y), *dout = dev_bf16_nan(n);
    gelu_forward_cuda(dout, dx, n, S);
    gelu_forward(ref.data(), x.data(), n);
    expect_bf16("gelu_forward", host_bf16(dout, n), ref);
    residual_forward_cuda(dout, dx, dy, n, S);
    residual_forward(ref.data(), x.data(), y.data(), n);
    expect_bf16("residual_forward", host_bf16(dout, n), ref);
    CUDA_CHECK(cudaFree(dx));
    CUDA_CHECK(cudaFree(dy));
    CUDA_CHECK(cudaFree(dout));
}

/* q read with stride 2C out of a [Q | V] buffer, as in the shared-QK model. */
static void test_qk_normalise(int N, int H, int D) {
    printf("qk_normalise N=%d H=%d D=%d (q stride 2C)\n", N, H, D);
    const int C = H * D;
    const size_t NC = (size_t)N * C;
    vec qv = randn(NC * 2, 1.0f), q(NC);
    for (int n = 0; n < N; n++)
        memcpy(&q[(size_t)n * C], &qv[(size_t)n * 2 * C], C * sizeof(float));
    bf16 *dqv = dev_bf16(qv), *dk = dev_bf16_nan(NC);
    qk_normalise_forward_cuda(dk, C, dqv, 2 * C, N, H, D, S);
    vec k(NC);
    qk_normalise_forward(k.data(), q.data(), N * H, D);
    expect_bf16("qk_normalise_forward k", host_bf16(dk, NC), k);

    vec dkv = randn(NC, 1.0f), dqv_acc = randn(NC * 2, 1.0f), dq(NC);
    for (auto &x : k) x = round_bf16(x); /* the backward reads the stored bf16 k */
    for (int n = 0; n < N; n++)
        memcpy(&dq[(size_t)n * C], &dqv_acc[(size_t)n * 2 * C], C * sizeof(float));
    bf16 *ddk = dev_bf16(dkv), *ddq = dev_bf16(dqv_acc), *dkk = dev_bf16(k);
    qk_normalise_backward_cuda(ddq, 2 * C, ddk, C, dqv, 2 * C, dkk, C, N, H, D, S);
    qk_normalise_backward(dq.data(), dkv.data(), q.data(), k.data(), N * H, D);
    vec got = host_bf16(ddq, NC * 2), got_q(NC);
    for (int n = 0; n < N; n++) {
        memcpy(&got_q[(size_t)n * C], &got[(size_t)n * 2 * C], C * sizeof(float));
        /* The V half of the buffer must be untouched. */
        CHECK(memcmp(&got[(size_t)n * 2 * C + C], &dqv_acc[(size_t)n * 2 * C + C], C * sizeof(float)) == 0,
              "qk_normalise_backward wrote outside dq (row %d)", n);
    }
    expect_bf16("qk_normalise_backward dq (+=)", got_q, dq);
    void *bufs[] = {dqv, dk, ddk, ddq, dkk};
    for (void *p : bufs) CUDA_CHECK(cudaFree(p));
}

static void test_crossentropy(int N, int V, int Vp) {
    printf("crossentropy_fused N=%d V=%d Vp=%d\n", N, V, Vp);
    const size_t NV = (size_t)N * Vp;
    vec logits = randn(NV, 3.0f);
    std::vector<int32_t> tgt(N);
    for (int i = 0; i < N; i++) tgt[i] = (int32_t)(rng_u64(kKey, g_counter++) % (uint64_t)V);
    tgt[0] = V - 1; /* the last real entry, next to the padding */
    int32_t *dt;
    CUDA_CHECK(cudaMalloc((void **)&dt, N * sizeof(int32_t)));
    CUDA_CHECK(cudaMemcpy(dt, tgt.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice));
    bf16 *dl = dev_bf16(logits);
    float *dloss = dev_f32_nan(N), *dlse = dev_f32_nan(N);
    const float dl_scale = 1.0f / (float)N;
    crossentropy_fused_cuda(dloss, dlse, dl, dt, dl_scale, N, V, Vp, S);
    vec loss(N), lse(N), dlog(NV);
    crossentropy_forward(loss.data(), lse.data(), logits.data(), tgt.data(), N, V, Vp);
    crossentropy_backward(dlog.data(), logits.data(), lse.data(), tgt.data(), dl_scale, N, V, Vp);
    expect_f32("crossentropy losses", host_f32(dloss, N), loss);
    expect_f32("crossentropy lse", host_f32(dlse, N), lse);
    vec got = host_bf16(dl, NV);
    expect_bf16("crossentropy dlogits (in place)", got, dlog);
    int pad_ok = 1;
    for (int n = 0; n < N; n++)
        for (int v = V; v < Vp; v++) pad_ok &= got[(size_t)n * Vp + v] == 0.0f;
    CHECK(pad_ok, "crossentropy: padded dlogits must be exactly 0");

    double *dmean;
    CUDA_CHECK(cudaMalloc((void **)&dmean, sizeof(double)));
    mean_cuda(dmean, dloss, N, S);
    double mean_gpu = 0, mean_ref = 0;
    CUDA_CHECK(cudaMemcpy(&mean_gpu, dmean, sizeof(double), cudaMemcpyDeviceToHost));
    for (float x : loss) mean_ref += x;
    mean_ref /= N;
    printf("  mean loss %.7f vs %.7f\n", mean_gpu, mean_ref);
    CHECK(fabs(mean_gpu - mean_ref) <= 1e-5 * fabs(mean_ref), "mean_cuda %.8f vs %.8f", mean_gpu, mean_ref);
    void *bufs[] = {dt, dl, dloss, dlse, dmean};
    for (void *p : bufs) CUDA_CHECK(cudaFree(p));
}

static void test_logits_row(int Vp, int C) {
    printf("logits_row Vp=%d C=%d\n", Vp, C);
    vec x = randn(C, 1.0f), wte = randn((size_t)Vp * C, 0.1f), ref(Vp);
    bf16 *dx = dev_bf16(x), *dw = dev_bf16(wte);
    float *dout = dev_f32_nan(Vp);
    logits_row_cuda(dout, dx, dw, Vp, C, S);
    matmul_forward(ref.data(), x.data(), wte.data(), nullptr, 1, C, Vp);
    expect_f32("logits_row", host_f32(dout, Vp), ref);
    CUDA_CHECK(cudaFree(dx));
    CUDA_CHECK(cudaFree(dw));
    CUDA_CHECK(cudaFree(dout));
}

/* AdamW over [first, n) (first > 0: pointers not 16-byte aligned, the scalar kernel only). */
static void test_optimizer(size_t n, size_t first = 0) {
    printf("adamw / grad norm n=%zu first=%zu\n", n, first);
    vec p = randn(n, 0.1f, false), g = randn(n, 0.01f, false), m = randn(n, 0.01f, false), v(n);
    for (size_t i = 0; i < n; i++) v[i] = 1e-4f * fabsf(rng_normal(kKey, g_counter++));
    float *dp = dev_f32(p), *dg = dev_f32(g), *dm = dev_f32(m), *dv = dev_f32(v);
    bf16 *dpb = dev_bf16_nan(n);
    const adamw_hparams_t h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    for (int decay = 0; decay <= 1; decay++) {
        adamw_cuda(dp + first, dpb + first, dg + first, dm + first, dv + first, n - first, decay, &h, 7,
                   0.8f, S);
        adamw_step(p.data() + first, g.data() + first, m.data() + first, v.data() + first, n - first,
                   decay, &h, 7, 0.8f);
        /* Same formula in fp32; only FMA contraction differs: a few ulp. */
        expect_close(decay ? "adamw params (decay)" : "adamw params", host_f32(dp, n), p, 1e-6, 1e-6);
        expect_close("adamw m", host_f32(dm, n), m, 1e-6, 1e-6);
        expect_close("adamw v", host_f32(dv, n), v, 1e-6, 1e-6);
        vec pb(p.begin() + first, p.end()), got_pb = host_bf16(dpb, n);
        for (auto &x : pb) x = round_bf16(x);
        expect_close("adamw bf16 copy", vec(got_pb.begin() + first, got_pb.end()), pb, 4e-3, 4e-3);
    }
    double *scratch;
    CUDA_CHECK(cudaMalloc((void **)&scratch, GRAD_NORM_BLOCKS * sizeof(double)));
    const double norm = grad_norm_cuda(dg, n, scratch, S), ref = grad_global_norm(g.data(), n);
    printf("  grad norm %.12f vs %.12f\n", norm, ref);
    CHECK(fabs(norm - ref) <= 1e-12 * ref, "grad_norm_cuda %.15f vs %.15f", norm, ref);
    const double again = grad_norm_cuda(dg, n, scratch, S);
    CHECK(memcmp(&again, &norm, sizeof norm) == 0, "grad_norm_cuda is not reproducible");
    void *bufs[] = {dp, dg, dm, dv, dpb, scratch};
    for (void *q : bufs) CUDA_CHECK(cudaFree(q));
}

int main(void) {
    matmul_ctx_t *mm = matmul_ctx_create();
    test_encoder(3, 37, 72, 11);       /* few tokens: many repeats in the scatter-add */
    test_encoder(2, 129, 136, 50257);
    test_layernorm(77, 200, true);     /* C not a multiple of 256: masked lanes */
    test_layernorm(3001, 768, false);  /* many backward blocks */
    test_layernorm(5, 2048, true);     /* the largest C */
    test_layernorm(37, 200, false);    /* N with no round factor: a partial last block */
    test_layernorm(37, 520, true);     /* VPL 3, one live lane in the last vector step */
    test_layernorm(37, 1000, false);   /* VPL 4, C / 8 = 125 */
    test_layernorm(37, 2048, true);
    test_layernorm(4099, 768, true);   /* 512 blocks (some with no rows) and the reduction */
    for (int tune = 1; tune >= 0; tune--) { /* timed candidates (the default), then the heuristic's first */
        matmul_ctx_set_tuning(mm, tune);
        printf("matmul tuning %s\n", matmul_ctx_tuning(mm) ? "on" : "off");
        test_matmul(mm, 77, 72, 104, true, false);
        test_matmul(mm, 77, 72, 104, false, false);
        test_matmul(mm, 301, 120, 488, true, true);
        test_matmul(mm, 1000, 768, 3072, false, true);
        test_matmul(mm, 1000, 3072, 768, true, false);
    }
    test_gelu_residual(12345); /* not a multiple of 8: vector body + scalar tail */
    test_qk_normalise(33, 3, 64);
    test_qk_normalise(17, 2, 128);
    test_qk_normalise(4099, 12, 64); /* vector path, many blocks, a partial last warp */
    test_qk_normalise(19, 5, 24);    /* D / 8 = 3 lanes is not a power of two: warp per vector */
    test_qk_normalise(7, 3, 36);     /* D not a multiple of 8: warp per vector */
    test_crossentropy(37, 1001, 1008);
    test_crossentropy(5, 50257, 50304);
    test_crossentropy(3, 16380, 16384); /* Vp / 8 = 4 x 512: one full group, padding in it */
    test_crossentropy(4, 8000, 8000);   /* fewer vectors than a group: single loads only, no padding */
    test_crossentropy(2, 110001, 110008); /* row too long for shared memory: re-read path */
    test_crossentropy(1000, 1001, 1008); /* more rows than SMs */
    test_logits_row(1008, 136);
    test_optimizer(100003);
    test_optimizer(3000017);
    test_optimizer(100003, 1); /* misaligned: the scalar kernel for all of it */
    matmul_ctx_destroy(mm);
    return test_summary();
}
