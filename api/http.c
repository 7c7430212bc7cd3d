/*
 * api/http.c — the libmicrohttpd glue: one request context per request,
 * route admission (method, path, auth, size, content type) before any
 * handler runs, body buffering or streaming, the per-request log line and
 * metrics, and a graceful stop.
 *
 * The daemon runs one thread per connection, so a handler may block (a
 * streamed completion, later) without stalling other clients. It is told
 * not to unescape anything: paths are decoded segment by segment in
 * api/routes.c and query values in api/request.c.
 */
#include "api/api_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Keeps every string raw; see the file comment. */
static size_t keep_raw(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

/* True when `given` equals `key`, in time independent of where they differ. */
static bool same_secret(const char *given, const char *key)
{
    size_t n = strlen(key), m = strlen(given);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(key[i] ^ (i < m ? given[i] : 0));
    return diff == 0;
}

/* Whether callers must show a key: keys were configured (flags, keys file,
 * environment) or `retune keys` has ever stored one. The second is looked
 * up until it is true, then remembered: keys are never deleted, and
 * revoking the last one must not turn auth off. A storage error counts as
 * "yes" (refusing is the safe side). */
static bool keys_required(api_server *srv)
{
    if (srv->cfg.n_keys > 0 || atomic_load(&srv->keys_stored))
        return true;
    bool any = false;
    if (storage_key_any(srv->st, &any) != RT_OK)
        return true;
    if (any)
        atomic_store(&srv->keys_stored, true);
    return any;
}

/* Finds token among the stored keys by its SHA-256 (the secret itself is
 * never stored); a revoked key is not found from the moment it is revoked.
 * Copies the key's project into the request. */
static bool stored_key_project(api_request *req, const char *token)
{
    char hash[RT_SHA256_HEX_SIZE];
    storage_key key;
    rt_sha256_hex(token, strlen(token), hash);
    int rc = storage_key_find(req->srv->st, hash, &key);
    if (rc != RT_OK) {
        if (rc != RT_ERR_NOT_FOUND)
            rt_log(RT_LOG_WARN, "key lookup failed: %s", rt_strerror(rc));
        return false;
    }
    snprintf(req->key_project, sizeof req->key_project, "%s", key.project);
    req->tenant = req->key_project;
    return true;
}

/* Checks the bearer token against the configured keys, then the stored
 * ones; sets req->tenant to the key's project ("retune" when there is no
 * auth or the key names none). */
static bool authorized(api_request *req)
{
    const api_config *cfg = &req->srv->cfg;
    req->tenant = STORAGE_DEFAULT_PROJECT;
    if (!keys_required(req->srv))
        return true;
    const char *auth = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *token = auth + 7;
    bool found = false;
    for (size_t i = 0; i < cfg->n_keys; i++)
        if (same_secret(token, cfg->keys[i].key) && !found) {
            found = true;
            if (cfg->keys[i].tenant)
                req->tenant = cfg->keys[i].tenant;
        }
    return found || (token[0] && stored_key_project(req, token));
}

/* True when the request's Content-Type has the given media type. */
static bool content_type_is(api_request *req, const char *media)
{
    const char *ct = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    size_t n = strlen(media);
    return ct && strncasecmp(ct, media, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Answers a path that matched no route (or matched badly). */
static void reject_path(api_request *req, enum api_match m)
{
    if (m == API_MATCH_BAD_PATH)
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", "path",
                          "invalid_path", "Invalid path '%s'.", req->path);
    else if (m == API_MATCH_BAD_METHOD)
        api_respond_error(req, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error", "method",
                          "method_not_allowed", "Method %s is not allowed on %s.", req->method,
                          req->path);
    else
        api_respond_error(req, MHD_HTTP_NOT_FOUND, "invalid_request_error", "path",
                          "unknown_url", "Unrecognized request URL (%s %s).", req->method,
                          req->path);
}

/* Answers a body over the route's limit. */
static void reject_too_large(api_request *req)
{
    api_respond_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", "body",
                      "request_too_large", "The request body is larger than the limit of %lld bytes.",
                      (long long)req->body_limit);
}

/* Route admission, before any body is read: path, method, auth, declared
 * size, content type. Answers and returns false when the request is refused. */
static bool admit(api_request *req, const char *url)
{
    enum api_match m = api_route_match(req->method, url, &req->route, req->params, &req->n_params);
    if (m != API_MATCH_OK) {
        reject_path(req, m);
        return false;
    }
    if ((req->route->flags & API_FLAG_AUTH) && !authorized(req)) {
        api_respond_error(req, MHD_HTTP_UNAUTHORIZED, "invalid_request_error", "authorization",
                          "invalid_api_key",
                          "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.");
        return false;
    }
    req->body_limit = req->route->body_limit < 0 ? req->srv->cfg.max_upload_bytes
                                                 : req->route->body_limit;
    const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && req->body_limit > 0 && strtoll(cl, NULL, 10) > req->body_limit) {
        reject_too_large(req);
        return false;
    }
    if ((req->route->flags & API_FLAG_JSON_BODY) && !content_type_is(req, "application/json")) {
        api_respond_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "invalid_request_error",
                          "Content-Type", "unsupported_media_type",
                          "Content-Type must be application/json.");
        return false;
    }
    if ((req->route->flags & API_FLAG_MULTIPART) && !content_type_is(req, "multipart/form-data")) {
        api_respond_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "invalid_request_error",
                          "Content-Type", "unsupported_media_type",
                          "Content-Type must be multipart/form-data.");
        return false;
    }
    return true;
}

