"""Run a scenario (``auxipc run``): a broker and the processes in a fresh runtime
dir, then each step, checked against what the bus answers and publishes.

The trace (a ``Watcher`` started before any peer) is read on this thread: each
step remembers where the trace stood when it began, so its expectations match
only what happened during the step and a failing step reports exactly those
records. Every process is stopped at the end (SIGCONT first, then SIGTERM and
SIGKILL after a grace period), whatever happened.
"""

from __future__ import annotations

import signal
import time
from typing import Callable

from auxipc.faults import SIGNALS
from auxipc.observe import conditions
from auxipc.observe.trace import dumps
from auxipc.process.launch import Proc
from auxipc.testing.harness import Harness
from auxipc.testing.scenario import ExpectRecord, Scenario, SendSpec, SignalSpec, StartSpec, Step, StopSpec, WaitSpec
from proto.errno import AuxError, Errno
from proto.events import CATALOG

STOP_GRACE = 3.0


class Runner:
    def __init__(self, scenario: Scenario, runtime_dir: str | None = None,
                 progress: Callable[[str], None] | None = None, fail_fast: bool = False,
                 record: str | None = None, on_step: Callable[[dict], None] | None = None,
                 dir_prefix: str = "auxipc-run-"):
        self.sc = scenario
        self.runtime_dir = runtime_dir
        self.dir_prefix = dir_prefix
        self.say = progress or (lambda text: None)
        self.fail_fast = fail_fast
        self.record_path = record
        self.on_step = on_step or (lambda res: None)
        self.procs: dict[str, Proc] = {}
        self.argv: dict[str, list[str]] = {}
        self.h: Harness | None = None
        self.root: str | None = runtime_dir
        self._last_send: dict | None = None
        self.t0 = time.monotonic()

    @property
    def records(self) -> list[dict]:
        return self.h.records if self.h is not None else []

    # ---- processes ----

    def _start(self, name: str, argv: list[str], timeout: float = 15.0) -> Proc:
        proc = self.h.start(name, *argv, timeout=timeout)
        self.procs[name] = proc
        return proc

    def setup(self) -> dict:
        self.h = Harness(self.runtime_dir, prefix=self.dir_prefix, record=self.record_path, grace=STOP_GRACE)
        self.root = self.h.root
        total = len(self.sc.processes) + 1
        started = []
        t = time.monotonic()
        self.procs["broker"] = self.h.broker()
        self.say(f"started broker [1/{total}] (pid {self.procs['broker'].pid}) in {time.monotonic() - t:.2f} s")
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
        if self.h is not None:
            self.h.close()

    # ---- the trace ----

    def drain(self, linger: float = 0.0) -> None:
        """Read every record already published (waiting up to ``linger`` s for more)."""
        if self.h is not None:
            self.h.drain(linger)

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
            self.h.next(max(0.0, min(wait, 0.1)))

    # ---- steps ----

    def _act(self, action) -> tuple[list[str], str]:
        """Do the step's action; (problems, detail)."""
        if isinstance(action, WaitSpec):
            try:
                what, took = conditions.wait(action.cond, action.arg, action.timeout, self.root, client=self.h.client)
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
            out = self.h.send(action.device, spec.name, action.payload, side=action.side, timeout=action.timeout)
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
