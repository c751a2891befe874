"""Fixtures for the multi-process integration tests: a private bus per test.

``bus`` starts ``auxipc broker`` in a fresh, short runtime dir (ipc paths are
limited to 107 characters; pytest's tmp_path is too long) through
pytest-xprocess, waiting for its ready line and a real control ping. Parents
and children are started the same way (``bus.parent(...)``, ``bus.child(...)``)
and waited for by their ready line. Every process gets PYTHONUNBUFFERED=1,
AUXIPC_RUNTIME_DIR and PYTHONPATH=<repo> (so ``tests.models:Name`` loads), and
``AXT_LOG``: a JSON-lines file the test models write (see tests/models.py).

Teardown stops every process the test started, in reverse start order
(SIGCONT first, so a stopped one can die; SIGTERM, then SIGKILL after a grace
period), then asserts that none is left and that the broker removed its
sockets, and removes the runtime dir. xprocess names carry the session's pid,
so two runs in one checkout never signal each other's processes; each
process's xprocess control dir goes once it is stopped (its output is attached
to the report of a failing test by xprocess).

Waiting is on readiness and on bus state (``ls``, ``uevents``, the model logs)
with deadlines; never on a fixed sleep.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from xprocess import ProcessStarter

from auxipc.observe.client import Client
from auxipc.testing.pytest_plugin import process_gone, ready_lines
from proto.errno import AuxError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SESSION = f"{os.getpid():x}"   # xprocess names are unique per session: runs in one checkout never collide
START_TIMEOUT = 15.0   # seconds for a process to print its ready line
# Heartbeats every 0.1 s; a peer (or the broker, seen from a peer) silent for 5 of them
# (0.5 s) is dead. 3 (0.3 s) is within reach of a scheduling stall on a loaded 2-core CI
# machine; 5 keeps crash detection fast without false deaths.
HB_LIVENESS = 5
STOP_GRACE = 5.0       # seconds between SIGTERM and SIGKILL at teardown


# ---- small helpers ------------------------------------------------------------------------

def wait_until(fn, timeout: float = 10.0, what: str = "condition", poll: float = 0.02):
    """Poll ``fn()`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


def read_log(path: Path) -> list[dict]:
    """The JSON lines a test model wrote to its $AXT_LOG (complete lines only)."""
    try:
        data = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.splitlines(keepends=True) if line.endswith("\n")]


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def _tail(control_dir, limit: int = 3000) -> str:
    try:
        return (Path(str(control_dir)) / "xprocess.log").read_text(errors="replace")[-limit:]
    except OSError:
        return "(no output)"


def _starter(argv: list[str], environ: dict, ready: str, check=None):
    """An xprocess starter: a ready line matching ``ready``, an optional ``check`` (startup_check)."""

    class Starter(ProcessStarter):
        args = list(argv)
        env = dict(environ)
        pattern = ready
        timeout = START_TIMEOUT
        max_read_lines = 500
        terminate_on_interrupt = True

        def get_lines(self, log_file):
            what = " ".join(argv[3:5])
            return ready_lines(log_file, self.control_dir, deadline,
                               lambda: f"{what} exited before printing its ready line; its output:\n"
                                       f"{_tail(self.control_dir)}",
                               lambda: f"{what} printed no line matching {ready!r} within {START_TIMEOUT} s; "
                                       f"its output:\n{_tail(self.control_dir)}")

    if check is not None:
        Starter.startup_check = lambda self: check()
    deadline = time.monotonic() + START_TIMEOUT + 1
    return Starter


@dataclass
class Proc:
    """A process a test started through xprocess."""

    name: str
    role: str
    pid: int
    log: Path       # its $AXT_LOG (test models write there)
    out: Path       # its stdout+stderr (xprocess's log)

    def records(self, what: str | None = None, **match) -> list[dict]:
        recs = read_log(self.log)
        return [r for r in recs if (what is None or r["what"] == what)
                and all(r.get(k) == v for k, v in match.items())]

    def wait_record(self, what: str, timeout: float = 10.0, **match) -> dict:
        return wait_until(lambda: (self.records(what, **match) or [None])[0], timeout,
                          f"{self.role} record {what} {match or ''} in {self.log}")

    def output(self) -> str:
        return Path(self.out).read_text(errors="replace")


# ---- the bus ------------------------------------------------------------------------------

class Bus:
    """One broker in a private runtime dir, and the processes a test runs on it."""

    def __init__(self, xprocess, label: str, logdir: Path, *, fresh_dir: bool = False, mode: int | None = None):
        self.xp, self.label, self.logdir = xprocess, label, Path(logdir)
        self.tmp = Path(tempfile.mkdtemp(prefix="axt-", dir="/tmp"))
        # fresh_dir: let the broker create the runtime dir itself.
        self.root = self.tmp / "rt" if fresh_dir else self.tmp
        if mode is not None:
            os.chmod(self.root, mode)
        self.running: list[str] = []        # xprocess names not stopped yet, in start order
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen] = []
        self._n = itertools.count()
        self.client: Client | None = None
        self.broker: Proc | None = None

    # ---- processes ----

    def env(self, log: Path | None = None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AXT_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["AUXIPC_RUNTIME_DIR"] = str(self.root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        if log is not None:
            env["AXT_LOG"] = str(log)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _start(self, role: str, cmd: list[str], extra_env: dict, check=None) -> Proc:
        name = f"{self.label}-{role}{next(self._n)}-{SESSION}"
        log = self.logdir / f"{name}.jsonl"
        args = [PY, "-u", "-m", "auxipc", role, *cmd, "--runtime-dir", str(self.root)]
        starter = _starter(args, self.env(log, **extra_env), rf"^auxipc {role} .*\bready: ", check)
        info = self.xp.getinfo(name)
        if info.pidpath.check():
            info.pidpath.remove()   # a pid from an earlier run: never let xprocess signal it
        self.running.append(name)
        try:
            pid, out = self.xp.ensure(name, starter, restart=True)
        except BaseException:
            self._stop(name)
            raise
        self.pids.append(pid)
        return Proc(name, role, pid, log, Path(str(out)))

    def start_broker(self, hb_ivl: float = 0.1, hb_liveness: int = HB_LIVENESS, *extra: str) -> Proc:
        self.hb_ivl, self.hb_liveness = hb_ivl, hb_liveness
        self.broker = self._start("broker", ["--hb-ivl", str(hb_ivl), "--hb-liveness", str(hb_liveness), *extra],
                                  {}, check=self.ping)
        if self.client is not None:     # a restarted broker
            self.client.close()
        self.client = Client(self.root)
        return self.broker

    def parent(self, model: str = "tests.models:Pair", *args: str, **env) -> Proc:
        return self._start("parent", ["--model", model, *args], env)

    def child(self, *drivers: str, **env) -> Proc:
        cmd = [x for d in (drivers or ("tests.models:Rec",)) for x in ("--driver", d)]
        return self._start("child", cmd, env)

    def pid(self, proc: Proc) -> int:
        return proc.pid

    def stop(self, proc: Proc) -> None:
        """Stop a process gracefully (SIGTERM; SIGKILL after the grace period) and reap it."""
        self._stop(proc.name)

    def _stop(self, name: str) -> str | None:
        if name not in self.running:
            return None
        info = self.xp.getinfo(name)
        problem = None
        if info.pid:
            try:
                os.kill(info.pid, signal.SIGCONT)   # ours, and not reaped yet: the pid is not reused
            except ProcessLookupError:
                pass
            if info.terminate(timeout=STOP_GRACE) == -1:
                problem = f"could not terminate {name} (pid {info.pid})"
        self.running.remove(name)
        info.controldir.remove(rec=1, ignore_errors=True)   # its pid file and log (already reported)
        return problem

    def popen(self, *args: str, **env) -> subprocess.Popen:
        """Start ``auxipc <args>`` in the background (killed at teardown if still running)."""
        p = subprocess.Popen([PY, "-m", "auxipc", *args], env=self.env(**env), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.popens.append(p)
        return p

    def cli(self, *args: str, timeout: float = 30.0, **env) -> subprocess.CompletedProcess:
        """Run ``auxipc <args>`` to completion."""
        return subprocess.run([PY, "-m", "auxipc", *args], env=self.env(**env), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    @staticmethod
    def send_args(device: str, event: str, side: str, payload=None, timeout: float = 5.0) -> list[str]:
        return ["send", device, event, "--from", side, "--payload", json.dumps(payload or {}),
                "--timeout", str(timeout), "--json"]

    def send(self, device: str, event: str, side: str, payload=None, timeout: float = 5.0):
        """``auxipc send ... --json`` as a subprocess: (exit code, parsed JSON or None, stderr)."""
        r = self.cli(*self.send_args(device, event, side, payload, timeout), timeout=timeout + 20)
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr

    # ---- bus state ----

    wait_until = staticmethod(wait_until)

    def ping(self) -> bool:
        try:
            with Client(self.root, timeout=1.0) as c:
                return c.query("ping")["pid"] > 0
        except AuxError:
            return False

    def ls(self) -> dict:
        return self.client.query("ls")

    def wait_ls(self, pred, timeout: float = 10.0) -> dict:
        return self.client.wait_for(pred, timeout)

    def device(self, name: str, snap: dict | None = None) -> dict | None:
        snap = snap or self.ls()
        return next((d for d in snap["devices"] if d["name"] == name), None)

    def peer(self, pid: int, snap: dict | None = None) -> dict | None:
        snap = snap or self.ls()
        return next((p for p in snap["peers"] if p["pid"] == pid), None)

    def uevents(self, since: int = 0) -> list[dict]:
        return self.client.query("uevents", since=since)["events"]

    def actions(self, dev: str | None = None, since: int = 0) -> list[str]:
        return [e["action"] for e in self.uevents(since) if dev is None or e["dev"] == dev]

    def wait_uevent(self, action: str, dev: str | None = None, timeout: float = 10.0, since: int = 0,
                    **detail) -> dict:
        def find():
            for e in self.uevents(since):
                if e["action"] == action and (dev is None or e["dev"] == dev) and all(
                        e["detail"].get(k) == v for k, v in detail.items()):
                    return e
            return None
        return wait_until(find, timeout, f"uevent {action} {dev or ''} {detail or ''}")

    # ---- teardown ----

    def close(self) -> list[str]:
        problems = []
        if self.client is not None:
            self.client.close()
            self.client = None
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
        for name in reversed(list(self.running)):
            problem = self._stop(name)
            if problem:
                problems.append(problem)
        left = [pid for pid in self.pids if not process_gone(pid)]
        if left:
            problems.append(f"processes left behind: {left}")
        socks = sorted(p.name for p in self.root.glob("*.sock")) if self.root.exists() else []
        if socks:
            problems.append(f"the broker left sockets in {self.root}: {socks}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def _bus_factory(xprocess, label: str, logdir: Path):
    buses: list[Bus] = []

    def make(hb_ivl: float = 0.1, hb_liveness: int = HB_LIVENESS, broker_args: tuple = (), **kw) -> Bus:
        b = Bus(xprocess, label + (f"-{len(buses)}" if buses else ""), logdir, **kw)
        buses.append(b)
        b.start_broker(hb_ivl, hb_liveness, *broker_args)
        return b

    def close() -> None:
        problems = [p for b in reversed(buses) for p in b.close()]
        assert not problems, "; ".join(problems)
    return make, close


@pytest.fixture
def make_bus(xprocess, request, tmp_path):
    """``make_bus(hb_ivl=0.1, hb_liveness=5, broker_args=(), fresh_dir=False, mode=None) -> Bus``;
    every bus is torn down."""
    make, close = _bus_factory(xprocess, _label(request.node.name), tmp_path)
    yield make
    close()


@pytest.fixture
def bus(make_bus) -> Bus:
    """A running broker (``--hb-ivl 0.1 --hb-liveness 5``) in a private runtime dir."""
    return make_bus()


@pytest.fixture(scope="module")
def make_module_bus(xprocess, request, tmp_path_factory):
    """Like ``make_bus``, shared by the tests of one module."""
    name = _label(request.module.__name__.rpartition(".")[2])
    make, close = _bus_factory(xprocess, name, tmp_path_factory.mktemp(name))
    yield make
    close()
