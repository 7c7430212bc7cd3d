/*
 * tests/test_tool_calls.c — tool calls read out of model replies in the
 * Hermes/Qwen, Mistral and Llama-3.1 formats: names, arguments as compact
 * JSON, ids, the text around the calls; malformed calls stay plain text;
 * the format detected from real templates' markers; hostile input never
 * crashes (a deterministic mutation loop, run under ASan in CI).
 */
#include "common/rt.h"
#include "engine/tool_calls.h"
#include "tests/test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Parses text and checks the calls (name, arguments pairs) and content. */
static void expect(enum tool_format f, const char *text, const char *content, int n,
                   const char *const *names, const char *const *args)
{
    char *got = NULL;
    tool_call *calls = NULL;
    int count = -1;
    CHECK_EQ_INT(tool_calls_parse(f, text, strlen(text), &got, &calls, &count), RT_OK);
    CHECK_MSG(count == n, "%s: %d calls, expected %d (%s)", tool_format_name(f), count, n, text);
    for (int i = 0; i < n && i < count; i++) {
        CHECK_EQ_STR(calls[i].name, names[i]);
        CHECK_EQ_STR(calls[i].arguments, args[i]);
    }
    if (got)
        CHECK_EQ_STR(got, content);
    free(got);
    tool_calls_free(calls, count);
}

static void test_hermes(void)
{
    const char *n1[] = {"get_weather"}, *a1[] = {"{\"city\":\"Paris\",\"days\":2}"};
    expect(TOOL_FORMAT_HERMES,
           "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
           "", 1, n1, a1);
    const char *n2[] = {"a", "b"}, *a2[] = {"{}", "{\"x\":[1,2]}"};
    expect(TOOL_FORMAT_HERMES,
           "Let me check.\n<tool_call>{\"name\":\"a\",\"arguments\":{}}</tool_call>\n"
           "<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}\n</tool_call>",
           "Let me check.", 2, n2, a2);
    /* cut off at the end of the reply: the closing tag is optional there */
    expect(TOOL_FORMAT_HERMES, "<tool_call>{\"name\": \"a\", \"arguments\": {}}", "", 1, n2, a2);
    /* no call, or a broken one: plain content, whole */
    expect(TOOL_FORMAT_HERMES, "Just text.", "Just text.", 0, NULL, NULL);
    expect(TOOL_FORMAT_HERMES, "<tool_call>{\"name\": \"a\", \"arguments\": {</tool_call>",
           "<tool_call>{\"name\": \"a\", \"arguments\": {</tool_call>", 0, NULL, NULL);
    expect(TOOL_FORMAT_HERMES, "<tool_call>{\"arguments\": {}}</tool_call>",
           "<tool_call>{\"arguments\": {}}</tool_call>", 0, NULL, NULL);
    expect(TOOL_FORMAT_HERMES, "<tool_call>{\"name\": \"a\", \"arguments\": 5}</tool_call>",
           "<tool_call>{\"name\": \"a\", \"arguments\": 5}</tool_call>", 0, NULL, NULL);
    expect(TOOL_FORMAT_HERMES, "<tool_call>{\"name\": \"a\", \"arguments\": {}} junk</tool_call>",
           "<tool_call>{\"name\": \"a\", \"arguments\": {}} junk</tool_call>", 0, NULL, NULL);
}

static void test_mistral(void)
{
    const char *n[] = {"add", "mul"}, *a[] = {"{\"a\":1,\"b\":2}", "{\"a\":3}"};
    char *content = NULL;
    tool_call *calls = NULL;
    int count = 0;
    const char *text = "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}, \"id\": \"abc123def\"}, "
                       "{\"name\": \"mul\", \"arguments\": {\"a\": 3}}]";
    CHECK_EQ_INT(tool_calls_parse(TOOL_FORMAT_MISTRAL, text, strlen(text), &content, &calls, &count), RT_OK);
    CHECK_EQ_INT(count, 2);
    if (count == 2) {
        CHECK_EQ_STR(calls[0].id, "abc123def");
        CHECK_EQ_STR(calls[1].id, "");
    }
    free(content);
    tool_calls_free(calls, count);
    expect(TOOL_FORMAT_MISTRAL, text, "", 2, n, a);
    /* the newer [TOOL_CALLS]name[ARGS]{...} form, twice */
    expect(TOOL_FORMAT_MISTRAL, "[TOOL_CALLS]add[ARGS]{\"a\": 1, \"b\": 2}[TOOL_CALLS]mul[ARGS]{\"a\": 3}", "", 2,
           n, a);
    expect(TOOL_FORMAT_MISTRAL, "No tools needed.", "No tools needed.", 0, NULL, NULL);
    expect(TOOL_FORMAT_MISTRAL, "[TOOL_CALLS] [{\"name\": \"add\"", "[TOOL_CALLS] [{\"name\": \"add\"", 0, NULL, NULL);
}

