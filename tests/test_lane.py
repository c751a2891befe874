"""The direct lane (docs/protocol.md, section 8): the broker's grant and revoke as a
model without I/O, and child->parent calls over the lane between real processes:
granted after bind, revoked before an unbind completes, a revoke racing a call,
either end killed in the middle of a call, a foreign peer on the lane socket, a
nested call that takes the broker, and the records a watcher sees."""

from __future__ import annotations

import glob
import os
import signal

import msgpack
import pytest
import zmq

from auxipc.broker.bus import Bus
from auxipc.broker.lifecycle import IllegalTransition, LaneEvent, LaneState
from auxipc.faults import FaultRule
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Event
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

PARENT, DRV = "tests.lane_models:LaneParent", "tests.lane_models:LaneDrv"


@pytest.fixture
def lane_bus(make_bus):
    """A broker that grants lanes (``--lane``), whatever AUXIPC_LANE the suite runs with."""
    return make_bus(broker_args=("--lane",))


def start_parent(bus, **env):
    return bus.parent(PARENT, **{"AXT_DEVS": "eth:0", "AUXIPC_LANE": "1", **env})


def start_child(bus, **env):
    return bus.child(DRV, **{"AUXIPC_LANE": "1", **env})


# ---- the broker's side, without processes ------------------------------------------------

class Model:
    """A bus model with a parent and a child that offered lanes, driven by hand."""

    def __init__(self, lane: bool = True):
        self.now = 0.0
        self.bus = Bus(lambda: self.now, epoch=1)
        self.bus.binding.lanes.enabled = lane
        self.r = iter(range(1, 10**6))
        self.parent = self.register(b"p:tp:100:aa", "parent", "tp", 100, handles=[Event.QSET_ADD, Event.SET_MAC])
        self.child = self.register(b"c:ldrv:200:bb", "child", "ldrv", 200, handles=[Event.RESET_WARN])
        self.offer(self.parent, "ipc:///tmp/axt-x/lane-100-0a1b2c3d")
        self.offer(self.child, "")

    def register(self, ident, role, name, pid, handles):
        self.bus.handle(ident, E.Register(r=next(self.r), role=role, name=name, pid=pid, start_time=1,
                                          schema=(1, 0), handles=handles), None)
        self.take(ident)
        return ident

    def offer(self, ident, endpoint):
        self.bus.handle(ident, E.LaneOffer(endpoint=endpoint), None)

    def take(self, ident=None) -> list:
        """The decoded messages sent (to ``ident``), in order; the outbox is emptied."""
        out = [(i, E.decode(f)[0]) for i, f in self.bus.outbox if ident is None or i == ident]
        self.bus.outbox[:] = [(i, f) for i, f in self.bus.outbox if ident is not None and i != ident]
        return out if ident is None else [m for _, m in out]

    def answer(self, ident, msg, e=0):
        self.bus.handle(ident, E.Result(r=msg.r, e=e), None)

    def bind(self):
        """Add tp.eth.0 and register ldrv: PROBE answered 0; the device is bound."""
        b = self.bus
        b.handle(self.parent, E.DevInit(r=next(self.r), name="eth", id=0), None)
        dev = [m for m in self.take(self.parent) if isinstance(m, E.Result)][0].d["dev"]
        b.handle(self.parent, E.DevAdd(r=next(self.r), dev=dev), None)
        b.handle(self.child, E.DrvRegister(r=next(self.r), name="ldrv", id_table=["tp.eth"], probe=True,
                                           handles=[Event.RESET_WARN]), None)
        [probe] = [m for m in self.take(self.child) if isinstance(m, E.Probe)]
        self.answer(self.child, probe)
        return dev


