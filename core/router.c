/* herd — the router: binds every socket, relays frames, and hosts the scheduler plugins.
 *
 * Relayed messages are forwarded byte-identical (only the routing frames change), so the
 * peers' signatures stay valid. The core reads just the header (requests) or parent header
 * and metadata (replies) it needs to find the job; policy is the scheduler plugin's.
 */
#define G_LOG_DOMAIN "herd"
#include "controller-private.h"
#include "herd/hash.h"
#include "records.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#define RECV_BATCH 256

static const char *const channel_names[CH_COUNT] = { "mux", "task", "broadcast", "control" };

static Engine *engine_of_view(HerdEngine *view, int kind)
{
    return (Engine *)((char *)(view - kind) - offsetof(Engine, chan_view));
}

static Channel *channel_of(HerdSchedHost *host)
{
    return (Channel *)host; /* host is the first member */
}

/* ---------------------------------------------------------------- sockets */

static void *new_socket(HerdController *ctl, int type, const char *routing_id)
{
    void *s = zmq_socket(ctl->zctx, type);
    int zero = 0, linger = 500;
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (routing_id)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, routing_id, strlen(routing_id));
    if (type == ZMQ_SUB)
        zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    if (strchr(ctl->cfg->ip ? ctl->cfg->ip : "", ':')) {
        int one = 1;
        zmq_setsockopt(s, ZMQ_IPV6, &one, sizeof one);
    }
    return s;
}

static int next_pool_port(gpointer data)
{
    HerdController *ctl = data;
    GArray *ports = ctl->cfg->ports;
    if (!ports || ctl->port_pool_next >= ports->len)
        return 0;
    return g_array_index(ports, int, ctl->port_pool_next++);
}

static gboolean open_side(HerdController *ctl, Side *side, const char *name, const char *plugin_name,
                          const char *ip, GError **err)
{
    side->name = name;
    side->plugin = herd_plugin_load(HERD_PLUGIN_TRANSPORT, plugin_name,
                                    (const char *const *)ctl->plugin_path, err);
    if (!side->plugin)
        return FALSE;
    side->ops = herd_plugin_descriptor(side->plugin)->ops;
    g_autofree char *stem = ctl->cfg->cluster_id && *ctl->cfg->cluster_id
                                ? g_strdup_printf("herd-%s", ctl->cfg->cluster_id)
                                : g_strdup_printf("herd-%d", (int)getpid());
    HerdTransportConfig tc = {
        .side = name,
        .ip = ip,
        .stem = stem,
        .conf = ctl->cfg->keyfile,
        .next_port = next_pool_port,
        .pool = ctl,
    };
    side->inst = side->ops->open(&tc, err);
    if (!side->inst) {
        g_prefix_error(err, "%s transport '%s': ", name, plugin_name);
        return FALSE;
    }
    return TRUE;
}

static gboolean bind_on(Side *side, void *sock, const char *channel, int type, int want, int *port,
                        GError **err)
{
    if (side->ops->supports && !side->ops->supports(side->inst, channel, type, err))
        return FALSE;
    if (!side->ops->bind(side->inst, sock, channel, want, port, err)) {
        g_prefix_error(err, "%s %s: ", side->name, channel);
        return FALSE;
    }
    return TRUE;
}

/* ---------------------------------------------------------------- jobs */

/* Text for pack_texts: a scanned JSON member (decoded when it is a string, else no text),
 * or raw bytes (up to a NUL, as g_strndup reads them; no text when data is NULL). */
typedef struct TextItem {
    const HerdJsonField *field;
    HerdBytes raw;
} TextItem;

/* The texts of a job or a reply in one allocation, NUL-terminated back to back: a few
 * strings per message, kept as long as the message, cost one malloc instead of one each.
 * out[i] points into the returned block (or is NULL); the block owns them all. */
static char *pack_texts(const TextItem *items, guint n, char **out)
{
    gsize total = 0;
    for (guint i = 0; i < n; i++) {
        const HerdJsonField *f = items[i].field;
        if (f ? f->kind == HERD_JSON_STRING : items[i].raw.data != NULL)
            total += (f ? f->len : items[i].raw.len) + 1; /* decoding never lengthens */
    }
    char *block = g_malloc(MAX(total, 1));
    char *at = block;
    for (guint i = 0; i < n; i++) {
        const HerdJsonField *f = items[i].field;
        out[i] = NULL;
        if (f ? f->kind != HERD_JSON_STRING : items[i].raw.data == NULL)
            continue;
        g_autofree char *decoded = f && f->escaped ? herd_json_field_dup(f) : NULL;
        const char *text = decoded ? decoded : f ? f->value : items[i].raw.data;
        gsize len = decoded ? strlen(decoded) : f ? f->len : strnlen(items[i].raw.data, items[i].raw.len);
        memcpy(at, text, len);
        at[len] = '\0';
        out[i] = at;
        at += len + 1;
    }
    return block;
}

static void sub_free(gpointer p)
{
    Sub *sub = p;
    herd_frames_clear(&sub->reply);
    g_free(sub->sub_id);
    g_free(sub->uuid);
    g_free(sub->header);
    g_free(sub);
}

static void sub_template_free(struct SubTemplate *t);

static void job_free(Job *job)
{
    herd_frames_clear(&job->req);
    g_free(job->texts);
    if (job->metadata)
        json_node_unref(job->metadata);
    if (job->subs)
        g_ptr_array_free(job->subs, TRUE);
    sub_template_free(job->sub_template);
    g_free(job);
}

static void job_finish(Channel *ch, Job *job)
{
    if (job->subs) {
        for (guint i = 0; i < job->subs->len; i++)
            g_hash_table_remove(ch->subs, ((Sub *)job->subs->pdata[i])->sub_id);
    }
    g_hash_table_remove(ch->jobs, job->msg_id);
    herd_hub_job_forget(ch->ctl, job);
    job_free(job);
}

static void reply_free(Reply *r)
{
    herd_frames_clear(&r->frames);
    g_free(r->texts);
    g_free(r);
}

/* Send and log failures; returns FALSE when the peer is unreachable. If the first frame
 * was refused (unknown peer), f is left as it was; otherwise it is left empty. */
static gboolean try_send_frames(HerdController *ctl, void *sock, HerdFrames *f, const char *what)
{
    herd_loop_touch(ctl->loop, sock); /* a send can hide the socket's next input edge */
    if (herd_frames_try_send(sock, f) == 0)
        return TRUE;
    int e = errno;
    if (e != EHOSTUNREACH)
        g_warning("%s: send failed: %s", what, zmq_strerror(e));
    errno = e;
    return FALSE;
}

/* The same, and f is left empty whatever happened. */
static gboolean send_frames(HerdController *ctl, void *sock, HerdFrames *f, const char *what)
{
    gboolean sent = try_send_frames(ctl, sock, f, what);
    if (!sent) {
        int e = errno;
        herd_frames_clear(f);
        errno = e;
    }
    return sent;
}

/* Messages for clients wait until the end of the loop iteration and then go out
 * together: libzmq's I/O thread is then woken once for many instead of once for each,
 * and carries them to each client in one batch. A client-bound send needs no answer
 * (a client that left is not an error to act on), so nothing waits for its result.
 * Requests for engines are gathered the same way (see EngineOut below) and go out first. */
typedef struct OutMsg {
    void *sock;
    HerdFrames frames;
    const char *what;
} OutMsg;

static void send_to_client(HerdController *ctl, void *sock, HerdFrames *f, const char *what)
{
    OutMsg m = { .sock = sock, .frames = *f, .what = what };
    herd_frames_init(f); /* taken */
    g_array_append_val(ctl->client_outbox, m);
}

static void flush_engine_outbox(HerdController *ctl);

