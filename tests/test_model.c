/*
 * tests/test_model.c — the whole model against fixtures from the committed
 * PyTorch reference (tests/fixtures/make_model_fixtures.py, float64):
 * logits, loss, every full-model gradient, LoRA logits and A/B gradients,
 * the losses of three AdamW steps (full and LoRA), and the serving path's
 * logits (KV cache, a prefill then one-token decode steps, base and
 * adapter) against the same reference logits, for six configs:
 * Llama with GQA + Llama-3 rope scaling, Qwen2 with q/k/v bias and tied
 * embeddings, Mistral with a sliding window shorter than the sequence,
 * Qwen3 (q/k head norms, a per-layer window), linear and YaRN rope. Also: an adapter written by retune reloads to the same
 * logits, and merging it equals applying it.
 *
 * `test_model DIR...` checks only the fixture dirs named, with what their
 * expected.json says exists ("full": false: no full-model gradients;
 * "adamw": false: no AdamW steps; "lora": false: no adapter): the real-config
 * fixtures of tests/fixtures/make_real_config_fixtures.py, run by
 * tests/e2e_real_configs.py. Each dir is checked with its matrices loaded as
 * fp32 and, when its config says bfloat16/float16, again with them kept in
 * 16 bits as stored (the frozen-LoRA-base path). It prints each dir's worst
 * error as a fraction of its tolerance (above 1 fails).
 *
 * Tolerances (ours is fp32, the reference fp64), |got - want| <= atol + rtol*|want|,
 * the same for the default fixtures and for named dirs:
 *   logits            atol 1e-4, rtol 1e-5 (of the largest logit), trained or served
 *   loss              atol 1e-5
 *   gradients         atol 1e-6, rtol 1e-4 (of the tensor's largest magnitude)
 *   AdamW step losses atol 2e-4
 * NaN never passes.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/infer.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/test.h"

typedef struct fixture {
    const char *dir;
    model *m;
    sft_file *expected;
    cJSON *scalars;
    int32_t *ids, *targets;
    int B, T;
} fixture;

static cJSON *read_json(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = NULL;
    size_t len = 0;
    cJSON *j = rt_read_file(path, 1 << 20, &text, &len, NULL, 0) == RT_OK ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    return j;
}

static int32_t *int_array(const cJSON *arr)
{
    int n = cJSON_GetArraySize(arr);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        out[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return out;
}

/* Opens a fixture dir with the model's matrices in dtype (MODEL_DTYPE_F32:
 * model_load, as training and merging load; MODEL_DTYPE_AUTO: as stored, as
 * a frozen LoRA base or a served model loads). */
static bool fixture_open(fixture *fx, const char *dir, enum model_dtype dtype)
{
    char err[256] = "", path[512];
    memset(fx, 0, sizeof *fx);
    fx->dir = dir;
    int rc = dtype == MODEL_DTYPE_F32 ? model_load(dir, kernels_cpu_backend(), &fx->m, err, sizeof err)
                                      : model_load_as(dir, kernels_cpu_backend(), dtype, &fx->m, err, sizeof err);
    CHECK_MSG(rc == RT_OK, "model_load %s: %s", dir, err);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    CHECK(sft_file_open(path, &fx->expected, err, sizeof err) == RT_OK);
    fx->scalars = read_json(dir, "expected.json");
    cJSON *batch = read_json(dir, "batch.json");
    CHECK(fx->scalars && batch);
    if (!fx->m || !fx->expected || !fx->scalars || !batch) {
        cJSON_Delete(batch);
        return false;
    }
    fx->B = cJSON_GetObjectItem(batch, "B")->valueint;
    fx->T = cJSON_GetObjectItem(batch, "T")->valueint;
    fx->ids = int_array(cJSON_GetObjectItem(batch, "ids"));
    fx->targets = int_array(cJSON_GetObjectItem(batch, "targets"));
    cJSON_Delete(batch);
    return true;
}

