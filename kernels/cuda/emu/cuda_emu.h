/*
 * kernels/cuda/emu/cuda_emu.h — (test-only) a host emulation of the part of
 * CUDA's device side that the backend's .cu files use, so that their
 * kernels can be compiled as plain C++ (-DKERNELS_CUDA_EMU, see
 * common.cuh) and run on a machine without a GPU. Not part of any build of
 * retune; run.sh uses it.
 *
 * A launch runs its blocks one after another; each block runs blockDim
 * fibers (ucontext) on the calling thread, switched only at __syncthreads()
 * (a block barrier) and at warp shuffles (a barrier of the warp's lanes).
 * __shared__ variables become statics, which is right for one block at a
 * time. Atomics are plain read-modify-writes (nothing runs concurrently).
 * What it cannot show: races between threads of a block or between blocks,
 * and performance.
 */
#ifndef RT_CUDA_EMU_H
#define RT_CUDA_EMU_H

#include <cuda_runtime_api.h> /* dim3, uint3, cudaError_t, ... */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

extern uint3 emu_threadIdx, emu_blockIdx;
extern dim3 emu_blockDim, emu_gridDim;
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim

void __syncthreads();
/* Waits until every live lane of the calling thread's warp has called it. */
void emu_warp_sync();
/* The calling thread's linear index in its block. */
int emu_linear_tid();
/* The exchange buffer of warp w: 32 slots of 8 bytes. */
void *emu_xbuf(int w);

template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    (void)mask;
    int t = emu_linear_tid(), lane = t & 31;
    char *buf = (char *)emu_xbuf(t >> 5);
    memcpy(buf + 8 * lane, &v, sizeof v);
    emu_warp_sync();
    T r;
    memcpy(&r, buf + 8 * (lane ^ lane_mask), sizeof r);
    emu_warp_sync(); /* nobody overwrites a slot before all have read */
    return r;
}

static inline float atomicAdd(float *p, float v)
{
    float old = *p;
    *p = old + v;
    return old;
}

static inline double atomicAdd(double *p, double v)
{
    double old = *p;
    *p = old + v;
    return old;
}

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

/* Runs f as the body of every thread of a grid x block launch, now. A bad
 * configuration is reported through cudaGetLastError(), as on a GPU. */
void emu_launch_fn(dim3 grid, dim3 block, size_t smem, std::function<void()> f);

template <class F> static inline void emu_launch(dim3 grid, dim3 block, size_t smem, F f)
{
    emu_launch_fn(grid, block, smem, std::function<void()>(f));
}

#endif
