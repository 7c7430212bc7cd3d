/*
 * tests/test_json_grammar.c — the response_format grammar: documents of
 * several schemas accepted whole and in random chunks, invalid ones
 * rejected at their first bad byte (checked against cJSON plus a small
 * reference validator below), the vocabulary mask equal to brute force,
 * random walks over the mask always ending in valid documents, compile
 * errors naming keyword and path, hostile schemas bounded, and the speed of
 * one mask on a 150,000-token vocabulary (printed, not asserted).
 */
#include "engine/json_grammar.h"

#include "common/rt.h"
#include "tests/test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int rnd_below(int n) { return (int)(rnd() % (uint64_t)n); }

/* ---- a reference validator for the supported keywords ---- */

static const cJSON *ref_resolve(const cJSON *root, const char *ref)
{
    if (strcmp(ref, "#") == 0)
        return root;
    const char *group = strncmp(ref, "#/$defs/", 8) == 0 ? "$defs" : "definitions";
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(root, group);
    return cJSON_GetObjectItemCaseSensitive(defs, ref + strlen(group) + 3);
}

static int ref_type_ok(const char *t, const cJSON *v)
{
    if (strcmp(t, "object") == 0) return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0) return cJSON_IsArray(v);
    if (strcmp(t, "string") == 0) return cJSON_IsString(v);
    if (strcmp(t, "number") == 0) return cJSON_IsNumber(v);
    if (strcmp(t, "integer") == 0) return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble);
    if (strcmp(t, "boolean") == 0) return cJSON_IsBool(v);
    if (strcmp(t, "null") == 0) return cJSON_IsNull(v);
    return 0;
}

static long ref_codepoints(const char *s)
{
    long n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int ref_valid(const cJSON *root, const cJSON *s, const cJSON *v, int depth);

static int ref_valid_object(const cJSON *root, const cJSON *s, const cJSON *v, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
        if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring))
            return 0;
    for (const cJSON *m = v->child; m; m = m->next) {
        const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
        if (ps && !ref_valid(root, ps, m, depth + 1))
            return 0;
        if (!ps && cJSON_IsFalse(add))
            return 0;
        if (!ps && cJSON_IsObject(add) && !ref_valid(root, add, m, depth + 1))
            return 0;
    }
    return 1;
}

static int ref_valid_array(const cJSON *root, const cJSON *s, const cJSON *v, int depth)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems");
    const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
    int n = cJSON_GetArraySize(v);
    if ((mn && n < mn->valueint) || (mx && n > mx->valueint))
        return 0;
    for (const cJSON *e = v->child; items && e; e = e->next)
        if (!ref_valid(root, items, e, depth + 1))
            return 0;
    return 1;
}

static int ref_valid(const cJSON *root, const cJSON *s, const cJSON *v, int depth)
{
    if (depth > 200)
        return 0;
    if (cJSON_IsTrue(s))
        return 1;
    const cJSON *k;
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "$ref")))
        return ref_valid(root, ref_resolve(root, k->valuestring), v, depth + 1);
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "anyOf")) || (k = cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
        for (const cJSON *a = k->child; a; a = a->next)
            if (ref_valid(root, a, v, depth + 1))
                return 1;
        return 0;
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
        int any = 0;
        for (const cJSON *e = k->child; e; e = e->next)
            any |= cJSON_Compare(e, v, 1);
        if (!any)
            return 0;
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "const")) && !cJSON_Compare(k, v, 1))
        return 0;
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
        int any = 0;
        if (cJSON_IsString(k))
            any = ref_type_ok(k->valuestring, v);
        for (const cJSON *t = cJSON_IsArray(k) ? k->child : NULL; t; t = t->next)
            any |= ref_type_ok(t->valuestring, v);
        if (!any)
            return 0;
    }
    if (cJSON_IsObject(v))
        return ref_valid_object(root, s, v, depth);
    if (cJSON_IsArray(v))
        return ref_valid_array(root, s, v, depth);
    if (cJSON_IsString(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minLength");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxLength");
        long n = ref_codepoints(v->valuestring);
        if ((mn && n < mn->valueint) || (mx && n > mx->valueint))
            return 0;
    }
    return 1;
}

/* Whether doc (n bytes) parses whole with cJSON and validates. json_object
 * mode (schema NULL): an object. */
static int ref_accepts(const cJSON *schema, const char *doc, size_t n)
{
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(doc, n, &end, 0);
    int ok = v != NULL;
    while (ok && end < doc + n && strchr(" \t\r\n", *end) && *end)
        end++;
    ok = ok && end == doc + n;
    if (ok)
        ok = schema ? ref_valid(schema, schema, v, 0) : cJSON_IsObject(v);
    cJSON_Delete(v);
    return ok;
}

/* ---- schemas and their corpora ---- */

