/* herd — the "lb" scheduler: plain load balancing, built for raw speed.
 *
 * Each request goes to one engine chosen by the scheme among those below the high-water
 * mark; when every engine is full, requests wait in a FIFO queue. No dependencies, no
 * targets, no retries, no timeouts: metadata is never read, so a request costs a queue
 * push and a scheme pick. Work stranded on a dead engine is answered with the EngineError
 * ipyparallel produces, after a delay that lets in-transit results arrive first.
 */
#include <herd/plugin.h>
#include <herd/scheduler.h>

#include "sched-common.h"

typedef struct LbEngine {
    HerdEngine *he; /* NULL once the engine is down */
    char *uuid;
    guint load;       /* requests sent and not answered */
    GHashTable *jobs; /* in flight here: HerdJob* -> dispatch number (gsize) */
    GList link;       /* in ls->engines while up */
    guint stranded_timer;
} LbEngine;

typedef struct LbSched {
    HerdSchedHost *host;
    SchedScheme scheme;
    guint hwm; /* 0 = unlimited */
    guint stranded_delay_ms;
    GRand *rng;
    GQueue engines;  /* live engines, least recently assigned first */
    guint n_free;    /* live engines below the high-water mark */
    GQueue waiting;  /* HerdJob*, FIFO */
    GPtrArray *dead; /* LbEngine* down with work in flight, until their stranded timer */
    GPtrArray *candidates;
    GArray *loads;
    gsize next_seq;
    gboolean draining; /* a dispatch can answer synchronously and re-enter drain */
} LbSched;

/* ---- engines ---------------------------------------------------------------------------- */

static gboolean has_room(const LbSched *ls, const LbEngine *e)
{
    return ls->hwm == 0 || e->load < ls->hwm;
}

/* Change an engine's load, keeping the count of engines with room right. */
static void set_load(LbSched *ls, LbEngine *e, guint load)
{
    gboolean had_room = has_room(ls, e);
    e->load = load;
    gboolean room = has_room(ls, e);
    if (!e->he || had_room == room)
        return;
    if (room)
        ls->n_free++;
    else
        ls->n_free--;
}

static void lb_engine_free(LbEngine *e)
{
    g_hash_table_destroy(e->jobs);
    g_free(e->uuid);
    g_free(e);
}

/* Choose among the engines with room, in LRU order, with the scheme. */
static LbEngine *pick_engine(LbSched *ls)
{
    g_ptr_array_set_size(ls->candidates, 0);
    g_array_set_size(ls->loads, 0);
    for (GList *l = ls->engines.head; l; l = l->next) {
        LbEngine *e = l->data;
        if (!has_room(ls, e))
            continue;
        g_ptr_array_add(ls->candidates, e);
        g_array_append_val(ls->loads, e->load);
    }
    if (ls->candidates->len == 0)
        return NULL;
    guint i = sched_scheme_pick(ls->scheme, (const guint *)(gpointer)ls->loads->data,
                                ls->candidates->len, ls->rng);
    return ls->candidates->pdata[i];
}

static void assign(LbSched *ls, HerdJob *job, LbEngine *e)
{
    set_load(ls, e, e->load + 1);
    /* Most recently assigned goes last. */
    g_queue_unlink(&ls->engines, &e->link);
    g_queue_push_tail_link(&ls->engines, &e->link);
    g_hash_table_insert(e->jobs, job, GSIZE_TO_POINTER(ls->next_seq++));
    job->sched = e;
    ls->host->ops->dispatch(ls->host, job, e->he);
}

/* Start waiting requests, oldest first, while some engine has room. */
static void drain(LbSched *ls)
{
    /* The core answers a dispatch it cannot send at once (through lb_reply); the outer
     * loop then keeps going instead of recursing once per queued request. */
    if (ls->draining)
        return;
    ls->draining = TRUE;
    while (ls->n_free > 0 && !g_queue_is_empty(&ls->waiting)) {
        LbEngine *e = pick_engine(ls);
        if (!e)
            break;
        assign(ls, g_queue_pop_head(&ls->waiting), e);
    }
    ls->draining = FALSE;
}

/* ---- plugin operations ------------------------------------------------------------------ */

static gpointer lb_create(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err)
{
    static const char *const keys[] = {"scheme", "hwm", "stranded_delay_ms", NULL};
    SchedScheme scheme;
    guint hwm, delay;
    if (!sched_opt_check_keys(conf, group, keys, err) ||
        !sched_opt_scheme(conf, group, &scheme, err) ||
        !sched_opt_uint(conf, group, "hwm", 0, G_MAXINT32, 1, &hwm, err) ||
        !sched_opt_uint(conf, group, "stranded_delay_ms", 0, G_MAXINT32, 5000, &delay, err))
        return NULL;
    LbSched *ls = g_new0(LbSched, 1);
    ls->host = host;
    ls->scheme = scheme;
    ls->hwm = scheme == SCHED_SCHEME_PURE ? 0 : hwm; /* a ZMQ relay has no hwm */
    ls->stranded_delay_ms = delay;
    ls->rng = g_rand_new();
    g_queue_init(&ls->engines);
    g_queue_init(&ls->waiting);
    ls->dead = g_ptr_array_new();
    ls->candidates = g_ptr_array_new();
    ls->loads = g_array_new(FALSE, FALSE, sizeof(guint));
    return ls;
}

