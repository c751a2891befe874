"""The driver core's operations on one device, each an object: probe, remove,
suspend/resume, shutdown, and ``Sequence`` to run operations one after another.

An operation runs under the device's ``device_lock`` (a ``LockedOp``), as the
kernel holds it across probe, remove, PM and shutdown: it queues for the lock,
sends its request to the driver's process, and ends exactly once — with the
request's answer, the callee's death, or when it is dropped from the lock's
queue before it started (the device was deleted or unbound). Its continuation
(``done``) is called once, after the lock is released. Like ``SyncCall``, the
steps are methods of one object, not closures made per step.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

from auxipc.broker.lifecycle import BindEvent, BindState, DeviceState
from auxipc.broker.lockdep import LockedOp
from auxipc.broker.records import Adopted, Device, Driver, Host
from proto import envelope as E
from proto.errno import Errno, errno_name

log = logging.getLogger("auxipc.broker")

PM_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 2.0

ADDED = DeviceState.ADDED
BOUND, PROBING, REMOVING = BindState.BOUND, BindState.PROBING, BindState.REMOVING
NOT_ADOPTED = Adopted(None, 0)

Step = Callable[[Callable[[], None]], None]


class Sequence:
    """Run steps one after another, then ``done``. A step is called with the
    continuation it must call once (bus_for_each_dev with a callback that sleeps)."""

    __slots__ = ("steps", "done")

    def __init__(self, steps: Iterable[Step], done: Callable[[], None]):
        self.steps, self.done = iter(steps), done

    def run(self) -> None:
        step = next(self.steps, None)
        if step is None:
            self.done()
        else:
            step(self.run)


def schema_clash(dev: Device, drv: Driver) -> str:
    """Why ``drv`` may not bind ``dev`` ('' if it may): no contract across schema majors."""
    p, c = dev.parent.schema, drv.peer.schema
    if p[0] == c[0]:
        return ""
    return (f"bind refused: driver {drv.name} ({drv.peer.label}) speaks schema {c[0]}.{c[1]}, "
            f"parent {dev.parent.name} of {dev.name} speaks {p[0]}.{p[1]}: major versions differ")


def unbound(host: Host, dev: Device, drv: Driver, reason: str) -> None:
    """``dev`` lost its driver: what was queued for the driver fails, the parent is told."""
    dev.lock.cancel_queued(f"{dev.name} was unbound ({reason})")
    host.uevent("UNBIND", dev.name, drv.name, reason=reason)
    if dev.parent.alive:
        host.send(dev.parent.ident, E.Unbind(dev=dev.dev_id, reason=reason))


class HungWatch:
    """The hung-task detector for one operation that has no deadline (probe, remove):
    after ``host.hung_task_secs`` a WARN record (and ``dev.hung`` for ``ls``); when the
    operation ends after that, a HUNG_TASK_END record with how long it took."""

    __slots__ = ("host", "dev", "drv", "op", "task", "since", "timer")

    def __init__(self, host: Host, dev: Device, drv: Driver, op: str, task: str):
        self.host, self.dev, self.drv, self.op, self.task = host, dev, drv, op, task
        self.since = host.clock()
        self.timer = host.later(host.hung_task_secs, self.fire)

    def fire(self) -> None:
        dev, drv, secs = self.dev, self.drv, self.host.hung_task_secs
        dev.hung = (f"INFO: task {self.task} blocked for more than {secs:g} seconds: "
                    f"{self.op}() of {dev.name} by {drv.name} ({drv.peer.label}) has not returned")
        self.host.warn("hung_task", dev.hung, dev.name, drv.name, task=self.task, seconds=secs,
                       op=self.op, peer=drv.peer.label)

    def end(self, errno: int) -> None:
        host, dev = self.host, self.dev
        host.cancel(self.timer)
        if dev.hung:
            dev.hung = ""
            host.uevent("HUNG_TASK_END", dev.name, self.drv.name, task=self.task, op=self.op,
                        seconds=round(host.clock() - self.since, 3), errno=errno)


class ProbeHooks(Protocol):
    """What a probe's outcome triggers in the driver core (Binding)."""

    triggers: int       # deferred-probe triggers so far (deferred_trigger_count)

    def bound(self, dev: Device, drv: Driver) -> None: ...
    def deferred(self, dev: Device, drv: Driver, retrigger: bool) -> None: ...
    def refused(self, dev: Device, drv: Driver, why: str) -> None: ...


