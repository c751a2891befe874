"""The child->parent handlers of a hardware-backed parent (mixed into parent/nic.py's NicParent).

Each validates against the hardware, programs it through the FW mailbox
(latency; -ETIME when the FW does not answer; -ENXIO when a reset shuts the
mailbox down meanwhile, with what the request had allocated given back) and
journals the new state. The three pain points of the proposal:

- DCB_CONFIG (dcbnl, under rtnl): validate ETS/PFC (-EINVAL naming the field),
  check the scheduling tree can take the new TCs (-ENOSPC), program, and return;
  the TC change goes back to every child from a worker (NicParent.tc_change).
- NETSHAPER_SET (under a per-device mutex): the handle names a node of the
  device's part of the tree (NETDEV: its vport; QUEUE: one of its Tx queues;
  NODE: a teid in its vport), the rates are checked by parent/hw/shaper.py.
- QUEUE_CONFIG then ENABLE_QUEUES: queue ids from the function's queue space
  (QueueChunks are the handles), then one scheduler leaf per enabled Tx queue
  (-ENOSPC when its TC is full).
"""

from __future__ import annotations

from auxipc import handler
from proto.errno import AuxError, Errno
from proto.events import EthtoolCmd, Event, FilterOp, QsetReply, QueueChunks, SetMacReply, ShaperScope, VirtchnlReply

from .hw.sched import Kind
from .hw.shaper import validate as validate_shaper

VIRTCHNL_VERSION, VIRTCHNL_GET_CAPS = 1, 500     # the opcodes the emulated control plane knows


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


