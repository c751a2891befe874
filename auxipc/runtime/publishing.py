"""Sending events: sync calls through the broker, async events on pub/sub with
per-device sequences, state-like events kept for a replay, and message faults.

Async events are batched per device: ``publish_event`` queues an event and
returns its sequence number; the queue leaves as one EVENT message when the
runtime next waits (``pump``), before it sends a request or a reply, when 64
events or 64 KiB are queued for the device, or on ``flush_events()``. Every
per-message cost of ZeroMQ and the broker's proxy is then paid once a batch,
not once an event; order per device is kept. A queued event is delivered as if
sent alone: each handler runs under device_lock, with its own checks.

A mixin of ``Runtime`` (peer.py).
"""

from __future__ import annotations

import logging

import zmq

from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import EventSpec, encode_payload
from auxipc.faults import FaultRule, corrupt

log = logging.getLogger("auxipc.peer")

BATCH_EVENTS = 64          # events queued for one device before they leave at once
BATCH_BYTES = 1 << 16      # payload bytes likewise


_CODES: dict[int, bytes] = {}


def _code(code: int) -> bytes:
    """An event code, packed (cached: it starts every event of a batch)."""
    packed = _CODES.get(code)
    if packed is None:
        packed = _CODES[code] = E.packb(code)
    return packed


class Publishing:
    def spec_to_send(self, event) -> EventSpec:
        """The spec of an event this side may send (by spec, enum member, code or name)."""
        spec = self._send_specs.get(event) if type(event) is not EventSpec else None
        if spec is not None:
            return spec
        spec = event if isinstance(event, EventSpec) else self.catalog.lookup(event)
        if not spec.direction.allows(self.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {self.role} cannot send it")
        if type(event) is not EventSpec:
            self._send_specs[event] = spec     # the catalog and the role never change
        return spec

    def call_event(self, dev_id: int, spec: EventSpec, payload, timeout: float):
        """Send a sync event and return its reply payload (or None); raises AuxError."""
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: use notify()")
        if type(payload) is spec.payload:
            wire = E.packb(payload.__dict__ if payload._flat else payload.to_wire())   # see publish_event
        else:
            wire = payload if isinstance(payload, bytes) else E.packb(encode_payload(spec, payload))
        if len(wire) > E.MAX_FRAME:
            raise AuxError(Errno.EMSGSIZE, f"$.payload: {len(wire)} bytes exceed the bus maximum {E.MAX_FRAME}")
        ms = max(1, int(timeout * 1000))
        task = self.task
        result, reply = self.request(lambda r: E.fast(E.Call, wire, r=r, dev=dev_id, ev=spec.code,
                                                      timeout_ms=ms, task=task),
                                     wire, timeout, f"{spec.name} call",
                                     after_send=(lambda: self._sent_fault(spec.name)) if self.faults.rules else None)
        self.check(result, spec.name)
        if reply is None:
            return None
        return spec.reply.from_wire(E.unpackb(reply, "$.reply"), "$.reply")

    def publish_event(self, dev_id: int, topic: bytes, spec: EventSpec, payload, timeout: float = 1.0) -> int:
        """Queue an async event (see the module's doc) and return its sequence number.
        Back-pressure blocks up to ``timeout`` (the PUB never drops silently), then
        -EAGAIN and the drop is counted."""
        if spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is sync: use call()")
        if type(payload) is spec.payload:
            # A payload of scalars keeps exactly its wire map as __dict__ (enums pack as ints).
            wire = E.packb(payload.__dict__ if payload._flat else payload.to_wire())
        else:
            wire = payload if isinstance(payload, bytes) else E.packb(encode_payload(spec, payload))
        if len(wire) > E.MAX_FRAME:
            raise AuxError(Errno.EMSGSIZE, f"$.payload: {len(wire)} bytes exceed the bus maximum {E.MAX_FRAME}")
        if spec.state:
            last = self._last_state.get(topic)
            if last is None:
                last = self._last_state[topic] = {}
            last[spec.code] = wire
        seq = self._seq_out[topic] = self._seq_out.get(topic, 0) + 1
        code = _CODES.get(spec.code) or _code(spec.code)
        if self.faults.rules:
            rule = self.faults.find("message", self.name, spec.name)
            if rule is not None:
                self._flush_topic(topic)           # what was queued before goes first
                self._async_fault(rule, topic, spec.name, wire, lambda w: E.event_frame(
                    dev_id, seq, self.inc, self.epoch, [code + w]))
                return seq
        batch = self._batches.get(topic)
        if batch is None or batch[0] != dev_id:
            if batch is not None:
                self._flush_topic(topic)
            self._batches[topic] = [dev_id, seq, [code + wire], len(wire), timeout]
            return seq
        packed = batch[2]
        packed.append(code + wire)
        batch[3] += len(wire)
        if (len(packed) >= BATCH_EVENTS or batch[3] >= BATCH_BYTES) and not self._flush_topic(topic):
            raise AuxError(Errno.EAGAIN, f"{spec.name}: publish queue full for {timeout:.1f} s (subscribers "
                           f"are not keeping up); {len(packed)} events dropped and counted")
        return seq

    def flush_events(self) -> None:
        """Send every queued async event now."""
        for topic in list(self._batches):
            self._flush_topic(topic)

    def _flush_topic(self, topic: bytes) -> bool:
        """Send the events queued for a topic as one message; False if they were dropped."""
        batch = self._batches.pop(topic, None)
        if batch is None or self.sk is None:
            return True
        dev_id, seq, packed, _, timeout = batch
        ok = self._send_pub([topic, E.event_frame(dev_id, seq, self.inc, self.epoch, packed)], len(packed), timeout)
        if self._held_back:
            held, self._held_back = self._held_back, []
            for frames in held:
                self._send_pub(frames, 1, timeout)
        return ok

    def _discard_batches(self) -> None:
        """The sockets are going away without a broker: queued events are lost, and counted."""
        self.stats["async_dropped_disconnect"] += sum(len(b[2]) for b in self._batches.values())
        self._batches.clear()

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

    def _async_fault(self, rule: FaultRule, topic: bytes, event: str, wire: bytes, frame_of) -> None:
        """Apply a message fault to an async event, which travels alone (``frame_of(payload)``)."""
        self.report("FAULT", rule=rule.id, kind="message", action=rule.action, event=event)
        frames = [topic, frame_of(wire)]
        if rule.action == "drop":
            self.stats["async_dropped_by_fault"] += 1
        elif rule.action == "delay":
            self.call_later(rule.delay_ms / 1000, lambda: self.sk and self._send_pub(frames, 1, 1.0))
        elif rule.action == "reorder":
            self._held_back.append(frames)      # sent after the next message on any topic
        elif rule.action == "duplicate":
            self._send_pub(frames, 1, 1.0)
            self._send_pub(frames, 1, 1.0)
        else:
            frames[1] = frame_of(corrupt(wire, rule._rng))
            self._send_pub(frames, 1, 1.0)

    def _send_pub(self, frames: list, n: int, timeout: float) -> bool:
        pub = self.sk.pub
        try:
            pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if not pub.poll(timeout * 1000, zmq.POLLOUT):
                self.stats["async_dropped_hwm"] += n
                log.warning("publish queue full for %.1f s (subscribers are not keeping up): "
                            "%d async events dropped and counted", timeout, n)
                return False
            pub.send_multipart(frames, zmq.NOBLOCK)
        self.stats["async_sent"] += n
        return True
