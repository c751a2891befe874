"""Async events, RESYNC, INJECT and FAULT, a broker restart, and the raw peers
against the reference runtimes.

The peers (tests/wire/rawpeer.py) know only docs/protocol.md and docs/events.md; a
test waits on the reply or request it expects, never on time.
"""

from __future__ import annotations

from tests.conftest import wait_until
from tests.wire import rawpeer as W
from tests.wire.conftest import DRIVER, packed, register_driver


def test_async_events_both_ways(wire, pair):
    p, c, dev, name, _ = pair
    link = {"up": True, "speed_mbps": 100000, "duplex": W.DUPLEX_FULL, "autoneg": False}
    p.publish(f"C:{name}".encode(), dev, 1, [(W.LINK_CHANGE, link), (W.AFTER_MTU_CHANGE, {"mtu": 9000})])
    topic, ev = c.next_event()
    assert topic == f"C:{name}".encode()
    assert {k: ev[k] for k in ("t", "dev", "seq", "inc", "epoch")} == {
        "t": W.EVENT, "dev": dev, "seq": 1, "inc": p.welcome["inc"], "epoch": p.welcome["epoch"]}
    assert ev["payload"] == [W.LINK_CHANGE, link, W.AFTER_MTU_CHANGE, {"mtu": 9000}]
    c.publish(f"P:{name}".encode(), dev, 1, [(W.MAC_FILTER, {"addr": b"\x02\0\0\0\0\x01", "kind": 1, "op": 1})])
    topic, ev = p.next_event()
    assert topic == f"P:{name}".encode() and ev["seq"] == 1 and ev["inc"] == c.welcome["inc"]
    assert ev["payload"][0] == W.MAC_FILTER


def test_resync_goes_to_the_other_side(wire, pair):
    p, c, dev, name, _ = pair
    c.send(W.RESYNC, dev=dev)
    assert p.take_type(W.RESYNC) == {"t": W.RESYNC, "dev": dev}
    p.send(W.RESYNC, dev=dev)
    assert c.take_type(W.RESYNC) == {"t": W.RESYNC, "dev": dev}


def test_inject_is_answered_with_the_call_it_made(wire, pair):
    p, c, dev, name, _ = pair
    ctl = wire.ctl
    ctl.sock.send(W.pack({"t": W.CTL, "r": 500, "op": "send", "args": {
        "device": name, "event": "QSET_ADD", "from": "child", "timeout_ms": 3000}}, {"qs_handle": 3}))
    inj = c.take_type(W.INJECT, dev=dev)
    assert inj["ev"] == W.QSET_ADD and inj["timeout_ms"] == 3000 and inj["payload"] == {"qs_handle": 3}
    # The child sends the event as its own code would, then answers with that call's outcome.
    r = c.next_r()
    c.send(W.CALL, inj["p"], r=r, dev=dev, ev=W.QSET_ADD, timeout_ms=inj["timeout_ms"])
    req = p.take_type(W.REQUEST, dev=dev)
    p.answer(req, 0, payload={"teid": 42})
    res = c.result(r)
    c.answer(inj, res["e"], res["m"], payload=res["p"])
    head = W.unpack(ctl.sock.recv()) if ctl.sock.poll(5000) else None
    assert head is not None and head["r"] == 500 and head["e"] == 0 and head["payload"] == {"teid": 42}


def test_inject_async_from_the_parent(wire, pair):
    p, c, dev, name, _ = pair
    wire.ctl.sock.send(W.pack({"t": W.CTL, "r": 700, "op": "send", "args": {
        "device": name, "event": "LINK_CHANGE", "from": "parent", "timeout_ms": 2000}}, {"up": True}))
    inj = p.take_type(W.INJECT, dev=dev)
    assert inj["ev"] == W.LINK_CHANGE
    p.publish(f"C:{name}".encode(), dev, 1, [(W.LINK_CHANGE, inj["payload"])])
    p.answer(inj, 0, "published as seq 1")
    assert c.next_event()[1]["payload"] == [W.LINK_CHANGE, {"up": True}]
    head = W.unpack(wire.ctl.sock.recv()) if wire.ctl.sock.poll(5000) else {}
    assert (head.get("r"), head.get("e"), head.get("m")) == (700, 0, "published as seq 1")


