/* herd — native client API.
 *
 * A HerdClient is what ipyparallel.Client is, in C: it reads a client connection file,
 * asks the Hub for the engine table, then submits execute/apply requests on the MUX
 * (direct), task (load-balanced) and broadcast channels, and control requests, and
 * receives their replies plus IOPub output and Hub notifications.
 *
 * Everything is single-threaded and non-blocking: herd_client_submit() only queues the
 * message in libzmq (send high-water marks are unlimited), so any number of requests can
 * be in flight; herd_client_recv() waits up to timeout_ms for input (in epoll, on the
 * sockets that may have some). To drive a client from your own zmq_poll loop, get its poll
 * items with herd_client_pollitems() and call herd_client_recv(c, 0) when one is readable.
 *
 * A HerdClient must only be used from one thread at a time. See docs/client-api.md.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include <herd/wire.h>

G_BEGIN_DECLS

#define HERD_CLIENT_ERROR (herd_client_error_quark())
GQuark herd_client_error_quark(void);

typedef enum {
    HERD_CLIENT_ERROR_CONNFILE,   /* connection file missing or unusable */
    HERD_CLIENT_ERROR_TIMEOUT,    /* the Hub or the engines did not answer in time */
    HERD_CLIENT_ERROR_REFUSED,    /* the Hub answered with an error */
    HERD_CLIENT_ERROR_NO_ENGINE,  /* a target id that is not a registered engine */
    HERD_CLIENT_ERROR_INVALID,    /* bad argument (JSON, channel, target count) */
    HERD_CLIENT_ERROR_ZMQ,        /* a libzmq call failed */
} HerdClientErrorCode;

typedef enum {
    HERD_CHANNEL_MUX,       /* direct: exactly one target engine */
    HERD_CHANNEL_TASK,      /* load-balanced by the controller's scheduler */
    HERD_CHANNEL_BROADCAST, /* one request fanned out to every target */
    HERD_CHANNEL_CONTROL,   /* abort/clear/shutdown...: exactly one target engine */
} HerdChannel;

const char *herd_channel_name(HerdChannel ch);

typedef enum {
    HERD_MSG_REPLY,        /* execute_reply / apply_reply / control reply */
    HERD_MSG_IOPUB,        /* status, stream, error, ... for one of our requests */
    HERD_MSG_NOTIFICATION, /* engine (un)registration, controller shutdown */
} HerdMsgKind;

typedef struct HerdClient HerdClient;

/* One received message. Every pointer stays valid until herd_client_msg_free(). The
 * fields below are read from the message when it arrives; the four JSON parts are parsed
 * only if asked for, with the accessors that follow. */
typedef struct HerdClientMsg {
    HerdMsgKind kind;
    HerdChannel channel;       /* where a reply came from (unset for other kinds) */
    const char *msg_type;      /* header.msg_type */
    const char *msg_id;        /* header.msg_id */
    /* The msg_id herd_client_submit() returned for the request this message belongs to:
     * parent_header.msg_id, or metadata.original_msg_id for broadcast replies. NULL for
     * notifications. */
    const char *request_id;
    const char *status;        /* content.status of replies (NULL when absent) */
    const char *engine_uuid;   /* metadata.engine; for notifications content.uuid (NULL when absent) */
    int engine_id;             /* engine id of engine_uuid, -1 when unknown */
    guint n_buffers;
    HerdBytes *buffers;        /* the raw buffer frames after content */
    /* private */
    HerdFrames frames;
    JsonNode *parts[4];        /* header, parent header, metadata, content once parsed */
    guint unparsable;          /* bit i: parts[i] is not valid JSON */
    gboolean completes;        /* the last reply of its request: outstanding until delivered */
} HerdClientMsg;

