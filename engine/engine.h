/*
 * engine/engine.h — the engine's one door: pure compute and the file formats
 * of models and datasets. The engine never sees HTTP or SQL; it takes plain
 * structs and reports progress through callbacks.
 *
 * Functions return RT_OK or a negative rt_error code (common/rt.h);
 * out-parameters are untouched on failure.
 */
#ifndef RT_ENGINE_H
#define RT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

/* ---- Training data (JSONL) ------------------------------------------------ */

/* Which of the two accepted example shapes a JSONL line has. */
enum engine_example_format {
    ENGINE_EXAMPLE_CHAT = 1,       /* {"messages": [{role, content, weight?}, ...]} */
    ENGINE_EXAMPLE_COMPLETION = 2  /* {"prompt": "...", "completion": "..."} */
};

/*
 * Checks one line of a fine-tuning JSONL file (without its newline). On
 * success returns RT_OK and sets *format; a line that holds only whitespace
 * returns RT_ERR_NOT_FOUND (callers skip it). Otherwise returns RT_ERR_FORMAT
 * and writes the reason, naming the field (e.g. `messages[1] has no
 * "content"`), into reason (always NUL-terminated).
 */
int engine_dataset_check_line(const char *line, size_t len,
                              enum engine_example_format *format,
                              char *reason, size_t reason_size);

/* True when the bytes are well-formed UTF-8 (no overlongs, no surrogates). */
bool engine_utf8_valid(const char *s, size_t len);

#endif
