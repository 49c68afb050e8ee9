/* Unit tests: the Session (session.c) against messages signed by the real peer
 * (tests/vectors, made by jupyter_client) and, the other way round, messages herd builds
 * checked by jupyter_client itself.
 */
#include "herd/wire.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define VECTOR_KEY "e56bb563-3b291df5705e9e8c858be716"
/* The Python check of a built message must finish within this. */
#define PYTHON_TIMEOUT_S 30

/* ---- test vectors ---- */

typedef struct {
    char *name;
    char *key;
    HerdFrames frames;
    gint delim;
    JsonNode *root; /* keeps `expect` alive */
    JsonObject *expect;
} Vector;

static void vector_free(gpointer p)
{
    Vector *v = p;
    g_free(v->name);
    g_free(v->key);
    herd_frames_clear(&v->frames);
    json_node_unref(v->root);
    g_free(v);
}

static Vector *vector_load(const char *path)
{
    char *text = NULL;
    gsize len = 0;
    GError *err = NULL;
    g_assert_true(g_file_get_contents(path, &text, &len, &err));
    g_assert_no_error(err);
    JsonNode *root = herd_json_parse_object((HerdBytes){ text, len }, &err);
    g_assert_no_error(err);
    g_free(text);

    JsonObject *o = json_node_get_object(root);
    Vector *v = g_new0(Vector, 1);
    v->name = g_path_get_basename(path);
    v->key = g_strdup(herd_json_str(o, "key"));
    v->delim = (gint)herd_json_int(o, "delim", -1);
    v->root = root;
    v->expect = herd_json_object(o, "expect");
    g_assert_nonnull(v->key);
    g_assert_nonnull(v->expect);
    herd_frames_init(&v->frames);
    JsonArray *frames = herd_json_array(o, "frames");
    g_assert_nonnull(frames);
    for (guint i = 0; i < json_array_get_length(frames); i++) {
        gsize n = 0;
        guchar *bytes = g_base64_decode(json_array_get_string_element(frames, i), &n);
        herd_frames_push_take(&v->frames, (char *)bytes, n);
    }
    return v;
}

/* Every *.json in $HERD_VECTORS_DIR (set by meson). */
static GPtrArray *vectors_load_all(void)
{
    const char *dir = g_getenv("HERD_VECTORS_DIR");
    g_assert_nonnull(dir);
    GError *err = NULL;
    GDir *d = g_dir_open(dir, 0, &err);
    g_assert_no_error(err);
    GPtrArray *all = g_ptr_array_new_with_free_func(vector_free);
    const char *name;
    while ((name = g_dir_read_name(d))) {
        if (!g_str_has_suffix(name, ".json"))
            continue;
        char *path = g_build_filename(dir, name, NULL);
        g_ptr_array_add(all, vector_load(path));
        g_free(path);
    }
    g_dir_close(d);
    /* execute_request, apply_request, non_ascii, execute_reply, long_key */
    g_assert_cmpuint(all->len, >=, 5);
    return all;
}

static Vector *vector_named(GPtrArray *all, const char *name)
{
    for (guint i = 0; i < all->len; i++) {
        Vector *v = g_ptr_array_index(all, i);
        if (strcmp(v->name, name) == 0)
            return v;
    }
    g_error("vector %s not found", name);
}

static HerdSession *session_for(const char *key)
{
    GError *err = NULL;
    HerdSession *s = herd_session_new(key, "hmac-sha256", NULL, &err);
    g_assert_no_error(err);
    g_assert_nonnull(s);
    return s;
}

/* A copy of f whose frame `index` is replaced by the given bytes. */
static void frames_with_replaced(HerdFrames *out, const HerdFrames *f, guint index, const void *data, gsize len)
{
    herd_frames_init(out);
    for (guint i = 0; i < f->n; i++) {
        if (i == index)
            herd_frames_push(out, data, len);
        else
            herd_frames_push_frame_copy(out, f, i);
    }
}

/* A copy of f with one byte of frame `index` changed. */
static void frames_with_flipped_byte(HerdFrames *out, const HerdFrames *f, guint index, gsize pos)
{
    gsize len = herd_frame_size(f, index);
    g_assert_cmpuint(pos, <, len);
    char *changed = g_memdup2(herd_frame_data(f, index), len);
    changed[pos] ^= 0x01;
    frames_with_replaced(out, f, index, changed, len);
    g_free(changed);
}

static void test_vectors_verify_and_header_fields(void)
{
    GPtrArray *all = vectors_load_all();
    for (guint i = 0; i < all->len; i++) {
        Vector *v = g_ptr_array_index(all, i);
        g_test_message("vector %s", v->name);
        g_assert_cmpint(v->frames.delim, ==, v->delim);
        g_assert_true(herd_frames_is_wire(&v->frames));

        HerdSession *s = session_for(v->key);
        g_assert_cmpint(herd_session_verify(s, &v->frames), ==, HERD_VERIFY_OK);

        GError *err = NULL;
        JsonNode *header = herd_json_parse_object(herd_frame_bytes(&v->frames, herd_wire(&v->frames, HERD_WIRE_HEADER)), &err);
        g_assert_no_error(err);
        JsonObject *h = json_node_get_object(header);
        const char *fields[] = { "msg_id", "msg_type", "username", "session", "date", "version" };
        for (guint k = 0; k < G_N_ELEMENTS(fields); k++)
            g_assert_cmpstr(herd_json_str(h, fields[k]), ==, herd_json_str(v->expect, fields[k]));
        g_assert_cmpstr(herd_json_str(h, "version"), ==, HERD_PROTOCOL_VERSION);
        gint64 date;
        g_assert_true(herd_iso_parse(herd_json_str(h, "date"), &date));

        JsonNode *parent = herd_json_parse_object(herd_frame_bytes(&v->frames, herd_wire(&v->frames, HERD_WIRE_PARENT)), &err);
        g_assert_no_error(err);
        const char *parent_id = herd_json_str(json_node_get_object(parent), "msg_id");
        g_assert_cmpstr(parent_id ? parent_id : "", ==, herd_json_str(v->expect, "parent_msg_id"));

        g_assert_cmpuint(v->frames.n - herd_wire(&v->frames, HERD_WIRE_BUFFERS), ==,
                         (guint)herd_json_int(v->expect, "n_buffers", -1));
        json_node_unref(header);
        json_node_unref(parent);
        herd_session_free(s);
    }
    g_ptr_array_unref(all);
}

