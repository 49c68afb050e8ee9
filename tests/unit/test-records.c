/* Unit tests for the hub's task-record store (core/records.c): updates from the relay and
 * IOPub paths, the result/history/db/purge/resubmit queries with their exact error texts,
 * culling by count and by size, and the --nodb backend. Messages are built by hand in the
 * wire layout the relays receive. */
#include "records.h"

#include <string.h>

/* ---- building messages ---- */

/* Dates: a fixed base plus whole seconds, so ordering is under the test's control. */
#define BASE_USEC G_GINT64_CONSTANT(1795000000000000)

static char *iso(gint64 offset_s)
{
    char buf[HERD_ISO_LEN];
    herd_iso_format(BASE_USEC + offset_s * G_USEC_PER_SEC, buf);
    return g_strdup(buf);
}

static void push_str(HerdFrames *f, const char *s)
{
    herd_frames_push(f, s, strlen(s));
}

static void push_buffers(HerdFrames *f, guint n, gsize size, char fill)
{
    for (guint i = 0; i < n; i++) {
        char *data = g_malloc(size);
        memset(data, fill + (char)i, size);
        herd_frames_push_take(f, data, size);
    }
}

static char *header_json(const char *msg_id, const char *msg_type, const char *session, gint64 date_s)
{
    char *date = iso(date_s);
    char *json = g_strdup_printf("{\"msg_id\": \"%s\", \"msg_type\": \"%s\", \"username\": \"u\", "
                                 "\"session\": \"%s\", \"date\": \"%s\", \"version\": \"5.3\"}",
                                 msg_id, msg_type, session, date);
    g_free(date);
    return json;
}

/* [client routing id, DELIM, sig, header, {}, metadata, content, buffers...] */
static void make_request(HerdFrames *f, const char *msg_id, const char *session, gint64 date_s, guint n_buffers,
                         gsize buffer_size)
{
    herd_frames_init(f);
    herd_frames_push(f, "\0abcd", 5);
    push_str(f, HERD_DELIM);
    push_str(f, "");
    char *header = header_json(msg_id, "apply_request", session, date_s);
    herd_frames_push_take(f, header, strlen(header));
    push_str(f, "{}");
    push_str(f, "{\"after\": [], \"targets\": []}");
    push_str(f, "{}");
    push_buffers(f, n_buffers, buffer_size, 'a');
    herd_frames_find_delim(f);
}

/* [engine uuid, client routing id, DELIM, sig, header, parent, metadata, content, buffers...] */
static void make_reply(HerdFrames *f, const char *request_id, const char *engine, gint64 started_s, gint64 date_s,
                       guint n_buffers, gsize buffer_size)
{
    herd_frames_init(f);
    push_str(f, engine);
    herd_frames_push(f, "\0abcd", 5);
    push_str(f, HERD_DELIM);
    push_str(f, "");
    char *reply_id = g_strconcat(request_id, "-reply", NULL);
    char *header = header_json(reply_id, "apply_reply", engine, date_s);
    herd_frames_push_take(f, header, strlen(header));
    char *parent = header_json(request_id, "apply_request", "client", 0);
    herd_frames_push_take(f, parent, strlen(parent));
    char *started = iso(started_s);
    char *metadata = g_strdup_printf("{\"started\": \"%s\", \"dependencies_met\": true, \"engine\": \"%s\", "
                                     "\"status\": \"ok\"}",
                                     started, engine);
    herd_frames_push_take(f, metadata, strlen(metadata));
    push_str(f, "{\"status\": \"ok\"}");
    push_buffers(f, n_buffers, buffer_size, 'r');
    herd_frames_find_delim(f);
    g_free(started);
    g_free(reply_id);
}

/* [topic, DELIM, sig, header, parent, metadata, content] */
static void make_iopub(HerdFrames *f, const char *parent_id, const char *msg_type, const char *content)
{
    herd_frames_init(f);
    push_str(f, "engine.0.stdout");
    push_str(f, HERD_DELIM);
    push_str(f, "");
    char *header = header_json("iopub-id", msg_type, "engine-0", 0);
    herd_frames_push_take(f, header, strlen(header));
    if (parent_id) {
        char *parent = header_json(parent_id, "execute_request", "client", 0);
        herd_frames_push_take(f, parent, strlen(parent));
    } else {
        push_str(f, "{}");
    }
    push_str(f, "{}");
    push_str(f, content);
    herd_frames_find_delim(f);
}

static void add_request(HerdRecords *db, const char *msg_id, const char *queue, const char *engine, gint64 date_s,
                        guint n_buffers, gsize buffer_size)
{
    HerdFrames f;
    make_request(&f, msg_id, "client-a", date_s, n_buffers, buffer_size);
    g_assert_true(herd_records_add_request(db, &f, queue, engine, NULL));
    herd_frames_clear(&f);
}

static void add_reply(HerdRecords *db, const char *msg_id, const char *engine, gint64 date_s, guint n_buffers,
                      gsize buffer_size)
{
    HerdFrames f;
    make_reply(&f, msg_id, engine, date_s, date_s + 1, n_buffers, buffer_size);
    g_assert_true(herd_records_add_reply(db, &f, NULL, BASE_USEC + (date_s + 2) * G_USEC_PER_SEC));
    herd_frames_clear(&f);
}

static void add_iopub(HerdRecords *db, const char *parent_id, const char *msg_type, const char *content,
                      gboolean expect_stored)
{
    HerdFrames f;
    make_iopub(&f, parent_id, msg_type, content);
    g_assert_cmpint(herd_records_add_iopub(db, &f, NULL), ==, expect_stored);
    herd_frames_clear(&f);
}

/* ---- reading replies ---- */

static JsonObject *parse_object(const char *json)
{
    JsonNode *node = herd_json_parse_object(HERD_BYTES_STR(json), NULL);
    g_assert_nonnull(node);
    JsonObject *o = json_object_ref(json_node_get_object(node));
    json_node_unref(node);
    return o;
}

static void assert_ok(JsonNode *content)
{
    g_assert_nonnull(content);
    g_assert_cmpstr(herd_json_str(json_node_get_object(content), "status"), ==, "ok");
}

static void assert_error(JsonNode *content, const char *ename, const char *evalue)
{
    g_assert_nonnull(content);
    JsonObject *o = json_node_get_object(content);
    g_assert_cmpstr(herd_json_str(o, "status"), ==, "error");
    g_assert_cmpstr(herd_json_str(o, "ename"), ==, ename);
    if (evalue)
        g_assert_cmpstr(herd_json_str(o, "evalue"), ==, evalue);
    g_assert_cmpuint(json_object_get_size(json_object_get_object_member(o, "engine_info")), ==, 0);
}

/* The list member of a reply as "a,b,c". */
static char *joined(JsonObject *o, const char *member)
{
    GString *s = g_string_new(NULL);
    JsonArray *a = json_object_get_array_member(o, member);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonNode *e = json_array_get_element(a, i);
        if (i)
            g_string_append_c(s, ',');
        if (JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_STRING)
            g_string_append(s, json_node_get_string(e));
        else
            g_string_append(s, herd_json_str(json_node_get_object(e), "msg_id"));
    }
    return g_string_free(s, FALSE);
}

