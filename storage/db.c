/*
 * storage/db.c — per-thread SQLite connections and the few SQL helpers the
 * rest of storage/ uses.
 *
 * The handle is shared by threads; SQLite connections are not. Each thread
 * opens its own connection the first time it calls into storage and keeps it
 * in a pthread key; the connection is closed when the thread exits (the key's
 * destructor) or, for threads still alive, by storage_close. Every connection
 * sits in the handle's list, guarded by conns_lock, for that purpose.
 */
#include "storage/storage_internal.h"

#include <stdlib.h>
#include <string.h>

/* Unlinks c from its handle's list. Takes conns_lock. */
static void storage_conn_unlink(struct storage_conn *c)
{
    storage *st = c->st;
    pthread_mutex_lock(&st->conns_lock);
    for (struct storage_conn **p = &st->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&st->conns_lock);
}

/* Closes one connection and frees its record. Logs, never fails. */
static void storage_conn_free(struct storage_conn *c)
{
    int rc = sqlite3_close_v2(c->db);
    if (rc != SQLITE_OK)
        rt_log(RT_LOG_WARN, "storage: closing connection: %s", sqlite3_errstr(rc));
    free(c);
}

/* pthread key destructor: a thread that used storage is exiting. */
static void storage_conn_destroy(void *p)
{
    struct storage_conn *c = p;
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
    struct storage_conn *c = st->conns;
    st->conns = NULL;
    pthread_mutex_unlock(&st->conns_lock);
    while (c) {
        struct storage_conn *next = c->next;
        storage_conn_free(c);
        c = next;
    }
}

/*
 * Logs a SQLite failure (what = the operation) and maps its result code to
 * an rt_error: busy -> RT_ERR_BUSY, unique key -> RT_ERR_EXISTS, foreign key
 * -> RT_ERR_STATE, check/not-null -> RT_ERR_INVALID, disk -> RT_ERR_IO,
 * anything else -> RT_ERR_DB.
 */
int storage_db_error(sqlite3 *db, int rc, const char *what)
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

/* Prepares one statement; the caller finalizes *out. */
int storage_db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, out, NULL);
    if (rc != SQLITE_OK)
        return storage_db_error(db, rc, "prepare");
    return RT_OK;
}

/*
 * Runs every statement of a fixed, parameterless SQL text in turn (pragmas,
 * transaction control, migration scripts), discarding any rows. Stops at the
 * first failure.
 */
int storage_db_exec(sqlite3 *db, const char *sql)
{
    const char *next = sql;
    while (next && *next) {
        sqlite3_stmt *stmt = NULL;
        int rc = sqlite3_prepare_v2(db, next, -1, &stmt, &next);
        if (rc != SQLITE_OK)
            return storage_db_error(db, rc, "prepare");
        if (!stmt) /* only whitespace or comments left */
            break;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        }
        if (rc != SQLITE_DONE) {
            int err = storage_db_error(db, rc, "exec");
            sqlite3_finalize(stmt);
            return err;
        }
        sqlite3_finalize(stmt);
    }
    return RT_OK;
}

/* Reads PRAGMA user_version, the schema version migrations have reached. */
int storage_db_user_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, "PRAGMA user_version", &stmt);
    if (err)
        return err;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        err = storage_db_error(db, rc, "read user_version");
        goto cleanup;
    }
    *out = sqlite3_column_int(stmt, 0);
cleanup:
    sqlite3_finalize(stmt);
    return err;
}

/* Switches the database to WAL (persistent, so a no-op after the first
 * connection) and checks that it took. */
static int storage_db_wal(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int err = storage_db_prepare(db, "PRAGMA journal_mode=WAL", &stmt);
    if (err)
        return err;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        err = storage_db_error(db, rc, "set journal_mode");
        goto cleanup;
    }
    const char *mode = (const char *)sqlite3_column_text(stmt, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        rt_log(RT_LOG_ERROR, "storage: WAL mode refused (journal_mode=%s)",
               mode ? mode : "?");
        err = RT_ERR_DB;
    }
cleanup:
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
static int storage_db_open(const char *path, sqlite3 **out)
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
    int err = storage_db_wal(db);
    if (!err)
        err = storage_db_exec(db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;");
    if (err) {
        sqlite3_close(db);
        return err;
    }
    *out = db;
    return RT_OK;
}

/*
 * Returns the calling thread's connection for st, opening and registering it
 * on first use. The connection is borrowed: it belongs to the handle and to
 * this thread, and must not be passed to another thread.
 */
int storage_db_get(storage *st, sqlite3 **out)
{
    struct storage_conn *c = pthread_getspecific(st->conn_key);
    if (c) {
        *out = c->db;
        return RT_OK;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return RT_ERR_NOMEM;
    int err = storage_db_open(st->db_path, &c->db);
    if (err)
        goto fail_free;
    c->st = st;
    if (pthread_setspecific(st->conn_key, c) != 0) {
        err = RT_ERR_NOMEM;
        goto fail_close;
    }
    pthread_mutex_lock(&st->conns_lock);
    c->next = st->conns;
    st->conns = c;
    pthread_mutex_unlock(&st->conns_lock);
    *out = c->db;
    return RT_OK;
fail_close:
    sqlite3_close(c->db);
fail_free:
    free(c);
    return err;
}
