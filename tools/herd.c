/* herd — the `herd` command: dispatches to its subcommands. */
#include <glib.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>

#include "herd-tool.h"

typedef struct Subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} Subcommand;

static const Subcommand subcommands[] = {
    { "engine", herd_cmd_engine, "run native engines (echo or shell executor) for a controller" },
    { "bench", herd_cmd_bench, "benchmark a controller with native engines and clients" },
    { "relay", herd_cmd_relay, "run the bare libzmq relay used as the benchmark baseline" },
    { "cluster", herd_cmd_cluster, "start, stop and list whole clusters (herdd + engines)" },
};

char *herd_tool_self_path(void)
{
    char *path = g_file_read_link("/proc/self/exe", NULL);
    return path ? path : g_strdup("herd");
}

char *herd_tool_find_herdd(void)
{
    if (g_getenv("HERDD"))
        return g_strdup(g_getenv("HERDD"));
    g_autofree char *self = herd_tool_self_path();
    g_autofree char *dir = g_path_get_dirname(self);
    /* installed side by side, or this build tree's daemon/ */
    const char *candidates[] = { "herdd", "../daemon/herdd" };
    for (guint i = 0; i < G_N_ELEMENTS(candidates); i++) {
        g_autofree char *path = g_build_filename(dir, candidates[i], NULL);
        if (g_file_test(path, G_FILE_TEST_IS_EXECUTABLE))
            return g_canonicalize_filename(path, NULL);
    }
    return g_strdup("herdd");
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: herd COMMAND [OPTIONS]\n\nCommands:\n");
    for (guint i = 0; i < G_N_ELEMENTS(subcommands); i++)
        fprintf(out, "  %-8s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(out, "\nRun 'herd COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (g_str_equal(argv[1], "--help") || g_str_equal(argv[1], "-h") || g_str_equal(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (g_str_equal(argv[1], "--version")) {
        printf("herd %s\n", HERD_VERSION);
        return 0;
    }
    for (guint i = 0; i < G_N_ELEMENTS(subcommands); i++) {
        if (g_str_equal(argv[1], subcommands[i].name)) {
            /* "Usage: herd engine [OPTION...]" in each subcommand's --help */
            g_autofree char *prgname = g_strdup_printf("herd %s", subcommands[i].name);
            g_set_prgname(prgname);
            return subcommands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "herd: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
