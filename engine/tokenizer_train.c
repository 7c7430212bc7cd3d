/*
 * engine/tokenizer_train.c — trains a byte-level BPE and writes it as a
 * Hugging Face tokenizer.json (so both Hugging Face and tokenizer_load read
 * it). Used to build a small built-in model's tokenizer from a corpus.
 *
 * The classic algorithm on word types: the corpus is cut into pre-tokens by
 * the GPT-2 regex and counted once; each distinct word keeps its symbol
 * sequence, each adjacent pair its total count and the words it occurs in.
 * A max-heap with lazy re-insertion picks the most frequent pair; merging
 * it only revisits the words that hold it, and only pairs that touch the
 * new symbol can grow, so only those are pushed again. Ties go to the
 * smaller (left id, right id), which makes the result deterministic.
 */
#include "engine/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rt.h"

typedef struct tr_pair {
    int32_t a, b;
    int64_t count;
    tk_ivec where;     /* words holding the pair (may repeat or be stale) */
    uint32_t stamp;    /* last merge step that queued it */
    bool banned;
} tr_pair;

typedef struct tr_heap_ent { int64_t count; int32_t a, b, pair; } tr_heap_ent;

typedef struct trainer {
    size_t n_special;
    const char *const *specials;
    /* tokens: bytes per id (specials hold their content) */
    tk_buf tok_bytes;
    size_t *tok_off;
    uint32_t *tok_len;
    size_t n_tok, tok_cap;
    tk_strmap tok_ids;       /* bytes -> id, for learned and byte tokens */
    tk_ivec merges;          /* pairs (a, b) flattened */
    /* words */
    tk_strmap word_ids;
    tk_ivec freq_tmp;        /* count per word while counting */
    int64_t *freq;
    int32_t *sym;
    size_t *word_off;
    uint32_t *word_len;
    uint32_t *word_stamp;
    size_t n_words;
    /* pairs */
    tk_pairmap pair_idx;     /* (a, b) -> index in pairs (stored as rank) */
    tr_pair *pairs;
    size_t n_pairs, pairs_cap;
    tr_heap_ent *heap;
    size_t heap_len, heap_cap;
    uint32_t step;
} trainer;

/* ----------------------------------------------------------------- tokens */

/* Adds a token with the given bytes; *id gets its id. */
static int add_token(trainer *t, const char *s, size_t n, bool index, int32_t *id)
{
    if (t->n_tok == t->tok_cap) {
        size_t cap = t->tok_cap ? t->tok_cap * 2 : 512;
        size_t *off = realloc(t->tok_off, cap * sizeof *off);
        if (off)
            t->tok_off = off;
        uint32_t *len = realloc(t->tok_len, cap * sizeof *len);
        if (len)
            t->tok_len = len;
        if (!off || !len)
            return RT_ERR_NOMEM;
        t->tok_cap = cap;
    }
    t->tok_off[t->n_tok] = t->tok_bytes.len;
    t->tok_len[t->n_tok] = (uint32_t)n;
    if (tk_buf_append(&t->tok_bytes, s, n) != RT_OK)
        return RT_ERR_NOMEM;
    if (index && tk_strmap_put(&t->tok_ids, s, n, (int32_t)t->n_tok) != RT_OK)
        return RT_ERR_NOMEM;
    *id = (int32_t)t->n_tok++;
    return RT_OK;
}

