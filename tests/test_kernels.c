/*
 * tests/test_kernels.c — numerical tests of the compute backend.
 *
 * Two checks per op:
 *   1. Gradients of the double-precision twin (kernels_f64_*, the same source
 *      as the float ops) against central finite differences in double
 *      precision on a scalar loss L = sum(dout * out) with a random dout.
 *      eps is 1e-5 (near cbrt(2^-52), where truncation and rounding errors
 *      balance; observed errors are <= 7e-8). Each backward runs on gradient
 *      buffers pre-filled with random values, so the check also proves the
 *      += contract. The error of an element is
 *      |analytic - fd| / (|fd| + 1e-2 * max|fd|); the tolerance on its
 *      maximum is 1e-6 for nonlinear ops and 1e-7 where the op is linear in
 *      the perturbed input (fd is then exact up to rounding).
 *   2. The float ops, called through the "cpu" backend table on device
 *      buffers, against the double twin on the same inputs: max|f - d| over
 *      max|d| per tensor, tolerance stated per op (1e-5 unless said).
 * Plus exact checks: causal masking (future keys get exactly zero gradient),
 * masked and ignored cross-entropy rows, repeated embedding ids, AdamW
 * against PyTorch-formula values for 3 steps, argument validation.
 * Exits non-zero when any check fails (TEST_SUMMARY); NaN never passes.
 */
#include "kernels/kernels.h"
#include "kernels/cpu/cpu_f64.h"
#include "tests/test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static const kernels_backend *be;

/* ---- memory: every buffer of a test is released by release_all() ------- */

#define MAX_BUFS 512
static void *host_bufs[MAX_BUFS], *dev_bufs[MAX_BUFS];
static int n_host, n_dev;

/* n zeroed doubles on the host, freed by release_all(). */
static double *hvec(int64_t n)
{
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof *p);
    if (!p || n_host == MAX_BUFS) {
        fprintf(stderr, "test_kernels: out of host buffers\n");
        exit(2);
    }
    host_bufs[n_host++] = p;
    return p;
}

/* A device buffer of bytes, freed by release_all(). */
static void *dev_raw(size_t bytes)
{
    void *p = NULL;
    if (be->alloc(&p, bytes) != RT_OK || n_dev == MAX_BUFS) {
        fprintf(stderr, "test_kernels: out of device buffers\n");
        exit(2);
    }
    dev_bufs[n_dev++] = p;
    return p;
}

/* A device float copy of x[n] (rounded to float). */
static float *dev_f32(const double *x, int64_t n)
{
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    float *d = dev_raw((size_t)(n > 0 ? n : 1) * sizeof *d);
    for (int64_t i = 0; i < n; i++)
        h[i] = (float)x[i];
    CHECK_EQ_INT(be->copy_to_device(d, h, (size_t)n * sizeof *h, NULL), RT_OK);
    free(h);
    return d;
}

/* A device float buffer of n NaNs: forward outputs must overwrite them. */
static float *dev_nan(int64_t n)
{
    double *h = hvec(n);
    for (int64_t i = 0; i < n; i++)
        h[i] = NAN;
    return dev_f32(h, n);
}

/* A device copy of n int32 values. */
static int32_t *dev_i32(const int32_t *x, int n)
{
    int32_t *d = dev_raw((size_t)(n > 0 ? n : 1) * sizeof *d);
    CHECK_EQ_INT(be->copy_to_device(d, x, (size_t)n * sizeof *x, NULL), RT_OK);
    return d;
}

/* The device floats d[n] copied back to the host as doubles. */
static double *host_f64(const float *d, int64_t n)
{
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    double *x = hvec(n);
    CHECK_EQ_INT(be->copy_to_host(h, d, (size_t)n * sizeof *h, NULL), RT_OK);
    for (int64_t i = 0; i < n; i++)
        x[i] = h[i];
    free(h);
    return x;
}

static void release_all(void)
{
    while (n_host)
        free(host_bufs[--n_host]);
    while (n_dev)
        be->free(dev_bufs[--n_dev]);
}

