/*
 * kernels/cuda/emu/emu_runtime.cpp — (test-only) the emulated CUDA runtime
 * and cuBLAS that kernels/cuda/emu/run.sh links retune's CUDA backend
 * against on a machine without a GPU: exactly the functions the backend
 * calls, with the real headers' signatures.
 *
 *   - One emulated GPU (EMU_NO_GPU=1: none, to test the skip path). Device
 *     memory is page-aligned host memory filled with 0x7f bytes (garbage, as
 *     cudaMalloc gives); with EMU_PROTECT=1 it is PROT_NONE except while an
 *     emulated kernel, copy or gemm runs, so host code that dereferences a
 *     device pointer crashes instead of silently working.
 *   - Every device operation holds one lock (a single device queue) and
 *     runs at once; streams exist but order nothing.
 *   - Kernels run through the fiber scheduler below (see cuda_emu.h).
 *   - gemms are naive loops; CUBLAS_COMPUTE_32F_FAST_TF32 rounds each
 *     operand to TF32 (10-bit mantissa, to nearest) and accumulates in float,
 *     so tolerances meant for the GPU's tensor cores get exercised. Batched
 *     products run last to first, to catch callers that depend on an order.
 */
#include "cuda_emu.h"

#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <map>
#include <mutex>
#include <vector>

uint3 emu_threadIdx, emu_blockIdx;
dim3 emu_blockDim, emu_gridDim;

/* ---- device memory and the device lock ------------------------------------ */

static std::recursive_mutex dev_lock;
static int dev_depth;                 /* nesting of dev_open under dev_lock */
static std::map<void *, size_t> allocs;
static cudaError_t last_error = cudaSuccess;

static bool protecting()
{
    static int on = -1;
    if (on < 0)
        on = getenv("EMU_PROTECT") != NULL;
    return on;
}

static void dev_access(bool open)
{
    if (!protecting())
        return;
    for (auto &a : allocs)
        mprotect(a.first, a.second, open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

/* Holds the device lock and opens device memory for the scope. */
struct dev_open {
    dev_open()
    {
        dev_lock.lock();
        if (dev_depth++ == 0)
            dev_access(true);
    }
    ~dev_open()
    {
        if (--dev_depth == 0)
            dev_access(false);
        dev_lock.unlock();
    }
};

/* ---- the fiber scheduler ---------------------------------------------------- */

enum { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
struct fiber {
    ucontext_t ctx;
    int state;
    char *stack;
};
static const size_t STACK = 256 * 1024;
static std::vector<fiber> fibers;
static ucontext_t sched_ctx;
static int cur, nthreads;
static std::function<void()> *body;
static char xbufs[32][32 * 8];

int emu_linear_tid() { return cur; }
void *emu_xbuf(int w) { return xbufs[w]; }

static void yield_as(int state)
{
    fibers[cur].state = state;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}

void __syncthreads() { yield_as(WAIT_BLOCK); }
void emu_warp_sync() { yield_as(WAIT_WARP); }

static void fiber_main()
{
    (*body)();
    fibers[cur].state = DONE;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}

static void set_tid(int t)
{
    cur = t;
    emu_threadIdx.x = t % emu_blockDim.x;
    emu_threadIdx.y = (t / emu_blockDim.x) % emu_blockDim.y;
    emu_threadIdx.z = t / (emu_blockDim.x * emu_blockDim.y);
}

/* Releases the waiters of a barrier every live thread (block) or every
 * live lane (warp) has reached; returns how many were released. */
static int release_barriers()
{
    int live = 0, at_block = 0, released = 0;
    for (int t = 0; t < nthreads; t++) {
        live += fibers[t].state != DONE;
        at_block += fibers[t].state == WAIT_BLOCK;
    }
    if (live && at_block == live) {
        for (int t = 0; t < nthreads; t++)
            if (fibers[t].state == WAIT_BLOCK)
                fibers[t].state = RUN, released++;
        return released;
    }
    for (int w0 = 0; w0 < nthreads; w0 += 32) {
        int wl = 0, ww = 0, end = w0 + 32 < nthreads ? w0 + 32 : nthreads;
        for (int t = w0; t < end; t++) {
            wl += fibers[t].state != DONE;
            ww += fibers[t].state == WAIT_WARP;
        }
        if (!wl || ww != wl)
            continue;
        if (wl != end - w0) {
            fprintf(stderr, "emu: a warp shuffle with only %d of %d lanes live\n", wl, end - w0);
            abort();
        }
        for (int t = w0; t < end; t++)
            fibers[t].state = RUN, released++;
    }
    return released;
}

/* Runs one block: every fiber until it waits or ends, then the barriers. */
static void run_block()
{
    for (int t = 0; t < nthreads; t++) {
        fiber &f = fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = NULL;
        makecontext(&f.ctx, fiber_main, 0);
        f.state = RUN;
    }
    for (;;) {
        for (int t = 0; t < nthreads; t++)
            if (fibers[t].state == RUN) {
                set_tid(t);
                swapcontext(&sched_ctx, &fibers[t].ctx);
            }
        bool all_done = true;
        for (int t = 0; t < nthreads; t++)
            all_done = all_done && fibers[t].state == DONE;
        if (all_done)
            return;
        if (!release_barriers()) {
            fprintf(stderr, "emu: deadlock: a barrier not every thread reaches\n");
            abort();
        }
    }
}

void emu_launch_fn(dim3 grid, dim3 block, size_t smem, std::function<void()> f)
{
    (void)smem;
    dev_open open;
    unsigned long nt = (unsigned long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || !nt || nt > 1024 ||
        block.z > 64) {
        fprintf(stderr, "emu: bad launch: grid (%u,%u,%u), block (%u,%u,%u)\n", grid.x, grid.y,
                grid.z, block.x, block.y, block.z);
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    nthreads = (int)nt;
    while (fibers.size() < nt) {
        fiber fb;
        fb.stack = (char *)malloc(STACK);
        fibers.push_back(fb);
    }
    body = &f;
    emu_blockDim = block;
    emu_gridDim = grid;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                emu_blockIdx.x = x;
                emu_blockIdx.y = y;
                emu_blockIdx.z = z;
                run_block();
            }
}

/* ---- runtime API ------------------------------------------------------------- */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    if (getenv("EMU_NO_GPU"))
        return cudaErrorNoDevice;
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d)
{
    (void)d;
    memset(p, 0, sizeof *p);
    strcpy(p->name, "emulated GPU");
    p->totalGlobalMem = (size_t)1 << 34;
    p->major = 9;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
    std::lock_guard<std::recursive_mutex> g(dev_lock);
    size_t sz = (n + 4095) / 4096 * 4096;
    void *m = mmap(NULL, sz ? sz : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return cudaErrorMemoryAllocation;
    memset(m, 0x7f, sz);
    allocs[m] = sz ? sz : 4096;
    if (protecting() && dev_depth == 0)
        mprotect(m, allocs[m], PROT_NONE);
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::recursive_mutex> g(dev_lock);
    auto it = allocs.find(p);
    if (it == allocs.end()) {
        fprintf(stderr, "emu: cudaFree of a pointer cudaMalloc did not return\n");
        abort();
    }
    munmap(p, it->second);
    allocs.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t s)
{
    (void)kind; (void)s;
    dev_open open;
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s)
{
    (void)s;
    dev_open open;
    memset(dst, v, n);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    (void)s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = (cudaStream_t)malloc(16);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free((void *)s);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

const char *cudaGetErrorString(cudaError_t e)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "emulated CUDA error %d", (int)e);
    return buf;
}

/* ---- cuBLAS ------------------------------------------------------------------- */

struct cublasContext {
    cudaStream_t s;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
    *h = (cublasHandle_t)calloc(1, sizeof(cublasContext));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s)
{
    h->s = s;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    (void)s;
    return "emulated cuBLAS error";
}

/* x rounded to TF32 (10 mantissa bits), to nearest. */
static float tf32(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    if ((b & 0x7f800000u) != 0x7f800000u)
        b = (b + 0x1000u) & 0xffffe000u;
    memcpy(&x, &b, 4);
    return x;
}

/* One column-major c = alpha op(a) op(b) + beta c. */
static void gemm1(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                  bool fast)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0;
            for (int p = 0; p < k; p++) {
                float x = ta == CUBLAS_OP_N ? a[i + (size_t)p * lda] : a[p + (size_t)i * lda];
                float y = tb == CUBLAS_OP_N ? b[p + (size_t)j * ldb] : b[j + (size_t)p * ldb];
                s += fast ? tf32(x) * tf32(y) : x * y;
            }
            float *cij = &c[i + (size_t)j * ldc];
            *cij = beta == 0 ? alpha * s : alpha * s + beta * *cij;
        }
}

