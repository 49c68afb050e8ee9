/* herd — a single-threaded event loop over zmq_poll: sockets, plain fds, one-shot timers.
 *
 * The controller, the native engine and the client all run on it. Socket callbacks are
 * level-triggered: a callback should read a bounded batch (ZMQ_DONTWAIT) and return; it is
 * called again while input remains.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct HerdLoop HerdLoop;
typedef void (*HerdSocketFn)(void *zsock, gpointer data);
typedef void (*HerdFdFn)(int fd, gpointer data);
typedef void (*HerdTimerFn)(gpointer data);

HerdLoop *herd_loop_new(void);
void herd_loop_free(HerdLoop *loop);
void herd_loop_add_socket(HerdLoop *loop, void *zsock, HerdSocketFn fn, gpointer data);
void herd_loop_remove_socket(HerdLoop *loop, void *zsock);
void herd_loop_add_fd(HerdLoop *loop, int fd, HerdFdFn fn, gpointer data);
/* One-shot timer; returns an id > 0. */
guint herd_loop_timer_add(HerdLoop *loop, guint ms, HerdTimerFn fn, gpointer data);
/* Same, deadline given in microseconds from now. */
guint herd_loop_timer_add_us(HerdLoop *loop, gint64 us, HerdTimerFn fn, gpointer data);
void herd_loop_timer_cancel(HerdLoop *loop, guint id);
guint herd_loop_timer_count(const HerdLoop *loop);
/* Monotonic microseconds. */
gint64 herd_loop_now(const HerdLoop *loop);
/* Run until herd_loop_quit; returns the status given to quit. */
int herd_loop_run(HerdLoop *loop);
/* Run one iteration, waiting at most timeout_ms (-1 = until something happens). */
void herd_loop_iterate(HerdLoop *loop, int timeout_ms);
void herd_loop_quit(HerdLoop *loop, int status);
gboolean herd_loop_quitting(const HerdLoop *loop);

G_END_DECLS
