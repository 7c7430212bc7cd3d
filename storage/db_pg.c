/*
 * storage/db_pg.c — the PostgreSQL backend of storage's statement interface
 * (storage_internal.h), over libpq: one PGconn per thread, as with SQLite.
 *
 * Statements are sent with PQexecParams, text in and text out: ?N
 * placeholders become $N, parameters carry their types (text, int8,
 * float8; SQL NULL as text, the only NULL storage binds) so that
 * "?1 IS NULL OR x = ?1" needs no casts, and result values are parsed from
 * their text. A statement's whole result is fetched on its first step;
 * storage's queries are small (lists are LIMITed).
 *
 * Errors map from SQLSTATE: 23505 unique -> RT_ERR_EXISTS, 23503 foreign key
 * -> RT_ERR_STATE, 23514/23502/22xxx check, not-null, bad data ->
 * RT_ERR_INVALID, 40xxx and 55P03 (deadlock, serialization, lock) ->
 * RT_ERR_BUSY, anything else (a lost connection included) -> RT_ERR_DB. A
 * connection the server dropped (a restart, a fail-over) is reset and the
 * statement sent once more, when it was not inside a transaction (there is
 * nothing to lose then); inside one, the caller sees RT_ERR_DB and the next
 * use resets the connection.
 */
#include "storage/storage_internal.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Type OIDs of the parameters storage binds (pg_type.dat). */
#define PG_TEXTOID 25
#define PG_INT8OID 20
#define PG_FLOAT8OID 701

/* Most ?N placeholders one statement may use. */
#define PG_PARAMS_MAX 64

typedef struct pg_stmt {
    storage_stmt base;
    char *sql;                      /* the text with $N placeholders (owned) */
    int n_params;                   /* the highest N used */
    char *values[PG_PARAMS_MAX];    /* owned text of each parameter; NULL: SQL NULL */
    unsigned int types[PG_PARAMS_MAX];
    PGresult *res;                  /* after the first step; NULL before */
    int row, n_rows;                /* the current row (-1 before the first) and how many */
    int err;                        /* the first step's error, repeated by later steps */
} pg_stmt;

/* Maps a failed result's SQLSTATE to an rt_error. */
static int pg_map_sqlstate(const char *state)
{
    if (!state)
        return RT_ERR_DB;
    if (!strcmp(state, "23505"))
        return RT_ERR_EXISTS;
    if (!strcmp(state, "23503"))
        return RT_ERR_STATE;
    if (!strcmp(state, "23514") || !strcmp(state, "23502") || !strncmp(state, "22", 2))
        return RT_ERR_INVALID;
    if (!strncmp(state, "40", 2) || !strcmp(state, "55P03"))
        return RT_ERR_BUSY;
    if (!strcmp(state, "53200"))
        return RT_ERR_NOMEM;
    if (!strcmp(state, "53100"))
        return RT_ERR_IO;
    return RT_ERR_DB;
}

/* Logs a failed result (what = the operation) and returns its rt_error. */
static int pg_error(PGconn *conn, const PGresult *res, const char *what)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    if (!msg || !*msg)
        msg = PQerrorMessage(conn);
    size_t len = strlen(msg);
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    rt_log(RT_LOG_ERROR, "storage: %s: %.*s (postgres %s)", what, (int)len, msg,
           state ? state : "-");
    return pg_map_sqlstate(state);
}

/* Routes the server's notices (e.g. "relation already exists, skipping")
 * to the debug log instead of libpq's default print to stderr. */
static void pg_notice(void *arg, const char *message)
{
    (void)arg;
    rt_log(RT_LOG_DEBUG, "storage: postgres: %s", message);
}

/* See storage_internal.h: RT_OK when conninfo is a connection string libpq
 * accepts (URL or key=value); otherwise logs libpq's reason. */
int storage_pg_check_target(const char *conninfo)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
    if (!opts) {
        size_t len = msg ? strcspn(msg, "\n") : 0;
        rt_log(RT_LOG_ERROR, "storage: invalid PostgreSQL connection string: %.*s",
               (int)len, msg ? msg : "");
        PQfreemem(msg);
        return RT_ERR_INVALID;
    }
    PQconninfoFree(opts);
    return RT_OK;
}

/*
 * Connects to conninfo (a URL or key=value string). Defaults that the
 * string may override: a 10 s connect timeout (an unreachable host must not
 * hang the start) and the application name "retune". The session speaks
 * UTF-8, and the server's notices go to the debug log. The caller closes
 * *out. RT_ERR_DB (logged with libpq's reason) when the connection fails.
 */
