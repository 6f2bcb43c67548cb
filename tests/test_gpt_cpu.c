/* Whole-model checks of the CPU reference GPT (model/gpt.h, model/cpu/gpt_cpu.h):
 *  - parameter table: documented names and order, contiguous offsets, sum == gpt_num_params;
 *  - initialisation statistics and determinism; loss at init close to ln(vocab_size);
 *  - identical loss, logits and gradients for 1 and 2 threads;
 *  - finite-difference gradients of the loss for every tensor, in every attention mode
 *    (dense, qk_sparse, hash_sparse), shared_qk on/off, exclude_self on/off, a per-layer
 *    dense override, bias on/off.
 * Gradient method: parameters are set to generic random values (not the init, whose zero
 * biases and unit LayerNorm weights would hide mistakes), then for every tensor
 *  (a) a directional derivative along a random +-1 direction against <grad, direction>, and
 *  (b) single elements (the largest |grad| ones and random ones) by central differences.
 * The model is fp32 and returns a fp32 loss, so a difference quotient carries ~1e-5 of noise:
 * elements are compared when |grad| >= FD_MIN_GRAD with |fd - g| <= FD_ATOL + FD_RTOL |g|.
 * Hash buckets depend on Q, hence on the parameters: an evaluation whose plan differs from the
 * unperturbed one is not differentiable there and is skipped (and counted). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/gpt_cpu.h"
#include "model/gpt.h"
#include "runtime/rng.h"
#include "tests/test.h"

#define FD_STEP 1e-2
#define FD_RTOL 1e-2
#define FD_ATOL 1e-4
#define FD_MIN_GRAD 1e-3
#define DIR_RTOL 1e-2
#define DIR_NORM 0.05

enum { TB = 2, TT = 11 };

static uint64_t counter;
static const uint64_t test_key = 0x6e7a11ULL;
static float uniform(float lo, float hi) {
    return lo + (hi - lo) * rng_uniform(test_key, counter++);
}

static gpt_config_t tiny_config(attn_mode_t mode, int shared_qk, int exclude_self, int bias) {
    gpt_config_t c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2, c.n_head = 3, c.n_embd = 24; /* head dim 8 */
    c.vocab_size = 37, c.padded_vocab = 40, c.seq_len = TT;
    c.bias = bias, c.shared_qk = shared_qk;
    c.attn.mode = mode;
    c.attn.n_buckets = mode == ATTN_HASH_SPARSE ? 4 : 1;
    c.attn.drop_prob = mode == ATTN_QK_SPARSE ? 0.5f : 0.0f;
    c.attn.exclude_self = exclude_self;
    c.seed = 1234;
    return c;
}

static void random_tokens(int32_t *t, int n, int V) {
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rng_u24(test_key, counter++) % (uint32_t)V);
}

static gpt_tensor_t *table_of(const gpt_config_t *cfg, int *n) {
    *n = gpt_tensors(cfg, NULL);
    gpt_tensor_t *t = malloc((size_t)*n * sizeof *t);
    gpt_tensors(cfg, t);
    return t;
}

