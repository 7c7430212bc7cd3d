/*
 * engine/json_grammar.c — compiling a JSON Schema (the subset listed in
 * json_grammar.h) into the node graph of json_grammar_internal.h, refusing
 * by name and path every keyword it cannot guarantee. The matcher and the
 * vocabulary mask live in json_grammar_match.c.
 */
#include "engine/json_grammar_internal.h"

#include "common/rt.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JG_MAX_NODES 100000
#define JG_MAX_SCHEMA_DEPTH 128
#define JG_MAX_LIT_BYTES (4u << 20)
#define JG_MAX_ENUM 100000
#define JG_MAX_ALTS 64
#define JG_MAX_COUNT ((int64_t)1 << 30)

typedef struct jg_def {
    const cJSON *schema;
    int node;            /* the REF node standing for it */
} jg_def;

typedef struct jg_ctx {
    json_grammar *g;
    const cJSON *root;
    char *err;
    size_t errsize;
    char path[512];
    size_t plen;
    int depth;
    jg_def *defs;
    int n_defs, cap_defs;
    size_t lit_bytes;
    int any;             /* the "any value" union, -1 until first needed */
} jg_ctx;

/* Keyword families: which ones a schema object may carry. */
enum { KW_ANNOT, KW_TYPE, KW_ENUM, KW_UNION, KW_REF, KW_OBJ, KW_ARR, KW_STR };

static const struct { const char *name; int family; } jg_keywords[] = {
    {"title", KW_ANNOT}, {"description", KW_ANNOT}, {"default", KW_ANNOT},
    {"examples", KW_ANNOT}, {"$schema", KW_ANNOT}, {"$id", KW_ANNOT},
    {"$comment", KW_ANNOT}, {"deprecated", KW_ANNOT}, {"readOnly", KW_ANNOT},
    {"writeOnly", KW_ANNOT}, {"format", KW_ANNOT}, {"$defs", KW_ANNOT},
    {"definitions", KW_ANNOT},
    {"type", KW_TYPE}, {"enum", KW_ENUM}, {"const", KW_ENUM},
    {"anyOf", KW_UNION}, {"oneOf", KW_UNION}, {"$ref", KW_REF},
    {"properties", KW_OBJ}, {"required", KW_OBJ}, {"additionalProperties", KW_OBJ},
    {"items", KW_ARR}, {"minItems", KW_ARR}, {"maxItems", KW_ARR},
    {"minLength", KW_STR}, {"maxLength", KW_STR},
};

static int compile_schema(jg_ctx *c, const cJSON *s, int *out);

/* Writes "<message> at <path>" into the caller's err buffer; returns code. */
static int fail(jg_ctx *c, int code, const char *fmt, ...)
{
    if (c->err && c->errsize) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(c->err, c->errsize, "%s at %s", msg, c->plen ? c->path : "#");
    }
    return code;
}

/* Appends "/seg" (or "/index") to the path; returns the length to restore. */
static size_t path_push(jg_ctx *c, const char *seg, int index)
{
    size_t old = c->plen;
    int n = seg ? snprintf(c->path + c->plen, sizeof c->path - c->plen, "/%s", seg)
                : snprintf(c->path + c->plen, sizeof c->path - c->plen, "/%d", index);
    if (n > 0)
        c->plen = strlen(c->path);
    return old;
}

static void path_pop(jg_ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* Makes room for need more elements of an array; RT_ERR_NOMEM. */
static int grow(void **p, int *cap, int used, int need, size_t elem)
{
    if (used + need <= *cap)
        return RT_OK;
    int n = *cap ? *cap : 16;
    while (n < used + need)
        n *= 2;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q)
        return RT_ERR_NOMEM;
    *p = q;
    *cap = n;
    return RT_OK;
}

/* A new zeroed node of kind; its index in *out. */
static int new_node(jg_ctx *c, int kind, int *out)
{
    json_grammar *g = c->g;
    if (g->n_nodes >= JG_MAX_NODES)
        return fail(c, RT_ERR_TOO_LARGE, "schema needs more than %d nodes", JG_MAX_NODES);
    if (grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes, 1, sizeof *g->nodes))
        return RT_ERR_NOMEM;
    jg_node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->child = -1;
    n->max = -1;
    n->mind = JG_INF;
    *out = g->n_nodes++;
    return RT_OK;
}

