#include "data/loader.h"

#include <glob.h>
#include <string.h>

#include "data/shard.h"
#include "runtime/error.h"
#include "runtime/rng.h"

#define LOADER_STATE_TAG 0x4c4f414445523031ULL /* "LOADER01": layout of loader_state_t */

struct loader {
    int B, T, rank, world, shuffle;
    uint64_t seed;
    int n_shards;
    shard_t *shards;
    char **paths;
    uint64_t *first_window; /* [n_shards + 1]: global index of each shard's first window */
    uint64_t n_windows, n_tokens;
    uint64_t fingerprint; /* hash of the shard list's token counts */
    uint64_t batch;       /* batches this rank has taken: the whole position */
    uint32_t *perm;       /* window order of epoch perm_epoch (shuffle only) */
    uint64_t perm_epoch;
};

/* Fisher-Yates with counter-based draws: the order of an epoch is a pure function of
 * (seed, epoch), so every rank and every resumed run computes the same one. */
static void build_permutation(loader_t *l, uint64_t epoch) {
    uint64_t key = rng_key(l->seed, RNG_DOMAIN_DATA, epoch, 0, 0);
    for (uint64_t i = 0; i < l->n_windows; i++) l->perm[i] = (uint32_t)i;
    for (uint64_t i = l->n_windows - 1; i > 0; i--) {
        /* modulo bias is below 2^-32 for any window count that fits uint32 */
        uint64_t j = rng_u64(key, i) % (i + 1);
        uint32_t t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
    l->perm_epoch = epoch;
}

loader_t *loader_open(const char *pattern, int B, int T, int rank, int world, uint64_t seed, int shuffle, int vocab_size) {
    if (B < 1 || T < 1) fatal(EXIT_USAGE, "loader: batch size %d and sequence length %d must be >= 1", B, T);
    if (world < 1 || rank < 0 || rank >= world) fatal(EXIT_USAGE, "loader: rank %d is not in a world of %d", rank, world);
    if (vocab_size < 1 || vocab_size > SHARD_MAX_VOCAB)
        fatal(EXIT_USAGE, "loader: vocabulary size %d cannot be stored in uint16 shards", vocab_size);
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH) fatal(EXIT_USAGE, "no shard file matches %s", pattern);
    if (rc != 0) fatal(EXIT_USAGE, "cannot expand the shard pattern %s", pattern);
    loader_t *l = xcalloc(1, sizeof(*l), "loader");
    l->B = B;
    l->T = T;
    l->rank = rank;
    l->world = world;
    l->seed = seed;
    l->shuffle = shuffle != 0;
    l->n_shards = (int)g.gl_pathc;
    l->shards = xcalloc(g.gl_pathc, sizeof(shard_t), "shards");
    l->paths = xcalloc(g.gl_pathc, sizeof(char *), "shard paths");
    l->first_window = xcalloc(g.gl_pathc + 1, sizeof(uint64_t), "shard windows");
    l->fingerprint = rng_mix64(g.gl_pathc);
    for (int s = 0; s < l->n_shards; s++) {
        l->paths[s] = strdup(g.gl_pathv[s]);
        shard_open(&l->shards[s], l->paths[s], vocab_size);
        size_t n = l->shards[s].n_tokens;
        if (n < (size_t)T + 1)
            fatal(EXIT_USAGE, "shard %s has %zu tokens, fewer than seq_len + 1 = %d: it cannot hold one window", l->paths[s],
                  n, T + 1);
        l->first_window[s + 1] = l->first_window[s] + (n - 1) / (size_t)T;
        l->n_tokens += n;
        l->fingerprint = rng_mix64(l->fingerprint ^ (n + 0x9e3779b97f4a7c15ULL * (uint64_t)(s + 1)));
    }
    globfree(&g);
    l->n_windows = l->first_window[l->n_shards];
    if (l->n_windows > UINT32_MAX) fatal(EXIT_USAGE, "%s: more than 2^32 windows; use a longer sequence", pattern);
    if (l->shuffle) {
        l->perm = xmalloc(l->n_windows * sizeof(uint32_t), "window permutation");
        build_permutation(l, 0);
    }
    return l;
}

