/*
 * storage/storage.h — retune's records (SQLite) and uploaded bytes (blob files).
 *
 * One handle per process, shared by every thread: internally each thread gets
 * its own SQLite connection (opened on first use, WAL mode, busy_timeout,
 * foreign keys on), so no connection is ever used by two threads.
 *
 * On disk (DESIGN.md §3):
 *   <data-dir>/retune.db      every record; the source of truth
 *   <data-dir>/files/<id>     uploaded bytes, written tmp -> fsync -> rename -> row
 *
 * All functions return RT_OK or a negative rt_error code (common/rt.h);
 * out-parameters are untouched on failure. storage never sees HTTP or the engine.
 */
#ifndef RT_STORAGE_H
#define RT_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

typedef struct storage storage;
typedef struct storage_blob storage_blob;

#define STORAGE_ID_MAX 64
#define STORAGE_FILENAME_MAX 256
#define STORAGE_PURPOSE_MAX 32
#define STORAGE_STATUS_MAX 16
#define STORAGE_DETAILS_MAX 512

/* A file record, in the shape of OpenAI's file object. */
typedef struct storage_file {
    char id[STORAGE_ID_MAX];                  /* "file-" + 24 lowercase hex */
    char filename[STORAGE_FILENAME_MAX];      /* as the client named it */
    char purpose[STORAGE_PURPOSE_MAX];        /* "fine-tune", "fine-tune-results", ... */
    char status[STORAGE_STATUS_MAX];          /* "processed" or "error" */
    char status_details[STORAGE_DETAILS_MAX]; /* "" or why status is "error" */
    int64_t bytes;                            /* size of the stored content */
    int64_t created_at;                       /* Unix seconds */
    int64_t n_examples;                       /* JSONL examples counted, 0 if n/a */
    int64_t n_tokens;                         /* tokens counted, 0 until known */
} storage_file;

/*
 * Opens (creating when missing) the data directory, its database and its
 * files/ folder; applies pending migrations in order, each in a transaction,
 * tracked by PRAGMA user_version. Refuses (RT_ERR_VERSION, message logged) a
 * database whose user_version is newer than the newest embedded migration.
 * Cleans crash leftovers: temporary upload files and blob files without a row.
 * The caller owns *out and frees it with storage_close().
 */
int storage_open(const char *data_dir, storage **out);

/* Closes every connection and frees the handle. Accepts NULL. Call it only
 * once no other thread uses the handle. */
void storage_close(storage *st);

/* The schema version the database is at (PRAGMA user_version). */
int storage_schema_version(storage *st, int *out);

/* Writes a new random id "<prefix>-<24 hex>" into buf (size >= STORAGE_ID_MAX). */
void storage_new_id(const char *prefix, char *buf, size_t size);

/*
 * Blob upload, streamed: begin creates a temporary file under files/; write
 * appends; commit fsyncs, renames it to files/<new id>, fsyncs the folder and
 * only then inserts the row from *meta (id, bytes and created_at are filled
 * in by storage) and copies the stored record into *out. abort removes the
 * temporary file. commit and abort both free the blob, whatever they return.
 */
int storage_blob_begin(storage *st, storage_blob **out);
int storage_blob_write(storage_blob *blob, const void *data, size_t len);
int64_t storage_blob_size(const storage_blob *blob);
int storage_blob_commit(storage_blob *blob, const storage_file *meta, storage_file *out);
void storage_blob_abort(storage_blob *blob);

/* Reads one file record. RT_ERR_NOT_FOUND when there is no such id. */
int storage_file_get(storage *st, const char *id, storage_file *out);

/*
 * Lists file records, newest first when descending (else oldest first),
 * optionally only one purpose (NULL for all) and only those after the record
 * `after` in that order (NULL for the start; RT_ERR_NOT_FOUND if unknown).
 * At most `limit` records come back in a malloc'd array the caller frees;
 * *has_more says whether more follow.
 */
int storage_file_list(storage *st, const char *purpose, const char *after,
                      int limit, bool descending,
                      storage_file **out, size_t *count, bool *has_more);

/* Writes the path of a file's stored bytes into buf. RT_ERR_NOT_FOUND if no row. */
int storage_file_path(storage *st, const char *id, char *buf, size_t size);

/* Deletes the row, then the bytes. RT_ERR_NOT_FOUND when there is no such id. */
int storage_file_delete(storage *st, const char *id);

#endif
