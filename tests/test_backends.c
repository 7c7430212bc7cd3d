/*
 * tests/test_backends.c — parity of every compute backend with the CPU
 * reference: each op of kernels_backend runs on random inputs on the CPU
 * backend and on the backend under test, and the results are compared per
 * tensor as max|got - ref| / max|ref| (NaN never passes), with these
 * tolerances:
 *   TOL_EXACT  1e-6  gathers, elementwise ops, RoPE, AdamW: a few ulp
 *   TOL_ROW    2e-5  row reductions (RMSNorm, cross-entropy, softmax
 *                    rows), sum_squares: a different summation order
 *   TOL_MM     4e-3  anything with a matmul (matmul, linear, attention,
 *                    LoRA): cuBLAS may round operands to TF32 (10-bit
 *                    mantissa, ~5e-4 per operand), summed over k <= 300
 * Every backend present is tested ("cpu" always, "cuda" when the build has
 * it and the machine has a GPU; otherwise the CUDA cases print that they
 * are skipped). Besides parity, per backend: forward outputs overwrite
 * NaN-filled buffers, backward ops accumulate into random prior gradients,
 * future keys get exactly zero attention gradient, argument errors, and the
 * grouped LoRA op against a naive double-precision loop (so its CPU twin is
 * tested in every build).
 * Ends with "N passed, N failed" and exits non-zero on any failure.
 */
#include "kernels/kernels.h"
#include "tests/test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_EXACT 1e-6
#define TOL_ROW 2e-5
#define TOL_MM 4e-3

static const kernels_backend *cpu; /* the reference */
static const kernels_backend *be;  /* the backend under test */

/* ---- memory: everything a case allocates is freed by release_all() ------ */

#define MAX_BUFS 1024
static void *host_bufs[MAX_BUFS];
static struct {
    const kernels_backend *be;
    void *p;
} dev_bufs[MAX_BUFS];
static int n_host, n_dev;

static void *track_host(void *p)
{
    if (!p || n_host == MAX_BUFS) {
        fprintf(stderr, "test_backends: out of host buffers\n");
        exit(2);
    }
    host_bufs[n_host++] = p;
    return p;
}

/* n zeroed floats on the host. */
static float *hvec(int64_t n) { return track_host(calloc((size_t)(n > 0 ? n : 1), sizeof(float))); }

/* bytes of device memory of backend b. */
static void *dev_raw(const kernels_backend *b, size_t bytes)
{
    void *p = NULL;
    int rc = b->alloc(&p, bytes ? bytes : 1);
    if (rc != RT_OK || n_dev == MAX_BUFS) {
        fprintf(stderr, "test_backends: %s alloc of %zu bytes failed: %s\n", b->name, bytes,
                rt_strerror(rc));
        exit(2);
    }
    dev_bufs[n_dev].be = b;
    dev_bufs[n_dev++].p = p;
    return p;
}

/* A device copy on b of the host floats h[n]. */
static float *up(const kernels_backend *b, const float *h, int64_t n)
{
    float *d = dev_raw(b, (size_t)n * sizeof *d);
    CHECK_EQ_INT(b->copy_to_device(d, h, (size_t)n * sizeof *h, NULL), RT_OK);
    return d;
}

static int32_t *up_i32(const kernels_backend *b, const int32_t *h, int n)
{
    int32_t *d = dev_raw(b, (size_t)n * sizeof *d);
    CHECK_EQ_INT(b->copy_to_device(d, h, (size_t)n * sizeof *h, NULL), RT_OK);
    return d;
}

/* A device buffer of n NaNs (forward outputs must overwrite every one). */
static float *up_nan(const kernels_backend *b, int64_t n)
{
    float *h = hvec(n);
    for (int64_t i = 0; i < n; i++)
        h[i] = NAN;
    return up(b, h, n);
}

/* The device floats d[n] of b, copied to a new host array. */
static float *down(const kernels_backend *b, const float *d, int64_t n)
{
    float *h = hvec(n);
    CHECK_EQ_INT(b->synchronize(NULL), RT_OK);
    CHECK_EQ_INT(b->copy_to_host(h, d, (size_t)n * sizeof *h, NULL), RT_OK);
    return h;
}

static void release_all(void)
{
    while (n_host)
        free(host_bufs[--n_host]);
    while (n_dev) {
        n_dev--;
        dev_bufs[n_dev].be->free(dev_bufs[n_dev].p);
    }
}

/* ---- random inputs and the comparison ------------------------------------ */

static uint64_t rng = 0x243f6a8885a308d3ull;

/* Uniform in [lo, hi) (xorshift64*), the same sequence every run. */
static double urand(double lo, double hi)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    double u = (double)((rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
    return lo + (hi - lo) * u;
}

static float *hrand(int64_t n, double lo, double hi)
{
    float *x = hvec(n);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)urand(lo, hi);
    return x;
}

/* got[n] against ref[n]: max|got - ref| / max|ref| <= tol. */
static void near(const char *what, const float *got, const float *ref, int64_t n, double tol)
{
    double maxref = 0, maxerr = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        maxref = fmax(maxref, fabs(ref[i]));
        double e = fabs((double)got[i] - ref[i]);
        if (isnan(e) || e > maxerr) {
            maxerr = isnan(e) ? INFINITY : e;
            at = i;
        }
        if (isinf(maxerr))
            break;
    }
    double rel = maxerr / (maxref > 0 ? maxref : 1);
    if (getenv("TEST_VERBOSE"))
        fprintf(stderr, "   %-40s %s rel err %.3g (tol %.3g)\n", what, be->name, rel, tol);
    CHECK_MSG(rel <= tol, "%s on %s: rel err %.3g at %lld (got %.9g, ref %.9g), tol %.3g", what,
              be->name, rel, (long long)at, n ? got[at] : 0.0, n ? ref[at] : 0.0, tol);
}

/* ---- memory and streams --------------------------------------------------- */

