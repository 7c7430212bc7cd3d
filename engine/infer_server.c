/*
 * engine/infer_server.c — engine_serve.h: opening a serving engine (base
 * model, tokenizer, chat template, KV cache, adapter registry, engine
 * thread), accepting requests (validated, tokenized and their adapter
 * pinned in the submitting thread, then queued), cancelling and closing.
 * The engine thread admits queued requests into free cache slots and runs
 * scheduler steps (engine/infer_sched.c) while anything is active; it
 * sleeps only when nothing is queued or running.
 *
 * Locking: srv->mu guards the queue, the counters and `closing`; the
 * engine thread never holds it during a step. Cancellation is an atomic
 * flag on the request, read by the engine thread each step.
 */
#include "engine/infer.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"

#define DEFAULT_MAX_BATCH 8
#define DEFAULT_MAX_CONTEXT 2048
#define DEFAULT_STEP_TOKENS 256
#define DEFAULT_MAX_WAITING 256 /* room for one request's n = 128 choices, twice */
#define DEFAULT_ADAPTER_BUDGET ((size_t)256 << 20)

/* ---- the engine thread -------------------------------------------------- */

/* Pops up to `room` queued requests into *list (counted active); caller
 * holds mu. */
static engine_handle *pop_waiting(engine_server *srv, int room)
{
    engine_handle *list = NULL, **tail = &list;
    while (room-- > 0 && srv->wait_head) {
        engine_handle *h = srv->wait_head;
        srv->wait_head = h->next;
        h->next = NULL;
        *tail = h;
        tail = &h->next;
        srv->n_waiting--;
        srv->n_active++;
    }
    if (!srv->wait_head)
        srv->wait_tail = NULL;
    return list;
}

/* Everything queued and running ends "cancelled" (the server closes). */
static void cancel_everything(engine_server *srv, engine_handle *queued)
{
    while (queued) {
        engine_handle *next = queued->next;
        infer_sched_abandon(srv, queued, "cancelled", NULL, false);
        queued = next;
    }
    infer_sched_cancel_all(srv);
}

/* The engine thread: admit, step, repeat; sleep when idle. */
static void *engine_main(void *arg)
{
    engine_server *srv = arg;
    for (;;) {
        pthread_mutex_lock(&srv->mu);
        while (!srv->closing && srv->n_waiting == 0 && srv->n_active == 0)
            pthread_cond_wait(&srv->wake, &srv->mu);
        if (srv->closing) {
            engine_handle *queued = srv->wait_head;
            srv->wait_head = srv->wait_tail = NULL;
            srv->n_waiting = 0;
            pthread_mutex_unlock(&srv->mu);
            cancel_everything(srv, queued);
            return NULL;
        }
        engine_handle *admit = pop_waiting(srv, srv->cfg.max_batch - srv->n_active);
        pthread_mutex_unlock(&srv->mu);
        while (admit) {
            engine_handle *next = admit->next;
            admit->next = NULL;
            if (atomic_load(&admit->cancelled))
                infer_sched_abandon(srv, admit, "cancelled", NULL, true);
            else
                infer_sched_start(srv, admit);
            admit = next;
        }
        infer_sched_step(srv);
    }
}

/* ---- open / close ----------------------------------------------------------- */

