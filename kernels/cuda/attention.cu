/*
 * kernels/cuda/attention.cu — causal grouped-query attention for the "cuda"
 * backend: training forward/backward (the kernels.h contract, lse saved,
 * probabilities recomputed in backward) and the KV-cache op of serving.
 *
 * Training: the (sequence, query head) pairs go in passes of as many as
 * fit ATTN_SCRATCH_FLOATS per score buffer (at least one). A pass fills
 * device arrays of pointers to each pair's head slices (the [B, T, H, D]
 * layouts are read in place, row strides Hq*D and Hkv*D) and to its [T, T]
 * score block in scratch, so each product of the pass is one batched cuBLAS
 * gemm (cublasGemmBatchedEx); a warp per score row does the causal softmax
 * (forward) or the softmax gradient (backward). Keys after a query get
 * probability and gradient exactly 0. The full T x T block is computed
 * (the masked half is wasted work, traded for large tensor-core gemms).
 *
 * Serving (attention_kv_forward): one block of ATTN_KV_WARPS warps per
 * (query, head); each warp walks a share of the cached keys with an online
 * softmax (a lane holds D/32 of the dimensions) and the warps' partial
 * results are merged at the end. Head dims up to ATTN_KV_MAX_D.
 */
#include "kernels/cuda/common.cuh"

#ifndef ATTN_SCRATCH_FLOATS /* (a test build may set a small one to force several passes) */
#define ATTN_SCRATCH_FLOATS ((int64_t)1 << 26) /* 256 MiB per score buffer */
#endif
#define ATTN_ROWS_PER_BLOCK 8                 /* one warp per score row */
#define ATTN_KV_WARPS 8
#define ATTN_KV_MAX_D KERNELS_CUDA_MAX_KV_HEAD_DIM

/* 1 when the attention sizes are usable (as the CPU op's check). */
static int attention_sizes_ok(int B, int T, int Hq, int Hkv, int D)
{
    return B >= 0 && T >= 0 && Hq > 0 && Hkv > 0 && D > 0 && Hq % Hkv == 0;
}

/* Score matrices per chunk for B*Hq (sequence, head) pairs of T tokens. */
static int64_t attention_chunk(int B, int T, int Hq)
{
    int64_t per = (int64_t)T * T, pairs = (int64_t)B * Hq;
    int64_t c = ATTN_SCRATCH_FLOATS / (per > 0 ? per : 1);
    if (c < 1)
        c = 1;
    return c < pairs ? c : pairs;
}

/* The pointer arrays of a chunk: ATTN_PTRS arrays of chunk pointers. */
enum { P_Q, P_K, P_V, P_O, P_DQ, P_DK, P_DV, P_S, P_DP, ATTN_PTRS };

static size_t attention_ptr_bytes(int64_t chunk)
{
    return ((size_t)ATTN_PTRS * (size_t)chunk * sizeof(float *) + 255) / 256 * 256;
}

/* The pointer arrays, then two [chunk, T, T] score buffers (the forward
 * uses the first). */
size_t kernels_cuda_attention_scratch_bytes(int B, int T, int Hq, int Hkv, int D)
{
    (void)Hkv; (void)D;
    if (B <= 0 || T <= 0 || Hq <= 0)
        return 0;
    int64_t chunk = attention_chunk(B, T, Hq);
    return attention_ptr_bytes(chunk) + 2 * (size_t)chunk * (size_t)T * (size_t)T * sizeof(float);
}

/* Pair p of the enumeration every pass uses: p = j * (B*Hkv) + b*Hkv + g
 * is query head h = g*group + j of sequence b. Pairs with the same j are
 * contiguous and never share a kv head of a sequence, so the dK/dV
 * products of one j can run as one batch without write conflicts. */
__host__ __device__ __forceinline__ void attention_pair(int64_t p, int B, int Hq, int Hkv, int *b,
                                                        int *h, int *g)
{
    int64_t per_j = (int64_t)B * Hkv;
    int j = (int)(p / per_j), r = (int)(p % per_j);
    *b = r / Hkv;
    *g = r % Hkv;
    *h = *g * (Hq / Hkv) + j;
}