static void test_memory(void)
{
    float h[1000], back[1000];
    for (int i = 0; i < 1000; i++)
        h[i] = (float)i - 333.25f;
    float *d = dev_raw(be, sizeof h), *d2 = dev_raw(be, sizeof h);
    CHECK_EQ_INT(be->copy_to_device(d, h, sizeof h, NULL), RT_OK);
    CHECK_EQ_INT(be->copy_device(d2, d, sizeof h, NULL), RT_OK);
    CHECK_EQ_INT(be->zero(d + 10, 100 * sizeof(float), NULL), RT_OK);
    CHECK_EQ_INT(be->synchronize(NULL), RT_OK);
    CHECK_EQ_INT(be->copy_to_host(back, d2, sizeof back, NULL), RT_OK);
    CHECK(memcmp(back, h, sizeof h) == 0);
    CHECK_EQ_INT(be->copy_to_host(back, d, sizeof back, NULL), RT_OK);
    CHECK(back[9] == h[9] && back[10] == 0 && back[109] == 0 && back[110] == h[110]);
    /* work queued on a created stream, then read back through it */
    kernels_stream *s = NULL;
    CHECK_EQ_INT(be->stream_create(&s), RT_OK);
    CHECK_EQ_INT(be->copy_to_device(d, h, sizeof h, s), RT_OK);
    CHECK_EQ_INT(be->scale(d, 1000, 2.0f, s), RT_OK);
    CHECK_EQ_INT(be->synchronize(s), RT_OK);
    CHECK_EQ_INT(be->copy_to_host(back, d, sizeof back, s), RT_OK);
    CHECK(back[0] == 2 * h[0] && back[999] == 2 * h[999]);
    be->stream_free(s);
    be->free(NULL);
    void *big = NULL;
    CHECK_EQ_INT(be->alloc(&big, 0), RT_OK); /* zero bytes still a valid pointer */
    CHECK(big != NULL);
    be->free(big);
    CHECK_EQ_INT(be->copy_to_device(NULL, h, 4, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->copy_to_device(d, h, 0, NULL), RT_OK);
    release_all();
}

/* ---- matmul and linear ----------------------------------------------------- */

static void test_matmul(void)
{
    const int m = 37, n = 29, k = 45;
    float *a = hrand(m * k, -1, 1), *b = hrand(k * n, -1, 1), *c = hrand(m * n, -1, 1);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float *res[2][2];
            for (int side = 0; side < 2; side++) {
                const kernels_backend *x = side ? be : cpu;
                float *da = up(x, a, m * k), *db = up(x, b, k * n);
                float *c0 = up_nan(x, m * n), *c1 = up(x, c, m * n);
                CHECK_EQ_INT(x->matmul(c0, da, db, m, n, k, ta, tb, 0.7f, 0, NULL), RT_OK);
                CHECK_EQ_INT(x->matmul(c1, da, db, m, n, k, ta, tb, -1.3f, 0.4f, NULL), RT_OK);
                res[side][0] = down(x, c0, m * n);
                res[side][1] = down(x, c1, m * n);
            }
            near("matmul beta=0", res[1][0], res[0][0], m * n, TOL_MM);
            near("matmul beta=0.4", res[1][1], res[0][1], m * n, TOL_MM);
        }
    /* k = 0: c = beta c */
    float *dc = up(be, c, m * n), *dz = up(be, a, 1);
    CHECK_EQ_INT(be->matmul(dc, dz, dz, m, n, 0, 0, 0, 1, 0.5f, NULL), RT_OK);
    float *hc = down(be, dc, m * n), *half = hvec(m * n);
    for (int i = 0; i < m * n; i++)
        half[i] = 0.5f * c[i];
    near("matmul k=0", hc, half, m * n, 0);
    CHECK_EQ_INT(be->matmul(dc, dz, dz, -1, n, 0, 0, 0, 1, 0, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->matmul(NULL, dz, dz, m, n, k, 0, 0, 1, 0, NULL), RT_ERR_INVALID);

    /* strided batched on padded rows: a [3][m x (k+2)], b^T [3][n x (k+1)] */
    const int batch = 3, lda = k + 2, ldb = k + 1, ldc = n + 3;
    const int64_t sa = (int64_t)m * lda + 1, sb = (int64_t)n * ldb, sc = (int64_t)m * ldc;
    float *ba = hrand(batch * sa, -1, 1), *bb = hrand(batch * sb, -1, 1);
    float *bc = hrand(batch * sc, -1, 1), *res[2];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *dcc = up(x, bc, batch * sc);
        CHECK_EQ_INT(x->matmul_strided_batched(dcc, up(x, ba, batch * sa), up(x, bb, batch * sb),
                                               m, n, k, 0, 1, 1.5f, 1, lda, ldb, ldc, sa, sb, sc,
                                               batch, NULL), RT_OK);
        res[side] = down(x, dcc, batch * sc);
    }
    near("matmul_strided_batched", res[1], res[0], batch * sc, TOL_MM);
    CHECK_EQ_INT(be->matmul_strided_batched(dc, dc, dc, m, n, k, 0, 1, 1, 1, k - 1, ldb, ldc,
                                            sa, sb, sc, batch, NULL), RT_ERR_INVALID);
    release_all();
}

