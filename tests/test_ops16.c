/*
 * tests/test_ops16.c — the CPU backend's frozen 16-bit weight ops
 * (linear16_forward/backward, embedding16_forward) against a float64
 * reference on the same (converted) weights, for bf16 and f16, on the
 * direct few-row path (N <= CPU_GEMV_ROWS = 32, on one thread and split over the CPU
 * backend's pool, also from two callers at once) and the panel + sgemm path, with widths that
 * are not multiples of the lanes or of the panel; and their argument checks.
 *
 * Tolerance: |got - want| <= 1e-5 * (1 + sum |w x|) per output (fp32
 * accumulation of up to a few thousand terms); embeddings must be exact.
 */
#include "engine/safetensors.h"
#include "kernels/kernels.h"
#include "tests/test.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x243f6a8885a308d3ull;

static float urand(float lo, float hi)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((g_rng >> 40) / 16777216.0);
}

/* n random weights as 16-bit values (and their exact fp32 values). */
static uint16_t *rand16(size_t n, kernels_dtype dt, float *exact)
{
    uint16_t *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) {
        float f = urand(-1.0f, 1.0f);
        w[i] = dt == KERNELS_BF16 ? sft_f32_to_bf16(f) : sft_f32_to_f16(f);
        exact[i] = dt == KERNELS_BF16 ? sft_bf16_to_f32(w[i]) : sft_f16_to_f32(w[i]);
    }
    return w;
}

static float *randf(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = urand(-1.0f, 1.0f);
    return x;
}

/* Largest |got - want| / (1 + scale) over n outputs; NaN counts as infinite. */
static double worst_rel(const float *got, const double *want, const double *scale, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]) / (1 + scale[i]);
        worst = isnan(got[i]) || e > worst ? (isnan(got[i]) ? INFINITY : e) : worst;
    }
    return worst;
}

/* One shape: forward (with bias) and backward against float64. */
static void linear16_case(kernels_dtype dt, int N, int C, int OC)
{
    const kernels_backend *be = kernels_cpu_backend();
    float *wf = malloc((size_t)OC * C * sizeof *wf);
    uint16_t *w = rand16((size_t)OC * C, dt, wf);
    float *x = randf((size_t)N * C), *bias = randf((size_t)OC), *dy = randf((size_t)N * OC);
    float *out = malloc((size_t)N * OC * sizeof *out), *dx = randf((size_t)N * C);
    float *dx0 = malloc((size_t)N * C * sizeof *dx0);
    memcpy(dx0, dx, (size_t)N * C * sizeof *dx0);
    size_t sb = be->linear16_scratch_bytes(N, C, OC);
    void *scratch = sb ? malloc(sb) : NULL;
    CHECK_EQ_INT(be->linear16_forward(out, scratch, x, w, dt, bias, N, C, OC, NULL), RT_OK);
    CHECK_EQ_INT(be->linear16_backward(dx, scratch, dy, w, dt, N, C, OC, NULL), RT_OK);
    double *want = calloc((size_t)N * OC, sizeof *want), *scale = calloc((size_t)N * OC, sizeof *scale);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias[o], a = fabs(bias[o]);
            for (int c = 0; c < C; c++) {
                double t = (double)wf[(size_t)o * C + c] * x[(size_t)n * C + c];
                s += t;
                a += fabs(t);
            }
            want[(size_t)n * OC + o] = s;
            scale[(size_t)n * OC + o] = a;
        }
    double *wantd = calloc((size_t)N * C, sizeof *wantd), *scaled = calloc((size_t)N * C, sizeof *scaled);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double s = dx0[(size_t)n * C + c], a = fabs(s);
            for (int o = 0; o < OC; o++) {
                double t = (double)dy[(size_t)n * OC + o] * wf[(size_t)o * C + c];
                s += t;
                a += fabs(t);
            }
            wantd[(size_t)n * C + c] = s;
            scaled[(size_t)n * C + c] = a;
        }
    double ef = worst_rel(out, want, scale, (size_t)N * OC);
    double eb = worst_rel(dx, wantd, scaled, (size_t)N * C);
    CHECK_MSG(ef <= 1e-5, "%s N%d C%d OC%d forward: rel err %.3g", dt == KERNELS_BF16 ? "bf16" : "f16",
              N, C, OC, ef);
    CHECK_MSG(eb <= 1e-5, "%s N%d C%d OC%d backward: rel err %.3g", dt == KERNELS_BF16 ? "bf16" : "f16",
              N, C, OC, eb);
    free(wf); free(w); free(x); free(bias); free(dy); free(out); free(dx); free(dx0); free(scratch);
    free(want); free(scale); free(wantd); free(scaled);
}

