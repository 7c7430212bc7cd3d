/*
 * api/completions.c — POST /v1/chat/completions and POST /v1/completions in
 * OpenAI's shapes, plain or streamed (SSE), on the engine's continuous
 * batcher. Requests are parsed here into an engine_request; tokens come
 * back on the engine thread through callbacks that append to this request's
 * state (text, logprobs, or SSE bytes) under its lock and wake the HTTP
 * side. Nothing here waits on an HTTP event-loop thread: a plain request
 * parks its connection until every choice is done, then answers; a streamed
 * one's reader parks whenever no bytes are ready (api/conn.c). The request's
 * end (answered, or its client gone) cancels the sequences still running.
 */
#include "api/api_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define BAD "invalid_request_error"
#define MAX_N 128      /* choices per request: n, times the prompts of a legacy list */
#define MAX_PROMPTS 128
#define KEEPALIVE_SECONDS 15.0 /* silence before a stream sends ": keep-alive" (api/conn.c wakes it) */

/* ---- request parameters -------------------------------------------------------- */

typedef struct gen_params {
    bool chat;
    const char *model;
    engine_request er;              /* sampling, inputs (borrowing body strings) */
    int n, n_choices;               /* returned per prompt; engine requests in all */
    int per_prompt;                 /* engine requests per prompt: best_of (>= n) */
    bool stream, include_usage;
    engine_chat_message *messages;  /* owned */
    char **texts;                   /* owned joined content strings */
    size_t n_texts;
    /* Legacy completions: the prompts of the list (a string or token ids
     * each); choice i answers prompt i / n. Chat has one input, er's. */
    const char *prompts[MAX_PROMPTS];
    int32_t *prompt_ids[MAX_PROMPTS]; /* owned */
    size_t n_prompt_ids[MAX_PROMPTS];
    int n_prompts;
    engine_logit_bias *bias;        /* owned */
    bool tools;                     /* tool calls are read from the output */
    bool parallel_tool_calls;       /* false: at most one call per choice */
    json_grammar *grammar;          /* response_format; owned until gen_state takes it */
} gen_params;

static void params_free(gen_params *p)
{
    free(p->messages);
    for (size_t i = 0; i < p->n_texts; i++)
        free(p->texts[i]);
    free(p->texts);
    for (int i = 0; i < p->n_prompts; i++)
        free(p->prompt_ids[i]);
    free(p->bias);
    engine_grammar_free(p->grammar);
}

/* The first problem found: answered as a 400 naming param. */
typedef struct bad_field {
    const char *param;
    char message[256];
} bad_field;

static bool bad(bad_field *b, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool bad(bad_field *b, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->message, sizeof b->message, fmt, ap);
    va_end(ap);
    b->param = param;
    return false;
}

/* An optional number in [lo, hi] (integer when whole); false on a bad one. */
static bool opt_num(const cJSON *body, const char *key, double lo, double hi, bool whole, double *out,
                    bad_field *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) ||
        (whole && v->valuedouble != floor(v->valuedouble)))
        return bad(b, key, "'%s' must be %s from %g to %g.", key, whole ? "an integer" : "a number", lo, hi);
    *out = v->valuedouble;
    return true;
}

static bool opt_bool(const cJSON *body, const char *key, bool *out, bad_field *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsBool(v))
        return bad(b, key, "'%s' must be a boolean.", key);
    *out = cJSON_IsTrue(v);
    return true;
}

/* stop: a string or up to 4 strings. */
static bool parse_stop(const cJSON *body, engine_request *er, bad_field *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!v || cJSON_IsNull(v))
        return true;
    if (cJSON_IsString(v)) {
        er->stop[er->n_stop++] = v->valuestring;
        return strlen(v->valuestring) && strlen(v->valuestring) < ENGINE_MAX_STOP_BYTES
                   ? true : bad(b, "stop", "'stop' strings must have 1 to %d bytes.", ENGINE_MAX_STOP_BYTES - 1);
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > ENGINE_MAX_STOP)
        return bad(b, "stop", "'stop' must be a string or an array of up to %d strings.", ENGINE_MAX_STOP);
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s) || !strlen(s->valuestring) || strlen(s->valuestring) >= ENGINE_MAX_STOP_BYTES)
            return bad(b, "stop", "'stop' strings must have 1 to %d bytes.", ENGINE_MAX_STOP_BYTES - 1);
        er->stop[er->n_stop++] = s->valuestring;
    }
    return true;
}

/* logit_bias: {"token id": bias in [-100, 100], ...}, as OpenAI takes it. */
static bool parse_logit_bias(const cJSON *body, gen_params *p, bad_field *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "logit_bias");
    if (!v || cJSON_IsNull(v))
        return true;
    int n = cJSON_GetArraySize(v);
    if (!cJSON_IsObject(v) || n > ENGINE_MAX_LOGIT_BIAS)
        return bad(b, "logit_bias", "'logit_bias' must be an object of at most %d token ids.",
                   ENGINE_MAX_LOGIT_BIAS);
    if (n == 0)
        return true;
    if (!(p->bias = malloc((size_t)n * sizeof *p->bias)))
        return bad(b, "logit_bias", "out of memory");
    const cJSON *item;
    int i = 0;
    cJSON_ArrayForEach(item, v) {
        char *end = NULL;
        long id = strtol(item->string, &end, 10);
        if (!item->string[0] || *end || id < 0 || id > 2147483647L || !cJSON_IsNumber(item) ||
            !(item->valuedouble >= -100 && item->valuedouble <= 100))
            return bad(b, "logit_bias", "'logit_bias' maps token ids (\"123\") to numbers from -100 to 100; "
                                        "'%.40s' is not one.", item->string);
        p->bias[i++] = (engine_logit_bias){(int32_t)id, (float)item->valuedouble};
    }
    p->er.logit_bias = p->bias;
    p->er.n_logit_bias = n;
    return true;
}

/* Sampling knobs shared by both endpoints. */
static bool parse_sampling(const cJSON *body, gen_params *p, bad_field *b)
{
    engine_request *er = &p->er;
    double temperature = 1, top_p = 1, top_k = 0, penalty = 1, n = 1, seed = -1;
    double presence = 0, frequency = 0;
    bool ok = opt_num(body, "temperature", 0, 2, false, &temperature, b) &&
              opt_num(body, "top_p", 1e-9, 1, false, &top_p, b) &&
              opt_num(body, "top_k", 0, 1e9, true, &top_k, b) &&
              opt_num(body, "repetition_penalty", 1e-3, 100, false, &penalty, b) &&
              opt_num(body, "presence_penalty", -2, 2, false, &presence, b) &&
              opt_num(body, "frequency_penalty", -2, 2, false, &frequency, b) &&
              parse_logit_bias(body, p, b) &&
              opt_num(body, "n", 1, MAX_N, true, &n, b) &&
              opt_num(body, "seed", -9.2e18, 9.2e18, true, &seed, b) &&
              opt_bool(body, "stream", &p->stream, b) && parse_stop(body, er, b);
    if (!ok)
        return false;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    const cJSON *usage = cJSON_IsObject(so) ? cJSON_GetObjectItemCaseSensitive(so, "include_usage") : NULL;
    if (so && !cJSON_IsNull(so) && !cJSON_IsObject(so))
        return bad(b, "stream_options", "'stream_options' must be an object.");
    if (usage && !cJSON_IsNull(usage) && !cJSON_IsBool(usage))
        return bad(b, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean.");
    p->include_usage = cJSON_IsTrue(usage);
    er->temperature = temperature;
    er->top_p = top_p;
    er->top_k = (int)top_k;
    er->repetition_penalty = penalty;
    er->presence_penalty = presence;
    er->frequency_penalty = frequency;
    p->n = (int)n;
    er->has_seed = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(body, "seed"));
    er->seed = (uint64_t)(int64_t)seed;
    return true;
}

