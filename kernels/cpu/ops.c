/*
 * kernels/cpu/ops.c — compiles the CPU ops of kernels/cpu/ops_impl.h twice:
 * as float (kernels_<op>, declared in cpu.h, used by the "cpu" backend) and
 * as double (kernels_f64_<op>, declared in cpu_f64.h, used by the tests to
 * check the same code against finite differences in double precision).
 * Everything type-independent the bodies need is defined here first.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_f64.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Query rows per attention block: bounds the scratch to [ATTN_QB, T] score
 * blocks and lets a block skip the keys after its last row (causal). */
#define ATTN_QB 64
/* Largest head dim rope supports (its per-token cos/sin live on the stack). */
#define ROPE_MAX_D 1024

/* Lanes of the chunked row loops in ops_impl.h: one AVX-512 vector, two
 * AVX2 vectors, four SSE2 ones. The lane structure, not the instruction
 * set, fixes the order of every sum, so under -std=c11 (no FMA contraction)
 * every clone gives the same bits. */
#define VW 16

/* HOT marks the float row loops (exp-bound softmax, cross-entropy, SwiGLU,
 * RMSNorm) worth compiling for several x86-64 levels, picked at load time
 * (ifunc): the build targets the x86-64 baseline (SSE2), the machines have
 * AVX2 or AVX-512, and the row loops run 4-5x faster with them.
 * -DKERNELS_NO_CLONES builds the baseline only (to test that path); so does
 * ThreadSanitizer, whose runtime is not up yet when ifunc resolvers run. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(KERNELS_NO_CLONES) && !defined(__SANITIZE_THREAD__) /* TSan: resolvers run too early */
#define HOT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT_CLONES
#endif

/* mask ? a : b for a mask of all ones or all zeros, in integer bit
 * operations: a float ?: is a branch gcc will not vectorize under the
 * default -ftrapping-math, a bitwise select is not. */
static inline float fselect(int32_t mask, float a, float b)
{
    uint32_t ab, bb, m = (uint32_t)mask;
    memcpy(&ab, &a, sizeof ab);
    memcpy(&bb, &b, sizeof bb);
    uint32_t rb = (ab & m) | (bb & ~m);
    float r;
    memcpy(&r, &rb, sizeof r);
    return r;
}

/* exp(x) for float in plain arithmetic, so that the chunked loops calling it
 * vectorize (a libm call per element would not): x = n ln2 + r with
 * |r| <= ln2/2, exp(r) from Moshier's (Cephes expf) polynomial, 2^n added to
 * the exponent bits. Relative error <= 8.2e-8 (1.4 ulp) on [-87, 88], about
 * 2.5x faster than expf with SSE2. Inputs are clamped to that range
 * (exp(-87) ~ 1.6e-38 stands in for anything smaller, +inf gives 1.7e38);
 * NaN stays NaN. Relies on IEEE round-to-nearest arithmetic, as compiled
 * without -ffast-math. */
static inline float fast_expf(float x)
{
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    x = fselect(-(int32_t)(x < -87.0f), -87.0f, x);
    x = fselect(-(int32_t)(x > 88.0f), 88.0f, x);
    float y = x * 1.44269504088896341f + shift;
    float n = y - shift;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
                4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t yb, pb; /* y's low mantissa bits hold n; shift it into p's exponent */
    memcpy(&yb, &y, sizeof yb);
    memcpy(&pb, &p, sizeof pb);
    pb += (yb - 0x4B400000u) << 23;
    memcpy(&p, &pb, sizeof p);
    return p;
}

static CBLAS_TRANSPOSE cblas_trans(int t) { return t ? CblasTrans : CblasNoTrans; }

/* max(x, 1): BLAS wants leading dimensions >= 1 even for empty matrices. */
static int imax1(int x) { return x > 1 ? x : 1; }

/* 1 when the attention sizes are usable. */
static int attention_sizes_ok(int B, int T, int Hq, int Hkv, int D)
{
    return B >= 0 && T >= 0 && Hq > 0 && Hkv > 0 && D > 0 && Hq % Hkv == 0;
}

/* The first key position query position i sees: 0, or with a sliding
 * window (window > 0) the oldest of the window's keys (i - window, i]. */
static int attention_first_key(int i, int window)
{
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

#define real float
#define FN(name) kernels_##name
#define GEMM cblas_sgemm
#define VEXP fast_expf
#define HOT HOT_CLONES
#define LOG logf
#define SQRT sqrtf
#define COS cosf
#define SIN sinf
#include "kernels/cpu/ops_impl.h"
#undef real
#undef FN
#undef GEMM
#undef VEXP
#undef HOT
#undef LOG
#undef SQRT
#undef COS
#undef SIN

#define real double
#define FN(name) kernels_f64_##name
#define GEMM cblas_dgemm
#define VEXP exp
#define HOT
#define LOG log
#define SQRT sqrt
#define COS cos
#define SIN sin
#include "kernels/cpu/ops_impl.h"
#undef real
#undef FN
#undef GEMM
#undef VEXP
#undef HOT
#undef LOG
#undef SQRT
#undef COS
#undef SIN

/* ---- serving: grouped LoRA (float only) ---------------------------------- */

/* Scratch for lora_group_forward: one [N, max_rank] float block. */
size_t kernels_lora_group_scratch_bytes(int N, int max_rank)
{
    if (N <= 0 || max_rank <= 0)
        return 0;
    return (size_t)N * (size_t)max_rank * sizeof(float);
}

/* 1 when every group is usable for x[N, C] -> y[N, OC]; see kernels.h. */
int kernels_lora_groups_valid(const kernels_lora_group *groups, int n_groups, int N, int max_rank)
{
    if (n_groups < 0 || (n_groups > 0 && !groups))
        return 0;
    for (int i = 0; i < n_groups; i++) {
        const kernels_lora_group *g = &groups[i];
        if (g->row0 < 0 || g->rows < 0 || g->row0 > N - g->rows || g->r < 1 || g->r > max_rank ||
            (g->rows > 0 && (!g->a || !g->b)))
            return 0;
    }
    return 1;
}

/* The reference: per group, t = x[rows] a^T into scratch, then
 * y[rows] += scale * t b^T (two sgemms). */
int kernels_lora_group_forward(float *y, void *scratch, const float *x,
                               const kernels_lora_group *groups, int n_groups,
                               int N, int C, int OC, int max_rank, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || max_rank < 1 || !y || !x ||
        !kernels_lora_groups_valid(groups, n_groups, N, max_rank) || (N > 0 && !scratch))
        return RT_ERR_INVALID;
    float *t = scratch;
    for (int i = 0; i < n_groups; i++) {
        const kernels_lora_group *g = &groups[i];
        if (g->rows == 0)
            continue;
        kernels_gemm(t, x + (size_t)g->row0 * C, g->a, g->rows, g->r, C, 0, 1, 1, 0,
                     imax1(C), imax1(C), g->r);
        kernels_gemm(y + (size_t)g->row0 * OC, t, g->b, g->rows, OC, g->r, 0, 1, g->scale, 1,
                     g->r, g->r, imax1(OC));
    }
    return RT_OK;
}
