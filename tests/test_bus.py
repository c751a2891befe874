"""The broker's bus model, driven in memory (no sockets, no processes)."""

import pytest

from auxipc.broker.bus import Bus, device_name, match_name
from auxipc.broker.lifecycle import (
    BindEvent,
    BindState,
    DeviceEvent,
    DeviceState,
    IllegalTransition,
    PeerEvent,
    bind_machine,
    device_machine,
    peer_machine,
)
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Event


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Harness:
    """Peers as routing ids; messages in through Bus.handle, out through the outbox."""

    def __init__(self):
        self.clock = Clock()
        self.bus = Bus(self.clock, epoch=1, hb_ivl=0.1, hb_liveness=3)
        self._r = 1000

    def send(self, ident, msg, payload=None):
        frames = E.encode(msg, payload)
        m, p = E.decode(frames)
        self.bus.handle(ident, m, p)

    def take(self, ident=None):
        """Decoded messages sent (to ``ident``), removed from the outbox."""
        out, keep = [], []
        for who, frames in self.bus.outbox:
            if ident is None or who == ident:
                m, p = E.decode(frames)
                out.append((who, m, p))
            else:
                keep.append((who, frames))
        self.bus.outbox = keep
        return out

    def result(self, ident, r):
        """The RESULT r sent to ``ident``; other messages stay in the outbox."""
        for i, (who, frames) in enumerate(self.bus.outbox):
            m, p = E.decode(frames)
            if who == ident and isinstance(m, E.Result) and m.r == r:
                del self.bus.outbox[i]
                return m, p
        raise AssertionError(f"no RESULT r={r} for {ident}")

    def r(self):
        self._r += 1
        return self._r

    def register(self, ident, role, name, handles=(), pid=None, instance=""):
        r = self.r()
        self.send(ident, E.Register(r=r, role=role, name=name, pid=pid or hash(ident) % 30000 + 2,
                                    start_time=1, schema=(1, 0), handles=tuple(int(h) for h in handles),
                                    instance=instance))
        m, _ = self.result(ident, r)
        assert m.e == 0, m.m
        return m.d

    def init_add(self, parent, name="eth", id=0, release=True):
        r = self.r()
        self.send(parent, E.DevInit(r=r, name=name, id=id, release=release))
        m, _ = self.result(parent, r)
        assert m.e == 0, m.m
        dev = m.d["dev"]
        r = self.r()
        self.send(parent, E.DevAdd(r=r, dev=dev))
        return dev, r

    def answer(self, ident, kind, e=0, payload=None):
        """Answer the first pending request of type ``kind`` sent to ``ident``."""
        for _who, m, _p in self.take(ident):
            if isinstance(m, kind):
                self.send(ident, E.Result(r=m.r, e=e), payload)
                return m
        raise AssertionError(f"no {kind.__name__} sent to {ident}")

    def actions(self, dev=None):
        return [u["action"] for u in self.bus.uevents if dev is None or u["dev"] == dev]


P, C, C2 = b"p:ixd", b"c:idpf", b"c:other"


@pytest.fixture
def h():
    return Harness()


def bound(h, handles=(Event.RESET_WARN,), parent_handles=(Event.SET_MAC, Event.REQUEST_RESET)):
    h.register(P, "parent", "ixd", handles=parent_handles)
    h.register(C, "child", "idpf", handles=handles)
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True, remove=True,
                            handles=tuple(int(x) for x in handles)))
    assert h.result(C, 1)[0].e == 0
    dev, r = h.init_add(P)
    h.answer(C, E.Probe)
    assert h.result(P, r)[0].d == {"name": "ixd.eth.0", "driver": "idpf_eth"}
    h.take()
    return dev


def test_names_and_matching():
    assert device_name("ixd", "eth", 3) == "ixd.eth.3"
    assert device_name("ixd", "eth", 2**32 - 1) == "ixd.eth.-1"     # %d, like the kernel
    assert match_name("idpf.8086.rdma.core.3") == "idpf.8086.rdma.core"


def test_add_binds_and_notifies_parent(h):
    dev = bound(h)
    d = h.bus.devices[dev]
    assert (d.life.state, d.bind.state, d.refcount) == (DeviceState.ADDED, BindState.BOUND, 1)
    assert h.actions("ixd.eth.0") == ["ADD", "BIND"]


def test_add_replies_only_after_probe(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    h.take()
    dev, r = h.init_add(P)
    assert not [m for _, m, _ in h.take(P) if isinstance(m, E.Result)]   # add still waiting
    h.answer(C, E.Probe)
    assert h.result(P, r)[0].d["driver"] == "idpf_eth"


def test_match_exact_after_last_dot(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="d", id_table=("ixd.et", "ixd"), probe=True))
    dev, r = h.init_add(P)
    assert h.result(P, r)[0].d["driver"] is None
    assert not [m for _, m, _ in h.take(C) if isinstance(m, E.Probe)]


