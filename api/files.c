/*
 * api/files.c — OpenAI's Files API: upload (multipart, streamed to a blob and
 * validated line by line on the way), list, get, content, delete.
 *
 * An upload is never held whole in memory: the multipart parser hands the
 * `file` part to storage_blob_write() piece by piece, and fine-tune JSONL is
 * checked one line at a time (only the current line is buffered). A file
 * whose data is bad is still stored, with status "error" and the first bad
 * line named in status_details, as OpenAI does.
 *
 * A file belongs to the caller's project (api_project): storage answers
 * every other project's id as unknown, so get, content and delete of it
 * are the same 404 as for an id that never existed, and lists leave it out.
 */
#include "api/api_internal.h"
#include "engine/engine.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINE_BYTES (8 << 20)

static const char *const upload_purposes[] = {"fine-tune", "assistants", "batch",
                                              "vision", "user_data", "evals"};

typedef struct upload {
    api_multipart mp;
    storage_blob *blob;
    int file_parts;                 /* how many `file` parts were seen */
    bool file_seen;                 /* a piece of a `file` part arrived (even empty) */
    bool bad_multipart;
    int storage_rc;                 /* first storage error while writing */
    char filename[STORAGE_FILENAME_MAX];
    bool filename_bad;
    char purpose[STORAGE_PURPOSE_MAX];
    size_t purpose_len;
    bool have_purpose, purpose_bad;
    char anchor[32], seconds[32];   /* expires_after[anchor], expires_after[seconds] */
    size_t anchor_len, seconds_len;
    bool have_expiry, expiry_bad;
    /* line-by-line JSONL check */
    char *line;
    size_t line_len, line_cap;
    bool line_too_long;
    int64_t line_no, n_examples;
    bool invalid;
    char details[STORAGE_DETAILS_MAX];
} upload;

static void upload_free(void *p)
{
    upload *up = p;
    if (!up)
        return;
    api_multipart_close(&up->mp);
    storage_blob_abort(up->blob);
    free(up->line);
    free(up);
}

/* Checks the complete line held in up->line (the up->line_no-th line). */
static void check_line(upload *up)
{
    up->line_no++;
    if (up->invalid)
        return;
    char reason[STORAGE_DETAILS_MAX - 32];
    enum engine_example_format format;
    int rc;
    if (up->line_too_long) {
        snprintf(reason, sizeof reason, "longer than %d bytes", MAX_LINE_BYTES);
        rc = RT_ERR_FORMAT;
    } else {
        rc = engine_dataset_check_line(up->line, up->line_len, &format, reason, sizeof reason);
    }
    if (rc == RT_OK)
        up->n_examples++;
    else if (rc != RT_ERR_NOT_FOUND) {
        up->invalid = true;
        snprintf(up->details, sizeof up->details, "line %lld: %s", (long long)up->line_no, reason);
    }
    up->line_len = 0;
    up->line_too_long = false;
}

/* Adds bytes to the current line (bounded). */
static void line_append(upload *up, const char *data, size_t len)
{
    if (len == 0 || up->invalid || up->line_too_long)
        return;
    if (up->line_len + len > MAX_LINE_BYTES) {
        up->line_too_long = true;
        return;
    }
    if (up->line_len + len > up->line_cap) {
        size_t cap = (up->line_len + len) * 2 + 256;
        char *nl = realloc(up->line, cap);
        if (!nl) {
            up->line_too_long = true; /* reported as a bad line; never crash */
            return;
        }
        up->line = nl;
        up->line_cap = cap;
    }
    memcpy(up->line + up->line_len, data, len);
    up->line_len += len;
}

/* Splits a piece of the file into lines and checks each complete one. */
static void scan_lines(upload *up, const char *data, size_t size)
{
    while (size > 0) {
        const char *nl = memchr(data, '\n', size);
        size_t take = nl ? (size_t)(nl - data) : size;
        line_append(up, data, take);
        if (!nl)
            return;
        check_line(up);
        data += take + 1;
        size -= take + 1;
    }
}

