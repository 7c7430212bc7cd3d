/*
 * engine/infer_grammar.c — the serving side of constrained decoding
 * (OpenAI's response_format): compiling a request's schema, the served
 * model's vocabulary as the grammar matcher walks it (built once, by the
 * first request that needs it), and per sampled token the mask that keeps
 * a sequence's output a prefix of a valid document, then the matcher's
 * step over the chosen token's bytes.
 *
 * Token bytes are the tokenizer's raw bytes of each id as streamed output
 * decodes them (tokenizer_token_bytes, special tokens skipped: they get no
 * bytes and the grammar never allows them). The end-of-turn / eos ids are
 * allowed exactly when the document is complete.
 */
#include "engine/infer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int engine_grammar_compile(const struct cJSON *schema, json_grammar **out, char *err,
                           size_t errsize)
{
    return json_grammar_compile(schema, out, err, errsize);
}

void engine_grammar_free(json_grammar *g) { json_grammar_free(g); }

/* ---- the vocabulary ------------------------------------------------------- */

/* Every sampleable token's bytes, concatenated into *bytes with token i at
 * [off[i], off[i+1]). The caller frees both. */
static int collect_token_bytes(const engine_server *srv, char **bytes, size_t **off)
{
    int V = srv->n_sample;
    size_t cap = tokenizer_max_token_bytes(srv->tok), size = 0, grow = (size_t)V * 8 + cap;
    char *buf = malloc(grow);
    size_t *o = malloc(((size_t)V + 1) * sizeof *o);
    int rc = buf && o ? RT_OK : RT_ERR_NOMEM;
    for (int i = 0; rc == RT_OK && i < V; i++) {
        if (size + cap > grow) {
            char *nb = realloc(buf, grow * 2 + cap);
            if (!nb) {
                rc = RT_ERR_NOMEM;
                break;
            }
            buf = nb;
            grow = grow * 2 + cap;
        }
        size_t len = 0;
        o[i] = size;
        if (tokenizer_token_bytes(srv->tok, i, true, false, buf + size, cap, &len) == RT_OK)
            size += len; /* an id the tokenizer cannot decode gets no bytes: never allowed */
    }
    if (rc != RT_OK) {
        free(buf);
        free(o);
        return rc;
    }
    o[V] = size;
    *bytes = buf;
    *off = o;
    return RT_OK;
}

/* Builds the trie from the collected bytes into srv (caller holds vocab_mu). */
static int build_vocab(engine_server *srv)
{
    int V = srv->n_sample, rc;
    char *bytes = NULL;
    size_t *off = NULL;
    if ((rc = collect_token_bytes(srv, &bytes, &off)) != RT_OK)
        return rc;
    const char **ptrs = malloc((size_t)V * sizeof *ptrs);
    size_t *lens = malloc((size_t)V * sizeof *lens);
    json_vocab *v = NULL;
    rc = ptrs && lens ? RT_OK : RT_ERR_NOMEM;
    for (int i = 0; rc == RT_OK && i < V; i++) {
        ptrs[i] = bytes + off[i];
        lens[i] = off[i + 1] - off[i];
    }
    if (rc == RT_OK)
        rc = json_vocab_new(ptrs, lens, V, &v);
    free(ptrs);
    free(lens);
    if (rc != RT_OK) {
        free(bytes);
        free(off);
        return rc;
    }
    srv->vocab_bytes = bytes;
    srv->vocab_off = off;
    srv->vocab = v;
    return RT_OK;
}

int infer_grammar_vocab(engine_server *srv)
{
    if (!srv->tok)
        return RT_ERR_UNSUPPORTED;
    pthread_mutex_lock(&srv->vocab_mu);
    int rc = srv->vocab ? RT_OK : build_vocab(srv);
    pthread_mutex_unlock(&srv->vocab_mu);
    return rc;
}

void infer_grammar_vocab_free(engine_server *srv)
{
    json_vocab_free(srv->vocab);
    free(srv->vocab_bytes);
    free(srv->vocab_off);
    srv->vocab = NULL;
    srv->vocab_bytes = NULL;
    srv->vocab_off = NULL;
}

/* ---- per token -------------------------------------------------------------- */

/* True when id ends generation (end of turn / eos). */
static bool stop_id(const engine_server *srv, int32_t id)
{
    for (int i = 0; i < srv->n_stop_ids; i++)
        if (srv->stop_ids[i] == id)
            return true;
    return false;
}

/* srv->allowed: the grammar's mask, or only the stop ids once m is done. */
static int fill_mask(engine_server *srv, const json_matcher *m)
{
    int V = srv->n_sample;
    uint8_t *ok = srv->allowed;
    bool done = json_matcher_done(m);
    if (done) {
        memset(ok, 0, (size_t)V);
    } else {
        int rc = json_matcher_mask(m, srv->vocab, ok);
        if (rc != RT_OK)
            return rc;
    }
    for (int i = 0; i < srv->n_stop_ids; i++) /* a stop id ends the output: only when complete */
        if (srv->stop_ids[i] < V)
            ok[srv->stop_ids[i]] = done;
    return RT_OK;
}

int infer_grammar_mask(engine_server *srv, const json_matcher *m, float *row, int *n_allowed)
{
    int rc = fill_mask(srv, m), n = 0;
    if (rc != RT_OK)
        return rc;
    const uint8_t *ok = srv->allowed;
    for (int i = 0; i < srv->n_sample; i++) {
        if (ok[i])
            n++;
        else
            row[i] = -INFINITY;
    }
    *n_allowed = n;
    return RT_OK;
}

/* Token id's bytes in the vocabulary's own copy. */
static const char *token_bytes(const engine_server *srv, int32_t id, size_t *len)
{
    *len = srv->vocab_off[id + 1] - srv->vocab_off[id];
    return srv->vocab_bytes + srv->vocab_off[id];
}

int infer_grammar_advance(const engine_server *srv, json_matcher *m, int32_t id)
{
    if (id < 0 || id >= srv->n_sample)
        return RT_ERR_INVALID;
    size_t len;
    const char *b = token_bytes(srv, id, &len);
    return json_matcher_advance(m, b, len);
}

bool infer_grammar_accepts(const engine_server *srv, const json_matcher *m, json_matcher *trial,
                           int32_t id)
{
    if (id < 0 || id >= srv->n_sample)
        return false;
    if (stop_id(srv, id) || json_matcher_done(m))
        return stop_id(srv, id) && json_matcher_done(m);
    size_t len;
    const char *b = token_bytes(srv, id, &len);
    return len > 0 && json_matcher_copy(trial, m) == RT_OK &&
           json_matcher_advance(trial, b, len) == RT_OK;
}
