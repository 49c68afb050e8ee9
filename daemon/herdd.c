/* herdd — the herd controller daemon: hub + schedulers, compatible with ipyparallel 7.x.
 *
 * Exit status: 0 after a clean stop (SIGINT/SIGTERM or a hub shutdown_request), 2 for a
 * command-line or configuration error, 1 when the controller cannot start.
 */
#include "log.h"

#include <herd/config.h>
#include <herd/controller.h>
#include <stdio.h>
#include <unistd.h>

static char *log_file_path(const HerdConfig *cfg)
{
    g_autofree char *name = g_strdup_printf("herdd-%s%s%d.log", cfg->cluster_id ? cfg->cluster_id : "",
                                            cfg->cluster_id && *cfg->cluster_id ? "-" : "", (int)getpid());
    return g_build_filename(cfg->profile_dir, "log", name, NULL);
}

int main(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    HerdConfig *cfg = herd_config_load(argc, argv, &err);
    if (!cfg) {
        if (g_error_matches(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_HELP)) {
            printf("%s\n", err->message);
            return 0;
        }
        fprintf(stderr, "herdd: %s\n", err->message);
        fprintf(stderr, "herdd: try 'herdd --help'\n");
        return 2;
    }
    g_autofree char *log_file = cfg->log_to_file ? log_file_path(cfg) : NULL;
    if (log_file)
        g_mkdir_with_parents(cfg->profile_dir, 0700);
    if (!herdd_log_setup(cfg->log_level, log_file, &err)) {
        fprintf(stderr, "herdd: %s\n", err->message);
        herd_config_free(cfg);
        return 2;
    }
    for (guint i = 0; cfg->warnings && i < cfg->warnings->len; i++)
        g_warning("%s", (const char *)cfg->warnings->pdata[i]);

    HerdController *ctl = herd_controller_new(cfg, &err);
    if (!ctl) {
        g_critical("cannot start: %s", err->message);
        if (log_file)
            fprintf(stderr, "herdd: cannot start: %s\n", err->message);
        herd_config_free(cfg);
        herdd_log_close();
        return 1;
    }
    int status = herd_controller_run(ctl);
    herd_controller_free(ctl);
    g_message("stopped");
    herd_config_free(cfg);
    herdd_log_close();
    return status;
}
