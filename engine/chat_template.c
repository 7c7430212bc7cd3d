/*
 * engine/chat_template.c — a model's chat template loaded from
 * tokenizer_config.json and compiled by the Jinja interpreter (rendered
 * through engine/chat_jinja.c), or, without one, ChatML as C code; ids with a
 * per-token loss mask. See chat_template.h for the rules.
 *
 * The C formats below also serve the templates' recognised families for
 * tests that compare them; every loaded template renders through Jinja.
 * Each format is a function that emits pieces in order: a piece is either
 * a token string (used as one id when the tokenizer knows it) or text to
 * encode, each with its mask value. Encoding pieces one at a time is what
 * keeps the mask exact. Text that directly follows other text is encoded
 * with TOKENIZER_CONTINUE, so a SentencePiece tokenizer adds its "▁"
 * prefix only where encoding the whole rendered string would (after a
 * special token or at the start).
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
    char *default_system;     /* ChatML: inserted when no system message */
    bool template_bos;        /* the template writes bos_token first */
    jinja_template *jt;       /* the template itself; NULL: none given (ChatML in C) */
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
    if (!src) {
        rt_log(RT_LOG_WARN, "chat template: none given; using ChatML");
        return CHAT_TEMPLATE_CHATML;
    }
    if (strstr(src, "<|im_start|>"))
        return CHAT_TEMPLATE_CHATML;
    if (strstr(src, "<|start_header_id|>"))
        return CHAT_TEMPLATE_LLAMA3;
    if (strstr(src, "[INST]"))
        return strstr(src, "<<SYS>>") ? CHAT_TEMPLATE_LLAMA2 : CHAT_TEMPLATE_MISTRAL;
    if (strstr(src, "<|user|>") || strstr(src, "<|assistant|>"))
        return CHAT_TEMPLATE_ZEPHYR;
    rt_log(RT_LOG_WARN, "chat template: unrecognised format; using ChatML");
    return CHAT_TEMPLATE_CHATML;
}

/*
 * ChatML templates such as Qwen2's write a fixed system turn when the
 * conversation has none: '<|im_start|>system\nYou are ...<|im_end|>'. Finds
 * that literal text (the newline may be written as \n inside the Jinja
 * string) and copies it into *out; *out stays NULL when there is none.
 */
static bool find_default_system(const char *src, char **out)
{
    static const char head[] = "<|im_start|>system";
    *out = NULL;
    for (const char *p = src ? strstr(src, head) : NULL; p; p = strstr(p + 1, head)) {
        const char *s = p + strlen(head);
        if (s[0] == '\n')
            s += 1;
        else if (s[0] == '\\' && s[1] == 'n')
            s += 2;
        else
            continue;
        const char *e = strstr(s, "<|im_end|>");
        size_t n = e ? (size_t)(e - s) : 0;
        if (!n || strcspn(s, "{}'\"\\") < n)
            continue; /* not a plain literal (e.g. message['content']) */
        *out = malloc(n + 1);
        if (!*out)
            return false;
        memcpy(*out, s, n);
        (*out)[n] = '\0';
        return true;
    }
    return true;
}

/* As chat_template_from_source, saying in err why a template does not compile. */
static int from_source(const char *source, const char *bos, const char *eos, chat_template **out,
                       char *err, size_t errsize)
{
    if (!out)
        return RT_ERR_INVALID;
    chat_template *ct = calloc(1, sizeof *ct);
    if (!ct)
        return RT_ERR_NOMEM;
    char why[256] = "";
    int rc = source ? jinja_compile(source, &ct->jt, why, sizeof why) : RT_OK;
    if (rc != RT_OK) {
        if (err && errsize)
            snprintf(err, errsize, "chat_template: %s", why);
        free(ct);
        return rc == RT_ERR_NOMEM ? rc : RT_ERR_UNSUPPORTED;
    }
    ct->kind = detect_kind(source);
    ct->template_bos = source && strstr(source, "bos_token");
    bool ok = dup_opt(bos, &ct->bos) && dup_opt(eos, &ct->eos);
    if (ok && ct->kind == CHAT_TEMPLATE_CHATML)
        ok = find_default_system(source, &ct->default_system);
    if (!ok) {
        chat_template_free(ct);
        return RT_ERR_NOMEM;
    }
    *out = ct;
    return RT_OK;
}

/* Builds a template; see chat_template.h. */
int chat_template_from_source(const char *source, const char *bos, const char *eos,
                              chat_template **out)
{
    return from_source(source, bos, eos, out, NULL, 0);
}

