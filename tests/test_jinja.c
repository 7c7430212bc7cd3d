/*
 * tests/test_jinja.c — the Jinja interpreter (engine/jinja.h) against
 * Jinja2 3.1 as transformers configures it: every (template, conversation,
 * add_generation_prompt) of tests/fixtures/chat_templates/expected.json
 * (made by tests/fixtures/make_template_fixtures.py) must render
 * byte-identically, raise the same raise_exception() message, or fail where
 * Jinja2 failed; {% generation %} spans must match. Also unit cases per
 * construct, malformed and hostile templates (an error with a line, never a
 * crash or a hang), and a deterministic mutation fuzz over the real
 * templates. Run from the repository root.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rt.h"
#include "engine/jinja.h"
#include "tests/test.h"

#define FIX "tests/fixtures/chat_templates/"
#define NOW 1721952000

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    if (p)
        p[n] = 0;
    fclose(f);
    return p;
}

/* Renders src with the JSON variables vars; returns the code, *out the text
 * or the error message (caller frees). */
static int render_str(const char *src, const char *vars, char **out)
{
    char err[512];
    jinja_template *t = NULL;
    int rc = jinja_compile(src, &t, err, sizeof err);
    if (rc) {
        *out = strdup(err);
        return rc;
    }
    cJSON *ctx = vars ? cJSON_Parse(vars) : NULL;
    char *text = NULL;
    rc = jinja_render_at(t, ctx, NOW, &text, NULL, NULL, err, sizeof err);
    *out = rc ? strdup(err) : text;
    cJSON_Delete(ctx);
    jinja_free(t);
    return rc;
}

#define EXPECT(src, vars, want) do { \
    char *got_ = NULL; int rc_ = render_str(src, vars, &got_); \
    CHECK_MSG(rc_ == RT_OK && test_str_eq(got_, want), "%s -> [%s] (rc %d), want [%s]", src, \
              test_str_or_null(got_), rc_, want); \
    free(got_); \
} while (0)

/* The template must fail with code (0 = any error) and an error containing sub. */
#define EXPECT_ERR(src, vars, code, sub) do { \
    char *got_ = NULL; int rc_ = render_str(src, vars, &got_); \
    CHECK_MSG(rc_ != RT_OK && ((code) == 0 || rc_ == (code)) && got_ && strstr(got_, sub), \
              "%s -> rc %d [%s], want error with [%s]", src, rc_, test_str_or_null(got_), sub); \
    free(got_); \
} while (0)

/* ---------------------------------------------------------------- fixtures */

