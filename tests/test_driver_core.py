"""The driver core's kernel fidelity, driven in memory (docs/conformance.md names
these tests; the same rules across real processes are in test_conformance.py)."""

import pytest

from auxipc.broker.lifecycle import BindState
from auxipc.broker.snapshot import snapshot
from proto import envelope as E
from proto.errno import Errno
from proto.events import Event
from tests.test_bus import C2, C, Harness, P, bound


@pytest.fixture
def h():
    return Harness()


def results(h, ident):
    return [m for _, m, _ in h.take(ident) if isinstance(m, E.Result)]


def wait(h, seconds):
    """Let ``seconds`` pass with every peer alive (heartbeating)."""
    for _ in range(int(seconds / 0.05)):
        h.clock.t += 0.05
        for ident in list(h.bus.peers):
            h.send(ident + b"#hb", E.Heartbeat(epoch=1))
        h.bus.tick()
    h.take(P + b"#hb"), h.take(C + b"#hb")


# ---- delete waits for remove(), however long; a hung remove is reported --------------

def test_delete_waits_for_remove_past_the_hung_task_warning(h):
    dev = bound(h)
    h.bus.hung_task_secs = 2.0
    h.send(P, E.DevDelete(r=10, dev=dev, task="pf-remove"))
    (rm,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Remove)]
    wait(h, 60)                             # a minute: no deadline ends it
    assert not results(h, P), "delete() returned while remove() still ran"
    (warn,) = h.bus.warnings
    assert warn["kind"] == "hung_task" and warn["dev"] == "ixd.eth.0" and warn["task"] == "pf-remove"
    assert warn["message"].startswith("INFO: task pf-remove blocked for more than 2 seconds: remove() of ixd.eth.0")
    assert snapshot(h.bus)["devices"][0]["hung"] == warn["message"]
    assert "WARN" in h.actions("ixd.eth.0")
    h.send(C, E.Result(r=rm.r))
    assert h.result(P, 10)[0].e == 0
    assert h.actions("ixd.eth.0")[-3:] == ["HUNG_TASK_END", "UNBIND", "REMOVE"]
    assert snapshot(h.bus)["devices"][0]["hung"] is None


def test_uninit_while_remove_runs_releases_once_after_remove(h):
    """The parent's put arriving while delete() still waits for remove(): the bus holds
    the device until remove() returns, then it is released exactly once (the fuzzer
    found a second release here)."""
    dev = bound(h)
    h.send(P, E.DevDelete(r=10, dev=dev, task="pf-remove"))
    (rm,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Remove)]
    h.send(P, E.DevUninit(r=11, dev=dev))
    assert h.result(P, 11)[0].e == 0
    assert dev in h.bus.devices and "RELEASE" not in h.actions("ixd.eth.0")
    h.send(C, E.Result(r=rm.r))
    assert h.result(P, 10)[0].e == 0
    assert h.actions("ixd.eth.0").count("RELEASE") == 1 and dev not in h.bus.devices


def test_delete_ends_when_the_removing_process_dies(h):
    dev = bound(h)
    h.send(P, E.DevDelete(r=10, dev=dev))
    wait(h, 30)
    assert not results(h, P)
    h.bus.peer_died(h.bus.peers[C], "killed")
    assert h.result(P, 10)[0].e == 0
    assert h.bus.devices[dev].bind.state is BindState.UNBOUND


# ---- a parent->child call during probe waits for it ---------------------------------

def probing(h, handles=(Event.RESET_WARN,)):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf", handles=handles)
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True, remove=True,
                            handles=tuple(int(x) for x in handles)))
    h.take()
    dev, r = h.init_add(P)
    (probe,) = [m for _, m, _ in h.take(C) if isinstance(m, E.Probe)]
    return dev, r, probe


def test_call_during_probe_is_delivered_to_the_driver_it_binds(h):
    dev, r, probe = probing(h)
    h.send(P, E.Call(r=50, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000), {"reset_type": 1})
    assert not results(h, P)                     # waits in device_lock behind probe()
    h.send(C, E.Result(r=probe.r))
    assert h.result(P, r)[0].d["driver"] == "idpf_eth"
    h.answer(C, E.Request)
    assert h.result(P, 50)[0].e == 0


