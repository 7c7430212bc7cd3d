/*
 * engine/train_data.h — (internal to engine/) fine-tuning examples as
 * tokens: each JSONL line rendered through the model's chat template (or
 * prompt + completion), with a loss mask that is 1 only on tokens the model
 * should learn to produce. Batches pad to the longest sequence.
 */
#ifndef RT_ENGINE_TRAIN_DATA_H
#define RT_ENGINE_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

typedef struct train_example {
    int32_t *ids;
    uint8_t *mask;       /* mask[i] = 1: ids[i] is a learned token */
    int len;
} train_example;

typedef struct train_set {
    train_example *ex;
    size_t n;
    int64_t tokens;      /* sum of lengths */
    int64_t truncated;   /* examples cut to max_len */
} train_set;

struct tokenizer;
struct chat_template;

/* Reads and tokenizes a JSONL file. A line that fails engine_dataset_check_line
 * fails the load with "FILE line N: reason" in err. */
int train_set_load(const char *path, const struct tokenizer *tok, const struct chat_template *tmpl,
                   int max_len, train_set **out, char *err, size_t errsize);

void train_set_free(train_set *s);

/*
 * Fills ids/targets (host, room for B*T_max) with the examples order[first ..
 * first+count) padded to the longest of them: targets[t] = ids[t+1] where
 * that token is learned, else -1. Sets *T to the padded length.
 */
void train_batch_fill(const train_set *s, const size_t *order, size_t first, int count,
                      int32_t *ids, int32_t *targets, int *T);

#endif
