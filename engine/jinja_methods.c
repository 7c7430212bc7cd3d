/*
 * engine/jinja_methods.c — the callables of the Jinja interpreter: the
 * globals transformers' templates see (range, namespace, dict,
 * raise_exception, strftime_now), loop.cycle, and the Python methods of
 * str, dict and list that the sandbox allows (mutating ones are refused
 * there, in jinja_getattr). Strings are UTF-8; indices count code points.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "common/rt.h"
#include "engine/jinja_int.h"

const jv *jinja_arg(const jv *args, size_t nargs, const char **kwnames, const jv *kwvals,
                    size_t nkw, size_t i, const char *name)
{
    if (i < nargs)
        return &args[i];
    for (size_t k = 0; name && k < nkw; k++)
        if (strcmp(kwnames[k], name) == 0)
            return &kwvals[k];
    return NULL;
}


static jv list_value(jlist *l) { return (jv){ .type = JV_LIST, .u.list = l }; }

/* ---------------------------------------------------------------- method table */

enum mtype { M_STR = 1, M_DICT = 2, M_LIST = 4 };
static const struct { const char *name; int types; } METHODS[] = {
    { "strip", M_STR }, { "lstrip", M_STR }, { "rstrip", M_STR }, { "split", M_STR },
    { "rsplit", M_STR }, { "splitlines", M_STR }, { "startswith", M_STR }, { "endswith", M_STR },
    { "replace", M_STR }, { "upper", M_STR }, { "lower", M_STR }, { "title", M_STR },
    { "capitalize", M_STR }, { "find", M_STR }, { "rfind", M_STR }, { "count", M_STR | M_LIST },
    { "join", M_STR }, { "format", M_STR }, { "isdigit", M_STR }, { "isalpha", M_STR },
    { "isalnum", M_STR }, { "isspace", M_STR }, { "islower", M_STR }, { "isupper", M_STR },
    { "items", M_DICT }, { "keys", M_DICT }, { "values", M_DICT }, { "get", M_DICT },
    { "copy", M_DICT | M_LIST }, { "index", M_LIST | M_STR },
};
enum {
    MT_STRIP, MT_LSTRIP, MT_RSTRIP, MT_SPLIT, MT_RSPLIT, MT_SPLITLINES, MT_STARTSWITH, MT_ENDSWITH,
    MT_REPLACE, MT_UPPER, MT_LOWER, MT_TITLE, MT_CAPITALIZE, MT_FIND, MT_RFIND, MT_COUNT,
    MT_JOIN, MT_FORMAT, MT_ISDIGIT, MT_ISALPHA, MT_ISALNUM, MT_ISSPACE, MT_ISLOWER, MT_ISUPPER,
    MT_ITEMS, MT_KEYS, MT_VALUES, MT_GET, MT_COPY, MT_INDEX
};

int jinja_method_id(jv obj, const char *name, size_t n)
{
    int type = obj.type == JV_STR ? M_STR : obj.type == JV_DICT ? M_DICT : obj.type == JV_LIST ? M_LIST : 0;
    for (size_t k = 0; k < sizeof METHODS / sizeof METHODS[0]; k++)
        if ((METHODS[k].types & type) && strlen(METHODS[k].name) == n && memcmp(METHODS[k].name, name, n) == 0)
            return JF_METHOD_BASE + (int)k;
    return -1;
}

/* ---------------------------------------------------------------- string helpers */

static int in_chars(uint32_t c, const jv *chars)
{
    if (!chars || chars->type == JV_NONE)
        return ju_isspace(c);
    size_t i = 0;
    while (i < chars->u.str.n)
        if (ju_next(chars->u.str.s, chars->u.str.n, &i) == c)
            return 1;
    return 0;
}

