/*
 * bench/train_bench.c — one training configuration, timed: builds a random
 * Llama model (hidden 512, 8 layers, 8 heads, 8 KV heads, FFN 1376, vocab
 * 8192, tied embeddings), runs --warmup then --steps optimizer steps of
 * LoRA (r 8, alpha 16 on q_proj, v_proj) or full fine-tuning on random
 * token batches (every target counted), exactly as engine/trainer.c does a
 * step: zero the gradient, model_forward, model_backward, optim_clip (max
 * norm 1.0), adamw_step. It also times the backend's sgemm on a square
 * 1024^3 problem (8 calls before the model exists, 8 after it is freed) and
 * prints one JSON line on stdout:
 *
 *   tokens_per_s, step_s_median (and min/max), the forward / backward /
 *   optimizer split, peak_rss_mb (getrusage of this process, so run one
 *   method per process), sgemm_gflops (median of the 16 sgemm calls) and
 *   sgemm_gflops_best, flops_per_step (analytic, see step_flops),
 *   achieved_gflops and sgemm_fraction (achieved / sgemm median).
 *
 * --profile runs the same steps on a timing wrapper of the CPU backend and
 * adds profile_ms_per_step: milliseconds (and GFLOP/s) per op category, with
 * linear_backward's dX and dW products timed apart.
 *
 * bench/train_bench.py runs it for both methods next to the PyTorch
 * reference and prints the ratios. BLAS threads come from the environment
 * (OPENBLAS_NUM_THREADS); the line reports what OpenBLAS uses.
 *
 * Real shapes (issue 10): --config FILE takes the model's shape from a
 * Hugging Face config.json at full depth instead of the toy one.
 *   --config FILE --write-model DIR writes a random model of that shape
 *     (normal(0, 0.02) matrices, as model_init_random) with the engine's own
 *     model_save into DIR, bf16 unless --dtype says otherwise, and exits;
 *   --model DIR loads such a directory through model_load_as with --dtype
 *     (default auto: a bf16 checkpoint stays bf16, its matrices mapped from
 *     the file on the CPU backend), as `retune train --dtype` does;
 *   --rank, --alpha and --targets qv|all set the adapter; --grad-checkpoint
 *     uses model_acts_create_ckpt(recompute = true).
 * Full fine-tuning needs fp32 weights (--dtype f32 with --model).
 *
 * Exit status: 0 on success, 1 when a step fails, 2 on bad flags.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "engine/hf_config.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "engine/rng.h"

#define MAX_STEPS 1000
#define SGEMM_N 1024
#define SGEMM_REPS 8

typedef struct bench_opts {
    bool lora, profile, ckpt;
    int steps, warmup, B, T;
    uint64_t seed;
    peft_config pc;            /* the adapter (LoRA only) */
    const char *config;        /* --config: a config.json, or NULL for the toy shape */
    const char *model_dir;     /* --model: load this directory */
    const char *write_dir;     /* --write-model: write a random model here and exit */
    const char *dtype;         /* --dtype name */
    enum model_dtype dt;
} bench_opts;

/* Everything one run holds; released by bench_free. */
typedef struct bench {
    const kernels_backend *be;
    model_config cfg;
    model *m;
    lora *ad, *ad_grad;          /* LoRA only */
    float *full_grad;            /* full only */
    model_weights gw;            /* full only: named pointers into full_grad */
    float *params, *grad, *adam_m, *adam_v, *scratch;
    int64_t n_trainable;
    model_acts *acts;
    int32_t *ids, *targets;
} bench;

/* Seconds of each phase of one step. */
typedef struct step_times {
    double forward, backward, optimizer, total;
    double loss;
} step_times;

/* The benchmark's model: the fixed configuration. */
static model_config bench_config(void)
{
    model_config c = {0};
    c.arch = MODEL_ARCH_LLAMA;
    c.vocab_size = 8192;
    c.hidden_size = 512;
    c.intermediate_size = 1376;
    c.num_hidden_layers = 8;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.max_position_embeddings = 2048;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = true;
    c.bos_token_id = c.eos_token_id = -1;
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    return c;
}

/* The default adapter: r 8, alpha 16 on q_proj and v_proj. */
static peft_config bench_peft(void)
{
    peft_config p = {0};
    p.r = 8;
    p.lora_alpha = 16.0f;
    p.target_modules = (1u << PEFT_Q_PROJ) | (1u << PEFT_V_PROJ);
    return p;
}

/* Reads the config.json at path (borrowed) into *out. */
static int read_config(const char *path, model_config *out, char *err, size_t errsize)
{
    char *json = NULL;
    size_t len = 0;
    int rc = rt_read_file(path, 1u << 20, &json, &len, err, errsize);
    if (rc == RT_OK)
        rc = hf_config_parse(json, len, path, out, err, errsize);
    free(json);
    return rc;
}

