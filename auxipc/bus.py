"""The bus model the broker enforces, without I/O.

``Bus`` takes decoded messages (``handle(ident, header, payload_frame)``) and the
passage of time (``tick()``), and leaves what to send in ``outbox`` (to a routing
id) and ``published`` (bus notifications). The broker process (``broker.py``)
drives it with real sockets; unit tests drive it directly.

Rules it enforces (see docs/protocol.md and kernel-semantics.md):
- devices: init (name required) -> add (``<modname>.<name>.<id>``, -EEXIST on a
  duplicate, binds at once) -> delete (unbinds synchronously) -> release at the
  last put;
- drivers: probe and id_table required, duplicate name -EBUSY, matching on the
  name cut at its last '.', probe 0 binds, -ENODEV/-ENXIO reject silently,
  -EPROBE_DEFER retried, other errors reported and the next driver tried;
- sync calls: checked (schema, direction, binding, discovery, payload), then
  delivered under the device's lock (parent->child) and answered exactly once:
  by the callee, by its death (-ENODEV), or at the deadline (-ETIMEDOUT).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog, decode_payload
from .devlock import DeviceLock, LockedOp
from .lifecycle import BindState, DeviceState, PeerState, bind_machine, device_machine, peer_machine

log = logging.getLogger("auxipc.broker")

PROBE_TIMEOUT = 10.0
REMOVE_TIMEOUT = 10.0
DEFER_RETRY = (0.1, 5.0)   # first and longest deferred-probe retry interval, seconds


def match_name(device_name: str) -> str:
    """The name a driver's id_table is compared with: the device name cut at its last '.'."""
    return device_name.rsplit(".", 1)[0]


def device_name(modname: str, name: str, dev_id: int) -> str:
    # auxiliary_device_add formats the id with %d: ids >= 2^31 print negative.
    signed = dev_id - 2**32 if dev_id >= 2**31 else dev_id
    return f"{modname}.{name}.{signed}"


@dataclass(eq=False)
class Peer:
    ident: bytes
    role: str
    name: str
    pid: int
    start_time: int
    inc: int
    schema: tuple
    handles: frozenset
    last_seen: float
    machine: object = None
    drivers: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    holding: Counter = field(default_factory=Counter)
    slow_calls: int = 0

    @property
    def label(self) -> str:
        return f"{self.role} {self.name}[{self.pid}]#{self.inc}"

    @property
    def alive(self) -> bool:
        return self.machine.state is PeerState.ALIVE


@dataclass(eq=False)
class Driver:
    name: str
    peer: Peer
    id_table: tuple
    handles: frozenset
    has_remove: bool
    has_shutdown: bool


@dataclass(eq=False)
class Device:
    dev_id: int
    parent: Peer
    short: str
    id: int
    name: str
    has_release: bool
    life: object
    bind: object
    lock: DeviceLock = field(default_factory=DeviceLock)
    driver: Driver | None = None
    refs: Counter = field(default_factory=Counter)
    defer_delay: float = 0.0
    last_error: str = ""

    @property
    def refcount(self) -> int:
        return sum(self.refs.values())


@dataclass(eq=False)
class Pending:
    """A request the broker sent to a peer and still owes an answer for."""
    rid: int
    callee: Peer
    deadline: float
    on_result: Callable[[int, str, bytes | None, dict], None]
    what: str
    sent: float


