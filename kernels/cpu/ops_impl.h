/*
 * kernels/cpu/ops_impl.h — the bodies of every CPU op, written once for a
 * generic element type and included twice by kernels/cpu/ops.c: once with
 * real = float (the backend the engine uses) and once with real = double
 * (the twin tests/test_kernels.c checks against finite differences, so the
 * gradient formulas are verified on the very code that runs).
 *
 * The includer defines, before each inclusion:
 *   real         float or double
 *   FN(name)     the public name: kernels_name or kernels_f64_name
 *   GEMM         cblas_sgemm or cblas_dgemm
 *   LOG SQRT COS SIN   the matching libm functions
 *   VEXP         the exp used inside row loops: fast_expf (ops.c) for float,
 *                exp for double
 *   HOT          function multiversioning (target_clones) for float, empty
 *                for double
 *   LINEAR_DIRECT(out, inp, weight, N, C, OC)  1 when it computed
 *                linear_forward's product itself (float: the few-row path
 *                of gemv.h), 0 to leave it to BLAS
 * and the type-independent helpers in ops.c (cblas_trans, ATTN_QB, VW, ...).
 *
 * No function here allocates; all memory is borrowed from the caller.
 * Matrix-shaped work goes to BLAS. The row loops (softmax, cross-entropy,
 * SwiGLU, RMSNorm) are written as VW-wide chunks with a fixed-count inner
 * loop plus a scalar tail: gcc -O2 only vectorizes loops whose trip count is
 * a known multiple of the vector width, and keeping VW partial sums lets it
 * vectorize the reductions without -ffast-math. The remaining plain loops
 * (bias, embedding, rope, elementwise, AdamW) are memory-bound.
 */

/* ---- row primitives ---------------------------------------------------- */

/* The largest of x[0..n), n >= 1. A NaN in x[0] propagates; others are
 * skipped here but reach the caller's sum through exp. */
static inline real FN(vmax)(const real *restrict x, int n)
{
    real acc[VW];
    for (int j = 0; j < VW; j++)
        acc[j] = x[0];
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    real m = acc[0];
    for (int j = 1; j < VW; j++)
        m = acc[j] > m ? acc[j] : m;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* Adds VW partial sums in a fixed order. */
static inline real FN(vsum_lanes)(const real *acc)
{
    real s = 0;
    for (int j = 0; j < VW; j++)
        s += acc[j];
    return s;
}

/* p[i] = exp(p[i] - m) in place; returns their sum. */
static inline real FN(vexp_inplace_sum)(real *restrict p, int n, real m)
{
    real acc[VW] = {0};
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++) {
            p[i + j] = VEXP(p[i + j] - m);
            acc[j] += p[i + j];
        }
    real s = FN(vsum_lanes)(acc);
    for (; i < n; i++) {
        p[i] = VEXP(p[i] - m);
        s += p[i];
    }
    return s;
}

/* The sum of exp(x[i] - m). */
static inline real FN(vexp_sum)(const real *restrict x, int n, real m)
{
    real acc[VW] = {0};
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++)
            acc[j] += VEXP(x[i + j] - m);
    real s = FN(vsum_lanes)(acc);
    for (; i < n; i++)
        s += VEXP(x[i] - m);
    return s;
}

/* p[i] = exp(p[i] - m) in place; returns the sum of p[i] * d[i]. */
static inline real FN(vexp_inplace_dot)(real *restrict p, const real *restrict d, int n, real m)
{
    real acc[VW] = {0};
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++) {
            p[i + j] = VEXP(p[i + j] - m);
            acc[j] += p[i + j] * d[i + j];
        }
    real s = FN(vsum_lanes)(acc);
    for (; i < n; i++) {
        p[i] = VEXP(p[i] - m);
        s += p[i] * d[i];
    }
    return s;
}

/* p[i] *= a. */
static inline void FN(vscale)(real *restrict p, int n, real a)
{
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++)
            p[i + j] *= a;
    for (; i < n; i++)
        p[i] *= a;
}

/* d[i] = p[i] * (d[i] - c): the softmax backward of one row. */
static inline void FN(vsoftmax_grad)(real *restrict d, const real *restrict p, int n, real c)
{
    int i = 0;
    for (; i + VW <= n; i += VW)
        for (int j = 0; j < VW; j++)
            d[i + j] = p[i + j] * (d[i + j] - c);
    for (; i < n; i++)
        d[i] = p[i] * (d[i] - c);
}

/* ---- matrix products --------------------------------------------------- */

/* The one place every product reaches BLAS: row-major gemm with explicit
 * leading dimensions. Handles the empty shapes cblas rejects. */
