/* roundrobin — a complete herd scheduler plugin in one file (see docs/schedulers.md).
 *
 * Each request goes to the next engine in turn, whatever its load; with no engine up,
 * requests wait. Build it against the installed headers:
 *   cc -shared -fPIC -o herd-scheduler-roundrobin.so roundrobin.c $(pkg-config --cflags --libs herd)
 * and select it with `[scheduler] task = roundrobin` in herd.conf.
 */
#include <herd/config.h>
#include <herd/plugin.h>
#include <herd/scheduler.h>

typedef struct {
    HerdSchedHost *host;
    GQueue engines; /* HerdEngine*, the next one to use first */
    GQueue waiting; /* HerdJob* that arrived while no engine was up */
} RoundRobin;

static gpointer rr_create(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err)
{
    /* No options: any key but "plugin" in [scheduler.<channel>] is a mistake to report. */
    g_auto(GStrv) keys = conf ? g_key_file_get_keys(conf, group, NULL, NULL) : NULL;
    for (char **k = keys; k && *k; k++) {
        if (g_strcmp0(*k, "plugin") != 0) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY,
                        "[%s]: unknown key '%s' (roundrobin has no options)", group, *k);
            return NULL;
        }
    }
    RoundRobin *rr = g_new0(RoundRobin, 1);
    rr->host = host;
    g_queue_init(&rr->engines);
    g_queue_init(&rr->waiting);
    return rr;
}

static void rr_destroy(gpointer self)
{
    RoundRobin *rr = self;
    for (GList *l = rr->engines.head; l; l = l->next)
        g_hash_table_destroy(((HerdEngine *)l->data)->sched);
    g_queue_clear(&rr->engines);
    g_queue_clear(&rr->waiting); /* the jobs themselves belong to the core */
    g_free(rr);
}

/* Send a job to the engine whose turn it is. Bookkeeping comes first: the core may answer
 * a send that fails at once by calling rr_reply from inside dispatch. */
static void rr_send(RoundRobin *rr, HerdJob *job)
{
    HerdEngine *e = g_queue_pop_head(&rr->engines);
    g_queue_push_tail(&rr->engines, e);
    g_hash_table_add(e->sched, job); /* e->sched: the set of jobs running there */
    job->sched = e;
    rr->host->ops->dispatch(rr->host, job, e);
}

static void rr_engine_up(gpointer self, HerdEngine *e)
{
    RoundRobin *rr = self;
    e->sched = g_hash_table_new(g_direct_hash, g_direct_equal);
    g_queue_push_tail(&rr->engines, e);
    while (!g_queue_is_empty(&rr->waiting))
        rr_send(rr, g_queue_pop_head(&rr->waiting));
}

static void rr_engine_down(gpointer self, HerdEngine *e)
{
    RoundRobin *rr = self;
    g_queue_remove(&rr->engines, e);
    /* Every job must be finished: answer for the engine with ipyparallel's EngineError. */
    GHashTable *running = e->sched;
    e->sched = NULL;
    GHashTableIter it;
    gpointer job;
    g_hash_table_iter_init(&it, running);
    while (g_hash_table_iter_next(&it, &job, NULL)) {
        g_hash_table_iter_remove(&it);
        HerdReply *r = rr->host->ops->engine_error(rr->host, job, e->uuid);
        rr->host->ops->deliver(rr->host, job, r);
    }
    g_hash_table_destroy(running);
}

static void rr_request(gpointer self, HerdJob *job)
{
    RoundRobin *rr = self;
    if (g_queue_is_empty(&rr->engines))
        g_queue_push_tail(&rr->waiting, job);
    else
        rr_send(rr, job);
}

static void rr_reply(gpointer self, HerdJob *job, HerdReply *reply)
{
    RoundRobin *rr = self;
    HerdEngine *e = job->sched; /* still up: engine_down finishes all of its jobs */
    g_hash_table_remove(e->sched, job);
    rr->host->ops->deliver(rr->host, job, reply); /* finishes the job */
}

static void rr_timer(gpointer self, gpointer data)
{
    (void)self;
    (void)data; /* no timers armed */
}

static const HerdSchedulerOps rr_ops = {
    .create = rr_create,
    .destroy = rr_destroy,
    .engine_up = rr_engine_up,
    .engine_down = rr_engine_down,
    .request = rr_request,
    .reply = rr_reply,
    .timer = rr_timer,
    .scheme = NULL, /* clients are told "leastload"; they only care whether it is "pure" */
};

static const HerdPluginDescriptor rr_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_SCHEDULER,
    .name = "roundrobin",
    .description = "example: each request to the next engine in turn",
    .ops = &rr_ops,
};

HERD_PLUGIN_DEFINE(rr_descriptor)