static void flush_client_outbox(HerdController *ctl)
{
    GArray *box = ctl->client_outbox;
    for (guint i = 0; i < box->len; i++) {
        OutMsg *m = &g_array_index(box, OutMsg, i);
        send_frames(ctl, m->sock, &m->frames, m->what);
    }
    g_array_set_size(box, 0);
}

/* The end of a loop iteration: requests for engines, then replies for clients. */
static void flush_outboxes(gpointer data)
{
    HerdController *ctl = data;
    flush_engine_outbox(ctl);
    flush_client_outbox(ctl);
}

/* ---------------------------------------------------------------- building messages */

/* A controller-made reply to a request: prefix frames then a signed message. */
static void build_reply(HerdController *ctl, HerdFrames *out, const char *msg_type, HerdBytes parent,
                        JsonNode *metadata, JsonNode *content)
{
    herd_session_build_node(ctl->session, out, msg_type, parent, metadata, content, NULL);
}

/* The members that mark a reply as part of a broadcast, as 7.1 engines write them. */
static void add_broadcast_members(JsonBuilder *b, const Job *job)
{
    json_builder_set_member_name(b, "is_broadcast");
    json_builder_add_boolean_value(b, TRUE);
    json_builder_set_member_name(b, "is_coalescing");
    json_builder_add_boolean_value(b, job->coalescing);
    json_builder_set_member_name(b, "original_msg_id");
    json_builder_add_string_value(b, job->msg_id);
}

static JsonNode *engine_error_metadata(const char *uuid, const Sub *sub)
{
    char date[HERD_ISO_LEN];
    herd_iso_now(date);
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "status");
    json_builder_add_string_value(b, "error");
    json_builder_set_member_name(b, "engine");
    json_builder_add_string_value(b, uuid);
    json_builder_set_member_name(b, "date");
    json_builder_add_string_value(b, date);
    if (sub)
        add_broadcast_members(b, sub->job);
    json_builder_end_object(b);
    JsonNode *n = json_builder_get_root(b);
    g_object_unref(b);
    return n;
}

/* ---------------------------------------------------------------- scheduler host ops */

static void host_dispatch(HerdSchedHost *host, HerdJob *hj, HerdEngine *he);
static void host_deliver(HerdSchedHost *host, HerdJob *hj, HerdReply *hr);
static void host_fail(HerdSchedHost *host, HerdJob *hj, const char *ename, const char *evalue);
static HerdReply *host_engine_error(HerdSchedHost *host, HerdJob *hj, const char *uuid);

/* A reply is freed once nobody needs it: not while the scheduler's reply callback runs
 * (offer_reply frees it afterwards), and not while the scheduler keeps it. */
static void release_reply(Reply *r)
{
    if (!r->offering)
        reply_free(r);
}

static HerdReply *host_reply_keep(HerdSchedHost *host, HerdReply *hr)
{
    (void)host;
    ((Reply *)hr->core)->kept = TRUE;
    return hr;
}

static void host_reply_free(HerdSchedHost *host, HerdReply *hr)
{
    (void)host;
    Reply *r = hr->core;
    r->kept = FALSE;
    release_reply(r);
}

static HerdEngine *host_find_engine(HerdSchedHost *host, const char *uuid)
{
    Channel *ch = channel_of(host);
    Engine *e = uuid ? herd_hub_engine(ch->ctl, uuid) : NULL;
    return e ? &e->chan_view[ch->kind] : NULL;
}

typedef struct {
    Channel *ch;
    gpointer data;
    guint id;
} SchedTimer;

static void sched_timer_fire(gpointer p)
{
    SchedTimer *t = p;
    Channel *ch = t->ch;
    gpointer data = t->data;
    g_hash_table_remove(ch->ctl->sched_timers, GUINT_TO_POINTER(t->id));
    ch->ops->timer(ch->sched, data);
}

static guint host_timer_add(HerdSchedHost *host, guint ms, gpointer data)
{
    Channel *ch = channel_of(host);
    SchedTimer *t = g_new(SchedTimer, 1);
    t->ch = ch;
    t->data = data;
    t->id = herd_loop_timer_add(ch->ctl->loop, ms, sched_timer_fire, t);
    g_hash_table_insert(ch->ctl->sched_timers, GUINT_TO_POINTER(t->id), t);
    return t->id;
}

static void host_timer_cancel(HerdSchedHost *host, guint id)
{
    Channel *ch = channel_of(host);
    if (g_hash_table_remove(ch->ctl->sched_timers, GUINT_TO_POINTER(id)))
        herd_loop_timer_cancel(ch->ctl->loop, id);
}

static gint64 host_now_us(HerdSchedHost *host)
{
    (void)host;
    return g_get_monotonic_time();
}

static const HerdSchedHostOps host_ops = {
    .dispatch = host_dispatch,
    .deliver = host_deliver,
    .fail = host_fail,
    .engine_error = host_engine_error,
    .reply_keep = host_reply_keep,
    .reply_free = host_reply_free,
    .find_engine = host_find_engine,
    .timer_add = host_timer_add,
    .timer_cancel = host_timer_cancel,
    .now_us = host_now_us,
};

static void deliver_plain(Channel *ch, Job *job, Reply *r);

/* Hand a reply to the channel's scheduler; free it afterwards unless the scheduler keeps
 * it. A reply the scheduler delivers from inside its reply callback goes out after the
 * callback returns: whatever the callback dispatched (the next task for the engine that
 * just answered) is sent first, and the engine waits less. */
static void offer_reply(Channel *ch, Job *job, Reply *r)
{
    r->offering = TRUE;
    ch->ops->reply(ch->sched, &job->pub, &r->pub);
    r->offering = FALSE;
    Job *deliver_to = r->deliver_to;
    r->deliver_to = NULL;
    if (deliver_to)
        deliver_plain(ch, deliver_to, r);
    if (r->consumed || !r->kept)
        reply_free(r);
}

/* What every sub-request of a broadcast shares, as text: the request header cut around
 * its msg_id value, and the request metadata without the members each sub sets. Made
 * once per request, so a sub costs string appends and a signature, not a JSON parse and
 * two serialisations per engine. */
typedef struct SubTemplate {
    GString *header_head; /* header text up to the msg_id value, its raw (escaped) text included */
    char *header_tail;    /* header text from the msg_id value's closing quote on */
    GString *md_head;     /* metadata without targets/original_msg_id, without its closing brace */
} SubTemplate;

static void sub_template_free(SubTemplate *t)
{
    if (!t)
        return;
    g_string_free(t->header_head, TRUE);
    g_free(t->header_tail);
    g_string_free(t->md_head, TRUE);
    g_free(t);
}

static SubTemplate *sub_template_new(const Job *job)
{
    const HerdFrames *req = &job->req;
    HerdBytes hb = herd_frame_bytes(req, herd_wire(req, HERD_WIRE_HEADER));
    HerdJsonField id = { .name = "msg_id" };
    /* The request was accepted after this same scan found a string msg_id. */
    gboolean scanned = herd_json_scan(hb, &id, 1);
    g_assert(scanned && id.kind == HERD_JSON_STRING);
    SubTemplate *t = g_new0(SubTemplate, 1);
    const char *value_end = id.value + id.len;
    t->header_head = g_string_new_len(hb.data, value_end - hb.data);
    t->header_tail = g_strndup(value_end, hb.len - (gsize)(value_end - hb.data));

    /* A new object with the request's other members: json_node_copy would share the
     * request's object, which the scheduler still reads (its targets). */
    JsonObject *src = json_node_get_object(job->metadata);
    JsonObject *mo = json_object_new();
    GList *names = json_object_get_members(src);
    for (GList *l = names; l; l = l->next)
        if (strcmp(l->data, "targets") != 0 && strcmp(l->data, "original_msg_id") != 0)
            json_object_set_member(mo, l->data, json_node_copy(json_object_get_member(src, l->data)));
    g_list_free(names);
    JsonNode *md = json_node_init_object(json_node_alloc(), mo);
    json_object_unref(mo);
    gsize len;
    char *text = herd_json_to_string(md, &len);
    json_node_unref(md);
    t->md_head = g_string_new_len(text, (gssize)len - 1); /* drop the closing brace */
    g_free(text);
    return t;
}

