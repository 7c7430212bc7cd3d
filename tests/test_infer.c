/*
 * tests/test_infer.c — the serving engine: the cached attention kernel
 * against the training one, KV-cache decoding against the full forward
 * pass, echo logprobs against the PyTorch reference logits, and the
 * scheduler end to end (batches that mix the base and several adapters
 * give each request exactly what it gets alone; seeds; stop strings;
 * max_tokens; cancellation; adapter removal in flight; a full queue; bad
 * adapters refused; the adapter LRU).
 *
 * Tolerances: attention 1e-5 (fp32, same inputs); cached vs full logits
 * 1e-4 absolute; echo logprobs vs the float64 reference 1e-4 absolute.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/hf_config.h"
#include "engine/infer.h"
#include "engine/safetensors.h"

#include <cjson/cJSON.h>
#include "tests/test.h"

#define TINY "tests/fixtures/tiny_chat"
#define GQA "tests/fixtures/model/llama_gqa"

/* engine_submit with its structured refusal flattened into err (what most
 * checks read); last_field keeps the field it named. */
static char last_field[64];
static int submit_err(engine_server *srv, const engine_request *r, engine_handle **h, char *err,
                      size_t errsize)
{
    engine_error why = {0};
    int rc = engine_submit(srv, r, h, &why);
    size_t n = strnlen(why.message, errsize - 1); /* as much of the message as fits */
    memcpy(err, why.message, n);
    err[n] = '\0';
    snprintf(last_field, sizeof last_field, "%s", why.field);
    return rc;
}

static char tmp_root[64];

/* ---- helpers ------------------------------------------------------------- */

/* Uniform values in [-scale, scale) from a simple LCG. */
static void fill_random(float *x, size_t n, float scale, uint64_t *state)
{
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = ((float)(*state >> 40) / 16777216.0f * 2.0f - 1.0f) * scale;
    }
}

/* Writes a random adapter for cfg (every module, r, B non-zero) into dir. */
static void make_adapter(const model_config *cfg, const char *dir, uint64_t seed, int r)
{
    peft_config pc = {.r = r, .lora_alpha = 2.0f * (float)r, .target_modules = PEFT_ALL_MODULES};
    lora *l = NULL;
    char err[256] = "";
    CHECK(lora_create(cfg, &pc, kernels_cpu_backend(), seed, &l) == RT_OK);
    if (!l)
        return;
    float *host = malloc(l->n_params * sizeof(float));
    memcpy(host, l->params, l->n_params * sizeof(float));
    uint64_t st = seed;
    for (size_t s = 0; s < (size_t)l->n_layers * PEFT_MODULE_COUNT; s++) {
        int o, in;
        model_module_shape(cfg, (enum peft_module)(s % PEFT_MODULE_COUNT), &o, &in);
        fill_random(host + (l->b[s] - l->params), (size_t)o * (size_t)r, 0.15f, &st);
    }
    kernels_cpu_backend()->copy_to_device(l->params, host, l->n_params * sizeof(float), NULL);
    CHECK_MSG(lora_save(l, cfg, dir, err, sizeof err) == RT_OK, "lora_save: %s", err);
    free(host);
    lora_free(l);
}

/* Removes a directory holding only plain files. */
static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* What a request reported, filled from the engine thread. */
typedef struct collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[512];
    float logprobs[512];
    int n_tokens;
    int32_t echo_tokens[128];
    float echo_lp[128];
    bool echo_has[128];
    int n_echo;
    int32_t first_top[ENGINE_MAX_TOP_LOGPROBS];
    float first_top_lp[ENGINE_MAX_TOP_LOGPROBS];
    int first_n_top;
    char text[8192], echo_text[1024];
    size_t text_len, echo_len;
    bool done;
    char finish[16];
    int prompt_tokens, completion_tokens;
    int cancel_after;          /* > 0: return non-zero at this many tokens */
    atomic_int block;          /* the callback waits while this is set */
} collector;

