/* herd — `herd bench`: start a controller (herdd, any ipcontroller-compatible command,
 * or the bare `herd relay` baseline), N native echo engines and native clients, then
 * measure each channel: throughput with many requests in flight, latency with one in
 * flight, and the controller's CPU time and peak RSS (its whole process tree). Every
 * phase is bounded in count and time. See docs/engine.md ("Benchmarks").
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include <herd/client.h>
#include <herd/connfile.h>

#include "herd-tool.h"
#include "proc.h"

typedef struct BenchConfig {
    int engines, clients, tasks, latency_tasks, window, payload, ping_ms;
    int hwm; /* task scheduler hwm given to every controller; < 0: each keeps its default */
    double phase_seconds, startup_seconds;
    char **channels; /* "mux", "lb", "broadcast" */
    char **schemes;
    char *controller_cmd, *python;
    gboolean json, compare, raw, keep_workdir;
} BenchConfig;

typedef struct ChannelResult {
    char *channel, *scheme;
    guint64 requests, replies, errors;
    double seconds, tasks_per_s, requests_per_s;
    double p50_ms, p90_ms, p99_ms;
    guint latency_samples;
    double cpu_s, cpu_us_per_task;
    double engines_cpu_s, clients_cpu_s; /* where the rest of the machine went */
    double client_threads_cpu_s;         /* the client threads alone, without libzmq's I/O threads */
    guint64 rss_peak_kb;
    gboolean timed_out;
} ChannelResult;

typedef struct RunResult {
    char *label;
    char *command;
    GPtrArray *channels; /* ChannelResult* */
    char *error;
} RunResult;

/* A process the bench started, in its own process group (so its helpers go with it). */
typedef struct Child {
    GPid pid;
    gboolean reaped;
    int status;
} Child;

/* ---- processes ---- */

static void child_setup(gpointer data)
{
    (void)data;
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the bench */
}

static gboolean child_spawn(Child *c, char **argv, const char *log_path, GError **err)
{
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", log_path, g_strerror(errno));
        return FALSE;
    }
    g_autofree char *line = g_strjoinv(" ", argv);
    dprintf(log_fd, "$ %s\n", line);
    gboolean ok = g_spawn_async_with_fds(NULL, argv, NULL,
                                         G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                                         child_setup, NULL, &c->pid, -1, log_fd, log_fd, err);
    close(log_fd);
    c->reaped = FALSE;
    return ok;
}

static gboolean child_alive(Child *c)
{
    if (c->reaped)
        return FALSE;
    if (waitpid(c->pid, &c->status, WNOHANG) == c->pid) {
        c->reaped = TRUE;
        g_spawn_close_pid(c->pid);
    }
    return !c->reaped;
}

/* SIGTERM, up to 10 s for a clean exit, then SIGKILL of its whole group. */
static void child_stop(Child *c)
{
    if (c->pid <= 0)
        return;
    if (child_alive(c)) {
        kill(c->pid, SIGTERM);
        gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        while (child_alive(c) && g_get_monotonic_time() < deadline)
            g_usleep(20 * 1000);
    }
    kill(-c->pid, SIGKILL);
    if (!c->reaped) {
        waitpid(c->pid, &c->status, 0);
        c->reaped = TRUE;
        g_spawn_close_pid(c->pid);
    }
}

/* ---- controller CPU and memory: the whole process tree under a pid ---- */

