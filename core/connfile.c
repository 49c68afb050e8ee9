/* herd — ipyparallel connection files and the profile folder.
 *
 * The files carry exactly the keys ipyparallel 7.1 writes, in its order, laid out the way
 * Python's json.dumps(indent=2) lays them out (so a diff against a Python controller's file
 * shows only values). json-glib renders each value; this file only arranges the members.
 */
#include "herd/connfile.h"

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#define MAX_PORT 65535

static gboolean is_known_side(const char *side)
{
    return g_strcmp0(side, "client") == 0 || g_strcmp0(side, "engine") == 0;
}

void herd_conninfo_clear(HerdConnInfo *ci)
{
    if (ci == NULL)
        return;
    g_free(ci->interface);
    g_free(ci->ssh);
    g_free(ci->key);
    g_free(ci->curve_serverkey);
    g_free(ci->location);
    g_free(ci->signature_scheme);
    g_free(ci->task_scheme);
    memset(ci, 0, sizeof *ci);
}

char *herd_connfile_path(const char *profile_dir, const char *cluster_id, const char *side)
{
    g_autofree char *name = (cluster_id != NULL && *cluster_id != '\0')
                                ? g_strdup_printf("ipcontroller-%s-%s.json", cluster_id, side)
                                : g_strdup_printf("ipcontroller-%s.json", side);
    return g_build_filename(profile_dir, "security", name, NULL);
}

/* ------------------------------------------------------------------------------------ */
/* Profile folder                                                                        */
/* ------------------------------------------------------------------------------------ */

static gboolean set_errno_error(GError **err, int errsv, const char *what, const char *path)
{
    g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errsv), "%s %s: %s", what, path, g_strerror(errsv));
    return FALSE;
}

/* Create dir with mode; when private, also take group/world access away from an existing
 * one, as IPython does for security/ (the key must not be readable by others). */
static gboolean ensure_subdir(const char *parent, const char *leaf, int mode, gboolean private_dir, GError **err)
{
    g_autofree char *path = g_build_filename(parent, leaf, NULL);
    if (g_mkdir(path, mode) != 0 && errno != EEXIST)
        return set_errno_error(err, errno, "cannot create folder", path);
    GStatBuf st;
    if (g_stat(path, &st) != 0)
        return set_errno_error(err, errno, "cannot inspect folder", path);
    if (!S_ISDIR(st.st_mode)) {
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_NOTDIR, "%s exists and is not a folder", path);
        return FALSE;
    }
    if (private_dir && (st.st_mode & 07777) != (mode_t)mode && g_chmod(path, mode) != 0)
        return set_errno_error(err, errno, "cannot make folder private (chmod 0700)", path);
    return TRUE;
}

static gboolean ensure_startup_readme(const char *profile_dir, GError **err)
{
    static const char readme[] =
        "This is the IPython startup folder of this profile.\n\n"
        "IPython runs the .py and .ipy files in this folder, in lexicographical order, when\n"
        "a kernel or engine using this profile starts. The herd controller only creates it\n"
        "so that the profile looks the way IPython expects.\n";
    g_autofree char *path = g_build_filename(profile_dir, "startup", "README", NULL);
    if (g_file_test(path, G_FILE_TEST_EXISTS))
        return TRUE;
    return g_file_set_contents(path, readme, -1, err);
}

gboolean herd_profile_dir_ensure(const char *profile_dir, GError **err)
{
    g_return_val_if_fail(profile_dir != NULL, FALSE);
    if (g_mkdir_with_parents(profile_dir, 0755) != 0)
        return set_errno_error(err, errno, "cannot create profile folder", profile_dir);
    return ensure_subdir(profile_dir, "security", 0700, TRUE, err) &&
           ensure_subdir(profile_dir, "pid", 0700, TRUE, err) && ensure_subdir(profile_dir, "log", 0755, FALSE, err) &&
           ensure_subdir(profile_dir, "startup", 0755, FALSE, err) && ensure_startup_readme(profile_dir, err);
}

/* ------------------------------------------------------------------------------------ */
/* Writing                                                                              */
/* ------------------------------------------------------------------------------------ */

/* Members of one JSON object, laid out as Python's json.dumps(obj, indent=2). */
typedef struct {
    GString *out;
    gboolean empty;
} ObjectWriter;

