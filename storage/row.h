/*
 * storage/row.h — (internal to storage/) records described as column tables,
 * so insert, update, read and paged listing are written once for every
 * table with fixed-size text fields and integers.
 */
#ifndef RT_STORAGE_ROW_H
#define RT_STORAGE_ROW_H

#include <stdbool.h>
#include <stddef.h>

#include "storage/storage_internal.h"

enum row_type { ROW_TEXT, ROW_INT, ROW_REAL };

/* One column: its name, type and where it lives in the C struct. */
typedef struct row_col {
    const char *name;
    enum row_type type;
    size_t offset, size;
} row_col;

#define ROW_TEXT_COL(type, field) {#field, ROW_TEXT, offsetof(type, field), sizeof(((type *)0)->field)}
#define ROW_INT_COL(type, field) {#field, ROW_INT, offsetof(type, field), sizeof(int64_t)}
#define ROW_REAL_COL(type, field) {#field, ROW_REAL, offsetof(type, field), sizeof(double)}

/* A table: its name, columns (the first is the unique id) and record size. */
typedef struct row_table {
    const char *name;
    const row_col *cols;
    size_t n_cols;
    size_t rec_size;
} row_table;

/* INSERT every column of rec. */
int row_insert(storage_db *db, const row_table *t, const void *rec);

/* UPDATE every column of rec but the listed ones (NULL-terminated), by id.
 * RT_ERR_NOT_FOUND when no row has that id. */
int row_update(storage_db *db, const row_table *t, const void *rec, const char *const *skip);

/* Reads the row where `key` = value into rec. RT_ERR_NOT_FOUND if none. */
int row_get(storage_db *db, const row_table *t, const char *key, const char *value, void *rec);

/* row_get, locking the row until the caller's write transaction ends
 * (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write transaction already
 * excludes other writers). For a read-then-update that must not race. */
int row_lock(storage_db *db, const row_table *t, const char *key, const char *value, void *rec);

/* Reads the newest row meeting the SQL condition where, which refers to its
 * n_args text arguments as ?1, ?2, ... (bound, never pasted into the SQL; a
 * NULL argument is SQL NULL). */
int row_get_where(storage_db *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, void *rec);

/* Lists rows newest first (seq descending) whose seq is below `below` (a
 * cursor's seq from row_seq_where; INT64_MAX: from the newest) and that
 * meet the SQL condition where (NULL: all rows), which refers to its n_args
 * text arguments as ?3, ?4, ... (bound, never pasted into the SQL; a NULL
 * argument is SQL NULL). At most limit rows come back in a malloc'd array
 * (*out, caller frees); *has_more says whether more follow. */
int row_list_below(storage_db *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t below, int limit, void **out, size_t *count,
                   bool *has_more);

/* The same oldest first (seq ascending), from seq above `above` (0: from
 * the oldest). */
int row_list_above(storage_db *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, int64_t above, int limit, void **out, size_t *count,
                   bool *has_more);

/* The seq (list position) of the newest row meeting where (arguments ?1,
 * ?2, ...), e.g. a cursor looked up within one project. RT_ERR_NOT_FOUND
 * if none. */
int row_seq_where(storage_db *db, const row_table *t, const char *where, const char *const *args,
                  int n_args, int64_t *seq);

#endif
