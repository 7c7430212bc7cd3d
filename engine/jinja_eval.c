/*
 * engine/jinja_eval.c — the Jinja evaluator and the module's door
 * (jinja_compile, jinja_render): runs the syntax tree over the variables of
 * a render with Jinja2's semantics (scopes per loop iteration and macro,
 * default Undefined, Python operators and printing) and records the output
 * ranges of {% generation %} blocks.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/rt.h"
#include "engine/jinja.h"
#include "engine/jinja_int.h"

struct jinja_template {
    jarena arena;
    const jnode *root;
};

/* Statement results besides RT_OK and errors: loop control. */
enum { JX_BREAK = 1, JX_CONTINUE = 2 };

void jinja_vfail(char *err, size_t errsize, int line, const char *fmt, va_list ap)
{
    if (!err || !errsize)
        return;
    int k = snprintf(err, errsize, "line %d: ", line);
    if (k >= 0 && (size_t)k < errsize)
        vsnprintf(err + k, errsize - (size_t)k, fmt, ap);
}

int jr_fail(jrender *r, int code, const char *fmt, ...)
{
    if (r->err && r->errsize && !r->err[0]) { /* the first error is the one that counts */
        va_list ap;
        va_start(ap, fmt);
        jinja_vfail(r->err, r->errsize, r->line, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---------------------------------------------------------------- scopes */

static jscope *scope_new(jrender *r, jscope *parent)
{
    jscope *s = ja_alloc(r->a, sizeof(*s));
    if (s)
        s->parent = parent;
    return s;
}

static int scope_set(jrender *r, jscope *s, const char *name, jv v)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < s->n; i++)
        if (s->lens[i] == n && memcmp(s->names[i], name, n) == 0) {
            s->vals[i] = v;
            return RT_OK;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **names = ja_alloc(r->a, cap * sizeof(*names));
        size_t *lens = ja_alloc(r->a, cap * sizeof(*lens));
        jv *vals = ja_alloc(r->a, cap * sizeof(*vals));
        if (!names || !lens || !vals)
            return NOMEM_R(r);
        if (s->n) {
            memcpy(names, s->names, s->n * sizeof(*names));
            memcpy(lens, s->lens, s->n * sizeof(*lens));
            memcpy(vals, s->vals, s->n * sizeof(*vals));
        }
        s->names = names;
        s->lens = lens;
        s->vals = vals;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->lens[s->n] = n;
    s->vals[s->n] = v;
    s->n++;
    return RT_OK;
}

static const jv *scope_get(const jscope *s, const char *name, size_t n)
{
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (s->lens[i] == n && memcmp(s->names[i], name, n) == 0)
                return &s->vals[i];
    return NULL;
}

static jv undef_fmt(jrender *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static jv undef_fmt(jrender *r, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return jv_undef(ja_strdup(r->a, tmp, strlen(tmp)));
}

/* The error of using an undefined value where a value is needed. */
static int undef_error(jrender *r, jv v)
{
    return jr_fail(r, RT_ERR_FORMAT, "%s", v.u.str.s && v.u.str.n ? v.u.str.s : "value is undefined");
}

/* ---------------------------------------------------------------- expressions */

static int eval_list(jrender *r, const jnode *const *items, size_t n, jv *vals)
{
    for (size_t i = 0; i < n; i++) {
        int rc = jinja_eval(r, items[i], &vals[i]);
        if (rc)
            return rc;
    }
    return RT_OK;
}

static int64_t norm_index(int64_t i, size_t n) { return i < 0 ? i + (int64_t)n : i; }

/* Python slice bounds for a sequence of n items. */
static int slice_bounds(jrender *r, const jv *parts, size_t n, int64_t *start, int64_t *stop, int64_t *step)
{
    *step = 1;
    if (parts[2].type != JV_NONE) {
        if (parts[2].type != JV_INT)
            return jr_fail(r, RT_ERR_FORMAT, "slice indices must be integers or None");
        *step = parts[2].u.i;
        if (*step == 0)
            return jr_fail(r, RT_ERR_FORMAT, "slice step cannot be zero");
    }
    int64_t len = (int64_t)n;
    for (int k = 0; k < 2; k++) {
        int64_t *dst = k == 0 ? start : stop;
        jv p = parts[k];
        if (p.type == JV_NONE) {
            *dst = *step > 0 ? (k == 0 ? 0 : len) : (k == 0 ? len - 1 : -1);
            continue;
        }
        if (p.type != JV_INT && p.type != JV_BOOL)
            return jr_fail(r, RT_ERR_FORMAT, "slice indices must be integers or None");
        int64_t v = p.type == JV_INT ? p.u.i : p.u.b;
        if (v < 0) {
            v += len;
            if (v < 0)
                v = *step > 0 ? 0 : -1;
        } else if (v >= len)
            v = *step > 0 ? len : len - 1;
        *dst = v;
    }
    return RT_OK;
}

static int eval_slice(jrender *r, const jnode *e, jv *out)
{
    jv obj, parts[3];
    int rc = jinja_eval(r, e->a, &obj);
    for (int k = 0; k < 3 && rc == RT_OK; k++)
        parts[k] = jv_none();
    for (int k = 0; k < 3 && rc == RT_OK; k++)
        if (e->items[k])
            rc = jinja_eval(r, e->items[k], &parts[k]);
    if (rc)
        return rc;
    if (obj.type == JV_UNDEF)
        return undef_error(r, obj);
    int64_t start, stop, step;
    if (obj.type == JV_LIST) {
        const jlist *l = obj.u.list;
        if ((rc = slice_bounds(r, parts, l->n, &start, &stop, &step)))
            return rc;
        jlist *o = jl_new(r->a, 0);
        if (!o)
            return NOMEM_R(r);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            if ((rc = jl_push(r->a, o, l->items[i])))
                return jr_fail(r, rc, "render memory limit reached");
        *out = (jv){ .type = JV_LIST, .tuple = obj.tuple, .u.list = o };
        return RT_OK;
    }
    if (obj.type == JV_STR) {
        const char *s = obj.u.str.s;
        size_t n = obj.u.str.n, cps = ju_count(s, n);
        if ((rc = slice_bounds(r, parts, cps, &start, &stop, &step)))
            return rc;
        size_t *offs = ja_alloc(r->a, (cps + 1) * sizeof(size_t));
        char *o = ja_alloc(r->a, n + 1);
        if (!offs || !o)
            return NOMEM_R(r);
        size_t i = 0, k = 0;
        while (i < n) {
            offs[k++] = i;
            ju_next(s, n, &i);
        }
        offs[k] = n;
        size_t m = 0;
        for (int64_t c = start; step > 0 ? c < stop : c > stop; c += step) {
            size_t a = offs[c], b = offs[c + 1];
            memcpy(o + m, s + a, b - a);
            m += b - a;
        }
        *out = jv_str(o, m);
        return RT_OK;
    }
    return jr_fail(r, RT_ERR_FORMAT, "'%s' object is not subscriptable", jv_type_name(obj));
}

static int is_method_name(const char *name, size_t n, const char *const *names)
{
    for (int k = 0; names[k]; k++)
        if (strlen(names[k]) == n && memcmp(names[k], name, n) == 0)
            return 1;
    return 0;
}

static const char *const UNSAFE_DICT[] = { "pop", "popitem", "setdefault", "update", "clear", NULL };
static const char *const UNSAFE_LIST[] = { "append", "pop", "extend", "insert", "remove", "sort",
                                           "reverse", "clear", NULL };

static jv method_value(jrender *r, jv obj, int id)
{
    jv *self = ja_alloc(r->a, sizeof(jv));
    if (!self)
        return jv_undef("render memory limit reached");
    *self = obj;
    jv f = { .type = JV_FUNC, .fn = (uint16_t)id, .self = self };
    return f;
}

static int loop_attr(jrender *r, jv obj, const char *name, size_t n, jv *out)
{
    const jloop *L = obj.u.loop;
    size_t i = L->index0, len = L->length;
#define IS(s) (n == strlen(s) && memcmp(name, s, n) == 0)
    if (IS("index")) *out = jv_int((int64_t)i + 1);
    else if (IS("index0")) *out = jv_int((int64_t)i);
    else if (IS("revindex")) *out = jv_int((int64_t)(len - i));
    else if (IS("revindex0")) *out = jv_int((int64_t)(len - i - 1));
    else if (IS("first")) *out = jv_bool(i == 0);
    else if (IS("last")) *out = jv_bool(i + 1 == len);
    else if (IS("length")) *out = jv_int((int64_t)len);
    else if (IS("depth")) *out = jv_int(L->depth0 + 1);
    else if (IS("depth0")) *out = jv_int(L->depth0);
    else if (IS("previtem")) *out = i > 0 ? L->seq->items[i - 1] : undef_fmt(r, "there is no previous item");
    else if (IS("nextitem")) *out = i + 1 < len ? L->seq->items[i + 1] : undef_fmt(r, "there is no next item");
    else if (IS("cycle")) *out = method_value(r, obj, JF_LOOP_CYCLE);
    else *out = undef_fmt(r, "'LoopContext' object has no attribute '%.*s'", (int)n, name);
#undef IS
    return RT_OK;
}

int jinja_getattr(jrender *r, jv obj, const char *name, size_t n, jv *out)
{
    int id;
    switch (obj.type) {
    case JV_UNDEF:
        return undef_error(r, obj);
    case JV_LOOP:
        return loop_attr(r, obj, name, n, out);
    case JV_DICT:
        if (is_method_name(name, n, UNSAFE_DICT)) {
            *out = undef_fmt(r, "access to attribute '%.*s' of 'dict' object is unsafe.", (int)n, name);
            return RT_OK;
        }
        /* fallthrough */
    case JV_STR: case JV_LIST:
        if (obj.type == JV_LIST && is_method_name(name, n, UNSAFE_LIST)) {
            *out = undef_fmt(r, "access to attribute '%.*s' of 'list' object is unsafe.", (int)n, name);
            return RT_OK;
        }
        if ((id = jinja_method_id(obj, name, n)) >= 0) {
            *out = method_value(r, obj, id);
            return RT_OK;
        }
        if (obj.type == JV_DICT) {
            const jv *v = jd_get(obj.u.dict, name, n);
            if (v) {
                *out = *v;
                return RT_OK;
            }
        }
        break;
    case JV_NS: {
        const jv *v = jd_get(obj.u.dict, name, n);
        if (v) {
            *out = *v;
            return RT_OK;
        }
        break;
    }
    default:
        break;
    }
    *out = undef_fmt(r, "'%s object' has no attribute '%.*s'", obj.type == JV_NONE ? "None" : jv_type_name(obj),
                     (int)n, name);
    return RT_OK;
}

int jinja_getitem(jrender *r, jv obj, jv key, jv *out)
{
    if (obj.type == JV_UNDEF)
        return undef_error(r, obj);
    if (obj.type == JV_DICT || obj.type == JV_NS) {
        const jv *v = jd_getv(obj.u.dict, key);
        if (v) {
            *out = *v;
            return RT_OK;
        }
    } else if ((obj.type == JV_LIST || obj.type == JV_STR) && (key.type == JV_INT || key.type == JV_BOOL)) {
        int64_t k = key.type == JV_INT ? key.u.i : key.u.b;
        if (obj.type == JV_LIST) {
            int64_t i = norm_index(k, obj.u.list->n);
            if (i >= 0 && (size_t)i < obj.u.list->n) {
                *out = obj.u.list->items[i];
                return RT_OK;
            }
        } else {
            const char *s = obj.u.str.s;
            size_t n = obj.u.str.n, pos = 0;
            int64_t i = norm_index(k, ju_count(s, n));
            for (int64_t c = 0; i >= 0 && pos < n; c++) {
                size_t start = pos;
                ju_next(s, n, &pos);
                if (c == i) {
                    *out = jv_str(s + start, pos - start);
                    return RT_OK;
                }
            }
        }
        *out = undef_fmt(r, "%s index out of range", obj.type == JV_LIST ? "list" : "string");
        return RT_OK;
    }
    if (key.type == JV_STR && obj.type != JV_NS)
        return jinja_getattr(r, obj, key.u.str.s, key.u.str.n, out);
    jbuf b = { .limit = 200 };
    jv_write_repr(&b, key);
    *out = undef_fmt(r, "'%s object' has no attribute %s", jv_type_name(obj), b.p ? b.p : "");
    jb_free(&b);
    return RT_OK;
}

/* ---------------------------------------------------------------- operators */

static int is_num(jv v) { return v.type == JV_INT || v.type == JV_FLOAT || v.type == JV_BOOL; }
static double num(jv v) { return v.type == JV_FLOAT ? v.u.f : v.type == JV_INT ? (double)v.u.i : v.u.b; }
static int64_t ival(jv v) { return v.type == JV_INT ? v.u.i : v.u.b; }

static const char *op_text(int op)
{
    static const char *const t[] = { "+", "-", "*", "/", "//", "%", "**", "~" };
    return op >= 0 && op <= JOP_CONCAT ? t[op] : "?";
}

static int type_error(jrender *r, int op, jv a, jv b)
{
    return jr_fail(r, RT_ERR_FORMAT, "unsupported operand type(s) for %s: '%s' and '%s'", op_text(op),
                   jv_type_name(a), jv_type_name(b));
}

static int repeat(jrender *r, jv seq, int64_t times, jv *out)
{
    if (times < 0)
        times = 0;
    if (seq.type == JV_STR) {
        if (seq.u.str.n && (size_t)times > JINJA_MAX_OUTPUT / seq.u.str.n)
            return jr_fail(r, RT_ERR_TOO_LARGE, "string repetition too large");
        size_t n = seq.u.str.n * (size_t)times;
        char *o = ja_alloc(r->a, n + 1);
        if (!o)
            return NOMEM_R(r);
        for (int64_t k = 0; k < times; k++)
            memcpy(o + (size_t)k * seq.u.str.n, seq.u.str.s, seq.u.str.n);
        *out = jv_str(o, n);
        return RT_OK;
    }
    const jlist *l = seq.u.list;
    if (l->n && (size_t)times > 1000000 / l->n)
        return jr_fail(r, RT_ERR_TOO_LARGE, "list repetition too large");
    size_t total = l->n * (size_t)times;
    jlist *o = jl_new(r->a, total);
    for (int64_t k = 0; o && k < times; k++)
        for (size_t i = 0; i < l->n; i++)
            jl_push(r->a, o, l->items[i]);
    if (!o)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    *out = (jv){ .type = JV_LIST, .tuple = seq.tuple, .u.list = o };
    return RT_OK;
}

static int concat_seq(jrender *r, jv a, jv b, jv *out)
{
    if (a.type == JV_STR) {
        char *o = ja_alloc(r->a, a.u.str.n + b.u.str.n + 1);
        if (!o)
            return NOMEM_R(r);
        memcpy(o, a.u.str.s, a.u.str.n);
        memcpy(o + a.u.str.n, b.u.str.s, b.u.str.n);
        *out = jv_str(o, a.u.str.n + b.u.str.n);
        return RT_OK;
    }
    jlist *o = jl_new(r->a, a.u.list->n + b.u.list->n);
    if (!o)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    for (size_t i = 0; i < a.u.list->n; i++)
        jl_push(r->a, o, a.u.list->items[i]);
    for (size_t i = 0; i < b.u.list->n; i++)
        jl_push(r->a, o, b.u.list->items[i]);
    *out = (jv){ .type = JV_LIST, .tuple = a.tuple, .u.list = o };
    return RT_OK;
}

static int int_arith(jrender *r, int op, int64_t x, int64_t y, jv *out)
{
    int64_t z = 0;
    switch (op) {
    case JOP_ADD: if (__builtin_add_overflow(x, y, &z)) goto big; break;
    case JOP_SUB: if (__builtin_sub_overflow(x, y, &z)) goto big; break;
    case JOP_MUL: if (__builtin_mul_overflow(x, y, &z)) goto big; break;
    case JOP_FLOORDIV: case JOP_MOD:
        if (y == 0)
            return jr_fail(r, RT_ERR_FORMAT, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1)
            goto big;
        z = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0)))
            z--;
        if (op == JOP_MOD)
            z = x - z * y;
        break;
    case JOP_POW:
        if (y < 0) {
            *out = jv_float(pow((double)x, (double)y));
            return RT_OK;
        }
        z = 1;
        for (int64_t k = 0; k < y; k++) {
            if (__builtin_mul_overflow(z, x, &z))
                goto big;
            if (z == 0 || z == 1)
                break;
        }
        if (z == -1 || (x == -1))
            z = (y % 2) ? x : 1;
        break;
    default:
        return jr_fail(r, RT_ERR_FORMAT, "bad operator");
    }
    *out = jv_int(z);
    return RT_OK;
big:
    return jr_fail(r, RT_ERR_UNSUPPORTED, "integer result too large");
}