static const char *const schemas[] = {
    NULL,
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":20},"
    "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":3},"
    "\"role\":{\"enum\":[\"admin\",\"user\",null,1.5]}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
    "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"number\"},"
    "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/node\"}",
    "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"kind\":{\"const\":\"a\"},\"x\":{\"type\":\"integer\"}},"
    "\"required\":[\"kind\",\"x\"],\"additionalProperties\":false},{\"type\":\"object\",\"properties\":"
    "{\"kind\":{\"const\":\"b\"},\"y\":{\"type\":\"string\"}},\"required\":[\"kind\"],\"additionalProperties\":false},"
    "{\"type\":\"array\",\"items\":{\"type\":[\"number\",\"null\",\"boolean\"]},\"minItems\":1,\"maxItems\":4}]}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"},\"ab\":{\"type\":\"null\"},"
    "\"\xc3\xa9\\\"q\":{\"type\":\"string\"}},\"additionalProperties\":{\"type\":\"integer\"}}",
    "{\"type\":\"number\"}",
    "{\"type\":\"string\",\"maxLength\":5}",
    "{\"definitions\":{\"p\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"},\"y\":{\"type\":\"number\"}},"
    "\"required\":[\"x\",\"y\"]}},\"type\":\"object\",\"properties\":{\"points\":{\"type\":\"array\","
    "\"items\":{\"$ref\":\"#/definitions/p\"},\"minItems\":2},\"closed\":{\"type\":\"boolean\"}},\"required\":[\"points\"]}",
    "{\"type\":\"object\",\"properties\":{\"color\":{\"enum\":[\"red\",\"green\",\"blue\",\"greenish\",10,100,[1,2],{\"k\":true}]},"
    "\"n\":{\"type\":[\"integer\",\"null\"]},\"any\":{}},\"required\":[\"color\"]}",
};
#define N_SCHEMAS ((int)(sizeof schemas / sizeof schemas[0]))

typedef struct valid_case { int schema; const char *doc; } valid_case;
static const valid_case valid_docs[] = {
    {0, "{}"},
    {0, " { \"a\" : [1, -0.5e+10, \"x\\u00e9\\ud83d\\ude00\\n\\\"\", true, false, null, {\"b\": {}}], \"\": \"\" } "},
    {0, "{\"k\":\"\xc3\xa9\xf0\x9f\x98\x80\xe6\x97\xa5\"}"},
    {0, "{\"a\":{\"a\":{\"a\":[[[]],0.0,1E-3]}}}"},
    {0, "{\n  \"pretty\": {\n    \"yes\": 1\n  }\n}\n"},
    {1, "{\"name\":\"Bo\",\"age\":30}"},
    {1, "{\"age\":-1,\"name\":\"\xe6\x97\xa5\xe6\x9c\xac\",\"tags\":[\"a\",\"b\",\"c\"],\"role\":\"admin\"}"},
    {1, "{\"name\":\"x\",\"age\":0,\"role\":null}"},
    {1, "{\"name\":\"x\",\"age\":0,\"role\":1.5,\"tags\":[]}"},
    {2, "{\"v\":1}"},
    {2, "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[]},{\"v\":-0.5e+10,\"kids\":[{\"v\":3}]}]}"},
    {3, "{\"kind\":\"a\",\"x\":5}"},
    {3, "{\"kind\":\"b\"}"},
    {3, "{\"y\":\"z\",\"kind\":\"b\"}"},
    {3, "{\"x\":5,\"kind\":\"a\"}"},
    {3, "[1,null,true]"},
    {3, "[false]"},
    {4, "{\"a\":true,\"ab\":null,\"zz\":5}"},
    {4, "{\"abc\":7}"},
    {4, "{\"\xc3\xa9\\\"q\":\"s\",\"\xc3\xa9\":1}"},
    {4, "{\"\":1}"},
    {5, "-0.5e+10"},
    {5, "0"},
    {5, " 12 "},
    {5, "1E5"},
    {6, "\"\\u00e9\\ud83d\\ude00abc\""},
    {6, "\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\""},
    {6, "\"\""},
    {7, "{\"points\":[{\"x\":1,\"y\":2},{\"y\":0,\"x\":-1}],\"closed\":true}"},
    {8, "{\"color\":\"greenish\",\"n\":null,\"any\":[{\"q\":1}]}"},
    {8, "{\"color\":100}"},
    {8, "{\"color\":[1,2],\"n\":-7}"},
    {8, "{\"color\":{\"k\":true}}"},
};

/* A document whose first bad byte is at strlen(prefix); rest "" means
 * the whole is a viable prefix but not a complete document. lenient: cJSON
 * accepts it although RFC 8259 does not (leading zeros, "1.", raw control
 * bytes, bad UTF-8, \u0000), or it is outside the grammar's canonical
 * subset (duplicate keys, enum values spelt differently, escapes in free
 * keys), so the reference is not asked to reject it. */
