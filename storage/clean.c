/*
 * storage/clean.c — removes what a crash can leave in <data-dir>/files/:
 * temporary uploads (".tmp-*") and blobs whose id has no files row (a crash
 * between rename and INSERT, or between DELETE and unlink); and in
 * adapters/ and models/: temporary ".<id>" folders and published folders
 * without a models row. Nothing else is touched: only entries whose name has
 * the exact shape of a generated id (or "." / ".tmp-" before one).
 *
 * Cleaning is only safe when no other handle (this process or another) is
 * mid-upload on the same folder. Every open handle holds a shared flock on
 * files/ for its lifetime; clean-up runs only when an exclusive flock can be
 * had at once, otherwise it is skipped (the next lone open does it).
 *
 * With PostgreSQL the data directory may be shared by several hosts (a
 * network file system); a flock then speaks for this host's handles only,
 * so a fleet (issue 16, item 2) must not clean while another host uploads.
 */
#include "storage/storage_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORAGE_TMP_PREFIX ".tmp-"

/* Whether a files row exists for id; q is "SELECT 1 ... WHERE id = ?1". */
static int storage_clean_has_row(storage_stmt *q, const char *id, bool *out)
{
    storage_stmt_reset(q);
    storage_stmt_text(q, 1, id);
    int rc = storage_stmt_step(q);
    if (rc < 0)
        return rc;
    *out = rc == STORAGE_ROW;
    return RT_OK;
}

/* Decides whether the entry name in dfd is a leftover; *out says so. */
static int storage_clean_is_orphan(storage_stmt *q, int dfd,
                                   const char *name, bool *out)
{
    *out = false;
    bool tmp = strncmp(name, STORAGE_TMP_PREFIX, strlen(STORAGE_TMP_PREFIX)) == 0;
    if (!tmp && !storage_id_is_generated(name))
        return RT_OK;
    struct stat sb;
    if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
        return RT_OK;
    if (tmp) {
        *out = true;
        return RT_OK;
    }
    bool has_row = true;
    int err = storage_clean_has_row(q, name, &has_row);
    if (!err)
        *out = !has_row;
    return err;
}

/* Walks files/ and unlinks every leftover. Unlink failures are logged and
 * skipped; a database failure stops the walk and is returned. */
static int storage_clean_dir(storage *st, storage_db *db)
{
    storage_stmt *q = NULL;
    int err = storage_stmt_prepare(db, "SELECT 1 FROM files WHERE id = ?1", &q);
    if (err)
        return err;
    DIR *d = opendir(st->files_dir);
    if (!d) {
        rt_log(RT_LOG_ERROR, "storage: opendir %s: %s", st->files_dir, strerror(errno));
        err = RT_ERR_IO;
        goto cleanup_stmt;
    }
    struct dirent *e;
    while (!err && (e = readdir(d)) != NULL) {
        bool orphan = false;
        err = storage_clean_is_orphan(q, dirfd(d), e->d_name, &orphan);
        if (err || !orphan)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            rt_log(RT_LOG_INFO, "storage: removed leftover files/%s", e->d_name);
        else
            rt_log(RT_LOG_WARN, "storage: cannot remove files/%s: %s", e->d_name,
                   strerror(errno));
    }
    closedir(d);
cleanup_stmt:
    storage_stmt_free(q);
    return err;
}

/* Whether a models row points at <folder>/<name> (whatever the data
 * directory was called when the row was written). The path's tail is
 * substr(path, -n) on SQLite, right(path, n) on PostgreSQL. */
static int model_dir_has_row(storage_db *db, const char *folder, const char *name, bool *out)
{
    storage_stmt *q = NULL;
    int err = storage_stmt_prepare(db, storage_db_dialect(db) == STORAGE_SQLITE
                                   ? "SELECT 1 FROM models WHERE substr(path, -length(?1)) = ?1"
                                   : "SELECT 1 FROM models WHERE right(path, length(?1)) = ?1", &q);
    if (err)
        return err;
    char tail[512];
    snprintf(tail, sizeof tail, "/%s/%s", folder, name);
    storage_stmt_text(q, 1, tail);
    int rc = storage_stmt_step(q);
    if (rc < 0)
        err = rc;
    *out = rc == STORAGE_ROW;
    storage_stmt_free(q);
    return err;
}

/* Removes from adapters/ or models/ what a crash left: an import's
 * temporary ".<id>" folder, or a published folder whose row never came
 * (or was deleted). Only folders named like generated ids are touched. */
static int clean_model_folder(storage *st, storage_db *db, const char *folder)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", storage_data_dir(st), folder);
    DIR *d = opendir(path);
    if (!d)
        return RT_OK; /* nothing published yet */
    int err = RT_OK;
    struct dirent *e;
    while (!err && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        bool tmp = name[0] == '.' && storage_id_is_generated(name + 1);
        struct stat sb;
        if ((!tmp && !storage_id_is_generated(name)) ||
            fstatat(dirfd(d), name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        bool has_row = false;
        if (!tmp)
            err = model_dir_has_row(db, folder, name, &has_row);
        if (err || has_row)
            continue;
        char victim[1300];
        snprintf(victim, sizeof victim, "%s/%s", path, name);
        rt_remove_tree(victim);
        rt_log(RT_LOG_INFO, "storage: removed leftover %s/%s", folder, name);
    }
    closedir(d);
    return err;
}

/*
 * Cleans files/ if this is the only open handle on it, then holds a shared
 * flock on st->files_fd until storage_close closes it. A failing flock only
 * skips the clean-up (logged); a database failure is returned.
 */
int storage_clean_orphans(storage *st, storage_db *db)
{
    int err = RT_OK;
    if (flock(st->files_fd, LOCK_EX | LOCK_NB) == 0) {
        err = storage_clean_dir(st, db);
        if (!err)
            err = clean_model_folder(st, db, "adapters");
        if (!err)
            err = clean_model_folder(st, db, "models");
    }
    else if (errno == EWOULDBLOCK)
        rt_log(RT_LOG_INFO, "storage: %s is in use by another handle; "
               "skipping leftover clean-up", st->files_dir);
    else
        rt_log(RT_LOG_WARN, "storage: flock %s: %s; skipping leftover clean-up",
               st->files_dir, strerror(errno));
    if (flock(st->files_fd, LOCK_SH) != 0)
        rt_log(RT_LOG_WARN, "storage: flock %s: %s", st->files_dir, strerror(errno));
    return err;
}