@pytest.mark.parametrize("probe_errno, handles, errno, text", [
    (Errno.ENODEV, (Event.RESET_WARN,), Errno.ENODEV, "no driver bound after the probe it waited for"),
    (0, (Event.PREPARE_DETACH,), Errno.EOPNOTSUPP, "driver idpf_eth has no handler for RESET_WARN"),
])
def test_call_during_probe_finds_no_driver_or_no_handler(h, probe_errno, handles, errno, text):
    dev, r, probe = probing(h, handles)
    h.send(P, E.Call(r=50, dev=dev, ev=Event.RESET_WARN, timeout_ms=5000), {"reset_type": 1})
    h.send(C, E.Result(r=probe.r, e=-probe_errno))
    m, _ = h.result(P, 50)
    assert m.e == -errno and text in m.m
    assert not [m for _, m, _ in h.take(C) if isinstance(m, E.Request)]


def test_call_during_probe_keeps_its_deadline(h):
    dev, r, probe = probing(h)
    h.send(P, E.Call(r=50, dev=dev, ev=Event.RESET_WARN, timeout_ms=100), {"reset_type": 1})
    h.clock.t += 0.2
    h.bus.tick()
    m, _ = h.result(P, 50)
    assert m.e == -Errno.ETIMEDOUT and "held by: probe ixd.eth.0 by idpf_eth" in m.m


def test_child_may_call_its_parent_from_probe(h):
    h.register(P, "parent", "ixd", handles=(Event.REQUEST_RESET,))
    dev, r, probe = probing(h)
    h.send(C, E.Call(r=60, dev=dev, ev=Event.REQUEST_RESET, timeout_ms=1000, task=probe.task),
           {"reset_type": 1})
    h.answer(P, E.Request)
    assert h.result(C, 60)[0].e == 0


# ---- deferred probe: the next driver tries; deferred devices retried on a bind ------------

def test_deferred_probe_walks_on_to_the_next_driver(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "a")
    h.register(C2, "child", "b")
    h.send(C, E.DrvRegister(r=1, name="first", id_table=("ixd.eth",), probe=True))
    h.send(C2, E.DrvRegister(r=1, name="second", id_table=("ixd.eth",), probe=True))
    dev, r = h.init_add(P)
    h.answer(C, E.Probe, e=-Errno.EPROBE_DEFER)
    h.answer(C2, E.Probe)
    assert h.result(P, r)[0].d["driver"] == "second"
    assert not h.bus.devices[dev].deferred        # driver_bound took it off the deferred list


def test_a_bind_anywhere_retries_deferred_devices(h):
    """idpf_rdma defers until its eth sibling binds: the eth bind triggers the retry at
    once, not at the end of a backoff."""
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_rdma", id_table=("ixd.rdma",), probe=True))
    h.send(C, E.DrvRegister(r=2, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    h.take()
    rdma, r1 = h.init_add(P, name="rdma")
    h.answer(C, E.Probe, e=-Errno.EPROBE_DEFER)
    assert h.bus.devices[rdma].deferred and snapshot(h.bus)["devices"][0]["bind"] == "deferred"
    eth, r2 = h.init_add(P, name="eth")
    h.answer(C, E.Probe)                           # eth binds: driver_deferred_probe_trigger
    h.bus.tick()                                   # the retry runs from the bus's own work, at once
    probe = h.answer(C, E.Probe)
    assert probe.name == "ixd.rdma.0"
    assert h.bus.devices[rdma].bind.state is BindState.BOUND and not h.bus.devices[rdma].deferred


def test_sysfs_bind_of_a_deferring_driver_is_eagain(h):
    h.register(P, "parent", "ixd")
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="idpf_eth", id_table=("ixd.eth",), probe=True))
    h.take()
    dev, r = h.init_add(P)
    h.answer(C, E.Probe, e=-Errno.EPROBE_DEFER)
    out = []
    h.bus.bind_device("ixd.eth.0", "idpf_eth", lambda e, m: out.append((e, m)))
    h.answer(C, E.Probe, e=-Errno.EPROBE_DEFER)
    assert out == [(-Errno.EAGAIN, "bind: probe of ixd.eth.0 by idpf_eth deferred")]


