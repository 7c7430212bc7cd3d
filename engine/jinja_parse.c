/*
 * engine/jinja_parse.c — the Jinja parser: tokens to a syntax tree, with
 * Jinja2's operator precedence. Statements: if/elif/else, for (else, if
 * clause, unpacking), set (name, name.attr, tuples, block set), macro,
 * generation, filter, break/continue. Everything else is refused by name
 * and line. Filters and tests are resolved here, so an unknown one fails
 * at compile time as in Jinja2.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/rt.h"
#include "engine/jinja_int.h"

typedef struct parser {
    jarena *a;
    const jtoken *t;
    size_t n, pos;
    int depth;       /* nesting of expressions and blocks */
    int loops;       /* enclosing for loops (for break/continue) */
    char *err; size_t errsize;
} parser;

static int p_fail(parser *P, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int p_fail(parser *P, int line, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    jinja_vfail(P->err, P->errsize, line, fmt, ap);
    va_end(ap);
    return code;
}

static const jtoken *peek(parser *P) { return &P->t[P->pos]; }
static const jtoken *peek2(parser *P) { return P->pos + 1 < P->n ? &P->t[P->pos + 1] : &P->t[P->pos]; }
static const jtoken *next(parser *P)
{
    const jtoken *t = &P->t[P->pos];
    if (P->pos + 1 < P->n)
        P->pos++;
    return t;
}
static int tok_is(const jtoken *t, int type, const char *s)
{
    return t->type == type && t->n == strlen(s) && memcmp(t->s, s, t->n) == 0;
}
static int is_op(parser *P, const char *s) { return tok_is(peek(P), JT_OP, s); }
static int is_name(parser *P, const char *s) { return tok_is(peek(P), JT_NAME, s); }

static const char *tok_desc(const jtoken *t)
{
    switch (t->type) {
    case JT_EOF: return "end of template";
    case JT_BLOCK_END: return "end of statement block";
    case JT_VAR_END: return "end of print statement";
    default: return NULL;
    }
}

static int expect_fail(parser *P, const char *what)
{
    const jtoken *t = peek(P);
    const char *d = tok_desc(t);
    if (d)
        return p_fail(P, t->line, RT_ERR_FORMAT, "expected %s, got %s", what, d);
    return p_fail(P, t->line, RT_ERR_FORMAT, "expected %s, got '%.*s'", what,
                  (int)(t->n > 40 ? 40 : t->n), t->s);
}

static int expect_op(parser *P, const char *s)
{
    if (!is_op(P, s))
        return expect_fail(P, s);
    next(P);
    return RT_OK;
}

static jnode *node(parser *P, int kind, int line)
{
    jnode *n = ja_alloc(P->a, sizeof(*n));
    if (n) {
        n->kind = kind;
        n->line = line;
    }
    return n;
}

/* A growable array of node pointers, in the arena. */
typedef struct nvec { const jnode **v; size_t n, cap; } nvec;
static int nv_push(parser *P, nvec *v, const jnode *x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        const jnode **nv = ja_alloc(P->a, cap * sizeof(*nv));
        if (!nv)
            return p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "template too large");
        if (v->n)
            memcpy(nv, v->v, v->n * sizeof(*nv));
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return RT_OK;
}
typedef struct svec { const char **v; size_t n, cap; } svec;
static int sv_push(parser *P, svec *v, const char *s, size_t n)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        const char **nv = ja_alloc(P->a, cap * sizeof(*nv));
        if (!nv)
            return p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "template too large");
        if (v->n)
            memcpy(nv, v->v, v->n * sizeof(*nv));
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n] = ja_strdup(P->a, s, n);
    if (!v->v[v->n])
        return p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "template too large");
    v->n++;
    return RT_OK;
}

#define NOMEM(P) p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "template too large")

static int parse_expr(parser *P, int with_condexpr, const jnode **out);
static int parse_tuple(parser *P, int with_condexpr, int allow_empty, const jnode **out);
static int parse_unary(parser *P, int with_filter, const jnode **out);

/* ---------------------------------------------------------------- call arguments */

