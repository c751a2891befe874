"""The broker process: owns the runtime dir, binds the sockets, drives ``Bus``.

Sockets (only the broker binds; peers connect, so restarts need no reconfiguration):
- ``bus.sock``  ROUTER: every request/reply exchange (``ROUTER_MANDATORY``,
  ``ROUTER_HANDOVER``; sends never block).
- ``pub.sock``  XSUB and ``sub.sock`` XPUB, joined by ``zmq.proxy`` in its own
  thread: async events and bus notifications. The XSUB subscribes upstream to
  everything, so a publisher never waits for a subscription to propagate.
A monitor on the ROUTER reports disconnects; each one makes the broker check
its peers' processes (pid + start time), so a crash is seen in milliseconds.
SIGSTOPped or wedged processes are caught by missed heartbeats.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import Counter

import zmq
from zmq.utils.monitor import parse_monitor_message

from proto import envelope as E
from proto.errno import AuxError, ProtocolError
from proto.events import CATALOG, Catalog
from . import control
from .bus import Bus
from .runtime_dir import SOCKETS, BrokerLock, endpoints, process_start_time
from .transport import recv_ready, send_frames

NOBLOCK = int(zmq.NOBLOCK)

log = logging.getLogger("auxipc.broker")

MAX_MSG = E.MAX_MSG + 4096   # the message frame and room for the routing id


class Broker:
    def __init__(self, runtime_dir=None, hb_ivl: float = 0.25, hb_liveness: int = 3, catalog: Catalog = CATALOG):
        self.ep = endpoints(runtime_dir)
        self.lock = BrokerLock(self.ep.root)
        self.epoch = time.time_ns() // 1_000_000
        self.bus = Bus(time.monotonic, self.epoch, catalog, hb_ivl=hb_ivl, hb_liveness=hb_liveness)
        self.ctl = control.Control(self)
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self.ctx: zmq.Context | None = None
        self.dropped = 0

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.lock.acquire()
        try:
            self._bind()
        except BaseException:
            self.lock.release()
            raise

    def _bind(self) -> None:
        self.ctx = zmq.Context()
        r = self.router = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)
        r.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
        r.setsockopt(zmq.LINGER, 100)
        r.setsockopt(zmq.SNDHWM, 10000)
        r.setsockopt(zmq.RCVHWM, 10000)
        self.monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        r.bind(self.ep.bus)
        xsub = self.ctx.socket(zmq.XSUB)
        xsub.setsockopt(zmq.RCVHWM, 100000)
        xsub.bind(self.ep.pub)
        xsub.send(b"\x01")   # subscribe upstream to everything: filtering happens at the XPUB
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, 100000)
        xpub.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
        xpub.bind(self.ep.sub)
        # Notifications and the call trace leave from the broker's own XPUB, so it sees
        # who subscribes: the per-call trace is built only while someone reads it.
        self.notify = self.ctx.socket(zmq.XPUB)
        self.notify.setsockopt(zmq.SNDHWM, 100000)
        self.notify.bind(self.ep.notify)
        self.subscriptions: Counter = Counter()
        self.bus.tracing = False
        for name in SOCKETS:
            os.chmod(self.ep.root / name, 0o600)
        self._proxy = threading.Thread(target=self._run_proxy, args=(xsub, xpub), name="auxipc-proxy", daemon=True)
        self._proxy.start()

    @staticmethod
    def _run_proxy(xsub, xpub) -> None:
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:
            pass
        finally:
            xsub.close(linger=0)
            xpub.close(linger=0)

    def stop(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        if self.ctx is not None:
            self.router.disable_monitor()
            self.monitor.close(linger=0)
            self.router.close(linger=100)
            self.notify.close(linger=100)
            self.ctx.term()      # the proxy thread gets ETERM and closes its sockets
            self._proxy.join(2)
            self.ctx = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.lock.release()

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())

    # ---- loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped; then shut the bus down: every bound driver's shutdown()
        runs (bounded by SHUTDOWN_TIMEOUT each) and leaked references are reported."""
        self._poller = zmq.Poller()
        self._poller.register(self.router, zmq.POLLIN)
        self._poller.register(self.monitor, zmq.POLLIN)
        self._poller.register(self.notify, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop:
            self._step()
        finished = []
        self.bus.shutdown_all(lambda: finished.append(True))
        deadline = time.monotonic() + 5.0
        while not finished and time.monotonic() < deadline:
            self._step()
        for leak in self.bus.leaks():
            log.warning("leak: %s was deleted but references are still held by %s", leak["dev"], leak["holders"])
        self.flush()

    def _step(self) -> None:
        bus, poller = self.bus, self._poller
        nxt = bus.next_timer()
        timeout = bus.hb_ivl if nxt is None else max(0.0, min(nxt - time.monotonic(), bus.hb_ivl))
        events = dict(poller.poll(math.ceil(timeout * 1000)))
        if self.router in events:
            frames = recv_ready(self.router)
            if frames is not None:
                self.on_frames(frames)
        if self.notify in events:
            sub = recv_ready(self.notify)
            if sub is not None and len(sub) == 1:
                sub = sub[0]
                topic = sub[1:]
                self.subscriptions[topic] += 1 if sub[:1] == b"\x01" else -1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]
            self.bus.tracing = any(b"trace".startswith(t) for t in self.subscriptions)
        if self.monitor in events:
            while self.monitor.poll(0):
                parse_monitor_message(self.monitor.recv_multipart())
            self.check_processes()
            # The socket can close a moment before the process is gone from /proc's view.
            for delay in (0.005, 0.02, 0.1):
                bus.later(delay, self.check_processes)
        if self._wake_r in events:
            os.read(self._wake_r, 4096)
        bus.tick()
        self.flush()

    def on_frames(self, frames: list[bytes]) -> None:
        ident, body = frames[0], frames[1:]
        try:
            msg, payload = E.decode(body)
        except AuxError as exc:
            self.bus.stats["malformed"] += 1
            log.warning("malformed message from %r: %s", ident, exc)
            self.bus.reply(ident, self._guess_r(body), exc.errno,
                           f"{exc.message} (message dropped; the connection stays open)")
            return
        if isinstance(msg, E.Ctl):
            try:
                self.ctl.handle(ident, msg, payload)
            except AuxError as exc:
                self.bus.reply(ident, msg.r, exc.errno, exc.message)
            return
        self.bus.handle(ident, msg, payload)

    @staticmethod
    def _guess_r(body: list[bytes]) -> int:
        try:
            head = E.unpackb(body[0][4:], "$.header")
            r = head.get("r", 0)
            return r if type(r) is int and 0 <= r <= 2**53 else 0
        except (ProtocolError, IndexError, AttributeError):
            return 0

    def flush(self) -> None:
        bus = self.bus
        while bus.outbox:
            out, bus.outbox = bus.outbox, []
            for ident, frames in out:
                self.send(ident, frames)
        if bus.published:
            pub, bus.published = bus.published, []
            for frames in pub:
                try:
                    send_frames(self.notify, frames, NOBLOCK)
                except zmq.Again:
                    bus.stats["notify_dropped"] += 1

    def send(self, ident: bytes, frames: list[bytes]) -> None:
        try:
            send_frames(self.router, [ident, *frames], NOBLOCK)
        except zmq.Again:
            self.bus.stats["send_dropped_hwm"] += 1
            log.warning("dropped a message to %r: its queue is full (peer not reading)", ident)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.bus.stats["send_unreachable"] += 1
            peer = self.bus.peers.get(ident)
            if peer is not None:
                self.check_processes()

    def check_processes(self) -> None:
        """After a disconnect: declare dead every peer whose process is gone."""
        for peer in list(self.bus.peers.values()):
            if peer.alive and process_start_time(peer.pid) != peer.start_time:
                self.bus.peer_died(peer, f"process {peer.pid} exited (socket disconnected)")


def serve(runtime_dir=None, hb_ivl: float = 0.25, hb_liveness: int = 3, ready=print,
          catalog: Catalog = CATALOG) -> None:
    broker = Broker(runtime_dir, hb_ivl, hb_liveness, catalog)
    broker.start()
    broker.install_signals()
    try:
        ready(f"auxipc broker ready: {broker.ep.root} (pid {os.getpid()}, epoch {broker.epoch})")
        broker.run()
    finally:
        broker.close()
