"""``AuxBus``: the ``auxbus`` fixture's bus, a ``Harness`` whose broker is started
through pytest-xprocess (see ``auxipc.testing.pytest_plugin`` for the fixture).
"""

from __future__ import annotations

import os
import signal as _signal
from pathlib import Path

from auxipc.procfs import gone
from auxipc.testing.harness import Harness
from auxipc.testing.pytest_plugin import STOP_GRACE, _broker_name, _broker_starter, _is_broker, _reap_stale


class AuxBus(Harness):
    """A broker in a private runtime dir, the processes a test starts on it, and its trace:
    a ``Harness`` whose broker is started through pytest-xprocess."""

    def __init__(self, xprocess, request):
        super().__init__(prefix="axt-", grace=STOP_GRACE)
        self.xprocess = xprocess
        self.request = request

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
        return bool(self.broker_pid) and not gone(self.broker_pid)

    def stop_broker(self) -> int | None:
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
