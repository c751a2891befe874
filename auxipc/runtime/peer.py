"""The runtime shared by parent and child processes: register, pump, dispatch.

One thread runs everything the user writes (probe, remove, handlers, model
code), like a kernel driver's process context: ``pump()`` receives and
dispatches, and a sync ``call()`` pumps while it waits, so a handler can call
the other side and still serve requests for *other* devices meanwhile (it first
waits briefly on the DEALER alone: the answer usually comes within that, and a
blocking receive costs much less than a poll of every socket). Requests and
async events for a device whose handler is on the stack are deferred until it
returns: that is ``device_lock`` on the child side. Heartbeats come from their
own thread, so a slow handler is never taken for a dead process.

``Runtime`` hosts three parts, each with an explicit interface (host.py):
``contexts`` (tasks, locks, handler contexts, fault points), ``publisher``
(sync calls and batched async events) and ``dispatch`` (what happens to each
message received). It talks to the broker through a transport (seam.py): ZeroMQ
by default, the in-memory twin (memory.py) in unit tests.

Threads other than the runtime's submit work with ``call_soon_threadsafe``.
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
from typing import Callable, NamedTuple

from auxipc.faults import FaultPlan, FaultRule
from auxipc.procfs import process_start_time
from auxipc.runtime.checks import Checks
from auxipc.runtime.contexts import Contexts
from auxipc.runtime.dispatch import BrokerLost, Dispatch
from auxipc.runtime.journal import RECENT_MAX
from auxipc.runtime.lane import Lane, lane_root
from auxipc.runtime.lookup import find_device
from auxipc.runtime.publishing import Publisher
from auxipc.runtime.seam import DEALER, LANE, SUB, Heartbeat, Transport
from auxipc.runtime.transport import ZmqTransport, peer_ident
from auxipc.runtime.where import raise_site
from auxipc.runtime_dir import endpoints, lane_enabled
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog

__all__ = ["Runtime", "BrokerLost", "err_text"]

log = logging.getLogger("auxipc.peer")

GRACE = 1.0          # seconds a caller waits past its deadline for the broker's answer


class Timer(NamedTuple):
    """A ``call_later`` callback; ordered by due time, then by submission."""
    when: float
    seq: int
    fn: Callable[[], None]


class Runtime(Checks):
    role = "?"
    locks_devices = False   # the child side takes device_lock around deliveries

    def __init__(self, name: str, runtime_dir=None, catalog: Catalog = CATALOG,
                 connect_timeout: float = 10.0, transport: Transport | None = None):
        self.name = name
        self.instance = ""        # a parent's identity among instances of its model (a PCI address)
        self.catalog = catalog
        self.tr: Transport = transport if transport is not None else ZmqTransport(endpoints(runtime_dir))
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = 30.0
        self.hb: Heartbeat | None = None
        self.lane: Lane | None = None     # the direct lane to the other end of a device (lane.py)
        self.inc = 0
        self.epoch = 0
        self.welcome: dict = {}
        self.stats: Counter = Counter()
        self.faults = FaultPlan()
        self._r = itertools.count(1)
        self._timers: list[Timer] = []
        self._tseq = itertools.count()
        self._soon: deque = deque()
        self._connected = False   # timers and thread-submitted work wait for a registered bus
        self._stopping = False
        self.ref_sites: dict[str, list[str]] = {}   # checks.py: where each reference not yet put was got
        c = self.contexts = Contexts(self)
        p = self.publisher = Publisher(self, c)
        d = self.dispatch = Dispatch(self, c, p)
        self._results, self._batches = d.results, p.batches
        self._on_dealer, self._on_sub = d.on_dealer, d.on_sub
        # The runtime's API that its parts implement, bound here: a call costs what one
        # of the runtime's own methods would (these are on the path of every event).
        self.lock, self.in_task, self.new_task, self.invoke = c.lock, c.in_task, c.new_task, c.invoke
        self.might_sleep, self.fault_point, self.atomic_context = c.might_sleep, c.fault_point, c.atomic_context
        self.spec_to_send, self.call_event, self.publish_event = p.spec_to_send, p.call, p.publish
        self.flush_events, self.replay_state = p.flush, p.replay_state
        self.run_async = d.run_async

    def find_device(self, match=None, data=None, *, start=None, name: str = "", match_name: str = ""):
        """auxiliary_find_device: the first device on the bus ``match(info, data)`` accepts,
        with a reference the caller must ``put()``; None if none (see lookup.py)."""
        return find_device(self, match, data, start=start, name=name, match_name=match_name)

    # ---- subclass hooks -------------------------------------------------------------

    def handles(self) -> set[int]:
        return set()

    def subscriptions(self) -> list[bytes]:
        return []

    def serve(self, msg: E.Header, payload: bytes | None) -> tuple[int, str, dict | None]:
        if isinstance(msg, E.Ctl) and msg.op == "inspect":
            return 0, "", self.inspect(msg.args.get("last", RECENT_MAX))
        raise AuxError(Errno.EOPNOTSUPP, f"{msg.TYPE.name} is not served by a {self.role}")

    def on_notice(self, msg: E.Header) -> None:
        log.info("ignored %s", msg)

    def on_async(self, topic: bytes, msg: E.AsyncEvent, items: list) -> None:
        """Deliver a batch of async events: ``items`` alternates event code and payload map."""

    def topic_for(self, dev_id: int) -> bytes | None:
        """The topic this process publishes on for a device (None if it has no such device)."""
        return None

    def receiver_handles(self, dev_id: int) -> frozenset | None:
        """The event codes the other side of a device declared it handles (None: not known)."""
        return None

    def on_registered(self) -> None:
        """Runs after each registration (drivers are declared, devices created here)."""

    def on_close(self) -> None:
        """Runs before unregistering on a clean stop (remove devices, unregister drivers)."""

    def restore_state(self) -> dict:
        """What to tell a new broker this process had (REGISTER's ``restore``)."""
        return {}

    def on_reregistered(self) -> None:
        """Runs after registering again with a new broker (or after being declared dead)."""

    # ---- state --------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def task(self) -> str:
        return self.contexts.task

    def stats_summary(self) -> dict:
        return dict(self.stats)

    # ---- connection -------------------------------------------------------------------

    def open(self) -> None:
        """Register with the broker and serve: ``on_registered`` runs once connected."""
        try:
            self._connect(self.connect_timeout)
        except AuxError as exc:
            if exc.errno == Errno.ETIMEDOUT:
                raise AuxError(Errno.ENOTCONN, f"no broker answered in {self.tr.where} within "
                               f"{self.connect_timeout:.0f} s; start one with 'auxipc broker'") from None
            raise
        self.on_registered()

    def _connect(self, timeout: float) -> None:
        """Fresh sockets, REGISTER, the pub/sub hello, and the heartbeat."""
        ident = peer_ident(self.role, self.name, getattr(self.tr, "host", None))
        self.tr.connect(ident)
        start = process_start_time(os.getpid()) or 0
        restore = self.restore_state()
        result, _ = self.request(lambda r: E.Register(
            r=r, role=self.role, name=self.name, pid=os.getpid(), start_time=start,
            schema=self.catalog.version, handles=sorted(self.handles()), restore=restore,
            instance=self.instance),
            timeout=timeout, what="register")
        self.check(result, "register")
        w = self.welcome = result.d
        self.inc, self.epoch = w["inc"], w["epoch"]
        self.faults.set([FaultRule.from_dict(r) for r in w.get("faults", ())])
        # The hello topic is a nonce, not the routing id: whoever reads sub.sock learns
        # nothing it could use to pose as this peer.
        hello = b"hello:" + os.urandom(8).hex().encode()
        for topic in [hello, *self.subscriptions()]:
            self.tr.subscribe(topic)
        self._await_hello(hello, timeout)
        self.hb = self.tr.start_heartbeat(w["hb_ivl_ms"] / 1000, w["hb_liveness"], self.epoch, self.wake)
        self._connected = True
        if self.lane is None and lane_enabled() and (root := lane_root(self.tr)) is not None:
            self.lane = Lane(self, self.tr.ctx, root, serves=self.role == "parent")
        if self.lane is not None:
            self.lane.connected()
        log.info("registered as %s", w["peer"])

    def _disconnect(self) -> None:
        """Drop this incarnation's sockets without lingering: queued requests must never
        reach a new broker."""
        if self.hb is not None:
            self.hb.stop()
            self.hb = None
        self.tr.disconnect(0)
        self.publisher.disconnected()
        self.dispatch.disconnected()
        if self.lane is not None:
            self.lane.disconnected()
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
                try:
                    self.on_reregistered()
                    break
                except BrokerLost as exc:
                    # Restoring talks to the broker: losing it again meanwhile (a second
                    # restart) is one more round here, not the end of this process.
                    log.warning("lost the broker again while restoring (%s): reconnecting", exc.why)
                    raise
            except AuxError as exc:
                if time.monotonic() > deadline:
                    raise AuxError(Errno.ENOTCONN, f"no broker came back in {self.tr.where} within "
                                   f"{self.reconnect_timeout:.0f} s ({exc.message})") from None

    def _await_hello(self, topic: bytes, timeout: float) -> None:
        """Publish to ourselves through the broker until it arrives: the pub/sub path,
        and every subscription made before it, are then in place (no slow joiner)."""
        deadline = time.monotonic() + timeout
        while not self.dispatch.hello:
            if time.monotonic() > deadline:
                raise AuxError(Errno.ENOTCONN, f"the broker's pub/sub sockets in {self.tr.where} do not answer")
            self.tr.publish([topic, E.MAGIC], timeout)
            self.pump(0.02)

    def close(self) -> None:
        if self.tr.up:
            try:
                if self.hb is not None and self.hb.lost is None:
                    self.on_close()
                    self.report_leaks()
                    self.request(lambda r: E.Unregister(r=r), timeout=1.0, what="unregister")
                    self.flush_events()
            except AuxError as exc:
                log.warning("while closing: %s", exc)
            if self.hb is not None:
                self.hb.stop()
                self.hb = None
        if self.lane is not None:
            self.lane.close()
        self.tr.close()

    def report(self, record: str, /, **detail) -> None:
        """Publish a trace record (topic ``trace``, action ``record``) about this process."""
        if not self.tr.up:
            return
        ts_ns, src_seq = self.publisher.stamp()
        head = {"t": E.Msg.UEVENT, "seq": 0, "action": record, "dev": "", "driver": "", "ts_ns": ts_ns,
                "src_seq": src_seq,
                "detail": {"peer": f"{self.role} {self.name}#{self.inc}", "task": self.task, **detail}}
        if not self.tr.publish_nowait([b"trace", E.MAGIC + E.packb(head)]):
            self.stats["trace_dropped"] += 1

    # ---- loop ---------------------------------------------------------------------------

    def wake(self) -> None:
        self.tr.wake()

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self._soon.append(fn)
        self.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, Timer(time.monotonic() + delay, next(self._tseq), fn))

    def run(self) -> None:
        """Serve until ``stop()`` (SIGTERM/SIGINT). A lost broker is reconnected to."""
        while not self._stopping:
            timeout = 1.0
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0].when - time.monotonic()))
            try:
                self.pump(timeout)
            except BrokerLost as exc:
                if not self._stopping:
                    self.reconnect(exc.why)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages and dispatch what arrived."""
        hb = self.hb
        if hb is not None and hb.lost:
            raise BrokerLost(hb.lost)
        if self._batches:
            self.flush_events()
        tr = self.tr
        ready = tr.poll(timeout) if timeout > 0 or not self._soon else 0
        if ready & DEALER:
            frames = tr.recv_dealer()
            if frames is not None:
                self._on_dealer(frames)
        if ready & SUB and tr.up:
            frames = tr.recv_sub()
            if frames is not None:
                self._on_sub(frames)
        if ready & LANE:
            self.lane.on_ready()
        if self.dispatch.depth == 0 and self._connected and (
                self._soon or (self._timers and self._timers[0].when <= time.monotonic())):
            self._run_timers()

    def _run_timers(self) -> None:
        while self._soon:
            self._work(self._soon.popleft())
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            self._work(heapq.heappop(self._timers).fn)

    def _work(self, fn) -> None:
        """A timer or thread-submitted callback: a workqueue item, in a task of its own."""
        with self.in_task(self.new_task()):
            self.guard(fn)

    def guard(self, fn) -> None:
        """Run a callback; an error is logged, never raised into the loop."""
        try:
            fn()
        except AuxError as exc:
            log.warning("%s", exc)
        except Exception as exc:
            log.error("callback failed:\n%s", traceback.format_exc())
            self.bug("handler_exception", f"a callback (timer or work item) raised {type(exc).__name__}: {exc}",
                     raise_site(exc.__traceback__))

    # ---- requests to the broker -----------------------------------------------------------

    def request(self, make: Callable[[int], E.Header], payload=None, timeout: float | None = 5.0,
                what: str = "request", after_send: Callable[[], None] | None = None,
                ) -> tuple[E.Result, bytes | None]:
        """Send a request to the broker and serve others until its answer comes: within
        ``timeout`` seconds, or (None) for as long as the broker lives, as the driver
        core's add and delete wait for probe() and remove()."""
        self.might_sleep(what)
        r = next(self._r)
        msg = make(r)
        if self._batches:
            self.flush_events()    # events published before the request leave before it
        tr = self.tr
        tr.send(msg if isinstance(msg, list) else E.encode(msg, payload))
        if after_send is not None:
            after_send()
        deadline = math.inf if timeout is None else time.monotonic() + timeout + GRACE
        results = self._results
        if self._connected:
            # The answer usually comes within the DEALER's short wait; async events and
            # wake-ups arriving meanwhile are taken right after, so a loop of calls never
            # starves them; then the call pumps as usual if it must.
            frames = tr.await_dealer()
            if frames is not None:
                self._on_dealer(frames)
                frames = tr.recv_sub_now()
                if frames is not None:
                    self._on_sub(frames)
        while r not in results:
            if self._stopping and not self._connected:
                raise BrokerLost("stopping while no broker is connected")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuxError(Errno.ETIMEDOUT, f"{what}: no answer from the broker within {timeout + GRACE:.1f} s")
            self.pump(min(remaining, 1.0))
        return results.pop(r)

    @staticmethod
    def check(result: E.Result, what: str) -> E.Result:
        if result.e:
            raise AuxError(result.e, result.m or what)
        return result


def err_text(exc: AuxError) -> str:
    return f"{errno_name(exc.errno)}: {exc.message}"
