/* GPT-2 forward and backward on the GPU (see gpt_cuda.h for the precision and memory plan).
 * The op sequence mirrors model/cpu/gpt_cpu.c line for line, with three fusions: the residual
 * add feeds the next LayerNorm in one kernel, the MLP's GELU lives in the matmul epilogues
 * (forward GELU_AUX, backward DGELU), and the LM head's softmax/cross-entropy/dlogits run
 * chunk by chunk inside the forward. */
#include "model/cuda/gpt_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "attention/cuda/flash_attn.h"

extern "C" {
#include "runtime/error.h"
#include "runtime/rng.h"
}

namespace {

/* Rows of logits at a time: 8192 x 50304 bf16 = 824 MB. Measured on H100 at 32k tokens: the
 * head costs 1.2 ms less per step than with 4096-row chunks (fewer passes over the fp32 dwte
 * accumulator), and memory stays well under PyTorch's. */
constexpr int kLogitChunkRows = 8192;

size_t find_offset(const gpt_cuda_t *g, const char *name, int required) {
    for (int i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return g->tensors[i].offset;
    if (required) fatal(EXIT_RUNTIME, "gpt_cuda: tensor %s missing from the parameter table", name);
    return SIZE_MAX;
}

void bind_offsets(gpt_cuda_t *g) {
    const int b = g->cfg.bias;
    g->wte = find_offset(g, "wte", 1);
    g->wpe = find_offset(g, "wpe", 1);
    g->lnfw = find_offset(g, "lnf.w", 1);
    g->lnfb = find_offset(g, "lnf.b", b);
    char name[32];
    for (int l = 0; l < g->L; l++) {
        gpt_cuda_layer_offsets_t *o = &g->off[l];
#define OFFSET(field, suffix, req)                                \
    do {                                                          \
        snprintf(name, sizeof name, "h.%d.%s", l, suffix);        \
        o->field = find_offset(g, name, req);                     \
    } while (0)
        OFFSET(ln1w, "ln1.w", 1);
        OFFSET(ln1b, "ln1.b", b);
        OFFSET(qkvw, "attn.qkv.w", 1);
        OFFSET(qkvb, "attn.qkv.b", b);
        OFFSET(projw, "attn.proj.w", 1);
        OFFSET(projb, "attn.proj.b", b);
        OFFSET(ln2w, "ln2.w", 1);
        OFFSET(ln2b, "ln2.b", b);
        OFFSET(fcw, "mlp.fc.w", 1);
        OFFSET(fcb, "mlp.fc.b", b);
        OFFSET(mprojw, "mlp.proj.w", 1);
        OFFSET(mprojb, "mlp.proj.b", b);
#undef OFFSET
    }
}

/* Typed views into the flat buffers; absent (SIZE_MAX) tensors give NULL. */
template <typename Tp> Tp *at(Tp *base, size_t offset) {
    return offset == SIZE_MAX ? nullptr : base + offset;
}

/* Hands out 256-byte aligned slices of one allocation (or, with base NULL, only counts). */
struct Carver {
    char *base;
    size_t used;
    template <typename Tp> Tp *take(size_t count) {
        used = (used + 255) & ~(size_t)255;
        Tp *p = base ? reinterpret_cast<Tp *>(base + used) : nullptr;
        used += count * sizeof(Tp);
        return p;
    }
};

void carve_activations(gpt_cuda_t *g, Carver &c) {
    const size_t N = (size_t)g->Bmax * g->Tmax, C = g->C, P = g->P, Vp = g->Vp;
    for (int l = 0; l < g->L; l++) {
        gpt_cuda_layer_acts_t *a = &g->acts[l];
        a->resid_in = c.take<bf16>(N * C);
        a->resid_mid = c.take<bf16>(N * C);
        a->ln1 = c.take<bf16>(N * C);
        a->ln2 = c.take<bf16>(N * C);
        a->ln1_mean = c.take<float>(N);
        a->ln1_rstd = c.take<float>(N);
        a->ln2_mean = c.take<float>(N);
        a->ln2_rstd = c.take<float>(N);
        a->qkv = c.take<bf16>(N * P);
        a->att = c.take<bf16>(N * C);
        a->lse = c.take<float>(N * g->H);
        a->fc_preact = c.take<bf16>(N * 4 * C);
        a->gelu = c.take<bf16>(N * 4 * C);
    }
    g->resid_final = c.take<bf16>(N * C);
    g->lnf = c.take<bf16>(N * C);
    g->lnf_mean = c.take<float>(N);
    g->lnf_rstd = c.take<float>(N);
    g->dlnf = c.take<bf16>(N * C);
    g->dwte_head = c.take<float>(Vp * C);
    g->logits = c.take<bf16>((size_t)g->logit_chunk * Vp);
    g->losses = c.take<float>(N);
    g->loss_mean = c.take<double>(1);
    g->dbig = c.take<bf16>(N * 4 * C);
    g->tmp = c.take<bf16>(N * C);
    g->dres = c.take<bf16>(N * C);
    if (g->cfg.shared_qk) {
        g->kbuf = c.take<bf16>(N * C);
        g->dkbuf = c.take<bf16>(N * C);
    }
    g->row_logits = c.take<float>(Vp);
    size_t red = layernorm_backward_scratch_floats((int)N, g->C);
    const size_t bias_red = bias_backward_scratch_floats((int)N, 4 * g->C);
    if (bias_red > red) red = bias_red;
    g->red_scratch = c.take<float>(red);
    g->norm_scratch = c.take<double>(GRAD_NORM_BLOCKS);
    g->attn_workspace = c.take<char>(g->attn_workspace_bytes);
    g->attn_work_counter = c.take<int>(1);
    g->tokens_dev = c.take<int32_t>(N);
    g->targets_dev = c.take<int32_t>(N);
}

flash_attn_dims_t attn_dims(const gpt_cuda_t *g, int layer, int B, int T) {
    flash_attn_dims_t d;
    d.B = B;
    d.T = T;
    d.H = g->H;
    d.D = g->D;
    d.exclude_self = g->attn[0][layer].p.exclude_self;
    d.q_stride = g->P;
    d.k_stride = g->cfg.shared_qk ? g->C : g->P;
    d.v_stride = g->P;
    d.o_stride = g->C;
    d.work_counter = g->attn_work_counter;
    return d;
}

/* q, k, v of a layer: views into the fused projection (K from kbuf with shared_qk). */
void attn_operands(const gpt_cuda_t *g, const gpt_cuda_layer_acts_t *a, const bf16 **q,
                   const bf16 **k, const bf16 **v) {
    *q = a->qkv;
    *k = g->cfg.shared_qk ? g->kbuf : a->qkv + g->C;
    *v = a->qkv + (g->cfg.shared_qk ? g->C : 2 * g->C);
}

void attention_forward(gpt_cuda_t *g, int l, int B, int T, uint64_t key) {
    const gpt_cuda_layer_acts_t *a = &g->acts[l];
    const int N = B * T;
    if (g->cfg.shared_qk)
        qk_normalise_forward_cuda(g->kbuf, g->C, a->qkv, g->P, N, g->H, g->D, g->stream);
    const bf16 *q, *k, *v;
    attn_operands(g, a, &q, &k, &v);
    const flash_attn_dims_t d = attn_dims(g, l, B, T);
    attn_layer_cuda_forward(&g->attn[g->attn_set][l], key, &d, q, k, g->cfg.shared_qk, v, a->att,
                            a->lse, g->stream);
}

/* datt (in g->tmp) -> dqkv (in g->dbig, stride P). */
void attention_backward(gpt_cuda_t *g, int l, int B, int T) {
    const gpt_cuda_layer_acts_t *a = &g->acts[l];
    const int N = B * T, C = g->C;
    if (g->cfg.shared_qk) /* K was not kept: recompute it (N*C elements, cheap) */
        qk_normalise_forward_cuda(g->kbuf, C, a->qkv, g->P, N, g->H, g->D, g->stream);
    const bf16 *q, *k, *v;
    attn_operands(g, a, &q, &k, &v);
    bf16 *dqkv = g->dbig;
    bf16 *dk = g->cfg.shared_qk ? g->dkbuf : dqkv + C;
    bf16 *dv = dqkv + (g->cfg.shared_qk ? C : 2 * C);
    const flash_attn_dims_t d = attn_dims(g, l, B, T);
    attn_layer_cuda_backward(&g->attn[0][l], &d, q, k, v, a->att, a->lse, g->tmp, dqkv, dk, dv,
                             g->attn_workspace, g->deterministic, g->stream);
    if (g->cfg.shared_qk)
        qk_normalise_backward_cuda(dqkv, g->P, g->dkbuf, C, a->qkv, g->P, g->kbuf, C, N, g->H,
                                   g->D, g->stream);
}

/* The weight gradients' matmuls (dW += dout^T inp) are off the backward's critical path. While
 * `on`, they run on g->side beside the chain's next kernels: each is forked after its inputs
 * are written and joined (side_done) before the chain overwrites them. Same kernels on the same
 * inputs: the same bits. Off, they run in place on the main stream. Measured 0.2-0.7 ms a step
 * (H200, docs/PERF.md session 17): cuBLAS's kernels fill every SM, so what runs beside them is
 * mostly their tails, not the memory-bound LayerNorms one might hope to hide. */
struct WeightGrads {
    gpt_cuda_t *g;
    bool on;
    void fork() const {
        if (!on) return;
        CUDA_CHECK(cudaEventRecord(g->side_fork, g->stream));
        CUDA_CHECK(cudaStreamWaitEvent(g->side, g->side_fork, 0));
    }
    void mark(int i) const {
        if (on) CUDA_CHECK(cudaEventRecord(g->side_done[i], g->side));
    }
    void join(int i) const {
        if (on) CUDA_CHECK(cudaStreamWaitEvent(g->stream, g->side_done[i], 0));
    }
    void add(float *dweight, const bf16 *dout, const bf16 *inp, int N, int IC, int OC) const {
        matmul_backward_cuda(on ? g->mm_side : g->mm, nullptr, 0, dweight, dout, inp, nullptr, N, IC,
                             OC, nullptr, on ? g->side : g->stream);
    }
};

/* An on/off switch from the environment (unset: on). */
int env_switch(const char *name, const char *what) {
    const char *v = getenv(name);
    if (v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
        fatal(EXIT_USAGE, "%s=%s: want 1 (%s, the default) or 0 (off)", name, v, what);
    return !v || strcmp(v, "1") == 0;
}

} // namespace

void gpt_cuda_check_config(const gpt_config_t *cfg) {
    gpt_num_params(cfg); /* the generic size checks first */
    const int D = cfg->n_embd / cfg->n_head;
    if (D != 64 && D != 128)
        fatal(EXIT_USAGE,
              "model.n_embd / model.n_head = %d: the CUDA backend needs a head dimension of 64 or 128",
              D);
    for (int l = 0; l < cfg->n_layer; l++) {
        const attn_params_t p = gpt_layer_attn(cfg, l);
        if (p.mode != ATTN_DENSE && D != 64)
            fatal(EXIT_USAGE,
                  "attention.mode = %s (layer %d) with head dim %d: the sparse CUDA kernels take "
                  "head dim 64 only (model.n_embd / model.n_head); use dense layers or --device cpu",
                  attn_mode_name(p.mode), l, D);
    }
    if (cfg->padded_vocab % 8 != 0)
        fatal(EXIT_USAGE, "model.padded_vocab = %d: the CUDA backend needs a multiple of 8",
              cfg->padded_vocab);
    if (cfg->n_embd > LN_MAX_C)
        fatal(EXIT_USAGE, "model.n_embd = %d: the CUDA LayerNorm supports up to %d", cfg->n_embd,
              LN_MAX_C);
}

gpt_cuda_t *gpt_cuda_create(const gpt_config_t *cfg, int B, int T) {
    const size_t n_params = gpt_num_params(cfg); /* validates the sizes */
    gpt_cuda_check_config(cfg);
    if (B < 1 || T < 1 || T > cfg->seq_len)
        fatal(EXIT_USAGE, "gpt_cuda_create: micro-batch %d x %d: need B >= 1 and 1 <= T <= seq_len %d",
              B, T, cfg->seq_len);
    gpt_cuda_t *g = (gpt_cuda_t *)xcalloc(1, sizeof *g, "gpt_cuda");
    g->cfg = *cfg;
    g->n_params = n_params;
    g->Bmax = B, g->Tmax = T;
    g->L = cfg->n_layer, g->C = cfg->n_embd, g->H = cfg->n_head, g->D = g->C / g->H;
    g->P = cfg->shared_qk ? 2 * g->C : 3 * g->C;
    g->V = cfg->vocab_size, g->Vp = cfg->padded_vocab;
    const int N = B * T;
    g->logit_chunk = N < kLogitChunkRows ? N : kLogitChunkRows;
    g->n_tensors = gpt_tensors(cfg, NULL);
    g->tensors = (gpt_tensor_t *)xmalloc((size_t)g->n_tensors * sizeof(gpt_tensor_t), "tensor table");
    gpt_tensors(cfg, g->tensors);
    bind_offsets(g);
    for (int l = 0; l < g->L; l++) {
        const attn_params_t p = gpt_layer_attn(cfg, l);
        for (int set = 0; set < 2; set++) attn_layer_cuda_init(&g->attn[set][l], &p, g->H, g->D);
    }

    g->use_overlap = env_switch("GPT_CUDA_OVERLAP", "the weight gradients on a second stream");
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->side, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&g->side_fork, cudaEventDisableTiming));
    for (int i = 0; i < 4; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g->side_done[i], cudaEventDisableTiming));
    g->mm = matmul_ctx_create();
    g->mm_side = matmul_ctx_create();
    const size_t pbytes = n_params * sizeof(float);
    CUDA_CHECK(cudaMalloc((void **)&g->params, pbytes));
    CUDA_CHECK(cudaMalloc((void **)&g->grads, pbytes));
    CUDA_CHECK(cudaMalloc((void **)&g->m, pbytes));
    CUDA_CHECK(cudaMalloc((void **)&g->v, pbytes));
    CUDA_CHECK(cudaMalloc((void **)&g->params_bf16, n_params * sizeof(bf16)));
    CUDA_CHECK(cudaMemsetAsync(g->grads, 0, pbytes, g->stream));
    CUDA_CHECK(cudaMemsetAsync(g->m, 0, pbytes, g->stream));
    CUDA_CHECK(cudaMemsetAsync(g->v, 0, pbytes, g->stream));

    /* Workspace for the largest micro-batch, non-deterministic (the larger) variant. */
    const flash_attn_dims_t d = attn_dims(g, 0, B, T);
    g->attn_workspace_bytes = attn_layer_cuda_workspace_bytes(&d);
    Carver count = {nullptr, 0};
    carve_activations(g, count);
    g->act_bytes = count.used;
    CUDA_CHECK(cudaMalloc(&g->act_arena, g->act_bytes));
    Carver carve = {(char *)g->act_arena, 0};
    carve_activations(g, carve);

    CUDA_CHECK(cudaMallocHost((void **)&g->tokens_host, (size_t)N * sizeof(int32_t)));
    CUDA_CHECK(cudaMallocHost((void **)&g->targets_host, (size_t)N * sizeof(int32_t)));
    encoder_groups_init(&g->groups, N, g->V);

    float *host = (float *)xmalloc(pbytes, "initial parameters");
    gpt_init_params(cfg, host);
    CUDA_CHECK(cudaMemcpy(g->params, host, pbytes, cudaMemcpyHostToDevice));
    free(host);
    float_to_bf16_cuda(g->params_bf16, g->params, n_params, g->stream);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    return g;
}