/* Receives one piece of the `file` part: stored and scanned. */
static void take_file_data(api_request *req, upload *up, const char *filename,
                           const char *data, size_t size, uint64_t off)
{
    if (off == 0 && up->blob == NULL && up->storage_rc == RT_OK) {
        up->file_parts++;
        if (up->file_parts > 1)
            return;
        snprintf(up->filename, sizeof up->filename, "%s", filename ? filename : "file");
        up->filename_bad = !engine_utf8_valid(up->filename, strlen(up->filename)) ||
                           (filename && strlen(filename) >= sizeof up->filename);
        up->storage_rc = storage_blob_begin(req->srv->st, &up->blob);
    }
    if (up->file_parts > 1 || !up->blob || size == 0)
        return;
    if (up->storage_rc == RT_OK)
        up->storage_rc = storage_blob_write(up->blob, data, size);
    scan_lines(up, data, size);
}

/* Receives one piece of the `purpose` field. */
static void take_purpose(upload *up, const char *data, size_t size)
{
    up->have_purpose = true;
    if (up->purpose_len + size >= sizeof up->purpose) {
        up->purpose_bad = true;
        return;
    }
    memcpy(up->purpose + up->purpose_len, data, size);
    up->purpose_len += size;
    up->purpose[up->purpose_len] = '\0';
}

/* Receives one piece of an expires_after field into buf (size bytes). */
static void take_field(upload *up, char *buf, size_t size, size_t *len, const char *data, size_t n)
{
    up->have_expiry = true;
    if (*len + n >= size) {
        up->expiry_bad = true;
        return;
    }
    memcpy(buf + *len, data, n);
    *len += n;
    buf[*len] = '\0';
}

/* The lifetime expires_after asks for (OpenAI's: anchor created_at, 3600 to
 * 2592000 seconds); 0 when not given, -1 when bad. */
static int64_t expiry_seconds(const upload *up)
{
    if (!up->have_expiry)
        return 0;
    char *end = NULL;
    long long v = up->seconds_len ? strtoll(up->seconds, &end, 10) : -1;
    if (up->expiry_bad || strcmp(up->anchor, "created_at") || !end || *end || v < 3600 ||
        v > 2592000)
        return -1;
    return (int64_t)v;
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data,
                               uint64_t off, size_t size)
{
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    api_request *req = cls;
    upload *up = req->state;
    if (strcmp(key, "file") == 0) {
        /* A second file part starts at offset 0 after the first, empty or not. */
        if (off == 0 && up->file_seen && up->file_parts == 1)
            up->file_parts++;
        up->file_seen = true;
        take_file_data(req, up, filename, data, size, off);
    } else if (strcmp(key, "purpose") == 0) {
        take_purpose(up, data, size);
    } else if (strcmp(key, "expires_after[anchor]") == 0) {
        take_field(up, up->anchor, sizeof up->anchor, &up->anchor_len, data, size);
    } else if (strcmp(key, "expires_after[seconds]") == 0) {
        take_field(up, up->seconds, sizeof up->seconds, &up->seconds_len, data, size);
    }
    return MHD_YES;
}

int api_files_upload_chunk(api_request *req, const char *data, size_t len)
{
    upload *up = req->state;
    if (!up) {
        up = calloc(1, sizeof *up);
        if (!up)
            return RT_ERR_NOMEM;
        req->state = up;
        req->state_free = upload_free;
        if (!api_multipart_open(&up->mp, req->conn, on_part, req))
            up->bad_multipart = true;
    }
    if (!up->bad_multipart && !api_multipart_feed(&up->mp, data, len))
        up->bad_multipart = true;
    return RT_OK;
}

