"""Traces that are causally right: every record carries its sender's stamp, watchers merge
by it, renderers sort by it and resolve lifelines in two passes; watchers say they are
ready only once subscribed (``auxipc wait watcher``, ``--ready-fd``); ``monitor`` and
``trace`` show one clock; hardware records stand on the parent's lifeline.

Pure parts (the reorder buffer, rendering a crafted out-of-order recording) are tested
on records built here; the rest against real processes: a recorded examples/crash.toml,
the demo's output, a background ``trace --record`` and ``send`` right after it.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.observe import conditions
from auxipc.observe.causal import causal, resolve
from auxipc.observe.diagram import to_html, to_mermaid
from auxipc.observe.perfetto import to_trace_events
from auxipc.observe.trace import dumps, load
from auxipc.observe.watch import Reorder

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MS = 1_000_000

pytestmark = pytest.mark.timeout(60)


# ---- the reorder buffer ----------------------------------------------------------------------

def rec(stamp: int, origin: str = "broker", seq: int = 0, **kw) -> dict:
    return {"kind": "bus", "mono_ns": stamp, "origin": origin, "src_seq": seq, **kw}


def test_reorder_releases_by_stamp_once_the_window_passed():
    buf, window = Reorder(), 30 * MS
    # the broker's notification arrives after a child's event stamped later
    for r in (rec(120 * MS, "#2", 1, name="POST_CONFIG"), rec(100 * MS, "broker", 3, name="REGISTER"),
              rec(110 * MS, "broker", 4, name="BIND")):
        buf.push(r, r["mono_ns"] + window)
    assert buf.pop(129 * MS) is None                      # the earliest is not due yet
    out = [buf.pop(200 * MS)["name"] for _ in range(3)]
    assert out == ["REGISTER", "BIND", "POST_CONFIG"] and buf.pop(200 * MS) is None
    assert buf.due() is None and len(buf) == 0


def test_reorder_marks_a_record_that_arrived_after_the_window_late():
    buf = Reorder()
    buf.push(rec(200 * MS, "broker", 5), 230 * MS)
    assert not buf.pop(231 * MS).get("late")
    buf.push(rec(150 * MS, "#3", 1), 180 * MS)            # stamped before what already left
    assert buf.pop(231 * MS)["late"] is True
    buf.push(rec(300 * MS, "broker", 4), 330 * MS)        # a sender's sequence going back
    assert buf.pop(0, force=True)["late"] is True


def test_causal_sorts_by_stamp_then_sequence_and_keeps_unstamped_records_in_place():
    a, b, c = rec(30, "#1", 2, n="a"), rec(10, "broker", 1, n="b"), rec(30, "#1", 1, n="c")
    old = {"kind": "bus", "n": "old"}                     # recorded before stamps: stays right after b
    assert [r["n"] for r in causal([a, b, old, c])] == ["b", "old", "c", "a"]
    assert [r["n"] for r in causal([{"kind": "x", "n": 1}, {"kind": "x", "n": 2}])] == [1, 2]


# ---- a crafted out-of-order recording ----------------------------------------------------------

P, C = "parent ixd[100]#1", "child idpf_eth[200]#2"


def happened() -> list[dict]:
    """A bus's records in the order they happened, each stamped by its sender."""
    t = 1_000 * MS
    recs = [
        {"kind": "bus", "origin": "broker", "src_seq": 1, "seq": 1, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "parent", "name": "ixd", "pid": 100, "inc": 1}},
        {"kind": "bus", "origin": "broker", "src_seq": 2, "seq": 2, "action": "ADD", "dev": "ixd.eth.0",
         "driver": "", "detail": {"modalias": "auxiliary:ixd.eth", "parent": P}},
        {"kind": "trace", "origin": "#1", "src_seq": 1, "action": "HW link", "dev": "",
         "detail": {"peer": "parent ixd#1", "task": "main", "what": "link", "dev": "ixd.eth.0", "up": True,
                    "speed_mbps": 100000}},
        {"kind": "bus", "origin": "broker", "src_seq": 3, "seq": 3, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "child", "name": "idpf_eth", "pid": 200, "inc": 2}},
        {"kind": "bus", "origin": "broker", "src_seq": 4, "seq": 4, "action": "DRIVER_ADD", "dev": "",
         "driver": "idpf_eth", "detail": {"id_table": ["ixd.eth"]}},
        {"kind": "bus", "origin": "broker", "src_seq": 5, "seq": 5, "action": "BIND", "dev": "ixd.eth.0",
         "driver": "idpf_eth", "detail": {}},
        {"kind": "event", "origin": "#1", "src_seq": 2, "dev": "ixd.eth.0", "direction": "parent->child",
         "event": "LINK_CHANGE", "seq": 1, "inc": 1, "payload": {"up": True}},
        {"kind": "call", "origin": "broker", "src_seq": 6, "dev": "ixd.eth.0", "event": "QUEUE_CONFIG", "from": C,
         "to": P, "errno": 0, "error": None, "us": 900},
        {"kind": "event", "origin": "#2", "src_seq": 1, "dev": "ixd.eth.0", "direction": "child->parent",
         "event": "POST_CONFIG", "seq": 1, "inc": 2, "payload": {"mtu": 1500}},
        {"kind": "bus", "origin": "broker", "src_seq": 7, "seq": 6, "action": "PEER_DEAD", "dev": "", "driver": "",
         "detail": {"name": "idpf_eth", "pid": 200, "inc": 2, "reason": "killed"}},
        {"kind": "bus", "origin": "broker", "src_seq": 8, "seq": 7, "action": "UNBIND", "dev": "ixd.eth.0",
         "driver": "idpf_eth", "detail": {"reason": "driver idpf_eth died"}},
        {"kind": "event", "origin": "#1", "src_seq": 3, "dev": "ixd.eth.0", "direction": "parent->child",
         "event": "FW_EVENT", "seq": 2, "inc": 1, "payload": {"kind": "HEALTH"}},
    ]
    for i, r in enumerate(recs):
        r["mono_ns"] = t + i * MS
        r["ts"] = i / 1000
    return recs


