/*
 * tests/test_storage_jobs.c — jobs, events and checkpoints in storage:
 * FIFO claims, guarded status transitions, control requests, crash
 * recovery, newest-first pagination of events and checkpoints, and
 * projects (another project's job and checkpoints are unknown). SQLite by
 * default; RETUNE_TEST_DATABASE names a PostgreSQL database to run them
 * against instead (tests/test_db.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "storage/storage.h"
#include "tests/test.h"
#include "tests/test_db.h"

static storage_job make_job(const char *id, const char *status)
{
    storage_job j;
    memset(&j, 0, sizeof j);
    snprintf(j.id, sizeof j.id, "%s", id);
    snprintf(j.model, sizeof j.model, "tiny");
    snprintf(j.training_file, sizeof j.training_file, "file-1");
    snprintf(j.status, sizeof j.status, "%s", status);
    snprintf(j.tenant, sizeof j.tenant, "retune");
    snprintf(j.hyperparameters, sizeof j.hyperparameters, "{\"n_epochs\":\"auto\"}");
    j.created_at = 100;
    return j;
}

static void test_claim_and_transitions(storage *st)
{
    static const char *const queued[] = {"queued", NULL};
    static const char *const cancellable[] = {"queued", "paused", NULL};
    storage_job a = make_job("ftjob-a", "queued"), b = make_job("ftjob-b", "queued"), got;
    CHECK(storage_job_insert(st, &a) == RT_OK);
    CHECK(storage_job_insert(st, &b) == RT_OK);
    CHECK(storage_job_insert(st, &a) != RT_OK); /* ids are unique */
    CHECK(storage_job_claim(st, &got) == RT_OK);
    CHECK_EQ_STR(got.id, "ftjob-a"); /* oldest first */
    CHECK_EQ_STR(got.status, "running");
    CHECK(got.started_at > 0);
    CHECK(storage_job_transition(st, "ftjob-a", cancellable, "cancelled", NULL) == RT_ERR_STATE);
    CHECK(storage_job_request(st, "ftjob-a", "cancel") == RT_OK);
    CHECK(storage_job_get(st, NULL, "ftjob-a", &got) == RT_OK);
    CHECK_EQ_STR(got.control, "cancel");
    CHECK(storage_job_request(st, "ftjob-b", "pause") == RT_ERR_STATE); /* not running */
    CHECK(storage_job_transition(st, "ftjob-b", queued, "cancelled", &got) == RT_OK);
    CHECK_EQ_STR(got.status, "cancelled");
    CHECK(got.finished_at > 0);
    CHECK(storage_job_claim(st, &got) == RT_ERR_NOT_FOUND); /* b was cancelled, not claimable */
    /* The worker's update keeps the API's control request. */
    CHECK(storage_job_get(st, NULL, "ftjob-a", &got) == RT_OK);
    got.step = 5;
    got.control[0] = '\0';
    CHECK(storage_job_update(st, &got) == RT_OK);
    CHECK(storage_job_get(st, NULL, "ftjob-a", &got) == RT_OK);
    CHECK_EQ_STR(got.control, "cancel");
    CHECK_EQ_INT(got.step, 5);
    char ids[4][STORAGE_ID_MAX];
    size_t n = 0;
    CHECK(storage_job_recover(st, ids, 4, &n) == RT_OK);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(ids[0], "ftjob-a");
    CHECK(storage_job_get(st, NULL, "ftjob-a", &got) == RT_OK);
    CHECK_EQ_STR(got.status, "queued");
    CHECK_EQ_STR(got.control, "");
    CHECK(storage_job_get(st, NULL, "ftjob-zzz", &got) == RT_ERR_NOT_FOUND);
}

