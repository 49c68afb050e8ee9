/* herd — ipyparallel connection files.
 *
 * <profile_dir>/security/ipcontroller[-<cluster_id>]-{client,engine}.json, mode 0600,
 * written atomically (temporary name, then rename) with exactly the fields ipyparallel
 * reads. See docs/files.md.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct HerdConnPorts {
    int registration;
    int control;
    int mux;
    int task;
    int iopub;
    int notification; /* client file only */
    int broadcast;    /* client side: single port */
    int hb_ping;      /* engine file only */
    int hb_pong;      /* engine file only */
    int broadcast_engine[8]; /* engine side leaves */
    int n_broadcast_engine;
} HerdConnPorts;

typedef struct HerdConnInfo {
    char *interface;   /* "tcp://127.0.0.1" */
    char *ssh;         /* "" */
    char *key;
    char *curve_serverkey; /* NULL -> JSON null */
    char *location;
    char *signature_scheme; /* "hmac-sha256" */
    char *task_scheme;      /* client file only, "leastload" */
    HerdConnPorts ports;
} HerdConnInfo;

void herd_conninfo_clear(HerdConnInfo *ci);

/* Full paths of the two files (caller frees). */
char *herd_connfile_path(const char *profile_dir, const char *cluster_id, const char *side);
/* Create <profile_dir> with security/ (0700), pid/ (0700), log/, startup/. */
gboolean herd_profile_dir_ensure(const char *profile_dir, GError **err);
/* Write one file ("client" or "engine") atomically, mode 0600. */
gboolean herd_connfile_write(const char *path, const char *side, const HerdConnInfo *ci, GError **err);
/* Read one file back (for --reuse and tests). */
gboolean herd_connfile_read(const char *path, const char *side, HerdConnInfo *ci, GError **err);

/* For the controller's peers, the native client and `herd engine`. */
/* herd_connfile_read, then a warning naming `who` if the file asks for an SSH tunnel: the
 * native peers connect directly. */
gboolean herd_connfile_read_peer(const char *path, const char *side, const char *who, HerdConnInfo *ci,
                                 GError **err);
/* When the file names a CurveZMQ server key, make zsock a Curve client of it with a fresh
 * key pair. Call before connecting. */
void herd_conninfo_secure_socket(const HerdConnInfo *ci, void *zsock);
/* Connect zsock to port on the file's interface; a bind-all interface (host "*" or
 * 0.0.0.0) is reached on loopback (spec 3.8). */
gboolean herd_conninfo_connect(const HerdConnInfo *ci, void *zsock, int port, GError **err);

G_END_DECLS
