"""`herd cluster start/stop/list` with the local launcher: herdd and real engines
(Python ipengine, or `herd engine`) started in the background by one command, used by an
unmodified ipyparallel.Client, stopped by PID from the state file; and the unhappy paths
(a missing engine binary, an engine that exits, a controller that cannot bind, a cluster
that died before its stop, a start that times out)."""

import signal
import socket
import stat
import subprocess
import time

import psutil
import pytest

import herdtest
from cluster_helpers import clusters, is_running, still_running  # noqa: F401 (fixture)
from native_helpers import herd_path, run_herd

import ipyparallel as ipp

pytestmark = pytest.mark.herd_only("herd cluster always starts herdd")


def double(x):
    return 2 * x


def listing_rows(result):
    """`herd cluster list` rows as lists of columns (header left out)."""
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()[1:]]


def shell_output(rc, command):
    ar = rc[:].execute(command, block=False)
    ar.get(timeout=20)
    assert ar.wait_for_output(20)
    return ar.stdout


def test_start_leaves_python_engines_running_until_stop(clusters):
    cluster = clusters()
    result = cluster.start("-n", "2")
    assert result.stdout.count("\n") == 1, result.stdout  # one summary line
    assert "2 engines (ipengine, launcher local) registered" in result.stdout
    assert stat.S_IMODE(cluster.state_path.stat().st_mode) == 0o600
    state = cluster.state()
    assert (state["launcher"], state["engine"], state["engines"]) == ("local", "ipengine", 2)
    assert [s["engines"] for s in state["engine_sets"]] == [1, 1]
    for pid, start in cluster.recorded():
        assert is_running(pid, start)

    rc = cluster.client()
    try:
        assert len(rc.ids) == 2  # registered before start returned
        assert rc[:].apply_sync(ipp.interactive(double), 21) == [42, 42]
    finally:
        rc.close()
    rows = listing_rows(cluster.run("list"))
    assert [(r[1], r[4], r[5]) for r in rows] == [("''", "2/2", "local")]

    family = cluster.family()
    assert sum("ipyparallel.engine.nanny" in " ".join(p.cmdline()) for p in family) == 2
    result = cluster.stop()
    assert result.returncode == 0, result.stderr
    assert "herdd (pid" in result.stdout and "stopped" in result.stdout
    assert not still_running(family)  # engines, their nannies and herdd, by the time stop returns
    assert not cluster.state_path.exists()
    assert not cluster.connection_file("client").exists()  # herdd stopped cleanly
    herdd_log = (cluster.profile_dir / "log" / "herd-cluster-herdd.log").read_text()
    assert "herdd: stopped" in herdd_log and "Sanitizer" not in herdd_log


def test_herd_engines_share_one_process(clusters):
    cluster = clusters()
    cluster.start("-n", "3", "--engine", "herd")
    sets = cluster.state()["engine_sets"]
    assert [s["engines"] for s in sets] == [3]
    rc = cluster.client()
    try:
        assert len(rc.ids) == 3
        assert shell_output(rc, "echo $((6 * 7))") == ["42\n"] * 3
    finally:
        rc.close()
    assert cluster.stop().returncode == 0
    assert not is_running(sets[0]["pid"], sets[0]["start_time"])


def test_two_cluster_ids_side_by_side(clusters):
    first, second = clusters("first"), clusters("second")
    first.start("-n", "1", "--engine", "herd")
    second.start("-n", "2", "--engine", "herd")
    rows = listing_rows(first.run("list"))
    assert sorted((r[1], r[4]) for r in rows) == [("'first'", "1/1"), ("'second'", "2/2")]

    assert first.stop().returncode == 0
    rc = second.client()
    try:
        assert len(rc.ids) == 2
        assert shell_output(rc, "echo still here") == ["still here\n"] * 2
    finally:
        rc.close()
    rows = listing_rows(second.run("list"))
    assert [r[1] for r in rows] == ["'second'"]
    assert second.stop().returncode == 0


def test_list_without_profile_covers_every_profile(tmp_path, clusters):
    ipython_dir = tmp_path / "ipython"
    cluster = clusters(profile_dir=ipython_dir / "profile_work")
    cluster.start("-n", "1", "--engine", "herd")
    result = run_herd(["cluster", "list", "--ipython-dir", str(ipython_dir)], timeout=30)
    rows = listing_rows(result)
    assert [(r[0], r[1], r[4]) for r in rows] == [("work", "''", "1/1")]