static int float_arith(jrender *r, int op, double x, double y, jv *out)
{
    double z;
    switch (op) {
    case JOP_ADD: z = x + y; break;
    case JOP_SUB: z = x - y; break;
    case JOP_MUL: z = x * y; break;
    case JOP_DIV:
        if (y == 0)
            return jr_fail(r, RT_ERR_FORMAT, "division by zero");
        z = x / y;
        break;
    case JOP_FLOORDIV: case JOP_MOD:
        if (y == 0)
            return jr_fail(r, RT_ERR_FORMAT, "float division by zero");
        z = fmod(x, y);
        if (z != 0 && ((z < 0) != (y < 0)))
            z += y;
        if (op == JOP_FLOORDIV)
            z = floor(x / y);
        break;
    case JOP_POW: z = pow(x, y); break;
    default: return jr_fail(r, RT_ERR_FORMAT, "bad operator");
    }
    *out = jv_float(z);
    return RT_OK;
}

static int binop(jrender *r, int op, jv a, jv b, jv *out)
{
    if (op == JOP_CONCAT) {
        jbuf buf = { 0 };
        int rc = jv_write_str(&buf, a);
        if (rc == RT_OK)
            rc = jv_write_str(&buf, b);
        char *s = rc == RT_OK ? ja_strdup(r->a, buf.p ? buf.p : "", buf.n) : NULL;
        size_t n = buf.n;
        jb_free(&buf);
        if (!s)
            return jr_fail(r, RT_ERR_TOO_LARGE, "string too large");
        *out = jv_str(s, n);
        return RT_OK;
    }
    if (a.type == JV_UNDEF)
        return undef_error(r, a);
    if (b.type == JV_UNDEF)
        return undef_error(r, b);
    if (is_num(a) && is_num(b)) {
        if (a.type != JV_FLOAT && b.type != JV_FLOAT && op != JOP_DIV)
            return int_arith(r, op, ival(a), ival(b), out);
        return float_arith(r, op, num(a), num(b), out);
    }
    if (op == JOP_ADD && a.type == b.type && (a.type == JV_STR || a.type == JV_LIST))
        return concat_seq(r, a, b, out);
    if (op == JOP_MUL && (a.type == JV_STR || a.type == JV_LIST) && (b.type == JV_INT || b.type == JV_BOOL))
        return repeat(r, a, ival(b), out);
    if (op == JOP_MUL && (b.type == JV_STR || b.type == JV_LIST) && (a.type == JV_INT || a.type == JV_BOOL))
        return repeat(r, b, ival(a), out);
    if (op == JOP_MOD && a.type == JV_STR)
        return jr_fail(r, RT_ERR_UNSUPPORTED, "printf-style '%%' string formatting is not supported");
    return type_error(r, op, a, b);
}

