"""The broker's side of the direct lane (docs/protocol.md, section 8): who offered
one, which devices have a grant, and the revoke that comes before anything that
changes a binding.

``Lanes`` is a part of the driver core (binding.py) and sees the bus only through
``Host``. Built: the child->parent lane (the child calls, the parent serves). The
broker grants after a probe returned 0 and after a resume, and revokes before an
unbind, a suspend or a shutdown proceeds, when a fault rule is added, and when an
end is gone; the messages to one peer leave in that order on its DEALER, so a
parent has dropped a grant before it hears of the unbind.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict

from auxipc.broker.lifecycle import BindState, LaneEvent, LaneState, lane_machine
from auxipc.broker.records import Device, Host, Peer
from auxipc.runtime_dir import IPC_PATH_MAX, lane_enabled, remote_host
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Context, Direction

log = logging.getLogger("auxipc.broker")

_ENDPOINT = re.compile(r"ipc://(/[^\0]+)/lane-(\d+)-[0-9a-f]{6,32}")


class Tracing:
    """``Bus.tracing``, whether anyone reads the trace: setting it to a new value tells
    the lanes' callees too (``Lanes.tracing_changed``), which publish call records only then."""

    def __get__(self, bus, owner=None):
        return self if bus is None else bus._tracing

    def __set__(self, bus, on: bool) -> None:
        if on != bus._tracing:
            bus._tracing = on
            bus.binding.lanes.tracing_changed(on)


class Grant:
    """One device's lane: the child calls the parent on it while GRANTED."""

    __slots__ = ("grant", "dev", "parent", "child", "token", "endpoint", "events", "machine")

    def __init__(self, grant: int, dev: Device, parent: Peer, child: Peer, endpoint: str, events: tuple):
        self.grant, self.dev, self.parent, self.child = grant, dev, parent, child
        self.token = os.urandom(16).hex()
        self.endpoint, self.events = endpoint, events
        self.machine = lane_machine(f"{dev.name} (grant {grant})")