/* Matmul FLOPs of one training step, counted analytically (2 per
 * multiply-add). Convention:
 *   - a linear layer [OC, C] over N tokens: 2 N C OC forward; backward 2x
 *     forward (dX and dW) when trained, 1x (dX only) when frozen;
 *   - attention: QK^T and PV over the causal half only, 2 * 2 B H D
 *     T(T+1)/2 forward; backward 2x forward (dP, dV, dQ, dK); the QK^T
 *     that the CPU backend recomputes in backward is NOT counted (model
 *     FLOPs, as in MFU);
 *   - LoRA: t = x A^T and B t forward (2 N r (C + OC)), backward 2x that
 *     (dB, dt, dA, dX);
 *   - the tied lm_head counts once per use (2 N d V forward); in LoRA it is
 *     frozen (dX only). Norms, RoPE, softmax, SwiGLU, cross-entropy,
 *     embedding and AdamW are not counted. */
static double step_flops(const model_config *c, const peft_config *pc, int B, int T)
{
    double N = (double)B * T, lin = 0, lora_f = 0;
    bool lora_on = pc != NULL;
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int oc, ic;
        model_module_shape(c, (enum peft_module)m, &oc, &ic);
        lin += 2.0 * N * ic * oc;
        if (lora_on && (pc->target_modules & (1u << m)))
            lora_f += 2.0 * N * pc->r * (double)(ic + oc);
    }
    double L = c->num_hidden_layers;
    double att = 2.0 * 2.0 * B * c->num_attention_heads * c->head_dim * (double)T * (T + 1) / 2.0;
    double head = 2.0 * N * c->hidden_size * c->vocab_size;
    double fwd = L * (lin + att + lora_f) + head;
    if (!lora_on)
        return 3.0 * fwd;
    /* backward: frozen linears and head dX only, attention 2x, LoRA 2x */
    return fwd + L * (lin + 2.0 * att + 2.0 * lora_f) + head;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Peak resident set of this process so far, in MiB. */
static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

/* Times SGEMM_REPS products c = a b^T of SGEMM_N^3 on be (the
 * linear_forward shape), after one untimed call, into secs[SGEMM_REPS]. */
static int sgemm_rate(const kernels_backend *be, double *secs)
{
    size_t bytes = (size_t)SGEMM_N * SGEMM_N * sizeof(float);
    float *a = NULL, *b = NULL, *c = NULL, *host = malloc(bytes);
    int rc = host ? be->alloc((void **)&a, bytes) : RT_ERR_NOMEM;
    if (rc == RT_OK) rc = be->alloc((void **)&b, bytes);
    if (rc == RT_OK) rc = be->alloc((void **)&c, bytes);
    rng r = {7};
    for (size_t i = 0; rc == RT_OK && i < (size_t)SGEMM_N * SGEMM_N; i++)
        host[i] = rng_uniform(&r) - 0.5f;
    if (rc == RT_OK) rc = be->copy_to_device(a, host, bytes, NULL);
    if (rc == RT_OK) rc = be->copy_to_device(b, host, bytes, NULL);
    for (int i = -1; rc == RT_OK && i < SGEMM_REPS; i++) {
        double t0 = rt_now_seconds();
        rc = be->matmul(c, a, b, SGEMM_N, SGEMM_N, SGEMM_N, 0, 1, 1.0f, 0.0f, NULL);
        if (rc == RT_OK)
            rc = be->synchronize(NULL);
        if (i >= 0)
            secs[i] = rt_now_seconds() - t0;
    }
    be->free(a);
    be->free(b);
    be->free(c);
    free(host);
    return rc;
}

/* ---- --profile: a timing wrapper around the CPU backend ------------------ */

/* Op categories of the per-step breakdown. */
enum prof_op {
    P_LINEAR_FWD, P_LINEAR_DX, P_LINEAR_DW, P_HEAD_FWD, P_HEAD_DX, P_HEAD_DW, P_LORA_MATMUL,
    P_ATT_FWD, P_ATT_BWD, P_RMSNORM, P_ROPE, P_SWIGLU, P_XENT, P_ELEMWISE, P_EMBED, P_ZERO,
    P_COPY, P_OPTIM, P_COUNT
};

static const char *const prof_names[P_COUNT] = {
    "linear_fwd", "linear_dx", "linear_dw", "lm_head_fwd", "lm_head_dx", "lm_head_dw",
    "lora_matmul", "attention_fwd", "attention_bwd", "rmsnorm", "rope", "swiglu",
    "cross_entropy", "elementwise", "embedding", "zero", "copy", "clip_adamw"};

static struct prof_stat { double seconds, flops; long calls; } prof[P_COUNT];
static const kernels_backend *prof_inner; /* the wrapped CPU backend */
static int prof_vocab;                    /* OC of the lm_head, to tell it apart */

