/*
 * kernels/cuda/ops.cu — the non-matmul, non-attention ops of the "cuda"
 * backend: embedding, RMSNorm, RoPE, SwiGLU, cross-entropy, elementwise,
 * sum_squares and AdamW, plus the small helpers of blas.c (bias, column
 * sums, the k = 0 gemm). Each launcher kernels_cuda_<op> takes its CPU
 * twin's arguments (kernels/cpu/ops_impl.h), checks them the same way, and
 * queues one or two kernels on the stream.
 *
 * Numerics: fp32 with expf/logf/sqrtf/sincosf of CUDA's accurate math
 * library (no fast-math); results agree with the CPU ops to a few ulp per
 * element, not bit for bit (nvcc contracts a*b+c to fused multiply-adds;
 * the reductions take a different order). Row reductions are deterministic;
 * embedding_backward, sum_squares and the column sums over many rows
 * accumulate with atomics, so their last bits may vary between runs.
 *
 * Device-resident indices cannot be checked before launch: an embedding id
 * outside [0, V) writes a NaN row forward and is skipped backward; a target
 * >= V gives a NaN loss forward and no gradient backward.
 */
#include "kernels/cuda/common.cuh"

/* ---- blas.c helpers -------------------------------------------------------- */

__global__ void scale_rows_kernel(float *c, int m, int n, int ldc, int64_t stride_c, int64_t total,
                                  float beta)
{
    KERNELS_FOR(idx, total) {
        int64_t per = (int64_t)m * n, b = idx / per, r = idx % per;
        float *p = c + b * stride_c + (r / n) * ldc + r % n;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

int kernels_cuda_scale_rows(float *c, int m, int n, int ldc, int64_t stride_c, int batch,
                            float beta, kernels_stream *s)
{
    int64_t total = (int64_t)m * n * batch;
    if (total <= 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(scale_rows_kernel, kernels_blocks(total), KERNELS_THREADS, 0, s, c, m, n, ldc,
                   stride_c, total, beta);
    return KERNELS_LAUNCHED("scale_rows_kernel");
}

__global__ void bias_forward_kernel(float *out, const float *bias, int OC, int64_t total)
{
    KERNELS_FOR(i, total)
        out[i] += bias[i % OC];
}

int kernels_cuda_bias_forward(float *out, const float *bias, int N, int OC, kernels_stream *s)
{
    int64_t total = (int64_t)N * OC;
    if (total <= 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(bias_forward_kernel, kernels_blocks(total), KERNELS_THREADS, 0, s, out, bias,
                   OC, total);
    return KERNELS_LAUNCHED("bias_forward_kernel");
}

/* Column sums: a block of 32 x 8 threads owns 32 columns and one chunk of
 * rows (rows_per apart); thread (x, y) sums rows y, y+8, ... of its chunk,
 * then the 8 partial sums are added in a fixed order. With one chunk the
 * result is deterministic; with several, chunks meet in atomicAdd. */
#define COLSUM_Y 8
__global__ void colsum_kernel(float *dst, const float *a, const float *b, const float *rowscale,
                              int N, int C, int rows_per)
{
    __shared__ float part[COLSUM_Y][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float acc = 0.0f;
    if (j < C) {
        for (int i = r0 + threadIdx.y; i < r1; i += COLSUM_Y) {
            size_t at = (size_t)i * C + j;
            float v = a[at];
            if (b)
                v *= b[at];
            if (rowscale)
                v *= rowscale[i];
            acc += v;
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < C) {
        float sum = 0.0f;
        for (int y = 0; y < COLSUM_Y; y++)
            sum += part[y][threadIdx.x];
        if (gridDim.y == 1)
            dst[j] += sum;
        else
            atomicAdd(&dst[j], sum);
    }
}

int kernels_cuda_colsum(float *dst, const float *a, const float *b, const float *rowscale,
                        int N, int C, kernels_stream *s)
{
    if (N <= 0 || C <= 0)
        return RT_OK;
    KERNELS_ENTER();
    /* enough chunks to fill the GPU when the columns alone do not */
    int col_blocks = (C + 31) / 32;
    int chunks = (N + 255) / 256;
    int want = (1024 + col_blocks - 1) / col_blocks;
    if (chunks > want)
        chunks = want;
    if (chunks < 1)
        chunks = 1;
    int rows_per = (N + chunks - 1) / chunks;
    chunks = (N + rows_per - 1) / rows_per;
    dim3 grid(col_blocks, chunks), block(32, COLSUM_Y);
    KERNELS_LAUNCH(colsum_kernel, grid, block, 0, s, dst, a, b, rowscale, N, C, rows_per);
    return KERNELS_LAUNCHED("colsum_kernel");
}

/* ---- embedding ------------------------------------------------------------ */

__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table,
                                         int C, int V)
{
    int n = blockIdx.x;
    int32_t id = ids[n];
    float *o = out + (size_t)n * C;
    if (id < 0 || id >= V) {
        for (int j = threadIdx.x; j < C; j += blockDim.x)
            o[j] = NAN;
        return;
    }
    const float *row = table + (size_t)id * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        o[j] = row[j];
}

/* out[n] = table[ids[n]]; an id outside [0, V) gives a NaN row. */
int kernels_cuda_embedding_forward(float *out, const int32_t *ids, const float *table,
                                   int N, int C, int V, kernels_stream *s)
{
    if (N < 0 || C < 0 || V < 0 || !out || !ids || !table)
        return RT_ERR_INVALID;
    if (N == 0 || C == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(embedding_forward_kernel, N, KERNELS_THREADS, 0, s, out, ids, table, C, V);
    return KERNELS_LAUNCHED("embedding_forward_kernel");
}

__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int32_t *ids,
                                          int C, int V)
{
    int n = blockIdx.x;
    int32_t id = ids[n];
    if (id < 0 || id >= V)
        return;
    float *d = dtable + (size_t)id * C;
    const float *g = dout + (size_t)n * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        atomicAdd(&d[j], g[j]);
}

/* dtable[ids[n]] += dout[n] (atomics: repeated ids meet in any order). */
int kernels_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids,
                                    int N, int C, int V, kernels_stream *s)
{
    if (N < 0 || C < 0 || V < 0 || !dtable || !dout || !ids)
        return RT_ERR_INVALID;
    if (N == 0 || C == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(embedding_backward_kernel, N, KERNELS_THREADS, 0, s, dtable, dout, ids, C, V);
    return KERNELS_LAUNCHED("embedding_backward_kernel");
}

/* ---- rmsnorm -------------------------------------------------------------- */

/* One block per row. */
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp,
                                       const float *weight, int C, float eps)
{
    size_t off = (size_t)blockIdx.x * C;
    const float *x = inp + off;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        ss += x[j] * x[j];
    ss = kernels_block_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    if (threadIdx.x == 0)
        rstd[blockIdx.x] = r;
    float *o = out + off;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        o[j] = weight[j] * (x[j] * r);
}

/* out = inp * rstd * weight with rstd = 1/sqrt(mean(inp^2) + eps). */
int kernels_cuda_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                                 int N, int C, float eps, kernels_stream *s)
{
    if (N < 0 || C <= 0 || !out || !rstd || !inp || !weight)
        return RT_ERR_INVALID;
    if (N == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(rmsnorm_forward_kernel, N, KERNELS_THREADS, 0, s, out, rstd, inp, weight, C,
                   eps);
    return KERNELS_LAUNCHED("rmsnorm_forward_kernel");
}

/* One block per row: dx += r g w - x r^3/C sum(g w x). */
__global__ void rmsnorm_backward_kernel(float *dinp, const float *rstd, const float *dout,
                                        const float *inp, const float *weight, int C)
{
    size_t off = (size_t)blockIdx.x * C;
    const float *x = inp + off, *g = dout + off;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        dot += g[j] * weight[j] * x[j];
    dot = kernels_block_sum(dot);
    float r = rstd[blockIdx.x];
    float c = dot * r * r * r / C;
    float *dx = dinp + off;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        dx[j] += r * g[j] * weight[j] - c * x[j];
}

/* dinp += ..., dweight += column sums of dout * inp * rstd (when not NULL). */
int kernels_cuda_rmsnorm_backward(float *dinp, float *dweight, const float *rstd,
                                  const float *dout, const float *inp, const float *weight,
                                  int N, int C, kernels_stream *s)
{
    if (N < 0 || C <= 0 || !dinp || !rstd || !dout || !inp || !weight)
        return RT_ERR_INVALID;
    if (N == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(rmsnorm_backward_kernel, N, KERNELS_THREADS, 0, s, dinp, rstd, dout, inp,
                   weight, C);
    int rc = KERNELS_LAUNCHED("rmsnorm_backward_kernel");
    if (rc == RT_OK && dweight)
        rc = kernels_cuda_colsum(dweight, dout, inp, rstd, N, C, s);
    return rc;
}

/* ---- rope ----------------------------------------------------------------- */

#define ROPE_MAX_D 1024

/* One thread per (token, head, pair i < D/2); the angle is formed in float
 * as the CPU op (and HF) form it. */
__global__ void rope_forward_kernel(float *out, const float *inp, const int32_t *pos,
                                    const float *inv_freq, int H, int half, int64_t total)
{
    KERNELS_FOR(idx, total) {
        int i = (int)(idx % half);
        int64_t nh = idx / half; /* n * H + h */
        float sn, cs;
        sincosf((float)pos[nh / H] * inv_freq[i], &sn, &cs);
        size_t off = (size_t)nh * 2 * half;
        float x1 = inp[off + i], x2 = inp[off + i + half];
        out[off + i] = x1 * cs - x2 * sn;
        out[off + i + half] = x2 * cs + x1 * sn;
    }
}

/* Rotates each (x[i], x[i+D/2]) pair; out may equal inp. */
int kernels_cuda_rope_forward(float *out, const float *inp, const int32_t *pos,
                              const float *inv_freq, int N, int H, int D, kernels_stream *s)
{
    if (N < 0 || H < 0 || D <= 0 || D % 2 || D > ROPE_MAX_D || !out || !inp || !pos || !inv_freq)
        return RT_ERR_INVALID;
    int64_t total = (int64_t)N * H * (D / 2);
    if (total == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(rope_forward_kernel, kernels_blocks(total), KERNELS_THREADS, 0, s, out, inp,
                   pos, inv_freq, H, D / 2, total);
    return KERNELS_LAUNCHED("rope_forward_kernel");
}

__global__ void rope_backward_kernel(float *dinp, const float *dout, const int32_t *pos,
                                     const float *inv_freq, int H, int half, int64_t total)
{
    KERNELS_FOR(idx, total) {
        int i = (int)(idx % half);
        int64_t nh = idx / half;
        float sn, cs;
        sincosf((float)pos[nh / H] * inv_freq[i], &sn, &cs);
        size_t off = (size_t)nh * 2 * half;
        float g1 = dout[off + i], g2 = dout[off + i + half];
        dinp[off + i] += g1 * cs + g2 * sn;
        dinp[off + i + half] += g2 * cs - g1 * sn;
    }
}

/* dinp += the inverse rotation of dout. */
int kernels_cuda_rope_backward(float *dinp, const float *dout, const int32_t *pos,
                               const float *inv_freq, int N, int H, int D, kernels_stream *s)
{
    if (N < 0 || H < 0 || D <= 0 || D % 2 || D > ROPE_MAX_D || !dinp || !dout || !pos || !inv_freq)
        return RT_ERR_INVALID;
    int64_t total = (int64_t)N * H * (D / 2);
    if (total == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(rope_backward_kernel, kernels_blocks(total), KERNELS_THREADS, 0, s, dinp, dout,
                   pos, inv_freq, H, D / 2, total);
    return KERNELS_LAUNCHED("rope_backward_kernel");
}

/* ---- swiglu --------------------------------------------------------------- */

__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, int64_t n)
{
    KERNELS_FOR(i, n) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* out = silu(gate) * up. */
int kernels_cuda_swiglu_forward(float *out, const float *gate, const float *up, int64_t n,
                                kernels_stream *s)
{
    if (n < 0 || !out || !gate || !up)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(swiglu_forward_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, out, gate, up,
                   n);
    return KERNELS_LAUNCHED("swiglu_forward_kernel");
}

__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout,
                                       const float *gate, const float *up, int64_t n)
{
    KERNELS_FOR(i, n) {
        float g = gate[i], d = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        dgate[i] += d * up[i] * sig * (1.0f + g * (1.0f - sig));
        dup[i] += d * g * sig;
    }
}

/* dgate += dout up silu'(gate); dup += dout silu(gate). */
int kernels_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                 const float *up, int64_t n, kernels_stream *s)
{
    if (n < 0 || !dgate || !dup || !dout || !gate || !up)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(swiglu_backward_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, dgate, dup,
                   dout, gate, up, n);
    return KERNELS_LAUNCHED("swiglu_backward_kernel");
}

/* ---- cross-entropy -------------------------------------------------------- */

/* One block per row: an online (max, sum exp) pair and the first argmax per
 * thread, merged across the block. */
__global__ void cross_entropy_forward_kernel(float *losses, float *correct, float *lse,
                                             const float *logits, const int32_t *targets, int V)
{
    __shared__ float sm[32], sl[32], sv[32];
    __shared__ int si[32];
    const float *l = logits + (size_t)blockIdx.x * V;
    float m = -INFINITY, sum = 0.0f, best = -INFINITY;
    int at = V; /* the first index holding best; V = none yet */
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float x = l[j];
        if (x > m) {
            sum = (m == -INFINITY ? 0.0f : sum * expf(m - x)) + 1.0f;
            m = x;
        } else if (x > -INFINITY || x != x) {
            sum += expf(x - m); /* a NaN logit makes the sum NaN, as on the CPU */
        }
        if (x > best || (at == V && x == x)) { /* NaNs are never the argmax */
            best = x;
            at = j;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, o), ol = __shfl_xor_sync(0xffffffffu, sum, o);
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, at, o);
        kernels_lse_merge(&m, &sum, om, ol);
        if (oi != V && (at == V || ov > best || (ov == best && oi < at))) {
            best = ov;
            at = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = sum;
        sv[warp] = best;
        si[warp] = at;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    for (int w = 1; w < nw; w++) {
        kernels_lse_merge(&m, &sum, sm[w], sl[w]);
        if (si[w] != V && (at == V || sv[w] > best || (sv[w] == best && si[w] < at))) {
            best = sv[w];
            at = si[w];
        }
    }
    float ls = m + logf(sum);
    int32_t t = targets[blockIdx.x];
    lse[blockIdx.x] = ls;
    losses[blockIdx.x] = t < 0 ? 0.0f : t >= V ? NAN : ls - l[t];
    if (correct)
        correct[blockIdx.x] = t >= 0 && at == t ? 1.0f : 0.0f;
}

/* Per row: lse, NLL of the target and whether the first argmax hits it. */
int kernels_cuda_cross_entropy_forward(float *losses, float *correct, float *lse,
                                       const float *logits, const int32_t *targets,
                                       int N, int V, kernels_stream *s)
{
    if (N < 0 || V <= 0 || !losses || !lse || !logits || !targets)
        return RT_ERR_INVALID;
    if (N == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(cross_entropy_forward_kernel, N, 512, 0, s, losses, correct, lse, logits,
                   targets, V);
    return KERNELS_LAUNCHED("cross_entropy_forward_kernel");
}

#define CE_PER_THREAD 8

/* Block (row n, chunk y) covers columns [y * 256 * 8, (y + 1) * 256 * 8). */
__global__ void cross_entropy_backward_kernel(float *dlogits, const float *lse,
                                              const float *logits, const int32_t *targets,
                                              const float *weights, int V, float scale)
{
    int n = blockIdx.x;
    int32_t t = targets[n];
    float w = (weights ? weights[n] : 1.0f) * scale;
    bool skip = t < 0 || t >= V || w == 0.0f;
    float L = lse[n];
    const float *l = logits + (size_t)n * V; /* may be dlogits: read, then write */
    float *d = dlogits + (size_t)n * V;
    int j0 = blockIdx.y * blockDim.x * CE_PER_THREAD + threadIdx.x;
    for (int e = 0; e < CE_PER_THREAD; e++) {
        int j = j0 + e * blockDim.x;
        if (j >= V)
            break;
        float v = skip ? 0.0f : w * expf(l[j] - L);
        if (j == t && !skip)
            v -= w;
        d[j] = v;
    }
}

/* dlogits[n] = weights[n] scale (softmax - onehot), 0 on ignored rows;
 * dlogits may be logits. */
int kernels_cuda_cross_entropy_backward(float *dlogits, const float *lse, const float *logits,
                                        const int32_t *targets, const float *weights,
                                        int N, int V, float scale, kernels_stream *s)
{
    if (N < 0 || V <= 0 || !dlogits || !lse || !logits || !targets)
        return RT_ERR_INVALID;
    if (N == 0)
        return RT_OK;
    KERNELS_ENTER();
    int per_block = KERNELS_THREADS * CE_PER_THREAD;
    dim3 grid(N, (V + per_block - 1) / per_block);
    KERNELS_LAUNCH(cross_entropy_backward_kernel, grid, KERNELS_THREADS, 0, s, dlogits, lse,
                   logits, targets, weights, V, scale);
    return KERNELS_LAUNCHED("cross_entropy_backward_kernel");
}

/* ---- elementwise and reductions -------------------------------------------- */

__global__ void add_kernel(float *out, const float *a, const float *b, int64_t n)
{
    KERNELS_FOR(i, n)
        out[i] = a[i] + b[i];
}

__global__ void axpy_kernel(float *y, const float *x, int64_t n, float alpha)
{
    KERNELS_FOR(i, n)
        y[i] += alpha * x[i];
}

__global__ void scale_kernel(float *x, int64_t n, float alpha)
{
    KERNELS_FOR(i, n)
        x[i] *= alpha;
}

__global__ void mul_forward_kernel(float *out, const float *a, const float *b, int64_t n)
{
    KERNELS_FOR(i, n)
        out[i] = a[i] * b[i];
}

__global__ void mul_backward_kernel(float *da, const float *dout, const float *b, int64_t n)
{
    KERNELS_FOR(i, n)
        da[i] += dout[i] * b[i];
}

/* out = a + b; out may equal a or b. */
int kernels_cuda_add(float *out, const float *a, const float *b, int64_t n, kernels_stream *s)
{
    if (n < 0 || !out || !a || !b)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(add_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, out, a, b, n);
    return KERNELS_LAUNCHED("add_kernel");
}

/* y += alpha x. */
int kernels_cuda_axpy(float *y, const float *x, int64_t n, float alpha, kernels_stream *s)
{
    if (n < 0 || !y || !x)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(axpy_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, y, x, n, alpha);
    return KERNELS_LAUNCHED("axpy_kernel");
}

/* x *= alpha. */
int kernels_cuda_scale(float *x, int64_t n, float alpha, kernels_stream *s)
{
    if (n < 0 || !x)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(scale_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, x, n, alpha);
    return KERNELS_LAUNCHED("scale_kernel");
}

/* out = a * b; out may equal a or b. */
int kernels_cuda_mul_forward(float *out, const float *a, const float *b, int64_t n,
                             kernels_stream *s)
{
    if (n < 0 || !out || !a || !b)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(mul_forward_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, out, a, b, n);
    return KERNELS_LAUNCHED("mul_forward_kernel");
}

/* da += dout * b. */
int kernels_cuda_mul_backward(float *da, const float *dout, const float *b, int64_t n,
                              kernels_stream *s)
{
    if (n < 0 || !da || !dout || !b)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    KERNELS_ENTER();
    KERNELS_LAUNCH(mul_backward_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, da, dout, b, n);
    return KERNELS_LAUNCHED("mul_backward_kernel");
}

/* Each block sums its share of x^2 in double, then adds its (float) total
 * to out[0], which the launcher zeroed. */
__global__ void sum_squares_kernel(float *out, const float *x, int64_t n)
{
    double acc = 0.0;
    KERNELS_FOR(i, n)
        acc += (double)x[i] * x[i];
    acc = kernels_block_sum_d(acc);
    if (threadIdx.x == 0)
        atomicAdd(out, (float)acc);
}

/* out[0] = sum x^2 (double within a block, at most 1024 float atomics). */
int kernels_cuda_sum_squares(float *out, const float *x, int64_t n, kernels_stream *s)
{
    if (n < 0 || !out || !x)
        return RT_ERR_INVALID;
    KERNELS_ENTER();
    int rc = KERNELS_CUDA_TRY(cudaMemsetAsync(out, 0, sizeof(float), kernels_cuda_stream(s)));
    if (rc != RT_OK || n == 0)
        return rc;
    unsigned blocks = kernels_blocks(n);
    KERNELS_LAUNCH(sum_squares_kernel, blocks < 1024 ? blocks : 1024, KERNELS_THREADS, 0, s, out,
                   x, n);
    return KERNELS_LAUNCHED("sum_squares_kernel");
}

/* ---- optimizer ------------------------------------------------------------ */

/* The factors of one AdamW step, rounded to float on the host exactly
 * where the CPU op rounds them. */
typedef struct adamw_factors {
    float decay, step_size, bc2_sqrt, eps, w1, w2, b2;
    int lerp_low; /* w1 < 0.5: torch.lerp's first formula */
} adamw_factors;

__global__ void adamw_kernel(float *param, float *m, float *v, const float *grad, int64_t n,
                             adamw_factors f)
{
    KERNELS_FOR(i, n) {
        float g = grad[i], mm = m[i], p = param[i] * f.decay;
        mm = f.lerp_low ? mm + f.w1 * (g - mm) : g - (g - mm) * (1.0f - f.w1);
        float vv = v[i] * f.b2 + f.w2 * g * g;
        float denom = sqrtf(vv) / f.bc2_sqrt + f.eps;
        m[i] = mm;
        v[i] = vv;
        param[i] = p + -f.step_size * (mm / denom);
    }
}

/* torch.optim.AdamW (single-tensor path) for step t; see kernels.h. */
int kernels_cuda_adamw_step(float *param, float *m, float *v, const float *grad, int64_t n,
                            double lr, double beta1, double beta2, double eps,
                            double weight_decay, int t, kernels_stream *s)
{
    if (n < 0 || t < 1 || !param || !m || !v || !grad)
        return RT_ERR_INVALID;
    if (n == 0)
        return RT_OK;
    double bc1 = 1 - pow(beta1, t), bc2 = 1 - pow(beta2, t);
    adamw_factors f;
    f.decay = (float)(1 - lr * weight_decay);
    f.step_size = (float)(lr / bc1);
    f.bc2_sqrt = (float)sqrt(bc2);
    f.eps = (float)eps;
    f.w1 = (float)(1 - beta1);
    f.w2 = (float)(1 - beta2);
    f.b2 = (float)beta2;
    f.lerp_low = f.w1 < 0.5f;
    KERNELS_ENTER();
    KERNELS_LAUNCH(adamw_kernel, kernels_blocks(n), KERNELS_THREADS, 0, s, param, m, v, grad, n, f);
    return KERNELS_LAUNCHED("adamw_kernel");
}