def test_second_start_of_a_running_cluster_is_refused(clusters):
    cluster = clusters()
    cluster.start("-n", "1", "--engine", "herd")
    controller = cluster.state()["controller"]
    again = cluster.run("start", "-n", "1", "--engine", "herd", "--timeout=20")
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert cluster.state()["controller"] == controller
    rows = listing_rows(cluster.run("list"))
    assert [r[4] for r in rows] == ["1/1"]


def test_missing_engine_binary_stops_the_controller(tmp_path, clusters):
    cluster = clusters()
    missing = tmp_path / "no-such-python"
    result = cluster.run("start", "-n", "2", "--python", str(missing), "--timeout=30")
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "stopping what was started" in result.stderr
    assert not cluster.state_path.exists()
    assert not cluster.connection_file("client").exists()  # herdd got SIGTERM and cleaned up
    # (the fixture fails the test if herdd, which names tmp_path, still runs)


def test_engine_that_exits_fails_the_start(clusters):
    cluster = clusters()
    result = cluster.run("start", "-n", "2", "--python", "/bin/false", "--timeout=30")
    assert result.returncode == 1
    assert "exited with status 1" in result.stderr
    assert not cluster.state_path.exists()


def test_controller_that_cannot_bind_fails_the_start(tmp_path, clusters):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        config = tmp_path / "herd.conf"
        config.write_text(f"[controller]\nports = {busy.getsockname()[1]}\n")
        cluster = clusters()
        result = cluster.run("start", "-n", "1", "--engine", "herd", "--config", str(config), "--timeout=30")
    finally:
        busy.close()
    assert result.returncode == 1
    assert "herdd (pid" in result.stderr and "exited with status 1" in result.stderr
    assert "already in use" in result.stderr  # the end of herdd's log
    assert not cluster.state_path.exists()


def test_stop_of_a_cluster_that_died(clusters):
    cluster = clusters()
    cluster.start("-n", "1", "--engine", "herd")
    family = cluster.family()
    for proc in family:
        proc.kill()
    psutil.wait_procs(family, timeout=10)
    assert cluster.connection_file("client").exists()  # nobody cleaned up
    listing = cluster.run("list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[1].split()[2:4] == ["stopped", "-/1"]
    result = cluster.stop()
    assert result.returncode == 0, result.stderr
    assert "was not running" in result.stdout
    assert "removed the stale connection files" in result.stdout
    assert not cluster.connection_file("client").exists()
    assert not cluster.connection_file("engine").exists()
    assert not cluster.state_path.exists()


def test_stop_without_a_cluster_fails(clusters):
    result = clusters("nothing").stop()
    assert result.returncode == 1
    assert "no cluster 'nothing'" in result.stderr


def test_start_gives_up_after_its_timeout(tmp_path, clusters):
    # An "interpreter" that never registers an engine (and names tmp_path, so that the
    # fixture would find it if it were left running).
    hang = tmp_path / "hang"
    hang.write_text('#!/bin/sh\nexec /usr/bin/python3 -c "import time; time.sleep(300)" "$@"\n')
    hang.chmod(0o755)
    cluster = clusters()
    began = time.monotonic()
    result = cluster.run("start", "-n", "2", "--python", str(hang), "--timeout=3",
                         f"--ping={herdtest.heartbeat_ms()}")
    assert result.returncode == 1
    assert "2 registered engines (0 are) not there after 3 s" in result.stderr
    assert time.monotonic() - began < 20
    assert not cluster.state_path.exists()


def test_interrupted_start_stops_what_it_started(tmp_path, clusters):
    hang = tmp_path / "hang"
    hang.write_text('#!/bin/sh\nexec /usr/bin/python3 -c "import time; time.sleep(300)" "$@"\n')
    hang.chmod(0o755)
    cluster = clusters()
    proc = subprocess.Popen([str(herd_path()), "cluster", "start", *cluster.where(), "-n", "2",
                             "--python", str(hang), "--timeout=60"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        herdtest.wait_until(lambda: cluster.state_path.exists() and len(cluster.state()["engine_sets"]) == 2,
                            30, what="both engines in the state file")
        family = cluster.family()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 1
    assert "interrupted while waiting for 2 registered engines" in err
    assert not still_running(family)
    assert not cluster.state_path.exists()
