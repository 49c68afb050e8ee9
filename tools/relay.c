/* herd — `herd relay`: the benchmark's physical-limit baseline. A bare libzmq relay
 * that speaks just enough of the controller protocol for clients and engines to meet
 * (connection and registration requests, heartbeat, notifications) and otherwise only
 * moves frames: MUX and control swap the two routing frames, the task channel deals
 * requests round-robin with no scheduling state (or, with --hwm N, to an engine with
 * fewer than N requests in flight, so that a controller's hwm can be compared with the
 * same rule done barely), IOPub is forwarded untouched, and
 * broadcast rewrites each copy's msg_id as every broadcast must (spec 6.6). It keeps no
 * records and checks no signatures. Not a controller: see docs/engine.md.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <gio/gio.h>
#include <glib/gstdio.h>

#include <herd/connfile.h>
#include <herd/loop.h>
#include <herd/wire.h>

#include "herd-tool.h"

enum {
    R_REGISTRATION,
    R_MUX_CLIENT, R_MUX_ENGINE,
    R_TASK_CLIENT, R_TASK_ENGINE,
    R_BCAST_CLIENT, R_BCAST_ENGINE,
    R_CONTROL_CLIENT, R_CONTROL_ENGINE,
    R_IOPUB_ENGINE, R_IOPUB_CLIENT,
    R_NOTIFICATION, R_HB_PING, R_HB_PONG,
    R_N,
};

typedef struct RelayEngine {
    int id;
    char *uuid;
    gboolean registered; /* after its first heartbeat echo */
    guint in_flight;     /* task requests sent and not answered (--hwm) */
} RelayEngine;

typedef struct Relay {
    void *zctx;
    HerdLoop *loop;
    void *socks[R_N];
    int ports[R_N];
    HerdSession *session;
    GPtrArray *engines;      /* RelayEngine*, registered and pending */
    GPtrArray *registered;   /* RelayEngine*, round-robin order for the task channel */
    guint next_task;
    guint64 beat;            /* heartbeat counter */
    guint hwm;               /* 0: round-robin; else at most hwm task requests per engine */
    GQueue waiting;          /* HerdFrames* task requests held back by the hwm */
    int ping_ms;
    char *client_file, *engine_file;
} Relay;

static volatile sig_atomic_t relay_stop;

static void on_relay_signal(int sig)
{
    (void)sig;
    relay_stop = 1;
}

static RelayEngine *find_engine(Relay *r, const char *uuid, gsize len)
{
    for (guint i = 0; i < r->engines->len; i++) {
        RelayEngine *e = r->engines->pdata[i];
        if (strlen(e->uuid) == len && memcmp(e->uuid, uuid, len) == 0)
            return e;
    }
    return NULL;
}

static void send_or_drop(Relay *r, void *sock, HerdFrames *f)
{
    herd_loop_touch(r->loop, sock); /* a send can hide the socket's next input edge */
    if (herd_frames_send(sock, f) != 0)
        herd_frames_clear(f);
}

/* Build and send a Hub message to `route` (NULL: no routing frame, e.g. on a PUB). */
static void send_hub_message(Relay *r, void *sock, const HerdFrames *route, const char *msg_type, HerdBytes parent,
                             const char *content)
{
    HerdFrames out;
    herd_frames_init(&out);
    if (route)
        herd_frames_push_frame_copy(&out, route, 0);
    herd_session_build(r->session, &out, msg_type, parent, HERD_BYTES_NULL, HERD_BYTES_STR(content), NULL);
    send_or_drop(r, sock, &out);
}

static char *engines_json(Relay *r)
{
    GString *s = g_string_new("{");
    for (guint i = 0; i < r->registered->len; i++) {
        RelayEngine *e = r->registered->pdata[i];
        g_string_append_printf(s, "%s\"%d\": \"%s\"", i ? ", " : "", e->id, e->uuid);
    }
    g_string_append_c(s, '}');
    return g_string_free(s, FALSE);
}

