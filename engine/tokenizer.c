/*
 * engine/tokenizer.c — loading a Hugging Face tokenizer.json into the
 * in-memory tokenizer, the simple accessors, and freeing it.
 *
 * The file is parsed with cJSON once; from then on nothing refers to the
 * JSON: the vocabulary and merges go into hash maps, the normalizer,
 * pre-tokenizer, post-processor and decoder into small arrays of steps that
 * tokenizer_encode.c and tokenizer_decode.c interpret. Anything we do not
 * understand makes the load fail with RT_ERR_UNSUPPORTED rather than encode
 * differently from Hugging Face without a word.
 */
#include "engine/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rt.h"

#define TK_MAX_ID (1 << 22) /* ids above this are surely a broken file */
#define TK_MAX_FILE_BYTES ((size_t)256 << 20) /* Llama 3's tokenizer.json is 9 MB */

/* strdup that reports failure through the return code. */
static int dup_str(const char *s, char **out)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (!p)
        return RT_ERR_NOMEM;
    memcpy(p, s, n + 1);
    *out = p;
    return RT_OK;
}

/* The string member name of obj, or NULL (absent, null or not a string). */
static const char *get_str(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The boolean member name of obj, or def when absent or not a boolean. */
static bool get_bool(const cJSON *obj, const char *name, bool def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* ------------------------------------------------------------- id table */

/* Records text as the token of id (a later call for the same id wins). */
static int set_token_text(tokenizer *tok, int32_t id, const char *s, size_t n)
{
    size_t off = tok->text_pool.len;
    if (tk_buf_append(&tok->text_pool, s, n) != RT_OK ||
        tk_buf_putc(&tok->text_pool, '\0') != RT_OK)
        return RT_ERR_NOMEM;
    tok->text_off[id] = off;
    tok->text_len[id] = (int32_t)n;
    return RT_OK;
}

/* Reads an id member; RT_ERR_FORMAT unless it is a sane non-negative int. */
static int read_id(const cJSON *v, int32_t *id)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return RT_ERR_FORMAT;
    *id = (int32_t)v->valuedouble;
    return RT_OK;
}

/* Sizes the id table from the largest id in the vocabulary and added
 * tokens, and allocates it (all ids unused). */
static int alloc_ids(tokenizer *tok, const cJSON *vocab, const cJSON *added,
                     char *err, size_t errsize)
{
    int32_t max = -1, id;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (read_id(it, &id) != RT_OK) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "vocab entry \"%s\" has a bad id", it->string);
        }
        max = id > max ? id : max;
    }
    cJSON_ArrayForEach(it, added) {
        if (read_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) != RT_OK) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "an added token has a bad id");
        }
        max = id > max ? id : max;
    }
    tok->n_ids = (size_t)max + 1;
    tok->text_off = calloc(tok->n_ids + 1, sizeof *tok->text_off);
    tok->text_len = malloc((tok->n_ids + 1) * sizeof *tok->text_len);
    tok->special = calloc(tok->n_ids + 1, sizeof *tok->special);
    if (!tok->text_off || !tok->text_len || !tok->special)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < tok->n_ids; i++)
        tok->text_len[i] = -1;
    return RT_OK;
}

/* ------------------------------------------------------------ BPE model */

/* Fills the vocabulary map, the id table and the quick lookup arrays. */
static int load_vocab(tokenizer *tok, const cJSON *vocab)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        size_t n = strlen(it->string);
        if (tk_strmap_put(&tok->vocab, it->string, n, id) != RT_OK ||
            set_token_text(tok, id, it->string, n) != RT_OK)
            return RT_ERR_NOMEM;
    }
    tk_buf ch = { 0 };
    for (uint32_t c = 0; c < 0x800; c++) {
        ch.len = 0;
        if (tk_utf8_put(&ch, c) != RT_OK) {
            tk_buf_free(&ch);
            return RT_ERR_NOMEM;
        }
        tok->cp_id[c] = tk_strmap_get(&tok->vocab, ch.p, ch.len);
    }
    tk_buf_free(&ch);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_token[b] = tk_strmap_get(&tok->vocab, name, 6);
    }
    return RT_OK;
}

