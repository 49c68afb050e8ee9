/* herd — the event loop: epoll on ZMQ_FDs and plain fds, one-shot timers (see loop.h). */
#include "herd/loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <zmq.h>

typedef struct {
    void *zsock; /* NULL for a plain fd */
    int fd;      /* the fd waited on: ZMQ_FD of zsock, or the plain fd */
    HerdSocketFn sock_fn;
    HerdFdFn fd_fn;
    gpointer data;
    gboolean ready; /* may have input: check before sleeping */
} Watch;

typedef struct {
    gint64 deadline;
    guint id;
    HerdTimerFn fn;
    gpointer data;
} Timer;

struct HerdLoop {
    int epfd;
    GPtrArray *watches;       /* Watch*, in the order they were added */
    GHashTable *by_socket;    /* zsock -> Watch */
    gboolean watches_changed; /* set when a callback adds or removes a watch */
    GSequence *timers;        /* Timer*, by (deadline, id) */
    GHashTable *timer_by_id;  /* id -> GSequenceIter */
    guint next_timer_id;
    gboolean quit;
    int status;
};

static gint timer_cmp(gconstpointer a, gconstpointer b, gpointer unused)
{
    (void)unused;
    const Timer *x = a, *y = b;
    if (x->deadline != y->deadline)
        return x->deadline < y->deadline ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

HerdLoop *herd_loop_new(void)
{
    HerdLoop *loop = g_new0(HerdLoop, 1);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        g_error("epoll_create1: %s", g_strerror(errno));
    loop->watches = g_ptr_array_new_with_free_func(g_free);
    loop->by_socket = g_hash_table_new(g_direct_hash, g_direct_equal);
    loop->timers = g_sequence_new(g_free);
    loop->timer_by_id = g_hash_table_new(g_direct_hash, g_direct_equal);
    loop->next_timer_id = 1;
    return loop;
}

void herd_loop_free(HerdLoop *loop)
{
    if (!loop)
        return;
    close(loop->epfd);
    g_hash_table_destroy(loop->by_socket);
    g_ptr_array_free(loop->watches, TRUE);
    g_hash_table_destroy(loop->timer_by_id);
    g_sequence_free(loop->timers);
    g_free(loop);
}

static void add_watch(HerdLoop *loop, Watch *w)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0)
        g_error("epoll_ctl(ADD, %d): %s", w->fd, g_strerror(errno));
    g_ptr_array_add(loop->watches, w);
    if (w->zsock)
        g_hash_table_insert(loop->by_socket, w->zsock, w);
    loop->watches_changed = TRUE;
}

void herd_loop_add_socket(HerdLoop *loop, void *zsock, HerdSocketFn fn, gpointer data)
{
    Watch *w = g_new0(Watch, 1);
    size_t len = sizeof w->fd;
    if (zmq_getsockopt(zsock, ZMQ_FD, &w->fd, &len) < 0)
        g_error("zmq_getsockopt(ZMQ_FD): %s", zmq_strerror(errno));
    w->zsock = zsock;
    w->sock_fn = fn;
    w->data = data;
    w->ready = TRUE; /* input may be queued already */
    add_watch(loop, w);
}

void herd_loop_add_fd(HerdLoop *loop, int fd, HerdFdFn fn, gpointer data)
{
    Watch *w = g_new0(Watch, 1);
    w->fd = fd;
    w->fd_fn = fn;
    w->data = data;
    add_watch(loop, w);
}

void herd_loop_remove_socket(HerdLoop *loop, void *zsock)
{
    Watch *w = g_hash_table_lookup(loop->by_socket, zsock);
    if (!w)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    g_hash_table_remove(loop->by_socket, zsock);
    g_ptr_array_remove(loop->watches, w);
    loop->watches_changed = TRUE;
}

void herd_loop_touch(HerdLoop *loop, void *zsock)
{
    Watch *w = g_hash_table_lookup(loop->by_socket, zsock);
    if (w)
        w->ready = TRUE;
}

static void mark_all_sockets_ready(HerdLoop *loop)
{
    for (guint i = 0; i < loop->watches->len; i++) {
        Watch *w = loop->watches->pdata[i];
        if (w->zsock)
            w->ready = TRUE;
    }
}

gint64 herd_loop_now(const HerdLoop *loop)
{
    (void)loop;
    return g_get_monotonic_time();
}

