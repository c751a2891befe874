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

The main loop polls the ROUTER alone: zmq_poll's cost grows with each item, and
on the 2-vCPU machines it was a large share of a call (4 items: ~30 µs of CPU a
poll; 1 item: ~18). The monitor and the wake pipe are watched by a side thread
that reports each event as a message on the ROUTER itself (``SideWatch``); the
notification XPUB's subscriptions are read every heartbeat interval and right
after a watcher's hello is echoed (``read_subscriptions``).
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
from zmq.backend import zmq_poll
from zmq.utils.monitor import parse_monitor_message

from proto import envelope as E
from proto.errno import AuxError, ProtocolError
from proto.events import CATALOG, Catalog
from auxipc.broker import control
from auxipc.broker.auth import Listeners
from auxipc.broker.bus import Bus
from auxipc.procfs import process_start_time
from auxipc.runtime_dir import SOCKETS, BrokerLock, endpoints, remote_host
from auxipc.runtime.transport import recv_ready, send_frames

NOBLOCK = int(zmq.NOBLOCK)

log = logging.getLogger("auxipc.broker")

MAX_MSG = E.MAX_MSG + 4096   # the message frame and room for the routing id


class SideWatch(threading.Thread):
    """Watches the ROUTER's disconnect monitor and the wake pipe for the main loop and
    reports each event as a one-frame message (``disconnect`` or ``wake``) from an
    inproc DEALER whose routing id is a secret of this process. Owns the monitor
    socket; ends (closing its sockets) when the context is terminated."""

    def __init__(self, ctx: zmq.Context, monitor: zmq.Socket, wake_fd: int, endpoint: str, ident: bytes):
        super().__init__(name="auxipc-sidewatch", daemon=True)
        self.ctx, self.monitor, self.wake_fd, self.endpoint, self.routing_id = ctx, monitor, wake_fd, endpoint, ident

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.routing_id)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self.monitor in ready:
                    while self.monitor.poll(0):
                        parse_monitor_message(self.monitor.recv_multipart())
                    sock.send(b"disconnect")
                if self.wake_fd in ready:
                    os.read(self.wake_fd, 4096)
                    sock.send(b"wake")
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)
            self.monitor.close(linger=0)


class Broker:
    def __init__(self, runtime_dir=None, hb_ivl: float = 0.25, hb_liveness: int = 3, catalog: Catalog = CATALOG,
                 listen: Listeners | None = None):
        self.ep = endpoints(runtime_dir, connect="")
        self.listen = listen or Listeners()
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
        self.listen.start(self.ctx)
        r = self.router = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)
        r.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
        r.setsockopt(zmq.LINGER, 100)
        r.setsockopt(zmq.SNDHWM, 10000)
        r.setsockopt(zmq.RCVHWM, 10000)
        monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        r.bind(self.ep.bus)
        side = f"inproc://auxipc-side-{os.getpid()}"
        r.bind(side)
        self.listen.bind(r, "bus")
        self._side_ident = b"\0side:" + os.urandom(16).hex().encode()
        xsub = self.ctx.socket(zmq.XSUB)
        xsub.setsockopt(zmq.RCVHWM, 100000)
        xsub.bind(self.ep.pub)
        self.listen.bind(xsub, "pub")
        xsub.send(b"\x01")   # subscribe upstream to everything: filtering happens at the XPUB
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, 100000)
        xpub.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
        xpub.bind(self.ep.sub)
        self.listen.bind(xpub, "sub")
        # Notifications and the call trace leave from the broker's own XPUB, so it sees
        # who subscribes: the per-call trace is built only while someone reads it.
        self.notify = self.ctx.socket(zmq.XPUB)
        self.notify.setsockopt(zmq.SNDHWM, 100000)
        self.notify.bind(self.ep.notify)
        self.listen.bind(self.notify, "notify")
        self.subscriptions: Counter = Counter()
        self.bus.on_output = self.flush
        self.bus.tracing = False
        for name in SOCKETS:
            os.chmod(self.ep.root / name, 0o600)
        self._subs_due = 0.0
        self._proxy = threading.Thread(target=self._run_proxy, args=(xsub, xpub), name="auxipc-proxy", daemon=True)
        self._proxy.start()
        self._side = SideWatch(self.ctx, monitor, self._wake_r, side, self._side_ident)
        self._side.start()

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
            self.router.close(linger=100)
            self.notify.close(linger=100)
            self.listen.stop()
            self.ctx.term()      # the proxy and side threads get ETERM and close their sockets
            self._proxy.join(2)
            self._side.join(2)
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
        self._poll_items = [(self.router, int(zmq.POLLIN))]
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
        bus = self.bus
        nxt = bus.next_timer()
        now = time.monotonic()
        timeout = bus.hb_ivl if nxt is None else max(0.0, min(nxt - now, bus.hb_ivl))
        frames = recv_ready(self.router) if zmq_poll(self._poll_items, math.ceil(timeout * 1000)) else None
        if frames is not None:
            if frames[0] == self._side_ident:
                self._on_side(frames[1])
            else:
                self.on_frames(frames)
                self.flush()    # the answer first; timers and the rest after it
        if now >= self._subs_due:
            self._subs_due = now + bus.hb_ivl
            self.read_subscriptions()
        bus.tick()
        self.flush()

    def _on_side(self, what: bytes) -> None:
        if what == b"disconnect":
            self.check_processes()
            # The socket can close a moment before the process is gone from /proc's view.
            for delay in (0.005, 0.02, 0.1):
                self.bus.later(delay, self.check_processes)

    def read_subscriptions(self) -> None:
        """Take in who subscribed to what on the notification XPUB: the per-call trace is
        built only while someone subscribes to ``trace``."""
        while (sub := recv_ready(self.notify)) is not None:
            if len(sub) == 1 and sub[0][:1] in (b"\x00", b"\x01"):
                topic = sub[0][1:]
                self.subscriptions[topic] += 1 if sub[0][:1] == b"\x01" else -1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]
        self.bus.tracing = any(b"trace".startswith(t) for t in self.subscriptions)

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
            echoed = False
            for frames in pub:
                try:
                    send_frames(self.notify, frames, NOBLOCK)
                except zmq.Again:
                    bus.stats["notify_dropped"] += 1
                echoed = echoed or frames[0].startswith(b"hello:")
            if echoed:
                # A watcher subscribes to its hello topic last: its hello going out means
                # its other subscriptions have reached the XPUB; take them in now.
                self.read_subscriptions()

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
            if ident in self.bus.peers:
                self.bus.later(0, self.check_processes)   # not from inside a send (on_output)

    def check_processes(self) -> None:
        """After a disconnect: declare dead every peer whose process is gone."""
        for peer in list(self.bus.peers.values()):
            if peer.alive and not remote_host(peer.ident) and process_start_time(peer.pid) != peer.start_time:
                self.bus.peer_died(peer, f"process {peer.pid} exited (socket disconnected)")


def serve(runtime_dir=None, hb_ivl: float = 0.25, hb_liveness: int = 3, ready=print,
          catalog: Catalog = CATALOG, listen: Listeners | None = None) -> None:
    broker = Broker(runtime_dir, hb_ivl, hb_liveness, catalog, listen)
    broker.start()
    broker.install_signals()
    try:
        tcp = "".join(f", {x['url']} ({x['security']})" for x in broker.listen.describe())
        ready(f"auxipc broker ready: {broker.ep.root}{tcp} (pid {os.getpid()}, epoch {broker.epoch})")
        broker.run()
    finally:
        broker.close()