/* ---- random numbers and small vector helpers --------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

/* Uniform in [lo, hi), xorshift64*: deterministic across runs. */
static double urand(double lo, double hi)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    double u = (double)((rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
    return lo + (hi - lo) * u;
}

/* n new doubles uniform in [lo, hi). */
static double *hrand(int64_t n, double lo, double hi)
{
    double *x = hvec(n);
    for (int64_t i = 0; i < n; i++)
        x[i] = urand(lo, hi);
    return x;
}

static double *hcopy(const double *x, int64_t n)
{
    double *y = hvec(n);
    memcpy(y, x, (size_t)n * sizeof *x);
    return y;
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* a - b into a new vector. */
static double *hsub(const double *a, const double *b, int64_t n)
{
    double *c = hvec(n);
    for (int64_t i = 0; i < n; i++)
        c[i] = a[i] - b[i];
    return c;
}

/* ---- the two comparisons ----------------------------------------------- */

typedef double (*loss_fn)(void *ctx);

/* Central differences of loss w.r.t. x at up to max_points evenly spaced
 * elements, against the analytic gradient grad[n]; see the file comment. */
static void fd_check(const char *what, loss_fn loss, void *ctx, double *x, int64_t n,
                     const double *grad, int64_t max_points, double tol)
{
    const double eps = 1e-5;
    int64_t step = n <= max_points ? 1 : (n + max_points - 1) / max_points;
    double *fd = hvec(n);
    double maxfd = 0;
    for (int64_t i = 0; i < n; i += step) {
        double xi = x[i];
        x[i] = xi + eps;
        double lp = loss(ctx);
        x[i] = xi - eps;
        double lm = loss(ctx);
        x[i] = xi;
        fd[i] = (lp - lm) / (2 * eps);
        maxfd = fmax(maxfd, fabs(fd[i]));
    }
    double worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i += step) {
        double e = fabs(grad[i] - fd[i]) / (fabs(fd[i]) + 1e-2 * maxfd + 1e-300);
        if (isnan(e) || e > worst) {
            worst = isnan(e) ? INFINITY : e;
            at = i;
        }
    }
    CHECK_MSG(worst <= tol && maxfd > 0, "%s: fd rel err %.3g at %lld (analytic %.12g, fd %.12g), tol %.3g",
              what, worst, (long long)at, grad[at], fd[at], tol);
}

/* The float result f[n] (device) against the double twin d[n]. */
static void f32_check(const char *what, const float *f, const double *d, int64_t n, double tol)
{
    double *h = host_f64(f, n);
    double maxd = 0, maxerr = 0;
    for (int64_t i = 0; i < n; i++) {
        maxd = fmax(maxd, fabs(d[i]));
        double e = fabs(h[i] - d[i]);
        if (isnan(e) || e > maxerr)
            maxerr = isnan(e) ? INFINITY : e;
    }
    double rel = maxerr / (maxd > 0 ? maxd : 1);
    CHECK_MSG(rel <= tol, "%s: float vs double rel err %.3g, tol %.3g", what, rel, tol);
}

/* Like f32_check for a float gradient that started from prior: compares
 * (f - prior) with d. */
static void f32_grad_check(const char *what, const float *f, const double *prior,
                           const double *d, int64_t n, double tol)
{
    double *h = host_f64(f, n);
    double *delta = hsub(h, prior, n);
    float *dd = dev_f32(delta, n);
    f32_check(what, dd, d, n, tol);
}

/* ---- backend, memory ---------------------------------------------------- */

static void test_backend(void)
{
    const kernels_backend *got = NULL;
    CHECK_EQ_INT(kernels_backend_get("cpu", &got), RT_OK);
    CHECK(got == kernels_cpu_backend());
    CHECK_EQ_STR(got ? got->name : NULL, "cpu");
    const kernels_backend *keep = got;
#ifdef RT_WITH_CUDA
    /* With the CUDA backend built in: present only where a GPU is. */
    const kernels_backend *gpu = NULL;
    int crc = kernels_backend_get("cuda", &gpu);
    CHECK(crc == RT_OK || crc == RT_ERR_UNSUPPORTED || crc == RT_ERR_DEVICE);
#else
    CHECK_EQ_INT(kernels_backend_get("cuda", &got), RT_ERR_UNSUPPORTED);
#endif
    CHECK_EQ_INT(kernels_backend_get("tpu", &got), RT_ERR_NOT_FOUND);
    CHECK(got == keep);

    float host[5] = {1, 2, 3, 4, 5}, back[5];
    float *d = dev_raw(sizeof host), *d2 = dev_raw(sizeof host);
    CHECK_EQ_INT(be->copy_to_device(d, host, sizeof host, NULL), RT_OK);
    CHECK_EQ_INT(be->copy_device(d2, d, sizeof host, NULL), RT_OK);
    CHECK_EQ_INT(be->zero(d, sizeof host, NULL), RT_OK);
    CHECK_EQ_INT(be->synchronize(NULL), RT_OK);
    CHECK_EQ_INT(be->copy_to_host(back, d2, sizeof back, NULL), RT_OK);
    CHECK(memcmp(back, host, sizeof back) == 0);
    CHECK_EQ_INT(be->copy_to_host(back, d, sizeof back, NULL), RT_OK);
    CHECK(back[0] == 0 && back[4] == 0);
    kernels_stream *s = (kernels_stream *)&host;
    CHECK_EQ_INT(be->stream_create(&s), RT_OK);
    CHECK(s == NULL);
    be->stream_free(s);
    be->free(NULL);
    release_all();
}

/* ---- matmul ------------------------------------------------------------- */

/* Naive c = alpha op(a) op(b) + beta c with leading dimensions. */
static void ref_gemm(double *c, const double *a, const double *b, int m, int n, int k,
                     int ta, int tb, double alpha, double beta, int lda, int ldb, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = alpha * s + beta * c[i * ldc + j];
        }
}

static void test_matmul(void)
{
    const int m = 5, n = 7, k = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            double *a = hrand(m * k, -1, 1), *b = hrand(k * n, -1, 1), *c = hrand(m * n, -1, 1);
            double *want = hcopy(c, m * n), *got = hcopy(c, m * n);
            ref_gemm(want, a, b, m, n, k, ta, tb, 0.7, 0.3, ta ? m : k, tb ? k : n, n);
            CHECK_EQ_INT(kernels_f64_matmul(got, a, b, m, n, k, ta, tb, 0.7, 0.3, NULL), RT_OK);
            double err = 0;
            for (int i = 0; i < m * n; i++)
                err = fmax(err, fabs(got[i] - want[i]));
            CHECK_NEAR(err, 0, 1e-14);
            /* float, beta = 0 over NaN: the old c must be ignored */
            float *fc = dev_nan(m * n);
            CHECK_EQ_INT(be->matmul(fc, dev_f32(a, m * k), dev_f32(b, k * n), m, n, k, ta, tb,
                                    0.7f, 0, NULL), RT_OK);
            double *want0 = hvec(m * n);
            ref_gemm(want0, a, b, m, n, k, ta, tb, 0.7, 0, ta ? m : k, tb ? k : n, n);
            f32_check("matmul beta=0", fc, want0, m * n, 1e-6);
            float *fc2 = dev_f32(c, m * n);
            CHECK_EQ_INT(be->matmul(fc2, dev_f32(a, m * k), dev_f32(b, k * n), m, n, k, ta, tb,
                                    0.7f, 0.3f, NULL), RT_OK);
            f32_check("matmul beta=0.3", fc2, want, m * n, 1e-6);
        }

    /* k = 0: c = beta c */
    double c0[2] = {2, -4}, a0[1] = {0}, b0[1] = {0};
    CHECK_EQ_INT(kernels_f64_matmul(c0, a0, b0, 1, 2, 0, 0, 0, 1, 0.5, NULL), RT_OK);
    CHECK(c0[0] == 1 && c0[1] == -2);
    CHECK_EQ_INT(kernels_f64_matmul(c0, a0, b0, -1, 2, 0, 0, 0, 1, 0.5, NULL), RT_ERR_INVALID);

    /* strided batched on padded rows: a [3][m x (k+2)], b^T [3][n x (k+1)] */
    const int batch = 3, lda = k + 2, ldb = k + 1, ldc = n + 3;
    const int64_t sa = m * lda + 1, sb = n * ldb, sc = m * ldc;
    double *a = hrand(batch * sa, -1, 1), *b = hrand(batch * sb, -1, 1);
    double *c = hrand(batch * sc, -1, 1), *want = hcopy(c, batch * sc);
    for (int i = 0; i < batch; i++)
        ref_gemm(want + i * sc, a + i * sa, b + i * sb, m, n, k, 0, 1, 1.5, 1, lda, ldb, ldc);
    float *fc = dev_f32(c, batch * sc);
    CHECK_EQ_INT(be->matmul_strided_batched(fc, dev_f32(a, batch * sa), dev_f32(b, batch * sb),
                                            m, n, k, 0, 1, 1.5f, 1, lda, ldb, ldc, sa, sb, sc,
                                            batch, NULL), RT_OK);
    f32_check("matmul_strided_batched", fc, want, batch * sc, 1e-6);
    CHECK_EQ_INT(be->matmul_strided_batched(fc, fc, fc, m, n, k, 0, 1, 1, 1, k - 1, ldb, ldc,
                                            sa, sb, sc, batch, NULL), RT_ERR_INVALID);
    release_all();
}