static void test_vectors_one_byte_change_fails(void)
{
    GPtrArray *all = vectors_load_all();
    for (guint i = 0; i < all->len; i++) {
        Vector *v = g_ptr_array_index(all, i);
        HerdSession *s = session_for(v->key);
        /* Every signed frame, and the signature itself, at its first, middle and last byte. */
        for (guint part = HERD_WIRE_SIG; part <= HERD_WIRE_CONTENT; part++) {
            guint index = herd_wire(&v->frames, part);
            gsize len = herd_frame_size(&v->frames, index);
            gsize positions[] = { 0, len / 2, len - 1 };
            for (guint k = 0; k < G_N_ELEMENTS(positions); k++) {
                HerdFrames changed;
                frames_with_flipped_byte(&changed, &v->frames, index, positions[k]);
                HerdVerify r = herd_session_verify(s, &changed);
                if (r != HERD_VERIFY_INVALID)
                    g_error("%s: frame %u byte %" G_GSIZE_FORMAT " changed: %s", v->name, index, positions[k],
                            herd_verify_str(r));
                herd_frames_clear(&changed);
            }
        }
        /* Nothing forged was remembered: the genuine message still verifies. */
        g_assert_cmpuint(herd_session_history_size(s), ==, 0);
        g_assert_cmpint(herd_session_verify(s, &v->frames), ==, HERD_VERIFY_OK);

        /* A different key refuses the genuine message. */
        HerdSession *other = session_for("another-key");
        g_assert_cmpint(herd_session_verify(other, &v->frames), ==, HERD_VERIFY_INVALID);
        herd_session_free(other);
        herd_session_free(s);
    }
    g_ptr_array_unref(all);
}

static void test_vectors_unsigned_parts_may_change(void)
{
    GPtrArray *all = vectors_load_all();
    Vector *v = vector_named(all, "apply_request.json");
    g_assert_cmpint(herd_json_int(v->expect, "n_buffers", 0), ==, 2);

    /* Buffers are not signed: relays and peers accept them changed. */
    for (guint b = 0; b < 2; b++) {
        HerdSession *s = session_for(v->key);
        HerdFrames changed;
        frames_with_flipped_byte(&changed, &v->frames, herd_wire(&v->frames, HERD_WIRE_BUFFERS) + b, 3);
        g_assert_cmpint(herd_session_verify(s, &changed), ==, HERD_VERIFY_OK);
        herd_frames_clear(&changed);
        herd_session_free(s);
    }

    /* Neither are routing ids. */
    Vector *routed = vector_named(all, "execute_reply.json");
    g_assert_cmpint(routed->frames.delim, ==, 2);
    HerdSession *s = session_for(routed->key);
    HerdFrames changed;
    frames_with_replaced(&changed, &routed->frames, 0, "other-engine", 12);
    g_assert_cmpint(herd_session_verify(s, &changed), ==, HERD_VERIFY_OK);
    herd_frames_clear(&changed);
    herd_session_free(s);
    g_ptr_array_unref(all);
}

static void test_vectors_replay_refused(void)
{
    GPtrArray *all = vectors_load_all();
    for (guint i = 0; i < all->len; i++) {
        Vector *v = g_ptr_array_index(all, i);
        HerdSession *s = session_for(v->key);
        g_assert_cmpint(herd_session_verify(s, &v->frames), ==, HERD_VERIFY_OK);
        g_assert_cmpint(herd_session_verify(s, &v->frames), ==, HERD_VERIFY_REPLAYED);
        /* A copy arriving with other routing ids is still the same message. */
        if (v->frames.delim > 0) {
            HerdFrames rerouted;
            frames_with_replaced(&rerouted, &v->frames, 0, "x", 1);
            g_assert_cmpint(herd_session_verify(s, &rerouted), ==, HERD_VERIFY_REPLAYED);
            herd_frames_clear(&rerouted);
        }
        g_assert_cmpuint(herd_session_history_size(s), ==, 1);
        herd_session_free(s);

        /* Each session has its own history. */
        HerdSession *fresh = session_for(v->key);
        g_assert_cmpint(herd_session_verify(fresh, &v->frames), ==, HERD_VERIFY_OK);
        herd_session_free(fresh);
    }
    g_ptr_array_unref(all);
}

