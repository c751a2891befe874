"""The built-in payloads: the members of the payload union, and the enums they use.

Each class is one kernel struct, field for field where
the kernel has one (``iidc_rdma_qset_params``, ``ieee_ets``, ``ieee_pfc``,
``net_shaper``, ``ethtool_ringparam``...). Field order is ABI (it is the order of
the generated C structs): only append, with a default and ``since``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .schema import Array, Bool, Bytes, Empty, Int, Nested, Payload
from .schema import Enum as EnumField

U16: dict[str, Any] = dict(min=0, max=2**16 - 1)
U32: dict[str, Any] = dict(min=0, max=2**32 - 1)
U64: dict[str, Any] = dict(min=0, max=2**64 - 1)
MTU: dict[str, Any] = dict(min=68, max=9728)
MAC_EXAMPLE = b"\x02\x00\x5e\x10\x00\x01"
ALL_ON_TC0 = (100, 0, 0, 0, 0, 0, 0, 0)


# ---- enums -------------------------------------------------------------------------

class Duplex(IntEnum):
    UNKNOWN = 0
    HALF = 1
    FULL = 2


class ResetType(IntEnum):
    FUNC = 1
    DEV = 2
    GLOBAL = 3
    FLR = 4


class DetachReason(IntEnum):
    UNLOAD = 1
    RESET = 2
    RECONFIG = 3


class FwEventKind(IntEnum):
    STATE = 1
    LIVE_PATCH = 2
    POWER_CHANGE = 3
    HEALTH = 4


class Tsa(IntEnum):
    """Transmission selection algorithm (IEEE_8021QAZ_TSA_*)."""
    STRICT = 0
    CB_SHAPER = 1
    ETS = 2
    VENDOR = 255


class PfcMode(IntEnum):
    """IIDC pfc_mode: priority from the VLAN PCP or from the DSCP."""
    VLAN = 0
    DSCP = 1


class MacKind(IntEnum):
    UNICAST = 1
    MULTICAST = 2


class FilterOp(IntEnum):
    ADD = 1
    DEL = 2


class ShaperScope(IntEnum):
    """NET_SHAPER_SCOPE_*."""
    NETDEV = 1
    QUEUE = 2
    NODE = 3


class ShaperMetric(IntEnum):
    """NET_SHAPER_METRIC_*."""
    BPS = 0
    PPS = 1


class EthtoolCmd(IntEnum):
    SET_RINGPARAM = 1
    SET_CHANNELS = 2
    SET_LINK_KSETTINGS = 3


# ---- parent -> child ---------------------------------------------------------------------

class LinkChange(Payload):
    """Link state as the PHY/FW reports it."""
    up = Bool(example=True)
    speed_mbps = Int(-1, 2**31 - 1, default=-1, doc="-1 when unknown")
    duplex = EnumField(Duplex, default=Duplex.UNKNOWN)
    autoneg = Bool(default=False)


class ResetWarn(Payload):
    """A reset (FLR included) is about to happen: quiesce before replying."""
    reset_type = EnumField(ResetType)


class ResetComplete(Payload):
    """A reset finished; status is 0 or the negative errno it failed with."""
    reset_type = EnumField(ResetType)
    status = Int(-4095, 0, default=0, doc="0 or a negative errno")


class MtuChangeBefore(Payload):
    """The MTU is about to change (ice/idpf BEFORE_MTU_CHANGE)."""
    old_mtu = Int(**MTU, example=1500)
    new_mtu = Int(**MTU, example=9000)


class MtuChangeAfter(Payload):
    """The MTU changed."""
    mtu = Int(**MTU, example=9000)


class Qos(Payload):
    """The new traffic-class layout (iidc_rdma_qos_params)."""
    num_tc = Int(1, 8, example=1)
    up2tc = Array(Int(0, 7), length=8, doc="user priority -> traffic class")
    rel_bw = Array(Int(0, 100), length=8, total=100, example=ALL_ON_TC0, doc="per-TC relative bandwidth, percent")
    prio_type = EnumField(Tsa, default=Tsa.ETS)
    pfc_mode = EnumField(PfcMode, default=PfcMode.VLAN)
    dscp_map = Array(Int(0, 7), length=64, default=(0,) * 64, doc="DSCP -> user priority (DSCP PFC mode)")


class CritErr(Payload):
    """A critical error: the raw error-cause register (oicr)."""
    reg = Int(**U32, doc="error cause bits")


class QueueInfo(Payload):
    """Queue maxima of the function."""
    max_rxq = Int(**U16, default=0)
    max_txq = Int(**U16, default=0)
    max_bufq = Int(**U16, default=0)
    max_complq = Int(**U16, default=0)


class Caps(Payload):
    """Capabilities and resources changed (idpf caps, MSI-X vectors)."""
    csum_caps = Int(**U32, default=0, doc="checksum offload bits")
    seg_caps = Int(**U32, default=0, doc="segmentation offload bits")
    rss_caps = Int(**U64, default=0, doc="RSS hash bits")
    max_tx_hdr_size = Int(**U16, default=0)
    q_info = Nested(QueueInfo, default=QueueInfo())
    msix_count = Int(0, 2048, default=0)


class PrepareDetach(Payload):
    """The device is about to be deleted."""
    reason = EnumField(DetachReason)


class FwEvent(Payload):
    """A firmware event: state change, live patch, power change or health report."""
    kind = EnumField(FwEventKind)
    state = Int(**U32, default=0, doc="FW state or subtype code")
    data = Bytes(max_len=256, default=b"", doc="opaque event data")


# ---- child -> parent ---------------------------------------------------------------------

class RequestReset(Payload):
    """The child asks the parent for a reset (FUNC or DEV; others are -EINVAL)."""
    reset_type = EnumField(ResetType)


class QsetParams(Payload):
    """An RDMA queue set (iidc_rdma_qset_params)."""
    vport_id = Int(**U16, default=0)
    tc = Int(0, 7, default=0)
    qs_handle = Int(**U16)
    teid = Int(**U32, default=0, doc="QSET_DEL: the node QSET_ADD returned; ignored by QSET_ADD")


class QsetReply(Payload):
    """The scheduler node the queue set was attached to."""
    teid = Int(**U32)


class MacFilter(Payload):
    """Add or remove a unicast or multicast MAC filter (from ndo_set_rx_mode)."""
    addr = Bytes(size=6, example=MAC_EXAMPLE, doc="JSON: 'aa:bb:cc:dd:ee:ff'")
    kind = EnumField(MacKind, default=MacKind.UNICAST)
    op = EnumField(FilterOp, default=FilterOp.ADD)


class VlanFilter(Payload):
    """Add or remove a VLAN filter (ndo_vlan_rx_add_vid / kill_vid)."""
    proto = Int(**U16, choices=(0x8100, 0x88A8), default=0x8100, doc="TPID: 802.1Q or 802.1ad")
    vid = Int(0, 4095)
    op = EnumField(FilterOp, default=FilterOp.ADD)


class QueueConfig(Payload):
    """Queue counts and ring sizes for a vport."""
    vport_id = Int(**U16, default=0)
    num_txq = Int(0, 256, example=4)
    num_rxq = Int(0, 256, example=4)
    num_bufq = Int(0, 512, default=0)
    num_complq = Int(0, 256, default=0)
    tx_ring_size = Int(64, 8160, default=512)
    rx_ring_size = Int(64, 8160, default=512)


class QueueChunks(Payload):
    """The first queue ids the parent assigned."""
    txq_start = Int(**U16)
    rxq_start = Int(**U16)


class EnableQueues(Payload):
    """Start or stop queues of a vport (bit n: queue n)."""
    vport_id = Int(**U16, default=0)
    enable = Bool(default=True)
    txq_mask = Int(**U64, default=0)
    rxq_mask = Int(**U64, default=0)


class ShaperHandle(Payload):
    """net_shaper_handle."""
    scope = EnumField(ShaperScope)
    id = Int(**U32, default=0)


class NetshaperSet(Payload):
    """Set a shaper (net_shaper_ops.set)."""
    handle = Nested(ShaperHandle)
    metric = EnumField(ShaperMetric, default=ShaperMetric.BPS)
    bw_min = Int(**U64, default=0)
    bw_max = Int(**U64, default=0)
    burst = Int(**U64, default=0)
    priority = Int(**U32, default=0)
    weight = Int(**U32, default=0)


class Ets(Payload):
    """IEEE 802.1Qaz ETS (ieee_ets)."""
    willing = Bool(default=False)
    tc_tx_bw = Array(Int(0, 100), length=8, total=100, example=ALL_ON_TC0, doc="percent per TC")
    tc_rx_bw = Array(Int(0, 100), length=8, total=100, example=ALL_ON_TC0, doc="percent per TC")
    tc_tsa = Array(EnumField(Tsa), length=8, example=(Tsa.ETS,) * 8)
    prio_tc = Array(Int(0, 7), length=8, doc="priority -> TC")


class Pfc(Payload):
    """IEEE 802.1Qbb PFC (ieee_pfc)."""
    pfc_en = Int(0, 255, default=0, doc="bit n: PFC on priority n")
    mbc = Bool(default=False)
    delay = Int(**U16, default=0, doc="in bit times")


class DcbConfig(Payload):
    """DCB configuration from dcbnl (ieee_setets / ieee_setpfc)."""
    ets = Nested(Ets)
    pfc = Nested(Pfc, default=Pfc())


class EthtoolOp(Payload):
    """An ethtool set operation on the child's netdev; fields the op does not use stay 0."""
    op = EnumField(EthtoolCmd)
    rx_pending = Int(0, 8192, default=0)
    tx_pending = Int(0, 8192, default=0)
    rx_count = Int(0, 256, default=0)
    tx_count = Int(0, 256, default=0)
    combined_count = Int(0, 256, default=0)
    speed_mbps = Int(-1, 2**31 - 1, default=-1)
    duplex = EnumField(Duplex, default=Duplex.UNKNOWN)
    autoneg = Bool(default=False)