/* Parses "(a, b, key=c)" after the opening parenthesis was seen. */
static int parse_args(parser *P, jnode *n)
{
    nvec args = { 0 }, kwv = { 0 };
    svec kwn = { 0 };
    int rc = expect_op(P, "(");
    while (rc == RT_OK && !is_op(P, ")")) {
        if (args.n + kwn.n) {
            if ((rc = expect_op(P, ",")))
                break;
            if (is_op(P, ")"))
                break;
        }
        if (is_op(P, "*") || is_op(P, "**"))
            return p_fail(P, peek(P)->line, RT_ERR_UNSUPPORTED, "*args and **kwargs in calls are not supported");
        const jnode *e;
        if (peek(P)->type == JT_NAME && tok_is(peek2(P), JT_OP, "=")) {
            const jtoken *k = next(P);
            next(P);
            if ((rc = sv_push(P, &kwn, k->s, k->n)) || (rc = parse_expr(P, 1, &e)) ||
                (rc = nv_push(P, &kwv, e)))
                break;
            continue;
        }
        if (kwn.n)
            return p_fail(P, peek(P)->line, RT_ERR_FORMAT, "positional argument after keyword argument");
        if ((rc = parse_expr(P, 1, &e)) || (rc = nv_push(P, &args, e)))
            break;
    }
    if (rc == RT_OK)
        rc = expect_op(P, ")");
    n->items = args.v;
    n->n = args.n;
    n->kwnames = kwn.v;
    n->kwvals = kwv.v;
    n->nkw = kwn.n;
    return rc;
}

/* ---------------------------------------------------------------- primaries */

static int parse_list_like(parser *P, const char *close, int kind, int line, const jnode **out)
{
    jnode *n = node(P, kind, line);
    nvec items = { 0 }, vals = { 0 };
    if (!n)
        return NOMEM(P);
    int rc = RT_OK;
    while (!is_op(P, close)) {
        if (items.n && (rc = expect_op(P, ",")))
            return rc;
        if (is_op(P, close))
            break;
        const jnode *e;
        if ((rc = parse_expr(P, 1, &e)) || (rc = nv_push(P, &items, e)))
            return rc;
        if (kind == JN_DICT) {
            if ((rc = expect_op(P, ":")) || (rc = parse_expr(P, 1, &e)) || (rc = nv_push(P, &vals, e)))
                return rc;
        }
    }
    next(P);
    n->items = items.v;
    n->n = items.n;
    n->kwvals = vals.v;
    n->nkw = vals.n;
    *out = n;
    return RT_OK;
}

static int parse_primary(parser *P, const jnode **out)
{
    const jtoken *t = peek(P);
    int line = t->line;
    jnode *n;
    if (t->type == JT_NAME) {
        next(P);
        n = node(P, JN_CONST, line);
        if (!n)
            return NOMEM(P);
        if (tok_is(t, JT_NAME, "true") || tok_is(t, JT_NAME, "True"))
            n->val = jv_bool(1);
        else if (tok_is(t, JT_NAME, "false") || tok_is(t, JT_NAME, "False"))
            n->val = jv_bool(0);
        else if (tok_is(t, JT_NAME, "none") || tok_is(t, JT_NAME, "None"))
            n->val = jv_none();
        else {
            n->kind = JN_NAME;
            n->str = ja_strdup(P->a, t->s, t->n);
            n->len = t->n;
            if (!n->str)
                return NOMEM(P);
        }
        *out = n;
        return RT_OK;
    }
    if (t->type == JT_STRING) {
        /* adjacent string literals are joined */
        jbuf b = { 0 };
        while (peek(P)->type == JT_STRING) {
            const jtoken *s = next(P);
            jb_put(&b, s->s, s->n);
        }
        n = node(P, JN_CONST, line);
        char *s = n ? ja_strdup(P->a, b.p ? b.p : "", b.n) : NULL;
        size_t len = b.n;
        int over = b.over;
        jb_free(&b);
        if (!s || over)
            return NOMEM(P);
        n->val = jv_str(s, len);
        *out = n;
        return RT_OK;
    }
    if (t->type == JT_INT || t->type == JT_FLOAT) {
        next(P);
        n = node(P, JN_CONST, line);
        if (!n)
            return NOMEM(P);
        n->val = t->type == JT_INT ? jv_int(t->i) : jv_float(t->f);
        *out = n;
        return RT_OK;
    }
    if (tok_is(t, JT_OP, "(")) {
        next(P);
        int rc = parse_tuple(P, 1, 1, out);
        return rc ? rc : expect_op(P, ")");
    }
    if (tok_is(t, JT_OP, "[")) {
        next(P);
        return parse_list_like(P, "]", JN_LIST, line, out);
    }
    if (tok_is(t, JT_OP, "{")) {
        next(P);
        return parse_list_like(P, "}", JN_DICT, line, out);
    }
    return expect_fail(P, "an expression");
}

