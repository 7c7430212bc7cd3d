/*
 * server/job_run.c — one fine-tuning job from claim to finish: resolve the
 * hyperparameters, train with the engine (resuming from the job's latest
 * checkpoint when there is one), record progress, metrics events,
 * checkpoints and the results CSV as it goes, then publish the result
 * (adapter or model directory, moved into place before the row says
 * "succeeded") or record why it failed, was cancelled or paused.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "common/metrics.h"
#include "server/worker.h"

#define EVENT_EVERY_SECONDS 1.0
#define PROGRESS_LOG_SECONDS 10.0  /* at most one progress line in the log this often */

typedef struct job_run {
    const worker_config *cfg;
    storage_job *job;
    const volatile int *stopping;
    char dir[2048];           /* <data>/jobs/<id> */
    char csv_path[2200];
    bool csv_failed;          /* a results-CSV write failed (said once) */
    char model_name[512];
    double last_event, last_save;
    double last_log;          /* when the last progress line was logged */
    double step_at;           /* when the previous step ended (tokens/s) */
    int64_t step_tokens;      /* tokens counted through the previous step */
    int64_t log_tokens;       /* ... through the step of the last progress line */
    bool had_valid;
    int stop_reason;          /* enum engine_stop asked of the trainer */
} job_run;

