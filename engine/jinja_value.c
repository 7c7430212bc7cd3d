/*
 * engine/jinja_value.c — the values of the Jinja interpreter: an arena that
 * holds them, lists and ordered dicts, Python's truthiness, equality and
 * ordering, and the text of values as Python's str(), repr() and
 * json.dumps(ensure_ascii=False) write it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rt.h"
#include "engine/jinja_int.h"

/* ---------------------------------------------------------------- arena */

struct ja_block {
    ja_block *next;
    size_t size, used;
    max_align_t data[];
};

#define JA_BLOCK ((size_t)64 << 10)

void *ja_alloc(jarena *a, size_t n)
{
    size_t limit = a->limit ? a->limit : JINJA_MAX_ARENA;
    n = (n + 15) & ~(size_t)15;
    if (a->over || n > limit)
        goto fail;
    ja_block *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t size = n > JA_BLOCK / 4 ? n : JA_BLOCK;
        if (a->total + size > limit)
            goto fail;
        b = malloc(sizeof(*b) + size);
        if (!b)
            goto fail;
        b->size = size;
        b->used = 0;
        if (a->head && size != JA_BLOCK) { /* keep the partly used block on top */
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = a->head;
            a->head = b;
        }
        a->total += size;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
fail:
    a->over = 1;
    return NULL;
}

char *ja_strdup(jarena *a, const char *s, size_t n)
{
    char *p = ja_alloc(a, n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

void ja_free(jarena *a)
{
    ja_block *b = a->head;
    while (b) {
        ja_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---------------------------------------------------------------- constructors */

jv jv_undef(const char *hint)
{
    jv v = { .type = JV_UNDEF };
    v.u.str.s = hint;
    v.u.str.n = hint ? strlen(hint) : 0;
    return v;
}
jv jv_none(void) { jv v = { .type = JV_NONE }; return v; }
jv jv_bool(int b) { jv v = { .type = JV_BOOL }; v.u.b = !!b; return v; }
jv jv_int(int64_t i) { jv v = { .type = JV_INT }; v.u.i = i; return v; }
jv jv_float(double f) { jv v = { .type = JV_FLOAT }; v.u.f = f; return v; }
jv jv_str(const char *s, size_t n)
{
    jv v = { .type = JV_STR };
    v.u.str.s = s ? s : "";
    v.u.str.n = n;
    return v;
}

jlist *jl_new(jarena *a, size_t cap)
{
    jlist *l = ja_alloc(a, sizeof(*l));
    if (!l)
        return NULL;
    if (cap) {
        l->items = ja_alloc(a, cap * sizeof(jv));
        if (!l->items)
            return NULL;
        l->cap = cap;
    }
    return l;
}

int jl_push(jarena *a, jlist *l, jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        jv *items = ja_alloc(a, cap * sizeof(jv));
        if (!items)
            return RT_ERR_TOO_LARGE;
        if (l->n)
            memcpy(items, l->items, l->n * sizeof(jv));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = v;
    return RT_OK;
}

jdict *jd_new(jarena *a, size_t cap)
{
    jdict *d = ja_alloc(a, sizeof(*d));
    if (!d)
        return NULL;
    if (cap) {
        d->keys = ja_alloc(a, cap * sizeof(jv));
        d->vals = ja_alloc(a, cap * sizeof(jv));
        if (!d->keys || !d->vals)
            return NULL;
        d->cap = cap;
    }
    return d;
}

const jv *jd_getv(const jdict *d, jv key)
{
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->keys[i], key))
            return &d->vals[i];
    return NULL;
}

const jv *jd_get(const jdict *d, const char *key, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].type == JV_STR && d->keys[i].u.str.n == n &&
            memcmp(d->keys[i].u.str.s, key, n) == 0)
            return &d->vals[i];
    return NULL;
}

int jd_set(jarena *a, jdict *d, jv key, jv val)
{
    const jv *old = jd_getv(d, key);
    if (old) {
        *(jv *)old = val;
        return RT_OK;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *keys = ja_alloc(a, cap * sizeof(jv));
        jv *vals = ja_alloc(a, cap * sizeof(jv));
        if (!keys || !vals)
            return RT_ERR_TOO_LARGE;
        if (d->n) {
            memcpy(keys, d->keys, d->n * sizeof(jv));
            memcpy(vals, d->vals, d->n * sizeof(jv));
        }
        d->keys = keys;
        d->vals = vals;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
    return RT_OK;
}

/* ---------------------------------------------------------------- semantics */

int jv_truthy(jv v)
{
    switch (v.type) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.str.n != 0;
    case JV_LIST: return v.u.list->n != 0;
    case JV_DICT: return v.u.dict->n != 0;
    default: return 1;
    }
}

