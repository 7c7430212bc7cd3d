/*
 * kernels/cuda/backend.c — the "cuda" kernels_backend: picks and binds the
 * GPU, device memory (plain cudaMalloc, never managed memory), copies,
 * streams, and the table of launchers (the .cu files and blas.c).
 *
 * Copies to and from the host wait for their stream before returning, as
 * the interface promises (the host buffer is reusable, the data is there).
 * Streams are ordinary blocking CUDA streams, so work on the NULL (legacy
 * default) stream and on created streams stays ordered as the engine
 * expects when it mixes them.
 */
#include "kernels/cuda/cuda.h"

#include <pthread.h>
#include <stdatomic.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_device = -1;        /* the bound GPU; -1 until the first success */
static _Thread_local int t_device = -1; /* the device this thread last set */

/* Maps and logs a CUDA failure; see cuda.h. */
int kernels_cuda_check(cudaError_t e, const char *what, const char *file, int line)
{
    if (e == cudaSuccess)
        return RT_OK;
    rt_log(RT_LOG_ERROR, "cuda: %s failed: %s (%s:%d)", what, cudaGetErrorString(e), file, line);
    return e == cudaErrorMemoryAllocation ? RT_ERR_NOMEM : RT_ERR_DEVICE;
}

/* Puts the calling thread on the bound GPU; see cuda.h. */
int kernels_cuda_enter(void)
{
    int dev = atomic_load_explicit(&g_device, memory_order_relaxed);
    if (t_device == dev)
        return RT_OK;
    int rc = KERNELS_CUDA_TRY(cudaSetDevice(dev));
    if (rc == RT_OK)
        t_device = dev;
    return rc;
}

/* ---- memory and streams --------------------------------------------------- */

/* Device memory from cudaMalloc (256-byte aligned); zero bytes still gets a
 * valid pointer. RT_ERR_NOMEM when the GPU is full. */
static int cuda_alloc(void **out, size_t bytes)
{
    if (!out)
        return RT_ERR_INVALID;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes)
        return RT_ERR_NOMEM;
    int rc = kernels_cuda_enter();
    void *p = NULL;
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaMalloc(&p, rounded ? rounded : 64));
    if (rc == RT_OK)
        *out = p;
    return rc;
}

static void cuda_free(void *ptr)
{
    if (ptr && kernels_cuda_enter() == RT_OK)
        KERNELS_CUDA_TRY(cudaFree(ptr));
}

/* One cudaMemcpyAsync of kind on s; wait = 1 also waits for s. */
static int cuda_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                     int wait, kernels_stream *s)
{
    if (bytes && (!dst || !src))
        return RT_ERR_INVALID;
    if (!bytes)
        return RT_OK;
    int rc = kernels_cuda_enter();
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, kernels_cuda_stream(s)));
    if (rc == RT_OK && wait)
        rc = KERNELS_CUDA_TRY(cudaStreamSynchronize(kernels_cuda_stream(s)));
    return rc;
}

static int cuda_copy_to_device(void *dst, const void *src_host, size_t bytes, kernels_stream *s)
{
    return cuda_copy(dst, src_host, bytes, cudaMemcpyHostToDevice, 1, s);
}

static int cuda_copy_to_host(void *dst_host, const void *src, size_t bytes, kernels_stream *s)
{
    return cuda_copy(dst_host, src, bytes, cudaMemcpyDeviceToHost, 1, s);
}

static int cuda_copy_device(void *dst, const void *src, size_t bytes, kernels_stream *s)
{
    return cuda_copy(dst, src, bytes, cudaMemcpyDeviceToDevice, 0, s);
}

static int cuda_zero(void *dst, size_t bytes, kernels_stream *s)
{
    if (bytes && !dst)
        return RT_ERR_INVALID;
    if (!bytes)
        return RT_OK;
    int rc = kernels_cuda_enter();
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, kernels_cuda_stream(s)));
    return rc;
}

/* Waits for s; a failure of earlier asynchronous work surfaces here. */
static int cuda_synchronize(kernels_stream *s)
{
    int rc = kernels_cuda_enter();
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaStreamSynchronize(kernels_cuda_stream(s)));
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaGetLastError());
    return rc;
}

static int cuda_stream_create(kernels_stream **out)
{
    if (!out)
        return RT_ERR_INVALID;
    cudaStream_t st = NULL;
    int rc = kernels_cuda_enter();
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaStreamCreate(&st));
    if (rc == RT_OK)
        *out = (kernels_stream *)st;
    return rc;
}

static void cuda_stream_free(kernels_stream *s)
{
    if (s && kernels_cuda_enter() == RT_OK)
        KERNELS_CUDA_TRY(cudaStreamDestroy(kernels_cuda_stream(s)));
}

