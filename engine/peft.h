/*
 * engine/peft.h — (internal to engine/) PEFT LoRA adapters on disk:
 * adapter_config.json <-> peft_config, the LoRA scaling rule, and the
 * tensor key names of adapter_model.safetensors
 * ("base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight",
 * lora_A [r, in], lora_B [out, r]). Only what the engine can apply exactly
 * is accepted: plain LoRA (optionally rsLoRA) on the seven Llama linear
 * modules, no bias, no DoRA, one rank and alpha for every module.
 */
#ifndef RT_ENGINE_PEFT_H
#define RT_ENGINE_PEFT_H

#include <stdbool.h>
#include <stddef.h>

enum peft_module {
    PEFT_Q_PROJ, PEFT_K_PROJ, PEFT_V_PROJ, PEFT_O_PROJ,  /* self_attn.* */
    PEFT_GATE_PROJ, PEFT_UP_PROJ, PEFT_DOWN_PROJ,        /* mlp.* */
    PEFT_MODULE_COUNT
};

/* target_modules bit for every module: what "all-linear" means for Llama. */
#define PEFT_ALL_MODULES ((1u << PEFT_MODULE_COUNT) - 1u)

#define PEFT_BASE_NAME_MAX 512

typedef struct peft_config {
    int r;                     /* rank, >= 1 */
    float lora_alpha;          /* > 0 */
    float lora_dropout;        /* [0, 1) */
    bool use_rslora;           /* scaling alpha/sqrt(r) instead of alpha/r */
    unsigned target_modules;   /* bit (1u << peft_module) per targeted module */
    char base_model_name_or_path[PEFT_BASE_NAME_MAX];  /* "" when unknown */
} peft_config;

/* "q_proj", ..., "down_proj"; NULL when m is out of range. */
const char *peft_module_name(enum peft_module m);

/* True for gate/up/down (under "mlp."), false for the attention ones. */
bool peft_module_is_mlp(enum peft_module m);

/* Looks up a module by its name. RT_ERR_NOT_FOUND when unknown. */
int peft_module_from_name(const char *name, enum peft_module *out);

/* Reads dir/adapter_config.json (at most 1 MiB). *out untouched on failure.
 * Errors: RT_ERR_NOT_FOUND / RT_ERR_IO (cannot read), RT_ERR_FORMAT
 * (malformed, missing or ill-typed field, r <= 0, alpha <= 0, dropout
 * outside [0,1)), RT_ERR_UNSUPPORTED (peft_type other than LORA, task_type
 * other than CAUSAL_LM, bias other than "none", use_dora, fan_in_fan_out,
 * modules_to_save, layers_to_transform, rank/alpha patterns, an unknown
 * target module, ...). err (may be NULL) names the field. */
int peft_config_load(const char *dir, peft_config *out, char *err, size_t errsize);

/* As peft_config_load from len bytes of JSON (borrowed); src labels
 * messages (NULL: "adapter_config.json"). */
int peft_config_parse(const char *json, size_t len, const char *src, peft_config *out,
                      char *err, size_t errsize);

/* Writes cfg as dir/adapter_config.json atomically, in the form PEFT writes
 * (peft_type LORA, task_type CAUSAL_LM, bias "none", fan_in_fan_out false,
 * modules_to_save null, inference_mode true, target_modules as a list of
 * names). Errors: RT_ERR_INVALID (cfg would not load back), RT_ERR_IO,
 * RT_ERR_NOMEM. */
int peft_config_write(const char *dir, const peft_config *cfg, char *err, size_t errsize);

/* The LoRA output scale: lora_alpha / r, or lora_alpha / sqrt(r) with
 * use_rslora; 0 for r <= 0. */
float peft_scaling(const peft_config *cfg);

/* Formats the adapter key of layer's module, which 'A' or 'B', into buf
 * (size bytes), e.g. "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight".
 * Errors: RT_ERR_INVALID (layer < 0, bad module or which), RT_ERR_TOO_LARGE
 * (buf too small; buf then holds a truncated string). 96 bytes always fit. */
int peft_key_format(int layer, enum peft_module module, char which, char *buf, size_t size);

/* Parses an adapter tensor key: the form above, or PEFT's
 * "...lora_A.default.weight" variant. On success sets *layer, *module and
 * *which ('A' or 'B'); otherwise RT_ERR_FORMAT with err saying what was
 * expected, and the outputs are untouched. */
int peft_key_parse(const char *name, int *layer, enum peft_module *module, char *which,
                   char *err, size_t errsize);

#endif