/* The tensors one pass reads and writes (NULL where unused). */
typedef struct attn_bases {
    const float *q, *k, *v, *o; /* o: out (forward) or dout (backward) */
    float *out, *dq, *dk, *dv, *s, *dp;
} attn_bases;

/* Fills the pointer arrays for pairs [p0, p0 + n): head slices of the
 * [B, T, H, D] tensors and [T, T] blocks of the score buffers. */
__global__ void attention_ptrs_kernel(float **arr, int64_t chunk, attn_bases t, int64_t p0, int n,
                                      int B, int T, int Hq, int Hkv, int D)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n)
        return;
    int b, h, g;
    attention_pair(p0 + e, B, Hq, Hkv, &b, &h, &g);
    size_t oq = ((size_t)b * T * Hq + h) * D, ok = ((size_t)b * T * Hkv + g) * D;
    size_t os = (size_t)e * T * T;
    arr[P_Q * chunk + e] = (float *)t.q + oq;
    arr[P_K * chunk + e] = (float *)t.k + ok;
    arr[P_V * chunk + e] = (float *)t.v + ok;
    arr[P_O * chunk + e] = (t.out ? t.out : (float *)t.o) + oq;
    arr[P_DQ * chunk + e] = t.dq ? t.dq + oq : NULL;
    arr[P_DK * chunk + e] = t.dk ? t.dk + ok : NULL;
    arr[P_DV * chunk + e] = t.dv ? t.dv + ok : NULL;
    arr[P_S * chunk + e] = t.s + os;
    arr[P_DP * chunk + e] = t.dp ? t.dp + os : NULL;
}

/* The lse slot of score row r of a pass starting at pair p0. */
__device__ __forceinline__ int64_t attention_lse_at(int row, int T, int64_t p0, int B, int Hq,
                                                    int Hkv)
{
    int b, h, g;
    attention_pair(p0 + row / T, B, Hq, Hkv, &b, &h, &g);
    return ((int64_t)b * Hq + h) * T + row % T;
}

/* The first key position query position t sees: 0, or with a sliding
 * window (window > 0) the oldest key of (t - window, t]. */
__host__ __device__ __forceinline__ int attention_first_key(int t, int window)
{
    return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

/* Score rows [nrows = pairs * T, T]: row r is query t = r % T. Turns
 * scaled scores into causal (windowed) probabilities in place and stores
 * each row's lse. */
__global__ void attention_softmax_kernel(float *sc, float *lse, int nrows, int T, int window,
                                         int64_t p0, int B, int Hq, int Hkv)
{
    int row = blockIdx.x * ATTN_ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= nrows)
        return; /* the whole warp leaves together */
    int t = row % T, lo = attention_first_key(t, window);
    float *p = sc + (size_t)row * T;
    float m = -INFINITY, l = 0.0f;
    for (int j = lo + lane; j <= t; j += 32)
        kernels_lse_merge(&m, &l, p[j], 1.0f);
    kernels_warp_lse(&m, &l);
    float L = m + logf(l);
    for (int j = lane; j < T; j += 32)
        p[j] = j >= lo && j <= t ? expf(p[j] - L) : 0.0f;
    if (lane == 0)
        lse[attention_lse_at(row, T, p0, B, Hq, Hkv)] = L;
}

/* Score rows as above: sc holds scaled scores, dp holds dO V^T. Leaves the
 * probabilities P in sc and dS = P (dP - rowsum(P dP)) in dp, both exactly
 * 0 after the query. */
__global__ void attention_grad_kernel(float *sc, float *dp, const float *lse, int nrows, int T,
                                      int window, int64_t p0, int B, int Hq, int Hkv)
{
    int row = blockIdx.x * ATTN_ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= nrows)
        return;
    int t = row % T, lo = attention_first_key(t, window);
    float *p = sc + (size_t)row * T, *d = dp + (size_t)row * T;
    float L = lse[attention_lse_at(row, T, p0, B, Hq, Hkv)], dot = 0.0f;
    for (int j = lo + lane; j <= t; j += 32) {
        float pj = expf(p[j] - L);
        p[j] = pj;
        dot += pj * d[j];
    }
    dot = kernels_warp_sum(dot);
    for (int j = lane; j < T; j += 32) {
        if (j >= lo && j <= t) {
            d[j] = p[j] * (d[j] - dot);
        } else {
            p[j] = 0.0f;
            d[j] = 0.0f;
        }
    }
}