/* CPU time of this process (the client threads and their libzmq I/O threads). */
static double self_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double tree_cpu_seconds(int root)
{
    GArray *tree = herd_proc_tree(root);
    guint64 ticks = 0;
    for (guint i = 0; i < tree->len; i++)
        ticks += g_array_index(tree, HerdProcStat, i).cpu_ticks;
    g_array_free(tree, TRUE);
    return (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

/* Sum of each process's peak resident set (VmHWM), in kB. */
static guint64 tree_peak_rss_kb(int root)
{
    GArray *tree = herd_proc_tree(root);
    guint64 total = 0;
    for (guint i = 0; i < tree->len; i++) {
        g_autofree char *path = g_strdup_printf("/proc/%d/status", g_array_index(tree, HerdProcStat, i).pid);
        g_autofree char *text = NULL;
        if (!g_file_get_contents(path, &text, NULL, NULL))
            continue;
        const char *hwm = strstr(text, "VmHWM:");
        if (hwm)
            total += g_ascii_strtoull(hwm + 6, NULL, 10);
    }
    g_array_free(tree, TRUE);
    return total;
}

/* ---- load generation ---- */

typedef struct Load {
    HerdChannel channel;
    int n_engines;
    const int *engine_ids;
    HerdBytes payload;
    guint64 requests;  /* to submit */
    int window;        /* replies in flight at most */
    gint64 deadline_us;
    /* results */
    guint64 sent, replies, errors;
    gboolean timed_out;
    char *error;
} Load;

static guint replies_per_request(const Load *l)
{
    return l->channel == HERD_CHANNEL_BROADCAST ? (guint)l->n_engines : 1;
}

static gboolean submit_one(HerdClient *c, Load *l, guint64 index, char **msg_id)
{
    int target = l->engine_ids[index % (guint64)l->n_engines];
    gboolean direct = l->channel == HERD_CHANNEL_MUX;
    GError *err = NULL;
    if (!herd_client_submit(c, l->channel, "apply_request", direct ? &target : NULL, direct ? 1 : 0, NULL, NULL,
                            &l->payload, 1, msg_id, &err)) {
        l->error = g_strdup(err->message);
        g_error_free(err);
        return FALSE;
    }
    return TRUE;
}

/* An echo engine answers ok with the request's buffer. */
static gboolean reply_is_echo(const HerdClientMsg *m, const Load *l)
{
    return g_strcmp0(m->status, "ok") == 0 && m->n_buffers == 1 && m->buffers[0].len == l->payload.len &&
           memcmp(m->buffers[0].data, l->payload.data, l->payload.len) == 0;
}

/* Keep up to `window` replies outstanding until every request is answered or time runs out. */
static void run_pipelined(HerdClient *c, Load *l)
{
    guint64 expected = l->requests * replies_per_request(l);
    guint64 in_flight = 0;
    while (l->replies < expected) {
        while (l->sent < l->requests && in_flight + replies_per_request(l) <= (guint64)MAX(l->window, 1)) {
            if (!submit_one(c, l, l->sent, NULL))
                return;
            l->sent++;
            in_flight += replies_per_request(l);
        }
        gint64 left_ms = (l->deadline_us - g_get_monotonic_time()) / 1000;
        if (left_ms <= 0) {
            l->timed_out = TRUE;
            return;
        }
        g_autoptr(HerdClientMsg) m = herd_client_recv(c, (int)MIN(left_ms, 200), NULL);
        if (!m || m->kind != HERD_MSG_REPLY)
            continue;
        l->replies++;
        in_flight--;
        if (!reply_is_echo(m, l))
            l->errors++;
    }
}

static int compare_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(GArray *sorted, double q)
{
    if (sorted->len == 0)
        return NAN;
    guint index = (guint)ceil(q * sorted->len) - 1;
    return g_array_index(sorted, double, MIN(index, sorted->len - 1));
}

/* One request in flight at a time: the round-trip latency of each. */
static void run_latency(HerdClient *c, Load *l, ChannelResult *res)
{
    GArray *samples = g_array_new(FALSE, FALSE, sizeof(double));
    for (guint64 i = 0; i < l->requests && g_get_monotonic_time() < l->deadline_us; i++) {
        gint64 start = g_get_monotonic_time();
        g_autofree char *msg_id = NULL;
        if (!submit_one(c, l, i, &msg_id))
            break;
        guint left = replies_per_request(l);
        while (left > 0) {
            gint64 left_ms = (l->deadline_us - g_get_monotonic_time()) / 1000;
            if (left_ms <= 0) {
                l->timed_out = TRUE;
                break;
            }
            g_autoptr(HerdClientMsg) m = herd_client_recv(c, (int)MIN(left_ms, 200), NULL);
            if (m && m->kind == HERD_MSG_REPLY && g_strcmp0(m->request_id, msg_id) == 0) {
                left--;
                if (!reply_is_echo(m, l))
                    l->errors++;
            }
        }
        if (left > 0)
            break;
        double ms = (double)(g_get_monotonic_time() - start) / 1000.0;
        g_array_append_val(samples, ms);
    }
    g_array_sort(samples, compare_double);
    res->latency_samples = samples->len;
    res->p50_ms = percentile(samples, 0.50);
    res->p90_ms = percentile(samples, 0.90);
    res->p99_ms = percentile(samples, 0.99);
    g_array_free(samples, TRUE);
}

typedef struct ClientThread {
    HerdClient *client;
    Load load;
    GThread *thread;
    double cpu_s; /* this thread's CPU time in run_pipelined */
} ClientThread;

static double thread_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static gpointer client_thread_main(gpointer data)
{
    ClientThread *t = data;
    double start = thread_cpu_seconds();
    run_pipelined(t->client, &t->load);
    t->cpu_s = thread_cpu_seconds() - start;
    return NULL;
}

static HerdChannel channel_of(const char *name)
{
    if (g_str_equal(name, "mux"))
        return HERD_CHANNEL_MUX;
    if (g_str_equal(name, "broadcast"))
        return HERD_CHANNEL_BROADCAST;
    return HERD_CHANNEL_TASK;
}

/* Measure one channel with every client: a warm-up, the pipelined throughput phase
 * (controller CPU measured around it), then the latency phase on the first client. */
static ChannelResult *measure_channel(const BenchConfig *cfg, HerdClient **clients, const int *engine_ids,
                                      const char *channel, const char *scheme, int controller_pid, int engines_pid,
                                      HerdBytes payload)
{
    ChannelResult *res = g_new0(ChannelResult, 1);
    res->channel = g_strdup(channel);
    res->scheme = g_strdup(scheme);
    Load base = { .channel = channel_of(channel), .n_engines = cfg->engines, .engine_ids = engine_ids,
                  .payload = payload, .window = cfg->window };

    /* A task is one engine execution on every channel: a broadcast request makes one per
     * engine, so broadcast sends tasks / engines requests (at least one). */
    guint64 requests = (guint64)cfg->tasks;
    if (base.channel == HERD_CHANNEL_BROADCAST)
        requests = MAX(1, (requests + (guint64)cfg->engines - 1) / (guint64)cfg->engines);

    Load warm = base;
    warm.requests = MIN(requests, 200);
    warm.deadline_us = g_get_monotonic_time() + (gint64)(cfg->phase_seconds * G_USEC_PER_SEC);
    run_pipelined(clients[0], &warm);
    g_free(warm.error);

    ClientThread *threads = g_new0(ClientThread, cfg->clients);
    double cpu_before = tree_cpu_seconds(controller_pid);
    double engines_before = tree_cpu_seconds(engines_pid), self_before = self_cpu_seconds();
    gint64 start = g_get_monotonic_time();
    for (int i = 0; i < cfg->clients; i++) {
        threads[i].client = clients[i];
        threads[i].load = base;
        guint64 share = requests / (guint64)cfg->clients + ((guint64)i < requests % (guint64)cfg->clients ? 1 : 0);
        threads[i].load.requests = share;
        threads[i].load.deadline_us = start + (gint64)(cfg->phase_seconds * G_USEC_PER_SEC);
        threads[i].thread = g_thread_new("bench-client", client_thread_main, &threads[i]);
    }
    for (int i = 0; i < cfg->clients; i++) {
        g_thread_join(threads[i].thread);
        Load *l = &threads[i].load;
        res->requests += l->sent;
        res->replies += l->replies;
        res->errors += l->errors + (l->error ? 1 : 0);
        res->timed_out |= l->timed_out;
        res->client_threads_cpu_s += threads[i].cpu_s;
        if (l->error)
            g_printerr("herd bench: %s: %s\n", channel, l->error);
        g_free(l->error);
    }
    res->seconds = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;
    res->cpu_s = tree_cpu_seconds(controller_pid) - cpu_before;
    res->engines_cpu_s = tree_cpu_seconds(engines_pid) - engines_before;
    res->clients_cpu_s = self_cpu_seconds() - self_before;
    res->rss_peak_kb = tree_peak_rss_kb(controller_pid);
    g_free(threads);
    res->tasks_per_s = res->seconds > 0 ? (double)res->replies / res->seconds : 0;
    res->requests_per_s = res->seconds > 0 ? (double)res->requests / res->seconds : 0;
    res->cpu_us_per_task = res->replies ? res->cpu_s * 1e6 / (double)res->replies : 0;

    Load lat = base;
    lat.requests = (guint64)cfg->latency_tasks;
    lat.deadline_us = g_get_monotonic_time() + (gint64)(cfg->phase_seconds * G_USEC_PER_SEC);
    run_latency(clients[0], &lat, res);
    res->errors += lat.errors + (lat.error ? 1 : 0);
    res->timed_out |= lat.timed_out;
    g_free(lat.error);
    return res;
}

/* ---- one run: a controller, engines, clients ---- */

static gboolean wait_for_connection_files(const char *profile_dir, Child *controller, double seconds, GError **err)
{
    g_autofree char *client = herd_connfile_path(profile_dir, NULL, "client");
    g_autofree char *engine = herd_connfile_path(profile_dir, NULL, "engine");
    gint64 deadline = g_get_monotonic_time() + (gint64)(seconds * G_USEC_PER_SEC);
    for (;;) {
        HerdConnInfo a = { 0 }, b = { 0 };
        gboolean ready = herd_connfile_read(client, "client", &a, NULL) && herd_connfile_read(engine, "engine", &b, NULL);
        herd_conninfo_clear(&a);
        herd_conninfo_clear(&b);
        if (ready)
            return TRUE;
        if (!child_alive(controller)) {
            g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "the controller exited before writing its connection files");
            return FALSE;
        }
        if (g_get_monotonic_time() >= deadline) {
            g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "no connection files after %.0f s", seconds);
            return FALSE;
        }
        g_usleep(50 * 1000);
    }
}

