/*
 * engine/hf_config.c — Hugging Face config.json <-> model_config.
 *
 * Defaults follow transformers' LlamaConfig / MistralConfig / Qwen2Config so
 * that a config which omits a field means here what it means there. Anything
 * that would change the computation in a way the engine does not implement
 * (another activation, rope scaling type, MLP bias, quantisation) is refused
 * rather than silently ignored.
 */
#include "engine/hf_config.h"

#include "common/rt.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HF_CONFIG_MAX_BYTES ((size_t)1 << 20)

/* Where a parse is: the JSON object being read, a label for messages, and
 * the caller's error buffer. */
typedef struct hf_ctx {
    const cJSON *obj;
    const char *src;
    char *err;
    size_t errsize;
} hf_ctx;

static const struct {
    const char *model_type, *architecture;
    int default_max_positions;
} hf_arches[] = {
    [MODEL_ARCH_LLAMA] = {"llama", "LlamaForCausalLM", 2048},
    [MODEL_ARCH_MISTRAL] = {"mistral", "MistralForCausalLM", 4096 * 32},
    [MODEL_ARCH_QWEN2] = {"qwen2", "Qwen2ForCausalLM", 32768},
    [MODEL_ARCH_QWEN3] = {"qwen3", "Qwen3ForCausalLM", 32768},
};

/* True when key is absent or JSON null: "use the default". */
static bool hf_absent(const cJSON *item)
{
    return item == NULL || cJSON_IsNull(item);
}

const char *hf_json_describe(const cJSON *it, char *buf, size_t size)
{
    if (cJSON_IsNumber(it))
        snprintf(buf, size, "%.17g", it->valuedouble);
    else
        snprintf(buf, size, "%s", !it ? "missing" : cJSON_IsString(it) ? "a string"
                                  : cJSON_IsBool(it) ? "a boolean" : cJSON_IsArray(it) ? "a list"
                                  : cJSON_IsObject(it) ? "an object" : "null");
    return buf;
}

/* Reads integer field key (>= min) into *out; when absent or null, stores
 * def if has_def, else fails naming the field, the value and the range. */
static int hf_int(const hf_ctx *c, const char *key, bool has_def, int def, int min, int *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    if (hf_absent(it)) {
        if (!has_def)
            return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field %s is missing", c->src, key);
        *out = def;
        return RT_OK;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    char got[32];
    if (!(d >= min && d <= 2147483647.0) || d != (double)(int)d)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be an integer in [%d, 2147483647], not %s",
                       c->src, key, min, hf_json_describe(it, got, sizeof got));
    *out = (int)d;
    return RT_OK;
}

/* Reads a finite number field key that must be > 0; def when absent or
 * null if has_def, else fails naming the field. */
static int hf_float(const hf_ctx *c, const char *key, bool has_def, float def, float *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    if (hf_absent(it)) {
        if (!has_def)
            return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field %s is missing", c->src, key);
        *out = def;
        return RT_OK;
    }
    /* The range is checked in double: converting a double beyond FLT_MAX to
     * float is undefined behaviour; one below FLT_MIN may round to 0. */
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    char got[32];
    if (!(d > 0.0 && d <= FLT_MAX) || !((float)d > 0.0f))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be a positive number a float holds "
                       "(%g to %g), not %s", c->src, key, (double)FLT_TRUE_MIN, (double)FLT_MAX,
                       hf_json_describe(it, got, sizeof got));
    *out = (float)d;
    return RT_OK;
}

/* Reads a boolean field key, def when absent or null. */
static int hf_bool(const hf_ctx *c, const char *key, bool def, bool *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    if (hf_absent(it)) {
        *out = def;
        return RT_OK;
    }
    if (!cJSON_IsBool(it))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be true or false", c->src, key);
    *out = cJSON_IsTrue(it);
    return RT_OK;
}

/* Reads a token id that may be an integer, a list of them (the first is
 * kept: Llama 3.1 lists several eos ids), or absent/null (-1). */