/* ---- linear ------------------------------------------------------------- */

typedef struct {
    double *out, *dout, *inp, *w, *b;
    int N, C, OC;
} linear_ctx;

static double linear_loss(void *p)
{
    linear_ctx *c = p;
    kernels_f64_linear_forward(c->out, c->inp, c->w, c->b, c->N, c->C, c->OC, NULL);
    return dot(c->out, c->dout, (int64_t)c->N * c->OC);
}

static void test_linear(void)
{
    linear_ctx c = {.N = 4, .C = 6, .OC = 5};
    int N = c.N, C = c.C, OC = c.OC;
    c.inp = hrand(N * C, -1, 1);
    c.w = hrand(OC * C, -1, 1);
    c.b = hrand(OC, -1, 1);
    c.dout = hrand(N * OC, -1, 1);
    c.out = hvec(N * OC);
    double *pi = hrand(N * C, -1, 1), *pw = hrand(OC * C, -1, 1), *pb = hrand(OC, -1, 1);
    double *di = hcopy(pi, N * C), *dw = hcopy(pw, OC * C), *db = hcopy(pb, OC);
    CHECK_EQ_INT(kernels_f64_linear_backward(di, dw, db, c.dout, c.inp, c.w, N, C, OC, NULL), RT_OK);
    double *gi = hsub(di, pi, N * C), *gw = hsub(dw, pw, OC * C), *gb = hsub(db, pb, OC);
    /* linear in every input: fd is exact up to rounding */
    fd_check("linear dinp", linear_loss, &c, c.inp, N * C, gi, 1000, 1e-7);
    fd_check("linear dweight", linear_loss, &c, c.w, OC * C, gw, 1000, 1e-7);
    fd_check("linear dbias", linear_loss, &c, c.b, OC, gb, 1000, 1e-7);

    linear_loss(&c);
    float *fo = dev_nan(N * OC);
    float *fi = dev_f32(c.inp, N * C), *fw = dev_f32(c.w, OC * C);
    CHECK_EQ_INT(be->linear_forward(fo, fi, fw, dev_f32(c.b, OC), N, C, OC, NULL), RT_OK);
    f32_check("linear out", fo, c.out, N * OC, 1e-6);
    float *fdi = dev_f32(pi, N * C), *fdw = dev_f32(pw, OC * C), *fdb = dev_f32(pb, OC);
    CHECK_EQ_INT(be->linear_backward(fdi, fdw, fdb, dev_f32(c.dout, N * OC), fi, fw, N, C, OC,
                                     NULL), RT_OK);
    f32_grad_check("linear dinp", fdi, pi, gi, N * C, 1e-5);
    f32_grad_check("linear dweight", fdw, pw, gw, OC * C, 1e-5);
    f32_grad_check("linear dbias", fdb, pb, gb, OC, 1e-5);

    /* frozen weight, no bias: dinp only */
    double *di2 = hcopy(pi, N * C);
    CHECK_EQ_INT(kernels_f64_linear_backward(di2, NULL, NULL, c.dout, NULL, c.w, N, C, OC, NULL),
                 RT_OK);
    double err = 0;
    for (int i = 0; i < N * C; i++)
        err = fmax(err, fabs(di2[i] - di[i]));
    CHECK_NEAR(err, 0, 1e-15);
    release_all();
}

/* ---- embedding ---------------------------------------------------------- */

typedef struct {
    double *out, *dout, *table;
    const int32_t *ids;
    int N, C, V;
} embedding_ctx;

static double embedding_loss(void *p)
{
    embedding_ctx *c = p;
    kernels_f64_embedding_forward(c->out, c->ids, c->table, c->N, c->C, c->V, NULL);
    return dot(c->out, c->dout, (int64_t)c->N * c->C);
}

static void test_embedding(void)
{
    static const int32_t ids[6] = {3, 1, 3, 0, 6, 3};
    embedding_ctx c = {.ids = ids, .N = 6, .C = 5, .V = 7};
    int N = c.N, C = c.C, V = c.V;
    c.table = hrand(V * C, -1, 1);
    c.dout = hrand(N * C, -1, 1);
    c.out = hvec(N * C);
    double *prior = hrand(V * C, -1, 1), *dt = hcopy(prior, V * C);
    CHECK_EQ_INT(kernels_f64_embedding_backward(dt, c.dout, ids, N, C, V, NULL), RT_OK);
    double *g = hsub(dt, prior, V * C);
    fd_check("embedding dtable", embedding_loss, &c, c.table, V * C, g, 1000, 1e-7);
    /* id 3 appears three times: its row is the sum of three dout rows */
    double err = 0;
    for (int j = 0; j < C; j++)
        err = fmax(err, fabs(g[3 * C + j] - (c.dout[0 * C + j] + c.dout[2 * C + j] + c.dout[5 * C + j])));
    CHECK_NEAR(err, 0, 1e-15);
    for (int j = 0; j < C; j++) /* ids 2, 4, 5 unused: untouched */
        CHECK(g[2 * C + j] == 0 && g[4 * C + j] == 0 && g[5 * C + j] == 0);

    embedding_loss(&c);
    float *fo = dev_nan(N * C), *ft = dev_f32(c.table, V * C);
    int32_t *fids = dev_i32(ids, N);
    CHECK_EQ_INT(be->embedding_forward(fo, fids, ft, N, C, V, NULL), RT_OK);
    f32_check("embedding out", fo, c.out, N * C, 1e-7);
    float *fdt = dev_f32(prior, V * C);
    CHECK_EQ_INT(be->embedding_backward(fdt, dev_f32(c.dout, N * C), fids, N, C, V, NULL), RT_OK);
    f32_grad_check("embedding dtable", fdt, prior, g, V * C, 1e-6);

    /* an out-of-range id is refused before anything is written */
    static const int32_t bad[2] = {1, 7};
    double *dt2 = hcopy(prior, V * C);
    CHECK_EQ_INT(kernels_f64_embedding_backward(dt2, c.dout, bad, 2, C, V, NULL), RT_ERR_INVALID);
    CHECK(memcmp(dt2, prior, (size_t)V * C * sizeof *dt2) == 0);
    CHECK_EQ_INT(be->embedding_forward(fo, dev_i32(bad, 2), ft, 2, C, V, NULL), RT_ERR_INVALID);
    release_all();
}

