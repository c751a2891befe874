"""A fork server: ``python -m auxipc ...`` without paying interpreter start and imports.

The zygote is a process started once (plain spawn) that imports auxipc, the broker,
both runtimes and the reference models and drivers, then forks a ready interpreter
for every process it is asked for. It never opens a ZeroMQ context or any socket
but its control channel, so a forked child starts with no live socket (a forked
child using an inherited ZeroMQ socket hangs) and opens its own, as a spawned one does.

Contract of a forked child, the same as ``Proc``'s spawned one: its own process and
session (``setsid``), ``argv``/``env``/``cwd`` as asked, stdin/stdout/stderr on the
descriptors the launcher passed, SIGTERM when its launcher is gone (the zygote exits
when the launcher's end of the control channel closes, each child has
PR_SET_PDEATHSIG towards the zygote), exit status
as ``Popen`` reports it (negative: killed by that signal), and its real pid, so
signals and crash semantics are unchanged.

Wire (one ``AF_UNIX`` ``SOCK_SEQPACKET`` pair, from ``socketpair``, no file):
the launcher sends one JSON request ``{argv, env, cwd}`` with four descriptors
(a fresh per-child seqpacket end, stdin, stdout, stderr); the zygote answers on
the per-child end ``{"pid": N}`` once forked and ``{"status": S}`` once reaped,
then closes it. The launcher closing the control channel stops the zygote.

``AUXIPC_ZYGOTE=0`` turns it off (``Proc`` spawns, as before).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from auxipc.procfs import process_start_time

MAX_MSG = 1 << 20
ARGV_ROOM = 8192      # bytes of command line the zygote starts with, for its children to write theirs into
PRELOAD = ("auxipc.cli.main", "auxipc.broker.server", "auxipc.observe.client", "parent.runtime",
           "child.runtime")


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """``sig`` when the process (thread) that started us dies (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)
    except (OSError, AttributeError):
        pass


def preload() -> None:
    """Everything a broker, parent or child imports, models and drivers included: once, here."""
    import importlib

    from auxipc.registry import DRIVERS, MODELS
    for name in (*PRELOAD, *(t.partition(":")[0] for t in (*MODELS.values(), *DRIVERS.values()))):
        importlib.import_module(name)
    # what every process would otherwise do on its first messages: compile each payload's
    # validators and Structs (proto/compiled.py), and read the installed schema entry points once
    from auxipc.schemas import load_catalog
    from proto import envelope
    from proto.compiled import compile_payload, struct_for
    from proto.schema import Payload
    envelope.init_structs()
    todo = list(Payload.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        try:
            if "_fill" not in cls.__dict__:
                compile_payload(cls)
            struct_for(cls)
        except Exception:     # noqa: BLE001 — left to the child to compile (and report) on first use
            pass
    load_catalog(())


def child_cmdline(argv: list[str]) -> bytes:
    """What /proc/PID/cmdline of a forked child says: what a spawned one's would."""
    return b"\0".join(a.encode() for a in [sys.executable, "-u", "-m", "auxipc", *argv]) + b"\0"


def _set_cmdline(cmdline: bytes) -> None:
    """Write ``cmdline`` over this process's own argv memory (``ps``, and who tells processes
    apart by their command line, see the child as ``python -u -m auxipc ...``); its first
    NUL-padded ``ARGV_ROOM`` bytes came from the zygote's padded command line."""
    import ctypes
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])     # arg_start, arg_end (fields 48, 49 of proc(5))
    if len(cmdline) > end - start:
        return
    ctypes.memmove(start, cmdline + b"\0" * (end - start - len(cmdline)), end - start)


def _status(raw: int) -> int:
    """A wait status as ``Popen.returncode`` has it."""
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _run_child(req: dict, fds: list[int], zygote_pid: int) -> None:
    """In the forked child: become ``python -m auxipc ARGV``; never returns."""
    code = 1
    try:
        os.setsid()
        _set_cmdline(child_cmdline(req["argv"]))
        set_pdeathsig(signal.SIGTERM)
        if os.getppid() != zygote_pid:        # the zygote died before prctl took effect
            os._exit(1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):    # SIGPIPE stays ignored, as Python sets it
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _, stdin, stdout, stderr = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        # sys.path as ``python -m`` builds it: the cwd, then PYTHONPATH, then the interpreter's own
        extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        base = [p for p in sys.path[1:] if p not in BASE_EXTRA]
        sys.path[:] = [os.getcwd(), *extra, *base]
        import runpy
        import threading
        sys.argv = ["auxipc", *req["argv"]]
        try:
            runpy.run_module("auxipc", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:    # noqa: BLE001 — what the interpreter would print, then its exit code
            import traceback
            traceback.print_exc()
            code = 1
        threading._shutdown()     # type: ignore[attr-defined]  # join non-daemon threads as interpreter exit does
        import atexit
        atexit._run_exitfuncs()
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
    finally:
        os._exit(code)


BASE_EXTRA: set[str] = set()     # the zygote's own PYTHONPATH entries and cwd (a child uses its own)


def serve(ctl: socket.socket) -> int:
    """Fork a child per request on ``ctl`` until the launcher closes it."""
    me = os.getpid()
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    while True:
        try:
            ready, _, _ = select.select([ctl, rfd], [], [])
        except InterruptedError:
            continue
        if rfd in ready:
            os.read(rfd, 4096)
            while children:
                try:
                    pid, raw = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    try:
                        conn.send(json.dumps({"status": _status(raw)}).encode())
                    except OSError:
                        pass
                    conn.close()
        if ctl in ready:
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, MAX_MSG, 4)
            except OSError:
                msg, fds = b"", []
            if not msg:
                return 0
            if len(fds) != 4:
                for fd in fds:
                    os.close(fd)
                continue
            conn = socket.socket(fileno=fds[0])
            try:
                req = json.loads(msg)
                pid = os.fork()
            except (OSError, ValueError) as exc:
                conn.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                conn.close()
                for fd in fds[1:]:
                    os.close(fd)
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                for c in (ctl, *children.values()):
                    c.close()
                os.close(rfd)
                os.close(wfd)
                _run_child(req, fds, me)
            for fd in fds[1:]:
                os.close(fd)
            children[pid] = conn
            conn.send(json.dumps({"pid": pid}).encode())


