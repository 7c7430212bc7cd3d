/*
 * common/metrics.h — the process's own counters, gauges and latency
 * histograms, updated from wherever the thing happens (the trainer's
 * worker, the engine, the HTTP layer) and rendered by api/metrics.c for
 * GET /metrics. Lock-free: relaxed atomics, read whole at render time.
 */
#ifndef RETUNE_COMMON_METRICS_H
#define RETUNE_COMMON_METRICS_H

#include <stdint.h>

enum rt_counter {
    RT_METRIC_TRAINING_TOKENS,   /* tokens through training forward passes */
    RT_METRIC_GENERATED_TOKENS,  /* tokens sampled for completions */
    RT_METRIC_ADAPTER_LOADS,     /* adapter weights read into memory */
    RT_METRIC_JOB_TRANSITIONS,   /* job status changes the worker made */
    RT_METRIC_PREFIX_CACHE_TOKENS, /* prompt tokens whose KV rows came from the prefix cache */
    RT_COUNTER_COUNT
};

enum rt_gauge {
    RT_METRIC_TRAINING_TOKENS_PER_SECOND, /* of the running job's last steps; 0 when none runs */
    RT_GAUGE_COUNT
};

enum rt_histogram {
    RT_METRIC_TIME_TO_FIRST_TOKEN, /* request accepted to its first token, seconds */
    RT_METRIC_INTER_TOKEN_LATENCY, /* between two tokens of one choice, seconds */
    RT_HISTOGRAM_COUNT
};

#define RT_HISTOGRAM_BUCKETS 12

void rt_metric_add(enum rt_counter c, uint64_t n);
void rt_metric_set(enum rt_gauge g, double value);
void rt_metric_observe(enum rt_histogram h, double seconds);

uint64_t rt_metric_counter(enum rt_counter c);
double rt_metric_gauge(enum rt_gauge g);

/* A histogram as read now: bucket upper bounds (seconds), per-bucket (not
 * cumulative) counts, the count of all observations and their sum. */
typedef struct rt_histogram_view {
    const double *bounds;
    uint64_t buckets[RT_HISTOGRAM_BUCKETS];
    uint64_t count;
    double sum;
} rt_histogram_view;

void rt_metric_histogram(enum rt_histogram h, rt_histogram_view *out);

#endif