def test_grant_after_bind_to_both_ends_with_the_eligible_events_only():
    m = Model()
    dev = m.bind()
    to_parent, to_child = m.take(m.parent), m.take(m.child)
    kinds = [type(x).__name__ for x in to_parent]
    assert kinds.index("Bind") < kinds.index("LaneGrant")          # BIND first, then the grant
    [gp] = [x for x in to_parent if isinstance(x, E.LaneGrant)]
    [gc] = [x for x in to_child if isinstance(x, E.LaneGrant)]
    assert (gp.dev, gp.grant, gp.token) == (gc.dev, gc.grant, gc.token) and gp.dev == dev
    assert len(gc.token) == 32 and gp.endpoint == "" and gc.endpoint == "ipc:///tmp/axt-x/lane-100-0a1b2c3d"
    # SET_MAC is an rtnl event: it stays on the broker.
    assert gc.events == (int(Event.QSET_ADD),) and gp.name == "tp.eth.0"
    assert gc.peer.startswith("parent tp[100]") and gp.peer.startswith("child ldrv[200]")
    assert m.bus.binding.lanes.state(m.bus.devices[dev]) is LaneState.GRANTED


def test_callees_publish_call_records_only_while_someone_reads_the_trace():
    m = Model()
    m.bus.tracing = False
    m.bind()
    [g] = [x for x in m.take(m.parent) if isinstance(x, E.LaneGrant)]
    assert g.trace is False
    m.take()
    m.bus.tracing = True                       # a watcher subscribed to 'trace'
    [again] = m.take(m.parent)
    assert isinstance(again, E.LaneGrant) and again.trace is True
    assert (again.grant, again.token) == (g.grant, g.token) and m.take(m.child) == []
    m.bus.tracing = True                       # no change: nothing sent
    assert m.take() == []


def test_no_grant_without_offers_or_with_the_lane_off():
    m = Model(lane=False)
    m.bind()
    assert not [x for _, x in m.take() if isinstance(x, E.LaneGrant)]


def test_revoke_reaches_the_parent_before_unbind_and_the_child_before_remove():
    m = Model()
    m.bind()
    m.take()
    done = []
    m.bus.unbind_device("tp.eth.0", lambda e, msg: done.append(e))
    to_child = m.take(m.child)
    assert [type(x).__name__ for x in to_child] == ["LaneRevoke", "Remove"]
    assert to_child[0].e == 0                                        # drained, not failed
    m.answer(m.child, to_child[1])
    to_parent = [type(x).__name__ for x in m.take(m.parent)]
    assert to_parent.index("LaneRevoke") < to_parent.index("Unbind") and done == [0]
    assert m.bus.binding.lanes.grants == {}


def test_parent_gone_fails_in_flight_lane_calls_with_enodev():
    m = Model()
    m.bind()
    m.take()
    m.bus.peer_died(m.bus.peers[m.parent], "killed")
    revokes = [x for x in m.take(m.child) if isinstance(x, E.LaneRevoke)]
    assert revokes and all(r.e == -Errno.ENODEV for r in revokes)
    assert "is gone (killed)" in revokes[0].m and revokes[0].m.startswith("parent tp[100]")
    assert any(r.grant == 0 and r.endpoint.endswith("lane-100-0a1b2c3d") for r in revokes)


def test_fault_rules_revoke_every_lane_and_clearing_them_grants_again():
    m = Model()
    m.bind()
    m.take()
    m.bus.add_fault(FaultRule(kind="handler", target="tp", action="delay", delay_ms=1).validate())
    assert [x for x in m.take(m.child) if isinstance(x, E.LaneRevoke)] and not m.bus.binding.lanes.grants
    m.bus.clear_faults()
    assert [x for x in m.take(m.child) if isinstance(x, E.LaneGrant)]


def test_suspend_revokes_and_resume_grants():
    m = Model()
    dev = m.bind()
    m.take()
    m.bus.handle(m.parent, E.DevPm(r=next(m.r), dev=dev, op="suspend"), None)
    to_child = m.take(m.child)
    assert [type(x).__name__ for x in to_child] == ["LaneRevoke", "Pm"]
    m.answer(m.child, to_child[1])
    m.bus.handle(m.parent, E.DevPm(r=next(m.r), dev=dev, op="resume"), None)
    [pm] = m.take(m.child)
    m.answer(m.child, pm)
    assert [type(x).__name__ for x in m.take(m.child)] == ["LaneGrant"]