static void test_linear(void)
{
    const int N = 50, C = 70, OC = 33;
    float *inp = hrand(N * C, -1, 1), *w = hrand(OC * C, -1, 1), *bias = hrand(OC, -1, 1);
    float *dout = hrand(N * OC, -1, 1), *pi = hrand(N * C, -1, 1), *pw = hrand(OC * C, -1, 1);
    float *pb = hrand(OC, -1, 1);
    float *r[2][6];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *di = up(x, inp, N * C), *dw = up(x, w, OC * C), *o = up_nan(x, N * OC);
        float *o2 = up_nan(x, N * OC);
        CHECK_EQ_INT(x->linear_forward(o, di, dw, up(x, bias, OC), N, C, OC, NULL), RT_OK);
        CHECK_EQ_INT(x->linear_forward(o2, di, dw, NULL, N, C, OC, NULL), RT_OK);
        float *gi = up(x, pi, N * C), *gw = up(x, pw, OC * C), *gb = up(x, pb, OC);
        float *gi2 = up(x, pi, N * C);
        float *dd = up(x, dout, N * OC);
        CHECK_EQ_INT(x->linear_backward(gi, gw, gb, dd, di, dw, N, C, OC, NULL), RT_OK);
        CHECK_EQ_INT(x->linear_backward(gi2, NULL, NULL, dd, NULL, dw, N, C, OC, NULL), RT_OK);
        r[side][0] = down(x, o, N * OC);
        r[side][1] = down(x, o2, N * OC);
        r[side][2] = down(x, gi, N * C);
        r[side][3] = down(x, gw, OC * C);
        r[side][4] = down(x, gb, OC);
        r[side][5] = down(x, gi2, N * C);
    }
    near("linear out", r[1][0], r[0][0], N * OC, TOL_MM);
    near("linear out (no bias)", r[1][1], r[0][1], N * OC, TOL_MM);
    near("linear dinp", r[1][2], r[0][2], N * C, TOL_MM);
    near("linear dweight", r[1][3], r[0][3], OC * C, TOL_MM);
    near("linear dbias", r[1][4], r[0][4], OC, TOL_ROW);
    near("linear dinp (frozen)", r[1][5], r[0][5], N * C, TOL_MM);
    CHECK_EQ_INT(be->linear_backward(r[1][2], r[1][3], NULL, r[1][0], NULL, r[1][3], N, C, OC,
                                     NULL), RT_ERR_INVALID); /* dweight needs inp */
    release_all();
}

/* ---- embedding, rmsnorm, rope ---------------------------------------------- */

/* The 16-bit weight ops on bits made from random floats (bf16: the top
 * half; f16: small integers over 64, exactly representable), for few rows
 * (decode) and many (panels), plus the 16-bit embedding. */
static void linear16_case(kernels_dtype dt, int N, int C, int OC)
{
    int64_t nw = (int64_t)OC * C;
    uint16_t *w = track_host(malloc((size_t)nw * sizeof *w));
    for (int64_t i = 0; i < nw; i++) {
        float f = (float)urand(-1, 1);
        uint32_t u;
        memcpy(&u, &f, 4);
        w[i] = dt == KERNELS_BF16 ? (uint16_t)(u >> 16)
                                  : (uint16_t)((i * 2654435761u >> 7) % 0x7800u); /* finite halves */
    }
    float *inp = hrand((int64_t)N * C, -1, 1), *bias = hrand(OC, -1, 1);
    float *dout = hrand((int64_t)N * OC, -1, 1), *pi = hrand((int64_t)N * C, -1, 1);
    int32_t ids[3] = {OC - 1, 0, 2};
    float *r[2][3];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        uint16_t *dw = dev_raw(x, (size_t)nw * sizeof *dw);
        CHECK_EQ_INT(x->copy_to_device(dw, w, (size_t)nw * sizeof *w, NULL), RT_OK);
        size_t sb = x->linear16_scratch_bytes(N, C, OC);
        void *sc = sb ? dev_raw(x, sb) : NULL;
        float *o = up_nan(x, (int64_t)N * OC), *gi = up(x, pi, (int64_t)N * C), *e = up_nan(x, 3 * C);
        CHECK_EQ_INT(x->linear16_forward(o, sc, up(x, inp, (int64_t)N * C), dw, dt, up(x, bias, OC), N,
                                         C, OC, NULL), RT_OK);
        CHECK_EQ_INT(x->linear16_backward(gi, sc, up(x, dout, (int64_t)N * OC), dw, dt, N, C, OC, NULL),
                     RT_OK);
        CHECK_EQ_INT(x->embedding16_forward(e, up_i32(x, ids, 3), dw, dt, 3, C, OC, NULL), RT_OK);
        r[side][0] = down(x, o, (int64_t)N * OC);
        r[side][1] = down(x, gi, (int64_t)N * C);
        r[side][2] = down(x, e, 3 * C);
    }
    char what[96];
    snprintf(what, sizeof what, "linear16 %s N%d C%d OC%d", dt == KERNELS_BF16 ? "bf16" : "f16", N, C, OC);
    fprintf(stderr, "   %s\n", what);
    near("linear16 out", r[1][0], r[0][0], (int64_t)N * OC, TOL_MM);
    near("linear16 dinp", r[1][1], r[0][1], (int64_t)N * C, TOL_MM);
    near("embedding16", r[1][2], r[0][2], 3 * C, 0);
    release_all();
}

static void test_linear16(void)
{
    linear16_case(KERNELS_BF16, 3, 70, 33);
    linear16_case(KERNELS_BF16, 50, 70, 2100); /* more rows than one panel on either side */
    linear16_case(KERNELS_F16, 1, 64, 40);
    linear16_case(KERNELS_F16, 40, 33, 300);
}

static void test_embedding(void)
{
    const int N = 40, C = 300, V = 17;
    int32_t ids[40];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)(urand(0, 1) * 6) * 3 % V; /* repeats, some rows unused */
    float *table = hrand(V * C, -1, 1), *dout = hrand(N * C, -1, 1), *prior = hrand(V * C, -1, 1);
    float *r[2][2];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        int32_t *di = up_i32(x, ids, N);
        float *o = up_nan(x, N * C), *dt = up(x, prior, V * C);
        CHECK_EQ_INT(x->embedding_forward(o, di, up(x, table, V * C), N, C, V, NULL), RT_OK);
        CHECK_EQ_INT(x->embedding_backward(dt, up(x, dout, N * C), di, N, C, V, NULL), RT_OK);
        r[side][0] = down(x, o, N * C);
        r[side][1] = down(x, dt, V * C);
    }
    near("embedding out", r[1][0], r[0][0], N * C, 0);
    near("embedding dtable", r[1][1], r[0][1], V * C, TOL_EXACT);
    CHECK_EQ_INT(be->embedding_forward(NULL, NULL, NULL, N, C, V, NULL), RT_ERR_INVALID);
    release_all();
}

