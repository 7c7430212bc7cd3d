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
#include "engine/safetensors.h"

#include <cjson/cJSON.h>
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
};

/* True when key is absent or JSON null: "use the default". */
static bool hf_absent(const cJSON *item)
{
    return item == NULL || cJSON_IsNull(item);
}

/* Reads integer field key (>= min) into *out; when absent or null, stores
 * def if has_def, else fails naming the field. */
static int hf_int(const hf_ctx *c, const char *key, bool has_def, int def, int min, int *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    if (hf_absent(it)) {
        if (!has_def)
            return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field %s is missing", c->src, key);
        *out = def;
        return RT_OK;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(d >= min && d <= 2147483647.0) || d != (double)(int)d)
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be an integer >= %d", c->src, key, min);
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
            return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field %s is missing", c->src, key);
        *out = def;
        return RT_OK;
    }
    float f = cJSON_IsNumber(it) ? (float)it->valuedouble : NAN;
    if (!(f > 0.0f) || !isfinite(f))
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be a positive number", c->src, key);
    *out = f;
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
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be true or false", c->src, key);
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
    if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int)d)
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: %s must be a non-negative integer", c->src, key);
    *out = (int)d;
    return RT_OK;
}

/* model_type (required) and, when present, architectures -> cfg->arch. */
static int hf_parse_arch(const hf_ctx *c, model_config *cfg)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(c->obj, "model_type");
    if (!cJSON_IsString(mt))
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: required field model_type is missing", c->src);
    int arch = -1;
    for (int i = 0; i < (int)(sizeof hf_arches / sizeof hf_arches[0]); i++)
        if (strcmp(mt->valuestring, hf_arches[i].model_type) == 0)
            arch = i;
    if (arch < 0)
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: model_type '%.64s' is not supported (llama, mistral, qwen2)", c->src, mt->valuestring);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(c->obj, "architectures");
    if (!hf_absent(archs)) {
        const cJSON *first = cJSON_IsArray(archs) ? archs->child : NULL;
        if (!cJSON_IsString(first))
            return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: architectures must be a list of names", c->src);
        if (strcmp(first->valuestring, hf_arches[arch].architecture) != 0)
            return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                           "%s: architectures '%.64s' is not supported with model_type '%s' (expected %s)",
                           c->src, first->valuestring, hf_arches[arch].model_type, hf_arches[arch].architecture);
    }
    cfg->arch = (enum model_arch)arch;
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
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       c->src, heads, cfg->num_key_value_heads);
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(c->obj, "head_dim");
    if (hf_absent(hd) && cfg->hidden_size % heads != 0)
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: hidden_size %d is not divisible by num_attention_heads %d (and no head_dim)",
                       c->src, cfg->hidden_size, heads);
    if ((rc = hf_int(c, "head_dim", true, cfg->hidden_size / heads, 1, &cfg->head_dim)))
        return rc;
    if (cfg->head_dim % 2 != 0)
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: head_dim %d must be even for RoPE",
                       c->src, cfg->head_dim);
    return RT_OK;
}

/* rope_scaling: null, type "default", or type "llama3" with its four
 * parameters; any other type is refused. */
static int hf_parse_rope_scaling(const hf_ctx *c, const cJSON *rs, model_config *cfg)
{
    cfg->rope_scaling_factor = 0.0f;
    if (hf_absent(rs))
        return RT_OK;
    if (!cJSON_IsObject(rs))
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: rope_scaling must be an object or null", c->src);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (hf_absent(type))
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(type))
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT, "%s: rope_scaling has no rope_type", c->src);
    if (strcmp(type->valuestring, "default") == 0)
        return RT_OK;
    if (strcmp(type->valuestring, "llama3") != 0)
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: rope_scaling type '%.32s' is not supported (only llama3)", c->src, type->valuestring);
    char label[512];
    snprintf(label, sizeof label, "%s: rope_scaling", c->src);
    hf_ctx sub = {rs, label, c->err, c->errsize};
    int rc;
    if ((rc = hf_float(&sub, "factor", false, 0, &cfg->rope_scaling_factor)) ||
        (rc = hf_float(&sub, "low_freq_factor", false, 0, &cfg->rope_low_freq_factor)) ||
        (rc = hf_float(&sub, "high_freq_factor", false, 0, &cfg->rope_high_freq_factor)) ||
        (rc = hf_int(&sub, "original_max_position_embeddings", false, 0, 1, &cfg->rope_original_max_position)))
        return rc;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return st_fail(c->err, c->errsize, RT_ERR_FORMAT,
                       "%s: rope_scaling high_freq_factor must exceed low_freq_factor", c->src);
    return RT_OK;
}

