"""An engine whose work connection completes after it registered.

A registration is confirmed by the engine's first heartbeat (spec 5.2, 5.3), and a
ZeroMQ connect completes on its own schedule, so the controller may route a request to
an engine whose shell socket is not connected yet. herdd's engine-side ROUTERs refuse
such a send (ROUTER_MANDATORY) and herdd sends the request again until the connection
is up (for about five seconds). Here a hand-driven engine registers and heartbeats but
connects its shell socket only once herdd has dispatched a request to it: the request
must still arrive, once, and its reply reach the client."""

import json
import threading
import uuid as uuidlib

import pytest
import zmq

import herdtest
from conftest import module_cluster
from rawpeer import DELIM, RawPeer, dumps, now_iso

TIMEOUT = 10 * herdtest.time_scale()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, engines=0)


class LateEngine:
    """Registers, echoes heartbeats, and connects its shell ROUTER when told to."""

    def __init__(self, cluster):
        info = cluster.controller.connection_info("engine")
        self.url = lambda port: f"{info['interface']}:{port}"
        self.info = info
        self.uuid = str(uuidlib.uuid4())
        self.context = zmq.Context.instance()
        self.signer = RawPeer(self.url(info["registration"]), info["key"])
        self.signer.session = self.uuid
        self.signer.socket.close(linger=0)
        self.registration = self._socket(zmq.DEALER, info["registration"])
        self.shell = None
        self.stop = threading.Event()
        self.heart = threading.Thread(target=self._beat, daemon=True)

    def _socket(self, kind, port, connect=True):
        s = self.context.socket(kind)
        s.linger = 0
        s.setsockopt(zmq.IDENTITY, self.uuid.encode())
        if connect:
            s.connect(self.url(port))
        return s

    def register(self):
        frames, _ = self.signer.frames("registration_request", {"uuid": self.uuid})
        self.registration.send_multipart(frames)
        assert self.registration.poll(int(TIMEOUT * 1000)), "no registration_reply"
        reply = self.registration.recv_multipart()
        content = json.loads(reply[reply.index(DELIM) + 5])
        assert content["status"] == "ok", content
        self.id = content["id"]
        self.heart.start()

    def _beat(self):
        ping = self.context.socket(zmq.SUB)
        ping.linger = 0
        ping.setsockopt(zmq.SUBSCRIBE, b"")
        ping.connect(self.url(self.info["hb_ping"]))
        pong = self._socket(zmq.DEALER, self.info["hb_pong"])
        while not self.stop.is_set():
            if ping.poll(50):
                pong.send_multipart(ping.recv_multipart())
        ping.close(linger=0)
        pong.close(linger=0)

    def connect_shell(self, channel):
        self.shell = self._socket(zmq.ROUTER, self.info[channel])

    def serve_one(self):
        """Receive one request on the shell socket and answer it; returns its header."""
        assert self.shell.poll(int(TIMEOUT * 1000)), "the request never reached the engine"
        raw = self.shell.recv_multipart()
        split = raw.index(DELIM)
        route, header = raw[:split], json.loads(raw[split + 2])
        parent = raw[split + 2]
        metadata = {"started": now_iso(), "dependencies_met": True, "engine": self.uuid, "status": "ok"}
        body = [dumps(self.signer.header("apply_reply")), parent, dumps(metadata), dumps({"status": "ok"})]
        self.shell.send_multipart([*route, DELIM, self.signer.sign(*body), *body])
        return header

    def close(self):
        self.stop.set()
        if self.heart.is_alive():
            self.heart.join(timeout=5)
        for s in (self.registration, self.shell):
            if s is not None:
                s.close(linger=0)


@pytest.mark.parametrize("channel", ["mux", "task"])
def test_request_waits_for_the_engines_connection(cluster, channel):
    engine = LateEngine(cluster)
    try:
        engine.register()
        rc = cluster.client
        herdtest.wait_until(lambda: engine.id in rc.ids, TIMEOUT, what="the engine's registration")

        info = cluster.controller.connection_info("client")
        client = RawPeer(f"{info['interface']}:{info[channel]}", info["key"])
        prefix = (engine.uuid.encode(),) if channel == "mux" else ()
        request = client.request("apply_request", prefix=prefix)

        # herdd has dispatched it to the engine (its queue or task count says so) while the
        # engine's shell socket is not even created: the send was refused.
        def dispatched():
            status = rc.queue_status(targets=engine.id, verbose=False)
            return status.get("queue", 0) + status.get("tasks", 0) == 1
        herdtest.wait_until(dispatched, TIMEOUT, what="the dispatch to the late engine")

        engine.connect_shell(channel)
        received = engine.serve_one()
        assert received["msg_id"] == request["msg_id"]
        reply, _ = client.recv_reply_to(request, TIMEOUT)
        assert reply["content"]["status"] == "ok"
        assert not engine.shell.poll(200), "the request was delivered twice"
        client.close()
    finally:
        engine.close()
