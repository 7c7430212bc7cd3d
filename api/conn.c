/*
 * api/conn.c — one record per TCP connection, so that nothing waits inside
 * libmicrohttpd's event loops and no connection holds its slot for long.
 *
 * Time budgets. libmicrohttpd's own timeout counts only idle time between
 * reads, which a client sending a byte now and then never trips. So a
 * request's line and headers must all arrive within header_timeout_s of the
 * connection being ready for them (accepted, or done with the previous
 * request), and its body must then average at least 1 KiB/s after the same
 * grace. A connection past its budget is shut (shutdown(2)); libmicrohttpd
 * reads that as the client leaving and closes it.
 *
 * Parking. A request that waits for the engine suspends its connection
 * (api_request_park) and is resumed (api_request_wake) when a token or the
 * end arrives, when its client leaves (the watchdog peeks at every parked
 * socket each second), every 15 s (a stream then sends a keep-alive
 * comment), and when the server stops. A wake that comes while the request
 * is not parked is remembered, so none is lost between looking and parking.
 *
 * The records form a list under srv->conn_lock. A record is freed when
 * libmicrohttpd reports its connection closed, which it does before closing
 * the socket, so the watchdog never touches a socket number reused since.
 */
#include "api/api_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#define BODY_MIN_RATE 1024.0 /* bytes per second a body must average after its grace */
#define TICK_SECONDS 15.0    /* a parked request is woken at least this often */

struct api_conn {
    api_conn *prev, *next;
    struct MHD_Connection *mhd;
    int fd;
    enum api_conn_phase phase;
    double since;         /* when the phase began */
    int64_t body_bytes;   /* received since the phase became API_CONN_BODY */
    bool parked;          /* suspended by api_request_park */
    bool wake_pending;    /* woken while not parked */
    bool gone;            /* the client left while the request was parked */
    bool cut;             /* shut by the watchdog */
    double parked_since;
    double tick;          /* woken at least this often while parked (0: TICK_SECONDS) */
};

/* Adds a new connection's record to the list. */
static void conn_open(api_server *srv, struct MHD_Connection *c, void **socket_context)
{
    api_conn *k = calloc(1, sizeof *k);
    *socket_context = k;
    if (!k) {
        rt_log(RT_LOG_WARN, "no memory for a connection record: no time budget for it");
        return;
    }
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    k->mhd = c;
    k->fd = info ? info->connect_fd : -1;
    k->phase = API_CONN_HEAD;
    k->since = rt_now_seconds();
    pthread_mutex_lock(&srv->conn_lock);
    k->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = k;
    srv->conns = k;
    pthread_mutex_unlock(&srv->conn_lock);
}

/* Unlinks and frees a closed connection's record. */
static void conn_close(api_server *srv, api_conn *k)
{
    pthread_mutex_lock(&srv->conn_lock);
    if (k->prev)
        k->prev->next = k->next;
    else
        srv->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    pthread_mutex_unlock(&srv->conn_lock);
    free(k);
}

void api_conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                     enum MHD_ConnectionNotificationCode code)
{
    api_server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_open(srv, c, socket_context);
    } else if (*socket_context) {
        conn_close(srv, *socket_context);
        *socket_context = NULL;
    }
}

api_conn *api_conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

void api_conn_phase(api_server *srv, api_conn *link, enum api_conn_phase phase)
{
    if (!link)
        return;
    pthread_mutex_lock(&srv->conn_lock);
    link->phase = phase;
    link->since = rt_now_seconds();
    link->body_bytes = 0;
    if (phase == API_CONN_HEAD) /* a new request: nothing of the last one carries over */
        link->wake_pending = link->gone = false;
    pthread_mutex_unlock(&srv->conn_lock);
}

void api_conn_body_bytes(api_server *srv, api_conn *link, size_t n)
{
    if (!link)
        return;
    pthread_mutex_lock(&srv->conn_lock);
    link->body_bytes += (int64_t)n;
    pthread_mutex_unlock(&srv->conn_lock);
}

/* ---- parking ----------------------------------------------------------------- */

/* Resumes a parked connection. conn_lock held. */
static void unpark(api_conn *k)
{
    k->parked = false;
    MHD_resume_connection(k->mhd);
}

