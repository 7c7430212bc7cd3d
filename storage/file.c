/*
 * storage/file.c — file records (the files table): validation, insert, get,
 * list with seq-based pagination, path and delete, each within the caller's
 * project (storage.h: another project's file is not found). The blob bytes
 * themselves are written by blob.c; this file only unlinks them on delete.
 */
#include "storage/storage_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FILE_COLS "id, filename, purpose, status, status_details, bytes, " \
                  "created_at, n_examples, n_tokens, expires_at, project"
/* The project condition of every query: its parameter bound to NULL
 * matches any project. */
#define IN_PROJECT(n) "(?" #n " IS NULL OR project = ?" #n ")"

/* RT_OK when id is a usable lookup key: present and shorter than
 * STORAGE_ID_MAX. Anything else is RT_ERR_INVALID. */
int storage_id_check(const char *id)
{
    if (!id || strnlen(id, STORAGE_ID_MAX) >= STORAGE_ID_MAX)
        return RT_ERR_INVALID;
    return RT_OK;
}

/* Whether the fixed-size field s (size bytes) holds a terminated string,
 * non-empty when required. */
static bool storage_field_ok(const char *s, size_t size, bool required)
{
    size_t len = strnlen(s, size);
    return len < size && (!required || len > 0);
}

/* Checks the caller-provided fields of a new file record (id, bytes and
 * created_at are ignored: storage fills them). RT_ERR_INVALID if bad. */
int storage_file_meta_check(const storage_file *meta)
{
    if (!meta)
        return RT_ERR_INVALID;
    bool ok = storage_field_ok(meta->filename, sizeof meta->filename, false) &&
              storage_field_ok(meta->purpose, sizeof meta->purpose, true) &&
              storage_field_ok(meta->status, sizeof meta->status, true) &&
              storage_field_ok(meta->status_details, sizeof meta->status_details, false) &&
              storage_field_ok(meta->project, sizeof meta->project, true) &&
              storage_project_valid(meta->project) &&
              meta->n_examples >= 0 && meta->n_tokens >= 0 && meta->expires_at >= 0;
    if (!ok) {
        rt_log(RT_LOG_WARN, "storage: rejected file record with missing or overlong fields");
        return RT_ERR_INVALID;
    }
    return RT_OK;
}

/* Copies text column i into dst (size bytes). RT_ERR_DB if it does not fit
 * (the schema's length checks make that a corrupt row). */
static int storage_col_text(storage_stmt *stmt, int i, char *dst, size_t size)
{
    size_t len = 0;
    const char *s = storage_stmt_col_text(stmt, i, &len);
    if (len >= size) {
        rt_log(RT_LOG_ERROR, "storage: files column %d too long (%zu bytes)", i, len);
        return RT_ERR_DB;
    }
    if (s)
        memcpy(dst, s, len);
    dst[len] = '\0';
    return RT_OK;
}

/* Reads the current row of a "SELECT " FILE_COLS statement into *out. */
int storage_file_row_read(storage_stmt *stmt, storage_file *out)
{
    storage_file rec;
    memset(&rec, 0, sizeof rec);
    int err = storage_col_text(stmt, 0, rec.id, sizeof rec.id);
    if (!err)
        err = storage_col_text(stmt, 1, rec.filename, sizeof rec.filename);
    if (!err)
        err = storage_col_text(stmt, 2, rec.purpose, sizeof rec.purpose);
    if (!err)
        err = storage_col_text(stmt, 3, rec.status, sizeof rec.status);
    if (!err)
        err = storage_col_text(stmt, 4, rec.status_details, sizeof rec.status_details);
    if (!err)
        err = storage_col_text(stmt, 10, rec.project, sizeof rec.project);
    if (err)
        return err;
    rec.bytes = storage_stmt_col_int(stmt, 5);
    rec.created_at = storage_stmt_col_int(stmt, 6);
    rec.n_examples = storage_stmt_col_int(stmt, 7);
    rec.n_tokens = storage_stmt_col_int(stmt, 8);
    rec.expires_at = storage_stmt_col_int(stmt, 9);
    *out = rec;
    return RT_OK;
}

/* Inserts a complete record; seq (insertion order) is assigned by the
 * database.
 * rec is borrowed. RT_ERR_EXISTS if the id is taken. */
int storage_file_insert(storage_db *db, const storage_file *rec)
{
    static const char sql[] = "INSERT INTO files (" FILE_COLS ") "
                              "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, rec->id);
    storage_stmt_text(stmt, 2, rec->filename);
    storage_stmt_text(stmt, 3, rec->purpose);
    storage_stmt_text(stmt, 4, rec->status);
    storage_stmt_text(stmt, 5, rec->status_details);
    storage_stmt_int(stmt, 6, rec->bytes);
    storage_stmt_int(stmt, 7, rec->created_at);
    storage_stmt_int(stmt, 8, rec->n_examples);
    storage_stmt_int(stmt, 9, rec->n_tokens);
    storage_stmt_int(stmt, 10, rec->expires_at);
    storage_stmt_text(stmt, 11, rec->project);
    int rc = storage_stmt_step(stmt);
    if (rc != STORAGE_DONE)
        err = rc < 0 ? rc : RT_ERR_DB;
    storage_stmt_free(stmt);
    return err;
}

