/*
 * storage/row.c — generic insert, update, get and list over column tables
 * (storage/row.h). SQL is built from the table description, never from user
 * input; values are always bound.
 */
#include "storage/row.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SQL_MAX 8192   /* a whole statement */
#define COLS_MAX 2048  /* its column list */

/* Appends "a, b, c" (or "a = ?1, ...") of the columns not skipped to sql. */
static void append_cols(char *sql, size_t size, const row_table *t, const char *const *skip,
                        bool assign, int *n_bound)
{
    int n = 0;
    for (size_t i = 0; i < t->n_cols; i++) {
        bool skipped = false;
        for (const char *const *s = skip; s && *s; s++)
            skipped = skipped || strcmp(*s, t->cols[i].name) == 0;
        if (skipped)
            continue;
        size_t len = strlen(sql);
        if (assign)
            snprintf(sql + len, size - len, "%s%s = ?%d", n ? ", " : "", t->cols[i].name, n + 1);
        else
            snprintf(sql + len, size - len, "%s%s", n ? ", " : "", t->cols[i].name);
        n++;
    }
    *n_bound = n;
}

/* Binds the non-skipped columns of rec as ?1..?n. */
static void bind_cols(sqlite3_stmt *stmt, const row_table *t, const void *rec,
                      const char *const *skip)
{
    int n = 0;
    for (size_t i = 0; i < t->n_cols; i++) {
        bool skipped = false;
        for (const char *const *s = skip; s && *s; s++)
            skipped = skipped || strcmp(*s, t->cols[i].name) == 0;
        if (skipped)
            continue;
        const char *field = (const char *)rec + t->cols[i].offset;
        if (t->cols[i].type == ROW_TEXT)
            sqlite3_bind_text(stmt, ++n, field, (int)strnlen(field, t->cols[i].size), SQLITE_STATIC);
        else if (t->cols[i].type == ROW_REAL)
            sqlite3_bind_double(stmt, ++n, *(const double *)field);
        else
            sqlite3_bind_int64(stmt, ++n, *(const int64_t *)field);
    }
}

/* Reads the current row (all columns, in table order) into rec. */
static int read_cols(sqlite3_stmt *stmt, const row_table *t, void *rec)
{
    memset(rec, 0, t->rec_size);
    for (size_t i = 0; i < t->n_cols; i++) {
        char *field = (char *)rec + t->cols[i].offset;
        if (t->cols[i].type == ROW_INT) {
            *(int64_t *)field = sqlite3_column_int64(stmt, (int)i);
            continue;
        }
        if (t->cols[i].type == ROW_REAL) {
            *(double *)field = sqlite3_column_double(stmt, (int)i);
            continue;
        }
        const unsigned char *s = sqlite3_column_text(stmt, (int)i);
        size_t len = (size_t)sqlite3_column_bytes(stmt, (int)i);
        if (len >= t->cols[i].size) {
            rt_log(RT_LOG_ERROR, "storage: %s.%s too long (%zu bytes)", t->name, t->cols[i].name, len);
            return RT_ERR_DB;
        }
        if (s)
            memcpy(field, s, len);
        field[len] = '\0';
    }
    return RT_OK;
}

/* Runs a statement that returns no rows. */
static int run(sqlite3 *db, sqlite3_stmt *stmt, const char *what)
{
    int rc = sqlite3_step(stmt);
    int err = rc == SQLITE_DONE ? RT_OK : storage_db_error(db, rc, what);
    sqlite3_finalize(stmt);
    return err;
}

int row_insert(sqlite3 *db, const row_table *t, const void *rec)
{
    char sql[SQL_MAX], cols[COLS_MAX] = "", marks[COLS_MAX] = "";
    int n = 0;
    append_cols(cols, sizeof cols, t, NULL, false, &n);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(marks);
        snprintf(marks + len, sizeof marks - len, "%s?%d", i ? ", " : "", i + 1);
    }
    snprintf(sql, sizeof sql, "INSERT INTO %s (%s) VALUES (%s)", t->name, cols, marks);
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, sql, &stmt);
    if (err)
        return err;
    bind_cols(stmt, t, rec, NULL);
    return run(db, stmt, "insert");
}