static void append_json_string(GString *out, const char *s)
{
    g_autoptr(JsonNode) node = json_node_init_string(json_node_alloc(), s ? s : "");
    g_autofree char *text = json_to_string(node, FALSE);
    g_string_append(out, text);
}

static void begin_member(ObjectWriter *w, const char *name)
{
    g_string_append(w->out, w->empty ? "\n  " : ",\n  ");
    w->empty = FALSE;
    append_json_string(w->out, name);
    g_string_append(w->out, ": ");
}

static void add_string(ObjectWriter *w, const char *name, const char *value)
{
    begin_member(w, name);
    append_json_string(w->out, value);
}

static void add_string_or_null(ObjectWriter *w, const char *name, const char *value)
{
    begin_member(w, name);
    if (value == NULL)
        g_string_append(w->out, "null");
    else
        append_json_string(w->out, value);
}

static void add_int(ObjectWriter *w, const char *name, int value)
{
    begin_member(w, name);
    g_string_append_printf(w->out, "%d", value);
}

static void add_int_list(ObjectWriter *w, const char *name, const int *values, int n)
{
    begin_member(w, name);
    if (n == 0) {
        g_string_append(w->out, "[]");
        return;
    }
    g_string_append(w->out, "[");
    for (int i = 0; i < n; i++)
        g_string_append_printf(w->out, "%s\n    %d", i ? "," : "", values[i]);
    g_string_append(w->out, "\n  ]");
}

static gboolean check_port(const char *path, const char *name, int port, GError **err)
{
    if (port >= 1 && port <= MAX_PORT)
        return TRUE;
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "%s: port \"%s\" is %d, not in 1-%d", path, name,
                port, MAX_PORT);
    return FALSE;
}

static gboolean check_ports(const char *path, const char *side, const HerdConnPorts *p, GError **err)
{
    gboolean client = g_str_equal(side, "client");
    if (!check_port(path, "registration", p->registration, err) || !check_port(path, "control", p->control, err) ||
        !check_port(path, "mux", p->mux, err) || !check_port(path, "task", p->task, err) ||
        !check_port(path, "iopub", p->iopub, err))
        return FALSE;
    if (client)
        return check_port(path, "notification", p->notification, err) &&
               check_port(path, "broadcast", p->broadcast, err);
    if (!check_port(path, "hb_ping", p->hb_ping, err) || !check_port(path, "hb_pong", p->hb_pong, err))
        return FALSE;
    /* an engine picks broadcast[id % len(broadcast)]: an empty list would crash it */
    if (p->n_broadcast_engine < 1 || p->n_broadcast_engine > (int)G_N_ELEMENTS(p->broadcast_engine)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s: the engine file needs 1 to %d broadcast ports, got %d", path,
                    (int)G_N_ELEMENTS(p->broadcast_engine), p->n_broadcast_engine);
        return FALSE;
    }
    for (int i = 0; i < p->n_broadcast_engine; i++)
        if (!check_port(path, "broadcast", p->broadcast_engine[i], err))
            return FALSE;
    return TRUE;
}

static char *render_connfile(const char *side, const HerdConnInfo *ci)
{
    const HerdConnPorts *p = &ci->ports;
    gboolean client = g_str_equal(side, "client");
    ObjectWriter w = {g_string_new("{"), TRUE};
    add_string(&w, "ssh", ci->ssh);
    add_string(&w, "interface", ci->interface);
    add_int(&w, "registration", p->registration);
    add_int(&w, "control", p->control);
    add_int(&w, "mux", p->mux);
    add_int(&w, "task", p->task);
    if (client)
        add_string(&w, "task_scheme", ci->task_scheme ? ci->task_scheme : "leastload");
    add_int(&w, "iopub", p->iopub);
    if (client) {
        add_int(&w, "notification", p->notification);
        add_int(&w, "broadcast", p->broadcast);
    } else {
        add_int(&w, "hb_ping", p->hb_ping);
        add_int(&w, "hb_pong", p->hb_pong);
        add_int_list(&w, "broadcast", p->broadcast_engine, p->n_broadcast_engine);
    }
    add_string(&w, "key", ci->key);
    add_string_or_null(&w, "curve_serverkey", ci->curve_serverkey);
    add_string(&w, "location", ci->location);
    add_string(&w, "pack", "json");
    add_string(&w, "unpack", "json");
    add_string(&w, "signature_scheme", ci->signature_scheme ? ci->signature_scheme : "hmac-sha256");
    g_string_append(w.out, "\n}"); /* no trailing newline, like ipcontroller */
    return g_string_free(w.out, FALSE);
}

