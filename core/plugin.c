/* herd — the plugin loader.
 *
 * Finds herd-<kind>-<name>.so on a search path, opens it with GModule (local binding, so
 * two plugins may export the same symbol names), and checks the descriptor it returns
 * before anything else in the core touches it. Every refusal names the file, because the
 * person reading the error is usually an operator who dropped a .so in the wrong folder.
 */
#include "herd-build-config.h"

#include <herd/plugin.h>

#include <gmodule.h>
#include <stdlib.h>
#include <string.h>

struct HerdPlugin {
    GModule *module;
    const HerdPluginDescriptor *descriptor;
    char *path;
};

G_DEFINE_QUARK(herd-plugin-error-quark, herd_plugin_error)

const char *herd_plugin_kind_str(HerdPluginKind kind)
{
    switch (kind) {
    case HERD_PLUGIN_TRANSPORT:
        return "transport";
    case HERD_PLUGIN_SCHEDULER:
        return "scheduler";
    }
    return "unknown";
}

char *herd_plugin_filename(HerdPluginKind kind, const char *name)
{
    return g_strdup_printf("herd-%s-%s." G_MODULE_SUFFIX, herd_plugin_kind_str(kind), name);
}

/* ---- search path ------------------------------------------------------------------------ */

static void append_colon_list(GPtrArray *dirs, const char *list)
{
    if (list == NULL)
        return;
    g_auto(GStrv) parts = g_strsplit(list, G_SEARCHPATH_SEPARATOR_S, -1);
    for (char **p = parts; *p != NULL; p++) {
        if (**p != '\0') /* "a::b" or a trailing colon: skip, never mean "cwd" */
            g_ptr_array_add(dirs, g_strdup(*p));
    }
}

/* Resolve symlinks so that a build root reached through a symlink still matches
 * /proc/self/exe, which the kernel always reports resolved. */
static char *resolved_path(const char *path)
{
    char *real = realpath(path, NULL);
    if (real == NULL)
        return g_strdup(path);
    char *copy = g_strdup(real);
    free(real);
    return copy;
}

/* An uninstalled program (the daemon run from the build tree, or a unit test) must load the
 * plugins it was built with, not whatever an older `ninja install` left in the prefix. */
static gboolean running_from_build_tree(void)
{
    g_autofree char *exe = g_file_read_link("/proc/self/exe", NULL);
    if (exe == NULL)
        return FALSE;
    g_autofree char *root = resolved_path(HERD_BUILD_ROOT);
    gsize len = strlen(root);
    return strncmp(exe, root, len) == 0 && exe[len] == G_DIR_SEPARATOR;
}

char **herd_plugin_search_path(const char *const *extra)
{
    GPtrArray *dirs = g_ptr_array_new();
    for (const char *const *e = extra; e != NULL && *e != NULL; e++) {
        if (**e != '\0')
            g_ptr_array_add(dirs, g_strdup(*e));
    }
    append_colon_list(dirs, g_getenv("HERD_PLUGIN_PATH"));
    if (running_from_build_tree())
        append_colon_list(dirs, HERD_BUILD_PLUGIN_DIRS);
    else
        g_ptr_array_add(dirs, g_strdup(HERD_PLUGIN_INSTALL_DIR));
    g_ptr_array_add(dirs, NULL);
    return (char **)g_ptr_array_free(dirs, FALSE);
}

/* ---- loading ---------------------------------------------------------------------------- */

static gboolean is_valid_name(const char *name)
{
    return name != NULL && *name != '\0' && strchr(name, G_DIR_SEPARATOR) == NULL;
}

static gboolean check_abi(const HerdPluginDescriptor *d, const char *path, GError **err)
{
    if (d->abi_major != HERD_PLUGIN_ABI_MAJOR) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_ABI,
                    "plugin %s was built for plugin ABI %u.%u but this herd provides ABI %d.%d "
                    "(the major version must match): rebuild it against this herd's headers",
                    path, d->abi_major, d->abi_minor, HERD_PLUGIN_ABI_MAJOR, HERD_PLUGIN_ABI_MINOR);
        return FALSE;
    }
    if (d->abi_minor > HERD_PLUGIN_ABI_MINOR) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_ABI,
                    "plugin %s needs plugin ABI %u.%u, newer than this herd's ABI %d.%d: "
                    "upgrade herd or rebuild the plugin against this herd's headers",
                    path, d->abi_major, d->abi_minor, HERD_PLUGIN_ABI_MAJOR, HERD_PLUGIN_ABI_MINOR);
        return FALSE;
    }
    return TRUE;
}

static gboolean check_identity(const HerdPluginDescriptor *d, const char *path, HerdPluginKind kind,
                               const char *name, GError **err)
{
    if (d->kind != kind) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_KIND,
                    "plugin %s is a %s plugin (kind %d), but a %s plugin was requested", path,
                    herd_plugin_kind_str(d->kind), (int)d->kind, herd_plugin_kind_str(kind));
        return FALSE;
    }
    if (d->name == NULL || strcmp(d->name, name) != 0) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NAME,
                    "plugin %s calls itself \"%s\", but \"%s\" was requested: "
                    "the file name and the descriptor's name must agree",
                    path, d->name != NULL ? d->name : "(null)", name);
        return FALSE;
    }
    if (d->ops == NULL) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_SYMBOL,
                    "plugin %s has no operations table (its descriptor's ops is NULL)", path);
        return FALSE;
    }
    return TRUE;
}

