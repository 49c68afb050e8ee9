/* herd — the "task" scheduler: ipyparallel's load-balanced task scheduler (spec §6.5).
 *
 * Requests carry metadata: `targets` (engines allowed), `retries` (re-runs elsewhere after a
 * failure), `after` / `follow` (time and location dependencies on earlier task msg_ids, with
 * all/any and success/failure flags) and `timeout` (how long it may wait in the queue). A
 * request whose dependencies are met goes to an engine chosen by the scheme among those
 * below the high-water mark; otherwise it waits in a FIFO queue, indexed under the ids it
 * waits for so that a finishing task only re-examines its own dependents.
 *
 * Memory: what the scheduler remembers about finished ids (COMPLETED, FAILED, where they
 * ran) is bounded by `history_limit`; the oldest finished ids are forgotten first, after
 * which a dependency on them is treated like one on an id never submitted.
 *
 * Re-entrancy: the core may answer a dispatch it cannot send at once by calling the reply
 * op from inside host->dispatch. State is therefore updated before every host call, and
 * graph updates are queued and run by the outermost event only.
 */
#include <herd/hash.h>
#include <herd/plugin.h>
#include <herd/scheduler.h>
#include <string.h>

#include "sched-common.h"

/* Timer payloads start with a tag telling which kind of object armed them. */
typedef enum { TAG_JOB = 0x7a51, TAG_ENGINE = 0x7a52 } TimerTag;

typedef enum { FACT_PENDING, FACT_COMPLETED, FACT_FAILED } FactOutcome;

/* What is known about one submitted msg_id. Finished facts are chained oldest to newest
 * so that the history can be trimmed from the old end. */
typedef struct Fact {
    struct Fact *older, *newer;
    guint64 engine; /* serial of the engine it finished on; 0 = none */
    FactOutcome outcome;
    char msg_id[];
} Fact;

/* A dependency: a set of msg_ids and how they must have finished. */
typedef struct Dep {
    GPtrArray *ids; /* char*, owned; NULL while there are none (most tasks have none) */
    gboolean all, success, failure;
} Dep;

typedef enum { JOB_IDLE, JOB_WAITING, JOB_RUNNING, JOB_DONE } JobState;

typedef struct TaskEngine TaskEngine;

typedef struct TaskJob {
    TimerTag tag;
    guint refs;
    HerdJob *job;  /* NULL once finished */
    char *msg_id;  /* outlives the HerdJob */
    guint64 seq;   /* submission order */
    JobState state;
    GHashTable *targets;   /* engine uuids allowed; NULL = any */
    GHashTable *blacklist; /* engine uuids that declined or failed it; NULL = none */
    Dep after, follow;
    guint retries;    /* re-runs left */
    guint timeout_ms; /* queue wait limit; 0 = none */
    guint timer;
    guint64 queue_seq;        /* FIFO position while waiting */
    GSequenceIter *queue_pos; /* in ts->queue once `after` is met; NULL while blocked on it */
    TaskEngine *engine; /* while running */
} TaskJob;

struct TaskEngine {
    TimerTag tag;
    HerdEngine *he; /* NULL once the engine is down */
    char *uuid;
    guint64 serial; /* unique per registration, never reused */
    guint load;
    GHashTable *jobs; /* TaskJob* in flight here */
    GList link;       /* in ts->engines while up */
    guint stranded_timer;
};

typedef struct TaskSched {
    HerdSchedHost *host;
    SchedScheme scheme;
    guint hwm;
    guint stranded_delay_ms;
    guint history_limit;
    GRand *rng;

    GQueue engines;       /* live engines, least recently assigned first */
    GHashTable *by_uuid;  /* uuid -> live TaskEngine */
    guint n_free;         /* live engines below the high-water mark */
    GPtrArray *dead;      /* engines down with work in flight, until their stranded timer */
    guint64 next_engine_serial;

    GHashTable *facts;    /* msg_id -> Fact */
    Fact *oldest, *newest;
    guint n_finished;

    GHashTable *live;     /* msg_id -> TaskJob, every unfinished job */
    GSequence *queue;     /* waiting TaskJob* whose `after` is met, by queue_seq (FIFO) */
    GHashTable *graph;    /* msg_id -> set of waiting TaskJob* that depend on it */
    GQueue updates;       /* pending graph updates: char* msg_id, or NULL for a full scan */
    gboolean updating;
    guint in_event;       /* nesting depth of plugin operations (dispatch can re-enter) */
    guint64 next_seq, next_queue_seq;

    GPtrArray *candidates;
    GArray *loads;
} TaskSched;

static void schedule_update(TaskSched *ts, const char *msg_id);

/* ---- history of msg_ids ----------------------------------------------------------------- */

static Fact *fact_lookup(TaskSched *ts, const char *msg_id)
{
    return g_hash_table_lookup(ts->facts, msg_id);
}

static void fact_unlink(TaskSched *ts, Fact *f)
{
    if (f->older)
        f->older->newer = f->newer;
    else
        ts->oldest = f->newer;
    if (f->newer)
        f->newer->older = f->older;
    else
        ts->newest = f->older;
    f->older = f->newer = NULL;
    ts->n_finished--;
}

