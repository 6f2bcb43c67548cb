/* Error helpers shared by every part of the program.
 * Bad user input (config, files, command line) exits with status 2; internal failures
 * (CUDA, I/O during a run, NaN loss) exit with status 1. Messages always name the
 * file, key or call that failed so the user can act on them. */
#ifndef RUNTIME_ERROR_H
#define RUNTIME_ERROR_H

#include <stdio.h>
#include <stdlib.h>

#define EXIT_USAGE 2   /* bad config, bad command line, missing/corrupt input file */
#define EXIT_RUNTIME 1 /* failure during a run */

/* Print "error: <msg>" to stderr and exit with `code`. */
void fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

/* Prefixes later messages with `context` (e.g. "rank 3") and calls on_fatal(code) instead of
 * exit(code) (e.g. MPI_Abort, so that every rank stops). on_fatal may be NULL. */
void fatal_set_context(const char *context, void (*on_fatal)(int code));

/* malloc/calloc that never return NULL: they die with a message naming `what`. */
void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t count, size_t size, const char *what);

#endif