static int contains(jrender *r, jv needle, jv hay, int *out)
{
    switch (hay.type) {
    case JV_STR:
        if (needle.type != JV_STR)
            return jr_fail(r, RT_ERR_FORMAT, "'in <string>' requires string as left operand, not %s",
                           jv_type_name(needle));
        if (needle.u.str.n == 0) {
            *out = 1;
            return RT_OK;
        }
        *out = memmem(hay.u.str.s, hay.u.str.n, needle.u.str.s, needle.u.str.n) != NULL;
        return RT_OK;
    case JV_LIST:
        *out = 0;
        for (size_t i = 0; i < hay.u.list->n && !*out; i++)
            *out = jv_equal(needle, hay.u.list->items[i]);
        return RT_OK;
    case JV_DICT: case JV_NS:
        *out = jd_getv(hay.u.dict, needle) != NULL;
        return RT_OK;
    case JV_UNDEF:
        *out = 0;
        return RT_OK;
    default:
        return jr_fail(r, RT_ERR_FORMAT, "argument of type '%s' is not iterable", jv_type_name(hay));
    }
}

static int compare1(jrender *r, int op, jv a, jv b, int *out)
{
    int c;
    switch (op) {
    case JOP_EQ: *out = jv_equal(a, b); return RT_OK;
    case JOP_NE: *out = !jv_equal(a, b); return RT_OK;
    case JOP_IN: return contains(r, a, b, out);
    case JOP_NOTIN: {
        int rc = contains(r, a, b, out);
        *out = !*out;
        return rc;
    }
    default:
        if (a.type == JV_UNDEF)
            return undef_error(r, a);
        if (b.type == JV_UNDEF)
            return undef_error(r, b);
        if (jv_compare(a, b, &c) != RT_OK)
            return jr_fail(r, RT_ERR_FORMAT, "'%s' not supported between instances of '%s' and '%s'",
                           op == JOP_LT ? "<" : op == JOP_LE ? "<=" : op == JOP_GT ? ">" : ">=",
                           jv_type_name(a), jv_type_name(b));
        *out = op == JOP_LT ? c < 0 : op == JOP_LE ? c <= 0 : op == JOP_GT ? c > 0 : c >= 0;
        return RT_OK;
    }
}

