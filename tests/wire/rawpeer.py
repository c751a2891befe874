"""A bus peer written from docs/protocol.md and docs/events.md alone: raw pyzmq and
msgpack, no import of auxipc, proto, parent or child.

It is the spec's executable twin: every constant below is copied from the
documents, not from the code, so when the broker and the spec drift apart the
tests in this directory fail. It is deliberately plain (one thread per peer for
its heartbeats, everything else synchronous) and keeps every message it has not
consumed yet, so a test can wait for exactly the reply or request it expects.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import msgpack
import zmq

MAGIC = b"AUX1"

# Message types (docs/protocol.md, section 3).
REGISTER, UNREGISTER, HEARTBEAT, REREGISTER = 1, 2, 3, 4
DRV_REGISTER, DRV_UNREGISTER = 10, 11
DEV_INIT, DEV_ADD, DEV_DELETE, DEV_UNINIT, DEV_GET, DEV_PUT, DEV_PM = 20, 21, 22, 23, 24, 25, 26
LOCK, UNLOCK, DEV_FIND = 27, 28, 29
CALL, REQUEST, RESULT = 30, 31, 32
PROBE, REMOVE, SHUTDOWN, BIND, UNBIND, RELEASE, PM = 40, 41, 42, 43, 44, 45, 46
CTL, INJECT, FAULT, RESYNC = 50, 51, 52, 53
LANE_OFFER, LANE_GRANT, LANE_REVOKE = 54, 55, 56
EVENT, UEVENT = 60, 61

# Errnos as they travel (docs/protocol.md, section 6).
EPERM, ENOENT, ENODEV, EINVAL, EEXIST = -1, -2, -19, -22, -17
EBUSY, EDEADLK, EPROTO, EMSGSIZE, EOPNOTSUPP, ETIMEDOUT = -16, -35, -71, -90, -95, -110

# Events and enum values used here (docs/events.md).
LINK_CHANGE, RESET_WARN, AFTER_MTU_CHANGE, FW_EVENT = 1, 2, 5, 11
REQUEST_RESET, QSET_ADD, MAC_FILTER, VLAN_FILTER, SET_MAC, POST_CONFIG = 64, 65, 67, 68, 76, 77
RESET_FUNC, DUPLEX_FULL = 1, 2

SCHEMA = [1, 0]


def pack(head: dict, payload=None) -> bytes:
    """One message frame: MAGIC, then the header map; ``payload`` (an object) goes
    packed into ``p`` as bin."""
    head = dict(head)
    if payload is not None:
        head["p"] = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    return MAGIC + msgpack.packb(head, use_bin_type=True)


def unpack(frame: bytes) -> dict:
    """The header map of a frame; its ``p``, if any, unpacked under the key ``payload``."""
    assert frame[:4] == MAGIC, f"frame without the protocol tag: {frame[:8]!r}"
    head = msgpack.unpackb(frame[4:], raw=False)
    if "p" in head:
        head["payload"] = msgpack.unpackb(head["p"], raw=False)
    return head


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (docs/protocol.md, Registration)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


class Timeout(AssertionError):
    pass


class Endpoints:
    def __init__(self, root):
        root = str(root)
        self.bus = f"ipc://{root}/bus.sock"
        self.pub = f"ipc://{root}/pub.sock"
        self.sub = f"ipc://{root}/sub.sock"
        self.notify = f"ipc://{root}/notify.sock"
        self.admin = f"ipc://{root}/admin.sock"


class Heartbeats(threading.Thread):
    """Sends HEARTBEAT from the socket ``<id>#hb`` every interval and keeps the answers
    (the broker's echo, or REREGISTER). The socket lives and dies in this thread."""

    def __init__(self, ctx, endpoint: str, ident: bytes, ivl: float, epoch: int):
        super().__init__(daemon=True, name=f"hb-{ident.decode()}")
        self.ctx, self.endpoint, self.hb_ident, self.ivl, self.epoch = ctx, endpoint, ident + b"#hb", ivl, epoch
        self.answers: list[dict] = []
        self.halt = threading.Event()
        self.paused = threading.Event()

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.hb_ident)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        next_beat = 0.0
        try:
            while not self.halt.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.ivl
                    if not self.paused.is_set():
                        sock.send(pack({"t": HEARTBEAT, "epoch": self.epoch}))
                if sock.poll(max(1, int((next_beat - now) * 1000))):
                    self.answers.append(unpack(sock.recv()))
        finally:
            sock.close(linger=0)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


