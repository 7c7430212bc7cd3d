/*
 * server/keys_cmd.c — `retune keys add|list|revoke`: the API keys a server
 * accepts besides --api-key and --api-keys-file, each belonging to a
 * project. A new secret ("sk-rt-" + 48 hex digits from getrandom) is
 * printed once and never again: storage keeps only its SHA-256 and a short
 * prefix for telling keys apart. A running server sees added and revoked
 * keys at once (it looks every token up), so no restart is needed.
 */
#include "server/server.h"
#include "storage/storage.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define SECRET_TAG "sk-rt-"
#define SECRET_RANDOM_BYTES 24   /* 48 hex digits: 192 bits */
#define PREFIX_CHARS 10          /* "sk-rt-" and 4 hex digits: shown by list */

static void keys_usage(FILE *out)
{
    fprintf(out,
            "usage: retune keys add --project NAME [--data-dir DIR] [--database DB]\n"
            "       retune keys list [--data-dir DIR] [--database DB]\n"
            "       retune keys revoke ID [--data-dir DIR] [--database DB]\n"
            "  add      makes a key for project NAME (1-63 of letters, digits, '.', '_', '-')\n"
            "           and prints its secret once: only its SHA-256 is stored\n"
            "  list     every key: id, project, the secret's first characters, created, revoked\n"
            "  revoke   refuses key ID from the next request on, without a restart\n"
            "  --data-dir DIR  the server's data directory (RETUNE_DATA_DIR, default ./data)\n"
            "  --database DB   the server's database, as retune serve takes it (RETUNE_DATABASE)\n");
}

/* Writes a new secret into buf: SECRET_TAG and 48 random hex digits.
 * 1 when the system has no randomness to give. */
static int new_secret(char *buf, size_t size)
{
    unsigned char r[SECRET_RANDOM_BYTES];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n <= 0)
            return 1;
        got += (size_t)n;
    }
    size_t o = (size_t)snprintf(buf, size, "%s", SECRET_TAG);
    for (size_t i = 0; i < sizeof r && o + 2 < size; i++, o += 2)
        snprintf(buf + o, size - o, "%02x", r[i]);
    explicit_bzero(r, sizeof r);
    return 0;
}

/* `keys add`: stores the new key's hash and prints the secret once. */
static int keys_add(storage *st, const char *project)
{
    if (!project || !storage_project_valid(project)) {
        fprintf(stderr, "retune keys add: --project NAME is required: 1 to 63 of letters, "
                        "digits, '.', '_' and '-' (not first)\n");
        return 2;
    }
    char secret[sizeof SECRET_TAG + 2 * SECRET_RANDOM_BYTES];
    storage_key key = {0}, stored;
    if (new_secret(secret, sizeof secret) != 0) {
        fprintf(stderr, "retune keys add: no randomness available (getrandom)\n");
        return 1;
    }
    snprintf(key.project, sizeof key.project, "%s", project);
    rt_sha256_hex(secret, strlen(secret), key.hash);
    snprintf(key.prefix, sizeof key.prefix, "%.*s", PREFIX_CHARS, secret);
    int rc = storage_key_add(st, &key, &stored);
    if (rc != RT_OK) {
        explicit_bzero(secret, sizeof secret);
        fprintf(stderr, "retune keys add: cannot store the key: %s\n", rt_strerror(rc));
        return 1;
    }
    printf("id: %s\nproject: %s\nsecret: %s\n", stored.id, stored.project, secret);
    fflush(stdout);
    explicit_bzero(secret, sizeof secret);
    fprintf(stderr, "Keep the secret now: it is not stored and cannot be shown again.\n");
    return 0;
}

/* A Unix time as "2025-01-31T12:00:00Z", or "-" for 0. */
static void format_time(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || !gmtime_r(&tt, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, size, "-");
}

/* `keys list`: one line per key, oldest first; never a secret (storage has none). */
static int keys_list(storage *st)
{
    storage_key *keys = NULL;
    size_t n = 0;
    int rc = storage_key_list(st, &keys, &n);
    if (rc != RT_OK) {
        fprintf(stderr, "retune keys list: %s\n", rt_strerror(rc));
        return 1;
    }
    printf("%-28s  %-20s  %-12s  %-20s  %s\n", "ID", "PROJECT", "PREFIX", "CREATED", "REVOKED");
    for (size_t i = 0; i < n; i++) {
        char created[32], revoked[32];
        format_time(keys[i].created_at, created, sizeof created);
        format_time(keys[i].revoked_at, revoked, sizeof revoked);
        printf("%-28s  %-20s  %-12s  %-20s  %s\n", keys[i].id, keys[i].project, keys[i].prefix,
               created, revoked);
    }
    free(keys);
    return 0;
}

/* `keys revoke ID`. */
static int keys_revoke(storage *st, const char *id)
{
    int rc = storage_key_revoke(st, id);
    if (rc == RT_OK) {
        printf("revoked %s\n", id);
        return 0;
    }
    if (rc == RT_ERR_NOT_FOUND || rc == RT_ERR_INVALID)
        fprintf(stderr, "retune keys revoke: no key %s (see 'retune keys list')\n", id);
    else if (rc == RT_ERR_STATE)
        fprintf(stderr, "retune keys revoke: %s is already revoked\n", id);
    else
        fprintf(stderr, "retune keys revoke: %s\n", rt_strerror(rc));
    return 1;
}

/* The options every subcommand takes. */
typedef struct keys_options {
    const char *data_dir, *database, *project;
    const char *args[2];   /* positional arguments after the subcommand */
    int n_args;
} keys_options;

/* Parses argv (argv[0] is the subcommand); 2 on bad usage, -1 for --help. */
static int parse_keys_flags(keys_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {{"data-dir", required_argument, NULL, 'd'},
                                             {"database", required_argument, NULL, 'Q'},
                                             {"project", required_argument, NULL, 'p'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    o->data_dir = getenv("RETUNE_DATA_DIR") ? getenv("RETUNE_DATA_DIR") : "./data";
    o->database = getenv("RETUNE_DATABASE");
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'd')
            o->data_dir = optarg;
        else if (c == 'Q')
            o->database = optarg;
        else if (c == 'p')
            o->project = optarg;
        else if (c == 'h')
            return -1;
        else
            return 2;
    }
    for (int i = optind; i < argc; i++) {
        if (o->n_args == 2)
            return 2;
        o->args[o->n_args++] = argv[i];
    }
    return 0;
}

/* Runs one subcommand on the opened data directory. */
static int keys_run(storage *st, const char *cmd, const keys_options *o)
{
    if (!strcmp(cmd, "add") && o->n_args == 0)
        return keys_add(st, o->project);
    if (!strcmp(cmd, "list") && o->n_args == 0 && !o->project)
        return keys_list(st);
    if (!strcmp(cmd, "revoke") && o->n_args == 1 && !o->project)
        return keys_revoke(st, o->args[0]);
    keys_usage(stderr);
    return 2;
}

int server_keys_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        keys_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "add") && strcmp(cmd, "list") && strcmp(cmd, "revoke")) {
        fprintf(stderr, "retune keys: unknown subcommand '%s'\n", cmd);
        keys_usage(stderr);
        return 2;
    }
    keys_options o = {0};
    int rc = parse_keys_flags(&o, argc - 1, argv + 1);
    if (rc) {
        keys_usage(rc < 0 ? stdout : stderr);
        return rc < 0 ? 0 : rc;
    }
    storage *st = NULL;
    if (server_storage_open("retune keys", o.data_dir, o.database, &st) != 0)
        return 1;
    rc = keys_run(st, cmd, &o);
    storage_close(st);
    return rc;
}
