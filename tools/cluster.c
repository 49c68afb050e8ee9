/* herd — `herd cluster`: start and stop a whole cluster (herdd + engines) with one
 * command, like ipcluster.
 *
 *   herd cluster start -n N [--engine ipengine|herd] [--launcher local|mpiexec|ssh|slurm]
 *   herd cluster stop [--cluster-id ID | --all]
 *   herd cluster list
 *
 * start runs herdd in the background, waits for its connection files, launches the
 * engines, waits (as a native client of the hub) until all of them are registered,
 * records everything in the profile's state file and exits, leaving the cluster running.
 * On any failure it stops what it started, by pid, and exits non-zero. See
 * docs/cluster.md.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include <herd/client.h>
#include <herd/connfile.h>

#include "cluster.h"
#include "herd-tool.h"

#define DEFAULT_TIMEOUT_S 60.0
#define DEFAULT_STOP_GRACE_S 10.0
/* How long one attempt to reach the hub may take. */
#define CONNECT_ATTEMPT_MS 1000
#define REGISTRATION_POLL_MS 200

/* ---- the profile folder (as herdd and ipengine choose it) ---- */

typedef struct ProfileOptions {
    char *profile, *profile_dir, *ipython_dir, *cluster_id;
} ProfileOptions;

static void profile_options_clear(ProfileOptions *po)
{
    g_free(po->profile);
    g_free(po->profile_dir);
    g_free(po->ipython_dir);
    g_free(po->cluster_id);
}

static char *ipython_dir_of(const ProfileOptions *po)
{
    if (po->ipython_dir)
        return g_canonicalize_filename(po->ipython_dir, NULL);
    const char *env = g_getenv("IPYTHONDIR");
    if (env && *env)
        return g_canonicalize_filename(env, NULL);
    return g_build_filename(g_get_home_dir(), ".ipython", NULL);
}

/* Absolute: the state file names it for later commands run from elsewhere. */
static char *profile_dir_of(const ProfileOptions *po)
{
    if (po->profile_dir)
        return g_canonicalize_filename(po->profile_dir, NULL);
    g_autofree char *base = ipython_dir_of(po);
    g_autofree char *name = g_strconcat("profile_", po->profile ? po->profile : "default", NULL);
    return g_build_filename(base, name, NULL);
}

static void add_profile_entries(GOptionContext *ctx, ProfileOptions *po)
{
    GOptionEntry entries[] = {
        { "profile", 0, 0, G_OPTION_ARG_STRING, &po->profile, "Profile name (default: default)", "NAME" },
        { "profile-dir", 0, 0, G_OPTION_ARG_FILENAME, &po->profile_dir, "Profile folder (wins over --profile)", "DIR" },
        { "ipython-dir", 0, 0, G_OPTION_ARG_FILENAME, &po->ipython_dir,
          "IPython folder for --profile (default: $IPYTHONDIR or ~/.ipython)", "DIR" },
        { "cluster-id", 0, 0, G_OPTION_ARG_STRING, &po->cluster_id, "Cluster id (default: none)", "ID" },
        { NULL },
    };
    GOptionGroup *group = g_option_group_new("profile", "Which cluster:", "Show the profile options", NULL, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_add_group(ctx, group);
}

static gboolean parse_options(GOptionContext *ctx, const char *command, int *argc, char ***argv)
{
    GError *err = NULL;
    if (!g_option_context_parse(ctx, argc, argv, &err)) {
        fprintf(stderr, "herd cluster %s: %s\n", command, err->message);
        g_error_free(err);
        return FALSE;
    }
    if (*argc > 1) {
        fprintf(stderr, "herd cluster %s: unexpected argument '%s'\n", command, (*argv)[1]);
        return FALSE;
    }
    return TRUE;
}

/* ---- talking to the hub ---- */

static HerdClient *try_connect(const char *profile_dir, const char *cluster_id, int timeout_ms)
{
    g_autofree char *file = herd_connfile_path(profile_dir, cluster_id, "client");
    if (!g_file_test(file, G_FILE_TEST_EXISTS))
        return NULL;
    return herd_client_connect(file, timeout_ms, NULL);
}

/* Registered engines, or -1 when the hub does not answer. */
static int registered_engines(const char *profile_dir, const char *cluster_id, int timeout_ms)
{
    g_autoptr(HerdClient) c = try_connect(profile_dir, cluster_id, timeout_ms);
    guint n = 0;
    if (!c)
        return -1;
    herd_client_engines(c, &n);
    return (int)n;
}

/* ---- start ---- */

static gboolean files_parse(const char *client_file, const char *engine_file)
{
    HerdConnInfo a = { 0 }, b = { 0 };
    gboolean ok = herd_connfile_read(client_file, "client", &a, NULL) && herd_connfile_read(engine_file, "engine", &b, NULL);
    herd_conninfo_clear(&a);
    herd_conninfo_clear(&b);
    return ok;
}

static char **controller_argv(const ClusterOptions *o, const char *config, const char *ip, int ping_ms)
{
    g_autofree char *herdd = herd_tool_find_herdd();
    GStrvBuilder *b = g_strv_builder_new();
    g_strv_builder_add_many(b, herdd, "--profile-dir", o->profile_dir, NULL);
    if (*o->cluster_id)
        g_strv_builder_add_many(b, "--cluster-id", o->cluster_id, NULL);
    g_autofree char *config_flag = config ? g_strdup_printf("--config=%s", config) : NULL;
    g_autofree char *ip_flag = ip ? g_strdup_printf("--ip=%s", ip) : NULL;
    g_autofree char *ping_flag = ping_ms > 0 ? g_strdup_printf("--ping=%d", ping_ms) : NULL;
    const char *flags[] = { config_flag, ip_flag, ping_flag };
    for (guint i = 0; i < G_N_ELEMENTS(flags); i++)
        if (flags[i])
            g_strv_builder_add(b, flags[i]);
    char **argv = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    return argv;
}

/* Fails with a message naming why the controller is not there. */
static gboolean controller_gone(ClusterState *st, GError **err)
{
    if (cluster_proc_alive(st->controller))
        return FALSE;
    g_autofree char *how = cluster_proc_describe_exit(st->controller);
    g_autofree char *tail = cluster_log_tail(st->controller->log, 12);
    g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "herdd (pid %d) %s; the end of %s:\n%s",
                st->controller->pid, how, st->controller->log, tail);
    return TRUE;
}

