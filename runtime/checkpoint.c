#include "runtime/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "runtime/error.h"

static const char MAGIC[8] = {'S', 'C', 'F', 'A', 'C', 'K', 'P', 'T'};
static const char END_MAGIC[8] = {'S', 'C', 'F', 'A', 'E', 'N', 'D', '\0'};
#define CKPT_VERSION 1u
#define HEADER_BYTES 120 /* up to and including config_len */

/* Writer that computes the CRC of everything it writes. */
typedef struct {
    FILE *f;
    const char *path;
    uLong crc;
} crc_writer_t;

static void put(crc_writer_t *w, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, w->f) != n)
        fatal(EXIT_RUNTIME, "writing checkpoint %s: %s", w->path, strerror(errno));
    /* zlib's crc32 takes uInt lengths: feed large arrays in pieces. */
    const unsigned char *b = p;
    while (n) {
        uInt piece = n > (1u << 30) ? (1u << 30) : (uInt)n;
        w->crc = crc32(w->crc, b, piece);
        b += piece;
        n -= piece;
    }
}

static void fsync_dir_of(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    int fd = open(dirname(tmp), O_RDONLY);
    if (fd >= 0) {
        fsync(fd); /* best effort: some filesystems refuse fsync on folders */
        close(fd);
    }
}

FILE *atomic_file_open(const char *path, char *tmp, size_t size) {
    snprintf(tmp, size, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) fatal(EXIT_RUNTIME, "cannot create %s: %s", tmp, strerror(errno));
    return f;
}

void atomic_file_commit(FILE *f, const char *tmp, const char *path) {
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        fatal(EXIT_RUNTIME, "flushing %s: %s", tmp, strerror(errno));
    if (fclose(f) != 0) fatal(EXIT_RUNTIME, "closing %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) fatal(EXIT_RUNTIME, "renaming %s to %s: %s", tmp, path, strerror(errno));
    fsync_dir_of(path);
}

void write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4200];
    FILE *f = atomic_file_open(path, tmp, sizeof tmp);
    if (len && fwrite(data, 1, len, f) != len) fatal(EXIT_RUNTIME, "writing %s: %s", tmp, strerror(errno));
    atomic_file_commit(f, tmp, path);
}

void ckpt_write(const char *path, const ckpt_meta_t *meta, const float *params, const float *m,
                const float *v) {
    char tmp[4200];
    crc_writer_t w = {atomic_file_open(path, tmp, sizeof tmp), tmp, crc32(0L, Z_NULL, 0)};
    uint32_t version = CKPT_VERSION, reserved = 0;
    uint64_t config_len = meta->config_json ? strlen(meta->config_json) : 0;
    put(&w, MAGIC, 8);
    put(&w, &version, 4);
    put(&w, &reserved, 4);
    put(&w, &meta->step, 8);
    put(&w, &meta->tokens, 8);
    put(&w, &meta->n_params, 8);
    put(&w, &meta->world_size, 8);
    put(&w, meta->loader_state, 8 * CKPT_LOADER_WORDS);
    put(&w, &config_len, 8);
    put(&w, meta->config_json, config_len);
    size_t n = (size_t)meta->n_params;
    put(&w, params, n * sizeof(float));
    put(&w, m, n * sizeof(float));
    put(&w, v, n * sizeof(float));
    uint64_t crc = w.crc;
    if (fwrite(&crc, 8, 1, w.f) != 1 || fwrite(END_MAGIC, 8, 1, w.f) != 1)
        fatal(EXIT_RUNTIME, "writing checkpoint %s: %s", tmp, strerror(errno));
    atomic_file_commit(w.f, tmp, path);
}