/* The text of a message's content: a string, or the text parts of an array. */
static bool message_text(const cJSON *content, int i, gen_params *p, const char **out, bad_field *b)
{
    static _Thread_local char param[48];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (!content || cJSON_IsNull(content)) {
        *out = "";
        return true;
    }
    if (cJSON_IsString(content)) {
        *out = content->valuestring;
        return true;
    }
    if (!cJSON_IsArray(content))
        return bad(b, param, "'%s' must be a string or an array of text parts.", param);
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text))
            return bad(b, param, "'%s' parts must be {\"type\": \"text\", \"text\": ...}.", param);
        len += strlen(text->valuestring);
    }
    char *joined = calloc(1, len + 1);
    if (!joined)
        return bad(b, param, "out of memory");
    cJSON_ArrayForEach(part, content)
        strcat(joined, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    p->texts[p->n_texts++] = joined;
    *out = joined;
    return true;
}

/* An OpenAI function name: 1 to 64 of a-z, A-Z, 0-9, '_' and '-'. */
static bool function_name_ok(const cJSON *name)
{
    if (!cJSON_IsString(name))
        return false;
    size_t n = strlen(name->valuestring);
    return n >= 1 && n <= 64 && strspn(name->valuestring, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                          "0123456789_-") == n;
}

/* tools: [{"type": "function", "function": {"name", "description"?,
 * "parameters"?, "strict"?}}, ...]. */
static bool check_tools(const cJSON *tools, bad_field *b)
{
    static _Thread_local char param[48];
    if (!cJSON_IsArray(tools) || cJSON_GetArraySize(tools) > 128)
        return bad(b, "tools", "'tools' must be an array of at most 128 tools.");
    const cJSON *t;
    int i = -1;
    cJSON_ArrayForEach(t, tools) {
        i++;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
        snprintf(param, sizeof param, "tools[%d]", i);
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
            !cJSON_IsObject(fn))
            return bad(b, param, "'%s' must be {\"type\": \"function\", \"function\": {...}}.", param);
        snprintf(param, sizeof param, "tools[%d].function.name", i);
        if (!function_name_ok(cJSON_GetObjectItemCaseSensitive(fn, "name")))
            return bad(b, param, "'%s' must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -.", param);
        snprintf(param, sizeof param, "tools[%d].function.parameters", i);
        if (params && !cJSON_IsObject(params))
            return bad(b, param, "'%s' must be a JSON Schema object.", param);
        snprintf(param, sizeof param, "tools[%d].function.description", i);
        if (desc && !cJSON_IsString(desc))
            return bad(b, param, "'%s' must be a string.", param);
    }
    return true;
}

/* tools, tool_choice and parallel_tool_calls. "none" keeps the tools from
 * the template (and reads no calls), as vLLM does; "auto" lets the model
 * choose. Forcing a call ("required", a named function) needs constrained
 * decoding of the call format and is refused by name. */
static bool parse_tools(const cJSON *body, gen_params *p, bad_field *b)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    p->parallel_tool_calls = true;
    if (!opt_bool(body, "parallel_tool_calls", &p->parallel_tool_calls, b))
        return false;
    bool have = tools && !cJSON_IsNull(tools);
    if (have && !check_tools(tools, b))
        return false;
    have = have && cJSON_GetArraySize(tools) > 0;
    if (choice && !cJSON_IsNull(choice)) {
        bool word = cJSON_IsString(choice);
        if (word && strcmp(choice->valuestring, "none") && strcmp(choice->valuestring, "auto") &&
            strcmp(choice->valuestring, "required"))
            return bad(b, "tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                         "{\"type\": \"function\", \"function\": {\"name\": ...}}.");
        if (!word && !cJSON_IsObject(choice))
            return bad(b, "tool_choice", "'tool_choice' must be a string or an object.");
        if (!word || !strcmp(choice->valuestring, "required"))
            return bad(b, "tool_choice", "'tool_choice' that forces a call (\"required\" or a named "
                                         "function) is not supported yet; use \"auto\".");
        if (!have && strcmp(choice->valuestring, "none"))
            return bad(b, "tool_choice", "'tool_choice' is only allowed when 'tools' are specified.");
        if (!strcmp(choice->valuestring, "none"))
            have = false;
    }
    p->tools = have;
    p->er.tools = have ? tools : NULL;
    return true;
}

/* An assistant message's tool_calls: [{"id", "type": "function",
 * "function": {"name", "arguments": JSON text}}, ...]. */
static bool check_tool_calls(const cJSON *calls, int i, bad_field *b)
{
    static _Thread_local char param[64];
    snprintf(param, sizeof param, "messages[%d].tool_calls", i);
    if (!cJSON_IsArray(calls))
        return bad(b, param, "'%s' must be an array.", param);
    const cJSON *c;
    int k = -1;
    cJSON_ArrayForEach(c, calls) {
        k++;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        snprintf(param, sizeof param, "messages[%d].tool_calls[%d]", i, k);
        if (!cJSON_IsObject(c) || !cJSON_IsString(id) || !cJSON_IsString(type) ||
            strcmp(type->valuestring, "function") || !cJSON_IsObject(fn) ||
            !function_name_ok(cJSON_GetObjectItemCaseSensitive(fn, "name")) || !cJSON_IsString(args))
            return bad(b, param, "'%s' must be {\"id\": ..., \"type\": \"function\", \"function\": "
                                 "{\"name\": ..., \"arguments\": \"<JSON text>\"}}.", param);
    }
    return true;
}

/* What a message carries besides role and content: tool calls (assistant),
 * the call a tool result answers. */
static bool check_message_extras(const cJSON *m, const char *role, int i, bad_field *b)
{
    static _Thread_local char param[48];
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (calls && !cJSON_IsNull(calls) && (strcmp(role, "assistant") || !check_tool_calls(calls, i, b)))
        return b->param ? false : bad(b, "messages", "messages[%d]: only assistant messages have "
                                                    "'tool_calls'.", i);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
    snprintf(param, sizeof param, "messages[%d].tool_call_id", i);
    if (!strcmp(role, "tool") && !cJSON_IsString(id))
        return bad(b, param, "Missing required parameter: '%s'.", param);
    return true;
}

