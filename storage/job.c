/*
 * storage/job.c — fine-tuning jobs, their events and checkpoints.
 *
 * Status changes that race with the worker (cancel of a queued job vs the
 * worker claiming it) are read-then-update inside write transactions: BEGIN
 * IMMEDIATE on SQLite; on PostgreSQL the row read is locked (FOR UPDATE),
 * and a claim skips jobs another transaction holds (FOR UPDATE SKIP
 * LOCKED), so several workers never claim the same job. Exactly one side
 * wins.
 *
 * A job's project is its tenant column; a checkpoint's is its job's. Reads
 * by id or model name and lists take the caller's project (storage.h).
 */
#include "storage/row.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const row_col job_cols[] = {
    ROW_TEXT_COL(storage_job, id), ROW_TEXT_COL(storage_job, model),
    ROW_TEXT_COL(storage_job, training_file), ROW_TEXT_COL(storage_job, validation_file),
    ROW_TEXT_COL(storage_job, retention_file), ROW_TEXT_COL(storage_job, status),
    ROW_TEXT_COL(storage_job, tenant), ROW_TEXT_COL(storage_job, suffix),
    ROW_TEXT_COL(storage_job, fine_tuned_model), ROW_TEXT_COL(storage_job, error_code),
    ROW_TEXT_COL(storage_job, error_message), ROW_TEXT_COL(storage_job, error_param),
    ROW_TEXT_COL(storage_job, result_file), ROW_TEXT_COL(storage_job, control),
    ROW_TEXT_COL(storage_job, checkpoint), ROW_TEXT_COL(storage_job, metadata),
    ROW_TEXT_COL(storage_job, hyperparameters), ROW_INT_COL(storage_job, created_at),
    ROW_INT_COL(storage_job, started_at), ROW_INT_COL(storage_job, finished_at),
    ROW_INT_COL(storage_job, estimated_finish), ROW_INT_COL(storage_job, seed),
    ROW_INT_COL(storage_job, trained_tokens), ROW_INT_COL(storage_job, step),
    ROW_INT_COL(storage_job, total_steps), ROW_INT_COL(storage_job, trainable_params),
    ROW_INT_COL(storage_job, total_params), ROW_REAL_COL(storage_job, retention_loss_before),
    ROW_REAL_COL(storage_job, retention_loss_after),
};
static const row_table job_table = {"jobs", job_cols, sizeof job_cols / sizeof job_cols[0],
                                    sizeof(storage_job)};

static const row_col event_cols[] = {
    ROW_TEXT_COL(storage_event, id), ROW_TEXT_COL(storage_event, job_id),
    ROW_TEXT_COL(storage_event, level), ROW_TEXT_COL(storage_event, type),
    ROW_TEXT_COL(storage_event, message), ROW_TEXT_COL(storage_event, data),
    ROW_INT_COL(storage_event, created_at),
};
static const row_table event_table = {"job_events", event_cols,
                                      sizeof event_cols / sizeof event_cols[0], sizeof(storage_event)};

static const row_col ckpt_cols[] = {
    ROW_TEXT_COL(storage_checkpoint, id), ROW_TEXT_COL(storage_checkpoint, job_id),
    ROW_TEXT_COL(storage_checkpoint, metrics),
    ROW_TEXT_COL(storage_checkpoint, fine_tuned_model_checkpoint),
    ROW_TEXT_COL(storage_checkpoint, path), ROW_INT_COL(storage_checkpoint, step),
    ROW_INT_COL(storage_checkpoint, created_at),
};
static const row_table ckpt_table = {"job_checkpoints", ckpt_cols,
                                     sizeof ckpt_cols / sizeof ckpt_cols[0], sizeof(storage_checkpoint)};

/* This thread's connection, after checking the id argument. */
static int conn(storage *st, const char *id, storage_db **db)
{
    if (!st || (id && storage_id_check(id)))
        return RT_ERR_INVALID;
    return storage_db_get(st, db);
}

