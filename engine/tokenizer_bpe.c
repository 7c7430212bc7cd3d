/*
 * engine/tokenizer_bpe.c — the BPE model applied to one pre-token, with
 * Hugging Face's exact rules so ties and corner cases give the same ids:
 *   - ignore_merges: a pre-token that is itself in the vocabulary is one id;
 *   - each character becomes its vocabulary id, or with byte_fallback its
 *     <0xNN> byte tokens, or the unk token (consecutive unks fused when
 *     fuse_unk), or is dropped when there is none of these;
 *   - merges are applied lowest rank first, leftmost first among equal
 *     ranks, with a binary heap and lazy deletion of stale entries.
 * A long word (SentencePiece-style text has no pre-tokenizer, so a whole
 * paragraph is one word) is first cut between two known characters that
 * no merge ever joins (tok->junctions); the chunks cannot interact, so each
 * runs on its own small heap with the same result.
 * Scratch arrays live in a tk_bpe_scratch owned by the caller's encode.
 */
#include "engine/tokenizer_internal.h"

#include <stdlib.h>

#include "common/rt.h"

/* Grows the symbol arrays to hold n symbols. */
static int scratch_reserve(tk_bpe_scratch *sc, size_t n)
{
    if (n <= sc->cap)
        return RT_OK;
    size_t cap = sc->cap ? sc->cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *id = realloc(sc->id, cap * sizeof *id);
    if (id)
        sc->id = id;
    int32_t *prev = realloc(sc->prev, cap * sizeof *prev);
    if (prev)
        sc->prev = prev;
    int32_t *next = realloc(sc->next, cap * sizeof *next);
    if (next)
        sc->next = next;
    uint32_t *len = realloc(sc->len, cap * sizeof *len);
    if (len)
        sc->len = len;
    if (!id || !prev || !next || !len)
        return RT_ERR_NOMEM;
    sc->cap = cap;
    return RT_OK;
}

/* Frees the scratch arrays; the struct may be reused after. */
void tk_bpe_scratch_free(tk_bpe_scratch *sc)
{
    free(sc->id);
    free(sc->prev);
    free(sc->next);
    free(sc->len);
    free(sc->heap);
    tk_ivec_free(&sc->cuts);
    *sc = (tk_bpe_scratch){ 0 };
}

/* ------------------------------------------------------------------- heap */

static bool merge_less(const struct tk_merge *a, const struct tk_merge *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

/* Pushes a candidate merge onto the min-heap. */
static int heap_push(tk_bpe_scratch *sc, struct tk_merge m)
{
    if (sc->heap_len == sc->heap_cap) {
        size_t cap = sc->heap_cap ? sc->heap_cap * 2 : 64;
        struct tk_merge *h = realloc(sc->heap, cap * sizeof *h);
        if (!h)
            return RT_ERR_NOMEM;
        sc->heap = h;
        sc->heap_cap = cap;
    }
    size_t i = sc->heap_len++;
    while (i > 0 && merge_less(&m, &sc->heap[(i - 1) / 2])) {
        sc->heap[i] = sc->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    sc->heap[i] = m;
    return RT_OK;
}

/* Pops the lowest (rank, pos) merge; the heap must not be empty. */
static struct tk_merge heap_pop(tk_bpe_scratch *sc)
{
    struct tk_merge top = sc->heap[0], last = sc->heap[--sc->heap_len];
    size_t i = 0, n = sc->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && merge_less(&sc->heap[c + 1], &sc->heap[c]))
            c++;
        if (!merge_less(&sc->heap[c], &last))
            break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n)
        sc->heap[i] = last;
    return top;
}

/* Queues the merge of symbols left and right (adjacent) when one exists. */
static int queue_pair(const tokenizer *tok, tk_bpe_scratch *sc, int32_t left, int32_t right)
{
    int32_t rank, merged;
    if (!tk_pairmap_get(&tok->merges, sc->id[left], sc->id[right], &rank, &merged))
        return RT_OK;
    return heap_push(sc, (struct tk_merge){ rank, left, merged });
}

/* ---------------------------------------------------------------- symbols */

/* Appends a symbol of byte length len. */
static void add_symbol(tk_bpe_scratch *sc, size_t *n, int32_t id, uint32_t len)
{
    size_t i = (*n)++;
    sc->id[i] = id;
    sc->len[i] = len;
    sc->prev[i] = (int32_t)i - 1;
    sc->next[i] = (int32_t)i + 1;
}

/* The vocabulary id of one character w[0..k). */
static int32_t char_id(const tokenizer *tok, const char *w, size_t k)
{
    uint32_t cp;
    if (k <= 2 && tk_utf8_decode((const unsigned char *)w, k, &cp) == k && cp < 0x800)
        return tok->cp_id[cp];
    return tk_strmap_get(&tok->vocab, w, k);
}

/* Whether every byte of w[0..k) has a <0xNN> token. */
static bool has_byte_tokens(const tokenizer *tok, const char *w, size_t k)
{
    for (size_t j = 0; j < k; j++)
        if (tok->byte_token[(unsigned char)w[j]] < 0)
            return false;
    return true;
}

