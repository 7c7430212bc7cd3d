/*
 * api/job_codec.c — fine-tuning jobs between JSON and native structs:
 * the hyperparameters a request may carry (OpenAI's n_epochs, batch_size,
 * learning_rate_multiplier, each a number or "auto", plus retune's LoRA,
 * optimizer and memory knobs), their resolution into an engine_train_config once the
 * data size is known, and the metrics JSON of events and checkpoints.
 * Used by the HTTP handlers and by the job worker (server/worker.c).
 */
#include "api/api_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One numeric knob: its JSON name, range and whether it must be whole. */
typedef struct knob {
    const char *name;
    double lo, hi;
    bool integer, allow_auto;
} knob;

static const knob knobs[] = {
    {"n_epochs", 1, 100, true, true},       {"batch_size", 1, 256, true, true},
    {"learning_rate_multiplier", 1e-6, 100, false, true},
    {"lora_r", 1, 256, true, false},        {"lora_alpha", 1e-6, 1e6, false, false},
    {"lora_dropout", 0, 0.999, false, false}, {"learning_rate", 1e-9, 10, false, false},
    {"warmup_ratio", 0, 1, false, false},   {"weight_decay", 0, 10, false, false},
    {"max_seq_len", 8, 32768, true, false}, {"grad_accum", 1, 1024, true, false},
    {"eval_interval", 0, 1e9, true, false}, {"checkpoint_interval", 0, 1e9, true, false},
    {"max_grad_norm", 0, 1e6, false, false},
};

/* Writes the 400 message for a bad knob. */
static int knob_error(const knob *k, char *param, size_t psize, char *msg, size_t msize)
{
    snprintf(param, psize, "hyperparameters.%s", k->name);
    snprintf(msg, msize, "hyperparameters.%s must be %s%s from %g to %g.", k->name,
             k->allow_auto ? "\"auto\" or " : "", k->integer ? "an integer" : "a number", k->lo, k->hi);
    return RT_ERR_INVALID;
}

/* Checks one knob's value if present. */
static int check_knob(const cJSON *hp, const knob *k, char *param, size_t psize, char *msg, size_t msize)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, k->name);
    if (!v || cJSON_IsNull(v))
        return RT_OK;
    if (k->allow_auto && cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0)
        return RT_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= k->lo && v->valuedouble <= k->hi) ||
        (k->integer && v->valuedouble != floor(v->valuedouble)))
        return knob_error(k, param, psize, msg, msize);
    return RT_OK;
}

/* Checks a string knob against its allowed values. */
static int check_choice(const cJSON *hp, const char *name, const char *const *allowed, char *param,
                        size_t psize, char *msg, size_t msize)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, name);
    if (!v || cJSON_IsNull(v))
        return RT_OK;
    for (const char *const *a = allowed; cJSON_IsString(v) && *a; a++)
        if (strcmp(v->valuestring, *a) == 0)
            return RT_OK;
    snprintf(param, psize, "hyperparameters.%s", name);
    snprintf(msg, msize, "hyperparameters.%s must be one of:", name);
    for (const char *const *a = allowed; *a; a++)
        snprintf(msg + strlen(msg), msize - strlen(msg), " %s", *a);
    return RT_ERR_INVALID;
}

/* target_modules: "all-linear" or an array of module names. */
static int check_targets(const cJSON *hp, unsigned *bits, char *param, size_t psize, char *msg,
                         size_t msize)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, "target_modules");
    *bits = 0;
    if (!v || cJSON_IsNull(v))
        return RT_OK;
    char list[512] = "";
    bool ok = cJSON_IsString(v) || cJSON_IsArray(v);
    if (cJSON_IsString(v))
        snprintf(list, sizeof list, "%s", v->valuestring);
    const cJSON *item;
    const cJSON *array = cJSON_IsArray(v) ? v : NULL;
    cJSON_ArrayForEach(item, array) {
        ok = ok && cJSON_IsString(item) && strlen(list) + strlen(item->valuestring) + 2 < sizeof list;
        if (ok)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? "," : "",
                     item->valuestring);
    }
    if (ok && list[0] && engine_parse_target_modules(list, bits) == RT_OK)
        return RT_OK;
    snprintf(param, psize, "hyperparameters.target_modules");
    snprintf(msg, msize, "hyperparameters.target_modules must be \"all-linear\" or a list of "
                         "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.");
    return RT_ERR_INVALID;
}

/* gradient_checkpointing: true, false or "auto" (on when memory needs it). */
static int check_checkpointing(const cJSON *hp, char *param, size_t psize, char *msg, size_t msize)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, "gradient_checkpointing");
    if (!v || cJSON_IsNull(v) || cJSON_IsBool(v) ||
        (cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0))
        return RT_OK;
    snprintf(param, psize, "hyperparameters.gradient_checkpointing");
    snprintf(msg, msize, "hyperparameters.gradient_checkpointing must be true, false or \"auto\".");
    return RT_ERR_INVALID;
}

