"""Dispatch: what a runtime does with each message it receives. Results wake the
waiting call; requests (PROBE, REMOVE, REQUEST, ...) and async events are
delivered under device_lock (child side) or deferred while a frame on this stack
holds the lock or rtnl; each request is answered exactly once.

A part of ``Runtime`` (peer.py), built with its host (host.py), the contexts part
(the task stack and the locks held on it) and the publisher (queued events leave
before an answer; a resync replays state). ``results`` is the interface to the
waiting call: ``on_dealer`` fills it, ``Runtime.request`` pops its own answer.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections import deque
from typing import Callable, NamedTuple

from auxipc.faults import FaultRule
from auxipc.runtime.contexts import Contexts
from auxipc.runtime.host import Host
from auxipc.runtime.publishing import Publisher
from auxipc.runtime.where import raise_site
from proto import envelope as E
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.peer")


class BrokerLost(AuxError):
    def __init__(self, why: str):
        self.why = why
        super().__init__(Errno.ESHUTDOWN, f"lost the broker: {why}")


class RequestIn(NamedTuple):
    """A request to serve (PROBE, REMOVE, SHUTDOWN, PM, REQUEST, INJECT), maybe deferred.
    ``reply(frames, errno)`` sends the answer where the request came from other than the
    broker (the direct lane, lane.py); None: to the broker."""
    msg: E.Header
    payload: bytes | None
    reply: Callable[[list, int], None] | None = None


_RESULT = E.frame_maker(E.Result)     # the frames of a RESULT (E.fast as straight-line code)
SEQ_TOPICS = 65536    # async topics whose sequence state a runtime keeps at most


class EventsIn(NamedTuple):
    """A batch of async events for one device, maybe deferred (or early, parent side)."""
    msg: E.AsyncEvent
    items: list          # event code, payload map, alternating
    topic: bytes


class Dispatch:
    def __init__(self, host: Host, contexts: Contexts, publisher: Publisher):
        self.host, self.contexts, self.publisher = host, contexts, publisher
        self.stats, self.tr = host.stats, host.tr
        self.tasks, self.held = contexts.tasks, contexts.held    # read: who runs, what is held
        self.batches = publisher.batches                          # read: anything queued?
        self.results: dict[int, tuple] = {}
        self.deferred: deque = deque()
        self.locked: dict[int, int] = {}    # device id -> deliveries on this stack holding its lock
        self.depth = 0                      # deliveries on this stack
        self.hello = False                  # our own hello came back through the broker
        self._seq_in: dict = {}
        self._locks_devices = host.locks_devices
        contexts.on_release = self.drain

    def disconnected(self) -> None:
        """What was in flight with the broker is void; the next broker numbers anew."""
        self.results.clear()
        self.deferred.clear()
        self._seq_in.clear()
        self.hello = False

    def on_dealer(self, frames: list) -> None:
        try:
            msg, payload = E.decode(frames)
        except AuxError as exc:
            self.stats["malformed"] += 1
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        if isinstance(msg, E.Result):
            self.results[msg.r] = (msg, payload)
        elif isinstance(msg, E.Resync):
            self.publisher.replay_state(msg.dev)
        elif isinstance(msg, E.Fault):
            try:
                self.host.faults.set([FaultRule.from_dict(r) for r in msg.rules])
                e, m = 0, ""
            except AuxError as exc:
                e, m = exc.code, exc.message
            self.tr.send(E.encode(E.Result(r=msg.r, e=e, m=m)))
        elif isinstance(msg, (E.Request, E.Probe, E.Remove, E.Shutdown, E.Pm, E.Inject, E.Ctl)):
            self.deliver(RequestIn(msg, payload))
        elif isinstance(msg, (E.LaneGrant, E.LaneRevoke)):
            if self.host.lane is not None:
                self.host.lane.control(msg)
        elif isinstance(msg, E.Reregister):
            if self.host.hb is not None:
                self.host.hb.lose(f"broker asks to re-register: {msg.reason}")
            raise BrokerLost(msg.reason)
        else:
            self.host.guard(lambda: self.host.on_notice(msg))

    def on_sub(self, frames: list) -> None:
        topic = frames[0]
        if topic.startswith(b"hello:"):
            self.hello = True
            return
        try:
            msg, payload = E.decode(frames[1:])
            if not isinstance(msg, E.AsyncEvent):
                return
            items = E.decode_events(payload)
        except AuxError as exc:
            self.stats["async_malformed"] += 1
            log.warning("dropped a malformed async message on %r: %s", topic, exc)
            return
        # Only the broker this runtime registered with, and per topic only the newest
        # incarnation of the sender: an older one's events are stale. The state is one
        # entry per topic, at most SEQ_TOPICS of them (the oldest goes first).
        if msg.epoch != self.host.epoch:
            self.stats["async_stale"] += 1
            return
        seen_inc, last = self._seq_in.get(topic, (msg.inc, 0))
        if msg.inc < seen_inc:
            self.stats["async_stale"] += 1
            return
        if msg.inc > seen_inc:
            last = 0
        first, end = msg.seq, msg.seq + len(items) // 2 - 1
        if first <= last:
            seen = min(end, last) - first + 1
            self.stats["async_duplicate"] += seen
            if end <= last:
                return
            items, first = items[2 * seen:], last + 1
        elif last and first > last + 1:
            self.stats["async_lost"] += first - last - 1
            log.warning("lost %d async events on %r (seq %d -> %d): asking for a resync",
                        first - last - 1, topic, last, first)
            self.host.bug("async_lost", f"lost {first - last - 1} async event(s) on {topic.decode(errors='replace')} "
                          f"(seq {last} -> {first}): a receiver that fell behind, or a dropped message",
                          self.host.handler_site(msg.dev, items[0] if items else 0), topic=topic.decode(errors="replace"),
                          lost=first - last - 1)
            self.stats["resync_requested"] += 1
            self.tr.send(E.encode(E.Resync(dev=msg.dev)))
        if topic not in self._seq_in and len(self._seq_in) >= SEQ_TOPICS:
            del self._seq_in[next(iter(self._seq_in))]
        self._seq_in[topic] = (msg.inc, end)
        self.deliver(EventsIn(msg, items, topic))

    def run_async(self, adev, items: list, handlers: dict, who: str, still_bound: Callable[[], bool]) -> None:
        """Run the handlers of a batch of async events for one device, each as if it had
        come alone: a bad payload or a failing handler is counted or logged and the next
        event runs; once ``still_bound()`` is false (a handler unbound the device) the
        rest are skipped like events for an unbound device. Per event this is the hot
        path of async delivery: counters are summed per batch."""
        spec_of, stats, run_handler = self.host.catalog.get, self.stats, self.contexts.run_handler
        delivered = unhandled = 0
        try:
            for i in range(0, len(items), 2):
                if not still_bound():
                    stats["async_unbound"] += (len(items) - i) // 2
                    return
                spec = spec_of(items[i])
                if spec is not None and spec.sync:
                    # A sync event never runs from the async path (it needs a caller to answer).
                    stats["async_sync_refused"] += 1
                    continue
                fn = handlers.get(items[i]) if spec is not None else None
                if fn is None:
                    unhandled += 1
                    continue
                try:
                    value = spec.payload.from_wire(items[i + 1])
                except AuxError as exc:
                    stats["async_invalid"] += 1
                    log.warning("%s on %s: %s (event dropped)", spec.name, adev.name, exc)
                    continue
                try:
                    run_handler(spec, fn, adev, value, who)
                except AuxError as exc:
                    log.warning("%s", exc)
                except Exception as exc:
                    log.error("%s handler of %s failed:\n%s", spec.name, who, traceback.format_exc())
                    self.host.bug("handler_exception", f"{spec.name} handler of {who} raised "
                                  f"{type(exc).__name__}: {exc}", raise_site(exc.__traceback__),
                                  event=spec.name, dev=adev.name)
                else:
                    delivered += 1
        finally:
            stats["async_delivered"] += delivered
            if unhandled:
                stats["async_unhandled"] += unhandled

    def _locks(self, item) -> int | None:
        """The device whose lock a delivery takes (child side; an INJECT takes none)."""
        msg = item.msg
        return getattr(msg, "dev", None) if self._locks_devices and not isinstance(msg, E.Inject) else None

    def must_wait(self, item) -> bool:
        """Whether a delivery has to wait for a frame on this stack: the device's lock
        (child side), or rtnl held by another task for an event the kernel sends under rtnl.
        Waiting here is what a second kernel thread would do; running it nested on top of
        the holder would deadlock the single thread."""
        msg = item.msg
        if self._locks_devices and not isinstance(msg, E.Inject) and self.locked.get(getattr(msg, "dev", None)):
            return True
        if isinstance(msg, E.Request) and self.held.get("rtnl"):
            spec = self.host.catalog.get(msg.ev)
            return bool(spec and spec.rtnl and spec.sync and any(t != msg.task for t in self.held["rtnl"]))
        return False

    def deliver(self, item: RequestIn | EventsIn) -> None:
        if type(item) is RequestIn and log.isEnabledFor(logging.DEBUG):
            log.debug("deliver %s r=%d dev=%s (depth %d, locked %s)", item.msg.TYPE.name, item.msg.r,
                      getattr(item.msg, "dev", "-"), self.depth, dict(self.locked))
        if self.must_wait(item):
            self.deferred.append(item)
            return
        dev = self._locks(item)
        locked = self.locked
        if dev is not None:
            locked[dev] = locked.get(dev, 0) + 1
        self.depth += 1
        try:
            if type(item) is RequestIn:
                self._answer(item.msg, item.payload, item.reply)
            else:
                self.host.guard(lambda: self.host.on_async(item.topic, item.msg, item.items))
        finally:
            self.depth -= 1
            if dev is not None:
                if locked[dev] > 1:
                    locked[dev] -= 1
                else:
                    del locked[dev]
        if self.deferred:
            self.drain()

    def drain(self) -> None:
        """Deliver what was deferred and need not wait any more, in arrival order."""
        deferred = self.deferred
        for _ in range(len(deferred)):
            item = deferred.popleft()
            if self.must_wait(item):
                deferred.append(item)
            else:
                self.deliver(item)

    def _answer(self, msg, payload, reply_to=None) -> None:
        """Serve a request in its caller's task and answer it exactly once."""
        reply = None
        tasks = self.tasks
        tasks.append(getattr(msg, "task", "") or self.contexts.new_task("x"))
        try:
            e, m, reply = self.host.serve(msg, payload)
        except AuxError as exc:
            e, m = exc.code, exc.message
        except Exception as exc:
            log.error("handler for %s raised:\n%s", msg.TYPE.name, traceback.format_exc())
            e, m = -Errno.EIO, f"handler raised {type(exc).__name__}: {exc}"
            self.host.bug("handler_exception", f"the handler of {self.host.what_served(msg)} raised "
                          f"{type(exc).__name__}: {exc}", raise_site(sys.exc_info()[2]))
        finally:
            tasks.pop()
        if not self.tr.up:
            return
        if self.batches:
            self.publisher.flush()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answered %s r=%d: %d %s (depth %d)", msg.TYPE.name, msg.r, e, m, self.depth)
        frames = _RESULT(reply, r=msg.r, e=max(e, -4095), m=m[:4000])
        if reply_to is None:
            self.tr.send(frames)
        else:
            reply_to(frames, e)
