"""``auxipc up``: start a bus and its processes, keep them running, stop them for good.

Supervision as OTP defines it, with the usual complaints about Circus and
systemd in mind:
- restart types per process: ``permanent`` (always restarted), ``transient``
  (restarted after an abnormal exit only), ``temporary`` (never);
- strategies: ``one_for_one``, ``one_for_all``, ``rest_for_one``;
- an immediate first restart, then exponential backoff per process (``backoff_min``
  doubling to ``backoff_max``, reset once it stayed up for ``period``), and a
  restart intensity: more than ``intensity`` restarts within ``period`` seconds
  and the supervisor gives up, stops everything and says why;
- an exit is seen at once: each process's exit descriptor is polled with the
  control socket, and a restart forks from the zygote (auxipc/process/zygote.py);
- a stop the operator asked for (``auxipc stop NAME``, SIGTERM/SIGINT to
  ``auxipc up``) never triggers a restart;
- shutdown in reverse start order: SIGTERM, ``grace``, SIGKILL, always reaped;
  processes are told apart by pid and start time.

The broker is the first process; when it restarts, the others reconnect on
their own (their runtimes re-register). Operators talk to the supervisor over
``up.sock`` in the runtime dir (``auxipc ps``, ``stop``, ``start``, ``restart``).
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from auxipc.broker.lifecycle import ProcEvent, ProcState, proc_machine
from auxipc.process.launch import Proc
from auxipc.runtime_dir import endpoints
from proto import envelope as E
from proto.control import UP_ARGS, ctl_args
from proto.errno import AuxError, Errno

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


@dataclass
class ChildSpec:
    name: str
    argv: list[str]                 # auxipc arguments, without --runtime-dir
    restart: str = "permanent"

    def check(self) -> "ChildSpec":
        if self.restart not in RESTART_TYPES:
            raise AuxError(Errno.EINVAL, f"process {self.name}: restart {self.restart!r} is not one of "
                           f"{', '.join(RESTART_TYPES)}")
        return self


@dataclass
class SupervisorSpec:
    children: list[ChildSpec]
    strategy: str = "one_for_one"
    intensity: int = 5              # restarts allowed ...
    period: float = 30.0            # ... within this many seconds
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    grace: float = 5.0              # SIGTERM -> SIGKILL

    def check(self) -> "SupervisorSpec":
        if self.strategy not in STRATEGIES:
            raise AuxError(Errno.EINVAL, f"supervisor strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.intensity < 0 or self.period <= 0 or not 0 < self.backoff_min <= self.backoff_max:
            raise AuxError(Errno.EINVAL, "supervisor: need intensity >= 0, period > 0, 0 < backoff_min <= backoff_max")
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise AuxError(Errno.EINVAL, f"process names must be unique: {names}")
        for c in self.children:
            c.check()
        return self


@dataclass
class Supervised:
    spec: ChildSpec
    machine: object
    proc: Proc | None = None
    restarts: int = 0
    failures: int = 0               # consecutive, for the backoff
    last_exit: str = ""
    started_at: float = 0.0
    due: float = 0.0
    operator_stopped: bool = False
    history: list = field(default_factory=list)

    @property
    def state(self) -> ProcState:
        return self.machine.state


def describe_exit(code: int | None, we_stopped: bool) -> tuple[str, bool]:
    """(reason, abnormal) for an exit status as Popen reports it."""
    if code == 0:
        return "exited 0", False
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if we_stopped and -code in (signal.SIGTERM, signal.SIGKILL):
            return f"stopped ({name})", False
        return f"killed by {name}", True
    return f"exited {code}", True


class Supervisor:
    def __init__(self, spec: SupervisorSpec, runtime_dir=None, echo=print, log_dir: str | None = None):
        self.spec = spec.check()
        self.ep = endpoints(runtime_dir)
        self.echo = echo
        self.log_dir = log_dir or str(self.ep.root)
        self.procs = [Supervised(c, proc_machine(c.name)) for c in spec.children]
        self.by_name = {p.spec.name: p for p in self.procs}
        self.restart_times: list[float] = []
        self.gave_up: str | None = None
        self._stop = False
        self._lock_fd: int | None = None
        self._made_dir = False

    # ---- the runtime dir and the control socket ----------------------------------------

    def _claim(self) -> None:
        root = self.ep.root
        if not root.exists():
            root.mkdir(mode=0o700, parents=True)
            self._made_dir = True
        fd = os.open(root / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuxError(Errno.EBUSY, f"another 'auxipc up' already supervises {root}") from None
        self._lock_fd = fd
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"ipc://{root / 'up.sock'}")

    def _close_control(self) -> None:
        """Take no more requests: a client waiting on one sees ``up.sock`` go and stops
        waiting (supervisor_client), instead of waiting out its timeout while we stop."""
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
            try:
                (self.ep.root / "up.sock").unlink()
            except FileNotFoundError:
                pass

    def _release(self) -> None:
        self._close_control()
        self.ctx.term()
        for name in ("up.sock", "up.lock"):
            try:
                (self.ep.root / name).unlink()
            except FileNotFoundError:
                pass
        os.close(self._lock_fd)
        for p in self.procs:
            try:
                Path(p.proc.log_path if p.proc else "").unlink()
            except (FileNotFoundError, IsADirectoryError, OSError):
                pass
        if self._made_dir:
            try:
                self.ep.root.rmdir()
            except OSError:
                pass

    # ---- lifecycle ------------------------------------------------------------------------

    def up(self) -> None:
        self._claim()
        try:
            for p in self.procs:
                self._start(p)
                if p.state is not ProcState.RUNNING:
                    raise AuxError(Errno.ESHUTDOWN, f"{p.spec.name} did not start: {p.last_exit}")
        except BaseException:
            self.down()
            self._release()
            raise

    def _start(self, p: Supervised) -> None:
        p.machine.fire(ProcEvent.START)
        p.operator_stopped = False
        p.proc = Proc(p.spec.name, [*p.spec.argv, "--runtime-dir", str(self.ep.root)], log_dir=self.log_dir)
        try:
            p.proc.start(ready_timeout=15.0)
        except AuxError as exc:
            p.last_exit = exc.message
            self._exited(p, abnormal=True, reason=f"failed to start: {exc.message}")
            return
        p.machine.fire(ProcEvent.READY)
        p.started_at = time.monotonic()
        self.echo(f"up: {p.spec.name} running (pid {p.proc.pid})")

    def _terminate(self, p: Supervised, grace: float | None = None) -> None:
        if p.proc is not None and p.proc.popen is not None and p.proc.popen.returncode is None:
            code = p.proc.stop(self.spec.grace if grace is None else grace)
            p.last_exit, _ = describe_exit(code, we_stopped=True)

    def down(self) -> None:
        """Stop everything, in reverse start order."""
        for p in reversed(self.procs):
            p.operator_stopped = True
            self._terminate(p)
            if p.machine.can(ProcEvent.STOP):
                p.machine.fire(ProcEvent.STOP)

    # ---- exits and restarts ------------------------------------------------------------------

    def reap(self) -> None:
        for p in self.procs:
            if p.state is ProcState.RUNNING and p.proc.popen.poll() is not None:
                reason, abnormal = describe_exit(p.proc.popen.returncode, we_stopped=False)
                p.proc.stop(0)     # closes its pipes; already reaped
                self._exited(p, abnormal, reason)

    def _exited(self, p: Supervised, abnormal: bool, reason: str) -> None:
        p.last_exit = reason
        p.history.append((time.time(), reason))
        self.echo(f"up: {p.spec.name} {reason}")
        restart = (p.spec.restart == "permanent" or (p.spec.restart == "transient" and abnormal))
        if not restart or p.operator_stopped or self._stop:
            p.machine.fire(ProcEvent.EXIT_FINAL)
            return
        now = time.monotonic()
        self.restart_times = [t for t in self.restart_times if now - t < self.spec.period] + [now]
        if len(self.restart_times) > self.spec.intensity:
            self.gave_up = (f"more than {self.spec.intensity} restarts within {self.spec.period:.0f} s "
                            f"(last: {p.spec.name} {reason}); giving up")
            p.machine.fire(ProcEvent.GIVE_UP)
            return
        if p.started_at and now - p.started_at >= self.spec.period:
            p.failures = 0
        p.failures += 1
        # The first restart is immediate (OTP's); consecutive ones back off from backoff_min, doubling.
        delay = 0.0 if p.failures == 1 else min(self.spec.backoff_max, self.spec.backoff_min * 2 ** (p.failures - 2))
        group = self._group(p)
        p.machine.fire(ProcEvent.EXIT_RESTART)
        for q in group:
            if q is not p and q.state is ProcState.RUNNING:
                self._terminate(q)
                q.machine.fire(ProcEvent.RESTART)
            q.due = now + delay
        self.echo(f"up: restarting {', '.join(q.spec.name for q in group)} in {delay:.2f} s")

    def _group(self, p: Supervised) -> list[Supervised]:
        """Who restarts with ``p`` under the strategy, in start order."""
        if self.spec.strategy == "one_for_all":
            return [q for q in self.procs if q.state in (ProcState.RUNNING, ProcState.BACKOFF) or q is p]
        if self.spec.strategy == "rest_for_one":
            i = self.procs.index(p)
            return [p, *(q for q in self.procs[i + 1:] if q.state in (ProcState.RUNNING, ProcState.BACKOFF))]
        return [p]

    def restart_due(self) -> None:
        now = time.monotonic()
        for p in self.procs:          # start order
            if p.state is ProcState.BACKOFF and now >= p.due:
                p.restarts += 1
                self._start(p)

    # ---- operator commands ------------------------------------------------------------------

    def ps(self) -> list[dict]:
        now = time.monotonic()
        return [{"name": p.spec.name, "pid": p.proc.pid if p.proc and p.state is ProcState.RUNNING else None,
                 "state": p.state.value, "restart": p.spec.restart, "restarts": p.restarts,
                 "uptime_s": round(now - p.started_at, 1) if p.state is ProcState.RUNNING else None,
                 "last_exit": p.last_exit, "args": p.spec.argv} for p in self.procs]

    def command(self, op: str, name: str) -> dict:
        if op == "ps":
            return {"processes": self.ps(), "gave_up": self.gave_up}
        if op == "down":
            self._stop = True
            return {}
        p = self.by_name.get(name)
        if p is None:
            raise AuxError(Errno.ENOENT, f"no process {name!r} (processes: {', '.join(self.by_name)})")
        if op == "stop":
            p.operator_stopped = True
            self._terminate(p)
            p.machine.fire(ProcEvent.STOP)
        elif op == "start":
            if p.state in (ProcState.RUNNING, ProcState.STARTING):
                raise AuxError(Errno.EBUSY, f"{name} is already {p.state.value}")
            self._start(p)
        elif op == "restart":
            p.operator_stopped = True
            self._terminate(p)
            p.machine.fire(ProcEvent.STOP)
            self._start(p)
        else:
            raise AuxError(Errno.EOPNOTSUPP, f"unknown supervisor op {op!r} (ps, stop, start, restart, down)")
        return {"process": next(x for x in self.ps() if x["name"] == name)}

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM, ``auxipc down`` or giving up; then stop everything."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: setattr(self, "_stop", True))
        try:
            while not self._stop and not self.gave_up:
                if self._wait(0.05):
                    self._serve()
                self.reap()
                self.restart_due()
        finally:
            self._close_control()
            self.down()
            self._release()
        if self.gave_up:
            self.echo(f"up: {self.gave_up}")
            return 1
        return 0

    def _wait(self, longest: float) -> bool:
        """Wait for a request, a process exit or the next restart due, at most ``longest``
        seconds; whether a request is waiting."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        for p in self.procs:
            fd = p.proc.exit_fd() if p.state is ProcState.RUNNING and p.proc is not None else None
            if fd is not None:
                poller.register(fd, zmq.POLLIN)
        due = [p.due for p in self.procs if p.state is ProcState.BACKOFF]
        timeout = min([longest, *(d - time.monotonic() for d in due)])
        ready = dict(poller.poll(max(0, math.ceil(timeout * 1000))))
        return self.sock in ready

    def _serve(self) -> None:
        frames = self.sock.recv_multipart()
        ident, body = frames[0], frames[1:]
        try:
            msg, _ = E.decode(body)
            if not isinstance(msg, E.Ctl):
                raise AuxError(Errno.EPROTO, "expected a CTL message")
            data = self.command(msg.op, getattr(ctl_args(msg.op, msg.args, UP_ARGS), "name", ""))
            reply = E.Result(r=msg.r, d=data)
        except AuxError as exc:
            reply = E.Result(r=getattr(locals().get("msg"), "r", 0), e=exc.code, m=exc.message)
        self.sock.send_multipart([ident, *E.encode(reply)])


def supervisor_client(runtime_dir, op: str, name: str = "", timeout: float = 30.0) -> dict:
    """Ask the ``auxipc up`` of a runtime dir to do ``op``."""
    ep = endpoints(runtime_dir)
    path = ep.root / "up.sock"
    if not path.exists():
        raise AuxError(Errno.ENOTCONN, f"no supervisor in {ep.root}: start one with 'auxipc up'")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{path}")
        sock.send_multipart(E.encode(E.Ctl(r=1, op=op, args={"name": name})))
        deadline = time.monotonic() + timeout
        while not sock.poll(100):
            if not path.exists():
                raise AuxError(Errno.ESHUTDOWN, f"the supervisor in {ep.root} is shutting down")
            if time.monotonic() > deadline:
                raise AuxError(Errno.ETIMEDOUT, f"the supervisor in {ep.root} did not answer '{op}'")
        msg, _ = E.decode(sock.recv_multipart())
        if msg.e:
            raise AuxError(msg.e, msg.m)
        return msg.d
    finally:
        sock.close(linger=0)
        ctx.term()