/* Reads the whole file, checks size, magic, version and CRC. Returns the buffer. */
static unsigned char *load_verified(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open checkpoint %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatal(EXIT_USAGE, "cannot stat checkpoint %s", path);
    size_t len = (size_t)st.st_size;
    if (len < HEADER_BYTES + 16) fatal(EXIT_USAGE, "checkpoint %s is truncated (%zu bytes)", path, len);
    unsigned char *buf = xmalloc(len, "checkpoint");
    if (fread(buf, 1, len, f) != len) fatal(EXIT_USAGE, "cannot read checkpoint %s", path);
    fclose(f);
    if (memcmp(buf, MAGIC, 8) != 0) fatal(EXIT_USAGE, "%s is not a checkpoint (bad magic)", path);
    uint32_t version;
    memcpy(&version, buf + 8, 4);
    if (version != CKPT_VERSION)
        fatal(EXIT_USAGE, "checkpoint %s has version %u, this build reads version %u", path, version, CKPT_VERSION);
    if (memcmp(buf + len - 8, END_MAGIC, 8) != 0)
        fatal(EXIT_USAGE, "checkpoint %s is truncated (no end marker)", path);
    uint64_t n_params, config_len;
    memcpy(&n_params, buf + 32, 8);
    memcpy(&config_len, buf + 112, 8);
    size_t expect = HEADER_BYTES + (size_t)config_len + 3 * (size_t)n_params * sizeof(float) + 16;
    if (config_len > len || n_params > len || expect != len)
        fatal(EXIT_USAGE, "checkpoint %s is truncated or corrupt (size %zu, header says %zu)", path, len, expect);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t off = 0; off < len - 16;) {
        uInt piece = (len - 16 - off) > (1u << 30) ? (1u << 30) : (uInt)(len - 16 - off);
        crc = crc32(crc, buf + off, piece);
        off += piece;
    }
    uint64_t stored;
    memcpy(&stored, buf + len - 16, 8);
    if (stored != (uint64_t)crc) fatal(EXIT_USAGE, "checkpoint %s is corrupt (CRC mismatch)", path);
    *len_out = len;
    return buf;
}

static void parse_meta(const unsigned char *buf, ckpt_meta_t *meta) {
    memcpy(&meta->step, buf + 16, 8);
    memcpy(&meta->tokens, buf + 24, 8);
    memcpy(&meta->n_params, buf + 32, 8);
    memcpy(&meta->world_size, buf + 40, 8);
    memcpy(meta->loader_state, buf + 48, 8 * CKPT_LOADER_WORDS);
    uint64_t config_len;
    memcpy(&config_len, buf + 112, 8);
    meta->config_json = xmalloc((size_t)config_len + 1, "checkpoint config");
    memcpy(meta->config_json, buf + HEADER_BYTES, (size_t)config_len);
    meta->config_json[config_len] = '\0';
}

void ckpt_read_meta(const char *path, ckpt_meta_t *meta) {
    size_t len;
    unsigned char *buf = load_verified(path, &len);
    parse_meta(buf, meta);
    free(buf);
}

void ckpt_read(const char *path, ckpt_meta_t *meta, size_t n_params, float *params, float *m, float *v) {
    size_t len;
    unsigned char *buf = load_verified(path, &len);
    parse_meta(buf, meta);
    if (meta->n_params != n_params)
        fatal(EXIT_USAGE, "checkpoint %s holds %llu parameters but the model has %zu (different model config?)",
              path, (unsigned long long)meta->n_params, n_params);
    uint64_t config_len;
    memcpy(&config_len, buf + 112, 8);
    const unsigned char *p = buf + HEADER_BYTES + config_len;
    size_t bytes = n_params * sizeof(float);
    memcpy(params, p, bytes);
    if (m) memcpy(m, p + bytes, bytes);
    if (v) memcpy(v, p + 2 * bytes, bytes);
    free(buf);
}

void ckpt_path(char *buf, size_t size, const char *dir, uint64_t step) {
    snprintf(buf, size, "%s/ckpt_%08llu.bin", dir, (unsigned long long)step);
}

/* Calls fn(step) for every DIR/ckpt_<digits>.bin. */
static int list_steps(const char *dir, long long *steps, int cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long s;
        char tail[8];
        if (strlen(e->d_name) != 17) continue; /* ckpt_ + 8 digits + .bin */
        if (sscanf(e->d_name, "ckpt_%8llu%4s", &s, tail) == 2 && strcmp(tail, ".bin") == 0 && n < cap)
            steps[n++] = (long long)s;
    }
    closedir(d);
    return n;
}

long long ckpt_latest_step(const char *dir) {
    long long steps[4096];
    int n = list_steps(dir, steps, 4096);
    long long best = -1;
    for (int i = 0; i < n; i++)
        if (steps[i] > best) best = steps[i];
    return best;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

void ckpt_prune(const char *dir, int keep) {
    long long steps[4096];
    int n = list_steps(dir, steps, 4096);
    qsort(steps, (size_t)n, sizeof steps[0], cmp_ll);
    for (int i = 0; i + keep < n; i++) {
        char path[4200];
        ckpt_path(path, sizeof path, dir, (uint64_t)steps[i]);
        if (unlink(path) != 0) fprintf(stderr, "warning: cannot delete old checkpoint %s: %s\n", path, strerror(errno));
    }
}
