/*
 * engine/sample.h — (internal to engine/) choosing the next token from a
 * row of logits: greedy, or temperature + top-k + top-p sampling with a
 * seeded generator (same seed, same tokens).
 */
#ifndef RT_ENGINE_SAMPLE_H
#define RT_ENGINE_SAMPLE_H

#include <stdint.h>

#include "engine/rng.h"

typedef struct sample_params {
    double temperature;   /* 0: greedy */
    int top_k;            /* 0: all */
    double top_p;         /* 1: all */
} sample_params;

/* Picks a token from logits[V] (host). work must hold 2*V floats of scratch.
 * Returns the token id. */
int32_t sample_token(const float *logits, int V, const sample_params *p, rng *r, float *work);

/* log-softmax of logits[V] at index id (for logprobs). */
double sample_logprob(const float *logits, int V, int32_t id);

#endif
