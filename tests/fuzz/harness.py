"""The fuzz target: bytes -> a sequence of frames from several peers -> the broker's
message path (envelope decoder, control queries, ``Bus.handle``) with a fake clock.

Input format, so a mutation of one byte stays a mutation of one message::

    record := op:u8  length:u16be  frame[length]

``op & 7`` picks the sender (``SENDERS``; 7 feeds the frame to the subscriber
side's EVENT decoder instead); ``op >> 3`` advances the clock by
``(op >> 3) ** 2 * 10`` ms before the frame (timers and heartbeats fire).

The contract checked: whatever arrives, the broker answers with an errno
(``AuxError``) or handles it; any other exception is a crash. Every frame the
bus emits must decode again (the bus never sends what a peer would refuse).
"""

from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from types import SimpleNamespace

from proto import envelope as E
from proto.errno import AuxError
from auxipc.broker.bus import Bus
from auxipc.broker.control import Control

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
        if isinstance(msg, E.Ctl):
            try:
                self.ctl.handle(ident, msg, payload)
            except AuxError as exc:
                self.bus.reply(ident, msg.r, exc.errno, exc.message)
            return
        self.bus.handle(ident, msg, payload)

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.bus.tick()

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
            broker.frame(SENDERS[sender], frame)
            broker.drain()
        broker.advance(60.0)     # every deadline passes: each pending request is answered
        broker.drain()
    return broker
