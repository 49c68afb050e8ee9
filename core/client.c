/* herd — native client: the C counterpart of ipyparallel.Client (see client.h). */
#include "herd/client.h"
#include "herd/hash.h"

#include <errno.h>
#include <string.h>

#include "herd/connfile.h"
#include "herd/loop.h"

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

/* The socket a received message came in on, for the loop's callback. */
typedef struct Incoming {
    HerdClient *c;
    guint index;
} Incoming;

/* A channel's default metadata (TASK, BROADCAST) for the targets it was last built for:
 * callers tend to submit to the same targets again and again. */
typedef struct DefaultMetadata {
    GArray *ids;      /* int: the targets it was built for */
    guint generation; /* the engine table it was built from (0: never built) */
    char *text;
} DefaultMetadata;

struct HerdClient {
    void *zctx;
    HerdSession *session;
    void *socks[N_SOCKS];
    /* Waits in epoll on the sockets' ZMQ_FD and looks only at sockets that may have input:
     * those whose FD fired and those just sent on (a send can take the wake-up of a
     * message that arrived meanwhile). */
    HerdLoop *loop;
    HerdWatch *watches[N_SOCKS];
    Incoming incoming[N_SOCKS];
    gboolean polled_externally; /* herd_client_pollitems() was called: see there */
    guint completed_undelivered;    /* requests answered whose last reply is still held */

    GHashTable *engine_uuid_by_id;  /* GINT_TO_POINTER(id) -> char* uuid */
    GHashTable *engine_id_by_uuid;  /* uuid (same string) -> GINT_TO_POINTER(id) */
    GArray *engine_list;            /* HerdClientEngine, rebuilt on demand */
    gboolean engine_list_stale;
    guint engine_generation;        /* changes with every engine table change */

    DefaultMetadata defaults[HERD_CHANNEL_CONTROL + 1];
    GArray *target_ids;             /* int: scratch for submit */
    GPtrArray *target_uuids;        /* const char*: scratch for submit */

    GHashTable *requests;           /* msg_id (owned by the Request) -> Request*: still answered */
    GQueue held;                    /* HerdClientMsg* received, not yet returned */
    GQueue failed;                  /* synthesized replies, queued behind their notification */
    guint64 unexpected;
    guint64 rejected;
};

/* A request whose replies have not all arrived. MUX and broadcast requests remember the
 * engines they wait for, to fail them locally if one unregisters (as ipyparallel does:
 * the controller sends nothing for those). One allocation holds it all. */
typedef struct Request {
    const char *msg_id;
    const char *reply_type; /* for a locally made EngineError reply */
    HerdChannel channel;
    guint replies_left;
    gboolean coalescing;    /* a broadcast answered by one merged reply */
    guint n_waiting;
    const char *waiting[];  /* uuids of the engines that have not answered; then the strings */
} Request;

static Request *request_new(HerdChannel channel, const char *msg_id, const char *msg_type, guint replies,
                            gboolean coalescing, const char *const *waiting, guint n_waiting)
{
    gsize stem = strlen(msg_type) - strlen("_request");
    gsize size = sizeof(Request) + n_waiting * sizeof(char *) + strlen(msg_id) + 1 + stem + sizeof "_reply";
    for (guint i = 0; i < n_waiting; i++)
        size += strlen(waiting[i]) + 1;
    Request *r = g_malloc(size);
    r->channel = channel;
    r->replies_left = replies;
    r->coalescing = coalescing;
    r->n_waiting = n_waiting;
    char *p = (char *)(r->waiting + n_waiting);
    r->msg_id = p;
    p = stpcpy(p, msg_id) + 1;
    r->reply_type = p;
    memcpy(p, msg_type, stem);
    p = stpcpy(p + stem, "_reply") + 1;
    for (guint i = 0; i < n_waiting; i++) {
        r->waiting[i] = p;
        p = stpcpy(p, waiting[i]) + 1;
    }
    return r;
}