/* Frees a template; NULL is allowed. */
void chat_template_free(chat_template *ct)
{
    if (!ct)
        return;
    jinja_free(ct->jt);
    free(ct->bos);
    free(ct->eos);
    free(ct->default_system);
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
 * one named "default" (else the first) wins. */
static const char *template_setting(const cJSON *cfg)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *it;
    if (cJSON_IsString(v))
        return v->valuestring;
    const char *first = NULL;
    const cJSON *list = cJSON_IsArray(v) ? v : NULL;
    cJSON_ArrayForEach(it, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (!cJSON_IsString(tpl))
            continue;
        if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)
            return tpl->valuestring;
        if (!first)
            first = tpl->valuestring;
    }
    return first;
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
    int rc = from_source(template_setting(cfg), token_setting(cfg, "bos_token"),
                         token_setting(cfg, "eos_token"), out, why, sizeof why);
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

const char *chat_template_default_system(const chat_template *ct)
{
    return ct->default_system;
}

/* The token that closes an assistant turn in this format. */
const char *chat_template_end_of_turn(const chat_template *ct)
{
    switch (ct->kind) {
    case CHAT_TEMPLATE_CHATML: return "<|im_end|>";
    case CHAT_TEMPLATE_LLAMA3: return "<|eot_id|>";
    default: return ct->eos;
    }
}

/* ---------------------------------------------------------------- render */

typedef struct render {
    const chat_template *ct;
    const tokenizer *tok;
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
    bool at_start;            /* nothing, or a special token, came last */
} render;

/* Appends ids with one mask value. */
static int emit_ids(render *r, const int32_t *ids, size_t n, uint8_t m)
{
    if (n == 0)
        return RT_OK;
    if (r->n + n > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->n + n)
            cap *= 2;
        int32_t *ids2 = realloc(r->ids, cap * sizeof *ids2);
        if (ids2)
            r->ids = ids2;
        uint8_t *mask2 = realloc(r->mask, cap);
        if (mask2)
            r->mask = mask2;
        if (!ids2 || !mask2)
            return RT_ERR_NOMEM;
        r->cap = cap;
    }
    memcpy(r->ids + r->n, ids, n * sizeof *ids);
    memset(r->mask + r->n, m, n);
    r->n += n;
    return RT_OK;
}

/* Encodes text (no BOS/EOS) and appends it; a text piece that follows
 * text continues it (no dummy prefix). */
static int emit_text(render *r, const char *s, size_t len, uint8_t m)
{
    if (!len)
        return RT_OK;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode_ex(r->tok, s, len, r->at_start ? 0 : TOKENIZER_CONTINUE, &ids, &n);
    if (rc == RT_OK)
        rc = emit_ids(r, ids, n, m);
    free(ids);
    r->at_start = false;
    return rc;
}

/* Appends a token string: its id when the tokenizer has it, else its text. */
static int emit_token(render *r, const char *t, uint8_t m)
{
    if (!t)
        return RT_OK;
    int32_t id = tokenizer_token_id(r->tok, t);
    if (id < 0)
        return emit_text(r, t, strlen(t), m);
    r->at_start = true;
    return emit_ids(r, &id, 1, m);
}

/* Appends the concatenation a + b + c (any may be NULL) as one text piece. */
static int emit_cat(render *r, uint8_t m, const char *a, const char *b, const char *c)
{
    size_t la = a ? strlen(a) : 0, lb = b ? strlen(b) : 0, lc = c ? strlen(c) : 0;
    char *s = malloc(la + lb + lc + 1);
    if (!s)
        return RT_ERR_NOMEM;
    memcpy(s, a ? a : "", la);
    memcpy(s + la, b ? b : "", lb);
    memcpy(s + la + lb, c ? c : "", lc);
    int rc = emit_text(r, s, la + lb + lc, m);
    free(s);
    return rc;
}

/* Python's str.strip() for ASCII whitespace: [*s, *s + *n). */
static void strip_span(const char **s, size_t *n)
{
    while (*n && strchr(" \t\n\r\v\f", (*s)[0]))
        (*s)++, (*n)--;
    while (*n && strchr(" \t\n\r\v\f", (*s)[*n - 1]))
        (*n)--;
}

