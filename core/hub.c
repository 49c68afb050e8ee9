/* herd — the hub: engine registry, heartbeat monitor, notifications, queries, bookkeeping.
 *
 * Membership follows ipyparallel 7.1 (spec §5): an engine is registered only after its
 * first heartbeat echo (its sockets are connected by then), ids count up from 0 and are
 * never reused, and a heart that misses more than `heartbeat_misses` beats is unregistered.
 */
#define G_LOG_DOMAIN "herd"
#include "controller-private.h"
#include "herd/hash.h"
#include "hub-queries.h"

#include <errno.h>
#include <string.h>

#define COMPLETED_IDS_MIN 1024

/* ---------------------------------------------------------------- helpers */

static JsonNode *new_object_node(JsonObject **obj)
{
    JsonNode *n = json_node_alloc();
    *obj = json_object_new();
    json_node_init_object(n, *obj);
    json_object_unref(*obj); /* the node holds it */
    return n;
}

void herd_hub_drop(HerdController *ctl, const char *where, const char *why)
{
    ctl->n_dropped++;
    g_warning("%s: dropped a message: %s (%" G_GUINT64_FORMAT " dropped so far)", where, why, ctl->n_dropped);
}

/* Reply on the registration socket: the request's routing prefix, then a signed message. */
void herd_hub_reply(HerdController *ctl, const HerdFrames *req, const char *msg_type, JsonNode *content,
                    const HerdFrames *buffers)
{
    HerdFrames out;
    herd_frames_init(&out);
    for (gint i = 0; i < req->delim; i++)
        herd_frames_push_frame_copy(&out, req, (guint)i);
    herd_session_build_node(ctl->session, &out, msg_type, herd_frame_bytes(req, herd_wire(req, HERD_WIRE_HEADER)),
                            NULL, content, NULL);
    for (guint i = 0; buffers && i < buffers->n; i++)
        herd_frames_push_frame_copy(&out, buffers, i);
    if (herd_frames_send(ctl->registration, &out) < 0) {
        g_warning("registration: cannot send %s: %s", msg_type, zmq_strerror(errno));
        herd_frames_clear(&out);
    }
}

void herd_hub_reply_error(HerdController *ctl, const HerdFrames *req, const char *msg_type, const char *ename,
                          const char *evalue)
{
    JsonNode *content = herd_error_content(ename, evalue);
    herd_hub_reply(ctl, req, msg_type, content, NULL);
    json_node_unref(content);
}

static void notify(HerdController *ctl, const char *msg_type, HerdBytes parent, JsonNode *content)
{
    HerdFrames out;
    herd_frames_init(&out);
    herd_session_build_node(ctl->session, &out, msg_type, parent, NULL, content, NULL);
    if (herd_frames_send(ctl->notification, &out) < 0) {
        g_warning("notification: cannot send %s: %s", msg_type, zmq_strerror(errno));
        herd_frames_clear(&out);
    }
}

static void notify_engine(HerdController *ctl, const char *msg_type, Engine *e)
{
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_int_member(o, "id", e->pub.id);
    json_object_set_string_member(o, "uuid", e->uuid);
    notify(ctl, msg_type, HERD_BYTES_NULL, n);
    json_node_unref(n);
}

/* <profile>/log/engines<cluster_id>.json, as ipyparallel writes it for --restore.
 * Membership changes only mark it stale; it is rewritten at the next heartbeat, so 1000
 * engines registering cost one write per beat, not 1000 growing ones. */
static void mark_engine_state_stale(HerdController *ctl)
{
    ctl->engine_state_stale = TRUE;
}

/* {"<id>": "<uuid>", ...}: the registered engines, as connection_reply and the engine
 * state file list them. */
static JsonObject *registered_engines(HerdController *ctl)
{
    JsonObject *engines = json_object_new();
    GHashTableIter it;
    gpointer key, val;
    g_hash_table_iter_init(&it, ctl->engines_by_id);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        Engine *e = val;
        g_autofree char *id = g_strdup_printf("%d", e->pub.id);
        json_object_set_string_member(engines, id, e->uuid);
    }
    return engines;
}

