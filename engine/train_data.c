/*
 * engine/train_data.c — reads a fine-tuning JSONL file into tokenized
 * examples: chat lines through the model's chat template (loss on assistant
 * tokens with weight != 0), prompt/completion lines as prompt (no loss) +
 * completion + end-of-sequence (loss). Examples longer than max_len are cut
 * and counted.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "engine/train_data.h"

#define MAX_DATASET_BYTES ((size_t)4 << 30)
#define MAX_MESSAGES 4096

/* Renders a chat example: its messages (tool calls and all) and its
 * tools, as serving renders them; reason says why not. */
static int render_chat(const cJSON *obj, const tokenizer *tok, const chat_template *tmpl,
                       train_example *ex, char *reason, size_t reason_size)
{
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(obj, "messages");
    int n = cJSON_GetArraySize(messages);
    if (n > MAX_MESSAGES)
        return RT_ERR_TOO_LARGE;
    chat_message *msgs = calloc((size_t)n, sizeof *msgs);
    if (!msgs)
        return RT_ERR_NOMEM;
    const cJSON *m;
    int i = -1;
    cJSON_ArrayForEach(m, messages) { /* linear, not cJSON_GetArrayItem(i) */
        i++;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *weight = cJSON_GetObjectItemCaseSensitive(m, "weight");
        msgs[i].role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
        msgs[i].content = cJSON_IsString(content) ? content->valuestring : NULL; /* null: as given */
        msgs[i].weight = cJSON_IsNumber(weight) ? (int)weight->valuedouble : 1;
        msgs[i].json = m;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(obj, "tools");
    chat_extras extras = {cJSON_IsArray(tools) && cJSON_GetArraySize(tools) ? tools : NULL, NULL, false};
    size_t len = 0;
    int rc = chat_template_render(tmpl, tok, msgs, (size_t)n, false, &extras, &ex->ids, &ex->mask,
                                  &len, reason, reason_size);
    free(msgs);
    ex->len = (int)len;
    return rc;
}

/* Appends ids[0..n) with one mask value to the example. */
static int append(train_example *ex, const int32_t *ids, size_t n, uint8_t mask)
{
    int32_t *ni = realloc(ex->ids, ((size_t)ex->len + n + 1) * sizeof *ni);
    if (ni)
        ex->ids = ni;
    uint8_t *nm = realloc(ex->mask, (size_t)ex->len + n + 1);
    if (nm)
        ex->mask = nm;
    if (!ni || !nm)
        return RT_ERR_NOMEM;
    memcpy(ex->ids + ex->len, ids, n * sizeof *ids);
    memset(ex->mask + ex->len, mask, n);
    ex->len += (int)n;
    return RT_OK;
}

/* Encodes text and appends it with the given mask. */
static int append_text(train_example *ex, const tokenizer *tok, const char *text, bool special,
                       uint8_t mask)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(tok, text, strlen(text), special, &ids, &n);
    if (rc == RT_OK)
        rc = append(ex, ids, n, mask);
    free(ids);
    return rc;
}

/* prompt (no loss) + completion + end of sequence (loss). */
static int render_completion(const cJSON *obj, const tokenizer *tok, const chat_template *tmpl,
                             train_example *ex)
{
    const char *prompt = cJSON_GetObjectItemCaseSensitive(obj, "prompt")->valuestring;
    const char *completion = cJSON_GetObjectItemCaseSensitive(obj, "completion")->valuestring;
    int rc = append_text(ex, tok, prompt, true, 0);
    if (rc == RT_OK)
        rc = append_text(ex, tok, completion, false, 1);
    const char *eos = chat_template_eos(tmpl);
    int32_t eos_id = eos ? tokenizer_token_id(tok, eos) : -1;
    if (rc == RT_OK && eos_id >= 0)
        rc = append(ex, &eos_id, 1, 1);
    return rc;
}

/* Checks and tokenizes one line into ex; RT_ERR_NOT_FOUND for a blank line. */
static int load_line(const char *line, size_t len, const tokenizer *tok, const chat_template *tmpl,
                     train_example *ex, char *reason, size_t reason_size)
{
    enum engine_example_format format;
    int rc = engine_dataset_check_line(line, len, &format, reason, reason_size);
    if (rc != RT_OK)
        return rc;
    cJSON *obj = cJSON_ParseWithLength(line, len);
    if (!obj)
        return RT_ERR_NOMEM;
    reason[0] = '\0';
    rc = format == ENGINE_EXAMPLE_CHAT ? render_chat(obj, tok, tmpl, ex, reason, reason_size)
                                       : render_completion(obj, tok, tmpl, ex);
    cJSON_Delete(obj);
    if (rc != RT_OK && reason_size && !reason[0])
        snprintf(reason, reason_size, "cannot be rendered with this model's chat template (%s)",
                 rt_strerror(rc));
    return rc;
}

/* Adds ex to the set (growing it). */
static int push(train_set *s, size_t *cap, train_example *ex)
{
    if (s->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        train_example *n = realloc(s->ex, ncap * sizeof *n);
        if (!n)
            return RT_ERR_NOMEM;
        s->ex = n;
        *cap = ncap;
    }
    s->ex[s->n++] = *ex;
    s->tokens += ex->len;
    return RT_OK;
}

int train_set_load(const char *path, const tokenizer *tok, const chat_template *tmpl, int max_len,
                   train_set **out, char *err, size_t errsize)
{
    char *text = NULL;
    size_t size = 0, cap = 0;
    int rc = rt_read_file(path, MAX_DATASET_BYTES, &text, &size, err, errsize);
    if (rc != RT_OK)
        return rc;
    train_set *s = calloc(1, sizeof *s);
    if (!s) {
        free(text);
        return RT_ERR_NOMEM;
    }
    long line_no = 0;
    for (size_t pos = 0; rc == RT_OK && pos < size;) {
        const char *nl = memchr(text + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - (text + pos)) : size - pos;
        line_no++;
        train_example ex = {0};
        char reason[256] = "";
        rc = load_line(text + pos, len, tok, tmpl, &ex, reason, sizeof reason);
        if (rc == RT_OK) {
            if (ex.len > max_len) {
                ex.len = max_len;
                s->truncated++;
            }
            rc = push(s, &cap, &ex);
        } else if (rc == RT_ERR_NOT_FOUND) {
            rc = RT_OK; /* blank line */
        } else {
            rt_fail(err, errsize, RT_ERR_FORMAT, "%s line %ld: %s", path, line_no, reason);
            rc = RT_ERR_FORMAT;
        }
        if (rc != RT_OK) {
            free(ex.ids);
            free(ex.mask);
        }
        pos += len + 1;
    }
    free(text);
    if (rc != RT_OK) {
        train_set_free(s);
        return rc;
    }
    *out = s;
    return RT_OK;
}
