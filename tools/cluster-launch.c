/* herd — `herd cluster`: engine launchers.
 *
 * local    N engine processes here (`herd engine`: one process serving N engines)
 * mpiexec  one `mpiexec -n N <engine>` process here
 * ssh      per host, one ssh call that copies the engine connection file and starts the
 *          host's engines in the background (setsid, output to a log on the host), then
 *          prints each one's pid, start time and boot id
 * slurm    one batch job (sbatch) whose N tasks (srun) are the engines
 *
 * Each engine set goes into the state file as soon as it has started, so that a start
 * that fails later (or is interrupted) can still stop it. See docs/cluster.md.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include <herd/connfile.h>

#include "cluster.h"
#include "herd-tool.h"

/* How often a start that waits for registrations asks ssh hosts (an ssh round trip each
 * time) and Slurm (squeue) whether the engines still run. */
#define SSH_CHECK_INTERVAL_US (5 * G_USEC_PER_SEC)
#define SLURM_CHECK_INTERVAL_US (2 * G_USEC_PER_SEC)
#define SLURM_POLL_INTERVAL_US (G_USEC_PER_SEC / 2)

static gboolean is_herd_engine(const ClusterOptions *o)
{
    return g_strcmp0(o->engine, "herd") == 0;
}

/* The engine command for one process serving `count` engines (`herd engine` only; an
 * ipengine is always one engine). */
static char **engine_argv(const ClusterOptions *o, const char *profile_dir, int count, GError **err)
{
    g_auto(GStrv) extra = NULL;
    if (o->engine_args && !g_shell_parse_argv(o->engine_args, NULL, &extra, err))
        return NULL;
    GStrvBuilder *b = g_strv_builder_new();
    if (is_herd_engine(o)) {
        g_autofree char *self = herd_tool_self_path();
        g_strv_builder_add_many(b, self, "engine", NULL);
    } else {
        g_strv_builder_add_many(b, o->python, "-m", "ipyparallel.engine", NULL);
    }
    g_strv_builder_add_many(b, "--profile-dir", profile_dir, NULL);
    if (*o->cluster_id)
        g_strv_builder_add_many(b, "--cluster-id", o->cluster_id, NULL);
    if (is_herd_engine(o) && count != 1) {
        g_autofree char *n = g_strdup_printf("%d", count);
        g_strv_builder_add_many(b, "--count", n, NULL);
    }
    if (extra)
        g_strv_builder_addv(b, (const char **)extra);
    char **argv = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    return argv;
}

static char **shell_words(const char *command, const char *fallback, GError **err)
{
    char **words = NULL;
    if (!g_shell_parse_argv(command && *command ? command : fallback, NULL, &words, err))
        return NULL;
    return words;
}

/* Record a started engine set: the state file must name it before anything else can
 * fail. */
static gboolean add_engine_set(ClusterState *st, ClusterProc *p, GError **err)
{
    g_ptr_array_add(st->engine_sets, p);
    return cluster_state_save(st, err);
}

static gboolean spawn_engine_set(ClusterState *st, char **argv, char **envp, int engines, const char *log_name,
                                 GError **err)
{
    ClusterProc *p = cluster_proc_new(CLUSTER_PROC_LOCAL);
    p->engines = engines;
    p->log = cluster_log_path(st->profile_dir, st->cluster_id, log_name);
    if (!cluster_proc_spawn(p, argv, envp, err)) {
        cluster_proc_free(p);
        return FALSE;
    }
    return add_engine_set(st, p, err);
}

/* ---- local ---- */

static gboolean launch_local(const ClusterOptions *o, ClusterState *st, GError **err)
{
    if (is_herd_engine(o)) {
        g_auto(GStrv) argv = engine_argv(o, st->profile_dir, o->n, err);
        return argv && spawn_engine_set(st, argv, NULL, o->n, "engines", err);
    }
    g_auto(GStrv) argv = engine_argv(o, st->profile_dir, 1, err);
    if (!argv)
        return FALSE;
    for (int i = 0; i < o->n; i++) {
        g_autofree char *name = g_strdup_printf("engine-%d", i);
        if (!spawn_engine_set(st, argv, NULL, 1, name, err))
            return FALSE;
    }
    return TRUE;
}

