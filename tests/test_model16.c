/*
 * tests/test_model16.c — the 16-bit frozen base: a model whose matrices stay
 * bf16 or f16 in memory computes what the fp32 path computes on the same
 * values. For every PyTorch fixture model (tests/fixtures/model/) and both
 * 16-bit types, the fixture is rewritten with 16-bit tensors, then:
 *   - model_load_as(auto) keeps the matrices 16-bit and maps them from the
 *     file (no copy); model_load(f32) of the same file converts them;
 *   - model_load_as(bf16/f16) of the original fp32 fixture converts on load
 *     and gives bit-identical logits to the mapped model;
 *   - training path: logits, loss and LoRA gradients (the fixture's
 *     adapter), 16-bit vs fp32, on a batch of 18 rows (panel + sgemm path)
 *     and of 4 rows (direct few-row path);
 *   - activation checkpointing (recompute) gives bit-identical gradients
 *     with fewer activation bytes;
 *   - serving path: prefill + two decode steps through the KV cache.
 * Tolerances: |a - b| <= 1e-5 * max|b| + 1e-6 for logits and gradients
 * (same values, summation order only); loss within 1e-6 of max(1, |loss|).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/infer.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/test.h"

static char g_tmp[256];

/* Writes dir's model as a copy in tmp whose matrices are dtype (norms and
 * biases stay F32, as in some released checkpoints). */
static bool write_copy16(const char *dir, enum sft_dtype dtype)
{
    char src[600], dst[600], err[256] = "";
    snprintf(src, sizeof src, "%s/config.json", dir);
    snprintf(dst, sizeof dst, "%s/config.json", g_tmp);
    char *text = NULL;
    size_t len = 0;
    bool ok = rt_read_file(src, 1 << 20, &text, &len, err, sizeof err) == RT_OK &&
              rt_write_file_atomic(dst, text, len, err, sizeof err) == RT_OK;
    free(text);
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    sft_file *f = NULL;
    ok = ok && sft_file_open(src, &f, err, sizeof err) == RT_OK;
    sft_writer *w = NULL;
    ok = ok && sft_writer_init(&w) == RT_OK;
    size_t n = ok ? sft_tensor_count(f) : 0;
    float **vals = calloc(n + 1, sizeof *vals);
    for (size_t i = 0; ok && i < n; i++) {
        const sft_tensor *t = sft_tensor_at(f, i);
        vals[i] = malloc(t->numel * sizeof(float));
        ok = sft_tensor_read_f32(t, vals[i], t->numel) == RT_OK &&
             sft_writer_add(w, t->name, t->rank == 2 ? dtype : SFT_F32, t->rank, t->shape, vals[i]) == RT_OK;
    }
    snprintf(dst, sizeof dst, "%s/model.safetensors", g_tmp);
    ok = ok && sft_writer_write(w, dst, err, sizeof err) == RT_OK;
    CHECK_MSG(ok, "copy of %s: %s", dir, err);
    for (size_t i = 0; i < n; i++)
        free(vals[i]);
    free(vals);
    sft_writer_free(w);
    sft_file_close(f);
    return ok;
}

/* Largest |a - b| over n, relative to max |b|; NaN is infinite. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double worst = 0, big = 0;
    for (size_t i = 0; i < n; i++)
        big = fmax(big, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        worst = fmax(worst, d);
    }
    return worst / (big * 1e-5 + 1e-6); /* <= 1 passes */
}

/* The logits (host copy) and LoRA gradients of one forward + backward. */
typedef struct run_out {
    float *logits, *grads;
    double loss;
    size_t n_logits, n_grads;
} run_out;