/* Deletes every file whose expires_at has passed: the row, then its blob
 * (as storage_file_delete). Each is logged. */
static int expire_due(storage *st, storage_db *db)
{
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, "DELETE FROM files WHERE expires_at > 0 AND expires_at <= ?1 "
                                     "RETURNING id", &stmt);
    if (err)
        return err;
    storage_stmt_int(stmt, 1, rt_unix_time());
    int rc;
    while ((rc = storage_stmt_step(stmt)) == STORAGE_ROW) {
        const char *id = storage_stmt_col_text(stmt, 0, NULL);
        if (!id || storage_id_check(id))
            continue;
        rt_log(RT_LOG_INFO, "storage: file %s expired (expires_after) and was deleted", id);
        if (unlinkat(st->files_fd, id, 0) != 0 && errno != ENOENT)
            rt_log(RT_LOG_WARN, "storage: cannot remove files/%s: %s", id, strerror(errno));
    }
    err = rc == STORAGE_DONE ? RT_OK : rc;
    storage_stmt_free(stmt);
    return err;
}

int storage_file_expire(storage *st)
{
    storage_db *db = NULL;
    int err = st ? storage_db_get(st, &db) : RT_ERR_INVALID;
    return err ? err : expire_due(st, db);
}

/* Binds a project argument: NULL (any project) stays SQL NULL. */
static void bind_project(storage_stmt *stmt, int i, const char *project)
{
    storage_stmt_text(stmt, i, project);
}

/* See storage.h. RT_ERR_INVALID for a NULL or overlong id. */
int storage_file_get(storage *st, const char *project, const char *id, storage_file *out)
{
    if (!st || !out || storage_id_check(id))
        return RT_ERR_INVALID;
    storage_db *db = NULL;
    storage_stmt *stmt = NULL;
    int err = storage_db_get(st, &db);
    if (!err)
        err = expire_due(st, db);
    if (!err)
        err = storage_stmt_prepare(db, "SELECT " FILE_COLS " FROM files WHERE id = ?1 AND "
                                 IN_PROJECT(2), &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, id);
    bind_project(stmt, 2, project);
    int rc = storage_stmt_step(stmt);
    if (rc == STORAGE_ROW)
        err = storage_file_row_read(stmt, out);
    else
        err = rc == STORAGE_DONE ? RT_ERR_NOT_FOUND : rc;
    storage_stmt_free(stmt);
    return err;
}

/* Looks up the seq (list position) of record id in project (NULL: any).
 * RT_ERR_NOT_FOUND if none. */
static int storage_file_seq(storage_db *db, const char *project, const char *id, int64_t *out)
{
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, "SELECT seq FROM files WHERE id = ?1 AND " IN_PROJECT(2),
                                 &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, id);
    bind_project(stmt, 2, project);
    int rc = storage_stmt_step(stmt);
    if (rc == STORAGE_ROW)
        *out = storage_stmt_col_int(stmt, 0);
    else
        err = rc == STORAGE_DONE ? RT_ERR_NOT_FOUND : rc;
    storage_stmt_free(stmt);
    return err;
}

/* A growing array of records being collected for a list answer. */
struct storage_file_rows {
    storage_file *v;
    size_t n, cap;
};

/* Makes room for one more record in rows. */
static int storage_file_rows_grow(struct storage_file_rows *rows)
{
    if (rows->n < rows->cap)
        return RT_OK;
    size_t cap = rows->cap ? rows->cap * 2 : 16;
    storage_file *v = realloc(rows->v, cap * sizeof *v);
    if (!v)
        return RT_ERR_NOMEM;
    rows->v = v;
    rows->cap = cap;
    return RT_OK;
}

/* Runs a prepared list query (LIMIT limit + 1) and keeps up to limit rows;
 * *more says whether a further row exists. */
static int storage_file_rows_collect(storage_stmt *stmt, int limit,
                                     struct storage_file_rows *rows, bool *more)
{
    int rc = STORAGE_DONE, err = RT_OK;
    *more = false;
    while (!err && (rc = storage_stmt_step(stmt)) == STORAGE_ROW) {
        if (rows->n == (size_t)limit) {
            *more = true;
            return RT_OK;
        }
        err = storage_file_rows_grow(rows);
        if (!err)
            err = storage_file_row_read(stmt, &rows->v[rows->n]);
        if (!err)
            rows->n++;
    }
    if (!err && rc != STORAGE_DONE)
        err = rc < 0 ? rc : RT_ERR_DB;
    return err;
}

/* Selects up to limit records of project (NULL: any) strictly beyond seq
 * `cursor` in the given order, optionally of one purpose, into rows. */
