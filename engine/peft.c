/*
 * engine/peft.c — PEFT LoRA adapter config and tensor key names.
 *
 * PEFT's adapter_config.json carries many knobs; the ones that only matter
 * when an adapter is created (init_lora_weights, loftq/eva/corda configs,
 * revision, inference_mode) are ignored, and every one that would change
 * the forward pass in a way the engine does not implement is refused with
 * a message naming it, so an adapter never loads with the wrong math.
 */
#include "engine/peft.h"

#include "common/rt.h"
#include "engine/hf_config.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEFT_CONFIG_MAX_BYTES ((size_t)1 << 20)
#define PEFT_MAX_RANK 65536
#define PEFT_KEY_PREFIX "base_model.model.model.layers."

static const char *const peft_module_names[PEFT_MODULE_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *peft_module_name(enum peft_module m)
{
    return (unsigned)m < PEFT_MODULE_COUNT ? peft_module_names[m] : NULL;
}

bool peft_module_is_mlp(enum peft_module m)
{
    return m == PEFT_GATE_PROJ || m == PEFT_UP_PROJ || m == PEFT_DOWN_PROJ;
}

int peft_module_from_name(const char *name, enum peft_module *out)
{
    for (int i = 0; name && i < PEFT_MODULE_COUNT; i++) {
        if (strcmp(name, peft_module_names[i]) == 0) {
            *out = (enum peft_module)i;
            return RT_OK;
        }
    }
    return RT_ERR_NOT_FOUND;
}

float peft_scaling(const peft_config *cfg)
{
    if (!cfg || cfg->r <= 0)
        return 0.0f;
    return cfg->use_rslora ? cfg->lora_alpha / sqrtf((float)cfg->r) : cfg->lora_alpha / (float)cfg->r;
}

/* ---- adapter_config.json ------------------------------------------------ */

/* True when key is absent, null, false, or an empty list/object/string:
 * the values under which an optional PEFT feature is off. */
static bool peft_is_off(const cJSON *it)
{
    if (it == NULL || cJSON_IsNull(it) || cJSON_IsFalse(it))
        return true;
    if (cJSON_IsArray(it) || cJSON_IsObject(it))
        return it->child == NULL;
    return cJSON_IsString(it) && it->valuestring[0] == '\0';
}

/* Refuses every feature the engine cannot apply exactly. */
static int peft_check_unsupported(const cJSON *root, const char *src, char *err, size_t errsize)
{
    static const char *const off_fields[] = {
        "use_dora", "fan_in_fan_out", "modules_to_save", "layers_to_transform", "rank_pattern",
        "alpha_pattern", "lora_bias", "layer_replication", "exclude_modules", "target_parameters",
        "trainable_token_indices", "use_qalora", "megatron_config",
    };
    for (size_t i = 0; i < sizeof off_fields / sizeof off_fields[0]; i++)
        if (!peft_is_off(cJSON_GetObjectItemCaseSensitive(root, off_fields[i])))
            return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: %s is set, which is not supported",
                           src, off_fields[i]);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    char got[32];
    if (!cJSON_IsString(pt))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: peft_type must be the string \"LORA\", not %s", src,
                       hf_json_describe(pt, got, sizeof got));
    if (strcmp(pt->valuestring, "LORA") != 0)
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: peft_type '%.32s' is not supported (only LORA)",
                       src, pt->valuestring);
    const cJSON *tt = cJSON_GetObjectItemCaseSensitive(root, "task_type");
    if (tt && !cJSON_IsNull(tt) && !(cJSON_IsString(tt) && strcmp(tt->valuestring, "CAUSAL_LM") == 0))
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: task_type '%.32s' is not supported (only CAUSAL_LM)",
                       src, cJSON_IsString(tt) ? tt->valuestring : "?");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && strcmp(bias->valuestring, "none") == 0))
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: bias '%.32s' is not supported (only \"none\")",
                       src, cJSON_IsString(bias) ? bias->valuestring : "?");
    return RT_OK;
}