int storage_job_count_by_status(storage *st, const char *const *statuses, int64_t *counts, int n)
{
    storage_db *db;
    storage_stmt *stmt = NULL;
    int err = conn(st, NULL, &db);
    if (!err)
        err = storage_stmt_prepare(db, "SELECT status, COUNT(*) FROM jobs GROUP BY status", &stmt);
    if (err)
        return err;
    for (int i = 0; i < n; i++)
        counts[i] = 0;
    int rc;
    while ((rc = storage_stmt_step(stmt)) == STORAGE_ROW) {
        const char *status = storage_stmt_col_text(stmt, 0, NULL);
        for (int i = 0; status && i < n; i++)
            if (!strcmp(status, statuses[i]))
                counts[i] = storage_stmt_col_int(stmt, 1);
    }
    err = rc == STORAGE_DONE ? RT_OK : rc;
    storage_stmt_free(stmt);
    return err;
}

int storage_job_insert(storage *st, const storage_job *job)
{
    storage_db *db;
    int err = conn(st, job->id, &db);
    return err ? err : row_insert(db, &job_table, job);
}

/* Reads the job id of project (NULL: any) with db. */
static int job_get_in(storage_db *db, const char *project, const char *id, storage_job *out)
{
    const char *args[2] = {id, project};
    return row_get_where(db, &job_table, project ? "id = ?1 AND tenant = ?2" : "id = ?1", args,
                         project ? 2 : 1, out);
}

int storage_job_get(storage *st, const char *project, const char *id, storage_job *out)
{
    storage_db *db;
    int err = conn(st, id, &db);
    return err ? err : job_get_in(db, project, id, out);
}

/* One metadata condition: the string member ?a of the metadata object
 * equals ?b. SQLite: json_extract with the path built by job_where (a
 * non-string member is an integer or real there, never equal to text);
 * PostgreSQL: retune_json_string (migrations/postgres/0002_jobs.sql), which
 * is NULL for a non-string member or text that is no JSON object. */
static const char *meta_condition(enum storage_dialect dialect)
{
    return dialect == STORAGE_SQLITE
        ? "%sjson_extract(CASE WHEN json_valid(metadata) THEN metadata END, ?%d) = ?%d"
        : "%sretune_json_string(metadata, ?%d) = ?%d";
}

/* The WHERE condition and arguments of a job filter: tenant = ?, status =
 * ?, then one metadata condition per key (meta_condition; on SQLite the
 * path is quoted, so any key is one member name). paths holds the built
 * paths. */
static int job_where(enum storage_dialect dialect, const storage_job_filter *f, char *where,
                     size_t size, const char **args, char paths[][160], int *n_args)
{
    size_t used = 0;
    int n = 0;
    where[0] = '\0';
    if (f->project) {
        used += (size_t)snprintf(where, size, "tenant = ?%d", 3 + n);
        args[n++] = f->project;
    }
    if (f->status) {
        used += (size_t)snprintf(where + used, size - used, "%sstatus = ?%d", n ? " AND " : "", 3 + n);
        args[n++] = f->status;
    }
    for (int i = 0; i < f->n_meta; i++) {
        const char *k = f->meta_keys[i];
        if (strlen(k) > 64 || strpbrk(k, "\"\\"))
            return RT_ERR_INVALID;
        snprintf(paths[i], 160, dialect == STORAGE_SQLITE ? "$.\"%s\"" : "%s", k);
        used += (size_t)snprintf(where + used, size - used, meta_condition(dialect),
                                 n ? " AND " : "", 3 + n, 4 + n);
        args[n++] = paths[i];
        args[n++] = f->meta_values[i];
        if (used >= size)
            return RT_ERR_INVALID;
    }
    *n_args = n;
    return RT_OK;
}