@pytest.mark.parametrize("errno, deferred, action", [
    (Errno.ENODEV, False, None),
    (Errno.ENXIO, False, None),
    (Errno.ENOMEM, False, "PROBE_FAILED"),
    (Errno.EPROBE_DEFER, True, "PROBE_DEFER"),
])
def test_probe_results(h, errno, deferred, action):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe, e=-errno)
    assert h.result(P, r)[0].e == 0            # add succeeds whatever probe says
    d = h.bus.devices[dev]
    assert (d.bind.state, d.deferred) == (BindState.UNBOUND, deferred)     # deferred: on the deferred list
    assert h.actions("ixd.eth.0") == ["ADD"] + ([action] if action else [])


def test_probe_defer_is_retried(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe, e=-Errno.EPROBE_DEFER)
    h.clock.t += 0.2
    h.bus.tick()
    h.answer(C, E.Probe)
    assert h.bus.devices[dev].bind.state is BindState.BOUND


def test_reject_tries_next_driver(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "a")
    h.register(C2, "child", "b")
    h.send(C, E.DrvRegister(r=1, name="first", id_table=("ixd.eth",), probe=True))
    h.send(C2, E.DrvRegister(r=1, name="second", id_table=("ixd.eth",), probe=True))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe, e=-Errno.ENODEV)
    h.answer(C2, E.Probe)
    assert h.result(P, r)[0].d["driver"] == "second"


def test_driver_rules(h):
    h.register(C, "child", "idpf")
    h.register(C2, "child", "other")
    h.send(C, E.DrvRegister(r=1, name="x", id_table=(), probe=True))
    assert h.result(C, 1)[0].m == "driver x: id_table is empty"
    h.send(C, E.DrvRegister(r=2, name="x", id_table=("a.b",), probe=False))
    assert h.result(C, 2)[0].e == -Errno.EINVAL
    h.send(C, E.DrvRegister(r=3, name="x", id_table=("a.b",), probe=True))
    h.send(C2, E.DrvRegister(r=4, name="x", id_table=("a.b",), probe=True))
    m, _ = h.result(C2, 4)
    assert m.e == -Errno.EBUSY and "already registered" in m.m


def test_duplicate_device_name(h):
    h.register(P, "parent", "ixd")
    h.init_add(P)
    dev2, r = h.init_add(P)
    m, _ = h.result(P, r)
    assert m.e == -Errno.EEXIST and m.m.startswith("auxiliary_device_add: ixd.eth.0 already exists")
    assert h.bus.devices[dev2].life.state is DeviceState.INITIALIZED    # still needs uninit


def test_init_requires_name(h):
    h.register(P, "parent", "ixd")
    h.send(P, E.DevInit(r=5, name="", id=0))
    assert h.result(P, 5)[0].e == -Errno.EINVAL


def test_delete_is_synchronous_and_release_at_last_put(h):
    dev = bound(h)
    h.send(C, E.DevGet(r=9, dev=dev))
    assert h.result(C, 9)[0].d["refcount"] == 2
    h.send(P, E.DevDelete(r=10, dev=dev))
    assert not [m for _, m, _ in h.take(P) if isinstance(m, E.Result)]   # waits for remove()
    h.answer(C, E.Remove)
    assert h.result(P, 10)[0].e == 0
    h.send(P, E.DevUninit(r=11, dev=dev))
    assert h.result(P, 11)[0].d["refcount"] == 1
    assert "RELEASE" not in h.actions()
    h.send(C, E.DevPut(r=12, dev=dev))
    h.result(C, 12)
    assert [m for _, m, _ in h.take(P) if isinstance(m, E.Release)]
    assert h.actions("ixd.eth.0") == ["ADD", "BIND", "UNBIND", "REMOVE", "RELEASE"]
    assert dev not in h.bus.devices


def test_operations_on_deleted_device_fail_cleanly(h):
    dev = bound(h)
    h.send(P, E.DevDelete(r=10, dev=dev))
    h.answer(C, E.Remove)
    h.take()
    h.send(P, E.Call(r=20, dev=dev, ev=Event.RESET_WARN, timeout_ms=100), {"reset_type": 1})
    assert h.result(P, 20)[0].e == -Errno.ENODEV
    h.send(P, E.DevDelete(r=21, dev=dev))
    assert h.result(P, 21)[0].e == -Errno.ENODEV
    h.send(C, E.Call(r=22, dev=dev, ev=Event.SET_MAC, timeout_ms=100), {"addr": b"\x02" * 6})
    assert h.result(C, 22)[0].e == -Errno.ENODEV


