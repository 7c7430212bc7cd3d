/*
 * engine/chat_jinja.c — conversations through the model's Jinja chat
 * template, tokenized with a loss mask (see chat_jinja.h).
 */
#include "engine/chat_jinja.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

/* A byte range of the rendered text that is trained on. */
typedef struct answer {
    size_t start, end;
} answer;

/* tool_calls[].function.arguments given as JSON text (OpenAI's shape)
 * become the objects templates expect ("arguments | tojson"); text that is
 * not a JSON object stays text. */
static void parse_arguments(cJSON *tool_calls)
{
    cJSON *call, *list = cJSON_IsArray(tool_calls) ? tool_calls : NULL;
    cJSON_ArrayForEach(call, list) {
        cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
        cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        cJSON *parsed = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
        if (cJSON_IsObject(parsed))
            cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", parsed);
        else
            cJSON_Delete(parsed);
    }
}

/* One message as the template sees it: the given JSON (weight dropped)
 * with role and content as the caller resolved them. */
static cJSON *message_json(const chat_message *m)
{
    cJSON *o = m->json ? cJSON_Duplicate(m->json, true) : cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(o, "weight");
    const cJSON *given = cJSON_GetObjectItemCaseSensitive(o, "content");
    bool null_content = m->json && !m->content && (!given || cJSON_IsNull(given));
    cJSON_DeleteItemFromObjectCaseSensitive(o, "role");
    cJSON_AddStringToObject(o, "role", m->role);
    if (!null_content) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, "content");
        cJSON_AddStringToObject(o, "content", m->content ? m->content : "");
    }
    parse_arguments(cJSON_GetObjectItemCaseSensitive(o, "tool_calls"));
    return o;
}

/* The render variables for msgs[0..n): the extra ones first, so that
 * messages, tools, add_generation_prompt, bos_token and eos_token win. */
static cJSON *context(const chat_jinja_vars *v, const chat_message *msgs, size_t n, bool gen)
{
    const chat_extras *x = v->extras;
    cJSON *ctx = x && cJSON_IsObject(x->kwargs) ? cJSON_Duplicate(x->kwargs, true) : cJSON_CreateObject();
    if (!ctx)
        return NULL;
    static const char *const fixed[] = {"messages", "tools", "add_generation_prompt", "bos_token",
                                        "eos_token", NULL};
    for (const char *const *k = fixed; *k; k++)
        cJSON_DeleteItemFromObjectCaseSensitive(ctx, *k);
    cJSON *list = cJSON_AddArrayToObject(ctx, "messages");
    for (size_t i = 0; list && i < n; i++)
        cJSON_AddItemToArray(list, message_json(&msgs[i]));
    if (x && x->tools)
        cJSON_AddItemToObject(ctx, "tools", cJSON_Duplicate(x->tools, true));
    else
        cJSON_AddNullToObject(ctx, "tools");
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", gen);
    cJSON_AddStringToObject(ctx, "bos_token", v->bos ? v->bos : "");
    cJSON_AddStringToObject(ctx, "eos_token", v->eos ? v->eos : "");
    if (!list || cJSON_GetArraySize(list) != (int)n) {
        cJSON_Delete(ctx);
        return NULL;
    }
    return ctx;
}

/* Renders ctx into *text (*len bytes), with the generation spans when
 * spans is non-NULL; err says why not. */
static int render_ctx(const jinja_template *t, const cJSON *ctx, char **text, size_t *len,
                      jinja_spans *spans, char *err, size_t errsize)
{
    char why[256] = "";
    int rc = jinja_render(t, ctx, text, len, spans, why, sizeof why);
    if (rc != RT_OK) {
        rt_log(RT_LOG_DEBUG, "chat template: %s", why);
        if (err && errsize)
            snprintf(err, errsize, rc == RT_ERR_INVALID ? "the chat template refused the "
                     "conversation: %s" : "the chat template failed: %s", why);
    }
    return rc;
}

/* Renders msgs[0..n) as render_ctx does. */
static int render_text(const jinja_template *t, const chat_jinja_vars *v, const chat_message *msgs,
                       size_t n, bool gen, char **text, size_t *len, jinja_spans *spans, char *err,
                       size_t errsize)
{
    cJSON *ctx = context(v, msgs, n, gen);
    if (!ctx)
        return RT_ERR_NOMEM;
    int rc = render_ctx(t, ctx, text, len, spans, err, errsize);
    cJSON_Delete(ctx);
    return rc;
}

/* Replaces, in every string of item, its siblings after it and all their
 * children, the first byte of each special token's text with 0x01 (same
 * length); true when there was one. */
static bool defuse_specials(cJSON *item, const tokenizer *tok)
{
    bool any = false;
    for (; item; item = item->next) {
        if (cJSON_IsString(item) && item->valuestring) {
            size_t n = strlen(item->valuestring), at = 0, start, len;
            while (tokenizer_find_special(tok, item->valuestring, n, at, &start, &len)) {
                item->valuestring[start] = 0x01;
                at = start + len;
                any = true;
            }
        }
        any = defuse_specials(item->child, tok) || any;
    }
    return any;
}