/* Splits one merges entry ("a b" or ["a", "b"]) into its two parts. */
static int merge_parts(const cJSON *m, tk_buf *tmp, size_t *alen, size_t *blen)
{
    tmp->len = 0;
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return RT_ERR_FORMAT;
        *alen = (size_t)(sp - s);
        *blen = strlen(sp + 1);
        if (tk_buf_append(tmp, s, *alen) != RT_OK || tk_buf_append(tmp, sp + 1, *blen) != RT_OK)
            return RT_ERR_NOMEM;
        return RT_OK;
    }
    const cJSON *a = cJSON_GetArrayItem(m, 0), *b = cJSON_GetArrayItem(m, 1);
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b))
        return RT_ERR_FORMAT;
    *alen = strlen(a->valuestring);
    *blen = strlen(b->valuestring);
    if (tk_buf_append(tmp, a->valuestring, *alen) != RT_OK ||
        tk_buf_append(tmp, b->valuestring, *blen) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* Records where merge a+b (text ab[0..alen+blen)) joins two characters:
 * text is never merged across a pair of characters not recorded here,
 * which lets long words be cut into independent chunks (tokenizer_bpe.c). */
static int add_junction(tokenizer *tok, const char *ab, size_t alen, size_t blen)
{
    const unsigned char *u = (const unsigned char *)ab;
    size_t k = alen;
    while (k > 0 && (u[k - 1] & 0xC0) == 0x80)
        k--;
    uint32_t last, first;
    if (!alen || !blen || !k || !tk_utf8_decode(u + k - 1, alen - k + 1, &last) ||
        !tk_utf8_decode(u + alen, blen, &first))
        return RT_OK; /* not text we can cut on: such chunks are never cut */
    return tk_pairmap_put(&tok->junctions, (int32_t)last, (int32_t)first, 0, 0);
}

/* Fills the merge map: (id a, id b) -> (rank = position, id of a+b). */
static int load_merges(tokenizer *tok, const cJSON *merges, char *err, size_t errsize)
{
    tk_buf tmp = { 0 };
    int rc = RT_OK, rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        size_t alen, blen;
        rc = merge_parts(m, &tmp, &alen, &blen);
        if (rc != RT_OK) {
            rt_fail(err, errsize, rc, "merge %d is neither \"a b\" nor [a, b]", rank);
            goto done;
        }
        int32_t a = tk_strmap_get(&tok->vocab, tmp.p, alen);
        int32_t b = tk_strmap_get(&tok->vocab, tmp.p + alen, blen);
        int32_t ab = tk_strmap_get(&tok->vocab, tmp.p, alen + blen);
        if (a < 0 || b < 0 || ab < 0) {
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "merge %d (%s) uses a token not in the vocab",
                         rank, tmp.p);
            goto done;
        }
        rc = tk_pairmap_put(&tok->merges, a, b, rank++, ab);
        if (rc == RT_OK)
            rc = add_junction(tok, tmp.p, alen, blen);
        if (rc != RT_OK)
            goto done;
    }
done:
    tk_buf_free(&tmp);
    return rc;
}

/* Reads the "model" object: a BPE with its options. */
static int load_model(tokenizer *tok, const cJSON *model, char *err, size_t errsize)
{
    const char *type = get_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (type && strcmp(type, "BPE") != 0) {
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "model type %s is not supported (BPE only)", type);
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "model needs a vocab object and a merges array");
    }
    const char *prefix = get_str(model, "continuing_subword_prefix");
    const char *suffix = get_str(model, "end_of_word_suffix");
    if ((prefix && *prefix) || (suffix && *suffix)) {
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "BPE subword prefixes/suffixes are not supported");
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        /* Hugging Face then drops merges at random on every encode */
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "BPE dropout is not supported");
    }
    int rc = load_vocab(tok, vocab);
    if (rc != RT_OK)
        return rc;
    rc = load_merges(tok, merges, err, errsize);
    if (rc != RT_OK)
        return rc;
    const char *unk = get_str(model, "unk_token");
    tok->unk_id = unk ? tk_strmap_get(&tok->vocab, unk, strlen(unk)) : -1;
    if (unk && tok->unk_id < 0)
        rt_log(RT_LOG_WARN, "tokenizer: unk_token %s is not in the vocab; ignored", unk);
    tok->fuse_unk = get_bool(model, "fuse_unk", false);
    tok->byte_fallback = get_bool(model, "byte_fallback", false);
    tok->ignore_merges = get_bool(model, "ignore_merges", false);
    return RT_OK;
}

