/* herd unit tests — small helpers shared by several test programs. */
#include "test-util.h"

#include <glib.h>
#include <glib/gstdio.h>

void test_remove_tree(const char *path)
{
    GDir *dir = g_dir_open(path, 0, NULL);
    if (dir != NULL) {
        const char *name;
        while ((name = g_dir_read_name(dir)) != NULL) {
            g_autofree char *child = g_build_filename(path, name, NULL);
            if (g_file_test(child, G_FILE_TEST_IS_DIR) && !g_file_test(child, G_FILE_TEST_IS_SYMLINK))
                test_remove_tree(child);
            else
                g_unlink(child);
        }
        g_dir_close(dir);
    }
    g_rmdir(path);
}

char *test_make_tmp_dir(const char *tmpl)
{
    g_autoptr(GError) err = NULL;
    char *root = g_dir_make_tmp(tmpl, &err);
    g_assert_no_error(err);
    return root;
}

char *test_make_dir(const char *parent, const char *name)
{
    char *path = g_build_filename(parent, name, NULL);
    g_assert_cmpint(g_mkdir(path, 0700), ==, 0);
    return path;
}

void test_remove_tmp_dir(char **root)
{
    test_remove_tree(*root);
    g_clear_pointer(root, g_free);
}
