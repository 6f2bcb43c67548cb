#include "runtime/rng.h"

#include <math.h>

float rng_normal(uint64_t key, uint64_t counter) {
    /* u1 in (0, 1] so log never sees 0. */
    double u1 = ((double)rng_u24(key, 2 * counter) + 1.0) / 16777216.0;
    double u2 = (double)rng_u24(key, 2 * counter + 1) / 16777216.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