static void test_vectors_unsigned_and_empty_key(void)
{
    GPtrArray *all = vectors_load_all();
    Vector *v = vector_named(all, "execute_request.json");
    HerdFrames stripped;
    frames_with_replaced(&stripped, &v->frames, herd_wire(&v->frames, HERD_WIRE_SIG), "", 0);

    HerdSession *keyed = session_for(v->key);
    g_assert_cmpint(herd_session_verify(keyed, &stripped), ==, HERD_VERIFY_UNSIGNED);
    herd_session_free(keyed);

    /* With signing off nothing is checked, and there is no replay history. */
    HerdSession *open = session_for("");
    g_assert_cmpint(herd_session_verify(open, &stripped), ==, HERD_VERIFY_OK);
    g_assert_cmpint(herd_session_verify(open, &stripped), ==, HERD_VERIFY_OK);
    g_assert_cmpint(herd_session_verify(open, &v->frames), ==, HERD_VERIFY_OK);
    g_assert_cmpuint(herd_session_history_size(open), ==, 0);
    herd_session_free(open);

    HerdSession *null_key = session_for(NULL);
    g_assert_cmpstr(herd_session_key(null_key), ==, "");
    g_assert_cmpint(herd_session_verify(null_key, &stripped), ==, HERD_VERIFY_OK);
    herd_session_free(null_key);

    herd_frames_clear(&stripped);
    g_ptr_array_unref(all);
}

/* ---- malformed input ---- */

static void test_malformed_messages(void)
{
    HerdSession *keyed = session_for(VECTOR_KEY);
    HerdSession *open = session_for("");
    HerdFrames f;

    /* No delimiter. */
    herd_frames_init(&f);
    herd_frames_push(&f, "id", 2);
    for (int i = 0; i < 6; i++)
        herd_frames_push(&f, "{}", 2);
    g_assert_cmpint(herd_session_verify(keyed, &f), ==, HERD_VERIFY_MALFORMED);
    g_assert_cmpint(herd_session_verify(open, &f), ==, HERD_VERIFY_MALFORMED);
    herd_frames_clear(&f);

    /* A delimiter that only differs in case is not one. */
    herd_frames_push(&f, "<ids|msg>", 9);
    for (int i = 0; i < 5; i++)
        herd_frames_push(&f, "{}", 2);
    g_assert_cmpint(herd_session_verify(open, &f), ==, HERD_VERIFY_MALFORMED);
    herd_frames_clear(&f);

    /* Too few frames after the delimiter (content missing). */
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&f, "abc", 3);
    for (int i = 0; i < 3; i++)
        herd_frames_push(&f, "{}", 2);
    g_assert_cmpint(herd_session_verify(keyed, &f), ==, HERD_VERIFY_MALFORMED);
    g_assert_cmpint(herd_session_verify(open, &f), ==, HERD_VERIFY_MALFORMED);
    herd_frames_clear(&f);

    /* Nothing at all. */
    g_assert_cmpint(herd_session_verify(keyed, &f), ==, HERD_VERIFY_MALFORMED);

    /* Signature of the wrong length or case. */
    HerdFrames built;
    herd_frames_init(&built);
    herd_session_build(keyed, &built, "status", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, NULL);
    guint sig = herd_wire(&built, HERD_WIRE_SIG);
    char *upper = g_ascii_strup(herd_frame_data(&built, sig), (gssize)herd_frame_size(&built, sig));
    HerdFrames changed;
    if (memcmp(upper, herd_frame_data(&built, sig), 64) != 0) { /* the digest has a letter in it */
        frames_with_replaced(&changed, &built, sig, upper, strlen(upper));
        g_assert_cmpint(herd_session_verify(keyed, &changed), ==, HERD_VERIFY_INVALID);
        herd_frames_clear(&changed);
    }
    g_free(upper);
    frames_with_replaced(&changed, &built, sig, herd_frame_data(&built, sig), 63);
    g_assert_cmpint(herd_session_verify(keyed, &changed), ==, HERD_VERIFY_INVALID);
    herd_frames_clear(&changed);
    herd_frames_clear(&built);

    /* Correctly signed garbage verifies (the signature is all verify checks) and is then
     * refused by the JSON layer with a precise error, never a crash. */
    struct {
        const char *header;
        gsize len;
        gint code;
    } bodies[] = {
        { "not json", 8, HERD_WIRE_ERROR_JSON },
        { "[\"msg_id\", \"x\"]", 15, HERD_WIRE_ERROR_NOT_OBJECT },
        { "{\"msg_id\": \"\xc3\x28\"}", 16, HERD_WIRE_ERROR_UTF8 },
        { "{\"msg_id\": \"x\"", 14, HERD_WIRE_ERROR_JSON },
        { "", 0, HERD_WIRE_ERROR_JSON },
    };
    for (guint i = 0; i < G_N_ELEMENTS(bodies); i++) {
        HerdBytes header = { bodies[i].header, bodies[i].len };
        char signature[65];
        herd_session_sign(keyed, header, HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, signature);
        herd_frames_init(&f);
        herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
        herd_frames_push(&f, signature, strlen(signature));
        herd_frames_push(&f, header.data, header.len);
        herd_frames_push(&f, "{}", 2);
        herd_frames_push(&f, "{}", 2);
        herd_frames_push(&f, "{}", 2);
        g_assert_cmpint(herd_session_verify(keyed, &f), ==, HERD_VERIFY_OK);
        GError *err = NULL;
        JsonNode *n = herd_json_parse_object(herd_frame_bytes(&f, herd_wire(&f, HERD_WIRE_HEADER)), &err);
        g_assert_null(n);
        g_assert_error(err, HERD_WIRE_ERROR, bodies[i].code);
        g_error_free(err);
        herd_frames_clear(&f);
    }

    herd_session_free(keyed);
    herd_session_free(open);
}

