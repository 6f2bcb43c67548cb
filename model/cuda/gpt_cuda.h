/* GPT-2 on the GPU in mixed precision: the state (parameters, optimizer moments, gradients,
 * activations) and the forward / backward passes. backend_cuda.cu wraps it in the backend_t
 * op table; the semantics are those of model/cpu/gpt_cpu.c.
 *
 * Precision (llm.c style):
 *  - fp32 master parameters, AdamW m and v; a bf16 copy of every parameter, refreshed by the
 *    update, feeds the matmuls and the embeddings (LayerNorm reads its fp32 masters);
 *  - fp32 parameter gradients, accumulated in place by the weight-gradient matmuls (cuBLASLt
 *    adds the bf16 x bf16 product into the fp32 buffer with beta = 1): micro-batches accumulate
 *    without any rounding to bf16 and without an extra pass;
 *  - bf16 activations and activation gradients, fp32 row statistics (LayerNorm mean/rstd,
 *    attention log-sum-exp, losses).
 * Memory: per layer the forward keeps the residual inputs, both LayerNorm outputs, the fused
 * QKV, the attention output and the MLP pre-activation (12 C bf16 per token); the GELU output
 * is recomputed in the backward. The LM head never materialises all logits: it runs in row
 * chunks, and each chunk's logits are turned into dlogits in place (fused softmax +
 * cross-entropy) and consumed by the head's two gradient matmuls during the forward. */
#ifndef MODEL_CUDA_GPT_CUDA_H
#define MODEL_CUDA_GPT_CUDA_H

#include <stdint.h>

#include "model/cuda/attn_layer_cuda.h"
#include "model/cuda/cuda_common.cuh"
#include "model/cuda/matmul_cuda.h"
#include "model/cuda/ops_cuda.h"

extern "C" {
#include "model/gpt.h"
}

/* Offsets of one layer's tensors in the flat parameter layout (SIZE_MAX when absent). */
typedef struct {
    size_t ln1w, ln1b, qkvw, qkvb, projw, projb, ln2w, ln2b, fcw, fcb, mprojw, mprojb;
} gpt_cuda_layer_offsets_t;

typedef struct {
    bf16 *resid_in, *resid_mid;    /* [N][C]: layer input, residual after attention */
    bf16 *ln1, *ln2;               /* [N][C] */
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* [N] */
    bf16 *qkv;                     /* [N][P] */
    bf16 *att;                     /* [N][C] attention output */
    float *lse;                    /* [B][H][T] */
    bf16 *fc_preact;               /* [N][4C] MLP pre-activation */
    bf16 *gelu;                    /* [N][4C] GELU output, kept for the backward (recomputing it
                                      cost 1.7 ms a step at 8k x 4: docs/PERF.md) */
} gpt_cuda_layer_acts_t;

