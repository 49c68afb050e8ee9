"""Bad input from a hand-driven peer: each broken message is followed by a
working request. The controller must stay up, act on none of the broken
messages, and (herdd) log why it dropped each one.

The working request goes over the same DEALER right after the broken one, so
its reply also proves that the controller had already dealt with the broken
message: anything the controller answered to it arrives first."""

import pytest
from ipyparallel import interactive
from ipyparallel.serialize import pack_apply_message

import herdtest
from conftest import module_cluster
from rawpeer import DELIM, RawPeer

REPLY_TIMEOUT = 15

# Controller log line (case-insensitive regex) expected for each kind of garbage.
LOG_REASON = {
    "wrong_signature": r"signature",
    "replayed": r"replay|duplicate",
    "truncated": r"truncat|malformed|frames",
    "no_frames_after_delimiter": r"truncat|malformed|frames",
    "non_json_header": r"json",
    "unknown_msg_type": r"unknown message type|bad message type",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, engines=1)


@pytest.fixture
def peer_factory(cluster):
    peers = []

    def make(channel):
        info = cluster.controller.connection_info("client")
        peer = RawPeer(f"{info['interface']}:{info[channel]}", info["key"])
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def log_offset(cluster):
    return cluster.controller.log_size()


# --- garbage -----------------------------------------------------------------

def wrong_signature(frames):
    broken = list(frames)
    i = broken.index(DELIM) + 1
    broken[i] = bytes(reversed(broken[i]))  # right length and alphabet, wrong value
    return broken


def truncated(frames):
    """Only signature, header and parent after the delimiter (5 are required)."""
    i = frames.index(DELIM)
    return frames[: i + 4]


def no_frames_after_delimiter(frames):
    return frames[: frames.index(DELIM) + 1]


def non_json_header(peer, frames):
    """Correctly signed, but the header is not JSON. Unique (it keeps the
    msg_id), so that its signature never repeats one sent before."""
    i = frames.index(DELIM)
    body = [b"{this is not json " + frames[i + 2], *frames[i + 3: i + 6]]
    return [*frames[:i + 1], peer.sign(*body), *body, *frames[i + 6:]]


def garble(kind, peer, frames):
    if kind == "wrong_signature":
        return wrong_signature(frames)
    if kind == "truncated":
        return truncated(frames)
    if kind == "no_frames_after_delimiter":
        return no_frames_after_delimiter(frames)
    if kind == "non_json_header":
        return non_json_header(peer, frames)
    raise ValueError(kind)


MALFORMED = ["wrong_signature", "truncated", "no_frames_after_delimiter", "non_json_header"]


def assert_not_answered(kind, before):
    """Signature failures get no answer at all (spec 2.6); for malformed
    messages an error answer would be acceptable, never a real one."""
    if kind in ("wrong_signature", "replayed"):
        assert before == [], f"{kind}: controller answered {[m['header'] for m in before]}"
    for msg in before:
        assert msg["content"].get("status") == "error", f"{kind}: acted on: {msg['header']}"


def assert_still_up_and_logged(cluster, kind, offset):
    assert cluster.controller.alive(), "controller died"
    if herdtest.controller_kind() == "herdd":
        cluster.controller.wait_for_log(LOG_REASON[kind], since=offset)


# --- registration socket -----------------------------------------------------

def connection_round_trip(peer):
    header = peer.request("connection_request")
    reply, before = peer.recv_reply_to(header, REPLY_TIMEOUT)
    assert reply["content"]["status"] == "ok"
    return reply, before


@pytest.mark.parametrize("kind", MALFORMED)
def test_registration_socket_drops_malformed(cluster, peer_factory, log_offset, kind):
    peer = peer_factory("registration")
    frames, _ = peer.frames("connection_request")
    peer.send(garble(kind, peer, frames))

    reply, before = connection_round_trip(peer)

    assert_not_answered(kind, before)
    assert sorted(int(k) for k in reply["content"]["engines"]) == cluster.client.ids
    assert_still_up_and_logged(cluster, kind, log_offset)


def test_registration_socket_ignores_replayed_message(cluster, peer_factory, log_offset):
    peer = peer_factory("registration")
    frames, header = peer.frames("connection_request")
    peer.send(frames)
    first, _ = peer.recv_reply_to(header, REPLY_TIMEOUT)
    assert first["content"]["status"] == "ok"

    peer.send(frames)  # byte-identical: same signature
    _, before = connection_round_trip(peer)

    assert_not_answered("replayed", before)
    assert_still_up_and_logged(cluster, "replayed", log_offset)


def test_registration_socket_answers_unknown_type_with_key_error(cluster, peer_factory, log_offset):
    peer = peer_factory("registration")
    header = peer.request("nonsense_request")
    reply, _ = peer.recv_reply_to(header, REPLY_TIMEOUT)

    assert reply["header"]["msg_type"] == "hub_error"
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "KeyError"
    assert "nonsense_request" in content["evalue"]
    assert content["engine_info"] == {}
    connection_round_trip(peer)
    assert_still_up_and_logged(cluster, "unknown_msg_type", log_offset)


