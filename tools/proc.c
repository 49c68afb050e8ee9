/* herd — /proc readers for the herd program (see proc.h). */
#include "proc.h"

#include <stdlib.h>
#include <string.h>

gboolean herd_proc_stat(int pid, HerdProcStat *out)
{
    char path[64];
    g_snprintf(path, sizeof path, "/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return FALSE;
    /* The command name may hold spaces and parentheses: the fields resume after the
     * last ')', starting with field 3 (state). */
    const char *p = strrchr(text, ')');
    if (!p || p[1] != ' ')
        return FALSE;
    g_auto(GStrv) fields = g_strsplit(p + 2, " ", 21);
    if (g_strv_length(fields) < 21)
        return FALSE;
    out->pid = pid;
    out->state = fields[0][0];
    out->ppid = atoi(fields[1]);
    out->cpu_ticks = g_ascii_strtoull(fields[11], NULL, 10) + g_ascii_strtoull(fields[12], NULL, 10); /* 14, 15 */
    out->start_time = g_ascii_strtoull(fields[19], NULL, 10);                                        /* field 22 */
    return TRUE;
}

GArray *herd_proc_tree(int root)
{
    g_autoptr(GArray) all = g_array_new(FALSE, FALSE, sizeof(HerdProcStat));
    GDir *dir = g_dir_open("/proc", 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name(dir))) {
        HerdProcStat ps;
        int pid = atoi(name);
        if (pid > 0 && herd_proc_stat(pid, &ps) && ps.state != 'Z' && ps.state != 'X')
            g_array_append_val(all, ps);
    }
    if (dir)
        g_dir_close(dir);
    /* A process joins when its parent has joined, until nothing more does. */
    GArray *tree = g_array_new(FALSE, FALSE, sizeof(HerdProcStat));
    g_autoptr(GHashTable) members = g_hash_table_new(g_direct_hash, g_direct_equal);
    for (guint i = 0; i < all->len; i++)
        if (g_array_index(all, HerdProcStat, i).pid == root)
            g_array_append_val(tree, g_array_index(all, HerdProcStat, i));
    g_hash_table_add(members, GINT_TO_POINTER(root));
    for (gboolean grew = TRUE; grew;) {
        grew = FALSE;
        for (guint i = 0; i < all->len; i++) {
            HerdProcStat *ps = &g_array_index(all, HerdProcStat, i);
            if (!g_hash_table_contains(members, GINT_TO_POINTER(ps->pid)) &&
                g_hash_table_contains(members, GINT_TO_POINTER(ps->ppid))) {
                g_hash_table_add(members, GINT_TO_POINTER(ps->pid));
                g_array_append_val(tree, *ps);
                grew = TRUE;
            }
        }
    }
    return tree;
}
