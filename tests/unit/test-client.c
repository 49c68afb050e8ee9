/* Unit tests of the native client API (core/client.c) against an in-process fake
 * controller: a thread that binds the client-facing sockets, answers the connection
 * request and plays the engines (it answers every request itself). */
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>

#include <herd/client.h>
#include <herd/wire.h>

#define KEY "test-key-0123456789"
#define ENGINE_A "aaaaaaaa-000000000000000000000000"
#define ENGINE_B "bbbbbbbb-000000000000000000000000"
#define ENGINE_C "cccccccc-000000000000000000000000"

enum { F_REG, F_MUX, F_TASK, F_BCAST, F_CONTROL, F_IOPUB, F_NOTIF, F_N };

/* How the fake engines write a MUX reply: the request's content.reply_style (default plain). */
enum {
    REPLY_PLAIN,
    REPLY_ESCAPED,        /* msg_type, status and metadata.engine spelled with JSON escapes */
    REPLY_NESTED_INVALID, /* content holds a nested value that is not JSON */
    REPLY_NOT_OBJECT,     /* content is a JSON array */
};

typedef struct FakeController {
    void *zctx;
    void *socks[F_N];
    int ports[F_N];
    HerdSession *session;
    GThread *thread;
    gint stop;             /* atomic */
    gint announce_engine;  /* atomic: 1 = publish ENGINE_C's registration, 2 = its unregistration */
    guint task_turn;
    char *dir, *connfile;
} FakeController;

static int bind_any(void *sock)
{
    g_assert_cmpint(zmq_bind(sock, "tcp://127.0.0.1:*"), ==, 0);
    char url[256];
    size_t len = sizeof url;
    zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, url, &len);
    return atoi(strrchr(url, ':') + 1);
}

static void write_connfile(FakeController *fc)
{
    g_autofree char *json = g_strdup_printf(
        "{\"ssh\": \"\", \"interface\": \"tcp://127.0.0.1\", \"registration\": %d, \"control\": %d, "
        "\"mux\": %d, \"task\": %d, \"task_scheme\": \"leastload\", \"iopub\": %d, \"notification\": %d, "
        "\"broadcast\": %d, \"key\": \"" KEY "\", \"curve_serverkey\": null, \"location\": \"localhost\", "
        "\"pack\": \"json\", \"unpack\": \"json\", \"signature_scheme\": \"hmac-sha256\"}",
        fc->ports[F_REG], fc->ports[F_CONTROL], fc->ports[F_MUX], fc->ports[F_TASK], fc->ports[F_IOPUB],
        fc->ports[F_NOTIF], fc->ports[F_BCAST]);
    fc->dir = g_dir_make_tmp("herd-test-client-XXXXXX", NULL);
    fc->connfile = g_build_filename(fc->dir, "ipcontroller-client.json", NULL);
    g_assert_true(g_file_set_contents(fc->connfile, json, -1, NULL));
}

/* Build an engine reply to request frames `req` (prefix already stripped to the delimiter
 * index), with parent = `parent` bytes, echoing the request buffers; written as `style`. */
static void send_engine_reply(FakeController *fc, void *sock, const char *client_id, gsize client_id_len,
                              const char *engine, gboolean engine_frame, const HerdFrames *req, HerdBytes parent,
                              const char *original_msg_id, int style)
{
    HerdFrames out;
    herd_frames_init(&out);
    herd_frames_push(&out, client_id, client_id_len);
    if (engine_frame)
        herd_frames_push(&out, engine, strlen(engine));
    /* REPLY_ESCAPED: \u0061 is the engine's first letter, a; \u006f the o of ok. */
    const char *contents[] = { [REPLY_PLAIN] = "{\"status\": \"ok\"}",
                               [REPLY_ESCAPED] = "{\"status\": \"\\u006fk\"}",
                               [REPLY_NESTED_INVALID] = "{\"status\": \"ok\", \"data\": [tru]}",
                               [REPLY_NOT_OBJECT] = "[\"status\", \"ok\"]" };
    g_autofree char *metadata = g_strdup_printf(
        "{\"started\": \"2026-01-01T00:00:00.000001Z\", \"dependencies_met\": true, \"engine\": \"%s%s\", "
        "\"is_broadcast\": %s, \"is_coalescing\": false, \"original_msg_id\": \"%s\", \"status\": \"ok\"}",
        style == REPLY_ESCAPED ? "\\u0061" : "", style == REPLY_ESCAPED ? engine + 1 : engine,
        original_msg_id ? "true" : "false", original_msg_id ? original_msg_id : "");
    herd_session_build(fc->session, &out, style == REPLY_ESCAPED ? "apply\"reply" : "apply_reply", parent,
                       HERD_BYTES_STR(metadata), HERD_BYTES_STR(contents[style]), NULL);
    for (guint i = herd_wire(req, HERD_WIRE_BUFFERS); i < req->n; i++)
        herd_frames_push_frame_copy(&out, req, i);
    g_assert_cmpint(herd_frames_send(sock, &out), ==, 0);
}

