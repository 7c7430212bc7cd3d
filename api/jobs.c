/*
 * api/jobs.c — OpenAI's fine-tuning jobs API: create (validated here, data
 * problems fail the job rather than the request), list, get, cancel, pause,
 * resume, events and checkpoints. The training itself happens on the job
 * worker (server/worker.c), which claims queued jobs from storage.
 *
 * Jobs and the files they read are the caller's project's (api_project):
 * another project's job is the 404 of an unknown id (load_job, the one way
 * a path's job id is resolved), and its files are unknown training files.
 */
#include "api/api_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define BAD "invalid_request_error"

/* ---- JSON views --------------------------------------------------------------- */

/* Parses stored JSON text into a node, or null. */
static cJSON *stored_json(const char *text)
{
    cJSON *j = text[0] ? cJSON_Parse(text) : NULL;
    return j ? j : cJSON_CreateNull();
}

static void add_string_or_null(cJSON *o, const char *key, const char *v)
{
    if (v && v[0])
        cJSON_AddStringToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static void add_time_or_null(cJSON *o, const char *key, int64_t t)
{
    if (t)
        cJSON_AddNumberToObject(o, key, (double)t);
    else
        cJSON_AddNullToObject(o, key);
}

/* A measured loss, or null while it is unknown (stored as -1). */
static void add_number_or_null(cJSON *o, const char *key, double v)
{
    if (v >= 0)
        cJSON_AddNumberToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static bool is_terminal(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

/* OpenAI's fine_tuning.job object plus retune's progress fields. */
static cJSON *job_json(const storage_job *j)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "fine_tuning.job");
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "model", j->model);
    cJSON_AddNumberToObject(o, "created_at", (double)j->created_at);
    add_time_or_null(o, "finished_at", j->finished_at);
    add_string_or_null(o, "fine_tuned_model", j->fine_tuned_model);
    cJSON_AddStringToObject(o, "organization_id", j->tenant);
    cJSON *files = cJSON_AddArrayToObject(o, "result_files");
    if (j->result_file[0])
        cJSON_AddItemToArray(files, cJSON_CreateString(j->result_file));
    cJSON_AddStringToObject(o, "status", j->status);
    cJSON_AddStringToObject(o, "training_file", j->training_file);
    add_string_or_null(o, "validation_file", j->validation_file);
    add_string_or_null(o, "retention_file", j->retention_file);
    cJSON *hp = stored_json(j->hyperparameters);
    cJSON_AddItemToObject(o, "hyperparameters", hp);
    cJSON *method = cJSON_AddObjectToObject(o, "method");
    cJSON_AddStringToObject(method, "type", "supervised");
    cJSON *sup = cJSON_AddObjectToObject(method, "supervised");
    cJSON_AddItemToObject(sup, "hyperparameters", cJSON_Duplicate(hp, true));
    if (j->trained_tokens)
        cJSON_AddNumberToObject(o, "trained_tokens", (double)j->trained_tokens);
    else
        cJSON_AddNullToObject(o, "trained_tokens");
    if (j->error_code[0]) {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "code", j->error_code);
        cJSON_AddStringToObject(e, "message", j->error_message);
        add_string_or_null(e, "param", j->error_param);
    } else {
        cJSON_AddNullToObject(o, "error");
    }
    add_string_or_null(o, "user_provided_suffix", j->suffix);
    cJSON_AddNumberToObject(o, "seed", (double)j->seed);
    add_time_or_null(o, "estimated_finish", is_terminal(j->status) ? 0 : j->estimated_finish);
    cJSON_AddArrayToObject(o, "integrations");
    cJSON_AddItemToObject(o, "metadata", stored_json(j->metadata));
    cJSON_AddNumberToObject(o, "trainable_params", (double)j->trainable_params);
    cJSON_AddNumberToObject(o, "total_params", (double)j->total_params);
    cJSON_AddNumberToObject(o, "trainable_percent",
                            j->total_params ? 100.0 * (double)j->trainable_params / (double)j->total_params : 0);
    if (j->retention_file[0]) {
        cJSON *r = cJSON_AddObjectToObject(o, "retention");
        cJSON_AddStringToObject(r, "file", j->retention_file);
        add_number_or_null(r, "loss_before", j->retention_loss_before);
        add_number_or_null(r, "loss_after", j->retention_loss_after);
    } else {
        cJSON_AddNullToObject(o, "retention");
    }
    cJSON_AddNumberToObject(o, "step", (double)j->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)j->total_steps);
    return o;
}

