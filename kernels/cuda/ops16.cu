/*
 * kernels/cuda/ops16.cu — the "cuda" backend's products with frozen 16-bit
 * weights (bf16 or f16; the kernels.h linear16 ops), twins of
 * kernels/cpu/ops16.c: PANEL16 weight rows at a time are converted to fp32
 * into the caller's scratch and multiplied with cuBLAS (kernels_cuda_gemm,
 * TF32 as every other product of this backend). The weights stay 16-bit in
 * device memory; the conversion costs one extra pass over a panel, traded
 * for one code path shared with the fp32 ops (a 16-bit GemmEx would round
 * the activations too).
 */
#include "kernels/cuda/common.cuh"

#include <string.h>

#define PANEL16 2048 /* weight rows converted per gemm */

/* bf16 / IEEE half bits -> fp32 (exact), written out so that the host
 * emulator runs the same code. */
__host__ __device__ __forceinline__ float w16_value(uint16_t h, int dt)
{
    uint32_t bits;
    if (dt == KERNELS_BF16) {
        bits = (uint32_t)h << 16;
    } else {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
        if (exp == 0) {
            float v = (float)mant * 5.9604644775390625e-8f; /* subnormal: mant * 2^-24 */
            return sign ? -v : v;
        }
        bits = exp == 31 ? sign | 0x7f800000u | (mant << 13) : sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

__global__ void convert16_kernel(float *dst, const uint16_t *src, int64_t n, int dt)
{
    KERNELS_FOR(i, n)
        dst[i] = w16_value(src[i], dt);
}

/* dst[0, n) = fp32(src[0, n)). */
static int convert16(float *dst, const uint16_t *src, int64_t n, kernels_dtype dt,
                     kernels_stream *s)
{
    KERNELS_LAUNCH(convert16_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, dst, src, n, (int)dt);
    return KERNELS_LAUNCHED("convert16_kernel");
}

static int dtype_ok(kernels_dtype dt)
{
    return dt == KERNELS_BF16 || dt == KERNELS_F16;
}

size_t kernels_cuda_linear16_scratch_bytes(int N, int C, int OC)
{
    (void)N;
    if (C <= 0 || OC <= 0)
        return 0;
    return (size_t)(OC < PANEL16 ? OC : PANEL16) * (size_t)C * sizeof(float);
}

int kernels_cuda_linear16_forward(float *out, void *scratch, const float *inp,
                                  const uint16_t *weight, kernels_dtype dt, const float *bias,
                                  int N, int C, int OC, kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || !out || !inp || !weight || !dtype_ok(dt) ||
        (C > 0 && OC > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N == 0 || OC == 0)
        return RT_OK;
    KERNELS_ENTER();
    float *panel = (float *)scratch;
    int rc = RT_OK;
    for (int o0 = 0; rc == RT_OK && o0 < OC; o0 += PANEL16) {
        int p = OC - o0 < PANEL16 ? OC - o0 : PANEL16;
        rc = convert16(panel, weight + (size_t)o0 * C, (int64_t)p * C, dt, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm(out + o0, inp, panel, N, p, C, 0, 1, 1.0f, 0.0f, C, C, OC, 0, 0,
                                   0, 1, s);
    }
    if (rc == RT_OK && bias)
        rc = kernels_cuda_bias_forward(out, bias, N, OC, s);
    return rc;
}

int kernels_cuda_linear16_backward(float *dinp, void *scratch, const float *dout,
                                   const uint16_t *weight, kernels_dtype dt, int N, int C, int OC,
                                   kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || !dinp || !dout || !weight || !dtype_ok(dt) ||
        (C > 0 && OC > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N == 0 || C == 0 || OC == 0)
        return RT_OK;
    KERNELS_ENTER();
    float *panel = (float *)scratch;
    int rc = RT_OK;
    for (int o0 = 0; rc == RT_OK && o0 < OC; o0 += PANEL16) {
        int p = OC - o0 < PANEL16 ? OC - o0 : PANEL16;
        rc = convert16(panel, weight + (size_t)o0 * C, (int64_t)p * C, dt, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm(dinp, dout + o0, panel, N, C, p, 0, 0, 1.0f, 1.0f, OC, C, C, 0,
                                   0, 0, 1, s);
    }
    return rc;
}

__global__ void embedding16_forward_kernel(float *out, const int32_t *ids, const uint16_t *table,
                                           int dt, int C, int V)
{
    int n = blockIdx.x;
    int32_t id = ids[n];
    float *o = out + (size_t)n * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        o[j] = id < 0 || id >= V ? NAN : w16_value(table[(size_t)id * C + j], dt);
}

/* out[n] = fp32(table[ids[n]]); an id outside [0, V) gives a NaN row (as
 * the fp32 op: device ids are not read back to be checked). */
int kernels_cuda_embedding16_forward(float *out, const int32_t *ids, const uint16_t *table,
                                     kernels_dtype dt, int N, int C, int V, kernels_stream *s)
{
    if (N < 0 || C < 0 || V < 0 || !out || !ids || !table || !dtype_ok(dt))
        return RT_ERR_INVALID;
    if (N == 0 || C == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(embedding16_forward_kernel, N, KERNELS_THREADS, 0, s, out, ids, table, (int)dt,
                   C, V);
    return KERNELS_LAUNCHED("embedding16_forward_kernel");
}
