/* Sanity training: a tiny CPU model must overfit one fixed random batch (loss falls by more
 * than half in 50 AdamW steps) in every attention mode, through the real optimizer path
 * (global-norm clipping, warm-up + cosine schedule, decay on matrices only). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/gpt_cpu.h"
#include "model/optim.h"
#include "runtime/rng.h"
#include "tests/test.h"

enum { B = 2, T = 16, STEPS = 50 };

static void overfit(const char *label, attn_mode_t mode, int shared_qk, int exclude_self) {
    gpt_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_layer = 2, cfg.n_head = 4, cfg.n_embd = 32;
    cfg.vocab_size = 61, cfg.padded_vocab = 64, cfg.seq_len = T;
    cfg.bias = 0, cfg.shared_qk = shared_qk, cfg.seed = 99;
    cfg.attn.mode = mode;
    cfg.attn.n_buckets = mode == ATTN_HASH_SPARSE ? 4 : 1;
    cfg.attn.drop_prob = mode == ATTN_QK_SPARSE ? 0.5f : 0.0f;
    cfg.attn.exclude_self = exclude_self;

    int32_t in[B * T], tg[B * T];
    const uint64_t key = rng_key(5, RNG_DOMAIN_DATA, 0, 0, 0);
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)(rng_u24(key, 2 * i) % cfg.vocab_size);
    for (int i = 0; i < B * T; i++) tg[i] = (int32_t)(rng_u24(key, 2 * i + 1) % cfg.vocab_size);

    gpt_cpu_t *m = gpt_cpu_create(&cfg, B, T);
    float *params = gpt_cpu_params(m);
    const float *grads = gpt_cpu_grads(m);
    gpt_init_params(&cfg, params);
    const int nt = gpt_tensors(&cfg, NULL);
    gpt_tensor_t *tensors = malloc((size_t)nt * sizeof *tensors);
    gpt_tensors(&cfg, tensors);
    const size_t np = gpt_num_params(&cfg);
    float *mom = calloc(np, sizeof(float)), *var = calloc(np, sizeof(float));
    adamw_hparams_t h = {
        .lr = 0, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};

    float first = 0, last = 0;
    int finite = 1;
    for (long step = 0; step < STEPS; step++) {
        const float loss = gpt_cpu_forward(m, in, tg, B, T, (uint64_t)step, 0);
        finite &= isfinite(loss);
        if (step == 0) first = loss;
        last = loss;
        gpt_cpu_zero_grad(m);
        gpt_cpu_backward(m, 1.0f);
        const float clip = grad_clip_factor(grad_global_norm(grads, np), 1.0f);
        h.lr = lr_at_step(step, STEPS, 5, 1e-2f, 1e-3f, SCHEDULE_COSINE);
        for (int i = 0; i < nt; i++)
            adamw_step(params + tensors[i].offset, grads + tensors[i].offset,
                       mom + tensors[i].offset, var + tensors[i].offset, tensors[i].numel,
                       tensors[i].decay, &h, step + 1, clip);
    }
    printf("  %-32s loss %.3f -> %.3f after %d steps\n", label, first, last, STEPS);
    CHECK(finite, "%s: non-finite loss", label);
    CHECK(last < 0.5f * first, "%s: loss fell only from %g to %g", label, first, last);
    free(mom), free(var), free(tensors);
    gpt_cpu_free(m);
}

int main(void) {
    omp_set_num_threads(
        1); /* a tiny model: a thread team's fork/join would cost more than the work */
    overfit("dense", ATTN_DENSE, 0, 0);
    overfit("qk_sparse 0.5 shared_qk", ATTN_QK_SPARSE, 1, 0);
    overfit("hash_sparse nb4 shared_qk excl", ATTN_HASH_SPARSE, 1, 1);
    return test_summary();
}
