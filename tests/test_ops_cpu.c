/* Finite-difference gradient checks of every CPU op (model/cpu/ops_cpu.h), plus the blocked
 * matmul against a double-precision naive product at sizes that straddle every block edge.
 *
 * Method: for an op y = f(x) and a random upstream gradient dy, the objective is
 * L = sum(dy * y) evaluated in double; the analytic gradient comes from the op's backward,
 * run on gradient buffers pre-filled with random values (so "+=" is tested too). Central
 * differences with step FD_STEP; an element passes if |fd - analytic| <= FD_ATOL + FD_RTOL *
 * |analytic|. The ops are fp32, so the difference quotient carries ~1e-6 of rounding noise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/ops_cpu.h"
#include "runtime/rng.h"
#include "tests/test.h"

#define FD_STEP 1e-2
#define FD_ATOL 2e-4
#define FD_RTOL 2e-3

static uint64_t rng_counter;
static const uint64_t rng_test_key = 0x7e57ab1eULL;

/* Uniform in [lo, hi), never exactly zero-filled buffers. */
static void fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(rng_test_key, rng_counter++);
}
static float *rand_buf(size_t n, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    fill(x, n, lo, hi);
    return x;
}

/* An op under test: run() recomputes `out` (n_out floats) from the current inputs. */
typedef struct {
    void (*run)(void *ctx);
    void *ctx;
    const float *out;
    size_t n_out;
    const float *dout;
} op_t;

static double objective(const op_t *op) {
    op->run(op->ctx);
    double s = 0.0;
    for (size_t i = 0; i < op->n_out; i++) s += (double)op->dout[i] * op->out[i];
    return s;
}

/* Checks d objective / d x[i] against analytic[i] for every element of x (x is n floats). */
static void fd_check(const char *what, const op_t *op, float *x, size_t n, const float *analytic) {
    double max_err = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float orig = x[i];
        const float xp = (float)(orig + FD_STEP), xm = (float)(orig - FD_STEP);
        x[i] = xp;
        const double lp = objective(op);
        x[i] = xm;
        const double lm = objective(op);
        x[i] = orig;
        const double fd = (lp - lm) / ((double)xp - (double)xm);
        const double err = fabs(fd - analytic[i]);
        if (err > max_err) max_err = err;
        if (!test_close(fd, analytic[i], FD_ATOL, FD_RTOL)) {
            if (bad++ < 3)
                fprintf(stderr, "  %s[%zu]: fd %.7g analytic %.7g\n", what, i, fd, analytic[i]);
        }
    }
    objective(op); /* leave outputs consistent with the restored inputs */
    printf("  %-28s %4zu elements, max |fd - analytic| = %.2e\n", what, n, max_err);
    CHECK(bad == 0, "%s: %d of %zu gradient elements off", what, bad, n);
}

/* Backward output buffer pre-filled with noise; delta() returns what the backward added. */
typedef struct {
    float *g, *before;
    size_t n;
} acc_t;
static acc_t acc_new(size_t n) {
    acc_t a = {rand_buf(n, -1.0f, 1.0f), malloc(n * sizeof(float)), n};
    memcpy(a.before, a.g, n * sizeof(float));
    return a;
}
static float *acc_delta(acc_t *a) {
    for (size_t i = 0; i < a->n; i++) a->before[i] = a->g[i] - a->before[i];
    return a->before;
}
static void acc_free(acc_t *a) {
    free(a->g);
    free(a->before);
}

/* ---- encoder ---- */
typedef struct {
    float *out, *wte, *wpe;
    int32_t *tok;
    int B, T, C;
} enc_ctx;
static void enc_run(void *p) {
    enc_ctx *c = p;
    encoder_forward(c->out, c->tok, c->wte, c->wpe, c->B, c->T, c->C);
}
static void test_encoder(void) {
    enc_ctx c = {.B = 2, .T = 7, .C = 5};
    const int V = 6, N = c.B * c.T;
    c.wte = rand_buf((size_t)V * c.C, -1, 1);
    c.wpe = rand_buf((size_t)c.T * c.C, -1, 1);
    c.out = malloc((size_t)N * c.C * sizeof(float));
    c.tok = malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++) c.tok[i] = (i * 5 + 3) % V; /* repeats: tests the scatter-add */
    float *dout = rand_buf((size_t)N * c.C, -1, 1);
    acc_t dwte = acc_new((size_t)V * c.C), dwpe = acc_new((size_t)c.T * c.C);
    enc_run(&c);
    encoder_backward(dwte.g, dwpe.g, dout, c.tok, c.B, c.T, c.C);
    op_t op = {enc_run, &c, c.out, (size_t)N * c.C, dout};
    fd_check("encoder dwte", &op, c.wte, dwte.n, acc_delta(&dwte));
    fd_check("encoder dwpe", &op, c.wpe, dwpe.n, acc_delta(&dwpe));
    acc_free(&dwte), acc_free(&dwpe);
    free(c.wte), free(c.wpe), free(c.out), free(c.tok), free(dout);
}