static int eval_compare(jrender *r, const jnode *e, jv *out)
{
    jv left;
    int rc = jinja_eval(r, e->items[0], &left);
    for (size_t i = 1; i < e->n && rc == RT_OK; i++) {
        jv right;
        int ok;
        if ((rc = jinja_eval(r, e->items[i], &right)) || (rc = compare1(r, e->ops[i - 1], left, right, &ok)))
            return rc;
        if (!ok) {
            *out = jv_bool(0);
            return RT_OK;
        }
        left = right;
    }
    if (rc == RT_OK)
        *out = jv_bool(1);
    return rc;
}

/* ---------------------------------------------------------------- calls */

/* Evaluates the arguments of a call, filter or test node. */
typedef struct jargs { jv *pos; jv *kw; } jargs;
static int eval_args(jrender *r, const jnode *e, jargs *a)
{
    a->pos = ja_alloc(r->a, (e->n + 1) * sizeof(jv));
    a->kw = ja_alloc(r->a, (e->nkw + 1) * sizeof(jv));
    if (!a->pos || !a->kw)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    int rc = eval_list(r, e->items, e->n, a->pos);
    return rc ? rc : eval_list(r, e->kwvals, e->nkw, a->kw);
}

static int exec_body(jrender *r, const jnode *body);