static void test_llama3(void)
{
    const char *n[] = {"search", "lookup"}, *a[] = {"{\"q\":\"C11\"}", "{\"id\":7}"};
    expect(TOOL_FORMAT_LLAMA3, "{\"name\": \"search\", \"parameters\": {\"q\": \"C11\"}}", "", 1, n, a);
    expect(TOOL_FORMAT_LLAMA3, "<|python_tag|>{\"name\": \"search\", \"parameters\": {\"q\": \"C11\"}}; "
                               "{\"name\": \"lookup\", \"arguments\": {\"id\": 7}}", "", 2, n, a);
    expect(TOOL_FORMAT_LLAMA3, "The answer is {\"name\": 1}.", "The answer is {\"name\": 1}.", 0, NULL, NULL);
    expect(TOOL_FORMAT_LLAMA3, "{\"name\": \"search\"} and more", "{\"name\": \"search\"} and more", 0, NULL, NULL);
    expect(TOOL_FORMAT_NONE, "{\"name\": \"search\", \"parameters\": {}}", "{\"name\": \"search\", \"parameters\": {}}",
           0, NULL, NULL);
}

static void test_detect(void)
{
    CHECK_EQ_INT(tool_format_detect("{{- '<tool_call>\\n' }}{{ tool_call | tojson }}"), TOOL_FORMAT_HERMES);
    CHECK_EQ_INT(tool_format_detect("{{- '[TOOL_CALLS] [' }}"), TOOL_FORMAT_MISTRAL);
    CHECK_EQ_INT(tool_format_detect("{{- '<|python_tag|>' + tool_call.name }}"), TOOL_FORMAT_LLAMA3);
    CHECK_EQ_INT(tool_format_detect("{{ '\"parameters\": ' }}{{ '<|eot_id|>' }}"), TOOL_FORMAT_LLAMA3);
    CHECK_EQ_INT(tool_format_detect("{{ '<|im_start|>' }}"), TOOL_FORMAT_NONE);
    CHECK_EQ_INT(tool_format_detect(NULL), TOOL_FORMAT_NONE);
    CHECK_EQ_STR(tool_format_name(TOOL_FORMAT_MISTRAL), "mistral");
}

/* Truncations and byte flips of valid replies in every format: an answer
 * (calls or content) always, never a crash. */
static void test_mutations(void)
{
    static const char *const seeds[] = {
        "x<tool_call>{\"name\": \"a\", \"arguments\": {\"k\": [1, {\"z\": null}]}}</tool_call>y",
        "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1}, \"id\": \"abc\"}]",
        "[TOOL_CALLS]add[ARGS]{\"a\": \"\\u00e9\"}",
        "<|python_tag|>{\"name\": \"s\", \"parameters\": {\"q\": \"x\"}}; {\"name\": \"t\", \"parameters\": {}}"};
    uint64_t r = 0x9e3779b97f4a7c15ull;
    int answered = 0, total = 0;
    for (int f = TOOL_FORMAT_HERMES; f <= TOOL_FORMAT_LLAMA3; f++)
        for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++)
            for (int k = 0; k < 300; k++) {
                char buf[256];
                size_t n = strlen(seeds[s]);
                memcpy(buf, seeds[s], n + 1);
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(r >> 33) % n;
                if (k % 3 == 0)
                    buf[at] = '\0';
                else
                    buf[at] = (char)(r >> 25);
                char *content = NULL;
                tool_call *calls = NULL;
                int count = 0;
                total++;
                if (tool_calls_parse((enum tool_format)f, buf, n, &content, &calls, &count) == RT_OK &&
                    content)
                    answered++;
                free(content);
                tool_calls_free(calls, count);
            }
    CHECK_MSG(answered == total, "%d of %d mutated replies answered", answered, total);
}

/* Streaming: the bytes that are content whatever comes next. */
static void test_content_prefix(void)
{
    static const struct { enum tool_format f; const char *text; size_t want; } cases[] = {
        {TOOL_FORMAT_HERMES, "Let me check.", 13},
        {TOOL_FORMAT_HERMES, "Let me check. <tool", 14},       /* a marker may be starting */
        {TOOL_FORMAT_HERMES, "Ok <tool_call>\n{\"name\"", 3},  /* up to the marker */
        {TOOL_FORMAT_HERMES, "a < b", 5},                       /* '<' then ' ': no marker */
        {TOOL_FORMAT_HERMES, "", 0},
        {TOOL_FORMAT_MISTRAL, "Sure[TOOL_", 4},
        {TOOL_FORMAT_MISTRAL, "[TOOL_CALLS][{", 0},
        {TOOL_FORMAT_LLAMA3, "  ", 0},                          /* undecided */
        {TOOL_FORMAT_LLAMA3, " {\"name\":", 0},                 /* a call */
        {TOOL_FORMAT_LLAMA3, "<|python", 0},
        {TOOL_FORMAT_LLAMA3, "Hello {", 7},                     /* text first: all content */
        {TOOL_FORMAT_NONE, "<tool_call>", 11},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = tool_calls_content_prefix(cases[i].f, cases[i].text, strlen(cases[i].text));
        CHECK_MSG(got == cases[i].want, "%s \"%s\": %zu, want %zu", tool_format_name(cases[i].f),
                  cases[i].text, got, cases[i].want);
    }
    /* As text grows the certain prefix never shrinks. */
    const char *reply = "I will look. <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
    size_t last = 0;
    for (size_t n = 0; n <= strlen(reply); n++) {
        size_t got = tool_calls_content_prefix(TOOL_FORMAT_HERMES, reply, n);
        CHECK_MSG(got >= last && got <= n, "prefix %zu after %zu at %zu bytes", got, last, n);
        last = got;
    }
    CHECK_EQ_INT(last, 13);
}

int main(void)
{
    RUN(test_hermes);
    RUN(test_mistral);
    RUN(test_llama3);
    RUN(test_detect);
    RUN(test_mutations);
    RUN(test_content_prefix);
    return TEST_SUMMARY();
}
