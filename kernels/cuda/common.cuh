/*
 * kernels/cuda/common.cuh — what the .cu files of the CUDA backend share:
 * the launch macro (every launch is followed by a checked
 * cudaGetLastError), grid sizing, and warp/block reductions.
 *
 * KERNELS_CUDA_EMU (never set by the Makefile) compiles the kernels as host
 * C++ against an emulation of the CUDA runtime, so that their index
 * arithmetic and reductions can be run and tested on a machine without a
 * GPU; the launch macro is the only place that differs.
 */
#ifndef RT_KERNELS_CUDA_COMMON_CUH
#define RT_KERNELS_CUDA_COMMON_CUH

#include "kernels/cuda/cuda.h"

#ifdef KERNELS_CUDA_EMU
#include "cuda_emu.h"
#define KERNELS_LAUNCH(kernel, grid, block, smem, s, ...) \
    emu_launch(dim3(grid), dim3(block), (smem), [=]() { kernel(__VA_ARGS__); })
#else
#include <cuda_runtime.h>
#define KERNELS_LAUNCH(kernel, grid, block, smem, s, ...) \
    kernel<<<(grid), (block), (smem), kernels_cuda_stream(s)>>>(__VA_ARGS__)
#endif

#include <math.h>
#include <stdint.h>

/* The rt_error of the launch just made (configuration errors show here;
 * faults while running show at the next synchronize or copy). */
#define KERNELS_LAUNCHED(name) kernels_cuda_check(cudaGetLastError(), name, __FILE__, __LINE__)

/* Returns the rt_error when the calling thread cannot be put on the GPU. */
#define KERNELS_ENTER()                    \
    do {                                   \
        int enter_rc_ = kernels_cuda_enter(); \
        if (enter_rc_ != RT_OK)            \
            return enter_rc_;              \
    } while (0)

/* Threads per block of the 1-D kernels; a multiple of 32. */
#define KERNELS_THREADS 256

/* Blocks for a grid-stride loop over n items, KERNELS_THREADS per block
 * (capped: each thread then takes several items). n > 0. */
static inline unsigned kernels_blocks(int64_t n)
{
    int64_t b = (n + KERNELS_THREADS - 1) / KERNELS_THREADS;
    return (unsigned)(b < 65536 ? b : 65536);
}

/* The grid-stride loop of a 1-D kernel over [0, n). */
#define KERNELS_FOR(i, n)                                                        \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float kernels_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double kernels_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Merges two (max, sum of exp(x - max)) pairs of an online softmax; a pair
 * with max -inf is empty. */
__device__ __forceinline__ void kernels_lse_merge(float *m, float *l, float om, float ol)
{
    float M = fmaxf(*m, om);
    if (M == -INFINITY)
        return;
    float a = *m == -INFINITY ? 0.0f : *l * expf(*m - M);
    float b = om == -INFINITY ? 0.0f : ol * expf(om - M);
    *m = M;
    *l = a + b;
}

/* The (max, sum) pair of the whole warp, in every lane. */
__device__ __forceinline__ void kernels_warp_lse(float *m, float *l)
{
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, *m, o);
        float ol = __shfl_xor_sync(0xffffffffu, *l, o);
        kernels_lse_merge(m, l, om, ol);
    }
}

/* The sum of v over the block, returned to every thread. blockDim.x is a
 * multiple of 32 (at most 1024); every thread of the block must call it. */
__device__ __forceinline__ float kernels_block_sum(float v)
{
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kernels_warp_sum(v);
    __syncthreads(); /* part may still be read by a previous call */
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    return kernels_warp_sum(lane < nw ? part[lane] : 0.0f);
}

/* kernels_block_sum in double. */
__device__ __forceinline__ double kernels_block_sum_d(double v)
{
    __shared__ double part_d[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kernels_warp_sum_d(v);
    __syncthreads();
    if (lane == 0)
        part_d[warp] = v;
    __syncthreads();
    return kernels_warp_sum_d(lane < nw ? part_d[lane] : 0.0);
}

#endif
