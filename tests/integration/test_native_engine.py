"""Native engines (`herd engine`) driven by an unmodified ipyparallel Client: they
register, run shell commands with their output on IOPub, answer control requests,
and unregister when they stop."""

import json
import re
import socket
import time
from datetime import datetime

import pytest

import herdtest
from herdtest import time_scale, wait_until
from native_helpers import NativeEngines
from rawpeer import DELIM, RawPeer

import ipyparallel as ipp
from jupyter_client.jsonutil import parse_date


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

    def make(count, executor="shell", python_controller=False, extra_args=(), env=None,
             transport="tcp"):
        cluster = cluster_factory(start=False, transport=transport)
        if python_controller:
            cluster.controller.kind = "python"
        cluster.start(engines=0, client=True)
        engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor=executor,
                                count=count, extra_args=extra_args, env=env).start()
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


@pytest.mark.herd_only("the Python controller has no ipc transport")
def test_shell_engines_over_ipc(native_cluster):
    """Over ipc too, an engine's connections are recognised as ready by their endpoints
    (ipc://<dir>/<stem>:<port>), so the engines heartbeat and register."""
    cluster, _ = native_cluster(2, transport="ipc")
    ar = cluster.client[:].execute("echo over ipc", block=False)
    finished(ar)
    assert ar.stdout == ["over ipc\n"] * 2


def test_many_engines_share_one_process(native_cluster):
    cluster, engines = native_cluster(40, executor="echo")
    rc = cluster.client
    assert len(rc.ids) == 40
    # The echo executor answers execute with status ok (and no output).
    ar = rc[:].execute("anything", block=False)
    finished(ar, timeout=30)
    assert ar.stdout == [""] * 40
    assert engines.alive()


def assert_reply_metadata(md, rc, eid):
    """What ipyparallel 7.1's client makes of an engine's reply metadata and header."""
    assert md["status"] == "ok"
    assert md["engine_uuid"] == rc._engines[eid]
    assert md["engine_id"] == eid
    # submitted: the request's date (the parent header); started: the engine's metadata;
    # completed: the reply header's date; received: the client's clock. One host, one clock.
    dates = [md[k] if isinstance(md[k], datetime) else parse_date(md[k])
             for k in ("submitted", "started", "completed", "received")]
    assert all(isinstance(d, datetime) for d in dates), md
    assert dates == sorted(dates), md


@pytest.mark.parametrize("python_controller", [False, True], ids=["herdd", "ipcontroller"])
def test_echo_replies_carry_what_a_python_client_reads(native_cluster, python_controller):
    """The echo executor writes reply headers and metadata from templates: a Python
    client must read them exactly as it reads ipengine's, through either controller."""
    cluster, _ = native_cluster(2, executor="echo", python_controller=python_controller)
    rc = cluster.client
    ar = rc[:].execute("anything", block=False)
    finished(ar)
    for eid, md in zip(rc.ids, ar._metadata):
        assert_reply_metadata(md, rc, eid)
        assert md["is_broadcast"] is False and md["is_coalescing"] is False
    # apply: the reply carries the request's own buffers back (no result to speak of),
    # but its metadata is complete.
    ar = rc[rc.ids[1]].apply_async(lambda: None)
    ar.wait(20)
    assert ar.ready()
    assert_reply_metadata(ar._metadata[0], rc, rc.ids[1])


@pytest.mark.parametrize("coalescing", [False, True])
def test_echo_broadcast_replies_are_matched_to_their_request(native_cluster, coalescing):
    """Broadcast replies are matched through is_broadcast, is_coalescing and
    original_msg_id, copied from the request's metadata into the reply's."""
    cluster, _ = native_cluster(3, executor="echo")
    rc = cluster.client
    ar = rc.broadcast_view(is_coalescing=coalescing).execute("anything", block=False)
    finished(ar)
    assert len(ar._metadata) == 3
    for md in ar._metadata:
        assert md["status"] == "ok"
        assert md["is_broadcast"] is True


ODD_ID = 'we"ird\\id\n\t\u00e9\u0001 </x>'
ODD_USER = 'o\'dd "user" \\ \u00e9'


def signed_frames(peer, prefix, header, metadata_json):
    """A request with metadata given as JSON text (to control how it is escaped)."""
    body = [json.dumps(header).encode(), b"{}", metadata_json.encode(), b"{}"]
    return [*prefix, DELIM, peer.sign(*body), *body]


