/*
 * engine/infer_forward.c — the serving forward pass: a KV cache of fixed
 * slots and one forward over the tokens of many sequences at once, each
 * sequence with its own adapter (the S-LoRA/Punica idea):
 *   - every base projection is one matmul over all rows of the step;
 *   - the LoRA term is added per run of rows sharing an adapter
 *     (out[rows] += scaling * (x[rows] A^T) B^T);
 *   - each sequence's new keys/values are appended to its cache slot, then
 *     attention runs over the slots: all short segments (decode) in one
 *     attention_kv_batch_forward call, each prefill on its own;
 *   - the final norm and lm_head run only on the rows whose logits are
 *     wanted.
 * Memory: the KV cache is one device allocation, the step activations
 * another (sized once for max_tokens rows), the LoRA intermediate a third
 * that grows to the largest rank seen. Nothing is saved for backward.
 */
#include "engine/infer.h"

#include <stdlib.h>
#include <string.h>

struct infer_ctx {
    const model *m;
    const kernels_backend *be;
    int slots, ctx, N;               /* cache slots, positions per slot, rows per step */
    int bs, n_blocks;                /* positions per cache block, blocks */
    size_t kvd, qd;                  /* kv and q widths (heads * head_dim) */
    float *kv;                       /* the cache: k then v, each [L, n_blocks, bs, kvd] */
    infer_kv *blocks;                /* which block holds each slot's positions */
    float *buf;                      /* the step activations, one allocation */
    float *x, *ln, *rstd, *q, *k, *v, *att, *tmp, *gate, *up, *h, *logits;
    float *q_raw, *k_raw, *rstd_qk;  /* Qwen3: q/k before their head norms (else empty) */
    void *lora_t;                    /* LoRA scratch: [N, lora_r] first (lora_scratch_bytes) */
    int lora_r;
    size_t max_oc;                   /* the widest projection output */
    void *scratch;                   /* attention_kv scratch */
    void *w16_scratch;               /* 16-bit weight panels (NULL for fp32 weights) */
    int32_t *ids, *pos;              /* device [N] each */
    int32_t *host_pos;               /* host [N] */
    int *seg_row;                    /* host [N]: first row of each segment */
    kernels_kv_seq *kv_seqs;         /* host [N]: the step's batched attention */
};

/* Splits buf into the step's tensors, each rounded to 16 floats (64 bytes);
 * with buf NULL only counts. Returns the floats used. */
static size_t point_step(infer_ctx *c, float *buf)
{
    const model_config *mc = &c->m->cfg;
    size_t N = (size_t)c->N, d = (size_t)mc->hidden_size, F = (size_t)mc->intermediate_size;
    struct { float **slot; size_t n; } t[] = {
        {&c->x, N * d}, {&c->ln, N * d}, {&c->rstd, N}, {&c->q, N * c->qd},
        {&c->k, N * c->kvd}, {&c->v, N * c->kvd}, {&c->att, N * c->qd}, {&c->tmp, N * d},
        {&c->gate, N * F}, {&c->up, N * F}, {&c->h, N * F},
        {&c->logits, N * (size_t)mc->vocab_size},
        {&c->q_raw, mc->qk_norm ? N * c->qd : 0}, {&c->k_raw, mc->qk_norm ? N * c->kvd : 0},
        {&c->rstd_qk, mc->qk_norm ? N * (size_t)mc->num_attention_heads : 0},
    };
    size_t off = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (buf)
            *t[i].slot = buf + off;
        off += (t[i].n + 15) & ~(size_t)15;
    }
    return off;
}

/* Floats of the KV cache: keys and values of every layer, block and row. */
static size_t kv_floats(const infer_ctx *c)
{
    return 2 * (size_t)c->m->cfg.num_hidden_layers * (size_t)c->n_blocks * (size_t)c->bs * c->kvd;
}

