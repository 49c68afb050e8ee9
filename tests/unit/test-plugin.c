/* herd — unit tests of the plugin loader: search path, a real load, every refusal. */
#include "herd-build-config.h"

#include <herd/plugin.h>
#include <herd/transport.h>

#include <glib/gstdio.h>
#include <string.h>

/* The folder holding tests/plugins' modules, from meson. */
static const char *test_plugin_dir(void)
{
    const char *dir = g_getenv("HERD_TEST_PLUGIN_DIR");
    g_assert_nonnull(dir);
    return dir;
}

static char *test_plugin_file(const char *file_name)
{
    g_autofree char *base = herd_plugin_filename(HERD_PLUGIN_TRANSPORT, file_name);
    return g_build_filename(test_plugin_dir(), base, NULL);
}

/* Loads tests/plugins' herd-transport-<file_name>.so asking for name file_name and checks
 * the refusal: its code, the file named in the message, and the specific reason. */
static void assert_refused(const char *file_name, int code, const char *reason)
{
    g_autofree char *path = test_plugin_file(file_name);
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load_file(path, HERD_PLUGIN_TRANSPORT, file_name, &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, code);
    g_test_message("%s: %s", file_name, err->message);
    g_assert_nonnull(strstr(err->message, path));
    g_assert_nonnull(strstr(err->message, reason));
}

static void test_filename_and_kind(void)
{
    g_autofree char *tcp = herd_plugin_filename(HERD_PLUGIN_TRANSPORT, "tcp");
    g_autofree char *lb = herd_plugin_filename(HERD_PLUGIN_SCHEDULER, "lb");
    g_assert_cmpstr(tcp, ==, "herd-transport-tcp.so");
    g_assert_cmpstr(lb, ==, "herd-scheduler-lb.so");
    g_assert_cmpstr(herd_plugin_kind_str(HERD_PLUGIN_TRANSPORT), ==, "transport");
    g_assert_cmpstr(herd_plugin_kind_str(HERD_PLUGIN_SCHEDULER), ==, "scheduler");
}

/* Config folders first, then $HERD_PLUGIN_PATH, then (this test runs uninstalled) the
 * build tree's plugin folders, and never the install folder. */
static void test_search_path_order(void)
{
    g_setenv("HERD_PLUGIN_PATH", "/env/one::/env/two:", TRUE);
    const char *extra[] = {"/conf/a", "/conf/b", NULL};
    g_auto(GStrv) path = herd_plugin_search_path(extra);
    g_unsetenv("HERD_PLUGIN_PATH");

    g_auto(GStrv) build_dirs = g_strsplit(HERD_BUILD_PLUGIN_DIRS, ":", -1);
    const char *expected_head[] = {"/conf/a", "/conf/b", "/env/one", "/env/two"};
    guint n = g_strv_length(path);
    g_assert_cmpuint(n, ==, G_N_ELEMENTS(expected_head) + g_strv_length(build_dirs));
    for (guint i = 0; i < G_N_ELEMENTS(expected_head); i++)
        g_assert_cmpstr(path[i], ==, expected_head[i]);
    for (guint i = 0; build_dirs[i] != NULL; i++)
        g_assert_cmpstr(path[G_N_ELEMENTS(expected_head) + i], ==, build_dirs[i]);
    g_assert_false(g_strv_contains((const char *const *)path, HERD_PLUGIN_INSTALL_DIR));
}

static void test_load_tcp_from_build_tree(void)
{
    g_unsetenv("HERD_PLUGIN_PATH");
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load(HERD_PLUGIN_TRANSPORT, "tcp", NULL, &err);
    g_assert_no_error(err);
    g_assert_nonnull(p);
    const HerdPluginDescriptor *d = herd_plugin_descriptor(p);
    g_assert_cmpstr(d->name, ==, "tcp");
    g_assert_cmpint(d->kind, ==, HERD_PLUGIN_TRANSPORT);
    g_assert_cmpuint(d->abi_major, ==, HERD_PLUGIN_ABI_MAJOR);
    g_assert_nonnull(d->description);
    const HerdTransportOps *ops = d->ops;
    g_assert_nonnull(ops->open);
    g_assert_nonnull(ops->bind);
    g_assert_true(g_str_has_prefix(herd_plugin_path(p), HERD_BUILD_ROOT));
    g_assert_true(g_str_has_suffix(herd_plugin_path(p), "/herd-transport-tcp.so"));
    herd_plugin_unload(p);
}

/* "good" lives only in tests/plugins: found through $HERD_PLUGIN_PATH, not without it. */
static void test_search_through_env(void)
{
    g_autoptr(GError) err = NULL;
    g_unsetenv("HERD_PLUGIN_PATH");
    HerdPlugin *p = herd_plugin_load(HERD_PLUGIN_TRANSPORT, "good", NULL, &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NOT_FOUND);
    g_clear_error(&err);

    g_autofree char *env = g_strdup_printf("/nonexistent-herd-dir:%s", test_plugin_dir());
    g_setenv("HERD_PLUGIN_PATH", env, TRUE);
    p = herd_plugin_load(HERD_PLUGIN_TRANSPORT, "good", NULL, &err);
    g_unsetenv("HERD_PLUGIN_PATH");
    g_assert_no_error(err);
    g_assert_nonnull(p);
    g_autofree char *expected = test_plugin_file("good");
    g_assert_cmpstr(herd_plugin_path(p), ==, expected);
    g_assert_cmpstr(herd_plugin_descriptor(p)->name, ==, "good");
    herd_plugin_unload(p);
}