/* ---- create -------------------------------------------------------------------- */

/* Carries the first problem of a create request: which param and why. */
typedef struct create_error {
    char param[96];
    char message[512];
    const char *code;
} create_error;

static bool fail(create_error *e, const char *param, const char *code, const char *msg)
{
    snprintf(e->param, sizeof e->param, "%s", param);
    snprintf(e->message, sizeof e->message, "%s", msg);
    e->code = code;
    return false;
}

/* An optional string field no longer than max; false on a bad one. */
static bool opt_string(const cJSON *body, const char *key, size_t max, const char **out,
                       create_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsString(v) || strlen(v->valuestring) > max) {
        char msg[160];
        snprintf(msg, sizeof msg, "'%s' must be a string of at most %zu characters.", key, max);
        return fail(e, key, "invalid_value", msg);
    }
    *out = v->valuestring;
    return true;
}

/* A file the job reads: exists in the caller's project, is for fine-tuning. */
static bool check_file(api_request *req, const char *param, const char *id, storage_file *f,
                       create_error *e)
{
    char msg[256];
    int rc = storage_file_get(req->srv->st, api_project(req), id, f);
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID) {
        snprintf(msg, sizeof msg, "File '%s' does not exist.", id);
        return fail(e, param, "invalid_file", msg);
    }
    if (rc != RT_OK)
        return fail(e, param, "server_error", "The file could not be read.");
    if (strcmp(f->purpose, "fine-tune") != 0) {
        snprintf(msg, sizeof msg, "File '%s' has purpose '%s'; upload it with purpose 'fine-tune'.",
                 id, f->purpose);
        return fail(e, param, "invalid_file_purpose", msg);
    }
    return true;
}

/* retention_file: a fine-tune file, or "base" for the base model's own
 * retention set (the built-in model ships one). */
static bool check_retention(api_request *req, const char *id, storage_file *f, create_error *e)
{
    if (strcmp(id, "base") != 0)
        return check_file(req, "retention_file", id, f, e);
    char path[4200];
    snprintf(path, sizeof path, "%s/retention.jsonl", req->srv->cfg.model_dir ? req->srv->cfg.model_dir : "");
    if (access(path, R_OK) == 0)
        return true;
    return fail(e, "retention_file", "invalid_file",
                "retention_file 'base' needs a base model with a retention set (retention.jsonl); upload one instead.");
}

