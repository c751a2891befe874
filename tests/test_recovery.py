"""Faults, recovery, lockdep and atomic contexts across real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from auxipc.observe.client import Client
from auxipc.testing.soak import Soak
from proto.errno import Errno

REPO = Path(__file__).resolve().parent.parent
RESET = {"reset_type": "FUNC"}


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.timeout(40)
def test_handler_and_message_faults_from_the_cli(bus):
    bus.parent("tests.models:Pair")
    bus.child("tests.models:Rec")
    bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" and d["driver"] for d in s["devices"]))
    ok(bus.cli("fault", "handler", "tdrv", "RESET_WARN", "--errno", "EBUSY", "--count", "1"))
    code, out, _ = bus.send("tp.eth.0", "RESET_WARN", "parent", RESET)
    assert (code, out["error"], out["message"]) == (1, "EBUSY", f"injected fault (rule #{bus.client.faults()[0]['id']})")
    assert bus.send("tp.eth.0", "RESET_WARN", "parent", RESET)[0] == 0          # count 1: spent
    ok(bus.cli("fault", "handler", "tdrv", "RESET_WARN", "--raise", "--count", "1"))
    code, out, _ = bus.send("tp.eth.0", "RESET_WARN", "parent", RESET)
    assert out["error"] == "EIO" and "injected fault in the RESET_WARN handler" in out["message"]
    ok(bus.cli("fault", "message", "tdrv", "--event", "RESET_WARN", "--drop", "--count", "1"))
    code, out, _ = bus.send("tp.eth.0", "RESET_WARN", "parent", RESET, timeout=0.5)
    assert out["error"] == "ETIMEDOUT"
    ok(bus.cli("fault", "message", "tdrv", "--event", "RESET_WARN", "--duplicate", "--count", "1"))
    assert bus.send("tp.eth.0", "RESET_WARN", "parent", RESET)[0] == 0
    bus.wait_ls(lambda s: s["stats"].get("late_replies", 0) >= 1)                # the second answer
    rules = json.loads(ok(bus.cli("fault", "ls", "--json")).stdout)
    assert [r["kind"] for r in rules] == ["handler", "handler", "message", "message"]
    assert "cleared 4" in ok(bus.cli("fault", "clear")).stdout
    bad = bus.cli("fault", "handler", "tdrv", "RESET_WARN", "--errno", "ENOPE")
    assert bad.returncode == 1 and "errno 'ENOPE' is not an errno name" in bad.stderr


@pytest.mark.timeout(40)
def test_kill_at_remove_and_at_request(bus):
    bus.parent("tests.models:Pair")
    child = bus.child("tests.models:Rec")
    bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" and d["driver"] for d in s["devices"]))
    ok(bus.cli("fault", "kill", "tdrv", "--at", "remove"))
    since = bus.uevents()[-1]["seq"]
    r = bus.cli("unbind", "tp.eth.0")
    assert r.returncode == 0          # remove cannot fail: the device is unbound either way
    bus.wait_uevent("PEER_DEAD", since=since)
    acts = bus.actions("tp.eth.0", since=since)
    assert acts.count("UNBIND") == 1, acts
    assert child.records("remove-start") == []       # killed before remove() ran
    # a second child, killed while the parent's sync call is pending on it
    bus.cli("fault", "clear")
    bus.child("tests.models:Rec")
    bus.wait_ls(lambda s: sum(1 for d in s["devices"] if d["driver"]) == 2)
    ok(bus.cli("fault", "kill", "tdrv", "--at", "request", "--event", "RESET_WARN"))
    t0 = time.monotonic()
    code, out, _ = bus.send("tp.eth.0", "RESET_WARN", "parent", RESET, timeout=10)
    assert out["error"] == "ENODEV" and time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_broker_restart_restores_bindings_without_a_second_probe(bus):
    bus.parent("tests.models:Pair")
    child = bus.child("tests.models:Rec")
    bus.wait_ls(lambda s: sum(1 for d in s["devices"] if d["driver"]) == 2)
    assert len(child.records("probe")) == 2
    slow = bus.popen(*bus.send_args("tp.eth.0", "RESET_WARN", "parent", {"reset_type": "DEV"}, timeout=10))
    child.wait_record("enter", ev="RESET_WARN")       # the call is in flight
    old_epoch = bus.client.query("ping")["epoch"]
    os.kill(bus.broker.pid, signal.SIGKILL)
    t0 = time.monotonic()
    out, _ = slow.communicate(timeout=20)
    # the CLI's own control socket lost the broker: it fails, never hangs
    assert slow.returncode != 0
    bus.client.close()
    bus.start_broker()
    snap = bus.wait_ls(lambda s: sum(1 for d in s["devices"] if d["driver"]) == 2, timeout=20)
    recovered = time.monotonic() - t0
    assert snap["epoch"] != old_epoch
    assert len(child.records("probe")) == 2              # adopted, not probed again
    binds = [u for u in bus.uevents() if u["action"] == "BIND"]
    assert all(u["detail"].get("adopted") for u in binds)
    assert bus.send("tp.eth.0", "RESET_WARN", "parent", RESET)[0] == 0
    assert recovered < 20


@pytest.mark.timeout(40)
@pytest.mark.parametrize("fixed", [False, True], ids=["buggy", "fixed"])
def test_ice_mtu_lock_inversion_detected_and_fix_clean(bus, fixed):
    env = {"AXT_FIXED": "1"} if fixed else {}
    parent = bus.parent("tests.lockdep_models:IceParent", **env)
    child = bus.child("tests.lockdep_models:IceRdma")
    bus.wait_ls(lambda s: any(d["name"] == "ice.eth.0" and d["driver"] for d in s["devices"]))
    code, out, _ = bus.send("ice.eth.0", "ETHTOOL_OP", "child", {"op": "SET_RINGPARAM", "rx_pending": 512})
    assert code == 0, out
    parent.wait_record("mtu-event-sent")
    assert ok(bus.cli("unbind", "ice.eth.0"))
    child.wait_record("remove-under-rtnl")
    lockdep = bus.ls()["lockdep"]
    if fixed:
        assert lockdep == {"inversions": [], "deadlocks": []}
    else:
        (inv,) = lockdep["inversions"]
        assert inv["classes"] == ["device_lock", "rtnl"]
        assert "holds rtnl and takes device_lock:ice.eth.0" in inv["earlier"][0]
        assert "holds device_lock:ice.eth.0 and takes rtnl" in inv["this"]
        assert any(u["action"] == "LOCKDEP" for u in bus.uevents())


@pytest.mark.timeout(30)
def test_sync_call_from_an_atomic_handler_is_refused(bus):
    bus.parent("tests.lockdep_models:IceParent")
    child = bus.child("tests.lockdep_models:IceRdma")
    bus.wait_ls(lambda s: any(d["name"] == "ice.eth.0" and d["driver"] for d in s["devices"]))
    assert bus.send("ice.eth.0", "LINK_CHANGE", "parent", {"up": True})[0] == 0
    rec = child.wait_record("atomic-call-refused")
    assert rec["errno"] == Errno.EAGAIN
    assert "BUG: sleeping function called from invalid context: SET_MAC call in LINK_CHANGE handler" in rec["message"]


# ---- supervision ---------------------------------------------------------------------------------

def _up(root: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-u", "-m", "auxipc", "up", *args, "--runtime-dir", root],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _cli(root: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "auxipc", *args, "--runtime-dir", root], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=30)


def _until_line(proc: subprocess.Popen, needle: str) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"'{needle}' never printed: {''.join(seen)}")


def _ps(root: str) -> dict:
    return {p["name"]: p for p in json.loads(ok(_cli(root, "ps", "--json")).stdout)["processes"]}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_up_restarts_crashes_not_operator_stops_and_shuts_down_clean():
    root = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    os.rmdir(root)
    up = _up(root)
    try:
        _until_line(up, "auxipc up ready")
        ps = _ps(root)
        assert {n: p["state"] for n, p in ps.items()} == {"broker": "running", "ixd": "running",
                                                         "idpf_eth": "running"}
        os.kill(ps["idpf_eth"]["pid"], signal.SIGKILL)
        _until_line(up, "up: idpf_eth running")
        assert _ps(root)["idpf_eth"]["restarts"] == 1
        assert _ps(root)["idpf_eth"]["last_exit"] == "killed by SIGKILL"
        with Client(root) as c:
            c.wait_for(lambda s: any(d["driver"] == "idpf_eth" for d in s["devices"]), 10)
        ok(_cli(root, "stop", "idpf_eth"))
        ps = _ps(root)
        assert ps["idpf_eth"]["state"] == "stopped" and ps["idpf_eth"]["restarts"] == 1
        ok(_cli(root, "start", "idpf_eth"))
        os.kill(_ps(root)["broker"]["pid"], signal.SIGKILL)          # the broker too comes back
        _until_line(up, "up: broker running")
        with Client(root) as c:
            c.wait_for(lambda s: any(d["driver"] == "idpf_eth" for d in s["devices"]), 15)
        ok(_cli(root, "down"))
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()
    assert not os.path.exists(root), os.listdir(root)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_up_gives_up_after_the_restart_intensity(tmp_path):
    root = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    os.rmdir(root)
    scenario = tmp_path / "crashy.toml"
    scenario.write_text("""