static void prof_note(enum prof_op op, double t0, double flops)
{
    prof[op].seconds += rt_now_seconds() - t0;
    prof[op].flops += flops;
    prof[op].calls++;
}

/* A wrapper that times one backend op under category id (no FLOPs). */
#define PROF_WRAP(op, id, params, args)                                                       \
    static int prof_##op params                                                             \
    {                                                                                       \
        double t0 = rt_now_seconds();                                                       \
        int rc = prof_inner->op args;                                                       \
        prof_note(id, t0, 0);                                                                \
        return rc;                                                                          \
    }

PROF_WRAP(copy_to_device, P_COPY, (void *d, const void *s_, size_t n, kernels_stream *s), (d, s_, n, s))
PROF_WRAP(copy_to_host, P_COPY, (void *d, const void *s_, size_t n, kernels_stream *s), (d, s_, n, s))
PROF_WRAP(zero, P_ZERO, (void *d, size_t n, kernels_stream *s), (d, n, s))
PROF_WRAP(embedding_forward, P_EMBED, (float *o, const int32_t *i, const float *t, int N, int C, int V,
          kernels_stream *s), (o, i, t, N, C, V, s))
PROF_WRAP(embedding_backward, P_EMBED, (float *d, const float *g, const int32_t *i, int N, int C, int V,
          kernels_stream *s), (d, g, i, N, C, V, s))
PROF_WRAP(rmsnorm_forward, P_RMSNORM, (float *o, float *r, const float *i, const float *w, int N, int C,
          float eps, kernels_stream *s), (o, r, i, w, N, C, eps, s))
PROF_WRAP(rmsnorm_backward, P_RMSNORM, (float *di, float *dw, const float *r, const float *g,
          const float *i, const float *w, int N, int C, kernels_stream *s), (di, dw, r, g, i, w, N, C, s))
PROF_WRAP(rope_forward, P_ROPE, (float *o, const float *i, const int32_t *p, const float *f, int N,
          int H, int D, kernels_stream *s), (o, i, p, f, N, H, D, s))
PROF_WRAP(rope_backward, P_ROPE, (float *d, const float *g, const int32_t *p, const float *f, int N,
          int H, int D, kernels_stream *s), (d, g, p, f, N, H, D, s))
PROF_WRAP(swiglu_forward, P_SWIGLU, (float *o, const float *g, const float *u, int64_t n,
          kernels_stream *s), (o, g, u, n, s))
PROF_WRAP(swiglu_backward, P_SWIGLU, (float *dg, float *du, const float *d, const float *g,
          const float *u, int64_t n, kernels_stream *s), (dg, du, d, g, u, n, s))
PROF_WRAP(cross_entropy_forward, P_XENT, (float *l, float *c, float *lse, const float *x,
          const int32_t *t, int N, int V, kernels_stream *s), (l, c, lse, x, t, N, V, s))
PROF_WRAP(cross_entropy_backward, P_XENT, (float *d, const float *lse, const float *x,
          const int32_t *t, const float *w, int N, int V, float sc, kernels_stream *s),
          (d, lse, x, t, w, N, V, sc, s))
PROF_WRAP(add, P_ELEMWISE, (float *o, const float *a, const float *b, int64_t n, kernels_stream *s),
          (o, a, b, n, s))
PROF_WRAP(axpy, P_ELEMWISE, (float *y, const float *x, int64_t n, float a, kernels_stream *s),
          (y, x, n, a, s))
PROF_WRAP(scale, P_OPTIM, (float *x, int64_t n, float a, kernels_stream *s), (x, n, a, s))
PROF_WRAP(mul_forward, P_ELEMWISE, (float *o, const float *a, const float *b, int64_t n,
          kernels_stream *s), (o, a, b, n, s))
PROF_WRAP(mul_backward, P_ELEMWISE, (float *d, const float *g, const float *b, int64_t n,
          kernels_stream *s), (d, g, b, n, s))
PROF_WRAP(sum_squares, P_OPTIM, (float *o, const float *x, int64_t n, kernels_stream *s), (o, x, n, s))
PROF_WRAP(adamw_step, P_OPTIM, (float *p, float *m, float *v, const float *g, int64_t n, double lr,
          double b1, double b2, double eps, double wd, int t, kernels_stream *s),
          (p, m, v, g, n, lr, b1, b2, eps, wd, t, s))

/* Dense matmuls outside linear_*: the LoRA A/B products. */
static int prof_matmul(float *c, const float *a, const float *b, int m, int n, int k, int ta,
                       int tb, float alpha, float beta, kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->matmul(c, a, b, m, n, k, ta, tb, alpha, beta, s);
    prof_note(P_LORA_MATMUL, t0, 2.0 * m * n * k);
    return rc;
}