/* One pass of pairs [p0, p0 + n): where its pointer arrays and score
 * buffers are, and the sizes. */
typedef struct attn_pass {
    float **arr;
    int64_t chunk, p0;
    int n, B, T, Hq, Hkv, D, window;
    float *s, *dp, scale;
} attn_pass;

/* The pointer array of kind k for the pass, from entry e0. */
static float *const *pass_ptrs(const attn_pass *a, int k, int e0)
{
    return a->arr + (size_t)k * a->chunk + e0;
}

/* Lays out the scratch for pairs [p0, p0 + n) and fills the arrays. */
static int attention_pass_begin(attn_pass *a, void *scratch, int64_t chunk, int64_t p0, int n,
                                attn_bases t, int B, int T, int Hq, int Hkv, int D,
                                kernels_stream *s)
{
    a->arr = (float **)scratch;
    a->chunk = chunk;
    a->p0 = p0;
    a->n = n;
    a->B = B, a->T = T, a->Hq = Hq, a->Hkv = Hkv, a->D = D;
    a->s = (float *)((char *)scratch + attention_ptr_bytes(chunk));
    a->dp = a->s + chunk * (int64_t)T * T;
    a->scale = (float)(1 / sqrt((double)D)); /* head_dim ** -0.5 as Python forms it */
    t.s = a->s;
    t.dp = t.dq ? a->dp : NULL;
    KERNELS_LAUNCH(attention_ptrs_kernel, (n + 127) / 128, 128, 0, s, a->arr, chunk, t, p0, n, B,
                   T, Hq, Hkv, D);
    return KERNELS_LAUNCHED("attention_ptrs_kernel");
}

/* Launches one of the two row kernels over the pass's score rows. */
static int attention_rows(const attn_pass *a, int grad, float *lse, kernels_stream *s)
{
    int nrows = a->n * a->T;
    unsigned blocks = (unsigned)((nrows + ATTN_ROWS_PER_BLOCK - 1) / ATTN_ROWS_PER_BLOCK);
    if (grad) {
        KERNELS_LAUNCH(attention_grad_kernel, blocks, 32 * ATTN_ROWS_PER_BLOCK, 0, s, a->s, a->dp,
                       lse, nrows, a->T, a->window, a->p0, a->B, a->Hq, a->Hkv);
        return KERNELS_LAUNCHED("attention_grad_kernel");
    }
    KERNELS_LAUNCH(attention_softmax_kernel, blocks, 32 * ATTN_ROWS_PER_BLOCK, 0, s, a->s, lse,
                   nrows, a->T, a->window, a->p0, a->B, a->Hq, a->Hkv);
    return KERNELS_LAUNCHED("attention_softmax_kernel");
}

/* Causal GQA forward: per pass of (sequence, head) pairs, S = scale Q K^T,
 * causal softmax (lse saved), O = P V, each as one batched gemm. */
int kernels_cuda_attention_forward(float *out, float *lse, void *scratch,
                                   const float *q, const float *k, const float *v,
                                   int B, int T, int Hq, int Hkv, int D, int window,
                                   kernels_stream *s)
{
    if (!attention_sizes_ok(B, T, Hq, Hkv, D) || window < 0 || !out || !lse || !q || !k || !v ||
        (T > 0 && B > 0 && !scratch))
        return RT_ERR_INVALID;
    if (B == 0 || T == 0)
        return RT_OK;
    KERNELS_ENTER();
    int64_t chunk = attention_chunk(B, T, Hq), pairs = (int64_t)B * Hq;
    int ldq = Hq * D, ldk = Hkv * D, rc = RT_OK;
    attn_bases t = {q, k, v, NULL, out, NULL, NULL, NULL, NULL, NULL};
    for (int64_t p0 = 0; rc == RT_OK && p0 < pairs; p0 += chunk) {
        attn_pass a;
        int n = (int)(pairs - p0 < chunk ? pairs - p0 : chunk);
        a.window = window;
        rc = attention_pass_begin(&a, scratch, chunk, p0, n, t, B, T, Hq, Hkv, D, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(&a, P_S, 0), pass_ptrs(&a, P_Q, 0),
                                           pass_ptrs(&a, P_K, 0), T, T, D, 0, 1, a.scale, 0, ldq,
                                           ldk, T, n, s);
        if (rc == RT_OK)
            rc = attention_rows(&a, 0, lse, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(&a, P_O, 0), pass_ptrs(&a, P_S, 0),
                                           pass_ptrs(&a, P_V, 0), T, D, T, 0, 0, 1, 0, T, ldk, ldq,
                                           n, s);
    }
    return rc;
}

