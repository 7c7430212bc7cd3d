/*
 * server/serve.c — `retune serve`: reads flags (and RETUNE_* environment
 * variables), opens storage, starts the HTTP API and waits for SIGINT or
 * SIGTERM, then stops gracefully: no new connections, requests in flight
 * finish (bounded), the database is closed cleanly, exit status 0.
 */
#include "api/api.h"
#include "server/server.h"
#include "server/worker.h"
#include "storage/storage.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#define MAX_KEYS 64

typedef struct serve_options {
    const char *data_dir;
    const char *database;         /* NULL: SQLite in the data directory */
    const char *host;
    int port;
    const char *model_dir;
    const char *keys_file;
    bool insecure_no_auth;
    bool special_tokens_in_text; /* trusted clients: special-token text is control tokens */
    int64_t max_upload_bytes;
    int64_t min_examples;
    const char *device;
    const char *dtype;            /* base weights in memory: auto (NULL), f32, bf16, f16 */
    api_key keys[MAX_KEYS];
    size_t n_keys;
    const char *loras[MAX_KEYS];  /* "NAME=DIR" from --lora */
    size_t n_loras;
    int64_t max_batch, max_context, max_waiting, adapter_budget_mb;
    int64_t http_threads, max_connections, idle_timeout, header_timeout;
    int64_t per_ip;               /* -1 until given: then 64, or no limit on loopback */
    char *key_storage[MAX_KEYS]; /* owned copies of keys read from a file */
} serve_options;

/* See server.h. Storage logs the detail (libpq's or SQLite's reason); this
 * line says which setting to fix, without echoing a connection string
 * (it may hold a password). */
int server_storage_open(const char *cmd, const char *data_dir, const char *database,
                        storage **out)
{
    int err = storage_open_database(data_dir, database, out);
    if (err == RT_OK)
        return 0;
    bool named = database && *database;
    if (err == RT_ERR_INVALID && named)
        fprintf(stderr, "%s: --database (RETUNE_DATABASE) is not sqlite:PATH, postgres://USER@HOST/DB "
                        "or a libpq connection string\n", cmd);
    else if (named && (err == RT_ERR_DB || err == RT_ERR_VERSION || err == RT_ERR_BUSY))
        fprintf(stderr, "%s: cannot use the database given by --database (RETUNE_DATABASE): %s\n",
                cmd, rt_strerror(err));
    else
        fprintf(stderr, "%s: cannot open data directory %s (%s)\n", cmd, data_dir, rt_strerror(err));
    return 1;
}