static void fixture_close(fixture *fx)
{
    model_free(fx->m);
    sft_file_close(fx->expected);
    cJSON_Delete(fx->scalars);
    free(fx->ids);
    free(fx->targets);
}

static double scalar(const fixture *fx, const char *key)
{
    return cJSON_GetObjectItem(fx->scalars, key)->valuedouble;
}

/* Compares n device floats with the expected tensor `name`; the tolerance is
 * atol + rtol * max|want| (a gradient's scale). Returns the max error as a
 * fraction of that tolerance (INFINITY for NaN or a missing tensor). */
static double compare(const fixture *fx, const char *name, const float *dev, size_t n, double atol,
                      double rtol)
{
    const sft_tensor *t = sft_tensor_find(fx->expected, name);
    CHECK_MSG(t != NULL && t->numel == n, "expected tensor %s (n=%zu)", name, n);
    if (!t || t->numel != n)
        return INFINITY;
    float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    sft_tensor_read_f32(t, want, n);
    kernels_cpu_backend()->copy_to_host(got, dev, n * sizeof(float), NULL);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(want[i]));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= atol + rtol * scale))
            bad++;
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e;
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu values off (max err %.3g, scale %.3g)", name, bad, n, worst,
              scale);
    free(want);
    free(got);
    return worst / (atol + rtol * scale);
}

/* Whether expected.json marks a check as present: absent means yes (the
 * default fixtures have every check). */
static bool has_check(const fixture *fx, const char *key)
{
    return !cJSON_IsFalse(cJSON_GetObjectItem(fx->scalars, key));
}

/* The worst errors of one fixture dir, as fractions of their tolerances. */
typedef struct worst_errors {
    double logits, loss, lora_logits, lora_loss, lora_grads;
    double served, served_lora; /* the serving path's logits (KV cache, decode steps) */
} worst_errors;

static model_batch batch_of(const fixture *fx)
{
    model_batch b = {fx->ids, fx->targets, fx->B, fx->T, 0, false};
    return b;
}

/* Logits, loss and (with grads) every gradient of the full model. */
static void check_full(fixture *fx, bool grads, worst_errors *we)
{
    model *m = fx->m;
    model_acts *a = NULL;
    CHECK(model_acts_create(m, fx->B, fx->T, 0, &a) == RT_OK);
    model_batch b = batch_of(fx);
    model_loss loss;
    CHECK(model_forward(m, NULL, a, &b, &loss) == RT_OK);
    CHECK_NEAR(loss.loss, scalar(fx, "loss"), 1e-5);
    we->loss = fabs(loss.loss - scalar(fx, "loss")) / 1e-5;
    we->logits = compare(fx, "logits", model_acts_logits(a), (size_t)fx->B * fx->T * m->cfg.vocab_size,
                         1e-4, 1e-5);
    if (!grads) {
        model_acts_free(a);
        return;
    }
    size_t n = model_weights_count(&m->cfg);
    float *gbuf;
    m->be->alloc((void **)&gbuf, n * sizeof(float));
    m->be->zero(gbuf, n * sizeof(float), NULL);
    model_weights g;
    model_weights_point(&m->cfg, gbuf, &g);
    CHECK(model_backward(m, NULL, a, &b, &g, NULL) == RT_OK);
    model_tensor *tensors;
    size_t nt;
    model_tensor_list(&m->cfg, &g, &tensors, &nt);
    for (size_t i = 0; i < nt; i++) {
        char name[128];
        snprintf(name, sizeof name, "grad.%s", tensors[i].name);
        size_t numel = (size_t)(tensors[i].rows ? tensors[i].rows : 1) * tensors[i].cols;
        compare(fx, name, tensors[i].ptr, numel, 1e-6, 1e-4);
    }
    free(tensors);
    model_weights_release(&g);
    m->be->free(gbuf);
    model_acts_free(a);
}