/* The special tokens, then one token per byte value. */
static int add_initial_tokens(trainer *t)
{
    int32_t id;
    for (size_t i = 0; i < t->n_special; i++)
        if (add_token(t, t->specials[i], strlen(t->specials[i]), false, &id) != RT_OK)
            return RT_ERR_NOMEM;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (add_token(t, &c, 1, true, &id) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* Whether bytes s[0..n), written byte-level, equal a special token. */
static bool clashes_with_special(const trainer *t, const char *s, size_t n, tk_buf *tmp)
{
    tmp->len = 0;
    if (tk_bytelevel_encode(tmp, s, n) != RT_OK)
        return true;
    for (size_t i = 0; i < t->n_special; i++)
        if (strlen(t->specials[i]) == tmp->len && !memcmp(t->specials[i], tmp->p, tmp->len))
            return true;
    return false;
}

/* --------------------------------------------------------------- counting */

/* Counts one pre-token. */
static int count_word(trainer *t, const char *s, size_t n)
{
    int32_t w = tk_strmap_get(&t->word_ids, s, n);
    if (w >= 0) {
        t->freq_tmp.p[w]++;
        return RT_OK;
    }
    if (tk_strmap_put(&t->word_ids, s, n, (int32_t)t->word_ids.n) != RT_OK ||
        tk_ivec_push(&t->freq_tmp, 1) != RT_OK)
        return RT_ERR_NOMEM;
    return RT_OK;
}

/* Length of the special token starting at s[0..n), or 0. */
static size_t special_at(const trainer *t, const char *s, size_t n)
{
    for (size_t i = 0; i < t->n_special; i++) {
        size_t k = strlen(t->specials[i]);
        if (k && k <= n && !memcmp(s, t->specials[i], k))
            return k;
    }
    return 0;
}

/* Pre-tokenizes text[0..n) (no special tokens inside) and counts words. */
static int count_region(trainer *t, const pcre2_code *re, pcre2_match_data *md,
                        tk_spans *spans, const char *s, size_t n)
{
    spans->len = 0;
    int rc = tk_regex_spans(re, md, s, n, spans);
    for (size_t i = 0; rc == RT_OK && i < spans->len; i++)
        rc = count_word(t, s + spans->p[i].start, spans->p[i].end - spans->p[i].start);
    return rc;
}

/* Counts the words of the whole corpus, cutting out special tokens. */
static int count_corpus(trainer *t, const char *s, size_t n, char *err, size_t errsize)
{
    pcre2_code *re = NULL;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    tk_spans spans = { 0 };
    int rc = md ? tk_regex_compile(tk_gpt2_pattern, false, &re, err, errsize) : RT_ERR_NOMEM;
    size_t start = 0, i = 0;
    while (rc == RT_OK && i < n) {
        size_t k = special_at(t, s + i, n - i);
        if (!k) {
            i++;
            continue;
        }
        rc = count_region(t, re, md, &spans, s + start, i - start);
        i += k;
        start = i;
    }
    if (rc == RT_OK)
        rc = count_region(t, re, md, &spans, s + start, n - start);
    free(spans.p);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc;
}

/* Lays the counted words out as symbol arrays (one byte token each). */
static int build_words(trainer *t)
{
    size_t nw = t->word_ids.n, total = t->word_ids.pool.len;
    t->n_words = nw;
    t->freq = malloc((nw + 1) * sizeof *t->freq);
    t->sym = malloc((total + 1) * sizeof *t->sym);
    t->word_off = malloc((nw + 1) * sizeof *t->word_off);
    t->word_len = malloc((nw + 1) * sizeof *t->word_len);
    t->word_stamp = calloc(nw + 1, sizeof *t->word_stamp);
    if (!t->freq || !t->sym || !t->word_off || !t->word_len || !t->word_stamp)
        return RT_ERR_NOMEM;
    for (size_t e = 0; e < nw; e++) {
        const struct tk_strent *ent = &t->word_ids.ents[e];
        size_t w = (size_t)ent->value;
        t->word_off[w] = ent->off;
        t->word_len[w] = ent->len;
        t->freq[w] = t->freq_tmp.p[w];
        for (uint32_t i = 0; i < ent->len; i++)
            t->sym[ent->off + i] = (int32_t)(t->n_special + (unsigned char)t->word_ids.pool.p[ent->off + i]);
    }
    return RT_OK;
}

/* ------------------------------------------------------------------ pairs */

/* Index of pair (a, b), created with count 0 when new. */
static int pair_index(trainer *t, int32_t a, int32_t b, int32_t *idx)
{
    int32_t merged;
    if (tk_pairmap_get(&t->pair_idx, a, b, idx, &merged))
        return RT_OK;
    if (t->n_pairs == t->pairs_cap) {
        size_t cap = t->pairs_cap ? t->pairs_cap * 2 : 1024;
        tr_pair *p = realloc(t->pairs, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        t->pairs = p;
        t->pairs_cap = cap;
    }
    *idx = (int32_t)t->n_pairs;
    t->pairs[t->n_pairs++] = (tr_pair){ .a = a, .b = b };
    return tk_pairmap_put(&t->pair_idx, a, b, *idx, 0);
}

/* Adds delta to pair (a, b); when w >= 0 notes that word w holds it. */
static int pair_add(trainer *t, int32_t a, int32_t b, int64_t delta, int32_t w, int32_t *idx)
{
    if (pair_index(t, a, b, idx) != RT_OK)
        return RT_ERR_NOMEM;
    tr_pair *p = &t->pairs[*idx];
    p->count += delta;
    if (w >= 0 && (p->where.len == 0 || p->where.p[p->where.len - 1] != w))
        return tk_ivec_push(&p->where, w);
    return RT_OK;
}

/* Heap order: higher count first, then smaller (a, b). */
static bool heap_before(const tr_heap_ent *x, const tr_heap_ent *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    return x->a != y->a ? x->a < y->a : x->b < y->b;
}

/* Queues pair idx with its current count. */
static int heap_push(trainer *t, int32_t idx)
{
    if (t->heap_len == t->heap_cap) {
        size_t cap = t->heap_cap ? t->heap_cap * 2 : 1024;
        tr_heap_ent *h = realloc(t->heap, cap * sizeof *h);
        if (!h)
            return RT_ERR_NOMEM;
        t->heap = h;
        t->heap_cap = cap;
    }
    tr_heap_ent e = { t->pairs[idx].count, t->pairs[idx].a, t->pairs[idx].b, idx };
    size_t i = t->heap_len++;
    while (i > 0 && heap_before(&e, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = e;
    return RT_OK;
}

/* Takes the first entry off the (non-empty) heap. */
static tr_heap_ent heap_pop(trainer *t)
{
    tr_heap_ent top = t->heap[0], last = t->heap[--t->heap_len];
    size_t i = 0, n = t->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_before(&t->heap[c + 1], &t->heap[c]))
            c++;
        if (!heap_before(&t->heap[c], &last))
            break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n)
        t->heap[i] = last;
    return top;
}

/* Counts every adjacent pair of every word and queues the useful ones. */
static int count_pairs(trainer *t)
{
    for (size_t w = 0; w < t->n_words; w++) {
        const int32_t *s = t->sym + t->word_off[w];
        for (uint32_t i = 0; i + 1 < t->word_len[w]; i++) {
            int32_t idx;
            if (pair_add(t, s[i], s[i + 1], t->freq[w], (int32_t)w, &idx) != RT_OK)
                return RT_ERR_NOMEM;
        }
    }
    for (size_t i = 0; i < t->n_pairs; i++)
        if (t->pairs[i].count >= 2 && heap_push(t, (int32_t)i) != RT_OK)
            return RT_ERR_NOMEM;
    return RT_OK;
}

/* ------------------------------------------------------------------ merge */

/* Replaces (a, b) by nid in word w and moves the pair counts with it;
 * pairs that now touch nid are collected in touched (once per step). */
static int merge_word(trainer *t, int32_t w, int32_t a, int32_t b, int32_t nid, tk_ivec *touched)
{
    int32_t *s = t->sym + t->word_off[w], idx;
    uint32_t n = t->word_len[w], j = 0;
    int64_t f = t->freq[w];
    for (uint32_t i = 0; i + 1 < n; i++)
        if (pair_add(t, s[i], s[i + 1], -f, -1, &idx) != RT_OK)
            return RT_ERR_NOMEM;
    for (uint32_t i = 0; i < n; j++) {
        bool hit = i + 1 < n && s[i] == a && s[i + 1] == b;
        s[j] = hit ? nid : s[i];
        i += hit ? 2 : 1;
    }
    t->word_len[w] = j;
    for (uint32_t i = 0; i + 1 < j; i++) {
        bool mine = s[i] == nid || s[i + 1] == nid;
        if (pair_add(t, s[i], s[i + 1], f, mine ? w : -1, &idx) != RT_OK)
            return RT_ERR_NOMEM;
        if (mine && t->pairs[idx].stamp != t->step) {
            t->pairs[idx].stamp = t->step;
            if (tk_ivec_push(touched, idx) != RT_OK)
                return RT_ERR_NOMEM;
        }
    }
    return RT_OK;
}

/* Whether word w holds the pair (a, b) right now. */
static bool word_has(const trainer *t, size_t w, int32_t a, int32_t b)
{
    const int32_t *s = t->sym + t->word_off[w];
    for (uint32_t i = 0; i + 1 < t->word_len[w]; i++)
        if (s[i] == a && s[i + 1] == b)
            return true;
    return false;
}

/* Applies the merge of pair idx into token nid everywhere. */
static int apply_merge(trainer *t, int32_t idx, int32_t nid)
{
    tk_ivec touched = { 0 };
    int32_t a = t->pairs[idx].a, b = t->pairs[idx].b;
    int rc = RT_OK;
    t->step++;
    for (size_t k = 0; rc == RT_OK && k < t->pairs[idx].where.len; k++) {
        int32_t w = t->pairs[idx].where.p[k];
        if (t->word_stamp[w] == t->step || !word_has(t, (size_t)w, a, b))
            continue;
        t->word_stamp[w] = t->step;
        rc = merge_word(t, w, a, b, nid, &touched);
    }
    for (size_t k = 0; rc == RT_OK && k < touched.len; k++)
        if (t->pairs[touched.p[k]].count >= 2)
            rc = heap_push(t, touched.p[k]);
    tk_ivec_free(&touched);
    return rc;
}

/* The id of the token a+b: an existing one with the same bytes, or a new
 * one; -1 when it would clash with a special token. */
static int merged_token(trainer *t, int32_t a, int32_t b, tk_buf *tmp, int32_t *id)
{
    tk_buf cat = { 0 };
    int rc = tk_buf_append(&cat, t->tok_bytes.p + t->tok_off[a], t->tok_len[a]);
    if (rc == RT_OK)
        rc = tk_buf_append(&cat, t->tok_bytes.p + t->tok_off[b], t->tok_len[b]);
    if (rc == RT_OK) {
        *id = tk_strmap_get(&t->tok_ids, cat.p, cat.len);
        if (*id < 0 && clashes_with_special(t, cat.p, cat.len, tmp))
            *id = -1;
        else if (*id < 0)
            rc = add_token(t, cat.p, cat.len, true, id);
    }
    tk_buf_free(&cat);
    return rc;
}

/* Merges the most frequent pairs until the vocabulary is full. */
static int learn_merges(trainer *t, size_t vocab_size)
{
    tk_buf tmp = { 0 };
    int rc = RT_OK;
    while (rc == RT_OK && t->n_tok < vocab_size && t->heap_len) {
        tr_heap_ent top = heap_pop(t);
        tr_pair *p = &t->pairs[top.pair];
        if (p->banned)
            continue;
        if (p->count != top.count) {
            if (p->count >= 2)
                rc = heap_push(t, top.pair);
            continue;
        }
        int32_t nid;
        rc = merged_token(t, p->a, p->b, &tmp, &nid);
        if (rc != RT_OK)
            break;
        if (nid < 0) {
            t->pairs[top.pair].banned = true;
            continue;
        }
        rc = tk_ivec_push(&t->merges, top.a);
        if (rc == RT_OK)
            rc = tk_ivec_push(&t->merges, top.b);
        if (rc == RT_OK)
            rc = apply_merge(t, top.pair, nid);
    }
    tk_buf_free(&tmp);
    return rc;
}

/* ----------------------------------------------------------------- output */

/* The byte-level string of token id (a new cJSON-ready C string in tmp). */
static const char *token_string(const trainer *t, int32_t id, tk_buf *tmp)
{
    tmp->len = 0;
    if ((size_t)id < t->n_special)
        return t->specials[id];
    if (tk_bytelevel_encode(tmp, t->tok_bytes.p + t->tok_off[id], t->tok_len[id]) != RT_OK)
        return NULL;
    return tmp->p;
}

/* The "model" object: vocab and merges. */
static cJSON *model_json(const trainer *t)
{
    tk_buf tmp = { 0 }, m = { 0 };
    cJSON *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    bool ok = model && vocab && merges;
    for (size_t id = 0; ok && id < t->n_tok; id++) {
        const char *s = token_string(t, (int32_t)id, &tmp);
        ok = s && cJSON_AddNumberToObject(vocab, s, (double)id);
    }
    for (size_t i = 0; ok && i + 1 < t->merges.len; i += 2) {
        const char *a = token_string(t, t->merges.p[i], &tmp);
        m.len = 0;
        ok = a && tk_buf_append(&m, a, strlen(a)) == RT_OK && tk_buf_putc(&m, ' ') == RT_OK;
        const char *b = ok ? token_string(t, t->merges.p[i + 1], &tmp) : NULL;
        ok = b && tk_buf_append(&m, b, strlen(b)) == RT_OK &&
             cJSON_AddItemToArray(merges, cJSON_CreateString(m.p));
    }
    ok = ok && cJSON_AddStringToObject(model, "type", "BPE") && cJSON_AddNullToObject(model, "dropout") &&
         cJSON_AddNullToObject(model, "unk_token") && cJSON_AddNullToObject(model, "continuing_subword_prefix") &&
         cJSON_AddNullToObject(model, "end_of_word_suffix") && cJSON_AddFalseToObject(model, "fuse_unk") &&
         cJSON_AddFalseToObject(model, "byte_fallback") && cJSON_AddFalseToObject(model, "ignore_merges") &&
         cJSON_AddItemToObject(model, "vocab", vocab);
    if (ok)
        vocab = NULL;
    ok = ok && cJSON_AddItemToObject(model, "merges", merges);
    if (ok)
        merges = NULL;
    tk_buf_free(&tmp);
    tk_buf_free(&m);
    cJSON_Delete(vocab);
    cJSON_Delete(merges);
    if (!ok) {
        cJSON_Delete(model);
        return NULL;
    }
    return model;
}

/* A ByteLevel component object (pre-tokenizer, post-processor, decoder). */
static cJSON *bytelevel_json(bool add_prefix_space, bool trim_offsets)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "type", "ByteLevel") ||
        !cJSON_AddBoolToObject(o, "add_prefix_space", add_prefix_space) ||
        !cJSON_AddBoolToObject(o, "trim_offsets", trim_offsets) ||
        !cJSON_AddTrueToObject(o, "use_regex")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* The "added_tokens" array: the special tokens. */
static cJSON *added_json(const trainer *t)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < t->n_special; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            cJSON_Delete(arr);
            return NULL;
        }
        if (!cJSON_AddNumberToObject(o, "id", (double)i) ||
            !cJSON_AddStringToObject(o, "content", t->specials[i]) ||
            !cJSON_AddFalseToObject(o, "single_word") || !cJSON_AddFalseToObject(o, "lstrip") ||
            !cJSON_AddFalseToObject(o, "rstrip") || !cJSON_AddFalseToObject(o, "normalized") ||
            !cJSON_AddTrueToObject(o, "special")) {
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

/* The whole tokenizer.json document. */
static cJSON *tokenizer_json(const trainer *t)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *parts[5] = { added_json(t), bytelevel_json(false, true), bytelevel_json(true, false),
                        bytelevel_json(true, true), model_json(t) };
    static const char *names[5] = { "added_tokens", "pre_tokenizer", "post_processor", "decoder", "model" };
    bool ok = root && cJSON_AddStringToObject(root, "version", "1.0") &&
              cJSON_AddNullToObject(root, "truncation") && cJSON_AddNullToObject(root, "padding");
    for (int i = 0; i < 5; i++) {
        ok = ok && parts[i] && cJSON_AddItemToObject(root, names[i], parts[i]);
        if (ok)
            parts[i] = NULL;
        if (ok && i == 0)
            ok = cJSON_AddNullToObject(root, "normalizer") != NULL;
    }
    for (int i = 0; i < 5; i++)
        cJSON_Delete(parts[i]);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Writes text and a final newline to path atomically (common/rt.h). */
static int write_atomic(const char *path, const char *text, char *err, size_t errsize)
{
    rt_atomic_file a;
    int rc = rt_atomic_begin(&a, path, err, errsize);
    if (rc == RT_OK)
        rc = rt_atomic_append(&a, text, strlen(text), err, errsize);
    if (rc == RT_OK)
        rc = rt_atomic_append(&a, "\n", 1, err, errsize);
    if (rc != RT_OK) {
        rt_atomic_abort(&a);
        return rc;
    }
    return rt_atomic_commit(&a, err, errsize);
}

/* Frees everything a trainer holds. */
static void trainer_free(trainer *t)
{
    tk_buf_free(&t->tok_bytes);
    free(t->tok_off);
    free(t->tok_len);
    tk_strmap_free(&t->tok_ids);
    tk_ivec_free(&t->merges);
    tk_strmap_free(&t->word_ids);
    tk_ivec_free(&t->freq_tmp);
    free(t->freq);
    free(t->sym);
    free(t->word_off);
    free(t->word_len);
    free(t->word_stamp);
    tk_pairmap_free(&t->pair_idx);
    for (size_t i = 0; i < t->n_pairs; i++)
        tk_ivec_free(&t->pairs[i].where);
    free(t->pairs);
    free(t->heap);
}

/* Trains and writes; see tokenizer.h. */
int tokenizer_train_bytelevel(const char *corpus, size_t size, size_t vocab_size,
                              const char *const *special_tokens, size_t n_special,
                              const char *out_path, char *err, size_t errsize)
{
    if ((!corpus && size) || !out_path || (n_special && !special_tokens) ||
        vocab_size < 256 + n_special || vocab_size > (1u << 24)) {
        return rt_fail(err, errsize, RT_ERR_INVALID, "bad arguments (vocab_size must be >= 256 + specials)");
    }
    trainer t = { .n_special = n_special, .specials = special_tokens };
    tk_buf clean = { 0 };
    const char *text = corpus ? corpus : "";
    int rc = RT_OK;
    if (!tk_utf8_valid(text, size)) {
        rc = tk_utf8_lossy(&clean, text, size, false, NULL);
        text = clean.p;
        size = clean.len;
    }
    if (rc == RT_OK)
        rc = add_initial_tokens(&t);
    if (rc == RT_OK)
        rc = count_corpus(&t, text, size, err, errsize);
    if (rc == RT_OK)
        rc = build_words(&t);
    if (rc == RT_OK)
        rc = count_pairs(&t);
    if (rc == RT_OK)
        rc = learn_merges(&t, vocab_size);
    cJSON *doc = rc == RT_OK ? tokenizer_json(&t) : NULL;
    char *json = doc ? cJSON_Print(doc) : NULL;
    if (rc == RT_OK && !json)
        rc = RT_ERR_NOMEM;
    if (rc == RT_OK)
        rc = write_atomic(out_path, json, err, errsize);
    if (rc == RT_ERR_NOMEM)
        rt_fail(err, errsize, rc, "out of memory");
    free(json);
    cJSON_Delete(doc);
    tk_buf_free(&clean);
    trainer_free(&t);
    return rc;
}
