/* Configuration: defaults, where files are looked for, precedence of the sources, the
 * ipcontroller flag spellings, value checks and the errors that name the culprit. */
#include <herd/config.h>

#include <glib/gstdio.h>
#include <stdarg.h>
#include <string.h>
#include "test-util.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */


typedef struct {
    char *root;    /* temporary folder, removed at teardown; also $IPYTHONDIR */
    char *profile; /* <root>/profile_default, the default profile folder */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data)
{
    (void)data;
    f->root = test_make_tmp_dir("herd-config-XXXXXX");
    f->profile = test_make_dir(f->root, "profile_default");
    /* Keep the user's environment out of the results. */
    g_setenv("IPYTHONDIR", f->root, TRUE);
    g_unsetenv("IPP_SESSION_KEY");
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    test_remove_tmp_dir(&f->root);
    g_free(f->profile);
    g_unsetenv("IPYTHONDIR");
    g_unsetenv("IPP_SESSION_KEY");
}

static char *write_file(const char *dir, const char *name, const char *text)
{
    char *path = g_build_filename(dir, name, NULL);
    g_autoptr(GError) err = NULL;
    g_file_set_contents(path, text, -1, &err);
    g_assert_no_error(err);
    return path;
}

/* herd_config_load("herdd", first, ..., NULL); load_ok(NULL) for no flags. */
static HerdConfig *load_ok(const char *first, ...);
static HerdConfig *load_ok(const char *first, ...)
{
    va_list ap;
    g_autoptr(GError) err = NULL;
    HerdConfig *cfg;
    if (first == NULL) {
        char *argv[] = {"herdd", NULL};
        cfg = herd_config_load(1, argv, &err);
    } else {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_ptr_array_add(argv, (gpointer) "herdd");
        g_ptr_array_add(argv, (gpointer)first);
        va_start(ap, first);
        const char *arg;
        while ((arg = va_arg(ap, const char *)) != NULL)
            g_ptr_array_add(argv, (gpointer)arg);
        va_end(ap);
        g_ptr_array_add(argv, NULL);
        cfg = herd_config_load((int)argv->len - 1, (char **)argv->pdata, &err);
    }
    g_assert_no_error(err);
    g_assert_nonnull(cfg);
    return cfg;
}

/* Loading must fail with code, and the message must contain every NULL-terminated needle. */
static void assert_load_fails(HerdConfigError code, const char *const *args, ...) G_GNUC_NULL_TERMINATED;
static void assert_load_fails(HerdConfigError code, const char *const *args, ...)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_ptr_array_add(argv, (gpointer) "herdd");
    for (; *args; args++)
        g_ptr_array_add(argv, (gpointer)*args);
    g_ptr_array_add(argv, NULL);
    g_autoptr(GError) err = NULL;
    HerdConfig *cfg = herd_config_load((int)argv->len - 1, (char **)argv->pdata, &err);
    g_assert_null(cfg);
    g_assert_error(err, HERD_CONFIG_ERROR, (int)code);
    va_list ap;
    va_start(ap, args);
    const char *needle;
    while ((needle = va_arg(ap, const char *)) != NULL)
        if (strstr(err->message, needle) == NULL)
            g_error("error message '%s' should contain '%s'", err->message, needle);
    va_end(ap);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static gboolean has_warning(const HerdConfig *cfg, const char *a, const char *b)
{
    for (guint i = 0; i < cfg->warnings->len; i++) {
        const char *w = cfg->warnings->pdata[i];
        if (strstr(w, a) && (b == NULL || strstr(w, b)))
            return TRUE;
    }
    return FALSE;
}

static char *keyfile_value(const HerdConfig *cfg, const char *group, const char *key)
{
    return g_key_file_get_string(cfg->keyfile, group, key, NULL);
}

/* ------------------------------------------------------------------------------------ */
/* defaults and where                                                                   */
/* ------------------------------------------------------------------------------------ */

