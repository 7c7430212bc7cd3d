/*
 * engine/infer.h — (internal to engine/) the pieces of the serving engine
 * behind engine/engine_serve.h:
 *
 *   infer_ctx   a model's KV cache (one slot of max_context positions per
 *               concurrent sequence) and the activation buffers of one
 *               scheduler step, with infer_forward: one forward pass over
 *               the tokens of many sequences, each with its own adapter.
 *   adapter_registry   named PEFT adapters, validated when added, loaded on
 *               first use, kept in an LRU bounded by bytes, reference
 *               counted so that eviction or removal never frees an adapter
 *               a request still uses.
 *   infer_text  helpers of the scheduler's output side: log-softmax and top
 *               alternatives, the repetition penalty, stop-string scanning.
 *   the server  engine_serve.h's structs (engine_server, engine_handle) and
 *               the scheduler entry points the engine thread calls
 *               (engine/infer_server.c, engine/infer_sched.c).
 *
 * Everything returns rt_error codes; out-parameters are untouched on failure.
 */
#ifndef RT_ENGINE_INFER_H
#define RT_ENGINE_INFER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/json_grammar.h"
#include "engine/model.h"
#include "engine/rng.h"
#include "engine/sample.h"
#include "engine/tokenizer.h"

/* ---- the KV cache's blocks and the prefix cache (engine/infer_kv.c) ----- */

/* Which block holds each position of each slot, and the registry of full
 * blocks that later prompts with the same prefix (tokens and adapter) take
 * instead of computing them. Host bookkeeping, engine thread only. */
typedef struct infer_kv infer_kv;

/* slots tables over slots * ceil(max_context / block_size) blocks. Prefix
 * sharing is possible only when block_size < max_context. */
int infer_kv_create(int slots, int max_context, int block_size, infer_kv **out);
void infer_kv_free(infer_kv *kv);
int infer_kv_blocks(const infer_kv *kv);
int infer_kv_block_size(const infer_kv *kv);
/* Tokens taken from the prefix cache since creation. */
long long infer_kv_reused_tokens(const infer_kv *kv);
/* slot's block table (position p is in block table[p / block_size]). */
const int32_t *infer_kv_table(const infer_kv *kv, int slot);
/* Grows slot's table to cover positions [0, end). RT_ERR_INVALID beyond
 * max_context. */
int infer_kv_reserve(infer_kv *kv, int slot, int end);
/* RT_OK when positions [p, p + n) of slot are reserved and not shared. */
int infer_kv_check_write(const infer_kv *kv, int slot, int p, int n);
/* Positions [p, p + n) of slot now hold the rows of ids, computed with
 * adapter uid (0: the base): blocks that fill are registered. */
void infer_kv_written(infer_kv *kv, int slot, int p, const int32_t *ids, int n, uint64_t uid);
/* An empty slot starting a prompt of n ids: takes the longest registered
 * run of full blocks matching its start (leaving at least one id to
 * compute) and returns the positions taken, a multiple of the block size. */
int infer_kv_attach_prefix(infer_kv *kv, int slot, const int32_t *ids, int n, uint64_t uid);
/* slot's sequence ended: its blocks are dropped (registered ones stay
 * cached until their rows are needed). */
void infer_kv_release(infer_kv *kv, int slot);

/* ---- KV cache and the batched forward pass ------------------------------ */

/* Positions per KV cache block (on a backend with paged attention). */
#define INFER_KV_BLOCK 32

typedef struct infer_ctx infer_ctx;

/*
 * Allocates the KV cache (room for slots sequences of max_context positions,
 * every layer, in blocks of [block_size, kv_head, head_dim]: INFER_KV_BLOCK
 * positions when the backend has attention_kv_batch_forward, else one
 * block of max_context per slot) and the buffers of a step
 * of at most max_tokens tokens for m (borrowed; must outlive the context).
 * Errors: RT_ERR_INVALID (a size < 1 or max_context over the model's
 * max_position_embeddings), RT_ERR_NOMEM. Free with infer_ctx_free.
 */
int infer_ctx_create(const model *m, int slots, int max_context, int max_tokens, infer_ctx **out);

/* Frees the context; NULL is allowed. */
void infer_ctx_free(infer_ctx *c);

/* Prefix caching for a sequence starting in an empty slot: the positions
 * of ids[0, n) it takes from the cache (0 when none or when the backend
 * keeps one block per slot), computed with adapter ad (NULL: the base).
 * Its first segment then starts at that past. */