static void FN(gemm)(real *c, const real *a, const real *b, int m, int n, int k,
                     int trans_a, int trans_b, real alpha, real beta,
                     int lda, int ldb, int ldc)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0) { /* op(a) @ op(b) is all zeros: c = beta * c */
        for (int i = 0; i < m; i++) {
            real *restrict ci = c + (size_t)i * ldc;
            for (int j = 0; j < n; j++)
                ci[j] = beta == 0 ? 0 : beta * ci[j];
        }
        return;
    }
    GEMM(CblasRowMajor, cblas_trans(trans_a), cblas_trans(trans_b), m, n, k,
         alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Dense row-major c = alpha op(a) op(b) + beta c; see kernels.h. */
int FN(matmul)(real *c, const real *a, const real *b, int m, int n, int k,
               int trans_a, int trans_b, real alpha, real beta, kernels_stream *s)
{
    (void)s;
    if (m < 0 || n < 0 || k < 0 || !c || !a || !b)
        return RT_ERR_INVALID;
    int lda = trans_a ? m : k, ldb = trans_b ? k : n;
    FN(gemm)(c, a, b, m, n, k, trans_a, trans_b, alpha, beta,
             lda > 0 ? lda : 1, ldb > 0 ? ldb : 1, n > 0 ? n : 1);
    return RT_OK;
}

/* Strided-batched gemm with explicit leading dimensions; see kernels.h. */
int FN(matmul_strided_batched)(real *c, const real *a, const real *b,
                               int m, int n, int k, int trans_a, int trans_b,
                               real alpha, real beta, int lda, int ldb, int ldc,
                               int64_t stride_a, int64_t stride_b, int64_t stride_c,
                               int batch, kernels_stream *s)
{
    (void)s;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || !c || !a || !b)
        return RT_ERR_INVALID;
    if (lda < imax1(trans_a ? m : k) || ldb < imax1(trans_b ? k : n) || ldc < imax1(n))
        return RT_ERR_INVALID;
    for (int i = 0; i < batch; i++)
        FN(gemm)(c + i * stride_c, a + i * stride_a, b + i * stride_b, m, n, k,
                 trans_a, trans_b, alpha, beta, lda, ldb, ldc);
    return RT_OK;
}

/* ---- linear ------------------------------------------------------------ */

/* out[N,OC] = inp[N,C] weight[OC,C]^T + bias; see kernels.h. */
int FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias,
                       int N, int C, int OC, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || !out || !inp || !weight)
        return RT_ERR_INVALID;
    if (!LINEAR_DIRECT(out, inp, weight, N, C, OC))
        FN(gemm)(out, inp, weight, N, OC, C, 0, 1, 1, 0, imax1(C), imax1(C), imax1(OC));
    if (bias) {
        for (int i = 0; i < N; i++) {
            real *restrict o = out + (size_t)i * OC;
            for (int j = 0; j < OC; j++)
                o[j] += bias[j];
        }
    }
    return RT_OK;
}

/* dinp += dout weight, dweight += dout^T inp, dbias += colsum(dout). */
int FN(linear_backward)(real *dinp, real *dweight, real *dbias,
                        const real *dout, const real *inp, const real *weight,
                        int N, int C, int OC, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || !dout || (dinp && !weight) || (dweight && !inp))
        return RT_ERR_INVALID;
    if (dinp)
        FN(gemm)(dinp, dout, weight, N, C, OC, 0, 0, 1, 1, imax1(OC), imax1(C), imax1(C));
    if (dweight)
        FN(gemm)(dweight, dout, inp, OC, C, N, 1, 0, 1, 1, imax1(OC), imax1(C), imax1(C));
    if (dbias) {
        real *restrict db = dbias;
        for (int i = 0; i < N; i++) {
            const real *restrict g = dout + (size_t)i * OC;
            for (int j = 0; j < OC; j++)
                db[j] += g[j];
        }
    }
    return RT_OK;
}

/* ---- embedding --------------------------------------------------------- */

/* 1 when every id is in [0, V). */
static int FN(ids_valid)(const int32_t *ids, int N, int V)
{
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return 0;
    return 1;
}

/* out[n] = table[ids[n]]; see kernels.h. */
int FN(embedding_forward)(real *out, const int32_t *ids, const real *table,
                          int N, int C, int V, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || V < 0 || !out || !ids || !table || !FN(ids_valid)(ids, N, V))
        return RT_ERR_INVALID;
    for (int i = 0; i < N; i++)
        memcpy(out + (size_t)i * C, table + (size_t)ids[i] * C, (size_t)C * sizeof(real));
    return RT_OK;
}