static int hf_token_id(const hf_ctx *c, const char *key, int *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    if (cJSON_IsArray(it))
        it = it->child;
    if (hf_absent(it)) {
        *out = -1;
        return RT_OK;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    char got[32];
    if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int)d)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be an integer in [0, 2147483647], not %s",
                       c->src, key, hf_json_describe(it, got, sizeof got));
    *out = (int)d;
    return RT_OK;
}

/* model_type (required) and, when present, architectures -> cfg->arch. */
static int hf_parse_arch(const hf_ctx *c, model_config *cfg)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(c->obj, "model_type");
    char got[32];
    if (hf_absent(mt))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field model_type is missing", c->src);
    if (!cJSON_IsString(mt))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: model_type must be a string, not %s", c->src,
                       hf_json_describe(mt, got, sizeof got));
    int arch = -1;
    for (int i = 0; i < (int)(sizeof hf_arches / sizeof hf_arches[0]); i++)
        if (strcmp(mt->valuestring, hf_arches[i].model_type) == 0)
            arch = i;
    if (arch < 0)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: model_type '%.64s' is not supported (llama, mistral, qwen2, qwen3)", c->src, mt->valuestring);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(c->obj, "architectures");
    if (!hf_absent(archs)) {
        const cJSON *first = cJSON_IsArray(archs) ? archs->child : NULL;
        if (!cJSON_IsString(first))
            return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: architectures must be a list of names", c->src);
        if (strcmp(first->valuestring, hf_arches[arch].architecture) != 0)
            return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                           "%s: architectures '%.64s' is not supported with model_type '%s' (expected %s)",
                           c->src, first->valuestring, hf_arches[arch].model_type, hf_arches[arch].architecture);
    }
    cfg->arch = (enum model_arch)arch;
    return RT_OK;
}

/* The limits that remain once memory is not the bound: RoPE's kernels
 * rotate heads of at most HF_MAX_HEAD_DIM, every row width (heads x
 * head_dim, the FFN, the vocabulary) is an int in the kernels, the
 * parameter count must be a sane number before memory is estimated, and
 * the depth is bounded because loading walks every layer before it reads a
 * tensor (the largest released models have ~130). Each failure names the
 * field, its value and the limit. */
#define HF_MAX_PARAMS 1e14
#define HF_MAX_LAYERS 65536
static int hf_check_limits(const hf_ctx *c, const model_config *cfg)
{
    if (cfg->num_hidden_layers > HF_MAX_LAYERS)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: num_hidden_layers %d is above the limit %d",
                       c->src, cfg->num_hidden_layers, HF_MAX_LAYERS);
    if (cfg->head_dim > HF_MAX_HEAD_DIM)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: head_dim %d is above the limit %d of retune's RoPE kernels", c->src,
                       cfg->head_dim, HF_MAX_HEAD_DIM);
    double qd = (double)cfg->num_attention_heads * cfg->head_dim;
    if (qd > 2147483647.0)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: num_attention_heads %d x head_dim %d = %.0f is above the limit 2147483647",
                       c->src, cfg->num_attention_heads, cfg->head_dim, qd);
    double d = cfg->hidden_size, f = cfg->intermediate_size, v = cfg->vocab_size;
    double kvd = (double)cfg->num_key_value_heads * cfg->head_dim;
    double layer = 2 * d + 2 * qd * d + 2 * kvd * d + 3 * d * f;
    double params = 2 * v * d + d + (double)cfg->num_hidden_layers * layer;
    if (params > HF_MAX_PARAMS)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: vocab_size %d, hidden_size %d, intermediate_size %d, num_hidden_layers %d and "
                       "heads x head_dim %.0f imply %.3g parameters, above the limit %.0e", c->src,
                       cfg->vocab_size, cfg->hidden_size, cfg->intermediate_size, cfg->num_hidden_layers, qd,
                       params, HF_MAX_PARAMS);
    return RT_OK;
}

