"""Seeing the bus: ``ls`` as a tree, ``monitor`` (udevadm style), ``trace`` (live,
filtered, recorded), ``trace render`` (Mermaid, HTML), ``wait``, ``demo --record``.

Pure formatting is tested on records and snapshots built here; the commands are
tested against real processes on an ``auxbus`` (the project's own pytest plugin).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.observe.diagram import to_html, to_markdown, to_mermaid
from auxipc.observe.render import render_tree
from auxipc.observe.trace import Filter, Lifelines, dumps, format_trace, format_udev, load, udev_event

pytestmark = pytest.mark.timeout(30)

PY = sys.executable


# ---- a recorded stream, as a Watcher gives it -----------------------------------------------

def stream() -> list[dict]:
    P, C = "parent ixd[100]#1", "child idpf_eth[200]#2"
    return [
        {"kind": "bus", "ts": 0.1, "seq": 1, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "parent", "name": "ixd", "pid": 100, "inc": 1}},
        {"kind": "bus", "ts": 0.2, "seq": 2, "action": "ADD", "dev": "ixd.eth.0", "driver": "",
         "detail": {"modalias": "auxiliary:ixd.eth", "parent": P}},
        {"kind": "bus", "ts": 0.3, "seq": 3, "action": "REGISTER", "dev": "", "driver": "",
         "detail": {"role": "child", "name": "idpf_eth", "pid": 200, "inc": 2}},
        {"kind": "bus", "ts": 0.31, "seq": 4, "action": "DRIVER_ADD", "dev": "", "driver": "idpf_eth",
         "detail": {"id_table": ["ixd.eth"]}},
        {"kind": "bus", "ts": 0.32, "seq": 5, "action": "BIND", "dev": "ixd.eth.0", "driver": "idpf_eth",
         "detail": {"modalias": "auxiliary:ixd.eth"}},
        {"kind": "event", "ts": 0.33, "dev": "ixd.eth.0", "direction": "child->parent", "event": "POST_CONFIG",
         "seq": 1, "inc": 2, "payload": {"mtu": 1500}},
        {"kind": "call", "ts": 0.4, "dev": "ixd.eth.0", "event": "SET_MAC", "from": C, "to": P, "errno": 0,
         "error": None, "us": 580},
        {"kind": "call", "ts": 0.5, "dev": "ixd.eth.0", "event": "REQUEST_RESET", "from": C, "to": P,
         "errno": -22, "error": "EINVAL", "us": 450},
        {"kind": "event", "ts": 0.6, "dev": "ixd.eth.0", "direction": "parent->child", "event": "FW_EVENT",
         "seq": 1, "inc": 1, "payload": {"kind": "HEALTH", "note": "a;b#c<d>\"e\""}},
        {"kind": "bus", "ts": 0.7, "seq": 6, "action": "FAULT_INJECTED", "dev": "ixd.eth.0", "driver": "",
         "detail": {"what": "drop"}},
        {"kind": "bus", "ts": 0.8, "seq": 7, "action": "PEER_DEAD", "dev": "", "driver": "",
         "detail": {"name": "idpf_eth", "pid": 200, "inc": 2, "reason": "killed"}},
        {"kind": "bus", "ts": 0.81, "seq": 8, "action": "UNBIND", "dev": "ixd.eth.0", "driver": "idpf_eth",
         "detail": {"reason": "driver idpf_eth died"}},
        {"kind": "malformed", "ts": 0.9, "error": "EPROTO: bad frame"},
        {"kind": "trace", "ts": 1.0, "action": "LOCKDEP", "dev": "ixd.eth.0", "detail": {"chain": "a->b"}},
    ]


def annotated() -> list[dict]:
    lines = Lifelines()
    return [lines.annotate(dict(r)) for r in stream()]


def test_lifelines_name_both_ends_of_every_record():
    ends = [(r.get("action") or r.get("event") or r["kind"], r["src"], r["dst"]) for r in annotated()]
    assert ends == [
        ("REGISTER", "parent ixd", "broker"),
        ("ADD", "parent ixd", "broker"),
        ("REGISTER", "child idpf_eth", "broker"),
        ("DRIVER_ADD", "child idpf_eth", "broker"),
        ("BIND", "broker", "child idpf_eth"),
        ("POST_CONFIG", "child idpf_eth", "parent ixd"),
        ("SET_MAC", "child idpf_eth", "parent ixd"),
        ("REQUEST_RESET", "child idpf_eth", "parent ixd"),
        ("FW_EVENT", "parent ixd", "child idpf_eth"),
        ("FAULT_INJECTED", "broker", "broker"),       # unknown actions: on the broker, never an error
        ("PEER_DEAD", "child idpf_eth", "broker"),
        ("UNBIND", "broker", "child idpf_eth"),
        ("malformed", "broker", "broker"),
        ("LOCKDEP", "broker", "broker"),
    ]


def test_lifelines_seeded_from_ls_know_a_running_bus():
    lines = Lifelines()
    lines.seed({"peers": [{"role": "parent", "name": "ixd", "inc": 1}, {"role": "child", "name": "eth2", "inc": 2}],
                "drivers": [{"name": "idpf_eth", "peer": "child eth2[9]#2"}],
                "devices": [{"name": "ixd.eth.0", "parent": "parent ixd[8]#1", "driver": "idpf_eth"}]})
    rec = lines.annotate({"kind": "event", "dev": "ixd.eth.0", "direction": "parent->child", "inc": 1})
    assert (rec["src"], rec["dst"]) == ("parent ixd", "child eth2")


def test_filters_match_device_event_or_action_and_peer_globs():
    recs = annotated()
    names = lambda flt: [r.get("action") or r.get("event") or r["kind"] for r in recs if flt(r)]
    assert names(Filter(events=["set_mac", "BIND"])) == ["BIND", "SET_MAC"]
    assert names(Filter(devices=["ixd.*"], events=["*RESET*"])) == ["REQUEST_RESET"]
    assert "REGISTER" not in names(Filter(devices=["ixd.eth.0"]))
    by_child = names(Filter(peers=["idpf_eth"]))
    assert {"POST_CONFIG", "SET_MAC", "FW_EVENT", "PEER_DEAD", "UNBIND", "DRIVER_ADD"} <= set(by_child)
    assert "ADD" not in by_child
    assert names(Filter(peers=["parent ixd"], events=["REGISTER"])) == ["REGISTER"]
    assert not Filter() and Filter(devices=["x"])


def test_trace_lines_show_direction_result_latency_and_payload():
    lines = [format_trace(r) for r in annotated()]
    assert re.search(r"call\s+SET_MAC\s+ixd\.eth\.0\s+child idpf_eth -> parent ixd\s+= 0  \(0\.58 ms\)$", lines[6])
    assert lines[7].endswith("= -22 EINVAL  (0.45 ms)")
    assert "parent ixd -> child idpf_eth" in lines[8] and 'async #1 {"kind":"HEALTH"' in lines[8]
    assert "FAULT_INJECTED" in lines[9] and "what=drop" in lines[9]
    assert lines[12].startswith("[   0.900000]  malformed") and "bad frame" in lines[12]
    assert re.match(r"\[   1\.000000\]  trace  LOCKDEP +ixd\.eth\.0 +chain=a->b$", lines[13])


def test_udev_lines_and_properties_like_udevadm_monitor():
    bind = stream()[4]
    assert format_udev(bind, 12.3456789) == \
        "KERNEL[12.345679] bind     /bus/auxiliary/devices/ixd.eth.0 (auxiliary)"
    props = format_udev(bind, 1.0, properties=True).split("\n")
    assert props[1:] == ["ACTION=bind", "DEVPATH=/bus/auxiliary/devices/ixd.eth.0", "SUBSYSTEM=auxiliary",
                         "DEVNAME=ixd.eth.0", "DRIVER=idpf_eth", "MODALIAS=auxiliary:ixd.eth", "SEQNUM=5", ""]
    # UNBIND carries no modalias on the wire: it is derived from the device name
    assert udev_event(stream()[11])["MODALIAS"] == "auxiliary:ixd.eth"
    drv = udev_event(stream()[3])
    assert (drv["ACTION"], drv["DEVPATH"], drv["AUXIPC_ACTION"], drv["ID_TABLE"]) == \
        ("add", "/bus/auxiliary/drivers/idpf_eth", "DRIVER_ADD", "ixd.eth")
    assert udev_event(stream()[10])["ACTION"] == "offline"
    assert udev_event(stream()[9])["ACTION"] == "fault_injected"


def test_mermaid_lifelines_arrows_and_escapes():
    text = to_mermaid(stream())
    lines = text.splitlines()
    assert lines[:4] == ["sequenceDiagram", "    participant P1 as parent ixd", "    participant B as broker",
                         "    participant C1 as child idpf_eth"]
    assert "    C1->>B: SET_MAC ixd.eth.0" in lines and "    B->>P1: SET_MAC" in lines
    assert "    P1-->>B: 0 (0.58 ms)" in lines and "    B-->>C1: 0 (0.58 ms)" in lines
    assert "    B--xC1: -22 EINVAL (0.45 ms)" in lines
    assert "    B-)C1: FW_EVENT (async)" in lines
    assert "    C1-xB: PEER_DEAD reason=killed" in lines
    assert "    Note over B: FAULT_INJECTED ixd.eth.0" in lines
    assert "    Note over B: LOCKDEP ixd.eth.0" in lines
    fw = next(x for x in lines if x.startswith("    P1-)B: FW_EVENT"))
    assert "a#59;b#35;c#lt;d#gt;" in fw and ";" not in fw.replace("#59;", "").replace("#35;", "") \
        .replace("#lt;", "").replace("#gt;", "").replace("#quot;", "")
    md = to_markdown(stream(), "demo")
    assert md.startswith("# demo\n\n```mermaid\nsequenceDiagram\n") and md.endswith("```\n")


def test_html_timeline_is_self_contained():
    page = to_html(stream(), "t<1>")
    assert page.startswith("<!doctype html>") and "t&lt;1&gt;" in page
    assert "<script src" not in page and "http" not in page
    assert page.count("<tr title=") == len(stream())
    assert "-22 EINVAL" in page and 'class="call bad"' in page


def test_tree_shows_parent_device_driver_refs_and_events():
    snap = {"epoch": 7, "schema": "1.0", "pending": 0, "stats": {},
            "peers": [{"role": "parent", "name": "ixd", "pid": 10, "inc": 1, "alive": True, "state": "alive",
                       "schema": "1.0", "last_seen_ms": 5, "slow_calls": 0},
                      {"role": "child", "name": "idpf_eth", "pid": 11, "inc": 2, "alive": True, "state": "alive",
                       "schema": "1.0", "last_seen_ms": 3, "slow_calls": 2}],
            "drivers": [{"name": "idpf_eth", "id_table": ["ixd.eth"], "peer": "child idpf_eth[11]#2",
                         "bound": ["ixd.eth.0"], "handles": ["LINK_CHANGE"]}],
            "devices": [{"id": 1, "name": "ixd.eth.0", "match": "ixd.eth", "driver": "idpf_eth", "state": "added",
                         "bind": "bound", "refcount": 2, "holders": {"parent ixd[10]#1": 1, "child idpf_eth[11]#2": 1},
                         "parent": "parent ixd[10]#1", "locked_by": None, "queued": 0, "last_error": "",
                         "events": [
                             {"event": "LINK_CHANGE", "direction": "parent->child", "delivery": "async",
                              "deliverable": True},
                             {"event": "FW_EVENT", "direction": "parent->child", "delivery": "async",
                              "deliverable": False},
                             {"event": "SET_MAC", "direction": "child->parent", "delivery": "sync",
                              "deliverable": True}]},
                        {"id": 2, "name": "ixd.rdma.0", "match": "ixd.rdma", "driver": None, "state": "added",
                         "bind": "unbound", "refcount": 1, "holders": {"parent ixd[10]#1": 1},
                         "parent": "parent ixd[10]#1", "locked_by": None, "queued": 0,
                         "last_error": "probe: -EPROBE_DEFER", "events": []}]}
    text = render_tree(snap)
    assert text.splitlines()[:9] == [
        "bus epoch 7  schema 1.0  pending calls 0",
        "├─ parent ixd  pid 10 inc 1  alive  schema 1.0  seen 5 ms ago",
        "│  ├─ ixd.eth.0  (auxiliary:ixd.eth)  added, bound  refs 2 [parent ixd[10]#1, child idpf_eth[11]#2]",
        "│  │  └─ driver idpf_eth ← child idpf_eth[11]#2",
        "│  │     events 2/3 deliverable (~ async)",
        "│  │       ↓ to child : LINK_CHANGE~  (+1 not handled)",
        "│  │       ↑ to parent: SET_MAC",
        "│  └─ ixd.rdma.0  (auxiliary:ixd.rdma)  added, unbound  refs 1 [parent ixd[10]#1]",
        "│     └─ no driver",
    ]
    assert "last error: probe: -EPROBE_DEFER" in text
    assert "└─ child idpf_eth  pid 11 inc 2  alive  schema 1.0  seen 3 ms ago, 2 slow calls" in text
    assert "driver idpf_eth  id_table ixd.eth  bound: ixd.eth.0" in text
    assert render_tree({"epoch": 1, "schema": "1.0", "pending": 0, "peers": [], "drivers": [], "devices": []}) \
        .endswith("(no processes on the bus)")


# ---- the CLI without processes -------------------------------------------------------------

def test_trace_render_writes_markdown_mmd_html_and_stdout(tmp_path):
    rec = tmp_path / "t.jsonl"
    rec.write_text("\n".join(dumps(r) for r in stream()) + "\n\n")
    runner = CliRunner()
    r = runner.invoke(main, ["trace", "render", str(rec), "--mermaid", str(tmp_path / "t.md"),
                             "--html", str(tmp_path / "t.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t.md").read_text().startswith("# t\n\n```mermaid\nsequenceDiagram")
    assert "<table>" in (tmp_path / "t.html").read_text()
    r = runner.invoke(main, ["trace", "render", str(rec), "--event", "SET_MAC"])
    assert r.exit_code == 0 and r.output.startswith("sequenceDiagram\n")
    assert "SET_MAC" in r.output and "REGISTER" not in r.output
    r = runner.invoke(main, ["trace", "render", str(rec), "--mermaid", str(tmp_path / "t.mmd")])
    assert (tmp_path / "t.mmd").read_text().startswith("sequenceDiagram\n")


def test_trace_render_names_a_bad_line(tmp_path):
    rec = tmp_path / "bad.jsonl"
    rec.write_text(dumps(stream()[0]) + "\nnot json\n")
    r = CliRunner().invoke(main, ["trace", "render", str(rec)])
    assert r.exit_code == 1 and "bad.jsonl:2: not a JSON record" in r.output
    with pytest.raises(Exception, match="a trace record is an object with 'kind'"):
        (tmp_path / "x.jsonl").write_text("[1]\n")
        load(tmp_path / "x.jsonl")


def test_wait_usage_errors_and_no_broker_hint():
    runner = CliRunner()
    r = runner.invoke(main, ["wait", "bound"])
    assert r.exit_code == 2 and "needs a name" in r.output
    r = runner.invoke(main, ["wait", "nonsense"])
    assert r.exit_code == 2
    empty = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
    try:
        t = time.monotonic()
        r = runner.invoke(main, ["wait", "broker", "--timeout", "0.2", "--runtime-dir", empty])
        assert r.exit_code == 1 and time.monotonic() - t < 5
        assert "start one with 'auxipc broker'" in r.output
        r = runner.invoke(main, ["monitor", "--runtime-dir", empty])
        assert r.exit_code == 1 and "start one with 'auxipc broker'" in r.output
    finally:
        os.rmdir(empty)


# ---- against real processes ----------------------------------------------------------------

class Background:
    """``auxipc <args>`` in the background; the constructor returns once it printed
    'ready' on stderr. ``read_until`` collects its stdout up to a pattern."""

    def __init__(self, auxbus, *args: str):
        self.p = subprocess.Popen([PY, "-u", "-m", "auxipc", *args, "--runtime-dir", auxbus.runtime_dir],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.out = b""
        err = b""
        while b"ready" not in err:
            chunk = self._read(self.p.stderr, 15)
            if not chunk:
                self.p.kill()
                _, rest = self.p.communicate()
                pytest.fail(f"auxipc {args[0]} not ready: {(err + rest).decode()}")
            err += chunk

    @staticmethod
    def _read(f, timeout: float) -> bytes:
        r, _, _ = select.select([f], [], [], timeout)
        return os.read(f.fileno(), 65536) if r else b""

    def read_until(self, pattern: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out.decode(errors="replace"), re.M):
            remaining = deadline - time.monotonic()
            chunk = self._read(self.p.stdout, remaining) if remaining > 0 else b""
            if not chunk:
                pytest.fail(f"no {pattern!r} in the output within {timeout} s: {self.out.decode()}")
            self.out += chunk

    def finish(self, sig=signal.SIGTERM) -> tuple[int, str]:
        self.p.send_signal(sig)
        try:
            rest, _ = self.p.communicate(timeout=10)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.communicate()
        return self.p.returncode, (self.out + rest).decode()


def test_monitor_prints_udev_style_lines_and_stops_on_sigterm(auxbus):
    mon = Background(auxbus, "monitor", "--property")
    try:
        auxbus.parent("ixd")
        eth = auxbus.child("idpf_eth")
        auxbus.wait("bound", "ixd.eth.0")
        auxbus.stop(eth)
        mon.read_until(r"^KERNEL\S+ remove +/auxipc/peers/idpf_eth")
    finally:
        code, out = mon.finish()
    assert code == 0, out
    heads = re.findall(r"^KERNEL\[\d+\.\d{6}\] (\S+) +(\S+) \((\w+)\)$", out, re.M)
    assert ("add", "/bus/auxiliary/devices/ixd.eth.0", "auxiliary") in heads
    assert ("bind", "/bus/auxiliary/devices/ixd.eth.0", "auxiliary") in heads
    assert ("unbind", "/bus/auxiliary/devices/ixd.eth.0", "auxiliary") in heads
    assert ("add", "/bus/auxiliary/drivers/idpf_eth", "drivers") in heads
    assert out.count("MODALIAS=auxiliary:ixd.eth") >= 3
    assert "DRIVER=idpf_eth" in out and "SEQNUM=" in out


def test_monitor_replay_count_and_trace_json_filters_record(auxbus, tmp_path):
    record = tmp_path / "live.jsonl"
    tr = Background(auxbus, "trace", "--device", "ixd.eth.0", "--json", "--record", str(record))
    try:
        auxbus.parent("ixd")
        auxbus.child("idpf_eth")
        auxbus.wait("bound", "ixd.eth.0")
        assert auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})["errno"] == 0
        assert auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 1000})["errno"] == 0
        tr.read_until(r'"event":"SET_MAC"')
        # the injected one: ixd's own at bind travels the async path and may come after SET_MAC's record
        tr.read_until(r'"speed_mbps":1000[,}]')
    finally:
        code, out = tr.finish(signal.SIGINT)
    assert code == 0
    recs = [json.loads(line) for line in out.splitlines()]
    assert recs and all(r["dev"] == "ixd.eth.0" for r in recs)
    call = next(r for r in recs if r["kind"] == "call" and r["event"] == "SET_MAC")   # idpf_eth also enables queues
    assert (call["event"], call["errno"], call["src"], call["dst"]) == ("SET_MAC", 0, "child idpf_eth", "parent ixd")
    assert call["us"] > 0
    ev = [r for r in recs if r["kind"] == "event" and r["event"] == "LINK_CHANGE"][-1]   # after ixd's own at bind
    assert ev["payload"]["speed_mbps"] == 1000 and ev["src"] == "parent ixd"
    kept = load(record)                       # --record keeps everything, unfiltered
    assert {"REGISTER", "DRIVER_ADD", "ADD", "BIND"} <= {r.get("action") for r in kept}

    # udevadm-style replay of what the broker kept, then exit after --count
    r = subprocess.run([PY, "-m", "auxipc", "monitor", "--replay", "--count", "2", "--runtime-dir",
                        auxbus.runtime_dir], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0 and "ready" in r.stderr
    heads = [line for line in r.stdout.splitlines() if line.startswith("KERNEL[")]
    assert len(heads) == 2 and " add " in heads[0]


def test_ls_tree_table_json_and_wait(auxbus):
    auxbus.parent("ixd")
    auxbus.child("idpf_eth")
    runner = CliRunner()
    rt = ["--runtime-dir", auxbus.runtime_dir]
    r = runner.invoke(main, ["wait", "bound", "ixd.eth.0", "--timeout", "10", *rt])
    assert r.exit_code == 0 and "ixd.eth.0 is added, bound to idpf_eth" in r.output
    r = runner.invoke(main, ["wait", "peer", "idpf_eth", *rt])
    assert r.exit_code == 0 and "child idpf_eth is registered" in r.output
    r = runner.invoke(main, ["wait", "driver", "idpf_eth", "-q", *rt])
    assert r.exit_code == 0 and r.output == ""
    r = runner.invoke(main, ["wait", "broker", *rt])
    assert r.exit_code == 0
    r = runner.invoke(main, ["wait", "unbound", "ixd.eth.0", "--timeout", "0.1", *rt])
    assert r.exit_code == 1 and "ixd.eth.0 is added, bound to idpf_eth" in r.output

    r = runner.invoke(main, ["ls", *rt])
    assert r.exit_code == 0
    assert re.search(r"^├─ parent ixd  pid \d+", r.output, re.M)
    assert re.search(r"^│  └─ ixd\.eth\.0  \(auxiliary:ixd\.eth\)  added, bound  refs \d", r.output, re.M)
    assert "driver idpf_eth ← child idpf_eth[" in r.output
    r = runner.invoke(main, ["ls", "--table", *rt])
    assert r.exit_code == 0 and r.output.splitlines()[2].split()[:3] == ["DEVICE", "STATE", "BIND"]
    r = runner.invoke(main, ["ls", "--json", *rt])
    snap = json.loads(r.output)
    assert {"devices", "drivers", "peers"} <= set(snap)


@pytest.mark.slow
def test_demo_record_draws_a_diagram(tmp_path):
    record = tmp_path / "demo.jsonl"
    r = subprocess.run([PY, "-m", "auxipc", "demo", "--record", str(record)], capture_output=True, text=True,
                       timeout=25)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = load(record)
    assert {"bus", "call", "event"} <= {x["kind"] for x in recs}
    text = to_mermaid(recs)
    assert "participant P1 as parent ixd" in text and "participant C1 as child idpf_eth" in text
    assert "    C1->>B: SET_MAC ixd.eth.0" in text and "    B->>C1: RESET_WARN" in text
