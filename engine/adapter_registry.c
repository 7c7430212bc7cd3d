/*
 * engine/adapter_registry.c — the serving engine's named LoRA adapters.
 *
 * An adapter is validated against the base model when it is added (config,
 * tensor names, shapes, dtypes: nothing that could fail later except the
 * disk itself), and its weights are loaded on first use by the thread that
 * submits the request (never the engine thread), so a slow load delays only
 * the requests that need that adapter. Resident weights form an LRU bounded
 * by bytes; a request pins its adapter from submit to finish, and pinned
 * entries are never evicted or freed. Removing a name unlinks it at once;
 * the entry itself is freed by whoever drops its last pin.
 *
 * One mutex guards the list; lora_load and lora_free run outside it.
 */
#include "engine/infer.h"
#include "common/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

struct adapter_entry {
    char *name, *dir;          /* owned copies */
    peft_config pc;
    size_t bytes;              /* weight bytes once resident */
    lora *weights;             /* NULL until loaded, and again once evicted */
    int pins;                  /* requests using it (plus a loader) */
    bool loading, removed;
    uint64_t last_use;         /* LRU clock */
    adapter_entry *next;
};

struct adapter_registry {
    model_config cfg;
    const kernels_backend *be;
    size_t budget, resident;
    int n_resident;
    uint64_t clock;
    adapter_entry *head;       /* every entry, removed ones until unpinned */
    pthread_mutex_t mu;
    pthread_cond_t loaded;     /* a load finished */
};

/* An empty registry; see engine/infer.h. */
int adapter_registry_create(const model_config *cfg, const kernels_backend *be,
                            size_t budget_bytes, adapter_registry **out)
{
    adapter_registry *r = calloc(1, sizeof *r);
    if (!r)
        return RT_ERR_NOMEM;
    r->cfg = *cfg;
    r->be = be;
    r->budget = budget_bytes;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->loaded, NULL);
    *out = r;
    return RT_OK;
}

/* Frees an unlinked entry and its weights. */
static void entry_free(adapter_entry *e)
{
    if (!e)
        return;
    lora_free(e->weights);
    free(e->name);
    free(e->dir);
    free(e);
}

/* Frees every entry (none may be pinned) and the registry. */
void adapter_registry_free(adapter_registry *r)
{
    if (!r)
        return;
    for (adapter_entry *e = r->head, *next; e; e = next) {
        next = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->loaded);
    free(r);
}

/* ---- validation --------------------------------------------------------- */

/* Reads and checks dir's config and tensor headers; *pc on success. */
static int validate(const model_config *c, const char *dir, peft_config *pc, char *err,
                    size_t errsize)
{
    char path[4096];
    int rc = peft_config_load(dir, pc, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir) >= (int)sizeof path)
        return rt_fail(err, errsize, RT_ERR_INVALID, "adapter path is too long");
    sft_file *f = NULL;
    rc = sft_file_open(path, &f, err, errsize);
    if (rc != RT_OK)
        return rc;
    bool *seen = calloc(2 * (size_t)c->num_hidden_layers * PEFT_MODULE_COUNT, sizeof *seen);
    rc = seen ? RT_OK : RT_ERR_NOMEM;
    for (size_t i = 0; rc == RT_OK && i < sft_tensor_count(f); i++) {
        size_t slot;
        char which;
        rc = lora_check_tensor(c, pc, sft_tensor_at(f, i), &slot, &which, err, errsize);
        if (rc == RT_OK)
            seen[2 * slot + (which == 'B')] = true;
    }
    if (rc == RT_OK)
        rc = lora_check_complete(c, pc, seen, err, errsize);
    free(seen);
    sft_file_close(f);
    return rc;
}

/* Checks dir against cfg without registering it. */
int adapter_validate(const model_config *cfg, const char *dir, char *err, size_t errsize)
{
    peft_config pc;
    return validate(cfg, dir, &pc, err, errsize);
}

/* Weight bytes of an adapter with config pc on the model c. */
static size_t weight_bytes(const model_config *c, const peft_config *pc)
{
    size_t n = 0;
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int o, in;
        model_module_shape(c, (enum peft_module)m, &o, &in);
        if ((pc->target_modules >> m) & 1u)
            n += (size_t)pc->r * (size_t)(o + in);
    }
    return n * (size_t)c->num_hidden_layers * sizeof(float);
}

/* ---- the list ----------------------------------------------------------- */

