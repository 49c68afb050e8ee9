/* herd cluster below its command line (tools/cluster-*.c): the state file's round trip,
 * mode and refusals; process identity (a pid with another start time or boot id is not
 * ours); exit descriptions; log tails; helper commands with a deadline; --hosts. */
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster.h"
#include "test-util.h"

/* cluster-launch.c names the running herd for `--engine herd`; no engine starts here. */
char *herd_tool_self_path(void)
{
    return g_strdup("/nonexistent/herd");
}

typedef struct {
    char *root; /* temporary folder: the profile, removed at teardown */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data)
{
    (void)data;
    f->root = test_make_tmp_dir("herd-cluster-XXXXXX");
    g_free(test_make_dir(f->root, "security"));
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    test_remove_tmp_dir(&f->root);
}

static ClusterProc *proc_with(ClusterProcKind kind, int pid, const char *host, const char *job_id, int engines)
{
    ClusterProc *p = cluster_proc_new(kind);
    p->pid = pid;
    p->start_time = 1234567;
    p->boot_id = g_strdup("boot-1");
    p->host = g_strdup(host);
    p->job_id = g_strdup(job_id);
    p->engines = engines;
    p->log = g_strdup_printf("/log/%d", pid);
    return p;
}

/* ---- state file ---- */

static void test_state_round_trip(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autoptr(ClusterState) st = cluster_state_new(f->root, "blue");
    g_assert_true(g_str_has_suffix(st->path, "/security/herd-cluster-blue.json"));
    st->launcher = g_strdup("ssh");
    st->engine = g_strdup("ipengine");
    st->n_engines = 5;
    st->started = g_strdup("2026-11-27T16:28:24Z");
    const char *ssh[] = { "ssh", "-p", "2222", "-T", NULL };
    st->ssh_command = g_strdupv((char **)ssh);
    st->controller = proc_with(CLUSTER_PROC_LOCAL, 100, NULL, NULL, 0);
    g_ptr_array_add(st->engine_sets, proc_with(CLUSTER_PROC_SSH, 200, "user@node1", NULL, 2));
    g_ptr_array_add(st->engine_sets, proc_with(CLUSTER_PROC_SLURM, 0, NULL, "4711", 3));
    g_autoptr(GError) err = NULL;
    g_assert_true(cluster_state_save(st, &err));
    g_assert_no_error(err);

    struct stat sb;
    g_assert_cmpint(stat(st->path, &sb), ==, 0);
    g_assert_cmpint(sb.st_mode & 0777, ==, 0600);

    g_autoptr(ClusterState) back = cluster_state_load(st->path, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(back->profile_dir, ==, f->root);
    g_assert_cmpstr(back->cluster_id, ==, "blue");
    g_assert_cmpstr(back->path, ==, st->path);
    g_assert_cmpstr(back->launcher, ==, "ssh");
    g_assert_cmpstr(back->engine, ==, "ipengine");
    g_assert_cmpint(back->n_engines, ==, 5);
    g_assert_cmpstr(back->started, ==, st->started);
    g_assert_true(g_strv_equal((const char *const *)back->ssh_command, ssh));
    g_assert_cmpint(back->controller->kind, ==, CLUSTER_PROC_LOCAL);
    g_assert_cmpint(back->controller->pid, ==, 100);
    g_assert_cmpuint(back->controller->start_time, ==, 1234567);
    g_assert_cmpstr(back->controller->boot_id, ==, "boot-1");
    g_assert_null(back->controller->host);
    g_assert_cmpuint(back->engine_sets->len, ==, 2);
    ClusterProc *remote = back->engine_sets->pdata[0], *job = back->engine_sets->pdata[1];
    g_assert_cmpint(remote->kind, ==, CLUSTER_PROC_SSH);
    g_assert_cmpstr(remote->host, ==, "user@node1");
    g_assert_cmpint(remote->engines, ==, 2);
    g_assert_cmpstr(remote->log, ==, "/log/200");
    g_assert_cmpint(job->kind, ==, CLUSTER_PROC_SLURM);
    g_assert_cmpstr(job->job_id, ==, "4711");
    g_assert_cmpint(job->engines, ==, 3);

    /* A save replaces the file (a new one is renamed over it). */
    st->n_engines = 6;
    g_assert_true(cluster_state_save(st, &err));
    g_autoptr(ClusterState) again = cluster_state_load(st->path, &err);
    g_assert_cmpint(again->n_engines, ==, 6);
}

static void test_state_without_cluster_id(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *path = cluster_state_path(f->root, "");
    g_autofree char *expected = g_build_filename(f->root, "security", "herd-cluster.json", NULL);
    g_assert_cmpstr(path, ==, expected);
    g_autofree char *log = cluster_log_path(f->root, "", "herdd");
    g_assert_true(g_str_has_suffix(log, "/log/herd-cluster-herdd.log"));
    g_autofree char *log_id = cluster_log_path(f->root, "x", "engine-3");
    g_assert_true(g_str_has_suffix(log_id, "/log/herd-cluster-x-engine-3.log"));
}

static void expect_refused(const char *path, const char *text, const char *message_part)
{
    g_assert_true(g_file_set_contents(path, text, -1, NULL));
    g_autoptr(GError) err = NULL;
    g_autoptr(ClusterState) st = cluster_state_load(path, &err);
    g_assert_null(st);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, message_part));
    g_assert_nonnull(strstr(err->message, path));
}

