"""The ``auxbus`` fixture fails a test on the contract bugs the bus saw: one inner
pytest (``pytester``, in a process of its own, the plugin from its entry point)
runs a test per kind against the drivers and models of tests/fixture_drivers.py,
each with one deliberate bug, plus a clean one and the marker's opt-outs.

Each failure must name the kind and point at the line marked ``# BUG:<kind>`` in
the user's file, not at the plugin; a clean driver passes; ``auxbus_allow`` lets
the kind it names (or a group) through and no other; an unknown kind is a usage
error naming the valid ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auxipc.testing.contract import GROUPS, KINDS

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DRIVERS = Path(__file__).with_name("fixture_drivers.py")

INNER = '''
import pytest
from auxipc import Errno


def _child(auxbus, driver):
    auxbus.parent("ixd")
    child = auxbus.child("buggy:" + driver)
    auxbus.wait_bound("ixd.eth.0")
    return child


def test_sleep_in_atomic(auxbus):
    child = _child(auxbus, "SleepsInAtomic")
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": False})
    child.wait_record("link", up=False)


def test_atomic_overrun(auxbus):
    child = _child(auxbus, "OverrunsAtomic")
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": False})
    child.wait_record("link", up=False)


def test_lock_inversion(auxbus):
    _child(auxbus, "InvertsLocks")


def test_deadlock(auxbus):
    child = _child(auxbus, "Deadlocks")
    assert child.data("ixd.eth.0")["errno"] == Errno.EDEADLK


def test_handler_exception(auxbus):
    _child(auxbus, "Raises")
    assert auxbus.send("ixd.eth.0", "POST_INIT", {})["error"] == "EIO"


def test_probe_failed(auxbus):
    auxbus.parent("ixd")
    auxbus.child("buggy:FailsProbe")
    auxbus.expect_uevent("PROBE_FAILED", dev="ixd.eth.0")


def test_async_lost(auxbus):
    child = _child(auxbus, "LosesEvents")
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 1})
    child.wait_record("link", speed=1)
    # the next LINK_CHANGE the parent publishes is dropped on the way: the one after shows a gap
    auxbus.client.ctl("fault", action="add", rule={"kind": "message", "target": "ixd", "action": "drop",
                                                    "event": "LINK_CHANGE", "count": 1})
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 2})
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 3})
    child.wait_record("link", speed=3)


def test_ref_leak(auxbus):
    _child(auxbus, "LeaksRef")


def test_ref_leak_found(auxbus):
    _child(auxbus, "KeepsFound")


def test_devices_outlive_parent(auxbus):
    auxbus.parent("buggy:Leaky")


def test_uninit_missing(auxbus):
    auxbus.parent("buggy:NoUninit")


def test_two_bugs_in_one_failure(auxbus):
    auxbus.parent("ixd")
    auxbus.child("buggy:FailsProbe")
    auxbus.expect_uevent("PROBE_FAILED", dev="ixd.eth.0")
    auxbus.parent("buggy:Leaky")


def test_clean(auxbus):
    child = _child(auxbus, "Clean")
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": False})
    child.wait_record("link", up=False)
    assert child.data("ixd.eth.0") == {"probed": True, "up": False}


@pytest.mark.auxbus_allow("sleep_in_atomic")
def test_allowed_sleep_in_atomic(auxbus):
    child = _child(auxbus, "SleepsInAtomic")
    auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": False})
    child.wait_record("link", up=False)
    assert [b["kind"] for b in auxbus.bugs()] and {b["kind"] for b in auxbus.bugs()} == {"sleep_in_atomic"}


@pytest.mark.auxbus_allow("lockdep")
def test_allowed_by_group(auxbus):
    _child(auxbus, "InvertsLocks")


@pytest.mark.auxbus_allow("lock_inversion")
def test_allowed_kind_lets_no_other_through(auxbus):
    auxbus.parent("buggy:Leaky")
'''

# inner test -> the kinds its failure must name (the clean and allowed ones pass)
FAILS = {f"test_{kind}": [kind] for kind in ("sleep_in_atomic", "atomic_overrun", "lock_inversion", "deadlock",
                                             "handler_exception", "probe_failed", "async_lost", "ref_leak",
                                             "devices_outlive_parent", "uninit_missing")}
FAILS["test_ref_leak_found"] = ["ref_leak"]
FAILS["test_two_bugs_in_one_failure"] = ["probe_failed", "devices_outlive_parent"]
FAILS["test_allowed_kind_lets_no_other_through"] = ["devices_outlive_parent"]
PASSES = ["test_clean", "test_allowed_sleep_in_atomic", "test_allowed_by_group"]


def bug_lines() -> dict[str, int]:
    """kind -> the line marked ``# BUG:<kind>`` in tests/fixture_drivers.py."""
    found = {}
    for n, line in enumerate(DRIVERS.read_text().splitlines(), 1):
        m = re.search(r"# BUG:(\w+)", line)
        if m:
            found[m.group(1)] = n
    return found


def teardown_errors(out: str) -> dict[str, str]:
    """Inner test name -> the text of its 'ERROR at teardown' section."""
    parts = re.split(r"_+ ERROR at teardown of (\w+) _+\n", out)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.fixture
def inner(pytester):
    pytester.makepyfile(buggy=DRIVERS.read_text(), test_inner=INNER)
    pytester.makeini("[pytest]\ntimeout = 30\n")
    return pytester


def test_each_kind_fails_naming_it_and_the_line_of_the_bug(inner):
    r = inner.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", timeout=55)
    out = r.stdout.str()
    r.assert_outcomes(passed=len(FAILS) + len(PASSES), errors=len(FAILS))
    errors = teardown_errors(out)
    assert sorted(errors) == sorted(FAILS), out
    lines = bug_lines()
    buggy = inner.path / "buggy.py"
    for test, kinds in FAILS.items():
        text = errors[test]
        assert re.match(r"auxbus: the bus saw \d+ contract bug\(s\) during the test", text), text
        message = text.split("-- auxbus log:")[0]
        assert {m for m in re.findall(r"(?m)^\S+:\d+: (\w+): ", message)} == set(kinds), message
        for kind in kinds:
            line = lines[kind if test != "test_ref_leak_found" else "ref_leak_found"]
            assert f"{buggy}:{line}: {kind}: {KINDS[kind]}" in text, (kind, text)
        # pytest-style: the message, not the plugin's frames
        assert "pytest_plugin.py" not in text and "Traceback" not in text.split("auxbus log:")[0], text
    assert "auxbus_allow" in errors["test_sleep_in_atomic"]


def test_an_unknown_kind_in_the_marker_is_a_usage_error(pytester):
    pytester.makepyfile(test_inner='''
import pytest

@pytest.mark.auxbus_allow("sleep_in_atomic", "sleepy")
def test_x(auxbus):
    pass
''')
    r = pytester.runpytest_subprocess("-p", "no:randomly", timeout=30)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert "test_inner.py::test_x: @pytest.mark.auxbus_allow: unknown kind 'sleepy'; valid kinds: " in err, err
    assert all(kind in err for kind in KINDS) and all(group in err for group in GROUPS), err