/* Reserves count contiguous raw alternatives for union node u. */
static int reserve_alts(jg_ctx *c, int u, int count)
{
    json_grammar *g = c->g;
    if (grow((void **)&g->alts, &g->cap_alts, g->n_alts, count, sizeof *g->alts))
        return RT_ERR_NOMEM;
    g->nodes[u].first = g->n_alts;
    g->nodes[u].count = count;
    g->n_alts += count;
    return RT_OK;
}

/* Appends a literal (taken: s is freed with the grammar). */
static int add_lit(jg_ctx *c, char *s)
{
    json_grammar *g = c->g;
    size_t len = strlen(s);
    if (c->lit_bytes + len > JG_MAX_LIT_BYTES) {
        free(s);
        return fail(c, RT_ERR_TOO_LARGE, "enum values over %u bytes", JG_MAX_LIT_BYTES);
    }
    if (grow((void **)&g->lits, &g->cap_lits, g->n_lits, 1, sizeof *g->lits)) {
        free(s);
        return RT_ERR_NOMEM;
    }
    g->lits[g->n_lits].s = s;
    g->lits[g->n_lits].len = len;
    g->n_lits++;
    c->lit_bytes += len;
    return RT_OK;
}

static int lit_cmp(const void *a, const void *b)
{
    const jg_lit *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->s, y->s, n);
    if (r)
        return r;
    return (x->len > y->len) - (x->len < y->len);
}

/* Sorts and deduplicates the literals of enum node e (they are the last
 * ones added), so the matcher can narrow them as a range. */
static void finish_enum(json_grammar *g, int e)
{
    jg_node *n = &g->nodes[e];
    jg_lit *l = g->lits + n->first;
    qsort(l, (size_t)n->count, sizeof *l, lit_cmp);
    int k = 0;
    for (int i = 0; i < n->count; i++) {
        if (k && lit_cmp(&l[k - 1], &l[i]) == 0) {
            free(l[i].s);
            continue;
        }
        l[k++] = l[i];
    }
    g->n_lits -= n->count - k;
    n->count = k;
}

/* An enum node of the given printed literals (for boolean and null). */
static int fixed_enum(jg_ctx *c, const char *const *vals, int nvals, int *out)
{
    int e, rc = new_node(c, JG_ENUM, &e);
    if (rc)
        return rc;
    c->g->nodes[e].first = c->g->n_lits;
    for (int i = 0; i < nvals; i++) {
        char *s = strdup(vals[i]);
        if (!s)
            return RT_ERR_NOMEM;
        if ((rc = add_lit(c, s)))
            return rc;
        c->g->nodes[e].count++;
    }
    finish_enum(c->g, e);
    *out = e;
    return RT_OK;
}

static const char *const jg_bools[] = {"false", "true"};
static const char *const jg_null[] = {"null"};

/* The "any JSON value" union, built once per grammar: object (any keys,
 * any values), array of any, string, number, boolean, null. */
static int any_node(jg_ctx *c, int *out)
{
    if (c->any >= 0) {
        *out = c->any;
        return RT_OK;
    }
    int u, o, a, s, num, b, nul, rc;
    if ((rc = new_node(c, JG_UNION, &u)) || (rc = reserve_alts(c, u, 6)))
        return rc;
    c->any = u;
    if ((rc = new_node(c, JG_OBJECT, &o)) || (rc = new_node(c, JG_ARRAY, &a)) ||
        (rc = new_node(c, JG_STRING, &s)) || (rc = new_node(c, JG_NUMBER, &num)) ||
        (rc = fixed_enum(c, jg_bools, 2, &b)) || (rc = fixed_enum(c, jg_null, 1, &nul)))
        return rc;
    json_grammar *g = c->g;
    g->nodes[o].child = u;
    g->nodes[a].child = u;
    int *alt = g->alts + g->nodes[u].first;
    alt[0] = o, alt[1] = a, alt[2] = s, alt[3] = num, alt[4] = b, alt[5] = nul;
    *out = u;
    return RT_OK;
}