/* ---- layernorm ---- */
typedef struct {
    float *out, *mean, *rstd, *inp, *w, *b;
    int N, C;
} ln_ctx;
static void ln_run(void *p) {
    ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C);
}
static void test_layernorm(int with_bias) {
    ln_ctx c = {.N = 5, .C = 13};
    const size_t n = (size_t)c.N * c.C;
    c.inp = rand_buf(n, -2.0f, 3.0f); /* mean far from 0: exercises the centring */
    c.w = rand_buf(c.C, 0.5f, 1.5f);
    c.b = with_bias ? rand_buf(c.C, -1, 1) : NULL;
    c.out = malloc(n * sizeof(float));
    c.mean = malloc(c.N * sizeof(float));
    c.rstd = malloc(c.N * sizeof(float));
    float *dout = rand_buf(n, -1, 1);
    acc_t dx = acc_new(n), dw = acc_new(c.C), db = acc_new(c.C);
    ln_run(&c);
    /* The saved statistics must be the row's own. */
    double m0 = 0, v0 = 0;
    for (int i = 0; i < c.C; i++) m0 += c.inp[i];
    m0 /= c.C;
    for (int i = 0; i < c.C; i++) v0 += (c.inp[i] - m0) * (c.inp[i] - m0);
    CHECK(test_close(c.mean[0], m0, 1e-6, 1e-6) &&
              test_close(c.rstd[0], 1.0 / sqrt(v0 / c.C + 1e-5), 1e-6, 1e-5),
          "layernorm saved mean/rstd %g %g vs %g %g", c.mean[0], c.rstd[0], m0,
          1.0 / sqrt(v0 / c.C + 1e-5));
    layernorm_backward(dx.g, dw.g, with_bias ? db.g : NULL, dout, c.inp, c.w, c.mean, c.rstd, c.N,
                       c.C);
    op_t op = {ln_run, &c, c.out, n, dout};
    fd_check(with_bias ? "layernorm(bias) dinp" : "layernorm(no bias) dinp", &op, c.inp, n,
             acc_delta(&dx));
    fd_check(with_bias ? "layernorm(bias) dweight" : "layernorm(no bias) dweight", &op, c.w, c.C,
             acc_delta(&dw));
    if (with_bias) fd_check("layernorm(bias) dbias", &op, c.b, c.C, acc_delta(&db));
    acc_free(&dx), acc_free(&dw), acc_free(&db);
    free(c.inp), free(c.w), free(c.b), free(c.out), free(c.mean), free(c.rstd), free(dout);
}