static void on_registration(Relay *r, HerdFrames *in)
{
    if (!herd_frames_is_wire(in) || in->delim < 1)
        return;
    g_autoptr(JsonNode) header = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER)), NULL);
    g_autoptr(JsonNode) content = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_CONTENT)), NULL);
    if (!header || !content)
        return;
    const char *msg_type = herd_json_str(json_node_get_object(header), "msg_type");
    HerdBytes parent = herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER));
    if (g_strcmp0(msg_type, "connection_request") == 0) {
        g_autofree char *engines = engines_json(r);
        g_autofree char *reply = g_strdup_printf("{\"status\": \"ok\", \"engines\": %s}", engines);
        send_hub_message(r, r->socks[R_REGISTRATION], in, "connection_reply", parent, reply);
    } else if (g_strcmp0(msg_type, "registration_request") == 0) {
        const char *uuid = herd_json_str(json_node_get_object(content), "uuid");
        if (!uuid || find_engine(r, uuid, strlen(uuid)))
            return;
        RelayEngine *e = g_new0(RelayEngine, 1);
        e->id = (int)r->engines->len;
        e->uuid = g_strdup(uuid);
        g_ptr_array_add(r->engines, e);
        g_autofree char *reply =
            g_strdup_printf("{\"status\": \"ok\", \"id\": %d, \"hb_period\": %d}", e->id, r->ping_ms);
        send_hub_message(r, r->socks[R_REGISTRATION], in, "registration_reply", HERD_BYTES_NULL, reply);
    } else if (g_strcmp0(msg_type, "unregistration_request") == 0) {
        int id = (int)herd_json_int(json_node_get_object(content), "id", -1);
        for (guint i = 0; i < r->registered->len; i++) {
            RelayEngine *e = r->registered->pdata[i];
            if (e->id != id)
                continue;
            g_ptr_array_remove_index(r->registered, i);
            g_autofree char *note = g_strdup_printf("{\"id\": %d, \"uuid\": \"%s\"}", e->id, e->uuid);
            send_hub_message(r, r->socks[R_NOTIFICATION], NULL, "unregistration_notification", HERD_BYTES_NULL, note);
            break;
        }
    }
}

/* An engine is announced at its first heartbeat echo: by then its shell is connected. */
static void on_pong(Relay *r, HerdFrames *in)
{
    if (in->n < 1)
        return;
    RelayEngine *e = find_engine(r, herd_frame_data(in, 0), herd_frame_size(in, 0));
    if (!e || e->registered)
        return;
    e->registered = TRUE;
    g_ptr_array_add(r->registered, e);
    g_autofree char *note = g_strdup_printf("{\"id\": %d, \"uuid\": \"%s\"}", e->id, e->uuid);
    send_hub_message(r, r->socks[R_NOTIFICATION], NULL, "registration_notification", HERD_BYTES_NULL, note);
}

/* The engine a task request goes to: the next in turn, or with an hwm the first in turn
 * that has room; NULL when every engine is full. */
static RelayEngine *next_task_engine(Relay *r)
{
    guint n = r->registered->len;
    for (guint k = 0; k < n; k++) {
        RelayEngine *e = r->registered->pdata[r->next_task++ % n];
        if (r->hwm == 0 || e->in_flight < r->hwm)
            return e;
    }
    return NULL;
}

static void swap_and_forward(Relay *r, void *to, HerdFrames *in);

static void send_task(Relay *r, RelayEngine *e, HerdFrames *in)
{
    e->in_flight++;
    herd_frames_insert(in, 0, e->uuid, strlen(e->uuid));
    send_or_drop(r, r->socks[R_TASK_ENGINE], in);
}

/* Task: [C, M] -> [E, C, M] with the engines taking turns. */
static void on_task_request(Relay *r, HerdFrames *in)
{
    if (r->registered->len == 0)
        return; /* nobody to run it: a bare relay drops it */
    RelayEngine *e = next_task_engine(r);
    if (!e) {
        HerdFrames *held = g_new(HerdFrames, 1);
        *held = *in; /* take the frames */
        herd_frames_init(in);
        g_queue_push_tail(&r->waiting, held);
        return;
    }
    send_task(r, e, in);
}

/* Task reply [E, C, M] -> [C, E, M] as any task reply; with an hwm the engine takes the
 * oldest held request. */
static void on_task_reply(Relay *r, HerdFrames *in)
{
    if (in->n < 2)
        return;
    RelayEngine *e = r->hwm ? find_engine(r, herd_frame_data(in, 0), herd_frame_size(in, 0)) : NULL;
    if (e && e->in_flight > 0)
        e->in_flight--;
    swap_and_forward(r, r->socks[R_TASK_CLIENT], in);
    HerdFrames *held;
    if (e && e->in_flight < r->hwm && (held = g_queue_pop_head(&r->waiting))) {
        send_task(r, e, held);
        g_free(held);
    }
}