/* Appends to the buffered JSON body. */
static int buffer_body(api_request *req, const char *data, size_t len)
{
    if (req->body_len + len + 1 > req->body_cap) {
        size_t cap = (req->body_len + len + 1) * 2;
        char *nb = realloc(req->body, cap);
        if (!nb)
            return RT_ERR_NOMEM;
        req->body = nb;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
    return RT_OK;
}

/* Takes one piece of body: enforces the limit, buffers or streams it. */
static void take_body(api_request *req, const char *data, size_t len)
{
    req->body_seen += (int64_t)len;
    if (req->body_limit > 0 && req->body_seen > req->body_limit) {
        reject_too_large(req);
        return;
    }
    unsigned flags = req->route->flags;
    int rc = RT_OK;
    if (flags & API_FLAG_STREAM_BODY)
        rc = req->route->chunk(req, data, len);
    else if (flags & API_FLAG_JSON_BODY)
        rc = buffer_body(req, data, len);
    if (rc != RT_OK && !req->responded)
        api_respond_internal(req, rc);
}

static api_request *request_new(api_server *srv, struct MHD_Connection *conn,
                                const char *method, const char *url)
{
    api_request *req = calloc(1, sizeof *req);
    if (!req)
        return NULL;
    req->srv = srv;
    req->conn = conn;
    req->started = rt_now_seconds();
    req->status = 500;
    snprintf(req->method, sizeof req->method, "%s", method);
    snprintf(req->path, sizeof req->path, "%s", url);
    storage_new_id("req", req->request_id, sizeof req->request_id);
    pthread_mutex_lock(&srv->lock);
    srv->in_flight++;
    pthread_mutex_unlock(&srv->lock);
    return req;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    api_request *req = *con_cls;
    if (!req) {
        req = request_new(cls, conn, method, url);
        if (!req)
            return MHD_NO;
        *con_cls = req;
        if (strlen(url) >= sizeof req->path)
            api_respond_error(req, MHD_HTTP_URI_TOO_LONG, "invalid_request_error", "path",
                              "invalid_path", "The request path is too long.");
        else
            admit(req, url);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!req->responded)
            take_body(req, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!req->responded) {
        int rc = req->route->handler(req);
        if (rc != RT_OK && !req->responded)
            api_respond_internal(req, rc);
    }
    return MHD_YES;
}

/* Called once per request when it is over (answered or abandoned): logs,
 * records metrics and frees everything the request owned. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    api_server *srv = cls;
    api_request *req = *con_cls;
    if (!req)
        return;
    double seconds = rt_now_seconds() - req->started;
    /* 499 (nginx's "client closed request"): never answered, or the client
     * left before the answer (a stream) was all sent */
    int status = req->responded && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? req->status : 499;
    rt_log(RT_LOG_INFO, "%s %s %d %.1fms %s%s", req->method, req->path, status, seconds * 1e3,
           req->request_id, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    api_metrics_observe(req->route ? req->route->name : "unmatched", req->method, status, seconds);
    if (req->state_free)
        req->state_free(req->state);
    free(req->body);
    free(req);
    *con_cls = NULL;
    pthread_mutex_lock(&srv->lock);
    srv->in_flight--;
    pthread_mutex_unlock(&srv->lock);
}

/* Resolves host:port into a socket address; sets *ipv6. */
static int resolve(const char *host, int port, struct sockaddr_storage *addr, bool *ipv6)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(host, service, &hints, &res) != 0 || !res) {
        rt_log(RT_LOG_ERROR, "cannot resolve host '%s'", host);
        return RT_ERR_INVALID;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *ipv6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return RT_OK;
}

int api_server_start(const api_config *cfg, storage *st, api_server **out)
{
    struct sockaddr_storage addr;
    bool ipv6 = false;
    int rc = resolve(cfg->host, cfg->port, &addr, &ipv6);
    if (rc != RT_OK)
        return rc;
    api_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return RT_ERR_NOMEM;
    srv->cfg = *cfg;
    srv->st = st;
    srv->engine = cfg->engine;
    engine_pool_config pc = {.device = cfg->device, .budget_bytes = cfg->full_model_budget_bytes,
                             .special_tokens_in_text = cfg->special_tokens_in_text};
    if (engine_pool_new(&pc, &srv->fulls) != RT_OK) {
        free(srv);
        return RT_ERR_NOMEM;
    }
    pthread_mutex_init(&srv->lock, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC | (ipv6 ? MHD_USE_IPv6 : 0);
    srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv,
                                   MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                   MHD_OPTION_UNESCAPE_CALLBACK, keep_raw, NULL,
                                   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                   MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
                                   MHD_OPTION_END);
    if (!srv->daemon) {
        rt_log(RT_LOG_ERROR, "cannot listen on %s:%d (address in use or not permitted)",
               cfg->host, cfg->port);
        engine_pool_free(srv->fulls);
        pthread_mutex_destroy(&srv->lock);
        free(srv);
        return RT_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : cfg->port;
    *out = srv;
    return RT_OK;
}

int api_server_port(const api_server *srv) { return srv->port; }

void api_server_stop(api_server *srv)
{
    if (!srv)
        return;
    MHD_socket listen_fd = MHD_quiesce_daemon(srv->daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    double deadline = rt_now_seconds() + srv->cfg.shutdown_grace_ms / 1000.0;
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        int busy = srv->in_flight;
        pthread_mutex_unlock(&srv->lock);
        if (busy == 0 || rt_now_seconds() > deadline)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(srv->daemon);
    engine_pool_free(srv->fulls);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}