/* The fields every architecture shares: sizes, heads, norms, rope base. */
static int hf_parse_sizes(const hf_ctx *c, model_config *cfg)
{
    int rc;
    if ((rc = hf_int(c, "vocab_size", false, 0, 1, &cfg->vocab_size)) ||
        (rc = hf_int(c, "hidden_size", false, 0, 1, &cfg->hidden_size)) ||
        (rc = hf_int(c, "intermediate_size", false, 0, 1, &cfg->intermediate_size)) ||
        (rc = hf_int(c, "num_hidden_layers", false, 0, 1, &cfg->num_hidden_layers)) ||
        (rc = hf_int(c, "num_attention_heads", false, 0, 1, &cfg->num_attention_heads)) ||
        (rc = hf_int(c, "num_key_value_heads", true, cfg->num_attention_heads, 1, &cfg->num_key_value_heads)) ||
        (rc = hf_int(c, "max_position_embeddings", true, hf_arches[cfg->arch].default_max_positions, 1,
                     &cfg->max_position_embeddings)) ||
        (rc = hf_float(c, "rms_norm_eps", true, 1e-6f, &cfg->rms_norm_eps)) ||
        (rc = hf_float(c, "rope_theta", true, 10000.0f, &cfg->rope_theta)))
        return rc;
    int heads = cfg->num_attention_heads;
    if (heads % cfg->num_key_value_heads != 0)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       c->src, heads, cfg->num_key_value_heads);
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(c->obj, "head_dim");
    bool qwen3 = cfg->arch == MODEL_ARCH_QWEN3; /* Qwen3Config's head_dim defaults to 128 */
    if (hf_absent(hd) && !qwen3 && cfg->hidden_size % heads != 0)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: hidden_size %d is not divisible by num_attention_heads %d (and no head_dim)",
                       c->src, cfg->hidden_size, heads);
    if ((rc = hf_int(c, "head_dim", true, qwen3 ? 128 : cfg->hidden_size / heads, 1, &cfg->head_dim)))
        return rc;
    if (cfg->head_dim % 2 != 0)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: head_dim %d%s must be even for RoPE",
                       c->src, cfg->head_dim, hf_absent(hd) ? " (hidden_size / num_attention_heads)" : "");
    return hf_check_limits(c, cfg);
}

/* Llama 3.1's rope_scaling: factor, both band factors and the original
 * context, all required. */
static int hf_parse_rope_llama3(const hf_ctx *sub, const hf_ctx *c, model_config *cfg)
{
    int rc;
    if ((rc = hf_float(sub, "factor", false, 0, &cfg->rope_scaling_factor)) ||
        (rc = hf_float(sub, "low_freq_factor", false, 0, &cfg->rope_low_freq_factor)) ||
        (rc = hf_float(sub, "high_freq_factor", false, 0, &cfg->rope_high_freq_factor)) ||
        (rc = hf_int(sub, "original_max_position_embeddings", false, 0, 1, &cfg->rope_original_max_position)))
        return rc;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: rope_scaling high_freq_factor must exceed low_freq_factor", c->src);
    return RT_OK;
}

/* Reads an optional positive float key of rope_scaling (0 when absent). */
static int hf_opt_float(const hf_ctx *sub, const char *key, float *out)
{
    return hf_float(sub, key, true, 0.0f, out);
}

/* YaRN's rope_scaling as transformers reads it: factor required; the
 * original context defaults to max_position_embeddings; attention_factor,
 * beta_fast/beta_slow, mscale/mscale_all_dim and truncate optional. */
static int hf_parse_rope_yarn(const hf_ctx *sub, model_config *cfg)
{
    int rc;
    bool truncate = true;
    if ((rc = hf_float(sub, "factor", false, 0, &cfg->rope_scaling_factor)) ||
        (rc = hf_int(sub, "original_max_position_embeddings", true, cfg->max_position_embeddings, 1,
                     &cfg->rope_original_max_position)) ||
        (rc = hf_opt_float(sub, "attention_factor", &cfg->rope_attention_factor)) ||
        (rc = hf_opt_float(sub, "beta_fast", &cfg->rope_beta_fast)) ||
        (rc = hf_opt_float(sub, "beta_slow", &cfg->rope_beta_slow)) ||
        (rc = hf_opt_float(sub, "mscale", &cfg->rope_mscale)) ||
        (rc = hf_opt_float(sub, "mscale_all_dim", &cfg->rope_mscale_all_dim)) ||
        (rc = hf_bool(sub, "truncate", true, &truncate)))
        return rc;
    if (cfg->rope_theta == 1.0f) /* log(1) = 0: every frequency would come out NaN */
        return rt_fail(sub->err, sub->errsize, RT_ERR_FORMAT, "%s: yarn needs rope_theta above 1 (it divides "
                       "by log(rope_theta)), not %g", sub->src, (double)cfg->rope_theta);
    cfg->rope_no_truncate = !truncate;
    return RT_OK;
}