/* suffix: up to 64 of [A-Za-z0-9_-]. */
static bool check_suffix(const char *s, create_error *e)
{
    for (const char *p = s; p && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_'))
            return fail(e, "suffix", "invalid_value",
                        "'suffix' may hold only letters, digits, '-' and '_' (at most 64).");
    return true;
}

/* metadata: at most 16 string pairs, keys <= 64, values <= 512. */
static bool check_metadata(const cJSON *m, create_error *e)
{
    if (!m || cJSON_IsNull(m))
        return true;
    if (!cJSON_IsObject(m) || cJSON_GetArraySize(m) > 16)
        return fail(e, "metadata", "invalid_value", "'metadata' must be an object of at most 16 pairs.");
    const cJSON *v;
    cJSON_ArrayForEach(v, m) {
        if (!cJSON_IsString(v) || strlen(v->string) > 64 || strlen(v->valuestring) > 512)
            return fail(e, "metadata", "invalid_value",
                        "'metadata' keys are at most 64 characters and values strings of at most 512.");
    }
    return true;
}

/* The hyperparameters object: top-level, or under method.supervised. */
static bool find_hyperparameters(const cJSON *body, const cJSON **hp, create_error *e)
{
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(body, "method");
    *hp = cJSON_GetObjectItemCaseSensitive(body, "hyperparameters");
    if (!method || cJSON_IsNull(method))
        return true;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(method, "type");
    if (!cJSON_IsObject(method) || !cJSON_IsString(type) || strcmp(type->valuestring, "supervised"))
        return fail(e, "method.type", "invalid_value",
                    "method.type must be 'supervised' (the only method retune trains).");
    const cJSON *sup = cJSON_GetObjectItemCaseSensitive(method, "supervised");
    const cJSON *inner = cJSON_IsObject(sup) ? cJSON_GetObjectItemCaseSensitive(sup, "hyperparameters") : NULL;
    if (inner)
        *hp = inner;
    return true;
}

/* Everything the request itself carries; fills the job on success. */
static bool parse_create(api_request *req, const cJSON *body, storage_job *job,
                         storage_file *train, create_error *e)
{
    const api_config *cfg = &req->srv->cfg;
    const char *model, *tfile, *vfile, *rfile, *suffix;
    if (!opt_string(body, "model", 255, &model, e) || !opt_string(body, "training_file", 63, &tfile, e) ||
        !opt_string(body, "validation_file", 63, &vfile, e) ||
        !opt_string(body, "retention_file", 63, &rfile, e) || !opt_string(body, "suffix", 64, &suffix, e))
        return false;
    if (!model)
        return fail(e, "model", "missing_required_parameter", "Missing required parameter: 'model'.");
    if (!cfg->model_id || strcmp(model, cfg->model_id) != 0) {
        char msg[400];
        snprintf(msg, sizeof msg, "Model '%s' is not available for fine-tuning here%s%s%s.", model,
                 cfg->model_id ? "; this server fine-tunes '" : " (the server has no base model)",
                 cfg->model_id ? cfg->model_id : "", cfg->model_id ? "'" : "");
        return fail(e, "model", "model_not_available", msg);
    }
    if (!tfile)
        return fail(e, "training_file", "missing_required_parameter",
                    "Missing required parameter: 'training_file'.");
    storage_file other;
    if (!check_file(req, "training_file", tfile, train, e) ||
        (vfile && !check_file(req, "validation_file", vfile, &other, e)) ||
        (rfile && !check_retention(req, rfile, &other, e)) || !check_suffix(suffix, e) ||
        !check_metadata(cJSON_GetObjectItemCaseSensitive(body, "metadata"), e))
        return false;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(body, "seed");
    if (seed && !cJSON_IsNull(seed) &&
        (!cJSON_IsNumber(seed) || seed->valuedouble < 0 || seed->valuedouble > 2147483647.0 ||
         seed->valuedouble != (double)(int64_t)seed->valuedouble))
        return fail(e, "seed", "invalid_value", "'seed' must be an integer from 0 to 2147483647.");
    const cJSON *hp = NULL;
    if (!find_hyperparameters(body, &hp, e))
        return false;
    char param[96], msg[512];
    if (hp && !cJSON_IsNull(hp) &&
        api_job_check_hyperparameters(hp, param, sizeof param, msg, sizeof msg) != RT_OK)
        return fail(e, param, "invalid_value", msg);

    storage_new_id("ftjob", job->id, sizeof job->id);
    snprintf(job->model, sizeof job->model, "%s", model);
    snprintf(job->training_file, sizeof job->training_file, "%s", tfile);
    snprintf(job->validation_file, sizeof job->validation_file, "%s", vfile ? vfile : "");
    snprintf(job->retention_file, sizeof job->retention_file, "%s", rfile ? rfile : "");
    snprintf(job->suffix, sizeof job->suffix, "%s", suffix ? suffix : "");
    snprintf(job->tenant, sizeof job->tenant, "%s", api_project(req));
    snprintf(job->status, sizeof job->status, "validating_files");
    job->created_at = rt_unix_time();
    job->retention_loss_before = job->retention_loss_after = -1;
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint32_t)job->created_at;
    job->seed = seed && cJSON_IsNumber(seed) ? (int64_t)seed->valuedouble : (int64_t)(r & 0x7fffffff);
    char *hp_text = hp && !cJSON_IsNull(hp) ? cJSON_PrintUnformatted(hp) : NULL;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(body, "metadata");
    char *meta_text = meta && cJSON_IsObject(meta) ? cJSON_PrintUnformatted(meta) : NULL;
    bool fits = (!hp_text || strlen(hp_text) < sizeof job->hyperparameters) &&
                (!meta_text || strlen(meta_text) < sizeof job->metadata);
    snprintf(job->hyperparameters, sizeof job->hyperparameters, "%s", fits && hp_text ? hp_text : "{}");
    snprintf(job->metadata, sizeof job->metadata, "%s", fits && meta_text ? meta_text : "");
    free(hp_text);
    free(meta_text);
    return fits ? true : fail(e, "hyperparameters", "invalid_value", "hyperparameters or metadata too large.");
}

