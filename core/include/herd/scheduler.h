/* herd — scheduler plugins.
 *
 * The core owns every socket, the codec and the task records. A scheduler owns one
 * decision: which engine gets each request of its channel, and when. The core hands it
 * typed events (engine up/down, request in, reply back, timer) and it answers by calling
 * the host operations (dispatch, deliver, fail, timers). A scheduler never touches a socket.
 *
 * Lifetimes: a HerdJob lives from the `request` event until the scheduler finishes it with
 * host->deliver or host->fail (exactly once). A HerdReply lives for the duration of the
 * `reply` callback only, unless the scheduler passes it to host->deliver (which consumes it)
 * or keeps it with host->reply_keep (and later deliver or reply_free). HerdEngine pointers
 * are valid from engine_up until engine_down returns.
 */
#pragma once

#include <glib.h>
#include <herd/plugin.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

typedef struct HerdEngine {
    int id;           /* engine id (0, 1, ...) */
    const char *uuid; /* engine uuid = its routing id */
    gpointer sched;   /* free for the scheduler's per-engine state */
} HerdEngine;

typedef struct HerdJob {
    const char *msg_id;      /* request header.msg_id */
    const char *msg_type;    /* request header.msg_type */
    const char *target_uuid; /* engine named by the client (mux/control), else NULL */
    JsonObject *metadata;    /* parsed request metadata, read-only (may be shared); never NULL */
    gint64 received_us;      /* monotonic time the core received it */
    gpointer sched;          /* free for the scheduler's per-job state */
    gpointer core;           /* private to the core */
} HerdJob;

typedef struct HerdReply {
    const char *status;        /* content/metadata status: "ok", "error", "aborted", ... */
    gboolean dependencies_met; /* metadata.dependencies_met (TRUE when absent) */
    HerdEngine *engine;        /* the engine that answered (NULL if it is gone) */
    gboolean synthesized;      /* made by host->engine_error, not by an engine */
    gpointer core;             /* private to the core */
} HerdReply;

typedef struct HerdSchedHost HerdSchedHost;

/* What a scheduler may ask of the core. `host` is the first argument of every call. */
typedef struct HerdSchedHostOps {
    /* Send the request to engine e. For broadcast jobs, call once per target: the core
     * derives the per-engine message (msg_id "<orig>_<uuid>", re-signed). */
    void (*dispatch)(HerdSchedHost *host, HerdJob *job, HerdEngine *e);
    /* Forward a final reply to the client. For a plain job this finishes it. For a
     * broadcast job, call once per engine reply; the job finishes when every dispatched
     * engine has been delivered (coalescing jobs are merged into one reply then). */
    void (*deliver)(HerdSchedHost *host, HerdJob *job, HerdReply *reply);
    /* Answer the client with a controller-made error (ename e.g. "ImpossibleDependency",
     * evalue may be ""); finishes the job. */
    void (*fail)(HerdSchedHost *host, HerdJob *job, const char *ename, const char *evalue);
    /* Make the EngineError reply ipyparallel produces for a job stranded on dead engine e
     * ("Engine b'<uuid>' died while running task '<msg_id>'"), to be handled like an
     * engine reply (retry, or deliver). The caller owns it: deliver or reply_free. */
    HerdReply *(*engine_error)(HerdSchedHost *host, HerdJob *job, const char *engine_uuid);
    /* Keep a reply beyond the reply callback; release with reply_free unless delivered. */
    HerdReply *(*reply_keep)(HerdSchedHost *host, HerdReply *reply);
    void (*reply_free)(HerdSchedHost *host, HerdReply *reply);
    /* Look up a registered engine by uuid (NULL if none). */
    HerdEngine *(*find_engine)(HerdSchedHost *host, const char *uuid);
    /* One-shot timer: after ms milliseconds the scheduler's `timer` op gets data. Returns
     * an id > 0 for timer_cancel. */
    guint (*timer_add)(HerdSchedHost *host, guint ms, gpointer data);
    void (*timer_cancel)(HerdSchedHost *host, guint timer_id);
    /* Monotonic clock in microseconds (scripted in tests). */
    gint64 (*now_us)(HerdSchedHost *host);
} HerdSchedHostOps;

struct HerdSchedHost {
    const HerdSchedHostOps *ops;
    const char *channel; /* "mux", "task", "broadcast" */
};

/* The scheduler never reads job->metadata: the core may pass an empty object and skip
 * parsing the request's metadata (plain load balancing). */
#define HERD_SCHED_IGNORES_METADATA (1u << 0)

typedef struct HerdSchedulerOps {
    /* Create an instance for one channel. Options come from group [scheduler.<channel>] of
     * conf (except the key "plugin"); an unknown key or bad value is an error naming it. */
    gpointer (*create)(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err);
    void (*destroy)(gpointer self);
    void (*engine_up)(gpointer self, HerdEngine *e);
    /* After this returns the engine pointer is invalid. Jobs still on it must be finished
     * (now or later, through engine_error) by the scheduler. */
    void (*engine_down)(gpointer self, HerdEngine *e);
    void (*request)(gpointer self, HerdJob *job);
    void (*reply)(gpointer self, HerdJob *job, HerdReply *reply);
    void (*timer)(gpointer self, gpointer data);
    /* Optional: the task scheme written to the client file ("leastload", ...); NULL = "leastload". */
    const char *(*scheme)(gpointer self);
    /* HERD_SCHED_* flags (ABI 1.1). */
    guint flags;
} HerdSchedulerOps;

G_END_DECLS
