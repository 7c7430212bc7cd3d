/*
 * kernels/cpu/pool.c — the CPU backend's worker threads (see pool.h).
 *
 * A run publishes (fn, ctx) under the pool's mutex, bumps the generation and
 * broadcasts; each worker that sees a new generation runs its part, and the
 * last one to finish signals the caller. Runs are serialized by run_lock,
 * taken with trylock so that a second caller never waits for the first.
 */
#include "kernels/cpu/pool.h"

#include <cblas.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_MAX 64

static struct {
    pthread_once_t once;
    pthread_mutex_t run_lock; /* held by the caller for the whole run */
    pthread_mutex_t m;        /* guards the fields below */
    pthread_cond_t go, done;
    unsigned long generation;
    int pending;              /* workers still running the current run */
    cpu_pool_fn fn;
    void *ctx;
    int size;                 /* threads per run, the caller included */
} pool = {.once = PTHREAD_ONCE_INIT, .run_lock = PTHREAD_MUTEX_INITIALIZER,
          .m = PTHREAD_MUTEX_INITIALIZER, .go = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER, .size = 1};

static void *worker(void *arg)
{
    int part = (int)(intptr_t)arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool.m);
    for (;;) {
        while (pool.generation == seen)
            pthread_cond_wait(&pool.go, &pool.m);
        seen = pool.generation;
        cpu_pool_fn fn = pool.fn;
        void *ctx = pool.ctx;
        int parts = pool.size;
        pthread_mutex_unlock(&pool.m);
        fn(ctx, part, parts);
        pthread_mutex_lock(&pool.m);
        if (--pool.pending == 0)
            pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* Threads wanted: RETUNE_CPU_THREADS, else the CPUs online. */
static int wanted_threads(void)
{
    const char *env = getenv("RETUNE_CPU_THREADS");
    long n = env && *env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > POOL_MAX ? POOL_MAX : (int)n;
}

/* Starts the workers; the pool keeps the count that actually started. */
static void start(void)
{
    int n = wanted_threads(), started = 1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (; started < n; started++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, (void *)(intptr_t)started) != 0)
            break;
    }
    pthread_attr_destroy(&attr);
    pool.size = started;
    /* The pool owns the CPUs: OpenBLAS runs single-threaded inside its
     * parts (gemm.h), and its own workers, which spin between calls, are
     * never woken. */
    openblas_set_num_threads(1);
}

int cpu_pool_size(void)
{
    pthread_once(&pool.once, start);
    return pool.size;
}

void cpu_pool_run(cpu_pool_fn fn, void *ctx)
{
    if (cpu_pool_size() == 1 || pthread_mutex_trylock(&pool.run_lock) != 0) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool.m);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.pending = pool.size - 1;
    pool.generation++;
    pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.m);
    fn(ctx, 0, pool.size);
    pthread_mutex_lock(&pool.m);
    while (pool.pending > 0)
        pthread_cond_wait(&pool.done, &pool.m);
    pthread_mutex_unlock(&pool.m);
    pthread_mutex_unlock(&pool.run_lock);
}
