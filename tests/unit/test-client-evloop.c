/* Unit tests of the readiness loop behind `herd engine --count N` (tools/evloop.c): every
 * message is delivered even when a callback takes only part of what is waiting, watches
 * can be dropped from inside callbacks, plain descriptors work, and a socket looked at
 * again after a send does not lose the message that arrived meanwhile. */
#include <glib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "evloop.h"

typedef struct Pair {
    void *zctx;
    void *a, *b; /* connected PAIR sockets over inproc */
} Pair;

static void pair_open(Pair *p, const char *name)
{
    p->zctx = zmq_ctx_new();
    p->a = zmq_socket(p->zctx, ZMQ_PAIR);
    p->b = zmq_socket(p->zctx, ZMQ_PAIR);
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
    zmq_ctx_term(p->zctx);
}

typedef struct Reader {
    void *sock;
    guint batch;     /* messages taken per callback at most */
    guint received;
    guint calls;
    EvLoop *loop;
    EvWatch *watch;
    guint stop_after; /* unwatch itself after this many messages (0 = never) */
} Reader;

static void on_readable(gpointer data)
{
    Reader *r = data;
    r->calls++;
    for (guint i = 0; i < r->batch; i++) {
        char buf[16];
        if (zmq_recv(r->sock, buf, sizeof buf, ZMQ_DONTWAIT) < 0)
            return;
        r->received++;
        if (r->stop_after && r->received == r->stop_after) {
            evloop_unwatch(r->loop, r->watch);
            return;
        }
    }
}

static void run_until(EvLoop *loop, const guint *counter, guint target, double seconds)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)(seconds * G_USEC_PER_SEC);
    while (*counter < target && g_get_monotonic_time() < deadline)
        g_assert_true(evloop_iterate(loop, 50));
}

static void test_every_message_arrives_in_small_batches(void)
{
    Pair p;
    pair_open(&p, "batches");
    EvLoop *loop = evloop_new();
    Reader r = { .sock = p.b, .batch = 7, .loop = loop };
    r.watch = evloop_watch_socket(loop, p.b, on_readable, &r);
    const guint n = 5000;
    for (guint i = 0; i < n; i++)
        g_assert_cmpint(zmq_send(p.a, "x", 1, 0), ==, 1);
    run_until(loop, &r.received, n, 10);
    g_assert_cmpuint(r.received, ==, n);
    /* The socket fired once or a few times, yet each callback took only 7. */
    g_assert_cmpuint(r.calls, >=, n / 7);
    evloop_unwatch(loop, r.watch);
    evloop_free(loop);
    pair_close(&p);
}

static void test_unwatch_inside_callback(void)
{
    Pair p;
    pair_open(&p, "unwatch");
    EvLoop *loop = evloop_new();
    Reader r = { .sock = p.b, .batch = 100, .loop = loop, .stop_after = 3 };
    r.watch = evloop_watch_socket(loop, p.b, on_readable, &r);
    for (guint i = 0; i < 10; i++)
        zmq_send(p.a, "x", 1, 0);
    run_until(loop, &r.received, 3, 5);
    for (int i = 0; i < 5; i++)
        g_assert_true(evloop_iterate(loop, 10));
    g_assert_cmpuint(r.received, ==, 3); /* nothing after the unwatch */
    evloop_free(loop);
    pair_close(&p);
}

/* A message arrives, then the program sends on the same socket before the loop looks:
 * the send may consume the socket's wake-up, and the recheck must find the message. */
static void test_recheck_after_send_finds_waiting_message(void)
{
    Pair p;
    pair_open(&p, "recheck");
    EvLoop *loop = evloop_new();
    Reader r = { .sock = p.b, .batch = 100, .loop = loop };
    r.watch = evloop_watch_socket(loop, p.b, on_readable, &r);
    for (guint round = 0; round < 200; round++) {
        zmq_send(p.a, "in", 2, 0);
        zmq_send(p.b, "out", 3, 0); /* the reply path of an engine */
        evloop_recheck(loop, r.watch);
        run_until(loop, &r.received, round + 1, 5);
        g_assert_cmpuint(r.received, ==, round + 1);
        char buf[8];
        g_assert_cmpint(zmq_recv(p.a, buf, sizeof buf, 0), ==, 3);
    }
    evloop_unwatch(loop, r.watch);
    evloop_free(loop);
    pair_close(&p);
}

typedef struct PipeReader {
    EvLoop *loop;
    EvWatch *watch;
    int fd;
    GString *got;
    gboolean eof;
} PipeReader;

static void on_pipe(gpointer data)
{
    PipeReader *pr = data;
    char buf[4];
    ssize_t n = read(pr->fd, buf, sizeof buf);
    if (n > 0) {
        g_string_append_len(pr->got, buf, n);
    } else {
        evloop_unwatch(pr->loop, pr->watch);
        pr->eof = TRUE;
    }
}

static void test_plain_descriptor(void)
{
    int fds[2];
    g_assert_cmpint(pipe(fds), ==, 0);
    EvLoop *loop = evloop_new();
    PipeReader pr = { .loop = loop, .fd = fds[0], .got = g_string_new(NULL) };
    pr.watch = evloop_watch_fd(loop, fds[0], on_pipe, &pr);
    g_assert_cmpint(write(fds[1], "hello, loop", 11), ==, 11);
    close(fds[1]);
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (!pr.eof && g_get_monotonic_time() < deadline)
        g_assert_true(evloop_iterate(loop, 50));
    g_assert_true(pr.eof);
    g_assert_cmpstr(pr.got->str, ==, "hello, loop");
    close(fds[0]);
    g_string_free(pr.got, TRUE);
    evloop_free(loop);
}

static void test_idle_iteration_honours_timeout(void)
{
    EvLoop *loop = evloop_new();
    gint64 start = g_get_monotonic_time();
    g_assert_true(evloop_iterate(loop, 30));
    gint64 elapsed = g_get_monotonic_time() - start;
    g_assert_cmpint(elapsed, >=, 25 * 1000);
    g_assert_cmpint(elapsed, <, 2 * G_USEC_PER_SEC);
    evloop_free(loop);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/evloop/batches", test_every_message_arrives_in_small_batches);
    g_test_add_func("/evloop/unwatch-in-callback", test_unwatch_inside_callback);
    g_test_add_func("/evloop/recheck-after-send", test_recheck_after_send_finds_waiting_message);
    g_test_add_func("/evloop/plain-descriptor", test_plain_descriptor);
    g_test_add_func("/evloop/idle-timeout", test_idle_iteration_honours_timeout);
    return g_test_run();
}
