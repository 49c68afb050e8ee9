/* Connection files: names, profile folder layout and modes, round trip, atomic replace,
 * and what an unmodified Python reader (json + ipyparallel's URL building) sees. */
#include <herd/connfile.h>

#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test-util.h"

#define PYTHON_TIMEOUT_S 30

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */


typedef struct {
    char *root;    /* temporary folder, removed at teardown */
    char *profile; /* <root>/ipython/profile_default (created by herd_profile_dir_ensure) */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data)
{
    (void)data;
    f->root = test_make_tmp_dir("herd-connfile-XXXXXX");
    f->profile = g_build_filename(f->root, "ipython", "profile_default", NULL);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    test_remove_tmp_dir(&f->root);
    g_free(f->profile);
}

static int file_mode(const char *path)
{
    GStatBuf st;
    g_assert_cmpint(g_stat(path, &st), ==, 0);
    return st.st_mode & 07777;
}

static void sample_client(HerdConnInfo *ci)
{
    memset(ci, 0, sizeof *ci);
    ci->interface = g_strdup("tcp://127.0.0.1");
    ci->ssh = g_strdup("");
    ci->key = g_strdup("e56bb563-3b291df5705e9e8c858be716");
    ci->location = g_strdup("vm");
    ci->signature_scheme = g_strdup("hmac-sha256");
    ci->task_scheme = g_strdup("leastload");
    ci->ports = (HerdConnPorts){.registration = 59019, .control = 33155, .mux = 39343, .task = 34975,
                                .iopub = 51407, .notification = 32995, .broadcast = 55199};
}