static void publish_idle(FakeController *fc, const char *engine, HerdBytes parent)
{
    HerdFrames out;
    herd_frames_init(&out);
    herd_frames_push(&out, "engine.0.status", 15);
    g_autofree char *metadata = g_strdup_printf("{\"engine\": \"%s\"}", engine);
    herd_session_build(fc->session, &out, "status", parent, HERD_BYTES_STR(metadata),
                       HERD_BYTES_STR("{\"execution_state\": \"idle\"}"), NULL);
    herd_frames_send(fc->socks[F_IOPUB], &out);
}

static void answer_registration(FakeController *fc, HerdFrames *in)
{
    HerdFrames out;
    herd_frames_init(&out);
    herd_frames_push_frame_copy(&out, in, 0);
    herd_session_build(fc->session, &out, "connection_reply", herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER)),
                       HERD_BYTES_NULL,
                       HERD_BYTES_STR("{\"status\": \"ok\", \"engines\": {\"0\": \"" ENGINE_A "\", \"1\": \"" ENGINE_B "\"}}"),
                       NULL);
    herd_frames_send(fc->socks[F_REG], &out);
}

/* MUX: [C, E, M] -> reply [C, E, M'] and an idle status on IOPub. ENGINE_C never answers. */
static void answer_mux(FakeController *fc, HerdFrames *in)
{
    HerdBytes parent = herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER));
    g_autofree char *engine = g_strndup(herd_frame_data(in, 1), herd_frame_size(in, 1));
    if (g_str_equal(engine, ENGINE_C))
        return;
    g_autoptr(JsonNode) content = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_CONTENT)), NULL);
    g_assert_nonnull(content);
    int style = (int)herd_json_int(json_node_get_object(content), "reply_style", REPLY_PLAIN);
    send_engine_reply(fc, fc->socks[F_MUX], herd_frame_data(in, 0), herd_frame_size(in, 0), engine, TRUE, in, parent,
                      NULL, style);
    publish_idle(fc, engine, parent);
}

/* Task: [C, M] -> the engines take turns. */
static void answer_task(FakeController *fc, HerdFrames *in)
{
    const char *engine = (fc->task_turn++ % 2) ? ENGINE_B : ENGINE_A;
    send_engine_reply(fc, fc->socks[F_TASK], herd_frame_data(in, 0), herd_frame_size(in, 0), engine, TRUE, in,
                      herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER)), NULL, REPLY_PLAIN);
}

/* Broadcast: one reply per metadata target, parent msg_id rewritten to <orig>_<uuid>.
 * ENGINE_C never answers; a coalescing request is left unanswered. */
static void answer_broadcast(FakeController *fc, HerdFrames *in)
{
    g_autoptr(JsonNode) header = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_HEADER)), NULL);
    g_autoptr(JsonNode) md = herd_json_parse_object(herd_frame_bytes(in, herd_wire(in, HERD_WIRE_METADATA)), NULL);
    g_assert_nonnull(header);
    g_assert_nonnull(md);
    if (herd_json_bool(json_node_get_object(md), "is_coalescing", FALSE))
        return;
    g_autofree char *orig = g_strdup(herd_json_str(json_node_get_object(header), "msg_id"));
    JsonArray *targets = json_object_get_array_member(json_node_get_object(md), "targets");
    for (guint i = 0; i < json_array_get_length(targets); i++) {
        const char *uuid = json_array_get_string_element(json_array_get_array_element(targets, i), 0);
        if (g_str_equal(uuid, ENGINE_C))
            continue;
        g_autofree char *rewritten = g_strdup_printf("%s_%s", orig, uuid);
        json_object_set_string_member(json_node_get_object(header), "msg_id", rewritten);
        gsize len;
        g_autofree char *parent = herd_json_to_string(header, &len);
        send_engine_reply(fc, fc->socks[F_BCAST], herd_frame_data(in, 0), herd_frame_size(in, 0), uuid, FALSE, in,
                          (HerdBytes){ parent, len }, orig, REPLY_PLAIN);
    }
}

