/*
 * engine/jinja_filters.c — Jinja2's builtin filters and tests that chat
 * templates use, with transformers' tojson (json.dumps, ensure_ascii=False),
 * and iteration of values as a Python for loop sees them.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "common/rt.h"
#include "engine/jinja_int.h"

int jinja_strip(jrender *r, jv s, const jv *chars, int which, jv *out);
int jinja_case(jrender *r, jv s, int mode, jv *out);
int jinja_replace(jrender *r, jv s, jv old, jv new_, int64_t count, jv *out);


static const char *const FILTERS[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "forceescape", "indent", "int", "items", "join", "last", "length",
    "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round",
    "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
    "upper", "wordcount", NULL
};
enum {
    F_ABS, F_ATTR, F_BATCH, F_CAPITALIZE, F_CENTER, F_COUNT, F_D, F_DEFAULT, F_DICTSORT, F_E,
    F_ESCAPE, F_FIRST, F_FLOAT, F_FORCEESCAPE, F_INDENT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH,
    F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND,
    F_SAFE, F_SELECT, F_SELECTATTR, F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE,
    F_UPPER, F_WORDCOUNT
};

static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "float", "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lessthan", "lower", "lt",
    "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "true", "undefined",
    "upper", "filter", "test", NULL
};
enum {
    T_BOOLEAN, T_CALLABLE, T_DEFINED, T_DIVISIBLEBY, T_EQ, T_EQUALTO, T_ESCAPED, T_EVEN, T_FALSE,
    T_FLOAT, T_GE, T_GT, T_GREATERTHAN, T_IN, T_INTEGER, T_ITERABLE, T_LE, T_LESSTHAN, T_LOWER, T_LT,
    T_MAPPING, T_NE, T_NONE, T_NUMBER, T_ODD, T_SAMEAS, T_SEQUENCE, T_STRING, T_TRUE, T_UNDEFINED,
    T_UPPER, T_FILTER, T_TEST
};

static int lookup(const char *const *names, const char *name, size_t n)
{
    for (int k = 0; names[k]; k++)
        if (strlen(names[k]) == n && memcmp(names[k], name, n) == 0)
            return k;
    return -1;
}

int jinja_filter_id(const char *name, size_t n) { return lookup(FILTERS, name, n); }
int jinja_test_id(const char *name, size_t n) { return lookup(TESTS, name, n); }

/* ---------------------------------------------------------------- helpers */

static jv list_value(jlist *l) { return (jv){ .type = JV_LIST, .u.list = l }; }

int jinja_buf_value(jrender *r, jbuf *b, jv *out)
{
    int over = b->over;
    char *s = over ? NULL : ja_strdup(r->a, b->p ? b->p : "", b->n);
    size_t n = b->n;
    jb_free(b);
    if (!s)
        return over == 1 ? jr_fail(r, RT_ERR_TOO_LARGE, "output too large") : NOMEM_R(r);
    *out = jv_str(s, n);
    return RT_OK;
}

int jinja_iterate(jrender *r, jv v, jlist **out)
{
    switch (v.type) {
    case JV_LIST:
        *out = v.u.list;
        return RT_OK;
    case JV_UNDEF:
        *out = jl_new(r->a, 0);
        return *out ? RT_OK : NOMEM_R(r);
    case JV_DICT: {
        jlist *l = jl_new(r->a, v.u.dict->n);
        if (!l)
            return NOMEM_R(r);
        memcpy(l->items, v.u.dict->keys, v.u.dict->n * sizeof(jv));
        l->n = v.u.dict->n;
        *out = l;
        return RT_OK;
    }
    case JV_STR: {
        jlist *l = jl_new(r->a, v.u.str.n);
        if (!l)
            return NOMEM_R(r);
        size_t i = 0;
        while (i < v.u.str.n) {
            size_t start = i;
            ju_next(v.u.str.s, v.u.str.n, &i);
            l->items[l->n++] = jv_str(v.u.str.s + start, i - start);
        }
        *out = l;
        return RT_OK;
    }
    default:
        return jr_fail(r, RT_ERR_FORMAT, "'%s' object is not iterable", jv_type_name(v));
    }
}

static int need_str_arg(jrender *r, jv v, jv *out)
{
    if (v.type == JV_STR) {
        *out = v;
        return RT_OK;
    }
    int rc = jv_to_str(r->a, v, out);
    return rc ? NOMEM_R(r) : RT_OK;
}

/* Jinja2's attribute getter: "a.b.0" walks getitem with each part. */
static int get_attr_path(jrender *r, jv obj, jv attr, jv *out)
{
    if (attr.type == JV_INT)
        return jinja_getitem(r, obj, attr, out);
    if (attr.type != JV_STR)
        return jr_fail(r, RT_ERR_FORMAT, "attribute must be a string");
    const char *p = attr.u.str.s, *end = p + attr.u.str.n;
    jv cur = obj;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        jv key = jv_str(p, n);
        int isnum = n > 0;
        for (size_t i = 0; i < n; i++)
            if (p[i] < '0' || p[i] > '9')
                isnum = 0;
        if (isnum)
            key = jv_int(strtoll(p, NULL, 10));
        int rc = jinja_getitem(r, cur, key, &cur);
        if (rc)
            return rc;
        if (!dot)
            break;
        p = dot + 1;
    }
    *out = cur;
    return RT_OK;
}

