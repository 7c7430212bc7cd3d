/*
 * engine/tokenizer_precompiled.c — the Precompiled normalizer: the
 * normalization rules a SentencePiece model carries (T5, ALBERT, XLNet,
 * mT5...) as its precompiled_charsmap, applied as Hugging Face does
 * (tokenizers' normalizers/precompiled.rs on the spm_precompiled crate).
 *
 * The charsmap (base64 in tokenizer.json) is a little-endian u32 byte
 * count of the trie, the trie as a Darts-clone double array of u32 units,
 * then the replacement strings, each ended by a NUL. A trie key is UTF-8
 * text; its value is the offset of its replacement in the strings.
 *
 * Normalizing walks extended grapheme clusters: a cluster of fewer than 6
 * bytes whose bytes start with a key (the shortest one, and not
 * necessarily the whole cluster: HF's rule, kept as is) becomes that key's
 * replacement; otherwise each character is replaced when it starts with a
 * key, and kept when not.
 *
 * A charsmap that is truncated, or whose trie reaches past its own units
 * or points outside the strings, is refused at load (HF would panic on
 * it at encode time); lookups stay bounds-checked all the same.
 */
#include "engine/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

#define KEY_MAX 5 /* the longest key a lookup can use: a cluster under 6 bytes */

struct tk_charsmap {
    uint32_t *units;
    size_t n_units;
    char *strings;        /* replacement strings, NUL-separated */
    size_t strings_len;
};

/* ------------------------------------------------------------- base64 */

/* The value of a base64 digit, or -1. */
static int b64_digit(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/*
 * Decodes standard base64 with canonical padding (as Rust's base64
 * STANDARD engine accepts it: length a multiple of 4, '=' only at the
 * end, no stray bits). On success *out is a new malloc'd buffer of *n
 * bytes the caller frees. Errors: RT_ERR_FORMAT, RT_ERR_NOMEM.
 */
static int b64_decode(const char *s, size_t len, unsigned char **out, size_t *n)
{
    size_t pad = 0;
    while (pad < 2 && len > pad && s[len - 1 - pad] == '=')
        pad++;
    if (len % 4)
        return RT_ERR_FORMAT;
    unsigned char *p = malloc(len / 4 * 3 + 1);
    if (!p)
        return RT_ERR_NOMEM;
    size_t k = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < len - pad; i++) {
        int d = b64_digit((unsigned char)s[i]);
        if (d < 0) {
            free(p);
            return RT_ERR_FORMAT;
        }
        acc = acc << 6 | (uint32_t)d;
        if (i % 4 == 3)
            for (int b = 2; b >= 0; b--)
                p[k++] = (unsigned char)(acc >> (8 * b));
    }
    /* the last group: 2 or 3 digits give 1 or 2 bytes, the rest must be 0 */
    uint32_t bits = acc & ((1u << (6 * ((len - pad) % 4))) - 1);
    size_t tail = (len - pad) % 4;
    if ((pad && tail != 4 - pad) || (tail == 2 && (bits & 0xF)) || (tail == 3 && (bits & 0x3))) {
        free(p);
        return RT_ERR_FORMAT;
    }
    if (tail == 2)
        p[k++] = (unsigned char)(bits >> 4);
    if (tail == 3) {
        p[k++] = (unsigned char)(bits >> 10);
        p[k++] = (unsigned char)(bits >> 2);
    }
    *out = p;
    *n = k;
    return RT_OK;
}

/* ------------------------------------------------------- double array */

static uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static bool unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static uint32_t unit_value(uint32_t u) { return u & 0x7FFFFFFFu; }
static uint32_t unit_label(uint32_t u) { return u & (0x80000000u | 0xFF); }

/* Whether a leaf value is an offset HF can slice the strings at: within
 * them (the end included: an empty replacement) and on a character start. */
static bool value_ok(const tk_charsmap *m, uint32_t v)
{
    return v < m->strings_len ? ((unsigned char)m->strings[v] & 0xC0) != 0x80 : v == m->strings_len;
}

/* The replacement of the shortest key that key[0..n) starts with
 * (stopping at a NUL byte): true with *rep and *rep_len, or false. */
static bool charsmap_lookup(const tk_charsmap *m, const unsigned char *key, size_t n,
                            const char **rep, size_t *rep_len)
{
    size_t pos = unit_offset(m->units[0]);
    for (size_t i = 0; i < n && key[i]; i++) {
        pos ^= key[i];
        if (pos >= m->n_units || unit_label(m->units[pos]) != key[i])
            return false;
        uint32_t u = m->units[pos];
        pos ^= unit_offset(u);
        if (!unit_has_leaf(u))
            continue;
        if (pos >= m->n_units || !value_ok(m, unit_value(m->units[pos])))
            return false;
        uint32_t v = unit_value(m->units[pos]);
        const char *end = memchr(m->strings + v, '\0', m->strings_len - v);
        *rep = m->strings + v;
        *rep_len = end ? (size_t)(end - *rep) : m->strings_len - v;
        return true;
    }
    return false;
}