static void write_engine_state(HerdController *ctl)
{
    ctl->engine_state_stale = FALSE;
    if (!ctl->engine_state_file)
        return;
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_object_member(o, "engines", registered_engines(ctl));
    json_object_set_int_member(o, "next_id", ctl->next_engine_id);
    gsize len;
    g_autofree char *text = herd_json_to_string(n, &len);
    json_node_unref(n);
    g_autoptr(GError) err = NULL;
    /* atomic (rename), not durable: a crash loses at most one beat of membership */
    if (!g_file_set_contents_full(ctl->engine_state_file, text, (gssize)len, G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                  &err))
        g_warning("cannot write the engine state file: %s", err->message);
}

/* ---------------------------------------------------------------- engines */

static Engine *engine_new(int id, const char *uuid)
{
    Engine *e = g_new0(Engine, 1);
    e->uuid = g_strdup(uuid);
    e->pub.id = id;
    e->pub.uuid = e->uuid;
    /* keyed on the jobs' own msg_id strings: a job leaves before it is freed */
    e->queue = g_hash_table_new(herd_str_hash, g_str_equal);
    e->tasks = g_hash_table_new(herd_str_hash, g_str_equal);
    e->completed_ids = g_queue_new();
    return e;
}

static void engine_free(Engine *e)
{
    g_hash_table_destroy(e->queue);
    g_hash_table_destroy(e->tasks);
    g_queue_free_full(e->completed_ids, g_free);
    g_free(e->uuid);
    g_free(e);
}

Engine *herd_hub_engine(HerdController *ctl, const char *uuid)
{
    Engine *e = g_hash_table_lookup(ctl->engines_by_uuid, uuid);
    return e && e->registered ? e : NULL;
}

static gboolean id_taken(HerdController *ctl, int id)
{
    if (g_hash_table_contains(ctl->engines_by_id, GINT_TO_POINTER(id)))
        return TRUE;
    GHashTableIter it;
    gpointer key, val;
    g_hash_table_iter_init(&it, ctl->engines_by_uuid);
    while (g_hash_table_iter_next(&it, &key, &val))
        if (((Engine *)val)->pub.id == id)
            return TRUE;
    return FALSE;
}

static void stall_expired(gpointer data)
{
    Engine *e = data;
    HerdController *ctl = e->pub.sched; /* pending engines carry the controller here */
    e->stall_timer = 0;
    g_warning("engine %d (%s) replied to registration but never sent a heartbeat: dropped", e->pub.id, e->uuid);
    g_hash_table_remove(ctl->engines_by_uuid, e->uuid);
    engine_free(e);
}

static void complete_registration(HerdController *ctl, Engine *e)
{
    if (e->stall_timer)
        herd_loop_timer_cancel(ctl->loop, e->stall_timer);
    e->stall_timer = 0;
    e->pub.sched = NULL;
    e->registered = TRUE;
    g_hash_table_insert(ctl->engines_by_id, GINT_TO_POINTER(e->pub.id), e);
    g_message("engine %d registered (%s)", e->pub.id, e->uuid);
    notify_engine(ctl, "registration_notification", e);
    herd_router_engine_up(ctl, e);
    mark_engine_state_stale(ctl);
}

static void forget_jobs_on(HerdController *ctl, Engine *e)
{
    for (int k = 0; k < CH_COUNT; k++) {
        GHashTable *jobs = ctl->ch[k].jobs;
        if (!jobs)
            continue;
        GHashTableIter it;
        gpointer key, val;
        g_hash_table_iter_init(&it, jobs);
        while (g_hash_table_iter_next(&it, &key, &val)) {
            Job *job = val;
            if (job->engine == e) {
                herd_hub_job_undispatched(ctl, job);
                job->engine = NULL;
            }
        }
    }
}

static void unregister_engine(HerdController *ctl, Engine *e, const char *why)
{
    g_message("engine %d unregistered (%s): %s", e->pub.id, e->uuid, why);
    g_hash_table_remove(ctl->engines_by_id, GINT_TO_POINTER(e->pub.id));
    g_hash_table_remove(ctl->engines_by_uuid, e->uuid);
    g_hash_table_remove(ctl->hearts, e->uuid);
    notify_engine(ctl, "unregistration_notification", e);
    /* schedulers finish or re-route what was on it (the MUX scheduler records EngineError) */
    herd_router_engine_down(ctl, e);
    forget_jobs_on(ctl, e);
    mark_engine_state_stale(ctl);
    engine_free(e);
}