/* ----------------------------------------------------------- added tokens */

/* Reads "added_tokens": ids, flags, and the id table entries. */
static int load_added(tokenizer *tok, const cJSON *added, char *err, size_t errsize)
{
    int n = cJSON_GetArraySize(added);
    tok->added = calloc((size_t)n + 1, sizeof *tok->added);
    if (!tok->added)
        return RT_ERR_NOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        const char *content = get_str(it, "content");
        if (!content) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "an added token has no content");
        }
        if (!*content)
            continue;
        tk_added *a = &tok->added[tok->n_added];
        read_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &a->id); /* checked before */
        a->special = get_bool(it, "special", false);
        a->lstrip = get_bool(it, "lstrip", false);
        a->rstrip = get_bool(it, "rstrip", false);
        a->single_word = get_bool(it, "single_word", false);
        a->normalized = get_bool(it, "normalized", !a->special);
        a->len = strlen(content);
        if (dup_str(content, &a->content) != RT_OK)
            return RT_ERR_NOMEM;
        tok->n_added++;
        tok->special[a->id] = a->special;
        tok->has_single_word |= a->single_word;
        if (set_token_text(tok, a->id, content, a->len) != RT_OK ||
            tk_strmap_put(&tok->added_ids, content, a->len, a->id) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* Adds one pattern to a trie (the first of equal patterns keeps it). */
static int trie_insert(tk_trie *t, const char *s, size_t n, int32_t added)
{
    if (t->n == 0) {
        t->nodes = malloc(16 * sizeof *t->nodes);
        if (!t->nodes)
            return RT_ERR_NOMEM;
        t->cap = 16;
        t->nodes[t->n++] = (struct tk_trie_node){ -1, -1, -1, 0 };
    }
    t->first[(unsigned char)s[0] >> 3] |= (uint8_t)(1u << ((unsigned char)s[0] & 7));
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != (unsigned char)s[i])
            c = t->nodes[c].sibling;
        if (c < 0) {
            if (t->n == t->cap) {
                struct tk_trie_node *p = realloc(t->nodes, 2 * t->cap * sizeof *p);
                if (!p)
                    return RT_ERR_NOMEM;
                t->nodes = p;
                t->cap *= 2;
            }
            c = (int32_t)t->n++;
            t->nodes[c] = (struct tk_trie_node){ -1, t->nodes[node].child, -1, (unsigned char)s[i] };
            t->nodes[node].child = c;
        }
        node = c;
    }
    if (t->nodes[node].added < 0)
        t->nodes[node].added = added;
    return RT_OK;
}

/* Builds the two tries: raw contents, and normalized contents (run through
 * the normalizer, as Hugging Face matches them on normalized text). */
static int build_tries(tokenizer *tok)
{
    tk_buf tmp = { 0 };
    int rc = RT_OK;
    for (size_t i = 0; i < tok->n_added && rc == RT_OK; i++) {
        tk_added *a = &tok->added[i];
        if (!a->normalized) {
            rc = trie_insert(&tok->trie_raw, a->content, a->len, (int32_t)i);
            continue;
        }
        tmp.len = 0;
        rc = tk_normalize(tok, a->content, a->len, false, &tmp);
        if (rc == RT_OK && tmp.len == 0)
            continue;
        if (rc == RT_OK)
            rc = dup_str(tmp.p, &a->norm);
        if (rc == RT_OK) {
            a->norm_len = tmp.len;
            rc = trie_insert(&tok->trie_norm, a->norm, a->norm_len, (int32_t)i);
        }
        /* Hugging Face names the token by its normalized form (decode
         * shows it), and finds it by either form. */
        if (rc == RT_OK)
            rc = set_token_text(tok, a->id, a->norm, a->norm_len);
        if (rc == RT_OK)
            rc = tk_strmap_put(&tok->added_ids, a->norm, a->norm_len, a->id);
    }
    tk_buf_free(&tmp);
    return rc;
}