/* target_modules: "all-linear" or a non-empty list of module names. */
static int peft_parse_targets(const cJSON *tm, const char *src, unsigned *mask, char *err, size_t errsize)
{
    if (cJSON_IsString(tm) && strcmp(tm->valuestring, "all-linear") == 0) {
        *mask = PEFT_ALL_MODULES;
        return RT_OK;
    }
    if (!cJSON_IsArray(tm) || tm->child == NULL)
        return rt_fail(err, errsize, cJSON_IsString(tm) ? RT_ERR_UNSUPPORTED : RT_ERR_FORMAT,
                       "%s: target_modules must be \"all-linear\" or a non-empty list of module names", src);
    unsigned m = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, tm) {
        enum peft_module mod;
        if (!cJSON_IsString(e))
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: target_modules holds a non-string", src);
        if (strcmp(e->valuestring, "all-linear") == 0)
            m |= PEFT_ALL_MODULES;
        else if (peft_module_from_name(e->valuestring, &mod) == RT_OK)
            m |= 1u << mod;
        else
            return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: target_modules: unknown module '%.64s' "
                           "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear)",
                           src, e->valuestring);
    }
    *mask = m;
    return RT_OK;
}

/* r, lora_alpha, lora_dropout, use_rslora (PEFT's defaults when absent). */
static int peft_parse_numbers(const cJSON *root, const char *src, peft_config *cfg, char *err, size_t errsize)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    char got[32];
    double rv = r ? (cJSON_IsNumber(r) ? r->valuedouble : NAN) : 8;
    if (!(rv >= 1 && rv <= PEFT_MAX_RANK) || rv != (double)(int)rv)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: r must be an integer in [1, %d], not %s", src,
                       PEFT_MAX_RANK, hf_json_describe(r, got, sizeof got));
    /* Ranges are checked in double: a double beyond FLT_MAX converted to
     * float is undefined behaviour. */
    double ad = alpha ? (cJSON_IsNumber(alpha) ? alpha->valuedouble : NAN) : 8.0;
    if (!(ad > 0.0 && ad <= FLT_MAX) || !((float)ad > 0.0f))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: lora_alpha must be a positive number a float holds, "
                       "not %s", src, hf_json_describe(alpha, got, sizeof got));
    float av = (float)ad;
    double dd = drop && !cJSON_IsNull(drop) ? (cJSON_IsNumber(drop) ? drop->valuedouble : NAN) : 0.0;
    if (!(dd >= 0.0 && dd < 1.0 && (float)dd < 1.0f))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: lora_dropout must be in [0, 1), not %s", src,
                       hf_json_describe(drop, got, sizeof got));
    float dv = (float)dd;
    if (rs && !cJSON_IsNull(rs) && !cJSON_IsBool(rs))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: use_rslora must be true or false", src);
    cfg->r = (int)rv;
    cfg->lora_alpha = av;
    cfg->lora_dropout = dv;
    cfg->use_rslora = cJSON_IsTrue(rs);
    return RT_OK;
}

int peft_config_parse(const char *json, size_t len, const char *src, peft_config *out,
                      char *err, size_t errsize)
{
    src = src ? src : "adapter_config.json";
    if (!json || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: NULL argument", src);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: not valid JSON or not a JSON object", src);
    }
    peft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
    int rc = peft_check_unsupported(root, src, err, errsize);
    if (!rc)
        rc = peft_parse_numbers(root, src, &cfg, err, errsize);
    if (!rc)
        rc = peft_parse_targets(cJSON_GetObjectItemCaseSensitive(root, "target_modules"), src,
                                &cfg.target_modules, err, errsize);
    if (!rc && base && !cJSON_IsNull(base)) {
        if (!cJSON_IsString(base) || strlen(base->valuestring) >= sizeof cfg.base_model_name_or_path)
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: base_model_name_or_path must be a string under %d bytes",
                         src, PEFT_BASE_NAME_MAX);
        else
            snprintf(cfg.base_model_name_or_path, sizeof cfg.base_model_name_or_path, "%s", base->valuestring);
    }
    cJSON_Delete(root);
    if (rc)
        return rc;
    *out = cfg;
    return RT_OK;
}