/* Fills in defaults and checks the numbers against the model. */
static int resolve_config(engine_server *srv, const engine_server_config *in, char *err,
                          size_t errsize)
{
    engine_server_config *c = &srv->cfg;
    const model_config *mc = &srv->m->cfg;
    *c = *in;
    c->model_dir = c->device = NULL;
    if (c->max_batch < 0 || c->max_context < 0 || c->max_step_tokens < 0 || c->max_waiting < 0)
        return rt_fail(err, errsize, RT_ERR_INVALID, "server sizes must not be negative");
    if (!c->max_batch)
        c->max_batch = DEFAULT_MAX_BATCH;
    if (!c->max_context)
        c->max_context = mc->max_position_embeddings < DEFAULT_MAX_CONTEXT
                             ? mc->max_position_embeddings : DEFAULT_MAX_CONTEXT;
    if (c->max_context > mc->max_position_embeddings)
        return rt_fail(err, errsize, RT_ERR_INVALID,
                       "max_context %d exceeds the model's max_position_embeddings %d",
                       c->max_context, mc->max_position_embeddings);
    if (srv->be->max_kv_head_dim && mc->head_dim > srv->be->max_kv_head_dim)
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED,
                       "head_dim %d is more than the %s backend's cached attention takes (%d): "
                       "serve this model with --device cpu", mc->head_dim, srv->be->name,
                       srv->be->max_kv_head_dim);
    if (!c->max_step_tokens)
        c->max_step_tokens = DEFAULT_STEP_TOKENS;
    if (c->max_step_tokens < c->max_batch) /* every decoding sequence fits a step */
        c->max_step_tokens = c->max_batch;
    if (!c->max_waiting)
        c->max_waiting = DEFAULT_MAX_WAITING;
    if (!c->adapter_budget_bytes)
        c->adapter_budget_bytes = DEFAULT_ADAPTER_BUDGET;
    return RT_OK;
}

/* Tokenizer and chat template; a model directory without tokenizer.json
 * serves token-id prompts only. The model's padding past the tokenizer
 * decodes to nothing and is never sampled (srv->n_sample). */
static int load_text(engine_server *srv, const char *dir, char *err, size_t errsize)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int rc = RT_OK;
    if (access(path, F_OK) == 0)
        rc = tokenizer_load(path, &srv->tok, err, errsize);
    if (rc != RT_OK)
        return rc;
    tokenizer_set_model_vocab(srv->tok, (size_t)srv->m->cfg.vocab_size);
    srv->n_sample = sample_vocab_size(srv->m->cfg.vocab_size, tokenizer_vocab_size(srv->tok));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) == 0)
        return chat_template_load(path, &srv->tmpl, err, errsize);
    return chat_template_from_source(NULL, NULL, NULL, &srv->tmpl);
}

/* The tokens that end a completion: end of turn, eos (template and config). */
static void find_stop_ids(engine_server *srv)
{
    int32_t cand[3] = {-1, -1, srv->m->cfg.eos_token_id};
    if (srv->tok) {
        const char *eot = chat_template_end_of_turn(srv->tmpl), *eos = chat_template_eos(srv->tmpl);
        cand[0] = eot ? tokenizer_token_id(srv->tok, eot) : -1;
        cand[1] = eos ? tokenizer_token_id(srv->tok, eos) : -1;
    }
    for (int i = 0; i < 3; i++) {
        bool dup = cand[i] < 0 || cand[i] >= srv->m->cfg.vocab_size;
        for (int j = 0; j < srv->n_stop_ids && !dup; j++)
            dup = srv->stop_ids[j] == cand[i];
        if (!dup)
            srv->stop_ids[srv->n_stop_ids++] = cand[i];
    }
}

/* The model id: the directory's last path component. */
static void set_model_id(engine_server *srv, const char *dir)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(srv->info.model_id, sizeof srv->info.model_id, "%.*s", (int)(len - start), dir + start);
}

/* The engine thread's host buffers. */
static int alloc_step_buffers(engine_server *srv)
{
    size_t N = (size_t)srv->cfg.max_step_tokens, B = (size_t)srv->cfg.max_batch;
    size_t V = (size_t)srv->m->cfg.vocab_size;
    srv->seqs = calloc(B, sizeof *srv->seqs);
    srv->step_ids = malloc(N * sizeof *srv->step_ids);
    srv->logit_rows = malloc(N * sizeof *srv->logit_rows);
    srv->segs = calloc(B, sizeof *srv->segs);
    srv->meta = calloc(B, sizeof *srv->meta);
    srv->logits = malloc(N * V * sizeof *srv->logits);
    srv->work = malloc(3 * V * sizeof *srv->work);
    srv->allowed = malloc(V);
    return srv->seqs && srv->step_ids && srv->logit_rows && srv->segs && srv->meta &&
                   srv->logits && srv->work && srv->allowed
               ? RT_OK
               : RT_ERR_NOMEM;
}