/* rope_scaling: null, or type default, llama3, linear or yarn with their
 * parameters; any other type (dynamic, longrope, ...) is refused by name. */
static int hf_parse_rope_scaling(const hf_ctx *c, const cJSON *rs, model_config *cfg)
{
    cfg->rope_scaling_factor = 0.0f;
    cfg->rope_type = MODEL_ROPE_DEFAULT;
    if (hf_absent(rs))
        return RT_OK;
    if (!cJSON_IsObject(rs))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: rope_scaling must be an object or null", c->src);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (hf_absent(type))
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(type))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: rope_scaling has no rope_type", c->src);
    const char *t = type->valuestring;
    char label[512];
    snprintf(label, sizeof label, "%s: rope_scaling", c->src);
    hf_ctx sub = {rs, label, c->err, c->errsize};
    if (strcmp(t, "default") == 0)
        return RT_OK;
    if (strcmp(t, "llama3") == 0) {
        cfg->rope_type = MODEL_ROPE_LLAMA3;
        return hf_parse_rope_llama3(&sub, c, cfg);
    }
    if (strcmp(t, "linear") == 0) {
        cfg->rope_type = MODEL_ROPE_LINEAR;
        return hf_float(&sub, "factor", false, 0, &cfg->rope_scaling_factor);
    }
    if (strcmp(t, "yarn") == 0) {
        cfg->rope_type = MODEL_ROPE_YARN;
        return hf_parse_rope_yarn(&sub, cfg);
    }
    return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                   "%s: rope_scaling type '%.32s' is not supported (default, llama3, linear, yarn)",
                   c->src, t);
}

/* Checks an explicit layer_types list against the layers that
 * max_window_layers makes sliding; a list that differs is refused. */
static int hf_check_layer_types(const hf_ctx *c, const model_config *cfg)
{
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(c->obj, "layer_types");
    if (hf_absent(lt))
        return RT_OK;
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != cfg->num_hidden_layers)
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: layer_types must list num_hidden_layers (%d) names", c->src, cfg->num_hidden_layers);
    int l = 0;
    for (const cJSON *it = lt->child; it; it = it->next, l++) {
        bool sliding = cfg->sliding_window > 0 && l >= cfg->max_window_layers;
        const char *want = sliding ? "sliding_attention" : "full_attention";
        if (!cJSON_IsString(it) || strcmp(it->valuestring, want) != 0)
            return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                           "%s: layer_types[%d] is not '%s', which sliding_window and max_window_layers "
                           "imply; other layer patterns are not supported", c->src, l, want);
    }
    return RT_OK;
}

/* Sliding-window attention as transformers configures it: Mistral's
 * sliding_window (default 4096, null for none) on every layer; Qwen2/3's
 * only with use_sliding_window, on layers >= max_window_layers. */
static int hf_parse_sliding_window(const hf_ctx *c, model_config *cfg)
{
    cfg->sliding_window = 0;
    cfg->max_window_layers = 0;
    if (cfg->arch == MODEL_ARCH_LLAMA)
        return hf_check_layer_types(c, cfg);
    bool use = true, mistral = cfg->arch == MODEL_ARCH_MISTRAL;
    int rc, window = 0;
    if (!mistral && ((rc = hf_bool(c, "use_sliding_window", false, &use)) ||
                     (rc = hf_int(c, "max_window_layers", true, 28, 0, &cfg->max_window_layers))))
        return rc;
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(c->obj, "sliding_window");
    if (sw == NULL)
        window = 4096; /* the configs' default when the key is absent */
    else if (!cJSON_IsNull(sw) && (rc = hf_int(c, "sliding_window", true, 0, 1, &window)))
        return rc;
    cfg->sliding_window = use ? window : 0;
    return hf_check_layer_types(c, cfg);
}

