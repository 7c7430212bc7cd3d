/*
 * storage/storage.h — retune's records (SQLite or PostgreSQL) and uploaded
 * bytes (blob files).
 *
 * One handle per process, shared by every thread: internally each thread gets
 * its own database connection (opened on first use; SQLite: WAL mode,
 * busy_timeout, foreign keys on; PostgreSQL: one libpq connection), so no
 * connection is ever used by two threads. Nothing outside storage/ knows
 * which database a handle talks to.
 *
 * On disk (DESIGN.md §3):
 *   <data-dir>/retune.db      every record; the source of truth (SQLite, the default)
 *   <data-dir>/files/<id>     uploaded bytes, written tmp -> fsync -> rename -> row
 * With PostgreSQL the records live there instead; blobs and model folders
 * stay under the data directory, and the row remains the commit point.
 *
 * All functions return RT_OK or a negative rt_error code (common/rt.h);
 * out-parameters are untouched on failure. storage never sees HTTP or the engine.
 *
 * Projects: files, jobs (with their events and checkpoints) and models
 * belong to a project. Every lookup, list and delete by id takes the
 * caller's project: a record of another project is RT_ERR_NOT_FOUND, exactly
 * as an unknown id, so no caller can tell the two apart. NULL as the project
 * means "any project" and is for the process's own work (the job worker,
 * the command line), never for a request's caller.
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
#define STORAGE_PROJECT_MAX 64
#define STORAGE_DEFAULT_PROJECT "retune"  /* no auth, keys without a project, old data */

/* Whether name can be a project: 1 to 63 of [A-Za-z0-9._-], not starting
 * with '.' or '-' (it appears in model names such as ft:base:PROJECT:...). */
bool storage_project_valid(const char *name);

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
    int64_t expires_at;                       /* Unix seconds it is deleted at; 0: never */
    char project[STORAGE_PROJECT_MAX];        /* who uploaded it (or whose job wrote it) */
} storage_file;

/*
 * Opens (creating when missing) the data directory, its database and its
 * files/ folder; applies pending migrations in order, each in a transaction,
 * tracked by the schema version (SQLite's PRAGMA user_version). Refuses
 * (RT_ERR_VERSION, message logged) a database whose version is newer than
 * the newest embedded migration. Cleans crash leftovers: temporary upload
 * files and blob files without a row. The caller owns *out and frees it
 * with storage_close(). SQLite at <data-dir>/retune.db.
 */
int storage_open(const char *data_dir, storage **out);

/*
 * storage_open with the database named: NULL or "" for the default
 * (SQLite at <data-dir>/retune.db), "sqlite:PATH" for SQLite at PATH, or a
 * PostgreSQL connection string ("postgres://user@host/db", any libpq URL or
 * key=value string). RT_ERR_INVALID for a string that is none of these (or
 * that libpq cannot parse), RT_ERR_DB for a database that cannot be
 * reached; the reason is logged (never the string, which may hold a
 * password).
 */
int storage_open_database(const char *data_dir, const char *database, storage **out);

/* Whether the handle's records live in PostgreSQL (for messages and tests). */
bool storage_is_postgres(const storage *st);

/* Closes every connection and frees the handle. Accepts NULL. Call it only
 * once no other thread uses the handle. */
void storage_close(storage *st);

/* The schema version the database is at (the last migration applied). */
int storage_schema_version(storage *st, int *out);

/* Writes a new random id "<prefix>-<24 hex>" into buf (size >= STORAGE_ID_MAX). */
void storage_new_id(const char *prefix, char *buf, size_t size);

/*
 * Blob upload, streamed: begin creates a temporary file under files/; write
 * appends; commit fsyncs, renames it to files/<new id>, fsyncs the folder and
 * only then inserts the row from *meta (id, bytes and created_at are filled
 * in by storage; meta's expires_at, when > 0, is the file's lifetime in
 * seconds, stored as created_at + it; meta's project must be valid) and
 * copies the stored record into *out. abort removes the
 * temporary file. commit and abort both free the blob, whatever they return.
 */
int storage_blob_begin(storage *st, storage_blob **out);
int storage_blob_write(storage_blob *blob, const void *data, size_t len);
int64_t storage_blob_size(const storage_blob *blob);
int storage_blob_commit(storage_blob *blob, const storage_file *meta, storage_file *out);
void storage_blob_abort(storage_blob *blob);