static int jv_is_num(jv v) { return v.type == JV_BOOL || v.type == JV_INT || v.type == JV_FLOAT; }
static double jv_num(jv v)
{
    return v.type == JV_FLOAT ? v.u.f : v.type == JV_INT ? (double)v.u.i : (double)v.u.b;
}

int jv_equal(jv a, jv b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.type != JV_FLOAT && b.type != JV_FLOAT) {
            int64_t x = a.type == JV_INT ? a.u.i : a.u.b, y = b.type == JV_INT ? b.u.i : b.u.b;
            return x == y;
        }
        return jv_num(a) == jv_num(b);
    }
    if (a.type != b.type)
        return 0;
    switch (a.type) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR:
        return a.u.str.n == b.u.str.n && memcmp(a.u.str.s, b.u.str.s, a.u.str.n) == 0;
    case JV_LIST:
        if (a.u.list->n != b.u.list->n || a.tuple != b.tuple)
            return 0;
        for (size_t i = 0; i < a.u.list->n; i++)
            if (!jv_equal(a.u.list->items[i], b.u.list->items[i]))
                return 0;
        return 1;
    case JV_DICT:
        if (a.u.dict->n != b.u.dict->n)
            return 0;
        for (size_t i = 0; i < a.u.dict->n; i++) {
            const jv *o = jd_getv(b.u.dict, a.u.dict->keys[i]);
            if (!o || !jv_equal(a.u.dict->vals[i], *o))
                return 0;
        }
        return 1;
    case JV_NS: return a.u.dict == b.u.dict;
    case JV_MACRO: return a.u.macro == b.u.macro;
    case JV_LOOP: return a.u.loop == b.u.loop;
    case JV_FUNC: return a.fn == b.fn && a.self == b.self;
    default: return 0;
    }
}

int jv_compare(jv a, jv b, int *cmp)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.type != JV_FLOAT && b.type != JV_FLOAT) {
            int64_t x = a.type == JV_INT ? a.u.i : a.u.b, y = b.type == JV_INT ? b.u.i : b.u.b;
            *cmp = x < y ? -1 : x > y;
        } else {
            double x = jv_num(a), y = jv_num(b);
            *cmp = x < y ? -1 : x > y;
        }
        return RT_OK;
    }
    if (a.type == JV_STR && b.type == JV_STR) {
        size_t n = a.u.str.n < b.u.str.n ? a.u.str.n : b.u.str.n;
        int c = memcmp(a.u.str.s, b.u.str.s, n); /* UTF-8 byte order = code point order */
        *cmp = c ? (c < 0 ? -1 : 1) : (a.u.str.n < b.u.str.n ? -1 : a.u.str.n > b.u.str.n);
        return RT_OK;
    }
    if (a.type == JV_LIST && b.type == JV_LIST) {
        size_t n = a.u.list->n < b.u.list->n ? a.u.list->n : b.u.list->n;
        for (size_t i = 0; i < n; i++) {
            if (jv_equal(a.u.list->items[i], b.u.list->items[i]))
                continue;
            return jv_compare(a.u.list->items[i], b.u.list->items[i], cmp);
        }
        *cmp = a.u.list->n < b.u.list->n ? -1 : a.u.list->n > b.u.list->n;
        return RT_OK;
    }
    return RT_ERR_FORMAT;
}

const char *jv_type_name(jv v)
{
    switch (v.type) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_MACRO: return "Macro";
    case JV_LOOP: return "LoopContext";
    default: return "builtin_function_or_method";
    }
}

/* ---------------------------------------------------------------- UTF-8 */

uint32_t ju_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    size_t left = n - *i;
    uint32_t c = p[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (len > left)
        len = 1;
    if (len == 1) {
        *i += 1;
        return c;
    }
    uint32_t cp = c & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xc0) != 0x80) {
            *i += 1;
            return c;
        }
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    *i += len;
    return cp;
}

size_t ju_count(const char *s, size_t n)
{
    size_t i = 0, count = 0;
    while (i < n) {
        ju_next(s, n, &i);
        count++;
    }
    return count;
}