/* Broadcast: per target a copy with msg_id "<orig>_<uuid>" and original_msg_id, re-signed. */
static void on_broadcast_request(Relay *r, HerdFrames *in)
{
    if (!herd_frames_is_wire(in))
        return;
    g_autoptr(JsonNode) header = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER)), NULL);
    g_autoptr(JsonNode) md = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_METADATA)), NULL);
    if (!header || !md)
        return;
    JsonObject *h = json_node_get_object(header), *m = json_node_get_object(md);
    g_autofree char *orig = g_strdup(herd_json_str(h, "msg_id"));
    JsonNode *targets = json_object_get_member(m, "targets");
    if (!orig || !targets || !JSON_NODE_HOLDS_ARRAY(targets))
        return;
    json_object_set_string_member(m, "original_msg_id", orig);
    gsize md_len;
    g_autofree char *md_text = herd_json_to_string(md, &md_len);
    JsonArray *list = json_node_get_array(targets);
    for (guint i = 0; i < json_array_get_length(list); i++) {
        JsonNode *t = json_array_get_element(list, i);
        const char *uuid = JSON_NODE_HOLDS_ARRAY(t) ? json_array_get_string_element(json_node_get_array(t), 0) : NULL;
        if (!uuid)
            continue;
        g_autofree char *msg_id = g_strdup_printf("%s_%s", orig, uuid);
        json_object_set_string_member(h, "msg_id", msg_id);
        gsize header_len;
        g_autofree char *header_text = herd_json_to_string(header, &header_len);
        HerdFrames out;
        herd_frames_init(&out);
        herd_frames_push(&out, uuid, strlen(uuid));
        for (guint k = 0; k < (guint)in->delim; k++)
            herd_frames_push_frame_copy(&out, in, k);
        herd_frames_push(&out, HERD_DELIM, HERD_DELIM_LEN);
        herd_frames_push(&out, "", 0); /* signature, computed below */
        herd_frames_push(&out, header_text, header_len);
        herd_frames_push_frame_copy(&out, in, herd_wire(in, HERD_WIRE_PARENT));
        herd_frames_push(&out, md_text, md_len);
        for (guint k = herd_wire(in, HERD_WIRE_CONTENT); k < in->n; k++)
            herd_frames_push_frame_copy(&out, in, k);
        herd_frames_find_delim(&out);
        herd_session_resign(r->session, &out);
        send_or_drop(r, r->socks[R_BCAST_ENGINE], &out);
    }
}

/* Broadcast reply [E, C, M'] -> [C, M']. */
static void on_broadcast_reply(Relay *r, HerdFrames *in)
{
    if (in->n < 2)
        return;
    herd_frames_remove(in, 0);
    send_or_drop(r, r->socks[R_BCAST_CLIENT], in);
}

/* MUX/control in both directions, and task replies: swap the two routing frames. */
static void swap_and_forward(Relay *r, void *to, HerdFrames *in)
{
    if (in->n < 2)
        return;
    herd_frames_swap(in, 0, 1);
    send_or_drop(r, to, in);
}

static void relay_handle(Relay *r, int index, HerdFrames *in)
{
    switch (index) {
    case R_REGISTRATION: on_registration(r, in); break;
    case R_HB_PONG: on_pong(r, in); break;
    case R_MUX_CLIENT: swap_and_forward(r, r->socks[R_MUX_ENGINE], in); break;
    case R_MUX_ENGINE: swap_and_forward(r, r->socks[R_MUX_CLIENT], in); break;
    case R_CONTROL_CLIENT: swap_and_forward(r, r->socks[R_CONTROL_ENGINE], in); break;
    case R_CONTROL_ENGINE: swap_and_forward(r, r->socks[R_CONTROL_CLIENT], in); break;
    case R_TASK_CLIENT: on_task_request(r, in); break;
    case R_TASK_ENGINE: on_task_reply(r, in); break;
    case R_BCAST_CLIENT: on_broadcast_request(r, in); break;
    case R_BCAST_ENGINE: on_broadcast_reply(r, in); break;
    case R_IOPUB_ENGINE: send_or_drop(r, r->socks[R_IOPUB_CLIENT], in); break;
    default: break;
    }
    herd_frames_clear(in);
}

