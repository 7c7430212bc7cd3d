/*
 * engine/sample.h — (internal to engine/) choosing the next token from a
 * row of logits: greedy, or temperature + top-k + top-p sampling with a
 * seeded generator (same seed, same tokens).
 */
#ifndef RT_ENGINE_SAMPLE_H
#define RT_ENGINE_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/rng.h"

typedef struct sample_params {
    double temperature;   /* 0: greedy */
    int top_k;            /* 0: all */
    double top_p;         /* 1: all */
} sample_params;

/* Picks a token among logits[0..V) (host); a row may be longer (see
 * sample_vocab_size), its ids from V on are never picked. work must hold
 * 2*V floats of scratch. Returns the token id. */
int32_t sample_token(const float *logits, int V, const sample_params *p, rng *r, float *work);

/* The V to sample with (and to normalise logprobs over) for a model of
 * vocab_size logits whose tokenizer has n_token_ids ids (0: no tokenizer).
 * Many models pad their vocabulary past the tokenizer (Qwen2.5: 151936
 * rows, 151665 ids); those rows have no text and must never be picked.
 * vocab_size itself when the tokenizer is not smaller. */
int sample_vocab_size(int vocab_size, size_t n_token_ids);

/* log-softmax of logits[V] at index id (for logprobs). */
double sample_logprob(const float *logits, int V, int32_t id);

#endif
