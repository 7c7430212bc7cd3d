/*
 * api/respond.c — every response leaves through here, so each one is queued
 * exactly once, JSON always carries Content-Type: application/json, and
 * errors always have OpenAI's shape {"error": {message, type, param, code}}.
 */
#include "api/api_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Queues resp (destroyed here) and records the status. */
static int queue(api_request *req, int status, struct MHD_Response *resp)
{
    if (!resp)
        return RT_ERR_NOMEM;
    if (req->responded) { /* a programming error; keep the first answer */
        MHD_destroy_response(resp);
        rt_log(RT_LOG_ERROR, "second response for %s %s ignored", req->method, req->path);
        return RT_OK;
    }
    if (req->request_id[0]) /* every response says which request it answers, as OpenAI's do */
        MHD_add_response_header(resp, "x-request-id", req->request_id);
    enum MHD_Result ok = MHD_queue_response(req->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    req->responded = true;
    req->status = status;
    return ok == MHD_YES ? RT_OK : RT_ERR_IO;
}

int api_respond_response(api_request *req, int status, struct MHD_Response *resp)
{
    return queue(req, status, resp);
}

int api_respond_error_retry(api_request *req, int status, int retry_after, const char *code,
                            const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(err, "message", message);
    cJSON_AddStringToObject(err, "type", "rate_limit_error");
    cJSON_AddNullToObject(err, "param");
    cJSON_AddStringToObject(err, "code", code);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(text);
        return RT_ERR_NOMEM;
    }
    char seconds[16];
    snprintf(seconds, sizeof seconds, "%d", retry_after);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
    return queue(req, status, resp);
}

int api_respond_text(api_request *req, int status, const char *content_type,
                     const char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return RT_ERR_NOMEM;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return queue(req, status, resp);
}

int api_respond_json(api_request *req, int status, cJSON *json)
{
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    if (!text)
        return RT_ERR_NOMEM;
    size_t len = strlen(text);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return RT_ERR_NOMEM;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return queue(req, status, resp);
}

int api_respond_error(api_request *req, int status, const char *type,
                      const char *param, const char *code, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(err, "message", message);
    cJSON_AddStringToObject(err, "type", type);
    if (param)
        cJSON_AddStringToObject(err, "param", param);
    else
        cJSON_AddNullToObject(err, "param");
    if (code)
        cJSON_AddStringToObject(err, "code", code);
    else
        cJSON_AddNullToObject(err, "code");
    return api_respond_json(req, status, root);
}

int api_respond_fd(api_request *req, int status, const char *content_type,
                   int fd, uint64_t size)
{
    struct MHD_Response *resp = MHD_create_response_from_fd64(size, fd);
    if (!resp) {
        close(fd);
        return RT_ERR_NOMEM;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return queue(req, status, resp);
}

int api_respond_not_found(api_request *req, const char *what, const char *id)
{
    return api_respond_error(req, MHD_HTTP_NOT_FOUND, "invalid_request_error", "id",
                             "not_found", "No such %s: '%s'", what, id);
}

int api_respond_internal(api_request *req, int rc)
{
    rt_log(RT_LOG_ERROR, "%s %s failed: %s", req->method, req->path, rt_strerror(rc));
    return api_respond_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL,
                             NULL, "The server had an error while processing your request (%s).",
                             rt_strerror(rc));
}