/* ---- session basics ---- */

static void test_session_scheme_and_ids(void)
{
    GError *err = NULL;
    g_assert_null(herd_session_new("k", "hmac-md5", NULL, &err));
    g_assert_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_SCHEME);
    g_assert_nonnull(strstr(err->message, "hmac-md5"));
    g_clear_error(&err);
    g_assert_null(herd_session_new("k", "HMAC-SHA256", NULL, &err));
    g_assert_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_SCHEME);
    g_clear_error(&err);

    GRegex *uuid_re = g_regex_new("^[0-9a-f]{8}-[0-9a-f]{24}$", 0, 0, NULL);
    char *a = herd_new_uuid(), *b = herd_new_uuid();
    g_assert_true(g_regex_match(uuid_re, a, 0, NULL));
    g_assert_true(g_regex_match(uuid_re, b, 0, NULL));
    g_assert_cmpstr(a, !=, b);
    g_free(a);
    g_free(b);

    HerdSession *s = session_for("k");
    g_assert_true(g_regex_match(uuid_re, herd_session_id(s), 0, NULL));
    g_assert_cmpstr(herd_session_key(s), ==, "k");
    char *expect0 = g_strdup_printf("%s_%ld_0", herd_session_id(s), (long)getpid());
    char *expect1 = g_strdup_printf("%s_%ld_1", herd_session_id(s), (long)getpid());
    char *id0 = herd_session_msg_id(s), *id1 = herd_session_msg_id(s);
    g_assert_cmpstr(id0, ==, expect0);
    g_assert_cmpstr(id1, ==, expect1);
    g_free(expect0);
    g_free(expect1);
    g_free(id0);
    g_free(id1);

    HerdSession *other = session_for("k");
    g_assert_cmpstr(herd_session_id(s), !=, herd_session_id(other));
    herd_session_free(other);
    herd_session_free(s);
    g_regex_unref(uuid_re);
}

static char *header_username(HerdSession *s)
{
    char *text = herd_session_header(s, "x", NULL);
    JsonNode *n = herd_json_parse_object(HERD_BYTES_STR(text), NULL);
    char *user = g_strdup(herd_json_str(json_node_get_object(n), "username"));
    json_node_unref(n);
    g_free(text);
    return user;
}

static void test_session_username(void)
{
    char *saved = g_strdup(g_getenv("USER"));
    GError *err = NULL;

    HerdSession *s = herd_session_new("", "hmac-sha256", "alice", &err);
    char *user = header_username(s);
    g_assert_cmpstr(user, ==, "alice");
    g_free(user);
    herd_session_free(s);

    g_setenv("USER", "bob", TRUE);
    s = herd_session_new("", NULL, NULL, &err); /* NULL scheme = the default, hmac-sha256 */
    g_assert_no_error(err);
    user = header_username(s);
    g_assert_cmpstr(user, ==, "bob");
    g_free(user);
    herd_session_free(s);

    g_unsetenv("USER");
    s = herd_session_new("", "hmac-sha256", NULL, &err);
    user = header_username(s);
    g_assert_cmpstr(user, ==, "username");
    g_free(user);
    herd_session_free(s);

    if (saved)
        g_setenv("USER", saved, TRUE);
    g_free(saved);
}

static void test_session_header_layout(void)
{
    HerdSession *s = session_for("k");
    char *msg_id = NULL;
    char *text = herd_session_header(s, "queue_reply", &msg_id);
    GError *err = NULL;
    JsonNode *n = herd_json_parse_object(HERD_BYTES_STR(text), &err);
    g_assert_no_error(err);
    JsonObject *h = json_node_get_object(n);

    GList *members = json_object_get_members(h);
    const char *order[] = { "msg_id", "msg_type", "username", "session", "date", "version" };
    g_assert_cmpuint(g_list_length(members), ==, G_N_ELEMENTS(order));
    guint i = 0;
    for (GList *l = members; l; l = l->next, i++)
        g_assert_cmpstr(l->data, ==, order[i]);
    g_list_free(members);

    g_assert_cmpstr(herd_json_str(h, "msg_id"), ==, msg_id);
    g_assert_cmpstr(herd_json_str(h, "msg_type"), ==, "queue_reply");
    g_assert_cmpstr(herd_json_str(h, "session"), ==, herd_session_id(s));
    g_assert_cmpstr(herd_json_str(h, "version"), ==, "5.3");
    gint64 date;
    g_assert_true(herd_iso_parse(herd_json_str(h, "date"), &date));
    g_assert_true(g_str_has_suffix(herd_json_str(h, "date"), "Z"));
    g_assert_cmpint(ABS(date - g_get_real_time()), <, 60 * G_USEC_PER_SEC);
    json_node_unref(n);
    g_free(text);
    g_free(msg_id);
    herd_session_free(s);
}

/* herd_session_append_header writes what herd_session_header returns (but for its
 * msg_id counter and date), after what the buffer held; odd usernames are escaped. */
