/* herd — the controller: hub + schedulers in one process.
 *
 * herd_controller_new binds every socket through the configured transport plugins, loads
 * the scheduler plugins, and only then writes the connection files. herd_controller_run
 * serves until a hub shutdown_request, SIGINT/SIGTERM, or herd_controller_stop.
 */
#pragma once

#include <glib.h>
#include <herd/config.h>
#include <herd/loop.h>

G_BEGIN_DECLS

typedef struct HerdController HerdController;

HerdController *herd_controller_new(HerdConfig *cfg, GError **err);
/* Returns the exit status (0 after a clean stop). */
int herd_controller_run(HerdController *ctl);
void herd_controller_stop(HerdController *ctl, int status);
/* Closes sockets, unloads plugins and removes the connection files (unless reuse). */
void herd_controller_free(HerdController *ctl);
HerdLoop *herd_controller_loop(HerdController *ctl);
/* Paths of the connection files written (valid until free). */
const char *herd_controller_client_file(HerdController *ctl);
const char *herd_controller_engine_file(HerdController *ctl);

G_END_DECLS
