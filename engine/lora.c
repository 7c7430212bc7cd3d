/*
 * engine/lora.c — LoRA adapters as PEFT defines them: A [r, in] and B [out, r]
 * per targeted module and layer, y = W x + scaling * B (A dropout(x)). One
 * device allocation holds every A and B; files are PEFT's
 * adapter_config.json + adapter_model.safetensors.
 */
#include "engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/rng.h"
#include "engine/safetensors.h"

static bool targeted(const peft_config *pc, int m) { return (pc->target_modules >> m) & 1u; }

/* A new adapter uid: 1, 2, ... for the life of the process. */
static uint64_t next_uid(void)
{
    static atomic_uint_fast64_t last;
    return (uint64_t)atomic_fetch_add(&last, 1) + 1;
}

/* Allocates the shell, the buffer and the pointer tables for pc on c. */
static int lora_alloc(const model_config *c, const peft_config *pc, const kernels_backend *be,
                      lora **out)
{
    lora *l = calloc(1, sizeof *l);
    if (!l)
        return RT_ERR_NOMEM;
    l->uid = next_uid();
    l->be = be;
    l->cfg = *pc;
    l->scaling = peft_scaling(pc);
    l->n_layers = c->num_hidden_layers;
    size_t slots = (size_t)l->n_layers * PEFT_MODULE_COUNT;
    l->a = calloc(slots, sizeof *l->a);
    l->b = calloc(slots, sizeof *l->b);
    int rc = l->a && l->b ? RT_OK : RT_ERR_NOMEM;
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int o, i;
        model_module_shape(c, (enum peft_module)m, &o, &i);
        if (targeted(pc, m))
            l->n_params += (size_t)l->n_layers * (size_t)pc->r * (size_t)(o + i);
    }
    if (rc == RT_OK && l->n_params == 0)
        rc = RT_ERR_INVALID;
    if (rc == RT_OK)
        rc = be->alloc((void **)&l->params, l->n_params * sizeof(float));
    if (rc != RT_OK) {
        lora_free(l);
        return rc;
    }
    float *p = l->params;
    for (int layer = 0; layer < l->n_layers; layer++)
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            if (!targeted(pc, m))
                continue;
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            size_t s = (size_t)layer * PEFT_MODULE_COUNT + (size_t)m;
            l->a[s] = p;
            p += (size_t)pc->r * (size_t)i;
            l->b[s] = p;
            p += (size_t)o * (size_t)pc->r;
        }
    *out = l;
    return RT_OK;
}

void lora_free(lora *l)
{
    if (!l)
        return;
    if (l->be)
        l->be->free(l->params);
    free(l->a);
    free(l->b);
    free(l);
}

int lora_create(const model_config *c, const peft_config *pc, const kernels_backend *be,
                uint64_t seed, lora **out)
{
    lora *l = NULL;
    int rc = lora_alloc(c, pc, be, &l);
    if (rc != RT_OK)
        return rc;
    float *host = calloc(l->n_params, sizeof(float));
    if (!host) {
        lora_free(l);
        return RT_ERR_NOMEM;
    }
    /* kaiming_uniform_(a=sqrt(5)) on [r, in]: bound = 1/sqrt(in). B stays 0. */
    rng r = {seed};
    for (size_t s = 0; s < (size_t)l->n_layers * PEFT_MODULE_COUNT; s++) {
        if (!l->a[s])
            continue;
        int o, in;
        model_module_shape(c, (enum peft_module)(s % PEFT_MODULE_COUNT), &o, &in);
        float bound = 1.0f / sqrtf((float)in);
        float *a = host + (l->a[s] - l->params);
        for (size_t k = 0; k < (size_t)pc->r * (size_t)in; k++)
            a[k] = (2.0f * rng_uniform(&r) - 1.0f) * bound;
    }
    rc = be->copy_to_device(l->params, host, l->n_params * sizeof(float), NULL);
    free(host);
    if (rc != RT_OK) {
        lora_free(l);
        return rc;
    }
    *out = l;
    return RT_OK;
}