static void test_session_append_header(void)
{
    const char *odd_user = "we\"ird\\user\n\xc3\xa9";
    HerdSession *s = herd_session_new("k", "hmac-sha256", odd_user, NULL);
    GString *out = g_string_new("prefix:");
    gint64 date = G_GINT64_CONSTANT(1795777753338760);
    herd_session_append_header(s, out, "apply\"reply", date);
    g_assert_true(g_str_has_prefix(out->str, "prefix:"));
    const char *json = out->str + strlen("prefix:");
    GError *err = NULL;
    JsonNode *n = herd_json_parse_object(HERD_BYTES_STR(json), &err);
    g_assert_no_error(err);
    JsonObject *h = json_node_get_object(n);
    g_assert_cmpstr(herd_json_str(h, "username"), ==, odd_user);
    g_assert_cmpstr(herd_json_str(h, "msg_type"), ==, "apply\"reply");
    g_assert_cmpstr(herd_json_str(h, "session"), ==, herd_session_id(s));
    g_assert_cmpstr(herd_json_str(h, "date"), ==, "2026-11-27T11:09:13.338760Z");
    g_assert_cmpstr(herd_json_str(h, "version"), ==, HERD_PROTOCOL_VERSION);
    /* msg_ids count up across both ways of building a header, never repeating. */
    char *first = g_strdup(herd_json_str(h, "msg_id"));
    char *next_id = NULL;
    g_free(herd_session_header(s, "x", &next_id));
    g_autofree char *expected_prefix = g_strdup_printf("%s_%ld_", herd_session_id(s), (long)getpid());
    g_assert_true(g_str_has_prefix(first, expected_prefix));
    g_assert_true(g_str_has_prefix(next_id, expected_prefix));
    g_assert_cmpint(g_ascii_strtoll(next_id + strlen(expected_prefix), NULL, 10), ==,
                    g_ascii_strtoll(first + strlen(expected_prefix), NULL, 10) + 1);
    g_free(first);
    g_free(next_id);
    json_node_unref(n);
    g_string_free(out, TRUE);
    herd_session_free(s);
}

/* ---- building, resigning ---- */

static void test_build_then_verify(void)
{
    HerdSession *sender = session_for(VECTOR_KEY);
    HerdSession *receiver = session_for(VECTOR_KEY);
    const char *parent = "{\"msg_id\": \"p-1\", \"msg_type\": \"queue_request\"}";

    HerdFrames f;
    herd_frames_init(&f);
    herd_frames_push(&f, "\x00k\x8b" "Eg", 5); /* routing id first, as a ROUTER sends it */
    char *msg_id = NULL;
    herd_session_build(sender, &f, "queue_reply", HERD_BYTES_STR(parent), HERD_BYTES_NULL,
                       HERD_BYTES_STR("{\"status\": \"ok\"}"), &msg_id);
    g_assert_cmpint(f.delim, ==, 1);
    g_assert_true(herd_frames_is_wire(&f));
    g_assert_cmpuint(f.n, ==, 7);
    g_assert_cmpmem(herd_frame_data(&f, herd_wire(&f, HERD_WIRE_PARENT)),
                    herd_frame_size(&f, herd_wire(&f, HERD_WIRE_PARENT)), parent, strlen(parent));
    g_assert_cmpmem(herd_frame_data(&f, herd_wire(&f, HERD_WIRE_METADATA)),
                    herd_frame_size(&f, herd_wire(&f, HERD_WIRE_METADATA)), "{}", 2);
    g_assert_cmpuint(herd_frame_size(&f, herd_wire(&f, HERD_WIRE_SIG)), ==, 64);

    g_assert_cmpint(herd_session_verify(receiver, &f), ==, HERD_VERIFY_OK);
    g_assert_cmpint(herd_session_verify(receiver, &f), ==, HERD_VERIFY_REPLAYED);
    JsonNode *h = herd_json_parse_object(herd_frame_bytes(&f, herd_wire(&f, HERD_WIRE_HEADER)), NULL);
    g_assert_cmpstr(herd_json_str(json_node_get_object(h), "msg_id"), ==, msg_id);
    json_node_unref(h);
    herd_frames_clear(&f);

    /* Two builds of the same reply differ (fresh msg_id), so a peer never sees a replay. */
    HerdFrames a, b;
    herd_frames_init(&a);
    herd_frames_init(&b);
    herd_session_build(sender, &a, "status", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, NULL);
    herd_session_build(sender, &b, "status", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, NULL);
    g_assert_cmpint(herd_session_verify(receiver, &a), ==, HERD_VERIFY_OK);
    g_assert_cmpint(herd_session_verify(receiver, &b), ==, HERD_VERIFY_OK);
    herd_frames_clear(&a);
    herd_frames_clear(&b);

    /* build_node serialises the given objects. */
    JsonNode *content = herd_error_content("KeyError", "x");
    herd_session_build_node(sender, &a, "result_reply", HERD_BYTES_NULL, NULL, content, NULL);
    g_assert_cmpint(herd_session_verify(receiver, &a), ==, HERD_VERIFY_OK);
    JsonNode *parsed = herd_json_parse_object(herd_frame_bytes(&a, herd_wire(&a, HERD_WIRE_CONTENT)), NULL);
    g_assert_true(json_node_equal(parsed, content));
    json_node_unref(parsed);
    json_node_unref(content);
    herd_frames_clear(&a);

    /* Signing off: empty signature frame, accepted by a keyless receiver. */
    HerdSession *open = session_for("");
    herd_session_build(open, &a, "status", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, NULL);
    g_assert_cmpuint(herd_frame_size(&a, herd_wire(&a, HERD_WIRE_SIG)), ==, 0);
    g_assert_cmpint(herd_session_verify(open, &a), ==, HERD_VERIFY_OK);
    g_assert_cmpint(herd_session_verify(receiver, &a), ==, HERD_VERIFY_UNSIGNED);
    char sig[65] = "garbage";
    herd_session_sign(open, HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_NULL, sig);
    g_assert_cmpstr(sig, ==, "");
    herd_frames_clear(&a);
    herd_session_free(open);

    g_free(msg_id);
    herd_session_free(sender);
    herd_session_free(receiver);
}

