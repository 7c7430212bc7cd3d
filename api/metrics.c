/*
 * api/metrics.c — GET /metrics in Prometheus' text format: request counts
 * and latencies by route, method and status (one fixed table under a
 * mutex: a handful of routes times a handful of statuses), then jobs by
 * status, training and generated tokens, token latencies, the engine's
 * queue, KV-cache slots and adapters (common/metrics.h and the engine,
 * read when rendered).
 */
#include "api/api_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_MAX_SERIES 256

static const double bucket_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_BUCKETS (sizeof bucket_bounds / sizeof bucket_bounds[0])

typedef struct series {
    const char *route;   /* static strings from the route table */
    char method[8];
    int status;
    uint64_t count;
    double seconds_sum;
    uint64_t buckets[N_BUCKETS]; /* cumulative counts are derived when rendering */
} series;

static series g_series[METRICS_MAX_SERIES];
static size_t g_n_series;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* Finds or adds the series; NULL when the table is full. Lock held. */
static series *series_for(const char *route, const char *method, int status)
{
    for (size_t i = 0; i < g_n_series; i++) {
        series *s = &g_series[i];
        if (s->status == status && strcmp(s->route, route) == 0 &&
            strcmp(s->method, method) == 0)
            return s;
    }
    if (g_n_series == METRICS_MAX_SERIES)
        return NULL;
    series *s = &g_series[g_n_series++];
    s->route = route;
    snprintf(s->method, sizeof s->method, "%s", method);
    s->status = status;
    return s;
}

void api_metrics_observe(const char *route, const char *method, int status, double seconds)
{
    pthread_mutex_lock(&g_lock);
    series *s = series_for(route, method, status);
    if (s) {
        s->count++;
        s->seconds_sum += seconds;
        for (size_t b = 0; b < N_BUCKETS; b++)
            if (seconds <= bucket_bounds[b]) {
                s->buckets[b]++;
                break;
            }
    }
    pthread_mutex_unlock(&g_lock);
}

/* Appends formatted text to a growing buffer; false on allocation failure. */
static bool append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return false;
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return true;
        }
        size_t ncap = *cap * 2 + (size_t)n;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
}

/* Writes a series' labels into lab. */
static void series_labels(const series *s, char *lab, size_t size)
{
    snprintf(lab, size, "route=\"%s\",method=\"%s\",status=\"%d\"", s->route, s->method,
             s->status);
}

/* Renders one series' request counter. */
static bool render_count(const series *s, char **buf, size_t *len, size_t *cap)
{
    char lab[160];
    series_labels(s, lab, sizeof lab);
    return append(buf, len, cap, "retune_http_requests_total{%s} %llu\n", lab,
                  (unsigned long long)s->count);
}

/* Renders one series' latency histogram: cumulative buckets, sum, count. */
static bool render_histogram(const series *s, char **buf, size_t *len, size_t *cap)
{
    char lab[160];
    series_labels(s, lab, sizeof lab);
    bool ok = true;
    uint64_t cumulative = 0;
    for (size_t b = 0; ok && b < N_BUCKETS; b++) {
        cumulative += s->buckets[b];
        ok = append(buf, len, cap, "retune_http_request_duration_seconds_bucket{%s,le=\"%g\"} %llu\n",
                    lab, bucket_bounds[b], (unsigned long long)cumulative);
    }
    return ok &&
           append(buf, len, cap, "retune_http_request_duration_seconds_bucket{%s,le=\"+Inf\"} %llu\n",
                  lab, (unsigned long long)s->count) &&
           append(buf, len, cap, "retune_http_request_duration_seconds_sum{%s} %.6f\n", lab,
                  s->seconds_sum) &&
           append(buf, len, cap, "retune_http_request_duration_seconds_count{%s} %llu\n", lab,
                  (unsigned long long)s->count);
}

