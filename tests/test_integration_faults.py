"""Faults: killed, stopped and slow peers; malformed frames; a second broker; bad
runtime dirs: what ZeroMQ does not do for us (no delivery report, no peer death notice), done here.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from auxipc.observe.client import Client
from auxipc.procfs import process_start_time
from proto import envelope as E
from proto.events import Event

pytestmark = pytest.mark.timeout(30)

DEV = {"reset_type": "DEV"}


class Callers:
    """``n`` concurrent control clients, each sending one event; results with timestamps."""

    def __init__(self, root, n, device, event, side, payload, timeout):
        self.results: list = [None] * n
        self.threads = [threading.Thread(target=self._run, args=(i, root, device, event, side, payload, timeout))
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i, root, device, event, side, payload, timeout):
        try:
            with Client(root) as c:
                out = c.send_event(device, event, side, payload, timeout)
        except Exception as exc:   # reported by join(), never lost in a thread
            out = {"error": f"raised {exc!r}"}
        self.results[i] = (time.monotonic(), out)

    def join(self, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a caller hangs"
        return self.results


# ---- 9. SIGKILL with calls pending -----------------------------------------------------------

def _kill_child_with_calls_pending(bus, n: int) -> None:
    """``n`` sync calls pending on a child (one in its handler, the rest queued behind
    device_lock); SIGKILL: every caller gets -ENODEV within 2 s, the device is
    unbound, nothing is left pending or locked and the broker serves on."""
    bus.parent(AXT_DEVS="eth:0")
    child = bus.child(AXT_IDS="tp.eth", AXT_SLOW=25)
    # A 4 s deadline: if the bus loses a call, the test still ends quickly (-ETIMEDOUT).
    callers = Callers(bus.root, n, "tp.eth.0", "RESET_WARN", "parent", DEV, 4.0)
    child.wait_record("enter", dev="tp.eth.0")
    bus.wait_ls(lambda s: (d := bus.device("tp.eth.0", s)) and d["queued"] == n - 1 and d["locked_by"])

    t_kill = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    results = callers.join(10)
    answers = [(round(t_done - t_kill, 2), out["error"]) for t_done, out in results]
    assert all(error == "ENODEV" and took < 2.0 for took, error in answers), \
        f"(seconds after the kill, errno) of each caller: {answers}"

    dead = bus.wait_uevent("PEER_DEAD", pid=child.pid)
    # Declared dead after the kill (never for its slow handler), from the disconnect
    # or, if the process was still exiting then, from its missing heartbeats.
    assert dead["ts"] >= t_kill, dead
    assert "exited" in dead["detail"]["reason"] or "no heartbeat" in dead["detail"]["reason"], dead
    snap = bus.ls()
    dev = bus.device("tp.eth.0", snap)
    assert (dev["bind"], dev["driver"], dev["queued"], dev["locked_by"]) == ("unbound", None, 0, None)
    assert snap["pending"] == 0 and snap["drivers"] == []
    assert bus.peer(child.pid, snap) is None
    assert bus.actions("tp.eth.0")[-1] == "UNBIND"
    assert bus.ping()
    out = bus.client.send_event("tp.eth.0", "RESET_WARN", "parent", DEV, 5.0)
    assert out["error"] == "ENODEV", out


def test_sigkill_child_fails_the_call_in_its_handler_at_once(bus):
    _kill_child_with_calls_pending(bus, 1)


def test_sigkill_child_fails_queued_calls_at_once(bus):
    _kill_child_with_calls_pending(bus, 5)


def test_sigkill_parent_fails_pending_calls_and_removes_devices(bus):
    """3 child->parent sync calls are pending in the parent's slow REQUEST_RESET
    handler; SIGKILL of the parent: callers get -ENODEV within 2 s; its device is
    deleted for it (the child's remove() runs: UNBIND, REMOVE), released, and the
    broker and the child carry on."""
    parent = bus.parent(AXT_DEVS="eth:0", AXT_PSLOW=25)
    child = bus.child(AXT_IDS="tp.eth")
    callers = Callers(bus.root, 3, "tp.eth.0", "REQUEST_RESET", "child", {"reset_type": "GLOBAL"}, 20.0)
    bus.wait_until(lambda: len(parent.records("REQUEST_RESET")) == 3, 10, "3 calls in the parent's handler")
    last = bus.uevents()[-1]["seq"]

    t_kill = time.monotonic()
    os.kill(parent.pid, signal.SIGKILL)
    results = callers.join(10)
    for t_done, out in results:
        assert out["error"] == "ENODEV", out
        assert t_done - t_kill < 2.0, f"a caller waited {t_done - t_kill:.2f} s after the kill"

    bus.wait_uevent("RELEASE", "tp.eth.0", since=last)
    actions = [(e["action"], e["dev"]) for e in bus.uevents(since=last)]
    assert actions == [("PEER_DEAD", ""), ("UNBIND", "tp.eth.0"), ("REMOVE", "tp.eth.0"), ("RELEASE", "tp.eth.0")]
    child.wait_record("remove-end", dev="tp.eth.0")
    snap = bus.ls()
    assert snap["devices"] == [] and snap["pending"] == 0
    assert bus.peer(child.pid, snap)["alive"] and bus.peer(parent.pid, snap) is None
    assert bus.ping()


# ---- 10. a slow handler is not a dead process -----------------------------------------------

def test_slow_handler_is_not_a_dead_process(bus):
    """A handler blocking 1.6 s (3.2x the 0.5 s heartbeat liveness window): a caller with
    a 0.3 s deadline gets -ETIMEDOUT at its deadline, one with 5 s gets 0, and the child
    is never declared dead."""
    assert 1.6 >= 3 * bus.hb_ivl * bus.hb_liveness
    bus.parent(AXT_DEVS="eth:0")
    child = bus.child(AXT_IDS="tp.eth", AXT_SLOW=1.6)
    t0 = time.monotonic()
    short = bus.client.send_event("tp.eth.0", "RESET_WARN", "parent", DEV, 0.3)
    took = time.monotonic() - t0
    assert short["error"] == "ETIMEDOUT" and "slow handler" in short["message"], short
    assert took < 1.0, f"the short deadline was answered after {took:.2f} s"
    patient = Callers(bus.root, 1, "tp.eth.0", "RESET_WARN", "parent", DEV, 5.0)
    while patient.threads[0].is_alive():            # the child stays alive throughout
        snap = bus.ls()
        assert bus.peer(child.pid, snap)["alive"], snap["peers"]
        assert bus.device("tp.eth.0", snap)["bind"] == "bound"
        patient.threads[0].join(0.05)
    [(_, out)] = patient.join(1)
    assert out["errno"] == 0, out
    assert time.monotonic() - t0 >= 3.2            # both handlers ran to their end
    assert len(child.records("exit", ev="RESET_WARN")) == 2
    assert "PEER_DEAD" not in bus.actions()
    peer = bus.peer(child.pid)
    assert peer["alive"] and peer["slow_calls"] == 1


# ---- 11. SIGSTOP ------------------------------------------------------------------------------

def test_sigstopped_child_is_declared_dead(bus):
    """A stopped process sends no heartbeats: declared dead within a few intervals
    (--hb-ivl 0.1, liveness 5: 0.5 s), its devices unbound."""
    bus.parent(AXT_DEVS="eth:0")
    child = bus.child(AXT_IDS="tp.eth")
    os.kill(child.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        dead = bus.wait_uevent("PEER_DEAD", pid=child.pid, timeout=5)
        took = time.monotonic() - t0
        assert took < 1.5, f"declared dead after {took:.2f} s"
        assert "no heartbeat" in dead["detail"]["reason"]
        unbind = bus.wait_uevent("UNBIND", "tp.eth.0")
        assert unbind["driver"] == "tdrv"
        snap = bus.ls()
        assert bus.device("tp.eth.0", snap)["bind"] == "unbound" and snap["drivers"] == []
        out = bus.client.send_event("tp.eth.0", "RESET_WARN", "parent", {"reset_type": "FUNC"}, 2.0)
        assert out["error"] == "ENODEV", out
    finally:
        os.kill(child.pid, signal.SIGCONT)
    bus.stop(child)      # it may have exited by itself on learning it was dropped


# ---- 12. malformed frames ---------------------------------------------------------------------

def _raw(bus, ident: bytes):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, ident)
    sock.connect(f"ipc://{bus.root}/bus.sock")
    return ctx, sock


def _exchange(sock, frames, timeout: float = 3.0):
    sock.send_multipart(frames)
    if not sock.poll(timeout * 1000):
        return None
    return E.decode(sock.recv_multipart())[0]


def _hdr(**fields) -> bytes:
    return msgpack.packb(fields)


M = E.MAGIC
PING = [M + _hdr(t=int(E.Msg.CTL), r=1000, op="ping", args={})]

MALFORMED = [
    # frames, errno, message prefix, r echoed (a set: either will do)
    ([b"garbage"], -71, "$.magic: expected b'AUX1', got b'garbage'", 0),
    ([b"AUX2" + PING[0][4:]], -71, "$.magic: expected b'AUX1', got b'AUX2", {0, 1000}),
    ([M + b"\xc1\xff"], -71, "$.header: undecodable msgpack", 0),
    ([M + msgpack.packb([1, 2])], -71, "$.header: expected map", 0),
    ([M + _hdr(t=999, r=7)], -71, "$.header.t: unknown message type 999", 7),
    ([M + _hdr(t="50", r=8)], -71, "$.header.t: unknown message type '50'", 8),
    ([M + _hdr(t=int(E.Msg.CTL), r=9, op=5)], -22, "$.header.op: expected str, got int", 9),
    ([M + _hdr(t=int(E.Msg.CTL), r=10)], -22, "$.header.op: required field missing", 10),
    ([M + _hdr(t=int(E.Msg.CALL), r=11, dev="x", ev=1, timeout_ms=10)], -22,
     "$.header.dev: expected int, got str", 11),
    ([M + _hdr(t=int(E.Msg.CTL), r=12, op="ping", args={}), b"", b""], -71,
     "$: expected 1 frame after the routing id, got 3", {0, 12}),
    ([M + _hdr(t=int(E.Msg.CTL), r=13, op="ping", args={}, p=b"x" * (E.MAX_FRAME + 1))], -90,
     f"$.header.p: payload over {E.MAX_FRAME} bytes", 13),
    ([M + _hdr(t=int(E.Msg.CALL), r=14, dev=1, ev=1, timeout_ms=10, p={"up": True})], -71,
     "$.header.p: expected bin (the packed payload), got dict", 14),
]


def test_malformed_and_oversized_frames(bus):
    """Each malformed frame gets a RESULT with -EPROTO/-EINVAL/-EMSGSIZE naming the
    field; a message past the socket's size limit is dropped; the sender stays
    connected (ping on the same socket) and other peers never notice."""
    bus.parent(AXT_DEVS="eth:0")
    bus.child(AXT_IDS="tp.eth")
    ctx, sock = _raw(bus, b"raw:malformed")
    try:
        for frames, errno, message, r in MALFORMED:
            reply = _exchange(sock, frames)
            assert isinstance(reply, E.Result), (frames[0][:40], reply)
            assert reply.e == errno and reply.r in (r if isinstance(r, set) else {r}), (frames[0][:40], reply)
            assert reply.m.startswith(message), (message, reply.m)
            assert "the connection stays open" in reply.m

        # Not registered: anything but REGISTER and control queries is sent back with REREGISTER.
        reply = _exchange(sock, [M + _hdr(t=int(E.Msg.DEV_INIT), r=15, name="eth", id=0)])
        assert isinstance(reply, E.Reregister) and "REGISTER first" in reply.reason, reply
        reply = _exchange(sock, [M + _hdr(t=int(E.Msg.HEARTBEAT), epoch=1)])
        assert isinstance(reply, E.Reregister), reply

        # A frame past MAXMSGSIZE (1 MiB + 8 KiB): ZeroMQ drops it (and resets the connection) or
        # the broker answers -EMSGSIZE; either way the sender is not answered anything else.
        huge = [PING[0] + b"z" * (4 * E.MAX_FRAME)]
        reply = _exchange(sock, huge, timeout=1.0)
        assert reply is None or (isinstance(reply, E.Result) and reply.e == -90), reply

        # The same socket still works (it reconnects by itself after a reset).
        reply = _exchange(sock, PING, timeout=5.0)
        assert isinstance(reply, E.Result) and reply.e == 0 and reply.r == 1000, reply
        assert reply.d["pid"] == bus.broker.pid
    finally:
        sock.close(linger=0)
        ctx.term()

    out = bus.client.send_event("tp.eth.0", "SET_MAC", "child", {"addr": "02:00:00:00:00:05"}, 5.0)
    assert out["errno"] == 0 and out["reply"]["filter_id"] == 5, out
    snap = bus.ls()
    assert all(p["alive"] for p in snap["peers"]) and len(snap["peers"]) == 2
    assert snap["stats"]["malformed"] >= len(MALFORMED)
    assert "PEER_DEAD" not in bus.actions()


def test_broker_enforces_call_rules_for_a_raw_peer(make_bus):
    """The broker itself (not only the runtimes) checks calls: a raw DEALER registered
    as a parent gets -EINVAL for a child->parent event or an async one, -EOPNOTSUPP
    for an unknown event, -ENODEV for an unknown device, -EINVAL naming the payload
    field, -EPERM for a child's operation."""
    bus = make_bus(hb_ivl=2.0)    # a raw peer sends no heartbeats: a generous window
    ctx, sock = _raw(bus, b"raw:parent")
    r = iter(range(1, 100))

    def req(msg_type, payload=None, **fields):
        if payload is not None:
            fields["p"] = msgpack.packb(payload)
        frames = [M + _hdr(t=int(msg_type), r=next(r), **fields)]
        reply = _exchange(sock, frames)
        assert isinstance(reply, E.Result), reply
        return reply

    try:
        reply = req(E.Msg.REGISTER, role="parent", name="raw", pid=os.getpid(),
                    start_time=process_start_time(os.getpid()), schema=[1, 0])
        assert reply.e == 0, reply
        dev = req(E.Msg.DEV_INIT, name="eth", id=0, release=False).d["dev"]

        def call(ev, payload, dev=dev):
            return req(E.Msg.CALL, payload, dev=dev, ev=int(ev), timeout_ms=1000)

        reply = call(Event.SET_MAC, {"addr": b"\x02\0\0\0\0\1"})
        assert (reply.e, reply.m) == (-22, "SET_MAC goes child->parent; a parent cannot send it")
        reply = call(Event.LINK_CHANGE, {"up": True})
        assert reply.e == -22 and "async" in reply.m, reply
        reply = call(4242, {})
        assert (reply.e, reply.m) == (-95, "event 4242 is not in schema 1.0")
        reply = call(Event.RESET_WARN, {"reset_type": 1}, dev=424242)
        assert reply.e == -19 and "424242" in reply.m, reply
        reply = call(Event.RESET_WARN, {"reset_type": 9})
        assert reply.e == -22 and reply.m.startswith("$.payload.reset_type: 9 is not a valid ResetType"), reply
        reply = call(Event.RESET_WARN, {"reset_type": 1})     # valid, but never added: no driver
        assert reply.e == -19, reply
        reply = req(E.Msg.DRV_REGISTER, name="x", id_table=["raw.eth"], probe=True)
        assert reply.e == -1 and "only a child registers drivers" in reply.m, reply
        assert req(E.Msg.UNREGISTER).e == 0
    finally:
        sock.close(linger=0)
        ctx.term()
    assert bus.ls()["peers"] == []


# ---- 13. one broker per runtime dir; bad runtime dirs -------------------------------------------

def test_second_broker_on_same_dir_refuses(bus):
    r = bus.cli("broker", "--runtime-dir", str(bus.root), "--hb-ivl", "0.1", timeout=20)
    assert r.returncode != 0
    assert "EBUSY" in r.stderr and f"another broker (pid {bus.broker.pid})" in r.stderr, r.stderr
    # The first broker keeps its sockets and serves.
    assert all((Path(bus.root) / s).exists() for s in ("bus.sock", "pub.sock", "sub.sock"))
    assert bus.client.query("ping")["pid"] == bus.broker.pid
    assert stat.S_IMODE(Path(bus.root).stat().st_mode) == 0o700


def test_runtime_dir_is_private(make_bus, tmp_path):
    """The broker creates its runtime dir mode 0700, and refuses a lax existing one
    (EPERM, left as it was: chmodding a dir someone else may have made hands them the bus)."""
    fresh = make_bus(fresh_dir=True)
    assert Path(fresh.root).name == "rt" and stat.S_IMODE(Path(fresh.root).stat().st_mode) == 0o700
    for s in ("bus.sock", "pub.sock", "sub.sock"):
        assert stat.S_IMODE((Path(fresh.root) / s).stat().st_mode) == 0o600
    lax = Path(tempfile.mkdtemp(prefix="axt-lax-", dir="/tmp"))
    try:
        os.chmod(lax, 0o755)
        r = fresh.cli("broker", "--runtime-dir", str(lax), "--hb-ivl", "0.1", timeout=20)
        assert r.returncode != 0 and "EPERM" in r.stderr and "not 0700" in r.stderr, r.stderr
        assert stat.S_IMODE(lax.stat().st_mode) == 0o755 and not list(lax.iterdir())
    finally:
        shutil.rmtree(lax, ignore_errors=True)


def test_too_long_runtime_dir_is_einval(bus):
    long = Path("/tmp/axt-" + "x" * 110)
    for args in (["broker"], ["ls"], ["child", "--driver", "idpf_eth"]):
        r = bus.cli(*args, "--runtime-dir", str(long), timeout=20)
        assert r.returncode == 1, (args, r.stderr)
        assert "EINVAL" in r.stderr and "too long for an ipc socket path" in r.stderr, r.stderr
    assert not long.exists()