@pytest.mark.parametrize("original_msg_id, ensure_ascii", [
    (ODD_ID, True),             # quotes, backslashes, control characters: escaped in the request
    ("plain-\u00e9-id", False),  # raw UTF-8, no escapes: copied as it is
])
def test_echo_reply_copies_odd_ids_and_escapes_them(native_cluster, original_msg_id, ensure_ascii):
    """A raw apply_request through herdd's MUX: the reply's metadata must hold the very
    original_msg_id the request carried, its parent header must be the request's header
    byte for byte, its username (the engine's $USER) must survive escaping, and the
    buffers must come back unchanged."""
    cluster, _ = native_cluster(1, executor="echo", env={"USER": ODD_USER})
    rc = cluster.client
    engine_uuid = rc._engines[rc.ids[0]]
    info = cluster.controller.connection_info("client")
    peer = RawPeer(f"{info['interface']}:{info['mux']}", info["key"])
    try:
        header = peer.header("apply_request")
        metadata = json.dumps({"original_msg_id": original_msg_id, "is_broadcast": True,
                               "is_coalescing": False, "odd \"member\\": [{"x": "}"}]},
                              ensure_ascii=ensure_ascii)
        frames = signed_frames(peer, [engine_uuid.encode()], header, metadata)
        buffers = [b"buffer-1", b"\x00\xff binary"]
        peer.send(frames + buffers)
        reply, _ = peer.recv_reply_to(header, 15 * time_scale())
    finally:
        peer.close()
    raw = reply["raw"]
    delim = raw.index(DELIM)
    assert raw[delim + 3] == frames[frames.index(DELIM) + 2]  # parent = request header, verbatim
    assert raw[delim + 6:] == buffers
    assert reply["header"]["msg_type"] == "apply_reply"
    assert reply["header"]["username"] == ODD_USER
    md = reply["metadata"]
    assert md["original_msg_id"] == original_msg_id
    assert md["is_broadcast"] is True and md["is_coalescing"] is False
    assert md["engine"] == engine_uuid
    assert md["status"] == "ok" and md["dependencies_met"] is True
    assert reply["content"] == {"status": "ok"}


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


# What the engine reports for a connection that never completed its handshake.
UNACCEPTED_TASK_PORTS = {
    "refused": "connection failed, retrying",          # bound, not listening: TCP is refused
    "silent": "connected, but no ZeroMQ handshake",    # listening, never answers: TCP only
}


@pytest.mark.parametrize("kind", sorted(UNACCEPTED_TASK_PORTS))
def test_engine_without_its_task_connection_never_heartbeats_and_gives_up(cluster_factory, tmp_path,
                                                                           kind):
    """The controller is real, but the file's task port does not accept the engine's
    connection: the engine registers, never heartbeats (so the controller never announces
    it), and after --timeout exits 255 naming the connection and what became of it."""
    cluster = cluster_factory(client=False)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    if kind == "silent":
        blocker.listen()
    port = blocker.getsockname()[1]
    info = cluster.controller.connection_info("engine")
    info["task"] = port
    engine_file = tmp_path / "engine-bad-task.json"
    engine_file.write_text(json.dumps(info))
    timeout = 1.5
    engines = NativeEngines(cluster.workdir, cluster.profile_dir, executor="echo",
                            extra_args=["--file", str(engine_file), "--timeout", str(timeout)]).start()
    try:
        started = time.monotonic()
        status = engines.wait_exit(2 * timeout + 10 * time_scale())
        elapsed = time.monotonic() - started
        assert status == 255, engines.log()
        assert timeout <= elapsed < 2 * timeout + 10 * time_scale()
        assert (f"engine 0: the controller did not accept its connections within {timeout:.1f} "
                f"seconds: task (port {port}): {UNACCEPTED_TASK_PORTS[kind]}") in engines.log()
        controller_log = cluster.controller.log_since(0)
        # herdd's and ipcontroller's log lines for a registration request and for an
        # engine announced at its first heartbeat.
        assert re.search(r"asked to register|accepting registration", controller_log)
        assert not re.search(r"engine \d+ registered|Engine Connected", controller_log)
    finally:
        engines.stop()
        blocker.close()
