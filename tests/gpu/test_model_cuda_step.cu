/* The CUDA backend as a whole against the fp32 CPU backend (model/backend.h): one training
 * step of a small GPT (loss, every parameter gradient, grad norm, AdamW update, the next loss,
 * logits rows for sampling) in every attention mode (dense, qk_sparse, hash_sparse, shared_qk,
 * exclude_self, a per-layer dense override), the plans of both backends compared, the
 * refusal of configurations it cannot run, and bit-for-bit determinism of a step with
 * backend_cuda_set_deterministic on (dense and sparse).
 *
 * Tolerances (bf16 activations against fp32, 2 layers):
 *   loss: |gpu - cpu| <= 5e-3 relative;  logits rows: ||gpu - cpu|| / ||cpu|| <= 2e-2
 *   every gradient tensor: ||gpu - cpu|| / ||cpu|| <= 5e-2 (bf16 activation gradients);
 *   the whole gradient and the grad norm: <= 2e-2
 *   AdamW: the GPU update equals adamw_step applied on the host to the GPU's own gradients
 *   (<= 1e-6 relative); against the CPU model's update, step 1 of Adam moves each weight by
 *   about lr * sign(g), so it may differ only where |g| is within bf16 noise of 0: at most 2%
 *   of the weights may differ by more than lr / 2.
 *   hash_sparse: when some rows hash to other buckets on the GPU (bf16 q/k, see
 *   compare_plans), every CPU-vs-GPU tolerance above is widened 8x (the kernels themselves
 *   are checked exactly, on identical buckets, by test_sparse_attn). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "model/cuda/backend_cuda.h"

extern "C" {
#include "model/optim.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"
}

typedef std::vector<float> vec;
static const uint64_t kKey = 0x51a7e5u;

static gpt_config_t small_config(int n_layer, int n_head, int n_embd, int vocab, int padded,
                                 int seq_len, int bias, int shared_qk, int exclude_self) {
    gpt_config_t c = small_gpt_config(n_layer, n_head, n_embd, vocab, padded, seq_len, bias, 4242);
    c.attn.exclude_self = exclude_self;
    c.shared_qk = shared_qk;
    return c;
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)got[i] - ref[i];
        if (isnan(got[i])) return INFINITY;
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void random_tokens(std::vector<int32_t> &t, int V, uint64_t salt) {
    for (size_t i = 0; i < t.size(); i++) t[i] = (int32_t)(rng_u64(kKey ^ salt, i) % (uint64_t)V);
}

/* Runs `create` on cfg in a child process and expects exit status 2 (user error). */
static void expect_usage_error(const char *what, const gpt_config_t *cfg) {
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        backend_cuda_create(cfg, 1, 8);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("  %s: exit status %d\n", what, code);
    CHECK(code == EXIT_USAGE, "%s: expected exit status %d, got %d", what, EXIT_USAGE, code);
}

static void test_refusals(void) {
    printf("configurations the CUDA backend refuses\n");
    gpt_config_t c = small_config(2, 1, 128, 997, 1008, 64, 0, 0, 0); /* head dim 128 */
    c.attn.mode = ATTN_HASH_SPARSE;
    c.attn.n_buckets = 4;
    expect_usage_error("hash_sparse attention with head dim 128", &c);
    c = small_config(2, 1, 128, 997, 1008, 64, 0, 0, 0);
    c.attn.mode = ATTN_QK_SPARSE;
    c.attn.drop_prob = 0.5f;
    c.dense_layer_mask = 1; /* layer 0 dense, layer 1 still sparse */
    expect_usage_error("qk_sparse attention on layer 1 with head dim 128", &c);
    c = small_config(2, 4, 128, 997, 1008, 64, 0, 0, 0); /* head dim 32 */
    expect_usage_error("head dim 32", &c);
}

