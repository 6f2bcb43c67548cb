/* The data-parallel CUDA path (NCCL, ZeRO-1; model/cuda/zero_cuda.h) on one GPU.
 *
 *  1. Shard layout (host only) for world sizes 1..8 on two models: buckets contiguous over the
 *     flat vector, one per gradient-ready range, all but the last dividing evenly by the world
 *     size; ranks' slices partition every bucket; full <-> shard copies round-trip bit for bit
 *     with zero padding; AdamW runs cover every parameter once with its tensor's decay flag.
 *  2. A host with more ranks than GPUs is refused with exit status 2.
 *  3. World size 1 through NCCL equals the single-GPU path BIT FOR BIT: two micro-batches of
 *     accumulation, grad norm, clipping, AdamW, read_state (params, m, v), three steps (with and
 *     without the overlapped reduce-scatter, and from a state loaded by write_state). Why exact:
 *     with one rank the reduce-scatter sums one operand (a copy), the shard is the gradient
 *     vector in its own order (same norm kernel over the same elements), AdamW is elementwise
 *     (where launches split does not matter) and the in-place all-gather moves nothing. Both
 *     backends run flash attention's deterministic backward. Independently of the single-GPU
 *     path, the step is also checked against host math on its own gradients: norm rel 1e-12,
 *     AdamW (params, m, v) rel 1e-6.
 *  4. The reduce-scatter overlaps the backward: on the last micro-batch every bucket is queued
 *     from inside the backward (gpt_cuda's grads_ready hook). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "model/cuda/backend_cuda.h"
#include "model/cuda/zero_cuda.h"

extern "C" {
#include "model/optim.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/gpu/gpu_test_util.cuh"
#include "tests/test.h"
}

typedef std::vector<float> vec;
static const uint64_t kKey = 0x2e503u;
static const dist_t kSingle = {0, 1, 0, 1, 0}; /* rank 0 of 1, MPI not initialised */

static gpt_config_t small_config(int n_layer, int n_head, int n_embd, int vocab, int padded, int seq_len,
                                 int bias) {
    return small_gpt_config(n_layer, n_head, n_embd, vocab, padded, seq_len, bias, 777);
}

static std::vector<gpt_tensor_t> tensor_table(const gpt_config_t *cfg) {
    std::vector<gpt_tensor_t> t(gpt_tensors(cfg, NULL));
    gpt_tensors(cfg, t.data());
    return t;
}

/* Starts of the backward's gradient-ready ranges, as zero_cuda_create takes them from gpt_cuda:
 * 0 (wte, wpe), each layer's ln1.w, lnf.w. */
static std::vector<size_t> range_starts(const std::vector<gpt_tensor_t> &ts, int n_layer) {
    std::vector<size_t> s(1, 0);
    char name[32];
    for (int l = 0; l <= n_layer; l++) {
        if (l < n_layer) snprintf(name, sizeof name, "h.%d.ln1.w", l);
        else snprintf(name, sizeof name, "lnf.w");
        for (size_t i = 0; i < ts.size(); i++)
            if (strcmp(ts[i].name, name) == 0) s.push_back(ts[i].offset);
    }
    return s;
}

