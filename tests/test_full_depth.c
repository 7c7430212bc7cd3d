/*
 * tests/test_full_depth.c — released model shapes at their full depth and
 * width (tests/fixtures/real_configs/, random weights): for every config up
 * to 0.5B parameters (SmolLM2-135M, 30 layers; SmolLM2-360M, 32 layers;
 * Qwen2.5-0.5B, 24 layers, vocabulary 151936), one LoRA step (r=16,
 * all-linear) and one full fine-tuning step run: forward, backward, AdamW,
 * forward again on the same batch. Each loss must be finite, the step must
 * lower it, every gradient must be finite and the LoRA B gradients nonzero.
 * Larger configs are parsed and their parameters counted, not run. Under
 * AddressSanitizer only SmolLM2-135M runs (time and memory). Activation
 * checkpointing is on, as a 24 GiB machine would need it for larger ones.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/hf_config.h"
#include "engine/model.h"
#include "tests/test.h"

/* Parameters: run configs up to ~0.5B; under AddressSanitizer (make
 * san-test, several times slower and larger) only the smallest. */
#ifdef __SANITIZE_ADDRESS__
#define RUN_LIMIT 1.5e8
#else
#define RUN_LIMIT 5.2e8
#endif

static bool read_config(const char *name, model_config *c)
{
    char path[256], err[256] = "";
    snprintf(path, sizeof path, "tests/fixtures/real_configs/%s.json", name);
    char *text = NULL;
    size_t len = 0;
    int rc = rt_read_file(path, 1 << 20, &text, &len, err, sizeof err);
    if (rc == RT_OK)
        rc = hf_config_parse(text, len, path, c, err, sizeof err);
    free(text);
    CHECK_MSG(rc == RT_OK, "%s: %s", name, err);
    return rc == RT_OK;
}

/* Host copy of n device floats: all finite? any nonzero? */
static void scan(const kernels_backend *be, const float *d, size_t n, bool *finite, bool *nonzero)
{
    float *h = malloc(n * sizeof *h);
    be->copy_to_host(h, d, n * sizeof *h, NULL);
    *finite = true;
    *nonzero = false;
    for (size_t i = 0; i < n; i++) {
        *finite = *finite && isfinite(h[i]);
        *nonzero = *nonzero || h[i] != 0.0f;
    }
    free(h);
}

/* One optimizer step on params (n floats, gradient grad) between two
 * forwards of the same batch; returns the losses before and after. */
static void step(model *m, lora *ad, lora *lg, model_weights *gw, float *params, float *grad,
                 size_t n, const model_batch *b, const char *what)
{
    const kernels_backend *be = m->be;
    model_acts *a = NULL;
    float *mm = NULL, *vv = NULL;
    CHECK(model_acts_create_ckpt(m, b->B, b->T, ad ? ad->cfg.r : 0, true, &a) == RT_OK);
    CHECK(be->alloc((void **)&mm, n * sizeof(float)) == RT_OK && be->alloc((void **)&vv, n * sizeof(float)) == RT_OK);
    if (!a || !mm || !vv)
        goto out;
    be->zero(mm, n * sizeof(float), NULL);
    be->zero(vv, n * sizeof(float), NULL);
    be->zero(grad, n * sizeof(float), NULL);
    model_loss before, after;
    CHECK(model_forward(m, ad, a, b, &before) == RT_OK);
    CHECK(model_backward(m, ad, a, b, gw, lg) == RT_OK);
    bool finite, nonzero;
    scan(be, grad, n, &finite, &nonzero);
    CHECK_MSG(finite && nonzero, "%s: gradients finite %d, nonzero %d", what, finite, nonzero);
    CHECK(be->adamw_step(params, mm, vv, grad, (int64_t)n, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, NULL) == RT_OK);
    CHECK(model_forward(m, ad, a, b, &after) == RT_OK);
    fprintf(stderr, "   %s: loss %.4f -> %.4f\n", what, before.loss, after.loss);
    CHECK_MSG(isfinite(before.loss) && isfinite(after.loss) && after.loss < before.loss,
              "%s: loss %.4f -> %.4f", what, before.loss, after.loss);
out:
    model_acts_free(a);
    be->free(mm);
    be->free(vv);
}

static void run_config(const char *name)
{
    model_config c;
    if (!read_config(name, &c))
        return;
    double params = (double)model_weights_count(&c);
    fprintf(stderr, "-- %s: %d layers, %.1fM parameters\n", name, c.num_hidden_layers, params / 1e6);
    CHECK(params > 1e8);
    if (params > RUN_LIMIT)
        return;
    const kernels_backend *be = kernels_cpu_backend();
    model *m = NULL;
    CHECK(model_init_random(&c, be, 42, &m) == RT_OK);
    if (!m)
        return;
    enum { B = 1, T = 16 };
    int32_t ids[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)((i * 7919 + 11) % c.vocab_size);
        tg[i] = (int32_t)((i * 104729 + 3) % c.vocab_size);
    }
    model_batch b = {ids, tg, B, T, 1, true};
    peft_config pc = {.r = 16, .lora_alpha = 32, .target_modules = 0x7Fu};
    lora *ad = NULL, *lg = NULL;
    CHECK(lora_create(&c, &pc, be, 7, &ad) == RT_OK && lora_clone_zero(ad, &lg) == RT_OK);
    if (ad && lg) {
        /* B starts at zero: give it values so the step has something to move */
        float *h = calloc(ad->n_params, sizeof *h);
        be->copy_to_host(h, ad->params, ad->n_params * sizeof *h, NULL);
        for (size_t i = 0; i < ad->n_params; i++)
            h[i] = h[i] != 0.0f ? h[i] : 1e-3f * (float)((int)(i % 7) - 3);
        be->copy_to_device(ad->params, h, ad->n_params * sizeof *h, NULL);
        free(h);
        step(m, ad, lg, NULL, ad->params, lg->params, ad->n_params, &b, "LoRA step");
    }
    lora_free(ad);
    lora_free(lg);
    size_t n = model_weights_count(&c);
    float *grad = NULL;
    model_weights gw = {0};
    CHECK(be->alloc((void **)&grad, n * sizeof(float)) == RT_OK);
    if (grad && model_weights_point(&c, grad, &gw) == RT_OK)
        step(m, NULL, NULL, &gw, m->params, grad, n, &b, "full step");
    model_weights_release(&gw);
    be->free(grad);
    model_free(m);
}

int main(void)
{
    const char *names[] = {
        "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen3-0.6b", "smollm2-1.7b",
        "qwen2.5-1.5b", "qwen2.5-7b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b",
        "tinyllama-1.1b", "mistral-7b-v0.1", "mistral-7b-v0.3",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        run_config(names[i]);
    return TEST_SUMMARY();
}