static void test_defaults(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->ipython_dir, ==, f->root);
    g_assert_cmpstr(cfg->profile, ==, "default");
    g_assert_cmpstr(cfg->profile_dir, ==, f->profile);
    g_assert_null(cfg->config_file);
    g_assert_cmpstr(cfg->cluster_id, ==, "");
    g_assert_cmpstr(cfg->ip, ==, "127.0.0.1");
    g_assert_cmpstr(cfg->client_ip, ==, "127.0.0.1");
    g_assert_cmpstr(cfg->engine_ip, ==, "127.0.0.1");
    g_assert_cmpstr(cfg->location, ==, g_get_host_name());
    g_assert_cmpstr(cfg->client_transport, ==, "tcp");
    g_assert_cmpstr(cfg->engine_transport, ==, "tcp");
    g_assert_cmpuint(cfg->ports->len, ==, 0);
    g_assert_cmpstr(cfg->ssh_client, ==, "");
    g_assert_cmpstr(cfg->ssh_engine, ==, "");
    g_assert_cmpint(cfg->ping_ms, ==, 3000);
    g_assert_cmpint(cfg->heartbeat_misses, ==, 10);
    g_assert_cmpfloat(cfg->registration_timeout_s, ==, 30);
    g_assert_false(cfg->reuse);
    g_assert_cmpint(cfg->db, ==, HERD_DB_DICT);
    g_assert_cmpint(cfg->record_limit, ==, 1024);
    g_assert_cmpint(cfg->size_limit, ==, G_GINT64_CONSTANT(1) << 30);
    g_assert_cmpfloat(cfg->cull_fraction, ==, 0.1);
    g_assert_null(cfg->key);
    g_assert_cmpstr(cfg->signature_scheme, ==, "hmac-sha256");
    g_assert_null(cfg->username);
    g_assert_cmpstr(cfg->mux_scheduler, ==, "mux");
    g_assert_cmpstr(cfg->task_scheduler, ==, "task");
    g_assert_cmpstr(cfg->broadcast_scheduler, ==, "broadcast");
    g_assert_cmpint(cfg->log_level, ==, 20);
    g_assert_false(cfg->log_to_file);
    g_assert_null(cfg->plugin_path);
    g_assert_cmpuint(cfg->warnings->len, ==, 0);
    /* The merged key file carries the resolved values for plugins. */
    g_autofree char *ip = keyfile_value(cfg, "controller", "client_ip");
    g_autofree char *tcp = keyfile_value(cfg, "transport", "engine");
    g_assert_cmpstr(ip, ==, "127.0.0.1");
    g_assert_cmpstr(tcp, ==, "tcp");
    herd_config_free(cfg);
}

static void test_where(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConfig *cfg = load_ok("--profile=iptest", NULL);
    g_autofree char *iptest = g_build_filename(f->root, "profile_iptest", NULL);
    g_assert_cmpstr(cfg->profile, ==, "iptest");
    g_assert_cmpstr(cfg->profile_dir, ==, iptest);
    herd_config_free(cfg);

    g_autofree char *other = g_build_filename(f->root, "other", NULL);
    g_autofree char *other_profile = g_build_filename(other, "profile_x", NULL);
    cfg = load_ok("--ipython-dir", other, "--profile", "x", NULL);
    g_assert_cmpstr(cfg->ipython_dir, ==, other);
    g_assert_cmpstr(cfg->profile_dir, ==, other_profile);
    herd_config_free(cfg);

    /* --profile-dir wins over --profile, as in ipcontroller */
    cfg = load_ok("--profile=iptest", "--profile-dir", f->root, NULL);
    g_assert_cmpstr(cfg->profile_dir, ==, f->root);
    herd_config_free(cfg);

    g_unsetenv("IPYTHONDIR");
    cfg = load_ok(NULL);
    g_autofree char *home = g_build_filename(g_get_home_dir(), ".ipython", NULL);
    g_assert_cmpstr(cfg->ipython_dir, ==, home);
    herd_config_free(cfg);
}

static void test_argv_untouched(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    char *argv[] = {"herdd", "--ping", "250", "--HeartMonitor.max_heartmonitor_misses=5", "--dictdb", NULL};
    char *copy[G_N_ELEMENTS(argv)];
    memcpy(copy, argv, sizeof argv);
    g_autoptr(GError) err = NULL;
    HerdConfig *cfg = herd_config_load(5, argv, &err);
    g_assert_no_error(err);
    g_assert_cmpint(cfg->ping_ms, ==, 250);
    g_assert_cmpint(cfg->heartbeat_misses, ==, 5);
    for (gsize i = 0; i < G_N_ELEMENTS(argv); i++)
        g_assert_true(argv[i] == copy[i]);
    g_assert_cmpstr(argv[2], ==, "250");
    herd_config_free(cfg);
}

/* ------------------------------------------------------------------------------------ */
/* precedence                                                                           */
/* ------------------------------------------------------------------------------------ */