/* ---------------------------------------------------------------- heartbeat */

static void beat(gpointer data);

static void schedule_beat(HerdController *ctl)
{
    herd_loop_timer_add(ctl->loop, (guint)ctl->cfg->ping_ms, beat, ctl);
}

static gint cmp_engine_id(gconstpointer a, gconstpointer b)
{
    const Engine *x = *(Engine *const *)a, *y = *(Engine *const *)b;
    return x->pub.id < y->pub.id ? -1 : (x->pub.id > y->pub.id);
}

static void beat(gpointer data)
{
    HerdController *ctl = data;
    GHashTableIter it;
    gpointer key, val;

    /* new hearts: complete pending registrations, lowest id first (clients, 7.1's under
     * scheme "pure" especially, expect ids to appear in order) */
    GPtrArray *ready = g_ptr_array_new();
    g_hash_table_iter_init(&it, ctl->responded);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        if (g_hash_table_contains(ctl->hearts, key))
            continue;
        g_hash_table_insert(ctl->hearts, g_strdup(key), GINT_TO_POINTER(0));
        Engine *e = g_hash_table_lookup(ctl->engines_by_uuid, key);
        if (e && !e->registered)
            g_ptr_array_add(ready, e);
        else if (!e)
            g_debug("heartbeat from unknown heart %s", (const char *)key);
    }
    g_ptr_array_sort(ready, cmp_engine_id);
    for (guint i = 0; i < ready->len; i++)
        complete_registration(ctl, ready->pdata[i]);
    g_ptr_array_free(ready, TRUE);
    /* missed beats */
    GPtrArray *stopped = g_ptr_array_new_with_free_func(g_free);
    g_hash_table_iter_init(&it, ctl->hearts);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        if (g_hash_table_contains(ctl->responded, key)) {
            g_hash_table_iter_replace(&it, GINT_TO_POINTER(0));
            continue;
        }
        int misses = GPOINTER_TO_INT(val) + 1;
        if (misses > ctl->cfg->heartbeat_misses)
            g_ptr_array_add(stopped, g_strdup(key));
        else
            g_hash_table_iter_replace(&it, GINT_TO_POINTER(misses));
    }
    for (guint i = 0; i < stopped->len; i++) {
        const char *uuid = stopped->pdata[i];
        g_hash_table_remove(ctl->hearts, uuid);
        Engine *e = g_hash_table_lookup(ctl->engines_by_uuid, uuid);
        if (e && e->registered)
            unregister_engine(ctl, e, "heartbeat stopped");
    }
    g_ptr_array_free(stopped, TRUE);
    g_hash_table_remove_all(ctl->responded);
    if (ctl->engine_state_stale)
        write_engine_state(ctl);

    /* next ping: any token unique per beat; a late echo of the previous one still counts */
    memcpy(ctl->prev_token, ctl->ping_token, sizeof ctl->ping_token);
    ctl->beat++;
    g_snprintf(ctl->ping_token, sizeof ctl->ping_token, "%.6f",
               (double)(g_get_monotonic_time() - ctl->started_us) / 1e6);
    zmq_send(ctl->hb_ping, ctl->ping_token, strlen(ctl->ping_token), ZMQ_DONTWAIT);
    schedule_beat(ctl);
}

/* One heartbeat echo: [engine heart id, token]. */
static void count_pong(HerdFrames *f, gpointer data)
{
    HerdController *ctl = data;
    if (f->n != 2)
        return;
    const char *tok = herd_frame_data(f, 1);
    gsize len = herd_frame_size(f, 1);
    gboolean current = len == strlen(ctl->ping_token) && memcmp(tok, ctl->ping_token, len) == 0;
    gboolean late = len == strlen(ctl->prev_token) && len > 0 && memcmp(tok, ctl->prev_token, len) == 0;
    if (current || late) {
        /* a second echo in the same beat is simply counted once */
        g_hash_table_add(ctl->responded, g_strndup(herd_frame_data(f, 0), herd_frame_size(f, 0)));
    }
}

gboolean herd_hub_on_pong(void *sock, gpointer data)
{
    return herd_frames_recv_batch(sock, 1024, count_pong, data);
}

