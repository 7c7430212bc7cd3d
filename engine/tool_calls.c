/*
 * engine/tool_calls.c — tool calls out of a model's reply (see
 * tool_calls.h). Each format is read with cJSON, which says where a JSON
 * value ends, so the text between and around the calls is kept exactly.
 */
#include "engine/tool_calls.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

#define MAX_CALLS 64

enum tool_format tool_format_detect(const char *src)
{
    if (!src)
        return TOOL_FORMAT_NONE;
    if (strstr(src, "<tool_call>"))
        return TOOL_FORMAT_HERMES;
    if (strstr(src, "[TOOL_CALLS]"))
        return TOOL_FORMAT_MISTRAL;
    if (strstr(src, "<|python_tag|>") || (strstr(src, "<|eot_id|>") && strstr(src, "\"parameters\"")))
        return TOOL_FORMAT_LLAMA3;
    return TOOL_FORMAT_NONE;
}

const char *tool_format_name(enum tool_format f)
{
    static const char *const names[] = {"none", "hermes", "mistral", "llama3"};
    return f >= TOOL_FORMAT_NONE && f <= TOOL_FORMAT_LLAMA3 ? names[f] : "none";
}

void tool_calls_free(tool_call *calls, int n)
{
    for (int i = 0; calls && i < n; i++) {
        free(calls[i].name);
        free(calls[i].arguments);
    }
    free(calls);
}

/* The calls found so far and the content around them. */
typedef struct parse_state {
    tool_call calls[MAX_CALLS];
    int n;
    char *content;
    size_t content_len;
    bool bad, nomem;
} parse_state;

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* Appends text to the content. */
static void add_content(parse_state *s, const char *text, size_t n)
{
    char *grown = realloc(s->content, s->content_len + n + 1);
    if (!grown) {
        s->nomem = true;
        return;
    }
    memcpy(grown + s->content_len, text, n);
    s->content = grown;
    s->content_len += n;
    s->content[s->content_len] = '\0';
}

/* The JSON value at p (before end): parsed into *out, *next after it. */
static bool parse_json_at(const char *p, const char *end, cJSON **out, const char **next)
{
    const char *stop = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(p, (size_t)(end - p), &stop, false);
    if (!v || !stop || stop > end) {
        cJSON_Delete(v);
        return false;
    }
    *out = v;
    *next = stop;
    return true;
}

/* Adds the call {name, <args_key>: {...}} (arguments may also be a string
 * holding a JSON object, as some models write them). */
static bool add_call(parse_state *s, const cJSON *o, const char *args_key)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, args_key);
    if (!args && strcmp(args_key, "arguments"))
        args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    cJSON *parsed = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
    const cJSON *obj = parsed ? parsed : args;
    if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !name->valuestring[0] ||
        (obj && !cJSON_IsObject(obj)) || s->n >= MAX_CALLS) {
        cJSON_Delete(parsed);
        return false;
    }
    tool_call *c = &s->calls[s->n];
    memset(c, 0, sizeof *c);
    c->name = strdup(name->valuestring);
    c->arguments = obj ? cJSON_PrintUnformatted(obj) : strdup("{}");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    if (cJSON_IsString(id) && strlen(id->valuestring) < sizeof c->id)
        strcpy(c->id, id->valuestring);
    cJSON_Delete(parsed);
    s->n++;
    if (!c->name || !c->arguments)
        s->nomem = true;
    return true;
}

/* <tool_call> JSON </tool_call>, repeated, text around them kept. A call
 * cut off by the end of the reply (no closing tag) still counts. */
static void parse_hermes(parse_state *s, const char *p, const char *end)
{
    static const char open[] = "<tool_call>", close[] = "</tool_call>";
    while (p < end && !s->bad) {
        const char *tag = strstr(p, open);
        if (!tag || tag >= end) {
            add_content(s, p, (size_t)(end - p));
            return;
        }
        add_content(s, p, (size_t)(tag - p));
        cJSON *o = NULL;
        const char *after = NULL;
        if (!parse_json_at(skip_space(tag + strlen(open), end), end, &o, &after) ||
            !add_call(s, o, "arguments")) {
            s->bad = true;
        } else {
            after = skip_space(after, end);
            if ((size_t)(end - after) >= strlen(close) && !strncmp(after, close, strlen(close)))
                after += strlen(close);
            else if (after != end)
                s->bad = true;
        }
        cJSON_Delete(o);
        p = after;
    }
}

/* After [TOOL_CALLS]: a JSON array of calls, or name[ARGS]{...} (Mistral's
 * newer tokenizers), repeated. */
static void parse_mistral(parse_state *s, const char *p, const char *end)
{
    static const char marker[] = "[TOOL_CALLS]", args_tag[] = "[ARGS]";
    const char *tag = strstr(p, marker);
    if (!tag || tag >= end) {
        add_content(s, p, (size_t)(end - p));
        return;
    }
    add_content(s, p, (size_t)(tag - p));
    p = skip_space(tag + strlen(marker), end);
    while (p < end && !s->bad) {
        cJSON *v = NULL;
        const char *after = NULL;
        const char *args = strstr(p, args_tag);
        if (*p == '[' && parse_json_at(p, end, &v, &after) && cJSON_IsArray(v)) {
            const cJSON *item;
            cJSON_ArrayForEach(item, v)
                s->bad = s->bad || !add_call(s, item, "arguments");
        } else if (args && args < end && args > p && parse_json_at(args + strlen(args_tag), end, &v, &after)) {
            cJSON *o = cJSON_CreateObject();
            char *name = strndup(p, (size_t)(args - p));
            cJSON_AddStringToObject(o, "name", name ? name : "");
            cJSON_AddItemToObject(o, "arguments", cJSON_Duplicate(v, true));
            s->bad = !add_call(s, o, "arguments");
            free(name);
            cJSON_Delete(o);
        } else {
            s->bad = true;
        }
        cJSON_Delete(v);
        p = after ? skip_space(after, end) : end;
        if (p < end && (size_t)(end - p) >= strlen(marker) && !strncmp(p, marker, strlen(marker)))
            p = skip_space(p + strlen(marker), end);
    }
}