/* Parses "[...]" after an expression: an index or a slice. */
static int parse_subscript(parser *P, const jnode *obj, const jnode **out)
{
    int line = next(P)->line;
    const jnode *parts[3] = { 0 };
    int slice = 0, rc;
    for (int k = 0; k < 3; k++) {
        if (!is_op(P, ":") && !is_op(P, "]")) {
            if ((rc = parse_expr(P, 1, &parts[k])))
                return rc;
        }
        if (!is_op(P, ":"))
            break;
        next(P);
        slice = 1;
    }
    if ((rc = expect_op(P, "]")))
        return rc;
    jnode *n = node(P, slice ? JN_SLICE : JN_GETITEM, line);
    if (!n)
        return NOMEM(P);
    n->a = obj;
    if (slice) {
        const jnode **v = ja_alloc(P->a, 3 * sizeof(*v));
        if (!v)
            return NOMEM(P);
        memcpy(v, parts, sizeof parts);
        n->items = v;
        n->n = 3;
    } else
        n->b = parts[0];
    *out = n;
    return RT_OK;
}

static int parse_postfix(parser *P, const jnode **io)
{
    for (;;) {
        int rc;
        if (is_op(P, ".")) {
            int line = next(P)->line;
            const jtoken *t = peek(P);
            if (t->type != JT_NAME && t->type != JT_INT)
                return expect_fail(P, "an attribute name");
            next(P);
            jnode *n = node(P, t->type == JT_NAME ? JN_GETATTR : JN_GETITEM, line);
            if (!n)
                return NOMEM(P);
            n->a = *io;
            if (t->type == JT_NAME) {
                n->str = ja_strdup(P->a, t->s, t->n);
                n->len = t->n;
            } else {
                jnode *k = node(P, JN_CONST, line);
                if (!k)
                    return NOMEM(P);
                k->val = jv_int(t->i);
                n->b = k;
            }
            *io = n;
        } else if (is_op(P, "[")) {
            if ((rc = parse_subscript(P, *io, io)))
                return rc;
        } else if (is_op(P, "(")) {
            jnode *n = node(P, JN_CALL, peek(P)->line);
            if (!n)
                return NOMEM(P);
            n->a = *io;
            if ((rc = parse_args(P, n)))
                return rc;
            *io = n;
        } else
            return RT_OK;
    }
}

/* The node of a filter or a test (kind) applied to in, named by the next
 * token and looked up by find; what names it in errors ("filter", "test"). */
static int named_node(parser *P, int kind, int (*find)(const char *, size_t), const char *what,
                      const jnode *in, jnode **out)
{
    const jtoken *t = peek(P);
    if (t->type != JT_NAME)
        return expect_fail(P, kind == JN_FILTER ? "a filter name" : "a test name");
    next(P);
    int id = find(t->s, t->n);
    if (id < 0)
        return p_fail(P, t->line, RT_ERR_UNSUPPORTED, "unknown %s '%.*s'", what, (int)t->n, t->s);
    jnode *n = node(P, kind, t->line);
    if (!n)
        return NOMEM(P);
    n->a = in;
    n->op = id;
    n->str = ja_strdup(P->a, t->s, t->n);
    n->len = t->n;
    *out = n;
    return RT_OK;
}

static int parse_filter(parser *P, const jnode *in, const jnode **out)
{
    jnode *n = NULL;
    int rc = named_node(P, JN_FILTER, jinja_filter_id, "filter", in, &n);
    if (rc == RT_OK && is_op(P, "("))
        rc = parse_args(P, n);
    if (rc == RT_OK)
        *out = n;
    return rc;
}

