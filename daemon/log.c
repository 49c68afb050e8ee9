/* herdd — log output: one line per record, "time herdd[pid] LEVEL: message". */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int threshold = 20;
static FILE *out;

/* GLib levels mapped onto ipyparallel's numeric levels. */
static int numeric_level(GLogLevelFlags level)
{
    if (level & G_LOG_LEVEL_ERROR)
        return 50;
    if (level & G_LOG_LEVEL_CRITICAL)
        return 40;
    if (level & G_LOG_LEVEL_WARNING)
        return 30;
    if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO))
        return 20;
    return 10;
}

static const char *level_name(GLogLevelFlags level)
{
    if (level & G_LOG_LEVEL_ERROR)
        return "ERROR";
    if (level & G_LOG_LEVEL_CRITICAL)
        return "CRITICAL";
    if (level & G_LOG_LEVEL_WARNING)
        return "WARNING";
    if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO))
        return "INFO";
    return "DEBUG";
}

static GLogWriterOutput write_record(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
    (void)data;
    if (numeric_level(level) < threshold)
        return G_LOG_WRITER_HANDLED;
    const char *message = NULL, *domain = NULL;
    for (gsize i = 0; i < n_fields; i++) {
        if (g_strcmp0(fields[i].key, "MESSAGE") == 0)
            message = fields[i].value;
        else if (g_strcmp0(fields[i].key, "GLIB_DOMAIN") == 0)
            domain = fields[i].value;
    }
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *stamp = g_date_time_format(now, "%Y-%m-%d %H:%M:%S.%f");
    if (stamp && strlen(stamp) > 23)
        stamp[23] = '\0'; /* milliseconds */
    FILE *f = out ? out : stderr;
    fprintf(f, "%s herdd[%d] %s %s: %s\n", stamp ? stamp : "", (int)getpid(), level_name(level),
            domain ? domain : "herdd", message ? message : "");
    fflush(f);
    return G_LOG_WRITER_HANDLED;
}

gboolean herdd_log_setup(int level, const char *file, GError **err)
{
    threshold = level;
    if (file) {
        out = fopen(file, "a");
        if (!out) {
            g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "cannot open log file %s: %s", file,
                        g_strerror(errno));
            return FALSE;
        }
    }
    g_log_set_writer_func(write_record, NULL, NULL);
    return TRUE;
}

void herdd_log_close(void)
{
    if (out)
        fclose(out);
    out = NULL;
}
