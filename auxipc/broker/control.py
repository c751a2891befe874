"""Control queries (``CTL`` messages) from the CLI and tests; no registration needed.

Each op takes ``args`` (a map) and answers one RESULT whose ``d`` holds the data.
- ``ping``: ``{epoch, pid, started_ns}`` (the bus's time zero, CLOCK_MONOTONIC ns)
- ``echo``: ``{topic}``: publish ``[topic, MAGIC]`` on the notification socket; ``{started_ns}``
- ``ls``: the bus snapshot (see ``snapshot.py``), devices paged (``after``/``next``)
- ``watchers``: ``{watchers: [{name, pid}]}``, the subscribed watchers (``auxipc wait watcher``)
- ``uevents``: ``{events: [...], more}``, the notifications with ``seq > since``, paged
- ``send``: ``{device, event, from, timeout_ms}`` + payload frame: the named side's
  runtime sends the event as its code would; the answer is that call's result.
- ``bind``: ``{device, driver}``; ``unbind``: ``{device}`` — sysfs bind/unbind.
- ``fault``, ``signal``: fault injection (auxipc/faults.py).
- ``bugs``: ``{bugs, warnings}``, the contract bugs seen (``Bus.bugs``) and the warnings.
- ``inspect``: ``{peer, last}``: the peer's journal (its last ``last`` records) and its
  devices' ``data``, asked of the peer itself (a request it answers like any other).

Ops that change the bus (``ADMIN_OPS``; ``fault`` but its ``ls``) are taken only on
the admin socket (``admin.sock``, the CLI's), refused -EPERM on ``bus.sock``, and
each one is logged and traced (action ADMIN) with the pid and uid that asked. The
read-only ones are answered on both.
"""

from __future__ import annotations

import logging
import os

from auxipc.broker.auth import refuse_remote, with_hosts
from auxipc.broker.lifecycle import BindState
from auxipc.broker.records import STAMPER
from auxipc.broker.snapshot import device_page, snapshot
from auxipc.faults import SIGNALS, FaultRule
from auxipc.procfs import process_start_time
from proto import envelope as E
from proto.control import CTL_ARGS, ctl_args
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.broker")

ADMIN = b"\0admin:"    # routing ids the broker gives senders on the admin socket (server.ADMIN)
ADMIN_OPS = ("send", "bind", "unbind", "fault", "signal")
PAGE_BYTES = E.MAX_FRAME // 2    # a listing's reply stays well under the message limit

