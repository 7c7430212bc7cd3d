/*
 * engine/tokenizer.h — (internal to engine/) text <-> token ids for
 * Llama-family models, read from a Hugging Face tokenizer.json.
 *
 * Two families of BPE are understood, and give the same ids as Hugging
 * Face's tokenizers library (tests/test_tokenizer.c checks a committed table
 * made with it):
 *   - byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM): a Split regex and/or a
 *     ByteLevel pre-tokenizer (regexes run on PCRE2), bytes mapped to
 *     printable characters, merges by rank, ignore_merges;
 *   - SentencePiece-style BPE (Llama-2, Mistral, TinyLlama): Prepend/Replace
 *     normalizers or a Metaspace pre-tokenizer, byte_fallback to <0xNN>
 *     tokens, an unk token (fuse_unk).
 * Added tokens (special or not, lstrip/rstrip/single_word/normalized) are
 * split out before the model; the post-processor's template (e.g. a BOS) is
 * applied when the caller asks for special tokens.
 *
 * A tokenizer is immutable once loaded (and given its model's vocabulary
 * size, tokenizer_set_model_vocab): every function taking a const
 * tokenizer * may run on many threads at once.
 *
 * Normalizers: NFC, NFD, NFKC, NFKD (on utf8proc), Lowercase (Rust's
 * char::to_lowercase), Precompiled (a SentencePiece precompiled_charsmap,
 * as T5/ALBERT-style tokenizers carry), Prepend, Replace, Strip, and
 * Sequences of them, all applied as Hugging Face applies them.
 *
 * Not supported (the load fails with RT_ERR_UNSUPPORTED, naming what):
 * WordPiece/Unigram models, BPE dropout, subword prefixes/suffixes, any
 * other normalizer (BertNormalizer, StripAccents, Nmt, ByteLevel...),
 * pre-tokenizer, decoder or post-processor.
 */
#ifndef RT_ENGINE_TOKENIZER_H
#define RT_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/*
 * Loads a tokenizer.json file (a regular file of at most 256 MiB). On
 * success *out owns a new tokenizer (free with tokenizer_free). On failure
 * returns RT_ERR_NOT_FOUND / RT_ERR_IO (unreadable, not a regular file),
 * RT_ERR_TOO_LARGE, RT_ERR_FORMAT (malformed), RT_ERR_UNSUPPORTED or
 * RT_ERR_NOMEM, writes a
 * message into err (may be NULL) and leaves *out untouched.
 */
int tokenizer_load(const char *path, tokenizer **out, char *err, size_t errsize);

/* As tokenizer_load, from JSON text in memory (borrowed; len bytes). */
int tokenizer_load_json(const char *json, size_t len, tokenizer **out,
                        char *err, size_t errsize);

/* Frees a tokenizer; NULL is allowed. */
void tokenizer_free(tokenizer *tok);

/*
 * Tells the tokenizer how many rows its model's embedding has. Many models
 * pad that past the tokenizer (Qwen2.5: 151936 rows, 151665 token ids):
 * the ids in [tokenizer_vocab_size, vocab_size) then decode to nothing, as
 * in Hugging Face, instead of failing; ids at or past the larger of the two
 * sizes stay invalid. Without this call, or with a size not larger than the
 * tokenizer's, decoding accepts the tokenizer's own ids only. Call it once,
 * right after loading, before tok is shared between threads.
 */
void tokenizer_set_model_vocab(tokenizer *tok, size_t vocab_size);

/*
 * Encodes len bytes of UTF-8 text into token ids. Invalid UTF-8 is first
 * replaced by U+FFFD. With add_special the post-processor's tokens (e.g.
 * Llama's BOS) are added around the text. On success *ids is a new
 * malloc'd array the caller frees (non-NULL even when *n is 0).
 * Errors: RT_ERR_INVALID (NULL arguments), RT_ERR_NOMEM.
 */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len,
                     bool add_special, int32_t **ids, size_t *n);

/* Flags for tokenizer_encode_ex. */
enum tokenizer_encode_flags {
    TOKENIZER_ADD_SPECIAL = 1, /* as add_special above */
    /* The text continues earlier text of the same piece (e.g. a chat
     * message's content right after its header): no dummy prefix at its
     * start (SentencePiece's "▁" from a Prepend normalizer or Metaspace,
     * ByteLevel's add_prefix_space), as if encoded within the whole. */
    TOKENIZER_CONTINUE = 2,
    /* The text is text: a special added token's content in it (e.g. a user
     * writing "<|im_end|>") is encoded as the characters it is made of, as
     * OpenAI encodes user input, not as the control token. The
     * post-processor's tokens (ADD_SPECIAL) still come. */
    TOKENIZER_PLAIN_TEXT = 4
};

/* As tokenizer_encode, with flags from enum tokenizer_encode_flags. */
int tokenizer_encode_ex(const tokenizer *tok, const char *text, size_t len,
                        unsigned flags, int32_t **ids, size_t *n);

/* As tokenizer_encode_ex, where plain (len bytes, or NULL) marks the bytes
 * that are text: a special token whose content covers a marked byte is not
 * matched there (user content inside a rendered chat template, while the
 * template's own markers stay control tokens). Marks apply to special
 * tokens matched on the raw text (normalized=false, which special tokens
 * are); when text is not valid UTF-8 the whole text is plain. */