int lora_clone_zero(const lora *src, lora **out)
{
    const kernels_backend *be = src->be;
    lora *l = calloc(1, sizeof *l);
    if (!l)
        return RT_ERR_NOMEM;
    *l = *src;
    l->uid = next_uid();
    size_t slots = (size_t)src->n_layers * PEFT_MODULE_COUNT;
    l->a = calloc(slots, sizeof *l->a);
    l->b = calloc(slots, sizeof *l->b);
    l->params = NULL;
    int rc = l->a && l->b ? be->alloc((void **)&l->params, l->n_params * sizeof(float)) : RT_ERR_NOMEM;
    if (rc == RT_OK)
        rc = be->zero(l->params, l->n_params * sizeof(float), NULL);
    if (rc != RT_OK) {
        lora_free(l);
        return rc;
    }
    for (size_t s = 0; s < slots; s++) {
        if (src->a[s])
            l->a[s] = l->params + (src->a[s] - src->params);
        if (src->b[s])
            l->b[s] = l->params + (src->b[s] - src->params);
    }
    *out = l;
    return RT_OK;
}

int lora_check_tensor(const model_config *c, const peft_config *pc, const sft_tensor *t,
                      size_t *slot, char *which, char *err, size_t errsize)
{
    int layer, o, in;
    enum peft_module m;
    char ab;
    int rc = peft_key_parse(t->name, &layer, &m, &ab, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (layer >= c->num_hidden_layers)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: the base model has only %d layers",
                       t->name, c->num_hidden_layers);
    if (!targeted(pc, m))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: module %s is not in target_modules",
                       t->name, peft_module_name(m));
    model_module_shape(c, m, &o, &in);
    int64_t rows = ab == 'A' ? pc->r : o, cols = ab == 'A' ? in : pc->r;
    char shape[SFT_SHAPE_TEXT];
    if (t->rank != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s has shape %s; the base model and r=%d need [%lld, %lld]",
                       t->name, sft_shape_format(t, shape, sizeof shape), pc->r, (long long)rows, (long long)cols);
    if (t->dtype != SFT_F32 && t->dtype != SFT_F16 && t->dtype != SFT_BF16)
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: dtype %s cannot be loaded", t->name,
                       sft_dtype_name(t->dtype));
    *slot = (size_t)layer * PEFT_MODULE_COUNT + (size_t)m;
    *which = ab;
    return RT_OK;
}

int lora_check_complete(const model_config *c, const peft_config *pc, const bool *seen, char *err,
                        size_t errsize)
{
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            size_t s = (size_t)l * PEFT_MODULE_COUNT + (size_t)m;
            if (targeted(pc, m) && (!seen[2 * s] || !seen[2 * s + 1]))
                return rt_fail(err, errsize, RT_ERR_FORMAT, "adapter lacks lora_%c of layer %d %s",
                               seen[2 * s] ? 'B' : 'A', l, peft_module_name((enum peft_module)m));
        }
    return RT_OK;
}

/* Checks one adapter tensor against the base and copies it in. */
static int load_one(lora *l, const model_config *c, const sft_tensor *t, const kernels_backend *be,
                    float *staging, bool *seen, char *err, size_t errsize)
{
    size_t s;
    char which;
    int rc = lora_check_tensor(c, &l->cfg, t, &s, &which, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (seen[2 * s + (which == 'B')]) /* "x.weight" and "x.default.weight": which one is meant? */
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: lora_%c of layer %zu %s is given twice", t->name, which,
                       s / PEFT_MODULE_COUNT, peft_module_name((enum peft_module)(s % PEFT_MODULE_COUNT)));
    rc = sft_tensor_read_f32(t, staging, t->numel);
    if (rc != RT_OK)
        return rc;
    seen[2 * s + (which == 'B')] = true;
    return be->copy_to_device(which == 'A' ? l->a[s] : l->b[s], staging, t->numel * sizeof(float),
                              NULL);
}

