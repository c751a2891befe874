"""Fixtures of the wire tests: raw peers (tests/wire/rawpeer.py) on a private broker.

The broker is the project's (the ``bus`` fixture of tests/conftest.py starts it as a
process); everything the tests say to it goes through the raw peer, which knows
only what docs/protocol.md and docs/events.md say.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from tests.wire import rawpeer as W


class Ctl:
    """A control client: a DEALER that never registers (CTL needs no registration), on
    ``admin.sock`` (every op) or ``bus.sock`` (the read-only ones)."""

    def __init__(self, ctx: zmq.Context, root, admin: bool = True):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(W.Endpoints(root).admin if admin else W.Endpoints(root).bus)
        self._r = 0

    def __call__(self, op: str, payload=None, timeout: float = 10.0, **args) -> dict:
        self._r += 1
        self.sock.send(W.pack({"t": W.CTL, "r": self._r, "op": op, "args": args}, payload))
        deadline = time.monotonic() + timeout
        while True:
            if not self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise W.Timeout(f"control op {op}: no answer within {timeout} s")
            head = W.unpack(self.sock.recv())
            if head.get("r") == self._r:
                return head

    def query(self, op: str, **args) -> dict:
        res = self(op, **args)
        assert res.get("e", 0) == 0, f"control op {op}: {res}"
        return res["d"]

    def wait_uevent(self, action: str, timeout: float = 10.0, since: int = 0, **detail) -> dict:
        """Poll the broker's notification log (control op ``uevents``) until a match."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.query("uevents", since=since)["events"]:
                if ev["action"] == action and all(ev.get(k, ev["detail"].get(k)) == v for k, v in detail.items()):
                    return ev
            if time.monotonic() > deadline:
                raise W.Timeout(f"no uevent {action} {detail} within {timeout} s")
            time.sleep(0.02)

    def last_seq(self) -> int:
        return self.query("uevents", since=2**62)["last"]

    def close(self) -> None:
        self.sock.close(linger=0)


class Wire:
    """Raw peers and a control client on one bus; all closed at teardown."""

    def __init__(self, bus):
        self.bus, self.root = bus, bus.root
        self.ctx = zmq.Context()
        self.peers: list[W.RawPeer] = []
        self.ctl = Ctl(self.ctx, self.root)
        self.ctl_bus = Ctl(self.ctx, self.root, admin=False)

    def peer(self, role: str, name: str, **kw) -> W.RawPeer:
        p = W.RawPeer(self.ctx, self.root, role, name, **kw)
        self.peers.append(p)
        return p

    def parent(self, name: str = "rawp", join: bool = True, **kw) -> W.RawPeer:
        kw.setdefault("handles", [W.REQUEST_RESET, W.QSET_ADD, W.MAC_FILTER, W.VLAN_FILTER, W.SET_MAC,
                                  W.POST_CONFIG])
        kw.setdefault("subscribe", [f"P:{name}.".encode()])
        p = self.peer("parent", name, **kw)
        if join:
            p.join()
        return p

    def child(self, name: str = "rawc", match: str = "rawp.eth", join: bool = True, **kw) -> W.RawPeer:
        kw.setdefault("handles", [W.LINK_CHANGE, W.RESET_WARN, W.AFTER_MTU_CHANGE])
        kw.setdefault("subscribe", [f"C:{match}.".encode()])
        c = self.peer("child", name, **kw)
        if join:
            c.join()
        return c

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.ctl.close()
        self.ctl_bus.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def wire(bus):
    w = Wire(bus)
    yield w
    w.close()


def packed(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ---- the common start of a test: a bound device -------------------------------------------------------

DRIVER = "rawdrv"


def register_driver(c: W.RawPeer, name: str = DRIVER, id_table=("rawp.eth",), **flags) -> dict:
    fields = dict(name=name, id_table=list(id_table), probe=True, remove=True, shutdown=False,
                  handles=c.handles, task=f"{c.name}/main")
    fields.update(flags)
    return c.ok(W.DRV_REGISTER, **fields)


def add_and_probe(p: W.RawPeer, c: W.RawPeer, short: str = "eth", id: int = 0, release: bool = True,
                  probe_e: int = 0) -> tuple[int, str, dict]:
    """DEV_INIT + DEV_ADD by the parent; the child answers the PROBE. Returns (dev, name, bind)."""
    d = p.ok(W.DEV_INIT, name=short, id=id, release=release)
    dev, name = d["dev"], d["name"]
    r = p.next_r()
    p.send(W.DEV_ADD, r=r, dev=dev, task="rawp/main")
    probe = c.take_type(W.PROBE, dev=dev)
    assert probe["name"] == name and probe["driver"] == DRIVER
    assert probe["parent_handles"] == p.handles and probe["parent_schema"] == W.SCHEMA
    assert probe["adopt"] is False and probe["task"] == "rawp/main"
    c.answer(probe, probe_e)
    bind = None
    if probe_e == 0:
        # BIND reaches the parent before the RESULT of its DEV_ADD.
        bind = p.take(lambda h: h["t"] in (W.BIND, W.RESULT), what="BIND")
        assert bind["t"] == W.BIND, bind
    res = p.result(r)
    assert res["e"] == 0 and res["d"] == {"name": name, "driver": DRIVER if probe_e == 0 else None}
    return dev, name, bind


@pytest.fixture
def pair(wire):
    """A raw parent 'rawp' with device rawp.eth.0 bound to the raw child's driver."""
    p, c = wire.parent(), wire.child()
    register_driver(c)
    dev, name, bind = add_and_probe(p, c)
    return p, c, dev, name, bind