static int call_macro(jrender *r, const struct jmacro *m, const jv *args, size_t nargs,
                      const char **kwnames, const jv *kwvals, size_t nkw, jv *out)
{
    const jnode *def = m->node;
    if (nargs > def->nnames)
        return jr_fail(r, RT_ERR_FORMAT, "macro '%s' takes not more than %zu argument(s)", def->str, def->nnames);
    if (r->calls >= JINJA_MAX_CALLS)
        return jr_fail(r, RT_ERR_TOO_LARGE, "macro calls nested deeper than %d", JINJA_MAX_CALLS);
    jscope *s = scope_new(r, m->closure);
    if (!s)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    for (size_t k = 0; k < nkw; k++) {
        size_t p = 0;
        while (p < def->nnames && strcmp(def->names[p], kwnames[k]) != 0)
            p++;
        if (p == def->nnames)
            return jr_fail(r, RT_ERR_FORMAT, "macro '%s' takes no keyword argument '%s'", def->str, kwnames[k]);
    }
    jscope *saved = r->scope;
    r->scope = s;
    int rc = RT_OK;
    for (size_t p = 0; p < def->nnames && rc == RT_OK; p++) {
        jv v = jv_undef(NULL);
        int found = 0;
        if (p < nargs) {
            v = args[p];
            found = 1;
        }
        for (size_t k = 0; k < nkw && !found; k++)
            if (strcmp(def->names[p], kwnames[k]) == 0) {
                v = kwvals[k];
                found = 1;
            }
        if (!found && def->kwvals[p])
            rc = jinja_eval(r, def->kwvals[p], &v);
        else if (!found)
            v = undef_fmt(r, "parameter '%s' was not provided", def->names[p]);
        if (rc == RT_OK)
            rc = scope_set(r, s, def->names[p], v);
    }
    jbuf buf = { 0 }, *saved_out = r->out;
    if (rc == RT_OK) {
        r->out = &buf;
        r->calls++;
        r->capture++;
        rc = exec_body(r, def->b);
        r->capture--;
        r->calls--;
        r->out = saved_out;
    }
    r->scope = saved;
    if (rc == RT_OK && buf.over)
        rc = jr_fail(r, RT_ERR_TOO_LARGE, "output too large");
    if (rc == RT_OK) {
        char *str = ja_strdup(r->a, buf.p ? buf.p : "", buf.n);
        if (!str)
            rc = jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
        else
            *out = jv_str(str, buf.n);
    }
    jb_free(&buf);
    return rc > 0 ? RT_OK : rc;
}

int jinja_call_value(jrender *r, jv fn, const jv *args, size_t nargs,
                     const char **kwnames, const jv *kwvals, size_t nkw, jv *out)
{
    if (fn.type == JV_MACRO)
        return call_macro(r, fn.u.macro, args, nargs, kwnames, kwvals, nkw, out);
    if (fn.type == JV_FUNC)
        return jinja_call_builtin(r, fn, args, nargs, kwnames, kwvals, nkw, out);
    if (fn.type == JV_UNDEF)
        return undef_error(r, fn);
    return jr_fail(r, RT_ERR_FORMAT, "'%s' object is not callable", jv_type_name(fn));
}

static int eval_call(jrender *r, const jnode *e, jv *out)
{
    jv fn;
    jargs a;
    int rc = jinja_eval(r, e->a, &fn);
    if (rc == RT_OK && fn.type == JV_UNDEF)
        return undef_error(r, fn);
    if (rc || (rc = eval_args(r, e, &a)))
        return rc;
    r->line = e->line;
    return jinja_call_value(r, fn, a.pos, e->n, e->kwnames, a.kw, e->nkw, out);
}

static int eval_filter(jrender *r, const jnode *e, jv in, jv *out)
{
    jargs a;
    int rc = eval_args(r, e, &a);
    if (rc)
        return rc;
    r->line = e->line;
    return jinja_apply_filter(r, e->op, in, a.pos, e->n, e->kwnames, a.kw, e->nkw, out);
}