/* Sets the sizes of a context (no allocation). */
static void ctx_shape(infer_ctx *c, const model *m, int slots, int max_context, int max_tokens)
{
    c->m = m;
    c->be = m->be;
    c->slots = slots;
    c->ctx = max_context;
    c->N = max_tokens;
    /* blocks need the batched attention; without it one block is a slot */
    c->bs = m->be->attention_kv_batch_forward && INFER_KV_BLOCK < max_context ? INFER_KV_BLOCK
                                                                              : max_context;
    c->n_blocks = slots * ((max_context + c->bs - 1) / c->bs);
    c->kvd = (size_t)m->cfg.num_key_value_heads * (size_t)m->cfg.head_dim;
    c->qd = (size_t)m->cfg.num_attention_heads * (size_t)m->cfg.head_dim;
    size_t d = (size_t)m->cfg.hidden_size, F = (size_t)m->cfg.intermediate_size;
    c->max_oc = c->qd > d ? c->qd : d;
    c->max_oc = F > c->max_oc ? F : c->max_oc;
}

/* Bytes of LoRA scratch for ranks up to r: the fused projection's when the
 * backend has it (its head is the [N, r] block the grouped op uses). */
static size_t lora_scratch_bytes(const infer_ctx *c, int r)
{
    if (c->be->linear_lora_forward)
        return c->be->linear_lora_scratch_bytes(c->N, (int)c->max_oc, r);
    return (size_t)c->N * (size_t)r * sizeof(float);
}

/* Allocates the cache, the step buffers and the host arrays. */
static int ctx_alloc(infer_ctx *c)
{
    const model_config *mc = &c->m->cfg;
    const kernels_backend *be = c->be;
    int rc = be->alloc((void **)&c->kv, kv_floats(c) * sizeof(float));
    if (rc == RT_OK)
        rc = infer_kv_create(c->slots, c->ctx, c->bs, &c->blocks);
    if (rc == RT_OK)
        rc = be->alloc((void **)&c->buf, point_step(c, NULL) * sizeof(float));
    if (rc == RT_OK)
        rc = be->alloc((void **)&c->ids, 2 * (size_t)c->N * sizeof(int32_t));
    size_t sb = be->attention_kv_scratch_bytes(c->N, c->ctx, mc->num_attention_heads,
                                               mc->num_key_value_heads, mc->head_dim);
    if (rc == RT_OK && sb)
        rc = be->alloc(&c->scratch, sb);
    size_t wb = model_scratch_bytes(c->m, c->N);
    if (rc == RT_OK && wb)
        rc = be->alloc(&c->w16_scratch, wb);
    if (rc != RT_OK)
        return rc;
    point_step(c, c->buf);
    c->pos = c->ids + c->N;
    c->host_pos = malloc((size_t)c->N * sizeof *c->host_pos);
    c->seg_row = malloc((size_t)c->N * sizeof *c->seg_row);
    c->kv_seqs = malloc((size_t)c->N * sizeof *c->kv_seqs);
    return c->host_pos && c->seg_row && c->kv_seqs ? RT_OK : RT_ERR_NOMEM;
}

/* The KV cache and step buffers for m; see engine/infer.h. */
int infer_ctx_create(const model *m, int slots, int max_context, int max_tokens, infer_ctx **out)
{
    const model_config *mc = &m->cfg;
    if (slots < 1 || max_context < 1 || max_tokens < 1 ||
        max_context > mc->max_position_embeddings)
        return RT_ERR_INVALID;
    infer_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return RT_ERR_NOMEM;
    ctx_shape(c, m, slots, max_context, max_tokens);
    int rc = ctx_alloc(c);
    if (rc != RT_OK) {
        infer_ctx_free(c);
        return rc;
    }
    *out = c;
    return RT_OK;
}

