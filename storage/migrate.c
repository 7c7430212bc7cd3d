/*
 * storage/migrate.c — brings a database up to the newest schema embedded in
 * the binary (migrations/NNNN_name.sql, see tools/embed_migrations.sh).
 *
 * The schema version is PRAGMA user_version (SQLite) or the one row of
 * retune_schema (PostgreSQL). Each pending migration runs in its own write
 * transaction together with the version bump, so a crash leaves the
 * database at a whole version, and only one connection (thread or process)
 * migrates at a time: the others wait on the write lock (SQLite's
 * busy_timeout) or the migration advisory lock (PostgreSQL, taken when the
 * version is read inside the transaction), re-read the version and find
 * nothing left to do. Migration scripts therefore must not contain their own
 * BEGIN/COMMIT. A migration's text is migrations/NNNN_name.sql for both
 * dialects unless migrations/postgres/NNNN_name.sql gives PostgreSQL its own.
 */
#include "storage/storage_internal.h"

#include <stdio.h>

/* Checks the embedded list (versions positive and strictly increasing, SQL
 * present) and returns the newest version, 0 when there is none. */
static int storage_migrations_newest(int *out)
{
    int prev = 0;
    for (size_t i = 0; i < rt_migration_count; i++) {
        const struct rt_migration *m = &rt_migrations[i];
        if (!m->name || !m->sql || m->version <= prev) {
            rt_log(RT_LOG_ERROR, "storage: embedded migration %zu (%s) is out of order "
                   "or empty", i, m->name ? m->name : "?");
            return RT_ERR_INVALID;
        }
        prev = m->version;
    }
    *out = prev;
    return RT_OK;
}

/* Logs the refusal to touch a database from a newer retune. */
static int storage_migrate_too_new(const char *db_name, int have, int newest)
{
    rt_log(RT_LOG_ERROR, "storage: database %s is at schema version %d, this binary "
           "knows up to %d; upgrade retune", db_name, have, newest);
    return RT_ERR_VERSION;
}

/* The text of m in db's dialect. */
static const char *storage_migration_sql(storage_db *db, const struct rt_migration *m)
{
    return storage_db_dialect(db) == STORAGE_POSTGRES && m->sql_pg ? m->sql_pg : m->sql;
}

/* Applies migration m in one transaction unless the database (re-read under
 * the write lock) already has it. */
static int storage_migration_apply(storage_db *db, const char *db_name,
                                   const struct rt_migration *m, int newest)
{
    int err = storage_db_begin(db, STORAGE_TXN_WRITE);
    if (err)
        return err;
    int have = 0;
    err = storage_db_user_version(db, &have);
    if (err)
        goto rollback;
    if (have > newest) {
        err = storage_migrate_too_new(db_name, have, newest);
        goto rollback;
    }
    if (have >= m->version)
        return storage_db_commit(db); /* someone else applied it */
    err = storage_db_exec(db, storage_migration_sql(db, m));
    if (err) {
        rt_log(RT_LOG_ERROR, "storage: migration %s failed", m->name);
        goto rollback;
    }
    err = storage_db_set_user_version(db, m->version);
    if (!err)
        err = storage_db_commit(db);
    if (err)
        goto rollback;
    rt_log(RT_LOG_INFO, "storage: applied migration %s", m->name);
    return RT_OK;
rollback:
    storage_db_rollback(db);
    return err;
}

/*
 * Migrates the database behind db (a connection of the calling thread) to
 * the newest embedded version. RT_ERR_VERSION, with a message logged, when
 * the database is already newer than this binary knows.
 */
int storage_migrate(storage_db *db, const char *db_name)
{
    int newest = 0, have = 0;
    int err = storage_migrations_newest(&newest);
    if (!err)
        err = storage_db_schema_init(db);
    if (!err)
        err = storage_db_user_version(db, &have);
    if (err)
        return err;
    if (have > newest)
        return storage_migrate_too_new(db_name, have, newest);
    for (size_t i = 0; i < rt_migration_count && !err; i++) {
        if (rt_migrations[i].version > have)
            err = storage_migration_apply(db, db_name, &rt_migrations[i], newest);
    }
    return err;
}