static int eval_collection(jrender *r, const jnode *e, jv *out)
{
    int rc;
    if (e->kind == JN_DICT) {
        jdict *d = jd_new(r->a, e->n);
        if (!d)
            return NOMEM_R(r);
        for (size_t i = 0; i < e->n; i++) {
            jv k, v;
            if ((rc = jinja_eval(r, e->items[i], &k)) || (rc = jinja_eval(r, e->kwvals[i], &v)))
                return rc;
            if (jd_set(r->a, d, k, v))
                return NOMEM_R(r);
        }
        *out = (jv){ .type = JV_DICT, .u.dict = d };
        return RT_OK;
    }
    jlist *l = jl_new(r->a, e->n);
    if (!l)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    if ((rc = eval_list(r, e->items, e->n, l->items)))
        return rc;
    l->n = e->n;
    *out = (jv){ .type = JV_LIST, .tuple = e->kind == JN_TUPLE, .u.list = l };
    return RT_OK;
}

int jinja_eval(jrender *r, const jnode *e, jv *out)
{
    jv a, b;
    int rc, t;
    r->line = e->line;
    switch (e->kind) {
    case JN_CONST:
        *out = e->val;
        return RT_OK;
    case JN_NAME: {
        const jv *v = scope_get(r->scope, e->str, e->len);
        if (v)
            *out = *v;
        else if (jinja_global(e->str, e->len, out) != RT_OK)
            *out = undef_fmt(r, "'%s' is undefined", e->str);
        return RT_OK;
    }
    case JN_GETATTR:
        if ((rc = jinja_eval(r, e->a, &a)))
            return rc;
        r->line = e->line;
        return jinja_getattr(r, a, e->str, e->len, out);
    case JN_GETITEM:
        if ((rc = jinja_eval(r, e->a, &a)) || (rc = jinja_eval(r, e->b, &b)))
            return rc;
        r->line = e->line;
        return jinja_getitem(r, a, b, out);
    case JN_SLICE:
        return eval_slice(r, e, out);
    case JN_CALL:
        return eval_call(r, e, out);
    case JN_FILTER:
        if ((rc = jinja_eval(r, e->a, &a)))
            return rc;
        return eval_filter(r, e, a, out);
    case JN_TEST: {
        jargs args;
        if ((rc = jinja_eval(r, e->a, &a)) || (rc = eval_args(r, e, &args)))
            return rc;
        r->line = e->line;
        if ((rc = jinja_apply_test(r, e->op, a, args.pos, e->n, &t)))
            return rc;
        *out = jv_bool(e->flag ? !t : t);
        return RT_OK;
    }
    case JN_NEG: case JN_POS:
        if ((rc = jinja_eval(r, e->a, &a)))
            return rc;
        if (a.type == JV_UNDEF)
            return undef_error(r, a);
        if (!is_num(a))
            return jr_fail(r, RT_ERR_FORMAT, "bad operand type for unary %s: '%s'", e->kind == JN_NEG ? "-" : "+",
                           jv_type_name(a));
        if (e->kind == JN_POS)
            *out = a.type == JV_BOOL ? jv_int(a.u.b) : a;
        else if (a.type == JV_FLOAT)
            *out = jv_float(-a.u.f);
        else if (ival(a) == INT64_MIN)
            return jr_fail(r, RT_ERR_UNSUPPORTED, "integer result too large");
        else
            *out = jv_int(-ival(a));
        return RT_OK;
    case JN_NOT:
        if ((rc = jinja_eval(r, e->a, &a)))
            return rc;
        *out = jv_bool(!jv_truthy(a));
        return RT_OK;
    case JN_AND: case JN_OR:
        if ((rc = jinja_eval(r, e->a, &a)))
            return rc;
        if (jv_truthy(a) == (e->kind == JN_OR)) {
            *out = a;
            return RT_OK;
        }
        return jinja_eval(r, e->b, out);
    case JN_BINOP:
        if ((rc = jinja_eval(r, e->a, &a)) || (rc = jinja_eval(r, e->b, &b)))
            return rc;
        r->line = e->line;
        return binop(r, e->op, a, b, out);
    case JN_COMPARE:
        return eval_compare(r, e, out);
    case JN_CONDEXPR:
        if ((rc = jinja_eval(r, e->b, &a)))
            return rc;
        if (jv_truthy(a))
            return jinja_eval(r, e->a, out);
        if (e->c)
            return jinja_eval(r, e->c, out);
        *out = undef_fmt(r, "the inline if-expression on line %d evaluated to false and no else section was defined.",
                         e->line);
        return RT_OK;
    case JN_LIST: case JN_TUPLE: case JN_DICT:
        return eval_collection(r, e, out);
    default:
        return jr_fail(r, RT_ERR_FORMAT, "not an expression");
    }
}

/* ---------------------------------------------------------------- statements */

static int emit_value(jrender *r, jv v)
{
    int rc = jv_write_str(r->out, v);
    if (rc == RT_ERR_TOO_LARGE)
        return jr_fail(r, rc, "output larger than %zu bytes", (size_t)JINJA_MAX_OUTPUT);
    if (rc)
        return jr_fail(r, rc, "out of memory");
    return RT_OK;
}

