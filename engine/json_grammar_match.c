/*
 * engine/json_grammar_match.c — following one generation through a
 * compiled grammar, byte by byte, and masking a vocabulary with it.
 *
 * The state is a set of stacks (one per anyOf alternative still alive,
 * duplicates merged). A stack is a pushdown automaton over bytes: one frame
 * per open value (object, array, string, number, enum literal), each with
 * its phase. A value is only entered when its mind fits in the frames left,
 * keys only offered while their value fits, "," only when another key can
 * follow, so every live state can still finish: no dead ends.
 *
 * The mask walks the vocabulary trie in preorder with one state per trie
 * level, so a shared prefix is fed once and a rejected prefix prunes its
 * whole subtree; inside strings and keys a level is just the changed top
 * frame (see jg_level).
 */
#include "engine/json_grammar_internal.h"

#include "common/rt.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct jg_frame {
    uint64_t seen;       /* OBJECT: properties present */
    uint64_t cand;       /* OBJECT key: properties it may still be; ENUM: bytes matched */
    uint32_t a;          /* ARRAY: items begun; STRING: code points; NUMBER: digits
                            in this part; OBJECT: key bytes; ENUM: first literal left */
    uint32_t b;          /* STRING: \u value; OBJECT: value's node; ENUM: past last left */
    int32_t node;
    uint8_t phase;
    uint8_t esc;         /* STRING / key: escape state */
    uint8_t utf8;        /* UTF-8 continuation bytes still due */
    uint8_t uflag;       /* range of the next continuation byte (see utf8_step) */
} jg_frame;

typedef struct jg_stack {
    uint8_t depth, ws, dead, pad[5];
    jg_frame f[JG_MAX_DEPTH];
} jg_stack;

typedef struct jg_state {
    int n, pad;
    jg_stack s[JG_MAX_STACKS];
} jg_state;

struct json_matcher {
    const json_grammar *g;
    jg_state cur, tmp[2];
};

struct json_vocab {
    int n_tokens, n_nodes, max_depth;
    uint8_t *byte;       /* per trie node (preorder; 0 is the root) */
    uint32_t *depth;
    int32_t *end;        /* one past the node's subtree */
    int32_t *tok;        /* first token ending here, -1 */
    int32_t *next;       /* per token: next token with the same bytes, -1 */
};

