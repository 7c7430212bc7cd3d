/*
 * storage/storage_internal.h — what the .c files of storage/ share and nobody
 * else sees: the handle's layout, per-thread connections, SQL helpers,
 * migrations and ids. Include only from storage/.
 */
#ifndef RT_STORAGE_INTERNAL_H
#define RT_STORAGE_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>

#include "storage/storage.h"

/* One embedded migration; build/gen/migrations_embedded.c (made by
 * tools/embed_migrations.sh) defines the array, in version order, ended by a
 * {0, NULL, NULL} entry that rt_migration_count does not count. */
struct rt_migration { int version; const char *name; const char *sql; };
extern const struct rt_migration rt_migrations[];
extern const size_t rt_migration_count;

/* Hex digits after "<prefix>-" in every generated id (12 random bytes). */
#define STORAGE_ID_HEX 24
/* Longest data-dir path accepted, leaving room for "/files/<id>". */
#define STORAGE_DIR_MAX (PATH_MAX - 128)
/* Most records one storage_file_list call returns. */
#define STORAGE_LIST_LIMIT_MAX 10000
/* How long a connection waits on another writer's lock before SQLITE_BUSY. */
#define STORAGE_BUSY_TIMEOUT_MS 5000

/* One thread's SQLite connection, linked into its handle's list so that
 * storage_close can close connections of threads still alive. */
struct storage_conn {
    struct storage *st;
    sqlite3 *db;
    struct storage_conn *next;
};

struct storage {
    char dir[STORAGE_DIR_MAX];     /* the data directory, as given */
    char db_path[PATH_MAX];        /* <dir>/retune.db */
    char files_dir[PATH_MAX];      /* <dir>/files */
    int files_fd;                  /* files/ open: fsync target and flock holder */
    pthread_key_t conn_key;        /* this thread's struct storage_conn */
    bool key_made;
    pthread_mutex_t conns_lock;    /* guards conns */
    struct storage_conn *conns;    /* every open connection of this handle */
};

/* db.c — connections and SQL helpers */
int storage_conn_key_init(storage *st);
int storage_db_get(storage *st, sqlite3 **out);
void storage_conns_close(storage *st);
int storage_db_exec(sqlite3 *db, const char *sql);
int storage_db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out);
int storage_db_error(sqlite3 *db, int rc, const char *what);
int storage_db_user_version(sqlite3 *db, int *out);

/* migrate.c */
int storage_migrate(sqlite3 *db, const char *db_path);

/* clean.c */
int storage_clean_orphans(storage *st, sqlite3 *db);

/* id.c */
int storage_id_generate(const char *prefix, char *buf, size_t size);
bool storage_id_is_generated(const char *name);

/* file.c */
int storage_file_row_read(sqlite3_stmt *stmt, storage_file *out);
int storage_file_insert(sqlite3 *db, const storage_file *rec);
int storage_file_meta_check(const storage_file *meta);
int storage_id_check(const char *id);

#endif