int storage_job_list(storage *st, const storage_job_filter *f, const char *after, int limit,
                     storage_job **out, size_t *count, bool *has_more)
{
    static const storage_job_filter none = {0};
    char where[4096], paths[STORAGE_MAX_META_FILTERS][160];
    const char *args[2 + 2 * STORAGE_MAX_META_FILTERS];
    int n_args = 0;
    f = f ? f : &none;
    if (f->n_meta < 0 || f->n_meta > STORAGE_MAX_META_FILTERS)
        return RT_ERR_INVALID;
    storage_db *db;
    int err = conn(st, after, &db);
    if (!err)
        err = job_where(storage_db_dialect(db), f, where, sizeof where, args, paths, &n_args);
    int64_t below = INT64_MAX;
    const char *cursor[2] = {after, f->project}; /* another project's job is no cursor */
    if (!err && after)
        err = row_seq_where(db, &job_table, f->project ? "id = ?1 AND tenant = ?2" : "id = ?1",
                            cursor, f->project ? 2 : 1, &below);
    return err ? err : row_list_below(db, &job_table, n_args ? where : NULL, args, n_args, below,
                                      limit, (void **)out, count, has_more);
}

int storage_job_update(storage *st, const storage_job *job)
{
    static const char *const skip[] = {"id", "created_at", "control", NULL};
    storage_db *db;
    int err = conn(st, job->id, &db);
    return err ? err : row_update(db, &job_table, job, skip);
}

static bool is_terminal(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

/* Runs fn inside a write transaction (ROLLBACK on error). */
static int in_transaction(storage_db *db, int (*fn)(storage_db *, void *), void *arg)
{
    int err = storage_db_begin(db, STORAGE_TXN_WRITE);
    if (err)
        return err;
    err = fn(db, arg);
    if (!err)
        err = storage_db_commit(db);
    if (err)
        storage_db_rollback(db);
    return err;
}

typedef struct transition_args {
    const char *id;
    const char *const *from;
    const char *to;
    storage_job job;
} transition_args;

static int transition_fn(storage_db *db, void *p)
{
    transition_args *a = p;
    int err = row_lock(db, &job_table, "id", a->id, &a->job);
    if (err)
        return err;
    bool allowed = false;
    for (const char *const *f = a->from; *f; f++)
        allowed = allowed || strcmp(a->job.status, *f) == 0;
    if (!allowed)
        return RT_ERR_STATE;
    snprintf(a->job.status, sizeof a->job.status, "%s", a->to);
    a->job.control[0] = '\0';
    if (is_terminal(a->to))
        a->job.finished_at = rt_unix_time();
    return row_update(db, &job_table, &a->job, NULL);
}

int storage_job_transition(storage *st, const char *id, const char *const *from, const char *to,
                           storage_job *out)
{
    storage_db *db;
    int err = conn(st, id, &db);
    transition_args *a = calloc(1, sizeof *a);
    if (!err && !a)
        err = RT_ERR_NOMEM;
    if (!err) {
        a->id = id;
        a->from = from;
        a->to = to;
        err = in_transaction(db, transition_fn, a);
    }
    if (!err && out)
        *out = a->job;
    free(a);
    return err;
}

int storage_job_request(storage *st, const char *id, const char *control)
{
    storage_db *db;
    storage_stmt *stmt = NULL;
    int err = conn(st, id, &db);
    if (!err)
        err = storage_stmt_prepare(db, "UPDATE jobs SET control = ?1 WHERE id = ?2 AND status = 'running'", &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, control);
    storage_stmt_text(stmt, 2, id);
    int rc = storage_stmt_step(stmt);
    err = rc == STORAGE_DONE ? (storage_stmt_changes(stmt) ? RT_OK : RT_ERR_STATE) : rc < 0 ? rc : RT_ERR_DB;
    storage_stmt_free(stmt);
    return err;
}

/* The oldest queued job; on PostgreSQL locked, skipping any job another
 * transaction holds (another worker claiming it, or a cancel deciding). */
static const char *claim_sql(enum storage_dialect dialect)
{
    return dialect == STORAGE_SQLITE
        ? "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
        : "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED";
}

static int claim_fn(storage_db *db, void *p)
{
    storage_job *job = p;
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, claim_sql(storage_db_dialect(db)), &stmt);
    if (err)
        return err;
    char id[STORAGE_ID_MAX] = "";
    int rc = storage_stmt_step(stmt);
    const char *got = rc == STORAGE_ROW ? storage_stmt_col_text(stmt, 0, NULL) : NULL;
    snprintf(id, sizeof id, "%s", got ? got : "");
    storage_stmt_free(stmt);
    if (rc != STORAGE_ROW)
        return rc == STORAGE_DONE ? RT_ERR_NOT_FOUND : rc < 0 ? rc : RT_ERR_DB;
    err = row_get(db, &job_table, "id", id, job);
    if (err)
        return err;
    snprintf(job->status, sizeof job->status, "running");
    job->control[0] = '\0';
    if (!job->started_at)
        job->started_at = rt_unix_time();
    return row_update(db, &job_table, job, NULL);
}