/* ---- parameter table ---- */
static void test_table(int bias, int shared_qk) {
    gpt_config_t cfg = tiny_config(ATTN_DENSE, shared_qk, 0, bias);
    int n;
    gpt_tensor_t *t = table_of(&cfg, &n);
    const int per_layer = bias ? 12 : 6;
    CHECK(n == 2 + cfg.n_layer * per_layer + (bias ? 2 : 1), "tensor count %d (bias %d)", n, bias);
    size_t off = 0;
    int contiguous = 1, decay_ok = 1;
    for (int i = 0; i < n; i++) {
        contiguous &=
            t[i].offset == off && t[i].numel == (size_t)t[i].rows * (t[i].cols ? t[i].cols : 1);
        decay_ok &= t[i].decay == (t[i].cols > 0);
        off += t[i].numel;
    }
    CHECK(contiguous, "tensor offsets must be contiguous in table order");
    CHECK(decay_ok, "weight decay must apply to matrices only");
    CHECK(off == gpt_num_params(&cfg), "sum of numel %zu != gpt_num_params %zu", off,
          gpt_num_params(&cfg));
    const int C = cfg.n_embd, P = shared_qk ? 2 * C : 3 * C;
    CHECK(strcmp(t[0].name, "wte") == 0 && t[0].rows == cfg.padded_vocab && t[0].cols == C,
          "wte first");
    CHECK(strcmp(t[1].name, "wpe") == 0 && t[1].rows == cfg.seq_len && t[1].cols == C,
          "wpe second");
    CHECK(strcmp(t[2].name, "h.0.ln1.w") == 0, "third tensor is %s", t[2].name);
    const char *qkv_name = "h.0.attn.qkv.w";
    int found = 0;
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, qkv_name) == 0) found = t[i].rows == P && t[i].cols == C;
    CHECK(found, "%s must be [%d][%d]", qkv_name, P, C);
    const char *expect_l1[] = {"h.1.ln1.w",      "h.1.ln1.b",       "h.1.attn.qkv.w",
                               "h.1.attn.qkv.b", "h.1.attn.proj.w", "h.1.attn.proj.b",
                               "h.1.ln2.w",      "h.1.ln2.b",       "h.1.mlp.fc.w",
                               "h.1.mlp.fc.b",   "h.1.mlp.proj.w",  "h.1.mlp.proj.b"};
    int order_ok = 1, k = 2 + per_layer;
    for (int i = 0; i < 12; i++) {
        if (!bias && i % 2 == 1) continue;
        order_ok &= strcmp(t[k++].name, expect_l1[i]) == 0;
    }
    CHECK(order_ok, "layer tensors not in the documented order (bias %d)", bias);
    CHECK(strcmp(t[n - 1].name, bias ? "lnf.b" : "lnf.w") == 0, "last tensor is %s", t[n - 1].name);
    free(t);
}

static void test_layer_attn(void) {
    gpt_config_t cfg = tiny_config(ATTN_HASH_SPARSE, 1, 1, 0);
    cfg.dense_layer_mask = 1u << 1;
    attn_params_t p0 = gpt_layer_attn(&cfg, 0), p1 = gpt_layer_attn(&cfg, 1);
    CHECK(p0.mode == ATTN_HASH_SPARSE && p0.n_buckets == 4 && p0.exclude_self == 1,
          "layer 0 keeps the model's attention");
    CHECK(p1.mode == ATTN_DENSE && p1.exclude_self == 1, "dense override keeps exclude_self");
}

/* ---- initialisation ---- */
static void test_init(void) {
    gpt_config_t cfg = tiny_config(ATTN_DENSE, 0, 0, 1);
    cfg.n_embd = 64, cfg.n_head = 4, cfg.vocab_size = 1000, cfg.padded_vocab = 1024,
    cfg.seq_len = 64;
    int n;
    gpt_tensor_t *t = table_of(&cfg, &n);
    const size_t np = gpt_num_params(&cfg);
    float *p = malloc(np * sizeof(float)), *p2 = malloc(np * sizeof(float));
    gpt_init_params(&cfg, p);
    gpt_init_params(&cfg, p2);
    CHECK(memcmp(p, p2, np * sizeof(float)) == 0, "same seed must give identical parameters");
    cfg.seed++;
    gpt_init_params(&cfg, p2);
    CHECK(memcmp(p, p2, np * sizeof(float)) != 0, "another seed must give other parameters");
    const double resid_std = 0.02 / sqrt(2.0 * cfg.n_layer);
    for (int i = 0; i < n; i++) {
        const float *x = p + t[i].offset;
        size_t live = t[i].numel;
        if (strcmp(t[i].name, "wte") == 0) {
            live = (size_t)cfg.vocab_size * t[i].cols;
            int pad_zero = 1;
            for (size_t j = live; j < t[i].numel; j++) pad_zero &= x[j] == 0.0f;
            CHECK(pad_zero, "padded wte rows must be 0");
        }
        if (t[i].cols == 0) {
            const float want = strstr(t[i].name, ".w") ? 1.0f : 0.0f;
            int ok = 1;
            for (size_t j = 0; j < t[i].numel; j++) ok &= x[j] == want;
            CHECK(ok, "%s must be all %g", t[i].name, want);
            continue;
        }
        double s = 0, s2 = 0;
        for (size_t j = 0; j < live; j++) s += x[j], s2 += (double)x[j] * x[j];
        const double mean = s / live, std = sqrt(s2 / live - mean * mean);
        const double want = strstr(t[i].name, ".proj.w") ? resid_std : 0.02;
        /* std error of a sample std is std / sqrt(2n): 4096+ samples -> < 1.2%; allow 5% */
        CHECK(fabs(std / want - 1.0) < 0.05 && fabs(mean) < 4.0 * want / sqrt((double)live),
              "%s: mean %g std %g, want 0 and %g", t[i].name, mean, std, want);
    }
    free(p), free(p2), free(t);
}