/* Mistral's sliding_window, or Qwen2's when use_sliding_window is true:
 * accepted, but only a window covering the whole context is exact. */
static int hf_parse_sliding_window(const hf_ctx *c, const model_config *cfg)
{
    if (cfg->arch == MODEL_ARCH_LLAMA)
        return RT_OK;
    bool use = true;
    int rc;
    if (cfg->arch == MODEL_ARCH_QWEN2 && (rc = hf_bool(c, "use_sliding_window", false, &use)))
        return rc;
    int window;
    if ((rc = hf_int(c, "sliding_window", true, 0, 1, &window)))
        return rc;
    if (use && window > 0 && window < cfg->max_position_embeddings)
        rt_log(RT_LOG_WARN, "%s: sliding_window %d < max_position_embeddings %d is not applied: "
               "attention spans the whole context", c->src, window, cfg->max_position_embeddings);
    return RT_OK;
}

/* hidden_act, biases, quantisation, torch_dtype, tying and token ids. */
static int hf_parse_misc(const hf_ctx *c, model_config *cfg)
{
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(c->obj, "hidden_act");
    if (!hf_absent(act) && (!cJSON_IsString(act) ||
                            (strcmp(act->valuestring, "silu") != 0 && strcmp(act->valuestring, "swish") != 0)))
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: hidden_act '%.32s' is not supported (only silu)",
                       c->src, cJSON_IsString(act) ? act->valuestring : "?");
    if (!hf_absent(cJSON_GetObjectItemCaseSensitive(c->obj, "quantization_config")))
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: quantization_config: quantised models are "
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
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported", c->src);
    if (cfg->arch == MODEL_ARCH_QWEN2)
        cfg->attention_bias = true;   /* Qwen2's q/k/v always carry a bias */
    else if (cfg->arch == MODEL_ARCH_MISTRAL)
        cfg->attention_bias = false;  /* MistralConfig has no such option */
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(c->obj, "torch_dtype");
    if (hf_absent(dt))
        dt = cJSON_GetObjectItemCaseSensitive(c->obj, "dtype");  /* transformers >= 4.56 */
    const char *dtype = hf_absent(dt) ? "float32" : cJSON_IsString(dt) ? dt->valuestring : "";
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "bfloat16") != 0 && strcmp(dtype, "float16") != 0)
        return st_fail(c->err, c->errsize, RT_ERR_UNSUPPORTED,
                       "%s: torch_dtype '%.32s' is not supported (float32, bfloat16, float16)", c->src, dtype);
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dtype);
    return RT_OK;
}

