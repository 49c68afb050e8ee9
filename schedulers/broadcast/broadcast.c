/* herd — the "broadcast" scheduler: one client request fanned out to many engines.
 *
 * metadata.targets lists [uuid, id] pairs. The request is dispatched once per distinct
 * target (the core derives and re-signs each engine's copy, msg_id "<orig>_<uuid>") and
 * every engine's reply is delivered as it comes (the core merges them for coalescing
 * requests). An engine that goes down is answered for at once with an EngineError, so a
 * coalescing request waiting on it still completes.
 */
#include <herd/plugin.h>
#include <herd/scheduler.h>

#include "sched-common.h"

typedef struct BcEngine {
    char *uuid;
    GHashTable *jobs; /* BcJob* still waiting for this engine's reply */
} BcEngine;

typedef struct BcJob {
    HerdJob *job;
    gsize seq;
    GHashTable *waiting; /* BcEngine* that have not answered yet */
    /* While the request is being sent, replies (the core answers a failed send at once)
     * are kept and delivered after the last dispatch, so the job cannot finish early. */
    gboolean dispatching;
    GPtrArray *deferred;
} BcJob;

typedef struct BcSched {
    HerdSchedHost *host;
    GHashTable *engines; /* BcEngine*, live */
    GHashTable *jobs;    /* BcJob*, unfinished */
    gsize next_seq;
} BcSched;

static void bc_engine_free(gpointer data)
{
    BcEngine *be = data;
    g_hash_table_destroy(be->jobs);
    g_free(be->uuid);
    g_free(be);
}

static void bc_job_free(gpointer data)
{
    BcJob *bj = data;
    g_hash_table_destroy(bj->waiting);
    if (bj->deferred)
        g_ptr_array_unref(bj->deferred);
    g_free(bj);
}

static gpointer bc_create(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err)
{
    static const char *const no_options[] = {NULL};
    if (!sched_opt_check_keys(conf, group, no_options, err))
        return NULL;
    BcSched *bs = g_new0(BcSched, 1);
    bs->host = host;
    bs->engines = g_hash_table_new_full(g_direct_hash, g_direct_equal, bc_engine_free, NULL);
    bs->jobs = g_hash_table_new_full(g_direct_hash, g_direct_equal, bc_job_free, NULL);
    return bs;
}

static void bc_destroy(gpointer self)
{
    BcSched *bs = self;
    /* Kept replies would leak with the jobs: hand them back. */
    GHashTableIter it;
    gpointer bj;
    g_hash_table_iter_init(&it, bs->jobs);
    while (g_hash_table_iter_next(&it, &bj, NULL))
        for (guint i = 0; ((BcJob *)bj)->deferred && i < ((BcJob *)bj)->deferred->len; i++)
            bs->host->ops->reply_free(bs->host, ((BcJob *)bj)->deferred->pdata[i]);
    g_hash_table_destroy(bs->jobs);
    g_hash_table_destroy(bs->engines);
    g_free(bs);
}

static BcEngine *bc_engine_of(BcSched *bs, HerdEngine *e)
{
    if (!e->sched) {
        BcEngine *be = g_new0(BcEngine, 1);
        be->uuid = g_strdup(e->uuid);
        be->jobs = g_hash_table_new(g_direct_hash, g_direct_equal);
        g_hash_table_add(bs->engines, be);
        e->sched = be;
    }
    return e->sched;
}

static void bc_engine_up(gpointer self, HerdEngine *e)
{
    bc_engine_of(self, e);
}

/* Hand one engine's answer to the core. The job's state goes first when it is the last
 * answer, because the core finishes the job inside deliver. */
static void deliver_answer(BcSched *bs, BcJob *bj, HerdReply *reply)
{
    if (bj->dispatching) {
        g_ptr_array_add(bj->deferred, bs->host->ops->reply_keep(bs->host, reply));
        return;
    }
    HerdJob *job = bj->job;
    if (g_hash_table_size(bj->waiting) == 0)
        g_hash_table_remove(bs->jobs, bj); /* frees it */
    bs->host->ops->deliver(bs->host, job, reply);
}

/* The uuids of metadata.targets ([[uuid, id], ...]; bare uuids are accepted too), or NULL
 * with *bad naming the offending entry. */
static GPtrArray *parse_targets(JsonObject *md, char **bad)
{
    JsonNode *n = json_object_get_member(md, "targets");
    if (!n || !JSON_NODE_HOLDS_ARRAY(n)) {
        *bad = g_strdup("broadcast request without targets");
        return NULL;
    }
    JsonArray *a = json_node_get_array(n);
    GPtrArray *uuids = g_ptr_array_new();
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonNode *t = json_array_get_element(a, i);
        if (JSON_NODE_HOLDS_ARRAY(t) && json_array_get_length(json_node_get_array(t)) > 0)
            t = json_array_get_element(json_node_get_array(t), 0);
        if (!JSON_NODE_HOLDS_VALUE(t) || json_node_get_value_type(t) != G_TYPE_STRING) {
            *bad = g_strdup_printf("broadcast target %u is not [uuid, id]", i);
            g_ptr_array_unref(uuids);
            return NULL;
        }
        g_ptr_array_add(uuids, (gpointer)json_node_get_string(t));
    }
    if (uuids->len == 0) {
        *bad = g_strdup("broadcast request without targets");
        g_ptr_array_unref(uuids);
        return NULL;
    }
    return uuids;
}

