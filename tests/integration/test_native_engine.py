"""Native engines (`herd engine`) driven by an unmodified ipyparallel Client: they
register, run shell commands with their output on IOPub, answer control requests,
and unregister when they stop."""

import socket
import time

import pytest

import herdtest
from herdtest import time_scale, wait_until
from native_helpers import NativeEngines

import ipyparallel as ipp


def finished(ar, timeout=20):
    """The result, once the output (stdout/stderr on IOPub) is complete too: a reply and
    its output travel on different sockets."""
    result = ar.get(timeout=timeout)
    assert ar.wait_for_output(timeout)
    return result


@pytest.fixture
def native_cluster(cluster_factory):
    """make(count, executor='shell', python_controller=False) -> (cluster, engines),
    with the client connected and every engine registered."""
    started = []

    def make(count, executor="shell", python_controller=False, extra_args=()):
        cluster = cluster_factory(start=False)
        if python_controller:
            cluster.controller.kind = "python"
        cluster.start(engines=0, client=True)
        engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor=executor,
                                count=count, extra_args=extra_args).start()
        started.append(engines)
        cluster.client.wait_for_engines(count, timeout=30 * time_scale())
        return cluster, engines

    yield make
    for engines in started:
        engines.stop()


def test_shell_engines_run_hostname_and_stream_output(native_cluster):
    cluster, _ = native_cluster(2)
    rc = cluster.client
    ar = rc[:].execute("hostname", block=False)
    finished(ar)
    assert ar.stdout == [socket.gethostname() + "\n"] * 2
    ar = rc[:].execute("echo out; echo err >&2", block=False)
    finished(ar)
    assert ar.stdout == ["out\n"] * 2
    assert ar.stderr == ["err\n"] * 2


def test_native_engines_register_with_python_controller(native_cluster):
    cluster, _ = native_cluster(2, python_controller=True)
    rc = cluster.client
    assert sorted(rc.ids) == [0, 1]
    ar = rc[:].execute("printf '%s' done", block=False)
    finished(ar)
    assert ar.stdout == ["done"] * 2


def test_exit_status_becomes_the_reply_status(native_cluster):
    cluster, _ = native_cluster(1)
    with pytest.raises(ipp.error.RemoteError) as info:
        cluster.client[0].execute("echo partial; exit 3", block=True)
    assert info.value.ename == "CalledProcessError"
    assert "exit status 3" in info.value.evalue


def test_apply_on_a_shell_engine_gets_a_clear_error(native_cluster):
    cluster, _ = native_cluster(1)
    with pytest.raises(ipp.error.RemoteError) as info:
        cluster.client[0].apply_sync(lambda: 1)
    assert info.value.ename == "NotImplementedError"
    assert "shell engine" in info.value.evalue


def test_requests_run_in_order_and_abort_skips_queued_ones(native_cluster):
    cluster, _ = native_cluster(1)
    view = cluster.client[0]
    first = view.execute("sleep 1; echo first", block=False)
    second = view.execute("echo second", block=False)
    third = view.execute("echo third", block=False)
    cluster.client.abort(second, targets=0, block=True)
    finished(first)
    finished(third)
    with pytest.raises(ipp.error.TaskAborted):
        second.get(timeout=20)
    assert first.stdout == "first\n"
    assert third.stdout == "third\n"
    assert third.metadata["started"] >= first.metadata["completed"]


def test_signal_reaches_the_running_command(native_cluster):
    cluster, _ = native_cluster(1)
    rc = cluster.client
    started = time.monotonic()
    ar = rc[0].execute("echo started; sleep 30", block=False)
    wait_until(lambda: ar.stdout == "started\n", 10 * time_scale(), what="the command to start")
    rc.send_signal("SIGINT", targets=0, block=True)
    with pytest.raises(ipp.error.RemoteError) as info:
        ar.get(timeout=10)
    assert info.value.ename == "CalledProcessError"
    assert "signal 2" in info.value.evalue
    assert time.monotonic() - started < 25


def test_broadcast_view_runs_on_every_engine(native_cluster):
    cluster, _ = native_cluster(3)
    bview = cluster.client.broadcast_view()
    ar = bview.execute("echo hi", block=False)
    finished(ar)
    assert ar.stdout == ["hi\n"] * 3


def test_many_engines_share_one_process(native_cluster):
    cluster, engines = native_cluster(40, executor="echo")
    rc = cluster.client
    assert len(rc.ids) == 40
    # The echo executor answers execute with status ok (and no output).
    ar = rc[:].execute("anything", block=False)
    finished(ar, timeout=30)
    assert ar.stdout == [""] * 40
    assert engines.alive()


def test_shutdown_request_stops_and_unregisters(native_cluster):
    cluster, engines = native_cluster(2)
    rc = cluster.client
    rc.shutdown(targets="all", block=True)
    wait_until(lambda: not rc.ids, 15 * time_scale(), what="engines to unregister")
    assert engines.wait_exit(10 * time_scale()) == 0


def test_sigterm_unregisters_every_engine(native_cluster):
    cluster, engines = native_cluster(3, executor="echo")
    rc = cluster.client
    assert engines.stop() == 0
    wait_until(lambda: not rc.ids, 15 * time_scale(), what="engines to unregister")


def test_registration_timeout_exits_255(tmp_path):
    """A controller that never answers: the engine gives up after --timeout, like ipengine."""
    profile = tmp_path / "profile_dead"
    (profile / "security").mkdir(parents=True)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    info = {"ssh": "", "interface": "tcp://127.0.0.1", "registration": port, "control": port,
            "mux": port, "task": port, "iopub": port, "hb_ping": port, "hb_pong": port,
            "broadcast": [port], "key": "k", "curve_serverkey": None, "location": "localhost",
            "pack": "json", "unpack": "json", "signature_scheme": "hmac-sha256"}
    import json
    (profile / "security" / "ipcontroller-engine.json").write_text(json.dumps(info))
    engines = NativeEngines(tmp_path, profile, executor="echo", extra_args=["--timeout", "0.5"]).start()
    try:
        started = time.monotonic()
        assert engines.wait_exit(10) == 255
        assert time.monotonic() - started < 10
        assert "registration timed out" in engines.log()
    finally:
        engines.stop()
        silent.close()
