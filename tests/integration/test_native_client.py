"""The C client API as a user meets it: the example program of docs/client-api.md is
compiled against the built libherd and run against a controller with native shell
engines."""

import json
import os
import re
import shutil
import socket
import subprocess

import pytest

import herdtest
from herdtest import time_scale
from native_helpers import NativeEngines

REPO = herdtest.REPO_ROOT


def doc_example():
    text = (REPO / "docs" / "client-api.md").read_text()
    match = re.search(r"```c\n(/\* hostname\.c:.*?)```", text, re.S)
    assert match, "docs/client-api.md lost its example program"
    return match.group(1)


def build_dir():
    return herdtest.herdd_path().parent.parent


def sanitizer_flags():
    """A libherd built with -Db_sanitize=... needs programs built the same way."""
    try:
        options = json.loads((build_dir() / "meson-info" / "intro-buildoptions.json").read_text())
    except (OSError, ValueError):
        return []
    value = next((o["value"] for o in options if o["name"] == "b_sanitize"), "none")
    return [] if value in ("none", "") else [f"-fsanitize={value}"]


def compile_program(tmp_path, name, text):
    """Build a C program against the built libherd; returns its path."""
    if not shutil.which("cc") or not shutil.which("pkg-config"):
        pytest.skip("needs cc and pkg-config")
    source = tmp_path / f"{name}.c"
    source.write_text(text)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0", "json-glib-1.0", "libzmq"],
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / name
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-Werror", str(source), f"-I{REPO / 'core' / 'include'}",
                    *sanitizer_flags(), *flags, f"-L{build_dir() / 'core'}", "-lherd", "-o", str(exe)],
                   check=True, timeout=120)
    return exe


def run_program(exe, *args):
    env = dict(os.environ, LD_LIBRARY_PATH=str(build_dir() / "core"))
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.fixture
def example_program(tmp_path):
    text = doc_example()
    assert len(text.splitlines()) <= 35, "the example should stay about 30 lines"
    return compile_program(tmp_path, "hostname", text)


def test_doc_example_runs_hostname_on_native_engines(cluster_factory, example_program):
    cluster = cluster_factory(engines=0, client=True)
    engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor="shell", count=2).start()
    try:
        cluster.client.wait_for_engines(2, timeout=30 * time_scale())
        result = run_program(example_program, cluster.controller.connection_file("client"))
        assert result.returncode == 0, result.stderr
        lines = sorted(result.stdout.splitlines())
        host = socket.gethostname()
        assert lines == [f"[engine 0] {host}", f"[engine 1] {host}"]
    finally:
        engines.stop()


# Per-request metadata on every channel, against the real controller and echo engines:
# task targets, a coalescing broadcast, a control request.
CHANNELS_PROGRAM = r"""
#include <herd/client.h>
#include <stdio.h>
#include <string.h>

#define TASKS 30

int main(int argc, char **argv)
{
    GError *err = NULL;
    HerdClient *c = herd_client_connect(argv[1], 0, &err);
    if (!c || !herd_client_wait_for_engines(c, 3, 20000, &err)) {
        fprintf(stderr, "connect: %s\n", err->message);
        return 1;
    }
    guint n;
    const HerdClientEngine *engines = herd_client_engines(c, &n);
    int last = engines[n - 1].id, first = engines[0].id;
    HerdBytes payload = { "payload", 7 };
    for (int i = 0; i < TASKS; i++)
        if (!herd_client_submit(c, HERD_CHANNEL_TASK, "apply_request", &last, 1, NULL, NULL, &payload, 1, NULL, &err))
            return fprintf(stderr, "task: %s\n", err->message), 1;
    GString *md = g_string_new("{\"targets\": [");
    for (guint i = 0; i < n; i++)
        g_string_append_printf(md, "%s[\"%s\", %d]", i ? ", " : "", engines[i].uuid, engines[i].id);
    g_string_append(md, "], \"is_broadcast\": true, \"is_coalescing\": true}");
    char *bcast_id = NULL, *control_id = NULL;
    if (!herd_client_submit(c, HERD_CHANNEL_BROADCAST, "apply_request", NULL, 0, md->str, NULL, &payload, 1,
                            &bcast_id, &err) ||
        !herd_client_submit(c, HERD_CHANNEL_CONTROL, "clear_request", &first, 1, NULL, NULL, NULL, 0, &control_id,
                            &err))
        return fprintf(stderr, "submit: %s\n", err->message), 1;
    int tasks = 0, bcast_buffers = -1, control_ok = 0;
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (herd_client_outstanding(c) > 0 && g_get_monotonic_time() < deadline) {
        HerdClientMsg *m = herd_client_recv(c, 1000, NULL);
        if (m && m->kind == HERD_MSG_REPLY) {
            if (m->channel == HERD_CHANNEL_TASK && m->engine_id == last && g_strcmp0(m->status, "ok") == 0 &&
                m->n_buffers == 1 && m->buffers[0].len == 7 && memcmp(m->buffers[0].data, "payload", 7) == 0)
                tasks++;
            else if (m->channel == HERD_CHANNEL_BROADCAST && g_strcmp0(m->request_id, bcast_id) == 0)
                bcast_buffers = (int)m->n_buffers;
            else if (m->channel == HERD_CHANNEL_CONTROL && g_strcmp0(m->request_id, control_id) == 0 &&
                     g_str_equal(m->msg_type, "clear_reply") && g_strcmp0(m->status, "ok") == 0)
                control_ok = 1;
            else
                fprintf(stderr, "unexpected reply %s on %s\n", m->msg_type, herd_channel_name(m->channel));
        }
        herd_client_msg_free(m);
    }
    printf("tasks=%d broadcast_buffers=%d control=%d outstanding=%u unexpected=%lu rejected=%lu\n", tasks,
           bcast_buffers, control_ok, herd_client_outstanding(c), (unsigned long)herd_client_unexpected(c),
           (unsigned long)herd_client_rejected(c));
    g_free(bcast_id);
    g_free(control_id);
    g_string_free(md, TRUE);
    herd_client_close(c);
    return 0;
}
"""


def test_client_api_metadata_on_every_channel(cluster_factory, tmp_path):
    exe = compile_program(tmp_path, "channels", CHANNELS_PROGRAM)
    cluster = cluster_factory(engines=0, client=True)
    engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor="echo", count=3).start()
    try:
        cluster.client.wait_for_engines(3, timeout=30 * time_scale())
        result = run_program(exe, cluster.controller.connection_file("client"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ("tasks=30 broadcast_buffers=3 control=1 outstanding=0 "
                                         "unexpected=0 rejected=0"), result.stderr
    finally:
        engines.stop()
