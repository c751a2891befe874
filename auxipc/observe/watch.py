"""Watch the bus: bus notifications, completed sync calls and async events as records,
in the order they happened.

A ``Watcher`` subscribes on the broker's XPUBs and proves its subscription with a
hello round trip before returning, so nothing published afterwards is missed. It
also subscribes to ``watcher:<name>:<pid>``, a topic nothing publishes: the broker
sees it and answers ``auxipc wait watcher [NAME]``.

Records are dicts with ``kind`` ('bus', 'call', 'event', 'trace') and readable
fields, and the sender's stamp: ``mono_ns`` (its CLOCK_MONOTONIC when it sent the
message), ``origin`` (``broker`` or ``#<incarnation>`` of a peer), ``src_seq``
(that sender's sequence) and ``ts``, seconds since the bus started (the broker's
time zero): one clock for ``monitor`` and ``trace``.

Causal order. Bus notifications leave from the broker's socket, async events
through its proxy: the two streams reach a watcher in either order. Records wait
in a reorder buffer and leave by stamp once ``window`` seconds passed their stamp
(every process of a bus on one host reads one CLOCK_MONOTONIC), so a record that
took less than the window to arrive takes its place; one that took longer leaves
at once with ``late: true``. One sender's records stay in its own order (its
stamps grow with its sequence). Over TCP the watcher's clock is another host's:
records wait ``window`` after they arrive instead, and stamps of processes on
different hosts do not compare (docs/multihost.md).
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import time

import zmq

from auxipc.observe.client import Client
from auxipc.runtime_dir import endpoints
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog

TOPICS = (b"bus", b"trace", b"C:", b"P:")
WINDOW = 0.03            # seconds a record waits for an earlier one still in flight
NAME_TOPIC = b"watcher:"
BROKER = "broker"
_PEER_INC = re.compile(r"^(?:parent|child) .*#(\d+)$")


def name_topic(name: str) -> bytes:
    return NAME_TOPIC + f"{name}:{os.getpid()}".encode()


class Reorder:
    """The reorder buffer (pure: the caller reads the clock). ``push`` a record with its
    stamp and the time it is due to leave; ``pop`` the earliest-stamped one once due
    (or at once, ``force``). A record that leaves after a later-stamped one, or after
    a later one of its own sender, is marked ``late``."""

    def __init__(self):
        self._heap: list = []                 # (stamp, arrival, due, record)
        self._arrival = itertools.count()
        self._released_ns = 0                 # the latest stamp released
        self._last_seq: dict[str, int] = {}   # origin -> the last src_seq released

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, rec: dict, due_ns: int) -> None:
        heapq.heappush(self._heap, (rec["mono_ns"], next(self._arrival), due_ns, rec))

    def due(self) -> int | None:
        """When the next record may leave (None: the buffer is empty)."""
        return self._heap[0][2] if self._heap else None

    def first_stamp(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop(self, now_ns: int, force: bool = False) -> dict | None:
        if not self._heap or (not force and self._heap[0][2] > now_ns):
            return None
        stamp, _, _, rec = heapq.heappop(self._heap)
        origin, seq = rec.get("origin"), rec.get("src_seq") or 0
        if stamp < self._released_ns or (seq and seq < self._last_seq.get(origin, 0)):
            rec["late"] = True      # arrived after later records had left: out of place
        self._released_ns = max(self._released_ns, stamp)
        if seq:
            self._last_seq[origin] = max(seq, self._last_seq.get(origin, 0))
        return rec


class Watcher:
    def __init__(self, runtime_dir=None, topics=TOPICS, catalog: Catalog = CATALOG, timeout: float = 5.0,
                 name: str = "watch", window: float = WINDOW):
        self.ep = endpoints(runtime_dir)
        self.catalog = catalog
        self.name = name
        self.window_ns = int(window * 1e9)
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
        self._early: list = []     # messages that came while proving the name: kept
        try:
            with Client(runtime_dir, timeout=max(0.1, timeout)) as client:
                started = self._prove(client, hello, pub, 2, deadline)
                # Named only once subscribed: 'auxipc wait watcher NAME' then means "nothing
                # published from now on is missed". The broker takes the name in when it
                # echoes this second hello (its subscriptions are read right after).
                hello2 = b"hello:named:" + os.urandom(4).hex().encode()   # not prefixed by the first
                self.sub.setsockopt(zmq.SUBSCRIBE, name_topic(name))
                self.sub.setsockopt(zmq.SUBSCRIBE, hello2)
                self._prove(client, hello2, None, 1, deadline)
                self.sub.setsockopt(zmq.UNSUBSCRIBE, hello2)
        except BaseException:
            self.sub.close(linger=0)
            pub.close(linger=0)
            self.ctx.term()
            raise
        pub.close(linger=0)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, hello)
        self.local = not self.ep.remote
        # The bus's time zero on the broker's clock (a broker that does not say: this watcher's start)
        self.started_ns = started if isinstance(started, int) else time.monotonic_ns()
        self.t0 = time.monotonic()
        self.buffer = Reorder()
        for frames, arrived in self._early:
            self._ingest(frames, arrived)
        del self._early

    def _prove(self, client: Client, hello: bytes, pub, paths: int, deadline: float):
        """Echo ``hello`` until it came back on ``paths`` paths in one round (the broker's
        socket, and through the proxy when ``pub`` is given); the broker's time zero."""
        while True:
            if pub is not None:
                pub.send_multipart([hello, E.MAGIC])
            result, _ = client.ctl("echo", topic=hello.decode(), timeout=max(0.1, deadline - time.monotonic()))
            seen = 0
            while self.sub.poll(20):
                frames = self.sub.recv_multipart()
                if frames[0] == hello:
                    seen += 1
                elif pub is None and not frames[0].startswith(b"hello:"):   # subscribed already
                    self._early.append((frames, time.monotonic_ns()))
            if seen >= paths:
                return result.d.get("started_ns")
            if time.monotonic() > deadline:
                raise AuxError(Errno.ENOTCONN, f"no broker publishing in {self.ep.where}")

    def close(self) -> None:
        self.sub.close(linger=0)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the merge -----------------------------------------------------------------

    def since_start(self, mono_ns: int) -> float:
        """A CLOCK_MONOTONIC stamp as seconds since the bus started (what records show as ``ts``)."""
        return round((mono_ns - self.started_ns) / 1e9, 9)

    def _take(self) -> None:
        """Move every message waiting on the socket into the reorder buffer."""
        while self.sub.poll(0):
            frames = self.sub.recv_multipart()
            if not frames[0].startswith(b"hello:"):     # else a second echo of the subscription's proof
                self._ingest(frames, time.monotonic_ns())

    def _ingest(self, frames: list[bytes], now: int) -> None:
        try:
            recs = self.records(frames, now)
        except AuxError as exc:
            recs = [{"kind": "malformed", "mono_ns": now, "ts": self.since_start(now), "origin": "?",
                     "src_seq": 0, "error": str(exc)}]
        for rec in recs:
            self.buffer.push(rec, (rec["mono_ns"] if self.local else now) + self.window_ns)

    def next(self, timeout: float) -> dict | None:
        """The next record in causal order, or None after ``timeout`` seconds. A record
        leaves once the reorder window passed its stamp; ``timeout`` 0 takes whatever
        arrived, each in its place among the others (``Harness.drain``)."""
        deadline = time.monotonic_ns() + int(max(timeout, 0.0) * 1e9)
        while True:
            self._take()
            now = time.monotonic_ns()
            rec = self.buffer.pop(now, force=timeout <= 0)
            if rec is not None:
                return rec
            if now >= deadline:
                return None
            due = self.buffer.due()
            wait = (deadline if due is None else min(deadline, due)) - now
            self.sub.poll(max(1, -(-wait // 1_000_000)))

    def settle(self) -> list[dict]:
        """Every record stamped until now, in order: waits the reorder window for those
        still in flight. What a timeline calls before it starts a new step."""
        now = time.monotonic_ns()
        until = now + self.window_ns
        while (left := until - time.monotonic_ns()) > 0:
            self.sub.poll(max(1, -(-left // 1_000_000)))
            self._take()
        self._take()
        out = []
        while (first := self.buffer.first_stamp()) is not None and first <= now:
            out.append(self.buffer.pop(now, force=True))
        return out

    def until(self, *preds, timeout: float, on_record=None) -> list[dict]:
        """Read records (passing each to ``on_record``) until every predicate has been
        satisfied by one record, in any order."""
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

    # ---- decoding ------------------------------------------------------------------

    def _stamp(self, msg, origin: str, arrived_ns: int) -> dict:
        """The record fields of a message's stamp; an unstamped one (an older sender) is
        stamped with its arrival."""
        mono = msg.ts_ns or arrived_ns
        return {"ts": self.since_start(mono), "mono_ns": mono, "origin": origin, "src_seq": msg.src_seq}

    def records(self, frames: list[bytes], arrived_ns: int | None = None) -> list[dict]:
        """The records of one message: one, or one per event of a batch."""
        arrived_ns = time.monotonic_ns() if arrived_ns is None else arrived_ns
        topic = frames[0]
        msg, payload = E.decode(frames[1:])
        if isinstance(msg, E.Uevent) and topic == b"bus":
            return [{"kind": "bus", **self._stamp(msg, BROKER, arrived_ns), "seq": msg.seq, "action": msg.action,
                     "dev": msg.dev, "driver": msg.driver, "detail": msg.detail}]
        if isinstance(msg, E.Uevent) and msg.action != "CALL":
            # Faults, lockdep reports, atomic-context BUGs, hardware changes: from the broker or a runtime.
            peer = _PEER_INC.match(str(msg.detail.get("peer", "")))
            origin = f"#{peer.group(1)}" if peer else BROKER
            return [{"kind": "trace", **self._stamp(msg, origin, arrived_ns), "action": msg.action, "dev": msg.dev,
                     "detail": msg.detail}]
        if isinstance(msg, E.Uevent):
            d = msg.detail
            # a call served on a direct lane is recorded, and stamped, by its callee
            callee = _PEER_INC.match(str(d.get("to", ""))) if d.get("lane") else None
            origin = f"#{callee.group(1)}" if callee else BROKER
            return [{"kind": "call", **self._stamp(msg, origin, arrived_ns), "dev": msg.dev, "event": d.get("event"),
                     "from": d.get("from"), "to": d.get("to"), "errno": d.get("errno", 0),
                     "error": errno_name(d["errno"]) if d.get("errno") else None, "us": d.get("us"),
                     **({"lane": True} if d.get("lane") else {})}]     # served on the direct lane
        if isinstance(msg, E.AsyncEvent):
            items = E.decode_events(payload)
            stamp = self._stamp(msg, f"#{msg.inc}", arrived_ns)
            return [self._event(topic, msg, stamp, msg.seq + i // 2, items[i], items[i + 1])
                    for i in range(0, len(items), 2)]
        now = arrived_ns
        return [{"kind": "other", "ts": self.since_start(now), "mono_ns": now, "origin": "?", "src_seq": 0,
                 "type": msg.TYPE.name}]

    def _event(self, topic: bytes, msg: E.AsyncEvent, stamp: dict, seq: int, ev: int, body: dict) -> dict:
        spec = self.catalog.get(ev)
        if spec is not None:
            try:
                body = spec.payload.from_wire(body).to_json()
            except AuxError:
                pass
        return {"kind": "event", **stamp, "dev": topic[2:].decode(errors="replace"),
                "direction": "parent->child" if topic[:1] == b"C" else "child->parent",
                "event": spec.name if spec else str(ev), "seq": seq, "inc": msg.inc, "payload": body}
