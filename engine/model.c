/*
 * engine/model.c — a model's weights: the one-buffer layout, the Hugging
 * Face tensor names, loading from safetensors (any float dtype, converted to
 * fp32), saving, random initialisation, and the RoPE frequency table.
 */
#include "engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/hf_config.h"
#include "engine/rng.h"
#include "engine/safetensors.h"

void model_module_shape(const model_config *c, enum peft_module m, int *out, int *in)
{
    int d = c->hidden_size, f = c->intermediate_size;
    int q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
    switch (m) {
    case PEFT_Q_PROJ: *out = q; *in = d; break;
    case PEFT_K_PROJ: *out = kv; *in = d; break;
    case PEFT_V_PROJ: *out = kv; *in = d; break;
    case PEFT_O_PROJ: *out = d; *in = q; break;
    case PEFT_GATE_PROJ: *out = f; *in = d; break;
    case PEFT_UP_PROJ: *out = f; *in = d; break;
    default: *out = d; *in = f; break; /* down_proj */
    }
}

int model_layer_window(const model_config *c, int layer)
{
    return c->sliding_window > 0 && layer >= c->max_window_layers ? c->sliding_window : 0;
}

/* Floats of one layer: two norms (and Qwen3's two head norms), seven
 * projections, optional q/k/v bias. */
static size_t layer_count(const model_config *c)
{
    size_t n = 2 * (size_t)c->hidden_size + (c->qk_norm ? 2 * (size_t)c->head_dim : 0);
    for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
        int o, i;
        model_module_shape(c, (enum peft_module)m, &o, &i);
        n += (size_t)o * (size_t)i;
        if (c->attention_bias && m <= PEFT_V_PROJ)
            n += (size_t)o;
    }
    return n;
}

size_t model_weights_count(const model_config *c)
{
    size_t vd = (size_t)c->vocab_size * (size_t)c->hidden_size;
    return vd + (size_t)c->hidden_size + (c->tie_word_embeddings ? 0 : vd) +
           (size_t)c->num_hidden_layers * layer_count(c);
}

int model_weights_point(const model_config *c, float *base, model_weights *w)
{
    layer_weights *layers = calloc((size_t)c->num_hidden_layers, sizeof *layers);
    if (!layers)
        return RT_ERR_NOMEM;
    size_t vd = (size_t)c->vocab_size * (size_t)c->hidden_size;
    float *p = base;
    w->embed = p;
    p += vd;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        layer_weights *lw = &layers[l];
        lw->ln1 = p;
        p += c->hidden_size;
        lw->ln2 = p;
        p += c->hidden_size;
        if (c->qk_norm) {
            lw->q_norm = p;
            lw->k_norm = p + c->head_dim;
            p += 2 * (size_t)c->head_dim;
        }
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            lw->proj[m] = p;
            p += (size_t)o * (size_t)i;
            if (c->attention_bias && m <= PEFT_V_PROJ) {
                lw->bias[m] = p;
                p += o;
            }
        }
    }
    w->final_norm = p;
    p += c->hidden_size;
    w->lm_head = c->tie_word_embeddings ? w->embed : p;
    w->layers = layers;
    return RT_OK;
}

void model_weights_release(model_weights *w)
{
    if (w) {
        free(w->layers);
        w->layers = NULL;
    }
}

/* Appends one entry to the tensor list. */
static void add_tensor(model_tensor *t, size_t *n, const char *name, float *ptr, int rows, int cols)
{
    snprintf(t[*n].name, sizeof t[*n].name, "%s", name);
    t[*n].ptr = ptr;
    t[*n].rows = rows;
    t[*n].cols = cols;
    (*n)++;
}