static gboolean relay_bind(Relay *r, const char *ip, GError **err)
{
    static const struct {
        int type;
        const char *routing_id;
    } plan[R_N] = {
        [R_REGISTRATION] = { ZMQ_ROUTER, NULL },
        [R_MUX_CLIENT] = { ZMQ_ROUTER, NULL },       [R_MUX_ENGINE] = { ZMQ_ROUTER, "mux_out" },
        [R_TASK_CLIENT] = { ZMQ_ROUTER, NULL },      [R_TASK_ENGINE] = { ZMQ_ROUTER, "task_out" },
        [R_BCAST_CLIENT] = { ZMQ_ROUTER, NULL },     [R_BCAST_ENGINE] = { ZMQ_ROUTER, "sub_scheduler_00" },
        [R_CONTROL_CLIENT] = { ZMQ_ROUTER, NULL },   [R_CONTROL_ENGINE] = { ZMQ_ROUTER, "control_out" },
        [R_IOPUB_ENGINE] = { ZMQ_SUB, NULL },        [R_IOPUB_CLIENT] = { ZMQ_PUB, NULL },
        [R_NOTIFICATION] = { ZMQ_PUB, NULL },        [R_HB_PING] = { ZMQ_PUB, NULL },
        [R_HB_PONG] = { ZMQ_ROUTER, NULL },
    };
    g_autofree char *url = g_strdup_printf("tcp://%s:*", ip);
    for (int i = 0; i < R_N; i++) {
        void *s = r->socks[i] = zmq_socket(r->zctx, plan[i].type);
        int zero = 0;
        zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
        if (plan[i].routing_id)
            zmq_setsockopt(s, ZMQ_ROUTING_ID, plan[i].routing_id, strlen(plan[i].routing_id));
        if (plan[i].type == ZMQ_SUB)
            zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
        if (zmq_bind(s, url) != 0) {
            g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "cannot bind %s: %s", url, zmq_strerror(errno));
            return FALSE;
        }
        char endpoint[256];
        size_t len = sizeof endpoint;
        zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, endpoint, &len);
        r->ports[i] = atoi(strrchr(endpoint, ':') + 1);
    }
    return TRUE;
}

static gboolean relay_write_files(Relay *r, const char *ip, const char *profile_dir, const char *cluster_id,
                                  GError **err)
{
    if (!herd_profile_dir_ensure(profile_dir, err))
        return FALSE;
    g_autofree char *interface = g_strdup_printf("tcp://%s", ip);
    HerdConnInfo ci = {
        .interface = interface,
        .ssh = "",
        .key = (char *)herd_session_key(r->session),
        .location = (char *)g_get_host_name(),
        .signature_scheme = "hmac-sha256",
        .task_scheme = "leastload",
        .ports = {
            .registration = r->ports[R_REGISTRATION],
            .control = r->ports[R_CONTROL_ENGINE],
            .mux = r->ports[R_MUX_ENGINE],
            .task = r->ports[R_TASK_ENGINE],
            .iopub = r->ports[R_IOPUB_ENGINE],
            .hb_ping = r->ports[R_HB_PING],
            .hb_pong = r->ports[R_HB_PONG],
            .broadcast_engine = { r->ports[R_BCAST_ENGINE] },
            .n_broadcast_engine = 1,
        },
    };
    r->engine_file = herd_connfile_path(profile_dir, cluster_id, "engine");
    if (!herd_connfile_write(r->engine_file, "engine", &ci, err))
        return FALSE;
    ci.ports.control = r->ports[R_CONTROL_CLIENT];
    ci.ports.mux = r->ports[R_MUX_CLIENT];
    ci.ports.task = r->ports[R_TASK_CLIENT];
    ci.ports.iopub = r->ports[R_IOPUB_CLIENT];
    ci.ports.notification = r->ports[R_NOTIFICATION];
    ci.ports.broadcast = r->ports[R_BCAST_CLIENT];
    r->client_file = herd_connfile_path(profile_dir, cluster_id, "client");
    return herd_connfile_write(r->client_file, "client", &ci, err);
}

typedef struct RelaySocket {
    Relay *relay;
    int index;
} RelaySocket;

static gboolean on_relay_socket(void *sock, gpointer data)
{
    RelaySocket *rs = data;
    for (int n = 0; n < 256; n++) {
        HerdFrames in;
        herd_frames_init(&in);
        if (herd_frames_recv(sock, &in, ZMQ_DONTWAIT) < 0)
            return FALSE;
        relay_handle(rs->relay, rs->index, &in);
    }
    return TRUE; /* more may be queued: called again */
}

static void relay_ping(gpointer data)
{
    Relay *r = data;
    g_autofree char *token = g_strdup_printf("%" G_GUINT64_FORMAT, r->beat++);
    zmq_send(r->socks[R_HB_PING], token, strlen(token), ZMQ_DONTWAIT);
    herd_loop_timer_add(r->loop, (guint)r->ping_ms, relay_ping, r);
}