/* ---- loss at init, determinism, thread independence ---- */
static void test_init_loss_and_determinism(void) {
    gpt_config_t cfg = tiny_config(ATTN_HASH_SPARSE, 1, 1, 1);
    int32_t in[TB * TT], tg[TB * TT];
    random_tokens(in, TB * TT, cfg.vocab_size);
    random_tokens(tg, TB * TT, cfg.vocab_size);
    const size_t np = gpt_num_params(&cfg);
    gpt_cpu_t *a = gpt_cpu_create(&cfg, TB, TT), *b = gpt_cpu_create(&cfg, TB, TT);
    gpt_init_params(&cfg, gpt_cpu_params(a));
    gpt_init_params(&cfg, gpt_cpu_params(b));
    const float la = gpt_cpu_forward(a, in, tg, TB, TT, 3, 1);
    gpt_cpu_zero_grad(a);
    gpt_cpu_backward(a, 1.0f);
    printf("  loss at init %.5f, ln(vocab) %.5f\n", la, log((double)cfg.vocab_size));
    CHECK(fabs(la - log((double)cfg.vocab_size)) < 0.05, "loss at init %g far from ln(V) %g", la,
          log((double)cfg.vocab_size));
    const float lb = gpt_cpu_forward(b, in, tg, TB, TT, 3, 1);
    gpt_cpu_zero_grad(b);
    gpt_cpu_backward(b, 1.0f);
    CHECK(la == lb, "loss differs between two identical models: %.9g vs %.9g", la, lb);
    CHECK(memcmp(gpt_cpu_grads(a), gpt_cpu_grads(b), np * sizeof(float)) == 0,
          "gradients differ between two identical models");
    /* Backward accumulates: a second backward with scale 0.5 adds half the gradient. */
    float *g1 = malloc(np * sizeof(float));
    memcpy(g1, gpt_cpu_grads(a), np * sizeof(float));
    gpt_cpu_backward(a, 0.5f);
    int acc_ok = 1;
    for (size_t i = 0; i < np; i++)
        acc_ok &= test_close(gpt_cpu_grads(a)[i], 1.5 * g1[i], 1e-9, 1e-5);
    CHECK(acc_ok, "backward must accumulate grads += scale * dloss/dparams");
    /* Another step draws another plan. */
    const attn_plan_t *pa = gpt_cpu_plan(a, 0);
    int32_t *buckets = malloc((size_t)TB * cfg.n_head * TT * sizeof(int32_t));
    memcpy(buckets, pa->bucket_q, (size_t)TB * cfg.n_head * TT * sizeof(int32_t));
    gpt_cpu_forward(a, in, tg, TB, TT, 4, 1);
    CHECK(memcmp(buckets, gpt_cpu_plan(a, 0)->bucket_q, (size_t)TB * cfg.n_head * TT * 4) != 0,
          "step 4 must draw other buckets than step 3");
    /* A shorter micro-batch works with the same model. */
    const float ls = gpt_cpu_forward(a, in, tg, 1, 5, 3, 1);
    CHECK(isfinite(ls) && gpt_cpu_plan(a, 0)->T == 5, "forward at B=1, T=5 failed");
    free(g1), free(buckets);
    gpt_cpu_free(a), gpt_cpu_free(b);
}

/* Results must not depend on the thread count. The tiny model runs every op on one thread
 * (small loops stay serial), so this uses sizes above the ops' parallel thresholds. */