static char **controller_argv(const BenchConfig *cfg, const char *cmd, const char *profile_dir, const char *scheme,
                              GError **err)
{
    g_auto(GStrv) base = NULL;
    if (!g_shell_parse_argv(cmd, NULL, &base, err))
        return NULL;
    GPtrArray *argv = g_ptr_array_new();
    for (char **p = base; *p; p++)
        g_ptr_array_add(argv, g_strdup(*p));
    g_ptr_array_add(argv, g_strdup("--profile-dir"));
    g_ptr_array_add(argv, g_strdup(profile_dir));
    g_ptr_array_add(argv, g_strdup("--ip=127.0.0.1"));
    g_ptr_array_add(argv, g_strdup_printf("--ping=%d", cfg->ping_ms));
    if (scheme)
        g_ptr_array_add(argv, g_strdup_printf("--scheme=%s", scheme));
    if (cfg->hwm >= 0) /* herdd, ipcontroller and herd relay all take --hwm=N */
        g_ptr_array_add(argv, g_strdup_printf("--hwm=%d", cfg->hwm));
    g_ptr_array_add(argv, NULL);
    return (char **)g_ptr_array_free(argv, FALSE);
}

/* Start the controller, the echo engines and the clients; wait until every engine is
 * registered. Whatever was started is in *controller, *engines and clients[]. */
