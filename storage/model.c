/*
 * storage/model.c — the servable models table (migration 0003).
 */
#include "storage/row.h"

#include <string.h>

static const row_col model_cols[] = {
    ROW_TEXT_COL(storage_model, id),       ROW_TEXT_COL(storage_model, kind),
    ROW_TEXT_COL(storage_model, parent),   ROW_TEXT_COL(storage_model, owned_by),
    ROW_TEXT_COL(storage_model, path),     ROW_TEXT_COL(storage_model, job_id),
    ROW_INT_COL(storage_model, created_at),
};
static const row_table model_table = {"models", model_cols,
                                      sizeof model_cols / sizeof model_cols[0], sizeof(storage_model)};

/* Model names are longer than ids: check them against their own field. */
static int name_ok(const char *id)
{
    return id && strnlen(id, sizeof((storage_model *)0)->id) < sizeof((storage_model *)0)->id;
}

int storage_model_add(storage *st, const storage_model *m)
{
    sqlite3 *db;
    if (!st || !name_ok(m->id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    if (err)
        return err;
    storage_model rec = *m;
    if (!rec.created_at)
        rec.created_at = rt_unix_time();
    return row_insert(db, &model_table, &rec);
}

int storage_model_get(storage *st, const char *id, storage_model *out)
{
    sqlite3 *db;
    if (!st || !name_ok(id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    return err ? err : row_get(db, &model_table, "id", id, out);
}

int storage_model_list(storage *st, const char *after, int limit, storage_model **out,
                       size_t *count, bool *has_more)
{
    sqlite3 *db;
    if (!st || (after && !name_ok(after)))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    return err ? err : row_list(db, &model_table, NULL, NULL, after, limit, (void **)out, count, has_more);
}

int storage_model_delete(storage *st, const char *id)
{
    sqlite3 *db;
    sqlite3_stmt *stmt = NULL;
    if (!st || !name_ok(id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    if (!err)
        err = storage_db_prepare(db, "DELETE FROM models WHERE id = ?1", &stmt);
    if (err)
        return err;
    sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    err = rc == SQLITE_DONE ? (sqlite3_changes(db) ? RT_OK : RT_ERR_NOT_FOUND) : storage_db_error(db, rc, "delete model");
    sqlite3_finalize(stmt);
    return err;
}
