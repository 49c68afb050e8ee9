/* Unit tests of libherd's event loop (core/loop.c), which runs herdd and `herd engine
 * --count N`: watches are served in the order they were added, every message arrives even
 * when a callback takes only part of what is waiting, watches can be removed from inside
 * callbacks, a socket checked again after a send finds the message whose wake-up the send
 * hid, timers fire in order, can be cancelled and cannot starve the sockets, and thousands
 * of sockets work. Sockets are inproc PAIRs; no test sleeps to synchronise. */
#include <glib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zmq.h>

#include <herd/loop.h>

static void *zctx;

typedef struct Pair {
    void *a, *b; /* connected PAIR sockets over inproc; the loop watches b */
} Pair;

static void pair_open(Pair *p, const char *name)
{
    p->a = zmq_socket(zctx, ZMQ_PAIR);
    p->b = zmq_socket(zctx, ZMQ_PAIR);
    g_assert_nonnull(p->a);
    g_assert_nonnull(p->b);
    int zero = 0;
    zmq_setsockopt(p->a, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(p->b, ZMQ_RCVHWM, &zero, sizeof zero);
    g_autofree char *url = g_strdup_printf("inproc://%s", name);
    g_assert_cmpint(zmq_bind(p->b, url), ==, 0);
    g_assert_cmpint(zmq_connect(p->a, url), ==, 0);
}

static void pair_close(Pair *p)
{
    zmq_close(p->a);
    zmq_close(p->b);
}

static void send_x(void *sock)
{
    g_assert_cmpint(zmq_send(sock, "x", 1, 0), ==, 1);
}

/* Iterate until *counter reaches target or the time is up. */
static void run_until(HerdLoop *loop, const guint *counter, guint target, double seconds)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)(seconds * G_USEC_PER_SEC);
    while (*counter < target && g_get_monotonic_time() < deadline)
        g_assert_true(herd_loop_iterate(loop, 50));
}

/* ---- a reader of a watched socket ---- */

typedef struct Reader {
    void *sock;
    guint batch; /* messages taken per callback at most */
    guint received;
    guint calls;
    HerdLoop *loop;
    HerdWatch *watch;
    guint stop_after;   /* removes its own watch after this many messages (0 = never) */
    HerdWatch *victim;  /* removes this other watch in its first call */
    GString *log;       /* appends tag for each message taken */
    char tag;
} Reader;

static gboolean on_readable(void *sock, gpointer data)
{
    Reader *r = data;
    g_assert_true(sock == r->sock);
    r->calls++;
    if (r->victim) {
        herd_loop_remove_watch(r->loop, r->victim);
        r->victim = NULL;
    }
    for (guint i = 0; i < r->batch; i++) {
        char buf[16];
        if (zmq_recv(r->sock, buf, sizeof buf, ZMQ_DONTWAIT) < 0)
            return FALSE; /* EAGAIN: the socket's edge will say when there is more */
        r->received++;
        if (r->log)
            g_string_append_c(r->log, r->tag); /* calls may find nothing: log what they took */
        if (r->stop_after && r->received == r->stop_after) {
            herd_loop_remove_watch(r->loop, r->watch);
            return FALSE;
        }
    }
    return TRUE; /* stopped before EAGAIN: call again */
}

static Reader reader_watch(HerdLoop *loop, void *sock, guint batch)
{
    Reader r = { .sock = sock, .batch = batch, .loop = loop };
    return r;
}

/* The set-up most socket tests share: a pair, a new loop, and a reader watching the
 * pair's b end that takes at most batch messages per call. */
typedef struct Watched {
    Pair p;
    HerdLoop *loop;
    Reader r;
} Watched;

static void watched_open(Watched *w, const char *name, guint batch)
{
    pair_open(&w->p, name);
    w->loop = herd_loop_new();
    w->r = reader_watch(w->loop, w->p.b, batch);
    w->r.watch = herd_loop_add_socket(w->loop, w->p.b, on_readable, &w->r);
}

static void watched_close(Watched *w)
{
    herd_loop_free(w->loop);
    pair_close(&w->p);
}

/* ---- sockets ---- */

static void test_every_message_arrives_in_small_batches(void)
{
    Watched w;
    watched_open(&w, "batches", 7);
    const guint n = 5000;
    for (guint i = 0; i < n; i++)
        send_x(w.p.a);
    run_until(w.loop, &w.r.received, n, 10);
    g_assert_cmpuint(w.r.received, ==, n);
    /* The socket fired once or a few times, yet each callback took only 7. */
    g_assert_cmpuint(w.r.calls, >=, n / 7);
    watched_close(&w);
}

