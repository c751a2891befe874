"""``AuxBus``: the ``auxbus`` fixture's bus, a ``Harness`` whose broker is forked from
the zygote like its other processes, or (``AUXIPC_ZYGOTE=0``) started through
pytest-xprocess (the fixture itself is in ``auxipc.testing.pytest_plugin``).
"""

from __future__ import annotations

import os
import shutil
import signal as _signal
import sys
import time
from pathlib import Path
from typing import Callable

from auxipc.observe.trace import format_trace
from auxipc.procfs import cmdline, gone
from auxipc.runtime.contexts import ATOMIC_CPU_ENV
from auxipc.testing.contract import bugs_of
from auxipc.testing.harness import Harness
from proto import envelope as E
from proto.errno import AuxError

START_TIMEOUT = 15.0
STOP_GRACE = 3.0
BROKER_PREFIX = "auxipc-broker-"


def _broker_name() -> str:
    """One xprocess name per pytest process: concurrent sessions (xdist workers, two
    terminals in one checkout) never restart each other's broker."""
    return f"{BROKER_PREFIX}{os.getpid()}"


def _broker_starter(root: str, env: dict):
    from xprocess import ProcessStarter

    from auxipc.observe.client import Client
    from proto.errno import AuxError

    def ping() -> bool:
        try:
            with Client(root, timeout=1.0) as c:
                return c.query("ping")["pid"] > 0
        except AuxError:
            return False

    class BrokerStarter(ProcessStarter):
        args = [sys.executable, "-u", "-m", "auxipc", "broker", "--runtime-dir", root]
        pattern = r"auxipc broker ready"
        timeout = START_TIMEOUT
        max_read_lines = 500
        terminate_on_interrupt = True

        def startup_check(self):
            return ping()

        def get_lines(self, log_file):
            return ready_lines(log_file, self.control_dir, time.monotonic() + START_TIMEOUT,
                               lambda: f"auxipc broker exited before it was ready "
                                       f"(log: {self.control_dir}/xprocess.log)",
                               lambda: f"auxipc broker not ready within {START_TIMEOUT} s")

    BrokerStarter.env = env
    return BrokerStarter


def ready_lines(log_file, control_dir, deadline: float, exited: Callable[[], str], late: Callable[[], str]):
    """The lines of an xprocess log as they come, for a starter's ``get_lines``.
    xprocess's own reader polls every 0.1 s and, if the process dies before its ready
    line, waits out its whole timeout; this polls every 10 ms and raises RuntimeError
    (``exited()``) as soon as the process is gone, TimeoutError (``late()``) at ``deadline``."""
    pidfile = Path(str(control_dir)) / "xprocess.PID"
    while True:
        line = log_file.readline()
        if not line:
            if pidfile.exists() and gone(int(pidfile.read_text())):
                line = log_file.readline()
                if not line:
                    raise RuntimeError(exited())
            else:
                time.sleep(0.01)
        if time.monotonic() > deadline:
            raise TimeoutError(late())
        yield line


def _is_broker(pid: int, root: str | None = None) -> bool:
    """Whether ``pid`` is an auxipc broker (serving ``root``, when given: a pid reused
    by somebody else's broker is not ours to stop)."""
    argv = cmdline(pid)
    return "auxipc" in argv and "broker" in argv and (root is None or root in argv)


def _reap_stale(xprocess) -> None:
    """Brokers left by an earlier pytest that was killed before its teardown: stop them
    (only if the pid still is an auxipc broker) and forget them."""
    for d in Path(str(xprocess.rootdir)).glob(BROKER_PREFIX + "*"):
        owner = d.name[len(BROKER_PREFIX):]
        if not owner.isdigit() or int(owner) == os.getpid() or not gone(int(owner)):
            continue
        info = xprocess.getinfo(d.name)
        try:
            root = (d / "runtime_dir").read_text().strip()
        except OSError:
            root = None
        if info.pid and root and _is_broker(info.pid, root):
            info.terminate(timeout=STOP_GRACE)
        shutil.rmtree(d, ignore_errors=True)


