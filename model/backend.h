/* What the training loop needs from a backend (cpu or cuda): one table of operations, so train.c
 * never branches on the device. Parameters and AdamW moments live wherever the backend keeps
 * them; read_state/write_state move them to and from host fp32 arrays for checkpoints. */
#ifndef MODEL_BACKEND_H
#define MODEL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model/gpt.h"
#include "model/optim.h"
#include "runtime/dist.h"

typedef struct backend backend_t;
struct backend {
    const char *name;   /* "cpu" or "cuda" */
    char device[384];   /* human-readable device description for logs */
    gpt_config_t cfg;
    size_t n_params;
    void *impl;
    /* Set by the training loop before each backward: 1 when it is the step's last micro-batch,
     * so a data-parallel backend may start summing finished gradients across ranks during it
     * (no further backward may follow before zero_grad). Backends that cannot overlap ignore it. */
    int last_micro;

    /* Mean loss over B*T targets; the attention plan of layer l is keyed by (step, l, micro). */
    float (*forward)(backend_t *b, const int32_t *inputs, const int32_t *targets, int B, int T,
                     uint64_t step, uint64_t micro);
    /* grads += scale * dloss/dparams for the last forward. */
    void (*backward)(backend_t *b, float scale);
    void (*zero_grad)(backend_t *b);
    /* Completes the step's gradients (sums them across ranks: a collective, called once per step
     * after the last backward, on every rank) and returns their global norm. */
    double (*grad_norm)(backend_t *b);
    /* AdamW on every tensor (weight decay on matrices only), gradients times grad_scale; with
     * several ranks each updates its shard and the parameters are all-gathered (collective). */
    void (*update)(backend_t *b, const adamw_hparams_t *h, long t, float grad_scale);
    /* Copies to/from host fp32 arrays of n_params (NULL arrays are skipped). read_state gathers
     * the sharded moments (collective); write_state keeps this rank's shard of full arrays. */
    void (*read_state)(backend_t *b, float *params, float *m, float *v);
    void (*write_state)(backend_t *b, const float *params, const float *m, const float *v);
    /* Copies the accumulated gradients to a host fp32 array of n_params (dumps, tests). */
    void (*read_grads)(backend_t *b, float *grads);
    /* Logits row (b, t) of the last forward, padded_vocab floats, into out. */
    void (*logits_row)(backend_t *b, int bi, int t, float *out);
    /* Host copy of the attention plan layer l used in the last forward. */
    const attn_plan_t *(*plan)(backend_t *b, int layer);
    /* Data-parallel backends whose collectives can be timed (NULL otherwise): milliseconds the
     * last step spent in gradient/parameter collectives, and the part of it the step waited for
     * (not hidden behind the backward or the update); negative when not measured. */
    void (*comm_times)(backend_t *b, double *comm_ms, double *exposed_ms);
    /* Sparse-attention work of the last training forward: the fraction of causal tile pairs
     * the kernels visited, averaged over sparse layers; negative when all layers are dense.
     * NULL when the backend does not measure it. */
    double (*attn_live)(backend_t *b);
    void (*destroy)(backend_t *b);
};

/* Creates the fp32 CPU backend for micro-batches up to B x T, parameters initialised; dist NULL
 * means a single rank. */
backend_t *backend_cpu_create(const gpt_config_t *cfg, int B, int T, const dist_t *dist);
backend_t *backend_cuda_create(const gpt_config_t *cfg, int B, int T);
/* Number of usable CUDA devices (0 when there is no driver or GPU). */
int cuda_device_count(void);

#endif
