/*
 * api/api.h — the HTTP surface of retune (OpenAI-compatible), its one door.
 *
 * api_server_start() binds a libmicrohttpd daemon and serves the route table
 * (api/routes.c) on its own threads; api_server_stop() stops accepting, lets
 * requests in flight finish (bounded) and frees everything. Requests are
 * parsed into native structs at this edge; storage and the engine never see
 * HTTP or JSON-over-HTTP.
 */
#ifndef RT_API_H
#define RT_API_H

#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"
#include "engine/engine.h"
#include "storage/storage.h"

typedef struct api_server api_server;

/* One API key and the tenant (organisation) it belongs to. */
typedef struct api_key {
    const char *key;    /* the bearer token */
    const char *tenant; /* organisation name; NULL means "retune" */
} api_key;

typedef struct api_config {
    const char *host;          /* address to bind, e.g. "127.0.0.1" or "::" */
    int port;                  /* TCP port; 0 picks a free one */
    const api_key *keys;       /* borrowed; n_keys == 0 means no auth */
    size_t n_keys;
    int64_t max_upload_bytes;  /* POST /v1/files body limit */
    int shutdown_grace_ms;     /* how long stop waits for requests in flight */
    const char *model_dir;     /* the base model directory, or NULL */
    const char *model_id;      /* the base model's id (its folder name), or NULL */
    int min_examples;          /* fewest training examples a job accepts */
    engine_server *engine;     /* serves the base model and its adapters, or NULL (borrowed) */
    const char *device;        /* for engines of full fine-tuned models */
    bool special_tokens_in_text; /* for those engines too (engine_server_config's) */
    size_t full_model_budget_bytes; /* resident full fine-tuned models */
    /* Connections; 0 picks the default in brackets. */
    int http_threads;          /* event-loop threads of the daemon [8] */
    int max_connections;       /* open connections in all [4096, lowered to fit the fd limit] */
    int max_connections_per_ip; /* per client address; 0 = no limit */
    int idle_timeout_s;        /* a connection idle this long is closed [30] */
    int header_timeout_s;      /* a request's head must arrive within this of the connection
                                  being ready for it, and its body then at >= 1 KiB/s [40] */
} api_config;

/*
 * Starts serving. Borrows cfg's strings/keys and st for the server's
 * lifetime. On success *out is the running server, freed by api_server_stop.
 */
int api_server_start(const api_config *cfg, storage *st, api_server **out);

/* The port actually bound (useful when cfg->port was 0). */
int api_server_port(const api_server *srv);

/*
 * Stops accepting connections, waits up to shutdown_grace_ms for requests in
 * flight, stops the daemon and frees the server. Accepts NULL.
 */
void api_server_stop(api_server *srv);

/* ---- fine-tuning jobs: JSON codec shared with the job worker ------------- */

/*
 * Resolves a job's stored hyperparameters (numbers or "auto") for a data set
 * of n_examples into cfg (starting from engine_train_defaults; paths are left
 * to the caller) and rewrites job->hyperparameters with the concrete values.
 * Defaults that learn: every linear projection (LoRA), a learning rate for
 * the method and the model's width (hidden_size; 0: unknown), warmup 0.1,
 * and enough epochs for a small data set.
 */
int api_job_resolve(storage_job *job, int64_t n_examples, int hidden_size, engine_train_config *cfg);

/* The metrics of a progress report as JSON text (events, checkpoints). */
void api_job_metrics_json(const engine_progress *p, char *buf, size_t size);

/* The data of a retention metrics event as JSON text (null for NaN). */
void api_job_retention_json(double before, double after, double trainable_percent, char *buf,
                            size_t size);

/* "ft:<base>:<org>:<suffix>:<id>", the model name a job produces. */
void api_job_model_name(const storage_job *job, char *buf, size_t size);

/* A job of project published a servable model (called on the worker
 * thread): an adapter is registered on the base engine at once, under the
 * project's key for it, so that its first
 * request finds it; a full fine-tune's engine still opens on first use.
 * kind is "adapter" or "model". */
void api_model_published(api_server *srv, const char *project, const char *name, const char *kind,
                         const char *dir);

#endif