/* A new submission: the id becomes known (ALL_IDS) and pending. */
static void fact_begin(TaskSched *ts, const char *msg_id)
{
    Fact *f = fact_lookup(ts, msg_id);
    if (f) {
        if (f->outcome != FACT_PENDING)
            fact_unlink(ts, f);
    } else {
        gsize len = strlen(msg_id) + 1;
        f = g_malloc0(sizeof(Fact) + len);
        memcpy(f->msg_id, msg_id, len);
        g_hash_table_insert(ts->facts, f->msg_id, f);
    }
    f->outcome = FACT_PENDING;
    f->engine = 0;
}

static void fact_finish(TaskSched *ts, const char *msg_id, FactOutcome outcome, guint64 engine)
{
    fact_begin(ts, msg_id); /* no-op for a pending id; re-creates a forgotten one */
    Fact *f = fact_lookup(ts, msg_id);
    f->outcome = outcome;
    f->engine = engine;
    f->older = ts->newest;
    if (ts->newest)
        ts->newest->newer = f;
    else
        ts->oldest = f;
    ts->newest = f;
    ts->n_finished++;
    while (ts->n_finished > ts->history_limit) {
        Fact *old = ts->oldest;
        fact_unlink(ts, old);
        g_hash_table_remove(ts->facts, old->msg_id); /* frees it */
    }
}

/* ---- dependencies ----------------------------------------------------------------------- */

static guint dep_len(const Dep *d)
{
    return d->ids ? d->ids->len : 0;
}

static gboolean dep_is_empty(const Dep *d)
{
    return dep_len(d) == 0;
}

/* The id finished in a way that satisfies d. */
static gboolean fact_counts(const Dep *d, const Fact *f)
{
    return f && ((d->success && f->outcome == FACT_COMPLETED) ||
                 (d->failure && f->outcome == FACT_FAILED));
}

/* The id finished in a way d does not accept. */
static gboolean fact_spoils(const Dep *d, const Fact *f)
{
    return f && ((!d->success && f->outcome == FACT_COMPLETED) ||
                 (!d->failure && f->outcome == FACT_FAILED));
}

/* met(D), globally (engine == 0) or counting only ids that finished on that engine. */
static gboolean dep_met(TaskSched *ts, const Dep *d, guint64 engine)
{
    if (dep_is_empty(d))
        return TRUE;
    for (guint i = 0; i < dep_len(d); i++) {
        const Fact *f = fact_lookup(ts, d->ids->pdata[i]);
        gboolean counts = fact_counts(d, f) && (engine == 0 || f->engine == engine);
        if (d->all && !counts)
            return FALSE;
        if (!d->all && counts)
            return TRUE;
    }
    return d->all;
}

static gboolean dep_unreachable(TaskSched *ts, const Dep *d)
{
    if (dep_is_empty(d))
        return FALSE;
    for (guint i = 0; i < dep_len(d); i++) {
        gboolean spoiled = fact_spoils(d, fact_lookup(ts, d->ids->pdata[i]));
        if (d->all && spoiled)
            return TRUE;
        if (!d->all && !spoiled)
            return FALSE;
    }
    return !d->all;
}

/* Only ids submitted here (and still remembered) are valid, and never the task itself. */
static gboolean dep_is_valid(TaskSched *ts, const Dep *d, const char *own_id)
{
    for (guint i = 0; i < dep_len(d); i++) {
        const char *id = d->ids->pdata[i];
        if (g_str_equal(id, own_id) || !fact_lookup(ts, id))
            return FALSE;
    }
    return TRUE;
}

/* Follow ids that already finished as the dependency wants, on more than one engine: no
 * single engine can ever satisfy an all-follow. */
static gboolean follow_split_across_engines(TaskSched *ts, const Dep *follow)
{
    guint64 seen = 0;
    for (guint i = 0; i < dep_len(follow); i++) {
        const Fact *f = fact_lookup(ts, follow->ids->pdata[i]);
        if (!fact_counts(follow, f) || f->engine == 0)
            continue;
        if (seen && f->engine != seen)
            return TRUE;
        seen = f->engine;
    }
    return FALSE;
}

/* ---- request metadata ------------------------------------------------------------------- */

static gboolean json_flag(JsonObject *o, const char *name, gboolean def, gboolean *out)
{
    JsonNode *n = json_object_get_member(o, name);
    if (!n || JSON_NODE_HOLDS_NULL(n)) {
        *out = def;
        return TRUE;
    }
    if (!JSON_NODE_HOLDS_VALUE(n))
        return FALSE;
    GType t = json_node_get_value_type(n);
    if (t == G_TYPE_BOOLEAN)
        *out = json_node_get_boolean(n);
    else if (t == G_TYPE_INT64)
        *out = json_node_get_int(n) != 0;
    else
        return FALSE;
    return TRUE;
}

/* Append the msg_ids of a string or an array of strings. */
/* Appends the ids of n (a string, a list of strings, or null) to *ids, made when the
 * first one is added. */
