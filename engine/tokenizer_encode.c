/*
 * engine/tokenizer_encode.c — text to ids, in Hugging Face's order:
 *   1. split out added tokens whose content is matched on raw text;
 *   2. normalize each remaining piece, then split out the added tokens
 *      matched on normalized text;
 *   3. pre-tokenize each text piece (Split regexes, ByteLevel, Metaspace);
 *   4. run the BPE model on each pre-token (tokenizer_bpe.c);
 *   5. with add_special, put the post-processor's ids around the result.
 * All scratch memory lives in one enc_ctx per call, so a const tokenizer
 * serves any number of threads.
 */
#include "engine/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

/* A piece of text between added tokens, or an added token (index >= 0). */
typedef struct tk_seg { size_t start, end; int32_t added; } tk_seg;
typedef struct tk_segs { tk_seg *p; size_t len, cap; } tk_segs;

/* A pre-token: bytes [off, off+len) of the arena; origin when it starts at
 * offset 0 of the caller's text (Metaspace's "first" scheme needs it). */
typedef struct tk_piece { size_t off, len; bool origin; } tk_piece;
typedef struct tk_pieces { tk_piece *p; size_t len, cap; } tk_pieces;

typedef struct enc_ctx {
    const tokenizer *tok;
    pcre2_match_data *md;
    tk_buf clean;         /* the input with invalid UTF-8 replaced */
    tk_buf norm;          /* normalized text of the current piece */
    tk_buf arena;         /* pre-token strings */
    tk_pieces *lvl;       /* per pre-tokenizer step: the pieces it made */
    tk_spans spans, spans2;
    tk_segs raw, sub;
    tk_bpe_scratch bpe;
    tk_ivec out;
    bool cont;            /* TOKENIZER_CONTINUE: no dummy prefix at origin */
    bool no_special;      /* TOKENIZER_PLAIN_TEXT: no special token is matched */
    const uint8_t *plain; /* or NULL: special tokens covering a marked byte of the
                             raw text are not matched (tokenizer_encode_plain) */
} enc_ctx;

/* ------------------------------------------------------------ small lists */

static int segs_push(tk_segs *v, size_t start, size_t end, int32_t added)
{
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        tk_seg *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->len++] = (tk_seg){ start, end, added };
    return RT_OK;
}

/* Appends a piece; empty ones are dropped, as Hugging Face drops them. */
static int pieces_push(tk_pieces *v, size_t off, size_t len, bool origin)
{
    if (len == 0)
        return RT_OK;
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        tk_piece *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->len++] = (tk_piece){ off, len, origin };
    return RT_OK;
}

/* ------------------------------------------------------------ added tokens */

/* Leftmost-longest match of the trie in s[pos..n): fills [*ms, *me) and
 * the added-token index; false when nothing matches. */
static bool trie_find(const tk_trie *t, const char *s, size_t n, size_t pos,
                      size_t *ms, size_t *me, int32_t *added)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t p = pos; p < n; p++) {
        if (!(t->first[u[p] >> 3] & (1u << (u[p] & 7))))
            continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t i = p; i < n; i++) {
            int32_t c = t->nodes[node].child;
            while (c >= 0 && t->nodes[c].byte != u[i])
                c = t->nodes[c].sibling;
            if (c < 0)
                break;
            node = c;
            if (t->nodes[node].added >= 0) {
                best = t->nodes[node].added;
                best_end = i + 1;
            }
        }
        if (best >= 0) {
            *ms = p;
            *me = best_end;
            *added = best;
            return true;
        }
    }
    return false;
}

/* Whether the character at s[0..n) is a word character (\w). */
static bool is_word_char(const enc_ctx *c, const char *s, size_t n)
{
    size_t k = tk_utf8_charlen((const unsigned char *)s, n);
    return pcre2_match(c->tok->word_re, (PCRE2_SPTR)s, k, 0,
                       PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, c->md, NULL) >= 0;
}

/* single_word: the match must not touch a word character on either side. */
static bool single_word_ok(const enc_ctx *c, const char *s, size_t n, size_t start, size_t stop)
{
    if (start > 0) {
        size_t b = start - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
            b--;
        if (is_word_char(c, s + b, start - b))
            return false;
    }
    return stop == n || !is_word_char(c, s + stop, n - stop);
}

/* Start of the run of whitespace that ends at s[end] (lstrip). */
static size_t space_run_before(const char *s, size_t end)
{
    size_t i = end;
    while (i > 0) {
        size_t b = i - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
            b--;
        uint32_t cp;
        if (!tk_utf8_decode((const unsigned char *)s + b, i - b, &cp) || !tk_is_whitespace(cp))
            break;
        i = b;
    }
    return i;
}

