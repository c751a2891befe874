"""The parts of the fixture's contract checks that need no processes: where a bug
is in the user's code (auxipc/runtime/where.py), the broker's record of bugs
(auxipc/broker/bugs.py) and the marker's names and the failure message
(auxipc/testing/contract.py)."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

from auxipc.broker.bugs import Bugs
from auxipc.broker.lockdep import describe
from auxipc.runtime.where import caller_site, code_site, is_user_file, raise_site
from auxipc.testing.contract import KINDS, UnknownKind, allowed, bugs_of, failure
from proto import envelope as E
from proto.errno import AuxError, Errno

HERE = __file__


def decorated(fn):
    @functools.wraps(fn)
    def wrapper(*a):
        return fn(*a)
    return wrapper


class Driver:
    @decorated
    def handler(self, adev, value):     # the def code_site names
        return caller_site()      # the line caller_site names

    def raises(self):
        return {}["x"]      # raises here


def line_of(text: str) -> int:
    return next(n for n, line in enumerate(Path(HERE).read_text().splitlines(), 1) if text in line)


def test_where_names_the_users_def_and_line_not_the_librarys():
    drv = Driver()
    assert code_site(drv.handler) == f"{HERE}:{line_of('def handler(self')}"    # not the decorator's line
    assert code_site(functools.partial(drv.handler, None)) == code_site(drv.handler)
    assert code_site(len) == ""
    assert drv.handler(None, None) == f"{HERE}:{line_of('return caller_site()' + '  ')}"
    try:
        drv.raises()
    except KeyError as exc:
        assert raise_site(exc.__traceback__) == f"{HERE}:{line_of('# raises' + ' here')}"
    assert not is_user_file(E.__file__) and not is_user_file(pytest.__file__) and not is_user_file("<string>")
    assert is_user_file(HERE)


def uevent(**detail) -> E.Uevent:
    return E.Uevent(seq=0, action="BUG", detail=detail)


class Peer:
    label = "child drv[42]#2"


def test_the_broker_keeps_a_peers_bug_and_a_peer_locates_a_lockdep_report():
    stats: Counter = Counter()
    bugs = Bugs(lambda: 1.5, stats)
    bugs.from_peer(Peer(), uevent(kind="sleep_in_atomic", message="BUG: sleeping", where="/d.py:3", task="t"))
    inversion = {"classes": ["mutex:a", "mutex:b"], "this": "t holds mutex:b and takes mutex:a",
                 "earlier": ["t holds mutex:a and takes mutex:b"]}
    bugs.lockdep("inversion", inversion)
    assert [b["where"] for b in bugs.records] == ["/d.py:3", ""]
    bugs.from_peer(Peer(), uevent(kind="lock_inversion", message=describe("inversion", inversion), where="/d.py:9"))
    assert len(bugs.records) == 2 and bugs.records[1]["where"] == "/d.py:9"
    assert bugs.records[1]["peer"] == Peer.label
    assert stats == {"bug_sleep_in_atomic": 1, "bug_lock_inversion": 1}
    # the lifespan warnings are the broker's: a peer only says where its remove() is
    bugs.from_peer(Peer(), uevent(kind="devices_outlive_parent", message="lk.eth.0", where="/m.py:12"))
    assert len(bugs.records) == 2
    assert bugs.where_of({"kind": "devices_outlive_parent", "parent": Peer.label}) == "/m.py:12"
    with pytest.raises(AuxError, match=r"a peer reports only BUG records .* not BUG 'nonsense'") as exc:
        bugs.from_peer(Peer(), uevent(kind="nonsense", message="x"))
    assert exc.value.errno == Errno.EINVAL
    with pytest.raises(AuxError, match=r"not WARN 'ref_leak'"):
        bugs.from_peer(Peer(), E.Uevent(seq=0, action="WARN", detail={"kind": "ref_leak", "message": "x"}))


def test_the_marker_names_kinds_and_groups_and_refuses_others():
    assert allowed(["sleep_in_atomic", "lockdep"]) == {"sleep_in_atomic", "lock_inversion", "deadlock"}
    with pytest.raises(UnknownKind, match=r"unknown kind 'sleepy'; valid kinds: sleep_in_atomic, .*; groups: lockdep"):
        allowed(["sleepy"])


def test_one_failure_lists_every_bug_at_its_line_once_with_a_count():
    answer = {"bugs": [
        {"kind": "sleep_in_atomic", "message": "BUG: sleeping", "where": "/d.py:3", "peer": "child d", "ts": 2},
        {"kind": "sleep_in_atomic", "message": "BUG: sleeping", "where": "/d.py:3", "peer": "child d", "ts": 3}],
        "warnings": [{"kind": "uninit_missing", "message": "parent p left", "where": "", "ts": 1},
                     {"kind": "something_else", "message": "not a bug kind", "ts": 0}]}
    found = bugs_of(answer)
    assert [b["kind"] for b in found] == ["uninit_missing", "sleep_in_atomic", "sleep_in_atomic"]
    text = failure(found, ["processes left behind: child d (pid 7)"])
    assert text.splitlines() == [
        'auxbus: the bus saw 3 contract bug(s) during the test (to allow a kind: @pytest.mark.auxbus_allow("KIND"))',
        "",
        f"(no user frame known): uninit_missing: {KINDS['uninit_missing']}",
        "    the bus reported: parent p left",
        "",
        f"/d.py:3: sleep_in_atomic: {KINDS['sleep_in_atomic']} (x2)",
        "    child d reported: BUG: sleeping",
        "",
        "auxbus teardown: processes left behind: child d (pid 7)"]
    assert failure([], ["broker (pid 9) left behind"]) == "auxbus teardown: broker (pid 9) left behind"