/* ---- mpiexec ---- */

static gboolean launch_mpiexec(const ClusterOptions *o, ClusterState *st, GError **err)
{
    g_auto(GStrv) mpiexec = shell_words(o->mpiexec, "mpiexec", err);
    g_auto(GStrv) engine = mpiexec ? engine_argv(o, st->profile_dir, 1, err) : NULL;
    if (!engine)
        return FALSE;
    g_autofree char *n = g_strdup_printf("%d", o->n);
    GStrvBuilder *b = g_strv_builder_new();
    g_strv_builder_addv(b, (const char **)mpiexec);
    g_strv_builder_add_many(b, "-n", n, NULL);
    g_strv_builder_addv(b, (const char **)engine);
    g_auto(GStrv) argv = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    /* Open MPI refuses more ranks than cores and, as root, to run at all, unless told;
     * an engine cluster is routinely both. Other MPIs ignore these variables, and the
     * caller's own settings win. */
    char **envp = g_get_environ();
    envp = g_environ_setenv(envp, "OMPI_MCA_rmaps_base_oversubscribe", "1", FALSE);
    if (geteuid() == 0) {
        envp = g_environ_setenv(envp, "OMPI_ALLOW_RUN_AS_ROOT", "1", FALSE);
        envp = g_environ_setenv(envp, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", FALSE);
    }
    gboolean ok = spawn_engine_set(st, argv, envp, o->n, "mpiexec", err);
    g_strfreev(envp);
    return ok;
}

/* ---- ssh ---- */

static void ssh_host_clear(gpointer data)
{
    g_free(((ClusterHost *)data)->destination);
}

GArray *cluster_parse_hosts(const char *list, int n, int *total, GError **err)
{
    g_autoptr(GArray) hosts = g_array_new(FALSE, TRUE, sizeof(ClusterHost));
    g_array_set_clear_func(hosts, ssh_host_clear);
    g_auto(GStrv) items = g_strsplit(list ? list : "", ",", -1);
    int counted = 0, uncounted = 0;
    for (char **item = items; *item; item++) {
        char *spec = g_strstrip(*item);
        if (!*spec)
            continue;
        ClusterHost h = { .engines = -1 };
        const char *colon = strrchr(spec, ':');
        char *end = NULL;
        if (colon && colon[1]) {
            h.engines = (int)strtol(colon + 1, &end, 10);
            if (*end || h.engines < 1) {
                g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--hosts: bad engine count in '%s'", spec);
                return NULL;
            }
            counted += h.engines;
            h.destination = g_strndup(spec, (gsize)(colon - spec));
        } else {
            uncounted++;
            h.destination = g_strdup(spec);
        }
        g_array_append_val(hosts, h);
    }
    if (hosts->len == 0) {
        g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--launcher ssh needs --hosts host[:n],...");
        return NULL;
    }
    /* Every host listed runs at least one engine. */
    int rest = n > 0 ? n - counted : uncounted;
    if (uncounted ? rest < uncounted : rest != 0) {
        g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "-n %d does not fit --hosts %s (%d engines placed by counts)", n, list, counted);
        return NULL;
    }
    for (guint i = 0, k = 0; i < hosts->len; i++) {
        ClusterHost *h = &g_array_index(hosts, ClusterHost, i);
        if (h->engines < 0)
            h->engines = rest / uncounted + ((int)k++ < rest % uncounted ? 1 : 0);
    }
    *total = counted + rest;
    return g_steal_pointer(&hosts);
}

static void append_quoted(GString *s, char **words)
{
    for (char **w = words; *w; w++) {
        g_autofree char *q = g_shell_quote(*w);
        g_string_append_printf(s, "%s%s", w == words ? "" : " ", q);
    }
}