static void collector_init(collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void collector_free(collector *c)
{
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static int on_token(void *ctx, const engine_token_event *ev)
{
    collector *c = ctx;
    pthread_mutex_lock(&c->mu);
    if (ev->prompt && c->n_echo < 128) {
        c->echo_tokens[c->n_echo] = ev->token;
        c->echo_lp[c->n_echo] = ev->logprob;
        c->echo_has[c->n_echo++] = ev->has_logprob;
    } else if (!ev->prompt && ev->token >= 0 && c->n_tokens < 512) {
        if (c->n_tokens == 0 && ev->n_top > 0) {
            c->first_n_top = ev->n_top;
            memcpy(c->first_top, ev->top_tokens, sizeof(int32_t) * (size_t)ev->n_top);
            memcpy(c->first_top_lp, ev->top_logprobs, sizeof(float) * (size_t)ev->n_top);
        }
        c->logprobs[c->n_tokens] = ev->logprob;
        c->tokens[c->n_tokens++] = ev->token;
    }
    if (ev->prompt && c->echo_len + ev->len < sizeof c->echo_text) {
        memcpy(c->echo_text + c->echo_len, ev->text, ev->len);
        c->echo_len += ev->len;
        c->echo_text[c->echo_len] = '\0';
    }
    if (!ev->prompt && ev->len && c->text_len + ev->len < sizeof c->text) {
        memcpy(c->text + c->text_len, ev->text, ev->len);
        c->text_len += ev->len;
        c->text[c->text_len] = '\0';
    }
    pthread_cond_broadcast(&c->cv);
    int n = c->n_tokens;
    pthread_mutex_unlock(&c->mu);
    while (c->block)
        usleep(1000);
    return c->cancel_after > 0 && n >= c->cancel_after;
}

static void on_done(void *ctx, const engine_result *res)
{
    collector *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->done = true;
    snprintf(c->finish, sizeof c->finish, "%s", res->finish_reason);
    c->prompt_tokens = res->prompt_tokens;
    c->completion_tokens = res->completion_tokens;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Waits (at most 20 s) until the request finished, or until it reported
 * at least min_tokens tokens when min_tokens > 0. */
static bool collector_wait(collector *c, int min_tokens)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (rc == 0 && !c->done && !(min_tokens > 0 && c->n_tokens >= min_tokens))
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &until);
    bool ok = c->done || (min_tokens > 0 && c->n_tokens >= min_tokens);
    pthread_mutex_unlock(&c->mu);
    CHECK_MSG(ok, "request did not finish in time");
    return ok;
}

/* A request with the collector's callbacks. */
static engine_request request_of(collector *c, const char *adapter, const char *prompt,
                                 int max_tokens)
{
    engine_request r = {0};
    r.adapter = adapter;
    r.prompt = prompt;
    r.max_tokens = max_tokens;
    r.ctx = c;
    r.on_token = on_token;
    r.on_done = on_done;
    return r;
}

/* Submits r and waits for it to finish. */
static int run_one(engine_server *srv, const engine_request *r)
{
    char err[256] = "";
    engine_handle *h = NULL;
    int rc = submit_err(srv, r, &h, err, sizeof err);
    CHECK_MSG(rc == RT_OK, "engine_submit: %s (%s)", rt_strerror(rc), err);
    if (rc == RT_OK) {
        collector_wait(r->ctx, 0);
        engine_handle_release(h);
    }
    return rc;
}

static engine_server *open_server(const char *dir, int max_batch, int step_tokens, int max_waiting,
                                  size_t budget)
{
    engine_server_config cfg = {.model_dir = dir, .max_batch = max_batch,
                                .max_step_tokens = step_tokens, .max_waiting = max_waiting,
                                .adapter_budget_bytes = budget};
    engine_server *srv = NULL;
    char err[256] = "";
    int rc = engine_server_open(&cfg, &srv, err, sizeof err);
    CHECK_MSG(rc == RT_OK, "engine_server_open %s: %s", dir, err);
    return srv;
}

/* ---- kernel: cached attention ------------------------------------------- */

/* The cached op reproduces the training op's rows, with or without a
 * sliding window, whatever the split into past and new queries. */
static void attention_kv_case(int window)
{
    const kernels_backend *be = kernels_cpu_backend();
    int T = 75, Hq = 4, Hkv = 2, D = 8;
    size_t nq = (size_t)T * Hq * D, nk = (size_t)T * Hkv * D;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    float *full = malloc(nq * 4), *lse = malloc((size_t)Hq * T * 4), *part = malloc(nq * 4);
    uint64_t st = 11;
    fill_random(q, nq, 1.0f, &st);
    fill_random(k, nk, 1.0f, &st);
    fill_random(v, nk, 1.0f, &st);
    void *scratch = malloc(be->attention_scratch_bytes(1, T, Hq, Hkv, D));
    CHECK(be->attention_forward(full, lse, scratch, q, k, v, 1, T, Hq, Hkv, D, window, NULL) == RT_OK);
    free(scratch);
    int pasts[] = {0, 1, 10, 64, 70, 74};
    for (size_t i = 0; i < sizeof pasts / sizeof pasts[0]; i++) {
        int past = pasts[i], n = T - past;
        void *ks = malloc(be->attention_kv_scratch_bytes(n, T, Hq, Hkv, D));
        CHECK(be->attention_kv_forward(part, ks, q + (size_t)past * Hq * D, k, v, n, past, Hq,
                                       Hkv, D, window, NULL) == RT_OK);
        double worst = 0;
        for (size_t j = 0; j < (size_t)n * Hq * D; j++)
            worst = fmax(worst, fabs(part[j] - full[(size_t)past * Hq * D + j]));
        CHECK_MSG(worst <= 1e-5, "past %d: max err %.3g", past, worst);
        free(ks);
    }
    /* one decode query at a time over a cache holding more rows than used */
    for (int p = 0; p < T; p += 7) {
        float out[64];
        void *ks = malloc(be->attention_kv_scratch_bytes(1, T, Hq, Hkv, D));
        CHECK(be->attention_kv_forward(out, ks, q + (size_t)p * Hq * D, k, v, 1, p, Hq, Hkv, D,
                                       window, NULL) == RT_OK);
        double worst = 0;
        for (int j = 0; j < Hq * D; j++)
            worst = fmax(worst, fabs(out[j] - full[(size_t)p * Hq * D + j]));
        CHECK_MSG(worst <= 1e-5, "decode at %d: max err %.3g", p, worst);
        free(ks);
    }
    free(q); free(k); free(v); free(full); free(lse); free(part);
}

static void test_attention_kv(void)
{
    attention_kv_case(0);
    attention_kv_case(5);  /* a window inside one query block */
    attention_kv_case(70); /* a window across query blocks */
}

/* The batched op over a cache in blocks equals attention_kv_forward over
 * each sequence's contiguous cache: several sequences whose blocks are
 * scattered over one pool in shuffled order, with their own pasts and
 * new-token counts (decode, short continuations and prefills longer than
 * the few-row path and than one query block), GQA, head widths with and
 * without a lane tail, odd block sizes, with and without a window, and
 * enough work to be split over the CPU backend's threads. Tolerance 1e-5
 * absolute (values are O(1)). */
static void attention_kv_batch_case(int Hq, int Hkv, int D, int bs, int window)
{
    const kernels_backend *be = kernels_cpu_backend();
    enum { S = 11, T = 300 };
    static const int pasts[S] = {0, 1, 5, 63, 64, 65, 130, 250, 291, 0, 40};
    static const int news[S] = {1, 3, 1, 1, 8, 2, 1, 4, 1, 75, 9};
    size_t kvrow = (size_t)Hkv * D, qrow = (size_t)Hq * D;
    int per = (T + bs - 1) / bs, n_blocks = S * per;
    uint64_t st = 29;
    float *kpool = malloc((size_t)n_blocks * bs * kvrow * 4), *vpool = malloc((size_t)n_blocks * bs * kvrow * 4);
    int32_t *order = malloc((size_t)n_blocks * sizeof *order);
    for (int i = 0; i < n_blocks; i++)
        order[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) { /* a shuffled pool */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int j = (int)((st >> 33) % (uint64_t)(i + 1));
        int32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    float *k[S], *v[S];
    kernels_kv_seq seqs[S];
    int rows = 0;
    for (int i = 0; i < S; i++) {
        k[i] = malloc((size_t)T * kvrow * 4);
        v[i] = malloc((size_t)T * kvrow * 4);
        fill_random(k[i], (size_t)T * kvrow, 1.0f, &st);
        fill_random(v[i], (size_t)T * kvrow, 1.0f, &st);
        const int32_t *table = order + (size_t)i * per;
        for (int p = 0; p < T; p++) {
            size_t at = ((size_t)table[p / bs] * bs + (size_t)(p % bs)) * kvrow;
            memcpy(kpool + at, k[i] + (size_t)p * kvrow, kvrow * 4);
            memcpy(vpool + at, v[i] + (size_t)p * kvrow, kvrow * 4);
        }
        seqs[i] = (kernels_kv_seq){table, rows, news[i], pasts[i]};
        rows += news[i];
    }
    float *q = malloc((size_t)rows * qrow * 4), *got = malloc((size_t)rows * qrow * 4);
    float *want = malloc((size_t)rows * qrow * 4);
    fill_random(q, (size_t)rows * qrow, 1.0f, &st);
    void *scratch = malloc(be->attention_kv_scratch_bytes(75, T, Hq, Hkv, D));
    CHECK(be->attention_kv_batch_forward(got, scratch, q, kpool, vpool, bs, seqs, S, Hq, Hkv, D,
                                         window, NULL) == RT_OK);
    for (int i = 0; i < S; i++) {
        size_t at = (size_t)seqs[i].row0 * qrow;
        CHECK(be->attention_kv_forward(want + at, scratch, q + at, k[i], v[i], news[i], pasts[i],
                                       Hq, Hkv, D, window, NULL) == RT_OK);
    }
    double worst = 0;
    for (size_t j = 0; j < (size_t)rows * qrow; j++)
        worst = isnan(got[j]) ? INFINITY : fmax(worst, fabs(got[j] - want[j]));
    CHECK_MSG(worst <= 1e-5, "batched attention Hq %d Hkv %d D %d block %d window %d: max err %.3g",
              Hq, Hkv, D, bs, window, worst);
    for (int i = 0; i < S; i++) {
        free(k[i]);
        free(v[i]);
    }
    free(kpool); free(vpool); free(order); free(q); free(got); free(want); free(scratch);
}

static void test_attention_kv_batch(void)
{
    attention_kv_batch_case(4, 2, 8, 32, 0);
    attention_kv_batch_case(8, 2, 64, 7, 0);
    attention_kv_batch_case(8, 8, 37, 32, 0);
    attention_kv_batch_case(6, 3, 64, 300, 5); /* one block per sequence */
    attention_kv_batch_case(14, 2, 64, 16, 70);
    attention_kv_batch_case(9, 3, 1024, 16, 0); /* head chunks split a GQA group */
    const kernels_backend *be = kernels_cpu_backend();
    float x[64] = {0};
    int32_t table[1] = {0};
    kernels_kv_seq bad = {NULL, 0, 1, 0}, prefill = {table, 0, 9, 0};
    CHECK(be->attention_kv_batch_forward(x, NULL, x, x, x, 4, &bad, 1, 2, 1, 8, 0, NULL) == RT_ERR_INVALID);
    CHECK(be->attention_kv_batch_forward(x, NULL, x, x, x, 4, &prefill, 1, 2, 1, 8, 0, NULL) ==
          RT_ERR_INVALID); /* a prefill needs scratch */
    CHECK(be->attention_kv_batch_forward(x, NULL, x, x, x, 0, NULL, 0, 2, 1, 8, 0, NULL) == RT_ERR_INVALID);
    CHECK(be->attention_kv_batch_forward(x, NULL, x, x, x, 4, NULL, 0, 3, 2, 8, 0, NULL) == RT_ERR_INVALID);
    CHECK(be->attention_kv_batch_forward(x, NULL, x, x, x, 4, NULL, 0, 2, 1, 8, 0, NULL) == RT_OK);
}

/* ---- output helpers -------------------------------------------------------- */

static void test_text_helpers(void)
{
    const char *stops[3] = {"END", "", "xyz"};
    size_t emit;
    bool match;
    infer_stop_scan("hello EN", 8, stops, 3, false, &emit, &match);
    CHECK(!match && emit == 6); /* "EN" may begin "END": held back */
    infer_stop_scan("hello EN", 8, stops, 3, true, &emit, &match);
    CHECK(!match && emit == 8); /* nothing can follow: all out */
    infer_stop_scan("a xyz b END", 11, stops, 3, false, &emit, &match);
    CHECK(match && emit == 2); /* the earliest stop string wins */
    infer_stop_scan("plain", 5, stops, 3, false, &emit, &match);
    CHECK(!match && emit == 5);
    infer_stop_scan("x", 1, stops, 3, false, &emit, &match);
    CHECK(!match && emit == 0);

    float row[6] = {2.0f, -1.0f, 3.0f, 3.0f, 0.5f, -2.0f};
    int32_t ids[4];
    float lps[4];
    double lse = infer_logsumexp(row, 6);
    infer_top_logprobs(row, 6, lse, 4, ids, lps);
    CHECK(ids[0] == 2 && ids[1] == 3 && ids[2] == 0 && ids[3] == 4); /* ties: lower id first */
    CHECK_NEAR(lps[0], 3.0 - lse, 1e-6);
    double sum = 0;
    for (int i = 0; i < 6; i++)
        sum += exp(row[i] - lse);
    CHECK_NEAR(sum, 1.0, 1e-6);
    uint8_t seen[1] = {(1u << 0) | (1u << 1)};
    infer_repetition_penalty(row, 6, seen, 2.0);
    CHECK_NEAR(row[0], 1.0, 0); /* positive: divided */
    CHECK_NEAR(row[1], -2.0, 0); /* negative: multiplied */
    CHECK_NEAR(row[2], 3.0, 0); /* unseen: unchanged */
}

/* ---- KV-cache decoding vs the full forward ------------------------------ */

/* Full-sequence logits of ids[0..T) with adapter ad (NULL: base). */
static float *full_logits(model *m, const lora *ad, const int32_t *ids, int T)
{
    model_acts *a = NULL;
    CHECK(model_acts_create(m, 1, T, ad ? ad->cfg.r : 0, &a) == RT_OK);
    model_batch b = {ids, NULL, 1, T, 0, false};
    CHECK(model_forward(m, ad, a, &b, NULL) == RT_OK);
    size_t n = (size_t)T * (size_t)m->cfg.vocab_size;
    float *out = malloc(n * sizeof(float));
    memcpy(out, model_acts_logits(a), n * sizeof(float));
    model_acts_free(a);
    return out;
}

/* Two sequences share every step (one on the base, one on an adapter): a
 * 6-token prompt chunk each, then single decode tokens fed from a fixed
 * list. Every row's logits must equal the full forward's. */
static void test_kv_decode(const char *adapter_dir)
{
    model *m = NULL;
    lora *ad = NULL;
    char err[256] = "";
    CHECK_MSG(model_load(TINY, kernels_cpu_backend(), &m, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(lora_load(adapter_dir, &m->cfg, m->be, &ad, err, sizeof err) == RT_OK, "%s", err);
    if (!m || !ad)
        return;
    int T = 14, V = m->cfg.vocab_size, P = 6;
    int32_t ids[2][14];
    for (int t = 0; t < T; t++) {
        ids[0][t] = (int32_t)((t * 37 + 5) % V);
        ids[1][t] = (int32_t)((t * 91 + 17) % V);
    }
    const lora *ads[2] = {NULL, ad};
    float *want[2] = {full_logits(m, NULL, ids[0], T), full_logits(m, ad, ids[1], T)};
    infer_ctx *ctx = NULL;
    CHECK(infer_ctx_create(m, 3, 32, 16, &ctx) == RT_OK);
    float *got = malloc(2 * (size_t)V * sizeof(float));
    double worst = 0;
    for (int past = 0; past < T;) {
        int n = past == 0 ? P : 1;
        int32_t step_ids[2 * 6], rows[2] = {n - 1, 2 * n - 1};
        infer_seg segs[2];
        for (int s = 0; s < 2; s++) {
            memcpy(step_ids + s * n, ids[s] + past, (size_t)n * sizeof(int32_t));
            segs[s] = (infer_seg){.slot = 2 - s, .past = past, .n = n, .ad = ads[s]};
        }
        infer_step st = {step_ids, 2 * n, segs, 2, rows, 2};
        CHECK(infer_forward(ctx, &st, got) == RT_OK);
        past += n;
        for (int s = 0; s < 2; s++)
            for (int v = 0; v < V; v++)
                worst = fmax(worst, fabs(got[(size_t)s * V + v] -
                                         want[s][(size_t)(past - 1) * V + v]));
    }
    CHECK_MSG(worst <= 1e-4, "cached vs full logits: max err %.3g", worst);
    /* a bad step is refused */
    infer_seg bad = {.slot = 0, .past = 30, .n = 5};
    int32_t five[5] = {0}, row0 = 0;
    infer_step st = {five, 5, &bad, 1, &row0, 1};
    CHECK_EQ_INT(infer_forward(ctx, &st, got), RT_ERR_INVALID);
    free(got);
    free(want[0]);
    free(want[1]);
    infer_ctx_free(ctx);
    lora_free(ad);
    model_free(m);
}

/* ---- echo logprobs vs the PyTorch reference ----------------------------- */

static void check_echo(engine_server *srv, const char *adapter, const sft_tensor *ref,
                       const int32_t *ids, int B, int T, int V)
{
    float *want = malloc(ref->numel * sizeof(float));
    CHECK(sft_tensor_read_f32(ref, want, ref->numel) == RT_OK);
    double worst = 0;
    for (int b = 0; b < B; b++) {
        collector c;
        collector_init(&c);
        engine_request r = request_of(&c, adapter, NULL, 0);
        r.prompt_ids = ids + (size_t)b * T;
        r.n_prompt_ids = (size_t)T;
        r.echo = true;
        run_one(srv, &r);
        CHECK_EQ_INT(c.n_echo, T);
        CHECK_EQ_STR(c.finish, "length");
        CHECK_EQ_INT(c.completion_tokens, 0);
        CHECK(c.n_echo > 0 && !c.echo_has[0]);
        for (int p = 1; p < c.n_echo; p++) {
            const float *row = want + ((size_t)b * T + (size_t)(p - 1)) * V;
            double lp = row[ids[b * T + p]] - infer_logsumexp(row, V);
            CHECK(c.echo_has[p] && c.echo_tokens[p] == ids[b * T + p]);
            worst = fmax(worst, fabs(c.echo_lp[p] - lp));
        }
        collector_free(&c);
    }
    CHECK_MSG(worst <= 1e-4, "echo logprobs (%s): max err %.3g", adapter ? adapter : "base",
              worst);
    free(want);
}

static void test_echo_reference(void)
{
    engine_server *srv = open_server(GQA, 2, 8, 4, 0);
    sft_file *f = NULL;
    char err[256] = "";
    CHECK_MSG(sft_file_open(GQA "/expected.safetensors", &f, err, sizeof err) == RT_OK, "%s", err);
    if (!srv || !f)
        return;
    engine_server_info info;
    engine_server_info_get(srv, &info);
    CHECK(!info.has_tokenizer);
    CHECK_EQ_STR(info.model_id, "llama_gqa");
    CHECK_EQ_INT(info.context_length, 64);
    CHECK_MSG(engine_adapter_add(srv, "gqa", GQA "/adapter", err, sizeof err) == RT_OK, "%s", err);
    /* batch.json of the fixture: B = 2, T = 9 */
    int32_t ids[18] = {60, 22, 49, 7, 26, 17, 32, 21, 17, 32, 59, 16, 56, 41, 24, 47, 52, 8};
    check_echo(srv, NULL, sft_tensor_find(f, "logits"), ids, 2, 9, info.vocab_size);
    check_echo(srv, "gqa", sft_tensor_find(f, "lora_logits"), ids, 2, 9, info.vocab_size);
    /* text input without a tokenizer is refused */
    collector c;
    collector_init(&c);
    engine_request r = request_of(&c, NULL, "hello", 4);
    engine_handle *h = NULL;
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_UNSUPPORTED);
    collector_free(&c);
    sft_file_close(f);
    engine_server_close(srv);
}

/* ---- padded vocabularies ------------------------------------------------ */

/* A row of 12 logits of which only ids 0..8 have tokens (the model pads
 * its vocabulary to 12), the largest logits on the padding: greedy and
 * every kind of random sampling stay within the tokenizer's ids, and so do
 * the top alternatives. A vocabulary equal to the tokenizer's is unchanged. */
static void test_sample_padded(void)
{
    enum { V = 12, N_TOK = 9, DRAWS = 2000 };
    CHECK_EQ_INT(sample_vocab_size(V, N_TOK), N_TOK);
    CHECK_EQ_INT(sample_vocab_size(V, V), V);
    CHECK_EQ_INT(sample_vocab_size(V, 0), V);      /* no tokenizer */
    CHECK_EQ_INT(sample_vocab_size(V, V + 5), V);  /* tokenizer larger: the model's */
    float row[V], work[2 * V];
    uint64_t st = 5;
    fill_random(row, N_TOK, 2.0f, &st);
    int32_t best = 0;
    for (int i = 1; i < N_TOK; i++)
        best = row[i] > row[best] ? i : best;
    for (int i = N_TOK; i < V; i++)
        row[i] = 50.0f + (float)i;
    int n = sample_vocab_size(V, N_TOK);
    sample_params greedy = {0, 0, 1.0};
    rng r = {1};
    CHECK_EQ_INT(sample_token(row, n, &greedy, &r, work), best);
    CHECK_EQ_INT(sample_token(row, V, &greedy, &r, work), V - 1); /* the row unmasked */
    sample_params kinds[] = {{1.0, 0, 1.0}, {3.0, 0, 1.0}, {1.0, 4, 1.0}, {1.0, 0, 0.9},
                             {2.0, 20, 0.99}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        int outside = 0, distinct = 0;
        bool seen[V] = {0};
        for (int d = 0; d < DRAWS; d++) {
            int32_t id = sample_token(row, n, &kinds[k], &r, work);
            outside += id < 0 || id >= N_TOK;
            if (id >= 0 && id < V && !seen[id]) {
                seen[id] = true;
                distinct++;
            }
        }
        CHECK_MSG(outside == 0, "kind %zu: %d of %d draws outside the tokenizer", k, outside, DRAWS);
        CHECK_MSG(distinct > 1, "kind %zu: only %d distinct ids (not random?)", k, distinct);
    }
    int32_t ids[5];
    float lps[5];
    infer_top_logprobs(row, n, infer_logsumexp(row, n), 5, ids, lps);
    CHECK(ids[0] == best);
    for (int j = 0; j < 5; j++)
        CHECK_MSG(ids[j] >= 0 && ids[j] < N_TOK, "top %d is %d", j, ids[j]);
}

/* Writes into dir a copy of the tiny model with its vocabulary padded to a
 * multiple of 64 past its tokenizer (as Qwen2.5 pads 151665 ids to 151936
 * rows), random weights, and padding rows that win every step: pairs of
 * large opposite embeddings (tied to the output), so one of each pair has a
 * large positive logit whatever the hidden state. Returns the model (the
 * caller frees it) and the tokenizer's size in *n_tok; NULL on failure. */
static model *make_padded_model(const char *dir, int *n_tok)
{
    model_config cfg;
    tokenizer *tok = NULL;
    model *m = NULL;
    char err[256] = "", cmd[600];
    CHECK_MSG(hf_config_load(TINY, &cfg, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(tokenizer_load(TINY "/tokenizer.json", &tok, err, sizeof err) == RT_OK, "%s", err);
    if (!tok)
        return NULL;
    *n_tok = (int)tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    cfg.vocab_size = (*n_tok + 64) / 64 * 64;
    CHECK(cfg.vocab_size > *n_tok);
    CHECK(model_init_random(&cfg, kernels_cpu_backend(), 77, &m) == RT_OK);
    if (!m)
        return NULL;
    int d = cfg.hidden_size;
    float *v = malloc((size_t)d * sizeof *v);
    uint64_t st = 99;
    for (int id = *n_tok; id < cfg.vocab_size; id++) {
        if ((id - *n_tok) % 2 == 0)
            fill_random(v, (size_t)d, 1.0f, &st);
        else
            for (int j = 0; j < d; j++)
                v[j] = -v[j];
        m->be->copy_to_device(m->w.embed + (size_t)id * d, v, (size_t)d * sizeof *v, NULL);
        if (m->w.lm_head != m->w.embed)
            m->be->copy_to_device(m->w.lm_head + (size_t)id * d, v, (size_t)d * sizeof *v, NULL);
    }
    free(v);
    CHECK_MSG(model_save(m, dir, err, sizeof err) == RT_OK, "model_save: %s", err);
    snprintf(cmd, sizeof cmd, "cp " TINY "/tokenizer.json " TINY "/tokenizer_config.json '%s/'", dir);
    CHECK(system(cmd) == 0);
    return m;
}

/* One request with logprobs on the padded model's server, prompt ids[T]
 * whose last logits are row: it must finish without error, sample no
 * padding id (n_tok on), list none among the first token's alternatives,
 * and give that token row's log-probability over the tokenizer's ids only.
 * Returns the first token, or -1. */
static int32_t padded_request(engine_server *srv, const int32_t *ids, size_t T, int n_tok,
                              const float *row, double temperature, double top_p, int top_k)
{
    collector c;
    collector_init(&c);
    engine_request r = request_of(&c, NULL, NULL, 24);
    r.prompt_ids = ids;
    r.n_prompt_ids = T;
    r.temperature = temperature;
    r.top_p = top_p;
    r.top_k = top_k;
    r.has_seed = true;
    r.seed = 3;
    r.logprobs = true;
    r.top_logprobs = 5;
    run_one(srv, &r);
    CHECK_MSG(!strcmp(c.finish, "length") || !strcmp(c.finish, "stop"), "T=%g: %s", temperature,
              c.finish);
    CHECK(c.n_tokens >= 1 && c.n_tokens == c.completion_tokens);
    for (int i = 0; i < c.n_tokens; i++)
        CHECK_MSG(c.tokens[i] >= 0 && c.tokens[i] < n_tok, "T=%g: token %d is %d", temperature, i,
                  c.tokens[i]);
    CHECK_EQ_INT(c.first_n_top, 5);
    for (int j = 0; j < c.first_n_top; j++)
        CHECK_MSG(c.first_top[j] < n_tok, "T=%g: top %d is %d", temperature, j, c.first_top[j]);
    int32_t first = c.n_tokens >= 1 ? c.tokens[0] : -1;
    if (first >= 0)
        CHECK_NEAR(c.logprobs[0], row[first] - infer_logsumexp(row, n_tok), 1e-4);
    collector_free(&c);
    return first;
}

/* Serving the padded model: the padding has the largest logits (checked on
 * the full forward), yet greedy and random requests never fail nor yield
 * padding, and greedy picks the best of the tokenizer's ids. */
static void test_padded_serve(void)
{
    char dir[128];
    int n_tok = 0;
    snprintf(dir, sizeof dir, "%s/padded", tmp_root);
    model *m = make_padded_model(dir, &n_tok);
    engine_server *srv = m ? open_server(dir, 4, 32, 8, 0) : NULL;
    const char *prompt = "Hello there";
    int32_t *ids = NULL;
    size_t T = 0;
    if (srv && tokenizer_encode(srv->tok, prompt, strlen(prompt), true, &ids, &T) == RT_OK) {
        int V = m->cfg.vocab_size;
        float *logits = full_logits(m, NULL, ids, (int)T), *row = logits + (T - 1) * (size_t)V;
        int32_t best_all = 0, best = 0;
        for (int i = 1; i < V; i++)
            best_all = row[i] > row[best_all] ? i : best_all;
        for (int i = 1; i < n_tok; i++)
            best = row[i] > row[best] ? i : best;
        CHECK_MSG(best_all >= n_tok, "the padding must win unmasked (best id %d)", best_all);
        CHECK_EQ_INT(padded_request(srv, ids, T, n_tok, row, 0, 1, 0), best);
        padded_request(srv, ids, T, n_tok, row, 1.0, 1, 0);
        padded_request(srv, ids, T, n_tok, row, 1.5, 0.95, 50);
        free(logits);
    }
    CHECK(srv && ids);
    free(ids);
    engine_server_close(srv);
    model_free(m);
}

/* ---- the scheduler on the tiny chat model -------------------------------- */

static const char *prompts[] = {"Hello there", "The quick brown fox", "Once upon a time",
                                "a b c d e f g h i j k l m n o p q r s t u v w x y z"};

/* Greedy requests over base + three adapters at once equal each alone. */
static void test_mixed_batch(engine_server *srv)
{
    const char *adapters[] = {NULL, "a1", "a2", "a3"};
    enum { N = 8 };
    collector *together = calloc(N, sizeof *together), *alone = calloc(N, sizeof *alone);
    engine_handle *h[N] = {0}, *gate_h = NULL;
    char err[256];
    /* hold the engine in a callback until all N are queued, so that they
     * are admitted together */
    collector gate;
    collector_init(&gate);
    gate.block = 1;
    gate.cancel_after = 1;
    engine_request g = request_of(&gate, NULL, prompts[0], 4);
    CHECK(submit_err(srv, &g, &gate_h, err, sizeof err) == RT_OK);
    collector_wait(&gate, 1);
    for (int i = 0; i < N; i++) {
        collector_init(&together[i]);
        engine_request r = request_of(&together[i], adapters[i % 4], prompts[(i / 4) * 3], 12);
        CHECK_MSG(submit_err(srv, &r, &h[i], err, sizeof err) == RT_OK, "%s", err);
    }
    gate.block = 0;
    for (int i = 0; i < N; i++) {
        collector_wait(&together[i], 0);
        engine_handle_release(h[i]);
    }
    collector_wait(&gate, 0);
    CHECK_EQ_STR(gate.finish, "cancelled");
    engine_handle_release(gate_h);
    collector_free(&gate);
    CHECK_MSG(atomic_load(&srv->max_groups) == 4, "at most %d adapter groups shared a step",
              atomic_load(&srv->max_groups));
    int differ_from_base = 0;
    for (int i = 0; i < N; i++) {
        collector_init(&alone[i]);
        engine_request r = request_of(&alone[i], adapters[i % 4], prompts[(i / 4) * 3], 12);
        run_one(srv, &r);
        CHECK_EQ_INT(together[i].n_tokens, alone[i].n_tokens);
        CHECK_MSG(memcmp(together[i].tokens, alone[i].tokens,
                         sizeof(int32_t) * (size_t)alone[i].n_tokens) == 0,
                  "request %d: batched tokens differ from the request alone", i);
        CHECK_EQ_STR(together[i].text, alone[i].text);
        CHECK_EQ_STR(together[i].finish, alone[i].finish);
        if (getenv("TEST_VERBOSE"))
            fprintf(stderr, "  %d [%s] %s: %s\n", i, adapters[i % 4] ? adapters[i % 4] : "base",
                    together[i].finish, together[i].text);
    }
    for (int i = 0; i < N; i++) { /* the adapters really change the output */
        int base = i - i % 4; /* the same prompt on the base model */
        if (i % 4 && memcmp(alone[i].tokens, alone[base].tokens, sizeof alone[i].tokens) != 0)
            differ_from_base++;
    }
    CHECK_MSG(differ_from_base >= 4, "only %d adapter outputs differ from the base",
              differ_from_base);
    for (int i = 0; i < N; i++) {
        collector_free(&together[i]);
        collector_free(&alone[i]);
    }
    free(together);
    free(alone);
}

/* Greedy generation from prompt_ids ids[0, n) with adapter (NULL: base),
 * echoed or not (echo turns the prefix cache off: every prompt row is
 * computed); returns the prefix-cache tokens the request reused. */
static long long run_ids(engine_server *srv, collector *c, const char *adapter,
                         const int32_t *ids, int n, bool echo)
{
    collector_init(c);
    engine_request r = request_of(c, adapter, NULL, 10);
    r.prompt_ids = ids;
    r.n_prompt_ids = (size_t)n;
    r.logprobs = true;
    r.echo = echo;
    long long before = infer_ctx_reused_tokens(srv->ictx);
    run_one(srv, &r);
    return infer_ctx_reused_tokens(srv->ictx) - before;
}

/* The same tokens, and logprobs within 1e-4 (the cached rows were computed
 * in another step, with other matrix shapes). */
static void same_output(const collector *got, const collector *want, const char *what)
{
    CHECK_MSG(got->n_tokens == want->n_tokens &&
                  memcmp(got->tokens, want->tokens, sizeof(int32_t) * (size_t)want->n_tokens) == 0,
              "%s: tokens differ from the uncached run", what);
    double worst = 0;
    for (int i = 0; i < want->n_tokens && i < got->n_tokens; i++)
        worst = isnan(got->logprobs[i]) ? INFINITY
                                        : fmax(worst, fabs(got->logprobs[i] - want->logprobs[i]));
    CHECK_MSG(worst <= 1e-4, "%s: logprobs differ by %.3g", what, worst);
}

/* Prefix caching: a prompt's full blocks are reused by a later prompt that
 * starts the same way (with the same adapter), and the output at
 * temperature 0 equals the uncached one (an echoed run computes every
 * prompt row). Blocks computed with one adapter never serve another. */
static void test_prefix_cache(engine_server *srv, int vocab)
{
    enum { N = 100, B = INFER_KV_BLOCK };
    int32_t p[N], q[N];
    for (int i = 0; i < N; i++) {
        p[i] = 1 + (i * 37 + 11) % (vocab - 1);
        q[i] = i < 70 ? p[i] : 1 + (i * 13 + 5) % (vocab - 1); /* p's first 70, then others */
    }
    collector ref, first, again, other, other_ref, ad_first, ad_again, ad_ref;
    CHECK_EQ_INT(run_ids(srv, &first, NULL, p, N, false), 0);
    CHECK_EQ_INT(run_ids(srv, &ref, NULL, p, N, true), 0); /* echo never takes cached rows */
    CHECK_EQ_INT(run_ids(srv, &again, NULL, p, N, false), (N - 1) / B * B);
    same_output(&first, &ref, "first run");
    same_output(&again, &ref, "cached prefix");
    CHECK_EQ_INT(run_ids(srv, &other_ref, NULL, q, N, true), 0);
    CHECK_EQ_INT(run_ids(srv, &other, NULL, q, N, false), 70 / B * B);
    same_output(&other, &other_ref, "shared first blocks, then other tokens");
    CHECK_EQ_INT(run_ids(srv, &ad_first, "a1", p, N, false), 0); /* not the base's blocks */
    CHECK_EQ_INT(run_ids(srv, &ad_ref, "a1", p, N, true), 0);
    CHECK_EQ_INT(run_ids(srv, &ad_again, "a1", p, N, false), (N - 1) / B * B);
    same_output(&ad_first, &ad_ref, "adapter, first run");
    same_output(&ad_again, &ad_ref, "adapter, cached prefix");
    double moved = 0; /* the adapter changes the numbers (else this shows nothing) */
    for (int i = 0; i < ref.n_tokens && i < ad_ref.n_tokens; i++)
        moved = fmax(moved, fabs(ad_ref.logprobs[i] - ref.logprobs[i]));
    CHECK_MSG(moved > 1e-3, "the adapter moves the logprobs by only %.3g", moved);
    collector *all[] = {&ref, &first, &again, &other, &other_ref, &ad_first, &ad_again, &ad_ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        collector_free(all[i]);
}

/* Same seed, same sampled output; another seed, another output. */
static void test_seed(engine_server *srv)
{
    collector c[3];
    uint64_t seeds[3] = {42, 42, 7};
    for (int i = 0; i < 3; i++) {
        collector_init(&c[i]);
        engine_request r = request_of(&c[i], "a1", prompts[1], 16);
        r.temperature = 1.0;
        r.top_p = 0.95;
        r.top_k = 200;
        r.repetition_penalty = 1.3;
        r.has_seed = true;
        r.seed = seeds[i];
        run_one(srv, &r);
    }
    CHECK_EQ_INT(c[0].n_tokens, c[1].n_tokens);
    CHECK(memcmp(c[0].tokens, c[1].tokens, sizeof c[0].tokens) == 0);
    CHECK_EQ_STR(c[0].text, c[1].text);
    CHECK(memcmp(c[0].tokens, c[2].tokens, sizeof c[0].tokens) != 0);
    for (int i = 0; i < 3; i++)
        collector_free(&c[i]);
}

/* A stop string taken from the greedy output ends it there, trimmed. */
static void test_stop_and_length(engine_server *srv)
{
    collector full;
    collector_init(&full);
    engine_request r = request_of(&full, NULL, prompts[2], 24);
    r.logprobs = true;
    r.top_logprobs = 3;
    run_one(srv, &r);
    CHECK_EQ_STR(full.finish, "length");
    CHECK_EQ_INT(full.completion_tokens, 24);
    CHECK_EQ_INT(full.n_tokens, 24);
    CHECK_EQ_INT(full.first_n_top, 3);
    CHECK(full.first_top[0] == full.tokens[0]); /* greedy picks the most likely */
    CHECK_NEAR(full.first_top_lp[0], full.logprobs[0], 1e-6);
    CHECK(full.first_top_lp[0] >= full.first_top_lp[1] && full.first_top_lp[1] >= full.first_top_lp[2]);
    /* pick 3 ASCII bytes from the middle of the text as the stop string */
    size_t at = full.text_len / 2;
    while (at + 3 < full.text_len &&
           ((unsigned char)full.text[at] >= 0x80 || (unsigned char)full.text[at + 1] >= 0x80 ||
            (unsigned char)full.text[at + 2] >= 0x80))
        at++;
    CHECK_MSG(at + 3 <= full.text_len, "no ASCII run in \"%s\"", full.text);
    char stop[4] = {0};
    memcpy(stop, full.text + at, 3);
    const char *first = strstr(full.text, stop);
    collector c;
    collector_init(&c);
    r = request_of(&c, NULL, prompts[2], 24);
    r.stop[0] = "this never occurs \xe2\x9c\x93";
    r.stop[1] = stop;
    r.n_stop = 2;
    run_one(srv, &r);
    CHECK_EQ_STR(c.finish, "stop");
    CHECK_EQ_INT(c.text_len, (size_t)(first - full.text));
    CHECK(strncmp(c.text, full.text, c.text_len) == 0);
    CHECK(c.completion_tokens < 24);
    collector_free(&c);
    collector_free(&full);
}

/* Cancelling frees the slot: from a callback and from another thread. */
static void test_cancel(engine_server *srv)
{
    collector c;
    collector_init(&c);
    engine_request r = request_of(&c, "a2", prompts[0], 200);
    c.cancel_after = 3;
    run_one(srv, &r);
    CHECK_EQ_STR(c.finish, "cancelled");
    CHECK_EQ_INT(c.n_tokens, 3);
    collector_free(&c);

    collector_init(&c);
    r = request_of(&c, "a2", prompts[0], 200);
    engine_handle *h = NULL;
    char err[256];
    CHECK(submit_err(srv, &r, &h, err, sizeof err) == RT_OK);
    collector_wait(&c, 2);
    engine_cancel(h);
    collector_wait(&c, 0);
    CHECK_EQ_STR(c.finish, "cancelled");
    CHECK(c.n_tokens < 200);
    int waiting = -1, active = -1;
    engine_server_load(srv, &waiting, &active);
    CHECK_EQ_INT(waiting, 0);
    CHECK_EQ_INT(active, 0);
    engine_handle_release(h);
    collector_free(&c);
}

/* Removing an adapter while a request uses it: the request finishes
 * exactly as it would have; new requests cannot name it. */
static void test_remove_in_flight(engine_server *srv, const char *dir)
{
    char err[256];
    CHECK(engine_adapter_add(srv, "tmp", dir, err, sizeof err) == RT_OK);
    CHECK_EQ_INT(engine_adapter_add(srv, "tmp", dir, err, sizeof err), RT_ERR_EXISTS);
    collector ref, c;
    collector_init(&ref);
    collector_init(&c);
    engine_request r = request_of(&ref, "tmp", prompts[3], 20);
    run_one(srv, &r);
    r = request_of(&c, "tmp", prompts[3], 20);
    c.block = 1; /* hold the engine inside the first token's callback */
    engine_handle *h = NULL;
    CHECK(submit_err(srv, &r, &h, err, sizeof err) == RT_OK);
    collector_wait(&c, 1);
    CHECK_EQ_INT(engine_adapter_remove(srv, "tmp"), RT_OK);
    CHECK(!engine_adapter_exists(srv, "tmp"));
    CHECK_EQ_INT(engine_adapter_remove(srv, "tmp"), RT_ERR_NOT_FOUND);
    c.block = 0;
    collector_wait(&c, 0);
    CHECK_EQ_STR(c.finish, ref.finish);
    CHECK_EQ_INT(c.n_tokens, ref.n_tokens);
    CHECK(memcmp(c.tokens, ref.tokens, sizeof c.tokens) == 0);
    engine_handle_release(h);
    collector d;
    collector_init(&d);
    r = request_of(&d, "tmp", prompts[3], 20);
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_NOT_FOUND);
    /* the name is free again at once */
    CHECK(engine_adapter_add(srv, "tmp", dir, err, sizeof err) == RT_OK);
    CHECK(engine_adapter_remove(srv, "tmp") == RT_OK);
    collector_free(&ref);
    collector_free(&c);
    collector_free(&d);
}

/* Bad requests name their field. */
static void test_bad_requests(engine_server *srv)
{
    collector c;
    collector_init(&c);
    engine_handle *h = NULL;
    char err[256] = "";
    engine_request r = request_of(&c, NULL, prompts[0], 600);
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_INVALID);
    CHECK_MSG(strstr(err, "max_tokens") != NULL, "%s", err);
    CHECK_EQ_STR(last_field, "max_tokens"); /* the field, structured: nobody parses the text */
    r = request_of(&c, "nope", prompts[0], 4);
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_NOT_FOUND);
    CHECK_EQ_STR(last_field, "model");
    r = request_of(&c, NULL, prompts[0], 4);
    r.temperature = -1;
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_INVALID);
    CHECK_MSG(strstr(err, "temperature") != NULL, "%s", err);
    CHECK_EQ_STR(last_field, "temperature");
    r = request_of(&c, NULL, prompts[0], 0);
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_INVALID);
    r = request_of(&c, NULL, NULL, 4);
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_INVALID);
    r = request_of(&c, NULL, prompts[0], 4);
    r.top_logprobs = 21;
    CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_INVALID);
    CHECK(!c.done);
    collector_free(&c);
}

