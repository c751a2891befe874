"""Control queries (``CTL`` messages) from the CLI and tests; no registration needed.

Each op takes ``args`` (a map) and answers one RESULT whose ``d`` holds the data.
- ``ping``: ``{epoch, pid}``
- ``ls``: the bus snapshot (see ``Bus.snapshot``)
- ``uevents``: ``{events: [...]}``, the notifications with ``seq > since``
- ``send``: ``{device, event, from, timeout_ms}`` + payload frame: the named side's
  runtime sends the event as its code would; the answer is that call's result.
- ``bind``: ``{device, driver}``; ``unbind``: ``{device}`` — sysfs bind/unbind.
"""

from __future__ import annotations

from proto import envelope as E
from proto.errno import AuxError, Errno
from auxipc.broker.lifecycle import BindState
from auxipc.faults import SIGNALS, FaultRule
from auxipc.broker.auth import refuse_remote, with_hosts
from auxipc.broker.snapshot import ls_page, snapshot


class Control:
    def __init__(self, broker):
        self.broker = broker
        self.bus = broker.bus

    def handle(self, ident: bytes, msg: E.Ctl, payload: bytes | None) -> None:
        op = getattr(self, "op_" + msg.op.replace("-", "_"), None)
        if op is None:
            ops = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise AuxError(Errno.EOPNOTSUPP, f"$.header.op: unknown control op {msg.op!r} (ops: {ops})")
        op(ident, msg, payload)

    def op_ping(self, ident, msg, payload):
        import os
        self.bus.reply(ident, msg.r, data={"epoch": self.bus.epoch, "pid": os.getpid()})

    def op_echo(self, ident, msg, payload):
        """{topic}: publish ``[topic, MAGIC]`` on the notification socket (a subscriber's
        proof that its subscription there is in place)."""
        topic = self._str(msg, "topic").encode()
        if not topic.startswith(b"hello:"):
            raise AuxError(Errno.EINVAL, "$.header.args.topic: must start with 'hello:'")
        self.bus.published.append([topic, E.MAGIC])
        self.bus.reply(ident, msg.r)

    def op_ls(self, ident, msg, payload):
        page = ls_page(msg.args)
        self.bus.reply(ident, msg.r, data=with_hosts(snapshot(self.bus, *page), self.bus, self.broker.listen))

    def op_bind(self, ident, msg, payload):
        """sysfs bind: {device, driver}."""
        self.bus.bind_device(self._str(msg, "device"), self._str(msg, "driver"),
                             lambda e, m: self.bus.reply(ident, msg.r, e, m))

    def op_unbind(self, ident, msg, payload):
        """sysfs unbind: {device}."""
        self.bus.unbind_device(self._str(msg, "device"), lambda e, m: self.bus.reply(ident, msg.r, e, m))

    def op_fault(self, ident, msg, payload):
        """{action: add, rule: {...}} | {action: clear, target} | {action: ls}."""
        what = msg.args.get("action", "ls")
        if what == "add":
            rule = self.bus.add_fault(FaultRule.from_dict(msg.args.get("rule") or {}))
            self.bus.reply(ident, msg.r, data={"rule": rule.to_dict()})
        elif what == "clear":
            n = self.bus.clear_faults(msg.args.get("target", ""))
            self.bus.reply(ident, msg.r, data={"cleared": n})
        elif what == "ls":
            self.bus.reply(ident, msg.r, data={"rules": [r.to_dict() for r in self.bus.faults.rules]})
        else:
            raise AuxError(Errno.EINVAL, f"$.header.args.action: {what!r} is not add, clear or ls")

    def op_signal(self, ident, msg, payload):
        """{target, signal}: send a signal to every live peer named ``target`` (or with that pid)."""
        import os
        target, name = self._str(msg, "target"), msg.args.get("signal", "KILL")
        if name not in SIGNALS:
            raise AuxError(Errno.EINVAL, f"$.header.args.signal: {name!r} is not one of {', '.join(SIGNALS)}")
        peers = [p for p in self.bus.peers.values() if p.alive and (p.name == target or str(p.pid) == target)]
        if not peers:
            names = ", ".join(sorted({p.name for p in self.bus.peers.values()})) or "none"
            raise AuxError(Errno.ENODEV, f"no live peer named {target!r} (peers: {names})")
        refuse_remote(peers)
        for p in peers:
            self.bus.uevent("FAULT", name=p.name, pid=p.pid, signal=name)
            os.kill(p.pid, SIGNALS[name])
        self.bus.reply(ident, msg.r, data={"signalled": [p.label for p in peers]})

    @staticmethod
    def _str(msg, key: str) -> str:
        value = msg.args.get(key)
        if not isinstance(value, str) or not value:
            raise AuxError(Errno.EINVAL, f"$.header.args.{key}: expected a non-empty string")
        return value

    def op_uevents(self, ident, msg, payload):
        since = msg.args.get("since", 0)
        if type(since) is not int:
            raise AuxError(Errno.EINVAL, "$.header.args.since: expected int")
        events = [e for e in self.bus.uevents if e["seq"] > since]
        self.bus.reply(ident, msg.r, data={"events": events, "last": self.bus.uevents[-1]["seq"]
                                           if self.bus.uevents else 0})

    def op_send(self, ident, msg, payload):
        args = msg.args
        name, side = args.get("device"), args.get("from")
        if side not in ("parent", "child"):
            raise AuxError(Errno.EINVAL, f"$.args.from: {side!r} is not 'parent' or 'child'")
        if not isinstance(name, str):
            raise AuxError(Errno.EINVAL, "$.args.device: expected a device name")
        spec = self.bus.catalog.lookup(args.get("event", ""))
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
