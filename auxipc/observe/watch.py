"""Watch the bus: bus notifications, completed sync calls and async events as records.

A ``Watcher`` subscribes on the broker's XPUB and proves its subscription with a
hello round trip before returning, so nothing published afterwards is missed.
Records are dicts with ``kind`` ('bus', 'call' or 'event') and readable fields.
"""

from __future__ import annotations

import os
import time
from collections import deque

import zmq

from auxipc.observe.client import Client
from auxipc.runtime_dir import endpoints
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog

TOPICS = (b"bus", b"trace", b"C:", b"P:")


class Watcher:
    def __init__(self, runtime_dir=None, topics=TOPICS, catalog: Catalog = CATALOG, timeout: float = 5.0):
        self.ep = endpoints(runtime_dir)
        self.catalog = catalog
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.ep.secure(self.sub)
        self.sub.connect(self.ep.sub)       # async events, runtimes' trace records
        self.sub.connect(self.ep.notify)    # the broker's notifications and call trace
        hello = b"hello:watch:" + os.urandom(4).hex().encode()
        for t in (*topics, hello):    # hello last: its echo proves the others are in place
            self.sub.setsockopt(zmq.SUBSCRIBE, t)
        # Both paths proven before returning: a hello published through the proxy, and
        # one the broker publishes on its own socket when asked (no slow joiner).
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        self.ep.secure(pub)
        pub.connect(self.ep.pub)
        deadline = time.monotonic() + timeout
        seen = 0
        try:
            with Client(runtime_dir, timeout=max(0.1, timeout)) as client:
                while seen < 2:
                    pub.send_multipart([hello, E.MAGIC])
                    client.ctl("echo", topic=hello.decode(), timeout=max(0.1, deadline - time.monotonic()))
                    while self.sub.poll(20):
                        frames = self.sub.recv_multipart()
                        if frames[0] == hello:
                            seen += 1
                    if seen >= 2:
                        break
                    seen = 0
                    if time.monotonic() > deadline:
                        raise AuxError(Errno.ENOTCONN, f"no broker publishing in {self.ep.where}")
        finally:
            pub.close(linger=0)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, hello)
        self.t0 = time.monotonic()
        self._queued: deque = deque()     # records of a message not yet returned (a batch of events)

    def close(self) -> None:
        self.sub.close(linger=0)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next(self, timeout: float) -> dict | None:
        """The next record, or None after ``timeout`` seconds."""
        if not self._queued:
            if not self.sub.poll(timeout * 1000):
                return None
            frames = self.sub.recv_multipart()
            try:
                self._queued.extend(self.records(frames))
            except AuxError as exc:
                return {"kind": "malformed", "ts": time.monotonic() - self.t0, "error": str(exc)}
        return self._queued.popleft()

    def until(self, *preds, timeout: float, on_record=None) -> list[dict]:
        """Read records (passing each to ``on_record``) until every predicate has been
        satisfied by one record, in any order (streams from different sockets interleave)."""
        deadline = time.monotonic() + timeout
        todo = list(preds)
        matched: list[dict] = []
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuxError(Errno.ETIMEDOUT, f"expected bus activity did not happen within {timeout:.1f} s")
            rec = self.next(remaining)
            if rec is None:
                continue
            if on_record:
                on_record(rec)
            for pred in todo:
                if pred(rec):
                    todo.remove(pred)
                    matched.append(rec)
                    break
        return matched

    def records(self, frames: list[bytes]) -> list[dict]:
        """The records of one message: one, or one per event of a batch."""
        topic = frames[0]
        msg, payload = E.decode(frames[1:])
        ts = time.monotonic() - self.t0
        if isinstance(msg, E.Uevent) and topic == b"bus":
            return [{"kind": "bus", "ts": ts, "seq": msg.seq, "action": msg.action, "dev": msg.dev,
                     "driver": msg.driver, "detail": msg.detail}]
        if isinstance(msg, E.Uevent) and msg.action != "CALL":
            # Faults, lockdep reports, atomic-context BUGs: from the broker or a runtime.
            return [{"kind": "trace", "ts": ts, "action": msg.action, "dev": msg.dev, "detail": msg.detail}]
        if isinstance(msg, E.Uevent):
            d = msg.detail
            return [{"kind": "call", "ts": ts, "dev": msg.dev, "event": d.get("event"), "from": d.get("from"),
                     "to": d.get("to"), "errno": d.get("errno", 0), "error": errno_name(d["errno"])
                     if d.get("errno") else None, "us": d.get("us"),
                     **({"lane": True} if d.get("lane") else {})}]     # served on the direct lane
        if isinstance(msg, E.AsyncEvent):
            items = E.decode_events(payload)
            return [self._event(topic, msg, ts, msg.seq + i // 2, items[i], items[i + 1])
                    for i in range(0, len(items), 2)]
        return [{"kind": "other", "ts": ts, "type": msg.TYPE.name}]

    def _event(self, topic: bytes, msg: E.AsyncEvent, ts: float, seq: int, ev: int, body: dict) -> dict:
        spec = self.catalog.get(ev)
        if spec is not None:
            try:
                body = spec.payload.from_wire(body).to_json()
            except AuxError:
                pass
        return {"kind": "event", "ts": ts, "dev": topic[2:].decode(errors="replace"),
                "direction": "parent->child" if topic[:1] == b"C" else "child->parent",
                "event": spec.name if spec else str(ev), "seq": seq, "inc": msg.inc, "payload": body}
