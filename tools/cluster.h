/* herd — `herd cluster`: what its parts share.
 *
 * cluster.c          the command line: start, stop, list
 * cluster-state.c    the state file that records what a start launched
 * cluster-proc.c     processes: detached spawn, identity (pid + start time + boot id),
 *                    liveness, bounded stop, helper commands with a deadline
 * cluster-launch.c   engine launchers (local, mpiexec, ssh, slurm): start, check, stop
 *
 * See docs/cluster.md.
 */
#pragma once

#include <glib.h>

/* How an engine set (or the controller) is found again. */
typedef enum {
    CLUSTER_PROC_LOCAL, /* a process on this machine */
    CLUSTER_PROC_SSH,   /* a process on an ssh host */
    CLUSTER_PROC_SLURM, /* a Slurm job */
} ClusterProcKind;

/* One thing a start launched: the controller, or one engine set. A pid alone may be
 * reused after the process ended; pid + start time + boot id name one process. */
typedef struct ClusterProc {
    ClusterProcKind kind;
    int pid;            /* LOCAL, SSH: process id on its host; SLURM: 0 */
    guint64 start_time; /* clock ticks after boot (/proc/PID/stat field 22) */
    char *boot_id;      /* /proc/sys/kernel/random/boot_id of its host */
    char *host;         /* SSH: the destination given to ssh */
    char *job_id;       /* SLURM: the job id sbatch printed */
    int engines;        /* engines it runs; 0 for the controller */
    char *log;          /* where its output goes (a path on its host) */
    /* not saved: set when this process reaped it */
    gboolean reaped;
    int wait_status;
} ClusterProc;

typedef struct ClusterState {
    char *path;          /* the state file itself */
    char *profile_dir;   /* absolute */
    char *cluster_id;    /* "" when none */
    char *launcher;      /* local, mpiexec, ssh, slurm */
    char *engine;        /* ipengine or herd */
    int n_engines;       /* engines asked for */
    char *started;       /* ISO 8601 time of the start */
    char **ssh_command;  /* ssh launcher: the ssh command and options that reach the hosts */
    ClusterProc *controller;
    GPtrArray *engine_sets; /* ClusterProc* */
} ClusterState;

/* ---- cluster-state.c ---- */

/* <profile_dir>/security/herd-cluster[-<id>].json */
char *cluster_state_path(const char *profile_dir, const char *cluster_id);
ClusterState *cluster_state_new(const char *profile_dir, const char *cluster_id);
void cluster_state_free(ClusterState *st);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ClusterState, cluster_state_free)
/* Written to a temporary file and renamed into place, mode 0600. */
gboolean cluster_state_save(const ClusterState *st, GError **err);
ClusterState *cluster_state_load(const char *path, GError **err);
/* GCompareFunc for a GPtrArray of strings. */
int cluster_compare_paths(gconstpointer a, gconstpointer b);
/* The state files of one profile folder, sorted (caller frees with g_strfreev). */
char **cluster_state_files(const char *profile_dir);

ClusterProc *cluster_proc_new(ClusterProcKind kind);
void cluster_proc_free(ClusterProc *p);
/* <profile_dir>/log/herd-cluster[-<id>]-<what>.log */
char *cluster_log_path(const char *profile_dir, const char *cluster_id, const char *what);

/* ---- cluster-proc.c ---- */

/* This machine's boot id (caller frees). */
char *cluster_boot_id(void);
/* Start argv in a session of its own (it outlives `herd cluster`) with environment envp
 * (NULL: ours), stdin from /dev/null, stdout and stderr appended to p->log. Fills in
 * p's identity (LOCAL). */
gboolean cluster_proc_spawn(ClusterProc *p, char **argv, char **envp, GError **err);
/* A LOCAL process still runs: same pid, start time and boot, not a zombie. Reaps it when
 * it is a child of this process. */