/* "x is [not] name [args]": a test. */
static int parse_test(parser *P, const jnode *in, const jnode **out)
{
    int negated = 0;
    next(P);
    if (is_name(P, "not")) {
        next(P);
        negated = 1;
    }
    jnode *n = NULL;
    int named = named_node(P, JN_TEST, jinja_test_id, "test", in, &n);
    if (named)
        return named;
    n->flag = negated;
    const jtoken *k = peek(P);
    int rc = RT_OK;
    if (is_op(P, "(")) {
        rc = parse_args(P, n);
    } else if ((k->type == JT_NAME && !tok_is(k, JT_NAME, "else") && !tok_is(k, JT_NAME, "or") &&
                !tok_is(k, JT_NAME, "and") && !tok_is(k, JT_NAME, "if") && !tok_is(k, JT_NAME, "not") &&
                !tok_is(k, JT_NAME, "in") && !tok_is(k, JT_NAME, "is")) ||
               k->type == JT_STRING || k->type == JT_INT || k->type == JT_FLOAT ||
               tok_is(k, JT_OP, "[") || tok_is(k, JT_OP, "{")) {
        /* one argument without parentheses: "is divisibleby 3" */
        const jnode *arg;
        if ((rc = parse_unary(P, 0, &arg)))
            return rc;
        const jnode **v = ja_alloc(P->a, sizeof(*v));
        if (!v)
            return NOMEM(P);
        v[0] = arg;
        n->items = v;
        n->n = 1;
    }
    *out = n;
    return rc;
}

static int parse_unary(parser *P, int with_filter, const jnode **out)
{
    if (++P->depth > JINJA_MAX_NEST)
        return p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "expression nested too deeply");
    int rc;
    const jnode *e;
    if (is_op(P, "-") || is_op(P, "+")) {
        int line = peek(P)->line;
        int neg = is_op(P, "-");
        next(P);
        if ((rc = parse_unary(P, 0, &e)))
            return rc;
        jnode *n = node(P, neg ? JN_NEG : JN_POS, line);
        if (!n)
            return NOMEM(P);
        n->a = e;
        e = n;
    } else if ((rc = parse_primary(P, &e)))
        return rc;
    if ((rc = parse_postfix(P, &e)))
        return rc;
    while (with_filter) {
        if (is_op(P, "|")) {
            next(P);
            rc = parse_filter(P, e, &e);
        } else if (is_name(P, "is")) {
            rc = parse_test(P, e, &e);
        } else if (is_op(P, "(")) {
            jnode *n = node(P, JN_CALL, peek(P)->line);
            if (!n)
                return NOMEM(P);
            n->a = e;
            rc = parse_args(P, n);
            e = n;
        } else
            break;
        if (rc)
            return rc;
    }
    P->depth--;
    *out = e;
    return RT_OK;
}

/* ---------------------------------------------------------------- binary operators */

static int binop(parser *P, int op, int line, const jnode *l, const jnode *r, const jnode **out)
{
    jnode *n = node(P, JN_BINOP, line);
    if (!n)
        return NOMEM(P);
    n->op = op;
    n->a = l;
    n->b = r;
    *out = n;
    return RT_OK;
}

static int parse_pow(parser *P, const jnode **out)
{
    int rc = parse_unary(P, 1, out);
    while (rc == RT_OK && is_op(P, "**")) {
        int line = next(P)->line;
        const jnode *r;
        if ((rc = parse_unary(P, 1, &r)))
            return rc;
        rc = binop(P, JOP_POW, line, *out, r, out);
    }
    return rc;
}

static int parse_math2(parser *P, const jnode **out)
{
    int rc = parse_pow(P, out);
    for (;;) {
        int op = is_op(P, "*") ? JOP_MUL : is_op(P, "/") ? JOP_DIV : is_op(P, "//") ? JOP_FLOORDIV
               : is_op(P, "%") ? JOP_MOD : -1;
        if (rc || op < 0)
            return rc;
        int line = next(P)->line;
        const jnode *r;
        if ((rc = parse_pow(P, &r)))
            return rc;
        rc = binop(P, op, line, *out, r, out);
    }
}

static int parse_concat(parser *P, const jnode **out)
{
    int rc = parse_math2(P, out);
    while (rc == RT_OK && is_op(P, "~")) {
        int line = next(P)->line;
        const jnode *r;
        if ((rc = parse_math2(P, &r)))
            return rc;
        rc = binop(P, JOP_CONCAT, line, *out, r, out);
    }
    return rc;
}

static int parse_math1(parser *P, const jnode **out)
{
    int rc = parse_concat(P, out);
    for (;;) {
        int op = is_op(P, "+") ? JOP_ADD : is_op(P, "-") ? JOP_SUB : -1;
        if (rc || op < 0)
            return rc;
        int line = next(P)->line;
        const jnode *r;
        if ((rc = parse_concat(P, &r)))
            return rc;
        rc = binop(P, op, line, *out, r, out);
    }
}