/* dK += scale dS^T Q and dV += P^T dO for the pass, one batched gemm per
 * run of pairs sharing j (so no two products of a batch write one kv head). */
static int attention_dkdv(const attn_pass *a, kernels_stream *s)
{
    int64_t per_j = (int64_t)a->B * a->Hkv;
    int ldq = a->Hq * a->D, ldk = a->Hkv * a->D, T = a->T, D = a->D, rc = RT_OK;
    for (int e0 = 0; rc == RT_OK && e0 < a->n;) {
        int64_t p = a->p0 + e0, next_j = (p / per_j + 1) * per_j;
        int e1 = (int)(next_j - a->p0 < a->n ? next_j - a->p0 : a->n), cnt = e1 - e0;
        rc = kernels_cuda_gemm_batched(pass_ptrs(a, P_DV, e0), pass_ptrs(a, P_S, e0),
                                       pass_ptrs(a, P_O, e0), T, D, T, 1, 0, 1, 1, T, ldq, ldk,
                                       cnt, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(a, P_DK, e0), pass_ptrs(a, P_DP, e0),
                                           pass_ptrs(a, P_Q, e0), T, D, T, 1, 0, a->scale, 1, T,
                                           ldq, ldk, cnt, s);
        e0 = e1;
    }
    return rc;
}

/* Causal GQA backward. Per pass: P = exp(scale Q K^T - lse), dP = dO V^T,
 * dS = P (dP - rowsum(P dP)), dQ += scale dS K, then dV += P^T dO and
 * dK += scale dS^T Q (attention_dkdv). */
int kernels_cuda_attention_backward(float *dq, float *dk, float *dv, const float *lse,
                                    void *scratch, const float *dout, const float *q,
                                    const float *k, const float *v,
                                    int B, int T, int Hq, int Hkv, int D, int window,
                                    kernels_stream *s)
{
    if (!attention_sizes_ok(B, T, Hq, Hkv, D) || window < 0 || !dq || !dk || !dv || !lse || !dout || !q || !k ||
        !v || (T > 0 && B > 0 && !scratch))
        return RT_ERR_INVALID;
    if (B == 0 || T == 0)
        return RT_OK;
    KERNELS_ENTER();
    int64_t chunk = attention_chunk(B, T, Hq), pairs = (int64_t)B * Hq;
    int ldq = Hq * D, ldk = Hkv * D, rc = RT_OK;
    attn_bases t = {q, k, v, dout, NULL, dq, dk, dv, NULL, NULL};
    for (int64_t p0 = 0; rc == RT_OK && p0 < pairs; p0 += chunk) {
        attn_pass a;
        int n = (int)(pairs - p0 < chunk ? pairs - p0 : chunk);
        a.window = window;
        rc = attention_pass_begin(&a, scratch, chunk, p0, n, t, B, T, Hq, Hkv, D, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(&a, P_S, 0), pass_ptrs(&a, P_Q, 0),
                                           pass_ptrs(&a, P_K, 0), T, T, D, 0, 1, a.scale, 0, ldq,
                                           ldk, T, n, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(&a, P_DP, 0), pass_ptrs(&a, P_O, 0),
                                           pass_ptrs(&a, P_V, 0), T, T, D, 0, 1, 1, 0, ldq, ldk, T,
                                           n, s);
        if (rc == RT_OK)
            rc = attention_rows(&a, 1, (float *)lse, s);
        if (rc == RT_OK)
            rc = kernels_cuda_gemm_batched(pass_ptrs(&a, P_DQ, 0), pass_ptrs(&a, P_DP, 0),
                                           pass_ptrs(&a, P_K, 0), T, D, T, 0, 0, a.scale, 1, T,
                                           ldk, ldq, n, s);
        if (rc == RT_OK)
            rc = attention_dkdv(&a, s);
    }
    return rc;
}