static void test_rmsnorm(void)
{
    const int N = 37, C = 1000;
    float *inp = hrand(N * C, -2, 2), *w = hrand(C, 0.5, 1.5), *dout = hrand(N * C, -1, 1);
    float *pi = hrand(N * C, -1, 1), *pw = hrand(C, -1, 1);
    float *r[2][5];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *di = up(x, inp, N * C), *dw = up(x, w, C), *o = up_nan(x, N * C), *rs = up_nan(x, N);
        CHECK_EQ_INT(x->rmsnorm_forward(o, rs, di, dw, N, C, 1e-5f, NULL), RT_OK);
        float *gi = up(x, pi, N * C), *gw = up(x, pw, C), *gi2 = up(x, pi, N * C);
        float *dd = up(x, dout, N * C);
        CHECK_EQ_INT(x->rmsnorm_backward(gi, gw, rs, dd, di, dw, N, C, NULL), RT_OK);
        CHECK_EQ_INT(x->rmsnorm_backward(gi2, NULL, rs, dd, di, dw, N, C, NULL), RT_OK);
        r[side][0] = down(x, o, N * C);
        r[side][1] = down(x, rs, N);
        r[side][2] = down(x, gi, N * C);
        r[side][3] = down(x, gw, C);
        r[side][4] = down(x, gi2, N * C);
    }
    near("rmsnorm out", r[1][0], r[0][0], N * C, TOL_ROW);
    near("rmsnorm rstd", r[1][1], r[0][1], N, TOL_ROW);
    near("rmsnorm dinp", r[1][2], r[0][2], N * C, TOL_ROW);
    near("rmsnorm dweight", r[1][3], r[0][3], C, TOL_ROW);
    near("rmsnorm dinp (frozen)", r[1][4], r[0][4], N * C, TOL_ROW);
    CHECK_EQ_INT(be->rmsnorm_forward(r[1][0], r[1][1], r[1][0], r[1][0], N, 0, 1e-5f, NULL),
                 RT_ERR_INVALID);
    release_all();
}

static void test_rope(void)
{
    const int N = 9, H = 5, D = 64, n = N * H * D;
    static const int32_t pos[9] = {0, 7, 3, 100, 2, 4095, 1, 8, 60000};
    float *inv_freq = hvec(D / 2);
    for (int i = 0; i < D / 2; i++)
        inv_freq[i] = (float)pow(10000.0, -2.0 * i / D);
    float *inp = hrand(n, -1, 1), *dout = hrand(n, -1, 1), *prior = hrand(n, -1, 1);
    float *r[2][3];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *di = up(x, inp, n), *o = up_nan(x, n), *f = up(x, inv_freq, D / 2);
        int32_t *p = up_i32(x, pos, N);
        CHECK_EQ_INT(x->rope_forward(o, di, p, f, N, H, D, NULL), RT_OK);
        CHECK_EQ_INT(x->rope_forward(di, di, p, f, N, H, D, NULL), RT_OK); /* in place */
        float *g = up(x, prior, n);
        CHECK_EQ_INT(x->rope_backward(g, up(x, dout, n), p, f, N, H, D, NULL), RT_OK);
        r[side][0] = down(x, o, n);
        r[side][1] = down(x, di, n);
        r[side][2] = down(x, g, n);
    }
    /* angles up to 60000 rad: cos/sin of a float angle agree to ~1 ulp */
    near("rope out", r[1][0], r[0][0], n, TOL_EXACT);
    near("rope out (in place)", r[1][1], r[0][0], n, TOL_EXACT);
    near("rope dinp", r[1][2], r[0][2], n, TOL_EXACT);
    CHECK_EQ_INT(be->rope_forward(r[1][0], r[1][0], (int32_t *)r[1][0], r[1][0], N, H, 7, NULL),
                 RT_ERR_INVALID);
    release_all();
}

/* ---- attention ------------------------------------------------------------- */

static void attention_case(int B, int T, int Hq, int Hkv, int D, int window)
{
    int64_t nq = (int64_t)B * T * Hq * D, nk = (int64_t)B * T * Hkv * D, nl = (int64_t)B * Hq * T;
    float *q = hrand(nq, -1.5, 1.5), *k = hrand(nk, -1.5, 1.5), *v = hrand(nk, -1, 1);
    float *dout = hrand(nq, -1, 1), *pq = hrand(nq, -1, 1), *pk = hrand(nk, -1, 1);
    float *pv = hrand(nk, -1, 1);
    float *r[2][5];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        void *sc = dev_raw(x, x->attention_scratch_bytes(B, T, Hq, Hkv, D));
        float *dq = up(x, q, nq), *dk = up(x, k, nk), *dv = up(x, v, nk);
        float *o = up_nan(x, nq), *l = up_nan(x, nl);
        CHECK_EQ_INT(x->attention_forward(o, l, sc, dq, dk, dv, B, T, Hq, Hkv, D, window, NULL),
                     RT_OK);
        float *gq = up(x, pq, nq), *gk = up(x, pk, nk), *gv = up(x, pv, nk);
        CHECK_EQ_INT(x->attention_backward(gq, gk, gv, l, sc, up(x, dout, nq), dq, dk, dv,
                                           B, T, Hq, Hkv, D, window, NULL), RT_OK);
        r[side][0] = down(x, o, nq);
        r[side][1] = down(x, l, nl);
        r[side][2] = down(x, gq, nq);
        r[side][3] = down(x, gk, nk);
        r[side][4] = down(x, gv, nk);
    }
    char what[64];
    snprintf(what, sizeof what, "attention B%d T%d Hq%d Hkv%d D%d window %d", B, T, Hq, Hkv, D,
             window);
    fprintf(stderr, "   %s\n", what);
    near("attention out", r[1][0], r[0][0], nq, TOL_MM);
    near("attention lse", r[1][1], r[0][1], nl, TOL_MM);
    near("attention dq", r[1][2], r[0][2], nq, TOL_MM);
    near("attention dk", r[1][3], r[0][3], nk, TOL_MM);
    near("attention dv", r[1][4], r[0][4], nk, TOL_MM);
    release_all();
}

/* dout on query t0 of sequence 0 only: keys and values after t0, other
 * queries and sequence 1 must get exactly zero gradient. */