/* Appends a message event to a job, and says it in the log: these are the
 * job's changes of state that the API makes (created, validated, failed
 * validation, cancelled, paused, resumed). */
static void job_event(api_request *req, const char *job_id, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void job_event(api_request *req, const char *job_id, const char *level, const char *fmt, ...)
{
    storage_event ev = {0};
    snprintf(ev.job_id, sizeof ev.job_id, "%s", job_id);
    snprintf(ev.level, sizeof ev.level, "%s", level);
    snprintf(ev.type, sizeof ev.type, "message");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev.message, sizeof ev.message, fmt, ap);
    va_end(ap);
    if (storage_event_add(req->srv->st, &ev) != RT_OK)
        rt_log(RT_LOG_WARN, "could not record event for %s", job_id);
    rt_log(RT_LOG_INFO, "job %s: %s", job_id, ev.message);
}

/* The file checks that fail the job (not the request): the file's own
 * validation result and the minimum number of examples. */
static void validate_files(api_request *req, storage_job *job, const storage_file *train)
{
    static const char *const from[] = {"validating_files", NULL};
    job_event(req, job->id, "info", "Validating training file: %s", job->training_file);
    const char *code = NULL;
    char msg[1024] = "";
    storage_file vf;
    if (strcmp(train->status, "processed") != 0) {
        code = "invalid_training_file";
        snprintf(msg, sizeof msg, "The training file %s is invalid: %s", job->training_file,
                 train->status_details);
    } else if (train->n_examples < req->srv->cfg.min_examples) {
        code = "invalid_n_examples";
        snprintf(msg, sizeof msg, "The training file has %lld examples; at least %d are required.",
                 (long long)train->n_examples, req->srv->cfg.min_examples);
    } else if (job->validation_file[0] &&
               storage_file_get(req->srv->st, job->tenant, job->validation_file, &vf) == RT_OK &&
               strcmp(vf.status, "processed") != 0) {
        code = "invalid_validation_file";
        snprintf(msg, sizeof msg, "The validation file %s is invalid: %s", job->validation_file,
                 vf.status_details);
    }
    if (code) {
        snprintf(job->error_code, sizeof job->error_code, "%s", code);
        snprintf(job->error_message, sizeof job->error_message, "%s", msg);
        snprintf(job->error_param, sizeof job->error_param, "%s",
                 strcmp(code, "invalid_validation_file") == 0 ? "validation_file" : "training_file");
        storage_job_update(req->srv->st, job);
        storage_job_transition(req->srv->st, job->id, from, "failed", job);
        job_event(req, job->id, "error", "%s", msg);
        return;
    }
    storage_job_transition(req->srv->st, job->id, from, "queued", job);
    job_event(req, job->id, "info", "Files validated, moving job to queued state");
}

