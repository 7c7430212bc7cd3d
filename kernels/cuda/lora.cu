/*
 * kernels/cuda/lora.cu — the grouped multi-adapter LoRA op of serving
 * (SGMV: segments of token rows, one adapter each) for the "cuda" backend.
 *
 * The host array of groups travels in the kernels' parameters (up to
 * LORA_CHUNK groups per launch pair; more groups take more launches), so a
 * step needs no upload of pointers. Two kernels per chunk:
 *   shrink: t[row, k] = scale * x[row, :] . a[k, :]   (a block per row,
 *           a warp per rank k, lanes over C)
 *   expand: y[row, o] += sum_k t[row, k] * b[o, k]    (a thread per output)
 * t is the caller's scratch, [N, max_rank]. Blocks find their group by the
 * chunk's prefix sums of group rows, so no block is spent on rows outside
 * the groups.
 */
#include "kernels/cuda/common.cuh"

#define LORA_CHUNK 64

/* One launch's groups, by value in the kernel parameters (~2 KiB). */
typedef struct lora_chunk {
    const float *a[LORA_CHUNK], *b[LORA_CHUNK];
    float scale[LORA_CHUNK];
    int row0[LORA_CHUNK], r[LORA_CHUNK];
    int start[LORA_CHUNK + 1]; /* prefix sums of rows: the chunk's row index of group g */
    int count;
} lora_chunk;

/* The group holding chunk row idx (start[g] <= idx < start[g + 1]). */
__device__ __forceinline__ int lora_find(const lora_chunk &c, int idx)
{
    int lo = 0, hi = c.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c.start[mid] <= idx)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

__global__ void lora_shrink_kernel(float *t, const float *x, lora_chunk c, int C, int max_rank)
{
    int g = lora_find(c, blockIdx.x);
    int row = c.row0[g] + (blockIdx.x - c.start[g]);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float *xr = x + (size_t)row * C;
    for (int k = warp; k < c.r[g]; k += nw) {
        const float *ar = c.a[g] + (size_t)k * C;
        float dot = 0.0f;
        for (int j = lane; j < C; j += 32)
            dot += xr[j] * ar[j];
        dot = kernels_warp_sum(dot);
        if (lane == 0)
            t[(size_t)row * max_rank + k] = c.scale[g] * dot;
    }
}

__global__ void lora_expand_kernel(float *y, const float *t, lora_chunk c, int OC, int max_rank)
{
    int g = lora_find(c, blockIdx.x);
    int row = c.row0[g] + (blockIdx.x - c.start[g]);
    int o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= OC)
        return;
    int r = c.r[g];
    const float *tr = t + (size_t)row * max_rank, *br = c.b[g] + (size_t)o * r;
    float acc = 0.0f;
    for (int k = 0; k < r; k++)
        acc += tr[k] * br[k];
    y[(size_t)row * OC + o] += acc;
}

/* Scratch: [N, max_rank] floats. */
size_t kernels_cuda_lora_group_scratch_bytes(int N, int max_rank)
{
    if (N <= 0 || max_rank <= 0)
        return 0;
    return (size_t)N * (size_t)max_rank * sizeof(float);
}

/* Fills c with the non-empty groups of groups[*next ...] (at most
 * LORA_CHUNK), advancing *next; returns the chunk's row count. */
static int lora_fill_chunk(lora_chunk *c, const kernels_lora_group *groups, int n_groups, int *next)
{
    c->count = 0;
    c->start[0] = 0;
    for (; *next < n_groups && c->count < LORA_CHUNK; (*next)++) {
        const kernels_lora_group *g = &groups[*next];
        if (g->rows == 0)
            continue;
        int i = c->count++;
        c->a[i] = g->a;
        c->b[i] = g->b;
        c->scale[i] = g->scale;
        c->row0[i] = g->row0;
        c->r[i] = g->r;
        c->start[i + 1] = c->start[i] + g->rows;
    }
    return c->start[c->count];
}

/* y[rows_g] += scale_g (x[rows_g] a_g^T) b_g^T per group; see kernels.h. */
int kernels_cuda_lora_group_forward(float *y, void *scratch, const float *x,
                                    const kernels_lora_group *groups, int n_groups,
                                    int N, int C, int OC, int max_rank, kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || max_rank < 1 || !y || !x ||
        !kernels_lora_groups_valid(groups, n_groups, N, max_rank) || (N > 0 && !scratch))
        return RT_ERR_INVALID;
    if (OC == 0 || OC / 256 >= 65535)
        return OC == 0 ? RT_OK : RT_ERR_UNSUPPORTED;
    KERNELS_ENTER();
    float *t = (float *)scratch;
    int next = 0, rc = RT_OK;
    while (rc == RT_OK && next < n_groups) {
        lora_chunk c;
        int rows = lora_fill_chunk(&c, groups, n_groups, &next);
        if (rows == 0)
            continue;
        KERNELS_LAUNCH(lora_shrink_kernel, rows, KERNELS_THREADS, 0, s, t, x, c, C, max_rank);
        rc = KERNELS_LAUNCHED("lora_shrink_kernel");
        if (rc != RT_OK)
            break;
        dim3 grid(rows, (OC + KERNELS_THREADS - 1) / KERNELS_THREADS);
        KERNELS_LAUNCH(lora_expand_kernel, grid, KERNELS_THREADS, 0, s, y, t, c, OC, max_rank);
        rc = KERNELS_LAUNCHED("lora_expand_kernel");
    }
    return rc;
}
