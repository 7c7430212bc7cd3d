/*
 * engine/generate.c — engine_generate: offline text generation for the
 * command line. Each new token re-runs the forward pass over the whole
 * sequence (no KV cache): simple and exact, fine for short outputs; the
 * serving path keeps a KV cache per sequence.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/sample.h"
#include "engine/tokenizer.h"

typedef struct generator {
    model *m;
    lora *ad;
    tokenizer *tok;
    chat_template *tmpl;
    int32_t *ids;
    size_t n_ids, cap;
    int32_t stop[2];
} generator;

static void generator_close(generator *g)
{
    lora_free(g->ad);
    model_free(g->m);
    chat_template_free(g->tmpl);
    tokenizer_free(g->tok);
    free(g->ids);
}

/* Loads model, adapter, tokenizer and template; finds the stop tokens. */
static int generator_open(generator *g, const engine_generate_config *c, char *err, size_t errsize)
{
    const kernels_backend *be = NULL;
    char path[4096];
    int rc = kernels_backend_get(c->device ? c->device : engine_default_device(), &be);
    if (rc != RT_OK)
        return rt_fail(err, errsize, rc, "device %s is not available (%s)", c->device ? c->device : "default", rt_strerror(rc));
    rc = model_load(c->model_dir, be, &g->m, err, errsize);
    if (rc == RT_OK && c->adapter_dir)
        rc = lora_load(c->adapter_dir, &g->m->cfg, be, &g->ad, err, errsize);
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model_dir);
    if (rc == RT_OK)
        rc = tokenizer_load(path, &g->tok, err, errsize);
    if (rc == RT_OK) /* padding rows past the tokenizer decode to nothing */
        tokenizer_set_model_vocab(g->tok, (size_t)g->m->cfg.vocab_size);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", c->model_dir);
    if (rc == RT_OK)
        rc = chat_template_load(path, &g->tmpl, err, errsize);
    if (rc == RT_ERR_NOT_FOUND)
        rc = chat_template_from_source(NULL, NULL, NULL, &g->tmpl);
    if (rc != RT_OK)
        return rc;
    const char *eot = chat_template_end_of_turn(g->tmpl), *eos = chat_template_eos(g->tmpl);
    g->stop[0] = eot ? tokenizer_token_id(g->tok, eot) : -1;
    g->stop[1] = eos ? tokenizer_token_id(g->tok, eos) : g->m->cfg.eos_token_id;
    return RT_OK;
}

/* The prompt's token ids: raw text, or one user turn + assistant header. */
static int encode_prompt(generator *g, const engine_generate_config *c)
{
    uint8_t *mask = NULL;
    int rc;
    if (c->raw) {
        rc = tokenizer_encode(g->tok, c->prompt, strlen(c->prompt), true, &g->ids, &g->n_ids);
    } else {
        chat_message msg = {"user", c->prompt, 0, NULL};
        rc = chat_template_render(g->tmpl, g->tok, &msg, 1, true, NULL, &g->ids, &mask, &g->n_ids,
                                  NULL, 0);
    }
    free(mask);
    if (rc == RT_OK) {
        g->cap = g->n_ids + (size_t)c->max_tokens;
        int32_t *grown = realloc(g->ids, g->cap * sizeof *grown);
        rc = grown ? RT_OK : RT_ERR_NOMEM;
        if (grown)
            g->ids = grown;
    }
    return rc;
}

/* Generates up to max_tokens new ids after the prompt, never one of the
 * model's padding ids past the tokenizer (see sample_vocab_size). */
static int generate_ids(generator *g, const engine_generate_config *c, int *n_new)
{
    const model_config *mc = &g->m->cfg;
    int V = mc->vocab_size, n_sample = sample_vocab_size(V, tokenizer_vocab_size(g->tok));
    model_acts *a = NULL;
    float *row = malloc(3 * (size_t)V * sizeof(float));
    int rc = row ? model_acts_create(g->m, 1, (int)g->cap, g->ad ? g->ad->cfg.r : 0, &a) : RT_ERR_NOMEM;
    sample_params sp = {c->temperature, c->top_k, c->top_p > 0 ? c->top_p : 1.0};
    rng r = {c->seed};
    int made = 0;
    while (rc == RT_OK && made < c->max_tokens) {
        model_batch b = {g->ids, NULL, 1, (int)g->n_ids, 0, false};
        rc = model_forward(g->m, g->ad, a, &b, NULL);
        if (rc == RT_OK)
            rc = g->m->be->copy_to_host(row, model_acts_logits(a) + (g->n_ids - 1) * (size_t)V,
                                        (size_t)V * sizeof(float), NULL);
        if (rc != RT_OK)
            break;
        int32_t next = sample_token(row, n_sample, &sp, &r, row + V);
        if (next == g->stop[0] || next == g->stop[1])
            break;
        g->ids[g->n_ids++] = next;
        made++;
    }
    model_acts_free(a);
    free(row);
    *n_new = made;
    return rc;
}

int engine_generate(const engine_generate_config *c, char **text, int *n_tokens, char *err,
                    size_t errsize)
{
    generator g = {0};
    int n_new = 0;
    size_t prompt_len = 0;
    int rc = generator_open(&g, c, err, errsize);
    if (rc == RT_OK)
        rc = encode_prompt(&g, c);
    prompt_len = g.n_ids;
    if (rc == RT_OK && g.cap > (size_t)g.m->cfg.max_position_embeddings)
        rc = rt_fail(err, errsize, RT_ERR_INVALID,
                     "prompt plus max tokens (%zu) exceed the model's context of %d tokens", g.cap,
                     g.m->cfg.max_position_embeddings);
    if (rc == RT_OK)
        rc = generate_ids(&g, c, &n_new);
    char *out = NULL;
    size_t len = 0;
    if (rc == RT_OK)
        rc = tokenizer_decode(g.tok, g.ids + prompt_len, (size_t)n_new, true, &out, &len);
    generator_close(&g);
    if (rc != RT_OK)
        return rc;
    *text = out;
    *n_tokens = n_new;
    return RT_OK;
}
