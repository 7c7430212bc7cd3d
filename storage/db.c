/*
 * storage/db.c — per-thread database connections and the one statement
 * interface the rest of storage/ uses, over either backend (db_sqlite.c,
 * db_pg.c; the handle's ops say which).
 *
 * The handle is shared by threads; connections are not (SQLite's and
 * libpq's alike). Each thread opens its own connection the first time it
 * calls into storage and keeps it in a pthread key; the connection is closed
 * when the thread exits (the key's destructor) or, for threads still alive,
 * by storage_close. Every connection sits in the handle's list, guarded by
 * conns_lock, for that purpose.
 */
#include "storage/storage_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Unlinks c from its handle's list. Takes conns_lock. */
static void storage_conn_unlink(storage_db *c)
{
    storage *st = c->st;
    pthread_mutex_lock(&st->conns_lock);
    for (storage_db **p = &st->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&st->conns_lock);
}

/* Closes one connection and frees its record. Never fails. */
static void storage_conn_free(storage_db *c)
{
    c->ops->close(c->conn);
    free(c);
}

/* pthread key destructor: a thread that used storage is exiting. */
static void storage_conn_destroy(void *p)
{
    storage_db *c = p;
    storage_conn_unlink(c);
    storage_conn_free(c);
}

/* Creates the handle's per-thread connection key. */
int storage_conn_key_init(storage *st)
{
    if (pthread_key_create(&st->conn_key, storage_conn_destroy) != 0) {
        rt_log(RT_LOG_ERROR, "storage: pthread_key_create failed");
        return RT_ERR_NOMEM;
    }
    st->key_made = true;
    return RT_OK;
}

/* Closes every connection of the handle, whichever thread opened it, and
 * deletes the key (so no destructor runs later). Only when no thread is
 * still using the handle. */
void storage_conns_close(storage *st)
{
    if (st->key_made) {
        pthread_key_delete(st->conn_key);
        st->key_made = false;
    }
    pthread_mutex_lock(&st->conns_lock);
    storage_db *c = st->conns;
    st->conns = NULL;
    pthread_mutex_unlock(&st->conns_lock);
    while (c) {
        storage_db *next = c->next;
        storage_conn_free(c);
        c = next;
    }
}

/*
 * Returns the calling thread's connection for st, opening and registering it
 * on first use (and reconnecting one the server dropped, PostgreSQL). The
 * connection is borrowed: it belongs to the handle and to this thread, and
 * must not be passed to another thread.
 */
