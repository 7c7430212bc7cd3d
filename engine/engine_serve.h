/*
 * engine/engine_serve.h — the serving side of the engine (included by
 * engine/engine.h): one frozen base model in memory, any number of LoRA
 * adapters hot-swapped per request, and one engine thread that batches the
 * requests of every adapter into the same forward pass (continuous
 * batching: each step admits waiting requests, runs one forward over every
 * active sequence's next prefill chunk or decode token, samples and streams).
 *
 * Threads: any thread may call the functions below. Request callbacks
 * (on_token, on_done) run on the engine thread, one request's calls in
 * order; they must not block long (every other request waits meanwhile)
 * and must not call engine_server_close. They may call engine_cancel.
 *
 * Functions return RT_OK or a negative rt_error code (common/rt.h);
 * out-parameters are untouched on failure; err (may be NULL) receives a
 * one-line message naming the field or file at fault.
 */
#ifndef RT_ENGINE_SERVE_H
#define RT_ENGINE_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

struct cJSON;

typedef struct engine_server engine_server;   /* a base model + engine thread */
typedef struct engine_handle engine_handle;   /* one submitted request */

/* ---- the server -------------------------------------------------------- */

/* Strings are borrowed for the call; 0 picks the default of a number. */
typedef struct engine_server_config {
    const char *model_dir;        /* HF model directory; tokenizer.json optional
                                     (without it only token-id prompts work) */
    const char *device;           /* "cpu" (default) */
    const char *dtype;            /* weights in memory: "auto" (NULL: as stored), "f32",
                                     "bf16", "f16" */
    int max_batch;                /* concurrent sequences (KV cache slots); 8 */
    int max_context;              /* prompt + completion tokens per sequence;
                                     min(max_position_embeddings, 2048) */
    int max_step_tokens;          /* tokens per forward step (prefill chunks +
                                     decode tokens); 256, at least max_batch */
    int max_waiting;              /* queued requests before RT_ERR_BUSY; 64 */
    size_t adapter_budget_bytes;  /* resident weights of unused adapters; 256 MiB */
    bool special_tokens_in_text;  /* trusted clients: special-token text in messages and
                                     prompts is control tokens. Off (the default): it is
                                     text, and only the chat template's own markers (and
                                     the tokenizer's BOS/EOS) are control tokens */
} engine_server_config;

/*
 * Loads the base model, tokenizer and chat template of cfg->model_dir
 * (tokenizer_config.json missing: ChatML), allocates the KV cache and step
 * buffers and starts the engine thread. On success *out is a server to
 * close with engine_server_close. Errors: the loaders' codes (RT_ERR_IO,
 * RT_ERR_FORMAT, RT_ERR_UNSUPPORTED, ...), RT_ERR_NOT_FOUND (unknown
 * device), RT_ERR_INVALID (a bad number), RT_ERR_NOMEM.
 */
int engine_server_open(const engine_server_config *cfg, engine_server **out, char *err,
                       size_t errsize);

/*
 * Stops the engine thread and frees the server. Every request still
 * waiting or running gets on_done with "cancelled" before this returns.
 * Handles stay valid until released. NULL is allowed. Not from a callback.
 */
void engine_server_close(engine_server *srv);

typedef struct engine_server_info {
    char model_id[256];     /* the model directory's last component */
    int context_length;     /* max_context in effect */
    int vocab_size;
    int max_batch;
    bool has_tokenizer;     /* text prompts and text output available */
    double memory_bytes;    /* the memory plan made at open: weights, KV cache, step buffers */
    char memory_text[320];  /* the same in words: "Memory estimate: ..." */
} engine_server_info;

/* Fills *out with facts about srv. */
void engine_server_info_get(const engine_server *srv, engine_server_info *out);

/* Requests queued and running now (e.g. a trainer yields while
 * *waiting > 0). Either pointer may be NULL. */
void engine_server_load(engine_server *srv, int *waiting, int *active);

