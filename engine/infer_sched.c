/*
 * engine/infer_sched.c — one step of the continuous-batching scheduler, on
 * the engine thread: choose every active sequence's share of the step (its
 * one decode token, or the next chunk of its prompt within the step's token
 * budget), order the segments by adapter so each adapter's rows are
 * contiguous, run one forward over all of them, then per sequence report
 * echoed prompt tokens, sample the next token, stream its text (holding
 * back what may begin a stop string) and apply the stop conditions.
 * Finished sequences free their slot at once; nobody waits for anybody.
 */
#include "engine/infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The last of the two references (caller's handle, engine) frees h. */
void infer_handle_unref(engine_handle *h)
{
    if (!h || atomic_fetch_sub(&h->refs, 1) != 1)
        return;
    for (int i = 0; i < h->n_stop; i++)
        free(h->stop[i]);
    free(h->bias);
    free(h->tokens);
    free(h);
}

/* on_done, adapter unpinned, engine reference dropped. */
static void finish_handle(engine_server *srv, engine_handle *h, const char *reason,
                          const char *error, int completion_tokens)
{
    engine_result res = {reason, h->n_prompt, completion_tokens, error};
    if (h->on_done)
        h->on_done(h->ctx, &res);
    adapter_registry_release(srv->reg, h->adapter);
    h->adapter = NULL;
    infer_handle_unref(h);
}

/* One fewer request counted active. */
static void active_done(engine_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    srv->n_active--;
    pthread_mutex_unlock(&srv->mu);
}

/* A request that never got a slot ends (queue cancel, close, no slot). */
void infer_sched_abandon(engine_server *srv, engine_handle *h, const char *reason,
                         const char *error, bool counted_active)
{
    if (counted_active)
        active_done(srv);
    finish_handle(srv, h, reason, error, 0);
}

/* Ends a sequence: its memory freed, its slot free, then on_done with the
 * completion count and error (may be NULL). */
static void seq_end(engine_server *srv, infer_seq *s, const char *reason, const char *error)
{
    engine_handle *h = s->h;
    int n_gen = s->n_gen;
    tokenizer_stream_free(s->out);
    tokenizer_stream_free(s->echo);
    free(s->text);
    free(s->seen);
    free(s->counts);
    free(s->distinct);
    json_matcher_free(s->json); /* before on_done: the grammar is borrowed until then */
    json_matcher_free(s->trial);
    infer_ctx_release(srv->ictx, (int)(s - srv->seqs));
    memset(s, 0, sizeof *s);
    active_done(srv); /* the slot is free before on_done runs */
    finish_handle(srv, h, reason, error, n_gen);
}

/* Marks token id in a repetition-penalty bitmap. */
static void mark_seen(uint8_t *seen, int32_t id)
{
    if (seen)
        seen[id >> 3] |= (uint8_t)(1u << (id & 7));
}

/* Claims a free slot for h: its decoders, RNG and penalty bitmap, and the
 * cached KV blocks of the longest prefix of its prompt already computed. */
void infer_sched_start(engine_server *srv, engine_handle *h)
{
    infer_seq *s = NULL;
    for (int i = 0; i < srv->cfg.max_batch && !s; i++)
        if (!srv->seqs[i].h)
            s = &srv->seqs[i];
    int V = srv->m->cfg.vocab_size, rc = s ? RT_OK : RT_ERR_STATE;
    if (rc == RT_OK) {
        memset(s, 0, sizeof *s);
        s->h = h;
        s->n_tokens = h->n_prompt;
        s->order = srv->next_order++;
        s->rng.state = h->seed;
        if (srv->tok)
            rc = tokenizer_stream_new(srv->tok, !h->keep_special, &s->out);
        if (rc == RT_OK && srv->tok && h->echo)
            rc = tokenizer_stream_new(srv->tok, false, &s->echo);
        if (rc == RT_OK && h->penalty != 1.0 && !(s->seen = calloc((size_t)V / 8 + 1, 1)))
            rc = RT_ERR_NOMEM;
        if (rc == RT_OK && (h->presence != 0 || h->frequency != 0) &&
            (!(s->counts = calloc((size_t)V, sizeof *s->counts)) ||
             !(s->distinct = malloc((size_t)(h->max_tokens > 0 ? h->max_tokens : 1) * sizeof *s->distinct))))
            rc = RT_ERR_NOMEM;
        if (rc == RT_OK && h->grammar)
            rc = json_matcher_new(h->grammar, &s->json);
        if (rc == RT_OK && h->grammar && h->sp.temperature <= 0)
            rc = json_matcher_new(h->grammar, &s->trial);
        for (int i = 0; rc == RT_OK && i < h->n_prompt; i++)
            mark_seen(s->seen, h->tokens[i]);
    }
    if (rc == RT_OK && !h->echo) /* echo wants every prompt row's logits */
        s->n_past = infer_ctx_attach_prefix(srv->ictx, (int)(s - srv->seqs), h->tokens,
                                            h->n_prompt,
                                            h->adapter ? adapter_entry_lora(h->adapter) : NULL);
    if (rc == RT_OK)
        return;
    if (s)
        seq_end(srv, s, "error", rt_strerror(rc));
    else
        infer_sched_abandon(srv, h, "error", "no free cache slot", true);
}

