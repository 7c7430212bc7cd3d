/*
 * engine/model_config.h — (internal to engine/) the architecture of a
 * Llama-family model, as read from a Hugging Face config.json. Shared by the
 * config parser (formats) and the model (forward/backward).
 */
#ifndef RT_ENGINE_MODEL_CONFIG_H
#define RT_ENGINE_MODEL_CONFIG_H

#include <stdbool.h>

enum model_arch { MODEL_ARCH_LLAMA, MODEL_ARCH_MISTRAL, MODEL_ARCH_QWEN2, MODEL_ARCH_QWEN3 };

/* rope_scaling's rope_type (transformers' ROPE_INIT_FUNCTIONS names). */
enum model_rope_type {
    MODEL_ROPE_DEFAULT,  /* none, or "default" */
    MODEL_ROPE_LLAMA3,   /* Llama 3.1: smooth per-band division by factor */
    MODEL_ROPE_LINEAR,   /* position interpolation: every frequency / factor */
    MODEL_ROPE_YARN,     /* YaRN: ramped interpolation + attention factor */
};

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
    /* rope_scaling: factor (0 when rope_type is default), Llama-3's band
     * factors, and the pre-scaling context (llama3, yarn). */
    float rope_scaling_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_position;
    int bos_token_id, eos_token_id; /* -1 when absent */
    char torch_dtype[16];           /* "float32", "bfloat16", "float16" */
    enum model_rope_type rope_type;
    /* Sliding-window attention: 0 = every layer sees the whole context;
     * else layers >= max_window_layers see only the last sliding_window
     * positions (Mistral: all layers; Qwen2/3 with use_sliding_window). */
    int sliding_window;
    int max_window_layers;
    bool qk_norm;                   /* Qwen3: RMSNorm over each q and k head before RoPE */
    /* YaRN's optional parameters as given (0 / absent: transformers' default). */
    float rope_beta_fast, rope_beta_slow;
    float rope_mscale, rope_mscale_all_dim;
    float rope_attention_factor;
    bool rope_no_truncate;          /* "truncate": false */
} model_config;

#endif
