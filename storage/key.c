/*
 * storage/key.c — API keys (the api_keys table, migration 0007): what
 * `retune keys` adds, lists and revokes and what the server checks a bearer
 * token against. Only a secret's SHA-256 (and a short prefix to tell keys
 * apart) is ever given to storage; it cannot log or return a secret.
 */
#include "storage/row.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const row_col key_cols[] = {
    ROW_TEXT_COL(storage_key, id),     ROW_TEXT_COL(storage_key, project),
    ROW_TEXT_COL(storage_key, hash),   ROW_TEXT_COL(storage_key, prefix),
    ROW_INT_COL(storage_key, created_at), ROW_INT_COL(storage_key, revoked_at),
};
static const row_table key_table = {"api_keys", key_cols, sizeof key_cols / sizeof key_cols[0],
                                    sizeof(storage_key)};

/* Most keys storage_key_list returns. */
#define KEY_LIST_MAX STORAGE_LIST_LIMIT_MAX

/* Whether hash is 64 lowercase hex digits. */
static bool hash_ok(const char *hash)
{
    if (strnlen(hash, RT_SHA256_HEX_SIZE) != RT_SHA256_HEX_SIZE - 1)
        return false;
    for (const char *p = hash; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

int storage_key_add(storage *st, const storage_key *key, storage_key *out)
{
    storage_db *db;
    if (!st || !key || !storage_project_valid(key->project) || !hash_ok(key->hash) ||
        strnlen(key->prefix, sizeof key->prefix) >= sizeof key->prefix)
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    if (err)
        return err;
    storage_key rec = *key;
    if (!rec.id[0])
        storage_new_id("key", rec.id, sizeof rec.id);
    if (!rec.created_at)
        rec.created_at = rt_unix_time();
    rec.revoked_at = 0;
    storage_key same;
    err = row_get(db, &key_table, "hash", rec.hash, &same);
    if (err != RT_ERR_NOT_FOUND)
        return err ? err : RT_ERR_EXISTS;
    err = row_insert(db, &key_table, &rec);
    if (!err && out)
        *out = rec;
    return err;
}

int storage_key_find(storage *st, const char *hash, storage_key *out)
{
    storage_db *db;
    if (!st || !hash || !out || !hash_ok(hash))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    const char *args[1] = {hash};
    return err ? err : row_get_where(db, &key_table, "hash = ?1 AND revoked_at = 0", args, 1, out);
}

int storage_key_any(storage *st, bool *out)
{
    storage_db *db;
    if (!st || !out)
        return RT_ERR_INVALID;
    int64_t n = 0;
    int err = storage_db_get(st, &db);
    if (!err)
        err = storage_db_query_int(db, "SELECT COUNT(*) FROM (SELECT 1 FROM api_keys LIMIT 1) AS k", &n);
    if (!err)
        *out = n != 0;
    return err;
}

/* Reverses n records in place (lists come newest first; keys oldest first). */
static void reverse_keys(storage_key *v, size_t n)
{
    for (size_t i = 0; i < n / 2; i++) {
        storage_key t = v[i];
        v[i] = v[n - 1 - i];
        v[n - 1 - i] = t;
    }
}

int storage_key_list(storage *st, storage_key **out, size_t *count)
{
    storage_db *db;
    if (!st || !out || !count)
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    storage_key *keys = NULL;
    size_t n = 0;
    bool more = false;
    if (!err)
        err = row_list_below(db, &key_table, NULL, NULL, 0, INT64_MAX, KEY_LIST_MAX, (void **)&keys,
                             &n, &more);
    if (err)
        return err;
    reverse_keys(keys, n);
    *out = keys;
    *count = n;
    return RT_OK;
}

int storage_key_revoke(storage *st, const char *id)
{
    storage_db *db;
    storage_stmt *stmt = NULL;
    if (!st || storage_id_check(id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    storage_key k;
    if (!err)
        err = row_get(db, &key_table, "id", id, &k);
    if (!err && k.revoked_at)
        err = RT_ERR_STATE;
    if (!err)
        err = storage_stmt_prepare(db, "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND "
                                       "revoked_at = 0", &stmt);
    if (err)
        return err;
    storage_stmt_int(stmt, 1, rt_unix_time() > 0 ? rt_unix_time() : 1);
    storage_stmt_text(stmt, 2, id);
    int rc = storage_stmt_step(stmt);
    err = rc != STORAGE_DONE ? (rc < 0 ? rc : RT_ERR_DB)
          : storage_stmt_changes(stmt) ? RT_OK : RT_ERR_STATE;
    storage_stmt_free(stmt);
    return err;
}