int storage_job_claim(storage *st, storage_job *out)
{
    storage_db *db;
    int err = conn(st, NULL, &db);
    storage_job *job = malloc(sizeof *job);
    if (!err && !job)
        err = RT_ERR_NOMEM;
    if (!err)
        err = in_transaction(db, claim_fn, job);
    if (!err)
        *out = *job;
    free(job);
    return err;
}

int storage_job_recover(storage *st, char (*ids)[STORAGE_ID_MAX], size_t max, size_t *count)
{
    storage_db *db;
    storage_stmt *stmt = NULL;
    int err = conn(st, NULL, &db);
    if (!err)
        err = storage_stmt_prepare(db, "UPDATE jobs SET status = 'queued', control = '' "
                                       "WHERE status = 'running' RETURNING id", &stmt);
    if (err)
        return err;
    size_t n = 0;
    int rc;
    while ((rc = storage_stmt_step(stmt)) == STORAGE_ROW) {
        const char *id = storage_stmt_col_text(stmt, 0, NULL);
        if (n < max)
            snprintf(ids[n++], STORAGE_ID_MAX, "%s", id ? id : "");
    }
    err = rc == STORAGE_DONE ? RT_OK : rc;
    storage_stmt_free(stmt);
    if (!err)
        *count = n;
    return err;
}

/* ---- events and checkpoints --------------------------------------------- */

int storage_event_add(storage *st, const storage_event *ev)
{
    storage_db *db;
    int err = conn(st, ev->job_id, &db);
    if (err)
        return err;
    storage_event e = *ev;
    if (!e.id[0])
        storage_new_id("ftevent", e.id, sizeof e.id);
    if (!e.created_at)
        e.created_at = rt_unix_time();
    return row_insert(db, &event_table, &e);
}

/* A job's events past the event `cursor` of that job (NULL: from the
 * newest, or the oldest), newest or oldest first. */
static int event_list(storage *st, const char *job_id, const char *cursor, bool oldest_first, int limit,
                      storage_event **out, size_t *count, bool *has_more)
{
    storage_db *db;
    int64_t bound = oldest_first ? 0 : INT64_MAX;
    const char *args[2] = {cursor, job_id};
    int err = conn(st, job_id, &db);
    if (!err && cursor && storage_id_check(cursor))
        err = RT_ERR_INVALID;
    if (!err && cursor) /* another job's event is no cursor: it could be another project's */
        err = row_seq_where(db, &event_table, "id = ?1 AND job_id = ?2", args, 2, &bound);
    if (err)
        return err;
    return (oldest_first ? row_list_above : row_list_below)(db, &event_table, "job_id = ?3", args + 1, 1,
                                                            bound, limit, (void **)out, count, has_more);
}