static void sample_engine(HerdConnInfo *ci)
{
    memset(ci, 0, sizeof *ci);
    ci->interface = g_strdup("tcp://127.0.0.1");
    ci->ssh = g_strdup("user@gateway");
    ci->key = g_strdup("e56bb563-3b291df5705e9e8c858be716");
    ci->curve_serverkey = g_strdup("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    ci->location = g_strdup("vm");
    ci->signature_scheme = g_strdup("hmac-sha256");
    ci->ports = (HerdConnPorts){.registration = 59019, .control = 58619, .mux = 37439, .task = 50101,
                                .iopub = 55277, .hb_ping = 49767, .hb_pong = 55465,
                                .broadcast_engine = {51683, 59363}, .n_broadcast_engine = 2};
}

static void assert_conninfo_equal(const HerdConnInfo *a, const HerdConnInfo *b)
{
    g_assert_cmpstr(a->interface, ==, b->interface);
    g_assert_cmpstr(a->ssh, ==, b->ssh);
    g_assert_cmpstr(a->key, ==, b->key);
    g_assert_cmpstr(a->curve_serverkey, ==, b->curve_serverkey);
    g_assert_cmpstr(a->location, ==, b->location);
    g_assert_cmpstr(a->signature_scheme, ==, b->signature_scheme);
    g_assert_cmpstr(a->task_scheme, ==, b->task_scheme);
    g_assert_cmpmem(&a->ports, sizeof a->ports, &b->ports, sizeof b->ports);
}

static char *write_text_file(const char *dir, const char *name, const char *text)
{
    char *path = g_build_filename(dir, name, NULL);
    g_autoptr(GError) err = NULL;
    g_file_set_contents(path, text, -1, &err);
    g_assert_no_error(err);
    return path;
}

typedef struct {
    GMainLoop *loop;
    gboolean timed_out;
} WaitState;

static gboolean on_python_timeout(gpointer data)
{
    WaitState *w = data;
    w->timed_out = TRUE;
    g_main_loop_quit(w->loop);
    return G_SOURCE_REMOVE;
}

static void on_python_done(GObject *source, GAsyncResult *res, gpointer data)
{
    (void)source;
    (void)res;
    g_main_loop_quit(((WaitState *)data)->loop);
}

/* Run the system Python on script with args; bounded in time, the child is killed by PID
 * (GSubprocess) on timeout. Returns its stdout; asserts it exited 0. */
static char *run_python(const char *script, const char *const *args)
{
    const char *python = g_getenv("HERD_PYTHON") ? g_getenv("HERD_PYTHON") : "/usr/bin/python3";
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_ptr_array_add(argv, (gpointer)python);
    g_ptr_array_add(argv, (gpointer) "-c");
    g_ptr_array_add(argv, (gpointer)script);
    for (; args && *args; args++)
        g_ptr_array_add(argv, (gpointer)*args);
    g_ptr_array_add(argv, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(GSubprocess) proc = g_subprocess_newv((const char *const *)argv->pdata,
                                                    G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_MERGE,
                                                    &err);
    g_assert_no_error(err);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    WaitState w = {g_main_loop_new(ctx, FALSE), FALSE};
    GSource *timeout = g_timeout_source_new_seconds(PYTHON_TIMEOUT_S);
    g_source_set_callback(timeout, on_python_timeout, &w, NULL);
    g_source_attach(timeout, ctx);
    g_subprocess_wait_async(proc, NULL, on_python_done, &w);
    g_main_loop_run(w.loop);
    g_source_destroy(timeout);
    g_source_unref(timeout);
    if (w.timed_out) {
        g_subprocess_force_exit(proc);
        g_subprocess_wait(proc, NULL, NULL);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_loop_unref(w.loop);
    g_assert_false(w.timed_out);
    g_autofree char *out = NULL;
    GInputStream *stream = g_subprocess_get_stdout_pipe(proc);
    g_autoptr(GBytes) bytes = g_input_stream_read_bytes(stream, 1 << 20, NULL, &err);
    g_assert_no_error(err);
    out = g_strndup(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes));
    if (!g_subprocess_get_successful(proc))
        g_error("python failed:\n%s", out);
    return g_steal_pointer(&out);
}

/* ------------------------------------------------------------------------------------ */
/* tests                                                                                */
/* ------------------------------------------------------------------------------------ */

static void test_file_names(void)
{
    g_autofree char *plain_client = herd_connfile_path("/p", "", "client");
    g_autofree char *null_engine = herd_connfile_path("/p", NULL, "engine");
    g_autofree char *id_client = herd_connfile_path("/p", "1732700000-ab3x", "client");
    g_autofree char *id_engine = herd_connfile_path("/p", "x", "engine");
    g_assert_cmpstr(plain_client, ==, "/p/security/ipcontroller-client.json");
    g_assert_cmpstr(null_engine, ==, "/p/security/ipcontroller-engine.json");
    g_assert_cmpstr(id_client, ==, "/p/security/ipcontroller-1732700000-ab3x-client.json");
    g_assert_cmpstr(id_engine, ==, "/p/security/ipcontroller-x-engine.json");
}

static void test_profile_dir_layout(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    g_assert_no_error(err);
    g_autofree char *security = g_build_filename(f->profile, "security", NULL);
    g_autofree char *pid = g_build_filename(f->profile, "pid", NULL);
    g_autofree char *log = g_build_filename(f->profile, "log", NULL);
    g_autofree char *readme = g_build_filename(f->profile, "startup", "README", NULL);
    g_assert_cmpint(file_mode(security), ==, 0700);
    g_assert_cmpint(file_mode(pid), ==, 0700);
    g_assert_true(g_file_test(log, G_FILE_TEST_IS_DIR));
    g_assert_true(g_file_test(readme, G_FILE_TEST_IS_REGULAR));
    /* An existing, too open security/ is made private again; a second call is harmless. */
    g_assert_cmpint(g_chmod(security, 0755), ==, 0);
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    g_assert_no_error(err);
    g_assert_cmpint(file_mode(security), ==, 0700);
}

static void test_profile_dir_existing_folder(Fixture *f, gconstpointer data)
{
    (void)data;
    /* ipyparallel's tests use --profile-dir on an existing folder: fill it in, keep it. */
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(g_chmod(f->root, 0711), ==, 0);
    g_assert_true(herd_profile_dir_ensure(f->root, &err));
    g_assert_no_error(err);
    g_assert_cmpint(file_mode(f->root), ==, 0711);
    g_autofree char *security = g_build_filename(f->root, "security", NULL);
    g_assert_cmpint(file_mode(security), ==, 0700);
}

static void test_profile_dir_blocked_by_file(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(GError) err = NULL;
    g_autofree char *file = write_text_file(f->root, "security", "not a folder");
    g_assert_false(herd_profile_dir_ensure(f->root, &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, file));
}

static void roundtrip(Fixture *f, const char *side, HerdConnInfo *written)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    g_autofree char *path = herd_connfile_path(f->profile, "", side);
    g_assert_true(herd_connfile_write(path, side, written, &err));
    g_assert_no_error(err);
    g_assert_cmpint(file_mode(path), ==, 0600);
    HerdConnInfo read = {0};
    g_assert_true(herd_connfile_read(path, side, &read, &err));
    g_assert_no_error(err);
    assert_conninfo_equal(written, &read);
    herd_conninfo_clear(&read);
    herd_conninfo_clear(written);
}

static void test_roundtrip_client(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConnInfo ci;
    sample_client(&ci);
    roundtrip(f, "client", &ci);
}

static void test_roundtrip_engine(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConnInfo ci;
    sample_engine(&ci);
    roundtrip(f, "engine", &ci);
}

static void test_exact_layout(Fixture *f, gconstpointer data)
{
    (void)data;
    /* Byte for byte what ipcontroller 7.1 writes for the same values (spec 3.3, 3.4). */
    static const char expected_client[] = "{\n"
                                          "  \"ssh\": \"\",\n"
                                          "  \"interface\": \"tcp://127.0.0.1\",\n"
                                          "  \"registration\": 59019,\n"
                                          "  \"control\": 33155,\n"
                                          "  \"mux\": 39343,\n"
                                          "  \"task\": 34975,\n"
                                          "  \"task_scheme\": \"leastload\",\n"
                                          "  \"iopub\": 51407,\n"
                                          "  \"notification\": 32995,\n"
                                          "  \"broadcast\": 55199,\n"
                                          "  \"key\": \"e56bb563-3b291df5705e9e8c858be716\",\n"
                                          "  \"curve_serverkey\": null,\n"
                                          "  \"location\": \"vm\",\n"
                                          "  \"pack\": \"json\",\n"
                                          "  \"unpack\": \"json\",\n"
                                          "  \"signature_scheme\": \"hmac-sha256\"\n"
                                          "}";
    static const char expected_engine_tail[] = "  \"hb_pong\": 55465,\n"
                                               "  \"broadcast\": [\n"
                                               "    51683,\n"
                                               "    59363\n"
                                               "  ],\n"
                                               "  \"key\": ";
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    HerdConnInfo client, engine;
    sample_client(&client);
    sample_engine(&engine);
    g_autofree char *client_path = herd_connfile_path(f->profile, NULL, "client");
    g_autofree char *engine_path = herd_connfile_path(f->profile, NULL, "engine");
    g_assert_true(herd_connfile_write(client_path, "client", &client, &err));
    g_assert_true(herd_connfile_write(engine_path, "engine", &engine, &err));
    g_autofree char *client_text = NULL, *engine_text = NULL;
    g_assert_true(g_file_get_contents(client_path, &client_text, NULL, NULL));
    g_assert_true(g_file_get_contents(engine_path, &engine_text, NULL, NULL));
    g_assert_cmpstr(client_text, ==, expected_client);
    g_assert_nonnull(strstr(engine_text, expected_engine_tail));
    g_assert_null(strstr(engine_text, "notification"));
    g_assert_null(strstr(engine_text, "task_scheme"));
    herd_conninfo_clear(&client);
    herd_conninfo_clear(&engine);
}

static void test_atomic_replace(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    g_autofree char *path = herd_connfile_path(f->profile, "c1", "client");
    HerdConnInfo first, second;
    sample_client(&first);
    sample_client(&second);
    second.ports.registration = 10101;
    g_free(second.key);
    second.key = g_strdup("second-key");
    g_assert_true(herd_connfile_write(path, "client", &first, &err));
    g_autofree char *first_text = NULL;
    g_assert_true(g_file_get_contents(path, &first_text, NULL, NULL));
    /* A reader that opened the old file keeps reading the complete old file: the new one
     * arrives by rename(), never by rewriting in place. */
    int old_fd = g_open(path, O_RDONLY, 0);
    g_assert_cmpint(old_fd, >=, 0);
    g_assert_true(herd_connfile_write(path, "client", &second, &err));
    g_assert_no_error(err);
    char buf[4096];
    gssize n = read(old_fd, buf, sizeof buf - 1);
    g_assert_cmpint(n, ==, (gssize)strlen(first_text));
    buf[n] = '\0';
    g_assert_cmpstr(buf, ==, first_text);
    g_close(old_fd, NULL);
    HerdConnInfo read = {0};
    g_assert_true(herd_connfile_read(path, "client", &read, &err));
    g_assert_cmpint(read.ports.registration, ==, 10101);
    g_assert_cmpstr(read.key, ==, "second-key");
    g_assert_cmpint(file_mode(path), ==, 0600);
    /* No temporary file is left next to it. */
    g_autofree char *security = g_path_get_dirname(path);
    GDir *dir = g_dir_open(security, 0, NULL);
    int entries = 0;
    while (g_dir_read_name(dir) != NULL)
        entries++;
    g_dir_close(dir);
    g_assert_cmpint(entries, ==, 1);
    herd_conninfo_clear(&read);
    herd_conninfo_clear(&first);
    herd_conninfo_clear(&second);
}

/* What ipyparallel does with the files: json.load, every key present in order, the same
 * text json.dumps(indent=2) produces, and URLs built as interface + ':%i' % port. */
static const char python_check[] =
    "import json, sys\n"
    "client_path, engine_path = sys.argv[1], sys.argv[2]\n"
    "with open(client_path) as f: text = f.read()\n"
    "c = json.loads(text)\n"
    "assert text == json.dumps(c, indent=2), 'layout differs from json.dumps(indent=2)'\n"
    "assert list(c) == ['ssh', 'interface', 'registration', 'control', 'mux', 'task', 'task_scheme',\n"
    "    'iopub', 'notification', 'broadcast', 'key', 'curve_serverkey', 'location', 'pack', 'unpack',\n"
    "    'signature_scheme'], list(c)\n"
    "with open(engine_path) as f: text = f.read()\n"
    "e = json.loads(text)\n"
    "assert text == json.dumps(e, indent=2), 'engine layout differs'\n"
    "assert list(e) == ['ssh', 'interface', 'registration', 'control', 'mux', 'task', 'iopub',\n"
    "    'hb_ping', 'hb_pong', 'broadcast', 'key', 'curve_serverkey', 'location', 'pack', 'unpack',\n"
    "    'signature_scheme'], list(e)\n"
    "for key in ('control', 'task', 'mux', 'iopub', 'notification', 'registration', 'broadcast'):\n"
    "    print('client', key, c['interface'] + ':%i' % c[key])\n"
    "for key in ('registration', 'control', 'mux', 'task', 'iopub', 'hb_ping', 'hb_pong'):\n"
    "    print('engine', key, e['interface'] + ':%i' % e[key])\n"
    "for engine_id in range(3):\n"
    "    print('engine broadcast', engine_id, e['interface'] + ':%i' % e['broadcast'][engine_id % len(e['broadcast'])])\n"
    "print('curve', c['curve_serverkey'], e['curve_serverkey'])\n";

static void test_python_reads_files(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_profile_dir_ensure(f->profile, &err));
    HerdConnInfo client, engine;
    sample_client(&client);
    sample_engine(&engine);
    g_autofree char *client_path = herd_connfile_path(f->profile, "py", "client");
    g_autofree char *engine_path = herd_connfile_path(f->profile, "py", "engine");
    g_assert_true(herd_connfile_write(client_path, "client", &client, &err));
    g_assert_true(herd_connfile_write(engine_path, "engine", &engine, &err));
    const char *args[] = {client_path, engine_path, NULL};
    g_autofree char *out = run_python(python_check, args);
    g_assert_nonnull(strstr(out, "client registration tcp://127.0.0.1:59019\n"));
    g_assert_nonnull(strstr(out, "client notification tcp://127.0.0.1:32995\n"));
    g_assert_nonnull(strstr(out, "client broadcast tcp://127.0.0.1:55199\n"));
    g_assert_nonnull(strstr(out, "engine hb_pong tcp://127.0.0.1:55465\n"));
    g_assert_nonnull(strstr(out, "engine broadcast 0 tcp://127.0.0.1:51683\n"));
    g_assert_nonnull(strstr(out, "engine broadcast 1 tcp://127.0.0.1:59363\n"));
    g_assert_nonnull(strstr(out, "engine broadcast 2 tcp://127.0.0.1:51683\n"));
    g_assert_nonnull(strstr(out, "curve None rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\n"));
    herd_conninfo_clear(&client);
    herd_conninfo_clear(&engine);
}

