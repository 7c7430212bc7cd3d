/*
 * bench/decode_bench.c — single-stream decoding against the memory-bandwidth
 * bound, and the time from opening a model to its first token.
 *
 *   decode_bench --model DIR [--dtype auto|f32|bf16|f16] [--prompt N]
 *                [--tokens N] [--warmup N] [--bw-mib M] [--bw-threads N]
 *
 * In this order, in one process:
 *   1. Read bandwidth: --bw-threads threads (default: the CPUs online) sum a
 *      buffer of --bw-mib MiB (default 2048, far beyond any cache), best of 5
 *      passes; also with one thread. The buffer is freed before the model
 *      is opened.
 *   2. Time to first token: model_load_named (as `retune serve --dtype`), a
 *      one-slot KV cache (infer_ctx_create), the prefill of a --prompt token
 *      prompt (default 16, random ids) through infer_forward and the argmax
 *      of its logits. load_s, ctx_s, prefill_s and first_token_s (their sum,
 *      from the call that opens the model) are printed.
 *   3. Decode: --warmup greedy tokens (default 4, untimed: a mapped model's
 *      pages are read from the file on first touch), then --tokens greedy
 *      tokens (default 32), each one infer_forward of one row, as the server's
 *      scheduler runs a single stream.
 *   4. With --streams S (S > 1): S sequences in S cache slots, each prefilled
 *      with its own --prompt random ids, then --warmup and --tokens batched
 *      steps of S rows (one row per sequence, as the scheduler decodes S
 *      concurrent streams without HTTP). A second JSON line gives the median
 *      step and S / step as aggregate tokens/s. With --adapters K (1..S),
 *      stream s uses adapter s % K: K adapters made in-process (r 16, alpha
 *      32, --targets qv or all), rows ordered by adapter as the scheduler
 *      orders them, and the same steps are timed with no adapter first, in
 *      the same process: the line gives both and their ratio.
 *
 * The bound: every decoded token reads each projection matrix and the head
 * once (bytes_per_token: their elements times the element size of the loaded
 * dtype; norms, biases, one embedding row and the KV cache are left out, so
 * the bound is slightly optimistic). bound_tokens_per_s = bandwidth /
 * bytes_per_token, and fraction = decode tokens/s / bound with the
 * all-threads bandwidth. One JSON line on stdout.
 *
 * Exit status: 0 on success, 1 when loading or a step fails, 2 on bad flags.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/infer.h"
#include "engine/model.h"
#include "engine/rng.h"

#define BW_PASSES 5
#define MAX_BW_THREADS 64

typedef struct decode_opts {
    const char *model_dir, *dtype;
    int prompt, tokens, warmup, bw_threads, streams, adapters;
    const char *targets;
    size_t bw_mib;
} decode_opts;

/* ---- read bandwidth -------------------------------------------------------- */

typedef struct bw_part {
    const float *p;
    size_t n;
    float sum;
} bw_part;

/* Sums n floats with 32 independent lanes, vectorized for the widest
 * instructions the CPU has, so the loop is bound by memory, not by adds. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("O3")))
#endif
static float sum_lanes(const float *restrict p, size_t n)
{
    float acc[32] = {0};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j++)
            acc[j] += p[i + j];
    for (; i < n; i++)
        acc[0] += p[i];
    float s = 0;
    for (int j = 0; j < 32; j++)
        s += acc[j];
    return s;
}

static void *bw_sum(void *arg)
{
    bw_part *w = arg;
    w->sum = sum_lanes(w->p, w->n);
    return NULL;
}

/* Best GB/s (1e9 bytes) of BW_PASSES passes of threads over buf. */
static double read_bandwidth(const float *buf, size_t n, int threads)
{
    double best = 0;
    for (int pass = 0; pass < BW_PASSES; pass++) {
        pthread_t tid[MAX_BW_THREADS];
        bw_part part[MAX_BW_THREADS];
        double t0 = rt_now_seconds();
        for (int i = 0; i < threads; i++) {
            size_t lo = n * (size_t)i / (size_t)threads, hi = n * (size_t)(i + 1) / (size_t)threads;
            part[i] = (bw_part){buf + lo, hi - lo, 0};
            pthread_create(&tid[i], NULL, bw_sum, &part[i]);
        }
        float sink = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(tid[i], NULL);
            sink += part[i].sum;
        }
        double gbs = (double)n * sizeof(float) / (rt_now_seconds() - t0) / 1e9;
        best = gbs > best && sink == sink ? gbs : best;
    }
    return best;
}

