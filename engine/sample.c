/*
 * engine/sample.c — next-token selection. Sampling keeps the candidates in
 * descending-probability order (sorted only as far as top-k / top-p need),
 * renormalises and draws once from the seeded generator.
 */
#include "engine/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int32_t argmax(const float *x, int V)
{
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

double sample_logprob(const float *logits, int V, int32_t id)
{
    float mx = logits[argmax(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    return (double)logits[id] - mx - log(sum);
}

/* Descending order of probabilities (qsort_r over token indices). */
static int by_prob_desc(const void *a, const void *b, void *ctx)
{
    const float *probs = ctx;
    float pa = probs[*(const int32_t *)a], pb = probs[*(const int32_t *)b];
    return pa < pb ? 1 : pa > pb ? -1 : (*(const int32_t *)a - *(const int32_t *)b);
}

int32_t sample_token(const float *logits, int V, const sample_params *p, rng *r, float *work)
{
    if (p->temperature <= 0)
        return argmax(logits, V);
    float *probs = work;
    int32_t *idx = (int32_t *)(work + V);
    float mx = logits[argmax(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        probs[i] = (float)exp(((double)logits[i] - mx) / p->temperature);
        sum += probs[i];
        idx[i] = i;
    }
    for (int i = 0; i < V; i++)
        probs[i] = (float)(probs[i] / sum);
    qsort_r(idx, (size_t)V, sizeof *idx, by_prob_desc, probs);
    int keep = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double cum = 0;
    int n = 0;
    while (n < keep) {
        cum += probs[idx[n++]];
        if (p->top_p < 1 && cum >= p->top_p)
            break;
    }
    double u = rng_uniform(r) * cum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += probs[idx[i]];
        if (u < acc)
            return idx[i];
    }
    return idx[n - 1];
}

/* The tokenizer's ids when the model pads past them; see sample.h. */
int sample_vocab_size(int vocab_size, size_t n_token_ids)
{
    if (n_token_ids == 0 || n_token_ids >= (size_t)vocab_size)
        return vocab_size;
    return (int)n_token_ids;
}