int infer_ctx_attach_prefix(infer_ctx *c, int slot, const int32_t *ids, int n, const lora *ad);

/* The sequence in slot ended: its cache blocks are released. */
void infer_ctx_release(infer_ctx *c, int slot);

/* Tokens taken from the prefix cache so far. */
long long infer_ctx_reused_tokens(const infer_ctx *c);

/* What infer_ctx_create(m, slots, max_context, max_tokens) would allocate:
 * *kv the KV cache's bytes, *step the step buffers' (activations, scratch,
 * ids), for the memory plan made before opening it. */
void infer_ctx_bytes(const model *m, int slots, int max_context, int max_tokens, size_t *kv,
                     size_t *step);

/* One sequence's share of a step: its n new tokens occupy the next n rows
 * of the step and go to positions [past, past+n) of cache slot `slot`
 * (positions < past must have been written by earlier steps). ad is the
 * sequence's adapter (borrowed) or NULL for the base model. */
typedef struct infer_seg {
    int slot;
    int past;
    int n;
    const lora *ad;
} infer_seg;

/* A step: the token ids of every segment in row order (host, n_tokens) and
 * the rows whose next-token logits are wanted (host, ascending or not).
 * Segments using the same adapter should be adjacent: each run of equal
 * adapters costs one LoRA product per projection. */
typedef struct infer_step {
    const int32_t *ids;
    int n_tokens;
    const infer_seg *segs;
    int n_segs;
    const int32_t *logit_rows;
    int n_logit_rows;
} infer_step;

/*
 * Runs the model over the step: the base projections once over all rows,
 * the LoRA term per run of segments sharing an adapter
 * (out[rows] += scaling * (x[rows] A^T) B^T), attention per segment against
 * its cache slot (whose positions [past, past+n) it writes). Writes the
 * logits of logit_rows, in that order, into logits (host, n_logit_rows x
 * vocab_size floats). Errors: RT_ERR_INVALID (segments not covering
 * n_tokens, a slot or position out of range, too many tokens, a bad id or
 * row), RT_ERR_NOMEM (growing the LoRA buffer for a larger rank), or the
 * backend's code.
 */
int infer_forward(infer_ctx *c, const infer_step *st, float *logits);

/* ---- adapter registry --------------------------------------------------- */

typedef struct adapter_registry adapter_registry;
typedef struct adapter_entry adapter_entry;

/* A registry for adapters of the model described by cfg (copied) on be,
 * keeping at most budget_bytes of unpinned adapter weights resident.
 * Free with adapter_registry_free once nothing is pinned. */
int adapter_registry_create(const model_config *cfg, const kernels_backend *be,
                            size_t budget_bytes, adapter_registry **out);

/* Frees every entry and the registry; NULL is allowed. */
void adapter_registry_free(adapter_registry *r);

/*
 * Checks that dir holds a PEFT adapter that fits the base model (config,
 * tensor names, shapes, dtypes; the weights are not read) without
 * registering it. RT_ERR_FORMAT / RT_ERR_UNSUPPORTED / RT_ERR_NOT_FOUND /
 * RT_ERR_IO with err naming what does not fit.
 */
int adapter_validate(const model_config *cfg, const char *dir, char *err, size_t errsize);

/* Validates dir and registers it under name (both copied). Weights load on
 * first use. RT_ERR_EXISTS when the name is taken, RT_ERR_INVALID for an
 * empty name, or adapter_validate's codes. */
int adapter_registry_add(adapter_registry *r, const char *name, const char *dir, char *err,
                         size_t errsize);

/* Unregisters name at once; its weights are freed when the last request
 * using it finishes. RT_ERR_NOT_FOUND when there is no such adapter. */
int adapter_registry_remove(adapter_registry *r, const char *name);

/* True when name is registered (and not removed). */
bool adapter_registry_exists(adapter_registry *r, const char *name);

/*
 * Pins the adapter called name for a request and makes its weights
 * resident, loading them in the calling thread when needed (other threads
 * asking for the same adapter wait for that load; nothing else does), then
 * evicts least recently used unpinned adapters beyond the budget. The
 * entry stays valid until adapter_registry_release. Errors:
 * RT_ERR_NOT_FOUND (no such adapter), or lora_load's codes with err set.
 */
int adapter_registry_acquire(adapter_registry *r, const char *name, adapter_entry **out,
                             char *err, size_t errsize);

