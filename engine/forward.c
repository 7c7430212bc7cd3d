/*
 * engine/forward.c — the model's forward and backward passes over the
 * backend's layer ops, with LoRA applied beside each targeted projection:
 *   y = W x (+ b) + scaling * B (A dropout(x))
 * Activations live in one device allocation sized once for (B, T).
 * For a frozen W the backward pass computes dX only, never dW.
 */
#include "engine/model.h"

#include <stdlib.h>
#include <string.h>

#include "engine/rng.h"

struct model_acts {
    const kernels_backend *be;
    int B, T, N, r, L;
    bool recompute;          /* activation checkpointing: one layer's tensors, shared */
    float *buf;              /* the one float allocation */
    int32_t *ibuf;           /* ids, targets, positions */
    void *att_scratch;
    void *w16_scratch;       /* the 16-bit weight products' panels (NULL for fp32) */
    int32_t *ids, *targets, *pos;
    /* saved for backward, per layer (host arrays of device pointers) */
    float **resid, **ln1, **rstd1, **q, **k, **v, **att, **lse, **resid_mid, **ln2, **rstd2;
    float **gate, **up, **h, **lora_t;
    float **q_raw, **k_raw, **rstdq, **rstdk; /* Qwen3: q/k before their head norms */
    float *lnf, *rstdf, *logits, *losses, *correct, *ce_lse;
    /* backward scratch, reused by every layer */
    float *dresid, *dln, *dq, *dk, *dv, *dqr, *dkr, *datt, *dgate, *dup, *dh, *dlogits;
    float *dt, *lscratch, *mask;
    /* host staging */
    float *host_mask, *host_stats;
    int32_t *host_pos;
    size_t max_in;           /* widest projection input (mask size per row) */
};

/* ---- one-allocation planner: record (slot, floats), then point them ---- */

typedef struct plan {
    float ***slot;           /* where each tensor's pointer goes */
    size_t *count;           /* its floats, rounded to 16 */
    size_t n, cap, total;
    bool nomem;
} plan;

/* Records one tensor of floats; grows the plan as needed (no fixed limit on
 * depth or width). A failed growth sets p->nomem and drops the tensor. */
static void plan_add(plan *p, float **slot, size_t floats)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        float ***s = realloc(p->slot, cap * sizeof *s);
        if (s)
            p->slot = s;
        size_t *c = s ? realloc(p->count, cap * sizeof *c) : NULL;
        if (!c) {
            p->nomem = true;
            return;
        }
        p->count = c;
        p->cap = cap;
    }
    size_t rounded = (floats + 15) & ~(size_t)15; /* keep every tensor 64-byte aligned */
    p->slot[p->n] = slot;
    p->count[p->n++] = rounded;
    p->total += rounded;
}

static void plan_point(const plan *p, float *base)
{
    for (size_t i = 0; i < p->n; i++) {
        *p->slot[i] = base;
        base += p->count[i];
    }
}

/* Allocates the host arrays of per-layer pointers. */
static int alloc_layer_arrays(model_acts *a, int L)
{
    float ***arrays[] = {&a->ln1, &a->rstd1, &a->q, &a->k, &a->v, &a->att, &a->lse,
                         &a->resid_mid, &a->ln2, &a->rstd2, &a->gate, &a->up, &a->h,
                         &a->q_raw, &a->k_raw, &a->rstdq, &a->rstdk};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        if (!(*arrays[i] = calloc((size_t)L, sizeof(float *))))
            return RT_ERR_NOMEM;
    a->resid = calloc((size_t)L + 1, sizeof(float *));
    a->lora_t = calloc((size_t)L * PEFT_MODULE_COUNT, sizeof(float *));
    return a->resid && a->lora_t ? RT_OK : RT_ERR_NOMEM;
}

/* Plans every activation and scratch tensor for N tokens. With recompute
 * only the residual stream is kept per layer: every layer's other tensors
 * are one set (planned for layer 0, shared by share_layer_tensors), which
 * the backward pass refills by running the layer's forward again. */
