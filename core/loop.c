/* herd — the zmq_poll event loop. */
#include "herd/loop.h"

#include <errno.h>
#include <zmq.h>

typedef struct {
    void *zsock; /* NULL for a plain fd */
    int fd;
    HerdSocketFn sock_fn;
    HerdFdFn fd_fn;
    gpointer data;
} Watch;

typedef struct {
    gint64 deadline;
    guint id;
    HerdTimerFn fn;
    gpointer data;
} Timer;

struct HerdLoop {
    GArray *watches;          /* Watch */
    GArray *items;            /* zmq_pollitem_t, rebuilt when watches change */
    gboolean items_dirty;
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
    loop->watches = g_array_new(FALSE, TRUE, sizeof(Watch));
    loop->items = g_array_new(FALSE, TRUE, sizeof(zmq_pollitem_t));
    loop->timers = g_sequence_new(g_free);
    loop->timer_by_id = g_hash_table_new(g_direct_hash, g_direct_equal);
    loop->next_timer_id = 1;
    return loop;
}

void herd_loop_free(HerdLoop *loop)
{
    if (!loop)
        return;
    g_array_free(loop->watches, TRUE);
    g_array_free(loop->items, TRUE);
    g_hash_table_destroy(loop->timer_by_id);
    g_sequence_free(loop->timers);
    g_free(loop);
}

static void add_watch(HerdLoop *loop, Watch w)
{
    g_array_append_val(loop->watches, w);
    loop->items_dirty = TRUE;
}

void herd_loop_add_socket(HerdLoop *loop, void *zsock, HerdSocketFn fn, gpointer data)
{
    add_watch(loop, (Watch){ .zsock = zsock, .fd = -1, .sock_fn = fn, .data = data });
}

void herd_loop_add_fd(HerdLoop *loop, int fd, HerdFdFn fn, gpointer data)
{
    add_watch(loop, (Watch){ .zsock = NULL, .fd = fd, .fd_fn = fn, .data = data });
}

void herd_loop_remove_socket(HerdLoop *loop, void *zsock)
{
    for (guint i = 0; i < loop->watches->len; i++) {
        if (g_array_index(loop->watches, Watch, i).zsock == zsock) {
            g_array_remove_index(loop->watches, i);
            loop->items_dirty = TRUE;
            return;
        }
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
    gint64 now = g_get_monotonic_time();
    guint limit = loop->next_timer_id;
    for (;;) {
        GSequenceIter *it = g_sequence_get_begin_iter(loop->timers);
        if (g_sequence_iter_is_end(it))
            return;
        Timer *t = g_sequence_get(it);
        if (t->deadline > now || t->id >= limit)
            return;
        HerdTimerFn fn = t->fn;
        gpointer data = t->data;
        g_hash_table_remove(loop->timer_by_id, GUINT_TO_POINTER(t->id));
        g_sequence_remove(it);
        fn(data);
        if (loop->quit)
            return;
    }
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

static void rebuild_items(HerdLoop *loop)
{
    g_array_set_size(loop->items, loop->watches->len);
    for (guint i = 0; i < loop->watches->len; i++) {
        Watch *w = &g_array_index(loop->watches, Watch, i);
        zmq_pollitem_t *item = &g_array_index(loop->items, zmq_pollitem_t, i);
        item->socket = w->zsock;
        item->fd = w->fd;
        item->events = ZMQ_POLLIN;
        item->revents = 0;
    }
    loop->items_dirty = FALSE;
}

void herd_loop_iterate(HerdLoop *loop, int timeout_ms)
{
    if (loop->items_dirty)
        rebuild_items(loop);
    int wait = next_timeout_ms(loop, timeout_ms);
    int rc = zmq_poll((zmq_pollitem_t *)loop->items->data, (int)loop->items->len, wait);
    if (rc < 0 && errno != EINTR && errno != ETERM)
        g_warning("zmq_poll failed: %s", zmq_strerror(errno));
    if (rc > 0) {
        guint n = loop->items->len;
        for (guint i = 0; i < n && !loop->quit; i++) {
            if (loop->items_dirty)
                break; /* a callback changed the set; poll again */
            zmq_pollitem_t *item = &g_array_index(loop->items, zmq_pollitem_t, i);
            if (!(item->revents & ZMQ_POLLIN))
                continue;
            Watch w = g_array_index(loop->watches, Watch, i);
            if (w.zsock)
                w.sock_fn(w.zsock, w.data);
            else
                w.fd_fn(w.fd, w.data);
        }
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
