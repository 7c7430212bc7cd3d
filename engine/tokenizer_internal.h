/*
 * engine/tokenizer_internal.h — what the tokenizer_*.c files share and
 * nothing else includes: the struct behind a tokenizer handle, its hash
 * maps, growable buffers, UTF-8 and byte-level helpers, and the regex
 * wrapper. The files split the work as:
 *   tokenizer.c         loading tokenizer.json, accessors, free
 *   tokenizer_util.c    buffers, hash maps, UTF-8, byte-level tables, regex
 *   tokenizer_encode.c  added tokens, normalizers, pre-tokenizers, encode
 *   tokenizer_bpe.c     the BPE model on one pre-token
 *   tokenizer_decode.c  decoders, decode, streaming
 *   tokenizer_unicode.c NFC/NFD/NFKC/NFKD, Lowercase, grapheme clusters
 *   tokenizer_precompiled.c  the Precompiled (SentencePiece charsmap) normalizer
 *   tokenizer_train.c   the byte-level BPE trainer
 */
#ifndef RT_ENGINE_TOKENIZER_INTERNAL_H
#define RT_ENGINE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"

/* ---- growable buffers (tokenizer_util.c) ---- */

typedef struct tk_buf { char *p; size_t len, cap; } tk_buf;
typedef struct tk_ivec { int32_t *p; size_t len, cap; } tk_ivec;

int tk_buf_reserve(tk_buf *b, size_t extra);
int tk_buf_append(tk_buf *b, const void *data, size_t n);
int tk_buf_putc(tk_buf *b, char c);
void tk_buf_free(tk_buf *b);
int tk_ivec_push(tk_ivec *v, int32_t x);
int tk_ivec_append(tk_ivec *v, const int32_t *x, size_t n);
void tk_ivec_free(tk_ivec *v);

/* ---- hash maps (tokenizer_util.c) ---- */

/* Byte string -> int32, keys copied into the map's own pool. */
typedef struct tk_strmap {
    uint32_t *slots;   /* entry index + 1; 0 = empty */
    size_t cap;        /* power of two */
    struct tk_strent { uint64_t hash; size_t off; uint32_t len; int32_t value; } *ents;
    size_t n, ents_cap;
    tk_buf pool;
} tk_strmap;

int tk_strmap_put(tk_strmap *m, const char *key, size_t len, int32_t value);
/* Returns the value, or -1 when absent. */
int32_t tk_strmap_get(const tk_strmap *m, const char *key, size_t len);
void tk_strmap_free(tk_strmap *m);
uint64_t tk_hash_bytes(const char *s, size_t len);

/* (left id, right id) -> (rank, merged id). */
typedef struct tk_pairmap {
    uint64_t *keys;    /* (a << 32 | b) + 1; 0 = empty */
    int32_t *rank, *merged;
    size_t cap, n;
} tk_pairmap;

int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
/* True when (a, b) is present; fills *rank and *merged. */
bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank,
                    int32_t *merged);
void tk_pairmap_free(tk_pairmap *m);

/* ---- UTF-8 and byte-level (tokenizer_util.c) ---- */

/* Length of the valid UTF-8 character at s[0..n), or 0 when invalid or
 * incomplete; *cp gets the code point. */
size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Appends the UTF-8 encoding of cp. */
int tk_utf8_put(tk_buf *b, uint32_t cp);
/* Length of the char starting at s (1 for a stray byte), never past n. */
size_t tk_utf8_charlen(const unsigned char *s, size_t n);
/* Whether s[0..n) is valid UTF-8. */
bool tk_utf8_valid(const char *s, size_t n);
/* Appends s with each maximal invalid subsequence replaced by U+FFFD (as
 * Rust's String::from_utf8_lossy). When stop_incomplete is set a valid but
 * unfinished sequence at the end is not appended; *used gets the bytes
 * consumed. */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t n, bool stop_incomplete,
                  size_t *used);
/* Unicode White_Space (Rust's char::is_whitespace). */
bool tk_is_whitespace(uint32_t cp);

/* GPT-2's bytes_to_unicode: byte -> code point, and its inverse (-1 for a
 * code point that is no byte). */
uint32_t tk_byte_to_cp(unsigned char b);
int tk_cp_to_byte(uint32_t cp);
/* Appends the byte-level form of bytes s[0..n). */
int tk_bytelevel_encode(tk_buf *out, const char *s, size_t n);
/* Appends the bytes a byte-level string stands for; false (nothing
 * appended) when some character is not in the byte-level alphabet. */
int tk_bytelevel_decode(tk_buf *out, const char *s, size_t n, bool *ok);

