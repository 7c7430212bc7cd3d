/*
 * engine/corpus.c — the synthetic world and its texts. Names are built from
 * syllables by a seeded generator; every text is a template filled with
 * facts of that world, so a tiny model can learn it well in minutes.
 */
#include "engine/corpus.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/rng.h"

#define N_COUNTRIES 24
#define NAME_MAX_LEN 24

typedef struct country {
    char name[NAME_MAX_LEN], capital[NAME_MAX_LEN], language[NAME_MAX_LEN];
    const char *color, *animal;
} country;

typedef struct world {
    country c[N_COUNTRIES];
} world;

static const char *const syllables[] = {"ka", "lo", "mi", "ra", "ven", "tor", "shi", "del", "mar",
                                        "no", "qui", "ba", "zen", "ul", "fa", "ro", "ti", "gel",
                                        "an", "sor", "pe", "lin", "da", "vo"};
static const char *const colors[] = {"red", "blue", "green", "yellow", "white", "black", "orange", "purple"};
static const char *const animals[] = {"fox", "owl", "bear", "otter", "heron", "lynx", "goat", "whale",
                                      "crane", "wolf", "seal", "hare"};

/* A capitalised name of 2-3 syllables. */
static void make_name(rng *r, char *out, size_t size)
{
    int n = 2 + (int)rng_below(r, 2);
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        strncat(out, syllables[rng_below(r, sizeof syllables / sizeof syllables[0])], size - strlen(out) - 1);
    out[0] = (char)(out[0] - 'a' + 'A');
}

/* The world of a seed: distinct country names. */
static void make_world(uint64_t seed, world *w)
{
    rng r = {seed ^ 0x5eed};
    for (int i = 0; i < N_COUNTRIES; i++) {
        country *c = &w->c[i];
        bool unique;
        do {
            make_name(&r, c->name, sizeof c->name);
            unique = true;
            for (int k = 0; k < i; k++)
                unique = unique && strcmp(w->c[k].name, c->name) != 0;
        } while (!unique);
        make_name(&r, c->capital, sizeof c->capital);
        make_name(&r, c->language, sizeof c->language);
        strncat(c->language, "ish", sizeof c->language - strlen(c->language) - 1);
        c->color = colors[rng_below(&r, sizeof colors / sizeof colors[0])];
        c->animal = animals[rng_below(&r, sizeof animals / sizeof animals[0])];
    }
}

/* A growing text buffer. */
typedef struct text {
    char *buf;
    size_t len, cap;
    bool failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || t->failed)
        return;
    if (t->len + (size_t)n + 1 > t->cap) {
        size_t cap = (t->len + (size_t)n + 1) * 2;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = true;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, line, (size_t)n + 1);
    t->len += (size_t)n;
}

/* One fact sentence about c, picked by k. */
static void fact(text *t, const country *c, int k)
{
    switch (k) {
    case 0: add(t, "The capital of %s is %s.", c->name, c->capital); break;
    case 1: add(t, "%s has a %s flag.", c->name, c->color); break;
    case 2: add(t, "People in %s speak %s.", c->name, c->language); break;
    default: add(t, "The %s lives in %s.", c->animal, c->name); break;
    }
}

/* A question and its answer about c, picked by k (into q and a). */
static void qa(const country *c, int k, char *q, char *a, size_t size)
{
    switch (k) {
    case 0:
        snprintf(q, size, "What is the capital of %s?", c->name);
        snprintf(a, size, "The capital of %s is %s.", c->name, c->capital);
        break;
    case 1:
        snprintf(q, size, "What colour is the flag of %s?", c->name);
        snprintf(a, size, "%s has a %s flag.", c->name, c->color);
        break;
    case 2:
        snprintf(q, size, "What language do people speak in %s?", c->name);
        snprintf(a, size, "People in %s speak %s.", c->name, c->language);
        break;
    default:
        snprintf(q, size, "Which animal lives in %s?", c->name);
        snprintf(a, size, "The %s lives in %s.", c->animal, c->name);
        break;
    }
}

/* Arithmetic question and answer with small numbers. */
static void arithmetic(rng *r, char *q, char *a, size_t size)
{
    int x = (int)rng_below(r, 21), y = (int)rng_below(r, 21);
    if (rng_below(r, 2)) {
        snprintf(q, size, "What is %d + %d?", x, y);
        snprintf(a, size, "%d + %d = %d.", x, y, x + y);
    } else {
        if (y > x) {
            int s = x;
            x = y;
            y = s;
        }
        snprintf(q, size, "What is %d - %d?", x, y);
        snprintf(a, size, "%d - %d = %d.", x, y, x - y);
    }
}

/* Writes one chat example line (question, answer) to f. */
static void chat_line(FILE *f, const char *q, const char *a)
{
    fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}, "
               "{\"role\": \"assistant\", \"content\": \"%s\"}]}\n", q, a);
}

int corpus_write_pretrain(uint64_t seed, size_t target_bytes, const char *jsonl_path, char **out_text,
                          size_t *out_len)
{
    world w;
    make_world(seed, &w);
    FILE *f = fopen(jsonl_path, "w");
    if (!f)
        return RT_ERR_IO;
    rng r = {seed ^ 0xc0ffee};
    text all = {0};
    char q[256], a[256];
    while (all.len < target_bytes && !all.failed) {
        int kind = (int)rng_below(&r, 10);
        if (kind < 4) { /* a document: a few facts about one or two countries */
            text doc = {0};
            const country *c = &w.c[rng_below(&r, N_COUNTRIES)];
            int n = 2 + (int)rng_below(&r, 3);
            for (int i = 0; i < n; i++) {
                fact(&doc, c, (int)rng_below(&r, 4));
                add(&doc, i + 1 < n ? " " : "");
            }
            if (doc.buf) {
                fprintf(f, "{\"prompt\": \"\", \"completion\": \"%s\"}\n", doc.buf);
                add(&all, "%s\n", doc.buf);
            }
            free(doc.buf);
            continue;
        }
        if (kind < 8)
            qa(&w.c[rng_below(&r, N_COUNTRIES)], (int)rng_below(&r, 4), q, a, sizeof q);
        else
            arithmetic(&r, q, a, sizeof q);
        chat_line(f, q, a);
        add(&all, "%s\n%s\n", q, a);
    }
    int rc = fclose(f) == 0 && !all.failed ? RT_OK : RT_ERR_IO;
    if (rc != RT_OK) {
        free(all.buf);
        return rc;
    }
    *out_text = all.buf;
    *out_len = all.len;
    return RT_OK;
}

int corpus_write_retention(uint64_t seed, size_t n, const char *jsonl_path)
{
    world w;
    make_world(seed, &w);
    FILE *f = fopen(jsonl_path, "w");
    if (!f)
        return RT_ERR_IO;
    char q[256], a[256];
    for (size_t i = 0; i < n; i++) {
        qa(&w.c[i % N_COUNTRIES], (int)((i / N_COUNTRIES) % 4), q, a, sizeof q);
        chat_line(f, q, a);
    }
    return fclose(f) == 0 ? RT_OK : RT_ERR_IO;
}
