/* Element-wise and gather/scatter ops of the CUDA backend: encoder (with the deterministic
 * token-grouped backward), GELU, residual, bias gradients, AdamW, the gradient norm and dtype
 * conversions. All are memory-bound; none uses floating-point atomics. */
#include "model/cuda/ops_cuda.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace {

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi), as in model/cpu/ops_cpu.c */
#define GELU_CUBIC 0.044715f

/* Grid-stride launches are capped so huge n never overflows the grid. */
unsigned elementwise_blocks(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

__global__ void encoder_forward_kernel(bf16 *__restrict__ out, const int32_t *__restrict__ tokens,
                                       const bf16 *__restrict__ wte,
                                       const bf16 *__restrict__ wpe, int N, int T, int C) {
    const int vecs = C / 8;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * vecs) return;
    const size_t n = i / vecs, c0 = (i % vecs) * 8;
    float a[8], b[8];
    load8(a, wte + (size_t)tokens[n] * C + c0);
    load8(b, wpe + (size_t)(n % T) * C + c0);
#pragma unroll
    for (int j = 0; j < 8; j++) a[j] += b[j];
    store8(out + n * C + c0, a);
}

/* One thread per (distinct token, channel): adds the token's positions in position order. */
__global__ void encoder_backward_wte_kernel(float *__restrict__ dwte, const bf16 *__restrict__ dout,
                                            const int32_t *__restrict__ order,
                                            const int32_t *__restrict__ token,
                                            const int32_t *__restrict__ start, int C) {
    const int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    /* Unrolled so that frequent tokens (thousands of positions) keep many loads in flight;
     * the additions stay in position order. */
#pragma unroll 8
    for (int k = start[u]; k < start[u + 1]; k++)
        s += __bfloat162float(dout[(size_t)order[k] * C + c]);
    dwte[(size_t)token[u] * C + c] += s;
}

/* One thread per (position t, channel): adds over the batch in batch order. */
__global__ void encoder_backward_wpe_kernel(float *__restrict__ dwpe, const bf16 *__restrict__ dout,
                                            int B, int T, int C) {
    const int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int b = 0; b < B; b++) s += __bfloat162float(dout[((size_t)b * T + t) * C + c]);
    dwpe[(size_t)t * C + c] += s;
}

__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x)));
}

/* 8 elements (one 16-byte vector) per thread; gelu_forward_cuda takes the scalar tail. */
__global__ void gelu_forward_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ inp, size_t nvec) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nvec;
         i += (size_t)gridDim.x * blockDim.x) {
        float f[8];
        load8(f, inp + i * 8);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = gelu_tanh(f[j]);
        store8(out + i * 8, f);
    }
}

__global__ void gelu_forward_tail_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ inp,
                                         size_t lo, size_t n) {
    const size_t i = lo + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(gelu_tanh(__bfloat162float(inp[i])));
}

__global__ void residual_forward_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ a,
                                        const bf16 *__restrict__ b, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

/* Column sums of dout [N][OC]: block (x, y) sums columns x*256.. over row chunk y into
 * scratch[y][OC]; bias_reduce_kernel adds the chunks in order. */
constexpr int kBiasRowsPerChunk = 256;

int bias_chunks(int N) { return (N + kBiasRowsPerChunk - 1) / kBiasRowsPerChunk; }

__global__ void bias_partial_kernel(float *__restrict__ scratch, const bf16 *__restrict__ dout,
                                    int N, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    const int lo = blockIdx.y * kBiasRowsPerChunk;
    const int hi = lo + kBiasRowsPerChunk < N ? lo + kBiasRowsPerChunk : N;
    float s = 0.0f;
    for (int r = lo; r < hi; r++) s += __bfloat162float(dout[(size_t)r * OC + c]);
    scratch[(size_t)blockIdx.y * OC + c] = s;
}

__global__ void bias_reduce_kernel(float *__restrict__ dbias, const float *__restrict__ scratch,
                                   int chunks, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; k++) s += scratch[(size_t)k * OC + c];
    dbias[c] += s;
}