static void test_messages_queued_before_the_watch_are_served(void)
{
    Pair p;
    pair_open(&p, "queued-before");
    for (int i = 0; i < 3; i++)
        send_x(p.a);
    HerdLoop *loop = herd_loop_new();
    Reader r = reader_watch(loop, p.b, 100);
    /* Make sure the wake-up was consumed before the watch exists. */
    int events = 0;
    size_t len = sizeof events;
    zmq_getsockopt(p.b, ZMQ_EVENTS, &events, &len);
    herd_loop_add_socket(loop, p.b, on_readable, &r);
    run_until(loop, &r.received, 3, 5);
    g_assert_cmpuint(r.received, ==, 3);
    herd_loop_free(loop);
    pair_close(&p);
}

/* Watches ready in the same iteration are served in the order they were added, whatever
 * order their input came in; one iteration serves each of them once. */
static void test_ready_watches_are_served_in_the_order_added(void)
{
    enum { N = 4 };
    Pair p[N];
    Reader r[N];
    HerdLoop *loop = herd_loop_new();
    GString *log = g_string_new(NULL);
    for (int i = 0; i < N; i++) {
        g_autofree char *name = g_strdup_printf("order-%d", i);
        pair_open(&p[i], name);
        r[i] = reader_watch(loop, p[i].b, 1);
        r[i].log = log;
        r[i].tag = (char)('a' + i);
        herd_loop_add_socket(loop, p[i].b, on_readable, &r[i]);
    }
    herd_loop_iterate(loop, 0); /* the initial look: nothing yet */
    g_assert_cmpstr(log->str, ==, "");
    for (int i = N; i-- > 0;) {
        send_x(p[i].a);
        send_x(p[i].a);
    }
    /* Each takes one of its two messages per call: two rounds, each in order. */
    guint total = 0;
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (total < 2 * N && g_get_monotonic_time() < deadline) {
        herd_loop_iterate(loop, 50);
        total = 0;
        for (int i = 0; i < N; i++)
            total += r[i].received;
    }
    g_assert_cmpuint(total, ==, 2 * N);
    g_assert_cmpstr(log->str, ==, "abcdabcd");
    g_string_free(log, TRUE);
    herd_loop_free(loop);
    for (int i = 0; i < N; i++)
        pair_close(&p[i]);
}

static void test_remove_own_watch_inside_callback(void)
{
    Watched w;
    watched_open(&w, "remove-own", 100);
    w.r.stop_after = 3;
    for (guint i = 0; i < 10; i++)
        send_x(w.p.a);
    run_until(w.loop, &w.r.received, 3, 5);
    for (int i = 0; i < 5; i++)
        g_assert_true(herd_loop_iterate(w.loop, 10));
    g_assert_cmpuint(w.r.received, ==, 3); /* nothing after the removal */
    herd_loop_touch(w.loop, w.p.b);        /* unwatched: no-op */
    g_assert_true(herd_loop_iterate(w.loop, 10));
    g_assert_cmpuint(w.r.received, ==, 3);
    watched_close(&w);
}

/* The first watch removes the second while both are ready in the same round: the second
 * is not called, and the socket can be watched again at once. */
static void test_remove_other_watch_inside_callback(void)
{
    Pair first, second;
    pair_open(&first, "remove-first");
    pair_open(&second, "remove-second");
    HerdLoop *loop = herd_loop_new();
    Reader r1 = reader_watch(loop, first.b, 100), r2 = reader_watch(loop, second.b, 100);
    herd_loop_add_socket(loop, first.b, on_readable, &r1);
    r1.victim = herd_loop_add_socket(loop, second.b, on_readable, &r2);
    send_x(first.a);
    send_x(second.a);
    run_until(loop, &r1.received, 1, 5);
    for (int i = 0; i < 3; i++)
        g_assert_true(herd_loop_iterate(loop, 10));
    g_assert_cmpuint(r1.received, ==, 1);
    g_assert_cmpuint(r2.calls, ==, 0);
    Reader again = reader_watch(loop, second.b, 100);
    herd_loop_add_socket(loop, second.b, on_readable, &again);
    run_until(loop, &again.received, 1, 5);
    g_assert_cmpuint(again.received, ==, 1);
    herd_loop_free(loop);
    pair_close(&first);
    pair_close(&second);
}

/* A message arrives, then the program sends on the same socket before the loop looks:
 * the send may consume the socket's wake-up, and touching (by socket) or rechecking (by
 * watch) must make the loop find the message without any timer. */
