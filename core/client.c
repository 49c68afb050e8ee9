/* herd — native client: the C counterpart of ipyparallel.Client (see client.h). */
#include "herd/client.h"

#include <errno.h>
#include <string.h>

#include "herd/connfile.h"

G_DEFINE_QUARK(herd-client-error-quark, herd_client_error)

#define DEFAULT_CONNECT_TIMEOUT_MS 10000

/* Index of each socket in the poll array; replies come in on the first four. */
enum {
    SOCK_MUX,
    SOCK_TASK,
    SOCK_BROADCAST,
    SOCK_CONTROL,
    SOCK_IOPUB,
    SOCK_NOTIFICATION,
    SOCK_QUERY,
    N_SOCKS,
};

struct HerdClient {
    void *zctx;
    HerdSession *session;
    void *socks[N_SOCKS];
    guint next_sock;        /* round-robin start, so no socket starves the others */

    GHashTable *engine_uuid_by_id;  /* GINT_TO_POINTER(id) -> char* uuid */
    GHashTable *engine_id_by_uuid;  /* uuid (same string) -> GINT_TO_POINTER(id) */
    GArray *engine_list;            /* HerdClientEngine, rebuilt on demand */
    gboolean engine_list_stale;

    GHashTable *outstanding;        /* request msg_id -> GUINT_TO_POINTER(replies left) */
    GHashTable *direct;             /* outstanding MUX msg_id -> DirectRequest* */
    GHashTable *broadcasts;         /* outstanding broadcast msg_id -> BroadcastRequest* */
    GQueue held;                    /* HerdClientMsg* received, not yet returned */
    GQueue failed;                  /* synthesized replies, queued behind their notification */
    guint64 unexpected;
    guint64 rejected;
};

/* A MUX request in flight: failed locally if its engine unregisters (as ipyparallel does),
 * because no reply will ever come. */
typedef struct DirectRequest {
    char *engine_uuid;
    char *reply_type;
} DirectRequest;

static void direct_request_free(gpointer p)
{
    DirectRequest *d = p;
    g_free(d->engine_uuid);
    g_free(d->reply_type);
    g_free(d);
}

/* A broadcast request in flight, failed locally for each of its engines that unregisters
 * before answering (a coalescing one as a whole), as ipyparallel does: the controller
 * sends nothing for those engines. */
typedef struct BroadcastRequest {
    GPtrArray *waiting; /* uuids of the engines that have not answered yet */
    gboolean coalescing;
    char *reply_type;
} BroadcastRequest;

static void broadcast_request_free(gpointer p)
{
    BroadcastRequest *b = p;
    g_ptr_array_unref(b->waiting);
    g_free(b->reply_type);
    g_free(b);
}

const char *herd_channel_name(HerdChannel ch)
{
    switch (ch) {
    case HERD_CHANNEL_MUX: return "mux";
    case HERD_CHANNEL_TASK: return "task";
    case HERD_CHANNEL_BROADCAST: return "broadcast";
    case HERD_CHANNEL_CONTROL: return "control";
    }
    return "?";
}

static gboolean set_zmq_error(GError **err, const char *what)
{
    g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_ZMQ, "%s: %s", what, zmq_strerror(errno));
    return FALSE;
}

/* ---- messages ---- */

void herd_client_msg_free(HerdClientMsg *m)
{
    if (!m)
        return;
    for (guint i = 0; i < G_N_ELEMENTS(m->nodes); i++)
        if (m->nodes[i])
            json_node_unref(m->nodes[i]);
    g_free(m->buffers);
    herd_frames_clear(&m->frames);
    g_free(m);
}

/* Parse the four JSON parts of a received wire message into m. FALSE if one of them is
 * not a JSON object. */
static gboolean msg_parse(HerdClientMsg *m)
{
    const HerdFrames *f = &m->frames;
    JsonObject **slots[4] = { &m->header, &m->parent_header, &m->metadata, &m->content };
    for (guint i = 0; i < 4; i++) {
        m->nodes[i] = herd_json_parse_object(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER + i)), NULL);
        if (!m->nodes[i])
            return FALSE;
        *slots[i] = json_node_get_object(m->nodes[i]);
    }
    m->msg_type = herd_json_str(m->header, "msg_type");
    m->msg_id = herd_json_str(m->header, "msg_id");
    m->engine_uuid = herd_json_str(m->metadata, "engine");
    m->n_buffers = f->n - herd_wire(f, HERD_WIRE_BUFFERS);
    m->buffers = g_new0(HerdBytes, m->n_buffers + 1);
    for (guint i = 0; i < m->n_buffers; i++)
        m->buffers[i] = herd_frame_bytes(f, herd_wire(f, HERD_WIRE_BUFFERS) + i);
    return m->msg_type != NULL;
}

