"""Seed inputs for the fuzzer: well-formed sessions, recorded while a real bus runs
them (so the request ids in the answers are the ones the bus handed out). Mutations
of a valid session reach far deeper into the bus than random bytes do."""

from __future__ import annotations

import random

from proto import envelope as E
from proto.events import Event

from .harness import C2, SENDERS, Broker, C, P, no_signals, record


class Session:
    def __init__(self):
        self.broker = Broker()
        self.data = b""
        self.inbox: dict[bytes, list] = {}

    def send(self, ident: bytes, msg: E.Header, payload=None, advance_op: int = 0) -> None:
        frame = E.encode(msg, payload)[0]
        op = SENDERS.index(ident) | advance_op << 3
        self.data += record(op, frame)
        if advance_op:
            self.broker.advance(advance_op ** 2 * 0.01)
        self.broker.frame(ident, frame)
        for who, m, _p in self.broker.drain():
            self.inbox.setdefault(who, []).append(m)

    def answer(self, ident: bytes, kind, e: int = 0, payload=None) -> None:
        """Answer every request of type ``kind`` waiting for ``ident``."""
        waiting = self.inbox.get(ident, [])
        for m in [m for m in waiting if isinstance(m, kind)]:
            waiting.remove(m)
            self.send(ident, E.Result(r=m.r, e=e), payload)


def bound_session(release: bool = True) -> Session:
    s = Session()
    s.send(P, E.Register(r=1, role="parent", name="ixd", pid=4242, start_time=1, schema=(1, 0),
                         handles=(int(Event.SET_MAC), int(Event.REQUEST_RESET))))
    s.send(C, E.Register(r=1, role="child", name="idpf", pid=4343, start_time=1, schema=(1, 0),
                         handles=(int(Event.RESET_WARN),),
                         restore={"bound": [{"name": "ixd.eth.0", "driver": "idpf_eth", "refs": 1}]}))
    s.answer(P, E.Fault)
    s.answer(C, E.Fault)
    s.send(C, E.DrvRegister(r=2, name="idpf_eth", id_table=("ixd.eth",), probe=True, remove=True,
                            handles=(int(Event.RESET_WARN),), task="t1"))
    s.send(P, E.DevInit(r=3, name="eth", id=0, release=release))
    s.send(P, E.DevAdd(r=4, dev=1, task="add"))
    s.answer(C, E.Probe)
    return s


def sessions() -> dict[str, bytes]:
    with no_signals():
        return _sessions()


def _sessions() -> dict[str, bytes]:
    out = {}
    s = bound_session()
    s.send(P, E.Call(r=5, dev=1, ev=Event.RESET_WARN, timeout_ms=100, task="rst"), {"reset_type": 1})
    s.answer(C, E.Request, payload={})
    s.send(C, E.Call(r=6, dev=1, ev=Event.SET_MAC, timeout_ms=100), {"addr": b"\x02" * 6})
    s.answer(P, E.Request, payload={"addr": b"\x02" * 6, "filter_id": 1})
    s.send(C, E.DevGet(r=7, dev=1))
    s.send(C, E.DevPut(r=8, dev=1))
    s.send(P, E.DevPm(r=9, dev=1, op="suspend"))
    s.answer(C, E.Pm)
    s.send(P + b"#hb", E.Heartbeat(epoch=7), advance_op=3)
    s.send(C, E.Resync(dev=1))
    s.send(P, E.DevDelete(r=10, dev=1))
    s.answer(C, E.Remove)
    s.send(P, E.DevUninit(r=11, dev=1))
    s.send(C, E.DrvUnregister(r=12, name="idpf_eth"))
    s.send(C, E.Unregister(r=13))
    out["lifecycle"] = s.data

    s = bound_session()
    s.send(P, E.LockReq(r=20, name="rtnl", task="a", timeout_ms=100))
    s.send(C, E.LockReq(r=21, name="rtnl", task="b", timeout_ms=100, stack=("a",)))
    s.send(P, E.LockReq(r=22, name="rtnl", task="a", timeout_ms=100))
    s.send(P, E.UnlockReq(r=23, name="rtnl", task="a"))
    s.send(C, E.UnlockReq(r=24, name="rtnl", task="b"))
    s.send(C2, E.Register(r=1, role="child", name="other", pid=4444, start_time=1, schema=(1, 0)))
    s.send(P, E.Call(r=25, dev=1, ev=Event.RESET_WARN, timeout_ms=50), {"reset_type": 1}, advance_op=9)
    out["locks"] = s.data

    s = bound_session(release=False)
    for r, (op, args) in enumerate([
            ("ping", {}), ("ls", {}), ("uevents", {"since": 0}), ("echo", {"topic": "hello:x"}),
            ("fault", {"action": "add", "rule": {"kind": "message", "target": "idpf", "action": "drop",
                                                 "count": 1, "probability": 0.5, "seed": 3}}),
            ("fault", {"action": "add", "rule": {"kind": "handler", "target": "*", "action": "errno",
                                                 "errno": "EIO", "event": "RESET_WARN"}}),
            ("fault", {"action": "add", "rule": {"kind": "kill", "target": "ixd", "point": "probe",
                                                 "signal": "TERM"}}),
            ("fault", {"action": "ls"}), ("fault", {"action": "clear", "target": "idpf"}),
            ("send", {"device": "ixd.eth.0", "event": "RESET_WARN", "from": "parent", "timeout_ms": 100}),
            ("unbind", {"device": "ixd.eth.0"}), ("bind", {"device": "ixd.eth.0", "driver": "idpf_eth"}),
            ("signal", {"target": "idpf", "signal": "STOP"})], start=30):
        s.send(SENDERS[5], E.Ctl(r=r, op=op, args=args), {"reset_type": 1} if op == "send" else None)
        s.answer(P, E.Inject)
        s.answer(C, E.Remove)
        s.answer(C, E.Probe)
    s.send(C, E.Unregister(r=50), advance_op=31)
    out["control"] = s.data

    # A bound device, then recipes (harness.recipe) drawn at random: a start the fuzzer
    # mutates field by field.
    s = bound_session()
    rnd = random.Random(13)
    for _ in range(60):
        picks = bytes(rnd.randrange(256) for _ in range(rnd.randrange(2, 10)))
        s.data += record(rnd.choice((0, 1, 2, 5)) | rnd.choice((0, 0, 0, 1, 4)) << 3, b"\x00" + picks)
    out["recipes"] = s.data
    return out