# ---- a parent leaving with its devices on the bus ------------------------------------------

def test_parent_leaving_with_devices_added_is_reported_and_cleaned_up(h):
    dev = bound(h)
    h.send(P, E.Unregister(r=70))
    h.answer(C, E.Remove)
    kinds = [w["kind"] for w in h.bus.warnings]
    assert kinds == ["devices_outlive_parent"]
    w = h.bus.warnings[0]
    assert w["devices"] == ["ixd.eth.0"] and "use-after-free" in w["message"]
    assert dev not in h.bus.devices                # still cleaned up, as after a crash
    assert snapshot(h.bus)["warnings"][0]["kind"] == "devices_outlive_parent"


def test_parent_leaving_without_uninit_is_reported(h):
    h.register(P, "parent", "ixd")
    h.init_add(P)
    dev2, r = h.init_add(P)                        # -EEXIST: the parent must uninit it
    assert h.result(P, r)[0].e == -Errno.EEXIST
    h.send(P, E.Unregister(r=70))
    kinds = {w["kind"]: w for w in h.bus.warnings}
    assert kinds["uninit_missing"]["devices"] == ["ixd.eth.0"]
    assert kinds["devices_outlive_parent"]["devices"] == ["ixd.eth.0"]


def test_parent_crash_is_cleaned_up_without_a_warning(h):
    bound(h)
    h.bus.peer_died(h.bus.peers[P], "killed")
    h.answer(C, E.Remove)
    assert not h.bus.warnings


# ---- the smaller rules -------------------------------------------------------------------

def test_uninit_before_delete_is_a_put_and_delete_releases(h):
    dev = bound(h)
    h.send(P, E.DevUninit(r=80, dev=dev))
    assert h.result(P, 80)[0].d == {"refcount": 0}
    assert h.bus.devices[dev].life.state.value == "added"      # the bus still holds it
    h.send(P, E.DevDelete(r=81, dev=dev))
    h.answer(C, E.Remove)
    assert h.result(P, 81)[0].e == 0
    assert h.actions("ixd.eth.0")[-3:] == ["UNBIND", "REMOVE", "RELEASE"] and dev not in h.bus.devices


def test_id_table_names_fit_auxiliary_name_size(h):
    h.register(C, "child", "idpf")
    h.send(C, E.DrvRegister(r=1, name="x", id_table=("a" * 39,), probe=True))
    assert h.result(C, 1)[0].e == 0
    h.send(C, E.DrvRegister(r=2, name="y", id_table=("ok.name", "b" * 40), probe=True))
    m, _ = h.result(C, 2)
    assert m.e == -Errno.EINVAL and m.m == (
        f"driver y: $.header.id_table[1]: {'b' * 40!r} is 40 bytes; auxiliary_device_id.name holds 39 "
        "(AUXILIARY_NAME_SIZE 40, NUL included)")


def test_sysfs_unbind_names_the_driver(h):
    bound(h)
    out = []
    with pytest.raises(Exception) as info:
        h.bus.unbind_device("ixd.eth.0", out.append, driver="other_drv")
    assert info.value.errno == Errno.ENODEV and "bound to idpf_eth, not other_drv" in info.value.message
    h.bus.unbind_device("ixd.eth.0", lambda e, m: out.append(e), driver="idpf_eth")
    h.answer(C, E.Remove)
    assert out == [0]


def test_failed_add_is_flagged_until_uninit(h):
    h.register(P, "parent", "ixd")
    h.init_add(P)
    dev2, r = h.init_add(P)
    h.result(P, r)
    (failed,) = [d for d in snapshot(h.bus)["devices"] if d["id"] == dev2]
    assert failed["state"] == "initialized" and "must auxiliary_device_uninit() it" in failed["last_error"]