/* ---- matmul ---- */
typedef struct {
    float *out, *inp, *w, *b;
    int N, IC, OC;
} mm_ctx;
static void mm_run(void *p) {
    mm_ctx *c = p;
    matmul_forward(c->out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
}
static void test_matmul_fd(int with_bias) {
    mm_ctx c = {.N = 7, .IC = 19, .OC = 23};
    const size_t ni = (size_t)c.N * c.IC, nw = (size_t)c.OC * c.IC, no = (size_t)c.N * c.OC;
    c.inp = rand_buf(ni, -1, 1);
    c.w = rand_buf(nw, -1, 1);
    c.b = with_bias ? rand_buf(c.OC, -1, 1) : NULL;
    c.out = malloc(no * sizeof(float));
    float *dout = rand_buf(no, -1, 1);
    acc_t dx = acc_new(ni), dw = acc_new(nw), db = acc_new(c.OC);
    mm_run(&c);
    matmul_backward(dx.g, dw.g, with_bias ? db.g : NULL, dout, c.inp, c.w, c.N, c.IC, c.OC);
    op_t op = {mm_run, &c, c.out, no, dout};
    fd_check(with_bias ? "matmul(bias) dinp" : "matmul(no bias) dinp", &op, c.inp, ni,
             acc_delta(&dx));
    fd_check(with_bias ? "matmul(bias) dweight" : "matmul(no bias) dweight", &op, c.w, nw,
             acc_delta(&dw));
    if (with_bias) fd_check("matmul(bias) dbias", &op, c.b, c.OC, acc_delta(&db));
    acc_free(&dx), acc_free(&dw), acc_free(&db);
    free(c.inp), free(c.w), free(c.b), free(c.out), free(dout);
}

/* |got - want| <= 1e-5 * sum |terms| + 1e-6: fp32 accumulation of K terms in any order stays
 * far inside this; an indexing or blocking bug is off by a whole term. */
static int within_sum_bound(double got, double want, double sum_abs) {
    return !isnan(got) && fabs(got - want) <= 1e-5 * sum_abs + 1e-6;
}

/* Forward and both backward products against double naive loops, at sizes that cross the
 * GEMM's register tile (6 x 16) and block (256 deep, 1024 wide) edges. */
static void test_matmul_blocked(int N, int IC, int OC, int with_bias) {
    const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *inp = rand_buf(ni, -1, 1), *w = rand_buf(nw, -1, 1), *dout = rand_buf(no, -1, 1);
    float *b = with_bias ? rand_buf(OC, -1, 1) : NULL, *out = malloc(no * sizeof(float));
    acc_t dx = acc_new(ni), dw = acc_new(nw), db = acc_new(OC);
    matmul_forward(out, inp, w, b, N, IC, OC);
    matmul_backward(dx.g, dw.g, with_bias ? db.g : NULL, dout, inp, w, N, IC, OC);
    const float *gx = acc_delta(&dx), *gw = acc_delta(&dw), *gb = acc_delta(&db);
    int bad_out = 0, bad_dx = 0, bad_dw = 0, bad_db = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0, sa = b ? fabs(b[o]) : 0.0;
            for (int i = 0; i < IC; i++) {
                const double t = (double)inp[(size_t)n * IC + i] * w[(size_t)o * IC + i];
                s += t, sa += fabs(t);
            }
            bad_out += !within_sum_bound(out[(size_t)n * OC + o], s, sa);
        }
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IC; i++) {
            double s = 0, sa = 0;
            for (int o = 0; o < OC; o++) {
                const double t = (double)dout[(size_t)n * OC + o] * w[(size_t)o * IC + i];
                s += t, sa += fabs(t);
            }
            bad_dx += !within_sum_bound(gx[(size_t)n * IC + i], s, sa + 2.0); /* + noise of += */
        }
    for (int o = 0; o < OC; o++) {
        double sb = 0, sba = 0;
        for (int i = 0; i < IC; i++) {
            double s = 0, sa = 0;
            for (int n = 0; n < N; n++) {
                const double t = (double)dout[(size_t)n * OC + o] * inp[(size_t)n * IC + i];
                s += t, sa += fabs(t);
            }
            bad_dw += !within_sum_bound(gw[(size_t)o * IC + i], s, sa + 2.0);
        }
        for (int n = 0; n < N; n++)
            sb += dout[(size_t)n * OC + o], sba += fabs(dout[(size_t)n * OC + o]);
        if (with_bias) bad_db += !within_sum_bound(gb[o], sb, sba + 2.0);
    }
    printf("  matmul %4dx%4dx%4d %s vs naive double: bad out %d dinp %d dweight %d dbias %d\n", N,
           IC, OC, with_bias ? "bias" : "    ", bad_out, bad_dx, bad_dw, bad_db);
    CHECK(bad_out + bad_dx + bad_dw + bad_db == 0, "blocked matmul %dx%dx%d disagrees with naive",
          N, IC, OC);
    acc_free(&dx), acc_free(&dw), acc_free(&db);
    free(inp), free(w), free(dout), free(b), free(out);
}