/* Returns malloc'd "dir/adapter_config.json", or NULL. */
static char *peft_config_path(const char *dir)
{
    size_t n = strlen(dir);
    char *p = malloc(n + sizeof "/adapter_config.json");
    if (p) {
        memcpy(p, dir, n);
        memcpy(p + n, "/adapter_config.json", sizeof "/adapter_config.json");
    }
    return p;
}

int peft_config_load(const char *dir, peft_config *out, char *err, size_t errsize)
{
    if (!dir || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "peft_config_load: NULL argument");
    char *path = peft_config_path(dir);
    if (!path)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "out of memory");
    char *text = NULL;
    size_t len = 0;
    int rc = rt_read_file(path, PEFT_CONFIG_MAX_BYTES, &text, &len, err, errsize);
    if (rc == RT_OK)
        rc = peft_config_parse(text, len, path, out, err, errsize);
    free(text);
    free(path);
    return rc;
}

/* Builds the adapter_config.json object for cfg; NULL on allocation failure. */
static cJSON *peft_config_json(const peft_config *cfg)
{
    char alpha[32], dropout[32];
    hf_format_float(cfg->lora_alpha, false, alpha, sizeof alpha);
    hf_format_float(cfg->lora_dropout, true, dropout, sizeof dropout);
    cJSON *root = cJSON_CreateObject();
    bool ok = cJSON_AddObjectToObject(root, "alpha_pattern") && cJSON_AddNullToObject(root, "auto_mapping") &&
        (cfg->base_model_name_or_path[0]
             ? cJSON_AddStringToObject(root, "base_model_name_or_path", cfg->base_model_name_or_path) != NULL
             : cJSON_AddNullToObject(root, "base_model_name_or_path") != NULL) &&
        cJSON_AddStringToObject(root, "bias", "none") && cJSON_AddFalseToObject(root, "fan_in_fan_out") &&
        cJSON_AddTrueToObject(root, "inference_mode") && cJSON_AddTrueToObject(root, "init_lora_weights") &&
        cJSON_AddNullToObject(root, "layers_pattern") && cJSON_AddNullToObject(root, "layers_to_transform") &&
        cJSON_AddRawToObject(root, "lora_alpha", alpha) && cJSON_AddRawToObject(root, "lora_dropout", dropout) &&
        cJSON_AddNullToObject(root, "modules_to_save") && cJSON_AddStringToObject(root, "peft_type", "LORA") &&
        cJSON_AddNumberToObject(root, "r", cfg->r) && cJSON_AddObjectToObject(root, "rank_pattern") &&
        cJSON_AddNullToObject(root, "revision");
    cJSON *targets = ok ? cJSON_AddArrayToObject(root, "target_modules") : NULL;
    ok = targets != NULL;
    for (int i = 0; ok && i < PEFT_MODULE_COUNT; i++)
        if (cfg->target_modules & (1u << i))
            ok = cJSON_AddItemToArray(targets, cJSON_CreateString(peft_module_names[i]));
    ok = ok && cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM") &&
         cJSON_AddFalseToObject(root, "use_dora") && cJSON_AddBoolToObject(root, "use_rslora", cfg->use_rslora);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int peft_config_write(const char *dir, const peft_config *cfg, char *err, size_t errsize)
{
    if (!dir || !cfg)
        return rt_fail(err, errsize, RT_ERR_INVALID, "peft_config_write: NULL argument");
    if (cfg->r < 1 || cfg->r > PEFT_MAX_RANK || !(cfg->lora_alpha > 0.0f) || !isfinite(cfg->lora_alpha) ||
        !(cfg->lora_dropout >= 0.0f && cfg->lora_dropout < 1.0f) || cfg->target_modules == 0 ||
        (cfg->target_modules & ~PEFT_ALL_MODULES) != 0 ||
        memchr(cfg->base_model_name_or_path, '\0', sizeof cfg->base_model_name_or_path) == NULL)
        return rt_fail(err, errsize, RT_ERR_INVALID, "%s: adapter config has an invalid r, lora_alpha, "
                       "lora_dropout, target_modules or base_model_name_or_path", dir);
    char *path = peft_config_path(dir);
    cJSON *root = path ? peft_config_json(cfg) : NULL;
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    int rc;
    if (!text) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", dir);
    } else {
        size_t n = strlen(text);
        text[n] = '\n';  /* the terminator becomes the final newline */
        rc = rt_write_file_atomic(path, text, n + 1, err, errsize);
    }
    free(text);
    free(path);
    return rc;
}

