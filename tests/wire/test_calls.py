"""Sync calls, locks and rtnl, deadlines, deaths and REREGISTER.

The peers (tests/wire/rawpeer.py) know only docs/protocol.md and docs/events.md; a
test waits on the reply or request it expects, never on time.
"""

from __future__ import annotations

from tests.conftest import wait_until
from tests.wire import rawpeer as W
from tests.wire.conftest import DRIVER, packed


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


def test_retaking_a_held_lock_is_edeadlk_and_keeps_it(wire):
    p = wire.parent()
    p.ok(W.LOCK, name="rtnl", task="t1")
    assert p.request(W.LOCK, name="rtnl", task="t1")["e"] == W.EDEADLK
    p.ok(W.UNLOCK, name="rtnl", task="t1")     # still held by t1, and t1 can let it go


def test_unlock_only_by_the_peer_that_locked(wire):
    p, other = wire.parent(), wire.parent("rawq")
    p.ok(W.LOCK, name="mutex:cfg", task="t1")
    assert other.request(W.UNLOCK, name="mutex:cfg", task="t1")["e"] == W.EPERM
    p.ok(W.UNLOCK, name="mutex:cfg", task="t1")


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
    res = p.request(W.CALL, dev=dev, ev=W.RESET_WARN, timeout_ms=2000)      # no `p`: the empty map
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