/* Strike an engine off the ones r waits for; FALSE if r was not waiting for it. */
static gboolean request_engine_answered(Request *r, const char *uuid)
{
    for (guint i = 0; i < r->n_waiting; i++) {
        if (g_str_equal(r->waiting[i], uuid)) {
            r->waiting[i] = r->waiting[--r->n_waiting];
            return TRUE;
        }
    }
    return FALSE;
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
    for (guint i = 0; i < G_N_ELEMENTS(m->parts); i++)
        if (m->parts[i])
            json_node_unref(m->parts[i]);
    herd_frames_clear(&m->frames);
    g_free(m); /* the buffer array and the strings live in the same block */
}

/* A message in one block: the struct, room for n_buffers + 1 buffer entries, then
 * string_bytes for its strings (*strings points there). */
static HerdClientMsg *msg_alloc(guint n_buffers, gsize string_bytes, char **strings)
{
    gsize head = sizeof(HerdClientMsg) + (n_buffers + 1) * sizeof(HerdBytes);
    HerdClientMsg *m = g_malloc0(head + string_bytes);
    m->buffers = (HerdBytes *)(m + 1);
    m->n_buffers = n_buffers;
    m->engine_id = -1;
    herd_frames_init(&m->frames);
    if (strings)
        *strings = (char *)m + head;
    return m;
}

static JsonObject *msg_part(HerdClientMsg *m, guint part)
{
    if (!m->parts[part] && !(m->unparsable & (1u << part)) && herd_frames_is_wire(&m->frames)) {
        HerdBytes text = herd_frame_bytes(&m->frames, herd_wire(&m->frames, HERD_WIRE_HEADER + part));
        m->parts[part] = herd_json_parse_object(text, NULL);
        if (!m->parts[part])
            m->unparsable |= 1u << part;
    }
    return m->parts[part] ? json_node_get_object(m->parts[part]) : NULL;
}

JsonObject *herd_client_msg_header(HerdClientMsg *m)
{
    return msg_part(m, 0);
}

JsonObject *herd_client_msg_parent_header(HerdClientMsg *m)
{
    return msg_part(m, 1);
}

JsonObject *herd_client_msg_metadata(HerdClientMsg *m)
{
    return msg_part(m, 2);
}

JsonObject *herd_client_msg_content(HerdClientMsg *m)
{
    return msg_part(m, 3);
}

/* The members of a received message the client reads itself, found with the flat member
 * scan: no JSON tree is built unless the caller asks for one. */
enum { HEADER_MSG_TYPE, HEADER_MSG_ID, N_HEADER_FIELDS };
enum { PARENT_MSG_ID, PARENT_SESSION, N_PARENT_FIELDS };
enum { METADATA_ENGINE, METADATA_ORIGINAL_MSG_ID, METADATA_IS_BROADCAST, N_METADATA_FIELDS };
enum { CONTENT_STATUS, N_CONTENT_FIELDS };

typedef struct Scan {
    HerdJsonField header[N_HEADER_FIELDS];
    HerdJsonField parent[N_PARENT_FIELDS];
    HerdJsonField metadata[N_METADATA_FIELDS];
    HerdJsonField content[N_CONTENT_FIELDS];
} Scan;

/* FALSE unless each JSON part is an object and the header has a string msg_type. */
static gboolean scan_message(const HerdFrames *f, Scan *s)
{
    *s = (Scan){
        .header = { { .name = "msg_type" }, { .name = "msg_id" } },
        .parent = { { .name = "msg_id" }, { .name = "session" } },
        .metadata = { { .name = "engine" }, { .name = "original_msg_id" }, { .name = "is_broadcast" } },
        .content = { { .name = "status" } },
    };
    HerdJsonField *fields[] = { s->header, s->parent, s->metadata, s->content };
    const guint n_fields[] = { N_HEADER_FIELDS, N_PARENT_FIELDS, N_METADATA_FIELDS, N_CONTENT_FIELDS };
    for (guint i = 0; i < G_N_ELEMENTS(fields); i++)
        if (!herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER + i)), fields[i], n_fields[i]))
            return FALSE;
    return s->header[HEADER_MSG_TYPE].kind == HERD_JSON_STRING;
}

