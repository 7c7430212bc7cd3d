/*
 * api/api_internal.h — shared between the files of api/: the request
 * context, the route table, response helpers and the metrics registry.
 * Nothing outside api/ (and api's own unit tests) includes it.
 */
#ifndef RT_API_INTERNAL_H
#define RT_API_INTERNAL_H

#include <stdarg.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/api.h"
#include "common/metrics.h"

#define API_MAX_PARAMS 4
#define API_PARAM_MAX 256

typedef struct api_request api_request;

/* A handler runs once the whole body (if any) has arrived. It must queue a
 * response through one of the api_respond_* helpers and return RT_OK; any
 * other return makes the dispatcher answer 500. */
typedef int (*api_handler)(api_request *req);

/* Streaming body hooks for routes with API_FLAG_STREAM_BODY: chunk is called
 * for each piece of body as it arrives; an error return is answered with a
 * 500 at once and the connection closed (the handler does not run). */
typedef int (*api_body_chunk)(api_request *req, const char *data, size_t len);

enum api_route_flags {
    API_FLAG_AUTH = 1,        /* needs a valid API key when keys are set */
    API_FLAG_JSON_BODY = 2,   /* body buffered, must be application/json */
    API_FLAG_STREAM_BODY = 4, /* body passed to `chunk` as it streams in */
    API_FLAG_MULTIPART = 8,   /* Content-Type must be multipart/form-data */
};

typedef struct api_route {
    const char *method;   /* "GET", "POST", "DELETE" */
    const char *pattern;  /* "/v1/files/{id}/content": {x} matches one segment */
    api_handler handler;
    api_body_chunk chunk; /* only with API_FLAG_STREAM_BODY */
    int64_t body_limit;   /* bytes; -1 = the server's upload limit; 0 = none */
    unsigned flags;
    const char *name;     /* metrics label */
} api_route;

/* The route table (api/routes.c) and its size. */
extern const api_route api_routes[];
extern const size_t api_route_count;

enum api_match {
    API_MATCH_OK,           /* route found; params filled */
    API_MATCH_NOT_FOUND,    /* no pattern fits the path */
    API_MATCH_BAD_METHOD,   /* a pattern fits but not with this method */
    API_MATCH_BAD_PATH      /* undecodable segment, "..", "%2F", bad UTF-8 */
};

/*
 * Matches a raw (still percent-encoded, query-free) path and method against
 * the table. Segments are percent-decoded one by one, so an encoded "/"
 * cannot split a segment. On API_MATCH_OK *route and params are set.
 */
enum api_match api_route_match(const char *method, const char *raw_path,
                               const api_route **route,
                               char params[API_MAX_PARAMS][API_PARAM_MAX],
                               int *n_params);

/* Percent-decodes src (len bytes) into dst (size bytes, NUL-terminated);
 * with plus_is_space a '+' becomes ' ' (query strings). Returns false on a
 * bad escape, an embedded NUL or overflow. */
bool api_percent_decode(const char *src, size_t len, char *dst, size_t size,
                        bool plus_is_space);

typedef struct api_conn api_conn;  /* one per TCP connection (api/conn.c) */

struct api_server {
    struct MHD_Daemon *daemon;
    storage *st;
    api_config cfg;                /* with every default filled in */
    engine_server *engine;         /* cfg.engine */
    int port;
    int in_flight;                 /* requests between first call and completion */
    engine_pool *fulls;            /* engines of full fine-tuned models */
    pthread_mutex_t lock;          /* guards in_flight and offloads_running */
    int offloads_running;          /* slow-work threads (api/offload.c) */
    pthread_cond_t offloads_idle;  /* signalled when offloads_running drops to 0 */
    atomic_bool keys_stored;       /* `retune keys` stored one: auth is on for good */
    /* connections (api/conn.c) */
    pthread_mutex_t conn_lock;     /* guards everything below and every api_conn */
    api_conn *conns;               /* every open connection */
    bool stopping;                 /* no request may park any more */
    bool watchdog_running;
    pthread_t watchdog;
    pthread_cond_t watchdog_wake;
};

