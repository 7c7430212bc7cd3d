/*
 * tests/test_storage.c — unit tests for storage/: migrations (fresh, re-open,
 * newer-version refusal), blob upload round trip, list pagination, delete,
 * crash leftovers, concurrent use from several threads, abort, bad input;
 * projects (files and models of one are unknown to another), API keys and
 * the migration of old data to the default project.
 * Every test works in its own mkdtemp folder under /tmp, removed at the end,
 * and its own database: SQLite in that folder, or, with RETUNE_TEST_DATABASE
 * set, a fresh schema of that PostgreSQL database (tests/test_db.h).
 */
#include "storage/storage.h"
#include "storage/storage_internal.h" /* rt_migrations: the newest version */
#include "tests/test.h"
#include "tests/test_db.h"

#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---- */

static char *tmpdir_make(void)
{
    char tmpl[] = "/tmp/rt-storage-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void tmpdir_remove(char *dir)
{
    test_db_drop(dir);
    if (dir)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static int newest_version(void)
{
    return rt_migration_count ? rt_migrations[rt_migration_count - 1].version : 0;
}

static bool path_exists(const char *dir, const char *sub, const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s/%s", dir, sub, name);
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int files_in(const char *dir)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/files", dir);
    DIR *d = opendir(p);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/files/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static storage_file meta_make(const char *filename, const char *purpose)
{
    storage_file m;
    memset(&m, 0, sizeof m);
    snprintf(m.filename, sizeof m.filename, "%s", filename);
    snprintf(m.purpose, sizeof m.purpose, "%s", purpose);
    snprintf(m.status, sizeof m.status, "processed");
    snprintf(m.project, sizeof m.project, "retune");
    m.n_examples = 3;
    return m;
}

/* Uploads len bytes of data as one file; returns an rt_error code. */
static int upload(storage *st, const void *data, size_t len, const char *purpose,
                  storage_file *out)
{
    storage_blob *b = NULL;
    int err = storage_blob_begin(st, &b);
    if (err)
        return err;
    err = storage_blob_write(b, data, len);
    if (err) {
        storage_blob_abort(b);
        return err;
    }
    storage_file m = meta_make("data.jsonl", purpose);
    return storage_blob_commit(b, &m, out);
}

/* Sets the schema version of dir's database, as a newer retune would. */
static int set_user_version(const char *dir, int v)
{
    storage *st = NULL;
    storage_db *db = NULL;
    int err = test_storage_open(dir, &st);
    if (!err)
        err = storage_db_get(st, &db);
    if (!err)
        err = storage_db_set_user_version(db, v);
    storage_close(st);
    return err;
}

/* Whether dir holds the SQLite database (it does not on PostgreSQL). */
static bool has_db_file(const char *dir)
{
    return test_db_is_pg() || path_exists(dir, ".", "retune.db");
}

/* ---- tests ---- */

static void test_migrate_fresh(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    int v = -1;
    CHECK_EQ_INT(storage_schema_version(st, &v), RT_OK);
    CHECK(newest_version() >= 1);
    CHECK_EQ_INT(v, newest_version());
    CHECK(has_db_file(dir));
    CHECK(path_exists(dir, ".", "files"));
    storage_close(st);

    /* a nested, missing data dir is created too */
    char nested[PATH_MAX];
    snprintf(nested, sizeof nested, "%s/a/b/c", dir);
    st = NULL;
    CHECK_EQ_INT(test_storage_open(nested, &st), RT_OK);
    storage_close(st);
    test_db_drop(nested);
    storage_close(NULL);
    tmpdir_remove(dir);
}

static void test_reopen_keeps_data(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    storage_file f;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK_EQ_INT(upload(st, "hello\n", 6, "fine-tune", &f), RT_OK);
    storage_close(st);

    st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    int v = -1;
    CHECK_EQ_INT(storage_schema_version(st, &v), RT_OK);
    CHECK_EQ_INT(v, newest_version());
    storage_file g;
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &g), RT_OK);
    CHECK_EQ_STR(g.id, f.id);
    CHECK_EQ_INT(g.bytes, 6);
    CHECK(path_exists(dir, "files", f.id));
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_newer_version_refused(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_close(st);
    CHECK_EQ_INT(set_user_version(dir, 999), RT_OK);
    st = (storage *)0x1; /* must stay untouched */
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_ERR_VERSION);
    CHECK(st == (storage *)0x1);
    tmpdir_remove(dir);
}

static void test_blob_roundtrip(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);

    unsigned char data[70000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 31 + 7);
    storage_blob *b = NULL;
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, data, 1000), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, NULL, 0), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, data + 1000, sizeof data - 1000), RT_OK);
    CHECK_EQ_INT(storage_blob_size(b), sizeof data);
    storage_file m = meta_make("train.jsonl", "fine-tune");
    snprintf(m.status, sizeof m.status, "error");
    snprintf(m.status_details, sizeof m.status_details, "line 3: bad json");
    m.n_tokens = 42;
    storage_file f;
    int64_t before = rt_unix_time();
    CHECK_EQ_INT(storage_blob_commit(b, &m, &f), RT_OK);

    CHECK_EQ_INT(strlen(f.id), 5 + 24);
    CHECK(strncmp(f.id, "file-", 5) == 0);
    CHECK_EQ_INT(f.bytes, sizeof data);
    CHECK(f.created_at >= before && f.created_at <= rt_unix_time());
    CHECK_EQ_STR(f.filename, "train.jsonl");
    CHECK_EQ_STR(f.status, "error");
    CHECK_EQ_STR(f.status_details, "line 3: bad json");
    CHECK_EQ_INT(f.n_examples, 3);
    CHECK_EQ_INT(f.n_tokens, 42);

    storage_file g;
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &g), RT_OK);
    CHECK_EQ_STR(g.id, f.id);
    CHECK_EQ_STR(g.filename, f.filename);
    CHECK_EQ_STR(g.purpose, "fine-tune");
    CHECK_EQ_STR(g.status, "error");
    CHECK_EQ_STR(g.status_details, "line 3: bad json");
    CHECK_EQ_INT(g.bytes, f.bytes);
    CHECK_EQ_INT(g.created_at, f.created_at);
    CHECK_EQ_INT(g.n_examples, 3);
    CHECK_EQ_INT(g.n_tokens, 42);

    char path[PATH_MAX];
    CHECK_EQ_INT(storage_file_path(st, NULL, f.id, path, sizeof path), RT_OK);
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    static unsigned char back[sizeof data + 1];
    size_t n = fp ? fread(back, 1, sizeof back, fp) : 0;
    if (fp)
        fclose(fp);
    CHECK_EQ_INT(n, sizeof data);
    CHECK(memcmp(back, data, sizeof data) == 0);
    char small[8];
    CHECK_EQ_INT(storage_file_path(st, NULL, f.id, small, sizeof small), RT_ERR_INVALID);

    /* an empty upload is a valid, empty file */
    storage_file e;
    CHECK_EQ_INT(upload(st, NULL, 0, "fine-tune", &e), RT_OK);
    CHECK_EQ_INT(e.bytes, 0);
    CHECK(strcmp(e.id, f.id) != 0);
    CHECK_EQ_INT(files_in(dir), 2);
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_list_pagination(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_file f[5];
    for (int i = 0; i < 5; i++) /* purposes: ft, res, ft, res, ft */
        CHECK_EQ_INT(upload(st, "x", 1, i % 2 ? "fine-tune-results" : "fine-tune", &f[i]),
                     RT_OK);

    storage_file *rows = NULL;
    size_t count = 0;
    bool more = false;
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 2, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 2);
    CHECK(more);
    CHECK_EQ_STR(rows[0].id, f[0].id);
    CHECK_EQ_STR(rows[1].id, f[1].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, f[1].id, 2, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 2);
    CHECK(more);
    CHECK_EQ_STR(rows[0].id, f[2].id);
    CHECK_EQ_STR(rows[1].id, f[3].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, f[3].id, 2, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 1);
    CHECK(!more);
    CHECK_EQ_STR(rows[0].id, f[4].id);
    free(rows);

    /* exactly limit rows left: has_more false */
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, f[2].id, 2, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 2);
    CHECK(!more);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 3, true, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 3);
    CHECK(more);
    CHECK_EQ_STR(rows[0].id, f[4].id);
    CHECK_EQ_STR(rows[2].id, f[2].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, f[2].id, 10, true, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 2);
    CHECK(!more);
    CHECK_EQ_STR(rows[0].id, f[1].id);
    CHECK_EQ_STR(rows[1].id, f[0].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, "fine-tune", NULL, 10, false, &rows, &count, &more),
                 RT_OK);
    CHECK_EQ_INT(count, 3);
    CHECK(!more);
    CHECK_EQ_STR(rows[0].id, f[0].id);
    CHECK_EQ_STR(rows[1].id, f[2].id);
    CHECK_EQ_STR(rows[2].id, f[4].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, "fine-tune-results", f[3].id, 10, true, &rows, &count,
                                   &more), RT_OK);
    CHECK_EQ_INT(count, 1);
    CHECK_EQ_STR(rows[0].id, f[1].id);
    free(rows);

    CHECK_EQ_INT(storage_file_list(st, NULL, "nothing", NULL, 10, true, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 0);
    CHECK(rows != NULL);
    CHECK(!more);
    free(rows);

    rows = NULL;
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, "file-000000000000000000000000", 10, false, &rows,
                                   &count, &more), RT_ERR_NOT_FOUND);
    CHECK(rows == NULL);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 0, false, &rows, &count, &more),
                 RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, -1, false, &rows, &count, &more),
                 RT_ERR_INVALID);

    /* a deleted newest row's position is not reused */
    CHECK_EQ_INT(storage_file_delete(st, NULL, f[4].id), RT_OK);
    storage_file g;
    CHECK_EQ_INT(upload(st, "y", 1, "fine-tune", &g), RT_OK);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, f[3].id, 10, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 1);
    CHECK_EQ_STR(rows[0].id, g.id);
    free(rows);
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_delete(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    storage_file f, g;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK_EQ_INT(upload(st, "abc", 3, "fine-tune", &f), RT_OK);
    CHECK_EQ_INT(upload(st, "def", 3, "fine-tune", &g), RT_OK);
    CHECK(path_exists(dir, "files", f.id));
    CHECK_EQ_INT(storage_file_delete(st, NULL, f.id), RT_OK);
    CHECK(!path_exists(dir, "files", f.id));
    storage_file tmp;
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &tmp), RT_ERR_NOT_FOUND);
    char path[PATH_MAX];
    CHECK_EQ_INT(storage_file_path(st, NULL, f.id, path, sizeof path), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_delete(st, NULL, f.id), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_get(st, NULL, g.id, &tmp), RT_OK);
    CHECK(path_exists(dir, "files", g.id));

    /* a row whose blob is already gone still deletes */
    char gp[PATH_MAX];
    CHECK_EQ_INT(storage_file_path(st, NULL, g.id, gp, sizeof gp), RT_OK);
    CHECK_EQ_INT(unlink(gp), 0);
    CHECK_EQ_INT(storage_file_delete(st, NULL, g.id), RT_OK);
    CHECK_EQ_INT(files_in(dir), 0);
    storage_close(st);
    tmpdir_remove(dir);
}