/* Global window index -> (shard, first token). */
static const uint16_t *window_tokens(const loader_t *l, uint64_t window) {
    int lo = 0, hi = l->n_shards - 1;
    while (lo < hi) { /* last shard whose first window <= window */
        int mid = (lo + hi + 1) / 2;
        if (l->first_window[mid] <= window) lo = mid;
        else hi = mid - 1;
    }
    return l->shards[lo].tokens + (window - l->first_window[lo]) * (uint64_t)l->T;
}

void loader_next(loader_t *l, int32_t *inputs, int32_t *targets) {
    const int T = l->T;
    for (int b = 0; b < l->B; b++) {
        uint64_t entry = (l->batch * (uint64_t)l->world + (uint64_t)l->rank) * (uint64_t)l->B + (uint64_t)b;
        uint64_t epoch = entry / l->n_windows, index = entry % l->n_windows;
        uint64_t window = index;
        if (l->shuffle) {
            if (epoch != l->perm_epoch) build_permutation(l, epoch);
            window = l->perm[index];
        }
        const uint16_t *w = window_tokens(l, window);
        for (int t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = w[t];
            targets[(size_t)b * T + t] = w[t + 1];
        }
    }
    l->batch++;
}

void loader_reset(loader_t *l) { l->batch = 0; }

/* words: [0] layout tag, [1] batches taken, [2] B, [3] T, [4] world, [5] seed, [6] shuffle,
 *        [7] shard fingerprint (count and token counts of the shards). */
loader_state_t loader_get_state(const loader_t *l) {
    loader_state_t s = {{LOADER_STATE_TAG, l->batch, (uint64_t)l->B, (uint64_t)l->T, (uint64_t)l->world, l->seed,
                         (uint64_t)l->shuffle, l->fingerprint}};
    return s;
}

void loader_set_state(loader_t *l, const loader_state_t *s) {
    const uint64_t *w = s->words;
    if (w[0] != LOADER_STATE_TAG) fatal(EXIT_USAGE, "saved data position is not a loader state (tag %#llx)", (unsigned long long)w[0]);
    const char *what = NULL;
    uint64_t saved = 0, now = 0;
    if (w[2] != (uint64_t)l->B) what = "micro-batch size", saved = w[2], now = (uint64_t)l->B;
    else if (w[3] != (uint64_t)l->T) what = "sequence length", saved = w[3], now = (uint64_t)l->T;
    else if (w[4] != (uint64_t)l->world) what = "world size", saved = w[4], now = (uint64_t)l->world;
    else if (w[5] != l->seed) what = "data seed", saved = w[5], now = l->seed;
    else if (w[6] != (uint64_t)l->shuffle) what = "shuffle flag", saved = w[6], now = (uint64_t)l->shuffle;
    if (what)
        fatal(EXIT_USAGE, "saved data position does not fit: it was saved with %s %llu, this run has %llu", what,
              (unsigned long long)saved, (unsigned long long)now);
    if (w[7] != l->fingerprint)
        fatal(EXIT_USAGE, "saved data position does not fit these shards (%d shards starting with %s): the shard files "
              "or their token counts differ from those of the saved run", l->n_shards, l->paths[0]);
    l->batch = w[1];
}

void loader_close(loader_t *l) {
    if (!l) return;
    for (int s = 0; s < l->n_shards; s++) {
        shard_close(&l->shards[s]);
        free(l->paths[s]);
    }
    free(l->shards);
    free(l->paths);
    free(l->first_window);
    free(l->perm);
    free(l);
}

uint64_t loader_windows_per_epoch(const loader_t *l) { return l->n_windows; }
uint64_t loader_tokens(const loader_t *l) { return l->n_tokens; }
uint64_t loader_epoch(const loader_t *l) {
    return (l->batch * (uint64_t)l->world + (uint64_t)l->rank) * (uint64_t)l->B / l->n_windows;
}
int loader_num_shards(const loader_t *l) { return l->n_shards; }
