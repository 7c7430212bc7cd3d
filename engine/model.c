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

/* Points the fp32 tensors of c at base (NULL: only counts) and returns the
 * floats they take: every tensor, or with matrices false only the norms and
 * biases (the rest of a 16-bit model lives in model_point16's buffer). The
 * order is Hugging Face's: embed, then per layer its norms, projections
 * and biases, then the final norm and an untied lm_head. */
static size_t point_f32(const model_config *c, float *base, bool matrices, model_weights *w)
{
    size_t vd = (size_t)c->vocab_size * (size_t)c->hidden_size, off = 0;
#define TAKE(slot, n) do { if (base) (slot) = base + off; off += (n); } while (0)
    if (matrices)
        TAKE(w->embed, vd);
    int layers = base ? c->num_hidden_layers : 1; /* counting: one layer, times the depth below */
    size_t before = off;
    for (int l = 0; l < layers; l++) {
        layer_weights *lw = base ? &w->layers[l] : NULL;
        TAKE(lw->ln1, (size_t)c->hidden_size);
        TAKE(lw->ln2, (size_t)c->hidden_size);
        if (c->qk_norm) {
            TAKE(lw->q_norm, (size_t)c->head_dim);
            TAKE(lw->k_norm, (size_t)c->head_dim);
        }
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            if (matrices)
                TAKE(lw->proj[m], (size_t)o * (size_t)i);
            if (c->attention_bias && m <= PEFT_V_PROJ)
                TAKE(lw->bias[m], (size_t)o);
        }
    }
    if (!base)
        off = before + (off - before) * (size_t)c->num_hidden_layers;
    TAKE(w->final_norm, (size_t)c->hidden_size);
    if (matrices && !c->tie_word_embeddings)
        TAKE(w->lm_head, vd);
#undef TAKE
    if (base && matrices)
        w->lm_head = c->tie_word_embeddings ? w->embed : w->lm_head;
    return off;
}

/* Points the 16-bit matrices of c (embed, projections, untied lm_head) at
 * base (NULL: only counts); returns the elements they take. */
static size_t point16(const model_config *c, uint16_t *base, model_weights *w)
{
    size_t vd = (size_t)c->vocab_size * (size_t)c->hidden_size, off = 0;
    if (base)
        w->embed16 = base;
    off += vd;
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            if (base)
                w->layers[l].proj16[m] = base + off;
            off += (size_t)o * (size_t)i;
        }
    if (base)
        w->lm_head16 = c->tie_word_embeddings ? w->embed16 : base + off;
    return off + (c->tie_word_embeddings ? 0 : vd);
}

size_t model_weights_count(const model_config *c)
{
    return point_f32(c, NULL, true, NULL);
}

/* Allocates w's host array of layers (zeroed). */
static int alloc_layers(const model_config *c, model_weights *w)
{
    memset(w, 0, sizeof *w);
    w->layers = calloc((size_t)c->num_hidden_layers, sizeof *w->layers);
    return w->layers ? RT_OK : RT_ERR_NOMEM;
}

int model_weights_point(const model_config *c, float *base, model_weights *w)
{
    int rc = alloc_layers(c, w);
    if (rc == RT_OK)
        point_f32(c, base, true, w);
    return rc;
}

void model_weights_release(model_weights *w)
{
    if (w) {
        free(w->layers);
        w->layers = NULL;
    }
}

/* Appends one entry to the tensor list; a matrix of a 16-bit weight set
 * records where its 16-bit pointer lives instead of an fp32 pointer. */
static void add_tensor(model_tensor *t, size_t *n, const char *name, float *ptr, const uint16_t **ptr16,
                       int rows, int cols)
{
    snprintf(t[*n].name, sizeof t[*n].name, "%s", name);
    t[*n].ptr = ptr;
    t[*n].ptr16 = ptr16;
    t[*n].rows = rows;
    t[*n].cols = cols;
    (*n)++;
}

