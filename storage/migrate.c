/*
 * storage/migrate.c — brings a database up to the newest schema embedded in
 * the binary (migrations/NNNN_name.sql, see tools/embed_migrations.sh).
 *
 * PRAGMA user_version is the schema version. Each pending migration runs in
 * its own BEGIN IMMEDIATE transaction together with the user_version bump,
 * so a crash leaves the database at a whole version, and only one connection
 * (thread or process) migrates at a time: the others wait on the write lock
 * (busy_timeout), re-read the version inside their transaction and find
 * nothing left to do. Migration scripts therefore must not contain their own
 * BEGIN/COMMIT.
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
static int storage_migrate_too_new(const char *db_path, int have, int newest)
{
    rt_log(RT_LOG_ERROR, "storage: database %s is at schema version %d, this binary "
           "knows up to %d; upgrade retune", db_path, have, newest);
    return RT_ERR_VERSION;
}

/* Rolls back the open transaction, if any, after a failure. */
static void storage_migrate_rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        storage_db_exec(db, "ROLLBACK");
}

/* Applies migration m in one transaction unless the database (re-read under
 * the write lock) already has it. */
static int storage_migration_apply(sqlite3 *db, const char *db_path,
                                   const struct rt_migration *m, int newest)
{
    int err = storage_db_exec(db, "BEGIN IMMEDIATE");
    if (err)
        return err;
    int have = 0;
    err = storage_db_user_version(db, &have);
    if (err)
        goto rollback;
    if (have > newest) {
        err = storage_migrate_too_new(db_path, have, newest);
        goto rollback;
    }
    if (have >= m->version)
        return storage_db_exec(db, "COMMIT"); /* someone else applied it */
    err = storage_db_exec(db, m->sql);
    if (err) {
        rt_log(RT_LOG_ERROR, "storage: migration %s failed", m->name);
        goto rollback;
    }
    char bump[64];
    snprintf(bump, sizeof bump, "PRAGMA user_version=%d", m->version);
    err = storage_db_exec(db, bump);
    if (!err)
        err = storage_db_exec(db, "COMMIT");
    if (err)
        goto rollback;
    rt_log(RT_LOG_INFO, "storage: applied migration %s", m->name);
    return RT_OK;
rollback:
    storage_migrate_rollback(db);
    return err;
}

/*
 * Migrates the database behind db (a connection of the calling thread) to
 * the newest embedded version. RT_ERR_VERSION, with a message logged, when
 * the database is already newer than this binary knows.
 */
int storage_migrate(sqlite3 *db, const char *db_path)
{
    int newest = 0, have = 0;
    int err = storage_migrations_newest(&newest);
    if (!err)
        err = storage_db_user_version(db, &have);
    if (err)
        return err;
    if (have > newest)
        return storage_migrate_too_new(db_path, have, newest);
    for (size_t i = 0; i < rt_migration_count && !err; i++) {
        if (rt_migrations[i].version > have)
            err = storage_migration_apply(db, db_path, &rt_migrations[i], newest);
    }
    return err;
}