static gpointer fake_controller_main(gpointer data)
{
    FakeController *fc = data;
    while (!g_atomic_int_get(&fc->stop)) {
        zmq_pollitem_t items[] = {
            { fc->socks[F_REG], 0, ZMQ_POLLIN, 0 },
            { fc->socks[F_MUX], 0, ZMQ_POLLIN, 0 },
            { fc->socks[F_TASK], 0, ZMQ_POLLIN, 0 },
            { fc->socks[F_BCAST], 0, ZMQ_POLLIN, 0 },
        };
        void (*handlers[])(FakeController *, HerdFrames *) = { answer_registration, answer_mux, answer_task,
                                                               answer_broadcast };
        zmq_poll(items, G_N_ELEMENTS(items), 20);
        for (guint i = 0; i < G_N_ELEMENTS(items); i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            HerdFrames in;
            herd_frames_init(&in);
            while (herd_frames_recv(items[i].socket, &in, ZMQ_DONTWAIT) == 0) {
                g_assert_cmpint(herd_session_verify(fc->session, &in), ==, HERD_VERIFY_OK);
                handlers[i](fc, &in);
                herd_frames_clear(&in);
            }
            herd_frames_clear(&in); /* a failed receive may leave an empty array behind */
        }
        int announce = g_atomic_int_get(&fc->announce_engine);
        if (announce) {
            HerdFrames out;
            herd_frames_init(&out);
            herd_session_build(fc->session, &out,
                               announce == 1 ? "registration_notification" : "unregistration_notification",
                               HERD_BYTES_NULL, HERD_BYTES_NULL,
                               HERD_BYTES_STR("{\"id\": 2, \"uuid\": \"" ENGINE_C "\"}"), NULL);
            herd_frames_send(fc->socks[F_NOTIF], &out);
        }
    }
    return NULL;
}

