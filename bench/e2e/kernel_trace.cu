/* The in-stream timeline of a process's kernels, from CUPTI's activity API: each kernel's start
 * and end on the GPU clock as it ran among the others (ncu runs each kernel alone, with its
 * own clock and cold caches), plus marks the program sets (cuptiGetTimestamp, the same clock).
 * bench_step --trace FILE uses it to split a step's wall time into kernel time and idle gaps
 * (bench/e2e/trace_summary.py). */
#include "bench/e2e/kernel_trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cupti.h>

#include <string>
#include <vector>

extern "C" {
#include "runtime/error.h"
}

namespace {

struct KernelRecord {
    std::string name;
    uint32_t stream;
    uint64_t start, end;
};

struct Mark {
    std::string label;
    uint64_t t;
};

std::vector<KernelRecord> g_kernels;
std::vector<Mark> g_marks;
size_t g_dropped = 0;

void cupti_check(CUptiResult r, const char *what) {
    if (r == CUPTI_SUCCESS) return;
    const char *s = "?";
    cuptiGetResultString(r, &s);
    fatal(EXIT_RUNTIME, "kernel trace: %s: %s", what, s);
}

constexpr size_t kBufferBytes = 8u << 20;

void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    /* CUPTI wants 8-byte aligned buffers */
    *buffer = static_cast<uint8_t *>(aligned_alloc(8, kBufferBytes));
    if (!*buffer) fatal(EXIT_RUNTIME, "kernel trace: out of host memory for a %zu-byte buffer", kBufferBytes);
    *size = kBufferBytes;
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t *buffer, size_t, size_t valid) {
    CUpti_Activity *rec = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
        const CUpti_ActivityKernel10 *k = reinterpret_cast<const CUpti_ActivityKernel10 *>(rec);
        g_kernels.push_back({k->name ? k->name : "?", k->streamId, k->start, k->end});
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS) g_dropped += dropped;
    free(buffer);
}

} // namespace

void kernel_trace_start(void) {
    cupti_check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
    cupti_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernel records");
}

void kernel_trace_mark(const char *label) {
    uint64_t t = 0;
    cupti_check(cuptiGetTimestamp(&t), "timestamp");
    g_marks.push_back({label, t});
}

void kernel_trace_write(const char *path) {
    cupti_check(cuptiActivityFlushAll(1), "flush");
    FILE *f = fopen(path, "w");
    if (!f) fatal(EXIT_RUNTIME, "kernel trace: cannot write %s", path);
    fprintf(f, "kind,label,stream,start_ns,end_ns\n");
    for (const Mark &m : g_marks) fprintf(f, "mark,%s,,%llu,%llu\n", m.label.c_str(), (unsigned long long)m.t,
                                          (unsigned long long)m.t);
    for (const KernelRecord &k : g_kernels) {
        std::string name = k.name; /* mangled names have no commas or quotes; keep CSV simple anyway */
        for (char &c : name)
            if (c == ',' || c == '"') c = ';';
        fprintf(f, "kernel,%s,%u,%llu,%llu\n", name.c_str(), k.stream, (unsigned long long)k.start,
                (unsigned long long)k.end);
    }
    if (fclose(f) != 0) fatal(EXIT_RUNTIME, "kernel trace: error writing %s", path);
    fprintf(stderr, "kernel trace: %zu kernels, %zu marks, %zu records dropped -> %s\n", g_kernels.size(),
            g_marks.size(), g_dropped, path);
}