int api_jobs_create(api_request *req)
{
    cJSON *body = api_body_json(req);
    if (!body)
        return RT_OK;
    storage_job *job = calloc(1, sizeof *job);
    storage_file train;
    create_error e = {.code = "invalid_value"};
    if (!job) {
        cJSON_Delete(body);
        return RT_ERR_NOMEM;
    }
    int rc = RT_OK;
    if (!parse_create(req, body, job, &train, &e))
        api_respond_error(req, 400, BAD, e.param, e.code, "%s", e.message);
    else if ((rc = storage_job_insert(req->srv->st, job)) == RT_OK) {
        job_event(req, job->id, "info", "Created fine-tuning job: %s", job->id);
        validate_files(req, job, &train);
        rc = api_respond_json(req, 200, job_json(job));
    }
    cJSON_Delete(body);
    free(job);
    return rc;
}

/* ---- read ------------------------------------------------------------------------ */

/* Loads the caller's job named by the path, answering 404 itself (for
 * another project's job too: the same answer as for an unknown id). */
static storage_job *load_job(api_request *req)
{
    storage_job *job = malloc(sizeof *job);
    if (!job)
        return NULL;
    int rc = storage_job_get(req->srv->st, api_project(req), req->params[0], job);
    if (rc == RT_OK)
        return job;
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID)
        api_respond_not_found(req, "fine-tuning job", req->params[0]);
    else
        api_respond_internal(req, rc);
    free(job);
    return NULL;
}

int api_jobs_get(api_request *req)
{
    storage_job *job = load_job(req);
    if (!job)
        return RT_OK;
    int rc = api_respond_json(req, 200, job_json(job));
    free(job);
    return rc;
}

/* {"object":"list","data":[...],"has_more"} around n items built by fn. */
static cJSON *list_json(void)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddArrayToObject(root, "data");
    return root;
}

/* Reads `after` (an id) when present. */
static const char *query_after(api_request *req, char *buf, size_t size)
{
    return api_query(req, "after", buf, size) ? buf : NULL;
}

/* Answers a list call's storage error: unknown cursor -> 400. */
static int list_error(api_request *req, int rc)
{
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID)
        return api_respond_error(req, 400, BAD, "after", "invalid_value", "Unknown 'after' cursor.");
    return api_respond_internal(req, rc);
}

/* The metadata[key]=value filters of a job list's query, decoded. */
typedef struct meta_query {
    storage_job_filter *f;
    char keys[STORAGE_MAX_META_FILTERS][72], values[STORAGE_MAX_META_FILTERS][520];
    bool bad;
} meta_query;

static enum MHD_Result collect_meta(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    meta_query *q = cls;
    char name[160];
    size_t kl = strlen(key);
    if (!api_percent_decode(key, kl, name, sizeof name, true) || strncmp(name, "metadata[", 9))
        return MHD_YES; /* not a metadata filter (or too long to be one) */
    size_t nl = strlen(name);
    int i = q->f->n_meta;
    if (nl < 11 || name[nl - 1] != ']' || nl - 10 >= sizeof q->keys[0] || i >= STORAGE_MAX_META_FILTERS ||
        !value || !api_percent_decode(value, strlen(value), q->values[i], sizeof q->values[i], true)) {
        q->bad = true;
        return MHD_NO;
    }
    memcpy(q->keys[i], name + 9, nl - 10);
    q->keys[i][nl - 10] = '\0';
    q->f->meta_keys[i] = q->keys[i];
    q->f->meta_values[i] = q->values[i];
    q->f->n_meta++;
    return MHD_YES;
}