static int storage_file_query(storage_db *db, const char *project, const char *purpose,
                              int64_t cursor, int limit, bool descending,
                              struct storage_file_rows *rows, bool *more)
{
    static const char *const sql[2] = {
        "SELECT " FILE_COLS " FROM files WHERE seq > ?1 AND (?2 IS NULL OR purpose = ?2) AND "
        IN_PROJECT(4) " ORDER BY seq ASC LIMIT ?3",
        "SELECT " FILE_COLS " FROM files WHERE seq < ?1 AND (?2 IS NULL OR purpose = ?2) AND "
        IN_PROJECT(4) " ORDER BY seq DESC LIMIT ?3",
    };
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql[descending], &stmt);
    if (err)
        return err;
    storage_stmt_int(stmt, 1, cursor);
    storage_stmt_text(stmt, 2, purpose);
    storage_stmt_int(stmt, 3, (int64_t)limit + 1);
    bind_project(stmt, 4, project);
    err = storage_file_rows_collect(stmt, limit, rows, more);
    storage_stmt_free(stmt);
    return err;
}

/* The cursor lookup and the query, in one read transaction so both see the
 * same snapshot. */
static int storage_file_list_txn(storage_db *db, const char *project, const char *purpose,
                                 const char *after, int limit, bool descending,
                                 struct storage_file_rows *rows, bool *more)
{
    int64_t cursor = descending ? INT64_MAX : 0;
    int err = storage_db_begin(db, STORAGE_TXN_READ);
    if (err)
        return err;
    if (after)
        err = storage_file_seq(db, project, after, &cursor);
    if (!err)
        err = storage_file_query(db, project, purpose, cursor, limit, descending, rows, more);
    if (!err)
        err = storage_db_commit(db);
    if (err)
        storage_db_rollback(db);
    return err;
}

/* See storage.h. limit must be 1..STORAGE_LIST_LIMIT_MAX (10000), purpose
 * shorter than STORAGE_PURPOSE_MAX, after a valid id, else RT_ERR_INVALID.
 * On success *out is a malloc'd array (never NULL, even for 0 records). */
int storage_file_list(storage *st, const char *project, const char *purpose, const char *after,
                      int limit, bool descending,
                      storage_file **out, size_t *count, bool *has_more)
{
    if (!st || !out || !count || !has_more || limit < 1 || limit > STORAGE_LIST_LIMIT_MAX)
        return RT_ERR_INVALID;
    if ((purpose && strnlen(purpose, STORAGE_PURPOSE_MAX) >= STORAGE_PURPOSE_MAX) ||
        (after && storage_id_check(after)))
        return RT_ERR_INVALID;
    storage_db *db = NULL;
    int err = storage_db_get(st, &db);
    if (!err)
        err = expire_due(st, db);
    if (err)
        return err;
    struct storage_file_rows rows = {NULL, 0, 0};
    bool more = false;
    err = storage_file_list_txn(db, project, purpose, after, limit, descending, &rows, &more);
    if (!err)
        err = storage_file_rows_grow(&rows); /* so the array is never NULL */
    if (err) {
        free(rows.v);
        return err;
    }
    *out = rows.v;
    *count = rows.n;
    *has_more = more;
    return RT_OK;
}

/* Whether project (NULL: any) has a row for id. */
static int storage_file_exists(storage_db *db, const char *project, const char *id)
{
    int64_t seq = 0;
    return storage_file_seq(db, project, id, &seq);
}

/* See storage.h. RT_ERR_INVALID for a bad id or a buffer too small. */
int storage_file_path(storage *st, const char *project, const char *id, char *buf, size_t size)
{
    if (!st || !buf || size == 0 || storage_id_check(id))
        return RT_ERR_INVALID;
    storage_db *db = NULL;
    int err = storage_db_get(st, &db);
    if (!err)
        err = expire_due(st, db);
    if (!err)
        err = storage_file_exists(db, project, id);
    if (err)
        return err;
    int n = snprintf(NULL, 0, "%s/%s", st->files_dir, id);
    if (n < 0 || (size_t)n >= size)
        return RT_ERR_INVALID;
    snprintf(buf, size, "%s/%s", st->files_dir, id);
    return RT_OK;
}

/* See storage.h. The row goes first (one statement, its own transaction);
 * a failed unlink only leaves an orphan blob, which the next open removes,
 * so it is logged and the delete still succeeds. */
int storage_file_delete(storage *st, const char *project, const char *id)
{
    if (!st || storage_id_check(id))
        return RT_ERR_INVALID;
    storage_db *db = NULL;
    storage_stmt *stmt = NULL;
    int err = storage_db_get(st, &db);
    if (!err)
        err = storage_stmt_prepare(db, "DELETE FROM files WHERE id = ?1 AND " IN_PROJECT(2), &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, id);
    bind_project(stmt, 2, project);
    int rc = storage_stmt_step(stmt);
    if (rc != STORAGE_DONE)
        err = rc < 0 ? rc : RT_ERR_DB;
    else if (storage_stmt_changes(stmt) == 0)
        err = RT_ERR_NOT_FOUND;
    storage_stmt_free(stmt);
    if (err)
        return err;
    /* id named a row, so it is a generated id: safe as a name in files/ */
    if (unlinkat(st->files_fd, id, 0) != 0 && errno != ENOENT)
        rt_log(RT_LOG_WARN, "storage: cannot remove files/%s: %s", id, strerror(errno));
    return RT_OK;
}
