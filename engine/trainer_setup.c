/*
 * engine/trainer_setup.c — a training run's set-up and tear-down, its
 * checkpoints (write and resume) and its result files.
 *
 * A checkpoint directory ckpt-step-N holds servable weights (a PEFT adapter
 * for LoRA, an HF model directory for full fine-tuning), optimizer.safetensors
 * (AdamW m and v) and trainer_state.json (step, epoch, position in the epoch,
 * tokens, seconds). It is written as ckpt-step-N.tmp and renamed, so a
 * checkpoint either exists whole or not at all. Every count in it is the
 * whole group's (data parallelism), so a checkpoint written by N processes
 * resumes with any other number; rank 0 alone writes it, every rank reads it.
 */
#include "engine/trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/optim.h"
#include "engine/safetensors.h"

/* ---- configuration checks ---------------------------------------------------- */

static int bad(char *err, size_t errsize, const char *field, const char *what)
{
    return rt_fail(err, errsize, RT_ERR_INVALID, "%s %s", field, what);
}

static int check_config(const engine_train_config *c, char *err, size_t errsize)
{
    if (!c->model_dir) return bad(err, errsize, "model", "is required");
    if (!c->train_path) return bad(err, errsize, "train", "is required");
    if (!c->out_dir) return bad(err, errsize, "out", "is required");
    if (c->epochs < 1 || c->epochs > 1000) return bad(err, errsize, "epochs", "must be 1..1000");
    if (c->batch_size < 1 || c->batch_size > 4096) return bad(err, errsize, "batch_size", "must be 1..4096");
    if (c->grad_accum < 1 || c->grad_accum > 4096) return bad(err, errsize, "grad_accum", "must be 1..4096");
    if (c->max_seq_len < 2 || c->max_seq_len > 131072) return bad(err, errsize, "max_seq_len", "must be 2..131072");
    if (!(c->learning_rate > 0 && c->learning_rate < 10)) return bad(err, errsize, "learning_rate", "must be in (0, 10)");
    if (!(c->warmup_ratio >= 0 && c->warmup_ratio <= 1)) return bad(err, errsize, "warmup_ratio", "must be in [0, 1]");
    if (!(c->weight_decay >= 0 && c->weight_decay < 10)) return bad(err, errsize, "weight_decay", "must be in [0, 10)");
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return bad(err, errsize, "betas", "must be in [0, 1)");
    if (!(c->adam_eps > 0)) return bad(err, errsize, "adam_eps", "must be > 0");
    if (!(c->max_grad_norm >= 0)) return bad(err, errsize, "max_grad_norm", "must be >= 0");
    if (c->max_steps < 0) return bad(err, errsize, "max_steps", "must be >= 0");
    if (c->method != ENGINE_LORA)
        return RT_OK;
    if (c->lora_r < 1 || c->lora_r > 1024) return bad(err, errsize, "lora_r", "must be 1..1024");
    if (!(c->lora_alpha > 0)) return bad(err, errsize, "lora_alpha", "must be > 0");
    if (!(c->lora_dropout >= 0 && c->lora_dropout < 1)) return bad(err, errsize, "lora_dropout", "must be in [0, 1)");
    if ((c->target_modules & ~(unsigned)PEFT_ALL_MODULES) != 0)
        return bad(err, errsize, "target_modules", "names an unknown module");
    return RT_OK;
}

/* ---- set-up ------------------------------------------------------------------------ */

/* Loads the tokenizer, chat template and the data sets; *input names the
 * set at fault when one cannot be read ("train_path", ...), else NULL. */