/* Chat messages through the template; the fill-the-context max_tokens. */
static void test_chat(engine_server *srv)
{
    collector c;
    collector_init(&c);
    engine_chat_message msgs[2] = {{"system", "Be brief.", NULL}, {"user", "Hi!", NULL}};
    engine_request r = request_of(&c, "a3", NULL, 8);
    r.messages = msgs;
    r.n_messages = 2;
    run_one(srv, &r);
    CHECK(c.prompt_tokens > 5);
    CHECK(strcmp(c.finish, "length") == 0 || strcmp(c.finish, "stop") == 0);
    CHECK(c.completion_tokens >= 1 && c.completion_tokens <= 8);
    collector_free(&c);
}

/* Echo on a text prompt: the prompt's tokens and text come back first
 * (with top alternatives), then the completion. */
static void test_echo_text(engine_server *srv)
{
    collector c;
    collector_init(&c);
    engine_request r = request_of(&c, "a1", prompts[1], 2);
    r.echo = true;
    r.top_logprobs = 2;
    run_one(srv, &r);
    CHECK_EQ_INT(c.n_echo, c.prompt_tokens);
    CHECK_MSG(strstr(c.echo_text, prompts[1]) != NULL, "echo text \"%s\"", c.echo_text);
    CHECK_EQ_INT(c.completion_tokens, 2);
    CHECK(c.n_echo > 1 && c.echo_has[1] && !c.echo_has[0] && c.echo_lp[1] < 0);
    collector_free(&c);
}