/*
 * The raw bytes of token id (as a tokenizer stores them, special tokens
 * included; may be an incomplete UTF-8 sequence) into buf (cap bytes) and
 * *len, for logprob "token"/"bytes" fields. 64 bytes fit any real token.
 * Errors: RT_ERR_INVALID (bad id), RT_ERR_TOO_LARGE, RT_ERR_UNSUPPORTED
 * (no tokenizer).
 */
int engine_token_text(const engine_server *srv, int32_t id, char *buf, size_t cap, size_t *len);

/* ---- adapters ------------------------------------------------------------ */

/*
 * Registers the PEFT adapter in dir under name (both copied). It is checked
 * against the base model now (adapter_config.json, tensor names, shapes,
 * dtypes); its weights load on the first request that uses it and stay
 * resident in an LRU bounded by adapter_budget_bytes. Errors: RT_ERR_EXISTS
 * (name taken), RT_ERR_FORMAT / RT_ERR_UNSUPPORTED (does not fit; err says
 * which tensor or field), RT_ERR_NOT_FOUND / RT_ERR_IO (files).
 */
int engine_adapter_add(engine_server *srv, const char *name, const char *dir, char *err,
                       size_t errsize);

/* Unregisters name at once (a new adapter may take the name right away).
 * Requests already using it finish normally; its memory is freed when the
 * last of them ends. RT_ERR_NOT_FOUND when not registered. */
int engine_adapter_remove(engine_server *srv, const char *name);

/* True when an adapter called name is registered. */
bool engine_adapter_exists(engine_server *srv, const char *name);

/* True when name's weights are in memory (a request for it loads nothing;
 * a registered adapter is loaded on its first request). */
bool engine_adapter_resident(engine_server *srv, const char *name);

/* Loads name's weights now unless resident: the slow part of a first
 * request, for a caller that must not wait on it (api/offload.c). */
int engine_adapter_preload(engine_server *srv, const char *name, char *err, size_t errsize);

/* Adapter weights in memory now: bytes and adapters. */
void engine_adapter_usage(engine_server *srv, size_t *bytes, int *resident);

/* ---- requests -------------------------------------------------------------- */

#define ENGINE_MAX_STOP 4
#define ENGINE_MAX_TOP_LOGPROBS 20
#define ENGINE_MAX_STOP_BYTES 256
/* max_tokens: as many as the context leaves after the prompt. */
#define ENGINE_MAX_TOKENS_FIT (-1)

typedef struct engine_chat_message {
    const char *role;       /* "system", "user", "assistant", ... */
    const char *content;    /* UTF-8; NULL = empty (or null, as json has it) */
    const struct cJSON *json; /* the message as given (OpenAI's shape), or NULL:
                               its tool_calls, tool_call_id, name, ... reach
                               the chat template too */
} engine_chat_message;

/* One streamed token (or a text-only flush). Everything is borrowed for
 * the duration of the callback. */
typedef struct engine_token_event {
    const char *text;       /* new UTF-8-complete output text, len bytes (may
                               be 0: text that could begin a stop string is
                               held back and comes with a later event) */
    size_t len;
    int32_t token;          /* the token id; -1 for a text-only event (the
                               final release of held-back text) */
    bool prompt;            /* an echoed prompt token (text = its own text) */
    bool has_logprob;       /* false for the first prompt token, text-only
                               events, and completion tokens without logprobs */
    float logprob;          /* log-softmax of the model's raw logits (before
                               penalty and temperature) at token */
    int n_top;              /* alternatives, most likely first */
    const int32_t *top_tokens;
    const float *top_logprobs;
} engine_token_event;

typedef struct engine_result {
    const char *finish_reason;  /* "stop", "length", "cancelled", "error" (static) */
    int prompt_tokens;
    int completion_tokens;      /* sampled tokens, a final end-of-turn token included */
    const char *error;          /* a message when "error", else NULL; borrowed */
} engine_result;

/*
 * A completion request. Exactly one input: messages (rendered with the
 * chat template and the assistant header), prompt (raw text, encoded with
 * the tokenizer's special tokens, e.g. a BOS) or prompt_ids. Everything is
 * copied by engine_submit; ctx is not and must stay valid until on_done.
 */
