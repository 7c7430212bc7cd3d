/*
 * engine/pretrain.c — engine_pretrain: the built-in base model. Generates
 * the synthetic corpus, trains a byte-level BPE tokenizer on it, writes a
 * randomly initialised Llama-architecture model directory and trains it
 * (full training, the same trainer as fine-tuning). Everything is built in
 * <out>.tmp and renamed to <out> at the end, so a half-made model is never
 * mistaken for a finished one.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/corpus.h"
#include "engine/engine.h"
#include "engine/hf_config.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "engine/trainer.h"

typedef struct preset {
    const char *name;
    int hidden, layers, heads, kv_heads, ffn, vocab, context, steps, batch;
    size_t corpus_bytes;
    double lr;
} preset;

static const preset presets[] = {
    {"tiny", 192, 4, 6, 2, 512, 1024, 256, 1500, 16, 800 << 10, 3e-3},
    {"micro", 64, 2, 4, 2, 128, 512, 128, 60, 8, 60 << 10, 1e-2},
    {"small", 384, 6, 6, 2, 1024, 2048, 512, 4000, 16, 3 << 20, 2e-3},
};

/* ChatML, as Qwen2 and SmolLM write it. */
static const char chatml_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
    "}}{% endif %}";

static const preset *find_preset(const char *name)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(presets[i].name, name ? name : "tiny"))
            return &presets[i];
    return NULL;
}

/* The tokenizer and its config, learned from the corpus text. */
static int make_tokenizer(const preset *p, const char *dir, const char *text, size_t len,
                          int *vocab, char *err, size_t errsize)
{
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int rc = tokenizer_train_bytelevel(text, len, (size_t)p->vocab, specials, 3, path, err, errsize);
    tokenizer *tok = NULL;
    if (rc == RT_OK)
        rc = tokenizer_load(path, &tok, err, errsize);
    if (rc != RT_OK)
        return rc;
    *vocab = (int)tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "chat_template", chatml_template);
    cJSON_AddNullToObject(j, "bos_token");
    cJSON_AddStringToObject(j, "eos_token", "<|im_end|>");
    cJSON_AddStringToObject(j, "pad_token", "<|endoftext|>");
    cJSON_AddNumberToObject(j, "model_max_length", p->context);
    char *text_cfg = cJSON_Print(j);
    cJSON_Delete(j);
    rc = text_cfg ? rt_write_file_atomic(path, text_cfg, strlen(text_cfg), err, errsize) : RT_ERR_NOMEM;
    free(text_cfg);
    return rc;
}

/* A random model of the preset's shape, saved as an HF directory. */
static int make_model(const preset *p, const char *dir, int vocab, uint64_t seed, const kernels_backend *be,
                      char *err, size_t errsize)
{
    model_config c = {0};
    c.arch = MODEL_ARCH_LLAMA;
    c.vocab_size = vocab;
    c.hidden_size = p->hidden;
    c.intermediate_size = p->ffn;
    c.num_hidden_layers = p->layers;
    c.num_attention_heads = p->heads;
    c.num_key_value_heads = p->kv_heads;
    c.head_dim = p->hidden / p->heads;
    c.max_position_embeddings = p->context;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = true;
    c.bos_token_id = -1;
    c.eos_token_id = -1;
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    model *m = NULL;
    int rc = model_init_random(&c, be, seed, &m);
    if (rc == RT_OK)
        rc = model_save(m, dir, err, errsize);
    model_free(m);
    return rc;
}

int engine_pretrain(const engine_pretrain_config *cfg, const engine_callbacks *cb,
                    engine_train_result *result, char *err, size_t errsize)
{
    const preset *p = find_preset(cfg->preset);
    if (!p)
        return rt_fail(err, errsize, RT_ERR_INVALID, "preset must be tiny, micro or small");
    const kernels_backend *be = NULL;
    int brc = kernels_backend_get(cfg->device ? cfg->device : engine_default_device(), &be);
    if (brc != RT_OK)
        return rt_fail(err, errsize, RT_ERR_INVALID, "device %s is not available (%s)",
                       cfg->device ? cfg->device : "default", rt_strerror(brc));
    char work[4096], corpus[4200], trained[4200], retention[4300];
    snprintf(work, sizeof work, "%s.tmp", cfg->out_dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.jsonl", work);
    snprintf(trained, sizeof trained, "%s/trained", work);
    if (mkdir(work, 0755) != 0 && errno != EEXIST)
        return rt_fail(err, errsize, RT_ERR_IO, "cannot create %s: %s", work, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    int vocab = 0;
    int rc = corpus_write_pretrain(cfg->seed, p->corpus_bytes, corpus, &text, &len);
    if (rc == RT_OK)
        rc = make_tokenizer(p, work, text, len, &vocab, err, errsize);
    free(text);
    if (rc == RT_OK)
        rc = make_model(p, work, vocab, cfg->seed, be, err, errsize);
    engine_train_config tc;
    engine_train_defaults(&tc);
    tc.model_dir = work;
    tc.train_path = corpus;
    tc.out_dir = trained;
    tc.device = cfg->device;
    tc.method = ENGINE_FULL;
    tc.epochs = 1000;
    tc.max_steps = cfg->steps > 0 ? cfg->steps : p->steps;
    tc.batch_size = p->batch;
    tc.max_seq_len = p->context;
    tc.learning_rate = p->lr;
    tc.warmup_ratio = 0.05;
    tc.weight_decay = 0.1;
    tc.seed = cfg->seed;
    engine_error why = {0};
    if (rc == RT_OK && (rc = engine_train(&tc, cb, result, &why)) != RT_OK)
        rt_fail(err, errsize, rc, "%s", why.message);
    snprintf(retention, sizeof retention, "%s/retention.jsonl", trained);
    if (rc == RT_OK)
        rc = corpus_write_retention(cfg->seed, 96, retention);
    if (rc == RT_OK && result->stopped)
        rc = rt_fail(err, errsize, RT_ERR_CANCELLED, "pre-training was stopped");
    if (rc == RT_OK && rename(trained, cfg->out_dir) != 0)
        rc = rt_fail(err, errsize, RT_ERR_IO, "cannot move the model to %s: %s", cfg->out_dir, strerror(errno));
    rt_remove_tree(work); /* the corpus, the untrained model */
    return rc;
}
