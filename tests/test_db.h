/*
 * tests/test_db.h — which database the storage tests run against. By
 * default SQLite in each test's own folder (<dir>/retune.db). With
 * RETUNE_TEST_DATABASE set to a PostgreSQL connection string (a
 * postgres:// URL or libpq key=value text; tests/e2e_postgres.py starts a
 * throwaway server and sets it), every test folder gets its own fresh
 * schema of that database (named from the folder's path, selected through
 * the connection's search_path), so each test starts empty as with SQLite;
 * test_db_drop removes it. Header-only, like tests/test.h.
 */
#ifndef RT_TEST_DB_H
#define RT_TEST_DB_H

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/storage.h"

/* The PostgreSQL connection string under test, or NULL for SQLite. */
static inline const char *test_db_base(void)
{
    const char *v = getenv("RETUNE_TEST_DATABASE");
    return v && *v ? v : NULL;
}

static inline bool test_db_is_pg(void)
{
    return test_db_base() != NULL;
}

/* The schema of folder dir: "t_" and a 64-bit FNV-1a hash of its path. */
static inline void test_db_schema(const char *dir, char *out, size_t size)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = dir; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    snprintf(out, size, "t_%016llx", (unsigned long long)h);
}

/* The connection string of dir's schema: the base with search_path set. */
static inline void test_db_target(const char *dir, char *out, size_t size)
{
    const char *base = test_db_base();
    char schema[32];
    test_db_schema(dir, schema, sizeof schema);
    bool url = !strncmp(base, "postgres://", 11) || !strncmp(base, "postgresql://", 13);
    if (url)
        snprintf(out, size, "%s%coptions=-csearch_path%%3D%s", base, strchr(base, '?') ? '&' : '?',
                 schema);
    else
        snprintf(out, size, "%s options=-csearch_path=%s", base, schema);
}

/* Drops the server's notices ("schema already exists, skipping"). */
static inline void test_db_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Runs sql (several statements allowed) on dir's database: its retune.db
 * (SQLite) or its schema (PostgreSQL, created when missing). 0 on success;
 * otherwise prints the error and returns -1. */
static inline int test_db_exec(const char *dir, const char *sql)
{
    char target[4096];
    if (!test_db_is_pg()) {
        snprintf(target, sizeof target, "%s/retune.db", dir);
        sqlite3 *db = NULL;
        char *msg = NULL;
        int rc = sqlite3_open(target, &db);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK)
            fprintf(stderr, "test_db_exec: %s\n", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        sqlite3_close(db);
        return rc == SQLITE_OK ? 0 : -1;
    }
    char schema[32], create[96];
    test_db_schema(dir, schema, sizeof schema);
    test_db_target(dir, target, sizeof target);
    PGconn *c = PQconnectdb(target);
    PQsetNoticeProcessor(c, test_db_quiet, NULL);
    snprintf(create, sizeof create, "CREATE SCHEMA IF NOT EXISTS %s", schema);
    PGresult *r = PQexec(c, create);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok) {
        r = PQexec(c, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
    }
    if (!ok)
        fprintf(stderr, "test_db_exec: %s", PQerrorMessage(c));
    PQfinish(c);
    return ok ? 0 : -1;
}

/* storage_open on dir with the database under test (dir's own schema on
 * PostgreSQL, created when missing). */
static inline int test_storage_open(const char *dir, storage **out)
{
    if (!test_db_is_pg())
        return storage_open(dir, out);
    char target[4096];
    if (test_db_exec(dir, "SELECT 1") != 0)
        return RT_ERR_DB;
    test_db_target(dir, target, sizeof target);
    return storage_open_database(dir, target, out);
}

/* Drops dir's schema (PostgreSQL; nothing to do for SQLite, whose database
 * goes with the folder). */
static inline void test_db_drop(const char *dir)
{
    if (!test_db_is_pg() || !dir)
        return;
    char schema[32], sql[96];
    test_db_schema(dir, schema, sizeof schema);
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    PGconn *c = PQconnectdb(test_db_base());
    PQsetNoticeProcessor(c, test_db_quiet, NULL);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

#endif