static void test_thread_independence(void) {
    gpt_config_t cfg = tiny_config(ATTN_HASH_SPARSE, 0, 0, 1);
    /* vocab > 2 * B*T: the LM head also takes the column-split path of the matmul */
    cfg.n_layer = 1, cfg.n_embd = 128, cfg.n_head = 4, cfg.vocab_size = 600, cfg.padded_vocab = 640;
    cfg.seq_len = 64;
    enum { B = 4, T = 64 };
    int32_t *in = malloc(B * T * sizeof(int32_t)), *tg = malloc(B * T * sizeof(int32_t));
    random_tokens(in, B * T, cfg.vocab_size);
    random_tokens(tg, B * T, cfg.vocab_size);
    const size_t np = gpt_num_params(&cfg);
    gpt_cpu_t *m[2];
    float loss[2];
    const int threads = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r == 0 ? 1 : 2);
        m[r] = gpt_cpu_create(&cfg, B, T);
        gpt_init_params(&cfg, gpt_cpu_params(m[r]));
        loss[r] = gpt_cpu_forward(m[r], in, tg, B, T, 1, 0);
        gpt_cpu_zero_grad(m[r]);
        gpt_cpu_backward(m[r], 1.0f);
    }
    omp_set_num_threads(threads);
    CHECK(loss[0] == loss[1], "loss differs between 1 and 2 threads: %.9g vs %.9g", loss[0],
          loss[1]);
    CHECK(memcmp(gpt_cpu_grads(m[0]), gpt_cpu_grads(m[1]), np * sizeof(float)) == 0,
          "gradients differ between 1 and 2 threads");
    CHECK(memcmp(gpt_cpu_logits(m[0]), gpt_cpu_logits(m[1]),
                 (size_t)B * T * cfg.padded_vocab * sizeof(float)) == 0,
          "logits differ between 1 and 2 threads");
    gpt_cpu_free(m[0]), gpt_cpu_free(m[1]);
    free(in), free(tg);
}

/* ---- finite differences ---- */
typedef struct {
    gpt_cpu_t *m;
    const gpt_config_t *cfg;
    const int32_t *in, *tg;
    int32_t *ref_buckets[GPT_MAX_LAYERS];
    size_t bucket_rows;
    int skipped;
} fd_model_t;

/* The loss recomputed in double from the model's fp32 logits: the same function as the
 * returned fp32 loss (crossentropy is checked against it in test_ops_cpu), minus the final
 * rounding to fp32, which would otherwise dominate the noise of the difference quotients. */
static double loss_at(fd_model_t *f, int *plan_changed) {
    gpt_cpu_forward(f->m, f->in, f->tg, TB, TT, 7, 2);
    const float *logits = gpt_cpu_logits(f->m);
    const int V = f->cfg->vocab_size, Vp = f->cfg->padded_vocab;
    double loss = 0.0;
    for (int r = 0; r < TB * TT; r++) {
        const float *l = logits + (size_t)r * Vp;
        double s = 0.0;
        for (int v = 0; v < V; v++) s += exp((double)l[v]);
        loss += log(s) - l[f->tg[r]];
    }
    *plan_changed = 0;
    for (int l = 0; l < f->cfg->n_layer; l++) {
        const attn_plan_t *p = gpt_cpu_plan(f->m, l);
        if (p->bucket_q &&
            (memcmp(p->bucket_q, f->ref_buckets[l], f->bucket_rows * 4) != 0 ||
             memcmp(p->bucket_k, f->ref_buckets[l] + f->bucket_rows, f->bucket_rows * 4) != 0))
            *plan_changed = 1;
    }
    return loss / (TB * TT);
}

/* Central difference of the loss along `dir` (NULL: unit vector at element `idx`) in tensor t;
 * returns NAN if the plan changed. */
static double fd_derivative(fd_model_t *f, float *p, size_t n, const float *dir, size_t idx,
                            double h) {
    float *saved = malloc(n * sizeof(float));
    memcpy(saved, p, n * sizeof(float));
    double lp, lm;
    int c1, c2;
    if (dir)
        for (size_t i = 0; i < n; i++) p[i] = saved[i] + (float)(h * dir[i]);
    else
        p[idx] = saved[idx] + (float)h;
    lp = loss_at(f, &c1);
    if (dir)
        for (size_t i = 0; i < n; i++) p[i] = saved[i] - (float)(h * dir[i]);
    else
        p[idx] = saved[idx] - (float)h;
    lm = loss_at(f, &c2);
    /* The actual step after rounding to fp32 (element case). */
    const double step =
        dir ? 2.0 * h : (double)(saved[idx] + (float)h) - (double)(saved[idx] - (float)h);
    memcpy(p, saved, n * sizeof(float));
    free(saved);
    if (c1 || c2) return NAN;
    return (lp - lm) / step;
}

