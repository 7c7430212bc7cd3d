/*
 * engine/model.h — (internal to engine/) a Llama-family model on a compute
 * backend: its weights (one device allocation, named pointers into it),
 * LoRA adapters (one allocation each), activations sized once for (B, T),
 * and the forward and backward passes.
 *
 * The base weights of a model are never written by LoRA training or by
 * serving; full fine-tuning trains a model of its own. Functions return
 * rt_error codes; out-parameters are untouched on failure.
 */
#ifndef RT_ENGINE_MODEL_H
#define RT_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model_config.h"
#include "engine/peft.h"
#include "kernels/kernels.h"

/* Pointers into one buffer laid out by model_weights_point: weights,
 * gradients and optimizer moments of a full model share this layout. */
typedef struct layer_weights {
    float *ln1, *ln2;                     /* [d] input / post-attention RMSNorm */
    float *q_norm, *k_norm;               /* [head_dim] per-head RMSNorm (Qwen3) or NULL */
    float *proj[PEFT_MODULE_COUNT];       /* [out, in] per module (q..down) */
    float *bias[3];                       /* q, k, v biases [out] or NULL */
} layer_weights;

typedef struct model_weights {
    float *embed;          /* [V, d] */
    float *final_norm;     /* [d] */
    float *lm_head;        /* [V, d]; == embed when tied */
    layer_weights *layers; /* host array of num_hidden_layers */
} model_weights;

/* Output and input width of a projection module. */
void model_module_shape(const model_config *c, enum peft_module m, int *out, int *in);

/* The sliding window of decoder layer l (0: it sees the whole context). */
int model_layer_window(const model_config *c, int layer);

/* The factor by which queries are multiplied after RoPE: YaRN's attention
 * factor squared (transformers scales both cos and sin, so q.k gains its
 * square); 1 for every other rope type. */
float model_rope_query_scale(const model_config *c);

/* Floats needed for one full set of weights. */
size_t model_weights_count(const model_config *c);

/* Points w into base (model_weights_count floats). Allocates w->layers
 * (host), released by model_weights_release. */
int model_weights_point(const model_config *c, float *base, model_weights *w);
void model_weights_release(model_weights *w);

/* One named tensor of the Hugging Face layout, for loading and saving. */
typedef struct model_tensor {
    char name[96];
    float *ptr;          /* device pointer */
    int rows, cols;      /* rank 1 when rows == 0 */
} model_tensor;

/* Lists the HF tensors of w (embed, layers..., norm, lm_head unless tied)
 * into a malloc'd array; the caller frees it. */
int model_tensor_list(const model_config *c, const model_weights *w, model_tensor **out,
                      size_t *count);

typedef struct model {
    model_config cfg;
    const kernels_backend *be;
    float *params;          /* device, model_weights_count floats */
    model_weights w;
    float *inv_freq;        /* device [head_dim/2], rope_scaling applied */
    float rope_qscale;      /* model_rope_query_scale(&cfg) */
} model;

/* Loads config.json + safetensors (F32/F16/BF16) from dir onto be. */
int model_load(const char *dir, const kernels_backend *be, model **out, char *err, size_t errsize);

/* A model with random weights (normal(0, 0.02) projections, ones for norms),
 * for pre-training and tests. */
int model_init_random(const model_config *cfg, const kernels_backend *be, uint64_t seed,
                      model **out);

/* Writes config.json + model.safetensors (F32, BF16 or F16 per torch_dtype) into dir. */
int model_save(const model *m, const char *dir, char *err, size_t errsize);

void model_free(model *m);

/* ---- LoRA --------------------------------------------------------------- */

typedef struct lora {
    const kernels_backend *be;
    peft_config cfg;
    float scaling;            /* lora_alpha / r (rsLoRA: / sqrt r) */
    int n_layers;
    float *params;            /* device: every A then B, one allocation */
    size_t n_params;
    float **a, **b;           /* host arrays [layer * PEFT_MODULE_COUNT + module]; NULL if untargeted */
} lora;

/* A new adapter for c: A Kaiming-uniform(a = sqrt 5), B zero (PEFT's init). */
int lora_create(const model_config *c, const peft_config *pc, const kernels_backend *be,
                uint64_t seed, lora **out);

/* Loads a PEFT adapter directory, validated against c (modules, shapes). */
int lora_load(const char *dir, const model_config *c, const kernels_backend *be, lora **out,
              char *err, size_t errsize);

struct st_tensor;

/* Checks one adapter tensor against the base and the adapter's config
 * (key form, layer, target module, shape [r, in] / [out, r], float dtype);
 * on success sets *slot (layer * PEFT_MODULE_COUNT + module) and *which
 * ('A' or 'B'). RT_ERR_FORMAT / RT_ERR_UNSUPPORTED with err naming the tensor. */
int lora_check_tensor(const model_config *c, const peft_config *pc, const struct st_tensor *t,
                      size_t *slot, char *which, char *err, size_t errsize);

/* Every targeted (layer, module) has both A and B: seen[2*slot + (B)] marks
 * the tensors met. RT_ERR_FORMAT naming the first missing one. */
int lora_check_complete(const model_config *c, const peft_config *pc, const bool *seen, char *err,
                        size_t errsize);

/* Writes adapter_config.json + adapter_model.safetensors (F32) into dir. */
int lora_save(const lora *l, const model_config *c, const char *dir, char *err, size_t errsize);

/* A matching zero-filled buffer for gradients or moments, same layout as l. */
int lora_clone_zero(const lora *l, lora **out);

void lora_free(lora *l);

/* W + scaling * B A, written into m's weights (for `retune merge`). */
int lora_merge_into(const lora *l, model *m);

/* ---- forward / backward -------------------------------------------------- */

typedef struct model_acts model_acts;

/* Activations for batches of B sequences of T tokens (with room for LoRA
 * rank r, 0 for none). Freed with model_acts_free. */
int model_acts_create(const model *m, int B, int T, int lora_r, model_acts **out);
void model_acts_free(model_acts *a);

/* The step's inputs, host arrays of B*T: token ids, next-token targets
 * (< 0: no loss at that position) and the dropout key (seed, step). */
typedef struct model_batch {
    const int32_t *ids;
    const int32_t *targets;
    int B, T;
    uint64_t dropout_key;     /* same key in forward and backward */
    bool training;            /* dropout only when training */
} model_batch;

/* Loss statistics of a forward pass. */
typedef struct model_loss {
    double loss;       /* mean NLL over counted targets */
    double correct;    /* targets whose argmax was right */
    int64_t count;     /* targets counted */
} model_loss;

/* Runs the forward pass (and loss when targets are given). lora may be NULL. */
int model_forward(const model *m, const lora *ad, model_acts *a, const model_batch *batch,
                  model_loss *out);

/* Backward of the last forward: accumulates gradients into grads (full
 * fine-tuning; a model_weights in the params layout) and/or lora_grads.
 * Either may be NULL; the frozen weights then get no dW work. */
int model_backward(const model *m, const lora *ad, model_acts *a, const model_batch *batch,
                   const model_weights *grads, const lora *lora_grads);

/* Device pointer to the logits [B*T, V] of the last forward. */
const float *model_acts_logits(const model_acts *a);

#endif