static void test_state_refuses_other_files(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *path = cluster_state_path(f->root, NULL);
    expect_refused(path, "[1, 2]", "not a JSON object");
    expect_refused(path, "{\"cluster_id\": \"\"}", "not a herd cluster state file");
    expect_refused(path, "{\"herd_cluster_format\": 2, \"profile_dir\": \"/p\"}", "another format version");
    expect_refused(path, "{\"herd_cluster_format\": 1, \"profile_dir\": \"/p\"}", "no profile_dir or controller");
    expect_refused(path,
                   "{\"herd_cluster_format\": 1, \"profile_dir\": \"/p\", \"controller\": {\"kind\": \"local\"},"
                   " \"engine_sets\": [{\"kind\": \"pbs\"}]}",
                   "unknown kind");
    g_autoptr(GError) err = NULL;
    g_autofree char *missing = g_build_filename(f->root, "nothing.json", NULL);
    g_assert_null(cluster_state_load(missing, &err));
    g_assert_error(err, G_FILE_ERROR, G_FILE_ERROR_NOENT);
}

static void test_state_files_of_a_profile(Fixture *f, gconstpointer data)
{
    (void)data;
    const char *names[] = { "herd-cluster-b.json", "herd-cluster.json", "herd-cluster-a.json",
                            "cluster-x.json", "ipcontroller-client.json", "herd-cluster.json.ABC123" };
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
        g_autofree char *path = g_build_filename(f->root, "security", names[i], NULL);
        g_assert_true(g_file_set_contents(path, "{}", -1, NULL));
    }
    g_auto(GStrv) found = cluster_state_files(f->root);
    g_assert_cmpuint(g_strv_length(found), ==, 3);
    g_assert_true(g_str_has_suffix(found[0], "/herd-cluster-a.json"));
    g_assert_true(g_str_has_suffix(found[1], "/herd-cluster-b.json"));
    g_assert_true(g_str_has_suffix(found[2], "/herd-cluster.json"));
    g_autofree char *nowhere = g_build_filename(f->root, "no-profile", NULL);
    g_auto(GStrv) none = cluster_state_files(nowhere);
    g_assert_null(none[0]);
}

/* ---- processes ---- */

/* cluster_proc_spawn with the output in <root>/<log_name>; the proc even when it failed. */
static ClusterProc *spawn_logged(const char *root, const char *log_name, char **argv, GError **err)
{
    ClusterProc *p = cluster_proc_new(CLUSTER_PROC_LOCAL);
    p->log = g_build_filename(root, log_name, NULL);
    cluster_proc_spawn(p, argv, NULL, err);
    return p;
}

static ClusterProc *spawn_sleep(const char *root)
{
    char *argv[] = { "sleep", "30", NULL };
    g_autoptr(GError) err = NULL;
    ClusterProc *p = spawn_logged(root, "sleep.log", argv, &err);
    g_assert_no_error(err);
    return p;
}

