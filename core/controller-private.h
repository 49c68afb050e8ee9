/* herd — controller internals shared by router.c (sockets, relays, scheduler host) and
 * hub.c (registry, heartbeat, queries, records). Not installed. */
#pragma once

#include "herd/config.h"
#include "herd/connfile.h"
#include "herd/controller.h"
#include "herd/loop.h"
#include "herd/plugin.h"
#include "herd/scheduler.h"
#include "herd/transport.h"
#include "herd/wire.h"

#define G_LOG_DOMAIN_HERD "herd"

struct HerdMsgFields;

typedef struct HerdController HerdController;
typedef struct Channel Channel;

/* One engine, pending (registration replied, no heartbeat yet) or registered. */
typedef struct Engine {
    HerdEngine pub;      /* id, uuid, sched: handed to every scheduler */
    char *uuid;
    gboolean registered;
    guint stall_timer;   /* pending registration timeout */
    /* queue_status bookkeeping: msg_id -> sequence number (for ordered verbose output) */
    GHashTable *queue;   /* MUX requests not yet answered */
    GHashTable *tasks;   /* load-balanced tasks assigned, not yet answered */
    guint64 n_completed;
    GQueue *completed_ids; /* most recent completed msg_ids (bounded) */
    /* The HerdEngine each channel's scheduler sees (its `sched` field is per channel). */
    HerdEngine chan_view[4];
} Engine;

/* A request the core holds while its scheduler decides (HerdJob.core points here). */
typedef struct Job {
    HerdJob pub;
    Channel *ch;
    HerdFrames req;        /* as received: [C, (E,) DELIM, sig, header, parent, md, content, bufs] */
    char *texts;           /* owns the strings below (one allocation) */
    char *msg_id;
    char *msg_type;
    char *target_uuid;     /* MUX: the routing frame naming the engine */
    char *session;         /* request header.session */
    char *date;            /* request header.date */
    JsonNode *metadata;    /* parsed request metadata */
    Engine *engine;        /* where it currently runs (plain jobs), or NULL */
    gboolean unassigned;   /* task: in ctl->unassigned (the hub's sets key on msg_id above) */
    guint64 seq;
    /* broadcast */
    GPtrArray *subs;       /* Sub*: one per dispatched engine, in dispatch order */
    struct SubTemplate *sub_template; /* made at the first dispatch, shared by every Sub */
    guint n_delivered;
    gboolean coalescing;
} Job;

/* A broadcast sub-request: "<orig>_<uuid>" on one engine. */
typedef struct Sub {
    Job *job;
    char *sub_id;
    char *uuid;
    int engine_id;
    char *header;        /* the rewritten header (for synthesized replies) */
    HerdFrames reply;    /* coalescing: the reply kept until all arrive */
    gboolean failed;     /* coalescing: that reply's status is not "ok" */
    gboolean engine_lost; /* answered for a dead engine: the client failed it itself */
    gboolean done;
} Sub;

/* A reply the core holds (HerdReply.core points here). frames: [E, C, DELIM, ...] */
typedef struct Reply {
    HerdReply pub;
    HerdFrames frames;
    struct Sub *sub;     /* broadcast: the sub-request answered */
    char *texts;         /* owns status, engine_uuid, date and started (one allocation) */
    char *status;
    char *engine_uuid;
    char *date;          /* reply header.date (NULL for replies the core made) */
    char *started;       /* reply metadata.started */
    gboolean decoded;    /* date/started/engine taken from the frames: records need no parse */
    gboolean kept;       /* the scheduler called reply_keep */
    gboolean consumed;   /* delivered */
    gboolean offering;   /* inside the scheduler's reply callback */
    struct Job *deliver_to; /* delivered during that callback: sent once it returns */
} Reply;

enum { CH_MUX = 0, CH_TASK, CH_BROADCAST, CH_CONTROL, CH_COUNT };