class RawPeer:
    """One peer: a DEALER on bus.sock, a PUB on pub.sock, a SUB on sub.sock, and a
    heartbeat thread. ``role`` is 'parent' or 'child'; ``name`` the REGISTER name."""

    def __init__(self, ctx: zmq.Context, root, role: str, name: str, handles=(), subscribe=(),
                 pid: int | None = None, start_time: int | None = None):
        self.ctx, self.ep, self.role, self.name = ctx, Endpoints(root), role, name
        self.handles = sorted(handles)
        self.subscribe_to = list(subscribe)
        self.pid = os.getpid() if pid is None else pid
        self.start_time = start_time_of(self.pid) if start_time is None else start_time
        self.ident = f"{role[0]}:{name}:{self.pid}:{os.urandom(3).hex()}".encode()
        self.inbox: collections.deque = collections.deque()    # messages from the broker not taken yet
        self.events: collections.deque = collections.deque()   # (topic, header) from the SUB not taken yet
        self._r = 0
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, self.ident)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(self.ep.bus)
        self.pub = self.sub = None
        self.hb: Heartbeats | None = None
        self.welcome: dict = {}

    # ---- plumbing ----

    def next_r(self) -> int:
        self._r += 1
        return self._r

    def send(self, t: int, payload=None, **fields) -> None:
        self.dealer.send(pack({"t": t, **fields}, payload))

    def send_raw(self, frame: bytes) -> None:
        self.dealer.send(frame)

    def _pull(self, timeout: float) -> bool:
        if self.dealer.poll(max(0, int(timeout * 1000))):
            self.inbox.append(unpack(self.dealer.recv()))
            return True
        return False

    def take(self, match, timeout: float = 5.0, what: str = "a message") -> dict:
        """The first message from the broker for which ``match(head)`` is true; the
        others stay in the inbox, in order."""
        deadline = time.monotonic() + timeout
        while True:
            for i, head in enumerate(self.inbox):
                if match(head):
                    del self.inbox[i]
                    return head
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{self.name}: no {what} within {timeout} s; inbox: {list(self.inbox)}")
            self._pull(min(remaining, 0.05))

    def take_type(self, t: int, timeout: float = 5.0, **fields) -> dict:
        return self.take(lambda h: h["t"] == t and all(h.get(k) == v for k, v in fields.items()),
                         timeout, f"message t={t} {fields}")

    def result(self, r: int, timeout: float = 5.0) -> dict:
        return self.take(lambda h: h["t"] == RESULT and h.get("r") == r, timeout, f"RESULT r={r}")

    def request(self, t: int, payload=None, timeout: float = 5.0, **fields) -> dict:
        """Send a request with a fresh ``r`` and wait for its RESULT."""
        r = self.next_r()
        self.send(t, payload, r=r, **fields)
        return self.result(r, timeout)

    def ok(self, t: int, payload=None, timeout: float = 5.0, **fields) -> dict:
        res = self.request(t, payload, timeout, **fields)
        assert res.get("e", 0) == 0, f"{self.name}: t={t} {fields} failed: {res}"
        return res.get("d", {})

    def answer(self, req: dict, e: int = 0, m: str = "", d: dict | None = None, payload=None) -> None:
        head = {"t": RESULT, "r": req["r"], "e": e, "m": m}
        if d is not None:
            head["d"] = d
        self.dealer.send(pack(head, payload))

    # ---- registration ----

    def register(self, restore: dict | None = None, **override) -> dict:
        head = dict(r=self.next_r(), role=self.role, name=self.name, pid=self.pid, start_time=self.start_time,
                    schema=SCHEMA, handles=self.handles)
        if restore is not None:
            head["restore"] = restore
        head.update(override)
        self.send(REGISTER, **head)
        res = self.result(head["r"])
        if res.get("e", 0) == 0:
            self.welcome = res["d"]
        return res

    def join(self, heartbeat: bool = True) -> dict:
        """REGISTER, the hello handshake, and the heartbeat thread: the peer is then on the bus."""
        res = self.register()
        assert res.get("e", 0) == 0, f"REGISTER failed: {res}"
        self.hello()
        if heartbeat:
            self.start_heartbeats()
        return self.welcome

    def hello(self, timeout: float = 5.0) -> None:
        """Subscribe to the event prefixes, then to ``hello:<id>`` last, and publish
        that topic until it comes back: the pub/sub path and the subscriptions are live."""
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(self.ep.pub)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.ep.sub)
        for prefix in self.subscribe_to:
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)
        topic = b"hello:" + self.ident
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + timeout
        while True:
            self.pub.send_multipart([topic, MAGIC])
            if self.sub.poll(20):
                frames = self.sub.recv_multipart()
                if frames[0] == topic:
                    assert frames[1] == MAGIC, f"hello body: {frames[1]!r}"
                    return
                self._keep_event(frames)
            if time.monotonic() > deadline:
                raise Timeout(f"{self.name}: hello never came back")

    def start_heartbeats(self) -> Heartbeats:
        w = self.welcome
        self.hb = Heartbeats(self.ctx, self.ep.bus, self.ident, w["hb_ivl_ms"] / 1000, w["epoch"])
        self.hb.start()
        return self.hb

    # ---- pub/sub ----

    def publish(self, topic: bytes, dev: int, seq: int, events: list, inc: int | None = None,
                epoch: int | None = None) -> None:
        """One EVENT message: ``events`` is [(code, payload map), ...], the first with ``seq``."""
        flat = [x for ev, payload in events for x in (ev, payload)]
        head = {"t": EVENT, "dev": dev, "seq": seq, "inc": self.welcome["inc"] if inc is None else inc,
                "epoch": self.welcome["epoch"] if epoch is None else epoch}
        self.pub.send_multipart([topic, pack(head, flat)])

    def _keep_event(self, frames: list) -> None:
        if frames[0].startswith(b"hello:"):
            return
        self.events.append((frames[0], unpack(frames[1])))

    def next_event(self, timeout: float = 5.0) -> tuple[bytes, dict]:
        deadline = time.monotonic() + timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{self.name}: no async event within {timeout} s")
            if self.sub.poll(int(min(remaining, 0.05) * 1000) + 1):
                self._keep_event(self.sub.recv_multipart())
        return self.events.popleft()

    # ---- teardown ----

    def close(self) -> None:
        if self.hb is not None:
            self.hb.stop()
            self.hb = None
        for sock in (self.dealer, self.pub, self.sub):
            if sock is not None:
                sock.close(linger=0)