/* expires_after: a lifetime becomes created_at + it; once passed, the file
 * is gone from get, list and path, its bytes too, and a file without one
 * stays. */
static void test_expiry(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_blob *b = NULL;
    storage_file m = meta_make("short.jsonl", "fine-tune"), f, keep, tmp;
    m.expires_at = 1; /* one second */
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, "x\n", 2), RT_OK);
    CHECK_EQ_INT(storage_blob_commit(b, &m, &f), RT_OK);
    CHECK_EQ_INT(f.expires_at, f.created_at + 1);
    CHECK_EQ_INT(upload(st, "abc", 3, "fine-tune", &keep), RT_OK);
    CHECK_EQ_INT(keep.expires_at, 0);
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &tmp), RT_OK);
    CHECK_EQ_INT(tmp.expires_at, f.expires_at);
    sleep(2);
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &tmp), RT_ERR_NOT_FOUND);
    CHECK(!path_exists(dir, "files", f.id));
    storage_file *list = NULL;
    size_t n = 0;
    bool more = false;
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 10, true, &list, &n, &more), RT_OK);
    CHECK(n == 1 && !strcmp(list[0].id, keep.id));
    free(list);
    CHECK_EQ_INT(storage_file_expire(st), RT_OK);
    CHECK_EQ_INT(storage_file_get(st, NULL, keep.id, &tmp), RT_OK);
    storage_close(st);
    tmpdir_remove(dir);
}