/* Ids and names are ASCII, which a plain loop over the bytes confirms much faster than a
 * UTF-8 decoder. */
static gboolean text_is_utf8(const char *s, gsize len)
{
    guchar high_bits = 0;
    for (gsize i = 0; i < len; i++)
        high_bits |= (guchar)s[i];
    return high_bits < 0x80 || g_utf8_validate_len(s, len, NULL);
}

/* The characters of a string member: in the frame, or for the rare escaped string decoded
 * into *decoded (caller frees). FALSE when it is not a string or not valid text. */
static gboolean field_text(const HerdJsonField *f, const char **text, gsize *len, char **decoded)
{
    *decoded = NULL;
    if (!f || f->kind != HERD_JSON_STRING)
        return FALSE;
    if (f->escaped) {
        *decoded = herd_json_field_dup(f); /* decoded by json-glib: valid UTF-8 */
        *text = *decoded;
        *len = *decoded ? strlen(*decoded) : 0;
        return *decoded != NULL;
    }
    *text = f->value;
    *len = f->len;
    return text_is_utf8(f->value, f->len);
}

static gboolean field_equals(const HerdJsonField *f, const char *s)
{
    const char *text;
    gsize len;
    g_autofree char *decoded = NULL;
    return field_text(f, &text, &len, &decoded) && len == strlen(s) && memcmp(text, s, len) == 0;
}

/* The message's string fields, in this order; NULL where a message has none. */
enum { STR_MSG_TYPE, STR_MSG_ID, STR_REQUEST_ID, STR_STATUS, STR_ENGINE_UUID, N_STRS };

/* A received message; it takes the frames. The strings are copied out of the members
 * named (each NULL or absent member gives a NULL string). NULL when a present member is
 * not a string of valid UTF-8, or msg_type is missing. */
static HerdClientMsg *msg_new(HerdFrames *f, const HerdJsonField *const members[N_STRS])
{
    const char *text[N_STRS] = { 0 };
    gsize len[N_STRS] = { 0 };
    char *decoded[N_STRS] = { 0 };
    gsize string_bytes = 0;
    gboolean ok = TRUE;
    for (guint i = 0; i < N_STRS && ok; i++) {
        if (!members[i] || members[i]->kind == HERD_JSON_ABSENT)
            continue;
        if (members[i]->kind != HERD_JSON_STRING)
            continue; /* like herd_json_str: a member of another type reads as NULL */
        ok = field_text(members[i], &text[i], &len[i], &decoded[i]);
        string_bytes += len[i] + 1;
    }
    HerdClientMsg *m = NULL;
    if (ok && text[STR_MSG_TYPE]) {
        char *p;
        guint first_buffer = herd_wire(f, HERD_WIRE_BUFFERS);
        m = msg_alloc(f->n - first_buffer, string_bytes, &p);
        const char **slots[N_STRS] = { &m->msg_type, &m->msg_id, &m->request_id, &m->status, &m->engine_uuid };
        for (guint i = 0; i < N_STRS; i++) {
            if (!text[i])
                continue;
            memcpy(p, text[i], len[i]);
            p[len[i]] = '\0';
            *slots[i] = p;
            p += len[i] + 1;
        }
        m->frames = *f;
        herd_frames_init(f);
        for (guint i = 0; i < m->n_buffers; i++)
            m->buffers[i] = herd_frame_bytes(&m->frames, first_buffer + i);
    }
    for (guint i = 0; i < N_STRS; i++)
        g_free(decoded[i]);
    return m;
}

/* ---- engine table ---- */