int model_tensor_list(const model_config *c, model_weights *w, model_tensor **out, size_t *count)
{
    size_t cap = 3 + (size_t)c->num_hidden_layers * 14;
    model_tensor *t = calloc(cap, sizeof *t);
    if (!t)
        return RT_ERR_NOMEM;
    size_t n = 0;
    char name[96];
    bool w16 = w->matrices16;
    add_tensor(t, &n, "model.embed_tokens.weight", w->embed, w16 ? &w->embed16 : NULL, c->vocab_size,
               c->hidden_size);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        layer_weights *lw = &w->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_tensor(t, &n, name, lw->ln1, NULL, 0, c->hidden_size);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_tensor(t, &n, name, lw->ln2, NULL, 0, c->hidden_size);
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            add_tensor(t, &n, name, lw->q_norm, NULL, 0, c->head_dim);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            add_tensor(t, &n, name, lw->k_norm, NULL, 0, c->head_dim);
        }
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            int o, i;
            model_module_shape(c, (enum peft_module)m, &o, &i);
            const char *group = peft_module_is_mlp((enum peft_module)m) ? "mlp" : "self_attn";
            const char *mod = peft_module_name((enum peft_module)m);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, group, mod);
            add_tensor(t, &n, name, lw->proj[m], w16 ? &lw->proj16[m] : NULL, o, i);
            if (m <= PEFT_V_PROJ && c->attention_bias) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, group, mod);
                add_tensor(t, &n, name, lw->bias[m], NULL, 0, o);
            }
        }
    }
    add_tensor(t, &n, "model.norm.weight", w->final_norm, NULL, 0, c->hidden_size);
    if (!c->tie_word_embeddings)
        add_tensor(t, &n, "lm_head.weight", w->lm_head, w16 ? &w->lm_head16 : NULL, c->vocab_size,
                   c->hidden_size);
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

/* Allocates the model shell, its fp32 buffer (every tensor, or only norms
 * and biases when w16 is set) and the RoPE table. */
static int model_alloc(const model_config *cfg, const kernels_backend *be, kernels_dtype w16,
                       model **out)
{
    model *m = calloc(1, sizeof *m);
    if (!m)
        return RT_ERR_NOMEM;
    m->cfg = *cfg;
    m->be = be;
    m->w16 = w16;
    m->rope_qscale = model_rope_query_scale(cfg);
    size_t n = point_f32(cfg, NULL, !w16, NULL);
    m->weight_bytes = n * sizeof(float) + (w16 ? point16(cfg, NULL, NULL) * sizeof(uint16_t) : 0);
    float host_freq[HF_MAX_HEAD_DIM / 2];
    int rc = cfg->head_dim / 2 > HF_MAX_HEAD_DIM / 2 ? RT_ERR_UNSUPPORTED : alloc_layers(cfg, &m->w);
    if (rc == RT_OK)
        rc = be->alloc((void **)&m->params, n * sizeof(float));
    if (rc == RT_OK)
        rc = be->alloc((void **)&m->inv_freq, sizeof(float) * (size_t)(cfg->head_dim / 2));
    if (rc == RT_OK) {
        point_f32(cfg, m->params, !w16, &m->w);
        m->w.matrices16 = w16 != 0;
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
        m->be->free(m->params16);
        m->be->free(m->inv_freq);
    }
    sft_model_close(m->mapped);
    model_weights_release(&m->w);
    free(m);
}

/* See model.h. Mapped weights are page cache, which MemAvailable counts
 * already; weights in allocated memory are added back, since they are part
 * of the run being planned. */
double model_memory_available(const model *m)
{
    const char *limit = getenv("RETUNE_MEMORY_LIMIT");
    if (limit)
        return strtod(limit, NULL);
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024.0 + (m->mapped ? 0.0 : (double)m->weight_bytes);
}

int model_dtype_parse(const char *name, enum model_dtype *out)
{
    static const char *names[] = {"auto", "f32", "bf16", "f16"};
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (enum model_dtype)i;
            return RT_OK;
        }
    return RT_ERR_INVALID;
}