static void serve_usage(FILE *out)
{
    fprintf(out,
            "usage: retune serve [options]\n"
            "  --data-dir DIR         where records and files live (RETUNE_DATA_DIR, default ./data)\n"
            "  --database DB          where records live: sqlite:PATH (default: DATA-DIR/retune.db)\n"
            "                         or postgres://USER@HOST/DB, any libpq connection string\n"
            "                         (RETUNE_DATABASE); files and models stay in DATA-DIR\n"
            "  --host ADDR            address to bind (RETUNE_HOST, default 127.0.0.1)\n"
            "  --port N               TCP port (RETUNE_PORT, default 8080; 0 = any free port)\n"
            "  --model DIR            base model directory (RETUNE_MODEL); default: the built-in\n"
            "                         model in DATA-DIR/base/retune-tiny, pre-trained on first start\n"
            "  --api-key KEY          require this bearer key on /v1 (repeatable; RETUNE_API_KEY,\n"
            "                         comma-separated); its project is 'retune'\n"
            "  --api-keys-file FILE   one 'KEY [PROJECT]' per line (RETUNE_API_KEYS_FILE)\n"
            "  --max-upload-bytes N   largest accepted upload (RETUNE_MAX_UPLOAD_BYTES, default 512 MiB)\n"
            "  --min-examples N       fewest training examples a job accepts (RETUNE_MIN_EXAMPLES, default 10)\n"
            "  --device cpu|cuda[:N]  compute device for training and serving (RETUNE_DEVICE; default:\n"
            "                         the GPU when this build has CUDA and one is present, else cpu)\n"
            "  --dtype auto|f32|bf16|f16  base weights in memory for serving and LoRA training\n"
            "                         (RETUNE_DTYPE; auto, the default: as the checkpoint stores them)\n"
            "  --lora NAME=DIR        also serve the PEFT adapter in DIR as model NAME to every\n"
            "                         project (repeatable; NAME may not start with '/')\n"
            "  --max-batch N          sequences decoded together (RETUNE_MAX_BATCH, default 8)\n"
            "  --max-context N        tokens per sequence (RETUNE_MAX_CONTEXT, default model's, <= 2048)\n"
            "  --max-waiting N        queued completion requests before 429 (default 64)\n"
            "  --adapter-budget-mb N  memory for resident adapters, LRU beyond it (default 256)\n"
            "  --http-threads N       HTTP event-loop threads (RETUNE_HTTP_THREADS, default 8)\n"
            "  --max-connections N    open connections in all (RETUNE_MAX_CONNECTIONS, default 4096,\n"
            "                         lowered to fit the descriptor limit)\n"
            "  --max-connections-per-ip N  per client address, 0 = no limit\n"
            "                         (RETUNE_MAX_CONNECTIONS_PER_IP; default 64, none on loopback)\n"
            "  --idle-timeout S       close a connection silent this long (RETUNE_IDLE_TIMEOUT, default 30)\n"
            "  --header-timeout S     a request's line and headers must arrive within S seconds of\n"
            "                         the connection being ready, and its body at >= 1 KiB/s after\n"
            "                         that grace (RETUNE_HEADER_TIMEOUT, default 40)\n"
            "  --insecure-no-auth     allow listening beyond loopback without keys\n"
            "  --special-tokens-in-text  trusted clients: special-token text in messages and\n"
            "                         prompts is control tokens (RETUNE_SPECIAL_TOKENS_IN_TEXT);\n"
            "                         by default it is text, as OpenAI has it\n"
            "\n"
            "Keys made with 'retune keys add --project NAME' (stored hashed in DATA-DIR) are\n"
            "accepted too; once one exists every /v1 request needs a key, and 'retune keys\n"
            "revoke ID' takes effect at once, without a restart. Each key's project sees only\n"
            "its own files, jobs and models (others' are 404, as unknown ids); the base model\n"
            "and --lora adapters are shared. Without a project a key's project is 'retune'.\n");
}

/* Adds one key; the strings are borrowed (argv, environment or key_storage).
 * tenant is the key's project (NULL: the default one). */
static int add_key(serve_options *o, const char *key, const char *tenant)
{
    if (o->n_keys == MAX_KEYS) {
        fprintf(stderr, "retune serve: at most %d API keys\n", MAX_KEYS);
        return 2;
    }
    if (!key[0]) {
        fprintf(stderr, "retune serve: an API key may not be empty\n");
        return 2;
    }
    if (tenant && !storage_project_valid(tenant)) {
        fprintf(stderr, "retune serve: project '%s' of an API key must be 1 to 63 of letters, "
                        "digits, '.', '_' and '-' (not first)\n", tenant);
        return 2;
    }
    o->keys[o->n_keys].key = key;
    o->keys[o->n_keys].tenant = tenant;
    o->n_keys++;
    return 0;
}

/* Reads "KEY [PROJECT]" lines ('#' starts a comment). */
static int read_keys_file(serve_options *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "retune serve: cannot read --api-keys-file %s: %s\n", path, strerror(errno));
        return 2;
    }
    char line[1024];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        char *save = NULL;
        char *key = strtok_r(line, " \t\r\n", &save);
        if (!key || key[0] == '#')
            continue;
        char *tenant = strtok_r(NULL, " \t\r\n", &save);
        size_t klen = strlen(key) + 1, tlen = tenant ? strlen(tenant) + 1 : 0;
        char *copy = malloc(klen + tlen);
        if (!copy) {
            rc = 1;
            break;
        }
        memcpy(copy, key, klen);
        if (tenant)
            memcpy(copy + klen, tenant, tlen);
        o->key_storage[o->n_keys] = copy;
        rc = add_key(o, copy, tenant ? copy + klen : NULL);
        if (rc)
            free(copy);
    }
    fclose(f);
    return rc;
}