/* ---- response_format: constrained decoding -------------------------------- */

/* A grammar compiled from JSON text (NULL: any object). */
static json_grammar *grammar_of(const char *schema)
{
    cJSON *j = schema ? cJSON_Parse(schema) : NULL;
    json_grammar *g = NULL;
    char err[256] = "";
    CHECK_MSG(engine_grammar_compile(j, &g, err, sizeof err) == RT_OK, "%s", err);
    cJSON_Delete(j);
    return g;
}

/* One constrained request on a text prompt; the collector gets its output. */
static void run_constrained(engine_server *srv, collector *c, const json_grammar *g,
                            double temperature, uint64_t seed, int max_tokens)
{
    collector_init(c);
    engine_request r = request_of(c, NULL, prompts[seed % 4], max_tokens);
    r.grammar = g;
    r.temperature = temperature;
    r.has_seed = true;
    r.seed = seed;
    r.logprobs = true;
    run_one(srv, &r);
}

/* Greedy takes the unmasked argmax when the grammar allows it and masks
 * otherwise; a near-zero temperature always masks. Both must pick the same
 * tokens, and the output is a JSON object. Sampled outputs are objects too,
 * with the raw row's logprobs. */
static void test_grammar_greedy_and_sampled(engine_server *srv)
{
    json_grammar *g[2] = {grammar_of(NULL),
                          grammar_of("{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[\"x\",1,null]},"
                                     "\"b\":{\"type\":\"boolean\"}},\"required\":[\"a\",\"b\"]}")};
    for (int k = 0; k < 2; k++) { /* any object (may not finish: greedy loops), then a small schema */
        collector greedy, masked;
        run_constrained(srv, &greedy, g[k], 0, 1, 300);
        run_constrained(srv, &masked, g[k], 1e-6, 1, 300);
        CHECK_EQ_INT(greedy.n_tokens, masked.n_tokens);
        CHECK(memcmp(greedy.tokens, masked.tokens, sizeof(int32_t) * (size_t)greedy.n_tokens) == 0);
        CHECK_EQ_STR(greedy.finish, k ? "stop" : greedy.finish);
        cJSON *doc = cJSON_Parse(greedy.text);
        CHECK_MSG(strcmp(greedy.finish, "stop") || cJSON_IsObject(doc), "greedy output: %s", greedy.text);
        cJSON_Delete(doc);
        collector_free(&greedy);
        collector_free(&masked);
    }
    for (uint64_t seed = 1; seed <= 4; seed++) {
        collector c;
        run_constrained(srv, &c, g[1], 1.0, seed, 300);
        cJSON *doc = cJSON_Parse(c.text);
        CHECK_MSG(!strcmp(c.finish, "stop") && cJSON_IsObject(doc) && cJSON_GetArraySize(doc) == 2 &&
                      cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(doc, "b")),
                  "seed %d: %s: %s", (int)seed, c.finish, c.text);
        for (int i = 0; i < c.n_tokens; i++)
            CHECK(c.logprobs[i] <= 0);
        cJSON_Delete(doc);
        collector_free(&c);
    }
    engine_grammar_free(g[0]);
    engine_grammar_free(g[1]);
}