static char *history(HerdRecords *db)
{
    JsonNode *reply = herd_records_history_reply(db);
    assert_ok(reply);
    char *ids = joined(json_node_get_object(reply), "history");
    json_node_unref(reply);
    return ids;
}

/* db_request with the given query JSON and keys JSON; returns the matching ids "a,b". */
static char *db_ids(HerdRecords *db, const char *query)
{
    char *request = g_strdup_printf("{\"query\": %s, \"keys\": [\"msg_id\"]}", query);
    JsonObject *o = parse_object(request);
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_db_reply(db, o, &bufs);
    assert_ok(reply);
    char *ids = joined(json_node_get_object(reply), "records");
    g_assert_cmpuint(bufs.n, ==, 0);
    json_node_unref(reply);
    json_object_unref(o);
    g_free(request);
    return ids;
}

static JsonNode *db_query(HerdRecords *db, const char *request_json, HerdFrames *bufs)
{
    JsonObject *o = parse_object(request_json);
    JsonNode *reply = herd_records_db_reply(db, o, bufs);
    json_object_unref(o);
    return reply;
}

#define assert_ids(expr, expected)                                                                                 \
    do {                                                                                                           \
        char *got_ = (expr);                                                                                       \
        g_assert_cmpstr(got_, ==, (expected));                                                                     \
        g_free(got_);                                                                                              \
    } while (0)

/* ---- fixtures ---- */

static HerdRecords *new_store(void)
{
    return herd_records_new(HERD_DB_DICT, NULL);
}

/* Three finished records (m1 on e0, m2 on e1, t3 on e0 via the task queue) and one pending
 * (p4 on e1), submitted at 10, 20, 30, 40 s. */
static HerdRecords *new_populated_store(void)
{
    HerdRecords *db = new_store();
    add_request(db, "m1", "mux", "e0", 10, 0, 0);
    add_reply(db, "m1", "e0", 11, 0, 0);
    add_request(db, "m2", "mux", "e1", 20, 2, 100);
    add_reply(db, "m2", "e1", 21, 1, 50);
    add_request(db, "t3", "task", NULL, 30, 1, 10);
    herd_records_set_engine(db, "t3", "e0");
    add_reply(db, "t3", "e0", 31, 1, 20);
    add_request(db, "p4", "task", "e1", 40, 0, 0);
    return db;
}

/* ---- tests: updates ---- */

static void test_record_fields(void)
{
    HerdRecords *db = new_store();
    add_request(db, "m1", "mux", "e0", 10, 2, 64);
    add_reply(db, "m1", "e0", 11, 1, 32);

    JsonNode *node = herd_records_get(db, "m1");
    g_assert_nonnull(node);
    JsonObject *rec = json_node_get_object(node);
    g_assert_cmpuint(json_object_get_size(rec), ==, 20); /* 22 fields but the two buffer lists */
    g_assert_false(json_object_has_member(rec, "buffers"));
    g_assert_cmpstr(herd_json_str(rec, "msg_id"), ==, "m1");
    g_assert_cmpstr(herd_json_str(rec, "queue"), ==, "mux");
    g_assert_cmpstr(herd_json_str(rec, "client_uuid"), ==, "client-a");
    g_assert_cmpstr(herd_json_str(rec, "engine_uuid"), ==, "e0");
    char *d10 = iso(10), *d11 = iso(11), *d12 = iso(12), *d13 = iso(13);
    g_assert_cmpstr(herd_json_str(rec, "submitted"), ==, d10);
    g_assert_cmpstr(herd_json_str(rec, "started"), ==, d11);
    g_assert_cmpstr(herd_json_str(rec, "completed"), ==, d12);
    g_assert_cmpstr(herd_json_str(rec, "received"), ==, d13);
    g_free(d10), g_free(d11), g_free(d12), g_free(d13);
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "header"), "msg_type"), ==, "apply_request");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "result_header"), "msg_type"), ==,
                    "apply_reply");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "result_metadata"), "engine"), ==, "e0");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "result_content"), "status"), ==, "ok");
    g_assert_true(json_object_has_member(json_object_get_object_member(rec, "metadata"), "after"));
    g_assert_cmpuint(json_object_get_size(json_object_get_object_member(rec, "content")), ==, 0);
    g_assert_true(json_object_get_null_member(rec, "resubmitted"));
    g_assert_true(json_object_get_null_member(rec, "execute_input"));
    g_assert_true(json_object_get_null_member(rec, "execute_result"));
    g_assert_true(json_object_get_null_member(rec, "error"));
    g_assert_cmpstr(herd_json_str(rec, "stdout"), ==, "");
    g_assert_cmpstr(herd_json_str(rec, "stderr"), ==, "");
    json_node_unref(node);

    g_assert_cmpuint(herd_records_count(db), ==, 1);
    g_assert_cmpuint(herd_records_buffer_bytes(db), ==, 2 * 64 + 32);
    g_assert_null(herd_records_get(db, "nope"));
    herd_records_free(db);
}

/* The hub passes the fields it decoded: nothing is parsed again, and they win. */
static void test_caller_fields(void)
{
    HerdRecords *db = new_store();
    HerdFrames f;
    make_request(&f, "ignored-id", "ignored-session", 0, 0, 0);
    char *date = iso(5);
    HerdMsgFields req = { .msg_id = "given", .session = "s-given", .date = date };
    g_assert_true(herd_records_add_request(db, &f, "task", NULL, &req));
    herd_frames_clear(&f);
    g_assert_false(herd_records_contains(db, "ignored-id"));

    make_reply(&f, "ignored-id", "e9", 0, 0, 0, 0);
    HerdMsgFields rep = { .msg_id = "given", .date = date, .started = date, .engine = "e-given" };
    g_assert_true(herd_records_add_reply(db, &f, &rep, BASE_USEC));
    HerdMsgFields unknown = { .msg_id = "unknown", .date = date };
    g_assert_false(herd_records_add_reply(db, &f, &unknown, BASE_USEC));
    herd_frames_clear(&f);

    JsonNode *node = herd_records_get(db, "given");
    JsonObject *rec = json_node_get_object(node);
    g_assert_cmpstr(herd_json_str(rec, "client_uuid"), ==, "s-given");
    g_assert_cmpstr(herd_json_str(rec, "engine_uuid"), ==, "e-given");
    g_assert_cmpstr(herd_json_str(rec, "submitted"), ==, date);
    g_assert_cmpstr(herd_json_str(rec, "completed"), ==, date);
    json_node_unref(node);
    g_free(date);

    /* not a wire message: refused */
    herd_frames_init(&f);
    push_str(&f, "junk");
    herd_frames_find_delim(&f);
    g_assert_false(herd_records_add_request(db, &f, "mux", NULL, NULL));
    herd_frames_clear(&f);
    herd_records_free(db);
}