/* A folder with one file, ready to publish. */
static void make_model_dir(const char *path)
{
    CHECK_EQ_INT(mkdir(path, 0755), 0);
    char f[PATH_MAX];
    snprintf(f, sizeof f, "%s/adapter_config.json", path);
    FILE *fp = fopen(f, "w");
    CHECK(fp != NULL);
    if (fp) {
        fputs("{}", fp);
        fclose(fp);
    }
}

/* storage_model_publish: directory and row together or not at all; what a
 * crash can leave (a published folder with no row, an import's temporary
 * folder) is gone at the next open, and published models stay. */
static void test_model_publish(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    char tmp[PATH_MAX], tmp2[PATH_MAX], orphan[PATH_MAX], importing[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/work-a", dir);
    make_model_dir(tmp);
    storage_model m = {0};
    snprintf(m.id, sizeof m.id, "ft:base:org:abc");
    snprintf(m.kind, sizeof m.kind, "adapter");
    snprintf(m.owned_by, sizeof m.owned_by, "retune");
    CHECK_EQ_INT(storage_model_publish(st, tmp, "adapter-0123456789abcdef01234567", false, &m), RT_OK);
    CHECK(path_exists(dir, "adapters", "adapter-0123456789abcdef01234567/adapter_config.json"));
    CHECK(!path_exists(dir, "", "work-a"));
    storage_model got;
    CHECK_EQ_INT(storage_model_get(st, "retune", m.id, &got), RT_OK);
    CHECK_EQ_STR(got.path, m.path);
    /* the name is taken: refused before anything moves */
    snprintf(tmp2, sizeof tmp2, "%s/work-b", dir);
    make_model_dir(tmp2);
    storage_model again = m;
    CHECK_EQ_INT(storage_model_publish(st, tmp2, "adapter-1123456789abcdef01234567", false, &again),
                 RT_ERR_EXISTS);
    CHECK(path_exists(dir, "", "work-b") && !path_exists(dir, "adapters", "adapter-1123456789abcdef01234567"));
    /* a job re-run replaces its row; a full model goes to models/ */
    storage_model full = {0};
    snprintf(full.id, sizeof full.id, "ft:base:org:full");
    snprintf(full.kind, sizeof full.kind, "full");
    snprintf(full.owned_by, sizeof full.owned_by, "retune");
    CHECK_EQ_INT(storage_model_publish(st, tmp2, "ftjob-0123456789abcdef01234567", true, &full), RT_OK);
    CHECK(path_exists(dir, "models", "ftjob-0123456789abcdef01234567"));
    CHECK_EQ_INT(storage_model_publish(st, "/nonexistent/x", "ftjob-1123456789abcdef01234567", true, &full),
                 RT_ERR_IO);
    CHECK_EQ_INT(storage_model_get(st, "retune", full.id, &got), RT_OK); /* a failed re-run keeps the old one */
    CHECK_EQ_INT(storage_model_publish(st, tmp, "../escape", false, &m), RT_ERR_INVALID);
    storage_close(st);
    /* what a crash leaves: renamed but no row, and an import still being received */
    snprintf(orphan, sizeof orphan, "%s/adapters/adapter-2123456789abcdef01234567", dir);
    make_model_dir(orphan);
    snprintf(importing, sizeof importing, "%s/adapters/.import-0123456789abcdef01234567", dir);
    make_model_dir(importing);
    char keep[PATH_MAX];
    snprintf(keep, sizeof keep, "%s/adapters/not-an-id", dir);
    make_model_dir(keep);
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK(!path_exists(dir, "adapters", "adapter-2123456789abcdef01234567"));
    CHECK(!path_exists(dir, "adapters", ".import-0123456789abcdef01234567"));
    CHECK(path_exists(dir, "adapters", "not-an-id"));
    CHECK(path_exists(dir, "adapters", "adapter-0123456789abcdef01234567"));
    CHECK(path_exists(dir, "models", "ftjob-0123456789abcdef01234567"));
    storage_close(st);
    tmpdir_remove(dir);
}

/* Work folders live where storage says: jobs/<id> (kept), a fresh private
 * import folder beside the adapters (removed by the next open). */
static void test_work_dirs(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    char job[PATH_MAX], again[PATH_MAX], imp[PATH_MAX], imp2[PATH_MAX];
    CHECK_EQ_INT(storage_work_dir(st, STORAGE_WORK_JOB, "ftjob-0123456789abcdef01234567", job, sizeof job), RT_OK);
    CHECK(path_exists(dir, "jobs", "ftjob-0123456789abcdef01234567"));
    CHECK_EQ_INT(storage_work_dir(st, STORAGE_WORK_JOB, "ftjob-0123456789abcdef01234567", again, sizeof again),
                 RT_OK); /* a resumed job gets the same one */
    CHECK_EQ_STR(job, again);
    CHECK_EQ_INT(storage_work_dir(st, STORAGE_WORK_JOB, "../escape", job, sizeof job), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_work_dir(st, STORAGE_WORK_IMPORT, NULL, imp, sizeof imp), RT_OK);
    CHECK_EQ_INT(storage_work_dir(st, STORAGE_WORK_IMPORT, NULL, imp2, sizeof imp2), RT_OK);
    CHECK(strcmp(imp, imp2) != 0 && strstr(imp, "/adapters/.import-") != NULL);
    storage_close(st);
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    struct stat sb;
    CHECK(stat(imp, &sb) != 0); /* a crash's leftover import is gone */
    CHECK(path_exists(dir, "jobs", "ftjob-0123456789abcdef01234567"));
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_orphan_cleanup(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    storage_file f;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK_EQ_INT(upload(st, "keep", 4, "fine-tune", &f), RT_OK);
    storage_close(st);

    const char *orphan = "file-0123456789abcdef01234567";
    write_file(dir, ".tmp-0123456789abcdef01234567", "partial");
    write_file(dir, orphan, "no row");
    write_file(dir, "notes.txt", "not ours");
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/files/file-aaaaaaaaaaaaaaaaaaaaaaaa", dir);
    CHECK_EQ_INT(mkdir(sub, 0700), 0); /* id-shaped but a folder: left alone */
    write_file(dir, "../outside-file-0123456789abcdef01234567", "outside");
    CHECK_EQ_INT(files_in(dir), 5);

    st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK(!path_exists(dir, "files", ".tmp-0123456789abcdef01234567"));
    CHECK(!path_exists(dir, "files", orphan));
    CHECK(path_exists(dir, "files", f.id));
    CHECK(path_exists(dir, "files", "notes.txt"));
    CHECK(path_exists(dir, "files", "file-aaaaaaaaaaaaaaaaaaaaaaaa"));
    CHECK(path_exists(dir, ".", "outside-file-0123456789abcdef01234567"));
    CHECK_EQ_INT(files_in(dir), 3);
    storage_file g;
    CHECK_EQ_INT(storage_file_get(st, NULL, f.id, &g), RT_OK);

    /* while a handle is open, a second open must not clean its live upload */
    storage_blob *b = NULL;
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, "live", 4), RT_OK);
    CHECK_EQ_INT(files_in(dir), 4);
    storage *st2 = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st2), RT_OK);
    CHECK_EQ_INT(files_in(dir), 4);
    storage_file m = meta_make("live.jsonl", "fine-tune"), h;
    CHECK_EQ_INT(storage_blob_commit(b, &m, &h), RT_OK);
    CHECK_EQ_INT(storage_file_get(st2, NULL, h.id, &g), RT_OK);
    storage_close(st2);
    storage_close(st);
    tmpdir_remove(dir);
}