/* dtable[ids[n]] += dout[n]; ids are checked before anything is written. */
int FN(embedding_backward)(real *dtable, const real *dout, const int32_t *ids,
                           int N, int C, int V, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || V < 0 || !dtable || !dout || !ids || !FN(ids_valid)(ids, N, V))
        return RT_ERR_INVALID;
    for (int i = 0; i < N; i++) {
        real *restrict d = dtable + (size_t)ids[i] * C;
        const real *restrict g = dout + (size_t)i * C;
        for (int j = 0; j < C; j++)
            d[j] += g[j];
    }
    return RT_OK;
}

/* ---- rmsnorm ----------------------------------------------------------- */

/* The sum of a[i] * b[i] * c[i] (pass c = NULL for a[i] * b[i]). */
static inline real FN(vdot3)(const real *restrict a, const real *restrict b,
                             const real *restrict c, int n)
{
    real acc[VW] = {0};
    int i = 0;
    if (c) {
        for (; i + VW <= n; i += VW)
            for (int j = 0; j < VW; j++)
                acc[j] += a[i + j] * b[i + j] * c[i + j];
    } else {
        for (; i + VW <= n; i += VW)
            for (int j = 0; j < VW; j++)
                acc[j] += a[i + j] * b[i + j];
    }
    real s = FN(vsum_lanes)(acc);
    for (; i < n; i++)
        s += a[i] * b[i] * (c ? c[i] : 1);
    return s;
}

/* The forward of rows [0, N); see rmsnorm_forward. */
HOT static void FN(rmsnorm_rows)(real *out, real *rstd, const real *inp, const real *weight,
                                 int N, int C, real eps)
{
    for (int i = 0; i < N; i++) {
        const real *restrict x = inp + (size_t)i * C;
        real *restrict o = out + (size_t)i * C;
        real r = 1 / SQRT(FN(vdot3)(x, x, NULL, C) / C + eps);
        rstd[i] = r;
        int j = 0;
        for (; j + VW <= C; j += VW)
            for (int l = 0; l < VW; l++)
                o[j + l] = weight[j + l] * (x[j + l] * r);
        for (; j < C; j++)
            o[j] = weight[j] * (x[j] * r);
    }
}

/* out = inp * rstd * weight with rstd = 1/sqrt(mean(inp^2) + eps). */
int FN(rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *weight,
                        int N, int C, real eps, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C <= 0 || !out || !rstd || !inp || !weight)
        return RT_ERR_INVALID;
    FN(rmsnorm_rows)(out, rstd, inp, weight, N, C, eps);
    return RT_OK;
}

/* dx += r g w - c x and (dw != NULL) dw += g x r over one row of n. */
static inline void FN(rmsnorm_grad_row)(real *restrict dx, real *restrict dw, const real *restrict g,
                                        const real *restrict x, const real *restrict w,
                                        real r, real c, int n)
{
    int j = 0;
    for (; j + VW <= n; j += VW)
        for (int l = 0; l < VW; l++)
            dx[j + l] += r * g[j + l] * w[j + l] - c * x[j + l];
    for (; j < n; j++)
        dx[j] += r * g[j] * w[j] - c * x[j];
    if (!dw)
        return;
    j = 0;
    for (; j + VW <= n; j += VW)
        for (int l = 0; l < VW; l++)
            dw[j + l] += g[j + l] * x[j + l] * r;
    for (; j < n; j++)
        dw[j] += g[j] * x[j] * r;
}

/* The backward of rows [0, N); see rmsnorm_backward. */
HOT static void FN(rmsnorm_grad_rows)(real *dinp, real *dweight, const real *rstd,
                                      const real *dout, const real *inp, const real *weight,
                                      int N, int C)
{
    for (int i = 0; i < N; i++) {
        const real *x = inp + (size_t)i * C, *g = dout + (size_t)i * C;
        real r = rstd[i];
        real c = FN(vdot3)(g, weight, x, C) * r * r * r / C;
        FN(rmsnorm_grad_row)(dinp + (size_t)i * C, dweight, g, x, weight, r, c, C);
    }
}

/* dinp += r w g - x r^3/C sum(g w x); dweight += g x r (when not NULL). */
int FN(rmsnorm_backward)(real *dinp, real *dweight, const real *rstd,
                         const real *dout, const real *inp, const real *weight,
                         int N, int C, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C <= 0 || !dinp || !rstd || !dout || !inp || !weight)
        return RT_ERR_INVALID;
    FN(rmsnorm_grad_rows)(dinp, dweight, rstd, dout, inp, weight, N, C);
    return RT_OK;
}

