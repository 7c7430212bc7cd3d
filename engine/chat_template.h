/*
 * engine/chat_template.h — (internal to engine/) turns a conversation into
 * token ids plus a loss mask, in the chat format a model was tuned with.
 *
 * A model's own chat_template (tokenizer_config.json) is run by the Jinja
 * interpreter (engine/jinja.h), as transformers runs it, with the variables
 * transformers passes (messages, tools, add_generation_prompt, bos_token,
 * eos_token and extra keyword arguments); a model without one gets ChatML,
 * written as a Jinja template. The loss mask is found from the rendered
 * text (engine/chat_jinja.h): 1 on the tokens of assistant content (tool
 * calls included) and on the end-of-turn token that closes it, 0 elsewhere
 * (the separator after it included), and 0 for an assistant message whose
 * weight is 0. A template the interpreter cannot run is refused when it is
 * loaded, naming the construct and its line; nothing falls back silently.
 *
 * The family is recognised from the source (substring heuristics) only to
 * name it; the end-of-turn marker is the first of <|im_end|>, <|eot_id|>,
 * <end_of_turn>, <|end|> the template writes, else its eos token, and the
 * tool-call format is the markers it writes (engine/tool_calls.h).
 *
 * Serving encodes the whole rendered text at once, as transformers does;
 * training encodes it in pieces cut at the answers' bounds so that the mask
 * lines up with the ids exactly.
 */
#ifndef RT_ENGINE_CHAT_TEMPLATE_H
#define RT_ENGINE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "engine/tokenizer.h"
#include "engine/tool_calls.h"

enum chat_template_kind {
    CHAT_TEMPLATE_CHATML,
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_MISTRAL,
    CHAT_TEMPLATE_ZEPHYR,
    CHAT_TEMPLATE_OTHER
};

typedef struct chat_template chat_template;

/* One message. role is "system", "user", "assistant", "tool", ... (the
 * template decides which it takes); content is UTF-8 (NULL means empty, or
 * JSON null when json has content null). weight applies to assistant
 * messages: 0 excludes it from the loss, anything else includes it. json,
 * when not NULL, is the message as given (OpenAI's shape): its other keys
 * (tool_calls, tool_call_id, name, ...) reach the template too, tool-call
 * arguments given as JSON text parsed into objects as templates expect
 * them. All borrowed. */
typedef struct chat_message {
    const char *role;
    const char *content;
    int weight;
    const cJSON *json;
} chat_message;

/* What a render passes besides the messages (each may be NULL). */
typedef struct chat_extras {
    const cJSON *tools;   /* OpenAI's tools array */
    const cJSON *kwargs;  /* an object of extra template variables (enable_thinking, ...) */
    bool special_text;    /* trusted input: special-token text in the conversation is
                             control tokens (by default it is text, as OpenAI has it) */
} chat_extras;

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

/* Builds a template from a Jinja source (NULL: none, so ChatML) and the
 * bos/eos token strings (either may be NULL). All borrowed (copied).
 * RT_ERR_UNSUPPORTED when the interpreter cannot run the source. */
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

/* How the template writes tool calls (TOOL_FORMAT_NONE: it takes no tools). */
enum tool_format chat_template_tool_format(const chat_template *ct);

/*
 * Renders msgs[0..n) with tok and extras (NULL: none). add_generation_prompt
 * appends the header that opens an assistant turn (serving). With
 * extras->tools the template named "tool_use" is used when the config has
 * one. On success *ids and *mask are new malloc'd arrays of *n_ids entries
 * (non-NULL even when empty) that the caller frees. Errors: RT_ERR_INVALID
 * (a missing role, or the template refused the conversation with
 * raise_exception), RT_ERR_UNSUPPORTED (an answer cannot be found in the
 * rendered text), RT_ERR_NOMEM; err (may be NULL) says why; outputs
 * untouched on failure.
 */
int chat_template_render(const chat_template *ct, const tokenizer *tok, const chat_message *msgs,
                         size_t n, bool add_generation_prompt, const chat_extras *extras,
                         int32_t **ids, uint8_t **mask, size_t *n_ids, char *err, size_t errsize);

#endif
