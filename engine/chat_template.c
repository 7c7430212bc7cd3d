/*
 * engine/chat_template.c — a model's chat template loaded from
 * tokenizer_config.json and compiled by the Jinja interpreter, then
 * rendered through engine/chat_jinja.c (ids with a per-token loss mask).
 * A model without a template gets ChatML, written as a Jinja template too,
 * so that one renderer serves every model. See chat_template.h.
 */
#include "engine/chat_template.h"
#include "engine/chat_jinja.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

struct chat_template {
    enum chat_template_kind kind;
    char *bos, *eos;          /* from the config; NULL when absent */
    const char *end_of_turn;  /* the marker that closes an answer (static or eos) */
    enum tool_format tools;   /* how the template writes tool calls */
    jinja_template *jt;       /* the template ("default" when named) */
    jinja_template *jt_tools; /* the one named "tool_use", for requests with tools; or NULL */
};

/* Copies s (NULL stays NULL); false when out of memory. */
static bool dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (!s)
        return true;
    size_t n = strlen(s);
    *out = malloc(n + 1);
    if (!*out)
        return false;
    memcpy(*out, s, n + 1);
    return true;
}

/* ---------------------------------------------------------------- detect */

/* Recognises the family from the Jinja source. */
static enum chat_template_kind detect_kind(const char *src)
{
    if (!src || strstr(src, "<|im_start|>"))
        return CHAT_TEMPLATE_CHATML;
    if (strstr(src, "<|start_header_id|>"))
        return CHAT_TEMPLATE_LLAMA3;
    if (strstr(src, "[INST]"))
        return strstr(src, "<<SYS>>") ? CHAT_TEMPLATE_LLAMA2 : CHAT_TEMPLATE_MISTRAL;
    if (strstr(src, "<|user|>") || strstr(src, "<|assistant|>"))
        return CHAT_TEMPLATE_ZEPHYR;
    return CHAT_TEMPLATE_OTHER;
}

/* The marker that closes an assistant turn: the first of the known ones the
 * template writes, else its eos token. Generation stops on it. */
static const char *find_end_of_turn(const char *src, const char *eos)
{
    static const char *const markers[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>",
                                          NULL};
    for (const char *const *m = markers; *m; m++)
        if (strstr(src, *m))
            return *m;
    return eos;
}

/* ChatML as a Jinja template: what a model without a template is given. */
static const char chatml_source[] =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Compiles src into *jt, saying in err (prefixed "chat_template") why not. */
static int compile(const char *src, const char *name, jinja_template **jt, char *err, size_t errsize)
{
    char why[256] = "";
    int rc = jinja_compile(src, jt, why, sizeof why);
    if (rc != RT_OK && err && errsize)
        snprintf(err, errsize, "chat_template%s%s: %s", name ? " " : "", name ? name : "", why);
    return rc == RT_OK || rc == RT_ERR_NOMEM ? rc : RT_ERR_UNSUPPORTED;
}

/* As chat_template_from_source, with the template named "tool_use" (or
 * NULL) and err saying why a template does not compile. */
static int from_source(const char *source, const char *tool_source, const char *bos,
                       const char *eos, chat_template **out, char *err, size_t errsize)
{
    if (!out)
        return RT_ERR_INVALID;
    chat_template *ct = calloc(1, sizeof *ct);
    if (!ct)
        return RT_ERR_NOMEM;
    if (!source)
        rt_log(RT_LOG_WARN, "chat template: none given; using ChatML");
    const char *src = source ? source : chatml_source;
    int rc = compile(src, NULL, &ct->jt, err, errsize);
    if (rc == RT_OK && tool_source)
        rc = compile(tool_source, "tool_use", &ct->jt_tools, err, errsize);
    if (rc == RT_OK && !(dup_opt(bos, &ct->bos) && dup_opt(eos, &ct->eos)))
        rc = RT_ERR_NOMEM;
    if (rc != RT_OK) {
        chat_template_free(ct);
        return rc;
    }
    ct->kind = detect_kind(source);
    ct->end_of_turn = find_end_of_turn(src, ct->eos);
    ct->tools = tool_format_detect(tool_source ? tool_source : source);
    *out = ct;
    return RT_OK;
}

/* Builds a template; see chat_template.h. */
int chat_template_from_source(const char *source, const char *bos, const char *eos,
                              chat_template **out)
{
    return from_source(source, NULL, bos, eos, out, NULL, 0);
}

/* Frees a template; NULL is allowed. */
void chat_template_free(chat_template *ct)
{
    if (!ct)
        return;
    jinja_free(ct->jt);
    jinja_free(ct->jt_tools);
    free(ct->bos);
    free(ct->eos);
    free(ct);
}

/* ------------------------------------------------------------------ load */