static FakeController *fake_controller_start(void)
{
    FakeController *fc = g_new0(FakeController, 1);
    fc->zctx = zmq_ctx_new();
    const int types[F_N] = { ZMQ_ROUTER, ZMQ_ROUTER, ZMQ_ROUTER, ZMQ_ROUTER, ZMQ_ROUTER, ZMQ_PUB, ZMQ_PUB };
    for (int i = 0; i < F_N; i++) {
        fc->socks[i] = zmq_socket(fc->zctx, types[i]);
        int zero = 0;
        zmq_setsockopt(fc->socks[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(fc->socks[i], ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(fc->socks[i], ZMQ_RCVHWM, &zero, sizeof zero);
        fc->ports[i] = bind_any(fc->socks[i]);
    }
    fc->session = herd_session_new(KEY, "hmac-sha256", NULL, NULL);
    g_assert_nonnull(fc->session);
    write_connfile(fc);
    fc->thread = g_thread_new("fake-controller", fake_controller_main, fc);
    return fc;
}

static void fake_controller_stop(FakeController *fc)
{
    g_atomic_int_set(&fc->stop, 1);
    g_thread_join(fc->thread);
    for (int i = 0; i < F_N; i++)
        zmq_close(fc->socks[i]);
    zmq_ctx_term(fc->zctx);
    herd_session_free(fc->session);
    g_unlink(fc->connfile);
    g_rmdir(fc->dir);
    g_free(fc->connfile);
    g_free(fc->dir);
    g_free(fc);
}

/* ---- tests ---- */

/* A client of a fresh fake controller, connected. */
static HerdClient *connect_client(FakeController *fc)
{
    GError *err = NULL;
    HerdClient *c = herd_client_connect(fc->connfile, 5000, &err);
    g_assert_no_error(err);
    g_assert_nonnull(c);
    return c;
}

static void disconnect_client(HerdClient *c, FakeController *fc)
{
    herd_client_close(c);
    fake_controller_stop(fc);
}

static void test_connect_reads_engine_table(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    guint n;
    const HerdClientEngine *engines = herd_client_engines(c, &n);
    g_assert_cmpuint(n, ==, 2);
    g_assert_cmpint(engines[0].id, ==, 0);
    g_assert_cmpstr(engines[0].uuid, ==, ENGINE_A);
    g_assert_cmpint(engines[1].id, ==, 1);
    g_assert_cmpstr(herd_client_engine_uuid(c, 1), ==, ENGINE_B);
    g_assert_null(herd_client_engine_uuid(c, 7));
    g_assert_cmpuint(strlen(herd_client_session_id(c)), >, 0);
    disconnect_client(c, fc);
}

static void test_connect_errors(void)
{
    GError *err = NULL;
    g_assert_null(herd_client_connect("/nonexistent/ipcontroller-client.json", 100, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_CONNFILE);
    g_clear_error(&err);

    /* A file naming ports nobody answers on: the connection request times out. */
    FakeController *fc = fake_controller_start();
    g_autofree char *dead = g_build_filename(fc->dir, "dead-client.json", NULL);
    g_autofree char *json = g_strdup_printf(
        "{\"ssh\": \"\", \"interface\": \"tcp://127.0.0.1\", \"registration\": 1, \"control\": 1, \"mux\": 1, "
        "\"task\": 1, \"task_scheme\": \"leastload\", \"iopub\": 1, \"notification\": 1, \"broadcast\": 1, "
        "\"key\": \"k\", \"curve_serverkey\": null, \"location\": \"localhost\", \"pack\": \"json\", "
        "\"unpack\": \"json\", \"signature_scheme\": \"hmac-sha256\"}");
    g_assert_true(g_file_set_contents(dead, json, -1, NULL));
    gint64 start = g_get_monotonic_time();
    g_assert_null(herd_client_connect(dead, 300, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_TIMEOUT);
    g_assert_cmpint(g_get_monotonic_time() - start, <, 5 * G_USEC_PER_SEC);
    g_clear_error(&err);
    g_unlink(dead);
    fake_controller_stop(fc);
}

static void test_submit_argument_errors(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    GError *err = NULL;
    int two[] = { 0, 1 };
    g_assert_false(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", two, 2, NULL, NULL, NULL, 0, NULL, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_INVALID);
    g_clear_error(&err);
    int missing = 42;
    g_assert_false(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", &missing, 1, NULL, NULL, NULL, 0, NULL, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_NO_ENGINE);
    g_clear_error(&err);
    g_assert_false(herd_client_submit(c, HERD_CHANNEL_TASK, "apply_request", NULL, 0, "[1, 2]", NULL, NULL, 0, NULL, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_INVALID);
    g_clear_error(&err);
    g_assert_false(herd_client_submit(c, HERD_CHANNEL_TASK, "apply_request", NULL, 0, NULL, "{oops", NULL, 0, NULL, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_INVALID);
    g_clear_error(&err);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    disconnect_client(c, fc);
}

typedef struct Expected {
    guint replies_left;
    guint32 payload;
} Expected;

/* Submit many requests on every channel before reading anything, then check each reply
 * arrives exactly once, on the right channel, with its request's buffer. */
static void test_pipelining_every_reply_once(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    g_autoptr(GHashTable) expected = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    const guint n_mux = 1500, n_task = 1500, n_bcast = 300;
    guint32 payload = 0;
    guint total_replies = 0;
    for (guint i = 0; i < n_mux + n_task + n_bcast; i++) {
        HerdChannel ch = i < n_mux ? HERD_CHANNEL_MUX : i < n_mux + n_task ? HERD_CHANNEL_TASK : HERD_CHANNEL_BROADCAST;
        int target = (int)(i % 2);
        HerdBytes buf = { (const char *)&payload, sizeof payload };
        char *msg_id = NULL;
        GError *err = NULL;
        gboolean ok = herd_client_submit(c, ch, "apply_request", ch == HERD_CHANNEL_MUX ? &target : NULL,
                                         ch == HERD_CHANNEL_MUX ? 1 : 0, NULL, NULL, &buf, 1, &msg_id, &err);
        g_assert_no_error(err);
        g_assert_true(ok);
        Expected *e = g_new(Expected, 1);
        e->replies_left = ch == HERD_CHANNEL_BROADCAST ? 2 : 1;
        e->payload = payload++;
        total_replies += e->replies_left;
        g_hash_table_insert(expected, msg_id, e);
    }
    g_assert_cmpuint(herd_client_outstanding(c), ==, n_mux + n_task + n_bcast);

    guint received = 0, idles = 0;
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (received < total_replies && g_get_monotonic_time() < deadline) {
        GError *err = NULL;
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 1000, &err);
        g_assert_no_error(err);
        if (!m)
            continue;
        if (m->kind == HERD_MSG_IOPUB) {
            g_assert_nonnull(g_hash_table_lookup(expected, m->request_id));
            idles++;
            continue;
        }
        g_assert_cmpint(m->kind, ==, HERD_MSG_REPLY);
        Expected *e = g_hash_table_lookup(expected, m->request_id);
        g_assert_nonnull(e);
        g_assert_cmpuint(e->replies_left, >, 0);
        e->replies_left--;
        received++;
        g_assert_cmpstr(m->status, ==, "ok");
        g_assert_cmpstr(m->msg_type, ==, "apply_reply");
        g_assert_cmpint(m->engine_id, >=, 0);
        g_assert_cmpuint(m->n_buffers, ==, 1);
        g_assert_cmpuint(m->buffers[0].len, ==, sizeof(guint32));
        guint32 got;
        memcpy(&got, m->buffers[0].data, sizeof got);
        g_assert_cmpuint(got, ==, e->payload);
    }
    g_assert_cmpuint(received, ==, total_replies);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    g_assert_cmpuint(herd_client_unexpected(c), ==, 0);
    g_assert_cmpuint(herd_client_rejected(c), ==, 0);
    /* Nothing more arrives: no duplicates. */
    GError *err = NULL;
    HerdClientMsg *extra;
    while ((extra = herd_client_recv(c, 200, &err))) {
        g_assert_cmpint(extra->kind, ==, HERD_MSG_IOPUB);
        herd_client_msg_free(extra);
    }
    g_assert_no_error(err);
    g_test_message("%u replies, %u idle statuses", received, idles);
    disconnect_client(c, fc);
}

static void test_wait_for_engines_follows_notifications(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    GError *err = NULL;
    g_assert_false(herd_client_wait_for_engines(c, 3, 100, &err));
    g_assert_error(err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_TIMEOUT);
    g_clear_error(&err);
    g_atomic_int_set(&fc->announce_engine, 1);
    g_assert_true(herd_client_wait_for_engines(c, 3, 10000, &err));
    g_assert_no_error(err);
    g_assert_cmpstr(herd_client_engine_uuid(c, 2), ==, ENGINE_C);
    /* The notification is still delivered to the caller. */
    g_autoptr(HerdClientMsg) m = herd_client_recv(c, 0, &err);
    g_assert_nonnull(m);
    g_assert_cmpint(m->kind, ==, HERD_MSG_NOTIFICATION);
    g_assert_cmpstr(m->msg_type, ==, "registration_notification");
    g_assert_cmpint(m->engine_id, ==, 2);
    disconnect_client(c, fc);
}

/* A MUX request whose engine unregisters before answering fails locally with
 * EngineError, as in ipyparallel, instead of staying outstanding forever. */
static void test_unregistration_fails_pending_direct_requests(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    g_atomic_int_set(&fc->announce_engine, 1);
    g_assert_true(herd_client_wait_for_engines(c, 3, 10000, NULL));
    int silent_engine = 2, live_engine = 0;
    g_autofree char *lost = NULL, *answered = NULL;
    g_assert_true(herd_client_execute(c, HERD_CHANNEL_MUX, &silent_engine, 1, "x", TRUE, &lost, NULL));
    g_assert_true(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", &live_engine, 1, NULL, NULL, NULL, 0,
                                     &answered, NULL));
    g_atomic_int_set(&fc->announce_engine, 2);
    gboolean got_failure = FALSE, got_answer = FALSE, saw_notification = FALSE;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!(got_failure && got_answer) && g_get_monotonic_time() < deadline) {
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 500, NULL);
        if (!m)
            continue;
        if (m->kind == HERD_MSG_NOTIFICATION && g_str_equal(m->msg_type, "unregistration_notification"))
            saw_notification = TRUE;
        if (m->kind != HERD_MSG_REPLY)
            continue;
        if (g_strcmp0(m->request_id, lost) == 0) {
            g_assert_true(saw_notification); /* delivered right behind the notification */
            g_assert_false(got_failure);
            got_failure = TRUE;
            g_assert_cmpstr(m->msg_type, ==, "execute_reply");
            g_assert_cmpstr(m->status, ==, "error");
            g_assert_cmpstr(json_object_get_string_member(herd_client_msg_content(m), "ename"), ==, "EngineError");
            g_assert_cmpint(m->engine_id, ==, 2);
            g_assert_cmpstr(m->engine_uuid, ==, ENGINE_C);
            g_assert_cmpuint(m->n_buffers, ==, 0);
        } else if (g_strcmp0(m->request_id, answered) == 0) {
            got_answer = TRUE;
            g_assert_cmpstr(m->status, ==, "ok");
        }
    }
    g_assert_true(got_failure);
    g_assert_true(got_answer);
    g_assert_null(herd_client_engine_uuid(c, 2));
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    g_assert_cmpuint(herd_client_unexpected(c), ==, 0);
    disconnect_client(c, fc);
}

/* Broadcast requests waiting for an engine that unregisters are failed locally, as
 * ipyparallel does (herdd sends nothing for them): a plain one for that engine only, a
 * coalescing one as a whole. */
static void test_unregistration_fails_pending_broadcast_requests(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    g_atomic_int_set(&fc->announce_engine, 1);
    g_assert_true(herd_client_wait_for_engines(c, 3, 10000, NULL));
    const int targets[] = { 0, 2 };
    g_autofree char *plain = NULL, *coalescing = NULL;
    g_assert_true(herd_client_submit(c, HERD_CHANNEL_BROADCAST, "apply_request", targets, 2, NULL, NULL, NULL, 0,
                                     &plain, NULL));
    const char *md = "{\"targets\": [[\"" ENGINE_A "\", 0], [\"" ENGINE_C "\", 2]], \"is_broadcast\": true, "
                     "\"is_coalescing\": true}";
    g_assert_true(herd_client_submit(c, HERD_CHANNEL_BROADCAST, "apply_request", NULL, 0, md, NULL, NULL, 0,
                                     &coalescing, NULL));
    /* Engine A's plain answer first, so that only engine C is still awaited. */
    gboolean plain_ok = FALSE, plain_failed = FALSE, coalescing_failed = FALSE;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!plain_ok && g_get_monotonic_time() < deadline) {
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 500, NULL);
        if (m && m->kind == HERD_MSG_REPLY && g_strcmp0(m->request_id, plain) == 0) {
            g_assert_cmpstr(m->status, ==, "ok");
            g_assert_cmpstr(m->engine_uuid, ==, ENGINE_A);
            plain_ok = TRUE;
        }
    }
    g_assert_true(plain_ok);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 2);
    g_atomic_int_set(&fc->announce_engine, 2);
    while (!(plain_failed && coalescing_failed) && g_get_monotonic_time() < deadline) {
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 500, NULL);
        if (!m || m->kind != HERD_MSG_REPLY)
            continue;
        g_assert_cmpint(m->channel, ==, HERD_CHANNEL_BROADCAST);
        g_assert_cmpstr(m->status, ==, "error");
        g_assert_cmpstr(json_object_get_string_member(herd_client_msg_content(m), "ename"), ==, "EngineError");
        g_assert_cmpstr(m->engine_uuid, ==, ENGINE_C);
        g_assert_cmpint(m->engine_id, ==, 2);
        g_assert_cmpstr(json_object_get_string_member(herd_client_msg_metadata(m), "original_msg_id"), ==, m->request_id);
        const char *parent = json_object_get_string_member(herd_client_msg_parent_header(m), "msg_id");
        if (g_strcmp0(m->request_id, plain) == 0) {
            g_assert_false(plain_failed);
            plain_failed = TRUE;
            g_autofree char *sub = g_strdup_printf("%s_%s", plain, ENGINE_C);
            g_assert_cmpstr(parent, ==, sub);
        } else {
            g_assert_cmpstr(m->request_id, ==, coalescing);
            g_assert_false(coalescing_failed);
            coalescing_failed = TRUE;
            g_assert_cmpstr(parent, ==, coalescing);
        }
    }
    g_assert_true(plain_failed);
    g_assert_true(coalescing_failed);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    g_assert_cmpuint(herd_client_unexpected(c), ==, 0);
    disconnect_client(c, fc);
}

static void test_pollitems_cover_every_socket(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    zmq_pollitem_t items[8];
    guint n = herd_client_pollitems(c, items, G_N_ELEMENTS(items));
    g_assert_cmpuint(n, ==, 7);
    int target = 0;
    g_assert_true(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", &target, 1, NULL, NULL, NULL, 0, NULL, NULL));
    /* An external poll loop wakes up for the reply, then recv(0) returns it. */
    HerdClientMsg *m = NULL;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!m && g_get_monotonic_time() < deadline) {
        g_assert_cmpint(zmq_poll(items, (int)n, 1000), >=, 0);
        HerdClientMsg *got = herd_client_recv(c, 0, NULL);
        if (got && got->kind == HERD_MSG_REPLY)
            m = got;
        else
            herd_client_msg_free(got);
    }
    g_assert_nonnull(m);
    g_assert_cmpint(m->channel, ==, HERD_CHANNEL_MUX);
    g_assert_cmpstr(m->engine_uuid, ==, ENGINE_A);
    herd_client_msg_free(m);
    disconnect_client(c, fc);
}

/* Receive until the reply to request_id arrives (anything else is dropped); NULL at the deadline. */
static HerdClientMsg *recv_reply_to(HerdClient *c, const char *request_id, gint64 deadline)
{
    while (g_get_monotonic_time() < deadline) {
        HerdClientMsg *m = herd_client_recv(c, 200, NULL);
        if (m && m->kind == HERD_MSG_REPLY && g_strcmp0(m->request_id, request_id) == 0)
            return m;
        herd_client_msg_free(m);
    }
    return NULL;
}

/* A MUX apply_request to engine 0 whose reply the fake engine writes in `style`. */
static char *submit_styled(HerdClient *c, int style)
{
    int target = 0;
    g_autofree char *content = g_strdup_printf("{\"reply_style\": %d}", style);
    char *msg_id = NULL;
    GError *err = NULL;
    g_assert_true(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", &target, 1, NULL, content, NULL, 0, &msg_id,
                                     &err));
    g_assert_no_error(err);
    return msg_id;
}