def test_fault_rules_are_pushed_and_answered(wire, pair):
    p, c, dev, name, _ = pair
    ctl = wire.ctl
    ctl.sock.send(W.pack({"t": W.CTL, "r": 600, "op": "fault", "args": {
        "action": "add", "rule": {"kind": "handler", "target": "rawc", "action": "errno", "errno": "EIO"}}}))
    fault = c.take_type(W.FAULT)
    assert "r" in fault and [x["target"] for x in fault["rules"]] == ["rawc"]
    c.answer(fault)
    assert W.unpack(ctl.sock.recv())["e"] == 0 if ctl.sock.poll(5000) else False
    # A peer registering while a rule is in force gets it in the welcome.
    c2 = wire.child("rawc")
    assert [x["target"] for x in c2.welcome["faults"]] == ["rawc"]


def test_broker_restart_restore_and_adopt(wire, pair):
    """After a broker restart every peer registers again (new sockets); a child lists what
    it had bound in `restore`, and matching gives the device back with PROBE{adopt}."""
    p, c, dev, name, _ = pair
    c.ok(W.DEV_GET, dev=dev)
    wire.bus.stop(wire.bus.broker)
    wire.bus.start_broker()
    c.send(W.DEV_GET, r=c.next_r(), dev=dev)
    assert "REGISTER first" in c.take_type(W.REREGISTER)["reason"]
    p2, c2 = wire.parent(join=False), wire.child(join=False)
    assert c2.register(restore={"bound": [{"name": name, "driver": DRIVER, "refs": 1}]})["e"] == 0
    c2.hello()
    c2.start_heartbeats()
    register_driver(c2)
    p2.join()
    d = p2.ok(W.DEV_INIT, name="eth", release=True)
    assert d["name"] == name
    r = p2.next_r()
    p2.send(W.DEV_ADD, r=r, dev=d["dev"])
    probe = c2.take_type(W.PROBE, dev=d["dev"])
    assert probe["adopt"] is True and probe["name"] == name
    c2.answer(probe)
    p2.take_type(W.BIND, dev=d["dev"])
    assert p2.result(r)["d"]["driver"] == DRIVER
    # The child's reference from before the restart is restored with the binding.
    snap = wire.ctl.query("ls")
    assert next(x for x in snap["devices"] if x["id"] == d["dev"])["refcount"] == 2


def test_raw_parent_with_a_real_driver(wire):
    """The raw parent's device is probed by a real child (tests.models:Rec); the child's
    runtime applies the receiver rules to the raw parent's async events."""
    child = wire.bus.child("tests.models:Rec")
    p = wire.parent("tp")
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    dev = d["dev"]
    r = p.next_r()
    p.send(W.DEV_ADD, r=r, dev=dev)
    bind = p.take_type(W.BIND, dev=dev)
    assert bind["driver"] == "tdrv" and sorted(bind["handles"]) == [W.LINK_CHANGE, W.RESET_WARN, W.FW_EVENT]
    assert p.result(r)["d"] == {"name": "tp.eth.0", "driver": "tdrv"}
    child.wait_record("probe", dev="tp.eth.0")
    topic = b"C:tp.eth.0"
    link = lambda speed: (W.LINK_CHANGE, {"up": True, "speed_mbps": speed, "duplex": W.DUPLEX_FULL})
    p.publish(topic, dev, 1, [link(1)])
    p.publish(topic, dev, 1, [link(2)])                        # a duplicate: dropped
    p.publish(topic, dev, 2, [(63, {"x": 1}), link(3)])        # an event the schema lacks is skipped, not the batch
    p.publish(topic, dev, 6, [link(6)])                        # a gap (3..5): delivered, and a RESYNC asked for
    assert p.take_type(W.RESYNC) == {"t": W.RESYNC, "dev": dev}
    recs = wait_until(lambda: len(child.records("LINK_CHANGE")) >= 3 and child.records("LINK_CHANGE"), 10,
                      "three LINK_CHANGE deliveries")
    assert [x["speed_mbps"] for x in recs] == [1, 3, 6] and recs[0]["duplex"] == "FULL"
    # A sync call to the real driver.
    res = p.request(W.CALL, packed({"reset_type": W.RESET_FUNC}), dev=dev, ev=W.RESET_WARN, timeout_ms=5000)
    assert res["e"] == 0


