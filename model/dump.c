#include "model/dump.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/checkpoint.h"
#include "runtime/error.h"

static void put(FILE *f, const void *p, size_t n, const char *path) {
    if (n && fwrite(p, 1, n, f) != n) fatal(EXIT_RUNTIME, "writing %s: %s", path, strerror(errno));
}

void model_dump(backend_t *be, const char *config_json, const int32_t *inputs, const int32_t *targets,
                int B, int T, uint64_t step, const char *dir) {
    const gpt_config_t *g = &be->cfg;
    size_t n = be->n_params;
    float *params = xmalloc(n * sizeof(float), "dump params");
    float *grads = xmalloc(n * sizeof(float), "dump grads");
    float *m = xmalloc(n * sizeof(float), "dump m");
    float *v = xmalloc(n * sizeof(float), "dump v");
    be->read_state(be, params, m, v);

    be->zero_grad(be);
    float loss = be->forward(be, inputs, targets, B, T, step, 0);
    be->backward(be, 1.0f);
    be->read_grads(be, grads);

    char path[4200];
    snprintf(path, sizeof path, "%s/dump_params.bin", dir);
    ckpt_meta_t meta = {0};
    meta.step = step;
    meta.n_params = n;
    meta.world_size = 1;
    meta.config_json = (char *)config_json;
    ckpt_write(path, &meta, params, m, v);

    snprintf(path, sizeof path, "%s/dump.bin", dir);
    char tmp[4300];
    FILE *f = atomic_file_open(path, tmp, sizeof tmp);
    uint32_t version = 1, reserved = 0;
    uint64_t config_len = strlen(config_json), micro = 0;
    uint32_t dims[4] = {(uint32_t)B, (uint32_t)T, (uint32_t)g->n_layer, (uint32_t)g->n_head};
    put(f, "SCFADUMP", 8, path);
    put(f, &version, 4, path);
    put(f, &reserved, 4, path);
    put(f, &step, 8, path);
    put(f, &micro, 8, path);
    put(f, dims, sizeof dims, path);
    put(f, &config_len, 8, path);
    put(f, config_json, config_len, path);
    put(f, inputs, (size_t)B * T * sizeof(int32_t), path);
    put(f, targets, (size_t)B * T * sizeof(int32_t), path);
    put(f, &loss, 4, path);
    put(f, grads, n * sizeof(float), path);
    size_t rows = (size_t)B * g->n_head * T;
    for (int l = 0; l < g->n_layer; l++) {
        const attn_plan_t *p = be->plan(be, l);
        uint32_t mode = (uint32_t)p->p.mode;
        put(f, &mode, 4, path);
        if (p->p.mode == ATTN_QK_SPARSE) {
            put(f, p->keep_q, rows, path);
            put(f, p->keep_k, rows, path);
        } else if (p->p.mode == ATTN_HASH_SPARSE) {
            put(f, p->bucket_q, rows * sizeof(int32_t), path);
            put(f, p->bucket_k, rows * sizeof(int32_t), path);
        }
    }
    atomic_file_commit(f, tmp, path);
    printf("dump: loss %.6f, %zu gradients, plans of %d layers -> %s/dump.bin, %s/dump_params.bin\n", loss, n,
           g->n_layer, dir, dir);
    free(params);
    free(grads);
    free(m);
    free(v);
}