/* Submit one request whose reply engine 0 (A) writes in `style`; check the fields read on
 * arrival and return the reply. */
static HerdClientMsg *styled_reply(HerdClient *c, int style, const char *msg_type)
{
    g_autofree char *msg_id = submit_styled(c, style);
    HerdClientMsg *m = recv_reply_to(c, msg_id, g_get_monotonic_time() + 10 * G_USEC_PER_SEC);
    g_assert_nonnull(m);
    g_assert_cmpstr(m->msg_type, ==, msg_type);
    g_assert_cmpstr(m->status, ==, "ok");
    g_assert_cmpstr(m->engine_uuid, ==, ENGINE_A);
    g_assert_cmpint(m->engine_id, ==, 0);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    g_assert_cmpuint(herd_client_unexpected(c), ==, 0);
    return m;
}

/* The fields read on arrival agree with the JSON parts, which are parsed once, on demand;
 * members spelled with JSON escapes read as their decoded text. */
static void test_reply_fields_and_parts(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    g_autoptr(HerdClientMsg) m = styled_reply(c, REPLY_PLAIN, "apply_reply");
    JsonObject *header = herd_client_msg_header(m);
    g_assert_nonnull(header);
    g_assert_true(herd_client_msg_header(m) == header);
    g_assert_cmpstr(herd_json_str(header, "msg_type"), ==, m->msg_type);
    g_assert_cmpstr(herd_json_str(header, "msg_id"), ==, m->msg_id);
    JsonObject *parent = herd_client_msg_parent_header(m);
    g_assert_cmpstr(herd_json_str(parent, "msg_id"), ==, m->request_id);
    g_assert_cmpstr(herd_json_str(parent, "session"), ==, herd_client_session_id(c));
    JsonObject *metadata = herd_client_msg_metadata(m);
    g_assert_cmpstr(herd_json_str(metadata, "engine"), ==, ENGINE_A);
    g_assert_true(herd_json_bool(metadata, "dependencies_met", FALSE));
    g_assert_cmpstr(herd_json_str(herd_client_msg_content(m), "status"), ==, "ok");

    g_autoptr(HerdClientMsg) escaped = styled_reply(c, REPLY_ESCAPED, "apply\"reply");
    g_assert_cmpstr(herd_json_str(herd_client_msg_metadata(escaped), "engine"), ==, ENGINE_A);
    disconnect_client(c, fc);
}