static void engine_add(HerdClient *c, int id, const char *uuid)
{
    const char *old = g_hash_table_lookup(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    if (old && g_str_equal(old, uuid))
        return; /* announced again: nothing changes */
    if (old)
        g_hash_table_remove(c->engine_id_by_uuid, old);
    char *owned = g_strdup(uuid);
    g_hash_table_insert(c->engine_uuid_by_id, GINT_TO_POINTER(id), owned);
    g_hash_table_insert(c->engine_id_by_uuid, owned, GINT_TO_POINTER(id));
    c->engine_list_stale = TRUE;
    c->engine_generation++;
}

static void engine_remove(HerdClient *c, int id)
{
    const char *uuid = g_hash_table_lookup(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    if (!uuid)
        return;
    g_hash_table_remove(c->engine_id_by_uuid, uuid);
    g_hash_table_remove(c->engine_uuid_by_id, GINT_TO_POINTER(id));
    c->engine_list_stale = TRUE;
    c->engine_generation++;
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

static JsonObject *msg_take_object(HerdClientMsg *m, guint part, JsonObject *o)
{
    m->parts[part] = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(m->parts[part], o);
    return o;
}

/* The reply a request gets when its engine unregistered first: an EngineError, like the
 * one ipyparallel raises locally. It has no frames and no buffers. `parent_id` is the id
 * the engine would have answered (for a plain broadcast "<msg_id>_<uuid>"); broadcast
 * replies carry the request's own id in metadata.original_msg_id, as engines' do. */
static HerdClientMsg *engine_died_reply(const Request *r, const char *parent_id, const char *engine_uuid,
                                        int engine_id)
{
    HerdClientMsg *m = msg_alloc(0, 0, NULL);
    JsonObject *header = msg_take_object(m, 0, json_object_new());
    json_object_set_string_member(header, "msg_type", r->reply_type);
    json_object_set_string_member(header, "msg_id", "");
    JsonObject *parent = msg_take_object(m, 1, json_object_new());
    json_object_set_string_member(parent, "msg_id", parent_id);
    JsonObject *metadata = msg_take_object(m, 2, json_object_new());
    json_object_set_string_member(metadata, "engine", engine_uuid);
    json_object_set_string_member(metadata, "status", "error");
    if (r->channel == HERD_CHANNEL_BROADCAST) {
        json_object_set_boolean_member(metadata, "is_broadcast", TRUE);
        json_object_set_boolean_member(metadata, "is_coalescing", r->coalescing);
        json_object_set_string_member(metadata, "original_msg_id", r->msg_id);
    }
    JsonObject *content = msg_take_object(m, 3, json_object_new());
    g_autofree char *evalue = g_strdup_printf("Engine %d died while running task '%s'", engine_id, parent_id);
    json_object_set_string_member(content, "status", "error");
    json_object_set_array_member(content, "traceback", json_array_new());
    json_object_set_string_member(content, "ename", "EngineError");
    json_object_set_string_member(content, "evalue", evalue);
    json_object_set_object_member(content, "engine_info", json_object_new());
    m->kind = HERD_MSG_REPLY;
    m->channel = r->channel;
    m->msg_type = herd_json_str(header, "msg_type");
    m->msg_id = herd_json_str(header, "msg_id");
    m->request_id = r->channel == HERD_CHANNEL_BROADCAST ? herd_json_str(metadata, "original_msg_id")
                                                         : herd_json_str(parent, "msg_id");
    m->status = "error";
    m->engine_uuid = herd_json_str(metadata, "engine");
    m->engine_id = engine_id;
    return m;
}

/* Fail, behind the unregistration notification, what an engine that left still owed:
 * MUX requests to it, and its part of broadcast requests (a coalescing one as a whole,
 * since no merged reply will come). Load-balanced requests are the controller's. */
static void fail_requests_of(HerdClient *c, const char *uuid, int engine_id)
{
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, c->requests);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Request *r = value;
        if (!request_engine_answered(r, uuid))
            continue;
        g_autofree char *parent_id = r->channel == HERD_CHANNEL_BROADCAST && !r->coalescing
                                         ? g_strdup_printf("%s_%s", r->msg_id, uuid)
                                         : g_strdup(r->msg_id);
        HerdClientMsg *failed = engine_died_reply(r, parent_id, uuid, engine_id);
        g_queue_push_tail(&c->failed, failed);
        if (r->coalescing || --r->replies_left == 0) {
            failed->completes = TRUE;
            c->completed_undelivered++;
            g_hash_table_iter_remove(&it);
        }
    }
}

static void apply_notification(HerdClient *c, HerdClientMsg *m)
{
    JsonObject *content = herd_client_msg_content(m);
    int id = content ? (int)herd_json_int(content, "id", -1) : -1;
    const char *uuid = content ? herd_json_str(content, "uuid") : NULL;
    if (g_str_equal(m->msg_type, "registration_notification") && id >= 0 && uuid)
        engine_add(c, id, uuid);
    else if (g_str_equal(m->msg_type, "unregistration_notification") && id >= 0) {
        engine_remove(c, id);
        if (uuid)
            fail_requests_of(c, uuid, id);
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
    c->polled_externally = TRUE;
    return n;
}

/* ---- receiving ---- */

/* Verify and decode what arrived on socket `index`; it takes the frames. NULL when it is
 * not for the caller (someone else's IOPub) or, counted as rejected, when the signature,
 * the layout or a member the client reads is wrong. */
static HerdClientMsg *msg_receive(HerdClient *c, guint index, HerdFrames *f)
{
    Scan s;
    if (!herd_frames_is_wire(f) || herd_session_verify(c->session, f) != HERD_VERIFY_OK || !scan_message(f, &s)) {
        c->rejected++;
        return NULL;
    }
    const HerdJsonField *request_id = &s.parent[PARENT_MSG_ID], *status = NULL;
    switch (index) {
    case SOCK_IOPUB: /* like ipyparallel: only output caused by our own requests */
        if (!field_equals(&s.parent[PARENT_SESSION], herd_session_id(c->session)))
            return NULL;
        break;
    case SOCK_NOTIFICATION:
        request_id = NULL;
        break;
    default: /* replies; broadcast ones name the request in metadata.original_msg_id */
        if (s.metadata[METADATA_IS_BROADCAST].kind == HERD_JSON_TRUE &&
            s.metadata[METADATA_ORIGINAL_MSG_ID].kind == HERD_JSON_STRING && s.metadata[METADATA_ORIGINAL_MSG_ID].len)
            request_id = &s.metadata[METADATA_ORIGINAL_MSG_ID];
        status = &s.content[CONTENT_STATUS];
        break;
    }
    const HerdJsonField *members[N_STRS] = {
        [STR_MSG_TYPE] = &s.header[HEADER_MSG_TYPE], [STR_MSG_ID] = &s.header[HEADER_MSG_ID],
        [STR_REQUEST_ID] = request_id, [STR_STATUS] = status, [STR_ENGINE_UUID] = &s.metadata[METADATA_ENGINE],
    };
    HerdClientMsg *m = msg_new(f, members);
    if (!m)
        c->rejected++;
    return m;
}

/* Count a reply against its request. */
static void count_reply(HerdClient *c, HerdClientMsg *m)
{
    Request *r = m->request_id ? g_hash_table_lookup(c->requests, m->request_id) : NULL;
    if (!r) {
        c->unexpected++;
        return;
    }
    if (r->n_waiting && m->engine_uuid)
        request_engine_answered(r, m->engine_uuid);
    if (--r->replies_left == 0) {
        m->completes = TRUE;
        c->completed_undelivered++;
        g_hash_table_remove(c->requests, r->msg_id);
    }
}

/* What a message received on socket `index` means to the caller. NULL (m is freed) when
 * it is not for the caller: a stray query reply. */
static HerdClientMsg *classify(HerdClient *c, guint index, HerdClientMsg *m)
{
    switch (index) {
    case SOCK_NOTIFICATION:
        m->kind = HERD_MSG_NOTIFICATION;
        apply_notification(c, m);
        return m;
    case SOCK_IOPUB:
        m->kind = HERD_MSG_IOPUB;
        m->engine_id = engine_id_of(c, m->engine_uuid);
        return m;
    case SOCK_QUERY: /* late answers to connection requests */
        herd_client_msg_free(m);
        return NULL;
    default:
        m->kind = HERD_MSG_REPLY;
        m->channel = (HerdChannel)index;
        m->engine_id = engine_id_of(c, m->engine_uuid);
        count_reply(c, m);
        return m;
    }
}

/* Most messages a readable socket gives up per loop iteration: the cap keeps the sockets
 * taking turns. */
#define RECV_BATCH 64

/* Queue a received message for the caller, then any replies it made fail. */
static void hold_incoming(HerdFrames *f, gpointer data)
{
    Incoming *in = data;
    HerdClient *c = in->c;
    HerdClientMsg *m = msg_receive(c, in->index, f);
    if (m && (m = classify(c, in->index, m)))
        g_queue_push_tail(&c->held, m);
    HerdClientMsg *failed;
    while ((failed = g_queue_pop_head(&c->failed)))
        g_queue_push_tail(&c->held, failed);
}

/* The loop's callback for each socket. */
static gboolean receive_batch(void *zsock, gpointer data)
{
    return herd_frames_recv_batch(zsock, RECV_BATCH, hold_incoming, data);
}

/* Hand the next held message to the caller; its request stops being outstanding now. */
static HerdClientMsg *deliver_held(HerdClient *c)
{
    HerdClientMsg *m = g_queue_pop_head(&c->held);
    if (m && m->completes)
        c->completed_undelivered--;
    return m;
}

/* Put a message taken with deliver_held back in front: not delivered after all. */
static void hold_again(HerdClient *c, HerdClientMsg *m)
{
    if (m->completes)
        c->completed_undelivered++;
    g_queue_push_head(&c->held, m);
}

/* Wait up to timeout_ms for input, queue what arrived in c->held and return the first
 * queued message, or NULL. */
static HerdClientMsg *poll_once(HerdClient *c, int timeout_ms, GError **err)
{
    if (c->polled_externally)
        for (guint i = 0; i < N_SOCKS; i++)
            herd_loop_recheck(c->loop, c->watches[i]);
    if (!herd_loop_iterate(c->loop, timeout_ms)) {
        set_zmq_error(err, "epoll_wait");
        return NULL;
    }
    return deliver_held(c);
}

HerdClientMsg *herd_client_recv(HerdClient *c, int timeout_ms, GError **err)
{
    if (!g_queue_is_empty(&c->held))
        return deliver_held(c);
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
            hold_again(c, m); /* the caller still gets to see it, first */
    }
    return TRUE;
}

guint herd_client_outstanding(const HerdClient *c)
{
    return g_hash_table_size(c->requests) + c->completed_undelivered;
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
        HerdClientMsg *m = herd_frames_recv(c->socks[SOCK_QUERY], &f, ZMQ_DONTWAIT) == 0
                               ? msg_receive(c, SOCK_QUERY, &f)
                               : NULL;
        herd_frames_clear(&f);
        JsonObject *content = m && g_strcmp0(m->request_id, msg_id) == 0 ? herd_client_msg_content(m) : NULL;
        if (!content) {
            herd_client_msg_free(m);
            continue;
        }
        gboolean ok = g_strcmp0(m->status, "ok") == 0;
        JsonNode *engines = json_object_get_member(content, "engines");
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
                        herd_json_str(content, "evalue") ?: "unknown error");
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
    c->engine_generation = 1; /* cached default metadata of generation 0 was never built */
    for (guint i = 0; i < G_N_ELEMENTS(c->defaults); i++)
        c->defaults[i].ids = g_array_new(FALSE, FALSE, sizeof(int));
    c->target_ids = g_array_new(FALSE, FALSE, sizeof(int));
    c->target_uuids = g_ptr_array_new();
    c->requests = g_hash_table_new_full(herd_str_hash, g_str_equal, NULL, g_free);
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
    c->loop = herd_loop_new();
    for (guint i = 0; i < N_SOCKS; i++) { /* each one is looked at first: input may be queued already */
        c->incoming[i] = (Incoming){ c, i };
        c->watches[i] = herd_loop_add_socket(c->loop, c->socks[i], receive_batch, &c->incoming[i]);
    }
    return c;
}