/* "# HELP" and "# TYPE" of one metric. */
static bool head(char **buf, size_t *len, size_t *cap, const char *name, const char *type, const char *help)
{
    return append(buf, len, cap, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static bool render_histogram_metric(enum rt_histogram h, const char *name, const char *help, char **buf,
                                    size_t *len, size_t *cap)
{
    rt_histogram_view v;
    rt_metric_histogram(h, &v);
    bool ok = head(buf, len, cap, name, "histogram", help);
    uint64_t cumulative = 0;
    for (int b = 0; ok && b < RT_HISTOGRAM_BUCKETS; b++) {
        cumulative += v.buckets[b];
        ok = append(buf, len, cap, "%s_bucket{le=\"%g\"} %llu\n", name, v.bounds[b],
                    (unsigned long long)cumulative);
    }
    return ok && append(buf, len, cap, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                        (unsigned long long)v.count, name, v.sum, name, (unsigned long long)v.count);
}

static bool render_counter(enum rt_counter c, const char *name, const char *help, char **buf, size_t *len,
                           size_t *cap)
{
    return head(buf, len, cap, name, "counter", help) &&
           append(buf, len, cap, "%s %llu\n", name, (unsigned long long)rt_metric_counter(c));
}

static bool render_gauge(const char *name, const char *help, double value, char **buf, size_t *len,
                         size_t *cap)
{
    return head(buf, len, cap, name, "gauge", help) && append(buf, len, cap, "%s %.17g\n", name, value);
}

/* Jobs by status, from the database (every project). */
static bool render_jobs(api_server *srv, char **buf, size_t *len, size_t *cap)
{
    static const char *const statuses[] = {"validating_files", "queued", "running", "paused",
                                           "succeeded", "failed", "cancelled"};
    enum { N = sizeof statuses / sizeof statuses[0] };
    int64_t counts[N];
    if (!srv || storage_job_count_by_status(srv->st, statuses, counts, N) != RT_OK)
        return true; /* the database is busy: this scrape goes without */
    bool ok = head(buf, len, cap, "retune_jobs", "gauge", "Fine-tuning jobs by status.");
    for (int i = 0; ok && i < N; i++)
        ok = append(buf, len, cap, "retune_jobs{status=\"%s\"} %lld\n", statuses[i], (long long)counts[i]);
    return ok;
}

/* The base model's engine: its queue, KV-cache slots and adapters. */
static bool render_engine(api_server *srv, char **buf, size_t *len, size_t *cap)
{
    if (!srv || !srv->engine)
        return true;
    int waiting = 0, active = 0, resident = 0;
    size_t adapter_bytes = 0;
    engine_server_info info;
    engine_server_load(srv->engine, &waiting, &active);
    engine_server_info_get(srv->engine, &info);
    engine_adapter_usage(srv->engine, &adapter_bytes, &resident);
    return render_gauge("retune_request_queue_depth", "Completion requests waiting for a decoding slot.",
                        waiting, buf, len, cap) &&
           render_gauge("retune_kv_cache_slots_used", "KV-cache slots (sequences) decoding now.", active, buf,
                        len, cap) &&
           render_gauge("retune_kv_cache_slots", "KV-cache slots (--max-batch).", info.max_batch, buf, len,
                        cap) &&
           render_gauge("retune_adapters_resident", "LoRA adapters whose weights are in memory.", resident,
                        buf, len, cap) &&
           render_gauge("retune_adapter_resident_bytes", "Bytes of LoRA adapter weights in memory.",
                        (double)adapter_bytes, buf, len, cap);
}

/* Jobs, tokens, latencies and the engine: everything but the HTTP table. */
static bool render_service(api_server *srv, char **buf, size_t *len, size_t *cap)
{
    return render_jobs(srv, buf, len, cap) &&
           render_counter(RT_METRIC_JOB_TRANSITIONS, "retune_job_transitions_total",
                          "Job status changes made by the training worker.", buf, len, cap) &&
           render_counter(RT_METRIC_TRAINING_TOKENS, "retune_training_tokens_total",
                          "Tokens through training forward passes.", buf, len, cap) &&
           render_gauge("retune_training_tokens_per_second", "Training throughput of the running job (0: none).",
                        rt_metric_gauge(RT_METRIC_TRAINING_TOKENS_PER_SECOND), buf, len, cap) &&
           render_counter(RT_METRIC_PREFIX_CACHE_TOKENS, "retune_prefix_cache_hit_tokens_total",
                          "Prompt tokens whose keys and values were reused from the prefix cache.",
                          buf, len, cap) &&
           render_counter(RT_METRIC_GENERATED_TOKENS, "retune_generated_tokens_total",
                          "Tokens sampled for completions.", buf, len, cap) &&
           render_histogram_metric(RT_METRIC_TIME_TO_FIRST_TOKEN, "retune_time_to_first_token_seconds",
                                   "From a completion's submission to its first sampled token.", buf, len,
                                   cap) &&
           render_histogram_metric(RT_METRIC_INTER_TOKEN_LATENCY, "retune_inter_token_latency_seconds",
                                   "Between two sampled tokens of one choice.", buf, len, cap) &&
           render_counter(RT_METRIC_ADAPTER_LOADS, "retune_adapter_loads_total",
                          "LoRA adapter weights read into memory (first use, or after eviction).", buf, len,
                          cap) &&
           render_engine(srv, buf, len, cap);
}

char *api_metrics_render(api_server *srv)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[0] = '\0';
    pthread_mutex_lock(&g_lock);
    bool ok = append(&buf, &len, &cap,
                     "# HELP retune_http_requests_total HTTP requests by route, method and status.\n"
                     "# TYPE retune_http_requests_total counter\n");
    for (size_t i = 0; ok && i < g_n_series; i++)
        ok = render_count(&g_series[i], &buf, &len, &cap);
    ok = ok && append(&buf, &len, &cap,
                      "# HELP retune_http_request_duration_seconds HTTP request latency.\n"
                      "# TYPE retune_http_request_duration_seconds histogram\n");
    for (size_t i = 0; ok && i < g_n_series; i++)
        ok = render_histogram(&g_series[i], &buf, &len, &cap);
    pthread_mutex_unlock(&g_lock);
    ok = ok && render_service(srv, &buf, &len, &cap);
    if (!ok) {
        free(buf);
        return NULL;
    }
    return buf;
}

int api_metrics(api_request *req)
{
    char *text = api_metrics_render(req->srv);
    if (!text)
        return RT_ERR_NOMEM;
    int rc = api_respond_text(req, 200, "text/plain; version=0.0.4", text, strlen(text));
    free(text);
    return rc;
}

int api_health(api_request *req)
{
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "status", "ok");
    return api_respond_json(req, 200, json);
}
