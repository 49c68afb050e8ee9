/* herd — a scripted fake scheduler host (see sched-harness.h). */
#include "sched-harness.h"

#include <gmodule.h>
#include <stdarg.h>
#include <herd/config.h>
#include <herd/plugin.h>
#include <string.h>

typedef struct FakeJob {
    HerdJob job; /* first: the plugin sees &fake->job */
    char *msg_id;
    char *target;
    gboolean finished;
    guint dispatched; /* dispatch calls for it */
    guint delivered;  /* deliver calls for it */
    /* Engines it was sent to and that neither answered nor were reported dead yet. */
    GHashTable *outstanding;
} FakeJob;

typedef struct FakeReply {
    HerdReply reply; /* first */
    FakeJob *job;
    char *status;
    char *engine_uuid;
    gboolean kept;
} FakeReply;

typedef struct FakeTimer {
    guint id;
    gint64 due_us;
    gpointer data;
} FakeTimer;

struct Harness {
    HerdSchedHost host; /* first: the plugin's host pointer is the harness */
    HerdSchedHostOps ops;
    char *channel;
    GModule *module;
    const HerdPluginDescriptor *descriptor;
    const HerdSchedulerOps *sched;
    gpointer self;
    GHashTable *engines;   /* uuid -> HerdEngine*, live ones */
    GHashTable *unreachable; /* uuids whose dispatches fail synchronously */
    GPtrArray *dead;       /* HerdEngine* that went down, poisoned, freed at the end */
    GHashTable *jobs;      /* msg_id -> FakeJob* */
    GHashTable *replies;   /* FakeReply* not yet delivered or freed (kept or synthesized) */
    GPtrArray *timers;     /* FakeTimer*, pending */
    guint next_timer_id;
    int next_engine_id;
    gint64 now_us;
    GPtrArray *log;
    guint dispatches;
};

static Harness *H(HerdSchedHost *host)
{
    return (Harness *)host;
}