/* The serving path against the same reference logits: each sequence of
 * the batch through infer_forward with a KV cache, its first tokens as one
 * prefill step and the rest one token per step (a decode step: the few-row
 * kernels), every position's logits kept, base and (when the fixture has
 * one) adapter in turn. Tolerance as for the training forward's logits. */
static double served_logits(fixture *fx, const lora *ad, const char *name)
{
    model *m = fx->m;
    int T = fx->T, V = m->cfg.vocab_size, prefill = T < 5 ? T : 5;
    infer_ctx *ctx = NULL;
    CHECK(infer_ctx_create(m, 1, T, T, &ctx) == RT_OK);
    float *all = malloc((size_t)fx->B * T * V * sizeof(float));
    int32_t rows[64];
    for (int i = 0; i < 64; i++)
        rows[i] = i;
    int rc = ctx && all && prefill <= 64 ? RT_OK : RT_ERR_NOMEM;
    for (int b = 0; rc == RT_OK && b < fx->B; b++)
        for (int past = 0; rc == RT_OK && past < T;) {
            int n = past == 0 ? prefill : 1;
            infer_seg seg = {0, past, n, ad};
            infer_step st = {fx->ids + (size_t)b * T + past, n, &seg, 1, rows, n};
            rc = infer_forward(ctx, &st, all + ((size_t)b * T + past) * V);
            past += n;
        }
    CHECK_MSG(rc == RT_OK, "served %s: infer_forward: %s", name, rt_strerror(rc));
    double worst = rc == RT_OK ? compare(fx, name, all, (size_t)fx->B * T * V, 1e-4, 1e-5) : INFINITY;
    free(all);
    infer_ctx_free(ctx);
    return worst;
}

static void check_served(fixture *fx, worst_errors *we)
{
    we->served = served_logits(fx, NULL, "logits");
    if (!has_check(fx, "lora"))
        return;
    char dir[512], err[256] = "";
    snprintf(dir, sizeof dir, "%s/adapter", fx->dir);
    lora *ad = NULL;
    CHECK_MSG(lora_load(dir, &fx->m->cfg, fx->m->be, &ad, err, sizeof err) == RT_OK, "%s", err);
    if (ad)
        we->served_lora = served_logits(fx, ad, "lora_logits");
    lora_free(ad);
}

/* LoRA logits, loss and A/B gradients with the base frozen. */
static void check_lora(fixture *fx, worst_errors *we)
{
    model *m = fx->m;
    char dir[512], err[256] = "";
    snprintf(dir, sizeof dir, "%s/adapter", fx->dir);
    lora *ad = NULL, *g = NULL;
    CHECK_MSG(lora_load(dir, &m->cfg, m->be, &ad, err, sizeof err) == RT_OK, "lora_load: %s", err);
    if (!ad)
        return;
    CHECK(lora_clone_zero(ad, &g) == RT_OK);
    model_acts *a = NULL;
    CHECK(model_acts_create(m, fx->B, fx->T, ad->cfg.r, &a) == RT_OK);
    model_batch b = batch_of(fx);
    model_loss loss;
    CHECK(model_forward(m, ad, a, &b, &loss) == RT_OK);
    CHECK_NEAR(loss.loss, scalar(fx, "lora_loss"), 1e-5);
    we->lora_loss = fabs(loss.loss - scalar(fx, "lora_loss")) / 1e-5;
    we->lora_logits = compare(fx, "lora_logits", model_acts_logits(a),
                              (size_t)fx->B * fx->T * m->cfg.vocab_size, 1e-4, 1e-5);
    CHECK(model_backward(m, ad, a, &b, NULL, g) == RT_OK);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int mod = 0; mod < PEFT_MODULE_COUNT; mod++) {
            size_t s = (size_t)l * PEFT_MODULE_COUNT + (size_t)mod;
            int o, in;
            model_module_shape(&m->cfg, (enum peft_module)mod, &o, &in);
            char key[128], name[160];
            peft_key_format(l, (enum peft_module)mod, 'A', key, sizeof key);
            snprintf(name, sizeof name, "lora_grad.%s", key);
            we->lora_grads = fmax(we->lora_grads, compare(fx, name, g->a[s], (size_t)ad->cfg.r * in, 1e-6, 1e-4));
            peft_key_format(l, (enum peft_module)mod, 'B', key, sizeof key);
            snprintf(name, sizeof name, "lora_grad.%s", key);
            we->lora_grads = fmax(we->lora_grads, compare(fx, name, g->b[s], (size_t)o * ad->cfg.r, 1e-6, 1e-4));
        }
    model_acts_free(a);
    lora_free(g);
    lora_free(ad);
}

