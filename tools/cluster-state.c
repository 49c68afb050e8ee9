/* herd — `herd cluster`: the state file.
 *
 * <profile>/security/herd-cluster[-<id>].json records what `herd cluster start` launched,
 * so that `stop` and `list` find it again: the controller and each engine set with the
 * identity that guards against pid reuse (pid, start time, boot id), where its output
 * goes, and how to reach it (ssh host, Slurm job). Its name differs from ipcluster's
 * cluster-<id>.json so that neither tool reads the other's file.
 */
#include <errno.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include <herd/wire.h>

#include "cluster.h"

#define STATE_FORMAT 1

char *cluster_state_path(const char *profile_dir, const char *cluster_id)
{
    g_autofree char *name = cluster_id && *cluster_id ? g_strdup_printf("herd-cluster-%s.json", cluster_id)
                                                      : g_strdup("herd-cluster.json");
    return g_build_filename(profile_dir, "security", name, NULL);
}

char *cluster_log_path(const char *profile_dir, const char *cluster_id, const char *what)
{
    g_autofree char *name = cluster_id && *cluster_id ? g_strdup_printf("herd-cluster-%s-%s.log", cluster_id, what)
                                                      : g_strdup_printf("herd-cluster-%s.log", what);
    return g_build_filename(profile_dir, "log", name, NULL);
}

ClusterProc *cluster_proc_new(ClusterProcKind kind)
{
    ClusterProc *p = g_new0(ClusterProc, 1);
    p->kind = kind;
    return p;
}

void cluster_proc_free(ClusterProc *p)
{
    if (!p)
        return;
    g_free(p->boot_id);
    g_free(p->host);
    g_free(p->job_id);
    g_free(p->log);
    g_free(p);
}

ClusterState *cluster_state_new(const char *profile_dir, const char *cluster_id)
{
    ClusterState *st = g_new0(ClusterState, 1);
    st->profile_dir = g_strdup(profile_dir);
    st->cluster_id = g_strdup(cluster_id ? cluster_id : "");
    st->path = cluster_state_path(profile_dir, st->cluster_id);
    st->engine_sets = g_ptr_array_new_with_free_func((GDestroyNotify)cluster_proc_free);
    return st;
}

void cluster_state_free(ClusterState *st)
{
    if (!st)
        return;
    g_free(st->path);
    g_free(st->profile_dir);
    g_free(st->cluster_id);
    g_free(st->launcher);
    g_free(st->engine);
    g_free(st->started);
    g_strfreev(st->ssh_command);
    cluster_proc_free(st->controller);
    g_ptr_array_free(st->engine_sets, TRUE);
    g_free(st);
}

/* ---- writing ---- */

static const char *const kind_names[] = { "local", "ssh", "slurm" };

static JsonObject *proc_object(const ClusterProc *p)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "kind", kind_names[p->kind]);
    json_object_set_int_member(o, "pid", p->pid);
    json_object_set_int_member(o, "start_time", (gint64)p->start_time);
    json_object_set_string_member(o, "boot_id", p->boot_id); /* NULL -> null */
    json_object_set_string_member(o, "host", p->host);
    json_object_set_string_member(o, "job_id", p->job_id);
    json_object_set_int_member(o, "engines", p->engines);
    json_object_set_string_member(o, "log", p->log);
    return o;
}

gboolean cluster_state_save(const ClusterState *st, GError **err)
{
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "herd_cluster_format", STATE_FORMAT);
    json_object_set_string_member(o, "profile_dir", st->profile_dir);
    json_object_set_string_member(o, "cluster_id", st->cluster_id);
    json_object_set_string_member(o, "launcher", st->launcher);
    json_object_set_string_member(o, "engine", st->engine);
    json_object_set_int_member(o, "engines", st->n_engines);
    json_object_set_string_member(o, "started", st->started);
    if (st->ssh_command) {
        JsonArray *words = json_array_new();
        for (char **w = st->ssh_command; *w; w++)
            json_array_add_string_element(words, *w);
        json_object_set_array_member(o, "ssh_command", words);
    } else {
        json_object_set_null_member(o, "ssh_command");
    }
    if (st->controller)
        json_object_set_object_member(o, "controller", proc_object(st->controller));
    else
        json_object_set_null_member(o, "controller");
    JsonArray *sets = json_array_new();
    for (guint i = 0; i < st->engine_sets->len; i++)
        json_array_add_object_element(sets, proc_object(st->engine_sets->pdata[i]));
    json_object_set_array_member(o, "engine_sets", sets);

    g_autoptr(JsonNode) root = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    json_generator_set_pretty(gen, TRUE);
    json_generator_set_root(gen, root);
    gsize len;
    g_autofree char *text = json_generator_to_data(gen, &len);
    /* CONSISTENT: a temporary file in the same folder, fsync'd, renamed over the old one. */
    return g_file_set_contents_full(st->path, text, (gssize)len, G_FILE_SET_CONTENTS_CONSISTENT, 0600, err);
}

