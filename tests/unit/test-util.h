/* herd unit tests — small helpers shared by several test programs. */
#pragma once

/* Remove a folder and everything below it (symlinks are removed, not followed). */
void test_remove_tree(const char *path);
