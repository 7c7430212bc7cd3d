/*
 * engine/dataset_check.c — validation of fine-tuning JSONL lines.
 *
 * One line is one example, in chat shape ({"messages": [...]}, roles system,
 * user, assistant or tool, string content, optional weight 0/1 on assistant
 * messages, at least one assistant message) or prompt/completion shape. The
 * reason for a rejection names the field so a user can fix their file.
 */
#include "engine/engine.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A line's problem: its reason, and RT_ERR_FORMAT. */
#define fail(reason, size, ...) rt_fail(reason, size, RT_ERR_FORMAT, __VA_ARGS__)

bool engine_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n;
        unsigned min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { n = 1; min = 0x80; c &= 0x1F; }
        else if ((c & 0xF0) == 0xE0) { n = 2; min = 0x800; c &= 0x0F; }
        else if ((c & 0xF8) == 0xF0) { n = 3; min = 0x10000; c &= 0x07; }
        else return false;
        if (i + n >= len) /* truncated sequence */
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            c = (c << 6) | (p[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

static bool is_known_role(const char *role)
{
    static const char *roles[] = {"system", "user", "assistant", "tool"};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (strcmp(role, roles[i]) == 0)
            return true;
    return false;
}

/* An assistant message's tool_calls: each {"function": {"name": string,
 * "arguments": JSON text or object}} (OpenAI's fine-tuning shape). */
static int check_tool_calls(const cJSON *calls, int i, char *reason, size_t size)
{
    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        if (!cJSON_IsObject(c) || !cJSON_IsObject(fn) || !cJSON_IsString(name) || !name->valuestring[0])
            return fail(reason, size, "messages[%d].tool_calls[%d] must be {\"type\": \"function\", "
                        "\"function\": {\"name\": ..., \"arguments\": ...}}", i, k);
        if (!cJSON_IsObject(args) && !cJSON_IsString(args))
            return fail(reason, size, "messages[%d].tool_calls[%d].function.arguments must be JSON "
                        "text or an object", i, k);
        k++;
    }
    return RT_OK;
}

/* Checks messages[i]; sets *is_assistant. */
static int check_message(const cJSON *msg, int i, bool *is_assistant,
                         char *reason, size_t size)
{
    if (!cJSON_IsObject(msg))
        return fail(reason, size, "messages[%d] is not an object", i);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
    if (!role)
        return fail(reason, size, "messages[%d] has no \"role\"", i);
    if (!cJSON_IsString(role) || !is_known_role(role->valuestring))
        return fail(reason, size, "messages[%d].role must be one of system, user, assistant, tool", i);
    *is_assistant = strcmp(role->valuestring, "assistant") == 0;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    const cJSON *tool_calls = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    bool may_omit = *is_assistant && cJSON_IsArray(tool_calls);
    if (tool_calls && !cJSON_IsNull(tool_calls) && !may_omit)
        return fail(reason, size, "messages[%d].tool_calls must be an array on an assistant message", i);
    if (may_omit && check_tool_calls(tool_calls, i, reason, size) != RT_OK)
        return RT_ERR_FORMAT;
    if (!content && !may_omit)
        return fail(reason, size, "messages[%d] has no \"content\"", i);
    if (content && !cJSON_IsString(content) && !(may_omit && cJSON_IsNull(content)))
        return fail(reason, size, "messages[%d].content must be a string", i);
    const cJSON *weight = cJSON_GetObjectItemCaseSensitive(msg, "weight");
    if (weight) {
        if (!*is_assistant)
            return fail(reason, size, "messages[%d].weight is only allowed on assistant messages", i);
        if (!cJSON_IsNumber(weight) || (weight->valuedouble != 0 && weight->valuedouble != 1))
            return fail(reason, size, "messages[%d].weight must be 0 or 1", i);
    }
    return RT_OK;
}

static int check_chat(const cJSON *messages, char *reason, size_t size)
{
    if (!cJSON_IsArray(messages))
        return fail(reason, size, "\"messages\" must be an array");
    int n = cJSON_GetArraySize(messages);
    if (n == 0)
        return fail(reason, size, "\"messages\" is empty");
    int assistants = 0;
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, messages) { /* linear, not cJSON_GetArrayItem(i) */
        bool is_assistant = false;
        int rc = check_message(m, i++, &is_assistant, reason, size);
        if (rc != RT_OK)
            return rc;
        assistants += is_assistant;
    }
    if (assistants == 0)
        return fail(reason, size, "\"messages\" has no assistant message");
    return RT_OK;
}

static int check_completion(const cJSON *obj, char *reason, size_t size)
{
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    const cJSON *completion = cJSON_GetObjectItemCaseSensitive(obj, "completion");
    if (!prompt)
        return fail(reason, size, "has no \"prompt\"");
    if (!cJSON_IsString(prompt))
        return fail(reason, size, "\"prompt\" must be a string");
    if (!completion)
        return fail(reason, size, "has no \"completion\"");
    if (!cJSON_IsString(completion))
        return fail(reason, size, "\"completion\" must be a string");
    return RT_OK;
}

static bool is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

int engine_dataset_check_line(const char *line, size_t len,
                              enum engine_example_format *format,
                              char *reason, size_t reason_size)
{
    if (reason_size)
        reason[0] = '\0';
    if (is_blank(line, len))
        return RT_ERR_NOT_FOUND;
    if (memchr(line, '\0', len))
        return fail(reason, reason_size, "contains a NUL byte (it would cut the text short)");
    if (!engine_utf8_valid(line, len))
        return fail(reason, reason_size, "invalid UTF-8");
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (!obj)
        return fail(reason, reason_size, "not valid JSON");
    int rc;
    enum engine_example_format found = ENGINE_EXAMPLE_CHAT;
    if (!is_blank(end, len - (size_t)(end - line)))
        rc = fail(reason, reason_size, "unexpected data after the JSON object");
    else if (!cJSON_IsObject(obj))
        rc = fail(reason, reason_size, "not a JSON object");
    else if (cJSON_GetObjectItemCaseSensitive(obj, "messages")) {
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(obj, "tools");
        rc = tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools)
                 ? fail(reason, reason_size, "\"tools\" must be an array")
                 : check_chat(cJSON_GetObjectItemCaseSensitive(obj, "messages"), reason, reason_size);
    }
    else if (cJSON_GetObjectItemCaseSensitive(obj, "prompt") ||
             cJSON_GetObjectItemCaseSensitive(obj, "completion")) {
        found = ENGINE_EXAMPLE_COMPLETION;
        rc = check_completion(obj, reason, reason_size);
    } else
        rc = fail(reason, reason_size, "has neither \"messages\" nor \"prompt\"/\"completion\"");
    cJSON_Delete(obj);
    if (rc == RT_OK)
        *format = found;
    return rc;
}
