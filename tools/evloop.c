/* herd — epoll-based readiness loop for many ZeroMQ sockets (see evloop.h). */
#include "evloop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <zmq.h>

#define EVENTS_PER_WAIT 256

struct EvWatch {
    void *sock; /* NULL for a plain descriptor */
    int fd;
    EvCallback fn;
    gpointer data;
    gboolean queued; /* in loop->ready */
    gboolean dead;   /* unwatched; freed at the end of the iteration */
};

struct EvLoop {
    int epfd;
    GQueue ready;     /* EvWatch* of sockets with a message waiting */
    GPtrArray *dead;  /* unwatched during this iteration */
};

EvLoop *evloop_new(void)
{
    EvLoop *loop = g_new0(EvLoop, 1);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    g_queue_init(&loop->ready);
    loop->dead = g_ptr_array_new_with_free_func(g_free);
    return loop;
}

void evloop_free(EvLoop *loop)
{
    if (!loop)
        return;
    close(loop->epfd);
    g_queue_clear(&loop->ready);
    g_ptr_array_free(loop->dead, TRUE);
    g_free(loop);
}

static EvWatch *watch_add(EvLoop *loop, void *sock, int fd, EvCallback fn, gpointer data)
{
    EvWatch *w = g_new0(EvWatch, 1);
    w->sock = sock;
    w->fd = fd;
    w->fn = fn;
    w->data = data;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        g_warning("epoll_ctl(ADD, %d): %s", fd, g_strerror(errno));
    return w;
}

EvWatch *evloop_watch_socket(EvLoop *loop, void *zmq_socket, EvCallback fn, gpointer data)
{
    int fd = -1;
    size_t len = sizeof fd;
    zmq_getsockopt(zmq_socket, ZMQ_FD, &fd, &len);
    EvWatch *w = watch_add(loop, zmq_socket, fd, fn, data);
    evloop_recheck(loop, w); /* messages may be waiting already */
    return w;
}

EvWatch *evloop_watch_fd(EvLoop *loop, int fd, EvCallback fn, gpointer data)
{
    return watch_add(loop, NULL, fd, fn, data);
}

void evloop_unwatch(EvLoop *loop, EvWatch *w)
{
    if (!w || w->dead)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    if (w->queued)
        g_queue_remove(&loop->ready, w);
    w->queued = FALSE;
    w->dead = TRUE;
    g_ptr_array_add(loop->dead, w); /* events already collected may still point at it */
}

static gboolean socket_readable(EvWatch *w)
{
    int events = 0;
    size_t len = sizeof events;
    return zmq_getsockopt(w->sock, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN);
}

void evloop_recheck(EvLoop *loop, EvWatch *w)
{
    if (!w || w->dead || !w->sock || w->queued)
        return;
    if (socket_readable(w)) {
        w->queued = TRUE;
        g_queue_push_tail(&loop->ready, w);
    }
}

/* Run every socket that was ready when this round began once, in order; those still
 * holding messages afterwards go to the back of the queue for the next round. */
static void run_ready(EvLoop *loop)
{
    guint rounds = g_queue_get_length(&loop->ready);
    while (rounds-- > 0) {
        EvWatch *w = g_queue_pop_head(&loop->ready);
        if (!w)
            break;
        w->queued = FALSE;
        w->fn(w->data);
        evloop_recheck(loop, w);
    }
}

gboolean evloop_iterate(EvLoop *loop, long timeout_ms)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    if (!g_queue_is_empty(&loop->ready))
        timeout_ms = 0;
    int n = epoll_wait(loop->epfd, events, EVENTS_PER_WAIT, (int)MIN(timeout_ms, G_MAXINT));
    if (n < 0)
        return errno == EINTR;
    for (int i = 0; i < n; i++) {
        EvWatch *w = events[i].data.ptr;
        if (w->dead)
            continue;
        if (w->sock)
            evloop_recheck(loop, w);
        else
            w->fn(w->data); /* a pipe: read it now; level-triggered, so nothing is lost */
    }
    run_ready(loop);
    g_ptr_array_set_size(loop->dead, 0);
    return TRUE;
}
