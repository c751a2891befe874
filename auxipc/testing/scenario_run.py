"""Run a scenario (``auxipc run``): a broker and the processes in a fresh runtime
dir, then each step, checked against what the bus answers and publishes.

The trace (a ``Watcher`` started before any peer) is read on this thread: each
step remembers where the trace stood when it began, so its expectations match
only what happened during the step and a failing step reports exactly those
records. Every process is stopped at the end (SIGCONT first, then SIGTERM and
SIGKILL after a grace period), whatever happened.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from typing import Callable

from auxipc.observe import conditions
from auxipc.observe.client import Client
from auxipc.observe.trace import Lifelines, dumps
from auxipc.observe.watch import Watcher
from auxipc.process.launch import Proc
from auxipc.testing.scenario import SIGNALS, ExpectRecord, Scenario, SendSpec, SignalSpec, StartSpec, Step, StopSpec, WaitSpec
from proto.errno import AuxError, Errno
from proto.events import CATALOG

STOP_GRACE = 3.0


class Runner:
    def __init__(self, scenario: Scenario, runtime_dir: str | None = None,
                 progress: Callable[[str], None] | None = None, fail_fast: bool = False,
                 record: str | None = None, on_step: Callable[[dict], None] | None = None,
                 dir_prefix: str = "auxipc-run-"):
        self.sc = scenario
        self.own_dir = runtime_dir is None
        self.root = runtime_dir
        self.dir_prefix = dir_prefix
        self.say = progress or (lambda text: None)
        self.fail_fast = fail_fast
        self.record_path = record
        self.on_step = on_step or (lambda res: None)
        self.procs: dict[str, Proc] = {}
        self.argv: dict[str, list[str]] = {}
        self.records: list[dict] = []
        self.lifelines = Lifelines()
        self.watch: Watcher | None = None
        self.client: Client | None = None
        self._rec_file = None
        self._last_send: dict | None = None
        self.logs: str | None = None
        self.t0 = time.monotonic()

    # ---- processes ----

    def _start(self, name: str, argv: list[str], timeout: float = 15.0) -> Proc:
        proc = Proc(name, [*argv, "--runtime-dir", self.root], log_dir=self.logs)
        self.procs[name] = proc
        proc.start(ready_timeout=timeout)
        return proc

    def setup(self) -> dict:
        if self.own_dir:
            self.root = tempfile.mkdtemp(prefix=self.dir_prefix, dir="/tmp")
        self.logs = tempfile.mkdtemp(prefix=self.dir_prefix + "logs-", dir="/tmp")
        if self.record_path:
            self._rec_file = open(self.record_path, "w", encoding="utf-8")
        total = len(self.sc.processes) + 1
        started = []
        t = time.monotonic()
        self._start("broker", ["broker"])
        self.say(f"started broker [1/{total}] (pid {self.procs['broker'].pid}) in {time.monotonic() - t:.2f} s")
        self.watch = Watcher(self.root)
        self.client = Client(self.root)
        started.append({"name": "broker", "pid": self.procs["broker"].pid})
        for i, spec in enumerate(self.sc.processes, 2):
            t = time.monotonic()
            self.argv[spec.name] = spec.argv()
            proc = self._start(spec.name, self.argv[spec.name])
            self.say(f"started {spec.name} [{i}/{total}] (pid {proc.pid}) in {time.monotonic() - t:.2f} s: "
                     f"{proc.ready_line}")
            started.append({"name": spec.name, "pid": proc.pid, "ready": proc.ready_line})
        self.drain()
        return {"ok": True, "processes": started}

    def teardown(self) -> None:
        for closer in (self.watch, self.client):
            if closer is not None:
                try:
                    closer.close()
                except Exception:   # noqa: BLE001 — teardown goes on whatever happened
                    pass
        self.watch = self.client = None
        for proc in reversed(list(self.procs.values())):
            try:
                proc.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            proc.stop(grace=STOP_GRACE)
        if self._rec_file is not None:
            self._rec_file.close()
        if self.logs:
            shutil.rmtree(self.logs, ignore_errors=True)
        if self.own_dir and self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- the trace ----

    def _add(self, rec: dict) -> None:
        self.lifelines.annotate(rec)
        self.records.append(rec)
        if self._rec_file is not None:
            self._rec_file.write(dumps(rec) + "\n")
            self._rec_file.flush()

    def drain(self, linger: float = 0.0) -> None:
        """Read every record already published (waiting up to ``linger`` s for more)."""
        deadline = time.monotonic() + linger
        while self.watch is not None:
            rec = self.watch.next(max(0.0, deadline - time.monotonic()))
            if rec is None:
                return
            self._add(rec)

    def expect_records(self, expects: list[ExpectRecord], start: int) -> list[str]:
        """Wait for a distinct record (since ``start``) per expectation; what was not seen."""
        t0 = time.monotonic()
        found: dict[int, int] = {}
        while True:
            for i, e in enumerate(expects):
                if i in found:
                    continue
                for j in range(start, len(self.records)):
                    if j not in found.values() and e.matches(self.records[j]):
                        found[i] = j
                        break
            now = time.monotonic()
            pending = [i for i in range(len(expects)) if i not in found]
            open_ = [i for i in pending if now - t0 < expects[i].timeout]
            if not open_:
                return [f"no {expects[i].describe()} within {expects[i].timeout:g} s" for i in pending]
            wait = min(t0 + expects[i].timeout for i in open_) - now
            rec = self.watch.next(max(0.0, min(wait, 0.1)))
            if rec is not None:
                self._add(rec)

    # ---- steps ----

    def _act(self, action) -> tuple[list[str], str]:
        """Do the step's action; (problems, detail)."""
        if isinstance(action, WaitSpec):
            try:
                what, took = conditions.wait(action.cond, action.arg, action.timeout, self.root, client=self.client)
            except AuxError as exc:
                if exc.errno != Errno.ETIMEDOUT:
                    raise
                return [exc.message], ""
            return [], f"{what} after {took:.2f} s"
        if isinstance(action, SendSpec):
            try:
                spec = CATALOG.lookup(action.event)
            except AuxError as exc:
                return [f"unknown event: {exc.message}"], ""
            out = self.client.send_event(action.device, spec.name, action.side, action.payload, action.timeout)
            self._last_send = out
            if out["errno"]:
                detail = f"{out['error']} ({out['errno']}): {out['message']}"
            else:
                detail = "ok" + (f", reply {dumps(out['reply'])}" if out["reply"] else "")
            return [], detail
        if isinstance(action, SignalSpec):
            proc = self.procs[action.process]
            if not proc.alive():
                return [f"{action.process} is not running"], ""
            proc.signal(SIGNALS[action.signal])
            return [], f"sent SIG{action.signal} to {action.process} (pid {proc.pid})"
        if isinstance(action, StopSpec):
            proc = self.procs[action.process]
            if not proc.alive():
                return [f"{action.process} is not running"], ""
            proc.signal(signal.SIGCONT)
            code = proc.stop(grace=action.timeout)
            return ([] if code == 0 else [f"{action.process} exited with {code} (expected 0)"]), \
                f"{action.process} exited with {code}"
        if isinstance(action, StartSpec):
            old = self.procs[action.process]
            if old.alive():
                return [f"{action.process} is still running (pid {old.pid}); stop or kill it first"], ""
            old.stop(grace=STOP_GRACE)   # reap it
            proc = self._start(action.process, self.argv[action.process], action.timeout)
            return [], f"{action.process} (pid {proc.pid}): {proc.ready_line}"
        return [], ""

    def run_step(self, step: Step) -> dict:
        self.drain()
        start = len(self.records)
        t = time.monotonic()
        self._last_send = None
        try:
            problems, detail = self._act(step.action)
        except AuxError as exc:
            problems, detail = [str(exc)], ""
        if step.expect is not None and self._last_send is not None:
            problems += step.expect.check(self._last_send)
        if step.records:
            self.drain()
            problems += self.expect_records(step.records, start)
        self.drain(0.05 if problems else 0.0)
        res = {"index": step.index, "name": step.name, "description": step.describe(), "ok": not problems,
               "detail": "; ".join(problems) if problems else detail, "seconds": round(time.monotonic() - t, 3)}
        if problems:
            res["records"] = self.records[start:]
        return res

    def run(self) -> dict:
        report = {"scenario": self.sc.name, "file": self.sc.path, "warnings": list(self.sc.warnings),
                  "steps": [], "ok": False}
        try:
            try:
                report["setup"] = self.setup()
            except AuxError as exc:
                report["setup"] = {"ok": False, "error": str(exc)}
                return self._finish(report)
            report["runtime_dir"] = self.root
            for step in self.sc.steps:
                res = self.run_step(step)
                report["steps"].append(res)
                self.on_step(res)
                if not res["ok"] and self.fail_fast:
                    break
            return self._finish(report)
        finally:
            self.teardown()

    def _finish(self, report: dict) -> dict:
        steps = report["steps"]
        report["passed"] = sum(1 for s in steps if s["ok"])
        report["failed"] = sum(1 for s in steps if not s["ok"])
        report["skipped"] = len(self.sc.steps) - len(steps)
        report["ok"] = report["setup"].get("ok", False) and report["failed"] == 0 and not report["skipped"]
        report["seconds"] = round(time.monotonic() - self.t0, 3)
        report["records"] = len(self.records)
        return report


def run_scenario(scenario: Scenario, **kw) -> dict:
    """Run ``scenario``; the report: {ok, passed, failed, skipped, steps: [{index, ok, detail, records?}], ...}."""
    return Runner(scenario, **kw).run()