static int compare_op(parser *P)
{
    static const struct { const char *s; int op; } ops[] = {
        { "==", JOP_EQ }, { "!=", JOP_NE }, { "<", JOP_LT }, { "<=", JOP_LE },
        { ">", JOP_GT }, { ">=", JOP_GE },
    };
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
        if (is_op(P, ops[k].s))
            return ops[k].op;
    if (is_name(P, "in"))
        return JOP_IN;
    if (is_name(P, "not") && tok_is(peek2(P), JT_NAME, "in"))
        return JOP_NOTIN;
    return -1;
}

static int parse_compare(parser *P, const jnode **out)
{
    const jnode *first;
    int rc = parse_math1(P, &first);
    if (rc)
        return rc;
    int op = compare_op(P);
    if (op < 0) {
        *out = first;
        return RT_OK;
    }
    nvec operands = { 0 };
    int ops[64];
    size_t nops = 0;
    int line = peek(P)->line;
    if ((rc = nv_push(P, &operands, first)))
        return rc;
    while ((op = compare_op(P)) >= 0) {
        if (nops == 64)
            return p_fail(P, line, RT_ERR_TOO_LARGE, "comparison chain too long");
        next(P);
        if (op == JOP_NOTIN)
            next(P);
        ops[nops++] = op;
        const jnode *r;
        if ((rc = parse_math1(P, &r)) || (rc = nv_push(P, &operands, r)))
            return rc;
    }
    jnode *n = node(P, JN_COMPARE, line);
    int *o = ja_alloc(P->a, nops * sizeof(int));
    if (!n || !o)
        return NOMEM(P);
    memcpy(o, ops, nops * sizeof(int));
    n->ops = o;
    n->items = operands.v;
    n->n = operands.n;
    *out = n;
    return RT_OK;
}

static int parse_not(parser *P, const jnode **out)
{
    if (is_name(P, "not")) {
        int line = next(P)->line;
        if (++P->depth > JINJA_MAX_NEST)
            return p_fail(P, line, RT_ERR_TOO_LARGE, "expression nested too deeply");
        const jnode *e;
        int rc = parse_not(P, &e);
        P->depth--;
        if (rc)
            return rc;
        jnode *n = node(P, JN_NOT, line);
        if (!n)
            return NOMEM(P);
        n->a = e;
        *out = n;
        return RT_OK;
    }
    return parse_compare(P, out);
}

static int parse_logic(parser *P, int is_or, const jnode **out)
{
    int rc = is_or ? parse_logic(P, 0, out) : parse_not(P, out);
    while (rc == RT_OK && is_name(P, is_or ? "or" : "and")) {
        int line = next(P)->line;
        const jnode *r;
        if ((rc = is_or ? parse_logic(P, 0, &r) : parse_not(P, &r)))
            return rc;
        jnode *n = node(P, is_or ? JN_OR : JN_AND, line);
        if (!n)
            return NOMEM(P);
        n->a = *out;
        n->b = r;
        *out = n;
    }
    return rc;
}

static int parse_expr(parser *P, int with_condexpr, const jnode **out)
{
    if (++P->depth > JINJA_MAX_NEST)
        return p_fail(P, peek(P)->line, RT_ERR_TOO_LARGE, "expression nested too deeply");
    int rc = parse_logic(P, 1, out);
    while (rc == RT_OK && with_condexpr && is_name(P, "if")) {
        int line = next(P)->line;
        jnode *n = node(P, JN_CONDEXPR, line);
        if (!n)
            return NOMEM(P);
        n->a = *out;
        if ((rc = parse_logic(P, 1, &n->b)))
            return rc;
        if (is_name(P, "else")) {
            next(P);
            if ((rc = parse_expr(P, 1, &n->c)))
                return rc;
        }
        *out = n;
    }
    P->depth--;
    return rc;
}