static int pg_open(const char *conninfo, void **out)
{
    const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname", NULL};
    const char *const values[] = {"10", "retune", conninfo, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn)
        return RT_ERR_NOMEM;
    if (PQstatus(conn) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(conn);
        size_t len = strlen(msg);
        while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
            len--;
        rt_log(RT_LOG_ERROR, "storage: cannot connect to PostgreSQL: %.*s", (int)len, msg);
        PQfinish(conn);
        return RT_ERR_DB;
    }
    PQsetNoticeProcessor(conn, pg_notice, NULL);
    if (PQsetClientEncoding(conn, "UTF8") != 0) {
        rt_log(RT_LOG_ERROR, "storage: PostgreSQL refused client_encoding UTF8");
        PQfinish(conn);
        return RT_ERR_DB;
    }
    *out = conn;
    return RT_OK;
}

static void pg_close(void *conn)
{
    PQfinish(conn);
}

/* Resets a connection the server or network dropped; RT_ERR_DB if it is
 * still down (then the next call tries again). */
static int pg_check(void *conn)
{
    if (PQstatus(conn) == CONNECTION_OK)
        return RT_OK;
    rt_log(RT_LOG_WARN, "storage: PostgreSQL connection lost; reconnecting");
    PQreset(conn);
    if (PQstatus(conn) == CONNECTION_OK)
        return RT_OK;
    return pg_error(conn, NULL, "reconnect");
}

/* Whether a statement that failed on conn should be sent again: the
 * connection broke, it was outside a transaction (was_idle), and a reset
 * brought it back. */
static bool pg_reconnected(PGconn *conn, bool was_idle)
{
    if (!was_idle || PQstatus(conn) != CONNECTION_BAD)
        return false;
    rt_log(RT_LOG_WARN, "storage: PostgreSQL connection lost; reconnecting");
    PQreset(conn);
    return PQstatus(conn) == CONNECTION_OK;
}