/* ---- the model ----------------------------------------------------------- */

/* Bytes of the matrices one decoded token reads: every projection and the
 * head, in the loaded element size. */
static double bytes_per_token(const model *m)
{
    const model_config *c = &m->cfg;
    double d = c->hidden_size, f = c->intermediate_size, hd = c->head_dim;
    double q = c->num_attention_heads * hd, kv = c->num_key_value_heads * hd;
    double layer = d * q + 2 * d * kv + q * d + 3 * d * f;
    double elems = layer * c->num_hidden_layers + (double)c->vocab_size * d;
    return elems * (m->w16 ? 2.0 : 4.0);
}

static int32_t argmax(const float *row, int V)
{
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        best = row[i] > row[best] ? i : best;
    return best;
}

/* One infer_forward of n tokens at positions [past, past + n) of slot 0;
 * the next-token logits of the last row go to logits. */
static int step(infer_ctx *ctx, const int32_t *ids, int n, int past, float *logits)
{
    infer_seg seg = {0, past, n, NULL};
    int32_t row = n - 1;
    infer_step st = {ids, n, &seg, 1, &row, 1};
    return infer_forward(ctx, &st, logits);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Random-free LoRA adapters of the benchmark's shape (B stays zero: the
 * products cost the same whatever the values). NULL entries when K = 0. */
