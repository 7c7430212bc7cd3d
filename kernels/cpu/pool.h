/*
 * kernels/cpu/pool.h — (internal to kernels/cpu/) the CPU backend's own
 * worker threads, the only ones it uses: the few-row products (gemv.h),
 * the batched decode attention, and every large matrix product, split
 * into single-threaded sgemm calls (gemm.h; OpenBLAS is set to one thread
 * when the pool starts).
 *
 * cpu_pool_run(fn, ctx) calls fn(ctx, part, parts) once for each part in
 * [0, parts) on parts threads (the caller runs part 0) and returns when all
 * have finished. Idle workers sleep on a condition variable: they never
 * spin, so a pool that is not in use takes no CPU from a training run
 * beside it. The pool has one thread per CPU online, or RETUNE_CPU_THREADS
 * when set (1 means every call runs inline). It is started on first use.
 *
 * One run at a time: a caller that finds the pool busy (the server's engine
 * thread and a training worker share a process) runs fn(ctx, 0, 1) inline
 * instead of waiting, so fn must accept any split, including one part.
 */
#ifndef RT_KERNELS_CPU_POOL_H
#define RT_KERNELS_CPU_POOL_H

typedef void (*cpu_pool_fn)(void *ctx, int part, int parts);

void cpu_pool_run(cpu_pool_fn fn, void *ctx);

/* Multiply-adds below which a product or a batch of small ones runs on the
 * calling thread: waking the pool costs more than it saves. */
#define CPU_POOL_MIN_WORK 65536.0

/* Threads a run splits over (1 when the pool could not start). */
int cpu_pool_size(void);

#endif