/* ---- rmsnorm ------------------------------------------------------------ */

typedef struct {
    double *out, *rstd, *dout, *inp, *w;
    int N, C;
    double eps;
} rmsnorm_ctx;

static double rmsnorm_loss(void *p)
{
    rmsnorm_ctx *c = p;
    kernels_f64_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->N, c->C, c->eps, NULL);
    return dot(c->out, c->dout, (int64_t)c->N * c->C);
}

static void test_rmsnorm(void)
{
    rmsnorm_ctx c = {.N = 3, .C = 8, .eps = 1e-5};
    int N = c.N, C = c.C;
    c.inp = hrand(N * C, -2, 2);
    c.w = hrand(C, 0.5, 1.5);
    c.dout = hrand(N * C, -1, 1);
    c.out = hvec(N * C);
    c.rstd = hvec(N);
    rmsnorm_loss(&c);
    /* forward against the formula */
    double err = 0;
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int j = 0; j < C; j++)
            ss += c.inp[i * C + j] * c.inp[i * C + j];
        double r = 1 / sqrt(ss / C + c.eps);
        err = fmax(err, fabs(c.rstd[i] - r));
        for (int j = 0; j < C; j++)
            err = fmax(err, fabs(c.out[i * C + j] - c.w[j] * c.inp[i * C + j] * r));
    }
    CHECK_NEAR(err, 0, 1e-14);
    double *rstd = hcopy(c.rstd, N);
    double *pi = hrand(N * C, -1, 1), *pw = hrand(C, -1, 1);
    double *di = hcopy(pi, N * C), *dw = hcopy(pw, C);
    CHECK_EQ_INT(kernels_f64_rmsnorm_backward(di, dw, rstd, c.dout, c.inp, c.w, N, C, NULL), RT_OK);
    double *gi = hsub(di, pi, N * C), *gw = hsub(dw, pw, C);
    fd_check("rmsnorm dinp", rmsnorm_loss, &c, c.inp, N * C, gi, 1000, 1e-6);
    fd_check("rmsnorm dweight", rmsnorm_loss, &c, c.w, C, gw, 1000, 1e-6);

    rmsnorm_loss(&c);
    float *fo = dev_nan(N * C), *fr = dev_nan(N), *fi = dev_f32(c.inp, N * C), *fw = dev_f32(c.w, C);
    CHECK_EQ_INT(be->rmsnorm_forward(fo, fr, fi, fw, N, C, (float)c.eps, NULL), RT_OK);
    f32_check("rmsnorm out", fo, c.out, N * C, 1e-6);
    f32_check("rmsnorm rstd", fr, c.rstd, N, 1e-6);
    float *fdi = dev_f32(pi, N * C), *fdw = dev_f32(pw, C);
    CHECK_EQ_INT(be->rmsnorm_backward(fdi, fdw, fr, dev_f32(c.dout, N * C), fi, fw, N, C, NULL), RT_OK);
    f32_grad_check("rmsnorm dinp", fdi, pi, gi, N * C, 1e-5);
    f32_grad_check("rmsnorm dweight", fdw, pw, gw, C, 1e-5);
    /* frozen weight */
    double *di2 = hcopy(pi, N * C);
    CHECK_EQ_INT(kernels_f64_rmsnorm_backward(di2, NULL, rstd, c.dout, c.inp, c.w, N, C, NULL), RT_OK);
    CHECK(memcmp(di2, di, (size_t)N * C * sizeof *di) == 0);
    release_all();
}

/* ---- rope --------------------------------------------------------------- */

typedef struct {
    double *out, *dout, *inp;
    const double *inv_freq;
    const int32_t *pos;
    int N, H, D;
} rope_ctx;

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    kernels_f64_rope_forward(c->out, c->inp, c->pos, c->inv_freq, c->N, c->H, c->D, NULL);
    return dot(c->out, c->dout, (int64_t)c->N * c->H * c->D);
}

static void test_rope(void)
{
    /* positions out of order; an inv_freq table unlike plain theta^(-2i/D)
     * (as Llama-3 scaling makes it) */
    static const int32_t pos[5] = {0, 7, 3, 100, 2};
    static const double inv_freq[4] = {1.0, 0.31, 0.052, 0.00071};
    rope_ctx c = {.pos = pos, .inv_freq = inv_freq, .N = 5, .H = 3, .D = 8};
    int N = c.N, H = c.H, D = c.D, n = N * H * D, half = D / 2;
    c.inp = hrand(n, -1, 1);
    c.dout = hrand(n, -1, 1);
    c.out = hvec(n);
    rope_loss(&c);
    /* forward against HF: q * cat(cos, cos) + rotate_half(q) * cat(sin, sin) */
    double err = 0;
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D; i++) {
                const double *x = c.inp + (t * H + h) * D;
                double a = pos[t] * inv_freq[i % half];
                double rot = i < half ? -x[i + half] : x[i - half];
                err = fmax(err, fabs(c.out[(t * H + h) * D + i] - (x[i] * cos(a) + rot * sin(a))));
            }
    CHECK_NEAR(err, 0, 1e-14);
    /* in place gives the same */
    double *inplace = hcopy(c.inp, n);
    CHECK_EQ_INT(kernels_f64_rope_forward(inplace, inplace, pos, inv_freq, N, H, D, NULL), RT_OK);
    CHECK(memcmp(inplace, c.out, (size_t)n * sizeof *inplace) == 0);

    double *prior = hrand(n, -1, 1), *di = hcopy(prior, n);
    CHECK_EQ_INT(kernels_f64_rope_backward(di, c.dout, pos, inv_freq, N, H, D, NULL), RT_OK);
    double *g = hsub(di, prior, n);
    fd_check("rope dinp", rope_loss, &c, c.inp, n, g, 1000, 1e-7);

    rope_loss(&c);
    float *fo = dev_nan(n), *fi = dev_f32(c.inp, n), *ff = dev_f32(inv_freq, half);
    int32_t *fp = dev_i32(pos, N);
    CHECK_EQ_INT(be->rope_forward(fo, fi, fp, ff, N, H, D, NULL), RT_OK);
    /* float angles (pos 100 * inv_freq rounded to float) differ from double */
    f32_check("rope out", fo, c.out, n, 2e-5);
    CHECK_EQ_INT(be->rope_forward(fi, fi, fp, ff, N, H, D, NULL), RT_OK);
    f32_check("rope out in place", fi, c.out, n, 2e-5);
    float *fdi = dev_f32(prior, n);
    CHECK_EQ_INT(be->rope_backward(fdi, dev_f32(c.dout, n), fp, ff, N, H, D, NULL), RT_OK);
    f32_grad_check("rope dinp", fdi, prior, g, n, 2e-5);
    CHECK_EQ_INT(be->rope_forward(fo, fi, fp, ff, N, H, 7, NULL), RT_ERR_INVALID);
    release_all();
}