typedef struct invalid_case { int schema; const char *prefix, *rest; int lenient; } invalid_case;
static const invalid_case invalid_docs[] = {
    {0, "", "[]", 0},
    {0, "{\"a\":1}", "x", 0},
    {0, "{\"a\":0", "1}", 1},
    {0, "{\"a\":", "}", 0},
    {0, "{\"a\"", ",", 0},
    {0, "{\"a\":\"\\u", "g\"}", 0},
    {0, "{\"a\":\"\\uD", "C00\"}", 0},
    {0, "{\"a\":\"\\ud83d", "\"}", 0},
    {0, "{\"a\":\"", "\x01\"}", 1},
    {0, "{\"a\":\"\xc3", "(\"}", 1},
    {0, "{\"a\":\"", "\xc0\x80\"}", 1},
    {0, "{\"a\":\"\xed", "\xa0\x80\"}", 1},
    {0, "{\"a\":tru", "x}", 0},
    {0, "{\"a\":1.", "}", 1},
    {0, "{\"a\":-", "}", 0},
    {0, "{\"a\":1e", "}", 0},
    {0, "{\"a\":[12,", "]}", 0},
    {0, "{\"a\":1,", "}", 0},
    {0, "{\"a\":[1", "", 0},
    {0, "{\"a\":\"\\", "x\"}", 0},
    {1, "{\"name\":\"Bo\"", "}", 0},
    {1, "{\"name\":\"", "\"}", 0},
    {1, "{\"age\":1", ".5}", 0},
    {1, "{\"name\":\"x\",\"age\":1,\"", "foo\":1}", 0},
    {1, "{\"name\":\"x\",\"", "name\":\"y\"}", 0},
    {1, "{\"name\":\"x\",\"age\":1,\"tags\":[\"a\",\"b\",\"c\"", ",\"d\"]}", 0},
    {1, "{\"name\":\"x\",\"age\":1,\"role\":\"us", "x\"}", 0},
    {1, "{\"name\":\"x\",\"age\":1,\"role\":1.5", "0}", 1},
    {1, "{\"name\":\"12345678901234567890", "1\"}", 0},
    {1, "{\"name\":\"x\",\"age\":1,\"", "age\":2}", 1},
    {1, "{\"name\":\"x\",\"age\":1,\"tags\":[],\"role\":null", ",\"x\":1}", 0},
    {2, "{\"kids\":[{", "}]}", 0},
    {2, "{\"v\":1,\"kids\":[", "1]}", 0},
    {3, "{\"kind\":\"a\"", "}", 0},
    {3, "{\"kind\":\"b\",\"", "x\":1}", 0},
    {3, "[", "]", 0},
    {3, "[1,2,3,4", ",5]", 0},
    {3, "{\"x\":5", "}", 0},
    {3, "{\"kind\":\"", "c\"}", 0},
    {3, "[", "\"a\"]", 0},
    {4, "{\"a\":true,\"a", "\":false}", 1},
    {4, "{\"zz\":", "\"s\"}", 0},
    {4, "{\"x", "\\n\":1}", 1},
    {4, "{\"ab\":", "1}", 0},
    {5, "-", "a", 0},
    {5, "0", "1", 1},
    {5, "1.5 ", "x", 0},
    {5, "1.", "", 1},
    {6, "\"abcde", "f\"", 0},
    {6, "\"abcde", "\\n\"", 0},
    {6, "\"\\u000", "0\"", 1},
    {6, "\"\\ud83d\\u", "0041\"", 0},
    {6, "\"\\ud83d\\uD", "800\"", 0},
    {7, "{\"points\":[{\"x\":1,\"y\":2}", "]}", 0},
    {7, "{\"closed\":true", "}", 0},
    {8, "{\"color\":\"green", "x\"}", 0},
    {8, "{\"color\":10", "1}", 0},
    {8, "{\"color\":[1,", "3]}", 0},
    {8, "{\"color\":10,\"n\":1", ".5}", 0},
};

static cJSON *schema_json[N_SCHEMAS];
static json_grammar *grammars[N_SCHEMAS];

/* Feeds doc byte by byte; the index of the first byte refused, or -1. */
static long feed_bytes(json_matcher *m, const char *doc, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (json_matcher_advance(m, doc + i, 1) != RT_OK)
            return (long)i;
    return -1;
}

/* Feeds doc in random chunks; on a refused chunk, checks the matcher is
 * unchanged by going on byte by byte. Same result as feed_bytes. */