class Lanes:
    def __init__(self, host: Host, enabled: bool | None = None):
        self.host = host
        self.enabled = lane_enabled() if enabled is None else enabled
        self.offers: dict[bytes, str] = {}           # peer's routing id -> its endpoint ('' serves none)
        self.grants: dict[int, Grant] = {}           # device id -> its live grant
        # callee endpoint -> callers ever granted a lane to it: told when the callee is gone,
        # so a call left in flight by an earlier, drained revoke ends too.
        self.callers: dict[str, set[bytes]] = defaultdict(set)
        self._eligible: dict[frozenset, tuple] = {}

    # ---- offers ----------------------------------------------------------------------

    def offer(self, peer: Peer, msg: E.LaneOffer) -> None:
        """LANE_OFFER: the peer calls on lanes, and serves one at ``endpoint`` ('' none). The
        endpoint must name the peer's own pid: no peer can offer another's socket."""
        ep = msg.endpoint
        if ep:
            m = _ENDPOINT.fullmatch(ep)
            if m is None or len(ep) - len("ipc://") > IPC_PATH_MAX:
                raise AuxError(Errno.EINVAL, f"$.header.endpoint: {ep!r} is not ipc://<path>/lane-<pid>-<hex> "
                                             f"of at most {IPC_PATH_MAX} characters")
            if int(m.group(2)) != peer.pid:
                raise AuxError(Errno.EPERM, f"$.header.endpoint: {ep!r} names pid {m.group(2)}, "
                                            f"not {peer.label}'s")
        if not self.enabled or remote_host(peer.ident):
            return
        self.offers[peer.ident] = ep

    # ---- grant / revoke -----------------------------------------------------------------

    def grant(self, dev: Device) -> None:
        """After a probe returned 0 (or a resume): grant the child->parent lane if both ends
        offered, are alive and local, and no fault rule is in force anywhere."""
        drv = dev.driver
        if not self.enabled or drv is None or dev.dev_id in self.grants or self.host.faults.rules:
            return
        parent, child = dev.parent, drv.peer
        endpoint = self.offers.get(parent.ident)
        if not endpoint or child.ident not in self.offers or not parent.alive or not child.alive:
            return
        events = self.eligible(parent.handles)
        if not events:
            return
        host = self.host
        g = Grant(host.next_id(), dev, parent, child, endpoint, events)
        self.grants[dev.dev_id] = g
        self.callers[endpoint].add(child.ident)
        common = dict(dev=dev.dev_id, grant=g.grant, token=g.token, events=events, name=dev.name)
        host.send(child.ident, E.LaneGrant(endpoint=endpoint, peer=parent.label, **common))
        host.send(parent.ident, E.LaneGrant(peer=child.label, trace=host.tracing, **common))
        host.stats["lane_grants"] += 1
        self._record("LANE_GRANT", dev, grant=g.grant, caller=child.label, callee=parent.label,
                     events=[host.catalog.get(c).name for c in events])

    def revoke(self, dev: Device, why: str, e: int = 0, m: str = "") -> None:
        """Take ``dev``'s lane away before ``why`` proceeds: LANE_REVOKE to both live ends.
        In-flight calls drain (``e`` 0) or fail with ``e``/``m``."""
        g = self.grants.pop(dev.dev_id, None)
        if g is None:
            return
        g.machine.fire(LaneEvent.REVOKE)
        host = self.host
        for peer in (g.parent, g.child):
            if peer.alive:
                host.send(peer.ident, E.LaneRevoke(grant=g.grant, endpoint=g.endpoint, e=e, m=m[:4000] or why))
        host.stats["lane_revokes"] += 1
        self._record("LANE_REVOKE", dev, grant=g.grant, reason=why, errno=e)

    def peer_gone(self, peer: Peer, reason: str) -> None:
        """An end died or unregistered: its grants are revoked; the callers of a gone
        callee fail their in-flight lane calls as the broker fails pending calls (-ENODEV)."""
        endpoint = self.offers.pop(peer.ident, None)
        gone = f"{peer.label} is gone ({reason})"
        for g in [g for g in self.grants.values() if peer in (g.parent, g.child)]:
            self.revoke(g.dev, f"{peer.label} is gone", -Errno.ENODEV if peer is g.parent else 0, gone)
        if endpoint:
            for ident in self.callers.pop(endpoint, ()):
                caller = self.host.peers.get(ident)
                if caller is not None and caller.alive:
                    self.host.send(ident, E.LaneRevoke(grant=0, endpoint=endpoint, e=-Errno.ENODEV, m=gone))
        for callers in self.callers.values():
            callers.discard(peer.ident)

    def tracing_changed(self, on: bool) -> None:
        """Someone started or stopped reading the trace: each callee is told (LANE_GRANT
        again, same grant and token), and publishes its call records only while it is on."""
        host = self.host
        for g in self.grants.values():
            if g.parent.alive:
                host.send(g.parent.ident, E.LaneGrant(dev=g.dev.dev_id, grant=g.grant, token=g.token,
                                                      events=g.events, name=g.dev.name, peer=g.child.label,
                                                      trace=on))

    def faults_changed(self) -> None:
        """Faults and lanes never meet: a rule in force revokes every lane; when the last
        one is cleared, every bound device is granted again."""
        host = self.host
        if host.faults.rules:
            for g in list(self.grants.values()):
                self.revoke(g.dev, "fault rules are in force")
            return
        for dev in list(host.devices.values()):
            if dev.driver is not None and dev.bind.state is BindState.BOUND:
                self.grant(dev)

    def _record(self, action: str, dev: Device, **detail) -> None:
        """A trace record (topic ``trace``), not a uevent: a lane changes no binding."""
        host = self.host
        if host.tracing:
            host.published.append([b"trace", *E.fast(E.Uevent, seq=0, action=action, dev=dev.name, detail=detail)])

    def state(self, dev: Device) -> LaneState | None:
        g = self.grants.get(dev.dev_id)
        return g.machine.state if g is not None else None

    def eligible(self, handles: frozenset) -> tuple:
        """The codes a child may call its parent with on the lane: sync, child->parent,
        may-sleep, not rtnl, and handled by the parent (docs/protocol.md, section 8)."""
        codes = self._eligible.get(handles)
        if codes is None:
            spec_of = self.host.catalog.get
            codes = self._eligible[handles] = tuple(sorted(
                c for c in handles if (s := spec_of(c)) is not None and s.sync and not s.rtnl
                and s.context is Context.SLEEP and s.direction in (Direction.TO_PARENT, Direction.BOTH)))
        return codes