/* Parses a positive integer option; 2 on a bad value. */
static int parse_int64(const char *name, const char *text, int64_t lo, int64_t hi, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || !end || *end || end == text || v < lo || v > hi) {
        fprintf(stderr, "retune serve: %s must be an integer from %lld to %lld (got '%s')\n", name,
                (long long)lo, (long long)hi, text);
        return 2;
    }
    *out = v;
    return 0;
}

/* A boolean environment variable: only 1, true, yes or on (any case) turn
 * it on; "0", "false" or "" leave it off, as people who write them mean. */
static bool env_true(const char *v)
{
    static const char *const yes[] = {"1", "true", "yes", "on", NULL};
    for (const char *const *y = yes; v && *y; y++)
        if (!strcasecmp(v, *y))
            return true;
    return false;
}

/* Reads an integer environment variable into *out when it is set; 2 on a
 * bad value. */
static int env_int64(const char *name, int64_t lo, int64_t hi, int64_t *out)
{
    const char *v = getenv(name);
    return v ? parse_int64(name, v, lo, hi, out) : 0;
}

/* The connection settings' environment variables. */
static int read_connection_environment(serve_options *o)
{
    o->per_ip = -1;
    if (env_int64("RETUNE_HTTP_THREADS", 1, 256, &o->http_threads) ||
        env_int64("RETUNE_MAX_CONNECTIONS", 16, 1 << 20, &o->max_connections) ||
        env_int64("RETUNE_MAX_CONNECTIONS_PER_IP", 0, 1 << 20, &o->per_ip) ||
        env_int64("RETUNE_IDLE_TIMEOUT", 1, 86400, &o->idle_timeout) ||
        env_int64("RETUNE_HEADER_TIMEOUT", 1, 86400, &o->header_timeout))
        return 2;
    return 0;
}

/* Defaults first, then the environment, then flags (flags win). */
static int read_environment(serve_options *o)
{
    if (read_connection_environment(o))
        return 2;
    o->data_dir = getenv("RETUNE_DATA_DIR") ? getenv("RETUNE_DATA_DIR") : "./data";
    o->database = getenv("RETUNE_DATABASE");
    o->host = getenv("RETUNE_HOST") ? getenv("RETUNE_HOST") : "127.0.0.1";
    o->model_dir = getenv("RETUNE_MODEL");
    o->keys_file = getenv("RETUNE_API_KEYS_FILE");
    o->insecure_no_auth = env_true(getenv("RETUNE_INSECURE_NO_AUTH"));
    o->special_tokens_in_text = env_true(getenv("RETUNE_SPECIAL_TOKENS_IN_TEXT"));
    o->port = 8080;
    o->max_upload_bytes = 512LL << 20;
    o->min_examples = 10;
    o->device = getenv("RETUNE_DEVICE"); /* NULL: the GPU if present, else the CPU */
    o->dtype = getenv("RETUNE_DTYPE");
    if (getenv("RETUNE_MAX_BATCH") &&
        parse_int64("RETUNE_MAX_BATCH", getenv("RETUNE_MAX_BATCH"), 1, 256, &o->max_batch))
        return 2;
    if (getenv("RETUNE_MAX_CONTEXT") &&
        parse_int64("RETUNE_MAX_CONTEXT", getenv("RETUNE_MAX_CONTEXT"), 16, 1 << 20, &o->max_context))
        return 2;
    if (getenv("RETUNE_MIN_EXAMPLES") &&
        parse_int64("RETUNE_MIN_EXAMPLES", getenv("RETUNE_MIN_EXAMPLES"), 1, 1000000, &o->min_examples))
        return 2;
    int64_t v;
    if (getenv("RETUNE_PORT")) {
        if (parse_int64("RETUNE_PORT", getenv("RETUNE_PORT"), 0, 65535, &v))
            return 2;
        o->port = (int)v;
    }
    if (getenv("RETUNE_MAX_UPLOAD_BYTES")) {
        if (parse_int64("RETUNE_MAX_UPLOAD_BYTES", getenv("RETUNE_MAX_UPLOAD_BYTES"), 1,
                        INT64_MAX / 2, &o->max_upload_bytes))
            return 2;
    }
    static char env_keys[4096];
    const char *keys = getenv("RETUNE_API_KEY");
    if (keys) {
        snprintf(env_keys, sizeof env_keys, "%s", keys);
        char *save = NULL;
        for (char *k = strtok_r(env_keys, ",", &save); k; k = strtok_r(NULL, ",", &save))
            if (add_key(o, k, NULL))
                return 2;
    }
    return 0;
}

