#include "runtime/runlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/checkpoint.h"
#include "runtime/error.h"

void runlog_create(runlog_t *log, const char *dir) {
    snprintf(log->path, sizeof log->path, "%s/log.jsonl", dir);
    log->last_elapsed_s = 0;
    if (access(log->path, F_OK) == 0)
        fatal(EXIT_USAGE, "%s already exists: use --resume %s or another --out", log->path, dir);
    log->f = fopen(log->path, "w");
    if (!log->f) fatal(EXIT_USAGE, "cannot create %s: %s", log->path, strerror(errno));
}

void runlog_resume(runlog_t *log, const char *dir, long long step) {
    snprintf(log->path, sizeof log->path, "%s/log.jsonl", dir);
    log->last_elapsed_s = 0;
    FILE *in = fopen(log->path, "r");
    if (!in) fatal(EXIT_USAGE, "cannot open %s to resume: %s", log->path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *kept = xmalloc(cap, "log");
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t n;
    while ((n = getline(&line, &line_cap, in)) > 0) {
        cJSON *obj = cJSON_Parse(line);
        if (!obj) break; /* a line cut by a crash ends the usable log */
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, "step");
        int keep = !cJSON_IsNumber(s) || s->valuedouble <= (double)step;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
        const cJSON *el = cJSON_GetObjectItemCaseSensitive(obj, "elapsed_s");
        if (keep && cJSON_IsString(type) && strcmp(type->valuestring, "step") == 0 && cJSON_IsNumber(el))
            log->last_elapsed_s = el->valuedouble;
        cJSON_Delete(obj);
        if (!keep) continue;
        if (len + (size_t)n + 1 > cap) {
            while (len + (size_t)n + 1 > cap) cap *= 2;
            kept = realloc(kept, cap);
            if (!kept) fatal(EXIT_RUNTIME, "out of memory reading %s", log->path);
        }
        memcpy(kept + len, line, (size_t)n);
        len += (size_t)n;
        if (kept[len - 1] != '\n') kept[len++] = '\n';
    }
    free(line);
    fclose(in);
    write_file_atomic(log->path, kept, len);
    free(kept);
    log->f = fopen(log->path, "a");
    if (!log->f) fatal(EXIT_USAGE, "cannot append to %s: %s", log->path, strerror(errno));
}

void runlog_write(runlog_t *log, cJSON *obj) {
    char *text = cJSON_PrintUnformatted(obj);
    if (!text) fatal(EXIT_RUNTIME, "out of memory formatting a log line");
    if (fprintf(log->f, "%s\n", text) < 0 || fflush(log->f) != 0)
        fatal(EXIT_RUNTIME, "writing %s: %s", log->path, strerror(errno));
    free(text);
    cJSON_Delete(obj);
}

void runlog_close(runlog_t *log) {
    if (log->f) fclose(log->f);
    log->f = NULL;
}
