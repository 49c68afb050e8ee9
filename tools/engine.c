/* herd — `herd engine`: native engines that register with an ipyparallel-compatible
 * controller (herdd or ipcontroller) and serve MUX, task, broadcast and control like
 * ipengine, publishing IOPub.
 *
 * One process runs --count N engines in one event loop (libherd's, herd/loop.h): each
 * engine has its own session (its uuid), registration DEALER, shell ROUTER, control ROUTER
 * and heartbeat DEALER, all with routing id = uuid (spec 4.2); the IOPub PUB and the
 * heartbeat-ping SUB are shared by all of them (the controller does not care which socket
 * an IOPub message or a ping came through).
 *
 * An engine heartbeats (which makes the controller announce it and send it work) only once
 * the controller has completed the ZeroMQ handshake on each of its shell and control
 * connections, as libzmq's socket monitor reports; see "Joining" in docs/engine.md.
 *
 * Executors: "echo" answers at once with the request's buffers (for benchmarks);
 * "shell" runs an execute_request's code with /bin/sh -c, streams its stdout/stderr on
 * IOPub and sets the reply status from the exit code. See docs/engine.md.
 */
#include <errno.h>
#include <glib-unix.h>
#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <herd/connfile.h>
#include <herd/loop.h>
#include <herd/wire.h>

#include "herd-tool.h"

typedef enum { EXECUTOR_ECHO, EXECUTOR_SHELL } ExecutorKind;

/* NEW -> REGISTERING (request sent) -> CONNECTING (reply received; shell and control
 * connecting, no heartbeat yet) -> RUNNING (heartbeating) -> STOPPED. */
typedef enum { ENGINE_NEW, ENGINE_REGISTERING, ENGINE_CONNECTING, ENGINE_RUNNING, ENGINE_STOPPED } EngineState;

/* Engines joining at once (registering or connecting): thousands of engines asking in the
 * same millisecond would make the last ones wait past their timeout. It also bounds the
 * socket monitors alive at once. */
#define JOIN_WINDOW 32

/* The sockets monitored while an engine connects (shell, control), and the libzmq sockets
 * each monitor costs (libzmq's PAIR that sends the events, ours that receives them). */
#define MONITORS_PER_ENGINE 2
#define SOCKETS_PER_MONITOR 2
/* Connections the monitors watch: mux, task and broadcast on shell; control. */
#define MAX_LINKS 4

typedef struct EngineHost EngineHost;

/* A received shell or control request. The header and metadata are only scanned for the
 * few members an engine reads (herd_json_scan): no json-glib tree on the hot path. */
typedef struct Request {
    HerdFrames frames;
    JsonNode *content; /* parsed on first use */
    const char *msg_type, *msg_id; /* in the buffers below, or owned_* when long or escaped */
    char msg_type_buf[32], msg_id_buf[96];
    char *owned_type, *owned_id;
    /* Copied into the reply's metadata (spec 6.1). */
    gboolean is_broadcast, is_coalescing;
    const char *original_msg_id; /* decoded, original_len bytes: in the metadata frame or owned */
    gsize original_len;
    char *owned_original;
} Request;

/* An execute_request running under /bin/sh -c. */
typedef struct ShellJob {
    Request *request;
    GPid pid;
    int fds[2];          /* stdout, stderr; -1 after end of file */
    HerdWatch *watches[2];
    GString *partial[2]; /* trailing bytes of an incomplete UTF-8 sequence */
    gint64 started_us;
    int exit_status;     /* from waitpid, valid once reaped */
} ShellJob;

typedef struct Engine Engine;

/* What a pipe callback needs: the engine and which of its command's streams. */
typedef struct PipeSource {
    Engine *engine;
    int stream; /* 0 stdout, 1 stderr */
} PipeSource;

/* How far one connection towards the controller got, as its socket monitor reported it;
 * only READY counts, the others explain a timeout. */
typedef enum {
    LINK_WAITING,          /* no event yet */
    LINK_RETRYING,         /* the TCP (or ipc) connection failed; libzmq retries */
    LINK_CONNECTED,        /* connected, ZeroMQ handshake not completed */
    LINK_HANDSHAKE_FAILED, /* the peer does not speak ZMTP as expected */
    LINK_AUTH_FAILED,      /* the peer refused our CURVE credentials */
    LINK_DISCONNECTED,     /* was ready, then dropped */
    LINK_READY,            /* handshake succeeded */
} LinkState;

/* One connection an engine must have before it heartbeats. */
typedef struct Link {
    const char *channel; /* "mux", "task", "broadcast", "control" */
    int port;            /* monitor events name the endpoint, which ends with ":<port>" */
    guint monitor;       /* index into Engine.monitors of the socket that connects it */
    LinkState state;
} Link;

/* A libzmq monitor on one of an engine's sockets, alive while the engine connects. */
typedef struct SocketMonitor {
    Engine *engine;
    void *monitored;
    void *events; /* our PAIR, connected to the monitor's inproc endpoint */
    HerdWatch *watch;
} SocketMonitor;

/* Messages a socket callback reads at most: one busy engine cannot starve the others. */
#define BATCH 64

/* Watched sockets an engine sent on since the loop last looked at them (see
 * engine_recheck). */
enum { SENT_REGISTRATION = 1, SENT_SHELL = 2, SENT_CONTROL = 4 };

struct Engine {
    EngineHost *host;
    HerdSession *session;
    const char *uuid; /* = session id */
    char *metadata_engine; /* {"engine":"<uuid>"}: the metadata of control replies and IOPub */
    char *metadata_fixed;  /* the constant members of a shell reply's metadata, see reply_metadata */
    guint sent_on;         /* SENT_* */
    int id;           /* assigned at registration, -1 before */
    int requested_id; /* -1 = let the controller choose */
    EngineState state;
    gint64 deadline_us; /* for the registration reply, then for the connections */
    Link links[MAX_LINKS];
    guint n_links, n_ready;
    SocketMonitor monitors[MONITORS_PER_ENGINE];
    void *registration, *shell, *control, *heart;
    HerdWatch *w_registration, *w_shell, *w_control;
    PipeSource pipes[2];
    GQueue waiting; /* Request*: shell requests queued behind a running job */
    ShellJob *job;
    GHashTable *aborted; /* msg ids to answer with status "aborted" */
    int execution_count;
};

struct EngineHost {
    HerdConnInfo ci;
    ExecutorKind executor;
    void *zctx;
    void *iopub;   /* shared PUB */
    void *hb_sub;  /* shared SUB on hb_ping */
    GPtrArray *engines;
    HerdLoop *loop;
    GQueue unregistered;   /* Engine*: not asked to register yet */
    GPtrArray *joining;     /* Engine*: registering or connecting (at most JOIN_WINDOW) */
    GPtrArray *reaping;     /* Engine*: command closed its pipes, waiting for its exit */
    guint n_stopped;
    int registration_timeout_ms; /* --timeout: for the reply, and again for the connections */
    guint next_monitor;          /* names the monitors' inproc endpoints */
    int hb_max_misses;
    int hb_period_ms;      /* from the registration reply */
    gint64 last_ping_us;   /* controller liveness */
    int exit_status;
    /* Reused for every message an engine builds (one at a time, one thread). */
    GString *header_text, *metadata_text, *content_text, *topic_text;
};

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Registering or connecting: in the join window, under a deadline. */
static gboolean engine_joining(const Engine *e)
{
    return e->state == ENGINE_REGISTERING || e->state == ENGINE_CONNECTING;
}

/* Requests are served from the registration reply on: a controller should not send any
 * before the first heartbeat, but one that does is answered. */
static gboolean engine_serving(const Engine *e)
{
    return e->state == ENGINE_CONNECTING || e->state == ENGINE_RUNNING;
}

/* ---- requests ---- */

static void request_free(Request *r)
{
    if (!r)
        return;
    g_clear_pointer(&r->content, json_node_unref);
    g_free(r->owned_type);
    g_free(r->owned_id);
    g_free(r->owned_original);
    herd_frames_clear(&r->frames);
    g_free(r);
}