/* End of the run of whitespace that starts at s[start] (rstrip). */
static size_t space_run_after(const char *s, size_t n, size_t start)
{
    size_t i = start;
    while (i < n) {
        uint32_t cp;
        size_t k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!k || !tk_is_whitespace(cp))
            break;
        i += k;
    }
    return i;
}

/*
 * Splits s[0..n) into text pieces and added tokens (Hugging Face's
 * find_matches): leftmost-longest matches, single_word matches touching a
 * word dropped, lstrip/rstrip swallowing the whitespace around a token.
 */
/* Whether a special token matched at [ms, me) of the raw text is text. */
static bool special_is_text(const enc_ctx *c, bool raw, size_t ms, size_t me)
{
    if (c->no_special)
        return true;
    for (size_t i = ms; raw && c->plain && i < me; i++)
        if (c->plain[i])
            return true;
    return false;
}

static int split_added(enc_ctx *c, const tk_trie *t, const char *s, size_t n, tk_segs *out)
{
    out->len = 0;
    size_t done = 0, pos = 0, ms, me;
    int32_t idx;
    while (t->n && pos < n && trie_find(t, s, n, pos, &ms, &me, &idx)) {
        const tk_added *a = &c->tok->added[idx];
        size_t start = ms, stop = me;
        pos = me;
        if (a->special && special_is_text(c, t == &c->tok->trie_raw, ms, me)) {
            pos = ms + 1; /* the text goes to the model as text */
            continue;
        }
        if (a->single_word && !single_word_ok(c, s, n, ms, me))
            continue;
        if (a->lstrip)
            start = space_run_before(s, start);
        if (start < done)
            start = done;
        if (a->rstrip)
            stop = space_run_after(s, n, stop);
        if ((done < start && segs_push(out, done, start, -1) != RT_OK) ||
            segs_push(out, start, stop, idx) != RT_OK)
            return RT_ERR_NOMEM;
        done = stop;
        pos = pos < stop ? stop : pos;
    }
    if (done < n && segs_push(out, done, n, -1) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* ------------------------------------------------------------- normalizer */

/* Replaces every match of the pattern in s with content, appending to out. */
static int norm_replace(const tk_norm *st, const char *s, size_t n, tk_buf *out)
{
    pcre2_match_data *md = st->pat.re ? pcre2_match_data_create(1, NULL) : NULL;
    tk_spans spans = { 0 };
    int rc = md || !st->pat.re ? tk_pattern_spans(&st->pat, md, s, n, &spans) : RT_ERR_NOMEM;
    size_t clen = strlen(st->str);
    for (size_t i = 0; rc == RT_OK && i < spans.len; i++) {
        const tk_span *sp = &spans.p[i];
        rc = sp->match ? tk_buf_append(out, st->str, clen)
                       : tk_buf_append(out, s + sp->start, sp->end - sp->start);
    }
    free(spans.p);
    pcre2_match_data_free(md);
    return rc;
}

/* Applies one normalizer step to s[0..n), appending the result to out. */
static int norm_step(const tk_norm *st, const char *s, size_t n, tk_buf *out)
{
    switch (st->kind) {
    case TK_NORM_PREPEND:
        if (n && tk_buf_append(out, st->str, strlen(st->str)) != RT_OK)
            return RT_ERR_NOMEM;
        return tk_buf_append(out, s, n);
    case TK_NORM_REPLACE:
        return norm_replace(st, s, n, out);
    case TK_NORM_STRIP: {
        size_t a = st->left ? space_run_after(s, n, 0) : 0;
        size_t b = st->right ? space_run_before(s, n) : n;
        return tk_buf_append(out, s + a, b > a ? b - a : 0);
    }
    case TK_NORM_NFC:
    case TK_NORM_NFD:
    case TK_NORM_NFKC:
    case TK_NORM_NFKD:
        return tk_unicode_normalize(st->kind, s, n, out);
    case TK_NORM_LOWERCASE:
        return tk_lowercase(s, n, out);
    case TK_NORM_PRECOMPILED:
        return tk_charsmap_apply(st->map, s, n, out);
    }
    return tk_buf_append(out, s, n);
}

/* Runs the normalizer chain on s[0..n), appending the result to out;
 * no_prepend skips Prepend steps (text continuing a piece). */
int tk_normalize(const tokenizer *tok, const char *s, size_t n, bool no_prepend, tk_buf *out)
{
    tk_buf a = { 0 }, b = { 0 };
    int rc = tk_buf_append(&a, s, n);
    for (size_t i = 0; rc == RT_OK && i < tok->n_norms; i++) {
        if (no_prepend && tok->norms[i].kind == TK_NORM_PREPEND)
            continue;
        b.len = 0;
        rc = norm_step(&tok->norms[i], a.p, a.len, &b);
        tk_buf t = a;
        a = b;
        b = t;
    }
    if (rc == RT_OK)
        rc = tk_buf_append(out, a.p, a.len);
    tk_buf_free(&a);
    tk_buf_free(&b);
    return rc;
}

/* ---------------------------------------------------------- pre-tokenizer */

/* Hugging Face's split behaviours over the spans of one piece (spans ->
 * merged spans in c->spans2, same order). */
static int apply_behavior(enc_ctx *c, enum tk_split_behavior how)
{
    tk_spans *in = &c->spans, *out = &c->spans2;
    out->len = 0;
    if (out->cap < in->len) {
        tk_span *p = realloc(out->p, in->len * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        out->p = p;
        out->cap = in->len;
    }
    bool prev = false;
    if (how == TK_SPLIT_MERGED_NEXT) { /* folds from the end */
        for (size_t j = in->len; j-- > 0;) {
            tk_span s = in->p[j];
            if (s.match && !prev && out->len)
                out->p[out->len - 1].start = s.start;
            else
                out->p[out->len++] = s;
            prev = s.match;
        }
        for (size_t i = 0; i < out->len / 2; i++) {
            tk_span t = out->p[i];
            out->p[i] = out->p[out->len - 1 - i];
            out->p[out->len - 1 - i] = t;
        }
        return RT_OK;
    }
    for (size_t j = 0; j < in->len; j++) {
        tk_span s = in->p[j];
        bool merge = (how == TK_SPLIT_MERGED_PREV && s.match && !prev) ||
                     (how == TK_SPLIT_CONTIGUOUS && s.match == prev);
        if (how == TK_SPLIT_REMOVED && s.match)
            continue;
        if (merge && out->len)
            out->p[out->len - 1].end = s.end;
        else
            out->p[out->len++] = s;
        prev = s.match;
    }
    return RT_OK;
}

/* Splits each piece of in by a pattern with a behavior, into out. */
static int pre_split(enc_ctx *c, const tk_pattern *pat, enum tk_split_behavior how,
                     bool invert, const tk_pieces *in, tk_pieces *out)
{
    for (size_t i = 0; i < in->len; i++) {
        const tk_piece *p = &in->p[i];
        c->spans.len = 0;
        int rc = tk_pattern_spans(pat, c->md, c->arena.p + p->off, p->len, &c->spans);
        for (size_t j = 0; invert && j < c->spans.len; j++)
            c->spans.p[j].match = !c->spans.p[j].match;
        if (rc == RT_OK)
            rc = apply_behavior(c, how);
        for (size_t j = 0; rc == RT_OK && j < c->spans2.len; j++) {
            const tk_span *s = &c->spans2.p[j];
            rc = pieces_push(out, p->off + s->start, s->end - s->start, p->origin && s->start == 0);
        }
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* Appends the byte-level form of arena[off..off+len) as a new piece. */
static int bytelevel_piece(enc_ctx *c, size_t off, size_t len, bool origin, tk_pieces *out)
{
    size_t start = c->arena.len;
    if (tk_buf_reserve(&c->arena, 2 * len) != RT_OK)
        return RT_ERR_NOMEM;
    /* reserve first: the source bytes must not move while we read them */
    if (tk_bytelevel_encode(&c->arena, c->arena.p + off, len) != RT_OK)
        return RT_ERR_NOMEM;
    return pieces_push(out, start, c->arena.len - start, origin);
}

/* ByteLevel: optional prefix space, optional GPT-2 regex split, then each
 * piece's bytes mapped to the byte-level alphabet. */
static int pre_bytelevel(enc_ctx *c, const tk_pre *st, const tk_pieces *in, tk_pieces *out)
{
    for (size_t i = 0; i < in->len; i++) {
        tk_piece p = in->p[i];
        if (st->add_prefix_space && c->arena.p[p.off] != ' ' && !(p.origin && c->cont)) {
            size_t start = c->arena.len;
            if (tk_buf_reserve(&c->arena, p.len + 1) != RT_OK)
                return RT_ERR_NOMEM;
            c->arena.p[c->arena.len++] = ' ';
            memcpy(c->arena.p + c->arena.len, c->arena.p + p.off, p.len);
            c->arena.len += p.len;
            c->arena.p[c->arena.len] = '\0';
            p.off = start;
            p.len += 1;
        }
        if (!st->pat.re) {
            if (bytelevel_piece(c, p.off, p.len, p.origin, out) != RT_OK)
                return RT_ERR_NOMEM;
            continue;
        }
        c->spans.len = 0;
        int rc = tk_regex_spans(st->pat.re, c->md, c->arena.p + p.off, p.len, &c->spans);
        for (size_t j = 0; rc == RT_OK && j < c->spans.len; j++) {
            const tk_span *s = &c->spans.p[j];
            rc = bytelevel_piece(c, p.off + s->start, s->end - s->start,
                                 p.origin && s->start == 0, out);
        }
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* Metaspace: spaces become the replacement, which is prepended per the
 * scheme; with split, pieces are cut before each replacement. */
static int pre_metaspace(enc_ctx *c, const tk_pre *st, const tk_pieces *in, tk_pieces *out)
{
    size_t rlen = strlen(st->replacement);
    tk_pieces mid = { 0 };
    int rc = RT_OK;
    for (size_t i = 0; rc == RT_OK && i < in->len; i++) {
        const tk_piece p = in->p[i];
        size_t start = c->arena.len;
        for (size_t k = 0; rc == RT_OK && k < p.len; k++) {
            char ch = c->arena.p[p.off + k];
            rc = ch == ' ' ? tk_buf_append(&c->arena, st->replacement, rlen) : tk_buf_putc(&c->arena, ch);
        }
        if (rc != RT_OK)
            break;
        size_t len = c->arena.len - start;
        bool has = len >= rlen && memcmp(c->arena.p + start, st->replacement, rlen) == 0;
        bool prepend = !has && !(p.origin && c->cont) &&
                       (st->prepend == TK_PREPEND_ALWAYS ||
                        (st->prepend == TK_PREPEND_FIRST && p.origin));
        if (prepend) {
            size_t s2 = c->arena.len;
            rc = tk_buf_append(&c->arena, st->replacement, rlen);
            if (rc == RT_OK)
                rc = tk_buf_reserve(&c->arena, len);
            if (rc != RT_OK)
                break;
            memcpy(c->arena.p + c->arena.len, c->arena.p + start, len);
            c->arena.len += len;
            start = s2;
            len += rlen;
        }
        rc = pieces_push(st->split ? &mid : out, start, len, p.origin);
    }
    if (rc == RT_OK && st->split)
        rc = pre_split(c, &st->pat, TK_SPLIT_MERGED_NEXT, false, &mid, out);
    free(mid.p);
    return rc;
}

/*
 * Runs pre-tokenizer steps level.. on one piece, depth first, then the
 * model on each final pre-token. Depth first keeps the working set small
 * however long the text: strings a step makes are dropped on return.
 */
static int pre_and_model(enc_ctx *c, size_t level, tk_piece p)
{
    const tokenizer *tok = c->tok;
    if (level == tok->n_pres)
        return tk_bpe_word(tok, &c->bpe, c->arena.p + p.off, p.len, &c->out);
    const tk_pre *st = &tok->pres[level];
    tk_pieces in = { &p, 1, 1 }, *out = &c->lvl[level];
    size_t mark = c->arena.len;
    int rc;
    out->len = 0;
    if (st->kind == TK_PRE_SPLIT)
        rc = pre_split(c, &st->pat, st->behavior, st->invert, &in, out);
    else if (st->kind == TK_PRE_BYTELEVEL)
        rc = pre_bytelevel(c, st, &in, out);
    else
        rc = pre_metaspace(c, st, &in, out);
    for (size_t i = 0; rc == RT_OK && i < out->len; i++)
        rc = pre_and_model(c, level + 1, out->p[i]);
    c->arena.len = mark;
    return rc;
}

/* ------------------------------------------------------------------ encode */

/* Pre-tokenizes one text piece and runs the model on each pre-token. */
static int encode_words(enc_ctx *c, const char *s, size_t n, bool origin)
{
    c->arena.len = 0;
    if (tk_buf_append(&c->arena, s, n) != RT_OK)
        return RT_ERR_NOMEM;
    return pre_and_model(c, 0, (tk_piece){ 0, n, origin });
}

/* Normalizes a piece between raw added tokens, splits out the normalized
 * added tokens, and encodes the rest. */
static int encode_piece(enc_ctx *c, const char *s, size_t n, bool origin)
{
    const tokenizer *tok = c->tok;
    const char *t = s;
    size_t tn = n;
    if (tok->n_norms) {
        c->norm.len = 0;
        if (tk_normalize(tok, s, n, origin && c->cont, &c->norm) != RT_OK)
            return RT_ERR_NOMEM;
        t = c->norm.p;
        tn = c->norm.len;
    }
    int rc = split_added(c, &tok->trie_norm, t, tn, &c->sub);
    for (size_t i = 0; rc == RT_OK && i < c->sub.len; i++) {
        const tk_seg *g = &c->sub.p[i];
        if (g->added >= 0)
            rc = tk_ivec_push(&c->out, tok->added[g->added].id);
        else
            rc = encode_words(c, t + g->start, g->end - g->start, origin && g->start == 0);
    }
    return rc;
}

/* Steps 1-4 over the whole (valid UTF-8) text. */
static int encode_text(enc_ctx *c, const char *s, size_t n)
{
    int rc = split_added(c, &c->tok->trie_raw, s, n, &c->raw);
    for (size_t i = 0; rc == RT_OK && i < c->raw.len; i++) {
        const tk_seg *g = &c->raw.p[i];
        if (g->added >= 0)
            rc = tk_ivec_push(&c->out, c->tok->added[g->added].id);
        else
            rc = encode_piece(c, s + g->start, g->end - g->start, g->start == 0);
    }
    return rc;
}

/* Frees the scratch memory of a context (not c->out). */
static void enc_ctx_free(enc_ctx *c)
{
    pcre2_match_data_free(c->md);
    tk_buf_free(&c->clean);
    tk_buf_free(&c->norm);
    tk_buf_free(&c->arena);
    for (size_t i = 0; c->lvl && i < c->tok->n_pres; i++)
        free(c->lvl[i].p);
    free(c->lvl);
    free(c->spans.p);
    free(c->spans2.p);
    free(c->raw.p);
    free(c->sub.p);
    tk_bpe_scratch_free(&c->bpe);
}

/* The first special token's content in s[from..n); see tokenizer.h. */
bool tokenizer_find_special(const tokenizer *tok, const char *s, size_t n, size_t from,
                            size_t *start, size_t *len)
{
    size_t ms, me;
    int32_t idx;
    for (size_t pos = from; tok && s && pos < n && trie_find(&tok->trie_raw, s, n, pos, &ms, &me, &idx);
         pos = ms + 1)
        if (tok->added[idx].special) {
            *start = ms;
            *len = me - ms;
            return true;
        }
    return false;
}

/* Encodes text into ids; see tokenizer.h. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len,
                     bool add_special, int32_t **ids, size_t *n)
{
    return tokenizer_encode_ex(tok, text, len, add_special ? TOKENIZER_ADD_SPECIAL : 0, ids, n);
}

/* Encodes text into ids with flags; see tokenizer.h. */
int tokenizer_encode_ex(const tokenizer *tok, const char *text, size_t len,
                        unsigned flags, int32_t **ids, size_t *n)
{
    return tokenizer_encode_plain(tok, text, len, flags, NULL, ids, n);
}

/* Encodes text whose marked bytes are plain text; see tokenizer.h. */
int tokenizer_encode_plain(const tokenizer *tok, const char *text, size_t len, unsigned flags,
                           const uint8_t *plain, int32_t **ids, size_t *n)
{
    if (!tok || (!text && len) || !ids || !n)
        return RT_ERR_INVALID;
    bool add_special = flags & TOKENIZER_ADD_SPECIAL;
    enc_ctx c = { .tok = tok, .cont = flags & TOKENIZER_CONTINUE,
                  .no_special = flags & TOKENIZER_PLAIN_TEXT, .plain = plain };
    int rc = RT_OK;
    c.md = pcre2_match_data_create(1, NULL);
    c.lvl = calloc(tok->n_pres + 1, sizeof *c.lvl);
    if (!c.md || !c.lvl)
        rc = RT_ERR_NOMEM;
    const char *s = text ? text : "";
    if (rc == RT_OK && !tk_utf8_valid(s, len)) {
        rc = tk_utf8_lossy(&c.clean, s, len, false, NULL);
        s = c.clean.p;
        len = c.clean.len;
        c.no_special = c.no_special || plain; /* the marks no longer line up: all is text */
    }
    if (rc == RT_OK && add_special)
        rc = tk_ivec_append(&c.out, tok->prefix.p, tok->prefix.len);
    if (rc == RT_OK)
        rc = encode_text(&c, s, len);
    if (rc == RT_OK && add_special)
        rc = tk_ivec_append(&c.out, tok->suffix.p, tok->suffix.len);
    if (rc == RT_OK && !c.out.p && !(c.out.p = malloc(sizeof(int32_t))))
        rc = RT_ERR_NOMEM;
    enc_ctx_free(&c);
    if (rc != RT_OK) {
        tk_ivec_free(&c.out);
        return rc;
    }
    *ids = c.out.p;
    *n = c.out.len;
    return RT_OK;
}