static void logf_line(Harness *h, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void logf_line(Harness *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(h->log, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

static FakeJob *fake_job(HerdJob *job)
{
    return (FakeJob *)job;
}

static gboolean is_broadcast(Harness *h)
{
    return g_strcmp0(h->channel, "broadcast") == 0;
}

/* A job is finished once every engine it was sent to has been delivered (broadcast), or at
 * its first deliver (other channels). */
static void job_delivered(Harness *h, FakeJob *fj)
{
    fj->delivered++;
    if (!is_broadcast(h) || fj->delivered >= fj->dispatched)
        fj->finished = TRUE;
}

static FakeReply *fake_reply_new(FakeJob *fj, const char *status, const char *engine_uuid)
{
    FakeReply *fr = g_new0(FakeReply, 1);
    fr->job = fj;
    fr->status = g_strdup(status);
    fr->engine_uuid = g_strdup(engine_uuid);
    fr->reply.status = fr->status;
    fr->reply.dependencies_met = TRUE;
    fr->reply.core = fr;
    return fr;
}

static void fake_reply_free(FakeReply *fr)
{
    g_free(fr->status);
    g_free(fr->engine_uuid);
    g_free(fr);
}

/* ---- host operations -------------------------------------------------------------------- */

static HerdReply *op_engine_error(HerdSchedHost *host, HerdJob *job, const char *engine_uuid);

static gboolean engine_is_live(Harness *h, HerdEngine *e)
{
    return e && g_hash_table_lookup(h->engines, e->uuid) == e;
}

static void op_dispatch(HerdSchedHost *host, HerdJob *job, HerdEngine *e)
{
    Harness *h = H(host);
    FakeJob *fj = fake_job(job);
    g_assert_false(fj->finished);
    g_assert_true(engine_is_live(h, e));
    if (!is_broadcast(h))
        g_assert_cmpuint(g_hash_table_size(fj->outstanding), ==, 0); /* one engine at a time */
    g_assert_false(g_hash_table_contains(fj->outstanding, e->uuid));
    g_hash_table_add(fj->outstanding, g_strdup(e->uuid));
    fj->dispatched++;
    h->dispatches++;
    if (!g_hash_table_contains(h->unreachable, e->uuid)) {
        logf_line(h, "dispatch %s %s", fj->msg_id, e->uuid);
        return;
    }
    /* As the core does when the send fails: answer for the engine right away. */
    logf_line(h, "dispatch %s %s!", fj->msg_id, e->uuid);
    HerdReply *r = op_engine_error(host, job, e->uuid);
    FakeReply *fr = r->core;
    r->engine = e;
    h->sched->reply(h->self, job, r);
    if (g_hash_table_contains(h->replies, fr) && !fr->kept) {
        g_hash_table_remove(h->replies, fr);
        fake_reply_free(fr);
    }
}

static void op_deliver(HerdSchedHost *host, HerdJob *job, HerdReply *reply)
{
    Harness *h = H(host);
    FakeJob *fj = fake_job(job);
    FakeReply *fr = reply->core;
    g_assert_false(fj->finished);
    g_assert_true(fr->job == fj);
    if (reply->synthesized)
        logf_line(h, "deliver %s EngineError@%s", fj->msg_id, fr->engine_uuid);
    else
        logf_line(h, "deliver %s %s@%s", fj->msg_id, fr->status, fr->engine_uuid);
    g_hash_table_remove(h->replies, fr);
    fake_reply_free(fr);
    job_delivered(h, fj);
}

static void op_fail(HerdSchedHost *host, HerdJob *job, const char *ename, const char *evalue)
{
    Harness *h = H(host);
    FakeJob *fj = fake_job(job);
    g_assert_false(fj->finished);
    g_assert_nonnull(ename);
    g_assert_nonnull(evalue);
    if (*evalue)
        logf_line(h, "fail %s %s: %s", fj->msg_id, ename, evalue);
    else
        logf_line(h, "fail %s %s", fj->msg_id, ename);
    fj->finished = TRUE;
}

static HerdReply *op_engine_error(HerdSchedHost *host, HerdJob *job, const char *engine_uuid)
{
    Harness *h = H(host);
    FakeJob *fj = fake_job(job);
    g_assert_false(fj->finished);
    /* The engine is gone: this stands for its answer. */
    g_assert_true(g_hash_table_remove(fj->outstanding, engine_uuid));
    FakeReply *fr = fake_reply_new(fj, "error", engine_uuid);
    fr->reply.synthesized = TRUE;
    g_hash_table_add(h->replies, fr);
    return &fr->reply;
}

static HerdReply *op_reply_keep(HerdSchedHost *host, HerdReply *reply)
{
    Harness *h = H(host);
    FakeReply *fr = reply->core;
    fr->kept = TRUE;
    g_hash_table_add(h->replies, fr);
    return reply;
}

static void op_reply_free(HerdSchedHost *host, HerdReply *reply)
{
    Harness *h = H(host);
    FakeReply *fr = reply->core;
    g_assert_true(g_hash_table_remove(h->replies, fr));
    fake_reply_free(fr);
}

static HerdEngine *op_find_engine(HerdSchedHost *host, const char *uuid)
{
    return uuid ? g_hash_table_lookup(H(host)->engines, uuid) : NULL;
}

static guint op_timer_add(HerdSchedHost *host, guint ms, gpointer data)
{
    Harness *h = H(host);
    FakeTimer *t = g_new0(FakeTimer, 1);
    t->id = ++h->next_timer_id;
    t->due_us = h->now_us + (gint64)ms * 1000;
    t->data = data;
    g_ptr_array_add(h->timers, t);
    return t->id;
}

static void op_timer_cancel(HerdSchedHost *host, guint timer_id)
{
    Harness *h = H(host);
    g_assert_cmpuint(timer_id, >, 0);
    for (guint i = 0; i < h->timers->len; i++) {
        FakeTimer *t = h->timers->pdata[i];
        if (t->id == timer_id) {
            g_ptr_array_remove_index(h->timers, i);
            return;
        }
    }
    g_assert_not_reached(); /* cancelling a timer that fired or was never armed */
}

static gint64 op_now_us(HerdSchedHost *host)
{
    return H(host)->now_us;
}

/* ---- setup ------------------------------------------------------------------------------ */

static void free_engine(gpointer data)
{
    HerdEngine *e = data;
    g_free((char *)e->uuid);
    g_free(e);
}

static void free_job(gpointer data)
{
    FakeJob *fj = data;
    if (fj->job.metadata)
        json_object_unref(fj->job.metadata);
    g_hash_table_destroy(fj->outstanding);
    g_free(fj->msg_id);
    g_free(fj->target);
    g_free(fj);
}

static const HerdSchedulerOps *load_scheduler(Harness *h, const char *plugin_path, const char *name)
{
    h->module = g_module_open(plugin_path, G_MODULE_BIND_LOCAL);
    if (!h->module)
        g_error("cannot load %s: %s", plugin_path, g_module_error());
    HerdPluginEntryFn entry = NULL;
    g_assert_true(g_module_symbol(h->module, HERD_PLUGIN_ENTRY, (gpointer *)&entry));
    h->descriptor = entry();
    g_assert_nonnull(h->descriptor);
    g_assert_cmpuint(h->descriptor->abi_major, ==, HERD_PLUGIN_ABI_MAJOR);
    g_assert_cmpuint(h->descriptor->abi_minor, <=, HERD_PLUGIN_ABI_MINOR);
    g_assert_cmpint(h->descriptor->kind, ==, HERD_PLUGIN_SCHEDULER);
    g_assert_cmpstr(h->descriptor->name, ==, name);
    g_assert_nonnull(h->descriptor->description);
    if (h->descriptor->init) {
        g_autoptr(GError) err = NULL;
        g_assert_true(h->descriptor->init(&err));
    }
    const HerdSchedulerOps *ops = h->descriptor->ops;
    g_assert_nonnull(ops);
    g_assert_nonnull(ops->create);
    g_assert_nonnull(ops->destroy);
    g_assert_nonnull(ops->engine_up);
    g_assert_nonnull(ops->engine_down);
    g_assert_nonnull(ops->request);
    g_assert_nonnull(ops->reply);
    g_assert_nonnull(ops->timer);
    return ops;
}

static Harness *harness_alloc(const char *plugin_path, const char *name, const char *channel)
{
    Harness *h = g_new0(Harness, 1);
    h->ops = (HerdSchedHostOps){
        .dispatch = op_dispatch,
        .deliver = op_deliver,
        .fail = op_fail,
        .engine_error = op_engine_error,
        .reply_keep = op_reply_keep,
        .reply_free = op_reply_free,
        .find_engine = op_find_engine,
        .timer_add = op_timer_add,
        .timer_cancel = op_timer_cancel,
        .now_us = op_now_us,
    };
    h->host.ops = &h->ops;
    h->channel = g_strdup(channel);
    h->host.channel = h->channel;
    h->engines = g_hash_table_new(g_str_hash, g_str_equal);
    h->unreachable = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    h->dead = g_ptr_array_new_with_free_func(free_engine);
    h->jobs = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, free_job);
    h->replies = g_hash_table_new(g_direct_hash, g_direct_equal);
    h->timers = g_ptr_array_new_with_free_func(g_free);
    h->log = g_ptr_array_new_with_free_func(g_free);
    h->now_us = 1000000;
    h->sched = load_scheduler(h, plugin_path, name);
    return h;
}

static gpointer create_instance(Harness *h, const char *conf, GError **err)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    if (conf)
        g_assert_true(g_key_file_load_from_data(kf, conf, (gsize)-1, G_KEY_FILE_NONE, NULL));
    g_autofree char *group = g_strdup_printf("scheduler.%s", h->channel);
    return h->sched->create(&h->host, kf, group, err);
}

Harness *harness_new(const char *plugin_path, const char *name, const char *channel,
                     const char *conf)
{
    Harness *h = harness_alloc(plugin_path, name, channel);
    g_autoptr(GError) err = NULL;
    h->self = create_instance(h, conf, &err);
    g_assert_no_error(err);
    g_assert_nonnull(h->self);
    return h;
}

GError *harness_create_error(const char *plugin_path, const char *name, const char *channel,
                             const char *conf)
{
    Harness *h = harness_alloc(plugin_path, name, channel);
    GError *err = NULL;
    h->self = create_instance(h, conf, &err);
    g_assert_true((h->self == NULL) == (err != NULL));
    harness_free(h);
    return err;
}

void harness_assert_refused(const char *plugin_path, const char *name, const char *channel,
                            const char *conf, int code, ...)
{
    g_autoptr(GError) err = harness_create_error(plugin_path, name, channel, conf);
    g_assert_error(err, HERD_CONFIG_ERROR, code);
    va_list mentions;
    va_start(mentions, code);
    for (const char *m = va_arg(mentions, const char *); m; m = va_arg(mentions, const char *))
        if (!strstr(err->message, m))
            g_error("'%s' does not mention %s", err->message, m);
    va_end(mentions);
}

void harness_free(Harness *h)
{
    if (h->self)
        h->sched->destroy(h->self);
    /* Every reply the plugin kept or got from engine_error must be delivered or freed. */
    g_assert_cmpuint(g_hash_table_size(h->replies), ==, 0);
    g_hash_table_destroy(h->replies);
    GHashTableIter it;
    gpointer e;
    g_hash_table_iter_init(&it, h->engines);
    while (g_hash_table_iter_next(&it, NULL, &e))
        free_engine(e);
    g_hash_table_destroy(h->engines);
    g_hash_table_destroy(h->unreachable);
    g_ptr_array_unref(h->dead);
    g_hash_table_destroy(h->jobs);
    g_ptr_array_unref(h->timers);
    g_ptr_array_unref(h->log);
    g_module_close(h->module);
    g_free(h->channel);
    g_free(h);
}

const HerdPluginDescriptor *harness_descriptor(Harness *h)
{
    return h->descriptor;
}

const char *harness_scheme(Harness *h)
{
    return h->sched->scheme ? h->sched->scheme(h->self) : NULL;
}

/* ---- scripted events -------------------------------------------------------------------- */

void harness_engine_up(Harness *h, const char *uuid)
{
    g_assert_false(g_hash_table_contains(h->engines, uuid));
    HerdEngine *e = g_new0(HerdEngine, 1);
    e->id = h->next_engine_id++;
    e->uuid = g_strdup(uuid);
    g_hash_table_insert(h->engines, (char *)e->uuid, e);
    h->sched->engine_up(h->self, e);
}

void harness_engine_down(Harness *h, const char *uuid)
{
    HerdEngine *e = g_hash_table_lookup(h->engines, uuid);
    g_assert_nonnull(e);
    h->sched->engine_down(h->self, e);
    g_hash_table_remove(h->engines, uuid);
    /* Poison it: a plugin that keeps using the pointer sees nonsense, and the pointer is
     * never reused for another engine while the test runs. */
    e->id = -1;
    e->sched = (gpointer)0x1;
    g_ptr_array_add(h->dead, e);
}

void harness_engines_up(Harness *h, int n)
{
    for (int i = 0; i < n; i++) {
        g_autofree char *uuid = g_strdup_printf("e%d", i);
        harness_engine_up(h, uuid);
    }
}

void harness_set_unreachable(Harness *h, const char *uuid, gboolean unreachable)
{
    if (unreachable)
        g_hash_table_add(h->unreachable, g_strdup(uuid));
    else
        g_hash_table_remove(h->unreachable, uuid);
}

static FakeJob *new_job(Harness *h, const char *msg_id, const char *metadata_json)
{
    g_assert_false(g_hash_table_contains(h->jobs, msg_id));
    FakeJob *fj = g_new0(FakeJob, 1);
    fj->msg_id = g_strdup(msg_id);
    fj->outstanding = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) node = json_from_string(metadata_json ? metadata_json : "{}", &err);
    g_assert_no_error(err);
    g_assert_true(JSON_NODE_HOLDS_OBJECT(node));
    fj->job.metadata = json_object_ref(json_node_get_object(node));
    fj->job.msg_id = fj->msg_id;
    fj->job.msg_type = "apply_request";
    fj->job.received_us = h->now_us;
    g_hash_table_insert(h->jobs, fj->msg_id, fj);
    return fj;
}