static void test_precedence(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *py = write_file(f->profile, "ipcontroller_config.py",
                                     "c.HeartMonitor.period = 200\n"
                                     "c.DictDB.record_limit = 50\n"
                                     "c.IPController.location = 'pyhost'\n");
    /* ipcontroller_config.py alone beats the defaults */
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpint(cfg->ping_ms, ==, 200);
    g_assert_cmpint(cfg->record_limit, ==, 50);
    g_assert_cmpstr(cfg->location, ==, "pyhost");
    herd_config_free(cfg);

    /* herd.conf beats ipcontroller_config.py */
    g_autofree char *conf = write_file(f->profile, "herd.conf",
                                       "[controller]\n"
                                       "ping = 400\n"
                                       "record_limit = 60\n");
    cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->config_file, ==, conf);
    g_assert_cmpint(cfg->ping_ms, ==, 400);
    g_assert_cmpint(cfg->record_limit, ==, 60);
    g_assert_cmpstr(cfg->location, ==, "pyhost");
    herd_config_free(cfg);

    /* flags beat herd.conf, in both ipcontroller spellings */
    cfg = load_ok("--ping=800", "--DictDB.record_limit", "70", NULL);
    g_assert_cmpint(cfg->ping_ms, ==, 800);
    g_assert_cmpint(cfg->record_limit, ==, 70);
    g_assert_cmpstr(cfg->location, ==, "pyhost");
    herd_config_free(cfg);

    /* --config FILE replaces the profile's herd.conf */
    g_autofree char *other = write_file(f->root, "other.conf", "[controller]\nping = 900\n");
    cfg = load_ok("--config", other, NULL);
    g_assert_cmpstr(cfg->config_file, ==, other);
    g_assert_cmpint(cfg->ping_ms, ==, 900);
    g_assert_cmpint(cfg->record_limit, ==, 50); /* back to the .py value */
    herd_config_free(cfg);
}

static void test_json_config(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *py = write_file(f->profile, "ipcontroller_config.py", "c.HeartMonitor.period = 200\n");
    g_autofree char *json = write_file(f->profile, "ipcontroller_config.json",
                                       "{\"HeartMonitor\": {\"period\": 300},\n"
                                       " \"IPController\": {\"ports\": [10101, \"10103-10104\"], \"reuse_files\": true,\n"
                                       "                    \"enable_curve\": false},\n"
                                       " \"DictDB\": {\"cull_fraction\": 0.25}}");
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpint(cfg->ping_ms, ==, 300); /* JSON is read after .py, as in traitlets */
    g_assert_cmpuint(cfg->ports->len, ==, 3);
    g_assert_cmpint(g_array_index(cfg->ports, int, 2), ==, 10104);
    g_assert_true(cfg->reuse);
    g_assert_cmpfloat(cfg->cull_fraction, ==, 0.25);
    g_assert_true(has_warning(cfg, json, "IPController.enable_curve"));
    herd_config_free(cfg);
}

static void test_python_config_lines(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *py = write_file(f->profile, "ipcontroller_config.py",
                                     "# Configuration file for ipcontroller.\n"
                                     "c = get_config()  # noqa\n"
                                     "\n"
                                     "c.HeartMonitor.period = 200  # ms\n"
                                     "c.IPController.enable_curve = True\n"
                                     "import os\n"
                                     "c.HubFactory.ip = \"0.0.0.0\"\n"
                                     "c.IPController.ports = [10101, '10105-10106']\n"
                                     "c.IPController.reuse_files = True\n"
                                     "c.Session.key = b'sekrit'\n"
                                     "c.TaskScheduler.scheme_name = 'lru'\n"
                                     "c.DictDB.size_limit = 1024**2\n"
                                     "    c.HeartMonitor.max_heartmonitor_misses = 3\n"
                                     "c.IPController.location = 'x'\n"
                                     "c.IPController.location = None\n"
                                     "c.Session.session = 'abc'\n");
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpint(cfg->ping_ms, ==, 200);
    g_assert_cmpstr(cfg->ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->client_ip, ==, "0.0.0.0");
    g_assert_cmpuint(cfg->ports->len, ==, 3);
    g_assert_cmpint(g_array_index(cfg->ports, int, 0), ==, 10101);
    g_assert_cmpint(g_array_index(cfg->ports, int, 2), ==, 10106);
    g_assert_true(cfg->reuse);
    g_assert_cmpstr(cfg->key, ==, "sekrit");
    g_autofree char *scheme = keyfile_value(cfg, "scheduler.task", "scheme");
    g_assert_cmpstr(scheme, ==, "lru");
    g_assert_cmpint(cfg->heartbeat_misses, ==, 10);           /* indented line: ignored */
    g_assert_cmpint(cfg->size_limit, ==, G_GINT64_CONSTANT(1) << 30); /* expression: ignored */
    g_assert_cmpstr(cfg->location, ==, g_get_host_name());   /* None: back to the default */
    /* one warning per line herd did not use, naming the file and the line */
    g_autofree char *line5 = g_strdup_printf("%s:5:", py);
    g_autofree char *line6 = g_strdup_printf("%s:6:", py);
    g_autofree char *line12 = g_strdup_printf("%s:12:", py);
    g_autofree char *line13 = g_strdup_printf("%s:13:", py);
    g_autofree char *line16 = g_strdup_printf("%s:16:", py);
    g_assert_true(has_warning(cfg, line5, "IPController.enable_curve"));
    g_assert_true(has_warning(cfg, line6, NULL));
    g_assert_true(has_warning(cfg, line12, NULL));
    g_assert_true(has_warning(cfg, line13, NULL));
    g_assert_true(has_warning(cfg, line16, "Session.session"));
    g_assert_cmpuint(cfg->warnings->len, ==, 5);
    herd_config_free(cfg);
}