/* Jobs and engines belong to the core: only our own state is freed (and our timers). */
static void lb_destroy(gpointer self)
{
    LbSched *ls = self;
    while (!g_queue_is_empty(&ls->engines)) {
        LbEngine *e = g_queue_pop_head_link(&ls->engines)->data;
        lb_engine_free(e);
    }
    for (guint i = 0; i < ls->dead->len; i++) {
        LbEngine *e = ls->dead->pdata[i];
        ls->host->ops->timer_cancel(ls->host, e->stranded_timer);
        lb_engine_free(e);
    }
    g_ptr_array_unref(ls->dead);
    g_queue_clear(&ls->waiting);
    g_ptr_array_unref(ls->candidates);
    g_array_unref(ls->loads);
    g_rand_free(ls->rng);
    g_free(ls);
}

static void lb_engine_up(gpointer self, HerdEngine *he)
{
    LbSched *ls = self;
    LbEngine *e = g_new0(LbEngine, 1);
    e->he = he;
    e->uuid = g_strdup(he->uuid);
    e->jobs = g_hash_table_new(g_direct_hash, g_direct_equal);
    e->link.data = e;
    he->sched = e;
    /* A new engine is the least recently used of all. */
    g_queue_push_head_link(&ls->engines, &e->link);
    ls->n_free++;
    drain(ls);
}

static void lb_engine_down(gpointer self, HerdEngine *he)
{
    LbSched *ls = self;
    LbEngine *e = he->sched;
    if (!e)
        return;
    g_queue_unlink(&ls->engines, &e->link);
    if (has_room(ls, e))
        ls->n_free--;
    e->he = NULL;
    he->sched = NULL;
    if (g_hash_table_size(e->jobs) == 0) {
        lb_engine_free(e);
        return;
    }
    /* Results may still be on their way: wait before declaring the work lost. */
    e->stranded_timer = ls->host->ops->timer_add(ls->host, ls->stranded_delay_ms, e);
    g_ptr_array_add(ls->dead, e);
}

static void lb_request(gpointer self, HerdJob *job)
{
    LbSched *ls = self;
    job->sched = NULL;
    g_queue_push_tail(&ls->waiting, job);
    drain(ls);
}

/* A dead engine whose last request got its answer needs no stranded timer any more. */
static void forget_dead_engine_if_idle(LbSched *ls, LbEngine *e)
{
    if (e->he || g_hash_table_size(e->jobs) > 0)
        return;
    ls->host->ops->timer_cancel(ls->host, e->stranded_timer);
    g_ptr_array_remove_fast(ls->dead, e);
    lb_engine_free(e);
}

static void lb_reply(gpointer self, HerdJob *job, HerdReply *reply)
{
    LbSched *ls = self;
    LbEngine *e = job->sched;
    /* Only the engine running the job may answer it (a reply without an engine comes from
     * one that is gone: accept it only if the job's engine is gone too). */
    if (!e || (reply->engine ? reply->engine->sched != e : e->he != NULL))
        return;
    g_hash_table_remove(e->jobs, job);
    job->sched = NULL;
    if (e->he)
        set_load(ls, e, e->load - 1);
    ls->host->ops->deliver(ls->host, job, reply);
    if (e->he)
        drain(ls);
    else
        forget_dead_engine_if_idle(ls, e);
}

typedef struct {
    HerdJob *job;
    gsize seq;
} InFlight;

static gint in_flight_cmp(gconstpointer a, gconstpointer b)
{
    const InFlight *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The stranded delay of a dead engine ran out: answer what it never answered. */
static void lb_timer(gpointer self, gpointer data)
{
    LbSched *ls = self;
    LbEngine *e = data;
    g_ptr_array_remove_fast(ls->dead, e);
    GArray *lost = g_array_new(FALSE, FALSE, sizeof(InFlight));
    GHashTableIter it;
    gpointer job, seq;
    g_hash_table_iter_init(&it, e->jobs);
    while (g_hash_table_iter_next(&it, &job, &seq)) {
        InFlight f = {job, GPOINTER_TO_SIZE(seq)};
        g_array_append_val(lost, f);
    }
    g_array_sort(lost, in_flight_cmp);
    g_hash_table_remove_all(e->jobs);
    for (guint i = 0; i < lost->len; i++) {
        HerdJob *j = g_array_index(lost, InFlight, i).job;
        j->sched = NULL;
        HerdReply *r = ls->host->ops->engine_error(ls->host, j, e->uuid);
        ls->host->ops->deliver(ls->host, j, r);
    }
    g_array_unref(lost);
    lb_engine_free(e);
}

static const char *lb_scheme(gpointer self)
{
    return sched_scheme_name(((LbSched *)self)->scheme);
}

static const HerdSchedulerOps lb_ops = {
    .create = lb_create,
    .destroy = lb_destroy,
    .engine_up = lb_engine_up,
    .engine_down = lb_engine_down,
    .request = lb_request,
    .reply = lb_reply,
    .timer = lb_timer,
    .scheme = lb_scheme,
    .flags = HERD_SCHED_IGNORES_METADATA,
};

static const HerdPluginDescriptor lb_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_SCHEDULER,
    .name = "lb",
    .description = "plain load balancing (scheme, hwm); ignores dependencies, targets, retries",
    .init = NULL,
    .ops = &lb_ops,
};

HERD_PLUGIN_DEFINE(lb_descriptor)