/* ------------------------------------------------------------ normalizer */

/* Grows an array of steps by one zeroed element; *slot gets it. */
static int push_step(void **arr, size_t *n, size_t size, void **slot)
{
    char *p = realloc(*arr, (*n + 1) * size);
    if (!p)
        return RT_ERR_NOMEM;
    memset(p + *n * size, 0, size);
    *arr = p;
    *slot = p + (*n)++ * size;
    return RT_OK;
}

/* Reads a {"String": s} or {"Regex": r} pattern object. */
static int load_pattern(const cJSON *pat, tk_pattern *out, char *err, size_t errsize)
{
    const char *s = get_str(pat, "String"), *r = get_str(pat, "Regex");
    if (!s && !r) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "a pattern is neither String nor Regex");
    }
    return tk_pattern_init(out, s ? s : r, s != NULL, err, errsize);
}

/* The normalizers that take no options, by their tokenizer.json type. */
static const struct { const char *type; enum tk_norm_kind kind; } plain_norms[] = {
    { "NFC", TK_NORM_NFC }, { "NFD", TK_NORM_NFD }, { "NFKC", TK_NORM_NFKC },
    { "NFKD", TK_NORM_NFKD }, { "Lowercase", TK_NORM_LOWERCASE },
};

/* Fills one non-Sequence normalizer step; an unknown type (BertNormalizer,
 * StripAccents, Nmt, ByteLevel...) fails by name rather than being skipped. */
static int load_norm_step(tk_norm *s, const char *type, const cJSON *n, char *err, size_t errsize)
{
    for (size_t i = 0; i < sizeof plain_norms / sizeof plain_norms[0]; i++) {
        if (strcmp(type, plain_norms[i].type) == 0) {
            s->kind = plain_norms[i].kind;
            return RT_OK;
        }
    }
    if (strcmp(type, "Prepend") == 0) {
        s->kind = TK_NORM_PREPEND;
        return dup_str(get_str(n, "prepend") ? get_str(n, "prepend") : "", &s->str);
    }
    if (strcmp(type, "Replace") == 0) {
        s->kind = TK_NORM_REPLACE;
        const char *content = get_str(n, "content");
        if (!content) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "a Replace normalizer has no content string");
        }
        if (dup_str(content, &s->str) != RT_OK)
            return RT_ERR_NOMEM;
        return load_pattern(cJSON_GetObjectItemCaseSensitive(n, "pattern"), &s->pat, err, errsize);
    }
    if (strcmp(type, "Strip") == 0) {
        s->kind = TK_NORM_STRIP;
        s->left = get_bool(n, "strip_left", false);
        s->right = get_bool(n, "strip_right", false);
        return RT_OK;
    }
    if (strcmp(type, "Precompiled") == 0) {
        s->kind = TK_NORM_PRECOMPILED;
        const char *map = get_str(n, "precompiled_charsmap");
        if (!map) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "a Precompiled normalizer has no precompiled_charsmap string");
        }
        return tk_charsmap_load(map, &s->map, err, errsize);
    }
    return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "normalizer %.64s is not supported (NFC, NFD, NFKC, NFKD, Lowercase, "
               "Precompiled, Prepend, Replace, Strip, Sequence)", type);
}

/* Reads one normalizer (recursing into Sequence). */
static int load_normalizer(tokenizer *tok, const cJSON *n, char *err, size_t errsize)
{
    if (!n || cJSON_IsNull(n))
        return RT_OK;
    const char *type = get_str(n, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) {
            int rc = load_normalizer(tok, it, err, errsize);
            if (rc != RT_OK)
                return rc;
        }
        return RT_OK;
    }
    if (!type) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "a normalizer has no type");
    }
    tk_norm *s;
    if (push_step((void **)&tok->norms, &tok->n_norms, sizeof *s, (void **)&s) != RT_OK)
        return RT_ERR_NOMEM;
    return load_norm_step(s, type, n, err, errsize);
}

