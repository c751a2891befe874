"""The auxiliary device's lifetime (drivers/base/auxiliary.c, core.c): init, add,
delete, uninit, get/put and release at the last put.

``Devices`` is a part of the bus: it sees the bus through ``Host`` and asks the
driver core (``Binding``) to probe a device it adds and to remove the driver of
one it deletes.
"""

from __future__ import annotations

import logging
from typing import Callable

from auxipc.broker.binding import Binding
from auxipc.broker.lifecycle import BindState, DeviceEvent, DeviceState, bind_machine, device_machine
from auxipc.broker.lockdep import Lock
from auxipc.broker.records import Device, Host, Peer, device_name, match_name
from proto import envelope as E
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.broker")


def check_attrs(attrs: dict) -> dict:
    """Device attributes: names of at most 64 characters, values a string, number or bool
    (what a sysfs attribute shows); -EINVAL naming the field otherwise."""
    for key, value in attrs.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise AuxError(Errno.EINVAL, f"$.header.attrs: {key!r} is not an attribute name (1..64 chars)")
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and len(value) > 4096):
            raise AuxError(Errno.EINVAL, f"$.header.attrs.{key}: expected a string (<= 4096 chars), number or "
                           f"bool, got {type(value).__name__}")
    return dict(attrs)


class Devices:
    def __init__(self, host: Host, binding: Binding):
        self.host, self.binding = host, binding

    def own(self, peer: Peer, dev_id: int) -> Device:
        """The device ``dev_id`` of parent ``peer``; -ENODEV or -EPERM otherwise."""
        dev = self.host.devices.get(dev_id)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{dev_id} does not exist (released or never initialized)")
        if dev.parent is not peer:
            raise AuxError(Errno.EPERM, f"device {dev.label} belongs to {dev.parent.label}, not {peer.label}")
        return dev

    def dev_init(self, peer: Peer, msg: E.DevInit) -> None:
        host = self.host
        if peer.role != "parent":
            raise AuxError(Errno.EPERM, f"{peer.label}: only a parent creates devices")
        if not msg.name:
            raise AuxError(Errno.EINVAL, "auxiliary_device_init: $.header.name is empty")
        dev_id = host.next_id()
        name = device_name(peer.name, msg.name, msg.id)
        dev = Device(dev_id, peer, msg.name, msg.id, name, msg.release, device_machine(name), bind_machine(name))
        dev.lock = Lock(f"device_lock:{name}", host.lockdep)
        dev.refs[peer.label] = 1
        host.devices[dev_id] = dev
        peer.devices.append(dev)
        host.reply(peer.ident, msg.r, data={"dev": dev_id, "name": name})

    def dev_add(self, peer: Peer, msg: E.DevAdd) -> None:
        host = self.host
        dev = self.own(peer, msg.dev)
        if not peer.name:
            raise AuxError(Errno.EINVAL, "auxiliary_device_add: modname is empty")
        if dev.life.state is DeviceState.INITIALIZED and dev.pending in host.by_name:
            dev.last_error = ("auxiliary_device_add failed (EEXIST): the parent must "
                              "auxiliary_device_uninit() it")
            raise AuxError(Errno.EEXIST, f"auxiliary_device_add: {dev.pending} already exists on the bus "
                           f"(added by {host.by_name[dev.pending].parent.label})")
        attrs = check_attrs(msg.attrs)
        dev.life.fire(DeviceEvent.ADD)
        dev.name = dev.pending                     # dev_set_name: named by add
        dev.attrs = attrs                          # before a driver binds, as udev and drivers expect
        host.by_name[dev.name] = dev
        detail: dict[str, object] = {"modalias": f"auxiliary:{match_name(dev.name)}", "parent": peer.label}
        if attrs:
            detail["attrs"] = attrs
        host.uevent("ADD", dev.name, "", **detail)
        self.binding.probe(dev, self.binding.candidates(dev), host.task_of(peer, msg), lambda: host.reply(
            peer.ident, msg.r, data={"name": dev.name, "driver": dev.driver.name if dev.driver else None}))

    def dev_delete(self, peer: Peer, msg: E.DevDelete) -> None:
        dev = self.own(peer, msg.dev)
        self.delete(dev, "device deleted", self.host.task_of(peer, msg),
                    lambda: self.host.reply(peer.ident, msg.r))

    def delete(self, dev: Device, reason: str, task: str, done: Callable[[], None]) -> None:
        """auxiliary_device_delete: off the bus, then the driver's remove() before ``done``."""
        host = self.host
        if dev.life.can(DeviceEvent.DELETE) and dev.driver is not None:
            host.lockdep.check(task, dev.lock)     # deleting from inside your own handler: -EDEADLK
        dev.life.fire(DeviceEvent.DELETE)
        host.by_name.pop(dev.name, None)
        dev.deferred = False                       # driver_deferred_probe_del
        host.cancel(dev.defer_timer)
        # Calls queued behind the lock never reach the child; the one in flight completes.
        dev.lock.cancel_queued(f"{dev.name} was deleted", keep=lambda op: op.what.startswith("remove"))

        def removed() -> None:
            dev.deleting = False
            host.uevent("REMOVE", dev.name)
            if dev.refcount == 0:                  # uninit came first: the bus's reference was the last
                self.release(dev)
            done()
        dev.deleting = True
        self.binding.remove(dev, reason, task, removed)

    def dev_uninit(self, peer: Peer, msg: E.DevUninit) -> None:
        """auxiliary_device_uninit is put_device. On a device still added it only drops the
        parent's reference: the bus holds its own until delete, which then releases."""
        dev = self.own(peer, msg.dev)
        if dev.refs.get(peer.label, 0) == 0:
            raise AuxError(Errno.EINVAL, f"auxiliary_device_uninit: {dev.label} was already uninitialized")
        self.host.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self.put(dev, peer)

    def left_behind(self, peer: Peer) -> None:
        """A parent that leaves cleanly must have deleted and uninit'd its devices first
        ("before its own driver.remove() is completed"). The bus still cleans up after it,
        as after a crash, but says so: in the kernel these devices would outlive their
        parent (a use-after-free), or never be released (a leak)."""
        added = [d.name for d in peer.devices if d.life.state is DeviceState.ADDED]
        if added:
            self.host.warn("devices_outlive_parent",
                      f"{peer.label} left with {len(added)} auxiliary device(s) still added: {', '.join(added)}; "
                      "the registering driver must delete them before its remove() returns, or they outlive "
                      "their parent (a use-after-free in the kernel); deleted and put for it", parent=peer.label,
                      devices=added)
        kept = [d.name or d.pending for d in peer.devices
                if d.life.state is not DeviceState.ADDED and d.refs.get(peer.label)]
        if kept:
            self.host.warn("uninit_missing",
                      f"{peer.label} left without auxiliary_device_uninit() of {', '.join(kept)}; their "
                      "release() would never run (a leak in the kernel); put for it", parent=peer.label,
                      devices=kept)

    def instance_index(self, name: str, wanted) -> int:
        """A parent instance's index among the live instances of its model: what it had
        before a broker restart if still free, else the lowest free (ida_alloc). Drivers
        number their PCI functions' auxiliary devices from such an IDA, so two instances
        of one model add ``ixd.eth.0`` and ``ixd.eth.1``."""
        taken = {p.index for p in self.host.peers.values() if p.alive and p.role == "parent" and p.name == name}
        if isinstance(wanted, int) and wanted >= 0 and wanted not in taken:
            return wanted
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def parent_gone(self, dev: Device, reason: str) -> None:
        """The parent process died or left: delete and uninit its device for it."""
        def uninit() -> None:
            if dev.refs.get(dev.parent.label):
                self.put(dev, dev.parent)
        if dev.life.state is DeviceState.ADDED:
            self.delete(dev, f"parent gone ({reason})", f"bus/cleanup:{dev.parent.label}", uninit)
        else:
            uninit()

    # ---- references -------------------------------------------------------------------

    def dev_get(self, peer: Peer, msg: E.DevGet) -> None:
        dev = self.host.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"get_device: device #{msg.dev} was released")
        if msg.added and dev.life.state is not DeviceState.ADDED:
            raise AuxError(Errno.ENODEV, f"auxiliary_find_device: {dev.name} is no longer on the bus")
        # Who has the device in hand may pin it: its parent, the peer of its bound driver
        # (or of a matching one while a probe runs), a peer already holding one, or a peer
        # that found it on the bus (auxiliary_find_device: any module may, as in the kernel;
        # the reference is shown under its holder and put when the holder dies).
        if peer is not dev.parent and not (dev.driver is not None and dev.driver.peer is peer) \
                and not peer.holding.get(dev.dev_id) and not self._probing_by(dev, peer) and not msg.added:
            raise AuxError(Errno.EPERM, f"get_device: {dev.label} belongs to {dev.parent.label}; "
                           f"{peer.label} neither owns it nor has it bound (find it first)")
        dev.refs[peer.label] += 1
        peer.holding[dev.dev_id] += 1
        self.host.reply(peer.ident, msg.r, data={"refcount": dev.refcount})

    @staticmethod
    def _probing_by(dev: Device, peer: Peer) -> bool:
        if dev.bind.state is not BindState.PROBING or not dev.name:
            return False
        m = match_name(dev.name)
        return any(m in d.id_table for d in peer.drivers)

    def dev_find(self, peer: Peer, msg: E.DevFind) -> None:
        """The devices on the bus (bus_find_device walks the bus's klist: added devices, in
        the order they were added) with this name or match name; the caller's runtime runs
        its match callback on them and takes a reference with DEV_GET(added)."""
        found = [{"dev": d.dev_id, "name": d.name, "match": match_name(d.name), "parent": d.parent.label,
                  "driver": d.driver.name if d.driver else None}
                 for d in self.host.by_name.values()
                 if (not msg.name or d.name == msg.name) and (not msg.match or match_name(d.name) == msg.match)]
        self.host.reply(peer.ident, msg.r, data={"devices": found})

    def dev_put(self, peer: Peer, msg: E.DevPut) -> None:
        dev = self.host.devices.get(msg.dev)
        if dev is None or peer.holding.get(msg.dev, 0) == 0:
            raise AuxError(Errno.EINVAL, f"put_device: {peer.label} holds no reference to device #{msg.dev}")
        self.host.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self.put(dev, peer)

    def put(self, dev: Device, holder: Peer) -> None:
        dev.refs[holder.label] -= 1
        if dev.refs[holder.label] <= 0:
            del dev.refs[holder.label]
        if holder.holding.get(dev.dev_id):
            holder.holding[dev.dev_id] -= 1
            if holder.holding[dev.dev_id] <= 0:
                del holder.holding[dev.dev_id]
        # The bus holds an added device, and a deleted one until its remove() returns.
        if dev.refcount == 0 and dev.life.state is not DeviceState.ADDED and not dev.deleting:
            self.release(dev)

    def release(self, dev: Device) -> None:
        host = self.host
        dev.life.fire(DeviceEvent.RELEASE)
        del host.devices[dev.dev_id]
        if dev in dev.parent.devices:
            dev.parent.devices.remove(dev)
        # A device never added has no name: its record says what add would have named it.
        unnamed = {} if dev.name else {"never_added": dev.pending}
        if dev.parent.alive and dev.has_release:
            host.send(dev.parent.ident, E.Release(dev=dev.dev_id, name=dev.name))
            host.uevent("RELEASE", dev.name, **unnamed)
        elif not dev.has_release:
            log.warning("device %s has no release() callback (the kernel WARNs here)", dev.label)
            host.uevent("RELEASE", dev.name, warning="no release() callback", **unnamed)
        else:
            host.uevent("RELEASE", dev.name, note="parent gone: release() not run", **unnamed)

    def leaks(self) -> list[dict]:
        """Deleted devices whose references are still held: who holds them."""
        return [{"dev": d.name, "holders": dict(d.refs)} for d in self.host.devices.values()
                if d.life.state is DeviceState.DELETED and d.refcount]