/* Appends an event to the job. */
static void event(job_run *r, const char *level, const char *type, const char *data,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void event(job_run *r, const char *level, const char *type, const char *data,
                  const char *fmt, ...)
{
    storage_event ev = {0};
    snprintf(ev.job_id, sizeof ev.job_id, "%s", r->job->id);
    snprintf(ev.level, sizeof ev.level, "%s", level);
    snprintf(ev.type, sizeof ev.type, "%s", type);
    snprintf(ev.data, sizeof ev.data, "%s", data ? data : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev.message, sizeof ev.message, fmt, ap);
    va_end(ap);
    if (storage_event_add(r->cfg->st, &ev) != RT_OK)
        rt_log(RT_LOG_WARN, "job %s: could not record an event", r->job->id);
}

/* The engine's messages (the memory estimate) as message events. */
static void on_engine_event(void *ctx, const char *message)
{
    event(ctx, "info", "message", NULL, "%s", message);
}

static void save(job_run *r)
{
    if (storage_job_update(r->cfg->st, r->job) != RT_OK)
        rt_log(RT_LOG_WARN, "job %s: could not save progress", r->job->id);
    r->last_save = rt_now_seconds();
}

/* Moves the job from running to status, saying so in the log when the
 * database refuses (the job then stays running, and the next start
 * re-queues it). A busy database is retried for a few seconds. */
static void finish_as(job_run *r, const char *status)
{
    static const char *const running[] = {"running", NULL};
    int rc = RT_ERR_BUSY;
    for (int tries = 0; rc == RT_ERR_BUSY && tries < 20; tries++) {
        if (tries) {
            struct timespec pause = {0, 250 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
        rc = storage_job_transition(r->cfg->st, r->job->id, running, status, r->job);
    }
    if (rc != RT_OK) {
        rt_log(RT_LOG_ERROR, "job %s: could not record status %s: %s", r->job->id, status,
               rt_strerror(rc));
        return;
    }
    rt_metric_add(RT_METRIC_JOB_TRANSITIONS, 1);
    rt_metric_set(RT_METRIC_TRAINING_TOKENS_PER_SECOND, 0);
    rt_log(RT_LOG_INFO, "job %s: running -> %s at step %lld/%lld (%lld tokens trained)", r->job->id, status,
           (long long)r->job->step, (long long)r->job->total_steps, (long long)r->job->trained_tokens);
}

/* Appends one line to the results CSV (kept on disk so a resumed job keeps
 * the rows of its earlier life). A failed write is said once, in the log
 * and as a job event; training goes on. */
static void csv_append(job_run *r, const engine_progress *p)
{
    FILE *f = fopen(r->csv_path, "a");
    bool ok = f != NULL;
    if (ok && ftell(f) == 0)
        ok = fprintf(f, "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n") > 0;
    if (ok)
        ok = fprintf(f, "%d,%.6f,%.6f,", p->step, p->train_loss, p->train_accuracy) > 0;
    if (ok)
        ok = (p->has_valid ? fprintf(f, "%.6f,%.6f\n", p->valid_loss, p->valid_accuracy)
                           : fprintf(f, ",\n")) > 0;
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok && !r->csv_failed) {
        r->csv_failed = true;
        rt_log(RT_LOG_WARN, "job %s: cannot write %s", r->job->id, r->csv_path);
        event(r, "warn", "message", NULL, "The results file could not be written at step %d", p->step);
    }
}

/* Drops CSV rows past `step` (a resumed job replays them). */
static void csv_truncate(job_run *r, int64_t step)
{
    FILE *f = fopen(r->csv_path, "r");
    if (!f)
        return;
    char tmp[2300], line[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->csv_path);
    FILE *out = fopen(tmp, "w");
    while (out && fgets(line, sizeof line, f))
        if (!isdigit((unsigned char)line[0]) || atoll(line) <= step)
            fputs(line, out);
    fclose(f);
    if (out && fclose(out) == 0)
        rename(tmp, r->csv_path);
}

/* ---- engine callbacks ------------------------------------------------------ */

/* "1 h 02 min", "4 min 10 s", "12 s" into buf. */
static void say_duration(double seconds, char *buf, size_t size)
{
    long s = seconds > 0 && seconds < 1e9 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(buf, size, "%ld h %02ld min", s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(buf, size, "%ld min %02ld s", s / 60, s % 60);
    else
        snprintf(buf, size, "%ld s", s);
}

/* Training tokens into the metrics, and a progress line in the log at most
 * every PROGRESS_LOG_SECONDS (and at the last step). */
static void account_step(job_run *r, const engine_progress *p, double now)
{
    int64_t fresh = p->tokens > r->step_tokens ? p->tokens - r->step_tokens : 0;
    rt_metric_add(RT_METRIC_TRAINING_TOKENS, (uint64_t)fresh);
    if (now > r->step_at)
        rt_metric_set(RT_METRIC_TRAINING_TOKENS_PER_SECOND, (double)fresh / (now - r->step_at));
    r->step_tokens = p->tokens;
    r->step_at = now;
    if (now - r->last_log < PROGRESS_LOG_SECONDS && p->step != p->total_steps)
        return;
    double rate = now > r->last_log ? (double)(p->tokens - r->log_tokens) / (now - r->last_log) : 0;
    char eta[32];
    say_duration(p->step > 0 ? p->seconds / p->step * (p->total_steps - p->step) : 0, eta, sizeof eta);
    char valid[48] = "";
    if (p->has_valid)
        snprintf(valid, sizeof valid, ", validation loss %.4f", p->valid_loss);
    rt_log(RT_LOG_INFO, "job %s: step %d/%d, loss %.4f%s, %.0f tokens/s, ETA %s", r->job->id, p->step,
           p->total_steps, p->train_loss, valid, rate, eta);
    r->last_log = now;
    r->log_tokens = p->tokens;
}

static void on_step(void *ctx, const engine_progress *p)
{
    job_run *r = ctx;
    storage_job *j = r->job;
    j->step = p->step;
    j->total_steps = p->total_steps;
    j->trained_tokens = p->tokens;
    j->trainable_params = p->trainable_params;
    j->total_params = p->total_params;
    if (p->step > 0 && p->seconds > 0)
        j->estimated_finish = rt_unix_time() +
                              (int64_t)(p->seconds / p->step * (p->total_steps - p->step));
    csv_append(r, p);
    double now = rt_now_seconds();
    account_step(r, p, now);
    bool fresh_valid = p->has_valid && !r->had_valid;
    r->had_valid = p->has_valid;
    bool last = p->step == p->total_steps;
    if (now - r->last_event >= EVENT_EVERY_SECONDS || fresh_valid || last || p->step == 1) {
        char data[1024];
        api_job_metrics_json(p, data, sizeof data);
        event(r, "info", "metrics", data, "Step %d/%d: training loss=%.4f%s", p->step,
              p->total_steps, p->train_loss, p->has_valid ? ", validation loss available" : "");
        r->last_event = now;
    }
    if (now - r->last_save >= EVENT_EVERY_SECONDS || last)
        save(r);
}

static void on_checkpoint(void *ctx, const char *dir, const engine_progress *p)
{
    job_run *r = ctx;
    storage_checkpoint ck = {0};
    snprintf(ck.job_id, sizeof ck.job_id, "%s", r->job->id);
    snprintf(ck.path, sizeof ck.path, "%s", dir);
    snprintf(ck.fine_tuned_model_checkpoint, sizeof ck.fine_tuned_model_checkpoint,
             "%s:ckpt-step-%d", r->model_name, p->step);
    api_job_metrics_json(p, ck.metrics, sizeof ck.metrics);
    ck.step = p->step;
    snprintf(r->job->checkpoint, sizeof r->job->checkpoint, "%s", dir);
    r->job->step = p->step;
    /* the row and the resume pointer together: a crash leaves both or neither */
    if (storage_checkpoint_commit(r->cfg->st, &ck, r->job) != RT_OK)
        rt_log(RT_LOG_WARN, "job %s: could not record checkpoint %s", r->job->id, dir);
    r->last_save = rt_now_seconds();
    event(r, "info", "message", NULL, "Checkpoint created at step %d", p->step);
    if (r->cfg->on_model)
        r->cfg->on_model(r->cfg->ctx, r->job->tenant, ck.fine_tuned_model_checkpoint,
                         strstr(r->job->hyperparameters, "\"full\"") ? "model" : "adapter", dir);
}

/* Serving has priority: while completion requests wait or run, the trainer
 * waits between micro-steps (at most YIELD_SECONDS each time, so training
 * still progresses under constant load). */
#define YIELD_SECONDS 0.5
static void yield_to_serving(void *ctx)
{
    const worker_config *cfg = ((job_run *)ctx)->cfg;
    if (!cfg->engine)
        return;
    double until = rt_now_seconds() + YIELD_SECONDS;
    int waiting = 0, active = 0;
    while (rt_now_seconds() < until) {
        engine_server_load(cfg->engine, &waiting, &active);
        if (!waiting && !active)
            return;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Cancel or pause from the API (the control column), or server shutdown. */
static int should_stop(void *ctx)
{
    job_run *r = ctx;
    if (*r->stopping)
        return r->stop_reason = ENGINE_STOP_PAUSE;
    storage_job now;
    if (storage_job_get(r->cfg->st, r->job->tenant, r->job->id, &now) != RT_OK)
        return ENGINE_CONTINUE;
    if (!strcmp(now.control, "cancel"))
        return r->stop_reason = ENGINE_STOP_CANCEL;
    if (!strcmp(now.control, "pause"))
        return r->stop_reason = ENGINE_STOP_PAUSE;
    return ENGINE_CONTINUE;
}

/* ---- outcomes -------------------------------------------------------------------- */

/* Marks the job failed with an error object. */
static void fail(job_run *r, const char *code, const char *param, const char *msg)
{
    storage_job *j = r->job;
    snprintf(j->error_code, sizeof j->error_code, "%s", code);
    snprintf(j->error_param, sizeof j->error_param, "%s", param ? param : "");
    snprintf(j->error_message, sizeof j->error_message, "%s", msg);
    save(r);
    finish_as(r, "failed");
    event(r, "error", "message", NULL, "%s", msg);
    rt_log(RT_LOG_WARN, "job %s failed: %s", j->id, msg);
}

/* Replaces a path prefix in msg by the file id the user knows. */
static void name_file(char *msg, size_t size, const char *path, const char *id)
{
    size_t n = strlen(path);
    if (!path[0] || strncmp(msg, path, n) != 0)
        return;
    char rest[1024];
    snprintf(rest, sizeof rest, "%s", msg + n);
    snprintf(msg, size, "%s%s", id, rest);
}

/* Stores the results CSV as a fine-tune-results file. */
static int store_results(job_run *r)
{
    FILE *f = fopen(r->csv_path, "rb");
    storage_blob *blob = NULL;
    int rc = f ? storage_blob_begin(r->cfg->st, &blob) : RT_ERR_IO;
    char buf[8192];
    size_t n;
    while (rc == RT_OK && (n = fread(buf, 1, sizeof buf, f)) > 0)
        rc = storage_blob_write(blob, buf, n);
    if (f)
        fclose(f);
    if (rc != RT_OK) {
        storage_blob_abort(blob);
        return rc;
    }
    storage_file meta = {0}, stored;
    snprintf(meta.filename, sizeof meta.filename, "step_metrics.csv");
    snprintf(meta.purpose, sizeof meta.purpose, "fine-tune-results");
    snprintf(meta.project, sizeof meta.project, "%.*s", STORAGE_PROJECT_MAX - 1, r->job->tenant);
    snprintf(meta.status, sizeof meta.status, "processed");
    rc = storage_blob_commit(blob, &meta, &stored);
    if (rc == RT_OK)
        snprintf(r->job->result_file, sizeof r->job->result_file, "%s", stored.id);
    return rc;
}

/* Records the retention losses (job fields and a metrics event). */
static void report_retention(job_run *r, const engine_train_result *res)
{
    r->job->retention_loss_before = res->retention_loss_before;
    r->job->retention_loss_after = res->retention_loss_after;
    char data[256];
    double pct = res->total_params ? 100.0 * (double)res->trainable_params / (double)res->total_params : 0.0;
    api_job_retention_json(res->retention_loss_before, res->retention_loss_after, pct, data, sizeof data);
    event(r, "info", "metrics", data, "Retention loss: %.4f before training, %.4f after (%.2f%% of parameters trained)",
          res->retention_loss_before, res->retention_loss_after, pct);
}

/* Publishes the result as adapters/<id> or models/<id>, then marks success. */
static void succeed(job_run *r, const char *out_dir, bool full)
{
    if (store_results(r) != RT_OK)
        rt_log(RT_LOG_WARN, "job %s: results CSV not stored", r->job->id);
    storage_model m = {0};
    snprintf(m.id, sizeof m.id, "%s", r->model_name);
    snprintf(m.kind, sizeof m.kind, "%s", full ? "full" : "adapter");
    snprintf(m.parent, sizeof m.parent, "%s", r->job->model);
    snprintf(m.owned_by, sizeof m.owned_by, "%s", r->job->tenant);
    snprintf(m.job_id, sizeof m.job_id, "%s", r->job->id);
    int rc = storage_model_publish(r->cfg->st, out_dir, r->job->id, true, &m);
    if (rc != RT_OK) {
        rt_log(RT_LOG_ERROR, "job %s: publishing %s: %s", r->job->id, out_dir, rt_strerror(rc));
        fail(r, "server_error", NULL, "The trained model could not be stored.");
        return;
    }
    const char *target = m.path;
    snprintf(r->job->fine_tuned_model, sizeof r->job->fine_tuned_model, "%s", r->model_name);
    r->job->estimated_finish = 0;
    save(r);
    /* announced before the job says succeeded: its first request finds it registered */
    if (r->cfg->on_model)
        r->cfg->on_model(r->cfg->ctx, r->job->tenant, r->model_name, full ? "model" : "adapter", target);
    finish_as(r, "succeeded");
    event(r, "info", "message", NULL, "New fine-tuned model created: %s", r->model_name);
    event(r, "info", "message", NULL, "The job has successfully completed");
}

/* A run that stopped early: cancelled, paused, or the server is stopping. */
static void stopped(job_run *r)
{
    save(r);
    if (r->stop_reason == ENGINE_STOP_CANCEL) {
        finish_as(r, "cancelled");
        event(r, "info", "message", NULL, "Fine-tuning job cancelled at step %lld", (long long)r->job->step);
    } else if (*r->stopping) {
        finish_as(r, "queued");
        event(r, "info", "message", NULL,
              "The server is stopping; the job will resume from its checkpoint at step %lld",
              (long long)r->job->step);
    } else {
        finish_as(r, "paused");
        event(r, "info", "message", NULL, "Job paused at step %lld (checkpoint saved)",
              (long long)r->job->step);
    }
}

/* ---- the run ----------------------------------------------------------------------- */

/* Path of a stored file of the job's project (the blob) into buf; false
 * when it is gone. */
static bool file_path(job_run *r, const char *id, char *buf, size_t size)
{
    return id[0] && storage_file_path(r->cfg->st, r->job->tenant, id, buf, size) == RT_OK &&
           access(buf, R_OK) == 0;
}

/* The checkpoint to resume from, if the job has one on disk. */
static const char *resume_point(job_run *r)
{
    struct stat sb;
    const storage_job *j = r->job;
    const char *name = strrchr(j->checkpoint, '/');
    long long step = name && !strncmp(name, "/ckpt-step-", 11) ? atoll(name + 11) : 0;
    if (step > 0 && stat(j->checkpoint, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        event(r, "info", "message", NULL, "Resuming from the checkpoint at step %lld", step);
        csv_truncate(r, step);
        return j->checkpoint;
    }
    if (j->step > 0)
        event(r, "warn", "message", NULL, "No checkpoint to resume from; restarting from the beginning");
    unlink(r->csv_path);
    return NULL;
}

/* Maps an engine failure to the job's error. */
/* The engine names the data set at fault (engine_error.field); the job
 * says it as the API names it, with the file id in place of its path. */
static void training_failed(job_run *r, int rc, engine_error *why, const char *train,
                            const char *valid, const char *retention)
{
    char *err = why->message;
    name_file(err, sizeof why->message, train, r->job->training_file);
    name_file(err, sizeof why->message, valid, r->job->validation_file);
    name_file(err, sizeof why->message, retention, r->job->retention_file);
    if (!strcmp(why->field, "valid_path"))
        fail(r, "invalid_validation_file", "validation_file", err);
    else if (!strcmp(why->field, "retention_path"))
        fail(r, "invalid_retention_file", "retention_file", err);
    else if (!strcmp(why->field, "train_path"))
        fail(r, "invalid_training_file", "training_file", err);
    else
        fail(r, "server_error", NULL, err[0] ? err : rt_strerror(rc));
}

void worker_run_job(const worker_config *cfg, storage_job *job, const volatile int *stopping)
{
    job_run r = {.cfg = cfg, .job = job, .stopping = stopping};
    char train[1024], valid[1024] = "", out_dir[2200], ck_dir[2200];
    if (storage_work_dir(cfg->st, STORAGE_WORK_JOB, job->id, r.dir, sizeof r.dir) != RT_OK) {
        fail(&r, "server_error", NULL, "The job's work folder could not be created.");
        return;
    }
    snprintf(r.csv_path, sizeof r.csv_path, "%s/results.csv", r.dir);
    snprintf(out_dir, sizeof out_dir, "%s/result", r.dir);
    snprintf(ck_dir, sizeof ck_dir, "%s/checkpoints", r.dir);
    api_job_model_name(job, r.model_name, sizeof r.model_name);
    storage_file tf;
    if (!file_path(&r, job->training_file, train, sizeof train) ||
        storage_file_get(cfg->st, job->tenant, job->training_file, &tf) != RT_OK) {
        fail(&r, "invalid_training_file", "training_file", "The training file no longer exists.");
        return;
    }
    if (job->validation_file[0] && !file_path(&r, job->validation_file, valid, sizeof valid)) {
        fail(&r, "invalid_validation_file", "validation_file", "The validation file no longer exists.");
        return;
    }
    engine_train_config tc;
    if (api_job_resolve(job, tf.n_examples, engine_model_hidden_size(cfg->model_dir), &tc) != RT_OK) {
        fail(&r, "server_error", "hyperparameters", "The job's hyperparameters could not be read.");
        return;
    }
    tc.model_dir = cfg->model_dir;
    tc.device = cfg->device;
    tc.dtype = cfg->dtype;
    tc.train_path = train;
    tc.valid_path = valid[0] ? valid : NULL;
    char retention[1100] = "";
    if (!strcmp(job->retention_file, "base"))
        snprintf(retention, sizeof retention, "%s/retention.jsonl", cfg->model_dir);
    else if (job->retention_file[0] && !file_path(&r, job->retention_file, retention, sizeof retention)) {
        fail(&r, "invalid_retention_file", "retention_file", "The retention file no longer exists.");
        return;
    }
    tc.retention_path = retention[0] ? retention : NULL;
    tc.out_dir = out_dir;
    tc.checkpoint_dir = ck_dir;
    rt_remove_tree(out_dir);
    tc.resume_dir = resume_point(&r);
    if (!tc.resume_dir)
        event(&r, "info", "message", NULL, "Fine-tuning job started");
    save(&r);
    r.step_at = r.last_log = rt_now_seconds();
    r.step_tokens = r.log_tokens = job->trained_tokens; /* a resumed job counts from its checkpoint */
    rt_log(RT_LOG_INFO, "job %s: training %s on %s, %s%lld examples%s", job->id,
           tc.method == ENGINE_FULL ? "every weight" : "a LoRA adapter", job->model,
           tc.resume_dir ? "resuming from its checkpoint, " : "", (long long)tf.n_examples,
           tc.valid_path ? ", with validation" : "");
    engine_callbacks cb = {&r, on_step, on_engine_event, on_checkpoint, should_stop, yield_to_serving};
    engine_train_result res;
    engine_error why = {0};
    int rc = engine_train(&tc, &cb, &res, &why);
    if (rc != RT_OK)
        training_failed(&r, rc, &why, train, valid, retention);
    else if (res.stopped)
        stopped(&r);
    else {
        job->trained_tokens = res.tokens;
        if (tc.retention_path)
            report_retention(&r, &res);
        succeed(&r, out_dir, tc.method == ENGINE_FULL);
    }
}