/* The request a reply answers: broadcast replies name the client's msg_id in
 * metadata.original_msg_id (their parent carries the per-engine rewritten id). */
static const char *reply_request_id(const HerdClientMsg *m)
{
    const char *original = herd_json_str(m->metadata, "original_msg_id");
    if (original && *original && herd_json_bool(m->metadata, "is_broadcast", FALSE))
        return original;
    return herd_json_str(m->parent_header, "msg_id");
}

/* ---- engine table ---- */

static void engine_add(HerdClient *c, int id, const char *uuid)
{
    char *owned = g_strdup(uuid);
    const char *old = g_hash_table_lookup(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    if (old)
        g_hash_table_remove(c->engine_id_by_uuid, old);
    g_hash_table_insert(c->engine_uuid_by_id, GINT_TO_POINTER(id), owned);
    g_hash_table_insert(c->engine_id_by_uuid, owned, GINT_TO_POINTER(id));
    c->engine_list_stale = TRUE;
}

static void engine_remove(HerdClient *c, int id)
{
    const char *uuid = g_hash_table_lookup(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    if (!uuid)
        return;
    g_hash_table_remove(c->engine_id_by_uuid, uuid);
    g_hash_table_remove(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    c->engine_list_stale = TRUE;
}

static gint compare_engine_id(gconstpointer a, gconstpointer b)
{
    const HerdClientEngine *ea = a, *eb = b;
    return (ea->id > eb->id) - (ea->id < eb->id);
}

const HerdClientEngine *herd_client_engines(HerdClient *c, guint *n_engines)
{
    if (c->engine_list_stale) {
        g_array_set_size(c->engine_list, 0);
        GHashTableIter it;
        gpointer key, value;
        g_hash_table_iter_init(&it, c->engine_uuid_by_id);
        while (g_hash_table_iter_next(&it, &key, &value)) {
            HerdClientEngine e = { GPOINTER_TO_INT(key), value };
            g_array_append_val(c->engine_list, e);
        }
        g_array_sort(c->engine_list, compare_engine_id);
        c->engine_list_stale = FALSE;
    }
    *n_engines = c->engine_list->len;
    return (const HerdClientEngine *)c->engine_list->data;
}

const char *herd_client_engine_uuid(HerdClient *c, int id)
{
    return g_hash_table_lookup(c->engine_uuid_by_id, GINT_TO_POINTER(id));
}

static int engine_id_of(HerdClient *c, const char *uuid)
{
    gpointer value;
    if (uuid && g_hash_table_lookup_extended(c->engine_id_by_uuid, uuid, NULL, &value))
        return GPOINTER_TO_INT(value);
    return -1;
}

static JsonObject *msg_take_object(HerdClientMsg *m, guint slot, JsonObject *o)
{
    m->nodes[slot] = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(m->nodes[slot], o);
    return o;
}

/* The reply a request gets when its engine unregistered first: an EngineError, like the
 * one ipyparallel raises locally. It has no frames and no buffers. `parent_id` is the id
 * the engine would have answered (for a plain broadcast "<msg_id>_<uuid>"); broadcast
 * replies carry the request's own id in metadata.original_msg_id, as engines' do. */
static HerdClientMsg *engine_died_reply(HerdChannel channel, const char *msg_id, const char *parent_id,
                                        const char *engine_uuid, const char *reply_type, gboolean coalescing,
                                        int engine_id)
{
    HerdClientMsg *m = g_new0(HerdClientMsg, 1);
    herd_frames_init(&m->frames);
    m->buffers = g_new0(HerdBytes, 1);
    m->header = msg_take_object(m, 0, json_object_new());
    json_object_set_string_member(m->header, "msg_type", reply_type);
    json_object_set_string_member(m->header, "msg_id", "");
    m->parent_header = msg_take_object(m, 1, json_object_new());
    json_object_set_string_member(m->parent_header, "msg_id", parent_id);
    m->metadata = msg_take_object(m, 2, json_object_new());
    json_object_set_string_member(m->metadata, "engine", engine_uuid);
    json_object_set_string_member(m->metadata, "status", "error");
    if (channel == HERD_CHANNEL_BROADCAST) {
        json_object_set_boolean_member(m->metadata, "is_broadcast", TRUE);
        json_object_set_boolean_member(m->metadata, "is_coalescing", coalescing);
        json_object_set_string_member(m->metadata, "original_msg_id", msg_id);
    }
    m->content = msg_take_object(m, 3, json_object_new());
    g_autofree char *evalue = g_strdup_printf("Engine %d died while running task '%s'", engine_id, parent_id);
    json_object_set_string_member(m->content, "status", "error");
    json_object_set_array_member(m->content, "traceback", json_array_new());
    json_object_set_string_member(m->content, "ename", "EngineError");
    json_object_set_string_member(m->content, "evalue", evalue);
    json_object_set_object_member(m->content, "engine_info", json_object_new());
    m->kind = HERD_MSG_REPLY;
    m->channel = channel;
    m->msg_type = herd_json_str(m->header, "msg_type");
    m->msg_id = herd_json_str(m->header, "msg_id");
    m->request_id = channel == HERD_CHANNEL_BROADCAST ? herd_json_str(m->metadata, "original_msg_id")
                                                      : herd_json_str(m->parent_header, "msg_id");
    m->status = "error";
    m->engine_uuid = herd_json_str(m->metadata, "engine");
    m->engine_id = engine_id;
    return m;
}

static void fail_direct_requests(HerdClient *c, const char *uuid, int engine_id)
{
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, c->direct);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        DirectRequest *d = value;
        if (!g_str_equal(d->engine_uuid, uuid))
            continue;
        g_hash_table_remove(c->outstanding, key);
        g_queue_push_tail(&c->failed, engine_died_reply(HERD_CHANNEL_MUX, key, key, d->engine_uuid, d->reply_type,
                                                        FALSE, engine_id));
        g_hash_table_iter_remove(&it);
    }
}

/* Count one answer of an outstanding request; FALSE once it expects no more. */
static gboolean count_answer(HerdClient *c, const char *msg_id)
{
    gpointer left;
    if (!g_hash_table_lookup_extended(c->outstanding, msg_id, NULL, &left))
        return FALSE;
    if (GPOINTER_TO_UINT(left) <= 1) {
        g_hash_table_remove(c->outstanding, msg_id);
        return FALSE;
    }
    g_hash_table_insert(c->outstanding, g_strdup(msg_id), GUINT_TO_POINTER(GPOINTER_TO_UINT(left) - 1));
    return TRUE;
}

static void fail_broadcast_requests(HerdClient *c, const char *uuid, int engine_id)
{
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, c->broadcasts);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        BroadcastRequest *b = value;
        guint i;
        if (!g_ptr_array_find_with_equal_func(b->waiting, uuid, g_str_equal, &i))
            continue;
        g_ptr_array_remove_index(b->waiting, i);
        g_autofree char *parent_id = b->coalescing ? g_strdup(key) : g_strdup_printf("%s_%s", (char *)key, uuid);
        g_queue_push_tail(&c->failed, engine_died_reply(HERD_CHANNEL_BROADCAST, key, parent_id, uuid,
                                                        b->reply_type, b->coalescing, engine_id));
        if (b->coalescing) /* failed as a whole: no merged reply will come */
            g_hash_table_remove(c->outstanding, key);
        if (b->coalescing || !count_answer(c, key))
            g_hash_table_iter_remove(&it);
    }
}