/* The registered engines named by the targets, each once, in target order; NULL (and
 * *bad set) if one is not registered. */
static GPtrArray *resolve_targets(BcSched *bs, GPtrArray *uuids, char **bad)
{
    GPtrArray *engines = g_ptr_array_new();
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
    for (guint i = 0; i < uuids->len; i++) {
        HerdEngine *e = bs->host->ops->find_engine(bs->host, uuids->pdata[i]);
        if (!e) {
            *bad = g_strdup_printf("Engine '%s' is not registered", (char *)uuids->pdata[i]);
            g_ptr_array_unref(engines);
            return NULL;
        }
        if (g_hash_table_add(seen, e))
            g_ptr_array_add(engines, e);
    }
    return engines;
}

static void bc_request(gpointer self, HerdJob *job)
{
    BcSched *bs = self;
    g_autofree char *bad = NULL;
    g_autoptr(GPtrArray) uuids = parse_targets(job->metadata, &bad);
    g_autoptr(GPtrArray) engines = uuids ? resolve_targets(bs, uuids, &bad) : NULL;
    if (!engines) {
        bs->host->ops->fail(bs->host, job, "EngineError", bad);
        return;
    }
    BcJob *bj = g_new0(BcJob, 1);
    bj->job = job;
    bj->seq = bs->next_seq++;
    bj->waiting = g_hash_table_new(g_direct_hash, g_direct_equal);
    bj->deferred = g_ptr_array_new();
    job->sched = bj;
    g_hash_table_add(bs->jobs, bj);
    for (guint i = 0; i < engines->len; i++) {
        BcEngine *be = bc_engine_of(bs, engines->pdata[i]);
        g_hash_table_add(be->jobs, bj);
        g_hash_table_add(bj->waiting, be);
    }
    bj->dispatching = TRUE;
    for (guint i = 0; i < engines->len; i++)
        bs->host->ops->dispatch(bs->host, job, engines->pdata[i]);
    bj->dispatching = FALSE;

    g_autoptr(GPtrArray) deferred = g_steal_pointer(&bj->deferred);
    if (deferred->len == 0)
        return;
    if (g_hash_table_size(bj->waiting) == 0)
        g_hash_table_remove(bs->jobs, bj); /* every engine answered at once */
    for (guint i = 0; i < deferred->len; i++)
        bs->host->ops->deliver(bs->host, job, deferred->pdata[i]);
}

static void bc_reply(gpointer self, HerdJob *job, HerdReply *reply)
{
    BcSched *bs = self;
    BcJob *bj = job->sched;
    /* No engine: it went down and was answered for already. Not waited for: a duplicate. */
    BcEngine *be = reply->engine ? reply->engine->sched : NULL;
    if (!bj || !be || !g_hash_table_remove(bj->waiting, be))
        return;
    g_hash_table_remove(be->jobs, bj);
    deliver_answer(bs, bj, reply);
}

static gint bc_job_seq_cmp(gconstpointer a, gconstpointer b)
{
    const BcJob *x = *(BcJob *const *)a, *y = *(BcJob *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void bc_engine_down(gpointer self, HerdEngine *e)
{
    BcSched *bs = self;
    BcEngine *be = e->sched;
    if (!be)
        return;
    e->sched = NULL;
    g_autoptr(GPtrArray) jobs = g_ptr_array_new();
    GHashTableIter it;
    gpointer bj;
    g_hash_table_iter_init(&it, be->jobs);
    while (g_hash_table_iter_next(&it, &bj, NULL))
        g_ptr_array_add(jobs, bj);
    g_ptr_array_sort(jobs, bc_job_seq_cmp); /* answer in submission order */
    g_hash_table_remove_all(be->jobs);
    for (guint i = 0; i < jobs->len; i++) {
        BcJob *job = jobs->pdata[i];
        g_hash_table_remove(job->waiting, be);
        HerdReply *r = bs->host->ops->engine_error(bs->host, job->job, be->uuid);
        deliver_answer(bs, job, r);
    }
    g_hash_table_remove(bs->engines, be); /* frees it */
}

static void bc_timer(gpointer self, gpointer data)
{
    (void)self;
    (void)data; /* broadcast arms no timers */
}

static const HerdSchedulerOps bc_ops = {
    .create = bc_create,
    .destroy = bc_destroy,
    .engine_up = bc_engine_up,
    .engine_down = bc_engine_down,
    .request = bc_request,
    .reply = bc_reply,
    .timer = bc_timer,
    .scheme = NULL,
};

static const HerdPluginDescriptor bc_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_SCHEDULER,
    .name = "broadcast",
    .description = "one request to every engine in metadata.targets; replies relayed or merged",
    .init = NULL,
    .ops = &bc_ops,
};

HERD_PLUGIN_DEFINE(bc_descriptor)