static gboolean stopped_waiting(gint64 deadline, const char *what, double timeout_s, GError **err)
{
    if (cluster_interrupted()) {
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "interrupted while waiting for %s", what);
        return TRUE;
    }
    if (g_get_monotonic_time() >= deadline) {
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "%s not there after %.0f s (--timeout)", what, timeout_s);
        return TRUE;
    }
    return FALSE;
}

/* Wait until herdd has written its connection files and its hub answers a client. Each
 * attempt is short, so that herdd's exit or a signal is noticed meanwhile; files left
 * behind by an earlier controller (check_not_running made sure none answers on them)
 * just fail attempts until herdd replaces them. */
static HerdClient *wait_for_hub(ClusterState *st, gint64 deadline, double timeout_s, GError **err)
{
    g_autofree char *client_file = herd_connfile_path(st->profile_dir, st->cluster_id, "client");
    g_autofree char *engine_file = herd_connfile_path(st->profile_dir, st->cluster_id, "engine");
    for (;;) {
        gboolean written = files_parse(client_file, engine_file);
        if (written) {
            HerdClient *c = herd_client_connect(client_file, CONNECT_ATTEMPT_MS, NULL);
            if (c)
                return c;
        }
        if (controller_gone(st, err) ||
            stopped_waiting(deadline, written ? "an answer from herdd's hub" : "herdd's connection files", timeout_s,
                            err))
            return NULL;
        if (!written)
            cluster_poll_pause();
    }
}

static gboolean wait_for_engines(ClusterState *st, HerdClient *c, gint64 deadline, double timeout_s, GError **err)
{
    for (;;) {
        GError *wait_err = NULL;
        if (herd_client_wait_for_engines(c, (guint)st->n_engines, REGISTRATION_POLL_MS, &wait_err))
            return TRUE;
        if (!g_error_matches(wait_err, HERD_CLIENT_ERROR, HERD_CLIENT_ERROR_TIMEOUT)) {
            g_propagate_error(err, wait_err);
            return FALSE;
        }
        g_error_free(wait_err);
        g_autofree char *why = NULL;
        if (controller_gone(st, err))
            return FALSE;
        if (!cluster_engines_check(st, &why)) {
            g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "%s", why);
            return FALSE;
        }
        guint registered = 0;
        herd_client_engines(c, &registered);
        g_autofree char *what = g_strdup_printf("%d registered engines (%u are)", st->n_engines, registered);
        if (stopped_waiting(deadline, what, timeout_s, err))
            return FALSE;
    }
}