static int load_data(trainer *t, char *err, size_t errsize, const char **input)
{
    const engine_train_config *c = &t->cfg;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model_dir);
    int rc = tokenizer_load(path, &t->tok, err, errsize);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", c->model_dir);
    if (rc == RT_OK)
        rc = chat_template_load(path, &t->tmpl, err, errsize);
    if (rc == RT_ERR_NOT_FOUND) /* no tokenizer_config.json: ChatML, with a warning */
        rc = chat_template_from_source(NULL, NULL, NULL, &t->tmpl);
    if (rc != RT_OK)
        return rc;
    *input = "train_path";
    rc = train_set_load(c->train_path, t->tok, t->tmpl, c->max_seq_len, &t->train, err, errsize);
    if (rc == RT_OK && t->train->n == 0)
        rc = rt_fail(err, errsize, RT_ERR_INVALID, "%s has no examples", c->train_path);
    if (rc == RT_OK && c->valid_path) {
        *input = "valid_path";
        rc = train_set_load(c->valid_path, t->tok, t->tmpl, c->max_seq_len, &t->valid, err, errsize);
    }
    if (rc == RT_OK && c->retention_path) {
        *input = "retention_path";
        rc = train_set_load(c->retention_path, t->tok, t->tmpl, c->max_seq_len, &t->retention, err,
                            errsize);
    }
    if (rc == RT_OK)
        *input = NULL;
    return rc;
}

/* Allocates a zeroed device buffer of n floats. */
static int alloc_zero(const kernels_backend *be, float **out, int64_t n)
{
    int rc = be->alloc((void **)out, (size_t)n * sizeof(float));
    return rc == RT_OK ? be->zero(*out, (size_t)n * sizeof(float), NULL) : rc;
}

/* The trainable buffer, its gradient and the AdamW moments. */
static int setup_trainable(trainer *t)
{
    const engine_train_config *c = &t->cfg;
    const model_config *mc = &t->model->cfg;
    int64_t base = (int64_t)model_weights_count(mc);
    int rc;
    if (t->method == ENGINE_LORA) {
        peft_config pc = {.r = c->lora_r, .lora_alpha = (float)c->lora_alpha,
                          .lora_dropout = (float)c->lora_dropout, .use_rslora = c->use_rslora,
                          .target_modules = c->target_modules};
        snprintf(pc.base_model_name_or_path, sizeof pc.base_model_name_or_path, "%s", c->model_dir);
        rc = lora_create(mc, &pc, t->be, c->seed, &t->ad);
        if (rc == RT_OK)
            rc = lora_clone_zero(t->ad, &t->ad_grad);
        if (rc != RT_OK)
            return rc;
        t->params = t->ad->params;
        t->grad = t->ad_grad->params;
        t->n_trainable = (int64_t)t->ad->n_params;
        t->n_total = base + t->n_trainable;
    } else {
        t->n_trainable = t->n_total = base;
        t->params = t->model->params;
        rc = alloc_zero(t->be, &t->full_grad, base);
        if (rc == RT_OK)
            rc = model_weights_point(mc, t->full_grad, &t->gw);
        if (rc != RT_OK)
            return rc;
        t->grad = t->full_grad;
    }
    rc = alloc_zero(t->be, &t->adam_m, t->n_trainable);
    if (rc == RT_OK)
        rc = alloc_zero(t->be, &t->adam_v, t->n_trainable);
    if (rc == RT_OK)
        rc = t->be->alloc((void **)&t->norm_scratch, sizeof(float));
    return rc;
}

/* The longest example of the sets, which sizes the activations. */
static int longest(const train_set *const *sets, size_t n_sets)
{
    int n = 2;
    for (size_t s = 0; s < n_sets; s++)
        for (size_t i = 0; sets[s] && i < sets[s]->n; i++)
            n = sets[s]->ex[i].len > n ? sets[s]->ex[i].len : n;
    return n;
}

/* The size of the largest set (index buffers). */
static size_t largest(const train_set *const *sets, size_t n_sets)
{
    size_t n = 0;
    for (size_t s = 0; s < n_sets; s++)
        if (sets[s] && sets[s]->n > n)
            n = sets[s]->n;
    return n;
}

/* Floats of a LoRA adapter of rank r on the targeted modules of c. */
static double lora_floats(const model_config *c, unsigned targets, int r)
{
    double n = 0;
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int o, i;
        model_module_shape(c, (enum peft_module)m, &o, &i);
        if (targets & (1u << m))
            n += (double)r * (o + i);
    }
    return n * c->num_hidden_layers;
}

