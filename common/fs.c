/*
 * common/fs.c — the two file-system helpers several modules need: removing
 * a folder tree (a half-written checkpoint, a failed import, a work folder)
 * and making a rename into a folder durable.
 */
#include "common/rt.h"

#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
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