static void attention_causal(void)
{
    const int B = 2, T = 40, Hq = 4, Hkv = 2, D = 16, t0 = 11;
    int64_t nq = B * T * Hq * D, nk = B * T * Hkv * D;
    float *q = hrand(nq, -1, 1), *k = hrand(nk, -1, 1), *v = hrand(nk, -1, 1), *dout = hvec(nq);
    for (int i = 0; i < Hq * D; i++)
        dout[t0 * Hq * D + i] = (float)urand(-1, 1);
    void *sc = dev_raw(be, be->attention_scratch_bytes(B, T, Hq, Hkv, D));
    float *dq = up(be, q, nq), *dk = up(be, k, nk), *dv = up(be, v, nk);
    float *o = up_nan(be, nq), *l = up_nan(be, B * Hq * T);
    float *gq = up(be, hvec(nq), nq), *gk = up(be, hvec(nk), nk), *gv = up(be, hvec(nk), nk);
    CHECK_EQ_INT(be->attention_forward(o, l, sc, dq, dk, dv, B, T, Hq, Hkv, D, 0, NULL), RT_OK);
    CHECK_EQ_INT(be->attention_backward(gq, gk, gv, l, sc, up(be, dout, nq), dq, dk, dv,
                                        B, T, Hq, Hkv, D, 0, NULL), RT_OK);
    float *hq = down(be, gq, nq), *hk = down(be, gk, nk), *hv = down(be, gv, nk);
    int future = 0, past = 0, other_q = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < Hkv * D; i++) {
                int64_t at = (int64_t)(b * T + t) * Hkv * D + i;
                int live = b == 0 && t <= t0;
                future += !live && (hk[at] != 0 || hv[at] != 0);
                past += live && hv[at] != 0;
            }
            for (int i = 0; i < Hq * D; i++)
                other_q += !(b == 0 && t == t0) && hq[(int64_t)(b * T + t) * Hq * D + i] != 0;
        }
    CHECK_EQ_INT(future, 0);
    CHECK_EQ_INT(other_q, 0);
    CHECK_EQ_INT(past, (t0 + 1) * Hkv * D);
    CHECK_EQ_INT(be->attention_forward(o, l, sc, dq, dk, dv, B, T, 3, 2, D, 0, NULL), RT_ERR_INVALID);
    release_all();
}

/* n new queries at positions [past, past + n) over a cache of past + n
 * rows (cache rows beyond are NaN and must not be read). */
static void attention_kv_case(int n, int past, int Hq, int Hkv, int D, int window)
{
    int ctx = past + n + 3;
    int64_t nq = (int64_t)n * Hq * D, nc = (int64_t)ctx * Hkv * D;
    float *q = hrand(nq, -1.5, 1.5), *kc = hrand(nc, -1.5, 1.5), *vc = hrand(nc, -1, 1);
    for (int64_t i = (int64_t)(past + n) * Hkv * D; i < nc; i++)
        kc[i] = vc[i] = NAN;
    float *r[2];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        size_t sb = x->attention_kv_scratch_bytes(n, ctx, Hq, Hkv, D);
        void *sc = sb ? dev_raw(x, sb) : NULL;
        float *o = up_nan(x, nq);
        CHECK_EQ_INT(x->attention_kv_forward(o, sc, up(x, q, nq), up(x, kc, nc), up(x, vc, nc), n,
                                             past, Hq, Hkv, D, window, NULL), RT_OK);
        r[side] = down(x, o, nq);
    }
    char what[80];
    snprintf(what, sizeof what, "attention_kv n%d past%d Hq%d Hkv%d D%d window %d", n, past, Hq,
             Hkv, D, window);
    near(what, r[1], r[0], nq, TOL_MM);
    release_all();
}

static void test_attention(void)
{
    attention_case(2, 37, 4, 2, 16, 0);
    attention_case(1, 70, 2, 1, 64, 0);
    attention_case(3, 5, 6, 6, 8, 0);
    attention_case(2, 37, 4, 2, 16, 9);  /* sliding window */
    attention_case(1, 70, 2, 1, 64, 1);
    attention_causal();
    attention_kv_case(1, 0, 4, 2, 16, 0);
    attention_kv_case(1, 100, 8, 2, 64, 0);
    attention_kv_case(5, 30, 4, 4, 80, 0);
    attention_kv_case(70, 0, 2, 1, 128, 0);
    attention_kv_case(3, 9, 4, 1, 256, 0);
    attention_kv_case(1, 100, 8, 2, 64, 16); /* sliding window */
    attention_kv_case(70, 5, 2, 1, 128, 33);
}

/* ---- swiglu, cross-entropy ------------------------------------------------- */

static void test_swiglu(void)
{
    const int64_t n = 5000;
    float *g = hrand(n, -8, 8), *u = hrand(n, -2, 2), *d = hrand(n, -1, 1);
    float *pg = hrand(n, -1, 1), *pu = hrand(n, -1, 1);
    float *r[2][3];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *dg = up(x, g, n), *du = up(x, u, n), *o = up_nan(x, n);
        float *gg = up(x, pg, n), *gu = up(x, pu, n);
        CHECK_EQ_INT(x->swiglu_forward(o, dg, du, n, NULL), RT_OK);
        CHECK_EQ_INT(x->swiglu_backward(gg, gu, up(x, d, n), dg, du, n, NULL), RT_OK);
        r[side][0] = down(x, o, n);
        r[side][1] = down(x, gg, n);
        r[side][2] = down(x, gu, n);
    }
    near("swiglu out", r[1][0], r[0][0], n, TOL_EXACT);
    near("swiglu dgate", r[1][1], r[0][1], n, TOL_EXACT);
    near("swiglu dup", r[1][2], r[0][2], n, TOL_EXACT);
    release_all();
}

