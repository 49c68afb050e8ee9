/* Unit tests: HerdFrames (wire.c), JSON helpers, ISO dates and error content (json.c). */
#include "herd/hash.h"
#include "herd/wire.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>

/* Receive timeout on test sockets: a missing message fails the test instead of hanging it. */
#define RECV_TIMEOUT_MS 10000

static void assert_frame_eq(const HerdFrames *f, guint i, const void *data, gsize len)
{
    g_assert_cmpuint(i, <, f->n);
    g_assert_cmpmem(herd_frame_data(f, i), herd_frame_size(f, i), data, len);
}

static void assert_frame_str(const HerdFrames *f, guint i, const char *s)
{
    assert_frame_eq(f, i, s, strlen(s));
}

/* ---- frame list operations ---- */

static void test_frames_push_and_delim(void)
{
    HerdFrames f;
    herd_frames_init(&f);
    g_assert_cmpint(f.delim, ==, -1);
    g_assert_false(herd_frames_is_wire(&f));

    herd_frames_push(&f, "client-id", 9);
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&f, "sig", 3);
    herd_frames_push(&f, "{}", 2);
    herd_frames_push(&f, "{}", 2);
    herd_frames_push(&f, "{}", 2);
    g_assert_cmpint(f.delim, ==, 1);
    g_assert_false(herd_frames_is_wire(&f)); /* content still missing */
    herd_frames_push(&f, "{}", 2);
    g_assert_true(herd_frames_is_wire(&f));
    g_assert_cmpuint(herd_wire(&f, HERD_WIRE_HEADER), ==, 3);

    /* Only the first delimiter counts: a later one is just a buffer. */
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    g_assert_cmpint(f.delim, ==, 1);

    /* An empty frame is a valid frame. */
    herd_frames_push(&f, NULL, 0);
    g_assert_cmpuint(herd_frame_size(&f, f.n - 1), ==, 0);

    /* Many frames: the list grows past its initial room and keeps its contents. */
    for (guint i = 0; i < 100; i++) {
        char label[16];
        g_snprintf(label, sizeof label, "buf%u", i);
        herd_frames_push(&f, label, strlen(label));
    }
    g_assert_cmpuint(f.n, ==, 109);
    assert_frame_str(&f, 0, "client-id");
    assert_frame_str(&f, 108, "buf99");

    herd_frames_clear(&f);
    g_assert_cmpuint(f.n, ==, 0);
    g_assert_cmpint(f.delim, ==, -1);
    /* Still usable after clear. */
    herd_frames_push(&f, "x", 1);
    g_assert_cmpuint(f.n, ==, 1);
    herd_frames_clear(&f);
}

static void test_frames_push_take_is_zero_copy(void)
{
    HerdFrames f;
    herd_frames_init(&f);
    gsize len = 4096;
    char *data = g_malloc(len);
    memset(data, 'q', len);
    herd_frames_push_take(&f, data, len);
    /* The frame uses the very buffer it was given (freed by zmq later through g_free). */
    g_assert_true(herd_frame_data(&f, 0) == data);
    g_assert_cmpuint(herd_frame_size(&f, 0), ==, len);

    herd_frames_push_take(&f, g_strdup(""), 0); /* empty take: freed at once, empty frame */
    g_assert_cmpuint(herd_frame_size(&f, 1), ==, 0);
    herd_frames_push_take(&f, g_strdup(HERD_DELIM), HERD_DELIM_LEN);
    g_assert_cmpint(f.delim, ==, 2);
    herd_frames_clear(&f);
}

static void test_frames_push_msg_moves(void)
{
    HerdFrames f;
    herd_frames_init(&f);
    zmq_msg_t m;
    zmq_msg_init_size(&m, 5);
    memcpy(zmq_msg_data(&m), "hello", 5);
    herd_frames_push_msg(&f, &m);
    g_assert_cmpuint(zmq_msg_size(&m), ==, 0); /* moved out */
    zmq_msg_close(&m);
    assert_frame_str(&f, 0, "hello");
    herd_frames_clear(&f);
}

static void test_frames_copy_shares_bodies(void)
{
    HerdFrames src, dst;
    herd_frames_init(&src);
    char big[1000];
    memset(big, 'b', sizeof big);
    herd_frames_push(&src, "id", 2);
    herd_frames_push(&src, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&src, big, sizeof big);

    herd_frames_copy(&dst, &src);
    g_assert_cmpuint(dst.n, ==, 3);
    g_assert_cmpint(dst.delim, ==, 1);
    assert_frame_str(&dst, 0, "id");
    /* A large body is shared by reference count, not duplicated. */
    g_assert_true(herd_frame_data(&dst, 2) == herd_frame_data(&src, 2));

    /* The copy outlives the original. */
    herd_frames_clear(&src);
    assert_frame_eq(&dst, 2, big, sizeof big);

    /* Single-frame reference copy, including from the list into itself. */
    herd_frames_push_frame_copy(&dst, &dst, 2);
    for (guint i = 0; i < 40; i++) /* force the array to move while copying from itself */
        herd_frames_push_frame_copy(&dst, &dst, 0);
    assert_frame_eq(&dst, 3, big, sizeof big);
    assert_frame_str(&dst, dst.n - 1, "id");
    herd_frames_clear(&dst);
}