/* Whether a result is a success. */
static bool pg_ok(const PGresult *res)
{
    ExecStatusType status = PQresultStatus(res);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

/* Runs a parameterless SQL text (several statements allowed: they run as
 * one implicit transaction unless the text says otherwise). */
static int pg_exec(void *conn, const char *sql)
{
    bool was_idle = PQtransactionStatus(conn) == PQTRANS_IDLE;
    PGresult *res = PQexec(conn, sql);
    if (!pg_ok(res) && pg_reconnected(conn, was_idle)) {
        PQclear(res);
        res = PQexec(conn, sql);
    }
    ExecStatusType status = PQresultStatus(res);
    int err = RT_OK;
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
        err = pg_error(conn, res, "exec");
    PQclear(res);
    return err;
}

static bool pg_in_txn(void *conn)
{
    return PQtransactionStatus(conn) != PQTRANS_IDLE;
}

/*
 * Rewrites ?N placeholders to $N into out (same size as sql plus one) and
 * reports the highest N. Quoted text ('...', "...") is copied untouched. A
 * bare '?' or N out of 1..PG_PARAMS_MAX is RT_ERR_INVALID (a programmer
 * error: storage's SQL is fixed text).
 */
static int pg_rewrite(const char *sql, char *out, int *n_params)
{
    char quote = 0;
    int highest = 0;
    for (const char *p = sql; *p; p++) {
        if (quote) {
            quote = *p == quote ? 0 : quote;
        } else if (*p == '\'' || *p == '"') {
            quote = *p;
        } else if (*p == '?') {
            char *end = NULL;
            long n = strtol(p + 1, &end, 10);
            if (end == p + 1 || n < 1 || n > PG_PARAMS_MAX)
                return RT_ERR_INVALID;
            highest = n > highest ? (int)n : highest;
            *out++ = '$';
            continue;
        }
        *out++ = *p;
    }
    *out = '\0';
    *n_params = highest;
    return RT_OK;
}

static int pg_prepare(storage_db *db, const char *sql, storage_stmt **out)
{
    pg_stmt *s = calloc(1, sizeof *s);
    if (s)
        s->sql = malloc(strlen(sql) + 1);
    if (!s || !s->sql) {
        free(s);
        return RT_ERR_NOMEM;
    }
    if (pg_rewrite(sql, s->sql, &s->n_params) != RT_OK) {
        rt_log(RT_LOG_ERROR, "storage: bad placeholders in SQL: %.60s", sql);
        free(s->sql);
        free(s);
        return RT_ERR_INVALID;
    }
    for (int i = 0; i < s->n_params; i++)
        s->types[i] = PG_TEXTOID; /* an unbound parameter is a NULL text */
    s->base.db = db;
    s->row = -1;
    *out = &s->base;
    return RT_OK;
}

/* Keeps a parameter's text (copied) and type; a failed copy leaves it NULL
 * (SQL NULL), which the statement's constraints then refuse. */
static void pg_bind(storage_stmt *base, int i, int type, const char *text, size_t len,
                    int64_t n, double r)
{
    pg_stmt *s = (pg_stmt *)base;
    if (i < 1 || i > s->n_params)
        return;
    char buf[64], *v = NULL;
    free(s->values[i - 1]);
    s->types[i - 1] = PG_TEXTOID;
    if (type == STORAGE_BIND_TEXT) {
        v = strndup(text, len);
    } else if (type == STORAGE_BIND_INT) {
        snprintf(buf, sizeof buf, "%lld", (long long)n);
        v = strdup(buf);
        s->types[i - 1] = PG_INT8OID;
    } else if (type == STORAGE_BIND_REAL) {
        snprintf(buf, sizeof buf, "%.17g", r);
        v = strdup(buf);
        s->types[i - 1] = PG_FLOAT8OID;
    }
    s->values[i - 1] = v;
}

/* Sends the statement with its parameters; keeps the result. */
static int pg_run(pg_stmt *s)
{
    PGconn *conn = s->base.db->conn;
    bool was_idle = PQtransactionStatus(conn) == PQTRANS_IDLE;
    for (int attempt = 0; attempt < 2; attempt++) {
        PQclear(s->res);
        s->res = PQexecParams(conn, s->sql, s->n_params, s->types,
                              (const char *const *)s->values, NULL, NULL, 0);
        if (pg_ok(s->res) || attempt == 1 || !pg_reconnected(conn, was_idle))
            break;
    }
    ExecStatusType status = PQresultStatus(s->res);
    s->row = -1;
    s->n_rows = status == PGRES_TUPLES_OK ? PQntuples(s->res) : 0;
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
        return RT_OK;
    char what[80];
    snprintf(what, sizeof what, "%.60s", s->sql);
    return pg_error(conn, s->res, what);
}

static int pg_step(storage_stmt *base)
{
    pg_stmt *s = (pg_stmt *)base;
    if (!s->res && !s->err)
        s->err = pg_run(s);
    if (s->err)
        return s->err;
    if (s->row + 1 >= s->n_rows) {
        s->row = s->n_rows;
        return STORAGE_DONE;
    }
    s->row++;
    return STORAGE_ROW;
}

/* Whether column i of the current row can be read. */
static bool pg_has(const pg_stmt *s, int i)
{
    return s->res && s->row >= 0 && s->row < s->n_rows && i >= 0 && i < PQnfields(s->res) &&
           !PQgetisnull(s->res, s->row, i);
}

static const char *pg_col_text(storage_stmt *base, int i, size_t *len)
{
    pg_stmt *s = (pg_stmt *)base;
    if (!pg_has(s, i)) {
        *len = 0;
        return NULL;
    }
    *len = (size_t)PQgetlength(s->res, s->row, i);
    return PQgetvalue(s->res, s->row, i);
}

static int64_t pg_col_int(storage_stmt *base, int i)
{
    pg_stmt *s = (pg_stmt *)base;
    return pg_has(s, i) ? strtoll(PQgetvalue(s->res, s->row, i), NULL, 10) : 0;
}

static double pg_col_real(storage_stmt *base, int i)
{
    pg_stmt *s = (pg_stmt *)base;
    return pg_has(s, i) ? strtod(PQgetvalue(s->res, s->row, i), NULL) : 0.0;
}

/* Rows changed: the count in the command tag ("UPDATE 3"). */
static int64_t pg_changes(storage_stmt *base)
{
    pg_stmt *s = (pg_stmt *)base;
    const char *n = s->res ? PQcmdTuples(s->res) : "";
    return *n ? strtoll(n, NULL, 10) : 0;
}

static void pg_reset(storage_stmt *base)
{
    pg_stmt *s = (pg_stmt *)base;
    PQclear(s->res);
    s->res = NULL;
    s->err = RT_OK;
    s->row = -1;
    s->n_rows = 0;
}

static void pg_finalize(storage_stmt *base)
{
    pg_stmt *s = (pg_stmt *)base;
    PQclear(s->res);
    for (int i = 0; i < s->n_params; i++)
        free(s->values[i]);
    free(s->sql);
    free(s);
}

const struct storage_db_ops storage_pg_ops = {
    .dialect = STORAGE_POSTGRES, .open = pg_open, .close = pg_close, .check = pg_check,
    .exec = pg_exec, .in_txn = pg_in_txn, .prepare = pg_prepare, .bind = pg_bind,
    .step = pg_step, .col_text = pg_col_text, .col_int = pg_col_int, .col_real = pg_col_real,
    .changes = pg_changes, .reset = pg_reset, .finalize = pg_finalize,
};
