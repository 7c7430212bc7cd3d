/*
 * server/fsutil.h — (internal to server/) small file-system helpers for
 * publishing job results.
 */
#ifndef RT_SERVER_FSUTIL_H
#define RT_SERVER_FSUTIL_H

/* Removes a directory tree (no-op when it does not exist). */
void fs_remove_tree(const char *path);

/* fsyncs the directory that holds path, so a rename into it is durable. */
int fs_sync_dir_of(const char *path);

#endif