/* Frees everything open created (the thread has stopped or never ran). */
static void server_free(engine_server *srv)
{
    infer_ctx_free(srv->ictx);
    adapter_registry_free(srv->reg);
    chat_template_free(srv->tmpl);
    tokenizer_free(srv->tok);
    model_free(srv->m);
    free(srv->seqs);
    free(srv->step_ids);
    free(srv->logit_rows);
    free(srv->segs);
    free(srv->meta);
    free(srv->logits);
    free(srv->work);
    free(srv->allowed);
    infer_grammar_vocab_free(srv);
    pthread_mutex_destroy(&srv->vocab_mu);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->wake);
    free(srv);
}

/* The memory plan of serving, before the KV cache is allocated: weights,
 * the cache for max_batch x max_context tokens and one step's buffers,
 * against what this process may use. Refuses with the numbers and what
 * would help when they do not fit. Cache pages are touched only as
 * sequences fill them, so the plan is the most the cache can take. */
static int plan_memory(engine_server *srv, char *err, size_t errsize)
{
    const engine_server_config *c = &srv->cfg;
    size_t kv, step;
    infer_ctx_bytes(srv->m, c->max_batch, c->max_context, c->max_step_tokens, &kv, &step);
    double weights = (double)srv->m->weight_bytes, total = weights + (double)kv + (double)step;
    double available = model_memory_available(srv->m);
    const double gib = 1024.0 * 1024.0 * 1024.0;
    srv->info.memory_bytes = total;
    snprintf(srv->info.memory_text, sizeof srv->info.memory_text,
             "Memory estimate: %.2f GiB (weights %.2f, KV cache %.2f for %d sequences x %d tokens, "
             "step buffers %.2f), %.2f GiB available.", total / gib, weights / gib, kv / gib,
             c->max_batch, c->max_context, step / gib, available / gib);
    rt_log(RT_LOG_INFO, "%s", srv->info.memory_text);
    if (available <= 0 || total <= available)
        return RT_OK;
    return rt_fail(err, errsize, RT_ERR_NOMEM,
                   "needs %.2f GiB (weights %.2f, KV cache %.2f for %d sequences x %d tokens, step "
                   "buffers %.2f), %.2f GiB available: try a smaller --max-batch or --max-context%s",
                   total / gib, weights / gib, kv / gib, c->max_batch, c->max_context, step / gib,
                   available / gib, srv->m->w16 ? "" : ", or --dtype bf16");
}

/* Everything but the thread. */
static int server_build(engine_server *srv, const engine_server_config *cfg, char *err,
                        size_t errsize)
{
    int rc = kernels_backend_get(cfg->device ? cfg->device : engine_default_device(), &srv->be);
    if (rc != RT_OK)
        return rt_fail(err, errsize, rc, "device %s is not available (%s)", cfg->device ? cfg->device : "default", rt_strerror(rc));
    rc = model_load_named(cfg->model_dir, srv->be, cfg->dtype, &srv->m, err, errsize);
    if (rc == RT_OK)
        rc = resolve_config(srv, cfg, err, errsize);
    if (rc == RT_OK)
        rc = load_text(srv, cfg->model_dir, err, errsize);
    if (rc == RT_OK)
        rc = plan_memory(srv, err, errsize);
    if (rc == RT_OK)
        rc = infer_ctx_create(srv->m, srv->cfg.max_batch, srv->cfg.max_context,
                              srv->cfg.max_step_tokens, &srv->ictx);
    if (rc == RT_OK)
        rc = adapter_registry_create(&srv->m->cfg, srv->be, srv->cfg.adapter_budget_bytes,
                                     &srv->reg);
    if (rc == RT_OK)
        rc = alloc_step_buffers(srv);
    if (rc != RT_OK)
        return rc;
    find_stop_ids(srv);
    set_model_id(srv, cfg->model_dir);
    srv->info.context_length = srv->cfg.max_context;
    srv->info.vocab_size = srv->m->cfg.vocab_size;
    srv->info.max_batch = srv->cfg.max_batch;
    srv->info.has_tokenizer = srv->tok != NULL;
    atomic_init(&srv->seed_counter, (uint64_t)time(NULL));
    return RT_OK;
}