static gboolean parse_ids(JsonNode *n, GPtrArray **ids)
{
    if (!n || JSON_NODE_HOLDS_NULL(n))
        return TRUE;
    if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_STRING) {
        if (!*ids)
            *ids = g_ptr_array_new_with_free_func(g_free);
        g_ptr_array_add(*ids, g_strdup(json_node_get_string(n)));
        return TRUE;
    }
    if (!JSON_NODE_HOLDS_ARRAY(n))
        return FALSE;
    JsonArray *a = json_node_get_array(n);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonNode *e = json_array_get_element(a, i);
        if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_STRING)
            return FALSE;
        if (!*ids)
            *ids = g_ptr_array_new_with_free_func(g_free);
        g_ptr_array_add(*ids, g_strdup(json_node_get_string(e)));
    }
    return TRUE;
}

/* A dependency is a list of ids (all, success only) or
 * {"dependencies": [...], "all": b, "success": b, "failure": b}. */
static gboolean parse_dep(JsonObject *md, const char *name, Dep *d)
{
    d->ids = NULL;
    d->all = TRUE;
    d->success = TRUE;
    d->failure = FALSE;
    JsonNode *n = json_object_get_member(md, name);
    if (!n || !JSON_NODE_HOLDS_OBJECT(n))
        return parse_ids(n, &d->ids);
    JsonObject *o = json_node_get_object(n);
    if (!parse_ids(json_object_get_member(o, "dependencies"), &d->ids) ||
        !json_flag(o, "all", TRUE, &d->all) || !json_flag(o, "success", TRUE, &d->success) ||
        !json_flag(o, "failure", FALSE, &d->failure))
        return FALSE;
    return d->success || d->failure; /* depending on neither can never be met */
}

static gboolean parse_targets(JsonObject *md, GHashTable **out)
{
    *out = NULL;
    JsonNode *n = json_object_get_member(md, "targets");
    if (!n || JSON_NODE_HOLDS_NULL(n))
        return TRUE;
    if (!JSON_NODE_HOLDS_ARRAY(n))
        return FALSE;
    g_autoptr(GPtrArray) uuids = NULL;
    if (!parse_ids(n, &uuids))
        return FALSE;
    if (!uuids)
        return TRUE; /* empty = any engine */
    *out = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    for (guint i = 0; i < uuids->len; i++)
        g_hash_table_add(*out, g_strdup(uuids->pdata[i]));
    return TRUE;
}

/* A number, or 0 for anything else (as ipyparallel's clients only send numbers). */
static double json_number(JsonObject *md, const char *name)
{
    JsonNode *n = json_object_get_member(md, name);
    if (!n || !JSON_NODE_HOLDS_VALUE(n))
        return 0;
    GType t = json_node_get_value_type(n);
    if (t == G_TYPE_INT64)
        return (double)json_node_get_int(n);
    if (t == G_TYPE_DOUBLE)
        return json_node_get_double(n);
    return 0;
}

static gboolean parse_metadata(TaskJob *tj, JsonObject *md)
{
    double retries = json_number(md, "retries");
    tj->retries = retries > 0 ? (guint)MIN(retries, G_MAXINT32) : 0;
    double timeout_ms = MIN(json_number(md, "timeout") * 1000.0, (double)G_MAXINT32);
    tj->timeout_ms = timeout_ms > 0 ? (guint)timeout_ms : 0;
    if (timeout_ms > tj->timeout_ms)
        tj->timeout_ms++; /* round up: 0.0001 s still means "some limit" */
    return parse_targets(md, &tj->targets) && parse_dep(md, "after", &tj->after) &&
           parse_dep(md, "follow", &tj->follow);
}

/* ---- jobs ------------------------------------------------------------------------------- */

static TaskJob *task_job_ref(TaskJob *tj)
{
    tj->refs++;
    return tj;
}

static void task_job_unref(TaskJob *tj)
{
    if (--tj->refs > 0)
        return;
    if (tj->targets)
        g_hash_table_destroy(tj->targets);
    if (tj->blacklist)
        g_hash_table_destroy(tj->blacklist);
    if (tj->after.ids)
        g_ptr_array_unref(tj->after.ids);
    if (tj->follow.ids)
        g_ptr_array_unref(tj->follow.ids);
    g_free(tj->msg_id);
    g_free(tj);
}

