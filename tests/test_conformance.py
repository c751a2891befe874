"""The driver core's rules across real processes, and the conformance table
(docs/conformance.md) kept honest: every test a row names exists.

Each test runs its own broker, parents and children as real processes.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from auxipc.procfs import process_start_time
from proto import envelope as E
from tests.test_integration_faults import M, _exchange, _hdr, _raw

pytestmark = pytest.mark.timeout(40)

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "docs" / "conformance.md"


def seq(events, dev=None):
    return [(e["action"], e["dev"], e["driver"]) for e in events if dev is None or e["dev"] == dev]


# ---- delete waits for remove(); a long remove() is a hung task --------------------------------

def test_delete_waits_for_a_long_remove_and_reports_a_hung_task(make_bus):
    """remove() takes 1.5 s, past the broker's hung-task threshold (0.5 s here): the
    parent's delete() still returns only after it, and the wait is reported (WARN
    uevent, a trace record, ``ls`` warnings) and its end recorded."""
    bus = make_bus(broker_args=("--hung-task-secs", "0.5"))
    parent = bus.parent()
    child = bus.child(AXT_REMOVE_SLOW=1.5)
    rc, out, err = bus.send("tp.rdma.0", "REQUEST_RESET", "child", {"reset_type": "DEV"}, timeout=20)
    assert (rc, out["errno"]) == (0, 0), (out, err)
    [d1] = parent.records("delete-done", dev="tp.eth.0")
    [r1] = child.records("remove-end", dev="tp.eth.0")
    assert r1["t"] <= d1["t"], "delete() returned before remove() did"
    [warn] = [w for w in bus.ls()["warnings"] if w["kind"] == "hung_task"]
    assert warn["dev"] == "tp.eth.0" and warn["driver"] == "tdrv" and warn["op"] == "remove"
    assert "blocked for more than 0.5 seconds: remove() of tp.eth.0 by tdrv" in warn["message"]
    actions = [a for a, _, _ in seq(bus.uevents(), "tp.eth.0")]
    assert actions[actions.index("WARN"):][:4] == ["WARN", "HUNG_TASK_END", "UNBIND", "REMOVE"]


def test_long_probe_has_no_deadline_and_is_reported_as_a_hung_task(make_bus):
    bus = make_bus(broker_args=("--hung-task-secs", "0.5"))
    child = bus.child("tests.models:SlowProbe", AXT_IDS="tp.eth", AXT_PROBE_SLOW=1.5)
    bus.parent(AXT_DEVS="eth:0")
    assert bus.device("tp.eth.0")["driver"] == "t_slowprobe"
    [warn] = bus.ls()["warnings"]
    assert (warn["kind"], warn["op"], warn["dev"]) == ("hung_task", "probe", "tp.eth.0")
    assert [a for a, _, _ in seq(bus.uevents(), "tp.eth.0")] == ["ADD", "WARN", "HUNG_TASK_END", "BIND"]
    assert child.records("probe-end", dev="tp.eth.0")


def test_driver_register_requires_probe_and_id_table(make_bus):
    """A raw child (no runtime to check first): the broker refuses a driver without
    probe() or without an id_table, with -EINVAL naming the driver."""
    bus = make_bus(hb_ivl=2.0)
    ctx, sock = _raw(bus, b"raw:child")
    r = iter(range(1, 100))

    def req(msg_type, **fields):
        reply = _exchange(sock, [M + _hdr(t=int(msg_type), r=next(r), **fields)])
        assert isinstance(reply, E.Result), reply
        return reply
    try:
        assert req(E.Msg.REGISTER, role="child", name="raw", pid=os.getpid(),
                   start_time=process_start_time(os.getpid()), schema=[1, 0]).e == 0
        reply = req(E.Msg.DRV_REGISTER, name="x", id_table=["raw.eth"], probe=False)
        assert (reply.e, reply.m) == (-22, "driver x: probe() is required")
        reply = req(E.Msg.DRV_REGISTER, name="x", id_table=[], probe=True)
        assert (reply.e, reply.m) == (-22, "driver x: id_table is empty")
        assert req(E.Msg.UNREGISTER).e == 0
    finally:
        sock.close(linger=0)
        ctx.term()


# ---- a call during probe waits for it --------------------------------------------------------

def test_call_during_probe_waits_and_reaches_the_bound_driver(bus):
    """The parent sends RESET_WARN to tp.eth.0 while the driver's probe() runs: the call
    waits behind the probe (device_lock) and is delivered to the driver it bound."""
    child = bus.child("tests.models:SlowProbe", AXT_IDS="tp.eth", AXT_PROBE_SLOW=1.5)
    bus.popen("parent", "--model", "tests.models:Pair", AXT_DEVS="eth:0")
    child.wait_record("probe", dev="tp.eth.0")
    rc, out, err = bus.send("tp.eth.0", "RESET_WARN", "parent", {"reset_type": "FUNC"}, timeout=10)
    assert (rc, out["errno"]) == (0, 0), (out, err)
    [p1] = child.records("probe-end", dev="tp.eth.0")
    [enter] = child.records("enter", dev="tp.eth.0")
    assert p1["t"] <= enter["t"]
    assert bus.device("tp.eth.0")["driver"] == "t_slowprobe"


# ---- -EPROBE_DEFER: the next driver tries; deferred devices retried on a bind ------------------

def test_deferring_driver_lets_the_next_matching_driver_bind(bus):
    child = bus.child("tests.models:Defer", "tests.models:Rec", AXT_IDS="tp.eth", AXT_DEFERS=1000)
    bus.parent(AXT_DEVS="eth:0")
    assert seq(bus.uevents(), "tp.eth.0") == [
        ("ADD", "tp.eth.0", ""), ("PROBE_DEFER", "tp.eth.0", "t_defer"), ("BIND", "tp.eth.0", "tdrv")]
    assert [(r["driver"], r.get("result")) for r in child.records("probe")] == [
        ("t_defer", "defer"), ("tdrv", None)]
    dev = bus.device("tp.eth.0")
    assert (dev["bind"], dev["deferred"]) == ("bound", False)


def test_a_bind_retries_deferred_devices(bus):
    """t_needs defers tp.rdma.0 until tp.eth.0 is bound in its process: the bind of
    tp.eth.0 triggers the retry (driver_deferred_probe_trigger)."""
    child = bus.child("tests.models:Needs", "tests.models:Rec", AXT_IDS_T_NEEDS="tp.rdma",
                      AXT_IDS_TDRV="tp.eth", AXT_NEEDS="tp.eth.0")
    bus.parent(AXT_DEVS="rdma:0,eth:0")
    bus.wait_uevent("BIND", "tp.rdma.0")
    events = bus.uevents()
    eth_bind = next(e["seq"] for e in events if e["action"] == "BIND" and e["dev"] == "tp.eth.0")
    triggered = [e for e in events if e["action"] == "DEFERRED_PROBE" and e["dev"] == "tp.rdma.0"
                 and e["seq"] > eth_bind]
    assert triggered and triggered[0]["detail"]["reason"] == "a driver bound: tdrv to tp.eth.0"
    assert bus.device("tp.rdma.0")["driver"] == "t_needs"
    assert [r["dev"] for r in child.records("probe") if r.get("result") is None] == ["tp.eth.0", "tp.rdma.0"]


# ---- a parent leaving its devices on the bus ------------------------------------------------

def test_parent_exiting_with_devices_added_is_reported(bus):
    """Leaky's PCI remove() returns with tp.eth.0 and tp.rdma.0 still added: the bus
    deletes them for it (the driver's remove() runs) and reports the bug."""
    parent = bus.parent("tests.models:Leaky")
    child = bus.child()
    bus.stop(parent)
    bus.wait_uevent("WARN")
    kinds = {w["kind"]: w for w in bus.ls()["warnings"]}
    assert kinds["devices_outlive_parent"]["devices"] == ["tp.eth.0", "tp.rdma.0"]
    assert "use-after-free" in kinds["devices_outlive_parent"]["message"]
    assert set(kinds) == {"devices_outlive_parent"}      # its message covers the missing uninit too
    for dev in ("tp.eth.0", "tp.rdma.0"):       # WARN comes first; each REMOVE once remove() returned
        bus.wait_uevent("REMOVE", dev)
    assert sorted(r["dev"] for r in child.records("remove-end")) == ["tp.eth.0", "tp.rdma.0"]
    assert bus.ls()["devices"] == []
    shown = bus.cli("ls").stdout
    assert "WARN devices_outlive_parent: parent tp" in shown and "tp.eth.0, tp.rdma.0" in shown, shown


LEAKY_MODEL = '''
from auxipc import ParentModel

class Leaky(ParentModel):
    modname = "lk"

    def probe(self):
        self.eth = self.device("eth", 0, release=lambda adev: None)
        self.eth.init()
        self.eth.add()

    def remove(self):
        pass        # the bug: the device stays added after the PCI remove
'''

LEAKY_TEST = '''
def test_leaves_its_device_behind(auxbus):
    auxbus.parent("leaky:Leaky")
'''


def test_auxbus_fixture_fails_a_test_whose_parent_leaves_devices_behind(tmp_path):
    """The user-facing fixture turns the bus's report into a failed test."""
    import subprocess
    import sys
    (tmp_path / "leaky.py").write_text(LEAKY_MODEL)
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 passed, 1 error" in out, out
    assert "devices_outlive_parent" in out and "the bus reported: parent lk" in out and "lk.eth.0" in out, out


# ---- the NULL check: an undeclared event never reaches a handler ---------------------------------

def test_undeclared_async_event_is_not_sent_to_a_driver(bus):
    """ixd replays its link state (LINK_CHANGE) to a driver that binds; t_reset_only
    declared only RESET_WARN: the parent counts the event and does not send it."""
    parent = bus.parent("tests.models:IxdCounting")
    child = bus.child("tests.models:ResetOnly")
    rc, out, err = bus.send("ixd.eth.0", "RESET_WARN", "parent", {"reset_type": "FUNC"})   # after the BIND
    assert (rc, out["errno"]) == (0, 0), (out, err)
    bus.stop(parent)
    [counts] = parent.records("parent-stats")
    assert (counts["replayed"], counts["undeclared"]) == (0, 1)
    [seen] = child.records("remove-stats", dev="ixd.eth.0")
    assert seen["unhandled"] == 0


def test_probe_gets_the_matched_id_and_its_driver_data(bus):
    child = bus.child("tests.models:WithIds")
    bus.parent()
    got = {r["dev"]: (r["id"], r["driver_data"]) for r in child.records("probe")}
    assert got == {"tp.eth.0": ("tp.eth", {"queues": 4}), "tp.rdma.0": ("tp.rdma", "roce")}


def test_find_device_returns_a_held_reference_shown_in_ls(bus):
    """t_finder's probe of tp.rdma.0 finds tp.eth.0 (a match callback) and holds it:
    ``ls`` shows the reference among tp.eth.0's holders until remove() puts it."""
    bus.parent()
    child = bus.child("tests.models:Finder", "tests.models:Rec", AXT_IDS="tp.eth")
    [found] = child.records("found", dev="tp.rdma.0")
    assert (found["sibling"], found["none"]) == ("tp.eth.0", None)
    eth = bus.device("tp.eth.0")
    assert eth["refcount"] == 2 and sorted(h.split("[")[0] for h in eth["holders"]) == [
        "child t_finder+tdrv", "parent tp"]
    bus.stop(child)
    assert child.records("put", dev="tp.eth.0")[0]["refcount"] == 1


def test_two_instances_of_one_model_add_distinct_ids(bus):
    """Two ixd processes are two PCI functions of one model: the second gets index 1
    and adds ixd.eth.1 (no -EEXIST); idpf_eth binds both; ``ls`` shows each instance."""
    first = bus.parent("ixd", "--pci", "0000:3b:00.0")
    second = bus.parent("ixd", "--pci", "0000:3b:00.1")
    bus.child("idpf_eth")
    snap = bus.wait_ls(lambda s: sum(1 for d in s["devices"] if d["driver"]) == 2)
    assert {d["name"]: d["parent"].split("[")[1].split("]")[0] for d in snap["devices"]} == {
        "ixd.eth.0": str(first.pid), "ixd.eth.1": str(second.pid)}
    assert sorted((p["instance"], p["index"]) for p in snap["peers"] if p["role"] == "parent") == [
        ("0000:3b:00.0", 0), ("0000:3b:00.1", 1)]
    bus.stop(first)                                  # its index is free again
    third = bus.parent("ixd")
    assert [d["name"] for d in bus.ls()["devices"] if d["parent"].startswith(f"parent ixd[{third.pid}]")] == [
        "ixd.eth.0"]


def test_drivers_are_named_by_their_module(bus):
    """Two modules each with a driver called ``eth``: both register, as
    ``mod_a.eth`` and ``mod_b.eth``; the first matching one binds and is shown by its
    qualified name; a bare duplicate name is still -EBUSY."""
    bus.parent(AXT_DEVS="eth:0")
    bus.child("tests.models:Eth", AXT_MODNAME="mod_a", AXT_IDS="tp.eth")
    bus.child("tests.models:Eth", AXT_MODNAME="mod_b", AXT_IDS="tp.eth")
    snap = bus.ls()
    assert sorted(d["name"] for d in snap["drivers"]) == ["mod_a.eth", "mod_b.eth"]
    assert bus.device("tp.eth.0", snap)["driver"] == "mod_a.eth"
    assert [e["driver"] for e in bus.uevents() if e["action"] == "BIND"] == ["mod_a.eth"]
    # Another process (its own peer name: the same one again is -EEXIST at REGISTER)
    # carrying a driver of the same module and name: the driver's name is refused.
    r = bus.cli("child", "--driver", "tests.models:Rec", "--driver", "tests.models:Eth", timeout=20,
                AXT_MODNAME="mod_a")
    assert r.returncode != 0 and "EBUSY" in r.stderr and "driver mod_a.eth is already registered" in r.stderr, \
        r.stderr


def test_device_attributes_reach_udev_and_the_driver_before_it_binds(bus):
    bus.parent("tests.models:WithAttrs", AXT_DEVS="eth:0")
    child = bus.child()
    want = {"sfnum": 3, "role": "uplink", "trusted": True}
    [add] = [e for e in bus.uevents() if e["action"] == "ADD"]
    assert add["detail"]["attrs"] == want
    assert child.records("attrs", dev="tp.eth.0")[0]["attrs"] == want
    assert bus.device("tp.eth.0")["attrs"] == want


def test_parent_unpublishes_under_its_own_lock_then_deletes(bus):
    """ice: events go out under adev_mutex to a published device; a reset unpublishes the
    device under the mutex, then deletes it outside (irdma's remove() runs), then plugs
    again. Lockdep sees adev_mutex -> device_lock only: no inversion."""
    p = bus.parent("ice", AUXIPC_HW="lldp=0")
    c = bus.child("irdma")
    rc, out, err = bus.send("ice.roce.0", "REQUEST_RESET", "child", {"reset_type": "FUNC"})
    assert (rc, out["errno"]) == (0, 0), (out, err)
    p.wait_record("reset", state="IDLE")
    [unpub] = p.records("unpublish", dev="ice.roce.0")
    [unplug] = p.records("unplug", dev="ice.roce.0")
    [removed] = c.records("remove", dev="ice.roce.0")
    assert unpub["t"] < removed["t"] < unplug["t"]
    snap = bus.ls()
    assert "mutex:ice.adev_mutex" in [lock["name"] for lock in snap["locks"]]
    assert snap["lockdep"] == {"inversions": [], "deadlocks": []}


# ---- the smaller rules ---------------------------------------------------------------------

def test_sysfs_unbind_is_per_driver(bus):
    bus.parent(AXT_DEVS="eth:0")
    bus.child()
    r = bus.cli("unbind", "tp.eth.0", "tdrv_b")
    assert r.returncode != 0 and "ENODEV" in r.stderr and "bound to tdrv, not tdrv_b" in r.stderr, r.stderr
    r = bus.cli("unbind", "tp.eth.0", "tdrv")
    assert r.returncode == 0, r.stderr
    assert bus.device("tp.eth.0")["bind"] == "unbound"


def test_id_table_name_longer_than_auxiliary_name_size_is_refused(bus):
    r = bus.cli("child", "--driver", "tests.models:Rec", timeout=20, AXT_IDS="tp." + "e" * 37)
    assert r.returncode != 0 and "EINVAL" in r.stderr and "AUXILIARY_NAME_SIZE 40" in r.stderr, r.stderr


def test_uninit_before_delete_is_a_put(bus):
    """EarlyUninit's PCI remove() uninits tp.eth.0 before deleting it: the uninit is a
    put (the bus holds the added device), the delete releases it; nothing is reported."""
    parent = bus.parent("tests.models:EarlyUninit", AXT_DEVS="eth:0")
    bus.child()
    bus.stop(parent)
    assert [a for a, _, _ in seq(bus.uevents(), "tp.eth.0")] == ["ADD", "BIND", "UNBIND", "REMOVE", "RELEASE"]
    assert [r["what"] for r in parent.records() if r.get("dev") == "tp.eth.0"] == [
        "added", "uninit-done", "release", "delete-done"]     # the last put is inside delete
    assert not bus.ls()["warnings"]


# ---- the table ------------------------------------------------------------------------------

def table_rows() -> list[dict]:
    """The rows of docs/conformance.md's tables: {id, verdict, tests}."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 5 or not re.fullmatch(r"[A-Z]+\d+", cells[0]):
            continue
        rows.append({"id": cells[0], "verdict": cells[-1].split(":")[0].strip("* ").lower(),
                     "tests": re.findall(r"(tests/[\w/]+\.py)::(\w+)", cells[-2])})
    return rows


def defined_tests(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_conformance_table_names_only_tests_that_exist():
    rows = table_rows()
    assert len(rows) >= 30
    assert len({r["id"] for r in rows}) == len(rows), "row ids repeat"
    missing = []
    for row in rows:
        assert row["tests"], f"row {row['id']} names no test"
        assert row["verdict"] in ("reproduced", "departs", "addition"), (row["id"], row["verdict"])
        for file, name in row["tests"]:
            path = REPO / file
            if not path.exists() or name not in defined_tests(path):
                missing.append(f"{row['id']}: {file}::{name}")
    assert not missing, "the table names tests that do not exist: " + ", ".join(missing)


def test_conformance_table_tests_run_across_processes():
    """Every test a row names takes, directly or through its module's fixtures, one of
    the fixtures that start a real broker and real peers (tests/conftest.py), or runs a
    pytest of its own whose tests do."""
    real = {"bus", "make_bus", "make_module_bus", "auxbus"}
    offenders = []
    for row in table_rows():
        for file, name in row["tests"]:
            funcs = {n.name: n for n in ast.walk(ast.parse((REPO / file).read_text()))
                     if isinstance(n, ast.FunctionDef)}

            def uses_real(fn, seen=(), funcs=funcs):
                args = {a.arg for a in fn.args.args}
                return bool(args & real) or any(uses_real(funcs[a], (*seen, a)) for a in args
                                                if a in funcs and a not in seen)
            own_pytest = '"-m", "pytest"' in ast.get_source_segment((REPO / file).read_text(), funcs[name])
            if not uses_real(funcs[name]) and not own_pytest:
                offenders.append(f"{row['id']}: {file}::{name}")
    assert not offenders, "rows whose test runs no processes: " + ", ".join(offenders)


def test_conformance_counts_are_the_table_s():
    verdicts = [r["verdict"] for r in table_rows()]
    counts = re.search(r"Reproduced (\d+), departs (\d+), addition (\d+) \((\d+) rows\)", TABLE.read_text())
    assert counts, "the table's Counts line is missing"
    assert tuple(map(int, counts.groups())) == (
        verdicts.count("reproduced"), verdicts.count("departs"), verdicts.count("addition"), len(verdicts))
