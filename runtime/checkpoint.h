/* Checkpoints: parameters, AdamW moments, step, data position and the resolved config in one
 * file, CRC-32 checked, written atomically (temp file, fsync, rename, fsync of the folder).
 * Byte layout: docs/FORMATS.md. Files are DIR/ckpt_<step, 8 digits>.bin; the last N are kept. */
#ifndef RUNTIME_CHECKPOINT_H
#define RUNTIME_CHECKPOINT_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define CKPT_LOADER_WORDS 8

typedef struct {
    uint64_t step;       /* optimizer steps completed */
    uint64_t tokens;     /* training tokens consumed */
    uint64_t n_params;
    uint64_t world_size; /* ranks of the run that wrote it (informational) */
    uint64_t loader_state[CKPT_LOADER_WORDS];
    char *config_json;   /* resolved config (malloc'd when read) */
} ckpt_meta_t;

/* Writes atomically; exits 1 naming the path on any I/O error (the old file stays intact). */
void ckpt_write(const char *path, const ckpt_meta_t *meta, const float *params, const float *m,
                const float *v);

/* Reads and verifies a checkpoint written for n_params parameters (exits 2 naming the path if it
 * is missing, truncated, corrupt, or of another size). m and v may be NULL (not read). */
void ckpt_read(const char *path, ckpt_meta_t *meta, size_t n_params, float *params, float *m, float *v);

/* Reads only the header of a checkpoint (for n_params and config) after verifying the file. */
void ckpt_read_meta(const char *path, ckpt_meta_t *meta);

/* Path of DIR/ckpt_<step>.bin in buf. */
void ckpt_path(char *buf, size_t size, const char *dir, uint64_t step);
/* Largest-step checkpoint in dir, or -1 when there is none. */
long long ckpt_latest_step(const char *dir);
/* Deletes all but the `keep` largest-step checkpoints of dir. */
void ckpt_prune(const char *dir, int keep);

/* Streaming form of the same: atomic_file_open creates PATH.tmp.<pid> (its name in tmp) for
 * writing; atomic_file_commit flushes, fsyncs and renames it over PATH. Both exit 1 on error. */
FILE *atomic_file_open(const char *path, char *tmp, size_t tmp_size);
void atomic_file_commit(FILE *f, const char *tmp, const char *path);

/* Atomically replaces `path` with `len` bytes of `data` (temp file + fsync + rename). */
void write_file_atomic(const char *path, const void *data, size_t len);

#endif
