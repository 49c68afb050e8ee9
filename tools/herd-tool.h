/* herd — subcommands of the `herd` program. Each takes the arguments after its name
 * (argv[0] is the subcommand name) and returns the process exit status. */
#pragma once

int herd_cmd_engine(int argc, char **argv);
int herd_cmd_bench(int argc, char **argv);
int herd_cmd_relay(int argc, char **argv);
int herd_cmd_cluster(int argc, char **argv);

/* Path of the running `herd` executable (for starting helper processes); caller frees. */
char *herd_tool_self_path(void);
/* The herdd to start: $HERDD, else herdd next to this program (installed) or in its build
 * tree's daemon/ folder, else "herdd" from PATH; caller frees. */
char *herd_tool_find_herdd(void);
