"""Every sequence of docs/protocol.md, played by raw peers against the real broker.

The peers (tests/wire/rawpeer.py) know only the documents; the project is used here
to start the broker and, in the interop tests, a real runtime on the other side. A
test waits on the reply or request it expects, never on time; "nothing else came"
is shown by a later reply on the same socket overtaking nothing (the broker's
messages to one socket arrive in the order it sent them).
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import wait_until
from tests.wire import rawpeer as W
from tests.wire.conftest import packed

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


# ---- registration ---------------------------------------------------------------------------

def test_register_reply_hello_and_heartbeat(wire):
    p = wire.parent(join=False)
    res = p.register()
    assert res["e"] == 0
    d = res["d"]
    assert set(d) == {"peer", "inc", "epoch", "faults", "hb_ivl_ms", "hb_liveness", "schema"}
    assert d["peer"] == f"parent rawp[{os.getpid()}]#{d['inc']}"
    assert d["epoch"] == wire.ctl.query("ping")["epoch"]
    assert (d["hb_ivl_ms"], d["hb_liveness"]) == (100, 5)     # the bus fixture's --hb-ivl/--hb-liveness
    assert d["faults"] == [] and d["schema"] == W.SCHEMA
    # A repeated REGISTER on the same socket is a retry: the same incarnation.
    again = p.register()
    assert again["d"]["inc"] == d["inc"]
    p.hello()
    hb = p.start_heartbeats()
    wait_until(lambda: hb.answers, 5, "a heartbeat echo")
    assert hb.answers[0] == {"t": W.HEARTBEAT, "epoch": d["epoch"]}
    peer = next(x for x in wire.ctl.query("ls")["peers"] if x["inc"] == d["inc"])
    assert (peer["role"], peer["name"], peer["pid"], peer["alive"]) == ("parent", "rawp", os.getpid(), True)


def test_register_refusals_name_the_field(wire):
    p = wire.parent(join=False)
    res = p.register(role="driver")
    assert res["e"] == W.EINVAL and "$.header.role" in res["m"]
    res = p.register(name="")
    assert res["e"] == W.EINVAL and "$.header.name" in res["m"]
    r = p.next_r()
    p.send(W.REGISTER, r=r, role="parent", name="rawp", pid=os.getpid(), schema=W.SCHEMA)   # no start_time
    res = p.result(r)
    assert res["e"] == W.EINVAL and "$.header.start_time" in res["m"]
    res = p.register(pid="1")
    assert res["e"] == W.EINVAL and "$.header.pid: expected int, got str" in res["m"]


def test_two_peers_in_one_process(wire):
    """A parent and a child hosted by one process (this test) are two peers."""
    p, c = wire.parent(), wire.child()
    assert p.welcome["inc"] != c.welcome["inc"]
    peers = {x["inc"]: x for x in wire.ctl.query("ls")["peers"]}
    assert peers[p.welcome["inc"]]["alive"] and peers[c.welcome["inc"]]["alive"]
    assert p.ok(W.DEV_INIT, name="eth")["name"] == "rawp.eth.0"


def test_same_process_same_name_supersedes(wire):
    """A process registering again under its role and name on a new socket (a reconnect)
    replaces its earlier incarnation, which is declared dead."""
    old = wire.parent()
    since = wire.ctl.last_seq()
    new = wire.parent()
    assert new.welcome["inc"] > old.welcome["inc"]
    wire.ctl.wait_uevent("PEER_DEAD", since=since, inc=old.welcome["inc"])
    old.send(W.DEV_INIT, r=old.next_r(), name="eth")
    assert old.take_type(W.REREGISTER)["reason"]


def test_unknown_sender_gets_reregister(wire):
    p = wire.parent(join=False)
    p.send(W.DEV_INIT, r=1, name="eth")
    rr = p.take_type(W.REREGISTER)
    assert "send REGISTER first" in rr["reason"]
    # A heartbeat socket the broker does not know gets the same answer.
    hb = W.RawPeer(wire.ctx, wire.root, "parent", "ghost")
    wire.peers.append(hb)
    hb.dealer.close(linger=0)
    hb.dealer = wire.ctx.socket(W.zmq.DEALER)
    hb.dealer.setsockopt(W.zmq.IDENTITY, hb.ident + b"#hb")
    hb.dealer.setsockopt(W.zmq.LINGER, 0)
    hb.dealer.connect(hb.ep.bus)
    hb.send(W.HEARTBEAT, epoch=0)
    assert hb.take_type(W.REREGISTER)["reason"].startswith("unknown heartbeat socket")


def test_heartbeat_on_the_main_socket_is_refused(wire):
    """HEARTBEAT belongs on `<id>#hb`: on the main socket it is answered REREGISTER
    (though the peer stays registered)."""
    p = wire.parent()
    p.send(W.HEARTBEAT, epoch=p.welcome["epoch"])
    assert p.take_type(W.REREGISTER)["reason"].startswith("unknown heartbeat socket")
    assert p.ok(W.DEV_INIT, name="eth")["dev"] > 0



def test_heartbeat_socket_rules(wire):
    """Any message on a known heartbeat socket is a heartbeat (echoed, never served);
    one sent before the REGISTER reply is from an unknown socket."""
    p = wire.parent(join=False)
    hb = wire.ctx.socket(W.zmq.DEALER)
    hb.setsockopt(W.zmq.IDENTITY, p.ident + b"#hb")
    hb.setsockopt(W.zmq.LINGER, 0)
    hb.connect(p.ep.bus)
    try:
        hb.send(W.pack({"t": W.HEARTBEAT, "epoch": 0}))
        assert hb.poll(5000) and W.unpack(hb.recv())["t"] == W.REREGISTER
        p.join(heartbeat=False)
        hb.send(W.pack({"t": W.DEV_INIT, "r": 1, "name": "eth"}))
        assert hb.poll(5000) and W.unpack(hb.recv()) == {"t": W.HEARTBEAT, "epoch": p.welcome["epoch"]}
    finally:
        hb.close(linger=0)
    assert p.ok(W.DEV_INIT, name="eth")["dev"] > 0


def test_control_needs_no_registration(wire):
    assert wire.ctl.query("ping")["epoch"] > 0
    res = wire.ctl("nope")
    assert res["e"] == W.EOPNOTSUPP and "unknown control op" in res["m"]
    # A registered peer may send CTL on its main socket too.
    p = wire.parent()
    assert p.ok(W.CTL, op="ping")["epoch"] == p.welcome["epoch"]

def test_malformed_messages_are_answered_and_the_connection_stays(wire):
    p = wire.parent()
    p.send_raw(b"XXXX" + packed({"t": W.DEV_INIT, "r": 7}))
    res = p.take_type(W.RESULT)
    assert res["e"] == W.EPROTO and "$.magic" in res["m"]
    p.send_raw(W.MAGIC + packed({"t": 99, "r": 8}))
    res = p.result(8)
    assert res["e"] == W.EPROTO and "$.header.t" in res["m"]
    p.send_raw(W.MAGIC + packed({"t": W.DEV_INIT, "r": 9, "name": 5}))
    res = p.result(9)
    assert res["e"] == W.EINVAL and res["m"].startswith("$.header.name: expected str, got int")
    # Unknown header keys are ignored.
    d = p.ok(W.DEV_INIT, name="eth", colour="blue")
    assert d["name"] == "rawp.eth.0"
    # A message type the broker never receives; BIND declares no `r`, so the answer has r=0.
    p.send(W.BIND, dev=1, driver="x", inc=1)
    res = p.take_type(W.RESULT, r=0)
    assert res["e"] == W.EPROTO and "BIND is not sent to the broker" in res["m"]


def test_unregister(wire):
    p = wire.parent()
    since = wire.ctl.last_seq()
    assert p.request(W.UNREGISTER)["e"] == 0
    wire.ctl.wait_uevent("UNREGISTER", since=since, inc=p.welcome["inc"])
    p.send(W.DEV_INIT, r=p.next_r(), name="eth")
    p.take_type(W.REREGISTER)


# ---- drivers and devices ---------------------------------------------------------------------

def test_driver_register_flags(wire):
    c = wire.child()
    res = c.request(W.DRV_REGISTER, name=DRIVER, id_table=["rawp.eth"])          # probe defaults to false
    assert res["e"] == W.EINVAL and "probe() is required" in res["m"]
    res = c.request(W.DRV_REGISTER, name=DRIVER, id_table=[], probe=True)
    assert res["e"] == W.EINVAL and "id_table is empty" in res["m"]
    res = c.request(W.DRV_REGISTER, name="", id_table=["rawp.eth"], probe=True)
    assert res["e"] == W.EINVAL
    assert register_driver(c) == {"probed": [], "refused": {}}
    res = c.request(W.DRV_REGISTER, name=DRIVER, id_table=["rawp.eth"], probe=True)
    assert res["e"] == W.EBUSY
    p = wire.parent()
    res = p.request(W.DRV_REGISTER, name="pdrv", id_table=["rawp.eth"], probe=True)
    assert res["e"] == W.EPERM


def test_device_naming(wire):
    p = wire.parent("ixd")
    assert p.ok(W.DEV_INIT, name="eth", id=3)["name"] == "ixd.eth.3"
    assert p.ok(W.DEV_INIT, name="rdma.core", id=2**31)["name"] == "ixd.rdma.core.-2147483648"
    assert p.ok(W.DEV_INIT, name="vnet")["name"] == "ixd.vnet.0"
    res = p.request(W.DEV_INIT, name="")
    assert res["e"] == W.EINVAL
    c = wire.child()
    assert c.request(W.DEV_INIT, name="eth")["e"] == W.EPERM


def test_driver_registered_after_the_device_probes_it(wire):
    p, c = wire.parent(), wire.child()
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    assert p.ok(W.DEV_ADD, dev=d["dev"]) == {"name": "rawp.eth.0", "driver": None}
    r = c.next_r()
    c.send(W.DRV_REGISTER, r=r, name=DRIVER, id_table=["rawp.eth"], probe=True, handles=c.handles)
    probe = c.take_type(W.PROBE, dev=d["dev"])
    c.answer(probe)
    assert c.result(r)["d"] == {"probed": ["rawp.eth.0"], "refused": {}}
    bind = p.take_type(W.BIND, dev=d["dev"])
    assert bind == {"t": W.BIND, "dev": d["dev"], "driver": DRIVER, "inc": c.welcome["inc"],
                    "handles": c.handles, "schema": W.SCHEMA}


def test_duplicate_add_is_eexist(wire):
    p = wire.parent()
    a, b = p.ok(W.DEV_INIT, name="eth"), p.ok(W.DEV_INIT, name="eth")
    p.ok(W.DEV_ADD, dev=a["dev"])
    res = p.request(W.DEV_ADD, dev=b["dev"])
    assert res["e"] == W.EEXIST


def test_probe_rejected_leaves_the_device_unbound(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c)
    dev, name, _ = add_and_probe(p, c, probe_e=W.ENODEV)
    assert next(x for x in wire.ctl.query("ls")["devices"] if x["id"] == dev)["driver"] is None


def test_bind_delete_uninit_release(wire, pair):
    p, c, dev, name, bind = pair
    assert bind == {"t": W.BIND, "dev": dev, "driver": DRIVER, "inc": c.welcome["inc"], "handles": c.handles,
                    "schema": W.SCHEMA}
    r = p.next_r()
    p.send(W.DEV_DELETE, r=r, dev=dev, task="rawp/main")
    rm = c.take_type(W.REMOVE, dev=dev)
    assert rm["reason"] == "device deleted" and rm["task"] == "rawp/main"
    c.answer(rm)
    unbind = p.take(lambda h: h["t"] in (W.UNBIND, W.RESULT), what="UNBIND")
    assert unbind == {"t": W.UNBIND, "dev": dev, "reason": "device deleted"}
    assert p.result(r)["e"] == 0
    assert p.ok(W.DEV_UNINIT, dev=dev) == {"refcount": 0}
    assert p.take_type(W.RELEASE) == {"t": W.RELEASE, "dev": dev, "name": name}
    # Every operation on a released device still answers.
    assert p.request(W.DEV_UNINIT, dev=dev)["e"] == W.ENODEV
    assert c.request(W.DEV_GET, dev=dev)["e"] == W.ENODEV


def test_no_release_without_release_true(wire):
    p = wire.parent()
    d = p.ok(W.DEV_INIT, name="eth", release=False)
    since = wire.ctl.last_seq()
    assert p.ok(W.DEV_UNINIT, dev=d["dev"]) == {"refcount": 0}
    wire.ctl.wait_uevent("RELEASE", since=since, dev="rawp.eth.0")
    # Anything the broker had queued for this socket would come before this answer.
    p.ok(W.DEV_INIT, name="eth2")
    assert not [h for h in p.inbox if h["t"] == W.RELEASE]


def test_remove_false_still_gets_remove(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c, remove=False)
    dev, name, _ = add_and_probe(p, c)
    r = p.next_r()
    p.send(W.DEV_DELETE, r=r, dev=dev)
    c.answer(c.take_type(W.REMOVE, dev=dev))
    assert p.result(r)["e"] == 0


def test_drv_unregister_removes_each_bound_device(wire, pair):
    p, c, dev, name, _ = pair
    r = c.next_r()
    c.send(W.DRV_UNREGISTER, r=r, name=DRIVER)
    rm = c.take_type(W.REMOVE, dev=dev)
    assert rm["reason"] == "driver unregistered"
    c.answer(rm)
    assert c.result(r)["e"] == 0
    assert p.take_type(W.UNBIND, dev=dev)["reason"] == "driver unregistered"


def test_references(wire, pair):
    p, c, dev, name, _ = pair
    assert c.ok(W.DEV_GET, dev=dev) == {"refcount": 2}
    assert c.ok(W.DEV_PUT, dev=dev) == {"refcount": 1}
    assert c.request(W.DEV_PUT, dev=dev)["e"] == W.EINVAL       # it holds none now
    assert p.request(W.DEV_UNINIT, dev=dev)["e"] == W.EBUSY     # still added: delete first


def test_pm(wire, pair):
    p, c, dev, name, _ = pair
    r = p.next_r()
    p.send(W.DEV_PM, r=r, dev=dev, op="suspend", task="rawp/pm")
    pm = c.take_type(W.PM, dev=dev)
    assert (pm["op"], pm["task"]) == ("suspend", "rawp/pm") and "r" in pm
    c.answer(pm, W.EBUSY, "busy")
    res = p.result(r)
    assert (res["e"], res["m"]) == (W.EBUSY, "busy")
    assert p.request(W.DEV_PM, dev=dev, op="freeze")["e"] == W.EINVAL


# ---- sync calls ---------------------------------------------------------------------------------

def test_sync_call_parent_to_child(wire, pair):
    p, c, dev, name, _ = pair
    body = packed({"reset_type": W.RESET_FUNC})
    r = p.next_r()
    p.send(W.CALL, body, r=r, dev=dev, ev=W.RESET_WARN, timeout_ms=5000, task="rawp/reset")
    req = c.take_type(W.REQUEST, dev=dev)
    assert req["ev"] == W.RESET_WARN and req["inc"] == p.welcome["inc"] and req["task"] == "rawp/reset"
    assert req["rtnl"] is False and 0 < req["timeout_ms"] <= 5000
    assert req["p"] == body                        # the payload bytes are forwarded as they are
    c.answer(req, 0)
    res = p.result(r)
    assert res["e"] == 0 and "p" not in res


def test_sync_call_child_to_parent_with_reply_and_rtnl(wire, pair):
    p, c, dev, name, _ = pair
    mac = bytes.fromhex("020000aabbcc")
    r = c.next_r()
    c.send(W.CALL, {"addr": mac}, r=r, dev=dev, ev=W.SET_MAC, timeout_ms=5000, task="rawc/mac")
    req = p.take_type(W.REQUEST, dev=dev)
    assert req["ev"] == W.SET_MAC and req["rtnl"] is True and req["inc"] == c.welcome["inc"]
    assert req["payload"] == {"addr": mac}
    # The broker holds rtnl for the caller's task while the handler runs.
    locks = {x["name"]: x for x in wire.ctl.query("ls")["locks"]}
    assert locks["rtnl"]["holder"] == "rawc/mac"
    assert p.ok(W.LOCK, name="rtnl", task="rawc/mac", ensure=True) == {"held": True}
    res = p.request(W.LOCK, name="rtnl", task="rawp/other", timeout_ms=50)
    assert res["e"] == W.ETIMEDOUT
    p.answer(req, 0, payload={"addr": mac, "filter_id": 7})
    res = c.result(r)
    assert res["e"] == 0 and res["payload"] == {"addr": mac, "filter_id": 7}
    # Released with the answer.
    assert p.ok(W.LOCK, name="rtnl", task="rawp/other") == {"held": False}
    p.ok(W.UNLOCK, name="rtnl", task="rawp/other")



def test_locks(wire):
    p = wire.parent()
    assert p.ok(W.LOCK, name="mutex:cfg", task="t1") == {"held": False}
    assert p.ok(W.LOCK, name="mutex:cfg", task="t1", ensure=True) == {"held": True}
    res = p.request(W.LOCK, name="mutex:cfg", task="t2", timeout_ms=50)
    assert res["e"] == W.ETIMEDOUT and "held by t1" in res["m"]
    assert p.request(W.UNLOCK, name="mutex:cfg", task="t2")["e"] == W.EINVAL
    assert p.request(W.LOCK, name="spin", task="t1")["e"] == W.EINVAL
    p.ok(W.UNLOCK, name="mutex:cfg", task="t1")
    assert p.request(W.UNLOCK, name="mutex:cfg", task="t1")["e"] == W.EINVAL


@pytest.mark.xfail(strict=True, reason="issue 13: the refused second LOCK drops the holder's entry")
def test_retaking_a_held_lock_is_edeadlk_and_keeps_it(wire):
    p = wire.parent()
    p.ok(W.LOCK, name="rtnl", task="t1")
    assert p.request(W.LOCK, name="rtnl", task="t1")["e"] == W.EDEADLK
    p.ok(W.UNLOCK, name="rtnl", task="t1")     # still held by t1, and t1 can let it go

def test_call_errors(wire, pair):
    p, c, dev, name, _ = pair

    def call(peer, ev, payload=None, **kw):
        return peer.request(W.CALL, packed(payload if payload is not None else {}), dev=kw.pop("dev", dev),
                            ev=ev, timeout_ms=kw.pop("timeout_ms", 2000), **kw)
    res = call(p, 9999)
    assert res["e"] == W.EOPNOTSUPP and "not in schema" in res["m"]
    res = call(p, W.LINK_CHANGE, {"up": True})              # async: publish it
    assert res["e"] == W.EINVAL and "async" in res["m"]
    res = call(p, W.REQUEST_RESET, {"reset_type": 1})       # child->parent event from the parent
    assert res["e"] == W.EINVAL
    res = call(p, 10, {"reason": 1})                        # PREPARE_DETACH: the driver does not handle it
    assert res["e"] == W.EOPNOTSUPP and DRIVER in res["m"]
    res = call(p, W.RESET_WARN, {"reset_type": 9})
    assert res["e"] == W.EINVAL and "$.payload.reset_type" in res["m"]
    res = call(p, W.RESET_WARN, {})
    assert res["e"] == W.EINVAL and "$.payload.reset_type: required field missing" in res["m"]
    res = call(p, W.RESET_WARN, {"reset_type": 1}, dev=dev + 1000)
    assert res["e"] == W.ENODEV
    res = call(c, 74, {"op": 1})                            # VIRTCHNL_PASSTHROUGH: the parent does not handle it
    assert res["e"] == W.EOPNOTSUPP
    # The callee's own errno and message come back as they are.
    r = p.next_r()
    p.send(W.CALL, packed({"reset_type": 2}), r=r, dev=dev, ev=W.RESET_WARN, timeout_ms=2000)
    c.answer(c.take_type(W.REQUEST, dev=dev), W.EBUSY, "reset in progress")
    res = p.result(r)
    assert (res["e"], res["m"]) == (W.EBUSY, "reset in progress")


def test_call_deadline_and_late_reply(wire, pair):
    p, c, dev, name, _ = pair
    r = p.next_r()
    p.send(W.CALL, packed({"reset_type": 1}), r=r, dev=dev, ev=W.RESET_WARN, timeout_ms=100)
    req = c.take_type(W.REQUEST, dev=dev)
    res = p.result(r)
    assert res["e"] == W.ETIMEDOUT
    before = wire.ctl.query("ls")["stats"].get("late_replies", 0)
    c.answer(req, 0)
    wait_until(lambda: wire.ctl.query("ls")["stats"].get("late_replies", 0) == before + 1, 5, "late reply counted")


def test_callee_death_fails_the_call(wire, pair):
    """A child that stops heartbeating is declared dead: its pending call is answered
    -ENODEV and the parent gets UNBIND."""
    p, c, dev, name, _ = pair
    r = p.next_r()
    p.send(W.CALL, packed({"reset_type": 1}), r=r, dev=dev, ev=W.RESET_WARN, timeout_ms=30000)
    c.take_type(W.REQUEST, dev=dev)
    c.hb.paused.set()
    res = p.result(r, timeout=10)
    assert res["e"] == W.ENODEV
    assert p.take_type(W.UNBIND, dev=dev)
    c.hb.paused.clear()
    wait_until(lambda: any(h["t"] == W.REREGISTER for h in c.hb.answers), 10, "REREGISTER on the heartbeat socket")


def test_reregister_fails_what_was_in_flight(wire, pair):
    """A peer declared dead gets REREGISTER; the broker answers none of its requests in
    flight. Registering again on the same socket gives a new incarnation."""
    p, c, dev, name, _ = pair
    since = wire.ctl.last_seq()
    r = p.next_r()
    p.send(W.CALL, packed({"reset_type": 1}), r=r, dev=dev, ev=W.RESET_WARN, timeout_ms=30000)
    req = c.take_type(W.REQUEST, dev=dev)
    p.hb.paused.set()
    wire.ctl.wait_uevent("PEER_DEAD", since=since, inc=p.welcome["inc"])
    # The call's handler still holds device_lock: the dead parent's device is deleted
    # (REMOVE) once it has answered; the answer goes nowhere.
    c.answer(req)
    c.answer(c.take_type(W.REMOVE, dev=dev))
    p.send(W.DEV_GET, r=p.next_r(), dev=dev)
    p.take_type(W.REREGISTER)
    old_inc = p.welcome["inc"]
    p.hb.stop()
    assert p.register()["e"] == 0 and p.welcome["inc"] > old_inc
    p.ok(W.DEV_INIT, name="eth")
    assert not [h for h in p.inbox if h["t"] == W.RESULT and h["r"] == r]


# ---- async events -------------------------------------------------------------------------------

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


# ---- control: inject and faults -------------------------------------------------------------------

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


# ---- liveness ---------------------------------------------------------------------------------------

def test_wrong_start_time_is_declared_dead_at_the_next_disconnect(wire):
    since = wire.ctl.last_seq()
    c = wire.child(join=False)
    c.start_time += 1
    c.join()
    other = W.RawPeer(wire.ctx, wire.root, "parent", "blip")
    assert other.request(W.CTL, op="ping")["e"] == 0
    other.close()          # any disconnect makes the broker check every peer's process
    wire.ctl.wait_uevent("PEER_DEAD", since=since, inc=c.welcome["inc"])


def test_shutdown_reaches_drivers_that_declared_it(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c, shutdown=True)
    dev, name, _ = add_and_probe(p, c)
    os.kill(wire.bus.broker.pid, signal.SIGTERM)
    sd = c.take_type(W.SHUTDOWN, dev=dev, timeout=10)
    c.answer(sd)


# ---- a broker restart ---------------------------------------------------------------------------------

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


# ---- against the reference runtimes -------------------------------------------------------------------

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


# ---- probe outcomes ---------------------------------------------------------------------------------

def test_probe_defer_is_retried(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c)
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    r = p.next_r()
    p.send(W.DEV_ADD, r=r, dev=d["dev"])
    c.answer(c.take_type(W.PROBE, dev=d["dev"]), -517)       # -EPROBE_DEFER
    assert p.result(r)["d"] == {"name": "rawp.eth.0", "driver": None}
    c.answer(c.take_type(W.PROBE, dev=d["dev"]), 0)          # the retry, about 100 ms later
    assert p.take_type(W.BIND, dev=d["dev"])["driver"] == DRIVER


def test_failed_probe_lets_the_next_driver_try(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c, name="first")
    register_driver(c, name="second")
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    since = wire.ctl.last_seq()
    r = p.next_r()
    p.send(W.DEV_ADD, r=r, dev=d["dev"])
    first = c.take_type(W.PROBE, dev=d["dev"])
    assert first["driver"] == "first"
    c.answer(first, -12, "no memory")                         # -ENOMEM: reported, next driver
    second = c.take_type(W.PROBE, dev=d["dev"])
    assert second["driver"] == "second"
    c.answer(second)
    assert p.result(r)["d"]["driver"] == "second"
    ev = wire.ctl.wait_uevent("PROBE_FAILED", since=since, dev="rawp.eth.0")
    assert ev["detail"]["errno"] == -12 and ev["detail"]["message"] == "no memory"


@pytest.mark.xfail(strict=True, reason="the broker refuses a child's CALL while its probe runs (-ENODEV: "
                                      "dev.driver is set only once the probe succeeded)")
def test_child_calls_the_parent_from_its_probe(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c)
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    r = p.next_r()
    p.send(W.DEV_ADD, r=r, dev=d["dev"])
    probe = c.take_type(W.PROBE, dev=d["dev"])
    rc = c.next_r()
    c.send(W.CALL, packed({"reset_type": 1}), r=rc, dev=d["dev"], ev=W.REQUEST_RESET, timeout_ms=5000,
           task=probe["task"])
    req = p.take_type(W.REQUEST, dev=d["dev"])
    assert req["task"] == probe["task"]
    p.answer(req)
    assert c.result(rc)["e"] == 0
    c.answer(probe)
    assert p.result(r)["d"]["driver"] == DRIVER


def test_schema_majors_never_bind(wire):
    p = wire.parent()
    d = p.ok(W.DEV_INIT, name="eth", release=True)
    p.ok(W.DEV_ADD, dev=d["dev"])
    c = wire.child(join=False)
    assert c.register(schema=[2, 0])["e"] == 0
    c.hello()
    c.start_heartbeats()
    res = register_driver(c)
    assert res["probed"] == [] and "major versions differ" in res["refused"]["rawp.eth.0"]
    assert "major versions differ" in c.take_type(W.UNBIND, dev=d["dev"])["reason"]
    assert "major versions differ" in p.take_type(W.UNBIND, dev=d["dev"])["reason"]


# ---- sizes and device_lock ----------------------------------------------------------------------------

def test_oversize_payload_is_emsgsize(wire, pair):
    p, c, dev, name, _ = pair
    res = p.request(W.CALL, b"\xc4" + b"x" * (1 << 20), dev=dev, ev=W.RESET_WARN, timeout_ms=1000)
    assert res["e"] == W.EMSGSIZE
    assert p.ok(W.DEV_GET, dev=dev)["refcount"] == 2          # the connection stays


def test_calls_wait_for_device_lock(wire, pair):
    """Parent->child calls are serialized per device: a second call waits behind the
    first; one whose deadline passes there gets -ETIMEDOUT, and a delete answers the
    rest -ENODEV."""
    p, c, dev, name, _ = pair
    body = packed({"reset_type": 1})
    r1, r2, r3 = p.next_r(), p.next_r(), p.next_r()
    p.send(W.CALL, body, r=r1, dev=dev, ev=W.RESET_WARN, timeout_ms=10000)
    first = c.take_type(W.REQUEST, dev=dev)
    p.send(W.CALL, body, r=r2, dev=dev, ev=W.RESET_WARN, timeout_ms=50)
    res = p.result(r2)
    assert res["e"] == W.ETIMEDOUT and "device_lock" in res["m"]
    p.send(W.CALL, body, r=r3, dev=dev, ev=W.RESET_WARN, timeout_ms=10000)
    rd = p.next_r()
    p.send(W.DEV_DELETE, r=rd, dev=dev)
    assert p.result(r3)["e"] == W.ENODEV
    c.answer(first)
    assert p.result(r1)["e"] == 0
    c.answer(c.take_type(W.REMOVE, dev=dev))
    assert p.result(rd)["e"] == 0
    assert [h["r"] for h in c.inbox if h["t"] == W.REQUEST] == []


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