static int parse_flags(serve_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data-dir", required_argument, NULL, 'd'}, {"host", required_argument, NULL, 'H'},
        {"database", required_argument, NULL, 'Q'},
        {"port", required_argument, NULL, 'p'},     {"model", required_argument, NULL, 'm'},
        {"api-key", required_argument, NULL, 'k'},  {"api-keys-file", required_argument, NULL, 'K'},
        {"max-upload-bytes", required_argument, NULL, 'u'},
        {"insecure-no-auth", no_argument, NULL, 'I'}, {"help", no_argument, NULL, 'h'},
        {"min-examples", required_argument, NULL, 'n'}, {"device", required_argument, NULL, 'D'},
        {"lora", required_argument, NULL, 'L'}, {"max-batch", required_argument, NULL, 'B'},
        {"max-context", required_argument, NULL, 'C'}, {"max-waiting", required_argument, NULL, 'W'},
        {"adapter-budget-mb", required_argument, NULL, 'A'}, {"dtype", required_argument, NULL, 'y'},
        {"special-tokens-in-text", no_argument, NULL, 'S'},
        {"http-threads", required_argument, NULL, 'T'}, {"max-connections", required_argument, NULL, 'M'},
        {"max-connections-per-ip", required_argument, NULL, 'P'},
        {"idle-timeout", required_argument, NULL, 'i'}, {"header-timeout", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0}};
    int c;
    int64_t v;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'd': o->data_dir = optarg; break;
        case 'Q': o->database = optarg; break;
        case 'H': o->host = optarg; break;
        case 'p': rc = parse_int64("--port", optarg, 0, 65535, &v); o->port = (int)v; break;
        case 'm': o->model_dir = optarg; break;
        case 'k': rc = add_key(o, optarg, NULL); break;
        case 'K': o->keys_file = optarg; break;
        case 'u': rc = parse_int64("--max-upload-bytes", optarg, 1, INT64_MAX / 2, &o->max_upload_bytes); break;
        case 'I': o->insecure_no_auth = true; break;
        case 'S': o->special_tokens_in_text = true; break;
        case 'n': rc = parse_int64("--min-examples", optarg, 1, 1000000, &o->min_examples); break;
        case 'D': o->device = optarg; break;
        case 'y': o->dtype = optarg; break;
        case 'L':
            if (!strchr(optarg, '=') || optarg[0] == '=' || optarg[0] == '/' ||
                o->n_loras == MAX_KEYS) {
                fprintf(stderr, "retune serve: --lora takes NAME=DIR, NAME not starting with '/' "
                                "(got '%s')\n", optarg);
                rc = 2;
            } else {
                o->loras[o->n_loras++] = optarg;
            }
            break;
        case 'B': rc = parse_int64("--max-batch", optarg, 1, 256, &o->max_batch); break;
        case 'C': rc = parse_int64("--max-context", optarg, 16, 1 << 20, &o->max_context); break;
        case 'W': rc = parse_int64("--max-waiting", optarg, 1, 1 << 20, &o->max_waiting); break;
        case 'A': rc = parse_int64("--adapter-budget-mb", optarg, 1, 1 << 30, &o->adapter_budget_mb); break;
        case 'T': rc = parse_int64("--http-threads", optarg, 1, 256, &o->http_threads); break;
        case 'M': rc = parse_int64("--max-connections", optarg, 16, 1 << 20, &o->max_connections); break;
        case 'P': rc = parse_int64("--max-connections-per-ip", optarg, 0, 1 << 20, &o->per_ip); break;
        case 'i': rc = parse_int64("--idle-timeout", optarg, 1, 86400, &o->idle_timeout); break;
        case 'r': rc = parse_int64("--header-timeout", optarg, 1, 86400, &o->header_timeout); break;
        case 'h': serve_usage(stdout); return -1;
        default: serve_usage(stderr); return 2;
        }
        if (rc)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "retune serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return o->keys_file ? read_keys_file(o, o->keys_file) : 0;
}