int ju_isspace(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

size_t ju_encode(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xc0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3f)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        o[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3f)); o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* ---------------------------------------------------------------- buffers */

int jb_put(jbuf *b, const char *s, size_t n)
{
    size_t limit = b->limit ? b->limit : JINJA_MAX_OUTPUT;
    if (b->over)
        return b->over == 1 ? RT_ERR_TOO_LARGE : RT_ERR_NOMEM;
    if (n > limit - b->n) {
        b->over = 1;
        return RT_ERR_TOO_LARGE;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->over = 2;
            return RT_ERR_NOMEM;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return RT_OK;
}

int jb_putc(jbuf *b, char c) { return jb_put(b, &c, 1); }

void jb_free(jbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static int jb_puts(jbuf *b, const char *s) { return jb_put(b, s, strlen(s)); }

/* ---------------------------------------------------------------- text of values */

/* repr(float) of Python: the shortest text that reads back the same, with
 * ".0" for integral values and exponent form outside [1e-4, 1e16). */
int jv_write_float(jbuf *b, double f)
{
    char tmp[64], out[80];
    if (isnan(f))
        return jb_puts(b, "nan");
    if (isinf(f))
        return jb_puts(b, f < 0 ? "-inf" : "inf");
    if (f == 0.0)
        return jb_puts(b, signbit(f) ? "-0.0" : "0.0");
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    /* tmp = [-]d.ddde[+-]XX: split digits and exponent */
    char digits[32];
    size_t nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp = atoi(p + 1);
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp >= -5 && exp < 16) { /* Python's repr switches at 1e16 and below 1e-4 */
        if (exp < -4)
            goto sci;
        if (exp < 0) {
            out[o++] = '0'; out[o++] = '.';
            for (int k = 0; k < -exp - 1; k++) out[o++] = '0';
            for (size_t k = 0; k < nd; k++) out[o++] = digits[k];
        } else {
            for (int k = 0; k <= exp; k++) out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)exp + 1 < nd)
                for (size_t k = (size_t)exp + 1; k < nd; k++) out[o++] = digits[k];
            else
                out[o++] = '0';
        }
        return jb_put(b, out, o);
    }
sci:
    out[o++] = digits[0];
    if (nd > 1) {
        out[o++] = '.';
        for (size_t k = 1; k < nd; k++) out[o++] = digits[k];
    }
    o += (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return jb_put(b, out, o);
}

static int write_int(jbuf *b, int64_t i)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)i);
    return jb_put(b, tmp, (size_t)n);
}

/* repr(str): quotes as Python picks them, escapes for the quote, backslash
 * and non-printable characters. */
static int write_str_repr(jbuf *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    int rc = jb_putc(b, q);
    size_t i = 0;
    while (i < n && rc == RT_OK) {
        size_t start = i;
        uint32_t c = ju_next(s, n, &i);
        char tmp[16];
        if (c == (uint32_t)q || c == '\\') {
            tmp[0] = '\\'; tmp[1] = (char)c;
            rc = jb_put(b, tmp, 2);
        } else if (c == '\n') rc = jb_put(b, "\\n", 2);
        else if (c == '\r') rc = jb_put(b, "\\r", 2);
        else if (c == '\t') rc = jb_put(b, "\\t", 2);
        else if (c < 0x20 || (c >= 0x7f && c < 0xa0)) {
            snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned)c);
            rc = jb_put(b, tmp, 4);
        } else
            rc = jb_put(b, s + start, i - start);
    }
    return rc ? rc : jb_putc(b, q);
}

int jv_write_repr(jbuf *b, jv v)
{
    int rc = RT_OK;
    switch (v.type) {
    case JV_STR:
        return write_str_repr(b, v.u.str.s, v.u.str.n);
    case JV_LIST: {
        const jlist *l = v.u.list;
        rc = jb_putc(b, v.tuple ? '(' : '[');
        for (size_t i = 0; i < l->n && rc == RT_OK; i++) {
            if (i)
                rc = jb_put(b, ", ", 2);
            if (rc == RT_OK)
                rc = jv_write_repr(b, l->items[i]);
        }
        if (rc == RT_OK && v.tuple && l->n == 1)
            rc = jb_putc(b, ',');
        return rc ? rc : jb_putc(b, v.tuple ? ')' : ']');
    }
    case JV_DICT: case JV_NS: {
        const jdict *d = v.u.dict;
        if (v.type == JV_NS)
            rc = jb_puts(b, "<Namespace ");
        if (rc == RT_OK)
            rc = jb_putc(b, '{');
        for (size_t i = 0; i < d->n && rc == RT_OK; i++) {
            if (i)
                rc = jb_put(b, ", ", 2);
            if (rc == RT_OK)
                rc = jv_write_repr(b, d->keys[i]);
            if (rc == RT_OK)
                rc = jb_put(b, ": ", 2);
            if (rc == RT_OK)
                rc = jv_write_repr(b, d->vals[i]);
        }
        if (rc == RT_OK)
            rc = jb_putc(b, '}');
        return rc == RT_OK && v.type == JV_NS ? jb_putc(b, '>') : rc;
    }
    default:
        return jv_write_str(b, v);
    }
}