static void check_touch_after_send(gboolean by_watch)
{
    Watched w;
    watched_open(&w, by_watch ? "recheck" : "touch", 100);
    g_assert_true(herd_loop_iterate(w.loop, 0));
    for (guint round = 0; round < 200; round++) {
        send_x(w.p.a);
        g_assert_cmpint(zmq_send(w.p.b, "out", 3, 0), ==, 3); /* the reply path of an engine */
        if (by_watch)
            herd_loop_recheck(w.loop, w.r.watch);
        else
            herd_loop_touch(w.loop, w.p.b);
        run_until(w.loop, &w.r.received, round + 1, 5);
        g_assert_cmpuint(w.r.received, ==, round + 1);
        char buf[8];
        g_assert_cmpint(zmq_recv(w.p.a, buf, sizeof buf, 0), ==, 3);
    }
    g_assert_cmpuint(herd_loop_timer_count(w.loop), ==, 0);
    watched_close(&w);
}

static void test_touch_after_send_finds_waiting_message(void)
{
    check_touch_after_send(FALSE);
}

static void test_recheck_after_send_finds_waiting_message(void)
{
    check_touch_after_send(TRUE);
}

static void count_call(gpointer data)
{
    (*(guint *)data)++;
}

/* Without a touch, a timer firing is the safety net: every socket is looked at again. */
static void test_timer_rechecks_every_socket(void)
{
    Watched w;
    watched_open(&w, "safety-net", 100);
    g_assert_true(herd_loop_iterate(w.loop, 0));
    for (guint round = 0; round < 50; round++) {
        send_x(w.p.a);
        g_assert_cmpint(zmq_send(w.p.b, "out", 3, 0), ==, 3);
        guint fired = 0;
        herd_loop_timer_add(w.loop, 1, count_call, &fired);
        run_until(w.loop, &w.r.received, round + 1, 5);
        g_assert_cmpuint(w.r.received, ==, round + 1);
        char buf[8];
        g_assert_cmpint(zmq_recv(w.p.a, buf, sizeof buf, 0), ==, 3);
        while (herd_loop_timer_count(w.loop) > 0)
            herd_loop_iterate(w.loop, 50);
    }
    watched_close(&w);
}

/* Up to 1000 socket pairs (2000 sockets in the process, 1000 watched; fewer if the
 * open-file limit is low: each socket holds a descriptor): each watched socket gets its
 * messages, one at a time and all at once. */
static void test_thousand_sockets(void)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const guint N = (guint)MIN(1000, (rl.rlim_cur - 64) / 2);
    g_assert_cmpuint(N, >=, 400);
    Pair *p = g_new(Pair, N);
    Reader *r = g_new(Reader, N);
    HerdLoop *loop = herd_loop_new();
    guint total = 0;
    for (guint i = 0; i < N; i++) {
        g_autofree char *name = g_strdup_printf("many-%u", i);
        pair_open(&p[i], name);
        r[i] = reader_watch(loop, p[i].b, 16);
        herd_loop_add_socket(loop, p[i].b, on_readable, &r[i]);
    }
    /* One message at a time, to sockets spread over the set. */
    for (guint k = 0; k < 2000; k++) {
        guint i = (k * 7919) % N;
        guint before = r[i].received;
        send_x(p[i].a);
        run_until(loop, &r[i].received, before + 1, 5);
        g_assert_cmpuint(r[i].received, ==, before + 1);
    }
    /* Then all at once. */
    for (guint i = 0; i < N; i++)
        send_x(p[i].a);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    do {
        herd_loop_iterate(loop, 50);
        total = 0;
        for (guint i = 0; i < N; i++)
            total += r[i].received;
    } while (total < 2000 + N && g_get_monotonic_time() < deadline);
    g_assert_cmpuint(total, ==, 2000 + N);
    herd_loop_free(loop);
    for (guint i = 0; i < N; i++)
        pair_close(&p[i]);
    g_free(p);
    g_free(r);
}

/* ---- plain descriptors ---- */

typedef struct PipeReader {
    HerdLoop *loop;
    HerdWatch *watch;
    int fd;
    GString *got;
    gboolean eof;
} PipeReader;

static void on_pipe(int fd, gpointer data)
{
    PipeReader *pr = data;
    g_assert_cmpint(fd, ==, pr->fd);
    char buf[4]; /* small reads: the watch must fire again while data remains */
    ssize_t n = read(pr->fd, buf, sizeof buf);
    if (n > 0) {
        g_string_append_len(pr->got, buf, n);
    } else {
        herd_loop_remove_watch(pr->loop, pr->watch);
        pr->eof = TRUE;
    }
}

