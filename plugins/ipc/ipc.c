/* herd — the ipc transport plugin.
 *
 * Channels are Unix-domain sockets in a private folder. The connection file says
 * "interface": "ipc://<dir>/<stem>" with integer "ports", and every channel is bound at
 * exactly "ipc://<dir>/<stem>:<port>": that colon form is what unmodified ipyparallel 7.1
 * clients and engines build (interface + ":%i" % port), so the socket file's name contains
 * the colon and the number.
 */
#include <herd/config.h>
#include <herd/transport.h>

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#define IPC_GROUP "transport.ipc"
#define IPC_KEY_DIR "dir"
#define IPC_DEFAULT_STEM "herd"

/* Longest path a sockaddr_un can hold, leaving room for the terminating NUL. */
#define IPC_MAX_PATH (sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1)

typedef struct IpcTransport {
    char *side;
    char *dir;       /* absolute, private (0700, ours) */
    char *base;      /* <dir>/<stem> */
    char *interface; /* "ipc://" + base */
    GPtrArray *created; /* socket files this instance bound, unlinked by close() */
    int (*next_port)(gpointer pool);
    gpointer pool;
} IpcTransport;

/* Channel numbers handed out when neither the caller nor the pool picks one. Shared by all
 * instances in the process, so a client side and an engine side with the same folder and
 * stem never pick the same file. */
static gint ipc_counter = 0;

/* ---- configuration ---------------------------------------------------------------------- */

static gboolean check_config_keys(GKeyFile *conf, GError **err)
{
    if (conf == NULL || !g_key_file_has_group(conf, IPC_GROUP))
        return TRUE;
    g_auto(GStrv) keys = g_key_file_get_keys(conf, IPC_GROUP, NULL, NULL);
    for (char **k = keys; k != NULL && *k != NULL; k++) {
        if (strcmp(*k, IPC_KEY_DIR) != 0) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY,
                        "unknown key \"%s\" in [" IPC_GROUP "]: the only key is \"" IPC_KEY_DIR "\"",
                        *k);
            return FALSE;
        }
    }
    return TRUE;
}

/* $XDG_RUNTIME_DIR is already private to the user and cleaned at logout; /tmp is the
 * fallback for sessions without one (cron, ssh without pam_systemd). */
static char *default_dir(void)
{
    const char *runtime = g_getenv("XDG_RUNTIME_DIR");
    if (runtime != NULL && g_path_is_absolute(runtime))
        return g_build_filename(runtime, "herd", NULL);
    return g_strdup_printf("%s/herd-%u", g_get_tmp_dir(), (unsigned)geteuid());
}

static char *configured_dir(GKeyFile *conf, GError **err)
{
    if (conf == NULL || !g_key_file_has_key(conf, IPC_GROUP, IPC_KEY_DIR, NULL))
        return default_dir();
    g_autofree char *dir = g_key_file_get_string(conf, IPC_GROUP, IPC_KEY_DIR, NULL);
    if (dir == NULL || !g_path_is_absolute(dir)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE,
                    "[" IPC_GROUP "] " IPC_KEY_DIR " = \"%s\" must be an absolute path: peers "
                    "started in other folders resolve the socket path themselves",
                    dir != NULL ? dir : "");
        return NULL;
    }
    return g_canonicalize_filename(dir, NULL);
}

/* ---- the private folder ----------------------------------------------------------------- */

static gboolean create_private_dir(const char *dir, GError **err)
{
    if (g_mkdir_with_parents(dir, 0700) != 0) {
        int e = errno;
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(e), "cannot create ipc folder %s: %s", dir,
                    g_strerror(e));
        return FALSE;
    }
    return TRUE;
}

/* Anyone who can write to the folder could replace a socket file and receive the traffic
 * meant for the controller, so the folder must be ours and closed to everybody else. */
static gboolean check_private_dir(const char *dir, GError **err)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        int e = errno;
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(e), "cannot use ipc folder %s: %s", dir,
                    g_strerror(e));
        return FALSE;
    }
    if (!S_ISDIR(st.st_mode)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_NOT_DIRECTORY, "cannot use ipc folder %s: not a folder",
                    dir);
        return FALSE;
    }
    if (st.st_uid != geteuid()) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                    "refusing ipc folder %s: it belongs to uid %u, not to this user (uid %u)", dir,
                    (unsigned)st.st_uid, (unsigned)geteuid());
        return FALSE;
    }
    if ((st.st_mode & 077) != 0) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                    "refusing ipc folder %s: it is accessible by group or others (mode %04o); "
                    "run chmod 700 on it or set another [" IPC_GROUP "] " IPC_KEY_DIR,
                    dir, (unsigned)(st.st_mode & 07777));
        return FALSE;
    }
    return TRUE;
}

static gboolean prepare_private_dir(const char *dir, GError **err)
{
    gboolean existed = g_file_test(dir, G_FILE_TEST_EXISTS);
    if (!existed && !create_private_dir(dir, err))
        return FALSE;
    /* A folder we just made gets exactly 0700 whatever the umask removed. */
    if (!existed && g_chmod(dir, 0700) != 0) {
        int e = errno;
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(e), "cannot chmod ipc folder %s: %s", dir,
                    g_strerror(e));
        return FALSE;
    }
    return check_private_dir(dir, err);
}

/* ---- endpoints -------------------------------------------------------------------------- */

