/*
 * common/fs.c — the file-system helpers several modules need: removing a
 * folder tree (a half-written checkpoint, a failed import, a work folder),
 * making a rename into a folder durable, files that appear at their path
 * only once whole (atomic output), and reading a whole file.
 */
#include "common/rt.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void rt_remove_tree(const char *path)
{
    if (access(path, F_OK) == 0)
        nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int rt_sync_dir_of(const char *path)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return RT_ERR_IO;
    int rc = fsync(fd) == 0 ? RT_OK : RT_ERR_IO;
    close(fd);
    return rc;
}

/* ---- atomic output and whole-file input ---- */

int rt_atomic_begin(rt_atomic_file *a, const char *path, char *err, size_t errsize)
{
    a->fd = -1;
    a->path = strdup(path);
    size_t n = strlen(path);
    a->tmp_path = malloc(n + sizeof ".tmp.XXXXXX");
    if (!a->path || !a->tmp_path) {
        free(a->path);
        free(a->tmp_path);
        a->path = a->tmp_path = NULL;  /* nothing was created */
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(a->tmp_path, path, n);
    memcpy(a->tmp_path + n, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    a->fd = mkostemp(a->tmp_path, O_CLOEXEC);
    if (a->fd < 0) {
        int e = errno;
        free(a->tmp_path);
        a->tmp_path = NULL;  /* nothing to unlink */
        rt_atomic_abort(a);
        return rt_fail(err, errsize, RT_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(e));
    }
    if (fchmod(a->fd, 0644) != 0) {
        int e = errno;
        rt_atomic_abort(a);
        return rt_fail(err, errsize, RT_ERR_IO, "%s: chmod: %s", path, strerror(e));
    }
    return RT_OK;
}

int rt_atomic_append(rt_atomic_file *a, const void *data, size_t len, char *err, size_t errsize)
{
    const char *p = data;
    while (len > 0) {
        ssize_t k = write(a->fd, p, len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return rt_fail(err, errsize, RT_ERR_IO, "%s: write failed: %s", a->path,
                           k < 0 ? strerror(errno) : "no progress");
        p += k;
        len -= (size_t)k;
    }
    return RT_OK;
}

int rt_atomic_commit(rt_atomic_file *a, char *err, size_t errsize)
{
    int rc = RT_OK;
    if (fsync(a->fd) != 0) {
        rc = rt_fail(err, errsize, RT_ERR_IO, "%s: fsync: %s", a->path, strerror(errno));
    } else {
        int r = close(a->fd);
        a->fd = -1;
        if (r != 0)
            rc = rt_fail(err, errsize, RT_ERR_IO, "%s: close: %s", a->path, strerror(errno));
        else if (rename(a->tmp_path, a->path) != 0)
            rc = rt_fail(err, errsize, RT_ERR_IO, "%s: rename: %s", a->path, strerror(errno));
    }
    if (rc != RT_OK) {
        rt_atomic_abort(a);
        return rc;
    }
    free(a->tmp_path);
    a->tmp_path = NULL;  /* renamed: nothing to unlink */
    if (rt_sync_dir_of(a->path) != 0)
        rc = rt_fail(err, errsize, RT_ERR_IO, "%s: fsync of its directory: %s", a->path, strerror(errno));
    rt_atomic_abort(a);
    return rc;
}

void rt_atomic_abort(rt_atomic_file *a)
{
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    if (a->tmp_path)
        unlink(a->tmp_path);
    free(a->tmp_path);
    free(a->path);
    a->tmp_path = a->path = NULL;
}

int rt_write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errsize)
{
    rt_atomic_file a;
    int rc = rt_atomic_begin(&a, path, err, errsize);
    if (rc != RT_OK)
        return rc;
    if ((rc = rt_atomic_append(&a, data, len, err, errsize)) != RT_OK) {
        rt_atomic_abort(&a);
        return rc;
    }
    return rt_atomic_commit(&a, err, errsize);
}

int rt_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char *err, size_t errsize)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);  /* a FIFO is refused, not waited on */
    if (fd < 0)
        return rt_fail(err, errsize, errno == ENOENT ? RT_ERR_NOT_FOUND : RT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    char *buf = NULL;
    int rc = RT_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = rt_fail(err, errsize, RT_ERR_IO, "%s: not a readable regular file", path);
        goto out;
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        rc = rt_fail(err, errsize, RT_ERR_TOO_LARGE, "%s: %lld bytes exceeds the %zu-byte limit",
                     path, (long long)sb.st_size, max_bytes);
        goto out;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(size + 1))) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = rt_fail(err, errsize, RT_ERR_IO, "%s: read: %s", path, strerror(errno));
            goto out;
        }
        if (k == 0)
            break;  /* shrank while reading: take what is there */
        got += (size_t)k;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}
