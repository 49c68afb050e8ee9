/* herd — what the `herd` program reads of other processes in /proc: the fields of
 * /proc/PID/stat it needs, and a process with all its descendants (herd bench sums a
 * controller's CPU over them; herd cluster stops them). Linux only, as herd is. */
#pragma once

#include <glib.h>

typedef struct HerdProcStat {
    int pid, ppid;
    char state;          /* R, S, D, Z, ... */
    guint64 cpu_ticks;   /* utime + stime, in clock ticks */
    guint64 start_time;  /* since boot, in clock ticks: with the pid, names one process */
} HerdProcStat;

/* FALSE when the process is gone or its stat cannot be read. */
gboolean herd_proc_stat(int pid, HerdProcStat *out);
/* root (first, if it is alive) and every live descendant; zombies are left out. */
GArray *herd_proc_tree(int root);