/* Builds OpenAI's file object. */
static cJSON *file_json(const storage_file *f)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", f->id);
    cJSON_AddStringToObject(o, "object", "file");
    cJSON_AddNumberToObject(o, "bytes", (double)f->bytes);
    cJSON_AddNumberToObject(o, "created_at", (double)f->created_at);
    if (f->expires_at > 0)
        cJSON_AddNumberToObject(o, "expires_at", (double)f->expires_at);
    else
        cJSON_AddNullToObject(o, "expires_at");
    cJSON_AddStringToObject(o, "filename", f->filename);
    cJSON_AddStringToObject(o, "purpose", f->purpose);
    cJSON_AddStringToObject(o, "status", f->status);
    if (f->status_details[0])
        cJSON_AddStringToObject(o, "status_details", f->status_details);
    else
        cJSON_AddNullToObject(o, "status_details");
    return o;
}

static bool purpose_known(const char *purpose)
{
    for (size_t i = 0; i < sizeof upload_purposes / sizeof upload_purposes[0]; i++)
        if (strcmp(purpose, upload_purposes[i]) == 0)
            return true;
    return false;
}

/* Answers a request whose form fields are missing or wrong; true if it did. */
static bool reject_bad_form(api_request *req, const upload *up)
{
    const char *bad = "invalid_request_error";
    if (!up || up->bad_multipart)
        return api_respond_error(req, 400, bad, "file", "invalid_multipart",
                                 "The multipart/form-data body could not be parsed."), true;
    if (up->file_parts == 0)
        return api_respond_error(req, 400, bad, "file", "missing_required_parameter",
                                 "Missing required parameter: 'file'."), true;
    if (up->file_parts > 1)
        return api_respond_error(req, 400, bad, "file", "invalid_value",
                                 "Only one 'file' may be uploaded per request."), true;
    if (up->filename_bad)
        return api_respond_error(req, 400, bad, "file", "invalid_value",
                                 "The file name must be valid UTF-8 of at most %d bytes.",
                                 STORAGE_FILENAME_MAX - 1), true;
    if (!up->have_purpose)
        return api_respond_error(req, 400, bad, "purpose", "missing_required_parameter",
                                 "Missing required parameter: 'purpose'."), true;
    if (up->purpose_bad || !purpose_known(up->purpose))
        return api_respond_error(req, 400, bad, "purpose", "invalid_value",
                                 "'purpose' must be one of fine-tune, assistants, batch, vision, "
                                 "user_data, evals."), true;
    if (expiry_seconds(up) < 0)
        return api_respond_error(req, 400, bad, "expires_after", "invalid_value",
                                 "'expires_after' needs anchor 'created_at' and seconds from 3600 "
                                 "(one hour) to 2592000 (30 days)."), true;
    return false;
}

/* Fills the record's status from the JSONL check (fine-tune files only). */
static void set_status(upload *up, storage_file *meta)
{
    snprintf(meta->status, sizeof meta->status, "processed");
    if (strcmp(up->purpose, "fine-tune") != 0)
        return;
    if (up->line_len > 0 || up->line_too_long)
        check_line(up); /* the last line had no newline */
    if (!up->invalid && up->n_examples == 0) {
        up->invalid = true;
        snprintf(up->details, sizeof up->details, "the file contains no examples");
    }
    meta->n_examples = up->n_examples;
    if (up->invalid) {
        snprintf(meta->status, sizeof meta->status, "error");
        snprintf(meta->status_details, sizeof meta->status_details, "%s", up->details);
    }
}