static int assign_targets(jrender *r, jscope *s, const char *const *names, size_t n, jv v)
{
    if (n == 1)
        return scope_set(r, s, names[0], v);
    if (v.type != JV_LIST)
        return jr_fail(r, RT_ERR_FORMAT, "cannot unpack non-sequence %s", jv_type_name(v));
    if (v.u.list->n != n)
        return jr_fail(r, RT_ERR_FORMAT, "%s values to unpack (expected %zu, got %zu)",
                       v.u.list->n > n ? "too many" : "not enough", n, v.u.list->n);
    for (size_t i = 0; i < n; i++) {
        int rc = scope_set(r, s, names[i], v.u.list->items[i]);
        if (rc)
            return rc;
    }
    return RT_OK;
}

static int exec_for(jrender *r, const jnode *st)
{
    jv seqv;
    jlist *seq;
    int rc = jinja_eval(r, st->a, &seqv);
    if (rc || (rc = jinja_iterate(r, seqv, &seq)))
        return rc;
    if (st->d) { /* the "if" clause filters before loop.length is known */
        jlist *kept = jl_new(r->a, seq->n);
        if (!kept)
            return NOMEM_R(r);
        for (size_t i = 0; i < seq->n; i++) {
            jscope *s = scope_new(r, r->scope);
            jv ok;
            if (!s)
                return NOMEM_R(r);
            jscope *saved = r->scope;
            r->scope = s;
            rc = assign_targets(r, s, st->names, st->nnames, seq->items[i]);
            if (rc == RT_OK)
                rc = jinja_eval(r, st->d, &ok);
            r->scope = saved;
            if (rc)
                return rc;
            if (jv_truthy(ok))
                kept->items[kept->n++] = seq->items[i];
        }
        seq = kept;
    }
    jloop *L = ja_alloc(r->a, sizeof(*L));
    if (!L)
        return jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
    L->seq = seq;
    L->length = seq->n;
    const jv *outer = scope_get(r->scope, "loop", 4);
    L->depth0 = outer && outer->type == JV_LOOP ? outer->u.loop->depth0 + 1 : 0;
    jscope *saved = r->scope;
    for (size_t i = 0; i < seq->n; i++) {
        if (++r->iterations > JINJA_MAX_ITER)
            return jr_fail(r, RT_ERR_TOO_LARGE, "more than %ld loop iterations", JINJA_MAX_ITER);
        jscope *s = scope_new(r, saved);
        if (!s)
            return NOMEM_R(r);
        L->index0 = i;
        jv lv = { .type = JV_LOOP, .u.loop = L };
        r->scope = s;
        rc = scope_set(r, s, "loop", lv);
        if (rc == RT_OK)
            rc = assign_targets(r, s, st->names, st->nnames, seq->items[i]);
        if (rc == RT_OK)
            rc = exec_body(r, st->b);
        r->scope = saved;
        if (rc == JX_BREAK)
            break;
        if (rc < 0)
            return rc;
    }
    if (seq->n == 0 && st->c)
        return exec_body(r, st->c);
    return RT_OK;
}

static int exec_set(jrender *r, const jnode *st)
{
    jv v;
    int rc = jinja_eval(r, st->a, &v);
    if (rc)
        return rc;
    r->line = st->line;
    if (st->flag) {
        const jv *ns = scope_get(r->scope, st->names[0], strlen(st->names[0]));
        if (!ns || ns->type != JV_NS)
            return jr_fail(r, RT_ERR_FORMAT, "cannot assign attribute on non-namespace object");
        if (jd_set(r->a, ns->u.dict, jv_str(st->str, st->len), v))
            return NOMEM_R(r);
        return RT_OK;
    }
    return assign_targets(r, r->scope, st->names, st->nnames, v);
}

/* Runs body with output going to a fresh buffer; *out the captured text. */
static int capture(jrender *r, const jnode *body, jv *out)
{
    jbuf buf = { 0 }, *saved = r->out;
    r->out = &buf;
    r->capture++;
    int rc = exec_body(r, body);
    r->capture--;
    r->out = saved;
    if (rc == RT_OK && buf.over)
        rc = jr_fail(r, RT_ERR_TOO_LARGE, "output too large");
    if (rc == RT_OK) {
        char *s = ja_strdup(r->a, buf.p ? buf.p : "", buf.n);
        if (!s)
            rc = jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached");
        else
            *out = jv_str(s, buf.n);
    }
    jb_free(&buf);
    return rc;
}

static int exec_generation(jrender *r, const jnode *st)
{
    size_t start = r->out->n;
    int rc = exec_body(r, st->b);
    if (rc || r->capture)
        return rc;
    if (r->nspans == r->capspans) {
        size_t cap = r->capspans ? r->capspans * 2 : 16;
        jinja_span *s = realloc(r->spans, cap * sizeof(*s));
        if (!s)
            return jr_fail(r, RT_ERR_NOMEM, "out of memory");
        r->spans = s;
        r->capspans = cap;
    }
    r->spans[r->nspans].start = start;
    r->spans[r->nspans].end = r->out->n;
    r->nspans++;
    return RT_OK;
}