/* The live (not removed) entry called name; caller holds mu. */
static adapter_entry *find(adapter_registry *r, const char *name)
{
    for (adapter_entry *e = r->head; e; e = e->next)
        if (!e->removed && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* Unlinks e from the list; caller holds mu. */
static void unlink_entry(adapter_registry *r, adapter_entry *e)
{
    for (adapter_entry **p = &r->head; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            return;
        }
}

/* Validates (outside the lock), then inserts under a unique name. */
int adapter_registry_add(adapter_registry *r, const char *name, const char *dir, char *err,
                         size_t errsize)
{
    if (!name || !*name || !dir)
        return rt_fail(err, errsize, RT_ERR_INVALID, "adapter name and directory are required");
    peft_config pc;
    int rc = validate(&r->cfg, dir, &pc, err, errsize);
    if (rc != RT_OK)
        return rc;
    adapter_entry *e = calloc(1, sizeof *e);
    if (!e || !(e->name = strdup(name)) || !(e->dir = strdup(dir))) {
        entry_free(e);
        return RT_ERR_NOMEM;
    }
    e->pc = pc;
    e->bytes = weight_bytes(&r->cfg, &pc);
    pthread_mutex_lock(&r->mu);
    bool taken = find(r, name) != NULL;
    if (!taken) {
        e->next = r->head;
        r->head = e;
    }
    pthread_mutex_unlock(&r->mu);
    if (taken) {
        entry_free(e);
        return rt_fail(err, errsize, RT_ERR_EXISTS, "an adapter called %s is already registered",
                       name);
    }
    return RT_OK;
}

/* Takes e's weights away (counted out of the resident bytes) for the caller
 * to free outside the lock; caller holds mu. */
static lora *take_weights(adapter_registry *r, adapter_entry *e)
{
    lora *w = e->weights;
    if (w) {
        r->resident -= e->bytes;
        r->n_resident--;
        e->weights = NULL;
    }
    return w;
}

/* Unlinks name; frees it now when unpinned, else at the last release. */
int adapter_registry_remove(adapter_registry *r, const char *name)
{
    if (!name)
        return RT_ERR_INVALID;
    adapter_entry *dead = NULL;
    lora *w = NULL;
    pthread_mutex_lock(&r->mu);
    adapter_entry *e = find(r, name);
    bool found = e != NULL;
    if (e) {
        e->removed = true;
        if (e->pins == 0) {
            w = take_weights(r, e);
            unlink_entry(r, e);
            dead = e;
        }
    }
    pthread_mutex_unlock(&r->mu);
    lora_free(w);
    entry_free(dead);
    return found ? RT_OK : RT_ERR_NOT_FOUND;
}

/* Whether a live entry is called name. */
bool adapter_registry_exists(adapter_registry *r, const char *name)
{
    if (!name)
        return false;
    pthread_mutex_lock(&r->mu);
    bool found = find(r, name) != NULL;
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* Whether a live entry is called name and its weights are in memory. */
bool adapter_registry_resident(adapter_registry *r, const char *name)
{
    if (!name)
        return false;
    pthread_mutex_lock(&r->mu);
    adapter_entry *e = find(r, name);
    bool resident = e && e->weights;
    pthread_mutex_unlock(&r->mu);
    return resident;
}

/* Evicts least recently used unpinned resident entries while over budget,
 * putting their weights (at most cap) into out for the caller to free
 * outside the lock; returns how many. Caller holds mu. */
static int evict(adapter_registry *r, lora **out, int cap)
{
    int n = 0;
    while (r->resident > r->budget && n < cap) {
        adapter_entry *lru = NULL;
        for (adapter_entry *e = r->head; e; e = e->next)
            if (e->weights && e->pins == 0 && (!lru || e->last_use < lru->last_use))
                lru = e;
        if (!lru)
            break;
        out[n++] = take_weights(r, lru);
    }
    return n;
}

/* Loads e's weights in the calling thread, e pinned and marked loading;
 * called and returns with mu held. */
static int load_pinned(adapter_registry *r, adapter_entry *e, char *err, size_t errsize)
{
    lora *w = NULL;
    e->loading = true;
    pthread_mutex_unlock(&r->mu);
    int rc = lora_load(e->dir, &r->cfg, r->be, &w, err, errsize);
    pthread_mutex_lock(&r->mu);
    e->loading = false;
    if (rc == RT_OK) {
        e->weights = w;
        r->resident += e->bytes;
        r->n_resident++;
        rt_metric_add(RT_METRIC_ADAPTER_LOADS, 1);
    }
    pthread_cond_broadcast(&r->loaded);
    return rc;
}

/* Pin, load when not resident (once, others wait), evict over budget. */
int adapter_registry_acquire(adapter_registry *r, const char *name, adapter_entry **out,
                             char *err, size_t errsize)
{
    lora *victims[16];
    int n_victims = 0, rc = RT_OK;
    pthread_mutex_lock(&r->mu);
    adapter_entry *e = name ? find(r, name) : NULL;
    if (!e) {
        pthread_mutex_unlock(&r->mu);
        return rt_fail(err, errsize, RT_ERR_NOT_FOUND, "no adapter called %s",
                       name ? name : "(null)");
    }
    e->pins++;
    while (e->loading)
        pthread_cond_wait(&r->loaded, &r->mu);
    if (!e->weights)
        rc = load_pinned(r, e, err, errsize);
    e->last_use = ++r->clock;
    if (rc == RT_OK)
        n_victims = evict(r, victims, 16);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < n_victims; i++)
        lora_free(victims[i]);
    if (rc != RT_OK) {
        adapter_registry_release(r, e);
        return rc;
    }
    *out = e;
    return RT_OK;
}

/* Unpin; free a removed entry with its last pin; evict over budget. */
void adapter_registry_release(adapter_registry *r, adapter_entry *e)
{
    if (!e)
        return;
    lora *victims[16];
    int n_victims = 0;
    adapter_entry *dead = NULL;
    pthread_mutex_lock(&r->mu);
    e->pins--;
    e->last_use = ++r->clock;
    if (e->pins == 0 && e->removed) {
        victims[n_victims++] = take_weights(r, e);
        unlink_entry(r, e);
        dead = e;
    }
    n_victims += evict(r, victims + n_victims, 16 - n_victims);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < n_victims; i++)
        lora_free(victims[i]);
    entry_free(dead);
}

/* The weights of a pinned entry. */
const lora *adapter_entry_lora(const adapter_entry *e) { return e->weights; }

/* Resident bytes and entries, under the lock. */
void adapter_registry_usage(adapter_registry *r, size_t *bytes, int *resident)
{
    pthread_mutex_lock(&r->mu);
    if (bytes)
        *bytes = r->resident;
    if (resident)
        *resident = r->n_resident;
    pthread_mutex_unlock(&r->mu);
}