static void test_linear16(void)
{
    static const int shapes[][3] = {
        /* direct, one thread */
        {1, 64, 48}, {2, 37, 5}, {3, 100, 33}, {4, 16, 1}, {5, 129, 70}, {8, 300, 17},
        /* direct, split over the pool's threads, several tiles (C 4100: one row per tile) */
        {1, 4100, 37}, {7, 513, 301}, {16, 300, 257}, {3, 2049, 65}, {32, 70, 300},
        /* panels + sgemm */
        {33, 64, 48}, {40, 70, 300}, {64, 257, 513}, {33, 5, 3},
    };
    kernels_dtype dts[2] = {KERNELS_BF16, KERNELS_F16};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            linear16_case(dts[d], shapes[i][0], shapes[i][1], shapes[i][2]);
}

static void test_embedding16(void)
{
    const kernels_backend *be = kernels_cpu_backend();
    enum { V = 11, C = 37, N = 5 };
    kernels_dtype dts[2] = {KERNELS_BF16, KERNELS_F16};
    for (int d = 0; d < 2; d++) {
        float *tf = malloc((size_t)V * C * sizeof *tf), out[N * C];
        uint16_t *t = rand16((size_t)V * C, dts[d], tf);
        int32_t ids[N] = {3, 0, 10, 3, 7};
        CHECK_EQ_INT(be->embedding16_forward(out, ids, t, dts[d], N, C, V, NULL), RT_OK);
        int bad = 0;
        for (int n = 0; n < N; n++)
            bad += memcmp(out + n * C, tf + (size_t)ids[n] * C, C * sizeof(float)) != 0;
        CHECK_EQ_INT(bad, 0);
        int32_t bad_ids[2] = {1, V};
        CHECK_EQ_INT(be->embedding16_forward(out, bad_ids, t, dts[d], 2, C, V, NULL), RT_ERR_INVALID);
        free(tf);
        free(t);
    }
}

static void test_arguments(void)
{
    const kernels_backend *be = kernels_cpu_backend();
    float x[64] = {0}, out[64];
    uint16_t w[64] = {0};
    CHECK_EQ_INT(be->linear16_forward(out, NULL, x, w, (kernels_dtype)0, NULL, 1, 8, 8, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->linear16_forward(out, NULL, x, NULL, KERNELS_BF16, NULL, 1, 8, 8, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->linear16_forward(out, NULL, x, w, KERNELS_BF16, NULL, 33, 2, 2, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->linear16_backward(out, NULL, x, w, KERNELS_F16, 2, 2, 2, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->linear16_forward(out, NULL, x, w, KERNELS_BF16, NULL, 1, 8, 8, NULL), RT_OK);
    CHECK_EQ_INT(be->linear16_scratch_bytes(4, 0, 9), 0);
    /* NaN weights reach the output */
    w[3] = 0x7fc0;
    x[3] = 1.0f;
    CHECK_EQ_INT(be->linear16_forward(out, NULL, x, w, KERNELS_BF16, NULL, 1, 8, 8, NULL), RT_OK);
    CHECK(isnan(out[0]) && !isnan(out[1]));
}

/* Two callers at once (the server's engine thread and a training worker):
 * one gets the pool, the other runs inline; both results equal a lone
 * call's bit for bit (every output is one thread's sum in a fixed order). */
typedef struct caller {
    float *out;
    const float *x;
    const uint16_t *w;
    int N, C, OC, rounds, failures;
} caller;

static void *call_linear16(void *arg)
{
    caller *k = arg;
    const kernels_backend *be = kernels_cpu_backend();
    for (int r = 0; r < k->rounds; r++)
        k->failures += be->linear16_forward(k->out, NULL, k->x, k->w, KERNELS_BF16, NULL, k->N, k->C,
                                            k->OC, NULL) != RT_OK;
    return NULL;
}

static void test_concurrent_callers(void)
{
    enum { N = 3, C = 1000, OC = 700 };
    float *wf = malloc((size_t)OC * C * sizeof *wf), *x = randf((size_t)N * C);
    uint16_t *w = rand16((size_t)OC * C, KERNELS_BF16, wf);
    float *lone = malloc((size_t)N * OC * sizeof *lone);
    caller k[2];
    for (int i = 0; i < 2; i++)
        k[i] = (caller){malloc((size_t)N * OC * sizeof(float)), x, w, N, C, OC, 200, 0};
    CHECK_EQ_INT(kernels_cpu_backend()->linear16_forward(lone, NULL, x, w, KERNELS_BF16, NULL, N, C,
                                                         OC, NULL), RT_OK);
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, call_linear16, &k[1]), 0);
    call_linear16(&k[0]);
    pthread_join(t, NULL);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(k[i].failures, 0);
        CHECK_MSG(memcmp(k[i].out, lone, (size_t)N * OC * sizeof *lone) == 0,
                  "caller %d: outputs differ from a lone call's", i);
        free(k[i].out);
    }
    free(wf); free(x); free(w); free(lone);
}

int main(void)
{
    RUN(test_linear16);
    RUN(test_concurrent_callers);
    RUN(test_embedding16);
    RUN(test_arguments);
    return TEST_SUMMARY();
}
