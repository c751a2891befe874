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

from auxipc.procfs import cmdline, gone
from auxipc.testing.harness import Harness

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

    def __init__(self, xprocess, request):
        """``xprocess``: pytest-xprocess's fixture, or None without pytest's cache provider."""
        super().__init__(prefix="axt-", grace=STOP_GRACE)
        self.xprocess = xprocess
        self.request = request

    # WARN kinds that fail the test at teardown: a parent left devices on the bus
    # (a use-after-free or a leak in the kernel; the bus cleaned up for it).
    LIFETIME_BUGS = ("devices_outlive_parent", "uninit_missing")

    def bus_problems(self) -> list[str]:
        try:
            found = self.ls().get("warnings", [])
        except Exception:   # noqa: BLE001 — the broker went away meanwhile: nothing to ask
            return []
        return [f"the bus reported: {w['message']}" for w in found if w.get("kind") in self.LIFETIME_BUGS]

    def warnings(self) -> list[dict]:
        """What the bus reported that the kernel would warn about (``ls`` ``warnings``)."""
        return self.ls().get("warnings", [])

    # ---- environment ----

    def proc_env(self) -> dict:
        """PYTHONUNBUFFERED, AUXIPC_RUNTIME_DIR, and a PYTHONPATH with the test's dir and
        the rootdir, so ``module:Class`` of the user's own models and drivers imports."""
        paths = [str(Path(str(self.request.path)).parent), str(self.request.config.rootpath)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {**super().proc_env(), "PYTHONPATH": os.pathsep.join(paths)}

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