static void plan_acts(model_acts *a, const model_config *c, plan *p)
{
    size_t N = (size_t)a->N, d = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t qd = (size_t)c->num_attention_heads * (size_t)c->head_dim;
    size_t kvd = (size_t)c->num_key_value_heads * (size_t)c->head_dim;
    size_t V = (size_t)c->vocab_size, L = (size_t)c->num_hidden_layers;
    for (size_t l = 0; l <= L; l++)
        plan_add(p, &a->resid[l], N * d);
    for (size_t l = 0; l < (a->recompute ? 1 : L); l++) {
        plan_add(p, &a->ln1[l], N * d);
        plan_add(p, &a->rstd1[l], N);
        plan_add(p, &a->q[l], N * qd);
        plan_add(p, &a->k[l], N * kvd);
        plan_add(p, &a->v[l], N * kvd);
        plan_add(p, &a->att[l], N * qd);
        plan_add(p, &a->lse[l], N * (size_t)c->num_attention_heads);
        plan_add(p, &a->resid_mid[l], N * d);
        plan_add(p, &a->ln2[l], N * d);
        plan_add(p, &a->rstd2[l], N);
        plan_add(p, &a->gate[l], N * F);
        plan_add(p, &a->up[l], N * F);
        plan_add(p, &a->h[l], N * F);
        if (c->qk_norm) {
            plan_add(p, &a->q_raw[l], N * qd);
            plan_add(p, &a->k_raw[l], N * kvd);
            plan_add(p, &a->rstdq[l], N * (size_t)c->num_attention_heads);
            plan_add(p, &a->rstdk[l], N * (size_t)c->num_key_value_heads);
        }
        for (size_t m = 0; a->r > 0 && m < PEFT_MODULE_COUNT; m++)
            plan_add(p, &a->lora_t[l * PEFT_MODULE_COUNT + m], N * (size_t)a->r);
    }
    plan_add(p, &a->lnf, N * d);
    plan_add(p, &a->rstdf, N);
    plan_add(p, &a->logits, N * V);
    plan_add(p, &a->losses, N);
    plan_add(p, &a->correct, N);
    plan_add(p, &a->ce_lse, N);
    float **scratch_d[] = {&a->dresid, &a->dln};
    for (size_t i = 0; i < 2; i++)
        plan_add(p, scratch_d[i], N * d);
    plan_add(p, &a->dq, N * qd);
    plan_add(p, &a->dqr, N * qd);
    plan_add(p, &a->datt, N * qd);
    plan_add(p, &a->dk, N * kvd);
    plan_add(p, &a->dkr, N * kvd);
    plan_add(p, &a->dv, N * kvd);
    plan_add(p, &a->dgate, N * F);
    plan_add(p, &a->dup, N * F);
    plan_add(p, &a->dh, N * F);
    if (a->r > 0) {
        plan_add(p, &a->dt, N * (size_t)a->r);
        plan_add(p, &a->lscratch, N * a->max_in);
        plan_add(p, &a->mask, N * a->max_in);
    }
}

/* With recompute, points every layer's tensors (but the residual stream)
 * at layer 0's. */
static void share_layer_tensors(model_acts *a)
{
    float **per_layer[] = {a->ln1, a->rstd1, a->q, a->k, a->v, a->att, a->lse, a->resid_mid,
                           a->ln2, a->rstd2, a->gate, a->up, a->h, a->q_raw, a->k_raw, a->rstdq,
                           a->rstdk};
    for (int l = 1; a->recompute && l < a->L; l++) {
        for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++)
            per_layer[i][l] = per_layer[i][0];
        for (int m = 0; m < PEFT_MODULE_COUNT; m++)
            a->lora_t[(size_t)l * PEFT_MODULE_COUNT + m] = a->lora_t[m];
    }
}