/* Ends every active sequence (the server is closing). */
void infer_sched_cancel_all(engine_server *srv)
{
    for (int i = 0; i < srv->cfg.max_batch; i++)
        if (srv->seqs[i].h)
            seq_end(srv, &srv->seqs[i], "cancelled", NULL);
}

/* ---- reporting ---------------------------------------------------------- */

/* Hands an event to on_token; a non-zero answer cancels the request. */
static void emit(infer_seq *s, const engine_token_event *ev)
{
    engine_handle *h = s->h;
    if (h->on_token && h->on_token(h->ctx, ev) != 0)
        atomic_store(&h->cancelled, true);
}

/* Fills ev's logprob and alternatives from a logits row (host), over the
 * ids that can be sampled (the model's padding is no alternative). */
static void fill_logprobs(engine_server *srv, const float *row, int32_t id, int n_top,
                          engine_token_event *ev, int32_t *top_ids, float *top_lps)
{
    int V = srv->n_sample;
    double lse = infer_logsumexp(row, V);
    ev->has_logprob = true;
    ev->logprob = (float)((double)row[id] - lse);
    if (n_top > 0)
        infer_top_logprobs(row, V, lse, n_top, top_ids, top_lps);
    ev->n_top = n_top;
    ev->top_tokens = top_ids;
    ev->top_logprobs = top_lps;
}

/* Appends n bytes to the sequence's held text. */
static int text_append(infer_seq *s, const char *t, size_t n)
{
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = (s->text_len + n + 1) * 2;
        char *p = realloc(s->text, cap);
        if (!p)
            return RT_ERR_NOMEM;
        s->text = p;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, t, n);
    s->text_len += n;
    return RT_OK;
}

/* Reports prompt token idx (echo) with its own text and its logprob from
 * row (NULL for the first token, which has none). The text is staged in
 * s->text, which the completion only uses after the prompt. */
static void echo_token(engine_server *srv, infer_seq *s, int idx, const float *row)
{
    engine_handle *h = s->h;
    int32_t id = h->tokens[idx], top_ids[ENGINE_MAX_TOP_LOGPROBS];
    float top_lps[ENGINE_MAX_TOP_LOGPROBS];
    engine_token_event ev = {"", 0, id, true, false, 0.0f, 0, NULL, NULL};
    const char *t = "";
    size_t n = 0;
    s->text_len = 0;
    if (s->echo && tokenizer_stream_push(s->echo, id, &t, &n) == RT_OK)
        text_append(s, t, n);
    if (s->echo && idx == h->n_prompt - 1 && tokenizer_stream_flush(s->echo, &t, &n) == RT_OK)
        text_append(s, t, n);
    ev.text = s->text ? s->text : "";
    ev.len = s->text_len;
    if (row)
        fill_logprobs(srv, row, id, h->top_logprobs, &ev, top_ids, top_lps);
    emit(s, &ev);
    s->text_len = 0;
}

/* Adds token id's text to the held text (flushing the decoder when final). */
static int decode_token(infer_seq *s, int32_t id, bool final)
{
    const char *t = "";
    size_t n = 0;
    int rc = s->out ? tokenizer_stream_push(s->out, id, &t, &n) : RT_OK;
    if (rc == RT_OK)
        rc = text_append(s, t, n);
    if (rc == RT_OK && final && s->out)
        rc = tokenizer_stream_flush(s->out, &t, &n);
    if (rc == RT_OK && final && s->out)
        rc = text_append(s, t, n);
    return rc;
}

/* True when id ends generation (end of turn / eos). */
static bool is_stop_id(const engine_server *srv, int32_t id)
{
    for (int i = 0; i < srv->n_stop_ids; i++)
        if (srv->stop_ids[i] == id)
            return true;
    return false;
}

/* Hands out the first n bytes of the held text with ev (a token, or -1
 * for text only: then only when there is text) and keeps the rest. */