void harness_request(Harness *h, const char *msg_id, const char *metadata_json)
{
    FakeJob *fj = new_job(h, msg_id, metadata_json);
    h->sched->request(h->self, &fj->job);
}

void harness_requests(Harness *h, const char *msg_id, ...)
{
    va_list more;
    va_start(more, msg_id);
    for (const char *id = msg_id; id; id = va_arg(more, const char *))
        harness_request(h, id, NULL);
    va_end(more);
}

void harness_numbered_requests(Harness *h, const char *prefix, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        g_autofree char *id = g_strdup_printf("%s%d", prefix, i);
        harness_request(h, id, NULL);
    }
}

void harness_request_to(Harness *h, const char *msg_id, const char *target_uuid)
{
    FakeJob *fj = new_job(h, msg_id, NULL);
    fj->target = g_strdup(target_uuid);
    fj->job.target_uuid = fj->target;
    h->sched->request(h->self, &fj->job);
}

static void send_reply(Harness *h, const char *msg_id, const char *engine_uuid, const char *status,
                       gboolean dependencies_met)
{
    FakeJob *fj = g_hash_table_lookup(h->jobs, msg_id);
    g_assert_nonnull(fj);
    g_assert_false(fj->finished); /* the core only routes replies of live jobs */
    g_hash_table_remove(fj->outstanding, engine_uuid);
    FakeReply *fr = fake_reply_new(fj, status, engine_uuid);
    fr->reply.dependencies_met = dependencies_met;
    fr->reply.engine = g_hash_table_lookup(h->engines, engine_uuid);
    g_hash_table_add(h->replies, fr);
    h->sched->reply(h->self, &fj->job, &fr->reply);
    /* Unless delivered or kept, the reply dies with the callback. */
    if (g_hash_table_contains(h->replies, fr) && !fr->kept) {
        g_hash_table_remove(h->replies, fr);
        fake_reply_free(fr);
    }
}

