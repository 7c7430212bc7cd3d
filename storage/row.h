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
int row_insert(sqlite3 *db, const row_table *t, const void *rec);

/* UPDATE every column of rec but the listed ones (NULL-terminated), by id.
 * RT_ERR_NOT_FOUND when no row has that id. */
int row_update(sqlite3 *db, const row_table *t, const void *rec, const char *const *skip);

/* Reads the row where `key` = value into rec. RT_ERR_NOT_FOUND if none. */
int row_get(sqlite3 *db, const row_table *t, const char *key, const char *value, void *rec);

/* Lists rows newest first (seq descending) where `key` = value (key NULL: all
 * rows), after the row with id `after` (NULL: from the newest). */
int row_list(sqlite3 *db, const row_table *t, const char *key, const char *value,
             const char *after, int limit, void **out, size_t *count, bool *has_more);

/* As row_list with an SQL condition: where (NULL: none) refers to its
 * n_args text arguments as ?3, ?4, ... (bound, never pasted into the SQL). */
int row_list_where(sqlite3 *db, const row_table *t, const char *where, const char *const *args,
                   int n_args, const char *after, int limit, void **out, size_t *count,
                   bool *has_more);

#endif
