/*
 * storage/storage.c — the storage handle: opening a data directory (folders,
 * database, migrations, crash clean-up), closing it, and the schema version.
 * Connections live in db.c, blobs in blob.c, file records in file.c.
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

/* Checks data_dir, fills in the handle's paths and creates the folders. */
static int storage_paths_init(storage *st, const char *data_dir)
{
    size_t len = strnlen(data_dir, STORAGE_DIR_MAX);
    if (len == 0 || len >= STORAGE_DIR_MAX) {
        rt_log(RT_LOG_ERROR, "storage: data directory path is empty or too long");
        return RT_ERR_INVALID;
    }
    memcpy(st->dir, data_dir, len + 1);
    snprintf(st->db_path, sizeof st->db_path, "%s/retune.db", st->dir);
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

/* See storage.h. Order: folders, this thread's connection, migrations, then
 * clean-up (which needs the files table). */
int storage_open(const char *data_dir, storage **out)
{
    if (!data_dir || !out)
        return RT_ERR_INVALID;
    storage *st = calloc(1, sizeof *st);
    if (!st)
        return RT_ERR_NOMEM;
    st->files_fd = -1;
    if (pthread_mutex_init(&st->conns_lock, NULL) != 0) {
        free(st);
        return RT_ERR_NOMEM;
    }
    sqlite3 *db = NULL;
    int err = storage_paths_init(st, data_dir);
    if (!err)
        err = storage_conn_key_init(st);
    if (!err)
        err = storage_db_get(st, &db);
    if (!err)
        err = storage_migrate(db, st->db_path);
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
    sqlite3 *db = NULL;
    int err = storage_db_get(st, &db);
    if (err)
        return err;
    return storage_db_user_version(db, out);
}
