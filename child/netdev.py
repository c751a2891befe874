"""A netdev-owning auxiliary driver: the code IDPF (Model A), IDPF' (Model B) and mlx5e share.

What it does with its parent, whichever parent that is (it learns at probe
what the parent handles, and skips what it does not):

- open (a worker after probe, after a reset, after resume): QUEUE_CONFIG (the
  parent answers with the queue ids), ENABLE_QUEUES (the parent builds the
  scheduling-tree leaves), then POST_CONFIG;
- LINK_CHANGE, FW_EVENT (atomic: only record), RESET_WARN and PREPARE_DETACH
  (quiesce before replying), RESET_COMPLETE (reopen, or stay down if the reset
  failed), CAPS_CHANGE (clamp the queue count; reopen), BEFORE/AFTER_TC_CHANGE
  (stop Tx, then learn the new QoS), suspend/resume (mlx5's detach/attach);
- user-space requests (``auxipc send DEV EVENT --from child``): its dcbnl,
  netshaper and ethtool ops, forwarded to the parent (the broker holds rtnl
  around the events the kernel sends under it), remembered when accepted.

What it knows is in ``adev.data`` and journalled (auxipc/runtime/journal.py): records
``probe``, ``queues`` (state, txq_start, errno), ``link``, ``reset``, ``tc``,
``caps``, ``op`` (a user request: event, errno, reply), ``remove``.
"""

from __future__ import annotations

from auxipc import ChildDevice, handler
from proto.errno import AuxError
from proto.events import EnableQueues, Event, PostConfig, QueueConfig

from .reference import ReferenceDriver