static bool parse_messages(const cJSON *body, gen_params *p, bad_field *b)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!msgs)
        return bad(b, "messages", "Missing required parameter: 'messages'.");
    int n = cJSON_GetArraySize(msgs);
    if (!cJSON_IsArray(msgs) || n == 0)
        return bad(b, "messages", "'messages' must be a non-empty array.");
    p->messages = calloc((size_t)n, sizeof *p->messages);
    p->texts = calloc((size_t)n, sizeof *p->texts);
    if (!p->messages || !p->texts)
        return bad(b, "messages", "out of memory");
    const cJSON *m = NULL;
    int i = -1;
    cJSON_ArrayForEach(m, msgs) { /* linear: cJSON_GetArrayItem(i) in a loop is quadratic */
        static _Thread_local char param[32]; /* per HTTP thread: a message names its own field */
        i++;
        const cJSON *role = cJSON_IsObject(m) ? cJSON_GetObjectItemCaseSensitive(m, "role") : NULL;
        snprintf(param, sizeof param, "messages[%d].role", i);
        bool known = false;
        for (const char *const *r = roles; cJSON_IsString(role) && *r; r++)
            known = known || !strcmp(role->valuestring, *r);
        if (!known)
            return bad(b, param, "'%s' must be one of system, developer, user, assistant, tool.", param);
        const char *text = "";
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!message_text(content, i, p, &text, b) || !check_message_extras(m, role->valuestring, i, b))
            return false;
        bool calls = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "tool_calls")) > 0;
        p->messages[i].role = strcmp(role->valuestring, "developer") ? role->valuestring : "system";
        p->messages[i].content = calls && (!content || cJSON_IsNull(content)) ? NULL : text;
        p->messages[i].json = m;
    }
    p->er.messages = p->messages;
    p->er.n_messages = (size_t)n;
    return true;
}

/* One prompt given as token ids (non-negative integers) into prompt k. */
static bool prompt_id_list(const cJSON *v, gen_params *p, int k, bad_field *b)
{
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return bad(b, "prompt", "'prompt' token id lists must not be empty.");
    if (!(p->prompt_ids[k] = malloc(sizeof *p->prompt_ids[k] * (size_t)n)))
        return bad(b, "prompt", "out of memory");
    const cJSON *t;
    int i = 0;
    cJSON_ArrayForEach(t, v) {
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble > 2147483647.0 ||
            t->valuedouble != floor(t->valuedouble))
            return bad(b, "prompt", "'prompt' token ids must be non-negative integers.");
        p->prompt_ids[k][i++] = (int32_t)t->valuedouble;
    }
    p->n_prompt_ids[k] = (size_t)n;
    return true;
}

/* One prompt of the list: a string or an array of token ids. */
static bool one_prompt(const cJSON *v, gen_params *p, bad_field *b)
{
    int k = p->n_prompts++;
    if (cJSON_IsString(v)) {
        p->prompts[k] = v->valuestring;
        return v->valuestring[0] ? true : bad(b, "prompt", "'prompt' strings must not be empty.");
    }
    if (cJSON_IsArray(v))
        return prompt_id_list(v, p, k, b);
    return bad(b, "prompt", "'prompt' must be a string, an array of strings, an array of token "
                            "ids or an array of token-id arrays.");
}

/* prompt: a string, token ids, or a list of either (one choice set per
 * prompt, as OpenAI's legacy completions take them). */
static bool parse_prompt(const cJSON *body, gen_params *p, bad_field *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (!v)
        return bad(b, "prompt", "Missing required parameter: 'prompt'.");
    bool list = cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0 &&
                (cJSON_IsString(cJSON_GetArrayItem(v, 0)) || cJSON_IsArray(cJSON_GetArrayItem(v, 0)));
    if (!list)
        return one_prompt(v, p, b);
    if (cJSON_GetArraySize(v) > MAX_PROMPTS)
        return bad(b, "prompt", "'prompt' takes at most %d prompts.", MAX_PROMPTS);
    const cJSON *item;
    cJSON_ArrayForEach(item, v)
        if (!one_prompt(item, p, b))
            return false;
    return true;
}

/* The request fields each endpoint knows. Anything else is refused, as
 * OpenAI refuses unknown arguments, so that no field is silently ignored. */
static const char *const chat_fields[] = {
    "model", "messages", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "n", "seed", "stream", "stream_options", "stop",
    "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "user", "store", "metadata",
    "service_tier", "response_format", "tools", "tool_choice", "parallel_tool_calls", "modalities",
    "chat_template_kwargs", NULL};
static const char *const completion_fields[] = {
    "model", "prompt", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "n", "seed", "stream", "stream_options", "stop",
    "max_tokens", "logprobs", "echo", "user", "best_of", "suffix", NULL};

static bool known_field(const char *const *fields, const char *name)
{
    for (const char *const *f = fields; *f; f++)
        if (!strcmp(*f, name))
            return true;
    return false;
}

/* True when v is absent, null, or one of the values that ask for nothing. */
static bool no_op(const cJSON *v, const char *noop_string)
{
    return !v || cJSON_IsNull(v) || (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0) ||
           (noop_string && cJSON_IsString(v) && !strcmp(v->valuestring, noop_string));
}

/* Fields retune knows but does not do: a 400 naming them, never a silent no-op. */
static bool check_unsupported(const cJSON *body, bool chat, bad_field *b)
{
    const cJSON *mod = cJSON_GetObjectItemCaseSensitive(body, "modalities");
    if (chat && !no_op(mod, NULL) && !(cJSON_IsArray(mod) && cJSON_GetArraySize(mod) == 1 &&
                                       cJSON_IsString(mod->child) && !strcmp(mod->child->valuestring, "text")))
        return bad(b, "modalities", "'modalities' can only be [\"text\"].");
    if (chat && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "store")))
        return bad(b, "store", "'store': true is not supported: retune does not keep completions.");
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(body, "suffix");
    if (!chat && !no_op(suffix, ""))
        return bad(b, "suffix", "'suffix' (insertion) is not supported.");
    return true;
}

/* Unknown fields, then the known ones retune refuses. */
static bool check_fields(const cJSON *body, bool chat, bad_field *b)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, body)
        if (!known_field(chat ? chat_fields : completion_fields, item->string)) {
            static _Thread_local char param[64];
            snprintf(param, sizeof param, "%.60s", item->string);
            return bad(b, param, "Unrecognized request argument supplied: %.200s", item->string);
        }
    return check_unsupported(body, chat, b);
}

/* best_of (legacy completions): best_of completions per prompt, of which
 * the n with the highest log probability per token are returned. */
static bool check_best_of(const cJSON *body, gen_params *p, bad_field *b)
{
    double best_of = p->n;
    if (!opt_num(body, "best_of", 1, MAX_N, true, &best_of, b))
        return false;
    if (best_of < p->n)
        return bad(b, "best_of", "'best_of' must be at least 'n'.");
    if (best_of > p->n && p->stream)
        return bad(b, "best_of", "'best_of' greater than 'n' cannot be streamed.");
    p->per_prompt = (int)best_of;
    return true;
}

/* ---- response_format: constrained JSON output ------------------------------------ */

/* True when every key of o is one of keys (NULL-terminated); else a 400
 * with param (a static string: the object's own path) naming the first
 * other key, so that no field of response_format is silently ignored. */
static bool only_keys(const cJSON *o, const char *const *keys, const char *param, bad_field *b)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, o)
        if (!known_field(keys, item->string))
            return bad(b, param, "Unrecognized argument '%.60s' in '%s'.", item->string, param);
    return true;
}

/* OpenAI's rule for a json_schema name: 1 to 64 of a-z, A-Z, 0-9, _ and -. */
static bool schema_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* response_format.json_schema: {name, description?, schema?, strict?} ->
 * the schema to compile (NULL when absent: any object). */