/* A part that is not an object is refused on arrival; a bad value nested in one is only
 * found when that part is asked for. */
static void test_malformed_parts(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    g_autofree char *nested = submit_styled(c, REPLY_NESTED_INVALID);
    g_autoptr(HerdClientMsg) m = recv_reply_to(c, nested, deadline);
    g_assert_nonnull(m);
    g_assert_cmpstr(m->status, ==, "ok");
    g_assert_nonnull(herd_client_msg_header(m));
    g_assert_null(herd_client_msg_content(m));
    g_assert_null(herd_client_msg_content(m));

    /* Replies on one socket arrive in order: once the second is in, the first was refused. */
    g_autofree char *not_object = submit_styled(c, REPLY_NOT_OBJECT);
    g_autofree char *plain = submit_styled(c, REPLY_PLAIN);
    g_autoptr(HerdClientMsg) after = recv_reply_to(c, plain, deadline);
    g_assert_nonnull(after);
    g_assert_cmpuint(herd_client_rejected(c), ==, 1);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 1); /* the refused reply's request */
    disconnect_client(c, fc);
}

/* The default metadata of a broadcast to every engine follows the engine table: after a
 * registration the next one waits for three engines, and the third one's leaving fails it. */
static void test_default_metadata_follows_engine_table(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    for (guint round = 0; round < 2; round++) {
        g_autofree char *msg_id = NULL;
        g_assert_true(herd_client_submit(c, HERD_CHANNEL_BROADCAST, "apply_request", NULL, 0, NULL, NULL, NULL, 0,
                                         &msg_id, NULL));
        for (guint i = 0; i < 2; i++) { /* engines A and B answer; C never does */
            g_autoptr(HerdClientMsg) m = recv_reply_to(c, msg_id, deadline);
            g_assert_nonnull(m);
            g_assert_cmpstr(m->status, ==, "ok");
        }
        g_assert_cmpuint(herd_client_outstanding(c), ==, round); /* the second also waits for C */
        if (round == 0) {
            g_atomic_int_set(&fc->announce_engine, 1);
            g_assert_true(herd_client_wait_for_engines(c, 3, 10000, NULL));
        }
    }
    g_atomic_int_set(&fc->announce_engine, 2);
    while (herd_client_outstanding(c) > 0 && g_get_monotonic_time() < deadline) {
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 200, NULL);
        if (m && m->kind == HERD_MSG_REPLY) {
            g_assert_cmpstr(m->status, ==, "error");
            g_assert_cmpstr(m->engine_uuid, ==, ENGINE_C);
        }
    }
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    disconnect_client(c, fc);
}

