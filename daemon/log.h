/* herdd — log output: GLib structured logging filtered by level, to stderr or a file. */
#pragma once

#include <glib.h>

/* level: 10 debug, 20 info, 30 warning, 40 error, 50 critical (ipyparallel's numbers).
 * file NULL = stderr. */
gboolean herdd_log_setup(int level, const char *file, GError **err);
void herdd_log_close(void);