/* ---------------------------------------------------------------- registration & queries */

static void on_connection_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_string_member(o, "status", "ok");
    json_object_set_object_member(o, "engines", registered_engines(ctl));
    herd_hub_reply(ctl, req, "connection_reply", n, NULL);
    json_node_unref(n);
}

static JsonObject *engine_connection_info(HerdController *ctl)
{
    const HerdConnPorts *p = &ctl->engine_info.ports;
    JsonObject *ci = json_object_new();
    json_object_set_string_member(ci, "interface", ctl->engine_info.interface);
    json_object_set_int_member(ci, "registration", p->registration);
    json_object_set_int_member(ci, "control", p->control);
    json_object_set_int_member(ci, "mux", p->mux);
    json_object_set_int_member(ci, "task", p->task);
    json_object_set_int_member(ci, "iopub", p->iopub);
    json_object_set_int_member(ci, "hb_ping", p->hb_ping);
    json_object_set_int_member(ci, "hb_pong", p->hb_pong);
    JsonArray *b = json_array_new();
    for (int i = 0; i < p->n_broadcast_engine; i++)
        json_array_add_int_element(b, p->broadcast_engine[i]);
    json_object_set_array_member(ci, "broadcast", b);
    return ci;
}

static void on_registration_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    const char *uuid = herd_json_str(content, "uuid");
    if (!uuid || !*uuid) {
        herd_hub_drop(ctl, "registration", "registration_request without uuid");
        return;
    }
    gint64 requested = herd_json_int(content, "id", -1);
    int id;
    if (requested >= 0 && requested <= G_MAXINT && !id_taken(ctl, (int)requested)) {
        id = (int)requested;
        ctl->next_engine_id = MAX(ctl->next_engine_id, id + 1);
    } else {
        if (requested >= 0)
            g_warning("engine %s asked for id %" G_GINT64_FORMAT ", which is taken", uuid, requested);
        id = ctl->next_engine_id++;
    }
    /* the reply goes back with the request's own routing prefix; parent is {} as in 7.1 */
    HerdFrames out;
    herd_frames_init(&out);
    for (gint i = 0; i < req->delim; i++)
        herd_frames_push_frame_copy(&out, req, (guint)i);
    JsonObject *o;
    JsonNode *n;
    if (g_hash_table_contains(ctl->engines_by_uuid, uuid)) {
        g_autofree char *evalue = g_strdup_printf("\"uuid '%s' in use\"", uuid);
        g_warning("registration: %s", evalue);
        n = herd_error_content("KeyError", evalue);
    } else {
        n = new_object_node(&o);
        json_object_set_int_member(o, "id", id);
        json_object_set_string_member(o, "status", "ok");
        json_object_set_int_member(o, "hb_period", ctl->cfg->ping_ms);
        json_object_set_object_member(o, "connection_info", engine_connection_info(ctl));
        Engine *e = engine_new(id, uuid);
        e->pub.sched = ctl; /* until registered, for the stall timer */
        g_hash_table_insert(ctl->engines_by_uuid, e->uuid, e);
        double timeout_s = ctl->cfg->registration_timeout_s > 0 ? ctl->cfg->registration_timeout_s
                                                                  : MAX(30.0, ctl->cfg->ping_ms / 100.0);
        e->stall_timer = herd_loop_timer_add(ctl->loop, (guint)(timeout_s * 1000), stall_expired, e);
        g_info("engine %s asked to register: id %d, waiting for its heartbeat", uuid, id);
    }
    herd_session_build_node(ctl->session, &out, "registration_reply", HERD_BYTES_NULL, NULL, n, NULL);
    json_node_unref(n);
    if (herd_frames_send(ctl->registration, &out) < 0)
        herd_frames_clear(&out);
}

static void on_unregistration_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)req;
    JsonNode *idn = json_object_get_member(content, "id");
    if (!idn || !JSON_NODE_HOLDS_VALUE(idn) || json_node_get_value_type(idn) != G_TYPE_INT64) {
        g_info("unregistration_request without an engine id: ignored");
        return;
    }
    gint64 id = json_node_get_int(idn);
    Engine *e = id >= 0 && id <= G_MAXINT ? g_hash_table_lookup(ctl->engines_by_id, GINT_TO_POINTER((int)id)) : NULL;
    if (!e) {
        g_info("unregistration_request for unknown engine %" G_GINT64_FORMAT ": ignored", id);
        return;
    }
    unregister_engine(ctl, e, "unregistration_request");
}

