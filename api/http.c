/*
 * api/http.c — the libmicrohttpd glue: one request context per request,
 * framing and route admission (method, path, auth, size, content type)
 * before any body is read, body buffering or streaming, the per-request log
 * line and metrics, and a graceful stop.
 *
 * Connection model. The daemon polls with epoll on a small pool of
 * event-loop threads (http_threads) and never gives a connection a thread
 * of its own, so idle or slow sockets cost a little memory, not a thread,
 * and are bounded: max_connections in all (fitted to the fd limit),
 * max_connections_per_ip per client, idle_timeout_s of silence, and the
 * head/body time budgets of api/conn.c. Nothing may block an event-loop
 * thread for long: a completion parks its connection (MHD_suspend_connection)
 * until the engine has something for it, then is resumed and answers
 * (api/completions.c). Uploads are written to disk on the event-loop thread
 * as they stream in, which is short work per piece.
 *
 * Refusals come as early as they can: a bad path, a missing or wrong key, a
 * declared Content-Length over the route's limit and a wrong content type
 * are answered before a byte of body is read. A chunked body that grows past
 * the limit is answered 413 the moment it does (api/respond.c writes it to
 * the socket, since libmicrohttpd 0.9.75 cannot queue a response mid-body),
 * whatever it had stored is dropped at once (an upload's temporary file),
 * and the connection is closed after a short linger.
 *
 * Errors are JSON. libmicrohttpd answers some malformed requests itself,
 * with an HTML body, before any callback runs, and 0.9.75 offers no hook to
 * change that; what it leaves to us is checked here instead: HTTP/1.1
 * without Host (400), a Transfer-Encoding other than chunked (501, which it
 * would otherwise read as a body without end), both Content-Length and
 * Transfer-Encoding (400), a header block over HEADER_LIMIT (431; the
 * daemon's per-connection memory is set above it so that such headers reach
 * us), a path over 1 KiB (414). What stays HTML (docs/ARCHITECTURE.md
 * lists it): a request head larger than the connection's memory, a header
 * line without a colon, a bad HTTP version or chunk framing, a
 * Content-Length that is not a number or beyond 2^64; a request line with
 * no space at all is closed without a reply.
 *
 * The daemon is told not to unescape anything: paths are decoded segment by
 * segment in api/routes.c and query values in api/request.c.
 */
#include "api/api_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define HEADER_LIMIT (32 * 1024)       /* bytes of request line and headers we accept */
#define CONNECTION_MEMORY (64 * 1024)  /* the daemon's memory per connection: above HEADER_LIMIT */
#define FD_RESERVE 256                 /* descriptors kept for everything but connections */

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

/* What the key check found: a caller let in, a caller refused (401), or no
 * answer because the stored keys could not be read (503: the database is
 * down, which is not the caller's fault and must not read as a bad key). */
enum auth_result { AUTH_OK, AUTH_DENIED, AUTH_UNAVAILABLE };

/* Whether callers must show a key: keys were configured (flags, keys file,
 * environment) or `retune keys` has ever stored one. The second is looked
 * up until it is true, then remembered: keys are never deleted, and
 * revoking the last one must not turn auth off. Sets *required; a storage
 * error is returned (nobody is let in on it). */
static int keys_required(api_server *srv, bool *required)
{
    *required = true;
    if (srv->cfg.n_keys > 0 || atomic_load(&srv->keys_stored))
        return RT_OK;
    bool any = false;
    int rc = storage_key_any(srv->st, &any);
    if (rc != RT_OK)
        return rc;
    if (any)
        atomic_store(&srv->keys_stored, true);
    *required = any;
    return RT_OK;
}

/* Finds token among the stored keys by its SHA-256 (the secret itself is
 * never stored); a revoked key is not found from the moment it is revoked.
 * Copies the key's project into the request. */