static void check_layout(const char *what, const gpt_config_t *cfg, int world) {
    const std::vector<gpt_tensor_t> ts = tensor_table(cfg);
    const size_t n = gpt_num_params(cfg);
    const std::vector<size_t> starts = range_starts(ts, cfg->n_layer);
    CHECK((int)starts.size() == cfg->n_layer + 2, "%s: found %zu range starts", what, starts.size());
    zero_layout_t z;
    zero_layout_build(&z, n, starts.data(), (int)starts.size(), world);

    int contiguous = z.n_buckets == (int)starts.size() && z.buckets[0].lo == 0 && z.buckets[z.n_buckets - 1].hi == n;
    size_t pos = 0;
    int uneven_not_last = 0;
    for (int i = 0; i < z.n_buckets; i++) {
        const zero_bucket_t *b = &z.buckets[i];
        const size_t len = b->hi - b->lo;
        contiguous &= b->lo < b->hi && (i == 0 || b->lo == z.buckets[i - 1].hi) && b->shard_pos == pos;
        contiguous &= b->slice * world >= len && (b->slice - 1) * world < len;
        if (len % world && i != z.n_buckets - 1) uneven_not_last++;
        pos += b->slice;
    }
    CHECK(contiguous && pos == z.shard_len, "%s, world %d: buckets are not a contiguous cover of [0, %zu)", what,
          world, n);
    CHECK(uneven_not_last == 0, "%s, world %d: %d buckets other than the last need padding", what, world,
          uneven_not_last);
    if (world == 1) {
        int identity = z.shard_len == n;
        for (int i = 0; i < z.n_buckets; i++) identity &= z.buckets[i].shard_pos == z.buckets[i].lo;
        CHECK(identity, "%s: with one rank the shard must be the flat vector in its own order", what);
    }

    /* Ownership: every parameter in exactly one rank's slice; full -> shards -> full exact. */
    std::vector<int> owners(n, 0);
    vec full(n), back(n, -1e30f);
    for (size_t i = 0; i < n; i++) full[i] = rng_normal(kKey, i);
    std::vector<vec> shards(world, vec(z.shard_len));
    int padding_zero = 1;
    for (int r = 0; r < world; r++) {
        for (int i = 0; i < z.n_buckets; i++) {
            const zero_bucket_t *b = &z.buckets[i];
            const size_t begin = zero_slice_begin(b, r), len = zero_slice_len(b, r);
            for (size_t k = 0; k < len; k++) owners[begin + k]++;
        }
        zero_take_shard(&z, r, full.data(), shards[r].data());
        for (int i = 0; i < z.n_buckets; i++) {
            const zero_bucket_t *b = &z.buckets[i];
            for (size_t k = zero_slice_len(b, r); k < b->slice; k++) padding_zero &= shards[r][b->shard_pos + k] == 0.0f;
        }
        zero_put_shard(&z, r, shards[r].data(), back.data());
    }
    size_t bad_owner = 0;
    for (size_t i = 0; i < n; i++) bad_owner += owners[i] != 1;
    CHECK(bad_owner == 0, "%s, world %d: %zu parameters not owned by exactly one rank", what, world, bad_owner);
    CHECK(memcmp(full.data(), back.data(), n * sizeof(float)) == 0, "%s, world %d: shards do not round-trip", what,
          world);
    CHECK(padding_zero, "%s, world %d: shard padding is not zero", what, world);

    /* AdamW runs: every parameter updated once, by its owner, with its tensor's decay flag. */
    std::vector<int> decay_of(n, -1), updates(n, 0);
    for (size_t t = 0; t < ts.size(); t++)
        for (size_t k = 0; k < ts[t].numel; k++) decay_of[ts[t].offset + k] = ts[t].decay != 0;
    size_t bad_run = 0;
    for (int r = 0; r < world; r++) {
        std::vector<zero_run_t> runs(zero_update_runs(&z, r, ts.data(), (int)ts.size(), NULL));
        zero_update_runs(&z, r, ts.data(), (int)ts.size(), runs.data());
        for (size_t u = 0; u < runs.size(); u++) {
            const zero_run_t *run = &runs[u];
            const zero_bucket_t *b = &z.buckets[run->bucket];
            const size_t begin = zero_slice_begin(b, r);
            bad_run += run->len == 0 || run->flat < begin || run->flat + run->len > begin + zero_slice_len(b, r) ||
                       run->shard != b->shard_pos + (run->flat - begin);
            for (size_t k = 0; k < run->len; k++) {
                updates[run->flat + k]++;
                bad_run += decay_of[run->flat + k] != run->decay;
            }
        }
    }
    size_t bad_update = 0;
    for (size_t i = 0; i < n; i++) bad_update += updates[i] != 1;
    CHECK(bad_run == 0 && bad_update == 0, "%s, world %d: AdamW runs: %zu bad, %zu parameters not updated once", what,
          world, bad_run, bad_update);
}

static void test_layouts(void) {
    printf("shard layout (host): world sizes 1..8\n");
    const gpt_config_t a = small_config(3, 2, 128, 997, 1008, 96, 1);
    const gpt_config_t b = small_config(2, 1, 72, 501, 504, 37, 0);
    for (int w = 1; w <= 8; w++) {
        check_layout("L3 C128 bias", &a, w);
        check_layout("L2 C72 no bias", &b, w);
    }
    zero_layout_t z;
    const std::vector<gpt_tensor_t> ts = tensor_table(&a);
    const std::vector<size_t> s = range_starts(ts, a.n_layer);
    zero_layout_build(&z, gpt_num_params(&a), s.data(), (int)s.size(), 3);
    printf("  L3 C128, world 3: %d buckets, shard %zu of %zu parameters, last bucket %zu = 3 x %zu%s\n", z.n_buckets,
           z.shard_len, gpt_num_params(&a), z.buckets[z.n_buckets - 1].hi - z.buckets[z.n_buckets - 1].lo,
           z.buckets[z.n_buckets - 1].slice, (z.buckets[z.n_buckets - 1].hi - z.buckets[z.n_buckets - 1].lo) % 3 ? " (padded)" : "");
}

