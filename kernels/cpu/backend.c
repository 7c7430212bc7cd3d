/*
 * kernels/cpu/backend.c — the "cpu" kernels_backend: host memory stands in
 * for device memory (64-byte aligned malloc), copies are memcpy, streams do
 * not exist (NULL) and every op runs synchronously: on the calling thread,
 * or split over the backend's own sleeping pool (kernels/cpu/pool.h), which
 * also runs every large sgemm, OpenBLAS itself single-threaded. The table
 * is a static constant.
 */
#include "kernels/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

/* 64-byte aligned host memory; the size is rounded up as aligned_alloc
 * requires. RT_ERR_NOMEM on failure. */
static int cpu_alloc(void **out, size_t bytes)
{
    if (!out)
        return RT_ERR_INVALID;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes)
        return RT_ERR_NOMEM;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        return RT_ERR_NOMEM;
    *out = p;
    return RT_OK;
}

static void cpu_free(void *ptr) { free(ptr); }

static int cpu_copy(void *dst, const void *src, size_t bytes, kernels_stream *s)
{
    (void)s;
    if (bytes && (!dst || !src))
        return RT_ERR_INVALID;
    if (bytes)
        memmove(dst, src, bytes);
    return RT_OK;
}

static int cpu_zero(void *dst, size_t bytes, kernels_stream *s)
{
    (void)s;
    if (bytes && !dst)
        return RT_ERR_INVALID;
    if (bytes)
        memset(dst, 0, bytes);
    return RT_OK;
}

static int cpu_synchronize(kernels_stream *s)
{
    (void)s;
    return RT_OK;
}

static int cpu_stream_create(kernels_stream **out)
{
    if (!out)
        return RT_ERR_INVALID;
    *out = NULL;
    return RT_OK;
}

static void cpu_stream_free(kernels_stream *s) { (void)s; }

static const kernels_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_to_device = cpu_copy,
    .copy_to_host = cpu_copy,
    .copy_device = cpu_copy,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .stream_create = cpu_stream_create,
    .stream_free = cpu_stream_free,
    .matmul = kernels_matmul,
    .matmul_strided_batched = kernels_matmul_strided_batched,
    .linear_forward = kernels_linear_forward,
    .linear_backward = kernels_linear_backward,
    .linear16_scratch_bytes = kernels_linear16_scratch_bytes,
    .linear16_forward = kernels_linear16_forward,
    .linear16_backward = kernels_linear16_backward,
    .embedding16_forward = kernels_embedding16_forward,
    .embedding_forward = kernels_embedding_forward,
    .embedding_backward = kernels_embedding_backward,
    .rmsnorm_forward = kernels_rmsnorm_forward,
    .rmsnorm_backward = kernels_rmsnorm_backward,
    .rope_forward = kernels_rope_forward,
    .rope_backward = kernels_rope_backward,
    .attention_scratch_bytes = kernels_attention_scratch_bytes,
    .attention_forward = kernels_attention_forward,
    .attention_backward = kernels_attention_backward,
    .attention_kv_scratch_bytes = kernels_attention_kv_scratch_bytes,
    .attention_kv_forward = kernels_attention_kv_forward,
    .swiglu_forward = kernels_swiglu_forward,
    .swiglu_backward = kernels_swiglu_backward,
    .cross_entropy_forward = kernels_cross_entropy_forward,
    .cross_entropy_backward = kernels_cross_entropy_backward,
    .add = kernels_add,
    .axpy = kernels_axpy,
    .scale = kernels_scale,
    .mul_forward = kernels_mul_forward,
    .mul_backward = kernels_mul_backward,
    .sum_squares = kernels_sum_squares,
    .adamw_step = kernels_adamw_step,
    .lora_group_scratch_bytes = kernels_lora_group_scratch_bytes,
    .lora_group_forward = kernels_lora_group_forward,
    .linear_lora_scratch_bytes = kernels_linear_lora_scratch_bytes,
    .linear_lora_forward = kernels_linear_lora_forward,
    .attention_kv_batch_forward = kernels_attention_kv_batch_forward,
};

/* The CPU backend table; static, never freed. */
const kernels_backend *kernels_cpu_backend(void) { return &cpu_backend; }
