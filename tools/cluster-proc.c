/* herd — `herd cluster`: the processes it starts and stops.
 *
 * A cluster outlives the command that started it, so its processes are started in
 * sessions of their own and found again later by what the state file recorded. A pid
 * alone may have been reused since; pid + start time (/proc/PID/stat) + boot id name one
 * process, and nothing is signalled unless all three still match.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "proc.h"

#define POLL_INTERVAL_US (50 * 1000)

/* ---- stop signals while waiting ---- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

void cluster_catch_signals(void)
{
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

gboolean cluster_interrupted(void)
{
    return interrupted != 0;
}

gboolean cluster_poll_pause(void)
{
    if (!interrupted)
        g_usleep(POLL_INTERVAL_US);
    return !interrupted;
}

/* ---- identity ---- */

char *cluster_boot_id(void)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents("/proc/sys/kernel/random/boot_id", &text, NULL, NULL))
        return g_strdup("");
    return g_strdup(g_strstrip(text));
}

static gboolean same_boot(const ClusterProc *p)
{
    g_autofree char *boot = cluster_boot_id();
    return g_strcmp0(p->boot_id, boot) == 0;
}

gboolean cluster_proc_alive(ClusterProc *p)
{
    if (p->kind != CLUSTER_PROC_LOCAL || p->pid <= 0 || p->reaped)
        return FALSE;
    int status;
    if (waitpid(p->pid, &status, WNOHANG) == p->pid) { /* our child (during a start), now reaped */
        p->reaped = TRUE;
        p->wait_status = status;
        return FALSE;
    }
    HerdProcStat ps;
    return same_boot(p) && herd_proc_stat(p->pid, &ps) && ps.start_time == p->start_time && ps.state != 'Z' &&
           ps.state != 'X';
}

void cluster_proc_signal(ClusterProc *p, int sig)
{
    if (cluster_proc_alive(p))
        kill(p->pid, sig);
}

static ClusterProc *local_proc(int pid, guint64 start_time)
{
    ClusterProc *p = cluster_proc_new(CLUSTER_PROC_LOCAL);
    p->pid = pid;
    p->start_time = start_time;
    p->boot_id = cluster_boot_id();
    return p;
}

GPtrArray *cluster_proc_descendants(const ClusterProc *p)
{
    GPtrArray *found = g_ptr_array_new_with_free_func((GDestroyNotify)cluster_proc_free);
    if (p->kind != CLUSTER_PROC_LOCAL)
        return found;
    g_autoptr(GArray) tree = herd_proc_tree(p->pid);
    for (guint i = 0; i < tree->len; i++) {
        const HerdProcStat *ps = &g_array_index(tree, HerdProcStat, i);
        if (ps->pid != p->pid)
            g_ptr_array_add(found, local_proc(ps->pid, ps->start_time));
    }
    return found;
}

char *cluster_proc_describe_exit(const ClusterProc *p)
{
    if (!p->reaped)
        return g_strdup("ended");
    if (WIFEXITED(p->wait_status))
        return g_strdup_printf("exited with status %d", WEXITSTATUS(p->wait_status));
    if (WIFSIGNALED(p->wait_status))
        return g_strdup_printf("was killed by signal %d (%s)", WTERMSIG(p->wait_status),
                               strsignal(WTERMSIG(p->wait_status)));
    return g_strdup("ended");
}

char *cluster_log_tail(const char *path, int lines)
{
    g_autofree char *text = NULL;
    if (!path || !g_file_get_contents(path, &text, NULL, NULL))
        return g_strdup("");
    g_strchomp(text);
    const char *start = text + strlen(text);
    for (int n = 0; start > text && n < lines;) {
        start--;
        if (*start == '\n' && ++n == lines)
            start++;
    }
    g_auto(GStrv) kept = g_strsplit(start, "\n", -1);
    GString *out = g_string_new(NULL);
    for (char **l = kept; *l; l++)
        g_string_append_printf(out, "    %s\n", *l);
    return g_string_free(out, FALSE);
}

/* ---- starting ---- */

static void new_session(gpointer data)
{
    (void)data;
    setsid(); /* no controlling terminal, no signals from ours: the cluster outlives us */
}

static void new_process_group(gpointer data)
{
    (void)data;
    setpgid(0, 0); /* so that a helper that hangs is killed with whatever it started */
}

static int open_stdin(const char *path, GError **err)
{
    const char *p = path ? path : "/dev/null";
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", p, g_strerror(errno));
    return fd;
}