/* One entry of a request's logit_bias: bias is added to token id's logit
 * before sampling (-100 in effect bans it, +100 in effect forces it). */
typedef struct engine_logit_bias {
    int32_t id;
    float bias;
} engine_logit_bias;

#define ENGINE_MAX_LOGIT_BIAS 1024

/* ---- constrained output: OpenAI's response_format ------------------------- */

/* A JSON Schema compiled for constrained decoding (engine/json_grammar.h
 * says which keywords it takes). Compile it once per HTTP request; every
 * engine_request of that request (its n choices) may borrow it. */
typedef struct json_grammar json_grammar;
struct cJSON;

/*
 * Compiles schema (borrowed; NULL: any JSON object, response_format
 * {"type": "json_object"}) into *out, freed with engine_grammar_free once
 * every request that borrowed it has had on_done. Errors:
 * RT_ERR_UNSUPPORTED (a keyword retune does not enforce, e.g. "pattern"),
 * RT_ERR_INVALID (a malformed or unsatisfiable schema), RT_ERR_TOO_LARGE,
 * RT_ERR_NOMEM; err then names the keyword and its path in the schema
 * ("#/properties/a/pattern").
 */
int engine_grammar_compile(const struct cJSON *schema, json_grammar **out, char *err,
                           size_t errsize);

/* Frees a grammar; NULL is allowed. */
void engine_grammar_free(json_grammar *g);

typedef struct engine_request {
    const char *adapter;                 /* registered adapter, NULL/"" = base */
    const engine_chat_message *messages;
    size_t n_messages;
    const struct cJSON *tools;           /* messages only: OpenAI's tools array, given to
                                            the chat template; the output then keeps
                                            the special tokens that mark tool calls,
                                            for engine_tool_calls_parse. NULL: none */
    const struct cJSON *template_kwargs; /* messages only: an object of extra chat
                                            template variables, or NULL */
    const char *prompt;
    const int32_t *prompt_ids;
    size_t n_prompt_ids;
    int max_tokens;                      /* >= 1; 0 only with echo; or
                                            ENGINE_MAX_TOKENS_FIT */
    double temperature;                  /* 0: greedy; <= 100 */
    double top_p;                        /* (0, 1]; 0 means 1 */
    int top_k;                           /* 0: off */
    double repetition_penalty;           /* HF semantics over prompt + output;
                                            0 or 1: off */
    double presence_penalty;             /* OpenAI's, in [-2, 2], over the completion's
                                            tokens: each token that has appeared */
    double frequency_penalty;            /* OpenAI's, in [-2, 2]: times each count */
    const engine_logit_bias *logit_bias; /* n_logit_bias entries, ids < vocab_size */
    int n_logit_bias;
    bool has_seed;                       /* same seed, same output */
    uint64_t seed;
    const char *stop[ENGINE_MAX_STOP];   /* stop strings (trimmed from output) */
    int n_stop;
    bool logprobs;                       /* logprob of each completion token */
    int top_logprobs;                    /* 0..20 alternatives per token */
    bool echo;                           /* first report the prompt tokens with
                                            their logprobs (token i given < i) */
    const json_grammar *grammar;         /* NULL: free text. Else every token is
                                            sampled among those that keep the output
                                            a prefix of a document of the grammar
                                            (disallowed logits set to -inf after
                                            logit_bias and penalties; logprobs stay
                                            the raw row's); once the document is
                                            complete only end-of-turn/eos may follow
                                            ("stop"). max_tokens first: "length", a
                                            valid prefix. No token can follow: "stop"
                                            when complete, else "error". Borrowed:
                                            valid until on_done. Needs a tokenizer. */
    void *ctx;
    /* A token or text; return non-zero to cancel the request. May be NULL. */
    int (*on_token)(void *ctx, const engine_token_event *ev);
    /* Called exactly once per accepted request, last. May be NULL. */
    void (*on_done)(void *ctx, const engine_result *res);
} engine_request;

/* ---- tool calls ------------------------------------------------------------ */

/* The name of the format the model's chat template writes tool calls in
 * ("hermes", "mistral", "llama3"), or NULL when it takes no tools. */