/* A non-negative integer keyword (minItems, maxLength, ...) into *out;
 * absent leaves *out as it is. */
static int count_keyword(jg_ctx *c, const cJSON *s, const char *kw, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, kw);
    if (!v)
        return RT_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return fail(c, RT_ERR_INVALID, "'%s' must be a non-negative integer", kw);
    if (v->valuedouble > (double)JG_MAX_COUNT)
        return fail(c, RT_ERR_TOO_LARGE, "'%s' over %lld", kw, (long long)JG_MAX_COUNT);
    *out = (int64_t)v->valuedouble;
    return RT_OK;
}

/* A key as cJSON serializes it, without the quotes; caller frees. */
static char *canonical_key(const char *name)
{
    cJSON *str = cJSON_CreateString(name);
    char *p = str ? cJSON_PrintUnformatted(str) : NULL;
    cJSON_Delete(str);
    if (!p)
        return NULL;
    size_t n = strlen(p);
    memmove(p, p + 1, n - 2);
    p[n - 2] = '\0';
    return p;
}

static int find_prop(const json_grammar *g, const jg_node *n, const char *key)
{
    for (int i = 0; i < n->count; i++)
        if (strcmp(g->props[n->first + i].name, key) == 0)
            return i;
    return -1;
}

/* The properties of object node o, compiled in order. */
static int compile_properties(jg_ctx *c, int o, const cJSON *props)
{
    json_grammar *g = c->g;
    int count = cJSON_GetArraySize(props), rc;
    if (count > JG_MAX_PROPS)
        return fail(c, RT_ERR_TOO_LARGE, "more than %d properties", JG_MAX_PROPS);
    if (grow((void **)&g->props, &g->cap_props, g->n_props, count, sizeof *g->props))
        return RT_ERR_NOMEM;
    g->nodes[o].first = g->n_props;
    g->n_props += count;
    int i = 0;
    for (const cJSON *p = props->child; p; p = p->next, i++) {
        jg_prop *pr = &g->props[g->nodes[o].first + i];
        pr->name = canonical_key(p->string);
        pr->node = -1;
        g->nodes[o].count = i + 1;     /* freed with the grammar from now on */
        if (!pr->name)
            return RT_ERR_NOMEM;
        pr->len = strlen(pr->name);
        if (pr->len + 1 > g->key_max)
            g->key_max = (uint32_t)pr->len + 1;
        if (find_prop(g, &g->nodes[o], pr->name) != i)
            return fail(c, RT_ERR_INVALID, "property '%s' given twice", p->string);
        size_t old = path_push(c, "properties", 0);
        path_push(c, p->string, 0);
        int v;
        rc = compile_schema(c, p, &v);
        path_pop(c, old);
        if (rc)
            return rc;
        g->props[g->nodes[o].first + i].node = v;
    }
    return RT_OK;
}

static int compile_required(jg_ctx *c, int o, const cJSON *req)
{
    size_t old = path_push(c, "required", 0);
    if (!cJSON_IsArray(req))
        return fail(c, RT_ERR_INVALID, "'required' must be an array of strings");
    for (const cJSON *r = req->child; r; r = r->next) {
        if (!cJSON_IsString(r))
            return fail(c, RT_ERR_INVALID, "'required' must be an array of strings");
        char *key = canonical_key(r->valuestring);
        if (!key)
            return RT_ERR_NOMEM;
        int i = find_prop(c->g, &c->g->nodes[o], key);
        free(key);
        if (i < 0)
            return fail(c, RT_ERR_UNSUPPORTED, "required key '%s' is not in 'properties'", r->valuestring);
        c->g->nodes[o].required |= (uint64_t)1 << i;
    }
    path_pop(c, old);
    return RT_OK;
}