int jv_write_str(jbuf *b, jv v)
{
    switch (v.type) {
    case JV_UNDEF: return RT_OK;
    case JV_NONE: return jb_puts(b, "None");
    case JV_BOOL: return jb_puts(b, v.u.b ? "True" : "False");
    case JV_INT: return write_int(b, v.u.i);
    case JV_FLOAT: return jv_write_float(b, v.u.f);
    case JV_STR: return jb_put(b, v.u.str.s, v.u.str.n);
    case JV_LIST: case JV_DICT: case JV_NS: return jv_write_repr(b, v);
    case JV_MACRO: return jb_puts(b, "<Macro>");
    case JV_LOOP: return jb_puts(b, "<LoopContext>");
    default: return jb_puts(b, "<built-in method>");
    }
}

int jv_to_str(jarena *a, jv v, jv *out)
{
    if (v.type == JV_STR) {
        *out = v;
        return RT_OK;
    }
    jbuf b = { 0 };
    int rc = jv_write_str(&b, v);
    if (rc == RT_OK) {
        char *s = ja_strdup(a, b.p ? b.p : "", b.n);
        if (!s)
            rc = RT_ERR_TOO_LARGE;
        else
            *out = jv_str(s, b.n);
    }
    jb_free(&b);
    return rc;
}

/* ---------------------------------------------------------------- JSON */

static int write_json_str(jbuf *b, const char *s, size_t n)
{
    int rc = jb_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n && rc == RT_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                esc = tmp;
            }
        }
        if (!esc)
            continue;
        rc = jb_put(b, s + run, i - run);
        if (rc == RT_OK)
            rc = jb_puts(b, esc);
        run = i + 1;
    }
    if (rc == RT_OK)
        rc = jb_put(b, s + run, n - run);
    return rc ? rc : jb_putc(b, '"');
}

static int json_newline(jbuf *b, int indent, int depth)
{
    int rc = jb_putc(b, '\n');
    for (int i = 0; i < indent * depth && rc == RT_OK; i++)
        rc = jb_putc(b, ' ');
    return rc;
}

/* Python json.dumps writes dict keys that are not strings as strings. */
static int write_json_key(jbuf *b, jv k)
{
    if (k.type == JV_STR)
        return write_json_str(b, k.u.str.s, k.u.str.n);
    if (k.type == JV_NONE)
        return jb_puts(b, "\"null\"");
    if (k.type == JV_BOOL)
        return jb_puts(b, k.u.b ? "\"true\"" : "\"false\"");
    if (k.type != JV_INT && k.type != JV_FLOAT)
        return RT_ERR_FORMAT;
    int rc = jb_putc(b, '"');
    if (rc == RT_OK)
        rc = jv_write_str(b, k);
    return rc ? rc : jb_putc(b, '"');
}

static int cmp_keys(jv a, jv b)
{
    int c = 0;
    return jv_compare(a, b, &c) == RT_OK ? c : 0;
}

static int write_json_dict(jbuf *b, const jdict *d, int indent, const char *isep,
                           const char *ksep, int sort_keys, int depth)
{
    if (d->n == 0)
        return jb_puts(b, "{}");
    size_t order[d->n > 0 ? d->n : 1];
    for (size_t i = 0; i < d->n; i++)
        order[i] = i;
    if (sort_keys) /* insertion sort: stable, dicts are small */
        for (size_t i = 1; i < d->n; i++)
            for (size_t j = i; j > 0 && cmp_keys(d->keys[order[j - 1]], d->keys[order[j]]) > 0; j--) {
                size_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
            }
    int rc = jb_putc(b, '{');
    for (size_t k = 0; k < d->n && rc == RT_OK; k++) {
        size_t i = order[k];
        if (k)
            rc = jb_puts(b, isep);
        if (rc == RT_OK && indent >= 0)
            rc = json_newline(b, indent, depth + 1);
        if (rc == RT_OK)
            rc = write_json_key(b, d->keys[i]);
        if (rc == RT_OK)
            rc = jb_puts(b, ksep);
        if (rc == RT_OK)
            rc = jv_write_json(b, d->vals[i], indent, isep, ksep, sort_keys, depth + 1);
    }
    if (rc == RT_OK && indent >= 0)
        rc = json_newline(b, indent, depth);
    return rc ? rc : jb_putc(b, '}');
}