static SubTemplate *job_sub_template(Job *job)
{
    if (!job->sub_template)
        job->sub_template = sub_template_new(job);
    return job->sub_template;
}

/* The header of engine uuid's copy of a broadcast request: the request's, with msg_id
 * "<orig>_<uuid>" (the original msg_id stays its raw, escaped text). Caller frees. */
static char *sub_header(Job *job, const char *uuid, gsize *len)
{
    SubTemplate *t = job_sub_template(job);
    GString *hdr = g_string_sized_new(t->header_head->len + strlen(t->header_tail) + 64);
    g_string_append_len(hdr, t->header_head->str, (gssize)t->header_head->len);
    g_string_append_c(hdr, '_');
    herd_json_append_escaped(hdr, uuid, -1);
    g_string_append(hdr, t->header_tail);
    *len = hdr->len;
    return g_string_free(hdr, FALSE);
}

/* Build the per-engine broadcast request: msg_id "<orig>_<uuid>", metadata with
 * original_msg_id and the single target, re-signed. */
static Sub *broadcast_sub(Channel *ch, Job *job, Engine *e, HerdFrames *out)
{
    HerdController *ctl = ch->ctl;
    const HerdFrames *req = &job->req;
    SubTemplate *t = job_sub_template(job);
    Sub *sub = g_new0(Sub, 1);
    herd_frames_init(&sub->reply);
    sub->job = job;
    sub->uuid = g_strdup(e->uuid);
    sub->engine_id = e->pub.id;
    sub->sub_id = g_strdup_printf("%s_%s", job->msg_id, e->uuid);
    gsize hdr_len;
    sub->header = sub_header(job, e->uuid, &hdr_len);

    GString *md = g_string_sized_new(t->md_head->len + 128);
    g_string_append_len(md, t->md_head->str, (gssize)t->md_head->len);
    gboolean md_empty = t->md_head->len == 1; /* just "{" */
    g_string_append(md, md_empty ? "\"original_msg_id\":\"" : ",\"original_msg_id\":\"");
    herd_json_append_escaped(md, job->msg_id, -1);
    g_string_append(md, "\",\"targets\":[[\"");
    herd_json_append_escaped(md, e->uuid, -1);
    g_string_append_printf(md, "\",%d]]}", e->pub.id);
    gsize md_len = md->len;

    herd_frames_init(out);
    herd_frames_push(out, e->uuid, strlen(e->uuid));
    herd_frames_push_frame_copy(out, req, 0); /* client routing id */
    herd_frames_push(out, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(out, "", 0); /* signature, set below */
    herd_frames_push(out, sub->header, hdr_len);
    herd_frames_push_frame_copy(out, req, herd_wire(req, HERD_WIRE_PARENT));
    herd_frames_push_take(out, g_string_free(md, FALSE), md_len);
    for (guint i = herd_wire(req, HERD_WIRE_CONTENT); i < req->n; i++)
        herd_frames_push_frame_copy(out, req, i);
    herd_frames_find_delim(out);
    herd_session_resign(ctl->session, out);
    return sub;
}

/* An engine that could not be sent to answers with an EngineError, but on the next loop
 * iteration: a reply inside dispatch would re-enter the scheduler in the middle of its own
 * decision (and could finish a broadcast before all its targets were dispatched). The job
 * is looked up again by id, so one finished meanwhile is left alone. */
typedef struct {
    Channel *ch;
    char *key;  /* msg_id, or the broadcast sub id */
    char *uuid;
} DeferredError;

static void deferred_error_fire(gpointer p)
{
    DeferredError *d = p;
    Channel *ch = d->ch;
    Job *job = NULL;
    if (ch->kind == CH_BROADCAST) {
        Sub *sub = g_hash_table_lookup(ch->subs, d->key);
        job = sub && !sub->done ? sub->job : NULL;
    } else {
        job = g_hash_table_lookup(ch->jobs, d->key);
    }
    if (job && ch->sched)
        offer_reply(ch, job, host_engine_error(&ch->host, &job->pub, d->uuid)->core);
    g_free(d->key);
    g_free(d->uuid);
    g_free(d);
}

static void defer_engine_error(Channel *ch, const char *key, const char *uuid)
{
    DeferredError *d = g_new(DeferredError, 1);
    d->ch = ch;
    d->key = g_strdup(key);
    d->uuid = g_strdup(uuid);
    herd_loop_timer_add(ch->ctl->loop, 0, deferred_error_fire, d);
}

static void send_to_engine(Channel *ch, Job *job, Engine *e, int attempt);

static void host_dispatch(HerdSchedHost *host, HerdJob *hj, HerdEngine *he)
{
    Channel *ch = channel_of(host);
    Job *job = hj->core;
    Engine *e = engine_of_view(he, ch->kind);
    HerdFrames out;

    if (ch->kind == CH_BROADCAST) {
        Sub *sub = broadcast_sub(ch, job, e, &out);
        g_ptr_array_add(job->subs, sub);
        g_hash_table_insert(ch->subs, sub->sub_id, sub);
        if (!send_frames(ch->ctl, ch->engine_sock, &out, "broadcast")) {
            g_warning("broadcast: engine %d (%s) unreachable for %s", e->pub.id, e->uuid, job->msg_id);
            defer_engine_error(ch, sub->sub_id, e->uuid);
        }
        return;
    }

    if (job->engine)
        herd_hub_job_undispatched(ch->ctl, job);
    job->engine = e;
    herd_hub_job_dispatched(ch->ctl, job, e);
    send_to_engine(ch, job, e, 1);
}

/* An engine registers at its first heartbeat, and a peer's connect completes on its own
 * schedule: a socket of a just-registered engine may not be connected yet (libzmq then
 * refuses the send, ROUTER_MANDATORY). Try again for about five seconds before the job
 * gets an EngineError: one second was seen to run out on a loaded two-CPU machine. */
#define RESEND_INTERVAL_MS 20
#define RESEND_ATTEMPTS 250

typedef struct {
    Channel *ch;
    char *msg_id;
    char *uuid;
    int attempt;
} Resend;

/* Requests for engines wait in an outbox until the end of the loop iteration, like
 * client replies: libzmq's I/O thread then takes a batch per wake-up, and so do the
 * engines. The outbox goes out before the client replies, so that an engine that just
 * answered gets its next task first. A refused request (its engine's socket is not
 * connected yet) is sent again later; the job is found again by its msg_id, kept in the
 * outbox's text. */
typedef struct EngineOut {
    Channel *ch;
    HerdFrames frames; /* [E, C, DELIM, ...] */
    gsize msg_id_at;   /* offsets in ctl->engine_outbox_text */
    gsize uuid_at;
    guint64 job_seq;   /* the job's number: a msg_id may be reused once its job is done */
    int attempt;       /* 1 for the first send */
    gboolean lent;     /* MUX: the job's own frames, to give back on a refusal */
} EngineOut;

/* A MUX request goes to its one engine once, so its own frames are sent rather than
 * copies: a copy shares a frame's data under an atomic reference count, which the loop
 * thread and libzmq's I/O thread would then both write. The job keeps what a reply of its
 * own needs (the client's routing frame and the header, for an EngineError); the other
 * frames of req are left empty until a refusal gives them back. */
static void lend_mux_request(Job *job, HerdFrames *out)
{
    HerdFrames *req = &job->req;
    guint header = herd_wire(req, HERD_WIRE_HEADER);
    herd_frames_init(out);
    for (guint i = 0; i < req->n; i++) {
        if (i == 0 || i == header)
            herd_frames_push_frame_copy(out, req, i);
        else
            herd_frames_push_msg(out, &req->frames[i]);
    }
    herd_frames_swap(out, 0, 1); /* [C, E, M] -> [E, C, M] */
}

static void give_back_mux_request(Job *job, HerdFrames *out)
{
    HerdFrames *req = &job->req;
    guint header = herd_wire(req, HERD_WIRE_HEADER);
    herd_frames_swap(out, 0, 1);
    for (guint i = 0; i < req->n && i < out->n; i++)
        if (i != 0 && i != header)
            zmq_msg_move(&req->frames[i], &out->frames[i]);
}

/* Queue a plain job's request for engine e, [E, C, M]; attempt counts its sends. */
static void send_to_engine(Channel *ch, Job *job, Engine *e, int attempt)
{
    HerdController *ctl = ch->ctl;
    EngineOut m = { .ch = ch, .job_seq = job->seq, .attempt = attempt, .lent = ch->kind == CH_MUX };
    if (m.lent) {
        lend_mux_request(job, &m.frames);
    } else {
        herd_frames_copy(&m.frames, &job->req);
        herd_frames_insert(&m.frames, 0, e->uuid, strlen(e->uuid));
    }
    GString *text = ctl->engine_outbox_text;
    m.msg_id_at = text->len;
    g_string_append_len(text, job->msg_id, (gssize)strlen(job->msg_id) + 1);
    m.uuid_at = text->len;
    g_string_append_len(text, e->uuid, (gssize)strlen(e->uuid) + 1);
    g_array_append_val(ctl->engine_outbox, m);
}

static void resend_later(Channel *ch, const char *msg_id, const char *uuid, int attempt);
static void defer_engine_error(Channel *ch, const char *key, const char *uuid);

/* Job msg_id while it is still dispatched to engine uuid: NULL once it was answered,
 * failed or moved, or its engine unregistered, or the schedulers are gone. */
static Job *job_still_on(Channel *ch, const char *msg_id, const char *uuid)
{
    Job *job = ch->jobs ? g_hash_table_lookup(ch->jobs, msg_id) : NULL;
    return job && job->engine && g_strcmp0(job->engine->uuid, uuid) == 0 && ch->sched ? job : NULL;
}

/* The engine refused m: its frames as they were (intact), or cleared if it failed midway. */
static void engine_refused(EngineOut *m, const char *msg_id, const char *uuid, gboolean intact)
{
    Channel *ch = m->ch;
    Job *job = job_still_on(ch, msg_id, uuid);
    if (job && job->seq != m->job_seq)
        job = NULL; /* a later request that reuses the msg_id */
    if (job && m->lent && intact)
        give_back_mux_request(job, &m->frames);
    herd_frames_clear(&m->frames);
    if (!job)
        return;
    if (m->attempt < RESEND_ATTEMPTS && intact) {
        resend_later(ch, msg_id, uuid, m->attempt + 1);
        return;
    }
    g_warning("%s: engine %d (%s) unreachable for %s", ch->name, job->engine->pub.id, uuid, msg_id);
    herd_hub_job_undispatched(ch->ctl, job);
    job->engine = NULL;
    defer_engine_error(ch, msg_id, uuid);
}

static void flush_engine_outbox(HerdController *ctl)
{
    GArray *box = ctl->engine_outbox;
    for (guint i = 0; i < box->len; i++) {
        EngineOut *m = &g_array_index(box, EngineOut, i);
        const char *msg_id = ctl->engine_outbox_text->str + m->msg_id_at;
        const char *uuid = ctl->engine_outbox_text->str + m->uuid_at;
        guint n = m->frames.n;
        if (!try_send_frames(ctl, m->ch->engine_sock, &m->frames, m->ch->name))
            engine_refused(m, msg_id, uuid, m->frames.n == n);
    }
    g_array_set_size(box, 0);
    g_string_truncate(ctl->engine_outbox_text, 0);
}

static void resend_fire(gpointer p)
{
    Resend *r = p;
    Channel *ch = r->ch;
    Job *job = job_still_on(ch, r->msg_id, r->uuid);
    if (job)
        send_to_engine(ch, job, job->engine, r->attempt);
    g_free(r->msg_id);
    g_free(r->uuid);
    g_free(r);
}

static void resend_later(Channel *ch, const char *msg_id, const char *uuid, int attempt)
{
    Resend *r = g_new(Resend, 1);
    r->ch = ch;
    r->msg_id = g_strdup(msg_id);
    r->uuid = g_strdup(uuid);
    r->attempt = attempt;
    herd_loop_timer_add(ch->ctl->loop, RESEND_INTERVAL_MS, resend_fire, r);
}

/* The reply whose header and content the merged coalescing reply carries: the first
 * failed one in target order, else the last to arrive. (7.1 always takes the last, so an
 * engine's error vanished whenever another engine answered after it, and the client got
 * fewer results than targets without any error.) */
static HerdFrames *coalesced_base(Job *job, Reply *last)
{
    for (guint i = 0; i < job->subs->len; i++) {
        Sub *s = job->subs->pdata[i];
        if (s->failed && s->reply.n)
            return &s->reply;
    }
    return &last->frames;
}

/* Coalescing broadcast: one message shaped by coalesced_base(), every engine's buffers in
 * target order. */
static void send_coalesced(Channel *ch, Job *job, HerdFrames *lf)
{
    HerdController *ctl = ch->ctl;
    g_autoptr(GError) err = NULL;
    JsonNode *md = herd_json_parse_object(herd_frame_bytes(lf, herd_wire(lf, HERD_WIRE_METADATA)), &err);
    if (!md)
        md = json_node_init_object(json_node_alloc(), json_object_new());
    JsonArray *targets = json_array_new();
    for (guint i = 0; i < job->subs->len; i++) {
        Sub *s = job->subs->pdata[i];
        JsonArray *pair = json_array_new();
        json_array_add_string_element(pair, s->uuid);
        json_array_add_int_element(pair, s->engine_id);
        json_array_add_array_element(targets, pair);
    }
    json_object_set_array_member(json_node_get_object(md), "broadcast_targets", targets);
    gsize md_len;
    char *md_str = herd_json_to_string(md, &md_len);
    json_node_unref(md);

    HerdFrames out;
    herd_frames_init(&out);
    herd_frames_push_frame_copy(&out, &job->req, 0);
    herd_frames_push(&out, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&out, "", 0);
    herd_frames_push_frame_copy(&out, lf, herd_wire(lf, HERD_WIRE_HEADER));
    herd_frames_push_frame_copy(&out, lf, herd_wire(lf, HERD_WIRE_PARENT));
    herd_frames_push_take(&out, md_str, md_len);
    herd_frames_push_frame_copy(&out, lf, herd_wire(lf, HERD_WIRE_CONTENT));
    for (guint i = 0; i < job->subs->len; i++) {
        Sub *s = job->subs->pdata[i];
        HerdFrames *rf = s->reply.n ? &s->reply : NULL;
        if (!rf)
            continue;
        for (guint k = herd_wire(rf, HERD_WIRE_BUFFERS); k < rf->n; k++)
            herd_frames_push_frame_copy(&out, rf, k);
    }
    herd_frames_find_delim(&out);
    herd_session_resign(ctl->session, &out);
    send_to_client(ctl, ch->client_sock, &out, "broadcast");
}

/* TRUE if an engine of this coalescing job died before answering. */
static gboolean coalesced_lost_engine(Job *job)
{
    for (guint i = 0; i < job->subs->len; i++) {
        if (((Sub *)job->subs->pdata[i])->engine_lost)
            return TRUE;
    }
    return FALSE;
}

/* A reply the core made for a dead engine (r->pub.synthesized) finishes its part of the
 * job but is not sent: ipyparallel clients fail a broadcast request themselves when one
 * of its engines unregisters (each per-engine id of a plain request, the whole request
 * when coalescing), as they do for MUX. A second answer would find a finished future:
 * 7.1's client then raises InvalidStateError in its receive callback, which leaves its
 * broadcast socket unread, so later replies (even the other engines') never arrive. */
static void deliver_broadcast(Channel *ch, Job *job, Reply *r)
{
    Sub *sub = r->sub;
    if (!sub || sub->done) {
        release_reply(r);
        return;
    }
    sub->done = TRUE;
    sub->engine_lost = r->pub.synthesized;
    job->n_delivered++;
    gboolean last = job->n_delivered == job->subs->len;
    if (job->coalescing) {
        /* keep the frames until every engine answered (see coalesced_base) */
        herd_frames_copy(&sub->reply, &r->frames);
        sub->failed = g_strcmp0(r->pub.status, "ok") != 0;
        if (last && !coalesced_lost_engine(job))
            send_coalesced(ch, job, coalesced_base(job, r));
    } else if (!sub->engine_lost) {
        HerdFrames *f = &r->frames;
        herd_frames_remove(f, 0); /* [E, C, M'] -> [C, M'] */
        send_to_client(ch->ctl, ch->client_sock, f, "broadcast");
    }
    release_reply(r);
    if (last)
        job_finish(ch, job);
}

/* Record a plain job's reply and send it to the client; the job ends here. */
static void deliver_plain(Channel *ch, Job *job, Reply *r)
{
    Engine *e = r->engine_uuid ? g_hash_table_lookup(ch->ctl->engines_by_uuid, r->engine_uuid) : NULL;
    if (job->engine)
        herd_hub_job_undispatched(ch->ctl, job);
    HerdMsgFields fields = {
        .msg_id = job->msg_id, .date = r->date, .started = r->started, .engine = r->engine_uuid,
    };
    herd_hub_job_finished(ch->ctl, job, &r->frames, e, r->status, r->decoded ? &fields : NULL);
    /* ipyparallel clients fail MUX requests of a dead engine themselves, on the
     * unregistration notification; a second answer would only print "stale result". */
    if (!(ch->kind == CH_MUX && r->pub.synthesized)) {
        herd_frames_swap(&r->frames, 0, 1); /* [E, C, M'] -> [C, E, M'] */
        send_to_client(ch->ctl, ch->client_sock, &r->frames, ch->name);
    }
    job_finish(ch, job);
}

static void host_deliver(HerdSchedHost *host, HerdJob *hj, HerdReply *hr)
{
    Channel *ch = channel_of(host);
    Job *job = hj->core;
    Reply *r = hr->core;
    r->consumed = TRUE;
    if (ch->kind == CH_BROADCAST) {
        deliver_broadcast(ch, job, r);
        return;
    }
    if (r->offering) {
        r->deliver_to = job; /* offer_reply sends it once the scheduler is done */
        return;
    }
    deliver_plain(ch, job, r);
    release_reply(r);
}

/* The error replies of a broadcast job that never reached its engines. */
static void fail_broadcast(Channel *ch, Job *job, JsonNode *content)
{
    HerdController *ctl = ch->ctl;
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    add_broadcast_members(b, job);
    if (job->coalescing) {
        json_builder_set_member_name(b, "broadcast_targets");
        json_builder_begin_array(b);
        json_builder_end_array(b);
    }
    json_builder_end_object(b);
    JsonNode *md = json_builder_get_root(b);
    g_object_unref(b);

    const HerdFrames *req = &job->req;
    HerdBytes parent = herd_frame_bytes(req, herd_wire(req, HERD_WIRE_HEADER));
    JsonObject *mo = json_node_get_object(job->metadata);
    JsonNode *tn = json_object_get_member(mo, "targets");
    JsonArray *targets = tn && JSON_NODE_HOLDS_ARRAY(tn) ? json_node_get_array(tn) : NULL;
    guint n = (targets && !job->coalescing) ? json_array_get_length(targets) : 0;
    for (guint i = 0; i < n; i++) {
        JsonNode *pn = json_array_get_element(targets, i);
        JsonArray *pair = JSON_NODE_HOLDS_ARRAY(pn) ? json_node_get_array(pn) : NULL;
        JsonNode *un = pair && json_array_get_length(pair) > 0 ? json_array_get_element(pair, 0) : NULL;
        const char *uuid = un && JSON_NODE_HOLDS_VALUE(un) && json_node_get_value_type(un) == G_TYPE_STRING
                               ? json_node_get_string(un) : NULL;
        if (!uuid)
            continue;
        gsize len;
        g_autofree char *sub_hdr = sub_header(job, uuid, &len);
        HerdFrames out;
        herd_frames_init(&out);
        herd_frames_push_frame_copy(&out, req, 0);
        build_reply(ctl, &out, "apply_reply", (HerdBytes){ sub_hdr, len }, md, content);
        send_to_client(ctl, ch->client_sock, &out, "broadcast");
    }
    if (job->coalescing || n == 0) {
        HerdFrames out;
        herd_frames_init(&out);
        herd_frames_push_frame_copy(&out, req, 0);
        build_reply(ctl, &out, "apply_reply", parent, md, content);
        send_to_client(ctl, ch->client_sock, &out, "broadcast");
    }
    json_node_unref(md);
}

static void host_fail(HerdSchedHost *host, HerdJob *hj, const char *ename, const char *evalue)
{
    Channel *ch = channel_of(host);
    Job *job = hj->core;
    HerdController *ctl = ch->ctl;
    g_info("%s: %s failed by the scheduler: %s %s", ch->name, job->msg_id, ename, evalue ? evalue : "");
    JsonNode *content = herd_error_content(ename, evalue ? evalue : "");
    if (ch->kind == CH_BROADCAST) {
        fail_broadcast(ch, job, content);
        json_node_unref(content);
        job_finish(ch, job);
        return;
    }
    if (job->engine)
        herd_hub_job_undispatched(ctl, job);
    const HerdFrames *req = &job->req;
    HerdFrames out;
    herd_frames_init(&out);
    herd_frames_push_frame_copy(&out, req, 0); /* client */
    build_reply(ctl, &out, "apply_reply", herd_frame_bytes(req, herd_wire(req, HERD_WIRE_HEADER)), NULL,
                content);
    json_node_unref(content);
    /* the record wants the reply as [E, C, M]: give it an empty engine frame */
    HerdFrames rec;
    herd_frames_copy(&rec, &out);
    herd_frames_insert(&rec, 0, "", 0);
    herd_hub_job_finished(ctl, job, &rec, NULL, "error", NULL);
    herd_frames_clear(&rec);
    send_to_client(ctl, ch->client_sock, &out, ch->name);
    job_finish(ch, job);
}

static HerdReply *host_engine_error(HerdSchedHost *host, HerdJob *hj, const char *uuid)
{
    Channel *ch = channel_of(host);
    Job *job = hj->core;
    HerdController *ctl = ch->ctl;
    Reply *r = g_new0(Reply, 1);
    herd_frames_init(&r->frames);
    Sub *sub = NULL;
    HerdBytes parent;
    if (ch->kind == CH_BROADCAST) {
        for (guint i = 0; job->subs && i < job->subs->len; i++) {
            Sub *s = job->subs->pdata[i];
            if (g_strcmp0(s->uuid, uuid) == 0 && !s->done)
                sub = s;
        }
    }
    if (sub)
        parent = (HerdBytes){ sub->header, strlen(sub->header) };
    else
        parent = herd_frame_bytes(&job->req, herd_wire(&job->req, HERD_WIRE_HEADER));
    g_autofree char *evalue =
        g_strdup_printf("Engine b'%s' died while running task '%s'", uuid, sub ? sub->sub_id : job->msg_id);
    JsonNode *content = herd_error_content("EngineError", evalue);
    JsonNode *md = engine_error_metadata(uuid, sub);
    herd_frames_push(&r->frames, uuid, strlen(uuid));
    herd_frames_push_frame_copy(&r->frames, &job->req, 0);
    build_reply(ctl, &r->frames, "apply_reply", parent, md, content);
    json_node_unref(content);
    json_node_unref(md);
    r->sub = sub;
    const TextItem items[] = { { NULL, HERD_BYTES_STR("error") }, { NULL, HERD_BYTES_STR(uuid) } };
    char *texts[G_N_ELEMENTS(items)];
    r->texts = pack_texts(items, G_N_ELEMENTS(items), texts);
    r->status = texts[0];
    r->engine_uuid = texts[1];
    r->pub.status = r->status;
    r->pub.dependencies_met = TRUE;
    r->pub.synthesized = TRUE;
    r->pub.core = r;
    HerdEngine *view = host_find_engine(host, uuid);
    r->pub.engine = view;
    return &r->pub;
}

/* ---------------------------------------------------------------- relays */

/* Signature, replay and layout checks shared by every relay. */
static gboolean accept_message(HerdController *ctl, const char *where, HerdFrames *f, guint n_prefix)
{
    if (!herd_frames_is_wire(f) || (guint)f->delim != n_prefix) {
        herd_hub_drop(ctl, where, f->delim < 0 ? "no <IDS|MSG> delimiter" : "malformed routing prefix or truncated message");
        return FALSE;
    }
    HerdVerify v = herd_session_verify(ctl->session, f);
    if (v != HERD_VERIFY_OK) {
        herd_hub_drop(ctl, where, herd_verify_str(v));
        return FALSE;
    }
    return TRUE;
}

static void relay_control_request(HerdController *ctl, Channel *ch, HerdFrames *f)
{
    herd_frames_swap(f, 0, 1); /* [C, E, M] -> [E, C, M] */
    if (!send_frames(ctl, ch->engine_sock, f, "control"))
        herd_hub_drop(ctl, "control", "request for an engine that is not connected");
}

/* TRUE for metadata that says nothing beyond the defaults: only ipyparallel's task keys
 * (after, follow, timeout, targets, retries), each empty or zero, as clients send by default. */
static gboolean metadata_is_default(HerdBytes b)
{
    HerdJsonField f[] = { { .name = "after" }, { .name = "follow" }, { .name = "timeout" },
                          { .name = "targets" }, { .name = "retries" } };
    guint n_members = 0, n_found = 0;
    if (!herd_json_scan_count(b, f, G_N_ELEMENTS(f), &n_members))
        return FALSE;
    for (guint i = 0; i < G_N_ELEMENTS(f); i++) {
        if (f[i].kind == HERD_JSON_ABSENT)
            continue;
        n_found++;
        gboolean empty = (f[i].kind == HERD_JSON_ARRAY && f[i].len == 2) ||
                         (f[i].kind == HERD_JSON_NUMBER && strspn(f[i].value, "0.") == f[i].len);
        if (!empty)
            return FALSE;
    }
    return n_found == n_members;
}

/* One empty object, shared read-only by every job whose metadata it stands for. */
static JsonNode *empty_metadata(void)
{
    static JsonNode *empty;
    if (g_once_init_enter(&empty)) {
        JsonNode *n = json_node_init_object(json_node_alloc(), json_object_new());
        json_node_seal(n);
        g_once_init_leave(&empty, n);
    }
    return json_node_ref(empty);
}

/* The request metadata the scheduler sees. An empty object stands for metadata that only
 * repeats the defaults, and for every request of a scheduler that never reads it. */
static JsonNode *parse_metadata(Channel *ch, HerdBytes b, GError **err)
{
    if (ch->kind != CH_BROADCAST && (ch->ignores_metadata || metadata_is_default(b)))
        return empty_metadata();
    return herd_json_parse_object(b, err);
}

/* Turn a verified request into a job and hand it to the scheduler; takes f's frames. */
static void start_job(Channel *ch, HerdFrames *f)
{
    HerdController *ctl = ch->ctl;
    HerdJsonField hf[] = { { .name = "msg_id" }, { .name = "msg_type" }, { .name = "session" }, { .name = "date" } };
    if (!herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)), hf, G_N_ELEMENTS(hf))) {
        herd_hub_drop(ctl, ch->name, "header is not a JSON object");
        return;
    }
    /* msg_id, msg_type, session, date, and for MUX the target engine (routing frame 1) */
    const TextItem items[] = { { &hf[0], HERD_BYTES_NULL }, { &hf[1], HERD_BYTES_NULL }, { &hf[2], HERD_BYTES_NULL },
                               { &hf[3], HERD_BYTES_NULL },
                               { NULL, ch->kind == CH_MUX ? herd_frame_bytes(f, 1) : HERD_BYTES_NULL } };
    char *texts[G_N_ELEMENTS(items)];
    g_autofree char *block = pack_texts(items, G_N_ELEMENTS(items), texts);
    const char *msg_id = texts[0], *msg_type = texts[1];
    if (!msg_id || !*msg_id || !msg_type) {
        herd_hub_drop(ctl, ch->name, "header without msg_id or msg_type");
        return;
    }
    if (ch->kind == CH_MUX && g_str_has_prefix(msg_type, "comm_")) {
        /* comm messages get no reply: relay without tracking */
        herd_frames_swap(f, 0, 1);
        send_frames(ctl, ch->engine_sock, f, "mux");
        return;
    }
    if (g_hash_table_contains(ch->jobs, msg_id)) {
        herd_hub_drop(ctl, ch->name, "duplicate msg_id of a request in flight");
        return;
    }
    g_autoptr(GError) err = NULL;
    JsonNode *md = parse_metadata(ch, herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)), &err);
    if (!md) {
        herd_hub_drop(ctl, ch->name, "metadata is not a JSON object");
        return;
    }
    Job *job = g_new0(Job, 1);
    job->ch = ch;
    job->req = *f; /* take the frames */
    herd_frames_init(f);
    job->texts = g_steal_pointer(&block);
    job->msg_id = texts[0];
    job->msg_type = texts[1];
    job->session = texts[2];
    job->date = texts[3];
    job->target_uuid = texts[4];
    job->metadata = md;
    job->seq = ++ctl->job_seq;
    if (ch->kind == CH_BROADCAST) {
        job->subs = g_ptr_array_new_with_free_func(sub_free);
        job->coalescing = herd_json_bool(json_node_get_object(md), "is_coalescing", FALSE);
    }
    job->pub.msg_id = job->msg_id;
    job->pub.msg_type = job->msg_type;
    job->pub.target_uuid = job->target_uuid;
    job->pub.metadata = json_node_get_object(md);
    job->pub.received_us = g_get_monotonic_time();
    job->pub.core = job;
    g_hash_table_insert(ch->jobs, job->msg_id, job);
    herd_hub_job_received(ctl, job);
    ch->ops->request(ch->sched, &job->pub);
}