/* Refuse to start over a cluster that runs: ours (state file) or any controller that
 * answers on this profile's and cluster id's connection files. A state file whose
 * controller has gone is cleaned up. */
static gboolean check_not_running(const ClusterOptions *o, const char *state_path, GError **err)
{
    g_autoptr(ClusterState) old = g_file_test(state_path, G_FILE_TEST_EXISTS) ? cluster_state_load(state_path, NULL) : NULL;
    if (old && cluster_proc_alive(old->controller)) {
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_EXIST,
                    "cluster '%s' of %s is already running (herdd pid %d); stop it with herd cluster stop",
                    o->cluster_id, o->profile_dir, old->controller->pid);
        return FALSE;
    }
    if (old) {
        printf("herd cluster: the cluster recorded in %s has stopped; cleaning up after it\n", state_path);
        cluster_stop_all(old, DEFAULT_STOP_GRACE_S, TRUE);
    }
    g_unlink(state_path);
    g_autoptr(HerdClient) other = try_connect(o->profile_dir, o->cluster_id, CONNECT_ATTEMPT_MS);
    if (other) {
        g_autofree char *file = herd_connfile_path(o->profile_dir, o->cluster_id, "client");
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_EXIST,
                    "a controller already answers on %s; stop it first or choose another --cluster-id", file);
        return FALSE;
    }
    return TRUE;
}

static gboolean start_cluster(const ClusterOptions *o, ClusterState *st, const char *config, const char *ip, int ping_ms,
                              GError **err)
{
    gint64 started_us = g_get_monotonic_time();
    gint64 deadline = started_us + (gint64)(o->timeout * G_USEC_PER_SEC);
    st->controller = cluster_proc_new(CLUSTER_PROC_LOCAL);
    st->controller->log = cluster_log_path(o->profile_dir, o->cluster_id, "herdd");
    g_auto(GStrv) argv = controller_argv(o, config, ip, ping_ms);
    if (!cluster_proc_spawn(st->controller, argv, NULL, err)) {
        g_clear_pointer(&st->controller, cluster_proc_free);
        return FALSE;
    }
    if (!cluster_state_save(st, err))
        return FALSE;
    g_autoptr(HerdClient) c = wait_for_hub(st, deadline, o->timeout, err);
    if (!c || !cluster_launch_engines(o, st, err) || !cluster_state_save(st, err) ||
        !wait_for_engines(st, c, deadline, o->timeout, err))
        return FALSE;
    printf("herd cluster: cluster '%s' running in %s: herdd (pid %d) and %d engines (%s, launcher %s) "
           "registered after %.1f s\n",
           st->cluster_id, st->profile_dir, st->controller->pid, st->n_engines, st->engine, st->launcher,
           (double)(g_get_monotonic_time() - started_us) / G_USEC_PER_SEC);
    return TRUE;
}

static gboolean valid_choice(const char *value, const char *const *choices, const char *option, GError **err)
{
    if (g_strv_contains(choices, value))
        return TRUE;
    g_autofree char *list = g_strjoinv(", ", (char **)choices);
    g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s: unknown value '%s' (expected %s)", option, value, list);
    return FALSE;
}

static void cluster_options_clear(ClusterOptions *o)
{
    g_free(o->profile_dir);
    g_free(o->cluster_id);
    g_free(o->engine);
    g_free(o->launcher);
    g_free(o->python);
    g_free(o->engine_args);
    g_free(o->mpiexec);
    g_free(o->hosts);
    g_free(o->ssh);
    g_free(o->remote_profile_dir);
    g_free(o->sbatch);
}

