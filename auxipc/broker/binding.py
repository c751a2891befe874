"""The driver core (drivers/base/dd.c, bus.c): drivers, matching, probe and
remove, deferred probe, sysfs bind/unbind, suspend/resume and shutdown.

``Binding`` is a part of the bus: it sees the bus only through ``Host``
(records.py) and runs each probe, remove, PM and shutdown as an operation
object (ops.py). ``done`` continuations are called exactly once.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

from auxipc.broker.lanes import Lanes
from auxipc.broker.lifecycle import BindEvent, BindState, DeviceState
from auxipc.broker.ops import Pm, Probe, Remove, Sequence, Shutdown, schema_clash, unbound
from auxipc.broker.records import Device, Driver, Host, Peer, match_name
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name

log = logging.getLogger("auxipc.broker")

# The kernel retries deferred probes only when a driver binds somewhere. A probe may
# also wait for something that binds nothing (a parent's firmware, another process):
# the emulator also retries each deferred device on a timer that backs off, first
# and longest interval in seconds (docs/conformance.md lists it as an addition).
DEFER_RETRY = (0.1, 5.0)

# include/linux/mod_devicetable.h: struct auxiliary_device_id { char name[AUXILIARY_NAME_SIZE]; ... }
# (32 before v6.x raised it; current kernels use 40).
AUXILIARY_NAME_SIZE = 40

BOUND, PROBING, REMOVING, UNBOUND = BindState.BOUND, BindState.PROBING, BindState.REMOVING, BindState.UNBOUND


class Binding:
    def __init__(self, host: Host):
        self.host = host
        self.triggers = 0      # deferred-probe triggers so far (deferred_trigger_count)
        self.lanes = Lanes(host)    # direct child->parent lanes: granted at bind, revoked before unbind

    # ---- drivers ------------------------------------------------------------------

    def driver_register(self, peer: Peer, msg: E.DrvRegister) -> None:
        host = self.host
        if peer.role != "child":
            raise AuxError(Errno.EPERM, f"{peer.label}: only a child registers drivers")
        if not msg.name:
            raise AuxError(Errno.EINVAL, "$.header.name: driver name is empty")
        if not msg.probe:
            raise AuxError(Errno.EINVAL, f"driver {msg.name}: probe() is required")
        if not msg.id_table:
            raise AuxError(Errno.EINVAL, f"driver {msg.name}: id_table is empty")
        for i, name in enumerate(msg.id_table):
            if len(name.encode()) >= AUXILIARY_NAME_SIZE:
                raise AuxError(Errno.EINVAL, f"driver {msg.name}: $.header.id_table[{i}]: {name!r} is "
                               f"{len(name.encode())} bytes; auxiliary_device_id.name holds "
                               f"{AUXILIARY_NAME_SIZE - 1} (AUXILIARY_NAME_SIZE {AUXILIARY_NAME_SIZE}, NUL included)")
        if msg.name in host.drivers:
            other = host.drivers[msg.name].peer
            raise AuxError(Errno.EBUSY, f"driver {msg.name} is already registered by {other.label}")
        drv = Driver(msg.name, peer, tuple(msg.id_table), frozenset(msg.handles), msg.remove, msg.shutdown)
        host.drivers[msg.name] = drv
        peer.drivers.append(drv)
        host.uevent("DRIVER_ADD", driver=drv.name, id_table=list(drv.id_table))
        task = host.task_of(peer, msg)
        # driver_attach: every added device without a driver that matches.
        todo = [d for d in host.devices.values()
                if d.life.state is DeviceState.ADDED and d.bind.state is UNBOUND
                and match_name(d.name) in drv.id_table]
        refused = {d.name: why for d in todo if (why := schema_clash(d, drv))}

        def finish() -> None:
            host.reply(peer.ident, msg.r, data={
                "probed": [d.name for d in todo if d.name not in refused], "refused": refused})
        Sequence([partial(self.probe, d, [drv], task) for d in todo], finish).run()

    def driver_unregister(self, peer: Peer, msg: E.DrvUnregister) -> None:
        host = self.host
        drv = host.drivers.get(msg.name)
        if drv is None or drv.peer is not peer:
            raise AuxError(Errno.ENODEV, f"driver {msg.name} is not registered by {peer.label}")
        bound = [d for d in host.devices.values() if d.driver is drv]
        del host.drivers[drv.name]
        peer.drivers.remove(drv)
        task = host.task_of(peer, msg)

        def finish() -> None:
            host.uevent("DRIVER_REMOVE", driver=drv.name)
            host.reply(peer.ident, msg.r)
        Sequence([partial(self.remove, d, "driver unregistered", task) for d in bound], finish).run()

    def driver_gone(self, drv: Driver, reason: str) -> None:
        """The driver's process is gone: unbind its devices without calling remove()."""
        host = self.host
        host.drivers.pop(drv.name, None)
        if drv in drv.peer.drivers:
            drv.peer.drivers.remove(drv)
        for dev in list(host.devices.values()):     # unbinding may release a device
            if dev.driver is drv:
                self.lanes.revoke(dev, reason)
                dev.bind.fire(BindEvent.DRIVER_GONE)
                dev.driver = None
                unbound(host, dev, drv, reason)
        host.uevent("DRIVER_REMOVE", driver=drv.name, reason=reason)

    # ---- matching, probe, remove --------------------------------------------------------

    def candidates(self, dev: Device) -> list[Driver]:
        m = match_name(dev.name)
        return [d for d in self.host.drivers.values() if m in d.id_table]

    def probe(self, dev: Device, drivers: list[Driver], task: str, done: Callable[[], None]) -> None:
        """Probe ``dev`` with ``drivers`` in turn until one binds, then ``done``."""
        Probe(self.host, self, dev, drivers, task, done).run()

    def remove(self, dev: Device, reason: str, task: str, done: Callable[[], None]) -> None:
        """Unbind under the device lock: the child's remove() completes before ``done``.
        The device's lane is revoked first (the parent hears it before UNBIND)."""
        self.lanes.revoke(dev, f"remove: {reason}")
        Remove(self.host, dev, reason, task, done).run()

    # ProbeHooks: what a probe's outcome triggers.

    def bound(self, dev: Device, drv: Driver) -> None:
        """driver_bound: off the deferred list; every deferred device is retried."""
        host = self.host
        dev.deferred = False
        host.cancel(dev.defer_timer)
        dev.defer_timer = None
        adopted = drv.peer.adopt.pop(dev.name, None)
        if adopted is not None and adopted.refs > 0:
            dev.refs[drv.peer.label] += adopted.refs      # the references it held before
            drv.peer.holding[dev.dev_id] += adopted.refs
        host.uevent("BIND", dev.name, drv.name, modalias=f"auxiliary:{match_name(dev.name)}",
                    **({"adopted": True} if adopted else {}))
        if dev.parent.alive:
            host.send(dev.parent.ident, E.Bind(dev=dev.dev_id, driver=drv.name, inc=drv.peer.inc,
                                               handles=sorted(drv.handles), schema=drv.peer.schema))
        self.lanes.grant(dev)
        self.retry_deferred(f"a driver bound: {drv.name} to {dev.name}")

    def deferred(self, dev: Device, _drv: Driver, retrigger: bool) -> None:
        """driver_deferred_probe_add, and the emulator's backoff timer for ``dev``."""
        host = self.host
        if retrigger:
            self.retry_deferred("a driver bound while its probe ran")
        if dev.defer_timer is None or not dev.defer_timer.live:
            lo, hi = DEFER_RETRY
            dev.defer_delay = min(hi, dev.defer_delay * 2 if dev.defer_delay else lo)
            dev.defer_timer = host.later(dev.defer_delay, self.retry, dev, f"retry timer ({dev.defer_delay:g} s)")

    def refused(self, dev: Device, drv: Driver, why: str) -> None:
        """Matching refuses to probe across majors: the device stays unbound, both sides
        are told (an UNBIND notice for a device they never had bound) and ``ls`` shows it."""
        host = self.host
        dev.last_error = why
        log.warning("%s", why)
        host.uevent("BIND_REFUSED", dev.name, drv.name, reason=why,
                    parent_schema=".".join(map(str, dev.parent.schema)),
                    driver_schema=".".join(map(str, drv.peer.schema)))
        for peer in (dev.parent, drv.peer):
            if peer.alive:
                host.send(peer.ident, E.Unbind(dev=dev.dev_id, reason=why))

    def retry(self, dev: Device, reason: str) -> None:
        """deferred_probe_work_func for one device: every matching driver tries again."""
        if dev.life.state is DeviceState.ADDED and dev.deferred and dev.bind.state is UNBOUND:
            self.host.uevent("DEFERRED_PROBE", dev.name, reason=reason)
            self.probe(dev, self.candidates(dev), "bus/deferred-probe", lambda: None)

    def retry_deferred(self, reason: str) -> None:
        """driver_deferred_probe_trigger: a bind may satisfy deferred probes; each
        deferred device is probed again, from the bus's own work (not inside the bind)."""
        self.triggers += 1
        for dev in list(self.host.devices.values()):
            if dev.deferred:
                self.host.later(0, self.retry, dev, reason)

    # ---- sysfs bind / unbind, PM, shutdown -------------------------------------------------

    def bind_device(self, name: str, driver: str, done: Callable[[int, str], None]) -> None:
        """``echo DEV > /sys/bus/auxiliary/drivers/DRV/bind``."""
        host = self.host
        dev = host.by_name.get(name)
        drv = host.drivers.get(driver)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"bind: no device {name!r} on the bus")
        if drv is None:
            raise AuxError(Errno.ENODEV, f"bind: no driver {driver!r} registered")
        if match_name(dev.name) not in drv.id_table:
            raise AuxError(Errno.ENODEV, f"bind: {dev.name} does not match {drv.name} "
                           f"(match name {match_name(dev.name)!r}, id_table {list(drv.id_table)})")
        if dev.bind.state in (BOUND, PROBING, REMOVING):
            raise AuxError(Errno.EBUSY, f"bind: {dev.name} is {dev.bind.state.value}"
                           + (f" to {dev.driver.name}" if dev.driver else ""))

        def finished() -> None:
            e = dev.last_probe
            if dev.driver is drv:
                return done(0, "")
            if e == -Errno.EPROBE_DEFER:
                return done(-Errno.EAGAIN, f"bind: probe of {dev.name} by {drv.name} deferred")
            done(e or -Errno.ENODEV, f"bind: {drv.name} did not bind {dev.name}: {dev.last_error or errno_name(e)}")
        self.probe(dev, [drv], "sysfs/bind", finished)

    def unbind_device(self, name: str, done: Callable[[int, str], None], driver: str = "") -> None:
        """``echo DEV > /sys/bus/auxiliary/drivers/DRV/unbind`` (unbind_store): -ENODEV
        unless DRV is bound to DEV; without ``driver``, whichever driver is bound."""
        dev = self.host.by_name.get(name)
        if dev is None or dev.driver is None or dev.bind.state is not BOUND:
            raise AuxError(Errno.ENODEV, f"unbind: {name} is not bound to a driver")
        if driver and dev.driver.name != driver:
            raise AuxError(Errno.ENODEV, f"unbind: {name} is bound to {dev.driver.name}, not {driver}")
        self.remove(dev, "unbound through sysfs", "sysfs/unbind", lambda: done(0, ""))

    def dev_pm(self, peer: Peer, dev: Device, msg: E.DevPm) -> None:
        """The parent suspends/resumes its device's driver under device_lock."""
        if msg.op not in ("suspend", "resume"):
            raise AuxError(Errno.EINVAL, f"$.header.op: {msg.op!r} is not 'suspend' or 'resume'")
        drv = dev.driver
        if drv is None or dev.bind.state is not BOUND:
            raise AuxError(Errno.ENODEV, f"{msg.op}: {dev.name} has no bound driver")
        host = self.host
        if msg.op == "suspend":
            self.lanes.revoke(dev, "suspend")

        def answer(e: int, m: str) -> None:
            if msg.op == "resume" and not e and dev.driver is drv and dev.bind.state is BOUND:
                self.lanes.grant(dev)
            host.reply(peer.ident, msg.r, e, m)
        Pm(host, dev, drv, msg.op, host.task_of(peer, msg), answer).run()

    def shutdown_all(self, done: Callable[[], None]) -> None:
        """Bus shutdown: call shutdown() of every bound driver that has one."""
        bound = [d for d in self.host.devices.values() if d.driver is not None and d.driver.has_shutdown]
        Sequence([partial(self.shutdown, d) for d in bound], done).run()

    def shutdown(self, dev: Device, done: Callable[[], None]) -> None:
        self.lanes.revoke(dev, "shutdown")
        Shutdown(self.host, dev, done).run()