static gboolean run_init(const HerdPluginDescriptor *d, const char *path, GError **err)
{
    if (d->init == NULL)
        return TRUE;
    g_autoptr(GError) init_err = NULL;
    if (d->init(&init_err))
        return TRUE;
    g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_INIT, "plugin %s failed to initialise: %s",
                path, init_err != NULL ? init_err->message : "(the plugin gave no reason)");
    return FALSE;
}

/* Everything after a successful g_module_open; on FALSE the caller closes the module. */
static const HerdPluginDescriptor *describe_module(GModule *module, const char *path,
                                                   HerdPluginKind kind, const char *name,
                                                   GError **err)
{
    gpointer symbol = NULL;
    if (!g_module_symbol(module, HERD_PLUGIN_ENTRY, &symbol) || symbol == NULL) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_SYMBOL,
                    "plugin %s does not export the entry symbol %s() (is it a herd plugin? "
                    "declare it with HERD_PLUGIN_DEFINE)",
                    path, HERD_PLUGIN_ENTRY);
        return NULL;
    }
    HerdPluginEntryFn entry = (HerdPluginEntryFn)symbol;
    const HerdPluginDescriptor *d = entry();
    if (d == NULL) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_SYMBOL,
                    "plugin %s: %s() returned no descriptor (NULL)", path, HERD_PLUGIN_ENTRY);
        return NULL;
    }
    if (!check_abi(d, path, err) || !check_identity(d, path, kind, name, err) ||
        !run_init(d, path, err))
        return NULL;
    return d;
}

HerdPlugin *herd_plugin_load_file(const char *path, HerdPluginKind kind, const char *name, GError **err)
{
    g_return_val_if_fail(path != NULL, NULL);
    if (!is_valid_name(name)) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NAME,
                    "invalid %s plugin name \"%s\" for %s: a name is a non-empty word without '/'",
                    herd_plugin_kind_str(kind), name != NULL ? name : "(null)", path);
        return NULL;
    }
    if (!g_module_supported()) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_OPEN,
                    "cannot open plugin %s: this platform cannot load modules", path);
        return NULL;
    }
    /* BIND_LOCAL: a plugin's symbols never satisfy another plugin's references. */
    GModule *module = g_module_open(path, G_MODULE_BIND_LOCAL);
    if (module == NULL) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_OPEN, "cannot open plugin %s: %s", path,
                    g_module_error());
        return NULL;
    }
    const HerdPluginDescriptor *d = describe_module(module, path, kind, name, err);
    if (d == NULL) {
        g_module_close(module);
        return NULL;
    }
    HerdPlugin *p = g_new0(HerdPlugin, 1);
    p->module = module;
    p->descriptor = d;
    p->path = g_strdup(path);
    g_debug("loaded %s plugin \"%s\" (ABI %u.%u) from %s", herd_plugin_kind_str(kind), name,
            d->abi_major, d->abi_minor, path);
    return p;
}

HerdPlugin *herd_plugin_load(HerdPluginKind kind, const char *name, const char *const *search_path,
                             GError **err)
{
    if (!is_valid_name(name)) {
        g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NAME,
                    "invalid %s plugin name \"%s\": a name is a non-empty word without '/'",
                    herd_plugin_kind_str(kind), name != NULL ? name : "(null)");
        return NULL;
    }
    g_auto(GStrv) default_path = NULL;
    if (search_path == NULL) {
        default_path = herd_plugin_search_path(NULL);
        search_path = (const char *const *)default_path;
    }
    g_autofree char *filename = herd_plugin_filename(kind, name);
    /* The first file found wins, even if it is refused: silently falling back to another
     * copy further down the path would hide the operator's mistake. */
    for (const char *const *dir = search_path; *dir != NULL; dir++) {
        g_autofree char *candidate = g_build_filename(*dir, filename, NULL);
        if (g_file_test(candidate, G_FILE_TEST_EXISTS))
            return herd_plugin_load_file(candidate, kind, name, err);
    }
    g_autofree char *searched = g_strjoinv(", ", (char **)search_path);
    g_set_error(err, HERD_PLUGIN_ERROR, HERD_PLUGIN_ERROR_NOT_FOUND,
                "%s plugin \"%s\" not found: no file %s in any of the folders searched (%s); "
                "add its folder to the configured plugin path or to $HERD_PLUGIN_PATH",
                herd_plugin_kind_str(kind), name, filename, *searched != '\0' ? searched : "none");
    return NULL;
}

const HerdPluginDescriptor *herd_plugin_descriptor(const HerdPlugin *p)
{
    g_return_val_if_fail(p != NULL, NULL);
    return p->descriptor;
}

const char *herd_plugin_path(const HerdPlugin *p)
{
    g_return_val_if_fail(p != NULL, NULL);
    return p->path;
}

void herd_plugin_unload(HerdPlugin *p)
{
    if (p == NULL)
        return;
    g_module_close(p->module);
    g_free(p->path);
    g_free(p);
}