size_t model_acts_bytes(const model *m, int B, int T, int lora_r, bool recompute)
{
    model_acts a = {.B = B, .T = T, .N = B * T, .r = lora_r, .L = m->cfg.num_hidden_layers,
                    .recompute = recompute};
    const model_config *c = &m->cfg;
    size_t qd = (size_t)c->num_attention_heads * (size_t)c->head_dim, bytes = 0;
    a.max_in = (size_t)c->hidden_size;
    a.max_in = (size_t)c->intermediate_size > a.max_in ? (size_t)c->intermediate_size : a.max_in;
    a.max_in = qd > a.max_in ? qd : a.max_in;
    plan p = {0};
    if (alloc_layer_arrays(&a, c->num_hidden_layers) == RT_OK) {
        plan_acts(&a, c, &p);
        bytes = p.total * sizeof(float) + model_scratch_bytes(m, a.N) +
                m->be->attention_scratch_bytes(B, T, c->num_attention_heads, c->num_key_value_heads,
                                               c->head_dim);
    }
    float ***arrays[] = {&a.resid, &a.ln1, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse,
                         &a.resid_mid, &a.ln2, &a.rstd2, &a.gate, &a.up, &a.h, &a.lora_t,
                         &a.q_raw, &a.k_raw, &a.rstdq, &a.rstdk};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(*arrays[i]);
    free(p.slot);
    free(p.count);
    return p.nomem ? SIZE_MAX : bytes;
}

int model_acts_create(const model *m, int B, int T, int lora_r, model_acts **out)
{
    return model_acts_create_ckpt(m, B, T, lora_r, false, out);
}

int model_acts_create_ckpt(const model *m, int B, int T, int lora_r, bool recompute,
                           model_acts **out)
{
    const model_config *c = &m->cfg;
    if (B <= 0 || T <= 0 || lora_r < 0)
        return RT_ERR_INVALID;
    model_acts *a = calloc(1, sizeof *a);
    if (!a)
        return RT_ERR_NOMEM;
    a->be = m->be;
    a->B = B;
    a->T = T;
    a->N = B * T;
    a->r = lora_r;
    a->L = c->num_hidden_layers;
    a->recompute = recompute;
    size_t qd = (size_t)c->num_attention_heads * (size_t)c->head_dim;
    a->max_in = (size_t)c->hidden_size;
    if ((size_t)c->intermediate_size > a->max_in)
        a->max_in = (size_t)c->intermediate_size;
    if (qd > a->max_in)
        a->max_in = qd;
    plan pl = {0}, *p = &pl;
    int rc = alloc_layer_arrays(a, c->num_hidden_layers);
    if (rc == RT_OK) {
        plan_acts(a, c, p);
        rc = p->nomem ? RT_ERR_NOMEM : RT_OK;
    }
    if (rc == RT_OK)
        rc = m->be->alloc((void **)&a->buf, p->total * sizeof(float));
    if (rc == RT_OK) {
        plan_point(p, a->buf);
        share_layer_tensors(a);
        a->dlogits = a->logits; /* cross-entropy backward overwrites the logits */
        rc = m->be->alloc((void **)&a->ibuf, 3 * (size_t)a->N * sizeof(int32_t));
    }
    size_t sb = m->be->attention_scratch_bytes(B, T, c->num_attention_heads,
                                               c->num_key_value_heads, c->head_dim);
    if (rc == RT_OK && sb)
        rc = m->be->alloc(&a->att_scratch, sb);
    size_t wb = model_scratch_bytes(m, a->N);
    if (rc == RT_OK && wb)
        rc = m->be->alloc(&a->w16_scratch, wb);
    a->host_mask = lora_r > 0 ? malloc((size_t)a->N * a->max_in * sizeof(float)) : NULL;
    a->host_stats = malloc(2 * (size_t)a->N * sizeof(float));
    a->host_pos = malloc((size_t)a->N * sizeof(int32_t));
    if (rc == RT_OK && ((lora_r > 0 && !a->host_mask) || !a->host_stats || !a->host_pos))
        rc = RT_ERR_NOMEM;
    free(p->slot);
    free(p->count);
    if (rc != RT_OK) {
        model_acts_free(a);
        return rc;
    }
    a->ids = a->ibuf;
    a->targets = a->ibuf + a->N;
    a->pos = a->ibuf + 2 * (size_t)a->N;
    *out = a;
    return RT_OK;
}