/* A token setting: a string, or an AddedToken object's "content". */
static const char *token_setting(const cJSON *cfg, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The chat_template setting: a string, or [{name, template}] where the
 * one named "default" (else the first) wins. The one named name_wanted
 * (e.g. "tool_use"), or NULL when the setting is not such a list. */
static const char *template_setting(const cJSON *cfg, const char *name_wanted)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *it;
    if (cJSON_IsString(v))
        return name_wanted ? NULL : v->valuestring;
    const char *first = NULL;
    const cJSON *list = cJSON_IsArray(v) ? v : NULL;
    cJSON_ArrayForEach(it, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (!cJSON_IsString(tpl))
            continue;
        const char *want = name_wanted ? name_wanted : "default";
        if (cJSON_IsString(name) && strcmp(name->valuestring, want) == 0)
            return tpl->valuestring;
        if (!first)
            first = tpl->valuestring;
    }
    return name_wanted ? NULL : first;
}

/* Loads from tokenizer_config.json text; see chat_template.h. */
int chat_template_load_json(const char *json, size_t len, chat_template **out,
                            char *err, size_t errsize)
{
    if (!json || !out)
        return RT_ERR_INVALID;
    cJSON *cfg = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        if (err && errsize)
            snprintf(err, errsize, "tokenizer_config.json is not a JSON object");
        return RT_ERR_FORMAT;
    }
    char why[320] = "";
    int rc = from_source(template_setting(cfg, NULL), template_setting(cfg, "tool_use"),
                         token_setting(cfg, "bos_token"), token_setting(cfg, "eos_token"), out, why,
                         sizeof why);
    cJSON_Delete(cfg);
    if (rc != RT_OK && err && errsize)
        snprintf(err, errsize, "%s", why[0] ? why : rt_strerror(rc));
    return rc;
}

/* Loads tokenizer_config.json; see chat_template.h. */
int chat_template_load(const char *path, chat_template **out, char *err, size_t errsize)
{
    if (!path || !out)
        return RT_ERR_INVALID;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = errno == ENOENT ? RT_ERR_NOT_FOUND : RT_ERR_IO;
        if (err && errsize)
            snprintf(err, errsize, "cannot open %s", path);
        return rc;
    }
    char *data = NULL;
    size_t len = 0, cap = 0, got;
    int rc = RT_OK;
    do {
        if (len + 65536 > cap) {
            char *p = realloc(data, cap = 2 * cap + 65536);
            if (!p) {
                rc = RT_ERR_NOMEM;
                break;
            }
            data = p;
        }
        got = fread(data + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    if (rc == RT_OK && ferror(f))
        rc = RT_ERR_IO;
    fclose(f);
    if (rc == RT_OK)
        rc = chat_template_load_json(data, len, out, err, errsize);
    free(data);
    return rc;
}

/* ------------------------------------------------------------- accessors */

enum chat_template_kind chat_template_kind(const chat_template *ct)
{
    return ct->kind;
}

const char *chat_template_kind_name(enum chat_template_kind kind)
{
    switch (kind) {
    case CHAT_TEMPLATE_CHATML: return "chatml";
    case CHAT_TEMPLATE_LLAMA3: return "llama3";
    case CHAT_TEMPLATE_LLAMA2: return "llama2";
    case CHAT_TEMPLATE_MISTRAL: return "mistral";
    case CHAT_TEMPLATE_ZEPHYR: return "zephyr";
    case CHAT_TEMPLATE_OTHER: return "other";
    }
    return "unknown";
}

const char *chat_template_bos(const chat_template *ct)
{
    return ct->bos;
}

const char *chat_template_eos(const chat_template *ct)
{
    return ct->eos;
}

/* The token that closes an assistant turn in this format. */
const char *chat_template_end_of_turn(const chat_template *ct)
{
    return ct->end_of_turn;
}

enum tool_format chat_template_tool_format(const chat_template *ct)
{
    return ct->tools;
}

/* ---------------------------------------------------------------- render */

/* Renders a conversation; see chat_template.h. */
int chat_template_render(const chat_template *ct, const tokenizer *tok, const chat_message *msgs,
                         size_t n, bool add_generation_prompt, const chat_extras *extras,
                         int32_t **ids, uint8_t **mask, size_t *n_ids, char *err, size_t errsize)
{
    if (!ct || !tok || (!msgs && n) || !ids || !mask || !n_ids)
        return RT_ERR_INVALID;
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].role[0]) {
            if (err && errsize)
                snprintf(err, errsize, "message %zu has no role", i);
            return RT_ERR_INVALID;
        }
    bool tools = extras && extras->tools;
    chat_jinja_vars v = {ct->bos, ct->eos, ct->end_of_turn, extras, extras && extras->special_text};
    /* the model's own template decides what else it accepts */
    return chat_jinja_render(tools && ct->jt_tools ? ct->jt_tools : ct->jt, &v, tok, msgs, n,
                             add_generation_prompt, ids, mask, n_ids, err, errsize);
}
