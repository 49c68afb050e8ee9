/* herd — `herd relay` (being written). */
#include "herd-tool.h"
int herd_cmd_relay(int argc, char **argv) { (void)argc; (void)argv; return 1; }
