/*
 * engine/model_ops.c — a model's matrix products whatever the dtype of its
 * matrices: fp32 (the backend's linear ops, with weight gradients for full
 * fine-tuning) or a frozen 16-bit base (the linear16 ops, input gradients
 * only). Training (forward.c) and serving (infer_forward.c) both go through
 * here, so neither knows how the weights are stored.
 */
#include "engine/model.h"

size_t model_scratch_bytes(const model *m, int N)
{
    if (!m->w16)
        return 0;
    const model_config *c = &m->cfg;
    size_t most = m->be->linear16_scratch_bytes(N, c->hidden_size, c->vocab_size);
    for (int mod = 0; mod < PEFT_MODULE_COUNT; mod++) {
        int OC, C;
        model_module_shape(c, (enum peft_module)mod, &OC, &C);
        size_t b = m->be->linear16_scratch_bytes(N, C, OC);
        most = b > most ? b : most;
    }
    return most;
}

int model_proj_forward(const model *m, int layer, enum peft_module mod, float *out, void *scratch,
                       const float *in, int N)
{
    const layer_weights *lw = &m->w.layers[layer];
    int OC, C;
    model_module_shape(&m->cfg, mod, &OC, &C);
    const float *bias = mod <= PEFT_V_PROJ ? lw->bias[mod] : NULL;
    if (m->w16)
        return m->be->linear16_forward(out, scratch, in, lw->proj16[mod], m->w16, bias, N, C, OC,
                                       NULL);
    return m->be->linear_forward(out, in, lw->proj[mod], bias, N, C, OC, NULL);
}

int model_proj_lora_forward(const model *m, int layer, enum peft_module mod, float *out,
                            void *lora_scratch, void *scratch, const float *in, int N,
                            const kernels_lora_group *groups, int n_groups, int max_rank)
{
    const layer_weights *lw = &m->w.layers[layer];
    int OC, C;
    model_module_shape(&m->cfg, mod, &OC, &C);
    const float *bias = mod <= PEFT_V_PROJ ? lw->bias[mod] : NULL;
    const void *weight = m->w16 ? (const void *)lw->proj16[mod] : (const void *)lw->proj[mod];
    return m->be->linear_lora_forward(out, lora_scratch, scratch, in, weight, (int)m->w16, bias,
                                      groups, n_groups, N, C, OC, max_rank, NULL);
}

int model_proj_backward(const model *m, int layer, enum peft_module mod, float *dx, float *dw,
                        float *db, void *scratch, const float *dy, const float *in, int N)
{
    const layer_weights *lw = &m->w.layers[layer];
    int OC, C;
    model_module_shape(&m->cfg, mod, &OC, &C);
    if (!m->w16)
        return m->be->linear_backward(dx, dw, db, dy, in, lw->proj[mod], N, C, OC, NULL);
    if (dw || db)
        return RT_ERR_INVALID; /* 16-bit weights are frozen */
    return m->be->linear16_backward(dx, scratch, dy, lw->proj16[mod], m->w16, N, C, OC, NULL);
}

int model_head_forward(const model *m, float *logits, void *scratch, const float *x, int N)
{
    const model_config *c = &m->cfg;
    if (m->w16)
        return m->be->linear16_forward(logits, scratch, x, m->w.lm_head16, m->w16, NULL, N,
                                       c->hidden_size, c->vocab_size, NULL);
    return m->be->linear_forward(logits, x, m->w.lm_head, NULL, N, c->hidden_size, c->vocab_size,
                                 NULL);
}

int model_head_backward(const model *m, float *dx, float *dw, void *scratch, const float *dlogits,
                        const float *x, int N)
{
    const model_config *c = &m->cfg;
    if (!m->w16)
        return m->be->linear_backward(dx, dw, NULL, dlogits, x, m->w.lm_head, N, c->hidden_size,
                                      c->vocab_size, NULL);
    if (dw)
        return RT_ERR_INVALID;
    return m->be->linear16_backward(dx, scratch, dlogits, m->w.lm_head16, m->w16, N,
                                    c->hidden_size, c->vocab_size, NULL);
}

int model_embed_forward(const model *m, float *out, const int32_t *ids, int N)
{
    const model_config *c = &m->cfg;
    if (m->w16)
        return m->be->embedding16_forward(out, ids, m->w.embed16, m->w16, N, c->hidden_size,
                                          c->vocab_size, NULL);
    return m->be->embedding_forward(out, ids, m->w.embed, N, c->hidden_size, c->vocab_size, NULL);
}