/* ---- attention ---------------------------------------------------------- */

typedef struct {
    double *out, *lse, *dout, *q, *k, *v;
    void *scratch;
    int B, T, Hq, Hkv, D, window;
} attention_ctx;

static double attention_loss(void *p)
{
    attention_ctx *c = p;
    kernels_f64_attention_forward(c->out, c->lse, c->scratch, c->q, c->k, c->v,
                                  c->B, c->T, c->Hq, c->Hkv, c->D, c->window, NULL);
    return dot(c->out, c->dout, (int64_t)c->B * c->T * c->Hq * c->D);
}

/* Naive causal GQA forward straight from the definition (HF eager
 * attention with repeat_kv and, for window > 0, Mistral's sliding-window
 * mask: key j is visible to query i when i - window < j <= i): out, lse. */
static void ref_attention(double *out, double *lse, const double *q, const double *k,
                          const double *v, int B, int T, int Hq, int Hkv, int D, int window)
{
    double *sc = malloc((size_t)T * sizeof *sc);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int i = 0; i < T; i++) {
                int hk = h / (Hq / Hkv);
                const double *qi = q + ((b * T + i) * Hq + h) * D;
                double mx = -INFINITY, sum = 0;
                int j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
                for (int j = j0; j <= i; j++) {
                    const double *kj = k + ((b * T + j) * Hkv + hk) * D;
                    double s = 0;
                    for (int d = 0; d < D; d++)
                        s += qi[d] * kj[d];
                    sc[j] = s / sqrt(D);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = j0; j <= i; j++)
                    sum += exp(sc[j] - mx);
                lse[(b * Hq + h) * T + i] = mx + log(sum);
                double *oi = out + ((b * T + i) * Hq + h) * D;
                for (int d = 0; d < D; d++)
                    oi[d] = 0;
                for (int j = j0; j <= i; j++) {
                    const double *vj = v + ((b * T + j) * Hkv + hk) * D;
                    for (int d = 0; d < D; d++)
                        oi[d] += exp(sc[j] - mx) / sum * vj[d];
                }
            }
    free(sc);
}

/* Forward vs the naive reference, FD of all three gradients (up to
 * max_points elements each) and float vs double, for one shape. */
static void attention_case(int B, int T, int Hq, int Hkv, int D, int window, int64_t max_points)
{
    attention_ctx c = {.B = B, .T = T, .Hq = Hq, .Hkv = Hkv, .D = D, .window = window};
    int64_t nq = (int64_t)B * T * Hq * D, nk = (int64_t)B * T * Hkv * D, nl = (int64_t)B * Hq * T;
    size_t sb = kernels_f64_attention_scratch_bytes(B, T, Hq, Hkv, D);
    c.scratch = hvec((int64_t)(sb / sizeof(double)) + 1);
    c.q = hrand(nq, -1.5, 1.5);
    c.k = hrand(nk, -1.5, 1.5);
    c.v = hrand(nk, -1, 1);
    c.dout = hrand(nq, -1, 1);
    c.out = hvec(nq);
    c.lse = hvec(nl);
    attention_loss(&c);
    double *ro = hvec(nq), *rl = hvec(nl), err = 0;
    ref_attention(ro, rl, c.q, c.k, c.v, B, T, Hq, Hkv, D, window);
    for (int64_t i = 0; i < nq; i++)
        err = fmax(err, fabs(ro[i] - c.out[i]));
    for (int64_t i = 0; i < nl; i++)
        err = fmax(err, fabs(rl[i] - c.lse[i]));
    CHECK_NEAR(err, 0, 1e-13);

    double *lse = hcopy(c.lse, nl);
    double *pq = hrand(nq, -1, 1), *pk = hrand(nk, -1, 1), *pv = hrand(nk, -1, 1);
    double *dq = hcopy(pq, nq), *dk = hcopy(pk, nk), *dv = hcopy(pv, nk);
    CHECK_EQ_INT(kernels_f64_attention_backward(dq, dk, dv, lse, c.scratch, c.dout, c.q, c.k, c.v,
                                                B, T, Hq, Hkv, D, window, NULL), RT_OK);
    double *gq = hsub(dq, pq, nq), *gk = hsub(dk, pk, nk), *gv = hsub(dv, pv, nk);
    fd_check("attention dq", attention_loss, &c, c.q, nq, gq, max_points, 1e-6);
    fd_check("attention dk", attention_loss, &c, c.k, nk, gk, max_points, 1e-6);
    fd_check("attention dv", attention_loss, &c, c.v, nk, gv, max_points, 1e-6);

    attention_loss(&c);
    void *fs = dev_raw(be->attention_scratch_bytes(B, T, Hq, Hkv, D));
    float *fo = dev_nan(nq), *fl = dev_nan(nl);
    float *fq = dev_f32(c.q, nq), *fk = dev_f32(c.k, nk), *fv = dev_f32(c.v, nk);
    CHECK_EQ_INT(be->attention_forward(fo, fl, fs, fq, fk, fv, B, T, Hq, Hkv, D, window, NULL),
                 RT_OK);
    f32_check("attention out", fo, c.out, nq, 1e-5);
    f32_check("attention lse", fl, c.lse, nl, 1e-5);
    float *fdq = dev_f32(pq, nq), *fdk = dev_f32(pk, nk), *fdv = dev_f32(pv, nk);
    CHECK_EQ_INT(be->attention_backward(fdq, fdk, fdv, fl, fs, dev_f32(c.dout, nq), fq, fk, fv,
                                        B, T, Hq, Hkv, D, window, NULL), RT_OK);
    f32_grad_check("attention dq", fdq, pq, gq, nq, 2e-5);
    f32_grad_check("attention dk", fdk, pk, gk, nk, 2e-5);
    f32_grad_check("attention dv", fdv, pv, gv, nk, 2e-5);
    release_all();
}