int storage_event_list(storage *st, const char *job_id, const char *after, int limit,
                       storage_event **out, size_t *count, bool *has_more)
{
    return event_list(st, job_id, after, false, limit, out, count, has_more);
}

int storage_event_list_since(storage *st, const char *job_id, const char *since, int limit,
                             storage_event **out, size_t *count, bool *has_more)
{
    return event_list(st, job_id, since, true, limit, out, count, has_more);
}

int storage_checkpoint_add(storage *st, const storage_checkpoint *ck)
{
    storage_db *db;
    int err = conn(st, ck->job_id, &db);
    if (err)
        return err;
    storage_checkpoint c = *ck;
    if (!c.id[0])
        storage_new_id("ftckpt", c.id, sizeof c.id);
    if (!c.created_at)
        c.created_at = rt_unix_time();
    return row_insert(db, &ckpt_table, &c);
}

typedef struct checkpoint_args {
    storage_checkpoint ck;
    const storage_job *job;
} checkpoint_args;

static int checkpoint_fn(storage_db *db, void *p)
{
    static const char *const skip[] = {"id", "created_at", "control", NULL};
    checkpoint_args *a = p;
    int err = row_insert(db, &ckpt_table, &a->ck);
    return err ? err : row_update(db, &job_table, a->job, skip);
}

/* The checkpoint's row and the job's progress (its resume pointer) in one
 * transaction; see storage.h. */
int storage_checkpoint_commit(storage *st, const storage_checkpoint *ck, const storage_job *job)
{
    storage_db *db;
    int err = conn(st, ck->job_id, &db);
    if (!err && (!job || strcmp(job->id, ck->job_id)))
        err = RT_ERR_INVALID;
    checkpoint_args *a = err ? NULL : calloc(1, sizeof *a);
    if (!err && !a)
        err = RT_ERR_NOMEM;
    if (err)
        return err;
    a->ck = *ck;
    a->job = job;
    if (!a->ck.id[0])
        storage_new_id("ftckpt", a->ck.id, sizeof a->ck.id);
    if (!a->ck.created_at)
        a->ck.created_at = rt_unix_time();
    err = in_transaction(db, checkpoint_fn, a);
    free(a);
    return err;
}

/* Which checkpoints a list or lookup sees: of job ?n (NULL: any job) and
 * of a job of project ?n+1 (NULL: any project). Arguments bound as NULL
 * (storage_stmt_text of a NULL pointer) match everything. */
#define CKPT_SCOPE(a, b) "(?" #a " IS NULL OR job_id = ?" #a ") AND (?" #b " IS NULL OR " \
                         "job_id IN (SELECT id FROM jobs WHERE tenant = ?" #b "))"

int storage_checkpoint_list(storage *st, const char *project, const char *job_id,
                            const char *after, int limit, storage_checkpoint **out,
                            size_t *count, bool *has_more)
{
    storage_db *db;
    int64_t below = INT64_MAX;
    const char *args[3] = {after, job_id, project};
    int err = conn(st, job_id, &db);
    if (!err && after && storage_id_check(after))
        err = RT_ERR_INVALID;
    if (!err && after) /* a cursor outside the scope is unknown: it may be another project's */
        err = row_seq_where(db, &ckpt_table, "id = ?1 AND " CKPT_SCOPE(2, 3), args, 3, &below);
    return err ? err : row_list_below(db, &ckpt_table, CKPT_SCOPE(3, 4), args + 1, 2, below, limit,
                                      (void **)out, count, has_more);
}

int storage_checkpoint_find_model(storage *st, const char *project, const char *model,
                                  storage_checkpoint *out)
{
    storage_db *db;
    int err = conn(st, NULL, &db);
    const char *args[3] = {model, NULL, project};
    return err ? err : row_get_where(db, &ckpt_table, "fine_tuned_model_checkpoint = ?1 AND "
                                     CKPT_SCOPE(2, 3), args, 3, out);
}

const char *storage_data_dir(const storage *st) { return st->dir; }