int jv_write_json(jbuf *b, jv v, int indent, const char *isep, const char *ksep,
                  int sort_keys, int depth)
{
    if (depth > 100)
        return RT_ERR_TOO_LARGE;
    switch (v.type) {
    case JV_NONE: return jb_puts(b, "null");
    case JV_BOOL: return jb_puts(b, v.u.b ? "true" : "false");
    case JV_INT: return write_int(b, v.u.i);
    case JV_FLOAT:
        if (isnan(v.u.f))
            return jb_puts(b, "NaN");
        if (isinf(v.u.f))
            return jb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        return jv_write_float(b, v.u.f);
    case JV_STR: return write_json_str(b, v.u.str.s, v.u.str.n);
    case JV_LIST: {
        const jlist *l = v.u.list;
        if (l->n == 0)
            return jb_puts(b, "[]");
        int rc = jb_putc(b, '[');
        for (size_t i = 0; i < l->n && rc == RT_OK; i++) {
            if (i)
                rc = jb_puts(b, isep);
            if (rc == RT_OK && indent >= 0)
                rc = json_newline(b, indent, depth + 1);
            if (rc == RT_OK)
                rc = jv_write_json(b, l->items[i], indent, isep, ksep, sort_keys, depth + 1);
        }
        if (rc == RT_OK && indent >= 0)
            rc = json_newline(b, indent, depth);
        return rc ? rc : jb_putc(b, ']');
    }
    case JV_DICT:
        return write_json_dict(b, v.u.dict, indent, isep, ksep, sort_keys, depth);
    default:
        return RT_ERR_FORMAT;
    }
}

/* ---------------------------------------------------------------- from cJSON */

/* JSON numbers that are integral and fit int64 become ints (as Python's json
 * reads "3"); others floats. cJSON keeps no trace of "3.0" vs "3". */
int jv_from_json(jarena *a, const cJSON *j, jv *out, int depth)
{
    if (depth > 200)
        return RT_ERR_TOO_LARGE;
    if (cJSON_IsNull(j)) { *out = jv_none(); return RT_OK; }
    if (cJSON_IsBool(j)) { *out = jv_bool(cJSON_IsTrue(j)); return RT_OK; }
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.0e15)
            *out = jv_int((int64_t)d);
        else
            *out = jv_float(d);
        return RT_OK;
    }
    if (cJSON_IsString(j)) {
        const char *s = j->valuestring ? j->valuestring : "";
        *out = jv_str(s, strlen(s));
        return RT_OK;
    }
    if (cJSON_IsArray(j)) {
        jlist *l = jl_new(a, (size_t)cJSON_GetArraySize(j));
        if (!l)
            return RT_ERR_TOO_LARGE;
        for (const cJSON *c = j->child; c; c = c->next) {
            jv v;
            int rc = jv_from_json(a, c, &v, depth + 1);
            if (rc == RT_OK)
                rc = jl_push(a, l, v);
            if (rc)
                return rc;
        }
        *out = (jv){ .type = JV_LIST, .u.list = l };
        return RT_OK;
    }
    if (cJSON_IsObject(j)) {
        jdict *d = jd_new(a, (size_t)cJSON_GetArraySize(j));
        if (!d)
            return RT_ERR_TOO_LARGE;
        for (const cJSON *c = j->child; c; c = c->next) {
            jv v;
            const char *k = c->string ? c->string : "";
            int rc = jv_from_json(a, c, &v, depth + 1);
            if (rc == RT_OK)
                rc = jd_set(a, d, jv_str(k, strlen(k)), v);
            if (rc)
                return rc;
        }
        *out = (jv){ .type = JV_DICT, .u.dict = d };
        return RT_OK;
    }
    *out = jv_none();
    return RT_OK;
}