/* Estimates the run's peak before anything but the weights is allocated:
 * weights, trainable tensors with their gradient and AdamW moments, and
 * the activations for (batch, T). Turns activation checkpointing on when
 * only it makes the run fit (unless told off), and refuses with the
 * numbers and what would help when nothing fits. */
static int plan_memory(trainer *t, int T, char *err, size_t errsize)
{
    const engine_train_config *c = &t->cfg;
    const model_config *mc = &t->model->cfg;
    engine_memory_plan *p = &t->memory;
    int r = t->method == ENGINE_LORA ? c->lora_r : 0;
    double trainable = t->method == ENGINE_LORA ? lora_floats(mc, c->target_modules, r)
                                                : (double)model_weights_count(mc);
    p->weights = (double)t->model->weight_bytes;
    /* LoRA: A/B, grad, m, v; full: the weights are the params, + grad, m, v */
    p->trainable = trainable * sizeof(float) * (t->method == ENGINE_LORA ? 4 : 3);
    p->available = model_memory_available(t->model);
    double full = (double)model_acts_bytes(t->model, c->batch_size, T, r, false);
    double ckpt = (double)model_acts_bytes(t->model, c->batch_size, T, r, true);
    p->grad_checkpoint = c->grad_checkpoint > 0 ||
        (c->grad_checkpoint == 0 && p->available > 0 && p->weights + p->trainable + full > 0.9 * p->available);
    p->activations = p->grad_checkpoint ? ckpt : full;
    p->total = p->weights + p->trainable + p->activations;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    snprintf(t->memory_text, sizeof t->memory_text, "Memory estimate: %.2f GiB (weights %.2f, "
             "trainable + AdamW %.2f, activations %.2f for batch %d x %d tokens%s), %.2f GiB available.",
             p->total / gib, p->weights / gib, p->trainable / gib, p->activations / gib,
             c->batch_size, T, p->grad_checkpoint ? ", activation checkpointing on" : "",
             p->available / gib);
    rt_log(RT_LOG_INFO, "memory estimate: %.2f GiB (weights %.2f, trainable + AdamW %.2f, activations "
           "%.2f for batch %d x %d tokens%s), %.2f GiB available", p->total / gib, p->weights / gib,
           p->trainable / gib, p->activations / gib, c->batch_size, T,
           p->grad_checkpoint ? ", activation checkpointing on" : "", p->available / gib);
    if (p->available <= 0 || p->total <= 0.9 * p->available)
        return RT_OK;
    return rt_fail(err, errsize, RT_ERR_NOMEM,
                   "needs %.2f GiB (weights %.2f, trainable + AdamW %.2f, activations %.2f for batch "
                   "%d x %d tokens%s), %.2f GiB available: try a smaller --batch-size or "
                   "--max-seq-len%s%s", p->total / gib, p->weights / gib, p->trainable / gib,
                   p->activations / gib, c->batch_size, T,
                   p->grad_checkpoint ? " with activation checkpointing" : "", p->available / gib,
                   p->grad_checkpoint ? "" : ", --grad-checkpoint",
                   t->model->w16 || t->method != ENGINE_LORA ? "" : ", or --dtype bf16");
}