/* Field 22 (start time) of /proc/PID/stat, read by the remote shell: fields resume
 * after the command name's ") ", so it is the 20th there (and the state the 1st). */
#define REMOTE_STAT "sed 's/.*) //' /proc/$pid/stat 2>/dev/null"
#define REMOTE_BOOT "b=$(cat /proc/sys/kernel/random/boot_id)\n"

/* The script one ssh call runs on a host: copy the engine connection file from stdin
 * (through a temporary name: on this very machine it is the file being read), start the
 * engines in sessions of their own, print "herd-engine PID:START:BOOT" for each. */
static char *ssh_start_script(const char *profile_dir, const char *engine_file, char **argv, int processes,
                              int first_index, const char *cluster_id, GPtrArray *logs)
{
    g_autofree char *security = g_build_filename(profile_dir, "security", NULL);
    g_autofree char *log_dir = g_build_filename(profile_dir, "log", NULL);
    g_autofree char *q_security = g_shell_quote(security), *q_log_dir = g_shell_quote(log_dir),
                    *q_file = g_shell_quote(engine_file);
    GString *s = g_string_new("umask 077\n");
    g_string_append_printf(s, "mkdir -p %s %s || exit 1\n", q_security, q_log_dir);
    g_string_append_printf(s, "t=%s.$$\ncat > \"$t\" && mv -f \"$t\" %s || exit 1\n", q_file, q_file);
    g_string_append(s, "cd / || exit 1\n" REMOTE_BOOT);
    for (int i = 0; i < processes; i++) {
        g_autofree char *name = g_strdup_printf("engine-%d", first_index + i);
        char *log = cluster_log_path(profile_dir, cluster_id, name);
        g_autofree char *q_log = g_shell_quote(log);
        g_ptr_array_add(logs, log);
        g_string_append(s, "setsid ");
        append_quoted(s, argv);
        g_string_append_printf(s, " >>%s 2>&1 </dev/null &\npid=$!\n", q_log);
        g_string_append(s, "echo \"herd-engine $pid:$(" REMOTE_STAT " | cut -d' ' -f20):$b\"\n");
    }
    return g_string_free(s, FALSE);
}

static char **ssh_argv(char **ssh_command, const char *destination, const char *script)
{
    GStrvBuilder *b = g_strv_builder_new();
    g_strv_builder_addv(b, (const char **)ssh_command);
    g_strv_builder_add_many(b, destination, script, NULL);
    char **argv = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    return argv;
}

/* One "herd-engine PID:START:BOOT" line -> an SSH ClusterProc (start 0 when the engine
 * had already gone when the host looked). */
static ClusterProc *parse_started(const char *line, const char *destination)
{
    if (!g_str_has_prefix(line, "herd-engine "))
        return NULL;
    g_auto(GStrv) parts = g_strsplit(line + strlen("herd-engine "), ":", 3);
    if (g_strv_length(parts) != 3 || atoi(parts[0]) <= 0)
        return NULL;
    ClusterProc *p = cluster_proc_new(CLUSTER_PROC_SSH);
    p->pid = atoi(parts[0]);
    p->start_time = g_ascii_strtoull(parts[1], NULL, 10);
    p->boot_id = g_strdup(g_strstrip(parts[2]));
    p->host = g_strdup(destination);
    return p;
}