static bool parse_json_schema(const cJSON *js, const cJSON **schema, bad_field *b)
{
    static const char *const keys[] = {"name", "description", "schema", "strict", NULL};
    if (!js || cJSON_IsNull(js))
        return bad(b, "response_format.json_schema",
                   "Missing required parameter: 'response_format.json_schema'.");
    if (!cJSON_IsObject(js))
        return bad(b, "response_format.json_schema", "'response_format.json_schema' must be an object.");
    if (!only_keys(js, keys, "response_format.json_schema", b))
        return false;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(js, "description");
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
    const cJSON *sch = cJSON_GetObjectItemCaseSensitive(js, "schema");
    if (!name || cJSON_IsNull(name))
        return bad(b, "response_format.json_schema.name",
                   "Missing required parameter: 'response_format.json_schema.name'.");
    if (!cJSON_IsString(name) || !schema_name_ok(name->valuestring))
        return bad(b, "response_format.json_schema.name",
                   "'response_format.json_schema.name' must be 1 to 64 characters of a-z, A-Z, 0-9, "
                   "underscores and dashes.");
    if (desc && !cJSON_IsNull(desc) && !cJSON_IsString(desc))
        return bad(b, "response_format.json_schema.description",
                   "'response_format.json_schema.description' must be a string.");
    if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
        return bad(b, "response_format.json_schema.strict",
                   "'response_format.json_schema.strict' must be a boolean.");
    if (sch && !cJSON_IsNull(sch) && !cJSON_IsObject(sch))
        return bad(b, "response_format.json_schema.schema",
                   "'response_format.json_schema.schema' must be a JSON Schema object.");
    *schema = sch && !cJSON_IsNull(sch) ? sch : NULL;
    return true;
}

/* response_format (chat): {"type": "text"} asks for nothing; "json_object"
 * and "json_schema" compile the grammar that every choice's tokens are
 * sampled under (once per request; strict or not, it is enforced). */
static bool parse_response_format(const cJSON *body, gen_params *p, bad_field *b)
{
    static const char *const plain_keys[] = {"type", NULL};
    static const char *const schema_keys[] = {"type", "json_schema", NULL};
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(body, "response_format");
    if (!rf || cJSON_IsNull(rf))
        return true;
    const cJSON *type = cJSON_IsObject(rf) ? cJSON_GetObjectItemCaseSensitive(rf, "type") : NULL;
    if (!cJSON_IsObject(rf))
        return bad(b, "response_format", "'response_format' must be an object with a 'type'.");
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    bool schema_type = !strcmp(t, "json_schema");
    if (strcmp(t, "text") && strcmp(t, "json_object") && !schema_type)
        return bad(b, "response_format.type", "'response_format.type' must be 'text', 'json_object' "
                                              "or 'json_schema'.");
    if (!only_keys(rf, schema_type ? schema_keys : plain_keys, "response_format", b))
        return false;
    if (!strcmp(t, "text"))
        return true;
    const cJSON *schema = NULL;
    if (schema_type && !parse_json_schema(cJSON_GetObjectItemCaseSensitive(rf, "json_schema"), &schema, b))
        return false;
    char err[200] = "";
    int rc = engine_grammar_compile(schema, &p->grammar, err, sizeof err);
    if (rc == RT_ERR_NOMEM)
        return bad(b, "response_format", "out of memory compiling 'response_format'");
    if (rc != RT_OK)
        return bad(b, "response_format.json_schema.schema",
                   "Invalid schema for response_format: %s", err[0] ? err : rt_strerror(rc));
    p->er.grammar = p->grammar;
    return true;
}

/* Everything but the model: inputs, lengths, logprobs. */
static bool parse_request(const cJSON *body, gen_params *p, bad_field *b)
{
    engine_request *er = &p->er;
    if (!cJSON_IsObject(body))
        return bad(b, NULL, "The request body must be a JSON object.");
    if (!check_fields(body, p->chat, b))
        return false;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (!cJSON_IsString(model) || !model->valuestring[0])
        return bad(b, "model", "Missing required parameter: 'model'.");
    p->model = model->valuestring;
    if (!parse_sampling(body, p, b))
        return false;
    double max_tokens = p->chat ? ENGINE_MAX_TOKENS_FIT : 16, top = 0;
    if (p->chat) {
        bool lp = false;
        if (!opt_num(body, "max_tokens", 1, 1e7, true, &max_tokens, b) ||
            !opt_num(body, "max_completion_tokens", 1, 1e7, true, &max_tokens, b) ||
            !opt_bool(body, "logprobs", &lp, b) || !opt_num(body, "top_logprobs", 0, 20, true, &top, b) ||
            !parse_messages(body, p, b) || !parse_tools(body, p, b) ||
            !parse_response_format(body, p, b))
            return false;
        const cJSON *kw = cJSON_GetObjectItemCaseSensitive(body, "chat_template_kwargs");
        if (kw && !cJSON_IsNull(kw) && !cJSON_IsObject(kw))
            return bad(b, "chat_template_kwargs", "'chat_template_kwargs' must be an object.");
        er->template_kwargs = cJSON_IsObject(kw) ? kw : NULL;
        if (top > 0 && !lp)
            return bad(b, "top_logprobs", "'top_logprobs' needs 'logprobs': true.");
        er->logprobs = lp;
    } else {
        double lp = -1;
        if (!opt_num(body, "max_tokens", 0, 1e7, true, &max_tokens, b) ||
            !opt_num(body, "logprobs", 0, 5, true, &lp, b) || !opt_bool(body, "echo", &er->echo, b) ||
            !check_best_of(body, p, b) || !parse_prompt(body, p, b))
            return false;
        er->logprobs = lp >= 0;
        top = lp > 0 ? lp : 0;
        if (max_tokens == 0 && !er->echo)
            return bad(b, "max_tokens", "'max_tokens' may be 0 only with 'echo': true.");
        if (p->n_prompts * p->n > MAX_N)
            return bad(b, "n", "'n' times the number of prompts must be at most %d.", MAX_N);
        if (p->n_prompts * p->per_prompt > MAX_N)
            return bad(b, "best_of", "'best_of' times the number of prompts must be at most %d.", MAX_N);
        if (p->stream && er->echo && max_tokens == 0)
            return bad(b, "stream", "'stream' needs max_tokens >= 1.");
    }
    er->max_tokens = (int)max_tokens;
    er->top_logprobs = (int)top;
    if (p->chat)
        p->per_prompt = p->n;
    p->n_choices = p->chat ? p->n : p->n_prompts * p->per_prompt;
    return true;
}

/* ---- the shared state of one HTTP request and its engine requests ---------------- */

typedef struct choice {
    char *text;
    size_t len, cap;
    const char *finish;
    int completion_tokens, prompt_tokens;
    cJSON *logprobs;          /* chat: content array; completions: {tokens, ...} */
    int text_offset;
    size_t streamed;          /* with tools: bytes of text already sent as content */
    double sum_logprob;       /* of the completion's tokens (best_of ranks by its mean) */
    int n_logprobs;
    double last_token_at;     /* when its last sampled token came (0: none yet) */
} choice;

typedef struct gen_state gen_state;

typedef struct choice_ctx {
    gen_state *g;
    int index;
} choice_ctx;