@pytest.mark.parametrize("endpoint, errno, words", [
    ("tcp://127.0.0.1:5555", Errno.EINVAL, "$.header.endpoint"),
    ("ipc:///tmp/x/lane-999-0a1b2c3d", Errno.EPERM, "names pid 999"),
    ("ipc:///tmp/x/" + "d" * 120 + "/lane-100-0a1b2c3d", Errno.EINVAL, "at most 107"),
])
def test_offer_is_checked(endpoint, errno, words):
    m = Model()
    with pytest.raises(AuxError) as exc:
        m.bus.binding.lanes.offer(m.bus.peers[m.parent], E.LaneOffer(endpoint=endpoint))
    assert exc.value.errno == errno and words in exc.value.message


def test_revoked_grant_cannot_be_revoked_again():
    m = Model()
    dev = m.bind()
    g = m.bus.binding.lanes.grants[dev]
    g.machine.fire(LaneEvent.REVOKE)
    with pytest.raises(IllegalTransition) as exc:
        g.machine.fire(LaneEvent.REVOKE)
    assert "'revoke' is illegal in state REVOKED" in exc.value.message and exc.value.errno == Errno.ENODEV


# ---- between processes ---------------------------------------------------------------------

def _calls(child, **match):
    return child.records("call", **match)


def test_calls_take_the_lane_after_bind_and_watchers_see_them(lane_bus):
    bus = lane_bus
    bus.connect()
    parent = start_parent(bus)
    child = start_child(bus, AXL_CALLS="50")
    end = child.wait_record("calls-end")
    calls = _calls(child)
    assert len(calls) == 50 and {c["e"] for c in calls} == {""} and {c["via"] for c in calls} == {"lane"}
    assert end["stats"]["lane_calls"] == 50 and end["stats"]["lane_grants"] == 1
    assert len(parent.records("QSET_ADD")) == 50
    grant = bus.expect(kind="trace", action="LANE_GRANT", dev="tp.eth.0")
    assert sorted(grant["detail"]["events"]) == ["QSET_ADD", "REQUEST_RESET"]      # SET_MAC: rtnl
    rec = bus.expect(kind="call", event="QSET_ADD", dev="tp.eth.0", lane=True)
    assert rec["from"].startswith(f"child ldrv[{child.pid}]") and rec["to"].startswith(f"parent tp[{parent.pid}]")
    assert rec["errno"] == 0
    wait_until(lambda: len([r for r in bus.trace() if r.get("kind") == "call" and r.get("lane")]) == 50,
               what="a trace record for every lane call")


def test_no_lane_when_switched_off(lane_bus):
    bus = lane_bus
    start_parent(bus, AUXIPC_LANE="0")
    child = start_child(bus, AXL_CALLS="5", AUXIPC_LANE="0")
    child.wait_record("calls-end")
    assert {c["via"] for c in _calls(child)} == {"broker"} and {c["e"] for c in _calls(child)} == {""}


def test_revoke_before_unbind_completes_no_lane_call_after_remove(lane_bus):
    """The driver calls back to back; an unbind in the middle: every call the parent
    served ran while the device was bound, the first failing call is -ENODEV (through
    the broker, as the lane was revoked before the unbind), and nothing came after."""
    bus = lane_bus
    parent = start_parent(bus)
    child = start_child(bus, AXL_CALLS="0")
    wait_until(lambda: len(_calls(child, via="lane")) >= 30, what="lane calls")
    bus.client.query("unbind", device="tp.eth.0", driver="")
    child.wait_record("calls-end")
    calls = _calls(child)
    assert calls[-1]["e"] == "ENODEV" and calls[-1]["via"] == "broker"
    assert all(c["e"] == "" for c in calls[:-1])
    served = parent.records("QSET_ADD")
    assert served and all(s["bound"] for s in served)
    assert len(served) == len(calls) - 1
    assert child.records("remove")


