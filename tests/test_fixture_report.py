"""What the ``auxbus`` fixture gives a test besides the bus: a failure report with
each process's log and the test's trace, ``--auxbus-keep``, and the journal and
``adev.data`` of a process, read through the bus (``auxbus.child(...).records``).
The report and the option run in a pytest of their own (``pytester``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from proto.errno import AuxError, Errno

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

DRIVERS = Path(__file__).with_name("fixture_drivers.py")

INNER = '''
def _clean(auxbus):
    auxbus.parent("ixd")
    child = auxbus.child("buggy:Clean")
    auxbus.wait_bound("ixd.eth.0")
    return child


def test_fails_in_its_body(auxbus):
    _clean(auxbus)
    assert False, "fails on purpose"


def test_fails_at_teardown(auxbus):
    auxbus.parent("buggy:Leaky")


def test_passes(auxbus):
    _clean(auxbus)
'''


@pytest.fixture
def inner(pytester):
    pytester.makepyfile(buggy=DRIVERS.read_text(), test_inner=INNER)
    pytester.makeini("[pytest]\ntimeout = 30\n")
    return pytester


def failure(out: str, test: str) -> str:
    """The text under one test's failure (or teardown error) header."""
    body = re.split(r"(?m)^_+ (?:ERROR at teardown of )?(\w+) _+$", out)
    return next(body[i + 1] for i in range(1, len(body) - 1, 2) if body[i] == test)


def sections(out: str, test: str) -> list[str]:
    """The titles of the report sections under one test's failure."""
    return re.findall(r"(?m)^-+ (auxbus .+?) -+$", failure(out, test))


@pytest.mark.slow
def test_a_failure_report_has_each_process_log_and_the_trace(inner):
    r = inner.runpytest_subprocess("-p", "no:randomly", timeout=55)
    out = r.stdout.str()
    r.assert_outcomes(failed=1, passed=2, errors=1)
    titles = sections(out, "test_fails_in_its_body")
    assert [t.split(" (")[0] for t in titles] == ["auxbus log: broker", "auxbus log: parent-ixd",
                                                  "auxbus log: child-buggy:Clean", "auxbus trace"], out
    body = failure(out, "test_fails_in_its_body")
    assert re.search(r"(?m)^\[ *[\d.]+\] +bus +BIND +ixd\.eth\.0 ", body), body
    assert re.search(r"(?m)^-+ auxbus log: child-buggy:Clean .*\n.* WARNING probed ixd\.eth\.0$", body), body
    titles = sections(out, "test_fails_at_teardown")
    assert [t.split(" (")[0] for t in titles] == ["auxbus log: broker", "auxbus log: parent-buggy:Leaky",
                                                  "auxbus trace"], out
    assert "devices_outlive_parent" in failure(out, "test_fails_at_teardown")
    assert "auxbus: kept" not in out


@pytest.mark.slow
def test_auxbus_keep_keeps_the_runtime_dir_and_says_where(inner):
    r = inner.runpytest_subprocess("-p", "no:randomly", "--auxbus-keep", "-k", "test_passes", timeout=55)
    out = r.stdout.str()
    r.assert_outcomes(passed=1)
    found = re.search(r"test_inner\.py::test_passes: runtime dir (/tmp/axt-\S+), process logs (/tmp/axt-logs-\S+)$",
                      out, re.M)
    assert found and "auxbus: kept runtime dirs (--auxbus-keep)" in out, out
    root, logs = Path(found[1]), Path(found[2])
    try:
        assert root.is_dir() and not list(root.glob("*.sock")), list(root.iterdir())   # the broker stopped
        names = sorted(p.name for p in logs.iterdir())
        # forked from the zygote the broker is the harness's first process; spawned
        # (AUXIPC_ZYGOTE=0) it is started by pytest-xprocess, which keeps its log itself
        want = ["broker.log", "parent-ixd.log", "child-buggy:Clean.log"]
        if os.environ.get("AUXIPC_ZYGOTE") == "0":
            want = want[1:]
        assert names == [f"{i:02d}-{n}" for i, n in enumerate(want, 1)], names
        assert "probed ixd.eth.0" in (logs / names[-1]).read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def test_a_process_journal_and_device_data_are_read_through_the_bus(auxbus):
    parent = auxbus.parent("ixd")
    child = auxbus.child("idpf_eth")
    auxbus.wait_bound("ixd.eth.0")
    assert child.wait_record("probe", dev="ixd.eth.0")["driver"] == "idpf_eth"
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 25000})
    assert child.wait_record("link", speed_mbps=25000)["up"] is True
    data = child.data("ixd.eth.0")
    assert data["link"]["speed_mbps"] == 25000 and "queues" in data and "gen" in data, data
    assert "ixd.eth.0" in parent.devices and child.pid == child.proc.pid and child.alive()
    with pytest.raises(KeyError, match=r"has no device 'nope' \(it has: ixd\.eth\.0\)"):
        child.data("nope")
    auxbus.kill(child)
    child.proc.popen.wait(10)
    auxbus.wait("peer-gone", "idpf_eth")     # the bus saw it die (else: ENODEV "is gone", also right)
    with pytest.raises(AuxError, match=r"inspect child-idpf_eth: \$\.header\.args\.peer: no live peer '\d+' "
                                       r"\(peers: ixd \(pid \d+\)\)") as exc:
        auxbus.inspect(child)
    assert exc.value.errno == Errno.ENODEV
    assert child.proc.popen.returncode == -signal.SIGKILL