static void apply_notification(HerdClient *c, HerdClientMsg *m)
{
    int id = (int)herd_json_int(m->content, "id", -1);
    const char *uuid = herd_json_str(m->content, "uuid");
    if (g_str_equal(m->msg_type, "registration_notification") && id >= 0 && uuid)
        engine_add(c, id, uuid);
    else if (g_str_equal(m->msg_type, "unregistration_notification") && id >= 0) {
        engine_remove(c, id);
        if (uuid) {
            fail_direct_requests(c, uuid, id);
            fail_broadcast_requests(c, uuid, id);
        }
    }
    m->engine_uuid = uuid;
    m->engine_id = id;
}

/* ---- sockets ---- */

/* Report a failure of libherd's connection-file helpers as a client error. */
static void set_client_error(GError **err, int code, GError *local)
{
    g_set_error_literal(err, HERD_CLIENT_ERROR, code, local->message);
    g_error_free(local);
}

static void *open_socket(HerdClient *c, int type, const HerdConnInfo *ci, int port, GError **err)
{
    void *s = zmq_socket(c->zctx, type);
    if (!s) {
        set_zmq_error(err, "zmq_socket");
        return NULL;
    }
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
    if (type == ZMQ_SUB)
        zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    herd_conninfo_secure_socket(ci, s);
    GError *local = NULL;
    if (!herd_conninfo_connect(ci, s, port, &local)) {
        set_client_error(err, HERD_CLIENT_ERROR_ZMQ, local);
        zmq_close(s);
        return NULL;
    }
    return s;
}

