"""Sync calls and cross-process locks: the part of the bus that routes requests.

``Calls`` is a part of the bus and sees it only through ``Host`` (records.py).
Every CALL is checked (schema, direction, binding,
discovery, payload), then delivered — parent->child under the device's lock —
and answered exactly once: by the callee, by its death (-ENODEV), by the
deadline (-ETIMEDOUT), or at once with -EDEADLK when waiting for the lock would
close a cycle. LOCK/UNLOCK manage the named locks (``rtnl``, ``mutex:<name>``)
for lockdep.
"""

from __future__ import annotations

import logging

from auxipc.broker.lifecycle import BindState, DeviceState
from auxipc.broker.lockdep import LockedOp, describe
from auxipc.broker.records import Device, Driver, Host, Peer
from auxipc.broker.timers import Timer
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name

log = logging.getLogger("auxipc.broker")


# Enum members looked up as class attributes cost a metaclass call each time; the
# hot path compares with module constants (a tuple: an Enum's hash is a Python call).
ADDED = DeviceState.ADDED
BOUND, PROBING, REMOVING = BindState.BOUND, BindState.PROBING, BindState.REMOVING
CHILD_MAY_CALL = (BindState.BOUND, BindState.PROBING, BindState.REMOVING)
_REQUEST = E.frame_maker(E.Request)     # the frames of a REQUEST (E.fast as straight-line code)


class SyncCall:
    """One checked CALL on its way to the callee: parent->child under the device's lock,
    an rtnl event under rtnl, then a request answered exactly once. Its steps are
    methods of one object rather than closures made for every call; once delivered,
    it is also the request's description (``Pending.what``), formatted only if an
    error message needs it."""

    __slots__ = ("bus", "caller", "msg", "payload", "callee", "dev", "drv", "spec", "task", "deadline",
                 "dev_op", "rtnl_op", "timer", "sent")

    def __init__(self, bus: Host, caller: Peer, msg: E.Call, payload, callee: Peer | None, dev: Device,
                 drv: Driver | None, spec, task: str, deadline: float):
        self.bus, self.caller, self.msg, self.payload = bus, caller, msg, payload
        # None only while queued behind a probe: device_locked() sets both before delivery.
        self.callee: Peer = callee              # type: ignore[assignment]
        self.dev, self.drv, self.spec, self.task, self.deadline = dev, drv, spec, task, deadline
        self.dev_op: LockedOp | None = None     # device_lock, held from delivery to the answer
        self.rtnl_op: LockedOp | None = None    # rtnl, taken here for an rtnl event
        self.timer: Timer | None = None         # the deadline of a wait for a lock
        self.sent = 0.0

    def __str__(self) -> str:
        return f"{self.spec.name} on {self.dev.name}"

    # ---- parent->child: device_lock ----------------------------------------------------

    def take_device_lock(self) -> None:
        dev = self.dev
        op = self.dev_op = LockedOp(f"{self.spec.name} to {dev.name}", self.device_locked,
                                    self.device_lock_dropped, self.task)
        dev.lock.run(op)
        if not op.started:
            self.timer = self.bus.at(self.deadline, dev.lock.cancel, op, "deadline")

    def device_locked(self, op: LockedOp) -> None:
        self.bus.cancel(self.timer)      # from here the request's own deadline applies
        self.timer = None
        caller, dev = self.caller, self.dev
        if self.drv is None:             # queued behind a probe: to the driver it bound, if any
            drv = dev.driver
            if drv is None or dev.bind.state is not BOUND:
                return self.refuse(op, Errno.ENODEV, f"{dev.name}: no driver bound after the probe it waited "
                                                     f"for ({dev.last_error or 'no driver matched'})")
            if self.spec.code not in drv.handles:
                return self.refuse(op, Errno.EOPNOTSUPP, f"driver {drv.name} has no handler for {self.spec.name}")
            self.drv, self.callee = drv, drv.peer
        if not caller.alive or dev.driver is not self.drv or dev.bind.state is not BOUND:
            return self.refuse(op, Errno.ENODEV, f"{dev.name} was unbound before delivery")
        self.forward()

    def refuse(self, op: LockedOp, errno: int, message: str) -> None:
        self.dev.lock.release(op)
        if self.caller.alive:
            self.bus.reply(self.caller.ident, self.msg.r, errno, message)

    def device_lock_dropped(self, reason: str) -> None:
        caller, dev = self.caller, self.dev
        if not caller.alive:
            return
        if reason == "deadline":
            holder = dev.lock.owner.what if dev.lock.owner else "-"
            self.bus.reply(caller.ident, self.msg.r, Errno.ETIMEDOUT, f"{self.spec.name} on {dev.name}: "
                           f"deadline passed waiting for device_lock (held by: {holder})")
        else:
            self.bus.reply(caller.ident, self.msg.r, Errno.ENODEV, f"{self.spec.name}: {reason}")

    # ---- rtnl ---------------------------------------------------------------------------

    def forward(self) -> None:
        """Deliver to the handler side. An event the kernel sends under rtnl first takes
        rtnl for the task (unless the task holds it), here in the broker: the handler
        runs with it held and no extra round trip."""
        bus, spec = self.bus, self.spec
        if not spec.rtnl or bus.lockdep.holds(self.task, "rtnl"):
            return self.deliver(spec.rtnl)
        lock = bus.lockdep.lock("rtnl")
        op = self.rtnl_op = LockedOp(f"{spec.name} to {self.dev.name} under rtnl", self.rtnl_locked,
                                     self.rtnl_dropped, self.task)
        try:
            lock.run(op)
        except AuxError as exc:
            if self.caller.alive:
                bus.reply(self.caller.ident, self.msg.r, exc.errno, exc.message)
            self.finish()
            return
        if not op.started:
            self.timer = bus.at(max(self.deadline, bus.clock()), lock.cancel, op, "deadline")

    def rtnl_locked(self, _op: LockedOp) -> None:
        self.bus.cancel(self.timer)
        self.timer = None
        self.deliver(True)

    def rtnl_dropped(self, reason: str) -> None:
        if self.caller.alive:
            lock = self.bus.lockdep.lock("rtnl")
            holder = lock.owner.task if lock.owner else "-"
            self.bus.reply(self.caller.ident, self.msg.r, Errno.ETIMEDOUT if reason == "deadline" else Errno.ENODEV,
                           f"{self.spec.name} on {self.dev.name}: waited for rtnl ({reason}; held by {holder})")
        self.finish()

    # ---- the request ----------------------------------------------------------------------

    def deliver(self, rtnl: bool) -> None:
        bus, msg = self.bus, self.msg
        self.sent = now = bus.clock()
        remaining = max(self.deadline - now, 0.0)
        rid = bus.next_id()
        frames = _REQUEST(self.payload, r=rid, dev=msg.dev, ev=msg.ev, task=self.task, rtnl=rtnl,
                        timeout_ms=int(remaining * 1000), inc=self.caller.inc)
        bus.expect(self.callee, rid, frames, remaining, self, self.answered, self.spec.name)

    def answered(self, e: int, m: str, reply_payload: bytes | None, _d: dict) -> None:
        bus, caller = self.bus, self.caller
        bus.stats["calls"] += 1
        if e:
            bus.stats[f"calls_{errno_name(e)}"] += 1
        if bus.tracing:     # before the answer: it leaves stamped before the caller can act on it
            bus.published.append([b"trace", *E.fast(E.Uevent, seq=0, action="CALL", dev=self.dev.name, detail={
                "event": self.spec.name, "from": caller.label, "to": self.callee.label, "errno": e,
                "task": self.task, "us": int((bus.clock() - self.sent) * 1e6)})])
        if caller.alive:
            bus.reply(caller.ident, self.msg.r, e, m, payload=reply_payload)
            bus.on_output()
        self.finish()

    def finish(self) -> None:
        """Release what the call holds: rtnl, then device_lock (either may not be held)."""
        if self.rtnl_op is not None:
            self.bus.lockdep.lock("rtnl").release(self.rtnl_op)
        if self.dev_op is not None:
            self.dev.lock.release(self.dev_op)


