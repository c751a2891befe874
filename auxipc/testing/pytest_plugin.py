"""The ``auxbus`` pytest fixture: a private auxipc bus per test, across real processes.

Installed with auxipc (entry point ``pytest11``); needs pytest-xprocess
(``pip install 'auxipc[pytest]'``). ::

    def test_my_driver_binds(auxbus):
        auxbus.parent("ixd")                     # or "mypkg.models:MyParent"
        auxbus.child("mypkg.drivers:MyEth")      # importable from the test's dir or rootdir
        auxbus.wait("bound", "ixd.eth.0")
        out = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})
        assert out["errno"] == 0 and out["reply"]["filter_id"] == 0
        auxbus.kill("idpf_eth")                  # SIGKILL: fault injection
        auxbus.expect_uevent("UNBIND", dev="ixd.eth.0")

The broker is started through pytest-xprocess (``ensure(..., restart=True)``,
one name per pytest process; a broker left by an earlier pytest that was killed
before its teardown is stopped first) in a short runtime dir under /tmp, waited
for by its ready line and a real ping. A ``Watcher`` is
subscribed before any other process starts, so ``trace()`` holds every bus
notification, sync call and async event of the test. Teardown stops every
process (children and parents first, SIGCONT then SIGTERM, SIGKILL after a
grace period), then the broker, removes the runtime dir and fails the test if a
process or socket was left behind — also when the test failed or timed out.
"""

from __future__ import annotations

import os
import shutil
import signal as _signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

START_TIMEOUT = 15.0
STOP_GRACE = 3.0
BROKER_PREFIX = "auxipc-broker-"


# WARN kinds that fail the test at teardown: a parent left devices on the bus.
LIFETIME_BUGS = ("devices_outlive_parent", "uninit_missing")


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
            if pidfile.exists() and process_gone(int(pidfile.read_text())):
                line = log_file.readline()
                if not line:
                    raise RuntimeError(exited())
            else:
                time.sleep(0.01)
        if time.monotonic() > deadline:
            raise TimeoutError(late())
        yield line


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _running(pid: int) -> bool:
    from auxipc.runtime_dir import process_start_time
    return process_start_time(pid) is not None