/* The AVX-512 and AVX2 kernels use one FMA per term in the same order: identical bits. */
static void test_fma_kernels_agree(void) {
    if (matmul_select_kernel("avx512") != 0 || matmul_select_kernel("avx2") != 0) {
        printf("  avx512 vs avx2 bit-identity: needs both, skipped\n");
        return;
    }
    const int N = 23, IC = 270, OC = 41;
    float *x = rand_buf((size_t)N * IC, -1, 1), *w = rand_buf((size_t)OC * IC, -1, 1);
    float *y1 = malloc((size_t)N * OC * sizeof(float)),
          *y2 = malloc((size_t)N * OC * sizeof(float));
    matmul_select_kernel("avx512");
    matmul_forward(y1, x, w, NULL, N, IC, OC);
    matmul_select_kernel("avx2");
    matmul_forward(y2, x, w, NULL, N, IC, OC);
    CHECK(memcmp(y1, y2, (size_t)N * OC * sizeof(float)) == 0, "avx512 and avx2 kernels differ");
    free(x), free(w), free(y1), free(y2);
}

/* ---- gelu ---- */
typedef struct {
    float *out, *inp;
    size_t n;
} gelu_ctx;
static void gelu_run(void *p) {
    gelu_ctx *c = p;
    gelu_forward(c->out, c->inp, c->n);
}
static void test_gelu(void) {
    gelu_ctx c = {.n = 57};
    c.inp = rand_buf(c.n, -4, 4);
    c.out = malloc(c.n * sizeof(float));
    float *dout = rand_buf(c.n, -1, 1);
    acc_t dx = acc_new(c.n);
    gelu_run(&c);
    /* Reference values of the tanh approximation. */
    const float probe_in[3] = {-1.0f, 0.5f, 2.0f},
                probe_want[3] = {-0.158808f, 0.345714f, 1.954598f};
    float probe_out[3];
    gelu_forward(probe_out, probe_in, 3);
    for (int i = 0; i < 3; i++)
        CHECK(test_close(probe_out[i], probe_want[i], 1e-5, 0), "gelu(%g) = %g, want %g",
              probe_in[i], probe_out[i], probe_want[i]);
    gelu_backward(dx.g, c.inp, dout, c.n);
    op_t op = {gelu_run, &c, c.out, c.n, dout};
    fd_check("gelu dinp", &op, c.inp, c.n, acc_delta(&dx));
    acc_free(&dx);
    free(c.inp), free(c.out), free(dout);
}

/* ---- qk_normalise ---- */
typedef struct {
    float *k, *q;
    int rows, D;
} qkn_ctx;
static void qkn_run(void *p) {
    qkn_ctx *c = p;
    qk_normalise_forward(c->k, c->q, c->rows, c->D);
}
static void test_qk_normalise(void) {
    qkn_ctx c = {.rows = 6, .D = 7};
    const size_t n = (size_t)c.rows * c.D;
    c.q = rand_buf(n, -1, 1);
    c.k = malloc(n * sizeof(float));
    float *dk = rand_buf(n, -1, 1);
    acc_t dq = acc_new(n);
    qkn_run(&c);
    double norm1 = 0;
    for (int d = 0; d < c.D; d++) norm1 += (double)c.k[c.D + d] * c.k[c.D + d];
    CHECK(test_close(norm1, 1.0, 1e-6, 0), "qk_normalise: |k| = %g, want 1", sqrt(norm1));
    qk_normalise_backward(dq.g, dk, c.q, c.k, c.rows, c.D);
    op_t op = {qkn_run, &c, c.k, n, dk};
    fd_check("qk_normalise dq", &op, c.q, n, acc_delta(&dq));
    /* A zero row stays finite: k = 0 and dq = dk / eps. */
    float zq[4] = {0, 0, 0, 0}, zk[4], zdk[4] = {0.5f, -1, 0.25f, 1}, zdq[4] = {0, 0, 0, 0};
    qk_normalise_forward(zk, zq, 1, 4);
    qk_normalise_backward(zdq, zdk, zq, zk, 1, 4);
    int finite = 1;
    for (int d = 0; d < 4; d++)
        finite &= zk[d] == 0.0f && test_close(zdq[d], zdk[d] / QK_NORM_EPS, 0, 1e-5);
    CHECK(finite, "qk_normalise of a zero row: k must be 0 and dq = dk / eps");
    acc_free(&dq);
    free(c.q), free(c.k), free(dk);
}

