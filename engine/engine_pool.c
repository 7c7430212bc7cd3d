/*
 * engine/engine_pool.c — the engines of full fine-tuned models: each needs
 * an engine of its own (its weights are not the base's). They are opened on
 * first use, shared by every request naming them (reference counted) and
 * closed least recently used first when the resident ones exceed the
 * memory budget and nobody uses them. Adapters need none of this: they ride
 * on the base engine. See engine_serve.h.
 */
#include "engine/engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct engine_pool_entry {
    char name[1024];            /* the caller's key for the model */
    engine_server *eng;
    int refs;
    bool forgotten;          /* deleted: close when the last user is done */
    size_t bytes;
    double last_used;
    engine_pool_entry *next;
};

struct engine_pool {
    engine_pool_config cfg;
    char device[64];         /* cfg.device's copy */
    pthread_mutex_t lock;    /* guards the list and every entry's refs */
    engine_pool_entry *list;
};

int engine_pool_new(const engine_pool_config *cfg, engine_pool **out)
{
    engine_pool *p = calloc(1, sizeof *p);
    if (!p)
        return RT_ERR_NOMEM;
    p->cfg = *cfg;
    if (cfg->device) {
        snprintf(p->device, sizeof p->device, "%s", cfg->device);
        p->cfg.device = p->device;
    }
    pthread_mutex_init(&p->lock, NULL);
    *out = p;
    return RT_OK;
}

/* Bytes of a model directory's weights (what it will occupy, roughly). */
static size_t weights_bytes(const char *dir)
{
    char path[1200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return stat(path, &sb) == 0 ? (size_t)sb.st_size : 0;
}

/* Unlinks e from the list (lock held). */
static void unlink_entry(engine_pool *p, engine_pool_entry *e)
{
    for (engine_pool_entry **at = &p->list; *at; at = &(*at)->next)
        if (*at == e) {
            *at = e->next;
            return;
        }
}

/* Picks unused engines to close until the resident total fits the budget;
 * moves them to *victims (lock held). */
static void evict(engine_pool *p, engine_pool_entry **victims)
{
    for (;;) {
        size_t total = 0;
        engine_pool_entry *lru = NULL;
        for (engine_pool_entry *e = p->list; e; e = e->next) {
            total += e->bytes;
            if (e->refs == 0 && (!lru || e->last_used < lru->last_used))
                lru = e;
        }
        if (total <= p->cfg.budget_bytes || !lru)
            return;
        unlink_entry(p, lru);
        lru->next = *victims;
        *victims = lru;
    }
}

static void close_all(engine_pool_entry *list)
{
    while (list) {
        engine_pool_entry *next = list->next;
        engine_server_close(list->eng);
        free(list);
        list = next;
    }
}

/* Finds name (lock held) and takes a reference. */
static engine_pool_entry *find_and_hold(engine_pool *p, const char *name)
{
    for (engine_pool_entry *e = p->list; e; e = e->next)
        if (!e->forgotten && strcmp(e->name, name) == 0) {
            e->refs++;
            e->last_used = rt_now_seconds();
            return e;
        }
    return NULL;
}

/* A new entry for name with its engine open (outside the lock: loading a
 * model takes a while). */
static int open_entry(engine_pool *p, const char *name, const char *dir, engine_pool_entry **out,
                      char *err, size_t errsize)
{
    engine_pool_entry *fresh = calloc(1, sizeof *fresh);
    if (!fresh)
        return RT_ERR_NOMEM;
    engine_server_config ec = {.model_dir = dir, .device = p->cfg.device,
                               .special_tokens_in_text = p->cfg.special_tokens_in_text};
    int rc = engine_server_open(&ec, &fresh->eng, err, errsize);
    if (rc != RT_OK) {
        free(fresh);
        return rc;
    }
    snprintf(fresh->name, sizeof fresh->name, "%s", name);
    fresh->bytes = weights_bytes(dir);
    fresh->refs = 1;
    fresh->last_used = rt_now_seconds();
    *out = fresh;
    return RT_OK;
}

int engine_pool_acquire(engine_pool *p, const char *name, const char *dir, engine_server **eng,
                        engine_pool_entry **held, char *err, size_t errsize)
{
    pthread_mutex_lock(&p->lock);
    engine_pool_entry *e = find_and_hold(p, name);
    pthread_mutex_unlock(&p->lock);
    if (!e) {
        engine_pool_entry *fresh = NULL, *victims = NULL;
        int rc = open_entry(p, name, dir, &fresh, err, errsize);
        if (rc != RT_OK)
            return rc;
        pthread_mutex_lock(&p->lock);
        e = find_and_hold(p, name); /* another request may have won the race */
        if (!e) {
            fresh->next = p->list;
            p->list = e = fresh;
            fresh = NULL;
        }
        evict(p, &victims);
        pthread_mutex_unlock(&p->lock);
        if (fresh) {
            engine_server_close(fresh->eng);
            free(fresh);
        }
        close_all(victims);
    }
    *eng = e->eng;
    *held = e;
    return RT_OK;
}

void engine_pool_release(engine_pool *p, engine_pool_entry *e)
{
    engine_pool_entry *victims = NULL;
    pthread_mutex_lock(&p->lock);
    e->refs--;
    if (e->forgotten && e->refs == 0) {
        unlink_entry(p, e);
        e->next = NULL;
        victims = e;
    } else {
        evict(p, &victims);
    }
    pthread_mutex_unlock(&p->lock);
    close_all(victims);
}

bool engine_pool_resident(engine_pool *p, const char *name)
{
    bool found = false;
    pthread_mutex_lock(&p->lock);
    for (engine_pool_entry *e = p->list; e && !found; e = e->next)
        found = !e->forgotten && strcmp(e->name, name) == 0;
    pthread_mutex_unlock(&p->lock);
    return found;
}

void engine_pool_forget(engine_pool *p, const char *name)
{
    engine_pool_entry *victims = NULL;
    pthread_mutex_lock(&p->lock);
    for (engine_pool_entry *e = p->list; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            e->forgotten = true;
    for (engine_pool_entry *e = p->list, *next; e; e = next) {
        next = e->next;
        if (e->forgotten && e->refs == 0) {
            unlink_entry(p, e);
            e->next = victims;
            victims = e;
        }
    }
    pthread_mutex_unlock(&p->lock);
    close_all(victims);
}

void engine_pool_free(engine_pool *p)
{
    if (!p)
        return;
    close_all(p->list);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