static long feed_chunks(json_matcher *m, const char *doc, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = 1 + (size_t)rnd_below(7);
        if (k > n - i)
            k = n - i;
        if (json_matcher_advance(m, doc + i, k) != RT_OK) {
            long bad = feed_bytes(m, doc + i, k);
            return bad < 0 ? -2 : (long)i + bad;
        }
        i += k;
    }
    return -1;
}

static void test_compile_corpus_schemas(void)
{
    char err[256];
    for (int s = 0; s < N_SCHEMAS; s++) {
        schema_json[s] = schemas[s] ? cJSON_Parse(schemas[s]) : NULL;
        CHECK_MSG(!schemas[s] || schema_json[s], "schema %d does not parse", s);
        err[0] = '\0';
        int rc = json_grammar_compile(schema_json[s], &grammars[s], err, sizeof err);
        CHECK_MSG(rc == RT_OK, "schema %d: %s (%s)", s, rt_strerror(rc), err);
    }
}

static void test_valid_corpus(void)
{
    for (size_t i = 0; i < sizeof valid_docs / sizeof valid_docs[0]; i++) {
        const valid_case *c = &valid_docs[i];
        size_t n = strlen(c->doc);
        CHECK_MSG(ref_accepts(schema_json[c->schema], c->doc, n), "reference refuses valid doc %zu", i);
        for (int round = 0; round < 6; round++) {
            json_matcher *m = NULL;
            if (json_matcher_new(grammars[c->schema], &m) != RT_OK) {
                CHECK(0);
                continue;
            }
            long bad = round == 0 ? feed_bytes(m, c->doc, n) : feed_chunks(m, c->doc, n);
            CHECK_MSG(bad == -1, "valid doc %zu (schema %d) refused at byte %ld: %s", i, c->schema, bad, c->doc);
            CHECK_MSG(json_matcher_done(m), "valid doc %zu not done: %s", i, c->doc);
            json_matcher_free(m);
        }
    }
}

static void test_invalid_corpus(void)
{
    char doc[512];
    for (size_t i = 0; i < sizeof invalid_docs / sizeof invalid_docs[0]; i++) {
        const invalid_case *c = &invalid_docs[i];
        snprintf(doc, sizeof doc, "%s%s", c->prefix, c->rest);
        size_t n = strlen(doc);
        long want = c->rest[0] ? (long)strlen(c->prefix) : -1;
        if (!c->lenient)
            CHECK_MSG(!ref_accepts(schema_json[c->schema], doc, n), "reference accepts invalid doc %zu: %s", i, doc);
        for (int round = 0; round < 4; round++) {
            json_matcher *m = NULL;
            if (json_matcher_new(grammars[c->schema], &m) != RT_OK) {
                CHECK(0);
                continue;
            }
            long bad = round == 0 ? feed_bytes(m, doc, n) : feed_chunks(m, doc, n);
            CHECK_MSG(bad == want, "invalid doc %zu (schema %d): first bad byte %ld, want %ld: %s",
                      i, c->schema, bad, want, doc);
            if (want < 0)
                CHECK_MSG(!json_matcher_done(m), "incomplete doc %zu done: %s", i, doc);
            json_matcher_free(m);
        }
    }
}

/* Mutated valid documents: whatever the matcher takes whole and calls
 * done, cJSON and the reference validator must accept. */
static void test_mutations_sound(void)
{
    static const char alphabet[] = "{}[]\":,0123456789.eE+-tfnulrsa \\\n";
    char doc[512];
    int accepted = 0;
    for (int iter = 0; iter < 4000; iter++) {
        const valid_case *c = &valid_docs[rnd_below((int)(sizeof valid_docs / sizeof valid_docs[0]))];
        size_t n = strlen(c->doc);
        memcpy(doc, c->doc, n);
        int muts = 1 + rnd_below(2);
        for (int k = 0; k < muts; k++) {
            size_t p = (size_t)rnd_below((int)n);
            int op = rnd_below(3);
            if (op == 0) {
                doc[p] = alphabet[rnd_below((int)sizeof alphabet - 1)];
            } else if (op == 1 && n > 1) {
                memmove(doc + p, doc + p + 1, n - p - 1);
                n--;
            } else if (n + 1 < sizeof doc) {
                memmove(doc + p + 1, doc + p, n - p);
                doc[p] = alphabet[rnd_below((int)sizeof alphabet - 1)];
                n++;
            }
        }
        json_matcher *m = NULL;
        if (json_matcher_new(grammars[c->schema], &m) != RT_OK)
            continue;
        if (feed_bytes(m, doc, n) == -1 && json_matcher_done(m)) {
            accepted++;
            CHECK_MSG(ref_accepts(schema_json[c->schema], doc, n), "matcher accepts invalid %.*s", (int)n, doc);
        }
        json_matcher_free(m);
    }
    fprintf(stderr, "   %d mutated documents accepted and checked\n", accepted);
}

/* ---- vocabulary ---- */