void herd_client_close(HerdClient *c)
{
    if (!c)
        return;
    herd_loop_free(c->loop); /* before the sockets it watches are closed */
    for (guint i = 0; i < N_SOCKS; i++)
        if (c->socks[i])
            zmq_close(c->socks[i]);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    if (c->session)
        herd_session_free(c->session);
    g_queue_clear_full(&c->held, (GDestroyNotify)herd_client_msg_free);
    g_queue_clear_full(&c->failed, (GDestroyNotify)herd_client_msg_free);
    g_hash_table_destroy(c->requests);
    for (guint i = 0; i < G_N_ELEMENTS(c->defaults); i++) {
        g_array_free(c->defaults[i].ids, TRUE);
        g_free(c->defaults[i].text);
    }
    g_array_free(c->target_ids, TRUE);
    g_ptr_array_free(c->target_uuids, TRUE);
    g_array_free(c->engine_list, TRUE);
    g_hash_table_destroy(c->engine_id_by_uuid);
    g_hash_table_destroy(c->engine_uuid_by_id);
    g_free(c);
}

/* ---- submitting ---- */

/* The metadata an ipyparallel view would send on this channel for these targets. */
static char *build_default_metadata(HerdChannel channel, const char *const *uuids, const int *ids, guint n)
{
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
    return herd_json_to_string(root, NULL);
}