static void test_identity_guards_against_pid_reuse(Fixture *f, gconstpointer data)
{
    (void)data;
    ClusterProc *p = spawn_sleep(f->root);
    g_assert_cmpint(p->pid, >, 0);
    g_assert_cmpuint(p->start_time, >, 0);
    g_assert_true(cluster_proc_alive(p));
    g_assert_cmpint(getsid(p->pid), ==, p->pid); /* a session of its own */

    /* The same pid seen from a state file (not our child): only a full match counts. */
    ClusterProc *recorded = cluster_proc_new(CLUSTER_PROC_LOCAL);
    recorded->pid = p->pid;
    recorded->start_time = p->start_time;
    recorded->boot_id = cluster_boot_id();
    g_assert_true(cluster_proc_alive(recorded));
    recorded->start_time++;
    g_assert_false(cluster_proc_alive(recorded));
    cluster_proc_signal(recorded, SIGTERM); /* another process: must not be signalled */
    g_assert_true(cluster_proc_alive(p));
    recorded->start_time--;
    g_free(recorded->boot_id);
    recorded->boot_id = g_strdup("an-earlier-boot");
    g_assert_false(cluster_proc_alive(recorded));

    cluster_proc_signal(p, SIGTERM);
    while (cluster_proc_alive(p))
        g_usleep(10 * 1000); /* bounded by the unit test timeout */
    g_assert_true(p->reaped);
    g_autofree char *how = cluster_proc_describe_exit(p);
    g_assert_cmpstr(how, ==, "was killed by signal 15 (Terminated)");

    g_autofree char *log = NULL;
    g_assert_true(g_file_get_contents(p->log, &log, NULL, NULL));
    g_assert_true(g_str_has_prefix(log, "$ sleep 30\n"));
    cluster_proc_free(recorded);
    cluster_proc_free(p);
}

static void test_descendants(Fixture *f, gconstpointer data)
{
    (void)data;
    /* a shell with two children (the second one's own child too) */
    char *argv[] = { "sh", "-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait", NULL };
    g_autoptr(GError) err = NULL;
    ClusterProc *p = spawn_logged(f->root, "tree.log", argv, &err);
    g_assert_no_error(err);
    GPtrArray *found = NULL;
    for (int i = 0; i < 500; i++) { /* up to 5 s for the shells to fork */
        if (found)
            g_ptr_array_unref(found);
        found = cluster_proc_descendants(p);
        if (found->len == 3)
            break;
        g_usleep(10 * 1000);
    }
    g_assert_cmpuint(found->len, ==, 3);
    cluster_proc_signal(p, SIGKILL);
    for (guint i = 0; i < found->len; i++) {
        ClusterProc *d = found->pdata[i];
        g_assert_true(cluster_proc_alive(d)); /* orphans, still running */
        cluster_proc_signal(d, SIGKILL);
    }
    for (guint i = 0; i < found->len; i++)
        while (cluster_proc_alive(found->pdata[i]))
            g_usleep(10 * 1000);
    while (cluster_proc_alive(p))
        g_usleep(10 * 1000);
    g_ptr_array_unref(found);
    cluster_proc_free(p);
}

static void test_spawn_of_a_missing_program_fails(Fixture *f, gconstpointer data)
{
    (void)data;
    char *argv[] = { "/nonexistent/engine", NULL };
    g_autoptr(GError) err = NULL;
    ClusterProc *p = spawn_logged(f->root, "missing.log", argv, &err);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "/nonexistent/engine"));
    cluster_proc_free(p);
}

static void test_log_tail(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *path = g_build_filename(f->root, "t.log", NULL);
    g_assert_true(g_file_set_contents(path, "one\ntwo\nthree\nfour\n", -1, NULL));
    g_autofree char *two = cluster_log_tail(path, 2);
    g_assert_cmpstr(two, ==, "    three\n    four\n");
    g_autofree char *all = cluster_log_tail(path, 10);
    g_assert_cmpstr(all, ==, "    one\n    two\n    three\n    four\n");
    g_autofree char *missing = cluster_log_tail("/nonexistent/log", 3);
    g_assert_cmpstr(missing, ==, "");
}

/* ---- helper commands ---- */