static int make_adapters(const decode_opts *o, const model *m, lora **ads)
{
    peft_config pc = {.r = 16, .lora_alpha = 32};
    pc.target_modules = !strcmp(o->targets, "all") ? 0x7Fu : (1u << PEFT_Q_PROJ) | (1u << PEFT_V_PROJ);
    for (int i = 0; i < o->adapters; i++) {
        int rc = lora_create(&m->cfg, &pc, m->be, (uint64_t)i + 1, &ads[i]);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* Median seconds of --tokens batched steps of S one-row segments (after
 * --warmup), stream s with adapter ads[s % K] (none when K = 0), each slot
 * prefilled first with its own prompt. */
static int time_streams(const decode_opts *o, model *m, lora **ads, int K, double *med)
{
    int S = o->streams, V = m->cfg.vocab_size, total = o->prompt + o->warmup + o->tokens + 1;
    infer_ctx *ctx = NULL;
    int rc = infer_ctx_create(m, S, total, o->prompt > S ? o->prompt : S, &ctx);
    float *logits = malloc((size_t)S * (size_t)V * sizeof(float));
    int32_t *ids = malloc((size_t)(o->prompt > S ? o->prompt : S) * sizeof(int32_t));
    int32_t *next = malloc((size_t)S * sizeof(int32_t)), *rows = malloc((size_t)S * sizeof(int32_t));
    infer_seg *segs = malloc((size_t)S * sizeof(infer_seg));
    double *secs = malloc((size_t)o->tokens * sizeof(double));
    if (rc == RT_OK && !(logits && ids && next && rows && segs && secs))
        rc = RT_ERR_NOMEM;
    rng r = {7};
    for (int s = 0; rc == RT_OK && s < S; s++) { /* prefill each slot alone */
        for (int i = 0; i < o->prompt; i++)
            ids[i] = (int32_t)rng_below(&r, (uint64_t)V);
        infer_seg seg = {s, 0, o->prompt, K ? ads[s % K] : NULL};
        int32_t last = o->prompt - 1;
        rc = infer_forward(ctx, &(infer_step){ids, o->prompt, &seg, 1, &last, 1}, logits);
        next[s] = argmax(logits, V);
    }
    for (int i = 0; rc == RT_OK && i < o->warmup + o->tokens; i++) {
        for (int k = 0, row = 0; k < (K ? K : 1); k++) /* rows grouped by adapter */
            for (int s = k; s < S; s += K ? K : 1, row++) {
                segs[row] = (infer_seg){s, o->prompt + i, 1, K ? ads[k] : NULL};
                rows[row] = row;
            }
        int32_t *step_ids = ids; /* the step's ids in row order */
        for (int row = 0; row < S; row++)
            step_ids[row] = next[segs[row].slot];
        double s0 = rt_now_seconds();
        rc = infer_forward(ctx, &(infer_step){step_ids, S, segs, S, rows, S}, logits);
        if (i >= o->warmup)
            secs[i - o->warmup] = rt_now_seconds() - s0;
        for (int row = 0; rc == RT_OK && row < S; row++)
            next[segs[row].slot] = argmax(logits + (size_t)row * (size_t)V, V);
    }
    if (rc == RT_OK) {
        qsort(secs, (size_t)o->tokens, sizeof *secs, cmp_double);
        *med = secs[o->tokens / 2];
    }
    free(secs);
    free(segs);
    free(rows);
    free(next);
    free(ids);
    free(logits);
    infer_ctx_free(ctx);
    return rc;
}

/* Step 4: S sequences decoded together, with and without adapters. Prints
 * one JSON line. */
static int run_streams(const decode_opts *o, model *m)
{
    int S = o->streams, K = o->adapters;
    lora **ads = calloc((size_t)(K > 0 ? K : 1), sizeof *ads);
    double base = 0, with = 0;
    int rc = ads ? make_adapters(o, m, ads) : RT_ERR_NOMEM;
    if (rc == RT_OK)
        rc = time_streams(o, m, NULL, 0, &base);
    if (rc == RT_OK && K > 0)
        rc = time_streams(o, m, ads, K, &with);
    if (rc == RT_OK) {
        printf("{\"bench\":\"decode_streams\",\"streams\":%d,\"past\":%d,\"tokens_timed\":%d,"
               "\"step_s_median\":%.5f,\"tokens_per_s\":%.1f", S, o->prompt, o->tokens, base, S / base);
        if (K > 0)
            printf(",\"adapters\":%d,\"targets\":\"%s\",\"adapter_step_s_median\":%.5f,"
                   "\"adapter_tokens_per_s\":%.1f,\"adapters_vs_base\":%.3f",
                   K, o->targets, with, S / with, base / with);
        printf("}\n");
    } else {
        fprintf(stderr, "decode_bench: batched step failed: %s\n", rt_strerror(rc));
    }
    for (int i = 0; ads && i < K; i++)
        lora_free(ads[i]);
    free(ads);
    return rc == RT_OK ? 0 : 1;
}

static int run(const decode_opts *o)
{
    size_t n = o->bw_mib * 1024 * 1024 / sizeof(float);
    float *buf = malloc(n * sizeof(float));
    if (!buf)
        return 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 1023);
    double bw_all = read_bandwidth(buf, n, o->bw_threads), bw_one = read_bandwidth(buf, n, 1);
    free(buf);

    char err[512] = "";
    model *m = NULL;
    infer_ctx *ctx = NULL;
    int total = o->prompt + o->warmup + o->tokens;
    double t0 = rt_now_seconds();
    int rc = model_load_named(o->model_dir, kernels_cpu_backend(), o->dtype, &m, err, sizeof err);
    double t_load = rt_now_seconds();
    if (rc == RT_OK)
        rc = infer_ctx_create(m, 1, total + 1, o->prompt, &ctx);
    double t_ctx = rt_now_seconds();
    if (rc != RT_OK) {
        fprintf(stderr, "decode_bench: %s: %s\n", o->model_dir, err[0] ? err : rt_strerror(rc));
        model_free(m);
        return 1;
    }
    int V = m->cfg.vocab_size;
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *ids = malloc((size_t)total * sizeof(int32_t));
    double *secs = malloc((size_t)(o->tokens > 0 ? o->tokens : 1) * sizeof(double));
    rng r = {1};
    for (int i = 0; ids && i < o->prompt; i++)
        ids[i] = (int32_t)rng_below(&r, (uint64_t)V);
    rc = logits && ids && secs ? step(ctx, ids, o->prompt, 0, logits) : RT_ERR_NOMEM;
    if (rc == RT_OK)
        ids[o->prompt] = argmax(logits, V);
    double t_first = rt_now_seconds();
    for (int i = 0; rc == RT_OK && i < o->warmup + o->tokens - 1; i++) {
        int pos = o->prompt + i;
        double s0 = rt_now_seconds();
        rc = step(ctx, &ids[pos], 1, pos, logits);
        if (rc == RT_OK)
            ids[pos + 1] = argmax(logits, V);
        if (i >= o->warmup)
            secs[i - o->warmup] = rt_now_seconds() - s0;
    }
    int timed = o->tokens - 1; /* the last token's step is not run: its id is never fed back */
    if (rc == RT_OK && timed > 0) {
        qsort(secs, (size_t)timed, sizeof *secs, cmp_double);
        double med = secs[timed / 2], bpt = bytes_per_token(m);
        double tps = 1.0 / med, bound = bw_all * 1e9 / bpt;
        printf("{\"bench\":\"decode\",\"model_dir\":\"%s\",\"dtype_flag\":\"%s\","
               "\"weights_dtype\":\"%s\",\"weights_mapped\":%s,\"layers\":%d,\"hidden\":%d,"
               "\"vocab\":%d,\"prompt\":%d,\"tokens_timed\":%d,"
               "\"load_s\":%.4f,\"ctx_s\":%.4f,\"prefill_s\":%.4f,\"first_token_s\":%.4f,"
               "\"decode_step_s_median\":%.5f,\"decode_step_s_min\":%.5f,\"decode_step_s_max\":%.5f,"
               "\"decode_tokens_per_s\":%.2f,\"bytes_per_token\":%.0f,"
               "\"read_gbs\":%.2f,\"read_gbs_1thread\":%.2f,\"bw_threads\":%d,"
               "\"bound_tokens_per_s\":%.2f,\"fraction_of_bound\":%.3f}\n",
               o->model_dir, o->dtype, m->w16 == KERNELS_BF16 ? "bf16" : m->w16 == KERNELS_F16 ? "f16" : "f32",
               m->mapped ? "true" : "false", m->cfg.num_hidden_layers, m->cfg.hidden_size, V,
               o->prompt, timed, t_load - t0, t_ctx - t_load, t_first - t_ctx, t_first - t0,
               med, secs[0], secs[timed - 1], tps, bpt, bw_all, bw_one, o->bw_threads, bound,
               tps / bound);
    } else if (rc != RT_OK) {
        fprintf(stderr, "decode_bench: step failed: %s\n", rt_strerror(rc));
    }
    free(secs);
    free(ids);
    free(logits);
    infer_ctx_free(ctx);
    if (rc == RT_OK && o->streams > 1)
        rc = run_streams(o, m) == 0 ? RT_OK : RT_ERR_INVALID;
    model_free(m);
    return rc == RT_OK ? 0 : 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: decode_bench --model DIR [--dtype auto|f32|bf16|f16] [--prompt N] "
                    "[--tokens N] [--warmup N] [--bw-mib M] [--bw-threads N] [--streams S]\n"
                    "    [--adapters K] [--targets qv|all]\n");
    return 2;
}