def order_of(recs: list[dict]) -> list[str]:
    return [r.get("action") or r.get("event") for r in recs]


WANT = order_of(happened())


def shuffled() -> list[dict]:
    """What a watcher without the merge could have recorded: async events (another
    socket) first, the broker's stream after; phantom ends already written in."""
    recs = happened()
    events = [r for r in recs if r["origin"] != "broker"]
    rest = [r for r in recs if r["origin"] == "broker"]
    for r in events:
        r["src"], r["dst"] = "child", "child"          # what a one-pass annotation guessed
    random.Random(7).shuffle(rest)
    return events + rest


def test_a_crafted_out_of_order_recording_renders_in_causal_order_as_mermaid(tmp_path):
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(dumps(r) + "\n" for r in shuffled()))
    r = CliRunner().invoke(main, ["trace", "render", str(path), "--mermaid", "-"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [x for x in lines if x.startswith("    participant")] == [
        "    participant P1 as parent ixd", "    participant B as broker", "    participant C1 as child idpf_eth"]
    drawn = [x.split(": ", 1)[1].split()[0] for x in lines[4:]
             if re.match(r"    (P1|C1)(->>|-\)|-x)B: |    Note over (P1|C1):", x)]
    assert drawn == ["REGISTER", "ADD", "hw", "REGISTER", "DRIVER_ADD", "LINK_CHANGE", "QUEUE_CONFIG",
                     "POST_CONFIG", "PEER_DEAD", "FW_EVENT"]
    assert "    B->>C1: BIND ixd.eth.0 (idpf_eth)" in lines
    assert lines.index("    B->>C1: BIND ixd.eth.0 (idpf_eth)") < next(
        i for i, x in enumerate(lines) if x.startswith("    P1-)B: LINK_CHANGE"))
    assert "    B-)C1: LINK_CHANGE (async)" in lines and "    B-)P1: POST_CONFIG (async)" in lines
    # after the driver died, the parent's event reaches nobody: it ends at the broker
    assert not any(x.startswith("    B-)C1: FW_EVENT") for x in lines)
    assert lines[-1] == "    Note over B: FW_EVENT: no receiver bound, dropped"


def test_the_same_recording_in_causal_order_as_html_and_perfetto():
    recs = shuffled()
    page = to_html(recs, "shuffled")
    rows = [json.loads(html.unescape(m)) for m in re.findall(r'<tr title="([^"]*)">', page)]
    assert order_of(rows) == WANT
    head = re.search(r"<thead><tr><th>time</th>(.*?)</tr></thead>", page).group(1)
    assert re.findall(r"<th>([^<]*)</th>", head) == ["parent ixd", "broker", "child idpf_eth"]
    doc = to_trace_events(recs)
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert sorted(names.values()) == ["broker", "child idpf_eth (pid 200)", "parent ixd (pid 100)"]
    firsts = {}
    for e in doc["traceEvents"]:
        if e["ph"] in ("i", "X"):
            key = e["name"].split(" ")[0]
            firsts.setdefault(key, e["ts"])
    assert firsts["REGISTER"] < firsts["LINK_CHANGE"] < firsts["POST_CONFIG"] < firsts["PEER_DEAD"]


def test_hardware_records_stand_on_the_parents_lifeline_with_their_details():
    recs = happened()[:3]
    text = to_mermaid(recs)
    note = next(x for x in text.splitlines() if "Note over" in x)
    assert note.startswith("    Note over P1: hw link ixd.eth.0 ") and "speed_mbps=100000" in note
    assert "up=true" in note
    page = to_html(recs)
    row = re.findall(r"<tr title=[^>]*>(.*?)</tr>", page)[2]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0].startswith("• hw link ixd.eth.0") and cells[1:] == [""]     # the parent's column
    doc = to_trace_events(recs)
    parent = next(e["pid"] for e in doc["traceEvents"] if e["name"] == "process_name"
                  and e["args"]["name"].startswith("parent ixd"))
    hw = next(e for e in doc["traceEvents"] if e["name"] == "HW link")
    assert hw["pid"] == parent and hw["args"]["speed_mbps"] == 100000


def test_wait_watcher_condition_names_what_it_sees():
    snap = {"watchers": [{"name": "trace", "pid": 12}, {"name": "monitor", "pid": 13}]}
    assert conditions.check("watcher", None, snap)[0]
    assert conditions.check("watcher", "monitor", snap) == (True, "watcher monitor is subscribed (pid 13)")
    met, why = conditions.check("watcher", "other", snap)
    assert not met and why == "no watcher other subscribed (watchers: trace (pid 12), monitor (pid 13))"
    assert not conditions.check("watcher", None, {"watchers": []})[0]
    conditions.validate("watcher", None)
    conditions.validate("watcher", "trace")


# ---- against real processes ----------------------------------------------------------------------

def auxipc(*args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "auxipc", *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.slow
def test_a_recorded_crash_scenario_renders_in_causal_order(tmp_path):
    record = tmp_path / "crash.jsonl"
    r = auxipc("run", str(REPO / "examples" / "crash.toml"), "--record", str(record), "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = load(record)
    assert all(isinstance(x.get("mono_ns"), int) and x.get("origin") for x in recs), "every record is stamped"
    ordered = resolve(recs)
    stamps = [x["mono_ns"] for x in ordered]
    assert stamps == sorted(stamps)
    last: dict = {}
    for x in ordered:                                    # each sender's own sequence, in order
        if x["src_seq"]:
            assert x["src_seq"] > last.get(x["origin"], 0), x
            last[x["origin"]] = x["src_seq"]
    assert {x["src"] for x in ordered} | {x["dst"] for x in ordered} == {"parent ixd", "broker",
                                                                           "child idpf_eth"}
    # Mermaid: no phantom lifeline, the child registers before it posts its config
    text = to_mermaid(recs)
    lines = text.splitlines()
    assert [x for x in lines if x.startswith("    participant")] == [
        "    participant P1 as parent ixd", "    participant B as broker", "    participant C1 as child idpf_eth"]
    reg = [i for i, x in enumerate(lines) if x == "    C1->>B: REGISTER"]
    post = [i for i, x in enumerate(lines) if x.startswith("    C1-)B: POST_CONFIG")]
    binds = [i for i, x in enumerate(lines) if x.startswith("    B->>C1: BIND")]
    assert len(reg) == len(post) == len(binds) == 2        # bound twice: before and after the crash
    assert reg[0] < binds[0] < post[0] < reg[1] < binds[1] < post[1]
    # HTML: the same order; Perfetto: the same order on its time axis
    page = to_html(recs)
    rows = [json.loads(html.unescape(m)) for m in re.findall(r'<tr title="([^"]*)">', page)]
    assert [x["mono_ns"] for x in rows] == stamps
    doc = to_trace_events(recs)
    child = next(e["pid"] for e in doc["traceEvents"] if e["name"] == "process_name"
                 and e["args"]["name"].startswith("child idpf_eth"))
    on_child = sorted((e["ts"], e["name"]) for e in doc["traceEvents"] if e["pid"] == child and e["ph"] == "i")
    kinds = [n.split(" ")[0] for _, n in on_child]
    assert kinds.index("REGISTER") < kinds.index("BIND") < kinds.index("POST_CONFIG")


@pytest.mark.slow
def test_the_demo_prints_each_record_under_the_step_that_caused_it():
    r = auxipc("demo")
    assert r.returncode == 0, r.stdout + r.stderr
    steps: dict[int, list[str]] = {}
    stamps: dict[int, list[float]] = {}
    current = 0
    for line in r.stdout.splitlines():
        head = re.match(r"\[(\d+)\] ", line)
        if head:
            current = int(head.group(1))
            continue
        m = re.match(r"\s+\[\s*(\d+\.\d{6})\]\s+(\w+)\s+(\S+)", line)
        if m:
            steps.setdefault(current, []).append(m.group(3))
            stamps.setdefault(current, []).append(float(m.group(1)))
    assert steps[2] == ["REGISTER", "ADD"]
    assert steps[3][:3] == ["REGISTER", "DRIVER_ADD", "BIND"] and "POST_CONFIG" in steps[3]
    assert {"QUEUE_CONFIG", "ENABLE_QUEUES", "LINK_CHANGE"} <= set(steps[3])
    assert "POST_CONFIG" not in steps[4] and steps[4][-1] == "FW_EVENT"
    # every step's records come after the previous step's
    for n in sorted(stamps)[1:]:
        assert min(stamps[n]) >= max(stamps[n - 1]), (n, stamps)


def _trace_then_send(auxbus, tmp_path, i: int, ready: str) -> list[dict]:
    record = tmp_path / f"t{i}.jsonl"
    args = [PY, "-m", "auxipc", "trace", "--record", str(record), "--name", f"t{i}",
            "--runtime-dir", auxbus.runtime_dir]
    if ready == "fd":
        r_fd, w_fd = os.pipe()
        tr = subprocess.Popen([*args, "--ready-fd", str(w_fd)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, pass_fds=(w_fd,))
        os.close(w_fd)
        with os.fdopen(r_fd, "rb") as f:
            assert f.read() == b"ready\n"
    else:
        tr = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        w = auxipc("wait", "watcher", f"t{i}", "--timeout", "20", "--runtime-dir", auxbus.runtime_dir)
        assert w.returncode == 0 and f"watcher t{i} is subscribed (pid {tr.pid})" in w.stdout, w.stdout + w.stderr
    try:
        out = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": f"02:00:00:00:00:{i + 16:02x}"})
        assert out["errno"] == 0, out
    finally:
        tr.send_signal(signal.SIGINT)
        _, err = tr.communicate(timeout=20)
    assert tr.returncode == 0, err
    return load(record)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_trace_record_in_the_background_then_send_at_once_is_recorded_10_times_out_of_10(auxbus, tmp_path):
    auxbus.parent("ixd")
    auxbus.child("idpf_eth")
    auxbus.wait("bound", "ixd.eth.0")
    got = 0
    for i in range(10):
        recs = _trace_then_send(auxbus, tmp_path, i, "fd" if i % 2 else "wait")
        mac = f"02:00:00:00:00:{i + 16:02x}"
        calls = [x for x in recs if x["kind"] == "call" and x["event"] == "SET_MAC"]
        admin = [x for x in recs if x.get("action") == "ADMIN"]
        got += bool(calls and admin and calls[0]["errno"] == 0)
        assert calls and admin, f"run {i} ({mac}) missed its send: {recs}"
    assert got == 10


@pytest.mark.slow
def test_monitor_and_trace_show_one_clock(auxbus, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = ["--runtime-dir", auxbus.runtime_dir, "--json"]
    mon = subprocess.Popen([PY, "-m", "auxipc", "monitor", "--name", "m", *base], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=env)
    tr = subprocess.Popen([PY, "-m", "auxipc", "trace", "--name", "t", *base], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env)
    try:
        for name in ("m", "t"):
            w = auxipc("wait", "watcher", name, "--timeout", "20", "--runtime-dir", auxbus.runtime_dir)
            assert w.returncode == 0, w.stdout + w.stderr
        auxbus.parent("ixd")
        auxbus.wait("device", "ixd.eth.0")
    finally:
        outs = []
        for p in (mon, tr):
            p.send_signal(signal.SIGINT)
            outs.append(p.communicate(timeout=20)[0].decode())
    mon_add = next(json.loads(x) for x in outs[0].splitlines() if '"ACTION":"add"' in x and "ixd.eth.0" in x)
    tr_add = next(json.loads(x) for x in outs[1].splitlines() if '"action":"ADD"' in x)
    assert mon_add["TIMESTAMP"] == round(tr_add["ts"], 6)           # seconds since the bus started, both
    assert mon_add["record"]["mono_ns"] == tr_add["mono_ns"]        # the broker's stamp, both
    assert 0 < tr_add["ts"] < 3600