class AuxBus(Harness):
    """A broker in a private runtime dir, the processes a test starts on it, and its trace:
    a ``Harness`` whose broker is started through pytest-xprocess."""

    def __init__(self, xprocess, request, allowed: set[str] = frozenset(), keep: bool = False):
        """``xprocess``: pytest-xprocess's fixture, or None without pytest's cache provider;
        ``allowed``: kinds of contract bug the test allows; ``keep``: leave the runtime and
        log dirs in place."""
        super().__init__(prefix="axt-", grace=STOP_GRACE)
        self.xprocess = xprocess
        self.request = request
        self.allowed = set(allowed)
        self.keep = keep
        self.contract_bugs: list[dict] = []     # found at teardown, not allowed
        self.sections: list[tuple[str, str]] = []   # the report's, kept when teardown found a problem

    def bugs(self) -> list[dict]:
        """The contract bugs the bus saw so far (``auxipc.testing.contract``), allowed or not."""
        return bugs_of(self._client().query("bugs"))

    def bus_problems(self) -> list[str]:
        """Asked once every peer has stopped: the contract bugs not allowed by the test's
        ``auxbus_allow`` marker are kept in ``contract_bugs`` (the fixture fails on them);
        nothing to add to the teardown problems."""
        try:
            found = self.bugs()
        except Exception:   # noqa: BLE001 — the broker went away meanwhile: nothing to ask
            return []
        self.contract_bugs = [b for b in found if b.get("kind") not in self.allowed]
        return []

    def warnings(self) -> list[dict]:
        """What the bus reported that the kernel would warn about (``ls`` ``warnings``)."""
        return self.ls().get("warnings", [])

    # ---- what a failure report shows ----

    def report_sections(self) -> list[tuple[str, str]]:
        """(title, text): each process's log and the test's trace, rendered one record a line."""
        self.drain()
        trace = "\n".join(format_trace(r) for r in self.records) or "(no records)"
        return [*self.log_sections(), (f"auxbus trace ({len(self.records)} records)", trace)]

    def log_sections(self, limit: int = 64 * 1024) -> list[tuple[str, str]]:
        """``Harness.log_sections``, with the broker's xprocess log when xprocess started it."""
        sections = super().log_sections(limit)
        if self.broker_proc is None and self.xprocess is not None:
            path = Path(str(self.xprocess.getinfo(_broker_name()).logpath))
            try:
                text = path.read_bytes()[-limit:].decode(errors="replace")
            except OSError:
                text = "(no log)"
            sections.insert(0, (f"auxbus log: broker (pid {self.broker_pid}, through xprocess)", text))
        return sections

    def stop_all(self, grace: float | None = None) -> list[str]:
        self.drain()     # the test's trace, for a failure report, before the watcher closes
        return super().stop_all(grace)

    def before_remove(self, problems: list[str]) -> None:
        if problems or self.contract_bugs:
            self.sections = self.report_sections()

    # ---- environment ----

    def proc_env(self) -> dict:
        """PYTHONUNBUFFERED, AUXIPC_RUNTIME_DIR, AUXIPC_ATOMIC_CPU, and a PYTHONPATH with the test's dir and
        the rootdir, so ``module:Class`` of the user's own models and drivers imports."""
        paths = [str(Path(str(self.request.path)).parent), str(self.request.config.rootpath)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        # an atomic handler's overrun fails a test only if it spent the time on the CPU
        return {**super().proc_env(), "PYTHONPATH": os.pathsep.join(paths), ATOMIC_CPU_ENV: "1"}

    def env(self) -> dict:
        return {**os.environ, **self.proc_env()}

    # ---- the broker, through xprocess ----

    def start(self, *args, **kwargs):     # type: ignore[override]
        """With no arguments: start the broker (xprocess) and connect; else ``Harness.start``."""
        if args or kwargs:
            return super().start(*args, **kwargs)
        from auxipc.process import zygote
        if self.xprocess is None or zygote.usable(["broker", "--runtime-dir", self.root], self.env()):
            # forked from the zygote like every other process of the test: ~40 ms instead of an
            # interpreter start; its PR_SET_PDEATHSIG chain stops it if pytest is killed
            super().broker()
            return None
        _reap_stale(self.xprocess)
        info = self.xprocess.getinfo(_broker_name())
        if info.pidpath.check() and not (info.pid and _is_broker(info.pid)):
            info.pidpath.remove()    # a pid reused by another process: never let xprocess signal it
        try:
            self.broker_pid, _ = self.xprocess.ensure(_broker_name(), _broker_starter(self.root, self.env()),
                                                      restart=True)
        except BaseException:
            self.stop_broker()
            raise
        (Path(str(info.controldir)) / "runtime_dir").write_text(self.root)
        self.connect()
        return None

    def broker_alive(self) -> bool:
        if self.broker_proc is not None:
            return super().broker_alive()
        return bool(self.broker_pid) and not gone(self.broker_pid)

    def stop_broker(self) -> int | None:
        """SIGTERM the broker (SIGKILL after the grace period) and reap it; its exit code."""
        if self.broker_proc is not None:
            return super().stop_broker()
        import subprocess
        info = self.xprocess.getinfo(_broker_name())
        popen = next((r.popen for r in reversed(self.xprocess.resources)
                      if getattr(r, "popen", None) is not None and r.popen.pid == info.pid), None)
        code = None
        if popen is not None:
            if popen.poll() is None:
                popen.send_signal(_signal.SIGCONT)
                popen.terminate()
                try:
                    popen.wait(STOP_GRACE + 2)
                except subprocess.TimeoutExpired:
                    popen.kill()
            code = popen.wait()
        elif info.pid and not gone(info.pid):
            info.terminate(timeout=STOP_GRACE + 2)
        if info.pidpath.check():
            info.pidpath.remove()
        return code

    # ---- what only the fixture offers ----

    def wait(self, condition: str, name: str | None = None, timeout: float = 10.0) -> str:
        """Block until a condition of ``auxipc wait`` holds (``bound``, ``peer``, ``device``, ...)."""
        from auxipc.observe import conditions
        what, _ = conditions.wait(condition, name, timeout, self.root, client=self.client)
        return what

    def wait_bound(self, device: str, timeout: float = 10.0) -> str:
        return self.wait("bound", device, timeout)

    def parent(self, *args, **kwargs) -> Peer:        # type: ignore[override]
        """``Harness.parent``, as a ``Peer`` handle (its journal and devices' data readable)."""
        return Peer(self, super().parent(*args, **kwargs))

    def child(self, *args, **kwargs) -> Peer:         # type: ignore[override]
        """``Harness.child``, as a ``Peer`` handle (its journal and devices' data readable)."""
        return Peer(self, super().child(*args, **kwargs))

    def inspect(self, proc, last: int = 1000) -> dict:
        """Ask a process, through the broker, for its journal and its devices' ``data``:
        ``{peer, pid, records, devices}``; ENODEV naming the live peers if it is not one."""
        proc = self.find(proc.proc if isinstance(proc, Peer) else proc)
        result, frame = self._client().ctl("inspect", peer=str(proc.pid), last=last)
        if result.e:
            raise AuxError(result.e, f"inspect {proc.name}: {result.m}")
        return E.decode_payload_frame(frame, "$.inspect")


class Peer:
    """A process the fixture started (``auxbus.parent(...)``, ``auxbus.child(...)``): the
    ``Proc`` (``pid``, ``alive()``, ``signal()``, ... pass through) and what the test may
    read of the process, asked of it through the bus each time (a real round trip):
    ``records`` (its journal: ``auxipc.runtime.journal``) and ``devices`` (each bound or
    owned device's ``adev.data``, by device name; ``data(name)`` for one)."""

    def __init__(self, bus: AuxBus, proc):
        self.bus, self.proc = bus, proc

    def __getattr__(self, name: str):
        return getattr(self.proc, name)

    @property
    def records(self) -> list[dict]:
        return self.bus.inspect(self.proc)["records"]

    @property
    def devices(self) -> dict[str, dict]:
        return self.bus.inspect(self.proc, last=0)["devices"]

    def data(self, device: str) -> dict:
        """``adev.data`` of one device of this process; KeyError naming the ones it has."""
        devices = self.devices
        if device not in devices:
            raise KeyError(f"{self.proc.name} has no device {device!r} (it has: {', '.join(devices) or 'none'})")
        return devices[device]

    def wait_record(self, what: str, timeout: float = 10.0, **fields) -> dict:
        """The first journal record ``what`` whose fields include ``fields``, asked again
        until it is there; AssertionError after ``timeout`` with what the journal holds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records
            for rec in records:
                if rec.get("what") == what and all(rec.get(k) == v for k, v in fields.items()):
                    return rec
            if time.monotonic() > deadline:
                seen = "\n".join(f"  {r}" for r in records[-20:]) or "  (nothing)"
                raise AssertionError(f"{self.proc.name}: no journal record {what!r} {fields or ''} within "
                                     f"{timeout:g} s; its last records:\n{seen}")
            time.sleep(0.01)

    def __repr__(self) -> str:
        return f"<auxbus.Peer {self.proc.name} pid {self.proc.pid}>"