int model_tensor_list(const model_config *c, const model_weights *w, model_tensor **out,
                      size_t *count)
{
    size_t cap = 3 + (size_t)c->num_hidden_layers * 14;
    model_tensor *t = calloc(cap, sizeof *t);
    if (!t)
        return RT_ERR_NOMEM;
    size_t n = 0;
    char name[96];
    add_tensor(t, &n, "model.embed_tokens.weight", w->embed, c->vocab_size, c->hidden_size);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const layer_weights *lw = &w->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_tensor(t, &n, name, lw->ln1, 0, c->hidden_size);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_tensor(t, &n, name, lw->ln2, 0, c->hidden_size);
        if (lw->q_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            add_tensor(t, &n, name, lw->q_norm, 0, c->head_dim);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            add_tensor(t, &n, name, lw->k_norm, 0, c->head_dim);
        }
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            const char *group = peft_module_is_mlp((enum peft_module)m) ? "mlp" : "self_attn";
            const char *mod = peft_module_name((enum peft_module)m);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, group, mod);
            add_tensor(t, &n, name, lw->proj[m], o, i);
            if (m <= PEFT_V_PROJ && lw->bias[m]) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, group, mod);
                add_tensor(t, &n, name, lw->bias[m], 0, o);
            }
        }
    }
    add_tensor(t, &n, "model.norm.weight", w->final_norm, 0, c->hidden_size);
    if (!c->tie_word_embeddings)
        add_tensor(t, &n, "lm_head.weight", w->lm_head, c->vocab_size, c->hidden_size);
    *out = t;
    *count = n;
    return RT_OK;
}

/* Llama 3.1's band scaling of one inverse frequency f. */
static double rope_llama3(const model_config *c, double f)
{
    double factor = c->rope_scaling_factor, lo = c->rope_low_freq_factor,
           hi = c->rope_high_freq_factor, old = c->rope_original_max_position;
    double wavelen = 2.0 * M_PI / f;
    if (wavelen > old / lo)
        return f / factor;
    if (wavelen < old / hi)
        return f;
    double smooth = (old / wavelen - lo) / (hi - lo);
    return (1.0 - smooth) * f / factor + smooth * f;
}

/* YaRN's dimension where a frequency makes `rotations` turns over the
 * original context (transformers' find_correction_dim). */
static double yarn_correction_dim(const model_config *c, double rotations)
{
    return c->head_dim * log(c->rope_original_max_position / (rotations * 2 * M_PI)) /
           (2 * log((double)c->rope_theta));
}

/* YaRN: frequencies above the [low, high] ramp keep their value, those
 * below are interpolated (divided by factor), linear in between. */
static void rope_yarn(const model_config *c, float *out)
{
    int D = c->head_dim;
    double beta_fast = c->rope_beta_fast > 0 ? c->rope_beta_fast : 32;
    double beta_slow = c->rope_beta_slow > 0 ? c->rope_beta_slow : 1;
    double low = yarn_correction_dim(c, beta_fast), high = yarn_correction_dim(c, beta_slow);
    if (!c->rope_no_truncate) {
        low = floor(low);
        high = ceil(high);
    }
    low = low > 0 ? low : 0;
    high = high < D - 1 ? high : D - 1;
    if (low == high)
        high += 0.001; /* as transformers: no zero-width ramp */
    for (int i = 0; i < D / 2; i++) {
        double pos = pow((double)c->rope_theta, (double)(2 * i) / (double)D);
        double ramp = ((double)i - low) / (high - low);
        double keep = 1.0 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
        out[i] = (float)(1.0 / (c->rope_scaling_factor * pos) * (1.0 - keep) + 1.0 / pos * keep);
    }
}

/* HF's RoPE inverse frequencies with the configured rope_scaling. */
static void rope_inv_freq(const model_config *c, float *out)
{
    if (c->rope_type == MODEL_ROPE_YARN) {
        rope_yarn(c, out);
        return;
    }
    int D = c->head_dim;
    for (int i = 0; i < D / 2; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)D);
        if (c->rope_type == MODEL_ROPE_LLAMA3)
            f = rope_llama3(c, f);
        else if (c->rope_type == MODEL_ROPE_LINEAR)
            f /= c->rope_scaling_factor;
        out[i] = (float)f;
    }
}

/* YaRN's get_mscale. */
static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

float model_rope_query_scale(const model_config *c)
{
    if (c->rope_type != MODEL_ROPE_YARN)
        return 1.0f;
    double f = c->rope_scaling_factor, a = c->rope_attention_factor;
    if (!(a > 0))
        a = c->rope_mscale > 0 && c->rope_mscale_all_dim > 0
                ? yarn_mscale(f, c->rope_mscale) / yarn_mscale(f, c->rope_mscale_all_dim)
                : yarn_mscale(f, 1.0);
    return (float)(a * a);
}