class NetDriver(ReferenceDriver):
    name = ""
    id_table: list[str] = []
    NUM_QUEUES = 4
    CALL_TIMEOUT = 5.0

    def probe(self, adev: ChildDevice) -> int:
        adev.data.update(link=None, queues="down", fw_events=0, quiesced=0, gen=0, num_tc=1, up2tc=[0] * 8,
                         max_queues=None, txq_start=None, dcb=None, shapers={}, reset=None)
        self.note(adev, "probe", parent_handles=sorted(Event(c).name for c in adev.parent_handles
                                                       if c in Event._value2member_map_))
        adev.rt.call_later(0, lambda: self.open(adev))
        return 0

    def remove(self, adev: ChildDevice) -> None:
        adev.data["queues"] = "stopped"
        self.note(adev, "remove")

    def _queues(self, adev: ChildDevice, state: str, **fields) -> None:
        adev.data["queues"] = state
        self.note(adev, "queues", state=state, **fields)

    # ---- open: queues through the parent, then POST_CONFIG ----

    def open(self, adev: ChildDevice) -> None:
        """A worker (the kernel's service task): never from inside a handler."""
        if not adev.bound:
            return
        gen = adev.data["gen"]
        n = min(self.NUM_QUEUES, adev.data["max_queues"] or self.NUM_QUEUES)
        if adev.supports(Event.QUEUE_CONFIG) and adev.supports(Event.ENABLE_QUEUES):
            self._queues(adev, "configuring", num=n)
            try:
                chunks = adev.call(Event.QUEUE_CONFIG, QueueConfig(vport_id=0, num_txq=n, num_rxq=n),
                                   timeout=self.CALL_TIMEOUT)
                if adev.data["gen"] == gen:
                    adev.call(Event.ENABLE_QUEUES, EnableQueues(vport_id=0, enable=True), timeout=self.CALL_TIMEOUT)
            except AuxError as exc:
                if adev.data["gen"] != gen or not adev.bound:
                    self.note(adev, "queues", state="abandoned", error=exc.name, message=exc.message)
                    return           # the reset that interrupted us reopens when it is done
                self._queues(adev, "failed", error=exc.name, message=exc.message)
                n = 0
            else:
                if adev.data["gen"] != gen:
                    self.note(adev, "queues", state="abandoned", why="quiesced while opening")
                    return
                adev.data["txq_start"] = chunks.txq_start
                self._queues(adev, "running", num=n, txq_start=chunks.txq_start, rxq_start=chunks.rxq_start)
        else:
            self._queues(adev, "running", num=n)
        if adev.bound and adev.supports(Event.POST_CONFIG):
            adev.notify(Event.POST_CONFIG, PostConfig(vport_id=0, mtu=1500, num_txq=n, num_rxq=n))

    def _quiesce(self, adev: ChildDevice, why: str) -> None:
        adev.data["gen"] += 1                 # an open in flight gives up
        adev.data["quiesced"] += 1
        adev.data["txq_start"] = None
        self._queues(adev, "quiesced", why=why)

    # ---- parent -> child ----

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev: ChildDevice, link) -> None:
        adev.data["link"] = link
        self.note(adev, "link", up=link.up, speed_mbps=link.speed_mbps, duplex=link.duplex, autoneg=link.autoneg)

    @handler(Event.FW_EVENT)
    def fw_event(self, adev: ChildDevice, ev) -> None:
        adev.data["fw_events"] += 1
        self.note(adev, "fw_event", kind=ev.kind, state=ev.state)

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev: ChildDevice, warn) -> int:
        adev.data["reset"] = warn.reset_type.name
        self._quiesce(adev, f"{warn.reset_type.name} reset")
        self.note(adev, "reset", phase="warn", reset_type=warn.reset_type)
        return 0

    @handler(Event.RESET_COMPLETE)
    def reset_complete(self, adev: ChildDevice, done) -> None:
        self.note(adev, "reset", phase="complete", reset_type=done.reset_type, status=done.status)
        if done.status == 0:
            adev.rt.call_later(0, lambda: self.open(adev))
        else:
            self._queues(adev, "down", why=f"the reset failed ({done.status})")

    @handler(Event.PREPARE_DETACH)
    def prepare_detach(self, adev: ChildDevice, req) -> int:
        self._quiesce(adev, f"detach ({req.reason.name})")
        return 0

    @handler(Event.CAPS_CHANGE)
    def caps_change(self, adev: ChildDevice, caps) -> int:
        top = min(caps.q_info.max_txq, caps.q_info.max_rxq)
        adev.data["max_queues"] = top
        self.note(adev, "caps", max_txq=caps.q_info.max_txq, max_rxq=caps.q_info.max_rxq, msix=caps.msix_count,
                  num_queues=min(self.NUM_QUEUES, top))
        return 0

    @handler(Event.BEFORE_TC_CHANGE)
    def before_tc_change(self, adev: ChildDevice, _) -> int:
        self.note(adev, "tc", phase="before", num_tc=adev.data["num_tc"])
        return 0

    @handler(Event.AFTER_TC_CHANGE)
    def after_tc_change(self, adev: ChildDevice, qos) -> int:
        adev.data.update(num_tc=qos.num_tc, up2tc=list(qos.up2tc))
        self.note(adev, "tc", phase="after", num_tc=qos.num_tc, up2tc=qos.up2tc, rel_bw=qos.rel_bw[:qos.num_tc])
        return 0

    # ---- mlx5's detach / attach ----

    def suspend(self, adev: ChildDevice) -> int:
        self._quiesce(adev, "detach")
        return 0

    def resume(self, adev: ChildDevice) -> int:
        self.note(adev, "attach")
        adev.rt.call_later(0, lambda: self.open(adev))
        return 0

    # ---- user space (dcbnl, netshaper, ethtool, ...) ----

    def user_request(self, adev: ChildDevice, spec, payload, timeout: float):
        """Forward a request from user space to the parent, as the driver's ndo/dcbnl op would."""
        out = self.forward(adev, spec, payload, timeout)
        self.remember(adev, spec, payload, out)
        self.note(adev, "op", event=spec.name, errno=0, reply=out if spec.sync else None)
        return out

    def remember(self, adev: ChildDevice, spec, payload, out) -> None:
        if spec.code == Event.DCB_CONFIG:
            adev.data["dcb"] = payload
        elif spec.code == Event.NETSHAPER_SET:
            adev.data["shapers"][(payload.handle.scope.name, payload.handle.id)] = payload
        elif spec.code == Event.QUEUE_CONFIG:
            adev.data["txq_start"] = out.txq_start


class Mlx5Eth(NetDriver):
    """mlx5e on ``mlx5_core.eth``: the same netdev code; mlx5 resets by detach/attach
    (suspend/resume) instead of RESET_WARN."""

    name = "mlx5e"
    id_table = ["mlx5_core.eth"]
