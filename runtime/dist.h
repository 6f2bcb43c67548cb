/* Data-parallel ranks. MPI starts them (`mpirun -np N ./train ...`); without a launcher the
 * program runs as one rank and never touches MPI. On CPU the gradient/parameter collectives go
 * through MPI; on CUDA through NCCL (MPI only carries the NCCL id).
 *
 * Failure handling: once several ranks run, fatal() on any rank calls MPI_Abort, which ends every
 * rank; a watchdog thread aborts the job when no training step completes within a time limit
 * (a hung collective never hangs silently). */
#ifndef RUNTIME_DIST_H
#define RUNTIME_DIST_H

#include <stddef.h>

typedef struct {
    int rank, world;
    int local_rank, local_world; /* ranks on this host (GPU selection) */
    int mpi;                     /* 1 when MPI was initialised */
} dist_t;

/* Initialises MPI when launched by mpirun/mpiexec (environment variables of OpenMPI, MPICH or
 * PMIx), otherwise sets rank 0 of 1. */
void dist_init(dist_t *d, int *argc, char ***argv);
void dist_finalize(dist_t *d);

/* Exits with a message on every rank if `text` (e.g. the resolved config) differs between
 * ranks; `what` names it. */
void dist_check_same(const dist_t *d, const char *what, const char *text);

void dist_barrier(const dist_t *d);
void dist_allreduce_sum_double(const dist_t *d, double *x, int n);
/* buf holds world * shard floats; afterwards out[0..shard) = sum over ranks of this rank's
 * shard (rank * shard .. rank * shard + shard). */
void dist_reduce_scatter_sum_float(const dist_t *d, const float *buf, float *out, size_t shard);
/* buf holds world * shard floats; each rank's own shard is sent to all others in place. */
void dist_allgather_float(const dist_t *d, float *buf, size_t shard);
/* Broadcasts n bytes from rank 0. */
void dist_broadcast_bytes(const dist_t *d, void *buf, size_t n);

/* Watchdog: after dist_watchdog_start, dist_watchdog_kick must be called at least every
 * timeout_s seconds, otherwise every rank is aborted with a message. timeout_s <= 0: off. */
void dist_watchdog_start(const dist_t *d, double timeout_s);
void dist_watchdog_kick(void);

#endif
