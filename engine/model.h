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
    float *proj[PEFT_MODULE_COUNT];       /* [out, in] per module (q..down); NULL when 16-bit */
    float *bias[3];                       /* q, k, v biases [out] or NULL */
    const uint16_t *proj16[PEFT_MODULE_COUNT]; /* the same in 16 bits, or NULL */
} layer_weights;

/* A model's tensors. The matrices (embed, projections, lm_head) are either
 * fp32 (the float pointers) or, for a frozen model kept in 16 bits, bf16 or
 * f16 (the *16 pointers; matrices16 true); norms and biases are fp32. */
typedef struct model_weights {
    float *embed;          /* [V, d] */
    float *final_norm;     /* [d] */
    float *lm_head;        /* [V, d]; == embed when tied */
    layer_weights *layers; /* host array of num_hidden_layers */
    const uint16_t *embed16, *lm_head16;
    bool matrices16;
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
    float *ptr;              /* device pointer (fp32 tensors) */
    const uint16_t **ptr16;  /* a 16-bit matrix: where its pointer lives in the weights */
    int rows, cols;          /* rank 1 when rows == 0 */
} model_tensor;

/* Lists the HF tensors of w (embed, layers..., norm, lm_head unless tied)
 * into a malloc'd array; the caller frees it. */
int model_tensor_list(const model_config *c, model_weights *w, model_tensor **out, size_t *count);

/* The in-memory type of a model's frozen matrices: what the checkpoint
 * stores (auto), or fp32, bf16 or f16 whatever it stores. */
enum model_dtype { MODEL_DTYPE_AUTO, MODEL_DTYPE_F32, MODEL_DTYPE_BF16, MODEL_DTYPE_F16 };

/* "auto", "f32", "bf16", "f16" -> *out; RT_ERR_INVALID for anything else. */
int model_dtype_parse(const char *name, enum model_dtype *out);

struct sft_model;

typedef struct model {
    model_config cfg;
    const kernels_backend *be;
    float *params;          /* device fp32: every tensor, or norms and biases when 16-bit */
    model_weights w;
    float *inv_freq;        /* device [head_dim/2], rope_scaling applied */
    float rope_qscale;      /* model_rope_query_scale(&cfg) */
    kernels_dtype w16;      /* 0: fp32 matrices; else their 16-bit type */
    uint16_t *params16;     /* device copy of the 16-bit matrices, or NULL when mapped */
    struct sft_model *mapped;/* the open checkpoint the 16-bit matrices point into (CPU) */
    size_t weight_bytes;    /* bytes of weights held (mapped pages included) */
} model;

/* Loads config.json + safetensors (F32/F16/BF16) from dir onto be, every
 * matrix in fp32 (a model to train or merge). */
int model_load(const char *dir, const kernels_backend *be, model **out, char *err, size_t errsize);

/* As model_load with the matrices kept as dtype asks: a frozen model (a
 * LoRA base, a served model). On the CPU backend 16-bit matrices stored in
 * that very dtype are mapped from the file rather than copied. */
int model_load_as(const char *dir, const kernels_backend *be, enum model_dtype dtype, model **out,
                  char *err, size_t errsize);

/* model_load_as with the dtype given by name ("auto", "f32", "bf16",
 * "f16"; NULL means auto); an unknown name is RT_ERR_INVALID naming it. */
int model_load_named(const char *dir, const kernels_backend *be, const char *dtype, model **out,
                     char *err, size_t errsize);

/* The projections, head and embedding of m, whatever its matrices' dtype.
 * scratch is model_scratch_bytes(m, N) bytes (NULL when that is 0). */
size_t model_scratch_bytes(const model *m, int N);
/* out[N, OC] = in @ W^T (+ bias) of projection mod of a layer. */
int model_proj_forward(const model *m, int layer, enum peft_module mod, float *out, void *scratch,
                       const float *in, int N);
