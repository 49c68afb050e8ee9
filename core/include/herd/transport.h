/* herd — transport plugins.
 *
 * A transport turns "bind the socket of channel C on side S" into a bound ZeroMQ endpoint
 * and the integer port that peers append to the side's interface ("<interface>:<port>").
 * An ipyparallel connection file has a single interface for all its channels, so one
 * transport instance serves one side (client file or engine file).
 */
#pragma once

#include <glib.h>
#include <herd/plugin.h>

G_BEGIN_DECLS

typedef struct HerdTransportConfig {
    const char *side;       /* "client" or "engine" */
    const char *ip;         /* --ip: "127.0.0.1", "::1", "*", "0.0.0.0", ... */
    const char *stem;       /* file-name stem unique to this controller, e.g. "herd-<cluster-id>" */
    GKeyFile *conf;         /* whole configuration; the plugin reads group "transport.<name>" */
    /* Port pool from --ports: returns the next port to use, or 0 for "any". May be NULL. */
    int (*next_port)(gpointer pool);
    gpointer pool;
} HerdTransportConfig;

typedef struct HerdTransportOps {
    /* Prepare one side; unknown keys in [transport.<name>] are an error. */
    gpointer (*open)(const HerdTransportConfig *cfg, GError **err);
    /* The connection file's "interface" value, e.g. "tcp://127.0.0.1" or "ipc:///run/x/herd". */
    const char *(*interface)(gpointer self);
    /* Bind zsock for channel. port > 0: exactly that port (--reuse); 0: from the pool or any.
     * On success *bound_port holds the port to advertise. */
    gboolean (*bind)(gpointer self, void *zsock, const char *channel, int port, int *bound_port,
                     GError **err);
    /* Optional: whether this transport can carry a channel of this zmq socket type; NULL = all. */
    gboolean (*supports)(gpointer self, const char *channel, int zmq_socket_type, GError **err);
    /* Release: remove files the transport created. */
    void (*close)(gpointer self);
} HerdTransportOps;

G_END_DECLS