static void test_lists(storage *st)
{
    for (int i = 0; i < 5; i++) {
        storage_event ev = {0};
        snprintf(ev.job_id, sizeof ev.job_id, "ftjob-a");
        snprintf(ev.level, sizeof ev.level, "info");
        snprintf(ev.type, sizeof ev.type, "message");
        snprintf(ev.message, sizeof ev.message, "event %d", i);
        CHECK(storage_event_add(st, &ev) == RT_OK);
    }
    storage_event *evs = NULL;
    size_t n = 0;
    bool more = false;
    CHECK(storage_event_list(st, "ftjob-a", NULL, 2, &evs, &n, &more) == RT_OK);
    CHECK(n == 2 && more);
    CHECK_EQ_STR(evs[0].message, "event 4");
    char after[STORAGE_ID_MAX];
    snprintf(after, sizeof after, "%s", evs[1].id);
    free(evs);
    CHECK(storage_event_list(st, "ftjob-a", after, 10, &evs, &n, &more) == RT_OK);
    CHECK(n == 3 && !more);
    CHECK_EQ_STR(evs[0].message, "event 2");
    free(evs);
    storage_checkpoint ck = {0};
    snprintf(ck.job_id, sizeof ck.job_id, "ftjob-a");
    snprintf(ck.fine_tuned_model_checkpoint, sizeof ck.fine_tuned_model_checkpoint, "ft:x:ckpt-step-3");
    snprintf(ck.path, sizeof ck.path, "/tmp/x");
    ck.step = 3;
    CHECK(storage_checkpoint_add(st, &ck) == RT_OK);
    storage_checkpoint found;
    CHECK(storage_checkpoint_find_model(st, NULL, "ft:x:ckpt-step-3", &found) == RT_OK);
    CHECK_EQ_INT(found.step, 3);
    CHECK(strncmp(found.id, "ftckpt-", 7) == 0);
    storage_job *jobs = NULL;
    storage_job_filter cancelled = {.status = "cancelled"};
    CHECK(storage_job_list(st, &cancelled, NULL, 10, &jobs, &n, &more) == RT_OK);
    CHECK(n == 1 && !more);
    CHECK_EQ_STR(jobs[0].id, "ftjob-b");
    free(jobs);
}

/* Metadata filters: every key = value must hold; odd keys are members, not paths. */
static void test_metadata_filter(storage *st)
{
    static const struct { const char *id, *meta; } rows[] = {
        {"ftjob-m1", "{\"team\":\"qa\",\"env\":\"prod\"}"}, {"ftjob-m2", "{\"team\":\"qa\"}"},
        {"ftjob-m3", "{\"a.b\":\"1\",\"team\":\"ops\"}"}, {"ftjob-m4", "not json"}};
    for (size_t i = 0; i < 4; i++) {
        storage_job j = {0};
        snprintf(j.id, sizeof j.id, "%s", rows[i].id);
        snprintf(j.status, sizeof j.status, "queued");
        snprintf(j.model, sizeof j.model, "m");
        snprintf(j.metadata, sizeof j.metadata, "%s", rows[i].meta);
        CHECK(storage_job_insert(st, &j) == RT_OK);
    }
    storage_job *jobs = NULL;
    size_t n = 0;
    bool more = false;
    storage_job_filter f = {.meta_keys = {"team"}, .meta_values = {"qa"}, .n_meta = 1};
    CHECK(storage_job_list(st, &f, NULL, 10, &jobs, &n, &more) == RT_OK);
    CHECK(n == 2 && jobs && !strcmp(jobs[0].id, "ftjob-m2") && !strcmp(jobs[1].id, "ftjob-m1"));
    free(jobs);
    storage_job_filter two = {.meta_keys = {"team", "env"}, .meta_values = {"qa", "prod"}, .n_meta = 2};
    CHECK(storage_job_list(st, &two, NULL, 10, &jobs, &n, &more) == RT_OK);
    CHECK(n == 1 && !strcmp(jobs[0].id, "ftjob-m1"));
    free(jobs);
    storage_job_filter dotted = {.meta_keys = {"a.b"}, .meta_values = {"1"}, .n_meta = 1};
    CHECK(storage_job_list(st, &dotted, NULL, 10, &jobs, &n, &more) == RT_OK);
    CHECK(n == 1 && !strcmp(jobs[0].id, "ftjob-m3"));
    free(jobs);
    storage_job_filter quote = {.meta_keys = {"a\"b"}, .meta_values = {"1"}, .n_meta = 1};
    CHECK(storage_job_list(st, &quote, NULL, 10, &jobs, &n, &more) == RT_ERR_INVALID);
}