def test_revoke_racing_an_in_flight_call_drains_it(lane_bus):
    """The parent's handler runs (serving other messages) while the device is unbound:
    that call is answered over the lane; the next one goes through the broker: -ENODEV."""
    bus = lane_bus
    parent = start_parent(bus, AXL_PUMP="0.5")
    child = start_child(bus, AXL_CALLS="0")
    parent.wait_record("slow-start")
    bus.client.query("unbind", device="tp.eth.0", driver="")
    child.wait_record("calls-end")
    first, second = _calls(child)[:2]
    assert (first["e"], first["via"]) == ("", "lane")
    assert (second["e"], second["via"]) == ("ENODEV", "broker")
    assert len(parent.records("QSET_ADD")) == 1


@pytest.mark.parametrize("lane", ["1", "0"])
def test_parent_killed_mid_call_the_caller_gets_enodev_either_way(lane_bus, lane):
    bus = lane_bus
    parent = start_parent(bus, AXL_SLEEP="30", AUXIPC_LANE=lane)
    child = start_child(bus, AXL_CALLS="1", AUXIPC_LANE=lane)
    parent.wait_record("sleep-start")
    bus.kill(bus.find(parent.name))
    child.wait_record("calls-end")
    [call] = _calls(child)
    assert call["e"] == "ENODEV" and call["via"] == ("lane" if lane == "1" else "broker")
    assert call["m"].startswith("QSET_ADD on tp.eth.0: parent tp[") and "is gone" in call["m"]


@pytest.mark.parametrize("lane", ["1", "0"])
def test_deadline_passed_the_caller_gets_etimedout_either_way(lane_bus, lane):
    bus = lane_bus
    parent = start_parent(bus, AXL_SLEEP="1.5", AUXIPC_LANE=lane)
    child = start_child(bus, AXL_CALLS="1", AXL_TIMEOUT="0.3", AUXIPC_LANE=lane)
    [call] = [child.wait_record("call")]
    assert call["e"] == "ETIMEDOUT" and call["via"] == ("lane" if lane == "1" else "broker")
    assert call["m"].startswith("QSET_ADD")
    parent.wait_record("QSET_ADD")


def test_driver_killed_mid_call_the_parent_goes_on(lane_bus):
    bus = lane_bus
    bus.connect()
    parent = start_parent(bus, AXL_PUMP="0.3")
    child = start_child(bus, AXL_CALLS="1")
    parent.wait_record("slow-start")
    bus.kill(bus.find(child.name))
    bus.expect_uevent("UNBIND", "tp.eth.0", timeout=10)
    # A new driver binds, gets a new grant and calls on the lane.
    child2 = start_child(bus, AXL_CALLS="3")
    child2.wait_record("calls-end")
    assert [(c["e"], c["via"]) for c in _calls(child2)] == [("", "lane")] * 3
    assert len(parent.records("QSET_ADD")) == 4


def test_broker_restart_voids_lanes_and_the_new_broker_grants_again(lane_bus):
    """Calls loop on the lane; the broker is killed: the loop's call fails as through
    the broker (the runtime lost it), the grants are dropped; a new broker adopts the
    binding and grants a new lane, and the next round of calls takes it."""
    bus = lane_bus
    start_parent(bus)
    child = start_child(bus, AXL_CALLS="0", AXL_ROUNDS="2")
    wait_until(lambda: len(_calls(child, via="lane")) >= 20, what="lane calls")
    os.kill(bus.broker.pid, signal.SIGKILL)
    end = child.wait_record("calls-end", round=1)
    assert _calls(child)[-1]["e"] in ("ESHUTDOWN", "ENOTCONN", "ETIMEDOUT"), _calls(child)[-1]
    bus.client.close()
    bus.start_broker(0.1, 5, "--lane")
    child.wait_record("calls-start", round=2, timeout=20)
    wait_until(lambda: len(_calls(child, via="lane", round=2)) >= 20, timeout=20, what="lane calls again")
    assert end["stats"]["lane_grants"] == 1
    assert all(c["e"] == "" for c in _calls(child, round=2)[:20])