enum { R_BAD, R_OK, R_WS, R_CLOSE, R_POP, R_PUSH, R_PUSH_REFEED };
enum { O_START, O_KEY_OR_END, O_KEY_NEXT, O_KEY, O_COLON, O_COMMA_OR_END };
enum { A_START, A_FIRST, A_AFTER };
enum { S_START, S_BODY };
enum { N_START, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

static int feed(const json_grammar *g, jg_state *st, int j, uint8_t c);

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Whether c continues valid UTF-8 after (*need, *range) (RFC 3629: no
 * overlongs, surrogates or code points past U+10FFFF); updates them. */
static int utf8_step(uint8_t *need, uint8_t *range, uint8_t c)
{
    if (*need) {
        uint8_t lo = 0x80, hi = 0xBF;
        if (*range == 1) lo = 0xA0;
        if (*range == 2) hi = 0x9F;
        if (*range == 3) lo = 0x90;
        if (*range == 4) hi = 0x8F;
        if (c < lo || c > hi)
            return 0;
        (*need)--;
        *range = 0;
        return 1;
    }
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        *need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        *need = 2, *range = c == 0xE0 ? 1 : c == 0xED ? 2 : 0;
    else if (c >= 0xF0 && c <= 0xF4)
        *need = 3, *range = c == 0xF0 ? 3 : c == 0xF4 ? 4 : 0;
    else
        return 0;
    return 1;
}

static void copy_stack(jg_stack *dst, const jg_stack *src)
{
    memcpy(dst, src, offsetof(jg_stack, f) + src->depth * sizeof(jg_frame));
}

static void copy_state(jg_state *dst, const jg_state *src)
{
    dst->n = src->n;
    for (int i = 0; i < src->n; i++)
        copy_stack(&dst->s[i], &src->s[i]);
}

/* Whether a value of node fits in the frames above stack s. */
static int fits(const json_grammar *g, const jg_stack *s, int node)
{
    return s->depth + g->nodes[node].mind <= JG_MAX_DEPTH;
}

static void push_frame(const json_grammar *g, jg_stack *s, int node)
{
    jg_frame *f = &s->f[s->depth++];
    memset(f, 0, sizeof *f);
    f->node = node;
    if (g->nodes[node].kind == JG_ENUM) {
        f->a = (uint32_t)g->nodes[node].first;
        f->b = (uint32_t)(g->nodes[node].first + g->nodes[node].count);
    }
}

/* Opens a value of node on stack j (forking a stack per alternative of a
 * union, while room lasts), then feeds it c unless c < 0. Returns whether
 * stack j lives; dead forks are marked. */
static int push(const json_grammar *g, jg_state *st, int j, int node, int c)
{
    int n = jg_final(g, node);
    const jg_node *nd = &g->nodes[n];
    if (nd->kind != JG_UNION) {
        push_frame(g, &st->s[j], n);
        return c < 0 ? 1 : feed(g, st, j, (uint8_t)c);
    }
    int first = -1;
    for (int i = 0; i < nd->fcount; i++) {
        int a = g->flat[nd->ffirst + i];
        if (!fits(g, &st->s[j], a))
            continue;
        if (first < 0) {
            first = a;
            continue;
        }
        if (st->n >= JG_MAX_STACKS)
            break;
        int k = st->n++;
        copy_stack(&st->s[k], &st->s[j]);
        push_frame(g, &st->s[k], a);
        if (c >= 0 && !feed(g, st, k, (uint8_t)c))
            st->s[k].dead = 1;
    }
    if (first < 0)
        return 0;
    push_frame(g, &st->s[j], first);
    return c < 0 ? 1 : feed(g, st, j, (uint8_t)c);
}

static uint64_t all_props(const jg_node *n)
{
    return n->count >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n->count) - 1);
}

/* Properties that may still be written in object frame f (top of s). */
static uint64_t avail_props(const json_grammar *g, const jg_node *n, const jg_stack *s, const jg_frame *f)
{
    return all_props(n) & ~f->seen & g->fitmask[n->fit + s->depth - 1];
}

/* Whether keys outside "properties" may be written here. */
static int free_ok(const json_grammar *g, const jg_node *n, const jg_stack *s)
{
    return n->child >= 0 && fits(g, s, n->child);
}

static int key_possible(const json_grammar *g, const jg_node *n, const jg_stack *s, const jg_frame *f)
{
    return avail_props(g, n, s, f) != 0 || free_ok(g, n, s);
}

static void key_start(const jg_node *n, jg_frame *f)
{
    f->cand = all_props(n);
    f->a = 0;
    f->esc = f->utf8 = f->uflag = 0;
    f->phase = O_KEY;
}

/* The closing quote of a key: a property not yet present whose value
 * fits, or a free key when additionalProperties allows one. */
static int key_close(const json_grammar *g, const jg_node *n, const jg_stack *s, jg_frame *f)
{
    for (uint64_t m = f->cand; m; m &= m - 1) {
        int p = __builtin_ctzll(m);
        const jg_prop *pr = &g->props[n->first + p];
        if (pr->len != f->a)
            continue;
        if (!((avail_props(g, n, s, f) >> p) & 1))
            return R_BAD;
        f->seen |= (uint64_t)1 << p;
        f->b = (uint32_t)pr->node;
        f->phase = O_COLON;
        return R_OK;
    }
    if (!free_ok(g, n, s))
        return R_BAD;
    f->b = (uint32_t)n->child;
    f->phase = O_COLON;
    return R_OK;
}

/* One byte of a key: it must continue an available property name, or
 * (if free keys are allowed) any UTF-8 without escapes, bounded. */
