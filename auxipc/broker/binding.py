"""The driver core half of the bus: drivers, matching, probe/remove, the device
lifecycle, references, sysfs-like bind/unbind, suspend/resume and shutdown.

A mixin of ``Bus`` (bus.py): it uses the bus's plumbing (``send``, ``reply``,
``uevent``, ``request``, ``later``) and tables (``devices``, ``drivers``).
Asynchronous steps (a probe is a request to another process) continue in
callbacks; ``done`` callbacks are called exactly once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from auxipc.broker.lifecycle import BindState, DeviceState, bind_machine, device_machine
from auxipc.broker.lockdep import Lock, LockedOp

if TYPE_CHECKING:
    from auxipc.broker.bus import Device, Driver, Peer

log = logging.getLogger("auxipc.broker")

PROBE_TIMEOUT = 10.0
REMOVE_TIMEOUT = 10.0
PM_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 2.0
DEFER_RETRY = (0.1, 5.0)   # first and longest deferred-probe retry interval, seconds


class Binding:
    # ---- drivers ------------------------------------------------------------------

    def driver_register(self, peer: "Peer", msg: E.DrvRegister) -> None:
        from auxipc.broker.bus import Driver, match_name
        if peer.role != "child":
            raise AuxError(Errno.EPERM, f"{peer.label}: only a child registers drivers")
        if not msg.name:
            raise AuxError(Errno.EINVAL, "$.header.name: driver name is empty")
        if not msg.probe:
            raise AuxError(Errno.EINVAL, f"driver {msg.name}: probe() is required")
        if not msg.id_table:
            raise AuxError(Errno.EINVAL, f"driver {msg.name}: id_table is empty")
        if msg.name in self.drivers:
            other = self.drivers[msg.name].peer
            raise AuxError(Errno.EBUSY, f"driver {msg.name} is already registered by {other.label}")
        drv = Driver(msg.name, peer, tuple(msg.id_table), frozenset(msg.handles), msg.remove, msg.shutdown)
        self.drivers[msg.name] = drv
        peer.drivers.append(drv)
        self.uevent("DRIVER_ADD", driver=drv.name, id_table=list(drv.id_table))
        task = self.task_of(peer, msg)
        todo = [d for d in self.devices.values()
                if d.life.state is DeviceState.ADDED and d.bind.state in (BindState.UNBOUND, BindState.DEFERRED)
                and match_name(d.name) in drv.id_table]
        refused = {d.name: why for d in todo if (why := self._schema_clash(d, drv))}
        self._chain([lambda done, d=d: self._probe(d, [drv], done, task) for d in todo],
                    lambda: self.reply(peer.ident, msg.r, data={
                        "probed": [d.name for d in todo if d.name not in refused], "refused": refused}))

    def driver_unregister(self, peer: "Peer", msg: E.DrvUnregister) -> None:
        drv = self.drivers.get(msg.name)
        if drv is None or drv.peer is not peer:
            raise AuxError(Errno.ENODEV, f"driver {msg.name} is not registered by {peer.label}")
        bound = [d for d in self.devices.values() if d.driver is drv]
        del self.drivers[drv.name]
        peer.drivers.remove(drv)
        task = self.task_of(peer, msg)

        def unbind_all():
            self.uevent("DRIVER_REMOVE", driver=drv.name)
            self.reply(peer.ident, msg.r)
        self._chain([lambda done, d=d: self._remove(d, "driver unregistered", done, task) for d in bound],
                    unbind_all)

    def _driver_gone(self, drv: "Driver", reason: str) -> None:
        """The driver's process is gone: unbind its devices without calling remove()."""
        self.drivers.pop(drv.name, None)
        if drv in drv.peer.drivers:
            drv.peer.drivers.remove(drv)
        for dev in self.devices.values():
            if dev.driver is drv:
                dev.bind.fire("driver_gone")
                dev.driver = None
                self._unbound(dev, drv, reason)
        self.uevent("DRIVER_REMOVE", driver=drv.name, reason=reason)

    def _unbound(self, dev: "Device", drv: "Driver", reason: str) -> None:
        dev.lock.cancel_queued(f"{dev.name} was unbound ({reason})")
        self.uevent("UNBIND", dev.name, drv.name, reason=reason)
        if dev.parent.alive:
            self.send(dev.parent.ident, E.Unbind(dev=dev.dev_id, reason=reason))

    # ---- matching, probe, remove --------------------------------------------------------

    @staticmethod
    def _chain(steps: list[Callable[[Callable[[], None]], None]], finish: Callable[[], None]) -> None:
        """Run asynchronous steps one after another, then ``finish``."""
        it = iter(steps)

        def step():
            nxt = next(it, None)
            if nxt is None:
                finish()
            else:
                nxt(step)
        step()

    def _candidates(self, dev: "Device") -> list["Driver"]:
        from auxipc.broker.bus import match_name
        m = match_name(dev.name)
        return [d for d in self.drivers.values() if m in d.id_table]

    def _probe(self, dev: "Device", drivers: list["Driver"], done: Callable[[], None], task: str) -> None:
        """Try each driver in turn under the device lock until one binds; the result
        of the last attempt is left in ``dev.last_probe``."""
        from auxipc.broker.bus import match_name
        if not drivers or dev.life.state is not DeviceState.ADDED or dev.driver is not None:
            return done()
        drv, rest = drivers[0], drivers[1:]
        if not drv.peer.alive or self.drivers.get(drv.name) is not drv:
            return self._probe(dev, rest, done, task)
        if self._schema_clash(dev, drv):
            self._bind_refused(dev, drv)
            return self._probe(dev, rest, done, task)

        def start(op: LockedOp):
            if dev.life.state is not DeviceState.ADDED or dev.driver is not None or not drv.peer.alive:
                dev.lock.release(op)
                return done()
            dev.bind.fire("probe")
            parent = dev.parent
            adopt = drv.peer.adopt.get(dev.name, (None, 0))[0] == drv.name
            self.request(drv.peer, lambda rid: E.Probe(
                r=rid, dev=dev.dev_id, name=dev.name, driver=drv.name, task=task, adopt=adopt,
                parent_handles=sorted(parent.handles), parent_schema=parent.schema),
                None, PROBE_TIMEOUT, f"probe of {dev.name} by {drv.name}",
                lambda e, m, _p, _d: finished(op, e, m))

        def finished(op: LockedOp, e: int, m: str):
            dev.lock.release(op)
            dev.last_probe = e
            if e == 0 and dev.bind.state is BindState.PROBING:
                dev.bind.fire("probe_ok")
                dev.driver = drv
                dev.defer_delay = 0.0
                dev.last_error = ""
                adopted = drv.peer.adopt.pop(dev.name, None)
                if adopted is not None and adopted[1] > 0:
                    dev.refs[drv.peer.label] += adopted[1]      # the references it held before
                    drv.peer.holding[dev.dev_id] += adopted[1]
                self.uevent("BIND", dev.name, drv.name, modalias=f"auxiliary:{match_name(dev.name)}",
                            **({"adopted": True} if adopted else {}))
                if dev.parent.alive:
                    self.send(dev.parent.ident, E.Bind(dev=dev.dev_id, driver=drv.name, inc=drv.peer.inc,
                                                       handles=sorted(drv.handles), schema=drv.peer.schema))
                self._retry_deferred()
                return done()
            if dev.bind.state is not BindState.PROBING:   # the driver died meanwhile
                return self._probe(dev, rest, done, task)
            if e in (-Errno.ENODEV, -Errno.ENXIO):
                dev.bind.fire("probe_reject")
                return self._probe(dev, rest, done, task)
            if e == -Errno.EPROBE_DEFER:
                dev.bind.fire("probe_defer")
                dev.last_error = f"probe by {drv.name} deferred"
                self.uevent("PROBE_DEFER", dev.name, drv.name)
                lo, hi = DEFER_RETRY
                dev.defer_delay = min(hi, dev.defer_delay * 2 if dev.defer_delay else lo)
                self.later(dev.defer_delay, lambda: self._retry(dev))
                return done()
            dev.bind.fire("probe_fail")
            dev.last_error = f"probe by {drv.name} failed: {errno_name(e)} {m}"
            log.warning("%s", dev.last_error)
            self.uevent("PROBE_FAILED", dev.name, drv.name, errno=e, error=errno_name(e), message=m)
            return self._probe(dev, rest, done, task)

        dev.lock.run(LockedOp(f"probe {dev.name} by {drv.name}", start, lambda _r: done(), task))

    @staticmethod
    def _schema_clash(dev: "Device", drv: "Driver") -> str:
        """Why ``drv`` may not bind ``dev`` ('' if it may): no contract across schema majors."""
        p, c = dev.parent.schema, drv.peer.schema
        if p[0] == c[0]:
            return ""
        return (f"bind refused: driver {drv.name} ({drv.peer.label}) speaks schema {c[0]}.{c[1]}, "
                f"parent {dev.parent.name} of {dev.name} speaks {p[0]}.{p[1]}: major versions differ")

    def _bind_refused(self, dev: "Device", drv: "Driver") -> None:
        """Matching refuses to probe across majors: the device stays unbound, both sides
        are told (an UNBIND notice for a device they never had bound) and ``ls`` shows it."""
        reason = self._schema_clash(dev, drv)
        dev.last_error = reason
        log.warning("%s", reason)
        self.uevent("BIND_REFUSED", dev.name, drv.name, reason=reason,
                    parent_schema=".".join(map(str, dev.parent.schema)),
                    driver_schema=".".join(map(str, drv.peer.schema)))
        for peer in (dev.parent, drv.peer):
            if peer.alive:
                self.send(peer.ident, E.Unbind(dev=dev.dev_id, reason=reason))

    def _retry(self, dev: "Device") -> None:
        if dev.life.state is DeviceState.ADDED and dev.bind.state is BindState.DEFERRED:
            dev.bind.fire("give_up")   # back to UNBOUND, then probe again
            self._probe(dev, self._candidates(dev), lambda: None, "bus/deferred-probe")

    def _retry_deferred(self) -> None:
        """A successful bind may satisfy deferred probes (driver_deferred_probe_trigger)."""
        for dev in list(self.devices.values()):
            if dev.bind.state is BindState.DEFERRED:
                self.later(0, lambda d=dev: self._retry(d))

    def _remove(self, dev: "Device", reason: str, done: Callable[[], None], task: str) -> None:
        """Unbind under the device lock: the child's remove() completes before ``done``."""
        def start(op: LockedOp):
            drv = dev.driver
            if drv is None or dev.bind.state is not BindState.BOUND:
                dev.lock.release(op)
                return done()
            dev.bind.fire("remove")
            self.request(drv.peer, lambda rid: E.Remove(r=rid, dev=dev.dev_id, reason=reason, task=task), None,
                         REMOVE_TIMEOUT, f"remove of {dev.name} by {drv.name}",
                         lambda e, m, _p, _d: finished(op, drv, e, m))

        def finished(op: LockedOp, drv: "Driver", e: int, m: str):
            if e:
                log.warning("remove of %s by %s: %s %s (treated as removed)", dev.name, drv.name, errno_name(e), m)
            if dev.bind.state is BindState.REMOVING:
                dev.bind.fire("removed")
                dev.driver = None
                self._unbound(dev, drv, reason)
            dev.lock.release(op)
            done()
        dev.lock.run(LockedOp(f"remove {dev.name}", start, lambda _r: done(), task))

    # ---- sysfs bind / unbind, PM, shutdown -------------------------------------------------

    def bind_device(self, name: str, driver: str, done: Callable[[int, str], None]) -> None:
        """``echo DEV > /sys/bus/auxiliary/drivers/DRV/bind``."""
        from auxipc.broker.bus import match_name
        dev = self.by_name.get(name)
        drv = self.drivers.get(driver)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"bind: no device {name!r} on the bus")
        if drv is None:
            raise AuxError(Errno.ENODEV, f"bind: no driver {driver!r} registered")
        if match_name(dev.name) not in drv.id_table:
            raise AuxError(Errno.ENODEV, f"bind: {dev.name} does not match {drv.name} "
                           f"(match name {match_name(dev.name)!r}, id_table {list(drv.id_table)})")
        if dev.bind.state in (BindState.BOUND, BindState.PROBING, BindState.REMOVING):
            raise AuxError(Errno.EBUSY, f"bind: {dev.name} is {dev.bind.state.value}"
                           + (f" to {dev.driver.name}" if dev.driver else ""))
        if dev.bind.state is BindState.DEFERRED:
            dev.bind.fire("give_up")

        def finished():
            e = dev.last_probe
            if dev.driver is drv:
                return done(0, "")
            if e == -Errno.EPROBE_DEFER:
                return done(-Errno.EAGAIN, f"bind: probe of {dev.name} by {drv.name} deferred")
            done(e or -Errno.ENODEV, f"bind: {drv.name} did not bind {dev.name}: {dev.last_error or errno_name(e)}")
        self._probe(dev, [drv], finished, "sysfs/bind")

    def unbind_device(self, name: str, done: Callable[[int, str], None]) -> None:
        dev = self.by_name.get(name)
        if dev is None or dev.driver is None or dev.bind.state is not BindState.BOUND:
            raise AuxError(Errno.ENODEV, f"unbind: {name} is not bound to a driver")
        self._remove(dev, "unbound through sysfs", lambda: done(0, ""), "sysfs/unbind")

    def dev_pm(self, peer: "Peer", msg: E.DevPm) -> None:
        """The parent suspends/resumes its device's driver under device_lock."""
        dev = self._own(peer, msg.dev)
        if msg.op not in ("suspend", "resume"):
            raise AuxError(Errno.EINVAL, f"$.header.op: {msg.op!r} is not 'suspend' or 'resume'")
        if dev.driver is None or dev.bind.state is not BindState.BOUND:
            raise AuxError(Errno.ENODEV, f"{msg.op}: {dev.name} has no bound driver")
        drv, task = dev.driver, self.task_of(peer, msg)

        def start(op: LockedOp):
            def finished(e, m, _p, _d):
                dev.lock.release(op)
                if not e:
                    self.uevent(msg.op.upper(), dev.name, drv.name)
                self.reply(peer.ident, msg.r, e, m)
            self.request(drv.peer, lambda rid: E.Pm(r=rid, dev=dev.dev_id, op=msg.op, task=task), None,
                         PM_TIMEOUT, f"{msg.op} of {dev.name} by {drv.name}", finished)
        dev.lock.run(LockedOp(f"{msg.op} {dev.name}", start,
                              lambda reason: self.reply(peer.ident, msg.r, Errno.ENODEV, reason), task))

    def shutdown_all(self, done: Callable[[], None]) -> None:
        """Bus shutdown: call shutdown() of every bound driver that has one."""
        bound = [d for d in self.devices.values() if d.driver is not None and d.driver.has_shutdown]

        def one(dev: "Device", next_: Callable[[], None]):
            def start(op: LockedOp):
                drv = dev.driver
                if drv is None or not drv.peer.alive:
                    dev.lock.release(op)
                    return next_()

                def finished(e, m, _p, _d):
                    dev.lock.release(op)
                    self.uevent("SHUTDOWN", dev.name, drv.name, errno=e)
                    next_()
                self.request(drv.peer, lambda rid: E.Shutdown(r=rid, dev=dev.dev_id), None, SHUTDOWN_TIMEOUT,
                             f"shutdown of {dev.name}", finished)
            dev.lock.run(LockedOp(f"shutdown {dev.name}", start, lambda _r: next_(), "bus/shutdown"))
        self._chain([lambda nxt, d=d: one(d, nxt) for d in bound], done)

    # ---- devices ------------------------------------------------------------------------

    def _own(self, peer: "Peer", dev_id: int) -> "Device":
        dev = self.devices.get(dev_id)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{dev_id} does not exist (released or never initialized)")
        if dev.parent is not peer:
            raise AuxError(Errno.EPERM, f"device {dev.name} belongs to {dev.parent.label}, not {peer.label}")
        return dev

    def dev_init(self, peer: "Peer", msg: E.DevInit) -> None:
        from auxipc.broker.bus import Device, device_name
        if peer.role != "parent":
            raise AuxError(Errno.EPERM, f"{peer.label}: only a parent creates devices")
        if not msg.name:
            raise AuxError(Errno.EINVAL, "auxiliary_device_init: $.header.name is empty")
        dev_id = next(self._ids)
        name = device_name(peer.name, msg.name, msg.id)
        dev = Device(dev_id, peer, msg.name, msg.id, name, msg.release, device_machine(name), bind_machine(name))
        dev.lock = Lock(f"device_lock:{name}", self.lockdep)
        dev.refs[peer.label] = 1
        self.devices[dev_id] = dev
        peer.devices.append(dev)
        self.reply(peer.ident, msg.r, data={"dev": dev_id, "name": name})

    def dev_add(self, peer: "Peer", msg: E.DevAdd) -> None:
        from auxipc.broker.bus import match_name
        dev = self._own(peer, msg.dev)
        if not peer.name:
            raise AuxError(Errno.EINVAL, "auxiliary_device_add: modname is empty")
        if dev.life.state is DeviceState.INITIALIZED and dev.name in self.by_name:
            raise AuxError(Errno.EEXIST, f"auxiliary_device_add: {dev.name} already exists on the bus "
                           f"(added by {self.by_name[dev.name].parent.label})")
        dev.life.fire("add")
        self.by_name[dev.name] = dev
        self.uevent("ADD", dev.name, modalias=f"auxiliary:{match_name(dev.name)}", parent=peer.label)
        self._probe(dev, self._candidates(dev), lambda: self.reply(
            peer.ident, msg.r, data={"name": dev.name, "driver": dev.driver.name if dev.driver else None}),
            self.task_of(peer, msg))

    def dev_delete(self, peer: "Peer", msg: E.DevDelete) -> None:
        dev = self._own(peer, msg.dev)
        self._delete(dev, "device deleted", lambda: self.reply(peer.ident, msg.r), self.task_of(peer, msg))

    def _delete(self, dev: "Device", reason: str, done: Callable[[], None], task: str) -> None:
        if dev.life.can("delete") and dev.driver is not None:
            self.lockdep.check(task, dev.lock)     # deleting from inside your own handler: -EDEADLK
        dev.life.fire("delete")
        self.by_name.pop(dev.name, None)
        # Calls queued behind the lock never reach the child; the one in flight completes.
        dev.lock.cancel_queued(f"{dev.name} was deleted", keep=lambda op: op.what.startswith("remove"))

        def finish():
            self.uevent("REMOVE", dev.name)
            done()
        self._remove(dev, reason, finish, task)

    def dev_uninit(self, peer: "Peer", msg: E.DevUninit) -> None:
        dev = self._own(peer, msg.dev)
        if dev.life.state is DeviceState.ADDED:
            raise AuxError(Errno.EBUSY, f"auxiliary_device_uninit: {dev.name} is still on the bus; delete it first")
        if dev.refs.get(peer.label, 0) == 0:
            raise AuxError(Errno.EINVAL, f"auxiliary_device_uninit: {dev.name} was already uninitialized")
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self._put(dev, peer)

    def _parent_gone(self, dev: "Device", reason: str) -> None:
        """The parent process died or left: delete and uninit its device for it."""
        def uninit():
            if dev.refs.get(dev.parent.label):
                self._put(dev, dev.parent)
        if dev.life.state is DeviceState.ADDED:
            self._delete(dev, f"parent gone ({reason})", uninit, f"bus/cleanup:{dev.parent.label}")
        else:
            uninit()

    def dev_get(self, peer: "Peer", msg: E.DevGet) -> None:
        dev = self.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"get_device: device #{msg.dev} was released")
        # Only who has the device in hand may pin it: its parent, the peer of its bound
        # driver (or of a matching one while a probe runs), or a peer already holding one.
        if peer is not dev.parent and not (dev.driver is not None and dev.driver.peer is peer) \
                and not peer.holding.get(dev.dev_id) and not self._probing_by(dev, peer):
            raise AuxError(Errno.EPERM, f"get_device: {dev.name} belongs to {dev.parent.label}; "
                           f"{peer.label} neither owns it nor has it bound")
        dev.refs[peer.label] += 1
        peer.holding[dev.dev_id] += 1
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount})

    def _probing_by(self, dev: "Device", peer: "Peer") -> bool:
        from auxipc.broker.bus import match_name
        if dev.bind.state is not BindState.PROBING:
            return False
        m = match_name(dev.name)
        return any(m in d.id_table for d in peer.drivers)

    def dev_put(self, peer: "Peer", msg: E.DevPut) -> None:
        dev = self.devices.get(msg.dev)
        if dev is None or peer.holding.get(msg.dev, 0) == 0:
            raise AuxError(Errno.EINVAL, f"put_device: {peer.label} holds no reference to device #{msg.dev}")
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self._put(dev, peer)

    def _put(self, dev: "Device", holder: "Peer") -> None:
        dev.refs[holder.label] -= 1
        if dev.refs[holder.label] <= 0:
            del dev.refs[holder.label]
        if holder.holding.get(dev.dev_id):
            holder.holding[dev.dev_id] -= 1
            if holder.holding[dev.dev_id] <= 0:
                del holder.holding[dev.dev_id]
        if dev.refcount == 0:
            self._release(dev)

    def _release(self, dev: "Device") -> None:
        dev.life.fire("release")
        del self.devices[dev.dev_id]
        if dev in dev.parent.devices:
            dev.parent.devices.remove(dev)
        if dev.parent.alive and dev.has_release:
            self.send(dev.parent.ident, E.Release(dev=dev.dev_id, name=dev.name))
            self.uevent("RELEASE", dev.name)
        elif not dev.has_release:
            log.warning("device %s has no release() callback (the kernel WARNs here)", dev.name)
            self.uevent("RELEASE", dev.name, warning="no release() callback")
        else:
            self.uevent("RELEASE", dev.name, note="parent gone: release() not run")

    def leaks(self) -> list[dict]:
        """Deleted devices whose references are still held: who holds them."""
        return [{"dev": d.name, "holders": dict(d.refs)} for d in self.devices.values()
                if d.life.state is DeviceState.DELETED and d.refcount]