static gint job_seq_cmp(gconstpointer a, gconstpointer b)
{
    const TaskJob *x = *(TaskJob *const *)a, *y = *(TaskJob *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static gint queue_seq_cmp(gconstpointer a, gconstpointer b, gpointer unused)
{
    (void)unused;
    const TaskJob *x = a, *y = b;
    return x->queue_seq < y->queue_seq ? -1 : x->queue_seq > y->queue_seq;
}

/* Index a waiting job under every id it waits for that has not finished yet. */
static void graph_index(TaskSched *ts, TaskJob *tj, const Dep *d)
{
    for (guint i = 0; i < dep_len(d); i++) {
        const char *id = d->ids->pdata[i];
        const Fact *f = fact_lookup(ts, id);
        if (!f || f->outcome != FACT_PENDING)
            continue;
        GHashTable *waiters = g_hash_table_lookup(ts->graph, id);
        if (!waiters) {
            waiters = g_hash_table_new(g_direct_hash, g_direct_equal);
            g_hash_table_insert(ts->graph, g_strdup(id), waiters);
        }
        g_hash_table_add(waiters, tj);
    }
}

static void graph_unindex(TaskSched *ts, TaskJob *tj, const Dep *d)
{
    for (guint i = 0; i < dep_len(d); i++) {
        const char *id = d->ids->pdata[i];
        GHashTable *waiters = g_hash_table_lookup(ts->graph, id);
        if (waiters && g_hash_table_remove(waiters, tj) && g_hash_table_size(waiters) == 0)
            g_hash_table_remove(ts->graph, id);
    }
}

/* A waiting job either sits in the FIFO queue (its `after` is met: it waits for an engine
 * that has room and suits its targets and `follow`), or is blocked on `after` and reachable
 * only through the graph index, until a task it waits for finishes. Blocked jobs never cost
 * anything when capacity appears. */
static void enqueue(TaskSched *ts, TaskJob *tj)
{
    g_assert(tj->state == JOB_IDLE);
    tj->state = JOB_WAITING;
    tj->queue_seq = ts->next_queue_seq++;
    tj->queue_pos = dep_met(ts, &tj->after, 0) ? g_sequence_append(ts->queue, tj) : NULL;
    graph_index(ts, tj, &tj->after);
    graph_index(ts, tj, &tj->follow);
    if (tj->timeout_ms) /* the wait limit restarts with every wait */
        tj->timer = ts->host->ops->timer_add(ts->host, tj->timeout_ms, tj);
}

static void dequeue(TaskSched *ts, TaskJob *tj)
{
    g_assert(tj->state == JOB_WAITING);
    if (tj->queue_pos)
        g_sequence_remove(tj->queue_pos);
    tj->queue_pos = NULL;
    graph_unindex(ts, tj, &tj->after);
    graph_unindex(ts, tj, &tj->follow);
    if (tj->timer) {
        ts->host->ops->timer_cancel(ts->host, tj->timer);
        tj->timer = 0;
    }
    tj->state = JOB_IDLE;
}

/* The job leaves the scheduler; returns its HerdJob for the final host call. */
static HerdJob *finish_job(TaskSched *ts, TaskJob *tj)
{
    if (tj->state == JOB_WAITING)
        dequeue(ts, tj);
    HerdJob *job = tj->job;
    tj->state = JOB_DONE;
    tj->job = NULL;
    job->sched = NULL;
    g_hash_table_remove(ts->live, tj->msg_id);
    task_job_unref(tj); /* the reference held while it was live */
    return job;
}

/* Answer with a controller-made error (ImpossibleDependency, InvalidDependency,
 * TaskTimeout); the id counts as FAILED for the tasks that depend on it. */
static void fail_job(TaskSched *ts, TaskJob *tj, const char *ename)
{
    g_autofree char *msg_id = g_strdup(tj->msg_id);
    fact_finish(ts, msg_id, FACT_FAILED, 0);
    HerdJob *job = finish_job(ts, tj);
    ts->host->ops->fail(ts->host, job, ename, "");
    schedule_update(ts, msg_id);
}

/* ---- engines ---------------------------------------------------------------------------- */

static gboolean has_room(const TaskSched *ts, const TaskEngine *e)
{
    return ts->hwm == 0 || e->load < ts->hwm;
}

static void set_load(TaskSched *ts, TaskEngine *e, guint load)
{
    gboolean had_room = has_room(ts, e);
    e->load = load;
    gboolean room = has_room(ts, e);
    if (!e->he || had_room == room)
        return;
    if (room)
        ts->n_free++;
    else
        ts->n_free--;
}

static void task_engine_free(TaskEngine *e)
{
    g_hash_table_destroy(e->jobs);
    g_free(e->uuid);
    g_free(e);
}

/* Some engine is exactly one below the high-water mark: capacity just appeared. */
static gboolean engine_just_freed(TaskSched *ts)
{
    if (ts->hwm == 0)
        return FALSE;
    for (GList *l = ts->engines.head; l; l = l->next)
        if (((TaskEngine *)l->data)->load == ts->hwm - 1)
            return TRUE;
    return FALSE;
}

static gboolean engine_can_run(TaskSched *ts, TaskEngine *e, TaskJob *tj)
{
    if (!has_room(ts, e))
        return FALSE;
    if (tj->blacklist && g_hash_table_contains(tj->blacklist, e->uuid))
        return FALSE;
    if (tj->targets && !g_hash_table_contains(tj->targets, e->uuid))
        return FALSE;
    return dep_is_empty(&tj->follow) || dep_met(ts, &tj->follow, e->serial);
}

/* Targets minus blacklist name no live engine: the job can never run. */
static gboolean targets_exhausted(TaskSched *ts, TaskJob *tj)
{
    if (tj->blacklist) {
        GHashTableIter it;
        gpointer uuid;
        g_hash_table_iter_init(&it, tj->blacklist);
        while (g_hash_table_iter_next(&it, &uuid, NULL))
            g_hash_table_remove(tj->targets, uuid);
    }
    GHashTableIter it;
    gpointer uuid;
    g_hash_table_iter_init(&it, tj->targets);
    while (g_hash_table_iter_next(&it, &uuid, NULL))
        if (g_hash_table_contains(ts->by_uuid, uuid))
            return FALSE;
    return TRUE;
}

static void submit(TaskSched *ts, TaskJob *tj, TaskEngine *e)
{
    if (tj->state == JOB_WAITING)
        dequeue(ts, tj);
    tj->state = JOB_RUNNING;
    tj->engine = e;
    g_hash_table_add(e->jobs, tj);
    set_load(ts, e, e->load + 1);
    g_queue_unlink(&ts->engines, &e->link); /* most recently assigned goes last */
    g_queue_push_tail_link(&ts->engines, &e->link);
    ts->host->ops->dispatch(ts->host, tj->job, e->he);
}

/* Run the job now if an engine can take it. Returns TRUE if it was sent (it may be
 * finished or waiting again on return: the core can answer a dispatch synchronously). May
 * fail it with ImpossibleDependency when no engine ever could. */
static gboolean maybe_run(TaskSched *ts, TaskJob *tj)
{
    if (ts->n_free == 0)
        return FALSE;
    g_ptr_array_set_size(ts->candidates, 0);
    g_array_set_size(ts->loads, 0);
    for (GList *l = ts->engines.head; l; l = l->next) {
        TaskEngine *e = l->data;
        if (!engine_can_run(ts, e, tj))
            continue;
        g_ptr_array_add(ts->candidates, e);
        g_array_append_val(ts->loads, e->load);
    }
    if (ts->candidates->len == 0) {
        if (tj->follow.all && follow_split_across_engines(ts, &tj->follow))
            fail_job(ts, tj, "ImpossibleDependency");
        else if (tj->targets && targets_exhausted(ts, tj))
            fail_job(ts, tj, "ImpossibleDependency");
        return FALSE;
    }
    guint i = sched_scheme_pick(ts->scheme, (const guint *)(gpointer)ts->loads->data,
                                ts->candidates->len, ts->rng);
    submit(ts, tj, ts->candidates->pdata[i]);
    return TRUE;
}

/* Try to run a job that is not waiting nor running; queue it if it could not run. */
static void run_or_enqueue(TaskSched *ts, TaskJob *tj)
{
    if (!maybe_run(ts, tj) && tj->state == JOB_IDLE)
        enqueue(ts, tj);
}

/* ---- graph updates ---------------------------------------------------------------------- */

/* Examine one waiting job: fail it if it became impossible, else start it (when may_run)
 * once its `after` is met, else move it from blocked to the FIFO queue at its original
 * place. Returns TRUE when it started and no engine has room left. */
static gboolean consider_job(TaskSched *ts, TaskJob *tj, gboolean may_run)
{
    if (tj->state != JOB_WAITING)
        return FALSE;
    if (dep_unreachable(ts, &tj->after) || dep_unreachable(ts, &tj->follow)) {
        fail_job(ts, tj, "ImpossibleDependency");
        return FALSE;
    }
    if (!dep_met(ts, &tj->after, 0))
        return FALSE;
    if (may_run && maybe_run(ts, tj))
        return ts->n_free == 0;
    if (tj->state == JOB_WAITING && !tj->queue_pos)
        tj->queue_pos = g_sequence_insert_sorted(ts->queue, tj, queue_seq_cmp, NULL);
    return FALSE;
}

/* The first waiting job queued after position `after_seq`. */
static GSequenceIter *queue_next_after(TaskSched *ts, guint64 after_seq)
{
    TaskJob probe = {.queue_seq = after_seq};
    GSequenceIter *it = g_sequence_search(ts->queue, &probe, queue_seq_cmp, NULL);
    /* search lands after equal items; step over the probe's own position if present */
    while (!g_sequence_iter_is_end(it) &&
           ((TaskJob *)g_sequence_get(it))->queue_seq <= after_seq)
        it = g_sequence_iter_next(it);
    return it;
}

/* The whole FIFO queue, in order. Jobs that neither run nor fail keep their places; jobs
 * queued during the scan are left for the next one. */
static void scan_queue(TaskSched *ts)
{
    guint64 end = ts->next_queue_seq;
    GSequenceIter *it = g_sequence_get_begin_iter(ts->queue);
    while (!g_sequence_iter_is_end(it)) {
        TaskJob *tj = task_job_ref(g_sequence_get(it));
        guint64 pos = tj->queue_seq;
        if (pos >= end) {
            task_job_unref(tj);
            break;
        }
        gboolean stop = consider_job(ts, tj, TRUE);
        if (tj->state == JOB_WAITING && tj->queue_pos && tj->queue_seq == pos)
            it = g_sequence_iter_next(tj->queue_pos);
        else
            it = queue_next_after(ts, pos);
        task_job_unref(tj);
        if (stop)
            break;
    }
}

/* The jobs that waited on a finished id, oldest submission first (referenced). */
static GPtrArray *sorted_waiters(GHashTable *waiters)
{
    GPtrArray *jobs = g_ptr_array_new_full(g_hash_table_size(waiters),
                                           (GDestroyNotify)task_job_unref);
    GHashTableIter it;
    gpointer tj;
    g_hash_table_iter_init(&it, waiters);
    while (g_hash_table_iter_next(&it, &tj, NULL))
        g_ptr_array_add(jobs, task_job_ref(tj));
    g_ptr_array_sort(jobs, job_seq_cmp);
    return jobs;
}

/* msg_id finished (NULL: engines or capacity changed): start or fail what waited on it.
 * When capacity appeared the whole FIFO queue is scanned, after the finished id's
 * dependents took their places in it; otherwise only those dependents are tried. */
static void graph_update(TaskSched *ts, const char *msg_id)
{
    GHashTable *waiters = NULL;
    if (msg_id) {
        gpointer key = NULL;
        if (g_hash_table_steal_extended(ts->graph, msg_id, &key, (gpointer *)&waiters))
            g_free(key);
    }
    GPtrArray *woken = waiters ? sorted_waiters(waiters) : NULL;
    if (waiters)
        g_hash_table_destroy(waiters);
    gboolean full_scan = !msg_id || engine_just_freed(ts);
    gboolean stop = full_scan;
    for (guint i = 0; woken && i < woken->len; i++)
        if (consider_job(ts, woken->pdata[i], !stop))
            stop = TRUE; /* engines full: the rest only take their places */
    if (woken)
        g_ptr_array_unref(woken);
    if (full_scan)
        scan_queue(ts);
}

static void schedule_update(TaskSched *ts, const char *msg_id)
{
    g_queue_push_tail(&ts->updates, g_strdup(msg_id));
}

/* Run queued graph updates; only the outermost caller does (failures queue more). */
static void run_updates(TaskSched *ts)
{
    if (ts->updating)
        return;
    ts->updating = TRUE;
    while (!g_queue_is_empty(&ts->updates)) {
        char *msg_id = g_queue_pop_head(&ts->updates);
        graph_update(ts, msg_id);
        g_free(msg_id);
    }
    ts->updating = FALSE;
}

/* Plugin operations bracket their work with these: graph updates queued meanwhile run
 * when the outermost operation ends, never in the middle of another's bookkeeping. */
static void event_begin(TaskSched *ts)
{
    ts->in_event++;
}

static void event_end(TaskSched *ts)
{
    if (--ts->in_event == 0)
        run_updates(ts);
}

/* ---- replies ---------------------------------------------------------------------------- */

/* The engine declined the job (dependencies_met false) or failed it with retries left:
 * never offer it to that engine again, run it elsewhere or let it wait. */
static void handle_unmet(TaskSched *ts, TaskJob *tj, TaskEngine *e)
{
    if (!tj->blacklist)
        tj->blacklist = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_hash_table_add(tj->blacklist, g_strdup(e->uuid));
    gboolean blacklist_is_targets = tj->targets && g_hash_table_size(tj->targets) ==
                                                       g_hash_table_size(tj->blacklist);
    if (blacklist_is_targets) {
        GHashTableIter it;
        gpointer uuid;
        g_hash_table_iter_init(&it, tj->blacklist);
        while (blacklist_is_targets && g_hash_table_iter_next(&it, &uuid, NULL))
            blacklist_is_targets = g_hash_table_contains(tj->targets, uuid);
    }
    if (blacklist_is_targets)
        fail_job(ts, tj, "ImpossibleDependency");
    else
        run_or_enqueue(ts, tj);
    if (e->he && ts->hwm > 0 && e->load == ts->hwm - 1)
        schedule_update(ts, NULL);
}

static void discard_reply(TaskSched *ts, HerdReply *reply, gboolean owned)
{
    if (owned)
        ts->host->ops->reply_free(ts->host, reply);
}

/* The answer for a job running on e (an engine's reply, or one made by engine_error when
 * `owned`). */
static void on_reply(TaskSched *ts, TaskJob *tj, TaskEngine *e, HerdReply *reply, gboolean owned)
{
    g_hash_table_remove(e->jobs, tj);
    tj->engine = NULL;
    tj->state = JOB_IDLE;
    if (e->he)
        set_load(ts, e, e->load - 1);

    gboolean ok = g_strcmp0(reply->status, "ok") == 0;
    if (!reply->dependencies_met) {
        discard_reply(ts, reply, owned); /* retries are not consumed */
        handle_unmet(ts, tj, e);
    } else if (!ok && tj->retries > 0) {
        tj->retries--;
        discard_reply(ts, reply, owned);
        handle_unmet(ts, tj, e);
    } else {
        g_autofree char *msg_id = g_strdup(tj->msg_id);
        fact_finish(ts, msg_id, ok ? FACT_COMPLETED : FACT_FAILED, e->serial);
        HerdJob *job = finish_job(ts, tj);
        ts->host->ops->deliver(ts->host, job, reply);
        schedule_update(ts, msg_id);
    }
}

/* A dead engine's stranded delay ran out: what it never answered gets an EngineError,
 * which goes through retries like any failure. */
static void strand(TaskSched *ts, TaskEngine *e)
{
    g_ptr_array_remove_fast(ts->dead, e);
    GPtrArray *jobs = g_ptr_array_new_with_free_func((GDestroyNotify)task_job_unref);
    GHashTableIter it;
    gpointer tj;
    g_hash_table_iter_init(&it, e->jobs);
    while (g_hash_table_iter_next(&it, &tj, NULL))
        g_ptr_array_add(jobs, task_job_ref(tj));
    g_ptr_array_sort(jobs, job_seq_cmp);
    for (guint i = 0; i < jobs->len; i++) {
        TaskJob *j = jobs->pdata[i];
        if (j->state != JOB_RUNNING || j->engine != e)
            continue;
        HerdReply *r = ts->host->ops->engine_error(ts->host, j->job, e->uuid);
        on_reply(ts, j, e, r, TRUE);
    }
    g_ptr_array_unref(jobs);
    task_engine_free(e);
}

/* ---- plugin operations ------------------------------------------------------------------ */

static gpointer task_create(HerdSchedHost *host, GKeyFile *conf, const char *group, GError **err)
{
    static const char *const keys[] = {"scheme", "hwm", "stranded_delay_ms", "history_limit",
                                       NULL};
    SchedScheme scheme;
    guint hwm, delay, history;
    if (!sched_opt_check_keys(conf, group, keys, err) ||
        !sched_opt_scheme(conf, group, &scheme, err) ||
        !sched_opt_uint(conf, group, "hwm", 0, G_MAXINT32, 1, &hwm, err) ||
        !sched_opt_uint(conf, group, "stranded_delay_ms", 0, G_MAXINT32, 5000, &delay, err) ||
        !sched_opt_uint(conf, group, "history_limit", 1, G_MAXINT32, 100000, &history, err))
        return NULL;
    TaskSched *ts = g_new0(TaskSched, 1);
    ts->host = host;
    ts->scheme = scheme;
    ts->hwm = scheme == SCHED_SCHEME_PURE ? 0 : hwm; /* a ZMQ relay has no hwm */
    ts->stranded_delay_ms = delay;
    ts->history_limit = history;
    ts->rng = g_rand_new();
    g_queue_init(&ts->engines);
    ts->by_uuid = g_hash_table_new(herd_str_hash, g_str_equal);
    ts->dead = g_ptr_array_new();
    ts->facts = g_hash_table_new_full(herd_str_hash, g_str_equal, NULL, g_free);
    ts->live = g_hash_table_new(herd_str_hash, g_str_equal);
    ts->queue = g_sequence_new(NULL);
    ts->graph = g_hash_table_new_full(herd_str_hash, g_str_equal, g_free,
                                      (GDestroyNotify)g_hash_table_destroy);
    g_queue_init(&ts->updates);
    ts->candidates = g_ptr_array_new();
    ts->loads = g_array_new(FALSE, FALSE, sizeof(guint));
    return ts;
}

static void task_destroy(gpointer self)
{
    TaskSched *ts = self;
    /* Unfinished jobs belong to the core: forget them, cancel what we armed for them. */
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, ts->live);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        TaskJob *tj = value;
        if (tj->timer)
            ts->host->ops->timer_cancel(ts->host, tj->timer);
        tj->refs = 1;
        task_job_unref(tj);
    }
    g_hash_table_destroy(ts->live);
    while (!g_queue_is_empty(&ts->engines)) {
        TaskEngine *e = g_queue_pop_head_link(&ts->engines)->data;
        task_engine_free(e);
    }
    for (guint i = 0; i < ts->dead->len; i++) {
        TaskEngine *e = ts->dead->pdata[i];
        ts->host->ops->timer_cancel(ts->host, e->stranded_timer);
        task_engine_free(e);
    }
    g_ptr_array_unref(ts->dead);
    g_hash_table_destroy(ts->by_uuid);
    g_hash_table_destroy(ts->facts);
    g_sequence_free(ts->queue);
    g_hash_table_destroy(ts->graph);
    g_queue_clear_full(&ts->updates, g_free);
    g_ptr_array_unref(ts->candidates);
    g_array_unref(ts->loads);
    g_rand_free(ts->rng);
    g_free(ts);
}

