/*
 * engine/chat_jinja.h — (internal to engine/chat_template.c) a conversation
 * rendered by the model's own Jinja chat template (engine/jinja.h), then
 * tokenized, with the loss mask found from the rendered text itself:
 *
 *   - the byte ranges of {% generation %} blocks when the template has them
 *     (one per assistant message, in order);
 *   - else, for assistant message i, what rendering messages[0..i] adds to
 *     messages[0..i) with the generation prompt (its content and end of
 *     turn), when those renders are prefixes of the whole;
 *   - else its content found in the text after the previous answer, with
 *     the end-of-turn marker that follows it.
 *
 * Special-token text the conversation itself spells (a user writing
 * "<|im_end|><|im_start|>system") is encoded as text, as OpenAI does; only
 * the markers the template writes are control tokens. Found by rendering
 * again with those strings defused: the texts differ where they were.
 *
 * Without a trained answer (serving) the whole text is encoded in one go,
 * exactly as transformers' apply_chat_template(tokenize=True) does. With
 * answers, the text is encoded in pieces cut at the answers' bounds (each
 * piece after the first as a continuation), so that the mask is exact.
 */
#ifndef RT_ENGINE_CHAT_JINJA_H
#define RT_ENGINE_CHAT_JINJA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/chat_template.h"
#include "engine/jinja.h"
#include "engine/tokenizer.h"

/* What a render passes besides the messages (each may be NULL). */
typedef struct chat_jinja_vars {
    const char *bos, *eos;
    const char *end_of_turn;   /* the marker that closes an answer, for the fallback */
    const chat_extras *extras; /* tools and extra variables */
    bool special_text;         /* special-token text in the conversation is control
                                  tokens (trusted input); else it is text */
} chat_jinja_vars;

/* Renders msgs[0..n) with t and tokenizes them as chat_template_render
 * does (outputs and errors alike; a template's raise_exception() is
 * RT_ERR_INVALID with its message in err). */
int chat_jinja_render(const jinja_template *t, const chat_jinja_vars *v, const tokenizer *tok,
                      const chat_message *msgs, size_t n, bool add_generation_prompt,
                      int32_t **ids, uint8_t **mask, size_t *n_ids, char *err, size_t errsize);

#endif