static void test_plain_descriptor(void)
{
    int fds[2];
    g_assert_cmpint(pipe(fds), ==, 0);
    HerdLoop *loop = herd_loop_new();
    PipeReader pr = { .loop = loop, .fd = fds[0], .got = g_string_new(NULL) };
    pr.watch = herd_loop_add_fd(loop, fds[0], on_pipe, &pr);
    g_assert_cmpint(write(fds[1], "hello, loop", 11), ==, 11);
    close(fds[1]);
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (!pr.eof && g_get_monotonic_time() < deadline)
        g_assert_true(herd_loop_iterate(loop, 50));
    g_assert_true(pr.eof);
    g_assert_cmpstr(pr.got->str, ==, "hello, loop");
    close(fds[0]);
    g_string_free(pr.got, TRUE);
    herd_loop_free(loop);
}

static void test_idle_iteration_honours_timeout(void)
{
    HerdLoop *loop = herd_loop_new();
    gint64 start = g_get_monotonic_time();
    g_assert_true(herd_loop_iterate(loop, 30));
    gint64 elapsed = g_get_monotonic_time() - start;
    g_assert_cmpint(elapsed, >=, 25 * 1000);
    g_assert_cmpint(elapsed, <, 2 * G_USEC_PER_SEC);
    herd_loop_free(loop);
}

/* ---- timers ---- */

typedef struct TimerLog {
    GString *order;
    HerdLoop *loop;
    guint to_cancel;
} TimerLog;

typedef struct TimerMark {
    TimerLog *log;
    char tag;
} TimerMark;

static void on_mark(gpointer data)
{
    TimerMark *m = data;
    g_string_append_c(m->log->order, m->tag);
    if (m->log->to_cancel) {
        herd_loop_timer_cancel(m->log->loop, m->log->to_cancel);
        m->log->to_cancel = 0;
    }
}

static void quit_loop(gpointer data)
{
    herd_loop_quit(data, 7);
}

/* Timers fire by deadline, equal deadlines in the order added; cancelled ones never fire,
 * also when another timer's callback cancels them. */
static void test_timers_fire_in_deadline_order_and_cancel(void)
{
    HerdLoop *loop = herd_loop_new();
    TimerLog log = { .order = g_string_new(NULL), .loop = loop };
    TimerMark a = { &log, 'a' }, b = { &log, 'b' }, c = { &log, 'c' }, d = { &log, 'd' }, e = { &log, 'e' };
    herd_loop_timer_add(loop, 20, on_mark, &c);
    herd_loop_timer_add(loop, 5, on_mark, &a);
    herd_loop_timer_add(loop, 5, on_mark, &b);
    guint cancelled = herd_loop_timer_add(loop, 10, on_mark, &d);
    guint cancelled_by_a = herd_loop_timer_add(loop, 20, on_mark, &e);
    log.to_cancel = cancelled_by_a;
    herd_loop_timer_cancel(loop, cancelled);
    herd_loop_timer_cancel(loop, cancelled); /* twice: no-op */
    g_assert_cmpuint(herd_loop_timer_count(loop), ==, 4);
    gint64 start = g_get_monotonic_time();
    herd_loop_timer_add(loop, 40, quit_loop, loop);
    g_assert_cmpint(herd_loop_run(loop), ==, 7);
    g_assert_cmpint(g_get_monotonic_time() - start, >=, 40 * 1000);
    g_assert_cmpstr(log.order->str, ==, "abc");
    g_assert_cmpuint(herd_loop_timer_count(loop), ==, 0);
    g_string_free(log.order, TRUE);
    herd_loop_free(loop);
}

typedef struct Spinner {
    HerdLoop *loop;
    guint fired;
    guint fired_this_iteration;
} Spinner;

static void spin(gpointer data)
{
    Spinner *s = data;
    s->fired++;
    s->fired_this_iteration++;
    herd_loop_timer_add(s->loop, 0, spin, s);
}

/* A timer that re-arms itself with no delay fires once per iteration and leaves the
 * sockets their turn. */
