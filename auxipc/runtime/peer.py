"""The runtime shared by parent and child processes: register, pump, dispatch.

One thread runs everything the user writes (probe, remove, handlers, model
code), like a kernel driver's process context: ``pump()`` receives and
dispatches, and a sync ``call()`` pumps while it waits, so a handler can call
the other side and still serve requests for *other* devices meanwhile (its first
2 ms it waits on the DEALER alone: the answer usually comes within them, and a
blocking receive costs much less than a poll of every socket). Requests
and async events for a device whose handler is on the stack are deferred until
it returns: that is ``device_lock`` on the child side. Heartbeats come from
their own thread (``transport.Heartbeat``), so a slow handler is never taken for
a dead process.

Threads other than the runtime's submit work with ``call_soon_threadsafe``.
Tasks, locks, contexts and fault points are in ``contexts.py``; sending events
in ``publishing.py``; what happens to each message received in ``dispatch.py``
(mixins of ``Runtime``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import time
import traceback
from collections import Counter, deque
from typing import Callable

import zmq
from zmq.backend import zmq_poll

from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog
from auxipc.runtime.contexts import Contexts
from auxipc.runtime.dispatch import BrokerLost, Dispatch
from auxipc.faults import FaultPlan, FaultRule
from auxipc.runtime.publishing import Publishing
from auxipc.procfs import process_start_time
from auxipc.runtime_dir import endpoints
from auxipc.runtime.transport import WAKE, Heartbeat, Sockets, peer_ident, recv_frames, recv_ready, send_frames

log = logging.getLogger("auxipc.peer")
_POLLIN = int(zmq.POLLIN)

GRACE = 1.0          # seconds a caller waits past its deadline for the broker's answer
ATOMIC_BUDGET = 0.005  # an atomic-context handler running longer than this is reported


class Runtime(Contexts, Publishing, Dispatch):
    role = "?"
    locks_devices = False   # the child side takes device_lock around deliveries

    def __init__(self, name: str, runtime_dir=None, catalog: Catalog = CATALOG,
                 connect_timeout: float = 10.0):
        self.name = name
        self.catalog = catalog
        self.ep = endpoints(runtime_dir)
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = 30.0
        self.ctx: zmq.Context | None = None
        self.sk: Sockets | None = None
        self.hb: Heartbeat | None = None
        self.inc = 0
        self.epoch = 0
        self.welcome: dict = {}
        self.stats: Counter = Counter()
        self._r = itertools.count(1)
        self._results: dict[int, tuple] = {}
        self._timers: list = []
        self._tseq = itertools.count()
        self._soon: deque = deque()
        self._locked: dict = {}     # device id -> deliveries on this stack holding its lock
        self._deferred: deque = deque()
        self._depth = 0
        self._connected = False   # timers and thread-submitted work wait for a registered bus
        self._stopping = False
        self._hello = False
        self._seq_out: dict = {}
        self._send_specs: dict = {}   # event (member, code, name) -> its spec, for this side
        self._batches: dict = {}      # topic -> [dev, first seq, packed events, bytes, timeout]: queued async
        self._seq_in: dict = {}
        self._last_state: dict = {}   # topic -> {event code: wire}: the state-like events sent last
        self._tasks: list[str] = []       # the task stack: top is what runs now
        self._held_here: dict[str, list[str]] = {}   # lock name -> tasks on this stack holding it
        self._task_ids = itertools.count(1)
        self._atomic: tuple | None = None   # (spec, who) of the atomic-context handler running, if any
        self.atomic_budget = ATOMIC_BUDGET
        self.faults = FaultPlan()
        self._held_back: list = []        # an async event a reorder fault holds until the next one
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poll_items: list = []
        self._sub_item: list = []

    # ---- subclass hooks -------------------------------------------------------------

    def handles(self) -> set[int]:
        return set()

    def subscriptions(self) -> list[bytes]:
        return []

    def serve(self, msg: E.Header, payload: bytes | None) -> tuple[int, str, dict | None]:
        raise AuxError(Errno.EOPNOTSUPP, f"{msg.TYPE.name} is not served by a {self.role}")

    def on_notice(self, msg: E.Header) -> None:
        log.info("ignored %s", msg)

    def on_async(self, topic: bytes, msg: E.AsyncEvent, items: list) -> None:
        """Deliver a batch of async events: ``items`` alternates event code and payload map."""

    def on_registered(self) -> None:
        """Runs after each registration (drivers are declared, devices created here)."""

    def on_close(self) -> None:
        """Runs before unregistering on a clean stop (remove devices, unregister drivers)."""

    def restore_state(self) -> dict:
        """What to tell a new broker this process had (REGISTER's ``restore``)."""
        return {}

    def on_reregistered(self) -> None:
        """Runs after registering again with a new broker (or after being declared dead)."""

    # ---- connection -------------------------------------------------------------------

    def open(self) -> None:
        """Register with the broker and serve: ``on_registered`` runs once connected."""
        self.ctx = zmq.Context()
        try:
            self._connect(self.connect_timeout)
        except AuxError as exc:
            if exc.errno == Errno.ETIMEDOUT:
                raise AuxError(Errno.ENOTCONN, f"no broker answered in {self.ep.root} within "
                               f"{self.connect_timeout:.0f} s; start one with 'auxipc broker'") from None
            raise
        self.on_registered()

    def _connect(self, timeout: float) -> None:
        """Fresh sockets, REGISTER, the pub/sub hello, and the heartbeat thread."""
        self.sk = Sockets(self.ctx, self.ep, peer_ident(self.role, self.name))
        # The socket monitor is watched by the heartbeat thread: one poll item less here.
        # Until the heartbeat thread runs, the wake pipe is polled here; then that thread
        # relays it (and watches the socket monitor): one poll item a pump less.
        self._poll_items = [(self.sk.dealer, _POLLIN), (self.sk.sub, _POLLIN), (self._wake_r, _POLLIN)]
        self._sub_item = [(self.sk.sub, _POLLIN)]
        start = process_start_time(os.getpid()) or 0
        restore = self.restore_state()
        result, _ = self.request(lambda r: E.Register(
            r=r, role=self.role, name=self.name, pid=os.getpid(), start_time=start,
            schema=self.catalog.version, handles=sorted(self.handles()), restore=restore),
            timeout=timeout, what="register")
        self.check(result, "register")
        w = self.welcome = result.d
        self.inc, self.epoch = w["inc"], w["epoch"]
        self.faults.set([FaultRule.from_dict(r) for r in w.get("faults", ())])
        for topic in [WAKE, b"hello:" + self.sk.ident, *self.subscriptions()]:
            self.sk.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._await_hello(timeout)
        self.hb = Heartbeat(self.ctx, self.ep, self.sk.ident, w["hb_ivl_ms"] / 1000, w["hb_liveness"],
                            self.epoch, self.wake, self.sk.monitor, self._wake_r, self.sk.wake)
        self.hb.start()
        self._poll_items = self._poll_items[:2]
        self._connected = True
        log.info("registered as %s", w["peer"])

    def _disconnect(self) -> None:
        """Drop this incarnation's sockets without lingering: queued requests must never
        reach a new broker (zeromq.md fact 3)."""
        if self.hb is not None:
            self.hb.stop()
            self.hb = None
        if self.sk is not None:
            self.sk.close(linger_ms=0)
            self.sk = None
        self._discard_batches()
        self._results.clear()
        self._deferred.clear()
        self._seq_in.clear()
        self._seq_out.clear()
        self._hello = False
        self._connected = False

    def reconnect(self, why: str) -> None:
        """The broker is gone or forgot us: fail what was in flight, register again with
        a new incarnation, and restore what this process had (``on_reregistered``)."""
        log.warning("lost the broker (%s): reconnecting", why)
        self.stats["reconnects"] += 1
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            self._disconnect()
            if self._stopping:
                raise BrokerLost(why)
            try:
                self._connect(min(2.0, max(0.1, deadline - time.monotonic())))
                break
            except AuxError as exc:
                if time.monotonic() > deadline:
                    raise AuxError(Errno.ENOTCONN, f"no broker came back in {self.ep.root} within "
                                   f"{self.reconnect_timeout:.0f} s ({exc.message})") from None
        self.on_reregistered()

    def _await_hello(self, timeout: float) -> None:
        """Publish to ourselves through the broker until it arrives: the pub/sub path,
        and every subscription made before it, are then in place (no slow joiner)."""
        deadline = time.monotonic() + timeout
        topic = b"hello:" + self.sk.ident
        while not self._hello:
            if time.monotonic() > deadline:
                raise AuxError(Errno.ENOTCONN, f"the broker's pub/sub sockets in {self.ep.root} do not answer")
            self.sk.pub.send_multipart([topic, E.MAGIC])
            self.pump(0.02)

    def close(self) -> None:
        if self.sk is not None:
            try:
                if self.hb is not None and self.hb.lost is None:
                    self.on_close()
                    self.request(lambda r: E.Unregister(r=r), timeout=1.0, what="unregister")
                    self.flush_events()
            except AuxError as exc:
                log.warning("while closing: %s", exc)
            if self.hb is not None:
                self.hb.stop()
                self.hb = None
            self.sk.close()
            self.sk = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ---- loop ---------------------------------------------------------------------------

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self._soon.append(fn)
        self.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._tseq), fn))

    def run(self) -> None:
        """Serve until ``stop()`` (SIGTERM/SIGINT). A lost broker is reconnected to."""
        while not self._stopping:
            timeout = 1.0
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            try:
                self.pump(timeout)
            except BrokerLost as exc:
                if not self._stopping:
                    self.reconnect(exc.why)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages and dispatch what arrived."""
        if self.hb is not None and self.hb.lost:
            raise BrokerLost(self.hb.lost)
        if self._batches:
            self.flush_events()
        events = dict(zmq_poll(self._poll_items, math.ceil(timeout * 1000))) if timeout > 0 or not self._soon else {}
        if self.sk.dealer in events:
            frames = recv_ready(self.sk.dealer)
            if frames is not None:
                self._on_dealer(frames)
        if self.sk is not None and self.sk.sub in events:
            frames = recv_ready(self.sk.sub)
            if frames is not None:
                self._on_sub(frames)
        if self._wake_r in events:
            os.read(self._wake_r, 4096)
        if self._depth == 0 and self._connected and (
                self._soon or (self._timers and self._timers[0][0] <= time.monotonic())):
            self._run_timers()

    def _run_timers(self) -> None:
        while self._soon:
            self._work(self._soon.popleft())
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._work(fn)

    def _work(self, fn) -> None:
        """A timer or thread-submitted callback: a workqueue item, in a task of its own."""
        with self.in_task(self.new_task()):
            self._guard(fn)

    def _guard(self, fn) -> None:
        try:
            fn()
        except AuxError as exc:
            log.warning("%s", exc)
        except Exception:
            log.error("callback failed:\n%s", traceback.format_exc())

    # ---- requests to the broker -----------------------------------------------------------

    def request(self, make: Callable[[int], E.Header], payload=None, timeout: float = 5.0,
                what: str = "request", after_send: Callable[[], None] | None = None,
                ) -> tuple[E.Result, bytes | None]:
        self.might_sleep(what)
        r = next(self._r)
        msg = make(r)
        if self._batches:
            self.flush_events()    # events published before the request leave before it
        send_frames(self.sk.dealer, msg if isinstance(msg, list) else E.encode(msg, payload))
        if after_send is not None:
            after_send()
        deadline = time.monotonic() + timeout + GRACE
        if self._connected:
            self._await_dealer()
        while r not in self._results:
            if self._stopping and not self._connected:
                raise BrokerLost("stopping while no broker is connected")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuxError(Errno.ETIMEDOUT, f"{what}: no answer from the broker within {timeout + GRACE:.1f} s")
            self.pump(remaining)
        return self._results.pop(r)

    def _await_dealer(self) -> None:
        """Wait for the next message on the DEALER alone, for at most DIRECT_WAIT_MS: a
        call's answer usually comes within it, and a blocking receive of one socket costs
        much less than a poll of all of them. Async events and wake-ups (both on the SUB)
        arriving meanwhile wait that long at most, and are taken right after, so a loop
        of calls never starves them; then the call pumps as usual if it must."""
        try:
            frames = recv_frames(self.sk.dealer, 0)     # RCVTIMEO is DIRECT_WAIT_MS
        except zmq.Again:
            return
        self._on_dealer(frames)
        if self.sk is not None and zmq_poll(self._sub_item, 0):
            frames = recv_ready(self.sk.sub)
            if frames is not None:
                self._on_sub(frames)

    @staticmethod
    def check(result: E.Result, what: str) -> E.Result:
        if result.e:
            raise AuxError(result.e, result.m or what)
        return result

    def stats_summary(self) -> dict:
        return dict(self.stats)


def err_text(exc: AuxError) -> str:
    return f"{errno_name(exc.errno)}: {exc.message}"