[supervisor]
intensity = 2
period = 30
backoff_min = 0.05
backoff_max = 0.1
[[process]]
name = "ixd"
role = "parent"
model = "ixd"
[[process]]
name = "temp"
role = "child"
driver = "idpf_eth"
restart = "temporary"
""")
    up = _up(root, str(scenario))
    try:
        _until_line(up, "auxipc up ready")
        os.kill(_ps(root)["temp"]["pid"], signal.SIGKILL)           # temporary: never restarted
        _until_line(up, "up: temp killed by SIGKILL")
        assert _ps(root)["temp"]["state"] == "stopped"
        last = None
        deadline = time.monotonic() + 40
        while up.poll() is None and time.monotonic() < deadline:   # permanent ixd: 2 restarts allowed
            r = _cli(root, "ps", "--json")
            if r.returncode != 0:
                break                                                 # the supervisor gave up and left
            ixd = {p["name"]: p for p in json.loads(r.stdout)["processes"]}["ixd"]
            if ixd["state"] == "running" and ixd["pid"] != last:
                last = ixd["pid"]
                os.kill(last, signal.SIGKILL)
        rest = up.stdout.read()
        assert up.wait(30) == 1
        assert "more than 2 restarts within 30 s" in rest
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()
    assert not os.path.exists(root)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_chaos_soak_holds_its_invariants():
    """About a minute of chaos in CI (``auxipc soak --duration N`` for longer)."""
    report = Soak(duration=45, seed=11, interval=1.2, echo=lambda line: None).run()
    if report["logs"]:
        logs = "".join(f"\n--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(Path(report["logs"]).iterdir()))
        shutil.rmtree(report["logs"])
        pytest.fail(f"{report['failures']}{logs}", pytrace=False)
    assert report["ok"], report["failures"]
    assert sum(report["faults"].values()) >= 20
    assert report["worst_call_overrun_ms"] <= 500


@pytest.mark.timeout(40)
def test_late_joiner_gets_link_state_and_a_gap_triggers_a_resync(bus):
    bus.parent("tests.models:Pair")
    bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" for d in s["devices"]))
    code, out, _ = bus.send("tp.eth.0", "LINK_CHANGE", "parent", {"up": True, "speed_mbps": 25000})
    assert out["error"] == "ENODEV"                      # no driver yet: skipped, but remembered
    child = bus.child("tests.models:Rec")
    rec = child.wait_record("LINK_CHANGE", dev="tp.eth.0")
    assert (rec["up"], rec["speed_mbps"]) == (True, 25000)   # the late joiner got the snapshot
    ok(bus.cli("fault", "message", "tp", "--event", "LINK_CHANGE", "--drop", "--count", "1"))
    assert bus.send("tp.eth.0", "LINK_CHANGE", "parent", {"up": False, "speed_mbps": -1})[0] == 0  # dropped
    assert bus.send("tp.eth.0", "FW_EVENT", "parent", {"kind": "HEALTH"})[0] == 0    # reveals the gap
    rec = child.wait_record("LINK_CHANGE", dev="tp.eth.0", up=False)                 # resynced
    assert rec["speed_mbps"] == -1
    assert bus.ls()["stats"].get("resyncs") == 1


@pytest.mark.timeout(40)
def test_sysfs_bind_and_unbind_with_the_driver_core_errnos(bus):
    bus.parent("tests.models:Pair")
    child = bus.child("tests.models:Rec", AXT_IDS="tp.eth")
    bus.wait_ls(lambda s: any(d["name"] == "tp.eth.0" and d["driver"] for d in s["devices"]))
    assert "tp.eth.0: unbound" in ok(bus.cli("unbind", "tp.eth.0")).stdout
    r = bus.cli("unbind", "tp.eth.0")
    assert r.returncode == 1 and "ENODEV: unbind: tp.eth.0 is not bound to a driver" in r.stderr
    assert "bound to tdrv" in ok(bus.cli("bind", "tp.eth.0", "tdrv")).stdout
    assert len(child.records("probe", dev="tp.eth.0")) == 2
    r = bus.cli("bind", "tp.eth.0", "tdrv")
    assert r.returncode == 1 and "EBUSY: bind: tp.eth.0 is bound to tdrv" in r.stderr
    r = bus.cli("bind", "tp.rdma.0", "tdrv")
    assert r.returncode == 1 and "ENODEV: bind: tp.rdma.0 does not match tdrv" in r.stderr
    r = bus.cli("bind", "nope.0", "tdrv")
    assert r.returncode == 1 and "ENODEV: bind: no device 'nope.0' on the bus" in r.stderr


@pytest.mark.timeout(30)
def test_bus_shutdown_runs_shutdown_of_bound_drivers(bus):
    bus.parent("tests.models:Pair")
    child = bus.child("tests.models:RecShutdown")
    bus.wait_ls(lambda s: sum(1 for d in s["devices"] if d["driver"]) == 2)
    os.kill(bus.broker.pid, signal.SIGTERM)           # the bus shuts down
    for dev in ("tp.eth.0", "tp.rdma.0"):
        child.wait_record("shutdown", dev=dev)