/* Submitting and receiving in turn, with a few requests in flight (as herd bench does):
 * every reply comes exactly once, although sends keep taking the sockets' wake-ups. */
static void test_window_every_reply_once(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    const guint total = 3000, window = 8;
    g_autoptr(GHashTable) waiting = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    guint sent = 0, received = 0;
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (received < total && g_get_monotonic_time() < deadline) {
        while (sent < total && sent - received < window) {
            HerdChannel ch = sent % 3 == 0 ? HERD_CHANNEL_MUX : HERD_CHANNEL_TASK;
            int target = (int)(sent % 2);
            char *msg_id = NULL;
            g_assert_true(herd_client_submit(c, ch, "apply_request", ch == HERD_CHANNEL_MUX ? &target : NULL,
                                             ch == HERD_CHANNEL_MUX ? 1 : 0, NULL, NULL, NULL, 0, &msg_id, NULL));
            g_hash_table_add(waiting, msg_id);
            sent++;
        }
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 1000, NULL);
        if (m && m->kind == HERD_MSG_REPLY) {
            g_assert_true(g_hash_table_remove(waiting, m->request_id));
            received++;
        }
    }
    g_assert_cmpuint(received, ==, total);
    g_assert_cmpuint(herd_client_outstanding(c), ==, 0);
    g_assert_cmpuint(herd_client_unexpected(c), ==, 0);
    disconnect_client(c, fc);
}

