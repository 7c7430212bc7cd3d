/*
 * api/models.c — the models a client may name: the base model, fine-tuned
 * adapters and full models (the models table), and job checkpoints.
 * GET/DELETE /v1/models, POST /v1/adapters (import a PEFT adapter), and the
 * resolution of a request's `model` to what the engine serves: an adapter
 * registered on the shared base (on first use), or a full model's own engine.
 *
 * The base model and --lora adapters are shared; fine-tuned and imported
 * models and checkpoints are their project's (api_project): storage finds
 * only the caller's, so another project's model is the same 404
 * model_not_found as a name nobody has. In the engine a project's model is
 * registered under its engine key (api_engine_key), never its bare name.
 */
#include "api/api_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAD "invalid_request_error"

static cJSON *model_json(const char *id, int64_t created, const char *owner, const char *parent,
                         const char *kind)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "owned_by", owner);
    if (parent)
        cJSON_AddStringToObject(o, "parent", parent);
    else
        cJSON_AddNullToObject(o, "parent");
    cJSON_AddStringToObject(o, "kind", kind);
    return o;
}

/* The kind of a checkpoint directory: "adapter" or "full". */
static const char *checkpoint_kind(const char *path)
{
    char f[1200];
    snprintf(f, sizeof f, "%s/adapter_config.json", path);
    return access(f, R_OK) == 0 ? "adapter" : "full";
}

/* Adds every checkpoint of the caller's jobs to data (newest first). */
static int add_checkpoints(api_request *req, cJSON *data)
{
    storage_checkpoint *ck = NULL;
    size_t n = 0;
    bool more = false;
    int rc = storage_checkpoint_list(req->srv->st, api_project(req), NULL, NULL, 10000, &ck, &n,
                                     &more);
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        storage_job job;
        if (storage_job_get(req->srv->st, api_project(req), ck[i].job_id, &job) != RT_OK)
            continue;
        cJSON_AddItemToArray(data, model_json(ck[i].fine_tuned_model_checkpoint, ck[i].created_at,
                                              job.tenant, job.model, "checkpoint"));
    }
    free(ck);
    return rc;
}

int api_models_list(api_request *req)
{
    const api_config *cfg = &req->srv->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    if (cfg->model_id)
        cJSON_AddItemToArray(data, model_json(cfg->model_id, 0, "retune", NULL, "base"));
    storage_model *models = NULL;
    size_t n = 0;
    bool more = false;
    int rc = storage_model_list(req->srv->st, api_project(req), NULL, 10000, &models, &n, &more);
    for (size_t i = 0; rc == RT_OK && i < n; i++)
        cJSON_AddItemToArray(data, model_json(models[i].id, models[i].created_at, models[i].owned_by,
                                              models[i].parent, models[i].kind));
    free(models);
    if (rc == RT_OK)
        rc = add_checkpoints(req, data);
    if (rc != RT_OK) {
        cJSON_Delete(root);
        return api_respond_internal(req, rc);
    }
    return api_respond_json(req, 200, root);
}

static int model_not_found(api_request *req, const char *id)
{
    return api_respond_error(req, 404, BAD, "model", "model_not_found",
                             "The model '%s' does not exist.", id);
}

int api_models_get(api_request *req)
{
    const api_config *cfg = &req->srv->cfg;
    const char *id = req->params[0];
    storage_model m;
    storage_checkpoint ck;
    storage_job job;
    if (cfg->model_id && strcmp(id, cfg->model_id) == 0)
        return api_respond_json(req, 200, model_json(id, 0, "retune", NULL, "base"));
    if (storage_model_get(req->srv->st, api_project(req), id, &m) == RT_OK)
        return api_respond_json(req, 200, model_json(m.id, m.created_at, m.owned_by, m.parent, m.kind));
    if (storage_checkpoint_find_model(req->srv->st, api_project(req), id, &ck) == RT_OK &&
        storage_job_get(req->srv->st, api_project(req), ck.job_id, &job) == RT_OK)
        return api_respond_json(req, 200, model_json(id, ck.created_at, job.tenant, job.model, "checkpoint"));
    return model_not_found(req, id);
}

/* A deleted model stops being served: an adapter is unregistered from the
 * base engine, a full fine-tune's engine closes once its requests finish. */
static void forget_model(api_server *srv, const char *id)
{
    if (srv->engine && engine_adapter_exists(srv->engine, id))
        engine_adapter_remove(srv->engine, id);
    engine_pool_forget(srv->fulls, id);
}

int api_models_delete(api_request *req)
{
    const api_config *cfg = &req->srv->cfg;
    const char *id = req->params[0];
    if (cfg->model_id && strcmp(id, cfg->model_id) == 0)
        return api_respond_error(req, 400, BAD, "model", "invalid_value",
                                 "The base model '%s' cannot be deleted.", id);
    storage_model m;
    char key[API_ENGINE_KEY_MAX];
    int rc = storage_model_get(req->srv->st, api_project(req), id, &m);
    if (rc == RT_OK)
        rc = storage_model_delete(req->srv->st, api_project(req), id);
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID)
        return model_not_found(req, id);
    if (rc != RT_OK)
        return api_respond_internal(req, rc);
    /* Requests in flight keep their reference and finish first. */
    api_engine_key(req, id, key, sizeof key);
    forget_model(req->srv, key);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddBoolToObject(o, "deleted", true);
    return api_respond_json(req, 200, o);
}