class Virtchnl(Payload):
    """A virtchnl message passed through to the device's control plane."""
    op = Int(**U32, example=1)
    buf = Bytes(max_len=4096, default=b"")
    timeout_ms = Int(1, 60_000, default=1000)


class VirtchnlReply(Payload):
    """The control plane's answer: its return value and message."""
    retval = Int(default=0, doc="virtchnl status (0 success)")
    buf = Bytes(max_len=4096, default=b"")


class SetMac(Payload):
    """Program the child's primary unicast MAC address."""
    addr = Bytes(size=6, example=MAC_EXAMPLE, doc="6-byte MAC; JSON: 'aa:bb:cc:dd:ee:ff'")


class SetMacReply(Payload):
    """The address programmed and the filter slot that holds it."""
    addr = Bytes(size=6, example=MAC_EXAMPLE)
    filter_id = Int(0, 65535)


class PostConfig(Payload):
    """The child finished configuring its vport."""
    vport_id = Int(0, 65535, default=0)
    mtu = Int(68, 9728, default=1500)
    num_txq = Int(0, 4096, default=0)
    num_rxq = Int(0, 4096, default=0)


__all__ = [
    "Duplex", "ResetType", "DetachReason", "FwEventKind", "Tsa", "PfcMode", "MacKind", "FilterOp",
    "ShaperScope", "ShaperMetric", "EthtoolCmd",
    "Empty", "LinkChange", "ResetWarn", "ResetComplete", "MtuChangeBefore", "MtuChangeAfter", "Qos",
    "CritErr", "QueueInfo", "Caps", "PrepareDetach", "FwEvent", "RequestReset", "QsetParams", "QsetReply",
    "MacFilter", "VlanFilter", "QueueConfig", "QueueChunks", "EnableQueues", "ShaperHandle",
    "NetshaperSet", "Ets", "Pfc", "DcbConfig", "EthtoolOp", "Virtchnl", "VirtchnlReply", "SetMac",
    "SetMacReply", "PostConfig",
]
