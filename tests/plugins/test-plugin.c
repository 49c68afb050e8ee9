/* herd — plugins built only for tests/unit/test-plugin.c.
 *
 * One source, compiled once per variant: each HERD_TEST_* macro breaks the plugin in
 * exactly one way the loader must refuse. HERD_TEST_NAME is the name in the descriptor
 * and HERD_TEST_GOOD builds a plugin the loader must accept.
 */
#include <herd/transport.h>

#include <gio/gio.h>

#ifndef HERD_TEST_NAME
#error "HERD_TEST_NAME must name the plugin"
#endif

#if defined(HERD_TEST_ABI_MAJOR)
#define TEST_ABI_MAJOR (HERD_PLUGIN_ABI_MAJOR + 1)
#else
#define TEST_ABI_MAJOR HERD_PLUGIN_ABI_MAJOR
#endif

#if defined(HERD_TEST_NEWER_MINOR)
#define TEST_ABI_MINOR (HERD_PLUGIN_ABI_MINOR + 1)
#else
#define TEST_ABI_MINOR HERD_PLUGIN_ABI_MINOR
#endif

#if defined(HERD_TEST_WRONG_KIND)
#define TEST_KIND HERD_PLUGIN_SCHEDULER
#else
#define TEST_KIND HERD_PLUGIN_TRANSPORT
#endif

static gpointer test_open(const HerdTransportConfig *cfg, GError **err)
{
    (void)cfg;
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "test plugin: cannot open");
    return NULL;
}

static const char *test_interface(gpointer self)
{
    (void)self;
    return "test://";
}

static gboolean test_bind(gpointer self, void *zsock, const char *channel, int port, int *bound_port,
                          GError **err)
{
    (void)self, (void)zsock, (void)channel, (void)port, (void)bound_port;
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "test plugin: cannot bind");
    return FALSE;
}

static void test_close(gpointer self)
{
    (void)self;
}

static const HerdTransportOps test_ops = {
    .open = test_open,
    .interface = test_interface,
    .bind = test_bind,
    .close = test_close,
};

#if defined(HERD_TEST_FAILING_INIT)
static gboolean test_init(GError **err)
{
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "the test plugin refuses to start");
    return FALSE;
}
#define TEST_INIT test_init
#else
#define TEST_INIT NULL
#endif

static const HerdPluginDescriptor test_descriptor = {
    .abi_major = TEST_ABI_MAJOR,
    .abi_minor = TEST_ABI_MINOR,
    .kind = TEST_KIND,
    .name = HERD_TEST_NAME,
    .description = "a plugin built for the loader's unit tests",
    .init = TEST_INIT,
    .ops = &test_ops,
};

#if defined(HERD_TEST_NO_ENTRY)
/* Exported under another name, so the module opens but has no herd_plugin_entry. */
G_MODULE_EXPORT const HerdPluginDescriptor *not_the_entry(void);
G_MODULE_EXPORT const HerdPluginDescriptor *not_the_entry(void) { return &test_descriptor; }
#elif defined(HERD_TEST_NULL_DESCRIPTOR)
G_MODULE_EXPORT const HerdPluginDescriptor *herd_plugin_entry(void);
G_MODULE_EXPORT const HerdPluginDescriptor *herd_plugin_entry(void)
{
    (void)test_descriptor;
    return NULL;
}
#else
HERD_PLUGIN_DEFINE(test_descriptor)
#endif