static void on_client_request(HerdFrames *f, gpointer data)
{
    Channel *ch = data;
    HerdController *ctl = ch->ctl;
    gboolean named = ch->kind == CH_MUX || ch->kind == CH_CONTROL;
    if (!accept_message(ctl, ch->name, f, named ? 2 : 1))
        return;
    if (ch->kind == CH_CONTROL)
        relay_control_request(ctl, ch, f);
    else
        start_job(ch, f);
}

void herd_router_submit_internal(HerdController *ctl, HerdFrames *msg)
{
    start_job(&ctl->ch[CH_TASK], msg);
    herd_frames_clear(msg);
}

static void on_engine_reply(HerdFrames *f, gpointer data)
{
    Channel *ch = data;
    HerdController *ctl = ch->ctl;
    if (!accept_message(ctl, ch->name, f, 2))
        return;
    if (ch->kind == CH_CONTROL) {
        herd_frames_swap(f, 0, 1);
        send_to_client(ctl, ch->client_sock, f, "control");
        return;
    }
    HerdJsonField pf[] = { { .name = "msg_id" } };
    HerdJsonField mf[] = { { .name = "status" }, { .name = "dependencies_met" }, { .name = "started" },
                           { .name = "engine" } };
    HerdJsonField hf[] = { { .name = "date" } };
    if (!herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_PARENT)), pf, G_N_ELEMENTS(pf)) ||
        !herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)), mf, G_N_ELEMENTS(mf)) ||
        !herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)), hf, G_N_ELEMENTS(hf))) {
        herd_hub_drop(ctl, ch->name, "reply with a header, parent header or metadata that is not a JSON object");
        return;
    }
    char idbuf[256];
    g_autofree char *long_id = NULL;
    const char *pid = herd_json_field_str(&pf[0], idbuf, sizeof idbuf);
    if (!pid)
        pid = long_id = herd_json_field_dup(&pf[0]);
    Job *job = NULL;
    Sub *sub = NULL;
    if (pid) {
        if (ch->kind == CH_BROADCAST) {
            sub = g_hash_table_lookup(ch->subs, pid);
            job = sub ? sub->job : NULL;
        } else {
            job = g_hash_table_lookup(ch->jobs, pid);
        }
    }
    if (!job) {
        if (ch->kind == CH_MUX) {
            /* not ours to judge: relay like a plain MUX device */
            herd_frames_swap(f, 0, 1);
            send_to_client(ctl, ch->client_sock, f, "mux");
        } else {
            herd_hub_drop(ctl, ch->name, "reply to an unknown request");
        }
        return;
    }
    Reply *r = g_new0(Reply, 1);
    r->frames = *f;
    herd_frames_init(f);
    r->sub = sub;
    /* status ("ok" when absent), started, date, engine (metadata.engine, else the routing id) */
    const TextItem items[] = {
        mf[0].kind == HERD_JSON_STRING ? (TextItem){ &mf[0], HERD_BYTES_NULL } : (TextItem){ NULL, HERD_BYTES_STR("ok") },
        { &mf[2], HERD_BYTES_NULL },
        { &hf[0], HERD_BYTES_NULL },
        mf[3].kind == HERD_JSON_STRING ? (TextItem){ &mf[3], HERD_BYTES_NULL }
                                       : (TextItem){ NULL, herd_frame_bytes(&r->frames, 0) },
    };
    char *texts[G_N_ELEMENTS(items)];
    r->texts = pack_texts(items, G_N_ELEMENTS(items), texts);
    r->status = texts[0];
    r->started = texts[1];
    r->date = texts[2];
    r->engine_uuid = texts[3];
    r->decoded = mf[3].kind == HERD_JSON_ABSENT || mf[3].kind == HERD_JSON_STRING;
    r->pub.status = r->status;
    r->pub.dependencies_met = mf[1].kind != HERD_JSON_FALSE;
    r->pub.engine = host_find_engine(&ch->host, r->engine_uuid);
    r->pub.core = r;
    if (job->engine && ch->kind != CH_BROADCAST) {
        herd_hub_job_undispatched(ctl, job); /* it is no longer running there */
        job->engine = NULL;
    }
    offer_reply(ch, job, r);
}

