/* herd — the tcp transport plugin.
 *
 * One instance serves one side (client file or engine file). It advertises
 * "tcp://<ip>" and binds every channel at "tcp://<ip>:<port>", so a Python peer's
 * `interface + ":%i" % port` reaches it. IPv6 addresses are written in brackets
 * ("tcp://[::1]"): libzmq parses both forms, but only the bracketed one keeps
 * "<interface>:<port>" unambiguous for anyone who splits it at the last colon.
 */
#include <herd/config.h>
#include <herd/transport.h>

#include <errno.h>
#include <gio/gio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define TCP_GROUP "transport.tcp"
#define TCP_DEFAULT_IP "127.0.0.1"

typedef struct TcpTransport {
    char *side;
    char *host;      /* as it appears in URLs: "127.0.0.1", "*", "[::1]" */
    gboolean ipv6;   /* the socket needs ZMQ_IPV6 to bind host */
    char *interface; /* "tcp://" + host */
    int (*next_port)(gpointer pool);
    gpointer pool;
} TcpTransport;

/* [transport.tcp] has no keys yet; anything there is a typo the operator should hear about. */
static gboolean check_config_group(GKeyFile *conf, GError **err)
{
    if (conf == NULL || !g_key_file_has_group(conf, TCP_GROUP))
        return TRUE;
    g_auto(GStrv) keys = g_key_file_get_keys(conf, TCP_GROUP, NULL, NULL);
    if (keys != NULL && keys[0] != NULL) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY,
                    "unknown key \"%s\" in [" TCP_GROUP "]: the tcp transport has no settings",
                    keys[0]);
        return FALSE;
    }
    return TRUE;
}

static gboolean is_plain_ip_text(const char *ip)
{
    for (const char *c = ip; *c != '\0'; c++) {
        if (g_ascii_isspace(*c) || *c == '/' || *c == '[' || *c == ']')
            return FALSE;
    }
    return TRUE;
}

/* Turn --ip into the host part of a URL. "*" and "0.0.0.0" stay literal, as ipyparallel
 * writes them, so Python peers apply their usual location-based substitution. */
static gboolean parse_ip(TcpTransport *t, const char *ip, GError **err)
{
    if (ip == NULL || *ip == '\0')
        ip = TCP_DEFAULT_IP;
    g_autofree char *bare = NULL;
    gsize len = strlen(ip);
    if (len >= 2 && ip[0] == '[' && ip[len - 1] == ']')
        bare = g_strndup(ip + 1, len - 2);
    else
        bare = g_strdup(ip);
    if (*bare == '\0' || !is_plain_ip_text(bare)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "tcp transport (%s side): \"%s\" is not an IP address or interface to bind", t->side,
                    ip);
        return FALSE;
    }
    t->ipv6 = strchr(bare, ':') != NULL;
    t->host = t->ipv6 ? g_strdup_printf("[%s]", bare) : g_strdup(bare);
    t->interface = g_strdup_printf("tcp://%s", t->host);
    return TRUE;
}

static void tcp_free(TcpTransport *t)
{
    g_free(t->side);
    g_free(t->host);
    g_free(t->interface);
    g_free(t);
}

static gpointer tcp_open(const HerdTransportConfig *cfg, GError **err)
{
    if (!check_config_group(cfg->conf, err))
        return NULL;
    TcpTransport *t = g_new0(TcpTransport, 1);
    t->side = g_strdup(cfg->side != NULL ? cfg->side : "?");
    t->next_port = cfg->next_port;
    t->pool = cfg->pool;
    if (!parse_ip(t, cfg->ip, err)) {
        tcp_free(t);
        return NULL;
    }
    return t;
}

static const char *tcp_interface(gpointer self)
{
    return ((TcpTransport *)self)->interface;
}

/* The port libzmq actually bound, from ZMQ_LAST_ENDPOINT ("tcp://0.0.0.0:41234"). */
static int read_bound_port(void *zsock)
{
    char endpoint[256];
    size_t size = sizeof endpoint;
    if (zmq_getsockopt(zsock, ZMQ_LAST_ENDPOINT, endpoint, &size) != 0)
        return -1;
    const char *colon = strrchr(endpoint, ':');
    if (colon == NULL)
        return -1;
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    return (end != colon + 1 && *end == '\0' && port > 0 && port <= 65535) ? (int)port : -1;
}

static void set_bind_error(GError **err, const TcpTransport *t, const char *channel,
                           const char *endpoint, gboolean from_pool, int zmq_errno)
{
    if (zmq_errno == EADDRINUSE) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
                    "cannot bind %s channel \"%s\" to %s: the port is already in use%s", t->side,
                    channel, endpoint,
                    from_pool ? " (it came from the --ports pool: choose a free range)"
                              : " (another process is listening on it)");
        return;
    }
    g_set_error(err, G_IO_ERROR, g_io_error_from_errno(zmq_errno), "cannot bind %s channel \"%s\" to %s: %s",
                t->side, channel, endpoint, zmq_strerror(zmq_errno));
}

static gboolean tcp_bind(gpointer self, void *zsock, const char *channel, int port, int *bound_port,
                         GError **err)
{
    TcpTransport *t = self;
    if (port < 0 || port > 65535) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "cannot bind %s channel \"%s\": port %d is outside 0..65535", t->side, channel, port);
        return FALSE;
    }
    gboolean from_pool = FALSE;
    if (port == 0 && t->next_port != NULL) {
        port = t->next_port(t->pool);
        from_pool = port > 0;
    }
    if (t->ipv6) {
        int on = 1;
        zmq_setsockopt(zsock, ZMQ_IPV6, &on, sizeof on);
    }
    g_autofree char *endpoint =
        port > 0 ? g_strdup_printf("tcp://%s:%d", t->host, port) : g_strdup_printf("tcp://%s:*", t->host);
    if (zmq_bind(zsock, endpoint) != 0) {
        set_bind_error(err, t, channel, endpoint, from_pool, zmq_errno());
        return FALSE;
    }
    int actual = read_bound_port(zsock);
    if (actual <= 0) {
        zmq_unbind(zsock, endpoint);
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "bound %s channel \"%s\" to %s but could not read back the port", t->side, channel,
                    endpoint);
        return FALSE;
    }
    *bound_port = actual;
    return TRUE;
}

static void tcp_close(gpointer self)
{
    if (self != NULL)
        tcp_free(self);
}

static const HerdTransportOps tcp_ops = {
    .open = tcp_open,
    .interface = tcp_interface,
    .bind = tcp_bind,
    .supports = NULL, /* tcp carries every socket type */
    .close = tcp_close,
};

static const HerdPluginDescriptor tcp_descriptor = {
    .abi_major = HERD_PLUGIN_ABI_MAJOR,
    .abi_minor = HERD_PLUGIN_ABI_MINOR,
    .kind = HERD_PLUGIN_TRANSPORT,
    .name = "tcp",
    .description = "TCP on one IPv4/IPv6 address, ports from --ports or chosen by the kernel",
    .init = NULL,
    .ops = &tcp_ops,
};

HERD_PLUGIN_DEFINE(tcp_descriptor)