void model_acts_free(model_acts *a)
{
    if (!a)
        return;
    a->be->free(a->buf);
    a->be->free(a->ibuf);
    a->be->free(a->att_scratch);
    a->be->free(a->w16_scratch);
    float ***arrays[] = {&a->resid, &a->ln1, &a->rstd1, &a->q, &a->k, &a->v, &a->att, &a->lse,
                         &a->resid_mid, &a->ln2, &a->rstd2, &a->gate, &a->up, &a->h, &a->lora_t,
                         &a->q_raw, &a->k_raw, &a->rstdq, &a->rstdk};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(*arrays[i]);
    free(a->host_mask);
    free(a->host_stats);
    free(a->host_pos);
    free(a);
}

const float *model_acts_logits(const model_acts *a) { return a->logits; }

/* ---- projections with LoRA ----------------------------------------------- */

/* What one projection call needs to know. */
typedef struct proj_ctx {
    const model *m;
    const lora *ad;
    model_acts *a;
    const model_batch *batch;
    int N;
} proj_ctx;

static size_t slot_of(int layer, enum peft_module mod)
{
    return (size_t)layer * PEFT_MODULE_COUNT + (size_t)mod;
}

static bool uses_dropout(const proj_ctx *x)
{
    return x->batch->training && x->ad && x->ad->cfg.lora_dropout > 0.0f;
}

/* Writes dropout(x) of this projection's input into a->lscratch: the mask
 * comes from (dropout_key, layer, module), so backward regenerates it. */
static int dropout_input(const proj_ctx *x, int layer, enum peft_module mod, const float *in,
                         int C)
{
    model_acts *a = x->a;
    float p = x->ad->cfg.lora_dropout, keep = 1.0f / (1.0f - p);
    uint64_t key = rng_mix(x->batch->dropout_key ^ rng_mix(slot_of(layer, mod) + 1));
    size_t n = (size_t)x->N * (size_t)C;
    for (size_t i = 0; i < n; i++)
        a->host_mask[i] = rng_hash_uniform(key, i) >= p ? keep : 0.0f;
    int rc = x->m->be->copy_to_device(a->mask, a->host_mask, n * sizeof(float), NULL);
    return rc == RT_OK ? x->m->be->mul_forward(a->lscratch, in, a->mask, (int64_t)n, NULL) : rc;
}

/* out[N, OC] = in @ W^T (+ b) + scaling * (dropout(in) @ A^T) @ B^T */
static int proj_forward(const proj_ctx *x, int layer, enum peft_module mod, float *out,
                        const float *in)
{
    const kernels_backend *be = x->m->be;
    int OC, C;
    model_module_shape(&x->m->cfg, mod, &OC, &C);
    int rc = model_proj_forward(x->m, layer, mod, out, x->a->w16_scratch, in, x->N);
    size_t s = slot_of(layer, mod);
    if (rc != RT_OK || !x->ad || !x->ad->a[s])
        return rc;
    const float *xin = in;
    if (uses_dropout(x)) {
        rc = dropout_input(x, layer, mod, in, C);
        xin = x->a->lscratch;
    }
    float *t = x->a->lora_t[s];
    int r = x->ad->cfg.r;
    if (rc == RT_OK)
        rc = be->linear_forward(t, xin, x->ad->a[s], NULL, x->N, C, r, NULL);
    if (rc == RT_OK)
        rc = be->matmul(out, t, x->ad->b[s], x->N, OC, r, 0, 1, x->ad->scaling, 1.0f, NULL);
    return rc;
}

/* The LoRA part of a projection's backward: dB, dA (when lgrads) and the
 * input gradient through B A, accumulated into dx. */