/* One ssh call per host, all at once: each host's start costs an ssh round trip. */
static gboolean launch_ssh(const ClusterOptions *o, ClusterState *st, GError **err)
{
    int total = 0;
    g_autoptr(GArray) hosts = cluster_parse_hosts(o->hosts, o->n, &total, err);
    g_auto(GStrv) ssh = hosts ? shell_words(o->ssh, "ssh", err) : NULL;
    if (!ssh)
        return FALSE;
    /* No terminal (under -tt a backgrounded engine dies with the session), and never a
     * password prompt: nobody is there to answer it. The user's own options come first
     * and so win. */
    GStrvBuilder *b = g_strv_builder_new();
    g_strv_builder_addv(b, (const char **)ssh);
    g_strv_builder_add_many(b, "-T", "-o", "BatchMode=yes", NULL);
    g_strfreev(st->ssh_command);
    st->ssh_command = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    st->n_engines = total;

    const char *remote_dir = o->remote_profile_dir ? o->remote_profile_dir : st->profile_dir;
    g_autofree char *local_file = herd_connfile_path(st->profile_dir, st->cluster_id, "engine");
    g_autofree char *remote_file = herd_connfile_path(remote_dir, st->cluster_id, "engine");
    g_autofree ClusterRun **runs = g_new0(ClusterRun *, hosts->len);
    g_autoptr(GPtrArray) logs = g_ptr_array_new_with_free_func((GDestroyNotify)g_ptr_array_unref);
    GError *first_err = NULL;
    for (guint i = 0, index = 0; i < hosts->len && !first_err; i++) {
        ClusterHost *h = &g_array_index(hosts, ClusterHost, i);
        int processes = is_herd_engine(o) ? 1 : h->engines;
        GPtrArray *host_logs = g_ptr_array_new_with_free_func(g_free);
        g_ptr_array_add(logs, host_logs);
        g_auto(GStrv) engine = engine_argv(o, remote_dir, is_herd_engine(o) ? h->engines : 1, &first_err);
        if (!engine)
            break;
        g_autofree char *script =
            ssh_start_script(remote_dir, remote_file, engine, processes, (int)index, st->cluster_id, host_logs);
        g_auto(GStrv) argv = ssh_argv(st->ssh_command, h->destination, script);
        runs[i] = cluster_run_begin(argv, local_file, &first_err);
        index += (guint)processes;
    }
    /* Every ssh that began is waited for and what it started recorded, even after an
     * error elsewhere, so that the failed start stops it too. */
    for (guint i = 0; i < hosts->len; i++) {
        if (!runs[i])
            continue;
        ClusterHost *h = &g_array_index(hosts, ClusterHost, i);
        GPtrArray *host_logs = logs->pdata[i];
        g_autofree char *out = NULL;
        GError *run_err = NULL;
        gboolean ran = cluster_run_end(runs[i], o->timeout, &out, NULL, &run_err);
        g_auto(GStrv) lines = g_strsplit(out ? out : "", "\n", -1);
        guint started = 0;
        for (char **line = lines; *line && started < host_logs->len; line++) {
            ClusterProc *p = parse_started(*line, h->destination);
            if (!p)
                continue;
            p->engines = is_herd_engine(o) ? h->engines : 1;
            p->log = g_strdup(host_logs->pdata[started++]);
            if (!add_engine_set(st, p, first_err ? NULL : &first_err))
                break;
        }
        if (!ran)
            g_prefix_error(&run_err, "ssh %s: ", h->destination);
        else if (started < host_logs->len)
            g_set_error(&run_err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "ssh %s: %u of %u engine processes reported",
                        h->destination, started, host_logs->len);
        if (run_err && !first_err)
            first_err = run_err;
        else if (run_err)
            g_error_free(run_err);
    }
    if (first_err) {
        g_propagate_error(err, first_err);
        return FALSE;
    }
    return TRUE;
}

/* The start of every script that looks after a host's engine sets: `alive` prints the
 * pids among them that still run with their recorded identity. */
