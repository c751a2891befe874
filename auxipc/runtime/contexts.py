"""Tasks, cross-process locks, handler contexts and fault points: the part of a
peer runtime that says *in what context* code runs.

A part of ``Runtime`` (peer.py), built with its host (host.py). It owns the task
stack, the locks held on this stack and the atomic context; the dispatch part
reads ``tasks`` and ``held`` (which deliveries must wait) and is told through
``on_release`` when a lock held here is released (what waited may run now).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from typing import Callable, Iterator

from auxipc.faults import SIGNALS
from auxipc.runtime.host import Host
from auxipc.runtime.where import caller_site, code_site
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Context, EventSpec

log = logging.getLogger("auxipc.peer")
_ATOMIC = Context.ATOMIC
ATOMIC_BUDGET = 0.005  # an atomic-context handler running longer than this is reported
# With AUXIPC_ATOMIC_CPU=1 (the auxbus fixture sets it) an overrun is a contract bug only
# if the handler's thread also spent the budget on the CPU: time it was preempted on a
# loaded machine is not the handler's doing, and a test must not fail on it. Off by
# default: reading a thread's CPU clock costs a system call per atomic handler.
ATOMIC_CPU_ENV = "AUXIPC_ATOMIC_CPU"


class Contexts:
    def __init__(self, host: Host):
        self.host = host
        self.faults, self.stats = host.faults, host.stats      # same objects for the runtime's life
        self.tasks: list[str] = []               # the task stack: top is what runs now
        self.held: dict[str, list[str]] = {}     # lock name -> tasks on this stack holding it
        self.atomic: tuple | None = None         # (spec, who) of the atomic-context handler running
        self.atomic_budget = ATOMIC_BUDGET
        self.cpu_clock = time.thread_time if os.environ.get(ATOMIC_CPU_ENV) == "1" else None
        self.on_release: Callable[[], None] = lambda: None
        self._task_ids = itertools.count(1)

    @property
    def task(self) -> str:
        """The task running now: a handler runs in its caller's task (the chain crosses
        processes, as a kernel call would); top-level code and each timer callback
        (a workqueue item) have tasks of their own."""
        return self.tasks[-1] if self.tasks else f"{self.host.name}#{self.host.inc}/main"

    @contextlib.contextmanager
    def in_task(self, task: str) -> Iterator[None]:
        self.tasks.append(task)
        try:
            yield
        finally:
            self.tasks.pop()

    def new_task(self, kind: str = "w") -> str:
        return f"{self.host.name}#{self.host.inc}/{kind}{next(self._task_ids)}"

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 5.0, ensure: bool = False) -> Iterator[None]:
        """Hold a cross-process lock (``rtnl``, ``mutex:<name>``) for the current task.
        -EDEADLK at once if waiting would deadlock (lockdep), -ETIMEDOUT at the deadline.
        With ``ensure``, a lock the task already holds is fine (and stays held after)."""
        host, task = self.host, self.task
        ms = max(1, int(timeout * 1000))
        below = tuple(t for t in self.tasks[:-1] if t != task)
        holders = self.held.setdefault(name, [])
        holders.append(task)      # from the request on: nested deliveries needing it wait
        asked = time.monotonic()
        try:
            result, _ = host.request(lambda r: E.LockReq(r=r, name=name, task=task, timeout_ms=ms,
                                                         ensure=ensure, stack=below),
                                     timeout=timeout, what=f"lock {name}")
            if result.e == -Errno.EDEADLK:
                host.bug("deadlock", result.m, caller_site(), lock=name)
            host.check(result, f"lock {name}")
        except BaseException:
            holders.remove(task)
            self.on_release()
            raise
        already = result.d.get("held", False)
        if result.d.get("inversion"):     # lockdep saw this take close a cycle of lock classes
            host.bug("lock_inversion", result.d["inversion"], caller_site(), lock=name)
        if already:
            holders.remove(task)
        else:   # the trace shows how long the lock took to get (queueing and the round trip)
            host.report("LOCK_WAIT", lock=name, us=int((time.monotonic() - asked) * 1e6))
        try:
            yield
        finally:
            if not already:
                self.held[name].remove(task)
                if host.tr.up:
                    result, _ = host.request(lambda r: E.UnlockReq(r=r, name=name, task=task),
                                             what=f"unlock {name}")
                    if result.e:
                        log.warning("unlock %s: %s", name, result.m)
                self.on_release()

    def atomic_context(self) -> str | None:
        """What runs in atomic context now (``<EVENT> handler of <who>``), if anything."""
        return None if self.atomic is None else f"{self.atomic[0].name} handler of {self.atomic[1]}"

    def might_sleep(self, what: str) -> None:
        """The kernel's might_sleep(): refuse to block in atomic context."""
        if self.atomic is not None:
            self.stats["sleep_in_atomic"] += 1
            context = self.atomic_context()
            msg = f"BUG: sleeping function called from invalid context: {what} in {context}"
            log.error("%s", msg)
            self.host.report("SLEEP_IN_ATOMIC", what=what, context=context)
            self.host.bug("sleep_in_atomic", msg, caller_site(), what=what, context=context)
            raise AuxError(Errno.EAGAIN, msg)

    def fault_point(self, point: str, event: str = "") -> None:
        """A lifecycle point where a kill fault may strike this process."""
        rule = self.faults.find("kill", self.host.name, event, point) if self.faults.rules else None
        if rule is not None:
            self.host.report("FAULT", rule=rule.id, kind="kill", point=point, event=event, signal=rule.signal)
            log.warning("fault: SIG%s at %s %s", rule.signal, point, event)
            time.sleep(0.02)   # let the I/O thread flush the FAULT record before we die
            os.kill(os.getpid(), SIGNALS[rule.signal.upper()])

    def sent_fault(self, event: str) -> None:
        """The fault points after a sync event left: ``send``, and ``reset`` for RESET_WARN."""
        self.fault_point("send", event)
        if event == "RESET_WARN":
            self.fault_point("reset", event)

    def _handler_fault(self, spec: EventSpec):
        """Apply a handler fault for ``spec`` if one fires: returns a result to use instead
        of calling the handler, or None to call it (after an injected delay)."""
        rule = self.faults.find("handler", self.host.name, spec.name) if self.faults.rules else None
        if rule is None:
            return None
        self.host.report("FAULT", rule=rule.id, kind="handler", action=rule.action, event=spec.name)
        if rule.action == "delay":
            time.sleep(rule.delay_ms / 1000)
            return None
        if rule.action == "hang":
            while not self.host.stopping:   # a wedged handler: heartbeats go on, callers time out
                time.sleep(0.05)
            return -Errno.ESHUTDOWN
        if rule.action == "raise":
            raise RuntimeError(f"injected fault in the {spec.name} handler (rule #{rule.id})")
        raise AuxError(Errno[rule.errno.upper()], f"injected fault (rule #{rule.id})")

    def invoke(self, spec: EventSpec, fn, adev, value, who: str, rtnl_held: bool = False):
        """Call an event handler in the context its event declares: atomic (no sleeping,
        time budget) or may-sleep. For events the kernel sends under rtnl the broker
        holds rtnl for the task while the handler runs (``rtnl_held``)."""
        if not rtnl_held:
            return self.run_handler(spec, fn, adev, value, who)
        holders = self.held.get("rtnl")
        if holders is None:
            holders = self.held["rtnl"] = []
        task = self.task
        holders.append(task)
        try:
            return self.run_handler(spec, fn, adev, value, who)
        finally:
            holders.remove(task)
            self.on_release()

    def run_handler(self, spec, fn, adev, value, who):
        """Run a handler in its event's context: atomic (sleeping is a BUG, time budget
        reported) or may-sleep. Plain try/finally: this runs once an event."""
        if self.faults.rules:
            injected = self._handler_fault(spec)
            if injected is not None:
                return injected
        if spec.context is not _ATOMIC:
            return fn(adev, value)
        outer, self.atomic = self.atomic, (spec, who)    # named only if a BUG is reported
        cpu = self.cpu_clock
        c0 = cpu() if cpu is not None else 0.0
        t0 = time.monotonic()
        try:
            return fn(adev, value)
        finally:
            took = time.monotonic() - t0
            if took > self.atomic_budget:
                self._overrun(self.atomic_context(), took, fn, cpu() - c0 if cpu is not None else None)
            self.atomic = outer

    def _overrun(self, what: str, took: float, fn=None, cpu: float | None = None) -> None:
        self.stats["atomic_overrun"] += 1
        msg = f"BUG: {what} ran {took * 1000:.1f} ms in atomic context (budget {self.atomic_budget * 1000:.1f} ms)"
        log.warning("%s", msg)
        self.host.report("ATOMIC_OVERRUN", what=what, ms=round(took * 1000, 3),
                         budget_ms=self.atomic_budget * 1000)
        if cpu is None or cpu > self.atomic_budget:
            self.host.bug("atomic_overrun", msg + (f", {cpu * 1000:.1f} ms of it on the CPU" if cpu is not None else ""),
                          code_site(fn), ms=round(took * 1000, 3))
