/*
 * engine/jinja_lex.c — the Jinja lexer: splits template source into text
 * and tag tokens, applying Jinja2's whitespace rules as transformers sets
 * them (trim_blocks, lstrip_blocks, the "-" and "+" markers, newlines
 * normalized to "\n", one trailing newline dropped) and {% raw %} blocks.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"
#include "engine/jinja_int.h"

typedef struct lexer {
    jarena *a;
    const char *s;   /* normalized source */
    size_t n, pos;
    int line;
    size_t line_pos; /* position up to which line was counted */
    int line_starting;
    jtokens *out;
    char *err; size_t errsize;
} lexer;

static int lex_fail(lexer *L, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int lex_fail(lexer *L, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    jinja_vfail(L->err, L->errsize, L->line, fmt, ap);
    va_end(ap);
    return code;
}

/* Advances the line counter to position pos. */
static void lex_line_to(lexer *L, size_t pos)
{
    for (; L->line_pos < pos && L->line_pos < L->n; L->line_pos++)
        if (L->s[L->line_pos] == '\n')
            L->line++;
}

static int emit(lexer *L, int type, const char *s, size_t n)
{
    jtokens *t = L->out;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        jtoken *nt = ja_alloc(L->a, cap * sizeof(jtoken));
        if (!nt)
            return lex_fail(L, RT_ERR_TOO_LARGE, "template too large");
        if (t->n)
            memcpy(nt, t->t, t->n * sizeof(jtoken));
        t->t = nt;
        t->cap = cap;
    }
    jtoken *k = &t->t[t->n++];
    memset(k, 0, sizeof(*k));
    k->type = type;
    k->line = L->line;
    k->s = s;
    k->n = n;
    return RT_OK;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Emits data text before a tag, applying "-" (strip all whitespace) or
 * lstrip_blocks (strip the spaces before a block tag alone on its line). */
static int emit_text(lexer *L, size_t start, size_t end, char kind, char ctl)
{
    const char *s = L->s;
    if (ctl == '-') {
        while (end > start && (is_ws(s[end - 1]) || (s[end - 1] >= 0x1c && s[end - 1] <= 0x1f)))
            end--;
    } else if (ctl != '+' && kind != '{') {
        size_t l = end;
        while (l > start && s[l - 1] != '\n')
            l--;
        int all_ws = 1;
        for (size_t i = l; i < end; i++)
            if (!is_ws(s[i]))
                all_ws = 0;
        if (all_ws && (l > start || L->line_starting))
            end = l;
    }
    if (end > start)
        return emit(L, JT_TEXT, s + start, end - start);
    return RT_OK;
}

/* After a tag end at pos: "-" eats all whitespace, else trim_blocks eats
 * one newline after block and comment tags. Returns the new position. */
static size_t after_tag(lexer *L, size_t pos, char ctl, int is_block)
{
    size_t p = pos;
    if (ctl == '-') {
        while (p < L->n && is_ws(L->s[p]))
            p++;
    } else if (ctl != '+' && is_block && p < L->n && L->s[p] == '\n')
        p++;
    L->line_starting = p > pos ? L->s[p - 1] == '\n' : 0;
    return p;
}

/* ---------------------------------------------------------------- expression tokens */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes a string literal body as Python's unicode-escape does. */
static int lex_string(lexer *L, size_t *pos)
{
    const char *s = L->s;
    char q = s[*pos];
    size_t p = *pos + 1, start = p;
    while (p < L->n && s[p] != q) {
        if (s[p] == '\\' && p + 1 < L->n)
            p++;
        p++;
    }
    if (p >= L->n)
        return lex_fail(L, RT_ERR_FORMAT, "unterminated string");
    char *o = ja_alloc(L->a, (p - start) * 2 + 1);
    if (!o)
        return lex_fail(L, RT_ERR_TOO_LARGE, "template too large");
    size_t n = 0;
    for (size_t i = start; i < p; i++) {
        if (s[i] != '\\') {
            o[n++] = s[i];
            continue;
        }
        char c = s[++i];
        int digits = 0;
        switch (c) {
        case '\n': break;
        case '\\': o[n++] = '\\'; break;
        case '\'': o[n++] = '\''; break;
        case '"': o[n++] = '"'; break;
        case 'a': o[n++] = '\a'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'v': o[n++] = '\v'; break;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default:
            if (c >= '0' && c <= '7') {
                uint32_t v = 0;
                int k = 0;
                for (; k < 3 && i < p && s[i] >= '0' && s[i] <= '7'; k++, i++)
                    v = v * 8 + (uint32_t)(s[i] - '0');
                i--;
                n += ju_encode(v, o + n);
            } else {
                o[n++] = '\\';
                o[n++] = c;
            }
        }
        if (digits) {
            uint32_t v = 0;
            for (int k = 0; k < digits; k++) {
                int h = i + 1 + (size_t)k < p ? hexval(s[i + 1 + (size_t)k]) : -1;
                if (h < 0)
                    return lex_fail(L, RT_ERR_FORMAT, "bad \\%c escape in string", c);
                v = v * 16 + (uint32_t)h;
            }
            if (v > 0x10ffff)
                return lex_fail(L, RT_ERR_FORMAT, "bad \\%c escape in string", c);
            i += (size_t)digits;
            n += ju_encode(v, o + n);
        }
    }
    o[n] = 0;
    int rc = emit(L, JT_STRING, o, n);
    *pos = p + 1;
    return rc;
}

static int lex_number(lexer *L, size_t *pos)
{
    const char *s = L->s;
    size_t p = *pos;
    char buf[64];
    size_t b = 0;
    int is_float = 0;
    while (p < L->n && (isdigit((unsigned char)s[p]) || s[p] == '_')) {
        if (s[p] != '_' && b < 60) buf[b++] = s[p];
        p++;
    }
    if (p + 1 < L->n && s[p] == '.' && isdigit((unsigned char)s[p + 1])) {
        is_float = 1;
        buf[b++] = s[p++];
        while (p < L->n && (isdigit((unsigned char)s[p]) || s[p] == '_')) {
            if (s[p] != '_' && b < 60) buf[b++] = s[p];
            p++;
        }
    }
    if (p < L->n && (s[p] == 'e' || s[p] == 'E')) {
        size_t q = p + 1;
        if (q < L->n && (s[q] == '+' || s[q] == '-'))
            q++;
        if (q < L->n && isdigit((unsigned char)s[q])) {
            is_float = 1;
            if (b < 60) buf[b++] = 'e';
            for (size_t k = p + 1; k < q; k++)
                if (b < 60) buf[b++] = s[k];
            p = q;
            while (p < L->n && isdigit((unsigned char)s[p])) {
                if (b < 60) buf[b++] = s[p];
                p++;
            }
        }
    }
    buf[b] = 0;
    int rc = emit(L, is_float ? JT_FLOAT : JT_INT, s + *pos, p - *pos);
    if (rc)
        return rc;
    jtoken *t = &L->out->t[L->out->n - 1];
    if (is_float)
        t->f = strtod(buf, NULL);
    else {
        errno = 0;
        unsigned long long v = strtoull(buf, NULL, 10);
        if (b >= 19 && (errno || v > (unsigned long long)INT64_MAX))
            return lex_fail(L, RT_ERR_UNSUPPORTED, "integer literal too large");
        t->i = (int64_t)v;
    }
    *pos = p;
    return RT_OK;
}

static const char *const OPS2[] = { "//", "**", "==", "!=", "<=", ">=" };
static const char OPS1[] = "+-/*%~<>=()[]{},.:|;";

/* Lexes the inside of a {% %} or {{ }} tag up to its end; *pos is just past
 * the opening delimiter and ends just past the closing one; *ctl receives
 * the "-" or "+" marker of the end. */
static int lex_tag(lexer *L, size_t *pos, int is_block, char *ctl)
{
    const char *s = L->s;
    size_t p = *pos;
    int depth = 0;
    char close = is_block ? '%' : '}';
    for (;;) {
        while (p < L->n && is_ws(s[p]))
            p++;
        lex_line_to(L, p);
        if (p >= L->n)
            return lex_fail(L, RT_ERR_FORMAT, "unclosed tag '%s'", is_block ? "{%" : "{{");
        if (depth == 0) {
            size_t q = p;
            char c = 0;
            if ((s[q] == '-' || (s[q] == '+' && is_block)) && q + 1 < L->n && s[q + 1] == close)
                c = s[q++];
            if (q + 1 < L->n && s[q] == close && s[q + 1] == '}') {
                *ctl = c;
                *pos = q + 2;
                return emit(L, is_block ? JT_BLOCK_END : JT_VAR_END, s + p, q + 2 - p);
            }
        }
        unsigned char c = (unsigned char)s[p];
        int rc;
        if (isalpha(c) || c == '_') {
            size_t q = p;
            while (q < L->n && (isalnum((unsigned char)s[q]) || s[q] == '_'))
                q++;
            rc = emit(L, JT_NAME, s + p, q - p);
            p = q;
        } else if (isdigit(c)) {
            rc = lex_number(L, &p);
        } else if (c == '\'' || c == '"') {
            rc = lex_string(L, &p);
        } else {
            size_t len = 0;
            for (size_t k = 0; k < sizeof OPS2 / sizeof OPS2[0]; k++)
                if (p + 1 < L->n && s[p] == OPS2[k][0] && s[p + 1] == OPS2[k][1])
                    len = 2;
            if (!len && strchr(OPS1, c) && c)
                len = 1;
            if (!len)
                return lex_fail(L, RT_ERR_FORMAT, "unexpected character '%c'", c);
            if (c == '(' || c == '[' || c == '{')
                depth++;
            else if ((c == ')' || c == ']' || c == '}') && depth > 0)
                depth--;
            rc = emit(L, JT_OP, s + p, len);
            p += len;
        }
        if (rc)
            return rc;
    }
}

/* Looks for "{% raw %}" at pos (just past "{%"); on a match, emits the
 * literal body and returns 1 with *pos past "{% endraw %}". */
static int lex_raw(lexer *L, size_t tag, size_t *pos, int *rc)
{
    const char *s = L->s;
    size_t p = *pos;
    if (p < L->n && (s[p] == '-' || s[p] == '+'))
        p++;
    while (p < L->n && is_ws(s[p]))
        p++;
    if (p + 3 > L->n || memcmp(s + p, "raw", 3) != 0 || (p + 3 < L->n && (isalnum((unsigned char)s[p + 3]) || s[p + 3] == '_')))
        return 0;
    p += 3;
    while (p < L->n && is_ws(s[p]))
        p++;
    char ctl = 0;
    if (p < L->n && (s[p] == '-' || s[p] == '+'))
        ctl = s[p++];
    if (p + 1 >= L->n || s[p] != '%' || s[p + 1] != '}') {
        *rc = lex_fail(L, RT_ERR_FORMAT, "bad {%% raw %%} tag");
        return 1;
    }
    size_t body = after_tag(L, p + 2, ctl, 1);
    /* find {% endraw %} */
    for (size_t q = body; q + 1 < L->n; q++) {
        if (s[q] != '{' || s[q + 1] != '%')
            continue;
        size_t r = q + 2;
        char lctl = 0;
        if (r < L->n && (s[r] == '-' || s[r] == '+'))
            lctl = s[r++];
        while (r < L->n && is_ws(s[r]))
            r++;
        if (r + 6 > L->n || memcmp(s + r, "endraw", 6) != 0)
            continue;
        r += 6;
        while (r < L->n && is_ws(s[r]))
            r++;
        char rctl = 0;
        if (r < L->n && (s[r] == '-' || s[r] == '+'))
            rctl = s[r++];
        if (r + 1 >= L->n || s[r] != '%' || s[r + 1] != '}')
            continue;
        L->line_starting = 0;
        *rc = emit_text(L, body, q, '%', lctl);
        *pos = after_tag(L, r + 2, rctl, 1);
        (void)tag;
        return 1;
    }
    *rc = lex_fail(L, RT_ERR_FORMAT, "{%% raw %%} is not closed");
    return 1;
}

/* Normalizes "\r\n" and "\r" to "\n" and drops one trailing newline. */
static char *normalize(jarena *a, const char *src, size_t *n)
{
    size_t len = strlen(src);
    char *o = ja_alloc(a, len + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            o[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else
            o[k++] = src[i];
    }
    if (k && o[k - 1] == '\n')
        k--;
    o[k] = 0;
    *n = k;
    return o;
}

int jinja_lex(jarena *a, const char *src, jtokens *out, char *err, size_t errsize)
{
    lexer L = { .a = a, .line = 1, .line_starting = 1, .out = out, .err = err, .errsize = errsize };
    L.s = normalize(a, src, &L.n);
    if (!L.s)
        return lex_fail(&L, RT_ERR_TOO_LARGE, "template too large");
    size_t p = 0;
    while (p < L.n) {
        const char *q = L.s + p;
        size_t tag = L.n;
        for (const char *f = q; (f = memchr(f, '{', (size_t)(L.s + L.n - f))) != NULL; f++)
            if (f + 1 < L.s + L.n && (f[1] == '{' || f[1] == '%' || f[1] == '#')) {
                tag = (size_t)(f - L.s);
                break;
            }
        if (tag == L.n) {
            lex_line_to(&L, p);
            int rc = emit(&L, JT_TEXT, L.s + p, L.n - p);
            if (rc)
                return rc;
            break;
        }
        char kind = L.s[tag + 1];
        char ctl = tag + 2 < L.n ? L.s[tag + 2] : 0;
        if (ctl != '-' && ctl != '+')
            ctl = 0;
        if (kind == '{' && ctl == '+')
            ctl = 0;
        lex_line_to(&L, p);
        int rc = emit_text(&L, p, tag, kind, ctl);
        if (rc)
            return rc;
        lex_line_to(&L, tag);
        size_t body = tag + 2 + (ctl ? 1 : 0);
        if (kind == '#') {
            const char *e = strstr(L.s + body, "#}");
            if (!e)
                return lex_fail(&L, RT_ERR_FORMAT, "unclosed comment");
            size_t end = (size_t)(e - L.s);
            char ectl = end > body && L.s[end - 1] == '-' ? '-' : 0;
            lex_line_to(&L, end);
            p = after_tag(&L, end + 2, ectl, 1);
            continue;
        }
        if (kind == '%') {
            size_t rp = tag + 2;
            if (lex_raw(&L, tag, &rp, &rc)) {
                if (rc)
                    return rc;
                lex_line_to(&L, rp);
                p = rp;
                continue;
            }
        }
        rc = emit(&L, kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, L.s + tag, 2);
        if (rc)
            return rc;
        char ectl = 0;
        p = body;
        rc = lex_tag(&L, &p, kind == '%', &ectl);
        if (rc)
            return rc;
        p = after_tag(&L, p, ectl, kind == '%');
    }
    lex_line_to(&L, L.n);
    return emit(&L, JT_EOF, L.s + L.n, 0);
}