class Probe:
    """Probe ``dev`` with each driver in turn until one binds (__device_attach:
    driver_probe_device for each matching driver), each attempt under the device
    lock. Whatever a probe returns — a rejection (-ENODEV/-ENXIO), a failure or
    -EPROBE_DEFER — the next driver tries its luck (__device_attach_driver ignores
    probe errors); a deferral also puts the device on the deferred list. The last
    attempt's errno is left in ``dev.last_probe``."""

    __slots__ = ("host", "hooks", "dev", "drivers", "task", "done", "drv", "lock_op", "triggers", "watch")

    def __init__(self, host: Host, hooks: ProbeHooks, dev: Device, drivers: list[Driver], task: str,
                 done: Callable[[], None]):
        self.host, self.hooks, self.dev, self.task, self.done = host, hooks, dev, task, done
        self.drivers = list(drivers)
        # Set by run() and locked() before any later step reads them.
        self.drv: Driver = None            # type: ignore[assignment]
        self.lock_op: LockedOp = None      # type: ignore[assignment]
        self.triggers = 0
        self.watch: HungWatch = None       # type: ignore[assignment]

    def run(self) -> None:
        dev, host = self.dev, self.host
        while self.drivers and dev.life.state is ADDED and dev.driver is None:
            drv = self.drivers.pop(0)
            if not drv.peer.alive or host.drivers.get(drv.name) is not drv:
                continue
            why = schema_clash(dev, drv)
            if why:
                self.hooks.refused(dev, drv, why)
                continue
            self.drv = drv
            self.lock_op = LockedOp(f"probe {dev.name} by {drv.name}", self.locked, self.dropped, self.task)
            dev.lock.run(self.lock_op)
            return
        self.done()

    def dropped(self, _reason: str) -> None:
        self.done()

    def locked(self, op: LockedOp) -> None:
        dev, drv = self.dev, self.drv
        if dev.life.state is not ADDED or dev.driver is not None or not drv.peer.alive:
            dev.lock.release(op)
            return self.done()
        dev.bind.fire(BindEvent.PROBE)
        dev.prober = drv
        self.triggers = self.hooks.triggers
        # No deadline, as really_probe has none: a long probe is reported, and ends early
        # only if the driver's process dies.
        self.watch = HungWatch(self.host, dev, drv, "probe", self.task)
        self.host.request(drv.peer, self.message, None, None, f"probe of {dev.name} by {drv.name}",
                          self.answered)

    def message(self, rid: int) -> E.Probe:
        dev, drv = self.dev, self.drv
        parent = dev.parent
        return E.Probe(r=rid, dev=dev.dev_id, name=dev.name, driver=drv.name, task=self.task,
                       adopt=drv.peer.adopt.get(dev.name, NOT_ADOPTED).driver == drv.name,
                       parent_handles=sorted(parent.handles), parent_schema=parent.schema, attrs=dev.attrs)

    def answered(self, e: int, m: str, _p, _d) -> None:
        """The probe's result, still under the device lock (the kernel binds before it
        unlocks: what queued behind the probe finds the driver bound)."""
        dev, drv = self.dev, self.drv
        self.watch.end(e)
        dev.last_probe = e
        dev.prober = None
        if e == 0:
            dev.bind.fire(BindEvent.PROBE_OK)
            dev.driver = drv
            dev.defer_delay = 0.0
            dev.last_error = ""
            self.hooks.bound(dev, drv)
            dev.lock.release(self.lock_op)
            return self.done()
        if e in (-Errno.ENODEV, -Errno.ENXIO):
            dev.bind.fire(BindEvent.PROBE_REJECT)
        elif e == -Errno.EPROBE_DEFER:
            dev.bind.fire(BindEvent.PROBE_DEFER)
            dev.deferred = True
            dev.last_error = f"probe by {drv.name} deferred"
            self.host.uevent("PROBE_DEFER", dev.name, drv.name)
            # A driver bound while this probe ran: it may be what the probe waited for
            # (driver_probe_device re-triggers when deferred_trigger_count moved).
            self.hooks.deferred(dev, drv, retrigger=self.triggers != self.hooks.triggers)
        else:
            dev.bind.fire(BindEvent.PROBE_FAIL)
            dev.last_error = f"probe by {drv.name} failed: {errno_name(e)} {m}"
            log.warning("%s", dev.last_error)
            self.host.uevent("PROBE_FAILED", dev.name, drv.name, errno=e, error=errno_name(e), message=m)
        dev.lock.release(self.lock_op)
        self.run()


