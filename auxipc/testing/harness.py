"""One bus harness: what the demos, the scenario runner, the soak, the pytest plugin
and the project's own tests all need around a bus.

A ``Harness`` owns a runtime dir (a fresh short one under /tmp unless given), a log
dir, the broker and every process started on it (``python -m auxipc ...``, forked
from the zygote of ``auxipc.process.zygote`` unless AUXIPC_ZYGOTE=0; each
waited for by its ready line), a ``Watcher`` subscribed before any peer starts and
a ``Client``. Every record the watcher delivers goes through one place: annotated
with who sent it to whom (``Lifelines``), kept in ``records``, written to the
``record`` file as JSON lines and passed to ``on_record``. ``expect`` finds a
record by its fields; ``until`` waits for records by predicates.

``close()`` stops every process in reverse start order (SIGCONT first, so a
stopped one can die; SIGTERM; SIGKILL after the grace period; always reaped),
removes what the harness created and returns what was left behind, as one line
each: a caller turns a non-empty list into its own failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from typing import Callable

from auxipc.observe.client import Client
from auxipc.observe.trace import Lifelines, dumps, format_trace
from auxipc.observe.watch import Watcher
from auxipc.process.launch import Proc
from auxipc.testing.scenario import subset_mismatch
from proto.errno import AuxError, Errno
from proto.events import CATALOG, Direction

START_TIMEOUT = 15.0
STOP_GRACE = 3.0


class Harness:
    """A broker in a runtime dir of its own, the processes started on it, and its trace."""

    def __init__(self, runtime_dir: str | None = None, *, prefix: str = "axh-", env: dict | None = None,
                 record: str | None = None, on_record: Callable[[dict], None] | None = None,
                 grace: float = STOP_GRACE):
        self.own_dir = runtime_dir is None
        self.root = runtime_dir or tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.runtime_dir = self.root
        self.logs = tempfile.mkdtemp(prefix=prefix + "logs-", dir="/tmp")
        self.extra_env = dict(env or {})
        self.grace = grace
        self.keep = False                       # close() leaves the runtime and log dirs in place
        self.procs: list[Proc] = []             # in start order; a restarted process appears again
        self.broker_proc: Proc | None = None
        self.broker_pid: int | None = None
        self.broker_code: int | None = None     # its exit code, once stopped
        self.client: Client | None = None
        self.watcher: Watcher | None = None
        self.records: list[dict] = []
        self.on_record = on_record
        self._rec_file = open(record, "w", encoding="utf-8") if record else None
        self._lifelines = Lifelines()
        self._matched: set[int] = set()
        self._mark = 0
        self._n = 0

    # ---- processes ----

    def proc_env(self) -> dict:
        """What every process started here gets on top of this process's environment."""
        return {"PYTHONUNBUFFERED": "1", "AUXIPC_RUNTIME_DIR": self.root, **self.extra_env}

    def start(self, name: str, *argv: str, env: dict | None = None, timeout: float = START_TIMEOUT,
              **launch) -> Proc:
        """Start ``auxipc ARGV --runtime-dir ROOT`` as ``name``; returns it once it printed its ready line.
        ``launch``: ``wrap``, ``py_args``, ``cwd`` of ``auxipc.process.launch.Proc``."""
        self._n += 1
        proc = Proc(name, [*argv, "--runtime-dir", self.root], env={**self.proc_env(), **(env or {})},
                    log_dir=self.logs, **launch)
        proc.log_path = os.path.join(self.logs, f"{self._n:02d}-{name.replace('/', '_')}.log")
        self.procs.append(proc)
        proc.start(ready_timeout=timeout)
        return proc

    def broker(self, *args: str, timeout: float = START_TIMEOUT, connect: bool = True, **launch) -> Proc:
        """Start the broker (again, after a crash), then (``connect``) the watcher and client if not
        open yet. The broker is stopped last at teardown, whatever was started after it."""
        self.broker_proc = self.start("broker", "broker", *args, timeout=timeout, **launch)
        self.broker_pid = self.broker_proc.pid
        if connect:
            self.connect()
        return self.broker_proc

    def connect(self) -> None:
        """Subscribe the watcher and open the client (once a broker answers)."""
        if self.watcher is None:
            self.watcher = Watcher(self.root)
        if self.client is None:
            self.client = Client(self.root)

    def parent(self, model: str = "ixd", *, devices: int | None = None, env: dict | None = None,
               timeout: float = START_TIMEOUT) -> Proc:
        """Start ``auxipc parent --model MODEL`` (a built-in name or ``module:Class``)."""
        argv = ["parent", "--model", model] + (["--devices", str(devices)] if devices is not None else [])
        return self.start(f"parent-{model}", *argv, env=env, timeout=timeout)

    def child(self, *drivers: str, env: dict | None = None, timeout: float = START_TIMEOUT) -> Proc:
        """Start ``auxipc child`` with these drivers (built-in names or ``module:Class``)."""
        drivers = drivers or ("idpf_eth",)
        return self.start(f"child-{'+'.join(drivers)}", "child", *(x for d in drivers for x in ("--driver", d)),
                          env=env, timeout=timeout)

    def find(self, proc: Proc | str) -> Proc:
        """A process by its name or the part after its role (``idpf_eth`` for ``child-idpf_eth``); the latest."""
        if not isinstance(proc, str):
            return proc
        found = [p for p in self.procs if p.name == proc or p.name.split("-", 1)[-1] == proc]
        if not found:
            raise LookupError(f"no process {proc!r} (started: {', '.join(p.name for p in self.procs) or 'none'})")
        return found[-1]

    def kill(self, proc: Proc | str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to a process: fault injection."""
        self.find(proc).signal(sig)

    def stop(self, proc: Proc | str, grace: float | None = None) -> int | None:
        """Stop a process cleanly (SIGCONT, SIGTERM, SIGKILL after ``grace``); its exit code."""
        proc = self.find(proc)
        proc.signal(signal.SIGCONT)
        return proc.stop(self.grace if grace is None else grace)

    # ---- the bus ----

    def _client(self) -> Client:
        if self.client is None:
            raise AuxError(Errno.ENOTCONN, f"no client on {self.root}: start the broker first (broker() or connect())")
        return self.client

    def _watcher(self) -> Watcher:
        if self.watcher is None:
            raise AuxError(Errno.ENOTCONN, f"no watcher on {self.root}: start the broker first (broker() or connect())")
        return self.watcher

    def ls(self) -> dict:
        return self._client().query("ls")

    def uevents(self, since: int = 0) -> list[dict]:
        """The bus notifications the broker kept (seq > since)."""
        return self._client().query("uevents", since=since)["events"]

    def send(self, device: str, event: str, payload: dict | None = None, *, side: str | None = None,
             timeout: float = 5.0) -> dict:
        """Send ``event`` on ``device`` through the parent's or child's runtime; {errno, error, message, reply}.

        ``side`` ('parent' or 'child') defaults to the side the event's direction allows."""
        spec = CATALOG.lookup(event)
        if side is None:
            if spec.direction is Direction.BOTH:
                raise ValueError(f"{spec.name} goes both ways: pass side='parent' or side='child'")
            side = "parent" if spec.direction is Direction.TO_CHILD else "child"
        return self._client().send_event(device, spec.name, side, payload or {}, timeout)

    # ---- the trace ----

    def add(self, rec: dict) -> dict:
        """The one place a record enters: annotated, kept, written, shown."""
        self._lifelines.annotate(rec)
        self.records.append(rec)
        if self._rec_file is not None:
            self._rec_file.write(dumps(rec) + "\n")
            self._rec_file.flush()
        if self.on_record is not None:
            self.on_record(rec)
        return rec

    def drain(self, wait: float = 0.0) -> None:
        """Take every record already published (waiting up to ``wait`` s for more)."""
        deadline = time.monotonic() + wait
        while self.watcher is not None:
            rec = self.watcher.next(max(0.0, deadline - time.monotonic()))
            if rec is None:
                return
            self.add(rec)

    def next(self, timeout: float) -> dict | None:
        """The next record (taken as ``drain`` does), or None after ``timeout``."""
        rec = self._watcher().next(timeout)
        return None if rec is None else self.add(rec)

    def until(self, *preds: Callable[[dict], bool], timeout: float = 10.0) -> list[dict]:
        """Take records until each predicate has matched one, in any order; ETIMEDOUT naming what was missing."""
        return self._watcher().until(*preds, timeout=timeout, on_record=self.add)

    def trace(self) -> list[dict]:
        """Every record so far: bus notifications, sync calls, async events (each with src/dst)."""
        self.drain()
        return list(self.records)

    def mark(self) -> int:
        """Ignore everything seen so far in later ``expect``/``expect_uevent`` calls."""
        self.drain()
        self._mark = len(self.records)
        return self._mark

    def expect(self, timeout: float = 5.0, **fields) -> dict:
        """The first record after the mark, not returned by an earlier expect, whose fields
        include ``fields`` (``kind='call', event='SET_MAC', errno=0``); waits up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            for i in range(self._mark, len(self.records)):
                if i not in self._matched and subset_mismatch(fields, self.records[i], "record") is None:
                    self._matched.add(i)
                    return self.records[i]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join("  " + format_trace(r) for r in self.records[self._mark:]) or "  (nothing)"
                raise AssertionError(f"no record {fields} within {timeout:g} s; seen since the mark:\n{seen}")
            self.drain(min(remaining, 0.1))

    def expect_uevent(self, action: str, dev: str | None = None, timeout: float = 5.0, **detail) -> dict:
        """A bus notification ``action`` (of ``dev``, with ``detail`` as a subset); see ``expect``."""
        fields: dict = {"kind": "bus", "action": action}
        if dev is not None:
            fields["dev"] = dev
        if detail:
            fields["detail"] = detail
        return self.expect(timeout, **fields)

    # ---- teardown ----

    def log_sections(self, limit: int = 64 * 1024) -> list[tuple[str, str]]:
        """(title, text) of every process's log, the last ``limit`` bytes each."""
        out = []
        for p in self.procs:
            try:
                with open(p.log_path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - limit))
                    text = f.read().decode(errors="replace")
            except OSError:
                text = "(no log)"
            out.append((f"auxbus log: {p.name} (pid {p.pid})", text))
        return out

    def logs_tail(self) -> str:
        """The last lines of every process's log, one line each (for a failure report)."""
        return "\n".join(f"  {p.name} log: {p.tail()}" for p in self.procs)

    def broker_alive(self) -> bool:
        return self.broker_proc is not None and self.broker_proc.alive()

    def stop_broker(self) -> int | None:
        """Stop the broker (SIGTERM, SIGKILL after the grace period, reaped); its exit code."""
        return self.broker_proc.stop(self.grace) if self.broker_proc is not None else None

    def stop_all(self, grace: float | None = None) -> list[str]:
        """Close the watcher, stop every process (newest first), ask the bus what it
        reported (``bus_problems``), close the client and stop the broker last; what is
        still running, and what the bus reported."""
        if self.watcher is not None:
            try:
                self.watcher.close()
            except Exception:   # noqa: BLE001 — teardown goes on whatever happened
                pass
        self.watcher = None
        if grace is None:
            # with the broker gone (the test killed it) no process can exit cleanly: do not wait long
            grace = self.grace if self.broker_alive() else 0.5
        for proc in reversed(self.procs):
            try:
                proc.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            if proc is not self.broker_proc:
                proc.stop(grace)
        reported = self.bus_problems() if self.broker_alive() else []
        if self.client is not None:
            try:
                self.client.close()
            except Exception:   # noqa: BLE001 — teardown goes on whatever happened
                pass
        self.client = None
        self.broker_code = self.stop_broker()
        left = [f"{p.name} (pid {p.pid})" for p in self.procs if p.popen is not None and p.popen.poll() is None]
        problems = [f"processes left behind: {', '.join(left)}"] if left else []
        problems += reported
        if self.broker_alive():
            problems.append(f"broker (pid {self.broker_pid}) left behind")
        return problems

    def bus_problems(self) -> list[str]:
        """What the bus reported that should fail the run, asked once every peer has
        stopped (a parent's clean exit is when devices it left behind are reported).
        None here; the ``auxbus`` fixture fails a test on the lifetime bugs (auxbus.py)."""
        return []

    def close(self) -> list[str]:
        """Stop everything and remove what this harness made; what was left behind (empty: nothing)."""
        problems = self.stop_all()
        socks = sorted(n for n in os.listdir(self.root) if n.endswith(".sock")) if os.path.isdir(self.root) else []
        if socks and self.broker_code == 0:
            problems.append(f"the broker exited but left sockets in {self.root}: {socks}")
        if self._rec_file is not None:
            self._rec_file.close()
            self._rec_file = None
        self.before_remove(problems)
        if not self.keep:
            shutil.rmtree(self.logs, ignore_errors=True)
            if self.own_dir:
                shutil.rmtree(self.root, ignore_errors=True)
        return problems

    def before_remove(self, problems: list[str]) -> None:
        """Runs once every process stopped, before the logs and runtime dir are removed."""

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        problems = self.close()
        if problems and exc[0] is None:
            raise AuxError(Errno.EBUSY, "; ".join(problems))