/* The default metadata text (borrowed), rebuilt only when the targets or the engine table
 * changed since the channel's last request. */
static const char *default_metadata(HerdClient *c, HerdChannel channel, const char *const *uuids, const int *ids,
                                    guint n)
{
    if (channel == HERD_CHANNEL_MUX || channel == HERD_CHANNEL_CONTROL)
        return "{}";
    DefaultMetadata *d = &c->defaults[channel];
    if (d->generation != c->engine_generation || d->ids->len != n ||
        (n > 0 && memcmp(d->ids->data, ids, n * sizeof(int)) != 0)) {
        g_free(d->text);
        d->text = build_default_metadata(channel, uuids, ids, n);
        g_array_set_size(d->ids, 0);
        g_array_append_vals(d->ids, ids, n);
        d->generation = c->engine_generation;
    }
    return d->text;
}

/* Resolve the targets (for a broadcast without any: every registered engine) into
 * c->target_ids and c->target_uuids. */
static gboolean resolve_targets(HerdClient *c, HerdChannel channel, const int *targets, guint n_targets,
                                gboolean default_metadata_wanted, GError **err)
{
    g_array_set_size(c->target_ids, 0);
    g_ptr_array_set_size(c->target_uuids, 0);
    if (channel == HERD_CHANNEL_BROADCAST && n_targets == 0 && default_metadata_wanted) {
        guint n;
        const HerdClientEngine *engines = herd_client_engines(c, &n);
        for (guint i = 0; i < n; i++) {
            g_array_append_val(c->target_ids, engines[i].id);
            g_ptr_array_add(c->target_uuids, (gpointer)engines[i].uuid);
        }
        return TRUE;
    }
    for (guint i = 0; i < n_targets; i++) {
        const char *uuid = herd_client_engine_uuid(c, targets[i]);
        if (!uuid) {
            g_set_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_NO_ENGINE, "no engine with id %d", targets[i]);
            return FALSE;
        }
        g_array_append_val(c->target_ids, targets[i]);
        g_ptr_array_add(c->target_uuids, (gpointer)uuid);
    }
    return TRUE;
}