static void assert_read_fails(Fixture *f, const char *side, const char *text, const char *expected)
{
    g_autofree char *path = write_text_file(f->root, "bad.json", text);
    HerdConnInfo ci;
    g_autoptr(GError) err = NULL;
    g_assert_false(herd_connfile_read(path, side, &ci, &err));
    g_assert_nonnull(err);
    if (strstr(err->message, expected) == NULL || strstr(err->message, path) == NULL)
        g_error("error '%s' should name '%s' and the file", err->message, expected);
    g_assert_null(ci.interface);
    g_assert_null(ci.key);
}

static const char good_client_fields[] =
    "\"ssh\": \"\", \"interface\": \"tcp://127.0.0.1\", \"registration\": 1, \"control\": 2, "
    "\"mux\": 3, \"task\": 4, \"task_scheme\": \"leastload\", \"iopub\": 5, \"notification\": 6, "
    "\"key\": \"k\", \"curve_serverkey\": null, \"location\": \"vm\", \"pack\": \"json\", "
    "\"unpack\": \"json\", \"signature_scheme\": \"hmac-sha256\"";

static void test_read_rejects_bad_files(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *missing = g_strdup_printf("{%s}", good_client_fields);
    assert_read_fails(f, "client", missing, "\"broadcast\" is missing");
    g_autofree char *string_port = g_strdup_printf("{%s, \"broadcast\": \"7\"}", good_client_fields);
    assert_read_fails(f, "client", string_port, "\"broadcast\" must be an integer port");
    g_autofree char *big_port = g_strdup_printf("{%s, \"broadcast\": 70000}", good_client_fields);
    assert_read_fails(f, "client", big_port, "\"broadcast\" must be an integer port");
    g_autofree char *list_port = g_strdup_printf("{%s, \"broadcast\": [7]}", good_client_fields);
    assert_read_fails(f, "client", list_port, "\"broadcast\"");
    assert_read_fails(f, "client", "{\"ssh\": \"\", \"interface\": 5}", "\"interface\" must be a string");
    assert_read_fails(f, "client", "[1, 2]", "not a JSON object");
    assert_read_fails(f, "client", "{\"ssh\": ", "bad.json");
    g_autofree char *pickle = g_strdup_printf("{%s, \"broadcast\": 7}", good_client_fields);
    char *pack = strstr(pickle, "\"pack\": \"json\"");
    memcpy(pack, "\"pack\": \"pckl\"", strlen("\"pack\": \"pckl\""));
    assert_read_fails(f, "client", pickle, "\"pack\" must be \"json\"");
    /* the engine file's broadcast is a list; the client file lacks hb_ping */
    g_autofree char *engine = g_strdup_printf("{%s, \"hb_ping\": 8, \"hb_pong\": 9, \"broadcast\": 7}",
                                              good_client_fields);
    assert_read_fails(f, "engine", engine, "\"broadcast\" must be a list");
    g_autofree char *empty_list = g_strdup_printf("{%s, \"hb_ping\": 8, \"hb_pong\": 9, \"broadcast\": []}",
                                                  good_client_fields);
    assert_read_fails(f, "engine", empty_list, "\"broadcast\" must hold 1 to 8 ports");
    g_autofree char *client_as_engine = g_strdup_printf("{%s, \"broadcast\": [7]}", good_client_fields);
    assert_read_fails(f, "engine", client_as_engine, "\"hb_ping\" is missing");
}

