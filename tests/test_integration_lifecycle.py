"""Multi-process lifecycle: registration, matching, probe outcomes, duplicates,
synchronous delete and release at the last put, as the kernel's driver core does them.

Each test runs its own broker, parents and children as real processes.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(30)


def seq(events, dev=None):
    """(action, dev, driver) of each uevent, optionally only those of ``dev``."""
    return [(e["action"], e["dev"], e["driver"]) for e in events if dev is None or e["dev"] == dev]


# ---- 1. registration, matching, probe ------------------------------------------------------

def test_parent_then_child_binds_golden_sequence(bus):
    """ixd adds ixd.eth.0, idpf_eth registers and binds it: the exact uevent stream,
    the ls view, and the exact stream of an orderly shutdown of both."""
    parent = bus.parent("ixd")
    child = bus.child("idpf_eth")

    snap = bus.ls()
    [dev] = snap["devices"]
    assert dev["name"] == "ixd.eth.0" and dev["match"] == "ixd.eth"
    assert (dev["state"], dev["bind"], dev["driver"]) == ("added", "bound", "idpf_eth")
    assert dev["refcount"] == 1 and list(dev["holders"].values()) == [1]
    assert dev["parent"].startswith(f"parent ixd[{parent.pid}]")
    [drv] = snap["drivers"]
    assert (drv["name"], drv["id_table"], drv["bound"]) == ("idpf_eth", ["ixd.eth"], ["ixd.eth.0"])
    assert drv["peer"].startswith(f"child idpf_eth[{child.pid}]")
    assert {(p["role"], p["pid"], p["alive"]) for p in snap["peers"]} == {
        ("parent", parent.pid, True), ("child", child.pid, True)}
    assert snap["pending"] == 0

    events = bus.uevents()
    assert seq(events) == [
        ("REGISTER", "", ""),
        ("ADD", "ixd.eth.0", ""),
        ("REGISTER", "", ""),
        ("DRIVER_ADD", "", "idpf_eth"),
        ("BIND", "ixd.eth.0", "idpf_eth"),
    ]
    assert [(e["detail"]["role"], e["detail"]["pid"]) for e in events if e["action"] == "REGISTER"] == [
        ("parent", parent.pid), ("child", child.pid)]
    assert events[1]["detail"]["modalias"] == "auxiliary:ixd.eth"
    assert events[3]["detail"]["id_table"] == ["ixd.eth"]
    assert [e["seq"] for e in events] == list(range(1, 6))

    # Orderly shutdown: the driver unregisters (remove() runs: UNBIND), then the parent's
    # PCI remove deletes and uninits the device (REMOVE, RELEASE at the last put).
    last = events[-1]["seq"]
    bus.stop(child)
    bus.stop(parent)
    assert seq(bus.uevents(since=last)) == [
        ("UNBIND", "ixd.eth.0", "idpf_eth"),
        ("DRIVER_REMOVE", "", "idpf_eth"),
        ("UNREGISTER", "", ""),
        ("REMOVE", "ixd.eth.0", ""),
        ("RELEASE", "ixd.eth.0", ""),
        ("UNREGISTER", "", ""),
    ]
    snap = bus.ls()
    assert snap["devices"] == [] and snap["drivers"] == [] and snap["peers"] == [] and snap["pending"] == 0


def test_child_then_parent_binds(bus):
    """A driver registered first binds the device as soon as it is added."""
    bus.child("idpf_eth")
    bus.parent("ixd")
    assert seq(bus.uevents()) == [
        ("REGISTER", "", ""),
        ("DRIVER_ADD", "", "idpf_eth"),
        ("REGISTER", "", ""),
        ("ADD", "ixd.eth.0", ""),
        ("BIND", "ixd.eth.0", "idpf_eth"),
    ]
    dev = bus.device("ixd.eth.0")
    assert (dev["bind"], dev["driver"], dev["refcount"]) == ("bound", "idpf_eth", 1)


# ---- 2. matching cuts at the last '.' ------------------------------------------------------

def test_matching_cuts_at_last_dot(bus):
    """id_table entries are compared, whole, with the device name cut at its last '.':
    'tp.eth' binds tp.eth.0 and tp.eth.<negative id> but not tp.ethx.0, tp.et.0 or
    tp.eth.sub.0; 'tp' (a cut at the first '.') binds nothing; 'tp.eth.sub' (dots
    inside the name) binds tp.eth.sub.0."""
    child = bus.child("tests.models:Rec", "tests.models:RecB",
                      AXT_IDS_TDRV="tp.eth", AXT_IDS_TDRV_B="tp,tp.eth.su,tp.eth.sub")
    bus.parent(AXT_DEVS="eth:0,eth:3000000000,ethx:0,et:0,eth.sub:0")
    bound = {d["name"]: d["driver"] for d in bus.ls()["devices"]}
    assert bound == {
        "tp.eth.0": "tdrv",
        "tp.eth.-1294967296": "tdrv",     # %d: ids >= 2^31 print negative
        "tp.ethx.0": None,
        "tp.et.0": None,
        "tp.eth.sub.0": "tdrv_b",
    }
    probed = {(r["dev"], r["driver"]) for r in child.records("probe")}
    assert probed == {("tp.eth.0", "tdrv"), ("tp.eth.-1294967296", "tdrv"), ("tp.eth.sub.0", "tdrv_b")}
    modalias = {e["dev"]: e["detail"]["modalias"] for e in bus.uevents() if e["action"] == "ADD"}
    assert modalias["tp.eth.sub.0"] == "auxiliary:tp.eth.sub"
    assert modalias["tp.ethx.0"] == "auxiliary:tp.ethx"


# ---- 3. probe outcomes ----------------------------------------------------------------------

def test_probe_enodev_rejects_silently_and_next_driver_is_tried(bus):
    child = bus.child("tests.models:Nodev", "tests.models:Rec", AXT_IDS="tp.eth")
    bus.parent(AXT_DEVS="eth:0")
    dev = bus.device("tp.eth.0")
    assert (dev["bind"], dev["driver"], dev["last_error"]) == ("bound", "tdrv", "")
    assert [(r["driver"], r["dev"]) for r in child.records("probe")] == [
        ("t_nodev", "tp.eth.0"), ("tdrv", "tp.eth.0")]
    assert seq(bus.uevents(), "tp.eth.0") == [("ADD", "tp.eth.0", ""), ("BIND", "tp.eth.0", "tdrv")]


def test_probe_defer_is_retried_until_bound(bus):
    child = bus.child("tests.models:Defer", AXT_IDS="tp.eth", AXT_DEFERS=2)
    bus.parent(AXT_DEVS="eth:0")
    bus.wait_uevent("BIND", "tp.eth.0")
    assert seq(bus.uevents(), "tp.eth.0") == [
        ("ADD", "tp.eth.0", ""),
        ("PROBE_DEFER", "tp.eth.0", "t_defer"),
        ("DEFERRED_PROBE", "tp.eth.0", ""),        # the retry timer (nothing else binds)
        ("PROBE_DEFER", "tp.eth.0", "t_defer"),
        ("DEFERRED_PROBE", "tp.eth.0", ""),
        ("BIND", "tp.eth.0", "t_defer"),
    ]
    assert [r.get("result") for r in child.records("probe")] == ["defer", "defer", None]
    dev = bus.device("tp.eth.0")
    assert (dev["bind"], dev["driver"]) == ("bound", "t_defer")


def test_probe_error_is_reported_and_device_left_unbound(bus):
    """-ENOMEM: PROBE_FAILED uevent naming the errno, device unbound but still on the
    bus (events to it -ENODEV), and a driver registered later still binds it."""
    bus.child("tests.models:Nomem", AXT_IDS="tp.eth")
    bus.parent(AXT_DEVS="eth:0")
    failed = bus.wait_uevent("PROBE_FAILED", "tp.eth.0")
    assert failed["driver"] == "t_nomem"
    assert (failed["detail"]["errno"], failed["detail"]["error"]) == (-12, "ENOMEM")
    dev = bus.device("tp.eth.0")
    assert (dev["state"], dev["bind"], dev["driver"]) == ("added", "unbound", None)
    assert "ENOMEM" in dev["last_error"] and "t_nomem" in dev["last_error"]
    assert "BIND" not in bus.actions("tp.eth.0")
    out = bus.client.send_event("tp.eth.0", "RESET_WARN", "parent", {"reset_type": "FUNC"}, 5.0)
    assert out["error"] == "ENODEV", out

    bus.child("tests.models:Rec", AXT_IDS="tp.eth")
    bus.wait_uevent("BIND", "tp.eth.0")
    assert bus.device("tp.eth.0")["driver"] == "tdrv"


# ---- 4. duplicates ------------------------------------------------------------------------

def test_duplicate_driver_name_is_ebusy(bus):
    first = bus.child("tests.models:Rec", AXT_IDS="tp.eth")
    # The same process name again is refused at REGISTER (one live peer per role and name).
    r = bus.cli("child", "--driver", "tests.models:Rec", timeout=20)
    assert r.returncode != 0
    assert "EEXIST" in r.stderr and f"child tdrv[{first.pid}]" in r.stderr, r.stderr
    # Another process name carrying the same driver: the driver's name is refused.
    r = bus.cli("child", "--driver", "tests.models:Rec", "--driver", "tests.models:RecB", timeout=20)
    assert r.returncode != 0
    assert "EBUSY" in r.stderr and "driver tdrv is already registered" in r.stderr, r.stderr
    [drv] = bus.ls()["drivers"]
    assert drv["name"] == "tdrv" and drv["peer"].startswith(f"child tdrv[{first.pid}]")
    assert bus.actions().count("DRIVER_ADD") == 1
    # The refused process left cleanly; the first one still serves.
    assert [p["pid"] for p in bus.ls()["peers"]] == [first.pid]


def test_duplicate_device_name_is_eexist(bus):
    """A parent adding tp.eth.0 twice gets -EEXIST from the second add (and must uninit
    it); another parent process of the same module fails -EEXIST too."""
    parent = bus.parent("tests.models:Dup")
    [failed] = parent.records("add-failed")
    assert failed["errno"] == "EEXIST"
    assert failed["message"].startswith("auxiliary_device_add: tp.eth.0 already exists on the bus")
    snap = bus.ls()
    assert [(d["name"], d["state"]) for d in snap["devices"]] == [("tp.eth.0", "added")]
    # One ADD; the failed device was released by its uninit (the caller frees on failure).
    # It was never named (add names a device): its RELEASE says what add would have named it.
    assert bus.actions("tp.eth.0") == ["ADD"]
    [release] = [e for e in bus.uevents() if e["action"] == "RELEASE"]
    assert (release["dev"], release["detail"]["never_added"]) == ("", "tp.eth.0")

    # Another parent process of the same module (the same peer name) is refused at
    # REGISTER, like a module loaded twice: it can never add a name of the first.
    r = bus.cli("parent", "--model", "tests.models:Pair", timeout=20, AXT_DEVS="eth:0")
    assert r.returncode != 0
    assert "EEXIST" in r.stderr and f"parent tp[{parent.pid}]" in r.stderr, r.stderr
    assert [(d["name"], d["parent"].split("[")[1].split("]")[0]) for d in bus.ls()["devices"]] == [
        ("tp.eth.0", str(parent.pid))]


# ---- 5. delete is synchronous, release at the last put ---------------------------------------

def test_delete_unbinds_synchronously_and_release_waits_for_last_put(bus):
    """The parent deletes tp.eth.0 (from a REQUEST_RESET handler): the child's remove()
    ran entirely inside the parent's delete call; the child still holds a reference
    (taken in probe), so after uninit the device stays, deleted, until the child puts
    it; only then RELEASE and the parent's release() callback."""
    parent = bus.parent()
    child = bus.child(AXT_HOLD="tp.eth", AXT_REMOVE_SLOW=0.3)
    dev = bus.device("tp.eth.0")
    assert dev["refcount"] == 2 and sorted(dev["holders"].values()) == [1, 1]
    assert child.records("get", dev="tp.eth.0")[0]["refcount"] == 2

    rc, out, err = bus.send("tp.rdma.0", "REQUEST_RESET", "child", {"reset_type": "DEV"}, timeout=10)
    assert (rc, out["errno"]) == (0, 0), (out, err)

    [d0] = parent.records("delete-start", dev="tp.eth.0")
    [d1] = parent.records("delete-done", dev="tp.eth.0")
    [r0] = child.records("remove-start", dev="tp.eth.0")
    [r1] = child.records("remove-end", dev="tp.eth.0")
    assert d0["t"] <= r0["t"] < r1["t"] <= d1["t"], "remove() must complete inside delete()"
    assert r1["t"] - r0["t"] >= 0.3
    assert parent.records("uninit-done", dev="tp.eth.0")

    assert bus.actions("tp.eth.0") == ["ADD", "BIND", "UNBIND", "REMOVE"]
    dev = bus.device("tp.eth.0")
    assert (dev["state"], dev["bind"], dev["driver"], dev["refcount"]) == ("deleted", "unbound", None, 1)
    assert [h.split("[")[0] for h in dev["holders"]] == ["child tdrv"]
    assert parent.records("release") == []
    assert bus.device("tp.rdma.0")["bind"] == "bound"

    # The child's next RESET_WARN puts the reference it held: the last put.
    rc, out, err = bus.send("tp.rdma.0", "RESET_WARN", "parent", {"reset_type": "FUNC"})
    assert (rc, out["errno"]) == (0, 0), (out, err)
    assert child.records("put", dev="tp.eth.0")[0]["refcount"] == 0
    bus.wait_uevent("RELEASE", "tp.eth.0")
    parent.wait_record("release", dev="tp.eth.0")
    assert bus.actions("tp.eth.0") == ["ADD", "BIND", "UNBIND", "REMOVE", "RELEASE"]
    assert bus.device("tp.eth.0") is None
