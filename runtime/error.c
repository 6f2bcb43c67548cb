#include "runtime/error.h"

#include <stdarg.h>

void fatal(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
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
