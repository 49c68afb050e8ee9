/* herd — unit tests of the tcp and ipc transport plugins, loaded through the plugin loader,
 * with a real Python (pyzmq) DEALER as the peer where reachability is the point. */
#include <herd/config.h>
#include <herd/plugin.h>
#include <herd/transport.h>

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <zmq.h>
#include "test-util.h"

/* Debian's interpreter, the one python3-zmq is installed for; HERD_TEST_PYTHON overrides. */
#define DEFAULT_TEST_PYTHON "/usr/bin/python3"
#define PEER_TIMEOUT_MS 15000

/* Created on first use, so a test that changes the environment can run before any zmq
 * thread exists. */
static void *zctx;
/* $XDG_RUNTIME_DIR for the whole run: a scratch folder, removed at exit. */
static char *runtime_dir;

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct Transport {
    HerdPlugin *plugin;
    const HerdTransportOps *ops;
} Transport;

static Transport load_transport(const char *name)
{
    g_autoptr(GError) err = NULL;
    Transport t = {0};
    t.plugin = herd_plugin_load(HERD_PLUGIN_TRANSPORT, name, NULL, &err);
    g_assert_no_error(err);
    t.ops = herd_plugin_descriptor(t.plugin)->ops;
    return t;
}

static HerdTransportConfig make_config(const char *ip, const char *stem, GKeyFile *conf)
{
    HerdTransportConfig cfg = {
        .side = "client", .ip = ip, .stem = stem, .conf = conf, .next_port = NULL, .pool = NULL};
    return cfg;
}

static void *new_router(void)
{
    if (zctx == NULL)
        zctx = zmq_ctx_new();
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    return s;
}

/* A --ports pool: hands out ports[0..n-1] in order, then 0 ("any"). */
typedef struct PortPool {
    int ports[4];
    guint n, next;
} PortPool;

static int pool_next_port(gpointer data)
{
    PortPool *pool = data;
    return pool->next < pool->n ? pool->ports[pool->next++] : 0;
}

/* Binds with port 0 take the pool's ports first. */
static void use_pool(HerdTransportConfig *cfg, PortPool *pool)
{
    cfg->next_port = pool_next_port;
    cfg->pool = pool;
}

/* ops->open that must succeed. */
static gpointer open_ok(const Transport *t, const HerdTransportConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    gpointer self = t->ops->open(cfg, &err);
    g_assert_no_error(err);
    return self;
}

static const char *test_python(void)
{
    const char *py = g_getenv("HERD_TEST_PYTHON");
    return py != NULL ? py : DEFAULT_TEST_PYTHON;
}

static gboolean python_has_zmq(void)
{
    const char *argv[] = {test_python(), "-c", "import zmq", NULL};
    int status = -1;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL, NULL,
                      NULL, NULL, NULL, &status, NULL))
        return FALSE;
    return g_spawn_check_wait_status(status, NULL);
}

/* The peer builds its URL exactly as ipyparallel's Client and engine do:
 * interface + ":%i" % port. IPv6 is switched on at the context level, which is how a
 * Python user enables it for ipyparallel (zmq.Context.instance().ipv6 = True). */
static const char PYTHON_DEALER[] = "import signal, sys, zmq\n"
                                    "signal.alarm(20)\n"
                                    "interface, port, ipv6 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'\n"
                                    "ctx = zmq.Context.instance()\n"
                                    "if ipv6: ctx.ipv6 = True\n"
                                    "s = ctx.socket(zmq.DEALER); s.linger = 0; s.rcvtimeo = 15000\n"
                                    "s.connect(interface + ':%i' % port)\n"
                                    "s.send(b'ping')\n"
                                    "print(s.recv().decode())\n";