struct api_request {
    api_server *srv;
    struct MHD_Connection *conn;
    const api_route *route;
    char method[8];
    char path[1024];               /* raw path, for the log */
    char params[API_MAX_PARAMS][API_PARAM_MAX];
    int n_params;
    const char *tenant;            /* the caller's project: use api_project(req) */
    char key_project[STORAGE_PROJECT_MAX]; /* a stored key's project, tenant points here */
    double started;                /* rt_now_seconds() at arrival */
    int64_t body_seen;             /* body bytes received so far */
    int64_t body_limit;
    char *body;                    /* buffered JSON body (API_FLAG_JSON_BODY) */
    size_t body_len, body_cap;
    char request_id[64];           /* "req-<hex>": the x-request-id header and the log line */
    bool responded;                /* a response was queued */
    int status;                    /* status of that response, for logs/metrics */
    void *state;                   /* handler-owned; freed by state_free */
    void (*state_free)(void *state);
    api_conn *link;                /* its connection's record; NULL when none could be made */
    api_handler resume;            /* run when a parked request wakes (NULL: none parked) */
    bool in_body;                  /* inside a body piece: an error cannot be queued, so it is
                                      written to the socket (api_respond_error) */
    bool closing;                  /* answered mid-body: the rest is discarded, then closed */
    double closing_since;
    bool suspended;                /* the last handler call parked the request */
};

/* ---- slow work off the event loop (api/offload.c) ---- */

typedef void (*api_offload_work)(void *arg);
typedef int (*api_offload_then)(api_request *req, void *arg);

/* Runs work(arg) on a thread of its own while the request's connection is
 * parked; then then(req, arg) answers it on an event-loop thread, with the
 * request's state as it was. arg is freed with arg_free (may be NULL) once
 * both are over; if the request ends first (its client left), then never
 * runs. A handler returns what this returns. */
int api_offload_start(api_request *req, api_offload_work work, api_offload_then then, void *arg,
                      void (*arg_free)(void *arg));

/* Waits for every slow-work thread to finish (server stop). */
void api_offload_drain(api_server *srv);

/* ---- responses (api/respond.c) ---- */

/* Queues a JSON response; takes ownership of json (deleted here). */
int api_respond_json(api_request *req, int status, cJSON *json);

/* Queues {"error": {message, type, param, code}}; param/code may be NULL. */
int api_respond_error(api_request *req, int status, const char *type,
                      const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Queues a plain response with the given content type (text is copied). */
int api_respond_text(api_request *req, int status, const char *content_type,
                     const char *text, size_t len);

/* Queues a response that streams an open file descriptor (taken). */
int api_respond_fd(api_request *req, int status, const char *content_type,
                   int fd, uint64_t size);

/* Queues a prepared response (taken). */
int api_respond_response(api_request *req, int status, struct MHD_Response *resp);

/* An error with a Retry-After header (429). */
int api_respond_error_retry(api_request *req, int status, int retry_after, const char *code,
                            const char *message);

/* Writes a whole error response ({"error": ...}, Connection: close) straight
 * to socket fd and shuts its write side: for answers libmicrohttpd cannot
 * queue (mid-body, or its own parse errors, api/library_errors.c). */
int api_write_error_to_socket(int fd, int status, const char *request_id, const char *type,
                              const char *param, const char *code, const char *message);

/* libmicrohttpd's log (MHD_OPTION_EXTERNAL_LOGGER) into rt_log: what concerns
 * one connection at debug level, the rest as warnings (api/library_errors.c). */
void api_library_log(void *cls, const char *fmt, va_list ap);

/* Appends n bytes of data to a growing, NUL-terminated buffer; false when
 * out of memory (the buffer is then as it was). */
bool api_buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n);

/* Answers 200 with a server-sent events stream that read produces (its
 * cls freed by free_cls, also when this fails). */
int api_respond_event_stream(api_request *req, MHD_ContentReaderCallback read, void *cls,
                             MHD_ContentReaderFreeCallback free_cls);

/* Common errors. */
int api_respond_not_found(api_request *req, const char *what, const char *id);
int api_respond_internal(api_request *req, int rc);

/* Copies s into out (size bytes, NUL-terminated, cut at a whole character)
 * as valid UTF-8: each byte that does not begin a valid sequence becomes
 * "%XX", so echoed paths and names can always be put in JSON. */
void api_utf8_fix(const char *s, char *out, size_t size);

/* ---- connections (api/conn.c) ----
 *
 * libmicrohttpd runs the connections on a few event-loop threads, so no
 * callback may wait. A request that must wait for the engine parks its
 * connection (MHD_suspend_connection) and is woken (MHD_resume_connection)
 * from any thread when there is something to do; a watchdog thread enforces
 * each connection's time budget and wakes parked requests whose client left. */