/* Bytes infer_ctx_create would allocate; see engine/infer.h. */
void infer_ctx_bytes(const model *m, int slots, int max_context, int max_tokens, size_t *kv,
                     size_t *step)
{
    infer_ctx c = {0};
    ctx_shape(&c, m, slots, max_context, max_tokens);
    const model_config *mc = &m->cfg;
    *kv = kv_floats(&c) * sizeof(float);
    *step = point_step(&c, NULL) * sizeof(float) + 2 * (size_t)c.N * sizeof(int32_t) +
            m->be->attention_kv_scratch_bytes(c.N, c.ctx, mc->num_attention_heads,
                                              mc->num_key_value_heads, mc->head_dim) +
            model_scratch_bytes(m, c.N);
}

/* Frees the cache, the buffers and the context; NULL is allowed. */
void infer_ctx_free(infer_ctx *c)
{
    if (!c)
        return;
    c->be->free(c->kv);
    c->be->free(c->buf);
    c->be->free(c->lora_t);
    c->be->free(c->scratch);
    c->be->free(c->w16_scratch);
    c->be->free(c->ids);
    free(c->host_pos);
    free(c->seg_row);
    free(c->kv_seqs);
    infer_kv_free(c->blocks);
    free(c);
}

/* Checks the step against the context and fills seg_row and positions;
 * makes the LoRA buffer wide enough for the largest rank used. */
static int prepare_step(infer_ctx *c, const infer_step *st)
{
    if (st->n_tokens < 1 || st->n_tokens > c->N || st->n_segs < 1 ||
        st->n_logit_rows < 0 || st->n_logit_rows > c->N)
        return RT_ERR_INVALID;
    int row = 0, r_max = 0;
    for (int i = 0; i < st->n_segs; i++) {
        const infer_seg *s = &st->segs[i];
        if (s->slot < 0 || s->slot >= c->slots || s->past < 0 || s->n < 1 ||
            s->past + s->n > c->ctx || row + s->n > st->n_tokens)
            return RT_ERR_INVALID;
        int rc = infer_kv_reserve(c->blocks, s->slot, s->past + s->n);
        if (rc == RT_OK)
            rc = infer_kv_check_write(c->blocks, s->slot, s->past, s->n);
        if (rc != RT_OK)
            return rc;
        c->seg_row[i] = row;
        for (int j = 0; j < s->n; j++)
            c->host_pos[row + j] = s->past + j;
        row += s->n;
        if (s->ad && s->ad->cfg.r > r_max)
            r_max = s->ad->cfg.r;
    }
    if (row != st->n_tokens)
        return RT_ERR_INVALID;
    for (int i = 0; i < st->n_logit_rows; i++)
        if (st->logit_rows[i] < 0 || st->logit_rows[i] >= st->n_tokens)
            return RT_ERR_INVALID;
    if (r_max <= c->lora_r)
        return RT_OK;
    void *t = NULL;
    int rc = c->be->alloc(&t, lora_scratch_bytes(c, r_max));
    if (rc != RT_OK)
        return rc;
    c->be->free(c->lora_t);
    c->lora_t = t;
    c->lora_r = r_max;
    return RT_OK;
}

/* Applies the LoRA terms of n groups: one gathered call (SGMV) when the
 * backend has it, else two products per group. */
static int lora_groups(infer_ctx *c, float *out, const float *in, const kernels_lora_group *g, int n,
                       int N, int C, int OC)
{
    const kernels_backend *be = c->be;
    if (be->lora_group_forward)
        return be->lora_group_forward(out, c->lora_t, in, g, n, N, C, OC, c->lora_r, NULL);
    int rc = RT_OK;
    for (int i = 0; rc == RT_OK && i < n; i++) {
        rc = be->linear_forward(c->lora_t, in + (size_t)g[i].row0 * C, g[i].a, NULL, g[i].rows, C,
                                g[i].r, NULL);
        if (rc == RT_OK)
            rc = be->matmul(out + (size_t)g[i].row0 * OC, c->lora_t, g[i].b, g[i].rows, OC, g[i].r,
                            0, 1, g[i].scale, 1.0f, NULL);
    }
    return rc;
}