/* Every token id whose bytes are not exactly one of keep[] loses its
 * bytes: a vocabulary that cannot write most JSON. */
static json_vocab *crippled_vocab(const engine_server *srv, const char *const *keep, int n_keep)
{
    int V = srv->n_sample;
    const char **ptrs = malloc((size_t)V * sizeof *ptrs);
    size_t *lens = calloc((size_t)V, sizeof *lens);
    for (int i = 0; i < V; i++) {
        ptrs[i] = srv->vocab_bytes + srv->vocab_off[i];
        size_t len = srv->vocab_off[i + 1] - srv->vocab_off[i];
        for (int k = 0; k < n_keep; k++)
            if (len == strlen(keep[k]) && !memcmp(ptrs[i], keep[k], len))
                lens[i] = len;
    }
    json_vocab *v = NULL;
    CHECK(json_vocab_new(ptrs, lens, V, &v) == RT_OK);
    free(ptrs);
    free(lens);
    return v;
}

/* When no token may follow, the sequence ends cleanly: "stop" for a
 * complete document when the model has no stop token, "error" for a
 * vocabulary that cannot continue (the output so far a valid prefix). */
static void test_grammar_dead_ends(engine_server *srv)
{
    json_grammar *g = grammar_of(NULL);
    collector c;
    run_constrained(srv, &c, g, 1.0, 5, 8); /* builds the vocabulary */
    collector_free(&c);
    int n_stop = srv->n_stop_ids; /* the engine is idle: safe to change between requests */
    srv->n_stop_ids = 0;
    run_constrained(srv, &c, g, 1.0, 6, 400);
    cJSON *doc = cJSON_Parse(c.text);
    CHECK_MSG(!strcmp(c.finish, "stop") && cJSON_IsObject(doc), "%s: %s", c.finish, c.text);
    cJSON_Delete(doc);
    collector_free(&c);
    srv->n_stop_ids = n_stop;
    static const char *const keep[] = {"{", " "};
    json_vocab *full = srv->vocab, *poor = crippled_vocab(srv, keep, 2);
    srv->vocab = poor;
    run_constrained(srv, &c, g, 1.0, 7, 400);
    CHECK_MSG(!strcmp(c.finish, "error") && strspn(c.text, "{ ") == strlen(c.text) &&
                  strchr(c.text, '{') && strchr(c.text, '{') == strrchr(c.text, '{'),
              "%s: \"%s\"", c.finish, c.text);
    collector_free(&c);
    srv->vocab = full;
    json_vocab_free(poor);
    engine_grammar_free(g);
}