static int prof_linear_forward(float *out, const float *inp, const float *w, const float *bias,
                               int N, int C, int OC, kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->linear_forward(out, inp, w, bias, N, C, OC, s);
    prof_note(OC == prof_vocab ? P_HEAD_FWD : P_LINEAR_FWD, t0, 2.0 * N * C * OC);
    return rc;
}

/* Times dX and dW apart: two calls, each with the other gradient NULL
 * (the op accumulates each gradient independently, so the result is the
 * same as one call). */
static int prof_linear_backward(float *dinp, float *dw, float *db, const float *dout,
                                const float *inp, const float *w, int N, int C, int OC,
                                kernels_stream *s)
{
    bool head = OC == prof_vocab;
    double flops = 2.0 * N * C * OC, t0 = rt_now_seconds();
    int rc = RT_OK;
    if (dinp) {
        rc = prof_inner->linear_backward(dinp, NULL, NULL, dout, inp, w, N, C, OC, s);
        prof_note(head ? P_HEAD_DX : P_LINEAR_DX, t0, flops);
    }
    if (rc == RT_OK && (dw || db)) {
        t0 = rt_now_seconds();
        rc = prof_inner->linear_backward(NULL, dw, db, dout, inp, w, N, C, OC, s);
        prof_note(head ? P_HEAD_DW : P_LINEAR_DW, t0, dw ? flops : 0);
    }
    return rc;
}

static int prof_linear16_forward(float *out, void *scr, const float *inp, const uint16_t *w,
                                 kernels_dtype dt, const float *bias, int N, int C, int OC,
                                 kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->linear16_forward(out, scr, inp, w, dt, bias, N, C, OC, s);
    prof_note(OC == prof_vocab ? P_HEAD_FWD : P_LINEAR_FWD, t0, 2.0 * N * C * OC);
    return rc;
}

static int prof_linear16_backward(float *dinp, void *scr, const float *dout, const uint16_t *w,
                                  kernels_dtype dt, int N, int C, int OC, kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->linear16_backward(dinp, scr, dout, w, dt, N, C, OC, s);
    prof_note(OC == prof_vocab ? P_HEAD_DX : P_LINEAR_DX, t0, 2.0 * N * C * OC);
    return rc;
}

PROF_WRAP(embedding16_forward, P_EMBED, (float *o, const int32_t *i, const uint16_t *t,
          kernels_dtype dt, int N, int C, int V, kernels_stream *s), (o, i, t, dt, N, C, V, s))

/* Attention FLOPs in step_flops's convention (causal half, no recompute). */
static double att_flops(int B, int T, int Hq, int D)
{
    return 2.0 * 2.0 * B * Hq * D * (double)T * (T + 1) / 2.0;
}

static int prof_attention_forward(float *o, float *lse, void *sc, const float *q, const float *k,
                                  const float *v, int B, int T, int Hq, int Hkv, int D,
                                  int window, kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->attention_forward(o, lse, sc, q, k, v, B, T, Hq, Hkv, D, window, s);
    prof_note(P_ATT_FWD, t0, att_flops(B, T, Hq, D));
    return rc;
}

static int prof_attention_backward(float *dq, float *dk, float *dv, const float *lse, void *sc,
                                   const float *g, const float *q, const float *k, const float *v,
                                   int B, int T, int Hq, int Hkv, int D, int window,
                                   kernels_stream *s)
{
    double t0 = rt_now_seconds();
    int rc = prof_inner->attention_backward(dq, dk, dv, lse, sc, g, q, k, v, B, T, Hq, Hkv, D, window,
                                            s);
    prof_note(P_ATT_BWD, t0, 2.0 * att_flops(B, T, Hq, D));
    return rc;
}

/* inner with every op the engine's training step uses timed; the table is
 * static and lives for the process. */
static const kernels_backend *prof_backend(const kernels_backend *inner, int vocab)
{
    static kernels_backend be;
    prof_inner = inner;
    prof_vocab = vocab;
    be = *inner;
    be.copy_to_device = prof_copy_to_device;
    be.copy_to_host = prof_copy_to_host;
    be.zero = prof_zero;
    be.matmul = prof_matmul;
    be.linear_forward = prof_linear_forward;
    be.linear_backward = prof_linear_backward;
    be.linear16_forward = prof_linear16_forward;
    be.linear16_backward = prof_linear16_backward;
    be.embedding16_forward = prof_embedding16_forward;
    be.embedding_forward = prof_embedding_forward;
    be.embedding_backward = prof_embedding_backward;
    be.rmsnorm_forward = prof_rmsnorm_forward;
    be.rmsnorm_backward = prof_rmsnorm_backward;
    be.rope_forward = prof_rope_forward;
    be.rope_backward = prof_rope_backward;
    be.attention_forward = prof_attention_forward;
    be.attention_backward = prof_attention_backward;
    be.swiglu_forward = prof_swiglu_forward;
    be.swiglu_backward = prof_swiglu_backward;
    be.cross_entropy_forward = prof_cross_entropy_forward;
    be.cross_entropy_backward = prof_cross_entropy_backward;
    be.add = prof_add;
    be.axpy = prof_axpy;
    be.scale = prof_scale;
    be.mul_forward = prof_mul_forward;
    be.mul_backward = prof_mul_backward;
    be.sum_squares = prof_sum_squares;
    be.adamw_step = prof_adamw_step;
    return &be;
}