/* ---- regexes (tokenizer_util.c) ---- */

/* The GPT-2 pre-tokenizer regex that ByteLevel(use_regex) stands for. */
extern const char tk_gpt2_pattern[];

/* Compiles a pattern (UTF, UCP; literal when literal is set), JIT when
 * available. On failure writes a message into err. */
int tk_regex_compile(const char *pattern, bool literal, pcre2_code **out,
                     char *err, size_t errsize);

/* One found match or gap: [start, end) of a subject, is_match. */
typedef struct tk_span { size_t start, end; bool match; } tk_span;
typedef struct tk_spans { tk_span *p; size_t len, cap; } tk_spans;

/* Appends the matches and gaps of re over s[0..n) to out, covering all of
 * s in order (Hugging Face's find_matches); md is scratch match data. */
int tk_regex_spans(const pcre2_code *re, pcre2_match_data *md, const char *s,
                   size_t n, tk_spans *out);

/* First occurrence of needle[0..m) (m > 0) in hay[0..n), or NULL. */
const char *tk_find(const char *hay, size_t n, const char *needle, size_t m);

/* A pattern from tokenizer.json: a regex, or a literal string (faster). */
typedef struct tk_pattern {
    pcre2_code *re;       /* NULL for a literal */
    char *lit;
    size_t lit_len;
} tk_pattern;

/* Compiles {"Regex": r} (regex) or a literal string; on failure writes a
 * message into err. */
int tk_pattern_init(tk_pattern *p, const char *text, bool literal, char *err, size_t errsize);
/* As tk_regex_spans, for either kind of pattern. */
int tk_pattern_spans(const tk_pattern *p, pcre2_match_data *md, const char *s,
                     size_t n, tk_spans *out);
void tk_pattern_free(tk_pattern *p);

/* ---- the pipeline's parts (tokenizer.c builds them) ---- */

enum tk_norm_kind {
    TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP, TK_NORM_NFC, TK_NORM_NFD,
    TK_NORM_NFKC, TK_NORM_NFKD, TK_NORM_LOWERCASE, TK_NORM_PRECOMPILED
};

/* A SentencePiece precompiled_charsmap (tokenizer_precompiled.c). */
typedef struct tk_charsmap tk_charsmap;

typedef struct tk_norm {
    enum tk_norm_kind kind;
    char *str;            /* PREPEND: text; REPLACE: content */
    tk_pattern pat;       /* REPLACE: the pattern */
    bool left, right;     /* STRIP */
    tk_charsmap *map;     /* PRECOMPILED */
} tk_norm;

/* ---- Unicode normalizers (tokenizer_unicode.c) ---- */

/* Appends the normal form (kind TK_NORM_NFC/NFD/NFKC/NFKD) of valid UTF-8
 * s[0..n) to out. Errors: RT_ERR_NOMEM, RT_ERR_FORMAT (invalid UTF-8). */
int tk_unicode_normalize(enum tk_norm_kind form, const char *s, size_t n, tk_buf *out);
/* Appends s[0..n) lowercased as Rust's char::to_lowercase does, char by
 * char. Errors: RT_ERR_NOMEM. */
int tk_lowercase(const char *s, size_t n, tk_buf *out);
/* Bytes of the extended grapheme cluster starting at s[0] (n > 0). */
size_t tk_grapheme_len(const char *s, size_t n);

/* ---- Precompiled normalizer (tokenizer_precompiled.c) ---- */

/* Decodes and checks a base64 precompiled_charsmap (NUL-terminated,
 * borrowed). On success *out owns a new charsmap (tk_charsmap_free); on
 * failure returns RT_ERR_FORMAT (message in err) or RT_ERR_NOMEM and
 * leaves *out untouched. */
int tk_charsmap_load(const char *b64, tk_charsmap **out, char *err, size_t errsize);
/* Appends valid UTF-8 s[0..n) normalized by the charsmap, as Hugging
 * Face's Precompiled normalizer. Errors: RT_ERR_NOMEM. */
int tk_charsmap_apply(const tk_charsmap *m, const char *s, size_t n, tk_buf *out);
/* Frees a charsmap; NULL is allowed. */
void tk_charsmap_free(tk_charsmap *m);

