/*
 * api/engines.c — full fine-tuned models each need an engine of their own
 * (their weights are not the base's). They are opened on first use, shared
 * by every request naming them (reference counted) and closed least
 * recently used first when the resident ones exceed the memory budget and
 * nobody uses them. Adapters need none of this: they ride on the base engine.
 */
#include "api/api_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct api_full_engine {
    char name[API_ENGINE_KEY_MAX]; /* its engine key (api_engine_key) */
    engine_server *eng;
    int refs;
    bool forgotten;          /* deleted: close when the last user is done */
    size_t bytes;
    double last_used;
    struct api_full_engine *next;
};

/* Bytes of a model directory's weights (what it will occupy, roughly). */
static size_t weights_bytes(const char *dir)
{
    char path[1200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return stat(path, &sb) == 0 ? (size_t)sb.st_size : 0;
}

/* Unlinks e from the list (lock held). */
static void unlink_entry(api_server *srv, api_full_engine *e)
{
    for (api_full_engine **p = &srv->fulls; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            return;
        }
}

/* Picks unused engines to close until the resident total fits the budget;
 * moves them to *victims (lock held). */
static void evict(api_server *srv, api_full_engine **victims)
{
    for (;;) {
        size_t total = 0;
        api_full_engine *lru = NULL;
        for (api_full_engine *e = srv->fulls; e; e = e->next) {
            total += e->bytes;
            if (e->refs == 0 && (!lru || e->last_used < lru->last_used))
                lru = e;
        }
        if (total <= srv->cfg.full_model_budget_bytes || !lru)
            return;
        unlink_entry(srv, lru);
        lru->next = *victims;
        *victims = lru;
    }
}

static void close_all(api_full_engine *list)
{
    while (list) {
        api_full_engine *next = list->next;
        engine_server_close(list->eng);
        free(list);
        list = next;
    }
}

/* Finds name (lock held) and takes a reference. */
static api_full_engine *find_and_hold(api_server *srv, const char *name)
{
    for (api_full_engine *e = srv->fulls; e; e = e->next)
        if (!e->forgotten && strcmp(e->name, name) == 0) {
            e->refs++;
            e->last_used = rt_now_seconds();
            return e;
        }
    return NULL;
}

int api_engines_acquire(api_server *srv, const char *name, const char *dir, engine_server **eng,
                        api_full_engine **handle, char *err, size_t errsize)
{
    pthread_mutex_lock(&srv->lock);
    api_full_engine *e = find_and_hold(srv, name);
    pthread_mutex_unlock(&srv->lock);
    if (!e) {
        /* Open outside the lock: loading a model takes a while. */
        api_full_engine *fresh = calloc(1, sizeof *fresh);
        if (!fresh)
            return RT_ERR_NOMEM;
        engine_server_config ec = {.model_dir = dir, .device = srv->cfg.device,
                                   .special_tokens_in_text = srv->cfg.special_tokens_in_text};
        int rc = engine_server_open(&ec, &fresh->eng, err, errsize);
        if (rc != RT_OK) {
            free(fresh);
            return rc;
        }
        snprintf(fresh->name, sizeof fresh->name, "%s", name);
        fresh->bytes = weights_bytes(dir);
        fresh->refs = 1;
        fresh->last_used = rt_now_seconds();
        api_full_engine *victims = NULL;
        pthread_mutex_lock(&srv->lock);
        e = find_and_hold(srv, name); /* another request may have won the race */
        if (!e) {
            fresh->next = srv->fulls;
            srv->fulls = e = fresh;
            fresh = NULL;
        }
        evict(srv, &victims);
        pthread_mutex_unlock(&srv->lock);
        if (fresh) {
            engine_server_close(fresh->eng);
            free(fresh);
        }
        close_all(victims);
    }
    *eng = e->eng;
    *handle = e;
    return RT_OK;
}

void api_engines_release(api_server *srv, api_full_engine *e)
{
    api_full_engine *victims = NULL;
    pthread_mutex_lock(&srv->lock);
    e->refs--;
    if (e->forgotten && e->refs == 0) {
        unlink_entry(srv, e);
        e->next = NULL;
        victims = e;
    } else {
        evict(srv, &victims);
    }
    pthread_mutex_unlock(&srv->lock);
    close_all(victims);
}

void api_engines_forget(api_server *srv, const char *name)
{
    if (srv->engine && engine_adapter_exists(srv->engine, name))
        engine_adapter_remove(srv->engine, name);
    api_full_engine *victims = NULL;
    pthread_mutex_lock(&srv->lock);
    for (api_full_engine *e = srv->fulls; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            e->forgotten = true;
    for (api_full_engine *e = srv->fulls, *next; e; e = next) {
        next = e->next;
        if (e->forgotten && e->refs == 0) {
            unlink_entry(srv, e);
            e->next = victims;
            victims = e;
        }
    }
    pthread_mutex_unlock(&srv->lock);
    close_all(victims);
}

void api_engines_close_all(api_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    api_full_engine *all = srv->fulls;
    srv->fulls = NULL;
    pthread_mutex_unlock(&srv->lock);
    close_all(all);
}
