/*
 * tests/test_gemv.c — the CPU backend's few-row products
 * (kernels/cpu/gemv.h) against a float64 reference: every instruction set
 * this CPU runs (portable, AVX2, AVX-512), every weight type (f32, bf16,
 * f16), row counts that use each row block (4, 2, 1) and widths that are not
 * multiples of the lanes or of a tile, with alpha and accumulate; then the
 * pooled entry point (cpu_gemv, split over the backend's threads) and the
 * float linear_forward that now takes this path for N <= CPU_GEMV_ROWS;
 * and the backend's pooled sgemm (kernels/cpu/gemm.h) in every transpose
 * case, split by rows and by columns, with sizes that are not multiples of
 * the slices.
 * Under CI an instruction set the CPU lacks is reported, not silently
 * dropped (the portable kernels always run).
 *
 * Tolerance: |got - want| <= 1e-5 * (1 + sum |alpha w x|) per output (fp32
 * accumulation of up to a few thousand terms in a different order).
 */
#include "engine/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"
#include "tests/test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float urand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return -1.0f + 2.0f * (float)((g_rng >> 40) / 16777216.0);
}

static const char *isa_name[] = {"portable", "avx2", "avx512"};
static const char *wt_name[] = {"f32", "bf16", "f16"};

/* Random [OC, C] weights of type wt, and their exact fp32 values. */
static void *rand_weights(cpu_wtype wt, size_t n, float *exact)
{
    if (wt == CPU_W_F32) {
        float *w = malloc(n * sizeof *w);
        for (size_t i = 0; i < n; i++)
            exact[i] = w[i] = urand();
        return w;
    }
    uint16_t *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) {
        float f = urand();
        w[i] = wt == CPU_W_BF16 ? sft_f32_to_bf16(f) : sft_f32_to_f16(f);
        exact[i] = wt == CPU_W_BF16 ? sft_bf16_to_f32(w[i]) : sft_f16_to_f32(w[i]);
    }
    return w;
}

/* One shape on one instruction set (pooled when isa < 0), with padded
 * leading dimensions so that ldi/ldo are honoured. */
static void gemv_case(int isa, cpu_wtype wt, int N, int C, int OC, float alpha, bool accumulate)
{
    int ldi = C + 3, ldo = OC + 5;
    float *wf = malloc((size_t)OC * C * sizeof *wf + 1);
    void *w = rand_weights(wt, (size_t)OC * C, wf);
    float *x = malloc((size_t)N * ldi * sizeof *x), *out = malloc((size_t)N * ldo * sizeof *out);
    for (size_t i = 0; i < (size_t)N * ldi; i++)
        x[i] = urand();
    for (size_t i = 0; i < (size_t)N * ldo; i++)
        out[i] = urand();
    float *before = malloc((size_t)N * ldo * sizeof *before);
    memcpy(before, out, (size_t)N * ldo * sizeof *out);
    cpu_gemv_args a = {out, ldo, x, ldi, w, wt, N, C, OC, alpha, accumulate};
    if (isa < 0)
        cpu_gemv(&a);
    else
        cpu_gemv_isa(&a, (cpu_isa)isa);
    double worst = 0;
    int untouched_bad = 0;
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double s = 0, mag = 0;
            for (int c = 0; c < C; c++) {
                double t = (double)alpha * wf[(size_t)o * C + c] * x[(size_t)n * ldi + c];
                s += t;
                mag += fabs(t);
            }
            size_t at = (size_t)n * ldo + o;
            if (accumulate) {
                s += before[at];
                mag += fabs(before[at]);
            }
            double e = fabs(out[at] - s) / (1 + mag);
            worst = isnan(out[at]) ? INFINITY : e > worst ? e : worst;
        }
        for (int o = OC; o < ldo; o++) /* the padding between rows is left alone */
            untouched_bad += memcmp(&out[(size_t)n * ldo + o], &before[(size_t)n * ldo + o],
                                    sizeof(float)) != 0;
    }
    CHECK_MSG(worst <= 1e-5 && untouched_bad == 0,
              "%s %s N%d C%d OC%d alpha %g%s: rel err %.3g, %d padding floats written",
              isa < 0 ? "pooled" : isa_name[isa], wt_name[wt], N, C, OC, alpha,
              accumulate ? " accumulate" : "", worst, untouched_bad);
    free(wf); free(w); free(x); free(out); free(before);
}

static const int shapes[][3] = {
    {1, 64, 48}, {2, 37, 5}, {3, 100, 33}, {4, 16, 1}, {5, 129, 70}, {7, 7, 9},
    {8, 300, 17}, {16, 1, 3}, {31, 65, 40}, {32, 130, 21}, {1, 4100, 19},
    /* short rows (a LoRA B [OC, r]): blocks of 16 outputs, masked chunks, a tail */
    {2, 16, 70}, {1, 8, 33}, {3, 40, 50}, {1, 64, 16},
};

static void test_each_isa(void)
{
    for (int isa = CPU_ISA_PORTABLE; isa <= CPU_ISA_AVX512; isa++) {
        if (!cpu_isa_supported((cpu_isa)isa)) {
            printf("note: this CPU does not run the %s kernels; they are not checked here\n",
                   isa_name[isa]);
            continue;
        }
        for (int wt = CPU_W_F32; wt <= CPU_W_F16; wt++)
            for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
                gemv_case(isa, (cpu_wtype)wt, shapes[i][0], shapes[i][1], shapes[i][2], 1.0f, false);
                gemv_case(isa, (cpu_wtype)wt, shapes[i][0], shapes[i][1], shapes[i][2], 0.375f, true);
            }
    }
}

