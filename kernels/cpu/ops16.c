/*
 * kernels/cpu/ops16.c — the "cpu" backend's products with frozen 16-bit
 * weights (bf16 or f16, kernels.h's linear16 ops), so that a LoRA base or a
 * served model stays in 16 bits in memory (often mapped straight from its
 * safetensors file) while every sum runs in fp32:
 *   - few rows (decode, N <= GEMV_ROWS): each weight row is read once,
 *     converted in registers and dotted with every input row. The loops use
 *     VW-float lanes so that gcc vectorizes them, compiled for AVX-512,
 *     AVX2 and the baseline and picked at load time (ifunc, as ops.c);
 *   - more rows (training, prefill): PANEL weight rows at a time are
 *     converted into the caller's scratch and multiplied by OpenBLAS sgemm.
 * Conversions are exact (bf16 and f16 are subsets of fp32), so results
 * equal the fp32 ops on the converted weights up to summation order.
 */
#include "kernels/cpu/cpu.h"

#include <cblas.h>
#include <string.h>

#ifndef __FLT16_MAX__
#error "the f16 path needs the compiler's _Float16 (gcc >= 12 on x86-64)"
#endif

#define PANEL 256   /* weight rows converted per sgemm */
#define GEMV_ROWS 8 /* up to this many input rows take the direct path */
#define VW 16       /* lanes of the direct path's accumulators */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(KERNELS_NO_CLONES)
#define HOT16 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT16
#endif

static inline float bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float f16_value(uint16_t h)
{
    _Float16 x;
    memcpy(&x, &h, sizeof x);
    return (float)x;
}

/* dst[i] = fp32(src[i]) for n elements. */
HOT16 static void convert16(float *restrict dst, const uint16_t *restrict src, size_t n,
                            kernels_dtype dt)
{
    if (dt == KERNELS_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = bf16_value(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = f16_value(src[i]);
}

/* Sums VW lanes in a fixed order (the same bits on every clone). */
static inline float lanes_sum(const float *acc)
{
    float s = 0;
    for (int j = 0; j < VW; j++)
        s += acc[j];
    return s;
}

/* The direct path for NB input rows (a compile-time count, so the row loop
 * unrolls): out[n, o] = dot(weight[o, :], inp[n, :]) for o in [0, OC). */
#define DEFINE_GEMV16(NAME, NB, CONVERT)                                                      \
    HOT16 static void NAME(float *out, const float *inp, const uint16_t *weight, int C, int OC, \
                           int ldo)                                                           \
    {                                                                                         \
        for (int o = 0; o < OC; o++) {                                                        \
            const uint16_t *restrict wr = weight + (size_t)o * C;                             \
            float acc[NB][VW];                                                                \
            memset(acc, 0, sizeof acc);                                                       \
            int c = 0;                                                                        \
            for (; c + VW <= C; c += VW) {                                                    \
                float wv[VW];                                                                 \
                for (int j = 0; j < VW; j++)                                                  \
                    wv[j] = CONVERT(wr[c + j]);                                               \
                for (int n = 0; n < NB; n++)                                                  \
                    for (int j = 0; j < VW; j++)                                              \
                        acc[n][j] += wv[j] * inp[(size_t)n * C + c + j];                      \
            }                                                                                 \
            for (; c < C; c++)                                                                \
                for (int n = 0; n < NB; n++)                                                  \
                    acc[n][0] += CONVERT(wr[c]) * inp[(size_t)n * C + c];                     \
            for (int n = 0; n < NB; n++)                                                      \
                out[(size_t)n * ldo + o] = lanes_sum(acc[n]);                                 \
        }                                                                                     \
    }

DEFINE_GEMV16(gemv16_bf16_1, 1, bf16_value)
DEFINE_GEMV16(gemv16_bf16_2, 2, bf16_value)
DEFINE_GEMV16(gemv16_bf16_4, 4, bf16_value)
DEFINE_GEMV16(gemv16_f16_1, 1, f16_value)
DEFINE_GEMV16(gemv16_f16_2, 2, f16_value)
DEFINE_GEMV16(gemv16_f16_4, 4, f16_value)

/* The direct path over N <= GEMV_ROWS rows, in blocks of 4, 2 and 1. */
static void gemv16(float *out, const float *inp, const uint16_t *weight, kernels_dtype dt,
                   int N, int C, int OC)
{
    typedef void (*gemv_fn)(float *, const float *, const uint16_t *, int, int, int);
    gemv_fn f1 = dt == KERNELS_BF16 ? gemv16_bf16_1 : gemv16_f16_1;
    gemv_fn f2 = dt == KERNELS_BF16 ? gemv16_bf16_2 : gemv16_f16_2;
    gemv_fn f4 = dt == KERNELS_BF16 ? gemv16_bf16_4 : gemv16_f16_4;
    int n = 0;
    for (; n + 4 <= N; n += 4)
        f4(out + (size_t)n * OC, inp + (size_t)n * C, weight, C, OC, OC);
    for (; n + 2 <= N; n += 2)
        f2(out + (size_t)n * OC, inp + (size_t)n * C, weight, C, OC, OC);
    for (; n < N; n++)
        f1(out + (size_t)n * OC, inp + (size_t)n * C, weight, C, OC, OC);
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
        (N > GEMV_ROWS && C > 0 && OC > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N <= GEMV_ROWS) {
        gemv16(out, inp, weight, dt, N, C, OC);
    } else {
        float *panel = scratch;
        for (int o0 = 0; o0 < OC; o0 += PANEL) {
            int p = OC - o0 < PANEL ? OC - o0 : PANEL;
            convert16(panel, weight + (size_t)o0 * C, (size_t)p * C, dt);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, p, C, 1.0f, inp,
                        C > 1 ? C : 1, panel, C > 1 ? C : 1, 0.0f, out + o0, OC);
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
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, p, 1.0f, dout + o0, OC,
                    panel, C, 1.0f, dinp, C);
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
