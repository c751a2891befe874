"""Start auxipc processes and stop them for good.

``Proc`` launches ``python -u -m auxipc ...`` (never fork with live sockets),
waits for its ``ready`` line, and stops it with SIGTERM, a grace period, then
SIGKILL, always reaping it. Processes are told apart by pid *and* start time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time

from auxipc.procfs import process_start_time
from proto.errno import AuxError, Errno


def _die_with_launcher() -> None:
    """In the child, before exec: SIGTERM when the process that launched us dies (Linux
    PR_SET_PDEATHSIG), so a launcher killed with SIGKILL leaves nothing behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Proc:
    """``[*wrap, python, -u, *py_args, -m, auxipc, *args]``: ``wrap`` runs the interpreter
    (``taskset -c 0``), ``py_args`` go to it (``-m cProfile -o FILE``); in ``cwd``."""

    def __init__(self, name: str, args: list[str], env: dict | None = None, log_dir: str | None = None,
                 wrap: list[str] | tuple = (), py_args: list[str] | tuple = (), cwd: str | None = None):
        self.name, self.args = name, args
        self.wrap, self.py_args, self.cwd = list(wrap), list(py_args), cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_dir = log_dir or tempfile.gettempdir()
        self.popen: subprocess.Popen | None = None
        self.start_time: int | None = None
        self.ready_line = ""
        self._pidfd: int | None = None
        self.log_path = os.path.join(self.log_dir, f"{name}.log")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def start(self, ready_timeout: float = 15.0) -> str:
        self._log = open(self.log_path, "ab")
        self.popen = self._fork() if not (self.wrap or self.py_args) else None
        if self.popen is None:
            self._spawn()
        self.start_time = process_start_time(self.popen.pid)
        return self.wait_ready(ready_timeout)

    def _fork(self):
        """Through this process's zygote (``auxipc.process.zygote``), or None: off, not
        started, or this env/cwd would import another auxipc than the zygote holds."""
        from auxipc.process import zygote
        if not zygote.fits(self.args, self.env, self.cwd):
            return None
        z = zygote.shared()
        if z is None:
            return None
        out_r, out_w = os.pipe()
        try:
            with open(os.devnull, "rb") as null:
                popen = z.spawn(list(self.args), self.env, self.cwd, null.fileno(), out_w,
                                self._log.fileno())
        except OSError:
            os.close(out_r)
            return None
        finally:
            os.close(out_w)
        popen.stdout = os.fdopen(out_r, "rb", buffering=0)
        return popen

    def _spawn(self) -> None:
        self.popen = subprocess.Popen([*self.wrap, sys.executable, "-u", *self.py_args, "-m", "auxipc", *self.args],
                                      stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=self.env,
                                      cwd=self.cwd,
                                      start_new_session=True, preexec_fn=_die_with_launcher)

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.popen.stdout.fileno()
        while b"ready" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise AuxError(Errno.ETIMEDOUT, f"{self.name} did not become ready within {timeout:.0f} s; "
                               f"log: {self.tail()}")
            r, _, _ = select.select([fd], [], [], remaining)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.popen.wait()
                    raise AuxError(Errno.ESHUTDOWN, f"{self.name} exited with {code} before it was ready: "
                                   f"{self.tail()}")
                buf += chunk
        self.ready_line = buf.decode(errors="replace").strip().splitlines()[-1]
        return self.ready_line

    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable when the process exits (a supervisor polls it
        with its other sockets: an exit is seen at once, not at the next tick); None if none."""
        if self.popen is None:
            return None
        fileno = getattr(self.popen, "exit_fileno", None)
        if fileno is not None:
            return fileno()
        if self._pidfd is None and self.popen.returncode is None:
            try:
                self._pidfd = os.pidfd_open(self.popen.pid)
            except (OSError, AttributeError):
                return None
        return self._pidfd

    def tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return (self.popen is not None and self.popen.poll() is None
                and process_start_time(self.popen.pid) == self.start_time)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, wait ``grace``, SIGKILL; always reaps. Returns the exit code."""
        if self.popen is None:
            return None
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
            return self.popen.wait()
        finally:
            self.popen.stdout.close()
            self._log.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
