#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/error.h"

static void write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fatal(EXIT_RUNTIME, "cannot write %s: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

void shard_write(const char *path, const uint16_t *tokens, size_t n_tokens) {
    if (n_tokens > INT32_MAX) fatal(EXIT_RUNTIME, "%s: %zu tokens do not fit a shard header (int32 count)", path, n_tokens);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fatal(EXIT_RUNTIME, "cannot create %s: %s", tmp, strerror(errno));
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)n_tokens};
    write_all(fd, header, sizeof header, tmp);
    write_all(fd, tokens, n_tokens * sizeof(uint16_t), tmp);
    if (fsync(fd) != 0) fatal(EXIT_RUNTIME, "cannot flush %s: %s", tmp, strerror(errno));
    if (close(fd) != 0) fatal(EXIT_RUNTIME, "cannot close %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) fatal(EXIT_RUNTIME, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
}

void shard_open(shard_t *s, const char *path, int vocab_size) {
    memset(s, 0, sizeof(*s));
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatal(EXIT_USAGE, "cannot open shard %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatal(EXIT_USAGE, "cannot stat shard %s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    if (size < SHARD_HEADER_BYTES)
        fatal(EXIT_USAGE, "shard %s: %zu bytes, shorter than the %d-byte header (corrupt or not a shard)", path, size,
              SHARD_HEADER_BYTES);
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) fatal(EXIT_USAGE, "cannot map shard %s: %s", path, strerror(errno));
    const int32_t *header = map;
    if (header[0] != SHARD_MAGIC)
        fatal(EXIT_USAGE, "shard %s: wrong magic %d (expected %d): not a token shard", path, header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        fatal(EXIT_USAGE, "shard %s: version %d, only version %d is supported", path, header[1], SHARD_VERSION);
    if (header[2] < 0 || (size_t)header[2] * 2 + SHARD_HEADER_BYTES != size)
        fatal(EXIT_USAGE, "shard %s: header says %d tokens but the file has room for %.1f (truncated or corrupt)", path,
              header[2], (double)(size - SHARD_HEADER_BYTES) / 2);
    s->map = map;
    s->map_size = size;
    s->n_tokens = (size_t)header[2];
    s->tokens = (const uint16_t *)((const char *)map + SHARD_HEADER_BYTES);
    if (vocab_size > 0 && vocab_size < SHARD_MAX_VOCAB) {
        uint16_t limit = (uint16_t)vocab_size, worst = 0;
        for (size_t i = 0; i < s->n_tokens; i++) worst = s->tokens[i] > worst ? s->tokens[i] : worst;
        if (worst >= limit) { /* rare: find the first offender for the message */
            size_t i = 0;
            while (s->tokens[i] < limit) i++;
            fatal(EXIT_USAGE, "shard %s: token id %u at position %zu is >= the vocabulary size %d", path,
                  (unsigned)s->tokens[i], i, vocab_size);
        }
    }
}

void shard_close(shard_t *s) {
    if (s->map) munmap(s->map, s->map_size);
    memset(s, 0, sizeof(*s));
}

void shard_writer_init(shard_writer_t *w, const char *dir, const char *prefix, const char *split, size_t shard_tokens) {
    memset(w, 0, sizeof(*w));
    if (shard_tokens < 1) fatal(EXIT_USAGE, "shard size must be at least one token");
    int n = snprintf(w->path_format, sizeof w->path_format, "%s/%s_%s_%%06d.bin", dir, prefix, split);
    if (n < 0 || (size_t)n >= sizeof w->path_format) fatal(EXIT_USAGE, "output path %s/%s is too long", dir, prefix);
    if (strchr(prefix, '%') || strchr(dir, '%')) fatal(EXIT_USAGE, "output directory and prefix must not contain '%%'");
    w->shard_tokens = shard_tokens;
}

static void write_next_shard(shard_writer_t *w, size_t n) {
    char path[4200];
    snprintf(path, sizeof path, w->path_format, w->n_shards);
    shard_write(path, w->buf, n);
    memmove(w->buf, w->buf + n, (w->n - n) * sizeof(uint16_t));
    w->n -= n;
    w->n_shards++;
}

void shard_writer_add(shard_writer_t *w, const int32_t *ids, size_t n) {
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 1 << 20;
        while (cap < w->n + n) cap *= 2;
        w->buf = realloc(w->buf, cap * sizeof(uint16_t));
        if (!w->buf) fatal(EXIT_RUNTIME, "out of memory buffering %zu tokens", cap);
        w->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= SHARD_MAX_VOCAB) fatal(EXIT_RUNTIME, "token id %d does not fit a uint16 shard", ids[i]);
        w->buf[w->n++] = (uint16_t)ids[i];
    }
    w->n_tokens += n;
    /* Holding back half a shard lets the last shard absorb a short remainder. */
    while (w->n >= w->shard_tokens + w->shard_tokens / 2) write_next_shard(w, w->shard_tokens);
}

void shard_writer_finish(shard_writer_t *w) {
    /* add() leaves less than 1.5 shards, and at least 0.5 once a shard has been written. */
    if (w->n > 0) write_next_shard(w, w->n);
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
}
