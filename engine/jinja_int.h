/*
 * engine/jinja_int.h — what the files of the Jinja interpreter share (not
 * part of the module's door, engine/jinja.h): the arena, values, tokens,
 * the syntax tree and the render state.
 *
 * Memory: everything a compile or a render allocates lives in one arena per
 * compile or render, freed at once; values are never freed one by one.
 */
#ifndef RT_ENGINE_JINJA_INT_H
#define RT_ENGINE_JINJA_INT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/jinja.h"

/* Limits that keep hostile templates finite. */
#define JINJA_MAX_OUTPUT   ((size_t)64 << 20)  /* bytes of rendered text */
#define JINJA_MAX_ARENA    ((size_t)512 << 20) /* bytes of values per render */
#define JINJA_MAX_ITER     10000000L           /* loop iterations per render */
#define JINJA_MAX_RANGE    100000L             /* Jinja2's sandbox MAX_RANGE */
#define JINJA_MAX_CALLS    64                  /* nested macro calls */
#define JINJA_MAX_NEST     200                 /* parser nesting depth */

/* ---------------------------------------------------------------- arena */

typedef struct ja_block ja_block;
typedef struct jarena {
    ja_block *head;
    size_t total;  /* bytes held */
    size_t limit;  /* 0 = JINJA_MAX_ARENA */
    int over;      /* set once an allocation failed or passed the limit */
} jarena;

void *ja_alloc(jarena *a, size_t n);           /* zeroed; NULL on failure */
char *ja_strdup(jarena *a, const char *s, size_t n); /* NUL-terminated copy */
void ja_free(jarena *a);

/* ---------------------------------------------------------------- values */

enum jv_type {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR,
    JV_LIST, JV_DICT, JV_NS, JV_MACRO, JV_FUNC, JV_LOOP
};

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jnode jnode;
typedef struct jloop jloop;

typedef struct jv {
    uint8_t type;
    uint8_t tuple;   /* JV_LIST printed as a tuple */
    uint16_t fn;     /* JV_FUNC: which builtin */
    union {
        int b;
        int64_t i;
        double f;
        struct { const char *s; size_t n; } str; /* JV_STR; JV_UNDEF: hint */
        jlist *list;
        jdict *dict;   /* JV_DICT, JV_NS */
        const struct jmacro *macro;
        jloop *loop;
    } u;
    const struct jv *self; /* JV_FUNC: bound object of a method, or NULL */
} jv;

struct jlist { jv *items; size_t n, cap; };
struct jscope;
struct jmacro { const jnode *node; struct jscope *closure; };
struct jdict { jv *keys; jv *vals; size_t n, cap; };

struct jloop {
    size_t index0, length;
    const jlist *seq;
    int depth0;
};

jv jv_undef(const char *hint);
jv jv_none(void);
jv jv_bool(int b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_str(const char *s, size_t n);

jlist *jl_new(jarena *a, size_t cap);
int jl_push(jarena *a, jlist *l, jv v);
jdict *jd_new(jarena *a, size_t cap);
int jd_set(jarena *a, jdict *d, jv key, jv val);
const jv *jd_get(const jdict *d, const char *key, size_t n);
const jv *jd_getv(const jdict *d, jv key);

int jv_truthy(jv v);
int jv_equal(jv a, jv b);
/* Orders a and b as Python's < does; RT_ERR_FORMAT when they do not compare. */
int jv_compare(jv a, jv b, int *cmp);
const char *jv_type_name(jv v);

/* Python-style text of values, appended to a growable buffer. */
typedef struct jbuf {
    char *p;
    size_t n, cap;
    size_t limit;  /* 0 = JINJA_MAX_OUTPUT */
    int over;      /* 1 = too large, 2 = out of memory */
} jbuf;

int jb_put(jbuf *b, const char *s, size_t n);
int jb_putc(jbuf *b, char c);
void jb_free(jbuf *b);
int jv_write_str(jbuf *b, jv v);   /* str(v) */
int jv_write_repr(jbuf *b, jv v);  /* repr(v) */
int jv_write_float(jbuf *b, double f);
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys);
 * indent < 0 means None. RT_ERR_FORMAT for values JSON cannot hold. */
int jv_write_json(jbuf *b, jv v, int indent, const char *item_sep, const char *key_sep,
                  int sort_keys, int depth);
/* str(v) as a new arena string. */
int jv_to_str(jarena *a, jv v, jv *out);

struct cJSON;
int jv_from_json(jarena *a, const struct cJSON *j, jv *out, int depth);

/* UTF-8 helpers: the code point at s (advances *i), the number of code points. */
uint32_t ju_next(const char *s, size_t n, size_t *i);
size_t ju_count(const char *s, size_t n);
int ju_isspace(uint32_t c);
size_t ju_encode(uint32_t c, char *out);

/* ---------------------------------------------------------------- tokens */

enum jtok_type {
    JT_EOF, JT_TEXT, JT_BLOCK_BEGIN, JT_BLOCK_END, JT_VAR_BEGIN, JT_VAR_END,
    JT_NAME, JT_STRING, JT_INT, JT_FLOAT, JT_OP
};

typedef struct jtoken {
    int type;
    int line;
    const char *s;  /* text, name, operator or decoded string (arena) */
    size_t n;
    int64_t i;
    double f;
} jtoken;

typedef struct jtokens { jtoken *t; size_t n, cap; } jtokens;