/* A message built and signed by HerdSession is read like a relayed one. */
static void test_session_message(void)
{
    HerdSession *session = herd_session_new("key", "hmac-sha256", "u", NULL);
    g_assert_nonnull(session);
    HerdFrames f;
    herd_frames_init(&f);
    push_str(&f, "routing");
    char *msg_id = NULL;
    herd_session_build(session, &f, "execute_request", HERD_BYTES_NULL, HERD_BYTES_NULL,
                       HERD_BYTES_STR("{\"code\": \"a=1\", \"silent\": true}"), &msg_id);
    herd_frames_find_delim(&f);

    HerdRecords *db = new_store();
    g_assert_true(herd_records_add_request(db, &f, "mux", "e0", NULL));
    JsonNode *node = herd_records_get(db, msg_id);
    g_assert_nonnull(node);
    JsonObject *rec = json_node_get_object(node);
    g_assert_cmpstr(herd_json_str(rec, "client_uuid"), ==, herd_session_id(session));
    g_assert_false(json_object_get_null_member(rec, "submitted"));
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "content"), "code"), ==, "a=1");
    json_node_unref(node);
    herd_records_free(db);
    herd_frames_clear(&f);
    g_free(msg_id);
    herd_session_free(session);
}

/* A request already stored keeps its submitted date and client; queue/engine follow. */
static void test_duplicate_request(void)
{
    HerdRecords *db = new_store();
    add_request(db, "r", "task", NULL, 10, 1, 8);
    HerdFrames f;
    make_request(&f, "r", "client-b", 99, 3, 8);
    g_assert_true(herd_records_add_request(db, &f, "task", "e3", NULL));
    herd_frames_clear(&f);
    JsonNode *node = herd_records_get(db, "r");
    JsonObject *rec = json_node_get_object(node);
    char *d10 = iso(10);
    g_assert_cmpstr(herd_json_str(rec, "submitted"), ==, d10);
    g_assert_cmpstr(herd_json_str(rec, "client_uuid"), ==, "client-a");
    g_assert_cmpstr(herd_json_str(rec, "engine_uuid"), ==, "e3");
    g_free(d10);
    json_node_unref(node);
    g_assert_cmpuint(herd_records_buffer_bytes(db), ==, 8);
    g_assert_cmpuint(herd_records_count(db), ==, 1);
    herd_records_free(db);
}

static void test_stranded_request(void)
{
    HerdRecords *db = new_store();
    add_request(db, "m", "mux", "e0", 10, 0, 0);
    JsonNode *error = herd_error_content("EngineError", "Engine 0 died while running task 'm'");
    gint64 now = BASE_USEC + 50 * G_USEC_PER_SEC;
    g_assert_true(herd_records_add_result_error(db, "m", "e0", error, now));
    g_assert_false(herd_records_add_result_error(db, "other", "e0", error, now));
    json_node_unref(error);

    JsonNode *node = herd_records_get(db, "m");
    JsonObject *rec = json_node_get_object(node);
    char *d50 = iso(50);
    g_assert_cmpstr(herd_json_str(rec, "completed"), ==, d50);
    JsonObject *header = json_object_get_object_member(rec, "result_header");
    g_assert_cmpuint(json_object_get_size(header), ==, 2);
    g_assert_cmpstr(herd_json_str(header, "engine"), ==, "e0");
    g_assert_cmpstr(herd_json_str(header, "date"), ==, d50);
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "result_content"), "ename"), ==,
                    "EngineError");
    g_free(d50);
    json_node_unref(node);

    /* it counts as completed for result_request, with no result buffers */
    JsonObject *request = parse_object("{\"msg_ids\": [\"m\"]}");
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_ok(reply);
    assert_ids(joined(json_node_get_object(reply), "completed"), "m");
    g_assert_cmpuint(bufs.n, ==, 0);
    json_node_unref(reply);
    json_object_unref(request);
    herd_records_free(db);
}

static void test_iopub_streams(void)
{
    HerdRecords *db = new_store();
    add_request(db, "x", "mux", "e0", 10, 0, 0);
    add_iopub(db, "x", "status", "{\"execution_state\": \"busy\"}", FALSE);
    add_iopub(db, "x", "execute_input", "{\"code\": \"print(1)\", \"execution_count\": 1}", TRUE);
    add_iopub(db, "x", "stream", "{\"name\": \"stdout\", \"text\": \"hello \"}", TRUE);
    add_iopub(db, "x", "stream", "{\"name\": \"stderr\", \"text\": \"warn\\n\"}", TRUE);
    add_iopub(db, "x", "stream", "{\"name\": \"stdout\", \"text\": \"world\\n\"}", TRUE);
    add_iopub(db, "x", "execute_result", "{\"data\": {\"text/plain\": \"1\"}, \"execution_count\": 1}", TRUE);
    add_iopub(db, "x", "error", "{\"ename\": \"ValueError\", \"evalue\": \"v\", \"traceback\": []}", TRUE);
    add_iopub(db, "x", "data_pub", "{}", FALSE);
    add_iopub(db, NULL, "stream", "{\"name\": \"stdout\", \"text\": \"parentless\"}", FALSE);

    JsonNode *node = herd_records_get(db, "x");
    JsonObject *rec = json_node_get_object(node);
    g_assert_cmpstr(herd_json_str(rec, "stdout"), ==, "hello world\n");
    g_assert_cmpstr(herd_json_str(rec, "stderr"), ==, "warn\n");
    g_assert_cmpstr(herd_json_str(rec, "execute_input"), ==, "print(1)");
    JsonObject *result = json_object_get_object_member(rec, "execute_result");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(result, "data"), "text/plain"), ==, "1");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "error"), "ename"), ==, "ValueError");
    json_node_unref(node);
    g_assert_cmpuint(herd_records_count(db), ==, 1);
    herd_records_free(db);
}

/* IOPub output before the request creates an orphan; the request then merges into it. */
static void test_orphan_merge(void)
{
    HerdRecords *db = new_store();
    add_iopub(db, "early", "stream", "{\"name\": \"stdout\", \"text\": \"first\"}", TRUE);
    g_assert_true(herd_records_contains(db, "early"));
    JsonNode *node = herd_records_get(db, "early");
    JsonObject *rec = json_node_get_object(node);
    g_assert_true(json_object_get_null_member(rec, "header"));
    g_assert_true(json_object_get_null_member(rec, "queue"));
    g_assert_true(json_object_get_null_member(rec, "submitted"));
    json_node_unref(node);
    assert_ids(history(db), ""); /* orphans have no submission */

    /* result_request calls it pending; resubmit cannot use it */
    JsonObject *request = parse_object("{\"msg_ids\": [\"early\"]}");
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_ids(joined(json_node_get_object(reply), "pending"), "early");
    json_node_unref(reply);
    GPtrArray *sources = NULL;
    reply = herd_records_resubmit_lookup(db, request, &sources);
    assert_error(reply, "KeyError", "\"No such msg(s): ['early']\"");
    json_node_unref(reply);
    json_object_unref(request);

    add_request(db, "early", "mux", "e0", 10, 0, 0);
    add_iopub(db, "early", "stream", "{\"name\": \"stdout\", \"text\": \" second\"}", TRUE);
    node = herd_records_get(db, "early");
    rec = json_node_get_object(node);
    g_assert_cmpstr(herd_json_str(rec, "stdout"), ==, "first second");
    g_assert_cmpstr(herd_json_str(rec, "queue"), ==, "mux");
    g_assert_cmpstr(herd_json_str(rec, "engine_uuid"), ==, "e0");
    g_assert_false(json_object_get_null_member(rec, "header"));
    json_node_unref(node);
    assert_ids(history(db), "early");
    g_assert_cmpuint(herd_records_count(db), ==, 1);
    herd_records_free(db);
}

/* ---- tests: result_request ---- */

static gboolean pending_in_set(const char *msg_id, gpointer set)
{
    return g_hash_table_contains(set, msg_id);
}