static gboolean on_client_sock(void *sock, gpointer data)
{
    return herd_frames_recv_batch(sock, RECV_BATCH, on_client_request, data);
}

static gboolean on_engine_sock(void *sock, gpointer data)
{
    return herd_frames_recv_batch(sock, RECV_BATCH, on_engine_reply, data);
}

static void on_iopub_msg(HerdFrames *f, gpointer data)
{
    Channel *ch = data;
    HerdController *ctl = ch->ctl;
    if (!accept_message(ctl, "iopub", f, (guint)MAX(f->delim, 0)))
        return;
    herd_hub_iopub(ctl, f);
    send_frames(ctl, ctl->iopub_out, f, "iopub");
}

static gboolean on_iopub(void *sock, gpointer data)
{
    return herd_frames_recv_batch(sock, RECV_BATCH, on_iopub_msg, data);
}

/* ---------------------------------------------------------------- engines */

void herd_router_engine_up(HerdController *ctl, Engine *e)
{
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        e->chan_view[k] = (HerdEngine){ .id = e->pub.id, .uuid = e->uuid, .sched = NULL };
        if (ch->ops)
            ch->ops->engine_up(ch->sched, &e->chan_view[k]);
    }
}

void herd_router_engine_down(HerdController *ctl, Engine *e)
{
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        if (ch->ops)
            ch->ops->engine_down(ch->sched, &e->chan_view[k]);
    }
}