static int lora_backward(const proj_ctx *x, int layer, enum peft_module mod, float *dx,
                         const float *dy, const float *in, const lora *lgrads)
{
    const kernels_backend *be = x->m->be;
    model_acts *a = x->a;
    size_t s = slot_of(layer, mod);
    int OC, C, r = x->ad->cfg.r, N = x->N;
    float sc = x->ad->scaling;
    model_module_shape(&x->m->cfg, mod, &OC, &C);
    const float *xin = in;
    int rc = RT_OK;
    bool drop = uses_dropout(x);
    if (drop) {
        rc = dropout_input(x, layer, mod, in, C);
        xin = a->lscratch;
    }
    if (rc == RT_OK && lgrads) /* dB[OC, r] += sc * dy^T @ t */
        rc = be->matmul(lgrads->b[s], dy, a->lora_t[s], OC, r, N, 1, 0, sc, 1.0f, NULL);
    if (rc == RT_OK) /* dt[N, r] = sc * dy @ B */
        rc = be->matmul(a->dt, dy, x->ad->b[s], N, r, OC, 0, 0, sc, 0.0f, NULL);
    if (rc == RT_OK && lgrads) /* dA[r, C] += dt^T @ dropout(x) */
        rc = be->matmul(lgrads->a[s], a->dt, xin, r, C, N, 1, 0, 1.0f, 1.0f, NULL);
    if (rc != RT_OK)
        return rc;
    if (!drop) /* dx += dt @ A */
        return be->matmul(dx, a->dt, x->ad->a[s], N, C, r, 0, 0, 1.0f, 1.0f, NULL);
    rc = be->matmul(a->lscratch, a->dt, x->ad->a[s], N, C, r, 0, 0, 1.0f, 0.0f, NULL);
    return rc == RT_OK ? be->mul_backward(dx, a->lscratch, a->mask, (int64_t)N * C, NULL) : rc;
}

/* Backward of proj_forward: dx += dy @ W (+ LoRA path); dW/db only when
 * grads (full fine-tuning) is given. */
static int proj_backward(const proj_ctx *x, int layer, enum peft_module mod, float *dx,
                         const float *dy, const float *in, const model_weights *grads,
                         const lora *lgrads)
{
    float *dw = grads ? grads->layers[layer].proj[mod] : NULL;
    float *db = grads && mod <= PEFT_V_PROJ ? grads->layers[layer].bias[mod] : NULL;
    int rc = model_proj_backward(x->m, layer, mod, dx, dw, db, x->a->w16_scratch, dy, in, x->N);
    if (rc != RT_OK || !x->ad || !x->ad->a[slot_of(layer, mod)])
        return rc;
    return lora_backward(x, layer, mod, dx, dy, in, lgrads);
}

/* ---- forward --------------------------------------------------------------- */

/* Copies ids, targets and positions of the batch to the device. */
static int upload_batch(model_acts *a, const model_batch *b, const kernels_backend *be)
{
    size_t N = (size_t)b->B * (size_t)b->T;
    for (size_t n = 0; n < N; n++)
        a->host_pos[n] = (int32_t)(n % (size_t)b->T);
    int rc = be->copy_to_device(a->ids, b->ids, N * sizeof(int32_t), NULL);
    if (rc == RT_OK)
        rc = be->copy_to_device(a->pos, a->host_pos, N * sizeof(int32_t), NULL);
    if (rc == RT_OK && b->targets)
        rc = be->copy_to_device(a->targets, b->targets, N * sizeof(int32_t), NULL);
    return rc;
}

