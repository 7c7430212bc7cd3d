/*
 * storage/model.c — the servable models table (migrations 0003, 0007). A
 * model belongs to its owned_by project; names are unique within a project,
 * and every lookup by name is within the caller's project.
 */
#include "storage/row.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Reads project's model id with db. */
static int model_get_in(storage_db *db, const char *project, const char *id, storage_model *out)
{
    const char *args[2] = {id, project};
    return row_get_where(db, &model_table, "id = ?1 AND owned_by = ?2", args, 2, out);
}

int storage_model_add(storage *st, const storage_model *m)
{
    storage_db *db;
    if (!st || !name_ok(m->id) || !storage_project_valid(m->owned_by))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    if (err)
        return err;
    storage_model rec = *m;
    if (!rec.created_at)
        rec.created_at = rt_unix_time();
    storage_model taken;
    err = model_get_in(db, rec.owned_by, rec.id, &taken);
    if (err != RT_ERR_NOT_FOUND)
        return err ? err : RT_ERR_EXISTS;
    return row_insert(db, &model_table, &rec);
}

int storage_model_get(storage *st, const char *project, const char *id, storage_model *out)
{
    storage_db *db;
    if (!st || !project || !name_ok(id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    return err ? err : model_get_in(db, project, id, out);
}

/* Lists models; a cursor (`after`) is a name in project, looked up by
 * (project, name): another project may use the same name. */
int storage_model_list(storage *st, const char *project, const char *after, int limit,
                       storage_model **out, size_t *count, bool *has_more)
{
    storage_db *db;
    if (!st || (after && (!name_ok(after) || !project)))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    int64_t below = INT64_MAX;
    const char *cursor[2] = {after, project};
    if (!err && after)
        err = row_seq_where(db, &model_table, "id = ?1 AND owned_by = ?2", cursor, 2, &below);
    const char *mine[1] = {project};
    return err ? err : row_list_below(db, &model_table, project ? "owned_by = ?3" : NULL, mine,
                                      project ? 1 : 0, below, limit, (void **)out, count, has_more);
}

int storage_model_delete(storage *st, const char *project, const char *id)
{
    storage_db *db;
    storage_stmt *stmt = NULL;
    if (!st || !project || !name_ok(id))
        return RT_ERR_INVALID;
    int err = storage_db_get(st, &db);
    if (!err)
        err = storage_stmt_prepare(db, "DELETE FROM models WHERE id = ?1 AND owned_by = ?2", &stmt);
    if (err)
        return err;
    storage_stmt_text(stmt, 1, id);
    storage_stmt_text(stmt, 2, project);
    int rc = storage_stmt_step(stmt);
    err = rc == STORAGE_DONE ? (storage_stmt_changes(stmt) ? RT_OK : RT_ERR_NOT_FOUND) : rc < 0 ? rc : RT_ERR_DB;
    storage_stmt_free(stmt);
    return err;
}

/* The data-dir folder that holds models of kind: "adapters" or "models". */
static const char *model_folder(const char *kind)
{
    return kind && !strcmp(kind, "full") ? "models" : "adapters";
}

/* fsyncs every regular file directly in dir, then dir itself, so that what
 * a rename publishes is on disk before the rename is. */
static int sync_dir_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return RT_ERR_IO;
    int err = RT_OK;
    struct dirent *e;
    while (!err && (e = readdir(d)) != NULL) {
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
            continue;
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0)
            err = RT_ERR_IO;
        if (fd >= 0)
            close(fd);
    }
    int dfd = dirfd(d);
    if (!err && fsync(dfd) != 0)
        err = RT_ERR_IO;
    closedir(d);
    return err;
}

/* A directory name storage may create: one plain path component. */
static bool dir_name_ok(const char *name)
{
    return name && name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 200;
}

/* See storage.h: fsync the files and the folder, rename, fsync the parent,
 * and only then the row, the same order as a blob commit. */
int storage_model_publish(storage *st, const char *tmp_dir, const char *dir_name, bool replace,
                          storage_model *m)
{
    storage_model existing;
    if (!st || !tmp_dir || !m || !dir_name_ok(dir_name) || !name_ok(m->id))
        return RT_ERR_INVALID;
    if (!storage_project_valid(m->owned_by))
        return RT_ERR_INVALID;
    if (!replace && storage_model_get(st, m->owned_by, m->id, &existing) == RT_OK)
        return RT_ERR_EXISTS;
    char parent[800], final[1024];
    if (snprintf(parent, sizeof parent, "%s/%s", storage_data_dir(st), model_folder(m->kind)) >=
        (int)sizeof parent)
        return RT_ERR_INVALID;
    if (mkdir(parent, 0755) != 0 && errno != EEXIST)
        return RT_ERR_IO;
    snprintf(final, sizeof final, "%s/%s", parent, dir_name);
    int err = sync_dir_files(tmp_dir);
    if (err)
        return err;
    rt_remove_tree(final); /* what a crash left of an earlier attempt */
    if (rename(tmp_dir, final) != 0)
        return RT_ERR_IO;
    err = rt_sync_dir_of(final);
    snprintf(m->path, sizeof m->path, "%s", final);
    if (!err && replace)
        storage_model_delete(st, m->owned_by, m->id); /* a re-run publishes again */
    if (!err)
        err = storage_model_add(st, m);
    if (err)
        rt_remove_tree(final); /* no directory without its row */
    return err;
}

/* Creates dir unless it exists. */
static int ensure_dir(const char *dir, mode_t mode)
{
    return mkdir(dir, mode) == 0 || errno == EEXIST ? RT_OK : RT_ERR_IO;
}

int storage_work_dir(storage *st, enum storage_work kind, const char *id, char *out, size_t size)
{
    static const char *const parents[] = {"jobs", "adapters", "base"};
    char parent[1024], fresh[STORAGE_ID_MAX];
    bool named = kind != STORAGE_WORK_IMPORT;
    if (!st || !out || kind < STORAGE_WORK_JOB || kind > STORAGE_WORK_BASE ||
        (named && (!id || storage_id_check(id) || !id[0] || id[0] == '.' || strchr(id, '/'))))
        return RT_ERR_INVALID; /* an id names one folder inside its parent, never a path */
    int n = snprintf(parent, sizeof parent, "%s/%s", storage_data_dir(st), parents[kind]);
    if (n < 0 || (size_t)n >= sizeof parent)
        return RT_ERR_INVALID;
    if (ensure_dir(parent, 0755) != RT_OK)
        return RT_ERR_IO;
    if (!named)
        storage_new_id("import", fresh, sizeof fresh); /* ".import-<hex>": what clean.c removes */
    n = snprintf(out, size, named ? "%s/%s" : "%s/.%s", parent, named ? id : fresh);
    if (n < 0 || (size_t)n >= size)
        return RT_ERR_INVALID;
    if (kind == STORAGE_WORK_BASE)
        return RT_OK;
    return named ? ensure_dir(out, 0755) : (mkdir(out, 0700) == 0 ? RT_OK : RT_ERR_IO);
}