/* ---- rope -------------------------------------------------------------- */

/* cs/sn[i] = cos/sin(pos * inv_freq[i]) for one token; the angle is formed
 * in the element type, as HF forms it in float32. */
static void FN(rope_angles)(real *cs, real *sn, int32_t pos, const real *inv_freq, int half)
{
    for (int i = 0; i < half; i++) {
        real a = (real)pos * inv_freq[i];
        cs[i] = COS(a);
        sn[i] = SIN(a);
    }
}

/* Rotates each (x[i], x[i+D/2]) pair; out may equal inp. See kernels.h. */
int FN(rope_forward)(real *out, const real *inp, const int32_t *pos, const real *inv_freq,
                     int N, int H, int D, kernels_stream *s)
{
    (void)s;
    if (N < 0 || H < 0 || D <= 0 || D % 2 || D > ROPE_MAX_D || !out || !inp || !pos || !inv_freq)
        return RT_ERR_INVALID;
    int half = D / 2;
    real cs[ROPE_MAX_D / 2], sn[ROPE_MAX_D / 2];
    for (int n = 0; n < N; n++) {
        FN(rope_angles)(cs, sn, pos[n], inv_freq, half);
        for (int h = 0; h < H; h++) {
            size_t off = ((size_t)n * H + h) * D;
            const real *x = inp + off;
            real *o = out + off;
            for (int i = 0; i < half; i++) {
                real x1 = x[i], x2 = x[i + half];
                o[i] = x1 * cs[i] - x2 * sn[i];
                o[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
    return RT_OK;
}

/* dinp += the inverse rotation of dout. */
int FN(rope_backward)(real *dinp, const real *dout, const int32_t *pos, const real *inv_freq,
                      int N, int H, int D, kernels_stream *s)
{
    (void)s;
    if (N < 0 || H < 0 || D <= 0 || D % 2 || D > ROPE_MAX_D || !dinp || !dout || !pos || !inv_freq)
        return RT_ERR_INVALID;
    int half = D / 2;
    real cs[ROPE_MAX_D / 2], sn[ROPE_MAX_D / 2];
    for (int n = 0; n < N; n++) {
        FN(rope_angles)(cs, sn, pos[n], inv_freq, half);
        for (int h = 0; h < H; h++) {
            size_t off = ((size_t)n * H + h) * D;
            const real *restrict g = dout + off;
            real *restrict dx = dinp + off;
            for (int i = 0; i < half; i++) {
                real g1 = g[i], g2 = g[i + half];
                dx[i] += g1 * cs[i] + g2 * sn[i];
                dx[i + half] += g2 * cs[i] - g1 * sn[i];
            }
        }
    }
    return RT_OK;
}

/* ---- attention --------------------------------------------------------- */

/* Scratch bytes for attention: two [QB, T] score blocks. */
size_t FN(attention_scratch_bytes)(int B, int T, int Hq, int Hkv, int D)
{
    (void)B; (void)Hq; (void)Hkv; (void)D;
    if (T <= 0)
        return 0;
    size_t qb = T < ATTN_QB ? (size_t)T : ATTN_QB;
    return 2 * qb * (size_t)T * sizeof(real);
}

/* For rows of query block [i0, i0+nq) over the key block [k0, nk): turns
 * scaled scores sc[nq, nk - k0] into causal (and windowed) probabilities in
 * place and stores each row's lse (lse_row[r], stride 1). Keys a query
 * does not see get probability exactly 0. */
HOT static void FN(attention_softmax_rows)(real *sc, real *lse_row, int i0, int nq, int k0,
                                           int nk, int window)
{
    int w = nk - k0;
    for (int r = 0; r < nq; r++) {
        real *p = sc + (size_t)r * w;
        int lo = attention_first_key(i0 + r, window) - k0, hi = i0 + r + 1 - k0;
        real mx = FN(vmax)(p + lo, hi - lo);
        real sum = FN(vexp_inplace_sum)(p + lo, hi - lo, mx);
        FN(vscale)(p + lo, hi - lo, 1 / sum);
        memset(p, 0, (size_t)lo * sizeof *p);
        memset(p + hi, 0, (size_t)(w - hi) * sizeof *p);
        lse_row[r] = mx + LOG(sum);
    }
}

/* Causal GQA forward, one (b, h) at a time and query blocks of ATTN_QB rows:
 * S = scale Q K^T over only the keys the block sees ([k0, nk): from the
 * window's oldest key to the block's last row), softmax, O = P V. */
int FN(attention_forward)(real *out, real *lse, void *scratch,
                          const real *q, const real *k, const real *v,
                          int B, int T, int Hq, int Hkv, int D, int window, kernels_stream *s)
{
    (void)s;
    if (!attention_sizes_ok(B, T, Hq, Hkv, D) || window < 0 || !out || !lse || !q || !k || !v ||
        (T > 0 && !scratch))
        return RT_ERR_INVALID;
    real *sc = scratch;
    real scale = (real)(1 / sqrt((double)D)); /* head_dim ** -0.5 as Python forms it */
    int group = Hq / Hkv, ldq = Hq * D, ldk = Hkv * D;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            const real *qb = q + (size_t)b * T * ldq + (size_t)h * D;
            const real *kb = k + (size_t)b * T * ldk + (size_t)(h / group) * D;
            const real *vb = v + (size_t)b * T * ldk + (size_t)(h / group) * D;
            real *ob = out + (size_t)b * T * ldq + (size_t)h * D;
            real *lb = lse + ((size_t)b * Hq + h) * T;
            for (int i0 = 0; i0 < T; i0 += ATTN_QB) {
                int nq = T - i0 < ATTN_QB ? T - i0 : ATTN_QB, nk = i0 + nq;
                int k0 = attention_first_key(i0, window), w = nk - k0;
                FN(gemm)(sc, qb + (size_t)i0 * ldq, kb + (size_t)k0 * ldk, nq, w, D, 0, 1, scale, 0,
                         ldq, ldk, w);
                FN(attention_softmax_rows)(sc, lb + i0, i0, nq, k0, nk, window);
                FN(gemm)(ob + (size_t)i0 * ldq, sc, vb + (size_t)k0 * ldk, nq, D, w, 0, 0, 1, 0, w,
                         ldk, ldq);
            }
        }
    }
    return RT_OK;
}

/* For rows of query block [i0, i0+nq) over the key block [k0, nk): turns
 * scaled scores pr[nq, nk - k0] into probabilities exp(s - lse) and dp
 * (dO V^T) into dS = P (dP - rowsum(P dP)), both in place; keys a query
 * does not see get exactly 0 in both. */
HOT static void FN(attention_grad_rows)(real *pr, real *dp, const real *lse_row,
                                        int i0, int nq, int k0, int nk, int window)
{
    int w = nk - k0;
    for (int r = 0; r < nq; r++) {
        real *p = pr + (size_t)r * w, *d = dp + (size_t)r * w;
        int lo = attention_first_key(i0 + r, window) - k0, hi = i0 + r + 1 - k0;
        real dot = FN(vexp_inplace_dot)(p + lo, d + lo, hi - lo, lse_row[r]);
        FN(vsoftmax_grad)(d + lo, p + lo, hi - lo, dot);
        memset(p, 0, (size_t)lo * sizeof *p);
        memset(d, 0, (size_t)lo * sizeof *d);
        memset(p + hi, 0, (size_t)(w - hi) * sizeof *p);
        memset(d + hi, 0, (size_t)(w - hi) * sizeof *d);
    }
}

/* Causal GQA backward. Per query block, over the keys it sees: recompute
 * P = exp(scale Q K^T - lse), dP = dO V^T, dV += P^T dO,
 * dS = P (dP - rowsum(P dP)), dQ += scale dS K, dK += scale dS^T Q. */
int FN(attention_backward)(real *dq, real *dk, real *dv, const real *lse, void *scratch,
                           const real *dout, const real *q, const real *k, const real *v,
                           int B, int T, int Hq, int Hkv, int D, int window, kernels_stream *s)
{
    (void)s;
    if (!attention_sizes_ok(B, T, Hq, Hkv, D) || window < 0 || !dq || !dk || !dv || !lse ||
        !dout || !q || !k || !v || (T > 0 && !scratch))
        return RT_ERR_INVALID;
    size_t qbmax = T < ATTN_QB ? (size_t)T : ATTN_QB;
    real *pr = scratch, *dp = pr + qbmax * (size_t)T;
    real scale = (real)(1 / sqrt((double)D)); /* head_dim ** -0.5 as Python forms it */
    int group = Hq / Hkv, ldq = Hq * D, ldk = Hkv * D;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            size_t oq = (size_t)b * T * ldq + (size_t)h * D;
            size_t ok = (size_t)b * T * ldk + (size_t)(h / group) * D;
            const real *lb = lse + ((size_t)b * Hq + h) * T;
            for (int i0 = 0; i0 < T; i0 += ATTN_QB) {
                int nq = T - i0 < ATTN_QB ? T - i0 : ATTN_QB, nk = i0 + nq;
                int k0 = attention_first_key(i0, window), w = nk - k0;
                size_t oqi = oq + (size_t)i0 * ldq, okk = ok + (size_t)k0 * ldk;
                FN(gemm)(pr, q + oqi, k + okk, nq, w, D, 0, 1, scale, 0, ldq, ldk, w);
                FN(gemm)(dp, dout + oqi, v + okk, nq, w, D, 0, 1, 1, 0, ldq, ldk, w);
                FN(attention_grad_rows)(pr, dp, lb + i0, i0, nq, k0, nk, window);
                FN(gemm)(dv + okk, pr, dout + oqi, w, D, nq, 1, 0, 1, 1, w, ldq, ldk);
                FN(gemm)(dq + oqi, dp, k + okk, nq, D, w, 0, 0, scale, 1, w, ldk, ldq);
                FN(gemm)(dk + okk, dp, q + oqi, w, D, nq, 1, 0, scale, 1, w, ldq, ldk);
            }
        }
    }
    return RT_OK;
}