/* An expression, or several separated by commas: a tuple. */
static int parse_tuple(parser *P, int with_condexpr, int allow_empty, const jnode **out)
{
    int line = peek(P)->line;
    nvec items = { 0 };
    int comma = 0, rc;
    for (;;) {
        if (items.n) {
            if (!is_op(P, ","))
                break;
            next(P);
            comma = 1;
        }
        const jtoken *t = peek(P);
        if (t->type == JT_BLOCK_END || t->type == JT_VAR_END || tok_is(t, JT_OP, ")") ||
            (items.n && (tok_is(t, JT_NAME, "if") || tok_is(t, JT_NAME, "recursive"))))
            break;
        const jnode *e;
        if ((rc = parse_expr(P, with_condexpr, &e)) || (rc = nv_push(P, &items, e)))
            return rc;
    }
    if (items.n == 1 && !comma) {
        *out = items.v[0];
        return RT_OK;
    }
    if (items.n == 0 && !allow_empty)
        return expect_fail(P, "an expression");
    jnode *n = node(P, JN_TUPLE, line);
    if (!n)
        return NOMEM(P);
    n->items = items.v;
    n->n = items.n;
    *out = n;
    return RT_OK;
}

/* ---------------------------------------------------------------- statements */

static int parse_body(parser *P, const char *const *ends, const char *opener, int open_line,
                      const jnode **out, const jtoken **end_tok);

static int expect_block_end(parser *P)
{
    if (peek(P)->type != JT_BLOCK_END)
        return expect_fail(P, "end of statement block");
    next(P);
    return RT_OK;
}

static int parse_name_list(parser *P, svec *names)
{
    int rc;
    for (;;) {
        const jtoken *t = peek(P);
        if (t->type != JT_NAME)
            return expect_fail(P, "a name");
        next(P);
        if ((rc = sv_push(P, names, t->s, t->n)))
            return rc;
        if (!is_op(P, ","))
            return RT_OK;
        next(P);
    }
}

static int parse_for(parser *P, int line, jnode *n)
{
    static const char *const ends[] = { "endfor", "else", NULL };
    static const char *const ends2[] = { "endfor", NULL };
    svec names = { 0 };
    int rc;
    if (is_op(P, "("))
        return p_fail(P, line, RT_ERR_UNSUPPORTED, "parenthesized loop targets are not supported");
    if ((rc = parse_name_list(P, &names)))
        return rc;
    if (!is_name(P, "in"))
        return expect_fail(P, "'in'");
    next(P);
    if ((rc = parse_tuple(P, 0, 0, &n->a)))
        return rc;
    if (is_name(P, "if")) {
        next(P);
        if ((rc = parse_expr(P, 1, &n->d)))
            return rc;
    }
    if (is_name(P, "recursive"))
        return p_fail(P, line, RT_ERR_UNSUPPORTED, "recursive for loops are not supported");
    if ((rc = expect_block_end(P)))
        return rc;
    n->names = names.v;
    n->nnames = names.n;
    const jtoken *end;
    P->loops++;
    rc = parse_body(P, ends, "for", line, &n->b, &end);
    P->loops--;
    if (rc)
        return rc;
    if (tok_is(end, JT_NAME, "else")) {
        if ((rc = expect_block_end(P)) || (rc = parse_body(P, ends2, "for", line, &n->c, &end)))
            return rc;
    }
    return expect_block_end(P);
}

static int parse_if(parser *P, int line, jnode *n)
{
    static const char *const ends[] = { "elif", "else", "endif", NULL };
    static const char *const ends2[] = { "endif", NULL };
    int rc;
    const jtoken *end;
    if ((rc = parse_tuple(P, 0, 0, &n->a)) || (rc = expect_block_end(P)) ||
        (rc = parse_body(P, ends, "if", line, &n->b, &end)))
        return rc;
    if (tok_is(end, JT_NAME, "elif")) {
        jnode *e = node(P, JN_IF, end->line);
        if (!e)
            return NOMEM(P);
        n->c = e;
        return parse_if(P, end->line, e);
    }
    if (tok_is(end, JT_NAME, "else")) {
        if ((rc = expect_block_end(P)) || (rc = parse_body(P, ends2, "if", line, &n->c, &end)))
            return rc;
    }
    return expect_block_end(P);
}