static const kernels_backend cuda_backend = {
    .name = "cuda",
    .max_kv_head_dim = KERNELS_CUDA_MAX_KV_HEAD_DIM,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy_to_device = cuda_copy_to_device,
    .copy_to_host = cuda_copy_to_host,
    .copy_device = cuda_copy_device,
    .zero = cuda_zero,
    .synchronize = cuda_synchronize,
    .stream_create = cuda_stream_create,
    .stream_free = cuda_stream_free,
    .matmul = kernels_cuda_matmul,
    .matmul_strided_batched = kernels_cuda_matmul_strided_batched,
    .linear_forward = kernels_cuda_linear_forward,
    .linear_backward = kernels_cuda_linear_backward,
    .linear16_scratch_bytes = kernels_cuda_linear16_scratch_bytes,
    .linear16_forward = kernels_cuda_linear16_forward,
    .linear16_backward = kernels_cuda_linear16_backward,
    .embedding16_forward = kernels_cuda_embedding16_forward,
    .embedding_forward = kernels_cuda_embedding_forward,
    .embedding_backward = kernels_cuda_embedding_backward,
    .rmsnorm_forward = kernels_cuda_rmsnorm_forward,
    .rmsnorm_backward = kernels_cuda_rmsnorm_backward,
    .rope_forward = kernels_cuda_rope_forward,
    .rope_backward = kernels_cuda_rope_backward,
    .attention_scratch_bytes = kernels_cuda_attention_scratch_bytes,
    .attention_forward = kernels_cuda_attention_forward,
    .attention_backward = kernels_cuda_attention_backward,
    .attention_kv_scratch_bytes = kernels_cuda_attention_kv_scratch_bytes,
    .attention_kv_forward = kernels_cuda_attention_kv_forward,
    .swiglu_forward = kernels_cuda_swiglu_forward,
    .swiglu_backward = kernels_cuda_swiglu_backward,
    .cross_entropy_forward = kernels_cuda_cross_entropy_forward,
    .cross_entropy_backward = kernels_cuda_cross_entropy_backward,
    .add = kernels_cuda_add,
    .axpy = kernels_cuda_axpy,
    .scale = kernels_cuda_scale,
    .mul_forward = kernels_cuda_mul_forward,
    .mul_backward = kernels_cuda_mul_backward,
    .sum_squares = kernels_cuda_sum_squares,
    .adamw_step = kernels_cuda_adamw_step,
    .lora_group_scratch_bytes = kernels_cuda_lora_group_scratch_bytes,
    .lora_group_forward = kernels_cuda_lora_group_forward,
};

/* ---- picking the GPU ------------------------------------------------------ */

/* Binds GPU index under g_lock: checks that it exists and starts its
 * context (cudaFree(NULL) forces the lazy initialization now, so a broken
 * device fails here rather than in the first op). */
static int bind_device(int index)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
        (e == cudaSuccess && count == 0)) {
        cudaGetLastError(); /* clear it: not a failure of this process */
        return RT_ERR_UNSUPPORTED;
    }
    int rc = kernels_cuda_check(e, "cudaGetDeviceCount", __FILE__, __LINE__);
    if (rc != RT_OK)
        return rc;
    if (index < 0 || index >= count)
        return RT_ERR_NOT_FOUND;
    rc = KERNELS_CUDA_TRY(cudaSetDevice(index));
    if (rc == RT_OK)
        rc = KERNELS_CUDA_TRY(cudaFree(NULL));
    if (rc != RT_OK)
        return rc;
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, index) == cudaSuccess)
        rt_log(RT_LOG_INFO, "cuda: using GPU %d: %s, %.1f GiB, compute capability %d.%d", index,
               prop.name, (double)prop.totalGlobalMem / (1 << 30), prop.major, prop.minor);
    g_device = index;
    t_device = index;
    return RT_OK;
}

/* The CUDA backend on GPU index; see cuda.h. */
int kernels_cuda_backend(int index, const kernels_backend **out)
{
    if (!out)
        return RT_ERR_INVALID;
    pthread_mutex_lock(&g_lock);
    int rc = RT_OK;
    int count = 0;
    if (g_device < 0)
        rc = bind_device(index);
    else if (g_device != index && (cudaGetDeviceCount(&count) != cudaSuccess || index >= count))
        rc = RT_ERR_NOT_FOUND;
    else if (g_device != index) {
        rt_log(RT_LOG_WARN, "cuda: this process already uses GPU %d; GPU %d refused", g_device,
               index);
        rc = RT_ERR_UNSUPPORTED;
    }
    pthread_mutex_unlock(&g_lock);
    if (rc == RT_OK)
        *out = &cuda_backend;
    return rc;
}