/* A string member as UTF-8 text: in buf when it fits and has no escapes, else decoded
 * into *owned. NULL when it is absent, not a string, or not valid. */
static const char *field_text(const HerdJsonField *f, char *buf, gsize size, char **owned)
{
    const char *text = herd_json_field_str(f, buf, size);
    if (!text && f->kind == HERD_JSON_STRING)
        text = *owned = herd_json_field_dup(f);
    return text && g_utf8_validate(text, -1, NULL) ? text : NULL;
}

/* Read the members of the header and metadata an engine needs; FALSE when the message
 * is malformed. */
static gboolean request_scan(Request *r)
{
    const HerdFrames *f = &r->frames;
    HerdJsonField header[] = { { .name = "msg_type" }, { .name = "msg_id" } };
    HerdJsonField metadata[] = { { .name = "is_broadcast" }, { .name = "is_coalescing" },
                                 { .name = "original_msg_id" } };
    if (!herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)), header, G_N_ELEMENTS(header)) ||
        !herd_json_scan(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)), metadata, G_N_ELEMENTS(metadata)))
        return FALSE;
    r->msg_type = field_text(&header[0], r->msg_type_buf, sizeof r->msg_type_buf, &r->owned_type);
    r->msg_id = field_text(&header[1], r->msg_id_buf, sizeof r->msg_id_buf, &r->owned_id);
    r->is_broadcast = metadata[0].kind == HERD_JSON_TRUE;
    r->is_coalescing = metadata[1].kind == HERD_JSON_TRUE;
    const HerdJsonField *original = &metadata[2];
    if (original->kind == HERD_JSON_STRING && !original->escaped) {
        r->original_msg_id = original->value; /* no escapes: the JSON text is the string */
        r->original_len = original->len;
        if (!g_utf8_validate_len(original->value, original->len, NULL))
            return FALSE;
    } else if (original->kind == HERD_JSON_STRING) {
        r->original_msg_id = r->owned_original = herd_json_field_dup(original);
        if (!r->owned_original || !g_utf8_validate(r->owned_original, -1, NULL))
            return FALSE;
        r->original_len = strlen(r->owned_original);
    } else {
        r->original_msg_id = ""; /* absent or not a string */
    }
    return r->msg_type && r->msg_id;
}

/* Verify and scan a received message, taking its frames; NULL when it is rejected. */
static Request *request_take(Engine *e, HerdFrames *frames)
{
    Request *r = g_new0(Request, 1);
    r->frames = *frames;
    herd_frames_init(frames);
    HerdVerify v = herd_frames_is_wire(&r->frames) ? herd_session_verify(e->session, &r->frames) : HERD_VERIFY_MALFORMED;
    if (v != HERD_VERIFY_OK) {
        g_warning("engine %d: dropping message: %s", e->id, herd_verify_str(v));
        request_free(r);
        return NULL;
    }
    if (!request_scan(r)) {
        g_warning("engine %d: dropping message with invalid JSON or without msg_type/msg_id", e->id);
        request_free(r);
        return NULL;
    }
    return r;
}

/* The content, parsed on first use (an echo apply never needs it); an unparsable
 * content reads as {}. */
static JsonObject *request_content(Request *r)
{
    if (!r->content) {
        const HerdFrames *f = &r->frames;
        r->content = herd_json_parse_object(herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), NULL);
        if (!r->content) {
            r->content = json_node_new(JSON_NODE_OBJECT);
            json_node_take_object(r->content, json_object_new());
        }
    }
    return json_node_get_object(r->content);
}

/* ---- sending ---- */

/* Sends a multipart message one frame behind, so that the last frame goes out without
 * ZMQ_SNDMORE although the number of frames is not known in advance. After a failed
 * send the remaining frames are dropped. */
typedef struct PartSender {
    void *sock;
    zmq_msg_t held;
    gboolean holding;
    int error; /* errno of the first failed send, 0 if none */
} PartSender;

static void part_flush(PartSender *p, int flags)
{
    if (!p->holding)
        return;
    p->holding = FALSE;
    if (p->error == 0 && zmq_msg_send(&p->held, p->sock, flags) >= 0)
        return;
    if (p->error == 0)
        p->error = errno;
    zmq_msg_close(&p->held);
}

static void part_add_bytes(PartSender *p, const void *data, gsize len)
{
    part_flush(p, ZMQ_SNDMORE);
    /* zmq_msg_init_size only fails when out of memory, which GLib treats as fatal too. */
    if (zmq_msg_init_size(&p->held, len) != 0)
        g_error("zmq_msg_init_size(%" G_GSIZE_FORMAT "): %s", len, zmq_strerror(errno));
    memcpy(zmq_msg_data(&p->held), data, len);
    p->holding = TRUE;
}

/* Frame i of f, shared by reference count (no copy of its bytes). */
static void part_add_frame(PartSender *p, const HerdFrames *f, guint i)
{
    part_flush(p, ZMQ_SNDMORE);
    zmq_msg_init(&p->held);
    zmq_msg_copy(&p->held, &f->frames[i]);
    p->holding = TRUE;
}

static HerdBytes gstring_bytes(const GString *s)
{
    return (HerdBytes){ s->str, s->len };
}

#define EMPTY_OBJECT ((HerdBytes){ "{}", 2 })

static void engine_note_send(Engine *e, void *sock)
{
    if (sock == e->shell)
        e->sent_on |= SENT_SHELL;
    else if (sock == e->control)
        e->sent_on |= SENT_CONTROL;
    else if (sock == e->registration)
        e->sent_on |= SENT_REGISTRATION;
}

/* Sign and send msg_type through sock: the topic frame, or else r's routing prefix (so the
 * controller routes it back), then a fresh header, r's header as the parent ({} without
 * r), metadata, content and, with_buffers, r's buffers. r's frames are shared, not copied:
 * an echo costs the new header, metadata and signature only. */
static void send_message(Engine *e, void *sock, const Request *r, HerdBytes topic, const char *msg_type,
                         HerdBytes metadata, HerdBytes content, gboolean with_buffers)
{
    GString *header = e->host->header_text;
    g_string_truncate(header, 0);
    herd_session_append_header(e->session, header, msg_type, g_get_real_time());
    const HerdFrames *req = r ? &r->frames : NULL;
    guint parent = req ? herd_wire(req, HERD_WIRE_HEADER) : 0;
    HerdBytes parent_bytes = req ? herd_frame_bytes(req, parent) : EMPTY_OBJECT;
    char sig[65];
    herd_session_sign(e->session, gstring_bytes(header), parent_bytes, metadata, content, sig);

    PartSender out = { .sock = sock };
    if (topic.data) {
        part_add_bytes(&out, topic.data, topic.len);
    } else if (req) {
        for (guint i = 0; i < (guint)req->delim; i++)
            part_add_frame(&out, req, i);
    }
    part_add_bytes(&out, HERD_DELIM, HERD_DELIM_LEN);
    part_add_bytes(&out, sig, strlen(sig));
    part_add_bytes(&out, header->str, header->len);
    if (req)
        part_add_frame(&out, req, parent);
    else
        part_add_bytes(&out, parent_bytes.data, parent_bytes.len);
    part_add_bytes(&out, metadata.data, metadata.len);
    part_add_bytes(&out, content.data, content.len);
    if (req && with_buffers)
        for (guint i = herd_wire(req, HERD_WIRE_BUFFERS); i < req->n; i++)
            part_add_frame(&out, req, i);
    part_flush(&out, 0);
    if (out.error)
        g_warning("cannot send %s: %s", msg_type, zmq_strerror(out.error));
    engine_note_send(e, sock);
}

/* The same with the content as a JSON object node (taken). */
static void send_message_node(Engine *e, void *sock, const Request *r, HerdBytes topic, const char *msg_type,
                              HerdBytes metadata, JsonNode *content)
{
    gsize len;
    g_autofree char *text = herd_json_to_string(content, &len);
    send_message(e, sock, r, topic, msg_type, metadata, (HerdBytes){ text, len }, FALSE);
    json_node_unref(content);
}