/* Allocates the model shell, its weight buffer and the RoPE table. */
static int model_alloc(const model_config *cfg, const kernels_backend *be, model **out)
{
    model *m = calloc(1, sizeof *m);
    if (!m)
        return RT_ERR_NOMEM;
    m->cfg = *cfg;
    m->be = be;
    m->rope_qscale = model_rope_query_scale(cfg);
    size_t n = model_weights_count(cfg);
    float host_freq[1024];
    int rc = be->alloc((void **)&m->params, n * sizeof(float));
    if (rc == RT_OK)
        rc = be->alloc((void **)&m->inv_freq, sizeof(float) * (size_t)(cfg->head_dim / 2));
    if (rc == RT_OK)
        rc = model_weights_point(cfg, m->params, &m->w);
    if (rc == RT_OK && cfg->head_dim / 2 > 1024)
        rc = RT_ERR_UNSUPPORTED;
    if (rc == RT_OK) {
        rope_inv_freq(cfg, host_freq);
        rc = be->copy_to_device(m->inv_freq, host_freq, sizeof(float) * (size_t)(cfg->head_dim / 2), NULL);
    }
    if (rc != RT_OK) {
        model_free(m);
        return rc;
    }
    *out = m;
    return RT_OK;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->be) {
        m->be->free(m->params);
        m->be->free(m->inv_freq);
    }
    model_weights_release(&m->w);
    free(m);
}

/* Reads one HF tensor into the device pointer, checking its shape. */
static int load_tensor(const st_model *st, const model_tensor *t, const kernels_backend *be,
                       float *staging, char *err, size_t errsize)
{
    const st_tensor *src = st_model_find(st, t->name);
    if (!src)
        return st_fail(err, errsize, RT_ERR_FORMAT, "model weights lack tensor %s", t->name);
    bool ok = t->rows ? src->rank == 2 && src->shape[0] == t->rows && src->shape[1] == t->cols
                      : src->rank == 1 && src->shape[0] == t->cols;
    if (!ok)
        return st_fail(err, errsize, RT_ERR_FORMAT,
                       "tensor %s has shape [%lld, %lld], config.json implies [%d, %d]", t->name,
                       (long long)src->shape[0], (long long)src->shape[1], t->rows, t->cols);
    int rc = st_tensor_read_f32(src, staging, src->numel);
    if (rc != RT_OK)
        return st_fail(err, errsize, rc, "tensor %s has dtype %s, which cannot be loaded", t->name,
                       st_dtype_name(src->dtype));
    return be->copy_to_device(t->ptr, staging, src->numel * sizeof(float), NULL);
}

int model_load(const char *dir, const kernels_backend *be, model **out, char *err, size_t errsize)
{
    model_config cfg;
    int rc = hf_config_load(dir, &cfg, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (cfg.attention_bias && cfg.arch != MODEL_ARCH_QWEN2) /* it would add an o_proj bias too */
        return st_fail(err, errsize, RT_ERR_UNSUPPORTED,
                       "config.json: attention_bias is supported for Qwen2 only (q/k/v bias)");
    st_model *st = NULL;
    model *m = NULL;
    model_tensor *tensors = NULL;
    float *staging = NULL;
    size_t n = 0;
    rc = st_model_open(dir, &st, err, errsize);
    if (rc == RT_OK)
        rc = model_alloc(&cfg, be, &m);
    if (rc == RT_OK)
        rc = model_tensor_list(&cfg, &m->w, &tensors, &n);
    size_t biggest = 0; /* the staging buffer holds the largest tensor of the list */
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        size_t numel = (size_t)(tensors[i].rows ? tensors[i].rows : 1) * (size_t)tensors[i].cols;
        biggest = numel > biggest ? numel : biggest;
    }
    if (rc == RT_OK && !(staging = malloc(biggest * sizeof(float))))
        rc = RT_ERR_NOMEM;
    for (size_t i = 0; rc == RT_OK && i < n; i++)
        rc = load_tensor(st, &tensors[i], be, staging, err, errsize);
    free(staging);
    free(tensors);
    st_model_close(st);
    if (rc != RT_OK) {
        model_free(m);
        return rc;
    }
    *out = m;
    return RT_OK;
}

