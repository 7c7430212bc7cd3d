/*
 * api/adapters.c — POST /v1/adapters: imports a PEFT adapter made elsewhere
 * (multipart parts adapter_config.json and adapter_model.safetensors,
 * optional `name`). The parts stream into a temporary folder under
 * <data-dir>/adapters/; the adapter is checked against the base model
 * (modules, shapes) by the engine and, if it fits, published under its name
 * and served at once. A 400 says what does not fit.
 *
 * The adapter belongs to the caller's project: its name need only be free
 * there (another project's model of that name is neither seen nor hinted
 * at), and the engine knows it by its engine key (api_engine_key).
 */
#include "api/api_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAD "invalid_request_error"

enum { PART_CONFIG, PART_WEIGHTS, PART_COUNT };
static const char *const part_files[PART_COUNT] = {"adapter_config.json", "adapter_model.safetensors"};

typedef struct import {
    api_multipart mp;
    char dir[1024];            /* the temporary folder */
    int fd[PART_COUNT];
    bool seen[PART_COUNT];
    int current;               /* part being written, -1 none */
    char name[256];
    size_t name_len;
    bool name_bad, io_error, bad_multipart;
} import;

static void import_free(void *p)
{
    import *im = p;
    if (!im)
        return;
    api_multipart_close(&im->mp);
    for (int i = 0; i < PART_COUNT; i++)
        if (im->fd[i] >= 0)
            close(im->fd[i]);
    if (im->dir[0])
        rt_remove_tree(im->dir);
    free(im);
}

/* Which part a form field is: by field name or by file name. */
static int part_of(const char *key, const char *filename)
{
    for (int i = 0; i < PART_COUNT; i++)
        if (!strcmp(key, part_files[i]) || (filename && !strcmp(filename, part_files[i])))
            return i;
    return -1;
}

static void write_all(import *im, int fd, const char *data, size_t size)
{
    while (size > 0 && !im->io_error) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            im->io_error = true;
        else {
            data += n;
            size -= (size_t)n;
        }
    }
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    import *im = cls;
    if (!strcmp(key, "name")) {
        if (im->name_len + size >= sizeof im->name)
            im->name_bad = true;
        else {
            memcpy(im->name + im->name_len, data, size);
            im->name_len += size;
            im->name[im->name_len] = '\0';
        }
        return MHD_YES;
    }
    int part = part_of(key, filename);
    if (part < 0)
        return MHD_YES;
    if (off == 0 && im->fd[part] < 0) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s", im->dir, part_files[part]);
        im->fd[part] = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        im->seen[part] = true;
        if (im->fd[part] < 0)
            im->io_error = true;
    }
    if (im->fd[part] >= 0)
        write_all(im, im->fd[part], data, size);
    return MHD_YES;
}

int api_adapters_import_chunk(api_request *req, const char *data, size_t len)
{
    import *im = req->state;
    if (!im) {
        im = calloc(1, sizeof *im);
        if (!im)
            return RT_ERR_NOMEM;
        im->fd[0] = im->fd[1] = -1;
        req->state = im;
        req->state_free = import_free;
        int rc = storage_work_dir(req->srv->st, STORAGE_WORK_IMPORT, NULL, im->dir, sizeof im->dir);
        if (rc != RT_OK) {
            im->dir[0] = '\0';
            return rc;
        }
        im->bad_multipart = !api_multipart_open(&im->mp, req->conn, on_part, im);
    }
    if (!im->bad_multipart && !api_multipart_feed(&im->mp, data, len))
        im->bad_multipart = true;
    return RT_OK;
}

/* A model name: 1..200 of [A-Za-z0-9._:-], not starting with '.'. */
static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 200 || s[0] == '.')
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            return false;
    return true;
}

/* Closes the part files (flushing them to disk); false on an I/O error. */
static bool finish_parts(import *im)
{
    for (int i = 0; i < PART_COUNT; i++) {
        if (im->fd[i] >= 0 && (fsync(im->fd[i]) != 0 || close(im->fd[i]) != 0))
            im->io_error = true;
        im->fd[i] = -1;
    }
    return !im->io_error;
}