gboolean cluster_proc_alive(ClusterProc *p);
/* Every living descendant of a LOCAL process, as LOCAL ClusterProcs (an ipengine's nanny,
 * the ranks under mpiexec), so that they can be stopped by pid after it. */
GPtrArray *cluster_proc_descendants(const ClusterProc *p);
/* Send sig to a LOCAL process if it is still the same one. */
void cluster_proc_signal(ClusterProc *p, int sig);
/* How a LOCAL process that this process reaped ended: "exited with status 1". */
char *cluster_proc_describe_exit(const ClusterProc *p);
/* The last `lines` lines of a local file, indented for an error message ("" if none). */
char *cluster_log_tail(const char *path, int lines);
/* Run argv to completion with stdin from stdin_path (NULL: /dev/null), its stdout into
 * *out (may be NULL) and its stderr into *errout (may be NULL); killed after timeout_s.
 * FALSE with err set when it cannot start, times out or does not exit 0. */
gboolean cluster_run(char **argv, const char *stdin_path, double timeout_s, char **out, char **errout,
                     GError **err);
/* The same in two halves, so that several commands (one ssh per host) run at once:
 * begin starts it; end waits for it (timeout_s from then), collects and frees it. */
typedef struct ClusterRun ClusterRun;
ClusterRun *cluster_run_begin(char **argv, const char *stdin_path, GError **err);
gboolean cluster_run_end(ClusterRun *run, double timeout_s, char **out, char **errout, GError **err);
/* Sleep for a poll interval unless a stop signal arrived; FALSE once one has. */
gboolean cluster_poll_pause(void);
/* Set by SIGINT/SIGTERM/SIGHUP while `herd cluster` waits (see cluster_catch_signals). */
gboolean cluster_interrupted(void);
void cluster_catch_signals(void);

/* ---- cluster-launch.c ---- */

typedef struct ClusterOptions {
    char *profile_dir, *cluster_id;
    int n;                 /* engines; 0 = default of the launcher */
    char *engine;          /* ipengine (default) or herd */
    char *launcher;        /* local (default), mpiexec, ssh, slurm */
    char *python;          /* interpreter with ipyparallel */
    char *engine_args;     /* extra engine arguments, shell words */
    char *mpiexec;         /* mpiexec command, shell words */
    char *hosts;           /* ssh: host[:n],... */
    char *ssh;             /* ssh command, shell words */
    char *remote_profile_dir;
    char *sbatch;          /* sbatch command, shell words */
    double timeout;        /* seconds for one helper command (ssh, sbatch) */
} ClusterOptions;

/* One entry of --hosts. */
typedef struct ClusterHost {
    char *destination; /* what ssh is given */
    int engines;
} ClusterHost;

/* Parse --hosts "a,b:2,c": a host with ":k" gets k engines; the engines that no count
 * places (n minus the counts) go round-robin to the hosts without one, and with n == 0
 * each of those gets one. An array of ClusterHost (freeing it frees them) and the total
 * in *total; NULL with err when the list is empty, a count is not a positive number, or
 * n does not fit (every host listed must get at least one engine). */
GArray *cluster_parse_hosts(const char *list, int n, int *total, GError **err);

/* Launch the engines of st with the chosen launcher, adding each engine set to st as it
 * starts (so a failure can stop what did start). */
gboolean cluster_launch_engines(const ClusterOptions *o, ClusterState *st, GError **err);
/* While a start waits for registrations: FALSE with *why when an engine set has ended. */
gboolean cluster_engines_check(ClusterState *st, char **why);
/* Stop every engine set, then the controller: SIGTERM (scancel), up to grace_s seconds,
 * then SIGKILL, each by its recorded identity. Reports what it did on stdout unless quiet. */
void cluster_stop_all(ClusterState *st, double grace_s, gboolean quiet);
/* Engine sets that still run (LOCAL and SLURM only; an ssh host is not asked). */
guint cluster_engine_sets_running(ClusterState *st);