def test_probe_has_no_deadline_and_a_long_one_is_reported(h):
    dev, r, probe = probing(h)
    h.bus.hung_task_secs = 5.0
    wait(h, 30)
    assert not results(h, P)                        # add() still waits for probe()
    (warn,) = h.bus.warnings
    assert (warn["kind"], warn["op"], warn["dev"]) == ("hung_task", "probe", "ixd.eth.0")
    h.send(C, E.Result(r=probe.r))
    assert h.result(P, r)[0].d["driver"] == "idpf_eth"
    assert h.actions("ixd.eth.0")[-2:] == ["HUNG_TASK_END", "BIND"]


# ---- several instances of one model; auxiliary_find_device ---------------------------------

def test_instances_of_a_model_get_the_lowest_free_index(h):
    # Two instances of one model are two PCI functions: they differ by their address.
    assert h.register(P, "parent", "ixd")["index"] == 0
    assert h.register(b"p:ixd-2", "parent", "ixd", instance="0000:3b:00.1")["index"] == 1
    assert h.register(b"p:ice", "parent", "ice")["index"] == 0
    h.bus.peer_died(h.bus.peers[P], "killed")              # ida_free: index 0 is free again
    assert h.register(b"p:ixd-3", "parent", "ixd", instance="0000:3b:00.2")["index"] == 0
    assert h.register(C, "child", "idpf")["index"] is None


def test_a_restarted_broker_gives_an_instance_back_its_index(h):
    h.register(P, "parent", "ixd")
    r = h.r()
    h.send(b"p:ixd-2", E.Register(r=r, role="parent", name="ixd", pid=7, start_time=1, schema=(1, 0),
                                  restore={"index": 3}, instance="0000:3b:00.1"))
    assert h.result(b"p:ixd-2", r)[0].d["index"] == 3


def test_find_device_lists_added_devices_and_get_takes_a_reference_only_if_added(h):
    dev = bound(h)
    h.send(C, E.DevFind(r=1, match="ixd.eth"))
    (found,) = h.result(C, 1)[0].d["devices"]
    assert (found["dev"], found["name"], found["driver"]) == (dev, "ixd.eth.0", "idpf_eth")
    h.send(C, E.DevFind(r=2, name="ixd.rdma.0"))
    assert h.result(C, 2)[0].d["devices"] == []
    h.send(C, E.DevGet(r=3, dev=dev, added=True))
    assert h.result(C, 3)[0].d["refcount"] == 2
    h.send(P, E.DevDelete(r=4, dev=dev))
    h.answer(C, E.Remove)
    h.send(C, E.DevGet(r=5, dev=dev, added=True))
    m, _ = h.result(C, 5)
    assert m.e == -Errno.ENODEV and m.m == "auxiliary_find_device: ixd.eth.0 is no longer on the bus"


def test_a_device_is_named_by_add(h):
    h.register(P, "parent", "ixd")
    h.send(P, E.DevInit(r=1, name="eth", id=0))
    dev = h.result(P, 1)[0].d["dev"]
    assert h.bus.devices[dev].name == "" and snapshot(h.bus)["devices"][0]["name"] == "ixd.eth.0 (never added)"
    h.send(P, E.DevAdd(r=2, dev=dev))
    assert h.bus.devices[dev].name == "ixd.eth.0" and h.result(P, 2)[0].d["name"] == "ixd.eth.0"


def test_device_attributes_are_checked_at_add(h):
    h.register(P, "parent", "ixd")
    h.send(P, E.DevInit(r=1, name="eth"))
    dev = h.result(P, 1)[0].d["dev"]
    h.send(P, E.DevAdd(r=2, dev=dev, attrs={"sfnum": [1, 2]}))
    m, _ = h.result(P, 2)
    assert m.e == -Errno.EINVAL and m.m == "$.header.attrs.sfnum: expected a string (<= 4096 chars), number or bool, got list"
    assert h.bus.devices[dev].life.state.value == "initialized"      # nothing changed
    h.send(P, E.DevAdd(r=3, dev=dev, attrs={"sfnum": 1}))
    assert h.result(P, 3)[0].e == 0 and snapshot(h.bus)["devices"][0]["attrs"] == {"sfnum": 1}