gboolean cluster_proc_spawn(ClusterProc *p, char **argv, char **envp, GError **err)
{
    int in = open_stdin(NULL, err);
    if (in < 0)
        return FALSE;
    int log = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", p->log, g_strerror(errno));
        close(in);
        return FALSE;
    }
    g_autofree char *line = g_strjoinv(" ", argv);
    dprintf(log, "$ %s\n", line);
    GPid pid = 0;
    gboolean ok = g_spawn_async_with_fds(NULL, argv, envp, G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                                         new_session, NULL, &pid, in, log, log, err);
    close(in);
    close(log);
    if (!ok)
        return FALSE;
    p->kind = CLUSTER_PROC_LOCAL;
    p->pid = pid;
    p->reaped = FALSE;
    g_free(p->boot_id);
    p->boot_id = cluster_boot_id();
    HerdProcStat ps;
    /* The child cannot have been reaped yet (nobody waited), so its stat is there. */
    p->start_time = herd_proc_stat(pid, &ps) ? ps.start_time : 0;
    return TRUE;
}

/* ---- helper commands (ssh, sbatch...) ---- */

/* Read both pipes until both reach end of file or the deadline passes. */
static gboolean drain_pipes(int fds[2], GString *bufs[2], gint64 deadline)
{
    while (fds[0] >= 0 || fds[1] >= 0) {
        gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
        if (left_ms <= 0)
            return FALSE;
        struct pollfd pfd[2] = { { fds[0], POLLIN, 0 }, { fds[1], POLLIN, 0 } };
        if (poll(pfd, 2, (int)MIN(left_ms, 200)) < 0 && errno != EINTR)
            return FALSE;
        for (int i = 0; i < 2; i++) {
            if (fds[i] < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t n = read(fds[i], chunk, sizeof chunk);
            if (n > 0) {
                g_string_append_len(bufs[i], chunk, n);
            } else if (n == 0 || errno != EINTR) {
                close(fds[i]);
                fds[i] = -1;
            }
        }
    }
    return TRUE;
}

struct ClusterRun {
    char *command; /* for messages */
    GPid pid;
    int fds[2];    /* stdout, stderr pipes */
};

ClusterRun *cluster_run_begin(char **argv, const char *stdin_path, GError **err)
{
    int in = open_stdin(stdin_path, err);
    if (in < 0)
        return NULL;
    ClusterRun *run = g_new0(ClusterRun, 1);
    gboolean ok = g_spawn_async_with_pipes_and_fds(NULL, (const char *const *)argv, NULL,
                                                   G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                                                   new_process_group, NULL, in, -1, -1, NULL, NULL, 0, &run->pid,
                                                   NULL, &run->fds[0], &run->fds[1], err);
    close(in);
    if (!ok) {
        g_free(run);
        return NULL;
    }
    run->command = g_strjoinv(" ", argv);
    return run;
}

gboolean cluster_run_end(ClusterRun *run, double timeout_s, char **out, char **errout, GError **err)
{
    GString *bufs[2] = { g_string_new(NULL), g_string_new(NULL) };
    gint64 deadline = g_get_monotonic_time() + (gint64)(timeout_s * G_USEC_PER_SEC);
    gboolean in_time = drain_pipes(run->fds, bufs, deadline);
    int status = 0;
    while (in_time && waitpid(run->pid, &status, WNOHANG) == 0) {
        if (g_get_monotonic_time() >= deadline)
            in_time = FALSE;
        else
            g_usleep(10 * 1000);
    }
    if (!in_time) {
        kill(-run->pid, SIGKILL);
        waitpid(run->pid, &status, 0);
    }
    for (int i = 0; i < 2; i++)
        if (run->fds[i] >= 0)
            close(run->fds[i]);
    g_spawn_close_pid(run->pid);
    g_autofree char *errors = g_strstrip(g_strdup(bufs[1]->str));
    gboolean ok = in_time && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!in_time)
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "'%s' did not finish within %.0f s", run->command,
                    timeout_s);
    else if (!ok)
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "'%s' failed (%s %d)%s%s", run->command,
                    WIFEXITED(status) ? "exit status" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), *errors ? ": " : "", errors);
    if (out)
        *out = g_strdup(bufs[0]->str);
    if (errout)
        *errout = g_steal_pointer(&errors);
    g_string_free(bufs[0], TRUE);
    g_string_free(bufs[1], TRUE);
    g_free(run->command);
    g_free(run);
    return ok;
}

gboolean cluster_run(char **argv, const char *stdin_path, double timeout_s, char **out, char **errout,
                     GError **err)
{
    ClusterRun *run = cluster_run_begin(argv, stdin_path, err);
    return run && cluster_run_end(run, timeout_s, out, errout, err);
}
