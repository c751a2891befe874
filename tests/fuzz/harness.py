"""The fuzz target: bytes -> a sequence of frames from several peers -> the broker's
message path (envelope decoder, control queries, ``Bus.handle``) with a fake clock.

Input format, so a mutation of one byte stays a mutation of one message::

    record := op:u8  length:u16be  frame[length]

``op & 7`` picks the sender (``SENDERS``; 7 feeds the frame to the subscriber
side's EVENT decoder instead); ``op >> 3`` advances the clock by
``(op >> 3) ** 2 * 10`` ms before the frame (timers and heartbeats fire).
A frame whose first byte is 0 is a *recipe* instead (``recipe``): a message type
and, per declared field, a choice among values near the rule (valid, at the
bounds, of the wrong type, nested too deep), so mutations explore the bus's
logic rather than msgpack's syntax.

The contract checked: whatever arrives, the broker answers with an errno
(``AuxError``) or handles it; any other exception is a crash. Every frame the
bus emits must decode again (the bus never sends what a peer would refuse), and
after every message no reference count is negative and no lock is held by a
peer that is gone (``check``).
"""

from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from types import SimpleNamespace

from auxipc.broker.bus import Bus
from auxipc.broker.control import Control
from proto import envelope as E
from proto.control import CTL_ARGS
from proto.errno import AuxError
from proto.schema import Array, Bool, Field, Int, Map, Nested, Str

P, C, C2 = b"p:ixd", b"c:idpf", b"c:other"
SENDERS = (P, C, C2, P + b"#hb", C + b"#hb", b"cli", b"x:stranger")
EVENTS_SIDE = 7
MAX_RECORDS = 256


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def records(data: bytes):
    """(op, frame) pairs of an input; a truncated last record is cut to what is there."""
    i, n = 0, 0
    while i < len(data) and n < MAX_RECORDS:
        op = data[i]
        length = int.from_bytes(data[i + 1:i + 3], "big")
        frame = data[i + 3:i + 3 + length]
        i += 3 + length
        n += 1
        yield op, frame


def record(op: int, frame: bytes) -> bytes:
    return struct.pack(">BH", op, len(frame)) + frame


_TYPES = sorted(E.header_types().items())
_NAMES = ["", "ixd", "idpf", "eth", "rdma", "ixd.eth", "ixd.eth.0", "ixd.rdma.1", "idpf_eth", "rtnl", "mutex:x",
          "a", "b", "*", "parent", "child", "suspend", "resume", "RESET_WARN", "SET_MAC", "LINK_CHANGE", "hello:x",
          "add", "ls", "clear", "kill", "handler", "message", "probe", "remove", "drop", "delay", "errno", "EIO"]
_DEEP = "@deep@"
_PAYLOADS = [None, E.packb({"reset_type": 1}), E.packb({"addr": b"\x02" * 6}), E.packb({}),
             E.packb({"addr": b"\x02" * 6, "filter_id": 1}), E.packb({"up": True}), b"\xc1", E.packb([1, {}])]


def _palette(f: Field) -> list:
    """Values worth trying for one declared field."""
    wrong = [None, "x", -1, 1.5, [], {}, _DEEP]
    if isinstance(f, Int):
        return [0, 1, 2, 3, 4, 5, 6, 100, f.min, f.max, f.max + 1, 2**64 - 1, *wrong]
    if isinstance(f, Bool):
        return [True, False, 0, *wrong]
    if isinstance(f, Str):
        return [*f.choices, *_NAMES, "x" * (f.max_len + 1), 5, *wrong]
    if isinstance(f, Array):
        item = _palette(f.item)
        return [[], [item[1]], [item[0], item[1]], [item[2]] * 3, list(range(f.length or 2)), *wrong]
    if isinstance(f, Nested):
        return [f.struct.example().to_wire(), {}, {"bound": [{"name": "ixd.eth.0", "driver": "idpf_eth", "refs": 1}]},
                {"bound": [{"name": "ixd.eth.0", "refs": "x"}]}, *wrong]
    if isinstance(f, Map):
        args = [cls.example().to_wire() for cls in CTL_ARGS.values()]
        rules = [{"action": "add", "rule": {"kind": "message", "target": "*", "action": action, "delay_ms": 30,
                                            "count": 2, "probability": 0.7}}
                 for action in ("drop", "delay", "duplicate", "reorder", "corrupt")]
        return [{}, *args, *rules, {"action": "add", "rule": {"kind": "kill", "target": "idpf", "point": "probe"}},
                {"device": "ixd.eth.0", "driver": "idpf_eth", "event": "RESET_WARN", "from": "parent"},
                {"bound": 3}, {"since": "x"}, *wrong]
    return wrong