void harness_reply(Harness *h, const char *msg_id, const char *engine_uuid, const char *status)
{
    send_reply(h, msg_id, engine_uuid, status, TRUE);
}

void harness_reply_unmet(Harness *h, const char *msg_id, const char *engine_uuid)
{
    send_reply(h, msg_id, engine_uuid, "error", FALSE);
}

static FakeTimer *earliest_timer(Harness *h, gint64 until_us, guint *index)
{
    FakeTimer *best = NULL;
    for (guint i = 0; i < h->timers->len; i++) {
        FakeTimer *t = h->timers->pdata[i];
        if (t->due_us <= until_us && (!best || t->due_us < best->due_us)) {
            best = t;
            *index = i;
        }
    }
    return best;
}

void harness_advance(Harness *h, guint ms)
{
    gint64 until = h->now_us + (gint64)ms * 1000;
    guint index = 0;
    FakeTimer *t;
    while ((t = earliest_timer(h, until, &index))) {
        h->now_us = MAX(h->now_us, t->due_us);
        gpointer data = t->data;
        g_ptr_array_remove_index(h->timers, index); /* fired: no longer cancellable */
        h->sched->timer(h->self, data);
    }
    h->now_us = until;
}

guint harness_live_timers(Harness *h)
{
    return h->timers->len;
}

char *harness_take(Harness *h)
{
    g_ptr_array_add(h->log, NULL);
    char *joined = g_strjoinv("; ", (char **)h->log->pdata);
    g_ptr_array_set_size(h->log, 0);
    return joined;
}

void harness_discard(Harness *h)
{
    g_ptr_array_set_size(h->log, 0);
}

gboolean harness_finished(Harness *h, const char *msg_id)
{
    FakeJob *fj = g_hash_table_lookup(h->jobs, msg_id);
    g_assert_nonnull(fj);
    return fj->finished;
}

guint harness_dispatch_count(Harness *h)
{
    return h->dispatches;
}