/* Deletes every file past its expires_at (row, then bytes; each logged).
 * storage_file_get, _list and _path do it first, so an expired file is
 * never seen again; a server calls it now and then as well. */
int storage_file_expire(storage *st);

/* Reads one file record of project (NULL: any). RT_ERR_NOT_FOUND when
 * there is no such id in it. */
int storage_file_get(storage *st, const char *project, const char *id, storage_file *out);

/*
 * Lists the file records of project (NULL: every project's), newest first
 * when descending (else oldest first), optionally only one purpose (NULL
 * for all) and only those after the record `after` in that order (NULL for
 * the start; RT_ERR_NOT_FOUND if unknown or of another project). At most
 * `limit` records come back in a malloc'd array the caller frees;
 * *has_more says whether more follow.
 */
int storage_file_list(storage *st, const char *project, const char *purpose, const char *after,
                      int limit, bool descending,
                      storage_file **out, size_t *count, bool *has_more);

/* Writes the path of a file's stored bytes into buf. RT_ERR_NOT_FOUND if
 * project (NULL: any) has no such row. */
int storage_file_path(storage *st, const char *project, const char *id, char *buf, size_t size);

/* Deletes the row, then the bytes. RT_ERR_NOT_FOUND when project (NULL:
 * any) has no such id. */
int storage_file_delete(storage *st, const char *project, const char *id);

/* ---- fine-tuning jobs ------------------------------------------------------ */

/* A job record. JSON fields are opaque text here (the API builds them). */
typedef struct storage_job {
    char id[STORAGE_ID_MAX];                 /* "ftjob-..." */
    char model[256];                         /* base model id */
    char training_file[STORAGE_ID_MAX];
    char validation_file[STORAGE_ID_MAX];    /* "" when none */
    char retention_file[STORAGE_ID_MAX];     /* "" when none */
    char status[24];                         /* validating_files, queued, running, paused,
                                                succeeded, failed, cancelled */
    char tenant[128];                        /* the caller's project (owns the job) */
    char suffix[64];
    char fine_tuned_model[512];              /* "" until succeeded */
    char error_code[64], error_message[1024], error_param[64];
    char result_file[STORAGE_ID_MAX];        /* the results CSV file, "" until written */
    char control[16];                        /* "", "cancel", "pause" (set by the API) */
    char checkpoint[1024];                   /* latest checkpoint directory, "" if none */
    char metadata[8192];                     /* JSON object text, "" when none */
    char hyperparameters[4096];              /* JSON object text */
    int64_t created_at, started_at, finished_at, estimated_finish;
    int64_t seed, trained_tokens, step, total_steps, trainable_params, total_params;
    double retention_loss_before, retention_loss_after; /* -1 until measured */
} storage_job;

/* Inserts a new job (every field from *job; id chosen by the caller). */
int storage_job_insert(storage *st, const storage_job *job);

/* Reads a job of project (NULL: any). RT_ERR_NOT_FOUND when there is no
 * such id in it. Events, checkpoints and control calls go by job id: look
 * the job up here first. */
int storage_job_get(storage *st, const char *project, const char *id, storage_job *out);

#define STORAGE_MAX_META_FILTERS 16

/* Which jobs a list returns: one project's (NULL: every project's), one
 * status (NULL: all), and those whose metadata has every key = value given
 * (strings; borrowed). */
typedef struct storage_job_filter {
    const char *project;
    const char *status;
    const char *meta_keys[STORAGE_MAX_META_FILTERS];
    const char *meta_values[STORAGE_MAX_META_FILTERS];
    int n_meta;
} storage_job_filter;

/* The number of jobs (of every project) in each of the n statuses. */
int storage_job_count_by_status(storage *st, const char *const *statuses, int64_t *counts, int n);

/* Lists jobs newest first, those f selects (NULL: all), after the job
 * `after` (NULL: from the newest; RT_ERR_NOT_FOUND if unknown or of another
 * project than f's). *out is
 * malloc'd (caller frees); *has_more says whether more follow. */
int storage_job_list(storage *st, const storage_job_filter *f, const char *after, int limit,
                     storage_job **out, size_t *count, bool *has_more);


/* Writes the fields the worker owns (all but id, created_at and control)
 * of a job. RT_ERR_NOT_FOUND when the row is gone. */