/* Issue 13 item 4: a checkpoint's row and its job's resume pointer commit
 * together, and a second row for the same step is refused. */
static void test_checkpoint_commit(storage *st)
{
    storage_job j = make_job("ftjob-ck", "running");
    CHECK(storage_job_insert(st, &j) == RT_OK);
    storage_checkpoint ck = {0};
    snprintf(ck.job_id, sizeof ck.job_id, "ftjob-ck");
    snprintf(ck.fine_tuned_model_checkpoint, sizeof ck.fine_tuned_model_checkpoint, "ft:ck:ckpt-step-5");
    snprintf(ck.path, sizeof ck.path, "/tmp/ck/step-5");
    ck.step = 5;
    snprintf(j.checkpoint, sizeof j.checkpoint, "/tmp/ck/step-5");
    j.step = 5;
    CHECK_EQ_INT(storage_checkpoint_commit(st, &ck, &j), RT_OK);
    storage_job got;
    CHECK(storage_job_get(st, NULL, "ftjob-ck", &got) == RT_OK);
    CHECK_EQ_STR(got.checkpoint, "/tmp/ck/step-5");
    CHECK_EQ_INT(got.step, 5);
    /* the same step again (a resumed job repeating it): refused, nothing changes */
    storage_job later = j;
    snprintf(later.checkpoint, sizeof later.checkpoint, "/tmp/ck/other");
    later.step = 9;
    CHECK_EQ_INT(storage_checkpoint_commit(st, &ck, &later), RT_ERR_EXISTS);
    CHECK(storage_job_get(st, NULL, "ftjob-ck", &got) == RT_OK);
    CHECK_EQ_STR(got.checkpoint, "/tmp/ck/step-5");
    CHECK_EQ_INT(got.step, 5);
    storage_checkpoint *list = NULL;
    size_t n = 0;
    bool more = false;
    CHECK(storage_checkpoint_list(st, NULL, "ftjob-ck", NULL, 10, &list, &n, &more) == RT_OK);
    CHECK_EQ_INT(n, 1);
    free(list);
    CHECK_EQ_INT(storage_checkpoint_commit(st, &ck, NULL), RT_ERR_INVALID);
}

/* What undoes migrations 0006 and 0007 (projects), in each dialect, so
 * that they run again: back to version 5. */
static const char undo_sqlite[] =
    "DROP INDEX job_checkpoints_step; DROP INDEX files_project_seq;"
    "DROP INDEX jobs_tenant_seq; ALTER TABLE files DROP COLUMN project; DROP TABLE api_keys;"
    "PRAGMA user_version=5;";
static const char undo_pg[] =
    "DROP INDEX job_checkpoints_step; DROP INDEX files_project_seq;"
    "DROP INDEX jobs_tenant_seq; ALTER TABLE files DROP COLUMN project; DROP TABLE api_keys;"
    "DROP INDEX models_id; ALTER TABLE models DROP CONSTRAINT models_owned_by_id_key;"
    "ALTER TABLE models ADD CONSTRAINT models_id_key UNIQUE (id);"
    "UPDATE retune_schema SET version = 5;";

/* Migration 0006 on a database from before it: duplicate steps (left by
 * the old two-commit checkpointing) keep their first row. */