static gboolean start_cluster(const BenchConfig *cfg, const char *cmd, const char *profile_dir, const char *scheme,
                              Child *controller, Child *engines, HerdClient **clients, GError **err)
{
    g_autofree char *controller_log = g_strdup_printf("%s.controller.log", profile_dir);
    g_autofree char *engines_log = g_strdup_printf("%s.engines.log", profile_dir);
    g_auto(GStrv) argv = controller_argv(cfg, cmd, profile_dir, scheme, err);
    if (!argv || !child_spawn(controller, argv, controller_log, err) ||
        !wait_for_connection_files(profile_dir, controller, cfg->startup_seconds, err))
        return FALSE;
    g_autofree char *self = herd_tool_self_path();
    g_autofree char *count = g_strdup_printf("%d", cfg->engines);
    char *engine_argv[] = { self, "engine", "--profile-dir", (char *)profile_dir, "--executor", "echo",
                            "--count", count, NULL };
    if (!child_spawn(engines, engine_argv, engines_log, err))
        return FALSE;
    g_autofree char *client_file = herd_connfile_path(profile_dir, NULL, "client");
    int timeout_ms = (int)(cfg->startup_seconds * 1000);
    for (int i = 0; i < cfg->clients; i++) {
        clients[i] = herd_client_connect(client_file, timeout_ms, err);
        if (!clients[i])
            return FALSE;
    }
    if (!herd_client_wait_for_engines(clients[0], (guint)cfg->engines, timeout_ms, err))
        return FALSE;
    /* Drop the registration notifications that arrived meanwhile. */
    for (int i = 0; i < cfg->clients; i++) {
        HerdClientMsg *m;
        while ((m = herd_client_recv(clients[i], 0, NULL)))
            herd_client_msg_free(m);
    }
    return TRUE;
}

static void measure_channels(const BenchConfig *cfg, HerdClient **clients, char **channels, const char *scheme,
                             int controller_pid, int engines_pid, RunResult *run)
{
    guint n;
    const HerdClientEngine *table = herd_client_engines(clients[0], &n);
    g_autofree int *ids = g_new(int, n + 1);
    for (guint i = 0; i < n; i++)
        ids[i] = table[i].id;
    g_autofree char *payload = g_malloc(MAX(cfg->payload, 1));
    for (int i = 0; i < cfg->payload; i++)
        payload[i] = (char)('a' + i % 26);
    for (char **ch = channels; *ch; ch++) {
        ChannelResult *res = measure_channel(cfg, clients, ids, *ch, g_str_equal(*ch, "lb") ? scheme : NULL,
                                             controller_pid, engines_pid, (HerdBytes){ payload, (gsize)cfg->payload });
        g_ptr_array_add(run->channels, res);
    }
}