/* str.strip/lstrip/rstrip: which = 1 left, 2 right, 3 both. */
int jinja_strip(jrender *r, jv s, const jv *chars, int which, jv *out);
int jinja_strip(jrender *r, jv s, const jv *chars, int which, jv *out)
{
    if (chars && chars->type != JV_NONE && chars->type != JV_STR)
        return jr_fail(r, RT_ERR_FORMAT, "strip arg must be None or str");
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, a = 0, b = n;
    if (which & 1)
        while (a < n) {
            size_t i = a;
            if (!in_chars(ju_next(p, n, &i), chars))
                break;
            a = i;
        }
    if (which & 2)
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)p[k] & 0xc0) == 0x80)
                k--;
            size_t i = k;
            if (!in_chars(ju_next(p, n, &i), chars))
                break;
            b = k;
        }
    *out = jv_str(p + a, b - a);
    return RT_OK;
}

/* Case mapping of a whole string: mode 0 lower, 1 upper, 2 title, 3 capitalize. */
int jinja_case(jrender *r, jv s, int mode, jv *out);
int jinja_case(jrender *r, jv s, int mode, jv *out)
{
    jbuf b = { 0 };
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0;
    int prev_cased = 0, first = 1;
    while (i < n) {
        uint32_t c = ju_next(p, n, &i);
        uint32_t m = c;
        int cat = utf8proc_category((utf8proc_int32_t)c);
        int cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        if (mode == 0)
            m = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
        else if (mode == 1)
            m = (uint32_t)utf8proc_toupper((utf8proc_int32_t)c);
        else if (mode == 2)
            m = (uint32_t)(prev_cased ? utf8proc_tolower((utf8proc_int32_t)c) : utf8proc_totitle((utf8proc_int32_t)c));
        else
            m = (uint32_t)(first ? utf8proc_totitle((utf8proc_int32_t)c) : utf8proc_tolower((utf8proc_int32_t)c));
        prev_cased = cased;
        first = 0;
        char tmp[4];
        jb_put(&b, tmp, ju_encode(m, tmp));
    }
    return jinja_buf_value(r, &b, out);
}

static size_t cp_index(const char *s, size_t byte)
{
    return ju_count(s, byte);
}

static const char *find_bytes(const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0)
        return h;
    return memmem(h, hn, n, nn);
}

static const char *rfind_bytes(const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn > hn)
        return NULL;
    for (size_t i = hn - nn + 1; i-- > 0;)
        if (memcmp(h + i, n, nn) == 0)
            return h + i;
    return NULL;
}

static int need_str(jrender *r, const jv *v, const char *what)
{
    if (!v || v->type != JV_STR)
        return jr_fail(r, RT_ERR_FORMAT, "%s must be a string, not %s", what, v ? jv_type_name(*v) : "nothing");
    return RT_OK;
}

/* str.split / str.rsplit with sep (NULL or None = runs of whitespace). */
static int str_split(jrender *r, jv s, const jv *sep, const jv *maxsplit, int from_right, jv *out)
{
    int64_t max = -1;
    if (maxsplit && maxsplit->type == JV_INT)
        max = maxsplit->u.i;
    jlist *l = jl_new(r->a, 0);
    if (!l)
        return NOMEM_R(r);
    const char *p = s.u.str.s;
    size_t n = s.u.str.n;
    if (sep && sep->type == JV_STR) {
        if (sep->u.str.n == 0)
            return jr_fail(r, RT_ERR_FORMAT, "empty separator");
        const char *q = sep->u.str.s;
        size_t qn = sep->u.str.n;
        if (from_right) {
            size_t end = n;
            jlist *rev = jl_new(r->a, 0);
            if (!rev)
                return NOMEM_R(r);
            while (max != 0) {
                const char *f = rfind_bytes(p, end, q, qn);
                if (!f)
                    break;
                size_t at = (size_t)(f - p);
                jl_push(r->a, rev, jv_str(p + at + qn, end - at - qn));
                end = at;
                max--;
            }
            jl_push(r->a, rev, jv_str(p, end));
            for (size_t i = rev->n; i-- > 0;)
                jl_push(r->a, l, rev->items[i]);
        } else {
            size_t start = 0;
            while (max != 0) {
                const char *f = find_bytes(p + start, n - start, q, qn);
                if (!f)
                    break;
                size_t at = (size_t)(f - p);
                jl_push(r->a, l, jv_str(p + start, at - start));
                start = at + qn;
                max--;
            }
            jl_push(r->a, l, jv_str(p + start, n - start));
        }
    } else if (sep && sep->type != JV_NONE) {
        return jr_fail(r, RT_ERR_FORMAT, "must be str or None, not %s", jv_type_name(*sep));
    } else {
        if (from_right && max >= 0)
            return jr_fail(r, RT_ERR_UNSUPPORTED, "rsplit() on whitespace with maxsplit is not supported");
        size_t i = 0;
        while (i < n) {
            size_t k = i;
            if (ju_isspace(ju_next(p, n, &k))) {
                i = k;
                continue;
            }
            if (max == 0) {
                jv rest;
                jinja_strip(r, jv_str(p + i, n - i), NULL, 2, &rest);
                jl_push(r->a, l, rest);
                break;
            }
            size_t start = i;
            while (i < n) {
                size_t k2 = i;
                if (ju_isspace(ju_next(p, n, &k2)))
                    break;
                i = k2;
            }
            jl_push(r->a, l, jv_str(p + start, i - start));
            max--;
        }
    }
    if (r->a->over)
        return NOMEM_R(r);
    *out = list_value(l);
    return RT_OK;
}

