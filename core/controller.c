/* herd — controller lifecycle: key, plugins, sockets, connection files, signals, shutdown. */
#define G_LOG_DOMAIN "herd"
#include "controller-private.h"
#include "herd-build-config.h"

#include <glib/gstdio.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void on_signal(int fd, gpointer data)
{
    HerdController *ctl = data;
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof si) != sizeof si)
        return;
    g_message("received %s: stopping", strsignal((int)si.ssi_signo));
    herd_loop_quit(ctl->loop, 0);
}

static gboolean watch_signals(HerdController *ctl, GError **err)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0 || (ctl->signal_fd = signalfd(-1, &set, SFD_CLOEXEC)) < 0) {
        g_set_error(err, G_IO_ERROR, g_io_error_from_errno(errno), "cannot watch signals: %s", g_strerror(errno));
        return FALSE;
    }
    herd_loop_add_fd(ctl->loop, ctl->signal_fd, on_signal, ctl);
    return TRUE;
}

/* --reuse: take key and ports from existing files; any problem means a fresh start. */
static void load_reused_files(HerdController *ctl)
{
    if (!g_file_test(ctl->client_file, G_FILE_TEST_EXISTS) || !g_file_test(ctl->engine_file, G_FILE_TEST_EXISTS))
        return;
    g_autoptr(GError) err = NULL;
    HerdConnInfo client = { 0 }, engine = { 0 };
    if (!herd_connfile_read(ctl->client_file, "client", &client, &err) ||
        !herd_connfile_read(ctl->engine_file, "engine", &engine, &err) || g_strcmp0(client.key, engine.key) != 0) {
        g_warning("--reuse: cannot reuse the connection files (%s): starting fresh",
                  err ? err->message : "client and engine keys differ");
        herd_conninfo_clear(&client);
        herd_conninfo_clear(&engine);
        return;
    }
    ctl->client_info.ports = client.ports;
    ctl->engine_info.ports = engine.ports;
    g_free(ctl->client_info.key);
    ctl->client_info.key = g_strdup(client.key);
    herd_conninfo_clear(&client);
    herd_conninfo_clear(&engine);
    ctl->files_reused = TRUE;
    g_message("--reuse: reusing the key and ports of %s", ctl->client_file);
}

static void fill_conninfo(HerdController *ctl, HerdConnInfo *ci, const char *ssh)
{
    HerdConfig *cfg = ctl->cfg;
    g_free(ci->ssh);
    ci->ssh = g_strdup(ssh ? ssh : "");
    if (ci != &ctl->client_info) {
        g_free(ci->key);
        ci->key = g_strdup(ctl->client_info.key);
    }
    g_free(ci->location);
    ci->location = g_strdup(cfg->location);
    g_free(ci->signature_scheme);
    ci->signature_scheme = g_strdup(cfg->signature_scheme ? cfg->signature_scheme : "hmac-sha256");
    ci->curve_serverkey = NULL;
}

static gboolean write_files(HerdController *ctl, GError **err)
{
    fill_conninfo(ctl, &ctl->client_info, ctl->cfg->ssh_client);
    fill_conninfo(ctl, &ctl->engine_info, ctl->cfg->ssh_engine);
    /* engine file first: launchers wait for both, clients only for theirs */
    if (!herd_connfile_write(ctl->engine_file, "engine", &ctl->engine_info, err) ||
        !herd_connfile_write(ctl->client_file, "client", &ctl->client_info, err))
        return FALSE;
    ctl->files_written = TRUE;
    return TRUE;
}

HerdController *herd_controller_new(HerdConfig *cfg, GError **err)
{
    HerdController *ctl = g_new0(HerdController, 1);
    ctl->cfg = cfg;
    ctl->signal_fd = -1;
    ctl->loop = herd_loop_new();
    ctl->plugin_path = herd_plugin_search_path((const char *const *)cfg->plugin_path);
    ctl->client_file = herd_connfile_path(cfg->profile_dir, cfg->cluster_id, "client");
    ctl->engine_file = herd_connfile_path(cfg->profile_dir, cfg->cluster_id, "engine");
    g_autofree char *log_dir = g_build_filename(cfg->profile_dir, "log", NULL);
    g_autofree char *state_name = g_strdup_printf("engines%s.json", cfg->cluster_id ? cfg->cluster_id : "");
    ctl->engine_state_file = g_build_filename(log_dir, state_name, NULL);

    if (!herd_profile_dir_ensure(cfg->profile_dir, err))
        goto fail;
    if (cfg->reuse)
        load_reused_files(ctl);
    if (!ctl->client_info.key)
        ctl->client_info.key = cfg->key ? g_strdup(cfg->key) : herd_new_uuid();
    ctl->session = herd_session_new(ctl->client_info.key, cfg->signature_scheme, cfg->username, err);
    if (!ctl->session)
        goto fail;
    if (!*ctl->client_info.key)
        g_warning("message signing is disabled (empty key): anyone who can reach the ports can send work");

    ctl->zctx = zmq_ctx_new();
    herd_hub_init(ctl);
    if (!herd_router_bind_all(ctl, err) || !herd_router_load_schedulers(ctl, err) || !watch_signals(ctl, err))
        goto fail;
    if (!ctl->files_reused && !write_files(ctl, err))
        goto fail;
    if (ctl->files_reused)
        ctl->files_written = TRUE;
    herd_hub_start(ctl);
    g_message("herdd %s ready: client file %s, engine file %s", HERD_VERSION, ctl->client_file,
              ctl->engine_file);
    return ctl;
fail:
    herd_controller_free(ctl);
    return NULL;
}

int herd_controller_run(HerdController *ctl)
{
    return herd_loop_run(ctl->loop);
}

void herd_controller_stop(HerdController *ctl, int status)
{
    herd_loop_quit(ctl->loop, status);
}

HerdLoop *herd_controller_loop(HerdController *ctl)
{
    return ctl->loop;
}

const char *herd_controller_client_file(HerdController *ctl)
{
    return ctl->client_file;
}

const char *herd_controller_engine_file(HerdController *ctl)
{
    return ctl->engine_file;
}

void herd_controller_free(HerdController *ctl)
{
    if (!ctl)
        return;
    herd_hub_flush(ctl);
    if (ctl->files_written && !ctl->cfg->reuse) {
        g_unlink(ctl->client_file);
        g_unlink(ctl->engine_file);
    }
    herd_router_close(ctl);
    herd_hub_free(ctl);
    if (ctl->zctx)
        zmq_ctx_term(ctl->zctx);
    if (ctl->signal_fd >= 0)
        close(ctl->signal_fd);
    herd_session_free(ctl->session);
    herd_conninfo_clear(&ctl->client_info);
    herd_conninfo_clear(&ctl->engine_info);
    g_strfreev(ctl->plugin_path);
    g_free(ctl->client_file);
    g_free(ctl->engine_file);
    g_free(ctl->engine_state_file);
    herd_loop_free(ctl->loop);
    g_free(ctl);
}