static void task_engine_up(gpointer self, HerdEngine *he)
{
    TaskSched *ts = self;
    TaskEngine *e = g_new0(TaskEngine, 1);
    e->tag = TAG_ENGINE;
    e->he = he;
    e->uuid = g_strdup(he->uuid);
    e->serial = ++ts->next_engine_serial;
    e->jobs = g_hash_table_new(g_direct_hash, g_direct_equal);
    e->link.data = e;
    he->sched = e;
    event_begin(ts);
    g_queue_push_head_link(&ts->engines, &e->link); /* the least recently used of all */
    g_hash_table_insert(ts->by_uuid, e->uuid, e);
    ts->n_free++;
    schedule_update(ts, NULL);
    event_end(ts);
}

static void task_engine_down(gpointer self, HerdEngine *he)
{
    TaskSched *ts = self;
    TaskEngine *e = he->sched;
    if (!e)
        return;
    event_begin(ts);
    g_queue_unlink(&ts->engines, &e->link);
    g_hash_table_remove(ts->by_uuid, e->uuid);
    if (has_room(ts, e))
        ts->n_free--;
    e->he = NULL;
    he->sched = NULL;
    if (g_hash_table_size(e->jobs) == 0) {
        task_engine_free(e);
    } else {
        /* Results may still be on their way: wait before declaring the work lost. */
        e->stranded_timer = ts->host->ops->timer_add(ts->host, ts->stranded_delay_ms, e);
        g_ptr_array_add(ts->dead, e);
    }
    /* Waiting jobs whose only targets were this engine can now be failed. */
    schedule_update(ts, NULL);
    event_end(ts);
}

