/* herd unit tests — small helpers shared by several test programs. */
#pragma once

/* Remove a folder and everything below it (symlinks are removed, not followed). */
void test_remove_tree(const char *path);

/* A new empty folder in the temporary directory, named from tmpl (its XXXXXX replaced);
 * asserts it was made. Remove it with test_remove_tmp_dir. */
char *test_make_tmp_dir(const char *tmpl);
/* Make the folder parent/name with mode 0700 (asserted) and return its path. */
char *test_make_dir(const char *parent, const char *name);
/* Remove *root and everything below it, free the path and set *root to NULL. */
void test_remove_tmp_dir(char **root);