static bool is_role(const chat_message *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

/* The mask value of a message's content: trained assistant turns only. */
static uint8_t content_mask(const chat_message *m)
{
    return is_role(m, "assistant") && m->weight != 0;
}

static const char *content_of(const chat_message *m)
{
    return m->content ? m->content : "";
}

/* The BOS the template writes at the start, if any. */
static int emit_bos(render *r)
{
    return r->ct->template_bos ? emit_token(r, r->ct->bos, 0) : RT_OK;
}

/* One ChatML turn: <|im_start|>{role}\n{content}<|im_end|>\n */
static int chatml_turn(render *r, const chat_message *msg)
{
    uint8_t m = content_mask(msg);
    const char *c = content_of(msg);
    int rc = emit_cat(r, 0, "<|im_start|>", msg->role, "\n");
    if (rc == RT_OK)
        rc = emit_text(r, c, strlen(c), m);
    if (rc == RT_OK)
        rc = emit_token(r, "<|im_end|>", m);
    if (rc == RT_OK)
        rc = emit_text(r, "\n", 1, 0);
    return rc;
}

/* ChatML, with the template's default system turn when there is none. */
static int render_chatml(render *r, const chat_message *msgs, size_t n, bool gen)
{
    int rc = emit_bos(r);
    if (rc == RT_OK && r->ct->default_system && (n == 0 || !is_role(&msgs[0], "system"))) {
        chat_message sys = { "system", r->ct->default_system, 0 };
        rc = chatml_turn(r, &sys);
    }
    for (size_t i = 0; rc == RT_OK && i < n; i++)
        rc = chatml_turn(r, &msgs[i]);
    if (rc == RT_OK && gen)
        rc = emit_text(r, "<|im_start|>assistant\n", 22, 0);
    return rc;
}

/* <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> */
static int render_llama3(render *r, const chat_message *msgs, size_t n, bool gen)
{
    int rc = emit_bos(r);
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        uint8_t m = content_mask(&msgs[i]);
        const char *c = content_of(&msgs[i]);
        size_t len = strlen(c);
        strip_span(&c, &len);
        rc = emit_cat(r, 0, "<|start_header_id|>", msgs[i].role, "<|end_header_id|>\n\n");
        if (rc == RT_OK)
            rc = emit_text(r, c, len, m);
        if (rc == RT_OK)
            rc = emit_token(r, "<|eot_id|>", m);
    }
    if (rc == RT_OK && gen)
        rc = emit_text(r, "<|start_header_id|>assistant<|end_header_id|>\n\n", 47, 0);
    return rc;
}

/* Llama-2/Mistral user turn: "[INST] " + (system block) + content + " [/INST]". */
static int emit_inst(render *r, const char *sys_head, const char *sys, const char *sys_tail,
                     const char *content)
{
    const char *c = content;
    size_t len = strlen(c);
    strip_span(&c, &len);
    size_t lh = sys ? strlen(sys_head) + strlen(sys) + strlen(sys_tail) : 0;
    char *s = malloc(7 + lh + len + 9);
    if (!s)
        return RT_ERR_NOMEM;
    int k = sprintf(s, "[INST] %s%s%s", sys ? sys_head : "", sys ? sys : "", sys ? sys_tail : "");
    memcpy(s + k, c, len);
    memcpy(s + k + len, " [/INST]", 9);
    int rc = emit_text(r, s, (size_t)k + len + 8, 0);
    free(s);
    return rc;
}

/* Llama-2/Mistral answer: Llama-2 writes ' ' + answer + ' ' right after
 * [/INST]; Mistral's reference encodes the answer on its own. Then eos. */
static int inst_answer(render *r, const chat_message *m, bool llama2)
{
    const char *c = content_of(m);
    size_t len = strlen(c);
    strip_span(&c, &len);
    uint8_t mk = content_mask(m);
    int rc;
    if (llama2) {
        char *s = malloc(len + 3);
        if (!s)
            return RT_ERR_NOMEM;
        s[0] = ' ';
        memcpy(s + 1, c, len);
        s[len + 1] = ' ';
        rc = emit_text(r, s, len + 2, mk);
        free(s);
    } else {
        r->at_start = true;
        rc = emit_text(r, c, len, mk);
    }
    return rc == RT_OK ? emit_token(r, r->ct->eos, mk) : rc;
}

/*
 * Llama-2: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
 * Mistral: <s>[INST] {system}\n\n{user} [/INST]{answer}</s>
 * (the system prompt goes into the first user turn).
 */
