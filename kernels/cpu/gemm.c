/*
 * kernels/cpu/gemm.c — the float matrix product split over the CPU
 * backend's pool (see gemm.h).
 *
 * The product is cut along the longer of its output's two sides into one
 * contiguous slice per thread (rows in multiples of 8, columns in multiples
 * of 16, the microkernel tiles): every slice is a plain sgemm on the same
 * operands. Each slice packs its own copy of the operand it shares, a
 * small cost beside the product for the sizes split here.
 */
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/pool.h"

#include <cblas.h>
#include <stddef.h>

/* Products under this many multiply-adds run on the calling thread: waking
 * the pool costs about as much as they do. */
#define SPLIT_MIN_MACS (1 << 20)

typedef struct gemm_job {
    int ta, tb, m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
    int by_rows; /* slices of rows of c (else of columns) */
} gemm_job;

static CBLAS_TRANSPOSE trans(int t) { return t ? CblasTrans : CblasNoTrans; }

/* [lo, hi) of part's slice of len, in multiples of align. */
static void slice(int len, int align, int part, int parts, int *lo, int *hi)
{
    long units = ((long)len + align - 1) / align;
    long u0 = units * part / parts, u1 = units * (part + 1) / parts;
    *lo = (int)(u0 * align < len ? u0 * align : len);
    *hi = (int)(u1 * align < len ? u1 * align : len);
}

static void gemm_part(void *ctx, int part, int parts)
{
    const gemm_job *j = ctx;
    int lo, hi;
    if (j->by_rows) {
        slice(j->m, 8, part, parts, &lo, &hi);
        if (hi <= lo)
            return;
        /* rows [lo, hi) of op(a): rows of a, or columns of a transposed */
        const float *a = j->ta ? j->a + lo : j->a + (size_t)lo * (size_t)j->lda;
        cblas_sgemm(CblasRowMajor, trans(j->ta), trans(j->tb), hi - lo, j->n, j->k, j->alpha, a,
                    j->lda, j->b, j->ldb, j->beta, j->c + (size_t)lo * (size_t)j->ldc, j->ldc);
    } else {
        slice(j->n, 16, part, parts, &lo, &hi);
        if (hi <= lo)
            return;
        /* columns [lo, hi) of op(b): columns of b, or rows of b transposed */
        const float *b = j->tb ? j->b + (size_t)lo * (size_t)j->ldb : j->b + lo;
        cblas_sgemm(CblasRowMajor, trans(j->ta), trans(j->tb), j->m, hi - lo, j->k, j->alpha,
                    j->a, j->lda, b, j->ldb, j->beta, j->c + lo, j->ldc);
    }
}

void cpu_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    gemm_job j = {trans_a, trans_b, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc, m >= n};
    if (cpu_pool_size() == 1 || (double)m * n * k < SPLIT_MIN_MACS)
        gemm_part(&j, 0, 1);
    else
        cpu_pool_run(gemm_part, &j);
}