static GString *ssh_host_script(ClusterState *st, const char *host)
{
    GString *s = g_string_new(REMOTE_BOOT "alive() {\n  for p in");
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind == CLUSTER_PROC_SSH && g_strcmp0(p->host, host) == 0)
            g_string_append_printf(s, " %d:%" G_GUINT64_FORMAT ":%s", p->pid, p->start_time,
                                   p->boot_id ? p->boot_id : "");
    }
    g_string_append(s, "; do\n"
                       "    pid=${p%%:*}; r=${p#*:}; st=${r%%:*}; bt=${r#*:}\n"
                       "    s=$(" REMOTE_STAT " | cut -d' ' -f1,20)\n"
                       "    [ \"$bt\" = \"$b\" ] && [ -n \"$s\" ] && [ \"${s%% *}\" != Z ] && [ \"${s#* }\" = \"$st\" ] && echo \"$pid\"\n"
                       "  done\n"
                       "  true\n"
                       "}\n");
    return s;
}

/* Run `body` after ssh_host_script on every host at once; the outputs in host order (NULL
 * where ssh failed: the error is printed, and nothing more can be done about that host). */
static GPtrArray *ssh_run_everywhere(ClusterState *st, GPtrArray *hosts, const char *body, double timeout_s)
{
    g_autofree ClusterRun **runs = g_new0(ClusterRun *, hosts->len);
    for (guint h = 0; h < hosts->len; h++) {
        GString *script = ssh_host_script(st, hosts->pdata[h]);
        g_string_append(script, body);
        g_auto(GStrv) argv = ssh_argv(st->ssh_command, hosts->pdata[h], script->str);
        g_string_free(script, TRUE);
        GError *err = NULL;
        runs[h] = cluster_run_begin(argv, NULL, &err);
        if (!runs[h]) {
            g_printerr("herd cluster: ssh %s: %s\n", (char *)hosts->pdata[h], err->message);
            g_error_free(err);
        }
    }
    GPtrArray *outs = g_ptr_array_new_with_free_func(g_free);
    for (guint h = 0; h < hosts->len; h++) {
        char *out = NULL;
        GError *err = NULL;
        if (runs[h] && !cluster_run_end(runs[h], timeout_s, &out, NULL, &err)) {
            g_printerr("herd cluster: ssh %s: %s\n", (char *)hosts->pdata[h], err->message);
            g_error_free(err);
            g_clear_pointer(&out, g_free);
        }
        g_ptr_array_add(outs, out);
    }
    return outs;
}

/* The distinct ssh hosts of st's engine sets. */
static GPtrArray *ssh_hosts_of(ClusterState *st)
{
    GPtrArray *hosts = g_ptr_array_new();
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind == CLUSTER_PROC_SSH && !g_ptr_array_find_with_equal_func(hosts, p->host, g_str_equal, NULL))
            g_ptr_array_add(hosts, p->host);
    }
    return hosts;
}

/* Ask every host whether its engine sets still run; *why names the first one that does
 * not. A host that ssh cannot reach is not counted against the start. */
static gboolean ssh_engines_running(ClusterState *st, char **why)
{
    g_autoptr(GPtrArray) hosts = ssh_hosts_of(st);
    g_autoptr(GPtrArray) outs = ssh_run_everywhere(st, hosts, "alive\n", 30);
    for (guint i = 0; i < st->engine_sets->len && !*why; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        guint h;
        if (p->kind != CLUSTER_PROC_SSH || !g_ptr_array_find_with_equal_func(hosts, p->host, g_str_equal, &h) ||
            !outs->pdata[h])
            continue;
        g_auto(GStrv) pids = g_strsplit_set(outs->pdata[h], " \n", -1);
        g_autofree char *pid = g_strdup_printf("%d", p->pid);
        if (!g_strv_contains((const char *const *)pids, pid))
            *why = g_strdup_printf("the engine process %d on %s ended (its log there: %s)", p->pid, p->host, p->log);
    }
    return *why == NULL;
}

/* Stop every host's engine sets, one ssh call per host, all at once: SIGTERM, up to
 * grace_s for them to end (looked at on the host, not through an ssh round trip each
 * time), then SIGKILL. Returns how many processes needed SIGKILL. */
