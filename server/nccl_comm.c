/*
 * server/nccl_comm.c — data-parallel training on GPUs: the engine's
 * collective interface (engine_collective) with the gradient summed over
 * NCCL in device memory, for `mpirun -np N retune train --device cuda`, one
 * rank per GPU. MPI (server/mpi_comm.c) starts the group, carries NCCL's
 * unique id from rank 0 to the others, and keeps doing the host sums (a few
 * doubles of loss statistics per step, rank 0's decisions); NCCL carries the
 * gradient, which never leaves the GPU.
 *
 * A sum is ncclReduce to rank 0, then ncclBroadcast from it, as the MPI path
 * does with MPI_Reduce + MPI_Bcast: rank 0 adds up each element once and
 * every rank receives those very bits, so the ranks' AdamW steps, and the
 * weights rank 0 checkpoints for all of them, cannot drift apart.
 * ncclAllReduce documents no such promise (it picks ring, tree or NVLS per
 * call, by size and topology). The price is bandwidth on large gradients:
 * reduce + broadcast move about 2n bytes per rank against an all-reduce's
 * 2n(N-1)/N, twice the time at N = 2 and 8/7 of it at N = 8; LoRA gradients
 * (a few MB) are latency-bound either way.
 *
 * Ordering: the trainer queues every op on the legacy default stream. NCCL
 * runs on a stream of its own (non-blocking), made to wait for the work
 * queued before the sum by an event, and the default stream made to wait
 * for the sum by another: the sum is ordered between the gradient kernels
 * and the clipping/AdamW kernels without the host waiting, and NCCL never
 * sees the legacy stream (whose implicit synchronisation it does not need).
 *
 * Compiled only in a CUDA=1 build (the Makefile leaves it out otherwise);
 * server.h gives other builds a stub that declines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "engine/engine.h"
#include "server/server.h"

typedef struct nccl_group {
    engine_collective pub;          /* what the engine sees; pub.ctx = this */
    const engine_collective *mpi;   /* rank, size and the host sums (borrowed) */
    ncclComm_t comm;                /* NULL until started */
    cudaStream_t stream;            /* NCCL's (non-blocking); NULL until made */
    cudaEvent_t ready, done;        /* before and after the sum; NULL until made */
    int device;                     /* this rank's GPU */
    char name[24];                  /* "cuda:K", the engine's device */
} nccl_group;

/* What rank 0 sends the others before NCCL starts: whether it could make
 * the id, and the id. */
typedef struct nccl_hello {
    int ok;
    ncclUniqueId id;
} nccl_hello;

/* Turns a CUDA result into RT_OK or RT_ERR_DEVICE, saying what failed. */
static int cuda_ok(cudaError_t e, const char *what, char *err, size_t errsize)
{
    if (e == cudaSuccess)
        return RT_OK;
    return rt_fail(err, errsize, RT_ERR_DEVICE, "%s failed: %s", what, cudaGetErrorString(e));
}

/* Turns an NCCL result into RT_OK or RT_ERR_COMM, saying what failed. */
static int nccl_ok(ncclResult_t r, ncclComm_t comm, const char *what, char *err, size_t errsize)
{
    if (r == ncclSuccess)
        return RT_OK;
    const char *detail = ncclGetLastError(comm);
    return rt_fail(err, errsize, RT_ERR_COMM, "NCCL %s failed: %s%s%s", what, ncclGetErrorString(r),
                   detail && *detail ? ": " : "", detail ? detail : "");
}

/* Logs a failure of a sum (the engine only sees RT_ERR_COMM). */
static int sum_failed(const char *what, const char *why)
{
    rt_log(RT_LOG_ERROR, "nccl: %s failed: %s", what, why);
    return RT_ERR_COMM;
}

/* ---- the collective -------------------------------------------------------- */

static int nccl_sum_f32(void *ctx, float *data, size_t n)
{
    const engine_collective *mpi = ((nccl_group *)ctx)->mpi;
    return mpi->sum_f32(mpi->ctx, data, n);
}

static int nccl_sum_f64(void *ctx, double *data, size_t n)
{
    const engine_collective *mpi = ((nccl_group *)ctx)->mpi;
    return mpi->sum_f64(mpi->ctx, data, n);
}

/* Sums data[0..n) (device memory) over the group in place: ncclReduce to
 * rank 0 and ncclBroadcast from it on NCCL's stream, between two events
 * that order it after the work queued on stream and before what follows
 * there. Returns once queued (see engine.h). */
static int nccl_sum_f32_device(void *ctx, float *data, size_t n, void *stream)
{
    nccl_group *g = ctx;
    cudaStream_t s = stream ? (cudaStream_t)stream : cudaStreamLegacy;
    cudaError_t e = cudaSetDevice(g->device);
    if (e == cudaSuccess)
        e = cudaEventRecord(g->ready, s);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(g->stream, g->ready, 0);
    if (e != cudaSuccess)
        return sum_failed("ordering the sum after the gradient", cudaGetErrorString(e));
    ncclResult_t r = ncclReduce(data, data, n, ncclFloat, ncclSum, 0, g->comm, g->stream);
    if (r == ncclSuccess)
        r = ncclBroadcast(data, data, n, ncclFloat, 0, g->comm, g->stream);
    ncclResult_t async = ncclSuccess;
    if (r == ncclSuccess)
        r = ncclCommGetAsyncError(g->comm, &async);
    if (r == ncclSuccess && async != ncclInProgress)
        r = async; /* a peer or the network failed earlier */
    if (r != ncclSuccess)
        return sum_failed("the gradient sum (ncclReduce + ncclBroadcast)", ncclGetErrorString(r));
    e = cudaEventRecord(g->done, g->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(s, g->done, 0);
    if (e != cudaSuccess)
        return sum_failed("ordering the step after the sum", cudaGetErrorString(e));
    return RT_OK;
}

/* ---- opening and closing ------------------------------------------------- */

/* The index of this process among the ranks on its machine: Open MPI's
 * OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID, else the world rank
 * (one rank per machine, or a launcher that says nothing). */
static int local_rank(int world_rank)
{
    const char *names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        char *end = NULL;
        long x = v ? strtol(v, &end, 10) : -1;
        if (v && *v && end && !*end && x >= 0)
            return (int)x;
    }
    return world_rank;
}