static int key_byte(const json_grammar *g, const jg_node *n, const jg_stack *s, jg_frame *f, uint8_t c)
{
    if (!f->esc && !f->utf8 && c == '"')
        return key_close(g, n, s, f);
    if (c < 0x20)
        return R_BAD;
    uint8_t need = f->utf8, range = f->uflag;
    int starts_char = need == 0;
    if (!utf8_step(&need, &range, c))
        return R_BAD;
    uint64_t nc = 0;
    for (uint64_t m = f->cand; m; m &= m - 1) {
        int p = __builtin_ctzll(m);
        const jg_prop *pr = &g->props[n->first + p];
        if (pr->len > f->a && (uint8_t)pr->name[f->a] == c)
            nc |= (uint64_t)1 << p;
    }
    if (!(nc & avail_props(g, n, s, f))) {
        if (!free_ok(g, n, s) || f->esc || c == '\\')
            return R_BAD;
        if (starts_char && f->a >= g->key_max)
            return R_BAD;
    }
    f->cand = nc;
    f->a++;
    f->esc = !f->esc && c == '\\';
    f->utf8 = need;
    f->uflag = range;
    return R_OK;
}

static int object_feed(const json_grammar *g, const jg_stack *s, jg_frame *f, uint8_t c, int *child)
{
    const jg_node *n = &g->nodes[f->node];
    if (f->phase == O_KEY)
        return key_byte(g, n, s, f, c);
    if (is_ws(c))
        return R_WS;
    switch (f->phase) {
    case O_START:
        if (c != '{')
            return R_BAD;
        f->phase = O_KEY_OR_END;
        return R_OK;
    case O_KEY_OR_END:
    case O_COMMA_OR_END:
        if (c == '}')
            return (n->required & ~f->seen) ? R_BAD : R_CLOSE;
        if (c == (f->phase == O_KEY_OR_END ? '"' : ',') && key_possible(g, n, s, f)) {
            if (f->phase == O_KEY_OR_END)
                key_start(n, f);
            else
                f->phase = O_KEY_NEXT;
            return R_OK;
        }
        return R_BAD;
    case O_KEY_NEXT:
        if (c != '"')
            return R_BAD;
        key_start(n, f);
        return R_OK;
    case O_COLON:
        if (c != ':')
            return R_BAD;
        f->phase = O_COMMA_OR_END;
        *child = (int)f->b;
        return R_PUSH;
    }
    return R_BAD;
}

static int array_feed(const json_grammar *g, const jg_stack *s, jg_frame *f, uint8_t c, int *child)
{
    const jg_node *n = &g->nodes[f->node];
    if (is_ws(c))
        return R_WS;
    switch (f->phase) {
    case A_START:
        if (c != '[')
            return R_BAD;
        f->phase = A_FIRST;
        return R_OK;
    case A_FIRST:
        if (c == ']')
            return n->min == 0 ? R_CLOSE : R_BAD;
        if (n->max == 0 || !fits(g, s, n->child))
            return R_BAD;
        f->a = 1;
        f->phase = A_AFTER;
        *child = n->child;
        return R_PUSH_REFEED;
    case A_AFTER:
        if (c == ']')
            return f->a >= n->min ? R_CLOSE : R_BAD;
        if (c != ',' || (n->max >= 0 && f->a >= n->max) || !fits(g, s, n->child))
            return R_BAD;
        f->a++;
        *child = n->child;
        return R_PUSH;
    }
    return R_BAD;
}

/* A byte of a \u escape: no lone low surrogate, no \u0000, a high
 * surrogate only followed by its low one. */
static int string_escape(jg_frame *f, uint8_t c)
{
    int h = hexval(c);
    switch (f->esc) {
    case 1:
        if (c == 'u') {
            f->esc = 2;
            f->b = 0;
            return R_OK;
        }
        if (!c || !strchr("\"\\/bfnrt", c))
            return R_BAD;
        f->esc = 0;
        return R_OK;
    case 2: case 3: case 4: case 5:
        if (h < 0)
            return R_BAD;
        f->b = f->b * 16 + (uint32_t)h;
        if (f->esc == 3 && f->b >= 0xDC && f->b <= 0xDF)
            return R_BAD;
        if (f->esc == 5) {
            if (f->b == 0)
                return R_BAD;
            f->esc = (f->b >= 0xD800 && f->b <= 0xDBFF) ? 6 : 0;
            return R_OK;
        }
        f->esc++;
        return R_OK;
    case 6: case 7: case 8:
        if (c != (f->esc == 6 ? '\\' : f->esc == 7 ? 'u' : 'D') && !(f->esc == 8 && c == 'd'))
            return R_BAD;
        f->esc++;
        return R_OK;
    case 9:
        if (h < 0xC)
            return R_BAD;
        f->esc = 10;
        return R_OK;
    default:    /* 10, 11: the last two hex digits of the low surrogate */
        if (h < 0)
            return R_BAD;
        f->esc = f->esc == 11 ? 0 : 11;
        return R_OK;
    }
}