/* Generic parameter values: matrices ~ U(+-1.7/sqrt(fan_in)), LayerNorm weights U(0.7, 1.3),
 * biases U(+-0.2), embeddings U(+-0.5). */
static void randomise_params(const gpt_config_t *cfg, float *params) {
    int n;
    gpt_tensor_t *t = table_of(cfg, &n);
    for (int i = 0; i < n; i++) {
        float lo = -0.2f, hi = 0.2f;
        if (t[i].cols > 0) hi = 1.7f / sqrtf((float)t[i].cols), lo = -hi;
        if (i < 2) lo = -0.5f, hi = 0.5f;
        if (t[i].cols == 0 && strstr(t[i].name, ".w")) lo = 0.7f, hi = 1.3f;
        for (size_t j = 0; j < t[i].numel; j++) params[t[i].offset + j] = uniform(lo, hi);
    }
    free(t);
}

static void gradcheck(int index, const char *label, gpt_config_t cfg) {
    counter = (uint64_t)index << 32; /* each case draws its own numbers */
    int n;
    gpt_tensor_t *t = table_of(&cfg, &n);
    int32_t in[TB * TT], tg[TB * TT];
    random_tokens(in, TB * TT, cfg.vocab_size);
    random_tokens(tg, TB * TT, cfg.vocab_size);
    fd_model_t f = {.m = gpt_cpu_create(&cfg, TB, TT), .cfg = &cfg, .in = in, .tg = tg};
    float *params = gpt_cpu_params(f.m);
    randomise_params(&cfg, params);
    gpt_cpu_forward(f.m, in, tg, TB, TT, 7, 2);
    gpt_cpu_zero_grad(f.m);
    gpt_cpu_backward(f.m, 1.0f);
    const size_t np = gpt_num_params(&cfg);
    float *grad = malloc(np * sizeof(float));
    memcpy(grad, gpt_cpu_grads(f.m), np * sizeof(float));
    f.bucket_rows = (size_t)TB * cfg.n_head * TT;
    for (int l = 0; l < cfg.n_layer; l++) {
        const attn_plan_t *p = gpt_cpu_plan(f.m, l);
        f.ref_buckets[l] = malloc(2 * f.bucket_rows * 4); /* bucket_q then bucket_k */
        if (p->bucket_q) {
            memcpy(f.ref_buckets[l], p->bucket_q, f.bucket_rows * 4);
            memcpy(f.ref_buckets[l] + f.bucket_rows, p->bucket_k, f.bucket_rows * 4);
        }
    }
    double max_rel_elem = 0, max_rel_dir = 0;
    int bad = 0, checked = 0;
    for (int ti = 0; ti < n; ti++) {
        float *p = params + t[ti].offset;
        const float *g = grad + t[ti].offset;
        const size_t numel = t[ti].numel;
        /* (a) directional derivative */
        float *dir = malloc(numel * sizeof(float));
        double want = 0;
        for (size_t i = 0; i < numel; i++) {
            dir[i] = rng_u24(test_key, counter++) & 1 ? 1.0f : -1.0f;
            want += (double)dir[i] * g[i];
        }
        double got = NAN;
        /* perturbation of fixed norm DIR_NORM: the third-order error must not grow with numel */
        const double h0 = DIR_NORM / sqrt((double)numel);
        for (double h = h0; h >= h0 * 1e-2 && isnan(got); h *= 0.1)
            got = fd_derivative(&f, p, numel, dir, 0, h);
        free(dir);
        if (isnan(got)) {
            f.skipped++;
        } else {
            const double rel = fabs(got - want) / fmax(fabs(want), 1e-6);
            max_rel_dir = fmax(max_rel_dir, fabs(want) > 1e-3 ? rel : 0);
            checked++;
            if (!test_close(got, want, 5e-4, DIR_RTOL)) {
                bad++;
                fprintf(stderr, "  %s %s: directional fd %.6g analytic %.6g\n", label, t[ti].name,
                        got, want);
            }
        }
        /* (b) single elements: the 3 largest |grad| and 3 random ones */
        size_t pick[6];
        for (int k = 0; k < 3; k++) {
            size_t best = 0;
            double bv = -1;
            for (size_t i = 0; i < numel; i++) {
                int taken = 0;
                for (int q = 0; q < k; q++) taken |= pick[q] == i;
                if (!taken && fabs(g[i]) > bv) bv = fabs(g[i]), best = i;
            }
            pick[k] = best;
        }
        for (int k = 3; k < 6; k++) pick[k] = rng_u24(test_key, counter++) % numel;
        for (int k = 0; k < 6; k++) {
            const size_t i = pick[k];
            double fd = NAN;
            for (double h = FD_STEP; h >= FD_STEP * 1e-2 && isnan(fd); h *= 0.1)
                fd = fd_derivative(&f, p, numel, NULL, i, h);
            if (isnan(fd)) {
                f.skipped++;
                continue;
            }
            if (fabs(g[i]) < FD_MIN_GRAD && fabs(fd) < FD_MIN_GRAD) continue;
            checked++;
            max_rel_elem = fmax(max_rel_elem, fabs(fd - g[i]) / fabs(g[i]));
            if (!test_close(fd, g[i], FD_ATOL, FD_RTOL)) {
                bad++;
                fprintf(stderr, "  %s %s[%zu]: fd %.6g analytic %.6g\n", label, t[ti].name, i, fd,
                        g[i]);
            }
        }
    }
    printf("  %-40s %3d checks, max rel err: element %.1e, directional %.1e, skipped (bucket flip) "
           "%d\n",
           label, checked, max_rel_elem, max_rel_dir, f.skipped);
    CHECK(bad == 0, "%s: %d gradient checks failed", label, bad);
    CHECK(checked >= 4 * n, "%s: only %d of the gradient checks were usable", label, checked);
    for (int l = 0; l < cfg.n_layer; l++) free(f.ref_buckets[l]);
    free(grad), free(t);
    gpt_cpu_free(f.m);
}

