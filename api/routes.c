/*
 * api/routes.c — the static route table and path matching.
 *
 * Every request is matched here before any handler runs; method, body limit,
 * content type and auth come from the table (api/http.c checks them), so a
 * handler only ever sees requests that passed those checks.
 */
#include "api/api_internal.h"
#include "engine/engine.h"

#include <string.h>

#define JSON_BODY_LIMIT (1 << 20)

const api_route api_routes[] = {
    {"GET", "/", api_dashboard, NULL, 0, 0, "dashboard"},
    {"GET", "/dashboard/{name}", api_dashboard, NULL, 0, 0, "dashboard"},
    {"GET", "/healthz", api_health, NULL, 0, 0, "healthz"},
    {"GET", "/metrics", api_metrics, NULL, 0, 0, "metrics"},
    {"POST", "/v1/files", api_files_upload, api_files_upload_chunk, -1,
     API_FLAG_AUTH | API_FLAG_STREAM_BODY | API_FLAG_MULTIPART, "files.create"},
    {"GET", "/v1/files", api_files_list, NULL, 0, API_FLAG_AUTH, "files.list"},
    {"GET", "/v1/files/{id}", api_files_get, NULL, 0, API_FLAG_AUTH, "files.get"},
    {"DELETE", "/v1/files/{id}", api_files_delete, NULL, 0, API_FLAG_AUTH, "files.delete"},
    {"GET", "/v1/files/{id}/content", api_files_content, NULL, 0, API_FLAG_AUTH,
     "files.content"},
    {"POST", "/v1/fine_tuning/jobs", api_jobs_create, NULL, JSON_BODY_LIMIT,
     API_FLAG_AUTH | API_FLAG_JSON_BODY, "jobs.create"},
    {"GET", "/v1/fine_tuning/jobs", api_jobs_list, NULL, 0, API_FLAG_AUTH, "jobs.list"},
    {"GET", "/v1/fine_tuning/jobs/{id}", api_jobs_get, NULL, 0, API_FLAG_AUTH, "jobs.get"},
    {"POST", "/v1/fine_tuning/jobs/{id}/cancel", api_jobs_cancel, NULL, JSON_BODY_LIMIT,
     API_FLAG_AUTH, "jobs.cancel"},
    {"POST", "/v1/fine_tuning/jobs/{id}/pause", api_jobs_pause, NULL, JSON_BODY_LIMIT,
     API_FLAG_AUTH, "jobs.pause"},
    {"POST", "/v1/fine_tuning/jobs/{id}/resume", api_jobs_resume, NULL, JSON_BODY_LIMIT,
     API_FLAG_AUTH, "jobs.resume"},
    {"GET", "/v1/fine_tuning/jobs/{id}/events", api_jobs_events, NULL, 0, API_FLAG_AUTH,
     "jobs.events"},
    {"GET", "/v1/fine_tuning/jobs/{id}/checkpoints", api_jobs_checkpoints, NULL, 0, API_FLAG_AUTH,
     "jobs.checkpoints"},
    {"GET", "/v1/models", api_models_list, NULL, 0, API_FLAG_AUTH, "models.list"},
    {"GET", "/v1/models/{id}", api_models_get, NULL, 0, API_FLAG_AUTH, "models.get"},
    {"DELETE", "/v1/models/{id}", api_models_delete, NULL, 0, API_FLAG_AUTH, "models.delete"},
    {"POST", "/v1/adapters", api_adapters_import, api_adapters_import_chunk, -1,
     API_FLAG_AUTH | API_FLAG_STREAM_BODY | API_FLAG_MULTIPART, "adapters.import"},
    {"POST", "/v1/chat/completions", api_chat_completions, NULL, JSON_BODY_LIMIT * 8,
     API_FLAG_AUTH | API_FLAG_JSON_BODY, "chat.completions"},
    {"POST", "/v1/completions", api_completions, NULL, JSON_BODY_LIMIT * 8,
     API_FLAG_AUTH | API_FLAG_JSON_BODY, "completions"},
};
const size_t api_route_count = sizeof api_routes / sizeof api_routes[0];

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool api_percent_decode(const char *src, size_t len, char *dst, size_t size,
                        bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return false;
            int hi = hex_value(src[i + 1]);
            int lo = hex_value(src[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == '\0' || o + 1 >= size)
            return false;
        dst[o++] = c;
    }
    dst[o] = '\0';
    return true;
}

/* Splits off the next segment of a path ("/a/b" -> "a"); returns its length
 * and advances *p past it. */
static size_t next_segment(const char **p)
{
    if (**p == '/')
        (*p)++;
    const char *start = *p;
    while (**p && **p != '/')
        (*p)++;
    return (size_t)(*p - start);
}

/* Decodes one raw segment and rejects anything that could escape a folder
 * or smuggle a separator: "..", ".", an encoded "/", "\\", bad UTF-8. */
static bool decode_segment(const char *raw, size_t len, char *out, size_t size)
{
    if (!api_percent_decode(raw, len, out, size, false))
        return false;
    if (strcmp(out, "..") == 0 || strcmp(out, ".") == 0)
        return false;
    if (strchr(out, '/') || strchr(out, '\\'))
        return false;
    return engine_utf8_valid(out, strlen(out));
}

/* Matches one pattern against the decoded segments ("/" is the pattern of
 * no segment at all: the root). */
static bool pattern_fits(const char *pattern, char segs[][API_PARAM_MAX], int n_segs,
                         char params[API_MAX_PARAMS][API_PARAM_MAX], int *n_params)
{
    const char *p = pattern;
    int i = 0, np = 0;
    while (*p && strcmp(p, "/") != 0) {
        const char *seg = p + (*p == '/');
        size_t len = next_segment(&p);
        if (i >= n_segs)
            return false;
        if (seg[0] == '{') {
            if (np >= API_MAX_PARAMS || segs[i][0] == '\0')
                return false;
            if (params)
                memcpy(params[np], segs[i], API_PARAM_MAX);
            np++;
        } else if (strlen(segs[i]) != len || memcmp(segs[i], seg, len) != 0) {
            return false;
        }
        i++;
    }
    if (i != n_segs)
        return false;
    if (n_params)
        *n_params = np;
    return true;
}

enum api_match api_route_match(const char *method, const char *raw_path,
                               const api_route **route,
                               char params[API_MAX_PARAMS][API_PARAM_MAX],
                               int *n_params)
{
    enum { MAX_SEGS = 8 };
    char segs[MAX_SEGS][API_PARAM_MAX];
    int n = 0;
    const char *p = raw_path;
    if (*p != '/')
        return API_MATCH_BAD_PATH;
    while (*p && !(p[0] == '/' && p[1] == '\0')) { /* one trailing '/' is ignored */
        const char *seg = p + 1;
        size_t len = next_segment(&p);
        if (n >= MAX_SEGS)
            return API_MATCH_NOT_FOUND;
        if (!decode_segment(seg, len, segs[n], API_PARAM_MAX))
            return API_MATCH_BAD_PATH;
        n++;
    }
    bool path_known = false;
    for (size_t r = 0; r < api_route_count; r++) {
        if (!pattern_fits(api_routes[r].pattern, segs, n, NULL, NULL))
            continue;
        path_known = true;
        if (strcmp(api_routes[r].method, method) != 0)
            continue;
        pattern_fits(api_routes[r].pattern, segs, n, params, n_params);
        *route = &api_routes[r];
        return API_MATCH_OK;
    }
    return path_known ? API_MATCH_BAD_METHOD : API_MATCH_NOT_FOUND;
}
