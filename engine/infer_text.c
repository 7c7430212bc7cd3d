/*
 * engine/infer_text.c — the host-side helpers of the serving scheduler's
 * output: log-probabilities and their top alternatives, Hugging Face's
 * repetition penalty, and stop-string scanning with hold-back of text that
 * may still become a stop string. Pure functions on caller memory.
 */
#include "engine/infer.h"

#include <math.h>
#include <string.h>

/* log(sum(exp(row))) with the max taken out first, summed in double. */
double infer_logsumexp(const float *row, int V)
{
    float mx = row[0];
    for (int i = 1; i < V; i++)
        mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)row[i] - mx);
    return mx + log(sum);
}

/* The n best by one insertion pass over the row (n <= 20). */
void infer_top_logprobs(const float *row, int V, double lse, int n, int32_t *ids, float *lps)
{
    if (n > V)
        n = V;
    int have = 0;
    for (int i = 0; i < V; i++) {
        float x = row[i];
        if (have == n && !(x > row[ids[n - 1]]))
            continue; /* not better than the worst kept (ties keep the lower id) */
        int j = have < n ? have++ : n - 1;
        while (j > 0 && x > row[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    for (int j = 0; j < have; j++)
        lps[j] = (float)((double)row[ids[j]] - lse);
}

/* HF RepetitionPenaltyLogitsProcessor on the seen tokens. */
void infer_repetition_penalty(float *row, int V, const uint8_t *seen, double penalty)
{
    float p = (float)penalty;
    for (int i = 0; i < V; i++)
        if (seen[i >> 3] & (1u << (i & 7)))
            row[i] = row[i] < 0 ? row[i] * p : row[i] / p;
}

/* Length of the longest suffix of text[0..len) that is a proper prefix of s. */
static size_t prefix_overlap(const char *text, size_t len, const char *s, size_t slen)
{
    size_t k = slen - 1 < len ? slen - 1 : len;
    for (; k > 0; k--)
        if (memcmp(text + len - k, s, k) == 0)
            return k;
    return 0;
}

/* Earliest stop-string match, else the text that cannot begin one. */
void infer_stop_scan(const char *text, size_t len, const char *const *stops, int n, bool final,
                     size_t *emit, bool *match)
{
    size_t first = len, hold = 0;
    bool found = false;
    for (int i = 0; i < n; i++) {
        size_t slen = stops[i] ? strlen(stops[i]) : 0;
        if (slen == 0) /* empty: ignored */
            continue;
        const char *at = len >= slen ? memmem(text, len, stops[i], slen) : NULL;
        if (at && (size_t)(at - text) < first) {
            first = (size_t)(at - text);
            found = true;
        }
        size_t k = final ? 0 : prefix_overlap(text, len, stops[i], slen);
        hold = k > hold ? k : hold;
    }
    *match = found;
    *emit = found ? first : len - hold;
}