gboolean herd_router_is_pending(HerdController *ctl, const char *msg_id)
{
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        if (ch->jobs && (g_hash_table_contains(ch->jobs, msg_id) ||
                         (ch->subs && g_hash_table_contains(ch->subs, msg_id))))
            return TRUE;
    }
    return FALSE;
}

/* ---------------------------------------------------------------- setup */

/* Create a channel's two ROUTERs (with the routing ids engines see) and bind the engine
 * side; the client side is bound later, in ipcontroller's port order. */
static gboolean make_channel_sockets(HerdController *ctl, Channel *ch, const char *client_id,
                                     const char *engine_id, int *engine_port, GError **err)
{
    ch->client_sock = new_socket(ctl, ZMQ_ROUTER, client_id);
    ch->engine_sock = new_socket(ctl, ZMQ_ROUTER, engine_id);
    /* an engine that is registered but not connected must be an error, not a silent drop */
    int one = 1;
    zmq_setsockopt(ch->engine_sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    return bind_on(&ctl->engine_side, ch->engine_sock, ch->name, ZMQ_ROUTER, *engine_port, engine_port, err);
}

static void init_channel(HerdController *ctl, int kind)
{
    Channel *ch = &ctl->ch[kind];
    ch->host.ops = &host_ops;
    ch->host.channel = channel_names[kind];
    ch->kind = kind;
    ch->name = channel_names[kind];
    ch->ctl = ctl;
    ch->jobs = g_hash_table_new(herd_str_hash, g_str_equal);
    if (kind == CH_BROADCAST)
        ch->subs = g_hash_table_new(herd_str_hash, g_str_equal);
}

gboolean herd_router_bind_all(HerdController *ctl, GError **err)
{
    HerdConfig *cfg = ctl->cfg;
    HerdConnPorts *cp = &ctl->client_info.ports, *ep = &ctl->engine_info.ports;
    for (int k = 0; k < CH_COUNT; k++)
        init_channel(ctl, k);

    if (!open_side(ctl, &ctl->client_side, "client", cfg->client_transport, cfg->client_ip, err) ||
        !open_side(ctl, &ctl->engine_side, "engine", cfg->engine_transport, cfg->engine_ip, err))
        return FALSE;

    /* Order as ipcontroller draws from --ports: registration, engine side, client side. */
    ctl->registration = new_socket(ctl, ZMQ_ROUTER, NULL);
    if (!bind_on(&ctl->client_side, ctl->registration, "registration", ZMQ_ROUTER, cp->registration,
                 &cp->registration, err))
        return FALSE;
    gboolean same_side = g_strcmp0(cfg->client_transport, cfg->engine_transport) == 0 &&
                         g_strcmp0(cfg->client_ip, cfg->engine_ip) == 0;
    if (same_side) {
        ep->registration = cp->registration;
    } else if (!bind_on(&ctl->engine_side, ctl->registration, "registration", ZMQ_ROUTER, ep->registration,
                        &ep->registration, err)) {
        return FALSE;
    }

    if (!make_channel_sockets(ctl, &ctl->ch[CH_CONTROL], "control_in", "control_out", &ep->control, err) ||
        !make_channel_sockets(ctl, &ctl->ch[CH_MUX], "mux_in", "mux_out", &ep->mux, err) ||
        !make_channel_sockets(ctl, &ctl->ch[CH_TASK], "task_in", "task_out", &ep->task, err))
        return FALSE;
    ctl->iopub_in = new_socket(ctl, ZMQ_SUB, NULL);
    ctl->hb_ping = new_socket(ctl, ZMQ_PUB, NULL);
    ctl->hb_pong = new_socket(ctl, ZMQ_ROUTER, NULL);
    if (!bind_on(&ctl->engine_side, ctl->iopub_in, "iopub", ZMQ_SUB, ep->iopub, &ep->iopub, err) ||
        !bind_on(&ctl->engine_side, ctl->hb_ping, "hb_ping", ZMQ_PUB, ep->hb_ping, &ep->hb_ping, err) ||
        !bind_on(&ctl->engine_side, ctl->hb_pong, "hb_pong", ZMQ_ROUTER, ep->hb_pong, &ep->hb_pong, err))
        return FALSE;
    if (!make_channel_sockets(ctl, &ctl->ch[CH_BROADCAST], "sub_scheduler_0", "sub_scheduler_00",
                              &ep->broadcast_engine[0], err))
        return FALSE;
    ep->n_broadcast_engine = 1;

    struct {
        void *sock;
        const char *name;
        int type;
        int *port;
    } client_binds[] = {
        { ctl->ch[CH_CONTROL].client_sock, "control", ZMQ_ROUTER, &cp->control },
        { ctl->ch[CH_MUX].client_sock, "mux", ZMQ_ROUTER, &cp->mux },
        { ctl->ch[CH_TASK].client_sock, "task", ZMQ_ROUTER, &cp->task },
        { NULL, "iopub", ZMQ_PUB, &cp->iopub },
        { NULL, "notification", ZMQ_PUB, &cp->notification },
        { ctl->ch[CH_BROADCAST].client_sock, "broadcast", ZMQ_ROUTER, &cp->broadcast },
    };
    ctl->iopub_out = new_socket(ctl, ZMQ_PUB, NULL);
    ctl->notification = new_socket(ctl, ZMQ_PUB, NULL);
    client_binds[3].sock = ctl->iopub_out;
    client_binds[4].sock = ctl->notification;
    for (guint i = 0; i < G_N_ELEMENTS(client_binds); i++) {
        if (!bind_on(&ctl->client_side, client_binds[i].sock, client_binds[i].name, client_binds[i].type,
                     *client_binds[i].port, client_binds[i].port, err))
            return FALSE;
    }
    /* the engine file mirrors these keys for its own side */
    ep->broadcast = ep->broadcast_engine[0];

    ctl->client_outbox = g_array_new(FALSE, FALSE, sizeof(OutMsg));
    ctl->engine_outbox = g_array_new(FALSE, FALSE, sizeof(EngineOut));
    ctl->engine_outbox_text = g_string_new(NULL);
    herd_loop_set_flush(ctl->loop, flush_outboxes, ctl);
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        herd_loop_add_socket(ctl->loop, ch->client_sock, on_client_sock, ch);
        herd_loop_add_socket(ctl->loop, ch->engine_sock, on_engine_sock, ch);
    }
    herd_loop_add_socket(ctl->loop, ctl->iopub_in, on_iopub, &ctl->ch[CH_MUX]);
    herd_loop_add_socket(ctl->loop, ctl->registration, herd_hub_on_registration, ctl);
    herd_loop_add_socket(ctl->loop, ctl->hb_pong, herd_hub_on_pong, ctl);

    ctl->client_info.interface = g_strdup(ctl->client_side.ops->interface(ctl->client_side.inst));
    ctl->engine_info.interface = g_strdup(ctl->engine_side.ops->interface(ctl->engine_side.inst));
    return TRUE;
}