int api_jobs_list(api_request *req)
{
    int limit;
    char after[STORAGE_ID_MAX];
    if (!api_query_limit(req, 20, 1, 100, &limit))
        return RT_OK;
    storage_job_filter f = {.project = api_project(req)};
    meta_query *q = calloc(1, sizeof *q);
    if (!q)
        return RT_ERR_NOMEM;
    q->f = &f;
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, collect_meta, q);
    if (q->bad) {
        free(q);
        return api_respond_error(req, 400, BAD, "metadata", "invalid_value",
                                 "Filter jobs with metadata[key]=value: at most %d keys of up to 64 "
                                 "characters and values of up to 512.", STORAGE_MAX_META_FILTERS);
    }
    storage_job *jobs = NULL;
    size_t n = 0;
    bool more = false;
    int rc = storage_job_list(req->srv->st, &f, query_after(req, after, sizeof after), limit, &jobs,
                              &n, &more);
    free(q);
    if (rc == RT_ERR_INVALID && f.n_meta)
        return api_respond_error(req, 400, BAD, "metadata", "invalid_value",
                                 "metadata filter keys must not contain '\"' or '\\' and have at most "
                                 "64 characters.");
    if (rc != RT_OK)
        return list_error(req, rc);
    cJSON *root = list_json();
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(cJSON_GetObjectItem(root, "data"), job_json(&jobs[i]));
    cJSON_AddBoolToObject(root, "has_more", more);
    free(jobs);
    return api_respond_json(req, 200, root);
}

static cJSON *event_json(const storage_event *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "fine_tuning.job.event");
    cJSON_AddStringToObject(o, "id", e->id);
    cJSON_AddNumberToObject(o, "created_at", (double)e->created_at);
    cJSON_AddStringToObject(o, "level", e->level);
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON *data = stored_json(e->data);
    cJSON_AddItemToObject(o, "data", cJSON_IsNull(data) ? (cJSON_Delete(data), cJSON_CreateObject()) : data);
    cJSON_AddStringToObject(o, "type", e->type);
    return o;
}

/* A page of a job's events or checkpoints, newest first: the shape both
 * list endpoints share. fetch lists up to limit items of the caller's job
 * (project, job_id) after `after` into a malloc'd array of item_size-byte
 * records; to_json builds one item. */
typedef int (*page_fetch)(storage *st, const char *project, const char *job_id, const char *after,
                          int limit, void **out, size_t *count, bool *has_more);
typedef cJSON *(*page_item)(const void *item);

static int job_page(api_request *req, int def_limit, page_fetch fetch, page_item to_json,
                    size_t item_size, bool with_ids)
{
    int limit;
    char after[STORAGE_ID_MAX];
    storage_job *job = load_job(req);
    if (!job)
        return RT_OK;
    free(job);
    if (!api_query_limit(req, def_limit, 1, 1000, &limit))
        return RT_OK;
    char *items = NULL;
    size_t n = 0;
    bool more = false;
    int rc = fetch(req->srv->st, api_project(req), req->params[0],
                   query_after(req, after, sizeof after), limit, (void **)&items, &n, &more);
    if (rc != RT_OK)
        return list_error(req, rc);
    cJSON *root = list_json();
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(cJSON_GetObjectItem(root, "data"), to_json(items + i * item_size));
    if (with_ids) { /* every record kind here starts with its id */
        add_string_or_null(root, "first_id", n ? items : NULL);
        add_string_or_null(root, "last_id", n ? items + (n - 1) * item_size : NULL);
    }
    cJSON_AddBoolToObject(root, "has_more", more);
    free(items);
    return api_respond_json(req, 200, root);
}

/* Events go by job id alone: job_page has found the job in the project. */
static int fetch_events(storage *st, const char *project, const char *job_id, const char *after,
                        int limit, void **out, size_t *count, bool *has_more)
{
    (void)project;
    return storage_event_list(st, job_id, after, limit, (storage_event **)out, count, has_more);
}

static cJSON *event_item(const void *item) { return event_json(item); }

/* ---- a job's events, live (server-sent events) ---------------------------------- */

#define EVENTS_POLL_SECONDS 1.0       /* how often a waiting stream looks for new events */
#define EVENTS_KEEPALIVE_SECONDS 15.0 /* a comment line after this long without output */
#define EVENTS_BATCH 100

/* One stream: owned by its response, used only on its connection's
 * event-loop thread. */
typedef struct event_stream {
    api_request *req;                 /* valid while libmicrohttpd reads the response */
    storage *st;
    char project[STORAGE_PROJECT_MAX];
    char job_id[API_PARAM_MAX];
    char cursor[STORAGE_ID_MAX];      /* the last event sent ("" none yet) */
    char *out;
    size_t len, sent, cap;
    double last_out;
    bool ended;                       /* [DONE] is in out */
} event_stream;