static int string_feed(const json_grammar *g, jg_frame *f, uint8_t c)
{
    const jg_node *n = &g->nodes[f->node];
    if (f->phase == S_START) {
        if (is_ws(c))
            return R_WS;
        if (c != '"')
            return R_BAD;
        f->phase = S_BODY;
        return R_OK;
    }
    if (f->utf8)
        return utf8_step(&f->utf8, &f->uflag, c) ? R_OK : R_BAD;
    if (f->esc)
        return string_escape(f, c);
    if (c == '"')
        return (int64_t)f->a >= n->min ? R_CLOSE : R_BAD;
    if (c < 0x20 || (n->max >= 0 && (int64_t)f->a >= n->max))
        return R_BAD;
    if (c == '\\')
        f->esc = 1;
    else if (!utf8_step(&f->utf8, &f->uflag, c))
        return R_BAD;
    f->a++;
    return R_OK;
}

/* After an integer part: a fraction or exponent (not for integers), else
 * the number has ended and the byte is its parent's. */
static int number_tail(jg_frame *f, int integer, uint8_t c)
{
    if (!integer && c == '.') {
        f->phase = N_DOT;
        return R_OK;
    }
    if (!integer && (c == 'e' || c == 'E')) {
        f->phase = N_E;
        return R_OK;
    }
    return R_POP;
}

static int number_feed(const json_grammar *g, jg_frame *f, uint8_t c)
{
    int integer = g->nodes[f->node].kind == JG_INTEGER;
    int digit = c >= '0' && c <= '9';
    switch (f->phase) {
    case N_START:
        if (is_ws(c))
            return R_WS;
        if (c == '-') {
            f->phase = N_MINUS;
            return R_OK;
        }
        /* fall through */
    case N_MINUS:
        if (!digit)
            return R_BAD;
        f->phase = c == '0' ? N_ZERO : N_INT;
        f->a = 1;
        return R_OK;
    case N_ZERO:
        return number_tail(f, integer, c);
    case N_INT:
        if (digit && f->a < JG_NUM_DIGITS) {
            f->a++;
            return R_OK;
        }
        return number_tail(f, integer, c);
    case N_DOT:
    case N_ESIGN:
        if (!digit)
            return R_BAD;
        f->phase = f->phase == N_DOT ? N_FRAC : N_EXP;
        f->a = 1;
        return R_OK;
    case N_FRAC:
        if (digit && f->a < JG_NUM_DIGITS) {
            f->a++;
            return R_OK;
        }
        if (c == 'e' || c == 'E') {
            f->phase = N_E;
            return R_OK;
        }
        return R_POP;
    case N_E:
        if (c == '+' || c == '-') {
            f->phase = N_ESIGN;
            return R_OK;
        }
        if (!digit)
            return R_BAD;
        f->phase = N_EXP;
        f->a = 1;
        return R_OK;
    case N_EXP:
        if (digit && f->a < JG_EXP_DIGITS) {
            f->a++;
            return R_OK;
        }
        return R_POP;
    }
    return R_BAD;
}

/* First literal in [lo, hi) (which share pos bytes) whose byte at pos is
 * at least c (strict: more than c); a literal that ends at pos counts -1. */