static int compile_object(jg_ctx *c, const cJSON *s, int *out)
{
    int o, rc = new_node(c, JG_OBJECT, &o);
    if (rc)
        return rc;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return fail(c, RT_ERR_INVALID, "'properties' must be an object");
    if (props && (rc = compile_properties(c, o, props)))
        return rc;
    if (req && (rc = compile_required(c, o, req)))
        return rc;
    int extra = -1;
    if ((!add && !props) || cJSON_IsTrue(add)) {
        rc = any_node(c, &extra);
    } else if (add && cJSON_IsObject(add)) {
        size_t old = path_push(c, "additionalProperties", 0);
        rc = compile_schema(c, add, &extra);
        if (!rc)
            path_pop(c, old);
    } else if (add && !cJSON_IsFalse(add)) {
        rc = fail(c, RT_ERR_INVALID, "'additionalProperties' must be a boolean or a schema");
    }
    if (rc)
        return rc;
    c->g->nodes[o].child = extra;
    *out = o;
    return RT_OK;
}

static int compile_array(jg_ctx *c, const cJSON *s, int *out)
{
    int a, rc = new_node(c, JG_ARRAY, &a);
    if (rc)
        return rc;
    int64_t min = 0, max = -1;
    if ((rc = count_keyword(c, s, "minItems", &min)) || (rc = count_keyword(c, s, "maxItems", &max)))
        return rc;
    if (max >= 0 && max < min)
        return fail(c, RT_ERR_INVALID, "'maxItems' below 'minItems'");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    int it;
    if (!items) {
        rc = any_node(c, &it);
    } else if (cJSON_IsArray(items)) {
        rc = fail(c, RT_ERR_UNSUPPORTED, "unsupported keyword 'items' as an array (tuple form)");
    } else {
        size_t old = path_push(c, "items", 0);
        rc = compile_schema(c, items, &it);
        if (!rc)
            path_pop(c, old);
    }
    if (rc)
        return rc;
    jg_node *n = &c->g->nodes[a];
    n->child = it, n->min = min, n->max = max;
    *out = a;
    return RT_OK;
}

static int compile_string(jg_ctx *c, const cJSON *s, int *out)
{
    int64_t min = 0, max = -1;
    int rc;
    if ((rc = count_keyword(c, s, "minLength", &min)) || (rc = count_keyword(c, s, "maxLength", &max)))
        return rc;
    if (max >= 0 && max < min)
        return fail(c, RT_ERR_INVALID, "'maxLength' below 'minLength'");
    int n;
    if ((rc = new_node(c, JG_STRING, &n)))
        return rc;
    c->g->nodes[n].min = min;
    c->g->nodes[n].max = max;
    *out = n;
    return RT_OK;
}

/* One node for the type name t (the schema's other keywords apply). */
static int compile_type(jg_ctx *c, const cJSON *s, const char *t, int *out)
{
    if (strcmp(t, "object") == 0)
        return compile_object(c, s, out);
    if (strcmp(t, "array") == 0)
        return compile_array(c, s, out);
    if (strcmp(t, "string") == 0)
        return compile_string(c, s, out);
    if (strcmp(t, "number") == 0)
        return new_node(c, JG_NUMBER, out);
    if (strcmp(t, "integer") == 0)
        return new_node(c, JG_INTEGER, out);
    if (strcmp(t, "boolean") == 0)
        return fixed_enum(c, jg_bools, 2, out);
    if (strcmp(t, "null") == 0)
        return fixed_enum(c, jg_null, 1, out);
    return fail(c, RT_ERR_INVALID, "unknown type '%s'", t);
}

static int compile_typed(jg_ctx *c, const cJSON *s, const cJSON *type, int *out)
{
    if (cJSON_IsString(type))
        return compile_type(c, s, type->valuestring, out);
    int n = cJSON_GetArraySize(type), u, rc;
    if (!cJSON_IsArray(type) || n == 0 || n > 7)
        return fail(c, RT_ERR_INVALID, "'type' must be a type name or a list of them");
    if ((rc = new_node(c, JG_UNION, &u)) || (rc = reserve_alts(c, u, n)))
        return rc;
    int i = 0;
    for (const cJSON *t = type->child; t; t = t->next, i++) {
        int v;
        if (!cJSON_IsString(t))
            return fail(c, RT_ERR_INVALID, "'type' must be a type name or a list of them");
        if ((rc = compile_type(c, s, t->valuestring, &v)))
            return rc;
        c->g->alts[c->g->nodes[u].first + i] = v;
    }
    *out = u;
    return RT_OK;
}