int main(void) {
    test_table(1, 0);
    test_table(0, 1);
    test_layer_attn();
    test_init();
    test_init_loss_and_determinism();
    test_thread_independence();
    /* The gradient checks run thousands of forwards of a tiny model: one thread, since a
     * team's fork/join costs more than the work (thread independence is tested above). */
    omp_set_num_threads(1);
    printf("finite differences: element step %g, |fd - g| <= %g + %g |g| where |g| >= %g; "
           "directional rel tol %g\n",
           FD_STEP, FD_ATOL, FD_RTOL, FD_MIN_GRAD, DIR_RTOL);
    gradcheck(1, "dense bias", tiny_config(ATTN_DENSE, 0, 0, 1));
    gradcheck(2, "dense shared_qk exclude_self", tiny_config(ATTN_DENSE, 1, 1, 0));
    gradcheck(3, "qk_sparse 0.5 bias", tiny_config(ATTN_QK_SPARSE, 0, 0, 1));
    gradcheck(4, "qk_sparse 0.5 shared_qk exclude_self", tiny_config(ATTN_QK_SPARSE, 1, 1, 0));
    gradcheck(5, "hash nb4 bias", tiny_config(ATTN_HASH_SPARSE, 0, 0, 1));
    gradcheck(6, "hash nb4 shared_qk exclude_self", tiny_config(ATTN_HASH_SPARSE, 1, 1, 0));
    gpt_config_t mixed = tiny_config(ATTN_HASH_SPARSE, 1, 1, 1);
    mixed.dense_layer_mask = 1u; /* layer 0 dense, layer 1 hashed */
    gradcheck(7, "hash nb4 shared_qk excl, layer 0 dense", mixed);
    gpt_config_t centred = tiny_config(ATTN_HASH_SPARSE, 1, 1, 0);
    centred.attn.hash_center = 1; /* buckets of the centred rows; the gradient ignores the hash */
    gradcheck(8, "hash nb4 shared_qk excl, hash_center", centred);
    return test_summary();
}