def test_sync_calls_serialized_under_device_lock(h):
    dev = bound(h)
    for r in (1, 2):
        h.send(P, E.Call(r=r, dev=dev, ev=Event.RESET_WARN, timeout_ms=1000), {"reset_type": 1})
    sent = [m for _, m, _ in h.take(C) if isinstance(m, E.Request)]
    assert len(sent) == 1                        # the second waits for device_lock
    h.send(C, E.Result(r=sent[0].r))
    assert h.result(P, 1)[0].e == 0
    h.answer(C, E.Request)
    assert h.result(P, 2)[0].e == 0


def test_call_checks(h):
    dev = bound(h)
    cases = [
        (P, E.Call(r=1, dev=dev, ev=Event.SET_MAC, timeout_ms=100), {"addr": b"\x02" * 6},
         "SET_MAC goes child->parent; a parent cannot send it"),
        (P, E.Call(r=2, dev=dev, ev=Event.LINK_CHANGE, timeout_ms=100), {"up": True},
         "LINK_CHANGE is async: publish it, do not CALL it"),
        (P, E.Call(r=3, dev=dev, ev=4242, timeout_ms=100), {}, "event 4242 is not in schema 1.0"),
        (P, E.Call(r=4, dev=dev, ev=Event.PREPARE_DETACH, timeout_ms=100), {"reason": 1},
         "driver idpf_eth has no handler for PREPARE_DETACH"),
        (P, E.Call(r=5, dev=dev, ev=Event.RESET_WARN, timeout_ms=100), {"reset_type": "x"},
         "$.payload.reset_type: 'x' is not one of FUNC, DEV, GLOBAL, FLR"),
        (P, E.Call(r=6, dev=999, ev=Event.RESET_WARN, timeout_ms=100), {"reset_type": 1},
         "device #999 does not exist"),
        (C, E.Call(r=7, dev=dev, ev=Event.REQUEST_RESET, timeout_ms=100), {"reset_type": 1}, None),
    ]
    for who, msg, payload, text in cases:
        h.send(who, msg, payload)
        if text is None:
            continue
        assert h.result(who, msg.r)[0].m == text


def test_deadline_answers_etimedout(h):
    dev = bound(h)
    h.send(P, E.Call(r=1, dev=dev, ev=Event.RESET_WARN, timeout_ms=50), {"reset_type": 1})
    h.clock.t += 0.06
    h.bus.tick()
    m, _ = h.result(P, 1)
    assert m.e == -Errno.ETIMEDOUT and "slow handler" in m.m


def test_callee_death_answers_every_pending_call(h):
    h.register(P, "parent", "ixd", handles=(Event.SET_MAC,))
    h.register(C, "child", "idpf", handles=(Event.RESET_WARN,))
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True, handles=(Event.RESET_WARN,)))
    devs = []
    for i in range(3):
        dev, r = h.init_add(P, id=i)
        h.answer(C, E.Probe)
        devs.append(dev)
    h.take()
    for i, dev in enumerate(devs):
        h.send(P, E.Call(r=100 + i, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000), {"reset_type": 1})
    h.bus.peer_died(h.bus.peers[C], "killed")
    for i in range(3):
        assert h.result(P, 100 + i)[0].e == -Errno.ENODEV
    assert not h.bus.pending
    assert all(h.bus.devices[d].bind.state is BindState.UNBOUND for d in devs)


def test_parent_death_deletes_its_devices(h):
    dev = bound(h)
    h.bus.peer_died(h.bus.peers[P], "killed")
    h.answer(C, E.Remove)
    assert dev not in h.bus.devices
    assert h.actions("ixd.eth.0")[-3:] == ["UNBIND", "REMOVE", "RELEASE"]


def test_heartbeat_expiry(h):
    h.register(P, "parent", "ixd")
    h.clock.t += 0.2
    h.send(P + b"#hb", E.Heartbeat(epoch=1))
    h.bus.tick()
    assert h.bus.peers[P].alive
    h.clock.t += 0.31
    h.bus.tick()
    assert P not in h.bus.peers
    assert h.actions()[-1] == "PEER_DEAD"


def test_unregistered_sender_told_to_reregister(h):
    h.send(b"stranger", E.DevInit(r=1, name="eth"))
    (_, m, _), = h.take(b"stranger")
    assert isinstance(m, E.Reregister)