static int int_of(jv v, int64_t *out)
{
    if (v.type == JV_INT) { *out = v.u.i; return 1; }
    if (v.type == JV_BOOL) { *out = v.u.b; return 1; }
    return 0;
}

/* ---------------------------------------------------------------- tests */

int jinja_apply_test(jrender *r, int id, jv v, const jv *args, size_t nargs, int *out)
{
    int64_t i;
    int c;
    jv a0 = nargs ? args[0] : jv_undef(NULL);
    switch (id) {
    case T_BOOLEAN: *out = v.type == JV_BOOL; return RT_OK;
    case T_CALLABLE: *out = v.type == JV_MACRO || v.type == JV_FUNC; return RT_OK;
    case T_DEFINED: *out = v.type != JV_UNDEF; return RT_OK;
    case T_UNDEFINED: *out = v.type == JV_UNDEF; return RT_OK;
    case T_NONE: *out = v.type == JV_NONE; return RT_OK;
    case T_TRUE: *out = v.type == JV_BOOL && v.u.b; return RT_OK;
    case T_FALSE: *out = v.type == JV_BOOL && !v.u.b; return RT_OK;
    case T_STRING: *out = v.type == JV_STR; return RT_OK;
    case T_NUMBER: *out = v.type == JV_INT || v.type == JV_FLOAT || v.type == JV_BOOL; return RT_OK;
    case T_INTEGER: *out = v.type == JV_INT; return RT_OK;
    case T_FLOAT: *out = v.type == JV_FLOAT; return RT_OK;
    case T_MAPPING: *out = v.type == JV_DICT; return RT_OK;
    case T_SEQUENCE: *out = v.type == JV_STR || v.type == JV_LIST || v.type == JV_DICT; return RT_OK;
    case T_ITERABLE: *out = v.type == JV_STR || v.type == JV_LIST || v.type == JV_DICT || v.type == JV_UNDEF;
        return RT_OK;
    case T_ESCAPED: *out = 0; return RT_OK;
    case T_LOWER: case T_UPPER: {
        jv s, m;
        if (v.type != JV_STR) { *out = 0; return RT_OK; }
        if (jinja_case(r, v, id == T_UPPER, &m))
            return NOMEM_R(r);
        s = v;
        *out = jv_equal(s, m);
        return RT_OK;
    }
    case T_EVEN: case T_ODD: case T_DIVISIBLEBY: {
        int64_t d = 2;
        if (id == T_DIVISIBLEBY && (!nargs || !int_of(a0, &d)))
            return jr_fail(r, RT_ERR_FORMAT, "divisibleby needs an integer");
        if (!int_of(v, &i)) {
            if (v.type == JV_UNDEF)
                return jr_fail(r, RT_ERR_FORMAT, "%s", v.u.str.s ? v.u.str.s : "value is undefined");
            return jr_fail(r, RT_ERR_FORMAT, "test needs an integer, not %s", jv_type_name(v));
        }
        if (d == 0)
            return jr_fail(r, RT_ERR_FORMAT, "integer division or modulo by zero");
        int64_t m = ((i % d) + d) % d;
        *out = id == T_ODD ? m == 1 : m == 0;
        return RT_OK;
    }
    case T_EQ: case T_EQUALTO: *out = jv_equal(v, a0); return RT_OK;
    case T_NE: *out = !jv_equal(v, a0); return RT_OK;
    case T_SAMEAS:
        if (v.type != a0.type) { *out = 0; return RT_OK; }
        *out = v.type == JV_NONE || v.type == JV_UNDEF || (v.type == JV_BOOL && v.u.b == a0.u.b) ||
               ((v.type == JV_LIST) && v.u.list == a0.u.list) ||
               ((v.type == JV_DICT || v.type == JV_NS) && v.u.dict == a0.u.dict) ||
               (v.type == JV_INT && v.u.i == a0.u.i && v.u.i >= -5 && v.u.i <= 256);
        return RT_OK;
    case T_GE: case T_GT: case T_GREATERTHAN: case T_LE: case T_LT: case T_LESSTHAN:
        if (jv_compare(v, a0, &c))
            return jr_fail(r, RT_ERR_FORMAT, "'%s' and '%s' do not compare", jv_type_name(v), jv_type_name(a0));
        *out = id == T_GE ? c >= 0 : (id == T_GT || id == T_GREATERTHAN) ? c > 0 : id == T_LE ? c <= 0 : c < 0;
        return RT_OK;
    case T_IN: {
        jlist *l;
        if (a0.type == JV_STR) {
            if (v.type != JV_STR)
                return jr_fail(r, RT_ERR_FORMAT, "'in <string>' requires string as left operand");
            *out = v.u.str.n == 0 || memmem(a0.u.str.s, a0.u.str.n, v.u.str.s, v.u.str.n) != NULL;
            return RT_OK;
        }
        if (a0.type == JV_DICT) {
            *out = jd_getv(a0.u.dict, v) != NULL;
            return RT_OK;
        }
        int rc = jinja_iterate(r, a0, &l);
        if (rc)
            return rc;
        *out = 0;
        for (size_t k = 0; k < l->n && !*out; k++)
            *out = jv_equal(v, l->items[k]);
        return RT_OK;
    }
    case T_FILTER: case T_TEST:
        *out = v.type == JV_STR && (id == T_FILTER ? jinja_filter_id(v.u.str.s, v.u.str.n)
                                                   : jinja_test_id(v.u.str.s, v.u.str.n)) >= 0;
        return RT_OK;
    default:
        return jr_fail(r, RT_ERR_UNSUPPORTED, "test not supported");
    }
}