/* Queues text; what was all sent is dropped first. */
static bool out_append(event_stream *s, const char *text, size_t n)
{
    if (s->sent == s->len)
        s->sent = s->len = 0;
    return api_buf_append(&s->out, &s->len, &s->cap, text, n);
}

/* Appends the events stored since the cursor and, once the job is over and
 * none remain, [DONE]. The job's status is read before its events, so the
 * events it stored before it ended are all sent first. */
static int stream_refill(event_stream *s)
{
    storage_job job;
    int rc = storage_job_get(s->st, s->project, s->job_id, &job);
    if (rc != RT_OK)
        return rc;
    storage_event *events = NULL;
    size_t n = 0;
    bool more = false;
    rc = storage_event_list_since(s->st, s->job_id, s->cursor[0] ? s->cursor : NULL, EVENTS_BATCH, &events,
                                  &n, &more);
    if (rc != RT_OK)
        return rc;
    for (size_t i = 0; i < n && rc == RT_OK; i++) {
        cJSON *o = event_json(&events[i]);
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        char head[STORAGE_ID_MAX + 16];
        int hn = snprintf(head, sizeof head, "id: %s\ndata: ", events[i].id);
        if (!text || !out_append(s, head, (size_t)hn) || !out_append(s, text, strlen(text)) ||
            !out_append(s, "\n\n", 2))
            rc = RT_ERR_NOMEM;
        free(text);
        snprintf(s->cursor, sizeof s->cursor, "%s", events[i].id);
    }
    free(events);
    if (rc == RT_OK && n == 0 && is_terminal(job.status)) {
        s->ended = true;
        rc = out_append(s, "data: [DONE]\n\n", 14) ? RT_OK : RT_ERR_NOMEM;
    }
    return rc;
}

/* libmicrohttpd reads the stream here; with nothing new it parks the
 * connection for a second and returns 0 (allowed for a suspended one). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    event_stream *s = cls;
    for (;;) {
        double now = rt_now_seconds();
        if (s->sent < s->len) {
            size_t n = s->len - s->sent < max ? s->len - s->sent : max;
            memcpy(buf, s->out + s->sent, n);
            s->sent += n;
            s->last_out = now;
            return (ssize_t)n;
        }
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (stream_refill(s) != RT_OK)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->len > s->sent || s->ended)
            continue;
        if (now - s->last_out >= EVENTS_KEEPALIVE_SECONDS) {
            if (!out_append(s, ": keep-alive\n\n", 14))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        enum api_park park = api_request_park_for(s->req, EVENTS_POLL_SECONDS);
        if (park == API_PARKED)
            return 0;
        if (park == API_PARK_END)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void stream_free(void *cls)
{
    event_stream *s = cls;
    free(s->out);
    free(s);
}

/* GET .../events?stream=true: every event of the job oldest first (or
 * those after `after` / Last-Event-ID), then each new one as it is stored,
 * then [DONE] once the job is over. */
static int respond_events_stream(api_request *req)
{
    storage_job *job = load_job(req);
    if (!job)
        return RT_OK;
    free(job);
    event_stream *s = calloc(1, sizeof *s);
    if (!s)
        return RT_ERR_NOMEM;
    s->req = req;
    s->st = req->srv->st;
    s->last_out = rt_now_seconds();
    snprintf(s->project, sizeof s->project, "%s", api_project(req));
    snprintf(s->job_id, sizeof s->job_id, "%s", req->params[0]);
    const char *resume_from = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Last-Event-ID");
    if (!api_query(req, "after", s->cursor, sizeof s->cursor) && resume_from)
        snprintf(s->cursor, sizeof s->cursor, "%s", resume_from);
    int rc = stream_refill(s); /* a bad cursor is answered here, before the stream starts */
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID) {
        int answered = api_respond_error(req, 400, "invalid_request_error", "after", "invalid_value",
                                         "'%s' is not an event of this job.", s->cursor);
        stream_free(s);
        return answered;
    }
    if (rc != RT_OK) {
        stream_free(s);
        return rc;
    }
    return api_respond_event_stream(req, stream_read, s, stream_free);
}