/* The engine's grad_checkpoint: 1 on, -1 off, 0 automatic. */
static int checkpointing(const cJSON *hp)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, "gradient_checkpointing");
    return cJSON_IsTrue(v) ? 1 : cJSON_IsFalse(v) ? -1 : 0;
}

/* Hyperparameters that are not numeric knobs. */
static const char *const other_keys[] = {"training_type", "lr_scheduler", "target_modules",
                                         "gradient_checkpointing", NULL};

/* Levenshtein distance of two short names (longer ones count as far). */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    int row[41];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            best = up + 1 < best ? up + 1 : best;
            best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The known hyperparameter closest to name, or NULL when none is close. */
static const char *closest_key(const char *name)
{
    const char *best = NULL;
    int best_d = 4;
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        int d = edit_distance(name, knobs[i].name);
        if (d < best_d || (strstr(knobs[i].name, name) && d < 8)) {
            best = knobs[i].name;
            best_d = d;
        }
    }
    for (const char *const *k = other_keys; *k; k++)
        if (edit_distance(name, *k) < best_d) {
            best = *k;
            best_d = edit_distance(name, *k);
        }
    return best;
}

/* Every key must be a hyperparameter retune knows: a misspelled one would
 * otherwise be stored, echoed back and ignored while its default trains. */
static int check_unknown_keys(const cJSON *hp, char *param, size_t psize, char *msg, size_t msize)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, hp) {
        bool known = false;
        for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++)
            known = known || strcmp(item->string, knobs[i].name) == 0;
        for (const char *const *k = other_keys; *k; k++)
            known = known || strcmp(item->string, *k) == 0;
        if (known)
            continue;
        const char *near = closest_key(item->string);
        snprintf(param, psize, "hyperparameters.%.200s", item->string);
        snprintf(msg, msize, "Unknown hyperparameter '%.200s'%s%s%s.", item->string,
                 near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
        return RT_ERR_INVALID;
    }
    return RT_OK;
}

int api_job_check_hyperparameters(const cJSON *hp, char *param, size_t psize, char *msg, size_t msize)
{
    static const char *const types[] = {"lora", "full", NULL};
    static const char *const schedules[] = {"cosine", "linear", "constant", NULL};
    if (!cJSON_IsObject(hp)) {
        snprintf(param, psize, "hyperparameters");
        snprintf(msg, msize, "hyperparameters must be an object.");
        return RT_ERR_INVALID;
    }
    if (check_unknown_keys(hp, param, psize, msg, msize) != RT_OK)
        return RT_ERR_INVALID;
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++)
        if (check_knob(hp, &knobs[i], param, psize, msg, msize) != RT_OK)
            return RT_ERR_INVALID;
    unsigned bits;
    if (check_choice(hp, "training_type", types, param, psize, msg, msize) != RT_OK ||
        check_choice(hp, "lr_scheduler", schedules, param, psize, msg, msize) != RT_OK ||
        check_targets(hp, &bits, param, psize, msg, msize) != RT_OK ||
        check_checkpointing(hp, param, psize, msg, msize) != RT_OK)
        return RT_ERR_INVALID;
    return RT_OK;
}

/* A knob's number, or def when absent or "auto". */
static double num(const cJSON *hp, const char *name, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, name);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static const char *str(const cJSON *hp, const char *name, const char *def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, name);
    return cJSON_IsString(v) ? v->valuestring : def;
}

/* "auto" rules: epochs so that a small set is still seen API_MIN_EXAMPLES_SEEN
 * times in all (3..10; 3 from 167 examples up), batch ~ n/50 in 1..8,
 * multiplier 1. A small set needs many passes to be learnt, as
 * bench/defaults_bench.py measures. */
static void resolve_auto(const cJSON *hp, int64_t n_examples, int *epochs, int *batch, double *mult)
{
    int auto_epochs = 3;
    if (n_examples > 0 && n_examples * 3 < API_MIN_EXAMPLES_SEEN)
        auto_epochs = (int)((API_MIN_EXAMPLES_SEEN + n_examples - 1) / n_examples);
    if (auto_epochs > 10)
        auto_epochs = 10;
    int auto_batch = (int)(n_examples / 50);
    auto_batch = auto_batch < 1 ? 1 : auto_batch > 8 ? 8 : auto_batch;
    *epochs = (int)num(hp, "n_epochs", auto_epochs);
    *batch = (int)num(hp, "batch_size", auto_batch);
    *mult = num(hp, "learning_rate_multiplier", 1.0);
}

/* Sets key to v, replacing an existing value ("auto") or adding it. */
static void set_number(cJSON *o, const char *key, double v)
{
    if (cJSON_GetObjectItemCaseSensitive(o, key))
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateNumber(v));
    else
        cJSON_AddNumberToObject(o, key, v);
}

/* The learning rate a job gets when it sets none (see api.h). */
static double default_learning_rate(bool full, int hidden_size)
{
    /* 2e-4 (LoRA) and 1e-5 (full) at hidden 4096, the usual choices for
     * 7-8B models, rising as models get narrower: a small model takes (and
     * needs) larger steps. */
    double width = hidden_size > 0 ? 4096.0 / hidden_size : 1.0;
    double lr = full ? 1e-5 * width : 2e-4 * pow(width, 0.9);
    double lo = full ? 5e-6 : 1e-4, hi = full ? 3e-4 : 3e-3;
    return lr < lo ? lo : lr > hi ? hi : lr;
}