# ---- the launcher's side ---------------------------------------------------------------------

class ZygotePopen:
    """What ``Proc`` uses of ``subprocess.Popen`` for a forked child: ``pid``, ``stdout``,
    ``returncode``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``."""

    def __init__(self, pid: int, conn: socket.socket, stdout):
        self.pid, self.stdout, self.returncode = pid, stdout, None
        self._conn = conn

    def _take(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self._conn], [], [], remaining)
            if r:
                try:
                    msg = self._conn.recv(4096)
                except OSError:
                    msg = b""
                if msg:
                    self.returncode = json.loads(msg)["status"]
                elif process_start_time(self.pid) is None:
                    # the zygote is gone: the child got its SIGTERM, someone else reaped it
                    self.returncode = -signal.SIGTERM
                else:
                    time.sleep(0.01)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                self._conn.close()
                return self.returncode
            return None

    def poll(self) -> int | None:
        return self._take(0)

    def exit_fileno(self) -> int | None:
        """Readable once the child exited (its status, or the zygote gone); None once taken."""
        return None if self.returncode is not None else self._conn.fileno()

    def wait(self, timeout: float | None = None) -> int:
        code = self._take(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The launcher's handle on a zygote process: ``spawn`` forks ``auxipc ARGV`` in it."""

    def __init__(self, timeout: float = 30.0):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctl = ours
        self.lock = threading.Lock()
        self.popen = subprocess.Popen([sys.executable, "-u", "-m", "auxipc.process.zygote", str(theirs.fileno()),
                                       "-" * ARGV_ROOM],
                                      pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        r, _, _ = select.select([ours], [], [], timeout)
        if not r or not ours.recv(64):
            self.close()
            raise OSError("the zygote did not become ready")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def spawn(self, argv: list[str], env: dict, cwd: str | None, stdin: int, stdout: int,
              stderr: int) -> ZygotePopen:
        mine, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        req = json.dumps({"argv": argv, "env": env, "cwd": cwd or os.getcwd()}).encode()
        try:
            with self.lock:
                socket.send_fds(self.ctl, [req], [child.fileno(), stdin, stdout, stderr])
        finally:
            child.close()
        r, _, _ = select.select([mine], [], [], 10.0)
        msg = mine.recv(4096) if r else b""
        answer = json.loads(msg) if msg else {"error": "no answer"}
        if "pid" not in answer:
            mine.close()
            raise OSError(f"the zygote could not fork: {answer['error']}")
        return ZygotePopen(answer["pid"], mine, None)

    def close(self) -> None:
        self.ctl.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


_ZYGOTE: list = []     # this process's zygote, started on first use; [None] once it failed
_ZYGOTE_LOCK = threading.Lock()


def enabled() -> bool:
    return os.environ.get("AUXIPC_ZYGOTE", "1") not in ("0", "", "no", "off", "false")


def _own_tree() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fits(argv: list[str], env: dict, cwd: str | None) -> bool:
    """Whether a child with this env and cwd would import the auxipc the zygote holds
    (another checkout on its PYTHONPATH or in its cwd would win over ours under spawn)."""
    if len(child_cmdline(argv)) > ARGV_ROOM:
        return False
    mine = _own_tree()
    for d in [cwd or os.getcwd(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]:
        d = os.path.abspath(d)
        if d != mine and os.path.exists(os.path.join(d, "auxipc", "__init__.py")):
            return False
    return env.get("AUXIPC_ZYGOTE", "1") not in ("0", "", "no", "off", "false")


def shared() -> Zygote | None:
    """This process's zygote (started on first use, stopped at exit), or None: turned off
    (AUXIPC_ZYGOTE=0) or failed to start (then ``Proc`` spawns)."""
    if not enabled():
        return None
    with _ZYGOTE_LOCK:
        if _ZYGOTE and (_ZYGOTE[0] is None or _ZYGOTE[0].alive()):
            return _ZYGOTE[0]
        _ZYGOTE.clear()
        try:
            z = Zygote()
        except OSError:
            z = None
        else:
            atexit.register(z.close)
        _ZYGOTE.append(z)
        return z


def usable(argv: list[str], env: dict, cwd: str | None = None) -> bool:
    """Whether ``Proc`` would fork this process from the zygote (starting the zygote if needed)."""
    return fits(argv, env, cwd) and shared() is not None


def main(argv: list[str]) -> int:
    """``python -m auxipc.process.zygote FD``: FD is the control channel's end. The zygote
    exits when the launcher's end closes — also when the launcher is killed — whichever of
    its threads started it (PR_SET_PDEATHSIG would follow that thread), and its children
    then get their SIGTERM."""
    ctl = socket.socket(fileno=int(argv[0]))
    BASE_EXTRA.update(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    BASE_EXTRA.add(sys.path[0])
    preload()
    ctl.send(b'{"ready": true}')
    return serve(ctl)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