/* One decoder layer forward. */
static int layer_forward(const proj_ctx *x, int l)
{
    const model *m = x->m;
    const model_config *c = &m->cfg;
    const kernels_backend *be = m->be;
    const layer_weights *lw = &m->w.layers[l];
    model_acts *a = x->a;
    int N = x->N, d = c->hidden_size, Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    int D = c->head_dim, B = x->batch->B, T = x->batch->T;
    int rc = be->rmsnorm_forward(a->ln1[l], a->rstd1[l], a->resid[l], lw->ln1, N, d,
                                 c->rms_norm_eps, NULL);
    bool qkn = c->qk_norm;
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_Q_PROJ, qkn ? a->q_raw[l] : a->q[l], a->ln1[l]);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_K_PROJ, qkn ? a->k_raw[l] : a->k[l], a->ln1[l]);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_V_PROJ, a->v[l], a->ln1[l]);
    if (rc == RT_OK && qkn) /* Qwen3: RMSNorm over each head, before RoPE */
        rc = be->rmsnorm_forward(a->q[l], a->rstdq[l], a->q_raw[l], lw->q_norm, N * Hq, D,
                                 c->rms_norm_eps, NULL);
    if (rc == RT_OK && qkn)
        rc = be->rmsnorm_forward(a->k[l], a->rstdk[l], a->k_raw[l], lw->k_norm, N * Hkv, D,
                                 c->rms_norm_eps, NULL);
    if (rc == RT_OK) rc = be->rope_forward(a->q[l], a->q[l], a->pos, m->inv_freq, N, Hq, D, NULL);
    if (rc == RT_OK) rc = be->rope_forward(a->k[l], a->k[l], a->pos, m->inv_freq, N, Hkv, D, NULL);
    if (rc == RT_OK && m->rope_qscale != 1.0f) /* YaRN's attention factor, squared */
        rc = be->scale(a->q[l], (int64_t)N * Hq * D, m->rope_qscale, NULL);
    if (rc == RT_OK)
        rc = be->attention_forward(a->att[l], a->lse[l], a->att_scratch, a->q[l], a->k[l], a->v[l],
                                   B, T, Hq, Hkv, D, model_layer_window(c, l), NULL);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_O_PROJ, a->resid_mid[l], a->att[l]);
    if (rc == RT_OK) rc = be->add(a->resid_mid[l], a->resid_mid[l], a->resid[l], (int64_t)N * d, NULL);
    if (rc == RT_OK)
        rc = be->rmsnorm_forward(a->ln2[l], a->rstd2[l], a->resid_mid[l], lw->ln2, N, d,
                                 c->rms_norm_eps, NULL);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_GATE_PROJ, a->gate[l], a->ln2[l]);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_UP_PROJ, a->up[l], a->ln2[l]);
    if (rc == RT_OK)
        rc = be->swiglu_forward(a->h[l], a->gate[l], a->up[l], (int64_t)N * c->intermediate_size, NULL);
    if (rc == RT_OK) rc = proj_forward(x, l, PEFT_DOWN_PROJ, a->resid[l + 1], a->h[l]);
    if (rc == RT_OK)
        rc = be->add(a->resid[l + 1], a->resid[l + 1], a->resid_mid[l], (int64_t)N * d, NULL);
    return rc;
}