static void test_python_config_bad_value(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *py = write_file(f->profile, "ipcontroller_config.py", "\nc.HeartMonitor.period = 'soon'\n");
    g_autofree char *where = g_strdup_printf("%s:2:", py);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--dictdb"), where, "HeartMonitor.period", "soon", NULL);
}

static void test_ip_overrides_side_ips(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *conf = write_file(f->profile, "herd.conf",
                                       "[controller]\nclient_ip = 10.0.0.1\nengine_ip = 10.0.0.2\n");
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->ip, ==, "127.0.0.1");
    g_assert_cmpstr(cfg->client_ip, ==, "10.0.0.1");
    g_assert_cmpstr(cfg->engine_ip, ==, "10.0.0.2");
    herd_config_free(cfg);
    /* --ip means every channel: it overrides the per-side addresses of lower sources */
    cfg = load_ok("--ip=0.0.0.0", NULL);
    g_assert_cmpstr(cfg->client_ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->engine_ip, ==, "0.0.0.0");
    herd_config_free(cfg);
    /* ...but a per-side address given next to it still wins */
    cfg = load_ok("--ip=0.0.0.0", "--IPController.engine_ip=::1", NULL);
    g_assert_cmpstr(cfg->client_ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->engine_ip, ==, "::1");
    herd_config_free(cfg);
}

/* ------------------------------------------------------------------------------------ */
/* flags                                                                                */
/* ------------------------------------------------------------------------------------ */

static void test_flag_spellings(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    const char *const forms[][3] = {
        {"--ping=250", NULL, NULL},
        {"--ping", "250", NULL},
        {"--HeartMonitor.period=250", NULL, NULL},
        {"--HeartMonitor.period", "250", NULL},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(forms); i++) {
        HerdConfig *cfg = load_ok(forms[i][0], forms[i][1], NULL);
        g_assert_cmpint(cfg->ping_ms, ==, 250);
        g_assert_cmpfloat(cfg->registration_timeout_s, ==, 30);
        herd_config_free(cfg);
    }
    /* what ipyparallel's Cluster passes: separate items, quoted-free */
    HerdConfig *cfg = load_ok("--profile-dir", f->root, "--cluster-id", "1732700000-ab3x", "--log-level=10",
                              "--ip=127.0.0.1", "--location=here", "--ping=250", NULL);
    g_assert_cmpstr(cfg->profile_dir, ==, f->root);
    g_assert_cmpstr(cfg->cluster_id, ==, "1732700000-ab3x");
    g_assert_cmpint(cfg->log_level, ==, 10);
    g_assert_cmpstr(cfg->location, ==, "here");
    herd_config_free(cfg);
    /* what ipyparallel's test suite passes */
    cfg = load_ok("--profile=iptest", "--log-level=10", "--ping=250", "--dictdb", NULL);
    g_assert_cmpstr(cfg->profile, ==, "iptest");
    g_assert_cmpint(cfg->db, ==, HERD_DB_DICT);
    herd_config_free(cfg);
}