/* hidden_act, biases, quantisation, torch_dtype, tying and token ids. */
static int hf_parse_misc(const hf_ctx *c, model_config *cfg)
{
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(c->obj, "hidden_act");
    char got[32];
    if (!hf_absent(act) && !cJSON_IsString(act))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: hidden_act must be a string (silu), not %s", c->src,
                       hf_json_describe(act, got, sizeof got));
    if (!hf_absent(act) && strcmp(act->valuestring, "silu") != 0 && strcmp(act->valuestring, "swish") != 0)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: hidden_act '%.32s' is not supported (only silu)",
                       c->src, act->valuestring);
    if (!hf_absent(cJSON_GetObjectItemCaseSensitive(c->obj, "quantization_config")))
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: quantization_config: quantised models are "
                       "not supported", c->src);
    bool mlp_bias = false;
    int rc;
    if ((rc = hf_bool(c, "tie_word_embeddings", false, &cfg->tie_word_embeddings)) ||
        (rc = hf_bool(c, "attention_bias", false, &cfg->attention_bias)) ||
        (rc = hf_bool(c, "mlp_bias", false, &mlp_bias)) ||
        (rc = hf_token_id(c, "bos_token_id", &cfg->bos_token_id)) ||
        (rc = hf_token_id(c, "eos_token_id", &cfg->eos_token_id)))
        return rc;
    if (mlp_bias)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported", c->src);
    if (cfg->arch == MODEL_ARCH_QWEN2)
        cfg->attention_bias = true;   /* Qwen2's q/k/v always carry a bias */
    else if (cfg->arch == MODEL_ARCH_MISTRAL)
        cfg->attention_bias = false;  /* MistralConfig has no such option */
    cfg->qk_norm = cfg->arch == MODEL_ARCH_QWEN3; /* Qwen3 norms each q and k head */
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(c->obj, "torch_dtype");
    if (hf_absent(dt))
        dt = cJSON_GetObjectItemCaseSensitive(c->obj, "dtype");  /* transformers >= 4.56 */
    if (!hf_absent(dt) && !cJSON_IsString(dt))
        return rt_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: torch_dtype must be a string (float32, bfloat16, "
                       "float16), not %s", c->src, hf_json_describe(dt, got, sizeof got));
    const char *dtype = hf_absent(dt) ? "float32" : dt->valuestring;
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "bfloat16") != 0 && strcmp(dtype, "float16") != 0)
        return rt_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: torch_dtype '%.32s' is not supported (float32, bfloat16, float16)", c->src, dtype);
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dtype);
    return RT_OK;
}

int hf_config_parse(const char *json, size_t len, const char *src, model_config *out,
                    char *err, size_t errsize)
{
    src = src ? src : "config.json";
    if (!json || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: NULL argument", src);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: not valid JSON or not a JSON object", src);
    }
    /* Only whitespace may follow the object: two configs pasted together,
     * or one cut and patched, is a broken file, not its first half. */
    for (size_t i = (size_t)(end - json); i < len; i++) {
        if (!strchr(" \t\r\n", json[i]) || json[i] == '\0') {
            cJSON_Delete(root);
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: unexpected bytes after the JSON object (at byte %zu)",
                           src, i);
        }
    }
    hf_ctx c = {root, src, err, errsize};
    model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc;
    if (!(rc = hf_parse_arch(&c, &cfg)) && !(rc = hf_parse_sizes(&c, &cfg)) && !(rc = hf_parse_misc(&c, &cfg)))
        rc = hf_parse_rope_scaling(&c, cJSON_GetObjectItemCaseSensitive(root, "rope_scaling"), &cfg);
    if (!rc)
        rc = hf_parse_sliding_window(&c, &cfg);
    cJSON_Delete(root);
    if (rc)
        return rc;
    *out = cfg;
    return RT_OK;
}