/* The whole reply as {"name", "parameters"} objects separated by ';'. */
static void parse_llama3(parse_state *s, const char *p, const char *end)
{
    static const char python_tag[] = "<|python_tag|>";
    const char *q = skip_space(p, end);
    if ((size_t)(end - q) >= strlen(python_tag) && !strncmp(q, python_tag, strlen(python_tag)))
        q = skip_space(q + strlen(python_tag), end);
    if (q >= end || *q != '{') {
        add_content(s, p, (size_t)(end - p));
        return;
    }
    while (q < end && !s->bad) {
        cJSON *o = NULL;
        const char *after = NULL;
        if (!parse_json_at(q, end, &o, &after) || !add_call(s, o, "parameters"))
            s->bad = true;
        cJSON_Delete(o);
        q = after ? skip_space(after, end) : end;
        if (q < end && *q == ';')
            q = skip_space(q + 1, end);
    }
}

/* Trims the content in place. */
static void trim(char *text)
{
    size_t n = strlen(text), i = 0;
    while (i < n && strchr(" \n\r\t", text[i]))
        i++;
    while (n > i && strchr(" \n\r\t", text[n - 1]))
        n--;
    memmove(text, text + i, n - i);
    text[n - i] = '\0';
}

int tool_calls_parse(enum tool_format f, const char *text, size_t len, char **content,
                     tool_call **calls, int *n_calls)
{
    if (!text || !content || !calls || !n_calls)
        return RT_ERR_INVALID;
    parse_state *s = calloc(1, sizeof *s);
    if (!s)
        return RT_ERR_NOMEM;
    const char *end = text + strnlen(text, len);
    if (f == TOOL_FORMAT_HERMES)
        parse_hermes(s, text, end);
    else if (f == TOOL_FORMAT_MISTRAL)
        parse_mistral(s, text, end);
    else if (f == TOOL_FORMAT_LLAMA3)
        parse_llama3(s, text, end);
    if (s->bad || f == TOOL_FORMAT_NONE) { /* not a call after all: all of it is content */
        for (int i = 0; i < s->n; i++) {
            free(s->calls[i].name);
            free(s->calls[i].arguments);
        }
        s->n = 0;
        s->content_len = 0;
        add_content(s, text, (size_t)(end - text));
    }
    tool_call *out = s->n ? malloc((size_t)s->n * sizeof *out) : NULL;
    if (!s->content)
        add_content(s, "", 0);
    if (s->nomem || (s->n && !out)) {
        tool_calls_free(out, 0);
        for (int i = 0; i < s->n; i++) {
            free(s->calls[i].name);
            free(s->calls[i].arguments);
        }
        free(s->content);
        free(s);
        return RT_ERR_NOMEM;
    }
    if (s->n)
        memcpy(out, s->calls, (size_t)s->n * sizeof *out);
    trim(s->content);
    *content = s->content;
    *calls = out;
    *n_calls = s->n;
    free(s);
    return RT_OK;
}

/* Length of the longest suffix of text[0..len) that is a proper prefix of marker. */
static size_t partial_marker(const char *text, size_t len, const char *marker)
{
    size_t k = strlen(marker) - 1;
    for (k = k < len ? k : len; k > 0; k--)
        if (!memcmp(text + len - k, marker, k))
            return k;
    return 0;
}

/* Where a call marked by marker may begin: at the marker, or at a partial
 * one at the end; else nowhere (len). */
static size_t before_marker(const char *text, size_t len, const char *marker)
{
    const char *at = memmem(text, len, marker, strlen(marker));
    return at ? (size_t)(at - text) : len - partial_marker(text, len, marker);
}

/* Llama-3: the reply is a call when it starts (after blanks) with '{' or
 * <|python_tag|>; until its first other byte nothing is certain. */
static size_t llama3_prefix(const char *text, size_t len)
{
    static const char python_tag[] = "<|python_tag|>";
    const char *q = skip_space(text, text + len);
    size_t rest = len - (size_t)(q - text), tl = strlen(python_tag);
    if (rest == 0 || *q == '{' || !memcmp(q, python_tag, rest < tl ? rest : tl))
        return 0;
    return len;
}

size_t tool_calls_content_prefix(enum tool_format f, const char *text, size_t len)
{
    if (!text)
        return 0;
    switch (f) {
    case TOOL_FORMAT_HERMES: return before_marker(text, len, "<tool_call>");
    case TOOL_FORMAT_MISTRAL: return before_marker(text, len, "[TOOL_CALLS]");
    case TOOL_FORMAT_LLAMA3: return llama3_prefix(text, len);
    default: return len;
    }
}
