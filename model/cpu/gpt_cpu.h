/* fp32 reference GPT: plain loops (OpenMP over rows), forward and backward.
 * This is the oracle the CUDA backend is tested against, and a usable tiny trainer. */
#ifndef MODEL_CPU_GPT_CPU_H
#define MODEL_CPU_GPT_CPU_H

#include "model/gpt.h"

typedef struct gpt_cpu gpt_cpu_t;

/* Allocates parameters, gradients and activations for micro-batches of up to B x T. */
gpt_cpu_t *gpt_cpu_create(const gpt_config_t *cfg, int B, int T);
void gpt_cpu_free(gpt_cpu_t *m);

float *gpt_cpu_params(gpt_cpu_t *m); /* gpt_num_params floats, layout of gpt_tensors */
float *gpt_cpu_grads(gpt_cpu_t *m);

/* Forward over inputs [B][T] (token ids). With targets, returns the mean cross-entropy over
 * the B*T positions; with targets == NULL returns 0 and only logits are valid.
 * The attention plan of layer l uses key rng_key(cfg->seed, RNG_DOMAIN_ATTN, step, l, micro). */
float gpt_cpu_forward(gpt_cpu_t *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      uint64_t step, uint64_t micro);

/* Backward of the last forward (which must have had targets): grads += scale * dloss/dparams. */
void gpt_cpu_backward(gpt_cpu_t *m, float scale);
void gpt_cpu_zero_grad(gpt_cpu_t *m);

/* Logits of the last forward, [B][T][padded_vocab]. */
const float *gpt_cpu_logits(const gpt_cpu_t *m);
/* Attention plan layer `layer` used in the last forward (for dumps and tests). */
const attn_plan_t *gpt_cpu_plan(const gpt_cpu_t *m, int layer);

#endif