enum tk_split_behavior {
    TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV,
    TK_SPLIT_MERGED_NEXT, TK_SPLIT_CONTIGUOUS
};
enum tk_prepend { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
enum tk_pre_kind { TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE };

typedef struct tk_pre {
    enum tk_pre_kind kind;
    tk_pattern pat;                /* SPLIT: pattern; BYTELEVEL: GPT-2 regex or
                                      none; METASPACE with split: replacement */
    enum tk_split_behavior behavior;
    bool invert;
    bool add_prefix_space;         /* BYTELEVEL */
    char *replacement;             /* METASPACE ("▁") */
    enum tk_prepend prepend;       /* METASPACE */
    bool split;                    /* METASPACE */
} tk_pre;

enum tk_dec_kind {
    TK_DEC_BYTELEVEL, TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE,
    TK_DEC_STRIP, TK_DEC_METASPACE
};

typedef struct tk_dec {
    enum tk_dec_kind kind;
    char *pattern, *content;       /* REPLACE; STRIP: content (one char) */
    size_t start, stop;            /* STRIP */
    enum tk_prepend prepend;       /* METASPACE */
    char *replacement;             /* METASPACE */
} tk_dec;

typedef struct tk_added {
    char *content;        /* as written in tokenizer.json */
    size_t len;
    char *norm;           /* content after the normalizer (normalized tokens) */
    size_t norm_len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tk_added;

/* A byte trie of added tokens for leftmost-longest matching. */
typedef struct tk_trie {
    struct tk_trie_node { int32_t child, sibling, added; unsigned char byte; } *nodes;
    size_t n, cap;
    uint8_t first[32];    /* bitmap of first bytes */
} tk_trie;

struct tokenizer {
    /* id -> token text (vocabulary form); len < 0 for unused ids */
    size_t n_ids;
    size_t model_vocab;   /* the model's rows (tokenizer_set_model_vocab); 0: unset */
    size_t *text_off;
    int32_t *text_len;
    tk_buf text_pool;
    bool *special;        /* per id */
    size_t max_token_bytes;

    /* the BPE model */
    tk_strmap vocab;
    tk_pairmap merges;
    tk_pairmap junctions;      /* (last code point of a, first of b) for each
                                  merge (a, b): where a merge can join text */
    int32_t cp_id[0x800];      /* vocab id of each character below U+0800, -1 */
    int32_t byte_token[256];   /* id of "<0xNN>", -1 */
    int32_t unk_id;            /* -1 when none */
    bool fuse_unk, byte_fallback, ignore_merges;

    /* added tokens */
    tk_added *added;
    size_t n_added;
    tk_strmap added_ids;       /* content -> id */
    tk_trie trie_raw, trie_norm;
    bool has_single_word;
    pcre2_code *word_re;       /* \w, for single_word */

    /* pipeline */
    tk_norm *norms;
    size_t n_norms;
    tk_pre *pres;
    size_t n_pres;
    tk_dec *decs;
    size_t n_decs;
    bool has_decoder;          /* false: tokens are joined with spaces */
    tk_ivec prefix, suffix;    /* post-processor ids */
};

/* tokenizer_encode.c: runs the normalizers on s[0..n), appending to out
 * (no_prepend: skipping Prepend steps). */
int tk_normalize(const tokenizer *tok, const char *s, size_t n, bool no_prepend, tk_buf *out);

/* tokenizer_bpe.c: scratch space reused across words of one encode. */
typedef struct tk_bpe_scratch {
    int32_t *id, *prev, *next;
    uint32_t *len;
    size_t cap;
    struct tk_merge { int32_t rank, pos, merged; } *heap;
    size_t heap_len, heap_cap;
    tk_ivec cuts;         /* symbols where an independent chunk starts */
} tk_bpe_scratch;

/* Encodes one pre-token (model-form text) with the BPE model, appending
 * ids to out. */
int tk_bpe_word(const tokenizer *tok, tk_bpe_scratch *sc, const char *w,
                size_t n, tk_ivec *out);
void tk_bpe_scratch_free(tk_bpe_scratch *sc);

/* Whether decoding accepts id: a token id, or padding of the model's
 * vocabulary past the tokenizer (which decodes to nothing). */
static inline bool tk_id_decodable(const tokenizer *tok, int32_t id)
{
    size_t bound = tok->model_vocab > tok->n_ids ? tok->model_vocab : tok->n_ids;
    return id >= 0 && (size_t)id < bound;
}

/* Whether id has a token of its own (not padding, not an unused id). */
static inline bool tk_id_has_token(const tokenizer *tok, int32_t id)
{
    return id >= 0 && (size_t)id < tok->n_ids && tok->text_len[id] >= 0;
}

/* tokenizer_decode.c: the bytes of one token after the decoder chain. */
int tk_decode_tokens(const tokenizer *tok, const int32_t *ids, size_t n,
                     bool skip_special, bool stream_first, bool raw, tk_buf *out);

#endif
