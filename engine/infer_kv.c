/*
 * engine/infer_kv.c — the serving KV cache's blocks and its prefix cache
 * (see infer.h). Host bookkeeping only: the keys and values themselves live
 * in infer_forward.c's device allocation, block b at rows
 * [b * block_size, (b + 1) * block_size) of every layer.
 *
 * A block holds block_size consecutive positions of one sequence. Each
 * slot (a running sequence) has a table of the blocks that hold its
 * positions, taken from a pool of slots * ceil(max_context / block_size)
 * blocks: as many rows as one contiguous slot each would need, so a
 * sequence can always grow to max_context, and shorter sequences leave
 * blocks free without fragmenting anything.
 *
 * Prefix cache: when a block fills, it is registered under (the block
 * before it, the adapter's uid, its token ids). A new sequence whose prompt
 * starts with registered blocks (same tokens, same adapter, the same chain
 * from position 0) takes them into its table instead of computing them;
 * they are shared read-only (only full blocks are shared, and a sequence
 * writes only positions after its shared prefix). A block nobody uses
 * stays registered until its rows are needed, least recently used first;
 * reusing it unregisters every block registered after it in a chain, so a
 * chain can never lead to rows computed for other tokens. Keys are exact
 * (token ids are compared, not hashed).
 */
#include "engine/infer.h"
#include "common/metrics.h"

#include <stdlib.h>
#include <string.h>

struct infer_kv {
    int slots, bs, per_slot, n_blocks;
    bool prefix;        /* blocks can fill before max_context: sharing is possible */
    int32_t *table;     /* [slots, per_slot]: block ids, -1 where none yet */
    int *n_table;       /* [slots]: blocks in each table */
    int *ref;           /* [n_blocks]: tables holding the block */
    bool *registered;   /* [n_blocks]: findable by its key */
    int32_t *parent;    /* [n_blocks]: the block before it in its chain (-1: first) */
    uint64_t *uid;      /* [n_blocks]: the adapter its rows were computed with */
    int32_t *tokens;    /* [n_blocks, bs]: the ids of its positions */
    uint64_t *last_use; /* [n_blocks]: LRU clock */
    uint64_t clock;
    atomic_llong reused; /* tokens taken from the prefix cache (read by other threads) */
};

int infer_kv_create(int slots, int max_context, int block_size, infer_kv **out)
{
    if (slots < 1 || max_context < 1 || block_size < 1)
        return RT_ERR_INVALID;
    infer_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return RT_ERR_NOMEM;
    kv->slots = slots;
    kv->bs = block_size;
    kv->per_slot = (max_context + block_size - 1) / block_size;
    kv->n_blocks = slots * kv->per_slot;
    kv->prefix = block_size < max_context;
    size_t nb = (size_t)kv->n_blocks;
    kv->table = malloc((size_t)slots * (size_t)kv->per_slot * sizeof *kv->table);
    kv->n_table = calloc((size_t)slots, sizeof *kv->n_table);
    kv->ref = calloc(nb, sizeof *kv->ref);
    kv->registered = calloc(nb, sizeof *kv->registered);
    kv->parent = malloc(nb * sizeof *kv->parent);
    kv->uid = calloc(nb, sizeof *kv->uid);
    kv->tokens = malloc(nb * (size_t)block_size * sizeof *kv->tokens);
    kv->last_use = calloc(nb, sizeof *kv->last_use);
    if (!kv->table || !kv->n_table || !kv->ref || !kv->registered || !kv->parent || !kv->uid ||
        !kv->tokens || !kv->last_use) {
        infer_kv_free(kv);
        return RT_ERR_NOMEM;
    }
    for (size_t i = 0; i < (size_t)slots * (size_t)kv->per_slot; i++)
        kv->table[i] = -1;
    *out = kv;
    return RT_OK;
}

void infer_kv_free(infer_kv *kv)
{
    if (!kv)
        return;
    free(kv->table);
    free(kv->n_table);
    free(kv->ref);
    free(kv->registered);
    free(kv->parent);
    free(kv->uid);
    free(kv->tokens);
    free(kv->last_use);
    free(kv);
}

int infer_kv_blocks(const infer_kv *kv) { return kv->n_blocks; }

int infer_kv_block_size(const infer_kv *kv) { return kv->bs; }

long long infer_kv_reused_tokens(const infer_kv *kv) { return atomic_load(&kv->reused); }

const int32_t *infer_kv_table(const infer_kv *kv, int slot)
{
    return kv->table + (size_t)slot * (size_t)kv->per_slot;
}

/* Unregisters b and every registered block whose chain runs through it. */
static void unregister_chain(infer_kv *kv, int32_t b)
{
    if (!kv->registered[b])
        return;
    kv->registered[b] = false;
    for (int32_t c = 0; c < kv->n_blocks; c++)
        if (kv->registered[c] && kv->parent[c] == b)
            unregister_chain(kv, c);
}

/* A block for new rows: a never-registered free one, else the least
 * recently used cached one (its chain unregistered); -1 when every block is
 * in use (impossible with the pool's size, kept as a guard). */