/* {"engine": uuid}: the metadata of control replies and IOPub messages. */
static HerdBytes engine_metadata(const Engine *e)
{
    return HERD_BYTES_STR(e->metadata_engine);
}

/* The reply metadata every ipyparallel engine sets (spec 6.1), written from a template
 * into the host's reused buffer: started, dependencies_met, engine, is_broadcast,
 * is_coalescing, original_msg_id, status, and engine_info on errors. */
static HerdBytes reply_metadata(Engine *e, const Request *r, gint64 started_us, const char *status)
{
    GString *md = e->host->metadata_text;
    char started[HERD_ISO_LEN];
    herd_iso_format(started_us, started);
    g_string_assign(md, "{\"started\":\"");
    g_string_append(md, started);
    g_string_append(md, e->metadata_fixed);
    g_string_append(md, r->is_broadcast ? "\"is_broadcast\":true," : "\"is_broadcast\":false,");
    g_string_append(md, r->is_coalescing ? "\"is_coalescing\":true," : "\"is_coalescing\":false,");
    g_string_append(md, "\"original_msg_id\":\"");
    herd_json_append_escaped(md, r->original_msg_id, (gssize)r->original_len);
    g_string_append(md, "\",\"status\":\"");
    herd_json_append_escaped(md, status, -1);
    g_string_append_c(md, '"');
    if (g_str_equal(status, "error")) {
        g_string_append(md, ",\"engine_info\":{\"engine_uuid\":\"");
        herd_json_append_escaped(md, e->uuid, -1);
        g_string_append_printf(md, "\",\"engine_id\":%d}", e->id);
    }
    g_string_append_c(md, '}');
    return gstring_bytes(md);
}

/* Send msg_type with content (taken) and the engine's metadata to the peer that sent r,
 * through sock. */
static void send_reply(Engine *e, void *sock, const Request *r, const char *msg_type, JsonNode *content)
{
    send_message_node(e, sock, r, HERD_BYTES_NULL, msg_type, engine_metadata(e), content);
}

static JsonNode *object_node(JsonObject *o)
{
    JsonNode *node = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(node, o);
    return node;
}

/* IOPub messages go out with topic engine.<id>.<topic>, parent = r's header (or none). */
static HerdBytes iopub_topic(Engine *e, const char *topic)
{
    GString *t = e->host->topic_text;
    g_string_printf(t, "engine.%d.%s", e->id, topic);
    return gstring_bytes(t);
}

static void publish(Engine *e, const char *topic, const char *msg_type, const Request *r, JsonNode *content)
{
    send_message_node(e, e->host->iopub, r, iopub_topic(e, topic), msg_type, engine_metadata(e), content);
}

static void publish_status(Engine *e, const Request *r, const char *state)
{
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "execution_state", state);
    publish(e, "status", "status", r, object_node(c));
}

static void publish_stream(Engine *e, const Request *r, const char *name, const char *text)
{
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "name", name);
    json_object_set_string_member(c, "text", text);
    publish(e, name, "stream", r, object_node(c));
}

/* Error content as an engine sends it: engine_info names this engine. */
static JsonNode *engine_error(Engine *e, const char *ename, const char *evalue, const char *method)
{
    JsonNode *content = herd_error_content(ename, evalue);
    JsonObject *info = json_object_get_object_member(json_node_get_object(content), "engine_info");
    json_object_set_string_member(info, "engine_uuid", e->uuid);
    json_object_set_int_member(info, "engine_id", e->id);
    json_object_set_string_member(info, "method", method);
    return content;
}

static JsonNode *status_content(const char *status)
{
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "status", status);
    return object_node(c);
}

#define STATUS_OK_CONTENT HERD_BYTES_STR("{\"status\":\"ok\"}")

static HerdBytes execute_reply_ok(Engine *e)
{
    GString *c = e->host->content_text;
    g_string_printf(c, "{\"status\":\"ok\",\"execution_count\":%d,\"user_expressions\":{},\"payload\":[]}",
                    e->execution_count);
    return gstring_bytes(c);
}

/* "execute_request" -> "execute_reply" */
static char *reply_type_for(const char *request_type)
{
    const char *suffix = g_strrstr(request_type, "_request");
    if (!suffix)
        return g_strconcat(request_type, "_reply", NULL);
    g_autofree char *base = g_strndup(request_type, (gsize)(suffix - request_type));
    return g_strconcat(base, "_reply", NULL);
}

/* The same answer on shell and control, as ipykernel gives. */
static void send_kernel_info(Engine *e, void *sock, const Request *r)
{
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "status", "ok");
    json_object_set_string_member(c, "protocol_version", HERD_PROTOCOL_VERSION);
    json_object_set_string_member(c, "implementation", "herd");
    json_object_set_string_member(c, "implementation_version", "0.1.0");
    send_reply(e, sock, r, "kernel_info_reply", object_node(c));
}

/* ---- executors ---- */

static void engine_run_next(Engine *e);

/* Final step of every shell request: the reply with status and content, then "idle"
 * (Python's blocking execute waits for the idle status after the reply). */
static void finish_request(Engine *e, Request *r, const char *reply_type, gint64 started_us, const char *status,
                           HerdBytes content, gboolean with_buffers, gboolean publish_idle)
{
    send_message(e, e->shell, r, HERD_BYTES_NULL, reply_type, reply_metadata(e, r, started_us, status), content,
                 with_buffers);
    if (publish_idle)
        publish_status(e, r, "idle");
}

/* The same for an error (content taken): always followed by "idle". */
static void finish_request_error(Engine *e, Request *r, gint64 started_us, JsonNode *error)
{
    g_autofree char *reply_type = reply_type_for(r->msg_type);
    gsize len;
    g_autofree char *text = herd_json_to_string(error, &len);
    finish_request(e, r, reply_type, started_us, "error", (HerdBytes){ text, len }, FALSE, TRUE);
    json_node_unref(error);
}

static void echo_request(Engine *e, Request *r)
{
    gint64 started = g_get_real_time();
    gboolean is_execute = g_str_equal(r->msg_type, "execute_request");
    /* Status messages only around execute (Python's blocking execute needs the idle);
     * apply stays a single reply so benchmarks measure the request path. */
    if (is_execute) {
        publish_status(e, r, "busy");
        finish_request(e, r, "execute_reply", started, "ok", execute_reply_ok(e), TRUE, TRUE);
    } else {
        finish_request(e, r, "apply_reply", started, "ok", STATUS_OK_CONTENT, TRUE, FALSE);
    }
    request_free(r);
}

static void shell_close_pipe(Engine *e, int i)
{
    ShellJob *job = e->job;
    if (job->fds[i] < 0)
        return;
    herd_loop_remove_watch(e->host->loop, job->watches[i]);
    job->watches[i] = NULL;
    close(job->fds[i]);
    job->fds[i] = -1;
}

/* Take the engine's job away and free it. */
static void shell_job_free(Engine *e)
{
    ShellJob *job = e->job;
    for (int i = 0; i < 2; i++) {
        shell_close_pipe(e, i);
        g_string_free(job->partial[i], TRUE);
    }
    g_ptr_array_remove(e->host->reaping, e);
    request_free(job->request);
    g_free(job);
    e->job = NULL;
}

static void on_pipe_ready(int fd, gpointer data);

/* Run in the child between fork and exec: own process group, so a shutdown can stop the
 * whole pipeline the command started. */
static void child_new_process_group(gpointer data)
{
    (void)data;
    setpgid(0, 0);
}