/* cuBLAS's argument checks for a gemm. */
static cublasStatus_t gemm_args(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                int lda, int ldb, int ldc, cudaDataType at, cudaDataType bt,
                                cudaDataType ct)
{
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int ra = ta == CUBLAS_OP_N ? m : k, rb = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (ra > 1 ? ra : 1) || ldb < (rb > 1 ? rb : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "emu: bad gemm: m %d n %d k %d lda %d ldb %d ldc %d\n", m, n, k, lda, ldb,
                ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *a, cudaDataType at,
                            int lda, const void *b, cudaDataType bt, int ldb, const void *beta,
                            void *c, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo)
{
    (void)h; (void)algo;
    cublasStatus_t st = gemm_args(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    dev_open open;
    gemm1(ta, tb, m, n, k, *(const float *)alpha, (const float *)a, lda, (const float *)b, ldb,
          *(const float *)beta, (float *)c, ldc, comp == CUBLAS_COMPUTE_32F_FAST_TF32);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *a, cudaDataType at,
                                          int lda, long long sa, const void *b, cudaDataType bt,
                                          int ldb, long long sb, const void *beta, void *c,
                                          cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t comp, cublasGemmAlgo_t algo)
{
    (void)h; (void)algo;
    cublasStatus_t st = gemm_args(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    dev_open open;
    for (int i = batch - 1; i >= 0; i--)
        gemm1(ta, tb, m, n, k, *(const float *)alpha, (const float *)a + i * sa, lda,
              (const float *)b + i * sb, ldb, *(const float *)beta, (float *)c + i * sc, ldc,
              comp == CUBLAS_COMPUTE_32F_FAST_TF32);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const void *alpha, const void *const a[],
                                   cudaDataType at, int lda, const void *const b[],
                                   cudaDataType bt, int ldb, const void *beta, void *const c[],
                                   cudaDataType ct, int ldc, int batch, cublasComputeType_t comp,
                                   cublasGemmAlgo_t algo)
{
    (void)h; (void)algo;
    cublasStatus_t st = gemm_args(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    dev_open open;
    for (int i = batch - 1; i >= 0; i--) {
        if (!a[i] || !b[i] || !c[i]) {
            fprintf(stderr, "emu: a NULL pointer in a batched gemm\n");
            abort();
        }
        gemm1(ta, tb, m, n, k, *(const float *)alpha, (const float *)a[i], lda,
              (const float *)b[i], ldb, *(const float *)beta, (float *)c[i], ldc,
              comp == CUBLAS_COMPUTE_32F_FAST_TF32);
    }
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
