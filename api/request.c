/*
 * api/request.c — reading what a request carries: query arguments (decoded
 * here, since the daemon is told not to unescape anything), JSON bodies,
 * and the caller's project (set by auth in api/http.c).
 */
#include "api/api_internal.h"
#include "engine/engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool api_query(api_request *req, const char *key, char *buf, size_t size)
{
    const char *raw = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
    if (!raw)
        return false;
    if (!api_percent_decode(raw, strlen(raw), buf, size, true))
        return false;
    return engine_utf8_valid(buf, strlen(buf));
}

bool api_query_limit(api_request *req, int def, int lo, int hi, int *out)
{
    char buf[32];
    const char *raw = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (!raw) {
        *out = def;
        return true;
    }
    char *end = NULL;
    errno = 0;
    long v = api_query(req, "limit", buf, sizeof buf) ? strtol(buf, &end, 10) : 0;
    if (!end || *end || end == buf || errno || v < lo || v > hi) {
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", "limit",
                          "invalid_value", "limit must be an integer from %d to %d", lo, hi);
        return false;
    }
    *out = (int)v;
    return true;
}

cJSON *api_body_json(api_request *req)
{
    const char *body = req->body ? req->body : "";
    if (!engine_utf8_valid(body, req->body_len)) {
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL,
                          "invalid_utf8", "The request body is not valid UTF-8.");
        return NULL;
    }
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(body, req->body_len, &end, 0);
    if (!json || !cJSON_IsObject(json)) {
        cJSON_Delete(json);
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL,
                          "invalid_json",
                          "We could not parse the JSON body of your request: expected a JSON object.");
        return NULL;
    }
    return json;
}

const char *api_project(const api_request *req)
{
    return req->tenant && req->tenant[0] ? req->tenant : STORAGE_DEFAULT_PROJECT;
}

void api_engine_key(const api_request *req, const char *model, char *buf, size_t size)
{
    api_engine_key_of(api_project(req), model, buf, size);
}

void api_engine_key_of(const char *project, const char *model, char *buf, size_t size)
{
    snprintf(buf, size, "/%s/%s", project, model);
}
