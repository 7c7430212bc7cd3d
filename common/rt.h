/*
 * common/rt.h — the project-wide error type and the tiny utilities every
 * module may use (logging, monotonic time). This is the one leaf module all
 * others may include; it depends on nothing but libc. (common/fs.c holds
 * its two file-system helpers, common/sha256.c the hash of API keys.)
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
    RT_ERR_DB = -8,          /* SQLite failure */
    RT_ERR_TOO_LARGE = -9,   /* over a configured size limit */
    RT_ERR_CANCELLED = -10,  /* stopped on request */
    RT_ERR_BUSY = -11,       /* resource busy; retry later */
    RT_ERR_DEVICE = -12,     /* compute backend failure */
    RT_ERR_VERSION = -13,    /* data written by a newer version */
    RT_ERR_STATE = -14       /* operation not allowed in the current state */
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

/* SHA-256 (FIPS 180-4, common/sha256.c) of len bytes: the 32-byte digest,
 * or its 64 lowercase hex digits and a NUL. Cannot fail. */
#define RT_SHA256_HEX_SIZE 65
void rt_sha256(const void *data, size_t len, uint8_t out[32]);
void rt_sha256_hex(const void *data, size_t len, char out[RT_SHA256_HEX_SIZE]);

#endif