static void test_cross_entropy(void)
{
    const int N = 9, V = 3001;
    float *logits = hrand(N * V, -6, 6), *weights = hrand(N, 0, 2), *prior = hrand(N * V, -1, 1);
    int32_t targets[9];
    for (int i = 0; i < N; i++)
        targets[i] = (int32_t)(urand(0, 1) * V);
    targets[2] = -100;    /* ignored row */
    weights[4] = 0;       /* masked row */
    logits[5 * V + 7] = logits[5 * V + 2900] = 9; /* a tie: the first index is the argmax */
    targets[5] = 7;
    logits[6 * V + 7] = logits[6 * V + 2900] = 9;
    targets[6] = 2900;
    logits[7 * V + 1234] = 7;
    targets[7] = 1234;
    float *r[2][6];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *dl = up(x, logits, N * V), *ls = up_nan(x, N), *co = up_nan(x, N);
        float *lse = up_nan(x, N), *ls2 = up_nan(x, N), *lse2 = up_nan(x, N);
        int32_t *t = up_i32(x, targets, N);
        CHECK_EQ_INT(x->cross_entropy_forward(ls, co, lse, dl, t, N, V, NULL), RT_OK);
        CHECK_EQ_INT(x->cross_entropy_forward(ls2, NULL, lse2, dl, t, N, V, NULL), RT_OK);
        float *g = up(x, prior, N * V), *g2 = up(x, prior, N * V);
        CHECK_EQ_INT(x->cross_entropy_backward(g, lse, dl, t, up(x, weights, N), N, V, 0.37f, NULL),
                     RT_OK);
        CHECK_EQ_INT(x->cross_entropy_backward(g2, lse, dl, t, NULL, N, V, 1.0f, NULL), RT_OK);
        float *g3 = up(x, logits, N * V); /* in place: the gradient overwrites the logits */
        CHECK_EQ_INT(x->cross_entropy_backward(g3, lse, g3, t, NULL, N, V, 1.0f, NULL), RT_OK);
        r[side][5] = down(x, g3, N * V);
        r[side][0] = down(x, ls, N);
        r[side][1] = down(x, co, N);
        r[side][2] = down(x, lse, N);
        r[side][3] = down(x, g, N * V);
        r[side][4] = down(x, g2, N * V);
    }
    near("cross_entropy losses", r[1][0], r[0][0], N, TOL_ROW);
    near("cross_entropy correct", r[1][1], r[0][1], N, 0);
    near("cross_entropy lse", r[1][2], r[0][2], N, TOL_ROW);
    near("cross_entropy dlogits", r[1][3], r[0][3], N * V, TOL_ROW);
    near("cross_entropy dlogits (no weights)", r[1][4], r[0][4], N * V, TOL_ROW);
    near("cross_entropy dlogits in place", r[1][5], r[0][4], N * V, TOL_ROW);
    CHECK(r[1][1][5] == 1 && r[1][1][6] == 0 && r[1][1][7] == 1 && r[1][0][2] == 0);
    CHECK_EQ_INT(be->cross_entropy_forward(r[1][0], NULL, r[1][2], logits, NULL, N, V, NULL),
                 RT_ERR_INVALID);
    release_all();
}

/* ---- elementwise, reductions, optimizer ------------------------------------ */

static void test_elementwise(void)
{
    const int64_t n = 100003;
    float *a = hrand(n, -2, 2), *b = hrand(n, -2, 2), *c = hrand(n, -2, 2);
    float *r[2][7];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *da = up(x, a, n), *db = up(x, b, n), *o = up_nan(x, n), *y = up(x, c, n);
        float *m = up(x, a, n), *g = up(x, c, n), *sc = up(x, b, n), *ss = up_nan(x, 1);
        CHECK_EQ_INT(x->add(o, da, db, n, NULL), RT_OK);
        CHECK_EQ_INT(x->axpy(y, da, n, -0.75f, NULL), RT_OK);
        CHECK_EQ_INT(x->scale(sc, n, 1.5f, NULL), RT_OK);
        CHECK_EQ_INT(x->mul_forward(m, m, db, n, NULL), RT_OK); /* out == a */
        CHECK_EQ_INT(x->mul_backward(g, da, db, n, NULL), RT_OK);
        CHECK_EQ_INT(x->sum_squares(ss, da, n, NULL), RT_OK);
        r[side][0] = down(x, o, n);
        r[side][1] = down(x, y, n);
        r[side][2] = down(x, sc, n);
        r[side][3] = down(x, m, n);
        r[side][4] = down(x, g, n);
        r[side][5] = down(x, ss, 1);
        CHECK_EQ_INT(x->add(da, da, da, n, NULL), RT_OK); /* out == a == b */
        r[side][6] = down(x, da, n);
    }
    near("add", r[1][0], r[0][0], n, 0);
    near("axpy", r[1][1], r[0][1], n, TOL_EXACT);
    near("scale", r[1][2], r[0][2], n, 0);
    near("mul_forward (in place)", r[1][3], r[0][3], n, 0);
    near("mul_backward", r[1][4], r[0][4], n, TOL_EXACT);
    near("sum_squares", r[1][5], r[0][5], 1, TOL_ROW);
    near("add (in place)", r[1][6], r[0][6], n, 0);
    CHECK_EQ_INT(be->axpy(NULL, r[1][0], n, 1, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->add(r[1][0], r[1][0], r[1][0], -1, NULL), RT_ERR_INVALID);
    release_all();
}

static void test_adamw(void)
{
    const int64_t n = 7777;
    float *p = hrand(n, -1, 1), *r[2][3];
    for (int side = 0; side < 2; side++) {
        const kernels_backend *x = side ? be : cpu;
        float *dp = up(x, p, n), *m = up(x, hvec(n), n), *v = up(x, hvec(n), n);
        uint64_t keep = rng;
        for (int t = 1; t <= 3; t++) {
            float *g = up(x, hrand(n, -0.5, 0.5), n);
            CHECK_EQ_INT(x->adamw_step(dp, m, v, g, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, t, NULL),
                         RT_OK);
        }
        rng = side ? rng : keep; /* the same gradients on both sides */
        r[side][0] = down(x, dp, n);
        r[side][1] = down(x, m, n);
        r[side][2] = down(x, v, n);
    }
    near("adamw param", r[1][0], r[0][0], n, TOL_EXACT);
    near("adamw m", r[1][1], r[0][1], n, TOL_EXACT);
    near("adamw v", r[1][2], r[0][2], n, TOL_EXACT);
    CHECK_EQ_INT(be->adamw_step(r[1][0], r[1][1], r[1][2], r[1][0], n, 1e-3, 0.9, 0.999, 1e-8, 0,
                                0, NULL), RT_ERR_INVALID);
    release_all();
}