int hf_config_load(const char *model_dir, model_config *out, char *err, size_t errsize)
{
    if (!model_dir || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "hf_config_load: NULL argument");
    size_t n = strlen(model_dir);
    char *path = malloc(n + sizeof "/config.json");
    if (!path)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "out of memory");
    memcpy(path, model_dir, n);
    memcpy(path + n, "/config.json", sizeof "/config.json");
    char *text = NULL;
    size_t len = 0;
    int rc = rt_read_file(path, HF_CONFIG_MAX_BYTES, &text, &len, err, errsize);
    if (rc == RT_OK)
        rc = hf_config_parse(text, len, path, out, err, errsize);
    free(text);
    free(path);
    return rc;
}

void hf_format_float(float v, bool as_float, char *buf, size_t size)
{
    if (v == truncf(v) && fabsf(v) < 1e15f) {
        snprintf(buf, size, as_float ? "%.1f" : "%.0f", (double)v);
        return;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            return;
    }
}

/* Adds key: v as a shortest-round-trip float (as_float keeps ".0"). */
static bool hf_add_float(cJSON *obj, const char *key, float v, bool as_float)
{
    char buf[32];
    hf_format_float(v, as_float, buf, sizeof buf);
    return cJSON_AddRawToObject(obj, key, buf) != NULL;
}

/* Adds key: id, or null for a negative id. */
static bool hf_add_token(cJSON *obj, const char *key, int id)
{
    return (id >= 0 ? cJSON_AddNumberToObject(obj, key, id) : cJSON_AddNullToObject(obj, key)) != NULL;
}

/* Adds the yarn-only keys that were given (transformers' defaults
 * otherwise: nothing is written for them). */
static bool hf_add_yarn(cJSON *rs, const model_config *cfg)
{
    struct { const char *key; float v; } opt[] = {
        {"attention_factor", cfg->rope_attention_factor}, {"beta_fast", cfg->rope_beta_fast},
        {"beta_slow", cfg->rope_beta_slow}, {"mscale", cfg->rope_mscale},
        {"mscale_all_dim", cfg->rope_mscale_all_dim},
    };
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++)
        if (opt[i].v > 0.0f && !hf_add_float(rs, opt[i].key, opt[i].v, true))
            return false;
    return !cfg->rope_no_truncate || cJSON_AddFalseToObject(rs, "truncate");
}

/* Adds rope_scaling: null, or the parameters of its type. */
static bool hf_add_rope_scaling(cJSON *root, const model_config *cfg)
{
    static const char *names[] = {
        [MODEL_ROPE_LLAMA3] = "llama3", [MODEL_ROPE_LINEAR] = "linear", [MODEL_ROPE_YARN] = "yarn",
    };
    if (cfg->rope_type == MODEL_ROPE_DEFAULT)
        return cJSON_AddNullToObject(root, "rope_scaling") != NULL;
    cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
    bool ok = rs && hf_add_float(rs, "factor", cfg->rope_scaling_factor, true);
    if (ok && cfg->rope_type == MODEL_ROPE_LLAMA3)
        ok = hf_add_float(rs, "low_freq_factor", cfg->rope_low_freq_factor, true) &&
             hf_add_float(rs, "high_freq_factor", cfg->rope_high_freq_factor, true);
    if (ok && cfg->rope_type != MODEL_ROPE_LINEAR)
        ok = cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                     cfg->rope_original_max_position) != NULL;
    if (ok && cfg->rope_type == MODEL_ROPE_YARN)
        ok = hf_add_yarn(rs, cfg);
    return ok && cJSON_AddStringToObject(rs, "rope_type", names[cfg->rope_type]);
}

/* Adds sliding_window (null for none) and, for Qwen2/3, use_sliding_window
 * and max_window_layers. */
static bool hf_add_sliding_window(cJSON *root, const model_config *cfg)
{
    if (cfg->arch == MODEL_ARCH_LLAMA)
        return true;
    bool ok = cfg->sliding_window > 0 ? cJSON_AddNumberToObject(root, "sliding_window", cfg->sliding_window) != NULL
                                      : cJSON_AddNullToObject(root, "sliding_window") != NULL;
    if (!ok || cfg->arch == MODEL_ARCH_MISTRAL)
        return ok;
    return cJSON_AddNumberToObject(root, "max_window_layers", cfg->max_window_layers) &&
           cJSON_AddBoolToObject(root, "use_sliding_window", cfg->sliding_window > 0);
}