static gboolean open_sockets(HerdClient *c, const HerdConnInfo *ci, GError **err)
{
    const struct {
        int index, type, port;
    } plan[] = {
        { SOCK_QUERY, ZMQ_DEALER, ci->ports.registration },
        { SOCK_MUX, ZMQ_DEALER, ci->ports.mux },
        { SOCK_TASK, ZMQ_DEALER, ci->ports.task },
        { SOCK_BROADCAST, ZMQ_DEALER, ci->ports.broadcast },
        { SOCK_CONTROL, ZMQ_DEALER, ci->ports.control },
        { SOCK_IOPUB, ZMQ_SUB, ci->ports.iopub },
        { SOCK_NOTIFICATION, ZMQ_SUB, ci->ports.notification },
    };
    for (guint i = 0; i < G_N_ELEMENTS(plan); i++) {
        c->socks[plan[i].index] = open_socket(c, plan[i].type, ci, plan[i].port, err);
        if (!c->socks[plan[i].index])
            return FALSE;
    }
    return TRUE;
}

guint herd_client_pollitems(HerdClient *c, zmq_pollitem_t *items, guint max_items)
{
    guint n = MIN(max_items, (guint)N_SOCKS);
    for (guint i = 0; i < n; i++)
        items[i] = (zmq_pollitem_t){ .socket = c->socks[i], .events = ZMQ_POLLIN };
    return n;
}

/* ---- receiving ---- */

/* A received message, verified and parsed; it takes the frames. NULL (and counted as
 * rejected) when the signature or the layout is wrong. */
static HerdClientMsg *msg_take(HerdClient *c, HerdFrames *f)
{
    HerdClientMsg *m = g_new0(HerdClientMsg, 1);
    m->frames = *f;
    herd_frames_init(f);
    m->engine_id = -1;
    if (!herd_frames_is_wire(&m->frames) || herd_session_verify(c->session, &m->frames) != HERD_VERIFY_OK ||
        !msg_parse(m)) {
        c->rejected++;
        herd_client_msg_free(m);
        return NULL;
    }
    return m;
}

/* What a message received on socket `index` means to the caller. NULL (m is freed) when
 * it is not for the caller: someone else's IOPub, a stray query reply. */
static HerdClientMsg *classify(HerdClient *c, guint index, HerdClientMsg *m)
{
    switch (index) {
    case SOCK_NOTIFICATION:
        m->kind = HERD_MSG_NOTIFICATION;
        apply_notification(c, m);
        return m;
    case SOCK_IOPUB: {
        /* Like ipyparallel: only output caused by our own requests. */
        const char *session = herd_json_str(m->parent_header, "session");
        if (!session || !g_str_equal(session, herd_session_id(c->session)))
            goto drop;
        m->kind = HERD_MSG_IOPUB;
        m->request_id = herd_json_str(m->parent_header, "msg_id");
        m->engine_id = engine_id_of(c, m->engine_uuid);
        return m;
    }
    case SOCK_QUERY:
        goto drop; /* late answers to connection requests */
    default:
        break;
    }
    m->kind = HERD_MSG_REPLY;
    m->channel = (HerdChannel)index;
    m->request_id = reply_request_id(m);
    m->status = herd_json_str(m->content, "status");
    m->engine_id = engine_id_of(c, m->engine_uuid);
    if (m->request_id && g_hash_table_contains(c->outstanding, m->request_id)) {
        BroadcastRequest *b = g_hash_table_lookup(c->broadcasts, m->request_id);
        if (!count_answer(c, m->request_id)) {
            g_hash_table_remove(c->direct, m->request_id);
            g_hash_table_remove(c->broadcasts, m->request_id);
        } else if (b && m->engine_uuid) {
            guint i;
            if (g_ptr_array_find_with_equal_func(b->waiting, m->engine_uuid, g_str_equal, &i))
                g_ptr_array_remove_index(b->waiting, i);
        }
    } else {
        c->unexpected++;
    }
    return m;

drop:
    herd_client_msg_free(m);
    return NULL;
}