static void release_text(infer_seq *s, engine_token_event *ev, size_t n)
{
    ev->text = s->text ? s->text : "";
    ev->len = n;
    if (ev->token >= 0 || n > 0)
        emit(s, ev);
    if (s->text) {
        memmove(s->text, s->text + n, s->text_len - n);
        s->text_len -= n;
    }
}

/* Whatever text is still held back goes out (in a text-only event), cut
 * at a stop string. */
static void release_held(infer_seq *s)
{
    engine_handle *h = s->h;
    engine_token_event ev = {"", 0, -1, false, false, 0.0f, 0, NULL, NULL};
    const char *t = "";
    size_t n = 0;
    bool match;
    if (s->out && tokenizer_stream_flush(s->out, &t, &n) == RT_OK)
        text_append(s, t, n);
    infer_stop_scan(s->text ? s->text : "", s->text_len, (const char *const *)h->stop, h->n_stop,
                    true, &n, &match);
    release_text(s, &ev, n);
}

/* The stop condition of a sampled end-of-turn/eos token: the held text
 * goes out, then on_done. */
static void stop_on_token(engine_server *srv, infer_seq *s)
{
    release_held(s);
    seq_end(srv, s, "stop", NULL);
}

/* Counts a generated token for the presence and frequency penalties. */
static void count_generated(infer_seq *s, int32_t id)
{
    if (s->counts && s->counts[id]++ == 0)
        s->distinct[s->n_distinct++] = id;
}

/* What the request asks of row before sampling: logit_bias, then OpenAI's
 * presence and frequency penalties over the tokens generated so far, then
 * the repetition penalty. */
static void adjust_logits(const infer_seq *s, float *row, int V)
{
    const engine_handle *h = s->h;
    for (int i = 0; i < h->n_bias; i++)
        row[h->bias[i].id] += h->bias[i].bias;
    for (int i = 0; i < s->n_distinct; i++) {
        int32_t id = s->distinct[i];
        row[id] -= (float)(h->presence + h->frequency * (double)s->counts[id]);
    }
    if (s->seen)
        infer_repetition_penalty(row, V, s->seen, h->penalty);
}

/* The token a constrained sequence samples from row (adjusted already):
 * greedy first tries the unconstrained argmax (when the grammar takes it,
 * it is the masked argmax too), else the disallowed logits become -inf and
 * the request's sampler picks. *id = -1 when no token may follow. */
static int sample_constrained(engine_server *srv, infer_seq *s, float *row, int32_t *id)
{
    const sample_params greedy = {0, 0, 1};
    int n = srv->n_sample, allowed = 0;
    if (s->trial) {
        int32_t best = sample_token(row, n, &greedy, &s->rng, srv->work);
        if (infer_grammar_accepts(srv, s->json, s->trial, best)) {
            atomic_fetch_add(&srv->n_unmasked, 1);
            *id = best;
            return RT_OK;
        }
    }
    double t0 = rt_now_seconds();
    int rc = infer_grammar_mask(srv, s->json, row, &allowed);
    atomic_fetch_add(&srv->mask_ns, (uint64_t)((rt_now_seconds() - t0) * 1e9));
    atomic_fetch_add(&srv->n_masks, 1);
    if (rc != RT_OK)
        return rc;
    if (allowed == 0) {
        *id = -1;
        return RT_OK;
    }
    *id = sample_token(row, n, &s->h->sp, &s->rng, srv->work);
    if (!srv->allowed[*id]) /* rounding at the end of the cumulative sum: take the best allowed */
        *id = sample_token(row, n, &greedy, &s->rng, srv->work);
    return RT_OK;
}

/* No token can follow a constrained output: a complete document whose
 * model has no stop token ends "stop"; an incomplete one (a vocabulary
 * without the bytes the grammar needs next) ends "error". */
static void end_unconstrainable(engine_server *srv, infer_seq *s)
{
    bool done = json_matcher_done(s->json);
    release_held(s);
    seq_end(srv, s, done ? "stop" : "error",
            done ? NULL : "response_format: no token of the vocabulary can continue the JSON");
}

/* The next token from row (adjusted already): the request's sampler, under
 * its grammar when it has one (whose matcher then takes the token's bytes).
 * *id = -1 when the grammar allows nothing; RT_ERR_INVALID when the token
 * does not fit (never expected: the mask allowed it). */
static int pick_token(engine_server *srv, infer_seq *s, float *row, int32_t *id)
{
    if (!s->json) {
        *id = sample_token(row, srv->n_sample, &s->h->sp, &s->rng, srv->work);
        return RT_OK;
    }
    int rc = sample_constrained(srv, s, row, id);
    if (rc == RT_OK && *id >= 0 && !is_stop_id(srv, *id))
        rc = infer_grammar_advance(srv, s->json, *id);
    return rc;
}

