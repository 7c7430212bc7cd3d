/*
 * engine/corpus.h — (internal to engine/) retune's own small synthetic
 * language, generated deterministically from a seed, so a model can be
 * pre-trained on a machine that reaches no model hub: facts about a made-up
 * world of countries (capitals, flags, languages, animals), simple
 * arithmetic, and question/answer turns in chat format.
 */
#ifndef RT_ENGINE_CORPUS_H
#define RT_ENGINE_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

/*
 * Writes the pre-training set as JSONL (documents as {"prompt": "",
 * "completion": text}, so every token is learned; questions as chat
 * messages) of about target_bytes, and returns its plain text (malloc'd,
 * caller frees) for training the tokenizer.
 */
int corpus_write_pretrain(uint64_t seed, size_t target_bytes, const char *jsonl_path, char **text,
                          size_t *text_len);

/* Writes n chat questions about the same world (a retention set: what a
 * fine-tune should not make the model forget). */
int corpus_write_retention(uint64_t seed, size_t n, const char *jsonl_path);

#endif