/* An upstream gradient on one query position t0 of batch 0 only must give
 * exactly zero gradient to keys/values after t0, to every other query and
 * to batch 1. */
static void attention_causal(void)
{
    const int B = 2, T = 6, Hq = 4, Hkv = 2, D = 8, t0 = 2;
    int64_t nq = B * T * Hq * D, nk = B * T * Hkv * D;
    double *q = hrand(nq, -1, 1), *k = hrand(nk, -1, 1), *v = hrand(nk, -1, 1);
    double *out = hvec(nq), *lse = hvec(B * Hq * T), *dout = hvec(nq);
    double *scratch = hvec((int64_t)kernels_f64_attention_scratch_bytes(B, T, Hq, Hkv, D) / 8 + 1);
    for (int i = 0; i < Hq * D; i++)
        dout[t0 * Hq * D + i] = urand(-1, 1);
    double *dq = hvec(nq), *dk = hvec(nk), *dv = hvec(nk);
    CHECK_EQ_INT(kernels_f64_attention_forward(out, lse, scratch, q, k, v, B, T, Hq, Hkv, D, 0, NULL), RT_OK);
    CHECK_EQ_INT(kernels_f64_attention_backward(dq, dk, dv, lse, scratch, dout, q, k, v,
                                                B, T, Hq, Hkv, D, 0, NULL), RT_OK);
    int nonzero_future = 0, nonzero_past = 0, nonzero_q = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < Hkv * D; i++) {
                int64_t o = (int64_t)(b * T + t) * Hkv * D + i;
                int live = b == 0 && t <= t0;
                if (!live && (dk[o] != 0 || dv[o] != 0))
                    nonzero_future++;
                if (live && dv[o] != 0)
                    nonzero_past++;
            }
            for (int i = 0; i < Hq * D; i++)
                if (!(b == 0 && t == t0) && dq[(int64_t)(b * T + t) * Hq * D + i] != 0)
                    nonzero_q++;
        }
    CHECK_EQ_INT(nonzero_future, 0);
    CHECK_EQ_INT(nonzero_q, 0);
    CHECK_EQ_INT(nonzero_past, (t0 + 1) * Hkv * D);
    /* a NaN in one query reaches that query's output */
    float *fq = dev_f32(q, nq), *fo = dev_nan(nq), *fl = dev_nan(B * Hq * T);
    const float qnan = NAN;
    CHECK_EQ_INT(be->copy_to_device(fq + 5 * Hq * D + 3, &qnan, sizeof qnan, NULL), RT_OK);
    void *fs = dev_raw(be->attention_scratch_bytes(B, T, Hq, Hkv, D));
    CHECK_EQ_INT(be->attention_forward(fo, fl, fs, fq, dev_f32(k, nk), dev_f32(v, nk),
                                       B, T, Hq, Hkv, D, 0, NULL), RT_OK);
    double *ho = host_f64(fo, nq);
    CHECK(isnan(ho[5 * Hq * D]) && !isnan(ho[4 * Hq * D]));

    /* Hq not a multiple of Hkv */
    CHECK_EQ_INT(kernels_f64_attention_forward(out, lse, scratch, q, k, v, B, T, 3, 2, D, 0, NULL),
                 RT_ERR_INVALID);
    CHECK_EQ_INT(kernels_f64_attention_forward(out, lse, scratch, q, k, v, B, T, Hq, Hkv, D, -1,
                                               NULL), RT_ERR_INVALID);
    release_all();
}

static void test_attention(void)
{
    attention_case(2, 6, 4, 2, 8, 0, 1000);   /* GQA 4/2, every element */
    attention_case(1, 150, 2, 1, 4, 0, 60);   /* three query blocks, one partial */
    attention_case(1, 3, 2, 2, 4, 0, 1000);   /* MHA, T below one block */
    attention_case(2, 9, 4, 2, 8, 3, 1000);   /* sliding window 3 inside one block */
    attention_case(1, 150, 2, 1, 4, 70, 60);  /* window 70 across query blocks */
    attention_case(1, 150, 2, 1, 4, 2, 60);   /* window 2: each query sees itself and one more */
    attention_case(1, 20, 2, 2, 4, 64, 200);  /* window wider than the sequence */
    attention_causal();
}

/* ---- swiglu ------------------------------------------------------------- */

typedef struct {
    double *out, *dout, *gate, *up;
    int64_t n;
} swiglu_ctx;

static double swiglu_loss(void *p)
{
    swiglu_ctx *c = p;
    kernels_f64_swiglu_forward(c->out, c->gate, c->up, c->n, NULL);
    return dot(c->out, c->dout, c->n);
}

static void test_swiglu(void)
{
    swiglu_ctx c = {.n = 50};
    int64_t n = c.n;
    c.gate = hrand(n, -6, 6);
    c.up = hrand(n, -2, 2);
    c.dout = hrand(n, -1, 1);
    c.out = hvec(n);
    double *pg = hrand(n, -1, 1), *pu = hrand(n, -1, 1);
    double *dg = hcopy(pg, n), *du = hcopy(pu, n);
    CHECK_EQ_INT(kernels_f64_swiglu_backward(dg, du, c.dout, c.gate, c.up, n, NULL), RT_OK);
    double *gg = hsub(dg, pg, n), *gu = hsub(du, pu, n);
    fd_check("swiglu dgate", swiglu_loss, &c, c.gate, n, gg, 1000, 1e-6);
    fd_check("swiglu dup", swiglu_loss, &c, c.up, n, gu, 1000, 1e-7); /* linear in up */

    swiglu_loss(&c);
    float *fo = dev_nan(n), *fg = dev_f32(c.gate, n), *fu = dev_f32(c.up, n);
    CHECK_EQ_INT(be->swiglu_forward(fo, fg, fu, n, NULL), RT_OK);
    f32_check("swiglu out", fo, c.out, n, 1e-6);
    float *fdg = dev_f32(pg, n), *fdu = dev_f32(pu, n);
    CHECK_EQ_INT(be->swiglu_backward(fdg, fdu, dev_f32(c.dout, n), fg, fu, n, NULL), RT_OK);
    f32_grad_check("swiglu dgate", fdg, pg, gg, n, 1e-6);
    f32_grad_check("swiglu dup", fdu, pu, gu, n, 1e-6);

    /* saturated gates stay finite in float */
    double ext[4] = {-100, 100, -1000, 1000}, one[4] = {1, 1, 1, 1};
    float *eo = dev_nan(4), *eg = dev_f32(ext, 4), *eu = dev_f32(one, 4);
    float *edg = dev_f32(hvec(4), 4), *edu = dev_f32(hvec(4), 4);
    CHECK_EQ_INT(be->swiglu_forward(eo, eg, eu, 4, NULL), RT_OK);
    CHECK_EQ_INT(be->swiglu_backward(edg, edu, eu, eg, eu, 4, NULL), RT_OK);
    double *ho = host_f64(eo, 4), *hdg = host_f64(edg, 4), *hdu = host_f64(edu, 4);
    for (int i = 0; i < 4; i++) {
        double want = ext[i] > 0 ? ext[i] : 0;
        CHECK_NEAR(ho[i], want, 1e-6 * fabs(ext[i]));
        CHECK_NEAR(hdg[i], ext[i] > 0 ? 1 : 0, 1e-6);
        CHECK_NEAR(hdu[i], want, 1e-6 * fabs(ext[i]));
    }
    release_all();
}

