/* Token shards in llm.c's layout, so shards from either project work in both:
 *   header: 256 little-endian int32: [0] = 20240520 (magic), [1] = 1 (version),
 *           [2] = number of tokens, the rest 0
 *   body:   that many uint16 token ids
 * Documents inside a shard are each preceded by <|endoftext|> (as llm.c's data scripts do).
 * docs/FORMATS.md has the full description. */
#ifndef DATA_SHARD_H
#define DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)
#define SHARD_MAX_VOCAB 65536 /* ids are stored as uint16 */

/* Writes a shard atomically: to PATH.tmp.<pid>, flushed and fsync'ed, then renamed to PATH, so
 * a reader never sees a half-written shard. I/O errors are fatal(EXIT_RUNTIME) naming the file. */
void shard_write(const char *path, const uint16_t *tokens, size_t n_tokens);

/* A shard mapped read-only into memory. */
typedef struct {
    const uint16_t *tokens;
    size_t n_tokens;
    void *map;       /* the mapping (header included) */
    size_t map_size;
} shard_t;

/* Maps and checks a shard: header size, magic, version, token count against the file size, and
 * (if vocab_size > 0) that every id is < vocab_size. Any problem is fatal(EXIT_USAGE) naming
 * the file and what is wrong (and the position of a bad id). */
void shard_open(shard_t *, const char *path, int vocab_size);
void shard_close(shard_t *);

/* Cuts a stream of tokens into shards named DIR/PREFIX_SPLIT_NNNNNN.bin (NNNNNN from 000000).
 * Every shard holds shard_tokens tokens except the last, which holds between half and one and a
 * half times that (or everything, if the whole stream is shorter), so no shard is tiny. */
typedef struct {
    char path_format[4096];
    size_t shard_tokens;
    uint16_t *buf;
    size_t n, cap;
    int n_shards;
    uint64_t n_tokens;
} shard_writer_t;
void shard_writer_init(shard_writer_t *, const char *dir, const char *prefix, const char *split, size_t shard_tokens);
/* Appends ids (each must be in [0, 65536)). */
void shard_writer_add(shard_writer_t *, const int32_t *ids, size_t n);
/* Writes what is left and frees the buffer. */
void shard_writer_finish(shard_writer_t *);
#endif
