/*
 * engine/tokenizer_util.c — the small tools the tokenizer is built from:
 * growable buffers, two open-addressing hash maps (vocabulary strings and
 * merge pairs), UTF-8 decoding with Rust's lossy-replacement rules, GPT-2's
 * byte-to-unicode table, and PCRE2 matching that yields Hugging Face's
 * match/gap spans. Nothing here knows about tokenizer.json.
 */
#include "engine/tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

/* ---------------------------------------------------------------- buffers */

/* Makes room for extra more bytes (plus a NUL) in b. */
int tk_buf_reserve(tk_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return RT_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return RT_ERR_NOMEM;
    b->p = p;
    b->cap = cap;
    return RT_OK;
}

/* Appends n bytes and keeps the buffer NUL-terminated. */
int tk_buf_append(tk_buf *b, const void *data, size_t n)
{
    if (tk_buf_reserve(b, n) != RT_OK)
        return RT_ERR_NOMEM;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return RT_OK;
}

/* Appends one byte. */
int tk_buf_putc(tk_buf *b, char c)
{
    return tk_buf_append(b, &c, 1);
}

/* Frees the bytes; the struct may be reused after. */
void tk_buf_free(tk_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Appends n ids. */
int tk_ivec_append(tk_ivec *v, const int32_t *x, size_t n)
{
    if (v->len + n > v->cap) {
        size_t cap = v->cap ? v->cap : 16;
        while (cap < v->len + n)
            cap *= 2;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        v->p = p;
        v->cap = cap;
    }
    if (n)
        memcpy(v->p + v->len, x, n * sizeof *x);
    v->len += n;
    return RT_OK;
}

/* Appends one id. */
int tk_ivec_push(tk_ivec *v, int32_t x)
{
    return tk_ivec_append(v, &x, 1);
}

/* Frees the ids; the struct may be reused after. */
void tk_ivec_free(tk_ivec *v)
{
    free(v->p);
    v->p = NULL;
    v->len = v->cap = 0;
}

/* ------------------------------------------------------------ string map */

/* FNV-1a, 64 bits: short keys, good enough spread for open addressing. */
uint64_t tk_hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Finds the slot of key, or the empty slot where it would go. */
static size_t strmap_slot(const tk_strmap *m, const char *key, size_t len, uint64_t h)
{
    size_t i = (size_t)h & (m->cap - 1);
    for (;;) {
        uint32_t e = m->slots[i];
        if (e == 0)
            return i;
        const struct tk_strent *ent = &m->ents[e - 1];
        if (ent->hash == h && ent->len == len && memcmp(m->pool.p + ent->off, key, len) == 0)
            return i;
        i = (i + 1) & (m->cap - 1);
    }
}

/* Doubles the slot table (keeps load under one half). */
static int strmap_grow(tk_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return RT_ERR_NOMEM;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = (size_t)m->ents[e].hash & (cap - 1);
        while (slots[i])
            i = (i + 1) & (cap - 1);
        slots[i] = (uint32_t)(e + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return RT_OK;
}

/* Inserts key (copied) -> value, replacing the value of an existing key. */
int tk_strmap_put(tk_strmap *m, const char *key, size_t len, int32_t value)
{
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m) != RT_OK)
        return RT_ERR_NOMEM;
    uint64_t h = tk_hash_bytes(key, len);
    size_t i = strmap_slot(m, key, len, h);
    if (m->slots[i]) {
        m->ents[m->slots[i] - 1].value = value;
        return RT_OK;
    }
    if (m->n == m->ents_cap) {
        size_t cap = m->ents_cap ? m->ents_cap * 2 : 64;
        struct tk_strent *ents = realloc(m->ents, cap * sizeof *ents);
        if (!ents)
            return RT_ERR_NOMEM;
        m->ents = ents;
        m->ents_cap = cap;
    }
    size_t off = m->pool.len;
    if (tk_buf_append(&m->pool, key, len) != RT_OK)
        return RT_ERR_NOMEM;
    m->ents[m->n] = (struct tk_strent){ h, off, (uint32_t)len, value };
    m->slots[i] = (uint32_t)(++m->n);
    return RT_OK;
}

/* Looks key up; -1 when absent. */
int32_t tk_strmap_get(const tk_strmap *m, const char *key, size_t len)
{
    if (!m->cap)
        return -1;
    size_t i = strmap_slot(m, key, len, tk_hash_bytes(key, len));
    return m->slots[i] ? m->ents[m->slots[i] - 1].value : -1;
}