gboolean herd_router_load_schedulers(HerdController *ctl, GError **err)
{
    HerdConfig *cfg = ctl->cfg;
    const char *names[CH_COUNT] = { cfg->mux_scheduler, cfg->task_scheduler, cfg->broadcast_scheduler, NULL };
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        if (!names[k])
            continue;
        ch->plugin = herd_plugin_load(HERD_PLUGIN_SCHEDULER, names[k], (const char *const *)ctl->plugin_path, err);
        if (!ch->plugin) {
            g_prefix_error(err, "%s channel: ", ch->name);
            return FALSE;
        }
        const HerdPluginDescriptor *desc = herd_plugin_descriptor(ch->plugin);
        ch->ops = desc->ops;
        /* `flags` exists from ABI 1.1 on */
        ch->ignores_metadata = desc->abi_minor >= 1 && (ch->ops->flags & HERD_SCHED_IGNORES_METADATA);
        g_autofree char *group = g_strdup_printf("scheduler.%s", ch->name);
        ch->sched = ch->ops->create(&ch->host, cfg->keyfile, group, err);
        if (!ch->sched) {
            g_prefix_error(err, "%s channel, scheduler '%s': ", ch->name, names[k]);
            return FALSE;
        }
    }
    const char *scheme = ctl->ch[CH_TASK].ops->scheme ? ctl->ch[CH_TASK].ops->scheme(ctl->ch[CH_TASK].sched) : NULL;
    g_free(ctl->client_info.task_scheme);
    ctl->client_info.task_scheme = g_strdup(scheme ? scheme : "leastload");
    return TRUE;
}