int api_files_upload(api_request *req)
{
    upload *up = req->state;
    if (up && up->mp.pp && !api_multipart_finish(&up->mp))
        up->bad_multipart = true;
    if (reject_bad_form(req, up))
        return RT_OK;
    if (up->storage_rc != RT_OK)
        return up->storage_rc;
    storage_file meta = {0}, stored;
    snprintf(meta.filename, sizeof meta.filename, "%s", up->filename);
    snprintf(meta.purpose, sizeof meta.purpose, "%s", up->purpose);
    snprintf(meta.project, sizeof meta.project, "%s", api_project(req));
    meta.expires_at = expiry_seconds(up); /* a lifetime; storage makes it a time */
    set_status(up, &meta);
    storage_blob *blob = up->blob;
    up->blob = NULL; /* commit frees it, whatever happens */
    int rc = storage_blob_commit(blob, &meta, &stored);
    if (rc != RT_OK)
        return rc;
    rt_log(RT_LOG_INFO, "stored %s (%lld bytes, %s, %s)", stored.id, (long long)stored.bytes,
           stored.purpose, stored.status);
    return api_respond_json(req, 200, file_json(&stored));
}

int api_files_get(api_request *req)
{
    storage_file f;
    int rc = storage_file_get(req->srv->st, api_project(req), req->params[0], &f);
    if (rc == RT_ERR_NOT_FOUND)
        return api_respond_not_found(req, "file", req->params[0]);
    if (rc != RT_OK)
        return rc;
    return api_respond_json(req, 200, file_json(&f));
}

/* Reads order=asc|desc (default desc); answers 400 on anything else. */
static bool parse_order(api_request *req, bool *descending)
{
    char order[16];
    *descending = true;
    if (!MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, "order"))
        return true;
    if (api_query(req, "order", order, sizeof order) &&
        (strcmp(order, "asc") == 0 || strcmp(order, "desc") == 0)) {
        *descending = strcmp(order, "desc") == 0;
        return true;
    }
    api_respond_error(req, 400, "invalid_request_error", "order", "invalid_value",
                      "order must be 'asc' or 'desc'.");
    return false;
}

int api_files_list(api_request *req)
{
    int limit;
    bool descending;
    char purpose[STORAGE_PURPOSE_MAX], after[STORAGE_ID_MAX];
    if (!api_query_limit(req, 10000, 1, 10000, &limit) || !parse_order(req, &descending))
        return RT_OK;
    bool has_purpose = api_query(req, "purpose", purpose, sizeof purpose);
    bool has_after = api_query(req, "after", after, sizeof after);
    storage_file *files = NULL;
    size_t n = 0;
    bool more = false;
    int rc = storage_file_list(req->srv->st, api_project(req), has_purpose ? purpose : NULL,
                               has_after ? after : NULL, limit, descending, &files, &n, &more);
    if (rc == RT_ERR_NOT_FOUND)
        return api_respond_error(req, 400, "invalid_request_error", "after", "invalid_value",
                                 "No such file to list after: '%s'.", after);
    if (rc != RT_OK)
        return rc;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(data, file_json(&files[i]));
    if (n) {
        cJSON_AddStringToObject(root, "first_id", files[0].id);
        cJSON_AddStringToObject(root, "last_id", files[n - 1].id);
    } else {
        cJSON_AddNullToObject(root, "first_id");
        cJSON_AddNullToObject(root, "last_id");
    }
    cJSON_AddBoolToObject(root, "has_more", more);
    free(files);
    return api_respond_json(req, 200, root);
}

int api_files_content(api_request *req)
{
    char path[4096];
    int rc = storage_file_path(req->srv->st, api_project(req), req->params[0], path, sizeof path);
    if (rc == RT_ERR_NOT_FOUND)
        return api_respond_not_found(req, "file", req->params[0]);
    if (rc != RT_OK)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0)
            close(fd);
        return RT_ERR_IO;
    }
    return api_respond_fd(req, 200, "application/octet-stream", fd, (uint64_t)sb.st_size);
}

int api_files_delete(api_request *req)
{
    int rc = storage_file_delete(req->srv->st, api_project(req), req->params[0]);
    if (rc == RT_ERR_NOT_FOUND)
        return api_respond_not_found(req, "file", req->params[0]);
    if (rc != RT_OK)
        return rc;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", req->params[0]);
    cJSON_AddStringToObject(o, "object", "file");
    cJSON_AddBoolToObject(o, "deleted", true);
    return api_respond_json(req, 200, o);
}