/* Activations, batch buffers and the step plan. */
static int setup_buffers(trainer *t)
{
    const engine_train_config *c = &t->cfg;
    const train_set *sets[] = {t->train, t->valid, t->retention};
    int T = longest(sets, 3);
    int rc = model_acts_create_ckpt(t->model, c->batch_size, T, t->ad ? c->lora_r : 0,
                                    t->memory.grad_checkpoint, &t->acts);
    size_t n = largest(sets, 3);
    t->order = malloc(n * sizeof *t->order);
    t->identity = malloc(n * sizeof *t->identity);
    t->ids = malloc((size_t)c->batch_size * (size_t)T * sizeof *t->ids);
    t->targets = malloc((size_t)c->batch_size * (size_t)T * sizeof *t->targets);
    if (rc == RT_OK && (!t->order || !t->identity || !t->ids || !t->targets))
        rc = RT_ERR_NOMEM;
    if (rc != RT_OK)
        return rc;
    for (size_t i = 0; i < n; i++)
        t->identity[i] = i;
    size_t nb = (t->train->n + (size_t)c->batch_size - 1) / (size_t)c->batch_size;
    int per_epoch = (int)((nb + (size_t)c->grad_accum - 1) / (size_t)c->grad_accum);
    t->total_steps = per_epoch * c->epochs;
    if (c->max_steps > 0 && c->max_steps < t->total_steps)
        t->total_steps = c->max_steps;
    t->warmup = optim_warmup_steps(c->warmup_ratio, t->total_steps);
    return RT_OK;
}

int trainer_open(const engine_train_config *cfg, trainer **out, char *err, size_t errsize,
                 const char **input)
{
    *input = NULL;
    if (err && errsize)
        err[0] = '\0';
    int rc = check_config(cfg, err, errsize);
    if (rc != RT_OK)
        return rc;
    trainer *t = calloc(1, sizeof *t);
    if (!t)
        return RT_ERR_NOMEM;
    t->cfg = *cfg;
    t->method = cfg->method;
    t->retention_before = NAN;
    if (!t->cfg.target_modules)
        t->cfg.target_modules = (1u << PEFT_Q_PROJ) | (1u << PEFT_V_PROJ);
    rc = kernels_backend_get(cfg->device ? cfg->device : engine_default_device(), &t->be);
    if (rc != RT_OK)
        rt_fail(err, errsize, rc, "device %s is not available (%s)", cfg->device ? cfg->device : "default", rt_strerror(rc));
    if (rc == RT_OK && cfg->method == ENGINE_FULL) /* trainable: fp32 masters */
        rc = model_load(cfg->model_dir, t->be, &t->model, err, errsize);
    else if (rc == RT_OK) /* a frozen LoRA base: 16-bit when asked or stored so */
        rc = model_load_named(cfg->model_dir, t->be, cfg->dtype, &t->model, err, errsize);
    if (rc == RT_OK)
        rc = load_data(t, err, errsize, input);
    if (rc == RT_OK) {
        const train_set *sets[] = {t->train, t->valid, t->retention};
        rc = plan_memory(t, longest(sets, 3), err, errsize);
    }
    if (rc == RT_OK)
        rc = setup_trainable(t);
    if (rc == RT_OK)
        rc = setup_buffers(t);
    if (rc == RT_OK && (rc = trainer_group_open(t)) == RT_ERR_INVALID)
        rt_fail(err, errsize, rc, "the data-parallel group is malformed");
    if (rc != RT_OK) {
        trainer_close(t);
        return rc;
    }
    *out = t;
    return RT_OK;
}

void trainer_close(trainer *t)
{
    if (!t)
        return;
    if (t->be) {
        t->be->free(t->adam_m);
        t->be->free(t->adam_v);
        t->be->free(t->full_grad);
        t->be->free(t->norm_scratch);
    }
    model_weights_release(&t->gw);
    lora_free(t->ad);
    lora_free(t->ad_grad);
    model_acts_free(t->acts);
    model_free(t->model);
    train_set_free(t->train);
    train_set_free(t->valid);
    train_set_free(t->retention);
    chat_template_free(t->tmpl);
    tokenizer_free(t->tok);
    free(t->order);
    free(t->identity);
    free(t->ids);
    free(t->targets);
    free(t->comm_host);
    free(t);
}

/* ---- files --------------------------------------------------------------------- */