/* Submit MUX requests until the IOPub "idle" of one of them arrives. A SUB socket misses
 * what is published before its subscription reaches the PUB (ZeroMQ's slow joiner), so a
 * just-connected client may need a few. Every IOPub message the client is given must
 * belong to a request it made (`mine`: every msg_id it submitted so far). */
static void wait_for_own_iopub(HerdClient *c, GHashTable *mine, gint64 deadline)
{
    int target = 0;
    while (g_get_monotonic_time() < deadline) {
        char *msg_id = NULL;
        g_assert_true(herd_client_submit(c, HERD_CHANNEL_MUX, "apply_request", &target, 1, NULL, NULL, NULL, 0,
                                         &msg_id, NULL));
        g_hash_table_add(mine, msg_id);
        gint64 retry_at = MIN(deadline, g_get_monotonic_time() + 300 * 1000);
        while (g_get_monotonic_time() < retry_at) {
            g_autoptr(HerdClientMsg) m = herd_client_recv(c, 50, NULL);
            if (m && m->kind == HERD_MSG_IOPUB) {
                g_assert_true(g_hash_table_contains(mine, m->request_id));
                g_assert_cmpstr(m->msg_type, ==, "status");
                g_assert_cmpint(m->engine_id, ==, 0);
                return;
            }
        }
    }
    g_error("no IOPub message for this client's requests before the deadline");
}

/* Like ipyparallel, a client sees IOPub output of its own requests only: another client's
 * idle status, published on the same PUB socket, never reaches it. */
static void test_iopub_of_other_clients_is_skipped(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *mine = connect_client(fc), *other = herd_client_connect(fc->connfile, 5000, NULL);
    g_assert_nonnull(other);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    g_autoptr(GHashTable) my_ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) other_ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    wait_for_own_iopub(mine, my_ids, deadline);       /* both subscribed from here on */
    wait_for_own_iopub(other, other_ids, deadline);   /* published to both; mine must skip it */
    wait_for_own_iopub(mine, my_ids, deadline);       /* would fail on other's idle, had it come through */
    herd_client_close(other);
    disconnect_client(mine, fc);
}

/* A request stays outstanding until its last reply is returned by herd_client_recv, not
 * just received: `while (outstanding > 0) recv` must see every reply, even when many
 * arrive in one batch and wait inside the client. */
static void test_outstanding_until_delivered(void)
{
    FakeController *fc = fake_controller_start();
    HerdClient *c = connect_client(fc);
    const guint total = 500;
    for (guint i = 0; i < total; i++)
        g_assert_true(herd_client_submit(c, HERD_CHANNEL_TASK, "apply_request", NULL, 0, NULL, NULL, NULL, 0, NULL,
                                         NULL));
    guint delivered = 0;
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (herd_client_outstanding(c) > 0 && g_get_monotonic_time() < deadline) {
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, 1000, NULL);
        if (m && m->kind == HERD_MSG_REPLY)
            delivered++;
        g_assert_cmpuint(delivered + herd_client_outstanding(c), ==, total);
    }
    g_assert_cmpuint(delivered, ==, total);
    disconnect_client(c, fc);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/client/connect/engine-table", test_connect_reads_engine_table);
    g_test_add_func("/client/connect/errors", test_connect_errors);
    g_test_add_func("/client/submit/argument-errors", test_submit_argument_errors);
    g_test_add_func("/client/submit/pipelining", test_pipelining_every_reply_once);
    g_test_add_func("/client/wait-for-engines", test_wait_for_engines_follows_notifications);
    g_test_add_func("/client/pollitems", test_pollitems_cover_every_socket);
    g_test_add_func("/client/unregistration-fails-direct", test_unregistration_fails_pending_direct_requests);
    g_test_add_func("/client/unregistration-fails-broadcast", test_unregistration_fails_pending_broadcast_requests);
    g_test_add_func("/client/recv/fields-and-parts", test_reply_fields_and_parts);
    g_test_add_func("/client/recv/iopub-of-others-skipped", test_iopub_of_other_clients_is_skipped);
    g_test_add_func("/client/recv/malformed-parts", test_malformed_parts);
    g_test_add_func("/client/submit/default-metadata-follows-engines", test_default_metadata_follows_engine_table);
    g_test_add_func("/client/submit/window", test_window_every_reply_once);
    g_test_add_func("/client/outstanding-until-delivered", test_outstanding_until_delivered);
    return g_test_run();
}