int storage_job_update(storage *st, const storage_job *job);

/* Sets status (and finished_at when terminal) only if the job is in one of
 * the `from` statuses (NULL-terminated); RT_ERR_STATE otherwise. The
 * resulting record is copied to *out (may be NULL). One transaction. */
int storage_job_transition(storage *st, const char *id, const char *const *from,
                           const char *to, storage_job *out);

/* Asks a running job to stop ("cancel" or "pause"); RT_ERR_STATE when it is
 * not running. */
int storage_job_request(storage *st, const char *id, const char *control);

/* Claims the oldest queued job: it becomes running (started_at set the first
 * time, control cleared) in one transaction. RT_ERR_NOT_FOUND if none. */
int storage_job_claim(storage *st, storage_job *out);

/* After a crash: every running job goes back to queued. Writes up to max ids
 * into ids and their number into *count. */
int storage_job_recover(storage *st, char (*ids)[STORAGE_ID_MAX], size_t max, size_t *count);

/* A job event, in the shape of OpenAI's fine_tuning.job.event. */
typedef struct storage_event {
    char id[STORAGE_ID_MAX];       /* "ftevent-..." */
    char job_id[STORAGE_ID_MAX];
    char level[16];                /* "info", "warn", "error" */
    char type[16];                 /* "message" or "metrics" */
    char message[1024];
    char data[2048];               /* JSON object text, "" when none */
    int64_t created_at;
} storage_event;

/* Appends an event (id and created_at filled in when empty/zero). */
int storage_event_add(storage *st, const storage_event *ev);

/* Lists a job's events newest first, after the event `after` of that job
 * (NULL: from the newest; RT_ERR_NOT_FOUND when it is not one of the job's).
 * *out is malloc'd (caller frees). */
int storage_event_list(storage *st, const char *job_id, const char *after, int limit,
                       storage_event **out, size_t *count, bool *has_more);

/* Lists a job's events oldest first, those stored after its event `since`
 * (NULL: from its first; RT_ERR_NOT_FOUND when since is not one of the
 * job's): what a live stream of the job's events sends next. */
int storage_event_list_since(storage *st, const char *job_id, const char *since, int limit,
                             storage_event **out, size_t *count, bool *has_more);

/* A checkpoint of a job, servable as fine_tuned_model_checkpoint. */
typedef struct storage_checkpoint {
    char id[STORAGE_ID_MAX];       /* "ftckpt-..." */
    char job_id[STORAGE_ID_MAX];
    char metrics[2048];            /* JSON object text */
    char fine_tuned_model_checkpoint[640];
    char path[1024];               /* the checkpoint directory */
    int64_t step, created_at;
} storage_checkpoint;

/* Appends a checkpoint (id and created_at filled in when empty/zero). */
int storage_checkpoint_add(storage *st, const storage_checkpoint *ck);

/* Appends a checkpoint and saves its job (the job's checkpoint and step:
 * where a resumed job starts) in one transaction, so that a crash leaves
 * both or neither. One checkpoint per job and step: a second is
 * RT_ERR_EXISTS, and nothing changes. */
int storage_checkpoint_commit(storage *st, const storage_checkpoint *ck, const storage_job *job);

/* Lists a job's checkpoints (job_id NULL: those of every job of project,
 * NULL: of every project) newest first (after: as storage_event_list). */
int storage_checkpoint_list(storage *st, const char *project, const char *job_id,
                            const char *after, int limit, storage_checkpoint **out,
                            size_t *count, bool *has_more);

/* Finds the checkpoint whose fine_tuned_model_checkpoint is `model` among
 * the jobs of project (NULL: any). RT_ERR_NOT_FOUND otherwise. */
int storage_checkpoint_find_model(storage *st, const char *project, const char *model,
                                  storage_checkpoint *out);

/* ---- servable models ---------------------------------------------------- */

typedef struct storage_model {
    char id[640];            /* the name requests use, e.g. "ft:base:org:sfx:abc" */
    char kind[16];           /* "adapter" or "full" */
    char parent[256];        /* the base model id */
    char owned_by[128];      /* the project; names are unique within one */
    char path[1024];         /* the directory holding its files */
    char job_id[STORAGE_ID_MAX]; /* the job that made it, "" if imported */
    int64_t created_at;
} storage_model;

/* Publishes a model (created_at filled in when 0). RT_ERR_EXISTS if its
 * project (owned_by, which must be valid) already has that name. */