typedef struct vocab_src {
    char **tok;
    size_t *len;
    int n, cap;
} vocab_src;

static void vs_add(vocab_src *v, const char *s, size_t n)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 1024;
        v->tok = realloc(v->tok, (size_t)v->cap * sizeof *v->tok);
        v->len = realloc(v->len, (size_t)v->cap * sizeof *v->len);
    }
    v->tok[v->n] = malloc(n + 1);
    memcpy(v->tok[v->n], s, n);
    v->len[v->n] = n;
    v->n++;
}

static void vs_free(vocab_src *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->tok[i]);
    free(v->tok);
    free(v->len);
}

static const char *const json_pieces[] = {
    "{\"", "\":", "\",", "\"}", "\":\"", "\",\"", "},", "}]", "]}", "[{", "{}", "[]", "\"\"",
    "true", "false", "null", "nul", "tr", "fa", "-0", "0.", ".5", "e+", "E-", "1e5", "-0.5e+10",
    "\\n", "\\u", "\\u00", "\\ud83d", "\\ude00", "\\\"", "\\\\", "  ", "   ", "\n", "\n  ", "\n    ",
    ", ", ": ", "\": ", "\", \"", "name", "age", "tags", "role", "admin", "user", "kind", "kids",
    "points", "closed", "color", "green", "greenish", "red", "blue", "any", "\"a", "\"b", "ab",
    "\xc3\xa9", "\\\"q", "\xc3\xa9\\\"q", "100", "10", "[1,2]", "{\"k\":true}", " {", " }", " [", "\"v\"",
    "\xe6\x97\xa5", "\xe6\x9c\xac", "\xf0\x9f\x98\x80", "\xf0\x9f", "\x98\x80", "\xe6\x97", "\x97\xa5",
    "\xc3", "\xa9", "\xed\xa0\x80", "\xc0\x80", "zz", "x", "y", "\":{\"", "\":[", "],\"",
};

static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "hello",
    "world", "json", "value", "key", "data", "type", "item", "list", "id", "text", "ok", "yes",
};

/* A few thousand tokens: every single byte, JSON pieces, words with and
 * without a leading space or quote, digit runs, UTF-8 pieces, one empty
 * (special) token. */
static void build_small_vocab(vocab_src *v)
{
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        vs_add(v, &c, 1);
    }
    vs_add(v, "", 0);
    for (size_t i = 0; i < sizeof json_pieces / sizeof json_pieces[0]; i++)
        vs_add(v, json_pieces[i], strlen(json_pieces[i]));
    char buf[64];
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        const char *pre[] = {"", " ", "\"", "\":\"", "_"};
        const char *post[] = {"", "\"", "\":", "\",", "s"};
        for (int p = 0; p < 5; p++)
            for (int q = 0; q < 5; q++) {
                int n = snprintf(buf, sizeof buf, "%s%s%s", pre[p], words[i], post[q]);
                vs_add(v, buf, (size_t)n);
            }
    }
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(buf, sizeof buf, "%d", i);
        vs_add(v, buf, (size_t)n);
    }
    for (int i = 0; i < 300; i++) {
        /* a random two- or three-byte UTF-8 character, or half of one */
        unsigned cp = 0x80 + (unsigned)rnd_below(0xD000);
        int n;
        if (cp < 0x800)
            n = snprintf(buf, sizeof buf, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 63));
        else
            n = snprintf(buf, sizeof buf, "%c%c%c", 0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
        vs_add(v, buf, (size_t)(i % 3 == 0 ? n - 1 : n));
        if (i % 5 == 0)
            vs_add(v, buf + 1, (size_t)(n - 1));
    }
}

/* Brute force: every token tried on a copy of m. */
static void brute_mask(const json_matcher *m, json_matcher *scratch, const vocab_src *v, uint8_t *out)
{
    for (int i = 0; i < v->n; i++) {
        json_matcher_copy(scratch, m);
        out[i] = v->len[i] && json_matcher_advance(scratch, v->tok[i], v->len[i]) == RT_OK;
    }
}

/* A token to finish with: closing bytes first, then the start of short
 * values, else any allowed token. */
static int finishing_token(const uint8_t *allowed, int n)
{
    static const char pref[] = "\"}]0:nultrefas[{";
    for (const char *p = pref; *p; p++)
        if (allowed[(unsigned char)*p])
            return (unsigned char)*p;
    int k = 0;
    for (int i = 0; i < n; i++)
        k += allowed[i];
    if (!k)
        return -1;
    int pick = rnd_below(k);
    for (int i = 0; i < n; i++)
        if (allowed[i] && pick-- == 0)
            return i;
    return -1;
}

static int random_token(const uint8_t *allowed, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += allowed[i];
    if (!k)
        return -1;
    int pick = rnd_below(k);
    for (int i = 0; i < n; i++)
        if (allowed[i] && pick-- == 0)
            return i;
    return -1;
}

