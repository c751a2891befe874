"""Sending events: sync calls through the broker, async events on pub/sub with
per-device sequences, state-like events kept for a replay, and message faults.

Everything this process publishes (each EVENT message, each trace record) carries
its stamp (``stamp``): CLOCK_MONOTONIC in ns when it left and this process's own
sequence over all of them, so a watcher can merge it with the broker's
notifications (another socket) in the order things happened.

Async events are batched per device: ``publish`` queues an event and returns its
sequence number; the queue leaves as one EVENT message when the runtime next
waits (``pump``), before it sends a request or a reply, when 64 events or 64 KiB
are queued for the device, or on ``flush()``. Every per-message cost of ZeroMQ
and the broker's proxy is then paid once a batch, not once an event; order per
device is kept. A queued event is delivered as if sent alone: each handler runs
under device_lock, with its own checks.

A part of ``Runtime`` (peer.py), built with its host (host.py) and the contexts
part (for the task a call runs in and the fault points after a send). ``batches``
is public to read: whether anything is queued.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

from auxipc.faults import FaultRule, corrupt
from auxipc.runtime.contexts import Contexts
from auxipc.runtime.host import Host
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import EventSpec, encode_payload

log = logging.getLogger("auxipc.peer")

BATCH_EVENTS = 64          # events queued for one device before they leave at once
BATCH_BYTES = 1 << 16      # payload bytes likewise
_CALL = E.frame_maker(E.Call)      # the frames of a CALL (E.fast as straight-line code)

_CODES: dict[int, bytes] = {}


def _code(code: int) -> bytes:
    """An event code, packed (cached: it starts every event of a batch)."""
    packed = _CODES.get(code)
    if packed is None:
        packed = _CODES[code] = E.packb(code)
    return packed


@dataclass(slots=True)
class Batch:
    """The async events queued for one topic: they leave as one EVENT message."""
    dev: int
    first_seq: int
    packed: list[bytes]     # packed event code + payload, one item per event
    size: int               # payload bytes queued
    timeout: float          # how long the send may wait for room (the first event's)


class Publisher:
    def __init__(self, host: Host, contexts: Contexts):
        self.host, self.contexts = host, contexts
        self.faults, self.stats, self.tr = host.faults, host.stats, host.tr
        self.batches: dict[bytes, Batch] = {}
        self.last_state: dict[bytes, dict[int, bytes]] = {}   # topic -> {event code: wire} sent last
        self._seq_out: dict[bytes, int] = {}
        self._send_specs: dict = {}      # event (member, code, name) -> its spec, for this side
        self._held_back: list = []       # an async event a reorder fault holds until the next one
        self._src_seq = itertools.count(1)   # over everything this process publishes (next() is atomic)

    def stamp(self) -> tuple[int, int]:
        """(CLOCK_MONOTONIC ns, this process's next sequence number) for a message leaving now."""
        return time.monotonic_ns(), next(self._src_seq)

    def spec_to_send(self, event) -> EventSpec:
        """The spec of an event this side may send (by spec, enum member, code or name)."""
        spec = self._send_specs.get(event) if type(event) is not EventSpec else None
        if spec is not None:
            return spec
        host = self.host
        spec = event if isinstance(event, EventSpec) else host.catalog.lookup(event)
        if not spec.direction.allows(host.role):
            raise AuxError(Errno.EINVAL, f"{spec.name} goes {spec.direction.value}; a {host.role} cannot send it")
        if type(event) is not EventSpec:
            self._send_specs[event] = spec     # the catalog and the role never change
        return spec

    def call(self, dev_id: int, spec: EventSpec, payload, timeout: float):
        """Send a sync event and return its reply payload (or None); raises AuxError."""
        if not spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is async: use notify()")
        wire = _wire(spec, payload)
        task = self.contexts.task
        host = self.host
        lane = host.lane
        if lane is not None and (out := lane.route(dev_id, spec.code)) is not None:
            got = lane.call(out, dev_id, spec, wire, timeout, task)
            if got is not None:         # else the callee refused: the broker's way below
                result, reply = got
                host.check(result, spec.name)
                return None if reply is None else E.load_payload(spec.reply, reply, "$.reply")
        ms = max(1, int(timeout * 1000))
        result, reply = host.request(lambda r: _CALL(wire, r=r, dev=dev_id, ev=spec.code,
                                                      timeout_ms=ms, task=task),
                                     wire, timeout, f"{spec.name} call",
                                     after_send=(lambda: self.contexts.sent_fault(spec.name))
                                     if self.faults.rules else None)
        host.check(result, spec.name)
        if reply is None:
            return None
        return E.load_payload(spec.reply, reply, "$.reply")

    def publish(self, dev_id: int, topic: bytes, spec: EventSpec, payload, timeout: float = 1.0) -> int:
        """Queue an async event (see the module's doc) and return its sequence number.
        Back-pressure blocks up to ``timeout`` (the PUB never drops silently), then
        -EAGAIN and the drop is counted."""
        if spec.sync:
            raise AuxError(Errno.EINVAL, f"{spec.name} is sync: use call()")
        wire = _wire(spec, payload)
        if spec.state:
            last = self.last_state.get(topic)
            if last is None:
                last = self.last_state[topic] = {}
            last[spec.code] = wire
        seq = self._seq_out[topic] = self._seq_out.get(topic, 0) + 1
        code = _CODES.get(spec.code) or _code(spec.code)
        if self.faults.rules:
            rule = self.faults.find("message", self.host.name, spec.name)
            if rule is not None:
                self._flush_topic(topic)           # what was queued before goes first
                inc, epoch = self.host.inc, self.host.epoch
                self._async_fault(rule, topic, spec.name, wire, lambda w: E.event_frame(
                    dev_id, seq, inc, epoch, [code + w], *self.stamp()))
                return seq
        batch = self.batches.get(topic)
        if batch is None or batch.dev != dev_id:
            if batch is not None:
                self._flush_topic(topic)
            self.batches[topic] = Batch(dev_id, seq, [code + wire], len(wire), timeout)
            return seq
        packed = batch.packed
        packed.append(code + wire)
        batch.size += len(wire)
        if (len(packed) >= BATCH_EVENTS or batch.size >= BATCH_BYTES) and not self._flush_topic(topic):
            raise AuxError(Errno.EAGAIN, f"{spec.name}: publish queue full for {timeout:.1f} s (subscribers "
                           f"are not keeping up); {len(packed)} events dropped and counted")
        return seq

    def flush(self) -> None:
        """Send every queued async event now."""
        for topic in list(self.batches):
            self._flush_topic(topic)

    def _flush_topic(self, topic: bytes) -> bool:
        """Send the events queued for a topic as one message; False if they were dropped."""
        batch = self.batches.pop(topic, None)
        if batch is None or not self.tr.up:
            return True
        host = self.host
        frame = E.event_frame(batch.dev, batch.first_seq, host.inc, host.epoch, batch.packed, *self.stamp())
        ok = self._send_pub([topic, frame], len(batch.packed), batch.timeout)
        if self._held_back:
            held, self._held_back = self._held_back, []
            for frames in held:
                self._send_pub(frames, 1, batch.timeout)
        return ok

    def disconnected(self) -> None:
        """The sockets went away without a broker: queued events are lost, and counted;
        the next incarnation numbers its events from 1."""
        self.stats["async_dropped_disconnect"] += sum(len(b.packed) for b in self.batches.values())
        self.batches.clear()
        self._seq_out.clear()

    def remember_state(self, topic: bytes, spec: EventSpec, payload) -> None:
        """Keep a state-like event (link state) a driver binding later must learn,
        without sending it: it goes out with the replay at bind."""
        self.last_state.setdefault(topic, {})[spec.code] = E.packb(encode_payload(spec, payload))

    def replay_state(self, dev_id: int) -> int:
        """Publish again the last state-like events (link state, MTU) sent on a device's
        topic: for a driver that just bound (a late joiner) or a receiver that saw a gap.
        Keyed by device name, so a device deleted and added again keeps its state."""
        topic = self.host.topic_for(dev_id)
        declared = self.host.receiver_handles(dev_id)
        n = undeclared = 0
        for code, wire in list(self.last_state.get(topic, {}).items()):
            if declared is not None and code not in declared:
                undeclared += 1     # the NULL check: an event the receiver did not declare is not sent
                continue
            self.publish(dev_id, topic, self.host.catalog.get(code), wire)
            n += 1
        self.stats["state_replayed"] += n
        if undeclared:
            self.stats["async_undeclared"] += undeclared
        return n

    def _async_fault(self, rule: FaultRule, topic: bytes, event: str, wire: bytes, frame_of) -> None:
        """Apply a message fault to an async event, which travels alone (``frame_of(payload)``)."""
        self.host.report("FAULT", rule=rule.id, kind="message", action=rule.action, event=event)
        frames = [topic, frame_of(wire)]
        if rule.action == "drop":
            self.stats["async_dropped_by_fault"] += 1
        elif rule.action == "delay":
            self.host.call_later(rule.delay_ms / 1000, lambda: self.tr.up and self._send_pub(frames, 1, 1.0))
        elif rule.action == "reorder":
            self._held_back.append(frames)      # sent after the next message on any topic
        elif rule.action == "duplicate":
            self._send_pub(frames, 1, 1.0)
            self._send_pub(frames, 1, 1.0)
        else:
            frames[1] = frame_of(corrupt(wire, rule._rng))
            self._send_pub(frames, 1, 1.0)

    def _send_pub(self, frames: list, n: int, timeout: float) -> bool:
        if not self.tr.publish(frames, timeout):
            self.stats["async_dropped_hwm"] += n
            log.warning("publish queue full for %.1f s (subscribers are not keeping up): "
                        "%d async events dropped and counted", timeout, n)
            return False
        self.stats["async_sent"] += n
        return True


def _wire(spec: EventSpec, payload) -> bytes:
    """A payload in its wire form, checked against the bus's frame limit."""
    if type(payload) is spec.payload:
        # A payload of scalars keeps exactly its wire map as __dict__ (enums pack as ints).
        wire = E.packb(payload.__dict__ if payload._flat else payload.to_wire())
    else:
        wire = payload if isinstance(payload, bytes) else E.packb(encode_payload(spec, payload))
    if len(wire) > E.MAX_FRAME:
        raise AuxError(Errno.EMSGSIZE, f"$.payload: {len(wire)} bytes exceed the bus maximum {E.MAX_FRAME}")
    return wire