/* Most messages a readable socket gives up per poll: receiving in batches spares a poll
 * system call per message under load, and the cap keeps the sockets taking turns. */
#define RECV_BATCH 64

typedef struct Incoming {
    HerdClient *c;
    guint index; /* the socket */
} Incoming;

/* Queue a received message for the caller, then any replies it made fail. */
static void hold_incoming(HerdFrames *f, gpointer data)
{
    Incoming *in = data;
    HerdClient *c = in->c;
    HerdClientMsg *m = msg_take(c, f);
    if (m && (m = classify(c, in->index, m)))
        g_queue_push_tail(&c->held, m);
    HerdClientMsg *failed;
    while ((failed = g_queue_pop_head(&c->failed)))
        g_queue_push_tail(&c->held, failed);
}

/* Poll every socket once for up to timeout_ms and queue what arrived in c->held; returns
 * the first queued message for the caller, or NULL. */
static HerdClientMsg *poll_once(HerdClient *c, int timeout_ms, GError **err)
{
    zmq_pollitem_t items[N_SOCKS];
    herd_client_pollitems(c, items, N_SOCKS);
    int rc = zmq_poll(items, N_SOCKS, timeout_ms);
    if (rc < 0) {
        if (errno != EINTR)
            set_zmq_error(err, "zmq_poll");
        return NULL;
    }
    for (guint k = 0; k < N_SOCKS && rc > 0; k++) {
        guint i = (c->next_sock + k) % N_SOCKS;
        if (!(items[i].revents & ZMQ_POLLIN))
            continue;
        Incoming in = { c, i };
        herd_frames_recv_batch(c->socks[i], RECV_BATCH, hold_incoming, &in);
    }
    c->next_sock = (c->next_sock + 1) % N_SOCKS;
    return g_queue_pop_head(&c->held);
}

HerdClientMsg *herd_client_recv(HerdClient *c, int timeout_ms, GError **err)
{
    if (!g_queue_is_empty(&c->held))
        return g_queue_pop_head(&c->held);
    gint64 deadline = timeout_ms < 0 ? -1 : g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        int wait_ms = -1;
        if (deadline >= 0)
            wait_ms = (int)MAX(0, (deadline - g_get_monotonic_time() + 999) / 1000);
        GError *local = NULL;
        HerdClientMsg *m = poll_once(c, wait_ms, &local);
        if (m || local) {
            if (local)
                g_propagate_error(err, local);
            return m;
        }
        if (deadline >= 0 && g_get_monotonic_time() >= deadline)
            return NULL;
    }
}

gboolean herd_client_wait_for_engines(HerdClient *c, guint n, int timeout_ms, GError **err)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
    while (g_hash_table_size(c->engine_uuid_by_id) < n) {
        gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
        if (left_ms <= 0) {
            g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_TIMEOUT,
                        "only %u of %u engines registered after %d ms",
                        g_hash_table_size(c->engine_uuid_by_id), n, timeout_ms);
            return FALSE;
        }
        GError *local = NULL;
        HerdClientMsg *m = poll_once(c, (int)left_ms, &local);
        if (local) {
            g_propagate_error(err, local);
            return FALSE;
        }
        if (m)
            g_queue_push_tail(&c->held, m); /* the caller still gets to see it */
    }
    return TRUE;
}

guint herd_client_outstanding(const HerdClient *c)
{
    return g_hash_table_size(c->outstanding);
}

guint64 herd_client_unexpected(const HerdClient *c)
{
    return c->unexpected;
}

guint64 herd_client_rejected(const HerdClient *c)
{
    return c->rejected;
}

const char *herd_client_session_id(const HerdClient *c)
{
    return herd_session_id(c->session);
}