def test_foreign_peer_on_the_lane_socket_is_refused(lane_bus):
    bus = lane_bus
    parent = start_parent(bus)
    child = start_child(bus, AXL_CALLS="1")
    child.wait_record("calls-end")
    [path] = glob.glob(os.path.join(bus.root, f"lane-{parent.pid}-*"))
    dev = bus.ls()["devices"][0]["id"]
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        s.connect(f"ipc://{path}")
        req = E.fast(E.Request, msgpack.packb({"qs_handle": 7}), r=1, dev=dev, ev=int(Event.QSET_ADD),
                     timeout_ms=1000, task="intruder")
        s.send_multipart([b"\0" * 16, *req])                         # a token it was never granted
        msg, _ = E.decode(s.recv_multipart())
        assert isinstance(msg, E.Result) and msg.e == -Errno.EPERM and msg.d == {"lane": "refused"}
        assert "no lane is granted" in msg.m
        s.send_multipart([b"garbage"])                               # malformed: dropped, never a crash
        s.send_multipart([b"\0" * 16, b"AUX1" + b"\xc1" * 20])
        s.send_multipart([b"\0" * 16, *req])
        msg, _ = E.decode(s.recv_multipart())
        assert msg.e == -Errno.EPERM
        big = ctx.socket(zmq.DEALER)                                  # over MAXMSGSIZE: its connection is cut
        big.setsockopt(zmq.LINGER, 0)
        big.connect(f"ipc://{path}")
        big.send_multipart([b"\0" * 16, b"x" * (E.MAX_MSG + 8192)])
        big.close(0)
        for i in range(200):                                          # a flood of junk: bounded, dropped
            s.send_multipart([os.urandom(16), os.urandom(i % 64)], zmq.NOBLOCK)
        s.send_multipart([b"\0" * 16, *req])
        while True:                                                   # the refusal comes after the junk
            msg, _ = E.decode(s.recv_multipart())
            if msg.r == 1:
                break
        assert msg.e == -Errno.EPERM
    finally:
        s.close(0)
        ctx.term()
    assert not parent.records("QSET_ADD", qs=7)
    bus.stop(child)
    child2 = start_child(bus, AXL_CALLS="2")                            # the parent still serves, on the lane
    child2.wait_record("calls-end")
    assert [(c["e"], c["via"]) for c in _calls(child2)] == [("", "lane")] * 2


def test_nested_call_from_a_handler_takes_the_broker(lane_bus):
    bus = lane_bus
    bus.connect()
    start_parent(bus)
    child = start_child(bus, AXL_CALLS="1")
    child.wait_record("calls-end")
    code, out, err = bus.send("tp.eth.0", "RESET_WARN", "parent", {"reset_type": "FUNC"})
    assert code == 0, err
    nested = child.wait_record("nested")
    assert (nested["e"], nested["via"]) == ("", "broker")
    rec = bus.expect(kind="call", event="QSET_ADD", dev="tp.eth.0", errno=0)
    while rec.get("lane"):
        rec = bus.expect(kind="call", event="QSET_ADD", dev="tp.eth.0", errno=0)
    assert "lane" not in rec


def test_stale_lane_files_of_dead_processes_are_removed(tmp_path):
    from pathlib import Path

    from auxipc.runtime_dir import lane_enabled, remove_stale_lanes
    dead = subprocess_pid()
    for name in (f"lane-{dead}-0a0b0c0d", f"lane-{os.getpid()}-0a0b0c0d", "bus.sock"):
        (tmp_path / name).write_text("")
    assert remove_stale_lanes(Path(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == ["bus.sock", f"lane-{os.getpid()}-0a0b0c0d"]
    for value, want in (("", True), ("1", True), ("0", False), ("off", False)):
        os.environ["AUXIPC_LANE"] = value
        try:
            assert lane_enabled() is want, value
        finally:
            del os.environ["AUXIPC_LANE"]


def subprocess_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