gboolean herd_connfile_write(const char *path, const char *side, const HerdConnInfo *ci, GError **err)
{
    g_return_val_if_fail(path != NULL && ci != NULL, FALSE);
    if (!is_known_side(side)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s: connection file side must be \"client\" or \"engine\", not \"%s\"", path,
                    side ? side : "(null)");
        return FALSE;
    }
    if (!check_ports(path, side, &ci->ports, err))
        return FALSE;
    g_autofree char *text = render_connfile(side, ci);
    /* A temporary file in the same folder renamed over the old one: launchers poll for
     * the file and must never read half of it. */
    if (!g_file_set_contents_full(path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, err))
        return FALSE;
    /* The umask may only have removed bits; make the mode exactly 0600 either way. */
    if (g_chmod(path, 0600) != 0)
        return set_errno_error(err, errno, "cannot chmod 0600", path);
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* Reading                                                                              */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    const char *path;
    JsonObject *obj;
} FileReader;

static gboolean fail_field(const FileReader *r, const char *name, const char *problem, GError **err)
{
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s: field \"%s\" %s", r->path, name, problem);
    return FALSE;
}

static JsonNode *member(const FileReader *r, const char *name)
{
    return json_object_has_member(r->obj, name) ? json_object_get_member(r->obj, name) : NULL;
}

static gboolean node_is_string(JsonNode *node)
{
    return JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING;
}

/* required: missing is an error; otherwise *out stays NULL. allow_null: JSON null -> NULL. */
static gboolean read_string(const FileReader *r, const char *name, gboolean required, gboolean allow_null,
                            char **out, GError **err)
{
    JsonNode *node = member(r, name);
    if (node == NULL)
        return required ? fail_field(r, name, "is missing", err) : TRUE;
    if (allow_null && JSON_NODE_HOLDS_NULL(node))
        return TRUE;
    if (!node_is_string(node))
        return fail_field(r, name, allow_null ? "must be a string or null" : "must be a string", err);
    *out = g_strdup(json_node_get_string(node));
    return TRUE;
}

static gboolean node_to_port(JsonNode *node, int *out)
{
    if (node == NULL || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_INT64)
        return FALSE;
    gint64 v = json_node_get_int(node);
    if (v < 1 || v > MAX_PORT)
        return FALSE;
    *out = (int)v;
    return TRUE;
}

static gboolean read_port(const FileReader *r, const char *name, int *out, GError **err)
{
    JsonNode *node = member(r, name);
    if (node == NULL)
        return fail_field(r, name, "is missing", err);
    if (!node_to_port(node, out))
        return fail_field(r, name, "must be an integer port 1-65535", err);
    return TRUE;
}

static gboolean read_port_list(const FileReader *r, const char *name, HerdConnPorts *p, GError **err)
{
    JsonNode *node = member(r, name);
    if (node == NULL)
        return fail_field(r, name, "is missing", err);
    if (!JSON_NODE_HOLDS_ARRAY(node))
        return fail_field(r, name, "must be a list of ports in the engine file", err);
    JsonArray *array = json_node_get_array(node);
    guint n = json_array_get_length(array);
    if (n < 1 || n > G_N_ELEMENTS(p->broadcast_engine))
        return fail_field(r, name, "must hold 1 to 8 ports", err);
    for (guint i = 0; i < n; i++)
        if (!node_to_port(json_array_get_element(array, i), &p->broadcast_engine[i]))
            return fail_field(r, name, "must hold only integer ports 1-65535", err);
    p->n_broadcast_engine = (int)n;
    return TRUE;
}

/* herd speaks JSON only; a pickle-packed file is not one it can serve. */
static gboolean read_packer(const FileReader *r, const char *name, GError **err)
{
    g_autofree char *value = NULL;
    if (!read_string(r, name, TRUE, FALSE, &value, err))
        return FALSE;
    if (!g_str_equal(value, "json"))
        return fail_field(r, name, "must be \"json\" (herd supports no other serialisation)", err);
    return TRUE;
}