/* --------------------------------------------------------- pre-tokenizer */

/* Maps a Split behavior name. */
static int split_behavior(const char *b, enum tk_split_behavior *out)
{
    static const struct { const char *name; enum tk_split_behavior v; } names[] = {
        { "Removed", TK_SPLIT_REMOVED }, { "Isolated", TK_SPLIT_ISOLATED },
        { "MergedWithPrevious", TK_SPLIT_MERGED_PREV },
        { "MergedWithNext", TK_SPLIT_MERGED_NEXT }, { "Contiguous", TK_SPLIT_CONTIGUOUS },
    };
    for (size_t i = 0; b && i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(b, names[i].name) == 0) {
            *out = names[i].v;
            return RT_OK;
        }
    }
    return RT_ERR_FORMAT;
}

/* Reads a Metaspace's prepend scheme (or the older add_prefix_space). */
static enum tk_prepend prepend_scheme(const cJSON *o)
{
    const char *s = get_str(o, "prepend_scheme");
    if (s)
        return !strcmp(s, "first") ? TK_PREPEND_FIRST : !strcmp(s, "never") ? TK_PREPEND_NEVER
                                                                           : TK_PREPEND_ALWAYS;
    return get_bool(o, "add_prefix_space", true) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
}

/* Fills one non-Sequence pre-tokenizer step. */
static int load_pre_step(tk_pre *s, const char *type, const cJSON *p, char *err, size_t errsize)
{
    if (strcmp(type, "Split") == 0) {
        s->kind = TK_PRE_SPLIT;
        s->invert = get_bool(p, "invert", false);
        if (split_behavior(get_str(p, "behavior"), &s->behavior) != RT_OK) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "Split has an unknown behavior");
        }
        return load_pattern(cJSON_GetObjectItemCaseSensitive(p, "pattern"), &s->pat, err, errsize);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        s->kind = TK_PRE_BYTELEVEL;
        s->add_prefix_space = get_bool(p, "add_prefix_space", true);
        if (!get_bool(p, "use_regex", true))
            return RT_OK;
        return tk_pattern_init(&s->pat, tk_gpt2_pattern, false, err, errsize);
    }
    if (strcmp(type, "Metaspace") == 0) {
        s->kind = TK_PRE_METASPACE;
        s->prepend = prepend_scheme(p);
        s->split = get_bool(p, "split", true);
        const char *r = get_str(p, "replacement") ? get_str(p, "replacement") : "\xE2\x96\x81";
        if (!*r) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "Metaspace has an empty replacement");
        }
        if (dup_str(r, &s->replacement) != RT_OK)
            return RT_ERR_NOMEM;
        return s->split ? tk_pattern_init(&s->pat, r, true, err, errsize) : RT_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        s->kind = TK_PRE_SPLIT;
        s->behavior = TK_SPLIT_ISOLATED;
        bool one = get_bool(p, "individual_digits", false);
        return tk_pattern_init(&s->pat, one ? "\\p{N}" : "\\p{N}+", false, err, errsize);
    }
    return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "pre-tokenizer %s is not supported", type);
}

/* Reads one pre-tokenizer (recursing into Sequence). */
static int load_pre(tokenizer *tok, const cJSON *p, char *err, size_t errsize)
{
    if (!p || cJSON_IsNull(p))
        return RT_OK;
    const char *type = get_str(p, "type");
    if (!type) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "a pre-tokenizer has no type");
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            int rc = load_pre(tok, it, err, errsize);
            if (rc != RT_OK)
                return rc;
        }
        return RT_OK;
    }
    tk_pre *s;
    if (push_step((void **)&tok->pres, &tok->n_pres, sizeof *s, (void **)&s) != RT_OK)
        return RT_ERR_NOMEM;
    return load_pre_step(s, type, p, err, errsize);
}