/* A grammar needs a tokenizer (the token-id-only model refuses it). */
static void test_grammar_needs_tokenizer(void)
{
    engine_server *srv = open_server(GQA, 1, 8, 2, 0);
    json_grammar *g = grammar_of(NULL);
    collector c;
    collector_init(&c);
    int32_t ids[3] = {1, 2, 3};
    engine_request r = request_of(&c, NULL, NULL, 4);
    r.prompt_ids = ids;
    r.n_prompt_ids = 3;
    r.grammar = g;
    engine_handle *h = NULL;
    char err[256] = "";
    if (srv && !srv->tok) {
        CHECK_EQ_INT(submit_err(srv, &r, &h, err, sizeof err), RT_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(err, "response_format") != NULL, "%s", err);
    }
    collector_free(&c);
    engine_grammar_free(g);
    engine_server_close(srv);
}

/* A full queue refuses with RT_ERR_BUSY (max_batch 1, max_waiting 2). */
static void test_queue_full(void)
{
    engine_server *srv = open_server(TINY, 1, 8, 2, 0);
    if (!srv)
        return;
    collector c[4];
    engine_handle *h[4] = {0};
    char err[256] = "";
    for (int i = 0; i < 4; i++)
        collector_init(&c[i]);
    c[0].block = 1;
    engine_request r = request_of(&c[0], NULL, prompts[0], 50);
    CHECK(submit_err(srv, &r, &h[0], err, sizeof err) == RT_OK);
    collector_wait(&c[0], 1); /* running, the engine held in its callback */
    for (int i = 1; i < 3; i++) {
        r = request_of(&c[i], NULL, prompts[i], 4);
        CHECK(submit_err(srv, &r, &h[i], err, sizeof err) == RT_OK);
    }
    int waiting = 0, active = 0;
    engine_server_load(srv, &waiting, &active);
    CHECK_EQ_INT(waiting, 2);
    CHECK_EQ_INT(active, 1);
    r = request_of(&c[3], NULL, prompts[3], 4);
    CHECK_EQ_INT(submit_err(srv, &r, &h[3], err, sizeof err), RT_ERR_BUSY);
    engine_cancel(h[1]); /* cancelled while queued: never runs */
    engine_cancel(h[0]);
    c[0].block = 0;
    for (int i = 0; i < 3; i++)
        collector_wait(&c[i], 0);
    CHECK_EQ_STR(c[0].finish, "cancelled");
    CHECK_EQ_STR(c[1].finish, "cancelled");
    CHECK_EQ_INT(c[1].n_tokens, 0);
    CHECK(strcmp(c[2].finish, "length") == 0 || strcmp(c[2].finish, "stop") == 0);
    /* closing with requests in flight cancels them */
    c[3].block = 1;
    r = request_of(&c[3], NULL, prompts[3], 100);
    CHECK(submit_err(srv, &r, &h[3], err, sizeof err) == RT_OK);
    collector_wait(&c[3], 1);
    c[3].block = 0;
    engine_server_close(srv);
    CHECK(c[3].done);
    CHECK_EQ_STR(c[3].finish, "cancelled");
    for (int i = 0; i < 4; i++) {
        engine_handle_release(h[i]);
        collector_free(&c[i]);
    }
}

