"""Golden lifecycle sequences: the exact stream of bus notifications, crash paths
included (the model of dbus-broker's test-lifetime.c). A crash yields the unbind,
the removal and the release exactly once."""

from proto import envelope as E
from proto.errno import Errno
from proto.events import Event
from tests.test_bus import C, Harness, P


def stream(h, dev="ixd.eth.0"):
    return [u["action"] for u in h.bus.uevents if u["dev"] in (dev, "")
            or u["action"].startswith("DRIVER")]


def setup(h, hold=False):
    h.register(P, "parent", "ixd", handles=(Event.SET_MAC,))
    h.register(C, "child", "idpf", handles=(Event.RESET_WARN,))
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True, remove=True,
                            handles=(Event.RESET_WARN,)))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe)
    if hold:
        h.send(C, E.DevGet(r=2, dev=dev))
    h.take()
    return dev


def test_register_match_probe_event_remove_release():
    h = Harness()
    dev = setup(h)
    h.send(P, E.Call(r=5, dev=dev, ev=Event.RESET_WARN, timeout_ms=1000), {"reset_type": 1})
    h.answer(C, E.Request)
    h.send(P, E.DevDelete(r=6, dev=dev))
    h.answer(C, E.Remove)
    h.send(P, E.DevUninit(r=7, dev=dev))
    assert stream(h) == ["REGISTER", "REGISTER", "DRIVER_ADD", "ADD", "BIND", "UNBIND", "REMOVE", "RELEASE"]


def test_driver_exit():
    h = Harness()
    setup(h)
    h.send(C, E.DrvUnregister(r=9, name="idpf_eth"))
    h.answer(C, E.Remove)
    h.send(C, E.Unregister(r=10))
    assert stream(h)[3:] == ["ADD", "BIND", "UNBIND", "DRIVER_REMOVE", "UNREGISTER"]
    (_, m, _), = [x for x in h.take(P) if isinstance(x[1], E.Unbind)]
    assert m.reason == "driver unregistered"


def test_device_delete_with_events_in_flight():
    h = Harness()
    dev = setup(h)
    h.send(P, E.Call(r=5, dev=dev, ev=Event.RESET_WARN, timeout_ms=1000, task="a"), {"reset_type": 1})
    h.send(P, E.Call(r=6, dev=dev, ev=Event.RESET_WARN, timeout_ms=1000, task="b"), {"reset_type": 1})
    h.send(P, E.DevDelete(r=7, dev=dev, task="c"))
    assert h.result(P, 6)[0].e == -Errno.ENODEV          # queued: never reaches the child
    h.answer(C, E.Request)                               # the one in flight completes
    assert h.result(P, 5)[0].e == 0
    h.answer(C, E.Remove)
    assert h.result(P, 7)[0].e == 0
    assert stream(h)[3:] == ["ADD", "BIND", "UNBIND", "REMOVE"]


def test_child_crash():
    h = Harness()
    dev = setup(h, hold=True)
    h.send(P, E.Call(r=5, dev=dev, ev=Event.RESET_WARN, timeout_ms=1000), {"reset_type": 1})
    h.bus.peer_died(h.bus.peers[C], "killed")
    assert h.result(P, 5)[0].e == -Errno.ENODEV
    assert stream(h)[3:] == ["ADD", "BIND", "PEER_DEAD", "UNBIND", "DRIVER_REMOVE"]
    assert h.bus.devices[dev].refcount == 1             # the child's reference came back
    assert stream(h).count("UNBIND") == 1


def test_parent_crash():
    h = Harness()
    setup(h)
    h.bus.peer_died(h.bus.peers[P], "killed")
    h.answer(C, E.Remove)                                # children get remove()
    h.bus.peer_died(h.bus.peers[C], "killed later")       # nothing is removed or released twice
    acts = stream(h)[3:]
    assert acts == ["ADD", "BIND", "PEER_DEAD", "UNBIND", "REMOVE", "RELEASE", "PEER_DEAD", "DRIVER_REMOVE"]
    assert acts.count("REMOVE") == 1 and acts.count("RELEASE") == 1
