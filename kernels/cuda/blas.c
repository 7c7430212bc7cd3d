/*
 * kernels/cuda/blas.c — the matrix products of the "cuda" backend through
 * cuBLAS: matmul, matmul_strided_batched and the linear layer, plus the
 * row-major gemm helper the attention ops share (kernels_cuda_gemm).
 *
 * Numerics: fp32 operands and fp32 accumulation; cuBLAS may round the
 * operands to TF32 on the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32, about
 * 1e-3 relative per product, as torch.backends.cuda.matmul.allow_tf32 =
 * True does). RETUNE_CUDA_TF32=0 in the environment, read once, asks for
 * full fp32 (CUBLAS_COMPUTE_32F) instead.
 *
 * cuBLAS handles are per thread (created on first use, destroyed when the
 * thread exits): a handle's stream is state, and the serving and training
 * threads may issue products on different streams at the same time.
 */
#include "kernels/cuda/cuda.h"

#include <cublas_v2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_handle_key;
static int g_key_ok;
static cublasComputeType_t g_compute = CUBLAS_COMPUTE_32F_FAST_TF32;

static void handle_destroy(void *h) { cublasDestroy((cublasHandle_t)h); }

static void blas_init_once(void)
{
    g_key_ok = pthread_key_create(&g_handle_key, handle_destroy) == 0;
    const char *tf32 = getenv("RETUNE_CUDA_TF32");
    if (tf32 && strcmp(tf32, "0") == 0)
        g_compute = CUBLAS_COMPUTE_32F;
}

/* Maps and logs a cuBLAS failure. */
static int blas_check(cublasStatus_t st, const char *what, int line)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return RT_OK;
    rt_log(RT_LOG_ERROR, "cuda: %s failed: %s (%s:%d)", what, cublasGetStatusString(st), __FILE__,
           line);
    return st == CUBLAS_STATUS_ALLOC_FAILED ? RT_ERR_NOMEM : RT_ERR_DEVICE;
}
#define BLAS_TRY(call) blas_check((call), #call, __LINE__)

/* *out = this thread's cuBLAS handle, bound to stream s. */
static int blas_handle(cublasHandle_t *out, kernels_stream *s)
{
    pthread_once(&g_once, blas_init_once);
    if (!g_key_ok)
        return RT_ERR_DEVICE;
    int rc = kernels_cuda_enter();
    if (rc != RT_OK)
        return rc;
    cublasHandle_t h = pthread_getspecific(g_handle_key);
    if (!h) {
        rc = BLAS_TRY(cublasCreate(&h));
        if (rc != RT_OK)
            return rc;
        if (pthread_setspecific(g_handle_key, h) != 0) {
            cublasDestroy(h);
            return RT_ERR_NOMEM;
        }
    }
    rc = BLAS_TRY(cublasSetStream(h, kernels_cuda_stream(s)));
    if (rc == RT_OK)
        *out = h;
    return rc;
}

static int imax1(int x) { return x > 1 ? x : 1; }

/* Row-major strided-batched gemm; see cuda.h. A row-major [r, c] matrix
 * with row stride ld is the column-major [c, r] matrix with leading
 * dimension ld, so row-major C = op(A) op(B) is column-major
 * C^T = op(B)^T op(A)^T: the call swaps the operands and m with n and keeps
 * each transpose flag. */
int kernels_cuda_gemm(float *c, const float *a, const float *b, int m, int n, int k,
                      int trans_a, int trans_b, float alpha, float beta,
                      int lda, int ldb, int ldc, int64_t stride_a, int64_t stride_b,
                      int64_t stride_c, int batch, kernels_stream *s)
{
    if (m == 0 || n == 0 || batch == 0)
        return RT_OK;
    if (k == 0)
        return kernels_cuda_scale_rows(c, m, n, ldc, stride_c, batch, beta, s);
    cublasHandle_t h;
    int rc = blas_handle(&h, s);
    if (rc != RT_OK)
        return rc;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        return BLAS_TRY(cublasGemmEx(h, op_b, op_a, n, m, k, &alpha, b, CUDA_R_32F, ldb, a,
                                     CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc, g_compute,
                                     CUBLAS_GEMM_DEFAULT));
    return BLAS_TRY(cublasGemmStridedBatchedEx(h, op_b, op_a, n, m, k, &alpha, b, CUDA_R_32F, ldb,
                                               stride_b, a, CUDA_R_32F, lda, stride_a, &beta, c,
                                               CUDA_R_32F, ldc, stride_c, batch, g_compute,
                                               CUBLAS_GEMM_DEFAULT));
}