/* ---- connecting ---- */

/* Send connection_request and wait for its reply: the registered engines. */
static gboolean fetch_engines(HerdClient *c, int timeout_ms, GError **err)
{
    HerdFrames f;
    herd_frames_init(&f);
    g_autofree char *msg_id = NULL;
    herd_session_build(c->session, &f, "connection_request", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL,
                       &msg_id);
    if (herd_frames_send(c->socks[SOCK_QUERY], &f) != 0) {
        herd_frames_clear(&f);
        return set_zmq_error(err, "sending connection_request");
    }
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
        zmq_pollitem_t item = { .socket = c->socks[SOCK_QUERY], .events = ZMQ_POLLIN };
        if (left_ms <= 0 || zmq_poll(&item, 1, (long)left_ms) == 0) {
            g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_TIMEOUT,
                        "the controller did not answer the connection request within %d ms", timeout_ms);
            return FALSE;
        }
        herd_frames_init(&f);
        HerdClientMsg *m = herd_frames_recv(c->socks[SOCK_QUERY], &f, ZMQ_DONTWAIT) == 0 ? msg_take(c, &f) : NULL;
        herd_frames_clear(&f);
        if (!m || g_strcmp0(herd_json_str(m->parent_header, "msg_id"), msg_id) != 0) {
            herd_client_msg_free(m);
            continue;
        }
        gboolean ok = g_strcmp0(herd_json_str(m->content, "status"), "ok") == 0;
        JsonNode *engines = json_object_get_member(m->content, "engines");
        if (ok && engines && JSON_NODE_HOLDS_OBJECT(engines)) {
            JsonObjectIter it;
            const char *id_str;
            JsonNode *uuid;
            json_object_iter_init(&it, json_node_get_object(engines));
            while (json_object_iter_next(&it, &id_str, &uuid))
                if (JSON_NODE_HOLDS_VALUE(uuid) && json_node_get_string(uuid))
                    engine_add(c, atoi(id_str), json_node_get_string(uuid));
        } else if (!ok) {
            g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_REFUSED, "the controller refused the connection: %s",
                        herd_json_str(m->content, "evalue") ?: "unknown error");
        }
        herd_client_msg_free(m);
        return ok;
    }
}

HerdClient *herd_client_connect(const char *connfile, int timeout_ms, GError **err)
{
    HerdConnInfo ci = { 0 };
    GError *local = NULL;
    if (!herd_connfile_read_peer(connfile, "client", "the herd client", &ci, &local)) {
        set_client_error(err, HERD_CLIENT_ERROR_CONNFILE, local); /* the message names the file */
        return NULL;
    }
    HerdClient *c = g_new0(HerdClient, 1);
    c->engine_uuid_by_id = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    c->engine_id_by_uuid = g_hash_table_new(g_str_hash, g_str_equal);
    c->engine_list = g_array_new(FALSE, FALSE, sizeof(HerdClientEngine));
    c->outstanding = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    c->direct = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, direct_request_free);
    c->broadcasts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, broadcast_request_free);
    g_queue_init(&c->held);
    g_queue_init(&c->failed);
    c->zctx = zmq_ctx_new();
    c->session = herd_session_new(ci.key, ci.signature_scheme, NULL, err);
    gboolean ok = c->session && open_sockets(c, &ci, err) &&
                  fetch_engines(c, timeout_ms > 0 ? timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS, err);
    herd_conninfo_clear(&ci);
    if (!ok) {
        herd_client_close(c);
        return NULL;
    }
    return c;
}

void herd_client_close(HerdClient *c)
{
    if (!c)
        return;
    for (guint i = 0; i < N_SOCKS; i++)
        if (c->socks[i])
            zmq_close(c->socks[i]);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    if (c->session)
        herd_session_free(c->session);
    g_queue_clear_full(&c->held, (GDestroyNotify)herd_client_msg_free);
    g_queue_clear_full(&c->failed, (GDestroyNotify)herd_client_msg_free);
    g_hash_table_destroy(c->direct);
    g_hash_table_destroy(c->broadcasts);
    g_hash_table_destroy(c->outstanding);
    g_array_free(c->engine_list, TRUE);
    g_hash_table_destroy(c->engine_id_by_uuid);
    g_hash_table_destroy(c->engine_uuid_by_id);
    g_free(c);
}