static void test_frames_insert_remove_swap_track_delim(void)
{
    HerdFrames f;
    herd_frames_init(&f);
    herd_frames_push(&f, "a", 1);
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&f, "sig", 3);
    g_assert_cmpint(f.delim, ==, 1);

    herd_frames_insert(&f, 0, "new-id", 6); /* routing id prepended */
    g_assert_cmpint(f.delim, ==, 2);
    assert_frame_str(&f, 0, "new-id");
    assert_frame_str(&f, 1, "a");

    herd_frames_insert(&f, 3, "after", 5); /* after the delimiter: no change */
    g_assert_cmpint(f.delim, ==, 2);
    assert_frame_str(&f, 3, "after");

    herd_frames_insert(&f, 1, HERD_DELIM, HERD_DELIM_LEN); /* an earlier delimiter wins */
    g_assert_cmpint(f.delim, ==, 1);

    herd_frames_remove(&f, 1); /* removing it falls back to the next one */
    g_assert_cmpint(f.delim, ==, 2);
    herd_frames_remove(&f, 0);
    g_assert_cmpint(f.delim, ==, 1);
    assert_frame_str(&f, 0, "a");
    herd_frames_remove(&f, f.n - 1);
    assert_frame_str(&f, f.n - 1, "after");

    herd_frames_swap(&f, 0, 1); /* [DELIM, a, after, sig] minus the removed tail */
    g_assert_cmpint(f.delim, ==, 0);
    assert_frame_str(&f, 1, "a");

    herd_frames_remove(&f, 0);
    g_assert_cmpint(f.delim, ==, -1);

    /* find_delim after direct edits of the array. */
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    f.delim = -1;
    herd_frames_find_delim(&f);
    g_assert_cmpint(f.delim, ==, (gint)f.n - 1);
    herd_frames_clear(&f);
}

/* ---- send / receive over real sockets ---- */

typedef struct {
    void *ctx;
    void *router;
    void *dealer;
} SocketPair;

static void pair_open(SocketPair *p, const char *endpoint)
{
    int timeout = RECV_TIMEOUT_MS;
    p->ctx = zmq_ctx_new();
    p->router = zmq_socket(p->ctx, ZMQ_ROUTER);
    p->dealer = zmq_socket(p->ctx, ZMQ_DEALER);
    g_assert_cmpint(zmq_setsockopt(p->router, ZMQ_RCVTIMEO, &timeout, sizeof timeout), ==, 0);
    g_assert_cmpint(zmq_setsockopt(p->dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout), ==, 0);
    g_assert_cmpint(zmq_setsockopt(p->dealer, ZMQ_ROUTING_ID, "dealer-1", 8), ==, 0);
    g_assert_cmpint(zmq_bind(p->router, endpoint), ==, 0);
    g_assert_cmpint(zmq_connect(p->dealer, endpoint), ==, 0);
}