/* The same event loop as herdd (epoll on the sockets' ZMQ_FD), so that the baseline pays
 * no more per wake-up than herdd does. */
static void relay_run(Relay *r)
{
    static const int inputs[] = { R_REGISTRATION, R_MUX_CLIENT, R_MUX_ENGINE, R_TASK_CLIENT, R_TASK_ENGINE,
                                  R_BCAST_CLIENT, R_BCAST_ENGINE, R_CONTROL_CLIENT, R_CONTROL_ENGINE,
                                  R_IOPUB_ENGINE, R_HB_PONG };
    RelaySocket watches[G_N_ELEMENTS(inputs)];
    r->loop = herd_loop_new();
    for (guint i = 0; i < G_N_ELEMENTS(inputs); i++) {
        watches[i] = (RelaySocket){ r, inputs[i] };
        herd_loop_add_socket(r->loop, r->socks[inputs[i]], on_relay_socket, &watches[i]);
    }
    relay_ping(r);
    while (!relay_stop)
        herd_loop_iterate(r->loop, 200); /* signals only set a flag: look at it now and then */
    herd_loop_free(r->loop);
    r->loop = NULL;
}

static void relay_engine_free(gpointer p)
{
    RelayEngine *e = p;
    g_free(e->uuid);
    g_free(e);
}

int herd_cmd_relay(int argc, char **argv)
{
    g_autofree char *profile_dir = NULL, *ip = NULL, *cluster_id = NULL, *scheme = NULL;
    int ping_ms = 3000, hwm = 0;
    GOptionEntry entries[] = {
        { "profile-dir", 0, 0, G_OPTION_ARG_FILENAME, &profile_dir, "Profile directory for the connection files", "DIR" },
        { "ip", 0, 0, G_OPTION_ARG_STRING, &ip, "Address to bind (default 127.0.0.1)", "IP" },
        { "ping", 0, 0, G_OPTION_ARG_INT, &ping_ms, "Heartbeat period in ms (default 3000)", "MS" },
        { "cluster-id", 0, 0, G_OPTION_ARG_STRING, &cluster_id, "Cluster id of the connection files", "ID" },
        { "scheme", 0, 0, G_OPTION_ARG_STRING, &scheme, "Accepted for compatibility; the relay deals round-robin", "NAME" },
        { "hwm", 0, 0, G_OPTION_ARG_INT, &hwm, "Task requests in flight per engine at most (default 0: no limit, round-robin)", "N" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- bare relay baseline for herd bench");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || !profile_dir) {
        fprintf(stderr, "herd relay: %s\n", err ? err->message : "--profile-dir is required");
        g_clear_error(&err);
        return 2;
    }
    Relay r = { .ping_ms = ping_ms > 0 ? ping_ms : 3000, .hwm = (guint)MAX(hwm, 0) };
    g_queue_init(&r.waiting);
    r.zctx = zmq_ctx_new();
    r.engines = g_ptr_array_new_with_free_func(relay_engine_free);
    r.registered = g_ptr_array_new();
    g_autofree char *key = herd_new_uuid();
    r.session = herd_session_new(key, "hmac-sha256", NULL, &err);
    const char *bind_ip = ip ? ip : "127.0.0.1";
    int status = 0;
    if (!r.session || !relay_bind(&r, bind_ip, &err) || !relay_write_files(&r, bind_ip, profile_dir, cluster_id, &err)) {
        fprintf(stderr, "herd relay: %s\n", err->message);
        g_error_free(err);
        status = 1;
    } else {
        struct sigaction sa = { .sa_handler = on_relay_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        relay_run(&r);
    }
    if (r.client_file)
        g_unlink(r.client_file);
    if (r.engine_file)
        g_unlink(r.engine_file);
    for (int i = 0; i < R_N; i++)
        if (r.socks[i])
            zmq_close(r.socks[i]);
    zmq_ctx_term(r.zctx);
    if (r.session)
        herd_session_free(r.session);
    HerdFrames *held;
    while ((held = g_queue_pop_head(&r.waiting))) {
        herd_frames_clear(held);
        g_free(held);
    }
    g_ptr_array_free(r.registered, TRUE);
    g_ptr_array_free(r.engines, TRUE);
    g_free(r.client_file);
    g_free(r.engine_file);
    return status;
}
