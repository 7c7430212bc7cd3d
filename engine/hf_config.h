/*
 * engine/hf_config.h — (internal to engine/) Hugging Face config.json for
 * the Llama family: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM.
 * Parsing fills a model_config or fails with a message naming the field;
 * writing produces a config.json that transformers loads as the same model.
 */
#ifndef RT_ENGINE_HF_CONFIG_H
#define RT_ENGINE_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/model_config.h"

/* The largest head_dim retune's RoPE kernels rotate (cos/sin per token on
 * the stack); a config above it is refused when read, naming the limit. */
#define HF_MAX_HEAD_DIM 1024

/* Reads model_dir/config.json (borrowed path; at most 1 MiB) into *out.
 * Errors: RT_ERR_NOT_FOUND / RT_ERR_IO (cannot read), RT_ERR_FORMAT
 * (malformed JSON, missing or ill-typed field, inconsistent sizes),
 * RT_ERR_UNSUPPORTED (model_type, architectures, hidden_act, rope_scaling
 * type, mlp_bias, quantization, torch_dtype we cannot run). err (may be
 * NULL) names the field. *out is untouched on failure. Sliding windows
 * (Mistral, Qwen2/3 with use_sliding_window) are read and applied. */
int hf_config_load(const char *model_dir, model_config *out, char *err, size_t errsize);

/* As hf_config_load, from len bytes of JSON text (borrowed). src names the
 * input in messages (e.g. a path); NULL means "config.json". */
int hf_config_parse(const char *json, size_t len, const char *src, model_config *out,
                    char *err, size_t errsize);

/* Writes cfg (borrowed) as a config.json at path, atomically (tmp file,
 * fsync, rename, directory fsync). Token ids < 0 are written as null; an
 * empty torch_dtype as "float32". Errors: RT_ERR_INVALID (unknown arch,
 * non-finite or non-positive float field, bad torch_dtype), RT_ERR_IO,
 * RT_ERR_NOMEM. */
int hf_config_write(const model_config *cfg, const char *path, char *err, size_t errsize);

/* Formats a finite float as the shortest JSON number that reads back as
 * the same float; integral values print without exponent, with ".0" when
 * as_float is set (so Python reads a float). buf needs 32 bytes. Shared
 * with the PEFT writer. */
void hf_format_float(float v, bool as_float, char *buf, size_t size);

struct cJSON;

/* Writes into buf (32 bytes suffice) what a JSON value is, for messages
 * that say what was given instead: the number itself, or its kind ("a
 * string", "a list", ...; "missing" for NULL). Returns buf. Shared with
 * the PEFT reader. */
const char *hf_json_describe(const struct cJSON *it, char *buf, size_t size);

#endif
