"""``trace render --perfetto``: Chrome trace-event JSON checked against the format
(required keys per phase, timestamps in µs, flows that pair up and bind to a
slice, slices that nest per thread, every track named), on synthetic records and
on a trace recorded from a real bus run (examples/crash.toml)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.observe.diagram import to_mermaid
from auxipc.observe.perfetto import to_trace_events
from auxipc.observe.trace import dumps, load

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

REQUIRED = {  # the trace-event format's keys per phase
    "X": {"name", "ph", "ts", "pid", "tid", "dur"},
    "i": {"name", "ph", "ts", "pid", "tid", "s"},
    "s": {"name", "ph", "ts", "pid", "tid", "id", "cat"},
    "f": {"name", "ph", "ts", "pid", "tid", "id", "cat"},
    "M": {"name", "ph", "pid", "args"},
}


def validate(doc: dict) -> list[dict]:
    """Assert ``doc`` is a loadable trace-event JSON object; returns its events."""
    assert set(doc) >= {"traceEvents"} and doc.get("displayTimeUnit") in ("ms", "ns")
    events = doc["traceEvents"]
    json.dumps(doc)                                          # serialisable as it stands
    named_pids = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    named_threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    for e in events:
        assert e["ph"] in REQUIRED, e
        missing = REQUIRED[e["ph"]] - set(e)
        assert not missing, f"{e} lacks {missing}"
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "process_sort_index", "thread_name", "thread_sort_index"), e
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        assert e["pid"] in named_pids and (e["pid"], e["tid"]) in named_threads, f"unnamed track: {e}"
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        if e["ph"] == "i":
            assert e["s"] in ("g", "p", "t"), e
    # slices on one thread nest or follow each other (the importer drops partial overlaps)
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in events:
        if e["ph"] == "X":
            by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for track, spans in by_thread.items():
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"slices overlap on {track}: {spans}"
            stack.append(end)
    # each flow id: exactly one start and one finish, each inside a slice of its thread
    flows = Counter((e["ph"], e["id"]) for e in events if e["ph"] in "sf")
    ids = {i for _, i in flows}
    for i in ids:
        assert flows[("s", i)] == 1 and flows[("f", i)] == 1, f"flow {i}: {flows}"
    for e in events:
        if e["ph"] in "sf":
            spans = by_thread.get((e["pid"], e["tid"]), [])
            assert any(a <= e["ts"] <= b for a, b in spans), f"flow event outside any slice: {e}"
    return events


def stream() -> list[dict]:
    return [
        {"kind": "bus", "ts": 0.10, "seq": 1, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "parent", "name": "ixd", "pid": 4242, "inc": 1}},
        {"kind": "bus", "ts": 0.11, "seq": 2, "action": "ADD", "dev": "ixd.eth.0", "driver": "",
         "detail": {"parent": "parent ixd[4242]#1"}},
        {"kind": "bus", "ts": 0.12, "seq": 3, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "child", "name": "idpf_eth", "pid": 4343, "inc": 2}},
        {"kind": "bus", "ts": 0.13, "seq": 4, "action": "DRIVER_ADD", "dev": "", "driver": "idpf_eth", "detail": {}},
        {"kind": "bus", "ts": 0.14, "seq": 5, "action": "BIND", "dev": "ixd.eth.0", "driver": "idpf_eth",
         "detail": {}},
        {"kind": "trace", "ts": 0.15, "action": "HW link", "dev": "",
         "detail": {"peer": "parent ixd#1", "task": "ixd#1/w1", "what": "link", "up": True}},
        # two calls of the child that overlap: separate threads
        {"kind": "call", "ts": 0.200, "dev": "ixd.eth.0", "event": "SET_MAC", "from": "child idpf_eth[4343]#2",
         "to": "parent ixd[4242]#1", "errno": 0, "error": None, "us": 1500},
        {"kind": "call", "ts": 0.201, "dev": "ixd.eth.0", "event": "DCB_CONFIG", "from": "child idpf_eth[4343]#2",
         "to": "parent ixd[4242]#1", "errno": -16, "error": "EBUSY", "us": 2000},
        {"kind": "event", "ts": 0.25, "dev": "ixd.eth.0", "direction": "parent->child", "event": "LINK_CHANGE",
         "seq": 1, "inc": 1, "payload": {"up": True}},
        {"kind": "trace", "ts": 0.30, "action": "LOCK_WAIT", "dev": "",
         "detail": {"peer": "parent ixd#1", "lock": "rtnl", "task": "idpf_eth#2/x1", "us": 700}},
        {"kind": "trace", "ts": 0.3002, "action": "LOCK_WAIT", "dev": "",
         "detail": {"peer": "parent ixd#1", "lock": "mutex:x", "task": "ixd#1/w2", "us": 500}},
        {"kind": "bus", "ts": 0.31, "seq": 6, "action": "LOCKDEP", "dev": "", "driver": "",
         "detail": {"kind": "inversion", "chain": "rtnl -> device_lock"}},
        {"kind": "trace", "ts": 0.31, "action": "LOCKDEP", "dev": "",
         "detail": {"kind": "inversion", "chain": "rtnl -> device_lock"}},
        {"kind": "trace", "ts": 0.32, "action": "FAULT", "dev": "", "detail": {"rule": 1, "kind": "handler"}},
    ]


def _process(events: list[dict], name: str) -> int:
    return next(e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"
                and e["args"]["name"].startswith(name))


def _thread(events: list[dict], pid: int, tid: int) -> str:
    return next(e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
                and (e["pid"], e["tid"]) == (pid, tid))


def test_mapping_of_each_record_kind():
    events = validate(to_trace_events(stream()))
    parent, child, broker = (_process(events, n) for n in ("parent ixd", "child idpf_eth", "broker"))
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert {"parent ixd (pid 4242)", "child idpf_eth (pid 4343)", "broker"} <= names

    set_mac = [e for e in events if e["ph"] == "X" and e["name"].startswith("SET_MAC")]
    assert {e["pid"] for e in set_mac} == {parent, child, broker}
    caller = next(e for e in set_mac if e["pid"] == child)
    assert caller["dur"] == 1500 and caller["args"]["latency_us"] == 1500 and caller["args"]["errno"] == 0
    # µs from the first record: the call ended at 0.200 s, 0.100 s after the first record
    assert caller["ts"] + caller["dur"] == pytest.approx(100_000)
    dcb = next(e for e in events if e["ph"] == "X" and e["name"] == "DCB_CONFIG" and e["pid"] == child)
    assert dcb["args"]["error"] == "EBUSY" and dcb["args"]["errno"] == -16
    assert dcb["tid"] != caller["tid"]                       # overlapping calls: two threads
    assert _thread(events, child, caller["tid"]).startswith("calls ")

    flows = [e for e in events if e["ph"] in "sf" and e["name"] == "SET_MAC"]
    path = [(e["ph"], e["pid"]) for e in sorted(flows, key=lambda e: (e["id"], e["ph"] == "f"))]
    assert path == [("s", child), ("f", broker), ("s", broker), ("f", parent)]

    link = [e for e in events if e["name"] == "LINK_CHANGE"]
    assert {e["ph"] for e in link} == {"i"} and {e["pid"] for e in link} == {parent, broker, child}
    hw = next(e for e in events if e["name"] == "HW link")
    assert hw["pid"] == parent and hw["args"]["up"] is True

    wait = next(e for e in events if e["name"] == "wait rtnl")
    assert wait["ph"] == "X" and wait["dur"] == 700 and wait["pid"] == parent
    assert _thread(events, parent, wait["tid"]) == "locks 1"
    other = next(e for e in events if e["name"] == "wait mutex:x")                 # overlapping: its own lane
    assert _thread(events, parent, other["tid"]) == "locks 2"
    lockdep = [e for e in events if e["name"].startswith("lockdep")]
    assert len(lockdep) == 1                                 # the bus and trace copies: once
    assert lockdep[0]["ph"] == "X" and _thread(events, broker, lockdep[0]["tid"]) == "lockdep"
    assert lockdep[0]["args"]["chain"] == "rtnl -> device_lock"
    assert any(e["name"] == "FAULT" and e["pid"] == broker for e in events)


def test_empty_trace_is_still_a_trace():
    assert validate(to_trace_events([]))


@pytest.mark.slow
def test_recorded_crash_scenario_exports(tmp_path):
    record, out = tmp_path / "crash.jsonl", tmp_path / "crash.json"
    r = subprocess.run([PY, "-m", "auxipc", "run", str(REPO / "examples" / "crash.toml"), "--record", str(record)],
                       capture_output=True, text=True, timeout=40, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = CliRunner().invoke(main, ["trace", "render", str(record), "--perfetto", str(out)])
    assert res.exit_code == 0, res.output
    recs = load(record)
    events = validate(json.loads(out.read_text()))
    procs = {e["args"]["name"].split(" (pid")[0] for e in events if e["name"] == "process_name"}
    assert {"broker", "parent ixd", "child idpf_eth"} <= procs
    calls = [x for x in recs if x["kind"] == "call"]
    assert calls, "the scenario's SET_MAC after the rebind is a call"
    slices = [e for e in events if e["ph"] == "X" and e.get("cat", "").startswith("call")]
    lane = [x for x in calls if x.get("lane")]       # the broker was not on their path
    assert len(slices) == 3 * len(calls) - len(lane)
    assert sum(e["ph"] == "s" for e in events) == 2 * len(calls) - len(lane)
    dead = [e for e in events if e["ph"] == "i" and e["name"].startswith("PEER_DEAD")]
    assert len(dead) == 2                                   # the driver, then the PCI owner


def test_cli_writes_perfetto_alone(tmp_path):
    rec = tmp_path / "t.jsonl"
    rec.write_text("\n".join(dumps(r) for r in stream()) + "\n")
    res = CliRunner().invoke(main, ["trace", "render", str(rec), "--perfetto", str(tmp_path / "t.json")])
    assert res.exit_code == 0 and "sequenceDiagram" not in res.output
    validate(json.loads((tmp_path / "t.json").read_text()))


@pytest.mark.slow
def test_recorded_model_a_demo_shows_lock_waits(tmp_path):
    """ixd's NETSHAPER_SET handler takes a per-device mutex: its waits are slices on the parent."""
    record = tmp_path / "model-a.jsonl"
    r = subprocess.run([PY, "-m", "auxipc", "demo", "model-a", "--record", str(record)], capture_output=True,
                       text=True, timeout=40, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    events = validate(to_trace_events(load(record)))
    parent = _process(events, "parent ixd")
    waits = [e for e in events if e["ph"] == "X" and e["name"] == "wait mutex:ixd.eth.0.shaper"]
    assert waits and {e["pid"] for e in waits} == {parent}
    assert all(_thread(events, parent, e["tid"]).startswith("locks ") for e in waits)
    assert all(e["args"]["us"] == e["dur"] for e in waits)
    dcb = [e for e in events if e["ph"] == "X" and e["name"] == "DCB_CONFIG"]
    assert any(e["args"]["error"] == "EINVAL" for e in dcb)     # the demo's refused DCB change
    # the sequence diagram leaves the waits to this view: no bare notes for them
    assert "LOCK_WAIT" not in to_mermaid(load(record))


def test_a_call_on_the_direct_lane_is_drawn_without_the_broker():
    """A call the direct lane carried never crossed the broker: Perfetto has no broker
    slice and one flow caller -> callee; Mermaid and HTML draw it straight across."""
    from auxipc.observe.diagram import to_html, to_mermaid
    recs = [r for r in stream() if r["kind"] == "bus"] + [
        {"kind": "call", "ts": 0.2, "dev": "ixd.eth.0", "event": "QSET_ADD", "from": "child idpf_eth[4343]#2",
         "to": "parent ixd[4242]#1", "errno": 0, "error": None, "us": 90, "lane": True}]
    events = validate(to_trace_events(recs))
    parent, child = (_process(events, n) for n in ("parent ixd", "child idpf_eth"))
    qset = [e for e in events if e["ph"] == "X" and e["name"].startswith("QSET_ADD")]
    assert {e["pid"] for e in qset} == {parent, child} and all(e["args"]["lane"] for e in qset)
    flows = [e for e in events if e["ph"] in "sf" and e["name"] == "QSET_ADD"]
    assert sorted((e["ph"], e["pid"]) for e in flows) == [("f", parent), ("s", child)]
    mermaid = to_mermaid(recs)
    assert "C1->>P1: QSET_ADD ixd.eth.0 (lane)" in mermaid and "P1-->>C1: 0 (0.09 ms)" in mermaid
    assert "B->>P1: QSET_ADD" not in mermaid
    assert "QSET_ADD = 0 (0.09 ms) on the direct lane" in to_html(recs)