static void test_sign_matches_peer_vectors(void)
{
    /* herd_session_sign over the peer's four JSON frames gives the peer's signature. */
    GPtrArray *all = vectors_load_all();
    for (guint i = 0; i < all->len; i++) {
        Vector *v = g_ptr_array_index(all, i);
        HerdSession *s = session_for(v->key);
        HerdFrames *f = &v->frames;
        char sig[65];
        herd_session_sign(s, herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)),
                          herd_frame_bytes(f, herd_wire(f, HERD_WIRE_PARENT)),
                          herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)),
                          herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), sig);
        g_assert_cmpmem(sig, strlen(sig), herd_frame_data(f, herd_wire(f, HERD_WIRE_SIG)),
                        herd_frame_size(f, herd_wire(f, HERD_WIRE_SIG)));
        herd_session_free(s);
    }
    g_ptr_array_unref(all);
}

static void test_resign_after_rewrite(void)
{
    GPtrArray *all = vectors_load_all();
    Vector *v = vector_named(all, "execute_request.json");
    HerdSession *s = session_for(v->key);

    /* Rewrite the metadata (as the broadcast scheduler does) and sign again. */
    HerdFrames f;
    const char *metadata = "{\"targets\": [1], \"is_broadcast\": true}";
    frames_with_replaced(&f, &v->frames, herd_wire(&v->frames, HERD_WIRE_METADATA), metadata, strlen(metadata));
    HerdSession *receiver = session_for(v->key);
    g_assert_cmpint(herd_session_verify(receiver, &f), ==, HERD_VERIFY_INVALID);
    herd_session_resign(s, &f);
    g_assert_cmpint(herd_session_verify(receiver, &f), ==, HERD_VERIFY_OK);
    g_assert_cmpuint(f.n, ==, v->frames.n);
    g_assert_cmpint(f.delim, ==, v->frames.delim);
    herd_frames_clear(&f);

    /* Resigning an untouched message reproduces the peer's signature. */
    herd_frames_copy(&f, &v->frames);
    herd_session_resign(s, &f);
    g_assert_cmpmem(herd_frame_data(&f, herd_wire(&f, HERD_WIRE_SIG)), herd_frame_size(&f, herd_wire(&f, HERD_WIRE_SIG)),
                    herd_frame_data(&v->frames, herd_wire(&v->frames, HERD_WIRE_SIG)),
                    herd_frame_size(&v->frames, herd_wire(&v->frames, HERD_WIRE_SIG)));
    herd_frames_clear(&f);

    /* With signing off the signature frame becomes empty. */
    HerdSession *open = session_for("");
    herd_frames_copy(&f, &v->frames);
    herd_session_resign(open, &f);
    g_assert_cmpuint(herd_frame_size(&f, herd_wire(&f, HERD_WIRE_SIG)), ==, 0);
    herd_frames_clear(&f);

    herd_session_free(open);
    herd_session_free(receiver);
    herd_session_free(s);
    g_ptr_array_unref(all);
}

/* Verify a signed message whose content is {"n": <n>}. */
static HerdVerify verify_numbered(HerdSession *s, guint n)
{
    char content[32];
    g_snprintf(content, sizeof content, "{\"n\": %u}", n);
    char sig[65];
    herd_session_sign(s, HERD_BYTES_STR("{}"), HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_STR(content), sig);
    HerdFrames f;
    herd_frames_init(&f);
    herd_frames_push(&f, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&f, sig, 64);
    herd_frames_push(&f, "{}", 2);
    herd_frames_push(&f, "{}", 2);
    herd_frames_push(&f, "{}", 2);
    herd_frames_push(&f, content, strlen(content));
    HerdVerify r = herd_session_verify(s, &f);
    herd_frames_clear(&f);
    return r;
}

static void test_replay_history_is_capped(void)
{
    HerdSession *s = session_for("cap-key");
    const guint cap = 65536;
    for (guint i = 0; i <= cap; i++) {
        HerdVerify r = verify_numbered(s, i);
        if (r != HERD_VERIFY_OK)
            g_error("message %u: %s", i, herd_verify_str(r));
        if (i < cap)
            g_assert_cmpuint(herd_session_history_size(s), ==, i + 1);
    }
    /* Past the cap the oldest is forgotten, one for each newer one. */
    g_assert_cmpuint(herd_session_history_size(s), ==, cap);
    g_assert_cmpint(verify_numbered(s, cap), ==, HERD_VERIFY_REPLAYED); /* the newest */
    g_assert_cmpint(verify_numbered(s, 1), ==, HERD_VERIFY_REPLAYED);   /* the oldest kept */
    g_assert_cmpint(verify_numbered(s, 0), ==, HERD_VERIFY_OK);         /* forgotten, now the newest */
    g_assert_cmpint(verify_numbered(s, 1), ==, HERD_VERIFY_OK);         /* pushed out by 0 */
    g_assert_cmpint(verify_numbered(s, 0), ==, HERD_VERIFY_REPLAYED);
    g_assert_cmpuint(herd_session_history_size(s), ==, cap);
    /* The window keeps working over many wraps of the ring. */
    for (guint i = cap + 1; i <= 4 * cap; i++)
        if (verify_numbered(s, i) != HERD_VERIFY_OK)
            g_error("message %u refused", i);
    g_assert_cmpint(verify_numbered(s, 4 * cap), ==, HERD_VERIFY_REPLAYED);
    g_assert_cmpint(verify_numbered(s, 3 * cap + 1), ==, HERD_VERIFY_REPLAYED);
    g_assert_cmpint(verify_numbered(s, 3 * cap), ==, HERD_VERIFY_OK);
    g_assert_cmpuint(herd_session_history_size(s), ==, cap);
    herd_session_free(s);
}