/* Builds the server and starts its engine thread; see engine_serve.h. */
int engine_server_open(const engine_server_config *cfg, engine_server **out, char *err,
                       size_t errsize)
{
    if (!cfg || !cfg->model_dir || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "model_dir is required");
    engine_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return RT_ERR_NOMEM;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_mutex_init(&srv->vocab_mu, NULL);
    pthread_cond_init(&srv->wake, NULL);
    int rc = server_build(srv, cfg, err, errsize);
    if (rc == RT_OK && pthread_create(&srv->thread, NULL, engine_main, srv) != 0)
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "cannot start the engine thread");
    if (rc != RT_OK) {
        if (rc == RT_ERR_NOMEM && err && errsize && !*err)
            snprintf(err, errsize, "out of memory opening the serving engine");
        server_free(srv);
        return rc;
    }
    srv->started = true;
    *out = srv;
    return RT_OK;
}

/* What constrained decoding cost over the server's life (bench/json_mask_bench.py
 * reads this line). */
static void log_grammar_stats(engine_server *srv)
{
    uint64_t n = atomic_load(&srv->n_masks), fast = atomic_load(&srv->n_unmasked);
    if (n + fast == 0)
        return;
    rt_log(RT_LOG_INFO, "response_format: %llu token masks over a %d-token vocabulary, %.3f ms "
           "each on average; %llu greedy tokens needed none", (unsigned long long)n, srv->n_sample,
           n ? (double)atomic_load(&srv->mask_ns) / 1e6 / (double)n : 0.0, (unsigned long long)fast);
}

/* Tells the engine thread to cancel everything and stop, joins it, frees. */
void engine_server_close(engine_server *srv)
{
    if (!srv)
        return;
    pthread_mutex_lock(&srv->mu);
    srv->closing = true;
    pthread_cond_signal(&srv->wake);
    pthread_mutex_unlock(&srv->mu);
    if (srv->started)
        pthread_join(srv->thread, NULL);
    log_grammar_stats(srv);
    server_free(srv);
}

/* A copy of the facts fixed at open. */
void engine_server_info_get(const engine_server *srv, engine_server_info *out)
{
    *out = srv->info;
}

/* Queue and slot occupancy, under the lock. */
void engine_server_load(engine_server *srv, int *waiting, int *active)
{
    pthread_mutex_lock(&srv->mu);
    if (waiting)
        *waiting = srv->n_waiting;
    if (active)
        *active = srv->n_active;
    pthread_mutex_unlock(&srv->mu);
}

/* A token's raw bytes through the tokenizer. */
const char *engine_tool_format(engine_server *srv)
{
    enum tool_format f = srv->tok ? chat_template_tool_format(srv->tmpl) : TOOL_FORMAT_NONE;
    return f == TOOL_FORMAT_NONE ? NULL : tool_format_name(f);
}

int engine_tool_calls_parse(engine_server *srv, const char *text, size_t len, char **content,
                            engine_tool_call **calls, int *n_calls)
{
    return tool_calls_parse(chat_template_tool_format(srv->tmpl), text, len, content, calls,
                            n_calls);
}

void engine_tool_calls_free(engine_tool_call *calls, int n)
{
    tool_calls_free(calls, n);
}

size_t engine_tool_content_prefix(engine_server *srv, const char *text, size_t len)
{
    return tool_calls_content_prefix(chat_template_tool_format(srv->tmpl), text, len);
}