class Bus:
    def __init__(self, clock: Callable[[], float], epoch: int, catalog: Catalog = CATALOG,
                 hb_ivl: float = 0.25, hb_liveness: int = 3):
        self.clock, self.epoch, self.catalog = clock, epoch, catalog
        self.hb_ivl, self.hb_liveness = hb_ivl, hb_liveness
        self.peers: dict[bytes, Peer] = {}          # main routing id -> peer
        self.hb_idents: dict[bytes, Peer] = {}      # heartbeat routing id -> peer
        self.drivers: dict[str, Driver] = {}
        self.devices: dict[int, Device] = {}
        self.by_name: dict[str, Device] = {}        # added devices only
        self.pending: dict[int, Pending] = {}
        self.outbox: list[tuple[bytes, list[bytes]]] = []
        self.published: list[list[bytes]] = []
        self.uevents: deque = deque(maxlen=20000)
        self.stats = Counter()
        self._ids = itertools.count(1)
        self._incs = itertools.count(1)
        self._seq = itertools.count(1)
        self._timers: list = []
        self._tseq = itertools.count()

    # ---- plumbing ---------------------------------------------------------------

    def send(self, ident: bytes, msg: E.Header, payload=None) -> None:
        self.outbox.append((ident, E.encode(msg, payload)))

    def reply(self, ident: bytes, r: int, errno: int = 0, message: str = "", data: dict | None = None,
              payload: bytes | None = None) -> None:
        self.send(ident, E.Result(r=r, e=-abs(errno), m=message, d=data or {}), payload)

    def uevent(self, action: str, dev: str = "", driver: str = "", **detail) -> None:
        seq = next(self._seq)
        record = {"seq": seq, "ts": self.clock(), "action": action, "dev": dev, "driver": driver,
                  "detail": detail}
        self.uevents.append(record)
        self.published.append(E.encode(E.Uevent(seq=seq, action=action, dev=dev, driver=driver,
                                                detail=detail), topic=b"bus"))
        log.info("uevent %s %s %s %s", action, dev, driver, detail or "")

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.clock() + delay, next(self._tseq), fn))

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def tick(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        limit = self.hb_ivl * self.hb_liveness
        for peer in list(self.peers.values()):
            if peer.alive and now - peer.last_seen > limit:
                self.peer_died(peer, f"no heartbeat for {now - peer.last_seen:.2f} s "
                                     f"(interval {self.hb_ivl} s x {self.hb_liveness})")

    def request(self, peer: Peer, msg_for: Callable[[int], E.Header], payload, timeout: float,
                what: str, on_result: Callable[[int, str, bytes | None, dict], None]) -> Pending:
        """Send a request that the peer answers with RESULT; ``on_result`` runs exactly once."""
        rid = next(self._ids)
        now = self.clock()
        p = Pending(rid, peer, now + timeout, on_result, what, now)
        self.pending[rid] = p
        self.send(peer.ident, msg_for(rid), payload)

        def expire():
            if self.pending.pop(rid, None) is not None:
                self.stats["timeouts"] += 1
                peer.slow_calls += 1
                on_result(-Errno.ETIMEDOUT, f"{what}: no answer from {peer.label} within "
                          f"{timeout * 1000:.0f} ms (the process is alive: a slow handler)", None, {})
        self.later(timeout, expire)
        return p

    # ---- entry point --------------------------------------------------------------

    def handle(self, ident: bytes, msg: E.Header, payload: bytes | None) -> None:
        now = self.clock()
        hb_peer = self.hb_idents.get(ident)
        if hb_peer is not None:
            if hb_peer.alive:
                hb_peer.last_seen = now
                self.send(ident, E.Heartbeat(epoch=self.epoch))
            return
        if isinstance(msg, E.Heartbeat):
            # A heartbeat socket the bus does not know (a peer of a former broker).
            self.send(ident, E.Reregister(reason=f"unknown heartbeat socket; broker epoch {self.epoch}"))
            return
        if isinstance(msg, E.Register):
            return self.register(ident, msg)
        if isinstance(msg, E.Ctl):
            return  # control queries are answered by the broker process (control.py)
        peer = self.peers.get(ident)
        if peer is None or not peer.alive:
            self.stats["unregistered"] += 1
            self.send(ident, E.Reregister(reason="not registered with this broker "
                                                 f"(epoch {self.epoch}); send REGISTER first"))
            return
        peer.last_seen = now
        r = getattr(msg, "r", 0)
        try:
            match msg:
                case E.Result():
                    self.on_result(peer, msg, payload)
                case E.Call():
                    self.call(peer, msg, payload)
                case E.DrvRegister():
                    self.driver_register(peer, msg)
                case E.DrvUnregister():
                    self.driver_unregister(peer, msg)
                case E.DevInit():
                    self.dev_init(peer, msg)
                case E.DevAdd():
                    self.dev_add(peer, msg)
                case E.DevDelete():
                    self.dev_delete(peer, msg)
                case E.DevUninit():
                    self.dev_uninit(peer, msg)
                case E.DevGet():
                    self.dev_get(peer, msg)
                case E.DevPut():
                    self.dev_put(peer, msg)
                case E.Unregister():
                    self.unregister(peer, msg)
                case _:
                    raise AuxError(Errno.EPROTO, f"$.header.t: {msg.TYPE.name} is not sent to the broker")
        except AuxError as exc:
            self.reply(ident, r, exc.errno, exc.message)

    # ---- peers ----------------------------------------------------------------------

    def register(self, ident: bytes, msg: E.Register) -> None:
        old = self.peers.get(ident)
        if old is not None and old.alive:
            # A repeated REGISTER on the same socket (a retry): same incarnation.
            return self.reply(ident, msg.r, data=self._welcome(old))
        if msg.role not in ("parent", "child"):
            return self.reply(ident, msg.r, Errno.EINVAL, f"$.header.role: {msg.role!r} is not 'parent' or 'child'")
        if not msg.name:
            return self.reply(ident, msg.r, Errno.EINVAL, "$.header.name: empty")
        if msg.schema[0] != self.catalog.version[0]:
            return self.reply(ident, msg.r, Errno.EPROTO,
                              f"schema {msg.schema[0]}.{msg.schema[1]} is incompatible with the bus's "
                              f"{self.catalog.version_str} (major versions differ)")
        for other in list(self.peers.values()):
            if other.alive and other.pid == msg.pid and other.start_time == msg.start_time:
                self.peer_died(other, f"re-registered on a new socket (pid {msg.pid})")
        peer = Peer(ident, msg.role, msg.name, msg.pid, msg.start_time, next(self._incs),
                    tuple(msg.schema), frozenset(msg.handles), self.clock())
        peer.machine = peer_machine(peer.label)
        self.peers[ident] = peer
        self.hb_idents[ident + b"#hb"] = peer
        self.uevent("REGISTER", role=msg.role, name=msg.name, pid=msg.pid, inc=peer.inc)
        self.reply(ident, msg.r, data=self._welcome(peer))

    def _welcome(self, peer: Peer) -> dict:
        return {"peer": peer.label, "inc": peer.inc, "epoch": self.epoch,
                "hb_ivl_ms": int(self.hb_ivl * 1000), "hb_liveness": self.hb_liveness,
                "schema": list(self.catalog.version)}

    def unregister(self, peer: Peer, msg: E.Unregister) -> None:
        self.reply(peer.ident, msg.r)
        self._peer_gone(peer, "unregister", "unregistered")

    def peer_died(self, peer: Peer, reason: str) -> None:
        if peer.alive:
            self.stats["peer_deaths"] += 1
            self._peer_gone(peer, "crash", reason)

    def _peer_gone(self, peer: Peer, event: str, reason: str) -> None:
        peer.machine.fire(event)
        log.log(logging.WARNING if event == "crash" else logging.INFO, "%s is %s: %s",
                peer.label, peer.machine.state.value, reason)
        self.uevent("PEER_DEAD" if event == "crash" else "UNREGISTER", name=peer.name, pid=peer.pid,
                    inc=peer.inc, reason=reason)
        for rid, p in list(self.pending.items()):
            if p.callee is peer:
                del self.pending[rid]
                p.on_result(-Errno.ENODEV, f"{p.what}: {peer.label} is gone ({reason})", None, {})
        for drv in list(peer.drivers):
            self._driver_gone(drv, f"driver {drv.name} died ({reason})" if event == "crash"
                              else f"driver {drv.name} unregistered")
        for dev in list(peer.devices):
            self._parent_gone(dev, reason)
        for dev_id, n in list(peer.holding.items()):
            dev = self.devices.get(dev_id)
            if dev is not None:
                for _ in range(n):
                    self._put(dev, peer)
        self.peers.pop(peer.ident, None)
        self.hb_idents.pop(peer.ident + b"#hb", None)

    # ---- drivers ------------------------------------------------------------------

    def driver_register(self, peer: Peer, msg: E.DrvRegister) -> None:
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
        todo = [d for d in self.devices.values()
                if d.life.state is DeviceState.ADDED and d.bind.state in (BindState.UNBOUND, BindState.DEFERRED)
                and match_name(d.name) in drv.id_table]
        self._chain([lambda done, d=d: self._probe(d, [drv], done) for d in todo],
                    lambda: self.reply(peer.ident, msg.r, data={"probed": [d.name for d in todo]}))

    def driver_unregister(self, peer: Peer, msg: E.DrvUnregister) -> None:
        drv = self.drivers.get(msg.name)
        if drv is None or drv.peer is not peer:
            raise AuxError(Errno.ENODEV, f"driver {msg.name} is not registered by {peer.label}")
        bound = [d for d in self.devices.values() if d.driver is drv]
        del self.drivers[drv.name]
        peer.drivers.remove(drv)

        def unbind_all():
            self.uevent("DRIVER_REMOVE", driver=drv.name)
            self.reply(peer.ident, msg.r)
        self._chain([lambda done, d=d: self._remove(d, "driver unregistered", done) for d in bound], unbind_all)

    def _driver_gone(self, drv: Driver, reason: str) -> None:
        """The driver's process is gone: unbind its devices without calling remove()."""
        self.drivers.pop(drv.name, None)
        if drv in drv.peer.drivers:
            drv.peer.drivers.remove(drv)
        for dev in self.devices.values():
            if dev.driver is drv:
                dev.bind.fire("driver_gone")
                dev.driver = None
                self._unbound(dev, drv, reason)
            elif dev.bind.state is BindState.PROBING and dev.lock.owner and drv.name in dev.lock.owner.what:
                pass  # the pending probe is answered -ENODEV by peer_died
        self.uevent("DRIVER_REMOVE", driver=drv.name, reason=reason)

    def _unbound(self, dev: Device, drv: Driver, reason: str) -> None:
        dev.lock.cancel_queued(f"{dev.name} was unbound ({reason})")
        self.uevent("UNBIND", dev.name, drv.name, reason=reason)
        if dev.parent.alive:
            self.send(dev.parent.ident, E.Unbind(dev=dev.dev_id, reason=reason))

    # ---- matching, probe, remove -------------------------------------------------------

    def _chain(self, steps: list[Callable[[Callable[[], None]], None]], finish: Callable[[], None]) -> None:
        """Run asynchronous steps one after another, then ``finish``."""
        it = iter(steps)

        def step():
            nxt = next(it, None)
            if nxt is None:
                finish()
            else:
                nxt(step)
        step()

    def _candidates(self, dev: Device) -> list[Driver]:
        m = match_name(dev.name)
        return [d for d in self.drivers.values() if m in d.id_table]

    def _probe(self, dev: Device, drivers: list[Driver], done: Callable[[], None]) -> None:
        """Try each driver in turn under the device lock until one binds."""
        if not drivers or dev.life.state is not DeviceState.ADDED or dev.driver is not None:
            return done()
        drv, rest = drivers[0], drivers[1:]
        if not drv.peer.alive or self.drivers.get(drv.name) is not drv:
            return self._probe(dev, rest, done)

        def start(op: LockedOp):
            if dev.life.state is not DeviceState.ADDED or dev.driver is not None or not drv.peer.alive:
                dev.lock.release(op)
                return done()
            dev.bind.fire("probe")
            parent = dev.parent
            self.request(drv.peer, lambda rid: E.Probe(
                r=rid, dev=dev.dev_id, name=dev.name, driver=drv.name,
                parent_handles=sorted(parent.handles), parent_schema=parent.schema),
                None, PROBE_TIMEOUT, f"probe of {dev.name} by {drv.name}",
                lambda e, m, _p, _d: finished(op, e, m))

        def finished(op: LockedOp, e: int, m: str):
            dev.lock.release(op)
            if e == 0 and dev.bind.state is BindState.PROBING:
                dev.bind.fire("probe_ok")
                dev.driver = drv
                dev.defer_delay = 0.0
                self.uevent("BIND", dev.name, drv.name, modalias=f"auxiliary:{match_name(dev.name)}")
                if dev.parent.alive:
                    self.send(dev.parent.ident, E.Bind(dev=dev.dev_id, driver=drv.name, inc=drv.peer.inc,
                                                       handles=sorted(drv.handles), schema=drv.peer.schema))
                self._retry_deferred()
                return done()
            if dev.bind.state is not BindState.PROBING:   # the driver died meanwhile
                return self._probe(dev, rest, done)
            if e in (-Errno.ENODEV, -Errno.ENXIO):
                dev.bind.fire("probe_reject")
                return self._probe(dev, rest, done)
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
            return self._probe(dev, rest, done)

        def cancel(reason: str):
            done()
        dev.lock.run(LockedOp(f"probe {dev.name} by {drv.name}", start, cancel))

    def _retry(self, dev: Device) -> None:
        if dev.life.state is DeviceState.ADDED and dev.bind.state is BindState.DEFERRED:
            dev.bind.fire("give_up")   # back to UNBOUND, then probe again
            self._probe(dev, self._candidates(dev), lambda: None)

    def _retry_deferred(self) -> None:
        """A successful bind may satisfy deferred probes (driver_deferred_probe_trigger)."""
        for dev in list(self.devices.values()):
            if dev.bind.state is BindState.DEFERRED:
                self.later(0, lambda d=dev: self._retry(d))

    def _remove(self, dev: Device, reason: str, done: Callable[[], None]) -> None:
        """Unbind under the device lock: the child's remove() completes before ``done``."""
        def start(op: LockedOp):
            drv = dev.driver
            if drv is None or dev.bind.state is not BindState.BOUND:
                dev.lock.release(op)
                return done()
            dev.bind.fire("remove")
            self.request(drv.peer, lambda rid: E.Remove(r=rid, dev=dev.dev_id, reason=reason), None,
                         REMOVE_TIMEOUT, f"remove of {dev.name} by {drv.name}",
                         lambda e, m, _p, _d: finished(op, drv, e, m))

        def finished(op: LockedOp, drv: Driver, e: int, m: str):
            if e:
                log.warning("remove of %s by %s: %s %s (treated as removed)", dev.name, drv.name, errno_name(e), m)
            if dev.bind.state is BindState.REMOVING:
                dev.bind.fire("removed")
                dev.driver = None
                self._unbound(dev, drv, reason)
            dev.lock.release(op)
            done()
        dev.lock.run(LockedOp(f"remove {dev.name}", start, lambda _r: done()))

    # ---- devices ------------------------------------------------------------------------

    def _own(self, peer: Peer, dev_id: int) -> Device:
        dev = self.devices.get(dev_id)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{dev_id} does not exist (released or never initialized)")
        if dev.parent is not peer:
            raise AuxError(Errno.EPERM, f"device {dev.name} belongs to {dev.parent.label}, not {peer.label}")
        return dev

    def dev_init(self, peer: Peer, msg: E.DevInit) -> None:
        if peer.role != "parent":
            raise AuxError(Errno.EPERM, f"{peer.label}: only a parent creates devices")
        if not msg.name:
            raise AuxError(Errno.EINVAL, "auxiliary_device_init: $.header.name is empty")
        dev_id = next(self._ids)
        name = device_name(peer.name, msg.name, msg.id)
        dev = Device(dev_id, peer, msg.name, msg.id, name, msg.release, device_machine(name), bind_machine(name))
        dev.refs[peer.label] = 1
        self.devices[dev_id] = dev
        peer.devices.append(dev)
        self.reply(peer.ident, msg.r, data={"dev": dev_id, "name": name})

    def dev_add(self, peer: Peer, msg: E.DevAdd) -> None:
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
            peer.ident, msg.r, data={"name": dev.name, "driver": dev.driver.name if dev.driver else None}))

    def dev_delete(self, peer: Peer, msg: E.DevDelete) -> None:
        dev = self._own(peer, msg.dev)
        self._delete(dev, "device deleted", lambda: self.reply(peer.ident, msg.r))

    def _delete(self, dev: Device, reason: str, done: Callable[[], None]) -> None:
        dev.life.fire("delete")
        self.by_name.pop(dev.name, None)
        # Calls queued behind the lock never reach the child; the one in flight completes.
        dev.lock.cancel_queued(f"{dev.name} was deleted", keep=lambda op: op.what.startswith("remove"))

        def finish():
            self.uevent("REMOVE", dev.name)
            done()
        self._remove(dev, reason, finish)

    def dev_uninit(self, peer: Peer, msg: E.DevUninit) -> None:
        dev = self._own(peer, msg.dev)
        if dev.life.state is DeviceState.ADDED:
            raise AuxError(Errno.EBUSY, f"auxiliary_device_uninit: {dev.name} is still on the bus; delete it first")
        if dev.refs.get(peer.label, 0) == 0:
            raise AuxError(Errno.EINVAL, f"auxiliary_device_uninit: {dev.name} was already uninitialized")
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self._put(dev, peer)

    def _parent_gone(self, dev: Device, reason: str) -> None:
        """The parent process died or left: delete and uninit its device for it."""
        def uninit():
            if dev.refs.get(dev.parent.label):
                self._put(dev, dev.parent)
        if dev.life.state is DeviceState.ADDED:
            self._delete(dev, f"parent gone ({reason})", uninit)
        else:
            uninit()

    def dev_get(self, peer: Peer, msg: E.DevGet) -> None:
        dev = self.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"get_device: device #{msg.dev} was released")
        dev.refs[peer.label] += 1
        peer.holding[dev.dev_id] += 1
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount})

    def dev_put(self, peer: Peer, msg: E.DevPut) -> None:
        dev = self.devices.get(msg.dev)
        if dev is None or peer.holding.get(msg.dev, 0) == 0:
            raise AuxError(Errno.EINVAL, f"put_device: {peer.label} holds no reference to device #{msg.dev}")
        self.reply(peer.ident, msg.r, data={"refcount": dev.refcount - 1})
        self._put(dev, peer)

    def _put(self, dev: Device, holder: Peer) -> None:
        dev.refs[holder.label] -= 1
        if dev.refs[holder.label] <= 0:
            del dev.refs[holder.label]
        if holder.holding.get(dev.dev_id):
            holder.holding[dev.dev_id] -= 1
            if holder.holding[dev.dev_id] <= 0:
                del holder.holding[dev.dev_id]
        if dev.refcount == 0:
            self._release(dev)

    def _release(self, dev: Device) -> None:
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

    # ---- sync calls ----------------------------------------------------------------------

    def call(self, peer: Peer, msg: E.Call, payload: bytes | None) -> None:
        spec = self.catalog.lookup(msg.ev)
        if not spec.direction.allows(peer.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {peer.role} cannot send it")
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: publish it, do not CALL it")
        dev = self.devices.get(msg.dev)
        if dev is None:
            raise AuxError(Errno.ENODEV, f"device #{msg.dev} does not exist")
        decode_payload(spec, E.decode_payload_frame(payload))
        if peer.role == "parent":
            if dev.parent is not peer:
                raise AuxError(Errno.EPERM, f"{dev.name} belongs to {dev.parent.label}")
            if dev.life.state is not DeviceState.ADDED or dev.bind.state is not BindState.BOUND:
                raise AuxError(Errno.ENODEV, f"{dev.name} is {dev.life.state.value}, {dev.bind.state.value}: "
                               "no driver to deliver to")
            drv = dev.driver
            if spec.code not in drv.handles:
                raise AuxError(Errno.EOPNOTSUPP, f"driver {drv.name} has no handler for {spec.name}")
            self._call_child(peer, msg, payload, dev, drv, spec.name)
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
            self._forward(peer, msg, payload, parent, dev, spec.name, self.clock() + msg.timeout_ms / 1000)

    def _forward(self, caller: Peer, msg: E.Call, payload, callee: Peer, dev: Device, ev_name: str,
                 deadline: float, after: Callable[[], None] | None = None) -> None:
        remaining = max(deadline - self.clock(), 0.0)
        started = self.clock()

        def answered(e: int, m: str, reply_payload: bytes | None, _d: dict):
            self.stats["calls"] += 1
            if e:
                self.stats[f"calls_{errno_name(e)}"] += 1
            if caller.alive:
                self.reply(caller.ident, msg.r, e, m, payload=reply_payload)
            self.published.append(E.encode(E.Uevent(seq=0, action="CALL", dev=dev.name, detail={
                "event": ev_name, "from": caller.label, "to": callee.label, "errno": e,
                "us": int((self.clock() - started) * 1e6)}), topic=b"trace"))
            if after:
                after()
        self.request(callee, lambda rid: E.Request(r=rid, dev=msg.dev, ev=msg.ev,
                                                   timeout_ms=int(remaining * 1000), inc=caller.inc),
                     payload, remaining, f"{ev_name} on {dev.name}", answered)

    def _call_child(self, caller: Peer, msg: E.Call, payload, dev: Device, drv: Driver, ev_name: str) -> None:
        deadline = self.clock() + msg.timeout_ms / 1000

        def start(op: LockedOp):
            if not caller.alive or dev.driver is not drv or dev.bind.state is not BindState.BOUND:
                dev.lock.release(op)
                if caller.alive:
                    self.reply(caller.ident, msg.r, Errno.ENODEV, f"{dev.name} was unbound before delivery")
                return
            if self.clock() >= deadline:
                dev.lock.release(op)
                return self.reply(caller.ident, msg.r, Errno.ETIMEDOUT,
                                  f"{ev_name} on {dev.name}: deadline passed waiting for device_lock")
            self._forward(caller, msg, payload, drv.peer, dev, ev_name, deadline, lambda: dev.lock.release(op))

        def cancel(reason: str):
            if caller.alive:
                self.reply(caller.ident, msg.r, Errno.ENODEV, f"{ev_name}: {reason}")

        op = LockedOp(f"call {ev_name} {dev.name}", start, cancel)

        def expire_queued():
            if not op.started and not op.cancelled:
                op.cancelled = True
                if caller.alive:
                    self.reply(caller.ident, msg.r, Errno.ETIMEDOUT,
                               f"{ev_name} on {dev.name}: deadline passed waiting for device_lock "
                               f"(held by: {dev.lock.owner.what if dev.lock.owner else '-'})")
        self.later(msg.timeout_ms / 1000, expire_queued)
        dev.lock.run(op)

    def on_result(self, peer: Peer, msg: E.Result, payload: bytes | None) -> None:
        p = self.pending.get(msg.r)
        if p is None or p.callee is not peer:
            self.stats["late_replies"] += 1
            log.info("dropped a late or foreign reply r=%d from %s", msg.r, peer.label)
            return
        del self.pending[msg.r]
        p.on_result(msg.e, msg.m, payload, msg.d)

    # ---- queries -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The bus as ``auxipc ls --json`` shows it."""
        now = self.clock()
        devices = []
        for dev in sorted(self.devices.values(), key=lambda d: d.dev_id):
            child_handles = dev.driver.handles if dev.driver else frozenset()
            events = []
            for spec in self.catalog:
                receiver = child_handles if spec.direction.allows("parent") else dev.parent.handles
                events.append({"event": spec.name, "direction": spec.direction.value,
                               "delivery": spec.delivery.value,
                               "parent": spec.code in dev.parent.handles, "child": spec.code in child_handles,
                               "deliverable": bool(dev.driver) and spec.code in receiver})
            devices.append({
                "id": dev.dev_id, "name": dev.name, "match": match_name(dev.name),
                "driver": dev.driver.name if dev.driver else None,
                "state": dev.life.state.value, "bind": dev.bind.state.value,
                "refcount": dev.refcount, "holders": dict(dev.refs),
                "parent": dev.parent.label, "locked_by": dev.lock.owner.what if dev.lock.owner else None,
                "queued": len(dev.lock.queue), "last_error": dev.last_error, "events": events})
        drivers = [{"name": d.name, "id_table": list(d.id_table), "peer": d.peer.label,
                    "bound": [x.name for x in self.devices.values() if x.driver is d],
                    "handles": sorted(self.catalog.lookup(c).name for c in d.handles if self.catalog.get(c))}
                   for d in self.drivers.values()]
        peers = [{"role": p.role, "name": p.name, "pid": p.pid, "inc": p.inc, "alive": p.alive,
                  "state": p.machine.state.value, "schema": ".".join(map(str, p.schema)),
                  "last_seen_ms": int((now - p.last_seen) * 1000), "slow_calls": p.slow_calls}
                 for p in self.peers.values()]
        return {"epoch": self.epoch, "schema": self.catalog.version_str, "devices": devices,
                "drivers": drivers, "peers": peers, "pending": len(self.pending),
                "stats": dict(self.stats)}
