/*
 * engine/train_parallel.c — the trainer's side of data-parallel training:
 * sums over the group of processes that train one job together, through the
 * plain engine_collective interface the caller implements (MPI on CPUs, in
 * server/mpi_comm.c). The engine never sees the transport.
 *
 * Every rank holds the whole model and the same data order; rank r computes
 * micro-batches r, r+N, ... of each optimizer step, so the summed gradient
 * and loss statistics are those of one process computing all of them (up to
 * the order of float additions). The gradient is staged through a bounded
 * host buffer for sum_f32 (MPI), or, on the cuda backend with a group that
 * offers sum_f32_device (NCCL, server/nccl_comm.c), summed where it lies in
 * device memory, ordered on the stream the trainer queues its work on.
 */
#include "engine/trainer.h"

#include <stdlib.h>
#include <string.h>

/* Floats per staging chunk of the gradient sum (4 MiB): bounded host
 * memory for full fine-tuning of any size, large enough messages that
 * per-call latency does not matter. */
#define GROUP_CHUNK_FLOATS ((size_t)1 << 20)

int trainer_group_open(trainer *t)
{
    const engine_collective *c = t->cfg.comm;
    if (!c || c->size == 1)
        return RT_OK;
    if (c->size < 1 || c->rank < 0 || c->rank >= c->size || !c->sum_f32 || !c->sum_f64)
        return RT_ERR_INVALID;
    if (c->sum_f32_device && strcmp(t->be->name, "cuda") == 0) {
        /* the gradient stays where it is: no staging buffer */
        t->comm_device = true;
        t->comm = c;
        return RT_OK;
    }
    size_t n = (size_t)t->n_trainable;
    t->comm_chunk = n < GROUP_CHUNK_FLOATS ? n : GROUP_CHUNK_FLOATS;
    t->comm_host = malloc((t->comm_chunk ? t->comm_chunk : 1) * sizeof(float));
    if (!t->comm_host)
        return RT_ERR_NOMEM;
    t->comm = c;
    return RT_OK;
}

int trainer_rank(const trainer *t)
{
    return t->comm ? t->comm->rank : 0;
}

int trainer_ranks(const trainer *t)
{
    return t->comm ? t->comm->size : 1;
}

bool trainer_is_lead(const trainer *t)
{
    return trainer_rank(t) == 0;
}

int trainer_sum(trainer *t, double *v, size_t n)
{
    if (!t->comm)
        return RT_OK;
    double t0 = rt_now_seconds();
    int rc = t->comm->sum_f64(t->comm->ctx, v, n);
    t->comm_seconds += rt_now_seconds() - t0;
    return rc;
}

/* The gradient summed in device memory (sum_f32_device), on the NULL
 * stream that every trainer op uses. The backend is synchronized before,
 * so that comm_seconds counts the sum and not the backward pass still in
 * flight, and after, so that it counts the sum's completion. Both waits
 * cost the step next to nothing: the sum cannot start before the gradient
 * is complete, and the step reads the gradient's norm on the host right
 * after it (optim_clip). */
static int sum_grad_device(trainer *t)
{
    const kernels_backend *be = t->be;
    int rc = be->synchronize(NULL);
    double t0 = rt_now_seconds();
    if (rc == RT_OK)
        rc = t->comm->sum_f32_device(t->comm->ctx, t->grad, (size_t)t->n_trainable, NULL);
    if (rc == RT_OK)
        rc = be->synchronize(NULL);
    t->comm_seconds += rt_now_seconds() - t0;
    return rc;
}

int trainer_sum_grad(trainer *t)
{
    if (!t->comm)
        return RT_OK;
    if (t->comm_device)
        return sum_grad_device(t);
    double t0 = rt_now_seconds();
    const kernels_backend *be = t->be;
    size_t n = (size_t)t->n_trainable;
    int rc = RT_OK;
    for (size_t off = 0; rc == RT_OK && off < n; off += t->comm_chunk) {
        size_t k = n - off < t->comm_chunk ? n - off : t->comm_chunk;
        rc = be->copy_to_host(t->comm_host, t->grad + off, k * sizeof(float), NULL);
        if (rc == RT_OK)
            rc = t->comm->sum_f32(t->comm->ctx, t->comm_host, k);
        if (rc == RT_OK)
            rc = be->copy_to_device(t->grad + off, t->comm_host, k * sizeof(float), NULL);
    }
    t->comm_seconds += rt_now_seconds() - t0;
    return rc;
}

int trainer_share(trainer *t, int *x)
{
    if (!t->comm)
        return RT_OK;
    double v = trainer_is_lead(t) ? (double)*x : 0.0;
    int rc = trainer_sum(t, &v, 1);
    if (rc == RT_OK)
        *x = (int)v;
    return rc;
}
