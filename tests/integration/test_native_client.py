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


@pytest.fixture
def example_program(tmp_path):
    if not shutil.which("cc") or not shutil.which("pkg-config"):
        pytest.skip("needs cc and pkg-config")
    source = tmp_path / "hostname.c"
    source.write_text(doc_example())
    assert len(source.read_text().splitlines()) <= 35, "the example should stay about 30 lines"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0", "json-glib-1.0", "libzmq"],
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / "hostname"
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-Werror", str(source), f"-I{REPO / 'core' / 'include'}",
                    *sanitizer_flags(), *flags, f"-L{build_dir() / 'core'}", "-lherd", "-o", str(exe)],
                   check=True, timeout=120)
    return exe


def test_doc_example_runs_hostname_on_native_engines(cluster_factory, example_program):
    cluster = cluster_factory(engines=0, client=True)
    engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor="shell", count=2).start()
    try:
        cluster.client.wait_for_engines(2, timeout=30 * time_scale())
        env = dict(os.environ, LD_LIBRARY_PATH=str(build_dir() / "core"))
        result = subprocess.run([str(example_program), str(cluster.controller.connection_file("client"))],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        lines = sorted(result.stdout.splitlines())
        host = socket.gethostname()
        assert lines == [f"[engine 0] {host}", f"[engine 1] {host}"]
    finally:
        engines.stop()