static void test_mask_and_walks(void)
{
    vocab_src src = {0};
    build_small_vocab(&src);
    json_vocab *v = NULL;
    CHECK(json_vocab_new((const char *const *)src.tok, src.len, src.n, &v) == RT_OK);
    uint8_t *mask = malloc((size_t)src.n), *brute = malloc((size_t)src.n);
    char *doc = malloc(1 << 16);
    int brute_steps = 0, mismatches = 0, finished = 0, walks = 0;
    for (int s = 0; s < N_SCHEMAS && v; s++) {
        json_matcher *m = NULL, *scratch = NULL;
        json_matcher_new(grammars[s], &m);
        json_matcher_new(grammars[s], &scratch);
        for (int w = 0; w < 200; w++) {
            json_matcher *start = NULL;
            json_matcher_new(grammars[s], &start);
            json_matcher_copy(m, start);
            json_matcher_free(start);
            size_t len = 0;
            int steps = 0, ok = 1, stop_when_done = rnd_below(4) != 0;
            for (;;) {
                CHECK(json_matcher_mask(m, v, mask) == RT_OK);
                if (w < 12) {
                    brute_mask(m, scratch, &src, brute);
                    brute_steps++;
                    if (memcmp(mask, brute, (size_t)src.n) != 0)
                        mismatches++;
                }
                int done = json_matcher_done(m);
                if (done && (stop_when_done || steps > 60))
                    break;
                int t = steps > 40 ? finishing_token(mask, src.n) : random_token(mask, src.n);
                if (t < 0) {
                    ok = done;
                    break;
                }
                if (json_matcher_advance(m, src.tok[t], src.len[t]) != RT_OK || len + src.len[t] > 60000) {
                    ok = 0;
                    break;
                }
                memcpy(doc + len, src.tok[t], src.len[t]);
                len += src.len[t];
                if (++steps > 3000)
                    break;
            }
            walks++;
            CHECK_MSG(ok, "schema %d walk %d: dead end after %.*s", s, w, (int)len, doc);
            if (ok && json_matcher_done(m)) {
                finished++;
                CHECK_MSG(ref_accepts(schema_json[s], doc, len), "schema %d walk %d: invalid %.*s", s, w, (int)len, doc);
            } else {
                CHECK_MSG(0, "schema %d walk %d did not finish: %.*s", s, w, (int)len, doc);
            }
            if (w == 0)
                fprintf(stderr, "   schema %d walk: %.*s\n", s, (int)(len > 300 ? 300 : len), doc);
        }
        json_matcher_free(m);
        json_matcher_free(scratch);
    }
    CHECK_MSG(mismatches == 0, "%d of %d masks differ from brute force", mismatches, brute_steps);
    fprintf(stderr, "   %d masks equal brute force; %d of %d walks finished valid\n", brute_steps - mismatches, finished, walks);
    free(mask);
    free(brute);
    free(doc);
    json_vocab_free(v);
    vs_free(&src);
}

/* ---- compile errors and hostile schemas ---- */

static void expect_error(const char *schema, int code, const char *want1, const char *want2)
{
    cJSON *j = cJSON_Parse(schema);
    char err[256] = "";
    json_grammar *g = NULL;
    int rc = json_grammar_compile(j, &g, err, sizeof err);
    CHECK_MSG(rc == code, "%s: got %s (%s), want %s", schema, rt_strerror(rc), err, rt_strerror(code));
    CHECK_MSG(g == NULL, "%s: out set on failure", schema);
    CHECK_MSG(strstr(err, want1) != NULL, "%s: error \"%s\" lacks \"%s\"", schema, err, want1);
    if (want2)
        CHECK_MSG(strstr(err, want2) != NULL, "%s: error \"%s\" lacks \"%s\"", schema, err, want2);
    json_grammar_free(g);
    cJSON_Delete(j);
}

