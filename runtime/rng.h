/* Counter-based random numbers: every draw is a pure function of (key, counter).
 *
 * Nothing is stored between draws, so the CPU and the GPU (this header compiles under nvcc
 * too), forward and backward, every rank and a resumed run all get the same numbers as long
 * as they agree on the key. A key is derived from the run seed plus whatever identifies the
 * use: rng_key(seed, domain, a, b, c), e.g. attention masks use
 * (seed, RNG_DOMAIN_ATTN, step, layer, micro_step).
 *
 * The mixer is splitmix64's finaliser applied to key + counter * golden ratio: cheap, passes
 * BigCrush for sequential counters, and uses only integer ops (bit-identical on CPU and GPU).
 */
#ifndef RUNTIME_RNG_H
#define RUNTIME_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define RNG_HD __host__ __device__ __forceinline__
#else
#define RNG_HD static inline
#endif

enum {
    RNG_DOMAIN_INIT = 1,   /* parameter initialisation: a = tensor index */
    RNG_DOMAIN_ATTN = 2,   /* attention plan: a = step, b = layer, c = micro_step */
    RNG_DOMAIN_DATA = 3,   /* data order: a = epoch, b = rank */
    RNG_DOMAIN_SAMPLE = 4, /* text sampling: a = step */
};

RNG_HD uint64_t rng_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Derive a key from the seed and up to four identifying integers. */
RNG_HD uint64_t rng_key(uint64_t seed, uint64_t domain, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t k = rng_mix64(seed ^ 0x5851f42d4c957f2dULL);
    k = rng_mix64(k ^ (domain + 0x9e3779b97f4a7c15ULL));
    k = rng_mix64(k ^ (a + 0x2545f4914f6cdd1dULL));
    k = rng_mix64(k ^ (b + 0x14057b7ef767814fULL));
    k = rng_mix64(k ^ (c + 0x3c6ef372fe94f82bULL));
    return k;
}

/* 64 random bits for draw number `counter` under `key`. */
RNG_HD uint64_t rng_u64(uint64_t key, uint64_t counter) {
    return rng_mix64(key + (counter + 1) * 0x9e3779b97f4a7c15ULL);
}

/* 24 random bits: the unit of every uniform and Bernoulli draw (exact in float). */
RNG_HD uint32_t rng_u24(uint64_t key, uint64_t counter) {
    return (uint32_t)(rng_u64(key, counter) >> 40);
}

/* Uniform in [0, 1), multiples of 2^-24. */
RNG_HD float rng_uniform(uint64_t key, uint64_t counter) {
    return (float)rng_u24(key, counter) * (1.0f / 16777216.0f);
}

/* Bernoulli threshold for a drop probability p in [0, 1]: a row is dropped iff
 * rng_u24(key, counter) < rng_drop_threshold(p). Integer compare, so CPU and GPU agree. */
RNG_HD uint32_t rng_drop_threshold(double p) {
    if (p <= 0.0) return 0;
    if (p >= 1.0) return 16777216u;
    return (uint32_t)(p * 16777216.0 + 0.5);
}

/* Standard normal draw (Box-Muller on two uniforms). Host-side use only in this project
 * (weights, hash rotations): transcendental functions differ in the last bit between CPU
 * and GPU, so GPU code receives such numbers from the host instead of drawing them. */
float rng_normal(uint64_t key, uint64_t counter);

#endif