class Remove:
    """Unbind ``dev`` under its lock (__device_release_driver): the driver's remove()
    has returned, or its process is gone, before ``done``. remove() has no deadline,
    as in the kernel, where auxiliary_device_delete cannot return before it does: one
    still running after ``host.hung_task_secs`` is reported as the hung-task detector
    would, and it ends only when it returns or its process dies."""

    __slots__ = ("host", "dev", "reason", "task", "done", "drv", "lock_op", "watch")

    def __init__(self, host: Host, dev: Device, reason: str, task: str, done: Callable[[], None]):
        self.host, self.dev, self.reason, self.task, self.done = host, dev, reason, task, done
        # Set by run() and locked() before any later step reads them.
        self.drv: Driver = None            # type: ignore[assignment]
        self.lock_op: LockedOp = None      # type: ignore[assignment]
        self.watch: HungWatch = None       # type: ignore[assignment]

    def run(self) -> None:
        self.lock_op = LockedOp(f"remove {self.dev.name}", self.locked, self.dropped, self.task)
        self.dev.lock.run(self.lock_op)

    def dropped(self, _reason: str) -> None:
        self.done()

    def locked(self, op: LockedOp) -> None:
        dev = self.dev
        drv = dev.driver
        if drv is None or dev.bind.state is not BOUND:
            dev.lock.release(op)
            return self.done()
        self.drv = drv
        dev.bind.fire(BindEvent.REMOVE)
        self.watch = HungWatch(self.host, dev, drv, "remove", self.task)
        self.host.request(drv.peer, self.message, None, None, f"remove of {dev.name} by {drv.name}",
                          self.answered)

    def message(self, rid: int) -> E.Remove:
        return E.Remove(r=rid, dev=self.dev.dev_id, reason=self.reason, task=self.task)

    def answered(self, e: int, m: str, _p, _d) -> None:
        dev, drv = self.dev, self.drv
        self.watch.end(e)
        if e:
            log.warning("remove of %s by %s: %s %s (remove cannot fail: removed)", dev.name, drv.name,
                        errno_name(e), m)
        if dev.bind.state is REMOVING:
            dev.bind.fire(BindEvent.REMOVED)
            dev.driver = None
            unbound(self.host, dev, drv, self.reason)
        dev.lock.release(self.lock_op)
        self.done()


class Pm:
    """suspend() or resume() of the bound driver, driven by the parent, under the
    device lock; ``answer(errno, message)`` once."""

    __slots__ = ("host", "dev", "drv", "op", "task", "answer", "lock_op")

    def __init__(self, host: Host, dev: Device, drv: Driver, op: str, task: str,
                 answer: Callable[[int, str], None]):
        self.host, self.dev, self.drv, self.op, self.task, self.answer = host, dev, drv, op, task, answer
        self.lock_op: LockedOp = None      # type: ignore[assignment]  # set by run()

    def run(self) -> None:
        self.lock_op = LockedOp(f"{self.op} {self.dev.name}", self.locked, self.dropped, self.task)
        self.dev.lock.run(self.lock_op)

    def dropped(self, reason: str) -> None:
        self.answer(-Errno.ENODEV, reason)

    def locked(self, _op: LockedOp) -> None:
        dev, drv = self.dev, self.drv
        self.host.request(drv.peer, self.message, None, PM_TIMEOUT, f"{self.op} of {dev.name} by {drv.name}",
                          self.answered)

    def message(self, rid: int) -> E.Pm:
        return E.Pm(r=rid, dev=self.dev.dev_id, op=self.op, task=self.task)

    def answered(self, e: int, m: str, _p, _d) -> None:
        self.dev.lock.release(self.lock_op)
        if not e:
            self.host.uevent(self.op.upper(), self.dev.name, self.drv.name)
        self.answer(e, m)


class Shutdown:
    """shutdown() of ``dev``'s driver at bus shutdown, under the device lock."""

    __slots__ = ("host", "dev", "done", "drv", "lock_op")

    def __init__(self, host: Host, dev: Device, done: Callable[[], None]):
        self.host, self.dev, self.done = host, dev, done
        # Set by run() and locked() before any later step reads them.
        self.drv: Driver = None            # type: ignore[assignment]
        self.lock_op: LockedOp = None      # type: ignore[assignment]

    def run(self) -> None:
        self.lock_op = LockedOp(f"shutdown {self.dev.name}", self.locked, self.dropped, "bus/shutdown")
        self.dev.lock.run(self.lock_op)

    def dropped(self, _reason: str) -> None:
        self.done()

    def locked(self, op: LockedOp) -> None:
        dev = self.dev
        drv = dev.driver
        if drv is None or not drv.peer.alive:
            dev.lock.release(op)
            return self.done()
        self.drv = drv
        self.host.request(drv.peer, self.message, None, SHUTDOWN_TIMEOUT, f"shutdown of {dev.name}",
                          self.answered)

    def message(self, rid: int) -> E.Shutdown:
        return E.Shutdown(r=rid, dev=self.dev.dev_id)

    def answered(self, e: int, _m: str, _p, _d) -> None:
        self.dev.lock.release(self.lock_op)
        self.host.uevent("SHUTDOWN", self.dev.name, self.drv.name, errno=e)
        self.done()
