/*
 * common/rt.c — error names, logging and clocks shared by every module.
 */
#include "common/rt.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static int g_log_level = RT_LOG_INFO;

const char *rt_strerror(int code)
{
    switch (code) {
    case RT_OK: return "ok";
    case RT_ERR_NOMEM: return "out of memory";
    case RT_ERR_IO: return "input/output error";
    case RT_ERR_INVALID: return "invalid argument";
    case RT_ERR_NOT_FOUND: return "not found";
    case RT_ERR_EXISTS: return "already exists";
    case RT_ERR_FORMAT: return "malformed data";
    case RT_ERR_UNSUPPORTED: return "unsupported";
    case RT_ERR_DB: return "database error";
    case RT_ERR_TOO_LARGE: return "too large";
    case RT_ERR_CANCELLED: return "cancelled";
    case RT_ERR_BUSY: return "busy";
    case RT_ERR_DEVICE: return "compute device error";
    case RT_ERR_VERSION: return "written by a newer version";
    case RT_ERR_STATE: return "not allowed in the current state";
    case RT_ERR_COMM: return "collective communication failed";
    default: return "unknown error";
    }
}

void rt_log_set_level(int level) { g_log_level = level; }

void rt_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < g_log_level)
        return;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    int idx = level < 0 ? 0 : level > RT_LOG_ERROR ? RT_LOG_ERROR : level;
    fprintf(stderr, "%s %s %s\n", stamp, names[idx], line);
}

double rt_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t rt_unix_time(void) { return (int64_t)time(NULL); }

void rt_fail_message(char *err, size_t errsize, const char *fmt, ...)
{
    if (err && errsize > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsize, fmt, ap);
        va_end(ap);
    }
}
