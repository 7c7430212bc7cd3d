/*
 * storage/db_sqlite.c — the SQLite backend of storage's statement interface
 * (storage_internal.h): one connection per thread, WAL mode, busy_timeout,
 * foreign keys on, synchronous=FULL. The SQL text is SQLite's own: ?N
 * placeholders are native here.
 */
#include "storage/storage_internal.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

typedef struct sqlite_stmt {
    storage_stmt base;
    sqlite3_stmt *s;
} sqlite_stmt;

/*
 * Logs a SQLite failure (what = the operation) and maps its result code to
 * an rt_error: busy -> RT_ERR_BUSY, unique key -> RT_ERR_EXISTS, foreign key
 * -> RT_ERR_STATE, check/not-null -> RT_ERR_INVALID, disk -> RT_ERR_IO,
 * anything else -> RT_ERR_DB.
 */
static int sqlite_error(sqlite3 *db, int rc, const char *what)
{
    rt_log(RT_LOG_ERROR, "storage: %s: %s (sqlite %d)", what,
           db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return RT_ERR_BUSY;
    case SQLITE_NOMEM: return RT_ERR_NOMEM;
    case SQLITE_IOERR:
    case SQLITE_FULL: return RT_ERR_IO;
    case SQLITE_TOOBIG: return RT_ERR_TOO_LARGE;
    case SQLITE_CONSTRAINT: break;
    default: return RT_ERR_DB;
    }
    switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY: return RT_ERR_EXISTS;
    case SQLITE_CONSTRAINT_FOREIGNKEY: return RT_ERR_STATE;
    case SQLITE_CONSTRAINT_CHECK:
    case SQLITE_CONSTRAINT_NOTNULL: return RT_ERR_INVALID;
    default: return RT_ERR_DB;
    }
}

/* Runs every statement of a parameterless SQL text in turn, discarding any
 * rows. Stops at the first failure. */
static int sqlite_exec(void *conn, const char *sql)
{
    sqlite3 *db = conn;
    const char *next = sql;
    while (next && *next) {
        sqlite3_stmt *stmt = NULL;
        int rc = sqlite3_prepare_v2(db, next, -1, &stmt, &next);
        if (rc != SQLITE_OK)
            return sqlite_error(db, rc, "prepare");
        if (!stmt) /* only whitespace or comments left */
            break;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        }
        sqlite3_finalize(stmt);
        if (rc != SQLITE_DONE)
            return sqlite_error(db, rc, "exec");
    }
    return RT_OK;
}

/* Switches the database to WAL (persistent, so a no-op after the first
 * connection) and checks that it took. */
static int sqlite_wal(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return sqlite_error(db, rc, "prepare");
    int err = RT_OK;
    rc = sqlite3_step(stmt);
    const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(stmt, 0) : NULL;
    if (rc != SQLITE_ROW) {
        err = sqlite_error(db, rc, "set journal_mode");
    } else if (!mode || strcmp(mode, "wal") != 0) {
        rt_log(RT_LOG_ERROR, "storage: WAL mode refused (journal_mode=%s)", mode ? mode : "?");
        err = RT_ERR_DB;
    }
    sqlite3_finalize(stmt);
    return err;
}

/*
 * Opens one connection to path, configured as every storage connection is:
 * WAL, busy_timeout, foreign keys on, synchronous=FULL. FULL rather than
 * NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
 * lost files row would turn an upload the client saw succeed into an orphan
 * blob that the next open deletes. Our write rate is low; one WAL fsync per
 * commit is cheap. The caller closes *out.
 */
static int sqlite_open(const char *path, void **out)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        rt_log(RT_LOG_ERROR, "storage: cannot open %s: %s", path,
               db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return rc == SQLITE_NOMEM ? RT_ERR_NOMEM : RT_ERR_DB;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, STORAGE_BUSY_TIMEOUT_MS);
    int err = sqlite_wal(db);
    if (!err)
        err = sqlite_exec(db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;");
    if (err) {
        sqlite3_close(db);
        return err;
    }
    *out = db;
    return RT_OK;
}

/* Closes a connection. Logs, never fails. */
static void sqlite_close(void *conn)
{
    int rc = sqlite3_close_v2(conn);
    if (rc != SQLITE_OK)
        rt_log(RT_LOG_WARN, "storage: closing connection: %s", sqlite3_errstr(rc));
}

/* A file connection never needs reconnecting. */
static int sqlite_check(void *conn)
{
    (void)conn;
    return RT_OK;
}

static bool sqlite_in_txn(void *conn)
{
    return !sqlite3_get_autocommit(conn);
}

static int sqlite_prepare(storage_db *db, const char *sql, storage_stmt **out)
{
    sqlite_stmt *s = calloc(1, sizeof *s);
    if (!s)
        return RT_ERR_NOMEM;
    int rc = sqlite3_prepare_v2(db->conn, sql, -1, &s->s, NULL);
    if (rc != SQLITE_OK) {
        free(s);
        return sqlite_error(db->conn, rc, "prepare");
    }
    s->base.db = db;
    *out = &s->base;
    return RT_OK;
}

static void sqlite_bind(storage_stmt *base, int i, int type, const char *text, size_t len,
                        int64_t n, double r)
{
    sqlite3_stmt *s = ((sqlite_stmt *)base)->s;
    if (type == STORAGE_BIND_TEXT)
        sqlite3_bind_text(s, i, text, (int)len, SQLITE_TRANSIENT);
    else if (type == STORAGE_BIND_INT)
        sqlite3_bind_int64(s, i, n);
    else if (type == STORAGE_BIND_REAL)
        sqlite3_bind_double(s, i, r);
    else
        sqlite3_bind_null(s, i);
}

static int sqlite_step(storage_stmt *base)
{
    int rc = sqlite3_step(((sqlite_stmt *)base)->s);
    if (rc == SQLITE_ROW)
        return STORAGE_ROW;
    if (rc == SQLITE_DONE)
        return STORAGE_DONE;
    return sqlite_error(base->db->conn, rc, "step");
}

static const char *sqlite_col_text(storage_stmt *base, int i, size_t *len)
{
    sqlite3_stmt *s = ((sqlite_stmt *)base)->s;
    const char *t = (const char *)sqlite3_column_text(s, i);
    *len = (size_t)sqlite3_column_bytes(s, i);
    return t;
}

static int64_t sqlite_col_int(storage_stmt *base, int i)
{
    return sqlite3_column_int64(((sqlite_stmt *)base)->s, i);
}

static double sqlite_col_real(storage_stmt *base, int i)
{
    return sqlite3_column_double(((sqlite_stmt *)base)->s, i);
}

static int64_t sqlite_changes(storage_stmt *base)
{
    return sqlite3_changes(base->db->conn);
}

static void sqlite_reset(storage_stmt *base)
{
    sqlite3_reset(((sqlite_stmt *)base)->s);
}

static void sqlite_finalize(storage_stmt *base)
{
    sqlite3_finalize(((sqlite_stmt *)base)->s);
    free(base);
}

const struct storage_db_ops storage_sqlite_ops = {
    .dialect = STORAGE_SQLITE, .open = sqlite_open, .close = sqlite_close, .check = sqlite_check,
    .exec = sqlite_exec, .in_txn = sqlite_in_txn, .prepare = sqlite_prepare, .bind = sqlite_bind,
    .step = sqlite_step, .col_text = sqlite_col_text, .col_int = sqlite_col_int,
    .col_real = sqlite_col_real, .changes = sqlite_changes, .reset = sqlite_reset,
    .finalize = sqlite_finalize,
};