/* The GPU's plans against the CPU's for the same (step, layer, micro) keys. Keep masks come
 * from the RNG alone and must be identical. Buckets are argmaxes of projections of q and k,
 * which the GPU holds in bf16 and the CPU in fp32: a row whose two best projections are
 * closer than bf16 noise may land in another bucket. Returns the number of such rows (the
 * caller then loosens its tolerances) and fails beyond 5% of the rows. */
static size_t compare_plans(backend_t *cpu, backend_t *gpu, const gpt_config_t *cfg) {
    size_t mismatched = 0, rows_all = 0;
    for (int l = 0; l < cfg->n_layer; l++) {
        const attn_plan_t *pc = cpu->plan(cpu, l), *pg = gpu->plan(gpu, l);
        CHECK(pc->p.mode == pg->p.mode && pc->B == pg->B && pc->T == pg->T,
              "layer %d: plan mode/shape differ (%d %dx%d vs %d %dx%d)", l, pc->p.mode, pc->B,
              pc->T, pg->p.mode, pg->B, pg->T);
        const size_t rows = (size_t)pc->B * pc->H * pc->T;
        if (pc->p.mode == ATTN_QK_SPARSE) {
            CHECK(memcmp(pc->keep_q, pg->keep_q, rows) == 0 && memcmp(pc->keep_k, pg->keep_k, rows) == 0,
                  "layer %d: qk keep masks differ between CPU and GPU", l);
        } else if (pc->p.mode == ATTN_HASH_SPARSE) {
            size_t bad = 0;
            for (size_t i = 0; i < rows; i++)
                bad += (pc->bucket_q[i] != pg->bucket_q[i]) + (pc->bucket_k[i] != pg->bucket_k[i]);
            mismatched += bad;
            rows_all += 2 * rows;
            printf("  layer %d: %zu of %zu hash buckets differ (bf16 vs fp32 inputs)\n", l, bad, 2 * rows);
        }
    }
    CHECK(mismatched * 20 <= rows_all, "%zu of %zu buckets differ between CPU and GPU", mismatched, rows_all);
    return mismatched;
}

