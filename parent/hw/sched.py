"""The transmit scheduling tree and the function's queue space (ice_sched.c in miniature).

    port (root)
     └─ vport <id>                 one per vport (vport 0 is the function's own); at most max_vports
         └─ tc <n>                 one per enabled traffic class (num_tc, from DCB)
             └─ queue / qset       leaves: an eth Tx queue, an RDMA queue set; at most leaves_per_tc

Every node has a teid (the handle QSET_ADD answers with) and may carry a
shaper (netshaper: ``shaper.py``). Leaves belong to the device that asked for
them; releasing a device (unbind, reset) frees its leaves. Changing the number
of TCs moves the leaves of the TCs that go away to TC 0 (-ENOSPC if TC 0 cannot
take them: the change is refused before anything moves).

Errors: a full TC or too many vports -ENOSPC; an unknown teid, a TC that is not
enabled, a leaf of another device -EINVAL; a second leaf with the same identity -EEXIST.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from proto.errno import AuxError, Errno


class Kind(Enum):
    PORT = "port"
    VPORT = "vport"
    TC = "tc"
    QUEUE = "queue"
    QSET = "qset"


LEAVES = (Kind.QUEUE, Kind.QSET)


@dataclass
class Node:
    teid: int
    kind: Kind
    parent: "Node | None"
    ident: int = 0                 # vport id, TC number, queue id or qs_handle
    owner: str = ""                # the device a leaf belongs to
    children: list = field(default_factory=list)
    shaper: object = None          # shaper.Shaper once NETSHAPER_SET programmed one
    weight: int = 0                # a TC node's ETS share (percent)

    @property
    def vport(self) -> "Node":
        n = self
        while n.kind is not Kind.VPORT:
            n = n.parent
        return n

    @property
    def tc(self) -> int:
        return self.ident if self.kind is Kind.TC else self.parent.tc if self.kind in LEAVES else -1

    def __repr__(self):
        return f"<{self.kind.value} {self.ident} teid {self.teid}{' of ' + self.owner if self.owner else ''}>"


class SchedTree:
    def __init__(self, who: str, max_vports: int = 4, leaves_per_tc: int = 16, max_tc: int = 8):
        self.who = who
        self.max_vports, self.leaves_per_tc, self.max_tc = max_vports, leaves_per_tc, max_tc
        self._teids = itertools.count(1)
        self.nodes: dict[int, Node] = {}
        self.root = self._new(Kind.PORT, None)
        self.num_tc = 1
        self.vport(0)

    def _new(self, kind: Kind, parent: Node | None, ident: int = 0, owner: str = "") -> Node:
        node = Node(next(self._teids), kind, parent, ident, owner)
        self.nodes[node.teid] = node
        if parent is not None:
            parent.children.append(node)
        return node

    def _drop(self, node: Node) -> None:
        for child in list(node.children):
            self._drop(child)
        node.parent.children.remove(node)
        del self.nodes[node.teid]

    # ---- lookups ----

    def node(self, teid: int) -> Node:
        node = self.nodes.get(teid)
        if node is None:
            raise AuxError(Errno.EINVAL, f"no scheduler node with teid {teid} in {self.who}")
        return node

    def vport(self, vport_id: int, create: bool = True) -> Node:
        for node in self.root.children:
            if node.ident == vport_id:
                return node
        if not create:
            raise AuxError(Errno.EINVAL, f"no vport {vport_id} in {self.who}'s scheduling tree")
        if len(self.root.children) >= self.max_vports:
            raise AuxError(Errno.ENOSPC, f"{self.who}'s scheduling tree is full: {self.max_vports} vports")
        vport = self._new(Kind.VPORT, self.root, vport_id)
        for tc in range(self.num_tc):
            self._new(Kind.TC, vport, tc)
        return vport

    def tc_node(self, vport_id: int, tc: int) -> Node:
        if not 0 <= tc < self.num_tc:
            raise AuxError(Errno.EINVAL, f"$.payload.tc: traffic class {tc} is not enabled (num_tc {self.num_tc})")
        return next(n for n in self.vport(vport_id).children if n.ident == tc)

    def leaves(self, owner: str | None = None, kind: Kind | None = None) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind in LEAVES and (owner is None or n.owner == owner)
                and (kind is None or n.kind is kind)]

    def find(self, owner: str, kind: Kind, ident: int) -> Node | None:
        return next((n for n in self.leaves(owner, kind) if n.ident == ident), None)

    # ---- leaves ----

    def add_leaf(self, kind: Kind, vport_id: int, tc: int, owner: str, ident: int) -> Node:
        if kind not in LEAVES:
            raise AuxError(Errno.EINVAL, f"a {kind.value} node is not a leaf")
        parent = self.tc_node(vport_id, tc)
        if self.find(owner, kind, ident) is not None:
            raise AuxError(Errno.EEXIST, f"{owner} already has {kind.value} {ident} in the scheduling tree")
        if len(parent.children) >= self.leaves_per_tc:
            raise AuxError(Errno.ENOSPC, f"traffic class {tc} of vport {vport_id} is full "
                           f"({self.leaves_per_tc} leaves)")
        return self._new(kind, parent, ident, owner)

    def remove_leaf(self, teid: int, owner: str) -> Node:
        node = self.node(teid)
        if node.kind not in LEAVES:
            raise AuxError(Errno.EINVAL, f"teid {teid} is a {node.kind.value} node, not a leaf")
        if node.owner != owner:
            raise AuxError(Errno.EINVAL, f"teid {teid} belongs to {node.owner}, not {owner}")
        self._drop(node)
        return node

    def release(self, owner: str | None = None, kind: Kind | None = None) -> int:
        """Free the leaves of ``owner`` (every leaf if None); shapers on them go too."""
        gone = self.leaves(owner, kind)
        for node in gone:
            self._drop(node)
        return len(gone)

    def reset(self) -> int:
        """A hardware reset: every leaf and every shaper is gone; vports and TCs are rebuilt."""
        n = self.release()
        for node in self.nodes.values():
            node.shaper = None
        return n

    # ---- traffic classes ----

    def check_num_tc(self, num_tc: int) -> list[Node]:
        """The leaves that would move to TC 0; -EINVAL/-ENOSPC if ``num_tc`` cannot be set."""
        if not 1 <= num_tc <= self.max_tc:
            raise AuxError(Errno.EINVAL, f"{num_tc} traffic classes; the scheduler has {self.max_tc}")
        moving = [n for n in self.leaves() if n.tc >= num_tc]
        for vport in self.root.children:
            tc0 = vport.children[0]
            extra = sum(1 for n in moving if n.vport is vport)
            if len(tc0.children) + extra > self.leaves_per_tc:
                raise AuxError(Errno.ENOSPC, f"traffic class 0 of vport {vport.ident} cannot take the "
                               f"{extra} leaves of the traffic classes that go away ({self.leaves_per_tc} max)")
        return moving

    def set_num_tc(self, num_tc: int, weights=None) -> list[Node]:
        """Enable TCs 0..num_tc-1 on every vport; returns the leaves moved to TC 0."""
        moving = self.check_num_tc(num_tc)
        for vport in self.root.children:
            tc0 = vport.children[0]
            for node in [n for n in moving if n.vport is vport]:
                node.parent.children.remove(node)
                node.parent = tc0
                tc0.children.append(node)
            for tcn in [n for n in vport.children if n.ident >= num_tc]:
                self._drop(tcn)
            for tc in range(len(vport.children), num_tc):
                self._new(Kind.TC, vport, tc)
            for tcn in vport.children:
                tcn.weight = weights[tcn.ident] if weights else 0
        self.num_tc = num_tc
        return moving

    def describe(self) -> dict:
        """A summary: leaves per vport and TC."""
        return {f"vport{v.ident}": {f"tc{t.ident}": len(t.children) for t in v.children} for v in self.root.children}


class QueueSpace:
    """The function's Tx and Rx queue ids: each vport of a device gets a contiguous range."""

    def __init__(self, who: str, max_txq: int = 64, max_rxq: int = 64):
        self.who, self.max_txq, self.max_rxq = who, max_txq, max_rxq
        self.ranges: dict[tuple[str, int], tuple[int, int, int, int]] = {}   # (owner, vport) -> tx0, ntx, rx0, nrx

    @staticmethod
    def _first_fit(taken: list[tuple[int, int]], n: int, limit: int) -> int | None:
        start = 0
        for s, c in sorted(taken):
            if s - start >= n:
                return start
            start = max(start, s + c)
        return start if limit - start >= n else None

    def alloc(self, owner: str, vport: int, ntx: int, nrx: int) -> tuple[int, int]:
        if ntx > self.max_txq:
            raise AuxError(Errno.EINVAL, f"$.payload.num_txq: {ntx} above the function's {self.max_txq} Tx queues")
        if nrx > self.max_rxq:
            raise AuxError(Errno.EINVAL, f"$.payload.num_rxq: {nrx} above the function's {self.max_rxq} Rx queues")
        others = [r for k, r in self.ranges.items() if k != (owner, vport)]
        tx0 = self._first_fit([(r[0], r[1]) for r in others], ntx, self.max_txq)
        rx0 = self._first_fit([(r[2], r[3]) for r in others], nrx, self.max_rxq)
        if tx0 is None or rx0 is None:
            which = "Tx" if tx0 is None else "Rx"
            raise AuxError(Errno.ENOSPC, f"no {ntx if tx0 is None else nrx} contiguous free {which} queues left "
                           f"in {self.who}")
        self.ranges[(owner, vport)] = (tx0, ntx, rx0, nrx)
        return tx0, rx0

    def get(self, owner: str, vport: int) -> tuple[int, int, int, int] | None:
        return self.ranges.get((owner, vport))

    def free(self, owner: str, vport: int | None = None) -> int:
        keys = [k for k in self.ranges if k[0] == owner and (vport is None or k[1] == vport)]
        for k in keys:
            del self.ranges[k]
        return len(keys)

    def reset(self) -> None:
        self.ranges.clear()