enum api_park api_request_park_for(api_request *req, double tick)
{
    api_server *srv = req->srv;
    api_conn *k = req->link;
    enum api_park r = API_PARKED;
    pthread_mutex_lock(&srv->conn_lock);
    if (!k || srv->stopping || k->gone) {
        r = API_PARK_END;
    } else if (k->wake_pending) {
        k->wake_pending = false;
        r = API_PARK_AGAIN;
    } else {
        MHD_suspend_connection(req->conn);
        k->parked = true;
        k->parked_since = rt_now_seconds();
        k->tick = tick;
        req->suspended = true;
    }
    pthread_mutex_unlock(&srv->conn_lock);
    return r;
}

enum api_park api_request_park(api_request *req)
{
    return api_request_park_for(req, 0);
}

bool api_request_wait(api_request *req, bool (*ready)(void *cls), void *cls, const char *what, int *rc)
{
    for (;;) {
        if (ready(cls))
            return true;
        enum api_park park = api_request_park(req);
        if (park == API_PARKED) {
            *rc = RT_OK;
            return false;
        }
        if (park == API_PARK_END) {
            *rc = api_respond_error(req, 503, "server_error", NULL, NULL,
                                    "The server is stopping; %s was not finished.", what);
            return false;
        }
    }
}

void api_request_wake(api_request *req)
{
    api_conn *k = req->link;
    if (!k)
        return;
    pthread_mutex_lock(&req->srv->conn_lock);
    if (k->parked)
        unpark(k);
    else
        k->wake_pending = true;
    pthread_mutex_unlock(&req->srv->conn_lock);
}

void api_conns_stop(api_server *srv)
{
    pthread_mutex_lock(&srv->conn_lock);
    srv->stopping = true;
    for (api_conn *k = srv->conns; k; k = k->next)
        if (k->parked)
            unpark(k);
    pthread_mutex_unlock(&srv->conn_lock);
}

/* ---- the watchdog -------------------------------------------------------------- */

/* True when the client of a parked request has closed its side (or the
 * socket failed): a peek sees the end of the stream. */
static bool client_left(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* How long a connection may stay in its phase, or a negative number for
 * no limit. */
static double budget(const api_server *srv, const api_conn *k)
{
    switch (k->phase) {
    case API_CONN_HEAD: return srv->cfg.header_timeout_s;
    case API_CONN_BODY: return srv->cfg.header_timeout_s + (double)k->body_bytes / BODY_MIN_RATE;
    case API_CONN_CLOSING: return API_LINGER_SECONDS;
    default: return -1;
    }
}

/* One connection, once a second. conn_lock held. */
static void watch(api_server *srv, api_conn *k, double now)
{
    if (k->parked) {
        if (client_left(k->fd))
            k->gone = true;
        if (k->gone || now - k->parked_since >= (k->tick > 0 ? k->tick : TICK_SECONDS))
            unpark(k);
        return;
    }
    double limit = budget(srv, k);
    if (k->cut || limit < 0 || now - k->since <= limit || k->fd < 0)
        return;
    k->cut = true;
    shutdown(k->fd, SHUT_RDWR);
    if (k->phase != API_CONN_CLOSING)
        rt_log(RT_LOG_INFO, "connection closed: its request's %s did not arrive within %.0f s",
               k->phase == API_CONN_HEAD ? "line and headers" : "body", limit);
}

static void *watchdog_main(void *arg)
{
    api_server *srv = arg;
    pthread_mutex_lock(&srv->conn_lock);
    while (srv->watchdog_running) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&srv->watchdog_wake, &srv->conn_lock, &until);
        double now = rt_now_seconds();
        for (api_conn *k = srv->conns; k && srv->watchdog_running; k = k->next)
            watch(srv, k, now);
    }
    pthread_mutex_unlock(&srv->conn_lock);
    return NULL;
}

int api_watchdog_start(api_server *srv)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&srv->watchdog_wake, &attr);
    pthread_condattr_destroy(&attr);
    srv->watchdog_running = true;
    if (pthread_create(&srv->watchdog, NULL, watchdog_main, srv) != 0) {
        srv->watchdog_running = false;
        pthread_cond_destroy(&srv->watchdog_wake);
        return RT_ERR_IO;
    }
    return RT_OK;
}

void api_watchdog_stop(api_server *srv)
{
    pthread_mutex_lock(&srv->conn_lock);
    bool running = srv->watchdog_running;
    srv->watchdog_running = false;
    pthread_cond_signal(&srv->watchdog_wake);
    pthread_mutex_unlock(&srv->conn_lock);
    if (!running)
        return;
    pthread_join(srv->watchdog, NULL);
    pthread_cond_destroy(&srv->watchdog_wake);
}