static void task_request(gpointer self, HerdJob *job)
{
    TaskSched *ts = self;
    if (g_hash_table_contains(ts->live, job->msg_id)) {
        g_autofree char *why = g_strdup_printf("msg_id '%s' is already queued", job->msg_id);
        ts->host->ops->fail(ts->host, job, "ValueError", why);
        return;
    }
    event_begin(ts);
    TaskJob *tj = g_new0(TaskJob, 1);
    tj->tag = TAG_JOB;
    tj->refs = 1; /* held while live */
    tj->job = job;
    tj->msg_id = g_strdup(job->msg_id);
    tj->seq = ts->next_seq++;
    job->sched = tj;
    g_hash_table_insert(ts->live, tj->msg_id, tj);
    fact_begin(ts, tj->msg_id);
    task_job_ref(tj); /* for this call */

    if (!parse_metadata(tj, job->metadata)) {
        fail_job(ts, tj, "InvalidDependency");
    } else {
        /* Drop the after-ids that already finished as wanted; a met `after` is no
         * dependency at all. */
        Dep *after = &tj->after;
        if (after->all)
            for (guint i = dep_len(after); i-- > 0;)
                if (fact_counts(after, fact_lookup(ts, after->ids->pdata[i])))
                    g_ptr_array_remove_index_fast(after->ids, i);
        if (dep_met(ts, after, 0) && after->ids)
            g_ptr_array_set_size(after->ids, 0);

        const char *verdict = NULL;
        const Dep *deps[] = {&tj->after, &tj->follow};
        for (guint i = 0; i < G_N_ELEMENTS(deps) && !verdict; i++) {
            if (dep_is_empty(deps[i]))
                continue;
            if (!dep_is_valid(ts, deps[i], tj->msg_id))
                verdict = "InvalidDependency";
            else if (dep_unreachable(ts, deps[i]))
                verdict = "ImpossibleDependency";
        }
        if (verdict)
            fail_job(ts, tj, verdict);
        else if (dep_is_empty(after))
            run_or_enqueue(ts, tj);
        else
            enqueue(ts, tj);
    }
    task_job_unref(tj);
    event_end(ts);
}