/* Samples the next token from row (host; the request's biases, penalties
 * and grammar modify it), streams it and applies the stop conditions.
 * Logprobs come from the raw row. */
static void sample_next(engine_server *srv, infer_seq *s, float *row)
{
    engine_handle *h = s->h;
    int V = srv->m->cfg.vocab_size;
    if (s->n_gen >= h->max_tokens) { /* max_tokens 0 with echo */
        seq_end(srv, s, "length", NULL);
        return;
    }
    int32_t top_ids[ENGINE_MAX_TOP_LOGPROBS];
    float top_lps[ENGINE_MAX_TOP_LOGPROBS];
    engine_token_event ev = {"", 0, -1, false, false, 0.0f, 0, NULL, NULL};
    float *raw = row;
    bool adjusted = s->seen || s->counts || h->n_bias || s->json;
    if (adjusted && h->logprobs) { /* keep the raw row for the logprob */
        raw = srv->work + 2 * (size_t)V;
        memcpy(raw, row, (size_t)V * sizeof *raw);
    }
    if (adjusted)
        adjust_logits(s, row, V);
    int32_t id = -1;
    int rc = pick_token(srv, s, row, &id);
    if (rc != RT_OK) {
        seq_end(srv, s, "error", rc == RT_ERR_INVALID ? "response_format: the sampled token does "
                                                        "not fit the grammar" : rt_strerror(rc));
        return;
    }
    if (id < 0) {
        end_unconstrainable(srv, s);
        return;
    }
    s->n_gen++;
    h->tokens[s->n_tokens++] = id;
    mark_seen(s->seen, id);
    count_generated(s, id);
    if (is_stop_id(srv, id)) {
        stop_on_token(srv, s);
        return;
    }
    bool final = s->n_gen >= h->max_tokens, match = false;
    size_t n = 0;
    rc = decode_token(s, id, final);
    if (rc != RT_OK) {
        seq_end(srv, s, "error", rt_strerror(rc));
        return;
    }
    infer_stop_scan(s->text ? s->text : "", s->text_len, (const char *const *)h->stop, h->n_stop,
                    final, &n, &match);
    ev.token = id;
    if (h->logprobs)
        fill_logprobs(srv, raw, id, h->top_logprobs, &ev, top_ids, top_lps);
    release_text(s, &ev, n);
    if (match || final)
        seq_end(srv, s, match ? "stop" : "length", NULL);
}

/* ---- the step ----------------------------------------------------------- */

/* Prompt rows of a chunk at positions [p0, p0+n) whose logits give the
 * logprob of the next prompt token (echo). */
static int echo_rows(const infer_seq *s, int p0, int n)
{
    if (!s->h->echo)
        return 0;
    int end = p0 + n < s->h->n_prompt - 1 ? p0 + n : s->h->n_prompt - 1;
    return end > p0 ? end - p0 : 0;
}

/* Adds the segment of s (n tokens) to the step. */
static void add_seg(engine_server *srv, int *n_segs, infer_seq *s, int n)
{
    infer_seg *g = &srv->segs[*n_segs];
    g->slot = (int)(s - srv->seqs);
    g->past = s->n_past;
    g->n = n;
    g->ad = s->h->adapter ? adapter_entry_lora(s->h->adapter) : NULL;
    srv->meta[*n_segs].s = s;
    (*n_segs)++;
}

/* Every decoding sequence gets its one token; then prompts, oldest first,
 * get chunks from what is left of the token budget. Returns the segments. */
static int plan_step(engine_server *srv)
{
    int n_segs = 0, budget = srv->cfg.max_step_tokens;
    srv->step_no++;
    for (int i = 0; i < srv->cfg.max_batch; i++) {
        infer_seq *s = &srv->seqs[i];
        if (s->h && s->n_tokens - s->n_past == 1) {
            add_seg(srv, &n_segs, s, 1);
            budget--;
        }
    }
    while (budget > 0) {
        infer_seq *oldest = NULL;
        for (int i = 0; i < srv->cfg.max_batch; i++) {
            infer_seq *s = &srv->seqs[i];
            if (s->h && s->planned != srv->step_no && s->n_tokens - s->n_past > 1 &&
                (!oldest || s->order < oldest->order))
                oldest = s;
        }
        if (!oldest)
            break;
        int left = oldest->n_tokens - oldest->n_past, n = left < budget ? left : budget;
        oldest->planned = srv->step_no;
        add_seg(srv, &n_segs, oldest, n);
        budget -= n;
    }
    return n_segs;
}