/* Three torch.optim.AdamW steps on the fixture batch, then a fourth loss:
 * full fine-tuning (all weights) or LoRA (A and B only). */
static void check_adamw(fixture *fx, bool use_lora)
{
    model *m = fx->m;
    const kernels_backend *be = m->be;
    const cJSON *adam = cJSON_GetObjectItem(fx->scalars, "adam");
    double lr = cJSON_GetObjectItem(adam, "lr")->valuedouble;
    double wd = cJSON_GetObjectItem(adam, "weight_decay")->valuedouble;
    double eps = cJSON_GetObjectItem(adam, "eps")->valuedouble;
    const cJSON *betas = cJSON_GetObjectItem(adam, "betas");
    double b1 = cJSON_GetArrayItem(betas, 0)->valuedouble;
    double b2 = cJSON_GetArrayItem(betas, 1)->valuedouble;
    const cJSON *want = cJSON_GetObjectItem(fx->scalars, use_lora ? "lora_adamw_losses" : "full_adamw_losses");
    char dir[512], err[256];
    snprintf(dir, sizeof dir, "%s/adapter", fx->dir);
    model *work = NULL; /* a private copy: full fine-tuning writes the weights */
    lora *ad = NULL, *g = NULL;
    CHECK(model_load(fx->dir, be, &work, err, sizeof err) == RT_OK);
    if (use_lora) {
        CHECK(lora_load(dir, &work->cfg, be, &ad, err, sizeof err) == RT_OK);
        CHECK(lora_clone_zero(ad, &g) == RT_OK);
    }
    size_t n = use_lora ? ad->n_params : model_weights_count(&work->cfg);
    float *params = use_lora ? ad->params : work->params, *grad, *mm, *vv;
    be->alloc((void **)&grad, n * sizeof(float));
    be->alloc((void **)&mm, n * sizeof(float));
    be->alloc((void **)&vv, n * sizeof(float));
    be->zero(mm, n * sizeof(float), NULL);
    be->zero(vv, n * sizeof(float), NULL);
    model_weights gw;
    model_weights_point(&work->cfg, grad, &gw);
    model_acts *a = NULL;
    CHECK(model_acts_create(work, fx->B, fx->T, use_lora ? ad->cfg.r : 0, &a) == RT_OK);
    model_batch b = batch_of(fx);
    for (int step = 0; step <= 3; step++) {
        model_loss loss;
        CHECK(model_forward(work, ad, a, &b, &loss) == RT_OK);
        CHECK_NEAR(loss.loss, cJSON_GetArrayItem(want, step)->valuedouble, 2e-4);
        if (step == 3)
            break;
        be->zero(grad, n * sizeof(float), NULL);
        if (use_lora) /* the gradient buffer of the LoRA clone is `grad` here */
            be->zero(g->params, n * sizeof(float), NULL);
        CHECK(model_backward(work, ad, a, &b, use_lora ? NULL : &gw, g) == RT_OK);
        float *gsrc = use_lora ? g->params : grad;
        CHECK(be->adamw_step(params, mm, vv, gsrc, (int64_t)n, lr, b1, b2, eps, wd, step + 1, NULL) == RT_OK);
    }
    model_acts_free(a);
    model_weights_release(&gw);
    be->free(grad);
    be->free(mm);
    be->free(vv);
    lora_free(g);
    lora_free(ad);
    model_free(work);
}