static void test_cluster_id_empty(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    g_autofree char *conf = write_file(f->profile, "herd.conf", "[controller]\ncluster_id = fromconf\n");
    HerdConfig *cfg = load_ok("--cluster-id", "", NULL);
    g_assert_cmpstr(cfg->cluster_id, ==, "");
    herd_config_free(cfg);
    cfg = load_ok("--cluster-id=", NULL);
    g_assert_cmpstr(cfg->cluster_id, ==, "");
    herd_config_free(cfg);
    cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->cluster_id, ==, "fromconf");
    herd_config_free(cfg);
    cfg = load_ok("--cluster-id", "abc", NULL);
    g_assert_cmpstr(cfg->cluster_id, ==, "abc");
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--cluster-id=a/b"), "--cluster-id", "a/b", NULL);
}

static void test_log_levels(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    static const struct {
        const char *text;
        int level;
    } cases[] = {
        {"0", 0},        {"10", 10},    {"20", 20},          {"30", 30},      {"40", 40},
        {"50", 50},      {"DEBUG", 10}, {"info", 20},        {"Warn", 30},    {"WARNING", 30},
        {"error", 40},   {"CRITICAL", 50}, {"15", -1},       {"60", -1},      {"verbose", -1},
        {"", -1},        {"-10", -1},   {"10x", -1},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++)
        g_assert_cmpint(herd_config_parse_log_level(cases[i].text), ==, cases[i].level);
    g_assert_cmpint(herd_config_parse_log_level(NULL), ==, -1);

    HerdConfig *cfg = load_ok("--log-level", "debug", NULL);
    g_assert_cmpint(cfg->log_level, ==, 10);
    herd_config_free(cfg);
    cfg = load_ok("--quiet", NULL);
    g_assert_cmpint(cfg->log_level, ==, 50);
    herd_config_free(cfg);
    /* flags apply in order: the last one wins */
    cfg = load_ok("--debug", "--log-level=ERROR", NULL);
    g_assert_cmpint(cfg->log_level, ==, 40);
    herd_config_free(cfg);
    cfg = load_ok("--log-level=ERROR", "--debug", NULL);
    g_assert_cmpint(cfg->log_level, ==, 10);
    herd_config_free(cfg);
    cfg = load_ok("--Application.log_level=WARN", NULL);
    g_assert_cmpint(cfg->log_level, ==, 30);
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--log-level=verbose"), "--log-level", "verbose", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--log-level", "15"), "--log-level", "'15'", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--debug=1"), "--debug", "takes no value", NULL);
}

static void test_ports(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    g_autoptr(GArray) ports = g_array_new(FALSE, FALSE, sizeof(int));
    g_autoptr(GError) err = NULL;
    g_assert_true(herd_config_parse_ports("10101-10103", ports, &err));
    g_assert_true(herd_config_parse_ports("10101,10105-10107", ports, &err));
    g_assert_no_error(err);
    static const int expected[] = {10101, 10102, 10103, 10101, 10105, 10106, 10107};
    g_assert_cmpmem(ports->data, ports->len * sizeof(int), expected, sizeof expected);
    const char *bad[] = {"0", "70000", "10105-10101", "abc", "", "1-", "10101,,10102", "1-2-3"};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_false(herd_config_parse_ports(bad[i], ports, &err));
        g_assert_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE);
        g_assert_nonnull(strstr(err->message, bad[i]));
        g_clear_error(&err);
    }
    g_assert_cmpuint(ports->len, ==, G_N_ELEMENTS(expected)); /* failures append nothing */

    /* --ports may be repeated, and the pools add up like ipcontroller's list trait */
    HerdConfig *cfg = load_ok("--ports", "10101-10102", "--ports=10200", NULL);
    g_assert_cmpuint(cfg->ports->len, ==, 3);
    g_assert_cmpint(g_array_index(cfg->ports, int, 2), ==, 10200);
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--ports=10101-99999"), "--ports", "10101-99999", NULL);
}

static void test_keys(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConfig *cfg = load_ok("--no-secure", NULL);
    g_assert_cmpstr(cfg->key, ==, "");
    herd_config_free(cfg);
    cfg = load_ok("--secure", NULL);
    g_assert_nonnull(cfg->key);
    g_assert_cmpuint(strlen(cfg->key), >=, 16);
    herd_config_free(cfg);
    g_autofree char *keyfile = write_file(f->root, "key.txt", "  from-file\n");
    cfg = load_ok("--keyfile", keyfile, NULL);
    g_assert_cmpstr(cfg->key, ==, "from-file");
    herd_config_free(cfg);
    /* the last of --keyfile / --Session.key wins */
    cfg = load_ok("--keyfile", keyfile, "--Session.key=abc", NULL);
    g_assert_cmpstr(cfg->key, ==, "abc");
    herd_config_free(cfg);
}