/* The checkpoint tensor for t, its shape checked against the config. */
static int find_tensor(const sft_model *st, const model_tensor *t, const sft_tensor **out, char *err,
                       size_t errsize)
{
    const sft_tensor *src = sft_model_find(st, t->name);
    if (!src)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "model weights lack tensor %s", t->name);
    bool ok = t->rows ? src->rank == 2 && src->shape[0] == t->rows && src->shape[1] == t->cols
                      : src->rank == 1 && src->shape[0] == t->cols;
    char shape[SFT_SHAPE_TEXT];
    if (!ok && t->rows)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "tensor %s has shape %s, config.json implies [%d, %d]",
                       t->name, sft_shape_format(src, shape, sizeof shape), t->rows, t->cols);
    if (!ok)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "tensor %s has shape %s, config.json implies [%d]",
                       t->name, sft_shape_format(src, shape, sizeof shape), t->cols);
    if (src->dtype != SFT_F32 && src->dtype != SFT_BF16 && src->dtype != SFT_F16)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "tensor %s has dtype %s; only F32, BF16 and "
                       "F16 weights can be loaded", t->name, sft_dtype_name(src->dtype));
    *out = src;
    return RT_OK;
}

/* Every tensor config.json implies is in the checkpoint, with its shape
 * and a float dtype. Checked before anything sized by config.json is
 * allocated, so a config far larger than its weights is refused by name
 * rather than allocated first. */
static int check_tensors(const model_config *cfg, const sft_model *st, char *err, size_t errsize)
{
    model_weights shell; /* no buffer: the list only needs names and shapes */
    model_tensor *t = NULL;
    size_t n = 0;
    int rc = alloc_layers(cfg, &shell);
    if (rc == RT_OK)
        rc = model_tensor_list(cfg, &shell, &t, &n);
    if (rc != RT_OK)
        rt_fail(err, errsize, rc, "no memory to list the tensors of %d layers", cfg->num_hidden_layers);
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        const sft_tensor *src;
        rc = find_tensor(st, &t[i], &src, err, errsize);
    }
    free(t);
    model_weights_release(&shell);
    return rc;
}

/* Reads one fp32 tensor through the staging buffer onto the device. */
static int load_f32(const sft_tensor *src, float *dst, const kernels_backend *be, void *staging)
{
    int rc = sft_tensor_read_f32(src, staging, src->numel);
    return rc == RT_OK ? be->copy_to_device(dst, staging, src->numel * sizeof(float), NULL) : rc;
}

static enum sft_dtype st_dtype_of(kernels_dtype dt)
{
    return dt == KERNELS_BF16 ? SFT_BF16 : SFT_F16;
}

/* Writes one 16-bit matrix into its place in m->params16: the raw bytes
 * when the file has that dtype, else converted through fp32 staging. */
static int load_16(const sft_tensor *src, const model_tensor *t, const model *m, void *staging)
{
    uint16_t *dst = (uint16_t *)*t->ptr16;
    if (src->dtype == st_dtype_of(m->w16))
        return m->be->copy_to_device(dst, src->data, src->nbytes, NULL);
    float *f = staging;
    uint16_t *h = (uint16_t *)(f + src->numel);
    int rc = sft_tensor_read_f32(src, f, src->numel);
    for (size_t i = 0; rc == RT_OK && i < src->numel; i++)
        h[i] = m->w16 == KERNELS_BF16 ? sft_f32_to_bf16(f[i]) : sft_f32_to_f16(f[i]);
    return rc == RT_OK ? m->be->copy_to_device(dst, h, src->numel * sizeof *h, NULL) : rc;
}

/* The 16-bit type the matrices are kept in for dtype, given the dtype the
 * checkpoint stores its embedding in (auto follows the checkpoint). */