/* ---------------------------------------------------------------- filters */

static int f_default(jv v, const jv *dflt, const jv *boolean, jv *out)
{
    int use = v.type == JV_UNDEF || (boolean && jv_truthy(*boolean) && !jv_truthy(v));
    *out = use ? (dflt ? *dflt : jv_str("", 0)) : v;
    return RT_OK;
}

static int f_length(jrender *r, jv v, jv *out)
{
    switch (v.type) {
    case JV_STR: *out = jv_int((int64_t)ju_count(v.u.str.s, v.u.str.n)); return RT_OK;
    case JV_LIST: *out = jv_int((int64_t)v.u.list->n); return RT_OK;
    case JV_DICT: *out = jv_int((int64_t)v.u.dict->n); return RT_OK;
    case JV_UNDEF: *out = jv_int(0); return RT_OK;
    default: return jr_fail(r, RT_ERR_FORMAT, "object of type '%s' has no len()", jv_type_name(v));
    }
}

static int f_join(jrender *r, jv v, const jv *sep, const jv *attr, jv *out)
{
    jlist *l;
    int rc = jinja_iterate(r, v, &l);
    if (rc)
        return rc;
    jbuf b = { 0 };
    for (size_t i = 0; i < l->n; i++) {
        jv x = l->items[i];
        if (attr && attr->type != JV_NONE && (rc = get_attr_path(r, x, *attr, &x))) {
            jb_free(&b);
            return rc;
        }
        if (i && sep)
            jv_write_str(&b, *sep);
        jv_write_str(&b, x);
    }
    return jinja_buf_value(r, &b, out);
}

static int f_tojson(jrender *r, jv v, const jv *args, size_t nargs, const char **kwn, const jv *kwv, size_t nkw,
                    jv *out)
{
    const jv *ascii = jinja_arg(args, nargs, kwn, kwv, nkw, 0, "ensure_ascii");
    const jv *indent = jinja_arg(args, nargs, kwn, kwv, nkw, 1, "indent");
    const jv *seps = jinja_arg(args, nargs, kwn, kwv, nkw, 2, "separators");
    const jv *sort = jinja_arg(args, nargs, kwn, kwv, nkw, 3, "sort_keys");
    int ind = -1;
    if (ascii && jv_truthy(*ascii))
        return jr_fail(r, RT_ERR_UNSUPPORTED, "tojson(ensure_ascii=True) is not supported");
    if (indent && indent->type != JV_NONE) {
        if (indent->type != JV_INT || indent->u.i < 0 || indent->u.i > 64)
            return jr_fail(r, RT_ERR_UNSUPPORTED, "tojson indent must be a small integer");
        ind = (int)indent->u.i;
    }
    char isep[16], ksep[16];
    snprintf(isep, sizeof isep, "%s", ind >= 0 ? "," : ", ");
    snprintf(ksep, sizeof ksep, ": ");
    if (seps && seps->type != JV_NONE) {
        if (seps->type != JV_LIST || seps->u.list->n != 2 || seps->u.list->items[0].type != JV_STR ||
            seps->u.list->items[1].type != JV_STR || seps->u.list->items[0].u.str.n >= sizeof isep ||
            seps->u.list->items[1].u.str.n >= sizeof ksep)
            return jr_fail(r, RT_ERR_FORMAT, "tojson separators must be two short strings");
        snprintf(isep, sizeof isep, "%.*s", (int)seps->u.list->items[0].u.str.n, seps->u.list->items[0].u.str.s);
        snprintf(ksep, sizeof ksep, "%.*s", (int)seps->u.list->items[1].u.str.n, seps->u.list->items[1].u.str.s);
    }
    jbuf b = { 0 };
    int rc = jv_write_json(&b, v, ind, isep, ksep, sort && jv_truthy(*sort), 0);
    if (rc == RT_ERR_FORMAT) {
        jb_free(&b);
        return jr_fail(r, RT_ERR_FORMAT, "Object of type %s is not JSON serializable", jv_type_name(v));
    }
    return jinja_buf_value(r, &b, out);
}