static void test_compile_errors(void)
{
    int U = RT_ERR_UNSUPPORTED, I = RT_ERR_INVALID;
    expect_error("{\"type\":\"string\",\"pattern\":\"^a\"}", U, "'pattern'", "at #");
    expect_error("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"minimum\":0}}}", U,
                 "'minimum'", "#/properties/a");
    expect_error("{\"allOf\":[{\"type\":\"string\"}]}", U, "'allOf'", "at #");
    expect_error("{\"type\":\"array\",\"items\":{\"type\":\"string\",\"format\":\"email\",\"not\":{}}}", U, "'not'", "#/items");
    expect_error("{\"type\":\"array\",\"prefixItems\":[]}", U, "'prefixItems'", NULL);
    expect_error("{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"object\",\"propertyNames\":{}}]}", U,
                 "'propertyNames'", "#/anyOf/1");
    expect_error("{\"$defs\":{\"a\":{\"type\":\"string\",\"uniqueItems\":true}},\"$ref\":\"#/$defs/a\"}", U,
                 "'uniqueItems'", "#/$defs/a");
    expect_error("{\"$ref\":\"#/$defs/missing\"}", I, "unresolvable '$ref'", NULL);
    expect_error("{\"$ref\":\"http://example.com/s.json\"}", U, "'$ref'", NULL);
    expect_error("{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", U, "'b'", "#/required");
    expect_error("{\"type\":\"strin\"}", I, "unknown type", NULL);
    expect_error("{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", I, "'maxLength'", NULL);
    expect_error("{\"anyOf\":[{\"type\":\"string\"}],\"type\":\"string\"}", U, "alongside", NULL);
    expect_error("{\"type\":\"object\",\"properties\":{\"a\":false}}", U, "'false'", "#/properties/a");
    expect_error("{\"type\":\"integer\",\"enum\":[\"a\"]}", I, "'enum'", NULL);
    /* format is an annotation: ignored */
    cJSON *j = cJSON_Parse("{\"type\":\"string\",\"format\":\"date-time\",\"description\":\"when\"}");
    json_grammar *g = NULL;
    CHECK(json_grammar_compile(j, &g, NULL, 0) == RT_OK);
    json_grammar_free(g);
    cJSON_Delete(j);
}