/* Large enough to be split over the pool's threads, several tiles each. */
static void test_pooled(void)
{
    printf("note: cpu_gemv uses the %s kernels\n", isa_name[cpu_isa_best()]);
    static const int big[][3] = {{1, 4100, 37}, {7, 513, 301}, {16, 300, 257}, {32, 2049, 65},
                                 {2, 16, 4001}};
    for (int wt = CPU_W_F32; wt <= CPU_W_F16; wt++)
        for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
            gemv_case(-1, (cpu_wtype)wt, big[i][0], big[i][1], big[i][2], 1.0f, false);
            gemv_case(-1, (cpu_wtype)wt, big[i][0], big[i][1], big[i][2], -2.0f, true);
        }
}

/* The float backend's linear_forward (direct path up to CPU_GEMV_ROWS rows,
 * sgemm beyond) against float64, with a bias. */
static void linear_case(int N, int C, int OC)
{
    const kernels_backend *be = kernels_cpu_backend();
    float *w = malloc((size_t)OC * C * sizeof *w), *x = malloc((size_t)N * C * sizeof *x);
    float *bias = malloc((size_t)OC * sizeof *bias), *out = malloc((size_t)N * OC * sizeof *out);
    for (size_t i = 0; i < (size_t)OC * C; i++)
        w[i] = urand();
    for (size_t i = 0; i < (size_t)N * C; i++)
        x[i] = urand();
    for (int i = 0; i < OC; i++)
        bias[i] = urand();
    CHECK_EQ_INT(be->linear_forward(out, x, w, bias, N, C, OC, NULL), RT_OK);
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias[o], mag = fabs(bias[o]);
            for (int c = 0; c < C; c++) {
                double t = (double)w[(size_t)o * C + c] * x[(size_t)n * C + c];
                s += t;
                mag += fabs(t);
            }
            double e = fabs(out[(size_t)n * OC + o] - s) / (1 + mag);
            worst = isnan(out[(size_t)n * OC + o]) ? INFINITY : e > worst ? e : worst;
        }
    CHECK_MSG(worst <= 1e-5, "linear_forward N%d C%d OC%d: rel err %.3g", N, C, OC, worst);
    free(w); free(x); free(bias); free(out);
}

static void test_linear_forward(void)
{
    linear_case(1, 512, 1376);
    linear_case(4, 33, 7);
    linear_case(CPU_GEMV_ROWS, 200, 130);
    linear_case(CPU_GEMV_ROWS + 1, 200, 130);
    linear_case(64, 96, 50);
}

/* NaN in a weight reaches exactly the outputs that use it. */
static void test_nan(void)
{
    for (int isa = CPU_ISA_PORTABLE; isa <= CPU_ISA_AVX512; isa++) {
        if (!cpu_isa_supported((cpu_isa)isa))
            continue;
        float w[4 * 40], x[40], out[4];
        for (int i = 0; i < 160; i++)
            w[i] = 0.5f;
        for (int i = 0; i < 40; i++)
            x[i] = 1.0f;
        w[1 * 40 + 37] = NAN; /* in the scalar tail of row 1 */
        w[2 * 40 + 3] = NAN;  /* in the vector body of row 2 */
        cpu_gemv_isa(&(cpu_gemv_args){out, 4, x, 40, w, CPU_W_F32, 1, 40, 4, 1.0f, false},
                     (cpu_isa)isa);
        CHECK_MSG(!isnan(out[0]) && isnan(out[1]) && isnan(out[2]) && !isnan(out[3]),
                  "%s: NaN reaches rows 1 and 2 only", isa_name[isa]);
    }
}

/* cpu_sgemm against float64, alpha 0.5 and beta -1 over a random c. */
static void sgemm_case(int ta, int tb, int m, int n, int k)
{
    int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2, ldc = n + 3;
    size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb, nc = (size_t)m * ldc;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c = malloc(nc * sizeof *c);
    float *c0 = malloc(nc * sizeof *c0);
    for (size_t i = 0; i < na; i++) a[i] = urand();
    for (size_t i = 0; i < nb; i++) b[i] = urand();
    for (size_t i = 0; i < nc; i++) c0[i] = c[i] = urand();
    cpu_sgemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, -1.0f, c, ldc);
    double worst = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = -(double)c0[(size_t)i * ldc + j], mag = fabs(s);
            for (int p = 0; p < k; p++) {
                double x = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                double y = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                s += 0.5 * x * y;
                mag += fabs(0.5 * x * y);
            }
            double e = fabs(c[(size_t)i * ldc + j] - s) / (1 + mag);
            worst = isnan(c[(size_t)i * ldc + j]) ? INFINITY : e > worst ? e : worst;
        }
    CHECK_MSG(worst <= 1e-5, "cpu_sgemm ta %d tb %d m %d n %d k %d: rel err %.3g", ta, tb, m, n, k,
              worst);
    free(a); free(b); free(c); free(c0);
}

static void test_pooled_sgemm(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            sgemm_case(ta, tb, 301, 67, 130); /* split by rows */
            sgemm_case(ta, tb, 45, 517, 90);  /* split by columns */
            sgemm_case(ta, tb, 3, 5, 7);      /* too small to split */
        }
}

int main(void)
{
    RUN(test_each_isa);
    RUN(test_pooled);
    RUN(test_linear_forward);
    RUN(test_nan);
    RUN(test_pooled_sgemm);
    return TEST_SUMMARY();
}