int row_update(sqlite3 *db, const row_table *t, const void *rec, const char *const *skip)
{
    char sql[SQL_MAX], sets[COLS_MAX] = "";
    int n = 0;
    append_cols(sets, sizeof sets, t, skip, true, &n);
    snprintf(sql, sizeof sql, "UPDATE %s SET %s WHERE %s = ?%d", t->name, sets, t->cols[0].name, n + 1);
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, sql, &stmt);
    if (err)
        return err;
    bind_cols(stmt, t, rec, skip);
    sqlite3_bind_text(stmt, n + 1, (const char *)rec + t->cols[0].offset, -1, SQLITE_STATIC);
    err = run(db, stmt, "update");
    if (!err && sqlite3_changes(db) == 0)
        err = RT_ERR_NOT_FOUND;
    return err;
}

int row_get(sqlite3 *db, const row_table *t, const char *key, const char *value, void *rec)
{
    char where[256];
    if (snprintf(where, sizeof where, "%s = ?1", key) >= (int)sizeof where)
        return RT_ERR_INVALID;
    const char *args[1] = {value};
    return row_get_where(db, t, where, args, 1, rec);
}

int row_get_where(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, void *rec)
{
    char sql[SQL_MAX], cols[COLS_MAX] = "";
    int n = 0;
    append_cols(cols, sizeof cols, t, NULL, false, &n);
    if (snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE %s ORDER BY seq DESC LIMIT 1", cols,
                 t->name, where) >= (int)sizeof sql)
        return RT_ERR_INVALID;
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, sql, &stmt);
    if (err)
        return err;
    for (int i = 0; i < n_args; i++)
        sqlite3_bind_text(stmt, 1 + i, args[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        err = read_cols(stmt, t, rec);
    else
        err = rc == SQLITE_DONE ? RT_ERR_NOT_FOUND : storage_db_error(db, rc, "get");
    sqlite3_finalize(stmt);
    return err;
}

int row_seq_where(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, int64_t *seq)
{
    char sql[SQL_MAX];
    if (snprintf(sql, sizeof sql, "SELECT seq FROM %s WHERE %s ORDER BY seq DESC LIMIT 1", t->name,
                 where) >= (int)sizeof sql)
        return RT_ERR_INVALID;
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, sql, &stmt);
    if (err)
        return err;
    for (int i = 0; i < n_args; i++)
        sqlite3_bind_text(stmt, 1 + i, args[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        *seq = sqlite3_column_int64(stmt, 0);
    else
        err = rc == SQLITE_DONE ? RT_ERR_NOT_FOUND : storage_db_error(db, rc, "seq");
    sqlite3_finalize(stmt);
    return err;
}

/* Up to limit rows past the bound (seq < bound newest first, or seq > bound
 * oldest first), filtered by where; see row_list_below. */
static int row_list(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                    int n_args, int64_t bound, bool oldest_first, int limit, void **out, size_t *count,
                    bool *has_more)
{
    if (limit < 1 || limit > STORAGE_LIST_LIMIT_MAX || n_args < 0 || (n_args && !where))
        return RT_ERR_INVALID;
    char sql[SQL_MAX], cols[COLS_MAX] = "";
    int n = 0;
    append_cols(cols, sizeof cols, t, NULL, false, &n);
    if (snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE seq %s ?1%s%s ORDER BY seq %s LIMIT ?2",
                 cols, t->name, oldest_first ? ">" : "<", where ? " AND " : "", where ? where : "",
                 oldest_first ? "ASC" : "DESC") >= (int)sizeof sql)
        return RT_ERR_INVALID;
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, sql, &stmt);
    if (err)
        return err;
    sqlite3_bind_int64(stmt, 1, bound);
    sqlite3_bind_int(stmt, 2, limit + 1);
    for (int i = 0; i < n_args; i++)
        sqlite3_bind_text(stmt, 3 + i, args[i], -1, SQLITE_STATIC);
    char *recs = calloc((size_t)limit + 1, t->rec_size);
    size_t got = 0;
    int rc = SQLITE_ROW;
    while (!err && recs && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
        err = read_cols(stmt, t, recs + got++ * t->rec_size);
    if (!recs)
        err = RT_ERR_NOMEM;
    else if (!err && rc != SQLITE_DONE)
        err = storage_db_error(db, rc, "list");
    sqlite3_finalize(stmt);
    if (err) {
        free(recs);
        return err;
    }
    *has_more = got > (size_t)limit;
    *count = got > (size_t)limit ? (size_t)limit : got;
    *out = recs;
    return RT_OK;
}

int row_list_below(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t below, int limit, void **out, size_t *count,
                   bool *has_more)
{
    return row_list(db, t, where, args, n_args, below, false, limit, out, count, has_more);
}

int row_list_above(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t above, int limit, void **out, size_t *count,
                   bool *has_more)
{
    return row_list(db, t, where, args, n_args, above, true, limit, out, count, has_more);
}