static void test_not_found_lists_folders(void)
{
    const char *dirs[] = {"/nonexistent-herd-a", "/nonexistent-herd-b", NULL};
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load(HERD_PLUGIN_SCHEDULER, "nosuch", dirs, &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NOT_FOUND);
    g_assert_nonnull(strstr(err->message, "herd-scheduler-nosuch.so"));
    g_assert_nonnull(strstr(err->message, "/nonexistent-herd-a"));
    g_assert_nonnull(strstr(err->message, "/nonexistent-herd-b"));
}

/* The first copy on the path is the one used, and its refusal is reported rather than
 * silently skipped in favour of a later folder. */
static void test_first_found_is_used_even_if_broken(void)
{
    const char *dirs[] = {test_plugin_dir(), NULL};
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load(HERD_PLUGIN_TRANSPORT, "abimajor", dirs, &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_ABI);
    g_assert_nonnull(strstr(err->message, "herd-transport-abimajor.so"));
}

static void test_refuses_unopenable_file(void)
{
    g_autofree char *dir = g_dir_make_tmp("herd-plugin-XXXXXX", NULL);
    g_assert_nonnull(dir);
    g_autofree char *path = g_build_filename(dir, "herd-transport-garbage.so", NULL);
    g_assert_true(g_file_set_contents(path, "this is not an ELF file\n", -1, NULL));
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load_file(path, HERD_PLUGIN_TRANSPORT, "garbage", &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_OPEN);
    g_assert_true(g_str_has_prefix(err->message, "cannot open plugin "));
    g_assert_nonnull(strstr(err->message, path));
    g_unlink(path);
    g_rmdir(dir);
}

static void test_refuses_abi_major(void)
{
    assert_refused("abimajor", HERD_PLUGIN_ERROR_ABI, "major version must match");
}

static void test_refuses_newer_minor(void)
{
    g_autofree char *needed = g_strdup_printf("needs plugin ABI %d.%d, newer than", HERD_PLUGIN_ABI_MAJOR,
                                              HERD_PLUGIN_ABI_MINOR + 1);
    assert_refused("newerminor", HERD_PLUGIN_ERROR_ABI, needed);
}

static void test_refuses_wrong_kind(void)
{
    assert_refused("wrongkind", HERD_PLUGIN_ERROR_KIND, "is a scheduler plugin");
}

static void test_refuses_requested_as_other_kind(void)
{
    g_autofree char *path = test_plugin_file("good");
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load_file(path, HERD_PLUGIN_SCHEDULER, "good", &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_KIND);
    g_assert_nonnull(strstr(err->message, "but a scheduler plugin was requested"));
}

static void test_refuses_wrong_name(void)
{
    assert_refused("wrongname", HERD_PLUGIN_ERROR_NAME, "calls itself \"someothername\", but \"wrongname\"");
}

static void test_refuses_missing_entry(void)
{
    assert_refused("noentry", HERD_PLUGIN_ERROR_SYMBOL, "does not export the entry symbol herd_plugin_entry");
}

static void test_refuses_null_descriptor(void)
{
    assert_refused("nulldescriptor", HERD_PLUGIN_ERROR_SYMBOL, "returned no descriptor");
}

static void test_refuses_failing_init(void)
{
    assert_refused("failinginit", HERD_PLUGIN_ERROR_INIT,
                   "failed to initialise: the test plugin refuses to start");
}

static void test_refuses_path_like_name(void)
{
    g_autoptr(GError) err = NULL;
    HerdPlugin *p = herd_plugin_load(HERD_PLUGIN_TRANSPORT, "../tcp", NULL, &err);
    g_assert_null(p);
    g_assert_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NAME);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/plugin/filename-and-kind", test_filename_and_kind);
    g_test_add_func("/plugin/search-path/order", test_search_path_order);
    g_test_add_func("/plugin/search-path/build-tree-tcp", test_load_tcp_from_build_tree);
    g_test_add_func("/plugin/search-path/env", test_search_through_env);
    g_test_add_func("/plugin/search-path/not-found", test_not_found_lists_folders);
    g_test_add_func("/plugin/search-path/first-found-wins", test_first_found_is_used_even_if_broken);
    g_test_add_func("/plugin/refuse/cannot-open", test_refuses_unopenable_file);
    g_test_add_func("/plugin/refuse/abi-major", test_refuses_abi_major);
    g_test_add_func("/plugin/refuse/newer-minor", test_refuses_newer_minor);
    g_test_add_func("/plugin/refuse/wrong-kind", test_refuses_wrong_kind);
    g_test_add_func("/plugin/refuse/requested-other-kind", test_refuses_requested_as_other_kind);
    g_test_add_func("/plugin/refuse/wrong-name", test_refuses_wrong_name);
    g_test_add_func("/plugin/refuse/no-entry", test_refuses_missing_entry);
    g_test_add_func("/plugin/refuse/null-descriptor", test_refuses_null_descriptor);
    g_test_add_func("/plugin/refuse/failing-init", test_refuses_failing_init);
    g_test_add_func("/plugin/refuse/path-like-name", test_refuses_path_like_name);
    return g_test_run();
}