/* ---- grouped LoRA ---------------------------------------------------------- */

/* y[rows_g] += scale (x[rows_g] a^T) b^T per group, in double, from the
 * host copies of the groups' weights. */
static void naive_lora(float *y, const float *x, const kernels_lora_group *g,
                       const float *const *ha, const float *const *hb, int n_groups, int C, int OC)
{
    for (int i = 0; i < n_groups; i++)
        for (int row = g[i].row0; row < g[i].row0 + g[i].rows; row++) {
            double t[64];
            for (int k = 0; k < g[i].r; k++) {
                double s = 0;
                for (int j = 0; j < C; j++)
                    s += (double)x[row * C + j] * ha[i][k * C + j];
                t[k] = s;
            }
            for (int o = 0; o < OC; o++) {
                double s = 0;
                for (int k = 0; k < g[i].r; k++)
                    s += t[k] * hb[i][o * g[i].r + k];
                y[row * OC + o] = (float)(y[row * OC + o] + g[i].scale * s);
            }
        }
}

/* n_groups groups over N rows (some rows in no group, one empty group),
 * ranks cycling through 1..max_rank, against naive_lora on be. */
static void lora_case(int N, int C, int OC, int n_groups, int max_rank)
{
    kernels_lora_group *g = (kernels_lora_group *)track_host(calloc((size_t)n_groups, sizeof *g));
    const float **ha = (const float **)track_host(calloc((size_t)n_groups, sizeof *ha));
    const float **hb = (const float **)track_host(calloc((size_t)n_groups, sizeof *hb));
    int row = 0;
    for (int i = 0; i < n_groups; i++) {
        int r = 1 + (i * 5) % max_rank;
        int rows = i == 1 ? 0 : 1 + (i * 7) % 3;
        if (i % 4 == 3)
            row++; /* a row in no group */
        if (row > N)
            row = N;
        if (row + rows > N)
            rows = N - row;
        float *a = hrand((int64_t)r * C, -1, 1), *b = hrand((int64_t)OC * r, -1, 1);
        ha[i] = a;
        hb[i] = b;
        g[i] = (kernels_lora_group){.a = up(be, a, (int64_t)r * C), .b = up(be, b, (int64_t)OC * r),
                                    .row0 = row, .rows = rows, .r = r,
                                    .scale = (float)(2.0 / r)};
        row += rows;
    }
    float *x = hrand((int64_t)N * C, -1, 1), *y = hrand((int64_t)N * OC, -1, 1);
    float *want = hvec((int64_t)N * OC);
    memcpy(want, y, (size_t)N * OC * sizeof *y);
    naive_lora(want, x, g, ha, hb, n_groups, C, OC);
    void *sc = dev_raw(be, be->lora_group_scratch_bytes(N, max_rank));
    float *dy = up(be, y, (int64_t)N * OC);
    CHECK_EQ_INT(be->lora_group_forward(dy, sc, up(be, x, (int64_t)N * C), g, n_groups, N, C, OC,
                                        max_rank, NULL), RT_OK);
    float *got = down(be, dy, (int64_t)N * OC);
    char what[80];
    snprintf(what, sizeof what, "lora_group N%d C%d OC%d groups%d", N, C, OC, n_groups);
    near(what, got, want, (int64_t)N * OC, TOL_MM);
    /* rows in no group are untouched, bit for bit */
    int touched = 0;
    for (int r = 0; r < N; r++) {
        int in = 0;
        for (int i = 0; i < n_groups; i++)
            in |= r >= g[i].row0 && r < g[i].row0 + g[i].rows;
        if (!in)
            touched += memcmp(got + (size_t)r * OC, y + (size_t)r * OC, OC * sizeof *y) != 0;
    }
    CHECK_EQ_INT(touched, 0);
    release_all();
}

