/*
 * engine/chat_template.h — (internal to engine/) turns a conversation into
 * token ids plus a loss mask, in the chat format a model was tuned with.
 *
 * A model's own chat_template (tokenizer_config.json) is run by the Jinja
 * interpreter (engine/jinja.h), as transformers runs it, and the loss mask is
 * found from the rendered text (engine/chat_jinja.h): 1 on the tokens of
 * assistant content and on the end-of-turn token that closes it, 0 elsewhere
 * (the separator after it included), and 0 for an assistant message whose
 * weight is 0. A template the interpreter cannot run is refused when it is
 * loaded, naming the construct and its line. Without a template, ChatML is
 * rendered by C code. The family is still recognised from the source
 * (substring heuristics) for the end-of-turn token and the default system
 * prompt:
 *   ChatML   (<|im_start|>: Qwen2, SmolLM, many others)
 *   Llama-3  (<|start_header_id|>)
 *   Llama-2  ([INST] with <<SYS>>) and Mistral ([INST] without it)
 *   Zephyr   (<|user|>: TinyLlama-chat, Zephyr)
 * Serving encodes the whole rendered text at once, as transformers does;
 * training encodes it in pieces cut at the answers' bounds so that the mask
 * lines up with the ids exactly.
 */
#ifndef RT_ENGINE_CHAT_TEMPLATE_H
#define RT_ENGINE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"

enum chat_template_kind {
    CHAT_TEMPLATE_CHATML,
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_MISTRAL,
    CHAT_TEMPLATE_ZEPHYR
};

typedef struct chat_template chat_template;

/* One message. role is "system", "user" or "assistant" (ChatML, Llama-3
 * and Zephyr also take other roles, e.g. "tool"); content is UTF-8 (NULL
 * means empty). weight applies to assistant messages: 0 excludes it from
 * the loss, anything else includes it. Strings are borrowed. */
typedef struct chat_message {
    const char *role;
    const char *content;
    int weight;
} chat_message;

/*
 * Reads tokenizer_config.json: chat_template (a string, or a list of named
 * templates where "default" wins), bos_token and eos_token (strings or
 * {"content": ...} objects). On success *out is a new template (free with
 * chat_template_free). Errors: RT_ERR_NOT_FOUND / RT_ERR_IO (file),
 * RT_ERR_FORMAT (not JSON), RT_ERR_NOMEM; err (may be NULL) says why and
 * *out is untouched.
 */
int chat_template_load(const char *tokenizer_config_path, chat_template **out,
                       char *err, size_t errsize);

/* As chat_template_load, from JSON text in memory (len bytes, borrowed). */
int chat_template_load_json(const char *json, size_t len, chat_template **out,
                            char *err, size_t errsize);

/* Builds a template from a Jinja source (NULL: unknown, so ChatML) and the
 * bos/eos token strings (either may be NULL). All borrowed (copied). */
int chat_template_from_source(const char *source, const char *bos, const char *eos,
                              chat_template **out);

/* Frees a template; NULL is allowed. */
void chat_template_free(chat_template *ct);

/* The recognised family, and a short name for it ("chatml", ...). */
enum chat_template_kind chat_template_kind(const chat_template *ct);
const char *chat_template_kind_name(enum chat_template_kind kind);

/* The bos/eos token strings from the config (borrowed; NULL when absent). */
const char *chat_template_bos(const chat_template *ct);
const char *chat_template_eos(const chat_template *ct);

/* The token text that ends an assistant turn ("<|im_end|>", "<|eot_id|>",
 * or the eos token): generation should stop on it. NULL when unknown. */
const char *chat_template_end_of_turn(const chat_template *ct);

/* The system prompt the template inserts when a conversation has none
 * (e.g. Qwen2's "You are a helpful assistant."), or NULL. Borrowed. */
const char *chat_template_default_system(const chat_template *ct);

/*
 * Renders msgs[0..n) with tok. add_generation_prompt appends the header
 * that opens an assistant turn (serving). On success *ids and *mask are
 * new malloc'd arrays of *n_ids entries (non-NULL even when empty) that the
 * caller frees. Errors: RT_ERR_INVALID (NULL role, or a role the format
 * cannot express: Llama-2/Mistral take system (first only), user and
 * assistant), RT_ERR_NOMEM; outputs untouched on failure.
 */
int chat_template_render(const chat_template *ct, const tokenizer *tok,
                         const chat_message *msgs, size_t n, bool add_generation_prompt,
                         int32_t **ids, uint8_t **mask, size_t *n_ids);

#endif