/* Start everything for one controller command and scheme, measure the listed channels. */
static gboolean bench_one(const BenchConfig *cfg, const char *cmd, const char *workdir, const char *scheme,
                          char **channels, RunResult *run, GError **err)
{
    static int serial;
    g_autofree char *profile_dir = g_strdup_printf("%s/profile_%d", workdir, serial++);
    Child controller = { 0 }, engines = { 0 };
    HerdClient **clients = g_new0(HerdClient *, cfg->clients);
    gboolean ok = start_cluster(cfg, cmd, profile_dir, scheme, &controller, &engines, clients, err);
    if (ok)
        measure_channels(cfg, clients, channels, scheme, controller.pid, engines.pid, run);
    for (int i = 0; i < cfg->clients; i++)
        herd_client_close(clients[i]);
    g_free(clients);
    child_stop(&engines);
    child_stop(&controller);
    if (!ok) {
        g_autofree char *log_path = g_strdup_printf("%s.controller.log", profile_dir);
        g_autofree char *log = NULL;
        if (g_file_get_contents(log_path, &log, NULL, NULL))
            g_printerr("---- controller log (%s) ----\n%s\n", log_path, log);
    }
    return ok;
}

static gboolean strv_has(char **v, const char *s)
{
    return v && g_strv_contains((const char *const *)v, s);
}

/* A whole run for one controller: the first scheme measures every channel, the other
 * schemes only the load-balanced one (each scheme needs its own controller start). */
static RunResult *bench_run(const BenchConfig *cfg, const char *label, const char *cmd, const char *workdir)
{
    RunResult *run = g_new0(RunResult, 1);
    run->label = g_strdup(label);
    run->command = g_strdup(cmd);
    run->channels = g_ptr_array_new();
    char *lb_only[] = { "lb", NULL };
    for (char **scheme = cfg->schemes; *scheme && !run->error; scheme++) {
        char **channels = scheme == cfg->schemes ? cfg->channels : lb_only;
        if (scheme != cfg->schemes && !strv_has(cfg->channels, "lb"))
            break;
        GError *err = NULL;
        if (!bench_one(cfg, cmd, workdir, *scheme, channels, run, &err)) {
            run->error = g_strdup_printf("%s: %s", label, err ? err->message : "failed");
            g_clear_error(&err);
        }
    }
    return run;
}

/* ---- reports ---- */

static const char *channel_label(const ChannelResult *r, char *buf, gsize len)
{
    if (r->scheme)
        g_snprintf(buf, len, "%s[%s]", r->channel, r->scheme);
    else
        g_snprintf(buf, len, "%s", r->channel);
    return buf;
}

static void print_run(const RunResult *run)
{
    printf("\ncontroller: %s (%s)\n", run->label, run->command);
    if (run->error)
        printf("  FAILED: %s\n", run->error);
    printf("  %-16s %8s %10s %8s %8s %8s %9s %10s %9s %s\n", "channel", "tasks", "tasks/s", "p50 ms", "p90 ms",
           "p99 ms", "CPU s", "CPU us/t", "RSS MB", "notes");
    for (guint i = 0; i < run->channels->len; i++) {
        ChannelResult *r = run->channels->pdata[i];
        char name[64];
        printf("  %-16s %8" G_GUINT64_FORMAT " %10.0f %8.3f %8.3f %8.3f %9.2f %10.1f %9.1f %s%s\n",
               channel_label(r, name, sizeof name), r->replies, r->tasks_per_s, r->p50_ms, r->p90_ms, r->p99_ms,
               r->cpu_s, r->cpu_us_per_task, (double)r->rss_peak_kb / 1024.0, r->timed_out ? "TIMED OUT " : "",
               r->errors ? "ERRORS" : "");
    }
}

static ChannelResult *find_channel(const RunResult *run, const ChannelResult *like)
{
    for (guint i = 0; i < run->channels->len; i++) {
        ChannelResult *r = run->channels->pdata[i];
        if (g_str_equal(r->channel, like->channel) && g_strcmp0(r->scheme, like->scheme) == 0)
            return r;
    }
    return NULL;
}

static double safe_ratio(double a, double b)
{
    return b > 0 ? a / b : NAN;
}

/* Every ratio reads "how many times better the first run is": > 1 means `fast` wins. */
static void print_ratios(const RunResult *fast, const RunResult *slow)
{
    printf("\n%s relative to %s (x > 1: %s is better)\n", fast->label, slow->label, fast->label);
    printf("  %-16s %12s %12s %12s\n", "channel", "throughput", "p50 latency", "CPU/task");
    for (guint i = 0; i < fast->channels->len; i++) {
        ChannelResult *a = fast->channels->pdata[i], *b = find_channel(slow, a);
        if (!b)
            continue;
        char name[64];
        printf("  %-16s %11.2fx %11.2fx %11.2fx\n", channel_label(a, name, sizeof name),
               safe_ratio(a->tasks_per_s, b->tasks_per_s), safe_ratio(b->p50_ms, a->p50_ms),
               safe_ratio(b->cpu_us_per_task, a->cpu_us_per_task));
    }
}

