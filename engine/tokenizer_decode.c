/*
 * engine/tokenizer_decode.c — ids back to text, through the decoder chain
 * of tokenizer.json as Hugging Face runs it: each step maps a list of token
 * strings to a new list (ByteLevel, Replace, ByteFallback, Fuse, Strip,
 * Metaspace), and the final list is concatenated (joined by spaces when
 * there is no decoder at all).
 *
 * The same chain serves streaming, run on one token at a time in "raw"
 * mode: byte tokens are passed through undecoded so that the stream can
 * hold back an incomplete UTF-8 character until its next bytes arrive.
 */
#include "engine/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

/* A list of token strings: spans of one buffer. */
typedef struct tk_toks {
    tk_buf b;
    struct tk_tspan { size_t off, len; } *t;
    size_t n, cap;
} tk_toks;

/* Ends the token that started at byte start of l->b. */
static int toks_close(tk_toks *l, size_t start)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        struct tk_tspan *t = realloc(l->t, cap * sizeof *t);
        if (!t)
            return RT_ERR_NOMEM;
        l->t = t;
        l->cap = cap;
    }
    l->t[l->n++] = (struct tk_tspan){ start, l->b.len - start };
    return RT_OK;
}

/* Appends a whole token. */
static int toks_push(tk_toks *l, const char *s, size_t n)
{
    size_t start = l->b.len;
    if (tk_buf_append(&l->b, s, n) != RT_OK)
        return RT_ERR_NOMEM;
    return toks_close(l, start);
}

static void toks_free(tk_toks *l)
{
    tk_buf_free(&l->b);
    free(l->t);
    *l = (tk_toks){ 0 };
}

/* Where a chain runs: a whole decode, or one token of a stream. */
typedef struct dec_mode {
    bool stream;  /* one token of a stream: raw bytes, Strip only at the start */
    bool first;   /* stream: this token opens the output */
    bool fused;   /* a Fuse step has run */
} dec_mode;

/* Whether token i is the first of the output. */
static bool is_first(const dec_mode *m, size_t i)
{
    return i == 0 && (!m->stream || m->first);
}

/* ----------------------------------------------------------------- steps */

