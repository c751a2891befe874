"""The ``auxbus`` pytest plugin: the fixture itself, its teardown (nothing left behind,
also when the test fails or times out), and examples/test_example.py run as a user
would run it, in a pytest of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from auxipc.procfs import process_start_time
from auxipc.testing.auxbus import AuxBus

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def gone(pid: int) -> bool:
    return process_start_time(pid) is None


def test_auxbus_starts_sends_and_traces(auxbus):
    assert len(auxbus.runtime_dir) < 40 and Path(auxbus.runtime_dir, "bus.sock").exists()
    parent = auxbus.parent("ixd")
    child = auxbus.child("idpf_eth")
    assert "ready" in parent.ready_line and parent.alive() and child.alive()
    assert auxbus.wait_bound("ixd.eth.0") == "ixd.eth.0 is added, bound to idpf_eth"

    out = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})   # side inferred: child
    assert out == {"errno": 0, "error": None, "message": "", "reply": {"addr": "02:00:00:00:00:01", "filter_id": 0}}
    assert auxbus.send("ixd.eth.0", "FW_EVENT", {"kind": "HEALTH", "state": 1})["errno"] == 0   # from the parent
    assert auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "x"}, side="parent")["error"] == "EINVAL"

    call = auxbus.expect(kind="call", event="SET_MAC", errno=0)
    assert (call["src"], call["dst"]) == ("child idpf_eth", "parent ixd")
    fw = auxbus.expect(kind="event", event="FW_EVENT")
    assert fw["payload"]["kind"] == "HEALTH" and fw["direction"] == "parent->child"
    actions = [r["action"] for r in auxbus.trace() if r["kind"] == "bus"]
    assert actions[:2] == ["REGISTER", "ADD"] and "BIND" in actions
    assert [e["action"] for e in auxbus.uevents()] == actions

    # each expect returns a record not returned before: two resets, two distinct BINDs
    first = auxbus.expect_uevent("BIND", dev="ixd.eth.0")
    auxbus.send("ixd.eth.0", "REQUEST_RESET", {"reset_type": "FUNC"})
    second = auxbus.expect_uevent("BIND", dev="ixd.eth.0", timeout=10)
    assert second["seq"] > first["seq"]

    auxbus.mark()
    with pytest.raises(AssertionError, match=r"(?s)no record .*UNBIND.* within 0.1 s; seen since the mark"):
        auxbus.expect_uevent("UNBIND", timeout=0.1)


def test_fault_injection_sigstop_is_seen_as_death(auxbus):
    auxbus.parent("ixd")
    auxbus.child("idpf_eth")
    auxbus.wait("bound", "ixd.eth.0")
    auxbus.mark()
    auxbus.kill("idpf_eth", signal.SIGSTOP)          # heartbeats stop: dead after hb_liveness intervals
    auxbus.expect_uevent("PEER_DEAD", name="idpf_eth", timeout=10)
    auxbus.expect_uevent("UNBIND", dev="ixd.eth.0")
    assert auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": False})["error"] == "ENODEV"
    with pytest.raises(LookupError, match="no process 'nope'"):
        auxbus.kill("nope")
    # teardown continues the stopped process so it can be terminated


def test_teardown_leaves_nothing_even_after_the_broker_was_killed(xprocess, request):
    bus = AuxBus(xprocess, request)
    try:
        bus.start()
        p = bus.parent("ixd")
        c = bus.child("idpf_eth")
        bus.wait("bound", "ixd.eth.0")
        pids, root = [bus.broker_pid, p.pid, c.pid], bus.runtime_dir
        os.kill(bus.broker_pid, signal.SIGKILL)       # the broker crashes: its sockets stay behind
    finally:
        problems = bus.close()
    assert problems == []
    assert all(gone(pid) for pid in pids)
    assert not os.path.exists(root) and not os.path.exists(bus.logs)

    clean = AuxBus(xprocess, request)
    try:
        clean.start()
        pid, root = clean.broker_pid, clean.runtime_dir
    finally:
        assert clean.close() == []
    assert gone(pid) and not os.path.exists(root)


FAILING = '''
import json, os, time
import pytest

def _note(auxbus, *procs):
    with open(os.environ["AXT_NOTES"], "a") as f:
        f.write(json.dumps({"root": auxbus.runtime_dir, "pids": [auxbus.broker_pid, *(p.pid for p in procs)]}) + "\\n")

def test_fails_after_starting_processes(auxbus):
    _note(auxbus, auxbus.parent("ixd"), auxbus.child("idpf_eth"))
    assert False, "fails on purpose"

@pytest.mark.timeout(2)
def test_hangs_and_times_out(auxbus):
    _note(auxbus, auxbus.parent("ixd"))
    time.sleep(30)
'''


@pytest.mark.slow
def test_example_file_runs_in_its_own_pytest_and_failures_leave_nothing():
    """examples/test_example.py as a user runs it (the plugin comes from the entry point),
    next to tests that fail and time out after starting processes."""
    work = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    try:
        for name in ("test_example.py", "my_eth.py"):
            shutil.copy(EXAMPLES / name, work)
        Path(work, "test_zz_failing.py").write_text(FAILING)
        Path(work, "pytest.ini").write_text("[pytest]\nfilterwarnings = error\ntimeout = 30\n")
        notes = Path(work, "notes.jsonl")
        env = {**os.environ, "AXT_NOTES": str(notes)}
        env.pop("PYTEST_ADDOPTS", None)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", work], cwd=work, env=env,
                           capture_output=True, text=True, timeout=25)
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "3 passed" in out and "2 failed" in out, out
        assert "fails on purpose" in out and "Timeout" in out
        recorded = [json.loads(line) for line in notes.read_text().splitlines()]
        assert len(recorded) == 2
        for rec in recorded:
            assert all(gone(pid) for pid in rec["pids"]), rec
            assert not os.path.exists(rec["root"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("zygote", ["1", "0"])
def test_the_fixture_works_without_the_cache_provider(zygote):
    """``-p no:cacheprovider`` (which pytest-xprocess needs for its pid files): the
    broker is then started like the test's other processes, forked or spawned."""
    work = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    try:
        for name in ("test_example.py", "my_eth.py"):
            shutil.copy(EXAMPLES / name, work)
        env = {**os.environ, "AUXIPC_ZYGOTE": zygote}
        env.pop("PYTEST_ADDOPTS", None)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                            work], cwd=work, env=env, capture_output=True, text=True, timeout=50)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "3 passed" in out, out
        assert not list(Path(work).glob(".pytest_cache"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_broker_left_by_a_killed_pytest_is_stopped_by_the_next(xprocess):
    from auxipc.process.launch import Proc
    from auxipc.testing.auxbus import BROKER_PREFIX, _is_broker, _reap_stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    root = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    broker = Proc("stale-broker", ["broker", "--runtime-dir", root], log_dir=root)
    broker.start()
    rootdir = Path(str(xprocess.rootdir))
    stale, reused = rootdir / f"{BROKER_PREFIX}{dead}", rootdir / f"{BROKER_PREFIX}{int(dead) + 1000000}"
    try:
        for d, pid in ((stale, broker.pid), (reused, os.getpid())):   # the second: a pid now reused by us
            d.mkdir(parents=True, exist_ok=True)
            (d / "xprocess.PID").write_text(str(pid))
            (d / "runtime_dir").write_text(root)
        _reap_stale(xprocess)
        broker.popen.wait(10)
        assert not _is_broker(broker.pid) or broker.popen.poll() is not None
        assert not stale.exists() and not reused.exists()
        assert not list(Path(root).glob("*.sock"))
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(reused, ignore_errors=True)