static guint ssh_stop_engines(ClusterState *st, double grace_s)
{
    g_autoptr(GPtrArray) hosts = ssh_hosts_of(st);
    g_autofree char *body = g_strdup_printf("set -- $(alive)\n"
                                            "[ $# -gt 0 ] && kill -s TERM \"$@\" 2>/dev/null\n"
                                            "i=0\n"
                                            "while [ -n \"$(alive)\" ] && [ $i -lt %d ]; do sleep 0.1; i=$((i + 1)); done\n"
                                            "left=$(alive)\n"
                                            "if [ -n \"$left\" ]; then kill -s KILL $left 2>/dev/null; echo killed $left; fi\n"
                                            "true\n",
                                            (int)(grace_s * 10));
    g_autoptr(GPtrArray) outs = ssh_run_everywhere(st, hosts, body, grace_s + 30);
    guint killed = 0;
    for (guint h = 0; h < outs->len; h++) {
        const char *line = outs->pdata[h] ? strstr(outs->pdata[h], "killed ") : NULL;
        if (line) {
            g_autofree char *list = g_strchomp(g_strdup(line + strlen("killed ")));
            g_auto(GStrv) pids = g_strsplit(list, " ", -1);
            killed += g_strv_length(pids);
        }
    }
    return killed;
}

/* ---- slurm ---- */

static char *sbatch_script(const ClusterOptions *o, ClusterState *st, const char *log, GError **err)
{
    g_auto(GStrv) engine = engine_argv(o, st->profile_dir, 1, err);
    if (!engine)
        return NULL;
    GString *s = g_string_new("#!/bin/sh\n");
    g_string_append_printf(s, "#SBATCH --job-name=herd-engines%s%s\n", *st->cluster_id ? "-" : "",
                           st->cluster_id);
    g_string_append_printf(s, "#SBATCH --ntasks=%d\n#SBATCH --output=%s\n", o->n, log);
    g_string_append(s, "exec srun ");
    append_quoted(s, engine);
    g_string_append_c(s, '\n');
    return g_string_free(s, FALSE);
}

static gboolean launch_slurm(const ClusterOptions *o, ClusterState *st, GError **err)
{
    g_auto(GStrv) sbatch = shell_words(o->sbatch, "sbatch", err);
    if (!sbatch)
        return FALSE;
    ClusterProc *p = cluster_proc_new(CLUSTER_PROC_SLURM);
    p->engines = o->n;
    p->log = cluster_log_path(st->profile_dir, st->cluster_id, "engines");
    g_autofree char *log_base = g_strndup(p->log, strlen(p->log) - strlen(".log"));
    g_autofree char *script_path = g_strconcat(log_base, ".sbatch", NULL);
    g_autofree char *script = sbatch_script(o, st, p->log, err);
    if (!script || !g_file_set_contents(script_path, script, -1, err)) {
        cluster_proc_free(p);
        return FALSE;
    }
    GStrvBuilder *b = g_strv_builder_new();
    g_strv_builder_addv(b, (const char **)sbatch);
    g_strv_builder_add_many(b, "--parsable", script_path, NULL);
    g_auto(GStrv) argv = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    g_autofree char *out = NULL;
    if (!cluster_run(argv, NULL, o->timeout, &out, NULL, err)) {
        cluster_proc_free(p);
        return FALSE;
    }
    /* --parsable prints "<job id>" or "<job id>;<cluster>" */
    p->job_id = g_strdup(g_strstrip(g_strdelimit(out, ";", '\0')));
    if (!*p->job_id) {
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "sbatch printed no job id");
        cluster_proc_free(p);
        return FALSE;
    }
    return add_engine_set(st, p, err);
}

