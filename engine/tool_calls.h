/*
 * engine/tool_calls.h — (internal to engine/) reading the tool calls a
 * model writes into OpenAI's tool_calls, in the formats chat templates
 * define:
 *
 *   TOOL_FORMAT_HERMES    <tool_call>{"name": ..., "arguments": {...}}</tool_call>
 *                         (Hermes, Qwen2.5, Qwen3, SmolLM3, ...), any number,
 *                         with free text around them
 *   TOOL_FORMAT_MISTRAL   [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]
 *                         (Mistral v0.3, Nemo; also [TOOL_CALLS]name[ARGS]{...})
 *   TOOL_FORMAT_LLAMA3    the whole reply one JSON object {"name": ...,
 *                         "parameters": {...}} (Llama-3.1/3.2's JSON tool
 *                         calling), or several separated by ';', optionally
 *                         after <|python_tag|>
 *
 * A reply that does not follow the format is plain content: a malformed
 * call is never turned into a call. Arguments come back as JSON text, the
 * way OpenAI's API carries them.
 */
#ifndef RT_ENGINE_TOOL_CALLS_H
#define RT_ENGINE_TOOL_CALLS_H

#include <stddef.h>

#include "engine/engine.h"

enum tool_format { TOOL_FORMAT_NONE, TOOL_FORMAT_HERMES, TOOL_FORMAT_MISTRAL, TOOL_FORMAT_LLAMA3 };

/* The format a chat template's tool calls take, from its Jinja source
 * (NULL: none): the markers it writes around a call. */
enum tool_format tool_format_detect(const char *template_source);

/* "hermes", "mistral", "llama3" or "none". */
const char *tool_format_name(enum tool_format f);

/* One call: name and arguments (compact JSON object text), both malloc'd;
 * id is the model's own when it wrote one (Mistral), else "". The type is
 * the engine's public one (engine/engine_serve.h). */
typedef engine_tool_call tool_call;

/*
 * Splits text[0..len) written in format f into *content (the text outside
 * the calls, trimmed; malloc'd, "" when none) and *calls (malloc'd array of
 * *n_calls, NULL when 0). Free with tool_calls_free. Errors: RT_ERR_INVALID
 * (NULL arguments), RT_ERR_NOMEM; outputs untouched on failure.
 */
int tool_calls_parse(enum tool_format f, const char *text, size_t len, char **content,
                     tool_call **calls, int *n_calls);

/* How many leading bytes of text[0..len) (a reply so far) are content
 * whatever comes next: the bytes before a call's marker, or before what may
 * still become one; for Llama-3, all or nothing, decided by the reply's
 * first byte. For streaming content before the calls are whole. */
size_t tool_calls_content_prefix(enum tool_format f, const char *text, size_t len);

/* Frees n calls and the array; NULL is allowed. */
void tool_calls_free(tool_call *calls, int n);

#endif