static void test_hostile(void)
{
    /* schema nested 300 deep */
    char *deep = malloc(20000);
    size_t n = 0;
    for (int i = 0; i < 300; i++)
        n += (size_t)sprintf(deep + n, "{\"type\":\"array\",\"items\":");
    n += (size_t)sprintf(deep + n, "{\"type\":\"null\"}");
    for (int i = 0; i < 300; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    expect_error(deep, RT_ERR_TOO_LARGE, "deeper", NULL);
    /* nested 20 deep with minItems 1: more frames than the run-time bound */
    n = 0;
    for (int i = 0; i < 40; i++)
        n += (size_t)sprintf(deep + n, "{\"type\":\"array\",\"minItems\":1,\"items\":");
    n += (size_t)sprintf(deep + n, "{\"type\":\"null\"}");
    for (int i = 0; i < 40; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    expect_error(deep, RT_ERR_INVALID, "no instance", NULL);
    free(deep);

    expect_error("{\"$defs\":{\"a\":{\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#/$defs/a\"}},"
                 "\"required\":[\"n\"]}},\"$ref\":\"#/$defs/a\"}", RT_ERR_INVALID, "no instance", NULL);
    expect_error("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}",
                 RT_ERR_INVALID, "cycle", NULL);
    expect_error("{\"$ref\":\"#\"}", RT_ERR_INVALID, "cycle", NULL);

    /* an anyOf that refers to itself, with a base case */
    cJSON *j = cJSON_Parse("{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"type\":\"null\"},"
                           "{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/a\"}}]}},\"$ref\":\"#/$defs/a\"}");
    json_grammar *g = NULL;
    json_matcher *m = NULL;
    CHECK(json_grammar_compile(j, &g, NULL, 0) == RT_OK);
    CHECK(g && json_matcher_new(g, &m) == RT_OK);
    /* run-time depth is bounded: 40 '[' cannot all be taken, and what was
     * taken can still be closed */
    int taken = 0;
    while (m && taken < 40 && json_matcher_advance(m, "[", 1) == RT_OK)
        taken++;
    CHECK_MSG(taken > 10 && taken < 40, "took %d nested arrays", taken);
    CHECK(m && json_matcher_advance(m, "null", 4) != RT_OK);    /* the deepest array must stay empty */
    for (int i = 0; m && i < taken; i++)
        CHECK(json_matcher_advance(m, "]", 1) == RT_OK);
    CHECK(m && json_matcher_done(m));
    json_matcher_free(m);
    json_grammar_free(g);
    cJSON_Delete(j);

    /* json_object mode nested past the bound: refused, not a crash */
    g = NULL, m = NULL;
    CHECK(json_grammar_compile(NULL, &g, NULL, 0) == RT_OK);
    CHECK(g && json_matcher_new(g, &m) == RT_OK);
    taken = 0;
    while (m && taken < 100 && json_matcher_advance(m, "{\"a\":", taken ? 5 : 5) == RT_OK)
        taken++;
    CHECK_MSG(taken > 5 && taken < 40, "took %d nested objects", taken);
    json_matcher_free(m);
    json_grammar_free(g);

    /* a huge enum compiles and works */
    cJSON *big = cJSON_CreateObject(), *en = cJSON_AddArrayToObject(big, "enum");
    char buf[32];
    for (int i = 0; i < 50000; i++) {
        snprintf(buf, sizeof buf, "v%d", i);
        cJSON_AddItemToArray(en, cJSON_CreateString(buf));
    }
    g = NULL, m = NULL;
    CHECK(json_grammar_compile(big, &g, NULL, 0) == RT_OK);
    CHECK(g && json_matcher_new(g, &m) == RT_OK);
    CHECK(m && json_matcher_advance(m, "\"v4999", 6) == RT_OK && !json_matcher_done(m));
    CHECK(m && json_matcher_advance(m, "9\"", 2) == RT_OK && json_matcher_done(m));
    CHECK(m && json_matcher_advance(m, "9", 1) != RT_OK);
    json_matcher_free(m);
    json_grammar_free(g);
    cJSON_Delete(big);

    /* too many properties, too wide a union */
    cJSON *wide = cJSON_CreateObject(), *props = cJSON_AddObjectToObject(wide, "properties");
    for (int i = 0; i < 65; i++) {
        snprintf(buf, sizeof buf, "p%d", i);
        cJSON_AddItemToObject(props, buf, cJSON_CreateTrue());
    }
    char err[256] = "";
    g = NULL;
    CHECK(json_grammar_compile(wide, &g, err, sizeof err) == RT_ERR_TOO_LARGE && g == NULL);
    CHECK_MSG(strstr(err, "properties") != NULL, "%s", err);
    cJSON_Delete(wide);
    cJSON *many = cJSON_CreateObject(), *any = cJSON_AddArrayToObject(many, "anyOf");
    for (int i = 0; i < 100; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "const", i);
        cJSON_AddItemToArray(any, c);
    }
    g = NULL;
    CHECK(json_grammar_compile(many, &g, err, sizeof err) == RT_ERR_TOO_LARGE && g == NULL);
    cJSON_Delete(many);
}

/* ---- speed ---- */

static void test_speed(void)
{
    vocab_src src = {0};
    build_small_vocab(&src);
    char buf[64];
    static const char letters[] = "etaoinshrdlucmfwypvbgkjqxz";
    while (src.n < 150000) {
        int n = 0, len = 2 + rnd_below(9);
        if (rnd_below(2))
            buf[n++] = ' ';
        if (rnd_below(10) == 0)
            buf[n++] = (char)('A' + rnd_below(26));
        while (n < len)
            buf[n++] = letters[rnd_below(rnd_below(2) ? 26 : 8)];
        if (rnd_below(20) == 0)
            buf[n++] = "\",.:}]"[rnd_below(6)];
        vs_add(&src, buf, (size_t)n);
    }
    json_vocab *v = NULL;
    double t0 = rt_now_seconds();
    CHECK(json_vocab_new((const char *const *)src.tok, src.len, src.n, &v) == RT_OK);
    fprintf(stderr, "   vocab of %d tokens built in %.1f ms\n", src.n, (rt_now_seconds() - t0) * 1e3);
    uint8_t *mask = malloc((size_t)src.n);
    struct { int schema; const char *prefix; const char *what; } at[] = {
        {0, "", "json_object start"},
        {0, "{\"", "json_object key"},
        {0, "{\"key\": \"some", "json_object string value"},
        {0, "{\"key\": ", "json_object value start"},
        {1, "{\"name\":\"x\",\"", "schema key"},
        {3, "", "anyOf start"},
        {3, "{\"kind\":\"b\",\"y\":\"ab", "anyOf string"},
    };
    for (size_t i = 0; i < sizeof at / sizeof at[0] && v; i++) {
        json_matcher *m = NULL;
        json_matcher_new(grammars[at[i].schema], &m);
        CHECK(json_matcher_advance(m, at[i].prefix, strlen(at[i].prefix)) == RT_OK);
        int reps = 20, allowed = 0;
        t0 = rt_now_seconds();
        for (int r = 0; r < reps; r++)
            json_matcher_mask(m, v, mask);
        double ms = (rt_now_seconds() - t0) * 1e3 / reps;
        for (int k = 0; k < src.n; k++)
            allowed += mask[k];
        printf("mask speed: %-26s %7.3f ms per mask (%d of %d tokens allowed)\n", at[i].what, ms, allowed, src.n);
        json_matcher_free(m);
    }
    free(mask);
    json_vocab_free(v);
    vs_free(&src);
}

int main(void)
{
    RUN(test_compile_corpus_schemas);
    RUN(test_valid_corpus);
    RUN(test_invalid_corpus);
    RUN(test_mutations_sound);
    RUN(test_compile_errors);
    RUN(test_hostile);
    RUN(test_mask_and_walks);
    RUN(test_speed);
    for (int s = 0; s < N_SCHEMAS; s++) {
        json_grammar_free(grammars[s]);
        cJSON_Delete(schema_json[s]);
    }
    return TEST_SUMMARY();
}