def test_major_schema_mismatch_registers_but_never_binds(h):
    h.send(P, E.Register(r=1, role="parent", name="ixd", pid=5, start_time=1, schema=(2, 0)))
    assert h.result(P, 1)[0].e == 0                 # any major registers...
    h.register(C, "child", "idpf")
    dev, r = h.init_add(P)
    assert h.result(P, r)[0].d["driver"] is None
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    why = ("bind refused: driver idpf_eth (child idpf[%d]#2) speaks schema 1.0, parent ixd of ixd.eth.0 "
           "speaks 2.0: major versions differ" % h.bus.peers[C].pid)
    assert h.result(C, 1)[0].d == {"probed": [], "refused": {"ixd.eth.0": why}}   # ...none is probed
    assert h.bus.devices[dev].last_error == why
    assert h.bus.uevents[-1]["action"] == "BIND_REFUSED" and h.bus.uevents[-1]["detail"]["reason"] == why
    for ident in (P, C):                            # both sides are told; the child gets no PROBE
        assert [(type(m), m.reason) for _, m, _ in h.take(ident)] == [(E.Unbind, why)]


def test_late_reply_from_old_incarnation_dropped(h):
    dev = bound(h)
    h.send(P, E.Call(r=1, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000), {"reset_type": 1})
    (req,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Request)]
    h.bus.peer_died(h.bus.peers[C], "killed")
    h.register(C, "child", "idpf", pid=77)         # same routing id, new incarnation
    h.send(C, E.Result(r=req.r))
    assert h.bus.stats["late_replies"] == 1


# ---- state machines -------------------------------------------------------------------

def test_state_machine_tables_name_state_and_event():
    m = device_machine("ixd.eth.0")
    m.fire(DeviceEvent.ADD)
    m.fire(DeviceEvent.DELETE)
    with pytest.raises(IllegalTransition) as info:
        m.fire(DeviceEvent.ADD)
    assert info.value.errno == Errno.ENODEV
    assert str(info.value) == "ENODEV: device ixd.eth.0: 'add' is illegal in state DELETED"
    b = bind_machine("ixd.eth.0")
    with pytest.raises(AuxError, match="'remove' is illegal in state UNBOUND"):
        b.fire(BindEvent.REMOVE)
    p = peer_machine("child x")
    p.fire(PeerEvent.CRASH)
    with pytest.raises(AuxError, match="ESHUTDOWN"):
        p.fire(PeerEvent.UNREGISTER)


def test_suspend_resume_driven_by_the_parent(h):
    dev = bound(h)
    h.send(P, E.DevPm(r=30, dev=dev, op="suspend"))
    pm = h.answer(C, E.Pm)
    assert pm.op == "suspend"
    assert h.result(P, 30)[0].e == 0
    h.send(P, E.DevPm(r=31, dev=dev, op="hibernate"))
    assert h.result(P, 31)[0].m == "$.header.op: 'hibernate' is not 'suspend' or 'resume'"
    assert h.actions("ixd.eth.0")[-1] == "SUSPEND"


def test_bus_shutdown_calls_shutdown_of_bound_drivers(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True, shutdown=True))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe)
    h.take()
    done = []
    h.bus.shutdown_all(lambda: done.append(True))
    assert not done
    h.answer(C, E.Shutdown)
    assert done and h.actions("ixd.eth.0")[-1] == "SHUTDOWN"


def test_leaked_reference_after_delete_is_reported(h):
    dev = bound(h)
    h.send(C, E.DevGet(r=40, dev=dev))
    h.send(P, E.DevDelete(r=41, dev=dev))
    h.answer(C, E.Remove)
    h.send(P, E.DevUninit(r=42, dev=dev))
    assert h.bus.leaks() == [{"dev": "ixd.eth.0", "holders": {h.bus.peers[C].label: 1}}]


def test_timers_cancelled_en_masse_keep_the_heap_small_and_fire_once():
    """Nearly every call's deadline is cancelled: the heap is rebuilt without them, a
    timer fires once even when a callback rebuilds the heap, and cancelling a timer
    that already fired changes nothing."""
    clock = Clock()
    bus = Bus(clock, epoch=1)
    fired = []
    keep = [bus.later(1.0 + i, fired.append, i) for i in range(3)]
    for _ in range(1000):
        bus.cancel(bus.later(5.0, fired.append, "cancelled"))
    assert len(bus.timers.heap) < 200
    doomed = [bus.later(2.5, fired.append, f"doomed-{i}") for i in range(100)]
    bus.later(0.5, lambda: [bus.cancel(t) for t in doomed])    # rebuilds the heap while tick runs
    clock.t += 10
    bus.tick()
    assert fired == [0, 1, 2]
    bus.cancel(keep[0])
    bus.tick()
    assert fired == [0, 1, 2] and bus.next_timer() is None


def test_broker_modules_import_no_cycle():
    """The bus's parts see each other through records.Host, never by importing back
    (in-function imports count: they are cycles too)."""
    import ast
    import pathlib

    import auxipc.broker as pkg
    root = pathlib.Path(pkg.__file__).parent
    deps = {}
    for path in root.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("auxipc.broker."):
                found.add(node.module.rsplit(".", 1)[1])
        deps[path.stem] = found

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in deps.get(start, ()))
    assert [m for m in deps if reaches(m, m)] == []