/* Scratch bytes for attention_kv_forward: one [min(n, QB), T] score block
 * and the block's row lse values. */
size_t FN(attention_kv_scratch_bytes)(int n, int T, int Hq, int Hkv, int D)
{
    (void)Hq; (void)Hkv; (void)D;
    if (n <= 0 || T <= 0)
        return 0;
    size_t qb = n < ATTN_QB ? (size_t)n : ATTN_QB;
    return qb * ((size_t)T + 1) * sizeof(real);
}

/* Cached causal GQA forward for one sequence, one query head at a time and
 * query blocks of ATTN_QB rows: S = scale Q K^T over the keys the block
 * sees, causal (windowed) softmax (the training op's row code with the
 * block offset by past), O = P V. */
int FN(attention_kv_forward)(real *out, void *scratch, const real *q,
                             const real *k_cache, const real *v_cache,
                             int n, int past, int Hq, int Hkv, int D, int window,
                             kernels_stream *s)
{
    (void)s;
    if (!attention_sizes_ok(1, n, Hq, Hkv, D) || past < 0 || window < 0 || !out || !q ||
        !k_cache || !v_cache || (n > 0 && !scratch))
        return RT_ERR_INVALID;
    size_t qbmax = n < ATTN_QB ? (size_t)n : ATTN_QB;
    real *sc = scratch, *lse = sc + qbmax * (size_t)(past + n);
    real scale = (real)(1 / sqrt((double)D)); /* head_dim ** -0.5 as Python forms it */
    int group = Hq / Hkv, ldq = Hq * D, ldk = Hkv * D;
    for (int h = 0; h < Hq; h++) {
        const real *qh = q + (size_t)h * D;
        const real *kh = k_cache + (size_t)(h / group) * D;
        const real *vh = v_cache + (size_t)(h / group) * D;
        real *oh = out + (size_t)h * D;
        for (int i0 = 0; i0 < n; i0 += ATTN_QB) {
            int nq = n - i0 < ATTN_QB ? n - i0 : ATTN_QB, nk = past + i0 + nq;
            int k0 = attention_first_key(past + i0, window), w = nk - k0;
            FN(gemm)(sc, qh + (size_t)i0 * ldq, kh + (size_t)k0 * ldk, nq, w, D, 0, 1, scale, 0,
                     ldq, ldk, w);
            FN(attention_softmax_rows)(sc, lse, past + i0, nq, k0, nk, window);
            FN(gemm)(oh + (size_t)i0 * ldq, sc, vh + (size_t)k0 * ldk, nq, D, w, 0, 0, 1, 0, w,
                     ldk, ldq);
        }
    }
    return RT_OK;
}

