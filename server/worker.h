/*
 * server/worker.h — (internal to server/) the job worker: one thread that
 * claims queued fine-tuning jobs from storage (oldest first) and trains them
 * with the engine, recording progress, events, checkpoints and results.
 */
#ifndef RT_SERVER_WORKER_H
#define RT_SERVER_WORKER_H

#include "engine/engine.h"
#include "storage/storage.h"

typedef struct worker worker;

typedef struct worker_config {
    storage *st;               /* borrowed; outlives the worker */
    const char *model_dir;     /* the base model directory */
    const char *device;        /* "cpu", "cuda" */
    const char *dtype;         /* the LoRA base in memory: "auto" (NULL), "f32", "bf16", "f16" */
    engine_server *engine;     /* the serving engine, or NULL: training yields to it */
    /* Called (on the worker thread) when a job produced a servable model of
     * project: kind is "adapter" or "model", dir its directory. May be NULL. */
    void (*on_model)(void *ctx, const char *project, const char *name, const char *kind,
                     const char *dir);
    void *ctx;
} worker_config;

/* Puts jobs a crash left running back in the queue (with an event each) and
 * starts the worker thread. */
int worker_start(const worker_config *cfg, worker **out);

/* Stops the worker: a running job checkpoints, goes back to the queue and
 * resumes when the server next starts. Joins the thread; accepts NULL. */
void worker_stop(worker *w);

/* One job, start to finish, on the calling thread (server/job_run.c).
 * *stopping makes it checkpoint and requeue. */
void worker_run_job(const worker_config *cfg, storage_job *job, const volatile int *stopping);

#endif