def test_raw_driver_with_a_real_parent(wire):
    """A raw child's driver binds a real parent's device (tests.models:Pair) and talks to it."""
    since = wire.ctl.last_seq()
    parent = wire.bus.parent("tests.models:Pair", AXT_DEVS="eth:0")
    c = wire.child("rawc", match="tp.eth", handles=[W.LINK_CHANGE, W.RESET_WARN])
    r = c.next_r()
    c.send(W.DRV_REGISTER, r=r, name=DRIVER, id_table=["tp.eth"], probe=True, remove=True, handles=c.handles)
    probe = c.take_type(W.PROBE)
    assert probe["name"] == "tp.eth.0" and W.SET_MAC in probe["parent_handles"]
    c.answer(probe)
    assert c.result(r)["d"]["probed"] == ["tp.eth.0"]
    dev = probe["dev"]
    wire.ctl.wait_uevent("BIND", since=since, dev="tp.eth.0")
    mac = bytes.fromhex("0200000000a5")
    res = c.request(W.CALL, {"addr": mac}, dev=dev, ev=W.SET_MAC, timeout_ms=5000)
    assert res["e"] == 0 and res["payload"] == {"addr": mac, "filter_id": 0xa5}
    # Async: an event from another incarnation is dropped by the parent; the current one runs.
    topic = b"P:tp.eth.0"
    c.publish(topic, dev, 1, [(W.POST_CONFIG, {"vport_id": 1})], inc=c.welcome["inc"] + 1000)
    c.publish(topic, dev, 1, [(W.POST_CONFIG, {"vport_id": 2})])
    recs = parent.wait_record("POST_CONFIG")
    assert recs["vport_id"] == 2 and len(parent.records("POST_CONFIG")) == 1


def test_the_gate_drops_stale_and_stray_events(wire, pair):
    """The broker's gate passes an EVENT only with the device's id, the current epoch and
    the sender's current incarnation, and only on device, hello and trace topics."""
    p, c, dev, name, _ = pair
    stats = lambda: wire.ctl.query("ls")["stats"]
    topic = f"P:{name}".encode()
    c.publish(topic, dev, 1, [(W.POST_CONFIG, {"vport_id": 1})], inc=c.welcome["inc"] + 1)
    c.publish(topic, dev, 1, [(W.POST_CONFIG, {"vport_id": 2})], epoch=c.welcome["epoch"] - 1)
    c.publish(topic, dev + 1, 1, [(W.POST_CONFIG, {"vport_id": 3})])
    c.publish(b"X:elsewhere", dev, 1, [(W.POST_CONFIG, {"vport_id": 4})])
    c.publish(topic, dev, 1, [(W.POST_CONFIG, {"vport_id": 5})])
    got, ev = p.next_event()
    assert got == topic and ev["payload"] == [W.POST_CONFIG, {"vport_id": 5}]
    s = wait_until(lambda: (x := stats()).get("async_unknown_topic") and x, 5, "the gate's counters")
    assert s["async_stale"] == 3 and s["async_unknown_topic"] == 1 and s["async_passed"] >= 1