/* Fill in the defaults and check the choices; FALSE with err on a bad option. */
static gboolean complete_start_options(ClusterOptions *o, const ProfileOptions *po, int ping_ms, GError **err)
{
    o->engine = o->engine ? o->engine : g_strdup("ipengine");
    o->launcher = o->launcher ? o->launcher : g_strdup("local");
    o->python = o->python ? o->python : g_strdup("/usr/bin/python3");
    o->cluster_id = g_strdup(po->cluster_id ? po->cluster_id : "");
    o->profile_dir = profile_dir_of(po);
    const char *engines[] = { "ipengine", "herd", NULL }, *launchers[] = { "local", "mpiexec", "ssh", "slurm", NULL };
    if (!valid_choice(o->engine, engines, "--engine", err) || !valid_choice(o->launcher, launchers, "--launcher", err))
        return FALSE;
    if (o->n < 0 || o->timeout <= 0 || ping_ms < 0) {
        g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "-n, --timeout and --ping must not be negative");
        return FALSE;
    }
    if (g_str_equal(o->launcher, "ssh")) { /* checked before anything starts */
        int total;
        g_autoptr(GArray) hosts = cluster_parse_hosts(o->hosts, o->n, &total, err);
        return hosts != NULL;
    }
    if (o->n == 0)
        o->n = (int)g_get_num_processors();
    return TRUE;
}

/* Everything after the options: 0 when the cluster runs, 1 when it could not start. */
static int run_start(const ClusterOptions *o, const char *config, const char *ip, int ping_ms)
{
    GError *err = NULL;
    g_autofree char *config_abs = config ? g_canonicalize_filename(config, NULL) : NULL;
    g_autofree char *state_path = cluster_state_path(o->profile_dir, o->cluster_id);
    if (!herd_profile_dir_ensure(o->profile_dir, &err) || !check_not_running(o, state_path, &err)) {
        fprintf(stderr, "herd cluster start: %s\n", err->message);
        g_error_free(err);
        return 1;
    }
    g_autoptr(ClusterState) st = cluster_state_new(o->profile_dir, o->cluster_id);
    st->launcher = g_strdup(o->launcher);
    st->engine = g_strdup(o->engine);
    st->n_engines = o->n;
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    st->started = g_date_time_format_iso8601(now);
    cluster_catch_signals();
    if (start_cluster(o, st, config_abs, ip, ping_ms, &err))
        return 0;
    fprintf(stderr, "herd cluster start: %s\n", err->message);
    g_error_free(err);
    if (st->controller) {
        fprintf(stderr, "herd cluster start: stopping what was started\n");
        cluster_stop_all(st, DEFAULT_STOP_GRACE_S, TRUE);
    }
    g_unlink(st->path);
    return 1;
}

