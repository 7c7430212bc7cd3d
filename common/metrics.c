/*
 * common/metrics.c — see metrics.h. A histogram's sum is kept in
 * microseconds as an integer so that it, too, is one atomic add.
 */
#include "common/metrics.h"

#include <stdatomic.h>

static _Atomic uint64_t counters[RT_COUNTER_COUNT];
static _Atomic double gauges[RT_GAUGE_COUNT];

/* Upper bounds in seconds: time to first token spans a cached prompt to a
 * long prefill on a busy CPU; inter-token latency one decode step. */
static const double bounds[RT_HISTOGRAM_COUNT][RT_HISTOGRAM_BUCKETS] = {
    [RT_METRIC_TIME_TO_FIRST_TOKEN] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
    [RT_METRIC_INTER_TOKEN_LATENCY] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
};

static struct {
    _Atomic uint64_t buckets[RT_HISTOGRAM_BUCKETS + 1]; /* the last: above every bound */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
} histograms[RT_HISTOGRAM_COUNT];

void rt_metric_add(enum rt_counter c, uint64_t n)
{
    atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

void rt_metric_set(enum rt_gauge g, double value)
{
    atomic_store_explicit(&gauges[g], value, memory_order_relaxed);
}

void rt_metric_observe(enum rt_histogram h, double seconds)
{
    if (!(seconds >= 0))
        seconds = 0;
    int b = 0;
    while (b < RT_HISTOGRAM_BUCKETS && seconds > bounds[h][b])
        b++;
    atomic_fetch_add_explicit(&histograms[h].buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&histograms[h].count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&histograms[h].sum_us, (uint64_t)(seconds * 1e6 + 0.5), memory_order_relaxed);
}

uint64_t rt_metric_counter(enum rt_counter c)
{
    return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

double rt_metric_gauge(enum rt_gauge g)
{
    return atomic_load_explicit(&gauges[g], memory_order_relaxed);
}

void rt_metric_histogram(enum rt_histogram h, rt_histogram_view *out)
{
    out->bounds = bounds[h];
    for (int b = 0; b < RT_HISTOGRAM_BUCKETS; b++)
        out->buckets[b] = atomic_load_explicit(&histograms[h].buckets[b], memory_order_relaxed);
    out->count = atomic_load_explicit(&histograms[h].count, memory_order_relaxed);
    out->sum = (double)atomic_load_explicit(&histograms[h].sum_us, memory_order_relaxed) / 1e6;
}