/* -------------------------------------------------------- post-processor */

/* Reads a post-processor token id, which must have a token: an id past
 * the vocabulary would reach the model as one it has no row for. */
static int post_id(const tokenizer *tok, const cJSON *v, const char *name, int32_t *id, char *err,
                   size_t errsize)
{
    if (read_id(v, id) != RT_OK || (size_t)*id >= tok->n_ids) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "post-processor token %.64s has no id in [0, %zu)", name, tok->n_ids);
    }
    return RT_OK;
}

/* Appends the ids of one template special token to v. */
static int template_ids(const tokenizer *tok, const cJSON *specials, const char *name, tk_ivec *v,
                        char *err, size_t errsize)
{
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(sp, "ids"), *it;
    if (!cJSON_IsArray(ids)) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "post-processor token %.64s has no ids list in special_tokens", name);
    }
    cJSON_ArrayForEach(it, ids) {
        int32_t id;
        if (post_id(tok, it, name, &id, err, errsize) != RT_OK)
            return RT_ERR_FORMAT;
        if (tk_ivec_push(v, id) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* TemplateProcessing's "single": special tokens before $A go to the
 * prefix, those after it to the suffix. */
static int load_template(tokenizer *tok, const cJSON *p, char *err, size_t errsize)
{
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens"), *it;
    bool after = false;
    tok->prefix.len = tok->suffix.len = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "single")) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (!sp) {
            after = true;
            continue;
        }
        const char *name = get_str(sp, "id");
        if (!name) {
            return rt_fail(err, errsize, RT_ERR_FORMAT, "a post-processor SpecialToken has no id string");
        }
        int rc = template_ids(tok, specials, name, after ? &tok->suffix : &tok->prefix, err, errsize);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* Roberta/Bert processing: [cls] $A [sep]; each given as [token, id]. */
static int load_cls_sep(tokenizer *tok, const cJSON *p, char *err, size_t errsize)
{
    int32_t cls, sep;
    if (post_id(tok, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(p, "cls"), 1), "cls", &cls, err,
                errsize) != RT_OK ||
        post_id(tok, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(p, "sep"), 1), "sep", &sep, err,
                errsize) != RT_OK)
        return RT_ERR_FORMAT;
    tok->prefix.len = tok->suffix.len = 0;
    if (tk_ivec_push(&tok->prefix, cls) != RT_OK || tk_ivec_push(&tok->suffix, sep) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* Reads the post-processor: only the ids it adds matter to us. */
static int load_post(tokenizer *tok, const cJSON *p, char *err, size_t errsize)
{
    if (!p || cJSON_IsNull(p))
        return RT_OK;
    const char *type = get_str(p, "type");
    int rc = RT_OK;
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "processors")) {
            if ((rc = load_post(tok, it, err, errsize)) != RT_OK)
                return rc;
        }
        return RT_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0)
        return RT_OK; /* offsets only */
    if (type && strcmp(type, "TemplateProcessing") == 0)
        return load_template(tok, p, err, errsize);
    if (type && (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")))
        return load_cls_sep(tok, p, err, errsize);
    return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "post-processor %.64s is not supported (TemplateProcessing, ByteLevel, "
               "RobertaProcessing, BertProcessing, Sequence)", type ? type : "without a type");
}

/* --------------------------------------------------------------- decoder */