int storage_db_get(storage *st, storage_db **out)
{
    storage_db *c = pthread_getspecific(st->conn_key);
    if (c) {
        int err = c->ops->check(c->conn);
        if (!err)
            *out = c;
        return err;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return RT_ERR_NOMEM;
    c->st = st;
    c->ops = st->ops;
    int err = c->ops->open(st->target, &c->conn);
    if (err)
        goto fail_free;
    if (pthread_setspecific(st->conn_key, c) != 0) {
        err = RT_ERR_NOMEM;
        goto fail_close;
    }
    pthread_mutex_lock(&st->conns_lock);
    c->next = st->conns;
    st->conns = c;
    pthread_mutex_unlock(&st->conns_lock);
    *out = c;
    return RT_OK;
fail_close:
    c->ops->close(c->conn);
fail_free:
    free(c);
    return err;
}

enum storage_dialect storage_db_dialect(const storage_db *db)
{
    return db->ops->dialect;
}

/* Runs a fixed, parameterless SQL text (one or more statements: pragmas,
 * transaction control, migration scripts), discarding any rows. Stops at
 * the first failure, which is logged and returned as an rt_error. */
int storage_db_exec(storage_db *db, const char *sql)
{
    return db->ops->exec(db->conn, sql);
}

/* The first column of the one row a fixed, parameterless query returns
 * (a count, a version). RT_ERR_DB when it returns no row; *out is then
 * untouched. */
int storage_db_query_int(storage_db *db, const char *sql, int64_t *out)
{
    storage_stmt *s = NULL;
    int err = storage_stmt_prepare(db, sql, &s);
    if (err)
        return err;
    int rc = storage_stmt_step(s);
    if (rc == STORAGE_ROW)
        *out = storage_stmt_col_int(s, 0);
    else
        err = rc < 0 ? rc : RT_ERR_DB;
    storage_stmt_free(s);
    return err;
}

/* Starts a transaction (see enum storage_txn). SQLite: BEGIN IMMEDIATE
 * takes the write lock now, so a read-then-write cannot lose a race;
 * PostgreSQL: READ COMMITTED, and the rows read to be changed are locked
 * (storage_db_for_update). A read snapshot is a deferred BEGIN (SQLite) or
 * REPEATABLE READ, READ ONLY (PostgreSQL). */
int storage_db_begin(storage_db *db, enum storage_txn kind)
{
    static const char *const sql[2][2] = {
        [STORAGE_SQLITE] = {[STORAGE_TXN_WRITE] = "BEGIN IMMEDIATE", [STORAGE_TXN_READ] = "BEGIN"},
        [STORAGE_POSTGRES] = {[STORAGE_TXN_WRITE] = "BEGIN",
                              [STORAGE_TXN_READ] = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"},
    };
    return storage_db_exec(db, sql[db->ops->dialect][kind]);
}

int storage_db_commit(storage_db *db)
{
    return storage_db_exec(db, "COMMIT");
}

/* Rolls back the open transaction, if there is one. */
void storage_db_rollback(storage_db *db)
{
    if (db->ops->in_txn(db->conn))
        storage_db_exec(db, "ROLLBACK");
}

/* What ends a SELECT of rows the transaction will change: " FOR UPDATE"
 * on PostgreSQL (a row lock), nothing on SQLite (whose write transaction
 * already excludes every other writer). */
const char *storage_db_for_update(const storage_db *db)
{
    return db->ops->dialect == STORAGE_POSTGRES ? " FOR UPDATE" : "";
}

/* The lock every migration of a PostgreSQL database takes (an arbitrary
 * constant: "retune" in ASCII). */
#define STORAGE_PG_MIGRATE_LOCK "126943360249445"

/* Makes sure the schema version can be read. SQLite: always (PRAGMA
 * user_version). PostgreSQL: the one-row table retune_schema, created under
 * the migration lock so that two processes opening a new database at once
 * do not both create it. */
int storage_db_schema_init(storage_db *db)
{
    if (db->ops->dialect == STORAGE_SQLITE)
        return RT_OK;
    return storage_db_exec(db, "BEGIN; SELECT pg_advisory_xact_lock(" STORAGE_PG_MIGRATE_LOCK ");"
                               "CREATE TABLE IF NOT EXISTS retune_schema (version INTEGER NOT NULL);"
                               "COMMIT");
}

/* Reads the schema version migrations have reached into *out. Inside a
 * write transaction on PostgreSQL it first takes the migration lock, so the
 * version read is the one this transaction may move on from. */
int storage_db_user_version(storage_db *db, int *out)
{
    bool pg = db->ops->dialect == STORAGE_POSTGRES;
    if (pg && db->ops->in_txn(db->conn)) {
        int err = storage_db_exec(db, "SELECT pg_advisory_xact_lock(" STORAGE_PG_MIGRATE_LOCK ")");
        if (err)
            return err;
    }
    int64_t version = 0;
    int err = storage_db_query_int(db, pg ? "SELECT COALESCE(MAX(version), 0) FROM retune_schema"
                                          : "PRAGMA user_version", &version);
    if (!err)
        *out = (int)version;
    return err;
}

/* Sets the schema version (inside the caller's transaction, if any). */
int storage_db_set_user_version(storage_db *db, int version)
{
    char sql[128];
    if (db->ops->dialect == STORAGE_SQLITE)
        snprintf(sql, sizeof sql, "PRAGMA user_version=%d", version);
    else
        snprintf(sql, sizeof sql, "DELETE FROM retune_schema; INSERT INTO retune_schema VALUES (%d)",
                 version);
    return storage_db_exec(db, sql);
}

/* ---- statements --------------------------------------------------------- */

/* Prepares one statement of sql (?N placeholders); the caller frees *out
 * with storage_stmt_free. Errors are logged. */
int storage_stmt_prepare(storage_db *db, const char *sql, storage_stmt **out)
{
    return db->ops->prepare(db, sql, out);
}

/* Binds text (copied; NULL: SQL NULL) to ?i. */
void storage_stmt_text(storage_stmt *s, int i, const char *text)
{
    if (!text)
        s->db->ops->bind(s, i, STORAGE_BIND_NULL, NULL, 0, 0, 0);
    else
        s->db->ops->bind(s, i, STORAGE_BIND_TEXT, text, strlen(text), 0, 0);
}

/* Binds the first len bytes of text (copied) to ?i. */
void storage_stmt_text_n(storage_stmt *s, int i, const char *text, size_t len)
{
    s->db->ops->bind(s, i, STORAGE_BIND_TEXT, text, len, 0, 0);
}

void storage_stmt_int(storage_stmt *s, int i, int64_t v)
{
    s->db->ops->bind(s, i, STORAGE_BIND_INT, NULL, 0, v, 0);
}

void storage_stmt_real(storage_stmt *s, int i, double v)
{
    s->db->ops->bind(s, i, STORAGE_BIND_REAL, NULL, 0, 0, v);
}

/* Runs the statement (first call) or moves to its next row: STORAGE_ROW
 * with a row to read, STORAGE_DONE when there is none left, or a negative
 * rt_error (logged): RT_ERR_EXISTS for a unique key, RT_ERR_STATE for a
 * foreign key, RT_ERR_INVALID for a check, RT_ERR_BUSY for a lock, ... */
int storage_stmt_step(storage_stmt *s)
{
    return s->db->ops->step(s);
}

/* Column i of the current row as text (NULL for SQL NULL), valid until the
 * next step, reset or free; *len (may be NULL) gets its length in bytes. */
const char *storage_stmt_col_text(storage_stmt *s, int i, size_t *len)
{
    size_t n = 0;
    const char *t = s->db->ops->col_text(s, i, &n);
    if (len)
        *len = n;
    return t;
}

int64_t storage_stmt_col_int(storage_stmt *s, int i)
{
    return s->db->ops->col_int(s, i);
}

double storage_stmt_col_real(storage_stmt *s, int i)
{
    return s->db->ops->col_real(s, i);
}

/* Rows the statement inserted, updated or deleted (after it is done). */
int64_t storage_stmt_changes(storage_stmt *s)
{
    return s->db->ops->changes(s);
}

/* Makes the statement runnable again; its bindings stay. */
void storage_stmt_reset(storage_stmt *s)
{
    s->db->ops->reset(s);
}

/* Frees a statement. Accepts NULL. */
void storage_stmt_free(storage_stmt *s)
{
    if (s)
        s->db->ops->finalize(s);
}