int engine_token_text(const engine_server *srv, int32_t id, char *buf, size_t cap, size_t *len)
{
    if (!srv->tok)
        return RT_ERR_UNSUPPORTED;
    return tokenizer_token_bytes(srv->tok, id, false, false, buf, cap, len);
}

/* ---- adapters ------------------------------------------------------------ */

int engine_adapter_add(engine_server *srv, const char *name, const char *dir, char *err,
                       size_t errsize)
{
    return adapter_registry_add(srv->reg, name, dir, err, errsize);
}

int engine_adapter_remove(engine_server *srv, const char *name)
{
    return adapter_registry_remove(srv->reg, name);
}

bool engine_adapter_exists(engine_server *srv, const char *name)
{
    return adapter_registry_exists(srv->reg, name);
}

bool engine_adapter_resident(engine_server *srv, const char *name)
{
    return adapter_registry_resident(srv->reg, name);
}

int engine_adapter_preload(engine_server *srv, const char *name, char *err, size_t errsize)
{
    adapter_entry *e = NULL;
    int rc = adapter_registry_acquire(srv->reg, name, &e, err, errsize);
    if (rc == RT_OK)
        adapter_registry_release(srv->reg, e);
    return rc;
}

void engine_adapter_usage(engine_server *srv, size_t *bytes, int *resident)
{
    adapter_registry_usage(srv->reg, bytes, resident);
}

/* ---- requests -------------------------------------------------------------- */

/* Refuses a request: code, the request field at fault (NULL: none) and a
 * message, into e (see engine_error_set). */
#define refuse engine_error_set

/* Pins the request's adapter (loading it on first use): an unknown one is
 * the model field's fault. */
static int acquire_adapter(engine_server *srv, const char *name, engine_handle *h, engine_error *e)
{
    char why[sizeof e->message];
    why[0] = '\0';
    int rc = adapter_registry_acquire(srv->reg, name, &h->adapter, why, sizeof why);
    return rc == RT_OK ? rc : refuse(e, rc, "model", "%s", why[0] ? why : rt_strerror(rc));
}

/* A grammar needs the tokenizer's bytes of every token: the first request
 * with one builds the vocabulary trie (once per server). */
static int check_grammar(engine_server *srv, const engine_request *r, engine_error *e)
{
    if (!r->grammar)
        return RT_OK;
    if (!srv->tok)
        return refuse(e, RT_ERR_UNSUPPORTED, "response_format", "response_format needs a tokenizer; the model has none");
    int rc = infer_grammar_vocab(srv);
    if (rc != RT_OK)
        return refuse(e, rc, "response_format", "response_format: cannot index the vocabulary (%s)",
                       rt_strerror(rc));
    return RT_OK;
}