def _is_broker(pid: int, root: str | None = None) -> bool:
    """Whether ``pid`` is an auxipc broker (serving ``root``, when given: a pid reused
    by somebody else's broker is not ours to stop)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"auxipc" in argv and b"broker" in argv and (root is None or root.encode() in argv)


def _reap_stale(xprocess) -> None:
    """Brokers left by an earlier pytest that was killed before its teardown: stop them
    (only if the pid still is an auxipc broker) and forget them."""
    for d in Path(str(xprocess.rootdir)).glob(BROKER_PREFIX + "*"):
        owner = d.name[len(BROKER_PREFIX):]
        if not owner.isdigit() or int(owner) == os.getpid() or _running(int(owner)):
            continue
        info = xprocess.getinfo(d.name)
        try:
            root = (d / "runtime_dir").read_text().strip()
        except OSError:
            root = None
        if info.pid and root and _is_broker(info.pid, root):
            info.terminate(timeout=STOP_GRACE)
        shutil.rmtree(d, ignore_errors=True)


class AuxBus:
    """A broker in a private runtime dir, the processes a test starts on it, and its trace."""

    def __init__(self, xprocess, request):
        self.xprocess = xprocess
        self.request = request
        self.root = tempfile.mkdtemp(prefix="axt-", dir="/tmp")
        self.runtime_dir = self.root
        self.logs = tempfile.mkdtemp(prefix="axt-logs-", dir="/tmp")
        self.procs: list = []           # supervise.Proc, in start order
        self.broker_pid: int | None = None
        self.client = None
        self.watcher = None
        self.records: list[dict] = []
        self._matched: set[int] = set()
        self._mark = 0
        self._n = 0
        from auxipc.observe.trace import Lifelines
        self._lifelines = Lifelines()

    # ---- environment ----

    def env(self) -> dict:
        """PYTHONUNBUFFERED, AUXIPC_RUNTIME_DIR, and a PYTHONPATH with the test's dir and
        the rootdir, so ``module:Class`` of the user's own models and drivers imports."""
        env = dict(os.environ)
        paths = [str(Path(str(self.request.path)).parent), str(self.request.config.rootpath)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update(PYTHONUNBUFFERED="1", AUXIPC_RUNTIME_DIR=self.root, PYTHONPATH=os.pathsep.join(paths))
        return env

    # ---- start and stop ----

    def start(self) -> None:
        from auxipc.observe.client import Client
        from auxipc.observe.watch import Watcher
        _reap_stale(self.xprocess)
        info = self.xprocess.getinfo(_broker_name())
        if info.pidpath.check() and not (info.pid and _is_broker(info.pid)):
            info.pidpath.remove()    # a pid reused by another process: never let xprocess signal it
        try:
            self.broker_pid, _ = self.xprocess.ensure(_broker_name(), _broker_starter(self.root, self.env()),
                                                      restart=True)
        except BaseException:
            self._stop_broker()
            raise
        (Path(str(info.controldir)) / "runtime_dir").write_text(self.root)
        self.client = Client(self.root)
        self.watcher = Watcher(self.root)

    def _proc(self, label: str, argv: list[str], timeout: float):
        from auxipc.process.launch import Proc
        self._n += 1
        proc = Proc(label, [*argv, "--runtime-dir", self.root], env=self.env(), log_dir=self.logs)
        proc.log_path = os.path.join(self.logs, f"{self._n:02d}-{label.replace('/', '_')}.log")
        self.procs.append(proc)
        proc.start(ready_timeout=timeout)
        return proc

    def parent(self, model: str = "ixd", *, devices: int | None = None, timeout: float = START_TIMEOUT):
        """Start a parent process (``auxipc parent --model MODEL``); returns it once ready.

        ``model``: a built-in name (``ixd``) or ``module:Class``."""
        argv = ["parent", "--model", model] + (["--devices", str(devices)] if devices is not None else [])
        return self._proc(f"parent-{model}", argv, timeout)

    def child(self, *drivers: str, timeout: float = START_TIMEOUT):
        """Start a child process with these drivers (built-in names or ``module:Class``)."""
        drivers = drivers or ("idpf_eth",)
        return self._proc(f"child-{'+'.join(drivers)}", ["child", *(x for d in drivers for x in ("--driver", d))],
                          timeout)

    def _find(self, proc):
        if not isinstance(proc, str):
            return proc
        found = [p for p in self.procs if p.name == proc or p.name.split("-", 1)[-1] == proc]
        if not found:
            raise LookupError(f"no process {proc!r} (started: {', '.join(p.name for p in self.procs) or 'none'})")
        return found[-1]

    def kill(self, proc, sig: int = _signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to a process (a Proc, or its driver/model name): fault injection."""
        self._find(proc).signal(sig)

    def stop(self, proc, grace: float = STOP_GRACE) -> int | None:
        """Stop a process cleanly (SIGCONT, SIGTERM, SIGKILL after ``grace``); its exit code."""
        proc = self._find(proc)
        proc.signal(_signal.SIGCONT)
        return proc.stop(grace)

    # ---- the bus ----

    def ls(self) -> dict:
        return self.client.query("ls")

    def uevents(self, since: int = 0) -> list[dict]:
        """The bus notifications the broker kept (seq > since)."""
        return self.client.query("uevents", since=since)["events"]

    def wait(self, condition: str, name: str | None = None, timeout: float = 10.0) -> str:
        """Block until a condition of ``auxipc wait`` holds (``bound``, ``peer``, ``device``, ...)."""
        from auxipc.observe import conditions
        what, _ = conditions.wait(condition, name, timeout, self.root, client=self.client)
        return what

    def wait_bound(self, device: str, timeout: float = 10.0) -> str:
        return self.wait("bound", device, timeout)

    def send(self, device: str, event: str, payload: dict | None = None, *, side: str | None = None,
             timeout: float = 5.0) -> dict:
        """Send ``event`` on ``device`` through the parent's or child's runtime; {errno, error, message, reply}.

        ``side`` ('parent' or 'child') defaults to the side the event's direction allows."""
        from proto.events import CATALOG, Direction
        spec = CATALOG.lookup(event)
        if side is None:
            if spec.direction is Direction.BOTH:
                raise ValueError(f"{spec.name} goes both ways: pass side='parent' or side='child'")
            side = "parent" if spec.direction is Direction.TO_CHILD else "child"
        return self.client.send_event(device, spec.name, side, payload, timeout)

    # ---- the trace ----

    def _drain(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            rec = self.watcher.next(max(0.0, deadline - time.monotonic()))
            if rec is None:
                return
            self.records.append(self._lifelines.annotate(rec))

    def trace(self) -> list[dict]:
        """Every record so far: bus notifications, sync calls, async events (each with src/dst)."""
        self._drain()
        return list(self.records)

    def mark(self) -> int:
        """Ignore everything seen so far in later ``expect``/``expect_uevent`` calls."""
        self._drain()
        self._mark = len(self.records)
        return self._mark

    def expect(self, timeout: float = 5.0, **fields) -> dict:
        """The first record after the mark, not returned by an earlier expect, whose fields
        include ``fields`` (``kind='call', event='SET_MAC', errno=0``); waits up to ``timeout``."""
        from auxipc.testing.scenario import subset_mismatch
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            for i in range(self._mark, len(self.records)):
                if i not in self._matched and subset_mismatch(fields, self.records[i], "record") is None:
                    self._matched.add(i)
                    return self.records[i]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                from auxipc.observe.trace import format_trace
                seen = "\n".join("  " + format_trace(r) for r in self.records[self._mark:]) or "  (nothing)"
                raise AssertionError(f"no record {fields} within {timeout:g} s; seen since the mark:\n{seen}")
            self._drain(min(remaining, 0.1))

    def expect_uevent(self, action: str, dev: str | None = None, timeout: float = 5.0, **detail) -> dict:
        """A bus notification ``action`` (of ``dev``, with ``detail`` as a subset); see ``expect``."""
        fields = {"kind": "bus", "action": action}
        if dev is not None:
            fields["dev"] = dev
        if detail:
            fields["detail"] = detail
        return self.expect(timeout, **fields)

    # ---- teardown ----

    def _stop_broker(self) -> int | None:
        """SIGTERM the broker (SIGKILL after the grace period) and reap it; its exit code."""
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
        elif info.pid and _running(info.pid):
            info.terminate(timeout=STOP_GRACE + 2)
        if info.pidpath.check():
            info.pidpath.remove()
        return code

    def warnings(self) -> list[dict]:
        """What the bus reported that the kernel would warn about (``ls`` ``warnings``)."""
        return self.ls().get("warnings", [])

    def _lifetime_bugs(self) -> list[str]:
        """The bus's reports of devices their parent left behind (deleted or put for it):
        a use-after-free or a leak in the kernel, so a failure of the test."""
        try:
            found = self.warnings()
        except Exception:       # the broker is gone (the test killed it): nothing to ask
            return []
        return [f"the bus reported: {w['message']}" for w in found if w.get("kind") in LIFETIME_BUGS]

    def close(self) -> list[str]:
        problems = []
        if self.watcher is not None:
            self.watcher.close()
        self.watcher = None
        # with the broker gone (the test killed it) no process can exit cleanly: do not wait long
        grace = STOP_GRACE if self.broker_pid and _running(self.broker_pid) else 0.5
        for proc in reversed(self.procs):
            try:
                proc.signal(_signal.SIGCONT)
            except ProcessLookupError:
                pass
            proc.stop(grace)
        left = [f"{p.name} (pid {p.pid})" for p in self.procs if p.popen is not None and p.popen.poll() is None]
        if left:
            problems.append(f"processes left behind: {', '.join(left)}")
        if self.client is not None:
            if self.broker_pid and _running(self.broker_pid):
                problems.extend(self._lifetime_bugs())
            self.client.close()
            self.client = None
        code = self._stop_broker()
        if self.broker_pid and _running(self.broker_pid):
            problems.append(f"broker (pid {self.broker_pid}) left behind")
        socks = sorted(p.name for p in Path(self.root).glob("*.sock"))
        if socks and code == 0:
            problems.append(f"the broker exited but left sockets in {self.root}: {socks}")
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.logs, ignore_errors=True)
        return problems


@pytest.fixture
def auxbus(xprocess, request):
    """A running auxipc broker in a private runtime dir, helpers to start parents and
    children, send events, inject faults and read the trace; everything is stopped
    and removed after the test. See ``auxipc.pytest_plugin.AuxBus``."""
    bus = AuxBus(xprocess, request)
    try:
        bus.start()
        yield bus
    finally:
        problems = bus.close()
    assert not problems, "auxbus teardown: " + "; ".join(problems)
