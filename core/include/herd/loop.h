/* herd — a single-threaded event loop: ZeroMQ sockets, plain fds, one-shot timers.
 * herdd and `herd engine` (thousands of sockets in one process) both run on it.
 *
 * It waits in epoll on the sockets' ZMQ_FD and calls back only sockets that may have
 * input, so an iteration costs O(active sockets), not O(all sockets) as zmq_poll does.
 * The price is ZeroMQ's edge rule: a socket's FD may not signal input that arrived
 * before an operation on that socket. Hence:
 *  - a socket callback may find nothing to read (it is called when its FD signals, before
 *    ZMQ_EVENTS confirms input); it reads a bounded batch with ZMQ_DONTWAIT and returns TRUE if it
 *    stopped before EAGAIN (it is called again), FALSE once recv said EAGAIN — and then
 *    it must not send on its own socket after that EAGAIN;
 *  - code that sends on a watched socket outside that socket's own callback calls
 *    herd_loop_touch() (or herd_loop_recheck() with the watch) so the socket is checked
 *    again before the loop sleeps. Touching the socket whose callback is running is
 *    allowed and costs nothing (the rule above covers it).
 * As a safety net every watched socket is re-checked whenever a timer fires.
 *
 * In one iteration every watch that may have input is served once, in the order the
 * watches were added; then the due timers fire. Watches may be added and removed from
 * inside any callback. The loop is not reentrant: never iterate it from a callback.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct HerdLoop HerdLoop;
/* One watched socket or fd; valid until removed (and, inside a callback, until the end of
 * the current iteration). */
typedef struct HerdWatch HerdWatch;
typedef gboolean (*HerdSocketFn)(void *zsock, gpointer data);
typedef void (*HerdFdFn)(int fd, gpointer data);
typedef void (*HerdTimerFn)(gpointer data);
typedef void (*HerdFlushFn)(gpointer data);

HerdLoop *herd_loop_new(void);
/* Frees the loop and its watches; closes neither the sockets nor the fds. */
void herd_loop_free(HerdLoop *loop);
/* Watch a socket (one watch per socket); its callback is called once an input may be
 * waiting, messages already queued included. */
HerdWatch *herd_loop_add_socket(HerdLoop *loop, void *zsock, HerdSocketFn fn, gpointer data);
void herd_loop_remove_socket(HerdLoop *loop, void *zsock);
/* zsock was used (e.g. sent on): check it for input before sleeping. Unwatched: no-op. */
void herd_loop_touch(HerdLoop *loop, void *zsock);
/* Watch a plain fd (level-triggered: fn is called while it is readable). Remove the watch
 * before closing the fd. */
HerdWatch *herd_loop_add_fd(HerdLoop *loop, int fd, HerdFdFn fn, gpointer data);
/* Stop watching a socket or fd; safe inside any callback, NULL is a no-op. */
void herd_loop_remove_watch(HerdLoop *loop, HerdWatch *watch);
/* herd_loop_touch() for a watch at hand (no lookup); NULL or a plain fd: no-op. */
void herd_loop_recheck(HerdLoop *loop, HerdWatch *watch);
/* fn runs at the end of every iteration, after the sockets and timers were served and
 * before the loop waits again: for work gathered over an iteration and done at once
 * (herdd sends its requests for engines and its replies to clients then, so that
 * libzmq carries them in batches).
 * One hook per loop; NULL removes it. */
void herd_loop_set_flush(HerdLoop *loop, HerdFlushFn fn, gpointer data);
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
/* Run one iteration, waiting at most timeout_ms (-1 = until something happens). Returns
 * FALSE when waiting failed for another reason than an interrupting signal (errno set). */
gboolean herd_loop_iterate(HerdLoop *loop, int timeout_ms);
void herd_loop_quit(HerdLoop *loop, int status);
gboolean herd_loop_quitting(const HerdLoop *loop);

G_END_DECLS