/* One parameter's AdamW update; both kernels below use it, so they give the same bits. */
__device__ __forceinline__ float adamw_one(float p, float g_raw, float &m, float &v, float lr, float b1,
                                           float b2, float bc1, float bc2, float eps, float wd,
                                           float grad_scale) {
    const float g = grad_scale * g_raw;
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    const float mhat = m / bc1, vhat = v / bc2;
    return p - lr * (mhat / (sqrtf(vhat) + eps) + wd * p);
}

__global__ void adamw_kernel(float *__restrict__ params, bf16 *__restrict__ params_bf16,
                             const float *__restrict__ grads, float *__restrict__ m,
                             float *__restrict__ v, size_t n, float lr, float b1, float b2,
                             float bc1, float bc2, float eps, float wd, float grad_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float mi = m[i], vi = v[i];
        const float p = adamw_one(params[i], grads[i], mi, vi, lr, b1, b2, bc1, bc2, eps, wd, grad_scale);
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        params_bf16[i] = __float2bfloat16(p);
    }
}

/* Four parameters a thread in 16-byte accesses: the update moves ~30 bytes a parameter and is
 * bound by memory, and one 4-byte load per array and thread kept too few bytes in flight
 * (1.16 ms a step for GPT-2 small's 124M parameters on an H200, 3.2 TB/s). */
__global__ void adamw_vec4_kernel(float4 *__restrict__ params, uint2 *__restrict__ params_bf16,
                                  const float4 *__restrict__ grads, float4 *__restrict__ m,
                                  float4 *__restrict__ v, size_t n4, float lr, float b1, float b2,
                                  float bc1, float bc2, float eps, float wd, float grad_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        float4 p = params[i], mi = m[i], vi = v[i];
        const float4 g = grads[i];
        p.x = adamw_one(p.x, g.x, mi.x, vi.x, lr, b1, b2, bc1, bc2, eps, wd, grad_scale);
        p.y = adamw_one(p.y, g.y, mi.y, vi.y, lr, b1, b2, bc1, bc2, eps, wd, grad_scale);
        p.z = adamw_one(p.z, g.z, mi.z, vi.z, lr, b1, b2, bc1, bc2, eps, wd, grad_scale);
        p.w = adamw_one(p.w, g.w, mi.w, vi.w, lr, b1, b2, bc1, bc2, eps, wd, grad_scale);
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        const __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y), hi = __floats2bfloat162_rn(p.z, p.w);
        params_bf16[i] = make_uint2(*reinterpret_cast<const uint32_t *>(&lo), *reinterpret_cast<const uint32_t *>(&hi));
    }
}

__global__ void sumsq_partial_kernel(double *__restrict__ partial, const float *__restrict__ g,
                                     size_t n) {
    __shared__ double red[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += (double)g[i] * (double)g[i];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) t += red[w];
        partial[blockIdx.x] = t;
    }
}

__global__ void sum_partials_kernel(double *__restrict__ partial, int count) {
    double t = 0.0;
    for (int i = 0; i < count; i++) t += partial[i];
    partial[0] = t;
}

__global__ void float_to_bf16_kernel(bf16 *__restrict__ dst, const float *__restrict__ src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

__global__ void bf16_to_float_kernel(float *__restrict__ dst, const bf16 *__restrict__ src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

__global__ void scale_bf16_kernel(bf16 *__restrict__ x, float s, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) * s);
}

__global__ void axpy_kernel(float *__restrict__ y, float s, const float *__restrict__ x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += s * x[i];
}

} // namespace

void encoder_forward_cuda(bf16 *out, const int32_t *tokens, const bf16 *wte, const bf16 *wpe,
                          int B, int T, int C, cudaStream_t stream) {
    if (C % 8 != 0) fatal(EXIT_RUNTIME, "encoder_forward_cuda: C = %d is not a multiple of 8", C);
    const size_t work = (size_t)B * T * (C / 8);
    if (work == 0) return;
    encoder_forward_kernel<<<ceil_div_u(work, 256), 256, 0, stream>>>(out, tokens, wte, wpe, B * T,
                                                                     T, C);
    KERNEL_CHECK("encoder_forward_kernel");
}