static gboolean shell_start(Engine *e, Request *r, GError **err)
{
    const char *code = herd_json_str(request_content(r), "code");
    char *argv[] = { "/bin/sh", "-c", (char *)(code ? code : ""), NULL };
    ShellJob *job = g_new0(ShellJob, 1);
    job->fds[0] = job->fds[1] = -1;
    job->started_us = g_get_real_time();
    if (!g_spawn_async_with_pipes(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDIN_FROM_DEV_NULL,
                                  child_new_process_group, NULL, &job->pid, NULL, &job->fds[0], &job->fds[1], err)) {
        g_free(job);
        return FALSE;
    }
    for (int i = 0; i < 2; i++) {
        g_unix_set_fd_nonblocking(job->fds[i], TRUE, NULL);
        job->partial[i] = g_string_new(NULL);
        job->watches[i] = herd_loop_add_fd(e->host->loop, job->fds[i], on_pipe_ready, &e->pipes[i]);
    }
    job->request = r;
    job->exit_status = -1;
    e->job = job;
    return TRUE;
}

static void shell_execute(Engine *e, Request *r)
{
    gint64 started = g_get_real_time();
    publish_status(e, r, "busy");
    JsonObject *content = request_content(r);
    gboolean silent = herd_json_bool(content, "silent", FALSE);
    if (!silent) {
        e->execution_count++;
        JsonObject *input = json_object_new();
        json_object_set_string_member(input, "code", herd_json_str(content, "code") ?: "");
        json_object_set_int_member(input, "execution_count", e->execution_count);
        publish(e, "execute_input", "execute_input", r, object_node(input));
    }
    GError *err = NULL;
    if (!shell_start(e, r, &err)) {
        finish_request_error(e, r, started, engine_error(e, "OSError", err->message, "execute"));
        g_error_free(err);
        request_free(r);
    }
}

static void shell_request(Engine *e, Request *r)
{
    if (g_str_equal(r->msg_type, "execute_request")) {
        shell_execute(e, r);
        return;
    }
    /* apply_request carries pickled Python functions: a shell engine cannot run them. */
    publish_status(e, r, "busy");
    g_autofree char *evalue = g_strdup_printf("a herd shell engine cannot run %s (Python functions); "
                                              "send shell commands with execute instead",
                                              r->msg_type);
    finish_request_error(e, r, g_get_real_time(), engine_error(e, "NotImplementedError", evalue, "apply"));
    request_free(r);
}

/* Publish what the command wrote on stream i; at_eof flushes incomplete UTF-8 too. */
static void shell_publish_output(Engine *e, ShellJob *job, int i, const char *data, gsize len, gboolean at_eof)
{
    static const char *names[] = { "stdout", "stderr" };
    GString *buf = job->partial[i];
    g_string_append_len(buf, data, (gssize)len);
    const char *valid_end;
    g_utf8_validate_len(buf->str, buf->len, &valid_end);
    gsize valid = (gsize)(valid_end - buf->str);
    /* Keep up to 3 trailing bytes that may be the start of a character still in the pipe. */
    gsize keep = (!at_eof && buf->len - valid < 4) ? buf->len - valid : 0;
    gsize send_len = buf->len - keep;
    if (send_len == 0)
        return;
    g_autofree char *text = g_utf8_make_valid(buf->str, (gssize)send_len);
    publish_stream(e, job->request, names[i], text);
    g_string_erase(buf, 0, (gssize)send_len);
}

static void shell_read(Engine *e, int i)
{
    ShellJob *job = e->job;
    char chunk[65536];
    ssize_t n = read(job->fds[i], chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0) {
        shell_publish_output(e, job, i, chunk, (gsize)n, FALSE);
        return;
    }
    shell_publish_output(e, job, i, "", 0, TRUE);
    shell_close_pipe(e, i);
    if (job->fds[0] < 0 && job->fds[1] < 0)
        g_ptr_array_add(e->host->reaping, e); /* both closed: the process is about to exit */
}

static void shell_finish(Engine *e)
{
    ShellJob *job = e->job;
    Request *r = job->request;
    if (WIFEXITED(job->exit_status) && WEXITSTATUS(job->exit_status) == 0) {
        finish_request(e, r, "execute_reply", job->started_us, "ok", execute_reply_ok(e), FALSE, TRUE);
    } else {
        g_autofree char *evalue =
            WIFSIGNALED(job->exit_status)
                ? g_strdup_printf("Command '%s' died with signal %d.", herd_json_str(request_content(r), "code"),
                                  WTERMSIG(job->exit_status))
                : g_strdup_printf("Command '%s' returned non-zero exit status %d.",
                                  herd_json_str(request_content(r), "code"), WEXITSTATUS(job->exit_status));
        JsonNode *content = engine_error(e, "CalledProcessError", evalue, "execute");
        publish(e, "error", "error", r, json_node_copy(content));
        finish_request_error(e, r, job->started_us, content);
    }
    shell_job_free(e);
    engine_run_next(e);
}

/* Reap the command once both pipes are closed. */
static void shell_check_exit(Engine *e)
{
    ShellJob *job = e->job;
    if (!job || job->fds[0] >= 0 || job->fds[1] >= 0)
        return;
    int status;
    pid_t rc = waitpid(job->pid, &status, WNOHANG);
    if (rc == 0)
        return;
    job->exit_status = rc == job->pid ? status : (1 << 8);
    g_spawn_close_pid(job->pid);
    shell_finish(e);
}

static void shell_kill(Engine *e)
{
    if (!e->job)
        return;
    kill(-e->job->pid, SIGKILL);
    waitpid(e->job->pid, NULL, 0);
    shell_job_free(e);
}

/* ---- dispatch ---- */

static void send_aborted(Engine *e, Request *r)
{
    g_autofree char *reply_type = reply_type_for(r->msg_type);
    finish_request(e, r, reply_type, g_get_real_time(), "aborted", HERD_BYTES_STR("{\"status\":\"aborted\"}"), FALSE,
                   FALSE);
    request_free(r);
}

static void dispatch_shell(Engine *e, Request *r)
{
    if (g_hash_table_size(e->aborted) > 0 && g_hash_table_remove(e->aborted, r->msg_id)) {
        send_aborted(e, r);
        return;
    }
    if (g_str_equal(r->msg_type, "kernel_info_request")) {
        send_kernel_info(e, e->shell, r);
        request_free(r);
        return;
    }
    if (!g_str_equal(r->msg_type, "execute_request") && !g_str_equal(r->msg_type, "apply_request")) {
        /* comm_* and unknown types: ipykernel ignores them without a reply. */
        g_debug("engine %d: ignoring %s", e->id, r->msg_type);
        request_free(r);
        return;
    }
    if (e->host->executor == EXECUTOR_ECHO)
        echo_request(e, r);
    else
        shell_request(e, r);
}

/* Requests run one at a time per engine, in arrival order, like a kernel. */
static void engine_run_next(Engine *e)
{
    while (!e->job && !g_queue_is_empty(&e->waiting) && engine_serving(e))
        dispatch_shell(e, g_queue_pop_head(&e->waiting));
}

static void on_shell_request(Engine *e, Request *r)
{
    if (e->job || !g_queue_is_empty(&e->waiting))
        g_queue_push_tail(&e->waiting, r);
    else
        dispatch_shell(e, r);
}

/* ---- control ---- */

static void engine_stop(Engine *e);

static void control_abort(Engine *e, Request *r)
{
    JsonNode *ids = json_object_get_member(request_content(r), "msg_ids");
    if (ids && JSON_NODE_HOLDS_VALUE(ids) && json_node_get_string(ids)) {
        g_hash_table_add(e->aborted, g_strdup(json_node_get_string(ids)));
    } else if (ids && JSON_NODE_HOLDS_ARRAY(ids) && json_array_get_length(json_node_get_array(ids)) > 0) {
        JsonArray *a = json_node_get_array(ids);
        for (guint i = 0; i < json_array_get_length(a); i++) {
            const char *id = json_node_get_string(json_array_get_element(a, i));
            if (id)
                g_hash_table_add(e->aborted, g_strdup(id));
        }
    } else {
        /* No ids: abort everything queued. */
        Request *queued;
        while ((queued = g_queue_pop_head(&e->waiting)))
            send_aborted(e, queued);
    }
    send_reply(e, e->control, r, "abort_reply", status_content("ok"));
}