static enum auth_result stored_key_project(api_request *req, const char *token)
{
    char hash[RT_SHA256_HEX_SIZE];
    storage_key key;
    rt_sha256_hex(token, strlen(token), hash);
    int rc = storage_key_find(req->srv->st, hash, &key);
    if (rc == RT_ERR_NOT_FOUND)
        return AUTH_DENIED;
    if (rc != RT_OK) {
        rt_log(RT_LOG_WARN, "key lookup failed: %s", rt_strerror(rc));
        return AUTH_UNAVAILABLE;
    }
    snprintf(req->key_project, sizeof req->key_project, "%s", key.project);
    req->tenant = req->key_project;
    return AUTH_OK;
}

/* Checks the bearer token against the configured keys, then the stored
 * ones; sets req->tenant to the key's project ("retune" when there is no
 * auth or the key names none). */
static enum auth_result authorized(api_request *req)
{
    const api_config *cfg = &req->srv->cfg;
    req->tenant = STORAGE_DEFAULT_PROJECT;
    bool required = true;
    if (keys_required(req->srv, &required) != RT_OK)
        return AUTH_UNAVAILABLE;
    if (!required)
        return AUTH_OK;
    const char *auth = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return AUTH_DENIED;
    const char *token = auth + 7;
    bool found = false;
    for (size_t i = 0; i < cfg->n_keys; i++)
        if (same_secret(token, cfg->keys[i].key) && !found) {
            found = true;
            if (cfg->keys[i].tenant)
                req->tenant = cfg->keys[i].tenant;
        }
    if (found)
        return AUTH_OK;
    return token[0] ? stored_key_project(req, token) : AUTH_DENIED;
}

/* Answers a request the key check refused; false when it was let in. */
static bool refuse_unauthorized(api_request *req)
{
    enum auth_result a = authorized(req);
    if (a == AUTH_UNAVAILABLE)
        api_respond_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL,
                          "database_unavailable",
                          "The API keys cannot be checked right now: the record store is "
                          "unreachable. Retry shortly.");
    else if (a == AUTH_DENIED)
        api_respond_error(req, MHD_HTTP_UNAUTHORIZED, "invalid_request_error", "authorization",
                          "invalid_api_key",
                          "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.");
    return a != AUTH_OK;
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