/* Text the caller gave (NULL: not given) must be a JSON object. */
static gboolean validate_object(const char *what, const char *json, JsonNode **out, GError **err)
{
    if (!json)
        return TRUE;
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

/* Remember a request that will be answered. A broadcast waits for one reply per target,
 * or one in all when its metadata asks for coalescing; given metadata names the targets as
 * [uuid, id] pairs. */
static void track_request(HerdClient *c, HerdChannel channel, const char *msg_id, const char *msg_type,
                          JsonObject *given_metadata)
{
    const char *const *waiting = NULL;
    guint n_waiting = 0, replies = 1;
    gboolean coalescing = FALSE;
    g_autoptr(GPtrArray) given_targets = NULL;
    if (channel == HERD_CHANNEL_MUX) {
        waiting = (const char *const *)c->target_uuids->pdata;
        n_waiting = 1;
    } else if (channel == HERD_CHANNEL_BROADCAST && !given_metadata) {
        waiting = (const char *const *)c->target_uuids->pdata;
        replies = n_waiting = c->target_uuids->len;
    } else if (channel == HERD_CHANNEL_BROADCAST) {
        coalescing = herd_json_bool(given_metadata, "is_coalescing", FALSE);
        JsonArray *pairs = herd_json_array(given_metadata, "targets");
        given_targets = g_ptr_array_new();
        for (guint i = 0; pairs && i < json_array_get_length(pairs); i++) {
            JsonNode *pair = json_array_get_element(pairs, i);
            JsonArray *a = JSON_NODE_HOLDS_ARRAY(pair) ? json_node_get_array(pair) : NULL;
            JsonNode *uuid = a && json_array_get_length(a) >= 1 ? json_array_get_element(a, 0) : NULL;
            if (uuid && JSON_NODE_HOLDS_VALUE(uuid) && json_node_get_value_type(uuid) == G_TYPE_STRING)
                g_ptr_array_add(given_targets, (gpointer)json_node_get_string(uuid));
        }
        waiting = (const char *const *)given_targets->pdata;
        n_waiting = given_targets->len;
        replies = coalescing ? 1 : pairs ? json_array_get_length(pairs) : c->target_uuids->len;
    }
    if (replies == 0)
        return;
    Request *r = request_new(channel, msg_id, msg_type, replies, coalescing, waiting, n_waiting);
    g_hash_table_insert(c->requests, (gpointer)r->msg_id, r);
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
    if (!resolve_targets(c, channel, targets, n_targets, metadata_json == NULL, err))
        return FALSE;
    /* Only what the caller wrote is checked; what the client builds itself is known good. */
    g_autoptr(JsonNode) metadata_node = NULL;
    g_autoptr(JsonNode) content_node = NULL;
    if (!validate_object("metadata", metadata_json, &metadata_node, err) ||
        !validate_object("content", content_json, &content_node, err))
        return FALSE;
    const char *const *uuids = (const char *const *)c->target_uuids->pdata;
    const char *metadata = metadata_json ? metadata_json
                                         : default_metadata(c, channel, uuids, (const int *)c->target_ids->data,
                                                            c->target_ids->len);

    HerdFrames f;
    herd_frames_init(&f);
    if (channel == HERD_CHANNEL_MUX || channel == HERD_CHANNEL_CONTROL)
        herd_frames_push(&f, uuids[0], strlen(uuids[0])); /* destination engine, swapped by the relay */
    char *msg_id = NULL;
    herd_session_build(c->session, &f, msg_type, HERD_BYTES_NULL, HERD_BYTES_STR(metadata),
                       content_json ? HERD_BYTES_STR(content_json) : HERD_BYTES_NULL, &msg_id);
    for (guint i = 0; i < n_buffers; i++)
        herd_frames_push(&f, buffers[i].data, buffers[i].len);
    int sent = herd_frames_send(c->socks[channel], &f);
    herd_loop_recheck(c->loop, c->watches[channel]); /* the send may have taken the wake-up of a reply */
    if (sent != 0) {
        herd_frames_clear(&f);
        g_free(msg_id);
        return set_zmq_error(err, "sending request");
    }
    /* Only requests are answered (comm_* messages, for instance, never are). */
    if (g_str_has_suffix(msg_type, "_request"))
        track_request(c, channel, msg_id, msg_type, metadata_node ? json_node_get_object(metadata_node) : NULL);
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
