/*
 * api/offload.c — slow work (loading a model, checking and publishing an
 * imported adapter) runs on a thread of its own while its request's
 * connection is parked, so that no event-loop thread, and none of the
 * connections it serves (/healthz included), waits for it.
 *
 * The record is shared by the work's thread and the request. The request
 * may end first (its client left): its own state is freed then, and the
 * thread frees the work's argument when it finishes. When the work ends
 * first, it wakes the request, whose resume step runs `then` on an
 * event-loop thread and frees the argument. api_offload_drain (at server
 * stop) waits for every thread, since the work uses the engines.
 */
#include "api/api_internal.h"

#include <stdlib.h>

typedef struct api_offload {
    pthread_mutex_t lock;      /* guards req and done */
    api_request *req;          /* NULL once the request is over */
    bool done;
    api_server *srv;
    api_offload_work work;
    api_offload_then then;
    void *arg;
    void (*arg_free)(void *arg);
    void *request_state;       /* the request's state while the record stands in for it */
    void (*request_state_free)(void *state);
} api_offload;

static void offload_free(api_offload *o)
{
    if (o->arg_free)
        o->arg_free(o->arg);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

/* One work thread fewer; api_offload_drain may be waiting for none. */
static void running_done(api_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    if (--srv->offloads_running == 0)
        pthread_cond_broadcast(&srv->offloads_idle);
    pthread_mutex_unlock(&srv->lock);
}

static void *offload_thread(void *p)
{
    api_offload *o = p;
    api_server *srv = o->srv;
    o->work(o->arg);
    pthread_mutex_lock(&o->lock);
    o->done = true;
    bool orphan = !o->req;
    if (o->req)
        api_request_wake(o->req);
    pthread_mutex_unlock(&o->lock);
    if (orphan)
        offload_free(o);
    running_done(srv);
    return NULL;
}

/* The request ended while the record stood for its state. */
static void request_over(void *p)
{
    api_offload *o = p;
    pthread_mutex_lock(&o->lock);
    o->req = NULL;
    bool done = o->done;
    pthread_mutex_unlock(&o->lock);
    if (o->request_state_free)
        o->request_state_free(o->request_state);
    if (done)
        offload_free(o);
}

static bool work_done(void *p)
{
    api_offload *o = p;
    pthread_mutex_lock(&o->lock);
    bool done = o->done;
    pthread_mutex_unlock(&o->lock);
    return done;
}

/* The resume step: parks until the work is done, then gives the request
 * its state back and runs `then`. */
static int resume(api_request *req)
{
    api_offload *o = req->state;
    int rc;
    if (!api_request_wait(req, work_done, o, "the request", &rc))
        return rc;
    req->state = o->request_state;
    req->state_free = o->request_state_free;
    req->resume = NULL;
    rc = o->then(req, o->arg);
    offload_free(o);
    return rc;
}

int api_offload_start(api_request *req, api_offload_work work, api_offload_then then, void *arg,
                      void (*arg_free)(void *arg))
{
    api_offload *o = calloc(1, sizeof *o);
    if (!o) {
        if (arg_free)
            arg_free(arg);
        return RT_ERR_NOMEM;
    }
    pthread_mutex_init(&o->lock, NULL);
    o->req = req;
    o->srv = req->srv;
    o->work = work;
    o->then = then;
    o->arg = arg;
    o->arg_free = arg_free;
    o->request_state = req->state;
    o->request_state_free = req->state_free;
    pthread_mutex_lock(&req->srv->lock);
    req->srv->offloads_running++;
    pthread_mutex_unlock(&req->srv->lock);
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = pthread_create(&thread, &attr, offload_thread, o);
    pthread_attr_destroy(&attr);
    if (started != 0) { /* no thread: do the work here rather than fail the request */
        rt_log(RT_LOG_WARN, "%s: no thread for slow work; doing it on the event loop", req->request_id);
        work(arg);
        running_done(req->srv);
        int rc = then(req, arg);
        offload_free(o);
        return rc;
    }
    req->state = o;
    req->state_free = request_over;
    req->resume = resume;
    return resume(req);
}

void api_offload_drain(api_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    while (srv->offloads_running > 0)
        pthread_cond_wait(&srv->offloads_idle, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
}