/* Jinja2's indent: the first line kept unless first, blank lines kept
 * unless blank. */
static int f_indent(jrender *r, jv v, const jv *width, const jv *first, const jv *blank, jv *out)
{
    jv s;
    int rc = need_str_arg(r, v, &s);
    if (rc)
        return rc;
    jbuf pad = { 0 }, b = { 0 };
    if (width && width->type == JV_STR)
        jb_put(&pad, width->u.str.s, width->u.str.n);
    else {
        int64_t w = 4;
        if (width && !int_of(*width, &w))
            return jr_fail(r, RT_ERR_FORMAT, "indent width must be an integer or a string");
        for (int64_t k = 0; k < w && k < 4096; k++)
            jb_putc(&pad, ' ');
    }
    int do_blank = blank && jv_truthy(*blank);
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0, start = 0, line = 0;
    if (first && jv_truthy(*first))
        jb_put(&b, pad.p ? pad.p : "", pad.n);
    /* splitlines over s + "\n" */
    while (i <= n) {
        size_t at = i;
        int brk = i == n;
        uint32_t c = 0;
        if (!brk) {
            c = ju_next(p, n, &i);
            brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 ||
                  c == 0x2028 || c == 0x2029;
            if (c == '\r' && i < n && p[i] == '\n')
                i++;
        } else
            i++;
        if (!brk)
            continue;
        if (at == n && start == n && line > 0)
            break; /* the appended "\n" closed the last line already */
        if (line > 0) {
            jb_putc(&b, '\n');
            if (do_blank || at > start)
                jb_put(&b, pad.p ? pad.p : "", pad.n);
        }
        jb_put(&b, p + start, at - start);
        start = i > n ? n : i;
        line++;
        if (at == n)
            break;
    }
    jb_free(&pad);
    return jinja_buf_value(r, &b, out);
}

static int cmp_for_sort(jrender *r, jv a, jv b, int case_sensitive, int *c)
{
    if (!case_sensitive && a.type == JV_STR && b.type == JV_STR) {
        jv la, lb;
        if (jinja_case(r, a, 0, &la) || jinja_case(r, b, 0, &lb))
            return NOMEM_R(r);
        a = la;
        b = lb;
    }
    if (jv_compare(a, b, c))
        return jr_fail(r, RT_ERR_FORMAT, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a),
                       jv_type_name(b));
    return RT_OK;
}

/* Stable insertion-merge sort of items by keys. */
static int sort_items(jrender *r, jv *items, jv *keys, size_t n, int reverse, int case_sensitive)
{
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0; j--) {
            int c;
            int rc = cmp_for_sort(r, keys[j - 1], keys[j], case_sensitive, &c);
            if (rc)
                return rc;
            if (reverse ? c >= 0 : c <= 0)
                break;
            jv t = items[j]; items[j] = items[j - 1]; items[j - 1] = t;
            t = keys[j]; keys[j] = keys[j - 1]; keys[j - 1] = t;
        }
    }
    return RT_OK;
}

static int f_sort(jrender *r, int id, jv v, const jv *args, size_t nargs, const char **kwn, const jv *kwv,
                  size_t nkw, jv *out)
{
    jlist *l;
    int rc = jinja_iterate(r, v, &l);
    if (rc)
        return rc;
    const jv *rev = id == F_SORT ? jinja_arg(args, nargs, kwn, kwv, nkw, 0, "reverse") : NULL;
    const jv *cs = jinja_arg(args, nargs, kwn, kwv, nkw, id == F_SORT ? 1 : 0, "case_sensitive");
    const jv *attr = jinja_arg(args, nargs, kwn, kwv, nkw, id == F_SORT ? 2 : 1, "attribute");
    if (l->n > 20000)
        return jr_fail(r, RT_ERR_TOO_LARGE, "sequence too long to sort");
    jlist *o = jl_new(r->a, l->n);
    jv *keys = ja_alloc(r->a, (l->n + 1) * sizeof(jv));
    if (!o || !keys)
        return NOMEM_R(r);
    for (size_t i = 0; i < l->n; i++) {
        o->items[i] = l->items[i];
        keys[i] = l->items[i];
        if (attr && attr->type != JV_NONE && (rc = get_attr_path(r, l->items[i], *attr, &keys[i])))
            return rc;
    }
    o->n = l->n;
    int case_sensitive = cs && jv_truthy(*cs);
    if (id == F_SORT) {
        if ((rc = sort_items(r, o->items, keys, o->n, rev && jv_truthy(*rev), case_sensitive)))
            return rc;
        *out = list_value(o);
        return RT_OK;
    }
    /* unique / min / max */
    if (id == F_UNIQUE) {
        jlist *u = jl_new(r->a, l->n);
        jv *seen = ja_alloc(r->a, (l->n + 1) * sizeof(jv));
        size_t ns = 0;
        if (!u || !seen)
            return NOMEM_R(r);
        for (size_t i = 0; i < o->n; i++) {
            jv k = keys[i];
            if (!case_sensitive && k.type == JV_STR && jinja_case(r, k, 0, &k))
                return NOMEM_R(r);
            int dup = 0;
            for (size_t s = 0; s < ns && !dup; s++)
                dup = jv_equal(seen[s], k);
            if (!dup) {
                seen[ns++] = k;
                u->items[u->n++] = o->items[i];
            }
        }
        *out = list_value(u);
        return RT_OK;
    }
    if (o->n == 0) {
        *out = jv_undef("No aggregated item, sequence was empty.");
        return RT_OK;
    }
    size_t best = 0;
    for (size_t i = 1; i < o->n; i++) {
        int c;
        if ((rc = cmp_for_sort(r, keys[i], keys[best], case_sensitive, &c)))
            return rc;
        if (id == F_MAX ? c > 0 : c < 0)
            best = i;
    }
    *out = o->items[best];
    return RT_OK;
}

