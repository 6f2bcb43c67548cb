/* AdamW, gradient clipping, learning-rate schedule and sampling on host fp32 arrays.
 * Reductions use a fixed chunking so results do not depend on the number of threads: a
 * resumed run on the same hardware must reproduce the same bits. */
#include "model/optim.h"

#include <math.h>

#include "runtime/error.h"

void adamw_step(float *params, const float *grads, float *m, float *v, size_t n, int decay,
                const adamw_hparams_t *h, long t, float grad_scale) {
    if (t < 1) fatal(EXIT_RUNTIME, "adamw_step: step t = %ld must be >= 1", t);
    const float b1 = h->beta1, b2 = h->beta2;
    /* Bias corrections in double: b^t loses digits in fp32 when t is large. */
    const float bc1 = (float)(1.0 - pow((double)b1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)b2, (double)t));
    const float lr = h->lr, eps = h->eps, wd = decay ? h->weight_decay : 0.0f;
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 15))
    for (size_t i = 0; i < n; i++) {
        const float g = grad_scale * grads[i];
        const float mi = b1 * m[i] + (1.0f - b1) * g;
        const float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / bc1, vhat = vi / bc2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * params[i]);
    }
}

double grad_global_norm(const float *grads, size_t n) {
    /* Partial sums over fixed chunks, combined in chunk order: thread-count independent. */
    enum { CHUNK = 1 << 16 };
    const size_t n_chunks = (n + CHUNK - 1) / CHUNK;
    double *partial = xmalloc((n_chunks ? n_chunks : 1) * sizeof(double), "grad norm partials");
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (size_t c = 0; c < n_chunks; c++) {
        const size_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)grads[i] * (double)grads[i];
        partial[c] = s;
    }
    double total = 0.0;
    for (size_t c = 0; c < n_chunks; c++) total += partial[c];
    free(partial);
    return sqrt(total);
}

float grad_clip_factor(double norm, float max_norm) {
    if (max_norm <= 0.0f || norm <= (double)max_norm) return 1.0f;
    return (float)((double)max_norm / norm);
}

float lr_at_step(long step, long max_steps, long warmup, float lr, float min_lr,
                 lr_schedule_t schedule) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (schedule == SCHEDULE_CONSTANT) return lr;
    if (schedule != SCHEDULE_COSINE)
        fatal(EXIT_RUNTIME, "lr_at_step: unknown schedule %d", (int)schedule);
    const long span = max_steps - warmup > 0 ? max_steps - warmup : 1;
    double ratio = (double)(step - warmup) / (double)span;
    if (ratio > 1.0) ratio = 1.0;
    const double coeff = 0.5 * (1.0 + cos(M_PI * ratio)); /* 1 -> 0 over the decay */
    return (float)((double)min_lr + coeff * ((double)lr - (double)min_lr));
}

int sample_token(const float *logits, int vocab_size, float temperature, float u) {
    if (vocab_size < 1) fatal(EXIT_RUNTIME, "sample_token: vocab_size %d < 1", vocab_size);
    int best = 0;
    for (int i = 1; i < vocab_size; i++)
        if (logits[i] > logits[best]) best = i; /* first maximum on ties */
    if (temperature <= 0.0f) return best;
    const double max = logits[best], inv_t = 1.0 / (double)temperature;
    double sum = 0.0;
    for (int i = 0; i < vocab_size; i++) sum += exp(((double)logits[i] - max) * inv_t);
    /* Inverse CDF: the first token whose cumulative mass exceeds u * sum. */
    const double target = (double)u * sum;
    double cum = 0.0;
    int last_nonzero = best;
    for (int i = 0; i < vocab_size; i++) {
        const double p = exp(((double)logits[i] - max) * inv_t);
        if (p > 0.0) last_nonzero = i;
        cum += p;
        if (cum > target) return i;
    }
    /* Rounding can leave cum a hair below u * sum for u close to 1: the last token with mass. */
    return last_nonzero;
}
