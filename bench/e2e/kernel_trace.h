/* In-stream kernel timeline by CUPTI (kernel_trace.cu): start once before the work, mark
 * points of interest from the host, write everything as CSV at the end. */
#ifndef BENCH_E2E_KERNEL_TRACE_H
#define BENCH_E2E_KERNEL_TRACE_H

void kernel_trace_start(void);
/* The GPU clock now, under a label (a host-side point: kernels queued before it may still run). */
void kernel_trace_mark(const char *label);
/* Flushes CUPTI's buffers and writes kind,label,stream,start_ns,end_ns rows to path. */
void kernel_trace_write(const char *path);

#endif
