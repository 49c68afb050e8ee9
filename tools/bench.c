/* herd — `herd bench` (being written). */
#include "herd-tool.h"
int herd_cmd_bench(int argc, char **argv) { (void)argc; (void)argv; return 1; }