/* ---- jupyter_client accepts what herd builds ---- */

/* Reads a JSON file of base64 frames, deserialises it with jupyter_client's Session (which
 * checks the signature, replay history and JSON) and prints what it understood. */
static const char PY_CHECK[] =
    "import base64, json, sys, datetime\n"
    "from jupyter_client.session import Session\n"
    "v = json.load(open(sys.argv[1]))\n"
    "frames = [base64.b64decode(f) for f in v['frames']]\n"
    "s = Session(key=v['key'].encode('utf8'), signature_scheme='hmac-sha256')\n"
    "idents, parts = s.feed_identities(frames, copy=True)\n"
    "m = s.deserialize(parts, content=True, copy=True)\n"
    "d = m['header']['date']\n"
    "assert isinstance(d, datetime.datetime) and d.tzinfo is not None, repr(d)\n"
    "print(json.dumps({'idents': [base64.b64encode(i).decode() for i in idents],\n"
    "    'header_keys': list(json.loads(parts[1]).keys()),\n"
    "    'msg_id': m['header']['msg_id'], 'msg_type': m['msg_type'],\n"
    "    'parent_msg_id': m['parent_header'].get('msg_id'),\n"
    "    'content': m['content'], 'metadata': m['metadata'],\n"
    "    'buffers': [base64.b64encode(bytes(b)).decode() for b in m['buffers']]}, ensure_ascii=False))\n";

static const char *peer_python(void)
{
    /* Debian's interpreter carries jupyter_client; HERD_PYTHON overrides it. */
    const char *py = g_getenv("HERD_PYTHON");
    return py && *py ? py : "/usr/bin/python3";
}

typedef struct {
    GMainLoop *loop;
    char *out;
    char *err;
    GError *error;
    gboolean timed_out;
} PyRun;

static void py_done(GObject *source, GAsyncResult *res, gpointer data)
{
    PyRun *run = data;
    g_subprocess_communicate_utf8_finish(G_SUBPROCESS(source), res, &run->out, &run->err, &run->error);
    g_main_loop_quit(run->loop);
}

static gboolean py_timeout(gpointer data)
{
    PyRun *run = data;
    run->timed_out = TRUE;
    g_main_loop_quit(run->loop);
    return G_SOURCE_REMOVE;
}

/* Run the peer check on the frames; returns its parsed stdout (fails the test otherwise). */
static JsonNode *python_deserialize(const HerdFrames *f, const char *key)
{
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "key");
    json_builder_add_string_value(b, key);
    json_builder_set_member_name(b, "frames");
    json_builder_begin_array(b);
    for (guint i = 0; i < f->n; i++) {
        char *b64 = g_base64_encode((const guchar *)herd_frame_data(f, i), herd_frame_size(f, i));
        json_builder_add_string_value(b, b64);
        g_free(b64);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    JsonNode *doc = json_builder_get_root(b);
    g_object_unref(b);
    gsize len;
    char *text = herd_json_to_string(doc, &len);
    json_node_unref(doc);

    GError *err = NULL;
    char *path = NULL;
    int fd = g_file_open_tmp("herd-test-session-XXXXXX.json", &path, &err);
    g_assert_no_error(err);
    close(fd);
    g_assert_true(g_file_set_contents(path, text, (gssize)len, &err));
    g_free(text);

    GSubprocess *proc = g_subprocess_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &err,
                                         peer_python(), "-c", PY_CHECK, path, NULL);
    g_assert_no_error(err);
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    PyRun run = { .loop = g_main_loop_new(ctx, FALSE) };
    g_subprocess_communicate_utf8_async(proc, NULL, NULL, py_done, &run);
    GSource *timer = g_timeout_source_new_seconds(PYTHON_TIMEOUT_S);
    g_source_set_callback(timer, py_timeout, &run, NULL);
    g_source_attach(timer, ctx);
    g_main_loop_run(run.loop);
    g_source_destroy(timer);
    g_source_unref(timer);
    if (run.timed_out) {
        g_subprocess_force_exit(proc); /* the process this test started, by its pid */
        g_subprocess_wait(proc, NULL, NULL);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_loop_unref(run.loop);
    g_main_context_unref(ctx);
    g_unlink(path);
    g_free(path);

    if (run.timed_out)
        g_error("python check timed out after %d s", PYTHON_TIMEOUT_S);
    g_assert_no_error(run.error);
    if (!g_subprocess_get_successful(proc))
        g_error("jupyter_client refused the message:\n%s", run.err);
    g_object_unref(proc);

    JsonNode *result = herd_json_parse_object(HERD_BYTES_STR(run.out), &err);
    g_assert_no_error(err);
    g_free(run.out);
    g_free(run.err);
    return result;
}

