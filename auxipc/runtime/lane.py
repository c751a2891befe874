"""The direct lane: a child's sync calls to its parent without the broker's hop
(docs/protocol.md, section 8).

The broker grants a lane per bound device (LANE_GRANT to both ends) and revokes
it before anything that changes the binding proceeds (LANE_REVOKE). The parent
serves on a ROUTER bound in the runtime dir (``lane-<pid>-<hex>``); the child
calls from a ROUTER that connects to each parent's endpoint with that endpoint as
the routing id. On the lane travel the broker's own messages: ``[token]
[REQUEST]`` one way, ``[RESULT]`` back, each decoded and validated by proto.

Contracts:
- A call takes the lane only when the broker would add nothing: an eligible
  event (the grant's ``events``), not nested in a delivery, no cross-process lock
  held on the stack, no fault rules here (``may_call``). Otherwise, and when the
  callee refuses (``d: {"lane": "refused"}``: its handler did not run), the call
  goes through the broker.
- The callee serves a request only for a grant it holds, with that grant's token:
  a peer cannot speak for another; a stale grant is refused like a foreign one.
- An in-flight call ends exactly once: with the callee's answer, with the
  revoke's errno when the callee is gone (as the broker fails a pending call),
  or with -ETIMEDOUT at its deadline. A late answer is dropped and counted.
- Lane requests are delivered through the runtime's dispatch, so they are
  deferred and locked exactly as requests from the broker are.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from functools import partial
from typing import NamedTuple

import zmq

from auxipc.runtime.dispatch import RequestIn
from auxipc.runtime.seam import DEALER, SUB
from auxipc.runtime.transport import DIRECT_WAIT_MS, MAX_IN, recv_frames, recv_ready, send_frames
from auxipc.runtime_dir import IPC_PATH_MAX
from proto import envelope as E
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.peer")

HWM = 1000               # lane messages queued per connection (a sync caller has one in flight)
REFUSED = {"lane": "refused"}
_NOBLOCK = int(zmq.NOBLOCK)


class Outbound(NamedTuple):
    """A grant this runtime calls on (the child's copy)."""
    grant: int
    rid: bytes           # the callee's routing id on our ROUTER: its endpoint
    token: bytes
    events: frozenset
    name: str            # the device's, for error messages
    endpoint: str


class Inbound(NamedTuple):
    """A grant this runtime serves (the parent's copy)."""
    grant: int
    token: bytes
    events: frozenset
    name: str
    peer: str            # the caller's label, for trace records
    trace: bool          # someone reads the trace: publish a record of each call


class Lane:
    """One runtime's end of its lanes: ``serves``, it binds an endpoint (a parent);
    else it calls on the grants it is given (a child)."""

    def __init__(self, host, ctx: zmq.Context, root: str, serves: bool):
        self.host = host
        self.stats = host.stats
        self.calling: dict[int, Outbound] = {}      # device id -> grant we call on
        self.serving: dict[int, Inbound] = {}       # device id -> grant we serve
        self.results: dict[int, tuple] = {}
        self.inflight: dict[int, tuple[Outbound, str]] = {}   # r -> (grant, event name)
        self._r = itertools.count(1)
        self._connected: set[str] = set()
        self.client = self.server = None
        self.endpoint = ""
        self._made: tuple | None = None     # (path, dev, inode) of the socket file we bound
        if not serves:
            c = self.client = ctx.socket(zmq.ROUTER)
            c.setsockopt(zmq.ROUTING_ID, b"L" + os.urandom(8))
            c.setsockopt(zmq.ROUTER_MANDATORY, 1)
            c.setsockopt(zmq.LINGER, 0)
            c.setsockopt(zmq.SNDHWM, HWM)
            c.setsockopt(zmq.RCVHWM, HWM)
            c.setsockopt(zmq.MAXMSGSIZE, MAX_IN)
            c.setsockopt(zmq.RCVTIMEO, DIRECT_WAIT_MS)     # only the direct wait of a call blocks
        else:
            endpoint = f"ipc://{root}/lane-{os.getpid()}-{os.urandom(4).hex()}"
            if len(endpoint) - len("ipc://") > IPC_PATH_MAX:
                log.warning("no lane: %s is longer than an ipc path may be", endpoint)
            else:
                s = self.server = ctx.socket(zmq.ROUTER)
                s.setsockopt(zmq.ROUTER_MANDATORY, 1)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, HWM)
                s.setsockopt(zmq.RCVHWM, HWM)
                s.setsockopt(zmq.MAXMSGSIZE, MAX_IN)
                s.bind(endpoint)
                self.endpoint = endpoint
                path = endpoint[len("ipc://"):]
                st = os.lstat(path)
                self._made = (path, st.st_dev, st.st_ino)
        for sock in (self.client, self.server):
            if sock is not None:
                host.tr.watch(sock)

    # ---- with the broker ------------------------------------------------------------

    def connected(self) -> None:
        """Registered with a broker: offer the lane (before anything can bind)."""
        self.host.tr.send(E.encode(E.LaneOffer(endpoint=self.endpoint)))

    def disconnected(self) -> None:
        """The broker is gone: every grant was its, and is void."""
        self.calling.clear()
        self.serving.clear()
        self.inflight.clear()
        self.results.clear()

    def control(self, msg) -> None:
        if type(msg) is E.LaneGrant:
            token = bytes.fromhex(msg.token) if len(msg.token) == 32 else b""
            if not token:
                self.stats["lane_malformed"] += 1
                return
            if msg.endpoint:
                if self.client is None:
                    return
                self._connect(msg.endpoint)
                self.calling[msg.dev] = Outbound(msg.grant, msg.endpoint.encode(), token, frozenset(msg.events),
                                                 msg.name, msg.endpoint)
            else:
                old = self.serving.get(msg.dev)
                self.serving[msg.dev] = Inbound(msg.grant, token, frozenset(msg.events), msg.name, msg.peer,
                                                msg.trace)
                if old is not None and old.grant == msg.grant:
                    return                   # the same grant again: only ``trace`` changed
            self.stats["lane_grants"] += 1
            return
        self.revoked(msg)

    def revoked(self, msg: E.LaneRevoke) -> None:
        """LANE_REVOKE: stop calling and serving on the grant (0: every grant towards
        ``endpoint``). In-flight calls drain, or fail with the revoke's errno."""
        def hit(grant: int, endpoint: str) -> bool:
            return grant == msg.grant if msg.grant else endpoint == msg.endpoint
        for dev, out in list(self.calling.items()):
            if hit(out.grant, out.endpoint):
                del self.calling[dev]
        for dev, inb in list(self.serving.items()):
            if msg.grant and inb.grant == msg.grant:
                del self.serving[dev]
        if msg.e:
            for r, (out, event) in self.inflight.items():
                if hit(out.grant, out.endpoint) and r not in self.results:
                    self.results[r] = (E.Result(r=r, e=msg.e, m=f"{event} on {out.name}: {msg.m}"), None)
        if not msg.grant and msg.endpoint in self._connected and self.client is not None:
            self._connected.discard(msg.endpoint)
            try:
                self.client.disconnect(msg.endpoint)
            except zmq.ZMQError:
                pass
        self.stats["lane_revokes"] += 1

    def close(self) -> None:
        """Close the sockets and remove our socket file (ZeroMQ leaves it; a killed
        process's file is removed by the broker when it releases the runtime dir)."""
        for sock in (self.client, self.server):
            if sock is not None:
                sock.close(linger=0)
        if self._made is not None:
            path, dev, ino = self._made
            self._made = None
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def _connect(self, endpoint: str) -> None:
        if endpoint not in self._connected:
            self.client.setsockopt(zmq.CONNECT_ROUTING_ID, endpoint.encode())
            self.client.connect(endpoint)
            self._connected.add(endpoint)

    # ---- calling ----------------------------------------------------------------------

    def route(self, dev_id: int, code: int) -> Outbound | None:
        """The grant a call of ``code`` on ``dev_id`` may take now, or None: through the broker."""
        out = self.calling.get(dev_id)
        if out is None or code not in out.events:
            return None
        host = self.host
        if host.faults.rules or host.dispatch.depth or any(host.contexts.held.values()):
            return None
        return out

    def call(self, out: Outbound, dev_id: int, spec, wire: bytes, timeout: float, task: str):
        """A sync call over the lane: ``(result, reply payload)``, or None if the callee
        refused it (the caller then sends it through the broker)."""
        host = self.host
        host.might_sleep(f"{spec.name} call")
        if host.publisher.batches:
            host.flush_events()          # events published before the call leave before it
        r = next(self._r)
        frames = [out.rid, out.token, *E.fast(E.Request, wire, r=r, dev=dev_id, ev=spec.code,
                                              timeout_ms=max(1, int(timeout * 1000)), inc=host.inc, task=task)]
        try:
            send_frames(self.client, frames, _NOBLOCK)
        except zmq.ZMQError:             # not connected yet, or the queue is full: the broker's way
            self.stats["lane_unsent"] += 1
            return None
        results = self.results
        self.inflight[r] = (out, spec.name)
        try:
            try:
                self._on_client(recv_frames(self.client, 0))     # RCVTIMEO is DIRECT_WAIT_MS
            except zmq.Again:
                pass
            if r in results:
                self._poll_now()         # a loop of lane calls never starves the broker's messages
            else:
                deadline = time.monotonic() + timeout
                while r not in results:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.stats["lane_timeouts"] += 1
                        self.stats["lane_calls"] += 1
                        raise AuxError(Errno.ETIMEDOUT, f"{spec.name} on {out.name}: no answer over the lane "
                                                        f"within {timeout:.1f} s")
                    host.pump(min(remaining, 1.0))
        finally:
            del self.inflight[r]
        result, reply = results.pop(r)
        if result.d and result.d.get("lane") == "refused":
            self.stats["lane_refused"] += 1
            return None
        self.stats["lane_calls"] += 1
        return result, reply

    def _poll_now(self) -> None:
        """Take what is queued on the broker's sockets now, as a call through the broker
        would have on its way."""
        host, tr = self.host, self.host.tr
        ready = tr.poll(0)
        if ready & DEALER:
            frames = tr.recv_dealer()
            if frames is not None:
                host.dispatch.on_dealer(frames)
        if ready & SUB and tr.up:
            frames = tr.recv_sub()
            if frames is not None:
                host.dispatch.on_sub(frames)
        if ready & ~(DEALER | SUB):
            self.on_ready()

    def _on_client(self, frames: list) -> None:
        """An answer from a callee: kept for its call, or dropped and counted if late."""
        got = self._decode(frames, 1, "the routing id", E.Result, "answer")
        if got is None:
            return
        msg, payload = got
        if msg.r in self.inflight and msg.r not in self.results:
            self.results[msg.r] = (msg, payload)
        else:
            self.stats["lane_late"] += 1

    def _decode(self, frames: list, skip: int, leading: str, want: type, what: str) -> tuple | None:
        """The one message after the ``skip`` leading frames (``leading`` names them), if it
        is a ``want``; else None, the drop counted and logged with its EPROTO reason:
        whatever a peer sends on a lane never reaches the runtime's loop."""
        try:
            if len(frames) != skip + 1:
                raise AuxError(Errno.EPROTO, f"$: expected 1 frame after {leading}, got {len(frames) - skip}")
            msg, payload = E.decode(frames[skip:])
            if type(msg) is not want:
                raise AuxError(Errno.EPROTO, f"$.header.t: {msg.TYPE.name} is not a lane {what}")
        except Exception as exc:     # noqa: BLE001 - see the docstring
            self.stats["lane_malformed"] += 1
            log.warning("dropped a malformed lane %s: %s", what, exc)
            return None
        return msg, payload

    # ---- serving ------------------------------------------------------------------------

    def on_ready(self) -> None:
        """A lane socket is readable: an answer (client) or a request (server)."""
        if self.client is not None:
            frames = recv_ready(self.client)
            if frames is not None:
                self._on_client(frames)
        if self.server is not None:
            frames = recv_ready(self.server)
            if frames is not None:
                self._on_request(frames)

    def _on_request(self, frames: list) -> None:
        rid = frames[0]
        got = self._decode(frames, 2, "the routing id and a token", E.Request, "request")
        if got is None:
            return
        msg, payload = got
        inb = self.serving.get(msg.dev)
        why = ("no lane is granted for that device with that token" if inb is None or frames[1] != inb.token
               else "the event does not take the lane" if msg.ev not in inb.events or msg.rtnl
               else "fault rules are in force" if self.host.faults.rules else "")
        if why:
            self.stats["lane_refused"] += 1
            self._send(rid, E.fast(E.Result, r=msg.r, e=-Errno.EPERM, m=f"lane: {why}", d=REFUSED))
            return
        self.host.dispatch.deliver(RequestIn(msg, payload, partial(self._answer, rid, msg, inb, time.monotonic())))

    def _answer(self, rid: bytes, msg: E.Request, inb: Inbound, t0: float, frames: list, e: int) -> None:
        """The handler's answer goes back on the lane; then (off the caller's path), while
        someone reads the trace, the record the broker would have published."""
        host = self.host
        # stamped before the answer leaves, as the broker stamps its call records: the
        # caller's reaction to the answer is stamped later (docs/protocol.md, Stamps)
        ts_ns, src_seq = host.publisher.stamp() if inb.trace else (0, 0)
        self._send(rid, frames)
        if not inb.trace:
            return
        spec = host.catalog.get(msg.ev)
        head = {"t": E.Msg.UEVENT, "seq": 0, "action": "CALL", "dev": inb.name, "driver": "", "ts_ns": ts_ns,
                "src_seq": src_seq, "detail": {
            "event": spec.name if spec else msg.ev, "from": inb.peer, "to": host.welcome.get("peer", host.name),
            "errno": e, "task": msg.task, "us": int((time.monotonic() - t0) * 1e6), "lane": True}}
        if not host.tr.publish_nowait([b"trace", E.MAGIC + E.packb(head)]):
            self.stats["trace_dropped"] += 1

    def _send(self, rid: bytes, frames: list) -> None:
        try:
            send_frames(self.server, [rid, *frames], _NOBLOCK)
        except zmq.ZMQError:          # the caller is gone (EHOSTUNREACH) or stuck (EAGAIN)
            self.stats["lane_answer_dropped"] += 1


def lane_root(tr) -> str | None:
    """The runtime dir a lane endpoint goes in, or None where there is no lane (not
    ZeroMQ over ipc: the in-memory twin, or a broker on another host)."""
    ep = getattr(tr, "ep", None)
    if ep is None or ep.remote or not hasattr(tr, "watch"):
        return None
    return str(ep.root)