static void finish_shutdown(gpointer data)
{
    HerdController *ctl = data;
    herd_loop_quit(ctl->loop, 0);
}

static void on_shutdown_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_string_member(o, "status", "ok");
    herd_hub_reply(ctl, req, "shutdown_reply", n, NULL);
    notify(ctl, "shutdown_notification", herd_frame_bytes(req, herd_wire(req, HERD_WIRE_HEADER)), n);
    json_node_unref(n);
    if (!ctl->shutting_down) {
        ctl->shutting_down = TRUE;
        g_message("shutdown requested by a client: stopping in 1 s");
        herd_loop_timer_add(ctl->loop, 1000, finish_shutdown, ctl);
    }
}

/* Python's repr of the bad targets list, e.g. [99] or ['abc']. */
static char *targets_repr(GPtrArray *bad)
{
    GString *s = g_string_new("[");
    for (guint i = 0; i < bad->len; i++)
        g_string_append_printf(s, "%s%s", i ? ", " : "", (const char *)bad->pdata[i]);
    g_string_append_c(s, ']');
    return g_string_free(s, FALSE);
}

static gint cmp_seq(gconstpointer a, gconstpointer b, gpointer table)
{
    guint64 x = GPOINTER_TO_SIZE(g_hash_table_lookup(table, *(const char *const *)a));
    guint64 y = GPOINTER_TO_SIZE(g_hash_table_lookup(table, *(const char *const *)b));
    return x < y ? -1 : (x > y);
}

/* A msg_id set as a JSON count, or as a list in submission order when verbose. */
static JsonNode *id_set_node(GHashTable *set, gboolean verbose)
{
    JsonNode *n = json_node_alloc();
    if (!verbose) {
        json_node_init_int(n, g_hash_table_size(set));
        return n;
    }
    guint len;
    gpointer *keys = g_hash_table_get_keys_as_array(set, &len);
    g_qsort_with_data(keys, (gint)len, sizeof(gpointer), cmp_seq, set);
    JsonArray *a = json_array_sized_new(len);
    for (guint i = 0; i < len; i++)
        json_array_add_string_element(a, keys[i]);
    g_free(keys);
    json_node_init_array(n, a);
    json_array_unref(a);
    return n;
}

static JsonNode *completed_node(Engine *e, gboolean verbose)
{
    JsonNode *n = json_node_alloc();
    if (!verbose) {
        json_node_init_int(n, (gint64)e->n_completed);
        return n;
    }
    JsonArray *a = json_array_new();
    for (GList *l = e->completed_ids->head; l; l = l->next)
        json_array_add_string_element(a, l->data);
    json_node_init_array(n, a);
    json_array_unref(a);
    return n;
}

static gint cmp_int(gconstpointer a, gconstpointer b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : (x > y);
}

/* Resolve a queue_request/load_request targets value into registered engines, or an
 * IndexError text as ipyparallel words it. */