/* True when name is registered and its weights are resident. */
bool adapter_registry_resident(adapter_registry *r, const char *name);

/* Unpins an entry from adapter_registry_acquire; frees it when it was
 * removed and this was its last user. */
void adapter_registry_release(adapter_registry *r, adapter_entry *e);

/* The resident weights of a pinned entry (borrowed while pinned). */
const lora *adapter_entry_lora(const adapter_entry *e);

/* Bytes of adapter weights resident now, and the number of entries
 * resident (for tests and metrics). */
void adapter_registry_usage(adapter_registry *r, size_t *bytes, int *resident);

/* ---- output helpers ----------------------------------------------------- */

/* log(sum(exp(row))) of row[V], in double. */
double infer_logsumexp(const float *row, int V);

/* The n (<= 20) most likely tokens of row[V] with their log-probabilities
 * row[i] - lse, most likely first (ties: lower id first). */
void infer_top_logprobs(const float *row, int V, double lse, int n, int32_t *ids, float *lps);

/* Hugging Face's repetition penalty on row[V] for every token whose bit is
 * set in seen (V bits): a logit < 0 is multiplied by penalty, others are
 * divided by it. */
void infer_repetition_penalty(float *row, int V, const uint8_t *seen, double penalty);

/*
 * Scans text[0..len) for stop strings (n of them; empty ones ignored).
 * When one occurs, *match is set and *emit is the offset of the earliest
 * occurrence: the text to hand out ends there. Otherwise *emit is len minus
 * the longest suffix that begins some stop string (text that must be held
 * back until more arrives); with final true nothing is held back.
 */
void infer_stop_scan(const char *text, size_t len, const char *const *stops, int n, bool final,
                     size_t *emit, bool *match);

/* ---- the server's internals (engine/infer_server.c, infer_sched.c) ----- */

/* One accepted request: everything engine_submit copied. Two references:
 * the submitter's handle and the engine's, dropped after on_done. */
struct engine_handle {
    atomic_int refs;
    atomic_bool cancelled;
    engine_handle *next;            /* waiting-queue link (under srv->mu) */
    adapter_entry *adapter;         /* pinned from submit to finish; NULL = base */
    int32_t *tokens;                /* prompt then completion, cap entries */
    int n_prompt, cap, max_tokens;
    sample_params sp;
    double penalty;                 /* 1: off */
    double presence, frequency;     /* OpenAI's penalties; 0: off */
    engine_logit_bias *bias;        /* owned copy, n_bias entries */
    int n_bias;
    uint64_t seed;
    char *stop[ENGINE_MAX_STOP];    /* owned copies */
    int n_stop;
    bool logprobs, echo;
    bool keep_special;              /* the text keeps special tokens (tool-call markers) */
    int top_logprobs;
    const json_grammar *grammar;    /* response_format (borrowed until on_done), or NULL */
    void *ctx;
    int (*on_token)(void *ctx, const engine_token_event *ev);
    void (*on_done)(void *ctx, const engine_result *res);
};

/* A sequence in a KV cache slot; touched by the engine thread only. */
typedef struct infer_seq {
    engine_handle *h;               /* NULL: the slot is free */
    int n_tokens, n_past, n_gen;    /* known, cached, generated */
    uint64_t order;                 /* admission order (prefill priority) */
    uint64_t planned;               /* the step that last gave it a prefill chunk */
    rng rng;
    tokenizer_stream *out, *echo;   /* completion text; prompt text (echo) */
    char *text;                     /* completion text not handed out yet */
    size_t text_len, text_cap;
    uint8_t *seen;                  /* repetition-penalty bitmap, or NULL */
    uint32_t *counts;               /* per id, times generated (presence/frequency), or NULL */
    int32_t *distinct;              /* the ids generated, each once, n_distinct of them */
    int n_distinct;
    json_matcher *json;             /* where the output is in h->grammar, or NULL */
    json_matcher *trial;            /* scratch for greedy's one-token test, or NULL */
} infer_seq;

/* The scheduler's per-step bookkeeping of one segment. */
typedef struct infer_step_seg {
    infer_seq *s;
    int first_logit, n_echo;        /* its rows among the step's logits */
    bool sample;                    /* its last row's logits pick a token */
} infer_step_seg;