/* ---- swiglu ------------------------------------------------------------ */

/* out = silu(g) * u for n elements, silu(x) = x / (1 + exp(-x)) as torch
 * computes it. */
static inline void FN(swiglu_chunk)(real *restrict o, const real *restrict g, const real *restrict u, int n)
{
    for (int j = 0; j < n; j++)
        o[j] = g[j] / (1 + VEXP(-g[j])) * u[j];
}

/* swiglu_chunk over n elements in VW-sized pieces. */
HOT static void FN(swiglu_rows)(real *out, const real *gate, const real *up, int64_t n)
{
    int64_t i = 0;
    for (; i + VW <= n; i += VW) /* VW, a constant, lets the chunk vectorize */
        FN(swiglu_chunk)(out + i, gate + i, up + i, VW);
    FN(swiglu_chunk)(out + i, gate + i, up + i, (int)(n - i));
}

/* out = silu(gate) * up. */
int FN(swiglu_forward)(real *out, const real *gate, const real *up, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !out || !gate || !up)
        return RT_ERR_INVALID;
    FN(swiglu_rows)(out, gate, up, n);
    return RT_OK;
}

/* The SwiGLU backward of the n elements at offset 0: sig = sigmoid(g),
 * dgate += dout up sig (1 + g (1 - sig)), dup += dout g sig. */