/* Allocates a zeroed device buffer of n floats. */
static int alloc_zero(const kernels_backend *be, float **out, int64_t n)
{
    int rc = be->alloc((void **)out, (size_t)n * sizeof(float));
    return rc == RT_OK ? be->zero(*out, (size_t)n * sizeof(float), NULL) : rc;
}

/* The trainable buffer, its gradient and the AdamW moments (as
 * engine/trainer_setup.c lays them out). */
static int bench_setup_trainable(bench *b, const bench_opts *o)
{
    int rc;
    if (o->lora) {
        rc = lora_create(&b->cfg, &o->pc, b->be, o->seed, &b->ad);
        if (rc == RT_OK)
            rc = lora_clone_zero(b->ad, &b->ad_grad);
        if (rc != RT_OK)
            return rc;
        b->params = b->ad->params;
        b->grad = b->ad_grad->params;
        b->n_trainable = (int64_t)b->ad->n_params;
    } else {
        b->n_trainable = (int64_t)model_weights_count(&b->cfg);
        b->params = b->m->params;
        rc = alloc_zero(b->be, &b->full_grad, b->n_trainable);
        if (rc == RT_OK)
            rc = model_weights_point(&b->cfg, b->full_grad, &b->gw);
        if (rc != RT_OK)
            return rc;
        b->grad = b->full_grad;
    }
    rc = alloc_zero(b->be, &b->adam_m, b->n_trainable);
    if (rc == RT_OK)
        rc = alloc_zero(b->be, &b->adam_v, b->n_trainable);
    if (rc == RT_OK)
        rc = b->be->alloc((void **)&b->scratch, sizeof(float));
    return rc;
}

/* The model: loaded from o->model_dir with o->dt, or random with the
 * shape of o->config (or the toy shape) in fp32. */
static int bench_model(bench *b, const bench_opts *o)
{
    char err[512] = "";
    int rc = RT_OK;
    if (o->model_dir) {
        rc = model_load_as(o->model_dir, b->be, o->dt, &b->m, err, sizeof err);
        if (rc == RT_OK && !o->lora && b->m->w16)
            snprintf(err, sizeof err, "full fine-tuning needs fp32 weights (--dtype f32)"),
                rc = RT_ERR_INVALID;
    } else {
        b->cfg = bench_config();
        if (o->config)
            rc = read_config(o->config, &b->cfg, err, sizeof err);
        if (rc == RT_OK)
            rc = model_init_random(&b->cfg, b->be, o->seed, &b->m);
    }
    if (rc == RT_OK) {
        b->cfg = b->m->cfg;
        prof_vocab = b->cfg.vocab_size;
    } else if (err[0]) {
        fprintf(stderr, "train_bench: %s\n", err);
    }
    return rc;
}

/* Model, trainable state, activations and the host batch buffers. */
static int bench_open(bench *b, const bench_opts *o)
{
    memset(b, 0, sizeof *b);
    b->be = o->profile ? prof_backend(kernels_cpu_backend(), 0) : kernels_cpu_backend();
    int rc = bench_model(b, o);
    if (rc == RT_OK)
        rc = bench_setup_trainable(b, o);
    if (rc == RT_OK)
        rc = model_acts_create_ckpt(b->m, o->B, o->T, o->lora ? o->pc.r : 0, o->ckpt, &b->acts);
    size_t n = (size_t)o->B * (size_t)o->T;
    b->ids = malloc(n * sizeof *b->ids);
    b->targets = malloc(n * sizeof *b->targets);
    if (rc == RT_OK && (!b->ids || !b->targets))
        rc = RT_ERR_NOMEM;
    return rc;
}

/* --write-model: a random model of o->config's shape, saved by model_save
 * into o->write_dir in o->dt (bf16 for auto). Prints one JSON line. */
static int bench_write_model(const bench_opts *o)
{
    char err[512] = "";
    model_config c;
    model *m = NULL;
    double t0 = rt_now_seconds();
    int rc = read_config(o->config, &c, err, sizeof err);
    const char *td = o->dt == MODEL_DTYPE_F32 ? "float32" : o->dt == MODEL_DTYPE_F16 ? "float16"
                                                                                   : "bfloat16";
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "%s", td);
    if (rc == RT_OK)
        rc = model_init_random(&c, kernels_cpu_backend(), o->seed, &m);
    if (rc == RT_OK)
        rc = model_save(m, o->write_dir, err, sizeof err);
    model_free(m);
    if (rc != RT_OK) {
        fprintf(stderr, "train_bench: writing %s: %s\n", o->write_dir, err[0] ? err : rt_strerror(rc));
        return rc;
    }
    printf("{\"bench\":\"write_model\",\"dir\":\"%s\",\"torch_dtype\":\"%s\","
           "\"params\":%zu,\"seconds\":%.1f}\n",
           o->write_dir, td, model_weights_count(&c), rt_now_seconds() - t0);
    return RT_OK;
}