/* Where the project's model of that name has its files and what kind they
 * are; false if the project has none. */
static bool locate(api_server *srv, const char *project, const char *model, char *path, size_t size,
                   const char **kind)
{
    storage_model m;
    storage_checkpoint ck;
    if (storage_model_get(srv->st, project, model, &m) == RT_OK) {
        snprintf(path, size, "%s", m.path);
        *kind = strcmp(m.kind, "full") == 0 ? "full" : "adapter";
        return true;
    }
    if (storage_checkpoint_find_model(srv->st, project, model, &ck) == RT_OK) {
        snprintf(path, size, "%s", ck.path);
        *kind = checkpoint_kind(ck.path);
        return true;
    }
    return false;
}

/* An adapter given with --lora: shared by every project and known to the
 * engine under its own name. Engine keys of projects' models start with
 * '/', which no --lora name does, so a request cannot name one here. */
static bool shared_adapter(api_server *srv, const char *model)
{
    return model[0] != '/' && engine_adapter_exists(srv->engine, model);
}

/* A refusal of the request's model field. */
#define refusal(why, code, ...) engine_error_set((why), (code), "model", __VA_ARGS__)

/* Serves the project's model found at path: an adapter registered on the
 * base under the model's engine key, or a full model's engine. */
static int serve_located(api_server *srv, const char *project, const char *model, const char *path,
                         const char *kind, bool may_load, api_target *out, engine_error *why)
{
    char key[API_ENGINE_KEY_MAX], err[512] = "";
    api_engine_key_of(project, model, key, sizeof key);
    bool adapter = strcmp(kind, "adapter") == 0;
    if (!may_load && !(adapter ? engine_adapter_resident(srv->engine, key) : engine_pool_resident(srv->fulls, key)))
        return RT_ERR_BUSY;
    int rc;
    if (adapter) {
        rc = engine_adapter_add(srv->engine, key, path, err, sizeof err);
        if (rc == RT_OK || rc == RT_ERR_EXISTS) {
            out->engine = srv->engine;
            snprintf(out->adapter, sizeof out->adapter, "%s", key);
            return RT_OK;
        }
    } else {
        rc = engine_pool_acquire(srv->fulls, key, path, &out->engine, &out->full, err, sizeof err);
        if (rc == RT_OK)
            return RT_OK;
    }
    rt_log(RT_LOG_ERROR, "cannot load model %s from %s: %s", model, path, err);
    return refusal(why, RT_ERR_IO, "The model '%s' could not be loaded: %s", model, err);
}

int api_catalog_load(api_server *srv, const char *project, const char *model, bool may_load,
                     api_target *out, engine_error *why)
{
    const api_config *cfg = &srv->cfg;
    char path[1024];
    const char *kind = NULL;
    memset(out, 0, sizeof *out);
    if (!srv->engine)
        return refusal(why, RT_ERR_STATE, "This server was started without a model to serve.");
    if (cfg->model_id && strcmp(model, cfg->model_id) == 0) {
        out->engine = srv->engine;
        return RT_OK;
    }
    if (locate(srv, project, model, path, sizeof path, &kind))
        return serve_located(srv, project, model, path, kind, may_load, out, why);
    if (shared_adapter(srv, model)) {
        if (!may_load && !engine_adapter_resident(srv->engine, model))
            return RT_ERR_BUSY;
        out->engine = srv->engine;
        snprintf(out->adapter, sizeof out->adapter, "%s", model);
        return RT_OK;
    }
    return refusal(why, RT_ERR_NOT_FOUND, "The model '%s' does not exist.", model);
}

/* The catalog: what serves `model` for the caller (see api_internal.h). */
int api_catalog_resolve(api_request *req, const char *model, bool may_load, api_target *out, engine_error *why)
{
    return api_catalog_load(req->srv, api_project(req), model, may_load, out, why);
}

void api_target_release(api_server *srv, api_target *t)
{
    if (t->full)
        engine_pool_release(srv->fulls, t->full);
    t->full = NULL;
}

void api_model_release(api_request *req, api_target *t)
{
    api_target_release(req->srv, t);
}

void api_model_published(api_server *srv, const char *project, const char *name, const char *kind,
                         const char *dir)
{
    char err[512] = "", key[API_ENGINE_KEY_MAX];
    if (!srv || !srv->engine || strcmp(kind, "adapter"))
        return;
    api_engine_key_of(project, name, key, sizeof key);
    int rc = engine_adapter_add(srv->engine, key, dir, err, sizeof err);
    if (rc == RT_OK)
        rt_log(RT_LOG_INFO, "model %s registered for serving", name);
    else if (rc != RT_ERR_EXISTS) /* the first request will try again, and say why */
        rt_log(RT_LOG_WARN, "model %s could not be registered: %s", name, err);
}
