"""Sending events: sync calls through the broker, async events on pub/sub with
per-device sequences, state-like events kept for a replay, and message faults.

A mixin of ``Runtime`` (peer.py).
"""

from __future__ import annotations

import zmq

from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import EventSpec, encode_payload
from .faults import FaultRule, corrupt


class Publishing:
    def spec_to_send(self, event) -> EventSpec:
        spec = event if isinstance(event, EventSpec) else self.catalog.lookup(event)
        if not spec.direction.allows(self.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {self.role} cannot send it")
        return spec

    def call_event(self, dev_id: int, spec: EventSpec, payload, timeout: float):
        """Send a sync event and return its reply payload (or None); raises AuxError."""
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: use notify()")
        wire = payload if isinstance(payload, bytes) else E.packb(encode_payload(spec, payload))
        if len(wire) > E.MAX_FRAME:
            raise AuxError(Errno.EMSGSIZE, f"$.payload: {len(wire)} bytes exceed the bus maximum {E.MAX_FRAME}")
        ms = max(1, int(timeout * 1000))
        task = self.task
        result, reply = self.request(lambda r: E.fast(E.Call, wire, r=r, dev=dev_id, ev=spec.code,
                                                      timeout_ms=ms, task=task),
                                     wire, timeout, f"{spec.name} call",
                                     after_send=(lambda: self._sent_fault(spec.name)) if self.faults else None)
        self.check(result, spec.name)
        if reply is None:
            return None
        return spec.reply.from_wire(E.decode_payload_frame(reply, "$.reply"), "$.reply")

    def publish_event(self, dev_id: int, topic: bytes, spec: EventSpec, payload, timeout: float = 1.0) -> int:
        """Publish an async event; returns its sequence number. Back-pressure blocks up to
        ``timeout`` (the PUB never drops silently), then -EAGAIN and the drop is counted."""
        if spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is sync: use call()")
        wire = payload if isinstance(payload, bytes) else E.packb(encode_payload(spec, payload))
        if len(wire) > E.MAX_FRAME:
            raise AuxError(Errno.EMSGSIZE, f"$.payload: {len(wire)} bytes exceed the bus maximum {E.MAX_FRAME}")
        if spec.state:
            self._last_state.setdefault(topic, {})[spec.code] = wire
        seq = self._seq_out[topic] = self._seq_out.get(topic, 0) + 1
        head = E.packb({"t": E.Msg.EVENT, "dev": dev_id, "ev": spec.code, "seq": seq, "inc": self.inc,
                        "epoch": self.epoch})
        frames = [topic, E.MAGIC, head, wire]
        if self.faults:
            rule = self.faults.find("message", self.name, spec.name)
            if rule is not None and self._async_fault(rule, frames, spec.name):
                return seq
        held, self._held_back = self._held_back, []
        self._publish(frames, spec, timeout)
        for frames in held:
            self._publish(frames, spec, timeout)
        return seq

    def topic_for(self, dev_id: int) -> bytes | None:
        """The topic this process publishes on for a device (None if it has no such device)."""
        return None

    def replay_state(self, dev_id: int) -> int:
        """Publish again the last state-like events (link state, MTU) sent on a device's
        topic: for a driver that just bound (a late joiner) or a receiver that saw a gap.
        Keyed by device name, so a device deleted and added again keeps its state."""
        topic = self.topic_for(dev_id)
        n = 0
        for code, wire in list(self._last_state.get(topic, {}).items()):
            self.publish_event(dev_id, topic, self.catalog.get(code), wire)
            n += 1
        self.stats["state_replayed"] += n
        return n

    def _async_fault(self, rule: FaultRule, frames: list, event: str) -> bool:
        """Apply a message fault to an async event; True when it took the event over."""
        self.report("FAULT", rule=rule.id, kind="message", action=rule.action, event=event)
        if rule.action == "drop":
            self.stats["async_dropped_by_fault"] += 1
            return True
        if rule.action == "delay":
            self.call_later(rule.delay_ms / 1000, lambda: self.sk and self.sk.pub.send_multipart(frames))
            return True
        if rule.action == "reorder":
            self._held_back.append(frames)
            return True
        if rule.action == "duplicate":
            self.sk.pub.send_multipart(frames)
            return False
        frames[3] = corrupt(frames[3], rule._rng)
        return False

    def _publish(self, frames: list, spec: EventSpec, timeout: float) -> None:
        try:
            self.sk.pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if not self.sk.pub.poll(timeout * 1000, zmq.POLLOUT):
                self.stats["async_dropped_hwm"] += 1
                raise AuxError(Errno.EAGAIN, f"{spec.name}: publish queue full for {timeout:.1f} s "
                               "(subscribers are not keeping up); event dropped and counted") from None
            self.sk.pub.send_multipart(frames, zmq.NOBLOCK)
        self.stats["async_sent"] += 1
