/*
 * storage/storage_internal.h — what the .c files of storage/ share and nobody
 * else sees: the handle's layout, per-thread connections to either database
 * (SQLite or PostgreSQL) behind one statement interface, migrations and
 * ids. Include only from storage/.
 */
#ifndef RT_STORAGE_INTERNAL_H
#define RT_STORAGE_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>

#include "storage/storage.h"

/* One embedded migration; build/gen/migrations_embedded.c (made by
 * tools/embed_migrations.sh) defines the array, in version order, ended by a
 * {0, NULL, NULL, NULL} entry that rt_migration_count does not count. sql is
 * the text both dialects run (migrations/NNNN_name.sql); sql_pg, when not
 * NULL, is PostgreSQL's own text (migrations/postgres/NNNN_name.sql). */
struct rt_migration { int version; const char *name; const char *sql; const char *sql_pg; };
extern const struct rt_migration rt_migrations[];
extern const size_t rt_migration_count;

/* Hex digits after "<prefix>-" in every generated id (12 random bytes). */
#define STORAGE_ID_HEX 24
/* Longest data-dir path accepted, leaving room for "/files/<id>". */
#define STORAGE_DIR_MAX (PATH_MAX - 128)
/* Longest database target: a SQLite path or a libpq connection string. */
#define STORAGE_TARGET_MAX 4096
/* Most records one storage_file_list call returns. */
#define STORAGE_LIST_LIMIT_MAX 10000
/* How long a connection waits on another writer's lock before SQLITE_BUSY. */
#define STORAGE_BUSY_TIMEOUT_MS 5000

/* ---- databases: one SQL surface over SQLite and PostgreSQL ---------------
 *
 * Everything above db.c speaks through storage_db (one thread's connection)
 * and storage_stmt (one statement and its result rows). SQL text uses ?N
 * placeholders (numbered from 1), which the PostgreSQL side rewrites to $N;
 * where the dialects differ, the caller picks the text by
 * storage_db_dialect(). Backends live in db_sqlite.c and db_pg.c.
 */
enum storage_dialect { STORAGE_SQLITE, STORAGE_POSTGRES };

/* What storage_stmt_step returns besides a (negative) rt_error. */
enum { STORAGE_DONE = 0, STORAGE_ROW = 1 };

/* What a transaction is for: WRITE takes the write lock (SQLite) at once;
 * READ is one consistent snapshot. Rows to be changed are locked with
 * storage_db_for_update() on PostgreSQL. */
enum storage_txn { STORAGE_TXN_WRITE, STORAGE_TXN_READ };

typedef struct storage_db storage_db;
typedef struct storage_stmt storage_stmt;

/* A backend: what db.c calls; see db_sqlite.c and db_pg.c for contracts. */
struct storage_db_ops {
    enum storage_dialect dialect;
    int (*open)(const char *target, void **conn);
    void (*close)(void *conn);
    int (*check)(void *conn);              /* reconnect a broken connection */
    int (*exec)(void *conn, const char *sql);
    bool (*in_txn)(void *conn);
    int (*prepare)(storage_db *db, const char *sql, storage_stmt **out);
    void (*bind)(storage_stmt *s, int i, int type, const char *text, size_t len, int64_t n, double r);
    int (*step)(storage_stmt *s);
    const char *(*col_text)(storage_stmt *s, int i, size_t *len);
    int64_t (*col_int)(storage_stmt *s, int i);
    double (*col_real)(storage_stmt *s, int i);
    int64_t (*changes)(storage_stmt *s);
    void (*reset)(storage_stmt *s);
    void (*finalize)(storage_stmt *s);
};
extern const struct storage_db_ops storage_sqlite_ops, storage_pg_ops;

/* The bind types of storage_db_ops.bind. */
enum { STORAGE_BIND_NULL, STORAGE_BIND_TEXT, STORAGE_BIND_INT, STORAGE_BIND_REAL };

/* One thread's connection, linked into its handle's list so that
 * storage_close can close connections of threads still alive. */
struct storage_db {
    struct storage *st;
    const struct storage_db_ops *ops;
    void *conn;                     /* sqlite3 * or PGconn * */
    struct storage_db *next;
};

/* Every backend's statement starts with this. */
struct storage_stmt {
    storage_db *db;
};

struct storage {
    char dir[STORAGE_DIR_MAX];     /* the data directory, as given */
    const struct storage_db_ops *ops;   /* the database's backend */
    char target[STORAGE_TARGET_MAX];    /* SQLite path or libpq connection string */
    char db_name[PATH_MAX];        /* what messages call the database (no secrets) */
    char files_dir[PATH_MAX];      /* <dir>/files */
    int files_fd;                  /* files/ open: fsync target and flock holder */
    pthread_key_t conn_key;        /* this thread's storage_db */
    bool key_made;
    pthread_mutex_t conns_lock;    /* guards conns */
    storage_db *conns;             /* every open connection of this handle */
};

/* db.c — connections, statements, transactions, the schema version */
int storage_conn_key_init(storage *st);
int storage_db_get(storage *st, storage_db **out);
void storage_conns_close(storage *st);
enum storage_dialect storage_db_dialect(const storage_db *db);
int storage_db_exec(storage_db *db, const char *sql);
int storage_db_query_int(storage_db *db, const char *sql, int64_t *out);
int storage_db_begin(storage_db *db, enum storage_txn kind);
int storage_db_commit(storage_db *db);
void storage_db_rollback(storage_db *db);
const char *storage_db_for_update(const storage_db *db);
int storage_db_schema_init(storage_db *db);
int storage_db_user_version(storage_db *db, int *out);
int storage_db_set_user_version(storage_db *db, int version);

int storage_stmt_prepare(storage_db *db, const char *sql, storage_stmt **out);
void storage_stmt_text(storage_stmt *s, int i, const char *text);
void storage_stmt_text_n(storage_stmt *s, int i, const char *text, size_t len);
void storage_stmt_int(storage_stmt *s, int i, int64_t v);
void storage_stmt_real(storage_stmt *s, int i, double v);
int storage_stmt_step(storage_stmt *s);
const char *storage_stmt_col_text(storage_stmt *s, int i, size_t *len);
int64_t storage_stmt_col_int(storage_stmt *s, int i);
double storage_stmt_col_real(storage_stmt *s, int i);
int64_t storage_stmt_changes(storage_stmt *s);
void storage_stmt_reset(storage_stmt *s);
void storage_stmt_free(storage_stmt *s);

/* db_pg.c — whether a libpq connection string parses (logs why not) */
int storage_pg_check_target(const char *conninfo);

/* migrate.c */
int storage_migrate(storage_db *db, const char *db_name);

/* clean.c */
int storage_clean_orphans(storage *st, storage_db *db);

/* id.c */
int storage_id_generate(const char *prefix, char *buf, size_t size);
bool storage_id_is_generated(const char *name);

/* file.c */
int storage_file_row_read(storage_stmt *stmt, storage_file *out);
int storage_file_insert(storage_db *db, const storage_file *rec);
int storage_file_meta_check(const storage_file *meta);
int storage_id_check(const char *id);

#endif
