/* Distributed, resumable batches of token windows from shards (data/shard.h).
 *
 * The shards matching a glob (sorted by name) are cut into windows of T+1 tokens: window w of a
 * shard holds its tokens [w*T, w*T + T], so consecutive windows share one token (the last
 * target of one window is the first input of the next) and a shard of n tokens has
 * floor((n-1)/T) windows; windows never span two shards but may span documents (documents are
 * separated by <|endoftext|>). One epoch visits every window once: in shard order (shuffle = 0)
 * or in a permutation drawn from the counter-based RNG with key (seed, RNG_DOMAIN_DATA, epoch, 0)
 * (shuffle = 1), the same on every rank. The windows of all epochs form one stream; batch k of
 * rank r is stream entries [(k*world + r)*B, (k*world + r + 1)*B), so in every step the ranks
 * take disjoint windows, and within an epoch no window is seen twice by any rank.
 *
 * The whole position is the batch counter k: loader_state_t holds it with what it depends on,
 * so a resumed run (same shards, B, T, world, seed, shuffle) gets exactly the same batches.
 * docs/FORMATS.md lists the words of the state. */
#ifndef DATA_LOADER_H
#define DATA_LOADER_H

#include <stddef.h>
#include <stdint.h>

/* Plain integers, saved raw in checkpoints (see docs/FORMATS.md "Loader state"). */
typedef struct {
    uint64_t words[8];
} loader_state_t;

typedef struct loader loader_t;

/* pattern: glob of shard files; B x (T+1) windows; rank/world: this process's slice; seed:
 * shuffle seed; shuffle = 0 for the fixed validation set (always the same first batches);
 * vocab_size: ids >= it are an error naming the file. Problems with the shards (none match,
 * corrupt header, wrong magic, bad id, fewer than T+1 tokens) and bad arguments are
 * fatal(EXIT_USAGE) with a message naming the file or argument. */
loader_t *loader_open(const char *pattern, int B, int T, int rank, int world, uint64_t seed, int shuffle, int vocab_size);
/* Fills the next batch: inputs[b*T + t] = window token t, targets[b*T + t] = window token t+1. */
void loader_next(loader_t *, int32_t *inputs /*B*T*/, int32_t *targets /*B*T*/);
void loader_reset(loader_t *); /* back to the start (used for validation passes) */
loader_state_t loader_get_state(const loader_t *);
/* Restores a position; fatal(EXIT_USAGE) naming what differs if the state was saved with other
 * shards, B, T, world, seed or shuffle. */
void loader_set_state(loader_t *, const loader_state_t *);
void loader_close(loader_t *);

/* For logging and for choosing how many validation batches exist. */
uint64_t loader_windows_per_epoch(const loader_t *); /* windows in all shards together */
uint64_t loader_tokens(const loader_t *);            /* tokens in all shards together */
uint64_t loader_epoch(const loader_t *);             /* epoch of the next window this rank reads */
int loader_num_shards(const loader_t *);

#endif