/* How long a connection answered mid-body goes on reading (and dropping)
 * what its client still sends, so that the answer is not lost to a reset. */
#define API_LINGER_SECONDS 2.0

enum api_conn_phase {
    API_CONN_HEAD,    /* waiting for a request's line and headers */
    API_CONN_BODY,    /* its body is streaming in */
    API_CONN_BUSY,    /* being handled or answered: no budget */
    API_CONN_CLOSING  /* answered mid-body: closed after a short linger */
};

/* MHD_OPTION_NOTIFY_CONNECTION: makes a connection's record when it opens
 * and frees it when it closes (cls is the server). */
void api_conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                     enum MHD_ConnectionNotificationCode code);

/* The record of a connection, or NULL when none could be made. */
api_conn *api_conn_of(struct MHD_Connection *c);

/* Moves a connection into a phase; its time budget restarts. link may be NULL. */
void api_conn_phase(api_server *srv, api_conn *link, enum api_conn_phase phase);

/* Counts body bytes received (the body budget grows with them). */
void api_conn_body_bytes(api_server *srv, api_conn *link, size_t n);

enum api_park {
    API_PARKED,      /* suspended: return without answering; resume or the reader runs again */
    API_PARK_AGAIN,  /* a wake came first: look again for something to do */
    API_PARK_END     /* stopping, or the client left: finish now */
};

/*
 * Suspends the request's connection until api_request_wake(). Call only
 * from a libmicrohttpd callback of that connection (the access handler or
 * a content reader). A wake that came since the last park makes this return
 * API_PARK_AGAIN instead, so no wake is lost between looking and parking.
 */
enum api_park api_request_park(api_request *req);

/* For a resume step that waits: true once ready(cls) holds (go on and
 * answer); false when the request was parked (return *rc, RT_OK) or the
 * server is stopping (*rc: the 503 answer, saying `what` was not finished). */
bool api_request_wait(api_request *req, bool (*ready)(void *cls), void *cls, const char *what, int *rc);

/* The same, and woken after at most tick seconds (rounded up to the
 * watchdog's second) even when nothing else wakes it: for a request that
 * polls (a job's event stream). */
enum api_park api_request_park_for(api_request *req, double tick);

/* Resumes a parked request, or makes its next park return API_PARK_AGAIN.
 * Any thread; req must still be alive (the caller's lock keeps it so). */
void api_request_wake(api_request *req);

/* Starts and stops the watchdog thread (budgets, client-left checks, ticks). */
int api_watchdog_start(api_server *srv);
void api_watchdog_stop(api_server *srv);

/* Refuses parking from now on and wakes every parked request, so that the
 * daemon can be stopped (it must have no suspended connection). */
void api_conns_stop(api_server *srv);

/* ---- request helpers (api/request.c) ---- */

/* A query argument, percent-decoded into buf; false when absent or bad. */
bool api_query(api_request *req, const char *key, char *buf, size_t size);

/* Parses the buffered body as JSON (answers 400 itself and returns NULL). */
cJSON *api_body_json(api_request *req);

/* Parses query "limit" in [lo, hi] (default def); answers 400 on bad input. */
bool api_query_limit(api_request *req, int def, int lo, int hi, int *out);

/* ---- projects (api/request.c) ---- */

/*
 * The caller's project (never NULL): the API key's, else "retune". Every
 * handler that resolves an id passes it to storage, which treats another
 * project's record as unknown, so a caller learns nothing of other
 * projects: the answer is the 404 of an unknown id, word for word.
 */
const char *api_project(const api_request *req);

/* Longest engine key: "/" project "/" model name. */
#define API_ENGINE_KEY_MAX (2 + STORAGE_PROJECT_MAX + 640)

/* The name under which the engine knows the caller's model `model`
 * (adapter registry, full-model engines): "/<project>/<model>". Two
 * projects' models of one name never share an engine entry, and no such key
 * is a name a request can reach the engine with (--lora names never start
 * with '/', and only those are looked up as given). */
void api_engine_key(const api_request *req, const char *model, char *buf, size_t size);
/* The same key for a project named outright (the worker's published models). */
void api_engine_key_of(const char *project, const char *model, char *buf, size_t size);

/* ---- multipart bodies (api/multipart.c) ---- */