static void bench_free(bench *b)
{
    model_acts_free(b->acts);
    if (b->be) {
        b->be->free(b->adam_m);
        b->be->free(b->adam_v);
        b->be->free(b->scratch);
        b->be->free(b->full_grad);
    }
    if (b->gw.layers)
        model_weights_release(&b->gw);
    lora_free(b->ad_grad);
    lora_free(b->ad);
    model_free(b->m);
    free(b->ids);
    free(b->targets);
}

/* A fresh random batch: B sequences of T+1 uniform tokens, ids the first T,
 * targets the last T (every position counted). */
static void fill_batch(bench *b, const bench_opts *o, rng *r)
{
    int V = b->cfg.vocab_size;
    for (int s = 0; s < o->B; s++) {
        int32_t prev = (int32_t)rng_below(r, (uint64_t)V);
        for (int t = 0; t < o->T; t++) {
            int32_t next = (int32_t)rng_below(r, (uint64_t)V);
            b->ids[s * o->T + t] = prev;
            b->targets[s * o->T + t] = next;
            prev = next;
        }
    }
}

/* One optimizer step as engine/trainer.c runs it (grad_accum 1, constant
 * lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0, clip 1.0). */
static int bench_step(bench *b, const bench_opts *o, int step, step_times *out)
{
    const kernels_backend *be = b->be;
    model_batch batch = {b->ids, b->targets, o->B, o->T, (uint64_t)step, true};
    model_loss loss = {0};
    double norm, t0 = rt_now_seconds();
    int rc = be->zero(b->grad, (size_t)b->n_trainable * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = model_forward(b->m, b->ad, b->acts, &batch, &loss);
    if (rc == RT_OK)
        rc = be->synchronize(NULL);
    double t1 = rt_now_seconds();
    if (rc == RT_OK)
        rc = model_backward(b->m, b->ad, b->acts, &batch, o->lora ? NULL : &b->gw, b->ad_grad);
    if (rc == RT_OK)
        rc = be->synchronize(NULL);
    double t2 = rt_now_seconds();
    if (rc == RT_OK)
        rc = optim_clip(be, b->grad, b->n_trainable, 1.0, b->scratch, &norm);
    if (rc == RT_OK)
        rc = be->adamw_step(b->params, b->adam_m, b->adam_v, b->grad, b->n_trainable, 1e-4, 0.9,
                            0.999, 1e-8, 0.0, step + 1, NULL);
    if (rc == RT_OK)
        rc = be->synchronize(NULL);
    double t3 = rt_now_seconds();
    out->forward = t1 - t0;
    out->backward = t2 - t1;
    out->optimizer = t3 - t2;
    out->total = t3 - t0;
    out->loss = loss.loss;
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: train_bench [--method lora|full] [--steps N] [--warmup N] "
                    "[--batch B] [--seq T] [--seed S] [--profile]\n"
                    "         [--config CONFIG.json] [--model DIR] [--dtype auto|f32|bf16|f16]\n"
                    "         [--rank R] [--alpha A] [--targets qv|all] [--grad-checkpoint]\n"
                    "       train_bench --config CONFIG.json --write-model DIR [--dtype bf16|f16|f32]\n");
    return 2;
}

/* Applies one flag with a value; 0 when it is known and valid. */
static int parse_flag(bench_opts *o, const char *f, const char *v)
{
    if (!strcmp(f, "--method") && (!strcmp(v, "lora") || !strcmp(v, "full")))
        o->lora = !strcmp(v, "lora");
    else if (!strcmp(f, "--steps")) o->steps = atoi(v);
    else if (!strcmp(f, "--warmup")) o->warmup = atoi(v);
    else if (!strcmp(f, "--batch")) o->B = atoi(v);
    else if (!strcmp(f, "--seq")) o->T = atoi(v);
    else if (!strcmp(f, "--seed")) o->seed = strtoull(v, NULL, 10);
    else if (!strcmp(f, "--config")) o->config = v;
    else if (!strcmp(f, "--model")) o->model_dir = v;
    else if (!strcmp(f, "--write-model")) o->write_dir = v;
    else if (!strcmp(f, "--dtype")) { o->dtype = v; return model_dtype_parse(v, &o->dt); }
    else if (!strcmp(f, "--rank")) o->pc.r = atoi(v);
    else if (!strcmp(f, "--alpha")) o->pc.lora_alpha = (float)atof(v);
    else if (!strcmp(f, "--targets") && (!strcmp(v, "qv") || !strcmp(v, "all")))
        o->pc.target_modules = !strcmp(v, "all") ? PEFT_ALL_MODULES : bench_peft().target_modules;
    else return -1;
    return 0;
}

