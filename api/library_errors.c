/*
 * api/library_errors.c — the malformed requests libmicrohttpd answers itself
 * get OpenAI-style JSON errors too, not its fixed HTML pages.
 *
 * libmicrohttpd 0.9.75 rejects a head it cannot parse (over the connection's
 * memory, a header line without a colon, a version it does not speak, a
 * Content-Length that is not a number, broken chunk framing) before any
 * callback of ours runs, and has no option to change what it sends. Its one
 * error path (transmit_error_response in connection.c) makes a response
 * from a static HTML buffer (MHD_RESPMEM_PERSISTENT) and queues it, calling
 * both functions through its PLT. An executable's definitions come first in
 * the dynamic linker's lookup, so the two definitions below receive those
 * calls, and every other call, which they pass on to libmicrohttpd's own
 * (dlsym RTLD_NEXT). retune itself never makes a PERSISTENT response, so one
 * made on this thread and queued next is the library's error.
 *
 * Such an error is written straight to the socket (as api_respond_error does
 * mid-body) and the queue call is refused, which makes libmicrohttpd close
 * the connection: 0.9.75 would otherwise send the header block of its
 * Content-Length errors twice. A request line with no space at all is still
 * closed without a reply: libmicrohttpd drops it without calling anything.
 */
#include "api/api_internal.h"
#include "storage/storage.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the library says (a phrase of its HTML) and at which status, and our answer. */
struct library_error {
    unsigned status;
    const char *phrase; /* NULL: any text at this status */
    const char *code, *param, *message;
};

static const struct library_error LIBRARY_ERRORS[] = {
    {431, NULL, "headers_too_large", NULL,
     "The request line and headers are larger than the 64 KiB the server holds for a connection."},
    {414, NULL, "invalid_path", "path",
     "The request line is larger than the 64 KiB the server holds for a connection."},
    {400, "Content-Length", "invalid_content_length", "Content-Length",
     "Content-Length must be a decimal number of bytes."},
    {413, "Content-Length", "request_too_large", "Content-Length",
     "Content-Length is larger than any body the server accepts."},
    {400, "chunked", "invalid_chunked_body", "Transfer-Encoding",
     "The chunked body is malformed: each chunk is a hexadecimal size line, CRLF, the data, CRLF."},
    {413, "chunk size", "request_too_large", "Transfer-Encoding",
     "A chunk size in the chunked body is larger than any body the server accepts."},
    {400, "Host", "missing_host", "Host", "An HTTP/1.1 request must have a Host header."},
    {400, NULL, "malformed_request", NULL,
     "The request is not valid HTTP/1.1: every header line is 'Name: value' and the request line is "
     "'METHOD PATH HTTP/1.1'."},
    {505, "too old", "http_version_not_supported", NULL,
     "HTTP/0.9 is not supported; send HTTP/1.1 (or HTTP/1.0)."},
    {505, NULL, "http_version_not_supported", NULL,
     "This HTTP version is not supported; send HTTP/1.1 (or HTTP/1.0). HTTP/2 is not served."},
    {413, NULL, "request_too_large", NULL, "The request is larger than the server accepts."},
    {500, NULL, "server_error", NULL, "The server ran out of memory for this connection; try again."},
};

static const struct library_error *library_error_for(unsigned status, const char *html)
{
    for (size_t i = 0; i < sizeof LIBRARY_ERRORS / sizeof LIBRARY_ERRORS[0]; i++) {
        const struct library_error *e = &LIBRARY_ERRORS[i];
        if (e->status == status && (!e->phrase || (html && strstr(html, e->phrase))))
            return e;
    }
    return NULL;
}

/* The response the library made from a static buffer on this thread, and that buffer. */
static _Thread_local struct MHD_Response *library_response;
static _Thread_local const char *library_html;

typedef struct MHD_Response *(*create_fn)(size_t, void *, enum MHD_ResponseMemoryMode);
typedef enum MHD_Result (*queue_fn)(struct MHD_Connection *, unsigned int, struct MHD_Response *);

static void *library_symbol(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) { /* cannot happen while libmicrohttpd is linked; nothing could be answered */
        rt_log(RT_LOG_ERROR, "libmicrohttpd's %s not found: %s", name, dlerror());
        abort();
    }
    return f;
}

struct MHD_Response *MHD_create_response_from_buffer(size_t size, void *buffer,
                                                     enum MHD_ResponseMemoryMode mode)
{
    static create_fn real; /* a pointer-sized store: threads racing here write the same value */
    create_fn f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (create_fn)library_symbol("MHD_create_response_from_buffer");
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    struct MHD_Response *resp = f(size, buffer, mode);
    library_response = mode == MHD_RESPMEM_PERSISTENT ? resp : NULL;
    library_html = mode == MHD_RESPMEM_PERSISTENT ? buffer : NULL;
    return resp;
}

/* Answers the library's error on connection in JSON; false when it could not be written. */
static bool answer_in_json(struct MHD_Connection *connection, unsigned status, const char *html)
{
    const struct library_error *e = library_error_for(status, html);
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!e || !info)
        return false;
    char request_id[64];
    storage_new_id("req", request_id, sizeof request_id);
    rt_log(RT_LOG_INFO, "%s: %u %s (the HTTP library refused the request)", request_id, status, e->code);
    api_write_error_to_socket(info->connect_fd, (int)status, request_id,
                              status == 500 ? "server_error" : "invalid_request_error", e->param, e->code,
                              e->message);
    return true;
}

enum MHD_Result MHD_queue_response(struct MHD_Connection *connection, unsigned int status_code,
                                   struct MHD_Response *response)
{
    static queue_fn real;
    queue_fn f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (queue_fn)library_symbol("MHD_queue_response");
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    if (response && response == library_response) {
        const char *html = library_html;
        library_response = NULL;
        library_html = NULL;
        if (answer_in_json(connection, status_code, html))
            return MHD_NO; /* answered: the library closes the connection */
    }
    return f(connection, status_code, response);
}

void api_library_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
        line[--n] = '\0';
    /* What one client did wrong is answered above and logged by us; the
     * library's words for it (with its HTML) are for debugging only, so a
     * hostile client cannot fill the log. */
    bool about_one_connection = strstr(line, "onnection") || strstr(line, "<html>");
    rt_log(about_one_connection ? RT_LOG_DEBUG : RT_LOG_WARN, "libmicrohttpd: %s", line);
}