/* A Slurm job that is still pending, running or being cancelled. */
static gboolean slurm_job_active(const ClusterProc *p, double timeout_s)
{
    char *argv[] = { "squeue", "-h", "-j", p->job_id, "-o", "%T", NULL };
    g_autofree char *out = NULL;
    if (!cluster_run(argv, NULL, timeout_s, &out, NULL, NULL))
        return FALSE; /* squeue forgets finished jobs: "Invalid job id" */
    g_strstrip(out);
    const char *active[] = { "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                             "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", NULL };
    return g_strv_contains(active, out);
}

static void slurm_cancel(const ClusterProc *p, int sig, double timeout_s)
{
    char *argv[] = { "scancel", sig == SIGKILL ? "--signal=KILL" : "--quiet", p->job_id, NULL };
    GError *err = NULL;
    if (!cluster_run(argv, NULL, timeout_s, NULL, NULL, &err)) {
        g_printerr("herd cluster: %s\n", err->message);
        g_error_free(err);
    }
}

/* ---- launching, checking, stopping ---- */

gboolean cluster_launch_engines(const ClusterOptions *o, ClusterState *st, GError **err)
{
    static const struct {
        const char *name;
        gboolean (*launch)(const ClusterOptions *o, ClusterState *st, GError **err);
    } launchers[] = {
        { "local", launch_local },
        { "mpiexec", launch_mpiexec },
        { "ssh", launch_ssh },
        { "slurm", launch_slurm },
    };
    for (guint i = 0; i < G_N_ELEMENTS(launchers); i++)
        if (g_str_equal(o->launcher, launchers[i].name))
            return launchers[i].launch(o, st, err);
    g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "unknown launcher '%s' (expected local, mpiexec, ssh or slurm)", o->launcher);
    return FALSE;
}

gboolean cluster_engines_check(ClusterState *st, char **why)
{
    static gint64 next_ssh_check, next_slurm_check;
    gint64 now = g_get_monotonic_time();
    gboolean ask_slurm = now >= next_slurm_check;
    if (ask_slurm)
        next_slurm_check = now + SLURM_CHECK_INTERVAL_US;
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind == CLUSTER_PROC_LOCAL && !cluster_proc_alive(p)) {
            g_autofree char *how = cluster_proc_describe_exit(p);
            g_autofree char *tail = cluster_log_tail(p->log, 8);
            *why = g_strdup_printf("the engine process %d %s; the end of %s:\n%s", p->pid, how, p->log, tail);
            return FALSE;
        }
        if (p->kind == CLUSTER_PROC_SLURM && ask_slurm && !slurm_job_active(p, 30)) {
            g_autofree char *tail = cluster_log_tail(p->log, 8);
            *why = g_strdup_printf("Slurm job %s ended; the end of %s:\n%s", p->job_id, p->log, tail);
            return FALSE;
        }
    }
    if (st->ssh_command && now >= next_ssh_check) {
        next_ssh_check = now + SSH_CHECK_INTERVAL_US;
        return ssh_engines_running(st, why);
    }
    return TRUE;
}

guint cluster_engine_sets_running(ClusterState *st)
{
    guint running = 0;
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if ((p->kind == CLUSTER_PROC_LOCAL && cluster_proc_alive(p)) ||
            (p->kind == CLUSTER_PROC_SLURM && slurm_job_active(p, 10)))
            running++;
    }
    return running;
}

/* Every local process in procs has ended. */
static gboolean local_all_gone(GPtrArray *procs)
{
    for (guint i = 0; i < procs->len; i++) {
        ClusterProc *p = procs->pdata[i];
        if (p->kind == CLUSTER_PROC_LOCAL && cluster_proc_alive(p))
            return FALSE;
    }
    return TRUE;
}

static gboolean slurm_all_gone(ClusterState *st, double timeout_s)
{
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind == CLUSTER_PROC_SLURM && slurm_job_active(p, timeout_s))
            return FALSE;
    }
    return TRUE;
}

/* Send sig to every local engine set (and, with SIGKILL, their descendants) and Slurm
 * job; ssh hosts are handled by ssh_stop_engines. */