static void json_double(JsonBuilder *b, const char *name, double v)
{
    json_builder_set_member_name(b, name);
    if (isnan(v))
        json_builder_add_null_value(b);
    else
        json_builder_add_double_value(b, v);
}

static void json_string_or_null(JsonBuilder *b, const char *name, const char *v)
{
    json_builder_set_member_name(b, name);
    if (v)
        json_builder_add_string_value(b, v);
    else
        json_builder_add_null_value(b);
}

/* What names a row: "channel" and "scheme" (null where no scheme applies). */
static void json_channel_name(JsonBuilder *b, const ChannelResult *r)
{
    json_string_or_null(b, "channel", r->channel);
    json_string_or_null(b, "scheme", r->scheme);
}

static void json_channel(JsonBuilder *b, const ChannelResult *r)
{
    json_builder_begin_object(b);
    json_channel_name(b, r);
    json_builder_set_member_name(b, "requests");
    json_builder_add_int_value(b, (gint64)r->requests);
    json_builder_set_member_name(b, "tasks");
    json_builder_add_int_value(b, (gint64)r->replies);
    json_builder_set_member_name(b, "errors");
    json_builder_add_int_value(b, (gint64)r->errors);
    json_builder_set_member_name(b, "timed_out");
    json_builder_add_boolean_value(b, r->timed_out);
    json_double(b, "seconds", r->seconds);
    json_double(b, "tasks_per_s", r->tasks_per_s);
    json_double(b, "requests_per_s", r->requests_per_s);
    json_builder_set_member_name(b, "latency_ms");
    json_builder_begin_object(b);
    json_double(b, "p50", r->p50_ms);
    json_double(b, "p90", r->p90_ms);
    json_double(b, "p99", r->p99_ms);
    json_builder_set_member_name(b, "samples");
    json_builder_add_int_value(b, r->latency_samples);
    json_builder_end_object(b);
    json_double(b, "controller_cpu_s", r->cpu_s);
    json_double(b, "cpu_us_per_task", r->cpu_us_per_task);
    json_double(b, "engines_cpu_s", r->engines_cpu_s);
    json_double(b, "clients_cpu_s", r->clients_cpu_s);
    json_double(b, "client_threads_cpu_s", r->client_threads_cpu_s);
    json_builder_set_member_name(b, "controller_peak_rss_kb");
    json_builder_add_int_value(b, (gint64)r->rss_peak_kb);
    json_builder_end_object(b);
}

static void json_ratios(JsonBuilder *b, const RunResult *fast, const RunResult *slow)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "fast");
    json_builder_add_string_value(b, fast->label);
    json_builder_set_member_name(b, "slow");
    json_builder_add_string_value(b, slow->label);
    json_builder_set_member_name(b, "channels");
    json_builder_begin_array(b);
    for (guint i = 0; i < fast->channels->len; i++) {
        ChannelResult *a = fast->channels->pdata[i], *s = find_channel(slow, a);
        if (!s)
            continue;
        json_builder_begin_object(b);
        json_channel_name(b, a);
        json_double(b, "throughput", safe_ratio(a->tasks_per_s, s->tasks_per_s));
        json_double(b, "p50_latency", safe_ratio(s->p50_ms, a->p50_ms));
        json_double(b, "cpu_per_task", safe_ratio(s->cpu_us_per_task, a->cpu_us_per_task));
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
}