static void test_step_vs_cpu(const char *name, const gpt_config_t *cfg, int B, int T) {
    printf("full step vs CPU backend: %s (L=%d H=%d C=%d V=%d/%d, B=%d T=%d, bias=%d shared_qk=%d exclude_self=%d, %s nb=%d drop=%.2f dense_mask=%#x)\n",
           name, cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->vocab_size, cfg->padded_vocab, B, T,
           cfg->bias, cfg->shared_qk, cfg->attn.exclude_self, attn_mode_name(cfg->attn.mode),
           cfg->attn.n_buckets, cfg->attn.drop_prob, (unsigned)cfg->dense_layer_mask);
    backend_t *cpu = backend_cpu_create(cfg, B, T, NULL), *gpu = backend_cuda_create(cfg, B, T);
    const size_t n = cpu->n_params;
    CHECK(gpu->n_params == n, "n_params %zu vs %zu", gpu->n_params, n);
    vec pc(n), pg(n), gc(n), gg(n), mg(n), vg(n), zero(n, 0.0f);
    cpu->read_state(cpu, pc.data(), NULL, NULL);
    gpu->read_state(gpu, pg.data(), mg.data(), vg.data());
    CHECK(memcmp(pc.data(), pg.data(), n * sizeof(float)) == 0, "initial parameters differ");
    CHECK(memcmp(mg.data(), zero.data(), n * sizeof(float)) == 0 &&
              memcmp(vg.data(), zero.data(), n * sizeof(float)) == 0,
          "initial AdamW moments are not zero");

    std::vector<int32_t> in((size_t)B * T), tg((size_t)B * T);
    random_tokens(in, cfg->vocab_size, 1);
    random_tokens(tg, cfg->vocab_size, 2);
    const float lc = cpu->forward(cpu, in.data(), tg.data(), B, T, 0, 0);
    const float lg = gpu->forward(gpu, in.data(), tg.data(), B, T, 0, 0);
    printf("  loss gpu %.6f cpu %.6f\n", lg, lc);
    /* A row hashed into another bucket attends to other keys: tolerances widen (x8) then. On
     * the H100 (2026-11-23), 4 of 720 differing buckets (shared QK, nb 8) gave a whole-gradient
     * error of 8.0e-2 and logits rows of 4.4e-2, so x4 was too tight. */
    const double widen = compare_plans(cpu, gpu, cfg) ? 8.0 : 1.0;
    CHECK(fabsf(lg - lc) <= 5e-3f * widen * fabsf(lc), "loss %.6f vs %.6f", lg, lc);

    const int Vp = cfg->padded_vocab;
    vec rc(Vp), rg(Vp);
    cpu->logits_row(cpu, B - 1, T - 1, rc.data());
    gpu->logits_row(gpu, B - 1, T - 1, rg.data());
    const double e_row = rel_err(rg.data(), rc.data(), Vp);
    printf("  logits row (%d, %d): rel %.2e\n", B - 1, T - 1, e_row);
    CHECK(e_row <= 2e-2 * widen, "logits row rel err %.3e", e_row);

    cpu->zero_grad(cpu);
    gpu->zero_grad(gpu);
    cpu->backward(cpu, 0.5f);
    gpu->backward(gpu, 0.5f);
    cpu->read_grads(cpu, gc.data());
    gpu->read_grads(gpu, gg.data());
    const int nt = gpt_tensors(cfg, NULL);
    std::vector<gpt_tensor_t> tensors(nt);
    gpt_tensors(cfg, tensors.data());
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < nt; i++) {
        const gpt_tensor_t *t = &tensors[i];
        const double e = rel_err(gg.data() + t->offset, gc.data() + t->offset, t->numel);
        if (e > worst) worst = e, worst_name = t->name;
        CHECK(e <= 5e-2 * widen, "gradient of %s: rel err %.3e", t->name, e);
    }
    const double e_all = rel_err(gg.data(), gc.data(), n);
    printf("  gradients: all rel %.2e, worst tensor %s rel %.2e (%d tensors)\n", e_all, worst_name, worst, nt);
    CHECK(e_all <= 2e-2 * widen, "whole gradient rel err %.3e", e_all);
    const double nc = cpu->grad_norm(cpu), ng = gpu->grad_norm(gpu);
    printf("  grad norm gpu %.6f cpu %.6f\n", ng, nc);
    CHECK(fabs(ng - nc) <= 2e-2 * widen * nc, "grad norm %.6f vs %.6f", ng, nc);

    /* AdamW: the GPU's update against adamw_step on its own state, then against the CPU. */
    const adamw_hparams_t h = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    const float clip = 0.7f;
    vec expect = pg, m_exp(n, 0.0f), v_exp(n, 0.0f);
    for (int i = 0; i < nt; i++) {
        const gpt_tensor_t *t = &tensors[i];
        adamw_step(expect.data() + t->offset, gg.data() + t->offset, m_exp.data() + t->offset,
                   v_exp.data() + t->offset, t->numel, t->decay, &h, 1, clip);
    }
    cpu->update(cpu, &h, 1, clip);
    gpu->update(gpu, &h, 1, clip);
    vec pc1(n), pg1(n);
    cpu->read_state(cpu, pc1.data(), NULL, NULL);
    gpu->read_state(gpu, pg1.data(), mg.data(), vg.data());
    const double e_upd = rel_err(pg1.data(), expect.data(), n);
    const double e_m = rel_err(mg.data(), m_exp.data(), n);
    printf("  AdamW vs host adamw_step on the GPU's grads: params rel %.2e, m rel %.2e\n", e_upd, e_m);
    CHECK(e_upd <= 1e-6 && e_m <= 1e-6, "GPU AdamW differs from adamw_step: %.3e %.3e", e_upd, e_m);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) off += fabsf((pg1[i] - pg[i]) - (pc1[i] - pc[i])) > 0.5f * h.lr;
    printf("  weights whose update differs from the CPU's by > lr/2: %.3f%%\n", 100.0 * off / n);
    CHECK(off <= (size_t)(n / 50 * widen), "%zu of %zu updates differ from the CPU", off, n);

    const float lc2 = cpu->forward(cpu, in.data(), tg.data(), B, T, 1, 0);
    const float lg2 = gpu->forward(gpu, in.data(), tg.data(), B, T, 1, 0);
    printf("  loss after the update gpu %.6f cpu %.6f\n", lg2, lc2);
    CHECK(fabsf(lg2 - lc2) <= 5e-3f * widen * fabsf(lc2), "loss after update %.6f vs %.6f", lg2, lc2);
    CHECK(lg2 < lg, "one AdamW step on the same batch should lower the loss (%.6f -> %.6f)", lg, lg2);

    /* Sampling: B = 1, shorter T, no targets. */
    const int Ts = T - 5;
    cpu->forward(cpu, in.data(), NULL, 1, Ts, 1, 0);
    gpu->forward(gpu, in.data(), NULL, 1, Ts, 1, 0);
    cpu->logits_row(cpu, 0, Ts - 1, rc.data());
    gpu->logits_row(gpu, 0, Ts - 1, rg.data());
    const double e_s = rel_err(rg.data(), rc.data(), Vp);
    printf("  sampling forward (1 x %d, no targets): logits row rel %.2e\n", Ts, e_s);
    CHECK(e_s <= 2e-2 * widen, "sampling logits row rel err %.3e", e_s);
    const attn_plan_t *pl = gpu->plan(gpu, cfg->n_layer - 1);
    CHECK(pl->p.mode == gpt_layer_attn(cfg, cfg->n_layer - 1).mode && pl->B == 1 && pl->T == Ts,
          "plan of the last forward");
    compare_plans(cpu, gpu, cfg);
    cpu->destroy(cpu);
    gpu->destroy(gpu);
}