/* Sums the per-position losses and hits of counted targets on the host. */
static int gather_loss(model_acts *a, const model_batch *b, const kernels_backend *be,
                       model_loss *out)
{
    size_t N = (size_t)b->B * (size_t)b->T;
    int rc = be->copy_to_host(a->host_stats, a->losses, N * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = be->copy_to_host(a->host_stats + N, a->correct, N * sizeof(float), NULL);
    if (rc != RT_OK)
        return rc;
    model_loss s = {0};
    for (size_t n = 0; n < N; n++) {
        if (b->targets[n] < 0)
            continue;
        s.loss += a->host_stats[n];
        s.correct += a->host_stats[N + n];
        s.count++;
    }
    if (s.count)
        s.loss /= (double)s.count;
    *out = s;
    return RT_OK;
}

int model_forward(const model *m, const lora *ad, model_acts *a, const model_batch *batch,
                  model_loss *out)
{
    const model_config *c = &m->cfg;
    const kernels_backend *be = m->be;
    if (batch->B <= 0 || batch->T <= 0 || batch->B > a->B || batch->T > a->T ||
        (ad && ad->cfg.r > a->r))
        return RT_ERR_INVALID;
    int N = batch->B * batch->T, d = c->hidden_size;
    proj_ctx x = {m, ad, a, batch, N};
    int rc = upload_batch(a, batch, be);
    if (rc == RT_OK)
        rc = model_embed_forward(m, a->resid[0], a->ids, N);
    for (int l = 0; rc == RT_OK && l < c->num_hidden_layers; l++)
        rc = layer_forward(&x, l);
    if (rc == RT_OK)
        rc = be->rmsnorm_forward(a->lnf, a->rstdf, a->resid[c->num_hidden_layers], m->w.final_norm,
                                 N, d, c->rms_norm_eps, NULL);
    if (rc == RT_OK)
        rc = model_head_forward(m, a->logits, a->w16_scratch, a->lnf, N);
    if (rc != RT_OK || !batch->targets || !out)
        return rc;
    rc = be->cross_entropy_forward(a->losses, a->correct, a->ce_lse, a->logits, a->targets, N,
                                   c->vocab_size, NULL);
    return rc == RT_OK ? gather_loss(a, batch, be, out) : rc;
}

/* ---- backward -------------------------------------------------------------- */

/* Zeroes n floats of device scratch. */
static int zero(const kernels_backend *be, float *p, size_t n)
{
    return be->zero(p, n * sizeof(float), NULL);
}

/* Backward of Qwen3's head norms: from the gradients of the normed q/k
 * (a->dqr, a->dkr) to those of the projections' outputs, written into
 * a->dq and a->dk (free by then); the norm weights' gradients accumulate
 * into gw when full fine-tuning. */
static int qk_norm_backward(const proj_ctx *x, int l, const layer_weights *gw)
{
    const model_config *c = &x->m->cfg;
    const kernels_backend *be = x->m->be;
    const layer_weights *lw = &x->m->w.layers[l];
    model_acts *a = x->a;
    int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim, N = x->N;
    int rc = zero(be, a->dq, (size_t)N * Hq * D);
    if (rc == RT_OK) rc = zero(be, a->dk, (size_t)N * Hkv * D);
    if (rc == RT_OK)
        rc = be->rmsnorm_backward(a->dq, gw ? gw->q_norm : NULL, a->rstdq[l], a->dqr, a->q_raw[l],
                                  lw->q_norm, N * Hq, D, NULL);
    if (rc == RT_OK)
        rc = be->rmsnorm_backward(a->dk, gw ? gw->k_norm : NULL, a->rstdk[l], a->dkr, a->k_raw[l],
                                  lw->k_norm, N * Hkv, D, NULL);
    return rc;
}

/* One decoder layer backward; a->dresid holds the gradient of the layer's
 * output on entry and of its input on return. */
static int layer_backward(const proj_ctx *x, int l, const model_weights *g, const lora *lg)
{
    const model *m = x->m;
    const model_config *c = &m->cfg;
    const kernels_backend *be = m->be;
    const layer_weights *lw = &m->w.layers[l];
    const layer_weights *gw = g ? &g->layers[l] : NULL;
    model_acts *a = x->a;
    size_t N = (size_t)x->N, d = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim;
    size_t qd = (size_t)Hq * (size_t)D, kvd = (size_t)Hkv * (size_t)D;
    int rc = zero(be, a->dh, N * F);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_DOWN_PROJ, a->dh, a->dresid, a->h[l], g, lg);
    if (rc == RT_OK) rc = zero(be, a->dgate, N * F);
    if (rc == RT_OK) rc = zero(be, a->dup, N * F);
    if (rc == RT_OK)
        rc = be->swiglu_backward(a->dgate, a->dup, a->dh, a->gate[l], a->up[l], (int64_t)(N * F), NULL);
    if (rc == RT_OK) rc = zero(be, a->dln, N * d);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_GATE_PROJ, a->dln, a->dgate, a->ln2[l], g, lg);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_UP_PROJ, a->dln, a->dup, a->ln2[l], g, lg);
    if (rc == RT_OK)
        rc = be->rmsnorm_backward(a->dresid, gw ? gw->ln2 : NULL, a->rstd2[l], a->dln,
                                  a->resid_mid[l], lw->ln2, x->N, (int)d, NULL);
    if (rc == RT_OK) rc = zero(be, a->datt, N * qd);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_O_PROJ, a->datt, a->dresid, a->att[l], g, lg);
    if (rc == RT_OK) rc = zero(be, a->dq, N * qd);
    if (rc == RT_OK) rc = zero(be, a->dk, N * kvd);
    if (rc == RT_OK) rc = zero(be, a->dv, N * kvd);
    if (rc == RT_OK)
        rc = be->attention_backward(a->dq, a->dk, a->dv, a->lse[l], a->att_scratch, a->datt,
                                    a->q[l], a->k[l], a->v[l], x->batch->B, x->batch->T, Hq, Hkv,
                                    D, model_layer_window(c, l), NULL);
    if (rc == RT_OK && m->rope_qscale != 1.0f)
        rc = be->scale(a->dq, (int64_t)(N * qd), m->rope_qscale, NULL);
    if (rc == RT_OK) rc = zero(be, a->dqr, N * qd);
    if (rc == RT_OK) rc = zero(be, a->dkr, N * kvd);
    if (rc == RT_OK) rc = be->rope_backward(a->dqr, a->dq, a->pos, m->inv_freq, x->N, Hq, D, NULL);
    if (rc == RT_OK) rc = be->rope_backward(a->dkr, a->dk, a->pos, m->inv_freq, x->N, Hkv, D, NULL);
    const float *dq_in = a->dqr, *dk_in = a->dkr; /* gradients of the projections' outputs */
    if (rc == RT_OK && c->qk_norm) {
        rc = qk_norm_backward(x, l, gw);
        dq_in = a->dq;
        dk_in = a->dk;
    }
    if (rc == RT_OK) rc = zero(be, a->dln, N * d);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_Q_PROJ, a->dln, dq_in, a->ln1[l], g, lg);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_K_PROJ, a->dln, dk_in, a->ln1[l], g, lg);
    if (rc == RT_OK) rc = proj_backward(x, l, PEFT_V_PROJ, a->dln, a->dv, a->ln1[l], g, lg);
    if (rc == RT_OK)
        rc = be->rmsnorm_backward(a->dresid, gw ? gw->ln1 : NULL, a->rstd1[l], a->dln,
                                  a->resid[l], lw->ln1, x->N, (int)d, NULL);
    return rc;
}

