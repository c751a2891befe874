"""The bus model the broker enforces, without I/O.

``Bus`` takes decoded messages (``handle(ident, header, payload_frame)``) and the
passage of time (``tick()``), and leaves what to send in ``outbox`` (to a routing
id) and ``published`` (bus notifications). The broker process (``server.py``)
drives it with real sockets; unit tests drive it directly.

``Bus`` holds the tables, the plumbing (outbox, timers, pending requests,
faults) and the peers; its parts do the rest and see it only through
``records.Host``: ``Binding`` (binding.py, the driver core), ``Devices``
(devices.py, device lifetimes) and ``Calls`` (calls.py, sync calls and locks).

Rules it enforces (see docs/protocol.md and docs/conformance.md):
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

import itertools
import logging
import math
from collections import Counter, deque
from functools import partial
from typing import Any, Callable

from auxipc.broker.binding import Binding
from auxipc.broker.bugs import Bugs
from auxipc.broker.calls import Calls
from auxipc.broker.devices import Devices
from auxipc.broker.lanes import Tracing
from auxipc.broker.lifecycle import PeerEvent, peer_machine
from auxipc.broker.lockdep import LockDep
from auxipc.broker.records import Adopted, Device, Driver, Peer, Pending, device_name, match_name
from auxipc.broker.timers import Timer, Timers
from auxipc.faults import FaultPlan, FaultRule, corrupt
from auxipc.runtime_dir import remote_host
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import CATALOG, Catalog

log = logging.getLogger("auxipc.broker")

# The kernel's hung-task detector reports a task blocked for hung_task_timeout_secs
# (120 by default); the emulator's remove() has no deadline and is reported sooner.
HUNG_TASK_SECS = 10.0
_RESULT = E.frame_maker(E.Result)     # the frames of a RESULT (E.fast as straight-line code)

def _fault_msg(rules: list, rid: int) -> E.Header:
    return E.Fault(r=rid, rules=rules)


def _ignore(*_) -> None:
    """An answer nobody waits for."""


__all__ = ["Bus", "Device", "Driver", "Peer", "Pending", "device_name", "match_name"]


class Bus:
    """The host of the bus's parts: the driver core (``binding``), device lifetimes
    (``lifetime``) and call routing (``calls``) see it through ``records.Host``."""

    tracing = Tracing()     # whether anyone reads the trace (call records are built only then)

    def __init__(self, clock: Callable[[], float], epoch: int, catalog: Catalog = CATALOG,
                 hb_ivl: float = 0.25, hb_liveness: int = 3, hung_task_secs: float = HUNG_TASK_SECS):
        self.clock, self.epoch, self.catalog = clock, epoch, catalog
        self.hb_ivl, self.hb_liveness = hb_ivl, hb_liveness
        self.hung_task_secs = hung_task_secs
        # What the kernel would WARN or print about (a hung remove, devices left behind by
        # their parent): kept for ``ls``, sent as WARN uevents and trace records.
        self.warnings: deque = deque(maxlen=1000)
        self.peers: dict[bytes, Peer] = {}          # main routing id -> peer
        self.hb_idents: dict[bytes, Peer] = {}      # heartbeat routing id -> peer
        self.named: dict[tuple[str, str, str], Peer] = {}    # (role, name, instance) -> its latest peer
        self.drivers: dict[str, Driver] = {}
        self.devices: dict[int, Device] = {}
        self.by_name: dict[str, Device] = {}        # added devices only
        self.pending: dict[int, Pending] = {}
        self.outbox: list[tuple[bytes, list[bytes]]] = []
        # Called where an answer should leave before the bookkeeping that follows it
        # (a call's locks released after its RESULT is out); the broker sends the outbox.
        self.on_output: Callable[[], None] = lambda: None
        self.published: list[list[bytes]] = []
        self.uevents: deque = deque(maxlen=20000)
        self.stats: Counter[str] = Counter()
        self.bugs = Bugs(clock, self.stats)         # contract bugs seen on the bus (bugs.py)
        self.next_id: Callable[[], int] = itertools.count(1).__next__    # request, device and rule ids
        self._incs = itertools.count(1)
        self._seq = itertools.count(1)
        self.timers = Timers()
        self.lockdep = LockDep(self._lockdep_report)
        self.faults = FaultPlan()
        self._tracing = True    # the broker clears it while nobody subscribes to 'trace' (``tracing``)
        # Whether a peer's process (pid, start time) still runs; the broker reads /proc.
        self.process_alive: Callable[[int, int], bool] = lambda pid, start_time: True
        self._held_back: dict[bytes, list] = {}    # reorder faults: frames held until the next send
        self._hb_echo = E.encode(E.Heartbeat(epoch=epoch))    # the same frames every time
        self._hb_due = 0.0            # no peer's heartbeat can expire before this time
        self.binding = Binding(self)
        self.lifetime = Devices(self, self.binding)
        self.calls = Calls(self)
        b, d, c = self.binding, self.lifetime, self.calls
        self._handlers: dict[type, Callable[[Peer, Any], None]] = {   # message type -> handler(peer, msg)
            E.DrvRegister: b.driver_register, E.DrvUnregister: b.driver_unregister,
            E.DevInit: d.dev_init, E.DevAdd: d.dev_add, E.DevDelete: d.dev_delete,
            E.DevUninit: d.dev_uninit, E.DevGet: d.dev_get, E.DevPut: d.dev_put, E.DevPm: self.dev_pm,
            E.DevFind: d.dev_find,
            E.LockReq: c.lock_req, E.Resync: c.resync, E.UnlockReq: c.unlock_req,
            E.Unregister: self.unregister, E.Uevent: self.bugs.from_peer, E.LaneOffer: b.lanes.offer,
        }
        self._on_result, self._call = c.on_result, c.call

    # ---- the driver core, for the broker's control socket ---------------------------

    def bind_device(self, name: str, driver: str, done: Callable[[int, str], None]) -> None:
        self.binding.bind_device(name, driver, done)

    def unbind_device(self, name: str, done: Callable[[int, str], None], driver: str = "") -> None:
        self.binding.unbind_device(name, done, driver)

    def shutdown_all(self, done: Callable[[], None]) -> None:
        self.binding.shutdown_all(done)

    def leaks(self) -> list[dict]:
        return self.lifetime.leaks()

    def dev_pm(self, peer: Peer, msg: E.DevPm) -> None:
        self.binding.dev_pm(peer, self.lifetime.own(peer, msg.dev), msg)

    # ---- plumbing ---------------------------------------------------------------

    def send(self, ident: bytes, msg: E.Header, payload=None) -> None:
        self._send_frames(ident, E.encode(msg, payload))

    def _send_frames(self, ident: bytes, frames: list[bytes]) -> None:
        self.outbox.append((ident, frames))
        held = self._held_back.pop(ident, None) if self._held_back else None
        if held:
            self.outbox.extend(held)     # a reordered message goes out after the next one

    # ---- fault injection ----------------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> FaultRule:
        rule.id = self.next_id()
        self.faults.rules.append(rule)
        self.uevent("FAULT_ADD", rule=rule.to_dict())
        self._push_faults()
        return rule

    def clear_faults(self, target: str = "") -> int:
        before = len(self.faults.rules)
        self.faults.rules = [r for r in self.faults.rules if target and r.target != target]
        self._push_faults()
        return before - len(self.faults.rules)

    def _push_faults(self) -> None:
        self.binding.lanes.faults_changed()
        for peer in self.peers.values():
            if peer.alive:
                rules = [r.to_dict() for r in self.faults.rules if r.target in ("*", peer.name)]
                self.request(peer, partial(_fault_msg, rules), None, 5.0, f"fault rules to {peer.label}",
                             _ignore)

    def fault_applied(self, rule: FaultRule, **detail) -> None:
        self.stats["faults_applied"] += 1
        self.published.append(E.encode(E.Uevent(seq=0, action="FAULT", detail={
            "rule": rule.id, "kind": rule.kind, "action": rule.action or rule.point, **detail}), topic=b"trace"))

    def message_fault(self, rule: FaultRule, peer: Peer, frames: list[bytes], what: str) -> None:
        self.fault_applied(rule, to=peer.label, what=what)
        if rule.action == "drop":
            self.stats["dropped_by_fault"] += 1
        elif rule.action == "delay":
            self.later(rule.delay_ms / 1000, lambda: self.outbox.append((peer.ident, frames)))
        elif rule.action == "duplicate":
            self.outbox.extend([(peer.ident, frames), (peer.ident, frames)])
        elif rule.action == "reorder":
            self._held_back.setdefault(peer.ident, []).append((peer.ident, frames))
            self.later(0.5, lambda: self.outbox.extend(self._held_back.pop(peer.ident, [])))
        elif rule.action == "corrupt":
            self.outbox.append((peer.ident, [*frames[:-1], corrupt(frames[-1], rule._rng)]))

    def reply(self, ident: bytes, r: int, errno: int = 0, message: str = "", data: dict | None = None,
              payload: bytes | None = None) -> None:
        self.outbox.append((ident, _RESULT(payload, r=r, e=-abs(errno), m=message[:4000], d=data or {})))
        held = self._held_back.pop(ident, None) if self._held_back else None
        if held:
            self.outbox.extend(held)

    def uevent(self, action: str, dev: str = "", driver: str = "", **detail) -> None:
        seq = next(self._seq)
        record = {"seq": seq, "ts": self.clock(), "action": action, "dev": dev, "driver": driver,
                  "detail": detail}
        self.uevents.append(record)
        self.published.append(E.encode(E.Uevent(seq=seq, action=action, dev=dev, driver=driver,
                                                detail=detail), topic=b"bus"))
        log.info("uevent %s %s %s %s", action, dev, driver, detail or "")

    def warn(self, kind: str, message: str, dev: str = "", driver: str = "", **detail) -> None:
        """Report what the kernel would print a warning for, where every observer sees it:
        ``ls`` (``warnings``), a WARN uevent, a trace record and the broker's log."""
        record = {"kind": kind, "message": message, "dev": dev, "driver": driver, "ts": self.clock(), **detail}
        self.warnings.append(record)
        self.stats[f"warn_{kind}"] += 1
        log.warning("%s", message)
        self.uevent("WARN", dev, driver, kind=kind, message=message, **detail)
        self.published.append(E.encode(E.Uevent(seq=0, action="WARN", dev=dev, driver=driver, detail={
            "kind": kind, "message": message, **detail}), topic=b"trace"))

    def _lockdep_report(self, kind: str, detail: dict) -> None:
        self.bugs.lockdep(kind, detail)
        self.stats[f"lockdep_{kind}"] += 1
        log.warning("lockdep: %s: %s", kind, detail)
        self.uevent("LOCKDEP", kind=kind, **detail)
        self.published.append(E.encode(E.Uevent(seq=0, action="LOCKDEP", detail={"kind": kind, **detail}),
                                       topic=b"trace"))

    @staticmethod
    def task_of(peer: Peer, msg) -> str:
        """The task a request runs in: the one it names, else a task of its own (a
        peer that does not name tasks never has two requests in one task)."""
        return msg.task or f"{peer.name}#{peer.inc}/r{msg.r}"

    def later(self, delay: float, fn: Callable[..., object], *args) -> Timer:
        """Run ``fn(*args)`` after ``delay`` seconds; returns a handle for ``cancel``."""
        return self.timers.at(self.clock() + delay, fn, *args)

    def at(self, when: float, fn: Callable[..., object], *args) -> Timer:
        """Run ``fn(*args)`` at clock time ``when``; returns a handle for ``cancel``."""
        return self.timers.at(when, fn, *args)

    def cancel(self, timer: Timer | None) -> None:
        self.timers.cancel(timer)

    def next_timer(self) -> float | None:
        return self.timers.next_due()

    def tick(self) -> None:
        now = self.clock()
        self.timers.fire_due(now)
        if now >= self._hb_due:
            self._check_heartbeats(now)

    def _check_heartbeats(self, now: float) -> None:
        """Declare dead the peers silent past their liveness; note when the next can be.
        (``last_seen`` only grows, and a new peer expires no earlier than ``now + limit``.)"""
        limit = self.hb_ivl * self.hb_liveness
        due = now + limit
        for peer in list(self.peers.values()):
            if not peer.alive:
                continue
            if now - peer.last_seen > limit:
                self.peer_died(peer, f"no heartbeat for {now - peer.last_seen:.2f} s "
                                     f"(interval {self.hb_ivl} s x {self.hb_liveness})")
            else:
                due = min(due, peer.last_seen + limit)
        self._hb_due = due

    def request(self, peer: Peer, msg_for: Callable[[int], E.Header], payload, timeout: float | None,
                what: str, on_result: Callable[[int, str, bytes | None, dict], None],
                event: str = "") -> Pending:
        """Send a request that the peer answers with RESULT; ``on_result`` runs exactly once:
        with the answer, -ENODEV when the peer is gone, or -ETIMEDOUT after ``timeout``
        seconds (None: no deadline, as long as the peer lives).
        A sync event (``event``) to the peer may meet a message fault on the way."""
        rid = self.next_id()
        if not peer.alive:
            return self.expect(peer, rid, None, timeout, what, on_result)
        msg = msg_for(rid)
        frames = msg if isinstance(msg, list) else E.encode(msg, payload)
        return self.expect(peer, rid, frames, timeout, what, on_result, event)

    def expect(self, peer: Peer, rid: int, frames: list[bytes] | None, timeout: float | None, what: object,
               on_result: Callable[[int, str, bytes | None, dict], None], event: str = "") -> Pending:
        """``request`` for frames already built with request id ``rid`` (from ``self.next_id``)."""
        now = self.clock()
        p = Pending(rid, peer, now + timeout if timeout is not None else math.inf, on_result, what, now)
        if not peer.alive:      # never wait for an answer from the dead
            self.later(0, on_result, -Errno.ENODEV, f"{what}: {peer.label} is gone", None, {})
            return p
        self.pending[rid] = p
        rule = self.faults.find("message", peer.name, event) if event and self.faults else None
        assert frames is not None      # built for every live peer (request)
        if rule is None:
            self.outbox.append((peer.ident, frames))
        else:
            self.message_fault(rule, peer, frames, str(what))
        if timeout is not None:
            p.timer = self.at(p.deadline, self._expire, p)
        return p

    def _expire(self, p: Pending) -> None:
        if self.pending.pop(p.rid, None) is not None:
            self.stats["timeouts"] += 1
            p.callee.slow_calls += 1
            p.on_result(-Errno.ETIMEDOUT, f"{p.what}: no answer from {p.callee.label} within "
                        f"{(p.deadline - p.sent) * 1000:.0f} ms (the process is alive: a slow handler)", None, {})

    def settle(self, rid: int) -> Pending | None:
        """Take a pending request off the table (answered or its callee gone)."""
        p = self.pending.pop(rid, None)
        if p is not None:
            self.cancel(p.timer)
        return p

    # ---- entry point --------------------------------------------------------------

    def handle(self, ident: bytes, msg: Any, payload: bytes | None) -> None:
        """One decoded message (an ``E.Header`` of the type its ``t`` names) from ``ident``."""
        now = self.clock()
        hb_peer = self.hb_idents.get(ident)
        if hb_peer is not None:
            if hb_peer.alive:
                hb_peer.last_seen = now
                self._send_frames(ident, self._hb_echo)
            return
        kind = type(msg)
        if kind is E.Heartbeat:
            # A heartbeat socket the bus does not know (a peer of a former broker).
            self.send(ident, E.Reregister(reason=f"unknown heartbeat socket; broker epoch {self.epoch}"))
            return
        if kind is E.Register:
            return self.register(ident, msg)
        if kind is E.Ctl:
            return  # control queries are answered by the broker process (control.py)
        peer = self.peers.get(ident)
        if peer is None or not peer.alive:
            self.stats["unregistered"] += 1
            self.send(ident, E.Reregister(reason="not registered with this broker "
                                                 f"(epoch {self.epoch}); send REGISTER first"))
            return
        peer.last_seen = now
        try:
            if kind is E.Result:
                self._on_result(peer, msg, payload)
            elif kind is E.Call:
                self._call(peer, msg, payload)
            else:
                handler = self._handlers.get(kind)
                if handler is None:
                    raise AuxError(Errno.EPROTO, f"$.header.t: {msg.TYPE.name} is not sent to the broker")
                handler(peer, msg)
        except AuxError as exc:
            self.reply(ident, getattr(msg, "r", 0), exc.errno, exc.message)

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
        # Any schema major registers (the envelope is the same); matching never binds
        # a driver and a device whose peers' majors differ (ops.schema_clash).
        # One live peer per role, name and instance (a parent's PCI address: two
        # instances of one model are two peers): the same process registering it again
        # (on a new socket) replaces it; another process gets -EEXIST while it lives.
        other = self.named.get((msg.role, msg.name, msg.instance))
        if other is not None and other.alive:
            if other.pid == msg.pid and other.start_time == msg.start_time:
                self.peer_died(other, f"re-registered on a new socket (pid {msg.pid})")
            elif self.process_alive(other.pid, other.start_time):
                self.stats["register_eexist"] += 1
                return self.reply(ident, msg.r, Errno.EEXIST, f"register: {other.label} is already "
                                  f"registered as {msg.role} {msg.name!r}"
                                  f"{f' instance {msg.instance!r}' if msg.instance else ''} and alive")
            else:
                self.peer_died(other, f"process {other.pid} exited (found at a new registration)")
        peer = Peer(ident, msg.role, msg.name, msg.pid, msg.start_time, next(self._incs),
                    tuple(msg.schema), frozenset(msg.handles), self.clock())
        peer.machine = peer_machine(peer.label)
        peer.instance = msg.instance
        if msg.role == "parent":
            peer.index = self.lifetime.instance_index(msg.name, msg.restore.index)
        if msg.role == "child":
            for item in msg.restore.bound:
                peer.adopt[item.name] = Adopted(item.driver or None, item.refs)
        self.peers[ident] = peer
        self.named[(peer.role, peer.name, peer.instance)] = peer
        self.hb_idents[ident + b"#hb"] = peer
        self.uevent("REGISTER", role=msg.role, name=msg.name, pid=msg.pid, inc=peer.inc, **_host_detail(ident))
        self.reply(ident, msg.r, data=self._welcome(peer))

    def _welcome(self, peer: Peer) -> dict:
        return {"peer": peer.label, "inc": peer.inc, "epoch": self.epoch,
                "faults": [r.to_dict() for r in self.faults.rules if r.matches(peer.name) or r.target == "*"],
                "hb_ivl_ms": int(self.hb_ivl * 1000), "hb_liveness": self.hb_liveness,
                "schema": list(self.catalog.version), "index": peer.index}

    def unregister(self, peer: Peer, msg: E.Unregister) -> None:
        self.reply(peer.ident, msg.r)
        self._peer_gone(peer, PeerEvent.UNREGISTER, "unregistered")

    def peer_died(self, peer: Peer, reason: str) -> None:
        if peer.alive:
            self.stats["peer_deaths"] += 1
            self._peer_gone(peer, PeerEvent.CRASH, reason)

    def _peer_gone(self, peer: Peer, event: PeerEvent, reason: str) -> None:
        crash = event is PeerEvent.CRASH
        peer.machine.fire(event)
        log.log(logging.WARNING if crash else logging.INFO, "%s is %s: %s",
                peer.label, peer.machine.state.value, reason)
        self.uevent("PEER_DEAD" if crash else "UNREGISTER", name=peer.name, pid=peer.pid,
                    inc=peer.inc, reason=reason)
        self.binding.lanes.peer_gone(peer, reason)
        # Unbind first: calls queued behind a device lock must fail now, not start
        # towards the dead peer when the lock frees.
        for drv in list(peer.drivers):
            self.binding.driver_gone(drv, f"driver {drv.name} died ({reason})" if crash
                                     else f"driver {drv.name} unregistered")
        for rid, p in list(self.pending.items()):
            if p.callee is peer:
                self.settle(rid)
                p.on_result(-Errno.ENODEV, f"{p.what}: {peer.label} is gone ({reason})", None, {})
        self.calls.locks_gone(peer)
        if not crash and peer.devices:
            self.lifetime.left_behind(peer)
        for dev in list(peer.devices):
            self.lifetime.parent_gone(dev, reason)
        for dev_id, n in list(peer.holding.items()):
            dev = self.devices.get(dev_id)
            if dev is not None:
                for _ in range(n):
                    self.lifetime.put(dev, peer)
        self.peers.pop(peer.ident, None)
        if self.named.get((peer.role, peer.name, peer.instance)) is peer:
            del self.named[(peer.role, peer.name, peer.instance)]
        self.hb_idents.pop(peer.ident + b"#hb", None)


def _host_detail(ident: bytes) -> dict:
    """A peer on another host: its host, for the REGISTER notification and the trace."""
    host = remote_host(ident)
    return {"host": host} if host else {}