/* One optimizer step from a saved state, returning loss, norm, gradients and new params. */
struct StepResult {
    float loss;
    double norm;
    vec grads, params;
};

static StepResult run_step(backend_t *b, const vec &p0, const vec &m0, const vec &v0,
                           const std::vector<int32_t> &in, const std::vector<int32_t> &tg, int B,
                           int T) {
    StepResult r;
    b->write_state(b, p0.data(), m0.data(), v0.data());
    b->zero_grad(b);
    r.loss = 0;
    for (int micro = 0; micro < 2; micro++) { /* two micro-batches: accumulation too */
        r.loss += b->forward(b, in.data() + micro * B * T, tg.data() + micro * B * T, B, T, 3, micro);
        b->backward(b, 0.5f);
    }
    r.norm = b->grad_norm(b);
    r.grads.resize(b->n_params);
    b->read_grads(b, r.grads.data());
    const adamw_hparams_t h = {6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    b->update(b, &h, 4, grad_clip_factor(r.norm, 1.0f));
    r.params.resize(b->n_params);
    b->read_state(b, r.params.data(), NULL, NULL);
    return r;
}

static int same_bits(const StepResult &a, const StepResult &b) {
    return memcmp(&a.loss, &b.loss, sizeof a.loss) == 0 && memcmp(&a.norm, &b.norm, sizeof a.norm) == 0 &&
           memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float)) == 0 &&
           memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)) == 0;
}