int jinja_lex(jarena *a, const char *src, jtokens *out, char *err, size_t errsize);

/* ---------------------------------------------------------------- syntax tree */

enum jnode_kind {
    /* statements */
    JN_BODY, JN_TEXT, JN_OUTPUT, JN_IF, JN_FOR, JN_SET, JN_SET_BLOCK, JN_MACRO,
    JN_GENERATION, JN_FILTER_BLOCK, JN_BREAK, JN_CONTINUE,
    /* expressions */
    JN_CONST, JN_NAME, JN_GETATTR, JN_GETITEM, JN_SLICE, JN_CALL, JN_FILTER, JN_TEST,
    JN_NEG, JN_POS, JN_NOT, JN_AND, JN_OR, JN_BINOP, JN_COMPARE, JN_CONDEXPR,
    JN_LIST, JN_TUPLE, JN_DICT
};

/* Binary and comparison operators. */
enum jop {
    JOP_ADD, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW, JOP_CONCAT,
    JOP_EQ, JOP_NE, JOP_LT, JOP_LE, JOP_GT, JOP_GE, JOP_IN, JOP_NOTIN
};

struct jnode {
    int kind;
    int line;
    int op;          /* JN_BINOP operator; JN_FILTER / JN_TEST id */
    int flag;        /* JN_TEST: negated; JN_SET: target is name.attr */
    const jnode *a, *b, *c, *d;    /* children (see the parser) */
    const jnode **items; size_t n; /* args, list items, body, compare operands */
    const jnode **kwvals; const char **kwnames; size_t nkw; /* keyword args / dict values */
    const char **names; size_t nnames; /* for/set targets, macro parameters */
    const char *str; size_t len;   /* name, attribute, text */
    const int *ops;                /* JN_COMPARE: n-1 operators */
    jv val;                        /* JN_CONST */
};

int jinja_parse(jarena *a, const jtokens *toks, const jnode **root, char *err, size_t errsize);

/* ---------------------------------------------------------------- builtins */

/* Filter and test ids are looked up at compile time; -1 when unknown. */
int jinja_filter_id(const char *name, size_t n);
int jinja_test_id(const char *name, size_t n);

/* ---------------------------------------------------------------- render state */

typedef struct jscope jscope;
struct jscope {
    jscope *parent;
    const char **names;
    size_t *lens;
    jv *vals;
    size_t n, cap;
};

typedef struct jrender {
    jarena *a;
    jbuf *out;              /* current output (macros and block sets swap it) */
    jscope *globals;
    jscope *scope;
    int64_t now;            /* strftime_now clock; -1 = local wall clock */
    long iterations;
    int calls;
    int capture;            /* >0 while output goes to a capture buffer */
    jinja_span *spans; size_t nspans, capspans;
    int spans_nomem;
    char *err; size_t errsize;
    int line;               /* line of the node being evaluated */
} jrender;

/* Sets the render error "line N: ..." and returns code. */
int jr_fail(jrender *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int jinja_eval(jrender *r, const jnode *e, jv *out);
/* Calls a callable value (macro, builtin, method) with evaluated arguments. */
int jinja_call_value(jrender *r, jv fn, const jv *args, size_t nargs,
                     const char **kwnames, const jv *kwvals, size_t nkw, jv *out);
/* Attribute access a.name, as Jinja2's environment.getattr. */
int jinja_getattr(jrender *r, jv obj, const char *name, size_t n, jv *out);
/* Item access a[key], as Jinja2's environment.getitem. */
int jinja_getitem(jrender *r, jv obj, jv key, jv *out);
int jinja_apply_filter(jrender *r, int id, jv v, const jv *args, size_t nargs,
                       const char **kwnames, const jv *kwvals, size_t nkw, jv *out);
int jinja_apply_test(jrender *r, int id, jv v, const jv *args, size_t nargs, int *out);
/* Looks up a global function (range, namespace, ...) by name. */
int jinja_global(const char *name, size_t n, jv *out);
/* Iterates a value as a Python for loop would: a list of items. */
int jinja_iterate(jrender *r, jv v, jlist **out);

/* Builtin callables (JV_FUNC fn ids): globals then methods. */
enum jfn {
    JF_RANGE = 1, JF_NAMESPACE, JF_DICT, JF_RAISE, JF_STRFTIME, JF_LOOP_CYCLE,
    JF_METHOD_BASE = 100
};
int jinja_method_id(jv obj, const char *name, size_t n);
int jinja_call_builtin(jrender *r, jv fn, const jv *args, size_t nargs,
                       const char **kwnames, const jv *kwvals, size_t nkw, jv *out);

/* Finds keyword or positional argument i named name; NULL when absent. */
const jv *jinja_arg(const jv *args, size_t nargs, const char **kwnames, const jv *kwvals,
                    size_t nkw, size_t i, const char *name);

/* The render ran out of its memory budget (values live in an arena). */
#define NOMEM_R(r) jr_fail(r, RT_ERR_TOO_LARGE, "render memory limit reached")

/* Moves a buffer's text into the arena as a string value (frees b); a
 * buffer that went over the output limit is "output too large". */
int jinja_buf_value(jrender *r, jbuf *b, jv *out);

/* Formats "line N: " and the message into err (NULL or errsize 0: nothing):
 * the one error report of the lexer, the parser and the evaluator. */
void jinja_vfail(char *err, size_t errsize, int line, const char *fmt, va_list ap);

#endif