/* Row-major pointer-array batched gemm; see cuda.h. Same operand swap as
 * kernels_cuda_gemm. */
int kernels_cuda_gemm_batched(float *const *c, const float *const *a, const float *const *b,
                              int m, int n, int k, int trans_a, int trans_b, float alpha,
                              float beta, int lda, int ldb, int ldc, int batch, kernels_stream *s)
{
    if (m == 0 || n == 0 || batch == 0)
        return RT_OK;
    if (k == 0)
        return RT_ERR_INVALID; /* no caller needs it */
    cublasHandle_t h;
    int rc = blas_handle(&h, s);
    if (rc != RT_OK)
        return rc;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    return BLAS_TRY(cublasGemmBatchedEx(h, op_b, op_a, n, m, k, &alpha, (const void *const *)b,
                                        CUDA_R_32F, ldb, (const void *const *)a, CUDA_R_32F, lda,
                                        &beta, (void *const *)c, CUDA_R_32F, ldc, batch, g_compute,
                                        CUBLAS_GEMM_DEFAULT));
}

/* Dense row-major c = alpha op(a) op(b) + beta c; see kernels.h. */
int kernels_cuda_matmul(float *c, const float *a, const float *b, int m, int n, int k,
                        int trans_a, int trans_b, float alpha, float beta, kernels_stream *s)
{
    if (m < 0 || n < 0 || k < 0 || !c || !a || !b)
        return RT_ERR_INVALID;
    return kernels_cuda_gemm(c, a, b, m, n, k, trans_a, trans_b, alpha, beta,
                             imax1(trans_a ? m : k), imax1(trans_b ? k : n), imax1(n), 0, 0, 0, 1,
                             s);
}

/* Strided-batched gemm with explicit leading dimensions; see kernels.h. */
int kernels_cuda_matmul_strided_batched(float *c, const float *a, const float *b,
                                        int m, int n, int k, int trans_a, int trans_b,
                                        float alpha, float beta, int lda, int ldb, int ldc,
                                        int64_t stride_a, int64_t stride_b, int64_t stride_c,
                                        int batch, kernels_stream *s)
{
    if (m < 0 || n < 0 || k < 0 || batch < 0 || !c || !a || !b)
        return RT_ERR_INVALID;
    if (lda < imax1(trans_a ? m : k) || ldb < imax1(trans_b ? k : n) || ldc < imax1(n))
        return RT_ERR_INVALID;
    return kernels_cuda_gemm(c, a, b, m, n, k, trans_a, trans_b, alpha, beta, lda, ldb, ldc,
                             stride_a, stride_b, stride_c, batch, s);
}

/* out[N,OC] = inp[N,C] weight[OC,C]^T, then + bias per row. */
int kernels_cuda_linear_forward(float *out, const float *inp, const float *weight,
                                const float *bias, int N, int C, int OC, kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || !out || !inp || !weight)
        return RT_ERR_INVALID;
    int rc = kernels_cuda_gemm(out, inp, weight, N, OC, C, 0, 1, 1, 0, imax1(C), imax1(C),
                               imax1(OC), 0, 0, 0, 1, s);
    if (rc == RT_OK && bias)
        rc = kernels_cuda_bias_forward(out, bias, N, OC, s);
    return rc;
}

/* dinp += dout weight, dweight += dout^T inp, dbias += colsum(dout). */
int kernels_cuda_linear_backward(float *dinp, float *dweight, float *dbias,
                                 const float *dout, const float *inp, const float *weight,
                                 int N, int C, int OC, kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || !dout || (dinp && !weight) || (dweight && !inp))
        return RT_ERR_INVALID;
    int rc = RT_OK;
    if (dinp)
        rc = kernels_cuda_gemm(dinp, dout, weight, N, C, OC, 0, 0, 1, 1, imax1(OC), imax1(C),
                               imax1(C), 0, 0, 0, 1, s);
    if (rc == RT_OK && dweight)
        rc = kernels_cuda_gemm(dweight, dout, inp, OC, C, N, 1, 0, 1, 1, imax1(OC), imax1(C),
                               imax1(C), 0, 0, 0, 1, s);
    if (rc == RT_OK && dbias)
        rc = kernels_cuda_colsum(dbias, dout, NULL, NULL, N, OC, s);
    return rc;
}