static void signal_engine_sets(ClusterState *st, GPtrArray *followers, int sig)
{
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind == CLUSTER_PROC_LOCAL)
            cluster_proc_signal(p, sig);
        else if (p->kind == CLUSTER_PROC_SLURM)
            slurm_cancel(p, sig, 30);
    }
    for (guint i = 0; i < followers->len; i++)
        if (sig == SIGKILL)
            cluster_proc_signal(followers->pdata[i], sig);
}

/* Poll until every local engine set, descendant and Slurm job is gone or the deadline
 * passes (Slurm is asked less often than /proc is looked at). */
static gboolean wait_engine_sets(ClusterState *st, GPtrArray *followers, gint64 deadline)
{
    gboolean jobs_gone = FALSE;
    gint64 next_squeue = 0;
    for (;;) {
        gboolean local_gone = local_all_gone(st->engine_sets) && local_all_gone(followers);
        if (!jobs_gone && g_get_monotonic_time() >= next_squeue) {
            next_squeue = g_get_monotonic_time() + SLURM_POLL_INTERVAL_US;
            jobs_gone = slurm_all_gone(st, 30);
        }
        if (local_gone && jobs_gone)
            return TRUE;
        if (g_get_monotonic_time() >= deadline)
            return FALSE;
        g_usleep(50 * 1000); /* a stop signal must not cut this short: finish the stop */
    }
}

static void stop_controller(ClusterProc *c, double grace_s, gboolean quiet)
{
    if (!cluster_proc_alive(c)) {
        if (!quiet)
            printf("herd cluster: herdd (pid %d) was not running\n", c->pid);
        return;
    }
    cluster_proc_signal(c, SIGTERM);
    gint64 deadline = g_get_monotonic_time() + (gint64)(grace_s * G_USEC_PER_SEC);
    while (cluster_proc_alive(c) && g_get_monotonic_time() < deadline)
        g_usleep(50 * 1000);
    if (cluster_proc_alive(c)) {
        cluster_proc_signal(c, SIGKILL);
        if (!quiet)
            printf("herd cluster: herdd (pid %d) ignored SIGTERM for %.0f s: killed\n", c->pid, grace_s);
    } else if (!quiet) {
        printf("herd cluster: herdd (pid %d) stopped\n", c->pid);
    }
}

void cluster_stop_all(ClusterState *st, double grace_s, gboolean quiet)
{
    /* Note each local engine set's descendants (an ipengine's nanny, mpiexec's ranks)
     * before the signal: once their parent is gone they can no longer be told apart. */
    g_autoptr(GPtrArray) followers = g_ptr_array_new_with_free_func((GDestroyNotify)cluster_proc_free);
    for (guint i = 0; i < st->engine_sets->len; i++) {
        ClusterProc *p = st->engine_sets->pdata[i];
        if (p->kind != CLUSTER_PROC_LOCAL || !cluster_proc_alive(p))
            continue;
        g_autoptr(GPtrArray) d = cluster_proc_descendants(p);
        while (d->len)
            g_ptr_array_add(followers, g_ptr_array_steal_index(d, 0));
    }
    if (st->engine_sets->len) {
        gint64 deadline = g_get_monotonic_time() + (gint64)(grace_s * G_USEC_PER_SEC);
        signal_engine_sets(st, followers, SIGTERM);
        gboolean clean = ssh_stop_engines(st, grace_s) == 0;
        if (!wait_engine_sets(st, followers, deadline)) {
            clean = FALSE;
            signal_engine_sets(st, followers, SIGKILL);
            wait_engine_sets(st, followers, g_get_monotonic_time() + 5 * G_USEC_PER_SEC);
        }
        int engines = 0;
        for (guint i = 0; i < st->engine_sets->len; i++)
            engines += ((ClusterProc *)st->engine_sets->pdata[i])->engines;
        if (!quiet)
            printf("herd cluster: %d engines stopped%s\n", engines,
                   clean ? "" : " (some needed SIGKILL after the grace period)");
    }
    if (st->controller)
        stop_controller(st->controller, grace_s, quiet);
}