/* The bytes of whole (len, rendered from ctx) that are text although they
 * spell a special token: where the conversation's own strings (messages,
 * tools) wrote one. Rendered again with those defused (in ctx itself, which
 * is spent afterwards), the two texts differ exactly there. *plain is NULL
 * when the conversation spells none. */
static int injected_marks(const jinja_template *t, cJSON *ctx, const tokenizer *tok,
                          const char *whole, size_t len, uint8_t **plain, char *err, size_t errsize)
{
    *plain = NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(ctx, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(ctx, "tools");
    bool any = defuse_specials(list->child, tok); /* the children: not the siblings (bos_token, ...) */
    any = defuse_specials(tools->child, tok) || any;
    char *other = NULL;
    size_t olen = 0;
    int rc = any ? render_ctx(t, ctx, &other, &olen, NULL, err, errsize) : RT_OK;
    if (rc == RT_OK && any && olen != len) {
        if (err && errsize)
            snprintf(err, errsize, "messages: the conversation spells special tokens in a way the "
                     "chat template changes, so they cannot be kept as text");
        rc = RT_ERR_INVALID;
    }
    if (rc == RT_OK && any && !(*plain = malloc(len ? len : 1)))
        rc = RT_ERR_NOMEM;
    for (size_t i = 0; rc == RT_OK && any && i < len; i++)
        (*plain)[i] = whole[i] != other[i];
    free(other);
    return rc;
}

static bool is_answer(const chat_message *m)
{
    return m->role && !strcmp(m->role, "assistant");
}

/* The range message i adds: render(0..i] minus render(0..i) with the
 * generation prompt, when both are prefixes of the whole text. */
static int answer_by_prefix(const jinja_template *t, const chat_jinja_vars *v,
                            const chat_message *msgs, size_t i, const char *whole, size_t len,
                            answer *out, bool *found)
{
    char *before = NULL, *upto = NULL;
    size_t nb = 0, nu = 0;
    *found = false;
    int rc = render_text(t, v, msgs, i, true, &before, &nb, NULL, NULL, 0);
    if (rc == RT_OK)
        rc = render_text(t, v, msgs, i + 1, false, &upto, &nu, NULL, NULL, 0);
    if (rc == RT_OK && nb <= nu && nu <= len && !memcmp(before, upto, nb) && !memcmp(upto, whole, nu)) {
        *out = (answer){nb, nu};
        *found = true;
    }
    free(before);
    free(upto);
    return rc == RT_ERR_INVALID || rc == RT_ERR_FORMAT ? RT_OK : rc; /* such prefixes may be refused */
}

/* The fallback: the content found after `from`, with the end-of-turn
 * marker right after it. Not for a message of tool calls: its text is the
 * template's, so only the other two ways can find it. */
static bool answer_by_search(const chat_message *m, const chat_jinja_vars *v, const char *whole,
                             size_t len, size_t from, answer *out)
{
    if (m->json && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m->json, "tool_calls")) > 0)
        return false;
    const char *content = m->content ? m->content : "";
    size_t cl = strlen(content);
    const char *at = cl ? strstr(whole + from, content) : whole + from;
    if (!at)
        return false;
    size_t start = (size_t)(at - whole), end = start + cl;
    size_t el = v->end_of_turn ? strlen(v->end_of_turn) : 0;
    if (el && end + el <= len && !memcmp(whole + end, v->end_of_turn, el))
        end += el;
    *out = (answer){start, end};
    return true;
}

/* The trained ranges of the answers (weight != 0), in order. */
static int find_answers(const jinja_template *t, const chat_jinja_vars *v, const chat_message *msgs,
                        size_t n, const char *whole, size_t len, const jinja_spans *spans,
                        answer *out, size_t *count, char *err, size_t errsize)
{
    size_t n_answers = 0, n_trained = 0, k = 0, from = 0;
    for (size_t i = 0; i < n; i++) {
        n_answers += is_answer(&msgs[i]);
        n_trained += is_answer(&msgs[i]) && msgs[i].weight != 0;
    }
    bool by_spans = spans->count > 0 && spans->count == n_answers;
    *count = 0;
    if (n_trained == 0)
        return RT_OK; /* nothing to find (serving): the text is encoded whole */
    for (size_t i = 0; i < n; i++) {
        if (!is_answer(&msgs[i]))
            continue;
        answer a = {0, 0};
        bool found = false;
        if (by_spans) {
            a = (answer){spans->items[k].start, spans->items[k].end};
            found = true;
        } else {
            int rc = answer_by_prefix(t, v, msgs, i, whole, len, &a, &found);
            if (rc != RT_OK)
                return rc;
            found = found && a.start >= from;
            if (!found)
                found = answer_by_search(&msgs[i], v, whole, len, from, &a);
        }
        k++;
        if (!found) {
            if (err && errsize)
                snprintf(err, errsize, "messages[%zu]: the assistant message cannot be found in the "
                         "text the chat template renders, so its loss mask is unknown", i);
            return RT_ERR_UNSUPPORTED;
        }
        from = a.end;
        if (msgs[i].weight != 0)
            out[(*count)++] = a;
    }
    return RT_OK;
}