const char *engine_tool_format(engine_server *srv);

/* One tool call read from a completion: name and arguments (JSON object
 * text), malloc'd; id is the model's own when it wrote one, else "". */
typedef struct engine_tool_call {
    char *name;
    char *arguments;
    char id[64];
} engine_tool_call;

/* Splits a completion's text into *content (malloc'd, "" when none) and the
 * tool calls written in the template's format (*calls malloc'd, NULL when
 * *n_calls is 0); free with engine_tool_calls_free. Text that does not
 * follow the format is content. RT_ERR_INVALID, RT_ERR_NOMEM. */
int engine_tool_calls_parse(engine_server *srv, const char *text, size_t len, char **content,
                            engine_tool_call **calls, int *n_calls);
void engine_tool_calls_free(engine_tool_call *calls, int n);

/* How many leading bytes of a completion's text so far are content for
 * certain (no tool call can start in them), for streaming: the rest waits
 * until the call is whole or the text is known to be none. */
size_t engine_tool_content_prefix(engine_server *srv, const char *text, size_t len);

/*
 * Queues req. On success *out is a handle (release with
 * engine_handle_release) and on_done will be called exactly once. The
 * prompt is tokenized, the adapter's weights loaded (on first use) and,
 * for the first request with a grammar, the vocabulary indexed for it
 * (once per server) in the calling thread. On failure *why (may be NULL)
 * names the request field at fault and says why. Errors: RT_ERR_INVALID
 * (bad sampling values, no/two inputs, empty prompt, a token id out of
 * range, prompt + max_tokens over the context, a conversation the chat
 * template refuses), RT_ERR_TOO_LARGE (the prompt alone fills the
 * context: field messages or prompt), RT_ERR_NOT_FOUND (unknown adapter:
 * field model), RT_ERR_BUSY (max_waiting requests queued: retry later /
 * 429), RT_ERR_UNSUPPORTED (text input or a grammar without a tokenizer),
 * RT_ERR_STATE (closing), RT_ERR_NOMEM, or an adapter load error.
 */
int engine_submit(engine_server *srv, const engine_request *req, engine_handle **out,
                  engine_error *why);

/* Asks the engine to stop the request (e.g. the client went away): its
 * slot is freed at the next step and on_done gets "cancelled" unless it
 * already finished. Safe from any thread and from callbacks, any time
 * before engine_handle_release. */
void engine_cancel(engine_handle *h);

/* Drops the caller's reference. The request keeps running (cancel it first
 * to stop it); callbacks still arrive until on_done. NULL is allowed. */
void engine_handle_release(engine_handle *h);

/* ---- the engines of full fine-tuned models --------------------------------- */

/*
 * A full fine-tune has weights of its own, so it is served by an engine of
 * its own. The pool opens one on first use, shares it between every request
 * naming it (reference counted) and closes the least recently used unused
 * ones when the resident weights exceed the budget. Thread-safe.
 */
typedef struct engine_pool engine_pool;
typedef struct engine_pool_entry engine_pool_entry; /* one held engine */

typedef struct engine_pool_config {
    const char *device;           /* as engine_server_config's (copied) */
    size_t budget_bytes;          /* resident weights of unused engines */
    bool special_tokens_in_text;  /* as engine_server_config's */
} engine_pool_config;

int engine_pool_new(const engine_pool_config *cfg, engine_pool **out);

/* Closes every engine; no engine may be held any more. NULL is allowed. */
void engine_pool_free(engine_pool *p);

/* The engine serving model name from dir, opened when none is resident;
 * *held is released with engine_pool_release. Errors: engine_server_open's. */
int engine_pool_acquire(engine_pool *p, const char *name, const char *dir, engine_server **eng,
                        engine_pool_entry **held, char *err, size_t errsize);
void engine_pool_release(engine_pool *p, engine_pool_entry *held);

/* True when an engine for model name is open (using it loads nothing). */
bool engine_pool_resident(engine_pool *p, const char *name);

/* The model name is gone (deleted): its engine closes once nobody holds it. */
void engine_pool_forget(engine_pool *p, const char *name);

#endif