static void test_lora_group(void)
{
    CHECK(be->lora_group_forward != NULL && be->lora_group_scratch_bytes != NULL);
    if (!be->lora_group_forward)
        return;
    lora_case(12, 64, 48, 4, 8);
    lora_case(260, 130, 300, 90, 16); /* more groups than one CUDA launch takes */
    lora_case(1, 2048, 512, 1, 64);
    /* bad groups */
    kernels_lora_group g = {.a = (const float *)&g, .b = (const float *)&g, .row0 = 3, .rows = 2,
                            .r = 4, .scale = 1};
    float *buf = dev_raw(be, 4096);
    CHECK_EQ_INT(be->lora_group_forward(buf, buf, buf, &g, 1, 4, 8, 8, 4, NULL), RT_ERR_INVALID);
    g.rows = 1;
    g.r = 5;
    CHECK_EQ_INT(be->lora_group_forward(buf, buf, buf, &g, 1, 4, 8, 8, 4, NULL), RT_ERR_INVALID);
    g.r = 4;
    g.a = NULL;
    CHECK_EQ_INT(be->lora_group_forward(buf, buf, buf, &g, 1, 4, 8, 8, 4, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(be->lora_group_forward(buf, buf, buf, NULL, 0, 4, 8, 8, 4, NULL), RT_OK);
    release_all();
}

/* linear_lora_forward against the two ops it fuses, on the same backend,
 * bit for bit: fp32 (w16 0) or bf16 weights, with a bias, groups with gaps
 * and an empty one; N up to the few-row limit takes the fused path, more
 * rows the two products in turn. */
static void fused_lora_case(int N, int C, int OC, int n_groups, int max_rank, int w16)
{
    kernels_lora_group *g = (kernels_lora_group *)track_host(calloc((size_t)n_groups, sizeof *g));
    for (int i = 0, row = 0; i < n_groups; i++) {
        int r = 1 + (i * 5) % max_rank, rows = i == 1 ? 0 : 1 + (i * 7) % 3;
        row += i % 4 == 3; /* a row in no group */
        row = row > N ? N : row;
        rows = row + rows > N ? N - row : rows;
        g[i] = (kernels_lora_group){up(be, hrand((int64_t)r * C, -1, 1), (int64_t)r * C),
                                    up(be, hrand((int64_t)OC * r, -1, 1), (int64_t)OC * r), row,
                                    rows, r, (float)(2.0 / r)};
        row += rows;
    }
    int64_t nw = (int64_t)OC * C;
    float *w32 = hrand(nw, -1, 1);
    const void *w = up(be, w32, nw);
    if (w16) { /* the bf16 bits of w32 */
        uint16_t *h = track_host(malloc((size_t)nw * sizeof *h));
        for (int64_t i = 0; i < nw; i++) {
            uint32_t u;
            memcpy(&u, &w32[i], 4);
            h[i] = (uint16_t)(u >> 16);
        }
        uint16_t *d = dev_raw(be, (size_t)nw * sizeof *d);
        CHECK_EQ_INT(be->copy_to_device(d, h, (size_t)nw * sizeof *h, NULL), RT_OK);
        w = d;
    }
    float *x = up(be, hrand((int64_t)N * C, -1, 1), (int64_t)N * C), *bias = up(be, hrand(OC, -1, 1), OC);
    size_t s16 = w16 ? be->linear16_scratch_bytes(N, C, OC) : 0;
    void *sc16 = s16 ? dev_raw(be, s16) : NULL;
    float *want = up_nan(be, (int64_t)N * OC), *got = up_nan(be, (int64_t)N * OC);
    int rc = w16 ? be->linear16_forward(want, sc16, x, w, KERNELS_BF16, bias, N, C, OC, NULL)
                 : be->linear_forward(want, x, w, bias, N, C, OC, NULL);
    CHECK_EQ_INT(rc, RT_OK);
    CHECK_EQ_INT(be->lora_group_forward(want, dev_raw(be, be->lora_group_scratch_bytes(N, max_rank)),
                                        x, g, n_groups, N, C, OC, max_rank, NULL), RT_OK);
    void *sc = dev_raw(be, be->linear_lora_scratch_bytes(N, OC, max_rank));
    CHECK_EQ_INT(be->linear_lora_forward(got, sc, sc16, x, w, w16 ? KERNELS_BF16 : 0, bias, g,
                                         n_groups, N, C, OC, max_rank, NULL), RT_OK);
    float *hw = down(be, want, (int64_t)N * OC), *hg = down(be, got, (int64_t)N * OC);
    CHECK_MSG(memcmp(hw, hg, (size_t)N * OC * sizeof *hw) == 0,
              "linear_lora_forward N%d C%d OC%d groups %d w16 %d differs from the two ops", N, C,
              OC, n_groups, w16);
    release_all();
}

static void test_linear_lora(void)
{
    if (!be->linear_lora_forward) {
        printf("note: backend %s has no fused linear_lora_forward\n", be->name);
        return;
    }
    fused_lora_case(2, 16, 8, 2, 4, 0);       /* small: one thread */
    fused_lora_case(12, 256, 300, 6, 16, 0);  /* pooled, fused */
    fused_lora_case(32, 130, 77, 9, 8, KERNELS_BF16);
    fused_lora_case(40, 96, 64, 12, 8, 0);    /* beyond the few-row path */
    fused_lora_case(40, 96, 64, 12, 8, KERNELS_BF16);
    CHECK_EQ_INT(be->linear_lora_forward(NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, 0, 4, 8, 8, 4,
                                         NULL), RT_ERR_INVALID);
}

/* ---- driver ------------------------------------------------------------------ */

static void test_names(void)
{
    const kernels_backend *got = NULL;
    CHECK_EQ_INT(kernels_backend_get("cpu", &got), RT_OK);
    CHECK(got == kernels_cpu_backend());
    CHECK_EQ_INT(kernels_backend_get("tpu", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(kernels_backend_get("cuda:", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(kernels_backend_get("cuda:x1", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(kernels_backend_get("cudax", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(kernels_backend_get(NULL, &got), RT_ERR_INVALID);
    CHECK(got == kernels_cpu_backend()); /* untouched by the failures */
    int rc = kernels_backend_get("cuda", &got);
#ifndef RT_WITH_CUDA
    CHECK_EQ_INT(rc, RT_ERR_UNSUPPORTED);
    CHECK_EQ_INT(kernels_backend_get("cuda:1", &got), RT_ERR_UNSUPPORTED);
#else
    CHECK(rc == RT_OK || rc == RT_ERR_UNSUPPORTED);
    if (rc == RT_OK) {
        const kernels_backend *again = NULL;
        CHECK_EQ_INT(kernels_backend_get("cuda:0", &again), RT_OK);
        CHECK(again == got && test_str_eq(got->name, "cuda"));
        CHECK_EQ_INT(kernels_backend_get("cuda:999", &again), RT_ERR_NOT_FOUND);
    }
#endif
}

static void run_backend(const kernels_backend *b)
{
    be = b;
    fprintf(stderr, "== backend %s (reference: cpu)\n", b->name);
    RUN(test_memory);
    RUN(test_matmul);
    RUN(test_linear);
    RUN(test_linear16);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_rope);
    RUN(test_attention);
    RUN(test_swiglu);
    RUN(test_cross_entropy);
    RUN(test_elementwise);
    RUN(test_adamw);
    RUN(test_lora_group);
    RUN(test_linear_lora);
}

int main(void)
{
    cpu = kernels_cpu_backend();
    RUN(test_names);
    run_backend(cpu);
    const kernels_backend *cuda = NULL;
    int rc = kernels_backend_get("cuda", &cuda);
    if (rc == RT_OK)
        run_backend(cuda);
    else
        printf("skipping the CUDA cases: %s\n",
               rc == RT_ERR_UNSUPPORTED ?
#ifdef RT_WITH_CUDA
                                        "no GPU (or no driver) on this machine"
#else
                                        "this build has no CUDA backend (make CUDA=1)"
#endif
                                        : rt_strerror(rc));
    return TEST_SUMMARY();
}