/* Checks the sampling and output fields; err names the first bad one. */
static int check_options(engine_server *srv, const engine_request *r, engine_error *e)
{
    if (!(r->temperature >= 0) || !isfinite(r->temperature))
        return refuse(e, RT_ERR_INVALID, "temperature", "temperature must be a number >= 0");
    if (!(r->top_p >= 0 && r->top_p <= 1))
        return refuse(e, RT_ERR_INVALID, "top_p", "top_p must be in (0, 1]");
    if (r->top_k < 0)
        return refuse(e, RT_ERR_INVALID, "top_k", "top_k must be >= 0");
    if (!(r->repetition_penalty >= 0) || !isfinite(r->repetition_penalty))
        return refuse(e, RT_ERR_INVALID, "repetition_penalty", "repetition_penalty must be a number > 0");
    if (!(r->presence_penalty >= -2 && r->presence_penalty <= 2))
        return refuse(e, RT_ERR_INVALID, "presence_penalty", "presence_penalty must be between -2 and 2");
    if (!(r->frequency_penalty >= -2 && r->frequency_penalty <= 2))
        return refuse(e, RT_ERR_INVALID, "frequency_penalty", "frequency_penalty must be between -2 and 2");
    if (r->n_logit_bias < 0 || r->n_logit_bias > ENGINE_MAX_LOGIT_BIAS ||
        (r->n_logit_bias && !r->logit_bias))
        return refuse(e, RT_ERR_INVALID, "logit_bias", "logit_bias takes at most %d tokens",
                       ENGINE_MAX_LOGIT_BIAS);
    for (int i = 0; i < r->n_logit_bias; i++) {
        if (r->logit_bias[i].id < 0 || r->logit_bias[i].id >= srv->n_sample)
            return refuse(e, RT_ERR_INVALID, "logit_bias", "logit_bias: token id %d is outside the vocabulary [0, %d)",
                           r->logit_bias[i].id, srv->n_sample);
        if (!(r->logit_bias[i].bias >= -100 && r->logit_bias[i].bias <= 100))
            return refuse(e, RT_ERR_INVALID, "logit_bias", "logit_bias: the bias of token %d must be between -100 and 100",
                           r->logit_bias[i].id);
    }
    if (r->top_logprobs < 0 || r->top_logprobs > ENGINE_MAX_TOP_LOGPROBS)
        return refuse(e, RT_ERR_INVALID, "top_logprobs", "top_logprobs must be between 0 and %d",
                       ENGINE_MAX_TOP_LOGPROBS);
    if (r->max_tokens < ENGINE_MAX_TOKENS_FIT || (r->max_tokens == 0 && !r->echo))
        return refuse(e, RT_ERR_INVALID, "max_tokens", "max_tokens must be >= 1");
    if (r->n_stop < 0 || r->n_stop > ENGINE_MAX_STOP)
        return refuse(e, RT_ERR_INVALID, "stop", "stop takes at most %d strings",
                       ENGINE_MAX_STOP);
    for (int i = 0; i < r->n_stop; i++) {
        size_t n = r->stop[i] ? strlen(r->stop[i]) : 0;
        if (!r->stop[i] || n > ENGINE_MAX_STOP_BYTES || !engine_utf8_valid(r->stop[i], n))
            return refuse(e, RT_ERR_INVALID, "stop", "stop[%d] must be UTF-8 of at most %d bytes", i, ENGINE_MAX_STOP_BYTES);
        if (n && !srv->tok)
            return refuse(e, RT_ERR_UNSUPPORTED, "stop", "stop strings need a tokenizer; the model has none");
    }
    return check_grammar(srv, r, e);
}

/* The prompt's token ids (malloc'd into *ids, *n) from whichever input the
 * request has. */
static int prompt_tokens(const engine_server *srv, const engine_request *r, int32_t **ids,
                         size_t *n, engine_error *e)
{
    int inputs = (r->messages && r->n_messages > 0) + (r->prompt != NULL) + (r->prompt_ids != NULL);
    if (inputs != 1)
        return refuse(e, RT_ERR_INVALID, "messages", inputs ? "give only one of messages, prompt and prompt_ids"
                              : "one of messages, prompt or prompt_ids is required");
    if (r->prompt_ids) {
        for (size_t i = 0; i < r->n_prompt_ids; i++)
            if (r->prompt_ids[i] < 0 || r->prompt_ids[i] >= srv->m->cfg.vocab_size)
                return refuse(e, RT_ERR_INVALID, "prompt", "prompt_ids[%zu] = %d is outside the vocabulary [0, %d)", i,
                               r->prompt_ids[i], srv->m->cfg.vocab_size);
        if (!(*ids = malloc((r->n_prompt_ids + 1) * sizeof **ids)))
            return RT_ERR_NOMEM;
        memcpy(*ids, r->prompt_ids, r->n_prompt_ids * sizeof **ids);
        *n = r->n_prompt_ids;
        return RT_OK;
    }
    if (!srv->tok)
        return refuse(e, RT_ERR_UNSUPPORTED, "prompt", "the model has no tokenizer.json: only prompt_ids can be served");
    bool trusted = srv->cfg.special_tokens_in_text;
    if (r->prompt) {
        int rc = tokenizer_encode_ex(srv->tok, r->prompt, strlen(r->prompt),
                                     TOKENIZER_ADD_SPECIAL | (trusted ? 0 : TOKENIZER_PLAIN_TEXT), ids, n);
        return rc == RT_OK || rc == RT_ERR_NOMEM
                   ? rc : refuse(e, RT_ERR_INVALID, "prompt", "prompt: the text could not be "
                                  "tokenized (%s)", rt_strerror(rc));
    }
    if (r->tools && chat_template_tool_format(srv->tmpl) == TOOL_FORMAT_NONE)
        return refuse(e, RT_ERR_INVALID, "tools", "tools: this model's chat template does not "
                       "take tools (it writes no tool-call markers)");
    chat_message *msgs = calloc(r->n_messages, sizeof *msgs);
    if (!msgs)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < r->n_messages; i++) /* weight 0: nothing to train, encoded whole */
        msgs[i] = (chat_message){r->messages[i].role, r->messages[i].content, 0, r->messages[i].json};
    uint8_t *mask = NULL;
    chat_extras extras = {r->tools, r->template_kwargs, trusted};
    char why[300] = "";
    int rc = chat_template_render(srv->tmpl, srv->tok, msgs, r->n_messages, true, &extras, ids,
                                  &mask, n, why, sizeof why);
    free(mask);
    free(msgs);
    if (rc == RT_ERR_INVALID || rc == RT_ERR_FORMAT || rc == RT_ERR_UNSUPPORTED ||
        rc == RT_ERR_TOO_LARGE)
        return refuse(e, RT_ERR_INVALID, "messages", "messages: %s", why[0] ? why : rt_strerror(rc));
    return rc;
}

