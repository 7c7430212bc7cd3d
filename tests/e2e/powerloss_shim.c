/*
 * tests/e2e/powerloss_shim.c — (test-only, LD_PRELOAD) records what a power
 * cut would leave of a data directory: only what was fsynced. Every
 * successful fsync/fdatasync of a file under POWERLOSS_DIR copies the
 * file's content as it is then to POWERLOSS_SHADOW/inodes/<inode>; of a
 * directory, its entries (name -> inode) to POWERLOSS_SHADOW/dirs/<inode>.
 * What was written or renamed but not fsynced is lost, as the strictest
 * file system may lose it. At load, everything already under POWERLOSS_DIR
 * counts as durable. tests/e2e_powerloss.py rebuilds the directory from the
 * shadow after a SIGKILL and checks that what the API acknowledged is there.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char watched[PATH_MAX], shadow[PATH_MAX];
static atomic_ulong serial;

/* A unique temporary name in the shadow, then renamed into place: a kill
 * mid-copy leaves the previous snapshot whole. */
static void temp_name(char *buf, size_t size)
{
    snprintf(buf, size, "%s/tmp.%d.%lu", shadow, (int)getpid(), atomic_fetch_add(&serial, 1));
}

/* Copies the file behind fd (opened again for reading: the writer's fd
 * may be write-only) to the shadow, as inode ino's durable content. */
static void copy_file(int fd, unsigned long ino)
{
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64], buf[65536], self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    int in = open(self, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return;
    temp_name(tmp, sizeof tmp);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        close(in);
        return;
    }
    fd = in;
    off_t at = 0;
    ssize_t n;
    while ((n = pread(fd, buf, sizeof buf, at)) > 0) {
        if (write(out, buf, (size_t)n) != n)
            break;
        at += n;
    }
    close(out);
    close(in);
    snprintf(dst, sizeof dst, "%s/inodes/%lu", shadow, ino);
    rename(tmp, dst);
}

static void list_dir(const char *path, unsigned long ino)
{
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64];
    DIR *d = opendir(path);
    if (!d)
        return;
    temp_name(tmp, sizeof tmp);
    FILE *out = fopen(tmp, "w");
    struct dirent *e;
    while (out && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISDIR(sb.st_mode) || S_ISREG(sb.st_mode))
            fprintf(out, "%c %lu %s\n", S_ISDIR(sb.st_mode) ? 'd' : 'f', (unsigned long)sb.st_ino,
                    e->d_name);
    }
    closedir(d);
    if (out) {
        fclose(out);
        snprintf(dst, sizeof dst, "%s/dirs/%lu", shadow, ino);
        rename(tmp, dst);
    }
}

/* The snapshot a successful fsync of fd makes durable. */
static void snapshot(int fd)
{
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0 || !watched[0])
        return;
    path[n] = '\0';
    size_t w = strlen(watched);
    if (strncmp(path, watched, w) || (path[w] && path[w] != '/'))
        return;
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode))
        list_dir(path, (unsigned long)sb.st_ino);
    else if (S_ISREG(sb.st_mode))
        copy_file(fd, (unsigned long)sb.st_ino);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    if (r == 0)
        snapshot(fd);
    return r;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    if (r == 0)
        snapshot(fd);
    return r;
}

/* At load: what is already there survived earlier cuts (or was there). */
static int initial(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)ftw;
    int fd = open(path, (flag == FTW_D ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (flag == FTW_D)
        list_dir(path, (unsigned long)sb->st_ino);
    else if (flag == FTW_F)
        copy_file(fd, (unsigned long)sb->st_ino);
    close(fd);
    return 0;
}

__attribute__((constructor)) static void start(void)
{
    const char *w = getenv("POWERLOSS_DIR"), *s = getenv("POWERLOSS_SHADOW");
    if (!w || !s || !realpath(w, watched) || !realpath(s, shadow)) {
        watched[0] = '\0';
        return;
    }
    char sub[PATH_MAX + 16];
    snprintf(sub, sizeof sub, "%s/inodes", shadow);
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s/dirs", shadow);
    mkdir(sub, 0700);
    nftw(watched, initial, 32, FTW_PHYS);
    struct stat sb;
    if (stat(watched, &sb) == 0) { /* the root's inode, for the rebuild */
        snprintf(sub, sizeof sub, "%s/root", shadow);
        FILE *f = fopen(sub, "w");
        if (f) {
            fprintf(f, "%lu\n", (unsigned long)sb.st_ino);
            fclose(f);
        }
    }
}