/* Parses argv into o; 0 on success. */
static int parse_args(int argc, char **argv, bench_opts *o)
{
    *o = (bench_opts){.lora = true, .steps = 5, .warmup = 3, .B = 4, .T = 256, .seed = 1234,
                      .pc = bench_peft(), .dtype = "auto", .dt = MODEL_DTYPE_AUTO};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--profile") || !strcmp(f, "--grad-checkpoint")) {
            o->profile |= !strcmp(f, "--profile");
            o->ckpt |= !strcmp(f, "--grad-checkpoint");
            continue;
        }
        if (!v || parse_flag(o, f, v) != 0)
            return -1;
        i++;
    }
    bool ok = o->steps >= 1 && o->steps <= MAX_STEPS && o->warmup >= 0 &&
              o->warmup <= MAX_STEPS && o->B >= 1 && o->T >= 2 && o->T <= 2048 &&
              o->pc.r >= 1 && o->pc.lora_alpha > 0 && (!o->write_dir || o->config) &&
              !(o->model_dir && o->config);
    return ok ? 0 : -1;
}

/* Medians of each phase over the timed steps. */
static step_times median_times(step_times *t, int n)
{
    double v[MAX_STEPS];
    step_times m;
    for (int i = 0; i < n; i++) v[i] = t[i].forward;
    m.forward = median(v, n);
    for (int i = 0; i < n; i++) v[i] = t[i].backward;
    m.backward = median(v, n);
    for (int i = 0; i < n; i++) v[i] = t[i].optimizer;
    m.optimizer = median(v, n);
    for (int i = 0; i < n; i++) v[i] = t[i].total;
    m.total = median(v, n);
    m.loss = t[n - 1].loss;
    return m;
}

/* What one run measured, for print_result. */
typedef struct bench_result {
    step_times *t;             /* the timed steps */
    double sgemm_median_s, sgemm_min_s, peak_rss, init_rss, first_loss;
    int64_t trainable, total;
    kernels_dtype w16;         /* 0: fp32 matrices */
    bool mapped;               /* 16-bit matrices point into the mapped file */
    double weight_mb, acts_mb; /* model->weight_bytes, model_acts_bytes */
} bench_result;

/* The --profile breakdown as a JSON object member: per category the
 * mean milliseconds per timed step, calls per step and GFLOP/s where FLOPs
 * apply; "other_ms" is the step time no timed op accounts for (host work,
 * the wrapper's own clock reads). */
static void print_profile(const bench_opts *o, const step_times *t)
{
    double sum = 0, steps_s = 0;
    for (int i = 0; i < o->steps; i++)
        steps_s += t[i].total;
    printf(",\"profile_ms_per_step\":{");
    for (int i = 0; i < P_COUNT; i++) {
        const struct prof_stat *p = &prof[i];
        sum += p->seconds;
        printf("%s\"%s\":{\"ms\":%.2f,\"calls\":%ld", i ? "," : "", prof_names[i],
               p->seconds / o->steps * 1e3, p->calls / o->steps);
        if (p->flops > 0 && p->seconds > 0)
            printf(",\"gflops\":%.1f", p->flops / p->seconds / 1e9);
        printf("}");
    }
    printf(",\"other_ms\":%.2f}", (steps_s - sum) / o->steps * 1e3);
}

