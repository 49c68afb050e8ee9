/* herd — the event loop: epoll on ZMQ_FDs and plain fds, one-shot timers (see loop.h).
 *
 * Only watches that may have input are looked at: those epoll reported, those touched, and
 * sockets whose callback left messages behind. They wait in loop->ready and are served in
 * the order the watches were added, so one iteration costs O(active watches) however many
 * sockets are watched. */
#include "herd/loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <zmq.h>

/* Descriptors taken from the kernel per epoll_wait; more stay reported for the next one. */
#define EVENTS_PER_WAIT 256

struct HerdWatch {
    void *zsock; /* NULL for a plain fd */
    int fd;      /* the fd waited on: ZMQ_FD of zsock, or the plain fd */
    HerdSocketFn sock_fn;
    HerdFdFn fd_fn;
    gpointer data;
    guint64 order;    /* when it was added: ready watches are served in this order */
    gboolean queued;  /* in loop->ready or in the round being served */
    gboolean signalled; /* epoll reported its FD: input is likely, not just possible */
    gboolean removed; /* no longer watched; freed at the end of the iteration */
};

typedef struct {
    gint64 deadline;
    guint id;
    HerdTimerFn fn;
    gpointer data;
} Timer;

struct HerdLoop {
    int epfd;
    GHashTable *watches;   /* HerdWatch* set: every watch not removed (owns them) */
    GHashTable *by_socket; /* zsock -> HerdWatch */
    GPtrArray *ready;      /* HerdWatch* that may have input: served next */
    GPtrArray *round;      /* the watches being served now (a reused buffer) */
    GPtrArray *removed;    /* HerdWatch* removed; events or rounds may still point at them */
    HerdWatch *serving;    /* the socket whose callback runs now */
    HerdFlushFn flush_fn;  /* end-of-iteration hook */
    gpointer flush_data;
    guint64 next_order;
    GSequence *timers;       /* Timer*, by (deadline, id) */
    GHashTable *timer_by_id; /* id -> GSequenceIter */
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
    loop->watches = g_hash_table_new_full(g_direct_hash, g_direct_equal, g_free, NULL);
    loop->by_socket = g_hash_table_new(g_direct_hash, g_direct_equal);
    loop->ready = g_ptr_array_new();
    loop->round = g_ptr_array_new();
    loop->removed = g_ptr_array_new_with_free_func(g_free);
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
    g_ptr_array_free(loop->ready, TRUE);
    g_ptr_array_free(loop->round, TRUE);
    g_ptr_array_free(loop->removed, TRUE);
    g_hash_table_destroy(loop->by_socket);
    g_hash_table_destroy(loop->watches);
    g_hash_table_destroy(loop->timer_by_id);
    g_sequence_free(loop->timers);
    g_free(loop);
}

/* ---- watches ---- */

static void mark_ready(HerdLoop *loop, HerdWatch *w)
{
    /* The socket being served needs no second look for what its own callback sends: the
     * callback ends by receiving until EAGAIN, which re-arms its FD, or asks to be called
     * again. */
    if (w->queued || w->removed || w == loop->serving)
        return;
    w->queued = TRUE;
    g_ptr_array_add(loop->ready, w);
}

static HerdWatch *add_watch(HerdLoop *loop, void *zsock, int fd, gpointer data)
{
    HerdWatch *w = g_new0(HerdWatch, 1);
    w->zsock = zsock;
    w->fd = fd;
    w->data = data;
    w->order = loop->next_order++;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        g_error("epoll_ctl(ADD, %d): %s", fd, g_strerror(errno));
    g_hash_table_add(loop->watches, w);
    if (zsock)
        g_hash_table_insert(loop->by_socket, zsock, w);
    return w;
}

HerdWatch *herd_loop_add_socket(HerdLoop *loop, void *zsock, HerdSocketFn fn, gpointer data)
{
    int fd = -1;
    size_t len = sizeof fd;
    if (zmq_getsockopt(zsock, ZMQ_FD, &fd, &len) < 0)
        g_error("zmq_getsockopt(ZMQ_FD): %s", zmq_strerror(errno));
    HerdWatch *w = add_watch(loop, zsock, fd, data);
    w->sock_fn = fn;
    mark_ready(loop, w); /* input may be queued already, its edge long gone */
    return w;
}

HerdWatch *herd_loop_add_fd(HerdLoop *loop, int fd, HerdFdFn fn, gpointer data)
{
    HerdWatch *w = add_watch(loop, NULL, fd, data);
    w->fd_fn = fn;
    return w;
}

void herd_loop_remove_watch(HerdLoop *loop, HerdWatch *w)
{
    if (!w || w->removed)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    if (w->zsock)
        g_hash_table_remove(loop->by_socket, w->zsock);
    g_hash_table_steal(loop->watches, w);
    w->removed = TRUE;
    g_ptr_array_add(loop->removed, w);
}

void herd_loop_remove_socket(HerdLoop *loop, void *zsock)
{
    herd_loop_remove_watch(loop, g_hash_table_lookup(loop->by_socket, zsock));
}

void herd_loop_recheck(HerdLoop *loop, HerdWatch *w)
{
    if (w && w->zsock)
        mark_ready(loop, w);
}

