/* Helpers shared by the GPU test programs (and bench/plan): a checked CUDA call for test code (exits through
 * runtime/error's fatal, naming the file and line), bf16 <-> float on the host, and the small
 * dense GPT configuration the step tests start from. */
#ifndef TESTS_GPU_GPU_TEST_UTIL_CUH
#define TESTS_GPU_GPU_TEST_UTIL_CUH

#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

#include "model/cuda/backend_cuda.h" /* gpt_config_t (extern "C" inside) */
extern "C" {
#include "runtime/error.h"
}

#define CUDA_OK(call)                                                                        \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess)                                                             \
            fatal(EXIT_RUNTIME, "%s:%d: %s: %s", __FILE__, __LINE__, #call,                  \
                  cudaGetErrorString(err_));                                                 \
    } while (0)

static inline float bf16_to_float(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* Dense attention, one bucket, no shared QK or exclude_self: callers change what they test. */
static inline gpt_config_t small_gpt_config(int n_layer, int n_head, int n_embd, int vocab,
                                            int padded, int seq_len, int bias, uint64_t seed) {
    gpt_config_t c;
    memset(&c, 0, sizeof c);
    c.n_layer = n_layer;
    c.n_head = n_head;
    c.n_embd = n_embd;
    c.vocab_size = vocab;
    c.padded_vocab = padded;
    c.seq_len = seq_len;
    c.bias = bias;
    c.attn.mode = ATTN_DENSE;
    c.attn.n_buckets = 1;
    c.seed = seed;
    return c;
}

#endif