static int cmd_start(int argc, char **argv)
{
    ProfileOptions po = { 0 };
    ClusterOptions o = { .timeout = DEFAULT_TIMEOUT_S };
    g_autofree char *config = NULL, *ip = NULL;
    int ping_ms = 0;
    GOptionEntry entries[] = {
        { "engines", 'n', 0, G_OPTION_ARG_INT, &o.n, "Engines to start (default: one per CPU; ssh: from --hosts)", "N" },
        { "engine", 0, 0, G_OPTION_ARG_STRING, &o.engine, "ipengine (default: Python's) or herd (herd engine)", "KIND" },
        { "launcher", 0, 0, G_OPTION_ARG_STRING, &o.launcher, "local (default), mpiexec, ssh or slurm", "NAME" },
        { "config", 0, 0, G_OPTION_ARG_FILENAME, &config, "herdd --config FILE (herd.conf or ipcontroller config)", "FILE" },
        { "ip", 0, 0, G_OPTION_ARG_STRING, &ip, "herdd --ip (bind address; remote engines need a reachable one)", "IP" },
        { "ping", 0, 0, G_OPTION_ARG_INT, &ping_ms, "herdd heartbeat period in ms (herdd's default: 3000)", "MS" },
        { "timeout", 0, 0, G_OPTION_ARG_DOUBLE, &o.timeout, "Seconds until every engine is registered (default: 60)", "S" },
        { "python", 0, 0, G_OPTION_ARG_FILENAME, &o.python, "Python with ipyparallel (default: /usr/bin/python3)", "PATH" },
        { "engine-args", 0, 0, G_OPTION_ARG_STRING, &o.engine_args, "Extra arguments for every engine", "ARGS" },
        { "mpiexec", 0, 0, G_OPTION_ARG_STRING, &o.mpiexec, "mpiexec launcher: the command (default: mpiexec)", "CMD" },
        { "hosts", 0, 0, G_OPTION_ARG_STRING, &o.hosts, "ssh launcher: host[:n],... (n engines on that host)", "LIST" },
        { "ssh", 0, 0, G_OPTION_ARG_STRING, &o.ssh, "ssh launcher: the ssh command and options (default: ssh)", "CMD" },
        { "remote-profile-dir", 0, 0, G_OPTION_ARG_FILENAME, &o.remote_profile_dir,
          "ssh launcher: profile folder on the hosts (default: the same path)", "DIR" },
        { "sbatch", 0, 0, G_OPTION_ARG_STRING, &o.sbatch, "slurm launcher: the sbatch command (default: sbatch)", "CMD" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- start herdd and engines in the background");
    g_option_context_add_main_entries(ctx, entries, NULL);
    add_profile_entries(ctx, &po);
    int status = 2;
    GError *err = NULL;
    if (parse_options(ctx, "start", &argc, &argv)) {
        if (complete_start_options(&o, &po, ping_ms, &err)) {
            status = run_start(&o, config, ip, ping_ms);
        } else {
            fprintf(stderr, "herd cluster start: %s\n", err->message);
            g_error_free(err);
        }
    }
    profile_options_clear(&po);
    cluster_options_clear(&o);
    return status;
}

/* ---- stop ---- */

/* After a controller that did not stop cleanly (killed, or dead before the stop), its
 * connection files are still there and would send clients to nothing: remove them
 * unless some controller answers on them. */
static void remove_stale_connection_files(ClusterState *st)
{
    g_autofree char *client_file = herd_connfile_path(st->profile_dir, st->cluster_id, "client");
    g_autofree char *engine_file = herd_connfile_path(st->profile_dir, st->cluster_id, "engine");
    if (!g_file_test(client_file, G_FILE_TEST_EXISTS) && !g_file_test(engine_file, G_FILE_TEST_EXISTS))
        return;
    g_autoptr(HerdClient) c = try_connect(st->profile_dir, st->cluster_id, CONNECT_ATTEMPT_MS);
    if (c)
        return;
    g_unlink(client_file);
    g_unlink(engine_file);
    printf("herd cluster: removed the stale connection files %s and %s\n", client_file, engine_file);
}

static int stop_one(const char *state_path, double grace_s)
{
    GError *err = NULL;
    g_autoptr(ClusterState) st = cluster_state_load(state_path, &err);
    if (!st) {
        fprintf(stderr, "herd cluster stop: %s\n", err->message);
        g_error_free(err);
        return 1;
    }
    printf("herd cluster: stopping cluster '%s' of %s\n", st->cluster_id, st->profile_dir);
    cluster_stop_all(st, grace_s, FALSE);
    remove_stale_connection_files(st);
    if (g_unlink(state_path) != 0 && errno != ENOENT) {
        fprintf(stderr, "herd cluster stop: %s: %s\n", state_path, g_strerror(errno));
        return 1;
    }
    return 0;
}

/* Stop one cluster (or, with all, every cluster of the profile). */
static int run_stop(const ProfileOptions *po, gboolean all, double grace_s)
{
    g_autofree char *profile_dir = profile_dir_of(po);
    g_auto(GStrv) paths = NULL;
    if (all) {
        paths = cluster_state_files(profile_dir);
        if (!paths[0])
            printf("herd cluster: no cluster in %s\n", profile_dir);
    } else {
        paths = g_new0(char *, 2);
        paths[0] = cluster_state_path(profile_dir, po->cluster_id);
        if (!g_file_test(paths[0], G_FILE_TEST_EXISTS)) {
            fprintf(stderr, "herd cluster stop: no cluster '%s' in %s (no %s)\n", po->cluster_id ? po->cluster_id : "",
                    profile_dir, paths[0]);
            return 1;
        }
    }
    int status = 0;
    for (char **p = paths; *p; p++)
        status |= stop_one(*p, grace_s);
    return status;
}

static int cmd_stop(int argc, char **argv)
{
    ProfileOptions po = { 0 };
    gboolean all = FALSE;
    double grace_s = DEFAULT_STOP_GRACE_S;
    GOptionEntry entries[] = {
        { "all", 0, 0, G_OPTION_ARG_NONE, &all, "Stop every cluster of the profile", NULL },
        { "timeout", 0, 0, G_OPTION_ARG_DOUBLE, &grace_s, "Seconds between SIGTERM and SIGKILL (default: 10)", "S" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- stop a cluster started by herd cluster start");
    g_option_context_add_main_entries(ctx, entries, NULL);
    add_profile_entries(ctx, &po);
    int status = parse_options(ctx, "stop", &argc, &argv) ? run_stop(&po, all, grace_s) : 2;
    profile_options_clear(&po);
    return status;
}

/* ---- list ---- */

/* "NAME" for <ipython dir>/profile_NAME, else the path. */
static char *profile_label(const char *profile_dir, const char *ipython_dir)
{
    g_autofree char *parent = g_path_get_dirname(profile_dir);
    g_autofree char *base = g_path_get_basename(profile_dir);
    if (g_str_equal(parent, ipython_dir) && g_str_has_prefix(base, "profile_"))
        return g_strdup(base + strlen("profile_"));
    return g_strdup(profile_dir);
}

static void list_profile(const char *profile_dir, const char *ipython_dir)
{
    g_auto(GStrv) paths = cluster_state_files(profile_dir);
    g_autofree char *label = profile_label(profile_dir, ipython_dir);
    for (char **p = paths; *p; p++) {
        GError *err = NULL;
        g_autoptr(ClusterState) st = cluster_state_load(*p, &err);
        if (!st) {
            fprintf(stderr, "herd cluster list: %s\n", err->message);
            g_error_free(err);
            continue;
        }
        gboolean running = cluster_proc_alive(st->controller);
        int registered = running ? registered_engines(st->profile_dir, st->cluster_id, 2000) : -1;
        g_autofree char *id = g_strdup_printf("'%s'", st->cluster_id);
        g_autofree char *engines = registered >= 0 ? g_strdup_printf("%d/%d", registered, st->n_engines)
                                                   : g_strdup_printf("-/%d", st->n_engines);
        g_autofree char *controller = running ? g_strdup_printf("pid %d", st->controller->pid) : g_strdup("stopped");
        printf("%-16s %-20s %-12s %-8s %-16s %s\n", label, id, controller, engines,
               st->launcher ? st->launcher : "?", st->engine ? st->engine : "?");
    }
}

static void run_list(const ProfileOptions *po)
{
    g_autofree char *ipython_dir = ipython_dir_of(po);
    printf("%-16s %-20s %-12s %-8s %-16s %s\n", "PROFILE", "CLUSTER ID", "HERDD", "ENGINES", "LAUNCHER", "ENGINE");
    if (po->profile_dir || po->profile) {
        g_autofree char *profile_dir = profile_dir_of(po);
        list_profile(profile_dir, ipython_dir);
        return;
    }
    /* No profile given: every profile of the IPython folder, as ipcluster list does. */
    g_autoptr(GPtrArray) dirs = g_ptr_array_new_with_free_func(g_free);
    GDir *dir = g_dir_open(ipython_dir, 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name(dir)))
        if (g_str_has_prefix(name, "profile_"))
            g_ptr_array_add(dirs, g_build_filename(ipython_dir, name, NULL));
    if (dir)
        g_dir_close(dir);
    g_ptr_array_sort(dirs, cluster_compare_paths);
    for (guint i = 0; i < dirs->len; i++)
        list_profile(dirs->pdata[i], ipython_dir);
}

static int cmd_list(int argc, char **argv)
{
    ProfileOptions po = { 0 };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- list the clusters started by herd cluster start");
    add_profile_entries(ctx, &po);
    int status = 2;
    if (parse_options(ctx, "list", &argc, &argv)) {
        run_list(&po);
        status = 0;
    }
    profile_options_clear(&po);
    return status;
}

/* ---- dispatch ---- */

static void usage(FILE *out)
{
    fprintf(out, "Usage: herd cluster start|stop|list [OPTIONS]\n\n"
                 "  start   start herdd and engines in the background, wait until every engine is registered\n"
                 "  stop    stop a cluster that start started (engines, then herdd)\n"
                 "  list    the clusters of a profile (or of every profile) and their registered engines\n"
                 "\nRun 'herd cluster COMMAND --help' for the options of a command.\n");
}

int herd_cmd_cluster(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (g_str_equal(command, "--help") || g_str_equal(command, "-h") || g_str_equal(command, "help")) {
        usage(stdout);
        return 0;
    }
    g_autofree char *prgname = g_strdup_printf("herd cluster %s", command);
    g_set_prgname(prgname);
    if (g_str_equal(command, "start"))
        return cmd_start(argc - 1, argv + 1);
    if (g_str_equal(command, "stop"))
        return cmd_stop(argc - 1, argv + 1);
    if (g_str_equal(command, "list") || g_str_equal(command, "status"))
        return cmd_list(argc - 1, argv + 1);
    fprintf(stderr, "herd cluster: unknown command '%s'\n\n", command);
    usage(stderr);
    return 2;
}