/* ---- tensor keys ---------------------------------------------------------- */

int peft_key_format(int layer, enum peft_module module, char which, char *buf, size_t size)
{
    if (layer < 0 || (unsigned)module >= PEFT_MODULE_COUNT || (which != 'A' && which != 'B') || !buf || !size)
        return RT_ERR_INVALID;
    int n = snprintf(buf, size, PEFT_KEY_PREFIX "%d.%s.%s.lora_%c.weight", layer,
                     peft_module_is_mlp(module) ? "mlp" : "self_attn", peft_module_names[module], which);
    return n >= 0 && (size_t)n < size ? RT_OK : RT_ERR_TOO_LARGE;
}

/* Consumes the literal lit at *p; true (and advances) when it matches. */
static bool peft_eat(const char **p, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*p, lit, n) != 0)
        return false;
    *p += n;
    return true;
}

/* Consumes a layer number: decimal, no sign, no leading zero, < 10^9. */
static bool peft_eat_layer(const char **p, int *layer)
{
    const char *s = *p;
    int digits = 0;
    while (s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (digits == 0 || digits > 9 || (digits > 1 && s[0] == '0'))
        return false;
    int v = 0;
    for (int i = 0; i < digits; i++)
        v = v * 10 + (s[i] - '0');
    s += digits;
    *layer = v;
    *p = s;
    return true;
}

/* Consumes "self_attn.<attn module>" or "mlp.<mlp module>". */
static bool peft_eat_module(const char **p, enum peft_module *module)
{
    bool mlp = peft_eat(p, "mlp.");
    if (!mlp && !peft_eat(p, "self_attn."))
        return false;
    for (int i = 0; i < PEFT_MODULE_COUNT; i++) {
        const char *s = *p;
        if (peft_module_is_mlp((enum peft_module)i) == mlp && peft_eat(&s, peft_module_names[i]) && *s == '.') {
            *module = (enum peft_module)i;
            *p = s + 1;
            return true;
        }
    }
    return false;
}

int peft_key_parse(const char *name, int *layer, enum peft_module *module, char *which,
                   char *err, size_t errsize)
{
    if (!name || !layer || !module || !which)
        return rt_fail(err, errsize, RT_ERR_INVALID, "peft_key_parse: NULL argument");
    const char *p = name;
    int l;
    enum peft_module m;
    char w = 0;
    bool ok = peft_eat(&p, PEFT_KEY_PREFIX) && peft_eat_layer(&p, &l) && peft_eat(&p, ".") &&
              peft_eat_module(&p, &m);
    if (ok && peft_eat(&p, "lora_A"))
        w = 'A';
    else if (ok && peft_eat(&p, "lora_B"))
        w = 'B';
    ok = ok && w && (strcmp(p, ".weight") == 0 || strcmp(p, ".default.weight") == 0);
    if (!ok)
        return rt_fail(err, errsize, RT_ERR_FORMAT,
                       "'%.200s' is not a supported LoRA key (expected " PEFT_KEY_PREFIX
                       "N.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight or N.mlp.{gate,up,down}_proj..., "
                       "optionally with .default before .weight)", name);
    *layer = l;
    *module = m;
    *which = w;
    return RT_OK;
}