/* Sort key of a segment: its adapter (base first), then admission order. */
static int seg_cmp(const infer_step_seg *a, const infer_step_seg *b)
{
    uintptr_t x = (uintptr_t)a->s->h->adapter, y = (uintptr_t)b->s->h->adapter;
    if (x != y)
        return x < y ? -1 : 1;
    return a->s->order < b->s->order ? -1 : a->s->order > b->s->order;
}

/* Orders the segments by adapter (insertion sort: at most max_batch), so
 * each adapter's rows are contiguous, and rebuilds the infer_seg array. */
static void order_by_adapter(engine_server *srv, int n_segs)
{
    for (int i = 1; i < n_segs; i++) {
        infer_step_seg m = srv->meta[i];
        infer_seg g = srv->segs[i];
        int j = i;
        for (; j > 0 && seg_cmp(&m, &srv->meta[j - 1]) < 0; j--) {
            srv->meta[j] = srv->meta[j - 1];
            srv->segs[j] = srv->segs[j - 1];
        }
        srv->meta[j] = m;
        srv->segs[j] = g;
    }
}

/* Updates the statistics with this step's number of adapter groups. */
static void count_groups(engine_server *srv, int n_segs)
{
    int groups = 1;
    for (int i = 1; i < n_segs; i++)
        groups += srv->meta[i].s->h->adapter != srv->meta[i - 1].s->h->adapter;
    if (groups > atomic_load(&srv->max_groups))
        atomic_store(&srv->max_groups, groups);
    atomic_fetch_add(&srv->n_steps, 1);
}

/* Fills the step's ids and the rows whose logits are wanted (echo rows and
 * the row that picks each sequence's next token). Returns the token count. */
static int layout_rows(engine_server *srv, int n_segs, int *n_logits)
{
    int row = 0, nl = 0;
    for (int i = 0; i < n_segs; i++) {
        infer_step_seg *m = &srv->meta[i];
        const infer_seg *g = &srv->segs[i];
        memcpy(srv->step_ids + row, m->s->h->tokens + g->past, (size_t)g->n * sizeof(int32_t));
        m->first_logit = nl;
        m->n_echo = echo_rows(m->s, g->past, g->n);
        for (int j = 0; j < m->n_echo; j++)
            srv->logit_rows[nl++] = row + j;
        m->sample = g->past + g->n == m->s->n_tokens;
        if (m->sample)
            srv->logit_rows[nl++] = row + g->n - 1;
        row += g->n;
    }
    *n_logits = nl;
    return row;
}

/* After the forward: the sequence's chunk is cached; report echo rows,
 * then sample when its last row was wanted. */
static void seg_done(engine_server *srv, const infer_step_seg *m, const infer_seg *g)
{
    infer_seq *s = m->s;
    size_t V = (size_t)srv->m->cfg.vocab_size;
    s->n_past += g->n;
    if (s->h->echo && g->past == 0)
        echo_token(srv, s, 0, NULL);
    for (int j = 0; j < m->n_echo; j++)
        echo_token(srv, s, g->past + j + 1, srv->logits + (size_t)(m->first_logit + j) * V);
    if (atomic_load(&s->h->cancelled))
        seq_end(srv, s, "cancelled", NULL);
    else if (m->sample)
        sample_next(srv, s, srv->logits + (size_t)(m->first_logit + m->n_echo) * V);
}

/* Ends every sequence whose request was cancelled. */
static void drop_cancelled(engine_server *srv)
{
    for (int i = 0; i < srv->cfg.max_batch; i++) {
        infer_seq *s = &srv->seqs[i];
        if (s->h && atomic_load(&s->h->cancelled))
            seq_end(srv, s, "cancelled", NULL);
    }
}

/* One scheduler step; see engine/infer.h. */
void infer_sched_step(engine_server *srv)
{
    drop_cancelled(srv);
    int n_segs = plan_step(srv), n_logits = 0;
    if (n_segs == 0)
        return;
    order_by_adapter(srv, n_segs);
    count_groups(srv, n_segs);
    int n_tokens = layout_rows(srv, n_segs, &n_logits);
    infer_step st = {srv->step_ids, n_tokens, srv->segs, n_segs, srv->logit_rows, n_logits};
    int rc = infer_forward(srv->ictx, &st, srv->logits);
    for (int i = 0; i < n_segs; i++) {
        if (rc != RT_OK) {
            char msg[128];
            snprintf(msg, sizeof msg, "forward pass failed: %s", rt_strerror(rc));
            seq_end(srv, srv->meta[i].s, "error", msg);
        } else {
            seg_done(srv, &srv->meta[i], &srv->segs[i]);
        }
    }
    drop_cancelled(srv);
}