/* The LoRA groups of projection mod in a layer: each run of segments
 * sharing an adapter that targets it (rows are ordered by adapter, so each
 * adapter is one contiguous group), from segment *next on, at most max;
 * *next moves past the segments taken. Returns the count. */
static int collect_groups(const infer_ctx *c, const infer_step *st, int layer,
                          enum peft_module mod, kernels_lora_group *groups, int max, int *next)
{
    size_t s = (size_t)layer * PEFT_MODULE_COUNT + (size_t)mod;
    int n = 0, i = *next;
    while (i < st->n_segs && n < max) {
        const lora *ad = st->segs[i].ad;
        int j = i + 1;
        while (j < st->n_segs && st->segs[j].ad == ad)
            j++;
        int r0 = c->seg_row[i], rows = (j < st->n_segs ? c->seg_row[j] : st->n_tokens) - r0;
        if (ad && ad->a[s])
            groups[n++] = (kernels_lora_group){ad->a[s], ad->b[s], r0, rows, ad->cfg.r, ad->scaling};
        i = j;
    }
    *next = i;
    return n;
}

/* out[N, OC] = in @ W^T (+ b) once for every row of the step, plus the LoRA
 * term of each adapter's rows: in one backend call when the backend fuses
 * the two and the step's adapters fit one batch of groups, else the base
 * product and then the groups a batch at a time. */
static int proj(infer_ctx *c, const infer_step *st, int layer, enum peft_module mod, float *out,
                const float *in)
{
    enum { BATCH = 64 };
    int OC, C, N = st->n_tokens, next = 0;
    model_module_shape(&c->m->cfg, mod, &OC, &C);
    kernels_lora_group groups[BATCH];
    int n = collect_groups(c, st, layer, mod, groups, BATCH, &next);
    if (n > 0 && next == st->n_segs && c->be->linear_lora_forward)
        return model_proj_lora_forward(c->m, layer, mod, out, c->lora_t, c->w16_scratch, in, N,
                                       groups, n, c->lora_r);
    int rc = model_proj_forward(c->m, layer, mod, out, c->w16_scratch, in, N);
    while (rc == RT_OK && n > 0) {
        rc = lora_groups(c, out, in, groups, n, N, C, OC);
        n = rc == RT_OK ? collect_groups(c, st, layer, mod, groups, BATCH, &next) : 0;
    }
    return rc;
}

static int be_copy(infer_ctx *c, float *dst, const float *src, size_t bytes)
{
    return c->be->copy_device(dst, src, bytes, NULL);
}

/* Copies n rows of k/v (the step's rows from row) to positions [past,
 * past + n) of a slot's blocks in one layer's cache. */
static int write_kv(infer_ctx *c, float *kl, float *vl, const int32_t *table, int past, int n,
                    size_t row)
{
    int rc = RT_OK;
    for (int p = past, e; rc == RT_OK && p < past + n; row += (size_t)(e - p), p = e) {
        e = (p / c->bs + 1) * c->bs;
        e = e < past + n ? e : past + n;
        size_t at = ((size_t)table[p / c->bs] * (size_t)c->bs + (size_t)(p % c->bs)) * c->kvd;
        size_t bytes = (size_t)(e - p) * c->kvd * sizeof(float);
        rc = be_copy(c, kl + at, c->k + row * c->kvd, bytes);
        if (rc == RT_OK)
            rc = be_copy(c, vl + at, c->v + row * c->kvd, bytes);
    }
    return rc;
}

/* Writes each segment's new keys/values into its cache blocks, then runs
 * attention over the blocks: every segment in one batched call when the
 * backend has it, else one call per segment over its single block. */
