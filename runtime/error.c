#include "runtime/error.h"

#include <stdarg.h>

static char g_context[64];
static void (*g_on_fatal)(int code);

void fatal_set_context(const char *context, void (*on_fatal)(int code)) {
    snprintf(g_context, sizeof g_context, "%s", context ? context : "");
    g_on_fatal = on_fatal;
}

void fatal(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    if (g_context[0]) fprintf(stderr, "error (%s): ", g_context);
    else fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
    if (g_on_fatal) g_on_fatal(code);
    exit(code);
}

void *xmalloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    if (!p) fatal(EXIT_RUNTIME, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *xcalloc(size_t count, size_t size, const char *what) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal(EXIT_RUNTIME, "out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}