static void test_zero_delay_timer_cannot_starve_sockets(void)
{
    Watched w;
    watched_open(&w, "zero-delay", 1);
    Spinner s = { .loop = w.loop };
    herd_loop_timer_add(w.loop, 0, spin, &s);
    for (int i = 0; i < 20; i++)
        send_x(w.p.a);
    for (int i = 0; i < 100 && w.r.received < 20; i++) {
        s.fired_this_iteration = 0;
        g_assert_true(herd_loop_iterate(w.loop, -1)); /* a due timer: never blocks */
        g_assert_cmpuint(s.fired_this_iteration, <=, 1);
    }
    g_assert_cmpuint(w.r.received, ==, 20);
    g_assert_cmpuint(s.fired, >=, 20);
    g_assert_cmpuint(herd_loop_timer_count(w.loop), ==, 1);
    watched_close(&w);
}

/* herd_loop_quit from a socket callback ends herd_loop_run with its status. */
static gboolean quit_on_input(void *sock, gpointer data)
{
    char buf[4];
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0)
        ;
    herd_loop_quit(data, 3);
    return FALSE;
}

static void test_quit_from_a_callback(void)
{
    Pair p;
    pair_open(&p, "quit");
    HerdLoop *loop = herd_loop_new();
    herd_loop_add_socket(loop, p.b, quit_on_input, loop);
    send_x(p.a);
    g_assert_false(herd_loop_quitting(loop));
    g_assert_cmpint(herd_loop_run(loop), ==, 3);
    g_assert_true(herd_loop_quitting(loop));
    herd_loop_free(loop);
    pair_close(&p);
}

/* The flush hook runs once per iteration, after the sockets served in it, also in the
 * iteration that quits: what a callback gathered is never left behind. */
typedef struct FlushLog {
    Reader *reader;
    GString *order;
} FlushLog;

static void on_flush(gpointer data)
{
    FlushLog *fl = data;
    g_string_append_printf(fl->order, "f%u", fl->reader->received);
}

static void test_flush_hook_runs_after_each_iteration(void)
{
    Watched w;
    watched_open(&w, "flush", 100);
    FlushLog fl = { .reader = &w.r, .order = g_string_new(NULL) };
    herd_loop_set_flush(w.loop, on_flush, &fl);
    herd_loop_iterate(w.loop, 0);
    g_assert_cmpstr(fl.order->str, ==, "f0");
    send_x(w.p.a);
    send_x(w.p.a);
    run_until(w.loop, &w.r.received, 2, 5);
    g_assert_cmpuint(w.r.received, ==, 2);
    /* the hook saw both messages taken before it ran */
    g_assert_true(g_str_has_suffix(fl.order->str, "f2"));
    g_string_truncate(fl.order, 0);
    herd_loop_quit(w.loop, 0);
    herd_loop_iterate(w.loop, 0);
    g_assert_cmpstr(fl.order->str, ==, "f2");
    herd_loop_set_flush(w.loop, NULL, NULL);
    herd_loop_iterate(w.loop, 0);
    g_assert_cmpstr(fl.order->str, ==, "f2");
    g_string_free(fl.order, TRUE);
    watched_close(&w);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    zctx = zmq_ctx_new();
    zmq_ctx_set(zctx, ZMQ_MAX_SOCKETS, 4096);
    g_test_add_func("/loop/batches", test_every_message_arrives_in_small_batches);
    g_test_add_func("/loop/queued-before-watch", test_messages_queued_before_the_watch_are_served);
    g_test_add_func("/loop/order", test_ready_watches_are_served_in_the_order_added);
    g_test_add_func("/loop/remove-own-in-callback", test_remove_own_watch_inside_callback);
    g_test_add_func("/loop/remove-other-in-callback", test_remove_other_watch_inside_callback);
    g_test_add_func("/loop/touch-after-send", test_touch_after_send_finds_waiting_message);
    g_test_add_func("/loop/recheck-after-send", test_recheck_after_send_finds_waiting_message);
    g_test_add_func("/loop/timer-rechecks-sockets", test_timer_rechecks_every_socket);
    g_test_add_func("/loop/thousand-sockets", test_thousand_sockets);
    g_test_add_func("/loop/plain-descriptor", test_plain_descriptor);
    g_test_add_func("/loop/idle-timeout", test_idle_iteration_honours_timeout);
    g_test_add_func("/loop/timers-order-and-cancel", test_timers_fire_in_deadline_order_and_cancel);
    g_test_add_func("/loop/zero-delay-fairness", test_zero_delay_timer_cannot_starve_sockets);
    g_test_add_func("/loop/quit-from-callback", test_quit_from_a_callback);
    g_test_add_func("/loop/flush-hook", test_flush_hook_runs_after_each_iteration);
    int rc = g_test_run();
    zmq_ctx_term(zctx);
    return rc;
}