static run_out run_train(const model *m, const lora *ad, const int32_t *ids, const int32_t *tg,
                         int B, int T, bool recompute)
{
    run_out r = {0};
    model_acts *a = NULL;
    lora *g = NULL;
    CHECK(model_acts_create_ckpt(m, B, T, ad->cfg.r, recompute, &a) == RT_OK);
    CHECK(lora_clone_zero(ad, &g) == RT_OK);
    if (!a || !g)
        goto out;
    model_batch b = {ids, tg, B, T, 0, false};
    model_loss loss;
    CHECK(model_forward(m, ad, a, &b, &loss) == RT_OK);
    CHECK(model_backward(m, ad, a, &b, NULL, g) == RT_OK);
    r.loss = loss.loss;
    r.n_logits = (size_t)B * T * m->cfg.vocab_size;
    r.n_grads = g->n_params;
    r.logits = malloc(r.n_logits * sizeof(float));
    r.grads = malloc(r.n_grads * sizeof(float));
    m->be->copy_to_host(r.logits, model_acts_logits(a), r.n_logits * sizeof(float), NULL);
    m->be->copy_to_host(r.grads, g->params, r.n_grads * sizeof(float), NULL);
out:
    model_acts_free(a);
    lora_free(g);
    return r;
}

static void run_free(run_out *r)
{
    free(r->logits);
    free(r->grads);
}

/* Prefill of n ids then two decode steps; logits of each step's last row. */
static float *run_serve(const model *m, const lora *ad, const int32_t *ids, int n)
{
    int V = m->cfg.vocab_size;
    float *out = malloc(3 * (size_t)V * sizeof *out);
    infer_ctx *c = NULL;
    CHECK(infer_ctx_create(m, 1, n + 2, n, &c) == RT_OK);
    for (int step = 0; c && step < 3; step++) {
        infer_seg seg = {0, step == 0 ? 0 : n - 2 + step, step == 0 ? n - 1 : 1, ad};
        int32_t row = seg.n - 1;
        const int32_t *sid = step == 0 ? ids : ids + (step - 1);
        infer_step st = {sid, seg.n, &seg, 1, &row, 1};
        CHECK(infer_forward(c, &st, out + (size_t)step * V) == RT_OK);
    }
    infer_ctx_free(c);
    return out;
}

static void check_pair(const char *what, const char *fx, const float *a, const float *b, size_t n)
{
    double d = rel_diff(a, b, n);
    CHECK_MSG(d <= 1.0, "%s %s: differs by %.3g of its tolerance", fx, what, d);
}