@pytest.mark.parametrize("kind", MALFORMED)
def test_badly_signed_shutdown_request_is_not_obeyed(cluster, peer_factory, log_offset, kind):
    peer = peer_factory("registration")
    frames, _ = peer.frames("shutdown_request")
    peer.send(garble(kind, peer, frames))

    _, before = connection_round_trip(peer)

    assert_not_answered(kind, before)
    assert cluster.controller.alive()
    assert cluster.client[:].apply_sync(sum, [1, 2]) == [3]


# --- mux and task sockets ----------------------------------------------------

@interactive
def count_call(name):
    """Counts, in the engine's namespace, how often it ran under `name`."""
    globals()[name] = globals().get(name, 0) + 1


@interactive
def times_called(name):
    return globals().get(name, 0)


TASK_METADATA = {"after": [], "follow": [], "timeout": 0.0, "targets": [], "retries": 0}


def apply_frames(peer, channel, engine_uuid, marker):
    """A correctly signed apply_request running count_call(marker)."""
    prefix = [engine_uuid.encode()] if channel == "mux" else []
    metadata = TASK_METADATA if channel == "task" else {}
    frames, header = peer.frames("apply_request", {}, metadata=metadata, prefix=prefix)
    return frames + pack_apply_message(count_call, (marker,), {}), header


def work_round_trip(peer, channel, engine_uuid, marker):
    frames, header = apply_frames(peer, channel, engine_uuid, marker)
    peer.send(frames)
    reply, before = peer.recv_reply_to(header, REPLY_TIMEOUT)
    assert reply["header"]["msg_type"] == "apply_reply"
    assert reply["content"]["status"] == "ok", reply["content"]
    return before


def engine_uuid(cluster):
    rc = cluster.client
    return rc._engines[rc.ids[0]]


def runs_of(cluster, marker):
    return cluster.client[:].apply_sync(times_called, marker)[0]


@pytest.mark.parametrize("channel", ["mux", "task"])
@pytest.mark.parametrize("kind", MALFORMED)
def test_work_socket_drops_malformed(cluster, peer_factory, log_offset, channel, kind):
    peer = peer_factory(channel)
    uuid = engine_uuid(cluster)
    marker = f"garbage_{channel}_{kind}"
    frames, _ = apply_frames(peer, channel, uuid, marker)
    peer.send(garble(kind, peer, frames))

    before = work_round_trip(peer, channel, uuid, f"ok_{channel}_{kind}")

    assert_not_answered(kind, before)
    assert runs_of(cluster, marker) == 0
    assert runs_of(cluster, f"ok_{channel}_{kind}") == 1
    assert_still_up_and_logged(cluster, kind, log_offset)


@pytest.mark.parametrize("channel", [
    "mux",
    pytest.param("task", marks=pytest.mark.herd_only(
        "7.1's task scheduler relays a replayed task; the engine drops it and the scheduler "
        "then waits for it forever")),
])
def test_work_socket_ignores_replayed_request(cluster, peer_factory, log_offset, channel):
    peer = peer_factory(channel)
    uuid = engine_uuid(cluster)
    marker = f"replayed_{channel}"
    frames, header = apply_frames(peer, channel, uuid, marker)
    peer.send(frames)
    peer.recv_reply_to(header, REPLY_TIMEOUT)

    peer.send(frames)  # byte-identical again
    before = work_round_trip(peer, channel, uuid, f"after_replay_{channel}")

    assert_not_answered("replayed", before)
    assert runs_of(cluster, marker) == 1
    assert_still_up_and_logged(cluster, "replayed", log_offset)


@pytest.mark.parametrize("coalescing", [False, True])
def test_broadcast_to_unknown_engines_fails_per_target(cluster, peer_factory, coalescing):
    """A broadcast naming engines that are not registered is failed by the scheduler: one
    EngineError per target, each answering the per-engine id "<msg_id>_<uuid>" with the
    request's other header members intact, or one for a coalescing request."""
    peer = peer_factory("broadcast")
    targets = [["no-such-engine-a", 41], ["no-such-engine-b", 42]]
    header = peer.request("apply_request", metadata={"targets": targets, "is_broadcast": True,
                                                     "is_coalescing": coalescing})
    expected = [header["msg_id"]] if coalescing else [f"{header['msg_id']}_{t[0]}" for t in targets]
    got = []
    for _ in expected:
        msg = peer.recv(timeout=10 * herdtest.time_scale())
        assert msg is not None, f"only {len(got)} of {len(expected)} replies"
        assert msg["content"]["ename"] == "EngineError"
        assert msg["metadata"]["original_msg_id"] == header["msg_id"]
        assert {k: v for k, v in msg["parent"].items() if k != "msg_id"} == \
            {k: v for k, v in header.items() if k != "msg_id"}
        got.append(msg["parent"]["msg_id"])
    assert got == expected
    assert peer.recv(timeout=0.5) is None


def test_client_still_works_after_all_that(cluster):
    rc = cluster.client
    assert rc[:].apply_sync(sum, [20, 22]) == [42]
    assert cluster.controller.alive()