/* Whether value v is of one of the types in type (NULL: any). */
static int value_has_type(const cJSON *v, const cJSON *type)
{
    if (!type)
        return 1;
    for (const cJSON *t = cJSON_IsArray(type) ? type->child : type; t; t = cJSON_IsArray(type) ? t->next : NULL) {
        const char *n = cJSON_IsString(t) ? t->valuestring : "";
        if ((strcmp(n, "object") == 0 && cJSON_IsObject(v)) ||
            (strcmp(n, "array") == 0 && cJSON_IsArray(v)) ||
            (strcmp(n, "string") == 0 && cJSON_IsString(v)) ||
            (strcmp(n, "number") == 0 && cJSON_IsNumber(v)) ||
            (strcmp(n, "integer") == 0 && cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble)) ||
            (strcmp(n, "boolean") == 0 && cJSON_IsBool(v)) ||
            (strcmp(n, "null") == 0 && cJSON_IsNull(v)))
            return 1;
    }
    return 0;
}

/* enum or const: the printed values (of the schema's type, if given). */
static int compile_enum(jg_ctx *c, const cJSON *s, int *out)
{
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (en && cn)
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported keyword 'const' alongside 'enum'");
    if (en && (!cJSON_IsArray(en) || !en->child))
        return fail(c, RT_ERR_INVALID, "'enum' must be a non-empty array");
    if (cJSON_GetArraySize(en) > JG_MAX_ENUM)
        return fail(c, RT_ERR_TOO_LARGE, "'enum' with more than %d values", JG_MAX_ENUM);
    int e, rc = new_node(c, JG_ENUM, &e);
    if (rc)
        return rc;
    c->g->nodes[e].first = c->g->n_lits;
    for (const cJSON *v = en ? en->child : cn; v; v = en ? v->next : NULL) {
        if (!value_has_type(v, type))
            continue;
        char *p = cJSON_PrintUnformatted(v);
        if (!p)
            return RT_ERR_NOMEM;
        if ((rc = add_lit(c, p)))
            return rc;
        c->g->nodes[e].count++;
    }
    if (c->g->nodes[e].count == 0)
        return fail(c, RT_ERR_INVALID, "no '%s' value is of the schema's type", en ? "enum" : "const");
    finish_enum(c->g, e);
    *out = e;
    return RT_OK;
}

static int compile_union(jg_ctx *c, const cJSON *s, int *out)
{
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    const char *kw = any ? "anyOf" : "oneOf";
    const cJSON *list = any ? any : one;
    if (any && one)
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported keyword 'oneOf' alongside 'anyOf'");
    int n = cJSON_GetArraySize(list), u, rc;
    if (!cJSON_IsArray(list) || n == 0)
        return fail(c, RT_ERR_INVALID, "'%s' must be a non-empty array", kw);
    if (n > 1024)
        return fail(c, RT_ERR_TOO_LARGE, "'%s' with more than 1024 schemas", kw);
    if ((rc = new_node(c, JG_UNION, &u)) || (rc = reserve_alts(c, u, n)))
        return rc;
    int i = 0;
    for (const cJSON *a = list->child; a; a = a->next, i++) {
        size_t old = path_push(c, kw, 0);
        path_push(c, NULL, i);
        int v;
        if ((rc = compile_schema(c, a, &v)))
            return rc;
        path_pop(c, old);
        c->g->alts[c->g->nodes[u].first + i] = v;
    }
    *out = u;
    return RT_OK;
}

/* The REF node standing for def (compiled on first use, under path). */
static int compile_def(jg_ctx *c, const cJSON *def, const char *path, int *out)
{
    for (int i = 0; i < c->n_defs; i++)
        if (c->defs[i].schema == def) {
            *out = c->defs[i].node;
            return RT_OK;
        }
    int r, rc = new_node(c, JG_REF, &r);
    if (rc)
        return rc;
    if (grow((void **)&c->defs, &c->cap_defs, c->n_defs, 1, sizeof *c->defs))
        return RT_ERR_NOMEM;
    c->defs[c->n_defs].schema = def;
    c->defs[c->n_defs].node = r;
    c->n_defs++;
    char saved[sizeof c->path];
    size_t saved_len = c->plen;
    memcpy(saved, c->path, sizeof saved);
    snprintf(c->path, sizeof c->path, "%s", path);
    c->plen = strlen(c->path);
    int v;
    if ((rc = compile_schema(c, def, &v)))
        return rc;
    memcpy(c->path, saved, sizeof saved);
    c->plen = saved_len;
    c->g->nodes[r].child = v;
    *out = r;
    return RT_OK;
}