static void test_result_reply(void)
{
    HerdRecords *db = new_populated_store();
    HerdFrames bufs;
    herd_frames_init(&bufs);

    /* sorted, de-duplicated; pending and completed; result buffers in sorted order */
    JsonObject *request = parse_object("{\"msg_ids\": [\"t3\", \"p4\", \"m2\", \"t3\", \"m1\"]}");
    JsonNode *reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_ok(reply);
    JsonObject *o = json_node_get_object(reply);
    assert_ids(joined(o, "completed"), "m1,m2,t3");
    assert_ids(joined(o, "pending"), "p4");
    g_assert_false(json_object_has_member(o, "p4"));
    JsonObject *entry = json_object_get_object_member(o, "m2");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(entry, "header"), "msg_id"), ==, "m2");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(entry, "result_header"), "msg_type"), ==,
                    "apply_reply");
    g_assert_true(json_object_has_member(entry, "metadata"));
    g_assert_true(json_object_has_member(entry, "result_metadata"));
    g_assert_true(json_object_has_member(entry, "result_content"));
    g_assert_true(json_object_has_member(entry, "received"));
    JsonObject *io = json_object_get_object_member(entry, "io");
    g_assert_cmpuint(json_object_get_size(io), ==, 5);
    g_assert_cmpstr(herd_json_str(io, "stdout"), ==, "");
    g_assert_cmpuint(bufs.n, ==, 2); /* m1: none, m2: one (50 bytes), t3: one (20 bytes) */
    g_assert_cmpuint(herd_frame_size(&bufs, 0), ==, 50);
    g_assert_cmpuint(herd_frame_size(&bufs, 1), ==, 20);
    json_node_unref(reply);
    json_object_unref(request);
    herd_frames_clear(&bufs);

    /* status_only: lists only, no buffers */
    request = parse_object("{\"msg_ids\": [\"m2\", \"p4\"], \"status_only\": true}");
    reply = herd_records_result_reply(db, request, NULL, &bufs);
    o = json_node_get_object(reply);
    assert_ids(joined(o, "completed"), "m2");
    assert_ids(joined(o, "pending"), "p4");
    g_assert_false(json_object_has_member(o, "m2"));
    g_assert_cmpuint(bufs.n, ==, 0);
    json_node_unref(reply);
    json_object_unref(request);

    /* an unknown id makes the whole reply an error, and no buffers go out */
    request = parse_object("{\"msg_ids\": [\"m2\", \"zz\"]}");
    reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_error(reply, "KeyError", "'No such message: zz'");
    g_assert_cmpuint(bufs.n, ==, 0);
    json_node_unref(reply);
    json_object_unref(request);
    request = parse_object("{\"msg_ids\": [\"it's\"]}");
    reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_error(reply, "KeyError", "\"No such message: it's\"");
    json_node_unref(reply);
    json_object_unref(request);

    /* empty list */
    request = parse_object("{\"msg_ids\": []}");
    reply = herd_records_result_reply(db, request, NULL, &bufs);
    o = json_node_get_object(reply);
    assert_ok(reply);
    g_assert_cmpuint(json_object_get_size(o), ==, 3);
    json_node_unref(reply);
    json_object_unref(request);

    /* the hub's pending set decides over the record */
    GHashTable *pending = g_hash_table_new(g_str_hash, g_str_equal);
    g_hash_table_add(pending, "m1");
    g_hash_table_add(pending, "not-recorded");
    HerdRecordsHubView view = { .is_pending = pending_in_set, .user_data = pending };
    request = parse_object("{\"msg_ids\": [\"m1\", \"not-recorded\", \"m2\"]}");
    reply = herd_records_result_reply(db, request, &view, &bufs);
    o = json_node_get_object(reply);
    assert_ids(joined(o, "pending"), "m1,not-recorded");
    assert_ids(joined(o, "completed"), "m2");
    g_assert_cmpuint(bufs.n, ==, 1);
    json_node_unref(reply);
    json_object_unref(request);
    g_hash_table_destroy(pending);
    herd_frames_clear(&bufs);
    herd_records_free(db);
}

/* ---- tests: history and db_request ---- */

static void test_history_order(void)
{
    HerdRecords *db = new_store();
    /* created in one order, submitted (client clocks) in another; ties keep creation order */
    add_request(db, "c", "task", NULL, 30, 0, 0);
    add_request(db, "a", "task", NULL, 10, 0, 0);
    add_request(db, "b1", "mux", "e0", 20, 0, 0);
    add_request(db, "b2", "mux", "e0", 20, 0, 0);
    add_iopub(db, "orphan", "stream", "{\"name\": \"stdout\", \"text\": \"x\"}", TRUE);
    assert_ids(history(db), "a,b1,b2,c");

    /* $lt and $gte around one record's submitted date partition the history */
    char *d20 = iso(20);
    char *lt = g_strdup_printf("{\"submitted\": {\"$lt\": \"%s\"}}", d20);
    char *gte = g_strdup_printf("{\"submitted\": {\"$gte\": \"%s\"}}", d20);
    char *eq = g_strdup_printf("{\"submitted\": \"%s\"}", d20);
    assert_ids(db_ids(db, lt), "a");
    assert_ids(db_ids(db, gte), "c,b1,b2"); /* db_reply lists in creation order */
    assert_ids(db_ids(db, eq), "b1,b2");
    /* the same instant written with an offset is the same date */
    char *offset = g_strdup(d20);
    offset[strlen(offset) - 1] = '\0';
    char *eq_offset = g_strdup_printf("{\"submitted\": {\"$eq\": \"%s+00:00\"}}", offset);
    assert_ids(db_ids(db, eq_offset), "b1,b2");
    g_free(offset), g_free(eq_offset);
    g_free(d20), g_free(lt), g_free(gte), g_free(eq);
    herd_records_free(db);
}