/* ---- crossentropy ---- */
typedef struct {
    float *losses, *lse, *logits;
    int32_t *targets;
    int N, V, Vp;
} ce_ctx;
static void ce_run(void *p) {
    ce_ctx *c = p;
    crossentropy_forward(c->losses, c->lse, c->logits, c->targets, c->N, c->V, c->Vp);
}
static void test_crossentropy(void) {
    ce_ctx c = {.N = 5, .V = 37, .Vp = 40};
    const size_t n = (size_t)c.N * c.Vp;
    c.logits = rand_buf(n, -3, 3);
    for (int r = 0; r < c.N; r++) /* large pad logits: they would dominate if included */
        for (int v = c.V; v < c.Vp; v++) c.logits[(size_t)r * c.Vp + v] = 30.0f + (float)v;
    c.losses = malloc(c.N * sizeof(float));
    c.lse = malloc(c.N * sizeof(float));
    c.targets = malloc(c.N * sizeof(int32_t));
    for (int r = 0; r < c.N; r++) c.targets[r] = (r * 11 + 4) % c.V;
    c.targets[c.N - 1] = c.V - 1; /* the last real token */
    ce_run(&c);
    int loss_ok = 1;
    for (int r = 0; r < c.N; r++) {
        const float *l = c.logits + (size_t)r * c.Vp;
        double s = 0;
        for (int v = 0; v < c.V; v++) s += exp((double)l[v]);
        loss_ok &= test_close(c.losses[r], log(s) - l[c.targets[r]], 1e-5, 1e-6);
    }
    CHECK(loss_ok, "crossentropy loss differs from the softmax over the real vocabulary");
    /* One scalar dloss for all rows: the objective is dloss * sum(losses). */
    const float dloss = 0.37f;
    float *dlogits = rand_buf(n, -1, 1); /* written, not accumulated: noise must vanish */
    crossentropy_backward(dlogits, c.logits, c.lse, c.targets, dloss, c.N, c.V, c.Vp);
    int pad_zero = 1;
    double max_row_sum = 0;
    for (int r = 0; r < c.N; r++) {
        double s = 0;
        for (int v = 0; v < c.Vp; v++) s += dlogits[(size_t)r * c.Vp + v];
        for (int v = c.V; v < c.Vp; v++) pad_zero &= dlogits[(size_t)r * c.Vp + v] == 0.0f;
        max_row_sum = fmax(max_row_sum, fabs(s));
    }
    CHECK(pad_zero, "crossentropy: padded logits must get exactly zero gradient");
    CHECK(max_row_sum < 1e-6, "crossentropy: gradient rows must sum to 0 (got %g)", max_row_sum);
    float *dl = malloc(c.N * sizeof(float));
    for (int r = 0; r < c.N; r++) dl[r] = dloss;
    op_t op = {ce_run, &c, c.losses, (size_t)c.N, dl};
    fd_check("crossentropy dlogits (+pad)", &op, c.logits, n, dlogits);
    free(c.logits), free(c.losses), free(c.lse), free(c.targets), free(dlogits), free(dl);
}

/* The softmax's own vectorised exp against double precision over a GPT-2-sized row whose
 * logits span 90 nats (some terms underflow), with V not a multiple of any block. */