/* ---- reading ---- */

static char *dup_member(JsonObject *o, const char *name)
{
    const char *s = herd_json_str(o, name);
    return s ? g_strdup(s) : NULL;
}

static ClusterProc *read_proc(JsonObject *o)
{
    const char *kind = herd_json_str(o, "kind");
    ClusterProc *p = NULL;
    for (guint k = 0; k < G_N_ELEMENTS(kind_names) && !p; k++)
        if (g_strcmp0(kind, kind_names[k]) == 0)
            p = cluster_proc_new((ClusterProcKind)k);
    if (!p)
        return NULL;
    p->pid = (int)herd_json_int(o, "pid", 0);
    p->start_time = (guint64)herd_json_int(o, "start_time", 0);
    p->boot_id = dup_member(o, "boot_id");
    p->host = dup_member(o, "host");
    p->job_id = dup_member(o, "job_id");
    p->engines = (int)herd_json_int(o, "engines", 0);
    p->log = dup_member(o, "log");
    return p;
}

static gboolean bad_state(const char *path, const char *what, GError **err)
{
    g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL, "%s: %s", path, what);
    return FALSE;
}

ClusterState *cluster_state_load(const char *path, GError **err)
{
    g_autofree char *text = NULL;
    gsize len;
    if (!g_file_get_contents(path, &text, &len, err))
        return NULL;
    g_autoptr(JsonNode) root = herd_json_parse_object((HerdBytes){ text, len }, NULL);
    if (!root) {
        bad_state(path, "not a JSON object", err);
        return NULL;
    }
    JsonObject *o = json_node_get_object(root);
    if (herd_json_int(o, "herd_cluster_format", 0) != STATE_FORMAT) {
        bad_state(path, "not a herd cluster state file (or another format version)", err);
        return NULL;
    }
    const char *profile_dir = herd_json_str(o, "profile_dir");
    JsonObject *controller = herd_json_object(o, "controller");
    if (!profile_dir || !controller) {
        bad_state(path, "no profile_dir or controller", err);
        return NULL;
    }
    g_autoptr(ClusterState) st = cluster_state_new(profile_dir, herd_json_str(o, "cluster_id"));
    g_free(st->path);
    st->path = g_strdup(path);
    st->launcher = dup_member(o, "launcher");
    st->engine = dup_member(o, "engine");
    st->n_engines = (int)herd_json_int(o, "engines", 0);
    st->started = dup_member(o, "started");
    JsonArray *ssh = herd_json_array(o, "ssh_command");
    if (ssh) {
        st->ssh_command = g_new0(char *, json_array_get_length(ssh) + 1);
        for (guint i = 0; i < json_array_get_length(ssh); i++)
            st->ssh_command[i] = g_strdup(json_array_get_string_element(ssh, i));
    }
    st->controller = read_proc(controller);
    JsonArray *sets = herd_json_array(o, "engine_sets");
    for (guint i = 0; sets && i < json_array_get_length(sets); i++) {
        JsonObject *set = json_array_get_object_element(sets, i);
        ClusterProc *p = set ? read_proc(set) : NULL;
        if (!p) {
            bad_state(path, "an engine set of unknown kind", err);
            return NULL;
        }
        g_ptr_array_add(st->engine_sets, p);
    }
    if (!st->controller) {
        bad_state(path, "a controller of unknown kind", err);
        return NULL;
    }
    return g_steal_pointer(&st);
}

int cluster_compare_paths(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **cluster_state_files(const char *profile_dir)
{
    g_autofree char *security = g_build_filename(profile_dir, "security", NULL);
    GPtrArray *paths = g_ptr_array_new();
    GDir *dir = g_dir_open(security, 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name(dir)))
        if (g_str_has_prefix(name, "herd-cluster") && g_str_has_suffix(name, ".json"))
            g_ptr_array_add(paths, g_build_filename(security, name, NULL));
    if (dir)
        g_dir_close(dir);
    g_ptr_array_sort(paths, cluster_compare_paths);
    g_ptr_array_add(paths, NULL);
    return (char **)g_ptr_array_free(paths, FALSE);
}