static void close_sock(void **s)
{
    if (*s) {
        zmq_close(*s);
        *s = NULL;
    }
}

/* Free the outboxes; what is still in them (made while the schedulers were destroyed) is
 * dropped with the sockets. */
static void free_outboxes(HerdController *ctl)
{
    if (!ctl->client_outbox)
        return;
    for (guint i = 0; i < ctl->client_outbox->len; i++)
        herd_frames_clear(&g_array_index(ctl->client_outbox, OutMsg, i).frames);
    g_array_free(ctl->client_outbox, TRUE);
    ctl->client_outbox = NULL;
    for (guint i = 0; i < ctl->engine_outbox->len; i++)
        herd_frames_clear(&g_array_index(ctl->engine_outbox, EngineOut, i).frames);
    g_array_free(ctl->engine_outbox, TRUE);
    ctl->engine_outbox = NULL;
    g_string_free(ctl->engine_outbox_text, TRUE);
    ctl->engine_outbox_text = NULL;
}

void herd_router_close(HerdController *ctl)
{
    /* the replies go out; requests for engines are dropped with the sockets (a refused one
     * would only schedule a resend that never comes) */
    if (ctl->client_outbox)
        flush_client_outbox(ctl);
    for (int k = 0; k < CH_COUNT; k++) {
        Channel *ch = &ctl->ch[k];
        if (ch->ops && ch->sched)
            ch->ops->destroy(ch->sched);
        ch->sched = NULL;
        if (ch->jobs) {
            GHashTableIter it;
            gpointer key, val;
            g_hash_table_iter_init(&it, ch->jobs);
            while (g_hash_table_iter_next(&it, &key, &val)) {
                g_hash_table_iter_steal(&it);
                job_free(val);
            }
            g_hash_table_destroy(ch->jobs);
            ch->jobs = NULL;
        }
        if (ch->subs) {
            g_hash_table_destroy(ch->subs);
            ch->subs = NULL;
        }
        close_sock(&ch->client_sock);
        close_sock(&ch->engine_sock);
        if (ch->plugin)
            herd_plugin_unload(ch->plugin);
        ch->plugin = NULL;
        ch->ops = NULL;
    }
    free_outboxes(ctl);
    close_sock(&ctl->registration);
    close_sock(&ctl->notification);
    close_sock(&ctl->iopub_in);
    close_sock(&ctl->iopub_out);
    close_sock(&ctl->hb_ping);
    close_sock(&ctl->hb_pong);
    Side *sides[] = { &ctl->client_side, &ctl->engine_side };
    for (guint i = 0; i < G_N_ELEMENTS(sides); i++) {
        if (sides[i]->inst)
            sides[i]->ops->close(sides[i]->inst);
        sides[i]->inst = NULL;
        if (sides[i]->plugin)
            herd_plugin_unload(sides[i]->plugin);
        sides[i]->plugin = NULL;
    }
}