static void test_db_operators(void)
{
    HerdRecords *db = new_populated_store();
    add_iopub(db, "o5", "stream", "{\"name\": \"stdout\", \"text\": \"out\"}", TRUE);
    char *d20 = iso(20), *d21 = iso(21), *q;

    assert_ids(db_ids(db, "{}"), "m1,m2,t3,p4,o5");
    assert_ids(db_ids(db, "null"), "m1,m2,t3,p4,o5");
    /* literals */
    assert_ids(db_ids(db, "{\"queue\": \"mux\"}"), "m1,m2");
    assert_ids(db_ids(db, "{\"queue\": null}"), "o5");
    assert_ids(db_ids(db, "{\"completed\": null}"), "p4,o5");
    assert_ids(db_ids(db, "{\"engine_uuid\": \"e0\", \"queue\": \"task\"}"), "t3");
    assert_ids(db_ids(db, "{\"stdout\": \"out\"}"), "o5");
    assert_ids(db_ids(db, "{\"nonsense_field\": null}"), "m1,m2,t3,p4,o5");
    /* $eq / $ne */
    assert_ids(db_ids(db, "{\"engine_uuid\": {\"$eq\": \"e1\"}}"), "m2,p4");
    assert_ids(db_ids(db, "{\"engine_uuid\": {\"$ne\": \"e1\"}}"), "m1,t3,o5");
    assert_ids(db_ids(db, "{\"completed\": {\"$ne\": null}}"), "m1,m2,t3");
    assert_ids(db_ids(db, "{\"msg_id\": {\"$ne\": \"\"}}"), "m1,m2,t3,p4,o5");
    /* ordered comparisons: dates as dates, strings lexicographically, null never matches */
    q = g_strdup_printf("{\"completed\": {\"$lt\": \"%s\"}}", d21);
    assert_ids(db_ids(db, q), "m1");
    g_free(q);
    q = g_strdup_printf("{\"completed\": {\"$lte\": \"%s\"}}", d21);
    assert_ids(db_ids(db, q), "m1");
    g_free(q);
    q = g_strdup_printf("{\"started\": {\"$lte\": \"%s\"}}", d21);
    assert_ids(db_ids(db, q), "m1,m2");
    g_free(q);
    q = g_strdup_printf("{\"submitted\": {\"$gt\": \"%s\"}}", d20); /* not 7.1's inverted $gt */
    assert_ids(db_ids(db, q), "t3,p4");
    g_free(q);
    q = g_strdup_printf("{\"submitted\": {\"$gte\": \"%s\"}}", d20);
    assert_ids(db_ids(db, q), "m2,t3,p4");
    g_free(q);
    q = g_strdup_printf("{\"submitted\": {\"$gt\": \"%s\", \"$lt\": \"%s\"}}", "2000-01-01T00:00:00Z", d20);
    assert_ids(db_ids(db, q), "m1");
    g_free(q);
    assert_ids(db_ids(db, "{\"msg_id\": {\"$gt\": \"o\"}}"), "t3,p4,o5");
    assert_ids(db_ids(db, "{\"msg_id\": {\"$lt\": \"n\"}}"), "m1,m2");
    assert_ids(db_ids(db, "{\"started\": {\"$lt\": \"2999-01-01T00:00:00Z\"}}"), "m1,m2,t3");
    assert_ids(db_ids(db, "{\"started\": {\"$lt\": null}}"), "");
    assert_ids(db_ids(db, "{\"started\": {\"$gt\": \"not a date\"}}"), ""); /* dates compare with dates only */
    /* $in / $nin */
    assert_ids(db_ids(db, "{\"msg_id\": {\"$in\": [\"t3\", \"m1\", \"zz\"]}}"), "m1,t3");
    assert_ids(db_ids(db, "{\"msg_id\": {\"$nin\": [\"t3\", \"m1\"]}}"), "m2,p4,o5");
    assert_ids(db_ids(db, "{\"engine_uuid\": {\"$in\": [null, \"e1\"]}}"), "m2,p4,o5");
    /* $exists */
    assert_ids(db_ids(db, "{\"result_header\": {\"$exists\": true}}"), "m1,m2,t3");
    assert_ids(db_ids(db, "{\"result_header\": {\"$exists\": false}}"), "p4,o5");
    assert_ids(db_ids(db, "{\"buffers\": {\"$exists\": true}}"), "m1,m2,t3,p4");
    /* $all (MongoDB's meaning), $mod (record fields are never numbers) */
    assert_ids(db_ids(db, "{\"queue\": {\"$all\": [\"task\"]}}"), "t3,p4");
    assert_ids(db_ids(db, "{\"queue\": {\"$all\": []}}"), "");
    assert_ids(db_ids(db, "{\"msg_id\": {\"$mod\": [2, 0]}}"), "");
    /* equality on a JSON object field */
    assert_ids(db_ids(db, "{\"result_content\": {\"$eq\": {\"status\": \"ok\"}}}"), "m1,m2,t3");

    /* errors */
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = db_query(db, "{\"query\": {\"msg_id\": {\"$foo\": 1}}, \"keys\": null}", &bufs);
    assert_error(reply, "KeyError", "'$foo'");
    json_node_unref(reply);
    reply = db_query(db, "{\"query\": {\"msg_id\": {\"$in\": \"m1\"}}}", &bufs);
    assert_error(reply, "TypeError", NULL);
    json_node_unref(reply);
    reply = db_query(db, "{\"query\": {\"msg_id\": {\"$mod\": [0, 1]}}}", &bufs);
    assert_error(reply, "ZeroDivisionError", NULL);
    json_node_unref(reply);
    reply = db_query(db, "{\"query\": [1, 2]}", &bufs);
    assert_error(reply, "TypeError", NULL);
    json_node_unref(reply);
    g_assert_cmpuint(bufs.n, ==, 0);
    g_free(d20), g_free(d21);
    herd_records_free(db);
}

static void test_db_keys(void)
{
    HerdRecords *db = new_populated_store();
    HerdFrames bufs;
    herd_frames_init(&bufs);

    /* keys null: every field but buffers/result_buffers, lens null, no frames */
    JsonNode *reply = db_query(db, "{\"query\": {\"msg_id\": \"m2\"}, \"keys\": null}", &bufs);
    assert_ok(reply);
    JsonObject *o = json_node_get_object(reply);
    g_assert_true(json_object_get_null_member(o, "buffer_lens"));
    g_assert_true(json_object_get_null_member(o, "result_buffer_lens"));
    JsonObject *rec = json_array_get_object_element(json_object_get_array_member(o, "records"), 0);
    g_assert_cmpuint(json_object_get_size(rec), ==, 20);
    g_assert_false(json_object_has_member(rec, "buffers"));
    g_assert_false(json_object_has_member(rec, "result_buffers"));
    g_assert_true(json_object_has_member(rec, "stderr"));
    g_assert_cmpuint(bufs.n, ==, 0);
    json_node_unref(reply);

    /* a single key: msg_id first, then exactly that key */
    reply = db_query(db, "{\"query\": {}, \"keys\": [\"header\"]}", &bufs);
    o = json_node_get_object(reply);
    JsonArray *records = json_object_get_array_member(o, "records");
    g_assert_cmpuint(json_array_get_length(records), ==, 4);
    rec = json_array_get_object_element(records, 0);
    GList *members = json_object_get_members(rec);
    g_assert_cmpuint(g_list_length(members), ==, 2);
    g_assert_cmpstr(members->data, ==, "msg_id");
    g_assert_cmpstr(members->next->data, ==, "header");
    g_list_free(members);
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(rec, "header"), "msg_id"), ==, "m1");
    json_node_unref(reply);

    /* a key given bare (not in a list) is accepted */
    reply = db_query(db, "{\"query\": {\"msg_id\": \"m1\"}, \"keys\": \"queue\"}", &bufs);
    rec = json_array_get_object_element(json_object_get_array_member(json_node_get_object(reply), "records"), 0);
    g_assert_cmpuint(json_object_get_size(rec), ==, 2);
    g_assert_cmpstr(herd_json_str(rec, "queue"), ==, "mux");
    json_node_unref(reply);

    /* buffers and result_buffers: counts per record, frames record by record, request's first */
    reply = db_query(db,
                     "{\"query\": {\"completed\": {\"$ne\": null}}, "
                     "\"keys\": [\"queue\", \"buffers\", \"msg_id\", \"result_buffers\", \"queue\"]}",
                     &bufs);
    o = json_node_get_object(reply);
    records = json_object_get_array_member(o, "records");
    g_assert_cmpuint(json_array_get_length(records), ==, 3);
    for (guint i = 0; i < 3; i++) {
        rec = json_array_get_object_element(records, i);
        g_assert_cmpuint(json_object_get_size(rec), ==, 2); /* msg_id, queue */
        g_assert_true(json_object_has_member(rec, "queue"));
    }
    JsonArray *bl = json_object_get_array_member(o, "buffer_lens");
    JsonArray *rbl = json_object_get_array_member(o, "result_buffer_lens");
    g_assert_cmpint(json_array_get_int_element(bl, 0), ==, 0);
    g_assert_cmpint(json_array_get_int_element(bl, 1), ==, 2);
    g_assert_cmpint(json_array_get_int_element(bl, 2), ==, 1);
    g_assert_cmpint(json_array_get_int_element(rbl, 0), ==, 0);
    g_assert_cmpint(json_array_get_int_element(rbl, 1), ==, 1);
    g_assert_cmpint(json_array_get_int_element(rbl, 2), ==, 1);
    /* m2: two request buffers (100 bytes, 'a','b'), one result buffer (50, 'r'); t3: 10 'a', 20 'r' */
    g_assert_cmpuint(bufs.n, ==, 5);
    const gsize sizes[] = { 100, 100, 50, 10, 20 };
    const char fills[] = { 'a', 'b', 'r', 'a', 'r' };
    for (guint i = 0; i < 5; i++) {
        g_assert_cmpuint(herd_frame_size(&bufs, i), ==, sizes[i]);
        g_assert_cmpint(herd_frame_data(&bufs, i)[0], ==, fills[i]);
    }
    json_node_unref(reply);
    herd_frames_clear(&bufs);

    /* only result_buffers: buffer_lens stays null */
    reply = db_query(db, "{\"query\": {\"msg_id\": \"t3\"}, \"keys\": [\"result_buffers\"]}", &bufs);
    o = json_node_get_object(reply);
    g_assert_true(json_object_get_null_member(o, "buffer_lens"));
    g_assert_cmpint(json_array_get_int_element(json_object_get_array_member(o, "result_buffer_lens"), 0), ==, 1);
    g_assert_cmpuint(bufs.n, ==, 1);
    json_node_unref(reply);
    herd_frames_clear(&bufs);

    /* unknown key: KeyError, even when nothing matches */
    reply = db_query(db, "{\"query\": {\"msg_id\": \"none\"}, \"keys\": [\"msg_id\", \"bogus\"]}", &bufs);
    assert_error(reply, "KeyError", "'bogus'");
    json_node_unref(reply);
    reply = db_query(db, "{\"query\": {}, \"keys\": [1]}", &bufs);
    assert_error(reply, "TypeError", NULL);
    json_node_unref(reply);
    g_assert_cmpuint(bufs.n, ==, 0);
    herd_records_free(db);
}