struct gen_state {
    pthread_mutex_t lock;
    int refs;                 /* the request + one per accepted engine request + a stream response */
    api_request *req;         /* woken on tokens and the end; NULL once the request is over */
    api_target target;        /* what serves the model; released when the request is over */
    double last_out;          /* when stream bytes last went out (for keep-alive comments) */
    double submitted_at;      /* when the engine requests were submitted (time to first token) */
    bool chat, stream, include_usage, logprobs, sent_role[MAX_N];
    bool tools, one_call;     /* read tool calls from the text; at most one per choice */
    int n, done, per_prompt;  /* engine requests; finished; engine requests per prompt */
    int returned;             /* choices returned per prompt: n (best_of keeps the best n) */
    choice choices[MAX_N];
    choice_ctx ctx[MAX_N];
    engine_handle *handles[MAX_N];
    engine_server *engine;
    char *out;                /* SSE bytes not yet sent */
    size_t out_len, out_cap, out_sent;
    bool ended;               /* [DONE] queued */
    const char *error;        /* an engine error (static string) */
    json_grammar *grammar;    /* response_format, borrowed by every choice until on_done */
    char id[64], model[640];
    int64_t created;
};

/* Says in the log when choices were cancelled (their client left), and
 * how far they had got: the generation stopped then, not at max_tokens. */
static void log_cancelled(const gen_state *g)
{
    int cancelled = 0, tokens = 0;
    for (int i = 0; i < g->n; i++)
        if (g->choices[i].finish && !strcmp(g->choices[i].finish, "cancelled")) {
            cancelled++;
            tokens += g->choices[i].completion_tokens;
        }
    if (cancelled)
        rt_log(RT_LOG_INFO, "%s: %d of %d choices cancelled (the client left) after %d tokens",
               g->id, cancelled, g->n, tokens);
}

static void gen_release(gen_state *g)
{
    pthread_mutex_lock(&g->lock);
    int left = --g->refs;
    pthread_mutex_unlock(&g->lock);
    if (left)
        return;
    log_cancelled(g);
    for (int i = 0; i < g->n; i++) {
        engine_handle_release(g->handles[i]);
        free(g->choices[i].text);
        cJSON_Delete(g->choices[i].logprobs);
    }
    free(g->out);
    engine_grammar_free(g->grammar); /* every on_done has run: nothing borrows it now */
    pthread_mutex_destroy(&g->lock);
    free(g);
}

/* Appends bytes to a growing buffer; false when out of memory. */
/* Queues one SSE event carrying json (deleted here). Lock held. */
static void sse_send(gen_state *g, cJSON *json)
{
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    if (!text)
        return;
    api_buf_append(&g->out, &g->out_len, &g->out_cap, "data: ", 6);
    api_buf_append(&g->out, &g->out_len, &g->out_cap, text, strlen(text));
    api_buf_append(&g->out, &g->out_len, &g->out_cap, "\n\n", 2);
    free(text);
}

/* A token's text as valid UTF-8 (bad bytes become U+FFFD) and its bytes. */
static void token_strings(gen_state *g, int32_t id, char *text, size_t size, cJSON **bytes)
{
    char raw[256];
    size_t len = 0;
    if (engine_token_text(g->engine, id, raw, sizeof raw, &len) != RT_OK)
        len = 0;
    *bytes = cJSON_CreateArray();
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        cJSON_AddItemToArray(*bytes, cJSON_CreateNumber((unsigned char)raw[i]));
        size_t n = 1;
        while (i + n < len && ((unsigned char)raw[i + n] & 0xC0) == 0x80 && n < 4)
            n++;
        bool ok = engine_utf8_valid(raw + i, n);
        const char *src = ok ? raw + i : "\xEF\xBF\xBD";
        size_t sl = ok ? n : 3;
        if (o + sl < size) {
            memcpy(text + o, src, sl);
            o += sl;
        }
        for (size_t k = 1; ok && k < n; k++)
            cJSON_AddItemToArray(*bytes, cJSON_CreateNumber((unsigned char)raw[i + k]));
        i += ok ? n - 1 : 0;
    }
    text[o] = '\0';
}

/* Chat logprobs entry for one token. */
static cJSON *chat_logprob(gen_state *g, const engine_token_event *ev)
{
    char text[512];
    cJSON *bytes;
    token_strings(g, ev->token, text, sizeof text, &bytes);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", text);
    cJSON_AddNumberToObject(o, "logprob", ev->logprob);
    cJSON_AddItemToObject(o, "bytes", bytes);
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    for (int k = 0; k < ev->n_top; k++) {
        cJSON *t = cJSON_CreateObject();
        token_strings(g, ev->top_tokens[k], text, sizeof text, &bytes);
        cJSON_AddStringToObject(t, "token", text);
        cJSON_AddNumberToObject(t, "logprob", ev->top_logprobs[k]);
        cJSON_AddItemToObject(t, "bytes", bytes);
        cJSON_AddItemToArray(top, t);
    }
    return o;
}

/* Completions logprobs: appends one token to {tokens, token_logprobs, top_logprobs, text_offset}. */
static void completion_logprob(gen_state *g, cJSON *lp, const engine_token_event *ev, int offset)
{
    char text[512];
    cJSON *bytes;
    token_strings(g, ev->token, text, sizeof text, &bytes);
    cJSON_Delete(bytes);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "tokens"), cJSON_CreateString(text));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "token_logprobs"),
                         ev->has_logprob ? cJSON_CreateNumber(ev->logprob) : cJSON_CreateNull());
    cJSON *top = ev->n_top ? cJSON_CreateObject() : cJSON_CreateNull();
    for (int k = 0; k < ev->n_top; k++) {
        token_strings(g, ev->top_tokens[k], text, sizeof text, &bytes);
        cJSON_Delete(bytes);
        if (!cJSON_GetObjectItemCaseSensitive(top, text))
            cJSON_AddNumberToObject(top, text, ev->top_logprobs[k]);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "top_logprobs"), top);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "text_offset"), cJSON_CreateNumber(offset));
}

static cJSON *new_completion_logprobs(void)
{
    cJSON *lp = cJSON_CreateObject();
    cJSON_AddArrayToObject(lp, "tokens");
    cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON_AddArrayToObject(lp, "text_offset");
    return lp;
}

/* The envelope of a streamed chunk. */
static cJSON *chunk_envelope(gen_state *g, cJSON **choices)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->id);
    cJSON_AddStringToObject(o, "object", g->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)g->created);
    cJSON_AddStringToObject(o, "model", g->model);
    cJSON_AddNullToObject(o, "system_fingerprint");
    *choices = cJSON_AddArrayToObject(o, "choices");
    return o;
}

