/*
 * kernels/cpu/ops.c — compiles the CPU ops of kernels/cpu/ops_impl.h twice:
 * as float (kernels_<op>, declared in cpu.h, used by the "cpu" backend) and
 * as double (kernels_f64_<op>, declared in cpu_f64.h, used by the tests to
 * check the same code against finite differences in double precision).
 * Everything type-independent the bodies need is defined here first.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_f64.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/pool.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
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

/* linear_forward's product for few rows without BLAS (gemv.h): sgemm would
 * repack the whole weight matrix for them on every call. */
static int linear_direct_f32(float *out, const float *inp, const float *weight, int N, int C,
                             int OC)
{
    if (N > CPU_GEMV_ROWS)
        return 0;
    cpu_gemv(&(cpu_gemv_args){.out = out, .ldo = OC, .inp = inp, .ldi = C, .weight = weight,
                              .wt = CPU_W_F32, .N = N, .C = C, .OC = OC, .alpha = 1.0f});
    return 1;
}

/* The float products run on the backend's pool (gemm.h). */
#define POOLED_SGEMM(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)              \
    cpu_sgemm((ta) == CblasTrans, (tb) == CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

#define real float
#define FN(name) kernels_##name
#define LINEAR_DIRECT linear_direct_f32
#define GEMM POOLED_SGEMM
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
#undef LINEAR_DIRECT

#define real double
#define FN(name) kernels_f64_##name
#define LINEAR_DIRECT(out, inp, weight, N, C, OC) 0
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
#undef LINEAR_DIRECT

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

/* The part of `parts` that runs an item of cost c after `done` of `total`:
 * the one whose equal share holds the item's cost midpoint. */
static int cost_owner(double done, double c, double total, int parts)
{
    int owner = (int)((done + c / 2) / total * parts);
    return owner < parts ? owner : parts - 1;
}

typedef struct lora_job {
    float *y, *t;
    const float *x;
    const kernels_lora_group *groups;
    int n_groups, C, OC, max_rank;
    double total; /* multiply-adds of every group */
    bool add;     /* y[rows] += the terms (else y[rows] = them: few rows only) */
} lora_job;

static double lora_cost(const lora_job *j, const kernels_lora_group *g)
{
    return (double)g->rows * g->r * ((double)j->C + j->OC) + 1;
}

/* One group's two products; its t rows are its own rows of the scratch
 * ([row0, row0 + rows) of [N, max_rank]), so groups can run at once. */
static void lora_one_group(const lora_job *j, const kernels_lora_group *g)
{
    int C = j->C, OC = j->OC;
    float *t = j->t + (size_t)g->row0 * (size_t)j->max_rank;
    if (g->rows == 0)
        return;
    if (g->rows <= CPU_GEMV_ROWS) { /* a decode step's few rows: no BLAS packing */
        cpu_gemv(&(cpu_gemv_args){t, g->r, j->x + (size_t)g->row0 * C, C, g->a, CPU_W_F32,
                                  g->rows, C, g->r, 1.0f, false});
        cpu_gemv(&(cpu_gemv_args){j->y + (size_t)g->row0 * OC, OC, t, g->r, g->b, CPU_W_F32,
                                  g->rows, g->r, OC, g->scale, j->add});
        return;
    }
    kernels_gemm(t, j->x + (size_t)g->row0 * C, g->a, g->rows, g->r, C, 0, 1, 1, 0, imax1(C),
                 imax1(C), g->r);
    kernels_gemm(j->y + (size_t)g->row0 * OC, t, g->b, g->rows, OC, g->r, 0, 1, g->scale, 1,
                 g->r, g->r, imax1(OC));
}

/* cpu_pool part: the groups whose cost midpoint falls in this part's share. */
static void lora_part(void *ctx, int part, int parts)
{
    const lora_job *j = ctx;
    double done = 0;
    for (int i = 0; i < j->n_groups; i++) {
        double c = lora_cost(j, &j->groups[i]);
        if (cost_owner(done, c, j->total, parts) == part)
            lora_one_group(j, &j->groups[i]);
        done += c;
    }
}

/* Per group, t = x[rows] a^T into scratch, then y[rows] += scale * t b^T:
 * two few-row products (gemv.h) for a group of up to CPU_GEMV_ROWS rows,
 * else two sgemms. Many small groups (a decode step over many adapters)
 * are shared out over the backend's threads, each group whole on one. */
int kernels_lora_group_forward(float *y, void *scratch, const float *x,
                               const kernels_lora_group *groups, int n_groups,
                               int N, int C, int OC, int max_rank, kernels_stream *s)
{
    (void)s;
    if (N < 0 || C < 0 || OC < 0 || max_rank < 1 || !y || !x ||
        !kernels_lora_groups_valid(groups, n_groups, N, max_rank) || (N > 0 && !scratch))
        return RT_ERR_INVALID;
    lora_job j = {y, scratch, x, groups, n_groups, C, OC, max_rank, 0, true};
    bool all_small = true;
    for (int i = 0; i < n_groups; i++) {
        j.total += lora_cost(&j, &groups[i]);
        all_small &= groups[i].rows <= CPU_GEMV_ROWS;
    }
    if (n_groups > 1 && all_small && j.total >= CPU_POOL_MIN_WORK)
        cpu_pool_run(lora_part, &j);
    else
        lora_part(&j, 0, 1);
    return RT_OK;
}

/* ---- a projection and its LoRA terms in one pool run ----------------------- */

/* Floats of the groups' x A^T rows at the head of linear_lora_forward's
 * scratch, rounded to 64 bytes. */
static size_t lora_t_floats(int N, int max_rank)
{
    return ((size_t)(N > 0 ? N : 0) * (size_t)(max_rank > 0 ? max_rank : 0) + 15) & ~(size_t)15;
}

/* The x A^T rows [N, max_rank], then the groups' terms [rows, OC] before
 * they are added to the projection, for the steps of up to CPU_GEMV_ROWS
 * rows that take the fused path. */
size_t kernels_linear_lora_scratch_bytes(int N, int OC, int max_rank)
{
    size_t rows = (size_t)(N < CPU_GEMV_ROWS ? N : CPU_GEMV_ROWS);
    return (lora_t_floats(N, max_rank) + rows * (size_t)(OC > 0 ? OC : 0)) * sizeof(float);
}

typedef struct fused_job {
    cpu_gemv_args base; /* out = x W^T */
    lora_job lora;      /* the groups' terms, into the scratch */
} fused_job;

/* cpu_pool part: this part's share of the base product and of the groups,
 * in opposite orders on neighbouring parts: while one thread multiplies
 * the base weights (bound by arithmetic at a few dozen rows), the other
 * reads its adapters (bound by memory), and the two overlap. */
static void fused_part(void *ctx, int part, int parts)
{
    fused_job *j = ctx;
    if (part % 2 == 0) {
        cpu_gemv_share(&j->base, part, parts);
        lora_part(&j->lora, part, parts);
    } else {
        lora_part(&j->lora, part, parts);
        cpu_gemv_share(&j->base, part, parts);
    }
}

/* out[rows] += bias, then += the groups' terms: the order, and so the
 * bits, of linear_forward followed by lora_group_forward. */
static void fused_finish(float *out, const float *terms, const float *bias,
                         const kernels_lora_group *groups, int n_groups, int N, int OC)
{
    for (int i = 0; bias && i < N; i++) {
        float *restrict o = out + (size_t)i * OC;
        for (int k = 0; k < OC; k++)
            o[k] += bias[k];
    }
    for (int g = 0; g < n_groups; g++)
        for (int i = groups[g].row0; i < groups[g].row0 + groups[g].rows; i++) {
            float *restrict o = out + (size_t)i * OC;
            const float *restrict t = terms + (size_t)i * OC;
            for (int k = 0; k < OC; k++)
                o[k] += t[k];
        }
}

/* A projection with fp32 (w16 0) or 16-bit weights plus the LoRA terms of
 * groups; see kernels_backend.linear_lora_forward. Few rows: one pool run
 * for both (fused_part); more rows: the two ops one after the other. */
int kernels_linear_lora_forward(float *out, void *scratch, void *w16_scratch, const float *x,
                                const void *weight, int w16, const float *bias,
                                const kernels_lora_group *groups, int n_groups, int N, int C,
                                int OC, int max_rank, kernels_stream *s)
{
    if (N < 0 || C < 0 || OC < 0 || max_rank < 1 || !out || !x || !weight ||
        (w16 != 0 && w16 != KERNELS_BF16 && w16 != KERNELS_F16) ||
        !kernels_lora_groups_valid(groups, n_groups, N, max_rank) || (N > 0 && !scratch))
        return RT_ERR_INVALID;
    if (N > CPU_GEMV_ROWS || C == 0) {
        int rc = w16 ? kernels_linear16_forward(out, w16_scratch, x, weight, (kernels_dtype)w16, bias,
                                                N, C, OC, s)
                     : kernels_linear_forward(out, x, weight, bias, N, C, OC, s);
        return rc == RT_OK ? kernels_lora_group_forward(out, scratch, x, groups, n_groups, N, C,
                                                        OC, max_rank, s)
                           : rc;
    }
    float *terms = (float *)scratch + lora_t_floats(N, max_rank);
    cpu_wtype wt = w16 == KERNELS_BF16 ? CPU_W_BF16 : w16 == KERNELS_F16 ? CPU_W_F16 : CPU_W_F32;
    fused_job j = {{out, OC, x, C, weight, wt, N, C, OC, 1.0f, false},
                   {terms, scratch, x, groups, n_groups, C, OC, max_rank, 0, false}};
    for (int i = 0; i < n_groups; i++)
        j.lora.total += lora_cost(&j.lora, &groups[i]);
    if ((double)N * C * OC + j.lora.total < CPU_POOL_MIN_WORK)
        fused_part(&j, 0, 1);
    else
        cpu_pool_run(fused_part, &j);
    fused_finish(out, terms, bias, groups, n_groups, N, OC);
    return RT_OK;
}

/* ---- serving: attention over every sequence of a step (float only) ------ */

#define KV_BLOCK 64      /* keys scored at a time by the few-row path */
#define KV_MAX_D 1024    /* the widest head (as ROPE_MAX_D): its sums live on the stack */
#define KV_FEW_ROWS 8    /* segments up to this many rows take the few-row path */

/* The cache rows of positions [p, end) of one head that are contiguous in
 * the cache (p's block and the blocks after it whose ids follow on, as a
 * sequence's blocks taken from a fresh pool do), at most max and before
 * k1: returns the row of p and sets *end. */
static inline const float *kv_run(const float *cache, const int32_t *blocks, int bs, size_t ld,
                                  int p, int k1, int max, int *end)
{
    int e = (p / bs + 1) * bs;
    while (e < k1 && e - p < max && blocks[e / bs] == blocks[e / bs - 1] + 1)
        e += bs;
    e = e < k1 ? e : k1;
    *end = e - p < max ? e : p + max;
    return cache + ((size_t)blocks[p / bs] * (size_t)bs + (size_t)(p % bs)) * ld;
}

/* Query heads whose running sums one few-row unit keeps on the stack: at
 * most KV_HEADS heads and KV_ACC floats of sums (32 KiB). */
#define KV_HEADS 64
#define KV_ACC 8192

/* The query heads [h0, h1) of one new row of a sequence: a unit of the
 * few-row (decode) path. */
typedef struct kv_unit {
    const float *q;  /* the row's query, head h0 first */
    float *out;      /* the row's output, head h0 first */
    int h0, h1, pos; /* heads and the row's position */
} kv_unit;

/* sc[h * KV_BLOCK + j] = scale * dot(q_h, k_j) for the nk keys of a run and
 * every head of the unit, key rows in order: each cache row's slice of the
 * unit's kv heads is read once, as one sequential stream. Query head h
 * reads kv head h / group, at offset (h / group) * D of a cache row. */
HOT_CLONES static void kv_run_scores(float *restrict sc, const float *restrict q,
                                     const float *restrict k, size_t ld, int nk, int h0, int h1,
                                     int group, int D, float scale)
{
    for (int j = 0; j < nk; j++)
        for (int h = h0; h < h1; h++) {
            const float *restrict kr = k + (size_t)j * ld + (size_t)(h / group) * D;
            const float *restrict qh = q + (size_t)(h - h0) * D;
            float acc[VW] = {0};
            int d = 0;
            for (; d + VW <= D; d += VW)
                for (int t = 0; t < VW; t++)
                    acc[t] += qh[d + t] * kr[d + t];
            float s = kernels_vsum_lanes(acc);
            for (; d < D; d++)
                s += qh[d] * kr[d];
            sc[(h - h0) * KV_BLOCK + j] = s * scale;
        }
}

/* acc[h, 0:D) += sum over the run's keys of p[h, j] * v_j for every head
 * of the unit, value rows in order (as kv_run_scores reads keys). */
HOT_CLONES static void kv_run_values(float *restrict acc, const float *restrict p,
                                     const float *restrict v, size_t ld, int nk, int h0, int h1,
                                     int group, int D)
{
    for (int j = 0; j < nk; j++)
        for (int h = h0; h < h1; h++) {
            const float *restrict vr = v + (size_t)j * ld + (size_t)(h / group) * D;
            float *restrict ah = acc + (size_t)(h - h0) * D;
            float pj = p[(h - h0) * KV_BLOCK + j];
            int d = 0;
            for (; d + VW <= D; d += VW) /* fixed-width chunks: -O2 vectorizes these */
                for (int t = 0; t < VW; t++)
                    ah[d + t] += pj * vr[d + t];
            for (; d < D; d++)
                ah[d] += pj * vr[d];
        }
}

/* The layer, block table and shape every row of a call shares. */
typedef struct kv_batch_job {
    float *out;
    const float *q, *k, *v;
    int bs;
    const kernels_kv_seq *seqs;
    int n_seqs, Hq, Hkv, D, window;
    int head_chunk; /* query heads per few-row unit */
    double total;   /* the cost of every few-row unit */
} kv_batch_job;

/* The softmax of one score run folded into a head's running state: the
 * scores become exp(s - m) in place, the sums and acc are rescaled when the
 * maximum m grows (exp(-inf) = 0 for the first run). */
static void kv_fold_run(float *sc, int nk, float *acc, int D, float *m, float *l)
{
    float bm = kernels_vmax(sc, nk);
    if (bm > *m) {
        float r = expf(*m - bm);
        for (int d = 0; d < D; d++)
            acc[d] *= r;
        *l *= r;
        *m = bm;
    }
    *l += kernels_vexp_inplace_sum(sc, nk, *m);
}

/* One unit over keys [k0, pos]: softmax by runs with a running maximum per
 * head, out = sum p v / sum p. Every head's arithmetic is the same whatever
 * the unit's other heads, so the split never changes a bit. */
static void kv_unit_run(const kv_batch_job *j, const kernels_kv_seq *s, const kv_unit *u)
{
    int D = j->D, k1 = u->pos + 1, group = j->Hq / j->Hkv, nh = u->h1 - u->h0;
    size_t ld = (size_t)j->Hkv * D;
    float scale = (float)(1 / sqrt((double)D)); /* head_dim ** -0.5 as Python forms it */
    float acc[KV_ACC], sc[KV_HEADS * KV_BLOCK], m[KV_HEADS], l[KV_HEADS];
    memset(acc, 0, (size_t)nh * (size_t)D * sizeof *acc);
    for (int h = 0; h < nh; h++)
        m[h] = -INFINITY, l[h] = 0;
    for (int p = attention_first_key(u->pos, j->window), e; p < k1; p = e) {
        const float *kr = kv_run(j->k, s->blocks, j->bs, ld, p, k1, KV_BLOCK, &e);
        const float *vr = kv_run(j->v, s->blocks, j->bs, ld, p, k1, KV_BLOCK, &e);
        int nk = e - p;
        kv_run_scores(sc, u->q, kr, ld, nk, u->h0, u->h1, group, D, scale);
        for (int h = 0; h < nh; h++)
            kv_fold_run(sc + h * KV_BLOCK, nk, acc + (size_t)h * D, D, &m[h], &l[h]);
        kv_run_values(acc, sc, vr, ld, nk, u->h0, u->h1, group, D);
    }
    for (int h = 0; h < nh; h++) {
        float inv = 1.0f / l[h];
        for (int d = 0; d < D; d++)
            u->out[(size_t)h * D + d] = acc[(size_t)h * D + d] * inv;
    }
}

/* The end of the few-row unit whose query heads start at h0. */
static int kv_chunk_end(const kv_batch_job *j, int h0)
{
    return h0 + j->head_chunk < j->Hq ? h0 + j->head_chunk : j->Hq;
}

/* The key-row products of one few-row unit of nh heads. */
static double kv_unit_cost(const kernels_kv_seq *s, int window, int nh)
{
    double keys = (double)s->past + s->n;
    if (window > 0 && keys > window)
        keys = window;
    return (double)s->n * keys * nh + 1;
}

/* cpu_pool part: the few-row units (a sequence's new rows, a chunk of
 * query heads each) whose cost midpoint falls in this part's share. */
static void kv_batch_part(void *ctx, int part, int parts)
{
    const kv_batch_job *j = ctx;
    size_t ldq = (size_t)j->Hq * j->D;
    double done = 0;
    for (int i = 0; i < j->n_seqs; i++) {
        const kernels_kv_seq *s = &j->seqs[i];
        if (s->n > KV_FEW_ROWS)
            continue;
        for (int h0 = 0; h0 < j->Hq; h0 += j->head_chunk) {
            int h1 = kv_chunk_end(j, h0);
            double c = kv_unit_cost(s, j->window, h1 - h0);
            if (cost_owner(done, c, j->total, parts) == part)
                for (int r = 0; r < s->n; r++) {
                    size_t at = (size_t)(s->row0 + r) * ldq + (size_t)h0 * j->D;
                    kv_unit u = {j->q + at, j->out + at, h0, h1, s->past + r};
                    kv_unit_run(j, s, &u);
                }
            done += c;
        }
    }
}

/* Query heads per few-row unit: all of them (each sequence's cache rows
 * read whole, in order) up to the stack's bound, split further when there
 * are too few sequences to keep every thread busy. */
static int kv_head_chunk(int Hq, int D, int n_few)
{
    int most = KV_ACC / D < KV_HEADS ? KV_ACC / D : KV_HEADS;
    int threads = cpu_pool_size(), chunks = (Hq + most - 1) / most;
    if (n_few < 4 * threads && chunks < threads)
        chunks = threads < Hq ? threads : Hq;
    return (Hq + chunks - 1) / chunks;
}

/* A long segment (a prefill): attention_kv_forward's block products, with
 * each score block and each P V product taken one cache run at a time. */
static void kv_prefill(const kv_batch_job *j, const kernels_kv_seq *s, float *scratch)
{
    int n = s->n, past = s->past, D = j->D, group = j->Hq / j->Hkv;
    int ldq = j->Hq * D, ld = j->Hkv * D, qbmax = n < ATTN_QB ? n : ATTN_QB;
    float *sc = scratch, *lse = sc + (size_t)qbmax * (size_t)(past + n);
    float scale = (float)(1 / sqrt((double)D));
    for (int h = 0; h < j->Hq; h++) {
        const float *kh = j->k + (size_t)(h / group) * D, *vh = j->v + (size_t)(h / group) * D;
        const float *qh = j->q + (size_t)s->row0 * ldq + (size_t)h * D;
        float *oh = j->out + (size_t)s->row0 * ldq + (size_t)h * D;
        for (int i0 = 0; i0 < n; i0 += ATTN_QB) {
            int nq = n - i0 < ATTN_QB ? n - i0 : ATTN_QB, nk = past + i0 + nq;
            int k0 = attention_first_key(past + i0, j->window), w = nk - k0;
            for (int p = k0, e; p < nk; p = e) {
                const float *kr = kv_run(kh, s->blocks, j->bs, (size_t)ld, p, nk, nk, &e);
                kernels_gemm(sc + (p - k0), qh + (size_t)i0 * ldq, kr, nq, e - p, D, 0, 1, scale,
                             0, ldq, ld, w);
            }
            kernels_attention_softmax_rows(sc, lse, past + i0, nq, k0, nk, j->window);
            for (int p = k0, e; p < nk; p = e) {
                const float *vr = kv_run(vh, s->blocks, j->bs, (size_t)ld, p, nk, nk, &e);
                kernels_gemm(oh + (size_t)i0 * ldq, sc + (p - k0), vr, nq, D, e - p, 0, 0, 1,
                             p == k0 ? 0 : 1, w, ld, ldq);
            }
        }
    }
}

int kernels_attention_kv_batch_forward(float *out, void *scratch, const float *q,
                                       const float *k_cache, const float *v_cache,
                                       int block_size, const kernels_kv_seq *seqs, int n_seqs,
                                       int Hq, int Hkv, int D, int window, kernels_stream *s)
{
    (void)s;
    if (!attention_sizes_ok(1, 1, Hq, Hkv, D) || D > KV_MAX_D || window < 0 || n_seqs < 0 ||
        block_size < 1 || !out || !q || !k_cache || !v_cache || (n_seqs > 0 && !seqs))
        return RT_ERR_INVALID;
    kv_batch_job j = {out, q, k_cache, v_cache, block_size, seqs, n_seqs, Hq, Hkv, D, window, 0, 0};
    int n_few = 0;
    for (int i = 0; i < n_seqs; i++)
        n_few += seqs[i].n <= KV_FEW_ROWS;
    j.head_chunk = kv_head_chunk(Hq, D, n_few);
    for (int i = 0; i < n_seqs; i++) {
        const kernels_kv_seq *x = &seqs[i];
        if (x->n < 0 || x->past < 0 || x->row0 < 0 || (x->n > 0 && !x->blocks) ||
            (x->n > KV_FEW_ROWS && !scratch))
            return RT_ERR_INVALID;
        if (x->n > KV_FEW_ROWS)
            kv_prefill(&j, x, scratch);
        else
            for (int h0 = 0; h0 < Hq; h0 += j.head_chunk)
                j.total += kv_unit_cost(x, window, kv_chunk_end(&j, h0) - h0);
    }
    if (j.total * D < CPU_POOL_MIN_WORK)
        kv_batch_part(&j, 0, 1);
    else if (j.total > 0)
        cpu_pool_run(kv_batch_part, &j);
    return RT_OK;
}