/* ---- submitting ---- */

/* The metadata an ipyparallel view would send on this channel for these targets. */
static char *default_metadata(HerdClient *c, HerdChannel channel, const char *const *uuids, const int *ids,
                              guint n)
{
    if (channel == HERD_CHANNEL_MUX || channel == HERD_CHANNEL_CONTROL)
        return g_strdup("{}");
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "targets");
    json_builder_begin_array(b);
    for (guint i = 0; i < n; i++) {
        if (channel == HERD_CHANNEL_BROADCAST) {
            json_builder_begin_array(b);
            json_builder_add_string_value(b, uuids[i]);
            json_builder_add_int_value(b, ids[i]);
            json_builder_end_array(b);
        } else {
            json_builder_add_string_value(b, uuids[i]);
        }
    }
    json_builder_end_array(b);
    if (channel == HERD_CHANNEL_BROADCAST) {
        json_builder_set_member_name(b, "is_broadcast");
        json_builder_add_boolean_value(b, TRUE);
        json_builder_set_member_name(b, "is_coalescing");
        json_builder_add_boolean_value(b, FALSE);
    } else {
        const char *empty_lists[] = { "after", "follow" };
        for (guint i = 0; i < G_N_ELEMENTS(empty_lists); i++) {
            json_builder_set_member_name(b, empty_lists[i]);
            json_builder_begin_array(b);
            json_builder_end_array(b);
        }
        json_builder_set_member_name(b, "timeout");
        json_builder_add_double_value(b, 0.0);
        json_builder_set_member_name(b, "retries");
        json_builder_add_int_value(b, 0);
    }
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    (void)c;
    return herd_json_to_string(root, NULL);
}

/* How many replies a request will get: one per broadcast target unless coalescing. */
static guint expected_replies(HerdChannel channel, JsonObject *metadata, guint n_targets)
{
    if (channel != HERD_CHANNEL_BROADCAST || herd_json_bool(metadata, "is_coalescing", FALSE))
        return 1;
    JsonNode *targets = json_object_get_member(metadata, "targets");
    if (targets && JSON_NODE_HOLDS_ARRAY(targets))
        return json_array_get_length(json_node_get_array(targets));
    return n_targets;
}

/* Remember which engines a broadcast request waits for: metadata.targets, [uuid, id] pairs. */
static void track_broadcast(HerdClient *c, const char *msg_id, const char *msg_type, JsonObject *metadata)
{
    BroadcastRequest *b = g_new0(BroadcastRequest, 1);
    b->waiting = g_ptr_array_new_with_free_func(g_free);
    b->coalescing = herd_json_bool(metadata, "is_coalescing", FALSE);
    b->reply_type = g_strdup_printf("%.*s_reply", (int)(strlen(msg_type) - strlen("_request")), msg_type);
    JsonNode *targets = json_object_get_member(metadata, "targets");
    JsonArray *pairs = targets && JSON_NODE_HOLDS_ARRAY(targets) ? json_node_get_array(targets) : NULL;
    for (guint i = 0; pairs && i < json_array_get_length(pairs); i++) {
        JsonNode *pair = json_array_get_element(pairs, i);
        JsonArray *a = JSON_NODE_HOLDS_ARRAY(pair) ? json_node_get_array(pair) : NULL;
        JsonNode *uuid = a && json_array_get_length(a) >= 1 ? json_array_get_element(a, 0) : NULL;
        if (uuid && JSON_NODE_HOLDS_VALUE(uuid) && json_node_get_value_type(uuid) == G_TYPE_STRING)
            g_ptr_array_add(b->waiting, g_strdup(json_node_get_string(uuid)));
    }
    g_hash_table_insert(c->broadcasts, g_strdup(msg_id), b);
}

static gboolean validate_object(const char *what, const char *json, JsonNode **out, GError **err)
{
    GError *local = NULL;
    *out = herd_json_parse_object(HERD_BYTES_STR(json), &local);
    if (!*out) {
        g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_INVALID, "%s is not a JSON object: %s", what,
                    local ? local->message : "parse error");
        g_clear_error(&local);
        return FALSE;
    }
    return TRUE;
}

