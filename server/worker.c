/*
 * server/worker.c — the job worker thread: crash recovery at start, then a
 * loop that claims the oldest queued job (one SQL transaction) and runs it.
 */
#include "server/worker.h"
#include "common/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct worker {
    worker_config cfg;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    volatile int stopping;
};

/* Sleeps up to ms, or until worker_stop. */
static void idle(worker *w, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&w->lock);
    if (!w->stopping)
        pthread_cond_timedwait(&w->wake, &w->lock, &until);
    pthread_mutex_unlock(&w->lock);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    storage_job *job = malloc(sizeof *job);
    double last_expiry = 0;
    while (job && !w->stopping) {
        if (rt_now_seconds() - last_expiry >= 60) { /* files past expires_after, once a minute */
            storage_file_expire(w->cfg.st);
            last_expiry = rt_now_seconds();
        }
        int rc = storage_job_claim(w->cfg.st, job);
        if (rc == RT_ERR_NOT_FOUND) {
            idle(w, 200);
            continue;
        }
        if (rc != RT_OK) {
            rt_log(RT_LOG_ERROR, "worker: cannot claim a job: %s", rt_strerror(rc));
            idle(w, 1000);
            continue;
        }
        rt_metric_add(RT_METRIC_JOB_TRANSITIONS, 1);
        rt_log(RT_LOG_INFO, "job %s: queued -> running", job->id);
        worker_run_job(&w->cfg, job, &w->stopping);
    }
    free(job);
    return NULL;
}

/* Requeues jobs that were running when the server died. */
static void recover(storage *st)
{
    char ids[64][STORAGE_ID_MAX];
    size_t n = 0;
    if (storage_job_recover(st, ids, 64, &n) != RT_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        storage_event ev = {0};
        snprintf(ev.job_id, sizeof ev.job_id, "%s", ids[i]);
        snprintf(ev.level, sizeof ev.level, "warn");
        snprintf(ev.type, sizeof ev.type, "message");
        snprintf(ev.message, sizeof ev.message,
                 "The server stopped while this job was running; it is queued again");
        storage_event_add(st, &ev);
        rt_log(RT_LOG_WARN, "worker: %s was running at the last stop; requeued", ids[i]);
    }
}

int worker_start(const worker_config *cfg, worker **out)
{
    worker *w = calloc(1, sizeof *w);
    if (!w)
        return RT_ERR_NOMEM;
    w->cfg = *cfg;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    recover(cfg->st);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->wake);
        free(w);
        return RT_ERR_NOMEM;
    }
    *out = w;
    return RT_OK;
}

void worker_stop(worker *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    free(w);
}