static int str_splitlines(jrender *r, jv s, jv *out)
{
    jlist *l = jl_new(r->a, 0);
    if (!l)
        return NOMEM_R(r);
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0, start = 0;
    while (i < n) {
        size_t at = i;
        uint32_t c = ju_next(p, n, &i);
        if (c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 ||
            c == 0x2028 || c == 0x2029) {
            if (c == '\r' && i < n && p[i] == '\n')
                i++;
            jl_push(r->a, l, jv_str(p + start, at - start));
            start = i;
        }
    }
    if (start < n)
        jl_push(r->a, l, jv_str(p + start, n - start));
    *out = list_value(l);
    return r->a->over ? NOMEM_R(r) : RT_OK;
}

/* Python str.replace(old, new, count=-1). */
int jinja_replace(jrender *r, jv s, jv old, jv new_, int64_t count, jv *out);
int jinja_replace(jrender *r, jv s, jv old, jv new_, int64_t count, jv *out)
{
    jbuf b = { 0 };
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0;
    if (old.u.str.n == 0) {
        while (count != 0 && i <= n) {
            jb_put(&b, new_.u.str.s, new_.u.str.n);
            count--;
            if (i == n)
                break;
            size_t k = i;
            ju_next(p, n, &k);
            jb_put(&b, p + i, k - i);
            i = k;
        }
        if (i < n)
            jb_put(&b, p + i, n - i);
        return jinja_buf_value(r, &b, out);
    }
    while (count != 0) {
        const char *f = find_bytes(p + i, n - i, old.u.str.s, old.u.str.n);
        if (!f)
            break;
        size_t at = (size_t)(f - p);
        jb_put(&b, p + i, at - i);
        jb_put(&b, new_.u.str.s, new_.u.str.n);
        i = at + old.u.str.n;
        count--;
    }
    jb_put(&b, p + i, n - i);
    return jinja_buf_value(r, &b, out);
}

static int str_affix(jrender *r, jv s, const jv *arg, int end, jv *out)
{
    if (!arg)
        return jr_fail(r, RT_ERR_FORMAT, "%s() takes at least 1 argument", end ? "endswith" : "startswith");
    const jv *cands = arg;
    size_t nc = 1;
    if (arg->type == JV_LIST) {
        cands = arg->u.list->items;
        nc = arg->u.list->n;
    }
    for (size_t k = 0; k < nc; k++) {
        int rc = need_str(r, &cands[k], end ? "endswith arg" : "startswith arg");
        if (rc)
            return rc;
        size_t m = cands[k].u.str.n;
        if (m <= s.u.str.n &&
            memcmp(s.u.str.s + (end ? s.u.str.n - m : 0), cands[k].u.str.s, m) == 0) {
            *out = jv_bool(1);
            return RT_OK;
        }
    }
    *out = jv_bool(0);
    return RT_OK;
}