class NicHandlers:
    """Handlers only: the state and helpers are NicParent's."""

    # ---- reset ----

    @handler(Event.REQUEST_RESET)
    def request_reset(self, adev, req) -> int:
        self.start_reset(req.reset_type, from_child=True, by=adev.name)
        return 0

    @handler(Event.REMOVE_NOTIFY)
    def remove_notify(self, adev, _) -> None:
        # Deleting the device inside its own callback would deadlock: defer.
        self.rt.call_later(0, lambda: adev.state == "added" and self.unplug(adev))

    # ---- DCB ----

    @handler(Event.DCB_CONFIG)
    def dcb_config(self, adev, cfg) -> int:
        self.check_not_resetting()
        num_tc = self.hw.dcb.check(cfg)
        if cfg == self.hw.dcb.cfg:
            self.note("dcb", changed=False, by=adev.name)
            return 0
        self.hw.sched.check_num_tc(num_tc)
        self.mbx("SET_DCB_PARAMS")
        self.hw.dcb.apply(cfg)
        self.note("dcb", changed=True, by=adev.name, **self.hw.dcb.describe())
        self.rt.call_later(0, self.tc_change)
        return 0

    # ---- netshaper ----

    @handler(Event.NETSHAPER_SET)
    def netshaper_set(self, adev, req) -> int:
        with self.rt.lock(f"mutex:{adev.name}.shaper"):
            self.check_not_resetting()
            node = self._shaper_node(adev, req.handle)
            siblings = sum(c.shaper.bw_min for c in node.parent.children if c is not node and c.shaper)
            ceiling = node.parent.shaper.bw_max if node.parent.shaper else 0
            shaper = validate_shaper(req, self.hw.port_bps, siblings, ceiling, pps=self.hw.caps.has("pps_shaper"))
            self.mbx("CONFIG_RL_PROFILE")
            node.shaper = shaper
            self.note("shaper", dev=adev.name, scope=req.handle.scope, id=req.handle.id, teid=node.teid,
                      node=node.kind.value, bw_min=shaper.bw_min, bw_max=shaper.bw_max, burst=shaper.burst)
        return 0

    def _shaper_node(self, adev, handle):
        vport = self.hw.sched.vport(self.vport_of(adev), create=False)
        if handle.scope is ShaperScope.NETDEV:
            if handle.id != 0:
                raise AuxError(Errno.EINVAL, f"$.payload.handle.id: a NETDEV shaper has id 0, not {handle.id}")
            return vport
        if handle.scope is ShaperScope.QUEUE:
            leaf = self.hw.sched.find(adev.name, Kind.QUEUE, handle.id)
            if leaf is None:
                mine = sorted(n.ident for n in self.hw.sched.leaves(adev.name, Kind.QUEUE))
                raise AuxError(Errno.EINVAL, f"$.payload.handle.id: {adev.name} has no enabled Tx queue "
                               f"{handle.id} (enabled: {mine or 'none'})")
            return leaf
        node = self.hw.sched.nodes.get(handle.id)
        if node is None or node.kind not in (Kind.VPORT, Kind.TC) or node.vport is not vport:
            raise AuxError(Errno.EINVAL, f"$.payload.handle.id: teid {handle.id} is not a node of "
                           f"{adev.name}'s vport {vport.ident}")
        return node

    def vport_of(self, adev) -> int:
        return next((v for (owner, v) in self.hw.queues.ranges if owner == adev.name), 0)

    # ---- queues ----

    @handler(Event.QUEUE_CONFIG)
    def queue_config(self, adev, cfg) -> QueueChunks:
        self.check_not_resetting()
        for name in ("tx_ring_size", "rx_ring_size"):
            if getattr(cfg, name) % 32:
                raise AuxError(Errno.EINVAL, f"$.payload.{name}: {getattr(cfg, name)} descriptors is not a "
                               "multiple of 32")
        self.hw.sched.vport(cfg.vport_id)                     # -ENOSPC: no room for another vport
        self._disable(adev, cfg.vport_id)                     # a reconfiguration starts from scratch
        tx0, rx0 = self.hw.queues.alloc(adev.name, cfg.vport_id, cfg.num_txq, cfg.num_rxq)
        try:
            self.mbx("CONFIG_QUEUES")
        except AuxError as exc:
            self.hw.queues.free(adev.name, cfg.vport_id)
            self.note("queues", dev=adev.name, vport=cfg.vport_id, state="refused", error=exc.name,
                      message=exc.message)
            raise
        self.note("queues", dev=adev.name, vport=cfg.vport_id, state="configured", txq_start=tx0,
                  num_txq=cfg.num_txq, rxq_start=rx0, num_rxq=cfg.num_rxq)
        return QueueChunks(txq_start=tx0, rxq_start=rx0)

    @handler(Event.ENABLE_QUEUES)
    def enable_queues(self, adev, req) -> int:
        """Masks select queues of the vport (bit n: its n-th queue); both 0 means all of them."""
        self.check_not_resetting()
        got = self.hw.queues.get(adev.name, req.vport_id)
        if got is None:
            raise AuxError(Errno.EINVAL, f"vport {req.vport_id} of {adev.name} has no queues: QUEUE_CONFIG first")
        tx0, ntx, rx0, nrx = got
        txmask, rxmask = req.txq_mask, req.rxq_mask
        if not txmask and not rxmask:
            txmask, rxmask = (1 << ntx) - 1, (1 << nrx) - 1
        for name, mask, n in (("txq_mask", txmask, ntx), ("rxq_mask", rxmask, nrx)):
            if mask >> n:
                raise AuxError(Errno.EINVAL, f"$.payload.{name}: bit {mask.bit_length() - 1} set, but vport "
                               f"{req.vport_id} has {n} queues")
        qids = [tx0 + i for i in _bits(txmask)]
        if not req.enable:
            self.mbx("DISABLE_QUEUES")
            for q in qids:
                leaf = self.hw.sched.find(adev.name, Kind.QUEUE, q)
                if leaf is not None:
                    self.hw.sched.remove_leaf(leaf.teid, adev.name)
            self.note("queues", dev=adev.name, vport=req.vport_id, state="disabled", txq=qids,
                      tree=self.hw.sched.describe())
            return 0
        num_tc = self.hw.sched.num_tc
        added = []
        try:
            for q in qids:
                if self.hw.sched.find(adev.name, Kind.QUEUE, q) is None:
                    added.append(self.hw.sched.add_leaf(Kind.QUEUE, req.vport_id, (q - tx0) % num_tc, adev.name, q))
            self.mbx("ENABLE_QUEUES")
        except AuxError as exc:
            for leaf in added:
                if leaf.teid in self.hw.sched.nodes:
                    self.hw.sched.remove_leaf(leaf.teid, adev.name)
            self.note("queues", dev=adev.name, vport=req.vport_id, state="refused", error=exc.name,
                      message=exc.message, released=len(added), tree=self.hw.sched.describe())
            raise
        self.note("queues", dev=adev.name, vport=req.vport_id, state="enabled", txq=qids,
                  teids=[self.hw.sched.find(adev.name, Kind.QUEUE, q).teid for q in qids],
                  tree=self.hw.sched.describe())
        return 0

    def _disable(self, adev, vport: int) -> None:
        got = self.hw.queues.get(adev.name, vport)
        if got is None:
            return
        for q in range(got[0], got[0] + got[1]):
            leaf = self.hw.sched.find(adev.name, Kind.QUEUE, q)
            if leaf is not None:
                self.hw.sched.remove_leaf(leaf.teid, adev.name)
        self.hw.queues.free(adev.name, vport)

    # ---- RDMA queue sets (ice_add_rdma_qset / ice_del_rdma_qset) ----

    @handler(Event.QSET_ADD)
    def qset_add(self, adev, p) -> QsetReply:
        self.check_not_resetting()
        self.hw.sched.vport(p.vport_id, create=False)
        leaf = self.hw.sched.add_leaf(Kind.QSET, p.vport_id, p.tc, adev.name, p.qs_handle)
        try:
            self.mbx("ADD_RDMA_QSET")
        except AuxError:
            if leaf.teid in self.hw.sched.nodes:
                self.hw.sched.remove_leaf(leaf.teid, adev.name)
            raise
        self.note("qset", dev=adev.name, op="add", tc=p.tc, qs_handle=p.qs_handle, teid=leaf.teid,
                  tree=self.hw.sched.describe())
        return QsetReply(teid=leaf.teid)

    @handler(Event.QSET_DEL)
    def qset_del(self, adev, p) -> int:
        node = self.hw.sched.node(p.teid)
        if node.kind is not Kind.QSET or node.owner != adev.name or node.ident != p.qs_handle:
            raise AuxError(Errno.EINVAL, f"$.payload.teid: {p.teid} is not queue set {p.qs_handle} of {adev.name}")
        self.mbx("DEL_RDMA_QSET")
        self.hw.sched.remove_leaf(p.teid, adev.name)
        self.note("qset", dev=adev.name, op="del", qs_handle=p.qs_handle, teid=p.teid, tree=self.hw.sched.describe())
        return 0

    # ---- addresses and filters ----

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req) -> SetMacReply:
        self.check_not_resetting()
        saved = dict(self.hw.macs.slots)
        slot = self.hw.macs.set_primary(req.addr)
        try:
            self.mbx("ADD_MAC")
        except AuxError:
            self.hw.macs.slots = saved           # the FW never programmed it
            raise
        self.note("mac", dev=adev.name, op="primary", addr=req.addr, slot=slot)
        return SetMacReply(addr=req.addr, filter_id=slot)

    @handler(Event.MAC_FILTER)
    def mac_filter(self, adev, f) -> None:
        # From ndo_set_rx_mode, atomic: nothing may wait here; the FW answers a worker later.
        name = adev.name

        def done(err):
            if err is None:
                try:
                    slot = (self.hw.macs.add(f.addr, f.kind) if f.op is FilterOp.ADD
                            else self.hw.macs.delete(f.addr))
                    self.note("mac", dev=name, op=f.op, kind=f.kind, addr=f.addr, slot=slot)
                    return
                except AuxError as exc:
                    err = exc
            self.note("mac", dev=name, op=f.op, kind=f.kind, addr=f.addr, error=err.name, message=err.message)
        self.mbx_later("MAC_FILTER", done)

    @handler(Event.VLAN_FILTER)
    def vlan_filter(self, adev, f) -> int:
        self.check_not_resetting()
        if f.op is FilterOp.ADD:
            self.hw.vlans.add(f.proto, f.vid)
        else:
            self.hw.vlans.delete(f.proto, f.vid)
        try:
            self.mbx("VLAN_FILTER")
        except AuxError:
            (self.hw.vlans.delete if f.op is FilterOp.ADD else self.hw.vlans.add)(f.proto, f.vid)
            raise
        self.note("vlan", dev=adev.name, op=f.op, proto=f"{f.proto:#06x}", vid=f.vid)
        return 0

    # ---- ethtool ----

    @handler(Event.ETHTOOL_OP)
    def ethtool_op(self, adev, op) -> int:
        self.check_not_resetting()
        if op.op is EthtoolCmd.SET_LINK_KSETTINGS:
            self.hw.link.check(op.speed_mbps, op.duplex, op.autoneg)
            self.mbx("SET_PHY_CONFIG")
            self.hw.link.configure(op.speed_mbps, op.duplex, op.autoneg)
            self.link_changed()                          # retraining: the link is down meanwhile
            self.rt.call_later(self.cfg.autoneg_time, self.retrain)
            self.note("ethtool", dev=adev.name, op=op.op, speed_mbps=op.speed_mbps, autoneg=op.autoneg)
            return 0
        if op.op is EthtoolCmd.SET_RINGPARAM:
            for name in ("rx_pending", "tx_pending"):
                v = getattr(op, name)
                if v and (v % 32 or not 64 <= v <= 8160):
                    raise AuxError(Errno.EINVAL, f"$.payload.{name}: {v} descriptors; rings take 64..8160 in "
                                   "steps of 32")
        else:
            top = min(self.hw.caps.max_txq, self.hw.caps.max_rxq)
            for name in ("rx_count", "tx_count", "combined_count"):
                if getattr(op, name) > top:
                    raise AuxError(Errno.EINVAL, f"$.payload.{name}: {getattr(op, name)} channels; the function "
                                   f"has {top}")
        self.mbx("ETHTOOL " + op.op.name)
        self.note("ethtool", dev=adev.name, op=op.op)
        return 0

    # ---- control plane ----

    @handler(Event.VIRTCHNL_PASSTHROUGH)
    def virtchnl(self, adev, msg) -> VirtchnlReply:
        if msg.op == 0:
            raise AuxError(Errno.EINVAL, "$.payload.op: 0 is not a virtchnl opcode")
        self.mbx(f"VIRTCHNL op {msg.op}", timeout=msg.timeout_ms / 1000)
        if msg.op == VIRTCHNL_VERSION:
            return VirtchnlReply(retval=0, buf=bytes([2, 0, 0, 0, 0, 0, 0, 0]))    # virtchnl2 2.0
        if msg.op == VIRTCHNL_GET_CAPS:
            caps = self.hw.caps
            return VirtchnlReply(retval=0, buf=caps.max_txq.to_bytes(2, "little") + caps.max_rxq.to_bytes(2, "little"))
        return VirtchnlReply(retval=-Errno.EOPNOTSUPP)     # the control plane answered: not supported

    @handler(Event.POST_CONFIG)
    def post_config_done(self, adev, cfg) -> None:
        self.post_config[adev.name] = cfg
        self.note("post_config", dev=adev.name, vport=cfg.vport_id, mtu=cfg.mtu, num_txq=cfg.num_txq,
                  num_rxq=cfg.num_rxq)