static void test_key_sources(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConfig *cfg = load_ok("--Session.key=abc", "--Session.signature_scheme=HMAC-SHA256", NULL);
    g_assert_cmpstr(cfg->key, ==, "abc");
    g_assert_cmpstr(cfg->signature_scheme, ==, "hmac-sha256");
    herd_config_free(cfg);
    g_autofree char *missing = g_build_filename(f->root, "no-such-key", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_FILE, ARGS("--keyfile", missing), "--keyfile", missing, NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--Session.signature_scheme=hmac-md5"),
                      "--Session.signature_scheme", "hmac-md5", NULL);
    /* IPP_SESSION_KEY: ipyparallel assigns it after reading every config source, so it
     * wins over herd.conf and flags alike */
    g_autofree char *conf = write_file(f->profile, "herd.conf", "[controller]\nkey = conf-key\n");
    cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->key, ==, "conf-key");
    herd_config_free(cfg);
    g_setenv("IPP_SESSION_KEY", "env-key", TRUE);
    cfg = load_ok("--Session.key=flag-key", NULL);
    g_assert_cmpstr(cfg->key, ==, "env-key");
    herd_config_free(cfg);
}

static void test_switches(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    HerdConfig *cfg = load_ok("--reuse", "--nodb", "--log-to-file", "--user=alice", "--ssh", "me@gw",
                              "--enginessh=me@gw2", NULL);
    g_assert_true(cfg->reuse);
    g_assert_cmpint(cfg->db, ==, HERD_DB_NONE);
    g_assert_true(cfg->log_to_file);
    g_assert_cmpstr(cfg->username, ==, "alice");
    g_assert_cmpstr(cfg->ssh_client, ==, "me@gw");
    g_assert_cmpstr(cfg->ssh_engine, ==, "me@gw2");
    herd_config_free(cfg);
    cfg = load_ok("--reuse", "--reuse=false", "--IPController.reuse_files", "True",
                  "--IPController.db_class=NoDB", NULL);
    g_assert_true(cfg->reuse);
    g_assert_cmpint(cfg->db, ==, HERD_DB_NONE);
    herd_config_free(cfg);
    cfg = load_ok("--sqlitedb", "--ident=abc", NULL);
    g_assert_cmpint(cfg->db, ==, HERD_DB_DICT);
    g_assert_true(has_warning(cfg, "--sqlitedb", NULL));
    g_assert_true(has_warning(cfg, "--ident", NULL));
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--reuse=maybe"), "--reuse", "maybe", NULL);
}

static void test_transports_and_schedulers(Fixture *f, gconstpointer data)
{
    (void)data;
    HerdConfig *cfg = load_ok("--transport", "ipc", NULL);
    g_assert_cmpstr(cfg->client_transport, ==, "ipc");
    g_assert_cmpstr(cfg->engine_transport, ==, "ipc");
    herd_config_free(cfg);
    cfg = load_ok("--transport=ipc", "--client-transport=tcp", NULL);
    g_assert_cmpstr(cfg->client_transport, ==, "tcp");
    g_assert_cmpstr(cfg->engine_transport, ==, "ipc");
    herd_config_free(cfg);
    g_autofree char *conf = write_file(f->profile, "herd.conf",
                                       "[transport]\nengine = ipc\n"
                                       "[scheduler]\ntask = lb\n"
                                       "[scheduler.task]\nscheme = twobin\nanything_goes = 1\n"
                                       "[transport.ipc]\ndir = /run/x\n");
    cfg = load_ok("--hwm=0", NULL);
    g_assert_cmpstr(cfg->client_transport, ==, "tcp");
    g_assert_cmpstr(cfg->engine_transport, ==, "ipc");
    g_assert_cmpstr(cfg->task_scheduler, ==, "lb");
    g_autofree char *scheme = keyfile_value(cfg, "scheduler.task", "scheme");
    g_autofree char *hwm = keyfile_value(cfg, "scheduler.task", "hwm");
    g_autofree char *other = keyfile_value(cfg, "scheduler.task", "anything_goes");
    g_autofree char *dir = keyfile_value(cfg, "transport.ipc", "dir");
    g_assert_cmpstr(scheme, ==, "twobin");
    g_assert_cmpstr(hwm, ==, "0");
    g_assert_cmpstr(other, ==, "1");
    g_assert_cmpstr(dir, ==, "/run/x");
    herd_config_free(cfg);
    cfg = load_ok("--scheme=pure", "--TaskScheduler.hwm", "3", NULL);
    g_autofree char *scheme2 = keyfile_value(cfg, "scheduler.task", "scheme");
    g_autofree char *hwm2 = keyfile_value(cfg, "scheduler.task", "hwm");
    g_assert_cmpstr(scheme2, ==, "pure");
    g_assert_cmpstr(hwm2, ==, "3");
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--hwm=-1"), "--hwm", "-1", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--transport=tcp ipc"), "--transport", "tcp ipc", NULL);
}