/* True when every address host names is a loopback one (127.0.0.0/8,
 * ::1, or IPv4-mapped 127/8): "127.0.0.1", "localhost", "::1", never a
 * name that merely starts with "127.". A name that does not resolve is not. */
static bool is_loopback(const char *host)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return false;
    bool all = true;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            const struct sockaddr_in *v4 = (const struct sockaddr_in *)a->ai_addr;
            all = all && (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
        } else if (a->ai_family == AF_INET6) {
            const struct in6_addr *v6 = &((const struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
            all = all && (IN6_IS_ADDR_LOOPBACK(v6) || (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127));
        } else {
            all = false;
        }
    }
    freeaddrinfo(res);
    return all;
}

/* Raises the soft descriptor limit to the hard one: each connection is a
 * descriptor, and the HTTP layer fits its connection limit under this. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        rt_log(RT_LOG_WARN, "cannot raise the descriptor limit to %llu", (unsigned long long)rl.rlim_max);
}

/* Blocks until SIGINT or SIGTERM arrives (the signals are blocked in every
 * thread, so only this sigwait sees them). */
static int wait_for_stop_signal(const sigset_t *set)
{
    int sig = 0;
    sigwait(set, &sig);
    return sig;
}

/* The base model's id: the name of its folder ("models/tiny/" -> "tiny"). */
static void model_base_id(const char *dir, char *out, size_t size)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", dir);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    snprintf(out, size, "%s", basename(copy));
}

/* The worker's hook: a job published a model; the API registers it. */
static void announce_model(void *ctx, const char *project, const char *name, const char *kind,
                           const char *dir)
{
    api_model_published(ctx, project, name, kind, dir);
}