/* A request header's value, or NULL. */
static const char *header(api_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/* The framing checks libmicrohttpd 0.9.75 leaves to us (see the file
 * comment). Answers and returns false when the request is refused. */
static bool framing_ok(api_request *req, const char *version)
{
    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    const char *te = header(req, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (hs && hs->header_size > HEADER_LIMIT) {
        api_respond_error(req, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "invalid_request_error",
                          NULL, "headers_too_large",
                          "The request's headers are %zu bytes; the limit is %d.", hs->header_size,
                          HEADER_LIMIT);
    } else if (strcmp(version, MHD_HTTP_VERSION_1_0) != 0 && !header(req, MHD_HTTP_HEADER_HOST)) {
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", "Host", "missing_host",
                          "An %s request must have a Host header.", version);
    } else if (te && strcasecmp(te, "chunked") != 0) {
        api_respond_error(req, MHD_HTTP_NOT_IMPLEMENTED, "invalid_request_error", "Transfer-Encoding",
                          "unsupported_transfer_encoding",
                          "Transfer-Encoding '%.100s' is not supported: send the body with "
                          "Content-Length or as chunked.", te);
    } else if (te && header(req, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        api_respond_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request_error", "Content-Length",
                          "ambiguous_length",
                          "A request may not have both Content-Length and Transfer-Encoding.");
    } else {
        return true;
    }
    return false;
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
    if ((req->route->flags & API_FLAG_AUTH) && refuse_unauthorized(req))
        return false;
    req->body_limit = req->route->body_limit < 0 ? req->srv->cfg.max_upload_bytes
                                                 : req->route->body_limit;
    const char *cl = header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
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

/* Frees what a request gathered so far (its handler state, such as an
 * upload's temporary file, and its buffered body). */
static void drop_state(api_request *req)
{
    if (req->state_free)
        req->state_free(req->state);
    req->state = NULL;
    req->state_free = NULL;
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;
}

/* Takes one piece of body: enforces the limit, buffers or streams it. An
 * error here is answered at once (api_respond_error writes it, in_body) and
 * the request's state dropped; the connection then lingers and closes. */
static void take_body(api_request *req, const char *data, size_t len)
{
    req->body_seen += (int64_t)len;
    api_conn_body_bytes(req->srv, req->link, len);
    req->in_body = true;
    unsigned flags = req->route->flags;
    int rc = RT_OK;
    if (req->body_limit > 0 && req->body_seen > req->body_limit) {
        drop_state(req); /* the partial upload's .tmp goes before the client hears 413 */
        reject_too_large(req);
    } else if (flags & API_FLAG_STREAM_BODY)
        rc = req->route->chunk(req, data, len);
    else if (flags & API_FLAG_JSON_BODY)
        rc = buffer_body(req, data, len);
    if (rc != RT_OK && !req->responded)
        api_respond_internal(req, rc);
    req->in_body = false;
    if (req->closing) {
        drop_state(req);
        api_conn_phase(req->srv, req->link, API_CONN_CLOSING);
    }
}

static api_request *request_new(api_server *srv, struct MHD_Connection *conn,
                                const char *method, const char *url)
{
    api_request *req = calloc(1, sizeof *req);
    if (!req)
        return NULL;
    req->srv = srv;
    req->conn = conn;
    req->link = api_conn_of(conn);
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

/* The first call, once the headers are in: framing and admission. */
static void request_begin(api_request *req, const char *url, const char *version)
{
    api_conn_phase(req->srv, req->link, API_CONN_BODY);
    if (strlen(url) >= sizeof req->path)
        api_respond_error(req, MHD_HTTP_URI_TOO_LONG, "invalid_request_error", "path",
                          "invalid_path", "The request path is too long.");
    else if (framing_ok(req, version))
        admit(req, url);
}

/* The whole body is in (or the request was woken from parking): runs the
 * route's handler, or the resume step a parked handler left. A handler that
 * neither answered nor parked is a bug, answered 500 rather than left to
 * spin the event loop. */
static void request_run(api_request *req)
{
    api_conn_phase(req->srv, req->link, API_CONN_BUSY);
    if (req->responded)
        return;
    api_handler run = req->resume ? req->resume : req->route->handler;
    req->suspended = false;
    int rc = run(req);
    if (req->responded || req->suspended)
        return;
    if (rc == RT_OK) {
        rt_log(RT_LOG_ERROR, "%s %s: the handler neither answered nor parked", req->method,
               req->path);
        rc = RT_ERR_STATE;
    }
    api_respond_internal(req, rc);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    api_request *req = *con_cls;
    if (!req) {
        req = request_new(cls, conn, method, url);
        if (!req)
            return MHD_NO;
        *con_cls = req;
        request_begin(req, url, version);
        return MHD_YES;
    }
    if (req->closing) { /* answered mid-body: drop what comes, close after the linger */
        bool more = *upload_data_size && rt_now_seconds() - req->closing_since < API_LINGER_SECONDS;
        *upload_data_size = 0;
        return more ? MHD_YES : MHD_NO;
    }
    if (*upload_data_size) {
        if (!req->responded)
            take_body(req, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    request_run(req);
    return MHD_YES;
}

/* Called once per request when it is over (answered or abandoned): logs,
 * records metrics and frees everything the request owned. The connection
 * then waits for its next request (the head budget starts again). */
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
    api_conn_phase(srv, req->link, API_CONN_HEAD);
    drop_state(req);
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

/* Fills in the connection defaults (see api_config) and fits the connection
 * limit under the process's descriptor limit. */
static void connection_defaults(api_config *c)
{
    if (c->http_threads <= 0)
        c->http_threads = 8;
    if (c->max_connections <= 0)
        c->max_connections = 4096;
    if (c->max_connections_per_ip < 0)
        c->max_connections_per_ip = 0;
    if (c->idle_timeout_s <= 0)
        c->idle_timeout_s = 30;
    if (c->header_timeout_s <= 0)
        c->header_timeout_s = 40;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    long room = (long)rl.rlim_cur - FD_RESERVE;
    if (room < c->max_connections) {
        c->max_connections = room < 16 ? 16 : (int)room;
        rt_log(RT_LOG_WARN, "at most %d connections: the descriptor limit is %ld",
               c->max_connections, (long)rl.rlim_cur);
    }
}

/* Starts the daemon: epoll on a pool of event-loop threads, connections
 * suspendable, the limits of srv->cfg. */
static struct MHD_Daemon *daemon_start(api_server *srv, struct sockaddr_storage *addr, bool ipv6)
{
    const api_config *c = &srv->cfg;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (ipv6 ? MHD_USE_IPv6 : 0);
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)addr,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_connections_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->idle_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
                            MHD_OPTION_NOTIFY_CONNECTION, api_conn_notify, srv,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                            MHD_OPTION_UNESCAPE_CALLBACK, keep_raw, NULL,
                            MHD_OPTION_EXTERNAL_LOGGER, api_library_log, NULL,
                            MHD_OPTION_END);
}

/* Frees a server whose daemon is stopped (or never started). */
static void server_free(api_server *srv)
{
    engine_pool_free(srv->fulls);
    pthread_mutex_destroy(&srv->conn_lock);
    pthread_cond_destroy(&srv->offloads_idle);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
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
    connection_defaults(&srv->cfg);
    srv->st = st;
    srv->engine = cfg->engine;
    engine_pool_config pc = {.device = cfg->device, .budget_bytes = cfg->full_model_budget_bytes,
                             .special_tokens_in_text = cfg->special_tokens_in_text};
    if (engine_pool_new(&pc, &srv->fulls) != RT_OK) {
        free(srv);
        return RT_ERR_NOMEM;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_mutex_init(&srv->conn_lock, NULL);
    pthread_cond_init(&srv->offloads_idle, NULL);
    srv->daemon = daemon_start(srv, &addr, ipv6);
    if (!srv->daemon) {
        rt_log(RT_LOG_ERROR, "cannot listen on %s:%d (address in use or not permitted)",
               cfg->host, cfg->port);
        server_free(srv);
        return RT_ERR_IO;
    }
    if (api_watchdog_start(srv) != RT_OK) {
        rt_log(RT_LOG_ERROR, "cannot start the connection watchdog thread");
        MHD_stop_daemon(srv->daemon);
        server_free(srv);
        return RT_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : cfg->port;
    char per_ip[32] = "no per-client limit";
    if (srv->cfg.max_connections_per_ip > 0)
        snprintf(per_ip, sizeof per_ip, "%d per client", srv->cfg.max_connections_per_ip);
    rt_log(RT_LOG_INFO, "http: %d event-loop threads, at most %d connections (%s), idle timeout "
           "%d s, request head within %d s", srv->cfg.http_threads, srv->cfg.max_connections, per_ip,
           srv->cfg.idle_timeout_s, srv->cfg.header_timeout_s);
    *out = srv;
    return RT_OK;
}

int api_server_port(const api_server *srv) { return srv->port; }

/* Waits until no request is in flight or `seconds` have passed. */
static void wait_idle(api_server *srv, double seconds)
{
    double deadline = rt_now_seconds() + seconds;
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        int busy = srv->in_flight;
        pthread_mutex_unlock(&srv->lock);
        if (busy == 0 || rt_now_seconds() > deadline)
            return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void api_server_stop(api_server *srv)
{
    if (!srv)
        return;
    MHD_socket listen_fd = MHD_quiesce_daemon(srv->daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    wait_idle(srv, srv->cfg.shutdown_grace_ms / 1000.0);
    /* The daemon may not be stopped with a connection suspended: wake every
     * parked request (each then answers 503 or ends its stream) and give
     * them a moment to be sent. */
    api_conns_stop(srv);
    wait_idle(srv, 0.5);
    MHD_stop_daemon(srv->daemon);
    api_watchdog_stop(srv);
    api_offload_drain(srv); /* the work uses the engines, which the caller closes next */
    server_free(srv);
}
