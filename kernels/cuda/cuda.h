/*
 * kernels/cuda/cuda.h — (internal to kernels/) the "cuda" kernels_backend:
 * the launchers kernels_cuda_<op> that fill its table, with the arguments of
 * their CPU twins kernels_<op> (the very prototypes of kernels/cpu/cpu_decl.h,
 * so the two cannot drift apart), plus the helpers the launchers share. The
 * engine reaches all of it only through kernels_backend_get("cuda[:N]").
 *
 * Launchers queue work on their stream and return at once. They check their
 * arguments as the CPU twins do (RT_ERR_INVALID) except for what lives in
 * device memory (token ids, targets), which they cannot read without waiting:
 * see each op in kernels/cuda/ops.cu. Every CUDA and cuBLAS call is checked;
 * a failure is logged and returned as RT_ERR_DEVICE (RT_ERR_NOMEM when the
 * GPU is out of memory).
 *
 * One process drives one GPU: the first kernels_cuda_backend() binds it, and
 * every launcher first makes sure the calling thread is on that device.
 */
#ifndef RT_KERNELS_CUDA_H
#define RT_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* *out = the CUDA backend on GPU index (binding the process to it). Codes as
 * kernels_backend_get: RT_ERR_UNSUPPORTED without a GPU or driver, or for a
 * second GPU; RT_ERR_NOT_FOUND for an index past the last GPU; RT_ERR_DEVICE
 * when the device fails to start. *out untouched on failure. */
int kernels_cuda_backend(int index, const kernels_backend **out);

/* Makes the calling thread's current device the bound GPU (cudaSetDevice
 * once per thread). RT_OK, or RT_ERR_DEVICE. */
int kernels_cuda_enter(void);

/* Turns a CUDA runtime result into an rt_error code, logging a failure with
 * what (the call) and where. cudaErrorMemoryAllocation is RT_ERR_NOMEM. */
int kernels_cuda_check(cudaError_t e, const char *what, const char *file, int line);
/* The largest head_dim of the cached (serving) attention kernel: a warp
 * holds a query of up to this many floats in registers. */
#define KERNELS_CUDA_MAX_KV_HEAD_DIM 256

#define KERNELS_CUDA_TRY(call) kernels_cuda_check((call), #call, __FILE__, __LINE__)

/* The stream of a kernels_stream (NULL = the legacy default stream). */
static inline cudaStream_t kernels_cuda_stream(kernels_stream *s) { return (cudaStream_t)s; }

/* Row-major strided-batched c_i = alpha op(a_i) op(b_i) + beta c_i through
 * cuBLAS (the matmul_strided_batched contract; batch 1 is a plain gemm).
 * Empty products (m, n or batch 0) do nothing; k = 0 scales c by beta.
 * Uses TF32 tensor cores unless RETUNE_CUDA_TF32=0 was set at start. */
int kernels_cuda_gemm(float *c, const float *a, const float *b, int m, int n, int k,
                      int trans_a, int trans_b, float alpha, float beta,
                      int lda, int ldb, int ldc, int64_t stride_a, int64_t stride_b,
                      int64_t stride_c, int batch, kernels_stream *s);

/* As kernels_cuda_gemm with device arrays of batch device pointers for
 * the operands (cublasGemmBatchedEx) and one shape for all; k > 0. The
 * products may run concurrently: no two c blocks may overlap. */
int kernels_cuda_gemm_batched(float *const *c, const float *const *a, const float *const *b,
                              int m, int n, int k, int trans_a, int trans_b, float alpha,
                              float beta, int lda, int ldb, int ldc, int batch, kernels_stream *s);

/* c[i, j] = beta == 0 ? 0 : beta * c[i, j] for an [m, n] block with row
 * stride ldc, repeated batch times stride_c apart (the k = 0 gemm). */
int kernels_cuda_scale_rows(float *c, int m, int n, int ldc, int64_t stride_c, int batch,
                            float beta, kernels_stream *s);
/* out[i, :] += bias for the N rows of out[N, OC]. */
int kernels_cuda_bias_forward(float *out, const float *bias, int N, int OC, kernels_stream *s);
/* dst[j] += sum over i < N of a[i, j] * (b ? b[i, j] : 1) * (rowscale ? rowscale[i] : 1)
 * for a, b [N, C]: linear's dbias and rmsnorm's dweight. */
int kernels_cuda_colsum(float *dst, const float *a, const float *b, const float *rowscale,
                        int N, int C, kernels_stream *s);

/* The table's ops: kernels_cuda_<op> with the CPU twin's arguments. */
#define real float
#define FN(name) kernels_cuda_##name
#include "kernels/cpu/cpu_decl.h"
#include "kernels/cpu/ops16_decl.h"
#undef FN
#undef real

/* 1 when groups[n_groups] are valid for N rows and ranks up to max_rank
 * (defined with the CPU twin in kernels/cpu/ops.c). */
int kernels_lora_groups_valid(const kernels_lora_group *groups, int n_groups, int N, int max_rank);

size_t kernels_cuda_lora_group_scratch_bytes(int N, int max_rank);
int kernels_cuda_lora_group_forward(float *y, void *scratch, const float *x,
                                    const kernels_lora_group *groups, int n_groups,
                                    int N, int C, int OC, int max_rank, kernels_stream *s);

#ifdef __cplusplus
}
#endif

#endif
