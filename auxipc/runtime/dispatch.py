"""Dispatch: what a runtime does with each message it receives. Results wake the
waiting call; requests (PROBE, REMOVE, REQUEST, ...) and async events are
delivered under device_lock (child side) or deferred while a frame on this stack
holds the lock or rtnl; each request is answered exactly once.

A mixin of ``Runtime`` (peer.py): it uses the runtime's ``serve``, ``on_async``,
``on_notice``, sockets and state.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

from proto import envelope as E
from proto.errno import AuxError, Errno
from auxipc.faults import FaultRule
from auxipc.runtime.transport import WAKE, send_frames

log = logging.getLogger("auxipc.peer")


class BrokerLost(AuxError):
    def __init__(self, why: str):
        self.why = why
        super().__init__(Errno.ESHUTDOWN, f"lost the broker: {why}")


class Dispatch:
    def _on_dealer(self, frames: list) -> None:
        try:
            msg, payload = E.decode(frames)
        except AuxError as exc:
            self.stats["malformed"] += 1
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        if isinstance(msg, E.Result):
            self._results[msg.r] = (msg, payload)
        elif isinstance(msg, E.Resync):
            self.replay_state(msg.dev)
        elif isinstance(msg, E.Fault):
            try:
                self.faults.set([FaultRule.from_dict(r) for r in msg.rules])
                e, m = 0, ""
            except AuxError as exc:
                e, m = exc.code, exc.message
            send_frames(self.sk.dealer, E.encode(E.Result(r=msg.r, e=e, m=m)))
        elif isinstance(msg, (E.Request, E.Probe, E.Remove, E.Shutdown, E.Pm, E.Inject)):
            self._deliver(("req", msg, payload))
        elif isinstance(msg, E.Reregister):
            if self.hb is not None:
                self.hb.lose(f"broker asks to re-register: {msg.reason}")
            raise BrokerLost(msg.reason)
        else:
            self._guard(lambda: self.on_notice(msg))

    def _on_sub(self, frames: list) -> None:
        topic = frames[0]
        if topic == WAKE:
            return
        if topic.startswith(b"hello:"):
            self._hello = True
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
        key = (topic, msg.epoch, msg.inc)
        last = self._seq_in.get(key, 0)
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
            self.stats["resync_requested"] += 1
            send_frames(self.sk.dealer, E.encode(E.Resync(dev=msg.dev)))
        self._seq_in[key] = end
        self._deliver(("ev", msg, items, topic))

    def run_async(self, adev, items: list, handlers: dict, who: str, still_bound: Callable[[], bool]) -> None:
        """Run the handlers of a batch of async events for one device, each as if it had
        come alone: a bad payload or a failing handler is counted or logged and the next
        event runs; once ``still_bound()`` is false (a handler unbound the device) the
        rest are skipped like events for an unbound device. Per event this is the hot
        path of async delivery: counters are summed per batch."""
        spec_of, stats = self.catalog.get, self.stats
        delivered = unhandled = 0
        try:
            for i in range(0, len(items), 2):
                if not still_bound():
                    stats["async_unbound"] += (len(items) - i) // 2
                    return
                spec = spec_of(items[i])
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
                    self._invoke(spec, fn, adev, value, who)
                except AuxError as exc:
                    log.warning("%s", exc)
                except Exception:
                    log.error("%s handler of %s failed:\n%s", spec.name, who, traceback.format_exc())
                else:
                    delivered += 1
        finally:
            stats["async_delivered"] += delivered
            if unhandled:
                stats["async_unhandled"] += unhandled

    def _must_wait(self, item: tuple) -> bool:
        """Whether a delivery has to wait for a frame on this stack: the device's lock
        (child side), or rtnl held by another task for an event the kernel sends under rtnl.
        Waiting here is what a second kernel thread would do; running it nested on top of
        the holder would deadlock the single thread."""
        msg = item[1]
        if self.locks_devices and not isinstance(msg, E.Inject) and self._locked.get(getattr(msg, "dev", None)):
            return True
        if isinstance(msg, E.Request) and self._held_here.get("rtnl"):
            spec = self.catalog.get(msg.ev)
            return bool(spec and spec.rtnl and spec.sync and any(t != msg.task for t in self._held_here["rtnl"]))
        return False

    def _deliver(self, item: tuple) -> None:
        if item[0] == "req" and log.isEnabledFor(logging.DEBUG):
            log.debug("deliver %s r=%d dev=%s (depth %d, locked %s)", item[1].TYPE.name, item[1].r,
                      getattr(item[1], "dev", "-"), self._depth, dict(self._locked))
        if self._must_wait(item):
            self._deferred.append(item)
            return
        dev = getattr(item[1], "dev", None) if self.locks_devices and not isinstance(item[1], E.Inject) else None
        if dev is not None:
            self._locked[dev] = self._locked.get(dev, 0) + 1
        self._depth += 1
        try:
            if item[0] == "req":
                self._serve(item[1], item[2])
            else:
                self._guard(lambda: self.on_async(item[3], item[1], item[2]))
        finally:
            self._depth -= 1
            if dev is not None:
                if self._locked[dev] > 1:
                    self._locked[dev] -= 1
                else:
                    del self._locked[dev]
        if self._deferred:
            self._drain_deferred()

    def _drain_deferred(self) -> None:
        for _ in range(len(self._deferred)):
            item = self._deferred.popleft()
            if self._must_wait(item):
                self._deferred.append(item)
            else:
                self._deliver(item)

    def _serve(self, msg, payload) -> None:
        reply = None
        tasks = self._tasks
        tasks.append(getattr(msg, "task", "") or self.new_task("x"))
        try:
            e, m, reply = self.serve(msg, payload)
        except AuxError as exc:
            e, m = exc.code, exc.message
        except Exception as exc:
            log.error("handler for %s raised:\n%s", msg.TYPE.name, traceback.format_exc())
            e, m = -Errno.EIO, f"handler raised {type(exc).__name__}: {exc}"
        finally:
            tasks.pop()
        if self.sk is None:
            return
        if self._batches:
            self.flush_events()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answered %s r=%d: %d %s (depth %d)", msg.TYPE.name, msg.r, e, m, self._depth)
        send_frames(self.sk.dealer, E.fast(E.Result, reply, r=msg.r, e=max(e, -4095), m=m[:4000]))