/* select / reject / selectattr / rejectattr / map. */
static int f_select(jrender *r, int id, jv v, const jv *args, size_t nargs, const char **kwn, const jv *kwv,
                    size_t nkw, jv *out)
{
    jlist *l;
    int rc = jinja_iterate(r, v, &l);
    if (rc)
        return rc;
    int by_attr = id == F_SELECTATTR || id == F_REJECTATTR;
    int keep_true = id == F_SELECT || id == F_SELECTATTR;
    jlist *o = jl_new(r->a, l->n);
    if (!o)
        return NOMEM_R(r);
    if (id == F_MAP) {
        const jv *attr = jinja_arg(NULL, 0, kwn, kwv, nkw, 0, "attribute");
        const jv *dflt = jinja_arg(NULL, 0, kwn, kwv, nkw, 0, "default");
        int fid = -1;
        if (!attr) {
            if (nargs < 1 || args[0].type != JV_STR)
                return jr_fail(r, RT_ERR_FORMAT, "map requires a filter name or attribute=");
            fid = jinja_filter_id(args[0].u.str.s, args[0].u.str.n);
            if (fid < 0)
                return jr_fail(r, RT_ERR_FORMAT, "No filter named '%.*s'", (int)args[0].u.str.n, args[0].u.str.s);
        }
        for (size_t i = 0; i < l->n; i++) {
            jv x;
            if (attr) {
                rc = get_attr_path(r, l->items[i], *attr, &x);
                if (rc == RT_OK && x.type == JV_UNDEF && dflt)
                    x = *dflt;
            } else
                rc = jinja_apply_filter(r, fid, l->items[i], args + 1, nargs - 1, kwn, kwv, nkw, &x);
            if (rc)
                return rc;
            o->items[o->n++] = x;
        }
        *out = list_value(o);
        return RT_OK;
    }
    size_t skip = by_attr ? 1 : 0;
    if (by_attr && nargs < 1)
        return jr_fail(r, RT_ERR_FORMAT, "missing attribute");
    int tid = -1;
    if (nargs > skip) {
        if (args[skip].type != JV_STR || (tid = jinja_test_id(args[skip].u.str.s, args[skip].u.str.n)) < 0)
            return jr_fail(r, RT_ERR_FORMAT, "No test named '%.*s'", args[skip].type == JV_STR ? (int)args[skip].u.str.n : 1,
                           args[skip].type == JV_STR ? args[skip].u.str.s : "?");
    }
    for (size_t i = 0; i < l->n; i++) {
        jv x = l->items[i];
        int t;
        if (by_attr && (rc = get_attr_path(r, x, args[0], &x)))
            return rc;
        if (tid >= 0) {
            if ((rc = jinja_apply_test(r, tid, x, args + skip + 1, nargs - skip - 1, &t)))
                return rc;
        } else
            t = jv_truthy(x);
        if (!t == !keep_true)
            o->items[o->n++] = l->items[i];
    }
    *out = list_value(o);
    return RT_OK;
}