void herd_client_msg_free(HerdClientMsg *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(HerdClientMsg, herd_client_msg_free)

/* The message's JSON parts, parsed on the first call (later calls are free) and owned by
 * the message. A message is delivered only if each part is a JSON object at the top
 * level; NULL if a value nested inside one turns out not to be valid JSON (no ipyparallel
 * peer sends that). Like the message, not to be used from two threads at once. */
JsonObject *herd_client_msg_header(HerdClientMsg *m);
JsonObject *herd_client_msg_parent_header(HerdClientMsg *m);
JsonObject *herd_client_msg_metadata(HerdClientMsg *m);
JsonObject *herd_client_msg_content(HerdClientMsg *m);

typedef struct HerdClientEngine {
    int id;
    const char *uuid;
} HerdClientEngine;

/* Read a client connection file (ipcontroller[-<cluster>]-client.json), connect every
 * socket and fetch the engine table (connection_request). Waits up to timeout_ms for the
 * Hub's answer (<= 0: 10 s, as Python clients do). */
HerdClient *herd_client_connect(const char *connfile, int timeout_ms, GError **err);
void herd_client_close(HerdClient *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(HerdClient, herd_client_close)

/* This client's session id (header.session of everything it sends). */
const char *herd_client_session_id(const HerdClient *c);

/* The registered engines, ordered by id. The array stays valid until the next
 * herd_client_recv()/herd_client_wait_for_engines() call. */
const HerdClientEngine *herd_client_engines(HerdClient *c, guint *n_engines);
/* uuid of engine `id`, or NULL when no such engine is registered. */
const char *herd_client_engine_uuid(HerdClient *c, int id);
/* Block until at least n engines are registered (processing notifications; other
 * messages received meanwhile are kept for herd_client_recv). */
gboolean herd_client_wait_for_engines(HerdClient *c, guint n, int timeout_ms, GError **err);

/* Submit one request without waiting.
 * - MUX and CONTROL: n_targets must be 1 (the engine id).
 * - TASK: targets restrict where the task may run (n_targets 0 = any engine).
 * - BROADCAST: the engines to run on (n_targets 0 = every registered engine).
 * metadata_json: the request metadata as a JSON object text, sent verbatim; NULL builds
 * the metadata an ipyparallel view sends for that channel and those targets.
 * content_json: NULL = {}. buffers are sent after content, unchanged.
 * On success *msg_id_out (if not NULL) gets the request's msg_id (caller frees); the
 * replies carry it as HerdClientMsg.request_id. A broadcast gets one reply per target
 * (one in all when the metadata asks for coalescing). */
gboolean herd_client_submit(HerdClient *c, HerdChannel channel, const char *msg_type,
                            const int *targets, guint n_targets, const char *metadata_json,
                            const char *content_json, const HerdBytes *buffers,
                            guint n_buffers, char **msg_id_out, GError **err);

/* Convenience: execute_request {"code": code, "silent": silent, ...}. */
gboolean herd_client_execute(HerdClient *c, HerdChannel channel, const int *targets,
                             guint n_targets, const char *code, gboolean silent,
                             char **msg_id_out, GError **err);

/* Wait up to timeout_ms (0 = just check, < 0 = forever) for the next reply, IOPub message
 * for one of this client's requests, or notification. Returns NULL on timeout, or on
 * error with *err set. Messages that fail signature verification are dropped and counted
 * (herd_client_rejected()); every other reply is delivered, even one whose request is
 * unknown or already complete (counted by herd_client_unexpected()). */
HerdClientMsg *herd_client_recv(HerdClient *c, int timeout_ms, GError **err);

/* Number of submitted requests (*_request messages) whose replies have not all been
 * returned by herd_client_recv() yet (a reply received but still queued inside the client
 * keeps its request outstanding, so `while (outstanding > 0) recv` sees every reply).
 * A MUX request whose engine unregisters is answered locally with an EngineError reply
 * (delivered right after the unregistration notification), as ipyparallel does; so is
 * each engine of a broadcast request that unregisters before answering (a coalescing
 * broadcast is failed as a whole). */
guint herd_client_outstanding(const HerdClient *c);
/* Replies delivered for a request that was unknown or already complete. */
guint64 herd_client_unexpected(const HerdClient *c);
/* Messages dropped because their signature was missing, wrong or replayed, or they were
 * malformed. */
guint64 herd_client_rejected(const HerdClient *c);

/* Fill items (at most max_items, 8 is always enough) with ZMQ_POLLIN entries for every
 * socket of the client; returns how many were written. Once it has been called,
 * herd_client_recv() looks at every socket each time it has nothing queued (a foreign
 * zmq_poll takes the wake-ups its own wait relies on), which costs a few system calls. */
guint herd_client_pollitems(HerdClient *c, zmq_pollitem_t *items, guint max_items);

G_END_DECLS