static int render_inst(render *r, const chat_message *msgs, size_t n, bool llama2)
{
    const char *sys = n && is_role(&msgs[0], "system") ? content_of(&msgs[0]) : NULL;
    int rc = llama2 ? RT_OK : emit_token(r, r->ct->bos, 0);
    bool first_user = true;
    for (size_t i = sys ? 1 : 0; rc == RT_OK && i < n; i++) {
        const chat_message *m = &msgs[i];
        if (!is_role(m, "user")) {
            rc = inst_answer(r, m, llama2); /* roles_ok let only assistant through */
            continue;
        }
        const char *s = first_user ? sys : NULL;
        if (llama2)
            rc = emit_token(r, r->ct->bos, 0);
        if (rc == RT_OK)
            rc = llama2 ? emit_inst(r, "<<SYS>>\n", s, "\n<</SYS>>\n\n", content_of(m))
                        : emit_inst(r, "", s, "\n\n", content_of(m));
        first_user = false;
    }
    return rc;
}

/* <|{role}|>\n{content}</s>\n */
static int render_zephyr(render *r, const chat_message *msgs, size_t n, bool gen)
{
    int rc = emit_bos(r);
    for (size_t i = 0; rc == RT_OK && i < n; i++) {
        uint8_t m = content_mask(&msgs[i]);
        const char *c = content_of(&msgs[i]);
        rc = emit_cat(r, 0, "<|", msgs[i].role, "|>\n");
        if (rc == RT_OK)
            rc = emit_text(r, c, strlen(c), m);
        if (rc == RT_OK)
            rc = emit_token(r, r->ct->eos, m);
        if (rc == RT_OK)
            rc = emit_text(r, "\n", 1, 0);
    }
    if (rc == RT_OK && gen)
        rc = emit_text(r, "<|assistant|>\n", 14, 0);
    return rc;
}

/* Checks roles: present everywhere; for [INST] formats only system
 * (first), user and assistant. */
static bool roles_ok(const chat_template *ct, const chat_message *msgs, size_t n)
{
    bool inst = ct->kind == CHAT_TEMPLATE_LLAMA2 || ct->kind == CHAT_TEMPLATE_MISTRAL;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].role[0])
            return false;
        if (inst && is_role(&msgs[i], "system") && i != 0)
            return false;
        if (inst && !is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") &&
            !is_role(&msgs[i], "assistant"))
            return false;
    }
    return true;
}

/* Renders a conversation; see chat_template.h. */
int chat_template_render(const chat_template *ct, const tokenizer *tok,
                         const chat_message *msgs, size_t n, bool add_generation_prompt,
                         int32_t **ids, uint8_t **mask, size_t *n_ids)
{
    if (!ct || !tok || (!msgs && n) || !ids || !mask || !n_ids)
        return RT_ERR_INVALID;
    for (size_t i = 0; ct->jt && i < n; i++)
        if (!msgs[i].role || !msgs[i].role[0])
            return RT_ERR_INVALID;
    if (ct->jt) { /* the model's own template decides what it accepts */
        chat_jinja_vars v = {ct->bos, ct->eos, chat_template_end_of_turn(ct)};
        return chat_jinja_render(ct->jt, &v, tok, msgs, n, add_generation_prompt, ids, mask, n_ids);
    }
    if (!roles_ok(ct, msgs, n))
        return RT_ERR_INVALID;
    render r = { .ct = ct, .tok = tok, .at_start = true };
    int rc;
    switch (ct->kind) {
    case CHAT_TEMPLATE_LLAMA3: rc = render_llama3(&r, msgs, n, add_generation_prompt); break;
    case CHAT_TEMPLATE_LLAMA2: rc = render_inst(&r, msgs, n, true); break;
    case CHAT_TEMPLATE_MISTRAL: rc = render_inst(&r, msgs, n, false); break;
    case CHAT_TEMPLATE_ZEPHYR: rc = render_zephyr(&r, msgs, n, add_generation_prompt); break;
    default: rc = render_chatml(&r, msgs, n, add_generation_prompt); break;
    }
    if (rc == RT_OK && !r.ids) { /* empty, but still arrays to free */
        r.ids = malloc(sizeof *r.ids);
        r.mask = malloc(1);
        if (!r.ids || !r.mask)
            rc = RT_ERR_NOMEM;
    }
    if (rc != RT_OK) {
        free(r.ids);
        free(r.mask);
        return rc;
    }
    *ids = r.ids;
    *mask = r.mask;
    *n_ids = r.n;
    return RT_OK;
}