/* Builds the config.json object for cfg; NULL when allocation fails. */
static cJSON *hf_config_json(const model_config *cfg, const char *dtype)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
    bool llama = cfg->arch == MODEL_ARCH_LLAMA;
    bool bias_key = llama || cfg->arch == MODEL_ARCH_QWEN3;
    bool ok = archs && cJSON_AddItemToArray(archs, cJSON_CreateString(hf_arches[cfg->arch].architecture)) &&
        (!bias_key || cJSON_AddBoolToObject(root, "attention_bias", cfg->attention_bias)) &&
        cJSON_AddRawToObject(root, "attention_dropout", "0.0") &&
        hf_add_token(root, "bos_token_id", cfg->bos_token_id) &&
        hf_add_token(root, "eos_token_id", cfg->eos_token_id) &&
        cJSON_AddNumberToObject(root, "head_dim", cfg->head_dim) &&
        cJSON_AddStringToObject(root, "hidden_act", "silu") &&
        cJSON_AddNumberToObject(root, "hidden_size", cfg->hidden_size) &&
        cJSON_AddRawToObject(root, "initializer_range", "0.02") &&
        cJSON_AddNumberToObject(root, "intermediate_size", cfg->intermediate_size) &&
        cJSON_AddNumberToObject(root, "max_position_embeddings", cfg->max_position_embeddings) &&
        (!llama || cJSON_AddFalseToObject(root, "mlp_bias")) &&
        cJSON_AddStringToObject(root, "model_type", hf_arches[cfg->arch].model_type) &&
        cJSON_AddNumberToObject(root, "num_attention_heads", cfg->num_attention_heads) &&
        cJSON_AddNumberToObject(root, "num_hidden_layers", cfg->num_hidden_layers) &&
        cJSON_AddNumberToObject(root, "num_key_value_heads", cfg->num_key_value_heads) &&
        hf_add_float(root, "rms_norm_eps", cfg->rms_norm_eps, true) &&
        hf_add_rope_scaling(root, cfg) &&
        hf_add_float(root, "rope_theta", cfg->rope_theta, true) &&
        hf_add_sliding_window(root, cfg) &&
        cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_word_embeddings) &&
        cJSON_AddStringToObject(root, "torch_dtype", dtype) &&
        cJSON_AddTrueToObject(root, "use_cache") &&
        cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* True when f is finite and > 0. */
static bool hf_positive(float f)
{
    return isfinite(f) && f > 0.0f;
}

int hf_config_write(const model_config *cfg, const char *path, char *err, size_t errsize)
{
    if (!cfg || !path)
        return rt_fail(err, errsize, RT_ERR_INVALID, "hf_config_write: NULL argument");
    if ((unsigned)cfg->arch > MODEL_ARCH_QWEN3)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: unknown model arch %d", path, (int)cfg->arch);
    if (!hf_positive(cfg->rms_norm_eps) || !hf_positive(cfg->rope_theta) ||
        (cfg->rope_type != MODEL_ROPE_DEFAULT && !hf_positive(cfg->rope_scaling_factor)) ||
        (cfg->rope_type == MODEL_ROPE_LLAMA3 &&
         (!hf_positive(cfg->rope_low_freq_factor) || !hf_positive(cfg->rope_high_freq_factor))) ||
        (unsigned)cfg->rope_type > MODEL_ROPE_YARN)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: rms_norm_eps, rope_theta and rope scaling factors "
                       "must be positive and finite", path);
    char dtype[sizeof cfg->torch_dtype + 1];
    snprintf(dtype, sizeof dtype, "%.*s", (int)sizeof cfg->torch_dtype, cfg->torch_dtype);
    if (!dtype[0])
        snprintf(dtype, sizeof dtype, "float32");
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "bfloat16") != 0 && strcmp(dtype, "float16") != 0)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: torch_dtype '%s' is not float32, bfloat16 or float16",
                       path, dtype);
    cJSON *root = hf_config_json(cfg, dtype);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(text);
    text[n] = '\n';  /* replace the terminator: the file ends in a newline */
    int rc = rt_write_file_atomic(path, text, n + 1, err, errsize);
    free(text);
    return rc;
}
