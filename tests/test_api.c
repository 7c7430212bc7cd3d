/*
 * tests/test_api.c — unit tests of the HTTP layer's pure parts: route
 * matching, percent-decoding, and the fine-tuning JSONL line checker.
 */
#include "api/api_internal.h"
#include "engine/engine.h"
#include "tests/test.h"

static enum api_match match(const char *method, const char *path, const api_route **r,
                            char params[API_MAX_PARAMS][API_PARAM_MAX], int *n)
{
    return api_route_match(method, path, r, params, n);
}

static void test_route_matching(void)
{
    const api_route *r = NULL;
    char params[API_MAX_PARAMS][API_PARAM_MAX];
    int n = -1;
    CHECK_EQ_INT(match("GET", "/healthz", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(r->name, "healthz");
    CHECK_EQ_INT(match("GET", "/v1/files", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(r->name, "files.list");
    CHECK_EQ_INT(match("POST", "/v1/files", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(r->name, "files.create");
    CHECK_EQ_INT(match("GET", "/v1/files/file-abc/content", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(r->name, "files.content");
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(params[0], "file-abc");
    CHECK_EQ_INT(match("DELETE", "/v1/files/file-abc", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(r->name, "files.delete");
    CHECK_EQ_INT(match("GET", "/v1/files/", &r, params, &n), API_MATCH_OK); /* trailing slash */
    CHECK_EQ_INT(match("PUT", "/v1/files", &r, params, &n), API_MATCH_BAD_METHOD);
    CHECK_EQ_INT(match("GET", "/v1/nope", &r, params, &n), API_MATCH_NOT_FOUND);
    CHECK_EQ_INT(match("GET", "/v1/files/a/b/c/d", &r, params, &n), API_MATCH_NOT_FOUND);
    CHECK_EQ_INT(match("GET", "/v1/files/%66ile-x", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(params[0], "file-x");
    CHECK_EQ_INT(match("GET", "/v1/files/a%2Fb", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "/v1/files/..", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "/v1/files/%2E%2E", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "/v1/files/%ff", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "/v1/files/%5Cx", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "v1/files", &r, params, &n), API_MATCH_BAD_PATH);
    CHECK_EQ_INT(match("GET", "/", &r, params, &n), API_MATCH_OK); /* the dashboard */
    CHECK_EQ_STR(r->name, "dashboard");
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(match("POST", "/", &r, params, &n), API_MATCH_BAD_METHOD);
    CHECK_EQ_INT(match("GET", "/dashboard/app.js", &r, params, &n), API_MATCH_OK);
    CHECK_EQ_STR(params[0], "app.js");
    CHECK_EQ_INT(match("GET", "/dashboard", &r, params, &n), API_MATCH_NOT_FOUND);
}

static void test_percent_decode(void)
{
    char out[16];
    CHECK(api_percent_decode("a%20b", 5, out, sizeof out, false));
    CHECK_EQ_STR(out, "a b");
    CHECK(api_percent_decode("a+b", 3, out, sizeof out, true));
    CHECK_EQ_STR(out, "a b");
    CHECK(api_percent_decode("a+b", 3, out, sizeof out, false));
    CHECK_EQ_STR(out, "a+b");
    CHECK(api_percent_decode("%C3%A9", 6, out, sizeof out, false));
    CHECK_EQ_STR(out, "\xc3\xa9");
    CHECK(!api_percent_decode("%", 1, out, sizeof out, false));
    CHECK(!api_percent_decode("%4", 2, out, sizeof out, false));
    CHECK(!api_percent_decode("%g0", 3, out, sizeof out, false));
    CHECK(!api_percent_decode("%00", 3, out, sizeof out, false));
    CHECK(!api_percent_decode("0123456789abcdefXYZ", 19, out, sizeof out, false));
}

/* Echoed bytes become valid UTF-8: good sequences kept, every other byte
 * "%XX", and the output cut at a whole character when it is full. */
static void test_utf8_fix(void)
{
    char out[32];
    api_utf8_fix("plain \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", out, sizeof out);
    CHECK_EQ_STR(out, "plain \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    api_utf8_fix("a\xff\xfe" "b", out, sizeof out);
    CHECK_EQ_STR(out, "a%FF%FEb");
    api_utf8_fix("cut\xe2\x82", out, sizeof out);            /* a sequence missing its end */
    CHECK_EQ_STR(out, "cut%E2%82");
    api_utf8_fix("\xc0\xaf\xed\xa0\x80", out, sizeof out); /* overlong, a surrogate */
    CHECK_EQ_STR(out, "%C0%AF%ED%A0%80");
    api_utf8_fix("abcdef\xff", out, 9);                       /* no room for a whole %FF */
    CHECK_EQ_STR(out, "abcdef");
    api_utf8_fix("ab\xc3\xa9", out, 4);                       /* nor for a whole character */
    CHECK_EQ_STR(out, "ab");
}

typedef struct line_case {
    const char *line;
    int want_rc;
    const char *want_reason; /* prefix; NULL when ok */
} line_case;

static void test_dataset_lines(void)
{
    static const line_case cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}", RT_OK, NULL},
        {"{\"messages\":[{\"role\":\"assistant\",\"content\":\"a\",\"weight\":0},{\"role\":\"assistant\",\"content\":\"b\",\"weight\":1}]}", RT_OK, NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"tool_calls\":[]},{\"role\":\"tool\",\"content\":\"r\"},{\"role\":\"assistant\",\"content\":\"x\"}]}", RT_OK, NULL},
        {"{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}", RT_OK, NULL},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\"}]}]}", RT_ERR_FORMAT, "messages[0].tool_calls[0] must be"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":3}}]}]}", RT_ERR_FORMAT, "messages[0].tool_calls[0].function.arguments"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]},{\"role\":\"assistant\",\"content\":\"y\"}]}", RT_ERR_FORMAT, "messages[0].tool_calls must be an array on an assistant"},
        {"{\"tools\":{},\"messages\":[{\"role\":\"assistant\",\"content\":\"y\"}]}", RT_ERR_FORMAT, "\"tools\" must be an array"},
        {"{\"prompt\":\"p\",\"completion\":\"c\"}", RT_OK, NULL},
        {"  {\"prompt\":\"p\",\"completion\":\"c\"}\r", RT_OK, NULL},
        {"   \r", RT_ERR_NOT_FOUND, NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\"}]}", RT_ERR_FORMAT, "messages[1] has no \"content\""},
        {"{\"messages\":[{\"content\":\"hi\"}]}", RT_ERR_FORMAT, "messages[0] has no \"role\""},
        {"{\"messages\":[{\"role\":\"bot\",\"content\":\"hi\"}]}", RT_ERR_FORMAT, "messages[0].role must be"},
        {"{\"messages\":[{\"role\":\"assistant\",\"content\":5}]}", RT_ERR_FORMAT, "messages[0].content must be a string"},
        {"{\"messages\":[]}", RT_ERR_FORMAT, "\"messages\" is empty"},
        {"{\"messages\":{}}", RT_ERR_FORMAT, "\"messages\" must be an array"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", RT_ERR_FORMAT, "\"messages\" has no assistant message"},
        {"{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"weight\":0.5}]}", RT_ERR_FORMAT, "messages[0].weight must be 0 or 1"},
        {"{\"messages\":[{\"role\":\"system\",\"content\":\"x\",\"weight\":1},{\"role\":\"assistant\",\"content\":\"y\"}]}", RT_ERR_FORMAT, "messages[0].weight is only allowed"},
        {"{\"messages\":[\"x\"]}", RT_ERR_FORMAT, "messages[0] is not an object"},
        {"{\"prompt\":\"p\"}", RT_ERR_FORMAT, "has no \"completion\""},
        {"{\"completion\":\"c\"}", RT_ERR_FORMAT, "has no \"prompt\""},
        {"{\"prompt\":1,\"completion\":\"c\"}", RT_ERR_FORMAT, "\"prompt\" must be a string"},
        {"{\"text\":\"x\"}", RT_ERR_FORMAT, "has neither"},
        {"[1]", RT_ERR_FORMAT, "not a JSON object"},
        {"{\"prompt\":\"p\",", RT_ERR_FORMAT, "not valid JSON"},
        {"{\"prompt\":\"p\",\"completion\":\"c\"} trailing", RT_ERR_FORMAT, "unexpected data"},
        {"{\"prompt\":\"\xc3\x28\",\"completion\":\"c\"}", RT_ERR_FORMAT, "invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char reason[256];
        enum engine_example_format fmt;
        int rc = engine_dataset_check_line(cases[i].line, strlen(cases[i].line), &fmt, reason,
                                           sizeof reason);
        CHECK_MSG(rc == cases[i].want_rc, "case %zu: rc %d want %d (%s)", i, rc, cases[i].want_rc, reason);
        if (cases[i].want_reason)
            CHECK_MSG(strncmp(reason, cases[i].want_reason, strlen(cases[i].want_reason)) == 0,
                      "case %zu: reason '%s' want '%s'", i, reason, cases[i].want_reason);
    }
    /* a raw NUL byte inside a string would cut the text: refused (issue 13) */
    static const char nul[] = "{\"prompt\":\"a\0b\",\"completion\":\"c\"}";
    char reason[256];
    enum engine_example_format fmt;
    CHECK_EQ_INT(engine_dataset_check_line(nul, sizeof nul - 1, &fmt, reason, sizeof reason), RT_ERR_FORMAT);
    CHECK(strstr(reason, "NUL") != NULL);
}

static void test_utf8(void)
{
    CHECK(engine_utf8_valid("plain", 5));
    CHECK(engine_utf8_valid("\xe2\x82\xac \xf0\x9f\x98\x80", 8));
    CHECK(!engine_utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    CHECK(!engine_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!engine_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    CHECK(!engine_utf8_valid("\xe2\x82", 2));         /* truncated */
    CHECK(!engine_utf8_valid("\x80", 1));
}

int main(void)
{
    RUN(test_route_matching);
    RUN(test_percent_decode);
    RUN(test_utf8_fix);
    RUN(test_dataset_lines);
    RUN(test_utf8);
    return TEST_SUMMARY();
}