/* ---- tests: purge ---- */

static const char *engine_by_id(gint64 id, gpointer data)
{
    (void)data;
    return id == 0 ? "e0" : id == 1 ? "e1" : NULL;
}

static JsonNode *purge(HerdRecords *db, const char *request_json, const HerdRecordsHubView *view)
{
    JsonObject *o = parse_object(request_json);
    JsonNode *reply = herd_records_purge(db, o, view);
    json_object_unref(o);
    return reply;
}

static void test_purge(void)
{
    HerdRecords *db = new_populated_store();
    HerdRecordsHubView view = { .engine_uuid = engine_by_id };

    /* by id */
    JsonNode *reply = purge(db, "{\"msg_ids\": [\"m1\", \"unknown\"], \"engine_ids\": []}", &view);
    assert_ok(reply);
    json_node_unref(reply);
    assert_ids(history(db), "m2,t3,p4");

    /* a pending id: nothing is dropped */
    reply = purge(db, "{\"msg_ids\": [\"m2\", \"p4\"]}", &view);
    assert_error(reply, "IndexError", "msg pending: 'p4'");
    json_node_unref(reply);
    assert_ids(history(db), "m2,t3,p4");

    /* the hub's pending set is what counts when given */
    GHashTable *pending = g_hash_table_new(g_str_hash, g_str_equal);
    g_hash_table_add(pending, "m2");
    HerdRecordsHubView with_pending = { pending_in_set, engine_by_id, pending };
    reply = purge(db, "{\"msg_ids\": [\"m2\"]}", &with_pending);
    assert_error(reply, "IndexError", "msg pending: 'm2'");
    json_node_unref(reply);
    g_hash_table_destroy(pending);

    /* by engine: only finished records of that engine; unknown engine: error */
    reply = purge(db, "{\"msg_ids\": [], \"engine_ids\": [1]}", &view);
    assert_ok(reply);
    json_node_unref(reply);
    assert_ids(history(db), "t3,p4"); /* p4 on e1 is pending, stays */
    reply = purge(db, "{\"msg_ids\": [], \"engine_ids\": [0, 7]}", &view);
    assert_error(reply, "IndexError", "No such engine: 7");
    json_node_unref(reply);
    assert_ids(history(db), "p4"); /* engine 0 was purged before the bad id stopped it */
    reply = purge(db, "{\"msg_ids\": [], \"engine_ids\": [0]}", NULL);
    assert_error(reply, "IndexError", "No such engine: 0");
    json_node_unref(reply);

    /* "all": every finished record; pending ones stay; engine_ids ignored */
    add_request(db, "n5", "mux", "e0", 50, 0, 0);
    add_reply(db, "n5", "e0", 51, 0, 0);
    add_iopub(db, "o6", "stream", "{\"name\": \"stdout\", \"text\": \"x\"}", TRUE);
    reply = purge(db, "{\"msg_ids\": \"all\", \"engine_ids\": [99]}", &view);
    assert_ok(reply);
    json_node_unref(reply);
    assert_ids(history(db), "p4");
    g_assert_true(herd_records_contains(db, "o6")); /* output only, never completed */
    add_reply(db, "p4", "e1", 41, 0, 0);
    reply = purge(db, "{\"msg_ids\": \"all\"}", &view);
    json_node_unref(reply);
    assert_ids(history(db), "");

    reply = purge(db, "{\"msg_ids\": 5}", &view);
    assert_error(reply, "TypeError", NULL);
    json_node_unref(reply);
    herd_records_free(db);
}

/* ---- tests: resubmit ---- */