/* Builds the request's copy: tokens with room for the completion, options,
 * stop strings. */
static int handle_build(engine_server *srv, const engine_request *r, engine_handle *h,
                        engine_error *e)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = prompt_tokens(srv, r, &ids, &n, e);
    if (rc != RT_OK)
        return rc;
    int ctx = srv->cfg.max_context;
    if (n == 0)
        rc = refuse(e, RT_ERR_INVALID, r->messages ? "messages" : "prompt", "the prompt is empty");
    else if (n > (size_t)ctx || (n == (size_t)ctx && !r->echo))
        rc = refuse(e, RT_ERR_TOO_LARGE, r->messages ? "messages" : "prompt", "%s: the prompt has %zu tokens; this model's "
                     "context is %d tokens, and the reply needs room in it",
                     r->messages ? "messages" : "prompt", n, ctx);
    else if (r->max_tokens > 0 && (size_t)r->max_tokens > (size_t)ctx - n)
        rc = refuse(e, RT_ERR_INVALID, "max_tokens", "max_tokens: the prompt (%zu tokens) plus max_tokens (%d) exceed the "
                     "context of %d tokens", n, r->max_tokens, ctx);
    else if (r->max_tokens == ENGINE_MAX_TOKENS_FIT && n == (size_t)ctx && !r->echo)
        rc = refuse(e, RT_ERR_INVALID, "max_tokens", "max_tokens: the prompt fills the whole context of %d tokens", ctx);
    if (rc != RT_OK) {
        free(ids);
        return rc;
    }
    h->n_prompt = (int)n;
    h->max_tokens = r->max_tokens == ENGINE_MAX_TOKENS_FIT ? ctx - (int)n : r->max_tokens;
    h->cap = h->n_prompt + h->max_tokens;
    int32_t *tokens = realloc(ids, (size_t)(h->cap > 0 ? h->cap : 1) * sizeof *tokens);
    if (!tokens) {
        free(ids);
        return RT_ERR_NOMEM;
    }
    h->tokens = tokens;
    for (int i = 0; i < r->n_stop; i++)
        if (r->stop[i][0] && !(h->stop[h->n_stop++] = strdup(r->stop[i])))
            return RT_ERR_NOMEM;
    if (r->n_logit_bias > 0) {
        if (!(h->bias = malloc((size_t)r->n_logit_bias * sizeof *h->bias)))
            return RT_ERR_NOMEM;
        memcpy(h->bias, r->logit_bias, (size_t)r->n_logit_bias * sizeof *h->bias);
        h->n_bias = r->n_logit_bias;
    }
    return RT_OK;
}