/* Replace: every occurrence of the pattern in each token. */
static int step_replace(const tk_dec *d, const tk_toks *in, tk_toks *out)
{
    size_t plen = strlen(d->pattern), clen = strlen(d->content);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->b.p + in->t[i].off, *end = s + in->t[i].len;
        size_t start = out->b.len;
        for (;;) {
            const char *hit = tk_find(s, (size_t)(end - s), d->pattern, plen);
            const char *stop = hit ? hit : end;
            if (tk_buf_append(&out->b, s, (size_t)(stop - s)) != RT_OK)
                return RT_ERR_NOMEM;
            if (!hit)
                break;
            if (tk_buf_append(&out->b, d->content, clen) != RT_OK)
                return RT_ERR_NOMEM;
            s = hit + plen;
        }
        if (toks_close(out, start) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* The byte a "<0xNN>" token stands for, or -1. */
static int byte_token_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Emits the collected bytes: one token when valid UTF-8 (or streaming),
 * else one U+FFFD per byte, as Hugging Face does. */
static int flush_bytes(tk_buf *bytes, const dec_mode *m, tk_toks *out)
{
    if (!bytes->len)
        return RT_OK;
    int rc = RT_OK;
    if (m->stream || tk_utf8_valid(bytes->p, bytes->len))
        rc = toks_push(out, bytes->p, bytes->len);
    else
        for (size_t k = 0; rc == RT_OK && k < bytes->len; k++)
            rc = toks_push(out, "\xEF\xBF\xBD", 3);
    bytes->len = 0;
    return rc;
}

/* ByteFallback: runs of <0xNN> tokens become the text of their bytes. */
static int step_bytefallback(const dec_mode *m, const tk_toks *in, tk_toks *out)
{
    tk_buf bytes = { 0 };
    int rc = RT_OK;
    for (size_t i = 0; rc == RT_OK && i < in->n; i++) {
        const char *s = in->b.p + in->t[i].off;
        int v = byte_token_value(s, in->t[i].len);
        if (v >= 0) {
            rc = tk_buf_putc(&bytes, (char)v);
            continue;
        }
        rc = flush_bytes(&bytes, m, out);
        if (rc == RT_OK)
            rc = toks_push(out, s, in->t[i].len);
    }
    if (rc == RT_OK)
        rc = flush_bytes(&bytes, m, out);
    tk_buf_free(&bytes);
    return rc;
}

/* Fuse: all tokens become one. */
static int step_fuse(dec_mode *m, const tk_toks *in, tk_toks *out)
{
    m->fused = true;
    if (tk_buf_append(&out->b, in->b.p ? in->b.p : "", in->b.len) != RT_OK)
        return RT_ERR_NOMEM;
    return toks_close(out, 0);
}

/* Strip: up to start leading and stop trailing copies of one character
 * from each token (after Fuse, in a stream: from the output's start). */
static int step_strip(const tk_dec *d, const dec_mode *m, const tk_toks *in, tk_toks *out)
{
    size_t cl = strlen(d->content);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->b.p + in->t[i].off;
        size_t a = 0, b = in->t[i].len;
        bool lead = !(m->stream && m->fused) || is_first(m, i);
        for (size_t k = 0; lead && k < d->start && cl && b - a >= cl && !memcmp(s + a, d->content, cl); k++)
            a += cl;
        for (size_t k = 0; !m->stream && k < d->stop && cl && b - a >= cl &&
                           !memcmp(s + b - cl, d->content, cl); k++)
            b -= cl;
        if (toks_push(out, s + a, b - a) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* Metaspace: the replacement becomes a space, and disappears in the first
 * token unless the prepend scheme is "never". */
static int step_metaspace(const tk_dec *d, const dec_mode *m, const tk_toks *in, tk_toks *out)
{
    size_t rl = strlen(d->replacement);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->b.p + in->t[i].off;
        size_t n = in->t[i].len, start = out->b.len;
        bool drop = is_first(m, i) && d->prepend != TK_PREPEND_NEVER;
        for (size_t k = 0; k < n;) {
            int rc;
            if (n - k >= rl && !memcmp(s + k, d->replacement, rl)) {
                rc = drop ? RT_OK : tk_buf_putc(&out->b, ' ');
                k += rl;
            } else {
                rc = tk_buf_putc(&out->b, s[k]);
                k++;
            }
            if (rc != RT_OK)
                return rc;
        }
        if (toks_close(out, start) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* ByteLevel: each token's characters back to bytes (tokens outside the
 * alphabet, like some added tokens, stay as they are), joined into one
 * token, made valid UTF-8 unless streaming. */
static int step_bytelevel(const dec_mode *m, const tk_toks *in, tk_toks *out)
{
    tk_buf bytes = { 0 };
    int rc = RT_OK;
    for (size_t i = 0; rc == RT_OK && i < in->n; i++) {
        const char *s = in->b.p + in->t[i].off;
        bool ok;
        rc = tk_bytelevel_decode(&bytes, s, in->t[i].len, &ok);
        if (rc == RT_OK && !ok)
            rc = tk_buf_append(&bytes, s, in->t[i].len);
    }
    if (rc == RT_OK)
        rc = m->stream ? tk_buf_append(&out->b, bytes.p, bytes.len)
                       : tk_utf8_lossy(&out->b, bytes.p ? bytes.p : "", bytes.len, false, NULL);
    if (rc == RT_OK)
        rc = toks_close(out, 0);
    tk_buf_free(&bytes);
    return rc;
}

/* Runs one decoder step from in to out. */
static int run_step(const tk_dec *d, dec_mode *m, const tk_toks *in, tk_toks *out)
{
    switch (d->kind) {
    case TK_DEC_BYTELEVEL: return step_bytelevel(m, in, out);
    case TK_DEC_REPLACE: return step_replace(d, in, out);
    case TK_DEC_BYTEFALLBACK: return step_bytefallback(m, in, out);
    case TK_DEC_FUSE: return step_fuse(m, in, out);
    case TK_DEC_STRIP: return step_strip(d, m, in, out);
    case TK_DEC_METASPACE: return step_metaspace(d, m, in, out);
    }
    return RT_ERR_INVALID;
}

/* ----------------------------------------------------------------- chain */

/* Whether id puts a token into the chain: it has one, and it is not a
 * special token being skipped. Padding and unused ids put nothing, as in
 * Hugging Face, whose decode drops ids it has no token for. */
static bool id_contributes(const tokenizer *tok, int32_t id, bool skip_special)
{
    return tk_id_has_token(tok, id) && !(skip_special && tok->special[id]);
}

/* Collects the token strings of ids (skipping specials when asked).
 * RT_ERR_INVALID for an id outside the decodable range. */
static int collect_tokens(const tokenizer *tok, const int32_t *ids, size_t n,
                          bool skip_special, tk_toks *l)
{
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (!tk_id_decodable(tok, id))
            return RT_ERR_INVALID;
        if (!id_contributes(tok, id, skip_special))
            continue;
        if (toks_push(l, tok->text_pool.p + tok->text_off[id], (size_t)tok->text_len[id]) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* Decodes ids through the chain, appending the text to out. stream_first
 * and raw select streaming mode (see dec_mode). */
int tk_decode_tokens(const tokenizer *tok, const int32_t *ids, size_t n,
                     bool skip_special, bool stream_first, bool raw, tk_buf *out)
{
    tk_toks a = { 0 }, b = { 0 };
    dec_mode m = { .stream = raw, .first = stream_first };
    int rc = collect_tokens(tok, ids, n, skip_special, &a);
    for (size_t i = 0; rc == RT_OK && i < tok->n_decs; i++) {
        b.b.len = 0;
        b.n = 0;
        rc = run_step(&tok->decs[i], &m, &a, &b);
        tk_toks t = a;
        a = b;
        b = t;
    }
    for (size_t i = 0; rc == RT_OK && i < a.n; i++) {
        bool sep = !tok->has_decoder && (i > 0 || (raw && !stream_first));
        if (sep)
            rc = tk_buf_putc(out, ' ');
        if (rc == RT_OK)
            rc = tk_buf_append(out, a.b.p + a.t[i].off, a.t[i].len);
    }
    toks_free(&a);
    toks_free(&b);
    return rc;
}

/* Decodes ids into text; see tokenizer.h. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n,
                     bool skip_special, char **text, size_t *len)
{
    if (!tok || (!ids && n) || !text || !len)
        return RT_ERR_INVALID;
    tk_buf out = { 0 };
    int rc = tk_decode_tokens(tok, ids, n, skip_special, false, false, &out);
    if (rc == RT_OK)
        rc = tk_buf_append(&out, "", 0);
    if (rc != RT_OK) {
        tk_buf_free(&out);
        return rc;
    }
    *text = out.p;
    *len = out.len;
    return RT_OK;
}

/* One token's raw bytes; see tokenizer.h. */
int tokenizer_token_bytes(const tokenizer *tok, int32_t id, bool skip_special,
                          bool first, char *buf, size_t cap, size_t *len)
{
    if (!tok || (!buf && cap) || !len)
        return RT_ERR_INVALID;
    tk_buf out = { 0 };
    int rc = tk_decode_tokens(tok, &id, 1, skip_special, first, true, &out);
    if (rc == RT_OK && out.len > cap)
        rc = RT_ERR_TOO_LARGE;
    if (rc == RT_OK) {
        if (out.len)
            memcpy(buf, out.p, out.len);
        *len = out.len;
    }
    tk_buf_free(&out);
    return rc;
}

/* ---------------------------------------------------------------- stream */

struct tokenizer_stream {
    const tokenizer *tok;
    bool skip_special, started;
    tk_buf raw;      /* held-back bytes + the new token's bytes */
    tk_buf text;     /* complete text handed out */
};

/* Creates a stream; see tokenizer.h. */
int tokenizer_stream_new(const tokenizer *tok, bool skip_special, tokenizer_stream **out)
{
    if (!tok || !out)
        return RT_ERR_INVALID;
    tokenizer_stream *st = calloc(1, sizeof *st);
    if (!st)
        return RT_ERR_NOMEM;
    st->tok = tok;
    st->skip_special = skip_special;
    *out = st;
    return RT_OK;
}

/* Hands out the complete characters of st->raw and keeps the rest. */
static int stream_emit(tokenizer_stream *st, bool final, const char **text, size_t *len)
{
    size_t used = 0;
    st->text.len = 0;
    int rc = tk_utf8_lossy(&st->text, st->raw.p ? st->raw.p : "", st->raw.len, !final, &used);
    if (rc == RT_OK)
        rc = tk_buf_append(&st->text, "", 0);
    if (rc != RT_OK)
        return rc;
    if (used) {
        memmove(st->raw.p, st->raw.p + used, st->raw.len - used);
        st->raw.len -= used;
    }
    *text = st->text.p;
    *len = st->text.len;
    return RT_OK;
}

/* Adds one token; see tokenizer.h. */
int tokenizer_stream_push(tokenizer_stream *st, int32_t id, const char **text, size_t *len)
{
    if (!st || !text || !len)
        return RT_ERR_INVALID;
    if (!tk_id_decodable(st->tok, id))
        return RT_ERR_INVALID;
    int rc = tk_decode_tokens(st->tok, &id, 1, st->skip_special, !st->started, true, &st->raw);
    if (rc != RT_OK)
        return rc;
    /* only a token that reached the chain opens the output: after a
     * skipped or padding id the next token is still the first */
    st->started |= id_contributes(st->tok, id, st->skip_special);
    return stream_emit(st, false, text, len);
}

/* Ends the stream; see tokenizer.h. */
int tokenizer_stream_flush(tokenizer_stream *st, const char **text, size_t *len)
{
    if (!st || !text || !len)
        return RT_ERR_INVALID;
    return stream_emit(st, true, text, len);
}

/* Frees a stream; NULL is allowed. */
void tokenizer_stream_free(tokenizer_stream *st)
{
    if (!st)
        return;
    tk_buf_free(&st->raw);
    tk_buf_free(&st->text);
    free(st);
}
