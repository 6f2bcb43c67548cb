/* Minimal test harness. Each test binary calls CHECK for every assertion and ends with
 * `return test_summary();`, which prints "N passed, N failed" as the last line and returns
 * non-zero if anything failed. tests/run_cpu.sh sums the counts of all binaries. */
#ifndef TESTS_TEST_H
#define TESTS_TEST_H

#include <math.h>
#include <stdio.h>

static int test_passed_count, test_failed_count;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            test_passed_count++;                                           \
        } else {                                                           \
            test_failed_count++;                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* |a - b| <= atol + rtol * |b|, NaN never passes. */
static inline int test_close(double a, double b, double atol, double rtol) {
    if (isnan(a) || isnan(b)) return 0;
    return fabs(a - b) <= atol + rtol * fabs(b);
}

static inline int test_summary(void) {
    fflush(stderr);
    printf("%d passed, %d failed\n", test_passed_count, test_failed_count);
    return test_failed_count ? 1 : 0;
}

#endif
