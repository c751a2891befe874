"""A subscriber that stops reading while its device's parent publishes (issue 13):
before, the broker grew to 1 GB within a minute and counted no drop. The broker's
memory for one stalled subscriber is bounded by its XPUB's per-pipe high-water mark
times the size of a message; past it the events for that subscriber are dropped,
counted and reported, and everyone else goes on."""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq

from parent.runtime import ParentModel
from proto.errno import AuxError
from proto.events import Event
from proto.payloads import FwEvent, FwEventKind

FLOOD_SECS = 40.0                   # a cap only: the flood ends once flood_events() went out
DATA = b"\xa5" * 256                # the largest FW_EVENT: a batch of 64 is about 17 KB


def _log(what: str, **fields) -> None:
    from tests.models import log
    log(what, **fields)


class Flood(ParentModel):
    """Adds ``bp.eth.0``; once a driver binds it, publishes FW_EVENTs as fast as the
    runtime lets it until it sent enough batches to overflow a stalled subscriber's pipe
    twice over (a count, not a duration: a loaded machine sends slower, not less), in
    bursts between which the runtime serves its loop (so it answers the broker), then
    logs how many it sent and how many failed. $AXT_FLOOD_SECS caps it."""

    modname = "bp"

    def probe(self) -> None:
        adev = self.device("eth", 0)
        adev.init()
        adev.add()

    def on_bind(self, adev) -> None:
        self.end = time.monotonic() + float(os.environ.get("AXT_FLOOD_SECS", str(FLOOD_SECS)))
        self.sent = self.failed = 0
        self.rt.call_later(0, lambda: self.burst(adev))

    def burst(self, adev) -> None:
        for _ in range(640):
            try:
                adev.notify(Event.FW_EVENT, FwEvent(kind=FwEventKind.HEALTH, state=self.sent, data=DATA))
                self.sent += 1
            except AuxError:
                self.failed += 1
        if self.sent < flood_events() and time.monotonic() < self.end:
            self.rt.call_later(0, lambda: self.burst(adev))
            return
        self.rt.flush_events()
        _log("flood-done", sent=self.sent, failed=self.failed)


def flood_events() -> int:
    """Events that fill three times as many batches of 64 as the broker's per-pipe HWM:
    the stalled subscriber's own receive queue (RCVHWM) and the kernel's socket buffers
    absorb about one HWM's worth before the broker's pipe is the one that fills."""
    from auxipc.broker.sockets import PUB_SNDHWM
    return 64 * 3 * PUB_SNDHWM


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Reader(threading.Thread):
    """A raw SUB on ``sub.sock`` that keeps reading ``topic`` and counts messages."""

    def __init__(self, sock: zmq.Socket):
        super().__init__(daemon=True)
        self.sock, self.count, self.stop = sock, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                while True:
                    try:
                        self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.count += 1


def _subscribed(ctx: zmq.Context, root, topic: bytes, n: int) -> list[zmq.Socket]:
    """``n`` SUBs on ``topic`` whose subscriptions the broker has taken (a hello sent
    after them came back on each: subscriptions of one socket go in order)."""
    hello = b"hello:bp:" + os.urandom(4).hex().encode()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"ipc://{root}/pub.sock")
    subs = []
    try:
        for _ in range(n):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, topic)
            s.setsockopt(zmq.SUBSCRIBE, hello)
            s.connect(f"ipc://{root}/sub.sock")
            subs.append(s)
        waiting = list(subs)
        for _ in range(500):
            pub.send_multipart([hello, b"AUX1"])
            waiting = [s for s in waiting if not s.poll(20)]
            if not waiting:
                break
        else:
            raise AssertionError("a hello never came back")
        for s in subs:
            while s.poll(20):
                s.recv_multipart()
            s.setsockopt(zmq.UNSUBSCRIBE, hello)
        return subs
    finally:
        pub.close(linger=0)


@pytest.mark.timeout(90)
def test_a_subscriber_that_stops_reading_costs_the_broker_a_bounded_amount(bus):
    import json

    from auxipc.broker.sockets import PUB_SNDHWM
    ctx = zmq.Context()
    subs: list[zmq.Socket] = []
    reader = None
    try:
        subs = _subscribed(ctx, bus.root, b"C:bp.eth.0", 2)
        stalled, reading = subs
        reader = Reader(reading)
        reader.start()
        base = vm_rss_kib(bus.broker.pid)
        parent = bus.parent("tests.test_backpressure:Flood")
        child = bus.child("tests.models:Rec", AXT_IDS="bp.eth")
        peak = base
        deadline = time.monotonic() + FLOOD_SECS + 20
        while not parent.records("flood-done"):      # each round a ping's round trip
            peak = max(peak, vm_rss_kib(bus.broker.pid))
            assert bus.ping(), "the broker stopped answering pings during the flood"
            assert time.monotonic() < deadline, "the flood never ended"
        done = parent.records("flood-done")[0]
        peak = max(peak, vm_rss_kib(bus.broker.pid))
        # What the broker may hold for the stalled subscriber: its pipe's HWM of
        # messages, each a batch of at most 64 events of ~270 bytes (with zmq's
        # per-message overhead), plus what is in flight on the reading subscribers'
        # pipes; 64 MiB is generous for that and far below what an unbounded queue
        # reaches in a few seconds at this rate.
        batch = 64 * (len(DATA) + 32) + 256
        bound_kib = (PUB_SNDHWM * batch) // 1024 + 32 * 1024
        print(f"sent {done['sent']} events ({done['failed']} refused); broker RSS "
              f"{base} KiB -> peak {peak} KiB (bound {bound_kib} KiB); reader got {reader.count} messages")
        assert peak - base < bound_kib, (base, peak, bound_kib)
        r = bus.cli("ls", "--json")
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        stats = snap["stats"]
        print(f"async_passed {stats.get('async_passed')}, async_dropped_hwm {stats.get('async_dropped_hwm')}")
        # The sent events went in batches of 64: more batches than the stalled pipe
        # holds, so the broker found its queue full and counted it (the count is of
        # queues found full, not of messages: libzmq drops the rest silently).
        assert done["sent"] // 64 > PUB_SNDHWM * 2, done
        assert stats.get("async_dropped_hwm", 0) > 0, stats
        assert any(w["kind"] == "async_dropped_hwm" for w in snap["warnings"]), snap["warnings"]
        # The reading subscribers kept receiving: the raw one and the child's driver
        # (an event sent after the flood reaches it).
        assert reader.count > PUB_SNDHWM, reader.count
        rc, out, err = bus.send("bp.eth.0", "LINK_CHANGE", "parent", {"up": True, "speed_mbps": 777,
                                                                       "duplex": "FULL"})
        assert (rc, out["errno"]) == (0, 0), (out, err)
        child.wait_record("LINK_CHANGE", dev="bp.eth.0", speed_mbps=777, timeout=30)
        assert bus.ping()
    finally:
        if reader is not None:
            reader.stop.set()
            reader.join(10)
        for s in subs:
            s.close(linger=0)
        ctx.term()
