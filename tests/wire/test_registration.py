"""Registration, heartbeats, unknown senders, malformed messages and control queries.

The peers (tests/wire/rawpeer.py) know only docs/protocol.md and docs/events.md; a
test waits on the reply or request it expects, never on time.
"""

from __future__ import annotations

import os

from tests.conftest import wait_until
from tests.wire import rawpeer as W
from tests.wire.conftest import packed


def test_register_reply_hello_and_heartbeat(wire):
    p = wire.parent(join=False)
    res = p.register()
    assert res["e"] == 0
    d = res["d"]
    assert set(d) == {"peer", "inc", "epoch", "faults", "hb_ivl_ms", "hb_liveness", "schema", "index"}
    assert d["index"] == 0                                   # the first instance of its model
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
    """CTL needs no registration; ops that change the bus are taken on admin.sock only."""
    for ctl in (wire.ctl, wire.ctl_bus):
        assert ctl.query("ping")["epoch"] > 0
        assert ctl.query("fault", action="ls") == {"rules": []}
        res = ctl("nope")
        assert res["e"] == W.EOPNOTSUPP and "unknown control op" in res["m"]
    for op, args in (("send", {"device": "x", "event": "LINK_CHANGE", "from": "parent"}),
                     ("bind", {"device": "x", "driver": "y"}), ("unbind", {"device": "x"}),
                     ("fault", {"action": "clear"}), ("signal", {"target": "x"})):
        assert wire.ctl_bus(op, **args)["e"] == W.EPERM, op
    res = wire.ctl.query("fault", action="clear")
    assert res == {"cleared": 0}
    wire.ctl.sock.send(W.pack({"t": W.DEV_INIT, "r": 5, "name": "eth"}))       # admin.sock takes CTL only
    assert wire.ctl.sock.poll(5000) and W.unpack(wire.ctl.sock.recv())["e"] == W.EPROTO
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
    p.send_raw(W.MAGIC + packed({"t": W.DEV_INIT, "r": 10, "name": "eth", "release": 1}))
    res = p.result(10)
    assert res["e"] == W.EINVAL and res["m"].startswith("$.header.release: expected bool, got int")
    deep: list = []
    for _ in range(100):
        deep = [deep]
    p.send_raw(W.MAGIC + packed({"t": W.DEV_INIT, "r": 11, "name": "eth", "x": deep}))
    res = p.take_type(W.RESULT, r=0)                  # refused before its r was read
    assert res["e"] == W.EPROTO
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


def test_identity_comes_from_the_connection(wire):
    """The broker takes pid and start time from the socket (SO_PEERCRED and /proc), not
    from REGISTER: wrong or absent claims are corrected, and the peer stays registered
    through the broker's process checks."""
    since = wire.ctl.last_seq()
    c = wire.child(join=False)
    r = c.next_r()
    c.send(W.REGISTER, r=r, role="child", name="rawc", pid=1, start_time=0, schema=W.SCHEMA)
    res = c.result(r)
    assert res["e"] == 0 and res["d"]["peer"] == f"child rawc[{os.getpid()}]#{res['d']['inc']}"
    c.welcome = res["d"]
    c.hello()
    c.start_heartbeats()
    other = W.RawPeer(wire.ctx, wire.root, "parent", "blip")
    assert other.request(W.CTL, op="ping")["e"] == 0
    other.close()          # a disconnect makes the broker check every peer's process
    wire.ctl.wait_uevent("REGISTER", since=since, pid=os.getpid(), name="rawc")
    peer = next(x for x in wire.ctl.query("ls")["peers"] if x["inc"] == c.welcome["inc"])
    assert peer["alive"] and peer["pid"] == os.getpid()
    assert wire.ctl.query("ls")["stats"]["identity_corrected"] >= 1


def test_a_live_name_is_taken(wire):
    """One live peer per role and name: another process registering it gets -EEXIST."""
    wire.bus.parent("tests.models:Pair", AXT_MOD="rawp", AXT_DEVS="eth:0")
    p = wire.parent(join=False)
    res = p.register()
    assert res["e"] == W.EEXIST and "rawp" in res["m"]
