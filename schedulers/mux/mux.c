/* herd — the "mux" scheduler: direct execution on the engine the client named.
 *
 * Every request carries its destination (HerdJob.target_uuid, the first frame the client
 * sent). The policy is only bookkeeping: send it there, forward the reply, and answer for
 * the engine when it goes away so that no request stays pending forever.
 */
#include <herd/plugin.h>
#include <herd/scheduler.h>

#include "sched-common.h"

typedef struct MuxEngine {
    char *uuid;
    /* HerdJob* -> submission number (gsize), so that engine_down answers in arrival order. */
    GHashTable *jobs;
} MuxEngine;

typedef struct MuxSched {
    HerdSchedHost *host;
    GPtrArray *engines; /* MuxEngine*, live ones only (for destroy) */
    gsize next_seq;
} MuxSched;

static MuxEngine *mux_engine_new(const char *uuid)
{
    MuxEngine *me = g_new0(MuxEngine, 1);
    me->uuid = g_strdup(uuid);
    me->jobs = g_hash_table_new(g_direct_hash, g_direct_equal);
    return me;
}

static void mux_engine_free(gpointer data)
{
    MuxEngine *me = data;
    g_hash_table_destroy(me->jobs);
    g_free(me->uuid);
    g_free(me);
}

static gpointer mux_create(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err)
{
    static const char *const no_options[] = {NULL};
    if (!sched_opt_check_keys(conf, group, no_options, err))
        return NULL;
    MuxSched *ms = g_new0(MuxSched, 1);
    ms->host = host;
    ms->engines = g_ptr_array_new_with_free_func(mux_engine_free);
    return ms;
}

static void mux_destroy(gpointer self)
{
    MuxSched *ms = self;
    g_ptr_array_unref(ms->engines);
    g_free(ms);
}

/* The state of an engine; created on first use if the core looked it up before engine_up. */
static MuxEngine *mux_engine_of(MuxSched *ms, HerdEngine *e)
{
    if (!e->sched) {
        e->sched = mux_engine_new(e->uuid);
        g_ptr_array_add(ms->engines, e->sched);
    }
    return e->sched;
}

static void mux_engine_up(gpointer self, HerdEngine *e)
{
    mux_engine_of(self, e);
}

typedef struct {
    HerdJob *job;
    gsize seq;
} PendingJob;

static gint pending_job_cmp(gconstpointer a, gconstpointer b)
{
    const PendingJob *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The client already failed these locally on the unregistration notification; answering
 * them lets the core close their records (spec §9) and frees them. */
static void mux_engine_down(gpointer self, HerdEngine *e)
{
    MuxSched *ms = self;
    MuxEngine *me = e->sched;
    if (!me)
        return;
    e->sched = NULL;
    GArray *pending = g_array_new(FALSE, FALSE, sizeof(PendingJob));
    GHashTableIter it;
    gpointer job, seq;
    g_hash_table_iter_init(&it, me->jobs);
    while (g_hash_table_iter_next(&it, &job, &seq)) {
        PendingJob p = {job, GPOINTER_TO_SIZE(seq)};
        g_array_append_val(pending, p);
    }
    g_array_sort(pending, pending_job_cmp);
    g_hash_table_remove_all(me->jobs);
    for (guint i = 0; i < pending->len; i++) {
        HerdJob *j = g_array_index(pending, PendingJob, i).job;
        j->sched = NULL;
        HerdReply *r = ms->host->ops->engine_error(ms->host, j, me->uuid);
        ms->host->ops->deliver(ms->host, j, r);
    }
    g_array_unref(pending);
    g_ptr_array_remove_fast(ms->engines, me); /* frees it */
}

static void mux_request(gpointer self, HerdJob *job)
{
    MuxSched *ms = self;
    HerdEngine *e = job->target_uuid ? ms->host->ops->find_engine(ms->host, job->target_uuid) : NULL;
    if (!e) {
        g_autofree char *why =
            g_strdup_printf("Engine '%s' is not registered", job->target_uuid ? job->target_uuid : "");
        ms->host->ops->fail(ms->host, job, "EngineError", why);
        return;
    }
    MuxEngine *me = mux_engine_of(ms, e);
    g_hash_table_insert(me->jobs, job, GSIZE_TO_POINTER(ms->next_seq++));
    job->sched = me;
    ms->host->ops->dispatch(ms->host, job, e);
}

static void mux_reply(gpointer self, HerdJob *job, HerdReply *reply)
{
    MuxSched *ms = self;
    MuxEngine *me = job->sched;
    if (me) {
        g_hash_table_remove(me->jobs, job);
        job->sched = NULL;
    }
    ms->host->ops->deliver(ms->host, job, reply);
}

static void mux_timer(gpointer self, gpointer data)
{
    (void)self;
    (void)data; /* mux arms no timers */
}

static const HerdSchedulerOps mux_ops = {
    .create = mux_create,
    .destroy = mux_destroy,
    .engine_up = mux_engine_up,
    .engine_down = mux_engine_down,
    .request = mux_request,
    .reply = mux_reply,
    .timer = mux_timer,
    .scheme = NULL,
};

static const HerdPluginDescriptor mux_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_SCHEDULER,
    .name = "mux",
    .description = "direct execution: each request goes to the engine the client named",
    .init = NULL,
    .ops = &mux_ops,
};

HERD_PLUGIN_DEFINE(mux_descriptor)