static cJSON *find_conv(cJSON *convs, const char *name)
{
    cJSON *c;
    cJSON_ArrayForEach(c, convs) {
        cJSON *n = cJSON_GetObjectItem(c, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return cJSON_GetObjectItem(c, "vars");
    }
    return NULL;
}

struct tally { char name[64]; int ok, total; };

static void test_fixtures(void)
{
    char *cj = slurp(FIX "conversations.json"), *ej = slurp(FIX "expected.json");
    CHECK(cj && ej);
    cJSON *conv = cj ? cJSON_Parse(cj) : NULL, *exp = ej ? cJSON_Parse(ej) : NULL;
    CHECK(conv && exp);
    if (!conv || !exp)
        goto out;
    cJSON *convs = cJSON_GetObjectItem(conv, "conversations"), *c;
    struct tally tally[64];
    int ntally = 0, cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(exp, "cases")) {
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        char path[256], err[512];
        snprintf(path, sizeof path, FIX "%s.jinja", tname);
        char *src = slurp(path);
        cJSON *vars = find_conv(convs, cJSON_GetObjectItem(c, "conversation")->valuestring);
        CHECK(src && vars);
        if (!src || !vars) {
            free(src);
            continue;
        }
        cJSON *ctx = cJSON_Duplicate(vars, 1);
        cJSON_AddBoolToObject(ctx, "add_generation_prompt",
                              cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")));
        jinja_template *t = NULL;
        char *out = NULL;
        size_t len = 0;
        jinja_spans spans = { 0 };
        int rc = jinja_compile(src, &t, err, sizeof err);
        if (rc == RT_OK)
            rc = jinja_render_at(t, ctx, NOW, &out, &len, &spans, err, sizeof err);
        cJSON *want = cJSON_GetObjectItem(c, "output"), *werr = cJSON_GetObjectItem(c, "error");
        int ok;
        if (want) {
            ok = rc == RT_OK && len == strlen(want->valuestring) && memcmp(out, want->valuestring, len) == 0;
            cJSON *ws = cJSON_GetObjectItem(c, "spans");
            ok = ok && (size_t)cJSON_GetArraySize(ws) == spans.count;
            for (size_t i = 0; ok && i < spans.count; i++) {
                cJSON *s = cJSON_GetArrayItem(ws, (int)i);
                ok = spans.items[i].start == (size_t)cJSON_GetArrayItem(s, 0)->valuedouble &&
                     spans.items[i].end == (size_t)cJSON_GetArrayItem(s, 1)->valuedouble;
            }
            if (!ok)
                fprintf(stderr, "  %s / %s / agp=%d: rc %d %s\n    got  [%s]\n    want [%s]\n", tname,
                        cJSON_GetObjectItem(c, "conversation")->valuestring,
                        cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")), rc, rc ? err : "",
                        out ? out : "", want->valuestring);
        } else {
            const char *type = cJSON_GetObjectItem(c, "error_type")->valuestring;
            /* raise_exception() must carry its message exactly */
            ok = rc != RT_OK && (strcmp(type, "TemplateError") != 0 ||
                                 (rc == RT_ERR_INVALID && strcmp(err, werr->valuestring) == 0));
            if (!ok)
                fprintf(stderr, "  %s / %s: want error [%s], got rc %d [%s]\n", tname,
                        cJSON_GetObjectItem(c, "conversation")->valuestring, werr->valuestring, rc,
                        rc ? err : (out ? out : ""));
        }
        CHECK(ok);
        int k;
        for (k = 0; k < ntally && strcmp(tally[k].name, tname) != 0; k++)
            ;
        if (k == ntally && ntally < 64) {
            snprintf(tally[k].name, sizeof tally[k].name, "%s", tname);
            tally[k].ok = tally[k].total = 0;
            ntally++;
        }
        if (k < 64) {
            tally[k].ok += ok;
            tally[k].total++;
        }
        cases++;
        free(out);
        jinja_spans_free(&spans);
        jinja_free(t);
        cJSON_Delete(ctx);
        free(src);
    }
    CHECK(cases >= 200);
    for (int k = 0; k < ntally; k++)
        fprintf(stderr, "  %-28s %d/%d identical\n", tally[k].name, tally[k].ok, tally[k].total);
out:
    cJSON_Delete(conv);
    cJSON_Delete(exp);
    free(cj);
    free(ej);
}

/* ---------------------------------------------------------------- units */

static void test_whitespace(void)
{
    EXPECT("a  {{- 'b' -}}  c", NULL, "abc");
    EXPECT("  {% if true %}\n  x\n  {% endif %}\n  {{ 'y' }}  \n", NULL, "  x\n  y  ");
    EXPECT("a\n{% if true %}\nb\n{% endif %}\nc", NULL, "a\nb\nc");
    EXPECT("a {#- comment -#} b", NULL, "ab");
    EXPECT("a\n  {# c #}\nb", NULL, "a\nb");
    EXPECT("{% raw %}{{ x }}{% endraw %}", NULL, "{{ x }}");
    EXPECT("x\r\ny\n", NULL, "x\ny");
    EXPECT("  {%+ if true %}a{% endif %}", NULL, "  a");
    EXPECT("{% if true +%}\nz{% endif %}", NULL, "\nz");
}

static void test_loops(void)
{
    EXPECT("{% for x in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
           NULL, "103TrueFalse3;212FalseFalse3;321FalseTrue3;");
    EXPECT("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
    EXPECT("{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %}", NULL, "1,3,5,7,9");
    EXPECT("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }} {% endfor %}", NULL, "a=1 b=2 ");
    EXPECT("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}{% if x is even %}{% continue %}{% endif %}{{ x }}{% endfor %}",
           NULL, "1");
    EXPECT("{% for x in 'ab' %}{{ loop.previtem is defined }}{{ loop.nextitem }}{% endfor %}", NULL, "FalsebTrue");
    EXPECT("{% for x in [1,2,3] %}{% if loop.first %}{% set a = 1 %}{% endif %}{{ a }},{% endfor %}", NULL, "1,,,");
    EXPECT("{% set a = 5 %}{% for x in [1,2] %}{{ a }}{% set a = x %}{{ a }}{% endfor %}{{ a }}", NULL, "51525");
    EXPECT("{% for x in undefined_thing %}a{% endfor %}ok", NULL, "ok");
    EXPECT("{% for x in [1,2] %}{{ loop.cycle('a', 'b') }}{% endfor %}", NULL, "ab");
}

static void test_namespaces_macros(void)
{
    EXPECT("{% set ns = namespace(a=1, b='x') %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}",
           NULL, "4x");
    EXPECT("{% set ns = namespace(a=1) %}{{ ns }}", NULL, "<Namespace {'a': 1}>");
    EXPECT("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bo') }} {{ greet('Al', punct='?') }}",
           NULL, "Hi Bo! Hi Al?");
    EXPECT("{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m() }}", NULL, "[]");
    EXPECT("{% set x %}a{{ 1 + 1 }}b{% endset %}{{ x }}|{{ x|length }}", NULL, "a2b|3");
    EXPECT("{% filter upper %}abc{% endfilter %}", NULL, "ABC");
    EXPECT("{% set a, b = 1, 2 %}{{ a }}{{ b }}", NULL, "12");
    EXPECT("{{ dict(a=1)['a'] }}", NULL, "1");
}

static void test_expressions(void)
{
    EXPECT("{{ 1.0 }} {{ 0.1 }} {{ 1e20 }} {{ 1e-5 }} {{ 3/2 }} {{ 4/2 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**-1 }}",
           NULL, "1.0 0.1 1e+20 1e-05 1.5 2.0 3 -4 2 1024 0.5");
    EXPECT("{{ [1,'a',none,true,{'k':1.5}] }} {{ (1,) }} {{ ('a','b') }} {{ \"it's\" }} {{ [\"it's\", 'a\"b', 'x\\ny'] }}", NULL,
           "[1, 'a', None, True, {'k': 1.5}] (1,) ('a', 'b') it's [\"it's\", 'a\"b', 'x\\ny']");
    EXPECT("{{ 'abc'[::-1] }} {{ [1,2,3][1:] }} {{ 'héllo'[1] }} {{ [1,2,3][-1] }} {{ 'abcdef'[1:5:2] }} {{ [1,2,3][:-1] }}",
           NULL, "cba [2, 3] é 3 bd [1, 2]");
    EXPECT("{{ 'a' ~ 1 ~ none }} {{ 'x' if false else 'y' }} {{ 'x' if false }}|", NULL, "a1None y |");
    EXPECT("{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }} {{ not 0 }} {{ 0 or 'z' }} {{ 1 and 2 }}", NULL,
           "True True True True z 2");
    EXPECT("{{ m.content }}|{{ m['role'] }}|{{ m.missing }}|{{ m.missing is defined }}", "{\"m\":{\"role\":\"user\",\"content\":\"hi\"}}",
           "hi|user||False");
    EXPECT("{{ 'a\\tb\\u00e9\\x41' }}", NULL, "a\tbéA");
    EXPECT("{{ 'ab' * 3 }} {{ [0] * 2 }} {{ [1] + [2] }}", NULL, "ababab [0, 0] [1, 2]");
    EXPECT("{{ True }} {{ None }} {{ none is none }}", NULL, "True None True");
}

static void test_filters(void)
{
    EXPECT("{{ {'a': 1, 'b': [1, 2], 'c': none}|tojson }}", NULL, "{\"a\": 1, \"b\": [1, 2], \"c\": null}");
    EXPECT("{{ {'a': 1, 'b': []}|tojson(indent=2) }}", NULL, "{\n  \"a\": 1,\n  \"b\": []\n}");
    EXPECT("{{ 'é\"\\n'|tojson }} {{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}", NULL, "\"é\\\"\\n\" {\"a\": 2, \"b\": 1}");
    EXPECT("{{ '  x  '|trim }}|{{ 'aBc'|upper }}|{{ 'aBc'|lower }}|{{ 'hello world-foo (bar'|title }}|{{ 'aBC dEF'|capitalize }}",
           NULL, "x|ABC|abc|Hello World-Foo (Bar|Abc def");
    EXPECT("{{ [1,2,3]|join(', ') }} {{ [1,2]|length }} {{ 'héllo'|length }} {{ x|default('d') }} {{ ''|default('e', true) }}",
           NULL, "1, 2, 3 2 5 d e");
    EXPECT("{{ [3,1,2]|sort }} {{ [3,1,2]|sort(reverse=true) }} {{ ['b','A','a']|unique|list }} {{ [1,2]|reverse|list }} {{ 'abc'|reverse }}",
           NULL, "[1, 2, 3] [3, 2, 1] ['b', 'A'] [2, 1] cba");
    EXPECT("{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='c')|join }} {{ ms|rejectattr('role', 'eq', 'user')|list|length }}",
           "{\"ms\":[{\"role\":\"user\",\"c\":\"a\"},{\"role\":\"bot\",\"c\":\"b\"},{\"role\":\"user\",\"c\":\"c\"}]}", "ac 1");
    EXPECT("{{ [1,2,3]|first }} {{ [1,2,3]|last }} {{ {'a': 1}|items|list }} {{ 'x'|int }} {{ '3.7'|int }} {{ 3.7|int }} {{ '12'|float }}",
           NULL, "1 3 [('a', 1)] 0 3 3 12.0");
    EXPECT("{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ -3|abs }} {{ 42|string ~ '!' }}", NULL, "2.0 4.0 2.67 3 42!");
    EXPECT("{{ 'abc'|indent(2) }}|{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}", NULL, "abc|a\n  b\n\n  c|  a\n  b");
    EXPECT("{{ 'one two, three'|wordcount }} {{ [1,2,3,4,5]|batch(2)|list }} {{ '<a>'|escape }} {{ 'a-b'|replace('-', '+') }}",
           NULL, "3 [[1, 2], [3, 4], [5]] &lt;a&gt; a+b");
    EXPECT("{{ [1,2,3]|map('string')|join('-') }} {{ [0,1,2]|select|list }} {{ [1,2,3]|sum }} {{ [3,1]|min }}", NULL, "1-2-3 [1, 2] 6 1");
}

static void test_tests_and_methods(void)
{
    EXPECT("{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ true is number }}{{ true is integer }}",
           NULL, "FalseTrueTrueTrueTrueTrueFalse");
    EXPECT("{{ 1.5 is float }}{{ true is boolean }}{{ true is true }}{{ 0 is false }}{{ {} is mapping }}{{ [] is sequence }}{{ 'a' is iterable }}",
           NULL, "TrueTrueTrueFalseTrueTrueTrue");
    EXPECT("{{ range is callable }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 2 is in [1,2] }}{{ 1 is not equalto 2 }}", NULL,
           "TrueTrueTrueTrueTrueTrue");
    EXPECT("{{ '  a b  '.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }} {{ 'a/b/c'.rsplit('/', 1) }}", NULL,
           "['a', 'b'] ['a', 'b', '', 'c'] ['a', 'b c'] ['a/b', 'c']");
    EXPECT("{{ ' x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\nab'.lstrip() }}|{{ 'ab\\n'.rstrip('\\n') }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith(('x', 'b')) }}",
           NULL, "x|a|ab|ab|TrueTrue");
    EXPECT("{{ 'aXa'.replace('a', 'b') }} {{ 'hello world'.title() }} {{ 'héllo'.upper() }} {{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }} {{ '-'.join(['a', 'b']) }}",
           NULL, "bXb Hello World HÉLLO 1 2 a-b");
    EXPECT("{{ '{} and {name}'.format(1, name='x') }} {{ d.get('a') }} {{ d.get('z', 0) }} {{ d.keys()|list }} {{ d.values()|list }}",
           "{\"d\":{\"a\":1}}", "1 and x 1 0 ['a'] [1]");
    EXPECT("{{ strftime_now('%Y-%m-%d') }}", NULL, "2024-07-26");
}

static void test_errors(void)
{
    EXPECT_ERR("{{ raise_exception('bad role') }}", NULL, RT_ERR_INVALID, "bad role");
    EXPECT_ERR("{% if x %}", NULL, RT_ERR_FORMAT, "line 1");
    EXPECT_ERR("a\n{% for x in y %}\nb", NULL, RT_ERR_FORMAT, "not closed");
    EXPECT_ERR("{{ 1 + }}", NULL, RT_ERR_FORMAT, "line 1");
    EXPECT_ERR("\n\n{{ x|foo }}", NULL, RT_ERR_UNSUPPORTED, "line 3: unknown filter 'foo'");
    EXPECT_ERR("x\n{% call m() %}{% endcall %}", NULL, RT_ERR_UNSUPPORTED, "line 2: {% call %} is not supported");
    EXPECT_ERR("{% include 'x' %}", NULL, RT_ERR_UNSUPPORTED, "include");
    EXPECT_ERR("{% endif %}", NULL, RT_ERR_FORMAT, "endif");
    EXPECT_ERR("{{ 'abc }}", NULL, RT_ERR_FORMAT, "unterminated");
    EXPECT_ERR("{% break %}", NULL, RT_ERR_FORMAT, "outside");
    EXPECT_ERR("{{ x.y }}", NULL, RT_ERR_FORMAT, "'x' is undefined");
    EXPECT_ERR("{{ x + 1 }}", NULL, RT_ERR_FORMAT, "undefined");
    EXPECT_ERR("{{ [1].append(2) }}", NULL, RT_ERR_FORMAT, "unsafe");
    EXPECT_ERR("{{ 1 + 'a' }}", NULL, RT_ERR_FORMAT, "unsupported operand");
    EXPECT_ERR("{{ 1 / 0 }}", NULL, RT_ERR_FORMAT, "division");
    EXPECT_ERR("{{ x|tojson }}", NULL, RT_ERR_FORMAT, "JSON");
    EXPECT_ERR("{% for i in range(10**9) %}{% endfor %}", NULL, RT_ERR_TOO_LARGE, "Range too big");
    /* 10^10 iterations: stopped by the iteration or the memory bound */
    EXPECT_ERR("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", NULL, RT_ERR_TOO_LARGE,
               "line 1");
    EXPECT_ERR("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, RT_ERR_TOO_LARGE, "nested");
    EXPECT_ERR("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
               NULL, RT_ERR_TOO_LARGE, "");
    EXPECT_ERR("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", NULL, RT_ERR_TOO_LARGE, "output");
    /* deep nesting of expressions and blocks */
    char *deep = malloc(20000);
    size_t n = 0;
    for (int i = 0; i < 3000; i++) deep[n++] = '(';
    memcpy(deep + n, "1", 1); n++;
    for (int i = 0; i < 3000; i++) deep[n++] = ')';
    deep[n] = 0;
    char *src = malloc(n + 16);
    snprintf(src, n + 16, "{{ %s }}", deep);
    EXPECT_ERR(src, NULL, RT_ERR_TOO_LARGE, "nested");
    n = 0;
    for (int i = 0; i < 1000; i++) { memcpy(deep + n, "{% if 1 %}", 10); n += 10; }
    deep[n] = 0;
    EXPECT_ERR(deep, NULL, 0, "line 1");
    free(src);
    free(deep);
}

/* Truncations and byte flips of the real templates: must never crash. */
static void test_fuzz(void)
{
    static const char *const names[] = { "llama-3.1-instruct", "qwen3", "mistral-nemo-instruct-2407", "gemma-3-it",
                                         "deepseek-r1-distill-qwen", "chatml-generation" };
    char *cj = slurp(FIX "conversations.json");
    cJSON *conv = cj ? cJSON_Parse(cj) : NULL;
    cJSON *vars = conv ? find_conv(cJSON_GetObjectItem(conv, "conversations"), "tools") : NULL;
    CHECK(vars != NULL);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int runs = 0, errors = 0;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, FIX "%s.jinja", names[k]);
        char *src = slurp(path);
        CHECK(src != NULL);
        if (!src)
            continue;
        size_t len = strlen(src);
        char *m = malloc(len + 1);
        for (int it = 0; it < 300; it++) {
            memcpy(m, src, len + 1);
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            if (it % 3 == 0)
                m[seed % (len + 1)] = 0;
            else
                for (int f = 0; f < 1 + it % 4; f++) {
                    seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
                    m[seed % len] = "{}%#-+()[]'\"|.,= \nax\x01\xc3"[seed >> 59 & 15 ? (seed >> 40) % 22 : 0];
                    if (!m[seed % len])
                        m[seed % len] = 'x';
                }
            char err[256];
            jinja_template *t = NULL;
            char *out = NULL;
            jinja_spans spans = { 0 };
            int rc = jinja_compile(m, &t, err, sizeof err);
            if (rc == RT_OK)
                rc = jinja_render_at(t, vars, NOW, &out, NULL, &spans, err, sizeof err);
            errors += rc != RT_OK;
            if (rc != RT_OK && rc != RT_ERR_INVALID)
                CHECK_MSG(strncmp(err, "line ", 5) == 0, "error without a line: %s", err);
            free(out);
            jinja_spans_free(&spans);
            jinja_free(t);
            runs++;
        }
        free(m);
        free(src);
    }
    fprintf(stderr, "  fuzz: %d runs, %d errors, no crash\n", runs, errors);
    CHECK(runs > 0);
    cJSON_Delete(conv);
    free(cj);
}

int main(void)
{
    RUN(test_fixtures);
    RUN(test_whitespace);
    RUN(test_loops);
    RUN(test_namespaces_macros);
    RUN(test_expressions);
    RUN(test_filters);
    RUN(test_tests_and_methods);
    RUN(test_errors);
    RUN(test_fuzz);
    return TEST_SUMMARY();
}