/* "#", "#/$defs/NAME" or "#/definitions/NAME" (NAME JSON-pointer escaped). */
static int compile_ref(jg_ctx *c, const cJSON *ref, int *out)
{
    if (!cJSON_IsString(ref))
        return fail(c, RT_ERR_INVALID, "'$ref' must be a string");
    const char *r = ref->valuestring;
    if (strcmp(r, "#") == 0)
        return compile_def(c, c->root, "#", out);
    const char *group = strncmp(r, "#/$defs/", 8) == 0 ? "$defs"
                      : strncmp(r, "#/definitions/", 14) == 0 ? "definitions" : NULL;
    if (!group)
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported '$ref' \"%.100s\" (only #/$defs/... and #/definitions/...)", r);
    const char *src = r + strlen(group) + 3;
    char name[256];
    size_t k = 0;
    for (; *src && k + 1 < sizeof name; src++) {
        if (*src == '/')
            return fail(c, RT_ERR_UNSUPPORTED, "unsupported '$ref' \"%.100s\" (nested pointer)", r);
        if (*src == '~' && (src[1] == '0' || src[1] == '1')) {
            name[k++] = src[1] == '0' ? '~' : '/';
            src++;
        } else {
            name[k++] = *src;
        }
    }
    name[k] = '\0';
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(c->root, group);
    const cJSON *def = defs ? cJSON_GetObjectItemCaseSensitive(defs, name) : NULL;
    if (!def || *src)
        return fail(c, RT_ERR_INVALID, "unresolvable '$ref' \"%.100s\"", r);
    return compile_def(c, def, r, out);
}

/* Refuses unknown keywords and combinations the grammar cannot honour;
 * *families gets a bit per keyword family present. */
static int check_keywords(jg_ctx *c, const cJSON *s, unsigned *families)
{
    unsigned f = 0;
    for (const cJSON *k = s->child; k; k = k->next) {
        size_t i = 0, n = sizeof jg_keywords / sizeof jg_keywords[0];
        while (i < n && strcmp(jg_keywords[i].name, k->string) != 0)
            i++;
        if (i == n)
            return fail(c, RT_ERR_UNSUPPORTED, "unsupported keyword '%.100s'", k->string);
        f |= 1u << jg_keywords[i].family;
    }
    unsigned shape = (1u << KW_OBJ) | (1u << KW_ARR) | (1u << KW_STR);
    if ((f & (1u << KW_REF)) && (f & ~((1u << KW_REF) | (1u << KW_ANNOT))))
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported keywords alongside '$ref'");
    if ((f & (1u << KW_UNION)) && (f & (shape | (1u << KW_TYPE) | (1u << KW_ENUM))))
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported keywords alongside 'anyOf'/'oneOf'");
    if ((f & (1u << KW_ENUM)) && (f & shape))
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported keywords alongside 'enum'/'const'");
    *families = f;
    return RT_OK;
}

/* A schema without "type": its keywords name the type, or it is any value. */
static int compile_untyped(jg_ctx *c, const cJSON *s, unsigned f, int *out)
{
    unsigned shape = f & ((1u << KW_OBJ) | (1u << KW_ARR) | (1u << KW_STR));
    if (shape == (1u << KW_OBJ))
        return compile_object(c, s, out);
    if (shape == (1u << KW_ARR))
        return compile_array(c, s, out);
    if (shape == (1u << KW_STR))
        return compile_string(c, s, out);
    if (shape)
        return fail(c, RT_ERR_UNSUPPORTED, "keywords of several types without 'type'");
    return any_node(c, out);
}

