"""Fixtures for the multi-process integration tests: a private bus per test.

``bus`` is the project's one bus harness (``auxipc.testing.harness.Harness``, as
under the ``auxbus`` fixture) with what these tests add: a broker with fast
heartbeats (``--hb-ivl 0.1 --hb-liveness 5``), the test models of tests/models.py
as defaults, and ``AXT_LOG``: a JSON-lines file per process that the test models
write (``proc.records(what, **match)``). The runtime dir is fresh and short (ipc
paths are limited to 107 characters; pytest's tmp_path is too long). Every
process gets PYTHONUNBUFFERED=1, AUXIPC_RUNTIME_DIR and PYTHONPATH=<repo> (so
``tests.models:Name`` loads) and is waited for by its ready line.

Teardown stops every process the test started, newest first and the broker last
(SIGCONT first, so a stopped one can die; SIGTERM, then SIGKILL after a grace
period), then asserts that none is left and that the broker removed its
sockets, and removes the runtime dir.

Waiting is on readiness and on bus state (``ls``, ``uevents``, the model logs)
with deadlines; never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from auxipc.observe.client import Client
from auxipc.process.launch import Proc as Launched
from auxipc.testing.harness import Harness
from proto.errno import AuxError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
START_TIMEOUT = 15.0   # seconds for a process to print its ready line
# Heartbeats every 0.1 s; a peer (or the broker, seen from a peer) silent for 5 of them
# (0.5 s) is dead. 3 (0.3 s) is within reach of a scheduling stall on a loaded 2-core CI
# machine; 5 keeps crash detection fast without false deaths.
HB_LIVENESS = 5
STOP_GRACE = 5.0       # seconds between SIGTERM and SIGKILL at teardown


# Tests that start real processes are the slow tier (``-m "not slow"`` leaves them out); the
# fixtures that start them say so, so no such test can forget its marker.
PROCESS_FIXTURES = frozenset({"bus", "make_bus", "make_module_bus", "auxbus", "xprocess"})


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


@dataclass
class Proc:
    """A process a test started on its bus."""

    name: str
    role: str
    pid: int
    log: Path       # its $AXT_LOG (test models write there)
    out: Path       # its stderr (its log output)
    launched: Launched | None = field(default=None, repr=False)

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

class Bus(Harness):
    """One broker in a private runtime dir, and the processes a test runs on it."""

    def __init__(self, label: str, logdir: Path, *, fresh_dir: bool = False, mode: int | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="axt-", dir="/tmp"))
        # fresh_dir: let the broker create the runtime dir itself.
        super().__init__(str(self.tmp / "rt" if fresh_dir else self.tmp), prefix="axt-", grace=STOP_GRACE,
                         env={"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", ""))
                                                            if p)})
        if mode is not None:
            os.chmod(self.root, mode)
        self.label, self.logdir = label, Path(logdir)
        self.popens: list[subprocess.Popen] = []
        self.broker: Proc | None = None

    # ---- processes ----

    def env(self, log: Path | None = None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AXT_")}
        env.update(self.proc_env())
        if log is not None:
            env["AXT_LOG"] = str(log)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _start(self, role: str, cmd: list[str], extra_env: dict) -> Proc:
        name = f"{self.label}-{role}{self._n}"
        log = self.logdir / f"{name}.jsonl"
        env = {"AXT_LOG": str(log), **{k: str(v) for k, v in extra_env.items()}}
        if role == "broker":
            launched = super().broker(*cmd, timeout=START_TIMEOUT, connect=False)
        else:
            launched = self.start(name, role, *cmd, env=env, timeout=START_TIMEOUT)
        return Proc(name, role, launched.pid, log, Path(launched.log_path), launched)

    def start_broker(self, hb_ivl: float = 0.1, hb_liveness: int = HB_LIVENESS, *extra: str) -> Proc:
        self.hb_ivl, self.hb_liveness = hb_ivl, hb_liveness
        self.broker = self._start("broker", ["--hb-ivl", str(hb_ivl), "--hb-liveness", str(hb_liveness), *extra],
                                  {})
        if self.client is not None:     # a restarted broker
            self.client.close()
        self.client = Client(self.root)
        return self.broker

    def parent(self, model: str = "tests.models:Pair", *args: str, **env) -> Proc:    # type: ignore[override]
        return self._start("parent", ["--model", model, *args], env)

    def child(self, *drivers: str, **env) -> Proc:    # type: ignore[override]
        cmd = [x for d in (drivers or ("tests.models:Rec",)) for x in ("--driver", d)]
        return self._start("child", cmd, env)

    def pid(self, proc: Proc) -> int:
        return proc.pid

    def stop(self, proc: Proc) -> None:    # type: ignore[override]
        """Stop a process gracefully (SIGTERM; SIGKILL after the grace period) and reap it."""
        super().stop(proc.launched)

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

    def send(self, device: str, event: str, side: str, payload=None, timeout: float = 5.0):    # type: ignore[override]
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

    def wait_ls(self, pred, timeout: float = 10.0) -> dict:
        return self.client.wait_for(pred, timeout)

    def device(self, name: str, snap: dict | None = None) -> dict | None:
        snap = snap or self.ls()
        return next((d for d in snap["devices"] if d["name"] == name), None)

    def peer(self, pid: int, snap: dict | None = None) -> dict | None:
        snap = snap or self.ls()
        return next((p for p in snap["peers"] if p["pid"] == pid), None)

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
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
        problems = self.stop_all()
        root = Path(self.root)
        socks = sorted(p.name for p in root.glob("*.sock")) if root.exists() else []
        if socks:
            problems.append(f"the broker left sockets in {root}: {socks}")
        problems += super().close()     # the logs; nothing is running any more
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def _bus_factory(label: str, logdir: Path):
    buses: list[Bus] = []

    def make(hb_ivl: float = 0.1, hb_liveness: int = HB_LIVENESS, broker_args: tuple = (), **kw) -> Bus:
        b = Bus(label + (f"-{len(buses)}" if buses else ""), logdir, **kw)
        buses.append(b)
        b.start_broker(hb_ivl, hb_liveness, *broker_args)
        return b

    def close() -> None:
        problems = [p for b in reversed(buses) for p in b.close()]
        assert not problems, "; ".join(problems)
    return make, close


@pytest.fixture
def make_bus(request, tmp_path):
    """``make_bus(hb_ivl=0.1, hb_liveness=5, broker_args=(), fresh_dir=False, mode=None) -> Bus``;
    every bus is torn down."""
    make, close = _bus_factory(_label(request.node.name), tmp_path)
    yield make
    close()


@pytest.fixture
def bus(make_bus) -> Bus:
    """A running broker (``--hb-ivl 0.1 --hb-liveness 5``) in a private runtime dir."""
    return make_bus()


@pytest.fixture(scope="module")
def make_module_bus(request, tmp_path_factory):
    """Like ``make_bus``, shared by the tests of one module."""
    name = _label(request.module.__name__.rpartition(".")[2])
    make, close = _bus_factory(name, tmp_path_factory.mktemp(name))
    yield make
    close()