static void print_json(const BenchConfig *cfg, GPtrArray *runs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "config");
    json_builder_begin_object(b);
    const struct {
        const char *name;
        int value;
    } ints[] = { { "engines", cfg->engines }, { "clients", cfg->clients }, { "tasks", cfg->tasks },
                 { "latency_tasks", cfg->latency_tasks }, { "window", cfg->window },
                 { "payload_bytes", cfg->payload }, { "ping_ms", cfg->ping_ms }, { "hwm", cfg->hwm } };
    for (guint i = 0; i < G_N_ELEMENTS(ints); i++) {
        json_builder_set_member_name(b, ints[i].name);
        json_builder_add_int_value(b, ints[i].value);
    }
    json_double(b, "phase_seconds", cfg->phase_seconds);
    json_builder_end_object(b);
    json_builder_set_member_name(b, "runs");
    json_builder_begin_array(b);
    for (guint i = 0; i < runs->len; i++) {
        RunResult *run = runs->pdata[i];
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "controller");
        json_builder_add_string_value(b, run->label);
        json_builder_set_member_name(b, "command");
        json_builder_add_string_value(b, run->command);
        json_string_or_null(b, "error", run->error);
        json_builder_set_member_name(b, "channels");
        json_builder_begin_array(b);
        for (guint k = 0; k < run->channels->len; k++)
            json_channel(b, run->channels->pdata[k]);
        json_builder_end_array(b);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_set_member_name(b, "ratios");
    json_builder_begin_array(b);
    for (guint i = 1; i < runs->len; i++)
        json_ratios(b, runs->pdata[0], runs->pdata[i]);
    json_builder_end_array(b);
    json_builder_end_object(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    g_autofree char *text = json_generator_to_data(gen, NULL);
    printf("%s\n", text);
}

/* ---- command line ---- */

/* herdd next to this program (installed), or in the build tree's daemon/ folder. */
static gboolean valid_channels(char **channels)
{
    for (char **ch = channels; ch && *ch; ch++)
        if (!g_str_equal(*ch, "mux") && !g_str_equal(*ch, "lb") && !g_str_equal(*ch, "broadcast"))
            return FALSE;
    return channels && *channels;
}

static void free_run(gpointer p)
{
    RunResult *run = p;
    for (guint i = 0; i < run->channels->len; i++) {
        ChannelResult *r = run->channels->pdata[i];
        g_free(r->channel);
        g_free(r->scheme);
        g_free(r);
    }
    g_ptr_array_free(run->channels, TRUE);
    g_free(run->label);
    g_free(run->command);
    g_free(run->error);
    g_free(run);
}

/* The working folder holds only files and folders the bench made. */
static void remove_tree(const char *path)
{
    GDir *dir = g_dir_open(path, 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *child = g_build_filename(path, name, NULL);
        if (g_file_test(child, G_FILE_TEST_IS_DIR) && !g_file_test(child, G_FILE_TEST_IS_SYMLINK))
            remove_tree(child);
        else
            g_unlink(child);
    }
    if (dir)
        g_dir_close(dir);
    g_rmdir(path);
}

static gboolean run_failed(const RunResult *run)
{
    if (run->error)
        return TRUE;
    for (guint i = 0; i < run->channels->len; i++) {
        ChannelResult *r = run->channels->pdata[i];
        if (r->errors || r->timed_out)
            return TRUE;
    }
    return FALSE;
}

