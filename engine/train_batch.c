/*
 * engine/train_batch.c — turns tokenized examples into padded batches with
 * next-token targets, and frees example sets.
 */
#include <stdlib.h>

#include "engine/train_data.h"

void train_set_free(train_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->ex[i].ids);
        free(s->ex[i].mask);
    }
    free(s->ex);
    free(s);
}

void train_batch_fill(const train_set *s, const size_t *order, size_t first, int count,
                      int32_t *ids, int32_t *targets, int *T)
{
    int t_max = 1;
    for (int b = 0; b < count; b++) {
        const train_example *e = &s->ex[order[first + (size_t)b]];
        if (e->len > t_max)
            t_max = e->len;
    }
    for (int b = 0; b < count; b++) {
        const train_example *e = &s->ex[order[first + (size_t)b]];
        int32_t *row = ids + (size_t)b * (size_t)t_max;
        int32_t *trow = targets + (size_t)b * (size_t)t_max;
        for (int t = 0; t < t_max; t++) {
            row[t] = t < e->len ? e->ids[t] : 0;
            trow[t] = t + 1 < e->len && e->mask[t + 1] ? e->ids[t + 1] : -1;
        }
    }
    *T = t_max;
}