static void test_registration_timeout(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    HerdConfig *cfg = load_ok("--ping=5000", NULL);
    g_assert_cmpfloat(cfg->registration_timeout_s, ==, 50); /* max(30, ping/100) */
    herd_config_free(cfg);
    cfg = load_ok("--ping=5000", "--IPController.registration_timeout=5", NULL);
    g_assert_cmpfloat(cfg->registration_timeout_s, ==, 5);
    herd_config_free(cfg);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--IPController.registration_timeout=-2"),
                      "--IPController.registration_timeout", "-2", NULL);
}

static void test_class_aliases(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    HerdConfig *cfg = load_ok("--HubFactory.ip=0.0.0.0", "--IPControllerApp.location=alias-host",
                              "--DictDB.size_limit=2048", "--DictDB.cull_fraction=0.5", NULL);
    g_assert_cmpstr(cfg->ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->location, ==, "alias-host");
    g_assert_cmpint(cfg->size_limit, ==, 2048);
    g_assert_cmpfloat(cfg->cull_fraction, ==, 0.5);
    herd_config_free(cfg);
}

/* ------------------------------------------------------------------------------------ */
/* errors naming the culprit                                                            */
/* ------------------------------------------------------------------------------------ */

static void test_unknown_flags(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    assert_load_fails(HERD_CONFIG_ERROR_UNKNOWN_FLAG, ARGS("--ping=1", "--bogus"), "--bogus", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_UNKNOWN_FLAG, ARGS("--Foo.bar=1"), "--Foo.bar", "does not map", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_UNKNOWN_FLAG, ARGS("--IPController.enable_curve=True"),
                      "--IPController.enable_curve", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_UNKNOWN_FLAG, ARGS("-r"), "-r", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_UNKNOWN_FLAG, ARGS("stray"), "stray", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--ping"), "--ping", NULL);
}

static void test_bad_values(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--ping=0"), "--ping", "'0'", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--ping=fast"), "--ping", "fast", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--DictDB.cull_fraction=1.5"), "--DictDB.cull_fraction",
                      "1.5", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_BAD_VALUE, ARGS("--IPController.db_class=Redis"), "db_class", "Redis", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_FILE, ARGS("--config=/nonexistent/herd.conf"), "/nonexistent/herd.conf",
                      NULL);
}