guint herd_loop_timer_add_us(HerdLoop *loop, gint64 us, HerdTimerFn fn, gpointer data)
{
    Timer *t = g_new(Timer, 1);
    t->deadline = g_get_monotonic_time() + us;
    t->id = loop->next_timer_id++;
    if (loop->next_timer_id == 0) /* wrapped: ids stay > 0 */
        loop->next_timer_id = 1;
    t->fn = fn;
    t->data = data;
    GSequenceIter *it = g_sequence_insert_sorted(loop->timers, t, timer_cmp, NULL);
    g_hash_table_insert(loop->timer_by_id, GUINT_TO_POINTER(t->id), it);
    return t->id;
}

guint herd_loop_timer_add(HerdLoop *loop, guint ms, HerdTimerFn fn, gpointer data)
{
    return herd_loop_timer_add_us(loop, (gint64)ms * 1000, fn, data);
}

void herd_loop_timer_cancel(HerdLoop *loop, guint id)
{
    GSequenceIter *it = g_hash_table_lookup(loop->timer_by_id, GUINT_TO_POINTER(id));
    if (!it)
        return;
    g_hash_table_remove(loop->timer_by_id, GUINT_TO_POINTER(id));
    g_sequence_remove(it);
}

guint herd_loop_timer_count(const HerdLoop *loop)
{
    return g_hash_table_size(loop->timer_by_id);
}

/* Fire every timer that is due; a timer added by a callback for "now" waits for the next
 * iteration so that a zero-delay timer cannot starve the sockets. */
static void run_due_timers(HerdLoop *loop)
{
    gboolean fired = FALSE;
    gint64 now = g_get_monotonic_time();
    guint limit = loop->next_timer_id;
    for (;;) {
        GSequenceIter *it = g_sequence_get_begin_iter(loop->timers);
        if (g_sequence_iter_is_end(it))
            return;
        Timer *t = g_sequence_get(it);
        if (t->deadline > now || t->id >= limit)
            break;
        HerdTimerFn fn = t->fn;
        gpointer data = t->data;
        g_hash_table_remove(loop->timer_by_id, GUINT_TO_POINTER(t->id));
        g_sequence_remove(it);
        fn(data);
        fired = TRUE;
        if (loop->quit)
            break;
    }
    if (fired)
        mark_all_sockets_ready(loop); /* the safety net for a missed ZMQ_FD edge */
}

static int next_timeout_ms(HerdLoop *loop, int cap_ms)
{
    GSequenceIter *it = g_sequence_get_begin_iter(loop->timers);
    if (g_sequence_iter_is_end(it))
        return cap_ms;
    Timer *t = g_sequence_get(it);
    gint64 wait_us = t->deadline - g_get_monotonic_time();
    int ms = wait_us <= 0 ? 0 : (int)((wait_us + 999) / 1000);
    return (cap_ms >= 0 && cap_ms < ms) ? cap_ms : ms;
}

static gboolean any_ready(HerdLoop *loop)
{
    for (guint i = 0; i < loop->watches->len; i++)
        if (((Watch *)loop->watches->pdata[i])->ready)
            return TRUE;
    return FALSE;
}

/* Serve one watch that may have input. */
static void serve(Watch *w)
{
    if (!w->zsock) {
        w->ready = FALSE; /* plain fds are level-triggered in epoll */
        w->fd_fn(w->fd, w->data);
        return;
    }
    int events = 0;
    size_t len = sizeof events;
    if (zmq_getsockopt(w->zsock, ZMQ_EVENTS, &events, &len) < 0 || !(events & ZMQ_POLLIN)) {
        w->ready = FALSE;
        return;
    }
    w->ready = w->sock_fn(w->zsock, w->data);
}

void herd_loop_iterate(HerdLoop *loop, int timeout_ms)
{
    struct epoll_event evs[64];
    int wait = any_ready(loop) ? 0 : next_timeout_ms(loop, timeout_ms);
    int n = epoll_wait(loop->epfd, evs, G_N_ELEMENTS(evs), wait);
    if (n < 0 && errno != EINTR)
        g_warning("epoll_wait failed: %s", g_strerror(errno));
    for (int i = 0; i < n; i++)
        ((Watch *)evs[i].data.ptr)->ready = TRUE;
    loop->watches_changed = FALSE;
    for (guint i = 0; i < loop->watches->len && !loop->quit && !loop->watches_changed; i++) {
        Watch *w = loop->watches->pdata[i];
        if (w->ready)
            serve(w);
    }
    if (!loop->quit)
        run_due_timers(loop);
}

int herd_loop_run(HerdLoop *loop)
{
    loop->quit = FALSE;
    while (!loop->quit)
        herd_loop_iterate(loop, -1);
    return loop->status;
}

void herd_loop_quit(HerdLoop *loop, int status)
{
    loop->quit = TRUE;
    loop->status = status;
}

gboolean herd_loop_quitting(const HerdLoop *loop)
{
    return loop->quit;
}