static void task_reply(gpointer self, HerdJob *job, HerdReply *reply)
{
    TaskSched *ts = self;
    TaskJob *tj = job->sched;
    if (!tj || tj->state != JOB_RUNNING)
        return;
    TaskEngine *e = tj->engine;
    /* Only the engine running the job may answer it. A reply without an engine comes
     * from one that is gone: accept it only if the job's engine is gone too. */
    if (reply->engine ? reply->engine->sched != e : e->he != NULL)
        return;
    event_begin(ts);
    task_job_ref(tj);
    on_reply(ts, tj, e, reply, FALSE);
    task_job_unref(tj);
    if (!e->he && e->stranded_timer && g_hash_table_size(e->jobs) == 0) {
        /* its last result arrived after all: nothing is stranded */
        ts->host->ops->timer_cancel(ts->host, e->stranded_timer);
        g_ptr_array_remove_fast(ts->dead, e);
        task_engine_free(e);
    }
    event_end(ts);
}

static void task_timer(gpointer self, gpointer data)
{
    TaskSched *ts = self;
    event_begin(ts);
    if (*(TimerTag *)data == TAG_ENGINE) {
        TaskEngine *e = data;
        e->stranded_timer = 0;
        strand(ts, e);
    } else {
        TaskJob *tj = data;
        tj->timer = 0;
        if (tj->state == JOB_WAITING)
            fail_job(ts, tj, "TaskTimeout");
    }
    event_end(ts);
}

static const char *task_scheme(gpointer self)
{
    return sched_scheme_name(((TaskSched *)self)->scheme);
}

static const HerdSchedulerOps task_ops = {
    .create = task_create,
    .destroy = task_destroy,
    .engine_up = task_engine_up,
    .engine_down = task_engine_down,
    .request = task_request,
    .reply = task_reply,
    .timer = task_timer,
    .scheme = task_scheme,
};

static const HerdPluginDescriptor task_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_SCHEDULER,
    .name = "task",
    .description = "ipyparallel task scheduler: targets, after/follow, retries, timeouts, hwm",
    .init = NULL,
    .ops = &task_ops,
};

HERD_PLUGIN_DEFINE(task_descriptor)