static kernels_dtype wanted_w16(enum model_dtype dtype, enum sft_dtype stored)
{
    if (dtype == MODEL_DTYPE_AUTO)
        return stored == SFT_BF16 ? KERNELS_BF16 : stored == SFT_F16 ? KERNELS_F16 : 0;
    return dtype == MODEL_DTYPE_BF16 ? KERNELS_BF16 : dtype == MODEL_DTYPE_F16 ? KERNELS_F16 : 0;
}

/* True when every 16-bit matrix of the list is stored in m's dtype in the
 * checkpoint and m lives on the CPU: they can then point into the mapped
 * file. Shapes and dtypes are checked on the way. */
static int can_map(const sft_model *st, const model *m, const model_tensor *t, size_t n, bool *out,
                   char *err, size_t errsize)
{
    bool all = strcmp(m->be->name, "cpu") == 0;
    for (size_t i = 0; i < n; i++) {
        const sft_tensor *src;
        int rc = find_tensor(st, &t[i], &src, err, errsize);
        if (rc != RT_OK)
            return rc;
        if (t[i].ptr16 && (src->dtype != st_dtype_of(m->w16) || ((uintptr_t)src->data & 1)))
            all = false;
    }
    *out = all;
    return RT_OK;
}

/* Points the matrices into the mapped file, or allocates params16 and
 * copies them there; then loads the fp32 tensors. */
static int load_tensors(sft_model *st, model *m, model_tensor *t, size_t n, bool map, char *err,
                        size_t errsize)
{
    int rc = RT_OK;
    if (m->w16 && !map) {
        uint16_t *base = NULL;
        rc = m->be->alloc((void **)&base, point16(&m->cfg, NULL, NULL) * sizeof(uint16_t));
        if (rc != RT_OK)
            return rt_fail(err, errsize, rc, "no memory for the %zu MiB of 16-bit weights",
                           point16(&m->cfg, NULL, NULL) * 2 >> 20);
        m->params16 = base;
        point16(&m->cfg, base, &m->w);
    }
    size_t biggest = 0; /* staging holds the largest tensor (and its 16-bit copy) */
    for (size_t i = 0; i < n; i++) {
        size_t numel = (size_t)(t[i].rows ? t[i].rows : 1) * (size_t)t[i].cols;
        biggest = numel > biggest ? numel : biggest;
    }
    void *staging = malloc(biggest * (sizeof(float) + sizeof(uint16_t)));
    if (!staging)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "no memory to stage a tensor of %zu values", biggest);
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        const sft_tensor *src;
        rc = find_tensor(st, &t[i], &src, err, errsize);
        if (rc == RT_OK && t[i].ptr16 && map)
            *t[i].ptr16 = src->data;
        else if (rc == RT_OK && t[i].ptr16)
            rc = load_16(src, &t[i], m, staging);
        else if (rc == RT_OK)
            rc = load_f32(src, t[i].ptr, m->be, staging);
        if (rc != RT_OK && !err[0])
            rt_fail(err, errsize, rc, "tensor %s could not be loaded (%s)", t[i].name, rt_strerror(rc));
    }
    free(staging);
    if (m->w16 && m->cfg.tie_word_embeddings)
        m->w.lm_head16 = m->w.embed16; /* tied: no lm_head tensor in the list */
    return rc;
}