/* Fills one non-Sequence decoder step. */
static int load_dec_step(tk_dec *s, const char *type, const cJSON *d, char *err, size_t errsize)
{
    if (strcmp(type, "ByteLevel") == 0) {
        s->kind = TK_DEC_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        s->kind = TK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        s->kind = TK_DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        s->kind = TK_DEC_REPLACE;
        const char *pat = get_str(cJSON_GetObjectItemCaseSensitive(d, "pattern"), "String");
        const char *content = get_str(d, "content");
        if (!pat || !*pat || !content) {
            return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "Replace decoder needs a String pattern and content");
        }
        if (dup_str(pat, &s->pattern) != RT_OK || dup_str(content, &s->content) != RT_OK)
            return RT_ERR_NOMEM;
    } else if (strcmp(type, "Strip") == 0) {
        s->kind = TK_DEC_STRIP;
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(d, "stop");
        s->start = cJSON_IsNumber(st) && st->valuedouble > 0 ? (size_t)st->valuedouble : 0;
        s->stop = cJSON_IsNumber(sp) && sp->valuedouble > 0 ? (size_t)sp->valuedouble : 0;
        return dup_str(get_str(d, "content") ? get_str(d, "content") : " ", &s->content);
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = TK_DEC_METASPACE;
        s->prepend = prepend_scheme(d);
        return dup_str(get_str(d, "replacement") ? get_str(d, "replacement") : "\xE2\x96\x81",
                       &s->replacement);
    } else {
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "decoder %s is not supported", type);
    }
    return RT_OK;
}

/* Reads one decoder (recursing into Sequence). */
static int load_decoder(tokenizer *tok, const cJSON *d, char *err, size_t errsize)
{
    if (!d || cJSON_IsNull(d))
        return RT_OK;
    tok->has_decoder = true;
    const char *type = get_str(d, "type");
    if (!type) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "a decoder has no type");
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(d, "decoders")) {
            int rc = load_decoder(tok, it, err, errsize);
            if (rc != RT_OK)
                return rc;
        }
        return RT_OK;
    }
    tk_dec *s;
    if (push_step((void **)&tok->decs, &tok->n_decs, sizeof *s, (void **)&s) != RT_OK)
        return RT_ERR_NOMEM;
    return load_dec_step(s, type, d, err, errsize);
}

/* Bounds the bytes one token can decode to (for streaming buffers). */
static void compute_max_token_bytes(tokenizer *tok)
{
    size_t longest = 0, grow = 1;
    for (size_t i = 0; i < tok->n_ids; i++)
        if (tok->text_len[i] > 0 && (size_t)tok->text_len[i] > longest)
            longest = (size_t)tok->text_len[i];
    for (size_t i = 0; i < tok->n_decs; i++)
        if (tok->decs[i].kind == TK_DEC_REPLACE && strlen(tok->decs[i].content) > grow)
            grow = strlen(tok->decs[i].content);
    tok->max_token_bytes = longest * grow + 4;
}

/* --------------------------------------------------------- load and free */

/* Builds every part of tok from the parsed JSON. */
static int load_parts(tokenizer *tok, const cJSON *root, char *err, size_t errsize)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab)) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "no model.vocab object");
    }
    if (added && !cJSON_IsArray(added)) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "added_tokens is not an array");
    }
    int rc = alloc_ids(tok, vocab, added, err, errsize);
    if (rc == RT_OK)
        rc = load_model(tok, model, err, errsize);
    if (rc == RT_OK)
        rc = load_added(tok, added, err, errsize);
    if (rc == RT_OK)
        rc = load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err, errsize);
    if (rc == RT_OK)
        rc = load_pre(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err, errsize);
    if (rc == RT_OK)
        rc = load_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err, errsize);
    if (rc == RT_OK)
        rc = load_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err, errsize);
    if (rc == RT_OK)
        rc = build_tries(tok);
    if (rc == RT_OK && tok->has_single_word)
        rc = tk_regex_compile("\\w", false, &tok->word_re, err, errsize);
    if (rc == RT_OK)
        compute_max_token_bytes(tok);
    if (rc == RT_ERR_NOMEM)
        rt_fail(err, errsize, rc, "out of memory");
    return rc;
}

/* Loads from JSON text; see tokenizer.h. */
int tokenizer_load_json(const char *json, size_t len, tokenizer **out,
                        char *err, size_t errsize)
{
    if (!json || !out)
        return RT_ERR_INVALID;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        return rt_fail(err, errsize, RT_ERR_FORMAT, "tokenizer.json is not valid JSON");
    }
    tokenizer *tok = calloc(1, sizeof *tok);
    int rc = tok ? load_parts(tok, root, err, errsize) : RT_ERR_NOMEM;
    cJSON_Delete(root);
    if (rc != RT_OK) {
        tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return RT_OK;
}