class Calls:
    def __init__(self, host: Host):
        self.host = host
        self.lock_ops: dict[tuple[str, str], LockedOp] = {}    # (task, lock name) -> a granted or queued LOCK

    def call(self, peer: Peer, msg: E.Call, payload: bytes | None) -> None:
        host = self.host
        spec = host.catalog.lookup(msg.ev)
        if not spec.direction.allows(peer.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {peer.role} cannot send it")
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: publish it, do not CALL it")
        dev = host.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{msg.dev} does not exist")
        E.check_payload(spec.payload, payload)
        task = host.task_of(peer, msg)
        deadline = host.clock() + msg.timeout_ms / 1000
        drv = dev.driver
        if peer.role == "parent":
            if dev.parent is not peer:
                raise AuxError(Errno.EPERM, f"{dev.name} belongs to {dev.parent.label}")
            state = dev.bind.state
            if state is PROBING and dev.life.state is ADDED:
                # As the kernel's sender blocks in device_lock() while probe() runs: delivered
                # after the probe to the driver it bound (or -ENODEV), within the deadline.
                SyncCall(host, peer, msg, payload, None, dev, None, spec, task, deadline).take_device_lock()
                return
            if drv is None or state is not REMOVING and (state is not BOUND or dev.life.state is not ADDED):
                raise AuxError(Errno.ENODEV, f"{dev.label} is {dev.life.state.value}, {state.value}: "
                               "no driver to deliver to")
            # While remove() runs the call waits for device_lock, as the kernel's sender
            # blocks in device_lock(); it then finds no driver (-ENODEV). Lockdep sees the wait.
            if spec.code not in drv.handles:
                raise AuxError(Errno.EOPNOTSUPP, f"driver {drv.name} has no handler for {spec.name}")
            SyncCall(host, peer, msg, payload, drv.peer, dev, drv, spec, task, deadline).take_device_lock()
        else:
            if dev.bind.state is PROBING:
                drv = dev.prober        # a driver calls its parent from inside probe()
            if drv is None or drv.peer is not peer or dev.bind.state not in CHILD_MAY_CALL:
                raise AuxError(Errno.ENODEV, f"{dev.name} is not bound to {peer.label}")
            parent = dev.parent
            if not parent.alive:
                raise AuxError(Errno.ENODEV, f"{dev.name}: parent {parent.label} is gone")
            if spec.code not in parent.handles:
                raise AuxError(Errno.EOPNOTSUPP, f"parent {parent.name} has no handler for {spec.name}")
            SyncCall(host, peer, msg, payload, parent, dev, drv, spec, task, deadline).forward()

    def resync(self, peer: Peer, msg: E.Resync) -> None:
        """Pass a receiver's gap report to the other side of the device (no answer)."""
        dev = self.host.devices.get(msg.dev)
        if dev is None or dev.driver is None:
            return
        other = dev.driver.peer if peer is dev.parent else dev.parent if dev.driver.peer is peer else None
        if other is not None and other.alive:
            self.host.stats["resyncs"] += 1
            self.host.send(other.ident, E.Resync(dev=msg.dev))

    def on_result(self, peer: Peer, msg: E.Result, payload: bytes | None) -> None:
        host = self.host
        p = host.pending.get(msg.r)
        if p is None or p.callee is not peer:
            host.stats["late_replies"] += 1
            log.info("dropped a late or foreign reply r=%d from %s", msg.r, peer.label)
            return
        del host.pending[msg.r]
        host.cancel(p.timer)
        p.on_result(msg.e, msg.m, payload, msg.d)

    # ---- named locks -----------------------------------------------------------------------

    def lock_req(self, peer: Peer, msg: E.LockReq) -> None:
        name = msg.name
        if name != "rtnl" and not (name.startswith("mutex:") and len(name) > 6):
            raise AuxError(Errno.EINVAL, f"$.header.name: {name!r} is not a lock (rtnl or mutex:<name>)")
        lock = self.host.lockdep.lock(name)
        if self.host.lockdep.holds(msg.task, name):
            if msg.ensure:
                return self.host.reply(peer.ident, msg.r, data={"held": True})
        key = (msg.task, name)
        held = self.lock_ops.get(key)
        if held is not None:
            # The task holds or already waits for it: refused, and the entry of that first
            # LOCK stays (it is what releases the lock when its peer dies). A second wait
            # would hide the first from that bookkeeping: -EBUSY; a re-take of a held
            # non-recursive lock is a self-deadlock: -EDEADLK.
            if not held.started:
                raise AuxError(Errno.EBUSY, f"lock {name}: task {msg.task} is already waiting for it")
            raise AuxError(Errno.EDEADLK, f"lock {name}: task {msg.task} already holds it")

        inversions = self.host.lockdep.inversions
        before = len(inversions)

        def granted(op: LockedOp):
            self.lock_ops[key] = op
            # An inversion this wait closed goes back with the grant: the peer reports where
            # in its code the lock was taken.
            mine = next((d for d in inversions[before:] if d["this"].startswith(f"{msg.task} ")), None)
            self.host.reply(peer.ident, msg.r, data={"held": False, **(
                {"inversion": describe("inversion", mine)} if mine is not None else {})})

        def cancelled(reason: str):
            self.lock_ops.pop(key, None)
            if peer.alive:
                holder = lock.owner.task if lock.owner else "-"
                self.host.reply(peer.ident, msg.r, Errno.ETIMEDOUT,
                           f"lock {name}: not granted within {msg.timeout_ms} ms (held by {holder})")
        op = LockedOp(f"{peer.label} takes {name}", granted, cancelled, msg.task)
        op.peer, op.stack = peer, tuple(msg.stack)      # type: ignore[assignment]
        lock.run(op)      # EDEADLK raises before anything is recorded
        if not op.cancelled:
            self.lock_ops[key] = op
        self.host.later(msg.timeout_ms / 1000, lock.cancel, op, "timeout")

    def unlock_req(self, peer: Peer, msg: E.UnlockReq) -> None:
        op = self.lock_ops.get((msg.task, msg.name))
        lock = self.host.lockdep.named.get(msg.name)
        if op is None or lock is None or lock.owner is not op:
            raise AuxError(Errno.EINVAL, f"unlock {msg.name}: task {msg.task} does not hold it")
        if op.peer is not peer:
            holder = op.peer.label if op.peer is not None else "the bus"
            raise AuxError(Errno.EPERM, f"unlock {msg.name}: held by {holder}, not {peer.label}")
        del self.lock_ops[(msg.task, msg.name)]
        lock.release(op)
        self.host.reply(peer.ident, msg.r)

    def locks_gone(self, peer: Peer) -> None:
        """A peer is gone: release the named locks it took, drop its queued requests."""
        for key, op in list(self.lock_ops.items()):
            if op.peer is not peer:
                continue
            del self.lock_ops[key]
            lock = self.host.lockdep.named[key[1]]
            if lock.owner is op:
                log.warning("%s died holding %s: released", peer.label, key[1])
                lock.release(op)
            else:
                op.cancel = None
                lock.cancel(op, "peer gone")