int main(int argc, char **argv)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    decode_opts o = {NULL, "auto", 16, 32, 4, cpus > 0 && cpus <= MAX_BW_THREADS ? (int)cpus : 1, 1, 0, "qv", 2048};
    for (int i = 1; i < argc; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        if (!strcmp(f, "--model")) o.model_dir = v;
        else if (!strcmp(f, "--dtype")) o.dtype = v;
        else if (!strcmp(f, "--prompt")) o.prompt = atoi(v);
        else if (!strcmp(f, "--tokens")) o.tokens = atoi(v);
        else if (!strcmp(f, "--warmup")) o.warmup = atoi(v);
        else if (!strcmp(f, "--bw-mib")) o.bw_mib = (size_t)atol(v);
        else if (!strcmp(f, "--bw-threads")) o.bw_threads = atoi(v);
        else if (!strcmp(f, "--streams")) o.streams = atoi(v);
        else if (!strcmp(f, "--adapters")) o.adapters = atoi(v);
        else if (!strcmp(f, "--targets")) o.targets = v;
        else return usage();
    }
    if (!o.model_dir || o.prompt < 1 || o.tokens < 2 || o.warmup < 0 || o.bw_mib < 64 ||
        o.bw_threads < 1 || o.bw_threads > MAX_BW_THREADS || o.streams < 1 ||
        o.adapters < 0 || o.adapters > o.streams || (strcmp(o.targets, "qv") && strcmp(o.targets, "all")))
        return usage();
    return run(&o);
}