/* Copies the sampling options and callbacks; picks a seed when none. */
static void handle_options(engine_server *srv, const engine_request *r, engine_handle *h)
{
    h->sp.temperature = r->temperature;
    h->sp.top_k = r->top_k;
    h->sp.top_p = r->top_p > 0 ? r->top_p : 1.0;
    h->penalty = r->repetition_penalty > 0 ? r->repetition_penalty : 1.0;
    h->presence = r->presence_penalty;
    h->frequency = r->frequency_penalty;
    h->seed = r->has_seed ? r->seed
                          : rng_mix(atomic_fetch_add(&srv->seed_counter, 1) ^ 0x5eedULL);
    h->logprobs = r->logprobs;
    h->top_logprobs = r->logprobs || r->echo ? r->top_logprobs : 0;
    h->echo = r->echo;
    h->keep_special = r->tools != NULL && r->messages != NULL;
    h->grammar = r->grammar;
    h->ctx = r->ctx;
    h->on_token = r->on_token;
    h->on_done = r->on_done;
    atomic_init(&h->refs, 2);
    atomic_init(&h->cancelled, false);
}

/* True when the queue is full; caller holds mu. */
static bool queue_full(const engine_server *srv) { return srv->n_waiting >= srv->cfg.max_waiting; }

/* Appends h to the queue unless full or closing. */
static int enqueue(engine_server *srv, engine_handle *h, engine_error *e)
{
    int rc = RT_OK;
    pthread_mutex_lock(&srv->mu);
    if (srv->closing)
        rc = refuse(e, RT_ERR_STATE, NULL, "the server is shutting down");
    else if (queue_full(srv))
        rc = refuse(e, RT_ERR_BUSY, NULL, "too many requests are waiting (%d)",
                     srv->cfg.max_waiting);
    if (rc == RT_OK) {
        if (srv->wait_tail)
            srv->wait_tail->next = h;
        else
            srv->wait_head = h;
        srv->wait_tail = h;
        srv->n_waiting++;
        pthread_cond_signal(&srv->wake);
    }
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

/* Validate, tokenize, pin the adapter, enqueue; see engine_serve.h. */
int engine_submit(engine_server *srv, const engine_request *req, engine_handle **out,
                  engine_error *e)
{
    if (!srv || !req || !out)
        return RT_ERR_INVALID;
    int rc = check_options(srv, req, e);
    if (rc != RT_OK)
        return rc;
    pthread_mutex_lock(&srv->mu); /* refuse early, before tokenizing or loading */
    bool full = queue_full(srv);
    pthread_mutex_unlock(&srv->mu);
    if (full)
        return refuse(e, RT_ERR_BUSY, NULL, "too many requests are waiting (%d)",
                       srv->cfg.max_waiting);
    engine_handle *h = calloc(1, sizeof *h);
    if (!h)
        return RT_ERR_NOMEM;
    handle_options(srv, req, h);
    rc = handle_build(srv, req, h, e);
    if (rc == RT_OK && req->adapter && *req->adapter)
        rc = acquire_adapter(srv, req->adapter, h, e);
    if (rc == RT_OK)
        rc = enqueue(srv, h, e);
    if (rc != RT_OK) {
        adapter_registry_release(srv->reg, h->adapter);
        atomic_store(&h->refs, 1);
        infer_handle_unref(h);
        return rc;
    }
    *out = h;
    return RT_OK;
}

/* Sets the request's cancel flag; the engine acts on it next step. */
void engine_cancel(engine_handle *h)
{
    if (h)
        atomic_store(&h->cancelled, true);
}

/* Drops the caller's reference. */
void engine_handle_release(engine_handle *h) { infer_handle_unref(h); }

int engine_error_set(engine_error *e, int code, const char *field, const char *fmt, ...)
{
    if (!e)
        return code;
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return code;
}
