/*
 * storage/id.c — record ids: "<prefix>-" + 24 lowercase hex digits from
 * getrandom(2) (96 random bits, so collisions are not a concern). Ids name
 * files on disk, so a prefix may only use [a-z0-9_-]. Also the check of
 * project names.
 */
#include "storage/storage_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

/* Whether c may appear in an id prefix. */
static bool storage_id_prefix_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Whether c is a lowercase hex digit. */
static bool storage_id_hex_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Whether prefix is non-empty, short enough and of allowed characters. */
static bool storage_id_prefix_ok(const char *prefix, size_t len)
{
    if (len == 0 || len + 1 + STORAGE_ID_HEX >= STORAGE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!storage_id_prefix_char(prefix[i]))
            return false;
    }
    return true;
}

/* Fills buf with len random bytes from the kernel, retrying on EINTR and
 * short reads. */
static int storage_id_random(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rt_log(RT_LOG_ERROR, "storage: getrandom: %s", strerror(errno));
            return RT_ERR_IO;
        }
        got += (size_t)n;
    }
    return RT_OK;
}

/* Writes a new id "<prefix>-<24 hex>" into buf. RT_ERR_INVALID for a bad
 * prefix or a buffer too small; buf is untouched on failure. */
int storage_id_generate(const char *prefix, char *buf, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    if (!prefix || !buf)
        return RT_ERR_INVALID;
    size_t plen = strnlen(prefix, STORAGE_ID_MAX);
    if (!storage_id_prefix_ok(prefix, plen) || plen + 2 + STORAGE_ID_HEX > size)
        return RT_ERR_INVALID;
    unsigned char rnd[STORAGE_ID_HEX / 2];
    int err = storage_id_random(rnd, sizeof rnd);
    if (err)
        return err;
    memcpy(buf, prefix, plen);
    buf[plen] = '-';
    for (size_t i = 0; i < sizeof rnd; i++) {
        buf[plen + 1 + 2 * i] = hex[rnd[i] >> 4];
        buf[plen + 2 + 2 * i] = hex[rnd[i] & 15];
    }
    buf[plen + 1 + STORAGE_ID_HEX] = '\0';
    return RT_OK;
}

/* See storage.h. On failure (bad prefix, small buffer, no randomness) buf
 * holds "" so a caller that ignores it cannot use a stale id. */
void storage_new_id(const char *prefix, char *buf, size_t size)
{
    if (storage_id_generate(prefix, buf, size) != RT_OK && buf && size > 0)
        buf[0] = '\0';
}

/* Whether name has the exact shape of an id storage_id_generate makes. */
bool storage_id_is_generated(const char *name)
{
    size_t len = strnlen(name, STORAGE_ID_MAX);
    if (len >= STORAGE_ID_MAX || len < STORAGE_ID_HEX + 2)
        return false;
    size_t plen = len - STORAGE_ID_HEX - 1;
    if (!storage_id_prefix_ok(name, plen) || name[plen] != '-')
        return false;
    for (size_t i = plen + 1; i < len; i++) {
        if (!storage_id_hex_char(name[i]))
            return false;
    }
    return true;
}

/* See storage.h. Project names appear inside model names
 * ("ft:base:PROJECT:suffix:id") and in logs, so the alphabet is small. */
bool storage_project_valid(const char *name)
{
    size_t len = name ? strnlen(name, STORAGE_PROJECT_MAX) : 0;
    if (len == 0 || len >= STORAGE_PROJECT_MAX || name[0] == '.' || name[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}