static void print_result(const bench *b, const bench_opts *o, const bench_result *r)
{
    double tokens = (double)o->B * o->T;
    double flops = step_flops(&b->cfg, o->lora ? &o->pc : NULL, o->B, o->T);
    double tmin = r->t[0].total, tmax = r->t[0].total;
    for (int i = 1; i < o->steps; i++) {
        tmin = r->t[i].total < tmin ? r->t[i].total : tmin;
        tmax = r->t[i].total > tmax ? r->t[i].total : tmax;
    }
    step_times med = median_times(r->t, o->steps);
    double sg = 2.0 * SGEMM_N * SGEMM_N * (double)SGEMM_N / 1e9;
    double achieved = flops / med.total / 1e9;
    printf("{\"bench\":\"train\",\"impl\":\"retune\",\"method\":\"%s\",\"backend\":\"%s\","
           "\"blas_threads\":%d,\"blas_core\":\"%s\",\"batch\":%d,\"seq\":%d,"
           "\"tokens_per_step\":%.0f,\"trainable_params\":%lld,\"total_params\":%lld,"
           "\"warmup\":%d,\"steps\":%d,\"tokens_per_s\":%.1f,\"step_s_median\":%.4f,"
           "\"step_s_min\":%.4f,\"step_s_max\":%.4f,\"forward_s\":%.4f,\"backward_s\":%.4f,"
           "\"optimizer_s\":%.4f,\"flops_per_step\":%.4e,\"achieved_gflops\":%.1f,"
           "\"sgemm_gflops\":%.1f,\"sgemm_gflops_best\":%.1f,\"sgemm_fraction\":%.3f,"
           "\"peak_rss_mb\":%.1f,\"init_peak_rss_mb\":%.1f,\"loss_first\":%.4f,"
           "\"loss_last\":%.4f",
           o->lora ? "lora" : "full", kernels_cpu_backend()->name, openblas_get_num_threads(),
           openblas_get_corename(), o->B, o->T, tokens, (long long)r->trainable,
           (long long)r->total, o->warmup, o->steps, tokens / med.total, med.total, tmin, tmax,
           med.forward, med.backward, med.optimizer, flops, achieved, sg / r->sgemm_median_s,
           sg / r->sgemm_min_s, achieved / (sg / r->sgemm_median_s), r->peak_rss, r->init_rss,
           r->first_loss, med.loss);
    printf(",\"config\":\"%s\",\"model_dir\":\"%s\",\"dtype_flag\":\"%s\","
           "\"weights_dtype\":\"%s\",\"weights_mapped\":%s,\"weight_mb\":%.1f,"
           "\"acts_mb\":%.1f,\"grad_checkpoint\":%s,\"lora_r\":%d,\"lora_alpha\":%g,"
           "\"lora_targets\":\"%s\",\"layers\":%d,\"hidden\":%d,\"vocab\":%d",
           o->config ? o->config : "", o->model_dir ? o->model_dir : "", o->dtype,
           r->w16 == KERNELS_BF16 ? "bf16" : r->w16 == KERNELS_F16 ? "f16" : "f32",
           r->mapped ? "true" : "false", r->weight_mb, r->acts_mb, o->ckpt ? "true" : "false",
           o->pc.r, o->pc.lora_alpha, o->pc.target_modules == PEFT_ALL_MODULES ? "all" : "qv",
           b->cfg.num_hidden_layers, b->cfg.hidden_size, b->cfg.vocab_size);
    if (o->profile)
        print_profile(o, r->t);
    printf("}\n");
}

/* Warm-up then timed steps on fresh random batches; fills r->t. */
static int bench_run(bench *b, const bench_opts *o, bench_result *r)
{
    rng g = {o->seed ^ 0x5eedULL};
    int rc = RT_OK;
    for (int i = 0; rc == RT_OK && i < o->warmup + o->steps; i++) {
        step_times t;
        if (i == o->warmup)
            memset(prof, 0, sizeof prof); /* the profile covers the timed steps only */
        fill_batch(b, o, &g);
        rc = bench_step(b, o, i, &t);
        if (i == 0)
            r->first_loss = t.loss;
        if (i >= o->warmup)
            r->t[i - o->warmup] = t;
    }
    return rc;
}

/* The sgemm rate is measured before the model exists and after it is
 * freed, so that its buffers never add to the training's peak RSS. */
int main(int argc, char **argv)
{
    bench_opts o;
    if (parse_args(argc, argv, &o) != 0)
        return usage();
    if (o.write_dir)
        return bench_write_model(&o) == RT_OK ? 0 : 1;
    static step_times times[MAX_STEPS];
    double sg[2 * SGEMM_REPS];
    bench b = {0};
    bench_result r = {.t = times};
    int rc = sgemm_rate(kernels_cpu_backend(), sg);
    if (rc == RT_OK)
        rc = bench_open(&b, &o);
    r.init_rss = peak_rss_mb();
    if (rc == RT_OK)
        rc = bench_run(&b, &o, &r);
    r.peak_rss = peak_rss_mb();
    if (b.m) {
        r.w16 = b.m->w16;
        r.mapped = b.m->mapped != NULL;
        r.weight_mb = (double)b.m->weight_bytes / (1 << 20);
        r.acts_mb = (double)model_acts_bytes(b.m, o.B, o.T, o.lora ? o.pc.r : 0, o.ckpt) / (1 << 20);
    }
    r.trainable = b.n_trainable;
    r.total = (int64_t)model_weights_count(&b.cfg) + (o.lora ? b.n_trainable : 0);
    bench_free(&b);
    if (rc == RT_OK)
        rc = sgemm_rate(kernels_cpu_backend(), sg + SGEMM_REPS);
    if (rc != RT_OK) {
        fprintf(stderr, "train_bench: %s\n", rt_strerror(rc));
        return 1;
    }
    r.sgemm_median_s = median(sg, 2 * SGEMM_REPS);
    r.sgemm_min_s = sg[0]; /* median() sorted sg */
    print_result(&b, &o, &r);
    return 0;
}
