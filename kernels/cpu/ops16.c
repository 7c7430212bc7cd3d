/*
 * kernels/cpu/ops16.c — the "cpu" backend's products with frozen 16-bit
 * weights (bf16 or f16, kernels.h's linear16 ops), so that a LoRA base or a
 * served model stays in 16 bits in memory (often mapped straight from its
 * safetensors file) while every sum runs in fp32:
 *   - few rows (decode, short prefills, N <= GEMV_ROWS): each weight row is
 *     read from memory once, converted in registers and dotted with every
 *     input row, tile by tile so that the tile stays in cache while all
 *     input rows pass over it. The weight rows are split over the CPU
 *     backend's threads (kernels/cpu/pool.h): one token's decode is bound
 *     by the memory bandwidth of all cores, not one. The loops use VW-float
 *     lanes so that gcc vectorizes them, compiled for AVX-512, AVX2 and the
 *     baseline and picked at load time (ifunc, as ops.c);
 *   - more rows (training, prefill): PANEL weight rows at a time are
 *     converted into the caller's scratch and multiplied by OpenBLAS sgemm.
 * Conversions are exact (bf16 and f16 are subsets of fp32), so results
 * equal the fp32 ops on the converted weights up to summation order.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/pool.h"

#include <cblas.h>
#include <stdbool.h>
#include <string.h>

#ifndef __FLT16_MAX__
#error "the f16 path needs the compiler's _Float16 (gcc >= 12 on x86-64)"
#endif

#define PANEL 256            /* weight rows converted per sgemm */
#define GEMV_ROWS 16         /* up to this many input rows take the direct path */
#define VW 16                /* lanes of the direct path's accumulators */
#define TILE_BYTES (64 << 10) /* weight bytes of a direct-path tile (stays in L2) */
#define POOL_MIN_MACS 65536.0 /* smaller direct products run on the calling thread */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(KERNELS_NO_CLONES) && !defined(__SANITIZE_THREAD__) /* TSan: resolvers run too early */
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

/* The portable direct path for NB input rows (a compile-time count, so the
 * row loop unrolls): out[n, o] = dot(weight[o, :], inp[n, :]) for o in
 * [o0, o1). */