def recipe(data: bytes) -> bytes:
    """The frame a recipe describes: ``data[0]`` picks the message type, each next byte
    a field's value from its palette (past the end: the field is left out), the byte
    after the fields the payload ``p``."""
    t, cls = _TYPES[data[0] % len(_TYPES)] if data else _TYPES[0]
    head = {"t": t}
    picks = iter(data[1:])
    for name, f in cls.fields.items():
        pick = next(picks, None)
        if pick is None:
            break
        if pick != 255:                    # 255: leave the field out
            palette = _palette(f)
            head[name] = palette[pick % len(palette)]
    p = next(picks, None)
    if p is not None and _PAYLOADS[p % len(_PAYLOADS)] is not None:
        head["p"] = _PAYLOADS[p % len(_PAYLOADS)]
    # _DEEP: a value nested past every bound, which msgpack would not pack
    return E.MAGIC + E.packb(head).replace(E.packb(_DEEP), b"\x91" * 200 + b"\x00")


@contextmanager
def no_signals():
    """Signals the bus would send (control ``signal``) are recorded, not sent: the
    fuzzer may name any pid, this one included."""
    sent, real = [], os.kill
    os.kill = lambda pid, sig: sent.append((pid, sig))
    try:
        yield sent
    finally:
        os.kill = real


class Broker:
    """The broker's message path without sockets (what ``server.Broker.on_frames`` does)."""

    def __init__(self):
        self.clock = Clock()
        self.bus = Bus(self.clock, epoch=7, hb_ivl=0.1, hb_liveness=3)
        self.ctl = Control(SimpleNamespace(bus=self.bus))

    def frame(self, ident: bytes, frame: bytes) -> None:
        try:
            msg, payload = E.decode([frame])
        except AuxError as exc:
            self.bus.reply(ident, 0, exc.errno, exc.message)
            return
        self.ctl.route(ident, msg, payload)

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.bus.tick()

    def check(self) -> None:
        """The invariants cheap enough to check after every message."""
        for lock in self.bus.lockdep.named.values():
            owner = lock.owner
            assert owner is None or owner.peer is None or owner.peer.alive, \
                f"{lock.name} held by {owner.peer.label}, which is gone"
        for dev in self.bus.devices.values():
            assert all(n > 0 for n in dev.refs.values()), f"{dev.name}: refs {dict(dev.refs)}"

    def drain(self) -> list:
        """What the bus sent, each frame decoded again (raises if one does not decode)."""
        out = []
        for ident, frames in self.bus.outbox:
            out.append((ident, *E.decode(frames)))
        for frames in self.bus.published:
            if frames[1:] != [E.MAGIC]:        # a hello echo is the bare MAGIC
                E.decode(frames[1:])
        self.bus.outbox, self.bus.published = [], []
        return out


def run(data: bytes) -> Broker:
    """Feed one input; raises anything but AuxError that the message path lets out."""
    broker = Broker()
    with no_signals():
        for op, frame in records(data):
            if op >> 3:
                broker.advance((op >> 3) ** 2 * 0.01)
            sender = op & 7
            if sender == EVENTS_SIDE:
                try:
                    E.decode_events(frame)
                except AuxError:
                    pass
                continue
            if frame[:1] == b"\x00":
                frame = recipe(frame[1:])
            broker.frame(SENDERS[sender], frame)
            broker.drain()
            broker.check()
        broker.bus.shutdown_all(lambda: None)     # what the broker does when it stops
        broker.advance(60.0)     # every deadline passes: each pending request is answered
        broker.drain()
        broker.check()
    return broker
