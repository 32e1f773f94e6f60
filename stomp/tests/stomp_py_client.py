"""Drives a STOMP server with stomp.py, the way an engine session goes: CONNECT with
heart-beats, SUBSCRIBE to a reply destination, SEND a JSON-RPC request with reply-to (and a
header full of characters that need escaping), wait for the MESSAGE, idle while heart-beats
flow, DISCONNECT with a receipt. Prints OK and exits 0 when every check holds.

Usage: stomp_py_client.py HOST PORT
"""

import json
import sys
import threading
import time

import stomp

REPLY_TO = "sdm.reply.py-1"
ODD = "a:b\\c\nd\re"


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []
        self.errors = []
        self.receipts = []
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.changed = threading.Condition()

    def _note(self, kind, value):
        with self.changed:
            getattr(self, kind).append(value)
            self.changed.notify_all()

    def on_message(self, frame):
        self._note("messages", frame)

    def on_error(self, frame):
        self._note("errors", frame)

    def on_receipt(self, frame):
        self._note("receipts", frame.headers.get("receipt-id"))

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_heartbeat_timeout(self):
        self.heartbeat_timeouts += 1

    def wait_for(self, kind, timeout=20):
        with self.changed:
            ok = self.changed.wait_for(lambda: getattr(self, kind), timeout)
        if not ok:
            fail("no %s within %ss" % (kind, timeout))
        return getattr(self, kind)[0]


def fail(why):
    print("FAIL: " + why, flush=True)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conn = stomp.Connection12([(host, port)], heartbeats=(1000, 1000))
    listener = Listener()
    conn.set_listener("check", listener)
    # VDSM knows CONNECT, not STOMP (stomp.py's default for 1.2).
    conn.connect(wait=True, with_connect_command=True)
    conn.subscribe(destination=REPLY_TO, id="sub-py", ack="auto")
    request = {"jsonrpc": "2.0", "id": "py-1", "method": "Host.getJobs", "params": {"job_type": "storage"}}
    conn.send(
        destination="jms.topic.vdsm_requests",
        body=json.dumps(request),
        headers={"reply-to": REPLY_TO, "x-escaped": ODD},
    )
    message = listener.wait_for("messages")
    h = message.headers
    check(h.get("destination") == REPLY_TO, "destination %r" % h.get("destination"))
    check(h.get("subscription") == "sub-py", "subscription %r" % h.get("subscription"))
    check(h.get("content-type") == "application/json", "content-type %r" % h.get("content-type"))
    check(h.get("x-echo") == ODD, "escaped header came back as %r" % h.get("x-echo"))
    body = message.body
    raw = body.encode("utf-8") if isinstance(body, str) else body
    check(int(h.get("content-length", -1)) == len(raw), "content-length %r for %d bytes" % (h.get("content-length"), len(raw)))
    reply = json.loads(raw)
    check(reply.get("id") == "py-1", "reply id %r" % reply.get("id"))
    check(reply["result"]["method"] == "Host.getJobs", "reply %r" % reply)
    check(reply["result"]["params"] == {"job_type": "storage"}, "reply %r" % reply)
    check(reply["result"]["escaped"] == ODD, "server decoded the header as %r" % reply["result"]["escaped"])
    # Idle while heart-beats go both ways.
    time.sleep(2.5)
    check(listener.heartbeats >= 1, "no heart-beat from the server")
    check(listener.heartbeat_timeouts == 0, "stomp.py missed the server's heart-beats")
    conn.disconnect(receipt="bye-py")
    receipt = listener.wait_for("receipts")
    check(receipt == "bye-py", "receipt %r" % receipt)
    check(not listener.errors, "ERROR frames: %r" % [e.body for e in listener.errors])
    print("OK", flush=True)


if __name__ == "__main__":
    main()
