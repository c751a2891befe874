"""Drivers, devices, probe outcomes, references, PM and shutdown.

The peers (tests/wire/rawpeer.py) know only docs/protocol.md and docs/events.md; a
test waits on the reply or request it expects, never on time.
"""

from __future__ import annotations

import os
import signal

from tests.wire import rawpeer as W
from tests.wire.conftest import DRIVER, add_and_probe, packed, register_driver


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
    p.ok(W.DEV_ADD, dev=d["dev"])
    p.ok(W.DEV_DELETE, dev=d["dev"])
    since = wire.ctl.last_seq()
    assert p.ok(W.DEV_UNINIT, dev=d["dev"]) == {"refcount": 0}
    ev = wire.ctl.wait_uevent("RELEASE", since=since, dev="rawp.eth.0")
    assert ev["detail"]["warning"] == "no release() callback"
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
    other = wire.parent("rawq")
    res = other.request(W.DEV_GET, dev=dev)          # not its device, not bound to it, holds none
    assert res["e"] == W.EPERM
    assert c.ok(W.DEV_GET, dev=dev) == {"refcount": 2}
    assert c.ok(W.DEV_PUT, dev=dev) == {"refcount": 1}
    assert c.request(W.DEV_PUT, dev=dev)["e"] == W.EINVAL       # it holds none now
    # auxiliary_find_device: anyone may find a device on the bus and pin it.
    found = other.ok(W.DEV_FIND, match="rawp.eth")["devices"]
    assert found == [{"dev": dev, "name": name, "match": "rawp.eth", "parent": p.welcome["peer"], "driver": DRIVER}]
    assert other.ok(W.DEV_GET, dev=dev, added=True) == {"refcount": 2}
    # uninit while added drops only the parent's reference; release waits for delete and the last put.
    assert p.ok(W.DEV_UNINIT, dev=dev) == {"refcount": 1}
    r = p.next_r()
    p.send(W.DEV_DELETE, r=r, dev=dev)
    c.answer(c.take_type(W.REMOVE, dev=dev))
    assert p.result(r)["e"] == 0
    assert other.request(W.DEV_GET, dev=dev, added=True)["e"] == W.ENODEV     # no longer on the bus
    assert other.ok(W.DEV_PUT, dev=dev) == {"refcount": 0}
    assert p.take_type(W.RELEASE) == {"t": W.RELEASE, "dev": dev, "name": name}


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


def test_shutdown_reaches_drivers_that_declared_it(wire):
    p, c = wire.parent(), wire.child()
    register_driver(c, shutdown=True)
    dev, name, _ = add_and_probe(p, c)
    os.kill(wire.bus.broker.pid, signal.SIGTERM)
    sd = c.take_type(W.SHUTDOWN, dev=dev, timeout=10)
    c.answer(sd)
