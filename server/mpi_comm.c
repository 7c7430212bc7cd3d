/*
 * server/mpi_comm.c — the engine's collective interface (engine_collective)
 * over MPI, for `mpirun -np N retune train ...`: one process per rank of
 * MPI_COMM_WORLD, sums by MPI_Reduce to rank 0 and MPI_Bcast back, so that
 * every rank holds the same bits (MPI_Allreduce does not promise that for
 * floats, and the ranks' AdamW steps must not drift apart).
 *
 * MPI is started only in a process that mpirun launched; a build without
 * Open MPI's headers (no RT_WITH_MPI) still links, and refuses such a
 * launch rather than train the same job N times over.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/engine.h"
#include "server/server.h"

#ifdef RT_WITH_MPI
#include <limits.h>
#include <mpi.h>
#endif

/* True when a process manager (mpirun, srun) started this process as one
 * rank of a group: Open MPI's, MPICH's (PMI) or PMIx's environment. */
static bool launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifdef RT_WITH_MPI

/* Sums n values of type t over MPI_COMM_WORLD in place, in messages of at
 * most INT_MAX elements. RT_ERR_COMM when MPI reports an error. */
static int mpi_sum(void *data, size_t n, MPI_Datatype t, size_t elem)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char *p = data;
    while (n > 0) {
        int k = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        void *send = rank == 0 ? MPI_IN_PLACE : p;
        if (MPI_Reduce(send, p, k, t, MPI_SUM, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
            MPI_Bcast(p, k, t, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
            return RT_ERR_COMM;
        p += (size_t)k * elem;
        n -= (size_t)k;
    }
    return RT_OK;
}

static int mpi_sum_f32(void *ctx, float *data, size_t n)
{
    (void)ctx;
    return mpi_sum(data, n, MPI_FLOAT, sizeof *data);
}

static int mpi_sum_f64(void *ctx, double *data, size_t n)
{
    (void)ctx;
    return mpi_sum(data, n, MPI_DOUBLE, sizeof *data);
}

/* Gives each rank on this machine its share of the CPUs as compute
 * threads (unless RETUNE_CPU_THREADS says otherwise): N ranks of one
 * thread per CPU each would oversubscribe the machine N times. */
static void share_cpu_threads(void)
{
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    long ranks = local ? strtol(local, NULL, 10) : 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (getenv("RETUNE_CPU_THREADS") || ranks < 2 || cpus < 1)
        return;
    char text[32];
    snprintf(text, sizeof text, "%ld", cpus / ranks > 0 ? cpus / ranks : 1);
    setenv("RETUNE_CPU_THREADS", text, 0);
}

int server_mpi_open(struct engine_collective **out, char *err, size_t errsize)
{
    *out = NULL;
    if (!launched_by_mpirun())
        return RT_OK;
    share_cpu_threads(); /* before MPI starts threads of its own: setenv is not thread-safe */
    engine_collective *c = calloc(1, sizeof *c);
    if (!c)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "out of memory");
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        free(c);
        return rt_fail(err, errsize, RT_ERR_COMM, "MPI could not be started");
    }
    /* errors come back as codes (RT_ERR_COMM), not as an abort inside MPI */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->sum_f32 = mpi_sum_f32;
    c->sum_f64 = mpi_sum_f64;
    *out = c;
    return RT_OK;
}

int server_mpi_bcast(struct engine_collective *c, void *data, size_t bytes)
{
    if (!c || bytes > (size_t)INT_MAX)
        return RT_ERR_INVALID;
    return MPI_Bcast(data, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? RT_OK
                                                                                  : RT_ERR_COMM;
}

void server_mpi_close(struct engine_collective *c)
{
    if (!c)
        return;
    MPI_Finalize();
    free(c);
}

void server_mpi_abort(struct engine_collective *c, int status)
{
    if (c)
        MPI_Abort(MPI_COMM_WORLD, status);
}

#else /* built without MPI */

int server_mpi_open(struct engine_collective **out, char *err, size_t errsize)
{
    *out = NULL;
    if (!launched_by_mpirun())
        return RT_OK;
    return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "launched by mpirun, but this retune was "
                   "built without MPI (install libopenmpi-dev, then rebuild)");
}

int server_mpi_bcast(struct engine_collective *c, void *data, size_t bytes)
{
    (void)c;
    (void)data;
    (void)bytes;
    return RT_ERR_UNSUPPORTED;
}

void server_mpi_close(struct engine_collective *c)
{
    (void)c;
}

void server_mpi_abort(struct engine_collective *c, int status)
{
    (void)c;
    (void)status;
}

#endif