static GPtrArray *resolve_targets(HerdController *ctl, JsonNode *tn, char **error)
{
    GPtrArray *out = g_ptr_array_new();
    if (!tn || JSON_NODE_HOLDS_NULL(tn)) {
        GArray *ids = g_array_new(FALSE, FALSE, sizeof(int));
        GHashTableIter it;
        gpointer key, val;
        g_hash_table_iter_init(&it, ctl->engines_by_id);
        while (g_hash_table_iter_next(&it, &key, &val)) {
            int id = GPOINTER_TO_INT(key);
            g_array_append_val(ids, id);
        }
        g_array_sort(ids, cmp_int);
        for (guint i = 0; i < ids->len; i++)
            g_ptr_array_add(out, g_hash_table_lookup(ctl->engines_by_id, GINT_TO_POINTER(g_array_index(ids, int, i))));
        g_array_free(ids, TRUE);
        return out;
    }
    JsonArray *list = NULL;
    JsonArray *single = NULL;
    if (JSON_NODE_HOLDS_ARRAY(tn)) {
        list = json_node_get_array(tn);
    } else {
        single = json_array_new();
        json_array_add_element(single, json_node_copy(tn));
        list = single;
    }
    GPtrArray *bad = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < json_array_get_length(list); i++) {
        JsonNode *t = json_array_get_element(list, i);
        Engine *e = NULL;
        char *repr = NULL;
        if (JSON_NODE_HOLDS_VALUE(t) && json_node_get_value_type(t) == G_TYPE_INT64) {
            gint64 id = json_node_get_int(t);
            if (id >= 0 && id <= G_MAXINT)
                e = g_hash_table_lookup(ctl->engines_by_id, GINT_TO_POINTER((int)id));
            repr = g_strdup_printf("%" G_GINT64_FORMAT, id);
        } else if (JSON_NODE_HOLDS_VALUE(t) && json_node_get_value_type(t) == G_TYPE_STRING) {
            e = herd_hub_engine(ctl, json_node_get_string(t));
            repr = g_strdup_printf("'%s'", json_node_get_string(t));
        } else {
            repr = g_strdup("<invalid>");
        }
        if (e)
            g_ptr_array_add(out, e);
        else
            g_ptr_array_add(bad, repr), repr = NULL;
        g_free(repr);
    }
    if (bad->len) {
        g_autofree char *r = targets_repr(bad);
        *error = g_strdup_printf("No Such Engine: %s", r);
    } else if (out->len == 0) {
        *error = g_strdup("No Engines Registered");
    }
    g_ptr_array_free(bad, TRUE);
    if (single)
        json_array_unref(single);
    return out;
}

/* The engines a queue_request or load_request names in "targets"; NULL once it answered
 * hub_error (IndexError) for a target that is not registered. */
static GPtrArray *query_targets(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    g_autofree char *error = NULL;
    GPtrArray *engines = resolve_targets(ctl, json_object_get_member(content, "targets"), &error);
    if (error) {
        herd_hub_reply_error(ctl, req, "hub_error", "IndexError", error);
        g_ptr_array_free(engines, TRUE);
        return NULL;
    }
    return engines;
}

static void on_queue_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    GPtrArray *engines = query_targets(ctl, req, content);
    if (!engines)
        return;
    gboolean verbose = herd_json_bool(content, "verbose", FALSE);
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_string_member(o, "status", "ok");
    for (guint i = 0; i < engines->len; i++) {
        Engine *e = engines->pdata[i];
        JsonObject *eo = json_object_new();
        json_object_set_member(eo, "queue", id_set_node(e->queue, verbose));
        json_object_set_member(eo, "completed", completed_node(e, verbose));
        json_object_set_member(eo, "tasks", id_set_node(e->tasks, verbose));
        g_autofree char *key = g_strdup_printf("%d", e->pub.id);
        json_object_set_object_member(o, key, eo);
    }
    json_object_set_member(o, "unassigned", id_set_node(ctl->unassigned, verbose));
    herd_hub_reply(ctl, req, "queue_reply", n, NULL);
    json_node_unref(n);
    g_ptr_array_free(engines, TRUE);
}

static void on_load_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    GPtrArray *engines = query_targets(ctl, req, content);
    if (!engines)
        return;
    JsonObject *o;
    JsonNode *n = new_object_node(&o);
    json_object_set_string_member(o, "status", "ok");
    for (guint i = 0; i < engines->len; i++) {
        Engine *e = engines->pdata[i];
        g_autofree char *key = g_strdup_printf("%d", e->pub.id);
        json_object_set_int_member(o, key, g_hash_table_size(e->queue) + g_hash_table_size(e->tasks));
    }
    herd_hub_reply(ctl, req, "load_reply", n, NULL);
    json_node_unref(n);
    g_ptr_array_free(engines, TRUE);
}

typedef void (*QueryFn)(HerdController *ctl, const HerdFrames *req, JsonObject *content);

