/*
 * api/respond.c — every response leaves through here, so each one is queued
 * exactly once, JSON always carries Content-Type: application/json, and
 * errors always have OpenAI's shape {"error": {message, type, param, code}}
 * in valid UTF-8 (echoed bytes that are not become "%XX").
 *
 * libmicrohttpd 0.9.75 queues a response only before a body is read or
 * after all of it is; an error found while a body streams in (one over its
 * limit) is therefore written to the socket here, whole, with
 * "Connection: close", and the request is marked closing (api/http.c then
 * discards the rest and closes the connection).
 */
#include "api/api_internal.h"
#include "engine/engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The length of the UTF-8 sequence a lead byte starts (0: not a lead byte). */
static size_t utf8_lead_length(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

void api_utf8_fix(const char *s, char *out, size_t size)
{
    size_t o = 0, len = strlen(s);
    for (size_t i = 0; i < len;) {
        size_t n = utf8_lead_length((unsigned char)s[i]);
        bool ok = n > 0 && i + n <= len && engine_utf8_valid(s + i, n);
        size_t need = ok ? n : 3;
        if (o + need + 1 > size)
            break;
        if (ok)
            memcpy(out + o, s + i, n);
        else
            snprintf(out + o, 4, "%%%02X", (unsigned char)s[i]);
        o += need;
        i += ok ? n : 1;
    }
    if (size)
        out[o] = '\0';
}

bool api_buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = (*len + n + 1) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

/* Adds s to o under key, made valid UTF-8 first; NULL adds null. */
static void add_text(cJSON *o, const char *key, const char *s)
{
    if (!s) {
        cJSON_AddNullToObject(o, key);
        return;
    }
    char fixed[3 * 1024 + 1];
    api_utf8_fix(s, fixed, sizeof fixed);
    cJSON_AddStringToObject(o, key, fixed);
}

/* {"error": {message, type, param, code}} as JSON text (malloc'd; NULL: no memory). */
static char *error_text(const char *type, const char *param, const char *code, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    add_text(err, "message", message);
    add_text(err, "type", type);
    add_text(err, "param", param);
    add_text(err, "code", code);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* A response of JSON text (taken, freed on failure) with its Content-Type; NULL: no memory. */
static struct MHD_Response *json_response(char *text)
{
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return resp;
}

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
    if (req->in_body) { /* a programming error: only errors can be answered mid-body */
        MHD_destroy_response(resp);
        rt_log(RT_LOG_ERROR, "response mid-body for %s %s: closing instead", req->method, req->path);
        req->responded = req->closing = true;
        req->status = status;
        req->closing_since = rt_now_seconds();
        return RT_ERR_STATE;
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

int api_respond_event_stream(api_request *req, MHD_ContentReaderCallback read, void *cls,
                             MHD_ContentReaderFreeCallback free_cls)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read, cls, free_cls);
    if (!resp) {
        free_cls(cls);
        return RT_ERR_NOMEM;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return queue(req, 200, resp);
}

int api_respond_error_retry(api_request *req, int status, int retry_after, const char *code,
                            const char *message)
{
    struct MHD_Response *resp = json_response(error_text("rate_limit_error", NULL, code, message));
    if (!resp)
        return RT_ERR_NOMEM;
    char seconds[16];
    snprintf(seconds, sizeof seconds, "%d", retry_after);
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
    return queue(req, status, json_response(text));
}

/* Formats the status line and headers of an error written straight to the
 * socket; returns their length (0 when they do not fit). */
static size_t raw_head(const char *request_id, int status, size_t body_len, char *buf, size_t size)
{
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    int n = snprintf(buf, size,
                     "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nDate: %s\r\nx-request-id: %s\r\n\r\n",
                     status, reason && reason[0] ? reason : "Error", body_len, date, request_id);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

int api_write_error_to_socket(int fd, int status, const char *request_id, const char *type,
                              const char *param, const char *code, const char *message)
{
    char *json = error_text(type, param, code, message);
    const char *body = json ? json : ""; /* no memory: an empty body */
    char head[512];
    size_t body_len = strlen(body), head_len = raw_head(request_id, status, body_len, head, sizeof head);
    bool ok = head_len > 0 && send(fd, head, head_len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)head_len &&
              send(fd, body, body_len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)body_len;
    shutdown(fd, SHUT_WR);
    free(json);
    return ok ? RT_OK : RT_ERR_IO;
}

/* Writes a whole error response to the request's socket and marks the
 * request closing. The socket's buffer is empty mid-request, so a short
 * write is not expected; if one happens the client sees the connection close. */
static int write_now(api_request *req, int status, const char *type, const char *param,
                     const char *code, const char *message)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    req->responded = true;
    req->status = status;
    req->closing = true;
    req->closing_since = rt_now_seconds();
    if (!info)
        return RT_ERR_IO;
    return api_write_error_to_socket(info->connect_fd, status, req->request_id, type, param, code, message);
}

int api_respond_error(api_request *req, int status, const char *type,
                      const char *param, const char *code, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (req->in_body)
        return req->responded ? RT_OK : write_now(req, status, type, param, code, message);
    return queue(req, status, json_response(error_text(type, param, code, message)));
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

int api_respond_refusal(api_request *req, int rc, const engine_error *why)
{
    const char *bad = "invalid_request_error";
    const char *field = why && why->field[0] ? why->field : NULL;
    const char *msg = why && why->message[0] ? why->message : rt_strerror(rc);
    switch (rc) {
    case RT_ERR_BUSY:
        return api_respond_error_retry(req, 429, 1, "rate_limit_exceeded",
                                       "The server is busy: too many requests are waiting. Retry shortly.");
    case RT_ERR_TOO_LARGE:
        return api_respond_error(req, 400, bad, field, "context_length_exceeded", "%s", msg);
    case RT_ERR_INVALID:
    case RT_ERR_UNSUPPORTED:
    case RT_ERR_FORMAT:
        return api_respond_error(req, 400, bad, field, "invalid_value", "%s", msg);
    case RT_ERR_NOT_FOUND:
        return api_respond_error(req, 404, bad, field ? field : "model",
                                 !field || !strcmp(field, "model") ? "model_not_found" : "not_found",
                                 "%s", msg);
    case RT_ERR_STATE:
        return api_respond_error(req, 503, "server_error", field, NULL, "%s", msg);
    default:
        return api_respond_error(req, 500, "server_error", field, NULL, "%s", msg);
    }
}
