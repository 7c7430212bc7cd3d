/*
 * common/rt.h — the project-wide error type and the tiny utilities every
 * module may use (logging, monotonic time, one way to report an error into
 * err/errsize). This is the one leaf module all others may include; it
 * depends on nothing but libc. (common/fs.c holds its file-system helpers:
 * trees, durable renames, atomic files, whole-file reads; common/sha256.c
 * the hash of API keys.)
 *
 * Fallible functions return an int: RT_OK (0) or one of the negative codes
 * below. Results come back through out-parameters that stay untouched on
 * failure. rt_strerror() names a code for logs and messages.
 */
#ifndef RT_COMMON_H
#define RT_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum rt_error {
    RT_OK = 0,
    RT_ERR_NOMEM = -1,       /* allocation failed */
    RT_ERR_IO = -2,          /* read/write/fsync/rename failed (errno kept) */
    RT_ERR_INVALID = -3,     /* bad argument or input value */
    RT_ERR_NOT_FOUND = -4,   /* no such record, file or tensor */
    RT_ERR_EXISTS = -5,      /* already exists */
    RT_ERR_FORMAT = -6,      /* malformed file or encoding */
    RT_ERR_UNSUPPORTED = -7, /* understood but not supported */
    RT_ERR_DB = -8,          /* database failure (SQLite or PostgreSQL) */
    RT_ERR_TOO_LARGE = -9,   /* over a configured size limit */
    RT_ERR_CANCELLED = -10,  /* stopped on request */
    RT_ERR_BUSY = -11,       /* resource busy; retry later */
    RT_ERR_DEVICE = -12,     /* compute backend failure */
    RT_ERR_VERSION = -13,    /* data written by a newer version */
    RT_ERR_STATE = -14,      /* operation not allowed in the current state */
    RT_ERR_COMM = -15        /* a collective across processes failed (MPI, NCCL) */
};

/* Returns a static, human-readable name for an rt_error code. */
const char *rt_strerror(int code);

enum rt_log_level { RT_LOG_DEBUG, RT_LOG_INFO, RT_LOG_WARN, RT_LOG_ERROR };

/* Writes one timestamped line to stderr when level >= the current level. */
void rt_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets the minimum level rt_log prints (default RT_LOG_INFO). */
void rt_log_set_level(int level);

/* Monotonic clock in seconds, for durations only. */
double rt_now_seconds(void);

/* Wall clock as Unix seconds, for records shown to users. */
int64_t rt_unix_time(void);

/* Removes a folder tree (or a file); a path that does not exist is a no-op. */
void rt_remove_tree(const char *path);

/* fsyncs the folder that holds path, so a rename into it is durable. */
int rt_sync_dir_of(const char *path);

/* ---- atomic file output and whole-file input (common/fs.c) ---- */

/* An output file that appears at its final path only on commit. */
typedef struct rt_atomic_file {
    int fd;
    char *tmp_path;   /* owned */
    char *path;       /* owned */
} rt_atomic_file;

/* Creates a temporary file next to path (borrowed). RT_ERR_IO, RT_ERR_NOMEM. */
int rt_atomic_begin(rt_atomic_file *a, const char *path, char *err, size_t errsize);

/* Appends len bytes; retries short writes. RT_ERR_IO. */
int rt_atomic_append(rt_atomic_file *a, const void *data, size_t len, char *err, size_t errsize);

/* fsync, close, rename to the final path, fsync the directory; frees a.
 * On error the temporary file is removed. RT_ERR_IO. */
int rt_atomic_commit(rt_atomic_file *a, char *err, size_t errsize);

/* Removes the temporary file and frees a; safe after a failed begin. */
void rt_atomic_abort(rt_atomic_file *a);

/* One-shot: writes len bytes of data to path atomically. */
int rt_write_file_atomic(const char *path, const void *data, size_t len,
                         char *err, size_t errsize);

/* Reads a whole regular file of at most max_bytes into a NUL-terminated
 * buffer the caller frees with free(). Errors: RT_ERR_NOT_FOUND (no such
 * file), RT_ERR_IO, RT_ERR_TOO_LARGE (over max_bytes), RT_ERR_NOMEM. */
int rt_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                 char *err, size_t errsize);

/* Formats err (when not NULL and errsize > 0) like snprintf. */
void rt_fail_message(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* rt_fail(err, errsize, code, fmt, ...): formats err as rt_fail_message
 * does and is code: the one-line error report every module's err/errsize
 * shares ("return rt_fail(err, errsize, RT_ERR_FORMAT, "...", ...)"). A
 * macro, so that the compiler sees the code a failing path returns. */
#define rt_fail(err, errsize, code, ...) \
    __extension__({ rt_fail_message((err), (errsize), __VA_ARGS__); (code); })

/* SHA-256 (FIPS 180-4, common/sha256.c) of len bytes: the 32-byte digest,
 * or its 64 lowercase hex digits and a NUL. Cannot fail. */
#define RT_SHA256_HEX_SIZE 65
void rt_sha256(const void *data, size_t len, uint8_t out[32]);
void rt_sha256_hex(const void *data, size_t len, char out[RT_SHA256_HEX_SIZE]);

#endif