static void test_resubmit_lookup(void)
{
    HerdRecords *db = new_populated_store();
    JsonObject *request = parse_object("{\"msg_ids\": [\"m2\", \"p4\", \"m2\"]}");
    GPtrArray *sources = NULL;
    JsonNode *error = herd_records_resubmit_lookup(db, request, &sources);
    g_assert_null(error);
    g_assert_nonnull(sources);
    g_assert_cmpuint(sources->len, ==, 2);
    HerdResubmitSource *src = sources->pdata[0];
    g_assert_cmpstr(src->msg_id, ==, "m2");
    JsonObject *header = json_node_get_object(src->header);
    g_assert_cmpstr(herd_json_str(header, "msg_type"), ==, "apply_request");
    json_object_set_string_member(header, "msg_id", "edited"); /* a private copy */
    g_assert_cmpuint(src->parts.n, ==, 3); /* content + 2 buffers */
    g_assert_cmpmem(herd_frame_data(&src->parts, 0), herd_frame_size(&src->parts, 0), "{}", 2);
    g_assert_cmpuint(herd_frame_size(&src->parts, 1), ==, 100);
    g_assert_cmpstr(((HerdResubmitSource *)sources->pdata[1])->msg_id, ==, "p4");
    g_ptr_array_unref(sources);
    json_object_unref(request);

    JsonNode *node = herd_records_get(db, "m2");
    g_assert_cmpstr(herd_json_str(json_object_get_object_member(json_node_get_object(node), "header"), "msg_id"), ==,
                    "m2");
    json_node_unref(node);

    request = parse_object("{\"msg_ids\": [\"m1\", \"gone\", \"also'gone\"]}");
    error = herd_records_resubmit_lookup(db, request, &sources);
    g_assert_null(sources);
    /* Python's repr: a text holding both quote kinds gets single quotes, \' escaped */
    assert_error(error, "KeyError", "'No such msg(s): [\\'gone\\', \"also\\'gone\"]'");
    json_node_unref(error);
    json_object_unref(request);

    /* the hub records the new request and links the old one to it */
    add_request(db, "m2-again", "task", NULL, 60, 2, 100);
    herd_records_set_resubmitted(db, "m2", "m2-again");
    node = herd_records_get(db, "m2");
    g_assert_cmpstr(herd_json_str(json_node_get_object(node), "resubmitted"), ==, "m2-again");
    json_node_unref(node);
    herd_records_free(db);
}

/* Small parts are copied into the record and big ones (1024 bytes and more) shared with
 * the received frames: either way queries give every buffer back intact and in order. */
static void test_small_and_large_buffers(void)
{
    static const gsize sizes[] = { 10, 5000, 0, 1023, 1024, 1 };
    HerdRecords *db = new_store();
    HerdFrames f;
    make_request(&f, "mixed", "client-a", 10, 0, 0);
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        char *data = g_malloc(sizes[i] + 1);
        memset(data, 'A' + (char)i, sizes[i]);
        herd_frames_push_take(&f, data, sizes[i]);
    }
    g_assert_true(herd_records_add_request(db, &f, "task", NULL, NULL));
    herd_frames_clear(&f); /* the record must not depend on the received frames' array */
    make_reply(&f, "mixed", "e0", 11, 12, 0, 0);
    herd_frames_push(&f, "tiny", 4);
    char *big = g_malloc(3000);
    memset(big, 'z', 3000);
    herd_frames_push_take(&f, big, 3000);
    g_assert_true(herd_records_add_reply(db, &f, NULL, BASE_USEC + 13 * G_USEC_PER_SEC));
    herd_frames_clear(&f);

    JsonObject *request = parse_object("{\"msg_ids\": [\"mixed\"]}");
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_ok(reply);
    g_assert_cmpuint(bufs.n, ==, 2);
    g_assert_cmpmem(herd_frame_data(&bufs, 0), herd_frame_size(&bufs, 0), "tiny", 4);
    g_assert_cmpuint(herd_frame_size(&bufs, 1), ==, 3000);
    g_assert_cmpint(((const char *)herd_frame_data(&bufs, 1))[2999], ==, 'z');
    json_node_unref(reply);
    json_object_unref(request);
    herd_frames_clear(&bufs);

    GPtrArray *sources = NULL;
    request = parse_object("{\"msg_ids\": [\"mixed\"]}");
    g_assert_null(herd_records_resubmit_lookup(db, request, &sources));
    HerdResubmitSource *src = sources->pdata[0];
    g_assert_cmpuint(src->parts.n, ==, 1 + G_N_ELEMENTS(sizes)); /* content + buffers */
    g_assert_cmpmem(herd_frame_data(&src->parts, 0), herd_frame_size(&src->parts, 0), "{}", 2);
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        const char *data = herd_frame_data(&src->parts, i + 1);
        g_assert_cmpuint(herd_frame_size(&src->parts, i + 1), ==, sizes[i]);
        for (gsize k = 0; k < sizes[i]; k++)
            g_assert_cmpint(data[k], ==, 'A' + (char)i);
    }
    g_ptr_array_unref(sources);
    json_object_unref(request);
    herd_records_free(db);
}

/* ---- tests: limits ---- */

static void test_cull_by_count(void)
{
    HerdRecordLimits limits = { .record_limit = 100, .size_limit = 0, .cull_fraction = 0.1 };
    HerdRecords *db = herd_records_new(HERD_DB_DICT, &limits);
    /* every 50th request stays pending: 20 pending among 1000 */
    for (int i = 0; i < 1000; i++) {
        char id[32];
        g_snprintf(id, sizeof id, "r%04d", i);
        add_request(db, id, "task", "e0", i, 0, 0);
        if (i % 50 != 0)
            add_reply(db, id, "e0", i, 0, 0);
        g_assert_cmpuint(herd_records_count(db), <=, 100);
    }
    for (int i = 0; i < 1000; i += 50) {
        char id[32];
        g_snprintf(id, sizeof id, "r%04d", i);
        g_assert_true(herd_records_contains(db, id));
    }
    g_assert_true(herd_records_contains(db, "r0999")); /* the newest finished ones stay */
    g_assert_false(herd_records_contains(db, "r0001")); /* the oldest finished ones went */

    /* a culled id behaves as unknown */
    JsonObject *request = parse_object("{\"msg_ids\": [\"r0001\"]}");
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_result_reply(db, request, NULL, &bufs);
    assert_error(reply, "KeyError", "'No such message: r0001'");
    json_node_unref(reply);
    json_object_unref(request);

    /* all pending beyond the limit: nothing can go, nothing is lost */
    HerdRecordLimits tiny = { .record_limit = 5, .size_limit = 0, .cull_fraction = 0.1 };
    HerdRecords *small = herd_records_new(HERD_DB_DICT, &tiny);
    for (int i = 0; i < 8; i++) {
        char id[32];
        g_snprintf(id, sizeof id, "q%d", i);
        add_request(small, id, "task", NULL, i, 0, 0);
    }
    g_assert_cmpuint(herd_records_count(small), ==, 8);
    add_reply(small, "q3", "e0", 3, 0, 0); /* finished: may now go */
    g_assert_cmpuint(herd_records_count(small), ==, 7);
    g_assert_false(herd_records_contains(small, "q3"));
    herd_records_free(small);
    herd_records_free(db);
}

static void test_cull_by_size(void)
{
    HerdRecordLimits limits = { .record_limit = 0, .size_limit = 10000, .cull_fraction = 0.1 };
    HerdRecords *db = herd_records_new(HERD_DB_DICT, &limits);
    add_request(db, "pending", "task", NULL, 0, 2, 1500); /* 3000 bytes that must stay */
    for (int i = 1; i <= 40; i++) {
        char id[32];
        g_snprintf(id, sizeof id, "s%02d", i);
        add_request(db, id, "task", NULL, i, 1, 600);
        add_reply(db, id, "e0", i, 1, 400);
        g_assert_cmpuint(herd_records_buffer_bytes(db), <=, 10000);
    }
    g_assert_true(herd_records_contains(db, "pending"));
    g_assert_true(herd_records_contains(db, "s40"));
    g_assert_false(herd_records_contains(db, "s01"));

    /* the accounting matches what db_reply sends */
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = db_query(db, "{\"query\": {}, \"keys\": [\"buffers\", \"result_buffers\"]}", &bufs);
    guint64 total = 0;
    for (guint i = 0; i < bufs.n; i++)
        total += herd_frame_size(&bufs, i);
    g_assert_cmpuint(total, ==, herd_records_buffer_bytes(db));
    json_node_unref(reply);
    herd_frames_clear(&bufs);

    /* purging gives the bytes back */
    JsonObject *request = parse_object("{\"msg_ids\": \"all\"}");
    reply = herd_records_purge(db, request, NULL);
    json_node_unref(reply);
    json_object_unref(request);
    g_assert_cmpuint(herd_records_buffer_bytes(db), ==, 3000);
    g_assert_cmpuint(herd_records_count(db), ==, 1);
    herd_records_free(db);
}