static int str_join(jrender *r, jv sep, const jv *arg, jv *out)
{
    jlist *items;
    if (!arg)
        return jr_fail(r, RT_ERR_FORMAT, "join() takes exactly one argument");
    int rc = jinja_iterate(r, *arg, &items);
    if (rc)
        return rc;
    jbuf b = { 0 };
    for (size_t i = 0; i < items->n; i++) {
        if (items->items[i].type != JV_STR) {
            jb_free(&b);
            return jr_fail(r, RT_ERR_FORMAT, "sequence item %zu: expected str instance, %s found", i,
                           jv_type_name(items->items[i]));
        }
        if (i)
            jb_put(&b, sep.u.str.s, sep.u.str.n);
        jb_put(&b, items->items[i].u.str.s, items->items[i].u.str.n);
    }
    return jinja_buf_value(r, &b, out);
}

/* str.format with "{}", "{0}" and "{name}" fields (no format specs). */
static int str_format(jrender *r, jv s, const jv *args, size_t nargs, const char **kwn, const jv *kwv,
                      size_t nkw, jv *out)
{
    jbuf b = { 0 };
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, next = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') {
            jb_putc(&b, '}');
            i++;
            continue;
        }
        if (p[i] != '{') {
            jb_putc(&b, p[i]);
            continue;
        }
        if (i + 1 < n && p[i + 1] == '{') {
            jb_putc(&b, '{');
            i++;
            continue;
        }
        const char *e = memchr(p + i, '}', n - i);
        if (!e)
            goto bad;
        size_t fl = (size_t)(e - p) - i - 1;
        const char *f = p + i + 1;
        const jv *v = NULL;
        if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl))
            goto bad;
        if (fl == 0)
            v = next < nargs ? &args[next++] : NULL;
        else if (f[0] >= '0' && f[0] <= '9') {
            size_t k = (size_t)strtoul(f, NULL, 10);
            v = k < nargs ? &args[k] : NULL;
        } else
            for (size_t k = 0; k < nkw; k++)
                if (strlen(kwn[k]) == fl && memcmp(kwn[k], f, fl) == 0)
                    v = &kwv[k];
        if (!v) {
            jb_free(&b);
            return jr_fail(r, RT_ERR_FORMAT, "format: replacement field {%.*s} has no argument", (int)fl, f);
        }
        jv_write_str(&b, *v);
        i = (size_t)(e - p);
    }
    return jinja_buf_value(r, &b, out);
bad:
    jb_free(&b);
    return jr_fail(r, RT_ERR_UNSUPPORTED, "str.format with this format string is not supported");
}

static int str_pred(jv s, int which)
{
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0;
    int any_cased = 0;
    if (n == 0)
        return 0;
    while (i < n) {
        uint32_t c = ju_next(p, n, &i);
        int cat = utf8proc_category((utf8proc_int32_t)c);
        int alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        int digit = cat == UTF8PROC_CATEGORY_ND;
        switch (which) {
        case MT_ISDIGIT: if (!digit) return 0; break;
        case MT_ISALPHA: if (!alpha) return 0; break;
        case MT_ISALNUM: if (!alpha && !digit && cat != UTF8PROC_CATEGORY_NL && cat != UTF8PROC_CATEGORY_NO) return 0; break;
        case MT_ISSPACE: if (!ju_isspace(c)) return 0; break;
        case MT_ISLOWER:
            if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT) return 0;
            if (cat == UTF8PROC_CATEGORY_LL) any_cased = 1;
            break;
        case MT_ISUPPER:
            if (cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return 0;
            if (cat == UTF8PROC_CATEGORY_LU) any_cased = 1;
            break;
        }
    }
    return which == MT_ISLOWER || which == MT_ISUPPER ? any_cased : 1;
}