#define DEFINE_GEMV16(NAME, NB, CONVERT)                                                      \
    HOT16 static void NAME(float *out, const float *inp, const uint16_t *weight, int C, int o0, \
                           int o1, int ldo)                                                   \
    {                                                                                         \
        for (int o = o0; o < o1; o++) {                                                       \
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

typedef void (*gemv16_fn)(float *, const float *, const uint16_t *, int, int, int, int);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define HAVE_AVX2_GEMV 1

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline __m256 bf16x8(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2 static inline __m256 f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* The AVX2/FMA direct path (chosen at run time when the CPU has AVX2, FMA
 * and F16C) for NB input rows: weight rows one after another, so that the
 * weights are one sequential stream the hardware prefetcher follows (rows
 * of a few KB read side by side defeat it), 8 lanes at a time with U
 * independent accumulators per input row to hide the FMA latency. */
#define DEFINE_GEMV16_AVX2(NAME, NB, U, LOAD8, CONVERT)                                       \
    AVX2 static void NAME(float *out, const float *inp, const uint16_t *weight, int C, int o0,  \
                          int o1, int ldo)                                                    \
    {                                                                                         \
        for (int o = o0; o < o1; o++) {                                                       \
            const uint16_t *wr = weight + (size_t)o * C;                                      \
            __m256 acc[NB][U];                                                                \
            _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                              \
                _Pragma("GCC unroll 8") for (int u = 0; u < U; u++)                           \
                    acc[n][u] = _mm256_setzero_ps();                                          \
            int c = 0;                                                                        \
            for (; c + 8 * U <= C; c += 8 * U)                                                \
                _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {                         \
                    __m256 w = LOAD8(wr + c + 8 * u);                                         \
                    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                      \
                        acc[n][u] = _mm256_fmadd_ps(                                          \
                            w, _mm256_loadu_ps(inp + (size_t)n * C + c + 8 * u), acc[n][u]);  \
                }                                                                             \
            for (; c + 8 <= C; c += 8) {                                                      \
                __m256 w = LOAD8(wr + c);                                                     \
                _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                          \
                    acc[n][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(inp + (size_t)n * C + c),  \
                                                acc[n][0]);                                   \
            }                                                                                 \
            for (int n = 0; n < NB; n++) {                                                    \
                __m256 a = acc[n][0];                                                         \
                for (int u = 1; u < U; u++)                                                   \
                    a = _mm256_add_ps(a, acc[n][u]);                                          \
                float t = hsum8(a);                                                           \
                for (int k = c; k < C; k++)                                                   \
                    t += CONVERT(wr[k]) * inp[(size_t)n * C + k];                             \
                out[(size_t)n * ldo + o] = t;                                                 \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_GEMV16_AVX2(avx2_bf16_1, 1, 4, bf16x8, bf16_value)
DEFINE_GEMV16_AVX2(avx2_bf16_2, 2, 2, bf16x8, bf16_value)
DEFINE_GEMV16_AVX2(avx2_bf16_4, 4, 1, bf16x8, bf16_value)
DEFINE_GEMV16_AVX2(avx2_f16_1, 1, 4, f16x8, f16_value)
DEFINE_GEMV16_AVX2(avx2_f16_2, 2, 2, f16x8, f16_value)
DEFINE_GEMV16_AVX2(avx2_f16_4, 4, 1, f16x8, f16_value)

/* 1 when this CPU runs the AVX2 kernels (checked once). */
static int cpu_has_avx2(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    }
    return have;
}
#endif

/* Kernels for blocks of 4, 2 and 1 input rows (k[0], k[1], k[2]), for the
 * CPU and dtype at hand. */
static void gemv16_pick(kernels_dtype dt, gemv16_fn k[3])
{
    bool bf = dt == KERNELS_BF16;
#ifdef HAVE_AVX2_GEMV
    if (cpu_has_avx2()) {
        k[0] = bf ? avx2_bf16_4 : avx2_f16_4;
        k[1] = bf ? avx2_bf16_2 : avx2_f16_2;
        k[2] = bf ? avx2_bf16_1 : avx2_f16_1;
        return;
    }
#endif
    k[0] = bf ? gemv16_bf16_4 : gemv16_f16_4;
    k[1] = bf ? gemv16_bf16_2 : gemv16_f16_2;
    k[2] = bf ? gemv16_bf16_1 : gemv16_f16_1;
}

/* One direct-path product, split by cpu_pool_run over tiles of weight rows. */
typedef struct gemv16_job {
    float *out;
    const float *inp;
    const uint16_t *weight;
    kernels_dtype dt;
    int N, C, OC;
    int tile; /* weight rows per tile */
} gemv16_job;

/* Weight rows [o0, o1), a tile at a time: every block of 4, 2 or 1 input
 * rows passes over a tile while it is still in cache, so each weight is
 * read from memory once whatever N is. */
static void gemv16_rows(const gemv16_job *j, int o0, int o1)
{
    gemv16_fn k[3];
    gemv16_pick(j->dt, k);
    for (int t0 = o0; t0 < o1; t0 += j->tile) {
        int t1 = o1 - t0 < j->tile ? o1 : t0 + j->tile, n = 0;
        for (; n + 4 <= j->N; n += 4)
            k[0](j->out + (size_t)n * j->OC, j->inp + (size_t)n * j->C, j->weight, j->C, t0, t1, j->OC);
        for (; n + 2 <= j->N; n += 2)
            k[1](j->out + (size_t)n * j->OC, j->inp + (size_t)n * j->C, j->weight, j->C, t0, t1, j->OC);
        for (; n < j->N; n++)
            k[2](j->out + (size_t)n * j->OC, j->inp + (size_t)n * j->C, j->weight, j->C, t0, t1, j->OC);
    }
}

/* cpu_pool part: an equal share of the tiles. */
static void gemv16_part(void *ctx, int part, int parts)
{
    const gemv16_job *j = ctx;
    long tiles = (j->OC + j->tile - 1) / j->tile;
    long lo = tiles * part / parts * j->tile, hi = tiles * (part + 1) / parts * j->tile;
    gemv16_rows(j, (int)lo, (int)(hi < j->OC ? hi : j->OC));
}

/* The direct path over N <= GEMV_ROWS rows, on the pool's threads when the
 * product is large enough to pay for waking them. */
static void gemv16(float *out, const float *inp, const uint16_t *weight, kernels_dtype dt,
                   int N, int C, int OC)
{
    int tile = TILE_BYTES / (2 * (C > 0 ? C : 1));
    gemv16_job j = {out, inp, weight, dt, N, C, OC, tile > 0 ? tile : 1};
    if ((double)N * C * OC < POOL_MIN_MACS)
        gemv16_part(&j, 0, 1);
    else
        cpu_pool_run(gemv16_part, &j);
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