static int attend(infer_ctx *c, const infer_step *st, int layer)
{
    const model_config *mc = &c->m->cfg;
    const kernels_backend *be = c->be;
    size_t layer_floats = (size_t)c->n_blocks * (size_t)c->bs * c->kvd;
    float *kl = c->kv + (size_t)layer * layer_floats;
    float *vl = kl + (size_t)mc->num_hidden_layers * layer_floats;
    int rc = RT_OK, window = model_layer_window(mc, layer);
    for (int i = 0; rc == RT_OK && i < st->n_segs; i++) {
        const infer_seg *s = &st->segs[i];
        const int32_t *table = infer_kv_table(c->blocks, s->slot);
        size_t row = (size_t)c->seg_row[i];
        rc = write_kv(c, kl, vl, table, s->past, s->n, row);
        c->kv_seqs[i] = (kernels_kv_seq){table, (int)row, s->n, s->past};
        if (rc == RT_OK && !be->attention_kv_batch_forward) {
            size_t at = (size_t)table[0] * (size_t)c->bs * c->kvd;
            rc = be->attention_kv_forward(c->att + row * c->qd, c->scratch, c->q + row * c->qd,
                                          kl + at, vl + at, s->n, s->past,
                                          mc->num_attention_heads, mc->num_key_value_heads,
                                          mc->head_dim, window, NULL);
        }
    }
    if (rc == RT_OK && be->attention_kv_batch_forward)
        rc = be->attention_kv_batch_forward(c->att, c->scratch, c->q, kl, vl, c->bs, c->kv_seqs,
                                            st->n_segs, mc->num_attention_heads,
                                            mc->num_key_value_heads, mc->head_dim, window, NULL);
    return rc;
}

/* Qwen3's RMSNorm over each query and key head of N rows (q_raw -> q,
 * k_raw -> k). */
static int qk_norm(infer_ctx *c, int N, int l)
{
    const model_config *mc = &c->m->cfg;
    const layer_weights *lw = &c->m->w.layers[l];
    int D = mc->head_dim;
    int rc = c->be->rmsnorm_forward(c->q, c->rstd_qk, c->q_raw, lw->q_norm,
                                    N * mc->num_attention_heads, D, mc->rms_norm_eps, NULL);
    if (rc == RT_OK)
        rc = c->be->rmsnorm_forward(c->k, c->rstd_qk, c->k_raw, lw->k_norm,
                                    N * mc->num_key_value_heads, D, mc->rms_norm_eps, NULL);
    return rc;
}

/* One decoder layer over the step's rows, in place on c->x. */
static int layer_forward(infer_ctx *c, const infer_step *st, int l)
{
    const model_config *mc = &c->m->cfg;
    const kernels_backend *be = c->be;
    const layer_weights *lw = &c->m->w.layers[l];
    int N = st->n_tokens, d = mc->hidden_size, D = mc->head_dim;
    int64_t nd = (int64_t)N * d, nf = (int64_t)N * mc->intermediate_size;
    int rc = be->rmsnorm_forward(c->ln, c->rstd, c->x, lw->ln1, N, d, mc->rms_norm_eps, NULL);
    bool qkn = mc->qk_norm;
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_Q_PROJ, qkn ? c->q_raw : c->q, c->ln);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_K_PROJ, qkn ? c->k_raw : c->k, c->ln);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_V_PROJ, c->v, c->ln);
    if (rc == RT_OK && qkn) rc = qk_norm(c, N, l);
    if (rc == RT_OK)
        rc = be->rope_forward(c->q, c->q, c->pos, c->m->inv_freq, N, mc->num_attention_heads, D, NULL);
    if (rc == RT_OK)
        rc = be->rope_forward(c->k, c->k, c->pos, c->m->inv_freq, N, mc->num_key_value_heads, D, NULL);
    if (rc == RT_OK && c->m->rope_qscale != 1.0f) /* YaRN's attention factor, squared */
        rc = be->scale(c->q, (int64_t)N * (int64_t)c->qd, c->m->rope_qscale, NULL);
    if (rc == RT_OK) rc = attend(c, st, l);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_O_PROJ, c->tmp, c->att);
    if (rc == RT_OK) rc = be->add(c->x, c->x, c->tmp, nd, NULL);
    if (rc == RT_OK)
        rc = be->rmsnorm_forward(c->ln, c->rstd, c->x, lw->ln2, N, d, mc->rms_norm_eps, NULL);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_GATE_PROJ, c->gate, c->ln);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_UP_PROJ, c->up, c->ln);
    if (rc == RT_OK) rc = be->swiglu_forward(c->h, c->gate, c->up, nf, NULL);
    if (rc == RT_OK) rc = proj(c, st, l, PEFT_DOWN_PROJ, c->tmp, c->h);
    if (rc == RT_OK) rc = be->add(c->x, c->x, c->tmp, nd, NULL);
    return rc;
}