static int str_method(jrender *r, int m, jv s, const jv *args, size_t nargs, const char **kwn, const jv *kwv,
                      size_t nkw, jv *out)
{
#define ARG(i, name) jinja_arg(args, nargs, kwn, kwv, nkw, i, name)
    int rc;
    const jv *a0 = ARG(0, NULL);
    switch (m) {
    case MT_STRIP: return jinja_strip(r, s, a0, 3, out);
    case MT_LSTRIP: return jinja_strip(r, s, a0, 1, out);
    case MT_RSTRIP: return jinja_strip(r, s, a0, 2, out);
    case MT_SPLIT: case MT_RSPLIT:
        return str_split(r, s, ARG(0, "sep"), ARG(1, "maxsplit"), m == MT_RSPLIT, out);
    case MT_SPLITLINES: return str_splitlines(r, s, out);
    case MT_STARTSWITH: case MT_ENDSWITH: return str_affix(r, s, a0, m == MT_ENDSWITH, out);
    case MT_REPLACE: {
        const jv *c = ARG(2, "count");
        if ((rc = need_str(r, a0, "replace arg")) || (rc = need_str(r, ARG(1, NULL), "replace arg")))
            return rc;
        return jinja_replace(r, s, *a0, *ARG(1, NULL), c && c->type == JV_INT ? c->u.i : -1, out);
    }
    case MT_UPPER: return jinja_case(r, s, 1, out);
    case MT_LOWER: return jinja_case(r, s, 0, out);
    case MT_TITLE: return jinja_case(r, s, 2, out);
    case MT_CAPITALIZE: return jinja_case(r, s, 3, out);
    case MT_FIND: case MT_RFIND: case MT_INDEX: case MT_COUNT: {
        if ((rc = need_str(r, a0, "substring")))
            return rc;
        if (m == MT_COUNT) {
            int64_t count = 0;
            if (a0->u.str.n == 0)
                count = (int64_t)ju_count(s.u.str.s, s.u.str.n) + 1;
            else
                for (size_t i = 0;;) {
                    const char *f = find_bytes(s.u.str.s + i, s.u.str.n - i, a0->u.str.s, a0->u.str.n);
                    if (!f)
                        break;
                    count++;
                    i = (size_t)(f - s.u.str.s) + a0->u.str.n;
                }
            *out = jv_int(count);
            return RT_OK;
        }
        const char *f = m == MT_RFIND ? rfind_bytes(s.u.str.s, s.u.str.n, a0->u.str.s, a0->u.str.n)
                                      : find_bytes(s.u.str.s, s.u.str.n, a0->u.str.s, a0->u.str.n);
        if (!f && m == MT_INDEX)
            return jr_fail(r, RT_ERR_FORMAT, "substring not found");
        *out = jv_int(f ? (int64_t)cp_index(s.u.str.s, (size_t)(f - s.u.str.s)) : -1);
        return RT_OK;
    }
    case MT_JOIN: return str_join(r, s, a0, out);
    case MT_FORMAT: return str_format(r, s, args, nargs, kwn, kwv, nkw, out);
    default:
        *out = jv_bool(str_pred(s, m));
        return RT_OK;
    }
#undef ARG
}

static int dict_method(jrender *r, int m, jv d, const jv *args, size_t nargs, jv *out)
{
    const jdict *dict = d.u.dict;
    if (m == MT_GET) {
        if (nargs < 1)
            return jr_fail(r, RT_ERR_FORMAT, "get expected at least 1 argument, got 0");
        const jv *v = jd_getv(dict, args[0]);
        *out = v ? *v : nargs > 1 ? args[1] : jv_none();
        return RT_OK;
    }
    if (m == MT_COPY) {
        jdict *c = jd_new(r->a, dict->n);
        if (!c)
            return NOMEM_R(r);
        for (size_t i = 0; i < dict->n; i++)
            jd_set(r->a, c, dict->keys[i], dict->vals[i]);
        *out = (jv){ .type = JV_DICT, .u.dict = c };
        return RT_OK;
    }
    jlist *l = jl_new(r->a, dict->n);
    if (!l)
        return NOMEM_R(r);
    for (size_t i = 0; i < dict->n; i++) {
        if (m == MT_KEYS)
            l->items[i] = dict->keys[i];
        else if (m == MT_VALUES)
            l->items[i] = dict->vals[i];
        else {
            jlist *pair = jl_new(r->a, 2);
            if (!pair)
                return NOMEM_R(r);
            pair->items[0] = dict->keys[i];
            pair->items[1] = dict->vals[i];
            pair->n = 2;
            l->items[i] = (jv){ .type = JV_LIST, .tuple = 1, .u.list = pair };
        }
    }
    l->n = dict->n;
    *out = list_value(l);
    return RT_OK;
}

