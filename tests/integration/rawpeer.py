"""A hand-driven ZeroMQ peer that speaks the Jupyter wire format itself
(spec section 2), signing with hmac/hashlib from the connection file's key,
so tests can send well-formed and deliberately broken messages."""

import hashlib
import hmac
import json
import os
import time
import uuid as uuidlib
from datetime import datetime, timezone

import zmq

DELIM = b"<IDS|MSG>"


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(obj):
    return json.dumps(obj).encode()


class RawPeer:
    """One DEALER connected to a controller socket, with its own session id."""

    def __init__(self, url, key, context=None):
        self.key = key.encode() if isinstance(key, str) else key
        self.session = str(uuidlib.uuid4())
        self.counter = 0
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(url)

    def close(self):
        self.socket.close(linger=0)

    # --- building -------------------------------------------------------------
    def header(self, msg_type):
        self.counter += 1
        return {"msg_id": f"{self.session}_{os.getpid()}_{self.counter}", "msg_type": msg_type,
                "username": "herdtest", "session": self.session, "date": now_iso(),
                "version": "5.3"}

    def sign(self, *json_frames):
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for frame in json_frames:
            mac.update(frame)
        return mac.hexdigest().encode()

    def frames(self, msg_type, content=None, metadata=None, parent=None, prefix=()):
        """A correctly signed message; returns (frames, header)."""
        header = self.header(msg_type)
        body = [dumps(header), dumps(parent or {}), dumps(metadata or {}), dumps(content or {})]
        return [*prefix, DELIM, self.sign(*body), *body], header

    # --- sending and receiving ------------------------------------------------
    def send(self, frames):
        self.socket.send_multipart(frames)

    def request(self, msg_type, content=None, prefix=(), metadata=None):
        frames, header = self.frames(msg_type, content, metadata=metadata, prefix=prefix)
        self.send(frames)
        return header

    def recv(self, timeout):
        """Next message as a dict (idents, header, parent, metadata, content,
        raw frames), or None if nothing arrives within timeout seconds."""
        if not self.socket.poll(int(timeout * 1000)):
            return None
        raw = self.socket.recv_multipart()
        split = raw.index(DELIM)
        idents, rest = raw[:split], raw[split + 1:]
        signature, body = rest[0], rest[1:5]
        assert hmac.compare_digest(signature, self.sign(*body)), "controller reply is badly signed"
        header, parent, metadata, content = (json.loads(f) for f in body)
        return {"idents": idents, "header": header, "parent": parent, "metadata": metadata,
                "content": content, "raw": raw}

    def recv_reply_to(self, header, timeout):
        """Collect messages until the reply whose parent is `header` arrives.
        Returns (reply, messages that arrived before it)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self.recv(max(left, 0))
            if msg is None:
                raise AssertionError(f"no reply to {header['msg_type']} {header['msg_id']} within "
                                     f"{timeout}s; got before it: {[m['header'] for m in before]}")
            if msg["parent"].get("msg_id") == header["msg_id"]:
                return msg, before
            before.append(msg)
