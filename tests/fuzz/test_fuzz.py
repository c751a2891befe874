"""The fuzz target in the suite: crafted attacks, the crashers the fuzzer found
(tests/fuzz/corpus/), the seed sessions, and a short coverage-guided run."""

import pathlib
import subprocess
import sys

import pytest

from proto import envelope as E
from proto.errno import Errno

from . import harness, seeds
from .harness import SENDERS, Broker, C, P, no_signals

HERE = pathlib.Path(__file__).parent
CLI = SENDERS[5]


DEEP = "@deep@"


def raw(t: E.Msg, depth: int = 0, **fields) -> bytes:
    """A frame built by hand: what a hostile peer sends, past every check of ``encode``.
    The value ``DEEP`` becomes an array nested ``depth`` levels (more than msgpack packs)."""
    return E.MAGIC + E.packb({"t": int(t), **fields}).replace(E.packb(DEEP), b"\x91" * depth + b"\x00")


def refused(broker: Broker, ident: bytes, frame: bytes, r: int = 1):
    """The broker's answer to ``frame``: a RESULT carrying an errno; (errno name, message)."""
    broker.frame(ident, frame)
    out = [m for who, m, _ in broker.drain() if who == ident and isinstance(m, E.Result) and m.r in (r, 0)]
    assert out and out[-1].e < 0, f"no error RESULT for {frame[:60]!r}: {out}"
    return Errno(-out[-1].e).name, out[-1].m


def registered() -> Broker:
    s = seeds.bound_session()
    s.broker.drain()
    return s.broker


REGISTER = dict(r=1, role="child", name="evil", pid=5000, start_time=1, schema=[1, 0])

ATTACKS = {
    "restore.bound is an int": (
        b"c:evil", raw(E.Msg.REGISTER, **REGISTER, restore={"bound": 5}),
        "EINVAL", "$.header.restore.bound: expected array, got int"),
    "restore refs is a string": (
        b"c:evil", raw(E.Msg.REGISTER, **REGISTER, restore={"bound": [{"name": "a.b.0", "refs": "x"}]}),
        "EINVAL", "$.header.restore.bound[0].refs: expected int, got str"),
    "restore refs is infinity": (
        b"c:evil", raw(E.Msg.REGISTER, **REGISTER, restore={"bound": [{"name": "a.b.0", "refs": float("inf")}]}),
        "EINVAL", "$.header.restore.bound[0].refs: expected int, got float"),
    "control signal: signal is a list": (
        CLI, raw(E.Msg.CTL, r=1, op="signal", args={"target": "idpf", "signal": ["KILL"]}),
        "EINVAL", "$.header.args.signal: expected str, got array"),
    "fault add: rule is not a map": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": 7}),
        "EINVAL", "$.header.args.rule: expected map, got int"),
    "fault add: signal is an int": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "kill", "target": "idpf", "point": "probe", "signal": 9}}),
        "EINVAL", "$.header.args.rule.signal: expected str, got int"),
    "fault add: errno is an int": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "handler", "target": "idpf", "action": "errno", "errno": 5}}),
        "EINVAL", "$.header.args.rule.errno: expected str, got int"),
    "fault add: count is a string": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "message", "target": "idpf", "action": "drop", "count": "x"}}),
        "EINVAL", "$.header.args.rule.count: expected int, got str"),
    "fault add: probability is NaN": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "message", "target": "idpf", "action": "drop", "probability": float("nan")}}),
        "EINVAL", "$.header.args.rule.probability: nan out of range 0.0..1.0"),
    "fault add: point nested hundreds deep": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "kill", "target": "idpf", "point": DEEP}}, depth=300),
        "EPROTO", "$.header.args: nested deeper than 31 levels"),
    "fault add: event nested hundreds deep": (
        CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "handler", "target": "idpf", "action": "raise", "event": DEEP}}, depth=500),
        "EPROTO", "$.header.args: nested deeper than 31 levels"),
    "send: event is a list": (
        CLI, raw(E.Msg.CTL, r=1, op="send", args={"device": "ixd.eth.0", "from": "parent", "event": ["X"]}),
        "EINVAL", "$.header.args.event: expected str, got array"),
    "send: event is nil": (
        CLI, raw(E.Msg.CTL, r=1, op="send", args={"device": "ixd.eth.0", "from": "parent", "event": None}),
        "EINVAL", "$.header.args.event: expected str, got nil"),
    "header nested 1,000 deep": (
        P, raw(E.Msg.DEV_GET, r=1, dev=1, x=DEEP, depth=1000),
        "EPROTO", "$.header.x: nested deeper than 31 levels"),
    "header nested past msgpack's own stack": (
        P, raw(E.Msg.DEV_GET, r=1, dev=1, x=DEEP, depth=2000),
        "EPROTO", "$.header: undecodable msgpack (StackError)"),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_crafted_message_is_refused_and_the_bus_goes_on(attack):
    ident, frame, errno, message = ATTACKS[attack]
    broker = registered()
    with no_signals() as sent:
        assert refused(broker, ident, frame) == (errno, message)
        # The bus still works: a sync call goes through and is answered.
        broker.frame(P, E.encode(E.Call(r=77, dev=1, ev=2, timeout_ms=100), {"reset_type": 1})[0])
        req = [m for who, m, _ in broker.drain() if who == C and isinstance(m, E.Request)]
        broker.frame(C, E.encode(E.Result(r=req[0].r), {})[0])
        assert [m.e for who, m, _ in broker.drain() if who == P and isinstance(m, E.Result)] == [0]
    assert sent == []


def test_count_x_never_reaches_a_sync_call():
    """A fault rule with ``count: "x"`` was accepted and crashed the broker at the next sync call."""
    broker = registered()
    with no_signals():
        refused(broker, CLI, raw(E.Msg.CTL, r=1, op="fault", args={"action": "add", "rule": {
            "kind": "message", "target": "idpf", "action": "drop", "count": "x"}}))
        assert broker.bus.faults.rules == []


def corpus() -> list[pathlib.Path]:
    return sorted(p for p in (HERE / "corpus").iterdir() if p.is_file())


@pytest.mark.parametrize("path", corpus(), ids=[p.name for p in corpus()])
def test_crasher_replays_clean(path):
    harness.run(path.read_bytes())


@pytest.mark.parametrize("name", list(seeds.sessions()))
def test_seed_session_runs_clean(name):
    broker = harness.run(seeds.sessions()[name])
    assert broker.bus.uevents, "the session reached the bus"


def test_short_fuzz_run(tmp_path):
    """A few seconds of coverage-guided fuzzing from the seeds (scripts/fuzz runs it for minutes)."""
    pytest.importorskip("atheris")
    target = HERE / "fuzz_bus.py"
    subprocess.run([sys.executable, str(target), "--seeds", str(tmp_path / "seeds")], check=True, timeout=30)
    (tmp_path / "corpus").mkdir()
    out = subprocess.run(
        [sys.executable, str(target), "-runs=2000", "-max_total_time=10", "-max_len=8192", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"), str(tmp_path / "seeds")],
        capture_output=True, text=True, timeout=45)
    crashes = [p.name for p in tmp_path.glob("crash-*")]
    assert out.returncode == 0 and not crashes, out.stderr[-3000:]
