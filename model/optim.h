/* AdamW, global-norm clipping, learning-rate schedule, sampling: backend-independent math on
 * host fp32 arrays (the CUDA backend has fused twins with the same semantics). */
#ifndef MODEL_OPTIM_H
#define MODEL_OPTIM_H

#include <stddef.h>

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} adamw_hparams_t;

/* One AdamW update of n parameters at 1-based step t, on gradients multiplied by grad_scale
 * (the clipping factor). Decoupled weight decay (p -= lr * wd * p) only when decay != 0.
 *   g = grad_scale * grads; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p ) */
void adamw_step(float *params, const float *grads, float *m, float *v, size_t n, int decay,
                const adamw_hparams_t *h, long t, float grad_scale);

/* sqrt(sum g^2), accumulated in double. */
double grad_global_norm(const float *grads, size_t n);

/* Factor that scales gradients of norm `norm` down to `max_norm` (1 if already below, or if
 * max_norm <= 0, i.e. clipping disabled). */
float grad_clip_factor(double norm, float max_norm);

typedef enum { SCHEDULE_COSINE = 0, SCHEDULE_CONSTANT = 1 } lr_schedule_t;

/* Learning rate at 0-based step: linear warm-up from lr/warmup to lr over `warmup` steps,
 * then cosine decay to min_lr at max_steps (or constant lr). */
float lr_at_step(long step, long max_steps, long warmup, float lr, float min_lr,
                 lr_schedule_t schedule);

/* Draws a token from softmax(logits[0..vocab_size) / temperature) with uniform u in [0,1);
 * temperature <= 0 means argmax. */
int sample_token(const float *logits, int vocab_size, float temperature, float u);

#endif
