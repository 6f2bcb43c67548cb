#include "runtime/dist.h"

#include <mpi.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "runtime/error.h"

static int launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

static void abort_all_ranks(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static void mpi_check(int rc, const char *call) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fatal(EXIT_RUNTIME, "%s failed: %s", call, msg);
}

void dist_init(dist_t *d, int *argc, char ***argv) {
    memset(d, 0, sizeof *d);
    d->world = d->local_world = 1;
    if (!launched_by_mpi()) return;
    mpi_check(MPI_Init(argc, argv), "MPI_Init");
    d->mpi = 1;
    /* Errors are returned (and turned into messages) instead of MPI's default silent abort. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world);
    MPI_Comm local;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local),
              "MPI_Comm_split_type");
    MPI_Comm_rank(local, &d->local_rank);
    MPI_Comm_size(local, &d->local_world);
    MPI_Comm_free(&local);
    if (d->world > 1) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "rank %d", d->rank);
        fatal_set_context(prefix, abort_all_ranks);
    }
}

void dist_finalize(dist_t *d) {
    if (d->mpi) MPI_Finalize();
    d->mpi = 0;
}

void dist_check_same(const dist_t *d, const char *what, const char *text) {
    if (d->world == 1) return;
    unsigned long crc = crc32(0L, (const unsigned char *)text, (uInt)strlen(text));
    unsigned long *all = xmalloc((size_t)d->world * sizeof *all, "rank check");
    mpi_check(MPI_Allgather(&crc, 1, MPI_UNSIGNED_LONG, all, 1, MPI_UNSIGNED_LONG, MPI_COMM_WORLD), "MPI_Allgather");
    for (int r = 1; r < d->world; r++)
        if (all[r] != all[0]) fatal(EXIT_USAGE, "%s differs between rank 0 and rank %d: launch every rank with the same arguments", what, r);
    free(all);
}

void dist_barrier(const dist_t *d) {
    if (d->world > 1) mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void dist_allreduce_sum_double(const dist_t *d, double *x, int n) {
    if (d->world > 1) mpi_check(MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}

static int count_of(size_t n) {
    if (n > (size_t)INT32_MAX) fatal(EXIT_RUNTIME, "collective of %zu elements exceeds MPI's int count", n);
    return (int)n;
}

void dist_reduce_scatter_sum_float(const dist_t *d, const float *buf, float *out, size_t shard) {
    if (d->world == 1) {
        if (out != buf) memcpy(out, buf, shard * sizeof(float));
        return;
    }
    mpi_check(MPI_Reduce_scatter_block(buf, out, count_of(shard), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Reduce_scatter_block");
}

void dist_allgather_float(const dist_t *d, float *buf, size_t shard) {
    if (d->world == 1) return;
    mpi_check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, count_of(shard), MPI_FLOAT, MPI_COMM_WORLD),
              "MPI_Allgather");
}

void dist_broadcast_bytes(const dist_t *d, void *buf, size_t n) {
    if (d->world > 1) mpi_check(MPI_Bcast(buf, count_of(n), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

/* Watchdog: the main thread stores the time of its last kick; the watchdog thread checks it. */
static volatile double g_last_kick;
static double g_timeout_s;
static const dist_t *g_watch_dist;

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *watchdog_main(void *arg) {
    (void)arg;
    for (;;) {
        sleep(1);
        double idle = wall_s() - g_last_kick;
        if (idle > g_timeout_s) {
            fprintf(stderr, "error (rank %d): no training step completed in %.0f s (train.watchdog_s): "
                    "a rank died or hangs; stopping every rank\n", g_watch_dist->rank, idle);
            fflush(stderr);
            if (g_watch_dist->mpi) MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
            _exit(EXIT_RUNTIME);
        }
    }
    return NULL;
}

void dist_watchdog_start(const dist_t *d, double timeout_s) {
    if (timeout_s <= 0) return;
    g_timeout_s = timeout_s;
    g_watch_dist = d;
    g_last_kick = wall_s();
    pthread_t th;
    if (pthread_create(&th, NULL, watchdog_main, NULL) != 0) fatal(EXIT_RUNTIME, "cannot start the watchdog thread");
    pthread_detach(th);
}

void dist_watchdog_kick(void) { g_last_kick = wall_s(); }
