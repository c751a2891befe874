"""The broker process: owns the runtime dir, binds the sockets, drives ``Bus``.

Its sockets, and what each one's limits are for: ``auxipc.broker.sockets``.
A monitor on the ROUTER reports disconnects; each one makes the broker check
its peers' processes (pid + start time), so a crash is seen in milliseconds.
SIGSTOPped or wedged processes are caught by missed heartbeats.

The main loop waits on the ROUTER alone: in its receive (RCVTIMEO) while no timer is due
within a heartbeat interval, else in zmq_poll, which costs more CPU (4 items: ~30 µs a poll,
1: ~18; a ROUTER echo spends ~35 % less CPU a message waiting in the receive, placed freely).
A side thread watches the monitor and the wake pipe and reports each event as a message on
the ROUTER itself (``SideWatch``); the notification XPUB's subscriptions are read every
heartbeat interval and right after a watcher's hello is echoed (``read_subscriptions``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import Counter, deque

import zmq
from zmq.backend import zmq_poll

from auxipc.broker import control, records
from auxipc.broker.auth import Listeners, RemotePeers
from auxipc.broker.barrier import Barrier, LogLimiter, guess_r
from auxipc.broker.bus import HUNG_TASK_SECS, Bus
from auxipc.broker.gate import AsyncGate
from auxipc.broker.sidewatch import SideWatch, peer_credentials
from auxipc.broker.sockets import bind_sockets
from auxipc.procfs import process_start_time
from auxipc.runtime.transport import recv_ready, send_frames
from auxipc.runtime_dir import SOCKETS, BrokerLock, endpoints, remote_host
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import CATALOG, Catalog

NOBLOCK = int(zmq.NOBLOCK)
_recv = zmq.backend.Socket.recv

log = logging.getLogger("auxipc.broker")

DROP_WARN_EVERY = 10.0       # seconds between two warnings of async events dropped at the HWM
BACKLOG_MAX = 200_000        # messages read ahead of their handling (see Broker.drain)
ADMIN = b"\0admin:"   # routing ids of admin-socket senders (a peer cannot set one starting with NUL)


class Broker:
    def __init__(self, runtime_dir=None, hb_ivl: float = 0.25, hb_liveness: int = 3, catalog: Catalog = CATALOG,
                 hung_task_secs: float = HUNG_TASK_SECS, listen: Listeners | None = None):
        self.ep = endpoints(runtime_dir, connect="")
        self.listen = listen or Listeners()
        self.remote = RemotePeers()
        self.lock = BrokerLock(self.ep.root)
        self.epoch = time.time_ns() // 1_000_000
        self.bus = Bus(time.monotonic, self.epoch, catalog, hb_ivl=hb_ivl, hb_liveness=hb_liveness,
                       hung_task_secs=hung_task_secs)
        self.ctl = control.Control(self)
        self.bus.process_alive = lambda pid, start: process_start_time(pid) == start
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self.ctx: zmq.Context | None = None
        self.dropped = 0
        self.limit_log = LogLimiter()
        self.barrier = Barrier(self.limit_log)
        self._current: bytes | None = None    # the routing id whose message is being handled
        self._answered = False                # ... and whether something went back to it
        self._first: zmq.Frame | None = None  # the first frame of that message (its credentials)
        self._admin_creds: tuple[int, int, int] | None = None   # of the admin message being handled
        self.backlog: deque = deque()         # messages read ahead of their handling (see drain)
        self.backlog_peak = 0
        self._dropped_warned, self._drop_warn_due = 0, 0.0     # see warn_dropped
        self._drain_due = 0.0
        self._hb_echo = E.encode(E.Heartbeat(epoch=self.epoch))

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
        self._side_ident = b"\0side:" + os.urandom(16).hex().encode()
        side = f"inproc://auxipc-side-{os.getpid()}"
        socks = bind_sockets(self.ctx, self.ep, self.listen, side, self.bus.hb_ivl)
        self.router, self.notify = socks.router, socks.notify
        self.subscriptions: Counter = Counter()
        self.bus.on_output = self.flush
        self.bus.tracing = False
        for name in SOCKETS:
            os.chmod(self.ep.root / name, 0o600)
            self.lock.made(name)
        self._subs_due = 0.0
        self._proxy = AsyncGate(self.bus, socks.xsub, socks.xpub)
        self._proxy.remote = self.remote
        self._proxy.start()
        self._side = SideWatch(self.ctx, socks.monitor, self._wake_r, side, self._side_ident, socks.admin)
        self._side.start()

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
        if self.backlog:
            frames, self._first = self.backlog.popleft()
        else:
            timeout = bus.hb_ivl if nxt is None else max(0.0, min(nxt - now, bus.hb_ivl))
            got = self._recv(0) if timeout >= bus.hb_ivl else (     # 0: waits up to RCVTIMEO (hb_ivl)
                self._recv() if zmq_poll(self._poll_items, math.ceil(timeout * 1000)) else None)
            frames, self._first = got if got is not None else (None, None)
        if frames is not None:
            if frames[0] == self._side_ident:
                self._on_side(frames[1:])
            else:
                self.on_frames(frames)
                self.flush()    # the answer first; timers and the rest after it
        if now >= self._subs_due:
            self._subs_due = now + bus.hb_ivl
            self.read_subscriptions()
        if now >= self._drain_due:
            self._drain_due = now + bus.hb_ivl / 2
            self.drain()
        try:
            bus.tick()
        except Exception as exc:    # noqa: BLE001 - the barrier: one timer's fault, not the broker's end
            self.internal_error(exc, "a timer")
        self.flush()

    def drain(self) -> None:
        """Read every message waiting on the ROUTER: heartbeats are taken at once (a
        peer is alive when its heartbeat *arrived*, however long the messages in front
        of it take), the rest wait in ``backlog`` in their order. Called every half
        heartbeat interval, so a flood in the queue never gets live peers declared
        dead; the backlog is bounded (past it the socket's HWM pushes back)."""
        bus, backlog = self.bus, self.backlog
        now = time.monotonic()
        while len(backlog) < BACKLOG_MAX:
            got = self._recv()
            if got is None:
                break
            frames = got[0]
            peer = bus.hb_idents.get(frames[0])
            if peer is not None:
                if peer.alive:
                    peer.last_seen = now
                    self.send(frames[0], self._hb_echo)
                continue
            backlog.append(got)
        if len(backlog) > self.backlog_peak:
            self.backlog_peak = len(backlog)
            bus.stats["backlog_peak"] = self.backlog_peak

    def _recv(self, flags: int = NOBLOCK) -> tuple[list[bytes], zmq.Frame] | None:
        """The next message as bytes, and its first frame (its sender's credentials); None if none came."""
        try:
            frame = _recv(self.router, flags, False)
        except zmq.Again:
            return None
        first = frame
        frames = [frame.bytes]
        while frame.more:
            frame = _recv(self.router, NOBLOCK, False)
            frames.append(frame.bytes)
        return frames, first

    def credentials(self) -> tuple[int, int, int] | None:
        """(pid, uid, gid) of the sender of the message being handled (SO_PEERCRED;
        gid -1 for the admin socket)."""
        if self._current is not None and self._current.startswith(ADMIN):
            return self._admin_creds
        return peer_credentials(self._first) if self._first is not None else None

    def _on_side(self, frames: list[bytes]) -> None:
        what = frames[0]
        if what == b"admin" and len(frames) >= 3:
            pid, _, uid = frames[1].partition(b":")
            self._admin_creds = (int(pid), int(uid), -1) if pid.isdigit() and uid.isdigit() else None
            self._first = None
            self.on_frames([ADMIN + frames[2], *frames[3:]])
            self.flush()
        elif what == b"disconnect":
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
        for key, value in self._proxy.stats.copy().items():     # the gate's counters (Counter.update adds)
            self.bus.stats[key] = value
        self.warn_dropped()

    def warn_dropped(self) -> None:
        """A subscriber that stopped reading is reported: a warning when the gate's
        count of subscriber queues found full (``async_dropped_hwm``) grew, at most one
        each DROP_WARN_EVERY seconds."""
        dropped = self.bus.stats.get("async_dropped_hwm", 0)
        now = time.monotonic()
        if dropped <= self._dropped_warned or now < self._drop_warn_due:
            return
        topic = self._proxy.dropped_topic.decode(errors="replace")
        self.bus.warn("async_dropped_hwm", f"async events dropped at the high-water mark: a subscriber's queue filled "
                      f"{dropped - self._dropped_warned} time(s) (last on {topic}); it is not reading and "
                      f"loses events until it does",
                      dropped=dropped, topic=topic)
        self._dropped_warned, self._drop_warn_due = dropped, now + DROP_WARN_EVERY

    def on_frames(self, frames: list[bytes]) -> None:
        """Handle one message behind a barrier: whatever goes wrong handling it is
        answered -EPROTO (unless an answer already went), counted and logged, and the
        broker goes on with the next message."""
        self._current, self._answered = frames[0], False
        try:
            self._handle(frames)
        except Exception as exc:    # noqa: BLE001 - the per-message barrier
            self.internal_error(exc, f"a message from {frames[0]!r}", frames)
        finally:
            self._current = None

    def _handle(self, frames: list[bytes]) -> None:
        ident, body = frames[0], frames[1:]
        try:
            msg, payload = E.decode(body)
        except AuxError as exc:
            self.bus.stats["malformed"] += 1
            self.limit_log("malformed", logging.WARNING, "malformed message from %r: %s", ident, exc)
            self.bus.reply(ident, guess_r(body), exc.errno,
                           f"{exc.message} (message dropped; the connection stays open)")
            return
        if ident.startswith(ADMIN) and not isinstance(msg, E.Ctl):
            return self.bus.reply(ident, getattr(msg, "r", 0), Errno.EPROTO, f"$.header.t: the admin socket "
                                  f"takes control ops (CTL), not {msg.TYPE.name}")
        if isinstance(msg, E.Register):
            return self.register(ident, msg)
        self.ctl.route(ident, msg, payload)

    def register(self, ident: bytes, msg: E.Register) -> None:
        """REGISTER with the identity the kernel vouches for: the pid and uid of the
        connection (SO_PEERCRED) and that pid's start time from /proc replace what the
        peer claims. A connection of another user is refused."""
        creds = self.credentials()
        if creds is None:
            why = self.remote.register(ident, self._first, bool(self.listen.urls))
            if why is not None:
                return self.bus.reply(ident, msg.r, Errno.EPERM, why)
            return self.bus.register(ident, msg)      # a remote peer: its pid is a label, liveness by heartbeats
        if remote_host(ident) is not None:
            return self.bus.reply(ident, msg.r, Errno.EINVAL,
                                  "register: an ipc peer's routing id names no host (no '@host')")
        pid, uid, _gid = creds
        if uid != os.getuid() and uid != 0:
            self.bus.stats["refused_uid"] += 1
            return self.bus.reply(ident, msg.r, Errno.EPERM,
                                  f"register: peer uid {uid} is not the broker's ({os.getuid()})")
        start = process_start_time(pid)
        if pid <= 1 or start is None:
            return self.bus.reply(ident, msg.r, Errno.ENODEV, f"register: peer process {pid} is not running")
        if (msg.pid, msg.start_time) != (pid, start):
            self.bus.stats["identity_corrected"] += 1
            # The decoded message is ours: set the two fields in place rather than
            # re-validating the whole message (its handles can be 4,096 codes).
            object.__setattr__(msg, "pid", pid)
            object.__setattr__(msg, "start_time", start)
        self.bus.register(ident, msg)

    def internal_error(self, exc: BaseException, where: str, frames: list[bytes] | None = None) -> None:
        """An unexpected exception: counted, logged (with its traceback the first time
        it happens at that place), and the message answered -EPROTO if nothing was."""
        self.bus.stats["internal_errors"] += 1
        self.barrier.log(exc, where)
        if frames is None:
            return
        ident = frames[0]
        if not self._answered and not any(i == ident for i, _ in self.bus.outbox):
            try:
                self.bus.reply(ident, guess_r(frames[1:]), Errno.EPROTO,
                               f"internal error handling this message ({type(exc).__name__}); "
                               "it was dropped and the connection stays open")
            except Exception:   # noqa: BLE001 - answering is best effort
                pass

    def flush(self) -> None:
        bus = self.bus
        records.STAMPER.stamp(bus.published)    # before the answers go: they may cause more
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
        if ident == self._current:
            self._answered = True
        if ident.startswith(ADMIN):     # back through the side thread, which owns the admin socket
            ident, frames = self._side_ident, [b"reply", ident[len(ADMIN):], *frames]
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
          catalog: Catalog = CATALOG, hung_task_secs: float = HUNG_TASK_SECS,
          listen: Listeners | None = None) -> None:
    broker = Broker(runtime_dir, hb_ivl, hb_liveness, catalog, hung_task_secs, listen)
    broker.start()
    broker.install_signals()
    try:
        tcp = "".join(f", {x['url']} ({x['security']})" for x in broker.listen.describe())
        ready(f"auxipc broker ready: {broker.ep.root}{tcp} (pid {os.getpid()}, epoch {broker.epoch})")
        broker.run()
    finally:
        broker.close()