static void test_read_optional_fields(Fixture *f, gconstpointer data)
{
    (void)data;
    /* ssh and curve_serverkey are optional for peers; a file without them still loads. */
    g_autofree char *text = g_strdup_printf("{%s, \"broadcast\": 7}", good_client_fields);
    char *ssh = strstr(text, "\"ssh\": \"\", ");
    memmove(ssh, ssh + strlen("\"ssh\": \"\", "), strlen(ssh + strlen("\"ssh\": \"\", ")) + 1);
    g_autofree char *path = write_text_file(f->root, "ok.json", text);
    HerdConnInfo ci;
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_connfile_read(path, "client", &ci, &err));
    g_assert_no_error(err);
    g_assert_cmpstr(ci.ssh, ==, "");
    g_assert_null(ci.curve_serverkey);
    g_assert_cmpint(ci.ports.broadcast, ==, 7);
    g_assert_cmpstr(ci.task_scheme, ==, "leastload");
    herd_conninfo_clear(&ci);
}

static void test_write_rejects_bad_info(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(f->root, "x.json", NULL);
    HerdConnInfo ci;
    sample_client(&ci);
    ci.ports.mux = 0;
    g_assert_false(herd_connfile_write(path, "client", &ci, &err));
    g_assert_nonnull(strstr(err->message, "\"mux\""));
    g_clear_error(&err);
    herd_conninfo_clear(&ci);
    sample_engine(&ci);
    ci.ports.n_broadcast_engine = 0;
    g_assert_false(herd_connfile_write(path, "engine", &ci, &err));
    g_assert_nonnull(strstr(err->message, "broadcast"));
    g_clear_error(&err);
    g_assert_false(herd_connfile_write(path, "both", &ci, &err));
    g_assert_nonnull(strstr(err->message, "both"));
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    herd_conninfo_clear(&ci);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/connfile/file-names", test_file_names);
#define ADD(name, fn) g_test_add("/connfile/" name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("profile-dir/layout-and-modes", test_profile_dir_layout);
    ADD("profile-dir/existing-folder", test_profile_dir_existing_folder);
    ADD("profile-dir/blocked-by-file", test_profile_dir_blocked_by_file);
    ADD("roundtrip/client", test_roundtrip_client);
    ADD("roundtrip/engine", test_roundtrip_engine);
    ADD("exact-layout", test_exact_layout);
    ADD("atomic-replace", test_atomic_replace);
    ADD("python-reads-files", test_python_reads_files);
    ADD("read/rejects-bad-files", test_read_rejects_bad_files);
    ADD("read/optional-fields", test_read_optional_fields);
    ADD("write/rejects-bad-info", test_write_rejects_bad_info);
#undef ADD
    return g_test_run();
}