/* The ids and mask being built. */
typedef struct out_ids {
    int32_t *ids;
    uint8_t *mask;
    size_t n;
    const uint8_t *plain;     /* the whole text's bytes that are text (injected markers), or NULL */
} out_ids;

/* Encodes whole[at..at+len) (a continuation unless first) with mask value m. */
static int encode_piece(const tokenizer *tok, const char *whole, size_t at, size_t len, bool first,
                        uint8_t m, out_ids *o)
{
    if (len == 0)
        return RT_OK;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode_plain(tok, whole + at, len, first ? 0 : TOKENIZER_CONTINUE,
                                    o->plain ? o->plain + at : NULL, &ids, &n);
    if (rc != RT_OK)
        return rc;
    int32_t *grown = realloc(o->ids, (o->n + n + 1) * sizeof *grown);
    uint8_t *mgrown = grown ? realloc(o->mask, o->n + n + 1) : NULL;
    if (grown)
        o->ids = grown;
    if (mgrown)
        o->mask = mgrown;
    if (!grown || !mgrown) {
        free(ids);
        return RT_ERR_NOMEM;
    }
    memcpy(o->ids + o->n, ids, n * sizeof *ids);
    memset(o->mask + o->n, m, n);
    o->n += n;
    free(ids);
    return RT_OK;
}

/* Whether token id is only whitespace. */
static bool blank_token(const tokenizer *tok, int32_t id)
{
    char buf[64];
    size_t n = 0;
    if (tokenizer_token_bytes(tok, id, false, false, buf, sizeof buf, &n) != RT_OK || n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \n\r\t", buf[i]))
            return false;
    return true;
}

/* The answer's tokens [first, o->n): no loss on the whitespace the template
 * puts after the end-of-turn token (the separator before the next turn),
 * as transformers' {% generation %} ranges leave it out. The ids stay
 * those of the whole string. */
static void unmask_separator(const tokenizer *tok, const chat_jinja_vars *v, size_t first, out_ids *o)
{
    int32_t eot = v->end_of_turn ? tokenizer_token_id(tok, v->end_of_turn) : -1;
    size_t k = o->n;
    while (k > first && blank_token(tok, o->ids[k - 1]))
        k--;
    if (eot >= 0 && k > first && o->ids[k - 1] == eot)
        memset(o->mask + k, 0, o->n - k);
}

/* Encodes the text cut at the answers' bounds. */
static int encode_pieces(const tokenizer *tok, const chat_jinja_vars *v, const char *whole,
                         size_t len, const answer *a, size_t n_answers, out_ids *o)
{
    size_t at = 0;
    int rc = RT_OK;
    for (size_t k = 0; rc == RT_OK && k < n_answers; k++) {
        rc = encode_piece(tok, whole, at, a[k].start - at, at == 0, 0, o);
        size_t first = o->n;
        if (rc == RT_OK)
            rc = encode_piece(tok, whole, a[k].start, a[k].end - a[k].start, a[k].start == 0, 1, o);
        if (rc == RT_OK)
            unmask_separator(tok, v, first, o);
        at = a[k].end;
    }
    if (rc == RT_OK)
        rc = encode_piece(tok, whole, at, len - at, at == 0, 0, o);
    return rc;
}

int chat_jinja_render(const jinja_template *t, const chat_jinja_vars *v, const tokenizer *tok,
                      const chat_message *msgs, size_t n, bool add_generation_prompt,
                      int32_t **ids, uint8_t **mask, size_t *n_ids, char *err, size_t errsize)
{
    char *whole = NULL;
    size_t len = 0, n_answers = 0;
    jinja_spans spans = {0};
    out_ids o = {malloc(sizeof(int32_t)), malloc(1), 0, NULL};
    answer *answers = calloc(n ? n : 1, sizeof *answers);
    cJSON *ctx = context(v, msgs, n, add_generation_prompt);
    int rc = o.ids && o.mask && answers && ctx ? RT_OK : RT_ERR_NOMEM;
    if (rc == RT_OK)
        rc = render_ctx(t, ctx, &whole, &len, &spans, err, errsize);
    uint8_t *plain = NULL;
    if (rc == RT_OK && !v->special_text) /* the last use of ctx: it is defused in place */
        rc = injected_marks(t, ctx, tok, whole, len, &plain, err, errsize);
    cJSON_Delete(ctx);
    o.plain = plain;
    if (rc == RT_OK)
        rc = find_answers(t, v, msgs, n, whole, len, &spans, answers, &n_answers, err, errsize);
    if (rc == RT_OK) {
        rc = encode_pieces(tok, v, whole, len, answers, n_answers, &o);
        if (rc != RT_OK && rc != RT_ERR_NOMEM && err && errsize)
            snprintf(err, errsize, "the text could not be tokenized (%s)", rt_strerror(rc));
    }
    free(plain);
    free(whole);
    free(answers);
    jinja_spans_free(&spans);
    if (rc != RT_OK) {
        free(o.ids);
        free(o.mask);
        return rc;
    }
    *ids = o.ids;
    *mask = o.mask;
    *n_ids = o.n;
    return RT_OK;
}