struct engine_server {
    engine_server_config cfg;       /* numbers resolved; strings not kept */
    engine_server_info info;
    const kernels_backend *be;
    model *m;
    tokenizer *tok;                 /* NULL without tokenizer.json */
    int n_sample;                   /* ids sampled and in logprobs: the tokenizer's,
                                       not the model's padding past it */
    chat_template *tmpl;
    infer_ctx *ictx;
    adapter_registry *reg;
    int32_t stop_ids[3];            /* end-of-turn / eos tokens */
    int n_stop_ids;
    atomic_uint_fast64_t seed_counter;

    pthread_mutex_t mu;             /* guards the fields up to `thread` */
    pthread_cond_t wake;
    engine_handle *wait_head, *wait_tail;
    int n_waiting, n_active;
    bool closing;
    pthread_t thread;
    bool started;

    /* constrained decoding: the vocabulary as the grammar matcher walks it,
     * built by the first request with a grammar (any submitting thread,
     * under vocab_mu), then read-only until close; the engine thread reads
     * it only for requests submitted after it was built. */
    pthread_mutex_t vocab_mu;
    json_vocab *vocab;
    char *vocab_bytes;              /* every token's bytes, token i's at vocab_off[i] */
    size_t *vocab_off;              /* [n_sample + 1] */

    /* statistics (engine thread writes, anyone reads) */
    atomic_uint_fast64_t n_steps;   /* forward steps run */
    atomic_int max_groups;          /* most adapter groups (base counts) in one step */
    atomic_uint_fast64_t n_masks;   /* grammar masks computed (response_format) */
    atomic_uint_fast64_t mask_ns;   /* time spent computing and applying them */
    atomic_uint_fast64_t n_unmasked; /* constrained greedy tokens taken without a mask */

    /* engine thread only */
    infer_seq *seqs;                /* max_batch slots */
    uint64_t next_order, step_no;
    int32_t *step_ids, *logit_rows; /* [max_step_tokens] */
    infer_seg *segs;                /* [max_batch] */
    infer_step_seg *meta;           /* [max_batch] */
    float *logits;                  /* host [max_step_tokens, V] */
    float *work;                    /* sampling scratch [2V] + a raw row [V] */
    uint8_t *allowed;               /* a constrained sequence's token mask [V] */
};

/* Starts h (popped from the queue, counted active) in a free slot; on
 * failure finishes it with "error". Engine thread. */
void infer_sched_start(engine_server *srv, engine_handle *h);

/* Finishes a request that never got a slot (on_done with reason and error
 * (may be NULL), adapter unpinned, engine reference dropped);
 * counted_active says whether it was counted in n_active. */
void infer_sched_abandon(engine_server *srv, engine_handle *h, const char *reason,
                         const char *error, bool counted_active);

/* Drops finished or cancelled sequences, then runs one step over the rest
 * (if any): forward, echo, sampling, streaming, stop conditions. */
void infer_sched_step(engine_server *srv);

/* Finishes every active sequence with "cancelled" (closing). */
void infer_sched_cancel_all(engine_server *srv);

/* Drops one reference to h; the last frees it. */
void infer_handle_unref(engine_handle *h);

/* ---- constrained decoding (engine/infer_grammar.c) ----------------------- */

/* Builds srv->vocab on first use (any thread; once per server): every
 * sampleable token's raw bytes, special tokens none. RT_ERR_UNSUPPORTED
 * without a tokenizer, RT_ERR_NOMEM. */
int infer_grammar_vocab(engine_server *srv);

/* Frees what infer_grammar_vocab built. */
void infer_grammar_vocab_free(engine_server *srv);

/*
 * Restricts row[0..n_sample) to the tokens that may follow m: the others
 * get -INFINITY; once m is done only the stop ids remain, before that
 * never. srv->allowed holds the mask afterwards and *n_allowed its count
 * (0: nothing can follow). Engine thread. RT_ERR_NOMEM.
 */
int infer_grammar_mask(engine_server *srv, const json_matcher *m, float *row, int *n_allowed);

/* Feeds token id's bytes to m; RT_ERR_INVALID (m unchanged) when they do
 * not fit. */
int infer_grammar_advance(const engine_server *srv, json_matcher *m, int32_t id);

/* True when token id may follow m (what infer_grammar_mask would allow,
 * for one token: the greedy choice is tried before a whole mask is made).
 * trial (same grammar) is scratch, overwritten. */
bool infer_grammar_accepts(const engine_server *srv, const json_matcher *m, json_matcher *trial,
                           int32_t id);

#endif