static int list_method(jrender *r, int m, jv l, const jv *args, size_t nargs, jv *out)
{
    const jlist *list = l.u.list;
    if (m == MT_COPY) {
        jlist *c = jl_new(r->a, list->n);
        if (!c)
            return NOMEM_R(r);
        for (size_t i = 0; i < list->n; i++)
            c->items[i] = list->items[i];
        c->n = list->n;
        *out = list_value(c);
        return RT_OK;
    }
    if (nargs < 1)
        return jr_fail(r, RT_ERR_FORMAT, "%s() takes exactly one argument", m == MT_COUNT ? "count" : "index");
    int64_t count = 0;
    for (size_t i = 0; i < list->n; i++)
        if (jv_equal(list->items[i], args[0])) {
            if (m == MT_INDEX) {
                *out = jv_int((int64_t)i);
                return RT_OK;
            }
            count++;
        }
    if (m == MT_INDEX)
        return jr_fail(r, RT_ERR_FORMAT, "value is not in list");
    *out = jv_int(count);
    return RT_OK;
}

/* ---------------------------------------------------------------- globals */

static const struct { const char *name; int fn; } GLOBALS[] = {
    { "range", JF_RANGE }, { "namespace", JF_NAMESPACE }, { "dict", JF_DICT },
    { "raise_exception", JF_RAISE }, { "strftime_now", JF_STRFTIME },
};

int jinja_global(const char *name, size_t n, jv *out)
{
    for (size_t k = 0; k < sizeof GLOBALS / sizeof GLOBALS[0]; k++)
        if (strlen(GLOBALS[k].name) == n && memcmp(GLOBALS[k].name, name, n) == 0) {
            *out = (jv){ .type = JV_FUNC, .fn = (uint16_t)GLOBALS[k].fn };
            return RT_OK;
        }
    return RT_ERR_NOT_FOUND;
}

static int call_range(jrender *r, const jv *args, size_t nargs, jv *out)
{
    int64_t v[3] = { 0, 0, 1 };
    if (nargs < 1 || nargs > 3)
        return jr_fail(r, RT_ERR_FORMAT, "range expected 1 to 3 arguments, got %zu", nargs);
    for (size_t i = 0; i < nargs; i++) {
        if (args[i].type != JV_INT && args[i].type != JV_BOOL)
            return jr_fail(r, RT_ERR_FORMAT, "'%s' object cannot be interpreted as an integer",
                           jv_type_name(args[i]));
        v[nargs == 1 ? 1 : i] = args[i].type == JV_INT ? args[i].u.i : args[i].u.b;
    }
    int64_t start = v[0], stop = v[1], step = v[2];
    if (step == 0)
        return jr_fail(r, RT_ERR_FORMAT, "range() arg 3 must not be zero");
    double count = step > 0 ? ((double)stop - (double)start) / (double)step
                            : ((double)start - (double)stop) / (double)-step;
    if (count > (double)JINJA_MAX_RANGE)
        return jr_fail(r, RT_ERR_TOO_LARGE,
                       "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%ld).", JINJA_MAX_RANGE);
    jlist *l = jl_new(r->a, count > 0 ? (size_t)count + 1 : 0);
    if (!l)
        return NOMEM_R(r);
    for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step)
        l->items[l->n++] = jv_int(x);
    *out = list_value(l);
    return RT_OK;
}

