"""Cross-process locks and lockdep, in memory: deadlocks refused, inversions reported."""

import pytest

from auxipc.broker.lockdep import Lock, LockDep, LockedOp
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Event
from tests.test_bus import C, Harness, P, bound


def op(task, what="op", started=None):
    return LockedOp(what, lambda o: started.append(o) if started is not None else None, task=task)


def test_fifo_and_release():
    dep = LockDep()
    lock = Lock("rtnl", dep)
    started = []
    a, b = op("A", started=started), op("B", started=started)
    lock.run(a)
    lock.run(b)
    assert started == [a] and dep.waiting == {"B": lock}
    lock.release(a)
    assert started == [a, b] and not dep.waiting and dep.holds("B", "rtnl")


def test_recursive_acquisition_is_a_deadlock():
    dep = LockDep()
    lock = Lock("rtnl", dep)
    lock.run(op("A"))
    with pytest.raises(AuxError) as info:
        lock.run(op("A"))
    assert info.value.errno == Errno.EDEADLK
    assert "rtnl is held by A" in info.value.message


def test_abba_deadlock_refused_with_the_chain():
    reports = []
    dep = LockDep(lambda kind, detail: reports.append((kind, detail)))
    rtnl, dl = Lock("rtnl", dep), Lock("device_lock:ixd.eth.0", dep)
    rtnl.run(op("mtu", "ndo_change_mtu"))          # task mtu holds rtnl
    dl.run(op("reset", "remove ixd.eth.0"))        # task reset holds device_lock
    dl.run(op("mtu", "BEFORE_MTU_CHANGE"))         # mtu waits for device_lock (held by reset)
    with pytest.raises(AuxError) as info:
        rtnl.run(op("reset", "remove takes rtnl"))  # reset would wait for rtnl: cycle
    assert info.value.errno == Errno.EDEADLK
    assert info.value.message == (
        "reset waiting for rtnl would deadlock: rtnl is held by mtu (ndo_change_mtu); "
        "mtu waits for device_lock:ixd.eth.0; device_lock:ixd.eth.0 is held by reset (remove ixd.eth.0)")
    kinds = [k for k, _ in reports]
    assert kinds == ["inversion", "deadlock"]


def test_inversion_reported_even_without_deadlock():
    reports = []
    dep = LockDep(lambda kind, detail: reports.append(detail))
    rtnl, dl = Lock("rtnl", dep), Lock("device_lock:ixd.eth.0", dep)
    a = op("mtu")
    rtnl.run(a)
    d = op("mtu")
    dl.run(d)                      # mtu: rtnl -> device_lock
    dl.release(d)
    rtnl.release(a)
    r = op("reset")
    dl.run(r)
    rtnl.run(op("reset"))          # reset: device_lock -> rtnl, nothing held: no deadlock
    assert len(reports) == 1
    assert reports[0]["classes"] == ["device_lock", "rtnl"]
    assert reports[0]["earlier"] == ["mtu holds rtnl and takes device_lock:ixd.eth.0"]
    assert reports[0]["this"] == "reset holds device_lock:ixd.eth.0 and takes rtnl"


def test_cancel_queued_clears_the_wait():
    dep = LockDep()
    lock = Lock("mutex:x", dep)
    lock.run(op("A"))
    b = op("B")
    lock.run(b)
    assert lock.cancel(b, "timeout")
    assert "B" not in dep.waiting


# ---- through the bus ------------------------------------------------------------------------

def lock(h, who, name, task, r, ensure=False):
    h.send(who, E.LockReq(r=r, name=name, task=task, timeout_ms=1000, ensure=ensure))


def test_named_locks_through_the_bus():
    h = Harness()
    bound(h)
    lock(h, P, "rtnl", "ixd/t1", 1)
    assert h.result(P, 1)[0].e == 0
    lock(h, C, "rtnl", "idpf/t2", 2)                   # queued behind ixd/t1
    assert not [m for _, m, _ in h.take(C) if isinstance(m, E.Result)]
    h.send(P, E.UnlockReq(r=3, name="rtnl", task="ixd/t1"))
    assert h.result(P, 3)[0].e == 0
    assert h.result(C, 2)[0].e == 0                    # granted now
    lock(h, C, "rtnl", "idpf/t2", 4, ensure=True)      # held already: fine with ensure
    assert h.result(C, 4)[0].d == {"held": True}
    lock(h, C, "bogus", "t", 5)
    assert h.result(C, 5)[0].m == "$.header.name: 'bogus' is not a lock (rtnl or mutex:<name>)"


def test_event_under_rtnl_vs_remove_taking_rtnl_is_edeadlk():
    """The ice MTU deadlock: the parent sends a sync event while holding rtnl; the
    child's remove() (holding device_lock) takes rtnl."""
    h = Harness()
    dev = bound(h, handles=(Event.RESET_WARN,))
    h.send(P, E.DevDelete(r=1, dev=dev, task="ixd/reset"))          # remove() runs under device_lock
    (remove,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Remove)]
    lock(h, P, "rtnl", "ixd/mtu", 2)                                 # MTU path takes rtnl
    assert h.result(P, 2)[0].e == 0
    h.send(P, E.Call(r=3, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000, task="ixd/mtu"), {"reset_type": 1})
    lock(h, C, "rtnl", remove.task, 4)                               # remove() takes rtnl: cycle
    m, _ = h.result(C, 4)
    assert m.e == -Errno.EDEADLK, m.m
    assert m.e == -Errno.EDEADLK
    assert "rtnl is held by ixd/mtu" in m.m and "device_lock:ixd.eth.0 is held by ixd/reset" in m.m
    assert [u["action"] for u in h.bus.uevents].count("LOCKDEP") >= 1
    h.send(C, E.Result(r=remove.r))                                  # remove() returns without rtnl
    assert h.result(P, 1)[0].e == 0                                  # delete done
    assert h.result(P, 3)[0].e == -Errno.ENODEV                      # the event found no driver


def test_fixed_variant_event_from_a_worker_is_clean():
    """The fix: the MTU event goes out from a worker that does not hold rtnl."""
    h = Harness()
    dev = bound(h, handles=(Event.RESET_WARN,))
    h.send(P, E.DevDelete(r=1, dev=dev, task="ixd/reset"))
    (remove,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Remove)]
    lock(h, P, "rtnl", "ixd/mtu", 2)
    h.result(P, 2)
    h.send(P, E.UnlockReq(r=3, name="rtnl", task="ixd/mtu"))         # MTU path done with rtnl
    h.result(P, 3)
    h.send(P, E.Call(r=4, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000, task="ixd/worker"), {"reset_type": 1})
    lock(h, C, "rtnl", remove.task, 5)
    assert h.result(C, 5)[0].e == 0
    assert not h.bus.lockdep.inversions and not h.bus.lockdep.deadlocks


def test_deleting_your_own_device_from_its_handler_is_edeadlk():
    """REMOVE_NOTIFY handled synchronously: the delete would wait for the device_lock
    the same task holds while the child's handler runs."""
    h = Harness()
    dev = bound(h)
    h.send(P, E.Call(r=1, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000, task="ixd/t"), {"reset_type": 1})
    h.take(C)
    h.send(P, E.DevDelete(r=2, dev=dev, task="ixd/t"))
    m, _ = h.result(P, 2)
    assert m.e == -Errno.EDEADLK
    assert h.bus.devices[dev].life.state.value == "added"      # nothing was half done