int api_job_resolve(storage_job *job, int64_t n_examples, int hidden_size, engine_train_config *cfg)
{
    cJSON *hp = cJSON_Parse(job->hyperparameters[0] ? job->hyperparameters : "{}");
    if (!hp)
        return RT_ERR_FORMAT;
    engine_train_defaults(cfg);
    bool full = strcmp(str(hp, "training_type", "lora"), "full") == 0;
    int epochs, batch;
    double mult;
    resolve_auto(hp, n_examples, &epochs, &batch, &mult);
    cfg->method = full ? ENGINE_FULL : ENGINE_LORA;
    cfg->epochs = epochs;
    cfg->batch_size = batch;
    cfg->learning_rate = num(hp, "learning_rate", default_learning_rate(full, hidden_size)) * mult;
    cfg->lora_r = (int)num(hp, "lora_r", cfg->lora_r);
    cfg->lora_alpha = num(hp, "lora_alpha", 2.0 * cfg->lora_r);
    cfg->lora_dropout = num(hp, "lora_dropout", 0.0);
    cfg->warmup_ratio = num(hp, "warmup_ratio", 0.1);
    cfg->weight_decay = num(hp, "weight_decay", 0.0);
    cfg->max_seq_len = (int)num(hp, "max_seq_len", 1024);
    cfg->grad_accum = (int)num(hp, "grad_accum", 1);
    cfg->eval_interval = (int)num(hp, "eval_interval", 0);
    cfg->checkpoint_interval = (int)num(hp, "checkpoint_interval", 0);
    cfg->max_grad_norm = num(hp, "max_grad_norm", 1.0);
    cfg->grad_checkpoint = checkpointing(hp);
    const char *sched = str(hp, "lr_scheduler", "cosine");
    cfg->schedule = !strcmp(sched, "linear") ? ENGINE_SCHEDULE_LINEAR
                    : !strcmp(sched, "constant") ? ENGINE_SCHEDULE_CONSTANT : ENGINE_SCHEDULE_COSINE;
    unsigned bits = 0;
    char p[8], m[8];
    engine_parse_target_modules("all-linear", &cfg->target_modules); /* every projection, as QLoRA advises */
    if (check_targets(hp, &bits, p, sizeof p, m, sizeof m) == RT_OK && bits)
        cfg->target_modules = bits;
    cfg->seed = (uint64_t)job->seed;
    /* Show the concrete values from now on. */
    set_number(hp, "n_epochs", epochs);
    set_number(hp, "batch_size", batch);
    set_number(hp, "learning_rate_multiplier", mult);
    if (!cJSON_GetObjectItem(hp, "training_type"))
        cJSON_AddStringToObject(hp, "training_type", full ? "full" : "lora");
    if (!full && !cJSON_GetObjectItem(hp, "target_modules"))
        cJSON_AddStringToObject(hp, "target_modules", "all-linear");
    char *text = cJSON_PrintUnformatted(hp);
    cJSON_Delete(hp);
    int rc = text && strlen(text) < sizeof job->hyperparameters ? RT_OK : RT_ERR_TOO_LARGE;
    if (rc == RT_OK)
        snprintf(job->hyperparameters, sizeof job->hyperparameters, "%s", text);
    free(text);
    return rc;
}

/* Adds a number, or null when it is not finite. */
static void add_number(cJSON *o, const char *key, double v, bool have)
{
    if (have && isfinite(v))
        cJSON_AddNumberToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

void api_job_metrics_json(const engine_progress *p, char *buf, size_t size)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", p->step);
    cJSON_AddNumberToObject(o, "total_steps", p->total_steps);
    add_number(o, "train_loss", p->train_loss, true);
    add_number(o, "train_mean_token_accuracy", p->train_accuracy, true);
    add_number(o, "valid_loss", p->valid_loss, p->has_valid);
    add_number(o, "valid_mean_token_accuracy", p->valid_accuracy, p->has_valid);
    add_number(o, "learning_rate", p->learning_rate, true);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    snprintf(buf, size, "%s", text && strlen(text) < size ? text : "{}");
    free(text);
}

void api_job_retention_json(double before, double after, double trainable_percent, char *buf,
                            size_t size)
{
    cJSON *o = cJSON_CreateObject();
    add_number(o, "retention_loss_before", before, true);
    add_number(o, "retention_loss_after", after, true);
    cJSON_AddNumberToObject(o, "trainable_percent", trainable_percent);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    snprintf(buf, size, "%s", text && strlen(text) < size ? text : "{}");
    free(text);
}

void api_job_model_name(const storage_job *job, char *buf, size_t size)
{
    const char *hex = strchr(job->id, '-');
    snprintf(buf, size, "ft:%s:%s:%s:%.12s", job->model, job->tenant, job->suffix, hex ? hex + 1 : job->id);
}
