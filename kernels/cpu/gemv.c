/*
 * kernels/cpu/gemv.c — products with few input rows (see gemv.h).
 *
 * One kernel per (instruction set, weight type, block of NB input rows):
 * each walks weight rows in order (one, or two side by side when several
 * input rows share a pass, so that each loaded input vector serves two
 * weight rows), so that the weights are a sequential stream the hardware
 * prefetcher follows, and keeps independent accumulators to hide the FMA
 * latency. The
 * portable kernels use VW-float lanes that gcc vectorizes, compiled for
 * several x86-64 levels (target_clones); the AVX2 and AVX-512 ones are
 * written with intrinsics from one macro, so that they differ only in their
 * vector primitives.
 */
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VW 16                 /* lanes of the portable kernels' accumulators */
#define TILE_BYTES (64 << 10) /* weight bytes of a tile (stays in L2) */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(KERNELS_NO_CLONES) && !defined(__SANITIZE_THREAD__) /* TSan: resolvers run too early */
#define HOT_GEMV __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT_GEMV
#endif

typedef void (*gemv_kernel)(const cpu_gemv_args *a, int n0, int o0, int o1);

static inline float f32_value(float x) { return x; }


/* out[n, o] = alpha * dot (+ out[n, o]). */
static inline void store(const cpu_gemv_args *a, int n, int o, float dot)
{
    float *p = a->out + (size_t)n * (size_t)a->ldo + (size_t)o;
    float v = a->alpha * dot;
    *p = a->accumulate ? *p + v : v;
}

/* ---- portable kernels ----------------------------------------------------- */

/* Sums VW lanes in a fixed order (the same bits on every clone). */
static inline float lanes_sum(const float *acc)
{
    float s = 0;
    for (int j = 0; j < VW; j++)
        s += acc[j];
    return s;
}

/* Input rows [n0, n0 + NB) against weight rows [o0, o1). */
#define DEFINE_PORTABLE(NAME, NB, WT, CONVERT)                                                \
    HOT_GEMV static void NAME(const cpu_gemv_args *a, int n0, int o0, int o1)                 \
    {                                                                                         \
        const float *inp = a->inp + (size_t)n0 * (size_t)a->ldi;                             \
        size_t ldi = (size_t)a->ldi;                                                          \
        int C = a->C;                                                                         \
        for (int o = o0; o < o1; o++) {                                                       \
            const WT *restrict wr = (const WT *)a->weight + (size_t)o * C;                    \
            float acc[NB][VW];                                                                \
            memset(acc, 0, sizeof acc);                                                       \
            int c = 0;                                                                        \
            for (; c + VW <= C; c += VW) {                                                    \
                float wv[VW];                                                                 \
                for (int j = 0; j < VW; j++)                                                  \
                    wv[j] = CONVERT(wr[c + j]);                                               \
                for (int n = 0; n < NB; n++)                                                  \
                    for (int j = 0; j < VW; j++)                                              \
                        acc[n][j] += wv[j] * inp[n * ldi + c + j];                            \
            }                                                                                 \
            for (; c < C; c++)                                                                \
                for (int n = 0; n < NB; n++)                                                  \
                    acc[n][0] += CONVERT(wr[c]) * inp[n * ldi + c];                           \
            for (int n = 0; n < NB; n++)                                                      \
                store(a, n0 + n, o, lanes_sum(acc[n]));                                       \
        }                                                                                     \
    }