void gpt_cuda_free(gpt_cuda_t *g) {
    if (!g) return;
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    for (int l = 0; l < g->L; l++)
        for (int set = 0; set < 2; set++) attn_layer_cuda_free(&g->attn[set][l]);
    encoder_groups_free(&g->groups);
    CUDA_CHECK(cudaFreeHost(g->tokens_host));
    CUDA_CHECK(cudaFreeHost(g->targets_host));
    CUDA_CHECK(cudaFree(g->act_arena));
    CUDA_CHECK(cudaFree(g->params));
    CUDA_CHECK(cudaFree(g->grads));
    CUDA_CHECK(cudaFree(g->m));
    CUDA_CHECK(cudaFree(g->v));
    CUDA_CHECK(cudaFree(g->params_bf16));
    matmul_ctx_destroy(g->mm);
    matmul_ctx_destroy(g->mm_side);
    CUDA_CHECK(cudaEventDestroy(g->side_fork));
    for (int i = 0; i < 4; i++) CUDA_CHECK(cudaEventDestroy(g->side_done[i]));
    CUDA_CHECK(cudaStreamDestroy(g->side));
    CUDA_CHECK(cudaStreamDestroy(g->stream));
    free(g->tensors);
    free(g);
}

/* Token ids come from data files: one outside the vocabulary would index past wte. */
static void stage_tokens(int32_t *dst, const int32_t *src, int n, int V, const char *what) {
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= V)
            fatal(EXIT_RUNTIME, "gpt_cuda_forward: %s token %d at position %d is outside the vocabulary [0, %d)",
                  what, (int)src[i], i, V);
        dst[i] = src[i];
    }
}

