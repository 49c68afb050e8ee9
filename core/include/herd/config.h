/* herd — controller configuration.
 *
 * Sources, lowest precedence first: built-in defaults, the profile's
 * ipcontroller_config.py (simple `c.Class.trait = literal` lines that map to herd settings),
 * herd.conf (profile folder, or --config FILE), then command-line flags.
 * Every source is expressed as keys of one GKeyFile (see docs/configuration.md); the
 * typed HerdConfig is extracted from the merged file, and an unknown group, key or flag is
 * an error naming it.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
    HERD_DB_DICT = 0, /* in-memory, culled */
    HERD_DB_NONE,     /* keep no records */
} HerdDbKind;

typedef struct HerdConfig {
    /* where */
    char *ipython_dir;  /* $IPYTHONDIR or ~/.ipython, or --ipython-dir */
    char *profile;      /* --profile, "default" */
    char *profile_dir;  /* resolved: --profile-dir or <ipython_dir>/profile_<profile> */
    char *config_file;  /* --config, or <profile_dir>/herd.conf when it exists, or NULL */
    char *cluster_id;   /* "" = none */
    /* network */
    char *ip;              /* "127.0.0.1" */
    char *client_ip;       /* defaults to ip */
    char *engine_ip;       /* defaults to ip */
    char *location;        /* hostname by default */
    char *client_transport; /* plugin name, "tcp" */
    char *engine_transport; /* plugin name, "tcp" */
    GArray *ports;          /* int pool from --ports / [controller] ports; may be empty */
    char *ssh_client;       /* written to the client file's "ssh" */
    char *ssh_engine;       /* written to the engine file's "ssh" */
    /* heartbeat and registration */
    int ping_ms;               /* 3000 */
    int heartbeat_misses;      /* 10 */
    double registration_timeout_s; /* 0 = max(30, ping/100) */
    /* files */
    gboolean reuse;
    /* records */
    HerdDbKind db;
    int record_limit;      /* 1024 */
    gint64 size_limit;     /* bytes of buffers, 1 GiB */
    double cull_fraction;  /* 0.1 */
    /* security */
    char *key;               /* NULL = random; "" = signing off */
    char *signature_scheme;  /* "hmac-sha256" */
    char *username;          /* header username; NULL = $USER */
    /* schedulers: plugin name per channel */
    char *mux_scheduler;       /* "mux" */
    char *task_scheduler;      /* "task" */
    char *broadcast_scheduler; /* "broadcast" */
    /* logging */
    int log_level;        /* 10 debug .. 50 critical; default 20 */
    gboolean log_to_file; /* <profile_dir>/log/herdd-<cluster_id>-<pid>.log */
    /* plugins */
    char **plugin_path;   /* extra plugin folders, may be NULL */
    /* The merged key file; plugins read their own groups from it. */
    GKeyFile *keyfile;
    /* Warnings collected while loading (e.g. ignored ipcontroller_config.py lines). */
    GPtrArray *warnings;
} HerdConfig;

/* Parse argv (GOption, plus the ipcontroller spellings: --flag=value and --flag value,
 * --Class.trait=value for the traits herd maps), load the config files, merge, validate.
 * On error returns NULL with err set (message names the bad flag/key/value). argv is not
 * modified. */
HerdConfig *herd_config_load(int argc, char **argv, GError **err);
void herd_config_free(HerdConfig *c);
/* Log level from a number ("10") or a name ("DEBUG", "info", "WARN"...); -1 if invalid. */
int herd_config_parse_log_level(const char *s);
/* Ports list "10101-10120", "10101,10105-10107"; appends to out. */
gboolean herd_config_parse_ports(const char *s, GArray *out, GError **err);
/* The usage text for --help. */
char *herd_config_help(void);

#define HERD_CONFIG_ERROR (herd_config_error_quark())
GQuark herd_config_error_quark(void);
typedef enum {
    HERD_CONFIG_ERROR_UNKNOWN_FLAG,
    HERD_CONFIG_ERROR_UNKNOWN_KEY,
    HERD_CONFIG_ERROR_BAD_VALUE,
    HERD_CONFIG_ERROR_FILE,
    HERD_CONFIG_ERROR_HELP, /* --help / --version was given: message is the text to print, exit 0 */
} HerdConfigError;

G_END_DECLS
