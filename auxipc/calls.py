"""Sync calls and cross-process locks: the half of the bus that routes requests.

A mixin of ``Bus`` (bus.py). Every CALL is checked (schema, direction, binding,
discovery, payload), then delivered — parent->child under the device's lock —
and answered exactly once: by the callee, by its death (-ENODEV), by the
deadline (-ETIMEDOUT), or at once with -EDEADLK when waiting for the lock would
close a cycle. LOCK/UNLOCK manage the named locks (``rtnl``, ``mutex:<name>``)
for lockdep.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import decode_payload
from .lifecycle import BindState, DeviceState
from .lockdep import LockedOp

if TYPE_CHECKING:
    from .bus import Device, Driver, Peer

log = logging.getLogger("auxipc.broker")


class Calls:
    def call(self, peer: "Peer", msg: E.Call, payload: bytes | None) -> None:
        spec = self.catalog.lookup(msg.ev)
        if not spec.direction.allows(peer.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {peer.role} cannot send it")
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: publish it, do not CALL it")
        dev = self.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{msg.dev} does not exist")
        decode_payload(spec, E.decode_payload_frame(payload))
        task = self.task_of(peer, msg)
        if peer.role == "parent":
            if dev.parent is not peer:
                raise AuxError(Errno.EPERM, f"{dev.name} belongs to {dev.parent.label}")
            bound = dev.life.state is DeviceState.ADDED and dev.bind.state is BindState.BOUND
            if not bound and dev.bind.state is not BindState.REMOVING:
                raise AuxError(Errno.ENODEV, f"{dev.name} is {dev.life.state.value}, {dev.bind.state.value}: "
                               "no driver to deliver to")
            # While remove() runs the call waits for device_lock, as the kernel's sender
            # blocks in device_lock(); it then finds no driver (-ENODEV). Lockdep sees the wait.
            drv = dev.driver
            if spec.code not in drv.handles:
                raise AuxError(Errno.EOPNOTSUPP, f"driver {drv.name} has no handler for {spec.name}")
            self._call_child(peer, msg, payload, dev, drv, spec.name, task)
        else:
            drv = dev.driver
            if drv is None or drv.peer is not peer or dev.bind.state not in (
                    BindState.BOUND, BindState.PROBING, BindState.REMOVING):
                raise AuxError(Errno.ENODEV, f"{dev.name} is not bound to {peer.label}")
            parent = dev.parent
            if not parent.alive:
                raise AuxError(Errno.ENODEV, f"{dev.name}: parent {parent.label} is gone")
            if spec.code not in parent.handles:
                raise AuxError(Errno.EOPNOTSUPP, f"parent {parent.name} has no handler for {spec.name}")
            self._forward(peer, msg, payload, parent, dev, spec.name, self.clock() + msg.timeout_ms / 1000, task)

    def _forward(self, caller: "Peer", msg: E.Call, payload, callee: "Peer", dev: "Device", ev_name: str,
                 deadline: float, task: str, after: Callable[[], None] | None = None) -> None:
        """Deliver a checked call to its handler side. An event the kernel sends under rtnl
        first takes rtnl for the task (unless the task holds it), here in the broker: the
        handler runs with it held and no extra round trip."""
        spec = self.catalog.lookup(msg.ev)
        if not spec.rtnl or self.lockdep.holds(task, "rtnl"):
            return self._deliver(caller, msg, payload, callee, dev, ev_name, deadline, task, after, spec.rtnl)
        lock = self.lockdep.lock("rtnl")

        def granted(op: LockedOp):
            self.cancel(timer)

            def done():
                lock.release(op)
                if after:
                    after()
            self._deliver(caller, msg, payload, callee, dev, ev_name, deadline, task, done, True)

        def cancelled(reason: str):
            if caller.alive:
                holder = lock.owner.task if lock.owner else "-"
                self.reply(caller.ident, msg.r, Errno.ETIMEDOUT if reason == "deadline" else Errno.ENODEV,
                           f"{ev_name} on {dev.name}: waited for rtnl ({reason}; held by {holder})")
            if after:
                after()

        op = LockedOp(f"{ev_name} to {dev.name} under rtnl", granted, cancelled, task)
        timer = None
        try:
            lock.run(op)
        except AuxError as exc:
            if caller.alive:
                self.reply(caller.ident, msg.r, exc.errno, exc.message)
            if after:
                after()
            return
        if not op.started:
            timer = self.later(max(deadline - self.clock(), 0.0), lambda: lock.cancel(op, "deadline"))

    def _deliver(self, caller: "Peer", msg: E.Call, payload, callee: "Peer", dev: "Device", ev_name: str,
                 deadline: float, task: str, after: Callable[[], None] | None, rtnl: bool) -> None:
        remaining = max(deadline - self.clock(), 0.0)
        started = self.clock()

        def answered(e: int, m: str, reply_payload: bytes | None, _d: dict):
            self.stats["calls"] += 1
            if e:
                self.stats[f"calls_{errno_name(e)}"] += 1
            if caller.alive:
                self.reply(caller.ident, msg.r, e, m, payload=reply_payload)
            if self.tracing:
                self.published.append([b"trace", E.MAGIC, E.packb({
                    "t": E.Msg.UEVENT, "seq": 0, "action": "CALL", "dev": dev.name, "driver": "",
                    "detail": {"event": ev_name, "from": caller.label, "to": callee.label, "errno": e, "task": task,
                               "us": int((self.clock() - started) * 1e6)}})])
            if after:
                after()
        self.request(callee, lambda rid: E.fast(E.Request, payload, r=rid, dev=msg.dev, ev=msg.ev, task=task,
                                                rtnl=rtnl, timeout_ms=int(remaining * 1000), inc=caller.inc),
                     payload, remaining, f"{ev_name} on {dev.name}", answered, event=ev_name)

    def _call_child(self, caller: "Peer", msg: E.Call, payload, dev: "Device", drv: "Driver", ev_name: str,
                    task: str) -> None:
        deadline = self.clock() + msg.timeout_ms / 1000

        def start(op: LockedOp):
            self.cancel(deadline_timer)      # from here the request's own deadline applies
            if not caller.alive or dev.driver is not drv or dev.bind.state is not BindState.BOUND:
                dev.lock.release(op)
                if caller.alive:
                    self.reply(caller.ident, msg.r, Errno.ENODEV, f"{dev.name} was unbound before delivery")
                return
            self._forward(caller, msg, payload, drv.peer, dev, ev_name, deadline, task,
                          lambda: dev.lock.release(op))

        def cancel(reason: str):
            if not caller.alive:
                return
            if reason == "deadline":
                holder = dev.lock.owner.what if dev.lock.owner else "-"
                self.reply(caller.ident, msg.r, Errno.ETIMEDOUT, f"{ev_name} on {dev.name}: deadline passed "
                           f"waiting for device_lock (held by: {holder})")
            else:
                self.reply(caller.ident, msg.r, Errno.ENODEV, f"{ev_name}: {reason}")

        op = LockedOp(f"{ev_name} to {dev.name}", start, cancel, task)
        deadline_timer = None
        dev.lock.run(op)
        if not op.started:
            deadline_timer = self.later(msg.timeout_ms / 1000, lambda: dev.lock.cancel(op, "deadline"))

    def on_result(self, peer: "Peer", msg: E.Result, payload: bytes | None) -> None:
        p = self.pending.get(msg.r)
        if p is None or p.callee is not peer:
            self.stats["late_replies"] += 1
            log.info("dropped a late or foreign reply r=%d from %s", msg.r, peer.label)
            return
        self.settle(msg.r)
        p.on_result(msg.e, msg.m, payload, msg.d)

    # ---- named locks -----------------------------------------------------------------------

    def lock_req(self, peer: "Peer", msg: E.LockReq) -> None:
        name = msg.name
        if name != "rtnl" and not (name.startswith("mutex:") and len(name) > 6):
            raise AuxError(Errno.EINVAL, f"$.header.name: {name!r} is not a lock (rtnl or mutex:<name>)")
        lock = self.lockdep.lock(name)
        if self.lockdep.holds(msg.task, name):
            if msg.ensure:
                return self.reply(peer.ident, msg.r, data={"held": True})
        key = (msg.task, name)

        def granted(op: LockedOp):
            self.lock_ops[key] = op
            self.reply(peer.ident, msg.r, data={"held": False})

        def cancelled(reason: str):
            self.lock_ops.pop(key, None)
            if peer.alive:
                holder = lock.owner.task if lock.owner else "-"
                self.reply(peer.ident, msg.r, Errno.ETIMEDOUT,
                           f"lock {name}: not granted within {msg.timeout_ms} ms (held by {holder})")
        op = LockedOp(f"{peer.label} takes {name}", granted, cancelled, msg.task)
        op.peer, op.stack = peer, tuple(msg.stack)
        self.lock_ops[key] = op
        try:
            lock.run(op)
        except AuxError:
            self.lock_ops.pop(key, None)
            raise
        self.later(msg.timeout_ms / 1000, lambda: lock.cancel(op, "timeout"))

    def unlock_req(self, peer: "Peer", msg: E.UnlockReq) -> None:
        op = self.lock_ops.get((msg.task, msg.name))
        lock = self.lockdep.named.get(msg.name)
        if op is None or lock is None or lock.owner is not op:
            raise AuxError(Errno.EINVAL, f"unlock {msg.name}: task {msg.task} does not hold it")
        del self.lock_ops[(msg.task, msg.name)]
        lock.release(op)
        self.reply(peer.ident, msg.r)

    def locks_gone(self, peer: "Peer") -> None:
        """A peer is gone: release the named locks it took, drop its queued requests."""
        for key, op in list(self.lock_ops.items()):
            if op.peer is not peer:
                continue
            del self.lock_ops[key]
            lock = self.lockdep.named[key[1]]
            if lock.owner is op:
                log.warning("%s died holding %s: released", peer.label, key[1])
                lock.release(op)
            else:
                op.cancel = None
                lock.cancel(op, "peer gone")