/* ---- threads ---- */

#define THREADS 4
#define PER_THREAD 25

struct thread_arg {
    storage *st;
    int index;
    int failures;
    char ids[PER_THREAD][STORAGE_ID_MAX];
};

static void *thread_upload(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < PER_THREAD; i++) {
        char text[64];
        int n = snprintf(text, sizeof text, "thread %d file %d\n", a->index, i);
        storage_file f, g;
        if (upload(a->st, text, (size_t)n, "fine-tune", &f) != RT_OK ||
            storage_file_get(a->st, NULL, f.id, &g) != RT_OK || g.bytes != n) {
            a->failures++;
            continue;
        }
        snprintf(a->ids[i], sizeof a->ids[i], "%s", f.id);
        storage_file *rows = NULL;
        size_t count = 0;
        bool more = false;
        if (storage_file_list(a->st, NULL, NULL, NULL, 5, true, &rows, &count, &more) != RT_OK)
            a->failures++;
        free(rows);
    }
    return NULL;
}

static void test_threads(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    static struct thread_arg args[THREADS];
    pthread_t tids[THREADS];
    for (int t = 0; t < THREADS; t++) {
        memset(&args[t], 0, sizeof args[t]);
        args[t].st = st;
        args[t].index = t;
        CHECK_EQ_INT(pthread_create(&tids[t], NULL, thread_upload, &args[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(tids[t], NULL);
        CHECK_EQ_INT(args[t].failures, 0);
    }
    storage_file *rows = NULL;
    size_t count = 0;
    bool more = true;
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 1000, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, THREADS * PER_THREAD);
    CHECK(!more);
    free(rows);
    int found = 0;
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < PER_THREAD; i++) {
            storage_file g;
            found += storage_file_get(st, NULL, args[t].ids[i], &g) == RT_OK;
        }
    }
    CHECK_EQ_INT(found, THREADS * PER_THREAD);
    CHECK_EQ_INT(files_in(dir), THREADS * PER_THREAD);

    /* a thread's connection closes when it exits (key destructor); the main
     * thread's stays open until storage_close */
    pthread_t late;
    struct thread_arg one = {.st = st, .index = 9};
    CHECK_EQ_INT(pthread_create(&late, NULL, thread_upload, &one), 0);
    pthread_join(late, NULL);
    CHECK_EQ_INT(one.failures, 0);
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_blob_abort(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_blob *b = NULL;
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, "some bytes", 10), RT_OK);
    CHECK_EQ_INT(files_in(dir), 1);
    storage_blob_abort(b);
    storage_blob_abort(NULL);
    CHECK_EQ_INT(files_in(dir), 0);

    /* a commit refused for bad meta also leaves nothing */
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, "x", 1), RT_OK);
    storage_file m = meta_make("a", "");
    storage_file out = meta_make("untouched", "p");
    CHECK_EQ_INT(storage_blob_commit(b, &m, &out), RT_ERR_INVALID);
    CHECK_EQ_STR(out.filename, "untouched");
    CHECK_EQ_INT(files_in(dir), 0);
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_commit(b, NULL, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(files_in(dir), 0);

    storage_file *rows = NULL;
    size_t count = 9;
    bool more = true;
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 10, false, &rows, &count, &more), RT_OK);
    CHECK_EQ_INT(count, 0);
    free(rows);
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_bad_input(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(storage_open(NULL, &st), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_open(dir, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_open("", &st), RT_ERR_INVALID);
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);

    char long_id[200];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    storage_file f;
    char path[PATH_MAX];
    CHECK_EQ_INT(storage_file_get(st, NULL, NULL, &f), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_get(st, NULL, long_id, &f), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_get(NULL, NULL, "file-x", &f), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_get(st, NULL, "", &f), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_get(st, NULL, "../../etc/passwd", &f), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_path(st, NULL, NULL, path, sizeof path), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_path(st, NULL, "../retune.db", path, sizeof path), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_delete(st, NULL, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_delete(st, NULL, long_id), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_delete(st, NULL, "../retune.db"), RT_ERR_NOT_FOUND);
    CHECK(has_db_file(dir));

    storage_file *rows = NULL;
    size_t count = 0;
    bool more = false;
    CHECK_EQ_INT(storage_file_list(st, NULL, long_id, NULL, 10, false, &rows, &count, &more),
                 RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, long_id, 10, false, &rows, &count, &more),
                 RT_ERR_INVALID);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 10, false, NULL, &count, &more),
                 RT_ERR_INVALID);

    /* unterminated meta strings are refused, not read past */
    storage_blob *b = NULL;
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    storage_file m = meta_make("ok", "fine-tune");
    memset(m.filename, 'x', sizeof m.filename);
    CHECK_EQ_INT(storage_blob_commit(b, &m, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    m = meta_make("ok", "fine-tune");
    m.n_tokens = -1;
    CHECK_EQ_INT(storage_blob_commit(b, &m, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_blob_begin(st, &b), RT_OK);
    CHECK_EQ_INT(storage_blob_write(b, NULL, 5), RT_ERR_INVALID);
    storage_blob_abort(b);
    CHECK_EQ_INT(storage_blob_write(NULL, "x", 1), RT_ERR_INVALID);
    CHECK(storage_blob_size(NULL) < 0);
    CHECK_EQ_INT(storage_blob_begin(NULL, &b), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_blob_commit(NULL, &m, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_schema_version(NULL, NULL), RT_ERR_INVALID);
    CHECK_EQ_INT(files_in(dir), 0);
    storage_close(st);
    tmpdir_remove(dir);
}

static void test_new_id(void)
{
    char a[STORAGE_ID_MAX], b[STORAGE_ID_MAX];
    storage_new_id("file", a, sizeof a);
    storage_new_id("file", b, sizeof b);
    CHECK_EQ_INT(strlen(a), 29);
    CHECK(strncmp(a, "file-", 5) == 0);
    CHECK(strspn(a + 5, "0123456789abcdef") == 24);
    CHECK(strcmp(a, b) != 0);
    storage_new_id("ftjob", a, sizeof a);
    CHECK(strncmp(a, "ftjob-", 6) == 0 && strlen(a) == 30);
    storage_new_id("Bad/Prefix", a, sizeof a);
    CHECK(a[0] == '\0');
    storage_new_id(NULL, a, sizeof a);
    CHECK(a[0] == '\0');
    storage_new_id("file", a, 10);
    CHECK(a[0] == '\0');
    storage_new_id("file", NULL, 0);
}

/* Uploads one file of project p. */
static int upload_as(storage *st, const char *p, storage_file *out)
{
    storage_blob *b = NULL;
    int err = storage_blob_begin(st, &b);
    if (!err)
        err = storage_blob_write(b, "{}\n", 3);
    if (err) {
        storage_blob_abort(b);
        return err;
    }
    storage_file m = meta_make("p.jsonl", "fine-tune");
    snprintf(m.project, sizeof m.project, "%s", p);
    return storage_blob_commit(b, &m, out);
}

/* Issue 13 (tenants): another project's file is exactly an unknown one for
 * get, path, delete, list and list cursors; NULL sees every project. */
static void test_file_projects(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_file a, b, got, *rows = NULL;
    size_t n = 0;
    bool more = false;
    char path[PATH_MAX];
    CHECK_EQ_INT(upload_as(st, "A", &a), RT_OK);
    CHECK_EQ_INT(upload_as(st, "B", &b), RT_OK);
    CHECK_EQ_STR(a.project, "A");
    CHECK_EQ_INT(storage_file_get(st, "B", a.id, &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_get(st, "A", a.id, &got), RT_OK);
    CHECK_EQ_INT(storage_file_get(st, NULL, a.id, &got), RT_OK);
    CHECK_EQ_INT(storage_file_path(st, "B", a.id, path, sizeof path), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_list(st, "B", NULL, NULL, 10, true, &rows, &n, &more), RT_OK);
    CHECK(n == 1 && !strcmp(rows[0].id, b.id));
    free(rows);
    CHECK_EQ_INT(storage_file_list(st, "B", NULL, a.id, 10, true, &rows, &n, &more), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_list(st, NULL, NULL, NULL, 10, true, &rows, &n, &more), RT_OK);
    CHECK_EQ_INT(n, 2);
    free(rows);
    CHECK_EQ_INT(storage_file_delete(st, "B", a.id), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_file_get(st, "A", a.id, &got), RT_OK);
    CHECK_EQ_INT(storage_file_delete(st, "A", a.id), RT_OK);
    CHECK_EQ_INT(upload_as(st, "bad:name", &got), RT_ERR_INVALID);
    CHECK_EQ_INT(upload_as(st, "", &got), RT_ERR_INVALID);
    storage_close(st);
    tmpdir_remove(dir);
}

/* Model names are unique per project: two projects may each have "x", and
 * neither sees, lists or deletes the other's. */
static void test_model_projects(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_model m = {0}, got, *rows = NULL;
    size_t n = 0;
    bool more = false;
    snprintf(m.id, sizeof m.id, "x");
    snprintf(m.kind, sizeof m.kind, "adapter");
    snprintf(m.owned_by, sizeof m.owned_by, "A");
    snprintf(m.path, sizeof m.path, "/a");
    CHECK_EQ_INT(storage_model_add(st, &m), RT_OK);
    CHECK_EQ_INT(storage_model_add(st, &m), RT_ERR_EXISTS);
    snprintf(m.owned_by, sizeof m.owned_by, "B");
    snprintf(m.path, sizeof m.path, "/b");
    CHECK_EQ_INT(storage_model_add(st, &m), RT_OK);
    CHECK_EQ_INT(storage_model_get(st, "A", "x", &got), RT_OK);
    CHECK_EQ_STR(got.path, "/a");
    CHECK_EQ_INT(storage_model_get(st, "C", "x", &got), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_model_list(st, "A", NULL, 10, &rows, &n, &more), RT_OK);
    CHECK(n == 1 && !strcmp(rows[0].path, "/a"));
    free(rows);
    CHECK_EQ_INT(storage_model_list(st, "C", "x", 10, &rows, &n, &more), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_model_delete(st, "C", "x"), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_model_delete(st, "A", "x"), RT_OK);
    CHECK_EQ_INT(storage_model_get(st, "B", "x", &got), RT_OK);
    snprintf(m.owned_by, sizeof m.owned_by, "no/slash");
    CHECK_EQ_INT(storage_model_add(st, &m), RT_ERR_INVALID);
    storage_close(st);
    tmpdir_remove(dir);
}

/* Keys: only hashes, found while live, revocation at once, and "any" stays
 * true after the last key is revoked. */
static void test_keys(void)
{
    char *dir = tmpdir_make();
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    bool any = true;
    CHECK_EQ_INT(storage_key_any(st, &any), RT_OK);
    CHECK(!any);
    storage_key k = {0}, stored, found, *keys = NULL;
    snprintf(k.project, sizeof k.project, "A");
    rt_sha256_hex("sk-rt-secret", 12, k.hash);
    snprintf(k.prefix, sizeof k.prefix, "sk-rt-se");
    CHECK_EQ_INT(storage_key_add(st, &k, &stored), RT_OK);
    CHECK(!strncmp(stored.id, "key-", 4) && stored.created_at > 0 && stored.revoked_at == 0);
    CHECK_EQ_INT(storage_key_add(st, &k, NULL), RT_ERR_EXISTS);
    CHECK_EQ_INT(storage_key_find(st, k.hash, &found), RT_OK);
    CHECK_EQ_STR(found.project, "A");
    CHECK_EQ_INT(storage_key_any(st, &any), RT_OK);
    CHECK(any);
    CHECK_EQ_INT(storage_key_revoke(st, stored.id), RT_OK);
    CHECK_EQ_INT(storage_key_find(st, k.hash, &found), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_key_revoke(st, stored.id), RT_ERR_STATE);
    CHECK_EQ_INT(storage_key_revoke(st, "key-000000000000000000000000"), RT_ERR_NOT_FOUND);
    CHECK_EQ_INT(storage_key_any(st, &any), RT_OK);
    CHECK(any); /* revoking the last key does not turn auth off */
    size_t n = 0;
    CHECK_EQ_INT(storage_key_list(st, &keys, &n), RT_OK);
    CHECK(n == 1 && keys[0].revoked_at > 0 && !strcmp(keys[0].prefix, "sk-rt-se"));
    free(keys);
    storage_key bad = k;
    snprintf(bad.hash, sizeof bad.hash, "not-a-hash");
    CHECK_EQ_INT(storage_key_add(st, &bad, NULL), RT_ERR_INVALID);
    bad = k;
    bad.project[0] = '\0';
    CHECK_EQ_INT(storage_key_add(st, &bad, NULL), RT_ERR_INVALID);
    storage_close(st);
    tmpdir_remove(dir);
}

/* Migration 0007 on a database from before it: existing files move to the
 * default project "retune"; models keep their owners. */
static void test_projects_migration(void)
{
    char *dir = tmpdir_make();
    bool pg = test_db_is_pg();
    for (size_t i = 0; i < rt_migration_count && rt_migrations[i].version < 7; i++) {
        const char *sql = pg && rt_migrations[i].sql_pg ? rt_migrations[i].sql_pg : rt_migrations[i].sql;
        CHECK_EQ_INT(test_db_exec(dir, sql), 0);
    }
    const char *version = pg ? "CREATE TABLE retune_schema (version INTEGER NOT NULL);"
                               "INSERT INTO retune_schema VALUES (6);"
                             : "PRAGMA user_version=6;";
    const char *old =
        "INSERT INTO files(id, filename, purpose, status, bytes, created_at)"
        " VALUES ('file-000000000000000000000001', 'old.jsonl', 'fine-tune', 'processed', 3, 1);"
        "INSERT INTO models(id, kind, parent, owned_by, path, created_at)"
        " VALUES ('ft:b:acme:s:1', 'adapter', 'b', 'acme', '/x', 1);";
    CHECK_EQ_INT(test_db_exec(dir, version), 0);
    CHECK_EQ_INT(test_db_exec(dir, old), 0);
    write_file(dir, "file-000000000000000000000001", "{}\n");
    storage *st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    storage_file f;
    storage_model m = {0};
    CHECK_EQ_INT(storage_file_get(st, "retune", "file-000000000000000000000001", &f), RT_OK);
    CHECK_EQ_STR(f.project, "retune");
    CHECK_EQ_INT(storage_model_get(st, "acme", "ft:b:acme:s:1", &m), RT_OK);
    CHECK_EQ_INT(storage_model_get(st, "retune", "ft:b:acme:s:1", &m), RT_ERR_NOT_FOUND);
    /* and the name is now unique per project only */
    snprintf(m.owned_by, sizeof m.owned_by, "other");
    CHECK_EQ_INT(storage_model_add(st, &m), RT_OK);
    CHECK_EQ_INT(storage_model_add(st, &m), RT_ERR_EXISTS);
    storage_close(st);
    tmpdir_remove(dir);
}

/* Storage speaks to the database named, and refuses what names none. */
static void test_database_names(void)
{
    char *dir = tmpdir_make();
    storage *st = (storage *)0x1;
    CHECK_EQ_INT(storage_open_database(dir, "mysql://x/y", &st), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_open_database(dir, "sqlite:", &st), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_open_database(dir, "postgres://x/y?nosuchoption=1", &st), RT_ERR_INVALID);
    CHECK_EQ_INT(storage_open_database(dir, "host='unterminated", &st), RT_ERR_INVALID);
    /* nothing listens on this socket folder: refused at open, not later */
    CHECK_EQ_INT(storage_open_database(dir, "postgresql:///x?host=/nonexistent-rt&connect_timeout=2", &st),
                 RT_ERR_DB);
    CHECK(st == (storage *)0x1);
    char db[PATH_MAX];
    snprintf(db, sizeof db, "sqlite:%s/elsewhere.db", dir);
    st = NULL;
    CHECK_EQ_INT(storage_open_database(dir, db, &st), RT_OK);
    CHECK(path_exists(dir, ".", "elsewhere.db") && !path_exists(dir, ".", "retune.db"));
    CHECK(!storage_is_postgres(st));
    storage_close(st);
    st = NULL;
    CHECK_EQ_INT(test_storage_open(dir, &st), RT_OK);
    CHECK(storage_is_postgres(st) == test_db_is_pg());
    storage_close(st);
    tmpdir_remove(dir);
}

int main(void)
{
    rt_log_set_level(RT_LOG_ERROR + 1); /* the tests provoke errors on purpose */
    RUN(test_migrate_fresh);
    RUN(test_reopen_keeps_data);
    RUN(test_newer_version_refused);
    RUN(test_blob_roundtrip);
    RUN(test_list_pagination);
    RUN(test_delete);
    RUN(test_expiry);
    RUN(test_model_publish);
    RUN(test_orphan_cleanup);
    RUN(test_work_dirs);
    RUN(test_threads);
    RUN(test_blob_abort);
    RUN(test_bad_input);
    RUN(test_new_id);
    RUN(test_file_projects);
    RUN(test_model_projects);
    RUN(test_keys);
    RUN(test_projects_migration);
    RUN(test_database_names);
    if (test_db_is_pg())
        printf("(storage tests ran against PostgreSQL)\n");
    return TEST_SUMMARY();
}