/* Must run before this process touches CUDA: the child initialises it on its own. */
static void test_refuse_too_many_ranks(void) {
    printf("a host with more ranks than GPUs is refused\n");
    const gpt_config_t cfg = small_config(1, 2, 128, 997, 1008, 32, 0);
    int fds[2];
    if (pipe(fds) != 0) fatal(EXIT_RUNTIME, "pipe failed");
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) { /* the child's error message goes to the pipe */
        close(fds[0]);
        dup2(fds[1], 2);
        const dist_t crowded = {0, 1, 0, 4096, 0}; /* 4096 ranks on this host */
        backend_cuda_create_dist(&cfg, 1, 8, &crowded);
        _exit(0);
    }
    close(fds[1]);
    char msg[1024];
    size_t len = 0;
    ssize_t got;
    while (len + 1 < sizeof msg && (got = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0) len += (size_t)got;
    msg[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("  4096 ranks on this host: exit status %d, message: %s", code, len ? msg : "(none)\n");
    CHECK(code == EXIT_USAGE, "expected exit status %d, got %d", EXIT_USAGE, code);
    CHECK(strstr(msg, "ranks on this host") != NULL, "the message should say that the host has too many ranks");
}

struct State {
    vec p, m, v;
};

static State read_all(backend_t *b) {
    State s;
    s.p.resize(b->n_params);
    s.m.resize(b->n_params);
    s.v.resize(b->n_params);
    b->read_state(b, s.p.data(), s.m.data(), s.v.data());
    return s;
}

struct StepOut {
    float loss;
    double norm;
    float clip;
    vec grads;
    State after;
};

/* One optimizer step over two micro-batches of B x T (tokens at in/tg + micro * B * T). */
static StepOut train_step(backend_t *b, const std::vector<int32_t> &in, const std::vector<int32_t> &tg, int B,
                          int T, uint64_t step, int overlap, const adamw_hparams_t &h, float max_norm) {
    StepOut o;
    o.loss = 0;
    b->zero_grad(b);
    for (int micro = 0; micro < 2; micro++) {
        const size_t at = (size_t)micro * B * T;
        o.loss += b->forward(b, in.data() + at, tg.data() + at, B, T, step, (uint64_t)micro);
        b->last_micro = overlap && micro == 1;
        b->backward(b, 0.5f);
    }
    b->last_micro = 0;
    o.grads.resize(b->n_params);
    b->read_grads(b, o.grads.data());
    o.norm = b->grad_norm(b);
    o.clip = grad_clip_factor(o.norm, max_norm);
    b->update(b, &h, (long)step + 1, o.clip);
    o.after = read_all(b);
    return o;
}

/* Bitwise comparison; names the first differing element and its tensor. */
static int same_bits(const char *what, const vec &got, const vec &ref, const std::vector<gpt_tensor_t> &ts) {
    if (got.size() == ref.size() && memcmp(got.data(), ref.data(), got.size() * sizeof(float)) == 0) return 1;
    size_t i = 0, differ = 0;
    for (size_t k = 0; k < got.size() && k < ref.size(); k++)
        if (memcmp(&got[k], &ref[k], sizeof(float)) != 0) {
            if (!differ) i = k;
            differ++;
        }
    const char *name = "?";
    for (size_t t = 0; t < ts.size(); t++)
        if (i >= ts[t].offset && i < ts[t].offset + ts[t].numel) name = ts[t].name;
    fprintf(stderr, "  %s: %zu of %zu differ, first at %zu (%s): %.9g vs %.9g\n", what, differ, ref.size(), i, name,
            i < got.size() ? got[i] : NAN, i < ref.size() ? ref[i] : NAN);
    return 0;
}

static double rel_err(const vec &got, const vec &ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (isnan(got[i])) return INFINITY;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The ZeRO step against host math on its own gradients (independent of the other backend). */
static void check_against_host(const char *what, const StepOut &o, const State &before,
                               const std::vector<gpt_tensor_t> &ts, const adamw_hparams_t &h, long t) {
    double sq = 0;
    for (size_t i = 0; i < o.grads.size(); i++) sq += (double)o.grads[i] * o.grads[i];
    const double host_norm = sqrt(sq);
    CHECK(fabs(o.norm - host_norm) <= 1e-12 * host_norm, "%s: grad norm %.17g vs host %.17g", what, o.norm, host_norm);
    State e = before;
    for (size_t k = 0; k < ts.size(); k++) {
        const size_t off = ts[k].offset;
        adamw_step(e.p.data() + off, o.grads.data() + off, e.m.data() + off, e.v.data() + off, ts[k].numel,
                   ts[k].decay, &h, t, o.clip);
    }
    const double ep = rel_err(o.after.p, e.p), em = rel_err(o.after.m, e.m), ev = rel_err(o.after.v, e.v);
    printf("  %s vs host AdamW on its own gradients: params rel %.2e, m rel %.2e, v rel %.2e\n", what, ep, em, ev);
    CHECK(ep <= 1e-6 && em <= 1e-6 && ev <= 1e-6, "%s: AdamW differs from adamw_step: %.3e %.3e %.3e", what, ep,
          em, ev);
}

static void compare_steps(const char *what, const StepOut &z, const StepOut &p, const std::vector<gpt_tensor_t> &ts) {
    const int loss_ok = memcmp(&z.loss, &p.loss, sizeof z.loss) == 0;
    const int grads_ok = same_bits("gradients", z.grads, p.grads, ts);
    const int norm_ok = memcmp(&z.norm, &p.norm, sizeof z.norm) == 0;
    const int p_ok = same_bits("params", z.after.p, p.after.p, ts);
    const int m_ok = same_bits("m", z.after.m, p.after.m, ts);
    const int v_ok = same_bits("v", z.after.v, p.after.v, ts);
    printf("  %s: loss %.7f / %.7f, norm %.9f / %.9f (clip %.4f); bit-identical: loss %s grads %s norm %s "
           "params %s m %s v %s\n", what, z.loss, p.loss, z.norm, p.norm, z.clip, loss_ok ? "yes" : "NO",
           grads_ok ? "yes" : "NO", norm_ok ? "yes" : "NO", p_ok ? "yes" : "NO", m_ok ? "yes" : "NO", v_ok ? "yes" : "NO");
    CHECK(loss_ok && grads_ok, "%s: the two backends' forward/backward differ before any ZeRO code ran", what);
    CHECK(norm_ok, "%s: grad norm %.17g (ZeRO) vs %.17g", what, z.norm, p.norm);
    CHECK(p_ok && m_ok && v_ok, "%s: state after the update differs (params %d, m %d, v %d)", what, p_ok, m_ok, v_ok);
}

static void test_world1_equals_plain(const char *name, const gpt_config_t *cfg, int B, int T) {
    printf("NCCL ZeRO-1 at world size 1 vs the single-GPU step: %s (L=%d H=%d C=%d V=%d/%d bias=%d, 2 x %d x %d)\n",
           name, cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->vocab_size, cfg->padded_vocab, cfg->bias, B, T);
    backend_t *plain = backend_cuda_create(cfg, B, T);
    backend_t *zero = backend_cuda_create_dist(cfg, B, T, &kSingle);
    backend_cuda_set_deterministic(plain, 1);
    backend_cuda_set_deterministic(zero, 1);
    printf("  %s\n", zero->device);
    CHECK(strstr(zero->device, "NCCL") != NULL, "device string \"%s\" does not name NCCL", zero->device);
    const size_t n = zero->n_params;
    CHECK(plain->n_params == n, "n_params %zu vs %zu", plain->n_params, n);
    const std::vector<gpt_tensor_t> ts = tensor_table(cfg);

    const State s0p = read_all(plain), s0z = read_all(zero);
    const vec zeros(n, 0.0f);
    CHECK(same_bits("initial params", s0z.p, s0p.p, ts), "initial parameters differ");
    CHECK(same_bits("initial m", s0z.m, zeros, ts) && same_bits("initial v", s0z.v, zeros, ts),
          "initial moments are not zero");

    const size_t per_step = 2 * (size_t)B * T;
    std::vector<int32_t> in(3 * per_step), tg(3 * per_step);
    for (size_t i = 0; i < in.size(); i++) {
        in[i] = (int32_t)(rng_u64(kKey ^ 1, i) % (uint64_t)cfg->vocab_size);
        tg[i] = (int32_t)(rng_u64(kKey ^ 2, i) % (uint64_t)cfg->vocab_size);
    }
    std::vector<int32_t> in1(in.begin(), in.begin() + per_step), tg1(tg.begin(), tg.begin() + per_step);
    std::vector<int32_t> in2(in.begin() + per_step, in.begin() + 2 * per_step),
        tg2(tg.begin() + per_step, tg.begin() + 2 * per_step);
    std::vector<int32_t> in3(in.begin() + 2 * per_step, in.end()), tg3(tg.begin() + 2 * per_step, tg.end());
    const adamw_hparams_t h = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};

    /* Step 1: the reduce-scatter overlapped with the last backward; clipping active. */
    StepOut p1 = train_step(plain, in1, tg1, B, T, 0, 1, h, 0.05f);
    StepOut z1 = train_step(zero, in1, tg1, B, T, 0, 1, h, 0.05f);
    CHECK(z1.clip < 1.0f, "step 1: clipping should be active (norm %.4f, max 0.05)", z1.norm);
    compare_steps("step 1 (overlapped)", z1, p1, ts);
    check_against_host("step 1", z1, s0z, ts, h, 1);

    /* Step 2: no overlap (grad_norm queues every bucket), moments carried from step 1. */
    StepOut p2 = train_step(plain, in2, tg2, B, T, 1, 0, h, 1e3f);
    StepOut z2 = train_step(zero, in2, tg2, B, T, 1, 0, h, 1e3f);
    compare_steps("step 2 (not overlapped)", z2, p2, ts);
    check_against_host("step 2", z2, z1.after, ts, h, 2);

    /* Step 3 from a state loaded by write_state: nonzero moments everywhere. */
    State s;
    s.p = z2.after.p;
    s.m.resize(n);
    s.v.resize(n);
    for (size_t i = 0; i < n; i++) {
        s.p[i] += 1e-3f * rng_normal(kKey ^ 3, i);
        s.m[i] = 1e-3f * rng_normal(kKey ^ 4, i);
        s.v[i] = 1e-6f * (0.1f + fabsf(rng_normal(kKey ^ 5, i)));
    }
    plain->write_state(plain, s.p.data(), s.m.data(), s.v.data());
    zero->write_state(zero, s.p.data(), s.m.data(), s.v.data());
    const State back = read_all(zero);
    CHECK(same_bits("params", back.p, s.p, ts) && same_bits("m", back.m, s.m, ts) && same_bits("v", back.v, s.v, ts),
          "write_state then read_state does not return the state");
    StepOut p3 = train_step(plain, in3, tg3, B, T, 7, 1, h, 1.0f);
    StepOut z3 = train_step(zero, in3, tg3, B, T, 7, 1, h, 1.0f);
    compare_steps("step 8 after write_state (overlapped)", z3, p3, ts);
    check_against_host("step 8", z3, s, ts, h, 8);
    plain->destroy(plain);
    zero->destroy(zero);
}

/* The hook wiring: on the last micro-batch every bucket's reduce-scatter is queued from inside
 * the backward; on other micro-batches none is. */
static void test_overlap(const gpt_config_t *cfg, int B, int T) {
    printf("reduce-scatter queued during the backward (grads_ready hook)\n");
    gpt_cuda_t *g = gpt_cuda_create(cfg, B, T);
    g->deterministic = 1;
    zero_cuda_t *z = zero_cuda_create(g, &kSingle);
    std::vector<int32_t> in((size_t)B * T), tg((size_t)B * T);
    for (size_t i = 0; i < in.size(); i++) {
        in[i] = (int32_t)(rng_u64(kKey ^ 6, i) % (uint64_t)cfg->vocab_size);
        tg[i] = (int32_t)(rng_u64(kKey ^ 7, i) % (uint64_t)cfg->vocab_size);
    }
    zero_cuda_zero_grad(z);
    gpt_cuda_forward(g, in.data(), tg.data(), B, T, 0, 0);
    zero_cuda_backward(z, 0.5f, 0);
    const int first = zero_cuda_overlapped_buckets(z);
    gpt_cuda_forward(g, in.data(), tg.data(), B, T, 0, 1);
    zero_cuda_backward(z, 0.5f, 1);
    const int last = zero_cuda_overlapped_buckets(z), nb = zero_cuda_layout(z)->n_buckets;
    printf("  buckets queued inside the backward: micro-batch 0: %d, last micro-batch: %d of %d\n", first, last, nb);
    CHECK(first == 0 && last == nb, "overlap: %d and %d buckets queued during the backwards (expected 0 and %d)",
          first, last, nb);
    const double norm = zero_cuda_grad_norm(z);
    CHECK(isfinite(norm) && norm > 0, "grad norm %g after the overlapped reduce", norm);
    zero_cuda_free(z);
    gpt_cuda_free(g);
}

int main(void) {
    test_layouts();
    test_refuse_too_many_ranks(); /* before this process initialises CUDA */
    const gpt_config_t a = small_config(3, 2, 128, 997, 1008, 96, 1);
    test_world1_equals_plain("3 layers, biases", &a, 2, 77);
    const gpt_config_t b = small_config(2, 1, 64, 501, 504, 64, 0);
    test_world1_equals_plain("2 layers, no biases, head dim 64", &b, 3, 45);
    test_overlap(&a, 2, 77);
    return test_summary();
}