/* ---- serving: attention over a KV cache ------------------------------------ */

/* The op needs no scratch. */
size_t kernels_cuda_attention_kv_scratch_bytes(int n, int T, int Hq, int Hkv, int D)
{
    (void)n; (void)T; (void)Hq; (void)Hkv; (void)D;
    return 0;
}

#define KV_DPL (ATTN_KV_MAX_D / 32) /* dimensions per lane */

/* Block (query i, head h): warp w takes keys w, w + ATTN_KV_WARPS, ... up
 * to the query's position past + i, keeping a running max m, sum l and
 * output o (lane holds dims lane, lane + 32, ...); the warps then merge. */
__global__ void attention_kv_kernel(float *out, const float *q, const float *kc, const float *vc,
                                    int past, int Hq, int Hkv, int D, int window, float scale)
{
    __shared__ float wm[ATTN_KV_WARPS], wl[ATTN_KV_WARPS];
    __shared__ float wo[ATTN_KV_WARPS][ATTN_KV_MAX_D];
    int i = blockIdx.x, h = blockIdx.y, g = h / (Hq / Hkv);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float *qr = q + ((size_t)i * Hq + h) * D;
    float qv[KV_DPL], o[KV_DPL];
#pragma unroll
    for (int e = 0; e < KV_DPL; e++) {
        int d = lane + 32 * e;
        qv[e] = d < D ? qr[d] : 0.0f;
        o[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int nk = past + i + 1;
    for (int j = attention_first_key(past + i, window) + warp; j < nk; j += ATTN_KV_WARPS) {
        const float *kr = kc + ((size_t)j * Hkv + g) * D;
        const float *vr = vc + ((size_t)j * Hkv + g) * D;
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < KV_DPL; e++) {
            int d = lane + 32 * e;
            if (d < D)
                dot += qv[e] * kr[d];
        }
        float sc = kernels_warp_sum(dot) * scale;
        float mn = fmaxf(m, sc);
        float corr = m == -INFINITY ? 0.0f : expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < KV_DPL; e++) {
            int d = lane + 32 * e;
            o[e] = o[e] * corr + (d < D ? p * vr[d] : 0.0f);
        }
        m = mn;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < KV_DPL; e++) {
        int d = lane + 32 * e;
        if (d < D)
            wo[warp][d] = o[e];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATTN_KV_WARPS; w++)
        M = fmaxf(M, wm[w]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATTN_KV_WARPS; w++) {
            if (wm[w] == -INFINITY)
                continue; /* a warp that saw no key */
            float f = expf(wm[w] - M);
            num += wo[w][d] * f;
            den += wl[w] * f;
        }
        out[((size_t)i * Hq + h) * D + d] = num / den;
    }
}

/* Cached causal GQA forward for n new queries of one sequence; see kernels.h.
 * RT_ERR_UNSUPPORTED for head dims above ATTN_KV_MAX_D. */
int kernels_cuda_attention_kv_forward(float *out, void *scratch, const float *q,
                                      const float *k_cache, const float *v_cache,
                                      int n, int past, int Hq, int Hkv, int D, int window,
                                      kernels_stream *s)
{
    (void)scratch;
    if (!attention_sizes_ok(1, n, Hq, Hkv, D) || past < 0 || window < 0 || !out || !q || !k_cache || !v_cache)
        return RT_ERR_INVALID;
    if (D > ATTN_KV_MAX_D || Hq > 65535)
        return RT_ERR_UNSUPPORTED;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    float scale = (float)(1 / sqrt((double)D));
    dim3 grid(n, Hq);
    KERNELS_LAUNCH(attention_kv_kernel, grid, 32 * ATTN_KV_WARPS, 0, s, out, q, k_cache, v_cache,
                   past, Hq, Hkv, D, window, scale);
    return KERNELS_LAUNCHED("attention_kv_kernel");
}
