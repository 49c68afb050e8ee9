/* herd — a readiness loop for thousands of ZeroMQ sockets (used by `herd engine`).
 *
 * zmq_poll() costs time for every item on every call, which is fine for ten sockets and
 * not for the four thousand of a thousand engines in one process. This loop keeps each
 * socket's ZMQ_FD in one epoll set instead and only looks at sockets whose descriptor
 * fired, or that a callback asked it to look at again.
 *
 * ZMQ_FD only signals that something changed inside libzmq, and any libzmq call on the
 * socket (a send too) may consume that signal. So: a watched socket is "ready" while its
 * ZMQ_EVENTS has ZMQ_POLLIN; the loop re-checks a socket after its callback ran, and code
 * that sends on a watched socket from anywhere else must call evloop_recheck() on it.
 */
#pragma once

#include <glib.h>

typedef struct EvLoop EvLoop;
typedef struct EvWatch EvWatch;

/* Called when the socket has a message to receive (or the fd is readable). A socket
 * callback should receive a bounded batch; the loop calls it again while messages remain. */
typedef void (*EvCallback)(gpointer data);

EvLoop *evloop_new(void);
void evloop_free(EvLoop *loop);

EvWatch *evloop_watch_socket(EvLoop *loop, void *zmq_socket, EvCallback fn, gpointer data);
EvWatch *evloop_watch_fd(EvLoop *loop, int fd, EvCallback fn, gpointer data);
/* Stop watching (safe inside any callback). Unwatch a descriptor before closing it. */
void evloop_unwatch(EvLoop *loop, EvWatch *w);
/* Look at a watched socket again (after sending on it outside its own callback). */
void evloop_recheck(EvLoop *loop, EvWatch *w);

/* Wait up to timeout_ms (-1: forever) for readiness, then run the callbacks of what is
 * ready. Returns FALSE on a loop error other than an interrupting signal. */
gboolean evloop_iterate(EvLoop *loop, long timeout_ms);