static int32_t take_block(infer_kv *kv)
{
    int32_t lru = -1;
    for (int32_t b = 0; b < kv->n_blocks; b++) {
        if (kv->ref[b] != 0)
            continue;
        if (!kv->registered[b])
            return b;
        if (lru < 0 || kv->last_use[b] < kv->last_use[lru])
            lru = b;
    }
    if (lru >= 0)
        unregister_chain(kv, lru);
    return lru;
}

int infer_kv_reserve(infer_kv *kv, int slot, int end)
{
    if (slot < 0 || slot >= kv->slots || end < 0 || end > kv->per_slot * kv->bs)
        return RT_ERR_INVALID;
    int32_t *t = kv->table + (size_t)slot * (size_t)kv->per_slot;
    int need = (end + kv->bs - 1) / kv->bs;
    while (kv->n_table[slot] < need) {
        int32_t b = take_block(kv);
        if (b < 0)
            return RT_ERR_NOMEM;
        kv->ref[b] = 1;
        t[kv->n_table[slot]++] = b;
    }
    return RT_OK;
}

int infer_kv_check_write(const infer_kv *kv, int slot, int p, int n)
{
    const int32_t *t = infer_kv_table(kv, slot);
    for (int i = p / kv->bs; n > 0 && i <= (p + n - 1) / kv->bs; i++)
        if (i >= kv->n_table[slot] || kv->ref[t[i]] != 1)
            return RT_ERR_STATE; /* not reserved, or shared with another sequence */
    return RT_OK;
}

/* The registered block with this key, or -1. */
static int32_t find_block(const infer_kv *kv, int32_t parent, uint64_t uid, const int32_t *ids)
{
    for (int32_t b = 0; b < kv->n_blocks; b++)
        if (kv->registered[b] && kv->parent[b] == parent && kv->uid[b] == uid &&
            memcmp(kv->tokens + (size_t)b * (size_t)kv->bs, ids, (size_t)kv->bs * sizeof *ids) == 0)
            return b;
    return -1;
}

/* Block i of slot's table just filled: registered unless an equal block
 * already is or the block before it is not (its chain would be unfindable
 * and could outlive that block's rows). */
static void register_full(infer_kv *kv, int slot, int i, uint64_t uid)
{
    const int32_t *t = infer_kv_table(kv, slot);
    int32_t b = t[i], parent = i > 0 ? t[i - 1] : -1;
    if (!kv->prefix || kv->registered[b] || (parent >= 0 && !kv->registered[parent]))
        return;
    if (find_block(kv, parent, uid, kv->tokens + (size_t)b * (size_t)kv->bs) >= 0)
        return;
    kv->registered[b] = true;
    kv->parent[b] = parent;
    kv->uid[b] = uid;
}

void infer_kv_written(infer_kv *kv, int slot, int p, const int32_t *ids, int n, uint64_t uid)
{
    const int32_t *t = infer_kv_table(kv, slot);
    for (int j = 0; j < n; j++) {
        int pos = p + j, i = pos / kv->bs;
        int32_t b = t[i];
        if (kv->registered[b]) /* rewritten by a caller that reuses positions */
            unregister_chain(kv, b);
        kv->tokens[(size_t)b * (size_t)kv->bs + (size_t)(pos % kv->bs)] = ids[j];
        if ((pos + 1) % kv->bs == 0)
            register_full(kv, slot, i, uid);
    }
}

int infer_kv_attach_prefix(infer_kv *kv, int slot, const int32_t *ids, int n, uint64_t uid)
{
    if (!kv->prefix || slot < 0 || slot >= kv->slots || kv->n_table[slot] != 0)
        return 0;
    int32_t *t = kv->table + (size_t)slot * (size_t)kv->per_slot, parent = -1;
    int i = 0;
    kv->clock++;
    /* full blocks only, and at least one prompt token left to compute (its
     * logits pick the first new token) */
    for (; (i + 1) * kv->bs <= n - 1 && i < kv->per_slot; i++) {
        int32_t b = find_block(kv, parent, uid, ids + (size_t)i * (size_t)kv->bs);
        if (b < 0)
            break;
        kv->ref[b]++;
        kv->last_use[b] = kv->clock;
        t[i] = b;
        parent = b;
    }
    kv->n_table[slot] = i;
    atomic_fetch_add(&kv->reused, (long long)i * kv->bs);
    rt_metric_add(RT_METRIC_PREFIX_CACHE_TOKENS, (uint64_t)i * (uint64_t)kv->bs);
    return i * kv->bs;
}

void infer_kv_release(infer_kv *kv, int slot)
{
    if (slot < 0 || slot >= kv->slots)
        return;
    int32_t *t = kv->table + (size_t)slot * (size_t)kv->per_slot;
    kv->clock++;
    for (int i = 0; i < kv->n_table[slot]; i++) {
        kv->ref[t[i]]--;
        kv->last_use[t[i]] = kv->clock;
        t[i] = -1;
    }
    kv->n_table[slot] = 0;
}
