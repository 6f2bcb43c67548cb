/* model/optim.h: AdamW against a double-precision transcription of the documented update,
 * global norm and clip factor, learning-rate schedule values, and sampling (argmax at
 * temperature 0, frequencies against softmax probabilities). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/optim.h"
#include "runtime/rng.h"
#include "tests/test.h"

static const uint64_t key = 0x0b7ULL;
static uint64_t counter;
static float uniform(float lo, float hi) { return lo + (hi - lo) * rng_uniform(key, counter++); }

/* Several steps with fresh gradients; the float implementation must track the double one. */
static void test_adamw(int decay) {
    enum { N = 1237, STEPS = 6 };
    const adamw_hparams_t h = {
        .lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    float *p = malloc(N * sizeof(float)), *g = malloc(N * sizeof(float));
    float *m = calloc(N, sizeof(float)), *v = calloc(N, sizeof(float));
    double *rp = malloc(N * sizeof(double)), *rm = calloc(N, sizeof(double)),
           *rv = calloc(N, sizeof(double));
    for (int i = 0; i < N; i++) rp[i] = p[i] = uniform(-0.05f, 0.05f); /* weight-sized */
    float *p0 = malloc(N * sizeof(float));
    memcpy(p0, p, N * sizeof(float));
    /* Errors relative to each quantity's largest magnitude over the tensor (an element of m
     * can sit near 0 by cancellation); for p, of the displacement p - p0 (the update). */
    double max_rel = 0;
    for (long t = 1; t <= STEPS; t++) {
        const float scale = t % 2 ? 0.5f : 1.0f; /* a clip factor on some steps */
        /* Gradient magnitudes spread over 4 decades so eps and the moments both matter. */
        for (int i = 0; i < N; i++) g[i] = uniform(-1, 1) * powf(10.0f, uniform(-4, 0));
        adamw_step(p, g, m, v, N, decay, &h, t, scale);
        const double b1 = h.beta1, b2 = h.beta2, bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
        for (int i = 0; i < N; i++) {
            const double gi = (double)scale * g[i];
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            const double upd =
                (rm[i] / bc1) / (sqrt(rv[i] / bc2) + h.eps) + (decay ? h.weight_decay * rp[i] : 0);
            rp[i] -= h.lr * upd;
        }
        double ep = 0, em = 0, ev = 0, sp = 0, sm = 0, sv = 0;
        for (int i = 0; i < N; i++) {
            ep = fmax(ep, fabs((double)p[i] - rp[i])), sp = fmax(sp, fabs(rp[i] - p0[i]));
            em = fmax(em, fabs(m[i] - rm[i])), sm = fmax(sm, fabs(rm[i]));
            ev = fmax(ev, fabs(v[i] - rv[i])), sv = fmax(sv, fabs(rv[i]));
        }
        max_rel = fmax(max_rel, fmax(ep / sp, fmax(em / sm, ev / sv)));
    }
    printf("  adamw decay=%d: %d steps, max rel err of p, m, v vs double: %.1e\n", decay, STEPS,
           max_rel);
    CHECK(max_rel < 1e-5, "adamw (decay %d) deviates from the double reference: %g", decay,
          max_rel);
    /* decay actually matters: without it, a zero gradient leaves p unchanged */
    float p1 = 0.5f, g0 = 0.0f, m0 = 0.0f, v0 = 0.0f;
    adamw_step(&p1, &g0, &m0, &v0, 1, decay, &h, 1, 1.0f);
    const float want = decay ? 0.5f - h.lr * h.weight_decay * 0.5f : 0.5f;
    CHECK(test_close(p1, want, 0, 1e-6), "adamw decay=%d on zero gradient: %g, want %g", decay, p1,
          want);
    free(p), free(p0), free(g), free(m), free(v), free(rp), free(rm), free(rv);
}

static void test_norm_and_clip(void) {
    const size_t n = 200003; /* several fixed chunks plus a partial one */
    float *g = malloc(n * sizeof(float));
    double want = 0;
    for (size_t i = 0; i < n; i++) {
        g[i] = uniform(-2, 2);
        want += (double)g[i] * g[i];
    }
    want = sqrt(want);
    const double got = grad_global_norm(g, n);
    CHECK(test_close(got, want, 0, 1e-12), "grad_global_norm %.15g, want %.15g", got, want);
    CHECK(grad_clip_factor(0.5, 1.0f) == 1.0f, "below max_norm: factor 1");
    CHECK(grad_clip_factor(1.0, 1.0f) == 1.0f, "at max_norm: factor 1");
    CHECK(test_close(grad_clip_factor(4.0, 1.0f), 0.25, 0, 1e-7), "norm 4, max 1: factor 0.25");
    CHECK(grad_clip_factor(1e6, 0.0f) == 1.0f, "max_norm 0 disables clipping");
    CHECK(grad_clip_factor(1e6, -1.0f) == 1.0f, "max_norm < 0 disables clipping");
    free(g);
}

static void test_schedule(void) {
    const long warm = 10, max = 110;
    const float lr = 1e-3f, min_lr = 1e-4f;
    CHECK(test_close(lr_at_step(0, max, warm, lr, min_lr, SCHEDULE_COSINE), lr / warm, 0, 1e-6),
          "warm-up starts at lr / warmup");
    CHECK(test_close(lr_at_step(4, max, warm, lr, min_lr, SCHEDULE_COSINE), lr * 5 / warm, 0, 1e-6),
          "warm-up is linear");
    CHECK(test_close(lr_at_step(warm - 1, max, warm, lr, min_lr, SCHEDULE_COSINE), lr, 0, 1e-6),
          "warm-up ends at lr");
    CHECK(test_close(lr_at_step(warm, max, warm, lr, min_lr, SCHEDULE_COSINE), lr, 0, 1e-6),
          "decay starts at lr");
    CHECK(test_close(lr_at_step(warm + (max - warm) / 2, max, warm, lr, min_lr, SCHEDULE_COSINE),
                     0.5 * (lr + min_lr), 0, 1e-6),
          "cosine middle is the mean of lr and min_lr");
    CHECK(test_close(lr_at_step(max, max, warm, lr, min_lr, SCHEDULE_COSINE), min_lr, 0, 1e-6),
          "cosine ends at min_lr");
    CHECK(test_close(lr_at_step(max + 50, max, warm, lr, min_lr, SCHEDULE_COSINE), min_lr, 0, 1e-6),
          "after max_steps: min_lr");
    const float quarter =
        lr_at_step(warm + (max - warm) / 4, max, warm, lr, min_lr, SCHEDULE_COSINE);
    CHECK(test_close(quarter, min_lr + 0.5 * (1 + cos(M_PI / 4)) * (lr - min_lr), 0, 1e-6),
          "cosine at a quarter: %g", quarter);
    CHECK(lr_at_step(60, max, warm, lr, min_lr, SCHEDULE_CONSTANT) == lr, "constant schedule");
    CHECK(
        test_close(lr_at_step(2, max, warm, lr, min_lr, SCHEDULE_CONSTANT), lr * 3 / warm, 0, 1e-6),
        "constant schedule still warms up");
    CHECK(lr_at_step(0, max, 0, lr, min_lr, SCHEDULE_COSINE) == lr, "no warm-up starts at lr");
}

static void test_sampling(void) {
    enum { V = 7, DRAWS = 200000 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = uniform(-2, 2);
    logits[3] = 2.5f, logits[5] = 2.5f; /* tie for the maximum: the first wins */
    CHECK(sample_token(logits, V, 0.0f, 0.7f) == 3, "temperature 0 must be argmax (first on ties)");
    CHECK(sample_token(logits, V, -1.0f, 0.1f) == 3, "temperature < 0 must be argmax");
    const float temp = 0.8f;
    double prob[V], sum = 0;
    for (int i = 0; i < V; i++) sum += prob[i] = exp(logits[i] / temp);
    int count[V] = {0};
    for (int d = 0; d < DRAWS; d++)
        count[sample_token(logits, V, temp, rng_uniform(key, counter++))]++;
    double max_dev = 0;
    for (int i = 0; i < V; i++)
        max_dev = fmax(max_dev, fabs((double)count[i] / DRAWS - prob[i] / sum));
    printf("  sample_token: %d draws, max |frequency - softmax prob| = %.4f\n", DRAWS, max_dev);
    /* binomial std of a frequency <= 0.5 / sqrt(DRAWS) = 0.0011: 0.005 is > 4 sigma */
    CHECK(max_dev < 0.005, "sample frequencies deviate from softmax by %g", max_dev);
    CHECK(sample_token(logits, V, temp, 0.0f) == 0, "u = 0 draws the first token");
    CHECK(sample_token(logits, V, temp, 0.99999994f) == V - 1, "u -> 1 draws the last token");
}

int main(void) {
    test_adamw(1);
    test_adamw(0);
    test_norm_and_clip();
    test_schedule();
    test_sampling();
    return test_summary();
}
