/*
 * storage/blob.c — streamed uploads into <data-dir>/files/.
 *
 * Bytes go to files/.tmp-<random> (mode 0600). Commit makes them durable
 * before any record points at them: fsync the file, rename it to files/<id>,
 * fsync the folder, and only then INSERT the row. A crash before the INSERT
 * leaves a file without a row, which clean.c removes at the next open; the
 * row never names missing bytes. A blob is used by one thread at a time; it
 * may move between threads (the commit uses the committing thread's
 * connection).
 */
#include "storage/storage_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct storage_blob {
    storage *st;       /* borrowed; outlives the blob */
    int fd;            /* the temporary file, -1 once closed */
    bool failed;       /* a write failed: only abort is left */
    int64_t size;      /* bytes written so far */
    char tmp_name[STORAGE_ID_MAX + 1]; /* ".tmp-<24 hex>", relative to files/ */
};

/* Closes the temporary file (if open), removes it when remove_tmp, frees. */
static void storage_blob_free(storage_blob *blob, bool remove_tmp)
{
    if (blob->fd >= 0)
        close(blob->fd);
    if (remove_tmp && unlinkat(blob->st->files_fd, blob->tmp_name, 0) != 0 && errno != ENOENT)
        rt_log(RT_LOG_WARN, "storage: cannot remove files/%s: %s", blob->tmp_name,
               strerror(errno));
    free(blob);
}

/* See storage.h. The caller owns *out until commit or abort frees it. */
int storage_blob_begin(storage *st, storage_blob **out)
{
    if (!st || !out)
        return RT_ERR_INVALID;
    storage_blob *blob = calloc(1, sizeof *blob);
    if (!blob)
        return RT_ERR_NOMEM;
    blob->st = st;
    blob->tmp_name[0] = '.';
    int err = storage_id_generate("tmp", blob->tmp_name + 1, sizeof blob->tmp_name - 1);
    if (err)
        goto fail;
    blob->fd = openat(st->files_fd, blob->tmp_name,
                      O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (blob->fd < 0) {
        rt_log(RT_LOG_ERROR, "storage: create files/%s: %s", blob->tmp_name, strerror(errno));
        err = RT_ERR_IO;
        goto fail;
    }
    *out = blob;
    return RT_OK;
fail:
    free(blob);
    return err;
}

/* See storage.h. Handles short writes and EINTR. On failure the blob can
 * only be aborted (commit refuses it with RT_ERR_STATE). */
int storage_blob_write(storage_blob *blob, const void *data, size_t len)
{
    if (!blob || (!data && len > 0))
        return RT_ERR_INVALID;
    if (blob->failed || blob->fd < 0)
        return RT_ERR_STATE;
    if (len > (uint64_t)(INT64_MAX - blob->size))
        return RT_ERR_TOO_LARGE;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(blob->fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rt_log(RT_LOG_ERROR, "storage: write files/%s: %s", blob->tmp_name,
                   n < 0 ? strerror(errno) : "no progress");
            blob->failed = true;
            return RT_ERR_IO;
        }
        p += n;
        left -= (size_t)n;
    }
    blob->size += (int64_t)len;
    return RT_OK;
}

/* See storage.h. Bytes written so far; RT_ERR_INVALID for NULL. */
int64_t storage_blob_size(const storage_blob *blob)
{
    return blob ? blob->size : RT_ERR_INVALID;
}

/* See storage.h. Accepts NULL. */
void storage_blob_abort(storage_blob *blob)
{
    if (blob)
        storage_blob_free(blob, true);
}

/* Makes the temporary file's bytes durable and closes it. */
static int storage_blob_sync(storage_blob *blob)
{
    int rc = fsync(blob->fd);
    int saved = errno;
    if (close(blob->fd) != 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    blob->fd = -1;
    if (rc != 0) {
        rt_log(RT_LOG_ERROR, "storage: fsync files/%s: %s", blob->tmp_name, strerror(saved));
        return RT_ERR_IO;
    }
    return RT_OK;
}

/* Renames the synced temporary file to files/<id> and fsyncs the folder so
 * the new name survives a crash. On failure nothing named id is left. */
static int storage_blob_publish(storage_blob *blob, const char *id)
{
    int dfd = blob->st->files_fd;
    if (renameat(dfd, blob->tmp_name, dfd, id) != 0) {
        rt_log(RT_LOG_ERROR, "storage: rename files/%s: %s", blob->tmp_name, strerror(errno));
        return RT_ERR_IO;
    }
    if (fsync(dfd) != 0) {
        rt_log(RT_LOG_ERROR, "storage: fsync %s: %s", blob->st->files_dir, strerror(errno));
        unlinkat(dfd, id, 0);
        return RT_ERR_IO;
    }
    return RT_OK;
}

/* Fills a complete record from the caller's meta (borrowed) and the blob. */
static int storage_blob_record(const storage_blob *blob, const storage_file *meta,
                               storage_file *rec)
{
    *rec = *meta;
    rec->bytes = blob->size;
    rec->created_at = rt_unix_time();
    if (meta->expires_at > 0) /* given as a lifetime, stored as the time it ends */
        rec->expires_at = rec->created_at + meta->expires_at;
    return storage_id_generate("file", rec->id, sizeof rec->id);
}

/* See storage.h. meta is borrowed (its id, bytes and created_at are
 * ignored); out may be NULL. RT_ERR_INVALID for bad meta, RT_ERR_STATE after
 * a failed write, RT_ERR_IO / RT_ERR_DB when storing fails. Whatever the
 * result, the blob is freed and on failure no bytes are left behind. */
int storage_blob_commit(storage_blob *blob, const storage_file *meta, storage_file *out)
{
    if (!blob)
        return RT_ERR_INVALID;
    storage_file rec;
    storage_db *db = NULL;
    int err = storage_file_meta_check(meta);
    if (!err && (blob->failed || blob->fd < 0))
        err = RT_ERR_STATE;
    if (!err)
        err = storage_db_get(blob->st, &db);
    if (!err)
        err = storage_blob_record(blob, meta, &rec);
    if (!err)
        err = storage_blob_sync(blob);
    if (!err)
        err = storage_blob_publish(blob, rec.id);
    if (err)
        goto fail_tmp;
    err = storage_file_insert(db, &rec);
    if (err) {
        unlinkat(blob->st->files_fd, rec.id, 0);
        goto fail_published;
    }
    if (out)
        *out = rec;
    storage_blob_free(blob, false);
    return RT_OK;
fail_tmp:
    storage_blob_free(blob, true);
    return err;
fail_published:
    storage_blob_free(blob, false);
    return err;
}