int tokenizer_encode_plain(const tokenizer *tok, const char *text, size_t len, unsigned flags,
                           const uint8_t *plain, int32_t **ids, size_t *n);

/* The leftmost special token's content in s[from..n): true with its byte
 * range [*start, *start + *len), false when there is none. */
bool tokenizer_find_special(const tokenizer *tok, const char *s, size_t n, size_t from,
                            size_t *start, size_t *len);

/*
 * Decodes ids into UTF-8 text, as Hugging Face's decode does (its decoder
 * chain: ByteLevel, or Replace/ByteFallback/Fuse/Strip, or Metaspace).
 * skip_special drops special added tokens; ids without a token (unused
 * ids, the model's padding) give nothing. On success *text is a new
 * NUL-terminated malloc'd string of *len bytes the caller frees.
 * Errors: RT_ERR_INVALID (an id outside [0, vocab size), the vocabulary
 * being the model's when tokenizer_set_model_vocab made it larger),
 * RT_ERR_NOMEM.
 */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n,
                     bool skip_special, char **text, size_t *len);

/*
 * The raw bytes one token contributes to decoded text, for streaming:
 * bytes may be an incomplete UTF-8 sequence (a byte-fallback or byte-level
 * piece). first says whether this is the first token of the output (the
 * SentencePiece decoders drop a leading space there). Writes at most cap
 * bytes into buf and the byte count into *len; a skipped special token or
 * an id without a token (padding) gives *len = 0. Errors: RT_ERR_INVALID
 * (an id tokenizer_decode refuses), RT_ERR_TOO_LARGE (cap smaller than the
 * token; tokenizer_max_token_bytes is always enough).
 */
int tokenizer_token_bytes(const tokenizer *tok, int32_t id, bool skip_special,
                          bool first, char *buf, size_t cap, size_t *len);

/* The most bytes tokenizer_token_bytes can give for any one token. */
size_t tokenizer_max_token_bytes(const tokenizer *tok);

/*
 * Streaming decoder: push ids one by one and get back only complete UTF-8
 * text; bytes of a character split across tokens wait for the next push.
 * Invalid sequences come out as U+FFFD. The stream borrows tok, which must
 * outlive it.
 */
typedef struct tokenizer_stream tokenizer_stream;

/* Creates a stream; *out is freed with tokenizer_stream_free. */
int tokenizer_stream_new(const tokenizer *tok, bool skip_special,
                         tokenizer_stream **out);

/*
 * Adds one token. *text points at the new complete UTF-8 text (possibly
 * *len = 0; always for an id without a token), owned by the stream and
 * valid until the next call on it. Errors: RT_ERR_INVALID (an id
 * tokenizer_decode refuses), RT_ERR_NOMEM.
 */
int tokenizer_stream_push(tokenizer_stream *st, int32_t id,
                          const char **text, size_t *len);

/* Ends the stream: any incomplete bytes left come out as U+FFFD. */
int tokenizer_stream_flush(tokenizer_stream *st, const char **text, size_t *len);

/* Frees a stream; NULL is allowed. */
void tokenizer_stream_free(tokenizer_stream *st);

/* The id of a token given its exact text (added tokens first, then the
 * model's vocabulary), or -1 when there is none. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *token);

/* The stored text of a token (vocabulary form, e.g. "Ġhello" or "▁hi"),
 * borrowed from tok, with its length in *len; NULL for an unused id. */
const char *tokenizer_token_text(const tokenizer *tok, int32_t id, size_t *len);

/* One more than the largest id (model vocabulary and added tokens): the
 * number of rows an embedding matrix needs at least, and the ids sampling
 * may pick (the model's padding past it has no text). */
size_t tokenizer_vocab_size(const tokenizer *tok);

/* Whether id is a special added token (skipped by skip_special). */
bool tokenizer_is_special(const tokenizer *tok, int32_t id);

/* The ids add_special puts before and after the text (post-processor), as
 * borrowed arrays; either count may be 0. */
void tokenizer_special_ids(const tokenizer *tok, const int32_t **prefix,
                           size_t *nprefix, const int32_t **suffix,
                           size_t *nsuffix);

/*
 * Trains a byte-level BPE on corpus (size bytes of UTF-8; invalid UTF-8 is
 * replaced by U+FFFD, as tokenizer_encode does) and writes a Hugging Face
 * tokenizer.json to out_path: ByteLevel pre-tokenizer with the GPT-2 regex,
 * the special tokens (borrowed strings; may be NULL when n_special is 0) as
 * ids 0.. (their occurrences in the corpus are cut out, not learned), then
 * the 256 byte symbols, then one token per merge until vocab_size tokens or
 * no pair occurs twice. Deterministic for a given input. Writes through a temporary
 * file and rename. Errors: RT_ERR_INVALID (vocab_size < 256 + n_special),
 * RT_ERR_IO, RT_ERR_NOMEM; err (may be NULL) says why.
 */
int tokenizer_train_bytelevel(const char *corpus, size_t size, size_t vocab_size,
                              const char *const *special_tokens, size_t n_special,
                              const char *out_path, char *err, size_t errsize);

#endif