int lora_load(const char *dir, const model_config *c, const kernels_backend *be, lora **out,
              char *err, size_t errsize)
{
    peft_config pc;
    if (err && errsize)
        err[0] = '\0';
    int rc = peft_config_load(dir, &pc, err, errsize);
    if (rc != RT_OK)
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    sft_file *f = NULL;
    lora *l = NULL;
    float *staging = NULL;
    bool *seen = NULL;
    rc = sft_file_open(path, &f, err, errsize);
    if (rc == RT_OK && (rc = lora_alloc(c, &pc, be, &l)) != RT_OK)
        rt_fail(err, errsize, rc, "%s: no memory for an adapter of rank %d (%s)", dir, pc.r, rt_strerror(rc));
    size_t slots = (size_t)c->num_hidden_layers * PEFT_MODULE_COUNT;
    size_t biggest = (size_t)pc.r * (size_t)(c->intermediate_size > c->hidden_size ? c->intermediate_size : c->hidden_size);
    if (rc == RT_OK && (size_t)pc.r * (size_t)(c->num_attention_heads * c->head_dim) > biggest)
        biggest = (size_t)pc.r * (size_t)(c->num_attention_heads * c->head_dim);
    if (rc == RT_OK && (!(staging = malloc(biggest * sizeof(float))) ||
                        !(seen = calloc(2 * slots, sizeof *seen))))
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: no memory to stage adapter tensors", dir);
    for (size_t i = 0; rc == RT_OK && i < sft_tensor_count(f); i++)
        rc = load_one(l, c, sft_tensor_at(f, i), be, staging, seen, err, errsize);
    if (rc == RT_OK)
        rc = lora_check_complete(c, &pc, seen, err, errsize);
    free(seen);
    free(staging);
    sft_file_close(f);
    if (rc != RT_OK && err && errsize && !err[0]) /* a device copy failed: say so, not just the code */
        rt_fail(err, errsize, rc, "%s: the adapter could not be copied to the device (%s)", dir, rt_strerror(rc));
    if (rc != RT_OK) {
        lora_free(l);
        return rc;
    }
    *out = l;
    return RT_OK;
}

/* Adds every A and B of l (host copy in host) to the writer. */
static int add_tensors(const lora *l, const model_config *c, const float *host, sft_writer *wr)
{
    char key[128];
    int rc = RT_OK;
    for (size_t s = 0; rc == RT_OK && s < (size_t)l->n_layers * PEFT_MODULE_COUNT; s++) {
        if (!l->a[s])
            continue;
        int o, in;
        enum peft_module m = (enum peft_module)(s % PEFT_MODULE_COUNT);
        model_module_shape(c, m, &o, &in);
        int64_t ashape[2] = {l->cfg.r, in}, bshape[2] = {o, l->cfg.r};
        peft_key_format((int)(s / PEFT_MODULE_COUNT), m, 'A', key, sizeof key);
        rc = sft_writer_add(wr, key, SFT_F32, 2, ashape, host + (l->a[s] - l->params));
        peft_key_format((int)(s / PEFT_MODULE_COUNT), m, 'B', key, sizeof key);
        if (rc == RT_OK)
            rc = sft_writer_add(wr, key, SFT_F32, 2, bshape, host + (l->b[s] - l->params));
    }
    return rc;
}

int lora_save(const lora *l, const model_config *c, const char *dir, char *err, size_t errsize)
{
    float *host = malloc(l->n_params * sizeof(float));
    sft_writer *wr = NULL;
    char path[4096];
    int rc = host ? RT_OK : RT_ERR_NOMEM;
    if (rc == RT_OK && mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = rt_fail(err, errsize, RT_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    if (rc == RT_OK)
        rc = l->be->copy_to_host(host, l->params, l->n_params * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = sft_writer_init(&wr);
    if (rc == RT_OK)
        rc = add_tensors(l, c, host, wr);
    if (rc == RT_OK)
        rc = sft_writer_set_metadata(wr, "format", "pt");
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (rc == RT_OK)
        rc = sft_writer_write(wr, path, err, errsize);
    if (rc == RT_OK)
        rc = peft_config_write(dir, &l->cfg, err, errsize);
    sft_writer_free(wr);
    free(host);
    return rc;
}

int lora_merge_into(const lora *l, model *m)
{
    const kernels_backend *be = m->be;
    if (m->w16)
        return RT_ERR_UNSUPPORTED; /* merging writes W: the model must be loaded in fp32 */
    for (size_t s = 0; s < (size_t)l->n_layers * PEFT_MODULE_COUNT; s++) {
        if (!l->a[s])
            continue;
        int o, in;
        model_module_shape(&m->cfg, (enum peft_module)(s % PEFT_MODULE_COUNT), &o, &in);
        float *w = m->w.layers[s / PEFT_MODULE_COUNT].proj[s % PEFT_MODULE_COUNT];
        /* W[o, in] += scaling * B[o, r] @ A[r, in] */
        int rc = be->matmul(w, l->b[s], l->a[s], o, in, l->cfg.r, 0, 0, l->scaling, 1.0f, NULL);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}
