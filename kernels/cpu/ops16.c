/*
 * kernels/cpu/ops16.c — the "cpu" backend's products with frozen 16-bit
 * weights (bf16 or f16, kernels.h's linear16 ops), so that a LoRA base or a
 * served model stays in 16 bits in memory (often mapped straight from its
 * safetensors file) while every sum runs in fp32:
 *   - few rows (decode, short prefills, N <= CPU_GEMV_ROWS): the direct
 *     path of kernels/cpu/gemv.h reads each weight once, converts it in
 *     registers and dots it with every input row, on the backend's threads;
 *   - more rows (training, prefill): PANEL weight rows at a time are
 *     converted into the caller's scratch and multiplied by sgemm (gemm.h).
 * Conversions are exact (bf16 and f16 are subsets of fp32), so results
 * equal the fp32 ops on the converted weights up to summation order.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv.h"

#include <stdbool.h>
#include <string.h>

#define PANEL 256 /* weight rows converted per sgemm */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(KERNELS_NO_CLONES) && !defined(__SANITIZE_THREAD__) /* TSan: resolvers run too early */
#define HOT16 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT16
#endif


/* dst[i] = fp32(src[i]) for n elements. */
HOT16 static void convert16(float *restrict dst, const uint16_t *restrict src, size_t n,
                            kernels_dtype dt)
{
    if (dt == KERNELS_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = cpu_bf16_value(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = cpu_f16_value(src[i]);
}

/* The direct path for few rows (kernels/cpu/gemv.h). */
static void gemv16(float *out, const float *inp, const uint16_t *weight, kernels_dtype dt,
                   int N, int C, int OC)
{
    cpu_gemv(&(cpu_gemv_args){.out = out, .ldo = OC, .inp = inp, .ldi = C, .weight = weight,
                              .wt = dt == KERNELS_BF16 ? CPU_W_BF16 : CPU_W_F16, .N = N,
                              .C = C, .OC = OC, .alpha = 1.0f});
}

static int dtype_ok(kernels_dtype dt)
{
    return dt == KERNELS_BF16 || dt == KERNELS_F16;
}

size_t kernels_linear16_scratch_bytes(int N, int C, int OC)
{
    (void)N;
    if (C <= 0 || OC <= 0)
        return 0;
    return (size_t)(OC < PANEL ? OC : PANEL) * (size_t)C * sizeof(float);
}

int kernels_linear16_forward(float *out, void *scratch, const float *inp, const uint16_t *weight,
                             kernels_dtype dt, const float *bias, int N, int C, int OC,
                             kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || !out || !inp || !weight || !dtype_ok(dt) ||
        (N > CPU_GEMV_ROWS && C > 0 && OC > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N <= CPU_GEMV_ROWS) {
        gemv16(out, inp, weight, dt, N, C, OC);
    } else {
        float *panel = scratch;
        for (int o0 = 0; o0 < OC; o0 += PANEL) {
            int p = OC - o0 < PANEL ? OC - o0 : PANEL;
            convert16(panel, weight + (size_t)o0 * C, (size_t)p * C, dt);
            cpu_sgemm(0, 1, N, p, C, 1.0f, inp, C > 1 ? C : 1, panel, C > 1 ? C : 1, 0.0f,
                      out + o0, OC);
        }
    }
    for (int i = 0; bias && i < N; i++) {
        float *restrict o = out + (size_t)i * OC;
        for (int j = 0; j < OC; j++)
            o[j] += bias[j];
    }
    return RT_OK;
}

int kernels_linear16_backward(float *dinp, void *scratch, const float *dout,
                              const uint16_t *weight, kernels_dtype dt, int N, int C, int OC,
                              kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || !dinp || !dout || !weight || !dtype_ok(dt) ||
        (N > 0 && C > 0 && OC > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N == 0 || C == 0)
        return RT_OK;
    float *panel = scratch;
    for (int o0 = 0; o0 < OC; o0 += PANEL) {
        int p = OC - o0 < PANEL ? OC - o0 : PANEL;
        convert16(panel, weight + (size_t)o0 * C, (size_t)p * C, dt);
        cpu_sgemm(0, 0, N, C, p, 1.0f, dout + o0, OC, panel, C, 1.0f, dinp, C);
    }
    return RT_OK;
}

int kernels_embedding16_forward(float *out, const int32_t *ids, const uint16_t *table,
                                kernels_dtype dt, int N, int C, int V, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || V < 0 || !out || !ids || !table || !dtype_ok(dt))
        return RT_ERR_INVALID;
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return RT_ERR_INVALID;
    for (int i = 0; i < N; i++)
        convert16(out + (size_t)i * C, table + (size_t)ids[i] * C, (size_t)C, dt);
    return RT_OK;
}
