/*
 * engine/jinja.h — a Jinja2 interpreter for chat templates: the one door of
 * the engine/jinja*.c module.
 *
 * It renders a model's `chat_template` exactly as Jinja2 3.1 does under the
 * settings transformers uses (ImmutableSandboxedEnvironment, trim_blocks,
 * lstrip_blocks, loopcontrols, the {% generation %} tag of its
 * AssistantTracker, `tojson` as Python's json.dumps with ensure_ascii=False,
 * the globals raise_exception() and strftime_now()). Values print as Python's
 * str() prints them (True, None, 1.0, ['a', 'b']).
 *
 * A compiled template is immutable: one may be rendered from several threads
 * at once. Hostile templates end in an error, never a crash or a hang: output,
 * memory, loop iterations, recursion and nesting are bounded.
 *
 * Errors: RT_ERR_FORMAT (bad syntax, a type error while rendering),
 * RT_ERR_UNSUPPORTED (a construct this interpreter does not implement),
 * RT_ERR_TOO_LARGE (a limit was hit), RT_ERR_INVALID (the template called
 * raise_exception(): err then holds exactly its message, so a caller can show
 * it as the reason a conversation was refused), RT_ERR_NOMEM. Other messages
 * start with "line N: ".
 */
#ifndef RT_ENGINE_JINJA_H
#define RT_ENGINE_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct jinja_template jinja_template;

/* A byte range [start, end) of the rendered output. */
typedef struct jinja_span {
    size_t start, end;
} jinja_span;

/* The output byte ranges produced inside {% generation %} blocks, in order. */
typedef struct jinja_spans {
    jinja_span *items; /* malloc'd; jinja_spans_free releases it */
    size_t count;
} jinja_spans;

/* Parses source (NUL-terminated UTF-8). On success *out is a new template
 * the caller frees with jinja_free. On failure *out is untouched and err
 * (when non-NULL) names the construct and its line, e.g.
 * "line 3: unknown filter 'foo'". */
int jinja_compile(const char *source, jinja_template **out, char *err, size_t errsize);

/* Frees a template; NULL is a no-op. */
void jinja_free(jinja_template *t);

/* Renders t with the variables of ctx (a cJSON object such as
 * {messages, tools, add_generation_prompt, bos_token, eos_token, ...};
 * borrowed, NULL means none). On success *out is a malloc'd NUL-terminated
 * string the caller frees, *len (when non-NULL) its length, and spans (when
 * non-NULL) receives the generation ranges (caller frees with
 * jinja_spans_free). On failure nothing is written but err.
 * strftime_now() reads the local wall clock. */
int jinja_render(const jinja_template *t, const cJSON *ctx, char **out, size_t *len,
                 jinja_spans *spans, char *err, size_t errsize);

/* jinja_render with a fixed clock: strftime_now() formats now_unix in UTC.
 * For reproducible renders (tests, fixtures). */
int jinja_render_at(const jinja_template *t, const cJSON *ctx, int64_t now_unix,
                    char **out, size_t *len, jinja_spans *spans, char *err, size_t errsize);

/* Frees the ranges of spans (not spans itself) and zeroes it; NULL is a no-op. */
void jinja_spans_free(jinja_spans *spans);

#endif
