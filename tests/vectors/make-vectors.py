#!/usr/bin/python3
"""Write wire-format test vectors signed by the real peer (jupyter_client's Session).

Run with Debian's interpreter (it has jupyter_client and pyzmq):

    /usr/bin/python3 tests/vectors/make-vectors.py tests/vectors

Each vector is a JSON file: the signing key, the multipart message as base64 frames
(routing ids, "<IDS|MSG>", signature, header, parent, metadata, content, buffers) and
the facts the C tests check (delimiter index, header fields, parent msg_id, buffer count).
The files are committed; rerun only to refresh them (dates and ids will change).
"""
import base64
import json
import os
import sys

from jupyter_client.session import Session

KEY = "e56bb563-3b291df5705e9e8c858be716"
# Longer than SHA-256's 64-byte block (HMAC hashes such keys first) and not ASCII.
LONG_KEY = "schlüssel-" + "k" * 80 + "-ключ"
SESSION_ID = "0a1b2c3d-4e5f60718293a4b5c6d7e8f9"
USERNAME = "herd-test"
# A libzmq-generated ROUTER id as the controller sees a client's DEALER.
CLIENT_ROUTING_ID = b"\x00k\x8bEg"


def make_session(key):
    return Session(key=key.encode("utf8"), signature_scheme="hmac-sha256",
                   session=SESSION_ID, username=USERNAME)


def frames_of(session, msg, ident=None, buffers=()):
    frames = session.serialize(msg, ident=ident)
    return frames + [bytes(b) for b in buffers]


def write_vector(outdir, name, description, key, msg, frames, buffers=()):
    delim = frames.index(b"<IDS|MSG>")
    header = msg["header"]
    vector = {
        "description": description,
        "key": key,
        "frames": [base64.b64encode(f).decode("ascii") for f in frames],
        "delim": delim,
        "expect": {
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "username": header["username"],
            "session": header["session"],
            "date": frames_header_date(frames, delim),
            "version": header["version"],
            "parent_msg_id": msg["parent_header"].get("msg_id", ""),
            "n_buffers": len(buffers),
        },
    }
    path = os.path.join(outdir, name + ".json")
    with open(path, "w", encoding="utf8") as fh:
        json.dump(vector, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print("wrote", path)


def frames_header_date(frames, delim):
    # The date string exactly as it is on the wire (Session.msg holds a datetime).
    return json.loads(frames[delim + 2])["date"]


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    session = make_session(KEY)

    execute = session.msg("execute_request",
                          content={"code": "a = 1\nprint(a)", "silent": False,
                                   "store_history": True, "user_expressions": {},
                                   "allow_stdin": False, "stop_on_error": True},
                          metadata={"targets": [0, 1]})
    write_vector(outdir, "execute_request", "client execute_request as the controller's ROUTER receives it",
                 KEY, execute, frames_of(session, execute, ident=[CLIENT_ROUTING_ID]))

    buffers = [b"\x80\x04\x95 pickled function \x00\xff", b"\x00\x01\x02 second buffer \xfe"]
    apply = session.msg("apply_request", content={},
                        metadata={"after": [], "follow": [], "timeout": None, "targets": [],
                                  "retries": 0})
    write_vector(outdir, "apply_request", "apply_request with two binary buffers, no routing ids",
                 KEY, apply, frames_of(session, apply, buffers=buffers), buffers)

    unicode_msg = session.msg("execute_request",
                              content={"code": "print('héllo wörld — 日本語 🐑')", "silent": False,
                                       "store_history": False, "user_expressions": {},
                                       "allow_stdin": False, "stop_on_error": True})
    write_vector(outdir, "non_ascii", "non-ASCII text emitted raw (ensure_ascii=False)",
                 KEY, unicode_msg, frames_of(session, unicode_msg, ident=[CLIENT_ROUTING_ID]))

    reply = session.msg("execute_reply",
                        content={"status": "ok", "execution_count": 1, "user_expressions": {}},
                        parent=execute,
                        metadata={"started": "2026-11-27T11:09:13.338760Z", "status": "ok",
                                  "engine": "0a1b2c3d-aaaaaaaaaaaaaaaaaaaaaaaa"})
    write_vector(outdir, "execute_reply", "reply with a parent header, routed back through two ids",
                 KEY, reply, frames_of(session, reply, ident=[b"engine-uuid", b"mux_out"]))

    long_key_session = make_session(LONG_KEY)
    query = long_key_session.msg("queue_request", content={"targets": None, "verbose": False})
    write_vector(outdir, "long_key", "hub query signed with a 100+ byte non-ASCII key",
                 LONG_KEY, query, frames_of(long_key_session, query, ident=[CLIENT_ROUTING_ID]))


if __name__ == "__main__":
    main()