int herd_cmd_bench(int argc, char **argv)
{
    BenchConfig cfg = { .engines = 4, .clients = 1, .tasks = 10000, .latency_tasks = 1000, .window = 256,
                        .payload = 64, .ping_ms = 100, .hwm = -1, .phase_seconds = 60, .startup_seconds = 30 };
    g_autofree char *channels = NULL, *schemes = NULL, *controller_cmd = NULL, *python = NULL;
    GOptionEntry entries[] = {
        { "controller-cmd", 0, 0, G_OPTION_ARG_STRING, &controller_cmd,
          "Controller command (default: herdd); bench appends --profile-dir, --ip, --ping, --scheme", "CMD" },
        { "compare", 0, 0, G_OPTION_ARG_NONE, &cfg.compare, "Run herdd (or --controller-cmd) and the Python controller back to back", NULL },
        { "raw", 0, 0, G_OPTION_ARG_NONE, &cfg.raw, "Also run the bare libzmq relay baseline (herd relay)", NULL },
        { "python", 0, 0, G_OPTION_ARG_STRING, &python, "Python with ipyparallel for --compare (default: /usr/bin/python3, Debian's)", "PATH" },
        { "engines", 'n', 0, G_OPTION_ARG_INT, &cfg.engines, "Echo engines (default 4)", "N" },
        { "clients", 'c', 0, G_OPTION_ARG_INT, &cfg.clients, "Client threads for the throughput phase (default 1)", "N" },
        { "tasks", 't', 0, G_OPTION_ARG_INT, &cfg.tasks, "Tasks per channel in the throughput phase (default 10000)", "N" },
        { "latency-tasks", 0, 0, G_OPTION_ARG_INT, &cfg.latency_tasks, "Requests for the latency phase (default 1000)", "N" },
        { "window", 'w', 0, G_OPTION_ARG_INT, &cfg.window, "Replies in flight per client (default 256)", "N" },
        { "payload", 0, 0, G_OPTION_ARG_INT, &cfg.payload, "Bytes of the request buffer (default 64)", "BYTES" },
        { "channels", 0, 0, G_OPTION_ARG_STRING, &channels, "Comma list of mux,lb,broadcast (default all)", "LIST" },
        { "schemes", 0, 0, G_OPTION_ARG_STRING, &schemes, "Comma list of task schemes for lb (default leastload)", "LIST" },
        { "ping", 0, 0, G_OPTION_ARG_INT, &cfg.ping_ms, "Controller heartbeat period in ms (default 100)", "MS" },
        { "hwm", 0, 0, G_OPTION_ARG_INT, &cfg.hwm,
          "Task scheduler hwm passed to every controller, the relay included (default: each its own; herdd and Python 1, relay 0)", "N" },
        { "phase-timeout", 0, 0, G_OPTION_ARG_DOUBLE, &cfg.phase_seconds, "Seconds each phase may take at most (default 60)", "S" },
        { "startup-timeout", 0, 0, G_OPTION_ARG_DOUBLE, &cfg.startup_seconds, "Seconds to start controller and engines (default 30)", "S" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &cfg.json, "Print the results as JSON", NULL },
        { "keep", 0, 0, G_OPTION_ARG_NONE, &cfg.keep_workdir, "Keep the working folder (logs, profiles)", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- benchmark a controller with native engines and clients");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "herd bench: %s\n", err->message);
        g_error_free(err);
        return 2;
    }
    cfg.controller_cmd = controller_cmd;
    cfg.python = python;
    cfg.channels = g_strsplit(channels ? channels : "mux,lb,broadcast", ",", 0);
    cfg.schemes = g_strsplit(schemes ? schemes : "leastload", ",", 0);
    if (!valid_channels(cfg.channels) || !cfg.schemes[0] || cfg.engines < 1 || cfg.clients < 1 || cfg.tasks < 1 ||
        cfg.latency_tasks < 0 || cfg.window < 1 || cfg.payload < 0 || cfg.phase_seconds <= 0) {
        fprintf(stderr, "herd bench: invalid options (channels are mux, lb, broadcast; counts must be positive)\n");
        g_strfreev(cfg.channels);
        g_strfreev(cfg.schemes);
        return 2;
    }
    g_autofree char *workdir = g_dir_make_tmp("herd-bench-XXXXXX", &err);
    if (!workdir) {
        fprintf(stderr, "herd bench: %s\n", err->message);
        g_error_free(err);
        g_strfreev(cfg.channels);
        g_strfreev(cfg.schemes);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    g_autofree char *herdd = herd_tool_find_herdd();
    g_autofree char *main_cmd = cfg.controller_cmd ? g_strdup(cfg.controller_cmd) : g_shell_quote(herdd);
    g_autofree char *python_q = g_shell_quote(cfg.python ? cfg.python : "/usr/bin/python3");
    g_autofree char *python_cmd = g_strdup_printf("%s -m ipyparallel.controller", python_q);
    g_autofree char *self = herd_tool_self_path();
    g_autofree char *self_q = g_shell_quote(self);
    g_autofree char *relay_cmd = g_strdup_printf("%s relay", self_q);

    GPtrArray *runs = g_ptr_array_new_with_free_func(free_run);
    g_ptr_array_add(runs, bench_run(&cfg, cfg.controller_cmd ? "custom" : "herdd", main_cmd, workdir));
    if (cfg.compare)
        g_ptr_array_add(runs, bench_run(&cfg, "python", python_cmd, workdir));
    if (cfg.raw)
        g_ptr_array_add(runs, bench_run(&cfg, "raw", relay_cmd, workdir));

    if (cfg.json) {
        print_json(&cfg, runs);
    } else {
        printf("herd bench: %d echo engines, %d client(s), %d tasks per channel, window %d, payload %d B", cfg.engines,
               cfg.clients, cfg.tasks, cfg.window, cfg.payload);
        if (cfg.hwm >= 0)
            printf(", hwm %d for every controller", cfg.hwm);
        printf("\n");
        for (guint i = 0; i < runs->len; i++)
            print_run(runs->pdata[i]);
        for (guint i = 1; i < runs->len; i++)
            print_ratios(runs->pdata[0], runs->pdata[i]);
    }
    int status = 0;
    for (guint i = 0; i < runs->len; i++)
        if (run_failed(runs->pdata[i]))
            status = 1;
    if (cfg.keep_workdir || status != 0)
        fprintf(stderr, "herd bench: logs and profiles kept in %s\n", workdir);
    else
        remove_tree(workdir);
    g_ptr_array_free(runs, TRUE);
    g_strfreev(cfg.channels);
    g_strfreev(cfg.schemes);
    return status;
}