static void test_conf_errors(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *conf = g_build_filename(f->profile, "herd.conf", NULL);
    static const struct {
        const char *text;
        HerdConfigError code;
        const char *needle1, *needle2;
    } cases[] = {
        {"[controller]\npingg = 100\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "pingg", "[controller]"},
        {"[bogus]\nx = 1\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "[bogus]", NULL},
        {"[transport.]\nx = 1\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "[transport.]", NULL},
        {"[scheduler]\nfanout = x\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "fanout", NULL},
        {"[controller]\nping = abc\n", HERD_CONFIG_ERROR_BAD_VALUE, "ping", "'abc'"},
        {"[controller]\nreuse = maybe\n", HERD_CONFIG_ERROR_BAD_VALUE, "reuse", "'maybe'"},
        {"[controller]\ndb = sqlite\n", HERD_CONFIG_ERROR_BAD_VALUE, "db", "'sqlite'"},
        {"[controller]\nsize_limit = -1\n", HERD_CONFIG_ERROR_BAD_VALUE, "size_limit", "'-1'"},
        {"[controller]\nports = 1-2-3\n", HERD_CONFIG_ERROR_BAD_VALUE, "ports", "1-2-3"},
        {"[controller]\nlog_level = LOUD\n", HERD_CONFIG_ERROR_BAD_VALUE, "log_level", "LOUD"},
        {"[controller\nping = 1\n", HERD_CONFIG_ERROR_FILE, "herd.conf", NULL},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_assert_true(g_file_set_contents(conf, cases[i].text, -1, NULL));
        assert_load_fails(cases[i].code, ARGS("--dictdb"), conf, cases[i].needle1, cases[i].needle2, NULL);
    }
}

static void test_conf_values(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *conf = write_file(f->profile, "herd.conf",
                                       "# comments are fine\n"
                                       "[controller]\n"
                                       "ip = 0.0.0.0\n"
                                       "engine_ip = 10.1.1.1\n"
                                       "ports = 10101-10103,10110\n"
                                       "reuse = yes\n"
                                       "db = None\n"
                                       "log_level = warning\n"
                                       "log_to_file = true\n"
                                       "plugin_path = /opt/herd/plugins;/srv/plugins\n"
                                       "registration_timeout = 12.5\n"
                                       "username = bob\n"
                                       "ssh = me@host\n");
    HerdConfig *cfg = load_ok(NULL);
    g_assert_cmpstr(cfg->ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->client_ip, ==, "0.0.0.0");
    g_assert_cmpstr(cfg->engine_ip, ==, "10.1.1.1");
    g_assert_cmpuint(cfg->ports->len, ==, 4);
    g_assert_true(cfg->reuse);
    g_assert_cmpint(cfg->db, ==, HERD_DB_NONE);
    g_assert_cmpint(cfg->log_level, ==, 30);
    g_assert_true(cfg->log_to_file);
    g_assert_nonnull(cfg->plugin_path);
    g_assert_cmpstr(cfg->plugin_path[0], ==, "/opt/herd/plugins");
    g_assert_cmpstr(cfg->plugin_path[1], ==, "/srv/plugins");
    g_assert_null(cfg->plugin_path[2]);
    g_assert_cmpfloat(cfg->registration_timeout_s, ==, 12.5);
    g_assert_cmpstr(cfg->username, ==, "bob");
    g_assert_cmpstr(cfg->ssh_client, ==, "me@host");
    g_assert_cmpstr(cfg->ssh_engine, ==, "");
    herd_config_free(cfg);
}

static void test_help_and_version(Fixture *f, gconstpointer data)
{
    (void)f;
    (void)data;
    assert_load_fails(HERD_CONFIG_ERROR_HELP, ARGS("--help"), "Usage: herdd", "--ping", "--HeartMonitor.period", NULL);
    assert_load_fails(HERD_CONFIG_ERROR_HELP, ARGS("-h"), "Usage: herdd", NULL);
    g_autoptr(GError) err = NULL;
    char *version_argv[] = {"herdd", "--ping=100", "--version", NULL};
    g_assert_null(herd_config_load(3, version_argv, &err));
    g_assert_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_HELP);
    g_assert_cmpstr(err->message, ==, HERD_TEST_VERSION);
    g_autofree char *help = herd_config_help();
    g_assert_nonnull(strstr(help, "--cluster-id"));
    g_assert_nonnull(strstr(help, "--Session.key"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, fn) g_test_add("/config/" name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("defaults", test_defaults);
    ADD("where", test_where);
    ADD("argv-untouched", test_argv_untouched);
    ADD("precedence", test_precedence);
    ADD("json-config", test_json_config);
    ADD("python-config/lines", test_python_config_lines);
    ADD("python-config/bad-value", test_python_config_bad_value);
    ADD("ip-overrides-side-ips", test_ip_overrides_side_ips);
    ADD("flags/spellings", test_flag_spellings);
    ADD("flags/cluster-id-empty", test_cluster_id_empty);
    ADD("flags/log-levels", test_log_levels);
    ADD("flags/ports", test_ports);
    ADD("flags/switches", test_switches);
    ADD("flags/class-aliases", test_class_aliases);
    ADD("keys/flags", test_keys);
    ADD("keys/sources", test_key_sources);
    ADD("transports-and-schedulers", test_transports_and_schedulers);
    ADD("registration-timeout", test_registration_timeout);
    ADD("errors/unknown-flags", test_unknown_flags);
    ADD("errors/bad-values", test_bad_values);
    ADD("errors/herd-conf", test_conf_errors);
    ADD("herd-conf/values", test_conf_values);
    ADD("help-and-version", test_help_and_version);
#undef ADD
    return g_test_run();
}