/* Adapters that do not fit the base are refused with a message. */
static void test_bad_adapters(engine_server *srv, const char *good_dir)
{
    char err[256] = "", dir[128], path[512];
    /* wrong shapes: llama_gqa's adapter against tiny_chat */
    CHECK_EQ_INT(engine_adapter_add(srv, "bad", GQA "/adapter", err, sizeof err), RT_ERR_FORMAT);
    CHECK_MSG(strstr(err, "shape") != NULL, "%s", err);
    CHECK(!engine_adapter_exists(srv, "bad"));
    /* an unknown module in adapter_config.json */
    snprintf(dir, sizeof dir, "%s/unknown", tmp_root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": 4, \"lora_alpha\": 8,"
          " \"target_modules\": [\"q_proj\", \"foo_proj\"], \"bias\": \"none\"}", f);
    fclose(f);
    err[0] = '\0';
    int rc = engine_adapter_add(srv, "bad", dir, err, sizeof err);
    CHECK(rc == RT_ERR_UNSUPPORTED || rc == RT_ERR_FORMAT);
    CHECK_MSG(strstr(err, "foo_proj") != NULL, "%s", err);
    /* tensors of a module the config does not target */
    snprintf(path, sizeof path, "cp '%s/adapter_model.safetensors' '%s/'", good_dir, dir);
    CHECK(system(path) == 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": 4, \"lora_alpha\": 8,"
          " \"target_modules\": [\"q_proj\"], \"bias\": \"none\"}", f);
    fclose(f);
    err[0] = '\0';
    CHECK_EQ_INT(engine_adapter_add(srv, "bad", dir, err, sizeof err), RT_ERR_FORMAT);
    CHECK_MSG(strstr(err, "not in target_modules") != NULL, "%s", err);
    /* a missing directory */
    CHECK(engine_adapter_add(srv, "bad", "/nonexistent/adapter", err, sizeof err) != RT_OK);
    CHECK(!engine_adapter_exists(srv, "bad"));
}

