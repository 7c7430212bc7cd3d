/*
 * storage/storage.c — the storage handle: opening a data directory (folders,
 * database, migrations, crash clean-up), closing it, and the schema version.
 * Which database: SQLite (the default, <data-dir>/retune.db, or
 * "sqlite:PATH") or PostgreSQL (a libpq connection string). Connections
 * live in db.c and its backends, blobs in blob.c, file records in file.c.
 */
#include "storage/storage_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Creates one directory, accepting one that already exists. */
static int storage_mkdir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return RT_OK;
    rt_log(RT_LOG_ERROR, "storage: mkdir %s: %s", path, strerror(errno));
    return RT_ERR_IO;
}

/* Creates path and any missing parents (like mkdir -p). */
static int storage_mkdir_parents(const char *path)
{
    char buf[STORAGE_DIR_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int err = storage_mkdir(buf);
        *p = '/';
        if (err)
            return err;
    }
    return storage_mkdir(buf);
}

/* Whether database starts with prefix. */
static bool has_prefix(const char *database, const char *prefix)
{
    return strncmp(database, prefix, strlen(prefix)) == 0;
}

/*
 * Picks the backend and target for database (see storage_open_database):
 * NULL or "" is SQLite at <dir>/retune.db; "sqlite:PATH" SQLite at PATH;
 * "postgres://", "postgresql://" or a key=value string PostgreSQL (the
 * string is checked by libpq here, connected later). RT_ERR_INVALID, logged
 * without echoing the string (it may hold a password), otherwise.
 */
static int storage_target_init(storage *st, const char *database)
{
    if (!database || !*database) {
        st->ops = &storage_sqlite_ops;
        snprintf(st->target, sizeof st->target, "%s/retune.db", st->dir);
    } else if (has_prefix(database, "sqlite:")) {
        st->ops = &storage_sqlite_ops;
        if (!database[7] || snprintf(st->target, sizeof st->target, "%s", database + 7) >=
                                (int)sizeof st->target) {
            rt_log(RT_LOG_ERROR, "storage: sqlite:PATH needs a path (of at most %d bytes)",
                   STORAGE_TARGET_MAX - 1);
            return RT_ERR_INVALID;
        }
    } else if (has_prefix(database, "postgres://") || has_prefix(database, "postgresql://") ||
               strchr(database, '=')) {
        st->ops = &storage_pg_ops;
        if (snprintf(st->target, sizeof st->target, "%s", database) >= (int)sizeof st->target) {
            rt_log(RT_LOG_ERROR, "storage: the PostgreSQL connection string is too long");
            return RT_ERR_INVALID;
        }
        return storage_pg_check_target(st->target);
    } else {
        rt_log(RT_LOG_ERROR, "storage: unknown database: expected sqlite:PATH, "
               "postgres://USER@HOST/DB or a libpq key=value connection string");
        return RT_ERR_INVALID;
    }
    snprintf(st->db_name, sizeof st->db_name, "%s", st->target);
    return RT_OK;
}

/* Checks data_dir, fills in the handle's paths and creates the folders. */
static int storage_paths_init(storage *st, const char *data_dir)
{
    size_t len = strnlen(data_dir, STORAGE_DIR_MAX);
    if (len == 0 || len >= STORAGE_DIR_MAX) {
        rt_log(RT_LOG_ERROR, "storage: data directory path is empty or too long");
        return RT_ERR_INVALID;
    }
    memcpy(st->dir, data_dir, len + 1);
    snprintf(st->files_dir, sizeof st->files_dir, "%s/files", st->dir);
    int err = storage_mkdir_parents(st->dir);
    if (!err)
        err = storage_mkdir(st->files_dir);
    if (err)
        return err;
    st->files_fd = open(st->files_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->files_fd < 0) {
        rt_log(RT_LOG_ERROR, "storage: open %s: %s", st->files_dir, strerror(errno));
        return RT_ERR_IO;
    }
    return RT_OK;
}

/* See storage.h. */
int storage_open(const char *data_dir, storage **out)
{
    return storage_open_database(data_dir, NULL, out);
}

/* See storage.h. Order: the database's kind, folders, this thread's
 * connection, migrations, then clean-up (which needs the files table). */
int storage_open_database(const char *data_dir, const char *database, storage **out)
{
    if (!data_dir || !out)
        return RT_ERR_INVALID;
    storage *st = calloc(1, sizeof *st);
    if (!st)
        return RT_ERR_NOMEM;
    st->files_fd = -1;
    snprintf(st->db_name, sizeof st->db_name, "(the PostgreSQL database)");
    if (pthread_mutex_init(&st->conns_lock, NULL) != 0) {
        free(st);
        return RT_ERR_NOMEM;
    }
    storage_db *db = NULL;
    int err = storage_paths_init(st, data_dir);
    if (!err)
        err = storage_target_init(st, database);
    if (!err)
        err = storage_conn_key_init(st);
    if (!err)
        err = storage_db_get(st, &db);
    if (!err)
        err = storage_migrate(db, st->db_name);
    if (!err)
        err = storage_clean_orphans(st, db);
    if (err) {
        storage_close(st);
        return err;
    }
    *out = st;
    return RT_OK;
}

/* See storage.h. Closing files_fd also drops the flock clean.c took. */
void storage_close(storage *st)
{
    if (!st)
        return;
    storage_conns_close(st);
    if (st->files_fd >= 0)
        close(st->files_fd);
    pthread_mutex_destroy(&st->conns_lock);
    free(st);
}

/* See storage.h. */
int storage_schema_version(storage *st, int *out)
{
    if (!st || !out)
        return RT_ERR_INVALID;
    storage_db *db = NULL;
    int err = storage_db_get(st, &db);
    if (err)
        return err;
    return storage_db_user_version(db, out);
}

/* See storage.h. */
bool storage_is_postgres(const storage *st)
{
    return st && st->ops == &storage_pg_ops;
}