static const struct {
    const char *msg_type;
    QueryFn fn;
} query_table[] = {
    { "connection_request", on_connection_request },
    { "registration_request", on_registration_request },
    { "unregistration_request", on_unregistration_request },
    { "queue_request", on_queue_request },
    { "load_request", on_load_request },
    { "shutdown_request", on_shutdown_request },
    { "result_request", herd_hub_on_result_request },
    { "history_request", herd_hub_on_history_request },
    { "db_request", herd_hub_on_db_request },
    { "purge_request", herd_hub_on_purge_request },
    { "resubmit_request", herd_hub_on_resubmit_request },
    { "become_dask_request", herd_hub_on_become_dask_request },
    { "stop_distributed_request", herd_hub_on_stop_distributed_request },
};

static void handle_query(HerdFrames *f, gpointer data)
{
    HerdController *ctl = data;
    if (f->delim < 1 || !herd_frames_is_wire(f)) {
        herd_hub_drop(ctl, "registration", f->delim < 0 ? "no <IDS|MSG> delimiter"
                                           : f->delim == 0 ? "no routing identity"
                                                           : "truncated message (fewer than 5 frames after the delimiter)");
        return;
    }
    HerdVerify v = herd_session_verify(ctl->session, f);
    if (v != HERD_VERIFY_OK) {
        herd_hub_drop(ctl, "registration", herd_verify_str(v));
        return;
    }
    g_autoptr(GError) err = NULL;
    JsonNode *hdr = herd_json_parse_object(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)), &err);
    if (!hdr) {
        herd_hub_drop(ctl, "registration", "header is not a JSON object");
        return;
    }
    JsonNode *content = herd_json_parse_object(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), &err);
    if (!content) {
        herd_hub_drop(ctl, "registration", "content is not a JSON object");
        json_node_unref(hdr);
        return;
    }
    const char *msg_type = herd_json_str(json_node_get_object(hdr), "msg_type");
    QueryFn fn = NULL;
    for (guint i = 0; msg_type && i < G_N_ELEMENTS(query_table); i++)
        if (strcmp(query_table[i].msg_type, msg_type) == 0)
            fn = query_table[i].fn;
    if (fn) {
        g_debug("registration: %s", msg_type);
        fn(ctl, f, json_node_get_object(content));
    } else {
        g_autofree char *evalue = g_strdup_printf("\"Bad Message Type: '%s'\"", msg_type ? msg_type : "None");
        g_warning("registration: unknown message type %s: answered hub_error", msg_type ? msg_type : "(none)");
        herd_hub_reply_error(ctl, f, "hub_error", "KeyError", evalue);
    }
    json_node_unref(hdr);
    json_node_unref(content);
}

gboolean herd_hub_on_registration(void *sock, gpointer data)
{
    return herd_frames_recv_batch(sock, 256, handle_query, data);
}

/* ---------------------------------------------------------------- iopub */

void herd_hub_iopub(HerdController *ctl, const HerdFrames *msg)
{
    HerdBytes hb = herd_frame_bytes(msg, herd_wire(msg, HERD_WIRE_HEADER));
    /* only shutdown_reply matters to membership; skip the parse for everything else */
    if (g_strstr_len(hb.data, (gssize)hb.len, "shutdown_reply")) {
        JsonNode *hdr = herd_json_parse_object(hb, NULL);
        JsonObject *ho = hdr ? json_node_get_object(hdr) : NULL;
        if (ho && g_strcmp0(herd_json_str(ho, "msg_type"), "shutdown_reply") == 0) {
            const char *session = herd_json_str(ho, "session");
            Engine *e = session ? herd_hub_engine(ctl, session) : NULL;
            if (e)
                unregister_engine(ctl, e, "engine shut down");
        }
        if (hdr)
            json_node_unref(hdr);
    }
    herd_hub_records_iopub(ctl, msg);
}

/* ---------------------------------------------------------------- job bookkeeping */

static void set_unassigned(HerdController *ctl, Job *job, gboolean on)
{
    if (on && !job->unassigned)
        g_hash_table_insert(ctl->unassigned, job->msg_id, GSIZE_TO_POINTER(job->seq));
    else if (!on && job->unassigned)
        g_hash_table_remove(ctl->unassigned, job->msg_id);
    job->unassigned = on;
}

void herd_hub_job_received(HerdController *ctl, Job *job)
{
    if (job->ch->kind == CH_TASK)
        set_unassigned(ctl, job, TRUE);
    herd_hub_records_request(ctl, job);
}