static int exec_stmt(jrender *r, const jnode *st)
{
    jv v;
    int rc;
    r->line = st->line;
    switch (st->kind) {
    case JN_TEXT:
        if (jb_put(r->out, st->str, st->len))
            return jr_fail(r, RT_ERR_TOO_LARGE, "output larger than %zu bytes", (size_t)JINJA_MAX_OUTPUT);
        return RT_OK;
    case JN_OUTPUT:
        if ((rc = jinja_eval(r, st->a, &v)))
            return rc;
        return emit_value(r, v);
    case JN_IF:
        if ((rc = jinja_eval(r, st->a, &v)))
            return rc;
        if (jv_truthy(v))
            return exec_body(r, st->b);
        return st->c ? exec_stmt(r, st->c) : RT_OK;
    case JN_FOR:
        return exec_for(r, st);
    case JN_SET:
        return exec_set(r, st);
    case JN_SET_BLOCK:
        if ((rc = capture(r, st->b, &v)))
            return rc;
        return scope_set(r, r->scope, st->names[0], v);
    case JN_MACRO: {
        struct jmacro *m = ja_alloc(r->a, sizeof(*m));
        if (!m)
            return NOMEM_R(r);
        m->node = st;
        m->closure = r->scope;
        jv mv = { .type = JV_MACRO, .u.macro = m };
        return scope_set(r, r->scope, st->str, mv);
    }
    case JN_GENERATION:
        return exec_generation(r, st);
    case JN_FILTER_BLOCK:
        if ((rc = capture(r, st->b, &v)))
            return rc;
        for (size_t i = 0; i < st->n; i++)
            if ((rc = eval_filter(r, st->items[i], v, &v)))
                return rc;
        return emit_value(r, v);
    case JN_BREAK:
        return JX_BREAK;
    case JN_CONTINUE:
        return JX_CONTINUE;
    case JN_BODY:
        return exec_body(r, st);
    default:
        return jr_fail(r, RT_ERR_FORMAT, "not a statement");
    }
}

static int exec_body(jrender *r, const jnode *body)
{
    for (size_t i = 0; i < body->n; i++) {
        int rc = exec_stmt(r, body->items[i]);
        if (rc)
            return rc;
    }
    return RT_OK;
}

/* ---------------------------------------------------------------- the door */

int jinja_compile(const char *source, jinja_template **out, char *err, size_t errsize)
{
    if (err && errsize)
        err[0] = 0;
    if (!source || !out)
        return RT_ERR_INVALID;
    jinja_template *t = calloc(1, sizeof(*t));
    if (!t)
        return RT_ERR_NOMEM;
    t->arena.limit = (size_t)256 << 20;
    jtokens toks = { 0 };
    int rc = jinja_lex(&t->arena, source, &toks, err, errsize);
    if (rc == RT_OK)
        rc = jinja_parse(&t->arena, &toks, &t->root, err, errsize);
    if (rc) {
        jinja_free(t);
        return rc;
    }
    *out = t;
    return RT_OK;
}

void jinja_free(jinja_template *t)
{
    if (!t)
        return;
    ja_free(&t->arena);
    free(t);
}

void jinja_spans_free(jinja_spans *spans)
{
    if (!spans)
        return;
    free(spans->items);
    spans->items = NULL;
    spans->count = 0;
}

static int load_ctx(jrender *r, const cJSON *ctx)
{
    if (!ctx)
        return RT_OK;
    if (!cJSON_IsObject(ctx))
        return jr_fail(r, RT_ERR_INVALID, "render variables must be a JSON object");
    for (const cJSON *c = ctx->child; c; c = c->next) {
        jv v;
        int rc = jv_from_json(r->a, c, &v, 0);
        if (rc)
            return jr_fail(r, rc, "render variables too large or too deep");
        if (!c->string)
            continue;
        if ((rc = scope_set(r, r->globals, c->string, v)))
            return rc;
    }
    return RT_OK;
}

static int render(const jinja_template *t, const cJSON *ctx, int64_t now, char **out, size_t *len,
                  jinja_spans *spans, char *err, size_t errsize)
{
    if (err && errsize)
        err[0] = 0;
    if (!t || !out)
        return RT_ERR_INVALID;
    jarena arena = { 0 };
    jbuf buf = { 0 };
    jrender r = { .a = &arena, .out = &buf, .now = now, .err = err, .errsize = errsize };
    int rc = RT_OK;
    r.globals = scope_new(&r, NULL);
    r.scope = r.globals ? scope_new(&r, r.globals) : NULL;
    if (!r.scope)
        rc = RT_ERR_NOMEM;
    if (rc == RT_OK)
        rc = load_ctx(&r, ctx);
    if (rc == RT_OK)
        rc = exec_body(&r, t->root);
    if (rc > 0)
        rc = RT_OK;
    if (rc == RT_OK && buf.over)
        rc = jr_fail(&r, RT_ERR_TOO_LARGE, "output too large");
    if (rc == RT_OK && !buf.p && jb_put(&buf, "", 0))
        rc = RT_ERR_NOMEM;
    if (rc == RT_OK) {
        *out = buf.p;
        if (len)
            *len = buf.n;
        if (spans) {
            spans->items = r.spans;
            spans->count = r.nspans;
            r.spans = NULL;
        }
    } else
        jb_free(&buf);
    free(r.spans);
    ja_free(&arena);
    return rc;
}

int jinja_render(const jinja_template *t, const cJSON *ctx, char **out, size_t *len,
                 jinja_spans *spans, char *err, size_t errsize)
{
    return render(t, ctx, -1, out, len, spans, err, errsize);
}

int jinja_render_at(const jinja_template *t, const cJSON *ctx, int64_t now_unix,
                    char **out, size_t *len, jinja_spans *spans, char *err, size_t errsize)
{
    return render(t, ctx, now_unix < 0 ? 0 : now_unix, out, len, spans, err, errsize);
}