static void test_crossentropy_wide(void) {
    const int N = 3, V = 50257, Vp = 50304;
    float *logits = rand_buf((size_t)N * Vp, -60, 30), *dl = malloc((size_t)N * Vp * sizeof(float));
    float losses[3], lse[3];
    int32_t targets[3] = {0, 12345, V - 1};
    crossentropy_forward(losses, lse, logits, targets, N, V, Vp);
    const float dloss = 0.25f;
    crossentropy_backward(dl, logits, lse, targets, dloss, N, V, Vp);
    double max_loss_err = 0, max_p_err = 0;
    for (int r = 0; r < N; r++) {
        const float *l = logits + (size_t)r * Vp;
        double m = l[0], s = 0;
        for (int v = 1; v < V; v++) m = fmax(m, l[v]);
        for (int v = 0; v < V; v++) s += exp((double)l[v] - m);
        const double ref_lse = m + log(s);
        max_loss_err = fmax(max_loss_err, fabs(losses[r] - (ref_lse - l[targets[r]])) /
                                              (ref_lse - l[targets[r]]));
        for (int v = 0; v < V; v++) {
            const double p = dloss * (exp((double)l[v] - ref_lse) - (v == targets[r]));
            /* fp32 rounding of lse and of (l - lse) shifts the exponent by up to
             * 2^-24 (|lse| + |l - lse|); beyond that, 1e-6 relative for the exp itself. */
            const double e = dloss * exp((double)l[v] - ref_lse);
            const double bound = e * (1e-6 + 6e-8 * (fabs(ref_lse) + fabs(l[v] - ref_lse))) +
                                 (v == targets[r] ? 1e-7 * dloss : 0.0) + 1e-37;
            max_p_err = fmax(max_p_err, fabs(dl[(size_t)r * Vp + v] - p) / bound);
        }
    }
    printf("  crossentropy V=%d: max rel err loss %.1e, dlogits err / fp32 bound %.2f\n", V,
           max_loss_err, max_p_err);
    CHECK(max_loss_err < 1e-6, "wide crossentropy loss rel err %g", max_loss_err);
    CHECK(max_p_err <= 1.0, "wide crossentropy dlogits exceed the fp32 error bound (x%g)",
          max_p_err);
    free(logits), free(dl);
}

/* ---- glue and residual ---- */
static void test_glue(int shared_qk) {
    const int N = 5, C = 12, P = shared_qk ? 2 * C : 3 * C;
    float *qkv = rand_buf((size_t)N * P, -1, 1), *back = rand_buf((size_t)N * P, -1, 1);
    float *q = malloc((size_t)N * C * 4), *k = rand_buf((size_t)N * C, -1, 1),
          *v = malloc((size_t)N * C * 4);
    attn_split_qkv(q, k, v, qkv, N, C, shared_qk);
    int layout_ok = 1;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            layout_ok &= q[n * C + c] == qkv[n * P + c];
            layout_ok &= v[n * C + c] == qkv[n * P + (shared_qk ? C : 2 * C) + c];
            if (!shared_qk) layout_ok &= k[n * C + c] == qkv[n * P + C + c];
        }
    attn_merge_dqkv(back, q, k, v, N, C, shared_qk);
    CHECK(layout_ok && memcmp(back, qkv, (size_t)N * P * sizeof(float)) == 0,
          "attention glue (shared_qk=%d): split/merge are not inverse copies", shared_qk);
    free(qkv), free(back), free(q), free(k), free(v);
}

static void test_residual(void) {
    const size_t n = 29;
    float *a = rand_buf(n, -1, 1), *b = rand_buf(n, -1, 1), *o = malloc(n * sizeof(float));
    residual_forward(o, a, b, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= o[i] == a[i] + b[i];
    CHECK(ok, "residual_forward must be a + b");
    free(a), free(b), free(o);
}

int main(void) {
    printf("finite differences: step %g, pass if |fd - analytic| <= %g + %g |analytic|\n", FD_STEP,
           FD_ATOL, FD_RTOL);
    test_encoder();
    test_layernorm(1);
    test_layernorm(0);
    test_matmul_fd(1);
    test_matmul_fd(0);
    /* Every micro-kernel this CPU can run, then back to the default one. */
    const char *default_kernel = matmul_kernel_name();
    const char *kernels[] = {"avx512", "avx2", "portable"};
    for (int i = 0; i < 3; i++) {
        if (matmul_select_kernel(kernels[i]) != 0) {
            printf("  matmul kernel %s: not supported by this CPU, skipped\n", kernels[i]);
            continue;
        }
        printf("  matmul kernel %s\n", kernels[i]);
        test_matmul_blocked(37, 300, 1030, 1);
        test_matmul_blocked(13, 7, 17, 0);
        test_matmul_blocked(1, 1, 1, 1);
        test_matmul_blocked(260, 33, 5, 0);
        test_matmul_blocked(50, 300, 250, 1); /* OC < IC, OC > one packed A block */
    }
    test_fma_kernels_agree();
    CHECK(matmul_select_kernel(default_kernel) == 0, "cannot restore kernel %s", default_kernel);
    CHECK(matmul_select_kernel("no_such_kernel") == -1, "unknown kernel name must be refused");
    test_gelu();
    test_qk_normalise();
    test_crossentropy();
    test_crossentropy_wide();
    test_glue(0);
    test_glue(1);
    test_residual();
    return test_summary();
}
