/* GPT-2 model description shared by every backend: sizes, parameter layout, initialisation.
 *
 * Parameters live in one contiguous fp32 buffer made of named tensors (gpt_tensors), in this
 * order: wte [Vp][C], wpe [maxT][C], then for each layer l "h.<l>." + ln1.w [C], ln1.b [C],
 * attn.qkv.w [P][C], attn.qkv.b [P], attn.proj.w [C][C], attn.proj.b [C], ln2.w [C], ln2.b [C],
 * mlp.fc.w [4C][C], mlp.fc.b [4C], mlp.proj.w [C][4C], mlp.proj.b [C]; then lnf.w [C], lnf.b [C].
 * P = 3C (Q, K, V), or 2C (Q, V) with shared_qk where K = Q / ||Q|| per head.
 * Weight matrices are [out][in] (y = x W^T), like torch.nn.Linear. With bias == 0 every
 * ".b" tensor is absent (LayerNorm included). The LM head is tied to wte; logits of the padded
 * rows (vocab_size <= v < padded_vocab) are excluded from the softmax and the loss.
 */
#ifndef MODEL_GPT_H
#define MODEL_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"

#define GPT_MAX_LAYERS 64

typedef struct {
    int n_layer, n_head, n_embd;
    int vocab_size;   /* real vocabulary (50257 for GPT-2) */
    int padded_vocab; /* rows of wte (50304) */
    int seq_len;      /* maximum T: rows of wpe */
    int bias;         /* linear and LayerNorm biases present */
    attn_params_t attn;        /* attention of every layer not listed in dense_layer_mask */
    int shared_qk;             /* projection gives Q, V; K = Q / ||Q|| per head */
    uint64_t dense_layer_mask; /* bit l set: layer l uses dense attention (exclude_self kept) */
    uint64_t seed;             /* run seed: init and attention plans derive their keys from it */
} gpt_config_t;

typedef struct {
    char name[32];
    size_t offset, numel;
    int rows, cols; /* cols == 0 for vectors */
    int decay;      /* AdamW weight decay applies (matrices only) */
} gpt_tensor_t;

/* Fills `out` (if not NULL) with the tensor table; returns the number of tensors. */
int gpt_tensors(const gpt_config_t *cfg, gpt_tensor_t *out);
size_t gpt_num_params(const gpt_config_t *cfg);

/* Attention parameters layer `layer` actually uses (per-layer override applied). */
attn_params_t gpt_layer_attn(const gpt_config_t *cfg, int layer);

/* GPT-2 initialisation, deterministic from cfg->seed: weights N(0, 0.02), residual
 * projections (attn.proj.w, mlp.proj.w) N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm
 * weights 1, padded wte rows 0. */
void gpt_init_params(const gpt_config_t *cfg, float *params);

#endif