/* ---- cross-entropy ------------------------------------------------------ */

typedef struct {
    double *losses, *correct, *lse, *logits, *weights;
    const int32_t *targets;
    int N, V;
    double scale;
} ce_ctx;

/* L = scale * sum(weights * losses): the loss the backward differentiates. */
static double ce_loss(void *p)
{
    ce_ctx *c = p;
    kernels_f64_cross_entropy_forward(c->losses, c->correct, c->lse, c->logits, c->targets,
                                      c->N, c->V, NULL);
    return c->scale * dot(c->losses, c->weights, c->N);
}

static void test_cross_entropy(void)
{
    /* row 1 ignored (-100), row 2 masked (weight 0) */
    static const int32_t targets[5] = {3, -100, 0, 10, 5};
    double weights[5] = {1, 1, 0, 0.5, 2};
    ce_ctx c = {.targets = targets, .weights = weights, .N = 5, .V = 11, .scale = 1 / 3.5};
    int N = c.N, V = c.V;
    c.logits = hrand(N * V, -3, 3);
    c.logits[3 * V + 10] = 5; /* row 3: the target is the argmax */
    c.losses = hvec(N);
    c.correct = hvec(N);
    c.lse = hvec(N);
    ce_loss(&c);
    for (int i = 0; i < N; i++) {
        const double *l = c.logits + i * V;
        double s = 0;
        int am = 0;
        for (int j = 0; j < V; j++) {
            s += exp(l[j]);
            am = l[j] > l[am] ? j : am;
        }
        double want = targets[i] < 0 ? 0 : log(s) - l[targets[i]];
        CHECK_NEAR(c.losses[i], want, 1e-14);
        CHECK_NEAR(c.lse[i], log(s), 1e-14);
        CHECK(c.correct[i] == (targets[i] == am));
    }
    CHECK(c.correct[3] == 1);

    /* the gradient overwrites what dlogits held (here noise) */
    double *lse = hcopy(c.lse, N), *prior = hrand(N * V, -1, 1), *g = hcopy(prior, N * V);
    CHECK_EQ_INT(kernels_f64_cross_entropy_backward(g, lse, c.logits, targets, weights, N, V,
                                                    c.scale, NULL), RT_OK);
    fd_check("cross_entropy dlogits", ce_loss, &c, c.logits, N * V, g, 1000, 1e-6);
    for (int j = 0; j < V; j++) /* ignored and masked rows are exactly 0 */
        CHECK(g[1 * V + j] == 0 && g[2 * V + j] == 0);
    /* in place: dlogits == logits gives the same gradient */
    double *inplace = hcopy(c.logits, N * V);
    CHECK_EQ_INT(kernels_f64_cross_entropy_backward(inplace, lse, inplace, targets, weights, N, V,
                                                    c.scale, NULL), RT_OK);
    CHECK(memcmp(inplace, g, (size_t)N * V * sizeof(double)) == 0);

    ce_loss(&c);
    float *fl = dev_nan(N), *fc = dev_nan(N), *fse = dev_nan(N), *fx = dev_f32(c.logits, N * V);
    int32_t *ft = dev_i32(targets, N);
    CHECK_EQ_INT(be->cross_entropy_forward(fl, fc, fse, fx, ft, N, V, NULL), RT_OK);
    f32_check("cross_entropy losses", fl, c.losses, N, 1e-5);
    f32_check("cross_entropy lse", fse, c.lse, N, 1e-6);
    f32_check("cross_entropy correct", fc, c.correct, N, 0);
    float *fdl = dev_f32(prior, N * V);
    CHECK_EQ_INT(be->cross_entropy_backward(fdl, fse, fx, ft, dev_f32(weights, N), N, V,
                                            (float)c.scale, NULL), RT_OK);
    f32_check("cross_entropy dlogits", fdl, g, N * V, 1e-5);
    float *fin = dev_f32(c.logits, N * V); /* in place on the float path too */
    CHECK_EQ_INT(be->cross_entropy_backward(fin, fse, fin, ft, dev_f32(weights, N), N, V,
                                            (float)c.scale, NULL), RT_OK);
    f32_check("cross_entropy dlogits in place", fin, g, N * V, 1e-5);

    /* stability: shifted logits give the same losses and gradients whose
     * rows sum to 0, in float. The float logits themselves carry the error:
     * an ulp is 4e-6 at 40 and 1e-3 at 1e4 (also in lse, hence the rows). */
    static const double shifts[2] = {40, 1e4}, tols[2] = {2e-5, 3e-3};
    for (int k = 0; k < 2; k++) {
        double *shifted = hcopy(c.logits, N * V);
        for (int i = 0; i < N * V; i++)
            shifted[i] += shifts[k];
        float *fx2 = dev_f32(shifted, N * V);
        CHECK_EQ_INT(be->cross_entropy_forward(fl, NULL, fse, fx2, ft, N, V, NULL), RT_OK);
        f32_check("cross_entropy shifted losses", fl, c.losses, N, tols[k]);
        float *fdl2 = dev_f32(hvec(N * V), N * V);
        CHECK_EQ_INT(be->cross_entropy_backward(fdl2, fse, fx2, ft, NULL, N, V, 1, NULL), RT_OK);
        double *h = host_f64(fdl2, N * V), rowsum = 0;
        for (int j = 0; j < V; j++)
            rowsum += h[j];
        CHECK_NEAR(rowsum, 0, tols[k]);
        CHECK(isfinite(dot(h, h, N * V)));
    }

    /* a NaN logit makes that row's loss NaN, never a number */
    double *nanrow = hcopy(c.logits, N * V);
    nanrow[3 * V + 7] = NAN;
    CHECK_EQ_INT(be->cross_entropy_forward(fl, NULL, fse, dev_f32(nanrow, N * V), ft, N, V, NULL),
                 RT_OK);
    double *hl = host_f64(fl, N);
    CHECK(isnan(hl[3]) && !isnan(hl[0]));

    static const int32_t bad[1] = {11};
    CHECK_EQ_INT(be->cross_entropy_forward(fl, fc, fse, fx, dev_i32(bad, 1), 1, V, NULL),
                 RT_ERR_INVALID);
    release_all();
}