static int parse_set(parser *P, int line, jnode *n)
{
    static const char *const ends[] = { "endset", NULL };
    svec names = { 0 };
    int rc;
    const jtoken *t = peek(P);
    if (t->type != JT_NAME)
        return expect_fail(P, "a name");
    if (tok_is(peek2(P), JT_OP, ".")) {
        next(P);
        next(P);
        const jtoken *attr = peek(P);
        if (attr->type != JT_NAME)
            return expect_fail(P, "an attribute name");
        next(P);
        if ((rc = sv_push(P, &names, t->s, t->n)))
            return rc;
        n->flag = 1;
        n->str = ja_strdup(P->a, attr->s, attr->n);
        n->len = attr->n;
    } else if ((rc = parse_name_list(P, &names)))
        return rc;
    n->names = names.v;
    n->nnames = names.n;
    if (is_op(P, "=")) {
        next(P);
        if ((rc = parse_tuple(P, 1, 0, &n->a)))
            return rc;
        return expect_block_end(P);
    }
    if (n->flag || names.n != 1)
        return expect_fail(P, "'='");
    if (is_op(P, "|"))
        return p_fail(P, line, RT_ERR_UNSUPPORTED, "filters on {%% set %%} blocks are not supported");
    n->kind = JN_SET_BLOCK;
    const jtoken *end;
    if ((rc = expect_block_end(P)) || (rc = parse_body(P, ends, "set", line, &n->b, &end)))
        return rc;
    return expect_block_end(P);
}

static int parse_macro(parser *P, int line, jnode *n)
{
    static const char *const ends[] = { "endmacro", NULL };
    const jtoken *t = peek(P);
    if (t->type != JT_NAME)
        return expect_fail(P, "a macro name");
    next(P);
    n->str = ja_strdup(P->a, t->s, t->n);
    n->len = t->n;
    svec names = { 0 };
    nvec defs = { 0 };
    int rc = expect_op(P, "(");
    while (rc == RT_OK && !is_op(P, ")")) {
        if (names.n && (rc = expect_op(P, ",")))
            return rc;
        const jtoken *k = peek(P);
        if (k->type != JT_NAME)
            return expect_fail(P, "a parameter name");
        next(P);
        const jnode *d = NULL;
        if (is_op(P, "=")) {
            next(P);
            if ((rc = parse_expr(P, 1, &d)))
                return rc;
        } else if (defs.n && defs.v[defs.n - 1])
            return p_fail(P, k->line, RT_ERR_FORMAT, "non-default argument follows default argument");
        if ((rc = sv_push(P, &names, k->s, k->n)) || (rc = nv_push(P, &defs, d)))
            return rc;
    }
    if (rc || (rc = expect_op(P, ")")) || (rc = expect_block_end(P)))
        return rc;
    n->names = names.v;
    n->nnames = names.n;
    n->kwvals = defs.v;
    n->nkw = defs.n;
    const jtoken *end;
    int loops = P->loops;
    P->loops = 0;
    rc = parse_body(P, ends, "macro", line, &n->b, &end);
    P->loops = loops;
    return rc ? rc : expect_block_end(P);
}

static int parse_filter_block(parser *P, int line, jnode *n)
{
    static const char *const ends[] = { "endfilter", NULL };
    nvec chain = { 0 };
    int rc;
    for (;;) {
        const jnode *f;
        if ((rc = parse_filter(P, NULL, &f)) || (rc = nv_push(P, &chain, f)))
            return rc;
        if (!is_op(P, "|"))
            break;
        next(P);
    }
    n->items = chain.v;
    n->n = chain.n;
    const jtoken *end;
    if ((rc = expect_block_end(P)) || (rc = parse_body(P, ends, "filter", line, &n->b, &end)))
        return rc;
    return expect_block_end(P);
}

