"""Async events with a sender the receiver can trust. A raw PUB on ``pub.sock``
(this test process, not the parent) forges EVENT messages for a bound device:
before, the child ran LINK_CHANGE, FW_EVENT and even the sync RESET_WARN handler
from them, and one with a huge sequence number stopped every later real event."""

from __future__ import annotations

import os

import msgpack
import pytest
import zmq

from auxipc.runtime.memory import MemoryTransport
from child.runtime import ChildRuntime
from proto.events import Event
from proto.payloads import LinkChange, ResetType, ResetWarn
from tests.test_robustness import MAGIC
from tests.test_runtime_unit import Broker, Eth, probe, serve_all


def event_frame(dev: int, seq: int, inc: int, epoch: int, items: list) -> bytes:
    return MAGIC + msgpack.packb({"t": 60, "dev": dev, "seq": seq, "inc": inc, "epoch": epoch,
                                  "p": msgpack.packb(items)})


@pytest.fixture
def forger(bus):
    """A PUB on pub.sock whose path through the broker is proven (hello echoed)."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for s in (pub, sub):
        s.setsockopt(zmq.LINGER, 0)
    hello = b"hello:forger:" + os.urandom(4).hex().encode()
    sub.setsockopt(zmq.SUBSCRIBE, hello)
    sub.connect(f"ipc://{bus.root}/sub.sock")
    pub.connect(f"ipc://{bus.root}/pub.sock")
    for _ in range(500):
        pub.send_multipart([hello, MAGIC])
        if sub.poll(20):
            break
    else:
        raise AssertionError("the forger's hello never came back")
    yield pub
    pub.close(linger=0)
    sub.close(linger=0)
    ctx.term()


def test_forged_async_events_are_dropped_by_the_broker(bus, forger):
    parent = bus.parent("tests.models:Pair")
    child = bus.child("tests.models:Rec", AXT_IDS="tp.eth")
    snap = bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" and d["bind"] == "bound" for d in s["devices"]))
    dev = next(d["id"] for d in snap["devices"] if d["name"] == "tp.eth.0")
    inc = next(p["inc"] for p in snap["peers"] if p["pid"] == parent.pid)
    epoch = snap["epoch"]
    topic = b"C:tp.eth.0"
    link = {"up": True, "speed_mbps": 4242, "duplex": "FULL"}
    forged = [
        # A perfect copy of what the parent would send, from another process.
        event_frame(dev, 1, inc, epoch, [int(Event.LINK_CHANGE), link]),
        event_frame(dev, 2, inc, epoch, [int(Event.FW_EVENT), {"kind": "RESET", "state": 1}]),
        # A sync event on the async path.
        event_frame(dev, 3, inc, epoch, [int(Event.RESET_WARN), {"reset_type": "DEV"}]),
        # A sequence number that would make every later real event look old.
        event_frame(dev, 2**62, inc, epoch, [int(Event.LINK_CHANGE), link]),
    ]
    for frame in forged:
        forger.send_multipart([topic, frame])
    bus.wait_until(lambda: bus.ls()["stats"].get("async_forged", 0) >= len(forged), what="the forgeries counted")
    # Real events still arrive, and only they do.
    rc, out, err = bus.send("tp.eth.0", "LINK_CHANGE", "parent", {"up": False, "speed_mbps": 10, "duplex": "HALF"})
    assert (rc, out["errno"]) == (0, 0), (out, err)
    child.wait_record("LINK_CHANGE", dev="tp.eth.0", speed_mbps=10)
    assert [(r["what"], r.get("speed_mbps")) for r in child.records() if r["what"] in
            ("LINK_CHANGE", "FW_EVENT", "enter")] == [("LINK_CHANGE", 10)]


def test_every_drop_is_counted(bus, forger):
    """Each kind of drop is counted where it happens: an EVENT from a process that is
    not the device's sender (forged), for a device not on the bus, on a topic that is
    not an event's."""
    bus.parent("tests.models:Pair")
    snap = bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" for d in s["devices"]))
    forger.send_multipart([b"C:tp.eth.0", event_frame(1, 1, 999, snap["epoch"], [1, {"up": True}])])
    forger.send_multipart([b"C:no.such.0", event_frame(1, 1, 1, snap["epoch"], [1, {"up": True}])])
    forger.send_multipart([b"X:whatever", b"junk"])
    bus.wait_until(lambda: (lambda st: st.get("async_forged", 0) >= 1 and st.get("async_no_device", 0) >= 1
                            and st.get("async_unknown_topic", 0) >= 1)(bus.ls()["stats"]),
                   what="each drop counted")


def test_oversize_publish_is_refused(bus, forger):
    """pub.sock has a message size limit now (a 256 MiB message was accepted)."""
    forger.send_multipart([b"trace", b"x" * (4 << 20)])
    # The connection is dropped by libzmq; the broker still serves.
    assert bus.client.query("ping")["pid"] == bus.broker.pid


# ---- the receiver's rules, on the in-memory twin ------------------------------------------------

LINK, RESET = int(Event.LINK_CHANGE), int(Event.RESET_WARN)


@pytest.fixture
def twin():
    """A child runtime over the in-memory transport, and the broker stand-in."""
    broker = Broker()
    drv = Eth()
    rt = ChildRuntime([drv], transport=MemoryTransport(broker))
    rt.open()
    yield rt, drv, broker
    rt.close()


def test_receiver_takes_only_its_epoch_and_the_newest_incarnation(twin):
    rt, drv, broker = twin
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    link = lambda s: [(LINK, LinkChange(up=True, speed_mbps=s))]   # noqa: E731
    broker.event(b"C:ut.eth.0", 1, 1, link(1), inc=2)
    broker.epoch += 1
    broker.event(b"C:ut.eth.0", 1, 2, link(99), inc=2)     # another broker's epoch
    broker.epoch -= 1
    broker.event(b"C:ut.eth.0", 1, 5, link(98), inc=1)     # an older incarnation
    broker.event(b"C:ut.eth.0", 1, 1, link(3), inc=3)      # a newer one starts anew at seq 1
    serve_all(rt)
    assert [x[2] for x in drv.log if x[0] == "link"] == [1, 3]
    assert rt.stats["async_stale"] == 2 and rt.stats["async_lost"] == 0


def test_a_sync_event_never_runs_from_the_async_path(twin):
    rt, drv, broker = twin
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    broker.event(b"C:ut.eth.0", 1, 1, [(RESET, ResetWarn(reset_type=ResetType.FUNC)),
                                       (LINK, LinkChange(up=True, speed_mbps=7))])
    serve_all(rt)
    assert [x[0] for x in drv.log[1:]] == ["link"]
    assert rt.stats["async_sync_refused"] == 1


def test_sequence_state_is_bounded(twin, monkeypatch):
    from auxipc.runtime import dispatch
    monkeypatch.setattr(dispatch, "SEQ_TOPICS", 8)
    rt, _drv, broker = twin
    for i in range(50):
        broker.event(b"C:ut.eth.%d" % i, 100 + i, 2**40, [(LINK, LinkChange(up=True))])
    serve_all(rt)
    assert len(rt.dispatch._seq_in) <= 8


def test_ls_shows_the_drops(bus, forger):
    forger.send_multipart([b"X:nothing", b"junk"])
    bus.wait_until(lambda: bus.ls()["stats"].get("async_unknown_topic"), what="the drop counted")
    r = bus.cli("ls")
    assert r.returncode == 0 and "dropped/refused: " in r.stdout and "async_unknown_topic=1" in r.stdout, r.stdout