static void test_determinism(attn_mode_t mode, int n_buckets, float drop) {
    gpt_config_t cfg = small_config(2, 4, 256, 5000, 5008, 512, 0, 0, 0);
    cfg.attn.mode = mode;
    cfg.attn.n_buckets = n_buckets;
    cfg.attn.drop_prob = drop;
    const int B = 2, T = 509;
    printf("determinism (%s, nb=%d, drop=%.2f): L=2 H=4 C=256 V=5000, 2 micro-batches of %d x %d\n",
           attn_mode_name(mode), n_buckets, drop, B, T);
    backend_t *b = backend_cuda_create(&cfg, B, T);
    const size_t n = b->n_params;
    vec p0(n), m0(n), v0(n);
    b->read_state(b, p0.data(), NULL, NULL);
    for (size_t i = 0; i < n; i++) { /* nonzero moments: a mid-run state */
        m0[i] = 1e-4f * rng_normal(kKey, 3 * i);
        v0[i] = 1e-7f * fabsf(rng_normal(kKey, 3 * i + 1));
    }
    std::vector<int32_t> in(2 * B * T), tg(2 * B * T);
    random_tokens(in, cfg.vocab_size, 3);
    random_tokens(tg, cfg.vocab_size, 4);
    backend_cuda_set_deterministic(b, 1);
    const StepResult a = run_step(b, p0, m0, v0, in, tg, B, T), c = run_step(b, p0, m0, v0, in, tg, B, T);
    printf("  deterministic on: loss %.7f norm %.7f, second run bit-identical: %s\n", a.loss, a.norm,
           same_bits(a, c) ? "yes" : "NO");
    CHECK(same_bits(a, c), "two deterministic steps differ");
    backend_cuda_set_deterministic(b, 0);
    const StepResult d = run_step(b, p0, m0, v0, in, tg, B, T), e = run_step(b, p0, m0, v0, in, tg, B, T);
    const double diff = rel_err(d.grads.data(), a.grads.data(), n);
    printf("  deterministic off (atomic dQ in attention): bit-identical: %s, grads vs deterministic rel %.2e\n",
           same_bits(d, e) ? "yes" : "no", diff);
    CHECK(diff <= 1e-2, "atomic and deterministic attention backward disagree: %.3e", diff);
    b->destroy(b);
}

int main(void) {
    test_refusals(); /* first: the children must not inherit an initialised CUDA context */
    gpt_config_t a = small_config(2, 2, 128, 997, 1008, 96, 1, 0, 0);
    test_step_vs_cpu("biases, separate K", &a, 3, 77);
    gpt_config_t b = small_config(2, 2, 128, 997, 1008, 96, 0, 1, 1);
    test_step_vs_cpu("no biases, shared QK, exclude_self", &b, 2, 90);
    gpt_config_t c = small_config(1, 1, 128, 50257, 50304, 64, 0, 0, 0);
    test_step_vs_cpu("GPT-2 vocabulary, head dim 128", &c, 2, 33);
    /* Sparse layers: plans keyed like the CPU's, kernels over the GPU plan. */
    gpt_config_t d = small_config(2, 2, 128, 997, 1008, 96, 0, 0, 0);
    d.attn.mode = ATTN_QK_SPARSE;
    d.attn.drop_prob = 0.5f;
    test_step_vs_cpu("qk_sparse drop 0.5", &d, 2, 83);
    d.bias = 1;
    d.attn.drop_prob = 0.3f;
    d.attn.exclude_self = 1;
    test_step_vs_cpu("qk_sparse drop 0.3, biases, exclude_self", &d, 3, 61);
    gpt_config_t e = small_config(2, 2, 128, 997, 1008, 96, 0, 0, 0);
    e.attn.mode = ATTN_HASH_SPARSE;
    e.attn.n_buckets = 4;
    test_step_vs_cpu("hash_sparse nb 4, separate K", &e, 2, 77);
    e.shared_qk = 1;
    e.attn.n_buckets = 8;
    e.attn.exclude_self = 1;
    e.dense_layer_mask = 1; /* layer 0 dense, layer 1 hash */
    test_step_vs_cpu("hash_sparse nb 8, shared QK, exclude_self, layer 0 dense", &e, 2, 90);
    test_determinism(ATTN_DENSE, 1, 0.0f);
    test_determinism(ATTN_HASH_SPARSE, 8, 0.0f);
    test_determinism(ATTN_QK_SPARSE, 1, 0.5f);
    return test_summary();
}