/* Checks the form; answers 400 and returns false when something is wrong. */
static bool check_form(api_request *req, import *im)
{
    if (!im || im->bad_multipart)
        return api_respond_error(req, 400, BAD, "file", "invalid_multipart",
                                 "The multipart/form-data body could not be parsed."), false;
    for (int i = 0; i < PART_COUNT; i++)
        if (!im->seen[i])
            return api_respond_error(req, 400, BAD, part_files[i], "missing_required_parameter",
                                     "Missing required part: '%s'.", part_files[i]), false;
    if (!im->name[0])
        storage_new_id("adapter", im->name, sizeof im->name);
    if (im->name_bad || !name_valid(im->name))
        return api_respond_error(req, 400, BAD, "name", "invalid_value",
                                 "'name' must be 1 to 200 of letters, digits, '.', '_', ':', '-'."), false;
    storage_model m;
    const char *base = req->srv->cfg.model_id;
    if ((base && !strcmp(base, im->name)) ||
        storage_model_get(req->srv->st, api_project(req), im->name, &m) == RT_OK ||
        (req->srv->engine && engine_adapter_exists(req->srv->engine, im->name))) /* a --lora one */
        return api_respond_error(req, 400, BAD, "name", "model_exists",
                                 "A model named '%s' already exists.", im->name), false;
    return true;
}

/* Checking an imported adapter against the base, publishing and
 * registering it: slow work (it reads every tensor), done off the event
 * loop (api/offload.c). The folder is the work's from the start: removed
 * here unless published. */
typedef struct adapter_publish {
    api_server *srv;
    char dir[1024], key[API_ENGINE_KEY_MAX], err[512];
    storage_model m;
    int rc;
    bool mismatch;     /* rc is the engine's verdict on the adapter itself */
} adapter_publish;

static void publish_work(void *arg)
{
    adapter_publish *w = arg;
    engine_server *eng = w->srv->engine;
    /* Checked against the base where it lies, then published, then served from there. */
    w->rc = engine_adapter_add(eng, w->key, w->dir, w->err, sizeof w->err);
    w->mismatch = w->rc != RT_OK;
    if (w->rc != RT_OK)
        return;
    engine_adapter_remove(eng, w->key);
    char id[STORAGE_ID_MAX];
    storage_new_id("adapter", id, sizeof id);
    w->rc = storage_model_publish(w->srv->st, w->dir, id, false, &w->m);
    if (w->rc != RT_OK)
        return;
    w->dir[0] = '\0'; /* published: no longer ours to clean up */
    w->rc = engine_adapter_add(eng, w->key, w->m.path, w->err, sizeof w->err);
    if (w->rc != RT_OK) { /* it fitted a moment ago: only a vanished directory gets here */
        storage_model_delete(w->srv->st, w->m.owned_by, w->m.id);
        rt_remove_tree(w->m.path);
    }
}

static void publish_free(void *arg)
{
    adapter_publish *w = arg;
    if (w->dir[0])
        rt_remove_tree(w->dir);
    free(w);
}

static int published(api_request *req, void *arg)
{
    adapter_publish *w = arg;
    if (w->mismatch)
        return api_respond_error(req, 400, BAD, w->rc == RT_ERR_EXISTS ? "name" : "adapter_model.safetensors",
                                 "adapter_mismatch", "The adapter does not fit the base model: %s", w->err);
    if (w->rc == RT_ERR_EXISTS)
        return api_respond_error(req, 400, BAD, "name", "model_exists",
                                 "A model named '%s' already exists.", w->m.id);
    if (w->rc != RT_OK)
        return w->rc;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", w->m.id);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double)rt_unix_time());
    cJSON_AddStringToObject(o, "owned_by", w->m.owned_by);
    cJSON_AddStringToObject(o, "parent", w->m.parent);
    cJSON_AddStringToObject(o, "kind", "adapter");
    return api_respond_json(req, 200, o);
}

int api_adapters_import(api_request *req)
{
    import *im = req->state;
    if (im && im->mp.pp && !api_multipart_finish(&im->mp))
        im->bad_multipart = true;
    if (!req->srv->engine)
        return api_respond_error(req, 503, "server_error", NULL, "no_model",
                                 "This server was started without a base model.");
    if (!check_form(req, im))
        return RT_OK;
    if (!finish_parts(im))
        return RT_ERR_IO;
    adapter_publish *w = calloc(1, sizeof *w);
    if (!w)
        return RT_ERR_NOMEM;
    w->srv = req->srv;
    snprintf(w->dir, sizeof w->dir, "%s", im->dir);
    im->dir[0] = '\0';
    api_engine_key(req, im->name, w->key, sizeof w->key);
    snprintf(w->m.id, sizeof w->m.id, "%s", im->name);
    snprintf(w->m.kind, sizeof w->m.kind, "adapter");
    snprintf(w->m.parent, sizeof w->m.parent, "%s", req->srv->cfg.model_id ? req->srv->cfg.model_id : "");
    snprintf(w->m.owned_by, sizeof w->m.owned_by, "%s", api_project(req));
    return api_offload_start(req, publish_work, published, w, publish_free);
}
