/*
 * kernels/cpu/gemm.h — (internal to kernels/cpu/) the CPU backend's float
 * matrix product, on its own thread pool.
 *
 * OpenBLAS is told to run single-threaded (openblas_set_num_threads(1), once,
 * when the pool starts), and a large product is split into one slice of
 * rows or columns per pool thread, each an ordinary sgemm. So the CPU
 * backend has one set of worker threads (kernels/cpu/pool.h), shared by
 * training and serving, that sleep when idle: OpenBLAS's own workers, which
 * spin in sched_yield between calls, are never woken.
 */
#ifndef RT_KERNELS_CPU_GEMM_H
#define RT_KERNELS_CPU_GEMM_H

/* Row-major c[m, n] = alpha op(a) op(b) + beta c, as cblas_sgemm (op(x) is x
 * or its transpose when trans_x); m, n, k >= 1. */
void cpu_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc);

#endif