static void pair_close(SocketPair *p)
{
    int zero = 0;
    zmq_setsockopt(p->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(p->dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(p->router);
    zmq_close(p->dealer);
    zmq_ctx_term(p->ctx);
}

static void push_wire_message(HerdFrames *f, const char *big, gsize big_len)
{
    herd_frames_push(f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(f, "", 0); /* empty signature */
    herd_frames_push(f, "{\"msg_type\":\"x\"}", 16);
    herd_frames_push(f, "{}", 2);
    herd_frames_push(f, "{}", 2);
    herd_frames_push(f, "{}", 2);
    herd_frames_push(f, NULL, 0); /* empty buffer */
    herd_frames_push(f, big, big_len);
}

static void check_round_trip(const char *endpoint)
{
    SocketPair p;
    pair_open(&p, endpoint);
    gsize big_len = 1024 * 1024;
    char *big = g_malloc(big_len);
    for (gsize i = 0; i < big_len; i++)
        big[i] = (char)(i * 7 + 3);

    HerdFrames out, in;
    herd_frames_init(&out);
    herd_frames_init(&in);
    push_wire_message(&out, big, big_len);
    g_assert_cmpint(herd_frames_send(p.dealer, &out), ==, 0);
    g_assert_cmpuint(out.n, ==, 0); /* moved into zmq */

    g_assert_cmpint(herd_frames_recv(p.router, &in, 0), ==, 0);
    g_assert_cmpuint(in.n, ==, 9);
    assert_frame_str(&in, 0, "dealer-1"); /* the ROUTER's routing-id prefix */
    g_assert_cmpint(in.delim, ==, 1);
    g_assert_true(herd_frames_is_wire(&in));
    assert_frame_str(&in, herd_wire(&in, HERD_WIRE_HEADER), "{\"msg_type\":\"x\"}");
    g_assert_cmpuint(herd_frame_size(&in, herd_wire(&in, HERD_WIRE_SIG)), ==, 0);
    g_assert_cmpuint(herd_frame_size(&in, herd_wire(&in, HERD_WIRE_BUFFERS)), ==, 0);
    assert_frame_eq(&in, herd_wire(&in, HERD_WIRE_BUFFERS) + 1, big, big_len);

    /* Relay it back: the ROUTER routes by the first frame, the DEALER sees the rest. */
    HerdFrames back;
    herd_frames_copy(&back, &in);
    g_assert_cmpint(herd_frames_send(p.router, &back), ==, 0);
    HerdFrames got;
    herd_frames_init(&got);
    g_assert_cmpint(herd_frames_recv(p.dealer, &got, 0), ==, 0);
    g_assert_cmpuint(got.n, ==, 8);
    g_assert_cmpint(got.delim, ==, 0);
    assert_frame_eq(&got, 7, big, big_len);

    /* Nothing more is queued: a non-blocking receive says so and leaves the list alone. */
    HerdFrames none;
    herd_frames_init(&none);
    g_assert_cmpint(herd_frames_recv(p.dealer, &none, ZMQ_DONTWAIT), ==, -1);
    g_assert_cmpint(errno, ==, EAGAIN);
    g_assert_cmpuint(none.n, ==, 0);
    g_assert_cmpint(none.delim, ==, -1);

    herd_frames_clear(&in);
    herd_frames_clear(&got);
    herd_frames_clear(&none);
    g_free(big);
    pair_close(&p);
}

static void test_frames_send_recv_inproc(void)
{
    check_round_trip("inproc://herd-test-wire");
}

static void test_frames_send_recv_ipc(void)
{
    GError *err = NULL;
    char *dir = g_dir_make_tmp("herd-test-wire-XXXXXX", &err);
    g_assert_no_error(err);
    char *path = g_build_filename(dir, "sock", NULL);
    char *endpoint = g_strconcat("ipc://", path, NULL);
    check_round_trip(endpoint);
    g_unlink(path);
    g_rmdir(dir);
    g_free(endpoint);
    g_free(path);
    g_free(dir);
}

static void test_frames_send_failure_empties_list(void)
{
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1;
    g_assert_cmpint(zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one), ==, 0);
    g_assert_cmpint(zmq_bind(router, "inproc://herd-test-fail"), ==, 0);

    HerdFrames f;
    herd_frames_init(&f);
    herd_frames_push(&f, "nobody", 6);
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&f, "payload", 7);
    g_assert_cmpint(herd_frames_send(router, &f), ==, -1);
    g_assert_cmpint(errno, ==, EHOSTUNREACH);
    g_assert_cmpuint(f.n, ==, 0);
    g_assert_cmpint(f.delim, ==, -1);
    herd_frames_clear(&f);

    zmq_close(router);
    zmq_ctx_term(ctx);
}

/* ---- JSON ---- */

static void assert_parse_fails(const char *data, gssize len, gint code)
{
    GError *err = NULL;
    HerdBytes b = { data, len < 0 ? strlen(data) : (gsize)len };
    JsonNode *n = herd_json_parse_object(b, &err);
    g_assert_null(n);
    g_assert_error(err, HERD_WIRE_ERROR, code);
    g_assert_nonnull(err->message);
    g_error_free(err);
}

static void test_json_parse_object(void)
{
    GError *err = NULL;
    JsonNode *n = herd_json_parse_object(HERD_BYTES_STR("{\"a\": 1, \"b\": \"h\xc3\xa9\"}"), &err);
    g_assert_no_error(err);
    g_assert_true(JSON_NODE_HOLDS_OBJECT(n));
    g_assert_cmpstr(herd_json_str(json_node_get_object(n), "b"), ==, "h\xc3\xa9");
    json_node_unref(n);

    /* Not NUL-terminated: only len bytes are read. */
    const char buf[] = { '{', '}', 'x', 'x' };
    n = herd_json_parse_object((HerdBytes){ buf, 2 }, &err);
    g_assert_no_error(err);
    json_node_unref(n);

    /* NULL stands for {} */
    n = herd_json_parse_object(HERD_BYTES_NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(json_object_get_size(json_node_get_object(n)), ==, 0);
    json_node_unref(n);
}

static void test_json_parse_malformed(void)
{
    GError *kind_err = NULL;
    g_assert_null(herd_json_parse_object(HERD_BYTES_STR("[1, 2]"), &kind_err));
    g_assert_cmpstr(kind_err->message, ==, "JSON is an array, not an object");
    g_clear_error(&kind_err);
    assert_parse_fails("[1, 2]", -1, HERD_WIRE_ERROR_NOT_OBJECT);
    assert_parse_fails("\"text\"", -1, HERD_WIRE_ERROR_NOT_OBJECT);
    assert_parse_fails("42", -1, HERD_WIRE_ERROR_NOT_OBJECT);
    assert_parse_fails("null", -1, HERD_WIRE_ERROR_NOT_OBJECT);
    assert_parse_fails("", 0, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("   ", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("{\"a\": 1", -1, HERD_WIRE_ERROR_JSON);            /* truncated */
    assert_parse_fails("{\"a\": \"unterminated", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("{\"a\": 1} trailing", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("not json at all", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("{'a': 1}", -1, HERD_WIRE_ERROR_JSON);             /* not strict JSON */
    assert_parse_fails("/* c */ {}", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("{\"a\": NaN}", -1, HERD_WIRE_ERROR_JSON);
    assert_parse_fails("{\"a\": \"\xff\xfe\"}", -1, HERD_WIRE_ERROR_UTF8); /* invalid UTF-8 */
    assert_parse_fails("{\"a\": \"\xc3\"}", -1, HERD_WIRE_ERROR_UTF8);    /* truncated sequence */
    assert_parse_fails("{\"a\":\0\"b\"}", 10, HERD_WIRE_ERROR_UTF8);      /* embedded NUL */

    /* Deep nesting is refused, not a stack overflow. */
    gsize depth = 200000;
    GString *deep = g_string_new("{\"a\": ");
    for (gsize i = 0; i < depth; i++)
        g_string_append_c(deep, '[');
    for (gsize i = 0; i < depth; i++)
        g_string_append_c(deep, ']');
    g_string_append_c(deep, '}');
    assert_parse_fails(deep->str, (gssize)deep->len, HERD_WIRE_ERROR_JSON);
    g_string_free(deep, TRUE);

    /* Brackets inside strings do not count as nesting. */
    GError *err = NULL;
    GString *s = g_string_new("{\"code\": \"");
    for (int i = 0; i < 5000; i++)
        g_string_append(s, "[{\\\"");
    g_string_append(s, "\"}");
    JsonNode *n = herd_json_parse_object((HerdBytes){ s->str, s->len }, &err);
    g_assert_no_error(err);
    json_node_unref(n);
    g_string_free(s, TRUE);
}

static void test_json_getters_are_type_safe(void)
{
    GError *err = NULL;
    JsonNode *n = herd_json_parse_object(
        HERD_BYTES_STR("{\"s\": \"x\", \"i\": 5, \"b\": true, \"d\": 1.5, \"z\": null, \"o\": {\"k\": 1}, \"a\": [1]}"),
        &err);
    g_assert_no_error(err);
    JsonObject *o = json_node_get_object(n);

    g_assert_cmpstr(herd_json_str(o, "s"), ==, "x");
    g_assert_null(herd_json_str(o, "i"));
    g_assert_null(herd_json_str(o, "z"));
    g_assert_null(herd_json_str(o, "o"));
    g_assert_null(herd_json_str(o, "missing"));
    g_assert_null(herd_json_str(NULL, "s"));

    g_assert_cmpint(herd_json_int(o, "i", -1), ==, 5);
    g_assert_cmpint(herd_json_int(o, "s", -1), ==, -1);
    g_assert_cmpint(herd_json_int(o, "d", -1), ==, -1);
    g_assert_cmpint(herd_json_int(o, "b", -1), ==, -1);
    g_assert_cmpint(herd_json_int(o, "a", -1), ==, -1);

    g_assert_true(herd_json_bool(o, "b", FALSE));
    g_assert_false(herd_json_bool(o, "i", FALSE));
    g_assert_true(herd_json_bool(o, "z", TRUE));

    g_assert_cmpfloat(herd_json_double(o, "d", 0), ==, 1.5);
    g_assert_cmpfloat(herd_json_double(o, "i", 0), ==, 5.0);
    g_assert_cmpfloat(herd_json_double(o, "s", 2.5), ==, 2.5);
    g_assert_cmpfloat(herd_json_double(o, "z", 2.5), ==, 2.5);

    g_assert_nonnull(herd_json_array(o, "a"));
    g_assert_null(herd_json_array(o, "o"));
    g_assert_nonnull(herd_json_object(o, "o"));
    g_assert_null(herd_json_object(o, "a"));
    g_assert_null(herd_json_object(o, "missing"));
    json_node_unref(n);
}

static void test_json_to_string_compact_round_trip(void)
{
    const char *text = "{\"msg_id\": \"x\", \"n\": [1, 2, {\"\xc3\xa9\": true}], \"q\": \"a\\\"b\"}";
    GError *err = NULL;
    JsonNode *n = herd_json_parse_object(HERD_BYTES_STR(text), &err);
    g_assert_no_error(err);
    gsize len = 0;
    char *out = herd_json_to_string(n, &len);
    g_assert_cmpuint(len, ==, strlen(out));
    g_assert_cmpstr(out, ==, "{\"msg_id\":\"x\",\"n\":[1,2,{\"\xc3\xa9\":true}],\"q\":\"a\\\"b\"}");
    JsonNode *again = herd_json_parse_object((HerdBytes){ out, len }, &err);
    g_assert_no_error(err);
    g_assert_true(json_node_equal(n, again));
    json_node_unref(n);
    json_node_unref(again);
    g_free(out);
}

/* The text escaped, as a JSON string literal, decodes back to exactly the text. */
static void assert_escape_round_trip(const char *text, gssize len)
{
    gsize n = len < 0 ? strlen(text) : (gsize)len;
    GString *doc = g_string_new("{\"v\":\"");
    herd_json_append_escaped(doc, text, len);
    g_string_append(doc, "\"}");
    GError *err = NULL;
    JsonNode *node = herd_json_parse_object((HerdBytes){ doc->str, doc->len }, &err);
    g_assert_no_error(err);
    const char *back = herd_json_str(json_node_get_object(node), "v");
    g_assert_nonnull(back);
    g_assert_cmpmem(back, strlen(back), text, n);
    json_node_unref(node);
    g_string_free(doc, TRUE);
}

static void test_json_append_escaped(void)
{
    GString *out = g_string_new("x");
    herd_json_append_escaped(out, "a\"b\\c\n\t\x01\x1f\x7f\xc3\xa9/", -1);
    g_assert_cmpstr(out->str, ==, "xa\\\"b\\\\c\\n\\t\\u0001\\u001f\x7f\xc3\xa9/");
    g_string_truncate(out, 0);
    herd_json_append_escaped(out, "ab\"cd", 3); /* a length stops before the NUL */
    g_assert_cmpstr(out->str, ==, "ab\\\"");
    g_string_truncate(out, 0);
    herd_json_append_escaped(out, "", -1);
    g_assert_cmpuint(out->len, ==, 0);
    g_string_free(out, TRUE);

    const char *odd[] = { "plain-id_123", "\"quoted\"", "back\\slash\\", "new\nline\r\n", "\b\f\t",
                          "\xf0\x9f\x98\x80 emoji and \xc3\xa9", "</script>", "\x1b[0m" };
    for (guint i = 0; i < G_N_ELEMENTS(odd); i++)
        assert_escape_round_trip(odd[i], -1);
    char every_byte[127]; /* 1..127: every control character and all of ASCII */
    for (int i = 0; i < 127; i++)
        every_byte[i] = (char)(i + 1);
    assert_escape_round_trip(every_byte, sizeof every_byte);
}

/* ---- dates ---- */

static void assert_iso(gint64 usec, const char *expected)
{
    char buf[HERD_ISO_LEN];
    herd_iso_format(usec, buf);
    g_assert_cmpstr(buf, ==, expected);
    gint64 back = 0;
    g_assert_true(herd_iso_parse(buf, &back));
    g_assert_cmpint(back, ==, usec);
}

static void test_iso_format_round_trip(void)
{
    assert_iso(0, "1970-01-01T00:00:00Z");
    assert_iso(G_GINT64_CONSTANT(1795777753338760), "2026-11-27T11:09:13.338760Z");
    assert_iso(G_GINT64_CONSTANT(1795777753000000), "2026-11-27T11:09:13Z"); /* zero usec omitted */
    assert_iso(G_GINT64_CONSTANT(1795777753000001), "2026-11-27T11:09:13.000001Z");
    assert_iso(G_GINT64_CONSTANT(1795777753100000), "2026-11-27T11:09:13.100000Z");
    assert_iso(-1, "1969-12-31T23:59:59.999999Z");
    assert_iso(G_GINT64_CONSTANT(951782400000000), "2000-02-29T00:00:00Z");

    /* A sweep of values round-trips exactly. */
    for (gint64 t = G_GINT64_CONSTANT(1600000000000000); t < G_GINT64_CONSTANT(1900000000000000);
         t += G_GINT64_CONSTANT(7777777777777)) {
        char buf[HERD_ISO_LEN];
        gint64 back;
        herd_iso_format(t, buf);
        g_assert_true(herd_iso_parse(buf, &back));
        g_assert_cmpint(back, ==, t);
    }

    /* The seconds are cached per thread: the same second with other fractions, the next
     * second, and back, each formatted right. */
    gint64 base = G_GINT64_CONSTANT(1795777753000000);
    assert_iso(base + 5, "2026-11-27T11:09:13.000005Z");
    assert_iso(base + 999999, "2026-11-27T11:09:13.999999Z");
    assert_iso(base + 1000000, "2026-11-27T11:09:14Z");
    assert_iso(base + 17, "2026-11-27T11:09:13.000017Z");
    /* Years past 9999 are longer than the cached form (and beyond the parser): formatted,
     * never cached. */
    char far[HERD_ISO_LEN];
    herd_iso_format(G_GINT64_CONSTANT(253402300800000000), far);
    g_assert_cmpstr(far, ==, "10000-01-01T00:00:00Z");
    herd_iso_format(G_GINT64_CONSTANT(253402300800000001), far);
    g_assert_cmpstr(far, ==, "10000-01-01T00:00:00.000001Z");
    assert_iso(base + 17, "2026-11-27T11:09:13.000017Z");

    char now[HERD_ISO_LEN];
    gint64 before = g_get_real_time();
    herd_iso_now(now);
    gint64 parsed;
    g_assert_true(herd_iso_parse(now, &parsed));
    g_assert_cmpint(parsed, >=, before);
    g_assert_cmpint(parsed, <=, g_get_real_time());
    g_assert_true(g_str_has_suffix(now, "Z"));
}

static gint64 parse_ok(const char *s)
{
    gint64 v = 0;
    if (!herd_iso_parse(s, &v))
        g_error("expected \"%s\" to parse", s);
    return v;
}

static void test_iso_parse_forms(void)
{
    gint64 base = G_GINT64_CONSTANT(1795777753000000); /* 2026-11-27T11:09:13Z */
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13Z"), ==, base);
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13.5Z"), ==, base + 500000);
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13.12Z"), ==, base + 120000);
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13.000001Z"), ==, base + 1);
    g_assert_cmpint(parse_ok("2026-11-27T12:09:13+01:00"), ==, base);
    g_assert_cmpint(parse_ok("2026-11-27T12:09:13+0100"), ==, base);
    g_assert_cmpint(parse_ok("2026-11-27T05:39:13.25-05:30"), ==, base + 250000);
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13+00:00"), ==, base);
    g_assert_cmpint(parse_ok("2026-11-28T00:09:13+13:00"), ==, base);
    /* Calendar arithmetic at the edges: the epoch, before it, leap days, the year range. */
    g_assert_cmpint(parse_ok("1970-01-01T00:00:00Z"), ==, 0);
    g_assert_cmpint(parse_ok("1969-12-31T23:59:59Z"), ==, -G_USEC_PER_SEC);
    g_assert_cmpint(parse_ok("2024-02-29T12:00:00Z"), ==, G_GINT64_CONSTANT(1709208000) * G_USEC_PER_SEC);
    g_assert_cmpint(parse_ok("2000-03-01T00:00:00Z"), ==, G_GINT64_CONSTANT(951868800) * G_USEC_PER_SEC);
    g_assert_cmpint(parse_ok("0001-01-01T00:00:00Z"), ==, G_GINT64_CONSTANT(-62135596800) * G_USEC_PER_SEC);
    g_assert_cmpint(parse_ok("9999-12-31T23:59:59Z"), ==, G_GINT64_CONSTANT(253402300799) * G_USEC_PER_SEC);

    /* No zone: local time, as the Python peers read it. */
    GDateTime *local = g_date_time_new_local(2026, 11, 27, 11, 9, 13);
    g_assert_cmpint(parse_ok("2026-11-27T11:09:13.000002"), ==, g_date_time_to_unix(local) * G_USEC_PER_SEC + 2);
    g_date_time_unref(local);

    const char *bad[] = {
        "2026-11-27T11:09:13.1234567Z", /* more than 6 fraction digits */
        "2026-11-27T11:09:13.Z",        /* empty fraction */
        "2026-11-27 11:09:13Z",         /* space instead of T */
        "2026-11-27T11:09Z",            /* no seconds */
        "2026-11-27",                   /* no time */
        "2026-02-30T00:00:00Z",         /* no such day */
        "2023-02-29T00:00:00Z",         /* not a leap year */
        "1900-02-29T00:00:00Z",         /* nor is 1900 */
        "0000-01-01T00:00:00Z",         /* no year 0 in Python */
        "2026-13-01T00:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T11:60:00Z",
        "2026-11-27T11:09:60Z",         /* leap seconds: not a Python datetime */
        "2026-11-27T11:09:13+1:00",
        "2026-11-27T11:09:13+01:0",
        "2026-11-27T11:09:13+24:00",
        "2026-11-27T11:09:13ZZ",
        "2026-11-27T11:09:13Z ",
        "26-11-27T11:09:13Z",
        "",
        "not a date",
        NULL,
    };
    for (guint i = 0; bad[i]; i++) {
        gint64 v = 42;
        if (herd_iso_parse(bad[i], &v))
            g_error("\"%s\" should not parse", bad[i]);
    }
    g_assert_false(herd_iso_parse(NULL, NULL));
}

/* ---- error content ---- */

static void test_error_content(void)
{
    JsonNode *n = herd_error_content("KeyError", "'no such engine'");
    g_assert_true(JSON_NODE_HOLDS_OBJECT(n));
    JsonObject *o = json_node_get_object(n);

    /* Key order as Python emits it. */
    GList *members = json_object_get_members(o);
    const char *order[] = { "status", "traceback", "ename", "evalue", "engine_info" };
    g_assert_cmpuint(g_list_length(members), ==, G_N_ELEMENTS(order));
    guint i = 0;
    for (GList *l = members; l; l = l->next, i++)
        g_assert_cmpstr(l->data, ==, order[i]);
    g_list_free(members);

    g_assert_cmpstr(herd_json_str(o, "status"), ==, "error");
    g_assert_cmpstr(herd_json_str(o, "ename"), ==, "KeyError");
    g_assert_cmpstr(herd_json_str(o, "evalue"), ==, "'no such engine'");
    JsonObject *info = herd_json_object(o, "engine_info");
    g_assert_nonnull(info);
    g_assert_cmpuint(json_object_get_size(info), ==, 0);
    JsonArray *tb = herd_json_array(o, "traceback");
    g_assert_nonnull(tb);
    g_assert_cmpuint(json_array_get_length(tb), >=, 1);
    for (guint k = 0; k < json_array_get_length(tb); k++)
        g_assert_true(g_str_has_suffix(json_array_get_string_element(tb, k), "\n"));
    json_node_unref(n);

    /* Dependency errors have an empty evalue. */
    n = herd_error_content("ImpossibleDependency", "");
    g_assert_cmpstr(herd_json_str(json_node_get_object(n), "evalue"), ==, "");
    json_node_unref(n);
}

/* The flat member scan: kinds, spans, escapes, nesting, and malformed objects. */
static void test_json_scan_members(void)
{
    const char *json = " {\"a\": \"x\\\"y\", \"n\": -1.5e3, \"t\": true, \"f\": false, \"z\": null, "
                       "\"o\": {\"a\": \"inner\", \"l\": [1, \"]\", {}]}, \"l\": [], \"s\": \"plain\"} ";
    HerdJsonField f[] = { { .name = "a" }, { .name = "n" }, { .name = "t" }, { .name = "f" }, { .name = "z" },
                          { .name = "o" }, { .name = "l" }, { .name = "s" }, { .name = "missing" } };
    guint members = 0;
    g_assert_true(herd_json_scan_count(HERD_BYTES_STR(json), f, G_N_ELEMENTS(f), &members));
    g_assert_cmpuint(members, ==, 8);
    g_assert_cmpint(f[0].kind, ==, HERD_JSON_STRING);
    g_assert_true(f[0].escaped);
    g_autofree char *a = herd_json_field_dup(&f[0]);
    g_assert_cmpstr(a, ==, "x\"y");
    g_assert_cmpint(f[1].kind, ==, HERD_JSON_NUMBER);
    g_assert_cmpmem(f[1].value, f[1].len, "-1.5e3", 6);
    g_assert_cmpint(f[2].kind, ==, HERD_JSON_TRUE);
    g_assert_cmpint(f[3].kind, ==, HERD_JSON_FALSE);
    g_assert_cmpint(f[4].kind, ==, HERD_JSON_NULL);
    g_assert_cmpint(f[5].kind, ==, HERD_JSON_OBJECT);
    const char *inner = "{\"a\": \"inner\", \"l\": [1, \"]\", {}]}";
    g_assert_cmpmem(f[5].value, f[5].len, inner, strlen(inner));
    g_assert_cmpint(f[6].kind, ==, HERD_JSON_ARRAY);
    g_assert_cmpuint(f[6].len, ==, 2);
    g_assert_cmpint(f[7].kind, ==, HERD_JSON_STRING);
    g_assert_false(f[7].escaped);
    g_assert_cmpmem(f[7].value, f[7].len, "plain", 5);
    g_assert_cmpint(f[8].kind, ==, HERD_JSON_ABSENT);

    const char *bad[] = { "", "[]", "{", "{\"a\"}", "{\"a\": }", "{\"a\": \"unterminated}", "{\"a\": 1,}",
                          "{\"a\": \"ctl\x01\"}", "{\"a\": [1, 2}", "{} x", NULL };
    for (guint i = 0; bad[i]; i++) {
        HerdJsonField any = { .name = "a" };
        if (herd_json_scan(HERD_BYTES_STR(bad[i]), &any, 1))
            g_error("'%s' should not scan", bad[i]);
    }
}

/* Strings are skipped eight bytes at a time: a quote, backslash or control character must
 * be seen wherever it falls in a word, and at every string length. */
static void test_json_scan_string_at_every_offset(void)
{
    for (guint len = 0; len <= 40; len++) {
        for (guint at = 0; at <= len; at++) {
            GString *text = g_string_new("{\"k\": \"");
            for (guint i = 0; i < len; i++) {
                if (i == at)
                    g_string_append(text, "\\\""); /* an escaped quote */
                else
                    g_string_append_c(text, (char)('a' + i % 26));
            }
            g_string_append(text, "\", \"after\": 7}");
            HerdJsonField f[] = { { .name = "k" }, { .name = "after" } };
            g_assert_true(herd_json_scan(((HerdBytes){ text->str, text->len }), f, 2));
            g_assert_cmpint(f[0].kind, ==, HERD_JSON_STRING);
            g_assert_cmpuint(f[0].len, ==, at < len ? len + 1 : len);
            g_assert_true(f[0].escaped == (at < len));
            g_assert_cmpint(f[1].kind, ==, HERD_JSON_NUMBER);

            /* the same text with a raw control character at `at` is refused */
            if (at < len) {
                g_string_truncate(text, 0);
                g_string_append(text, "{\"k\": \"");
                for (guint i = 0; i < len; i++)
                    g_string_append_c(text, i == at ? '\n' : (char)('a' + i % 26));
                g_string_append(text, "\"}");
                HerdJsonField k = { .name = "k" };
                g_assert_false(herd_json_scan(((HerdBytes){ text->str, text->len }), &k, 1));
            }
            g_string_free(text, TRUE);
        }
    }
    /* bytes >= 0x80 (UTF-8) are plain text */
    const char *utf8 = "{\"k\": \"h\xc3\xa9llo w\xc3\xb6rld \xe2\x82\xac \xf0\x9f\x90\x91!\"}";
    HerdJsonField k = { .name = "k" };
    g_assert_true(herd_json_scan(HERD_BYTES_STR(utf8), &k, 1));
    g_assert_cmpuint(k.len, ==, strlen(utf8) - 9);
    g_assert_false(k.escaped);
}

/* herd_str_hash keys every relay-path table: equal keys must meet, message ids that differ
 * only in their counter must spread over the buckets, and every length's tail counts. */
static void test_str_hash(void)
{
    char a[] = "1c2b3a4d-aaaa-bbbb-cccc-0123456789ab_4242_17";
    g_autofree char *b = g_strdup(a);
    g_assert_cmpuint(herd_str_hash(a), ==, herd_str_hash(b));

    /* Each length from 0 to 40, and a change of the last byte at each length. */
    char buf[41];
    for (gsize len = 0; len <= 40; len++) {
        memset(buf, 'x', len);
        buf[len] = '\0';
        guint h = herd_str_hash(buf);
        if (len > 0) {
            buf[len - 1] = 'y';
            g_assert_cmpuint(h, !=, herd_str_hash(buf));
        }
    }

    enum { N = 100000, BUCKETS = 1024 };
    guint *counts = g_new0(guint, BUCKETS);
    GHashTable *seen = g_hash_table_new(g_direct_hash, g_direct_equal);
    guint collisions = 0;
    for (guint i = 0; i < N; i++) {
        g_autofree char *id = g_strdup_printf("7f0c4d1e-5b2a-4c3d-9e8f-a1b2c3d4e5f6_31337_%u", i);
        guint h = herd_str_hash(id);
        counts[h % BUCKETS]++;
        if (!g_hash_table_add(seen, GUINT_TO_POINTER(h)))
            collisions++;
    }
    /* ~1.2 full 32-bit collisions are expected among 100 000 random values. */
    g_assert_cmpuint(collisions, <=, 8);
    guint lo = G_MAXUINT, hi = 0;
    for (guint i = 0; i < BUCKETS; i++) {
        lo = MIN(lo, counts[i]);
        hi = MAX(hi, counts[i]);
    }
    /* Mean 97.7 per bucket; a uniform hash stays well within these bounds. */
    g_assert_cmpuint(lo, >=, 50);
    g_assert_cmpuint(hi, <=, 150);
    g_hash_table_destroy(seen);
    g_free(counts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/wire/frames/push-and-delim", test_frames_push_and_delim);
    g_test_add_func("/wire/frames/push-take-zero-copy", test_frames_push_take_is_zero_copy);
    g_test_add_func("/wire/frames/push-msg-moves", test_frames_push_msg_moves);
    g_test_add_func("/wire/frames/copy-shares-bodies", test_frames_copy_shares_bodies);
    g_test_add_func("/wire/frames/insert-remove-swap", test_frames_insert_remove_swap_track_delim);
    g_test_add_func("/wire/frames/send-recv-inproc", test_frames_send_recv_inproc);
    g_test_add_func("/wire/frames/send-recv-ipc", test_frames_send_recv_ipc);
    g_test_add_func("/wire/frames/send-failure", test_frames_send_failure_empties_list);
    g_test_add_func("/wire/json/parse-object", test_json_parse_object);
    g_test_add_func("/wire/json/parse-malformed", test_json_parse_malformed);
    g_test_add_func("/wire/json/getters", test_json_getters_are_type_safe);
    g_test_add_func("/wire/json/to-string", test_json_to_string_compact_round_trip);
    g_test_add_func("/wire/json/append-escaped", test_json_append_escaped);
    g_test_add_func("/wire/iso/format-round-trip", test_iso_format_round_trip);
    g_test_add_func("/wire/iso/parse-forms", test_iso_parse_forms);
    g_test_add_func("/wire/error-content", test_error_content);
    g_test_add_func("/wire/str-hash", test_str_hash);
    g_test_add_func("/wire/json-scan/members", test_json_scan_members);
    g_test_add_func("/wire/json-scan/string-at-every-offset", test_json_scan_string_at_every_offset);
    return g_test_run();
}