static int compile_schema(jg_ctx *c, const cJSON *s, int *out)
{
    if (c->depth >= JG_MAX_SCHEMA_DEPTH)
        return fail(c, RT_ERR_TOO_LARGE, "schema nested deeper than %d", JG_MAX_SCHEMA_DEPTH);
    if (cJSON_IsTrue(s))
        return any_node(c, out);
    if (cJSON_IsFalse(s))
        return fail(c, RT_ERR_UNSUPPORTED, "unsupported schema 'false'");
    if (!cJSON_IsObject(s))
        return fail(c, RT_ERR_INVALID, "a schema must be an object");
    unsigned f = 0;
    int rc = check_keywords(c, s, &f);
    if (rc)
        return rc;
    c->depth++;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (f & (1u << KW_REF))
        rc = compile_ref(c, cJSON_GetObjectItemCaseSensitive(s, "$ref"), out);
    else if (f & (1u << KW_UNION))
        rc = compile_union(c, s, out);
    else if (f & (1u << KW_ENUM))
        rc = compile_enum(c, s, out);
    else if (type)
        rc = compile_typed(c, s, type, out);
    else
        rc = compile_untyped(c, s, f, out);
    c->depth--;
    return rc;
}

/* Points every REF straight at its final node; a cycle of REFs alone
 * (a $ref to itself) matches nothing. */
static int resolve_refs(jg_ctx *c)
{
    json_grammar *g = c->g;
    for (int i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].kind != JG_REF)
            continue;
        int t = g->nodes[i].child, steps = 0;
        while (g->nodes[t].kind == JG_REF && steps++ <= g->n_nodes)
            t = g->nodes[t].child;
        if (g->nodes[t].kind == JG_REF)
            return fail(c, RT_ERR_INVALID, "'$ref' cycle that matches nothing");
        g->nodes[i].child = t;
    }
    return RT_OK;
}

/* Flattens union u into the concrete nodes it may be (nested unions and
 * refs expanded, duplicates and cycles dropped). mark: n_nodes ints. */
static int flatten_union(jg_ctx *c, int u, int *mark, int *todo)
{
    json_grammar *g = c->g;
    int top = 0;
    g->nodes[u].ffirst = g->n_flat;
    g->nodes[u].fcount = 0;
    mark[u] = u + 1;
    todo[top++] = u;
    while (top) {
        const jg_node *n = &g->nodes[todo[--top]];
        for (int i = n->count - 1; i >= 0; i--) {
            int a = jg_final(g, g->alts[n->first + i]);
            if (mark[a] == u + 1)
                continue;
            mark[a] = u + 1;
            if (g->nodes[a].kind == JG_UNION) {
                todo[top++] = a;
                continue;
            }
            if (g->nodes[u].fcount >= JG_MAX_ALTS)
                return fail(c, RT_ERR_TOO_LARGE, "more than %d alternatives in a union", JG_MAX_ALTS);
            if (grow((void **)&g->flat, &g->cap_flat, g->n_flat, 1, sizeof *g->flat))
                return RT_ERR_NOMEM;
            g->flat[g->n_flat++] = a;
            g->nodes[u].fcount++;
        }
    }
    return RT_OK;
}

static int flatten_unions(jg_ctx *c)
{
    json_grammar *g = c->g;
    int *mark = calloc((size_t)g->n_nodes, sizeof *mark);
    int *todo = malloc((size_t)g->n_nodes * sizeof *todo);
    int rc = mark && todo ? RT_OK : RT_ERR_NOMEM;
    for (int i = 0; !rc && i < g->n_nodes; i++)
        if (g->nodes[i].kind == JG_UNION)
            rc = flatten_union(c, i, mark, todo);
    free(mark);
    free(todo);
    return rc;
}

/* The mind of node n from its children's current minds. */
static int node_mind(const json_grammar *g, const jg_node *n)
{
    int m = 1;
    switch (n->kind) {
    case JG_OBJECT:
        for (int i = 0; i < n->count; i++)
            if (n->required >> i & 1) {
                int v = g->nodes[g->props[n->first + i].node].mind;
                m = v + 1 > m ? v + 1 : m;
            }
        break;
    case JG_ARRAY:
        m = n->min ? 1 + g->nodes[n->child].mind : 1;
        break;
    case JG_UNION:
        m = JG_INF;
        for (int i = 0; i < n->fcount; i++) {
            int v = g->nodes[g->flat[n->ffirst + i]].mind;
            m = v < m ? v : m;
        }
        break;
    case JG_REF:
        m = g->nodes[n->child].mind;
        break;
    default:
        break;
    }
    return m > JG_MAX_DEPTH ? JG_INF : m;
}