static void test_run_captures_and_bounds(Fixture *f, gconstpointer data)
{
    (void)data;
    g_autofree char *input = g_build_filename(f->root, "in.txt", NULL);
    g_assert_true(g_file_set_contents(input, "from stdin", -1, NULL));
    char *cat[] = { "sh", "-c", "cat; echo; echo oops >&2", NULL };
    g_autofree char *out = NULL, *errout = NULL;
    g_autoptr(GError) err = NULL;
    g_assert_true(cluster_run(cat, input, 10, &out, &errout, &err));
    g_assert_no_error(err);
    g_assert_cmpstr(out, ==, "from stdin\n");
    g_assert_cmpstr(errout, ==, "oops");

    char *fail[] = { "sh", "-c", "echo no such host >&2; exit 255", NULL };
    g_assert_false(cluster_run(fail, NULL, 10, NULL, NULL, &err));
    g_assert_nonnull(strstr(err->message, "exit status 255"));
    g_assert_nonnull(strstr(err->message, "no such host"));
    g_clear_error(&err);

    /* A command that hangs (with a child holding the pipes) is killed at the deadline. */
    gint64 began = g_get_monotonic_time();
    char *hang[] = { "sh", "-c", "sleep 30 & sleep 30", NULL };
    g_assert_false(cluster_run(hang, NULL, 0.3, NULL, NULL, &err));
    g_assert_nonnull(strstr(err->message, "did not finish"));
    g_assert_cmpint(g_get_monotonic_time() - began, <, 5 * G_USEC_PER_SEC);
}

/* ---- --hosts ---- */

static void expect_hosts(const char *list, int n, const char *expected, int expected_total)
{
    int total = -1;
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) hosts = cluster_parse_hosts(list, n, &total, &err);
    g_assert_no_error(err);
    GString *got = g_string_new(NULL);
    for (guint i = 0; i < hosts->len; i++) {
        ClusterHost *h = &g_array_index(hosts, ClusterHost, i);
        g_string_append_printf(got, "%s%s=%d", i ? " " : "", h->destination, h->engines);
    }
    g_assert_cmpstr(got->str, ==, expected);
    g_assert_cmpint(total, ==, expected_total);
    g_string_free(got, TRUE);
}

static void expect_bad_hosts(const char *list, int n, const char *message_part)
{
    int total = -1;
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) hosts = cluster_parse_hosts(list, n, &total, &err);
    g_assert_null(hosts);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, message_part));
}

static void test_hosts(void)
{
    expect_hosts("a", 0, "a=1", 1);
    expect_hosts("a,b:2, c ", 0, "a=1 b=2 c=1", 4);
    expect_hosts("a,b:2,c", 7, "a=3 b=2 c=2", 7);   /* 5 left over: round-robin */
    expect_hosts("a:3,user@b:1", 0, "a=3 user@b=1", 4);
    expect_hosts("a:3,b:1", 4, "a=3 b=1", 4);
    expect_hosts("a,,b", 4, "a=2 b=2", 4);
    expect_bad_hosts("", 2, "needs --hosts");
    expect_bad_hosts(" , ", 0, "needs --hosts");
    expect_bad_hosts("a:0", 0, "bad engine count in 'a:0'");
    expect_bad_hosts("a:x", 0, "bad engine count");
    expect_bad_hosts("a:3,b:1", 5, "-n 5 does not fit");   /* nobody takes the fifth */
    expect_bad_hosts("a:3,b", 3, "-n 3 does not fit");     /* b would get none */
    expect_bad_hosts("a:3", 2, "-n 2 does not fit");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add("/cluster/state/round-trip", Fixture, NULL, fixture_setup, test_state_round_trip, fixture_teardown);
    g_test_add("/cluster/state/names", Fixture, NULL, fixture_setup, test_state_without_cluster_id,
               fixture_teardown);
    g_test_add("/cluster/state/refusals", Fixture, NULL, fixture_setup, test_state_refuses_other_files,
               fixture_teardown);
    g_test_add("/cluster/state/files-of-a-profile", Fixture, NULL, fixture_setup, test_state_files_of_a_profile,
               fixture_teardown);
    g_test_add("/cluster/proc/identity", Fixture, NULL, fixture_setup, test_identity_guards_against_pid_reuse,
               fixture_teardown);
    g_test_add("/cluster/proc/descendants", Fixture, NULL, fixture_setup, test_descendants, fixture_teardown);
    g_test_add("/cluster/proc/missing-program", Fixture, NULL, fixture_setup, test_spawn_of_a_missing_program_fails,
               fixture_teardown);
    g_test_add("/cluster/proc/log-tail", Fixture, NULL, fixture_setup, test_log_tail, fixture_teardown);
    g_test_add("/cluster/run", Fixture, NULL, fixture_setup, test_run_captures_and_bounds, fixture_teardown);
    g_test_add_func("/cluster/hosts", test_hosts);
    return g_test_run();
}