int api_jobs_events(api_request *req)
{
    char stream[8];
    if (api_query(req, "stream", stream, sizeof stream) && !strcmp(stream, "true"))
        return respond_events_stream(req);
    return job_page(req, 20, fetch_events, event_item, sizeof(storage_event), false);
}

static cJSON *checkpoint_json(const storage_checkpoint *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "fine_tuning.job.checkpoint");
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddNumberToObject(o, "created_at", (double)c->created_at);
    cJSON_AddStringToObject(o, "fine_tuned_model_checkpoint", c->fine_tuned_model_checkpoint);
    cJSON_AddNumberToObject(o, "step_number", (double)c->step);
    cJSON_AddItemToObject(o, "metrics", stored_json(c->metrics));
    cJSON_AddStringToObject(o, "fine_tuning_job_id", c->job_id);
    return o;
}

static int fetch_checkpoints(storage *st, const char *project, const char *job_id,
                             const char *after, int limit, void **out, size_t *count,
                             bool *has_more)
{
    return storage_checkpoint_list(st, project, job_id, after, limit, (storage_checkpoint **)out,
                                   count, has_more);
}

static cJSON *checkpoint_item(const void *item) { return checkpoint_json(item); }

int api_jobs_checkpoints(api_request *req)
{
    return job_page(req, 10, fetch_checkpoints, checkpoint_item, sizeof(storage_checkpoint), true);
}

/* ---- control ---------------------------------------------------------------------- */

/* Answers a control call on a job in the wrong state. */
static int wrong_state(api_request *req, const storage_job *job, const char *action)
{
    return api_respond_error(req, 400, BAD, "id", "invalid_state",
                             "Cannot %s job %s: it is %s.", action, job->id, job->status);
}

/* Cancel or pause: immediate for a job that is not running, requested
 * from the worker for one that is (it stops within one optimizer step). */
static int control(api_request *req, const char *action)
{
    static const char *const cancellable[] = {"validating_files", "queued", "paused", NULL};
    bool cancel = strcmp(action, "cancel") == 0;
    storage_job *job = load_job(req);
    if (!job)
        return RT_OK;
    int rc = RT_ERR_STATE;
    if (cancel)
        rc = storage_job_transition(req->srv->st, job->id, cancellable, "cancelled", job);
    if (rc == RT_ERR_STATE && (rc = storage_job_request(req->srv->st, job->id, action)) == RT_OK)
        rc = storage_job_get(req->srv->st, api_project(req), job->id, job);
    if (rc == RT_OK && cancel && !strcmp(job->status, "cancelled"))
        job_event(req, job->id, "info", "Fine-tuning job cancelled");
    if (rc == RT_OK && !strcmp(job->status, "running"))
        job_event(req, job->id, "info", "%s requested; the job stops after its current step",
                  cancel ? "Cancellation" : "Pause");
    int out = rc == RT_OK ? api_respond_json(req, 200, job_json(job))
              : rc == RT_ERR_STATE ? wrong_state(req, job, action)
                                   : api_respond_internal(req, rc);
    free(job);
    return out;
}

int api_jobs_cancel(api_request *req) { return control(req, "cancel"); }
int api_jobs_pause(api_request *req) { return control(req, "pause"); }

int api_jobs_resume(api_request *req)
{
    static const char *const paused[] = {"paused", NULL};
    storage_job *job = load_job(req);
    if (!job)
        return RT_OK;
    int rc = storage_job_transition(req->srv->st, job->id, paused, "queued", job);
    if (rc == RT_OK)
        job_event(req, job->id, "info", "Job resumed; queued to continue from step %lld",
                  (long long)job->step);
    int out = rc == RT_OK ? api_respond_json(req, 200, job_json(job))
              : rc == RT_ERR_STATE ? wrong_state(req, job, "resume")
                                   : api_respond_internal(req, rc);
    free(job);
    return out;
}