/* Fixpoint of mind: finite minds are at most JG_MAX_DEPTH and each pass
 * settles at least one more level, so a bounded number of passes does. */
static void compute_minds(json_grammar *g)
{
    for (int pass = 0; pass < 4 * (JG_MAX_DEPTH + 2); pass++) {
        int changed = 0;
        for (int i = 0; i < g->n_nodes; i++) {
            int m = node_mind(g, &g->nodes[i]);
            if (m != g->nodes[i].mind) {
                g->nodes[i].mind = m;
                changed = 1;
            }
        }
        if (!changed)
            return;
    }
}

/* Per object and frame index: the properties whose value still fits. */
static int compute_fits(json_grammar *g)
{
    int n_obj = 0;
    for (int i = 0; i < g->n_nodes; i++)
        n_obj += g->nodes[i].kind == JG_OBJECT;
    g->fitmask = calloc((size_t)n_obj * JG_MAX_DEPTH + 1, sizeof *g->fitmask);
    if (!g->fitmask)
        return RT_ERR_NOMEM;
    for (int i = 0; i < g->n_nodes; i++) {
        jg_node *n = &g->nodes[i];
        if (n->kind != JG_OBJECT)
            continue;
        n->fit = g->n_fit;
        for (int d = 0; d < JG_MAX_DEPTH; d++)
            for (int p = 0; p < n->count; p++)
                if (d + 1 + g->nodes[g->props[n->first + p].node].mind <= JG_MAX_DEPTH)
                    g->fitmask[n->fit + d] |= (uint64_t)1 << p;
        g->n_fit += JG_MAX_DEPTH;
    }
    return RT_OK;
}

static int compile_root(jg_ctx *c, const cJSON *schema)
{
    int rc;
    if (!schema) {
        int any;
        if ((rc = any_node(c, &any)))
            return rc;
        c->g->root = c->g->alts[c->g->nodes[any].first];    /* its object */
    } else if ((rc = compile_def(c, schema, "#", &c->g->root))) {
        return rc;
    }
    if ((rc = resolve_refs(c)) || (rc = flatten_unions(c)))
        return rc;
    compute_minds(c->g);
    c->plen = 0;
    if (c->g->nodes[c->g->root].mind > JG_MAX_DEPTH)
        return fail(c, RT_ERR_INVALID, "schema has no instance within %d levels of nesting "
                    "(a recursive '$ref' without a base case?)", JG_MAX_DEPTH);
    return compute_fits(c->g);
}

int json_grammar_compile(const cJSON *schema, json_grammar **out, char *err, size_t errsize)
{
    if (!out)
        return RT_ERR_INVALID;
    jg_ctx c = {.root = schema, .err = err, .errsize = errsize, .any = -1};
    c.g = calloc(1, sizeof *c.g);
    if (!c.g)
        return RT_ERR_NOMEM;
    c.g->key_max = JG_FREE_KEY_MAX;
    int rc = compile_root(&c, schema);
    free(c.defs);
    if (rc) {
        if (rc == RT_ERR_NOMEM && err && errsize)
            snprintf(err, errsize, "out of memory compiling the schema");
        json_grammar_free(c.g);
        return rc;
    }
    *out = c.g;
    return RT_OK;
}

void json_grammar_free(json_grammar *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_nodes; i++) {
        const jg_node *n = &g->nodes[i];
        if (n->kind == JG_OBJECT)
            for (int p = 0; p < n->count; p++)
                free(g->props[n->first + p].name);
    }
    for (int i = 0; i < g->n_lits; i++)
        free(g->lits[i].s);
    free(g->nodes);
    free(g->props);
    free(g->lits);
    free(g->alts);
    free(g->flat);
    free(g->fitmask);
    free(g);
}