/* One fixture and one 16-bit type. */
static void check_fixture(const char *dir, enum sft_dtype st_dt)
{
    kernels_dtype dt = st_dt == SFT_BF16 ? KERNELS_BF16 : KERNELS_F16;
    const kernels_backend *be = kernels_cpu_backend();
    char err[256] = "", path[600];
    if (!write_copy16(dir, st_dt))
        return;
    model *m16 = NULL, *m32 = NULL, *mconv = NULL;
    CHECK_MSG(model_load_as(g_tmp, be, MODEL_DTYPE_AUTO, &m16, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(model_load(g_tmp, be, &m32, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(model_load_as(dir, be, st_dt == SFT_BF16 ? MODEL_DTYPE_BF16 : MODEL_DTYPE_F16, &mconv,
                            err, sizeof err) == RT_OK, "%s", err);
    snprintf(path, sizeof path, "%s/adapter", dir);
    lora *ad = NULL;
    CHECK_MSG(m32 && lora_load(path, &m32->cfg, be, &ad, err, sizeof err) == RT_OK, "%s", err);
    if (!m16 || !m32 || !mconv || !ad)
        goto out;
    CHECK(m16->w16 == dt && m16->mapped && !m16->params16); /* mapped, not copied */
    CHECK(mconv->w16 == dt && !mconv->mapped && mconv->params16);
    CHECK(!m32->w16 && m32->w.layers[0].proj16[0] == NULL && m32->w.layers[0].proj[0]);
    CHECK(m16->weight_bytes < m32->weight_bytes * 6 / 10);

    int V = m32->cfg.vocab_size, B = 2, T = 9;
    int32_t ids[18], tg[18];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 7 + 3) % V;
        tg[i] = i % T == T - 1 ? -100 : (i * 7 + 10) % V;
    }
    for (int pass = 0; pass < 2; pass++) { /* 18 rows, then 4 */
        int b = pass ? 1 : B, t = pass ? 4 : T;
        run_out r16 = run_train(m16, ad, ids, tg, b, t, false), r32 = run_train(m32, ad, ids, tg, b, t, false);
        run_out rc = run_train(mconv, ad, ids, tg, b, t, false);
        run_out rk = run_train(m16, ad, ids, tg, b, t, true); /* activation checkpointing */
        if (r16.logits && r32.logits && rc.logits) {
            check_pair(pass ? "logits (4 rows)" : "logits (18 rows)", dir, r16.logits, r32.logits, r16.n_logits);
            check_pair("LoRA gradients", dir, r16.grads, r32.grads, r16.n_grads);
            CHECK_NEAR(r16.loss, r32.loss, 1e-6 * fmax(1.0, fabs(r32.loss)));
            CHECK(memcmp(r16.logits, rc.logits, r16.n_logits * sizeof(float)) == 0);
            CHECK(rk.grads && memcmp(r16.grads, rk.grads, r16.n_grads * sizeof(float)) == 0);
            CHECK(rk.loss == r16.loss);
        }
        CHECK(model_acts_bytes(m16, b, t, ad->cfg.r, true) < model_acts_bytes(m16, b, t, ad->cfg.r, false));
        run_free(&rk);
        run_free(&r16);
        run_free(&r32);
        run_free(&rc);
    }
    float *s16 = run_serve(m16, ad, ids, 6), *s32 = run_serve(m32, ad, ids, 6);
    check_pair("serving logits", dir, s16, s32, 3 * (size_t)V);
    free(s16);
    free(s32);
out:
    lora_free(ad);
    model_free(m16);
    model_free(m32);
    model_free(mconv);
}

/* A 16-bit model cannot be saved or give fp32 gradients. */
static void check_refusals(const char *dir)
{
    char err[256] = "";
    model *m = NULL;
    if (!write_copy16(dir, SFT_BF16))
        return;
    CHECK(model_load_as(g_tmp, kernels_cpu_backend(), MODEL_DTYPE_AUTO, &m, err, sizeof err) == RT_OK);
    if (!m)
        return;
    float g[4];
    CHECK_EQ_INT(model_proj_backward(m, 0, PEFT_Q_PROJ, g, g, NULL, NULL, g, g, 1), RT_ERR_INVALID);
    char out[300];
    snprintf(out, sizeof out, "%s/saved", g_tmp);
    err[0] = '\0';
    CHECK(model_save(m, out, err, sizeof err) == RT_ERR_UNSUPPORTED && strstr(err, "16-bit"));
    enum model_dtype d;
    CHECK(model_dtype_parse("bf16", &d) == RT_OK && d == MODEL_DTYPE_BF16);
    CHECK(model_dtype_parse("auto", &d) == RT_OK && d == MODEL_DTYPE_AUTO);
    CHECK(model_dtype_parse("int8", &d) == RT_ERR_INVALID);
    model_free(m);
}

int main(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/retune_model16_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    const char *dirs[] = {
        "tests/fixtures/model/llama_gqa", "tests/fixtures/model/qwen2_bias",
        "tests/fixtures/model/mistral_window", "tests/fixtures/model/qwen3_norm",
        "tests/fixtures/model/llama_linear", "tests/fixtures/model/qwen2_yarn",
    };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        fprintf(stderr, "-- %s\n", dirs[i]);
        check_fixture(dirs[i], SFT_BF16);
        check_fixture(dirs[i], SFT_F16);
    }
    check_refusals(dirs[0]);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
    return TEST_SUMMARY();
}