/* *index = K for "cuda:K", -1 for "cuda" (the rank's pick); 0 when device
 * names another backend (or "cuda" followed by something else). */
static int parse_device(const char *device, int *index)
{
    if (strncmp(device, "cuda", 4) != 0)
        return 0;
    if (device[4] == '\0') {
        *index = -1;
        return 1;
    }
    char *end = NULL;
    long k = device[4] == ':' ? strtol(device + 5, &end, 10) : -1;
    if (k < 0 || k > 4096 || end == device + 5 || *end)
        return 0;
    *index = (int)k;
    return 1;
}

/* Picks and enters this rank's GPU (want = K, or -1 for the rank's pick);
 * see server_nccl_open for the codes. */
static int pick_device(nccl_group *g, int want, char *err, size_t errsize)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError(); /* no device or driver: not an error to keep */
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "no usable GPU on this machine (%s)",
                       e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    }
    g->device = want >= 0 ? want : local_rank(g->mpi->rank) % count;
    if (g->device >= count)
        return rt_fail(err, errsize, RT_ERR_NOT_FOUND, "there is no GPU %d (this machine has %d)",
                       g->device, count);
    snprintf(g->name, sizeof g->name, "cuda:%d", g->device);
    return cuda_ok(cudaSetDevice(g->device), "cudaSetDevice", err, errsize);
}

/* Starts NCCL on the current GPU: rank 0 makes the id and MPI carries it
 * (with whether rank 0 succeeded, so that a failure there fails every rank
 * instead of leaving them waiting), then the collective start. */
static int start_nccl(nccl_group *g, struct engine_collective *mpi, char *err, size_t errsize)
{
    nccl_hello hello;
    memset(&hello, 0, sizeof hello);
    if (mpi->rank == 0)
        hello.ok = ncclGetUniqueId(&hello.id) == ncclSuccess;
    if (server_mpi_bcast(mpi, &hello, sizeof hello) != RT_OK)
        return rt_fail(err, errsize, RT_ERR_COMM, "MPI could not share NCCL's id");
    if (!hello.ok)
        return rt_fail(err, errsize, RT_ERR_COMM, "rank 0 could not create NCCL's id "
                       "(ncclGetUniqueId; NCCL_DEBUG=INFO says why)");
    return nccl_ok(ncclCommInitRank(&g->comm, mpi->size, hello.id, mpi->rank), NULL,
                   "ncclCommInitRank", err, errsize);
}

int server_nccl_open(struct engine_collective *mpi, const char *device,
                     struct engine_collective **out, const char **device_out, char *err,
                     size_t errsize)
{
    *out = NULL;
    int want = -1, count = 0;
    if (!mpi || mpi->size < 2)
        return RT_OK;
    if (device && !parse_device(device, &want))
        return RT_OK; /* the cpu (or a name the engine will refuse): MPI's path */
    if (!device && (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)) {
        cudaGetLastError();
        return RT_OK; /* the engine's default device is then the cpu */
    }
    nccl_group *g = calloc(1, sizeof *g);
    if (!g)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "out of memory");
    g->mpi = mpi;
    int rc = pick_device(g, want, err, errsize);
    if (rc == RT_OK)
        rc = cuda_ok(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking),
                     "cudaStreamCreateWithFlags", err, errsize);
    if (rc == RT_OK)
        rc = cuda_ok(cudaEventCreateWithFlags(&g->ready, cudaEventDisableTiming),
                     "cudaEventCreateWithFlags", err, errsize);
    if (rc == RT_OK)
        rc = cuda_ok(cudaEventCreateWithFlags(&g->done, cudaEventDisableTiming),
                     "cudaEventCreateWithFlags", err, errsize);
    if (rc == RT_OK)
        rc = start_nccl(g, mpi, err, errsize);
    if (rc != RT_OK) {
        server_nccl_close(&g->pub);
        return rc;
    }
    int version = 0;
    ncclGetVersion(&version);
    rt_log(RT_LOG_INFO, "nccl: rank %d of %d on GPU %d (NCCL %d)", mpi->rank, mpi->size,
           g->device, version);
    g->pub = (engine_collective){.rank = mpi->rank, .size = mpi->size, .ctx = g,
                                 .sum_f32 = nccl_sum_f32, .sum_f64 = nccl_sum_f64,
                                 .sum_f32_device = nccl_sum_f32_device};
    *out = &g->pub;
    *device_out = g->name;
    return RT_OK;
}

void server_nccl_close(struct engine_collective *c)
{
    if (!c)
        return;
    nccl_group *g = (nccl_group *)c; /* pub is the first member; ctx may be unset yet */
    if (g->comm)
        ncclCommDestroy(g->comm);
    if (g->ready)
        cudaEventDestroy(g->ready);
    if (g->done)
        cudaEventDestroy(g->done);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    free(g);
}
