/*
 * api/metrics.c — request counts and latencies by route, method and status,
 * rendered as Prometheus text for GET /metrics. One fixed table under a
 * mutex: a handful of routes times a handful of statuses.
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

char *api_metrics_render(void)
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
    if (!ok) {
        free(buf);
        return NULL;
    }
    return buf;
}

int api_metrics(api_request *req)
{
    char *text = api_metrics_render();
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