const attn_plan_t *gpt_cuda_host_plan(gpt_cuda_t *g, int layer) {
    if (layer < 0 || layer >= g->L)
        fatal(EXIT_RUNTIME, "plan: layer %d out of range [0, %d)", layer, g->L);
    if (!g->has_forward) fatal(EXIT_RUNTIME, "plan: no forward has run yet");
    return attn_layer_cuda_host_plan(&g->attn[g->attn_set][layer], g->stream);
}

double gpt_cuda_attn_live(gpt_cuda_t *g) {
    double sum = 0.0;
    int n = 0;
    for (int l = 0; l < g->L; l++) {
        const double f = attn_layer_cuda_live_fraction(&g->attn[0][l], g->stream);
        if (f >= 0.0) {
            sum += f;
            n++;
        }
    }
    return n ? sum / n : -1.0;
}

float gpt_cuda_forward(gpt_cuda_t *g, const int32_t *inputs, const int32_t *targets, int B, int T,
                       uint64_t step, uint64_t micro) {
    if (B < 1 || B > g->Bmax || T < 1 || T > g->Tmax)
        fatal(EXIT_RUNTIME, "gpt_cuda_forward: micro-batch %d x %d exceeds the allocated %d x %d", B,
              T, g->Bmax, g->Tmax);
    const int N = B * T, C = g->C, P = g->P, L = g->L;
    cudaStream_t s = g->stream;
    stage_tokens(g->tokens_host, inputs, N, g->V, "input");
    CUDA_CHECK(cudaMemcpyAsync(g->tokens_dev, g->tokens_host, (size_t)N * sizeof(int32_t),
                               cudaMemcpyHostToDevice, s));
    if (targets) {
        stage_tokens(g->targets_host, targets, N, g->V, "target");
        CUDA_CHECK(cudaMemcpyAsync(g->targets_dev, g->targets_host, (size_t)N * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, s));
    }
    g->B = B, g->T = T;
    g->attn_set = targets ? 0 : 1;
    const bf16 *pw = g->params_bf16;
    const float *pf = g->params;

    encoder_forward_cuda(g->acts[0].resid_in, g->tokens_dev, pw + g->wte, pw + g->wpe, B, T, C, s);
    layernorm_forward_cuda(g->acts[0].ln1, g->acts[0].ln1_mean, g->acts[0].ln1_rstd,
                           g->acts[0].resid_in, pf + g->off[0].ln1w, at(pf, g->off[0].ln1b), N, C, s);
    for (int l = 0; l < L; l++) {
        const gpt_cuda_layer_offsets_t *o = &g->off[l];
        gpt_cuda_layer_acts_t *a = &g->acts[l];
        matmul_forward_cuda(g->mm, a->qkv, a->ln1, pw + o->qkvw, at(pw, o->qkvb), N, C, P, nullptr, s);
        attention_forward(g, l, B, T, rng_key(g->cfg.seed, RNG_DOMAIN_ATTN, step, (uint64_t)l, micro));
        matmul_forward_cuda(g->mm, g->tmp, a->att, pw + o->projw, at(pw, o->projb), N, C, C, nullptr, s);
        residual_layernorm_forward_cuda(a->resid_mid, a->ln2, a->ln2_mean, a->ln2_rstd, a->resid_in,
                                        g->tmp, pf + o->ln2w, at(pf, o->ln2b), N, C, s);
        matmul_forward_cuda(g->mm, a->gelu, a->ln2, pw + o->fcw, at(pw, o->fcb), N, C, 4 * C,
                            a->fc_preact, s);
        matmul_forward_cuda(g->mm, g->tmp, a->gelu, pw + o->mprojw, at(pw, o->mprojb), N, 4 * C, C,
                            nullptr, s);
        if (l + 1 < L) {
            gpt_cuda_layer_acts_t *next = &g->acts[l + 1];
            const gpt_cuda_layer_offsets_t *on = &g->off[l + 1];
            residual_layernorm_forward_cuda(next->resid_in, next->ln1, next->ln1_mean, next->ln1_rstd,
                                            a->resid_mid, g->tmp, pf + on->ln1w, at(pf, on->ln1b), N,
                                            C, s);
        } else {
            residual_layernorm_forward_cuda(g->resid_final, g->lnf, g->lnf_mean, g->lnf_rstd,
                                            a->resid_mid, g->tmp, pf + g->lnfw, at(pf, g->lnfb), N,
                                            C, s);
        }
    }
    g->has_forward = 1;
    g->has_targets = targets != NULL;
    if (!targets) {
        CUDA_CHECK(cudaStreamSynchronize(s));
        return 0.0f;
    }

    /* Host work for the backward's dwte, done while the GPU runs the layers queued above. */
    encoder_groups_build(&g->groups, inputs, N, s);

    /* Tied LM head, chunk by chunk: logits -> (loss, dlogits in place) -> dlnf rows and the
     * head's dwte, with dloss = 1/N; backward() applies its scale to both. */
    const int Vp = g->Vp;
    CUDA_CHECK(cudaMemsetAsync(g->dwte_head, 0, (size_t)Vp * C * sizeof(float), s));
    for (int r0 = 0; r0 < N; r0 += g->logit_chunk) {
        const int rows = N - r0 < g->logit_chunk ? N - r0 : g->logit_chunk;
        const bf16 *x = g->lnf + (size_t)r0 * C;
        matmul_forward_cuda(g->mm, g->logits, x, pw + g->wte, nullptr, rows, C, Vp, nullptr, s);
        crossentropy_fused_cuda(g->losses + r0, nullptr, g->logits, g->targets_dev + r0,
                                1.0f / (float)N, rows, g->V, Vp, s);
        matmul_backward_cuda(g->mm, g->dlnf + (size_t)r0 * C, 0, g->dwte_head, g->logits, x,
                             pw + g->wte, rows, C, Vp, nullptr, s);
    }
    mean_cuda(g->loss_mean, g->losses, N, s);
    double loss = 0.0;
    CUDA_CHECK(cudaMemcpyAsync(&loss, g->loss_mean, sizeof loss, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    return (float)loss;
}

void gpt_cuda_backward(gpt_cuda_t *g, float scale) {
    if (!g->has_forward || !g->has_targets)
        fatal(EXIT_RUNTIME, "gpt_cuda_backward: the last forward had no targets (no loss to differentiate)");
    const int B = g->B, T = g->T, N = B * T, C = g->C, P = g->P;
    const size_t NC = (size_t)N * C;
    cudaStream_t s = g->stream;
    const bf16 *pw = g->params_bf16;
    const float *pf = g->params;
    float *gr = g->grads;
    float *red = g->red_scratch;

    /* The head's gradients were formed in the forward with dloss = 1/N. */
    if (scale != 1.0f) scale_bf16_cuda(g->dlnf, scale, NC, s);
    axpy_cuda(gr + g->wte, scale, g->dwte_head, (size_t)g->Vp * C, s);
    CUDA_CHECK(cudaMemsetAsync(g->dres, 0, NC * sizeof(bf16), s));
    layernorm_backward_cuda(g->dres, gr + g->lnfw, at(gr, g->lnfb), g->dlnf, g->resid_final,
                            pf + g->lnfw, g->lnf_mean, g->lnf_rstd, N, C, red, s);
    const size_t layers_end = g->lnfw; /* lnf follows the last layer */
    if (g->grads_ready) g->grads_ready(g->grads_ready_ctx, layers_end, g->n_params);

    const WeightGrads dw = {g, g->use_overlap && !g->grads_ready};
    for (int l = g->L - 1; l >= 0; l--) {
        const gpt_cuda_layer_offsets_t *o = &g->off[l];
        const gpt_cuda_layer_acts_t *a = &g->acts[l];
        /* MLP: the GELU output kept by the forward; its backward is fused into the dinp matmul. */
        matmul_backward_cuda(g->mm, g->dbig, 0, nullptr, g->dres, a->gelu, pw + o->mprojw, N, 4 * C,
                             C, a->fc_preact, s);
        dw.fork();
        dw.add(gr + o->mprojw, g->dres, a->gelu, N, 4 * C, C);
        dw.mark(0); /* dres read */
        dw.add(gr + o->fcw, g->dbig, a->ln2, N, C, 4 * C);
        dw.mark(1); /* dbig read */
        if (o->mprojb != SIZE_MAX) bias_backward_cuda(gr + o->mprojb, g->dres, N, C, red, s);
        matmul_backward_cuda(g->mm, g->tmp, 0, nullptr, g->dbig, a->ln2, pw + o->fcw, N, C, 4 * C,
                             nullptr, s);
        if (o->fcb != SIZE_MAX) bias_backward_cuda(gr + o->fcb, g->dbig, N, 4 * C, red, s);
        dw.join(0);
        layernorm_backward_cuda(g->dres, gr + o->ln2w, at(gr, o->ln2b), g->tmp, a->resid_mid,
                                pf + o->ln2w, a->ln2_mean, a->ln2_rstd, N, C, red, s);
        /* Attention. */
        dw.fork();
        dw.add(gr + o->projw, g->dres, a->att, N, C, C);
        dw.mark(2); /* dres read */
        matmul_backward_cuda(g->mm, g->tmp, 0, nullptr, g->dres, a->att, pw + o->projw, N, C, C,
                             nullptr, s);
        if (o->projb != SIZE_MAX) bias_backward_cuda(gr + o->projb, g->dres, N, C, red, s);
        dw.join(1);
        attention_backward(g, l, B, T); /* g->tmp (datt) -> g->dbig (dqkv) */
        dw.fork();
        dw.add(gr + o->qkvw, g->dbig, a->ln1, N, C, P);
        dw.mark(3); /* dbig read */
        matmul_backward_cuda(g->mm, g->tmp, 0, nullptr, g->dbig, a->ln1, pw + o->qkvw, N, C, P,
                             nullptr, s);
        if (o->qkvb != SIZE_MAX) bias_backward_cuda(gr + o->qkvb, g->dbig, N, P, red, s);
        dw.join(2);
        layernorm_backward_cuda(g->dres, gr + o->ln1w, at(gr, o->ln1b), g->tmp, a->resid_in,
                                pf + o->ln1w, a->ln1_mean, a->ln1_rstd, N, C, red, s);
        dw.join(3); /* before the next layer's MLP overwrites dbig, and before the end */
        if (g->grads_ready)
            g->grads_ready(g->grads_ready_ctx, o->ln1w, l + 1 < g->L ? g->off[l + 1].ln1w : layers_end);
    }
    encoder_backward_cuda(gr + g->wte, gr + g->wpe, g->dres, &g->groups, B, T, C, s);
    if (g->grads_ready) g->grads_ready(g->grads_ready_ctx, 0, g->off[0].ln1w); /* wte, wpe */
}