static int f_int(jrender *r, jv v, const jv *dflt, int want_float, jv *out)
{
    jv d = dflt ? *dflt : want_float ? jv_float(0.0) : jv_int(0);
    switch (v.type) {
    case JV_INT: *out = want_float ? jv_float((double)v.u.i) : v; return RT_OK;
    case JV_BOOL: *out = want_float ? jv_float(v.u.b) : jv_int(v.u.b); return RT_OK;
    case JV_FLOAT:
        if (want_float) { *out = v; return RT_OK; }
        if (!isfinite(v.u.f) || fabs(v.u.f) > 9.2e18) { *out = d; return RT_OK; }
        *out = jv_int((int64_t)v.u.f);
        return RT_OK;
    case JV_STR: {
        char tmp[128];
        size_t k = 0;
        for (size_t i = 0; i < v.u.str.n && k < sizeof tmp - 1; i++)
            if (v.u.str.s[i] != '_')
                tmp[k++] = v.u.str.s[i];
        tmp[k] = 0;
        char *end;
        if (!want_float) {
            errno = 0;
            long long x = strtoll(tmp, &end, 10);
            while (*end == ' ' || *end == '\t' || *end == '\n') end++;
            if (end != tmp && !*end && !errno) { *out = jv_int(x); return RT_OK; }
        }
        double f = strtod(tmp, &end);
        while (*end == ' ' || *end == '\t' || *end == '\n') end++;
        if (end == tmp || *end || k == 0) { *out = d; return RT_OK; }
        if (want_float) *out = jv_float(f);
        else if (!isfinite(f) || fabs(f) > 9.2e18) *out = d;
        else *out = jv_int((int64_t)f);
        return RT_OK;
    }
    default:
        *out = d;
        return RT_OK;
    }
    (void)r;
}

static int f_round(jrender *r, jv v, const jv *prec, const jv *method, jv *out)
{
    int64_t p = 0;
    if (prec && !int_of(*prec, &p))
        return jr_fail(r, RT_ERR_FORMAT, "round precision must be an integer");
    if (v.type != JV_INT && v.type != JV_FLOAT && v.type != JV_BOOL)
        return jr_fail(r, RT_ERR_FORMAT, "type %s doesn't define __round__ method", jv_type_name(v));
    double x = v.type == JV_FLOAT ? v.u.f : (double)(v.type == JV_INT ? v.u.i : v.u.b);
    const char *m = method && method->type == JV_STR ? method->u.str.s : "common";
    if (strncmp(m, "common", 6) == 0) {
        if (v.type != JV_FLOAT) { *out = jv_int((int64_t)x); return RT_OK; }
        if (p < -20 || p > 20) { *out = v; return RT_OK; }
        char tmp[400];
        snprintf(tmp, sizeof tmp, "%.*f", p >= 0 ? (int)p : 0, p >= 0 ? x : x / pow(10, (double)-p));
        double y = strtod(tmp, NULL);
        *out = jv_float(p >= 0 ? y : nearbyint(x / pow(10, (double)-p)) * pow(10, (double)-p));
        return RT_OK;
    }
    double scale = pow(10, (double)p);
    if (strncmp(m, "ceil", 4) == 0) *out = jv_float(ceil(x * scale) / scale);
    else if (strncmp(m, "floor", 5) == 0) *out = jv_float(floor(x * scale) / scale);
    else return jr_fail(r, RT_ERR_FORMAT, "method must be common, ceil or floor");
    return RT_OK;
}

static int f_escape(jrender *r, jv v, jv *out)
{
    jv s;
    int rc = need_str_arg(r, v, &s);
    if (rc)
        return rc;
    jbuf b = { 0 };
    for (size_t i = 0; i < s.u.str.n; i++) {
        char c = s.u.str.s[i];
        const char *e = c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '"' ? "&#34;"
                      : c == '\'' ? "&#39;" : NULL;
        if (e)
            jb_put(&b, e, strlen(e));
        else
            jb_putc(&b, c);
    }
    return jinja_buf_value(r, &b, out);
}

/* Jinja2's title: capitalize each word, words split at whitespace and -({[<. */
static int f_title(jrender *r, jv s, jv *out)
{
    jbuf b = { 0 };
    const char *p = s.u.str.s;
    size_t n = s.u.str.n, i = 0;
    int start = 1;
    while (i < n) {
        uint32_t c = ju_next(p, n, &i);
        int sep = ju_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        uint32_t m = sep ? c : start ? (uint32_t)utf8proc_toupper((utf8proc_int32_t)c)
                                     : (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
        start = sep;
        char tmp[4];
        jb_put(&b, tmp, ju_encode(m, tmp));
    }
    return jinja_buf_value(r, &b, out);
}

static int is_word_char(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    int cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) || cat == UTF8PROC_CATEGORY_PC;
}

static int f_items(jrender *r, jv v, jv *out)
{
    if (v.type == JV_UNDEF) {
        jlist *l = jl_new(r->a, 0);
        if (!l)
            return NOMEM_R(r);
        *out = list_value(l);
        return RT_OK;
    }
    if (v.type != JV_DICT)
        return jr_fail(r, RT_ERR_FORMAT, "Can only get item pairs from a mapping.");
    jlist *l = jl_new(r->a, v.u.dict->n);
    if (!l)
        return NOMEM_R(r);
    for (size_t i = 0; i < v.u.dict->n; i++) {
        jlist *pair = jl_new(r->a, 2);
        if (!pair)
            return NOMEM_R(r);
        pair->items[0] = v.u.dict->keys[i];
        pair->items[1] = v.u.dict->vals[i];
        pair->n = 2;
        l->items[l->n++] = (jv){ .type = JV_LIST, .tuple = 1, .u.list = pair };
    }
    *out = list_value(l);
    return RT_OK;
}