/* Starts the Python DEALER, answers its "ping" on router, and checks it printed "pong". */
static void assert_python_peer_reaches(void *router, const char *interface, int port, gboolean ipv6)
{
    if (!python_has_zmq()) {
        g_test_skip("no Python with pyzmq (set HERD_TEST_PYTHON)");
        return;
    }
    g_autofree char *port_s = g_strdup_printf("%d", port);
    g_autoptr(GError) err = NULL;
    g_autoptr(GSubprocess) peer =
        g_subprocess_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE, &err, test_python(), "-c", PYTHON_DEALER, interface,
                         port_s, ipv6 ? "1" : "0", NULL);
    g_assert_no_error(err);

    zmq_pollitem_t item = {.socket = router, .events = ZMQ_POLLIN};
    int ready = zmq_poll(&item, 1, PEER_TIMEOUT_MS);
    if (ready != 1)
        g_subprocess_force_exit(peer); /* signals the peer's own pid only */
    g_assert_cmpint(ready, ==, 1);

    zmq_msg_t identity, body;
    zmq_msg_init(&identity);
    zmq_msg_init(&body);
    g_assert_cmpint(zmq_msg_recv(&identity, router, 0), >, 0);
    g_assert_cmpint(zmq_msg_recv(&body, router, 0), ==, 4);
    g_assert_cmpmem(zmq_msg_data(&body), 4, "ping", 4);
    g_assert_cmpint(zmq_msg_send(&identity, router, ZMQ_SNDMORE), >, 0);
    g_assert_cmpint(zmq_send(router, "pong", 4, 0), ==, 4);
    zmq_msg_close(&body);

    g_autofree char *out = NULL;
    g_subprocess_communicate_utf8(peer, NULL, NULL, &out, NULL, &err);
    g_assert_no_error(err);
    g_assert_true(g_subprocess_get_if_exited(peer));
    g_assert_cmpint(g_subprocess_get_exit_status(peer), ==, 0);
    g_assert_cmpstr(out, ==, "pong\n");
}

/* A port the kernel just handed out and released. A plain socket that never listened frees
 * its port at close(), unlike a zmq socket whose listener closes later in its I/O thread. */
static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    g_assert_cmpint(fd, >=, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    g_assert_cmpint(bind(fd, (struct sockaddr *)&addr, sizeof addr), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&addr, &len), ==, 0);
    close(fd);
    return ntohs(addr.sin_port);
}

/* bind() that must succeed, reporting the transport's message if it does not. */
static int bind_ok(const Transport *t, gpointer self, void *zsock, const char *channel, int port)
{
    g_autoptr(GError) err = NULL;
    int bound = -1;
    gboolean ok = t->ops->bind(self, zsock, channel, port, &bound, &err);
    g_assert_no_error(err);
    g_assert_true(ok);
    return bound;
}

/* ---- tcp -------------------------------------------------------------------------------- */

static void assert_tcp_interface(const Transport *t, const char *ip, const char *expected)
{
    HerdTransportConfig cfg = make_config(ip, "herd-test", NULL);
    gpointer self = open_ok(t, &cfg);
    g_assert_cmpstr(t->ops->interface(self), ==, expected);
    t->ops->close(self);
}