/* Loads a tokenizer.json file; see tokenizer.h. */
int tokenizer_load(const char *path, tokenizer **out, char *err, size_t errsize)
{
    if (!path || !out)
        return RT_ERR_INVALID;
    char *data = NULL;
    size_t len = 0;
    /* st_read_file, not a read loop: a FIFO, /dev/zero or a huge file in a
     * model folder is refused instead of blocking or eating memory. */
    int rc = rt_read_file(path, TK_MAX_FILE_BYTES, &data, &len, err, errsize);
    if (rc != RT_OK)
        return rc;
    rc = tokenizer_load_json(data, len, out, err, errsize);
    free(data);
    return rc;
}

/* Frees the steps of the pipeline. */
static void free_steps(tokenizer *tok)
{
    for (size_t i = 0; i < tok->n_norms; i++) {
        free(tok->norms[i].str);
        tk_pattern_free(&tok->norms[i].pat);
        tk_charsmap_free(tok->norms[i].map);
    }
    for (size_t i = 0; i < tok->n_pres; i++) {
        tk_pattern_free(&tok->pres[i].pat);
        free(tok->pres[i].replacement);
    }
    for (size_t i = 0; i < tok->n_decs; i++) {
        free(tok->decs[i].pattern);
        free(tok->decs[i].content);
        free(tok->decs[i].replacement);
    }
    free(tok->norms);
    free(tok->pres);
    free(tok->decs);
}

/* Frees a tokenizer; NULL is allowed. */
void tokenizer_free(tokenizer *tok)
{
    if (!tok)
        return;
    free_steps(tok);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].norm);
    }
    free(tok->added);
    free(tok->trie_raw.nodes);
    free(tok->trie_norm.nodes);
    pcre2_code_free(tok->word_re);
    tk_strmap_free(&tok->vocab);
    tk_strmap_free(&tok->added_ids);
    tk_pairmap_free(&tok->merges);
    tk_pairmap_free(&tok->junctions);
    tk_ivec_free(&tok->prefix);
    tk_ivec_free(&tok->suffix);
    tk_buf_free(&tok->text_pool);
    free(tok->text_off);
    free(tok->text_len);
    free(tok->special);
    free(tok);
}

/* ------------------------------------------------------------- accessors */

/* The id of an exact token text: added tokens first, then the vocab. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    size_t n = strlen(token);
    int32_t id = tk_strmap_get(&tok->added_ids, token, n);
    return id >= 0 ? id : tk_strmap_get(&tok->vocab, token, n);
}

/* The stored text of a token; NULL for an unused or bad id. */
const char *tokenizer_token_text(const tokenizer *tok, int32_t id, size_t *len)
{
    if (!tok || id < 0 || (size_t)id >= tok->n_ids || tok->text_len[id] < 0)
        return NULL;
    if (len)
        *len = (size_t)tok->text_len[id];
    return tok->text_pool.p + tok->text_off[id];
}

/* The model's embedding rows; see tokenizer.h. */
void tokenizer_set_model_vocab(tokenizer *tok, size_t vocab_size)
{
    if (tok)
        tok->model_vocab = vocab_size;
}

/* One more than the largest id. */
size_t tokenizer_vocab_size(const tokenizer *tok)
{
    return tok ? tok->n_ids : 0;
}

/* Whether id is a special added token. */
bool tokenizer_is_special(const tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && (size_t)id < tok->n_ids && tok->special[id];
}

/* The post-processor's ids around a single sequence. */
void tokenizer_special_ids(const tokenizer *tok, const int32_t **prefix,
                           size_t *nprefix, const int32_t **suffix, size_t *nsuffix)
{
    if (prefix)
        *prefix = tok->prefix.p;
    if (nprefix)
        *nprefix = tok->prefix.len;
    if (suffix)
        *suffix = tok->suffix.p;
    if (nsuffix)
        *nsuffix = tok->suffix.len;
}

/* The byte bound for tokenizer_token_bytes. */
size_t tokenizer_max_token_bytes(const tokenizer *tok)
{
    return tok ? tok->max_token_bytes : 0;
}