/* One streamed chunk for a token event (or the final one when finish). */
static void stream_chunk(gen_state *g, int index, const engine_token_event *ev, const char *finish)
{
    cJSON *choices, *env = chunk_envelope(g, &choices);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", index);
    char *text = strndup(ev && ev->len ? ev->text : "", ev ? ev->len : 0);
    if (!text) {
        cJSON_Delete(env);
        cJSON_Delete(c);
        return;
    }
    if (g->chat) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (!g->sent_role[index]) {
            cJSON_AddStringToObject(delta, "role", "assistant");
            g->sent_role[index] = true;
        }
        if (ev)
            cJSON_AddStringToObject(delta, "content", text);
        if (ev && g->logprobs && ev->token >= 0) {
            cJSON *lp = cJSON_AddObjectToObject(c, "logprobs");
            cJSON *content = cJSON_AddArrayToObject(lp, "content");
            cJSON_AddItemToArray(content, chat_logprob(g, ev));
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    } else {
        cJSON_AddStringToObject(c, "text", text);
        if (ev && g->logprobs && ev->token >= 0) {
            cJSON *lp = new_completion_logprobs();
            completion_logprob(g, lp, ev, g->choices[index].text_offset);
            cJSON_AddItemToObject(c, "logprobs", lp);
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    }
    free(text);
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    sse_send(g, env);
}

/* ---- tool calls ---------------------------------------------------------------------- */

/* An id for a call the model made without one: Mistral's templates take
 * back only 9 letters and digits, the others get OpenAI's call-... shape. */
static void new_call_id(gen_state *g, char *buf, size_t size)
{
    const char *f = engine_tool_format(g->engine);
    if (!f || strcmp(f, "mistral") || size < 10) {
        storage_new_id("call", buf, size);
        return;
    }
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[9] = {0};
    if (getrandom(r, sizeof r, 0) != sizeof r)
        memset(r, 7, sizeof r);
    for (int i = 0; i < 9; i++)
        buf[i] = alnum[r[i] % (sizeof alnum - 1)];
    buf[9] = '\0';
}

/* OpenAI's tool_calls array for calls[0..n); streamed deltas carry an index. */
static cJSON *tool_calls_json(gen_state *g, const engine_tool_call *calls, int n, bool stream)
{
    cJSON *list = cJSON_CreateArray();
    for (int k = 0; k < n; k++) {
        char id[64];
        if (calls[k].id[0])
            snprintf(id, sizeof id, "%s", calls[k].id);
        else
            new_call_id(g, id, sizeof id);
        cJSON *c = cJSON_CreateObject();
        if (stream)
            cJSON_AddNumberToObject(c, "index", k);
        cJSON_AddStringToObject(c, "id", id);
        cJSON_AddStringToObject(c, "type", "function");
        cJSON *fn = cJSON_AddObjectToObject(c, "function");
        cJSON_AddStringToObject(fn, "name", calls[k].name);
        cJSON_AddStringToObject(fn, "arguments", calls[k].arguments);
        cJSON_AddItemToArray(list, c);
    }
    return list;
}

/* A choice that stopped after making calls finishes with "tool_calls", as
 * OpenAI's do; any other finish (length, ...) stands. */
static const char *finish_with_calls(const char *finish, int n_calls)
{
    return n_calls > 0 && !strcmp(finish, "stop") ? "tool_calls" : finish;
}

/* The choice's text read as content and tool calls (at most one when
 * parallel calls are off); false when out of memory. */
static bool read_calls(gen_state *g, const choice *c, char **content, engine_tool_call **calls, int *n)
{
    if (engine_tool_calls_parse(g->engine, c->text ? c->text : "", c->len, content, calls, n) != RT_OK)
        return false;
    if (g->one_call && *n > 1) {
        for (int k = 1; k < *n; k++) { /* the array itself is freed with the first */
            free((*calls)[k].name);
            free((*calls)[k].arguments);
        }
        *n = 1;
    }
    return true;
}

/* Streaming with tools: sends the part of the text now known to be
 * content (a tool call's marker, or what may become one, waits). */
static void stream_content_so_far(gen_state *g, int index, const engine_token_event *ev)
{
    choice *c = &g->choices[index];
    size_t safe = engine_tool_content_prefix(g->engine, c->text, c->len);
    engine_token_event e = *ev;
    e.text = c->text ? c->text + c->streamed : "";
    e.len = safe > c->streamed ? safe - c->streamed : 0;
    c->streamed += e.len;
    if (e.len || (g->logprobs && ev->token >= 0) || !g->sent_role[index])
        stream_chunk(g, index, &e, NULL);
}

/* Streaming with tools, at the end: the calls as one delta, or the text
 * held back as content when there are none. The finish reason to send. */
static const char *stream_tool_end(gen_state *g, int index, const char *finish)
{
    choice *c = &g->choices[index];
    char *content = NULL;
    engine_tool_call *calls = NULL;
    int n = 0;
    if (!read_calls(g, c, &content, &calls, &n))
        return "error";
    if (n == 0 && c->len > c->streamed) {
        engine_token_event e = {.text = c->text + c->streamed, .len = c->len - c->streamed, .token = -1};
        stream_chunk(g, index, &e, NULL);
    } else if (n > 0) {
        cJSON *choices, *env = chunk_envelope(g, &choices);
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", index);
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (!g->sent_role[index])
            cJSON_AddStringToObject(delta, "role", "assistant");
        g->sent_role[index] = true;
        cJSON_AddItemToObject(delta, "tool_calls", tool_calls_json(g, calls, n, true));
        cJSON_AddNullToObject(ch, "logprobs");
        cJSON_AddNullToObject(ch, "finish_reason");
        cJSON_AddItemToArray(choices, ch);
        sse_send(g, env);
    }
    engine_tool_calls_free(calls, n);
    free(content);
    return finish_with_calls(finish, n);
}

static cJSON *usage_json(gen_state *g)
{
    int completion = 0, prompt = 0;
    for (int i = 0; i < g->n; i++) {
        completion += g->choices[i].completion_tokens;
        if (i % g->per_prompt == 0) /* each prompt counted once, as OpenAI counts them */
            prompt += g->choices[i].prompt_tokens;
    }
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", completion);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + completion);
    return u;
}

/* ---- engine callbacks (engine thread) --------------------------------------------- */

/* Wakes the parked HTTP side (lock held, which keeps g->req alive); true
 * when the request is already over. */
static bool wake_http(gen_state *g)
{
    if (g->req)
        api_request_wake(g->req);
    return g->req == NULL;
}

/* A sampled token's place in the latency metrics. Lock held. */
static void observe_token(gen_state *g, choice *c)
{
    double now = rt_now_seconds();
    if (c->last_token_at > 0)
        rt_metric_observe(RT_METRIC_INTER_TOKEN_LATENCY, now - c->last_token_at);
    else
        rt_metric_observe(RT_METRIC_TIME_TO_FIRST_TOKEN, now - g->submitted_at);
    c->last_token_at = now;
    rt_metric_add(RT_METRIC_GENERATED_TOKENS, 1);
}

static int on_token(void *ctx, const engine_token_event *ev)
{
    choice_ctx *cc = ctx;
    gen_state *g = cc->g;
    choice *c = &g->choices[cc->index];
    pthread_mutex_lock(&g->lock);
    if (ev->token >= 0 && !ev->prompt)
        observe_token(g, c);
    api_buf_append(&c->text, &c->len, &c->cap, ev->text, ev->len);
    if (g->stream && g->tools) {
        stream_content_so_far(g, cc->index, ev);
    } else if (g->stream) {
        bool carries_logprob = g->logprobs && ev->token >= 0;
        if (ev->len || carries_logprob || !g->sent_role[cc->index])
            stream_chunk(g, cc->index, ev, NULL);
    } else {
        if (g->logprobs && ev->token >= 0 && g->chat && !ev->prompt)
            cJSON_AddItemToArray(c->logprobs, chat_logprob(g, ev));
        if (g->logprobs && ev->token >= 0 && !g->chat)
            completion_logprob(g, c->logprobs, ev, c->text_offset);
    }
    c->text_offset += (int)ev->len;
    if (ev->has_logprob && !ev->prompt) {
        c->sum_logprob += ev->logprob;
        c->n_logprobs++;
    }
    bool over = wake_http(g);
    pthread_mutex_unlock(&g->lock);
    return over ? 1 : 0; /* nobody waits for it any more: stop generating */
}

static void on_done(void *ctx, const engine_result *res)
{
    choice_ctx *cc = ctx;
    gen_state *g = cc->g;
    pthread_mutex_lock(&g->lock);
    choice *c = &g->choices[cc->index];
    c->finish = res->finish_reason;
    c->completion_tokens = res->completion_tokens;
    c->prompt_tokens = res->prompt_tokens;
    if (!strcmp(res->finish_reason, "error"))
        g->error = "the engine failed while generating";
    g->done++;
    if (g->stream) {
        if (strcmp(res->finish_reason, "cancelled"))
            stream_chunk(g, cc->index, NULL, g->tools ? stream_tool_end(g, cc->index, res->finish_reason)
                                                      : res->finish_reason);
        if (g->done == g->n) {
            if (g->include_usage) {
                cJSON *choices, *env = chunk_envelope(g, &choices);
                cJSON_AddItemToObject(env, "usage", usage_json(g));
                sse_send(g, env);
            }
            api_buf_append(&g->out, &g->out_len, &g->out_cap, "data: [DONE]\n\n", 14);
            g->ended = true;
        }
    }
    wake_http(g);
    pthread_mutex_unlock(&g->lock);
    gen_release(g);
}

/* ---- responses ---------------------------------------------------------------------- */

/* A message's content and tool_calls read from the choice's text; the
 * finish reason ("tool_calls" when the model stopped after calls). */
static const char *add_tool_message(gen_state *g, const choice *c, cJSON *m, const char *finish)
{
    char *content = NULL;
    engine_tool_call *calls = NULL;
    int n = 0;
    if (!read_calls(g, c, &content, &calls, &n)) {
        cJSON_AddStringToObject(m, "content", c->text ? c->text : "");
        return finish;
    }
    if (n > 0 && !content[0])
        cJSON_AddNullToObject(m, "content");
    else
        cJSON_AddStringToObject(m, "content", n > 0 ? content : (c->text ? c->text : ""));
    if (n > 0)
        cJSON_AddItemToObject(m, "tool_calls", tool_calls_json(g, calls, n, false));
    engine_tool_calls_free(calls, n);
    free(content);
    return finish_with_calls(finish, n);
}

static double mean_logprob(const choice *c)
{
    return c->n_logprobs ? c->sum_logprob / c->n_logprobs : 0;
}

/* The engine requests whose completions are returned, in order: all of
 * them, or with best_of the `returned` best of each prompt's (highest log
 * probability per token first, as OpenAI ranks them). */
static int returned_choices(const gen_state *g, int *order)
{
    int n = 0;
    for (int first = 0; first < g->n; first += g->per_prompt) {
        int start = n;
        for (int i = first; i < first + g->per_prompt && i < g->n; i++) {
            int k = n++;
            while (k > start && g->per_prompt > g->returned &&
                   mean_logprob(&g->choices[i]) > mean_logprob(&g->choices[order[k - 1]])) {
                order[k] = order[k - 1];
                k--;
            }
            order[k] = i;
        }
        n = start + (g->per_prompt < g->returned ? g->per_prompt : g->returned);
    }
    return n;
}

/* The whole (non-streamed) response. */
static cJSON *final_json(gen_state *g)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->id);
    cJSON_AddStringToObject(o, "object", g->chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)g->created);
    cJSON_AddStringToObject(o, "model", g->model);
    cJSON_AddNullToObject(o, "system_fingerprint");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    int order[MAX_N], n = returned_choices(g, order);
    for (int i = 0; i < n; i++) {
        choice *c = &g->choices[order[i]];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "index", i);
        const char *finish = c->finish ? c->finish : "stop";
        if (g->chat) {
            cJSON *m = cJSON_AddObjectToObject(j, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            if (g->tools)
                finish = add_tool_message(g, c, m, finish);
            else
                cJSON_AddStringToObject(m, "content", c->text ? c->text : "");
            cJSON_AddNullToObject(m, "refusal");
        } else {
            cJSON_AddStringToObject(j, "text", c->text ? c->text : "");
        }
        if (g->logprobs && g->chat) {
            cJSON *lp = cJSON_AddObjectToObject(j, "logprobs");
            cJSON_AddItemToObject(lp, "content", c->logprobs);
        } else if (g->logprobs) {
            cJSON_AddItemToObject(j, "logprobs", c->logprobs);
        } else {
            cJSON_AddNullToObject(j, "logprobs");
        }
        c->logprobs = NULL; /* moved into the response */
        cJSON_AddStringToObject(j, "finish_reason", finish);
        cJSON_AddItemToArray(choices, j);
    }
    cJSON_AddItemToObject(o, "usage", usage_json(g));
    return o;
}