static void control_shutdown(Engine *e, Request *r)
{
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "status", "ok");
    json_object_set_boolean_member(c, "restart", FALSE);
    JsonNode *content = object_node(c);
    send_reply(e, e->control, r, "shutdown_reply", json_node_copy(content));
    /* The controller unregisters the engine when it sees this on IOPub (spec 5.4). */
    publish(e, "shutdown", "shutdown_reply", r, content);
    engine_stop(e);
}

/* Signal number from an int or a name ("SIGINT" or "INT"); 0 when unknown. */
static int signal_from_json(JsonNode *sig)
{
    static const struct {
        const char *name;
        int number;
    } names[] = { { "INT", SIGINT },   { "TERM", SIGTERM }, { "KILL", SIGKILL }, { "HUP", SIGHUP },
                  { "QUIT", SIGQUIT }, { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "STOP", SIGSTOP },
                  { "CONT", SIGCONT } };
    if (!sig || !JSON_NODE_HOLDS_VALUE(sig))
        return 0;
    if (json_node_get_value_type(sig) == G_TYPE_INT64) {
        gint64 n = json_node_get_int(sig);
        return n > 0 && n < NSIG ? (int)n : 0;
    }
    const char *name = json_node_get_string(sig);
    if (!name)
        return 0;
    if (g_str_has_prefix(name, "SIG"))
        name += 3;
    for (guint i = 0; i < G_N_ELEMENTS(names); i++)
        if (g_str_equal(name, names[i].name))
            return names[i].number;
    return 0;
}

/* signal_request / interrupt_request: a native engine hosts many engines, so the signal
 * goes to the command the engine is running (its whole process group), not to the
 * engine process. */
static void control_signal(Engine *e, Request *r, int sig)
{
    g_autofree char *reply_type = reply_type_for(r->msg_type);
    if (sig == 0) {
        send_reply(e, e->control, r, reply_type, engine_error(e, "ValueError", "unknown signal", "signal"));
        return;
    }
    if (e->job)
        kill(-e->job->pid, sig);
    send_reply(e, e->control, r, reply_type, status_content("ok"));
}

static void on_control_request(Engine *e, Request *r)
{
    if (g_str_equal(r->msg_type, "abort_request"))
        control_abort(e, r);
    else if (g_str_equal(r->msg_type, "clear_request"))
        send_reply(e, e->control, r, "clear_reply", status_content("ok"));
    else if (g_str_equal(r->msg_type, "shutdown_request"))
        control_shutdown(e, r);
    else if (g_str_equal(r->msg_type, "kernel_info_request"))
        send_kernel_info(e, e->control, r);
    else if (g_str_equal(r->msg_type, "signal_request"))
        control_signal(e, r, signal_from_json(json_object_get_member(request_content(r), "sig")));
    else if (g_str_equal(r->msg_type, "interrupt_request"))
        control_signal(e, r, SIGINT);
    else
        g_message("engine %d: ignoring control message %s", e->id, r->msg_type);
    request_free(r);
}

/* ---- registration and lifecycle ---- */

static void *engine_socket(Engine *e, int type, const char *routing_id)
{
    void *s = zmq_socket(e->host->zctx, type);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
    int linger = 1000; /* let replies and unregistration leave at shutdown */
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (routing_id)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, routing_id, strlen(routing_id));
    herd_conninfo_secure_socket(&e->host->ci, s);
    return s;
}

static void connect_port(EngineHost *h, void *s, int port)
{
    g_autoptr(GError) err = NULL;
    if (!herd_conninfo_connect(&h->ci, s, port, &err))
        g_warning("%s", err->message);
}

static void send_simple(Engine *e, void *sock, const char *msg_type, JsonNode *content)
{
    send_message_node(e, sock, NULL, HERD_BYTES_NULL, msg_type, EMPTY_OBJECT, content);
}

/* After sends on an engine's watched sockets: libzmq may have consumed the readiness
 * signal of a message that arrived meanwhile, so the loop must look at those sockets
 * again. Only the ones sent on: each look costs libzmq system calls. */
static void engine_recheck(Engine *e)
{
    HerdLoop *loop = e->host->loop;
    if (e->sent_on & SENT_REGISTRATION)
        herd_loop_recheck(loop, e->w_registration);
    if (e->sent_on & SENT_SHELL)
        herd_loop_recheck(loop, e->w_shell);
    if (e->sent_on & SENT_CONTROL)
        herd_loop_recheck(loop, e->w_control);
    e->sent_on = 0;
}

static gboolean on_registration_ready(void *sock, gpointer data);

static void engine_send_registration(Engine *e)
{
    EngineHost *h = e->host;
    e->registration = engine_socket(e, ZMQ_DEALER, e->uuid);
    connect_port(h, e->registration, h->ci.ports.registration);
    e->w_registration = herd_loop_add_socket(h->loop, e->registration, on_registration_ready, e);
    e->state = ENGINE_REGISTERING;
    g_ptr_array_add(h->joining, e);
    JsonObject *c = json_object_new();
    json_object_set_string_member(c, "uuid", e->uuid);
    if (e->requested_id >= 0)
        json_object_set_int_member(c, "id", e->requested_id);
    send_simple(e, e->registration, "registration_request", object_node(c));
    e->deadline_us = g_get_monotonic_time() + (gint64)h->registration_timeout_ms * 1000;
}

static void engine_send_unregistration(Engine *e)
{
    JsonObject *c = json_object_new();
    if (e->id >= 0)
        json_object_set_int_member(c, "id", e->id);
    else
        json_object_set_null_member(c, "id");
    send_simple(e, e->registration, "unregistration_request", object_node(c));
}

/* The metadata parts that name the engine, escaped once. */
static void engine_metadata_init(Engine *e)
{
    GString *b = g_string_new("{\"engine\":\"");
    herd_json_append_escaped(b, e->uuid, -1);
    g_string_append(b, "\"}");
    e->metadata_engine = g_strdup(b->str);
    g_string_assign(b, "\",\"dependencies_met\":true,\"engine\":\"");
    herd_json_append_escaped(b, e->uuid, -1);
    g_string_append(b, "\",");
    e->metadata_fixed = g_string_free(b, FALSE);
}

static Engine *engine_new(EngineHost *h, int requested_id, GError **err)
{
    Engine *e = g_new0(Engine, 1);
    e->host = h;
    e->session = herd_session_new(h->ci.key, h->ci.signature_scheme, NULL, err);
    if (!e->session) {
        g_free(e);
        return NULL;
    }
    e->uuid = herd_session_id(e->session);
    engine_metadata_init(e);
    e->id = -1;
    e->requested_id = requested_id;
    e->aborted = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_queue_init(&e->waiting);
    for (int i = 0; i < 2; i++)
        e->pipes[i] = (PipeSource){ e, i };
    e->state = ENGINE_NEW;
    return e;
}

/* Leaving the registering state: no more replies are expected on that socket. */
static void engine_registration_answered(Engine *e)
{
    herd_loop_remove_watch(e->host->loop, e->w_registration);
    e->w_registration = NULL;
}

/* ---- connecting: socket monitors ----
 * herdd (like ipcontroller) announces an engine and may send it work at its first
 * heartbeat echo; a shell connection whose handshake has not completed by then makes
 * the controller's ROUTER refuse that send. So the engine echoes pings only once libzmq
 * reports ZMQ_EVENT_HANDSHAKE_SUCCEEDED for each of its shell connections (mux, task,
 * broadcast) and its control connection. The handshake, not ZMQ_EVENT_CONNECTED: a
 * ROUTER learns the peer's routing id only in it, and a port that accepts TCP but never
 * speaks ZeroMQ gets no further than CONNECTED. The registration DEALER needs no monitor
 * (its reply came through it), nor does the heart: nothing is sent to it, and its echoes
 * wait in its queue until it is connected. */