int storage_model_add(storage *st, const storage_model *m);

/*
 * Publishes the finished directory tmp_dir (the caller's, on the same file
 * system) as model m, the one way a model directory enters the data
 * directory: fsyncs its files and itself, renames it to
 * <data-dir>/adapters/<dir_name> (m->kind "adapter") or models/<dir_name>
 * ("full"), fsyncs that folder, and only then inserts m's row (replacing a
 * row of the same project and id when replace, e.g. a job re-run after a crash). A
 * crash at any point leaves no row without its directory; a directory
 * without a row is removed at the next open. m->path is set to the final
 * directory. Errors: RT_ERR_EXISTS (m->id taken, nothing moved),
 * RT_ERR_INVALID, RT_ERR_IO, RT_ERR_DB (then the directory is removed).
 * Taken names are looked up in m->owned_by only.
 */
/* Folders inside the data directory (whose layout is storage's alone):
 * STORAGE_WORK_JOB is "jobs/<id>", a job's checkpoints, results and output,
 * kept across restarts (created when missing); STORAGE_WORK_IMPORT is a
 * new, empty, private folder beside the adapters where an upload is
 * assembled before storage_model_publish (id is ignored; storage_open
 * removes the leftovers of a crash); STORAGE_WORK_BASE is "base/<id>", where
 * a built-in base model is kept (only its parent is created: whoever makes
 * the model creates the folder). The path goes to out. RT_ERR_INVALID (a
 * bad id, too long), RT_ERR_IO. */
enum storage_work { STORAGE_WORK_JOB, STORAGE_WORK_IMPORT, STORAGE_WORK_BASE };
int storage_work_dir(storage *st, enum storage_work kind, const char *id, char *out, size_t size);

int storage_model_publish(storage *st, const char *tmp_dir, const char *dir_name, bool replace,
                          storage_model *m);


/* Reads project's model by name. RT_ERR_NOT_FOUND when it has none of that
 * name. (Names are unique per project only, so project is never NULL.) */
int storage_model_get(storage *st, const char *project, const char *id, storage_model *out);

/* Lists project's (NULL: every project's) models newest first (as
 * storage_job_list; `after` is a name in project). */
int storage_model_list(storage *st, const char *project, const char *after, int limit,
                       storage_model **out, size_t *count, bool *has_more);

/* Unpublishes project's model. RT_ERR_NOT_FOUND when it has none of that name. */
int storage_model_delete(storage *st, const char *project, const char *id);

/* ---- API keys (managed by `retune keys`) ---------------------------------- */

#define STORAGE_KEY_PREFIX_MAX 16

/* A stored key: never the secret, only its SHA-256. */
typedef struct storage_key {
    char id[STORAGE_ID_MAX];                 /* "key-<24 hex>", what revoke takes */
    char project[STORAGE_PROJECT_MAX];
    char hash[RT_SHA256_HEX_SIZE];           /* hex SHA-256 of the secret */
    char prefix[STORAGE_KEY_PREFIX_MAX];     /* the secret's first few characters */
    int64_t created_at, revoked_at;          /* revoked_at 0: live */
} storage_key;

/* Inserts a key (id and created_at filled in when empty/zero; the record
 * stored is copied to *out, which may be NULL). RT_ERR_INVALID for a bad
 * project, hash or prefix; RT_ERR_EXISTS for a hash already stored. */
int storage_key_add(storage *st, const storage_key *key, storage_key *out);

/* Finds the live (not revoked) key whose hash is `hash`. RT_ERR_NOT_FOUND
 * when there is none. */
int storage_key_find(storage *st, const char *hash, storage_key *out);

/* Whether any key was ever stored, revoked ones included (*out). Once one
 * is, a server asks every caller for a key: revoking the last one must not
 * open the door. */
int storage_key_any(storage *st, bool *out);

/* Every key, oldest first, in a malloc'd array the caller frees. */
int storage_key_list(storage *st, storage_key **out, size_t *count);

/* Revokes the key `id` (from then on storage_key_find does not see it).
 * RT_ERR_NOT_FOUND when unknown, RT_ERR_STATE when already revoked. */
int storage_key_revoke(storage *st, const char *id);

/* The data directory (borrowed from the handle). */
const char *storage_data_dir(const storage *st);

#endif