static inline void FN(swiglu_grad_chunk)(real *restrict dg, real *restrict du, const real *restrict d,
                                  const real *restrict g, const real *restrict u, int n)
{
    for (int j = 0; j < n; j++) {
        real sig = 1 / (1 + VEXP(-g[j]));
        dg[j] += d[j] * u[j] * sig * (1 + g[j] * (1 - sig));
        du[j] += d[j] * g[j] * sig;
    }
}

/* swiglu_grad_chunk over n elements in VW-sized pieces. */
HOT static void FN(swiglu_grad_rows)(real *dgate, real *dup, const real *dout, const real *gate,
                                     const real *up, int64_t n)
{
    int64_t i = 0;
    for (; i + VW <= n; i += VW)
        FN(swiglu_grad_chunk)(dgate + i, dup + i, dout + i, gate + i, up + i, VW);
    FN(swiglu_grad_chunk)(dgate + i, dup + i, dout + i, gate + i, up + i, (int)(n - i));
}

/* dgate += dout up silu'(gate); dup += dout silu(gate). */
int FN(swiglu_backward)(real *dgate, real *dup, const real *dout, const real *gate,
                        const real *up, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !dgate || !dup || !dout || !gate || !up)
        return RT_ERR_INVALID;
    FN(swiglu_grad_rows)(dgate, dup, dout, gate, up, n);
    return RT_OK;
}

/* ---- cross-entropy ----------------------------------------------------- */

/* 1 when every target is < V (negative targets mean "ignored"). */
static int FN(targets_valid)(const int32_t *targets, int N, int V)
{
    for (int i = 0; i < N; i++)
        if (targets[i] >= V)
            return 0;
    return 1;
}

/* The forward of rows [0, N) for valid targets; see cross_entropy_forward. */
HOT static void FN(cross_entropy_rows)(real *losses, real *correct, real *lse, const real *logits,
                                       const int32_t *targets, int N, int V)
{
    for (int i = 0; i < N; i++) {
        const real *l = logits + (size_t)i * V;
        real mx = FN(vmax)(l, V);
        int am = 0; /* the first index holding the max, as torch.argmax */
        while (am < V - 1 && !(l[am] == mx))
            am++;
        real ls = mx + LOG(FN(vexp_sum)(l, V, mx));
        int t = targets[i];
        lse[i] = ls;
        losses[i] = t < 0 ? 0 : ls - l[t];
        if (correct)
            correct[i] = t >= 0 && am == t;
    }
}

/* Per row: lse, NLL of the target and whether the first argmax hits it. */
int FN(cross_entropy_forward)(real *losses, real *correct, real *lse,
                              const real *logits, const int32_t *targets,
                              int N, int V, kernels_stream *s)
{
    (void)s;
    if (N < 0 || V <= 0 || !losses || !lse || !logits || !targets ||
        !FN(targets_valid)(targets, N, V))
        return RT_ERR_INVALID;
    FN(cross_entropy_rows)(losses, correct, lse, logits, targets, N, V);
    return RT_OK;
}

/* d[i] = w exp(x[i] - m); d may be x: each block of VW is read before it is
 * written. */
static inline void FN(vexp_scale)(real *d, const real *x, int n, real m, real w)
{
    int i = 0;
    for (; i + VW <= n; i += VW) {
        real t[VW];
        for (int j = 0; j < VW; j++)
            t[j] = w * VEXP(x[i + j] - m);
        for (int j = 0; j < VW; j++)
            d[i + j] = t[j];
    }
    for (; i < n; i++)
        d[i] = w * VEXP(x[i] - m);
}

/* The backward of rows [0, N); see cross_entropy_backward. */
HOT static void FN(cross_entropy_grad_rows)(real *dlogits, const real *lse, const real *logits,
                                            const int32_t *targets, const real *weights,
                                            int N, int V, real scale)
{
    for (int i = 0; i < N; i++) {
        int t = targets[i];
        real w = (weights ? weights[i] : 1) * scale;
        real *d = dlogits + (size_t)i * V;
        if (t < 0 || w == 0) {
            memset(d, 0, (size_t)V * sizeof(real));
            continue;
        }
        FN(vexp_scale)(d, logits + (size_t)i * V, V, lse[i], w);
        d[t] -= w;
    }
}