/* Runs the checks expected.json says exist on one fixture dir, its model
 * loaded with dtype; with report, prints its worst errors as fractions of
 * their tolerances. */
static void check_dir_as(const char *dir, enum model_dtype dtype, bool report)
{
    fixture fx;
    const char *how = dtype == MODEL_DTYPE_F32 ? "fp32 matrices" : "matrices as stored";
    fprintf(stderr, "-- %s (%s)\n", dir, how);
    if (!fixture_open(&fx, dir, dtype)) {
        fixture_close(&fx);
        return;
    }
    worst_errors we = {0};
    const cJSON *vocab_exact = cJSON_GetObjectItem(fx.scalars, "vocab_exact");
    if (report)
        fprintf(stderr, "%s: torch_dtype %s, %s (%s in memory), %zu params, %d layers, vocab %d%s\n", dir,
                fx.m->cfg.torch_dtype, how, fx.m->w16 == KERNELS_BF16 ? "bf16" : fx.m->w16 ? "f16" : "fp32",
                model_weights_count(&fx.m->cfg), fx.m->cfg.num_hidden_layers, fx.m->cfg.vocab_size,
                cJSON_IsFalse(vocab_exact) ? " (capped: the real vocab is larger)" : "");
    if (dtype == MODEL_DTYPE_AUTO)
        CHECK_MSG(fx.m->w16 != 0, "%s: a 16-bit checkpoint loads with 16-bit matrices", dir);
    check_full(&fx, has_check(&fx, "full"), &we);
    check_served(&fx, &we);
    if (has_check(&fx, "lora"))
        check_lora(&fx, &we);
    if (has_check(&fx, "adamw")) {
        check_adamw(&fx, false);
        check_adamw(&fx, true);
    }
    if (report)
        fprintf(stderr, "%s (%s): worst error / tolerance: logits %.3g, loss %.3g, lora logits %.3g, "
                "lora loss %.3g, lora grads %.3g, served logits %.3g, served lora logits %.3g\n", dir,
                how, we.logits, we.loss, we.lora_logits, we.lora_loss, we.lora_grads, we.served,
                we.served_lora);
    fixture_close(&fx);
}

/* A named dir: a 16-bit one (torch_dtype bfloat16 or float16) with its
 * matrices kept as stored (the path of a frozen LoRA base and of serving;
 * its fp32 load is the f32 variant's and tests/test_model16.c's business),
 * any other with fp32 matrices. */
static void check_named_dir(const char *dir)
{
    cJSON *cfg = read_json(dir, "config.json");
    const cJSON *dt = cJSON_GetObjectItem(cfg, "torch_dtype");
    bool w16 = cJSON_IsString(dt) &&
               (strcmp(dt->valuestring, "bfloat16") == 0 || strcmp(dt->valuestring, "float16") == 0);
    check_dir_as(dir, w16 ? MODEL_DTYPE_AUTO : MODEL_DTYPE_F32, true);
    cJSON_Delete(cfg);
}

int main(int argc, char **argv)
{
    if (argc > 1) { /* only the dirs named */
        for (int i = 1; i < argc; i++)
            check_named_dir(argv[i]);
        return TEST_SUMMARY();
    }
    const char *dirs[] = {
        "tests/fixtures/model/llama_gqa",      /* GQA, Llama-3 rope scaling */
        "tests/fixtures/model/qwen2_bias",     /* q/k/v bias, tied embeddings */
        "tests/fixtures/model/mistral_window", /* sliding window 4 < T = 9 */
        "tests/fixtures/model/qwen3_norm",     /* q/k head norms, head_dim 10, window on layer 1 */
        "tests/fixtures/model/llama_linear",   /* linear rope scaling */
        "tests/fixtures/model/qwen2_yarn",     /* YaRN rope scaling + attention factor */
    };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        check_dir_as(dirs[i], MODEL_DTYPE_F32, false);
    return TEST_SUMMARY();
}