static gboolean read_fields(const FileReader *r, const char *side, HerdConnInfo *ci, GError **err)
{
    HerdConnPorts *p = &ci->ports;
    gboolean client = g_str_equal(side, "client");
    if (!read_string(r, "ssh", FALSE, FALSE, &ci->ssh, err) ||
        !read_string(r, "interface", TRUE, FALSE, &ci->interface, err) ||
        !read_port(r, "registration", &p->registration, err) || !read_port(r, "control", &p->control, err) ||
        !read_port(r, "mux", &p->mux, err) || !read_port(r, "task", &p->task, err) ||
        !read_port(r, "iopub", &p->iopub, err) || !read_string(r, "key", TRUE, FALSE, &ci->key, err) ||
        !read_string(r, "curve_serverkey", FALSE, TRUE, &ci->curve_serverkey, err) ||
        !read_string(r, "location", TRUE, FALSE, &ci->location, err) || !read_packer(r, "pack", err) ||
        !read_packer(r, "unpack", err) ||
        !read_string(r, "signature_scheme", TRUE, FALSE, &ci->signature_scheme, err))
        return FALSE;
    if (ci->ssh == NULL)
        ci->ssh = g_strdup("");
    if (client)
        return read_string(r, "task_scheme", TRUE, FALSE, &ci->task_scheme, err) &&
               read_port(r, "notification", &p->notification, err) && read_port(r, "broadcast", &p->broadcast, err);
    return read_port(r, "hb_ping", &p->hb_ping, err) && read_port(r, "hb_pong", &p->hb_pong, err) &&
           read_port_list(r, "broadcast", p, err);
}

gboolean herd_connfile_read(const char *path, const char *side, HerdConnInfo *ci, GError **err)
{
    g_return_val_if_fail(path != NULL && ci != NULL, FALSE);
    memset(ci, 0, sizeof *ci);
    if (!is_known_side(side)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s: connection file side must be \"client\" or \"engine\", not \"%s\"", path,
                    side ? side : "(null)");
        return FALSE;
    }
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) local = NULL;
    if (!json_parser_load_from_file(parser, path, &local)) {
        g_set_error(err, local->domain, local->code, "%s: %s", path, local->message);
        return FALSE;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (root == NULL || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s: not a JSON object", path);
        return FALSE;
    }
    FileReader reader = {path, json_node_get_object(root)};
    if (!read_fields(&reader, side, ci, err)) {
        herd_conninfo_clear(ci);
        return FALSE;
    }
    return TRUE;
}

/* ---- the peers' side ---- */

gboolean herd_connfile_read_peer(const char *path, const char *side, const char *who, HerdConnInfo *ci,
                                 GError **err)
{
    if (!herd_connfile_read(path, side, ci, err))
        return FALSE;
    if (ci->ssh && *ci->ssh)
        g_warning("%s asks for an SSH tunnel (%s); %s connects directly", path, ci->ssh, who);
    return TRUE;
}

void herd_conninfo_secure_socket(const HerdConnInfo *ci, void *zsock)
{
    if (!ci->curve_serverkey || !*ci->curve_serverkey)
        return;
    char public_key[41], secret_key[41];
    zmq_curve_keypair(public_key, secret_key);
    zmq_setsockopt(zsock, ZMQ_CURVE_SERVERKEY, ci->curve_serverkey, 40);
    zmq_setsockopt(zsock, ZMQ_CURVE_PUBLICKEY, public_key, 40);
    zmq_setsockopt(zsock, ZMQ_CURVE_SECRETKEY, secret_key, 40);
}

gboolean herd_conninfo_connect(const HerdConnInfo *ci, void *zsock, int port, GError **err)
{
    const char *interface = ci->interface;
    if (g_str_equal(interface, "tcp://*") || g_str_equal(interface, "tcp://0.0.0.0"))
        interface = "tcp://127.0.0.1";
    g_autofree char *url = g_strdup_printf("%s:%d", interface, port);
    if (zmq_connect(zsock, url) != 0) {
        int saved = errno;
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(saved), "cannot connect to %s: %s", url,
                    zmq_strerror(saved));
        return FALSE;
    }
    return TRUE;
}