/* The LRU keeps resident weights within the budget once nothing is
 * pinned (three adapters were used, more than the budget holds). */
static void test_lru(engine_server *srv, size_t budget)
{
    size_t bytes = 0;
    int resident = 0;
    adapter_registry_usage(srv->reg, &bytes, &resident);
    CHECK_MSG(bytes <= budget && resident <= 2, "%zu bytes in %d adapters", bytes, resident);
}

/* A thousand registered adapters (names over the three adapter
 * directories), a budget of two resident: requests rotating over many of
 * them, eight at a time, each answer equal to its directory's adapter
 * served alone; residency stays within the budget once they are done;
 * removing the names leaves the registry as it was. */
static void test_many_adapters(engine_server *srv, char dirs[][128], size_t budget)
{
    enum { NAMES = 1000, ROUNDS = 5, AT_ONCE = 8 };
    char err[256], name[32];
    for (int i = 0; i < NAMES; i++) {
        snprintf(name, sizeof name, "many%d", i);
        CHECK_MSG(engine_adapter_add(srv, name, dirs[i % 3], err, sizeof err) == RT_OK, "%s", err);
    }
    collector want[3];
    for (int d = 0; d < 3; d++) {
        char a[16];
        snprintf(a, sizeof a, "a%d", d + 1);
        collector_init(&want[d]);
        engine_request r = request_of(&want[d], a, prompts[1], 6);
        run_one(srv, &r);
    }
    int wrong = 0;
    for (int round = 0; round < ROUNDS; round++) {
        collector got[AT_ONCE];
        engine_handle *h[AT_ONCE] = {0};
        int idx[AT_ONCE];
        for (int j = 0; j < AT_ONCE; j++) {
            idx[j] = (round * 131 + j * 37) % NAMES; /* spread over the thousand */
            snprintf(name, sizeof name, "many%d", idx[j]);
            collector_init(&got[j]);
            engine_request r = request_of(&got[j], name, prompts[1], 6);
            CHECK_MSG(submit_err(srv, &r, &h[j], err, sizeof err) == RT_OK, "%s", err);
        }
        for (int j = 0; j < AT_ONCE; j++) {
            collector_wait(&got[j], 0);
            engine_handle_release(h[j]);
            const collector *w = &want[idx[j] % 3];
            wrong += got[j].n_tokens != w->n_tokens ||
                     memcmp(got[j].tokens, w->tokens, sizeof(int32_t) * (size_t)w->n_tokens) != 0;
            collector_free(&got[j]);
        }
    }
    CHECK_MSG(wrong == 0, "%d of %d answers differ from their adapter's", wrong, ROUNDS * AT_ONCE);
    size_t bytes = 0;
    int resident = 0;
    adapter_registry_usage(srv->reg, &bytes, &resident);
    CHECK_MSG(bytes <= budget && resident <= 2, "%zu bytes in %d adapters after the rotation", bytes,
              resident);
    for (int i = 0; i < NAMES; i++) {
        snprintf(name, sizeof name, "many%d", i);
        CHECK_EQ_INT(engine_adapter_remove(srv, name), RT_OK);
    }
    for (int d = 0; d < 3; d++)
        collector_free(&want[d]);
}

/* The pool of full fine-tunes' engines: one engine per name however many
 * hold it; a forgotten name's engine stays with those holding it while the
 * next acquire opens a fresh one; the budget closes unused engines. */
static void test_engine_pool(void)
{
    engine_pool *p = NULL;
    engine_pool_config pc = {.device = "cpu", .budget_bytes = 0};
    CHECK_EQ_INT(engine_pool_new(&pc, &p), RT_OK);
    if (!p)
        return;
    engine_server *a = NULL, *b = NULL, *c = NULL;
    engine_pool_entry *ha = NULL, *hb = NULL, *hc = NULL;
    char err[256] = "";
    CHECK_EQ_INT(engine_pool_acquire(p, "full-1", TINY, &a, &ha, err, sizeof err), RT_OK);
    CHECK_EQ_INT(engine_pool_acquire(p, "full-1", TINY, &b, &hb, err, sizeof err), RT_OK);
    CHECK(a && a == b && ha == hb);
    engine_pool_forget(p, "full-1");  /* deleted while two requests hold it */
    engine_server_info info = {0};
    if (a)
        engine_server_info_get(a, &info);
    CHECK(info.vocab_size > 0); /* still usable */
    CHECK_EQ_INT(engine_pool_acquire(p, "full-1", TINY, &c, &hc, err, sizeof err), RT_OK);
    CHECK(c && c != a); /* a new publish of the name gets a fresh engine */
    engine_pool_release(p, ha);
    engine_pool_release(p, hb);       /* the forgotten engine closes here */
    engine_pool_release(p, hc);       /* budget 0: closed once unused */
    CHECK_EQ_INT(engine_pool_acquire(p, "full-2", "/nonexistent/model", &a, &ha, err, sizeof err) != RT_OK, 1);
    engine_pool_free(p);
}

int main(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/retune_infer_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    model_config cfg;
    char err[256] = "", dirs[3][128];
    CHECK_MSG(hf_config_load(TINY, &cfg, err, sizeof err) == RT_OK, "%s", err);
    for (int i = 0; i < 3; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/a%d", tmp_root, i + 1);
        make_adapter(&cfg, dirs[i], 1000 + (uint64_t)i, 4 + 4 * i); /* ranks 4, 8, 12 */
    }
    RUN(test_attention_kv);
    RUN(test_attention_kv_batch);
    RUN(test_text_helpers);
    RUN(test_sample_padded);
    RUN(test_padded_serve);
    fprintf(stderr, "-- test_kv_decode\n");
    test_kv_decode(dirs[1]);
    RUN(test_echo_reference);
    RUN(test_engine_pool);

    /* budget: two rank-4 adapters' worth, so the LRU must evict */
    size_t one = 0;
    peft_config pc = {.r = 4, .target_modules = PEFT_ALL_MODULES};
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int o, in;
        model_module_shape(&cfg, (enum peft_module)m, &o, &in);
        one += (size_t)pc.r * (size_t)(o + in) * sizeof(float) * (size_t)cfg.num_hidden_layers;
    }
    engine_server *srv = open_server(TINY, 8, 16, 16, 2 * one);
    if (srv) {
        for (int i = 0; i < 3; i++) {
            char name[16];
            snprintf(name, sizeof name, "a%d", i + 1);
            CHECK_MSG(engine_adapter_add(srv, name, dirs[i], err, sizeof err) == RT_OK, "%s", err);
        }
        fprintf(stderr, "-- test_mixed_batch\n");
        test_mixed_batch(srv);
        fprintf(stderr, "-- test_prefix_cache\n");
        test_prefix_cache(srv, cfg.vocab_size);
        fprintf(stderr, "-- test_seed\n");
        test_seed(srv);
        fprintf(stderr, "-- test_stop_and_length\n");
        test_stop_and_length(srv);
        fprintf(stderr, "-- test_cancel\n");
        test_cancel(srv);
        fprintf(stderr, "-- test_remove_in_flight\n");
        test_remove_in_flight(srv, dirs[0]);
        fprintf(stderr, "-- test_bad_requests\n");
        test_bad_requests(srv);
        fprintf(stderr, "-- test_echo_text\n");
        test_echo_text(srv);
        fprintf(stderr, "-- test_chat\n");
        test_chat(srv);
        fprintf(stderr, "-- test_bad_adapters\n");
        test_bad_adapters(srv, dirs[0]);
        fprintf(stderr, "-- test_lru\n");
        test_lru(srv, 2 * one);
        fprintf(stderr, "-- test_many_adapters\n");
        test_many_adapters(srv, dirs, 2 * one);
        fprintf(stderr, "-- test_grammar_greedy_and_sampled\n");
        test_grammar_greedy_and_sampled(srv);
        fprintf(stderr, "-- test_grammar_dead_ends\n");
        test_grammar_dead_ends(srv);
        engine_server_close(srv);
    }
    RUN(test_queue_full);
    RUN(test_grammar_needs_tokenizer);
    remove_dir(tmp_root);
    return TEST_SUMMARY();
}
