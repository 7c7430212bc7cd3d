/*
 * engine/tokenizer_unicode.c — the Unicode normalizers of tokenizer.json
 * that Hugging Face runs through Rust's unicode crates, here on utf8proc:
 *   NFC, NFD, NFKC, NFKD   unicode-normalization's forms (utf8proc_map);
 *   Lowercase              Rust's char::to_lowercase, one character at a
 *                          time (no final-sigma rule: HF lowercases chars,
 *                          not strings);
 * and the extended grapheme clusters the Precompiled normalizer walks
 * (unicode-segmentation's graphemes(true)).
 *
 * Hugging Face keeps an alignment between normalized and original text for
 * offsets; retune returns no offsets, so only the normalized text is made.
 * Known differences: the Unicode version of the tables (utf8proc 2.8 has
 * Unicode 15.0; Rust and its crates may be newer or older), which only
 * matters for characters assigned in between.
 */
#include "engine/tokenizer_internal.h"

#include <stdlib.h>
#include <utf8proc.h>

#include "common/rt.h"

/* Whether s[0..n) is all ASCII (which every normal form leaves alone). */
static bool all_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

/* The utf8proc options of a normal form. */
static utf8proc_option_t form_options(enum tk_norm_kind form)
{
    utf8proc_option_t o = UTF8PROC_STABLE;
    switch (form) {
    case TK_NORM_NFC: return o | UTF8PROC_COMPOSE;
    case TK_NORM_NFKC: return o | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    case TK_NORM_NFKD: return o | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    default: return o | UTF8PROC_DECOMPOSE;
    }
}

/*
 * Appends the normal form (TK_NORM_NFC/NFD/NFKC/NFKD) of the valid UTF-8
 * text s[0..n) to out. NUL characters pass through like any other.
 * Errors: RT_ERR_NOMEM; RT_ERR_FORMAT when utf8proc refuses the text
 * (invalid UTF-8, which callers never pass).
 */
int tk_unicode_normalize(enum tk_norm_kind form, const char *s, size_t n, tk_buf *out)
{
    if (n == 0 || all_ascii(s, n))
        return tk_buf_append(out, s, n);
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                        form_options(form));
    if (len < 0)
        return len == UTF8PROC_ERROR_NOMEM ? RT_ERR_NOMEM : RT_ERR_FORMAT;
    int rc = tk_buf_append(out, dst, (size_t)len);
    free(dst);
    return rc;
}

/*
 * Appends the lowercase of the valid UTF-8 text s[0..n) to out, as Rust's
 * char::to_lowercase maps each character: the simple (one to one)
 * mapping, except U+0130 (İ), whose unconditional full mapping is "i"
 * U+0307 — the only character where the two differ. Errors: RT_ERR_NOMEM.
 */
int tk_lowercase(const char *s, size_t n, tk_buf *out)
{
    const unsigned char *u = (const unsigned char *)s;
    if (tk_buf_reserve(out, n) != RT_OK)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = tk_utf8_decode(u + i, n - i, &cp);
        if (k == 0) { /* not valid UTF-8: passed through (never happens) */
            if (tk_buf_putc(out, s[i++]) != RT_OK)
                return RT_ERR_NOMEM;
            continue;
        }
        i += k;
        int rc;
        if (cp < 0x80)
            rc = tk_buf_putc(out, (char)(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
        else if (cp == 0x130)
            rc = tk_buf_append(out, "i\xCC\x87", 3);
        else
            rc = tk_utf8_put(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
        if (rc != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/*
 * Length in bytes of the extended grapheme cluster that starts at s[0] of
 * the valid UTF-8 text s[0..n) (n > 0), as Unicode's UAX #29 rules in
 * utf8proc find it.
 */
size_t tk_grapheme_len(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    utf8proc_int32_t state = 0;
    uint32_t prev, cp;
    size_t i = tk_utf8_decode(u, n, &prev);
    if (i == 0)
        return 1;
    while (i < n) {
        size_t k = tk_utf8_decode(u + i, n - i, &cp);
        if (k == 0 || utf8proc_grapheme_break_stateful((utf8proc_int32_t)prev, (utf8proc_int32_t)cp,
                                                       &state))
            break;
        i += k;
        prev = cp;
    }
    return i;
}