/* Final norm and lm_head on the wanted rows only, logits copied out. */
static int head_forward(infer_ctx *c, const infer_step *st, float *logits)
{
    const model_config *mc = &c->m->cfg;
    const kernels_backend *be = c->be;
    int n = st->n_logit_rows, d = mc->hidden_size, V = mc->vocab_size;
    if (n == 0)
        return RT_OK;
    int rc = RT_OK;
    for (int i = 0; rc == RT_OK && i < n; i++) /* gather the rows into tmp */
        rc = be->copy_device(c->tmp + (size_t)i * d, c->x + (size_t)st->logit_rows[i] * d,
                             (size_t)d * sizeof(float), NULL);
    if (rc == RT_OK)
        rc = be->rmsnorm_forward(c->ln, c->rstd, c->tmp, c->m->w.final_norm, n, d,
                                 mc->rms_norm_eps, NULL);
    if (rc == RT_OK)
        rc = model_head_forward(c->m, c->logits, c->w16_scratch, c->ln, n);
    if (rc == RT_OK)
        rc = be->copy_to_host(logits, c->logits, (size_t)n * (size_t)V * sizeof(float), NULL);
    return rc;
}

/* ids -> embeddings -> layers -> logits of the wanted rows. */
int infer_forward(infer_ctx *c, const infer_step *st, float *logits)
{
    const model_config *mc = &c->m->cfg;
    const kernels_backend *be = c->be;
    int rc = prepare_step(c, st);
    size_t N = (size_t)st->n_tokens;
    if (rc == RT_OK)
        rc = be->copy_to_device(c->ids, st->ids, N * sizeof(int32_t), NULL);
    if (rc == RT_OK)
        rc = be->copy_to_device(c->pos, c->host_pos, N * sizeof(int32_t), NULL);
    if (rc == RT_OK)
        rc = model_embed_forward(c->m, c->x, c->ids, (int)N);
    for (int l = 0; rc == RT_OK && l < mc->num_hidden_layers; l++)
        rc = layer_forward(c, st, l);
    if (rc == RT_OK)
        rc = head_forward(c, st, logits);
    for (int i = 0; rc == RT_OK && i < st->n_segs; i++) { /* the rows are in the cache now */
        const infer_seg *g = &st->segs[i];
        infer_kv_written(c->blocks, g->slot, g->past, st->ids + c->seg_row[i], g->n,
                         g->ad ? g->ad->uid : 0);
    }
    return rc;
}

int infer_ctx_attach_prefix(infer_ctx *c, int slot, const int32_t *ids, int n, const lora *ad)
{
    return infer_kv_attach_prefix(c->blocks, slot, ids, n, ad ? ad->uid : 0);
}

void infer_ctx_release(infer_ctx *c, int slot)
{
    infer_kv_release(c->blocks, slot);
}

long long infer_ctx_reused_tokens(const infer_ctx *c)
{
    return infer_kv_reused_tokens(c->blocks);
}