static void test_checkpoint_dedupe_migration(void)
{
    char dir[] = "/tmp/retune-jobs-mig-XXXXXX";
    if (!mkdtemp(dir))
        return;
    storage *st = NULL;
    CHECK(test_storage_open(dir, &st) == RT_OK);
    storage_job j = make_job("ftjob-dup", "running");
    CHECK(st && storage_job_insert(st, &j) == RT_OK);
    storage_close(st);
    const char *dups =
        "INSERT INTO job_checkpoints(id, job_id, created_at, step, fine_tuned_model_checkpoint, path)"
        " VALUES ('ftckpt-1', 'ftjob-dup', 1, 4, 'ft:d:ckpt-step-4', '/a'),"
        " ('ftckpt-2', 'ftjob-dup', 2, 4, 'ft:d:ckpt-step-4', '/a'),"
        " ('ftckpt-3', 'ftjob-dup', 3, 8, 'ft:d:ckpt-step-8', '/b');";
    CHECK_EQ_INT(test_db_exec(dir, test_db_is_pg() ? undo_pg : undo_sqlite), 0);
    CHECK_EQ_INT(test_db_exec(dir, dups), 0);
    st = NULL;
    CHECK(test_storage_open(dir, &st) == RT_OK);
    storage_checkpoint *list = NULL;
    size_t n = 0;
    bool more = false;
    CHECK(st && storage_checkpoint_list(st, NULL, "ftjob-dup", NULL, 10, &list, &n, &more) == RT_OK);
    CHECK_EQ_INT(n, 2);
    CHECK(n == 2 && !strcmp(list[1].id, "ftckpt-1") && !strcmp(list[0].id, "ftckpt-3"));
    free(list);
    storage_close(st);
    test_db_drop(dir);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* Issue 13 (tenants): a job, its checkpoints and cursors are unknown to
 * another project; an event cursor must be of the job listed. */
static void test_job_projects(storage *st)
{
    storage_job a = make_job("ftjob-pa", "succeeded"), b = make_job("ftjob-pb", "succeeded"), got;
    snprintf(a.tenant, sizeof a.tenant, "A");
    snprintf(b.tenant, sizeof b.tenant, "B");
    CHECK(storage_job_insert(st, &a) == RT_OK && storage_job_insert(st, &b) == RT_OK);
    CHECK_EQ_INT(storage_job_get(st, "B", "ftjob-pa", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_job_get(st, "A", "ftjob-pa", &got), RT_OK);
    storage_job *jobs = NULL;
    size_t n = 0;
    bool more = false;
    storage_job_filter fb = {.project = "B"};
    CHECK_EQ_INT(storage_job_list(st, &fb, NULL, 10, &jobs, &n, &more), RT_OK);
    CHECK(n == 1 && !strcmp(jobs[0].id, "ftjob-pb"));
    free(jobs);
    CHECK_EQ_INT(storage_job_list(st, &fb, "ftjob-pa", 10, &jobs, &n, &more), RT_ERR_NOT_FOUND);
    storage_checkpoint ck = {0}, found, *list = NULL;
    snprintf(ck.id, sizeof ck.id, "ftckpt-pa");
    snprintf(ck.job_id, sizeof ck.job_id, "ftjob-pa");
    snprintf(ck.fine_tuned_model_checkpoint, sizeof ck.fine_tuned_model_checkpoint, "ft:pa:ckpt-step-1");
    ck.step = 1;
    CHECK_EQ_INT(storage_checkpoint_add(st, &ck), RT_OK);
    CHECK_EQ_INT(storage_checkpoint_find_model(st, "B", "ft:pa:ckpt-step-1", &found), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_checkpoint_find_model(st, "A", "ft:pa:ckpt-step-1", &found), RT_OK);
    CHECK_EQ_INT(storage_checkpoint_list(st, "B", NULL, NULL, 10, &list, &n, &more), RT_OK);
    CHECK_EQ_INT(n, 0);
    free(list);
    CHECK_EQ_INT(storage_checkpoint_list(st, "A", NULL, NULL, 10, &list, &n, &more), RT_OK);
    CHECK(n == 1 && !strcmp(list[0].id, "ftckpt-pa"));
    free(list);
    CHECK_EQ_INT(storage_checkpoint_list(st, "B", "ftjob-pb", "ftckpt-pa", 10, &list, &n, &more),
                 RT_ERR_NOT_FOUND);
    storage_event ev = {0}, *evs = NULL;
    snprintf(ev.id, sizeof ev.id, "ftevent-pa");
    snprintf(ev.job_id, sizeof ev.job_id, "ftjob-pa");
    snprintf(ev.level, sizeof ev.level, "info");
    snprintf(ev.type, sizeof ev.type, "message");
    CHECK_EQ_INT(storage_event_add(st, &ev), RT_OK);
    CHECK_EQ_INT(storage_event_list(st, "ftjob-pb", "ftevent-pa", 10, &evs, &n, &more), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_event_list(st, "ftjob-pa", "ftevent-pa", 10, &evs, &n, &more), RT_OK);
    free(evs);
}

/* ---- concurrent claims: each queued job is claimed exactly once ---- */

#define CLAIMERS 4
#define CLAIM_JOBS 40
#define CLAIM_MAX (CLAIM_JOBS + 16) /* with the jobs earlier tests left queued */

struct claimer {
    storage *st;
    int n, errors;
    char ids[CLAIM_MAX][STORAGE_ID_MAX];
};

/* Claims until the queue is empty (each thread on its own connection, as
 * workers of a fleet would be). A busy database is retried. */
static void *claim_loop(void *p)
{
    struct claimer *c = p;
    for (int tries = 0; tries < 10 * CLAIM_JOBS; tries++) {
        storage_job job;
        int err = storage_job_claim(c->st, &job);
        if (err == RT_ERR_NOT_FOUND)
            break;
        if (err == RT_ERR_BUSY)
            continue;
        if (err || c->n == CLAIM_MAX) {
            fprintf(stderr, "claim: %s\n", rt_strerror(err));
            c->errors++;
            break;
        }
        snprintf(c->ids[c->n++], STORAGE_ID_MAX, "%s", job.id);
    }
    return NULL;
}

static void test_claim_concurrent(storage *st)
{
    for (int i = 0; i < CLAIM_JOBS; i++) {
        char id[STORAGE_ID_MAX];
        snprintf(id, sizeof id, "ftjob-c%02d", i);
        storage_job j = make_job(id, "queued");
        CHECK(storage_job_insert(st, &j) == RT_OK);
    }
    static struct claimer cs[CLAIMERS];
    pthread_t tids[CLAIMERS];
    for (int t = 0; t < CLAIMERS; t++) {
        memset(&cs[t], 0, sizeof cs[t]);
        cs[t].st = st;
        CHECK(pthread_create(&tids[t], NULL, claim_loop, &cs[t]) == 0);
    }
    int seen[CLAIM_JOBS] = {0}, total = 0;
    for (int t = 0; t < CLAIMERS; t++) {
        pthread_join(tids[t], NULL);
        CHECK_EQ_INT(cs[t].errors, 0);
        for (int i = 0; i < cs[t].n; i++) {
            if (strncmp(cs[t].ids[i], "ftjob-c", 7) != 0)
                continue; /* queued by the tests before */
            int k = atoi(cs[t].ids[i] + 7);
            if (k >= 0 && k < CLAIM_JOBS)
                seen[k]++;
            total++;
        }
    }
    CHECK_EQ_INT(total, CLAIM_JOBS);
    int once = 0;
    for (int i = 0; i < CLAIM_JOBS; i++)
        once += seen[i] == 1;
    CHECK_EQ_INT(once, CLAIM_JOBS); /* no job twice, none missed */
    storage_job got;
    CHECK(storage_job_get(st, NULL, "ftjob-c00", &got) == RT_OK);
    CHECK_EQ_STR(got.status, "running");
}

int main(void)
{
    char dir[] = "/tmp/retune-jobs-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    storage *st = NULL;
    CHECK(test_storage_open(dir, &st) == RT_OK);
    if (st) {
        RUN_ARG(test_claim_and_transitions, st);
        RUN_ARG(test_lists, st);
        RUN_ARG(test_metadata_filter, st);
        RUN_ARG(test_checkpoint_commit, st);
        RUN_ARG(test_job_projects, st);
        RUN_ARG(test_claim_concurrent, st);
    }
    storage_close(st);
    test_db_drop(dir);
    RUN(test_checkpoint_dedupe_migration);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    if (test_db_is_pg())
        printf("(storage tests ran against PostgreSQL)\n");
    return TEST_SUMMARY();
}