/* Opens the serving engine on the base model and registers --lora adapters. */
static int open_engine(const serve_options *o, engine_server **out)
{
    char err[1024] = "";
    engine_server_config ec = {.model_dir = o->model_dir, .device = o->device, .dtype = o->dtype,
                               .max_batch = (int)o->max_batch, .max_context = (int)o->max_context,
                               .max_waiting = (int)o->max_waiting,
                               .adapter_budget_bytes = (size_t)o->adapter_budget_mb << 20,
                               .special_tokens_in_text = o->special_tokens_in_text};
    if (engine_server_open(&ec, out, err, sizeof err) != RT_OK) {
        fprintf(stderr, "retune serve: cannot load --model %s: %s\n", o->model_dir, err);
        return 1;
    }
    for (size_t i = 0; i < o->n_loras; i++) {
        char name[640];
        const char *eq = strchr(o->loras[i], '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - o->loras[i]), o->loras[i]);
        if (engine_adapter_add(*out, name, eq + 1, err, sizeof err) != RT_OK) {
            fprintf(stderr, "retune serve: --lora %s: %s\n", o->loras[i], err);
            engine_server_close(*out);
            *out = NULL;
            return 1;
        }
        rt_log(RT_LOG_INFO, "serving adapter %s from %s", name, eq + 1);
    }
    return 0;
}

static void free_options(serve_options *o)
{
    for (size_t i = 0; i < MAX_KEYS; i++)
        free(o->key_storage[i]);
}

int server_serve_main(int argc, char **argv)
{
    serve_options o = {0};
    int rc = read_environment(&o);
    if (rc == 0)
        rc = parse_flags(&o, argc, argv);
    if (rc) {
        free_options(&o);
        return rc < 0 ? 0 : rc;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    storage *st = NULL;
    api_server *srv = NULL;
    worker *wk = NULL;
    engine_server *eng = NULL;
    char model_id[256] = "";
    int status = 1;
    bool stored_keys = false;
    if (server_storage_open("retune serve", o.data_dir, o.database, &st) != 0)
        goto out_storage;
    if (storage_key_any(st, &stored_keys) != RT_OK) {
        fprintf(stderr, "retune serve: cannot read the API keys from the database\n");
        goto out_storage;
    }
    if (o.n_keys == 0 && !stored_keys && !is_loopback(o.host) && !o.insecure_no_auth) {
        fprintf(stderr, "retune serve: refusing to listen on %s without API keys; give --api-key "
                        "or --api-keys-file, make one with 'retune keys add', or give "
                        "--insecure-no-auth to accept the risk\n", o.host);
        status = 2;
        goto out_storage;
    }
    char default_dir[4096];
    if (!o.model_dir) { /* the built-in model: pre-trained on first start, cached afterwards */
        if (storage_work_dir(st, STORAGE_WORK_BASE, "retune-tiny", default_dir, sizeof default_dir) != RT_OK ||
            server_ensure_default_model(default_dir, o.device) != 0)
            goto out_storage;
        o.model_dir = default_dir;
    }
    if (o.model_dir) {
        model_base_id(o.model_dir, model_id, sizeof model_id);
        if (open_engine(&o, &eng) != 0)
            goto out_storage;
    }
    api_config cfg = {.host = o.host, .port = o.port, .keys = o.keys, .n_keys = o.n_keys,
                      .max_upload_bytes = o.max_upload_bytes, .shutdown_grace_ms = 10000,
                      .model_dir = o.model_dir, .model_id = o.model_dir ? model_id : NULL,
                      .min_examples = (int)o.min_examples, .engine = eng, .device = o.device,
                      .special_tokens_in_text = o.special_tokens_in_text,
                      .full_model_budget_bytes = (size_t)4 << 30,
                      .http_threads = (int)o.http_threads, .max_connections = (int)o.max_connections,
                      .max_connections_per_ip = (int)(o.per_ip >= 0 ? o.per_ip
                                                      : is_loopback(o.host) ? 0 : 64),
                      .idle_timeout_s = (int)o.idle_timeout, .header_timeout_s = (int)o.header_timeout};
    raise_fd_limit();
    if (api_server_start(&cfg, st, &srv) != RT_OK)
        goto out_storage;
    worker_config wc = {.st = st, .model_dir = o.model_dir, .device = o.device, .dtype = o.dtype,
                        .engine = eng, .on_model = announce_model, .ctx = srv};
    if (o.model_dir && worker_start(&wc, &wk) != RT_OK) {
        api_server_stop(srv);
        goto out_storage;
    }
    rt_log(RT_LOG_INFO, "retune listening on http://%s:%d (data dir %s, %s)", o.host,
           api_server_port(srv), o.data_dir,
           o.n_keys || stored_keys ? "API keys required" : "no auth until a key is added");
    fflush(stderr);
    int sig = wait_for_stop_signal(&set);
    rt_log(RT_LOG_INFO, "signal %d: stopping (finishing requests in flight)", sig);
    worker_stop(wk); /* first: its hook (announce_model) uses the API server */
    api_server_stop(srv);
    status = 0;
out_storage:
    engine_server_close(eng);
    storage_close(st);
    free_options(&o);
    if (status == 0)
        rt_log(RT_LOG_INFO, "stopped cleanly");
    return status;
}
