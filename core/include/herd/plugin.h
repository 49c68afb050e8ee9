/* herd — the plugin ABI.
 *
 * Every plugin is a shared object exporting one function named HERD_PLUGIN_ENTRY that
 * returns a pointer to a const HerdPluginDescriptor. The loader checks the ABI major
 * (must equal) and minor (must not exceed the core's), the kind, and the name, then calls
 * init (if any). A plugin that fails any of these is refused with an error naming its file.
 */
#pragma once

#include <glib.h>
#include <gmodule.h> /* G_MODULE_EXPORT, used by HERD_PLUGIN_DEFINE */

G_BEGIN_DECLS

#define HERD_PLUGIN_ABI_MAJOR 1
#define HERD_PLUGIN_ABI_MINOR 1
#define HERD_PLUGIN_ENTRY "herd_plugin_entry"

typedef enum {
    HERD_PLUGIN_TRANSPORT = 1,
    HERD_PLUGIN_SCHEDULER = 2,
} HerdPluginKind;

typedef struct HerdPluginDescriptor {
    guint16 abi_major;
    guint16 abi_minor;
    HerdPluginKind kind;
    const char *name;        /* must equal the name the config asks for */
    const char *description; /* one line, shown by `herdd --list-plugins` */
    /* Optional: called once after loading; FALSE (with err set) refuses the plugin. */
    gboolean (*init)(GError **err);
    /* HerdTransportOps* or HerdSchedulerOps*, by kind. */
    const void *ops;
} HerdPluginDescriptor;

typedef const HerdPluginDescriptor *(*HerdPluginEntryFn)(void);

/* Declare the entry point in a plugin: HERD_PLUGIN_DEFINE(my_descriptor); */
#define HERD_PLUGIN_DEFINE(descriptor)                                                             \
    G_MODULE_EXPORT const HerdPluginDescriptor *herd_plugin_entry(void);                           \
    G_MODULE_EXPORT const HerdPluginDescriptor *herd_plugin_entry(void) { return &(descriptor); }

/* File name of a plugin: herd-<kind>-<name>.so, kind "transport" or "scheduler". */
char *herd_plugin_filename(HerdPluginKind kind, const char *name);
const char *herd_plugin_kind_str(HerdPluginKind kind);

typedef struct HerdPlugin HerdPlugin;

/* The directories searched, in order: extra (from the config's plugin_path), then
 * $HERD_PLUGIN_PATH (colon-separated), then the build tree when the running program is
 * uninstalled, else the install folder. Caller frees with g_strfreev. */
char **herd_plugin_search_path(const char *const *extra);
/* Find and load herd-<kind>-<name>.so from the search path. */
HerdPlugin *herd_plugin_load(HerdPluginKind kind, const char *name, const char *const *search_path,
                             GError **err);
/* Load one file directly (used by tests and by explicit paths in the config). */
HerdPlugin *herd_plugin_load_file(const char *path, HerdPluginKind kind, const char *name, GError **err);
const HerdPluginDescriptor *herd_plugin_descriptor(const HerdPlugin *p);
const char *herd_plugin_path(const HerdPlugin *p);
void herd_plugin_unload(HerdPlugin *p);

#define HERD_PLUGIN_ERROR (herd_plugin_error_quark())
GQuark herd_plugin_error_quark(void);
typedef enum {
    HERD_PLUGIN_ERROR_NOT_FOUND,
    HERD_PLUGIN_ERROR_OPEN,
    HERD_PLUGIN_ERROR_SYMBOL,
    HERD_PLUGIN_ERROR_ABI,
    HERD_PLUGIN_ERROR_KIND,
    HERD_PLUGIN_ERROR_NAME,
    HERD_PLUGIN_ERROR_INIT,
} HerdPluginError;

G_END_DECLS