static int f_batch(jrender *r, jv v, const jv *count, const jv *fill, jv *out)
{
    int64_t n;
    jlist *l;
    if (!count || !int_of(*count, &n) || n <= 0)
        return jr_fail(r, RT_ERR_FORMAT, "batch needs a positive count");
    int rc = jinja_iterate(r, v, &l);
    if (rc)
        return rc;
    jlist *o = jl_new(r->a, 0), *cur = NULL;
    if (!o)
        return NOMEM_R(r);
    for (size_t i = 0; i < l->n; i++) {
        if (!cur || cur->n == (size_t)n) {
            if (!(cur = jl_new(r->a, (size_t)(n < 1024 ? n : 1024))) || jl_push(r->a, o, list_value(cur)))
                return NOMEM_R(r);
        }
        if (jl_push(r->a, cur, l->items[i]))
            return NOMEM_R(r);
    }
    while (cur && fill && fill->type != JV_NONE && cur->n < (size_t)n)
        if (jl_push(r->a, cur, *fill))
            return NOMEM_R(r);
    *out = list_value(o);
    return RT_OK;
}

int jinja_apply_filter(jrender *r, int id, jv v, const jv *args, size_t nargs,
                       const char **kwn, const jv *kwv, size_t nkw, jv *out)
{
#define ARG(i, name) jinja_arg(args, nargs, kwn, kwv, nkw, i, name)
    jlist *l;
    jv s;
    int rc;
    int64_t i64;
    switch (id) {
    case F_DEFAULT: case F_D:
        return f_default(v, ARG(0, "default_value"), ARG(1, "boolean"), out);
    case F_LENGTH: case F_COUNT:
        return f_length(r, v, out);
    case F_SAFE:
        *out = v;
        return RT_OK;
    case F_ESCAPE: case F_E: case F_FORCEESCAPE:
        return f_escape(r, v, out);
    case F_TOJSON:
        return f_tojson(r, v, args, nargs, kwn, kwv, nkw, out);
    case F_STRING:
        return need_str_arg(r, v, out);
    case F_ITEMS:
        return f_items(r, v, out);
    case F_LIST:
        if ((rc = jinja_iterate(r, v, &l)))
            return rc;
        *out = list_value(l);
        return RT_OK;
    case F_FIRST: case F_LAST:
        if ((rc = jinja_iterate(r, v, &l)))
            return rc;
        *out = l->n ? l->items[id == F_FIRST ? 0 : l->n - 1]
                    : jv_undef(id == F_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        return RT_OK;
    case F_REVERSE:
        if (v.type == JV_STR) {
            jbuf b = { 0 };
            if ((rc = jinja_iterate(r, v, &l)))
                return rc;
            for (size_t i = l->n; i-- > 0;)
                jb_put(&b, l->items[i].u.str.s, l->items[i].u.str.n);
            return jinja_buf_value(r, &b, out);
        }
        if ((rc = jinja_iterate(r, v, &l)))
            return rc;
        {
            jlist *o = jl_new(r->a, l->n);
            if (!o)
                return NOMEM_R(r);
            for (size_t i = l->n; i-- > 0;)
                o->items[o->n++] = l->items[i];
            *out = list_value(o);
        }
        return RT_OK;
    case F_JOIN:
        return f_join(r, v, ARG(0, "d"), ARG(1, "attribute"), out);
    case F_SORT: case F_UNIQUE: case F_MAX: case F_MIN:
        return f_sort(r, id, v, args, nargs, kwn, kwv, nkw, out);
    case F_SELECT: case F_REJECT: case F_SELECTATTR: case F_REJECTATTR: case F_MAP:
        return f_select(r, id, v, args, nargs, kwn, kwv, nkw, out);
    case F_INT:
        return f_int(r, v, ARG(0, "default"), 0, out);
    case F_FLOAT:
        return f_int(r, v, ARG(0, "default"), 1, out);
    case F_ABS:
        if (v.type == JV_INT) { *out = jv_int(v.u.i < 0 ? -v.u.i : v.u.i); return RT_OK; }
        if (v.type == JV_BOOL) { *out = jv_int(v.u.b); return RT_OK; }
        if (v.type == JV_FLOAT) { *out = jv_float(fabs(v.u.f)); return RT_OK; }
        return jr_fail(r, RT_ERR_FORMAT, "bad operand type for abs(): '%s'", jv_type_name(v));
    case F_ROUND:
        return f_round(r, v, ARG(0, "precision"), ARG(1, "method"), out);
    case F_ATTR: {
        const jv *name = ARG(0, "name");
        if (!name || name->type != JV_STR)
            return jr_fail(r, RT_ERR_FORMAT, "attr needs a name");
        return jinja_getattr(r, v, name->u.str.s, name->u.str.n, out);
    }
    case F_BATCH:
        return f_batch(r, v, ARG(0, "linecount"), ARG(1, "fill_with"), out);
    case F_INDENT:
        return f_indent(r, v, ARG(0, "width"), ARG(1, "first"), ARG(2, "blank"), out);
    case F_DICTSORT: {
        if (v.type != JV_DICT)
            return jr_fail(r, RT_ERR_FORMAT, "dictsort needs a mapping");
        const jv *cs = ARG(0, "case_sensitive"), *by = ARG(1, "by"), *rev = ARG(2, "reverse");
        if ((rc = f_items(r, v, &s)))
            return rc;
        int by_value = by && by->type == JV_STR && by->u.str.n == 5 && memcmp(by->u.str.s, "value", 5) == 0;
        jv *keys = ja_alloc(r->a, (s.u.list->n + 1) * sizeof(jv));
        if (!keys)
            return NOMEM_R(r);
        for (size_t i = 0; i < s.u.list->n; i++)
            keys[i] = s.u.list->items[i].u.list->items[by_value];
        if ((rc = sort_items(r, s.u.list->items, keys, s.u.list->n, rev && jv_truthy(*rev), cs && jv_truthy(*cs))))
            return rc;
        *out = s;
        return RT_OK;
    }
    case F_SUM: {
        const jv *attr = ARG(0, "attribute"), *start = ARG(1, "start");
        if ((rc = jinja_iterate(r, v, &l)))
            return rc;
        jv acc = start ? *start : jv_int(0);
        for (size_t i = 0; i < l->n; i++) {
            jv x = l->items[i];
            if (attr && attr->type != JV_NONE && (rc = get_attr_path(r, x, *attr, &x)))
                return rc;
            if (acc.type == JV_INT && x.type == JV_INT) {
                if (__builtin_add_overflow(acc.u.i, x.u.i, &i64))
                    return jr_fail(r, RT_ERR_UNSUPPORTED, "integer result too large");
                acc = jv_int(i64);
            } else if ((acc.type == JV_INT || acc.type == JV_FLOAT) && (x.type == JV_INT || x.type == JV_FLOAT))
                acc = jv_float((acc.type == JV_INT ? (double)acc.u.i : acc.u.f) + (x.type == JV_INT ? (double)x.u.i : x.u.f));
            else
                return jr_fail(r, RT_ERR_FORMAT, "unsupported operand type(s) for +: '%s' and '%s'",
                               jv_type_name(acc), jv_type_name(x));
        }
        *out = acc;
        return RT_OK;
    }
    case F_WORDCOUNT: {
        if ((rc = need_str_arg(r, v, &s)))
            return rc;
        int64_t words = 0;
        int in = 0;
        size_t i = 0;
        while (i < s.u.str.n) {
            int w = is_word_char(ju_next(s.u.str.s, s.u.str.n, &i));
            if (w && !in)
                words++;
            in = w;
        }
        *out = jv_int(words);
        return RT_OK;
    }
    default:
        break;
    }
    /* the rest take the value as a string */
    if ((rc = need_str_arg(r, v, &s)))
        return rc;
    switch (id) {
    case F_TRIM: return jinja_strip(r, s, ARG(0, "chars"), 3, out);
    case F_UPPER: return jinja_case(r, s, 1, out);
    case F_LOWER: return jinja_case(r, s, 0, out);
    case F_CAPITALIZE: return jinja_case(r, s, 3, out);
    case F_TITLE: return f_title(r, s, out);
    case F_REPLACE: {
        const jv *old = ARG(0, "old"), *nw = ARG(1, "new"), *count = ARG(2, "count");
        jv so, sn;
        if (!old || !nw)
            return jr_fail(r, RT_ERR_FORMAT, "replace needs old and new");
        if ((rc = need_str_arg(r, *old, &so)) || (rc = need_str_arg(r, *nw, &sn)))
            return rc;
        return jinja_replace(r, s, so, sn, count && count->type == JV_INT ? count->u.i : -1, out);
    }
    case F_CENTER: {
        const jv *w = ARG(0, "width");
        int64_t width = 80;
        if (w && !int_of(*w, &width))
            return jr_fail(r, RT_ERR_FORMAT, "center width must be an integer");
        int64_t len = (int64_t)ju_count(s.u.str.s, s.u.str.n);
        if (width > 100000)
            return jr_fail(r, RT_ERR_TOO_LARGE, "center width too large");
        if (width <= len) { *out = s; return RT_OK; }
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        jbuf b = { 0 };
        for (int64_t k = 0; k < left; k++) jb_putc(&b, ' ');
        jb_put(&b, s.u.str.s, s.u.str.n);
        for (int64_t k = 0; k < pad - left; k++) jb_putc(&b, ' ');
        return jinja_buf_value(r, &b, out);
    }
    default:
        return jr_fail(r, RT_ERR_UNSUPPORTED, "filter not supported");
    }
#undef ARG
}