/* ---- elementwise and reductions ----------------------------------------- */

static void test_elementwise(void)
{
    const int64_t n = 37;
    double *a = hrand(n, -1, 1), *b = hrand(n, -1, 1), *want = hvec(n);
    float *fa = dev_f32(a, n), *fb = dev_f32(b, n), *fo = dev_nan(n);

    for (int64_t i = 0; i < n; i++)
        want[i] = a[i] + b[i];
    CHECK_EQ_INT(be->add(fo, fa, fb, n, NULL), RT_OK);
    f32_check("add", fo, want, n, 1e-7);
    float *fa2 = dev_f32(a, n);
    CHECK_EQ_INT(be->add(fa2, fa2, fb, n, NULL), RT_OK); /* residual in place */
    f32_check("add in place", fa2, want, n, 1e-7);

    for (int64_t i = 0; i < n; i++)
        want[i] = a[i] - 0.5 * b[i];
    CHECK_EQ_INT(be->axpy(fa2 = dev_f32(a, n), fb, n, -0.5f, NULL), RT_OK);
    f32_check("axpy", fa2, want, n, 1e-7);

    for (int64_t i = 0; i < n; i++)
        want[i] = a[i] * 0.25;
    CHECK_EQ_INT(be->scale(fa2 = dev_f32(a, n), n, 0.25f, NULL), RT_OK);
    f32_check("scale", fa2, want, n, 1e-7);

    for (int64_t i = 0; i < n; i++)
        want[i] = a[i] * b[i];
    CHECK_EQ_INT(be->mul_forward(fo, fa, fb, n, NULL), RT_OK);
    f32_check("mul_forward", fo, want, n, 1e-7);
    for (int64_t i = 0; i < n; i++)
        want[i] = a[i] + b[i] * b[i];
    CHECK_EQ_INT(be->mul_backward(fa2 = dev_f32(a, n), fb, fb, n, NULL), RT_OK);
    f32_check("mul_backward", fa2, want, n, 1e-7);

    float *fs = dev_nan(1);
    CHECK_EQ_INT(be->sum_squares(fs, fa, n, NULL), RT_OK);
    double *hs = host_f64(fs, 1), ss = 0, *ha = host_f64(fa, n);
    for (int64_t i = 0; i < n; i++)
        ss += ha[i] * ha[i];
    CHECK_NEAR(hs[0], ss, 1e-7 * ss);
    release_all();
}

/* ---- AdamW -------------------------------------------------------------- */

/* The documented torch.optim.AdamW algorithm, written independently of the
 * kernel: decoupled decay, then bias-corrected moments. */
static void ref_adamw(double *p, double *m, double *v, const double *g, int n, double lr,
                      double b1, double b2, double eps, double wd, int t)
{
    for (int i = 0; i < n; i++) {
        p[i] -= lr * wd * p[i];
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
        p[i] -= lr * mh / (sqrt(vh) + eps);
    }
}

static void test_adamw(void)
{
    enum { n = 5 };
    static const double p0[n] = {0.5, -1.2, 0.03, 2.0, -0.7};
    static const double grads[3][n] = {{0.1, -0.3, 0.02, 1.5, -0.8},
                                       {0.05, 0.2, -0.01, 1.0, 0.4},
                                       {-0.2, 0.1, 0.0, 0.5, -0.3}};
    /* the parameters after each step, computed by hand (Python, float64)
     * from the same formula */
    static const double after[3][n] = {
        {0.48950000099999991, -1.1888000003333332, 0.019970004999997501, 1.9880000000666667, -0.68930000012499992},
        {0.47968870579018708, -1.1861659950925263, 0.017286666283108626, 1.9763084788617649, -0.68594732977038886},
        {0.48127258720043448, -1.1856120272161319, 0.01521058817634433, 1.9653959642118992, -0.68127656953460403}};
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    double *rp = hcopy(p0, n), *rm = hvec(n), *rv = hvec(n);
    double *dp = hcopy(p0, n), *dm = hvec(n), *dv = hvec(n);
    float *fp = dev_f32(p0, n), *fm = dev_f32(rm, n), *fv = dev_f32(rv, n);
    for (int t = 1; t <= 3; t++) {
        ref_adamw(rp, rm, rv, grads[t - 1], n, lr, b1, b2, eps, wd, t);
        CHECK_EQ_INT(kernels_f64_adamw_step(dp, dm, dv, grads[t - 1], n, lr, b1, b2, eps, wd, t,
                                            NULL), RT_OK);
        CHECK_EQ_INT(be->adamw_step(fp, fm, fv, dev_f32(grads[t - 1], n), n, lr, b1, b2, eps, wd,
                                    t, NULL), RT_OK);
        double *hp = host_f64(fp, n);
        for (int i = 0; i < n; i++) {
            CHECK_NEAR(rp[i], after[t - 1][i], 1e-15);
            CHECK_NEAR(dp[i], after[t - 1][i], 1e-14);
            CHECK_NEAR(hp[i], after[t - 1][i], 1e-6 * fabs(after[t - 1][i]) + 1e-8);
        }
    }
    f32_check("adamw m", fm, rm, n, 1e-6);
    f32_check("adamw v", fv, rv, n, 1e-6);
    CHECK_EQ_INT(be->adamw_step(fp, fm, fv, fp, n, 1, 0.9f, 0.99f, 1e-8f, 0, 0, NULL), RT_ERR_INVALID);
    release_all();
}

int main(void)
{
    be = kernels_cpu_backend();
    RUN(test_backend);
    RUN(test_matmul);
    RUN(test_linear);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_rope);
    RUN(test_attention);
    RUN(test_swiglu);
    RUN(test_cross_entropy);
    RUN(test_elementwise);
    RUN(test_adamw);
    return TEST_SUMMARY();
}
