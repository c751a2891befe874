"""Scenario files: parsing (one dataclass per table, errors naming the key, unknown
keys as warnings) and ``auxipc run`` on the shipped examples and on a failing one."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.procfs import process_start_time
from auxipc.testing.scenario import (
    ExpectRecord,
    ExpectResult,
    ProcessSpec,
    SendSpec,
    SignalSpec,
    StartSpec,
    StopSpec,
    WaitSpec,
    load,
    parse,
    subset_mismatch,
)
from auxipc.testing.scenario_run import run_scenario
from proto.errno import AuxError

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

ISSUE_EXAMPLE = '''
name = "model-a-basics"
[[process]]            # started in order after a broker in a fresh runtime dir
name = "ixd"           # unique
role = "parent"        # parent | child
model = "ixd"          # parent: --model ; child: driver = "idpf_eth" (string or list)
[[process]]
name = "eth"
role = "child"
driver = "idpf_eth"
[[step]]
wait = { bound = "ixd.eth.0", timeout = 10 }
[[step]]
send = { device = "ixd.eth.0", event = "SET_MAC", from = "child", payload = { addr = "02:00:00:00:00:01" } }
expect = { errno = 0, reply = { filter_id = 0 } }   # subset match on reply
[[step]]
send = { device = "ixd.eth.0", event = "SET_MAC", from = "child", payload = { addr = "x" } }
expect = { error = "EINVAL", message_contains = "$.payload.addr" }
[[step]]
kill = { process = "eth", signal = "KILL" }         # fault injection (TERM/KILL/STOP/CONT)
expect_uevent = { action = "UNBIND", dev = "ixd.eth.0", timeout = 5 }
'''


def test_the_documented_format_parses_into_dataclasses():
    sc = parse(ISSUE_EXAMPLE, "issue.toml")
    assert sc.name == "model-a-basics" and sc.warnings == []
    assert sc.processes == [ProcessSpec("ixd", "parent", model="ixd"), ProcessSpec("eth", "child", drivers=["idpf_eth"])]
    assert sc.processes[0].argv() == ["parent", "--model", "ixd"]
    assert sc.processes[1].argv() == ["child", "--driver", "idpf_eth"]
    s1, s2, s3, s4 = sc.steps
    assert s1.action == WaitSpec("bound", "ixd.eth.0", 10.0) and s1.index == 1
    assert s2.action == SendSpec("ixd.eth.0", "SET_MAC", "child", {"addr": "02:00:00:00:00:01"})
    assert s2.expect == ExpectResult(errno=0, reply={"filter_id": 0})
    assert s3.expect == ExpectResult(error="EINVAL", message_contains="$.payload.addr")
    assert s4.action == SignalSpec("eth", "KILL")
    assert s4.records == [ExpectRecord({"kind": "bus", "action": "UNBIND", "dev": "ixd.eth.0"}, 5.0)]
    assert s4.describe() == "kill eth (SIGKILL); uevent UNBIND ixd.eth.0"


def test_more_actions_lists_of_expectations_and_defaults():
    sc = parse('''
[[process]]
name = "p"
role = "parent"
model = "mod:Cls"
devices = 2
[[process]]
name = "c"
role = "child"
driver = ["a", "b"]
[[step]]
name = "go"
stop = "c"
expect_uevent = [{ action = "UNBIND" }, { action = "UNREGISTER", detail = { name = "a+b" }, timeout = 2 }]
[[step]]
start = { process = "c", timeout = 3 }
expect_trace = { kind = "event", event = "POST_CONFIG" }
[[step]]
send = { device = "d", event = "LINK_CHANGE", from = "parent" }
[[step]]
kill = { process = "broker", signal = "sigstop" }
[[step]]
wait = { broker = true }
[[step]]
expect_uevent = { action = "RECOVERED" }
''')
    assert sc.name == "<scenario>"
    assert sc.processes[0].argv() == ["parent", "--model", "mod:Cls", "--devices", "2"]
    assert sc.processes[1].argv() == ["child", "--driver", "a", "--driver", "b"]
    stop, start, send, kill, wait, only = sc.steps
    assert stop.action == StopSpec("c") and stop.name == "go" and len(stop.records) == 2
    assert stop.records[1].timeout == 2.0 and stop.records[1].fields["detail"] == {"name": "a+b"}
    assert start.action == StartSpec("c", 3.0) and start.records[0].fields == {"kind": "event", "event": "POST_CONFIG"}
    assert send.expect == ExpectResult(errno=0)           # a send without expect must succeed
    assert kill.action == SignalSpec("broker", "STOP")
    assert wait.action == WaitSpec("broker", None, 10.0)
    assert only.action is None and only.describe() == "uevent RECOVERED"


def test_unknown_keys_are_kept_and_reported_as_warnings():
    sc = parse('''
name = "x"
future = 1
[[process]]
name = "p"
role = "parent"
model = "ixd"
restart = "permanent"
max_restarts = 3
[[step]]
wait = { bound = "d", poll = 1 }
note = "hi"
''', "f.toml")
    assert sc.processes[0].extra == {"restart": "permanent", "max_restarts": 3}
    assert sc.warnings == ["process[0].restart: unknown key, ignored", "process[0].max_restarts: unknown key, ignored",
                           "step[0].wait.poll: unknown key, ignored", "step[0].note: unknown key, ignored",
                           "future: unknown key, ignored"]


@pytest.mark.parametrize("text, error", [
    ("[[process]]\nname='a'\nrole='parent'\nmodel='ixd'\n[[process]]\nname='a'\nrole='child'\ndriver='x'",
     "process[1].name: 'a' is used twice"),
    ("[[process]]\nname='broker'\nrole='parent'\nmodel='ixd'", "process[0].name: 'broker' is reserved"),
    ("[[process]]\nname='a'\nrole='boss'", "process[0].role: expected 'parent' or 'child', got 'boss'"),
    ("[[process]]\nname='a'\nrole='parent'", "process[0].model: required"),
    ("[[process]]\nname='a'\nrole='child'\ndriver=[]", "process[0].driver: expected a driver name or a list"),
    ("[[step]]\nwait={bound='d'}\nkill={process='x'}", "step[0]: one action per step, got wait, kill"),
    ("[[step]]\nwait={bound='d', device='e'}", "step[0].wait: give exactly one of"),
    ("[[step]]\nwait={bound='d', timeout=-1}", "step[0].wait.timeout: expected 0 < seconds <= 3600"),
    ("[[step]]\nwait={bound='d'}\nexpect={errno=0}", "step[0].expect: checks the result of a send"),
    ("[[step]]\nkill={process='ghost'}", "step[0].kill.process: no process named 'ghost'"),
    ("[[process]]\nname='a'\nrole='child'\ndriver='x'\n[[step]]\nkill={process='a', signal='USR9'}",
     "step[0].kill.signal: expected one of TERM, KILL, STOP, CONT"),
    ("[[step]]\nsend={device='d', event='E', from='both'}", "step[0].send.from: expected 'parent' or 'child'"),
    ("[[step]]\nsend={device='d', from='child'}", "step[0].send.event: required"),
    ("[[step]]\nsend={device='d', event='E', from='child', timeout='5'}", "step[0].send.timeout: expected float"),
    ("[[step]]\nexpect_uevent={dev='d'}", "step[0].expect_uevent.action: required"),
    ("[[step]]\nexpect_uevent={action='A', event='x'}", "step[0].expect_uevent.event: unknown key"),
    ("[[step]]\nname='nothing'", "step[0]: a step needs an action"),
    ("name = [", "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(text, error):
    with pytest.raises(AuxError) as exc:
        parse(text, "bad.toml")
    assert exc.value.name == "EINVAL"
    assert exc.value.message.startswith("bad.toml: ") and error in exc.value.message


def test_subset_matching_and_result_checks():
    assert subset_mismatch({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3}, "r") is None
    assert subset_mismatch({"a": {"b": 1}}, {"a": {"b": 2}}, "r") == "r.a.b: expected 1, got 2"
    assert subset_mismatch({"x": 1}, {"y": 1}, "r") == "r.x: missing (have y)"
    assert subset_mismatch({"errno": 22}, {"errno": -22}, "record") is None
    assert subset_mismatch({"l": [1, 2]}, {"l": (1, 2)}, "r") is None
    out = {"errno": -22, "error": "EINVAL", "message": "$.payload.addr: bad", "reply": None}
    assert ExpectResult(error="EINVAL", message_contains="$.payload.addr").check(out) == []
    assert ExpectResult(errno=-22).check(out) == [] and ExpectResult(errno=22).check(out) == []
    assert ExpectResult(errno=0).check(out) == ["expected errno 0, got EINVAL"]
    assert ExpectResult(reply={"a": 1}).check(out) == ["reply: expected a map, got None"]


def test_missing_file_is_enoent():
    with pytest.raises(AuxError, match="cannot read scenario /nonexistent.toml"):
        load("/nonexistent.toml")


# ---- running ---------------------------------------------------------------------------------

def gone(pid: int) -> bool:
    return process_start_time(pid) is None


@pytest.fixture
def fresh_dir():
    """``--runtime-dir`` for ``auxipc run``: new short dirs, removed after the test."""
    made = []

    def make() -> list[str]:
        made.append(tempfile.mkdtemp(prefix="axt-", dir="/tmp"))
        return ["--runtime-dir", made[-1]]
    yield make
    for d in made:
        assert not glob.glob(os.path.join(d, "*.sock")), f"sockets left in {d}"
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("example", ["model-a.toml", "crash.toml"])
def test_shipped_examples_pass(example):
    sc = load(EXAMPLES / example)
    assert sc.warnings == []
    seen = []
    report = run_scenario(sc, dir_prefix="axt-", on_step=seen.append)
    assert report["ok"], json.dumps(report, indent=1, default=str)
    assert [s["ok"] for s in report["steps"]] == [True] * len(sc.steps) == [s["ok"] for s in seen]
    assert report["passed"] == len(sc.steps) and report["failed"] == 0
    assert not os.path.exists(report["runtime_dir"])
    pids = [p["pid"] for p in report["setup"]["processes"]]
    assert len(pids) == 3 and all(gone(pid) for pid in pids)


FAILING = '''
name = "fails-on-purpose"
[[process]]
name = "ixd"
role = "parent"
model = "ixd"
[[process]]
name = "eth"
role = "child"
driver = "idpf_eth"
[[step]]
wait = { bound = "ixd.eth.0" }
[[step]]
name = "wrong expectation"
send = { device = "ixd.eth.0", event = "SET_MAC", from = "child", payload = { addr = "02:00:00:00:00:01" } }
expect = { error = "EINVAL" }
[[step]]
kill = { process = "eth", signal = "STOP" }
expect_uevent = { action = "BIND", dev = "nope.0", timeout = 0.2 }
[[step]]
kill = { process = "eth", signal = "CONT" }
'''


@pytest.mark.slow
def test_run_reports_pass_fail_with_the_trace_of_the_failing_step(tmp_path, fresh_dir):
    f = tmp_path / "failing.toml"
    f.write_text(FAILING)
    record = tmp_path / "all.jsonl"
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(f), "-q", "--record", str(record), *fresh_dir()])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"scenario fails-on-purpose: {f} (2 processes, 4 steps)"
    assert lines[1].startswith("PASS   1  wait bound ixd.eth.0 — ixd.eth.0 is added, bound to idpf_eth")
    assert lines[2].startswith("FAIL   2  wrong expectation: send SET_MAC on ixd.eth.0 from child — "
                               "expected error EINVAL, got 0")
    # The step's trace has the call; async events of the bind (the link state replayed to
    # the new driver) may land in it too, depending on timing.
    n = int(re.fullmatch(r"      trace during step 2 \((\d+) records\):", lines[3]).group(1))
    assert any("call   SET_MAC" in x and "child idpf_eth -> parent ixd" in x for x in lines[4:4 + n]), lines
    fail3 = next(x for x in lines if x.startswith("FAIL   3"))
    assert "no uevent BIND nope.0 within 0.2 s" in fail3
    assert any(x.startswith("PASS   4  kill eth (SIGCONT)") for x in lines)
    assert lines[-1].startswith("FAILED: 2/4 steps passed")
    assert any(json.loads(x)["kind"] == "call" for x in record.read_text().splitlines())

    r = runner.invoke(main, ["run", str(f), "-q", "--json", "-x", *fresh_dir()])
    assert r.exit_code == 1
    report = json.loads(r.output)
    assert (report["passed"], report["failed"], report["skipped"], report["ok"]) == (1, 1, 2, False)
    assert any(rec["kind"] == "call" and rec["event"] == "SET_MAC" for rec in report["steps"][1]["records"])


def test_run_invalid_file_is_a_usage_error_and_warnings_go_to_stderr(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[[step]]\nkill = { process = 'ghost' }\n")
    r = CliRunner().invoke(main, ["run", str(f)])
    assert r.exit_code == 2 and "step[0].kill.process: no process named 'ghost'" in r.output
    r = CliRunner().invoke(main, ["run", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1 and "cannot read scenario" in r.output


@pytest.mark.slow
def test_run_setup_failure_is_reported_and_cleaned_up(tmp_path, fresh_dir):
    f = tmp_path / "nostart.toml"
    f.write_text("[[process]]\nname='p'\nrole='parent'\nmodel='no.such.module:Model'\nfuture_key=1\n"
                 "[[step]]\nwait={bound='x'}\n")
    r = CliRunner().invoke(main, ["run", str(f), *fresh_dir()])
    assert r.exit_code == 1
    assert "FAIL  setup: " in r.output and "exited with" in r.output and "FAILED: 0/1 steps passed, 1 not run" in r.output