/* Many request/reply cycles with the default limits keep the store bounded. */
static void test_many_cycles(void)
{
    HerdRecords *db = new_store();
    HerdFrames req, rep;
    make_request(&req, "template", "client-a", 0, 1, 16);
    make_reply(&rep, "template", "e0", 0, 1, 1, 16);
    char *date = iso(0);
    guint max_count = 0;
    for (int i = 0; i < 100000; i++) {
        char id[32];
        g_snprintf(id, sizeof id, "cycle-%d", i);
        HerdMsgFields rf = { .msg_id = id, .session = "client-a", .date = date };
        g_assert_true(herd_records_add_request(db, &req, "mux", "e0", &rf));
        HerdMsgFields pf = { .msg_id = id, .date = date, .started = date, .engine = "e0" };
        g_assert_true(herd_records_add_reply(db, &rep, &pf, BASE_USEC));
        max_count = MAX(max_count, herd_records_count(db));
    }
    g_assert_cmpuint(max_count, <=, HERD_RECORD_LIMITS_DEFAULT.record_limit);
    g_assert_cmpuint(herd_records_count(db), >=, 900);
    g_assert_true(herd_records_contains(db, "cycle-99999"));
    g_assert_cmpuint(herd_records_buffer_bytes(db), ==, (guint64)herd_records_count(db) * 32);
    g_free(date);
    herd_frames_clear(&req);
    herd_frames_clear(&rep);
    herd_records_free(db);
}

/* ---- tests: --nodb ---- */

static void test_nodb(void)
{
    HerdRecords *db = herd_records_new(HERD_DB_NONE, NULL);
    g_assert_cmpstr(herd_records_backend_name(db), ==, "none");
    HerdFrames f;
    make_request(&f, "r", "client-a", 0, 1, 10);
    g_assert_false(herd_records_add_request(db, &f, "mux", "e0", NULL));
    herd_frames_clear(&f);
    add_iopub(db, "r", "stream", "{\"name\": \"stdout\", \"text\": \"x\"}", FALSE);
    g_assert_cmpuint(herd_records_count(db), ==, 0);
    g_assert_false(herd_records_contains(db, "r"));

    HerdFrames bufs;
    herd_frames_init(&bufs);
    GHashTable *pending = g_hash_table_new(g_str_hash, g_str_equal);
    g_hash_table_add(pending, "r");
    HerdRecordsHubView view = { pending_in_set, engine_by_id, pending };

    JsonObject *request = parse_object("{\"msg_ids\": [\"r\"]}");
    JsonNode *reply = herd_records_result_reply(db, request, &view, &bufs);
    assert_ok(reply); /* pending ids are still known to the hub */
    assert_ids(joined(json_node_get_object(reply), "pending"), "r");
    json_node_unref(reply);
    json_object_unref(request);

    request = parse_object("{\"msg_ids\": [\"done\"], \"status_only\": true}");
    reply = herd_records_result_reply(db, request, &view, &bufs);
    assert_error(reply, "KeyError", HERD_RECORDS_NODB_EVALUE);
    json_node_unref(reply);
    GPtrArray *sources = NULL;
    reply = herd_records_resubmit_lookup(db, request, &sources);
    assert_error(reply, "KeyError", HERD_RECORDS_NODB_EVALUE);
    g_assert_null(sources);
    json_node_unref(reply);
    json_object_unref(request);

    reply = herd_records_history_reply(db);
    assert_error(reply, "KeyError", HERD_RECORDS_NODB_EVALUE);
    json_node_unref(reply);
    reply = db_query(db, "{\"query\": {}, \"keys\": null}", &bufs);
    assert_error(reply, "KeyError", HERD_RECORDS_NODB_EVALUE);
    json_node_unref(reply);

    /* purge still checks its arguments, then has nothing to drop */
    reply = purge(db, "{\"msg_ids\": [\"r\"]}", &view);
    assert_error(reply, "IndexError", "msg pending: 'r'");
    json_node_unref(reply);
    reply = purge(db, "{\"msg_ids\": [], \"engine_ids\": [3]}", &view);
    assert_error(reply, "IndexError", "No such engine: 3");
    json_node_unref(reply);
    reply = purge(db, "{\"msg_ids\": \"all\"}", &view);
    assert_ok(reply);
    json_node_unref(reply);
    g_assert_cmpuint(bufs.n, ==, 0);
    g_hash_table_destroy(pending);
    herd_records_free(db);
}

static void test_from_config(void)
{
    HerdConfig config = { 0 };
    config.db = HERD_DB_DICT;
    config.record_limit = 3;
    config.size_limit = 0;
    config.cull_fraction = 0.5;
    HerdRecords *db = herd_records_new_from_config(&config);
    g_assert_cmpstr(herd_records_backend_name(db), ==, "memory");
    for (int i = 0; i < 4; i++) {
        char id[8];
        g_snprintf(id, sizeof id, "c%d", i);
        add_request(db, id, "mux", "e0", i, 0, 0);
        add_reply(db, id, "e0", i, 0, 0);
    }
    /* the fourth record exceeded 3: half the limit (1 record, rounded down) went */
    g_assert_cmpuint(herd_records_count(db), ==, 3);
    g_assert_false(herd_records_contains(db, "c0"));
    herd_records_free(db);

    config.db = HERD_DB_NONE;
    db = herd_records_new_from_config(&config);
    g_assert_cmpstr(herd_records_backend_name(db), ==, "none");
    herd_records_free(db);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/records/update/fields", test_record_fields);
    g_test_add_func("/records/update/caller-fields", test_caller_fields);
    g_test_add_func("/records/update/session-message", test_session_message);
    g_test_add_func("/records/update/duplicate-request", test_duplicate_request);
    g_test_add_func("/records/update/stranded", test_stranded_request);
    g_test_add_func("/records/iopub/streams", test_iopub_streams);
    g_test_add_func("/records/iopub/orphan-merge", test_orphan_merge);
    g_test_add_func("/records/query/result", test_result_reply);
    g_test_add_func("/records/query/history", test_history_order);
    g_test_add_func("/records/query/db-operators", test_db_operators);
    g_test_add_func("/records/query/db-keys", test_db_keys);
    g_test_add_func("/records/query/purge", test_purge);
    g_test_add_func("/records/query/resubmit", test_resubmit_lookup);
    g_test_add_func("/records/query/small-and-large-buffers", test_small_and_large_buffers);
    g_test_add_func("/records/limits/count", test_cull_by_count);
    g_test_add_func("/records/limits/size", test_cull_by_size);
    g_test_add_func("/records/limits/many-cycles", test_many_cycles);
    g_test_add_func("/records/nodb", test_nodb);
    g_test_add_func("/records/config", test_from_config);
    return g_test_run();
}
