/* DIR/log.jsonl: one JSON object per line (header, step, eval, sample), flushed as written so a
 * crash loses nothing already logged. Layout: docs/FORMATS.md. */
#ifndef RUNTIME_RUNLOG_H
#define RUNTIME_RUNLOG_H

#include <cjson/cJSON.h>
#include <stdio.h>

typedef struct {
    FILE *f;
    char path[4200];
    double last_elapsed_s; /* elapsed_s of the last kept step line (resume continues the clock) */
} runlog_t;

/* New log: creates DIR/log.jsonl (fails if it exists). */
void runlog_create(runlog_t *log, const char *dir);
/* Resume: keeps the header and every line with "step" <= step (lines written after the
 * checkpoint are dropped, as the resumed run writes them again), then appends. */
void runlog_resume(runlog_t *log, const char *dir, long long step);
/* Writes obj as one line and flushes; takes ownership of obj. */
void runlog_write(runlog_t *log, cJSON *obj);
void runlog_close(runlog_t *log);

#endif