void encoder_groups_init(encoder_groups_t *g, int max_n, int vocab) {
    memset(g, 0, sizeof *g);
    g->capacity_n = max_n;
    g->vocab = vocab;
    const size_t ints = 3 * (size_t)max_n + 1;
    CUDA_CHECK(cudaMallocHost((void **)&g->host, ints * sizeof(int32_t)));
    CUDA_CHECK(cudaMalloc((void **)&g->order, ints * sizeof(int32_t)));
    g->token = g->order + max_n;
    g->start = g->token + max_n;
    g->count_host = (int32_t *)xcalloc((size_t)vocab + 1, sizeof(int32_t), "encoder groups");
}

void encoder_groups_free(encoder_groups_t *g) {
    if (g->host) CUDA_CHECK(cudaFreeHost(g->host));
    if (g->order) CUDA_CHECK(cudaFree(g->order));
    free(g->count_host);
    memset(g, 0, sizeof *g);
}

void encoder_groups_build(encoder_groups_t *g, const int32_t *tokens, int N, cudaStream_t stream) {
    if (N > g->capacity_n)
        fatal(EXIT_RUNTIME, "encoder_groups_build: %d positions exceed the capacity %d", N,
              g->capacity_n);
    int32_t *order = g->host, *token = order + N, *start = token + N, *count = g->count_host;
    memset(count, 0, ((size_t)g->vocab + 1) * sizeof(int32_t));
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= g->vocab)
            fatal(EXIT_RUNTIME, "encoder_groups_build: token %d at position %d is outside [0, %d)",
                  tokens[n], n, g->vocab);
        count[tokens[n] + 1]++;
    }
    int u = 0;
    for (int v = 0; v < g->vocab; v++) {
        if (count[v + 1]) {
            token[u] = v;
            start[u] = count[v];
            u++;
        }
        count[v + 1] += count[v]; /* count[v] = first slot of token v */
    }
    start[u] = N;
    for (int n = 0; n < N; n++) order[count[tokens[n]]++] = n; /* stable: positions ascending */
    g->n_unique = u;
    /* order, token and start sit back to back in `host`: three small copies. */
    CUDA_CHECK(cudaMemcpyAsync(g->order, order, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(g->token, token, (size_t)u * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(g->start, start, ((size_t)u + 1) * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
}

void encoder_backward_cuda(float *dwte, float *dwpe, const bf16 *dout, const encoder_groups_t *g,
                           int B, int T, int C, cudaStream_t stream) {
    if (g->n_unique > 0) {
        dim3 grid_wte((unsigned)g->n_unique, ceil_div_u((size_t)C, 128));
        encoder_backward_wte_kernel<<<grid_wte, 128, 0, stream>>>(dwte, dout, g->order, g->token,
                                                                  g->start, C);
        KERNEL_CHECK("encoder_backward_wte_kernel");
    }
    if (B * T > 0) {
        dim3 grid_wpe((unsigned)T, ceil_div_u((size_t)C, 128));
        encoder_backward_wpe_kernel<<<grid_wpe, 128, 0, stream>>>(dwpe, dout, B, T, C);
        KERNEL_CHECK("encoder_backward_wpe_kernel");
    }
}

void gelu_forward_cuda(bf16 *out, const bf16 *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    if (((uintptr_t)out | (uintptr_t)inp) % 16 != 0)
        fatal(EXIT_RUNTIME, "gelu_forward_cuda: pointers must be 16-byte aligned");
    const size_t nvec = n / 8;
    if (nvec > 0) {
        gelu_forward_kernel<<<elementwise_blocks(nvec, 256), 256, 0, stream>>>(out, inp, nvec);
        KERNEL_CHECK("gelu_forward_kernel");
    }
    if (nvec * 8 < n) {
        gelu_forward_tail_kernel<<<1, 8, 0, stream>>>(out, inp, nvec * 8, n);
        KERNEL_CHECK("gelu_forward_tail_kernel");
    }
}

void residual_forward_cuda(bf16 *out, const bf16 *a, const bf16 *b, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    residual_forward_kernel<<<elementwise_blocks(n, 256), 256, 0, stream>>>(out, a, b, n);
    KERNEL_CHECK("residual_forward_kernel");
}

size_t bias_backward_scratch_floats(int N, int OC) { return (size_t)bias_chunks(N) * OC; }

void bias_backward_cuda(float *dbias, const bf16 *dout, int N, int OC, float *scratch,
                        cudaStream_t stream) {
    if (N == 0 || OC == 0) return;
    const int chunks = bias_chunks(N);
    dim3 grid(ceil_div_u((size_t)OC, 256), (unsigned)chunks);
    bias_partial_kernel<<<grid, 256, 0, stream>>>(scratch, dout, N, OC);
    KERNEL_CHECK("bias_partial_kernel");
    bias_reduce_kernel<<<ceil_div_u((size_t)OC, 256), 256, 0, stream>>>(dbias, scratch, chunks, OC);
    KERNEL_CHECK("bias_reduce_kernel");
}

void adamw_cuda(float *params, bf16 *params_bf16, const float *grads, float *m, float *v,
                size_t n, int decay, const adamw_hparams_t *h, long t, float grad_scale,
                cudaStream_t stream) {
    if (t < 1) fatal(EXIT_RUNTIME, "adamw_cuda: step t = %ld must be >= 1", t);
    if (n == 0) return;
    /* Bias corrections in double on the host, exactly as adamw_step does. */
    const float bc1 = (float)(1.0 - pow((double)h->beta1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)h->beta2, (double)t));
    const float wd = decay ? h->weight_decay : 0.0f;
    /* Whole float4s where every array allows them (parameter tensors start at multiples of 8
     * elements in the trainer), the rest one at a time. */
    size_t n4 = 0;
    const uintptr_t align = (uintptr_t)params | (uintptr_t)grads | (uintptr_t)m | (uintptr_t)v;
    if (align % 16 == 0 && (uintptr_t)params_bf16 % 8 == 0) {
        n4 = n / 4;
        if (n4) {
            adamw_vec4_kernel<<<elementwise_blocks(n4, 256), 256, 0, stream>>>(
                reinterpret_cast<float4 *>(params), reinterpret_cast<uint2 *>(params_bf16),
                reinterpret_cast<const float4 *>(grads), reinterpret_cast<float4 *>(m),
                reinterpret_cast<float4 *>(v), n4, h->lr, h->beta1, h->beta2, bc1, bc2, h->eps, wd, grad_scale);
            KERNEL_CHECK("adamw_vec4_kernel");
        }
    }
    const size_t done = 4 * n4;
    if (done < n) {
        adamw_kernel<<<elementwise_blocks(n - done, 256), 256, 0, stream>>>(
            params + done, params_bf16 + done, grads + done, m + done, v + done, n - done, h->lr, h->beta1,
            h->beta2, bc1, bc2, h->eps, wd, grad_scale);
        KERNEL_CHECK("adamw_kernel");
    }
}

double grad_norm_cuda(const float *grads, size_t n, double *scratch, cudaStream_t stream) {
    sumsq_partial_kernel<<<GRAD_NORM_BLOCKS, 256, 0, stream>>>(scratch, grads, n);
    KERNEL_CHECK("sumsq_partial_kernel");
    sum_partials_kernel<<<1, 1, 0, stream>>>(scratch, GRAD_NORM_BLOCKS);
    KERNEL_CHECK("sum_partials_kernel");
    double total = 0.0;
    CUDA_CHECK(cudaMemcpyAsync(&total, scratch, sizeof total, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return sqrt(total);
}

void float_to_bf16_cuda(bf16 *dst, const float *src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    float_to_bf16_kernel<<<elementwise_blocks(n, 256), 256, 0, stream>>>(dst, src, n);
    KERNEL_CHECK("float_to_bf16_kernel");
}

void bf16_to_float_cuda(float *dst, const bf16 *src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    bf16_to_float_kernel<<<elementwise_blocks(n, 256), 256, 0, stream>>>(dst, src, n);
    KERNEL_CHECK("bf16_to_float_kernel");
}

void scale_bf16_cuda(bf16 *x, float s, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    scale_bf16_kernel<<<elementwise_blocks(n, 256), 256, 0, stream>>>(x, s, n);
    KERNEL_CHECK("scale_bf16_kernel");
}

void axpy_cuda(float *y, float s, const float *x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    axpy_kernel<<<elementwise_blocks(n, 256), 256, 0, stream>>>(y, s, x, n);
    KERNEL_CHECK("axpy_kernel");
}