/* MHD reads the stream from here. With nothing to send it parks the
 * connection and returns 0 (which libmicrohttpd allows in its internal
 * polling modes only for a suspended connection); a token, the end, a tick
 * (answered with an SSE comment after KEEPALIVE_SECONDS of silence), the
 * client leaving or the server stopping resume it. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    gen_state *g = cls;
    for (;;) {
        pthread_mutex_lock(&g->lock);
        double now = rt_now_seconds();
        if (g->out_sent == g->out_len && !g->ended && now - g->last_out >= KEEPALIVE_SECONDS)
            api_buf_append(&g->out, &g->out_len, &g->out_cap, ": keep-alive\n\n", 14);
        size_t n = g->out_len - g->out_sent;
        if (n > max)
            n = max;
        if (n) { /* g->out is still NULL before the first event */
            memcpy(buf, g->out + g->out_sent, n);
            g->out_sent += n;
            g->last_out = now;
        }
        bool ended = g->ended;
        api_request *req = g->req;
        pthread_mutex_unlock(&g->lock);
        if (n)
            return (ssize_t)n;
        if (ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        enum api_park park = req ? api_request_park(req) : API_PARK_END;
        if (park == API_PARKED)
            return 0;
        if (park == API_PARK_END)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

/* The stream response is gone: drop its reference (the request's end
 * cancels what still runs). */
static void stream_free(void *cls)
{
    gen_release(cls);
}

static int respond_stream(api_request *req, gen_state *g)
{
    pthread_mutex_lock(&g->lock);
    g->refs++; /* the response's */
    g->last_out = rt_now_seconds();
    pthread_mutex_unlock(&g->lock);
    return api_respond_event_stream(req, stream_read, g, stream_free);
}

/* Answers in one piece once every choice is done; until then parks the
 * connection (the engine's callbacks wake it). It is also the request's
 * resume step, run again on each wake. */
static bool all_done(void *p)
{
    gen_state *g = p;
    pthread_mutex_lock(&g->lock);
    bool done = g->done == g->n;
    pthread_mutex_unlock(&g->lock);
    return done;
}

static int respond_whole(api_request *req)
{
    gen_state *g = req->state;
    int rc;
    if (!api_request_wait(req, all_done, g, "the completion", &rc))
        return rc;
    return g->error ? api_respond_error(req, 500, "server_error", NULL, NULL, "%s", g->error)
                    : api_respond_json(req, 200, final_json(g));
}

/* The HTTP request is over (answered, or its client gone): nothing is woken
 * any more, engine requests still running are cancelled and what serves the
 * model is released (the request's state_free). */
static void request_over(void *state)
{
    gen_state *g = state;
    pthread_mutex_lock(&g->lock);
    api_request *req = g->req;
    g->req = NULL;
    int n = g->n;
    pthread_mutex_unlock(&g->lock);
    for (int i = 0; i < n; i++)
        engine_cancel(g->handles[i]);
    if (req)
        api_model_release(req, &g->target);
    gen_release(g);
}

/* ---- submit ------------------------------------------------------------------------- */

static gen_state *gen_new(const gen_params *p, const api_target *t)
{
    gen_state *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    pthread_mutex_init(&g->lock, NULL);
    g->refs = 1;
    g->target = *t;
    g->chat = p->chat;
    g->stream = p->stream;
    g->include_usage = p->include_usage;
    g->logprobs = p->er.logprobs;
    g->tools = p->tools;
    g->one_call = !p->parallel_tool_calls;
    g->n = p->n_choices;
    g->per_prompt = p->per_prompt;
    g->returned = p->n;
    g->engine = t->engine;
    g->created = rt_unix_time();
    snprintf(g->model, sizeof g->model, "%s", p->model);
    storage_new_id(p->chat ? "chatcmpl" : "cmpl", g->id, sizeof g->id);
    for (int i = 0; i < p->n_choices; i++) {
        g->ctx[i] = (choice_ctx){g, i};
        if (g->logprobs)
            g->choices[i].logprobs = p->chat ? cJSON_CreateArray() : new_completion_logprobs();
    }
    return g;
}

/* Submits the engine requests, n per prompt (seeds seed, seed+1, ...). */
static int submit_all(api_request *req, gen_params *p, const api_target *t, gen_state *g)
{
    engine_error why = {0};
    g->submitted_at = rt_now_seconds();
    for (int i = 0; i < p->n_choices; i++) {
        engine_request er = p->er;
        if (!p->chat) { /* choice i answers prompt i / per_prompt */
            int k = i / p->per_prompt;
            er.prompt = p->prompts[k];
            er.prompt_ids = p->prompt_ids[k];
            er.n_prompt_ids = p->n_prompt_ids[k];
        }
        er.adapter = t->adapter[0] ? t->adapter : NULL;
        er.seed = p->er.seed + (uint64_t)(i % p->per_prompt);
        er.logprobs = p->er.logprobs || p->per_prompt > p->n; /* best_of ranks by them */
        if (!er.has_seed && p->n_choices > 1) {
            uint64_t r = 0;
            if (getrandom(&r, sizeof r, 0) == sizeof r)
                er.seed = r;
            er.has_seed = true;
        }
        er.ctx = &g->ctx[i];
        er.on_token = on_token;
        er.on_done = on_done;
        pthread_mutex_lock(&g->lock);
        g->refs++;
        pthread_mutex_unlock(&g->lock);
        int rc = engine_submit(t->engine, &er, &g->handles[i], &why);
        if (rc != RT_OK) {
            gen_release(g); /* the reference on_done would have dropped */
            for (int k = 0; k < i; k++)
                engine_cancel(g->handles[k]);
            pthread_mutex_lock(&g->lock);
            g->n = i; /* wait only for those accepted */
            pthread_mutex_unlock(&g->lock);
            return api_respond_refusal(req, rc, &why);
        }
    }
    return RT_OK;
}

static int generate(api_request *req, bool chat, bool loaded);

/* Loading the model a request names, off the event loop (api/offload.c). */
typedef struct model_load {
    api_server *srv;
    char project[STORAGE_PROJECT_MAX];
    char model[640];
    bool chat;
    api_target target;     /* held until the request is over, so it stays resident */
    int rc;
    engine_error why;
} model_load;

static void model_load_work(void *arg)
{
    model_load *l = arg;
    l->rc = api_catalog_load(l->srv, l->project, l->model, true, &l->target, &l->why);
    char err[512] = "";
    if (l->rc == RT_OK && l->target.adapter[0] &&
        engine_adapter_preload(l->target.engine, l->target.adapter, err, sizeof err) != RT_OK) {
        api_target_release(l->srv, &l->target);
        l->rc = engine_error_set(&l->why, RT_ERR_IO, "model", "The model '%s' could not be loaded: %s",
                                 l->model, err);
    }
}

static void model_load_free(void *arg)
{
    model_load *l = arg;
    if (l->rc == RT_OK)
        api_target_release(l->srv, &l->target);
    free(l);
}

/* The model is loaded (or could not be): the request runs again from its
 * body, and now finds it resident. */
static int model_loaded(api_request *req, void *arg)
{
    model_load *l = arg;
    return l->rc == RT_OK ? generate(req, l->chat, true) : api_respond_refusal(req, l->rc, &l->why);
}

static int load_model_then_generate(api_request *req, const char *model, bool chat)
{
    model_load *l = calloc(1, sizeof *l);
    if (!l)
        return RT_ERR_NOMEM;
    l->srv = req->srv;
    l->chat = chat;
    l->rc = RT_ERR_STATE;
    snprintf(l->project, sizeof l->project, "%s", api_project(req));
    snprintf(l->model, sizeof l->model, "%s", model);
    return api_offload_start(req, model_load_work, model_loaded, l, model_load_free);
}

/* Answers a completion request; loaded: its model was just loaded (do not
 * offload again, whatever happened since). */
static int generate(api_request *req, bool chat, bool loaded)
{
    cJSON *body = api_body_json(req);
    if (!body)
        return RT_OK;
    gen_params p = {.chat = chat};
    bad_field b = {0};
    api_target t;
    engine_error why = {0};
    int rc = RT_OK;
    bool parsed = parse_request(body, &p, &b);
    /* a model not in memory is loaded off the event loop first, unless it just was */
    bool may_load = loaded || !parsed || strlen(p.model) >= sizeof ((model_load *)0)->model;
    if (!parsed)
        rc = api_respond_error(req, 400, BAD, b.param, "invalid_value", "%s", b.message);
    else if ((rc = api_catalog_resolve(req, p.model, may_load, &t, &why)) == RT_ERR_BUSY)
        rc = load_model_then_generate(req, p.model, chat);
    else if (rc != RT_OK)
        rc = api_respond_refusal(req, rc, &why);
    else {
        gen_state *g = gen_new(&p, &t);
        if (!g) {
            api_model_release(req, &t);
            rc = RT_ERR_NOMEM;
        } else { /* the request owns g (and t) from here: request_over ends them */
            g->grammar = p.grammar; /* it lives as long as the choices that borrow it */
            p.grammar = NULL;
            g->req = req;
            req->state = g;
            req->state_free = request_over;
            if (!req->responded && (rc = submit_all(req, &p, &t, g)) == RT_OK && !req->responded) {
                req->resume = p.stream ? NULL : respond_whole;
                rc = p.stream ? respond_stream(req, g) : respond_whole(req);
            }
        }
    }
    params_free(&p);
    cJSON_Delete(body);
    return rc;
}

int api_chat_completions(api_request *req) { return generate(req, true, false); }
int api_completions(api_request *req) { return generate(req, false, false); }