/* Frees the map's memory; the struct may be reused after. */
void tk_strmap_free(tk_strmap *m)
{
    free(m->slots);
    free(m->ents);
    tk_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

/* -------------------------------------------------------------- pair map */

/* splitmix64's finalizer: spreads the packed pair over all bits. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t pair_key(int32_t a, int32_t b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

/* Doubles the table (keeps load under one half). */
static int pairmap_grow(tk_pairmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 256;
    uint64_t *keys = calloc(cap, sizeof *keys);
    int32_t *rank = malloc(cap * sizeof *rank);
    int32_t *merged = malloc(cap * sizeof *merged);
    if (!keys || !rank || !merged) {
        free(keys);
        free(rank);
        free(merged);
        return RT_ERR_NOMEM;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->keys[j])
            continue;
        size_t i = (size_t)mix64(m->keys[j]) & (cap - 1);
        while (keys[i])
            i = (i + 1) & (cap - 1);
        keys[i] = m->keys[j];
        rank[i] = m->rank[j];
        merged[i] = m->merged[j];
    }
    free(m->keys);
    free(m->rank);
    free(m->merged);
    m->keys = keys;
    m->rank = rank;
    m->merged = merged;
    m->cap = cap;
    return RT_OK;
}

/* Inserts (a, b) -> (rank, merged); a later insert of the same pair wins,
 * as in Hugging Face's merge map. */
int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if ((m->n + 1) * 2 > m->cap && pairmap_grow(m) != RT_OK)
        return RT_ERR_NOMEM;
    uint64_t k = pair_key(a, b);
    size_t i = (size_t)mix64(k) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != k)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->n++;
    m->keys[i] = k;
    m->rank[i] = rank;
    m->merged[i] = merged;
    return RT_OK;
}

/* Looks (a, b) up. */
bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank,
                    int32_t *merged)
{
    if (!m->cap)
        return false;
    uint64_t k = pair_key(a, b);
    size_t i = (size_t)mix64(k) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->keys[i] == k) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return false;
}

/* Frees the table; the struct may be reused after. */
void tk_pairmap_free(tk_pairmap *m)
{
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------ UTF-8 */

/*
 * Measures the maximal subpart at s (Unicode's definition, which Rust's
 * lossy conversion follows): how many bytes begin a well-formed sequence.
 * *need gets the full length the lead byte asks for (0: invalid lead).
 */
static size_t utf8_subpart(const unsigned char *s, size_t n, size_t *need)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80) {
        *need = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        *need = 0;
        return 1;
    }
    *need = len;
    if (n < 2 || s[1] < lo || s[1] > hi)
        return 1;
    size_t i = 2;
    while (i < len && i < n && (s[i] & 0xC0) == 0x80)
        i++;
    return i;
}

/* Decodes one character; 0 when invalid or incomplete. */
size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0)
        return 0;
    size_t need, got = utf8_subpart(s, n, &need);
    if (need == 0 || got != need)
        return 0;
    uint32_t c = need == 1 ? s[0] : need == 2 ? s[0] & 0x1Fu : need == 3 ? s[0] & 0x0Fu : s[0] & 0x07u;
    for (size_t i = 1; i < need; i++)
        c = (c << 6) | (s[i] & 0x3Fu);
    *cp = c;
    return need;
}

/* Length of the character at s (1 for an invalid byte). */
size_t tk_utf8_charlen(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t k = tk_utf8_decode(s, n, &cp);
    return k ? k : 1;
}

/* Appends the UTF-8 encoding of cp. */
int tk_utf8_put(tk_buf *b, uint32_t cp)
{
    char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return tk_buf_append(b, t, n);
}

/* Whether s[0..n) is well-formed UTF-8. */
bool tk_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = tk_utf8_decode(u + i, n - i, &cp);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

/* Appends s, replacing each maximal invalid subpart with U+FFFD. */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t n, bool stop_incomplete,
                  size_t *used)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */
    while (i < n) {
        size_t need, got = utf8_subpart(u + i, n - i, &need);
        if (need && got == need) {
            i += got;
            continue;
        }
        if (need && stop_incomplete && i + got == n)
            break;
        if (tk_buf_append(out, s + run, i - run) != RT_OK ||
            tk_buf_append(out, "\xEF\xBF\xBD", 3) != RT_OK)
            return RT_ERR_NOMEM;
        i += got;
        run = i;
    }
    if (tk_buf_append(out, s + run, i - run) != RT_OK)
        return RT_ERR_NOMEM;
    if (used)
        *used = i;
    return RT_OK;
}

/* Unicode's White_Space property. */
bool tk_is_whitespace(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ------------------------------------------------------------- byte-level */

/*
 * GPT-2's table: printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ')
 * stand for themselves; the other 68 bytes, in order, become U+0100...
 */
uint32_t tk_byte_to_cp(unsigned char b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    if (b <= 32)
        return 256u + b;
    if (b <= 160)
        return (uint32_t)b + 162u; /* 127..160 -> 289..322 */
    return 323;                     /* 173 */
}

/* The inverse of tk_byte_to_cp; -1 for code points outside the table. */
int tk_cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 288)
        return (int)(cp - 256);
    if (cp >= 289 && cp <= 322)
        return (int)(cp - 162);
    if (cp == 323)
        return 173;
    return -1;
}

