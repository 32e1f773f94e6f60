"""A line-oriented shell over stomp.py (PyPI; a STOMP client nobody in this project wrote), for
sdm-tests to drive a real agent the way an engine does.

Reads one JSON command per line on stdin, answers one JSON object per line on stdout:
  {"op": "connect", "name": N, "port": P, "hb": [cx, cy], "tls": {"ca", "cert", "key"}|null}
  {"op": "subscribe", "name": N, "dest": D, "id": I}
  {"op": "unsubscribe", "name": N, "id": I}
  {"op": "send", "name": N, "dest": D, "body": TEXT, "headers": {...}}
  {"op": "wait", "name": N, "timeout": S, "dest": D?, "json_id": ID?, "method_prefix": P?}
      -> the first matching MESSAGE not yet taken: {"headers", "body"}
  {"op": "drain", "name": N} -> every MESSAGE not yet taken
  {"op": "stats", "name": N} -> heart-beats seen, heart-beat timeouts, ERROR bodies, receipts,
      whether connected
  {"op": "disconnect", "name": N, "receipt": R?}
  {"op": "sleep", "secs": S}
Failures answer {"error": TEXT}.
"""

import json
import sys
import threading
import time

import stomp


class Session(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []
        self.errors = []
        self.receipts = []
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.disconnected = False
        self.connected_headers = None
        self.changed = threading.Condition()

    def _note(self, fn):
        with self.changed:
            fn()
            self.changed.notify_all()

    def on_connected(self, frame):
        self._note(lambda: setattr(self, "connected_headers", dict(frame.headers)))

    def on_message(self, frame):
        body = frame.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        self._note(lambda: self.messages.append({"headers": dict(frame.headers), "body": body}))

    def on_error(self, frame):
        body = frame.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        self._note(lambda: self.errors.append(body))

    def on_receipt(self, frame):
        self._note(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_heartbeat(self):
        self._note(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_heartbeat_timeout(self):
        self._note(lambda: setattr(self, "heartbeat_timeouts", self.heartbeat_timeouts + 1))

    def on_disconnected(self):
        self._note(lambda: setattr(self, "disconnected", True))


conns = {}


def matches(m, cmd):
    if "dest" in cmd and m["headers"].get("destination") != cmd["dest"]:
        return False
    if "json_id" in cmd or "method_prefix" in cmd:
        try:
            v = json.loads(m["body"])
        except ValueError:
            return False
        if not isinstance(v, dict):
            return False
        if "json_id" in cmd and v.get("id") != cmd["json_id"]:
            return False
        if "method_prefix" in cmd and not str(v.get("method", "")).startswith(cmd["method_prefix"]):
            return False
    return True


def run(cmd):
    op = cmd["op"]
    if op == "sleep":
        time.sleep(cmd["secs"])
        return {}
    if op == "connect":
        port = cmd["port"]
        hb = tuple(cmd.get("hb", [0, 0]))
        c = stomp.Connection12([("127.0.0.1", port)], heartbeats=hb, reconnect_attempts_max=1)
        tls = cmd.get("tls")
        if tls:
            c.set_ssl(
                for_hosts=[("127.0.0.1", port)],
                key_file=tls["key"],
                cert_file=tls["cert"],
                ca_certs=tls["ca"],
            )
        s = Session()
        c.set_listener("shell", s)
        # VDSM knows CONNECT, not STOMP (stomp.py's default for 1.2).
        c.connect(wait=True, with_connect_command=True)
        conns[cmd["name"]] = (c, s)
        # stomp.py may return before its listeners have seen CONNECTED.
        with s.changed:
            s.changed.wait_for(lambda: s.connected_headers is not None, 10)
        return {"connected": s.connected_headers}
    c, s = conns[cmd["name"]]
    if op == "subscribe":
        c.subscribe(destination=cmd["dest"], id=cmd["id"], ack="auto")
        return {}
    if op == "unsubscribe":
        c.unsubscribe(id=cmd["id"])
        return {}
    if op == "send":
        c.send(destination=cmd["dest"], body=cmd["body"], headers=cmd.get("headers", {}))
        return {}
    if op == "wait":
        deadline = time.time() + cmd.get("timeout", 30)
        with s.changed:
            while True:
                for i, m in enumerate(s.messages):
                    if matches(m, cmd):
                        return s.messages.pop(i)
                left = deadline - time.time()
                if left <= 0:
                    return {"error": "no matching MESSAGE within %ss; have %r, errors %r"
                            % (cmd.get("timeout", 30), s.messages[-5:], s.errors)}
                s.changed.wait(left)
    if op == "drain":
        with s.changed:
            out, s.messages = s.messages, []
        return {"messages": out}
    if op == "stats":
        with s.changed:
            return {
                "heartbeats": s.heartbeats,
                "heartbeat_timeouts": s.heartbeat_timeouts,
                "errors": list(s.errors),
                "receipts": list(s.receipts),
                "connected": c.is_connected() and not s.disconnected,
            }
    if op == "disconnect":
        c.disconnect(receipt=cmd.get("receipt"))
        return {}
    return {"error": "unknown op %r" % op}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            out = run(json.loads(line))
        except Exception as e:  # answered, so the test sees what went wrong
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