typedef struct api_multipart {
    struct MHD_PostProcessor *pp;
    char held[2];      /* the last bytes seen, not yet parsed */
    size_t n_held;
} api_multipart;

/* Starts parsing the connection's multipart body; iter gets each field. */
bool api_multipart_open(api_multipart *mp, struct MHD_Connection *conn, MHD_PostDataIterator iter,
                        void *cls);
/* Parses the next piece of body; false when the body is malformed. */
bool api_multipart_feed(api_multipart *mp, const char *data, size_t len);
/* Ends the body (dropping a final epilogue CRLF); false when it is malformed. */
bool api_multipart_finish(api_multipart *mp);
/* Frees the parser of a body that was not finished. */
void api_multipart_close(api_multipart *mp);

/* ---- metrics (api/metrics.c) ---- */

void api_metrics_observe(const char *route, const char *method, int status,
                         double seconds);
/* Prometheus text exposition; the caller frees the string. */
char *api_metrics_render(api_server *srv);

/* ---- jobs (api/job_codec.c) ---- */

/* A small training set is seen at least this many examples' worth in all
 * when n_epochs is "auto" (api/job_codec.c). */
#define API_MIN_EXAMPLES_SEEN 500

/* Checks a hyperparameters object; on failure names the field in param and
 * explains in msg (for a 400). */
int api_job_check_hyperparameters(const cJSON *hp, char *param, size_t psize, char *msg,
                                  size_t msize);

/* ---- models (api/models.c, api/engines.c) ---- */

/* What serves a request's model: an engine, an adapter on it ("" = none),
 * and the reference to release for a full fine-tuned model's engine. */
typedef struct api_target {
    engine_server *engine;
    char adapter[API_ENGINE_KEY_MAX];
    engine_pool_entry *full;
} api_target;

/* The catalog, the one place a model name becomes what serves it: the
 * base, the caller's project's fine-tunes and checkpoints, the --lora
 * adapters (an adapter is registered on first use unless the worker already
 * announced it; a full fine-tune's engine comes from the engine pool).
 * Returns RT_OK with *out to release with api_model_release, or the code
 * with its cause in *why (field "model"): RT_ERR_NOT_FOUND (no such model
 * for this caller; another project's is no different), RT_ERR_STATE (the
 * server has no model), RT_ERR_IO (it could not be loaded). The handler
 * answers with api_respond_refusal. With may_load false a model that would
 * first be loaded from disk (an adapter not in memory, a full fine-tune's
 * engine not open) is RT_ERR_BUSY instead, nothing held: slow work, for
 * api_offload_start. */
int api_catalog_resolve(api_request *req, const char *model, bool may_load, api_target *out, engine_error *why);
void api_model_release(api_request *req, api_target *t);

/* The same for any thread (no request): what serves model for project. */
int api_catalog_load(api_server *srv, const char *project, const char *model, bool may_load,
                     api_target *out, engine_error *why);
void api_target_release(api_server *srv, api_target *t);


/* The one table from a refusal's code to its HTTP answer: 400
 * invalid_value (INVALID, UNSUPPORTED, FORMAT), 400 context_length_exceeded
 * (TOO_LARGE), 404 (NOT_FOUND; model_not_found for the model field), 429
 * with Retry-After (BUSY), 503 (STATE), else 500; param is why->field. */
int api_respond_refusal(api_request *req, int rc, const engine_error *why);


/* ---- handlers ---- */
int api_health(api_request *req);
int api_dashboard(api_request *req);
int api_metrics(api_request *req);
int api_files_upload(api_request *req);
int api_files_upload_chunk(api_request *req, const char *data, size_t len);
int api_files_list(api_request *req);
int api_files_get(api_request *req);
int api_files_content(api_request *req);
int api_files_delete(api_request *req);
int api_jobs_create(api_request *req);
int api_jobs_list(api_request *req);
int api_jobs_get(api_request *req);
int api_jobs_cancel(api_request *req);
int api_jobs_pause(api_request *req);
int api_jobs_resume(api_request *req);
int api_jobs_events(api_request *req);
int api_jobs_checkpoints(api_request *req);
int api_models_list(api_request *req);
int api_models_get(api_request *req);
int api_models_delete(api_request *req);
int api_chat_completions(api_request *req);
int api_completions(api_request *req);
int api_adapters_import(api_request *req);
int api_adapters_import_chunk(api_request *req, const char *data, size_t len);

#endif
