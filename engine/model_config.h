/*
 * engine/model_config.h — (internal to engine/) the architecture of a
 * Llama-family model, as read from a Hugging Face config.json. Shared by the
 * config parser (formats) and the model (forward/backward).
 */
#ifndef RT_ENGINE_MODEL_CONFIG_H
#define RT_ENGINE_MODEL_CONFIG_H

#include <stdbool.h>

enum model_arch { MODEL_ARCH_LLAMA, MODEL_ARCH_MISTRAL, MODEL_ARCH_QWEN2 };

typedef struct model_config {
    enum model_arch arch;
    int vocab_size;
    int hidden_size;          /* d */
    int intermediate_size;    /* FFN width */
    int num_hidden_layers;
    int num_attention_heads;  /* query heads */
    int num_key_value_heads;  /* KV heads (GQA); == heads for MHA */
    int head_dim;             /* default hidden_size / num_attention_heads */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    bool tie_word_embeddings; /* lm_head shares embed_tokens */
    bool attention_bias;      /* q/k/v projections carry a bias (Qwen2) */
    /* Llama-3 rope_scaling ("rope_type": "llama3"); factor 0 means none. */
    float rope_scaling_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_position;
    int bos_token_id, eos_token_id; /* -1 when absent */
    char torch_dtype[16];           /* "float32", "bfloat16", "float16" */
} model_config;

#endif
