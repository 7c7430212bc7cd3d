/*
 * engine/json_grammar.h — constrained decoding for OpenAI's response_format:
 * a JSON Schema (or "any JSON object") compiled into a pushdown automaton
 * over bytes, a matcher that follows one generation through it, and a mask
 * of the vocabulary tokens that may come next, so that the output is always
 * a prefix of a valid document and ends as one.
 *
 * Supported schema keywords: type (one or a list), properties, required,
 * additionalProperties (false / true / schema; absent means false when
 * "properties" is given, as OpenAI's strict mode requires, else true),
 * items, minItems, maxItems, enum, const, anyOf, oneOf (treated as anyOf),
 * $ref to "#/$defs/NAME" or "#/definitions/NAME" (recursion allowed; nesting
 * is bounded at 32 levels at run time), minLength, maxLength. Annotations
 * (title, description, default, examples, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly) and "format" are ignored (format is an annotation in
 * JSON Schema 2019-09 and later). Every other keyword — pattern, allOf, not,
 * minimum, maximum, prefixItems, ... — is refused at compile time with an
 * error naming the keyword and its path.
 *
 * The grammar emits a canonical subset of each schema's documents: object
 * keys written as cJSON serializes them (keys outside "properties" may not
 * use backslash escapes), enum and const values exactly as cJSON prints them
 * unformatted, no \u0000, at most 24 consecutive whitespace bytes, at most
 * 20 digits in an integer or fraction part and 3 in an exponent.
 */
#ifndef RT_ENGINE_JSON_GRAMMAR_H
#define RT_ENGINE_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct json_grammar json_grammar;      /* compiled once per request */

/* Compiles schema (borrowed; NULL: any JSON object, the json_object mode)
 * into *out, which the caller frees with json_grammar_free. Errors:
 * RT_ERR_UNSUPPORTED for a keyword or form not supported, RT_ERR_INVALID
 * for a malformed or unsatisfiable schema, RT_ERR_TOO_LARGE past the size
 * limits, RT_ERR_NOMEM; err (errsize bytes, may be NULL) then says what and
 * at which path ("#/properties/a/pattern"), and *out is untouched. */
int json_grammar_compile(const cJSON *schema, json_grammar **out, char *err, size_t errsize);
void json_grammar_free(json_grammar *g);

typedef struct json_matcher json_matcher;      /* the state of one generation */

/* A matcher at the start of a document of g (borrowed: g must outlive it);
 * the caller frees it with json_matcher_free. RT_ERR_NOMEM. */
int json_matcher_new(const json_grammar *g, json_matcher **out);
void json_matcher_free(json_matcher *m);

/* Makes dst (of the same grammar) the same state as src: to try a token
 * without committing to it. RT_ERR_INVALID if the grammars differ. */
int json_matcher_copy(json_matcher *dst, const json_matcher *src);

/* Feeds the bytes of the token chosen; RT_ERR_INVALID (and m unchanged)
 * if they do not fit. n == 0 is a no-op. */
int json_matcher_advance(json_matcher *m, const char *bytes, size_t n);

/* True once the output is a complete valid document (only end-of-sequence
 * may follow; whitespace after it is allowed but bounded). */
bool json_matcher_done(const json_matcher *m);

/* The vocabulary in a form fast to walk (a byte trie): token id -> bytes,
 * raw as the tokenizer decodes them (may be partial UTF-8). Built once per
 * served model; the bytes are copied, the arrays borrowed. Tokens with no
 * bytes (special tokens) are never allowed. RT_ERR_INVALID, RT_ERR_NOMEM. */
typedef struct json_vocab json_vocab;
int json_vocab_new(const char *const *token_bytes, const size_t *lens, int n_tokens, json_vocab **out);
void json_vocab_free(json_vocab *v);

/* allowed[i] (n_tokens bytes) = 1 when token i may come next, else 0; the
 * caller allows end-of-sequence itself when json_matcher_done. Walks the
 * vocabulary trie with the matcher state, so shared prefixes are visited
 * once. Safe to call from several threads on one vocab. RT_ERR_NOMEM. */
int json_matcher_mask(const json_matcher *m, const json_vocab *v, uint8_t *allowed);

#endif