void herd_hub_job_dispatched(HerdController *ctl, Job *job, Engine *e)
{
    if (job->ch->kind == CH_MUX) {
        g_hash_table_insert(e->queue, job->msg_id, GSIZE_TO_POINTER(job->seq));
    } else if (job->ch->kind == CH_TASK) {
        set_unassigned(ctl, job, FALSE);
        g_hash_table_insert(e->tasks, job->msg_id, GSIZE_TO_POINTER(job->seq));
        herd_hub_records_engine(ctl, job, e);
    }
}

/* Off its engine's queue; a task goes back to the unassigned ones. */
void herd_hub_job_undispatched(HerdController *ctl, Job *job)
{
    Engine *e = job->engine;
    if (!e)
        return;
    if (job->ch->kind == CH_MUX) {
        g_hash_table_remove(e->queue, job->msg_id);
    } else if (job->ch->kind == CH_TASK) {
        g_hash_table_remove(e->tasks, job->msg_id);
        set_unassigned(ctl, job, TRUE);
    }
}

/* The job is about to be freed: out of every set that holds its msg_id. */
void herd_hub_job_forget(HerdController *ctl, Job *job)
{
    if (job->engine && job->ch->kind != CH_BROADCAST) {
        herd_hub_job_undispatched(ctl, job);
        job->engine = NULL;
    }
    set_unassigned(ctl, job, FALSE);
}

void herd_hub_job_finished(HerdController *ctl, Job *job, const HerdFrames *reply, Engine *e, const char *status,
                           const struct HerdMsgFields *fields)
{
    /* it leaves the unassigned set in herd_hub_job_forget, when the router frees it */
    /* aborted tasks are not counted as completed, aborted MUX requests are (as in 7.1) */
    if (e && !(job->ch->kind == CH_TASK && g_strcmp0(status, "aborted") == 0)) {
        e->n_completed++;
        g_queue_push_tail(e->completed_ids, g_strdup(job->msg_id));
        guint cap = MAX(COMPLETED_IDS_MIN, (guint)MAX(ctl->cfg->record_limit, 0));
        while (g_queue_get_length(e->completed_ids) > cap)
            g_free(g_queue_pop_head(e->completed_ids));
    }
    herd_hub_records_reply(ctl, job, reply, fields);
}

/* ---------------------------------------------------------------- lifecycle */

void herd_hub_init(HerdController *ctl)
{
    ctl->engines_by_uuid = g_hash_table_new(herd_str_hash, g_str_equal);
    ctl->engines_by_id = g_hash_table_new(g_direct_hash, g_direct_equal);
    ctl->hearts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    ctl->responded = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    ctl->unassigned = g_hash_table_new(herd_str_hash, g_str_equal); /* keys: the jobs' msg_id */
    ctl->sched_timers = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    ctl->started_us = g_get_monotonic_time();
    g_strlcpy(ctl->ping_token, "0.000000", sizeof ctl->ping_token);
    herd_hub_records_init(ctl);
}

void herd_hub_start(HerdController *ctl)
{
    zmq_send(ctl->hb_ping, ctl->ping_token, strlen(ctl->ping_token), ZMQ_DONTWAIT);
    schedule_beat(ctl);
}

void herd_hub_flush(HerdController *ctl)
{
    if (ctl->engine_state_stale)
        write_engine_state(ctl);
}

void herd_hub_free(HerdController *ctl)
{
    GHashTableIter it;
    gpointer key, val;
    if (ctl->engines_by_uuid) {
        g_hash_table_iter_init(&it, ctl->engines_by_uuid);
        while (g_hash_table_iter_next(&it, &key, &val)) {
            Engine *e = val;
            if (e->stall_timer)
                herd_loop_timer_cancel(ctl->loop, e->stall_timer);
            engine_free(e);
        }
        g_hash_table_destroy(ctl->engines_by_uuid);
    }
    if (ctl->engines_by_id)
        g_hash_table_destroy(ctl->engines_by_id);
    if (ctl->hearts)
        g_hash_table_destroy(ctl->hearts);
    if (ctl->responded)
        g_hash_table_destroy(ctl->responded);
    if (ctl->unassigned)
        g_hash_table_destroy(ctl->unassigned);
    if (ctl->sched_timers)
        g_hash_table_destroy(ctl->sched_timers);
    herd_hub_records_free(ctl);
}
