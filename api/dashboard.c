/*
 * api/dashboard.c — the web dashboard: `GET /` answers index.html and
 * `GET /dashboard/{name}` the page's other files (app.js, style.css).
 *
 * The files are the sources in api/dashboard/, embedded at build time by
 * tools/embed_files.sh into $(BUILD)/gen/dashboard_embedded.c, so the
 * binary serves them with nothing on disk and nothing fetched from
 * elsewhere. The page needs no key: every call it makes goes to the public
 * API like any client's, with the key the user typed into it. An unknown
 * name is the JSON 404 of an unknown id.
 */
#include "api/api_internal.h"

#include <string.h>

/* One embedded file (the generated table ends with a NULL name). */
struct rt_embedded_file {
    const char *name;
    const unsigned char *data;
    size_t size;
};
extern const struct rt_embedded_file rt_dashboard_files[];

/* What each file name ending is served as. */
static const struct {
    const char *suffix, *type;
} CONTENT_TYPES[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
};

/* The page may load and call only this server: no CDN, font or analytics
 * could sneak in, and no other site may frame it. */
#define DASHBOARD_CSP                                                                     \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "    \
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

static const struct rt_embedded_file *find_file(const char *name)
{
    for (const struct rt_embedded_file *f = rt_dashboard_files; f->name; f++)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static const char *content_type_of(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof CONTENT_TYPES / sizeof CONTENT_TYPES[0]; i++) {
        size_t k = strlen(CONTENT_TYPES[i].suffix);
        if (n > k && strcmp(name + n - k, CONTENT_TYPES[i].suffix) == 0)
            return CONTENT_TYPES[i].type;
    }
    return "application/octet-stream";
}

/*
 * GET / (no parameter: index.html) and GET /dashboard/{name}. Answers the
 * embedded file with its Content-Type and Cache-Control: no-cache (a new
 * binary's page is seen at once), or 404 for a name it does not have. The
 * response borrows the embedded bytes, which live as long as the program.
 */
int api_dashboard(api_request *req)
{
    const char *name = req->n_params > 0 ? req->params[0] : "index.html";
    const struct rt_embedded_file *f = find_file(name);
    if (!f)
        return api_respond_not_found(req, "dashboard file", name);
    /* Not MHD_RESPMEM_PERSISTENT: api/library_errors.c takes a response
     * made that way for one of libmicrohttpd's own error pages. */
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback_cls(f->size, (void *)f->data, NULL, NULL);
    if (!resp)
        return RT_ERR_NOMEM;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type_of(f->name));
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Content-Security-Policy", DASHBOARD_CSP);
    return api_respond_response(req, 200, resp);
}