gboolean herd_client_submit(HerdClient *c, HerdChannel channel, const char *msg_type, const int *targets,
                            guint n_targets, const char *metadata_json, const char *content_json,
                            const HerdBytes *buffers, guint n_buffers, char **msg_id_out, GError **err)
{
    if ((channel == HERD_CHANNEL_MUX || channel == HERD_CHANNEL_CONTROL) && n_targets != 1) {
        g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_INVALID,
                    "a %s request needs exactly one target engine (got %u)", herd_channel_name(channel), n_targets);
        return FALSE;
    }
    /* A broadcast without targets goes to every registered engine. */
    g_autofree int *all_ids = NULL;
    if (channel == HERD_CHANNEL_BROADCAST && n_targets == 0 && !metadata_json) {
        guint n;
        const HerdClientEngine *engines = herd_client_engines(c, &n);
        all_ids = g_new(int, n + 1);
        for (guint i = 0; i < n; i++)
            all_ids[i] = engines[i].id;
        targets = all_ids;
        n_targets = n;
    }
    g_autofree const char **uuids = g_new0(const char *, n_targets + 1);
    for (guint i = 0; i < n_targets; i++) {
        uuids[i] = herd_client_engine_uuid(c, targets[i]);
        if (!uuids[i]) {
            g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_NO_ENGINE, "no engine with id %d", targets[i]);
            return FALSE;
        }
    }
    g_autofree char *metadata_owned = metadata_json ? NULL : default_metadata(c, channel, uuids, targets, n_targets);
    const char *metadata = metadata_json ? metadata_json : metadata_owned;
    const char *content = content_json ? content_json : "{}";
    g_autoptr(JsonNode) metadata_node = NULL;
    g_autoptr(JsonNode) content_node = NULL;
    if (!validate_object("metadata", metadata, &metadata_node, err) ||
        !validate_object("content", content, &content_node, err))
        return FALSE;

    HerdFrames f;
    herd_frames_init(&f);
    if (channel == HERD_CHANNEL_MUX || channel == HERD_CHANNEL_CONTROL)
        herd_frames_push(&f, uuids[0], strlen(uuids[0])); /* destination engine, swapped by the relay */
    char *msg_id = NULL;
    herd_session_build(c->session, &f, msg_type, HERD_BYTES_NULL, HERD_BYTES_STR(metadata), HERD_BYTES_STR(content),
                       &msg_id);
    for (guint i = 0; i < n_buffers; i++)
        herd_frames_push(&f, buffers[i].data, buffers[i].len);
    if (herd_frames_send(c->socks[channel], &f) != 0) {
        herd_frames_clear(&f);
        g_free(msg_id);
        return set_zmq_error(err, "sending request");
    }
    /* Only requests are answered (comm_* messages, for instance, never are). */
    gboolean answered = g_str_has_suffix(msg_type, "_request");
    guint replies = answered ? expected_replies(channel, json_node_get_object(metadata_node), n_targets) : 0;
    if (replies > 0)
        g_hash_table_insert(c->outstanding, g_strdup(msg_id), GUINT_TO_POINTER(replies));
    if (channel == HERD_CHANNEL_MUX && answered) {
        DirectRequest *d = g_new0(DirectRequest, 1);
        d->engine_uuid = g_strdup(uuids[0]);
        d->reply_type = g_strdup_printf("%.*s_reply", (int)(strlen(msg_type) - strlen("_request")), msg_type);
        g_hash_table_insert(c->direct, g_strdup(msg_id), d);
    }
    if (channel == HERD_CHANNEL_BROADCAST && replies > 0)
        track_broadcast(c, msg_id, msg_type, json_node_get_object(metadata_node));
    if (msg_id_out)
        *msg_id_out = msg_id;
    else
        g_free(msg_id);
    return TRUE;
}

gboolean herd_client_execute(HerdClient *c, HerdChannel channel, const int *targets, guint n_targets,
                             const char *code, gboolean silent, char **msg_id_out, GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "code");
    json_builder_add_string_value(b, code);
    json_builder_set_member_name(b, "silent");
    json_builder_add_boolean_value(b, silent);
    json_builder_set_member_name(b, "user_expressions");
    json_builder_begin_object(b);
    json_builder_end_object(b);
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autofree char *content = herd_json_to_string(root, NULL);
    return herd_client_submit(c, channel, "execute_request", targets, n_targets, NULL, content, NULL, 0, msg_id_out,
                              err);
}