int engine_copy_tokenizer_files(const char *from_dir, const char *to_dir, char *err, size_t errsize)
{
    static const char *names[] = {"tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char src[4096], dst[4096], *data = NULL;
        size_t len = 0;
        snprintf(src, sizeof src, "%s/%s", from_dir, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", to_dir, names[i]);
        int rc = rt_read_file(src, (size_t)1 << 30, &data, &len, err, errsize);
        if (rc == RT_ERR_NOT_FOUND)
            continue;
        if (rc == RT_OK)
            rc = rt_write_file_atomic(dst, data, len, err, errsize);
        free(data);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* Writes the trained weights into dir: adapter or full model + tokenizer. */
static int save_weights(trainer *t, const char *dir, char *err, size_t errsize)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return rt_fail(err, errsize, RT_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    if (t->method == ENGINE_LORA)
        return lora_save(t->ad, &t->model->cfg, dir, err, errsize);
    int rc = model_save(t->model, dir, err, errsize);
    return rc == RT_OK ? engine_copy_tokenizer_files(t->cfg.model_dir, dir, err, errsize) : rc;
}

int trainer_save_result(trainer *t, const char *dir, char *err, size_t errsize)
{
    return save_weights(t, dir, err, errsize);
}

/* optimizer.safetensors: the AdamW moments as two flat tensors. */
static int save_optimizer(trainer *t, const char *dir, char *err, size_t errsize)
{
    size_t n = (size_t)t->n_trainable;
    float *host = malloc(2 * n * sizeof(float));
    sft_writer *w = NULL;
    char path[4096];
    int64_t shape[1] = {(int64_t)n};
    int rc = host ? RT_OK : RT_ERR_NOMEM;
    if (rc == RT_OK) rc = t->be->copy_to_host(host, t->adam_m, n * sizeof(float), NULL);
    if (rc == RT_OK) rc = t->be->copy_to_host(host + n, t->adam_v, n * sizeof(float), NULL);
    if (rc == RT_OK) rc = sft_writer_init(&w);
    if (rc == RT_OK) rc = sft_writer_add(w, "adam_m", SFT_F32, 1, shape, host);
    if (rc == RT_OK) rc = sft_writer_add(w, "adam_v", SFT_F32, 1, shape, host + n);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (rc == RT_OK) rc = sft_writer_write(w, path, err, errsize);
    sft_writer_free(w);
    free(host);
    return rc;
}

/* trainer_state.json: where the run stands. */
static int save_state(trainer *t, const char *dir, char *err, size_t errsize)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "method", t->method == ENGINE_LORA ? "lora" : "full");
    cJSON_AddNumberToObject(j, "step", t->step);
    cJSON_AddNumberToObject(j, "epoch", t->epoch);
    cJSON_AddNumberToObject(j, "batch_in_epoch", (double)t->batch_in_epoch);
    cJSON_AddNumberToObject(j, "total_steps", t->total_steps);
    cJSON_AddNumberToObject(j, "trainable_params", (double)t->n_trainable);
    cJSON_AddNumberToObject(j, "tokens", (double)t->tokens);
    cJSON_AddNumberToObject(j, "seconds", t->seconds_before + rt_now_seconds() - t->started);
    cJSON_AddNumberToObject(j, "train_loss", t->last_loss);
    if (t->progress.has_valid)
        cJSON_AddNumberToObject(j, "valid_loss", t->progress.valid_loss);
    if (!isnan(t->retention_before))
        cJSON_AddNumberToObject(j, "retention_loss_before", t->retention_before);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    int rc = text ? rt_write_file_atomic(path, text, strlen(text), err, errsize) : RT_ERR_NOMEM;
    free(text);
    return rc;
}

int trainer_checkpoint(trainer *t, const engine_callbacks *cb)
{
    if (!trainer_is_lead(t)) /* data parallel: every rank holds the same state; rank 0 writes it */
        return RT_OK;
    char dir[3800], tmp[3808], err[256] = "";
    snprintf(dir, sizeof dir, "%s/ckpt-step-%d", t->cfg.checkpoint_dir, t->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    mkdir(t->cfg.checkpoint_dir, 0755);
    rt_remove_tree(tmp);
    int rc = save_weights(t, tmp, err, sizeof err);
    if (rc == RT_OK) rc = save_optimizer(t, tmp, err, sizeof err);
    if (rc == RT_OK) rc = save_state(t, tmp, err, sizeof err);
    if (rc == RT_OK) {
        rt_remove_tree(dir);
        if (rename(tmp, dir) != 0)
            rc = RT_ERR_IO;
    }
    if (rc != RT_OK) {
        rt_log(RT_LOG_ERROR, "checkpoint %s failed: %s %s", dir, rt_strerror(rc), err);
        rt_remove_tree(tmp);
        return rc;
    }
    if (cb && cb->on_checkpoint)
        cb->on_checkpoint(cb->ctx, dir, &t->progress);
    return RT_OK;
}

/* Reads a number from trainer_state.json; NaN when absent. */
static double state_number(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Restores the trainable weights from the checkpoint's servable files. */
static int resume_weights(trainer *t, const char *dir, char *err, size_t errsize)
{
    size_t bytes = (size_t)t->n_trainable * sizeof(float);
    if (t->method == ENGINE_LORA) {
        lora *l = NULL;
        int rc = lora_load(dir, &t->model->cfg, t->be, &l, err, errsize);
        if (rc == RT_OK && l->n_params != t->ad->n_params)
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "checkpoint %s has another LoRA layout", dir);
        if (rc == RT_OK)
            rc = t->be->copy_device(t->params, l->params, bytes, NULL);
        lora_free(l);
        return rc;
    }
    model *m = NULL;
    int rc = model_load(dir, t->be, &m, err, errsize);
    if (rc == RT_OK)
        rc = t->be->copy_device(t->params, m->params, bytes, NULL);
    model_free(m);
    return rc;
}

/* Restores the AdamW moments. */
static int resume_optimizer(trainer *t, const char *dir, char *err, size_t errsize)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    sft_file *f = NULL;
    size_t n = (size_t)t->n_trainable;
    float *host = malloc(n * sizeof(float));
    int rc = host ? sft_file_open(path, &f, err, errsize) : RT_ERR_NOMEM;
    const char *names[2] = {"adam_m", "adam_v"};
    float *dst[2] = {t->adam_m, t->adam_v};
    for (int i = 0; rc == RT_OK && i < 2; i++) {
        const sft_tensor *ts = sft_tensor_find(f, names[i]);
        rc = ts ? sft_tensor_read_f32(ts, host, n) : RT_ERR_FORMAT;
        if (rc == RT_OK)
            rc = t->be->copy_to_device(dst[i], host, n * sizeof(float), NULL);
        else
            rt_fail(err, errsize, RT_ERR_FORMAT, "%s: %s missing or of the wrong size", path, names[i]);
    }
    sft_file_close(f);
    free(host);
    return rc;
}

int trainer_resume(trainer *t, const char *dir, char *err, size_t errsize)
{
    char path[4096], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    int rc = rt_read_file(path, 1 << 20, &text, &len, err, errsize);
    if (rc != RT_OK)
        return rc;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    double step = state_number(j, "step"), epoch = state_number(j, "epoch");
    double pos = state_number(j, "batch_in_epoch"), n = state_number(j, "trainable_params");
    if (!j || isnan(step) || isnan(epoch) || isnan(pos) || n != (double)t->n_trainable)
        rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s does not match this run", path);
    if (rc == RT_OK) {
        t->step = (int)step;
        t->epoch = (int)epoch;
        t->batch_in_epoch = (size_t)pos;
        t->tokens = (int64_t)state_number(j, "tokens");
        t->seconds_before = state_number(j, "seconds");
        t->last_loss = state_number(j, "train_loss");
        t->retention_before = state_number(j, "retention_loss_before");
    }
    cJSON_Delete(j);
    if (rc == RT_OK)
        rc = resume_weights(t, dir, err, errsize);
    if (rc == RT_OK)
        rc = resume_optimizer(t, dir, err, errsize);
    return rc;
}
