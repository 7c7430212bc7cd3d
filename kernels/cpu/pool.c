/*
 * kernels/cpu/pool.c — the CPU backend's worker threads (see pool.h).
 *
 * A run publishes (fn, ctx), bumps the generation and wakes the workers
 * that sleep; each worker that sees a new generation runs its part, and the
 * caller waits until every part is done. Runs are serialized by run_lock,
 * taken with trylock so that a second caller never waits for the first.
 *
 * Spin, then sleep: a decode token is some 60 runs back to back, and on a
 * VM each futex wake costs tens of microseconds, a fifth of a token when
 * every run paid it twice. So a worker that finished a part, and a caller
 * waiting for the last part, first poll for up to SPIN_NS, and only then
 * sleep on a condition variable: between back-to-back runs nobody enters
 * the kernel, and a pool with nothing to do sleeps within SPIN_NS.
 */
#include "kernels/cpu/pool.h"

#include <cblas.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define POOL_MAX 64
#define SPIN_NS 100000L /* how long a worker or the caller polls before sleeping */

static struct {
    pthread_once_t once;
    pthread_mutex_t run_lock;  /* held by the caller for the whole run */
    pthread_mutex_t m;         /* guards sleepers and caller_waiting, orders sleep/wake */
    pthread_cond_t go, done;
    atomic_ulong generation;   /* bumped (under m) to start a run */
    atomic_int pending;        /* workers still running the current run */
    int sleepers;              /* workers blocked on go */
    bool caller_waiting;       /* the caller blocked on done */
    cpu_pool_fn fn;            /* the run's work, written before generation moves */
    void *ctx;
    int size;                  /* threads per run, the caller included */
} pool = {.once = PTHREAD_ONCE_INIT, .run_lock = PTHREAD_MUTEX_INITIALIZER,
          .m = PTHREAD_MUTEX_INITIALIZER, .go = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER, .size = 1};

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Polls until cond(arg) holds or SPIN_NS pass; returns whether it held. */
static bool spin_until(bool (*cond)(unsigned long), unsigned long arg)
{
    long deadline = now_ns() + SPIN_NS;
    for (int i = 0;; i++) {
        if (cond(arg))
            return true;
        cpu_relax();
        if ((i & 63) == 63 && now_ns() > deadline)
            return false;
    }
}

static bool generation_moved(unsigned long seen) { return atomic_load(&pool.generation) != seen; }

static bool parts_done(unsigned long unused)
{
    (void)unused;
    return atomic_load(&pool.pending) == 0;
}

static void *worker(void *arg)
{
    int part = (int)(intptr_t)arg;
    unsigned long seen = 0;
    for (;;) {
        if (!spin_until(generation_moved, seen)) {
            pthread_mutex_lock(&pool.m);
            pool.sleepers++;
            while (!generation_moved(seen))
                pthread_cond_wait(&pool.go, &pool.m);
            pool.sleepers--;
            pthread_mutex_unlock(&pool.m);
        }
        seen = atomic_load(&pool.generation);
        pool.fn(pool.ctx, part, pool.size);
        if (atomic_fetch_sub(&pool.pending, 1) == 1) { /* the last part */
            pthread_mutex_lock(&pool.m);
            if (pool.caller_waiting)
                pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.m);
        }
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
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.pending, pool.size - 1);
    pthread_mutex_lock(&pool.m);
    atomic_fetch_add(&pool.generation, 1); /* publishes fn and ctx (seq_cst) */
    if (pool.sleepers)
        pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.m);
    fn(ctx, 0, pool.size);
    if (!spin_until(parts_done, 0)) {
        pthread_mutex_lock(&pool.m);
        pool.caller_waiting = true;
        while (!parts_done(0))
            pthread_cond_wait(&pool.done, &pool.m);
        pool.caller_waiting = false;
        pthread_mutex_unlock(&pool.m);
    }
    pthread_mutex_unlock(&pool.run_lock);
}