static uint32_t lit_bound(const jg_lit *l, uint32_t lo, uint32_t hi, uint32_t pos, int c, int strict)
{
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int k = l[mid].len > pos ? (uint8_t)l[mid].s[pos] : -1;
        if (strict ? k <= c : k < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int enum_feed(const json_grammar *g, jg_frame *f, uint8_t c)
{
    uint32_t pos = (uint32_t)f->cand;
    if (pos == 0 && is_ws(c))
        return R_WS;
    uint32_t lo = lit_bound(g->lits, f->a, f->b, pos, c, 0);
    uint32_t hi = lit_bound(g->lits, lo, f->b, pos, c, 1);
    if (lo < hi) {
        f->a = lo;
        f->b = hi;
        f->cand++;
        return R_OK;
    }
    return g->lits[f->a].len == pos ? R_POP : R_BAD;
}

/* Whether the value of frame f may end here (numbers and enum literals
 * end only when the next byte is their parent's). */
static int may_end(const json_grammar *g, const jg_frame *f)
{
    int kind = g->nodes[f->node].kind;
    if (kind == JG_ENUM)
        return f->cand > 0 && g->lits[f->a].len == f->cand;
    if (kind == JG_NUMBER || kind == JG_INTEGER)
        return f->phase == N_ZERO || f->phase == N_INT || f->phase == N_FRAC || f->phase == N_EXP;
    return 0;
}

static int frame_feed(const json_grammar *g, const jg_stack *s, jg_frame *f, uint8_t c, int *child)
{
    switch (g->nodes[f->node].kind) {
    case JG_OBJECT: return object_feed(g, s, f, c, child);
    case JG_ARRAY: return array_feed(g, s, f, c, child);
    case JG_STRING: return string_feed(g, f, c);
    case JG_ENUM: return enum_feed(g, f, c);
    default: return number_feed(g, f, c);
    }
}

/* Feeds c to stack j of st; returns whether it lives. */
static int feed(const json_grammar *g, jg_state *st, int j, uint8_t c)
{
    for (;;) {
        jg_stack *s = &st->s[j];
        int child = -1, r = R_BAD;
        if (s->depth == 0)
            r = is_ws(c) ? R_WS : R_BAD;
        else
            r = frame_feed(g, s, &s->f[s->depth - 1], c, &child);
        switch (r) {
        case R_WS:
            if (s->ws >= JG_WS_MAX)
                return 0;
            s->ws++;
            return 1;
        case R_OK:
            s->ws = 0;
            return 1;
        case R_CLOSE:
            s->ws = 0;
            s->depth--;
            return 1;
        case R_POP:
            s->depth--;
            continue;
        case R_PUSH:
            s->ws = 0;
            return push(g, st, j, child, -1);
        case R_PUSH_REFEED:
            return push(g, st, j, child, c);
        default:
            return 0;
        }
    }
}

static int same_stack(const jg_stack *a, const jg_stack *b)
{
    return a->depth == b->depth &&
           memcmp(a, b, offsetof(jg_stack, f) + a->depth * sizeof(jg_frame)) == 0;
}

/* Drops dead and duplicate stacks, keeping order. */
static void compact(jg_state *st)
{
    int k = 0;
    for (int i = 0; i < st->n; i++) {
        if (st->s[i].dead)
            continue;
        int m = 0;
        while (m < k && !same_stack(&st->s[m], &st->s[i]))
            m++;
        if (m < k)
            continue;
        if (k != i)
            copy_stack(&st->s[k], &st->s[i]);
        k++;
    }
    st->n = k;
}

/* out = in after byte c (out->n == 0: c does not fit). */
static void step(const json_grammar *g, const jg_state *in, jg_state *out, uint8_t c)
{
    out->n = 0;
    for (int i = 0; i < in->n && out->n < JG_MAX_STACKS; i++) {
        int j = out->n++;
        copy_stack(&out->s[j], &in->s[i]);
        if (!feed(g, out, j, c))
            out->s[j].dead = 1;
    }
    if (out->n > 1 || (out->n == 1 && out->s[0].dead))
        compact(out);
}

int json_matcher_new(const json_grammar *g, json_matcher **out)
{
    if (!g || !out)
        return RT_ERR_INVALID;
    json_matcher *m = calloc(1, sizeof *m);
    if (!m)
        return RT_ERR_NOMEM;
    m->g = g;
    m->cur.n = 1;
    if (!push(g, &m->cur, 0, g->root, -1)) {
        free(m);
        return RT_ERR_INVALID;    /* unreachable: compile checked the root fits */
    }
    compact(&m->cur);
    *out = m;
    return RT_OK;
}

void json_matcher_free(json_matcher *m)
{
    free(m);
}

int json_matcher_copy(json_matcher *dst, const json_matcher *src)
{
    if (!dst || !src || dst->g != src->g)
        return RT_ERR_INVALID;
    if (dst != src)
        copy_state(&dst->cur, &src->cur);
    return RT_OK;
}

int json_matcher_advance(json_matcher *m, const char *bytes, size_t n)
{
    if (!m || (!bytes && n))
        return RT_ERR_INVALID;
    const jg_state *src = &m->cur;
    for (size_t i = 0; i < n; i++) {
        jg_state *dst = &m->tmp[i & 1];
        step(m->g, src, dst, (uint8_t)bytes[i]);
        if (dst->n == 0)
            return RT_ERR_INVALID;
        src = dst;
    }
    if (n)
        copy_state(&m->cur, src);
    return RT_OK;
}

bool json_matcher_done(const json_matcher *m)
{
    for (int i = 0; m && i < m->cur.n; i++) {
        const jg_stack *s = &m->cur.s[i];
        if (s->depth == 0 || (s->depth == 1 && may_end(m->g, &s->f[0])))
            return true;
    }
    return false;
}

typedef struct jg_tokref {
    const uint8_t *p;
    size_t len;
    int id;
} jg_tokref;

static int tokref_cmp(const void *a, const void *b)
{
    const jg_tokref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->p, y->p, n);
    if (r)
        return r;
    return (x->len > y->len) - (x->len < y->len);
}

/* Lays the sorted tokens out as a preorder trie in v. path: max_depth+1. */
static void vocab_build(json_vocab *v, const jg_tokref *r, int n, int32_t *path)
{
    const jg_tokref *prev = NULL;
    v->byte[0] = 0, v->depth[0] = 0, v->tok[0] = -1;
    v->n_nodes = 1;
    path[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t l = 0;
        size_t plen = prev ? prev->len : 0;
        while (prev && l < plen && l < r[i].len && prev->p[l] == r[i].p[l])
            l++;
        for (size_t d = plen; d > l; d--)
            v->end[path[d]] = v->n_nodes;
        for (size_t d = l; d < r[i].len; d++) {
            int node = v->n_nodes++;
            v->byte[node] = r[i].p[d];
            v->depth[node] = (uint32_t)d + 1;
            v->tok[node] = -1;
            path[d + 1] = node;
        }
        int node = path[r[i].len];
        v->next[r[i].id] = v->tok[node];
        v->tok[node] = r[i].id;
        prev = &r[i];
    }
    for (size_t d = prev ? prev->len : 0; d > 0; d--)
        v->end[path[d]] = v->n_nodes;
    v->end[0] = v->n_nodes;
}

int json_vocab_new(const char *const *token_bytes, const size_t *lens, int n_tokens, json_vocab **out)
{
    if (!out || n_tokens < 0 || (n_tokens && (!token_bytes || !lens)))
        return RT_ERR_INVALID;
    json_vocab *v = calloc(1, sizeof *v);
    jg_tokref *r = malloc(((size_t)n_tokens + 1) * sizeof *r);
    int32_t *path = NULL;
    size_t total = 1;
    int n = 0, rc = RT_ERR_NOMEM;
    if (!v || !r)
        goto fail;
    v->n_tokens = n_tokens;
    for (int i = 0; i < n_tokens; i++) {
        if (!lens[i])
            continue;
        if (!token_bytes[i] || lens[i] > 65536) {
            rc = RT_ERR_INVALID;
            goto fail;
        }
        r[n++] = (jg_tokref){(const uint8_t *)token_bytes[i], lens[i], i};
        total += lens[i];
        if ((int)lens[i] > v->max_depth)
            v->max_depth = (int)lens[i];
    }
    qsort(r, (size_t)n, sizeof *r, tokref_cmp);
    v->byte = malloc(total);
    v->depth = malloc(total * sizeof *v->depth);
    v->end = malloc(total * sizeof *v->end);
    v->tok = malloc(total * sizeof *v->tok);
    v->next = malloc(((size_t)n_tokens + 1) * sizeof *v->next);
    path = malloc(((size_t)v->max_depth + 1) * sizeof *path);
    if (!v->byte || !v->depth || !v->end || !v->tok || !v->next || !path)
        goto fail;
    vocab_build(v, r, n, path);
    free(path);
    free(r);
    *out = v;
    return RT_OK;
fail:
    free(path);
    free(r);
    json_vocab_free(v);
    return rc;
}

void json_vocab_free(json_vocab *v)
{
    if (!v)
        return;
    free(v->byte);
    free(v->depth);
    free(v->end);
    free(v->tok);
    free(v->next);
    free(v);
}

/* A mask level: its state is lv[base] with the single stack's top frame
 * replaced by top (base < own level), or lv[level] itself (base == level).
 * Bytes inside a string or key change only that frame, so most trie
 * levels are such deltas and cost a 32-byte copy, not a state copy. */
typedef struct jg_level {
    int base;
    int body;            /* 1: its state is one stack in a string body, 2: in a key, 0: else */
    jg_frame top;
} jg_level;

/* Sets li[d].body from level d's full state lv[d]. */
static void level_classify(const json_grammar *g, const jg_state *lv, jg_level *li, uint32_t d)
{
    const jg_state *b = &lv[d];
    li[d].base = (int)d;
    li[d].body = 0;
    if (b->n != 1 || b->s[0].depth == 0)
        return;
    const jg_frame *f = &b->s[0].f[b->s[0].depth - 1];
    int kind = g->nodes[f->node].kind;
    if (kind == JG_STRING && f->phase == S_BODY)
        li[d].body = 1;
    else if (kind == JG_OBJECT && f->phase == O_KEY)
        li[d].body = 2;
    if (li[d].body)
        li[d].top = *f;
}

/* Makes lv[d] hold level d's state in full. */
static void materialize(jg_state *lv, jg_level *li, uint32_t d)
{
    if (li[d].base == (int)d)
        return;
    copy_state(&lv[d], &lv[li[d].base]);
    jg_stack *s = &lv[d].s[0];
    s->f[s->depth - 1] = li[d].top;
    s->ws = 0;
    li[d].base = (int)d;
}

/* Level d = level d-1 after byte c; returns whether it lives. */
static int mask_step(const json_grammar *g, jg_state *lv, jg_level *li, uint32_t d, uint8_t c)
{
    jg_level *p = &li[d - 1];
    if (p->body) {
        jg_frame f = p->top;
        int r;
        if (p->body == 1) {
            r = string_feed(g, &f, c);
        } else {
            r = key_byte(g, &g->nodes[f.node], &lv[p->base].s[0], &f, c);
            if (r == R_OK && f.phase != O_KEY)
                r = R_PUSH;    /* the key closed: not a body any more */
        }
        if (r == R_BAD)
            return 0;
        if (r == R_OK) {
            li[d].base = p->base;
            li[d].body = p->body;
            li[d].top = f;
            return 1;
        }
    }
    materialize(lv, li, d - 1);
    step(g, &lv[d - 1], &lv[d], c);
    if (lv[d].n == 0)
        return 0;
    level_classify(g, lv, li, d);
    return 1;
}

int json_matcher_mask(const json_matcher *m, const json_vocab *v, uint8_t *allowed)
{
    if (!m || !v || (!allowed && v->n_tokens))
        return RT_ERR_INVALID;
    jg_state *lv = malloc(((size_t)v->max_depth + 1) * sizeof *lv);
    jg_level *li = malloc(((size_t)v->max_depth + 1) * sizeof *li);
    if (!lv || !li) {
        free(lv);
        free(li);
        return RT_ERR_NOMEM;
    }
    memset(allowed, 0, (size_t)v->n_tokens);
    copy_state(&lv[0], &m->cur);
    level_classify(m->g, lv, li, 0);
    for (int j = 1; j < v->n_nodes;) {
        if (!mask_step(m->g, lv, li, v->depth[j], v->byte[j])) {
            j = v->end[j];
            continue;
        }
        for (int32_t t = v->tok[j]; t >= 0; t = v->next[t])
            allowed[t] = 1;
        j++;
    }
    free(lv);
    free(li);
    return RT_OK;
}