/* Whether no merge can join the known characters prev and cp. */
static bool can_cut(const tokenizer *tok, uint32_t prev, uint32_t cp)
{
    int32_t r, m;
    return !tk_pairmap_get(&tok->junctions, (int32_t)prev, (int32_t)cp, &r, &m);
}

/* Turns the word into initial symbols (characters, byte tokens, unk);
 * *n gets the symbol count and sc->cuts the chunk starts (after 0). */
static int initial_symbols(const tokenizer *tok, tk_bpe_scratch *sc, const char *w,
                           size_t n, size_t *ns)
{
    int32_t unk = -1;  /* pending unk symbol's byte length, or -1 */
    uint32_t prev = UINT32_MAX, cp = 0; /* previous character when known */
    *ns = 0;
    sc->cuts.len = 0;
    for (size_t i = 0; i < n;) {
        size_t k = tk_utf8_charlen((const unsigned char *)w + i, n - i);
        int32_t id = char_id(tok, w + i, k);
        if (id >= 0) {
            if (unk >= 0)
                add_symbol(sc, ns, tok->unk_id, (uint32_t)unk);
            tk_utf8_decode((const unsigned char *)w + i, k, &cp);
            if (unk < 0 && prev != UINT32_MAX && can_cut(tok, prev, cp) &&
                tk_ivec_push(&sc->cuts, (int32_t)*ns) != RT_OK)
                return RT_ERR_NOMEM;
            unk = -1;
            prev = cp;
            add_symbol(sc, ns, id, (uint32_t)k);
            i += k;
            continue;
        }
        prev = UINT32_MAX;
        if (tok->byte_fallback && has_byte_tokens(tok, w + i, k)) {
            /* as Hugging Face: a pending unk is not flushed here */
            for (size_t j = 0; j < k; j++)
                add_symbol(sc, ns, tok->byte_token[(unsigned char)w[i + j]], 1);
        } else if (tok->unk_id >= 0) {
            if (unk >= 0 && tok->fuse_unk) {
                unk += (int32_t)k;
            } else {
                if (unk >= 0)
                    add_symbol(sc, ns, tok->unk_id, (uint32_t)unk);
                unk = (int32_t)k;
            }
        }
        i += k;
    }
    if (unk >= 0)
        add_symbol(sc, ns, tok->unk_id, (uint32_t)unk);
    return RT_OK;
}

/* Applies merges to symbols [s, e) until none is left (Hugging Face's
 * Word::merge_all), the range standing alone. */
static int merge_all(const tokenizer *tok, tk_bpe_scratch *sc, int32_t s, int32_t e)
{
    sc->heap_len = 0;
    sc->prev[s] = -1;
    sc->next[e - 1] = -1;
    for (int32_t i = s; i + 1 < e; i++)
        if (queue_pair(tok, sc, i, i + 1) != RT_OK)
            return RT_ERR_NOMEM;
    while (sc->heap_len) {
        struct tk_merge top = heap_pop(sc);
        int32_t pos = top.pos, right = sc->next[pos], rank, merged;
        if (sc->len[pos] == 0 || right < 0)
            continue;
        if (!tk_pairmap_get(&tok->merges, sc->id[pos], sc->id[right], &rank, &merged) ||
            merged != top.merged)
            continue; /* stale entry */
        sc->id[pos] = merged;
        sc->len[pos] += sc->len[right];
        sc->len[right] = 0;
        sc->next[pos] = sc->next[right];
        if (sc->next[right] >= 0)
            sc->prev[sc->next[right]] = pos;
        if (sc->prev[pos] >= 0 && queue_pair(tok, sc, sc->prev[pos], pos) != RT_OK)
            return RT_ERR_NOMEM;
        if (sc->next[pos] >= 0 && queue_pair(tok, sc, pos, sc->next[pos]) != RT_OK)
            return RT_ERR_NOMEM;
    }
    return RT_OK;
}

/* Encodes one pre-token; see tokenizer_internal.h. */
int tk_bpe_word(const tokenizer *tok, tk_bpe_scratch *sc, const char *w, size_t n,
                tk_ivec *out)
{
    if (n == 0)
        return RT_OK;
    if (tok->ignore_merges) {
        int32_t id = tk_strmap_get(&tok->vocab, w, n);
        if (id >= 0)
            return tk_ivec_push(out, id);
    }
    size_t ns;
    if (scratch_reserve(sc, n) != RT_OK || initial_symbols(tok, sc, w, n, &ns) != RT_OK ||
        tk_ivec_push(&sc->cuts, (int32_t)ns) != RT_OK)
        return RT_ERR_NOMEM;
    int32_t start = 0;
    for (size_t c = 0; c < sc->cuts.len; c++) {
        int32_t end = sc->cuts.p[c];
        if (end <= start)
            continue;
        if (merge_all(tok, sc, start, end) != RT_OK)
            return RT_ERR_NOMEM;
        for (int32_t i = start; i >= 0; i = sc->next[i])
            if (tk_ivec_push(out, sc->id[i]) != RT_OK)
                return RT_ERR_NOMEM;
        start = end;
    }
    return RT_OK;
}
