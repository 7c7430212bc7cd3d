/*
 * tests/test.h — a minimal test harness: CHECK macros count passes and
 * failures, TEST_MAIN prints the plain "N passed, N failed" line and exits
 * non-zero when anything failed. Header-only so each test is one file.
 */
#ifndef RT_TEST_H
#define RT_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int test_passed, test_failed;

#define CHECK(cond) do { \
    if (cond) { test_passed++; } \
    else { test_failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_MSG(cond, ...) do { \
    if (cond) { test_passed++; } \
    else { test_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_EQ_INT(a, b) CHECK_MSG((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))
static inline const char *test_str_or_null(const char *s) { return s ? s : "(null)"; }
static inline int test_str_eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }
#define CHECK_EQ_STR(a, b) CHECK_MSG(test_str_eq((a), (b)), "\"%s\" != \"%s\"", test_str_or_null(a), test_str_or_null(b))
/* NaN never passes: !(x <= tol) is true for NaN. */
#define CHECK_NEAR(a, b, tol) CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %.3g)", (double)(a), (double)(b), (double)(tol))

#define RUN(fn) do { fprintf(stderr, "-- %s\n", #fn); fn(); } while (0)
#define RUN_ARG(fn, arg) do { fprintf(stderr, "-- %s\n", #fn); fn(arg); } while (0)

#define TEST_SUMMARY() (printf("%d passed, %d failed\n", test_passed, test_failed), test_failed ? 1 : 0)

#endif