struct Channel {
    HerdSchedHost host;  /* first: the host pointer is the channel */
    int kind;            /* CH_* */
    const char *name;
    HerdController *ctl;
    void *client_sock;
    void *engine_sock;
    HerdPlugin *plugin;
    const HerdSchedulerOps *ops;
    gpointer sched;
    GHashTable *jobs;    /* msg_id (and broadcast sub ids) -> Job (sub ids -> Sub) */
    GHashTable *subs;    /* broadcast: sub id -> Sub */
    gboolean ignores_metadata; /* the scheduler declared HERD_SCHED_IGNORES_METADATA */
    guint64 n_unassigned;
};

typedef struct Side {
    HerdPlugin *plugin;
    const HerdTransportOps *ops;
    gpointer inst;
    const char *name;    /* "client" / "engine" */
} Side;

struct HerdController {
    HerdConfig *cfg;
    HerdLoop *loop;
    void *zctx;
    HerdSession *session;
    char **plugin_path;
    Side client_side, engine_side;
    guint port_pool_next;
    HerdConnInfo client_info, engine_info;
    char *client_file, *engine_file;
    gboolean files_written;
    gboolean files_reused;  /* --reuse found valid files: not rewritten */
    /* sockets */
    void *registration;
    void *notification;
    void *iopub_in, *iopub_out;
    void *hb_ping, *hb_pong;
    Channel ch[CH_COUNT];
    GArray *client_outbox;       /* OutMsg (router.c): client-bound, sent at the end of the iteration */
    GArray *engine_outbox;       /* EngineOut (router.c): requests for engines, sent just before */
    GString *engine_outbox_text; /* their msg_ids and engine uuids */
    /* hub */
    GHashTable *engines_by_uuid; /* uuid -> Engine (pending and registered) */
    GHashTable *engines_by_id;   /* id -> Engine (registered) */
    int next_engine_id;
    GHashTable *hearts;          /* uuid -> misses (tracked hearts) */
    GHashTable *responded;       /* uuids that echoed since the last beat */
    char ping_token[40], prev_token[40];
    guint64 beat;
    guint64 job_seq;
    gint64 started_us;
    char *engine_state_file;
    gboolean engine_state_stale; /* membership changed since the file was written */
    GHashTable *sched_timers;    /* timer id -> SchedTimer (router.c) */
    GHashTable *unassigned;      /* task msg_id -> seq: received, not on an engine */
    gpointer records;            /* task-record store (records.c), NULL with db=none */
    int signal_fd;
    gboolean shutting_down;
    /* counters for logs */
    guint64 n_dropped;
};

/* router.c */
gboolean herd_router_bind_all(HerdController *ctl, GError **err);
gboolean herd_router_load_schedulers(HerdController *ctl, GError **err);
void herd_router_close(HerdController *ctl);
void herd_router_engine_up(HerdController *ctl, Engine *e);
void herd_router_engine_down(HerdController *ctl, Engine *e);
gboolean herd_router_is_pending(HerdController *ctl, const char *msg_id);
/* Submit a request built by the hub (resubmit) to the task channel, replies discarded. */
void herd_router_submit_internal(HerdController *ctl, HerdFrames *msg_from_delim);

/* hub.c */
void herd_hub_init(HerdController *ctl);
void herd_hub_start(HerdController *ctl);
void herd_hub_free(HerdController *ctl);
/* Write what is pending (the engine state file) before exit. */
void herd_hub_flush(HerdController *ctl);
gboolean herd_hub_on_registration(void *sock, gpointer data);
gboolean herd_hub_on_pong(void *sock, gpointer data);
void herd_hub_iopub(HerdController *ctl, const HerdFrames *msg);
Engine *herd_hub_engine(HerdController *ctl, const char *uuid); /* registered only */
/* bookkeeping hooks from the router */
void herd_hub_job_received(HerdController *ctl, Job *job);
void herd_hub_job_dispatched(HerdController *ctl, Job *job, Engine *e);
void herd_hub_job_undispatched(HerdController *ctl, Job *job);
void herd_hub_job_forget(HerdController *ctl, Job *job);
/* fields: what the router already decoded from the reply, or NULL (records parse it). */
void herd_hub_job_finished(HerdController *ctl, Job *job, const HerdFrames *reply, Engine *e,
                           const char *status, const struct HerdMsgFields *fields);
void herd_hub_drop(HerdController *ctl, const char *where, const char *why);