static gboolean check_path_length(const IpcTransport *t, const char *path, GError **err)
{
    gsize len = strlen(path);
    if (len <= IPC_MAX_PATH)
        return TRUE;
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_FILENAME_TOO_LONG,
                "ipc socket path %s is %" G_GSIZE_FORMAT " bytes long, but a Unix socket path holds "
                "at most %" G_GSIZE_FORMAT " (%s side): set a shorter [" IPC_GROUP "] " IPC_KEY_DIR
                " or cluster id",
                path, len, (gsize)IPC_MAX_PATH, t->side);
    return FALSE;
}

/* Whether something is accepting connections on the socket file at path. */
static gboolean socket_is_live(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return FALSE;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    g_strlcpy(addr.sun_path, path, sizeof addr.sun_path);
    gboolean live = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    close(fd);
    return live;
}

/* libzmq would silently unlink and replace an existing socket file, cutting off a running
 * controller's peers; refuse that, and only clear files nobody listens on. */
static gboolean claim_socket_file(const IpcTransport *t, const char *path, GError **err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return TRUE;
    if (!S_ISSOCK(st.st_mode)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_EXISTS,
                    "cannot bind ipc endpoint %s (%s side): the file exists and is not a socket", path,
                    t->side);
        return FALSE;
    }
    if (socket_is_live(path)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
                    "ipc endpoint %s is already in use by a running controller (%s side): stop it or "
                    "give this controller another cluster id",
                    path, t->side);
        return FALSE;
    }
    if (g_unlink(path) != 0 && errno != ENOENT) {
        int e = errno;
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(e), "cannot remove stale ipc socket %s: %s",
                    path, g_strerror(e));
        return FALSE;
    }
    g_debug("removed stale ipc socket %s", path);
    return TRUE;
}

static int choose_port(IpcTransport *t, int port)
{
    if (port > 0)
        return port;
    if (t->next_port != NULL) {
        int pooled = t->next_port(t->pool);
        if (pooled > 0)
            return pooled;
    }
    return g_atomic_int_add(&ipc_counter, 1) + 1;
}

/* ---- operations ------------------------------------------------------------------------- */

static void ipc_free(IpcTransport *t)
{
    g_free(t->side);
    g_free(t->dir);
    g_free(t->base);
    g_free(t->interface);
    if (t->created != NULL)
        g_ptr_array_unref(t->created);
    g_free(t);
}

static gboolean is_valid_stem(const char *stem)
{
    return *stem != '\0' && strchr(stem, '/') == NULL && strcmp(stem, ".") != 0 && strcmp(stem, "..") != 0;
}

static gpointer ipc_open(const HerdTransportConfig *cfg, GError **err)
{
    if (!check_config_keys(cfg->conf, err))
        return NULL;
    const char *stem = cfg->stem != NULL ? cfg->stem : IPC_DEFAULT_STEM;
    if (!is_valid_stem(stem)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "ipc transport: \"%s\" cannot be part of a socket file name", stem);
        return NULL;
    }
    g_autofree char *dir = configured_dir(cfg->conf, err);
    if (dir == NULL || !prepare_private_dir(dir, err))
        return NULL;
    IpcTransport *t = g_new0(IpcTransport, 1);
    t->side = g_strdup(cfg->side != NULL ? cfg->side : "?");
    t->dir = g_steal_pointer(&dir);
    t->base = g_build_filename(t->dir, stem, NULL);
    t->interface = g_strconcat("ipc://", t->base, NULL);
    t->created = g_ptr_array_new_with_free_func(g_free);
    t->next_port = cfg->next_port;
    t->pool = cfg->pool;
    /* Fail now rather than at the first bind if even ":1" cannot fit. */
    g_autofree char *shortest = g_strconcat(t->base, ":1", NULL);
    if (!check_path_length(t, shortest, err)) {
        ipc_free(t);
        return NULL;
    }
    return t;
}

static const char *ipc_interface(gpointer self)
{
    return ((IpcTransport *)self)->interface;
}

static gboolean ipc_bind(gpointer self, void *zsock, const char *channel, int port, int *bound_port,
                         GError **err)
{
    IpcTransport *t = self;
    if (port < 0) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "cannot bind %s channel \"%s\": port %d is negative", t->side, channel, port);
        return FALSE;
    }
    port = choose_port(t, port);
    g_autofree char *path = g_strdup_printf("%s:%d", t->base, port);
    if (!check_path_length(t, path, err) || !claim_socket_file(t, path, err))
        return FALSE;
    g_autofree char *endpoint = g_strconcat("ipc://", path, NULL);
    if (zmq_bind(zsock, endpoint) != 0) {
        int e = zmq_errno();
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(e), "cannot bind %s channel \"%s\" to %s: %s",
                    t->side, channel, endpoint, zmq_strerror(e));
        return FALSE;
    }
    g_ptr_array_add(t->created, g_steal_pointer(&path));
    *bound_port = port;
    return TRUE;
}

static void ipc_close(gpointer self)
{
    IpcTransport *t = self;
    if (t == NULL)
        return;
    for (guint i = 0; i < t->created->len; i++) {
        const char *path = g_ptr_array_index(t->created, i);
        if (g_unlink(path) != 0 && errno != ENOENT) {
            int e = errno;
            g_warning("cannot remove ipc socket %s: %s", path, g_strerror(e));
        }
    }
    ipc_free(t);
}

static const HerdTransportOps ipc_ops = {
    .open = ipc_open,
    .interface = ipc_interface,
    .bind = ipc_bind,
    .supports = NULL, /* Unix sockets carry every zmq socket type */
    .close = ipc_close,
};

static const HerdPluginDescriptor ipc_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_TRANSPORT,
    .name = "ipc",
    .description = "Unix-domain sockets in a private 0700 folder, for peers on this machine",
    .init = NULL,
    .ops = &ipc_ops,
};

HERD_PLUGIN_DEFINE(ipc_descriptor)