/*
 * Checks every node a lookup can reach (keys up to KEY_MAX bytes): each
 * leaf's value unit lies inside the array and its value is a good offset.
 * Each unit is expanded once, so a hostile array costs at most 255 probes
 * per unit. Returns RT_OK, RT_ERR_FORMAT (message in err) or RT_ERR_NOMEM.
 */
static int charsmap_validate(const tk_charsmap *m, char *err, size_t errsize)
{
    struct node { size_t pos; int depth; } *stack = malloc((m->n_units + 1) * sizeof *stack);
    uint8_t *seen = calloc(m->n_units, 1);
    int rc = stack && seen ? RT_OK : RT_ERR_NOMEM;
    size_t top = 0;
    if (rc == RT_OK)
        stack[top++] = (struct node){ unit_offset(m->units[0]), 0 };
    while (rc == RT_OK && top > 0) {
        struct node nd = stack[--top];
        for (uint32_t c = 1; c < 256 && rc == RT_OK; c++) {
            size_t q = nd.pos ^ c;
            if (q >= m->n_units || unit_label(m->units[q]) != c || seen[q])
                continue;
            seen[q] = 1;
            size_t child = q ^ unit_offset(m->units[q]);
            if (unit_has_leaf(m->units[q]) &&
                (child >= m->n_units || !value_ok(m, unit_value(m->units[child])))) {
                rc = rt_fail(err, errsize, RT_ERR_FORMAT,
                             "Precompiled charsmap: trie unit %zu points outside the charsmap", q);
            } else if (nd.depth + 1 < KEY_MAX) {
                stack[top++] = (struct node){ child, nd.depth + 1 };
            }
        }
    }
    free(stack);
    free(seen);
    return rc;
}

/* Splits a decoded charsmap into its trie and strings (copied into m). */
static int charsmap_parse(tk_charsmap *m, const unsigned char *b, size_t n, char *err, size_t errsize)
{
    if (n < 4) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "Precompiled charsmap: truncated (%zu bytes, no trie size)", n);
    }
    uint32_t trie_bytes = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    size_t units = trie_bytes / 4; /* as HF: a remainder belongs to the strings */
    if (units == 0 || units > (n - 4) / 4) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "Precompiled charsmap: trie of %u bytes in a blob of %zu", trie_bytes, n);
    }
    m->n_units = units;
    m->strings_len = n - 4 - 4 * units;
    m->units = malloc(units * sizeof *m->units);
    m->strings = malloc(m->strings_len + 1);
    if (!m->units || !m->strings)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < units; i++) {
        const unsigned char *p = b + 4 + 4 * i;
        m->units[i] = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    }
    memcpy(m->strings, b + 4 + 4 * units, m->strings_len);
    m->strings[m->strings_len] = '\0';
    if (!tk_utf8_valid(m->strings, m->strings_len)) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "Precompiled charsmap: replacement strings are not UTF-8");
    }
    return charsmap_validate(m, err, errsize);
}

/* Loads a base64 charsmap; see tokenizer_internal.h. */
int tk_charsmap_load(const char *b64, tk_charsmap **out, char *err, size_t errsize)
{
    unsigned char *blob = NULL;
    size_t n = 0;
    int rc = b64_decode(b64, strlen(b64), &blob, &n);
    if (rc == RT_ERR_FORMAT)
        rt_fail(err, errsize, rc, "Precompiled charsmap is not valid base64");
    if (rc != RT_OK)
        return rc;
    tk_charsmap *m = calloc(1, sizeof *m);
    rc = m ? charsmap_parse(m, blob, n, err, errsize) : RT_ERR_NOMEM;
    free(blob);
    if (rc != RT_OK) {
        tk_charsmap_free(m);
        return rc;
    }
    *out = m;
    return RT_OK;
}

void tk_charsmap_free(tk_charsmap *m)
{
    if (!m)
        return;
    free(m->units);
    free(m->strings);
    free(m);
}

/* Appends one cluster s[0..g) character by character, each replaced when
 * it starts with a key. */
static int apply_chars(const tk_charsmap *m, const char *s, size_t g, tk_buf *out)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t j = 0; j < g;) {
        size_t k = tk_utf8_charlen(u + j, g - j);
        const char *rep;
        size_t rlen;
        bool hit = charsmap_lookup(m, u + j, k, &rep, &rlen);
        if (tk_buf_append(out, hit ? rep : s + j, hit ? rlen : k) != RT_OK)
            return RT_ERR_NOMEM;
        j += k;
    }
    return RT_OK;
}

/* Normalizes valid UTF-8 text; see tokenizer_internal.h. */
int tk_charsmap_apply(const tk_charsmap *m, const char *s, size_t n, tk_buf *out)
{
    for (size_t i = 0; i < n;) {
        size_t g = tk_grapheme_len(s + i, n - i);
        const char *rep;
        size_t rlen;
        int rc;
        if (g < 6 && charsmap_lookup(m, (const unsigned char *)s + i, g, &rep, &rlen))
            rc = tk_buf_append(out, rep, rlen);
        else
            rc = apply_chars(m, s + i, g, out);
        if (rc != RT_OK)
            return rc;
        i += g;
    }
    return RT_OK;
}
