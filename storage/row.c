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
static void bind_cols(storage_stmt *stmt, const row_table *t, const void *rec,
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
            storage_stmt_text_n(stmt, ++n, field, strnlen(field, t->cols[i].size));
        else if (t->cols[i].type == ROW_REAL)
            storage_stmt_real(stmt, ++n, *(const double *)field);
        else
            storage_stmt_int(stmt, ++n, *(const int64_t *)field);
    }
}

/* Reads the current row (all columns, in table order) into rec. */
static int read_cols(storage_stmt *stmt, const row_table *t, void *rec)
{
    memset(rec, 0, t->rec_size);
    for (size_t i = 0; i < t->n_cols; i++) {
        char *field = (char *)rec + t->cols[i].offset;
        if (t->cols[i].type == ROW_INT) {
            *(int64_t *)field = storage_stmt_col_int(stmt, (int)i);
            continue;
        }
        if (t->cols[i].type == ROW_REAL) {
            *(double *)field = storage_stmt_col_real(stmt, (int)i);
            continue;
        }
        size_t len = 0;
        const char *s = storage_stmt_col_text(stmt, (int)i, &len);
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

/* Runs a statement that returns no rows and frees it; *changes (may be
 * NULL) gets the number of rows it changed. */
static int run(storage_stmt *stmt, int64_t *changes)
{
    int rc = storage_stmt_step(stmt);
    int err = rc == STORAGE_DONE ? RT_OK : rc < 0 ? rc : RT_ERR_DB;
    if (!err && changes)
        *changes = storage_stmt_changes(stmt);
    storage_stmt_free(stmt);
    return err;
}

int row_insert(storage_db *db, const row_table *t, const void *rec)
{
    char sql[SQL_MAX], cols[COLS_MAX] = "", marks[COLS_MAX] = "";
    int n = 0;
    append_cols(cols, sizeof cols, t, NULL, false, &n);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(marks);
        snprintf(marks + len, sizeof marks - len, "%s?%d", i ? ", " : "", i + 1);
    }
    snprintf(sql, sizeof sql, "INSERT INTO %s (%s) VALUES (%s)", t->name, cols, marks);
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    bind_cols(stmt, t, rec, NULL);
    return run(stmt, NULL);
}

int row_update(storage_db *db, const row_table *t, const void *rec, const char *const *skip)
{
    char sql[SQL_MAX], sets[COLS_MAX] = "";
    int n = 0;
    append_cols(sets, sizeof sets, t, skip, true, &n);
    snprintf(sql, sizeof sql, "UPDATE %s SET %s WHERE %s = ?%d", t->name, sets, t->cols[0].name, n + 1);
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    bind_cols(stmt, t, rec, skip);
    storage_stmt_text(stmt, n + 1, (const char *)rec + t->cols[0].offset);
    int64_t changed = 0;
    err = run(stmt, &changed);
    if (!err && changed == 0)
        err = RT_ERR_NOT_FOUND;
    return err;
}

/* The newest row meeting where, locked for the caller's transaction when
 * lock (see row_lock). */
static int get_where(storage_db *db, const row_table *t, const char *where, const char *const *args,
                     int n_args, bool lock, void *rec)
{
    char sql[SQL_MAX], cols[COLS_MAX] = "";
    int n = 0;
    append_cols(cols, sizeof cols, t, NULL, false, &n);
    if (snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE %s ORDER BY seq DESC LIMIT 1%s", cols,
                 t->name, where, lock ? storage_db_for_update(db) : "") >= (int)sizeof sql)
        return RT_ERR_INVALID;
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    for (int i = 0; i < n_args; i++)
        storage_stmt_text(stmt, 1 + i, args[i]);
    int rc = storage_stmt_step(stmt);
    if (rc == STORAGE_ROW)
        err = read_cols(stmt, t, rec);
    else
        err = rc == STORAGE_DONE ? RT_ERR_NOT_FOUND : rc;
    storage_stmt_free(stmt);
    return err;
}

/* The record whose column key equals value, locked for update or not. */
static int get_by_key(storage_db *db, const row_table *t, const char *key, const char *value,
                      bool lock, void *rec)
{
    char where[256];
    if (snprintf(where, sizeof where, "%s = ?1", key) >= (int)sizeof where)
        return RT_ERR_INVALID;
    const char *args[1] = {value};
    return get_where(db, t, where, args, 1, lock, rec);
}

int row_get(storage_db *db, const row_table *t, const char *key, const char *value, void *rec)
{
    return get_by_key(db, t, key, value, false, rec);
}

int row_lock(storage_db *db, const row_table *t, const char *key, const char *value, void *rec)
{
    return get_by_key(db, t, key, value, true, rec);
}

int row_get_where(storage_db *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, void *rec)
{
    return get_where(db, t, where, args, n_args, false, rec);
}

int row_seq_where(storage_db *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, int64_t *seq)
{
    char sql[SQL_MAX];
    if (snprintf(sql, sizeof sql, "SELECT seq FROM %s WHERE %s ORDER BY seq DESC LIMIT 1", t->name,
                 where) >= (int)sizeof sql)
        return RT_ERR_INVALID;
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    for (int i = 0; i < n_args; i++)
        storage_stmt_text(stmt, 1 + i, args[i]);
    int rc = storage_stmt_step(stmt);
    if (rc == STORAGE_ROW)
        *seq = storage_stmt_col_int(stmt, 0);
    else
        err = rc == STORAGE_DONE ? RT_ERR_NOT_FOUND : rc;
    storage_stmt_free(stmt);
    return err;
}

/* Up to limit rows past the bound (seq < bound newest first, or seq > bound
 * oldest first), filtered by where; see row_list_below. */
static int row_list(storage_db *db, const row_table *t, const char *where, const char *const *args,
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
    storage_stmt *stmt = NULL;
    int err = storage_stmt_prepare(db, sql, &stmt);
    if (err)
        return err;
    storage_stmt_int(stmt, 1, bound);
    storage_stmt_int(stmt, 2, (int64_t)limit + 1);
    for (int i = 0; i < n_args; i++)
        storage_stmt_text(stmt, 3 + i, args[i]);
    char *recs = calloc((size_t)limit + 1, t->rec_size);
    size_t got = 0;
    int rc = STORAGE_ROW;
    while (!err && recs && (rc = storage_stmt_step(stmt)) == STORAGE_ROW)
        err = read_cols(stmt, t, recs + got++ * t->rec_size);
    if (!recs)
        err = RT_ERR_NOMEM;
    else if (!err && rc != STORAGE_DONE)
        err = rc < 0 ? rc : RT_ERR_DB;
    storage_stmt_free(stmt);
    if (err) {
        free(recs);
        return err;
    }
    *has_more = got > (size_t)limit;
    *count = got > (size_t)limit ? (size_t)limit : got;
    *out = recs;
    return RT_OK;
}

int row_list_below(storage_db *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t below, int limit, void **out, size_t *count,
                   bool *has_more)
{
    return row_list(db, t, where, args, n_args, below, false, limit, out, count, has_more);
}

int row_list_above(storage_db *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t above, int limit, void **out, size_t *count,
                   bool *has_more)
{
    return row_list(db, t, where, args, n_args, above, true, limit, out, count, has_more);
}