/* Only HANDSHAKE_SUCCEEDED counts; the others explain a timeout (a connected engine sees
 * one CONNECTED and one HANDSHAKE_SUCCEEDED per connection, and nothing else). */
#define MONITORED_EVENTS                                                                       \
    (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECTED |            \
     ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |                         \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

enum { MONITOR_SHELL, MONITOR_CONTROL };

static const char *link_state_text(LinkState state)
{
    switch (state) {
    case LINK_WAITING:
        return "no connection yet";
    case LINK_RETRYING:
        return "connection failed, retrying";
    case LINK_CONNECTED:
        return "connected, but no ZeroMQ handshake";
    case LINK_HANDSHAKE_FAILED:
        return "ZeroMQ handshake failed";
    case LINK_AUTH_FAILED:
        return "CURVE authentication refused";
    case LINK_DISCONNECTED:
        return "disconnected";
    case LINK_READY:
        break;
    }
    return "ready";
}

static gboolean on_monitor_ready(void *sock, gpointer data);

/* Monitor sock from now on (before it connects: events are not replayed). FALSE when
 * libzmq refuses (out of sockets or descriptors). */
static gboolean monitor_start(Engine *e, guint index, void *sock)
{
    EngineHost *h = e->host;
    SocketMonitor *m = &e->monitors[index];
    char endpoint[48];
    g_snprintf(endpoint, sizeof endpoint, "inproc://herd-engine-monitor-%u", h->next_monitor++);
    if (zmq_socket_monitor(sock, endpoint, MONITORED_EVENTS) != 0)
        return FALSE;
    m->engine = e;
    m->monitored = sock;
    m->events = zmq_socket(h->zctx, ZMQ_PAIR);
    if (!m->events || zmq_connect(m->events, endpoint) != 0)
        return FALSE;
    m->watch = herd_loop_add_socket(h->loop, m->events, on_monitor_ready, m);
    return TRUE;
}

static void monitors_stop(Engine *e)
{
    for (guint i = 0; i < MONITORS_PER_ENGINE; i++) {
        SocketMonitor *m = &e->monitors[i];
        if (m->monitored)
            zmq_socket_monitor(m->monitored, NULL, 0);
        herd_loop_remove_watch(e->host->loop, m->watch);
        if (m->events)
            zmq_close(m->events);
        *m = (SocketMonitor){ 0 };
    }
}

/* Connect monitor `index`'s socket to port and expect its handshake. */
static void connect_link(Engine *e, guint index, const char *channel, int port)
{
    connect_port(e->host, e->monitors[index].monitored, port);
    e->links[e->n_links++] = (Link){ .channel = channel, .port = port, .monitor = index, .state = LINK_WAITING };
}

/* The link of monitor `index` that an event's endpoint ("tcp://host:port",
 * "ipc://path:port") names, preferring one in state `prefer` (two channels on one port
 * are two connections); NULL when none does. */
static Link *link_for_endpoint(Engine *e, guint index, const char *endpoint, gsize len, LinkState prefer)
{
    const char *colon = g_strrstr_len(endpoint, (gssize)len, ":");
    if (!colon)
        return NULL;
    char digits[8];
    gsize n = len - (gsize)(colon + 1 - endpoint);
    if (n == 0 || n >= sizeof digits)
        return NULL;
    memcpy(digits, colon + 1, n);
    digits[n] = '\0';
    guint64 port;
    if (!g_ascii_string_to_unsigned(digits, 10, 1, 65535, &port, NULL))
        return NULL;
    Link *found = NULL;
    for (guint i = 0; i < e->n_links; i++) {
        Link *l = &e->links[i];
        if (l->monitor != index || l->port != (int)port)
            continue;
        if (l->state == prefer)
            return l;
        if (!found)
            found = l;
    }
    return found;
}

static void link_set(Engine *e, Link *l, LinkState state)
{
    if (l->state == LINK_READY)
        e->n_ready--;
    if (state == LINK_READY)
        e->n_ready++;
    l->state = state;
}

/* What one event says about its link. */
static void link_event(Engine *e, guint index, guint16 event, const char *endpoint, gsize len)
{
    gboolean ready = event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
    Link *l = link_for_endpoint(e, index, endpoint, len, ready ? LINK_CONNECTED : LINK_READY);
    if (!l) {
        g_debug("engine %d: monitor event %#x for unknown endpoint %.*s", e->id, event, (int)len, endpoint);
        return;
    }
    switch (event) {
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        link_set(e, l, LINK_READY);
        break;
    case ZMQ_EVENT_CONNECTED:
        if (l->state != LINK_READY)
            link_set(e, l, LINK_CONNECTED);
        break;
    case ZMQ_EVENT_CONNECT_RETRIED:
        if (l->state != LINK_READY && l->state != LINK_HANDSHAKE_FAILED && l->state != LINK_AUTH_FAILED)
            link_set(e, l, LINK_RETRYING);
        break;
    case ZMQ_EVENT_DISCONNECTED:
        if (l->state == LINK_READY) /* a failed handshake keeps its more telling state */
            link_set(e, l, LINK_DISCONNECTED);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        link_set(e, l, LINK_AUTH_FAILED);
        break;
    default: /* the other handshake failures */
        link_set(e, l, LINK_HANDSHAKE_FAILED);
        break;
    }
    g_debug("engine %d: %s connection (port %d): %s", e->id, l->channel, l->port, link_state_text(l->state));
}

/* The links not ready yet, for the timeout message: "task (port 5): connection failed,
 * retrying; ...". */
static char *links_pending_text(const Engine *e)
{
    GString *text = g_string_new(NULL);
    for (guint i = 0; i < e->n_links; i++) {
        const Link *l = &e->links[i];
        if (l->state == LINK_READY)
            continue;
        g_string_append_printf(text, "%s%s (port %d): %s", text->len ? "; " : "", l->channel, l->port,
                               link_state_text(l->state));
    }
    return g_string_free(text, FALSE);
}

/* Every connection has completed its handshake: the engine may heartbeat. */
static void engine_connected(Engine *e)
{
    monitors_stop(e);
    g_ptr_array_remove(e->host->joining, e);
    e->state = ENGINE_RUNNING;
    g_message("engine %d registered (uuid %s)", e->id, e->uuid);
}

/* Each event is two frames: 16-bit event and 32-bit value, then the endpoint. */
static gboolean on_monitor_ready(void *sock, gpointer data)
{
    SocketMonitor *m = data;
    Engine *e = m->engine;
    guint index = (guint)(m - e->monitors);
    for (guint n = 0; n < BATCH; n++) {
        zmq_msg_t head, endpoint;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            return FALSE; /* EAGAIN */
        }
        zmq_msg_init(&endpoint);
        gboolean complete = zmq_msg_more(&head) && zmq_msg_recv(&endpoint, sock, ZMQ_DONTWAIT) >= 0;
        guint16 event = 0;
        if (complete && zmq_msg_size(&head) >= sizeof event) {
            memcpy(&event, zmq_msg_data(&head), sizeof event);
            link_event(e, index, event, zmq_msg_data(&endpoint), zmq_msg_size(&endpoint));
        }
        zmq_msg_close(&head);
        zmq_msg_close(&endpoint);
        if (e->state == ENGINE_CONNECTING && e->n_ready == e->n_links) {
            engine_connected(e); /* closes sock: do not touch it again */
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean on_shell_ready(void *sock, gpointer data);
static gboolean on_control_ready(void *sock, gpointer data);
static gboolean on_ping_ready(void *sock, gpointer data);

/* Registration accepted: connect the work channels under their monitors, and the heart.
 * The engine echoes pings once the monitors report every handshake (engine_connected),
 * so the controller announces it only when everything is connected (spec 5.2). */
static void engine_start(Engine *e, int id)
{
    EngineHost *h = e->host;
    e->id = id;
    engine_registration_answered(e);
    e->state = ENGINE_CONNECTING;
    e->deadline_us = g_get_monotonic_time() + (gint64)h->registration_timeout_ms * 1000;
    e->shell = engine_socket(e, ZMQ_ROUTER, e->uuid);
    e->control = engine_socket(e, ZMQ_ROUTER, e->uuid);
    if (!monitor_start(e, MONITOR_SHELL, e->shell) || !monitor_start(e, MONITOR_CONTROL, e->control)) {
        g_critical("engine %d: cannot monitor its sockets: %s", id, zmq_strerror(errno));
        engine_send_unregistration(e);
        h->exit_status = 255;
        engine_stop(e);
        return;
    }
    connect_link(e, MONITOR_SHELL, "mux", h->ci.ports.mux);
    connect_link(e, MONITOR_SHELL, "task", h->ci.ports.task);
    if (h->ci.ports.n_broadcast_engine > 0)
        connect_link(e, MONITOR_SHELL, "broadcast",
                     h->ci.ports.broadcast_engine[id % h->ci.ports.n_broadcast_engine]);
    connect_link(e, MONITOR_CONTROL, "control", h->ci.ports.control);
    e->w_shell = herd_loop_add_socket(h->loop, e->shell, on_shell_ready, e);
    e->w_control = herd_loop_add_socket(h->loop, e->control, on_control_ready, e);
    if (!h->iopub) {
        h->iopub = engine_socket(e, ZMQ_PUB, NULL);
        connect_port(h, h->iopub, h->ci.ports.iopub);
        h->hb_sub = engine_socket(e, ZMQ_SUB, NULL);
        zmq_setsockopt(h->hb_sub, ZMQ_SUBSCRIBE, "", 0);
        connect_port(h, h->hb_sub, h->ci.ports.hb_ping);
        herd_loop_add_socket(h->loop, h->hb_sub, on_ping_ready, h);
        h->last_ping_us = g_get_monotonic_time();
    }
    e->heart = engine_socket(e, ZMQ_DEALER, e->uuid);
    connect_port(h, e->heart, h->ci.ports.hb_pong);
    g_debug("engine %d: registration accepted, connecting", id);
}

static void engine_stop(Engine *e)
{
    EngineHost *h = e->host;
    if (e->state == ENGINE_STOPPED)
        return;
    if (e->state == ENGINE_NEW)
        g_queue_remove(&h->unregistered, e);
    if (e->state == ENGINE_REGISTERING)
        engine_registration_answered(e);
    if (engine_joining(e))
        g_ptr_array_remove(h->joining, e);
    monitors_stop(e);
    herd_loop_remove_watch(h->loop, e->w_shell);
    herd_loop_remove_watch(h->loop, e->w_control);
    e->w_shell = e->w_control = NULL;
    shell_kill(e);
    Request *r;
    while ((r = g_queue_pop_head(&e->waiting)))
        request_free(r);
    e->state = ENGINE_STOPPED;
    h->n_stopped++;
    g_message("engine %d stopped", e->id);
}

static void engine_free(Engine *e)
{
    engine_stop(e);
    void **socks[] = { &e->registration, &e->shell, &e->control, &e->heart };
    for (guint i = 0; i < G_N_ELEMENTS(socks); i++)
        if (*socks[i])
            zmq_close(*socks[i]);
    g_hash_table_destroy(e->aborted);
    g_free(e->metadata_engine);
    g_free(e->metadata_fixed);
    herd_session_free(e->session);
    g_free(e);
}

static void on_registration_reply(HerdFrames *f, gpointer data)
{
    Engine *e = data;
    if (e->state != ENGINE_REGISTERING)
        return;
    Request *r = request_take(e, f);
    if (!r)
        return;
    JsonObject *c = request_content(r);
    if (g_str_equal(r->msg_type, "registration_reply")) {
        if (g_strcmp0(herd_json_str(c, "status"), "ok") == 0) {
            int period = (int)herd_json_int(c, "hb_period", 3000);
            e->host->hb_period_ms = period > 0 ? period : 3000;
            engine_start(e, (int)herd_json_int(c, "id", 0));
        } else {
            g_critical("registration failed: %s: %s", herd_json_str(c, "ename") ?: "error",
                       herd_json_str(c, "evalue") ?: "");
            e->host->exit_status = 255;
            engine_stop(e);
        }
    }
    request_free(r);
}

/* ---- readiness callbacks ----
 * Each ends with engine_recheck(): whatever an engine received, it may have sent on any of
 * its sockets meanwhile. */

/* Receive up to BATCH messages from sock (whose SENT_* bit is `self`), handing each to
 * on_message. */
static gboolean serve_socket(Engine *e, void *sock, guint self, HerdFramesFn on_message)
{
    gboolean more = herd_frames_recv_batch(sock, BATCH, on_message, e);
    if (!more)
        e->sent_on &= ~self; /* its final receive (EAGAIN) came after every send on it */
    engine_recheck(e);
    return more;
}

static gboolean on_registration_ready(void *sock, gpointer data)
{
    return serve_socket(data, sock, SENT_REGISTRATION, on_registration_reply);
}

static void on_shell_message(HerdFrames *f, gpointer data)
{
    Engine *e = data;
    Request *r = engine_serving(e) ? request_take(e, f) : NULL;
    if (r)
        on_shell_request(e, r);
}

static void on_control_message(HerdFrames *f, gpointer data)
{
    Engine *e = data;
    Request *r = engine_serving(e) ? request_take(e, f) : NULL;
    if (r)
        on_control_request(e, r);
}

static gboolean on_shell_ready(void *sock, gpointer data)
{
    return serve_socket(data, sock, SENT_SHELL, on_shell_message);
}

static gboolean on_control_ready(void *sock, gpointer data)
{
    return serve_socket(data, sock, SENT_CONTROL, on_control_message);
}

static void on_pipe_ready(int fd, gpointer data)
{
    (void)fd;
    PipeSource *p = data;
    if (p->engine->job)
        shell_read(p->engine, p->stream);
    engine_recheck(p->engine);
}

/* Every ping is echoed by every running engine's heart DEALER. */
static gboolean on_ping_ready(void *sock, gpointer data)
{
    (void)sock;
    EngineHost *h = data;
    zmq_msg_t ping;
    zmq_msg_init(&ping);
    while (zmq_msg_recv(&ping, h->hb_sub, ZMQ_DONTWAIT) >= 0) {
        h->last_ping_us = g_get_monotonic_time();
        for (guint i = 0; i < h->engines->len; i++) {
            Engine *e = h->engines->pdata[i];
            if (e->state == ENGINE_RUNNING)
                zmq_send(e->heart, zmq_msg_data(&ping), zmq_msg_size(&ping), ZMQ_DONTWAIT);
        }
    }
    zmq_msg_close(&ping);
    return FALSE; /* received until EAGAIN */
}

/* ---- the loop ---- */

/* Leaving (on a signal, or the controller's heartbeat went silent): tell the controller
 * about every engine it gave an id, like ipengine's nanny does when the engine goes away. */
static void host_unregister_all(EngineHost *h)
{
    for (guint i = 0; i < h->engines->len; i++) {
        Engine *e = h->engines->pdata[i];
        if (engine_serving(e))
            engine_send_unregistration(e);
        engine_stop(e);
    }
}

/* Timers: registrations to start, join deadlines, commands to reap, the
 * controller's heartbeat. Returns the time in ms until the next check is due. */
static long check_timers(EngineHost *h)
{
    gint64 now = g_get_monotonic_time();
    long timeout = 1000;
    while (!g_queue_is_empty(&h->unregistered) && h->joining->len < JOIN_WINDOW) {
        Engine *e = g_queue_pop_head(&h->unregistered);
        engine_send_registration(e);
        engine_recheck(e);
    }
    for (guint i = h->joining->len; i-- > 0;) {
        Engine *e = h->joining->pdata[i];
        if (now < e->deadline_us) {
            timeout = MIN(timeout, (long)((e->deadline_us - now) / 1000) + 1);
            continue;
        }
        if (e->state == ENGINE_REGISTERING) {
            g_critical("registration timed out after %.1f seconds", h->registration_timeout_ms / 1000.0);
        } else {
            g_autofree char *pending = links_pending_text(e);
            g_critical("engine %d: the controller did not accept its connections within %.1f seconds: %s", e->id,
                       h->registration_timeout_ms / 1000.0, pending);
        }
        engine_send_unregistration(e);
        h->exit_status = 255;
        engine_stop(e);
    }
    for (guint i = h->reaping->len; i-- > 0;) {
        if (i >= h->reaping->len)
            continue; /* finishing a command may reap others through engine_run_next */
        Engine *e = h->reaping->pdata[i];
        shell_check_exit(e);
        engine_recheck(e);
    }
    if (h->reaping->len > 0)
        timeout = MIN(timeout, 5);
    if (h->hb_sub && h->hb_max_misses > 0) {
        gint64 limit = (gint64)h->hb_max_misses * (h->hb_period_ms + 500) * 1000;
        if (now - h->last_ping_us > limit) {
            g_critical("no heartbeat from the controller for %d periods, shutting down", h->hb_max_misses);
            host_unregister_all(h);
        }
    }
    return timeout;
}

static void host_run(EngineHost *h)
{
    while (!stop_requested && h->n_stopped < h->engines->len) {
        long timeout = check_timers(h);
        if (!herd_loop_iterate(h->loop, (int)timeout)) {
            g_critical("epoll_wait: %s", g_strerror(errno));
            h->exit_status = 1;
            break;
        }
    }
}

/* ---- command line ---- */

/* Wait for the connection file like ipengine does (it may not be written yet). */
static gboolean wait_for_file(const char *path, double seconds)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)(seconds * G_USEC_PER_SEC);
    while (!g_file_test(path, G_FILE_TEST_EXISTS)) {
        if (g_get_monotonic_time() >= deadline)
            return FALSE;
        g_usleep(100 * 1000);
    }
    return TRUE;
}

static char *default_profile_dir(const char *ipython_dir, const char *profile)
{
    g_autofree char *base = ipython_dir ? g_strdup(ipython_dir)
                            : g_getenv("IPYTHONDIR") ? g_strdup(g_getenv("IPYTHONDIR"))
                                                     : g_build_filename(g_get_home_dir(), ".ipython", NULL);
    g_autofree char *name = g_strdup_printf("profile_%s", profile ? profile : "default");
    return g_build_filename(base, name, NULL);
}

/* Make room for thousands of sockets: each engine holds four, each using descriptors. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int herd_cmd_engine(int argc, char **argv)
{
    g_autofree char *file = NULL, *profile_dir = NULL, *profile = NULL, *ipython_dir = NULL, *cluster_id = NULL,
                    *executor = NULL;
    int count = 1, first_id = -1, hb_misses = 50;
    double timeout = 5.0, wait_file = 10.0;
    gboolean verbose = FALSE;
    GOptionEntry entries[] = {
        { "file", 'f', 0, G_OPTION_ARG_FILENAME, &file, "Engine connection file (ipcontroller-engine.json)", "PATH" },
        { "profile-dir", 0, 0, G_OPTION_ARG_FILENAME, &profile_dir, "Profile directory holding security/", "DIR" },
        { "profile", 0, 0, G_OPTION_ARG_STRING, &profile, "Profile name (default: default)", "NAME" },
        { "ipython-dir", 0, 0, G_OPTION_ARG_FILENAME, &ipython_dir, "IPython directory (default: $IPYTHONDIR or ~/.ipython)", "DIR" },
        { "cluster-id", 0, 0, G_OPTION_ARG_STRING, &cluster_id, "Cluster id (ipcontroller-<id>-engine.json)", "ID" },
        { "executor", 'x', 0, G_OPTION_ARG_STRING, &executor, "echo or shell (default: shell)", "KIND" },
        { "count", 'n', 0, G_OPTION_ARG_INT, &count, "Number of engines in this process (default: 1)", "N" },
        { "id", 0, 0, G_OPTION_ARG_INT, &first_id, "Request engine ids starting at N", "N" },
        { "timeout", 0, 0, G_OPTION_ARG_DOUBLE, &timeout, "Seconds to wait for the registration reply, then for the connections (default: 5)", "S" },
        { "wait-for-file", 0, 0, G_OPTION_ARG_DOUBLE, &wait_file, "Seconds to wait for the connection file (default: 10)", "S" },
        { "hb-misses", 0, 0, G_OPTION_ARG_INT, &hb_misses, "Stop after this many silent heartbeat periods; 0 = never (default: 50)", "N" },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log every step", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- run native herd engines");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "herd engine: %s\n", err->message);
        g_error_free(err);
        return 2;
    }
    if (verbose)
        g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
    ExecutorKind kind = EXECUTOR_SHELL;
    if (executor && g_str_equal(executor, "echo"))
        kind = EXECUTOR_ECHO;
    else if (executor && !g_str_equal(executor, "shell")) {
        fprintf(stderr, "herd engine: unknown executor '%s' (expected echo or shell)\n", executor);
        return 2;
    }
    if (count < 1) {
        fprintf(stderr, "herd engine: --count must be at least 1\n");
        return 2;
    }
    if (!file) {
        g_autofree char *dir = profile_dir ? g_strdup(profile_dir) : default_profile_dir(ipython_dir, profile);
        file = herd_connfile_path(dir, cluster_id, "engine");
    }
    if (!wait_for_file(file, wait_file)) {
        fprintf(stderr, "herd engine: connection file %s not found\n", file);
        return 1;
    }

    EngineHost h = { .executor = kind, .registration_timeout_ms = (int)(timeout * 1000),
                     .hb_max_misses = hb_misses, .hb_period_ms = 3000 };
    if (!herd_connfile_read_peer(file, "engine", "herd engine", &h.ci, &err)) {
        fprintf(stderr, "herd engine: %s\n", err->message); /* the message names the file */
        g_error_free(err);
        return 1;
    }
    raise_fd_limit();
    h.zctx = zmq_ctx_new();
    zmq_ctx_set(h.zctx, ZMQ_MAX_SOCKETS,
                count * 5 + 16 + JOIN_WINDOW * MONITORS_PER_ENGINE * SOCKETS_PER_MONITOR);
    h.engines = g_ptr_array_new();
    h.loop = herd_loop_new();
    g_queue_init(&h.unregistered);
    h.joining = g_ptr_array_new();
    h.reaping = g_ptr_array_new();
    GString **texts[] = { &h.header_text, &h.metadata_text, &h.content_text, &h.topic_text };
    for (guint i = 0; i < G_N_ELEMENTS(texts); i++)
        *texts[i] = g_string_sized_new(256);
    struct sigaction sa = { .sa_handler = on_stop_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    for (int i = 0; i < count; i++) {
        Engine *e = engine_new(&h, first_id >= 0 ? first_id + i : -1, &err);
        if (!e) {
            fprintf(stderr, "herd engine: %s\n", err->message);
            g_error_free(err);
            return 1;
        }
        g_ptr_array_add(h.engines, e);
        g_queue_push_tail(&h.unregistered, e);
    }
    host_run(&h);
    host_unregister_all(&h);

    for (guint i = 0; i < h.engines->len; i++)
        engine_free(h.engines->pdata[i]);
    g_ptr_array_free(h.engines, TRUE);
    herd_loop_free(h.loop);
    g_queue_clear(&h.unregistered);
    g_ptr_array_free(h.joining, TRUE);
    g_ptr_array_free(h.reaping, TRUE);
    for (guint i = 0; i < G_N_ELEMENTS(texts); i++)
        g_string_free(*texts[i], TRUE);
    if (h.iopub)
        zmq_close(h.iopub);
    if (h.hb_sub)
        zmq_close(h.hb_sub);
    zmq_ctx_term(h.zctx);
    herd_conninfo_clear(&h.ci);
    return h.exit_status;
}