int hf_config_parse(const char *json, size_t len, const char *src, model_config *out,
                    char *err, size_t errsize)
{
    src = src ? src : "config.json";
    if (!json || !out)
        return st_fail(err, errsize, RT_ERR_INVALID, "%s: NULL argument", src);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return st_fail(err, errsize, RT_ERR_FORMAT, "%s: not valid JSON or not a JSON object", src);
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
        return st_fail(err, errsize, RT_ERR_INVALID, "hf_config_load: NULL argument");
    size_t n = strlen(model_dir);
    char *path = malloc(n + sizeof "/config.json");
    if (!path)
        return st_fail(err, errsize, RT_ERR_NOMEM, "out of memory");
    memcpy(path, model_dir, n);
    memcpy(path + n, "/config.json", sizeof "/config.json");
    char *text = NULL;
    size_t len = 0;
    int rc = st_read_file(path, HF_CONFIG_MAX_BYTES, &text, &len, err, errsize);
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

/* Adds rope_scaling: null, or the llama3 parameters. */
static bool hf_add_rope_scaling(cJSON *root, const model_config *cfg)
{
    if (cfg->rope_scaling_factor == 0.0f)
        return cJSON_AddNullToObject(root, "rope_scaling") != NULL;
    cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
    return rs && hf_add_float(rs, "factor", cfg->rope_scaling_factor, true) &&
           hf_add_float(rs, "low_freq_factor", cfg->rope_low_freq_factor, true) &&
           hf_add_float(rs, "high_freq_factor", cfg->rope_high_freq_factor, true) &&
           cJSON_AddNumberToObject(rs, "original_max_position_embeddings", cfg->rope_original_max_position) &&
           cJSON_AddStringToObject(rs, "rope_type", "llama3");
}

/* Builds the config.json object for cfg; NULL when allocation fails. */
static cJSON *hf_config_json(const model_config *cfg, const char *dtype)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
    bool llama = cfg->arch == MODEL_ARCH_LLAMA;
    bool ok = archs && cJSON_AddItemToArray(archs, cJSON_CreateString(hf_arches[cfg->arch].architecture)) &&
        (!llama || cJSON_AddBoolToObject(root, "attention_bias", cfg->attention_bias)) &&
        cJSON_AddRawToObject(root, "attention_dropout", "0.0") &&
        hf_add_token(root, "bos_token_id", cfg->bos_token_id) &&
        hf_add_token(root, "eos_token_id", cfg->eos_token_id) &&
        cJSON_AddNumberToObject(root, "head_dim", cfg->head_dim) &&
        cJSON_AddStringToObject(root, "hidden_act", "silu") &&
        cJSON_AddNumberToObject(root, "hidden_size", cfg->hidden_size) &&
        cJSON_AddRawToObject(root, "initializer_range", "0.02") &&
        cJSON_AddNumberToObject(root, "intermediate_size", cfg->intermediate_size) &&
        cJSON_AddNumberToObject(root, "max_position_embeddings", cfg->max_position_embeddings) &&
        (cfg->arch != MODEL_ARCH_QWEN2 || cJSON_AddNumberToObject(root, "max_window_layers", cfg->num_hidden_layers)) &&
        (!llama || cJSON_AddFalseToObject(root, "mlp_bias")) &&
        cJSON_AddStringToObject(root, "model_type", hf_arches[cfg->arch].model_type) &&
        cJSON_AddNumberToObject(root, "num_attention_heads", cfg->num_attention_heads) &&
        cJSON_AddNumberToObject(root, "num_hidden_layers", cfg->num_hidden_layers) &&
        cJSON_AddNumberToObject(root, "num_key_value_heads", cfg->num_key_value_heads) &&
        hf_add_float(root, "rms_norm_eps", cfg->rms_norm_eps, true) &&
        hf_add_rope_scaling(root, cfg) &&
        hf_add_float(root, "rope_theta", cfg->rope_theta, true) &&
        (llama || cJSON_AddNullToObject(root, "sliding_window")) &&
        cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_word_embeddings) &&
        cJSON_AddStringToObject(root, "torch_dtype", dtype) &&
        cJSON_AddTrueToObject(root, "use_cache") &&
        (cfg->arch != MODEL_ARCH_QWEN2 || cJSON_AddFalseToObject(root, "use_sliding_window")) &&
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
        return st_fail(err, errsize, RT_ERR_INVALID, "hf_config_write: NULL argument");
    if ((unsigned)cfg->arch > MODEL_ARCH_QWEN2)
        return st_fail(err, errsize, RT_ERR_INVALID, "%s: unknown model arch %d", path, (int)cfg->arch);
    if (!hf_positive(cfg->rms_norm_eps) || !hf_positive(cfg->rope_theta) ||
        (cfg->rope_scaling_factor != 0.0f &&
         (!hf_positive(cfg->rope_scaling_factor) || !hf_positive(cfg->rope_low_freq_factor) ||
          !hf_positive(cfg->rope_high_freq_factor))))
        return st_fail(err, errsize, RT_ERR_INVALID, "%s: rms_norm_eps, rope_theta and rope scaling factors "
                       "must be positive and finite", path);
    char dtype[sizeof cfg->torch_dtype + 1];
    snprintf(dtype, sizeof dtype, "%.*s", (int)sizeof cfg->torch_dtype, cfg->torch_dtype);
    if (!dtype[0])
        snprintf(dtype, sizeof dtype, "float32");
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "bfloat16") != 0 && strcmp(dtype, "float16") != 0)
        return st_fail(err, errsize, RT_ERR_INVALID, "%s: torch_dtype '%s' is not float32, bfloat16 or float16",
                       path, dtype);
    cJSON *root = hf_config_json(cfg, dtype);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return st_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(text);
    text[n] = '\n';  /* replace the terminator: the file ends in a newline */
    int rc = st_write_file_atomic(path, text, n + 1, err, errsize);
    free(text);
    return rc;
}