static int call_dictlike(jrender *r, int ns, const jv *args, size_t nargs, const char **kwn, const jv *kwv,
                         size_t nkw, jv *out)
{
    jdict *d = jd_new(r->a, nkw);
    if (!d)
        return NOMEM_R(r);
    if (nargs > 1)
        return jr_fail(r, RT_ERR_FORMAT, "%s expected at most 1 argument, got %zu", ns ? "namespace" : "dict", nargs);
    if (nargs == 1) {
        if (args[0].type != JV_DICT)
            return jr_fail(r, RT_ERR_UNSUPPORTED, "%s() from a %s is not supported", ns ? "namespace" : "dict",
                           jv_type_name(args[0]));
        for (size_t i = 0; i < args[0].u.dict->n; i++)
            jd_set(r->a, d, args[0].u.dict->keys[i], args[0].u.dict->vals[i]);
    }
    for (size_t k = 0; k < nkw; k++)
        jd_set(r->a, d, jv_str(kwn[k], strlen(kwn[k])), kwv[k]);
    if (r->a->over)
        return NOMEM_R(r);
    *out = (jv){ .type = ns ? JV_NS : JV_DICT, .u.dict = d };
    return RT_OK;
}

static int call_raise(jrender *r, const jv *args, size_t nargs)
{
    jbuf b = { 0 };
    if (nargs > 0)
        jv_write_str(&b, args[0]);
    if (r->err && r->errsize && !r->err[0])
        snprintf(r->err, r->errsize, "%s", b.p ? b.p : "");
    jb_free(&b);
    return RT_ERR_INVALID;
}

static int call_strftime(jrender *r, const jv *args, size_t nargs, jv *out)
{
    if (nargs < 1 || args[0].type != JV_STR)
        return jr_fail(r, RT_ERR_FORMAT, "strftime_now() takes a format string");
    time_t t = r->now >= 0 ? (time_t)r->now : time(NULL);
    struct tm tm;
    if (r->now >= 0)
        gmtime_r(&t, &tm);
    else
        localtime_r(&t, &tm);
    char fmt[256], buf[512];
    if (args[0].u.str.n >= sizeof fmt)
        return jr_fail(r, RT_ERR_TOO_LARGE, "strftime_now() format too long");
    memcpy(fmt, args[0].u.str.s, args[0].u.str.n);
    fmt[args[0].u.str.n] = 0;
    size_t n = strftime(buf, sizeof buf, fmt, &tm);
    char *s = ja_strdup(r->a, buf, n);
    if (!s)
        return NOMEM_R(r);
    *out = jv_str(s, n);
    return RT_OK;
}

int jinja_call_builtin(jrender *r, jv fn, const jv *args, size_t nargs,
                       const char **kwnames, const jv *kwvals, size_t nkw, jv *out)
{
    switch (fn.fn) {
    case JF_RANGE: return call_range(r, args, nargs, out);
    case JF_NAMESPACE: return call_dictlike(r, 1, args, nargs, kwnames, kwvals, nkw, out);
    case JF_DICT: return call_dictlike(r, 0, args, nargs, kwnames, kwvals, nkw, out);
    case JF_RAISE: return call_raise(r, args, nargs);
    case JF_STRFTIME: return call_strftime(r, args, nargs, out);
    case JF_LOOP_CYCLE:
        if (nargs == 0)
            return jr_fail(r, RT_ERR_FORMAT, "no items for cycling given");
        *out = args[fn.self->u.loop->index0 % nargs];
        return RT_OK;
    default:
        break;
    }
    int m = fn.fn - JF_METHOD_BASE;
    if (m < 0 || !fn.self)
        return jr_fail(r, RT_ERR_FORMAT, "object is not callable");
    jv self = *fn.self;
    if (self.type == JV_STR)
        return str_method(r, m, self, args, nargs, kwnames, kwvals, nkw, out);
    if (self.type == JV_DICT)
        return dict_method(r, m, self, args, nargs, out);
    return list_method(r, m, self, args, nargs, out);
}