static void test_tcp_interface_forms(void)
{
    Transport t = load_transport("tcp");
    assert_tcp_interface(&t, NULL, "tcp://127.0.0.1");
    assert_tcp_interface(&t, "127.0.0.1", "tcp://127.0.0.1");
    assert_tcp_interface(&t, "*", "tcp://*");
    assert_tcp_interface(&t, "0.0.0.0", "tcp://0.0.0.0");
    assert_tcp_interface(&t, "::1", "tcp://[::1]");
    assert_tcp_interface(&t, "[::1]", "tcp://[::1]");

    HerdTransportConfig cfg = make_config("bad ip", "herd-test", NULL);
    g_autoptr(GError) err = NULL;
    g_assert_null(t.ops->open(&cfg, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
    g_assert_nonnull(strstr(err->message, "\"bad ip\""));
    herd_plugin_unload(t.plugin);
}

static void test_tcp_unknown_key(void)
{
    Transport t = load_transport("tcp");
    g_autoptr(GKeyFile) conf = g_key_file_new();
    g_key_file_set_string(conf, "transport.tcp", "interfcae", "eth0");
    HerdTransportConfig cfg = make_config("127.0.0.1", "herd-test", conf);
    g_autoptr(GError) err = NULL;
    g_assert_null(t.ops->open(&cfg, &err));
    g_assert_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY);
    g_assert_nonnull(strstr(err->message, "\"interfcae\""));
    g_assert_nonnull(strstr(err->message, "[transport.tcp]"));
    herd_plugin_unload(t.plugin);
}

static void check_tcp_python_reach(const char *ip, gboolean ipv6)
{
    Transport t = load_transport("tcp");
    HerdTransportConfig cfg = make_config(ip, "herd-test", NULL);
    gpointer self = open_ok(&t, &cfg);
    void *router = new_router();
    int port = bind_ok(&t, self, router, "registration", 0);
    g_assert_cmpint(port, >, 0);
    assert_python_peer_reaches(router, t.ops->interface(self), port, ipv6);
    zmq_close(router);
    t.ops->close(self);
    herd_plugin_unload(t.plugin);
}

static void test_tcp_ipv4_python_peer(void)
{
    check_tcp_python_reach("127.0.0.1", FALSE);
}

static void test_tcp_ipv6_python_peer(void)
{
    check_tcp_python_reach("::1", TRUE);
}

static void test_tcp_port_pool(void)
{
    Transport t = load_transport("tcp");
    PortPool pool = {.ports = {free_tcp_port(), free_tcp_port()}, .n = 2};
    HerdTransportConfig cfg = make_config("127.0.0.1", "herd-test", NULL);
    use_pool(&cfg, &pool);
    gpointer self = open_ok(&t, &cfg);

    void *sockets[4];
    int bound[4];
    for (int i = 0; i < 4; i++)
        sockets[i] = new_router();
    /* An explicit port (--reuse) does not consume the pool. */
    int explicit_port = free_tcp_port();
    bound[0] = bind_ok(&t, self, sockets[0], "mux", explicit_port);
    g_assert_cmpint(bound[0], ==, explicit_port);
    g_assert_cmpuint(pool.next, ==, 0);
    /* Port 0 takes the pool in order, then falls back to a kernel-chosen port. */
    bound[1] = bind_ok(&t, self, sockets[1], "task", 0);
    bound[2] = bind_ok(&t, self, sockets[2], "control", 0);
    bound[3] = bind_ok(&t, self, sockets[3], "iopub", 0);
    g_assert_cmpint(bound[1], ==, pool.ports[0]);
    g_assert_cmpint(bound[2], ==, pool.ports[1]);
    g_assert_cmpint(bound[3], >, 0);
    g_assert_cmpint(bound[3], !=, pool.ports[0]);
    g_assert_cmpint(bound[3], !=, pool.ports[1]);
    for (int i = 0; i < 4; i++)
        zmq_close(sockets[i]);
    t.ops->close(self);
    herd_plugin_unload(t.plugin);
}

static void test_tcp_busy_port(void)
{
    Transport t = load_transport("tcp");
    void *holder = new_router();
    g_assert_cmpint(zmq_bind(holder, "tcp://127.0.0.1:*"), ==, 0);
    char endpoint[128];
    size_t size = sizeof endpoint;
    zmq_getsockopt(holder, ZMQ_LAST_ENDPOINT, endpoint, &size);
    int busy = atoi(strrchr(endpoint, ':') + 1);

    PortPool pool = {.ports = {busy}, .n = 1};
    HerdTransportConfig cfg = make_config("127.0.0.1", "herd-test", NULL);
    use_pool(&cfg, &pool);
    gpointer self = open_ok(&t, &cfg);
    void *router = new_router();
    int port = -1;

    g_autoptr(GError) err = NULL;
    g_assert_false(t.ops->bind(self, router, "mux", busy, &port, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE);
    g_assert_nonnull(strstr(err->message, endpoint));
    g_assert_nonnull(strstr(err->message, "already in use"));
    g_assert_nonnull(strstr(err->message, "\"mux\""));
    g_clear_error(&err);

    g_assert_false(t.ops->bind(self, router, "task", 0, &port, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE);
    g_assert_nonnull(strstr(err->message, "--ports"));
    g_clear_error(&err);

    g_assert_false(t.ops->bind(self, router, "task", 70000, &port, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);

    zmq_close(router);
    zmq_close(holder);
    t.ops->close(self);
    herd_plugin_unload(t.plugin);
}

/* ---- ipc -------------------------------------------------------------------------------- */

/* What most ipc tests start from: the loaded plugin and a scratch folder, removed with
 * everything in it afterwards. */
typedef struct IpcFixture {
    Transport t;
    char *root;
} IpcFixture;

static void ipc_setup(IpcFixture *f, gconstpointer data)
{
    (void)data;
    f->t = load_transport("ipc");
    f->root = test_make_tmp_dir("herd-ipc-XXXXXX");
}

static void ipc_teardown(IpcFixture *f, gconstpointer data)
{
    (void)data;
    test_remove_tmp_dir(&f->root);
    herd_plugin_unload(f->t.plugin);
}

static GKeyFile *ipc_conf(const char *dir)
{
    GKeyFile *conf = g_key_file_new();
    g_key_file_set_string(conf, "transport.ipc", "dir", dir);
    return conf;
}

static gpointer open_ipc(const Transport *t, const char *dir, const char *stem, GError **err)
{
    g_autoptr(GKeyFile) conf = ipc_conf(dir);
    HerdTransportConfig cfg = make_config(NULL, stem, conf);
    return t->ops->open(&cfg, err);
}

/* open_ipc that must succeed. */
static gpointer open_ipc_ok(const Transport *t, const char *dir, const char *stem)
{
    g_autoptr(GKeyFile) conf = ipc_conf(dir);
    HerdTransportConfig cfg = make_config(NULL, stem, conf);
    return open_ok(t, &cfg);
}

static guint file_mode(const char *path)
{
    struct stat st;
    g_assert_cmpint(stat(path, &st), ==, 0);
    return st.st_mode & 07777;
}

static void test_ipc_folder_created_private(IpcFixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *dir = g_build_filename(f->root, "run", "herd", NULL);
    gpointer self = open_ipc_ok(&f->t, dir, "herd-abc");
    g_assert_cmpuint(file_mode(dir), ==, 0700);
    g_autofree char *expected = g_strconcat("ipc://", dir, "/herd-abc", NULL);
    g_assert_cmpstr(f->t.ops->interface(self), ==, expected);
    f->t.ops->close(self);
}

/* Without a configured dir: $XDG_RUNTIME_DIR/herd. main() pointed XDG_RUNTIME_DIR at a
 * scratch folder before any thread existed (setenv is not thread-safe). */
static void test_ipc_default_folder(void)
{
    Transport t = load_transport("ipc");
    HerdTransportConfig cfg = make_config(NULL, "herd-def", NULL);
    gpointer self = open_ok(&t, &cfg);
    g_autofree char *dir = g_build_filename(runtime_dir, "herd", NULL);
    g_autofree char *expected = g_strconcat("ipc://", dir, "/herd-def", NULL);
    g_assert_cmpstr(t.ops->interface(self), ==, expected);
    g_assert_cmpuint(file_mode(dir), ==, 0700);
    t.ops->close(self);
    g_rmdir(dir);
    herd_plugin_unload(t.plugin);
}

/* Without XDG_RUNTIME_DIR: <tmp>/herd-<uid>. Runs in a child process, so it can unset the
 * variable before any thread exists and leaves the parent's environment alone. */
static void test_ipc_tmp_fallback_folder(void)
{
    if (!g_test_subprocess()) {
        g_test_trap_subprocess(NULL, 30 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_DEFAULT);
        g_test_trap_assert_passed();
        return;
    }
    g_unsetenv("XDG_RUNTIME_DIR");
    g_autofree char *dir = g_strdup_printf("%s/herd-%u", g_get_tmp_dir(), (unsigned)geteuid());
    gboolean existed = g_file_test(dir, G_FILE_TEST_EXISTS);
    Transport t = load_transport("ipc");
    HerdTransportConfig cfg = make_config(NULL, "herd-tmp", NULL);
    gpointer self = open_ok(&t, &cfg);
    g_autofree char *expected = g_strconcat("ipc://", dir, "/herd-tmp", NULL);
    g_assert_cmpstr(t.ops->interface(self), ==, expected);
    g_assert_cmpuint(file_mode(dir), ==, 0700);
    t.ops->close(self);
    if (!existed)
        g_rmdir(dir); /* only what this test created */
    herd_plugin_unload(t.plugin);
}

static void test_ipc_refuses_shared_folder(IpcFixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *open_dir = g_build_filename(f->root, "open", NULL);
    g_assert_cmpint(g_mkdir(open_dir, 0700), ==, 0);
    g_assert_cmpint(g_chmod(open_dir, 0750), ==, 0);
    g_autoptr(GError) err = NULL;
    g_assert_null(open_ipc(&f->t, open_dir, "herd-x", &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
    g_assert_nonnull(strstr(err->message, open_dir));
    g_assert_nonnull(strstr(err->message, "group or others"));
    g_assert_cmpuint(file_mode(open_dir), ==, 0750); /* refused, not silently "fixed" */
    g_clear_error(&err);

    /* A folder owned by someone else: as root, hand one to nobody; otherwise "/" is root's. */
    g_autofree char *foreign = NULL;
    if (geteuid() == 0) {
        foreign = g_build_filename(f->root, "foreign", NULL);
        g_assert_cmpint(g_mkdir(foreign, 0700), ==, 0);
        g_assert_cmpint(chown(foreign, 65534, 65534), ==, 0);
    } else {
        foreign = g_strdup("/");
    }
    g_assert_null(open_ipc(&f->t, foreign, "herd-x", &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
    g_assert_nonnull(strstr(err->message, "belongs to uid"));
    g_clear_error(&err);

    g_assert_null(open_ipc(&f->t, "relative/dir", "herd-x", &err));
    g_assert_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE);
    g_clear_error(&err);

    g_autoptr(GKeyFile) conf = ipc_conf(f->root);
    g_key_file_set_string(conf, "transport.ipc", "directory", "/x");
    HerdTransportConfig cfg = make_config(NULL, "herd-x", conf);
    g_assert_null(f->t.ops->open(&cfg, &err));
    g_assert_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY);
    g_assert_nonnull(strstr(err->message, "\"directory\""));
}

/* A folder name of exactly n bytes under root. */
static char *dir_of_length(const char *root, gsize n)
{
    gsize used = strlen(root) + 1;
    g_assert_cmpuint(n, >, used);
    g_autofree char *name = g_strnfill(n - used, 'd');
    return g_build_filename(root, name, NULL);
}

static void test_ipc_path_length(IpcFixture *f, gconstpointer data)
{
    (void)data;
    const gsize limit = sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1;
    g_assert_cmpuint(limit, ==, 107);

    /* Refused at open when not even "<stem>:1" fits. */
    g_autofree char *too_long = dir_of_length(f->root, limit);
    g_autoptr(GError) err = NULL;
    g_assert_null(open_ipc(&f->t, too_long, "herd-x", &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_FILENAME_TOO_LONG);
    g_assert_nonnull(strstr(err->message, too_long));
    g_assert_nonnull(strstr(err->message, "107"));
    g_clear_error(&err);

    /* "<dir>/s:1" is exactly 107 bytes: fits; ":10" does not. */
    g_autofree char *edge = dir_of_length(f->root, limit - strlen("/s:1"));
    gpointer self = open_ipc_ok(&f->t, edge, "s");
    void *router = new_router();
    int port = bind_ok(&f->t, self, router, "mux", 1);
    g_assert_false(f->t.ops->bind(self, router, "task", 10, &port, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_FILENAME_TOO_LONG);
    g_autofree char *long_path = g_strconcat(edge, "/s:10", NULL);
    g_assert_nonnull(strstr(err->message, long_path));
    zmq_close(router);
    f->t.ops->close(self);
}

static void test_ipc_refuses_live_endpoint(IpcFixture *f, gconstpointer data)
{
    (void)data;
    gpointer first = open_ipc_ok(&f->t, f->root, "herd-live");
    void *router1 = new_router();
    int port = bind_ok(&f->t, first, router1, "registration", 0);

    gpointer second = open_ipc_ok(&f->t, f->root, "herd-live");
    void *router2 = new_router();
    int port2 = 0;
    g_autoptr(GError) err = NULL;
    g_assert_false(f->t.ops->bind(second, router2, "registration", port, &port2, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE);
    g_assert_nonnull(strstr(err->message, "already in use by a running controller"));
    g_autofree char *path = g_strdup_printf("%s/herd-live:%d", f->root, port);
    g_assert_nonnull(strstr(err->message, path));
    /* The first controller keeps its endpoint. */
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));

    zmq_close(router2);
    f->t.ops->close(second);
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));
    zmq_close(router1);
    f->t.ops->close(first);
}

/* Leaves a socket file that nothing listens on, like a controller killed with SIGKILL. */
static void make_stale_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    g_assert_cmpint(fd, >=, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    g_strlcpy(addr.sun_path, path, sizeof addr.sun_path);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&addr, sizeof addr), ==, 0);
    close(fd);
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));
}

static void test_ipc_stale_file_replaced(IpcFixture *f, gconstpointer data)
{
    (void)data;
    gpointer self = open_ipc_ok(&f->t, f->root, "herd-stale");
    g_autofree char *path = g_strdup_printf("%s/herd-stale:4242", f->root);
    make_stale_socket(path);

    void *router = new_router();
    int port = bind_ok(&f->t, self, router, "mux", 4242);
    g_assert_cmpint(port, ==, 4242);
    assert_python_peer_reaches(router, f->t.ops->interface(self), port, FALSE);

    /* Something that is not a socket is never removed. */
    g_autofree char *plain = g_strdup_printf("%s/herd-stale:4343", f->root);
    g_assert_true(g_file_set_contents(plain, "keep me", -1, NULL));
    void *router2 = new_router();
    g_autoptr(GError) err = NULL;
    g_assert_false(f->t.ops->bind(self, router2, "task", 4343, &port, &err));
    g_assert_error(err, G_IO_ERROR, G_IO_ERROR_EXISTS);
    g_assert_true(g_file_test(plain, G_FILE_TEST_IS_REGULAR));

    zmq_close(router2);
    zmq_close(router);
    f->t.ops->close(self);
}

static void test_ipc_close_removes_files(IpcFixture *f, gconstpointer data)
{
    (void)data;
    PortPool pool = {.ports = {5001}, .n = 1};
    g_autoptr(GKeyFile) conf = ipc_conf(f->root);
    HerdTransportConfig cfg = make_config(NULL, "herd-close", conf);
    use_pool(&cfg, &pool);
    gpointer self = open_ok(&f->t, &cfg);

    const char *channels[] = {"mux", "task", "iopub"};
    void *sockets[3];
    char *paths[3];
    for (int i = 0; i < 3; i++) {
        sockets[i] = new_router();
        int port = bind_ok(&f->t, self, sockets[i], channels[i], 0);
        paths[i] = g_strdup_printf("%s/herd-close:%d", f->root, port);
        g_assert_true(g_file_test(paths[i], G_FILE_TEST_EXISTS));
        if (i == 0)
            g_assert_cmpint(port, ==, 5001); /* the pool first */
    }
    f->t.ops->close(self);
    for (int i = 0; i < 3; i++) {
        g_assert_false(g_file_test(paths[i], G_FILE_TEST_EXISTS));
        zmq_close(sockets[i]);
        g_free(paths[i]);
    }
}

static void test_ipc_python_peer(IpcFixture *f, gconstpointer data)
{
    (void)data;
    gpointer self = open_ipc_ok(&f->t, f->root, "herd-py");
    void *router = new_router();
    int port = bind_ok(&f->t, self, router, "registration", 0);
    g_assert_cmpint(port, >, 0);
    assert_python_peer_reaches(router, f->t.ops->interface(self), port, FALSE);
    zmq_close(router);
    f->t.ops->close(self);
}

#define ADD_IPC(name, fn) g_test_add("/transport/ipc/" name, IpcFixture, NULL, ipc_setup, fn, ipc_teardown)

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_unsetenv("HERD_PLUGIN_PATH"); /* load the plugins of this build tree */
    runtime_dir = g_dir_make_tmp("herd-xdg-XXXXXX", NULL);
    g_assert_nonnull(runtime_dir);
    g_setenv("XDG_RUNTIME_DIR", runtime_dir, TRUE);
    g_test_add_func("/transport/tcp/interface-forms", test_tcp_interface_forms);
    g_test_add_func("/transport/tcp/unknown-key", test_tcp_unknown_key);
    g_test_add_func("/transport/tcp/ipv4-python-peer", test_tcp_ipv4_python_peer);
    g_test_add_func("/transport/tcp/ipv6-python-peer", test_tcp_ipv6_python_peer);
    g_test_add_func("/transport/tcp/port-pool", test_tcp_port_pool);
    g_test_add_func("/transport/tcp/busy-port", test_tcp_busy_port);
    ADD_IPC("folder-created-private", test_ipc_folder_created_private);
    g_test_add_func("/transport/ipc/default-folder", test_ipc_default_folder);
    g_test_add_func("/transport/ipc/tmp-fallback-folder", test_ipc_tmp_fallback_folder);
    ADD_IPC("refuses-shared-folder", test_ipc_refuses_shared_folder);
    ADD_IPC("path-length", test_ipc_path_length);
    ADD_IPC("refuses-live-endpoint", test_ipc_refuses_live_endpoint);
    ADD_IPC("stale-file-replaced", test_ipc_stale_file_replaced);
    ADD_IPC("close-removes-files", test_ipc_close_removes_files);
    ADD_IPC("python-peer", test_ipc_python_peer);
    int rc = g_test_run();
    if (zctx != NULL)
        zmq_ctx_term(zctx);
    test_remove_tree(runtime_dir);
    g_free(runtime_dir);
    return rc;
}