#define DEFINE_PORTABLE_ALL(WNAME, WT, CONVERT)                                               \
    DEFINE_PORTABLE(portable_##WNAME##_4, 4, WT, CONVERT)                                     \
    DEFINE_PORTABLE(portable_##WNAME##_2, 2, WT, CONVERT)                                     \
    DEFINE_PORTABLE(portable_##WNAME##_1, 1, WT, CONVERT)

DEFINE_PORTABLE_ALL(f32, float, f32_value)
DEFINE_PORTABLE_ALL(bf16, uint16_t, cpu_bf16_value)
DEFINE_PORTABLE_ALL(f16, uint16_t, cpu_f16_value)

/* ---- AVX2 and AVX-512 kernels ----------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define HAVE_SIMD_GEMV 1

/* The products of OB weight rows [o, o + OB) with NB input rows from n0,
 * from the vector primitives of an instruction set: VEC/L the vector type
 * and its lanes, LOADW(p) L weights as floats, HSUM the sum of a vector's
 * lanes. U vectors of each row in flight; OB * NB * U independent FMA
 * chains hide the FMA latency, and each loaded input vector serves OB
 * weight rows (fewer loads per FMA when many input rows share a pass). */
#define DEFINE_SIMD_ROWS(NAME, ATTR, VEC, L, ZERO, FMA, ADD, HSUM, LOADF, LOADW, WT, CONVERT, NB, \
                         U, OB)                                                                  \
    ATTR static inline void NAME(const cpu_gemv_args *a, int n0, int o)                          \
    {                                                                                            \
        const float *inp = a->inp + (size_t)n0 * (size_t)a->ldi;                                \
        size_t ldi = (size_t)a->ldi;                                                             \
        int C = a->C;                                                                            \
        const WT *wr[OB];                                                                        \
        for (int r = 0; r < OB; r++)                                                             \
            wr[r] = (const WT *)a->weight + (size_t)(o + r) * C;                                 \
        VEC acc[OB][NB][U];                                                                      \
        _Pragma("GCC unroll 8") for (int r = 0; r < OB; r++)                                     \
            _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                                 \
                _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) acc[r][n][u] = ZERO();       \
        int c = 0;                                                                               \
        for (; c + L * U <= C; c += L * U)                                                       \
            _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {                                \
                VEC w[OB];                                                                       \
                _Pragma("GCC unroll 8") for (int r = 0; r < OB; r++) w[r] = LOADW(wr[r] + c + L * u); \
                _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {                           \
                    VEC x = LOADF(inp + n * ldi + c + L * u);                                    \
                    _Pragma("GCC unroll 8") for (int r = 0; r < OB; r++)                         \
                        acc[r][n][u] = FMA(w[r], x, acc[r][n][u]);                               \
                }                                                                                \
            }                                                                                    \
        for (; c + L <= C; c += L)                                                               \
            _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {                               \
                VEC x = LOADF(inp + n * ldi + c);                                                \
                _Pragma("GCC unroll 8") for (int r = 0; r < OB; r++)                             \
                    acc[r][n][0] = FMA(LOADW(wr[r] + c), x, acc[r][n][0]);                       \
            }                                                                                    \
        for (int r = 0; r < OB; r++)                                                             \
            for (int n = 0; n < NB; n++) {                                                       \
                VEC sum = acc[r][n][0];                                                          \
                for (int u = 1; u < U; u++)                                                      \
                    sum = ADD(sum, acc[r][n][u]);                                                \
                float t = HSUM(sum);                                                             \
                for (int k = c; k < C; k++)                                                      \
                    t += CONVERT(wr[r][k]) * inp[n * ldi + k];                                   \
                store(a, n0 + n, o + r, t);                                                      \
            }                                                                                    \
    }

/* One kernel: weight rows [o0, o1) OB at a time, the rest one by one. */
#define DEFINE_SIMD(NAME, ATTR, VEC, L, ZERO, FMA, ADD, HSUM, LOADF, LOADW, WT, CONVERT, NB, U, OB) \
    DEFINE_SIMD_ROWS(NAME##_wide, ATTR, VEC, L, ZERO, FMA, ADD, HSUM, LOADF, LOADW, WT, CONVERT,   \
                     NB, U, OB)                                                                    \
    DEFINE_SIMD_ROWS(NAME##_one, ATTR, VEC, L, ZERO, FMA, ADD, HSUM, LOADF, LOADW, WT, CONVERT,    \
                     NB, U, 1)                                                                     \
    ATTR static void NAME(const cpu_gemv_args *a, int n0, int o0, int o1)                          \
    {                                                                                              \
        int o = o0;                                                                                \
        for (; o + OB <= o1; o += OB)                                                              \
            NAME##_wide(a, n0, o);                                                                 \
        for (; o < o1; o++)                                                                        \
            NAME##_one(a, n0, o);                                                                  \
    }

/* AVX2 primitives. */
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline __m256 avx2_f32x8(const float *p) { return _mm256_loadu_ps(p); }

AVX2 static inline __m256 avx2_bf16x8(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2 static inline __m256 avx2_f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

AVX2 static inline float avx2_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#define DEFINE_AVX2(WNAME, WT, CONVERT, NB, U, OB)                                            \
    DEFINE_SIMD(avx2_##WNAME##_##NB, AVX2, __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps,     \
                _mm256_add_ps, avx2_hsum, _mm256_loadu_ps, avx2_##WNAME##x8, WT, CONVERT, NB, U, \
                OB)

/* AVX-512 primitives. */
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")))

AVX512 static inline __m512 avx512_f32x16(const float *p) { return _mm512_loadu_ps(p); }

AVX512 static inline __m512 avx512_bf16x16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 static inline __m512 avx512_f16x16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

AVX512 static inline float avx512_hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

#define DEFINE_AVX512(WNAME, WT, CONVERT, NB, U, OB)                                          \
    DEFINE_SIMD(avx512_##WNAME##_##NB, AVX512, __m512, 16, _mm512_setzero_ps, _mm512_fmadd_ps, \
                _mm512_add_ps, avx512_hsum, _mm512_loadu_ps, avx512_##WNAME##x16, WT, CONVERT, \
                NB, U, OB)

#define DEFINE_SIMD_ALL(ISA, WNAME, WT, CONVERT)                                              \
    DEFINE_##ISA(WNAME, WT, CONVERT, 4, 1, 2)                                                 \
    DEFINE_##ISA(WNAME, WT, CONVERT, 2, 2, 2)                                                 \
    DEFINE_##ISA(WNAME, WT, CONVERT, 1, 4, 1)

DEFINE_SIMD_ALL(AVX2, f32, float, f32_value)
DEFINE_SIMD_ALL(AVX2, bf16, uint16_t, cpu_bf16_value)
DEFINE_SIMD_ALL(AVX2, f16, uint16_t, cpu_f16_value)
DEFINE_SIMD_ALL(AVX512, f32, float, f32_value)
DEFINE_SIMD_ALL(AVX512, bf16, uint16_t, cpu_bf16_value)
DEFINE_SIMD_ALL(AVX512, f16, uint16_t, cpu_f16_value)
/* AVX-512's 32 vector registers also hold the 16 accumulators of 8 input
 * rows by 2 weight rows: half the loads per FMA of the 4-row block. */
DEFINE_AVX512(f32, float, f32_value, 8, 1, 2)
DEFINE_AVX512(bf16, uint16_t, cpu_bf16_value, 8, 1, 2)
DEFINE_AVX512(f16, uint16_t, cpu_f16_value, 8, 1, 2)

/* ---- short weight rows: the B product of a LoRA term ---------------------- */

/* The lane sums of 16 vectors as one vector, in order (lane i = the sum of
 * v[i]), by a transposing tree: 45 shuffles and adds where 16 separate
 * reductions take about 130. Neighbouring pairs are interleaved and added
 * (each 128-bit lane then holds two partial sums of each), pairs of those
 * likewise in 64-bit halves (a lane holds one partial sum of four vectors),
 * and the four 128-bit lanes of four such vectors are added crosswise. */
AVX512 static inline __m512 avx512_hsum16(const __m512 *v)
{
    __m512 t[8], u[4];
    for (int k = 0; k < 8; k++)
        t[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                             _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int m = 0; m < 4; m++) {
        __m512d c = _mm512_castps_pd(t[2 * m]), d = _mm512_castps_pd(t[2 * m + 1]);
        u[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
}

/* Lanes of chunk k of a row of C floats (the last one masked). */
AVX512 static inline __mmask16 avx512_chunk_mask(int C, int k)
{
    int left = C - 16 * k;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* fp32 weight rows of at most SHORT_C floats (a LoRA B of rank <= 64, [OC,
 * r]): each input row is held in registers, 16 weight rows are multiplied
 * at once and their dot products reduced together (avx512_hsum16) into one
 * vector of outputs, stored with one vector access. The
 * general kernels would reduce every output on its own, which costs more
 * than the products when a row is a single vector. */
#define SHORT_C 64
AVX512 static void avx512_f32_short(const cpu_gemv_args *a, int o0, int o1)
{
    int C = a->C, chunks = (C + 15) / 16;
    const float *W = a->weight;
    for (int n = 0; n < a->N; n++) {
        const float *x = a->inp + (size_t)n * (size_t)a->ldi;
        __m512 xv[SHORT_C / 16];
        for (int k = 0; k < chunks; k++)
            xv[k] = _mm512_maskz_loadu_ps(avx512_chunk_mask(C, k), x + 16 * k);
        int o = o0;
        for (; o + 16 <= o1; o += 16) {
            __m512 acc[16];
            for (int r = 0; r < 16; r++) {
                const float *w = W + (size_t)(o + r) * (size_t)C;
                acc[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(avx512_chunk_mask(C, 0), w), xv[0]);
                for (int k = 1; k < chunks; k++)
                    acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(avx512_chunk_mask(C, k), w + 16 * k),
                                             xv[k], acc[r]);
            }
            float *out = a->out + (size_t)n * (size_t)a->ldo + o;
            __m512 v = _mm512_mul_ps(_mm512_set1_ps(a->alpha), avx512_hsum16(acc));
            _mm512_storeu_ps(out, a->accumulate ? _mm512_add_ps(_mm512_loadu_ps(out), v) : v);
        }
        for (; o < o1; o++) {
            const float *w = W + (size_t)o * (size_t)C;
            float t = 0;
            for (int c = 0; c < C; c++)
                t += w[c] * x[c];
            store(a, n, o, t);
        }
    }
}
#endif

/* kernels[isa][weight type] for blocks of 8 (NULL: none), 4, 2 and 1
 * input rows. */
#define ROW_BLOCKS(P, W) {NULL, P##_##W##_4, P##_##W##_2, P##_##W##_1}
#define ROW_BLOCKS8(P, W) {P##_##W##_8, P##_##W##_4, P##_##W##_2, P##_##W##_1}
static const gemv_kernel kernel_table[3][3][4] = {
    [CPU_ISA_PORTABLE] = {ROW_BLOCKS(portable, f32), ROW_BLOCKS(portable, bf16),
                          ROW_BLOCKS(portable, f16)},
#ifdef HAVE_SIMD_GEMV
    [CPU_ISA_AVX2] = {ROW_BLOCKS(avx2, f32), ROW_BLOCKS(avx2, bf16), ROW_BLOCKS(avx2, f16)},
    [CPU_ISA_AVX512] = {ROW_BLOCKS8(avx512, f32), ROW_BLOCKS8(avx512, bf16),
                        ROW_BLOCKS8(avx512, f16)},
#endif
};

/* ---- choosing the instruction set ------------------------------------------ */

int cpu_isa_supported(cpu_isa isa)
{
    if (isa == CPU_ISA_PORTABLE)
        return 1;
#ifdef HAVE_SIMD_GEMV
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (isa == CPU_ISA_AVX2)
        return avx2;
    if (isa == CPU_ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

/* The widest supported set, capped by RETUNE_CPU_ISA. */
static cpu_isa detect_isa(void)
{
    const char *cap = getenv("RETUNE_CPU_ISA");
    cpu_isa best = CPU_ISA_AVX512;
    if (cap && strcmp(cap, "portable") == 0)
        best = CPU_ISA_PORTABLE;
    else if (cap && strcmp(cap, "avx2") == 0)
        best = CPU_ISA_AVX2;
    while (best > CPU_ISA_PORTABLE && !cpu_isa_supported(best))
        best--;
    return best;
}

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static cpu_isa best_isa;

static void pick_isa(void) { best_isa = detect_isa(); }

cpu_isa cpu_isa_best(void)
{
    pthread_once(&isa_once, pick_isa);
    return best_isa;
}

/* ---- the product ------------------------------------------------------------ */

typedef struct gemv_job {
    const cpu_gemv_args *a;
    const gemv_kernel *k; /* blocks of 8 (or NULL), 4, 2, 1 rows */
    int tile;             /* weight rows per tile */
    bool short_rows;      /* fp32 rows of <= SHORT_C floats on AVX-512 */
} gemv_job;

static gemv_job job_for(const cpu_gemv_args *a, cpu_isa isa)
{
    size_t row_bytes = (size_t)(a->C > 0 ? a->C : 1) * (a->wt == CPU_W_F32 ? 4 : 2);
    size_t tile = TILE_BYTES / row_bytes;
    gemv_job j = {a, kernel_table[isa][a->wt], tile > 0 ? (int)tile : 1, false};
#ifdef HAVE_SIMD_GEMV
    j.short_rows = isa == CPU_ISA_AVX512 && a->wt == CPU_W_F32 && a->C >= 1 && a->C <= SHORT_C;
#endif
    return j;
}

/* Weight rows [o0, o1), a tile at a time: every block of input rows passes
 * over a tile while it is still in cache. */
static void gemv_rows(const gemv_job *j, int o0, int o1)
{
    const cpu_gemv_args *a = j->a;
#ifdef HAVE_SIMD_GEMV
    if (j->short_rows) {
        avx512_f32_short(a, o0, o1);
        return;
    }
#endif
    for (int t0 = o0; t0 < o1; t0 += j->tile) {
        int t1 = o1 - t0 < j->tile ? o1 : t0 + j->tile, n = 0;
        for (; j->k[0] && n + 8 <= a->N; n += 8)
            j->k[0](a, n, t0, t1);
        for (; n + 4 <= a->N; n += 4)
            j->k[1](a, n, t0, t1);
        for (; n + 2 <= a->N; n += 2)
            j->k[2](a, n, t0, t1);
        for (; n < a->N; n++)
            j->k[3](a, n, t0, t1);
    }
}

/* cpu_pool part: an equal share of the tiles. */
static void gemv_part(void *ctx, int part, int parts)
{
    const gemv_job *j = ctx;
    long OC = j->a->OC, tiles = (OC + j->tile - 1) / j->tile;
    long lo = tiles * part / parts * j->tile, hi = tiles * (part + 1) / parts * j->tile;
    gemv_rows(j, (int)lo, (int)(hi < OC ? hi : OC));
}

void cpu_gemv(const cpu_gemv_args *a)
{
    if (a->N <= 0 || a->OC <= 0)
        return;
    gemv_job j = job_for(a, cpu_isa_best());
    if ((double)a->N * a->C * a->OC < CPU_POOL_MIN_WORK)
        gemv_part(&j, 0, 1);
    else
        cpu_pool_run(gemv_part, &j);
}

void cpu_gemv_share(const cpu_gemv_args *a, int part, int parts)
{
    if (a->N <= 0 || a->OC <= 0)
        return;
    gemv_job j = job_for(a, cpu_isa_best());
    gemv_part(&j, part, parts);
}

void cpu_gemv_isa(const cpu_gemv_args *a, cpu_isa isa)
{
    if (a->N <= 0 || a->OC <= 0 || !cpu_isa_supported(isa))
        return;
    gemv_job j = job_for(a, isa);
    gemv_part(&j, 0, 1);
}