/* Appends the byte-level characters for bytes s[0..n). */
int tk_bytelevel_encode(tk_buf *out, const char *s, size_t n)
{
    if (tk_buf_reserve(out, 2 * n) != RT_OK)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = tk_byte_to_cp((unsigned char)s[i]);
        if (cp < 0x80) {
            out->p[out->len++] = (char)cp;
        } else {
            out->p[out->len++] = (char)(0xC0 | (cp >> 6));
            out->p[out->len++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out->p[out->len] = '\0';
    return RT_OK;
}

/* Appends the bytes a byte-level string stands for, or nothing (*ok false)
 * when it holds a character outside the alphabet. */
int tk_bytelevel_decode(tk_buf *out, const char *s, size_t n, bool *ok)
{
    size_t start = out->len;
    const unsigned char *u = (const unsigned char *)s;
    *ok = false;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = tk_utf8_decode(u + i, n - i, &cp);
        int b = k ? tk_cp_to_byte(cp) : -1;
        if (b < 0) {
            out->len = start;
            if (out->p)
                out->p[start] = '\0';
            return RT_OK;
        }
        if (tk_buf_putc(out, (char)b) != RT_OK)
            return RT_ERR_NOMEM;
        i += k;
    }
    *ok = true;
    return RT_OK;
}

/* ---------------------------------------------------------------- regexes */

const char tk_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Compiles with Unicode semantics (\s, \w, \d and \p{..} by property). */
int tk_regex_compile(const char *pattern, bool literal, pcre2_code **out,
                     char *err, size_t errsize)
{
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts,
                                   &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return rt_fail(err, errsize, RT_ERR_FORMAT, "regex /%s/ at %zu: %s", pattern, (size_t)at, (char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional speed-up */
    *out = re;
    return RT_OK;
}

/* Appends one span, growing the array. */
static int spans_push(tk_spans *v, size_t start, size_t end, bool match)
{
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 32;
        tk_span *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->len++] = (tk_span){ start, end, match };
    return RT_OK;
}

/*
 * Hugging Face's find_matches over a regex: matches and the gaps between
 * them, in order, covering s. An empty match only cuts the gap it sits in
 * (its empty piece would be dropped later anyway).
 */
int tk_regex_spans(const pcre2_code *re, pcre2_match_data *md, const char *s,
                   size_t n, tk_spans *out)
{
    size_t prev = 0, pos = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
            rc == PCRE2_ERROR_JIT_STACKLIMIT)
            return RT_ERR_TOO_LARGE; /* a pathological text for this pattern, not a bad argument */
        if (rc < 0)
            return RT_ERR_INVALID;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t st = ov[0], en = ov[1];
        if (st > prev && spans_push(out, prev, st, false) != RT_OK)
            return RT_ERR_NOMEM;
        if (en > st && spans_push(out, st, en, true) != RT_OK)
            return RT_ERR_NOMEM;
        prev = en;
        pos = en > st ? en : en + tk_utf8_charlen((const unsigned char *)s + en, n - en);
    }
    if (prev < n && spans_push(out, prev, n, false) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* ---------------------------------------------------------------- patterns */

/* Compiles a regex, or keeps a literal string. */
int tk_pattern_init(tk_pattern *p, const char *text, bool literal, char *err, size_t errsize)
{
    *p = (tk_pattern){ 0 };
    if (!literal)
        return tk_regex_compile(text, false, &p->re, err, errsize);
    p->lit_len = strlen(text);
    if (!p->lit_len) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "empty literal pattern");
    }
    p->lit = malloc(p->lit_len + 1);
    if (!p->lit)
        return RT_ERR_NOMEM;
    memcpy(p->lit, text, p->lit_len + 1);
    return RT_OK;
}

/* First occurrence of needle[0..m) (m > 0) in hay[0..n), or NULL. (Not
 * memmem: sanitizers check its whole haystack per call, which makes a
 * scan of a long text quadratic.) */
const char *tk_find(const char *hay, size_t n, const char *needle, size_t m)
{
    const char *end = hay + n;
    while ((size_t)(end - hay) >= m) {
        const char *p = memchr(hay, needle[0], (size_t)(end - hay) - m + 1);
        if (!p)
            return NULL;
        if (memcmp(p, needle, m) == 0)
            return p;
        hay = p + 1;
    }
    return NULL;
}

/* Matches and gaps of a pattern; a literal's occurrences are found
 * left to right without overlap, like its escaped regex would be. */
int tk_pattern_spans(const tk_pattern *p, pcre2_match_data *md, const char *s,
                     size_t n, tk_spans *out)
{
    if (p->re)
        return tk_regex_spans(p->re, md, s, n, out);
    size_t prev = 0;
    while (prev < n) {
        const char *hit = tk_find(s + prev, n - prev, p->lit, p->lit_len);
        if (!hit)
            break;
        size_t st = (size_t)(hit - s);
        if ((st > prev && spans_push(out, prev, st, false) != RT_OK) ||
            spans_push(out, st, st + p->lit_len, true) != RT_OK)
            return RT_ERR_NOMEM;
        prev = st + p->lit_len;
    }
    if (prev < n && spans_push(out, prev, n, false) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* Frees a pattern; the struct may be reused after. */
void tk_pattern_free(tk_pattern *p)
{
    pcre2_code_free(p->re);
    free(p->lit);
    *p = (tk_pattern){ 0 };
}
