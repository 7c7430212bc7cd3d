/*
 * server/fsutil.c — directory removal and durable renames.
 */
#include "server/fsutil.h"

#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/rt.h"

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void fs_remove_tree(const char *path)
{
    if (access(path, F_OK) == 0)
        nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int fs_sync_dir_of(const char *path)
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