class Control:
    def __init__(self, broker):
        self.broker = broker
        self.bus = broker.bus

    def route(self, ident: bytes, msg: E.Header, payload: bytes | None) -> None:
        """A decoded message from ``ident`` to its handler: a control op here (its error
        answered with its errno), anything else to the bus model. The broker process calls
        it after its own checks (the admin socket, REGISTER's credentials); the fuzz
        harness calls it as is."""
        if isinstance(msg, E.Ctl):
            try:
                self.handle(ident, msg, payload)
            except AuxError as exc:
                self.bus.reply(ident, msg.r, exc.errno, exc.message)
            return
        self.bus.handle(ident, msg, payload)

    def handle(self, ident: bytes, msg: E.Ctl, payload: bytes | None) -> None:
        op = getattr(self, "op_" + msg.op.replace("-", "_"), None)
        if op is None:
            ops = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise AuxError(Errno.EOPNOTSUPP, f"$.header.op: unknown control op {msg.op!r} (ops: {ops})")
        if msg.op in CTL_ARGS:
            ctl_args(msg.op, msg.args)     # refuse a bad argument before any op reads one
        if msg.op in ADMIN_OPS and not (msg.op == "fault" and msg.args.get("action", "ls") == "ls"):
            if not ident.startswith(ADMIN):
                raise AuxError(Errno.EPERM, f"control op {msg.op!r} changes the bus: taken only on the admin "
                               "socket (the auxipc CLI), not on the peers' bus.sock")
            self.trace_admin(ident, msg)
        op(ident, msg, payload)

    def trace_admin(self, ident: bytes, msg: E.Ctl) -> None:
        """Every admin op is logged and traced with who asked."""
        who = self.who(ident)
        args = {k: v for k, v in msg.args.items() if isinstance(v, (str, int, float, bool))}
        log.info("admin %s %s by %s", msg.op, args, who)
        self.bus.published.append(E.encode(E.Uevent(seq=0, action="ADMIN", detail={
            "op": msg.op, "args": args, "by": who}), topic=b"trace"))

    def op_ping(self, ident, msg, payload):
        self.bus.reply(ident, msg.r, data={"epoch": self.bus.epoch, "pid": os.getpid(), **self._clock()})

    def op_echo(self, ident, msg, payload):
        """{topic}: publish ``[topic, MAGIC]`` on the notification socket (a subscriber's
        proof that its subscription there is in place)."""
        topic = self._str(msg, "topic").encode()
        if not topic.startswith(b"hello:"):
            raise AuxError(Errno.EINVAL, "$.header.args.topic: must start with 'hello:'")
        self.bus.published.append([topic, E.MAGIC])
        self.bus.reply(ident, msg.r, data=self._clock())

    def op_watchers(self, ident, msg, payload):
        """{watchers: [{name, pid}]}: the watchers subscribed to the notification socket
        (each subscribes to ``watcher:<name>:<pid>``; see observe/watch.py)."""
        found = []
        for topic in getattr(self.broker, "subscriptions", {}):
            if topic.startswith(b"watcher:"):
                name, _, pid = topic[len(b"watcher:"):].decode(errors="replace").rpartition(":")
                found.append({"name": name, "pid": int(pid) if pid.isdigit() else 0})
        self.bus.reply(ident, msg.r, data={"watchers": sorted(found, key=lambda w: (w["name"], w["pid"]))})

    def _clock(self) -> dict:
        """The bus's time zero (CLOCK_MONOTONIC ns when the broker started), for watchers."""
        return {"started_ns": STAMPER.started_ns}

    def op_ls(self, ident, msg, payload):
        """{after}: the bus snapshot, its devices paged to fit a message: devices with an
        id above ``after`` (default: from the first, with the rest of the snapshot);
        ``next`` is the ``after`` of the next page, None on the last."""
        after = msg.args.get("after", -1)
        if type(after) is not int or not -1 <= after <= 2**53:
            raise AuxError(Errno.EINVAL, "$.header.args.after: expected a device id (int)")
        if after < 0:
            data = snapshot(self.bus, [])
            budget = PAGE_BYTES - len(E.packb(data))
        else:
            data, budget = {"epoch": self.bus.epoch}, PAGE_BYTES
        data["devices"], data["next"] = device_page(self.bus, after, budget, lambda d: len(E.packb(d)))
        self.bus.reply(ident, msg.r, data=with_hosts(data, self.bus, getattr(self.broker, "listen", None)) if after < 0 else data)

    def op_bind(self, ident, msg, payload):
        """sysfs bind: {device, driver}."""
        self.bus.bind_device(self._str(msg, "device"), self._str(msg, "driver"),
                             lambda e, m: self.bus.reply(ident, msg.r, e, m))

    def op_unbind(self, ident, msg, payload):
        """sysfs unbind: {device, driver (optional: then only if that driver is bound)}."""
        driver = msg.args.get("driver") or ""
        if not isinstance(driver, str):
            raise AuxError(Errno.EINVAL, "$.args.driver: expected a driver name")
        self.bus.unbind_device(self._str(msg, "device"), lambda e, m: self.bus.reply(ident, msg.r, e, m), driver)

    def op_fault(self, ident, msg, payload):
        """{action: add, rule: {...}} | {action: clear, target} | {action: ls}."""
        what = msg.args.get("action", "ls")
        if what == "add":
            rule = self.bus.add_fault(FaultRule.from_dict(msg.args.get("rule") or {}, "$.header.args.rule"))
            self.bus.reply(ident, msg.r, data={"rule": rule.to_dict()})
        elif what == "clear":
            target = msg.args.get("target", "")
            if not isinstance(target, str):
                raise AuxError(Errno.EINVAL, "$.header.args.target: expected a string")
            n = self.bus.clear_faults(target)
            self.bus.reply(ident, msg.r, data={"cleared": n})
        elif what == "ls":
            self.bus.reply(ident, msg.r, data={"rules": [r.to_dict() for r in self.bus.faults.rules]})
        else:
            raise AuxError(Errno.EINVAL, f"$.header.args.action: {str(what)[:40]!r} is not add, clear or ls")

    def op_signal(self, ident, msg, payload):
        """{target, signal}: send a signal to every live peer named ``target`` (or with that pid).

        Only to a process the broker saw connect (its pid from the socket), still the
        same process (pid and start time), never pid 0 or 1 or the broker itself."""
        target, name = self._str(msg, "target"), msg.args.get("signal", "KILL")
        if not isinstance(name, str) or name not in SIGNALS:
            raise AuxError(Errno.EINVAL, f"$.header.args.signal: {str(name)[:40]!r} is not one of "
                           f"{', '.join(SIGNALS)}")
        peers = [p for p in self.bus.peers.values() if p.alive and (p.name == target or str(p.pid) == target)]
        if not peers:
            names = ", ".join(sorted({p.name for p in self.bus.peers.values()})) or "none"
            raise AuxError(Errno.ENODEV, f"no live peer named {target!r} (peers: {names})")
        refuse_remote(peers)
        for p in peers:
            if p.pid <= 1 or p.pid == os.getpid() or process_start_time(p.pid) != p.start_time:
                raise AuxError(Errno.ENODEV, f"{p.label}: process {p.pid} is not the one that registered")
        signalled = []
        for p in peers:
            self.bus.uevent("FAULT", name=p.name, pid=p.pid, signal=name, by=self.who(ident))
            try:
                os.kill(p.pid, SIGNALS[name])
            except OSError as exc:
                raise AuxError(Errno.ENODEV, f"{p.label}: {exc.strerror}") from None
            signalled.append(p.label)
        self.bus.reply(ident, msg.r, data={"signalled": signalled})

    def who(self, ident: bytes) -> str:
        """Who asked, for the trace: the pid and uid the connection carries."""
        creds = self.broker.credentials()
        return f"pid {creds[0]} uid {creds[1]}" if creds else repr(ident)[:40]

    @staticmethod
    def _str(msg, key: str) -> str:
        value = msg.args.get(key)
        if not isinstance(value, str) or not value:
            raise AuxError(Errno.EINVAL, f"$.header.args.{key}: expected a non-empty string")
        return value

    def op_bugs(self, ident, msg, payload):
        """The newest bugs and warnings that fit half a page each (``left_off``: how many older did not)."""
        bugs = self.bus.bugs
        found = _newest(list(bugs.records), PAGE_BYTES // 2)
        warned = _newest([{**w, "where": bugs.where_of(w)} for w in self.bus.warnings], PAGE_BYTES // 2)
        left = len(bugs.records) + len(self.bus.warnings) - len(found) - len(warned)
        self.bus.reply(ident, msg.r, data={"bugs": found, "warnings": warned, "left_off": left})

    def op_inspect(self, ident, msg, payload):
        """{peer (a name or pid), last}: ask that live peer for its journal and devices' data."""
        target, last = self._str(msg, "peer"), msg.args.get("last", 1000)
        peers = [p for p in self.bus.peers.values() if p.alive and target in (p.name, str(p.pid))]
        if len(peers) != 1:
            names = ", ".join(sorted(f"{p.name} (pid {p.pid})" for p in self.bus.peers.values() if p.alive))
            raise AuxError(Errno.ENODEV if not peers else Errno.EINVAL,
                           f"$.header.args.peer: {'no' if not peers else 'more than one'} live peer {target!r} "
                           f"(peers: {names or 'none'})")
        peer = peers[0]

        def answered(e, m, reply_payload, d):
            self.bus.reply(ident, msg.r, e, m, data=d, payload=reply_payload)
        self.bus.request(peer, lambda rid: E.Ctl(r=rid, op="inspect", args={"last": last}), None, 5.0,
                         f"inspect {peer.label}", answered)

    def op_uevents(self, ident, msg, payload):
        since = msg.args.get("since", 0)
        if type(since) is not int:
            raise AuxError(Errno.EINVAL, "$.header.args.since: expected int")
        # Paged to fit a message: ``more`` says there are events after these.
        events: list[dict] = []
        used, more = 0, False
        for e in self.bus.uevents:
            if e["seq"] > since:
                used += len(E.packb(e))
                if events and used > PAGE_BYTES:
                    more = True
                    break
                events.append(e)
        self.bus.reply(ident, msg.r, data={"events": events, "more": more, "last": self.bus.uevents[-1]["seq"]
                                           if self.bus.uevents else 0})

    def op_send(self, ident, msg, payload):
        args = msg.args
        name, side = args.get("device"), args.get("from")
        if side not in ("parent", "child"):
            raise AuxError(Errno.EINVAL, f"$.args.from: {side!r} is not 'parent' or 'child'")
        if not isinstance(name, str):
            raise AuxError(Errno.EINVAL, "$.args.device: expected a device name")
        event = args.get("event")
        if not isinstance(event, (str, int)) or isinstance(event, bool):
            raise AuxError(Errno.EINVAL, "$.args.event: expected an event name or code")
        spec = self.bus.catalog.lookup(event)
        timeout_ms = args.get("timeout_ms", 5000)
        if type(timeout_ms) is not int or not 1 <= timeout_ms <= 3_600_000:
            raise AuxError(Errno.EINVAL, "$.args.timeout_ms: int 1..3600000 expected")
        dev = self.bus.by_name.get(name)
        if dev is None:
            known = ", ".join(sorted(self.bus.by_name)) or "none"
            raise AuxError(Errno.ENODEV, f"no device {name!r} on the bus (devices: {known})")
        if side == "parent":
            peer = dev.parent
        else:
            if dev.driver is None or dev.bind.state is not BindState.BOUND:
                raise AuxError(Errno.ENODEV, f"{name} has no bound driver to send from")
            peer = dev.driver.peer

        def answered(e, m, reply_payload, d):
            self.bus.reply(ident, msg.r, e, m, data=d, payload=reply_payload)
        self.bus.request(peer, lambda rid: E.Inject(r=rid, dev=dev.dev_id, ev=spec.code, timeout_ms=timeout_ms),
                         payload, timeout_ms / 1000 + 1.0, f"send {spec.name} from {peer.label}", answered)


def _newest(records: list[dict], budget: int) -> list[dict]:
    """The newest of ``records`` (in their order) whose packed size fits ``budget``."""
    kept: list[dict] = []
    for rec in reversed(records):
        budget -= len(E.packb(rec))
        if budget < 0:
            break
        kept.append(rec)
    return kept[::-1]