/* dlogits[n] = weights[n] scale (softmax - onehot), 0 on ignored rows;
 * dlogits may be logits. */
int FN(cross_entropy_backward)(real *dlogits, const real *lse, const real *logits,
                               const int32_t *targets, const real *weights,
                               int N, int V, real scale, kernels_stream *s)
{
    (void)s;
    if (N < 0 || V <= 0 || !dlogits || !lse || !logits || !targets ||
        !FN(targets_valid)(targets, N, V))
        return RT_ERR_INVALID;
    FN(cross_entropy_grad_rows)(dlogits, lse, logits, targets, weights, N, V, scale);
    return RT_OK;
}

/* ---- elementwise and reductions ---------------------------------------- */

/* out = a + b; out may equal a or b. */
int FN(add)(real *out, const real *a, const real *b, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !out || !a || !b)
        return RT_ERR_INVALID;
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return RT_OK;
}

/* y += alpha x. */
int FN(axpy)(real *y, const real *x, int64_t n, real alpha, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !y || !x)
        return RT_ERR_INVALID;
    real *restrict yy = y;
    const real *restrict xx = x;
    for (int64_t i = 0; i < n; i++)
        yy[i] += alpha * xx[i];
    return RT_OK;
}

/* x *= alpha. */
int FN(scale)(real *x, int64_t n, real alpha, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !x)
        return RT_ERR_INVALID;
    for (int64_t i = 0; i < n; i++)
        x[i] *= alpha;
    return RT_OK;
}

/* out = a * b; out may equal a or b. */
int FN(mul_forward)(real *out, const real *a, const real *b, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !out || !a || !b)
        return RT_ERR_INVALID;
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] * b[i];
    return RT_OK;
}

/* da += dout * b. */
int FN(mul_backward)(real *da, const real *dout, const real *b, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !da || !dout || !b)
        return RT_ERR_INVALID;
    real *restrict d = da;
    const real *restrict g = dout, *restrict bb = b;
    for (int64_t i = 0; i < n; i++)
        d[i] += g[i] * bb[i];
    return RT_OK;
}

/* out[0] = sum x^2, accumulated in double with four partial sums. */
int FN(sum_squares)(real *out, const real *x, int64_t n, kernels_stream *s)
{
    (void)s;
    if (n < 0 || !out || !x)
        return RT_ERR_INVALID;
    double acc[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++)
            acc[j] += (double)x[i + j] * x[i + j];
    for (; i < n; i++)
        acc[0] += (double)x[i] * x[i];
    out[0] = (real)((acc[0] + acc[1]) + (acc[2] + acc[3]));
    return RT_OK;
}

/* ---- optimizer --------------------------------------------------------- */

/* torch.optim.AdamW (single-tensor path) for step t; see kernels.h. The
 * hyperparameters arrive as double, as Python holds them; the scalar factors
 * are formed in double, as Python forms them, then rounded to the element
 * type, as the tensor ops round them. */
int FN(adamw_step)(real *param, real *m, real *v, const real *grad, int64_t n,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   int t, kernels_stream *s)
{
    (void)s;
    if (n < 0 || t < 1 || !param || !m || !v || !grad)
        return RT_ERR_INVALID;
    double bc1 = 1 - pow(beta1, t), bc2 = 1 - pow(beta2, t);
    real decay = (real)(1 - lr * weight_decay);
    real step_size = (real)(lr / bc1), bc2_sqrt = (real)sqrt(bc2), epsr = (real)eps;
    real w1 = (real)(1 - beta1), w2 = (real)(1 - beta2), b2 = (real)beta2;
    real *restrict p = param, *restrict mm = m, *restrict vv = v;
    const real *restrict g = grad;
    for (int64_t i = 0; i < n; i++) {
        p[i] *= decay;
        /* torch.lerp: start + w (end - start) for w < 0.5, else end - (end - start)(1 - w) */
        mm[i] = w1 < (real)0.5 ? mm[i] + w1 * (g[i] - mm[i])
                               : g[i] - (g[i] - mm[i]) * (1 - w1);
        vv[i] = vv[i] * b2 + w2 * g[i] * g[i];
        real denom = SQRT(vv[i]) / bc2_sqrt + epsr;
        p[i] += -step_size * (mm[i] / denom);
    }
    return RT_OK;
}