static int parse_statement(parser *P, const jnode **out)
{
    static const char *const gen_ends[] = { "endgeneration", NULL };
    const jtoken *t = peek(P);
    int line = t->line;
    if (t->type != JT_NAME)
        return expect_fail(P, "a statement name");
    next(P);
    if (++P->depth > JINJA_MAX_NEST)
        return p_fail(P, line, RT_ERR_TOO_LARGE, "blocks nested too deeply");
    jnode *n = node(P, JN_BODY, line);
    if (!n)
        return NOMEM(P);
    int rc;
    if (tok_is(t, JT_NAME, "for")) {
        n->kind = JN_FOR;
        rc = parse_for(P, line, n);
    } else if (tok_is(t, JT_NAME, "if")) {
        n->kind = JN_IF;
        rc = parse_if(P, line, n);
    } else if (tok_is(t, JT_NAME, "set")) {
        n->kind = JN_SET;
        rc = parse_set(P, line, n);
    } else if (tok_is(t, JT_NAME, "macro")) {
        n->kind = JN_MACRO;
        rc = parse_macro(P, line, n);
    } else if (tok_is(t, JT_NAME, "generation")) {
        const jtoken *end;
        n->kind = JN_GENERATION;
        rc = expect_block_end(P);
        if (rc == RT_OK)
            rc = parse_body(P, gen_ends, "generation", line, &n->b, &end);
        if (rc == RT_OK)
            rc = expect_block_end(P);
    } else if (tok_is(t, JT_NAME, "filter")) {
        n->kind = JN_FILTER_BLOCK;
        rc = parse_filter_block(P, line, n);
    } else if (tok_is(t, JT_NAME, "break") || tok_is(t, JT_NAME, "continue")) {
        n->kind = tok_is(t, JT_NAME, "break") ? JN_BREAK : JN_CONTINUE;
        if (!P->loops)
            return p_fail(P, line, RT_ERR_FORMAT, "'%.*s' outside of a loop", (int)t->n, t->s);
        rc = expect_block_end(P);
    } else {
        static const char *const known[] = { "call", "include", "extends", "block", "import",
                                             "from", "with", "autoescape", "do", "trans", NULL };
        for (int k = 0; known[k]; k++)
            if (tok_is(t, JT_NAME, known[k]))
                return p_fail(P, line, RT_ERR_UNSUPPORTED, "{%% %s %%} is not supported", known[k]);
        return p_fail(P, line, RT_ERR_FORMAT, "unknown tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
    }
    P->depth--;
    *out = n;
    return rc;
}

/* Parses statements until one of the block names in ends (NULL-terminated;
 * NULL means the end of the template). *end_tok receives the name token
 * that ended the body (the block end after it is left for the caller). */
static int parse_body(parser *P, const char *const *ends, const char *opener, int open_line,
                      const jnode **out, const jtoken **end_tok)
{
    nvec items = { 0 };
    int rc;
    jnode *body = node(P, JN_BODY, peek(P)->line);
    if (!body)
        return NOMEM(P);
    for (;;) {
        const jtoken *t = peek(P);
        const jnode *s = NULL;
        if (t->type == JT_EOF) {
            if (ends)
                return p_fail(P, t->line, RT_ERR_FORMAT, "unexpected end of template: {%% %s %%} opened on line %d is not closed",
                              opener, open_line);
            break;
        }
        if (t->type == JT_TEXT) {
            next(P);
            jnode *x = node(P, JN_TEXT, t->line);
            if (!x)
                return NOMEM(P);
            x->str = t->s;
            x->len = t->n;
            s = x;
        } else if (t->type == JT_VAR_BEGIN) {
            next(P);
            jnode *x = node(P, JN_OUTPUT, t->line);
            if (!x)
                return NOMEM(P);
            if ((rc = parse_tuple(P, 1, 0, &x->a)))
                return rc;
            if (peek(P)->type != JT_VAR_END)
                return expect_fail(P, "end of print statement");
            next(P);
            s = x;
        } else if (t->type == JT_BLOCK_BEGIN) {
            const jtoken *name = peek2(P);
            for (int k = 0; ends && ends[k]; k++)
                if (tok_is(name, JT_NAME, ends[k])) {
                    next(P);
                    next(P);
                    *end_tok = name;
                    goto done;
                }
            static const char *const closers[] = { "endfor", "endif", "elif", "else", "endset",
                                                   "endmacro", "endgeneration", "endfilter", "endraw", NULL };
            for (int k = 0; closers[k]; k++)
                if (tok_is(name, JT_NAME, closers[k]))
                    return p_fail(P, name->line, RT_ERR_FORMAT, "unexpected '%s'%s%s%s", closers[k],
                                  opener ? " in {% " : "", opener ? opener : "", opener ? " %}" : "");
            next(P);
            if ((rc = parse_statement(P, &s)))
                return rc;
        } else
            return expect_fail(P, "text or a tag");
        if ((rc = nv_push(P, &items, s)))
            return rc;
    }
done:
    body->items = items.v;
    body->n = items.n;
    *out = body;
    return RT_OK;
}

int jinja_parse(jarena *a, const jtokens *toks, const jnode **root, char *err, size_t errsize)
{
    parser P = { .a = a, .t = toks->t, .n = toks->n, .err = err, .errsize = errsize };
    const jtoken *end = NULL;
    return parse_body(&P, NULL, NULL, 0, root, &end);
}