void herd_loop_touch(HerdLoop *loop, void *zsock)
{
    herd_loop_recheck(loop, g_hash_table_lookup(loop->by_socket, zsock));
}

/* The safety net for a missed ZMQ_FD edge. */
static void mark_all_sockets_ready(HerdLoop *loop)
{
    GHashTableIter it;
    gpointer w;
    g_hash_table_iter_init(&it, loop->by_socket);
    while (g_hash_table_iter_next(&it, NULL, &w))
        mark_ready(loop, w);
}

/* Free the watches removed so far; nothing of this iteration refers to them any more
 * except loop->ready, which is cleaned first. */
static void free_removed_watches(HerdLoop *loop)
{
    if (loop->removed->len == 0)
        return;
    guint kept = 0;
    for (guint i = 0; i < loop->ready->len; i++) {
        HerdWatch *w = loop->ready->pdata[i];
        if (!w->removed)
            loop->ready->pdata[kept++] = w;
    }
    g_ptr_array_set_size(loop->ready, kept);
    g_ptr_array_set_size(loop->removed, 0);
}

void herd_loop_set_flush(HerdLoop *loop, HerdFlushFn fn, gpointer data)
{
    loop->flush_fn = fn;
    loop->flush_data = data;
}

/* ---- timers ---- */

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
            break;
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
        mark_all_sockets_ready(loop);
}

static int next_timeout_ms(HerdLoop *loop, int cap_ms)
{
    GSequenceIter *it = g_sequence_get_begin_iter(loop->timers);
    if (g_sequence_iter_is_end(it))
        return cap_ms;
    Timer *t = g_sequence_get(it);
    gint64 wait_us = t->deadline - g_get_monotonic_time();
    int ms = wait_us <= 0 ? 0 : (int)MIN((wait_us + 999) / 1000, G_MAXINT);
    return (cap_ms >= 0 && cap_ms < ms) ? cap_ms : ms;
}

/* ---- iterations ---- */

static gint by_order(gconstpointer a, gconstpointer b)
{
    const HerdWatch *x = *(HerdWatch *const *)a, *y = *(HerdWatch *const *)b;
    return x->order < y->order ? -1 : (x->order > y->order);
}

/* Serve one watch that may have input. A socket whose FD signalled is called back at once:
 * its non-blocking receive answers what ZMQ_EVENTS would (both process the socket's
 * pending commands, a getpid and a poll system call inside libzmq) and takes the message
 * in the same step. A socket that is only suspected (touched, re-checked) is asked first,
 * so that callbacks which re-check other sockets do not call each other back forever. */
static void serve(HerdLoop *loop, HerdWatch *w)
{
    if (!w->zsock) {
        w->fd_fn(w->fd, w->data); /* level-triggered in epoll: reported again while readable */
        return;
    }
    gboolean signalled = w->signalled;
    w->signalled = FALSE;
    if (!signalled) {
        int events = 0;
        size_t len = sizeof events;
        if (zmq_getsockopt(w->zsock, ZMQ_EVENTS, &events, &len) < 0 || !(events & ZMQ_POLLIN))
            return;
    }
    loop->serving = w;
    gboolean more = w->sock_fn(w->zsock, w->data);
    loop->serving = NULL;
    if (more)
        mark_ready(loop, w); /* it left messages behind: next iteration */
}

/* Serve each watch that was ready when the round began once, in the order they were
 * added. What becomes ready meanwhile waits in loop->ready for the next round, unless it
 * is still to come in this one. */
static void serve_round(HerdLoop *loop)
{
    GPtrArray *round = loop->ready;
    loop->ready = loop->round;
    loop->round = round;
    if (round->len > 1)
        g_ptr_array_sort(round, by_order);
    for (guint i = 0; i < round->len; i++) {
        HerdWatch *w = round->pdata[i];
        w->queued = FALSE;
        if (loop->quit)
            mark_ready(loop, w); /* for a later run */
        else if (!w->removed)
            serve(loop, w);
    }
    g_ptr_array_set_size(round, 0);
}

gboolean herd_loop_iterate(HerdLoop *loop, int timeout_ms)
{
    struct epoll_event evs[EVENTS_PER_WAIT];
    int wait = loop->ready->len > 0 ? 0 : next_timeout_ms(loop, timeout_ms);
    int n = epoll_wait(loop->epfd, evs, G_N_ELEMENTS(evs), wait);
    int wait_errno = errno;
    for (int i = 0; i < n; i++) {
        HerdWatch *w = evs[i].data.ptr;
        w->signalled = TRUE;
        mark_ready(loop, w); /* removed ones (none yet: freed below) are skipped */
    }
    serve_round(loop);
    if (!loop->quit)
        run_due_timers(loop);
    if (loop->flush_fn)
        loop->flush_fn(loop->flush_data); /* also when quitting: what was gathered goes out */
    free_removed_watches(loop);
    if (n < 0 && wait_errno != EINTR) {
        errno = wait_errno;
        return FALSE;
    }
    return TRUE;
}

int herd_loop_run(HerdLoop *loop)
{
    loop->quit = FALSE;
    while (!loop->quit)
        if (!herd_loop_iterate(loop, -1))
            g_warning("epoll_wait failed: %s", g_strerror(errno));
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