static void check_python_accepts(const char *key)
{
    HerdSession *s = session_for(key);
    const char *parent = "{\"msg_id\": \"req-7\", \"msg_type\": \"apply_request\", \"username\": \"u\", "
                         "\"session\": \"s\", \"date\": \"2026-11-27T11:09:13.338760Z\", \"version\": \"5.3\"}";
    const char *content = "{\"status\": \"ok\", \"text\": \"h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x90\x91\"}";
    HerdFrames f;
    herd_frames_init(&f);
    herd_frames_push(&f, "engine-1", 8);
    char *msg_id = NULL;
    herd_session_build(s, &f, "apply_reply", HERD_BYTES_STR(parent), HERD_BYTES_STR("{\"engine\": 3}"),
                       HERD_BYTES_STR(content), &msg_id);
    herd_frames_push(&f, "\x00\x01\xff", 3); /* a buffer */

    JsonNode *result = python_deserialize(&f, key);
    JsonObject *r = json_node_get_object(result);
    g_assert_cmpstr(herd_json_str(r, "msg_id"), ==, msg_id);
    g_assert_cmpstr(herd_json_str(r, "msg_type"), ==, "apply_reply");
    g_assert_cmpstr(herd_json_str(r, "parent_msg_id"), ==, "req-7");
    g_assert_cmpstr(herd_json_str(herd_json_object(r, "content"), "text"), ==,
                    "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x90\x91");
    g_assert_cmpint(herd_json_int(herd_json_object(r, "metadata"), "engine", -1), ==, 3);
    JsonArray *idents = herd_json_array(r, "idents");
    g_assert_cmpuint(json_array_get_length(idents), ==, 1);
    g_assert_cmpstr(json_array_get_string_element(idents, 0), ==, "ZW5naW5lLTE="); /* "engine-1" */
    JsonArray *buffers = herd_json_array(r, "buffers");
    g_assert_cmpuint(json_array_get_length(buffers), ==, 1);
    g_assert_cmpstr(json_array_get_string_element(buffers, 0), ==, "AAH/");
    JsonArray *keys = herd_json_array(r, "header_keys");
    const char *order[] = { "msg_id", "msg_type", "username", "session", "date", "version" };
    g_assert_cmpuint(json_array_get_length(keys), ==, G_N_ELEMENTS(order));
    for (guint i = 0; i < G_N_ELEMENTS(order); i++)
        g_assert_cmpstr(json_array_get_string_element(keys, i), ==, order[i]);

    json_node_unref(result);
    g_free(msg_id);
    herd_frames_clear(&f);
    herd_session_free(s);
}

static void test_python_accepts_built_message(void)
{
    check_python_accepts(VECTOR_KEY);
    check_python_accepts("schl\xc3\xbcssel-with-a-long-tail-0123456789012345678901234567890123456789012345678901234567890");
}

static void test_python_accepts_unsigned_with_empty_key(void)
{
    check_python_accepts("");
}

static void test_python_refuses_tampered_message(void)
{
    /* The check is real: a message jupyter_client must refuse makes it fail. */
    if (g_test_subprocess()) {
        HerdSession *s = session_for(VECTOR_KEY);
        HerdFrames f;
        herd_frames_init(&f);
        herd_session_build(s, &f, "status", HERD_BYTES_NULL, HERD_BYTES_NULL, HERD_BYTES_STR("{\"a\": 1}"), NULL);
        HerdFrames tampered;
        frames_with_replaced(&tampered, &f, herd_wire(&f, HERD_WIRE_CONTENT), "{\"a\": 2}", 8);
        JsonNode *r = python_deserialize(&tampered, VECTOR_KEY);
        json_node_unref(r);
        herd_frames_clear(&tampered);
        herd_frames_clear(&f);
        herd_session_free(s);
        return;
    }
    g_test_trap_subprocess(NULL, (PYTHON_TIMEOUT_S + 10) * G_USEC_PER_SEC, 0);
    g_test_trap_assert_failed();
    g_test_trap_assert_stderr("*Invalid Signature*");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/session/vectors/verify-and-header", test_vectors_verify_and_header_fields);
    g_test_add_func("/session/vectors/one-byte-change", test_vectors_one_byte_change_fails);
    g_test_add_func("/session/vectors/unsigned-parts", test_vectors_unsigned_parts_may_change);
    g_test_add_func("/session/vectors/replay", test_vectors_replay_refused);
    g_test_add_func("/session/vectors/unsigned-and-empty-key", test_vectors_unsigned_and_empty_key);
    g_test_add_func("/session/vectors/sign-matches-peer", test_sign_matches_peer_vectors);
    g_test_add_func("/session/malformed", test_malformed_messages);
    g_test_add_func("/session/scheme-and-ids", test_session_scheme_and_ids);
    g_test_add_func("/session/username", test_session_username);
    g_test_add_func("/session/header-layout", test_session_header_layout);
    g_test_add_func("/session/append-header", test_session_append_header);
    g_test_add_func("/session/build-then-verify", test_build_then_verify);
    g_test_add_func("/session/resign", test_resign_after_rewrite);
    g_test_add_func("/session/history-cap", test_replay_history_is_capped);
    g_test_add_func("/session/python/accepts-built", test_python_accepts_built_message);
    g_test_add_func("/session/python/accepts-unsigned", test_python_accepts_unsigned_with_empty_key);
    g_test_add_func("/session/python/refuses-tampered", test_python_refuses_tampered_message);
    return g_test_run();
}