/* Fills host with normal(0, std) values (Box-Muller). */
static void fill_normal(float *host, size_t n, float std, rng *r)
{
    for (size_t i = 0; i < n; i += 2) {
        float u1 = rng_uniform(r), u2 = rng_uniform(r);
        float rad = sqrtf(-2.0f * logf(u1 + 1e-12f)) * std;
        host[i] = rad * cosf(6.2831853f * u2);
        if (i + 1 < n)
            host[i + 1] = rad * sinf(6.2831853f * u2);
    }
}

int model_init_random(const model_config *cfg, const kernels_backend *be, uint64_t seed,
                      model **out)
{
    model *m = NULL;
    int rc = model_alloc(cfg, be, &m);
    if (rc != RT_OK)
        return rc;
    size_t n = model_weights_count(cfg);
    float *host = malloc(n * sizeof(float));
    if (!host) {
        model_free(m);
        return RT_ERR_NOMEM;
    }
    rng r = {seed};
    fill_normal(host, n, 0.02f, &r);
    /* Norm weights are ones and biases zeros, as HF initialises them. */
    model_weights hw;
    rc = model_weights_point(cfg, host, &hw);
    for (int l = 0; rc == RT_OK && l < cfg->num_hidden_layers; l++) {
        for (int i = 0; i < cfg->hidden_size; i++)
            hw.layers[l].ln1[i] = hw.layers[l].ln2[i] = 1.0f;
        for (int i = 0; hw.layers[l].q_norm && i < cfg->head_dim; i++)
            hw.layers[l].q_norm[i] = hw.layers[l].k_norm[i] = 1.0f;
        for (int b = 0; b < 3; b++)
            if (hw.layers[l].bias[b])
                memset(hw.layers[l].bias[b], 0, sizeof(float) * (size_t)(b == 0 ? cfg->num_attention_heads : cfg->num_key_value_heads) * (size_t)cfg->head_dim);
    }
    if (rc == RT_OK) {
        for (int i = 0; i < cfg->hidden_size; i++)
            hw.final_norm[i] = 1.0f;
        rc = be->copy_to_device(m->params, host, n * sizeof(float), NULL);
    }
    model_weights_release(&hw);
    free(host);
    if (rc != RT_OK) {
        model_free(m);
        return rc;
    }
    *out = m;
    return RT_OK;
}

int model_save(const model *m, const char *dir, char *err, size_t errsize)
{
    const model_config *c = &m->cfg;
    size_t n_floats = model_weights_count(c), n = 0;
    float *host = malloc(n_floats * sizeof(float));
    model_tensor *tensors = NULL;
    st_writer *wr = NULL;
    model_weights hw = {0};
    char path[4096];
    int rc = host ? RT_OK : RT_ERR_NOMEM;
    if (rc == RT_OK && mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = st_fail(err, errsize, RT_ERR_IO, "cannot create %s", dir);
    if (rc == RT_OK)
        rc = m->be->copy_to_host(host, m->params, n_floats * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = model_weights_point(c, host, &hw);
    if (rc == RT_OK)
        rc = model_tensor_list(c, &hw, &tensors, &n);
    if (rc == RT_OK)
        rc = st_writer_init(&wr);
    enum st_dtype dt = strcmp(c->torch_dtype, "bfloat16") == 0 ? ST_BF16
                     : strcmp(c->torch_dtype, "float16") == 0  ? ST_F16
                                                               : ST_F32;
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        int64_t shape[2] = {tensors[i].rows ? tensors[i].rows : tensors[i].cols, tensors[i].cols};
        rc = st_writer_add(wr, tensors[i].name, dt, tensors[i].rows ? 2 : 1, shape, tensors[i].ptr);
    }
    if (rc == RT_OK)
        rc = st_writer_set_metadata(wr, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == RT_OK)
        rc = st_writer_write(wr, path, err, errsize);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (rc == RT_OK)
        rc = hf_config_write(c, path, err, errsize);
    st_writer_free(wr);
    free(tensors);
    model_weights_release(&hw);
    free(host);
    return rc;
}