/* Counts the targets that carry loss (the mean's denominator). */
static int64_t count_targets(const model_batch *b)
{
    int64_t n = 0;
    for (size_t i = 0; i < (size_t)b->B * (size_t)b->T; i++)
        n += b->targets[i] >= 0;
    return n;
}

int model_backward(const model *m, const lora *ad, model_acts *a, const model_batch *batch,
                   const model_weights *grads, const lora *lora_grads)
{
    const model_config *c = &m->cfg;
    const kernels_backend *be = m->be;
    if (!batch->targets)
        return RT_ERR_INVALID;
    int N = batch->B * batch->T, d = c->hidden_size, V = c->vocab_size;
    int64_t counted = count_targets(batch);
    if (counted == 0)
        return RT_OK; /* no loss, no gradient */
    proj_ctx x = {m, ad, a, batch, N};
    int rc = be->cross_entropy_backward(a->dlogits, a->ce_lse, a->logits, a->targets, NULL, N, V,
                                        1.0f / (float)counted, NULL);
    if (rc == RT_OK) rc = zero(be, a->dln, (size_t)N * (size_t)d);
    if (rc == RT_OK)
        rc = model_head_backward(m, a->dln, grads ? grads->lm_head : NULL, a->w16_scratch,
                                 a->dlogits, a->lnf, N);
    if (rc == RT_OK) rc = zero(be, a->dresid, (size_t)N * (size_t)d);
    if (rc == RT_OK)
        rc = be->rmsnorm_backward(a->dresid, grads ? grads->final_norm : NULL, a->rstdf, a->dln,
                                  a->resid[c->num_hidden_layers], m->w.final_norm, N, d, NULL);
    for (int l = c->num_hidden_layers - 1; rc == RT_OK && l >= 0; l--) {
        if (a->recompute) /* refill the layer's shared tensors from its saved input */
            rc = layer_forward(&x, l);
        if (rc == RT_OK)
            rc = layer_backward(&x, l, grads, lora_grads);
    }
    if (rc == RT_OK && grads)
        rc = be->embedding_backward(grads->embed, a->dresid, a->ids, N, d, V, NULL);
    return rc;
}