int model_load_as(const char *dir, const kernels_backend *be, enum model_dtype dtype, model **out,
                  char *err, size_t errsize)
{
    model_config cfg;
    if (err && errsize)
        err[0] = '\0';
    int rc = hf_config_load(dir, &cfg, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (cfg.attention_bias && cfg.arch != MODEL_ARCH_QWEN2) /* it would add an o_proj bias too */
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED,
                       "config.json: attention_bias is supported for Qwen2 only (q/k/v bias)");
    sft_model *st = NULL;
    model *m = NULL;
    model_tensor *tensors = NULL;
    size_t n = 0;
    bool map = false;
    rc = sft_model_open(dir, &st, err, errsize);
    if (rc == RT_OK)
        rc = check_tensors(&cfg, st, err, errsize);
    const sft_tensor *embed = rc == RT_OK ? sft_model_find(st, "model.embed_tokens.weight") : NULL;
    if (rc == RT_OK && (rc = model_alloc(&cfg, be, wanted_w16(dtype, embed ? embed->dtype : SFT_F32), &m)))
        rt_fail(err, errsize, rc, "%s: no room for the %.2f GiB of weights on device %s (%s)", dir,
                (double)point_f32(&cfg, NULL, true, NULL) * 4 / (1 << 30), be->name, rt_strerror(rc));
    if (rc == RT_OK)
        rc = model_tensor_list(&cfg, &m->w, &tensors, &n);
    if (rc == RT_OK && m->w16)
        rc = can_map(st, m, tensors, n, &map, err, errsize);
    if (rc == RT_OK && map) /* the reads below and the first steps then stream from disk */
        sft_model_prefetch(st);
    if (rc == RT_OK)
        rc = load_tensors(st, m, tensors, n, map, err, errsize);
    free(tensors);
    if (rc == RT_OK && map)
        m->mapped = st; /* the matrices point into it: closed with the model */
    else
        sft_model_close(st);
    if (rc != RT_OK) {
        if (map)
            m->mapped = NULL;
        model_free(m);
        return rc;
    }
    *out = m;
    return RT_OK;
}

int model_load_named(const char *dir, const kernels_backend *be, const char *dtype, model **out,
                     char *err, size_t errsize)
{
    enum model_dtype d = MODEL_DTYPE_AUTO;
    if (dtype && model_dtype_parse(dtype, &d) != RT_OK)
        return rt_fail(err, errsize, RT_ERR_INVALID, "dtype '%.32s' is not one of auto, f32, bf16, f16",
                       dtype);
    return model_load_as(dir, be, d, out, err, errsize);
}

int model_load(const char *dir, const kernels_backend *be, model **out, char *err, size_t errsize)
{
    return model_load_as(dir, be, MODEL_DTYPE_F32, out, err, errsize);
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
    int rc = model_alloc(cfg, be, 0, &m);
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
    if (m->w16)
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "model_save: a model loaded with 16-bit "
                       "frozen weights cannot be saved (load it in f32 to train or merge it)");
    size_t n_floats = model_weights_count(c), n = 0;
    float *host = malloc(n_floats * sizeof(float));
    model_tensor *tensors = NULL;
    sft_writer *wr = NULL;
    model_weights hw = {0};
    char path[4096];
    int rc = host ? RT_OK : RT_ERR_NOMEM;
    if (rc == RT_OK && mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = rt_fail(err, errsize, RT_ERR_IO, "cannot create %s", dir);
    if (rc == RT_OK)
        rc = m->be->copy_to_host(host, m->params, n_floats * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = model_weights_point(c, host, &hw);
    if (rc == RT_OK)
        rc = model_tensor_list(c, &hw, &tensors, &n);
    if (rc == RT_OK)
        rc = sft_writer_init(&wr);
    enum sft_dtype dt = strcmp(c->torch_dtype, "bfloat16") == 0 ? SFT_BF16
                     : strcmp(c->torch_dtype, "float16") == 0  ? SFT_F16
                                                               : SFT_F32;
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        int64_t shape[2] = {tensors[i].rows ? tensors[i].rows : tensors[i].cols, tensors[i].cols};
        rc = sft_writer_add(wr, tensors[i].name, dt, tensors[i].rows ? 2 : 1, shape, tensors[i].ptr);
    }
    if (rc == RT_OK)
        rc = sft_writer_set_metadata(wr, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == RT_OK)
        rc = sft_writer_write(wr, path, err, errsize);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (rc == RT_OK)
        rc = hf_config_write(c, path, err, errsize);
    sft_writer_free(wr);
    free(tensors);
    model_weights_release(&hw);
    free(host);
    return rc;
}