typedef struct {
    gpt_config_t cfg;
    int Bmax, Tmax, L, C, H, D, P, V, Vp;
    int logit_chunk; /* rows of logits materialised at a time */
    size_t n_params;
    gpt_tensor_t *tensors;
    int n_tensors;
    size_t wte, wpe, lnfw, lnfb;
    gpt_cuda_layer_offsets_t off[GPT_MAX_LAYERS];

    cudaStream_t stream;
    matmul_ctx_t *mm;
    int deterministic; /* flash attention's deterministic backward */

    float *params, *grads, *m, *v; /* fp32 [n_params] */
    bf16 *params_bf16;

    void *act_arena; /* one allocation carved into everything below */
    size_t act_bytes;
    gpt_cuda_layer_acts_t acts[GPT_MAX_LAYERS];
    bf16 *resid_final, *lnf;       /* [N][C] */
    float *lnf_mean, *lnf_rstd;    /* [N] */
    bf16 *dlnf;                    /* [N][C], gradient of lnf from the fused head */
    float *dwte_head;              /* [Vp][C], the head's share of dwte (unscaled) */
    bf16 *logits;                  /* [logit_chunk][Vp], logits then dlogits in place */
    float *losses;                 /* [N] */
    double *loss_mean;             /* [1] */
    bf16 *dbig;                    /* [N][4C]: d(pre-activation), then dqkv */
    bf16 *tmp;                     /* [N][C]: branch outputs (forward), dln / datt (backward) */
    bf16 *dres;                    /* [N][C]: gradient of the residual stream */
    bf16 *kbuf, *dkbuf;            /* [N][C], shared_qk only: K = Q/|Q| and its gradient */
    float *row_logits;             /* [Vp], logits_row */
    float *red_scratch;            /* LayerNorm / bias partial sums */
    double *norm_scratch;          /* grad norm partials */
    void *attn_workspace;
    size_t attn_workspace_bytes;
    int *attn_work_counter; /* the dense attention's persistent grids (flash_attn_dims_t) */

    int32_t *tokens_dev, *targets_dev; /* [N] */
    int32_t *tokens_host, *targets_host; /* pinned staging [N] */
    encoder_groups_t groups;

    /* Per-layer attention (plans kept from forward to backward): set 0 serves forwards with
     * targets (training, evaluation), set 1 those without (sampling, whose T changes with every
     * token), so sampling never reallocates the training plans. */
    attn_layer_cuda_t attn[2][GPT_MAX_LAYERS];
    int attn_set; /* the set of the last forward */
    int B, T, has_forward, has_targets;

    /* Optional hook for communication overlapped with the backward (data parallel): called
     * from gpt_cuda_backward, on the host, right after the kernels that finish the gradients of
     * parameters [lo, hi) (flat offsets) have been queued on `stream`; ranges come in the order
     * lnf, layer L-1 .. layer 0, then wte + wpe, and cover every parameter once. */
    void (*grads_ready)(void *ctx, size_t lo, size_t hi);
    void *grads_ready_ctx;

    /* The backward's weight-gradient matmuls on a second stream, beside the chain of input
     * gradients (no grads_ready hook): GPT_CUDA_OVERLAP=0 turns it off. */
    int use_overlap;
    cudaStream_t side;
    matmul_ctx_t *mm_side;                   /* its own cuBLASLt workspace */
    cudaEvent_t side_fork, side_done[4];
} gpt_cuda_t;

/* Fails with EXIT_USAGE, naming the config key, for a model the CUDA backend cannot run
 * (head dim not 64/128, sparse attention with head dim not 64, ...). Touches no CUDA API. */
void gpt_cuda_check_config(const gpt_config_t *cfg);

/* Allocates everything for micro-batches up to B x T; parameters initialised with
 * gpt_init_params (on the host) and uploaded; m, v, grads zero. Fails with EXIT_USAGE for a
 * configuration the CUDA backend cannot run (gpt_cuda_check_config). */
gpt_cuda_t *gpt_cuda_create(const gpt_config_t *cfg, int B, int T);
void gpt_cuda_free(gpt_cuda_t *g);

/* Mean loss over B*T targets (targets NULL: 0, only lnf is computed for logits_row). The
 * attention plan of layer l is keyed by (cfg.seed, step, l, micro) as on the CPU. */
float gpt_cuda_forward(gpt_cuda_t *g, const int32_t *inputs, const int32_t *targets, int B,
                       int T, uint64_t step, uint64_t micro);
/* The plan layer l used in the last forward, copied to the host (keep masks / buckets). */
const attn_plan_t *gpt_cuda_host_plan(gpt_cuda_t *g, int layer);
/* Mean over sparse layers of the live-tile fraction of the last training forward
 * (attn_layer_cuda_live_fraction); -1 when every layer is dense. Waits for the stream. */
double gpt_cuda_attn_live(gpt_cuda_t *g);
/* grads += scale * dloss/dparams of the last forward (which must have had targets). */
void gpt_cuda_backward(gpt_cuda_t *g, float scale);

#endif
