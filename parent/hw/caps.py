"""The function's capabilities, as the FW reports them (idpf's VIRTCHNL2_OP_GET_CAPS).

Offload bits, queue maxima and MSI-X vectors, plus feature names the parent
checks before it accepts an operation ('dcb', 'qinq', 'pps_shaper', 'rdma').
After a reset the FW may report different resources (``after_reset``): the
parent then tells its children with CAPS_CHANGE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from proto.events import Caps, QueueInfo

CSUM_L3_L4 = 0x3F         # IPv4 header, TCP/UDP/SCTP over IPv4/IPv6
SEG_TSO = 0x3             # TCP/UDP segmentation
RSS_DEFAULT = 0x7FF       # IPv4/IPv6 TCP/UDP/SCTP/other hash types


@dataclass(frozen=True)
class CapSet:
    max_txq: int = 64
    max_rxq: int = 64
    max_bufq: int = 128
    max_complq: int = 64
    msix: int = 64
    csum: int = CSUM_L3_L4
    seg: int = SEG_TSO
    rss: int = RSS_DEFAULT
    max_tx_hdr_size: int = 256
    features: frozenset = field(default_factory=frozenset)

    def has(self, feature: str) -> bool:
        return feature in self.features

    def payload(self) -> Caps:
        return Caps(csum_caps=self.csum, seg_caps=self.seg, rss_caps=self.rss, max_tx_hdr_size=self.max_tx_hdr_size,
                    q_info=QueueInfo(max_rxq=self.max_rxq, max_txq=self.max_txq, max_bufq=self.max_bufq,
                                     max_complq=self.max_complq), msix_count=self.msix)

    def after_reset(self, max_txq: int = 0, max_rxq: int = 0) -> "CapSet":
        """What the FW reports after a reset (0 keeps a value)."""
        return replace(self, max_txq=max_txq or self.max_txq, max_rxq=max_rxq or self.max_rxq)