/* The same plus the LoRA terms of groups (rows grouped by adapter), in
 * one backend call when the backend fuses them (linear_lora_forward; the
 * caller checks it is there): lora_scratch is its linear_lora_scratch_bytes
 * (N, OC, max_rank), scratch as above. */
int model_proj_lora_forward(const model *m, int layer, enum peft_module mod, float *out,
                            void *lora_scratch, void *scratch, const float *in, int N,
                            const kernels_lora_group *groups, int n_groups, int max_rank);
/* dx += dy @ W; dw/db (fp32 models only, full fine-tuning) += their gradients. */
int model_proj_backward(const model *m, int layer, enum peft_module mod, float *dx, float *dw,
                        float *db, void *scratch, const float *dy, const float *in, int N);
/* logits[N, V] = x @ lm_head^T. */
int model_head_forward(const model *m, float *logits, void *scratch, const float *x, int N);
/* dx += dlogits @ lm_head; dw += its gradient (fp32 models only). */
int model_head_backward(const model *m, float *dx, float *dw, void *scratch, const float *dlogits,
                        const float *x, int N);
/* out[N, d] = embed[ids]. */
int model_embed_forward(const model *m, float *out, const int32_t *ids, int N);

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
    uint64_t uid;             /* unique per adapter object in this process (never 0): what
                               * the serving prefix cache keys an adapter's KV rows by */
} lora;

/* A new adapter for c: A Kaiming-uniform(a = sqrt 5), B zero (PEFT's init). */
int lora_create(const model_config *c, const peft_config *pc, const kernels_backend *be,
                uint64_t seed, lora **out);

/* Loads a PEFT adapter directory, validated against c (modules, shapes). */
int lora_load(const char *dir, const model_config *c, const kernels_backend *be, lora **out,
              char *err, size_t errsize);

struct sft_tensor;

/* Checks one adapter tensor against the base and the adapter's config
 * (key form, layer, target module, shape [r, in] / [out, r], float dtype);
 * on success sets *slot (layer * PEFT_MODULE_COUNT + module) and *which
 * ('A' or 'B'). RT_ERR_FORMAT / RT_ERR_UNSUPPORTED with err naming the tensor. */
int lora_check_tensor(const model_config *c, const peft_config *pc, const struct sft_tensor *t,
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

/* W + scaling * B A, written into m's fp32 weights (for `retune merge`);
 * RT_ERR_UNSUPPORTED for a model with 16-bit weights. */
int lora_merge_into(const lora *l, model *m);

/* ---- forward / backward -------------------------------------------------- */

typedef struct model_acts model_acts;

/* Activations for batches of B sequences of T tokens (with room for LoRA
 * rank r, 0 for none). Freed with model_acts_free. */
int model_acts_create(const model *m, int B, int T, int lora_r, model_acts **out);
void model_acts_free(model_acts *a);

/* As model_acts_create with activation checkpointing when recompute is set:
 * only each layer's input is kept, and model_backward runs each layer's
 * forward again before its backward (one more forward pass of compute for
 * activations of about one layer instead of all of them). */
int model_acts_create_ckpt(const model *m, int B, int T, int lora_r, bool recompute,
                           model_acts **out);

/* Bytes model_acts_create_ckpt would allocate on the device for these
 * sizes (activations and scratch), without allocating them. */
size_t model_acts_bytes(const model *m, int B, int T, int lora_r, bool recompute);

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

/* Bytes a run with m loaded may use, for the memory plans of training and
 * serving: RETUNE_MEMORY_LIMIT when set (a budget for the whole run, as a
 * test or an operator sets it), else the kernel's MemAvailable plus m's
 * weights when they are allocated rather than mapped (so that a plan's
 * total, weights included, compares with it). 0 when unknown. */
double model_memory_available(const model *m);

/* Device pointer to the logits [B*T, V] of the last forward (model_backward
 * overwrites them with their gradient). */
const float *model_acts_logits(const model_acts *a);

#endif
